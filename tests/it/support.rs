//! Test support: a whole gateway on port 0 in front of the real sandbox over
//! real TLS, built by [`TestGateway`] from a typed config
//! ([`GatewayToml`]), JWT keys generated at test time, and a small HTTP/1.1
//! client. What the benches share with the tests (bodies, keys, the config
//! builder, the client) is in `concur_gateway::testkit`, re-exported here.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use concur_gateway::auth::ManualClock;
use concur_gateway::config::Config;
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{OAuthClient, Sandbox, SandboxConfig, UploadRecord};
pub use concur_gateway::testkit::*;
use http::StatusCode;
use http_body_util::Full;
use tokio::net::TcpListener;

/// The sample receipt shipped with the demo: a real baseline JPEG.
pub const JPEG: &[u8] = SAMPLE_JPEG;

pub const ALICE: (&str, &str) = ("acme", "alice@acme.example");
pub const BOB: (&str, &str) = ("acme", "bob@acme.example");
pub const GINA: (&str, &str) = ("globex", "gina@globex.example");

/// How long [`wait_for`] waits before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `condition` holds (polled every 10 ms); panics, naming the
/// caller's line, if it does not within 10 s. For a condition that stands
/// for "it happened": then assert on what happened.
#[track_caller]
pub fn wait_for(mut condition: impl FnMut() -> bool) -> impl Future<Output = ()> {
    let at = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "condition at {at} not met within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// [`wait_for`] with a condition that needs to await (a request).
#[track_caller]
pub fn wait_for_async(mut condition: impl AsyncFnMut() -> bool) -> impl Future<Output = ()> {
    let at = std::panic::Location::caller();
    async move {
        let deadline = Instant::now() + PATIENCE;
        while !condition().await {
            assert!(
                Instant::now() < deadline,
                "condition at {at} not met within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until a `serve` process's admin listener on `admin` answers
/// `/readyz` with 200.
pub async fn wait_admin_ready(admin: u16) {
    let addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_for_async(async || {
        // `request` needs a listener: the process binds it once started.
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && request(addr, "GET", "/readyz", &[], Payload::Full(vec![]))
                .await
                .status
                == 200
    })
    .await;
}

/// A loopback port free now, for a process that cannot listen on port 0
/// (clamd, the `serve` command): taken and released at once.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Gives what must *not* happen (a record upstream, a late answer) time to
/// show before a test asserts that it did not. A positive condition is
/// waited for with [`wait_for`] instead.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// The caller's identity as the rate limiter keys it.
pub fn identity(who: (&str, &str)) -> concur_gateway::auth::Identity {
    concur_gateway::auth::Identity {
        company: who.0.into(),
        user: who.1.into(),
    }
}

/// A gateway and its sandbox to start: the config ([`GatewayToml`], edited by
/// key path or by a TOML snippet merged as a table), the credentials file,
/// extra files next to the config, the sandbox's OAuth2 clients, the clock.
#[must_use]
pub struct TestGateway {
    config: GatewayToml,
    credentials: String,
    files: Vec<(String, Vec<u8>)>,
    oauth_clients: Vec<OAuthClient>,
    access_token_ttl: Duration,
    clock: Option<Arc<ManualClock>>,
}

impl Default for TestGateway {
    fn default() -> Self {
        Self {
            config: GatewayToml::new(),
            credentials: CREDENTIALS.to_owned(),
            files: Vec::new(),
            oauth_clients: Vec::new(),
            access_token_ttl: Duration::ZERO,
            clock: None,
        }
    }
}

impl TestGateway {
    /// `config.set(path, value)`: `.set("server.max_connections", 8)`.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> Self {
        self.config = self.config.set(path, value);
        self
    }

    pub fn remove(mut self, path: &str) -> Self {
        self.config = self.config.remove(path);
        self
    }

    /// Replaces the table `name` by `table`.
    pub fn section(mut self, name: &str, table: toml::Table) -> Self {
        self.config = self.config.section(name, table);
        self
    }

    /// Parses `snippet` as TOML and deep-merges it into the config.
    pub fn merge(mut self, snippet: &str) -> Self {
        self.config = self.config.merge_toml(snippet);
        self
    }

    /// The credentials file (default: [`CREDENTIALS`]).
    pub fn credentials(mut self, text: impl Into<String>) -> Self {
        self.credentials = text.into();
        self
    }

    /// A file written next to the config (a path in the config can name it).
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_owned(), contents.into()));
        self
    }

    /// An OAuth2 client the sandbox's token endpoint knows.
    pub fn oauth_client(mut self, client: OAuthClient) -> Self {
        self.oauth_clients.push(client);
        self
    }

    /// Lifetime of the sandbox's access tokens (default: 3600 s).
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl = ttl;
        self
    }

    /// The gateway's clock (default: the system clock).
    pub fn clock(mut self, clock: Arc<ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Verification keys from `idp` (`auth.jwks_url`, its CA next to the
    /// config) instead of `jwks.json`.
    pub fn jwks_from(self, idp: &JwksServer) -> Self {
        self.file("idp-ca.pem", idp.ca_pem.as_str())
            .remove("auth.jwks_file")
            .set("auth.jwks_url", idp.url.as_str())
            .set("auth.jwks_ca_file", "idp-ca.pem")
    }

    /// Starts the sandbox, writes the files into the harness's own temporary
    /// folder, and starts the gateway.
    pub async fn start(self) -> Harness {
        let sandbox = start_sandbox(SandboxConfig {
            oauth_clients: self.oauth_clients,
            access_token_ttl: self.access_token_ttl,
            ..SandboxConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in &self.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        // For tests that set `credentials.state_dir = "state"`.
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let config = self.config.write(dir.path(), &sandbox, &self.credentials);
        let (gateway, served) = launch(&config, self.clock.clone()).await;
        Harness {
            sandbox,
            gateway,
            addr: served.addr,
            admin: served.admin,
            dir,
            clock: self.clock,
            shutdown: Some(served.shutdown),
            task: Some(served.task),
        }
    }
}

/// A gateway and its sandbox, on port 0. Its files live in a temporary
/// folder it owns: removed when the harness is dropped.
pub struct Harness {
    pub sandbox: Sandbox,
    pub gateway: Arc<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
    clock: Option<Arc<ManualClock>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub fn builder() -> TestGateway {
        TestGateway::default()
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// `snippet` is TOML, deep-merged into the generated config as a table.
    pub async fn with_config(snippet: &str) -> Self {
        Self::builder().merge(snippet).start().await
    }

    /// The folder holding `gateway.toml`, `credentials.toml`, `state/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the gateway and starts a new one from the same files (same
    /// sandbox, same clock), as a process restart would.
    pub async fn restart(&mut self) {
        self.stop_server().await;
        let (gateway, served) =
            launch(&self.dir.path().join("gateway.toml"), self.clock.clone()).await;
        self.gateway = gateway;
        self.addr = served.addr;
        self.admin = served.admin;
        self.shutdown = Some(served.shutdown);
        self.task = Some(served.task);
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
        self.stop_server().await;
    }

    async fn stop_server(&mut self) {
        self.begin_shutdown();
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

    /// Waits until the sandbox holds `n` upload records, and returns them. A
    /// record is written once its body has ended (complete or cut short).
    #[track_caller]
    pub fn wait_for_uploads(&self, n: usize) -> impl Future<Output = Vec<UploadRecord>> + '_ {
        let waiting = wait_for(move || self.sandbox.uploads().len() >= n);
        async move {
            waiting.await;
            let ups = self.uploads();
            assert_eq!(ups.len(), n, "{ups:#?}");
            ups
        }
    }

    /// POSTs `body` as alice with `Content-Type: image/jpeg`.
    pub async fn upload(&self, path: &str, body: &[u8]) -> Reply {
        self.upload_as(ALICE, path, "image/jpeg", body).await
    }

    /// POSTs `body` with a valid token for `who` (company, user).
    pub async fn upload_as(
        &self,
        who: (&str, &str),
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        self.upload_with_token(&jwt(who.0, who.1), path, content_type, body)
            .await
    }

    /// POSTs `body` with `Authorization: Bearer {token}`.
    pub async fn upload_with_token(
        &self,
        token: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> Reply {
        upload_to(
            self.addr,
            token,
            path,
            content_type,
            Payload::Full(body.into()),
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

async fn launch(path: &Path, clock: Option<Arc<ManualClock>>) -> (Arc<Gateway>, Served) {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let gateway = Arc::new(match clock {
        Some(clock) => Gateway::with_clock(config, clock).unwrap(),
        None => Gateway::new(config).unwrap(),
    });
    let served = serve(gateway.clone()).await;
    (gateway, served)
}

/// A TLS acceptor for `localhost` with a certificate made now, and that
/// certificate's PEM (the CA a client is given).
pub fn localhost_tls() -> (tokio_rustls::TlsAcceptor, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
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
    (tokio_rustls::TlsAcceptor::from(Arc::new(tls)), cert.pem())
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
        let (acceptor, ca_pem) = localhost_tls();
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
/// the returned guard lives. One capture at a time (a second waits for the
/// first); the subscriber is global and installed once, so events on every
/// thread are seen.
pub async fn capture_logs() -> LogCapture {
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
    let serial = SERIAL.lock().await;
    *CAPTURED.lock().unwrap() = Some(Vec::new());
    LogCapture { _serial: serial }
}

static CAPTURED: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);

pub struct LogCapture {
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl LogCapture {
    /// What was logged so far; capturing goes on.
    pub fn snapshot(&self) -> String {
        let captured = CAPTURED.lock().unwrap();
        String::from_utf8_lossy(captured.as_deref().unwrap_or_default()).into_owned()
    }

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

#[tokio::test]
async fn a_harness_writes_its_typed_config_and_removes_its_folder_when_dropped() {
    let h = Harness::builder()
        .set("server.max_connections", 8)
        .merge("[server]\nbody_idle_timeout_s = 0.5")
        .remove("rate_limit.user_concurrent")
        .start()
        .await;
    let dir = h.dir().to_owned();
    let written: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("gateway.toml")).unwrap()).unwrap();
    assert_eq!(written["server"]["max_connections"].as_integer(), Some(8));
    assert_eq!(
        written["server"]["body_idle_timeout_s"].as_float(),
        Some(0.5)
    );
    assert_eq!(written["server"]["drain_delay_s"].as_integer(), Some(0));
    assert!(written["rate_limit"].get("user_concurrent").is_none());
    assert_eq!(
        written["upstream"]["base_url"].as_str(),
        Some(h.sandbox.base_url().as_str())
    );
    assert_eq!(h.gateway.config.server.max_connections, 8);
    h.stop().await;
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// A PNG chunk's bytes: length, type, data, CRC-32.
pub fn png_chunk_bytes(ty: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(ty);
    v.extend_from_slice(data);
    let mut h = crc32fast::Hasher::new();
    h.update(ty);
    h.update(data);
    v.extend_from_slice(&h.finalize().to_be_bytes());
    v
}

/// `data` as a zlib stream, at zlib's default level.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}
