//! The per-request pure paths, without sockets:
//!
//! * `xml_to_json`: Concur's `<Image>` answer (every successful upload), its
//!   `<Error>` answer, and a ~512 KiB document (MB/s: the 1 MiB cap's scale);
//! * JWT verification for RS256 (2048-bit), ES256 and EdDSA:
//!   - `cold`: a token the [`Authenticator`] has not seen: header parse, key
//!     selection, signature check, claims, plus the SHA-256 and cache insert
//!     that `verify` adds. Every iteration verifies a *distinct* token (minted
//!     up front) on an authenticator fresh for each timed batch;
//!   - `cached`: the same token again (SHA-256 of the token + map lookup + time
//!     checks): what a caller reusing its JWT pays;
//! * `RateLimits::check`: one user and one company GCRA cell (governor,
//!   DashMap), for a single hot caller and spread over 1000 callers;
//! * the HTTP/1.1 head watch (`head_watch.rs`): one upload (a head of 11
//!   fields, 1.2 KiB with its JWT, and a 100 KiB body) read through it in
//!   64 KiB reads, its note applied to the request, against the same bytes
//!   read without it (`plain`): what the watch costs a request.
//!
//! `cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concur_gateway::auth::{Authenticator, Identity, KeySet, SystemClock};
use concur_gateway::config::{AuthConfig, KeySource, RateLimitConfig};
use concur_gateway::rate_limit::RateLimits;
use concur_gateway::testkit;
use concur_gateway::transform::xml_to_json;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;

const IMAGE_XML: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Image xmlns=\"http://www.concursolutions.com/api/image/2011/02\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Id>A2C40CEE415B43B2A0BE</Id><Url i:nil=\"true\" /></Image>";
const ERROR_XML: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Message>An image already exists for this expense entry.</Message><Server-Time>2024-05-02T10:11:12</Server-Time><Id>9C1B1A3B6F0D4E2A8C7B</Id></Error>";

/// ~512 KiB: a list of images with attributes, nil elements and entities.
fn large_xml() -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Images xmlns=\"http://www.concursolutions.com/api/image/2011/02\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">",
    );
    let mut i = 0;
    while s.len() < 512 * 1024 {
        s.push_str(&format!(
            "<Image kind=\"receipt\"><Id>{i:020X}</Id><Url>https://www.concursolutions.com/images/{i}?a=1&amp;b=2</Url><Owner><Company>acme</Company><User>alice@acme.example</User></Owner><Note i:nil=\"true\"/></Image>"
        ));
        i += 1;
    }
    s.push_str("</Images>");
    s
}

fn bench_xml(c: &mut Criterion) {
    let mut g = c.benchmark_group("xml_to_json");
    g.bench_function("image_response", |b| {
        b.iter(|| xml_to_json(black_box(IMAGE_XML.as_bytes())).unwrap())
    });
    g.bench_function("error_response", |b| {
        b.iter(|| xml_to_json(black_box(ERROR_XML.as_bytes())).unwrap())
    });
    let large = large_xml();
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function(format!("large_{}KiB", large.len() / 1024), |b| {
        b.iter(|| xml_to_json(black_box(large.as_bytes())).unwrap())
    });
    g.finish();
}

// ---- JWT ----

fn auth_config() -> AuthConfig {
    AuthConfig {
        issuer: testkit::ISSUER.into(),
        audience: testkit::AUDIENCE.into(),
        keys: KeySource::JwksFile(PathBuf::from("unused.json")),
        user_claim: "sub".into(),
        company_claim: "company".into(),
        leeway: Duration::from_secs(30),
    }
}

/// The `n`th distinct token signed with `alg` (`testkit`'s keys).
fn mint(alg: Algorithm, kid: &str, n: usize) -> String {
    let mut claims = testkit::claims("acme", &format!("user{n}@acme.example"));
    claims["jti"] = n.into();
    testkit::sign(alg, Some(kid), &claims)
}

fn bench_jwt(c: &mut Criterion) {
    let jwks = &testkit::keys().jwks;
    let config = auth_config();
    let fresh = || {
        Authenticator::new(
            &config,
            KeySet::from_jwks(jwks.as_bytes()).unwrap(),
            Arc::new(SystemClock),
        )
    };
    const POOL: usize = 512;
    let mut g = c.benchmark_group("jwt_verify");
    for (name, alg, kid) in [
        ("rs256", Algorithm::RS256, "rsa"),
        ("es256", Algorithm::ES256, "es"),
        ("eddsa", Algorithm::EdDSA, "ed"),
    ] {
        let tokens: Vec<String> = (0..POOL).map(|n| mint(alg, kid, n)).collect();
        // Cold: distinct tokens, a fresh authenticator (empty cache) per pool.
        g.bench_function(format!("{name}_cold"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(POOL);
                    let auth = fresh();
                    let start = Instant::now();
                    for t in &tokens[..n] {
                        black_box(auth.verify(black_box(t)).unwrap());
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
        let auth = fresh();
        auth.verify(&tokens[0]).unwrap();
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| auth.verify(black_box(&tokens[0])).unwrap())
        });
    }
    g.finish();
}

// ---- rate limiter ----

fn bench_limiter(c: &mut Criterion) {
    let config = RateLimitConfig {
        user_per_second: 1e9,
        user_burst: 1_000_000,
        company_per_second: 1e9,
        company_burst: 1_000_000,
        user_concurrent: 8,
        company_concurrent: 32,
    };
    let limits = RateLimits::new(&config);
    let callers: Vec<Identity> = (0..1000)
        .map(|i| Identity {
            company: format!("company{}", i % 50),
            user: format!("user{i}@example.com"),
        })
        .collect();
    let mut g = c.benchmark_group("rate_limit_check");
    g.bench_function("one_caller", |b| {
        b.iter(|| limits.check(black_box(&callers[0])).unwrap())
    });
    let mut i = 0usize;
    g.bench_function("1000_callers", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % callers.len();
                &callers[i]
            },
            |who| limits.check(black_box(who)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_head_watch(c: &mut Criterion) {
    use concur_gateway::head_watch::{HeadNotes, HeadWatch};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    const BODY: usize = 100 * 1024;
    let head = format!(
        "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {}\r\nContent-Type: image/jpeg\r\nContent-Length: {BODY}\r\nUser-Agent: expense-service/4.2 (hyper)\r\nAccept: application/json\r\nAccept-Encoding: identity\r\nX-Request-Id: 8f0c2b7e5d1a4c3b9e6f0a1b\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nIdempotency-Key: 3f1e9a2c-7b4d-4e8a-9c1f-5d2b6a8e0f13\r\nConnection: keep-alive\r\n\r\n",
        "e".repeat(900)
    );
    let wire = [head.as_bytes(), &vec![0xAB; BODY][..]].concat();
    fn read_all(r: &mut (impl AsyncRead + Unpin), space: &mut [u8]) -> usize {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut total = 0;
        loop {
            let mut buf = ReadBuf::new(space);
            match std::pin::Pin::new(&mut *r).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return total,
                Poll::Ready(Ok(())) => total += buf.filled().len(),
                other => panic!("{other:?}"),
            }
        }
    }
    let mut space = vec![0u8; 64 * 1024];
    let mut g = c.benchmark_group("head_watch");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain", |b| {
        b.iter(|| {
            let mut r = std::io::Cursor::new(&wire[..]);
            black_box(read_all(&mut r, &mut space))
        })
    });
    g.bench_function("watched", |b| {
        b.iter(|| {
            let notes = Arc::new(HeadNotes::default());
            let mut r = HeadWatch::new(std::io::Cursor::new(&wire[..]), notes.clone());
            let n = read_all(&mut r, &mut space);
            let mut req = http::Request::post("/api/image/v1.0/report/R1")
                .body(())
                .unwrap();
            notes.apply(&mut req);
            black_box((n, req))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_xml,
    bench_jwt,
    bench_limiter,
    bench_head_watch
);
criterion_main!(benches);
