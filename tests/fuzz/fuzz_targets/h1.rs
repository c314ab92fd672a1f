#![no_main]
//! The HTTP/1.1 head watch (`src/head_watch.rs`) against hyper itself.
//!
//! The input, after an 8-byte control block (a PRNG seed; bit 0 of byte 0
//! picks pieces of 1–16 bytes rather than 1–4096), is what a client sends on
//! one connection. It is served three times by a real hyper HTTP/1.1 server
//! with the gateway's settings (`server::READ_BUF_BYTES`,
//! `server::HYPER_MAX_HEADERS`), whose service reads every body to its end:
//!
//! 1. through the watch, the bytes arriving in one read;
//! 2. through the watch, the bytes arriving in random pieces;
//! 3. hyper alone, in one read.
//!
//! Behind the watch (1 and 2) the service refuses what the gateway's framing
//! check refuses (`stack.rs`: the watch's marks, then `framing::check`): it
//! answers at once with `Connection: close`, as the gateway does. hyper alone
//! (3) serves every request it parses. The target asserts that
//! - the watch never loses track of where hyper's messages start
//!   (`LostTrack`: the watch and hyper disagree on the framing);
//! - the pieces change nothing: 1 and 2 see the same requests, bodies and
//!   marks, except for what the module docs leave to hyper (a malformed or
//!   refused field line longer than `MAX_HELD` that is not whole in one
//!   read: the same request is refused, by hyper itself or the framing
//!   check, and nothing after it is served);
//! - the watch changes nothing hyper would have served: up to the first
//!   refused request, 1 and 3 see the same requests (method, target, fields,
//!   body), and with none refused, the same requests all through;
//! - the watch only takes over refusals that would have been made anyway: a
//!   request marked malformed or invalid-length is one whose head hyper
//!   alone refuses; marked
//!   refused-coding or too large, one hyper alone refuses or the framing
//!   check refuses as hyper alone parsed it; refused by the framing check
//!   alone, one hyper alone parsed the same and the check refuses;
//! - nothing panics or hangs.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use concur_gateway::framing;
use concur_gateway::head_watch::{
    FragmentTarget, HeadNotes, HeadSize, HeadTooLarge, HeadWatch, InvalidLength, LostTrack,
    MAX_HELD, MalformedField, RefusedCoding,
};
use concur_gateway::server::{HYPER_MAX_HEADERS, READ_BUF_BYTES};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;

#[path = "net.rs"]
mod net;
#[path = "rng.rs"]
mod rng;
use tokio::io::{AsyncRead, ReadBuf};

/// What the service saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    marks: Marks,
    /// The framing check's refusal of the request as hyper parsed it (the
    /// head's size as the watch measured it, or estimated from the fields).
    framing: Option<&'static str>,
    /// Answered at once and the connection closed (behind the watch only).
    refused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// Not read to its end: a refused request, one whose body the client did
    /// not send whole, or hyper ended the connection first.
    Unread,
    /// Read to its end.
    Read(Vec<u8>),
    /// hyper failed it.
    Failed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    lost: bool,
    malformed: bool,
    too_large: bool,
    refused_coding: bool,
    invalid_length: bool,
    fragment: bool,
}

impl Marks {
    /// The framing check answers these and closes the connection.
    fn refused(&self) -> bool {
        self.lost || self.malformed || self.too_large || self.refused_coding || self.invalid_length
    }
}

/// A client connection: `data` in pieces drawn from `seed` (all at once
/// without one), then nothing more (`Pending`: the client neither sends nor
/// closes, so hyper's handling of a half-closed connection, which depends on
/// when it reads the end, plays no part); whatever is written is dropped.
struct Wire<'a> {
    rest: &'a [u8],
    seed: Option<u64>,
    max_piece: u64,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rest.is_empty() {
            return Poll::Pending;
        }
        let mut n = self.rest.len().min(buf.remaining());
        if let Some(seed) = self.seed.as_mut() {
            n = n.min((rng::next(seed) % self.max_piece) as usize + 1);
        }
        let (piece, rest) = self.rest.split_at(n);
        buf.put_slice(piece);
        self.rest = rest;
        Poll::Ready(Ok(()))
    }
}

net::drop_writes!(Wire<'_>);

thread_local! {
    /// Only for hyper's timer to register with: the connection is polled by
    /// hand (`net::until_quiet`).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
}

/// Serves `wire` on one connection, through the watch when `notes` is given.
fn serve(wire: Wire<'_>, notes: Option<Arc<HeadNotes>>) -> Vec<Seen> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let service = {
        let seen = seen.clone();
        let notes = notes.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let seen = seen.clone();
            let watch = notes.is_some();
            if let Some(notes) = &notes {
                notes.apply(&mut req);
            }
            async move {
                let ext = req.extensions();
                let marks = Marks {
                    lost: ext.get::<LostTrack>().is_some(),
                    malformed: ext.get::<MalformedField>().is_some(),
                    too_large: ext.get::<HeadTooLarge>().is_some(),
                    refused_coding: ext.get::<RefusedCoding>().is_some(),
                    invalid_length: ext.get::<InvalidLength>().is_some(),
                    fragment: ext.get::<FragmentTarget>().is_some(),
                };
                let measured = ext.get::<HeadSize>().map(|s| s.0);
                let (parts, body) = req.into_parts();
                let framing = framing::check(
                    &parts.method,
                    &parts.uri,
                    parts.version,
                    &parts.headers,
                    measured,
                )
                .err()
                .map(|e| e.code());
                // Behind the watch, as the gateway: a refused request is
                // answered at once and the connection closed. hyper alone
                // serves every request it parses.
                let refused = watch && (marks.refused() || framing.is_some());
                // Recorded before the body is read: hyper may end the
                // connection (and drop this future) while it is.
                let at = {
                    let mut seen = seen.borrow_mut();
                    seen.push(Seen {
                        method: parts.method.to_string(),
                        uri: parts.uri.to_string(),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                            .collect(),
                        body: Body::Unread,
                        marks,
                        framing,
                        refused,
                    });
                    seen.len() - 1
                };
                if !refused {
                    let body = match body.collect().await {
                        Ok(b) => Body::Read(b.to_bytes().to_vec()),
                        Err(_) => Body::Failed,
                    };
                    seen.borrow_mut()[at].body = body;
                }
                let mut response = Response::new(Empty::<Bytes>::new());
                if refused {
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(READ_BUF_BYTES)
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true);
    let conn: Pin<Box<dyn Future<Output = Result<(), hyper::Error>>>> = match notes {
        Some(notes) => {
            Box::pin(builder.serve_connection(TokioIo::new(HeadWatch::new(wire, notes)), service))
        }
        None => Box::pin(builder.serve_connection(TokioIo::new(wire), service)),
    };
    RUNTIME.with(|rt| {
        // hyper's timer needs a runtime to register with; none of its
        // timeouts is reached.
        let _runtime = rt.enter();
        let mut conn = conn;
        net::until_quiet(|cx| conn.as_mut().poll(cx).is_ready());
    });
    seen.take()
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, wire)) = data.split_first_chunk::<8>() else {
        return;
    };
    let seed = u64::from_le_bytes(*ctl) | 1;
    let max_piece = if ctl[0] & 1 == 1 { 16 } else { 4096 };
    let whole = || Wire {
        rest: wire,
        seed: None,
        max_piece,
    };
    let watched = serve(whole(), Some(Arc::default()));
    assert!(
        watched.iter().all(|s| !s.marks.lost),
        "the watch lost track: {watched:#?}"
    );
    let pieces = serve(
        Wire {
            seed: Some(seed),
            ..whole()
        },
        Some(Arc::default()),
    );
    let plain = serve(whole(), None);
    if pieces != watched {
        // A field line longer than `MAX_HELD` that is not whole in one read
        // (in pieces, or past the 8 KiB hyper first reads) is not held back
        // to be judged whole (module docs): a malformed one, or a refused
        // coding, then reaches hyper as it was sent. The request is refused
        // all the same, by hyper (its own 400, which hyper alone gives too)
        // or by the framing check, and nothing after it is served.
        let long_line = wire.split(|&b| b == b'\n').any(|l| l.len() > MAX_HELD);
        let k = pieces
            .iter()
            .zip(&watched)
            .take_while(|(p, w)| p == w)
            .count();
        let refused_at_k = |run: &[Seen]| {
            run.len() == k && plain.len() == k || run.len() == k + 1 && run[k].refused
        };
        assert!(
            long_line && refused_at_k(&watched) && refused_at_k(&pieces),
            "pieces changed what was served: one read {watched:#?}\npieces {pieces:#?}"
        );
    }
    let head = |s: &Seen| (s.method.clone(), s.uri.clone(), s.headers.clone());
    let k = watched
        .iter()
        .position(|s| s.refused)
        .unwrap_or(watched.len());
    assert!(
        plain.len() >= k
            && watched[..k]
                .iter()
                .zip(&plain)
                .all(|(w, p)| head(w) == head(p) && w.body == p.body),
        "the watch changed what hyper served: watched {watched:#?}\nplain {plain:#?}"
    );
    let Some(refused) = watched.get(k) else {
        // hyper behind the watch served no more than hyper alone. (A
        // `Content-Length` hyper skipped after a refused `Transfer-Encoding`
        // line, which it reads once the watch renamed that line, is renamed
        // too when hyper would refuse it: the request is marked.)
        assert!(plain.len() == k, "hyper alone served more: {plain:#?}");
        return;
    };
    // The request the gateway refused: hyper alone refused its head too, or
    // parsed it and the framing check refuses it. The watch only takes over
    // refusals that would have been made anyway.
    let marks = refused.marks;
    let agreed = match plain.get(k) {
        // hyper alone refused the head: for what the watch marked.
        None => marks.malformed || marks.refused_coding || marks.too_large || marks.invalid_length,
        // hyper alone parsed it, and the framing check refuses it (with its
        // own code when it finds something first, a missing `Host` say): a
        // refused coding hyper reads past (it reads the last line only), a
        // head over the gateway's limits but not hyper's, or a head the
        // watch left as it was.
        Some(theirs) => {
            // (A `Content-Length` that hyper alone skipped, after a refused
            // `Transfer-Encoding` line it read, is judged behind the watch,
            // which renamed that line: the refused coding answers first.)
            !marks.malformed
                && (!marks.invalid_length || marks.refused_coding)
                && theirs.framing.is_some()
                && (marks.refused_coding || marks.too_large || head(theirs) == head(refused))
        }
    };
    assert!(
        agreed,
        "the watch refused a head hyper alone served: watched {watched:#?}\nplain {plain:#?}"
    );
});
