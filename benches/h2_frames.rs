#![allow(clippy::print_stdout)] // a bench reports on stdout
//! What the DATA frame size of an HTTP/2 caller costs the gateway: uploads
//! of 1 MiB JPEGs on one h2c connection, 16 streams at a time, the client
//! (the `h2` crate) sending 64 KiB frames (the largest the gateway allows,
//! `server::H2_MAX_FRAME_SIZE`) against 16 KiB ones (the protocol's
//! default, and what nghttp2/h2load always sends), and, as the reference,
//! the same uploads over 16 HTTP/1.1 connections (hyper's client), in
//! rounds that rotate the order.
//!
//! The gateway runs on a runtime of its own (2 workers, threads named
//! `gw…`), the client and the Concur sandbox (TLS, reads the whole body) on
//! another (`harness…`), all in this process; the gateway's CPU is the sum
//! of its threads' (`/proc/self/task`). Reported: medians over rounds of
//! MB/s and of the gateway's CPU seconds per GB, and of the per-round
//! ratios of 64 KiB frames to 16 KiB frames and to HTTP/1.1.
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
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

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

/// The same uploads over `STREAMS` HTTP/1.1 connections (hyper's client).
async fn round_h1(addr: SocketAddr, token: &str, body: &Bytes, n: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..STREAMS)
        .map(|_| {
            let (next, body, token) = (next.clone(), body.clone(), token.to_owned());
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    sender.ready().await.unwrap();
                    let req = Request::post("/api/image/v1.0/receipt")
                        .header("host", addr.to_string())
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "image/jpeg")
                        .header("content-length", body.len())
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let response = sender.send_request(req).await.unwrap();
                    assert_eq!(response.status(), 201);
                    response.into_body().collect().await.unwrap();
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
    // 0: h2c with 64 KiB frames, 1: h2c with 16 KiB frames, 2: HTTP/1.1.
    const LABELS: [&str; 3] = ["h2c, 64 KiB frames", "h2c, 16 KiB frames", "HTTP/1.1"];
    let run = |k: usize, n: usize| match k {
        0 => harness.block_on(round(served.addr, &token, &body, 64 << 10, n)),
        1 => harness.block_on(round(served.addr, &token, &body, 16 << 10, n)),
        _ => harness.block_on(round_h1(served.addr, &token, &body, n)),
    };
    for k in 0..3 {
        run(k, 2 * STREAMS); // warm-up
    }
    let (mut speed, mut cpu) = (vec![vec![]; 3], vec![vec![]; 3]);
    let (mut vs16, mut vs_h1) = ((vec![], vec![]), (vec![], vec![]));
    let gb = (per_round * BODY) as f64 / 1e9;
    for r in 0..rounds {
        let mut this = [(0.0, 0.0); 3];
        for i in 0..3 {
            let k = (r + i) % 3;
            let cpu0 = threads_cpu("gw");
            let t0 = Instant::now();
            run(k, per_round);
            let wall = t0.elapsed().as_secs_f64();
            let used = threads_cpu("gw") - cpu0;
            this[k] = (gb * 1000.0 / wall, used / gb);
            speed[k].push(this[k].0);
            cpu[k].push(this[k].1);
        }
        vs16.0.push(this[0].0 / this[1].0);
        vs16.1.push(this[0].1 / this[1].1);
        vs_h1.0.push(this[0].0 / this[2].0);
        vs_h1.1.push(this[0].1 / this[2].1);
        let row: Vec<String> = (0..3)
            .map(|k| format!("{} {:.0} MB/s, {:.3} s/GB", LABELS[k], this[k].0, this[k].1))
            .collect();
        println!("round {}: {}", r + 1, row.join("; "));
    }
    let row: Vec<String> = (0..3)
        .map(|k| {
            format!(
                "{} {:.0} MB/s, gateway {:.3} CPU s/GB",
                LABELS[k],
                median(speed[k].clone()),
                median(cpu[k].clone())
            )
        })
        .collect();
    println!(
        "h2_frames: {rounds} rounds x {per_round} x 1 MiB, {STREAMS} at a time; medians: {}; \
         64 KiB frames per round ÷ 16 KiB frames: throughput ×{:.2}, gateway CPU per GB ×{:.2}; \
         ÷ HTTP/1.1: throughput ×{:.2}, gateway CPU per GB ×{:.2}",
        row.join("; "),
        median(vs16.0),
        median(vs16.1),
        median(vs_h1.0),
        median(vs_h1.1)
    );
}
