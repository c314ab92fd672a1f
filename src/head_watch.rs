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
//!   as sent, and the framing check (`framing.rs`) answers `501` and closes
//!   the connection. hyper frames the renamed request by what is left (a
//!   `chunked` field, a `Content-Length`, or no body), which does not matter:
//!   nothing of it is read, and the connection is closed after the answer.
//!
//! [`HeadWatch`] wraps a client connection's socket. It follows the HTTP/1.1
//! messages in what hyper reads: it parses each request head (`httparse`, as
//! hyper does) and skips its body by the same framing rules
//! (`Content-Length`, or the chunked coding to its last chunk and trailers),
//! so it knows where the next head starts. What it notes about a head goes,
//! with the head's number on the connection, into the [`HeadNotes`] it shares
//! with the connection's service. The service numbers the requests it is
//! called with in the same order (HTTP/1.1 serves them one at a time, in
//! order) and applies the note to its request ([`HeadNotes::apply`]): a `#`
//! marks the request with [`FragmentTarget`] and routing refuses it (`400
//! invalid_id` when the `#` is in a target ID, else `400 invalid_request`).
//!
//! A field line is only renamed whole: the watch holds back from hyper a
//! partial line that may still become a `Transfer-Encoding` field (at most
//! [`MAX_HELD`] bytes) until its line end arrives, so a head dripped byte by
//! byte is treated as one sent in a single write.
//!
//! Whatever the watch does not follow it stops watching (fail-open: the
//! request then behaves as before, never worse): an HTTP/2 preface, a head
//! hyper will refuse (it then closes the connection), `CONNECT`, a head over
//! [`MAX_HEAD_BYTES`]. A noted target is also checked against what hyper
//! parsed (the target up to the `#`), so a watch that lost the message
//! boundaries could not mark the wrong request.
//!
//! Cost: one more pass per request head (a parse, and a search for each line
//! end) and a counter per body read; body bytes are skipped, not looked at
//! (except chunk-size lines).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::MAX_HEAD_BYTES;

/// Header fields parsed per head (hyper's own default limit).
const MAX_FIELDS: usize = 100;
/// Noted heads waiting for their request; past this the watch stops noting
/// (a client pipelining that many malformed requests).
const MAX_PENDING: usize = 64;
/// The longest partial line held back from hyper: a `Transfer-Encoding`
/// field line longer than this is passed on as it comes (and hyper refuses
/// it with its own `400` when its last coding is not `chunked`).
pub const MAX_HELD: usize = 1024;
/// The name a refused `Transfer-Encoding` field line is given on its way to
/// hyper: as long as `Transfer-Encoding`, so the head keeps its length.
pub const RENAMED: &[u8; 17] = b"X-Refused-Codings";
/// A `Transfer-Encoding` field line's start, as httparse takes it (no white
/// space before the colon).
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";

/// What a connection's watch and its service share.
#[derive(Debug, Default)]
pub struct HeadNotes {
    /// Notes on request heads, with their number on the connection.
    pending: Mutex<VecDeque<(u64, Note)>>,
    /// How many requests the service has been called with.
    served: AtomicU64,
}

/// What the watch saw in one request head that hyper's parse loses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Note {
    /// The request-target as sent, when it has a `#`.
    target: Option<String>,
    /// The values of `Transfer-Encoding` field lines renamed to [`RENAMED`],
    /// as sent (white space around them trimmed).
    codings: Vec<Vec<u8>>,
}

/// Marks a request whose request-target, as sent, had a `#`: the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentTarget(pub String);

impl FragmentTarget {
    /// The path as sent (up to a `?` that comes before the `#`), `#` kept.
    pub fn path(&self) -> &str {
        let t = self.0.as_str();
        match (t.find('?'), t.find('#')) {
            (Some(q), Some(h)) if q < h => &t[..q],
            _ => t,
        }
    }
}

impl HeadNotes {
    /// The service's turn: the next request on the connection. Puts back what
    /// hyper's parse lost: a `#` target (if it agrees with what hyper parsed)
    /// as a [`FragmentTarget`] extension, renamed `Transfer-Encoding` fields
    /// as they were sent.
    pub fn apply<B>(&self, req: &mut Request<B>) {
        let Some(note) = self.next_request() else {
            return;
        };
        if let Some(target) = note.target {
            let before = target.split('#').next().unwrap_or_default();
            let parsed = req.uri().path_and_query().map_or("", |pq| pq.as_str());
            if !parsed.is_empty() && before.ends_with(parsed) {
                req.extensions_mut().insert(FragmentTarget(target));
            }
        }
        if !note.codings.is_empty() {
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

    fn next_request(&self) -> Option<Note> {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().expect("head notes lock");
        while pending.front().is_some_and(|(k, _)| *k < n) {
            pending.pop_front();
        }
        if pending.front().is_none_or(|(k, _)| *k != n) {
            return None;
        }
        pending.pop_front().map(|(_, note)| note)
    }

    fn has_room(&self) -> bool {
        self.pending.lock().expect("head notes lock").len() < MAX_PENDING
    }

    /// Notes head `n`. A note with renamed codings is always kept (the
    /// watch renames only when [`Self::has_room`], and only it adds notes);
    /// a note of a `#` alone is dropped when full (`false`).
    fn note(&self, n: u64, note: Note) -> bool {
        let mut pending = self.pending.lock().expect("head notes lock");
        if pending.len() >= MAX_PENDING && note.codings.is_empty() {
            return false;
        }
        pending.push_back((n, note));
        true
    }
}

/// Where the watch is in the stream of HTTP/1.1 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (buffered in `head` while incomplete).
    Head,
    /// This many bytes of a body with a declared length to go.
    Body(u64),
    /// A chunk-size line: its value so far, and whether a non-hex byte
    /// (extension, white space, CR) ended the digits.
    ChunkSize(u64, bool),
    /// This many bytes of chunk data to go.
    ChunkData(u64),
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk; whether the line so far is empty.
    Trailers(bool),
    /// Not following this connection (any more).
    Off,
}

/// Where the line scan of the head being read is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Before the request line (empty lines before it are skipped, as
    /// httparse does).
    BeforeRequest,
    /// At the start of a field line.
    Start,
    /// Inside a line already judged (or the request line).
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
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: Phase::Head,
            head: Vec::new(),
            heads: 0,
            line: Line::BeforeRequest,
            codings: Vec::new(),
        }
    }

    /// Follows `data`, renaming refused `Transfer-Encoding` field lines in
    /// place. Returns how many bytes it took: all of them, or up to a
    /// partial line to hold back and feed again with what follows it.
    fn feed(&mut self, data: &mut [u8], notes: &HeadNotes) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            match self.phase {
                Phase::Off => return data.len(),
                Phase::Head => {
                    let hold = self.scan_lines(&mut data[pos..], notes);
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
                        self.off();
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
                Phase::ChunkSize(size, ended) => {
                    let b = data[pos];
                    pos += 1;
                    self.phase = match b {
                        b'\n' if size == 0 => Phase::Trailers(true),
                        b'\n' => Phase::ChunkData(size),
                        _ if !ended => match (b as char).to_digit(16) {
                            Some(d) => match size.checked_mul(16) {
                                Some(v) => Phase::ChunkSize(v + u64::from(d), false),
                                None => Phase::Off,
                            },
                            None => Phase::ChunkSize(size, true),
                        },
                        _ => Phase::ChunkSize(size, true),
                    };
                }
                Phase::ChunkData(left) => {
                    let n = left.min((data.len() - pos) as u64);
                    pos += n as usize;
                    self.phase = if left == n {
                        Phase::ChunkEnd
                    } else {
                        Phase::ChunkData(left - n)
                    };
                }
                Phase::ChunkEnd => match memchr::memchr(b'\n', &data[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.phase = Phase::ChunkSize(0, false);
                    }
                    None => pos = data.len(),
                },
                Phase::Trailers(empty) => {
                    let b = data[pos];
                    pos += 1;
                    self.phase = match b {
                        b'\n' if empty => Phase::Head,
                        b'\n' => Phase::Trailers(true),
                        b'\r' => Phase::Trailers(empty),
                        _ => Phase::Trailers(false),
                    };
                }
            }
        }
        data.len()
    }

    /// The line scan of a head: goes through the lines of `data` (the head
    /// being read, from where the last scan stopped) up to the empty line
    /// that ends it, and renames each `Transfer-Encoding` field line hyper
    /// would refuse the head for. `Some(at)`: `data` ends in a partial line
    /// from `at` that may still become such a field line, to hold back.
    fn scan_lines(&mut self, data: &mut [u8], notes: &HeadNotes) -> Option<usize> {
        let mut i = 0;
        let mut room = None;
        while i < data.len() {
            match self.line {
                Line::Done => return None,
                Line::Rest => match memchr::memchr(b'\n', &data[i..]) {
                    Some(k) => {
                        i += k + 1;
                        self.line = Line::Start;
                    }
                    None => return None,
                },
                Line::BeforeRequest => {
                    if !matches!(data[i], b'\r' | b'\n') {
                        self.line = Line::Rest;
                    } else if data[i] == b'\n' {
                        i += 1;
                    } else {
                        // A CR: the rest of an empty line.
                        self.line = Line::Rest;
                    }
                }
                Line::Start => {
                    if matches!(data[i], b'\r' | b'\n') {
                        // The empty line that ends the head (or a line hyper
                        // refuses): nothing after it is the head's.
                        self.line = Line::Done;
                        return None;
                    }
                    let rest = &data[i..];
                    let start = &rest[..rest.len().min(TRANSFER_ENCODING.len())];
                    if !start.eq_ignore_ascii_case(&TRANSFER_ENCODING[..start.len()]) {
                        self.line = Line::Rest;
                        continue;
                    }
                    let Some(k) = memchr::memchr(b'\n', rest) else {
                        let room = *room.get_or_insert_with(|| notes.has_room());
                        if rest.len() <= MAX_HELD && room {
                            return Some(i);
                        }
                        self.line = Line::Rest;
                        return None;
                    };
                    let line = &mut data[i..i + k];
                    if line.len() >= TRANSFER_ENCODING.len() {
                        let value = line[TRANSFER_ENCODING.len()..]
                            .trim_ascii_end()
                            .trim_ascii_start();
                        if !hyper_reads_chunked(value)
                            && *room.get_or_insert_with(|| notes.has_room())
                        {
                            self.codings.push(value.to_vec());
                            line[..RENAMED.len()].copy_from_slice(RENAMED);
                        }
                    }
                    i += k + 1;
                }
            }
        }
        None
    }

    fn off(&mut self) {
        self.phase = Phase::Off;
        self.head = Vec::new();
        self.codings = Vec::new();
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
                self.off();
                return Some(data.len());
            }
        };
        let n = self.heads;
        self.heads += 1;
        self.line = Line::BeforeRequest;
        let note = Note {
            target: req
                .path
                .filter(|target| target.contains('#'))
                .map(str::to_owned),
            codings: std::mem::take(&mut self.codings),
        };
        if req.method == Some("CONNECT") {
            self.off();
            return Some(data.len());
        }
        if note != Note::default() && !notes.note(n, note) {
            self.off();
            return Some(data.len());
        }
        // The body's framing, as hyper reads it (RFC 9112 §6.3): a
        // Transfer-Encoding ending in `chunked` wins over Content-Length;
        // any other Transfer-Encoding, or disagreeing lengths, hyper refuses.
        let mut te = None;
        let mut length = None;
        for field in req.headers.iter() {
            if field.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(field.value);
            } else if field.name.eq_ignore_ascii_case("content-length") {
                for part in field.value.split(|&b| b == b',') {
                    let part = part.trim_ascii();
                    let v = std::str::from_utf8(part)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok());
                    match (v, length) {
                        (Some(v), None) => length = Some(v),
                        (Some(v), Some(l)) if v == l => {}
                        _ => {
                            self.off();
                            return Some(data.len());
                        }
                    }
                }
            }
        }
        self.phase = match te {
            Some(value) if hyper_reads_chunked(value) => Phase::ChunkSize(0, false),
            Some(_) => Phase::Off,
            None => match length {
                Some(0) | None => Phase::Head,
                Some(l) => Phase::Body(l),
            },
        };
        Some(len)
    }
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
            if this.tracker.phase == Phase::Off {
                if this.held.is_empty() {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                let n = this.held.len().min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.drain(..n);
                return Poll::Ready(Ok(()));
            }
            let held = this.held.len();
            if held > 0 && held >= buf.remaining() {
                // No room to read after what is held: give up following.
                this.tracker.off();
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
                    this.tracker.off();
                }
                return Poll::Ready(Ok(()));
            }
            let read = &mut buf.filled_mut()[start..];
            let took = this.tracker.feed(read, &this.notes);
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
        let notes = std::sync::Arc::new(HeadNotes::default());
        let mut pieces = VecDeque::new();
        for piece in wire.chunks(step) {
            pieces.push_back(piece.to_vec());
            pieces.push_back(Vec::new());
        }
        let mut watch = HeadWatch::new(Pieces(pieces), notes.clone());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        let mut space = vec![0; read];
        loop {
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut watch).poll_read(&mut cx, &mut buf) {
                Poll::Pending => continue,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => seen.extend_from_slice(buf.filled()),
            }
        }
        let pending = notes.pending.lock().unwrap().iter().cloned().collect();
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
            .filter_map(|(n, note)| note.target.clone().map(|t| (*n, t)))
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
            b"POST /r/d?q=1#e HTTP/1.1\r\nHost: x\r\ncontent-length: 2, 2\r\n\r\nab",
        );
        let (seen, notes, phase) = every_split(&wire);
        assert_eq!(seen, wire, "passed on unchanged");
        assert_eq!(
            targets(&notes),
            vec![(1, "/r/b#c".to_owned()), (3, "/r/d?q=1#e".to_owned())]
        );
        assert_eq!(phase, Phase::Head);
    }

    #[test]
    fn stops_where_hyper_would_refuse_or_change_protocol() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(every_split(h2).2, Phase::Off);
        let lengths = b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(every_split(lengths).2, Phase::Off);
        let connect = b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\nGET /#x HTTP/1.1\r\n\r\n";
        let (seen, notes, phase) = every_split(connect);
        assert_eq!(
            (seen.as_slice(), notes, phase),
            (&connect[..], vec![], Phase::Off)
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 100, b'a');
        assert_eq!(through(&huge, 4096, 8192).2, Phase::Off);
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
                            target: None,
                            codings
                        }
                    ),
                    (
                        1,
                        Note {
                            target: Some("/n#x".into()),
                            codings: vec![b"gzip".to_vec()]
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
        wire.extend_from_slice(b"1C\r\nTransfer-Encoding: gzip\r\n\r\n\r\n0\r\n\r\n");
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
        let req = |s: &str| {
            let mut r = Request::get(s).body(()).unwrap();
            r.headers_mut()
                .insert("x-refused-codings", HeaderValue::from_static("x"));
            notes.apply(&mut r);
            r
        };
        let a = req("/a");
        assert_eq!(a.extensions().get::<FragmentTarget>(), None);
        assert!(a.headers().contains_key("x-refused-codings"), "untouched");
        assert_eq!(
            req("/r/b").extensions().get::<FragmentTarget>(),
            Some(&FragmentTarget("/r/b#c".into()))
        );
        let d = req("/d");
        assert_eq!(d.extensions().get::<FragmentTarget>(), None);
        assert_eq!(
            d.headers()
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .collect::<Vec<_>>(),
            ["x"]
        );
        assert!(!d.headers().contains_key("x-refused-codings"));
        // A note that does not match what hyper parsed marks nothing.
        t.feed(&mut b"GET /e#f HTTP/1.1\r\n\r\n".to_vec(), &notes);
        assert_eq!(req("/other").extensions().get::<FragmentTarget>(), None);
        assert_eq!(FragmentTarget("/r/b#c?d".into()).path(), "/r/b#c?d");
        assert_eq!(FragmentTarget("/r/b?c#d".into()).path(), "/r/b");
    }

    /// One request for the property below: its wire form, what hyper should
    /// read of it, and its note.
    fn request(
        n: usize,
        refused: &[(usize, usize)],
        chunked: bool,
        hash: bool,
        body: &[u8],
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
        let (mut wire, mut want) = (Vec::new(), Vec::new());
        let start = format!("POST {target} HTTP/1.1\r\n");
        wire.extend_from_slice(start.as_bytes());
        want.extend_from_slice(start.as_bytes());
        for (line, renamed) in &fields {
            if renamed.is_some() {
                codings.push(line[18..].trim().as_bytes().to_vec());
            }
            wire.extend_from_slice(format!("{line}\r\n").as_bytes());
            want.extend_from_slice(format!("{}\r\n", renamed.as_ref().unwrap_or(line)).as_bytes());
        }
        let mut framed = b"\r\n".to_vec();
        if chunked {
            for piece in body.chunks(7) {
                framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
            }
            framed.extend_from_slice(b"0\r\n\r\n");
        } else {
            framed.extend_from_slice(body);
        }
        wire.extend_from_slice(&framed);
        want.extend_from_slice(&framed);
        let note = (hash || !codings.is_empty()).then(|| Note {
            target: hash.then_some(target),
            codings,
        });
        (wire, want, note)
    }

    proptest::proptest! {
        /// Whatever the requests and however they are split, hyper reads
        /// them as sent but for the refused field names, and each note
        /// belongs to its request: bodies full of `Transfer-Encoding` lines
        /// included.
        #[test]
        fn hyper_reads_what_was_sent_but_refused_field_names(
            requests in proptest::collection::vec(
                (
                    proptest::collection::vec((0usize..3, 0usize..8), 0..3),
                    proptest::bool::ANY,
                    proptest::bool::ANY,
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
            for (n, (refused, chunked, hash, body)) in requests.iter().enumerate() {
                let (w, h, note) = request(n, refused, *chunked, *hash, &body.concat());
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
