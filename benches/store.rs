#![allow(clippy::print_stdout)] // a bench reports on stdout
//! What `[store] backend = "redis"` costs per upload, against `memory`, in
//! one run: the latency added by the admission script (one Redis round trip
//! on loopback) and the number of Redis commands per upload.
//!
//! Two gateways in this process in front of one Concur sandbox (TLS on
//! loopback, reads the whole body), identical but for `[store]`; a
//! `redis-server` started here on a free port. Uploads of 100 KiB JPEGs go
//! through the whole stack (`stack::build` + `oneshot`: no client socket),
//! one at a time, in alternating rounds; the figures are the medians over
//! rounds of each round's p50 and p99. Redis commands per upload come from
//! `INFO commandstats` before and after the redis rounds (the release of an
//! upload's in-flight places rides on the next admission, or goes alone after
//! a millisecond when none follows: it is counted, it is not on the path).
//!
//! `cargo bench --bench store` (needs `redis-server`; `ROUNDS`, `PER_ROUND`)

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use concur_gateway::config::Config;
use concur_gateway::demo::{AUDIENCE, ISSUER, SigningKey};
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{Sandbox, SandboxConfig, SandboxToken};
use concur_gateway::stack;
use concur_gateway::testkit::big_jpeg;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

const USER_TOKEN: &str = "bench-user-token";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (round trips, all commands): script invocations (`EVALSHA`/`EVAL`, one
/// round trip each; the gateway sends nothing else per upload), and every
/// command including those the scripts run inside Redis. The health loop's
/// `PING` and this bench's own `INFO` are left out.
fn redis_calls(port: u16) -> (u64, u64) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let calls = |l: &str| -> u64 {
        l.split("calls=")
            .nth(1)
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut trips, mut all) = (0, 0);
    for l in text.lines().filter(|l| {
        l.starts_with("cmdstat_")
            && !l.starts_with("cmdstat_info")
            && !l.starts_with("cmdstat_ping")
    }) {
        all += calls(l);
        if l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:") {
            trips += calls(l);
        }
    }
    (trips, all)
}

async fn gateway(dir: &std::path::Path, base_url: &str, store: &str) -> Arc<Gateway> {
    gateway_with(dir, base_url, store, "none").await
}

async fn gateway_with(
    dir: &std::path::Path,
    base_url: &str,
    store: &str,
    digest: &str,
) -> Arc<Gateway> {
    let text = format!(
        "[upstream]\nbase_url = \"{base_url}\"\nca_file = \"ca.pem\"\n\n\
         [auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n\n\
         [rate_limit]\nuser_per_second = 1000000.0\nuser_burst = 1000000\ncompany_per_second = 1000000.0\ncompany_burst = 1000000\n\n\
         [inspect]\ndigest = \"{digest}\"\n\n\
         [credentials]\nfile = \"credentials.toml\"\n\n{store}"
    );
    let gw = Arc::new(Gateway::new(Config::from_toml(&text, dir).unwrap()).unwrap());
    // The store's health loop connects in the background.
    let _housekeeping = gw.spawn_housekeeping();
    if let Some(redis) = gw.store.redis() {
        while !redis.connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::mem::forget(_housekeeping);
    }
    gw
}

async fn round(gw: &Arc<Gateway>, jwt: &str, body: &Bytes, n: usize) -> Vec<Duration> {
    keyed_round(gw, jwt, body, n, false).await
}

/// `n` sequential uploads; with `keyed`, each with a fresh `Idempotency-Key`
/// (stored, never replayed).
async fn keyed_round(
    gw: &Arc<Gateway>,
    jwt: &str,
    body: &Bytes,
    n: usize,
    keyed: bool,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = Request::post("/api/image/v1.0/receipt");
        if keyed {
            req = req.header("idempotency-key", concur_gateway::request_id::generate());
        }
        let req = req
            .header("host", "gateway")
            .header("authorization", format!("Bearer {jwt}"))
            .header("content-type", "image/jpeg")
            .header("content-length", body.len())
            .body(Full::new(body.clone()))
            .unwrap();
        let started = Instant::now();
        let response = stack::build::<Full<Bytes>>(gw.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await.unwrap();
        out.push(started.elapsed());
        assert_eq!(status, 201);
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("store bench: redis-server not installed; nothing measured");
        return;
    }
    let (rounds, per_round) = (env("ROUNDS", 7), env("PER_ROUND", 300));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                tokens: vec![SandboxToken {
                    token: USER_TOKEN.into(),
                    company: "acme".into(),
                    user: Some("alice@acme.example".into()),
                }],
                ..SandboxConfig::default()
            },
        )
        .await
        .unwrap();
        let key = SigningKey::generate("bench").unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &sandbox.ca_cert_pem());
        write("jwks.json", &key.jwks);
        write(
            "credentials.toml",
            &format!("[[credential]]\ncompany = \"acme\"\nuser = \"alice@acme.example\"\naccess_token = \"{USER_TOKEN}\"\n"),
        );
        write("store.key", &base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
        let memory = gateway(dir.path(), &sandbox.base_url(), "").await;
        let shared = gateway(
            dir.path(),
            &sandbox.base_url(),
            &format!("[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nencryption_key_file = \"store.key\"\ntimeout_ms = 50\n"),
        )
        .await;
        let jwt = key.mint("acme", "alice@acme.example", 3600).unwrap();
        let body = Bytes::from(big_jpeg(100 * 1024));
        // Warm-up: connections, JWT cache, scripts loaded.
        round(&memory, &jwt, &body, 50).await;
        round(&shared, &jwt, &body, 50).await;
        let (mut m50, mut m99, mut r50, mut r99) = (vec![], vec![], vec![], vec![]);
        let (mut trips, mut calls, mut uploads) = (0u64, 0u64, 0u64);
        for _ in 0..rounds {
            let mut m = round(&memory, &jwt, &body, per_round).await;
            m50.push(pct(&mut m, 0.50));
            m99.push(pct(&mut m, 0.99));
            let before = redis_calls(port);
            let mut r = round(&shared, &jwt, &body, per_round).await;
            tokio::time::sleep(Duration::from_millis(200)).await; // releases land
            let after = redis_calls(port);
            trips += after.0 - before.0;
            calls += after.1 - before.1;
            uploads += per_round as u64;
            r50.push(pct(&mut r, 0.50));
            r99.push(pct(&mut r, 0.99));
        }
        let (m50, m99, r50, r99) = (median(m50), median(m99), median(r50), median(r99));
        println!("store bench: {rounds} rounds x {per_round} sequential 100 KiB uploads per backend, medians of per-round percentiles");
        println!("  memory: p50 {:>8.3} ms  p99 {:>8.3} ms", m50.as_secs_f64() * 1e3, m99.as_secs_f64() * 1e3);
        println!("  redis:  p50 {:>8.3} ms  p99 {:>8.3} ms", r50.as_secs_f64() * 1e3, r99.as_secs_f64() * 1e3);
        println!(
            "  added by redis: p50 {:+.3} ms  p99 {:+.3} ms",
            (r50.as_secs_f64() - m50.as_secs_f64()) * 1e3,
            (r99.as_secs_f64() - m99.as_secs_f64()) * 1e3
        );
        println!(
            "  redis round trips per upload: {:.2} (the admission script on the path, carrying the previous upload's release; a release goes alone when no admission follows within 1 ms), {:.1} commands run inside Redis",
            trips as f64 / uploads as f64,
            calls as f64 / uploads as f64
        );

        // What an Idempotency-Key adds (memory backend): the SHA-256 it
        // forces, beside inspect.digest = "sha-256" doing the same hashing.
        let plain = gateway_with(dir.path(), &sandbox.base_url(), "", "none").await;
        let sha = gateway_with(dir.path(), &sandbox.base_url(), "", "sha-256").await;
        let per_size = [(100 * 1024, per_round), (8 * 1024 * 1024, (per_round / 20).max(5))];
        println!("idempotency bench: {rounds} rounds, medians of per-round p50, memory backend");
        for (size, n) in per_size {
            let body = Bytes::from(big_jpeg(size));
            keyed_round(&plain, &jwt, &body, 3, true).await;
            keyed_round(&sha, &jwt, &body, 3, false).await;
            let (mut base, mut key, mut digest) = (vec![], vec![], vec![]);
            for _ in 0..rounds {
                base.push(pct(&mut keyed_round(&plain, &jwt, &body, n, false).await, 0.5));
                key.push(pct(&mut keyed_round(&plain, &jwt, &body, n, true).await, 0.5));
                digest.push(pct(&mut keyed_round(&sha, &jwt, &body, n, false).await, 0.5));
            }
            let (base, key, digest) = (median(base), median(key), median(digest));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "  {:>4} KiB: digest none p50 {:.3} ms; + Idempotency-Key {:+.3} ms; digest sha-256 instead {:+.3} ms",
                size / 1024,
                ms(base),
                ms(key) - ms(base),
                ms(digest) - ms(base)
            );
        }
        sandbox.shutdown().await;
    });
    let _ = redis.kill();
    let _ = redis.wait();
}
