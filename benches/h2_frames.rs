#![allow(clippy::print_stdout)] // a bench reports on stdout
//! What the DATA frame size of an HTTP/2 caller costs the gateway: uploads
//! of 1 MiB JPEGs on one h2c connection, 16 streams at a time, the client
//! (the `h2` crate) sending 64 KiB frames (the largest the gateway allows,
//! `server::H2_MAX_FRAME_SIZE`) against 16 KiB ones (the protocol's
//! default, and what nghttp2/h2load always sends), in alternating rounds.
//!
//! The gateway runs on a runtime of its own (2 workers, threads named
//! `gw…`), the client and the Concur sandbox (TLS, reads the whole body) on
//! another (`harness…`), all in this process; the gateway's CPU is the sum
//! of its threads' (`/proc/self/task`). Reported: medians over rounds of
//! MB/s and of the gateway's CPU seconds per GB, and of the per-round
//! ratios 64 KiB ÷ 16 KiB.
//!
//! `cargo bench --bench h2_frames` (Linux; `ROUNDS`, `PER_ROUND` uploads)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::SandboxConfig;
use concur_gateway::testkit::{CREDENTIALS, GatewayToml, big_jpeg, jwt, serve, start_sandbox};
use http::Request;

const STREAMS: usize = 16;
const BODY: usize = 1 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process's threads whose name starts
/// with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // After the `(comm)` field: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat's comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks as f64 / 100.0 // USER_HZ
}

/// `n` uploads of `body` on one connection, `STREAMS` at a time, each sent
/// in pieces of `frame` bytes (one DATA frame each).
async fn round(addr: SocketAddr, token: &str, body: &Bytes, frame: usize, n: usize) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (client, next, body, token) =
                (client.clone(), next.clone(), body.clone(), token.to_owned());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let mut client = client.clone().ready().await.unwrap();
                    let req = Request::post(format!("http://{addr}/api/image/v1.0/receipt"))
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "image/jpeg")
                        .header("content-length", body.len())
                        .body(())
                        .unwrap();
                    let (response, mut stream) = client.send_request(req, false).unwrap();
                    let mut at = 0;
                    while at < body.len() {
                        let end = (at + frame).min(body.len());
                        // Send within the flow-control window, as a client
                        // that does not buffer the whole body would.
                        stream.reserve_capacity(end - at);
                        while stream.capacity() < end - at {
                            std::future::poll_fn(|cx| stream.poll_capacity(cx))
                                .await
                                .expect("capacity")
                                .unwrap();
                        }
                        stream
                            .send_data(body.slice(at..end), end == body.len())
                            .unwrap();
                        at = end;
                    }
                    let response = response.await.unwrap();
                    assert_eq!(response.status(), 201);
                    let mut answer = response.into_body();
                    while let Some(chunk) = answer.data().await {
                        let chunk = chunk.unwrap();
                        let _ = answer.flow_control().release_capacity(chunk.len());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (rounds, per_round) = (env("ROUNDS", 7), env("PER_ROUND", 512));
    let gw_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gw")
        .enable_all()
        .build()
        .unwrap();
    let harness = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("harness")
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sandbox = harness.block_on(start_sandbox(SandboxConfig::default()));
    let config =
        GatewayToml::new()
            .set("inspect.digest", "none")
            .load(dir.path(), &sandbox, CREDENTIALS);
    let served = gw_rt.block_on(async {
        let gw = Arc::new(Gateway::new(config).unwrap());
        serve(gw).await
    });
    let token = jwt("acme", "alice@acme.example");
    let body = Bytes::from(big_jpeg(BODY));
    harness.block_on(async {
        for frame in [64 << 10, 16 << 10] {
            round(served.addr, &token, &body, frame, 2 * STREAMS).await; // warm-up
        }
    });
    let (mut speed, mut cpu) = ([vec![], vec![]], [vec![], vec![]]);
    let (mut speed_ratio, mut cpu_ratio) = (vec![], vec![]);
    let gb = (per_round * BODY) as f64 / 1e9;
    for r in 0..rounds {
        let mut this = [(0.0, 0.0); 2];
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let frame = [64 << 10, 16 << 10][k];
            let cpu0 = threads_cpu("gw");
            let t0 = Instant::now();
            harness.block_on(round(served.addr, &token, &body, frame, per_round));
            let wall = t0.elapsed().as_secs_f64();
            let used = threads_cpu("gw") - cpu0;
            this[k] = (gb * 1000.0 / wall, used / gb);
            speed[k].push(this[k].0);
            cpu[k].push(this[k].1);
        }
        speed_ratio.push(this[0].0 / this[1].0);
        cpu_ratio.push(this[0].1 / this[1].1);
        println!(
            "round {}: 64 KiB frames {:.0} MB/s, gateway {:.3} CPU s/GB; 16 KiB frames {:.0} MB/s, {:.3} s/GB",
            r + 1,
            this[0].0,
            this[0].1,
            this[1].0,
            this[1].1
        );
    }
    println!(
        "h2_frames: {rounds} rounds x {per_round} x 1 MiB, 1 connection, {STREAMS} streams; medians: \
         64 KiB frames {:.0} MB/s, gateway {:.3} CPU s/GB; 16 KiB frames {:.0} MB/s, {:.3} CPU s/GB; \
         64 ÷ 16 KiB per round: throughput ×{:.2}, gateway CPU per GB ×{:.2}",
        median(speed[0].clone()),
        median(cpu[0].clone()),
        median(speed[1].clone()),
        median(cpu[1].clone()),
        median(speed_ratio),
        median(cpu_ratio)
    );
}
