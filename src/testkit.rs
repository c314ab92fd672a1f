//! Builders shared by the integration tests (`tests/it/`) and the benches
//! (`benches/`), compiled only with the `testkit` feature (which the crate's
//! dev-dependency on itself turns on): nothing here is on the request path.
//!
//! - sample bodies: [`SAMPLE_JPEG`] and [`big_jpeg`];
//! - JWT signing keys of every family the gateway verifies ([`keys`], their
//!   JWKS), standard [`claims`], [`sign`] and [`jwt`];
//! - the sandbox's Concur tokens ([`sandbox_tokens`]) and the matching
//!   `credentials.toml` ([`CREDENTIALS`]);
//! - [`GatewayToml`]: the gateway's config as a TOML table, edited by key
//!   path (`set("server.max_connections", 8)`, `remove(..)`, a snippet
//!   deep-merged as a table), and written next to the files it names;
//! - [`serve`]: a gateway on port 0 (and its admin listener), stopped
//!   through a channel;
//! - a small HTTP/1.1 client: [`request`] (one request on a fresh
//!   connection), [`Reply`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::sandbox::{Sandbox, SandboxConfig, SandboxToken};

// ---- bodies ----------------------------------------------------------------

/// The sample receipt shipped with the demo: a real 240×320 baseline JPEG.
pub const SAMPLE_JPEG: &[u8] = crate::demo::SAMPLE_RECEIPT;

/// A valid JPEG of about `size` bytes: the sample receipt with APP15 segments
/// of pseudo-random filler (xorshift, fixed seed) inserted after SOI.
pub fn big_jpeg(size: usize) -> Vec<u8> {
    let jpeg = SAMPLE_JPEG;
    let mut out = Vec::with_capacity(size + jpeg.len());
    out.extend_from_slice(&jpeg[..2]);
    let mut x: u32 = 0x1234_5678;
    while out.len() + jpeg.len() < size {
        let n = (size - out.len() - jpeg.len()).clamp(16, 65_533);
        out.extend_from_slice(&[0xFF, 0xEF]);
        out.extend_from_slice(&((n + 2) as u16).to_be_bytes());
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(x as u8);
        }
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Deterministic pseudo-random bytes (xorshift64*), like compressed image
/// data.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        v.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The header of [`classic_pdf`]: version 1.7 and a binary comment.
pub const PDF_HEADER: &[u8] = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n";

/// A classic PDF: `objects[i]` is the body of object `i + 1`, with a correct
/// cross-reference table and a trailer with `/Size`, `/Root 1 0 R` and
/// `trailer_extra`.
pub fn classic_pdf(objects: &[Vec<u8>], trailer_extra: &str) -> Vec<u8> {
    let mut out = PDF_HEADER.to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R {trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// `data` zlib-compressed (a PDF's `/FlateDecode`).
pub fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// Lowercase hex SHA-256 (as the sandbox records it).
pub fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

// ---- JWT -------------------------------------------------------------------

pub const ISSUER: &str = "https://idp.test.invalid";
pub const AUDIENCE: &str = "concur-gateway";

/// Signing keys of every supported family, generated once per process: an
/// ES256 key (kid `es`), an RSA 2048 key (kid `rsa`, for RS* and PS*) and an
/// Ed25519 key (kid `ed`), with the JWKS publishing the three.
pub struct Keys {
    pub es256: EncodingKey,
    pub rsa: EncodingKey,
    pub ed25519: EncodingKey,
    /// The RSA public key (SPKI PEM), for the HS256 key-confusion attack.
    pub rsa_public_pem: String,
    pub jwks: String,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let es_raw = es.public_key_raw();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("RSA key");
        let rsa_pkcs8 =
            AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).expect("PKCS#8 DER");
        let rsa_pub = rsa.public_key();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(rsa_pub)
            .expect("SPKI DER");
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
            // jsonwebtoken reads PKCS#8 RSA keys from PEM only.
            rsa: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", rsa_pkcs8.as_ref()).as_bytes())
                .expect("RSA PEM"),
            ed25519: EncodingKey::from_ed_der(&ed.serialize_der()),
            rsa_public_pem: pem("PUBLIC KEY", spki.as_ref()),
            jwks: jwks.to_string(),
        }
    })
}

/// PEM armour around `der`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Standard claims for `company`/`user` ([`ISSUER`], [`AUDIENCE`]), valid
/// for an hour.
pub fn claims(company: &str, user: &str) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": user, "company": company,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
}

/// The key of [`keys`] that signs `alg`.
pub fn encoding_key(alg: Algorithm) -> &'static EncodingKey {
    let k = keys();
    match alg {
        Algorithm::ES256 => &k.es256,
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => &k.rsa,
        Algorithm::EdDSA => &k.ed25519,
        other => panic!("no test key for {other:?}"),
    }
}

/// Signs `claims` with the key of `alg` (`kid` as given).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, encoding_key(alg)).expect("signing")
}

/// An ES256 token (the `es` key) whose JOSE header is exactly `header_json`, for
/// headers `jsonwebtoken::Header` cannot express (`crit`, `b64`, odd spellings).
pub fn sign_es256_with_raw_header(header_json: &str, claims: &serde_json::Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &keys().es256, Algorithm::ES256)
        .expect("signing");
    format!("{message}.{signature}")
}

/// A valid ES256 token for `company`/`user`.
pub fn jwt(company: &str, user: &str) -> String {
    sign(Algorithm::ES256, Some("es"), &claims(company, user))
}

// ---- Concur tokens and credentials -----------------------------------------

pub const ALICE_TOKEN: &str = "concur-alice-token-0001";
pub const ADMIN_TOKEN: &str = "concur-acme-admin-token-0002";
pub const GINA_TOKEN: &str = "concur-gina-token-0003";

/// The tokens the sandbox knows: alice's and an admin's at acme, gina's at
/// globex.
pub fn sandbox_tokens() -> Vec<SandboxToken> {
    vec![
        SandboxToken {
            token: ALICE_TOKEN.into(),
            company: "acme".into(),
            user: Some("alice@acme.example".into()),
        },
        SandboxToken {
            token: ADMIN_TOKEN.into(),
            company: "acme".into(),
            user: None,
        },
        SandboxToken {
            token: GINA_TOKEN.into(),
            company: "globex".into(),
            user: Some("gina@globex.example".into()),
        },
    ]
}

/// The sandbox on loopback port 0, knowing [`sandbox_tokens`] besides what
/// `config` holds.
pub async fn start_sandbox(mut config: SandboxConfig) -> Sandbox {
    config.tokens.extend(sandbox_tokens());
    Sandbox::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("starting the sandbox")
}

/// The gateway's `credentials.toml` for [`sandbox_tokens`].
pub const CREDENTIALS: &str = r#"
[[credential]]
company = "acme"
user = "alice@acme.example"
access_token = "concur-alice-token-0001"

[[credential]]
company = "acme"
access_token = "concur-acme-admin-token-0002"
scheme = "Bearer"

[[credential]]
company = "globex"
user = "gina@globex.example"
access_token = "concur-gina-token-0003"
"#;

// ---- gateway config --------------------------------------------------------

/// The gateway's config as a TOML table. [`GatewayToml::new`] is a config for
/// the sandbox and the keys above: files named relative to the config's
/// folder (`ca.pem`, `jwks.json`, `credentials.toml`, written by
/// [`GatewayToml::write`]), no drain delay, and rate limits out of the way.
/// `upstream.base_url` is the sandbox's unless set.
#[derive(Debug, Clone)]
pub struct GatewayToml(toml::Table);

impl Default for GatewayToml {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayToml {
    pub fn new() -> Self {
        let base = format!(
            r#"
            [server]
            drain_delay_s = 0
            shutdown_grace_s = 5

            [upstream]
            ca_file = "ca.pem"

            [auth]
            issuer = "{ISSUER}"
            audience = "{AUDIENCE}"
            jwks_file = "jwks.json"

            [rate_limit]
            user_per_second = 1000.0
            user_burst = 1000
            company_per_second = 1000.0
            company_burst = 1000
            user_concurrent = 1000
            company_concurrent = 1000

            [credentials]
            file = "credentials.toml"
            "#
        );
        Self(toml::from_str(&base).expect("the base config is TOML"))
    }

    /// Sets the key at `path` (`"server.max_connections"`), creating the
    /// tables on the way.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> Self {
        let (table, key) = self.parent_mut(path);
        table.insert(key.to_owned(), value.into());
        self
    }

    /// Removes the key (or whole table) at `path`, if there is one.
    pub fn remove(mut self, path: &str) -> Self {
        let (table, key) = self.parent_mut(path);
        table.remove(key);
        self
    }

    /// The GCRA limits, each (requests per second, burst): per (company,
    /// user) and per company.
    pub fn rate_limits(self, user: (f64, u32), company: (f64, u32)) -> Self {
        self.set("rate_limit.user_per_second", user.0)
            .set("rate_limit.user_burst", user.1)
            .set("rate_limit.company_per_second", company.0)
            .set("rate_limit.company_burst", company.1)
    }

    /// Replaces the table `name` (`"scan"`, `"server"`) by `table`.
    pub fn section(self, name: &str, table: toml::Table) -> Self {
        self.set(name, table)
    }

    /// Deep-merges `other`: its tables are merged key by key, any other value
    /// replaces the one at the same path.
    pub fn merge(mut self, other: toml::Table) -> Self {
        merge_tables(&mut self.0, other);
        self
    }

    /// Parses `snippet` as TOML and deep-merges it ([`GatewayToml::merge`]).
    pub fn merge_toml(self, snippet: &str) -> Self {
        let table = toml::from_str(snippet)
            .unwrap_or_else(|e| panic!("config snippet is not TOML ({e}):\n{snippet}"));
        self.merge(table)
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&toml::Value> {
        let mut parts = path.split('.');
        let mut value = self.0.get(parts.next()?)?;
        for part in parts {
            value = value.get(part)?;
        }
        Some(value)
    }

    pub fn table(&self) -> &toml::Table {
        &self.0
    }

    /// Writes `ca.pem` (the sandbox's), `jwks.json` ([`keys`]),
    /// `credentials.toml` and `gateway.toml` into `dir`, and returns the
    /// path of `gateway.toml`.
    pub fn write(&self, dir: &Path, sandbox: &Sandbox, credentials: &str) -> PathBuf {
        let write = |name: &str, contents: &[u8]| {
            std::fs::write(dir.join(name), contents)
                .unwrap_or_else(|e| panic!("writing {name}: {e}"))
        };
        write("ca.pem", sandbox.ca_cert_pem().as_bytes());
        write("jwks.json", keys().jwks.as_bytes());
        write("credentials.toml", credentials.as_bytes());
        let mut config = self.clone();
        if config.get("upstream.base_url").is_none() {
            config = config.set("upstream.base_url", sandbox.base_url());
        }
        let path = dir.join("gateway.toml");
        write("gateway.toml", config.to_string().as_bytes());
        path
    }

    /// [`GatewayToml::write`], then the config as the gateway loads it.
    pub fn load(&self, dir: &Path, sandbox: &Sandbox, credentials: &str) -> Config {
        let path = self.write(dir, sandbox, credentials);
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The table holding the last key of `path`, and that key.
    fn parent_mut<'a>(&mut self, path: &'a str) -> (&mut toml::Table, &'a str) {
        let (parents, key) = path
            .rsplit_once('.')
            .map_or((None, path), |(p, k)| (Some(p), k));
        let mut table = &mut self.0;
        for part in parents.into_iter().flat_map(|p| p.split('.')) {
            let entry = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry
                .as_table_mut()
                .unwrap_or_else(|| panic!("`{part}` in `{path}` is not a table"));
        }
        (table, key)
    }
}

impl std::fmt::Display for GatewayToml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = toml::to_string(&self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge_tables(existing, table)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

// ---- a running gateway -----------------------------------------------------

/// A gateway served on port 0 by [`serve`].
pub struct Served {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Send (or drop) to start the drain.
    pub shutdown: tokio::sync::oneshot::Sender<()>,
    /// Ends when `server::run` returns.
    pub task: tokio::task::JoinHandle<()>,
}

/// Runs `gateway` (`server::run`) on loopback port 0, its admin listener too.
pub async fn serve(gateway: Arc<Gateway>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("local address");
    let admin_addr = admin.local_addr().expect("local address");
    let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        crate::server::run(gateway, listener, admin, async {
            let _ = rx.await;
        })
        .await
        .expect("connection workers");
    });
    Served {
        addr,
        admin: admin_addr,
        shutdown,
        task,
    }
}

// ---- client ----------------------------------------------------------------

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a problem+json error with `status` and `code`, and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["status"], status);
        assert_eq!(
            v["request_id"].as_str(),
            self.header("x-request-id"),
            "request_id matches the header"
        );
        for key in ["type", "title", "detail"] {
            assert!(v[key].is_string(), "{key} in {v}");
        }
        v
    }
}

pub enum Payload {
    Full(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked`, in these pieces.
    Chunked(Vec<Vec<u8>>),
}

/// One request on a fresh HTTP/1.1 connection; panics if there is no answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload: Payload,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let body = match payload {
        Payload::Full(b) => Full::new(Bytes::from(b))
            .map_err(|never| match never {})
            .boxed_unsync(),
        Payload::Chunked(pieces) => {
            Pieces(pieces.into_iter().map(Bytes::from).collect()).boxed_unsync()
        }
    };
    let response = sender
        .send_request(builder.body(body).expect("a valid request"))
        .await
        .expect("an answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the answer's body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POSTs an upload with `Authorization: Bearer {token}` and `content_type`.
pub async fn upload_to(
    addr: SocketAddr,
    token: &str,
    path: &str,
    content_type: &str,
    payload: Payload,
) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", content_type),
        ],
        payload,
    )
    .await
}

/// A body of known pieces and unknown length: hyper sends it chunked.
pub struct Pieces(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Pieces {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_edits_are_typed_and_deep() {
        let c = GatewayToml::new()
            .set("server.max_connections", 8)
            .remove("upstream.ca_file")
            .merge_toml("[server]\nbody_idle_timeout_s = 0.3\n[scan]\nclamd = \"tcp://x:1\"");
        assert_eq!(c.get("server.max_connections"), Some(&8.into()));
        assert_eq!(c.get("server.body_idle_timeout_s"), Some(&0.3.into()));
        // Merged, not replaced: the base keys of [server] are still there.
        assert_eq!(c.get("server.drain_delay_s"), Some(&0.into()));
        assert_eq!(c.get("upstream.ca_file"), None);
        assert_eq!(c.get("scan.clamd"), Some(&"tcp://x:1".into()));
        let reparsed: toml::Table = toml::from_str(&c.to_string()).unwrap();
        assert_eq!(&reparsed, c.table());
    }

    #[test]
    fn big_jpeg_is_a_jpeg_of_the_size_asked() {
        let j = big_jpeg(100_000);
        assert!(j.len() >= 100_000 && j.len() < 100_000 + SAMPLE_JPEG.len() + 64);
        assert_eq!(&j[..2], &[0xFF, 0xD8]);
        assert_eq!(&j[j.len() - 2..], &[0xFF, 0xD9]);
    }
}
