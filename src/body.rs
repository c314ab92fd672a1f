//! Request path, step 8 (see `ARCHITECTURE.md`).
//!
//! The body adapter: drives the sans-IO [`Inspector`] from an HTTP body while the
//! bytes flow on to Concur.
//!
//! [`InspectBody`] wraps the client's body and is itself the body of the request
//! to Concur. Each data frame is counted against `max_body_bytes`, fed to the
//! inspector and to the digest, then forwarded, except for a **held-back tail**
//! of at most [`HOLD_BACK`] bytes. The tail is released only once the client's
//! body has ended and `finish()` accepted the file. With a declared length
//! (`Content-Length`), the tail is taken from the last chunk only: until then
//! the bytes still to come keep Concur's request incomplete, so chunks flow on
//! as soon as they are checked. On a rejection (or a client
//! timeout, or a body over the limit) the body ends with an error instead: hyper
//! aborts the upstream request, so Concur sees an incomplete body (its
//! `Content-Length` is never reached) and creates nothing.
//!
//! What became of the body ([`BodyFacts`], and the [`BodyFailure`] if it was
//! cut short) is sent once through a [`BodyReport`] the moment it is known:
//! when the body is accepted or fails, or else when the adapter is dropped.
//! The proxy reads it to answer the client (a `422`, not the `502` the
//! aborted exchange would suggest) and to log what arrived.
//!
//! With malware scanning (`[scan]`), every chunk also goes to a [`ScanSession`]
//! and the next client frame is not read until the scanner took the previous
//! one (backpressure: a slow clamd slows the upload, nothing piles up here).
//! At the end of the body the tail waits for both verdicts: the format's
//! (`finish()`) and then clamd's. A detection or an unavailable scanner ends
//! the body with an error like any rejection.
//!
//! Memory per upload: the hold-back window plus the scanner's bounded state.
//! Between frames an idle timer runs: a client that stalls for
//! `body_idle_timeout` gets `408 body_timeout`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::KeyValue;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::clamav::{Decision, ScanSession};
use crate::config::{DigestAlgorithm, MinBodyRate};
use crate::context::BodyFacts;
use crate::error::{BoxError, GatewayError};
use crate::inspect::{Inspector, Rejection};
use crate::telemetry::Child;

/// How many bytes of the body are held back until the verdict is known.
pub const HOLD_BACK: usize = 64 * 1024;

/// Frames smaller than [`ZERO_COPY_MIN`] are copied together into chunks of
/// this size before anything else sees them. A client that sends its body in
/// 1-byte chunked frames would otherwise cost one `Bytes` (pinning hyper's
/// read buffer), one scanner call, one clamd hand-off and one spool write per
/// byte: memory and CPU would grow with the frame count, not the byte count.
pub const COALESCE: usize = 64 * 1024;

/// Frames at least this large go through as they are (zero-copy): HTTP/1.1
/// reads (up to 64 KiB, `server.rs`, `READ_BUF_BYTES`) and HTTP/2's 16 KiB
/// DATA frames (the protocol's default frame size, which most clients keep).
/// Copying HTTP/2's frames together into 64 KiB chunks was measured and
/// costs more than it saves: hyper's write queue toward Concur
/// (`upstream.rs`, `UPSTREAM_WRITE_BUF`) already gathers them into one
/// `writev` (`docs/benchmarks.md`, "HTTP/2").
pub const ZERO_COPY_MIN: usize = 16 * 1024;

/// When the client pauses (its next frame is not there yet), what is
/// coalesced goes through the checks if it is at least this much: a chunk
/// is only held for more when the next frame is already in, so coalescing
/// never delays a verdict on bytes the client has sent, except below this
/// size, where it is what keeps tiny frames from being checked one by one.
pub const FLUSH_MIN: usize = 16 * 1024;

/// The minimum body rate is judged over windows of this length.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Why a body was cut short: the client's doing, the inspection's verdict or
/// the scanner's. Cloneable (unlike [`GatewayError`]) so that the adapter can
/// both report it and return it.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyFailure {
    TooLarge {
        limit: u64,
    },
    Idle(Duration),
    TooSlow {
        min_bytes_per_s: u64,
    },
    Deadline(Duration),
    /// The client's body ended early or its framing broke.
    ClientAborted(String),
    Empty,
    Rejected(Rejection),
    Malware,
    ScanUnavailable,
}

impl From<BodyFailure> for GatewayError {
    fn from(f: BodyFailure) -> Self {
        match f {
            BodyFailure::TooLarge { limit } => GatewayError::BodyTooLarge { limit },
            BodyFailure::Idle(d) => GatewayError::BodyTimeout(d),
            BodyFailure::TooSlow { min_bytes_per_s } => {
                GatewayError::BodyTooSlow { min_bytes_per_s }
            }
            BodyFailure::Deadline(d) => GatewayError::BodyDeadline(d),
            BodyFailure::ClientAborted(why) => GatewayError::ClientAborted(why),
            BodyFailure::Empty => GatewayError::EmptyBody,
            BodyFailure::Rejected(r) => GatewayError::Rejected(r),
            BodyFailure::Malware => GatewayError::MalwareDetected,
            BodyFailure::ScanUnavailable => GatewayError::ScanUnavailable,
        }
    }
}

/// The adapter's one report: its facts and, if it was cut short, why.
#[derive(Debug, Clone, Default)]
pub struct BodyOutcome {
    pub facts: BodyFacts,
    pub failure: Option<BodyFailure>,
}

/// The receiving end of an adapter's report.
#[derive(Debug)]
pub struct BodyReport {
    rx: oneshot::Receiver<BodyOutcome>,
    got: Option<BodyOutcome>,
}

/// How long the proxy waits for the report of a body that hyper still holds
/// after the exchange failed (it drops it at once; this only bounds a race).
const LATE_REPORT: Duration = Duration::from_millis(100);

impl BodyReport {
    /// The report if it was sent already.
    pub fn now(&mut self) -> Option<&BodyOutcome> {
        if self.got.is_none() {
            self.got = self.rx.try_recv().ok();
        }
        self.got.as_ref()
    }

    /// The report, waiting briefly for a body whose adapter is being dropped.
    pub async fn collect(mut self) -> Option<BodyOutcome> {
        if self.now().is_some() {
            return self.got;
        }
        tokio::time::timeout(LATE_REPORT, self.rx).await.ok()?.ok()
    }
}

/// The error the body reports to hyper when it stops early. The real reason is
/// in the [`BodyReport`].
#[derive(Debug, thiserror::Error)]
#[error("upload stopped by the gateway: {0}")]
pub struct BodyAborted(&'static str);

pub struct InspectBody<B> {
    inner: B,
    inspector: Inspector,
    hasher: Option<(digest::Context, &'static str)>,
    /// A SHA-256 of the body besides `hasher` (an `Idempotency-Key`'s
    /// fingerprint needs one whatever `inspect.digest` says).
    sha256: Option<digest::Context>,
    /// Bytes checked but held back; at most `HOLD_BACK` once `out` is drained.
    held: VecDeque<Bytes>,
    held_len: usize,
    /// Bytes cleared for forwarding.
    out: VecDeque<Bytes>,
    max_bytes: u64,
    received: u64,
    declared_len: Option<u64>,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The whole body must have arrived by then.
    deadline: Pin<Box<Sleep>>,
    deadline_after: Duration,
    min_rate: MinBodyRate,
    window: RateWindow,
    /// Wakes the rate check while the client sends nothing.
    rate_tick: Pin<Box<Sleep>>,
    /// Small frames copied together until they make a [`COALESCE`]-sized chunk.
    coalesce: BytesMut,
    /// The client's body has ended (what is coalesced may still be unchecked).
    inner_done: bool,
    state: State,
    /// What is known of the body so far; sent once through `report`.
    outcome: BodyOutcome,
    report: Option<oneshot::Sender<BodyOutcome>>,
    /// The malware scan of this body, while it runs.
    scan: Option<ScanSession>,
    /// Trace spans of the inspection (and the scan), ended with the report.
    spans: Vec<Child>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The client's body ended and the format was accepted; the tail waits
    /// for clamd's verdict.
    Scanning,
    /// The verdict is in and accepted: only `out` remains.
    Accepted,
    Failed,
}

impl<B> std::fmt::Debug for InspectBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InspectBody")
            .field("received", &self.received)
            .field("held_len", &self.held_len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The client's pace: idle timeout, minimum rate, whole-body deadline.
#[derive(Debug, Clone, Copy)]
pub struct BodyTiming {
    pub idle: Duration,
    pub min_rate: MinBodyRate,
    pub deadline: Duration,
}

/// Bytes received per second over the last [`RATE_WINDOW`], in one-second
/// buckets: the window that is judged is the last ten *complete* seconds.
#[derive(Debug)]
struct RateWindow {
    start: Instant,
    /// `buckets[k % BUCKETS]` holds second `k` since `start`.
    buckets: [u64; BUCKETS],
    /// The current second.
    sec: u64,
}

const BUCKETS: usize = RATE_WINDOW.as_secs() as usize + 1;

impl RateWindow {
    fn new(start: Instant) -> Self {
        Self {
            start,
            buckets: [0; BUCKETS],
            sec: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let k = now.duration_since(self.start).as_secs();
        if k > self.sec {
            let steps = (k - self.sec).min(BUCKETS as u64);
            for i in 1..=steps {
                self.buckets[((self.sec + i) % BUCKETS as u64) as usize] = 0;
            }
            self.sec = k;
        }
    }

    fn add(&mut self, now: Instant, n: u64) {
        self.advance(now);
        self.buckets[(self.sec % BUCKETS as u64) as usize] += n;
    }

    /// Whether the last full window (once it ends after `grace`) brought
    /// fewer than `RATE_WINDOW × bytes_per_s` bytes.
    fn too_slow(&mut self, now: Instant, grace: Duration, bytes_per_s: u64) -> bool {
        self.advance(now);
        let window = RATE_WINDOW.as_secs();
        if self.sec < window.max(grace.as_secs_f64().ceil() as u64) {
            return false;
        }
        let current = (self.sec % BUCKETS as u64) as usize;
        let sum: u64 = self
            .buckets
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != current)
            .map(|(_, n)| n)
            .sum();
        sum < bytes_per_s.saturating_mul(window)
    }
}

/// One step of reading the client body.
enum Step {
    Data,
    End,
}

impl<B> InspectBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(
        inner: B,
        inspector: Inspector,
        digest: DigestAlgorithm,
        max_bytes: u64,
        declared_len: Option<u64>,
        timing: BodyTiming,
    ) -> (Self, BodyReport) {
        let (report, rx) = oneshot::channel();
        let BodyTiming {
            idle,
            min_rate,
            deadline,
        } = timing;
        let now = Instant::now();
        let hasher = match digest {
            DigestAlgorithm::Sha256 => Some((digest::Context::new(&digest::SHA256), "sha-256")),
            DigestAlgorithm::Sha512 => Some((digest::Context::new(&digest::SHA512), "sha-512")),
            DigestAlgorithm::None => None,
        };
        let body = Self {
            inner,
            inspector,
            hasher,
            sha256: None,
            held: VecDeque::new(),
            held_len: 0,
            out: VecDeque::new(),
            max_bytes,
            received: 0,
            declared_len,
            idle,
            sleep: Box::pin(tokio::time::sleep_until(now + idle)),
            deadline: Box::pin(tokio::time::sleep_until(now + deadline)),
            deadline_after: deadline,
            min_rate,
            window: RateWindow::new(now),
            rate_tick: Box::pin(tokio::time::sleep_until(
                now + min_rate.grace.max(RATE_WINDOW),
            )),
            coalesce: BytesMut::new(),
            inner_done: false,
            state: State::Streaming,
            outcome: BodyOutcome::default(),
            report: Some(report),
            scan: None,
            spans: Vec::new(),
        };
        (body, BodyReport { rx, got: None })
    }

    /// Also computes the body's SHA-256 (reported as `BodyFacts::sha256`),
    /// with the digest's own hasher when that is SHA-256 already.
    pub fn with_sha256(mut self) -> Self {
        if !matches!(&self.hasher, Some((_, "sha-256"))) {
            self.sha256 = Some(digest::Context::new(&digest::SHA256));
        }
        self
    }

    /// A trace span that ends when the body's report is sent.
    pub fn with_span(mut self, span: Child) -> Self {
        self.spans.push(span);
        self
    }

    /// Scans the body for malware as it streams (see the module docs).
    pub fn with_scan(mut self, scan: ScanSession) -> Self {
        self.scan = Some(scan);
        self
    }

    /// Reads and checks the first chunk before anything is sent upstream: an
    /// empty body, a slow client or a type mismatch never opens a Concur exchange.
    pub async fn prime(&mut self) -> Result<(), GatewayError> {
        let step = std::future::poll_fn(|cx| self.poll_step(cx)).await;
        match step {
            Ok(Step::Data) => Ok(()),
            Ok(Step::End) if self.received == 0 => Err(GatewayError::EmptyBody),
            Ok(Step::End) => Ok(()),
            Err(()) => Err(self.take_failure()),
        }
    }

    /// The next chunk cleared for forwarding, or `None` once the body ended
    /// and was accepted. Used to spool chunked bodies: nothing is released
    /// unless it passed the checks, and the tail only once the verdict is in.
    pub async fn next_cleared(&mut self) -> Result<Option<Bytes>, GatewayError> {
        loop {
            if let Some(chunk) = self.out.pop_front() {
                return Ok(Some(chunk));
            }
            if self.state == State::Accepted {
                return Ok(None);
            }
            if std::future::poll_fn(|cx| self.poll_step(cx)).await.is_err() {
                return Err(self.take_failure());
            }
        }
    }

    fn take_failure(&mut self) -> GatewayError {
        self.outcome.failure.clone().map_or_else(
            || GatewayError::Internal("body failed without a reason".into()),
            Into::into,
        )
    }

    fn fail(&mut self, failure: BodyFailure) {
        self.state = State::Failed;
        self.held.clear();
        self.out.clear();
        self.scan = None; // abandons the scan
        self.outcome.facts.received = self.received;
        self.outcome.failure = Some(failure);
        self.send_report();
    }

    /// Sends the report, once.
    fn send_report(&mut self) {
        self.end_spans();
        if let Some(tx) = self.report.take() {
            let _ = tx.send(self.outcome.clone());
        }
    }

    /// Reads from the client until one chunk has gone through the checks (or
    /// the body ended), coalescing small frames on the way.
    /// `Err(())` means the body failed; the reason is in the outcome.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Step, ()>> {
        match self.state {
            State::Failed => return Poll::Ready(Err(())),
            State::Accepted => return Poll::Ready(Ok(Step::End)),
            State::Scanning => return self.poll_scan_verdict(cx),
            State::Streaming => {}
        }
        // Backpressure: the scanner takes the previous chunk before the next
        // one is read from the client.
        if let Some(scan) = &mut self.scan {
            match ready!(scan.poll_feed(cx)) {
                // Waiting for the scanner is not the client's idleness.
                Ok(true) => self.sleep.as_mut().reset(Instant::now() + self.idle),
                Ok(false) => {}
                Err(decision) => {
                    if !self.apply_scan(decision) {
                        return Poll::Ready(Err(()));
                    }
                }
            }
        }
        if self.inner_done {
            return self.poll_end(cx);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers carry nothing we forward
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let now = Instant::now();
                    self.sleep.as_mut().reset(now + self.idle);
                    let checked = self.on_data(data, now);
                    if self.state == State::Failed {
                        return Poll::Ready(Err(()));
                    }
                    if checked {
                        return Poll::Ready(Ok(Step::Data));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let e: BoxError = e.into();
                    self.fail(BodyFailure::ClientAborted(e.to_string()));
                    return Poll::Ready(Err(()));
                }
                Poll::Ready(None) => {
                    self.inner_done = true;
                    if !self.coalesce.is_empty() {
                        // The last coalesced bytes go through the checks first
                        // (and to the scanner, which must take them before
                        // the stream to it ends).
                        let chunk = self.coalesce.split().freeze();
                        self.check_chunk(chunk);
                        if self.state == State::Failed {
                            return Poll::Ready(Err(()));
                        }
                        return Poll::Ready(Ok(Step::Data));
                    }
                    return self.poll_end(cx);
                }
                Poll::Pending => {
                    if self.coalesce.len() >= FLUSH_MIN {
                        let chunk = self.coalesce.split().freeze();
                        self.check_chunk(chunk);
                        if self.state == State::Failed {
                            return Poll::Ready(Err(()));
                        }
                        return Poll::Ready(Ok(Step::Data));
                    }
                    self.poll_timers(cx);
                    return if self.state == State::Failed {
                        Poll::Ready(Err(()))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }

    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<Step, ()>> {
        self.on_end();
        match self.state {
            State::Failed => Poll::Ready(Err(())),
            State::Scanning => self.poll_scan_verdict(cx),
            _ => Poll::Ready(Ok(Step::End)),
        }
    }

    /// The client sends nothing: the idle timeout, the whole-body deadline and
    /// the minimum rate (checked every second once the window is full).
    fn poll_timers(&mut self, cx: &mut Context<'_>) {
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.fail(BodyFailure::Idle(self.idle));
            return;
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.fail(BodyFailure::Deadline(self.deadline_after));
            return;
        }
        while self.rate_tick.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            self.check_rate(now);
            if self.state == State::Failed {
                return;
            }
            self.rate_tick.as_mut().reset(now + Duration::from_secs(1));
        }
    }

    /// A client trickling bytes just often enough to dodge the idle timeout
    /// is cut once a full window brought too little.
    fn check_rate(&mut self, now: Instant) {
        let MinBodyRate { bytes_per_s, grace } = self.min_rate;
        if self.state != State::Streaming || bytes_per_s == 0 {
            return;
        }
        if self.window.too_slow(now, grace, bytes_per_s) {
            self.fail(BodyFailure::TooSlow {
                min_bytes_per_s: bytes_per_s,
            });
        }
    }

    /// Counts a frame and coalesces it; returns whether a chunk went through
    /// the checks.
    fn on_data(&mut self, data: Bytes, now: Instant) -> bool {
        self.received += data.len() as u64;
        if self.received > self.max_bytes {
            self.fail(BodyFailure::TooLarge {
                limit: self.max_bytes,
            });
            return false;
        }
        self.window.add(now, data.len() as u64);
        self.check_rate(now);
        if self.state == State::Failed {
            return false;
        }
        if self.coalesce.is_empty() && data.len() >= ZERO_COPY_MIN {
            self.check_chunk(data); // zero-copy: the common case over HTTP/1.1
            return true;
        }
        // One chunk per step (the scanner takes one at a time), so a large
        // frame after small ones joins them. The buffer grows with what was
        // received (no 64 KiB up front for a 2 KiB body or a stalled client).
        self.coalesce.extend_from_slice(&data);
        if self.coalesce.len() >= COALESCE {
            let chunk = self.coalesce.split().freeze();
            self.check_chunk(chunk);
            return true;
        }
        false
    }

    /// One chunk through the inspection, the digest and the scanner, then into
    /// the held-back tail.
    fn check_chunk(&mut self, data: Bytes) {
        if let Err(r) = self.inspector.feed(&data) {
            self.fail(BodyFailure::Rejected(r));
            return;
        }
        if let Some((ctx, _)) = &mut self.hasher {
            ctx.update(&data);
        }
        if let Some(ctx) = &mut self.sha256 {
            ctx.update(&data);
        }
        if let Some(scan) = &mut self.scan {
            scan.push(data.clone()); // a refcount, not a copy
        }
        self.held_len += data.len();
        self.held.push_back(data);
        // Release everything but the last HOLD_BACK bytes (zero-copy splits).
        // With a declared length, a chunk that is not the last one is
        // released whole: the bytes still to come keep Concur's request
        // incomplete, and holding a chunk back would pin it (and its 64 KiB
        // read buffer) for nothing. Every received byte has been checked here
        // (nothing is left in `coalesce`).
        let more_to_come = self.declared_len.is_some_and(|n| self.received < n);
        let hold_back = if more_to_come { 0 } else { HOLD_BACK };
        while self.held_len > hold_back {
            let excess = self.held_len - hold_back;
            let front = self.held.front_mut().expect("held_len > 0");
            if front.len() <= excess {
                let chunk = self.held.pop_front().expect("front exists");
                self.held_len -= chunk.len();
                self.out.push_back(chunk);
            } else {
                let chunk = front.split_to(excess);
                self.held_len -= chunk.len();
                self.out.push_back(chunk);
            }
        }
    }

    fn on_end(&mut self) {
        if let Some(declared) = self.declared_len
            && declared != self.received
        {
            self.fail(BodyFailure::ClientAborted(format!(
                "client body ended after {} of {declared} bytes",
                self.received
            )));
            return;
        }
        if self.received == 0 {
            self.fail(BodyFailure::Empty);
            return;
        }
        if let Err(r) = self.inspector.finish() {
            self.fail(BodyFailure::Rejected(r));
            return;
        }
        let facts = &mut self.outcome.facts;
        facts.received = self.received;
        if let Some(ctx) = self.sha256.take() {
            facts.sha256 = Some(ctx.finish().as_ref().to_vec());
        }
        if let Some((ctx, name)) = self.hasher.take() {
            let d = ctx.finish();
            if name == "sha-256" {
                facts.sha256 = Some(d.as_ref().to_vec());
            }
            facts.repr_digest = Some(format!(
                "{name}=:{}:",
                base64::engine::general_purpose::STANDARD.encode(d.as_ref())
            ));
            facts.digest_hex = Some(hex(d.as_ref()));
        }
        match &mut self.scan {
            Some(scan) => {
                scan.finish();
                self.state = State::Scanning;
            }
            None => self.accept(),
        }
    }

    /// Both verdicts are in: the tail goes on.
    fn accept(&mut self) {
        self.outcome.facts.accepted = true;
        self.send_report();
        self.out.extend(self.held.drain(..));
        self.held_len = 0;
        self.state = State::Accepted;
    }

    fn poll_scan_verdict(&mut self, cx: &mut Context<'_>) -> Poll<Result<Step, ()>> {
        let scan = self.scan.as_mut().expect("a scan runs while Scanning");
        let decision = ready!(scan.poll_verdict(cx));
        self.scan = None;
        if self.apply_scan(decision) {
            self.accept();
            Poll::Ready(Ok(Step::End))
        } else {
            Poll::Ready(Err(()))
        }
    }

    /// `false` when the decision fails the body.
    fn apply_scan(&mut self, decision: Decision) -> bool {
        match decision {
            Decision::Clean => true,
            Decision::AllowedOnError => {
                self.scan = None; // go on unscanned
                true
            }
            Decision::Malware => {
                self.fail(BodyFailure::Malware);
                false
            }
            Decision::Unavailable => {
                self.fail(BodyFailure::ScanUnavailable);
                false
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl<B> Body for InspectBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match this.state {
                State::Accepted => return Poll::Ready(None),
                State::Failed => {
                    return Poll::Ready(Some(Err(Box::new(BodyAborted("rejected")))));
                }
                State::Streaming | State::Scanning => {}
            }
            match ready!(this.poll_step(cx)) {
                Ok(_) => continue,
                Err(()) => return Poll::Ready(Some(Err(Box::new(BodyAborted("rejected"))))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Accepted && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared_len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl<B> InspectBody<B> {
    /// Ends the spans with what became of the body (no content of it).
    fn end_spans(&mut self) {
        if self.spans.is_empty() {
            return;
        }
        let failure = self
            .outcome
            .failure
            .clone()
            .map(|f| GatewayError::from(f).code());
        for span in self.spans.drain(..) {
            span.attr(KeyValue::new("concur_gateway.bytes", self.received as i64));
            span.attr(KeyValue::new(
                "concur_gateway.accepted",
                self.outcome.facts.accepted,
            ));
            if let Some(code) = failure {
                span.fail(code);
            }
        }
    }
}

impl<B> Drop for InspectBody<B> {
    /// A body dropped before it ended (the exchange failed, the request was
    /// abandoned) still reports what it received.
    fn drop(&mut self) {
        self.outcome.facts.received = self.received;
        self.end_spans();
        if let Some(tx) = self.report.take() {
            let _ = tx.send(std::mem::take(&mut self.outcome));
        }
    }
}

/// Convenience for tests and the `scan` command: a [`Rejection`] as a gateway error.
impl From<Rejection> for GatewayError {
    fn from(r: Rejection) -> Self {
        GatewayError::Rejected(r)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Waker;

    use super::*;
    use crate::clamav::{CHANNEL_CHUNKS, Reply, Scanner, VerdictSender};
    use crate::config::{ClamdAddr, OnScanError, ScanConfig};
    use crate::inspect::{Limits, MediaType};
    use crate::metrics::Metrics;

    const FRAME: usize = 16 * 1024;

    /// A client body in `FRAME`-sized frames that counts the frames taken;
    /// with `pause`, the client sends nothing more after them (not even the end).
    struct Frames {
        left: VecDeque<Bytes>,
        taken: Arc<AtomicUsize>,
        pause: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let next = self.left.pop_front();
            if next.is_some() {
                self.taken.fetch_add(1, Ordering::SeqCst);
            } else if self.pause {
                return Poll::Pending;
            }
            Poll::Ready(next.map(|b| Ok(Frame::data(b))))
        }
    }

    /// A valid JPEG of about 300 KiB: the sample with APP15 filler segments.
    fn jpeg() -> Vec<u8> {
        let sample = crate::demo::SAMPLE_RECEIPT;
        let mut out = sample[..2].to_vec();
        for i in 0..5u8 {
            out.extend_from_slice(&[0xFF, 0xEF, 0xFF, 0xFF]);
            out.extend(std::iter::repeat_n(i, 0xFFFF - 2));
        }
        out.extend_from_slice(&sample[2..]);
        out
    }

    fn timing() -> BodyTiming {
        BodyTiming {
            idle: Duration::from_secs(30),
            min_rate: crate::config::MinBodyRate {
                bytes_per_s: 0,
                grace: Duration::ZERO,
            },
            deadline: Duration::from_secs(300),
        }
    }

    /// A body with a detached scan session: the body, its report, how many
    /// client frames were taken, what reaches clamd, and clamd's verdict.
    type Scanned = (
        InspectBody<Frames>,
        BodyReport,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::Receiver<Bytes>,
        VerdictSender,
    );

    fn scanned_body(data: &[u8]) -> Scanned {
        scanned_body_in(data, &[FRAME], true)
    }

    /// The same with frames of `sizes`, in turn, with or without a declared
    /// length (`Content-Length`).
    fn scanned_body_in(data: &[u8], sizes: &[usize], declared: bool) -> Scanned {
        let scanner = Scanner::new(
            &ScanConfig {
                clamd: ClamdAddr::Tcp("127.0.0.1:9".into()),
                timeout: Duration::from_secs(1),
                on_error: OnScanError::Reject,
                max_concurrent: 1,
                ping_interval: Duration::from_secs(10),
            },
            &Metrics::new(),
        );
        let (session, rx, verdict) = scanner.detached();
        let taken = Arc::new(AtomicUsize::new(0));
        let mut left = VecDeque::new();
        let mut rest = data;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (frame, tail) = rest.split_at((*size).min(rest.len()));
            left.push_back(Bytes::copy_from_slice(frame));
            rest = tail;
        }
        let frames = Frames {
            left,
            taken: taken.clone(),
            pause: false,
        };
        let (body, report) = InspectBody::new(
            frames,
            Inspector::new(MediaType::Jpeg, &Limits::default()),
            DigestAlgorithm::None,
            u64::MAX,
            declared.then_some(data.len() as u64),
            timing(),
        );
        (body.with_scan(session), report, taken, rx, verdict)
    }

    #[derive(Debug, PartialEq)]
    enum Pumped {
        Pending,
        End,
        Failed,
    }

    /// Polls until the body waits, ends or fails; forwarded bytes go to `out`.
    fn pump(body: &mut InspectBody<Frames>, out: &mut Vec<u8>) -> Pumped {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => return Pumped::Pending,
                Poll::Ready(None) => return Pumped::End,
                Poll::Ready(Some(Ok(f))) => out.extend_from_slice(&f.into_data().unwrap()),
                Poll::Ready(Some(Err(_))) => return Pumped::Failed,
            }
        }
    }

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<Bytes>, scanned: &mut Vec<u8>) {
        while let Ok(chunk) = rx.try_recv() {
            scanned.extend_from_slice(&chunk);
        }
    }

    /// Streams the whole body with a scanner that keeps up, up to the verdict.
    fn to_verdict(
        body: &mut InspectBody<Frames>,
        rx: &mut tokio::sync::mpsc::Receiver<Bytes>,
        len: usize,
        out: &mut Vec<u8>,
        scanned: &mut Vec<u8>,
    ) {
        for _ in 0..len {
            drain(rx, scanned);
            if scanned.len() >= len {
                break;
            }
            assert_eq!(pump(body, out), Pumped::Pending);
        }
        assert_eq!(pump(body, out), Pumped::Pending, "waits for the verdict");
        drain(rx, scanned);
    }

    /// Frames are coalesced only while the next one is already there: when
    /// the client pauses, what it sent is judged at once (from FLUSH_MIN on).
    #[tokio::test]
    async fn a_pause_sends_what_is_coalesced_through_the_checks() {
        let paused = |frames: Vec<Bytes>| {
            InspectBody::new(
                Frames {
                    left: frames.into(),
                    taken: Arc::new(AtomicUsize::new(0)),
                    pause: true,
                },
                Inspector::new(MediaType::Jpeg, &Limits::default()),
                DigestAlgorithm::None,
                u64::MAX,
                None,
                timing(),
            )
        };
        // Not a JPEG, in one HTTP/2-sized frame: refused at once.
        let (mut body, mut report) = paused(vec![Bytes::from(vec![b'x'; FRAME])]);
        assert_eq!(pump(&mut body, &mut Vec::new()), Pumped::Failed);
        assert!(matches!(
            report.now().and_then(|o| o.failure.clone()),
            Some(BodyFailure::Rejected(_))
        ));
        // Two small frames (< FLUSH_MIN together) wait for more, as tiny
        // frames always did; a third one past it goes through on the pause.
        let small = || Bytes::from(vec![b'x'; FLUSH_MIN / 4]);
        let (mut body, _report) = paused(vec![small(), small()]);
        assert_eq!(pump(&mut body, &mut Vec::new()), Pumped::Pending);
        let (mut body, _report) = paused(vec![small(), small(), small(), small()]);
        assert_eq!(pump(&mut body, &mut Vec::new()), Pumped::Failed);
    }

    #[tokio::test]
    async fn tiny_frames_are_coalesced_before_the_checks() {
        let data = jpeg();
        let taken = Arc::new(AtomicUsize::new(0));
        let frames = Frames {
            left: data.chunks(1).map(Bytes::copy_from_slice).collect(),
            taken: taken.clone(),
            pause: false,
        };
        let (mut body, mut report) = InspectBody::new(
            frames,
            Inspector::new(MediaType::Jpeg, &Limits::default()),
            DigestAlgorithm::Sha256,
            u64::MAX,
            None,
            timing(),
        );
        let mut chunks = Vec::new();
        while let Some(chunk) = body.next_cleared().await.unwrap() {
            chunks.push(chunk);
        }
        assert_eq!(
            taken.load(Ordering::SeqCst),
            data.len(),
            "one frame per byte"
        );
        let forwarded: Vec<u8> = chunks.iter().flatten().copied().collect();
        assert!(forwarded == data, "every byte, in order");
        // Each chunk that left the adapter (and went through the inspector,
        // the digest and the spool) is a coalesced one: at most one per
        // COALESCE bytes, plus the splits of the held-back tail.
        assert!(
            chunks.len() <= data.len() / COALESCE + 3,
            "{} chunks for {} bytes",
            chunks.len(),
            data.len()
        );
        let o = report.now().expect("reported on acceptance");
        assert!(o.facts.accepted && o.facts.received == data.len() as u64);
        assert!(
            o.facts
                .repr_digest
                .as_deref()
                .unwrap()
                .starts_with("sha-256=:")
        );
        assert!(o.failure.is_none());
    }

    #[test]
    fn the_rate_window_counts_the_last_ten_full_seconds() {
        let start = Instant::now();
        let at = |s: f64| start + Duration::from_secs_f64(s);
        let grace = Duration::from_secs(10);
        let mut w = RateWindow::new(start);
        // 40 KiB in the first second: enough for the first window...
        w.add(at(0.5), 40 * 1024);
        assert!(!w.too_slow(at(9.9), grace, 1024), "inside the grace");
        assert!(
            !w.too_slow(at(10.5), grace, 1024),
            "window [0, 10) has 40 KiB"
        );
        // ...but not for the window that no longer holds second 0, whatever
        // the average since the start says (40 KiB / 11 s > 1 KiB/s).
        w.add(at(10.6), 100);
        assert!(w.too_slow(at(11.2), grace, 1024));
        // A steady 1.1 KiB/s passes every window.
        let mut w = RateWindow::new(start);
        for s in 0..40 {
            w.add(at(f64::from(s) + 0.1), 1126);
            assert!(
                !w.too_slow(at(f64::from(s) + 0.2), grace, 1024),
                "second {s}"
            );
        }
        // A gap longer than the window empties it.
        assert!(w.too_slow(at(60.0), grace, 1024));
    }

    #[tokio::test]
    async fn the_next_frame_waits_for_the_scanner_and_the_tail_for_its_verdict() {
        let data = jpeg();
        let (mut body, mut report, taken, mut rx, verdict) = scanned_body(&data);
        let (mut out, mut scanned) = (Vec::new(), Vec::new());
        // The scanner takes nothing: the channel fills, one frame waits, and
        // no further client frame is read.
        assert_eq!(pump(&mut body, &mut out), Pumped::Pending);
        assert_eq!(taken.load(Ordering::SeqCst), CHANNEL_CHUNKS + 1);
        assert_eq!(pump(&mut body, &mut out), Pumped::Pending);
        assert_eq!(taken.load(Ordering::SeqCst), CHANNEL_CHUNKS + 1);
        // The scanner keeps up: the body streams to its end, and everything
        // but the last frame (the length is declared, so the chunks before
        // it need no hold-back) goes on before clamd's verdict.
        to_verdict(&mut body, &mut rx, data.len(), &mut out, &mut scanned);
        assert!(scanned == data, "clamd got every byte, in order");
        assert_eq!(out.len(), data.len() - last_frame(&data));
        assert!(rx.recv().await.is_none(), "the stream to clamd was ended");
        assert!(
            report.now().is_none(),
            "nothing reported before the verdict"
        );
        // Clean: the tail goes on.
        verdict.send(Ok(Reply::Clean)).unwrap();
        assert_eq!(pump(&mut body, &mut out), Pumped::End);
        assert!(out == data, "the whole body went on, in order");
        assert!(report.now().unwrap().facts.accepted);
    }

    /// Small frames then a large one: the large one joins what is coalesced
    /// (one chunk per step: the scanner takes one at a time), and clamd gets
    /// every byte in order.
    #[tokio::test]
    async fn a_large_frame_after_small_ones_reaches_the_scanner_whole() {
        let data = jpeg();
        let (mut body, mut report, _taken, mut rx, verdict) =
            scanned_body_in(&data, &[4 * 1024, 4 * 1024, 40 * 1024], true);
        let (mut out, mut scanned) = (Vec::new(), Vec::new());
        to_verdict(&mut body, &mut rx, data.len(), &mut out, &mut scanned);
        assert!(scanned == data, "clamd got every byte, in order");
        verdict.send(Ok(Reply::Clean)).unwrap();
        assert_eq!(pump(&mut body, &mut out), Pumped::End);
        assert!(out == data, "the whole body went on, in order");
        assert!(report.now().unwrap().facts.accepted);
    }

    /// The length of the last `FRAME`-sized frame of `data`.
    fn last_frame(data: &[u8]) -> usize {
        match data.len() % FRAME {
            0 => FRAME,
            n => n,
        }
    }

    /// With a declared length, a checked chunk goes on at once unless it is
    /// the last one; without one (chunked), the last `HOLD_BACK` bytes seen
    /// so far wait, since any chunk may be the last. Either way the client's
    /// last byte never goes on before the verdict.
    #[tokio::test]
    async fn only_the_last_chunk_waits_when_the_length_is_declared() {
        let data = jpeg();
        assert!(data.len() > HOLD_BACK + 2 * FRAME, "several frames");
        for declared in [true, false] {
            let (mut body, mut report, taken, mut rx, verdict) =
                scanned_body_in(&data, &[FRAME], declared);
            let (mut out, mut scanned) = (Vec::new(), Vec::new());
            // Step by step (the scanner takes what it was sent between
            // steps): what went on, against what was read.
            for _ in 0..data.len() {
                drain(&mut rx, &mut scanned);
                if scanned.len() == data.len() {
                    break;
                }
                assert_eq!(pump(&mut body, &mut out), Pumped::Pending);
                let read = (taken.load(Ordering::SeqCst) * FRAME).min(data.len());
                if declared {
                    assert!(
                        out.len() + FRAME >= read,
                        "at most the frame in hand waits: {} of {read} went on",
                        out.len()
                    );
                } else {
                    assert!(
                        out.len() + HOLD_BACK <= read,
                        "the last HOLD_BACK bytes wait: {} of {read} went on",
                        out.len()
                    );
                }
            }
            to_verdict(&mut body, &mut rx, data.len(), &mut out, &mut scanned);
            assert!(report.now().is_none(), "no verdict yet");
            assert!(out.len() < data.len(), "the tail waits for the verdict");
            verdict.send(Ok(Reply::Clean)).unwrap();
            assert_eq!(pump(&mut body, &mut out), Pumped::End);
            assert!(out == data, "the whole body went on, in order");
        }
    }

    #[tokio::test]
    async fn a_detection_or_an_early_scanner_failure_aborts_the_body() {
        let data = jpeg();
        let (mut body, mut report, _taken, mut rx, verdict) = scanned_body(&data);
        let (mut out, mut scanned) = (Vec::new(), Vec::new());
        to_verdict(&mut body, &mut rx, data.len(), &mut out, &mut scanned);
        verdict.send(Ok(Reply::Found("Eicar-Test".into()))).unwrap();
        assert!(report.now().is_none());
        assert_eq!(pump(&mut body, &mut out), Pumped::Failed);
        assert_eq!(
            out.len(),
            data.len() - last_frame(&data),
            "the tail never went on"
        );
        let failure = report.now().and_then(|o| o.failure.clone());
        assert_eq!(failure, Some(BodyFailure::Malware));

        // The scan task dies mid-stream (clamd went away): fail closed at once.
        let (mut body, mut report, taken, rx, verdict) = scanned_body(&data);
        assert_eq!(pump(&mut body, &mut out), Pumped::Pending);
        drop(rx);
        verdict
            .send(Ok(Reply::Error("INSTREAM size limit exceeded.".into())))
            .unwrap();
        assert_eq!(pump(&mut body, &mut Vec::new()), Pumped::Failed);
        assert_eq!(taken.load(Ordering::SeqCst), CHANNEL_CHUNKS + 1);
        let failure = report.now().and_then(|o| o.failure.clone());
        assert_eq!(failure, Some(BodyFailure::ScanUnavailable));
    }
}
