//! Request path, step 1½ (see `ARCHITECTURE.md`): what hyper's HTTP/1.1
//! parser loses or refuses before the stack could answer it.
//!
//! - **A `#` in the request-target.** A request-target never holds a fragment
//!   (RFC 9112 §3.2), but hyper's parser takes one anyway and the `http`
//!   crate then drops everything from the `#` on:
//!   `POST /api/image/v1.0/report/a#b` reached the router as
//!   `/api/image/v1.0/report/a`, and the image went to report `a`. Nothing of
//!   the cut is left in the parsed request, so it is seen here, on the bytes.
//! - **A `Transfer-Encoding` whose last coding is not `chunked`**
//!   (`Transfer-Encoding: gzip`). hyper refuses the head itself with a bare
//!   `400` (RFC 9112 §6.3: the body's length cannot be known), while the
//!   contract answers any coding other than `chunked` with `501
//!   not_implemented`, a problem body and an `X-Request-Id`. So such a field
//!   line is renamed on its way to hyper, to [`RENAMED`] (the same length:
//!   only those 17 bytes change), and noted; the service puts the field back
//!   as sent and marks the request [`RefusedCoding`], and the framing check
//!   (`framing.rs`) answers `501` and closes the connection, whatever the
//!   value (`chunked,` included). hyper frames the renamed request by what
//!   is left (a `chunked` field, a `Content-Length`, or no body), which does
//!   not matter: nothing of it is read, nothing after it is served.
//! - **A field line RFC 9112 does not allow** (a control character or a
//!   bare CR in a value, no colon, white space before it, a line folded
//!   onto the one before), for which hyper refuses the head with a bare
//!   `400`: the line reaches hyper as `X…X:` of the same length (a field
//!   with no value that nothing reads, never a framing field), and the
//!   head is noted [`MalformedField`]; the framing check answers `400
//!   invalid_request` and closes the connection. A partial field line is
//!   held back from hyper until it ends (at most [`MAX_HELD`] bytes), so
//!   that it is judged whole.
//! - **A `Content-Length` hyper refuses** (not digits only, more than one
//!   value, two lines that differ: RFC 9112 §6.3, which hyper answers with a
//!   bare `400`): the name of each such line is turned into `X`s on its way
//!   to hyper (the same length, an unknown field), and the head is noted
//!   [`InvalidLength`]; the framing check answers `400 invalid_request` and
//!   closes the connection. Only lines hyper reads are judged: as it does, a
//!   `Content-Length` after a `Transfer-Encoding` hyper reads is left alone.
//! - **A head over the limits** (64 KiB, 100 fields), which hyper refuses
//!   with a bare `431`: it is cut short for hyper ([`Tracker::cut`]) and
//!   marked [`HeadTooLarge`]; the framing check answers `431`.
//!
//! [`HeadWatch`] wraps a client connection's socket. It follows the HTTP/1.1
//! messages in what hyper reads: it parses each request head (`httparse`, as
//! hyper does) and skips its body by hyper's own framing rules: its server's
//! choice between `Transfer-Encoding` and `Content-Length`, and its chunked
//! decoder's states byte for byte ([`Chunked`]), trailers included. So it
//! knows where the next head starts exactly where hyper does. Every head it
//! follows gets a note (its method and target, and what was changed or seen
//! in it), with the head's number on the connection, in the [`HeadNotes`] it
//! shares with the connection's service. The service numbers the requests it
//! is called with in the same order (HTTP/1.1 serves them one at a time, in
//! order) and applies the note to its request ([`HeadNotes::apply`]): a `#`
//! marks the request with [`FragmentTarget`] and routing refuses it (`400
//! invalid_id` when the `#` is in a target ID, else `400 invalid_request`).
//!
//! Every note is checked against the request hyper parsed (method, and the
//! target up to a `#`): should the watch and hyper ever disagree on where a
//! message starts, the request is marked [`LostTrack`] and refused (`400
//! invalid_request`, connection closed) rather than served with another
//! request's note, or with body bytes the watch took for a head.
//!
//! A field line is only judged and renamed whole: the watch holds back from
//! hyper a partial field line (at most [`MAX_HELD`] bytes) until its line
//! end arrives, so a head dripped byte by byte is treated as one sent in a
//! single write. A client that pipelines
//! more than [`MAX_PENDING`] heads ahead of the service is not read from
//! until the service catches up (hyper has them buffered).
//!
//! A connection that opens with the HTTP/2 preface is followed frame by
//! frame instead, for `#`s in `:path`s (`h2_watch.rs`). Where hyper itself
//! stops (a head or a chunked body it refuses: it then closes the
//! connection) the watch stops too, and requests from there on are not
//! checked. `CONNECT` is followed like any
//! request: the gateway never answers it with a 2xx, so hyper serves the
//! connection on as HTTP/1.1.
//!
//! Cost: one more pass per request head (a parse, and a search for each line
//! end), a note (two short strings) per request, and a counter per body
//! read; body bytes are skipped, not looked at (except chunk-size lines and
//! trailers).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::MAX_HEAD_BYTES;
use crate::h2_watch::{H2Tracker, PREFACE, Refused};

/// Header fields parsed per head (hyper's own default limit).
const MAX_FIELDS: usize = 100;
/// Heads the watch may be ahead of the service by: past this it reads no
/// more from the client until the service catches up (a client pipelining).
const MAX_PENDING: usize = 64;
/// The longest partial field line held back from hyper: one longer than
/// this is passed on as it comes (and hyper refuses it with its own `400`
/// when it is malformed, or a `Transfer-Encoding` whose last coding is not
/// `chunked`).
pub const MAX_HELD: usize = 1024;
/// The name a refused `Transfer-Encoding` field line is given on its way to
/// hyper: as long as `Transfer-Encoding`, so the head keeps its length.
pub const RENAMED: &[u8; 17] = b"X-Refused-Codings";
/// A `Transfer-Encoding` field line's start, as httparse takes it (no white
/// space before the colon).
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";
/// A `Content-Length` field line's start.
const CONTENT_LENGTH: &[u8; 15] = b"content-length:";

/// What a connection's watch and its service share.
#[derive(Debug)]
pub struct HeadNotes {
    /// A note on every head the watch followed, with its number on the
    /// connection, until the service is called with its request.
    pending: Mutex<VecDeque<(u64, Note)>>,
    /// How many requests the service has been called with.
    served: AtomicU64,
    /// From which head on the watch follows no more (`u64::MAX`: it does).
    off_from: AtomicU64,
    /// The watch, waiting for the service to catch up.
    reader: Mutex<Option<std::task::Waker>>,
}

/// What the watch saw of one request head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Note {
    /// The method and the request-target as sent: to check that the service
    /// is called with the request the note is about.
    method: String,
    target: String,
    /// The values of `Transfer-Encoding` field lines renamed to [`RENAMED`],
    /// as sent (white space around them trimmed).
    codings: Vec<Vec<u8>>,
    /// The head broke the limits and was cut short ([`Tracker::cut`]).
    too_large: bool,
    /// Field lines hyper would have refused the head for were made harmless
    /// on their way to it ([`make_harmless`]).
    malformed: bool,
    /// `Content-Length` lines hyper would have refused the head for were
    /// renamed on their way to it.
    invalid_length: bool,
    /// The head's length on the wire (empty lines before it included).
    len: usize,
}

/// A request head's length as it came on the wire (HTTP/1.1, from the head
/// watch): what the framing check holds to the 64 KiB limit, rather than an
/// estimate from the parsed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSize(pub usize);

/// Marks a request whose head broke the limits (more than
/// [`MAX_HEAD_BYTES`] or more header fields than hyper parses): what hyper
/// parsed is the head cut short. The framing check answers `431`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadTooLarge;

/// Marks a request that had `Transfer-Encoding` fields hyper would have
/// refused it for (they were renamed for hyper and are back in the request
/// as sent): what hyper read as its body is not what the client framed.
/// The framing check answers `501` and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedCoding;

/// Marks a request that had field lines HTTP/1.1 does not allow (a name
/// that is not a token, no colon, white space before the colon, a line
/// folded onto the one before, a control character or bare CR in a value):
/// hyper would have refused the head with a bare `400`, so each such line
/// was made harmless on its way to it ([`make_harmless`]: the same length,
/// a field named `X…X` with no value) and the framing check answers `400
/// invalid_request` and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedField;

/// Marks a request whose `Content-Length` hyper would have refused (not
/// digits only, or two that differ: hyper answers those with a bare `400`):
/// each such line reached hyper under another name, so what hyper read as
/// the body is not what the client framed. The framing check answers `400
/// invalid_request` and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLength;

/// Marks a request whose head is not the one the watch expected: the watch
/// and hyper no longer agree on where messages start on this connection.
/// That is never meant to happen; if it does, the framing check refuses the
/// request (`400 invalid_request`) and the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostTrack;

/// Marks a request whose request-target, as sent, had a `#`: the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentTarget(pub String);

impl FragmentTarget {
    /// The path as sent (up to a `?` that comes before the `#`, without the
    /// scheme and authority of an absolute-form target), `#` kept.
    pub fn path(&self) -> &str {
        let t = without_scheme_and_authority(&self.0);
        match (t.find('?'), t.find('#')) {
            (Some(q), Some(h)) if q < h => &t[..q],
            _ => t,
        }
    }
}

/// An absolute-form request-target's path and query (`http://gw/a?b` →
/// `/a?b`, `http://gw` → ``); any other target as it is.
///
/// A scheme is what the `http` crate, which parses the target for hyper,
/// takes for one (`Scheme2::parse`): in a target longer than three bytes,
/// the characters before the first `://` when all of them are letters,
/// digits, `+`, `-`, `.` or `~`, none at all included (`://gw/a`).
fn without_scheme_and_authority(target: &str) -> &str {
    let scheme = target
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b"+-.~".contains(&b)));
    match scheme {
        Some(end) if target.len() > 3 && target[end..].starts_with("://") => {
            let rest = &target[end + 3..];
            rest.find(['/', '?', '#']).map_or("", |i| &rest[i..])
        }
        _ => target,
    }
}

impl Default for HeadNotes {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            served: AtomicU64::new(0),
            off_from: AtomicU64::new(u64::MAX),
            reader: Mutex::default(),
        }
    }
}

impl HeadNotes {
    /// The service's turn: the next request on the connection. Checks it is
    /// the one the watch saw, and puts back what hyper's parse lost: a `#`
    /// target as a [`FragmentTarget`] extension, renamed `Transfer-Encoding`
    /// fields as they were sent (and [`RefusedCoding`]), a head cut short
    /// ([`HeadTooLarge`]).
    pub fn apply<B>(&self, req: &mut Request<B>) {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let note = self.take(n);
        if n >= self.off_from.load(Ordering::Acquire) {
            // The watch stopped before this head: nothing to check or add.
            return;
        }
        let Some(note) = note else {
            req.extensions_mut().insert(LostTrack);
            return;
        };
        let before_hash = note.target.split('#').next().unwrap_or_default();
        let sent = without_scheme_and_authority(before_hash);
        let parsed = req.uri().path_and_query().map_or("", |pq| pq.as_str());
        // hyper's URI gives an absolute-form target without a path the path
        // `/`; an authority-form one (`CONNECT`) has none.
        let same_target = parsed.is_empty()
            || sent == parsed
            || before_hash.ends_with(parsed)
            || (sent.is_empty() && parsed == "/");
        if note.method != req.method().as_str() || !same_target {
            req.extensions_mut().insert(LostTrack);
            return;
        }
        if note.malformed {
            req.extensions_mut().insert(MalformedField);
        }
        if note.invalid_length {
            req.extensions_mut().insert(InvalidLength);
        }
        if note.too_large {
            req.extensions_mut().insert(HeadTooLarge);
        } else {
            req.extensions_mut().insert(HeadSize(note.len));
        }
        if note.target.contains('#') {
            req.extensions_mut().insert(FragmentTarget(note.target));
        }
        if !note.codings.is_empty() {
            req.extensions_mut().insert(RefusedCoding);
            let headers = req.headers_mut();
            headers.remove(HeaderName::from_static("x-refused-codings"));
            for value in note.codings {
                // hyper took the line, so its value is a valid field value;
                // should it not be, the field still counts as a coding.
                let value = HeaderValue::from_bytes(&value)
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
                headers.append(header::TRANSFER_ENCODING, value);
            }
        }
    }

    /// The note on head `n`, if the watch followed it; wakes a watch that
    /// waited for room.
    fn take(&self, n: u64) -> Option<Note> {
        let note = {
            let mut pending = self.pending.lock().expect("head notes lock");
            while pending.front().is_some_and(|(k, _)| *k < n) {
                pending.pop_front();
            }
            if pending.front().is_some_and(|(k, _)| *k == n) {
                pending.pop_front().map(|(_, note)| note)
            } else {
                None
            }
        };
        if let Some(waker) = self.reader.lock().expect("head notes lock").take() {
            waker.wake();
        }
        note
    }

    /// Whether the watch is as far ahead of the service as it may be; if so,
    /// `waker` is woken when the service takes a note.
    fn full(&self, waker: &std::task::Waker) -> bool {
        if self.pending.lock().expect("head notes lock").len() < MAX_PENDING {
            return false;
        }
        *self.reader.lock().expect("head notes lock") = Some(waker.clone());
        // The service may have taken one in between.
        self.pending.lock().expect("head notes lock").len() >= MAX_PENDING
    }

    fn note(&self, n: u64, note: Note) {
        self.pending
            .lock()
            .expect("head notes lock")
            .push_back((n, note));
    }

    /// The watch follows no more from head `n` on.
    fn stop_at(&self, n: u64) {
        self.off_from.fetch_min(n, Ordering::AcqRel);
    }
}

/// Where the watch is in the stream of HTTP/1.1 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (buffered in `head` while incomplete).
    Head,
    /// This many bytes of a body with a declared length to go.
    Body(u64),
    /// A chunked body, where hyper's decoder would be.
    Chunked(Chunked),
    /// Not following this connection (any more).
    Off,
    /// A head cut short for hyper ([`Tracker::cut`]): the rest of what the
    /// client sends is read and dropped.
    Discard,
    /// An HTTP/2 connection, followed by [`Tracker::h2`].
    H2,
}

/// The states of hyper's chunked decoder (hyper `proto::h1::decode`),
/// byte for byte the same transitions: where it fails, it fails the body and
/// the connection is closed, so the watch stops following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

impl Chunked {
    /// The next state after `b`; `None`: hyper fails the body.
    fn next(self, b: u8) -> Option<Chunked> {
        use Chunked::*;
        let hex = |size: u64| {
            let d = (b as char).to_digit(16)?;
            size.checked_mul(16)?.checked_add(u64::from(d))
        };
        Some(match (self, b) {
            (Start, _) => Size(hex(0)?),
            (Size(size), b'\t' | b' ') => SizeLws(size),
            (Size(size) | SizeLws(size), b';') => Extension(size),
            (Size(size) | SizeLws(size) | Extension(size), b'\r') => SizeLf(size),
            (Size(size), _) => Size(hex(size)?),
            (SizeLws(size), b'\t' | b' ') => SizeLws(size),
            (SizeLws(_), _) | (Extension(_), b'\n') => return None,
            (Extension(size), _) => Extension(size),
            (SizeLf(0), b'\n') => EndCr,
            (SizeLf(size), b'\n') => Data(size),
            (Data(_), _) => unreachable!("data is skipped, not stepped"),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (Trailer, b'\r') => TrailerLf,
            (Trailer, _) => Trailer,
            (TrailerLf, b'\n') => EndCr,
            (EndCr, b'\r') => EndLf,
            (EndCr, _) => Trailer,
            (SizeLf(_) | DataCr | DataLf | TrailerLf | EndLf, _) => return None,
        })
    }
}

/// Where the line scan of the head being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Before the request line (empty lines before it are skipped, as
    /// httparse does: CRLF or LF).
    BeforeRequest,
    /// After a CR before the request line (its LF must follow).
    BeforeRequestCr,
    /// Inside the request line.
    Request,
    /// At the start of a field line.
    Start,
    /// Inside a field line already judged.
    Rest,
    /// Past the empty line that ends the head.
    Done,
}

/// The watch's state: sans-IO, fed every byte read from the client.
#[derive(Debug)]
struct Tracker {
    phase: Phase,
    head: Vec<u8>,
    heads: u64,
    line: Line,
    /// Codings renamed in the head being read.
    codings: Vec<Vec<u8>>,
    /// A field line of the head being read was made harmless.
    malformed: bool,
    /// The framing fields of the head being read, as hyper will read them.
    framing: FramingSeen,
    /// Bytes of the head being read passed on so far, and its field lines.
    head_len: usize,
    fields: usize,
    /// The last byte passed on, and whether the field line it is in (if it
    /// was passed on in part) has a colon.
    last: u8,
    colon: bool,
    /// What completes a head cut short, still to be passed on.
    tail: &'static [u8],
    /// On an HTTP/2 connection: its frames' follower (`h2_watch.rs`).
    h2: Option<Box<H2Tracker>>,
    /// Why the connection must fail before hyper reads what was fed last.
    refused: Option<Refused>,
}

/// What hyper's server will have read of a head's framing fields so far
/// (hyper `proto::h1::role`): a `Transfer-Encoding` line it reads (after
/// one, it skips `Content-Length` lines), the `Content-Length` it took, and
/// whether one was refused on its way to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FramingSeen {
    te: bool,
    length: Length,
    invalid: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Length {
    #[default]
    None,
    Is(u64),
    /// A line passed on in part, not judged: later ones are left to hyper.
    Unknown,
}

impl FramingSeen {
    /// A whole `Content-Length` field line's value (white space around it
    /// trimmed): whether hyper refuses the head for it ([`hyper_length`],
    /// the same in every line).
    fn refuses_length(&mut self, value: &[u8]) -> bool {
        if self.te {
            return false;
        }
        match (hyper_length(value), self.length) {
            (None, _) => true,
            (Some(n), Length::Is(l)) => n != l,
            (Some(n), Length::None) => {
                self.length = Length::Is(n);
                false
            }
            (Some(_), Length::Unknown) => false,
        }
    }
}

/// A `Content-Length` value as hyper's server takes one: digits only (no
/// list, no sign, not empty), at most `u64::MAX - 2`.
fn hyper_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .filter(|&n| n <= u64::MAX - 2)
}

/// What the line scan of a head found in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Pass it all on.
    Pass,
    /// Hold back from this offset: a partial field line, to be judged (and
    /// renamed, if it is a refused `Transfer-Encoding` field) whole.
    Hold(usize),
    /// The head is too large: pass on up to this offset, then
    /// [`Tracker::tail`], then nothing more.
    Cut(usize),
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: Phase::Head,
            head: Vec::new(),
            heads: 0,
            line: Line::BeforeRequest,
            codings: Vec::new(),
            malformed: false,
            framing: FramingSeen::default(),
            head_len: 0,
            fields: 0,
            last: b'\n',
            colon: false,
            tail: b"",
            h2: None,
            refused: None,
        }
    }

    /// Follows `data`, renaming refused `Transfer-Encoding` field lines in
    /// place. Returns how many bytes to pass on: all of them, or up to a
    /// partial line to hold back and feed again with what follows it, or
    /// (the phase is then [`Phase::Discard`]) up to where a head too large
    /// is cut short.
    fn feed(&mut self, data: &mut [u8], notes: &HeadNotes) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            match self.phase {
                Phase::Off | Phase::Discard => return data.len(),
                Phase::H2 => {
                    self.follow_h2(&data[pos..], notes);
                    return data.len();
                }
                Phase::Head => {
                    let scan = self.scan_lines(&mut data[pos..], notes);
                    let hold = match scan {
                        Scan::Pass => None,
                        Scan::Hold(at) => Some(at),
                        Scan::Cut(at) => return pos + at,
                    };
                    let end = hold.map_or(data.len(), |h| pos + h);
                    let data = &data[pos..end];
                    let used = if self.head.is_empty() {
                        // The common case: the whole head in this read.
                        match self.parse_head(data, notes) {
                            Some(n) => n,
                            None => {
                                self.head.extend_from_slice(data);
                                data.len()
                            }
                        }
                    } else if memchr::memchr(b'\n', data).is_none() {
                        // A head ends at a line end: nothing to parse again
                        // (a client dripping its head byte by byte).
                        self.head.extend_from_slice(data);
                        data.len()
                    } else {
                        let before = self.head.len();
                        self.head.extend_from_slice(data);
                        let head = std::mem::take(&mut self.head);
                        match self.parse_head(&head, notes) {
                            Some(n) => n - before,
                            None => {
                                self.head = head;
                                data.len()
                            }
                        }
                    };
                    if self.phase == Phase::Head && self.head.len() > MAX_HEAD_BYTES + 4 {
                        // hyper refuses it (431) and closes.
                        self.off(notes);
                    }
                    pos += used;
                    if hold.is_some() && self.phase == Phase::Head {
                        return end;
                    }
                }
                Phase::Body(left) => {
                    let n = left.min((data.len() - pos) as u64);
                    pos += n as usize;
                    self.phase = if left == n {
                        Phase::Head
                    } else {
                        Phase::Body(left - n)
                    };
                }
                Phase::Chunked(Chunked::Data(left)) => {
                    let n = left.min((data.len() - pos) as u64);
                    pos += n as usize;
                    self.phase = Phase::Chunked(if left == n {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - n)
                    });
                }
                Phase::Chunked(Chunked::Trailer) => {
                    // Trailer bytes up to a CR are just taken.
                    match memchr::memchr(b'\r', &data[pos..]) {
                        Some(i) => {
                            pos += i + 1;
                            self.phase = Phase::Chunked(Chunked::TrailerLf);
                        }
                        None => pos = data.len(),
                    }
                }
                Phase::Chunked(Chunked::EndLf) if data[pos] == b'\n' => {
                    pos += 1;
                    self.phase = Phase::Head;
                }
                Phase::Chunked(state) => {
                    let b = data[pos];
                    pos += 1;
                    match state.next(b) {
                        Some(next) => self.phase = Phase::Chunked(next),
                        None => {
                            self.off(notes);
                            return data.len();
                        }
                    }
                }
            }
        }
        data.len()
    }

    /// The line scan of a head: goes through the lines of `data` (the head
    /// being read, from where the last scan stopped) up to the empty line
    /// that ends it. It renames each `Transfer-Encoding` field line hyper
    /// would refuse the head for, holds back a partial line that may still
    /// become one, and cuts short a head that breaks the limits (more than
    /// [`MAX_HEAD_BYTES`] or [`MAX_FIELDS`]) before hyper sees it break them.
    fn scan_lines(&mut self, data: &mut [u8], notes: &HeadNotes) -> Scan {
        // hyper refuses a head itself once it has `MAX_HEAD_BYTES` of it
        // buffered incomplete, and offers no more than it lacks of that in
        // a read. So, in `data`: a field line must end by `line_room` (a
        // one-byte empty line can still follow); a line that has not ended
        // is passed on up to `part_room` and held back past it until it
        // ends, so that a cut can still end it in at most 3 bytes.
        let line_room = (MAX_HEAD_BYTES - 1).saturating_sub(self.head_len);
        let part_room = (MAX_HEAD_BYTES - 3).saturating_sub(self.head_len);
        let mut i = 0;
        // Where the line being scanned started, when it started in `data`.
        let mut line_start = None;
        let scan = loop {
            if i >= data.len() {
                break Scan::Pass;
            }
            match self.line {
                Line::Done => break Scan::Pass,
                Line::BeforeRequest => match data[i] {
                    b'\n' => i += 1,
                    b'\r' => {
                        i += 1;
                        self.line = Line::BeforeRequestCr;
                    }
                    _ => {
                        self.line = Line::Request;
                        line_start = Some(i);
                    }
                },
                Line::BeforeRequestCr => {
                    // An empty line's LF; anything else hyper refuses, and
                    // it is left to it.
                    self.line = if data[i] == b'\n' {
                        i += 1;
                        Line::BeforeRequest
                    } else {
                        Line::Request
                    };
                }
                Line::Request | Line::Rest => {
                    let end = memchr::memchr(b'\n', &data[i..]).map(|k| i + k + 1);
                    // A request line over the limit is hyper's to refuse
                    // (its own 431): there is no head to cut short.
                    if self.line == Line::Rest {
                        match end {
                            Some(end) if end > line_room => {
                                break self.cut(data, line_start, part_room, notes);
                            }
                            None if data.len() >= line_room => {
                                // Its end cannot come in time.
                                break self.cut(data, line_start, part_room, notes);
                            }
                            None if data.len() > part_room => {
                                break Scan::Hold(part_room.max(i));
                            }
                            _ => {}
                        }
                    }
                    match (end, line_start) {
                        (Some(end), Some(start)) if self.line == Line::Rest => {
                            // A field line whole in this read.
                            self.malformed |= make_harmless(&mut data[start..end]);
                            i = end;
                            self.line = Line::Start;
                            line_start = None;
                        }
                        (Some(end), _) => {
                            i = end;
                            self.line = Line::Start;
                            line_start = None;
                        }
                        (None, Some(start))
                            if self.line == Line::Rest && data.len() - start <= MAX_HELD =>
                        {
                            // A field line's start: held back until it
                            // ends, to be judged whole (counted again then).
                            self.fields -= 1;
                            self.line = Line::Start;
                            break Scan::Hold(start);
                        }
                        (None, _) => i = data.len(),
                    }
                }
                Line::Start => {
                    if data[i] == b'\r' && i + 2 > line_room + 1 {
                        // Its CRLF would take the head past the limit.
                        break self.cut(data, Some(i), part_room, notes);
                    }
                    // A CR starts the empty line that ends the head only
                    // with its LF; before anything else it starts a field
                    // line hyper refuses, made harmless like the others.
                    let bare_cr = data[i] == b'\r' && data.get(i + 1).is_some_and(|&b| b != b'\n');
                    if data[i] == b'\r' && i + 1 == data.len() {
                        // Which of the two: the next read tells.
                        break Scan::Hold(i);
                    }
                    if matches!(data[i], b'\r' | b'\n') && !bare_cr {
                        // The empty line that ends the head: nothing after
                        // it is the head's.
                        self.line = Line::Done;
                        break Scan::Pass;
                    }
                    self.fields += 1;
                    line_start = Some(i);
                    if self.fields > MAX_FIELDS {
                        break self.cut(data, line_start, part_room, notes);
                    }
                    let rest = &data[i..];
                    let starts = |name: &[u8]| {
                        let start = &rest[..rest.len().min(name.len())];
                        start.eq_ignore_ascii_case(&name[..start.len()])
                    };
                    let te = starts(TRANSFER_ENCODING);
                    if !te && !starts(CONTENT_LENGTH) {
                        self.line = Line::Rest;
                        continue;
                    }
                    let Some(k) = memchr::memchr(b'\n', rest) else {
                        if rest.len() <= MAX_HELD {
                            // Counted again when it comes back whole.
                            self.fields -= 1;
                            break Scan::Hold(i);
                        }
                        // Passed on unjudged: hyper may read it, so what
                        // follows is left to hyper.
                        if te {
                            self.framing.te = true;
                        } else {
                            self.framing.length = Length::Unknown;
                        }
                        self.line = Line::Rest;
                        continue;
                    };
                    if i + k + 1 > line_room {
                        break self.cut(data, line_start, part_room, notes);
                    }
                    let harmless = make_harmless(&mut data[i..=i + k]);
                    self.malformed |= harmless;
                    let line = &mut data[i..i + k];
                    let name = if te {
                        TRANSFER_ENCODING.len()
                    } else {
                        CONTENT_LENGTH.len()
                    };
                    if !harmless && line.len() >= name {
                        let value = line[name..].trim_ascii_end().trim_ascii_start();
                        if !te {
                            if self.framing.refuses_length(value) {
                                self.framing.invalid = true;
                                line[..name - 1].fill(b'X');
                            }
                        } else if hyper_reads_chunked(value) {
                            self.framing.te = true;
                        } else {
                            self.codings.push(value.to_vec());
                            line[..RENAMED.len()].copy_from_slice(RENAMED);
                        }
                    }
                    i += k + 1;
                    line_start = None;
                }
            }
        };
        let passed = match scan {
            Scan::Pass => i,
            Scan::Hold(at) | Scan::Cut(at) => at,
        };
        if passed > 0 {
            self.last = data[passed - 1];
            if self.line == Line::Rest {
                // A field line passed on in part, should it be cut into.
                let from = line_start.unwrap_or(0).min(passed);
                self.colon = line_start.is_none() && self.colon
                    || memchr::memchr(b':', &data[from..passed]).is_some();
            }
        }
        self.head_len += passed;
        scan
    }

    /// Cuts the head being read short: what hyper gets is its request line
    /// and its field lines up to the limits, completed by [`Self::tail`] (the
    /// line cut into ended, then the empty line), and nothing after. The
    /// head's note says so, and the framing check answers `431`.
    fn cut(
        &mut self,
        data: &[u8],
        line_start: Option<usize>,
        room: usize,
        notes: &HeadNotes,
    ) -> Scan {
        // hyper offers what it lacks of its buffer's cap, so the completion
        // is no longer than what is left under the limit (see `scan_lines`):
        // it arrives whole and hyper parses a head of at most 64 KiB.
        let (at, tail): (usize, &'static [u8]) = match line_start {
            // A line that started in this read is left out whole: a bare LF
            // ends the head (RFC 9112 §2.2 lets a recipient take one).
            Some(start) => (start, b"\n"),
            // One passed on in part already is ended where the room ends,
            // with bare LFs; a colon makes a field of a part without one.
            None => {
                let at = room.min(data.len());
                let colon = self.colon || memchr::memchr(b':', &data[..at]).is_some();
                let last = at.checked_sub(1).map_or(self.last, |i| data[i]);
                (
                    at,
                    if colon || last == b'\r' {
                        b"\n\n"
                    } else {
                        b":\n\n"
                    },
                )
            }
        };
        let n = self.heads;
        self.heads += 1;
        // The request line is whole by now (a cut falls in a field line);
        // its start may have come in an earlier read.
        let mut start = self.head.clone();
        start.extend_from_slice(&data[..at.min(data.len())]);
        let (method, target) = request_line(&start);
        notes.note(
            n,
            Note {
                method,
                target,
                codings: std::mem::take(&mut self.codings),
                too_large: true,
                malformed: std::mem::take(&mut self.malformed),
                invalid_length: std::mem::take(&mut self.framing).invalid,
                len: 0,
            },
        );
        notes.stop_at(self.heads);
        self.phase = Phase::Discard;
        self.head = Vec::new();
        self.tail = tail;
        Scan::Cut(at)
    }

    /// HTTP/2: follows `data` with the connection's frame follower; a `#`
    /// in a `:path`, or frames it cannot follow, fail the connection
    /// ([`Self::refused`]) before hyper reads `data`.
    fn follow_h2(&mut self, data: &[u8], notes: &HeadNotes) {
        let Some(h2) = &mut self.h2 else {
            return;
        };
        if let Err(refused) = h2.feed(data) {
            self.refused = Some(refused);
            self.h2 = None;
            self.off(notes);
        }
    }

    /// Stops following: from the head being read on, requests are not
    /// checked against notes.
    fn off(&mut self, notes: &HeadNotes) {
        notes.stop_at(self.heads);
        self.phase = Phase::Off;
        self.head = Vec::new();
        self.codings = Vec::new();
        self.malformed = false;
        self.framing = FramingSeen::default();
    }

    /// Parses a head at the start of `data`. `None`: incomplete. Otherwise
    /// how many bytes it took, with the phase set for what follows.
    fn parse_head(&mut self, data: &[u8], notes: &HeadNotes) -> Option<usize> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(data) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return None,
            // An HTTP/2 preface, or a head hyper refuses too.
            Err(_) => {
                let shown = data.len().min(PREFACE.len());
                if self.heads == 0 && data[..shown] == PREFACE[..shown] {
                    // HTTP/2 from the start: its frames are followed instead.
                    notes.stop_at(0);
                    self.head = Vec::new();
                    self.phase = Phase::H2;
                    self.h2 = Some(Box::default());
                    self.follow_h2(data, notes);
                } else {
                    self.off(notes);
                }
                return Some(data.len());
            }
        };
        let n = self.heads;
        self.heads += 1;
        self.line = Line::BeforeRequest;
        self.head_len = 0;
        self.fields = 0;
        notes.note(
            n,
            Note {
                method: req.method.unwrap_or_default().to_owned(),
                target: req.path.unwrap_or_default().to_owned(),
                codings: std::mem::take(&mut self.codings),
                too_large: false,
                malformed: std::mem::take(&mut self.malformed),
                invalid_length: std::mem::take(&mut self.framing).invalid,
                len,
            },
        );
        // The body's framing, as hyper's server reads it (hyper
        // `proto::h1::role`): the last `Transfer-Encoding` field decides
        // whether it is chunked (any other is refused, so is one on
        // HTTP/1.0); a `Content-Length` after a `Transfer-Encoding` is
        // ignored, others must be digits only and agree.
        let mut te = None;
        let mut length = None;
        for field in req.headers.iter() {
            if field.name.eq_ignore_ascii_case("transfer-encoding") {
                if req.version == Some(0) {
                    self.off(notes);
                    return Some(data.len());
                }
                te = Some(field.value);
            } else if field.name.eq_ignore_ascii_case("content-length") && te.is_none() {
                match (hyper_length(field.value), length) {
                    (Some(v), None) => length = Some(v),
                    (Some(v), Some(l)) if v == l => {}
                    _ => {
                        self.off(notes);
                        return Some(data.len());
                    }
                }
            }
        }
        self.phase = match te {
            Some(value) if hyper_reads_chunked(value) => Phase::Chunked(Chunked::Start),
            Some(_) => {
                self.off(notes);
                return Some(len);
            }
            None => match length {
                Some(0) | None => Phase::Head,
                Some(l) => Phase::Body(l),
            },
        };
        Some(len)
    }
}

/// Makes `line` (a field line, its LF included) harmless if hyper would
/// refuse the head for it: its content (up to the line end, a CR right
/// before the LF left out) becomes `X…X:` of the same length, a field with
/// no value that nothing reads. Returns whether it did. What httparse takes
/// from a request (hyper's settings): a name of token characters, a colon,
/// then a value of visible characters, spaces, tabs and bytes from 0x80.
/// A one-byte content ended by a bare LF cannot be rewritten so; it is left
/// to hyper (its bare `400`).
fn make_harmless(line: &mut [u8]) -> bool {
    let mut content = line.len() - 1;
    if content > 0 && line[content - 1] == b'\r' {
        content -= 1;
    }
    let name = line[..content]
        .iter()
        .position(|&b| !is_token(b))
        .unwrap_or(content);
    let valid = name > 0
        && name < content
        && line[name] == b':'
        && line[name + 1..content]
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80);
    if valid {
        return false;
    }
    match content {
        0 => false,
        // `A\r\n` → `X:\n`: the CR becomes the colon.
        1 if line.len() == 3 => {
            line[..2].copy_from_slice(b"X:");
            true
        }
        1 => false,
        _ => {
            line[..content - 1].fill(b'X');
            line[content - 1] = b':';
            true
        }
    }
}

/// A token character (RFC 9110 §5.6.2), as httparse takes a field name.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The method and the request-target of the request line at the start of
/// `head` (after empty lines), as far as they are there.
fn request_line(head: &[u8]) -> (String, String) {
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = &head[start..];
    let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
    let mut parts = line.split(|&b| b == b' ');
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let method = next();
    (method, next())
}

/// Whether hyper reads a body as chunked when this is the (last)
/// `Transfer-Encoding` field's value: a visible-ASCII value whose last
/// coding is `chunked`. Any other value, hyper refuses the head for.
fn hyper_reads_chunked(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b))
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A client connection's socket, with the watch over what is read from it.
#[derive(Debug)]
pub struct HeadWatch<T> {
    inner: T,
    tracker: Tracker,
    notes: std::sync::Arc<HeadNotes>,
    /// A partial line held back from hyper (see the module docs).
    held: Vec<u8>,
}

impl<T> HeadWatch<T> {
    pub fn new(inner: T, notes: std::sync::Arc<HeadNotes>) -> Self {
        Self {
            inner,
            tracker: Tracker::new(),
            notes,
            held: Vec::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let start = buf.filled().len();
            match this.tracker.phase {
                Phase::Discard => return this.poll_discard(cx, buf),
                Phase::Off if this.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Phase::Off => {
                    let n = this.held.len().min(buf.remaining());
                    buf.put_slice(&this.held[..n]);
                    this.held.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
            if this.notes.full(cx.waker()) {
                // Far enough ahead of the service: what hyper has buffered
                // is served first (each request taken wakes this task).
                return Poll::Pending;
            }
            let held = this.held.len();
            if held > 0 && held >= buf.remaining() {
                // No room to read after what is held: give up following.
                this.tracker.off(&this.notes);
                continue;
            }
            buf.put_slice(&this.held);
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => {
                    buf.set_filled(start);
                    return other;
                }
            }
            this.held.clear();
            if buf.filled().len() == start + held {
                // The end of the stream: what was held goes as it is.
                if held > 0 {
                    this.tracker.off(&this.notes);
                }
                return Poll::Ready(Ok(()));
            }
            let read = &mut buf.filled_mut()[start..];
            let took = this.tracker.feed(read, &this.notes);
            if let Some(refused) = this.tracker.refused.take() {
                // HTTP/2 (`h2_watch.rs`): hyper never sees these bytes.
                buf.set_filled(start);
                let why = match refused {
                    Refused::Hash(request) => {
                        tracing::info!(
                            method = %request.method,
                            "closing an HTTP/2 connection: a :path with a '#' (a fragment is never sent)"
                        );
                        "a :path with a '#'"
                    }
                    Refused::TrailerPseudo => {
                        tracing::info!(
                            "closing an HTTP/2 connection: a pseudo-header field in a stream's trailers"
                        );
                        "a pseudo-header field in trailers"
                    }
                    Refused::PushPromise => {
                        tracing::info!(
                            "closing an HTTP/2 connection: a PUSH_PROMISE frame from the client"
                        );
                        "a PUSH_PROMISE frame from the client"
                    }
                    Refused::Lost => {
                        tracing::info!(
                            "closing an HTTP/2 connection whose header blocks cannot be followed"
                        );
                        "header blocks that cannot be followed"
                    }
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
            }
            if this.tracker.phase == Phase::Discard {
                buf.set_filled(start + took);
                // The completion goes whole or in the next read: in parts,
                // hyper could find its buffer full of an incomplete head.
                let tail = this.tracker.tail;
                if tail.len() <= buf.remaining() || took == 0 {
                    let n = tail.len().min(buf.remaining());
                    buf.put_slice(&tail[..n]);
                    this.tracker.tail = &tail[n..];
                }
                return Poll::Ready(Ok(()));
            }
            if took == read.len() {
                return Poll::Ready(Ok(()));
            }
            this.held.extend_from_slice(&read[took..]);
            buf.set_filled(start + took);
            if took > 0 {
                return Poll::Ready(Ok(()));
            }
            // Only a partial line so far: read on (the inner stream wakes
            // this task when it returns Pending).
        }
    }
}

/// What a discarding watch reads and drops in one turn before it lets other
/// tasks run.
const DISCARD_TURN: usize = 256 * 1024;

impl<T: AsyncRead + Unpin> HeadWatch<T> {
    /// After a head cut short: the rest of its completion, then nothing of
    /// what the client sends (it is read and dropped) until it closes.
    fn poll_discard(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tail = self.tracker.tail;
        if !tail.is_empty() {
            let n = tail.len().min(buf.remaining());
            buf.put_slice(&tail[..n]);
            self.tracker.tail = &tail[n..];
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        let mut dropped = 0;
        loop {
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let n = buf.filled().len() - start;
            buf.set_filled(start);
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            dropped += n;
            if dropped >= DISCARD_TURN {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends `pieces`, one per read, and then ends; a read
    /// after an empty piece is `Pending` once (a client pausing).
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let Some(mut piece) = self.0.pop_front() else {
                return Poll::Ready(Ok(()));
            };
            if piece.is_empty() {
                return Poll::Pending;
            }
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What hyper reads through the watch when a client sends `wire` in
    /// pieces of `step` bytes (hyper's reads taking at most `read` bytes),
    /// the notes, and where the watch ends up.
    fn through(wire: &[u8], step: usize, read: usize) -> (Vec<u8>, Vec<(u64, Note)>, Phase) {
        through_offering(wire, step, |_| read)
    }

    /// [`through`], with hyper offering `offer(bytes read so far)` per read.
    fn through_offering(
        wire: &[u8],
        step: usize,
        offer: impl Fn(usize) -> usize,
    ) -> (Vec<u8>, Vec<(u64, Note)>, Phase) {
        let notes = std::sync::Arc::new(HeadNotes::default());
        let mut pieces = VecDeque::new();
        for piece in wire.chunks(step) {
            pieces.push_back(piece.to_vec());
            pieces.push_back(Vec::new());
        }
        let mut watch = HeadWatch::new(Pieces(pieces), notes.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        let mut space = vec![0; 1 << 20];
        loop {
            let mut buf = ReadBuf::new(&mut space[..offer(seen.len())]);
            match Pin::new(&mut watch).poll_read(&mut cx, &mut buf) {
                Poll::Pending => continue,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => seen.extend_from_slice(buf.filled()),
            }
        }
        // The notes that change something (every head has one).
        let pending = notes
            .pending
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| {
                n.target.contains('#')
                    || !n.codings.is_empty()
                    || n.too_large
                    || n.malformed
                    || n.invalid_length
            })
            .map(|(k, n)| {
                (
                    *k,
                    Note {
                        len: 0,
                        ..n.clone()
                    },
                )
            })
            .collect();
        (seen, pending, watch.tracker.phase)
    }

    /// [`through`] at every split up to 200 bytes, all agreeing; the result.
    fn every_split(wire: &[u8]) -> (Vec<u8>, Vec<(u64, Note)>, Phase) {
        let whole = through(wire, wire.len().max(1), 64 * 1024);
        for step in 1..wire.len().min(200) {
            assert_eq!(through(wire, step, 8192), whole, "split every {step} bytes");
        }
        whole
    }

    fn targets(notes: &[(u64, Note)]) -> Vec<(u64, String)> {
        notes
            .iter()
            .filter(|(_, note)| note.target.contains('#'))
            .map(|(n, note)| (*n, note.target.clone()))
            .collect()
    }

    #[test]
    fn follows_lengths_chunks_and_trailers_to_the_next_head() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
        // A body that looks like a head with a `#` is skipped, not parsed.
        wire.extend_from_slice(b"GET /#x HT");
        wire.extend_from_slice(
            b"\r\nPOST /r/b#c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        wire.extend_from_slice(b"5;ext=1\r\nGET /\r\n1A\r\n");
        wire.extend_from_slice(&[b'#'; 26]);
        wire.extend_from_slice(b"\r\n0\r\nTrailer: #t\r\n\r\n");
        wire.extend_from_slice(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
        wire.extend_from_slice(
            b"POST /r/d?q=1#e HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\nab",
        );
        let (seen, notes, phase) = every_split(&wire);
        assert_eq!(seen, wire, "passed on unchanged");
        assert_eq!(
            targets(&notes),
            vec![(1, "/r/b#c".to_owned()), (3, "/r/d?q=1#e".to_owned())]
        );
        assert_eq!(phase, Phase::Head);
    }

    /// `Content-Length` lines hyper refuses the head for are renamed, the
    /// head noted; those it skips (after a `Transfer-Encoding` it reads)
    /// are left alone.
    #[test]
    fn renames_the_lengths_hyper_would_refuse() {
        let x = "XXXXXXXXXXXXXX";
        let cases: [(&str, &str, Phase, bool); 10] = [
            (
                "Content-Length: abc",
                &format!("{x}: abc"),
                Phase::Head,
                false,
            ),
            (
                "Content-Length: 1\r\nContent-Length: 2",
                &format!("Content-Length: 1\r\n{x}: 2"),
                Phase::Body(1),
                false,
            ),
            (
                "Content-Length: 1\r\ncontent-length:  1 ",
                "Content-Length: 1\r\ncontent-length:  1 ",
                Phase::Body(1),
                false,
            ),
            (
                "Content-Length: 5, 5",
                &format!("{x}: 5, 5"),
                Phase::Head,
                false,
            ),
            (
                "Content-Length: +5",
                &format!("{x}: +5"),
                Phase::Head,
                false,
            ),
            ("CONTENT-LENGTH:", &format!("{x}:"), Phase::Head, false),
            (
                "Content-Length: 18446744073709551614",
                &format!("{x}: 18446744073709551614"),
                Phase::Head,
                false,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: abc",
                "Transfer-Encoding: chunked\r\nContent-Length: abc",
                Phase::Chunked(Chunked::Start),
                false,
            ),
            (
                "Content-Length: abc\r\nTransfer-Encoding: chunked",
                &format!("{x}: abc\r\nTransfer-Encoding: chunked"),
                Phase::Chunked(Chunked::Start),
                false,
            ),
            // A refused coding is renamed: hyper then reads the length after
            // it, which it skipped before.
            (
                "Transfer-Encoding: gzip\r\nContent-Length: abc",
                &format!("X-Refused-Codings: gzip\r\n{x}: abc"),
                Phase::Head,
                true,
            ),
        ];
        for (fields, renamed, phase, coding) in cases {
            let wire = format!("POST /a HTTP/1.1\r\n{fields}\r\n\r\n");
            let (seen, notes, got) = every_split(wire.as_bytes());
            assert_eq!(
                String::from_utf8(seen).unwrap(),
                format!("POST /a HTTP/1.1\r\n{renamed}\r\n\r\n"),
                "{fields:?}"
            );
            assert_eq!(got, phase, "{fields:?}");
            let invalid = fields != renamed;
            let want: Vec<(u64, Note)> = if invalid {
                vec![(
                    0,
                    Note {
                        method: "POST".into(),
                        target: "/a".into(),
                        codings: if coding {
                            vec![b"gzip".to_vec()]
                        } else {
                            vec![]
                        },
                        invalid_length: renamed.contains(x),
                        ..Note::default()
                    },
                )]
            } else {
                vec![]
            };
            assert_eq!(notes, want, "{fields:?}");
        }
        // A line too long to hold back goes on unjudged, and so do the
        // lengths after it: hyper judges them (its bare 400).
        let long = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}7\r\nContent-Length: 8\r\n\r\n",
            " ".repeat(2 * MAX_HELD)
        );
        let (seen, notes, _) = through(long.as_bytes(), 100, 8192);
        assert_eq!((seen.as_slice(), notes), (long.as_bytes(), vec![]));
    }

    #[test]
    fn stops_where_hyper_would_refuse_or_change_protocol() {
        // The HTTP/2 preface: its frames are followed instead (h2_watch.rs);
        // a connection that starts like it and then is not HTTP/2 is not
        // followed (hyper refuses it, or the watch fails it when the preface
        // came in parts).
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        assert_eq!(every_split(h2), (h2.to_vec(), vec![], Phase::H2));
        let mut t = Tracker::new();
        t.feed(
            &mut b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
            &HeadNotes::default(),
        );
        assert_eq!(t.phase, Phase::Off);
        let te_on_1_0 = b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(every_split(te_on_1_0).2, Phase::Off);
        // The gateway never answers CONNECT with a 2xx, so hyper serves the
        // connection on as HTTP/1.1: so does the watch.
        let connect = b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\nGET /#x HTTP/1.1\r\n\r\n";
        let (seen, notes, phase) = every_split(connect);
        assert_eq!(seen, connect);
        assert_eq!(
            (targets(&notes), phase),
            (vec![(1, "/#x".into())], Phase::Head)
        );
        // A request line over the limit: hyper refuses it (431) itself.
        let mut huge = b"GET /".to_vec();
        huge.resize(MAX_HEAD_BYTES + 100, b'a');
        let (seen, notes, phase) = through(&huge, 4096, 8192);
        assert_eq!((seen, notes, phase), (huge, vec![], Phase::Off));
    }

    /// What hyper gets of a head that breaks the limits, split every
    /// `step`: a complete head within them, noted as too large; nothing of
    /// what follows it.
    fn cut_short(wire: &[u8], step: usize) -> Vec<u8> {
        // hyper reads at most up to its buffer's cap (it refuses an
        // incomplete head that fills it), and checks after every read.
        let read = step.max(8192);
        let (seen, notes, phase) = through_offering(wire, step, |had| {
            read.min(MAX_HEAD_BYTES - had.min(MAX_HEAD_BYTES - 1))
        });
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let parsed = httparse::Request::new(&mut fields).parse(&seen);
        assert_eq!(
            parsed,
            Ok(httparse::Status::Complete(seen.len())),
            "step {step}: one complete head"
        );
        assert!(seen.len() <= MAX_HEAD_BYTES, "step {step}: {}", seen.len());
        assert!(wire.starts_with(&seen[..seen.len() - 3]), "step {step}");
        let note = Note {
            method: "POST".into(),
            target: "/a".into(),
            too_large: true,
            malformed: false,
            invalid_length: false,
            codings: Vec::new(),
            len: 0,
        };
        assert_eq!(
            (notes, phase),
            (vec![(0, note)], Phase::Discard),
            "step {step}"
        );
        seen
    }

    #[test]
    fn cuts_a_head_over_the_limits_short_for_hyper() {
        let after = b"BODY\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let with_filler = |total: usize| {
            let mut head =
                b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX-Filler: ".to_vec();
            head.resize(total - 4, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            head
        };
        // At the limit, the head is passed on as it is.
        let head = with_filler(MAX_HEAD_BYTES);
        let wire = [&head[..], after].concat();
        for step in [1, 7, 1000, 4096, wire.len()] {
            let (seen, notes, phase) = through(&wire, step, 8192);
            assert_eq!((seen == wire, notes, phase), (true, vec![], Phase::Head));
        }
        // Over it, it is cut short: in the filler when the filler came in
        // parts, before the filler's line when that came whole.
        let wire = [&with_filler(MAX_HEAD_BYTES + 100)[..], after].concat();
        for step in [1, 7, 1000, 4096, 65_000] {
            let seen = cut_short(&wire, step);
            assert!(seen.ends_with(b"aa\n\n"), "step {step}");
            assert_eq!(seen.len(), MAX_HEAD_BYTES - 1, "step {step}");
        }
        let seen = cut_short(&wire, wire.len());
        assert!(seen.ends_with(b"Content-Length: 4\r\n\n"));
        // One byte over: the filler line fits, its final CRLF does not; a
        // bare LF ends the head instead.
        let wire = [&with_filler(MAX_HEAD_BYTES + 1)[..], after].concat();
        for step in [1, 3, 1000, 4096, wire.len()] {
            let seen = cut_short(&wire, step);
            assert_eq!(seen.len(), MAX_HEAD_BYTES, "step {step}");
            assert!(seen.ends_with(b"aa\r\n\n"), "step {step}");
        }
        // With bare LFs a head of 64 KiB is 64 KiB: passed on as it is.
        let mut lf = with_filler(MAX_HEAD_BYTES - 2);
        lf.truncate(lf.len() - 4);
        lf.extend_from_slice(b"\n\n");
        let lf = lf.iter().fold(Vec::new(), |mut v, &b| {
            if b != b'\r' {
                v.push(b);
            }
            v
        });
        let mut lf = lf;
        lf.splice(
            lf.len() - 2..lf.len() - 2,
            std::iter::repeat_n(b'a', MAX_HEAD_BYTES - lf.len()),
        );
        assert_eq!(lf.len(), MAX_HEAD_BYTES);
        for step in [1, 3, 1000, lf.len()] {
            let (seen, notes, _) = through(&lf, step, 8192);
            assert_eq!((seen == lf, notes), (true, vec![]), "step {step}");
        }
        // A part with no colon yet is made a field by one.
        let mut wire = b"POST /a HTTP/1.1\r\nX-Filler".to_vec();
        wire.resize(MAX_HEAD_BYTES + 100, b'a');
        for step in [1, 1000, 4096] {
            assert!(cut_short(&wire, step).ends_with(b"aa:\n\n"), "step {step}");
        }
        // Many small lines: cut at a line's start.
        let mut wire = b"POST /a HTTP/1.1\r\n".to_vec();
        while wire.len() < MAX_HEAD_BYTES + 1000 {
            wire.extend_from_slice(b"X: 123456789\r\n");
        }
        for step in [1, 100, 8192] {
            let seen = cut_short(&wire, step);
            assert!(seen.ends_with(b"X: 123456789\r\n\n"));
        }
    }

    #[test]
    fn cuts_a_head_over_hyper_field_count_short() {
        // Field lines held back in part (a `Transfer-Encoding` one) count
        // once all the same.
        for field in ["X-Field: v", "Transfer-Encoding: chunked"] {
            let head = |n: usize| {
                let mut h = b"POST /a HTTP/1.1\r\n".to_vec();
                for _ in 0..n {
                    h.extend_from_slice(format!("{field}\r\n").as_bytes());
                }
                h.extend_from_slice(b"\r\n");
                h
            };
            for step in [1, 5, 50] {
                let (seen, notes, _) = through(&head(MAX_FIELDS), step, 8192);
                assert_eq!((seen, notes), (head(MAX_FIELDS), vec![]), "{field}");
            }
            for n in [MAX_FIELDS + 1, 500] {
                for step in [1, 50, 8192] {
                    let seen = cut_short(&[&head(n)[..], b"GET / HTTP/1.1\r\n\r\n"].concat(), step);
                    let mut want = head(MAX_FIELDS);
                    want.truncate(want.len() - 2);
                    want.push(b'\n');
                    assert_eq!(seen, want, "{field}: {n} fields, step {step}");
                }
            }
        }
    }

    /// A refused `Transfer-Encoding` field line reaches hyper renamed, and
    /// only that line: the head, the body and the next request are as sent.
    #[test]
    fn renames_the_transfer_codings_hyper_would_refuse() {
        let head = |fields: &str| format!("POST /r/a HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
        let cases: [(&str, &str, &[&str]); 6] = [
            (
                "Transfer-Encoding: gzip\r\n",
                "X-Refused-Codings: gzip\r\n",
                &["gzip"],
            ),
            (
                "transfer-encoding:chunked, gzip \r\n",
                "X-Refused-Codings:chunked, gzip \r\n",
                &["chunked, gzip"],
            ),
            (
                "TRANSFER-ENCODING: identity\n",
                "X-Refused-Codings: identity\n",
                &["identity"],
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                "Transfer-Encoding: chunked\r\nX-Refused-Codings: gzip\r\n",
                &["gzip"],
            ),
            (
                "Transfer-Encoding: gzip\r\nContent-Length: 3\r\n",
                "X-Refused-Codings: gzip\r\nContent-Length: 3\r\n",
                &["gzip"],
            ),
            ("Transfer-Encoding:\r\n", "X-Refused-Codings:\r\n", &[""]),
        ];
        let next = "GET /n#x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        let next_renamed = "GET /n#x HTTP/1.1\r\nX-Refused-Codings: gzip\r\n\r\n";
        for (fields, renamed, codings) in cases {
            // What follows the head is framed by what hyper is left with.
            let body = if fields.contains("chunked\r\n") {
                "3\r\nabc\r\n0\r\n\r\n"
            } else if fields.contains("Length") {
                "abc"
            } else {
                ""
            };
            let wire = format!("{}{body}{next}", head(fields));
            let want = format!("{}{body}{next_renamed}", head(renamed));
            let (seen, notes, phase) = every_split(wire.as_bytes());
            assert_eq!(String::from_utf8_lossy(&seen), want, "{fields:?}");
            let codings: Vec<Vec<u8>> = codings.iter().map(|c| c.as_bytes().to_vec()).collect();
            assert_eq!(
                notes,
                vec![
                    (
                        0,
                        Note {
                            method: "POST".into(),
                            target: "/r/a".into(),
                            codings,
                            too_large: false,
                            malformed: false,
                            invalid_length: false,
                            len: 0,
                        }
                    ),
                    (
                        1,
                        Note {
                            method: "GET".into(),
                            target: "/n#x".into(),
                            codings: vec![b"gzip".to_vec()],
                            too_large: false,
                            malformed: false,
                            invalid_length: false,
                            len: 0,
                        }
                    )
                ],
                "{fields:?}"
            );
            assert_eq!(phase, Phase::Head, "{fields:?}");
        }
    }

    /// What is not a field line hyper refuses is passed on as it is: a
    /// `chunked` field, `Transfer-Encoding` text in a body or a field value,
    /// a field line too long to hold back.
    #[test]
    fn leaves_everything_else_alone() {
        let mut wire = b"POST /a HTTP/1.1\r\nX-Note: Transfer-Encoding: gzip\r\n".to_vec();
        wire.extend_from_slice(b"Transfer-Encoding: Chunked\r\n\r\n");
        wire.extend_from_slice(b"1B\r\nTransfer-Encoding: gzip\r\n\r\n\r\n0\r\n\r\n");
        wire.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 27\r\n\r\n");
        wire.extend_from_slice(b"\r\nTransfer-Encoding: gzip\r\n");
        let (seen, notes, phase) = every_split(&wire);
        assert_eq!(seen, wire);
        assert_eq!((notes, phase), (vec![], Phase::Head));

        let long = format!(
            "POST /a HTTP/1.1\r\nTransfer-Encoding: gzip{}\r\n\r\n",
            " ".repeat(2 * MAX_HELD)
        );
        let (seen, notes, phase) = through(long.as_bytes(), 100, 8192);
        assert_eq!(
            (seen.as_slice(), notes, phase),
            (long.as_bytes(), vec![], Phase::Off)
        );
        // Sent in one piece, it is renamed all the same.
        let (seen, notes, _) = through(long.as_bytes(), long.len(), 8192);
        assert!(seen.starts_with(b"POST /a HTTP/1.1\r\nX-Refused-Codings: gzip"));
        assert_eq!(notes.len(), 1);
    }

    /// A stream that ends inside a held line gives hyper what was held.
    #[test]
    fn the_end_of_the_stream_releases_a_held_line() {
        let wire = b"POST /a HTTP/1.1\r\nTransfer-Enc";
        for step in 1..wire.len() {
            let (seen, _, _) = through(wire, step, 8192);
            assert_eq!(seen, wire, "split every {step} bytes");
        }
    }

    #[test]
    fn the_service_gets_the_note_of_its_own_request_only() {
        let notes = HeadNotes::default();
        let mut t = Tracker::new();
        let mut wire = b"GET /a HTTP/1.1\r\n\r\nPOST /r/b#c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\n".to_vec();
        t.feed(&mut wire, &notes);
        let req = |method: &str, target: &str| {
            let mut r = Request::builder()
                .method(method)
                .uri(target)
                .body(())
                .unwrap();
            r.headers_mut()
                .insert("x-refused-codings", HeaderValue::from_static("x"));
            notes.apply(&mut r);
            r
        };
        let a = req("GET", "/a");
        assert_eq!(a.extensions().get::<FragmentTarget>(), None);
        assert_eq!(a.extensions().get::<LostTrack>(), None);
        assert!(a.headers().contains_key("x-refused-codings"), "untouched");
        assert_eq!(
            req("POST", "/r/b").extensions().get::<FragmentTarget>(),
            Some(&FragmentTarget("/r/b#c".into()))
        );
        let d = req("GET", "/d");
        assert_eq!(d.extensions().get::<FragmentTarget>(), None);
        assert_eq!(d.extensions().get::<RefusedCoding>(), Some(&RefusedCoding));
        assert_eq!(
            d.headers()
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .collect::<Vec<_>>(),
            ["x"]
        );
        assert!(!d.headers().contains_key("x-refused-codings"));
        // A request that is not the one the watch saw: lost track.
        t.feed(&mut b"GET /e#f HTTP/1.1\r\n\r\n".to_vec(), &notes);
        let other = req("GET", "/other");
        assert_eq!(other.extensions().get::<FragmentTarget>(), None);
        assert_eq!(other.extensions().get::<LostTrack>(), Some(&LostTrack));
        // So is one the watch did not see while it was following.
        assert_eq!(
            req("GET", "/f").extensions().get::<LostTrack>(),
            Some(&LostTrack)
        );
        // Once it stopped following, requests are left alone.
        t.feed(&mut b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &notes);
        assert_eq!(req("GET", "/g").extensions().get::<LostTrack>(), None);
        assert_eq!(FragmentTarget("/r/b#c?d".into()).path(), "/r/b#c?d");
        assert_eq!(FragmentTarget("/r/b?c#d".into()).path(), "/r/b");
        assert_eq!(FragmentTarget("http://gw/r/b#c".into()).path(), "/r/b#c");
        assert_eq!(FragmentTarget("HTTPS://gw#c".into()).path(), "#c");
    }

    /// Targets hyper's URI gives in another form than sent are the same
    /// target: absolute form (a missing path is `/`), authority form,
    /// asterisk form.
    #[test]
    fn every_request_target_form_matches_its_note() {
        let notes = HeadNotes::default();
        let mut t = Tracker::new();
        let mut wire = b"OPTIONS http://gw HTTP/1.1\r\n\r\n\
                         GET HTTPS://gw:8/x?y HTTP/1.1\r\n\r\n\
                         CONNECT gw:443 HTTP/1.1\r\n\r\n\
                         OPTIONS * HTTP/1.1\r\n\r\n\
                         GET //a/b?c HTTP/1.1\r\n\r\n\
                         GET ://g HTTP/1.1\r\n\r\n\
                         GET h5-t+.~://g/a?b HTTP/1.1\r\n\r\n\
                         GET 7://g HTTP/1.1\r\n\r\n"
            .to_vec();
        t.feed(&mut wire, &notes);
        // The last three: schemes the `http` crate takes (fuzzing, tests/fuzz
        // `h1`), empty or with digits and symbols.
        for (method, target) in [
            ("OPTIONS", "http://gw"),
            ("GET", "HTTPS://gw:8/x?y"),
            ("CONNECT", "gw:443"),
            ("OPTIONS", "*"),
            ("GET", "//a/b?c"),
            ("GET", "://g"),
            ("GET", "h5-t+.~://g/a?b"),
            ("GET", "7://g"),
        ] {
            let mut r = Request::builder()
                .method(method)
                .uri(target)
                .body(())
                .unwrap();
            notes.apply(&mut r);
            assert_eq!(r.extensions().get::<LostTrack>(), None, "{method} {target}");
        }
    }

    /// hyper's chunked decoder, not a lenient one: a trailer line ending in
    /// a bare LF runs on to the next CR, so what follows it is trailer too,
    /// not a request (a watch that took it for one noted every request
    /// after it on the wrong one, and renamed "field lines" in a body).
    #[test]
    fn follows_chunked_bodies_as_hyper_decodes_them() {
        let r1 = b"POST /r/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n0\r\nX-Trailer: a\n\r\nGET /phantom HTTP/1.1\r\nContent-Length: 40\r\n\r\n";
        let r2 = b"POST /r/2 HTTP/1.1\r\nContent-Length: 30\r\n\r\n\
                   Transfer-Encoding: gzip\r\n\r\nab";
        let r3 = b"POST /r/3#x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        let wire = [&r1[..], r2, r3].concat();
        let (seen, notes, phase) = every_split(&wire);
        let want = [
            &r1[..],
            r2,
            b"POST /r/3#x HTTP/1.1\r\nX-Refused-Codings: gzip\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(targets(&notes), vec![(2, "/r/3#x".to_owned())]);
        assert_eq!(phase, Phase::Head);
        // Size lines as hyper takes them: white space and extensions.
        let ok = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3 \t;ext=\"x\"\r\nabc\r\nA;e\r\n0123456789\r\n0\r\n\r\nGET /b#c HTTP/1.1\r\n\r\n";
        let (_, notes, phase) = every_split(ok);
        assert_eq!(
            (targets(&notes), phase),
            (vec![(1, "/b#c".into())], Phase::Head)
        );
        // What hyper fails (the connection then closes) stops the watch.
        for bad in [
            &b"3\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabc\n0\r\n\r\n",
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3 4\r\nabc\r\n0\r\n\r\n",
            b"3;x\ny\r\nabc\r\n0\r\n\r\n",
            b"x\r\n",
            b"0\r\n\r\r",
        ] {
            let wire = [
                &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                bad,
            ]
            .concat();
            assert_eq!(
                every_split(&wire).2,
                Phase::Off,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Empty lines before a request line (CRLF or LF, as httparse skips
    /// them) do not end the head before it starts.
    #[test]
    fn empty_lines_before_the_request_line_are_skipped() {
        for before in ["\r\n", "\r\n\r\n", "\r\n\n", "\n\n", "\n\r\n\r\n"] {
            let wire = format!("{before}POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
            let (seen, notes, _) = every_split(wire.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(&seen),
                wire.replace("Transfer-Encoding", "X-Refused-Codings"),
                "{before:?}"
            );
            assert_eq!(notes.len(), 1, "{before:?}");
        }
        // A request line of nearly 64 KiB after one: hyper's, not a field
        // to cut (it used to panic the connection task).
        for before in ["", "\n", "\r\n", "\n\n\n\n\n"] {
            let mut wire = format!("{before}POST /a?").into_bytes();
            wire.resize(MAX_HEAD_BYTES - 11, b'a');
            wire.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            for step in [1000, 7919, wire.len()] {
                through(&wire, step, 8192);
            }
        }
    }

    /// A client pipelining more heads than [`MAX_PENDING`] ahead of the
    /// service is not read from until the service catches up, and every
    /// request is still checked.
    #[test]
    fn a_watch_far_ahead_of_the_service_waits_for_it() {
        let wire: String = (0..200)
            .map(|i| format!("GET /{i}#x HTTP/1.1\r\nHost: x\r\n\r\n"))
            .collect();
        let notes = std::sync::Arc::new(HeadNotes::default());
        let pieces = wire.as_bytes().chunks(300).map(<[u8]>::to_vec).collect();
        let mut watch = HeadWatch::new(Pieces(pieces), notes.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut space = vec![0; 8192];
        let (mut served, mut waited, mut most) = (0, 0, 0);
        loop {
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut watch).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => {
                    waited += 1;
                    let mut r = Request::get(format!("/{served}")).body(()).unwrap();
                    notes.apply(&mut r);
                    assert_eq!(r.extensions().get::<LostTrack>(), None, "{served}");
                    assert!(r.extensions().get::<FragmentTarget>().is_some());
                    served += 1;
                }
            }
            most = most.max(notes.pending.lock().unwrap().len());
        }
        while served < 200 {
            let mut r = Request::get(format!("/{served}")).body(()).unwrap();
            notes.apply(&mut r);
            assert!(r.extensions().get::<FragmentTarget>().is_some(), "{served}");
            served += 1;
        }
        assert!(waited > 50, "{waited}");
        assert!(most < MAX_PENDING + 10, "{most}");
    }

    /// One request for the property below: its wire form, what hyper should
    /// read of it, and its note.
    fn request(
        n: usize,
        refused: &[(usize, usize)],
        malformed: &[(usize, usize)],
        chunked: bool,
        hash: bool,
        body: &[u8],
        style: u8,
    ) -> (Vec<u8>, Vec<u8>, Option<Note>) {
        const REFUSED: [&str; 3] = [
            "Transfer-Encoding: gzip",
            "TRANSFER-ENCODING: chunked, br",
            "transfer-encoding:\tdeflate ",
        ];
        let target = format!("/r/{n}{}", if hash { "#f" } else { "" });
        let mut fields = vec![("Host: x".to_owned(), None)];
        fields.push(if chunked {
            ("Transfer-Encoding: chunked".to_owned(), None)
        } else {
            (format!("Content-Length: {}", body.len()), None)
        });
        fields.push(("X-Note: Transfer-Encoding: gzip".to_owned(), None));
        let mut codings = Vec::new();
        for &(which, at) in refused {
            let line = REFUSED[which % REFUSED.len()];
            let renamed = format!("X-Refused-Codings{}", &line[17..]);
            fields.insert(at % (fields.len() + 1), (line.to_owned(), Some(renamed)));
        }
        for &(which, at) in malformed {
            let line = MALFORMED[which % MALFORMED.len()];
            let harmless = format!("{}:", "X".repeat(line.len() - 1));
            fields.insert(at % (fields.len() + 1), (line.to_owned(), Some(harmless)));
        }
        let (mut wire, mut want) = (Vec::new(), Vec::new());
        let start = format!("POST {target} HTTP/1.1\r\n");
        wire.extend_from_slice(start.as_bytes());
        want.extend_from_slice(start.as_bytes());
        for (line, renamed) in &fields {
            if renamed.as_ref().is_some_and(|r| r.starts_with("X-Refused")) {
                codings.push(line[18..].trim().as_bytes().to_vec());
            }
            wire.extend_from_slice(format!("{line}\r\n").as_bytes());
            want.extend_from_slice(format!("{}\r\n", renamed.as_ref().unwrap_or(line)).as_bytes());
        }
        let mut framed = b"\r\n".to_vec();
        if chunked {
            // Size lines and trailers as hyper takes them: leading zeros,
            // upper-case hex, white space, extensions; trailer lines that
            // look like refused fields (never renamed: not a head) or hold a
            // bare LF (a trailer line runs to its CR).
            for piece in body.chunks(7) {
                let size = if style & 1 == 0 {
                    format!("{:x}", piece.len())
                } else {
                    format!("0{:X}", piece.len())
                };
                let ext = if style & 2 == 0 {
                    ""
                } else {
                    " \t;a=\"b;c\";d"
                };
                framed.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
            }
            framed.extend_from_slice(b"0\r\n");
            if style & 4 != 0 {
                framed.extend_from_slice(b"Transfer-Encoding: gzip\r\n");
            }
            if style & 8 != 0 {
                framed.extend_from_slice(b"X-A: b\nPOST /x#y HTTP/1.1\r\n");
            }
            framed.extend_from_slice(b"\r\n");
        } else {
            framed.extend_from_slice(body);
        }
        wire.extend_from_slice(&framed);
        want.extend_from_slice(&framed);
        let note = (hash || !codings.is_empty() || !malformed.is_empty()).then(|| Note {
            method: "POST".into(),
            target,
            codings,
            too_large: false,
            malformed: !malformed.is_empty(),
            invalid_length: false,
            len: 0,
        });
        (wire, want, note)
    }

    /// Field lines hyper refuses a head for (each sent with a CRLF).
    const MALFORMED: [&str; 10] = [
        "X Bad: a",
        "X-Bad: a\x01b",
        "Content-Length : 5",
        " folded onto the line before",
        "NoColon",
        "X-Bad: a\0b",
        "X-Bad: a\rb",
        ": no name",
        "Transfer-Encoding: chunked\x7f",
        "\rX-Bad: a",
    ];

    proptest::proptest! {
        /// Whatever the requests and however they are split, hyper reads
        /// them as sent but for the refused field names and the malformed
        /// field lines made harmless, and each note
        /// belongs to its request: bodies and trailers full of
        /// `Transfer-Encoding` lines and request lines included.
        #[test]
        fn hyper_reads_what_was_sent_but_refused_field_names(
            requests in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..3, 0usize..8), 0..3),
                    proptest::collection::vec((0usize..10, 0usize..8), 0..2),
                    proptest::bool::ANY,
                    proptest::bool::ANY,
                    0u8..16,
                    proptest::collection::vec(
                        proptest::sample::select(vec![
                            &b"\r\n"[..], b"Transfer-Encoding: gzip", b"\n", b"a", b"POST /x HTTP/1.1",
                        ]),
                        0..12,
                    ),
                ),
                1..5,
            ),
            step in 1usize..80,
        ) {
            let (mut wire, mut want, mut notes) = (Vec::new(), Vec::new(), Vec::new());
            for (n, (refused, malformed, chunked, hash, style, body)) in requests.iter().enumerate() {
                let (w, h, note) = request(n, refused, malformed, *chunked, *hash, &body.concat(), *style);
                wire.extend_from_slice(&w);
                want.extend_from_slice(&h);
                notes.extend(note.map(|note| (n as u64, note)));
            }
            let (seen, noted, phase) = through(&wire, step, 8192);
            proptest::prop_assert_eq!(String::from_utf8_lossy(&seen), String::from_utf8_lossy(&want));
            proptest::prop_assert_eq!(noted, notes);
            proptest::prop_assert_eq!(phase, Phase::Head);
        }
    }
}
