//! Rate limiting under overload: does the gateway admit the configured rate
#![allow(clippy::print_stdout)] // a bench reports on stdout
//! (±5 %) when one caller offers 10× that, and do admitted requests keep their
//! latency?
//!
//! `cargo bench --bench overload` (release). In one process: the Concur
//! sandbox (TLS), the gateway on loopback, and an open-loop load generator
//! that fires requests at a fixed rate, whatever the answers. Two phases of
//! the same length with the same caller limit:
//! - baseline: offered = the configured rate;
//! - overload: offered = 10 × the configured rate.
//!
//! It prints the admitted rate of each phase against the configured one and
//! the p50/p99 latency of admitted (201) requests. The admitted rate is
//! counted beyond the bucket's initial burst: (admitted − burst) / seconds,
//! which is what GCRA promises to hold to the configured rate. Knobs (env):
//! `RATE` (default 20 req/s), `BURST` (default 5), `SECONDS` (default 10),
//! `BODY_KIB` (default 100).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concur_gateway::config::Config;
use concur_gateway::demo::{AUDIENCE, ISSUER, SAMPLE_RECEIPT, SigningKey};
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{Sandbox, SandboxConfig, SandboxToken};
use http_body_util::{BodyExt, Full};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid JPEG of about `size` bytes (APP15 filler after SOI).
fn jpeg(size: usize) -> Vec<u8> {
    let mut out = SAMPLE_RECEIPT[..2].to_vec();
    while out.len() + SAMPLE_RECEIPT.len() < size {
        let n = (size - out.len() - SAMPLE_RECEIPT.len()).clamp(16, 65_533);
        out.extend_from_slice(&[0xFF, 0xEF]);
        out.extend_from_slice(&((n + 2) as u16).to_be_bytes());
        out.extend(std::iter::repeat_n(0x5A, n));
    }
    out.extend_from_slice(&SAMPLE_RECEIPT[2..]);
    out
}

struct Phase {
    offered: f64,
    burst: usize,
    admitted: usize,
    refused: usize,
    other: usize,
    latencies_ms: Vec<f64>,
    seconds: f64,
}

impl Phase {
    fn admitted_rate(&self) -> f64 {
        self.admitted.saturating_sub(self.burst) as f64 / self.seconds
    }
    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
}

async fn one(addr: SocketAddr, jwt: Arc<str>, body: Bytes) -> (u16, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/api/image/v1.0/report/R1")
        .header("host", "gateway")
        .header("authorization", format!("Bearer {jwt}"))
        .header("content-type", "image/jpeg")
        .body(Full::new(body))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    (status, started.elapsed())
}

/// Open loop: requests leave on schedule whatever the answers.
async fn run_phase(
    addr: SocketAddr,
    jwt: Arc<str>,
    body: Bytes,
    rate: f64,
    seconds: f64,
    burst: usize,
) -> Phase {
    let n = (rate * seconds).round() as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + period * i as u32).await;
        tasks.push(tokio::spawn(one(addr, jwt.clone(), body.clone())));
    }
    let mut phase = Phase {
        offered: rate,
        burst,
        admitted: 0,
        refused: 0,
        other: 0,
        latencies_ms: Vec::new(),
        seconds,
    };
    for t in tasks {
        let (status, took) = t.await.unwrap();
        match status {
            201 => {
                phase.admitted += 1;
                phase.latencies_ms.push(took.as_secs_f64() * 1000.0);
            }
            429 => phase.refused += 1,
            _ => phase.other += 1,
        }
    }
    phase
}

fn main() {
    let rate = env("RATE", 20.0);
    let seconds = env("SECONDS", 10.0);
    let body_kib = env("BODY_KIB", 100.0) as usize;
    let burst = env("BURST", 5.0) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                tokens: vec![SandboxToken {
                    token: "bench-token".into(),
                    company: "acme".into(),
                    user: Some("alice".into()),
                }],
                ..SandboxConfig::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate("bench").unwrap();
        std::fs::write(dir.path().join("ca.pem"), sandbox.ca_cert_pem()).unwrap();
        std::fs::write(dir.path().join("jwks.json"), &key.jwks).unwrap();
        std::fs::write(
            dir.path().join("credentials.toml"),
            "[[credential]]\ncompany = \"acme\"\nuser = \"alice\"\naccess_token = \"bench-token\"\n",
        )
        .unwrap();
        let config = format!(
            "[server]\ndrain_delay_s = 0\n[upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\n\
             [auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n\
             [rate_limit]\nuser_per_second = {rate}\nuser_burst = {burst}\ncompany_per_second = 100000.0\ncompany_burst = 100000\n\
             [inspect]\ndigest = \"none\"\n[credentials]\nfile = \"credentials.toml\"\n",
            sandbox.base_url()
        );
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let gw = Arc::new(Gateway::new(Config::load(&path).unwrap()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(concur_gateway::server::run(
            gw,
            listener,
            admin,
            std::future::pending(),
        ));
        let jwt: Arc<str> = key.mint("acme", "alice", 3600).unwrap().into();
        let body = Bytes::from(jpeg(body_kib * 1024));

        // Warm-up, then let the bucket refill.
        // Each phase starts with a full bucket (refilled while idle).
        let refill = Duration::from_secs_f64(burst as f64 / rate + 0.5);
        run_phase(addr, jwt.clone(), body.clone(), rate, 1.0, burst).await;
        tokio::time::sleep(refill).await;
        let baseline = run_phase(addr, jwt.clone(), body.clone(), rate, seconds, burst).await;
        tokio::time::sleep(refill).await;
        sandbox.clear_uploads();
        let overload =
            run_phase(addr, jwt.clone(), body.clone(), rate * 10.0, seconds, burst).await;

        println!(
            "\nrate limit under overload: configured {rate} req/s per user (burst {burst}), {seconds} s per phase, {body_kib} KiB JPEG bodies"
        );
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>7} {:>6} {:>10} {:>9} {:>9}",
            "phase", "offered/s", "admitted", "refused", "other", "adm/s*", "vs config", "p50 ms", "p99 ms"
        );
        for (name, p) in [("baseline", &baseline), ("10x", &overload)] {
            println!(
                "{:<10} {:>9.1} {:>9} {:>9} {:>7} {:>6.2} {:>+9.1}% {:>9.2} {:>9.2}",
                name,
                p.offered,
                p.admitted,
                p.refused,
                p.other,
                p.admitted_rate(),
                (p.admitted_rate() / rate - 1.0) * 100.0,
                p.percentile(0.5),
                p.percentile(0.99)
            );
        }
        println!("* admitted beyond the initial burst, per second");
        println!(
            "p99 of admitted requests, 10x / baseline: {:.2}",
            overload.percentile(0.99) / baseline.percentile(0.99)
        );
        sandbox.shutdown().await;
    });
}
