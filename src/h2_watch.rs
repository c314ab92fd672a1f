//! Request path, step 1½ for HTTP/2 (h2c): request `:path`s with a `#`.
//!
//! Over HTTP/1.1 the head watch (`head_watch.rs`) sees a `#` in a
//! request-target on the bytes. Over HTTP/2 the h2 layer under hyper builds
//! the request's URI with the `http` crate, which drops a `:path`'s `#` and
//! what follows: `/api/image/v1.0/report/R1#R2` reached the router as
//! `…/report/R1`. So the watch, once a connection opens with the HTTP/2
//! preface, follows the client's frames as well: it skips every frame but
//! HEADERS and CONTINUATION, decodes each header block with its own HPACK
//! decoder (RFC 7541: its own dynamic table, kept in step with the h2
//! layer's by decoding every block). A request whose `:path` has a `#` is
//! malformed (a `:path` holds no fragment, RFC 9113 §8.3.1): the watch fails
//! the connection's read *before* hyper sees that header block, so the
//! request never starts and the connection closes, as the h2 layer closes it
//! for other malformed fields. Streams already running on it are aborted:
//! their uploads never reach Concur whole. (Marking just that request is not
//! possible: hyper does not tell the service which stream a request came
//! on, and it serves streams concurrently.)
//!
//! What the watch cannot follow (a header block over [`MAX_BLOCK`], one it
//! cannot decode) fails the connection the same way, rather than letting a
//! `#` through unseen; the h2 layer, the stricter decoder, refuses such
//! blocks itself.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest header block followed (HEADERS and CONTINUATION payloads
/// together): what the h2 layer itself reads of one block before it closes
/// the connection, a HEADERS and 5 CONTINUATION frames (h2's
/// `calc_max_continuation_frames` at the 96 KiB header list the gateway
/// announces) of at most 64 KiB each (`server::H2_MAX_FRAME_SIZE`). A
/// connection holds at most this much here while a block comes in.
const MAX_BLOCK: usize = 6 * 64 * 1024;
/// The dynamic table size the h2 layer announces (its default, 4096).
const TABLE_SIZE: usize = 4096;
/// Streams followed at once for their trailers: those whose request head
/// came without END_STREAM, until the client ends or resets them. Past it the
/// oldest is forgotten (its trailers then go unchecked, as before the check
/// existed): a stream the gateway reset, whose client never ends it, leaves
/// its entry until then.
const OPEN_CAP: usize = 1024;

/// The RFC 7541 Huffman code (Appendix B), by symbol: code and length in
/// bits. The same tables as the h2 crate's `hpack/huffman/table.rs`.
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The RFC 7541 static table (Appendix A): index 1 to 61.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// A decoding error: the watch cannot follow the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Lost;

/// Why the watch fails an HTTP/2 connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A request's `:path` had a `#`: its method and `:path`.
    Hash(HashPath),
    /// A stream's trailers held a pseudo-header field (RFC 9113 §8.1: a
    /// malformed request; the h2 layer would drop the field and serve it).
    TrailerPseudo,
    /// The client sent a PUSH_PROMISE frame, which only a server may send
    /// (RFC 9113 §8.4: a connection error). The h2 layer closes the
    /// connection for one too, except on a stream it has reset: there it
    /// resets the stream again and reads on, after decoding the frame's
    /// header block into its dynamic table.
    PushPromise,
    /// The watch could not follow the client's frames.
    Lost,
}

impl From<Lost> for Refused {
    fn from(_: Lost) -> Self {
        Refused::Lost
    }
}

/// Huffman codes of each length, sorted: (code, symbol).
fn by_length() -> &'static [Vec<(u32, u8)>; 31] {
    static TABLE: OnceLock<[Vec<(u32, u8)>; 31]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: [Vec<(u32, u8)>; 31] = Default::default();
        for (sym, (&code, &len)) in CODES.iter().zip(LENGTHS.iter()).enumerate() {
            t[usize::from(len)].push((code, sym as u8));
        }
        for codes in &mut t {
            codes.sort_unstable();
        }
        t
    })
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2).
fn huffman(bytes: &[u8]) -> Result<Vec<u8>, Lost> {
    let table = by_length();
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in bytes {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len > 30 {
                return Err(Lost);
            }
            if let Ok(i) = table[len].binary_search_by_key(&code, |&(c, _)| c) {
                out.push(table[len][i].1);
                code = 0;
                len = 0;
            }
        }
    }
    // At most 7 bits of padding, all ones (the start of EOS).
    if len > 7 || code != (1 << len) - 1 {
        return Err(Lost);
    }
    Ok(out)
}

/// An HPACK integer with an `n`-bit prefix at `block[*at]` (RFC 7541 §5.1).
fn integer(block: &[u8], at: &mut usize, n: u8) -> Result<usize, Lost> {
    let mask = (1u16 << n) as usize - 1;
    let first = usize::from(*block.get(*at).ok_or(Lost)?) & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let b = *block.get(*at).ok_or(Lost)?;
        *at += 1;
        value += usize::from(b & 0x7f).checked_shl(shift).ok_or(Lost)?;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 28 {
            return Err(Lost);
        }
    }
}

/// An HPACK string literal (RFC 7541 §5.2).
fn string(block: &[u8], at: &mut usize) -> Result<Vec<u8>, Lost> {
    let huffman_coded = block.get(*at).ok_or(Lost)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let raw = block.get(*at..*at + len).ok_or(Lost)?;
    *at += len;
    if huffman_coded {
        huffman(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// The HPACK decoding state of one connection.
#[derive(Debug)]
pub struct Hpack {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl Default for Hpack {
    fn default() -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

impl Hpack {
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Lost> {
        match index {
            0 => Err(Lost),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(Lost),
        }
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + 32;
        self.evict_to(self.max.saturating_sub(size));
        if size <= self.max {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Decodes a header block: calls `field` with each name and value.
    ///
    /// A literal field with an empty name is refused (`Lost`): no request
    /// may carry one (a field name is a token, RFC 9110 §5.1), and the h2
    /// layer (h2 0.4) reads past one in a way the watch does not follow.
    /// Its decoder fails such a field as "need more bytes" after it has
    /// consumed part of it: in the block's last frame the connection fails;
    /// in an earlier one the block is decoded on once the next frame comes,
    /// from the end of the field when its value is a plain string, but from
    /// the value's length byte when the value is Huffman-coded, so that the
    /// value's bytes are read as header fields (a `:path` with a `#`, say).
    /// Both were found by `tests/fuzz` `h2`: first the field added to the
    /// table here and not there, then the Huffman case.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Lost> {
        let mut at = 0;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut at, 7)?;
                let (n, v) = self.entry(index)?;
                field(n, v);
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update.
                let max = integer(block, &mut at, 5)?;
                if max > TABLE_SIZE {
                    return Err(Lost);
                }
                self.max = max;
                self.evict_to(max);
            } else {
                // A literal: added to the table (01), not added (0000) or
                // never indexed (0001).
                let added = b & 0xc0 == 0x40;
                let index = integer(block, &mut at, if added { 6 } else { 4 })?;
                let name = if index == 0 {
                    string(block, &mut at)?
                } else {
                    self.entry(index)?.0.to_vec()
                };
                if name.is_empty() {
                    return Err(Lost); // see above
                }
                let value = string(block, &mut at)?;
                field(&name, &value);
                if added {
                    self.insert(name, value);
                }
            }
        }
        Ok(())
    }
}

/// A request whose `:path` has a `#`: its method and `:path` as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPath {
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of the preface seen.
    Preface(usize),
    /// This many bytes of a frame header seen.
    Head(usize),
    /// A frame payload to skip.
    Skip(usize),
    /// A HEADERS or CONTINUATION payload of this length, being gathered.
    Payload(usize),
}

/// Follows the client's side of an HTTP/2 connection: sans-IO, fed every
/// byte read from the client, preface first.
#[derive(Debug)]
pub struct H2Tracker {
    state: State,
    head: [u8; 9],
    kind: u8,
    flags: u8,
    frame: Vec<u8>,
    block: Vec<u8>,
    in_block: bool,
    /// The block being gathered is one the h2 layer does not decode.
    skip_block: bool,
    /// The stream of the block being gathered, and whether its HEADERS
    /// frame ended the stream.
    block_stream: u32,
    block_ends_stream: bool,
    /// Streams whose request head came and whose body has not ended: a
    /// header block on one of them is its trailers.
    open: std::collections::BTreeSet<u32>,
    hpack: Hpack,
}

impl Default for H2Tracker {
    fn default() -> Self {
        Self {
            state: State::Preface(0),
            head: [0; 9],
            kind: 0,
            flags: 0,
            frame: Vec::new(),
            block: Vec::new(),
            in_block: false,
            skip_block: false,
            block_stream: 0,
            block_ends_stream: false,
            open: std::collections::BTreeSet::new(),
            hpack: Hpack::default(),
        }
    }
}

impl H2Tracker {
    /// Follows `data`. `Err`: the connection must be failed before hyper
    /// reads `data`.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Refused> {
        while !data.is_empty() {
            match self.state {
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(data.len());
                    if data[..n] != PREFACE[seen..seen + n] {
                        return Err(Refused::Lost);
                    }
                    data = &data[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head(0)
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Head(seen) => {
                    let n = (9 - seen).min(data.len());
                    self.head[seen..seen + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    if seen + n < 9 {
                        self.state = State::Head(seen + n);
                        continue;
                    }
                    let h = self.head;
                    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    (self.kind, self.flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    match self.kind {
                        // DATA with END_STREAM, or RST_STREAM: the client
                        // is done with the stream.
                        0x0 if self.flags & 0x1 != 0 => {
                            self.open.remove(&stream);
                        }
                        0x3 => {
                            self.open.remove(&stream);
                        }
                        0x1 if !self.in_block => {
                            self.block_stream = stream;
                            self.block_ends_stream = self.flags & 0x1 != 0;
                        }
                        _ => {}
                    }
                    // A header block is HEADERS then CONTINUATIONs, nothing
                    // between (RFC 9113 §6.10; the h2 layer closes otherwise).
                    // A PUSH_PROMISE also holds a header block, which the h2
                    // layer decodes; a client never sends one.
                    let headers = match self.kind {
                        0x5 => return Err(Refused::PushPromise),
                        0x1 if !self.in_block => true,
                        0x9 if self.in_block => true,
                        _ if self.in_block => return Err(Refused::Lost),
                        _ => false,
                    };
                    if !headers {
                        self.state = if len == 0 {
                            State::Head(0)
                        } else {
                            State::Skip(len)
                        };
                    } else if self.block.len() + len > MAX_BLOCK {
                        return Err(Refused::Lost);
                    } else {
                        self.frame.clear();
                        self.state = State::Payload(len);
                        if len == 0 {
                            self.end_frame()?;
                            self.state = State::Head(0);
                        }
                    }
                }
                State::Skip(left) => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    self.state = if n == left {
                        State::Head(0)
                    } else {
                        State::Skip(left - n)
                    };
                }
                State::Payload(len) => {
                    let n = (len - self.frame.len()).min(data.len());
                    self.frame.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.frame.len() == len {
                        self.end_frame()?;
                        self.state = State::Head(0);
                    }
                }
            }
        }
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is in: its fragment joins the
    /// block, and a block that has ended is decoded.
    fn end_frame(&mut self) -> Result<(), Refused> {
        let mut fragment = &self.frame[..];
        if self.kind == 0x1 {
            if self.flags & 0x8 != 0 {
                // PADDED: a pad length, then the padding at the end.
                let (&pad, rest) = fragment.split_first().ok_or(Lost)?;
                fragment = rest
                    .get(..rest.len().checked_sub(usize::from(pad)).ok_or(Lost)?)
                    .ok_or(Lost)?;
            }
            let mut skip = false;
            if self.flags & 0x20 != 0 {
                // PRIORITY: stream dependency and weight. A stream that
                // depends on itself the h2 layer resets before it decodes
                // the block (its table never sees it): so does the watch.
                let dependency: [u8; 4] = fragment
                    .get(..4)
                    .and_then(|d| d.try_into().ok())
                    .ok_or(Lost)?;
                let stream = [self.head[5], self.head[6], self.head[7], self.head[8]];
                skip = u32::from_be_bytes(dependency) & 0x7fff_ffff
                    == u32::from_be_bytes(stream) & 0x7fff_ffff;
                fragment = fragment.get(5..).ok_or(Lost)?;
            }
            self.skip_block = skip;
        }
        self.block.extend_from_slice(fragment);
        self.in_block = self.flags & 0x4 == 0;
        if self.in_block {
            return Ok(());
        }
        if self.skip_block {
            self.block.clear();
            return Ok(());
        }
        // Every `:path` of the block is looked at, not the last one only:
        // with two, the h2 layer serves the first when the block went on in
        // a CONTINUATION (h2 0.4 forgets across frames that a repeated
        // pseudo-header field makes the request malformed, and drops the
        // second), so a `#` in either is refused.
        let (mut method, mut path, mut pseudo) = (None, None, false);
        let block = std::mem::take(&mut self.block);
        let decoded = self.hpack.decode(&block, |name, value| {
            pseudo |= name.first() == Some(&b':');
            match name {
                b":method" if method.is_none() => method = Some(value.to_vec()),
                // The first, unless a later one has a `#` and it has none.
                b":path"
                    if path.is_none()
                        || (value.contains(&b'#')
                            && !path.as_ref().is_some_and(|p: &Vec<u8>| p.contains(&b'#'))) =>
                {
                    path = Some(value.to_vec());
                }
                _ => {}
            }
        });
        self.block = block;
        self.block.clear();
        decoded?;
        if self.open.remove(&self.block_stream) {
            // A second block on a stream: its trailers.
            if pseudo {
                return Err(Refused::TrailerPseudo);
            }
        } else if !self.block_ends_stream {
            // A request head, its body to come.
            self.open.insert(self.block_stream);
            if self.open.len() > OPEN_CAP {
                self.open.pop_first();
            }
        }
        match path {
            // In a request's head or in trailers alike: malformed either way.
            Some(path) if path.contains(&b'#') => Err(Refused::Hash(HashPath {
                method: String::from_utf8_lossy(&method.unwrap_or_default()).into_owned(),
                path: String::from_utf8_lossy(&path).into_owned(),
            })),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decoded(hpack: &mut Hpack, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        hpack
            .decode(block, |n, v| {
                out.push((
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ))
            })
            .unwrap();
        out
    }

    /// RFC 7541 Appendix C.4: three requests with Huffman coding, sharing a
    /// dynamic table.
    #[test]
    fn decodes_the_rfc_7541_huffman_examples() {
        let mut h = Hpack::default();
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            decoded(&mut h, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            decoded(&mut h, &hex("8286 84be 5886 a8eb 1064 9cbf")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(
            decoded(
                &mut h,
                &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")
            ),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(h.size, 164);
        assert_eq!(huffman(&hex("ff")), Err(Lost), "8 bits of padding");
    }

    /// A literal field with an empty name is refused, whatever its kind and
    /// whether its value is Huffman-coded, and adds nothing to the table.
    #[test]
    fn refuses_an_empty_name() {
        let mut h = Hpack::default();
        // `x-a: 1`, added to the table (index 62).
        assert_eq!(
            decoded(&mut h, &hex("40 03 782d61 01 31")),
            [("x-a".to_owned(), "1".to_owned())]
        );
        // Added to the table, not added, never indexed; a raw or a Huffman
        // value (`83 869f8f`: valid Huffman code); with a name that is
        // Huffman-coded and empty.
        for block in [
            "40 00 00",
            "00 00 01 62",
            "10 00 00",
            "00 00 83 869f8f",
            "40 80 83 869f8f",
            "00 80 01 62",
        ] {
            assert_eq!(h.decode(&hex(block), |_, _| {}), Err(Lost), "{block}");
            assert_eq!(h.table.len(), 1, "{block}");
        }
        // After a field that is fine, too; index 62 is still `x-a: 1`.
        assert_eq!(h.decode(&hex("be 00 00 00"), |_, _| {}), Err(Lost));
        assert_eq!(
            decoded(&mut h, &hex("be")),
            [("x-a".to_owned(), "1".to_owned())]
        );
    }

    /// Two `:path`s in one block: a `#` in either is refused (the h2 layer
    /// serves the first when the block goes on in a CONTINUATION).
    #[test]
    fn a_hash_in_any_of_two_paths_is_refused() {
        for paths in [["/r/R1#R2", "/r/R3"], ["/r/R3", "/r/R1#R2"]] {
            let mut block = literal(":method", "POST");
            for p in paths {
                block.extend(literal(":path", p));
            }
            let mut wire = PREFACE.to_vec();
            wire.extend(frame(0x4, 0, 0, &[]));
            wire.extend(frame(0x1, 0x4 | 0x1, 1, &block));
            assert_eq!(
                H2Tracker::default().feed(&wire),
                Err(Refused::Hash(HashPath {
                    method: "POST".into(),
                    path: "/r/R1#R2".into()
                })),
                "{paths:?}"
            );
        }
    }

    /// A literal header field without indexing, new name, raw strings.
    pub fn literal(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0u8];
        for s in [name, value] {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn refuses_a_hash_path_however_the_frames_come() {
        let mut block = literal(":method", "POST");
        block.extend(literal(":scheme", "http"));
        block.extend(literal(":path", "/r/R1#R2"));
        let (first, second) = block.split_at(10);
        let mut padded = vec![3u8];
        padded.extend_from_slice(&[0, 0, 0, 0, 16]);
        padded.extend_from_slice(first);
        padded.extend_from_slice(&[0; 3]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        // DATA holding what looks like a HEADERS frame is skipped.
        wire.extend(frame(
            0x0,
            0,
            1,
            &frame(0x1, 0x4, 1, &literal(":path", "/#x")),
        ));
        wire.extend(frame(0x1, 0x8 | 0x20, 3, &padded));
        wire.extend(frame(0x9, 0x4, 3, second));
        let mut plain = literal(":method", "GET");
        plain.extend(literal(":path", "/r/R3"));
        wire.extend(frame(0x1, 0x4 | 0x1, 5, &plain));
        // Refused exactly when the block with the `#` is complete, before
        // the frames after it.
        let last = frame(0x1, 0x4 | 0x1, 5, &plain).len();
        let complete = wire.len() - last;
        for step in 1..wire.len() {
            let mut t = H2Tracker::default();
            let mut fed = 0;
            let refused = wire.chunks(step).find_map(|piece| {
                fed += piece.len();
                t.feed(piece).err()
            });
            assert_eq!(
                refused,
                Some(Refused::Hash(HashPath {
                    method: "POST".into(),
                    path: "/r/R1#R2".into()
                })),
                "split every {step}"
            );
            assert!(
                fed >= complete && fed < complete + step,
                "split every {step}: {fed}"
            );
        }
        // Without that block, followed to the end.
        let mut plain_wire = PREFACE.to_vec();
        plain_wire.extend(frame(
            0x0,
            0,
            1,
            &frame(0x1, 0x4, 1, &literal(":path", "/#x")),
        ));
        plain_wire.extend(frame(0x1, 0x4 | 0x1, 5, &plain));
        assert_eq!(H2Tracker::default().feed(&plain_wire), Ok(()));
        // A block on a stream that depends on itself is not decoded (the h2
        // layer resets the stream first): its `#`, and its table entries, do
        // not count.
        let mut selfdep = vec![0, 0, 0, 7, 16];
        selfdep.push(0x40);
        selfdep.extend(&literal(":path", "/#x")[1..]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x1, 0x4 | 0x20, 7, &selfdep));
        let mut t = H2Tracker::default();
        assert_eq!(t.feed(&wire), Ok(()));
        assert!(t.hpack.table.is_empty());
        // Not HTTP/2, or a frame between a block's HEADERS and CONTINUATION.
        assert_eq!(
            H2Tracker::default().feed(b"GET / HTTP/1.1\r\n"),
            Err(Refused::Lost)
        );
        let mut bad = PREFACE.to_vec();
        bad.extend(frame(0x1, 0, 1, &literal(":path", "/")));
        bad.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(H2Tracker::default().feed(&bad), Err(Refused::Lost));
    }

    #[test]
    fn refuses_pseudo_header_fields_in_trailers() {
        let mut head = literal(":method", "POST");
        head.extend(literal(":path", "/r/R1"));
        let body = frame(0x0, 0, 1, b"body");
        let wire = |trailers: &[u8]| {
            let mut w = PREFACE.to_vec();
            w.extend(frame(0x1, 0x4, 1, &head));
            w.extend(&body);
            w.extend(frame(0x1, 0x4 | 0x1, 1, trailers));
            w
        };
        for step in [1, 7, 1000] {
            let mut t = H2Tracker::default();
            let refused = wire(&literal(":path", "/x"))
                .chunks(step)
                .find_map(|piece| t.feed(piece).err());
            assert_eq!(refused, Some(Refused::TrailerPseudo), "split every {step}");
        }
        // Plain trailers are fine, and so is the next request on the stream
        // after, and a request head that ends its stream at once.
        let mut t = H2Tracker::default();
        assert_eq!(t.feed(&wire(&literal("x-sum", "1"))), Ok(()));
        assert!(t.open.is_empty());
        let mut w = Vec::new();
        w.extend(frame(0x1, 0x4 | 0x1, 3, &head));
        w.extend(frame(0x1, 0x4, 5, &head));
        w.extend(frame(0x0, 0x1, 5, b"all"));
        assert_eq!(t.feed(&w), Ok(()));
        assert!(t.open.is_empty(), "{:?}", t.open);
        // A stream the client resets is forgotten: a later block with the
        // same (reused, invalid) id is a head again, not trailers.
        let mut w = Vec::new();
        w.extend(frame(0x1, 0x4, 7, &head));
        w.extend(frame(0x3, 0, 7, &[0, 0, 0, 8]));
        assert_eq!(t.feed(&w), Ok(()));
        assert!(t.open.is_empty());
        // Followed streams are bounded.
        let mut t = H2Tracker::default();
        let mut w = PREFACE.to_vec();
        for k in 0..(OPEN_CAP as u32 + 10) {
            w.extend(frame(0x1, 0x4, 2 * k + 1, &head));
        }
        assert_eq!(t.feed(&w), Ok(()));
        assert_eq!(t.open.len(), OPEN_CAP);
    }

    /// A PUSH_PROMISE's header block enters the h2 layer's table, which the
    /// watch's would not follow: the frame is refused as soon as its header
    /// is in, whatever it holds and wherever the reads split it.
    #[test]
    fn refuses_a_push_promise_from_the_client() {
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.extend(literal(":path", "/r/R2"));
        let mut w = PREFACE.to_vec();
        w.extend(frame(0x1, 0x4 | 0x1, 1, &literal(":path", "/r/R1")));
        let head_end = w.len() + 9;
        w.extend(frame(0x5, 0x4, 1, &promise));
        for step in [1, 7, 1000] {
            let mut t = H2Tracker::default();
            let mut fed = 0;
            let refused = w.chunks(step).find_map(|piece| {
                fed += piece.len();
                t.feed(piece).err()
            });
            assert_eq!(refused, Some(Refused::PushPromise), "split every {step}");
            assert!(
                fed >= head_end && fed < head_end + step,
                "split every {step}"
            );
        }
        // Empty, or in the middle of a header block (where any frame but a
        // CONTINUATION is refused anyway).
        let mut w = PREFACE.to_vec();
        w.extend(frame(0x5, 0, 3, &[]));
        assert_eq!(H2Tracker::default().feed(&w), Err(Refused::PushPromise));
        let mut w = PREFACE.to_vec();
        w.extend(frame(0x1, 0, 1, &literal(":path", "/")));
        w.extend(frame(0x5, 0x4, 1, &promise));
        assert!(H2Tracker::default().feed(&w).is_err());
    }
}
