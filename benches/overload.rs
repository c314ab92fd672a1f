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
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::SandboxConfig;
use concur_gateway::testkit::{
    CREDENTIALS, GatewayToml, Payload, big_jpeg, jwt, serve, start_sandbox, upload_to,
};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// One upload on a fresh connection: its status and latency.
async fn one(addr: SocketAddr, jwt: Arc<str>, body: Bytes) -> (u16, Duration) {
    let payload = Payload::Full(body.to_vec());
    let started = Instant::now();
    let r = upload_to(
        addr,
        &jwt,
        "/api/image/v1.0/report/R1",
        "image/jpeg",
        payload,
    )
    .await;
    (r.status.as_u16(), started.elapsed())
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
        let sandbox = start_sandbox(SandboxConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        // The caller's rate limit under test, the company's out of the way;
        // the caps on uploads in flight at their defaults (8 per user).
        let config = GatewayToml::new()
            .rate_limits((rate, burst as u32), (100_000.0, 100_000))
            .remove("rate_limit.user_concurrent")
            .remove("rate_limit.company_concurrent")
            .set("inspect.digest", "none")
            .load(dir.path(), &sandbox, CREDENTIALS);
        let gw = Arc::new(Gateway::new(config).unwrap());
        // Served until the process ends (`_served` holds the shutdown sender).
        let _served = serve(gw).await;
        let addr = _served.addr;
        let jwt: Arc<str> = jwt("acme", "alice@acme.example").into();
        let body = Bytes::from(big_jpeg(body_kib * 1024));

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
