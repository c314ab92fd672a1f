//! Request path, step 9 (see `ARCHITECTURE.md`).
//!
//! The client side ("forward the request to Concur
//! over TLS").
//!
//! HTTP/1.1 over rustls (aws-lc-rs provider), trusting the Mozilla roots plus
//! `upstream.ca_file`, https only. `max_in_flight` bounds the exchanges open
//! with Concur at once, shared fairly between companies ([`FairSlots`]); a
//! request waits at most `queue_timeout` for a slot, then gets
//! `503 overloaded`.
//!
//! Connections to Concur are pooled here rather than by hyper-util's client,
//! for one reason: who runs them. hyper-util spawns a task per connection,
//! so each chunk of an upload went from the client connection's task to that
//! one. Here the request's own task runs its Concur connection while it
//! sends the request and reads the answer ([`Upstream::send`], [`Driven`]):
//! on HTTP/1.1 one task carries an upload from socket to socket. Measured in
//! the load bench against the hyper-util client (docs/benchmarks.md, levers):
//! the same CPU and throughput at 16 connections (within the noise), 8 % less
//! CPU per GB at 256, and 2–6 MiB less peak RSS with 64 uploads in flight in
//! each of four runs (fewer chunks queued between two tasks).
//!
//! The pool: idle connections per connection worker (`workers.rs`: a
//! connection is reused by the worker whose runtime polls its socket) and
//! authority, newest reused first, at most `max_in_flight` of them in all,
//! each kept [`IDLE_TIMEOUT`]. Before reuse a
//! connection is given one turn, which reads an end that Concur sent while
//! it was idle; a request refused by a connection that closed before any of
//! it was written goes on another. Every [`REAP_EVERY`] the idle ones are
//! given a turn too, so that what Concur closed is closed here as well. A
//! connection whose exchange did not end cleanly (a body cut short, an answer
//! not read to its end, `Connection: close`, an upload still being written
//! when Concur's answer ended) is closed, never reused.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::concurrency::{FairSlots, Slot};
use crate::config::UpstreamConfig;
use crate::error::{BoxError, GatewayError};

/// The body of a request to Concur: the inspected stream, or a spooled body.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub struct Upstream {
    https: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
    base: Uri,
    pub timeout: Duration,
    slots: Arc<FairSlots>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The rustls client configuration: Mozilla roots plus the optional extra CA file.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate found", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// An https-only HTTP/1.1 connector over rustls, trusting the Mozilla roots
/// plus `ca_file`. Shared by the upstream client, the OAuth2 token client and
/// the JWKS fetcher, so every outgoing connection has the same TLS policy.
pub fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http))
}

/// For the OTLP/HTTP exporter (`telemetry.rs`): the same TLS policy
/// (without a private CA), and plain `http://` allowed for a node-local
/// collector.
pub fn https_or_http_connector() -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_config(None)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// How much of a request hyper may queue toward the TLS stream to Concur
/// before it stops reading the body: about one body chunk. hyper's default
/// (~400 KiB) let each upload pin up to six 64 KiB chunks in the queue while
/// rustls and the socket drained it; one chunk keeps the same throughput and
/// CPU per GB, and took 6–9 MiB off the peak RSS of 64 concurrent 8 MiB
/// uploads (`docs/benchmarks.md`).
const UPSTREAM_WRITE_BUF: usize = 64 * 1024;

impl Upstream {
    /// `https` is [`https_connector`] for `config` (shared with the OAuth2 token client).
    pub fn new(config: &UpstreamConfig, https: HttpsConnector<HttpConnector>) -> Self {
        Self {
            https,
            pool: Arc::new(Pool {
                idle: Mutex::new(HashMap::new()),
                max_idle: config.max_in_flight,
                reaper: std::sync::Once::new(),
            }),
            base: config.base_url.clone(),
            timeout: config.timeout,
            slots: FairSlots::new(config.max_in_flight, config.queue_timeout),
        }
    }

    /// The Concur URL for a path built by `route::parse`.
    pub fn uri(&self, path_and_query: &str) -> Uri {
        self.uri_at(None, path_and_query)
    }

    /// The URL for a path at `base` (a credential's geolocation, as returned by
    /// Concur's token endpoint and checked by `refresh::parse_base`: https and a
    /// host only), or at `upstream.base_url` when `None`. The connector is
    /// https-only whatever the base.
    pub fn uri_at(&self, base: Option<&Uri>, path_and_query: &str) -> Uri {
        let base = base.unwrap_or(&self.base);
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .expect("route::parse builds valid paths"),
        );
        Uri::from_parts(parts).expect("scheme and authority come from a valid base URL")
    }

    /// The `Host` header value for Concur.
    pub fn authority(&self) -> &str {
        self.authority_at(None)
    }

    /// The `Host` header value for `base` (see [`Upstream::uri_at`]).
    pub fn authority_at<'a>(&'a self, base: Option<&'a Uri>) -> &'a str {
        base.unwrap_or(&self.base)
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("")
    }

    /// Waits for an upstream slot for `company` (bounded by `queue_timeout`;
    /// handed out fairly between companies, see `concurrency.rs`).
    pub async fn acquire(&self, company: &str) -> Result<Slot, GatewayError> {
        self.slots.acquire(company).await
    }

    /// Sends `request` to Concur on a pooled connection (a new one when none
    /// is idle) and returns the answer's head. The connection is driven by
    /// the task that awaits this and then reads the [`Driven`] body: the
    /// request's own task, so the upload's chunks go from the client's socket
    /// to Concur's without a hand-off to another task.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Driven>, SendError> {
        let mut request = request;
        let uri = request.uri().clone();
        let key = PoolKey {
            worker: crate::workers::current(),
            authority: uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
        };
        // On the wire the request-target is the origin form (`/path?query`):
        // the absolute form is for proxies.
        *request.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        loop {
            let (mut conn, reused) = match self.pool.checkout(&key).await {
                Some(conn) => (conn, true),
                None => (self.connect(uri.clone()).await?, false),
            };
            let mut done = false;
            let outcome = {
                let mut pending = pin!(conn.sender.try_send_request(request));
                let driving = &mut conn.driving;
                poll_fn(|cx| {
                    if !done && driving.as_mut().poll(cx).is_ready() {
                        done = true;
                    }
                    pending.as_mut().poll(cx)
                })
                .await
            };
            match outcome {
                Ok(response) => {
                    let conn = (!done).then_some(conn);
                    return Ok(response.map(|body| Driven {
                        body,
                        conn,
                        pool: self.pool.clone(),
                        key,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection that Concur had closed: nothing of
                    // the request was written, so it goes on another one.
                    Some(back) if reused => request = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, uri: Uri) -> Result<Conn, SendError> {
        let io = self
            .https
            .clone()
            .oneshot(uri)
            .await
            .map_err(SendError::Connect)?;
        let (sender, driving) = http1::Builder::new()
            .max_buf_size(UPSTREAM_WRITE_BUF)
            .handshake(io)
            .await
            .map_err(SendError::Http)?;
        Ok(Conn {
            sender,
            driving: Box::pin(driving),
            idle_since: Instant::now(),
        })
    }
}

/// Why an exchange with Concur failed before its answer's head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to Concur")]
    Connect(#[source] BoxError),
    #[error("exchange with Concur")]
    Http(#[source] hyper::Error),
}

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// An HTTP/1.1 connection to Concur: the handle that sends requests and the
/// future that runs the connection, which whoever uses it polls.
struct Conn {
    sender: http1::SendRequest<UpstreamBody>,
    driving: Pin<Box<http1::Connection<Io, UpstreamBody>>>,
    idle_since: Instant,
}

/// How long an idle connection to Concur is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked at: one that Concur closed is
/// closed on our side within this time (else it would linger half-closed,
/// in `CLOSE_WAIT`, until the next upload).
const REAP_EVERY: Duration = Duration::from_secs(5);

/// Whose idle connections: the connection worker's that used them (a
/// connection is polled by the runtime that registered its socket, so it
/// is reused on that worker only), to one authority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct PoolKey {
    worker: Option<usize>,
    authority: String,
}

/// Idle connections by worker and authority, most recently used last.
struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Conn>>>,
    /// Idle connections kept at most, all workers and authorities together.
    max_idle: usize,
    reaper: std::sync::Once,
}

impl Pool {
    /// The most recently used idle connection to `key` that is still open and
    /// ready for a request.
    async fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.idle.lock().expect("pool lock");
                let list = idle.get_mut(key)?;
                let conn = list.pop()?;
                if conn.idle_since.elapsed() >= IDLE_TIMEOUT {
                    // The rest are older still.
                    list.clear();
                    return None;
                }
                conn
            };
            // One turn of the connection: it reads the end Concur may have
            // sent while it was idle, and (idle, open) it then wants the next
            // request. Anything else (closed, or still busy with a request
            // whose answer came early) is not reused.
            let ready = poll_fn(|cx| {
                Poll::Ready(
                    conn.driving.as_mut().poll(cx).is_pending()
                        && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(()))),
                )
            })
            .await;
            if ready {
                return Some(conn);
            }
        }
    }

    fn checkin(self: &Arc<Self>, key: PoolKey, mut conn: Conn) {
        self.reaper.call_once(|| {
            // On the runtime of the first connection put back (a connection
            // worker's); ends with the pool, or with that runtime.
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                let first = tokio::time::Instant::now() + REAP_EVERY;
                let mut every = tokio::time::interval_at(first, REAP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    match pool.upgrade() {
                        Some(pool) => pool.reap(),
                        None => return,
                    }
                }
            });
        });
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        if let Some(list) = idle.get_mut(&key) {
            list.retain(|c| c.idle_since.elapsed() < IDLE_TIMEOUT);
        }
        let kept: usize = idle.values().map(Vec::len).sum();
        if kept < self.max_idle {
            idle.entry(key).or_default().push(conn);
        }
    }

    /// Drops the idle connections that are past [`IDLE_TIMEOUT`] or that
    /// Concur has closed: one turn of each, which reads such an end.
    fn reap(&self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut idle = self.idle.lock().expect("pool lock");
        for list in idle.values_mut() {
            list.retain_mut(|c| {
                c.idle_since.elapsed() < IDLE_TIMEOUT
                    && c.driving.as_mut().poll(&mut cx).is_pending()
            });
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// The body of Concur's answer. Reading it also runs its connection, which
/// goes back to the pool once the body has ended.
pub struct Driven {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    key: PoolKey,
}

impl Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && conn.driving.as_mut().poll(cx).is_ready()
        {
            // Closed (Concur's `Connection: close`, or an error the body
            // reports below): not reusable.
            this.conn = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame
            && let Some(mut conn) = this.conn.take()
        {
            // One more turn: an exchange that is over leaves the connection
            // idle and wanting the next request. One still writing the upload
            // (Concur answered before reading all of it, and kept the
            // connection open) does not: it could carry nothing else until
            // the upload ends, and pooled it would hold the caller's body and
            // the socket until the idle limit. That one is closed here.
            let reusable = conn.driving.as_mut().poll(cx).is_pending()
                && matches!(conn.sender.poll_ready(cx), Poll::Ready(Ok(())));
            if reusable {
                this.pool.checkin(std::mem::take(&mut this.key), conn);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whose turn it is in an upload, for `upstream.timeout_s`: it bounds how
/// long *Concur* keeps the gateway waiting (to take the next part of the
/// upload the gateway has ready, or to answer once the upload is sent), not
/// how long the caller takes to send its body, which `server.body_*` bound.
/// [`Paced`] wraps the body sent to Concur and keeps this up to date;
/// [`Pace::within`] runs part of the exchange under it.
#[derive(Debug)]
pub struct Pace {
    origin: tokio::time::Instant,
    /// When Concur last made progress (took a part of the body, or the body
    /// ended), in ms since `origin`.
    last_ms: std::sync::atomic::AtomicU64,
    /// The body waits for the caller: the time is not Concur's.
    caller_turn: std::sync::atomic::AtomicBool,
}

impl Pace {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: tokio::time::Instant::now(),
            last_ms: 0.into(),
            caller_turn: false.into(),
        })
    }

    /// Concur made progress now (e.g. its answer's head arrived).
    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn set_caller_turn(&self, waiting: bool) {
        self.caller_turn
            .store(waiting, std::sync::atomic::Ordering::Relaxed);
    }

    /// When Concur's time runs out, if it is Concur's turn.
    fn due(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        if self.caller_turn.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        Some(self.origin + Duration::from_millis(last) + timeout)
    }

    /// Runs `work` until it ends, or until Concur has kept the gateway
    /// waiting for `timeout` in one go (`Err(())`).
    pub async fn within<F: Future>(&self, timeout: Duration, work: F) -> Result<F::Output, ()> {
        let mut work = pin!(work);
        loop {
            let check = match self.due(timeout) {
                Some(due) => due,
                // The caller's turn: look again a timeout later.
                None => tokio::time::Instant::now() + timeout,
            };
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                () = tokio::time::sleep_until(check) => {
                    if self.due(timeout).is_some_and(|due| due <= tokio::time::Instant::now()) {
                        return Err(());
                    }
                }
            }
        }
    }
}

/// The body of an upload to Concur, keeping its [`Pace`]: each part Concur
/// takes is progress; a poll the body cannot answer yet is the caller's
/// turn until it can.
pub struct Paced {
    inner: UpstreamBody,
    pace: Arc<Pace>,
}

impl Paced {
    pub fn new(inner: UpstreamBody, pace: Arc<Pace>) -> Self {
        pace.touch();
        Self { inner, pace }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => self.pace.set_caller_turn(true),
            Poll::Ready(_) => {
                self.pace.touch();
                self.pace.set_caller_turn(false);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
