//! The whole request path in-process: `stack::build` driven with
//! `tower::ServiceExt::oneshot`, no client socket and no HTTP parsing on the
//! client side. **The upstream is real**: the Concur sandbox over TLS on
//! loopback (in the same process and runtime), which reads the whole body,
//! hashes it and answers `201` with the Image XML. So the figures include one
//! TLS exchange on a pooled keep-alive connection and the sandbox's own work.
//!
//! * `upload_jpeg_{digest}`: the demo's 240×320 receipt (6.5 KiB): JWT (cached
//!   after the first request, as for a caller reusing its token), rate limit,
//!   route, credential, inspection, digest (`none` / `sha-256`), Concur, XML →
//!   JSON; sequential, one request in flight;
//! * `upload_jpeg_1MiB_none`: the same with a 1 MiB JPEG;
//! * `rejected_415`: the stack without the upstream: auth, rate limit, route,
//!   and a problem+json answer for an unsupported `Content-Type`.
//!
//! `cargo bench --bench request -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{Sandbox, SandboxConfig};
use concur_gateway::stack;
use concur_gateway::testkit::{
    CREDENTIALS, GatewayToml, SAMPLE_JPEG, big_jpeg, jwt, start_sandbox,
};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

struct Setup {
    sandbox: Sandbox,
    gw: Arc<Gateway>,
    jwt: String,
    _dir: tempfile::TempDir,
}

async fn setup(digest: &str) -> Setup {
    let sandbox = start_sandbox(SandboxConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayToml::new()
        .rate_limits((1e6, 1_000_000), (1e6, 1_000_000))
        .set("inspect.digest", digest)
        .load(dir.path(), &sandbox, CREDENTIALS);
    let gw = Arc::new(Gateway::new(config).unwrap());
    Setup {
        sandbox,
        gw,
        jwt: jwt("acme", "alice@acme.example"),
        _dir: dir,
    }
}

async fn one(gw: &Arc<Gateway>, jwt: &str, content_type: &str, body: &Bytes) -> u16 {
    let req = Request::post("/api/image/v1.0/receipt")
        .header("host", "gateway.test")
        .header("authorization", format!("Bearer {jwt}"))
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(Full::new(body.clone()))
        .unwrap();
    let response = stack::build::<Full<Bytes>>(gw.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.unwrap();
    status
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = Bytes::from_static(SAMPLE_JPEG);
    let mib = Bytes::from(big_jpeg(1024 * 1024));
    let mut g = c.benchmark_group("request_in_process");
    for (name, digest, content_type, body, expect) in [
        ("upload_jpeg_6KiB_none", "none", "image/jpeg", &small, 201),
        (
            "upload_jpeg_6KiB_sha256",
            "sha-256",
            "image/jpeg",
            &small,
            201,
        ),
        ("upload_jpeg_1MiB_none", "none", "image/jpeg", &mib, 201),
        ("rejected_415", "none", "text/plain", &small, 415),
    ] {
        let s = rt.block_on(setup(digest));
        // Warm the upstream connection pool and the token cache.
        assert_eq!(rt.block_on(one(&s.gw, &s.jwt, content_type, body)), expect);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let status = one(&s.gw, &s.jwt, content_type, body).await;
                        assert_eq!(status, expect);
                    }
                    let elapsed = start.elapsed();
                    // Records keep headers: forget them between batches.
                    s.sandbox.clear_uploads();
                    elapsed
                })
            })
        });
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), s.sandbox.shutdown())
                .await
                .ok()
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
