#![no_main]
//! The HTTP/2 follower's HPACK decoder (`src/h2_watch.rs`) against the h2
//! crate's, through a real hyper HTTP/2 server.
//!
//! The watch decodes every header block a second time with a decoder of its
//! own, to see `#`s in `:path`s that the `http` crate drops. Its dynamic
//! table must stay in step with the h2 layer's: a block it decodes otherwise
//! could hide a `#`, and a block it cannot decode fails a connection hyper
//! would have served.
//!
//! The input, after an 8-byte control block (a PRNG seed; bit 0 of byte 0:
//! split), is a series of header blocks, each a 2-byte big-endian length
//! (modulo 4096) and that many bytes. A client sends the preface, an empty
//! SETTINGS frame, then each block on streams 1, 3, 5, …, one block at a
//! time: as one HEADERS frame (END_HEADERS, END_STREAM), or, split, as a
//! HEADERS frame (END_STREAM) and one or two CONTINUATION frames cut at
//! random points, the last with END_HEADERS. The server (the gateway's
//! HTTP/2 settings from `server.rs`) runs until it has done all it can with
//! a block before the next one comes. The same blocks go through the
//! watch's decoder (`Hpack`) and its frame follower (`H2Tracker`, fed in
//! pieces of 1–64 bytes when split). Bit 1 of byte 0, the rich mode: a
//! block may go on a stream used before (trailers, or a stream h2 has ended
//! or reset), without END_STREAM, in a PUSH_PROMISE frame, padded (perhaps
//! past its frame), with a priority (perhaps on its own stream), and other
//! frames go between blocks ([`other_frames`]). The target asserts, block
//! by block, while hyper's connection lives:
//! - a block the watch cannot decode is one that ends hyper's connection
//!   (a compression error), or one with an empty field name, which the
//!   watch refuses and h2 reads past across a CONTINUATION (the target
//!   stops there); a block h2 does not decode (its stream depends
//!   on itself, or its padding runs past the frame) is not served, and
//!   only the first keeps the connection;
//! - a request hyper served has the watch's `:method`, its `:path` up to a
//!   `#` as the path and query, and its other fields (read as the h2 layer
//!   reads them: the first `:method` and `:path`, before any regular
//!   field; no connection-specific fields);
//! - the frame follower refuses the connection exactly at the first block
//!   whose `:path` has a `#`, that the decoder cannot decode, that comes in
//!   a PUSH_PROMISE, whose padding runs past its frame, or that holds a
//!   pseudo-header field on a stream used before (trailers, as far as the
//!   follower can tell);
//! - a request hyper served came from a block on a new stream;
//! - nothing panics or hangs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use concur_gateway::h2_watch::{H2Tracker, Hpack, PREFACE, Refused};
use concur_gateway::server::{
    H2_CONNECTION_WINDOW, H2_MAX_FRAME_SIZE, H2_MAX_HEADER_LIST, H2_MAX_LOCAL_ERROR_RESETS,
    H2_STREAM_WINDOW,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;

#[path = "net.rs"]
mod net;
#[path = "rng.rs"]
mod rng;
use tokio::io::{AsyncRead, ReadBuf};

/// A request as hyper served it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    method: String,
    path_and_query: String,
    /// Regular fields, sorted.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The client: the bytes of the block being sent, then `Pending` until the
/// next block is handed over.
#[derive(Default)]
struct Wire {
    now: VecDeque<u8>,
}

struct Client(Rc<RefCell<Wire>>);

impl AsyncRead for Client {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut wire = self.0.borrow_mut();
        if wire.now.is_empty() {
            return Poll::Pending;
        }
        let n = wire.now.len().min(buf.remaining());
        let piece: Vec<u8> = wire.now.drain(..n).collect();
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

net::drop_writes!(Client);

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// hyper's executor for the streams' tasks: they are polled by hand with
/// the connection ([`until_quiet`]).
#[derive(Clone, Default)]
struct Local(Rc<RefCell<Vec<Task>>>);

impl<F: Future + 'static> hyper::rt::Executor<F> for Local {
    fn execute(&self, fut: F) {
        self.0.borrow_mut().push(Box::pin(async move {
            fut.await;
        }));
    }
}

/// Polls the connection and its streams' tasks until nothing is left to do
/// before more bytes come. Returns whether the connection ended.
fn until_quiet(
    conn: &mut Pin<Box<dyn Future<Output = Result<(), hyper::Error>>>>,
    tasks: &Local,
) -> bool {
    net::until_quiet(|cx| {
        let ended = conn.as_mut().poll(cx).is_ready();
        let running = std::mem::take(&mut *tasks.0.borrow_mut());
        for mut task in running {
            if task.as_mut().poll(cx).is_pending() {
                tasks.0.borrow_mut().push(task);
            }
        }
        ended
    })
}

/// A frame header (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the watch's decoder makes of a block, read as the h2 layer reads a
/// request: or `None` when it cannot decode it.
#[derive(Debug)]
struct Decoded {
    /// The first `:method` and `:path` before any regular field: the h2
    /// layer keeps those (a repeated one, or one after a regular field,
    /// makes the request malformed; when the block goes on in a
    /// CONTINUATION, h2 0.4 forgets that and serves the request without
    /// the field).
    method: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    /// Any `:path` has a `#`: what the follower refuses.
    hash: bool,
    /// Any pseudo-header field: what the follower refuses in trailers.
    pseudo: bool,
    /// Regular fields the h2 layer keeps (not the connection-specific ones,
    /// which make the request malformed, as above), sorted.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

fn decode(hpack: &mut Hpack, block: &[u8]) -> Option<Decoded> {
    let mut d = Decoded {
        method: None,
        path: None,
        hash: false,
        pseudo: false,
        fields: Vec::new(),
    };
    let mut regular = false;
    hpack
        .decode(block, |name, value| {
            if name.starts_with(b":") {
                d.pseudo = true;
                d.hash |= name == b":path" && value.contains(&b'#');
                let slot = match name {
                    _ if regular => return,
                    b":method" => &mut d.method,
                    b":path" => &mut d.path,
                    _ => return,
                };
                if slot.is_none() {
                    *slot = Some(value.to_vec());
                }
                return;
            }
            regular = true;
            let connection_specific = matches!(
                name,
                b"connection"
                    | b"keep-alive"
                    | b"proxy-connection"
                    | b"transfer-encoding"
                    | b"upgrade"
            ) || (name == b"te" && value != b"trailers");
            if !connection_specific {
                d.fields.push((name.to_vec(), value.to_vec()));
            }
        })
        .ok()?;
    d.fields.sort();
    Some(d)
}

/// How a block is sent.
#[derive(Debug)]
struct Shape {
    stream: u32,
    /// No block was sent on the stream before.
    new_stream: bool,
    /// In a PUSH_PROMISE frame (promising this stream), not a HEADERS one.
    push: Option<u32>,
    end_stream: bool,
    /// Where CONTINUATION frames take over: one cut or two.
    cuts: Option<(usize, Option<usize>)>,
    /// PADDED: the pad length, and whether it runs past the frame (no
    /// padding is then sent at all).
    pad: Option<u8>,
    bad_padding: bool,
    /// PRIORITY: the dependency (exclusive bit included) and the weight.
    priority: Option<(u32, u8)>,
    self_dependent: bool,
}

impl Shape {
    fn new(
        (split, rich): (bool, bool),
        used: &mut Vec<u32>,
        fresh: &mut u32,
        len: usize,
        next: &mut impl FnMut() -> u64,
    ) -> Self {
        let push = (rich && next() % 16 == 0).then(|| 2 * (next() as u32 % 100) + 2);
        let stream = if rich && !used.is_empty() && next() % 4 == 0 {
            used[next() as usize % used.len()]
        } else {
            *fresh += 2;
            *fresh - 2
        };
        let new_stream = !used.contains(&stream);
        if new_stream {
            used.push(stream);
        }
        // HEADERS, then one or two CONTINUATIONs, the last with
        // END_HEADERS; a fragment may be empty.
        let cuts = (split && len > 0).then(|| {
            let a = next() as usize % (len + 1);
            let b = a + next() as usize % (len - a + 1);
            (a, (next() % 2 == 0).then_some(b))
        });
        let mut shape = Shape {
            stream,
            new_stream,
            push,
            end_stream: !rich || next() % 4 != 0,
            cuts,
            pad: None,
            bad_padding: false,
            priority: None,
            self_dependent: false,
        };
        if !rich {
            return shape;
        }
        if push.is_none() && next() % 4 == 0 {
            shape.self_dependent = next() % 4 == 0;
            let on = if shape.self_dependent {
                stream
            } else {
                next() as u32 % stream
            };
            shape.priority = Some((on | (next() as u32 & 0x8000_0000), next() as u8));
        }
        if next() % 4 == 0 {
            let first = cuts.map_or(len, |(a, _)| a);
            let past = first + 1 + next() as usize % 4;
            shape.bad_padding = next() % 8 == 0 && past <= 255;
            shape.pad = Some(if shape.bad_padding {
                past as u8
            } else {
                (next() % 8) as u8
            });
        }
        shape
    }

    fn write(&self, out: &mut Vec<u8>, block: &[u8]) {
        let (first, rest): (&[u8], Vec<&[u8]>) = match self.cuts {
            None => (block, vec![]),
            Some((a, None)) => (&block[..a], vec![&block[a..]]),
            Some((a, Some(b))) => (&block[..a], vec![&block[a..b], &block[b..]]),
        };
        let mut payload = Vec::new();
        let mut flags = 0;
        if let Some(pad) = self.pad {
            payload.push(pad);
            flags |= 0x8;
        }
        if let Some(promised) = self.push {
            payload.extend(promised.to_be_bytes());
        } else if self.end_stream {
            flags |= 0x1;
        }
        if let Some((on, weight)) = self.priority {
            payload.extend(on.to_be_bytes());
            payload.push(weight);
            flags |= 0x20;
        }
        payload.extend_from_slice(first);
        if let Some(pad) = self.pad
            && !self.bad_padding
        {
            payload.extend(std::iter::repeat_n(0, usize::from(pad)));
        }
        if rest.is_empty() {
            flags |= 0x4;
        }
        let kind = if self.push.is_some() { 5 } else { 1 };
        out.extend(frame(kind, flags, self.stream, &payload));
        for (k, fragment) in rest.iter().enumerate() {
            let end = if k + 1 == rest.len() { 0x4 } else { 0 };
            out.extend(frame(9, end, self.stream, fragment));
        }
    }
}

/// Up to two frames that carry no header block, between two blocks: DATA
/// (perhaps ending its stream, perhaps padded), RST_STREAM, WINDOW_UPDATE,
/// PING, PRIORITY (perhaps on itself), a frame of an unknown type,
/// SETTINGS.
fn other_frames(out: &mut Vec<u8>, used: &[u32], next: &mut impl FnMut() -> u64) {
    for _ in 0..next() % 3 {
        let stream = match used.len() {
            0 => 0,
            n => used[next() as usize % n],
        };
        match next() % 8 {
            0 if stream != 0 => {
                let mut flags = (next() % 2) as u8;
                let data = vec![b'd'; next() as usize % 9];
                let payload = if next() % 4 == 0 {
                    flags |= 0x8;
                    let pad = (next() % 4) as u8;
                    let mut p = vec![pad];
                    p.extend(&data);
                    p.extend(std::iter::repeat_n(0, usize::from(pad)));
                    p
                } else {
                    data
                };
                out.extend(frame(0, flags, stream, &payload));
            }
            1 if stream != 0 => {
                out.extend(frame(3, 0, stream, &(next() as u32 % 14).to_be_bytes()))
            }
            2 => out.extend(frame(
                8,
                0,
                stream,
                &(1 + next() as u32 % 65536).to_be_bytes(),
            )),
            3 => out.extend(frame(6, 0, 0, &next().to_be_bytes())),
            4 if stream != 0 => {
                let on = if next() % 4 == 0 {
                    stream
                } else {
                    next() as u32 % stream
                };
                let mut payload = on.to_be_bytes().to_vec();
                payload.push(next() as u8);
                out.extend(frame(2, 0, stream, &payload));
            }
            5 => {
                let kind = 0x20 + (next() % 0xd0) as u8;
                let id = next() as u32 & 0x7fff_ffff;
                out.extend(frame(kind, next() as u8, id, &[next() as u8; 3]));
            }
            6 => out.extend(frame(4, 0, 0, &[])),
            _ => {}
        }
    }
}

/// Whether a header block holds a literal field with an empty name, read
/// by the lengths alone, up to where they run past its end.
fn empty_name(block: &[u8]) -> bool {
    fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Option<usize> {
        let mask = (1u16 << prefix) as u8 - 1;
        let mut n = usize::from(*block.get(*at)? & mask);
        *at += 1;
        if n < usize::from(mask) {
            return Some(n);
        }
        for shift in (0..).step_by(7).take(4) {
            let b = *block.get(*at)?;
            *at += 1;
            n += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }
    fn string(block: &[u8], at: &mut usize) -> Option<usize> {
        let len = integer(block, at, 7)?;
        *at = at.checked_add(len).filter(|&end| end <= block.len())?;
        Some(len)
    }
    let mut at = 0;
    while let Some(&b) = block.get(at) {
        let literal = match b {
            _ if b & 0x80 != 0 => None,
            _ if b & 0xc0 == 0x40 => Some(6),
            _ if b & 0xe0 == 0x20 => None,
            _ => Some(4),
        };
        let Some(prefix) = literal else {
            let prefix = if b & 0x80 != 0 { 7 } else { 5 };
            if integer(block, &mut at, prefix).is_none() {
                return false;
            }
            continue;
        };
        match integer(block, &mut at, prefix) {
            Some(0) => match string(block, &mut at) {
                Some(0) => return true,
                Some(_) => {}
                None => return false,
            },
            Some(_) => {}
            None => return false,
        }
        if string(block, &mut at).is_none() {
            return false;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, mut rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mut seed = u64::from_le_bytes(*ctl) | 1;
    let mut next = move || rng::next(&mut seed);
    // Bit 0 of byte 0: blocks split into HEADERS and CONTINUATION frames,
    // and the follower fed in pieces of 1–64 bytes.
    let split = ctl[0] & 1 == 1;
    // Bit 1: blocks on streams used before (trailers, or streams closed or
    // reset), in PUSH_PROMISE frames, with padding and priorities, and
    // other frames between them.
    let rich = ctl[0] & 2 == 2;
    let mut blocks = Vec::new();
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let len = (usize::from(u16::from_be_bytes(*len)) % 4096).min(tail.len());
        blocks.push(&tail[..len]);
        rest = &tail[len..];
    }
    if blocks.is_empty() {
        return;
    }

    let served = Rc::new(RefCell::new(Vec::new()));
    let service = {
        let served = served.clone();
        service_fn(move |req: Request<Incoming>| {
            let mut fields: Vec<(Vec<u8>, Vec<u8>)> = req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            fields.sort();
            served.borrow_mut().push(Served {
                method: req.method().to_string(),
                path_and_query: req
                    .uri()
                    .path_and_query()
                    .map_or(String::new(), |pq| pq.as_str().to_owned()),
                fields,
            });
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        })
    };
    let tasks = Local::default();
    let wire = Rc::new(RefCell::new(Wire::default()));
    let mut builder = http2::Builder::new(tasks.clone());
    builder
        .max_concurrent_streams(100)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME_SIZE);
    let mut conn: Pin<Box<dyn Future<Output = Result<(), hyper::Error>>>> =
        Box::pin(builder.serve_connection(TokioIo::new(Client(wire.clone())), service));

    let mut hpack = Hpack::default();
    let mut tracker = H2Tracker::default();
    let mut tracker_refused = false;
    let mut start = PREFACE.to_vec();
    start.extend(frame(4, 0, 0, &[]));
    // The streams of the blocks sent so far, and the next new one.
    let mut used: Vec<u32> = Vec::new();
    let mut fresh = 1u32;
    for (i, block) in blocks.iter().enumerate() {
        let mut bytes = std::mem::take(&mut start);
        if rich {
            other_frames(&mut bytes, &used, &mut next);
        }
        let shape = Shape::new((split, rich), &mut used, &mut fresh, block.len(), &mut next);
        shape.write(&mut bytes, block);
        let followed = if split {
            let mut followed = Ok(());
            let mut left = &bytes[..];
            while !left.is_empty() && followed.is_ok() {
                let (piece, tail) = left.split_at((next() as usize % 64 + 1).min(left.len()));
                followed = tracker.feed(piece);
                left = tail;
            }
            followed
        } else {
            tracker.feed(&bytes)
        };
        wire.borrow_mut().now.extend(bytes);
        let before = served.borrow().len();
        let ended = until_quiet(&mut conn, &tasks);
        let now = served.borrow().len();
        // The h2 layer decodes the block unless its frame fails to load (a
        // connection error) or its stream depends on itself (a stream
        // error, checked before the padding).
        let decoded =
            (!shape.self_dependent && !shape.bad_padding).then(|| decode(&mut hpack, block));

        // The frame follower: refuses a PUSH_PROMISE, a frame whose padding
        // runs past it, and at the first block the decoder cannot decode or
        // whose `:path` has a `#` (or that holds a pseudo-header field on a
        // stream used before: trailers, as far as the follower can tell);
        // and not otherwise.
        if !tracker_refused {
            let found = decoded.as_ref().and_then(|d| d.as_ref());
            let hash = found.is_some_and(|d| d.hash);
            let ok = match &followed {
                Err(Refused::PushPromise) => shape.push.is_some(),
                _ if shape.push.is_some() => false,
                Err(Refused::Lost) => shape.bad_padding || matches!(decoded, Some(None)),
                Err(Refused::Hash(_)) => hash,
                Err(Refused::TrailerPseudo) => !shape.new_stream && found.is_some_and(|d| d.pseudo),
                Ok(()) => !shape.bad_padding && !hash && !matches!(decoded, Some(None)),
            };
            assert!(
                ok,
                "block {i} ({shape:?}): the follower said {followed:?}, the decoder {decoded:?}"
            );
            tracker_refused = followed.is_err();
        }

        let Some(decoded) = decoded else {
            // Not decoded: a stream that depends on itself is reset, a
            // frame whose padding runs past it fails the connection.
            assert_eq!(now, before, "block {i}: a block not decoded was served");
            assert!(
                ended || shape.self_dependent,
                "block {i}: a frame with bad padding was taken"
            );
            if ended {
                return;
            }
            continue;
        };
        let Some(Decoded {
            method,
            path,
            fields,
            ..
        }) = decoded
        else {
            // The watch refuses a field with an empty name, which h2 reads
            // past when the block goes on in a CONTINUATION (see
            // `Hpack::decode`).
            assert!(
                ended || empty_name(block),
                "block {i}: the watch cannot decode a block hyper took ({:?})",
                served.borrow()
            );
            return;
        };
        if now > before {
            assert!(
                shape.new_stream && shape.push.is_none(),
                "block {i} ({shape:?}): served as a new request"
            );
            assert_eq!(now, before + 1, "block {i}: one request per block");
            let got = served.borrow()[before].clone();
            // No `:path`: a CONNECT, whose URI is its authority alone, or a
            // request the h2 crate serves as `/` (it lets a missing `:path`
            // through, RFC 9113 §8.3.1 notwithstanding).
            let path = path.unwrap_or_else(|| {
                if got.path_and_query == "/" {
                    b"/".to_vec()
                } else {
                    Vec::new()
                }
            });
            let before_hash = path.split(|&b| b == b'#').next().unwrap_or_default();
            assert_eq!(
                (method.as_deref(), before_hash, &fields),
                (
                    Some(got.method.as_bytes()),
                    got.path_and_query.as_bytes(),
                    &got.fields,
                ),
                "block {i}: the watch decoded another request than hyper served"
            );
        }
        if ended {
            return;
        }
    }
});
