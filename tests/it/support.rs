//! Test support: a whole gateway on port 0 in front of the real sandbox over
//! real TLS, JWT keys generated at test time, and a small HTTP/1.1 client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use concur_gateway::auth::ManualClock;
use concur_gateway::config::Config;
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{OAuthClient, Sandbox, SandboxConfig, SandboxToken, UploadRecord};
use concur_gateway::server;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::net::TcpListener;

pub const ISSUER: &str = "https://idp.test.invalid";
pub const AUDIENCE: &str = "concur-gateway";
pub const ALICE_TOKEN: &str = "concur-alice-token-0001";
pub const ADMIN_TOKEN: &str = "concur-acme-admin-token-0002";
pub const GINA_TOKEN: &str = "concur-gina-token-0003";

/// The sample receipt shipped with the demo: a real baseline JPEG.
pub const JPEG: &[u8] = concur_gateway::demo::SAMPLE_RECEIPT;

pub fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signing keys of every supported family, generated once per test process.
pub struct Keys {
    pub es256_pkcs8: Vec<u8>,
    pub rsa_pem: String,
    pub rsa_public_pem: String,
    pub ed25519_pkcs8: Vec<u8>,
    pub jwks: String,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let es_raw = es.public_key_raw();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&rsa).unwrap();
        let rsa_pub = rsa.public_key();
        let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(rsa_pub).unwrap();
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
            es256_pkcs8: es.serialize_der(),
            rsa_pem: pem("PRIVATE KEY", rsa_pkcs8.as_ref()),
            rsa_public_pem: pem("PUBLIC KEY", spki.as_ref()),
            ed25519_pkcs8: ed.serialize_der(),
            jwks: jwks.to_string(),
        }
    })
}

/// Standard claims for `company`/`user`, valid for an hour.
pub fn claims(company: &str, user: &str) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": user, "company": company,
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    })
}

/// Signs `claims` with the key of `alg` (`kid` as given).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let k = keys();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&k.es256_pkcs8),
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(k.rsa_pem.as_bytes()).unwrap()
        }
        Algorithm::EdDSA => EncodingKey::from_ed_der(&k.ed25519_pkcs8),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// An ES256 token (the `es` key) whose JOSE header is exactly `header_json`, for
/// headers `jsonwebtoken::Header` cannot express (`crit`, `b64`, odd spellings).
pub fn sign_es256_with_raw_header(header_json: &str, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_ec_der(&keys().es256_pkcs8);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

/// A valid ES256 token for `company`/`user`.
pub fn jwt(company: &str, user: &str) -> String {
    sign(Algorithm::ES256, Some("es"), &claims(company, user))
}

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

/// How a [`Harness`] starts, beyond the defaults.
#[derive(Default)]
pub struct Options {
    /// TOML merged into the generated config (whole sections).
    pub extra: String,
    /// The credentials file (default: [`CREDENTIALS`]).
    pub credentials: Option<String>,
    /// OAuth2 clients the sandbox's token endpoint knows.
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of the sandbox's access tokens (zero: 3600 s).
    pub access_token_ttl: Duration,
    /// The gateway's clock (default: the system clock).
    pub clock: Option<Arc<ManualClock>>,
}

/// A gateway and its sandbox, on port 0.
pub struct Harness {
    pub sandbox: Sandbox,
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    clock: Option<Arc<ManualClock>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with_config("").await
    }

    /// Verification keys from `idp` instead of a file; `auth_extra` adds
    /// `[auth]` keys.
    pub async fn with_jwks_url(idp: &JwksServer, auth_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("idp-ca.pem");
        std::fs::write(&ca, &idp.ca_pem).unwrap();
        let h = Self::with_config(&format!(
            "[auth]\njwks_file = \"\"\njwks_url = \"{}\"\njwks_ca_file = \"{}\"\n{auth_extra}",
            idp.url,
            ca.display()
        ))
        .await;
        std::mem::forget(dir);
        h
    }

    /// `extra` is TOML merged into the generated config (whole sections).
    pub async fn with_config(extra: &str) -> Self {
        Self::with_options(Options {
            extra: extra.to_owned(),
            ..Options::default()
        })
        .await
    }

    pub async fn with_options(options: Options) -> Self {
        let extra = options.extra.as_str();
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                tokens: vec![
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
                ],
                oauth_clients: options.oauth_clients.clone(),
                access_token_ttl: options.access_token_ttl,
                ..SandboxConfig::default()
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), sandbox.ca_cert_pem()).unwrap();
        std::fs::write(dir.path().join("jwks.json"), &keys().jwks).unwrap();
        std::fs::write(
            dir.path().join("credentials.toml"),
            options.credentials.as_deref().unwrap_or(CREDENTIALS),
        )
        .unwrap();
        // For tests that set `credentials.state_dir = "state"`.
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let mut sections: Vec<(String, String)> = vec![
            (
                "server".into(),
                "drain_delay_s = 0\nshutdown_grace_s = 5\n".into(),
            ),
            (
                "upstream".into(),
                format!("base_url = \"{}\"\nca_file = \"ca.pem\"\n", sandbox.base_url()),
            ),
            (
                "auth".into(),
                format!("issuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n"),
            ),
            (
                "rate_limit".into(),
                "user_per_second = 1000.0\nuser_burst = 1000\ncompany_per_second = 1000.0\ncompany_burst = 1000\nuser_concurrent = 1000\ncompany_concurrent = 1000\n"
                    .into(),
            ),
            ("credentials".into(), "file = \"credentials.toml\"\n".into()),
        ];
        // Merge `extra`: keys under a [section] replace or extend that section.
        let mut current: Option<usize> = None;
        for line in extra.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = Some(match sections.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        sections.push((name.to_owned(), String::new()));
                        sections.len() - 1
                    }
                });
                continue;
            }
            let i = current.expect("extra config starts with a [section]");
            let key = line.split('=').next().unwrap().trim();
            let body = &mut sections[i].1;
            let kept: Vec<&str> = body
                .lines()
                .filter(|l| l.split('=').next().unwrap().trim() != key)
                .collect();
            let removal = line.ends_with("= \"\"");
            *body = kept.join("\n") + "\n" + if removal { "" } else { line } + "\n";
        }
        let text: String = sections
            .iter()
            .map(|(n, b)| format!("[{n}]\n{b}\n"))
            .collect();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, &text).unwrap();
        let (gateway, addr, admin, tx, task) = launch(&path, options.clock.clone()).await;
        Harness {
            sandbox,
            gateway,
            addr,
            admin,
            dir,
            clock: options.clock,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the gateway and starts a new one from the same files (same
    /// sandbox, same clock), as a process restart would.
    pub async fn restart(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stopped in time")
                .unwrap();
        }
        let (gateway, addr, admin, tx, task) =
            launch(&self.dir.path().join("gateway.toml"), self.clock.clone()).await;
        self.gateway = gateway;
        self.addr = addr;
        self.admin = admin;
        self.shutdown = Some(tx);
        self.task = Some(task);
    }

    /// Moves the gateway's clock (if it has a manual one) and the sandbox's.
    pub fn advance(&self, by: Duration) {
        if let Some(clock) = &self.clock {
            clock.advance(by);
        }
        self.sandbox.advance_clock(by);
    }

    /// Starts the drain and waits for `server::run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stopped in time")
                .unwrap();
        }
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.sandbox.uploads()
    }

    /// POSTs `body` with a valid alice token and `Content-Type: image/jpeg`.
    pub async fn upload(&self, path: &str, body: &[u8]) -> Reply {
        let token = jwt("acme", "alice@acme.example");
        self.post(
            path,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "image/jpeg"),
            ],
            body.to_vec(),
        )
        .await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        request(self.addr, "POST", path, headers, Payload::Full(body)).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        request(self.admin, "GET", path, &[], Payload::Full(Vec::new())).await
    }
}

type Launched = (
    Arc<Gateway>,
    SocketAddr,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

async fn launch(path: &std::path::Path, clock: Option<Arc<ManualClock>>) -> Launched {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Arc::new(match clock {
        Some(clock) => Gateway::with_clock(config, clock).unwrap(),
        None => Gateway::new(config).unwrap(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(gateway.clone(), listener, admin, async {
        let _ = rx.await;
    }));
    (gateway, addr, admin_addr, tx, task)
}

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

/// One request on a fresh HTTP/1.1 connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload: Payload,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
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
        .send_request(builder.body(body).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
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

/// A valid JPEG of about `size` bytes: the sample receipt with APP15 segments
/// of pseudo-random filler inserted after SOI.
pub fn big_jpeg(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + JPEG.len());
    out.extend_from_slice(&JPEG[..2]);
    let mut x: u32 = 0x1234_5678;
    while out.len() + JPEG.len() < size {
        let n = (size - out.len() - JPEG.len()).clamp(16, 65_533);
        out.extend_from_slice(&[0xFF, 0xEF]);
        out.extend_from_slice(&((n + 2) as u16).to_be_bytes());
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            out.push(x as u8);
        }
    }
    out.extend_from_slice(&JPEG[2..]);
    out
}

/// A local HTTPS server publishing a JWKS that tests can rotate or break.
pub struct JwksServer {
    pub url: String,
    pub ca_pem: String,
    pub jwks: Arc<std::sync::Mutex<Option<String>>>,
    pub fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    pub async fn start(initial: &str) -> Self {
        use std::sync::atomic::Ordering;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca_pem = cert.pem();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let jwks = Arc::new(std::sync::Mutex::new(Some(initial.to_owned())));
        let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (state, count) = (jwks.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state, count) = (acceptor.clone(), state.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = state.lock().unwrap().clone();
                        async move {
                            let mut r = http::Response::new(Full::new(Bytes::from(
                                body.clone().unwrap_or_default(),
                            )));
                            if body.is_none() {
                                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("https://localhost:{port}/.well-known/jwks.json"),
            ca_pem,
            jwks,
            fetches,
        }
    }

    /// Publishes another key set (`None`: the IdP answers 503).
    pub fn publish(&self, jwks: Option<String>) {
        *self.jwks.lock().unwrap() = jwks;
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Everything logged in this process (every test's events, at TRACE) while
/// the returned guard lives. One capture at a time; the subscriber is global
/// and installed once, so events on every thread are seen.
pub fn capture_logs() -> LogCapture {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
    let serial = SERIAL.try_lock().expect("one log capture at a time");
    *CAPTURED.lock().unwrap() = Some(Vec::new());
    LogCapture { _serial: serial }
}

static CAPTURED: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

pub struct LogCapture {
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl LogCapture {
    /// Stops capturing and returns what was logged.
    pub fn finish(self) -> String {
        let bytes = CAPTURED.lock().unwrap().take().unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURED.lock().unwrap().take();
    }
}

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(v) = CAPTURED.lock().unwrap().as_mut() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
