//! # Concur sandbox
//!
//! An in-process HTTPS emulator of SAP Concur's **Image API v1.0** (the POST side),
//! plus Concur's **OAuth2 refresh-token endpoint**. The `demo` command, the
//! integration tests and the benchmarks point the gateway at it instead of Concur.
//! It serves HTTP/1.1 (keep-alive, many concurrent connections) over TLS with a
//! self-signed certificate for `localhost`, `127.0.0.1` and `::1` generated at start
//! (or a certificate given in [`SandboxConfig::tls`]).
//!
//! ## What it emulates
//!
//! Upload routes, all `POST`:
//!
//! | route | kind | id answered |
//! | --- | --- | --- |
//! | `/api/image/v1.0/receipt` | `receipt` | a fresh 20-char uppercase hex id |
//! | `/api/image/v1.0/expenseentry/{id}` | `expenseentry` | `{id}` |
//! | `/api/image/v1.0/invoice/{id}` and `/api/image/v1.1/invoice/{id}` | `invoice` | `{id}` |
//! | `/api/image/v1.0/report/{id}` | `report` | `{id}` |
//!
//! The fixed path segments match case-insensitively (Concur runs on IIS); the id is
//! kept exactly as sent. The query string is ignored (and recorded).
//!
//! Each request's body is always read completely (streamed: counted and hashed with
//! SHA-256 on the fly, never buffered) **before** anything is answered. Then, in order:
//!
//! 1. body failed or ended early (client aborted) → recorded with `complete: false`,
//!    nothing created, the connection is dropped without an answer;
//! 2. a queued [`Fault`] (upload routes only, FIFO, one per request) replaces the
//!    answer below (see [`Fault`]);
//! 3. unknown path → `404`; known path with another method than `POST` → `405`
//!    (`Allow: POST`);
//! 4. no usable `Authorization: OAuth <token>` / `Bearer <token>` (scheme
//!    case-insensitive) → `401`; unknown or expired token → `403`;
//! 5. `Content-Type` not `image/jpeg`, `image/jpg`, `image/png` or `application/pdf`
//!    (case-insensitive, parameters allowed) → `400`;
//! 6. no `Content-Length` → `400` (`chunked uploads are not supported` when sent with
//!    `Transfer-Encoding: chunked`, `Content-Length is required` otherwise);
//! 7. a second image for the same (company, expense entry) or (company, invoice) →
//!    `400` `An image already exists for this entry.` (reports append);
//! 8. otherwise `201 Created` with
//!    `<?xml version="1.0" encoding="utf-8"?><Image xmlns="http://www.concursolutions.com/api/image/2011/02" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><Id>ID</Id><Url i:nil="true" /></Image>`.
//!
//! Every error on the upload side is Concur's Error XML,
//! `<?xml version="1.0" encoding="utf-8"?><Error><Message>…</Message><Server-Time>YYYY-MM-DDTHH:MM:SS</Server-Time><Id>20 hex</Id></Error>`,
//! with `Content-Type: application/xml; charset=utf-8`.
//!
//! `POST /oauth2/v0/token` (form-encoded `grant_type=refresh_token`, `client_id`,
//! `client_secret`, `refresh_token`) issues a fresh access token for a registered
//! [`OAuthClient`] and rotates its refresh token; see [`Sandbox::current_refresh_token`].
//! `expires_in` is answered as a JSON string on odd-numbered successful refreshes
//! (1st, 3rd, …) and as a number on even-numbered ones, as Concur is inconsistent
//! about it. `refresh_expires_in` is an absolute Unix time (as Concur sends it).
//! `geolocation` is the sandbox's base URL unless [`Sandbox::set_geolocation`] says otherwise.
//!
//! ## What it records
//!
//! Every request that is not a control or token request — uploads, but also 404s and
//! 405s (kind `"other"` for unknown paths), aborted uploads and faulted ones — becomes
//! an [`UploadRecord`]: path, owner of the token, the `Authorization` scheme and token
//! as received, content type/length, byte count, SHA-256, completeness, status
//! answered, every header as received and the image id created. [`Sandbox::uploads`]
//! returns them in arrival order (request head arrival). Records are kept until
//! [`Sandbox::clear_uploads`]: long benchmarks should clear them now and then.
//! [`Sandbox::connections`] counts accepted TCP connections (to assert keep-alive reuse).
//!
//! Token values are never logged (logging is `tracing` at debug level).
//!
//! ## Control endpoints
//!
//! Plain JSON over the same HTTPS listener, no authentication, for out-of-process tests
//! and the `sandbox` CLI:
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /_sandbox/uploads` | JSON array of [`UploadRecord`] |
//! | `DELETE /_sandbox/uploads` | clears them; answers `{"cleared":N}` |
//! | `POST /_sandbox/faults` | body: one [`Fault`], externally tagged, e.g. `{"Status":{"status":503,"message":"busy","retry_after":"7"}}` or `"Reset"`; answers `{"queued":N}` |
//! | `GET /_sandbox/faults` / `DELETE /_sandbox/faults` | lists / clears the queued faults |
//! | `POST /_sandbox/tokens` | body: `{"token":…,"company":…,"user":…}` (`user` optional); adds a token |
//! | `GET /_sandbox/oauth` | `{"token_requests":N,"refresh_tokens":{client_id:token}}` |
//! | `POST /_sandbox/clock` | body: `{"advance_secs":N}`; moves the sandbox clock forward |
//!
//! ## Clock
//!
//! Access-token expiry and `Server-Time` use the sandbox's own clock, which is the
//! system clock plus an offset that [`Sandbox::advance_clock`] moves forward, so
//! expiry can be tested without sleeping.

mod control;
mod http;
mod oauth;
mod server;
mod state;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use state::State;

/// A bearer token the sandbox accepts on uploads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxToken {
    /// The token value, as sent after `OAuth ` or `Bearer `.
    pub token: String,
    /// The company (Concur entity) that owns it.
    pub company: String,
    /// The user it belongs to; `None` is the company's admin (company-level) token.
    #[serde(default)]
    pub user: Option<String>,
}

/// An OAuth2 client registered with the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    /// Company the issued access tokens belong to.
    pub company: String,
    /// User the issued access tokens belong to (`None` = company-level).
    #[serde(default)]
    pub user: Option<String>,
    /// The client's current (initial) refresh token; rotated on every refresh.
    pub refresh_token: String,
}

/// How the sandbox starts.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    /// Tokens accepted from the start (they never expire).
    pub tokens: Vec<SandboxToken>,
    /// `(certificate chain PEM, private key PEM)`; `None` generates a self-signed
    /// certificate for `localhost`, `127.0.0.1` and `::1`.
    pub tls: Option<(String, String)>,
    /// Lifetime of access tokens issued by `/oauth2/v0/token`; zero means the
    /// default, 3600 s.
    pub access_token_ttl: Duration,
    /// OAuth2 clients known to the token endpoint.
    pub oauth_clients: Vec<OAuthClient>,
}

/// What the sandbox saw of one request (see the module docs for which requests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Request path, without the query string.
    pub path: String,
    /// `"receipt"`, `"expenseentry"`, `"invoice"`, `"report"`, or `"other"` for a path
    /// that is not an upload route.
    pub kind: String,
    /// The `{id}` of the route (None for receipts and unknown paths).
    pub target_id: Option<String>,
    /// Company owning the token used (None when the token was missing or unknown;
    /// set for an expired token).
    pub company: Option<String>,
    /// User owning the token used (None for a company token or an unknown token).
    pub user: Option<String>,
    /// `Authorization` scheme as received (`"OAuth"`, `"Bearer"`, …).
    pub auth_scheme: Option<String>,
    /// Token as received.
    pub token: Option<String>,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    /// The request came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    pub received_bytes: u64,
    /// Lowercase hex SHA-256 of the bytes received (of the partial body if incomplete).
    pub sha256_hex: String,
    /// The body was fully received (== Content-Length) without error.
    pub complete: bool,
    /// What the sandbox answered (0 when nothing was answered: aborted body or `Reset`).
    pub status: u16,
    /// Every request header as received (lowercase names), in order.
    pub headers: Vec<(String, String)>,
    /// Id of the image created (None when nothing was created).
    pub image_id: Option<String>,
    // --- additions beyond the original brief ---
    /// Request method.
    pub method: String,
    /// The request-target as received: `/path?query` in origin form, what
    /// clients send to a server; with scheme and host in absolute form, what
    /// they send to a proxy.
    #[serde(default)]
    pub target: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Sequence number of the TCP connection it arrived on (1-based, per sandbox).
    pub connection_id: u64,
    /// The fault applied in place of the normal answer (`"Status"`, `"Delay"`,
    /// `"Reset"`, `"MalformedXml"`, `"Raw"`).
    pub fault: Option<String>,
    /// The `<Message>` of the Error XML answered, if one was.
    pub error_message: Option<String>,
}

/// A misbehaviour for exactly one upcoming upload request (FIFO). An upload request is a
/// `POST` to one of the upload routes; 404s, 405s, control and token requests do not
/// consume faults, nor do uploads whose body fails (they get no answer anyway). The
/// fault is applied once the request's body has been read completely, before any check
/// (auth included), in place of the normal answer. Except for `Delay`, a faulted
/// request creates no image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Answer this status with Concur's Error XML carrying `message`, and a
    /// `Retry-After` header when given.
    Status {
        status: u16,
        message: String,
        #[serde(default)]
        retry_after: Option<String>,
    },
    /// Process the request normally (the image is created at once), then wait this
    /// long before sending the answer.
    Delay { millis: u64 },
    /// Drop the connection without answering.
    Reset,
    /// Answer `201` with a truncated, unparseable XML body.
    MalformedXml,
    /// Answer exactly this status, `Content-Type` and body (and a
    /// `Retry-After` or `Location` header when given).
    Raw {
        status: u16,
        content_type: String,
        body: String,
        #[serde(default)]
        retry_after: Option<String>,
        #[serde(default)]
        location: Option<String>,
    },
}

impl Fault {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "Status",
            Fault::Delay { .. } => "Delay",
            Fault::Reset => "Reset",
            Fault::MalformedXml => "MalformedXml",
            Fault::Raw { .. } => "Raw",
        }
    }
}

/// A running sandbox. Dropping it without [`Sandbox::shutdown`] aborts the server.
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<State>,
    shutdown_tx: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds (port 0 allowed), generates a self-signed certificate with rcgen for
    /// `localhost` + `127.0.0.1` + `::1` SANs unless `config.tls` is given, and serves
    /// HTTP/1.1 over TLS in a spawned task.
    pub async fn start(listen: SocketAddr, config: SandboxConfig) -> std::io::Result<Sandbox> {
        let (tls_config, ca_pem) = server::tls_config(config.tls.as_ref())?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("https://localhost:{}", addr.port());
        let state = Arc::new(State::new(base_url, &config));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(
            listener,
            Arc::new(tls_config),
            Arc::clone(&state),
            shutdown_rx,
        ));
        tracing::debug!(%addr, "concur sandbox listening");
        Ok(Sandbox {
            addr,
            ca_pem,
            state,
            shutdown_tx,
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:PORT`.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// PEM to trust: the generated self-signed certificate, or the chain given in
    /// [`SandboxConfig::tls`] as given.
    pub fn ca_cert_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Everything recorded, in arrival order.
    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.state.uploads()
    }

    /// Forgets the records (not the images: duplicates are still refused).
    pub fn clear_uploads(&self) {
        self.state.clear_uploads();
    }

    /// Queues a fault for the next upload request not yet faulted (FIFO).
    pub fn push_fault(&self, fault: Fault) {
        self.state.push_fault(fault);
    }

    /// Drops the faults still queued.
    pub fn clear_faults(&self) {
        self.state.clear_faults();
    }

    /// Accepts one more token (it never expires).
    pub fn add_token(&self, token: SandboxToken) {
        self.state.add_token(token, None);
    }

    /// Registers (or replaces) an OAuth2 client.
    pub fn add_oauth_client(&self, client: OAuthClient) {
        self.state.add_oauth_client(client);
    }

    /// Requests received on `/oauth2/v0/token` (any outcome).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests()
    }

    /// Makes `/oauth2/v0/token` wait this long before it answers, after it
    /// has done the refresh (the token rotates at once: a slow identity
    /// service, or a slow way back; `Duration::ZERO` again for none).
    pub fn delay_token_answers(&self, delay: Duration) {
        self.state.set_token_delay(delay);
    }

    /// Requests on `/oauth2/v0/token` that got a new access token (the others
    /// were refused: a dead refresh token, a bad client).
    pub fn successful_refreshes(&self) -> u64 {
        self.state.successful_refreshes()
    }

    /// The refresh token currently valid for `client_id`.
    pub fn current_refresh_token(&self, client_id: &str) -> Option<String> {
        self.state.current_refresh_token(client_id)
    }

    /// What the token endpoint answers as `geolocation` (`None`: [`Sandbox::base_url`]),
    /// e.g. `https://127.0.0.1:PORT` to see a client follow it.
    pub fn set_geolocation(&self, geolocation: Option<String>) {
        self.state.set_geolocation(geolocation);
    }

    /// Lifetime of access tokens issued from now on (zero: they are born expired).
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.state.set_access_token_ttl(ttl);
    }

    /// Moves the sandbox clock forward (token expiry, `Server-Time`).
    pub fn advance_clock(&self, by: Duration) {
        self.state.advance_clock(by);
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections()
    }

    /// Closes the connections that are between requests, and each other one
    /// after its answer: what Concur's load balancers do to idle keep-alive
    /// connections.
    pub fn close_connections(&self) {
        self.state.close_connections();
    }

    /// Stops accepting, closes idle connections, lets requests in flight finish for
    /// up to 2 s, then drops whatever is left.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        tracing::debug!(addr = %self.addr, "concur sandbox stopped");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
