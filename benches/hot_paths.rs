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
//!   DashMap), for a single hot caller and spread over 1000 callers.
//!
//! `cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use concur_gateway::auth::{Authenticator, Identity, KeySet, SystemClock};
use concur_gateway::config::{AuthConfig, KeySource, RateLimitConfig};
use concur_gateway::rate_limit::RateLimits;
use concur_gateway::transform::xml_to_json;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

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

struct Keys {
    es256: EncodingKey,
    rs256: EncodingKey,
    eddsa: EncodingKey,
    jwks: String,
}

fn keys() -> Keys {
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let es_raw = es.public_key_raw();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let rsa_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).unwrap();
    let rsa_pub = rsa.public_key();
    let jwks = serde_json::json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "es", "use": "sig",
         "x": URL_SAFE_NO_PAD.encode(&es_raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&es_raw[33..65])},
        {"kty": "RSA", "kid": "rsa", "use": "sig",
         "n": URL_SAFE_NO_PAD.encode(rsa_pub.modulus().big_endian_without_leading_zero()),
         "e": URL_SAFE_NO_PAD.encode(rsa_pub.exponent().big_endian_without_leading_zero())},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig",
         "x": URL_SAFE_NO_PAD.encode(ed.public_key_raw())},
    ]});
    Keys {
        es256: EncodingKey::from_ec_der(&es.serialize_der()),
        rs256: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", rsa_pkcs8.as_ref()).as_bytes())
            .unwrap(),
        eddsa: EncodingKey::from_ed_der(&ed.serialize_der()),
        jwks: jwks.to_string(),
    }
}

/// PEM armour (jsonwebtoken reads PKCS#8 RSA keys from PEM).
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn auth_config() -> AuthConfig {
    AuthConfig {
        issuer: "https://idp.bench.invalid".into(),
        audience: "concur-gateway".into(),
        keys: KeySource::JwksFile(PathBuf::from("unused.json")),
        user_claim: "sub".into(),
        company_claim: "company".into(),
        leeway: Duration::from_secs(30),
    }
}

fn mint(key: &EncodingKey, alg: Algorithm, kid: &str, n: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "https://idp.bench.invalid", "aud": "concur-gateway",
        "sub": format!("user{n}@acme.example"), "company": "acme",
        "iat": now, "nbf": now, "exp": now + 3600, "jti": n,
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn bench_jwt(c: &mut Criterion) {
    let k = keys();
    let config = auth_config();
    let fresh = || {
        Authenticator::new(
            &config,
            KeySet::from_jwks(k.jwks.as_bytes()).unwrap(),
            Arc::new(SystemClock),
        )
    };
    const POOL: usize = 512;
    let mut g = c.benchmark_group("jwt_verify");
    for (name, key, alg, kid) in [
        ("rs256", &k.rs256, Algorithm::RS256, "rsa"),
        ("es256", &k.es256, Algorithm::ES256, "es"),
        ("eddsa", &k.eddsa, Algorithm::EdDSA, "ed"),
    ] {
        let tokens: Vec<String> = (0..POOL).map(|n| mint(key, alg, kid, n)).collect();
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

criterion_group!(benches, bench_xml, bench_jwt, bench_limiter);
criterion_main!(benches);
