//! Streaming PNG (and APNG) structure scanner.
//!
//! Checks, without inflating anything:
//!
//! * the 8-byte signature;
//! * every chunk: length ≤ 2^31 − 1, type bytes ASCII letters, CRC-32 over type +
//!   data (the bulk cost: `crc32fast` is SIMD-accelerated);
//! * IHDR first, length 13, dimensions non-zero, ≤ 2^31 − 1 and width × height ≤
//!   [`Limits::max_pixels`], a valid bit depth / colour type pair, compression 0,
//!   filter 0, interlace 0 or 1;
//! * PLTE at most once, before IDAT, required for colour type 3 and forbidden for
//!   types 0 and 4, length a multiple of 3 with 1–256 entries;
//! * IDAT present and consecutive;
//! * IEND last, length 0, with nothing at all after it;
//! * unknown critical chunks (uppercase first letter) are rejected; unknown
//!   ancillary chunks (APNG's acTL/fcTL/fdAT, text, EXIF, …) are fine.
//!
//! State is a few dozen bytes whatever the body size; `feed` never allocates
//! (only a rejection allocates its detail).

use super::{Limits, Rejection, Scan, Sticky};

const SIGNATURE: [u8; 8] = *b"\x89PNG\r\n\x1a\n";
const MAX_CHUNK_LEN: u32 = 0x7FFF_FFFF;
/// Payloads we keep for checks: IHDR (13 bytes). Others are only hashed.
const IHDR_LEN: u32 = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `got` bytes of the signature matched so far.
    Signature { got: u8 },
    /// Reading the 8-byte chunk header (length + type) into `self.head`.
    Header { got: u8 },
    /// Hashing the chunk data; `remaining` bytes left.
    Data { remaining: u32 },
    /// Reading the 4-byte CRC into `self.crc_buf`.
    Crc { got: u8 },
    /// After IEND's CRC: not one more byte is allowed.
    AfterIend,
}

/// Where the chunk sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No chunk yet: IHDR must come.
    Start,
    /// After IHDR, before the first IDAT.
    BeforeIdat,
    /// Inside the run of IDAT chunks.
    InIdat,
    /// After the IDAT run ended.
    AfterIdat,
}

/// Streaming PNG scanner; see the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct Png {
    max_pixels: u64,
    state: State,
    phase: Phase,
    /// Absolute offset of the next byte to be fed.
    pos: u64,
    /// Current chunk: offset of its length field, its length and type.
    chunk_off: u64,
    chunk_len: u32,
    chunk_type: [u8; 4],
    head: [u8; 8],
    crc_buf: [u8; 4],
    crc: crc32fast::Hasher,
    /// IHDR payload (only IHDR's data is kept).
    ihdr: [u8; IHDR_LEN as usize],
    colour_type: u8,
    plte_seen: bool,
}

/// The PNG scanner: [`Png`] under the shared [`Sticky`] contract.
pub type PngScanner = Sticky<Png>;

impl PngScanner {
    pub fn new(limits: &Limits) -> Self {
        Sticky::wrap(Png::new(limits))
    }
}

impl Scan for Png {
    fn run(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        self.run_chunk(chunk)?;
        self.pos += chunk.len() as u64;
        Ok(())
    }

    fn end(&mut self) -> Result<(), Rejection> {
        self.end_body()
    }
}

impl Png {
    fn new(limits: &Limits) -> Self {
        Self {
            max_pixels: limits.max_pixels,
            state: State::Signature { got: 0 },
            phase: Phase::Start,
            pos: 0,
            chunk_off: 0,
            chunk_len: 0,
            chunk_type: [0; 4],
            head: [0; 8],
            crc_buf: [0; 4],
            crc: crc32fast::Hasher::new(),
            ihdr: [0; IHDR_LEN as usize],
            colour_type: 0,
            plte_seen: false,
        }
    }

    fn end_body(&self) -> Result<(), Rejection> {
        let at = self.pos;
        match self.state {
            State::AfterIend => Ok(()),
            State::Signature { got: 0 } => Err(Rejection::malformed("PNG: empty body")),
            State::Signature { .. } => Err(Rejection::malformed(format!(
                "PNG truncated at offset {at}: incomplete signature"
            ))),
            State::Header { got: 0 } => Err(Rejection::malformed(format!(
                "PNG truncated at offset {at}: no IEND chunk"
            ))),
            State::Header { .. } => Err(Rejection::malformed(format!(
                "PNG chunk header at offset {}: truncated at offset {at} (no IEND chunk)",
                self.chunk_off
            ))),
            State::Data { .. } | State::Crc { .. } => Err(Rejection::malformed(format!(
                "PNG chunk {} at offset {}: truncated at offset {at} (no IEND chunk)",
                self.type_name(),
                self.chunk_off
            ))),
        }
    }

    fn type_name(&self) -> String {
        if self.chunk_type.iter().all(u8::is_ascii_alphabetic) {
            String::from_utf8_lossy(&self.chunk_type).into_owned()
        } else {
            let t = self.chunk_type;
            format!("{:02X}{:02X}{:02X}{:02X}", t[0], t[1], t[2], t[3])
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> Rejection {
        Rejection::malformed(format!(
            "PNG chunk {} at offset {}: {what}",
            self.type_name(),
            self.chunk_off
        ))
    }

    fn run_chunk(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        let base = self.pos;
        let len = chunk.len();
        let mut i = 0usize;
        while i < len {
            match self.state {
                State::Signature { got } => {
                    let g = got as usize;
                    let take = (8 - g).min(len - i);
                    if chunk[i..i + take] != SIGNATURE[g..g + take] {
                        return Err(Rejection::malformed("PNG at offset 0: bad signature"));
                    }
                    i += take;
                    let got = g + take;
                    if got == 8 {
                        self.chunk_off = 8;
                        self.state = State::Header { got: 0 };
                    } else {
                        self.state = State::Signature { got: got as u8 };
                    }
                }
                State::Header { got } => {
                    let g = got as usize;
                    if g == 0 {
                        self.chunk_off = base + i as u64;
                    }
                    let take = (8 - g).min(len - i);
                    self.head[g..g + take].copy_from_slice(&chunk[i..i + take]);
                    i += take;
                    if g + take == 8 {
                        self.on_header()?;
                    } else {
                        self.state = State::Header {
                            got: (g + take) as u8,
                        };
                    }
                }
                State::Data { remaining } => {
                    let take = (remaining as usize).min(len - i);
                    let data = &chunk[i..i + take];
                    self.crc.update(data);
                    if self.chunk_type == *b"IHDR" {
                        // IHDR length is exactly 13 (checked in on_header).
                        let done = (IHDR_LEN - remaining) as usize;
                        self.ihdr[done..done + take].copy_from_slice(data);
                    }
                    i += take;
                    let left = remaining - take as u32;
                    self.state = if left == 0 {
                        State::Crc { got: 0 }
                    } else {
                        State::Data { remaining: left }
                    };
                }
                State::Crc { got } => {
                    let g = got as usize;
                    let take = (4 - g).min(len - i);
                    self.crc_buf[g..g + take].copy_from_slice(&chunk[i..i + take]);
                    i += take;
                    if g + take == 4 {
                        self.on_crc()?;
                    } else {
                        self.state = State::Crc {
                            got: (g + take) as u8,
                        };
                    }
                }
                State::AfterIend => {
                    return Err(Rejection::malformed(format!(
                        "PNG: data after IEND at offset {}",
                        base + i as u64
                    )));
                }
            }
        }
        Ok(())
    }

    /// A complete chunk header (length + type) is in `self.head`.
    fn on_header(&mut self) -> Result<(), Rejection> {
        let h = self.head;
        self.chunk_len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        self.chunk_type = [h[4], h[5], h[6], h[7]];
        let t = self.chunk_type;
        if !t.iter().all(u8::is_ascii_alphabetic) {
            return Err(self.err("chunk type is not four ASCII letters"));
        }
        if self.chunk_len > MAX_CHUNK_LEN {
            return Err(self.err(format_args!("length {} exceeds 2^31-1", self.chunk_len)));
        }
        let critical = t[0].is_ascii_uppercase();
        // Ordering rules, decided as soon as the type is known.
        if self.phase == Phase::Start && t != *b"IHDR" {
            return Err(self.err("the first chunk must be IHDR"));
        }
        match &t {
            b"IHDR" => {
                if self.phase != Phase::Start {
                    return Err(self.err("second IHDR"));
                }
                if self.chunk_len != IHDR_LEN {
                    return Err(self.err(format_args!("length {} (must be 13)", self.chunk_len)));
                }
            }
            b"PLTE" => {
                if self.plte_seen {
                    return Err(self.err("second PLTE"));
                }
                if self.phase != Phase::BeforeIdat {
                    return Err(self.err("PLTE after IDAT"));
                }
                if matches!(self.colour_type, 0 | 4) {
                    return Err(self.err(format_args!(
                        "PLTE is not allowed for colour type {}",
                        self.colour_type
                    )));
                }
                let n = self.chunk_len;
                if n == 0 || !n.is_multiple_of(3) || n / 3 > 256 {
                    return Err(self.err(format_args!("invalid palette length {n}")));
                }
            }
            b"IDAT" => match self.phase {
                Phase::BeforeIdat => {
                    if self.colour_type == 3 && !self.plte_seen {
                        return Err(self.err("colour type 3 needs a PLTE before the first IDAT"));
                    }
                    self.phase = Phase::InIdat;
                }
                Phase::InIdat => {}
                Phase::AfterIdat => return Err(self.err("IDAT chunks are not consecutive")),
                Phase::Start => unreachable!("checked above"),
            },
            b"IEND" => {
                if self.phase == Phase::BeforeIdat {
                    return Err(self.err("no IDAT before IEND"));
                }
                if self.chunk_len != 0 {
                    return Err(self.err(format_args!("length {} (must be 0)", self.chunk_len)));
                }
            }
            _ if critical => return Err(self.err("unknown critical chunk")),
            _ => {}
        }
        if self.phase == Phase::InIdat && t != *b"IDAT" {
            self.phase = Phase::AfterIdat;
        }
        self.crc = crc32fast::Hasher::new();
        self.crc.update(&t);
        self.state = if self.chunk_len == 0 {
            State::Crc { got: 0 }
        } else {
            State::Data {
                remaining: self.chunk_len,
            }
        };
        Ok(())
    }

    /// The chunk's CRC is in `self.crc_buf`.
    fn on_crc(&mut self) -> Result<(), Rejection> {
        let stored = u32::from_be_bytes(self.crc_buf);
        let computed = std::mem::replace(&mut self.crc, crc32fast::Hasher::new()).finalize();
        if stored != computed {
            return Err(self.err("CRC mismatch"));
        }
        match &self.chunk_type {
            b"IHDR" => self.check_ihdr()?,
            b"PLTE" => self.plte_seen = true,
            b"IEND" => {
                self.state = State::AfterIend;
                return Ok(());
            }
            _ => {}
        }
        self.state = State::Header { got: 0 };
        Ok(())
    }

    fn check_ihdr(&mut self) -> Result<(), Rejection> {
        let d = self.ihdr;
        let width = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
        let height = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
        let (depth, colour, compression, filter, interlace) = (d[8], d[9], d[10], d[11], d[12]);
        if width == 0 || height == 0 {
            return Err(self.err(format_args!("zero dimension ({width} x {height})")));
        }
        if width > MAX_CHUNK_LEN || height > MAX_CHUNK_LEN {
            return Err(self.err(format_args!(
                "dimension exceeds 2^31-1 ({width} x {height})"
            )));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(self.err(format_args!(
                "{width} x {height} = {pixels} pixels exceeds the limit of {} (inspect.max_pixels)",
                self.max_pixels
            )));
        }
        let depth_ok = match colour {
            0 => matches!(depth, 1 | 2 | 4 | 8 | 16),
            3 => matches!(depth, 1 | 2 | 4 | 8),
            2 | 4 | 6 => matches!(depth, 8 | 16),
            _ => return Err(self.err(format_args!("invalid colour type {colour}"))),
        };
        if !depth_ok {
            return Err(self.err(format_args!(
                "bit depth {depth} is invalid for colour type {colour}"
            )));
        }
        if compression != 0 {
            return Err(self.err(format_args!("unknown compression method {compression}")));
        }
        if filter != 0 {
            return Err(self.err(format_args!("unknown filter method {filter}")));
        }
        if interlace > 1 {
            return Err(self.err(format_args!("unknown interlace method {interlace}")));
        }
        self.colour_type = colour;
        self.phase = Phase::BeforeIdat;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(t: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(t);
        v.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(t);
        h.update(data);
        v.extend_from_slice(&h.finalize().to_be_bytes());
        v
    }

    fn png(ihdr: [u8; 13], extra: &[Vec<u8>]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend(chunk(b"IHDR", &ihdr));
        for c in extra {
            v.extend_from_slice(c);
        }
        v
    }

    fn ihdr(w: u32, h: u32, depth: u8, colour: u8) -> [u8; 13] {
        let mut d = [0u8; 13];
        d[..4].copy_from_slice(&w.to_be_bytes());
        d[4..8].copy_from_slice(&h.to_be_bytes());
        d[8] = depth;
        d[9] = colour;
        d
    }

    fn scan(bytes: &[u8]) -> Result<(), Rejection> {
        let mut s = PngScanner::new(&Limits::default());
        s.feed(bytes)?;
        s.finish()
    }

    #[test]
    fn minimal_ok_every_split() {
        let p = png(
            ihdr(1, 1, 8, 0),
            &[chunk(b"IDAT", b"xyz"), chunk(b"IEND", b"")],
        );
        assert_eq!(scan(&p), Ok(()));
        for k in 0..=p.len() {
            let mut s = PngScanner::new(&Limits::default());
            let r = s
                .feed(&p[..k])
                .and_then(|_| s.feed(&p[k..]))
                .and_then(|_| s.finish());
            assert_eq!(r, Ok(()), "split {k}");
        }
    }

    #[test]
    fn depth_table() {
        let ok = [
            (0, 1),
            (0, 2),
            (0, 4),
            (0, 8),
            (0, 16),
            (2, 8),
            (2, 16),
            (4, 8),
            (4, 16),
            (6, 8),
            (6, 16),
        ];
        for colour in 0..8u8 {
            for depth in [0u8, 1, 2, 3, 4, 8, 16, 32] {
                if colour == 3 {
                    continue;
                }
                let p = png(
                    ihdr(2, 2, depth, colour),
                    &[chunk(b"IDAT", b"x"), chunk(b"IEND", b"")],
                );
                assert_eq!(
                    scan(&p).is_ok(),
                    ok.contains(&(colour, depth)),
                    "colour {colour} depth {depth}"
                );
            }
        }
        for depth in [1u8, 2, 4, 8] {
            let p = png(
                ihdr(2, 2, depth, 3),
                &[
                    chunk(b"PLTE", &[0; 6]),
                    chunk(b"IDAT", b"x"),
                    chunk(b"IEND", b""),
                ],
            );
            assert_eq!(scan(&p), Ok(()));
        }
        let p = png(
            ihdr(2, 2, 16, 3),
            &[
                chunk(b"PLTE", &[0; 6]),
                chunk(b"IDAT", b"x"),
                chunk(b"IEND", b""),
            ],
        );
        assert!(scan(&p).is_err());
    }

    #[test]
    fn ordering_rules() {
        let idat = || chunk(b"IDAT", b"x");
        let iend = || chunk(b"IEND", b"");
        let e = scan(&png(
            ihdr(1, 1, 8, 0),
            &[idat(), chunk(b"tEXt", b"a\0b"), idat(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("not consecutive"), "{e}");
        let e = scan(&png(ihdr(1, 1, 8, 0), &[iend()])).unwrap_err();
        assert!(e.detail.contains("no IDAT"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 0),
            &[chunk(b"PLTE", &[0; 3]), idat(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("not allowed"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[idat(), chunk(b"PLTE", &[0; 3]), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("after IDAT"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[chunk(b"ABCD", b""), idat(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("unknown critical"), "{e}");
        assert_eq!(
            scan(&png(
                ihdr(1, 1, 8, 2),
                &[chunk(b"abCD", b"??"), idat(), iend()]
            )),
            Ok(())
        );
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[chunk(b"ab1D", b""), idat(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("PNG chunk 61623144 at offset 33"), "{e}");
        let e = scan(&png(ihdr(1, 1, 8, 2), &[idat(), chunk(b"IEND", b"x")])).unwrap_err();
        assert!(e.detail.contains("must be 0"), "{e}");
    }
}
