//! Request path, step 1½ (see `ARCHITECTURE.md`): request-targets with a `#`.
//!
//! A request-target never holds a fragment (RFC 9112 §3.2: `#` is not allowed
//! in it), but hyper's HTTP/1.1 parser takes one anyway and the `http` crate
//! then drops everything from the `#` on: `POST /api/image/v1.0/report/a#b`
//! reached the router as `/api/image/v1.0/report/a`, and the image went to
//! report `a`. Nothing of the cut is left in the parsed request, so it is
//! seen here, on the bytes, before hyper parses them.
//!
//! [`FragmentWatch`] wraps a client connection's socket. It follows the
//! HTTP/1.1 messages in what hyper reads: it parses each request head
//! (`httparse`, as hyper does) and skips its body by the same framing rules
//! (`Content-Length`, or the chunked coding to its last chunk and trailers),
//! so it knows where the next head starts. A head whose request-target has a
//! `#` is noted, with its number on the connection, in the [`Fragments`] it
//! shares with the connection's service. The service numbers the requests it
//! is called with in the same order (HTTP/1.1 serves them one at a time, in
//! order) and marks the request with [`FragmentTarget`]; routing refuses it
//! (`400 invalid_id` when the `#` is in a target ID, else `400
//! invalid_request`).
//!
//! Whatever the watch does not follow it stops watching (fail-open: the
//! request then behaves as before, never worse): an HTTP/2 preface, a head
//! hyper will refuse (it then closes the connection), `CONNECT`, a head over
//! [`MAX_HEAD_BYTES`]. A noted target is also checked against what hyper
//! parsed (the target up to the `#`), so a watch that lost the message
//! boundaries could not mark the wrong request.
//!
//! Cost: one parse per request head and a counter per body read; body bytes
//! are skipped, not looked at (except chunk-size lines).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::framing::MAX_HEAD_BYTES;

/// Header fields parsed per head (hyper's own default limit).
const MAX_FIELDS: usize = 100;
/// Noted targets waiting for their request; past this the watch stops
/// (a client pipelining that many malformed requests).
const MAX_PENDING: usize = 64;

/// What a connection's watch and its service share.
#[derive(Debug, Default)]
pub struct Fragments {
    /// Request heads with a `#` in their target: (number on the connection,
    /// the target as sent).
    pending: Mutex<VecDeque<(u64, String)>>,
    /// How many requests the service has been called with.
    served: AtomicU64,
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

impl Fragments {
    /// The service's turn: the next request on the connection. Its target as
    /// sent if that had a `#` (and agrees with what hyper parsed, `uri`).
    pub fn next_request(&self, uri: &Uri) -> Option<FragmentTarget> {
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().expect("fragments lock");
        while pending.front().is_some_and(|(k, _)| *k < n) {
            pending.pop_front();
        }
        if pending.front().is_none_or(|(k, _)| *k != n) {
            return None;
        }
        let (_, target) = pending.pop_front()?;
        let before = target.split('#').next().unwrap_or_default();
        let parsed = uri.path_and_query().map_or("", |pq| pq.as_str());
        (!parsed.is_empty() && before.ends_with(parsed)).then_some(FragmentTarget(target))
    }

    fn note(&self, n: u64, target: &str) -> bool {
        let mut pending = self.pending.lock().expect("fragments lock");
        if pending.len() >= MAX_PENDING {
            return false;
        }
        pending.push_back((n, target.to_owned()));
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

/// The watch's state: sans-IO, fed every byte read from the client.
#[derive(Debug)]
struct Tracker {
    phase: Phase,
    head: Vec<u8>,
    heads: u64,
}

impl Tracker {
    fn new() -> Self {
        Self {
            phase: Phase::Head,
            head: Vec::new(),
            heads: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8], fragments: &Fragments) {
        while !data.is_empty() {
            match self.phase {
                Phase::Off => return,
                Phase::Head => {
                    let used = if self.head.is_empty() {
                        // The common case: the whole head in this read.
                        match self.parse_head(data, fragments) {
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
                        match self.parse_head(&head, fragments) {
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
                    data = &data[used..];
                }
                Phase::Body(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.phase = if left == n {
                        Phase::Head
                    } else {
                        Phase::Body(left - n)
                    };
                }
                Phase::ChunkSize(size, ended) => {
                    let b = data[0];
                    data = &data[1..];
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
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.phase = if left == n {
                        Phase::ChunkEnd
                    } else {
                        Phase::ChunkData(left - n)
                    };
                }
                Phase::ChunkEnd => {
                    match memchr::memchr(b'\n', data) {
                        Some(i) => {
                            data = &data[i + 1..];
                            self.phase = Phase::ChunkSize(0, false);
                        }
                        None => data = &[],
                    };
                }
                Phase::Trailers(empty) => {
                    let b = data[0];
                    data = &data[1..];
                    self.phase = match b {
                        b'\n' if empty => Phase::Head,
                        b'\n' => Phase::Trailers(true),
                        b'\r' => Phase::Trailers(empty),
                        _ => Phase::Trailers(false),
                    };
                }
            }
        }
    }

    fn off(&mut self) {
        self.phase = Phase::Off;
        self.head = Vec::new();
    }

    /// Parses a head at the start of `data`. `None`: incomplete. Otherwise
    /// how many bytes it took, with the phase set for what follows.
    fn parse_head(&mut self, data: &[u8], fragments: &Fragments) -> Option<usize> {
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
        if req.method == Some("CONNECT") {
            self.off();
            return Some(data.len());
        }
        if let Some(target) = req.path
            && target.contains('#')
            && !fragments.note(n, target)
        {
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
            Some(value) => {
                let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    Phase::ChunkSize(0, false)
                } else {
                    Phase::Off
                }
            }
            None => match length {
                Some(0) | None => Phase::Head,
                Some(l) => Phase::Body(l),
            },
        };
        Some(len)
    }
}

/// A client connection's socket, with the watch over what is read from it.
#[derive(Debug)]
pub struct FragmentWatch<T> {
    inner: T,
    tracker: Tracker,
    fragments: std::sync::Arc<Fragments>,
}

impl<T> FragmentWatch<T> {
    pub fn new(inner: T, fragments: std::sync::Arc<Fragments>) -> Self {
        Self {
            inner,
            tracker: Tracker::new(),
            fragments,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FragmentWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.tracker.phase != Phase::Off
            && let Poll::Ready(Ok(())) = polled
        {
            this.tracker.feed(&buf.filled()[before..], &this.fragments);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FragmentWatch<T> {
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

    /// Feeds `wire` split at every `step` bytes; the noted (number, target).
    fn noted(wire: &[u8], step: usize) -> (Vec<(u64, String)>, Phase) {
        let fragments = Fragments::default();
        let mut t = Tracker::new();
        for piece in wire.chunks(step) {
            t.feed(piece, &fragments);
        }
        let pending = fragments.pending.lock().unwrap().iter().cloned().collect();
        (pending, t.phase)
    }

    fn every_split(wire: &[u8]) -> (Vec<(u64, String)>, Phase) {
        let whole = noted(wire, wire.len().max(1));
        for step in 1..wire.len().min(200) {
            assert_eq!(noted(wire, step), whole, "split every {step} bytes");
        }
        whole
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
        let (pending, phase) = every_split(&wire);
        assert_eq!(
            pending,
            vec![(1, "/r/b#c".to_owned()), (3, "/r/d?q=1#e".to_owned())]
        );
        assert_eq!(phase, Phase::Head);
    }

    #[test]
    fn stops_where_hyper_would_refuse_or_change_protocol() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(every_split(h2).1, Phase::Off);
        let gzip = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nGET /#x HTTP/1.1\r\n\r\n";
        assert_eq!(every_split(gzip), (vec![], Phase::Off));
        let lengths = b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(every_split(lengths).1, Phase::Off);
        let connect = b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\nGET /#x HTTP/1.1\r\n\r\n";
        assert_eq!(every_split(connect), (vec![], Phase::Off));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 100, b'a');
        assert_eq!(noted(&huge, 4096).1, Phase::Off);
    }

    #[test]
    fn the_service_gets_the_mark_of_its_own_request_only() {
        let fragments = Fragments::default();
        let mut t = Tracker::new();
        t.feed(
            b"GET /a HTTP/1.1\r\n\r\nPOST /r/b#c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
            &fragments,
        );
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(fragments.next_request(&uri("/a")), None);
        assert_eq!(
            fragments.next_request(&uri("/r/b")),
            Some(FragmentTarget("/r/b#c".into()))
        );
        assert_eq!(fragments.next_request(&uri("/d")), None);
        // A note that does not match what hyper parsed marks nothing.
        t.feed(b"GET /e#f HTTP/1.1\r\n\r\n", &fragments);
        assert_eq!(fragments.next_request(&uri("/other")), None);
        assert_eq!(FragmentTarget("/r/b#c?d".into()).path(), "/r/b#c?d");
        assert_eq!(FragmentTarget("/r/b?c#d".into()).path(), "/r/b");
    }
}
