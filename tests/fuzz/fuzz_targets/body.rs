#![no_main]
//! The body adapter (`src/body.rs`, `InspectBody`): what it forwards toward
//! Concur while it inspects a client's body.
//!
//! The input, after an 8-byte control block (a PRNG seed, and the bits
//! below), is the body. The client's body ([`Client`]) hands it over in
//! frames of random sizes (1–64 bytes, 16–70 KiB, or the rest), with pauses
//! (`Pending`) and empty frames between them, and perhaps trailers at the
//! end. Bit 1 of byte 0: the client stops after a random prefix, with an
//! error, or (bit 2 too) with a plain end. Bit 0: the whole body's length
//! was declared (`Content-Length`). Byte 1 modulo 3: the declared media type
//! (JPEG, PNG, PDF); bit 2 of byte 1: a limit on the body's size at most its
//! length; bit 3: the digest is SHA-256. Bits 4–5 of byte 0 (modulo 3): how
//! the proxy reads the adapter: `poll_frame` alone, `prime` then
//! `poll_frame` (an upload with a declared length), or `prime` then
//! `next_cleared` (a spooled one). Byte 2: malware scanning, with a
//! scanner driven by hand (`Scanner::detached`): it takes what the adapter
//! hands it whenever the adapter waits, and answers clean, found, error or
//! not at all (bits 0-3), at the end or (bit 4) after a random number of
//! chunks. The target asserts:
//! - what is forwarded is always a prefix of the body;
//! - until the body is accepted: with a declared length, the forwarded
//!   bytes stay short of it; without one, the last `HOLD_BACK` bytes
//!   handed over (all, if fewer) are not forwarded;
//! - the body is accepted (the adapter ends, all of it forwarded) exactly
//!   when the client ended it without an error, with all the declared
//!   length if there was one, not empty, within the limit, and the
//!   inspector's one-shot verdict on the bytes sent is to accept;
//! - otherwise the adapter ends with an error and its report says why: a
//!   rejection is the one-shot verdict's on the bytes sent (an inspector
//!   that rejects a prefix rejects every longer body the same way, since
//!   any chunking gives the one-shot verdict); too large only past the
//!   limit; empty only when nothing was sent; a client abort only when the
//!   client failed or fell short of its declared length;
//! - the report counts the bytes received, and the digest of an accepted
//!   body does not depend on how it was framed;
//! - with scanning, the scanner gets a prefix of the body; a body the
//!   checks accept fails exactly when clamd finds malware or (with
//!   `on_error = "reject"`) fails, as `malware`/`scan_unavailable`; and a
//!   body accepted on a clean verdict reached the scanner whole before
//!   anything past the hold-back was released (the hold-back checks above
//!   hold until the verdict);
//! - nothing panics or hangs.

use std::cell::Cell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError};

use bytes::Bytes;
use concur_gateway::body::{BodyFailure, BodyTiming, HOLD_BACK, InspectBody};
use concur_gateway::clamav::{Reply, Scanner, VerdictSender};
use concur_gateway::config::{ClamdAddr, DigestAlgorithm, MinBodyRate, OnScanError, ScanConfig};
use concur_gateway::inspect::{Inspector, Limits, MediaType, inspect_all};
use concur_gateway::metrics::Metrics;
use hyper::body::{Body, Frame};
use libfuzzer_sys::fuzz_target;

#[path = "rng.rs"]
mod rng;

/// What the client's body does next.
#[derive(Debug)]
enum Event {
    Data(Bytes),
    Empty,
    Pause,
    Trailers,
    Error,
}

/// The client's body: its events, then the end; and how many body bytes
/// it handed over so far.
struct Client(VecDeque<Event>, Rc<Cell<usize>>);

impl Body for Client {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(match self.0.pop_front() {
            None => None,
            Some(Event::Data(b)) => {
                self.1.set(self.1.get() + b.len());
                Some(Ok(Frame::data(b)))
            }
            Some(Event::Empty) => Some(Ok(Frame::data(Bytes::new()))),
            // Nothing this time; the driver polls again.
            Some(Event::Pause) => return Poll::Pending,
            Some(Event::Trailers) => Some(Ok(Frame::trailers(hyper::HeaderMap::new()))),
            Some(Event::Error) => Some(Err(std::io::Error::other("client went away"))),
        })
    }
}

/// How the proxy reads the adapter.
#[derive(Debug, Clone, Copy)]
enum Read {
    Frames,
    PrimeThenFrames,
    PrimeThenCleared,
}

/// clamd's answer, in a run with malware scanning.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Clean,
    Found,
    Error,
    /// The scan task ends without a verdict.
    Gone,
}

/// How the scanner behaves.
#[derive(Debug, Clone, Copy)]
struct ScanPlan {
    /// `scan.on_error = "allow"`.
    allow: bool,
    answer: Answer,
    /// The scan ends (with its answer, never `Clean`) once it took more
    /// than this many chunks, before the body's end.
    early: Option<usize>,
}

impl ScanPlan {
    /// The adapter's decision: `None` for clean (or allowed unscanned),
    /// else the failure it must end with.
    fn failure(&self) -> Option<BodyFailure> {
        match self.answer {
            Answer::Clean => None,
            Answer::Found => Some(BodyFailure::Malware),
            Answer::Error | Answer::Gone if self.allow => None,
            Answer::Error | Answer::Gone => Some(BodyFailure::ScanUnavailable),
        }
    }
}

/// The scanner's end of a session: the chunks it was handed, and its
/// verdict to give.
struct Far {
    rx: Option<mpsc::Receiver<Bytes>>,
    verdict: Option<VerdictSender>,
    scanned: Vec<u8>,
    chunks: usize,
    plan: ScanPlan,
}

impl Far {
    /// Takes what the adapter handed over; answers once the stream to it
    /// ended (or, `early`, once it took enough).
    fn step(&mut self) {
        let Some(rx) = self.rx.as_mut() else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(chunk) => {
                    self.scanned.extend_from_slice(&chunk);
                    self.chunks += 1;
                    if self.plan.early.is_some_and(|k| self.chunks > k) {
                        break;
                    }
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if let Some(tx) = self.verdict.take() {
            let reply = match self.plan.answer {
                Answer::Clean => Reply::Clean,
                Answer::Found => Reply::Found("Fuzz-Test".into()),
                Answer::Error => Reply::Error("fuzz".into()),
                Answer::Gone => return drop(tx),
            };
            let _ = tx.send(Ok(reply));
        }
        self.rx = None;
    }
}

/// What came of one run.
#[derive(Debug)]
struct Run {
    forwarded: Vec<u8>,
    /// The adapter ended (accepted) rather than failing.
    ended: bool,
    failure: Option<BodyFailure>,
    received: u64,
    accepted: bool,
    digest: Option<String>,
    /// What reached the scanner.
    scanned: Option<Vec<u8>>,
}

fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn run(
    events: VecDeque<Event>,
    media: MediaType,
    limits: &Limits,
    (max, declared, digest): (u64, Option<u64>, DigestAlgorithm),
    read: Read,
    body: &[u8],
    scan: Option<ScanPlan>,
) -> Run {
    let timing = BodyTiming {
        idle: Duration::from_secs(3600),
        min_rate: MinBodyRate {
            bytes_per_s: 0,
            grace: Duration::ZERO,
        },
        deadline: Duration::from_secs(3600),
    };
    let handed = Rc::new(Cell::new(0));
    let mut far = None;
    let session = scan.map(|plan| {
        let scanner = Scanner::new(
            &ScanConfig {
                clamd: ClamdAddr::Tcp("127.0.0.1:9".into()),
                timeout: Duration::from_secs(1),
                on_error: if plan.allow {
                    OnScanError::Allow
                } else {
                    OnScanError::Reject
                },
                max_concurrent: 1,
                ping_interval: Duration::from_secs(10),
            },
            &Metrics::new(),
        );
        let (session, rx, verdict) = scanner.detached();
        far = Some(Far {
            rx: Some(rx),
            verdict: Some(verdict),
            scanned: Vec::new(),
            chunks: 0,
            plan,
        });
        session
    });
    let (adapter, mut report) = InspectBody::new(
        Client(events, handed.clone()),
        Inspector::new(media, limits),
        digest,
        max,
        declared,
        timing,
    );
    let mut adapter = match session {
        Some(session) => adapter.with_scan(session),
        None => adapter,
    };
    // Whenever the adapter waits, the scanner takes what it was handed
    // (the adapter's backpressure) and answers at the end.
    let mut waited = || {
        if let Some(far) = far.as_mut() {
            far.step();
        }
    };
    let mut forwarded = Vec::new();
    let check_held = |forwarded: &[u8], accepted: bool| {
        assert_eq!(
            forwarded,
            &body[..forwarded.len()],
            "forwarded bytes are not a prefix of the body"
        );
        if accepted {
            return;
        }
        match declared {
            Some(n) => assert!(
                (forwarded.len() as u64) < n.max(1),
                "all of a declared body forwarded before the verdict"
            ),
            None => assert!(
                forwarded.len() <= handed.get().saturating_sub(HOLD_BACK),
                "{} bytes forwarded of {} handed over before the verdict",
                forwarded.len(),
                handed.get()
            ),
        }
    };
    let mut primed_failed = false;
    if !matches!(read, Read::Frames) {
        let mut prime = std::pin::pin!(adapter.prime());
        let primed = loop {
            if let Poll::Ready(r) = poll_once(prime.as_mut()) {
                break r;
            }
            waited();
        };
        primed_failed = primed.is_err();
    }
    let ended = if primed_failed {
        false
    } else if matches!(read, Read::PrimeThenCleared) {
        loop {
            let mut next = std::pin::pin!(adapter.next_cleared());
            let got = loop {
                if let Poll::Ready(r) = poll_once(next.as_mut()) {
                    break r;
                }
                waited();
            };
            match got {
                Ok(Some(chunk)) => {
                    forwarded.extend_from_slice(&chunk);
                    let accepted = report.now().is_some_and(|o| o.facts.accepted);
                    check_held(&forwarded, accepted);
                }
                Ok(None) => break true,
                Err(_) => break false,
            }
        }
    } else {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match Pin::new(&mut adapter).poll_frame(&mut cx) {
                Poll::Pending => waited(),
                Poll::Ready(None) => break true,
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().expect("only data frames are forwarded");
                    forwarded.extend_from_slice(&data);
                    let accepted = report.now().is_some_and(|o| o.facts.accepted);
                    check_held(&forwarded, accepted);
                }
                Poll::Ready(Some(Err(_))) => break false,
            }
        }
    };
    let outcome = report
        .now()
        .cloned()
        .expect("a report once the adapter ends or fails");
    drop(adapter);
    Run {
        scanned: far.map(|f| f.scanned),
        forwarded,
        ended,
        failure: outcome.failure,
        received: outcome.facts.received,
        accepted: outcome.facts.accepted,
        digest: outcome.facts.repr_digest,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut seed = u64::from_le_bytes(*ctl) | 1;
    let mut next = move || rng::next(&mut seed);
    let declared_len = ctl[0] & 1 == 1;
    let cut = ctl[0] & 2 == 2;
    let cut_plain_end = ctl[0] & 4 == 4;
    let read = match (ctl[0] >> 4) % 3 {
        0 => Read::Frames,
        1 => Read::PrimeThenFrames,
        _ => Read::PrimeThenCleared,
    };
    let media = match ctl[1] % 3 {
        0 => MediaType::Jpeg,
        1 => MediaType::Png,
        _ => MediaType::Pdf,
    };
    let max = if ctl[1] & 4 == 4 {
        next() % (body.len() as u64 + 1)
    } else {
        u64::MAX
    };
    let digest = if ctl[1] & 8 == 8 {
        DigestAlgorithm::Sha256
    } else {
        DigestAlgorithm::None
    };
    // Byte 2: malware scanning. Bit 0: on; bit 1: `on_error = "allow"`;
    // bits 2-3: clamd's answer (clean, found, error, none at all); bit 4:
    // the scan ends early, after a random number of chunks (then never
    // clean: an answer before the end is not a verdict on the body).
    let scan = (ctl[2] & 1 == 1).then(|| {
        let early = (ctl[2] & 16 == 16).then(|| next() as usize % 8);
        let answer = match (ctl[2] >> 2) % 4 {
            0 if early.is_some() => Answer::Gone,
            0 => Answer::Clean,
            1 => Answer::Found,
            2 => Answer::Error,
            _ => Answer::Gone,
        };
        ScanPlan {
            allow: ctl[2] & 2 == 2,
            answer,
            early,
        }
    });
    let limits = Limits::default();
    // The client sends `sent` bytes, then ends (or fails).
    let sent = if cut {
        next() as usize % (body.len() + 1)
    } else {
        body.len()
    };
    let mut events = VecDeque::new();
    let mut at = 0;
    while at < sent {
        match next() % 8 {
            0 => events.push_back(Event::Pause),
            1 => events.push_back(Event::Empty),
            _ => {}
        }
        let len = match next() % 4 {
            0 | 1 => 1 + next() as usize % 64,
            2 => 16 * 1024 + next() as usize % (54 * 1024),
            _ => sent - at,
        }
        .min(sent - at);
        events.push_back(Event::Data(Bytes::copy_from_slice(&body[at..at + len])));
        at += len;
    }
    if next() % 4 == 0 {
        events.push_back(Event::Pause);
    }
    let aborted = cut && !cut_plain_end;
    if aborted {
        events.push_back(Event::Error);
    } else if next() % 4 == 0 {
        events.push_back(Event::Trailers);
    }
    let declared = declared_len.then_some(body.len() as u64);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let got = run(
        events,
        media,
        &limits,
        (max, declared, digest),
        read,
        body,
        scan,
    );

    // What should come of it.
    let sent_bytes = &body[..sent];
    let verdict = inspect_all(media, &limits, sent_bytes, sent.max(1));
    let short = declared.is_some() && sent < body.len();
    let fine = !aborted && !short && sent > 0 && sent as u64 <= max && verdict.is_ok();
    let scan_failure = scan.and_then(|plan| plan.failure());
    let accept = fine && scan_failure.is_none();
    assert_eq!(
        (got.ended, got.accepted),
        (accept, accept),
        "{media:?} {read:?} {scan:?} sent {sent} of {}, max {max}: {:?}",
        body.len(),
        got.failure
    );
    assert!(got.received <= sent as u64);
    if let Some(scanned) = &got.scanned {
        assert_eq!(
            scanned[..],
            body[..scanned.len()],
            "the scanner got other bytes"
        );
        // A clean verdict is one on the whole body.
        if accept && scan.is_some_and(|plan| plan.answer == Answer::Clean) {
            assert_eq!(scanned[..], *sent_bytes, "accepted before clamd saw it all");
        }
    }
    if accept {
        assert_eq!(
            got.forwarded, sent_bytes,
            "an accepted body forwarded whole"
        );
        assert_eq!(got.failure, None);
        assert_eq!(got.received, sent as u64);
        assert_eq!(got.digest.is_some(), digest == DigestAlgorithm::Sha256);
        // The digest does not depend on the framing: the body in one frame.
        if digest == DigestAlgorithm::Sha256 {
            let one = VecDeque::from([Event::Data(Bytes::copy_from_slice(sent_bytes))]);
            let limits_max_declared = (max, declared, digest);
            let whole = run(
                one,
                media,
                &limits,
                limits_max_declared,
                Read::Frames,
                body,
                None,
            );
            assert_eq!(got.digest, whole.digest);
        }
    } else {
        let failure = got.failure.clone().expect("a failed body says why");
        if fine {
            // Only the scan could fail it, and it says so.
            assert_eq!(Some(&failure), scan_failure.as_ref());
        }
        match &failure {
            BodyFailure::Rejected(r) => assert_eq!(
                Some(r.code),
                verdict.as_ref().err().map(|e| e.code),
                "a rejection other than the one-shot verdict on the bytes sent"
            ),
            BodyFailure::TooLarge { limit } => {
                assert_eq!(*limit, max);
                assert!(sent as u64 > max);
            }
            BodyFailure::ClientAborted(_) => assert!(aborted || short),
            BodyFailure::Empty => assert_eq!(sent, 0),
            BodyFailure::Malware | BodyFailure::ScanUnavailable => {
                assert_eq!(Some(&failure), scan_failure.as_ref())
            }
            other => panic!("unexpected failure {other:?}"),
        }
        // Never complete upstream: with a declared length, short of it.
        if let Some(n) = declared {
            assert!((got.forwarded.len() as u64) < n.max(1));
        }
    }
});
