//! Request path, step 8 (see `ARCHITECTURE.md`).
//!
//! Malware scanning with ClamAV (`[scan]`): the clamd client.
//!
//! Where it sits: step 4 of the request path, beside the format inspection.
//! `proxy.rs` opens a [`ScanSession`] when an upload starts and hands it to
//! [`InspectBody`](crate::body::InspectBody), which feeds it every
//! chunk as that chunk goes on to Concur, and releases the held-back tail only
//! once the format verdict *and* clamd's verdict are in and clean. A detection
//! therefore ends the upstream body with an error: Concur never has it whole.
//!
//! One task per upload owns the clamd connection. It is fed through a channel
//! of [`CHANNEL_CHUNKS`] chunks, and the body adapter does not read the next
//! client frame until the channel took the previous one (`PollSender`): a slow
//! clamd slows the upload, and nothing is buffered without bound. The task
//! first takes one of `scan.max_concurrent` permits (clamd has a fixed pool of
//! threads; queueing here is cheaper than queueing there).
//!
//! The protocol (clamd(8)): `zINSTREAM\0`, then chunks `<u32 big-endian
//! length><bytes>`, then a zero-length chunk; the reply is `stream: OK\0`,
//! `stream: <signature> FOUND\0` or `<reason> ERROR\0` (clamd may send the
//! error early, e.g. `INSTREAM size limit exceeded. ERROR`, and hang up).
//! `zPING\0` → `PONG\0` is the health check behind `/readyz`.
//!
//! Every step with clamd (a permit, the connection, each write, the verdict
//! after the last byte) is bounded by `scan.timeout_s`. A failure is
//! `503 scan_unavailable`, or with `scan.on_error = "allow"` the upload goes on
//! unscanned, with a warning and a metric. The signature name goes to the log,
//! never to the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::PollSender;

use crate::config::{ClamdAddr, OnScanError, ScanConfig};
use crate::metrics::{Metrics, ResultLabel};

/// Chunks queued between the body adapter and the clamd connection.
pub const CHANNEL_CHUNKS: usize = 4;
/// Largest INSTREAM chunk written (bigger body frames are split).
const MAX_CHUNK: usize = 1024 * 1024;
/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// clamd's answer to an `INSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Clean,
    Found(String),
    Error(String),
}

/// Parses clamd's reply (with or without its `\0` terminator).
pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\0').trim();
    let body = text.strip_prefix("stream:").map_or(text, str::trim);
    if body == "OK" {
        Reply::Clean
    } else if let Some(signature) = body.strip_suffix(" FOUND") {
        Reply::Found(signature.trim().to_owned())
    } else if let Some(reason) = body.strip_suffix(" ERROR") {
        Reply::Error(reason.trim().to_owned())
    } else {
        let shown: String = body.chars().take(200).collect();
        Reply::Error(format!("unexpected reply `{shown}`"))
    }
}

/// The 4-byte length prefix of an INSTREAM chunk (`0` ends the stream).
pub fn chunk_header(len: usize) -> [u8; 4] {
    u32::try_from(len)
        .expect("INSTREAM chunks are at most MAX_CHUNK bytes")
        .to_be_bytes()
}

/// Where a scan task delivers its outcome.
pub type VerdictSender = oneshot::Sender<Result<Reply, ScanError>>;

/// Why clamd gave no verdict.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ScanError(String);

async fn step<T, F>(timeout: Duration, what: &str, f: F) -> Result<T, ScanError>
where
    F: Future<Output = std::io::Result<T>>,
{
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ScanError(format!("clamd {what}: {e}"))),
        Err(_) => Err(ScanError(format!(
            "clamd {what}: no progress within {timeout:?} (scan.timeout_s)"
        ))),
    }
}

/// Reads up to the `\0` terminator (or end of stream).
async fn read_reply<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Vec<u8>> {
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok(reply);
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&0) || reply.len() >= MAX_REPLY {
            return Ok(reply);
        }
    }
}

/// One `INSTREAM` exchange over `io`: every chunk from `chunks` until it closes,
/// then the terminator and the reply. Sans sockets: tests run it over a pipe.
pub async fn instream<S>(
    io: &mut S,
    chunks: &mut mpsc::Receiver<Bytes>,
    timeout: Duration,
) -> Result<Reply, ScanError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    step(timeout, "INSTREAM", io.write_all(b"zINSTREAM\0")).await?;
    while let Some(chunk) = chunks.recv().await {
        for piece in chunk.chunks(MAX_CHUNK) {
            let write = async {
                io.write_all(&chunk_header(piece.len())).await?;
                io.write_all(piece).await
            };
            if let Err(e) = step(timeout, "write", write).await {
                // clamd may have said why before hanging up (a size limit).
                let why = tokio::time::timeout(Duration::from_millis(200), read_reply(io)).await;
                return match why {
                    Ok(Ok(raw)) if !raw.is_empty() => match parse_reply(&raw) {
                        Reply::Clean => Err(e),
                        other => Ok(other),
                    },
                    _ => Err(e),
                };
            }
        }
    }
    let end = async {
        io.write_all(&chunk_header(0)).await?;
        io.flush().await
    };
    step(timeout, "end of stream", end).await?;
    let raw = step(timeout, "verdict", read_reply(io)).await?;
    if raw.is_empty() {
        return Err(ScanError(
            "clamd closed the connection without a verdict".into(),
        ));
    }
    Ok(parse_reply(&raw))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(addr: &ClamdAddr) -> std::io::Result<Box<dyn Io>> {
    match addr {
        ClamdAddr::Tcp(hostport) => {
            let stream = tokio::net::TcpStream::connect(hostport.as_str()).await?;
            // Small length prefixes must not wait for ACKs (Nagle).
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        ClamdAddr::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
    }
}

/// What the gateway does with a scan's outcome (`scan.on_error` applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Clean,
    /// clamd failed and `on_error = "allow"`: go on unscanned.
    AllowedOnError,
    /// `422 malware_detected`.
    Malware,
    /// `503 scan_unavailable`.
    Unavailable,
}

const HEALTH_UNKNOWN: u8 = 0;
const HEALTH_UP: u8 = 1;
const HEALTH_DOWN: u8 = 2;

struct Inner {
    addr: ClamdAddr,
    timeout: Duration,
    on_error: OnScanError,
    ping_interval: Duration,
    permits: Arc<Semaphore>,
    health: AtomicU8,
    scans: Family<ResultLabel, Counter>,
    duration: Histogram,
    up: Gauge,
}

/// The clamd client: configuration, permits, health and metrics. Cheap to clone.
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("clamd", &self.inner.addr)
            .field("on_error", &self.inner.on_error)
            .finish_non_exhaustive()
    }
}

impl Scanner {
    pub fn new(config: &ScanConfig, metrics: &Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr: config.clamd.clone(),
                timeout: config.timeout,
                on_error: config.on_error,
                ping_interval: config.ping_interval,
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                health: AtomicU8::new(HEALTH_UNKNOWN),
                scans: metrics.scans.clone(),
                duration: metrics.scan_duration.clone(),
                up: metrics.clamd_up.clone(),
            }),
        }
    }

    /// Opens the scan of one upload: a task that takes a permit, connects and
    /// streams what the session is fed. Dropping the session abandons the scan.
    pub fn session(&self, request_id: &str) -> ScanSession {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
        let (mut verdict_tx, verdict_rx): (VerdictSender, _) = oneshot::channel();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let timeout = inner.timeout;
            let work = async move {
                let permit =
                    tokio::time::timeout(timeout, inner.permits.clone().acquire_owned()).await;
                let _permit = match permit {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(ScanError("scanner closed".into())),
                    Err(_) => {
                        return Err(ScanError(format!(
                            "no scan slot within {timeout:?} (scan.max_concurrent scans busy)"
                        )));
                    }
                };
                let what = format!("connect to {}", inner.addr);
                let mut io = step(timeout, &what, connect(&inner.addr)).await?;
                instream(&mut io, &mut rx, timeout).await
            };
            // Biased: an abandoned session (upload rejected or gone) stops the scan.
            let result = tokio::select! {
                biased;
                _ = verdict_tx.closed() => None,
                r = work => Some(r),
            };
            if let Some(r) = result {
                let _ = verdict_tx.send(r);
            }
        });
        ScanSession {
            tx: PollSender::new(tx),
            pending: None,
            verdict: verdict_rx,
            scanner: self.clone(),
            request_id: request_id.to_owned(),
            started: Instant::now(),
        }
    }

    /// A session whose far end the caller holds: tests of the body adapter
    /// (its unit tests, and the `body` fuzz target through `testkit`).
    #[cfg(any(test, feature = "testkit"))]
    pub fn detached(&self) -> (ScanSession, mpsc::Receiver<Bytes>, VerdictSender) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (verdict_tx, verdict_rx) = oneshot::channel();
        let session = ScanSession {
            tx: PollSender::new(tx),
            pending: None,
            verdict: verdict_rx,
            scanner: self.clone(),
            request_id: "test".into(),
            started: Instant::now(),
        };
        (session, rx, verdict_tx)
    }

    /// `zPING` → `PONG` within `scan.timeout_s`; updates the health behind `/readyz`.
    pub async fn ping(&self) -> Result<(), ScanError> {
        let inner = &self.inner;
        let result = async {
            let what = format!("connect to {}", inner.addr);
            let mut io = step(inner.timeout, &what, connect(&inner.addr)).await?;
            step(inner.timeout, "PING", io.write_all(b"zPING\0")).await?;
            let raw = step(inner.timeout, "PONG", read_reply(&mut io)).await?;
            let text = String::from_utf8_lossy(&raw);
            if text.trim_end_matches('\0').trim() == "PONG" {
                Ok(())
            } else {
                Err(ScanError(format!(
                    "clamd answered PING with `{}`",
                    text.chars().take(100).collect::<String>()
                )))
            }
        }
        .await;
        let now = if result.is_ok() {
            HEALTH_UP
        } else {
            HEALTH_DOWN
        };
        let before = inner.health.swap(now, Ordering::SeqCst);
        inner.up.set(i64::from(now == HEALTH_UP));
        match (&result, before) {
            (Ok(()), b) if b != HEALTH_UP => tracing::info!(clamd = %inner.addr, "clamd is up"),
            (Err(e), b) if b != HEALTH_DOWN => {
                tracing::warn!(clamd = %inner.addr, error = %e, "clamd is not answering")
            }
            _ => {}
        }
        result
    }

    pub fn ping_interval(&self) -> Duration {
        self.inner.ping_interval
    }

    /// Not ready while clamd's last ping failed (or none answered yet) and
    /// failures reject uploads: the pod should not get traffic it would 503.
    pub fn readiness(&self) -> Result<(), String> {
        let inner = &self.inner;
        if inner.on_error == OnScanError::Allow {
            return Ok(());
        }
        match inner.health.load(Ordering::SeqCst) {
            HEALTH_UP => Ok(()),
            HEALTH_UNKNOWN => Err(format!("clamd at {} not checked yet", inner.addr)),
            _ => Err(format!("clamd at {} is not answering", inner.addr)),
        }
    }

    /// Applies `on_error`, counts, times and logs one scan's outcome.
    fn decide(
        &self,
        result: Result<Reply, ScanError>,
        request_id: &str,
        started: Instant,
    ) -> Decision {
        let inner = &self.inner;
        inner.duration.observe(started.elapsed().as_secs_f64());
        let (decision, label) = match result {
            Ok(Reply::Clean) => (Decision::Clean, "clean"),
            Ok(Reply::Found(signature)) => {
                tracing::warn!(request_id, signature, "malware detected: upload refused");
                (Decision::Malware, "found")
            }
            Ok(Reply::Error(reason)) => self.on_failure(request_id, &format!("clamd: {reason}")),
            Err(e) => self.on_failure(request_id, &e.0),
        };
        inner
            .scans
            .get_or_create(&ResultLabel { result: label })
            .inc();
        decision
    }

    fn on_failure(&self, request_id: &str, error: &str) -> (Decision, &'static str) {
        match self.inner.on_error {
            OnScanError::Reject => {
                tracing::warn!(
                    request_id,
                    error,
                    "malware scan failed: upload refused (scan.on_error = reject)"
                );
                (Decision::Unavailable, "error")
            }
            OnScanError::Allow => {
                tracing::warn!(
                    request_id,
                    error,
                    "malware scan failed: upload let through UNSCANNED (scan.on_error = allow)"
                );
                (Decision::AllowedOnError, "allowed_on_error")
            }
        }
    }
}

/// The scan of one upload, driven by the body adapter with `poll_*` methods.
pub struct ScanSession {
    tx: PollSender<Bytes>,
    /// A chunk the scanner has not taken yet (at most one).
    pending: Option<Bytes>,
    verdict: oneshot::Receiver<Result<Reply, ScanError>>,
    scanner: Scanner,
    request_id: String,
    started: Instant,
}

impl std::fmt::Debug for ScanSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanSession")
            .field("pending", &self.pending.as_ref().map(Bytes::len))
            .finish_non_exhaustive()
    }
}

impl ScanSession {
    /// Queues a chunk; `poll_feed` hands it over.
    pub fn push(&mut self, chunk: Bytes) {
        debug_assert!(self.pending.is_none(), "poll_feed before the next push");
        self.pending = Some(chunk);
    }

    /// Hands the queued chunk to the scanner: `Ready(Ok(true))` once taken,
    /// `Ready(Ok(false))` with nothing queued, `Pending` while the channel is
    /// full (backpressure), `Ready(Err(_))` when the scan ended early (clamd
    /// down, an error reply, a timeout): the decision for the upload.
    pub fn poll_feed(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Decision>> {
        let Some(chunk) = self.pending.take() else {
            return Poll::Ready(Ok(false));
        };
        match self.tx.poll_reserve(cx) {
            Poll::Pending => {
                self.pending = Some(chunk);
                Poll::Pending
            }
            Poll::Ready(Ok(())) if self.tx.send_item(chunk).is_ok() => Poll::Ready(Ok(true)),
            // The task is gone: its verdict says why.
            Poll::Ready(_) => self.poll_early_end(cx).map(Err),
        }
    }

    fn poll_early_end(&mut self, cx: &mut Context<'_>) -> Poll<Decision> {
        let result = ready!(self.poll_result(cx)).and_then(|reply| match reply {
            Reply::Clean => Err(ScanError(
                "clamd answered before the end of the stream".into(),
            )),
            other => Ok(other),
        });
        Poll::Ready(self.scanner.decide(result, &self.request_id, self.started))
    }

    fn poll_result(&mut self, cx: &mut Context<'_>) -> Poll<Result<Reply, ScanError>> {
        let r = ready!(Pin::new(&mut self.verdict).poll(cx));
        Poll::Ready(
            r.unwrap_or_else(|_| Err(ScanError("scan task ended without a verdict".into()))),
        )
    }

    /// The body ended: the scanner sends the terminating chunk and reads the verdict.
    pub fn finish(&mut self) {
        debug_assert!(self.pending.is_none(), "every chunk was fed");
        self.tx.close();
    }

    /// clamd's verdict on the whole body, after [`finish`](Self::finish).
    pub fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<Decision> {
        let result = ready!(self.poll_result(cx));
        Poll::Ready(self.scanner.decide(result, &self.request_id, self.started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply(b"stream: OK\0"), Reply::Clean);
        assert_eq!(parse_reply(b"stream: OK"), Reply::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test.UNOFFICIAL FOUND\0"),
            Reply::Found("Eicar-Test.UNOFFICIAL".into())
        );
        assert_eq!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            Reply::Error("INSTREAM size limit exceeded.".into())
        );
        assert_eq!(
            parse_reply(b"stream: Can't allocate memory ERROR\0"),
            Reply::Error("Can't allocate memory".into())
        );
        assert!(
            matches!(parse_reply(b"UNKNOWN COMMAND\0"), Reply::Error(e) if e.contains("unexpected"))
        );
        assert!(matches!(parse_reply(b""), Reply::Error(_)));
    }

    #[test]
    fn chunk_headers_are_big_endian_u32() {
        assert_eq!(chunk_header(0), [0, 0, 0, 0]);
        assert_eq!(chunk_header(5), [0, 0, 0, 5]);
        assert_eq!(chunk_header(0x0102_0304), [1, 2, 3, 4]);
    }

    /// A fake clamd on the other end of a pipe: reads one INSTREAM, answers `reply`.
    async fn fake_clamd(mut io: tokio::io::DuplexStream, reply: &'static [u8]) -> Vec<u8> {
        let mut cmd = [0u8; 10];
        io.read_exact(&mut cmd).await.unwrap();
        assert_eq!(&cmd, b"zINSTREAM\0");
        let mut data = Vec::new();
        loop {
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await.unwrap();
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                break;
            }
            let start = data.len();
            data.resize(start + len, 0);
            io.read_exact(&mut data[start..]).await.unwrap();
        }
        io.write_all(reply).await.unwrap();
        data
    }

    #[tokio::test]
    async fn instream_frames_every_chunk_and_reads_the_verdict() {
        let (mut client, server) = tokio::io::duplex(64);
        let server = tokio::spawn(fake_clamd(server, b"stream: Sig-1 FOUND\0"));
        let (tx, mut rx) = mpsc::channel(2);
        let feeder = tokio::spawn(async move {
            for piece in [&b"hello "[..], b"", b"world"] {
                tx.send(Bytes::from_static(piece)).await.unwrap();
            }
        });
        let reply = instream(&mut client, &mut rx, Duration::from_secs(5))
            .await
            .unwrap();
        feeder.await.unwrap();
        assert_eq!(reply, Reply::Found("Sig-1".into()));
        assert_eq!(server.await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn an_early_error_reply_is_the_reason() {
        // clamd refuses after the command and hangs up.
        let (mut client, mut server) = tokio::io::duplex(128);
        tokio::spawn(async move {
            let mut cmd = [0u8; 10];
            server.read_exact(&mut cmd).await.unwrap();
            server
                .write_all(b"INSTREAM size limit exceeded. ERROR\0")
                .await
                .unwrap();
        });
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from(vec![7u8; 4096])).await;
        });
        let reply = instream(&mut client, &mut rx, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply, Reply::Error("INSTREAM size limit exceeded.".into()));
    }

    #[tokio::test]
    async fn a_silent_clamd_times_out() {
        let (mut client, _server) = tokio::io::duplex(1024);
        let (tx, mut rx) = mpsc::channel(1);
        drop(tx);
        let e = instream(&mut client, &mut rx, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("verdict"), "{e}");
    }
}
