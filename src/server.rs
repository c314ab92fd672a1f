//! Request path, step 1 (see `ARCHITECTURE.md`).
//!
//! Accept loop, connection limits and graceful drain.
//!
//! Shutdown is part of the design (`docs/operations.md`, `server.drain_delay_s` and
//! `server.shutdown_grace_s`):
//! 1. the shutdown future fires (SIGTERM): `/readyz` starts failing at once;
//! 2. for `drain_delay` the listener keeps accepting and serving normally,
//!    because Kubernetes endpoints take time to notice the pod is not ready;
//! 3. then accept stops and open connections are told to finish: idle
//!    keep-alive connections close, in-flight uploads get up to
//!    `shutdown_grace` to complete;
//! 4. `run` returns, and the process exits 0.
//!
//! At `server.max_connections` the longest-idle connection makes room for a
//! new one (`connections.rs`).
//!
//! Each accepted connection is handed to one of the connection workers
//! (`workers.rs`, `server.workers`: a thread per core, each with its own
//! single-threaded runtime), which runs it until it closes.
//!
//! One port, two protocols: HTTP/1.1, and HTTP/2 over cleartext with prior
//! knowledge (h2c), chosen by the first bytes (the HTTP/2 connection preface;
//! hyper-util's `auto` builder). There is no TLS on the listener and no
//! `Upgrade: h2c` from HTTP/1.1. Each HTTP/2 stream is one request through
//! the same stack as an HTTP/1.1 one, so every limit holds per stream; what
//! is particular to HTTP/2 is bounded here: streams per connection
//! (`server.h2_max_concurrent_streams`), the header list (64 KiB, as an
//! HTTP/1.1 head: `framing.rs` answers `431`; the h2 crate itself refuses
//! past 96 KiB), streams reset by the client before they were served and
//! streams reset for the client's protocol errors (CVE-2023-44487, "rapid
//! reset": past either count the connection is closed with GOAWAY), and the
//! request data a connection may make the gateway hold unread (the flow
//! control windows, [`H2_STREAM_WINDOW`] and [`H2_CONNECTION_WINDOW`]).
//! Clients may send DATA frames of up to [`H2_MAX_FRAME_SIZE`] (64 KiB).
//!
//! Idle connections: hyper closes an HTTP/1.1 connection that has not sent a
//! complete head within `header_read_timeout_s`, but it has no such timer
//! while it reads the first bytes to choose the protocol, nor on HTTP/2. So
//! the accept loop closes any connection that has served no request for
//! `header_read_timeout_s` (GOAWAY on HTTP/2), and a connection told to close
//! (idle, evicted or drained) that has not finished within
//! `shutdown_grace_s` is dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::connections::{Activity, Admission, Connections};
use crate::gateway::Gateway;
use crate::head_watch::{HeadNotes, HeadWatch};
use crate::stack;
use crate::workers::{Spread, Workers};

/// The connection's read buffer cap. hyper uses one cap for two things: the
/// largest request head accepted (request line + headers; past it a bare
/// `431`, which the head watch keeps from happening to field lines: it cuts
/// such a head short for hyper and the framing check answers), and
/// the largest body chunk one read yields. Body chunks travel one at a time
/// from the connection task to the upstream one (a task hand-off, a `recv` on
/// the client socket, a TLS record batch and a `writev` upstream each), so
/// 16 KiB chunks cost measurably more CPU per byte than 64 KiB ones (see
/// `docs/benchmarks.md`). 64 KiB is also about Envoy's default head limit
/// (60 KiB); nginx allows 4 × 8 KiB header lines.
pub const READ_BUF_BYTES: usize = 64 * 1024;

/// HTTP/2 flow control: how much of one stream's body the client may send
/// ahead of what the gateway has read. 1 MiB keeps one upload at full speed
/// up to about 1 GB/s × 1 ms of round trip, past a sidecar's loopback or a
/// LAN; the protocol's default, 64 KiB, costs one 8 MiB upload about a
/// third of its throughput even on loopback, and larger windows gain nothing
/// measurable there (`docs/benchmarks.md`).
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// The same for a whole connection: what its streams together may have sent
/// unread. It bounds the memory one HTTP/2 connection can pin with bodies the
/// gateway is not reading yet (a stream waiting for a Concur slot, say);
/// 100 streams of 1 MiB over one connection were no faster with 8 or 32 MiB.
pub const H2_CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// The header list an HTTP/2 client may send (`SETTINGS_MAX_HEADER_LIST_SIZE`,
/// counted as RFC 9113 does: name + value + 32 per field): 32 KiB above the
/// gateway's own 64 KiB head limit, so that a head a little over it gets the
/// gateway's `431 request_head_too_large` (problem body, `X-Request-Id`)
/// rather than the h2 crate's bare `431` and a reset stream, which clients
/// such as curl take for a failure to retry. Past it the h2 crate refuses.
pub const H2_MAX_HEADER_LIST: u32 = (crate::framing::MAX_HEAD_BYTES + 32 * 1024) as u32;
/// hyper's limit on request header fields (its default), above
/// [`crate::framing::MAX_HEADER_FIELDS`] so that the gateway's own `431`
/// answers heads of 65 to 100 fields.
pub const HYPER_MAX_HEADERS: usize = 100;
/// The largest DATA frame a client may send (`SETTINGS_MAX_FRAME_SIZE`):
/// one HTTP/1.1 read, [`READ_BUF_BYTES`]. Each frame is one body chunk
/// through the inspection, the hand-off upstream and a TLS write; the
/// protocol's default, 16 KiB, makes that four times per 64 KiB. A client
/// that follows the setting (the `h2` crate's does, so hyper's) sends a
/// quarter of the frames, and costs the gateway a fifth to a quarter less
/// CPU per GB (`cargo bench --bench h2_frames`); nghttp2's (h2load) keeps to
/// 16 KiB whatever the server allows. A connection holds at most one frame
/// while it reads it in: 64 KiB, the bound of an HTTP/1.1 connection's read
/// buffer too.
pub const H2_MAX_FRAME_SIZE: u32 = READ_BUF_BYTES as u32;
/// Streams the client may open and reset before the gateway got to serve them
/// (h2's default, CVE-2023-44487); past it the connection gets GOAWAY.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the gateway may reset for the client's protocol errors over a
/// connection's life (a `content-length` the DATA does not match, say); past
/// it the connection gets GOAWAY. A correct client makes none.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Serves the gateway on `listener` and the admin endpoints on `admin` until
/// `shutdown` completes, then drains as described above. Fails before
/// serving anything if the connection workers' threads cannot be started.
pub async fn run(
    gw: Arc<Gateway>,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let workers = Workers::start(gw.config.server.workers, &gw.metrics.worker_tasks)?;
    let housekeeping = gw.spawn_housekeeping();
    let admin_task = tokio::spawn(admin::serve(gw.clone(), admin));
    let stop_accepting = CancellationToken::new();
    let drain = CancellationToken::new();
    let tracker = TaskTracker::new();
    let accept = tokio::spawn(accept_loop(
        gw.clone(),
        listener,
        workers.clone(),
        stop_accepting.clone(),
        drain.clone(),
        tracker.clone(),
    ));

    shutdown.await;
    tracing::info!(
        drain_delay_s = gw.config.server.drain_delay.as_secs_f64(),
        "shutdown requested: readiness now fails; still serving during the drain delay"
    );
    gw.start_draining();
    tokio::time::sleep(gw.config.server.drain_delay).await;
    stop_accepting.cancel();
    let _ = accept.await;
    let grace = gw.config.server.shutdown_grace;
    let grace_ends = Instant::now() + grace;
    tracing::info!(
        shutdown_grace_s = grace.as_secs_f64(),
        "accept stopped; waiting for in-flight requests"
    );
    // Idle connections close now; busy ones after their request.
    drain.cancel();
    tracker.close();
    // Keyed uploads run on tasks of their own, which may have outlived
    // their client's connection: waited for too, within the same grace.
    gw.detached.close();
    let finished = async {
        tracker.wait().await;
        gw.detached.wait().await;
    };
    match tokio::time::timeout(grace, finished).await {
        Ok(()) => tracing::info!("all connections and uploads finished"),
        Err(_) => {
            tracing::warn!("shutdown grace elapsed; closing remaining connections");
            // Each connection drops itself once its own grace is over (it
            // started with this one): its requests, and their places in
            // flight, go with it.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
            // Keyed uploads still running are cut now, while the runtime
            // still runs what their keys' release needs.
            gw.cut_detached.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), gw.detached.wait()).await;
        }
    }
    // The places in flight those uploads gave back are released before the
    // process ends, not left to their leases (other replicas would count
    // them until then).
    gw.store.flush_releases().await;
    // Final answers Redis missed (kept under their `Idempotency-Key` once
    // written) get what is left of the grace, and at least a second.
    let left = grace_ends.saturating_duration_since(Instant::now());
    gw.store
        .flush_pending(left.max(Duration::from_secs(1)))
        .await;
    // The spans of the requests that finished during the drain go out
    // before the process ends.
    if let Some(telemetry) = &gw.telemetry {
        telemetry.flush().await;
    }
    admin_task.abort();
    housekeeping.abort();
    workers.shutdown().await;
    Ok(())
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    workers: Arc<Workers>,
    stop: CancellationToken,
    drain: CancellationToken,
    tracker: TaskTracker,
) {
    let server = &gw.config.server;
    let connections = Connections::new(server.max_connections);
    let service = stack::build::<ReadToEnd<Incoming>>(gw.clone());
    let mut builder = auto::Builder::new(Spread(workers.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(READ_BUF_BYTES)
        // hyper's own cap stays at its default (100 fields, parsed on the
        // stack): past `framing::MAX_HEADER_FIELDS` (64) the gateway answers
        // its `431` (problem body, `X-Request-Id`); past 100 too, as the
        // head watch cuts such a head short for hyper.
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.h2_max_concurrent_streams)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME_SIZE);
    let builder = Arc::new(builder);
    let idle_limit = server.header_read_timeout;
    let grace = server.shutdown_grace;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the limit the longest-idle connection makes room; with none
        // idle, the new connection is closed at once: the cheapest refusal.
        let ticket = match connections.admit() {
            (Admission::Refused, _) | (_, None) => {
                tracing::warn!(%peer, "connection limit reached, every connection busy; closing new connection");
                gw.metrics.connections_refused.inc();
                drop(stream);
                continue;
            }
            (admission, Some(ticket)) => {
                if admission == Admission::AdmittedByEviction {
                    tracing::info!(%peer, "connection limit reached; closing the longest-idle connection");
                    gw.metrics.connections_evicted.inc();
                }
                ticket
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let builder = builder.clone();
        let drain = drain.clone();
        let gw = gw.clone();
        let serve = move |stream: tokio::net::TcpStream| async move {
            let notes = Arc::new(HeadNotes::default());
            let stream = HeadWatch::new(stream, notes.clone());
            let service = Tracked {
                inner: service,
                activity: ticket.activity.clone(),
                notes,
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // Until the connection is told to close: when to look at its idle
            // time again. After: when to give up on it.
            let timer = tokio::time::sleep(idle_limit);
            tokio::pin!(timer);
            let mut closing = false;
            loop {
                let close = tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = ticket.evict.cancelled(), if !closing => true,
                    _ = drain.cancelled(), if !closing => true,
                    _ = timer.as_mut() => {
                        if closing {
                            tracing::debug!(%peer, "connection still open after the shutdown grace; dropping it");
                            if gw.is_draining() {
                                gw.mark_grace_over();
                            }
                            break;
                        }
                        match ticket.activity.idle_for() {
                            Some(idle) if idle >= idle_limit => true,
                            Some(idle) => {
                                timer.as_mut().reset(Instant::now() + (idle_limit - idle));
                                false
                            }
                            None => {
                                timer.as_mut().reset(Instant::now() + idle_limit);
                                false
                            }
                        }
                    }
                };
                if close {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    timer.as_mut().reset(Instant::now() + grace);
                }
            }
            drop(ticket);
        };
        // The connection moves to its worker's runtime: that one polls it.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "accepted connection unusable; closed");
                continue;
            }
        };
        // Counted by the drain from now, not from when its worker first
        // polls it.
        let tracked = tracker.token();
        workers.spawn_with(move || async move {
            let _tracked = tracked;
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "accepted connection unusable; closed")
                }
            }
        });
    }
}

/// A request body that says whether it was read to its end.
pub struct ReadToEnd<B> {
    inner: B,
    done: Arc<AtomicBool>,
}

impl<B: Body + Unpin> Body for ReadToEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.done.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => {
                this.done.store(true, Ordering::Release);
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The stack, marking its connection busy while a request is served.
///
/// hyper's service: the stack is called as hyper hands the request over,
/// not when hyper first polls the answer's future (as `TowerToHyperService`
/// does, through `oneshot`). hyper drops that future unpolled when it sees
/// the client close right after a request it read whole (an HTTP/1.1 client
/// that half-closes after a small body): called at once, such a request has
/// its access-log line (`client_closed`), and a keyed upload runs on to
/// Concur's answer, as for any client that left. Every layer of the stack is
/// always ready; were one not, the call waits for it in the future instead.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// What hyper's parse of this connection's heads lost (`head_watch.rs`).
    notes: Arc<HeadNotes>,
}

impl<S, R> hyper::service::Service<http::Request<Incoming>> for Tracked<S>
where
    S: tower::Service<http::Request<ReadToEnd<Incoming>>, Response = http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        self.notes.apply(&mut req);
        let busy = self.activity.begin();
        let done = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let http1 = req.version() < http::Version::HTTP_2;
        let req = req.map(|inner| ReadToEnd {
            inner,
            done: done.clone(),
        });
        let mut inner = self.inner.clone();
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        let (eager, later) = match inner.poll_ready(noop) {
            Poll::Ready(Ok(())) => (Some(inner.call(req)), None),
            _ => (None, Some(req)),
        };
        Box::pin(async move {
            let future = match (eager, later) {
                (Some(future), _) => future,
                (None, req) => {
                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    inner.call(req.expect("the request waits for the stack"))
                }
            };
            let mut response = future.await;
            drop(busy);
            // Answered before the body was read to its end (a refusal, or
            // Concur answering early): hyper does not read the rest, so it
            // closes the connection after the answer. Say so (RFC 9112 §9.6),
            // so that a client does not send its next request into it.
            if let Ok(response) = &mut response
                && http1
                && !done.load(Ordering::Acquire)
            {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            response
        })
    }
}

/// Resolves when the process receives SIGTERM or SIGINT. A second signal exits
/// at once (status 130): an operator who insists gets an immediate stop.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
