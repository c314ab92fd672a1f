//! Streaming PNG (and APNG) structure scanner.
//!
//! Checks:
//!
//! * the 8-byte signature;
//! * every chunk: length ≤ 2^31 − 1, type bytes ASCII letters, CRC-32 over type +
//!   data (`crc32fast` is SIMD-accelerated);
//! * IHDR first, length 13, dimensions non-zero, ≤ 2^31 − 1 and width × height ≤
//!   [`Limits::max_pixels`], a valid bit depth / colour type pair, compression 0,
//!   filter 0, interlace 0 or 1;
//! * PLTE at most once, before IDAT, required for colour type 3 and forbidden for
//!   types 0 and 4, length a multiple of 3 with 1–256 entries;
//! * IDAT present and consecutive;
//! * IEND last, length 0, with nothing at all after it;
//! * the chunks whose data length the specification (third edition) fixes
//!   have that length: gAMA 4, cHRM 32, sRGB 1, pHYs 9, tIME 7, cICP 4,
//!   mDCV 24, cLLI 8, acTL 8, and by colour type sBIT (1, 3, 3, 2, 4 for types
//!   0, 2, 3, 4, 6) and bKGD (2, 6, 1, 2, 6); only these exact types (other
//!   spellings are other chunks, free like every unknown ancillary chunk);
//! * unknown critical chunks (uppercase first letter) are rejected; unknown
//!   ancillary chunks (text, EXIF, …) are fine.
//!
//! And the compressed data, inflated as it streams by (zlib-rs through
//! `flate2`), so that a PNG is well formed to its last byte and no
//! decompression bomb passes:
//!
//! * the image data (the IDAT run) is one zlib stream whose checksum holds,
//!   that inflates to exactly the bytes the IHDR's dimensions, depth, colour
//!   type and interlacing need (every row, of every Adam7 pass, with a filter
//!   type 0–4), and that ends where the IDAT run ends: no more than one byte
//!   past the image's size is ever inflated, so a 10 × 10 image whose data
//!   would inflate to gigabytes costs a few bytes of work;
//! * an APNG's frames the same way: each `fcTL` inside the canvas (the one
//!   before IDAT the whole canvas), each later frame's `fdAT` run one zlib
//!   stream of exactly that frame's size, and the pixels of all frames
//!   together within [`Limits::max_pixels`];
//! * compressed text and ICC profile chunks (`zTXt`, compressed `iTXt`,
//!   `iCCP`): a keyword of 1–79 bytes, compression method 0, and one complete
//!   zlib stream ending with the chunk; together they may inflate to at most
//!   [`MAX_ANCILLARY_INFLATE`] bytes.
//!
//! An inflate error found inside a chunk is reported after that chunk's CRC
//! is checked, so a damaged chunk says "CRC mismatch". State is bounded
//! whatever the body size: the inflater and its 32 KiB output buffer are
//! allocated at the first compressed chunk and reused.

use flate2::{Decompress, FlushDecompress, Status};

use super::{Limits, Rejection, Scan, Sticky};

const SIGNATURE: [u8; 8] = *b"\x89PNG\r\n\x1a\n";
const MAX_CHUNK_LEN: u32 = 0x7FFF_FFFF;
/// Payloads we keep for checks: IHDR (13 bytes) and APNG's fcTL (26 bytes).
/// The others are hashed, and inflated when they are compressed.
const IHDR_LEN: u32 = 13;
const FCTL_LEN: u32 = 26;
/// The most that a PNG's compressed text and ICC profile chunks (`zTXt`,
/// `iTXt`, `iCCP`) may inflate to, together: libpng's own default cap on a
/// chunk it decompresses (`PNG_USER_CHUNK_MALLOC_MAX`, 8 000 000 bytes).
pub const MAX_ANCILLARY_INFLATE: u64 = 8_000_000;
/// The data length the PNG specification (third edition) fixes for chunk
/// type `t`, if it fixes one (sBIT's and bKGD's follow the colour type).
/// IHDR, IEND, PLTE and fcTL are checked where their data is used. The
/// mastering display and light level chunks are matched in the spelling of
/// the Recommendation (`mDCV`, `cLLI`) and of the drafts before it (`mDCv`,
/// `cLLi`, which encoders wrote, with the same layout).
fn fixed_len(t: &[u8; 4], colour: u8) -> Option<u32> {
    Some(match t {
        b"gAMA" | b"cICP" => 4,
        b"cHRM" => 32,
        b"sRGB" => 1,
        b"pHYs" => 9,
        b"tIME" => 7,
        b"mDCV" | b"mDCv" => 24,
        b"cLLI" | b"cLLi" | b"acTL" => 8,
        // One significant-bit count per channel (palette: per RGB channel).
        b"sBIT" => match colour {
            0 => 1,
            4 => 2,
            2 | 3 => 3,
            _ => 4,
        },
        // A palette index, a 16-bit grey or three 16-bit samples.
        b"bKGD" => match colour {
            3 => 1,
            0 | 4 => 2,
            _ => 6,
        },
        _ => return None,
    })
}

/// Output buffer of the inflater (reused for every stream of one PNG).
const INFLATE_BUF: usize = 32 * 1024;
/// Adam7's passes: first column, first row, column step, row step.
const ADAM7: [(u32, u32, u32, u32); 7] = [
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
];

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

/// What the data of the current chunk feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Only the CRC.
    Crc,
    /// Kept: IHDR's payload.
    Ihdr,
    /// Kept: an fcTL's payload.
    Fctl,
    /// The image data stream (IDAT).
    Image,
    /// An APNG frame's data stream (fdAT: a sequence number, then data).
    Frame,
    /// A compressed text or ICC profile chunk (header, then maybe a stream).
    Text,
}

/// Where a `zTXt`, `iTXt` or `iCCP` chunk's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// The keyword (profile name for iCCP), `n` bytes of it so far.
    Keyword(u8),
    /// zTXt / iCCP: the compression method byte.
    Method,
    /// iTXt: the compression flag.
    ItxtFlag,
    /// iTXt: the compression method byte.
    ItxtMethod { compressed: bool },
    /// iTXt: the language tag, up to its NUL.
    Lang { compressed: bool },
    /// iTXt: the translated keyword, up to its NUL.
    TransKeyword { compressed: bool },
    /// The rest of the chunk is a zlib stream.
    Compressed,
    /// The rest of the chunk is uncompressed text (iTXt with flag 0).
    Plain,
}

/// The rows an image (or an APNG frame) must inflate to: for each row of
/// each pass, one filter-type byte (0–4) and the row's bytes.
#[derive(Debug, Clone)]
struct Rows {
    width: u32,
    height: u32,
    /// Bits per pixel: bit depth × channels.
    bits: u64,
    interlaced: bool,
    /// The next pass to start (Adam7: 0–7; not interlaced: 0–1).
    next_pass: u8,
    /// Rows of the current pass not begun yet.
    rows_left: u32,
    /// Bytes of a row of the current pass, without its filter byte.
    row_bytes: u64,
    /// Bytes of the current row still to come.
    left: u64,
    /// Index of the current row in its pass.
    row: u32,
}

impl Rows {
    fn new(width: u32, height: u32, bits: u64, interlaced: bool) -> Self {
        Self {
            width,
            height,
            bits,
            interlaced,
            next_pass: 0,
            rows_left: 0,
            row_bytes: 0,
            left: 0,
            row: 0,
        }
    }

    /// Pass `p`'s width and height.
    fn pass_dims(&self, p: u8) -> (u32, u32) {
        if !self.interlaced {
            return (self.width, self.height);
        }
        let (x0, y0, dx, dy) = ADAM7[p as usize];
        let dim = |n: u32, first: u32, step: u32| {
            if n > first {
                (n - first).div_ceil(step)
            } else {
                0
            }
        };
        (dim(self.width, x0, dx), dim(self.height, y0, dy))
    }

    fn passes(&self) -> u8 {
        if self.interlaced { 7 } else { 1 }
    }

    fn row_bytes(&self, width: u32) -> u64 {
        // Below 2^38: a width under 2^32, at most 64 bits per pixel.
        (u64::from(width) * self.bits).div_ceil(8)
    }

    /// The bytes the whole image inflates to (saturating: `max_pixels` may
    /// be set high enough for the product to pass 2^64).
    fn expected(&self) -> u64 {
        (0..self.passes())
            .map(|p| {
                let (w, h) = self.pass_dims(p);
                if w == 0 || h == 0 {
                    0
                } else {
                    u64::from(h).saturating_mul(1 + self.row_bytes(w))
                }
            })
            .fold(0, u64::saturating_add)
    }

    /// Starts the next pass that has pixels; false when none is left.
    fn start_pass(&mut self) -> bool {
        while self.next_pass < self.passes() {
            let (w, h) = self.pass_dims(self.next_pass);
            self.next_pass += 1;
            if w > 0 && h > 0 {
                self.rows_left = h;
                self.row_bytes = self.row_bytes(w);
                self.row = 0;
                return true;
            }
        }
        false
    }

    /// Walks inflated bytes: every row must start with a filter type 0–4.
    fn walk(&mut self, out: &[u8]) -> Result<(), String> {
        let mut i = 0;
        while i < out.len() {
            if self.left == 0 {
                if self.rows_left == 0 && !self.start_pass() {
                    return Err("inflates to more rows than the image has".into());
                }
                let filter = out[i];
                if filter > 4 {
                    let pass = if self.interlaced {
                        format!(" of Adam7 pass {}", self.next_pass)
                    } else {
                        String::new()
                    };
                    return Err(format!(
                        "row {}{pass} has filter type {filter} (0-4 are defined)",
                        self.row
                    ));
                }
                self.rows_left -= 1;
                self.row += 1;
                self.left = self.row_bytes;
                i += 1;
            } else {
                let take = self.left.min((out.len() - i) as u64);
                self.left -= take;
                i += take as usize;
            }
        }
        Ok(())
    }
}

/// Why a zlib stream was refused.
#[derive(Debug)]
enum Fault {
    /// Not a zlib stream, or its data or checksum is corrupt.
    Corrupt,
    /// Bytes after the end of the stream.
    Extra,
    /// It inflates past its cap.
    TooLong,
    /// The rows' check refused what it inflated to.
    Rows(String),
}

/// One zlib stream at a time, inflated into a scratch buffer and counted.
struct Inflate {
    d: Decompress,
    out: Box<[u8]>,
    /// Bytes inflated from the current stream.
    produced: u64,
    /// The most the current stream may inflate to.
    cap: u64,
    /// The stream's end (and checksum) was reached.
    ended: bool,
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflate")
            .field("produced", &self.produced)
            .field("cap", &self.cap)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Inflate {
    fn new() -> Self {
        Self {
            d: Decompress::new(true),
            out: vec![0; INFLATE_BUF].into_boxed_slice(),
            produced: 0,
            cap: 0,
            ended: false,
        }
    }

    fn start(&mut self, cap: u64) {
        self.d.reset(true);
        self.produced = 0;
        self.cap = cap;
        self.ended = false;
    }

    /// Inflates `input` (empty: only what the inflater still holds), never
    /// more than one byte past the cap; `rows` checks what comes out.
    fn pump(&mut self, mut input: &[u8], mut rows: Option<&mut Rows>) -> Result<(), Fault> {
        loop {
            if self.ended {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(Fault::Extra)
                };
            }
            let room =
                (self.out.len() as u64).min((self.cap - self.produced).saturating_add(1)) as usize;
            let (in0, out0) = (self.d.total_in(), self.d.total_out());
            let status = self
                .d
                .decompress(input, &mut self.out[..room], FlushDecompress::None);
            let used = (self.d.total_in() - in0) as usize;
            let made = (self.d.total_out() - out0) as usize;
            input = &input[used..];
            if made > 0 {
                // The rows first, up to the cap: what is found, and so the
                // verdict, must not depend on how much one call inflated.
                let within = made.min((self.cap - self.produced) as usize);
                if let Some(rows) = rows.as_deref_mut() {
                    rows.walk(&self.out[..within]).map_err(Fault::Rows)?;
                }
                self.produced += made as u64;
                if self.produced > self.cap {
                    return Err(Fault::TooLong);
                }
            }
            match status {
                Err(_) => return Err(Fault::Corrupt),
                Ok(Status::StreamEnd) => self.ended = true,
                Ok(_) => {
                    if made < room && input.is_empty() {
                        return Ok(());
                    }
                    if used == 0 && made == 0 {
                        // zlib always moves with input and room; never seen.
                        return Err(Fault::Corrupt);
                    }
                }
            }
        }
    }
}

/// An image data stream being checked: the IDAT run or one APNG frame.
#[derive(Debug, Clone)]
struct ImageStream {
    rows: Rows,
    expected: u64,
    /// "IDAT" or "fdAT", and the offset of the stream's first chunk.
    kind: &'static str,
    at: u64,
}

impl ImageStream {
    fn describe(&self, what: impl std::fmt::Display) -> String {
        let what_data = if self.kind == "IDAT" {
            "image data"
        } else {
            "frame data"
        };
        format!(
            "PNG {what_data} ({} chunks from offset {}): {what}",
            self.kind, self.at
        )
    }

    fn fault(&self, fault: Fault) -> String {
        match fault {
            Fault::Corrupt => self.describe("not a valid zlib stream (corrupt data or checksum)"),
            Fault::Extra => self.describe("data after the end of its zlib stream"),
            Fault::TooLong => self.describe(format_args!(
                "inflates to more than the {} bytes a {} x {} image of this type needs",
                self.expected, self.rows.width, self.rows.height
            )),
            Fault::Rows(what) => self.describe(what),
        }
    }
}

/// Streaming PNG scanner; see the module documentation for the rules.
#[derive(Debug)]
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
    /// IHDR payload.
    ihdr: [u8; IHDR_LEN as usize],
    colour_type: u8,
    /// Bits per pixel (bit depth × channels) and interlacing, from IHDR.
    bits: u64,
    interlaced: bool,
    plte_seen: bool,
    /// What the current chunk's data feeds.
    feed: Feed,
    /// The current fcTL's payload.
    fctl: [u8; FCTL_LEN as usize],
    /// The inflater, allocated at the first compressed chunk.
    zlib: Option<Box<Inflate>>,
    /// The open image data stream, from its first chunk to the next chunk
    /// of another type.
    image: Option<ImageStream>,
    /// The frame (width, height) an fcTL after IDAT announced, and the
    /// fcTL's offset, until its first fdAT.
    frame: Option<(u32, u32, u64)>,
    /// Pixels of the image and of every frame announced so far.
    pixels: u64,
    /// Bytes inflated from compressed text and ICC profile chunks so far.
    ancillary: u64,
    /// Where a compressed text or ICC profile chunk's data is.
    text: Head,
    /// A fault found inside the current chunk's data: the verdict once the
    /// chunk's CRC is checked (a damaged chunk says "CRC mismatch").
    pending: Option<String>,
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
            bits: 0,
            interlaced: false,
            plte_seen: false,
            feed: Feed::Crc,
            fctl: [0; FCTL_LEN as usize],
            zlib: None,
            image: None,
            frame: None,
            pixels: 0,
            ancillary: 0,
            text: Head::Compressed,
            pending: None,
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
        Rejection::malformed(self.detail(what))
    }

    fn detail(&self, what: impl std::fmt::Display) -> String {
        format!(
            "PNG chunk {} at offset {}: {what}",
            self.type_name(),
            self.chunk_off
        )
    }

    fn unfed_frame(&self, at: u64) -> Rejection {
        self.err(format_args!(
            "the frame announced by the fcTL at offset {at} has no fdAT data"
        ))
    }

    /// The image's width and height, from IHDR.
    fn dims(&self) -> (u32, u32) {
        let d = self.ihdr;
        (
            u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        )
    }

    /// Opens the image data stream of the current chunk's run.
    fn start_image(&mut self, kind: &'static str, width: u32, height: u32) {
        let rows = Rows::new(width, height, self.bits, self.interlaced);
        let expected = rows.expected();
        self.zlib
            .get_or_insert_with(|| Box::new(Inflate::new()))
            .start(expected);
        self.image = Some(ImageStream {
            rows,
            expected,
            kind,
            at: self.chunk_off,
        });
    }

    /// Image data of the current chunk.
    fn image_data(&mut self, data: &[u8]) {
        if self.pending.is_some() || data.is_empty() {
            return;
        }
        let (Some(zlib), Some(img)) = (self.zlib.as_deref_mut(), self.image.as_mut()) else {
            return;
        };
        if let Err(fault) = zlib.pump(data, Some(&mut img.rows)) {
            self.pending = Some(img.fault(fault));
        }
    }

    /// The run of image data chunks ended: its stream must have ended with
    /// exactly the image's bytes.
    fn close_image(&mut self) -> Result<(), Rejection> {
        let Some(mut img) = self.image.take() else {
            return Ok(());
        };
        let Some(zlib) = self.zlib.as_deref_mut() else {
            return Ok(());
        };
        zlib.pump(&[], Some(&mut img.rows))
            .map_err(|fault| Rejection::malformed(img.fault(fault)))?;
        if !zlib.ended {
            return Err(Rejection::malformed(
                img.describe("ends before its zlib stream does"),
            ));
        }
        if zlib.produced < img.expected {
            return Err(Rejection::malformed(img.describe(format_args!(
                "inflates to {} of the {} bytes a {} x {} image of this type needs",
                zlib.produced, img.expected, img.rows.width, img.rows.height
            ))));
        }
        Ok(())
    }

    /// Data of a `zTXt`, `iTXt` or `iCCP` chunk: its header, then its zlib
    /// stream (or iTXt's uncompressed text).
    fn text_data(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.pending.is_none() {
            let itxt = self.chunk_type == *b"iTXt";
            match self.text {
                Head::Keyword(n) => {
                    let b = data[0];
                    data = &data[1..];
                    if b == 0 {
                        if n == 0 {
                            self.pending = Some(self.detail("empty keyword"));
                        }
                        self.text = if itxt { Head::ItxtFlag } else { Head::Method };
                    } else if n == 79 {
                        self.pending = Some(self.detail("keyword longer than 79 bytes"));
                    } else {
                        self.text = Head::Keyword(n + 1);
                    }
                }
                Head::Method => {
                    let b = data[0];
                    data = &data[1..];
                    if b != 0 {
                        self.pending =
                            Some(self.detail(format_args!("unknown compression method {b}")));
                    } else {
                        self.start_text();
                    }
                }
                Head::ItxtFlag => {
                    let b = data[0];
                    data = &data[1..];
                    match b {
                        0 | 1 => self.text = Head::ItxtMethod { compressed: b == 1 },
                        _ => {
                            self.pending = Some(
                                self.detail(format_args!("compression flag {b} (must be 0 or 1)")),
                            )
                        }
                    }
                }
                Head::ItxtMethod { compressed } => {
                    let b = data[0];
                    data = &data[1..];
                    if compressed && b != 0 {
                        self.pending =
                            Some(self.detail(format_args!("unknown compression method {b}")));
                    } else {
                        self.text = Head::Lang { compressed };
                    }
                }
                Head::Lang { compressed } | Head::TransKeyword { compressed } => {
                    match memchr::memchr(0, data) {
                        None => data = &[],
                        Some(k) => {
                            data = &data[k + 1..];
                            if matches!(self.text, Head::Lang { .. }) {
                                self.text = Head::TransKeyword { compressed };
                            } else if compressed {
                                self.start_text();
                            } else {
                                self.text = Head::Plain;
                            }
                        }
                    }
                }
                Head::Compressed => {
                    let zlib = self.zlib.as_deref_mut().expect("started with the stream");
                    if let Err(fault) = zlib.pump(data, None) {
                        self.pending = Some(self.text_fault(fault));
                    }
                    data = &[];
                }
                Head::Plain => data = &[],
            }
        }
    }

    fn start_text(&mut self) {
        self.zlib
            .get_or_insert_with(|| Box::new(Inflate::new()))
            .start(MAX_ANCILLARY_INFLATE - self.ancillary);
        self.text = Head::Compressed;
    }

    fn text_fault(&self, fault: Fault) -> String {
        match fault {
            Fault::Corrupt | Fault::Rows(_) => {
                self.detail("compressed data is not a valid zlib stream")
            }
            Fault::Extra => self.detail("data after the end of its zlib stream"),
            Fault::TooLong => self.detail(format_args!(
                "compressed text and ICC profile chunks inflate past \
                 {MAX_ANCILLARY_INFLATE} bytes in total"
            )),
        }
    }

    /// A `zTXt`, `iTXt` or `iCCP` chunk ended (its CRC checked).
    fn end_text(&mut self) -> Result<(), Rejection> {
        match self.text {
            Head::Plain => Ok(()),
            Head::Compressed => {
                let zlib = self.zlib.as_deref_mut().expect("started with the stream");
                let ended = zlib.pump(&[], None).map(|()| zlib.ended);
                let produced = zlib.produced;
                match ended {
                    Err(fault) => Err(Rejection::malformed(self.text_fault(fault))),
                    Ok(false) => Err(self.err("compressed data ends before its zlib stream does")),
                    Ok(true) => {
                        self.ancillary += produced;
                        Ok(())
                    }
                }
            }
            _ => Err(self.err("the chunk ends inside its header")),
        }
    }

    /// An fcTL (its CRC checked): an APNG frame inside the canvas.
    fn check_fctl(&mut self) -> Result<(), Rejection> {
        let d = self.fctl;
        let be = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        let (w, h, x, y) = (be(4), be(8), be(12), be(16));
        let (dispose, blend) = (d[24], d[25]);
        let (cw, ch) = self.dims();
        if w == 0 || h == 0 {
            return Err(self.err(format_args!("zero frame dimension ({w} x {h})")));
        }
        if u64::from(x) + u64::from(w) > u64::from(cw)
            || u64::from(y) + u64::from(h) > u64::from(ch)
        {
            return Err(self.err(format_args!(
                "frame {w} x {h} at ({x}, {y}) leaves the {cw} x {ch} image"
            )));
        }
        if dispose > 2 {
            return Err(self.err(format_args!("dispose_op {dispose} (0-2 are defined)")));
        }
        if blend > 1 {
            return Err(self.err(format_args!("blend_op {blend} (0-1 are defined)")));
        }
        if self.phase == Phase::BeforeIdat {
            // Its frame is the image itself.
            if (x, y, w, h) != (0, 0, cw, ch) {
                return Err(self.err(format_args!(
                    "the fcTL before IDAT must frame the whole {cw} x {ch} image"
                )));
            }
            return Ok(());
        }
        if let Some((_, _, at)) = self.frame {
            return Err(self.unfed_frame(at));
        }
        self.frame = Some((w, h, self.chunk_off));
        self.pixels = self.pixels.saturating_add(u64::from(w) * u64::from(h));
        if self.pixels > self.max_pixels {
            return Err(self.err(format_args!(
                "the animation's frames total {} pixels, over the limit of {} \
                 (inspect.max_pixels)",
                self.pixels, self.max_pixels
            )));
        }
        Ok(())
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
                    // Bytes of this chunk's data before `data`.
                    let done = (self.chunk_len - remaining) as usize;
                    match self.feed {
                        Feed::Crc => {}
                        // Their lengths are fixed (checked in on_header).
                        Feed::Ihdr => self.ihdr[done..done + take].copy_from_slice(data),
                        Feed::Fctl => self.fctl[done..done + take].copy_from_slice(data),
                        Feed::Image => self.image_data(data),
                        Feed::Frame => {
                            // An fdAT starts with its 4-byte sequence number.
                            let skip = 4usize.saturating_sub(done).min(take);
                            self.image_data(&data[skip..]);
                        }
                        Feed::Text => self.text_data(data),
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
        // A run of image data (the IDAT chunks, or one frame's fdAT chunks)
        // ends at the first chunk of another type: its stream must be whole.
        if self
            .image
            .as_ref()
            .is_some_and(|img| t != *img.kind.as_bytes())
        {
            self.close_image()?;
        }
        if self.phase == Phase::InIdat && t != *b"IDAT" {
            self.phase = Phase::AfterIdat;
        }
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
        // Only after IHDR (just checked), so the colour type is known.
        if let Some(want) = fixed_len(&t, self.colour_type)
            && self.chunk_len != want
        {
            let of = if matches!(&t, b"sBIT" | b"bKGD") {
                format!(" for colour type {}", self.colour_type)
            } else {
                String::new()
            };
            return Err(self.err(format_args!(
                "length {} (must be {want}{of})",
                self.chunk_len
            )));
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
                    let (w, h) = self.dims();
                    self.start_image("IDAT", w, h);
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
                if let Some((_, _, at)) = self.frame {
                    return Err(self.unfed_frame(at));
                }
            }
            b"fcTL" if self.chunk_len != FCTL_LEN => {
                return Err(self.err(format_args!("length {} (must be 26)", self.chunk_len)));
            }
            b"fdAT" => {
                if self.phase != Phase::AfterIdat {
                    return Err(self.err("fdAT before the image data (IDAT)"));
                }
                if self.chunk_len < 4 {
                    return Err(self.err(format_args!(
                        "length {} (at least 4: the sequence number)",
                        self.chunk_len
                    )));
                }
                if self.image.is_none() {
                    let Some((w, h, _)) = self.frame.take() else {
                        return Err(self.err("fdAT without an fcTL announcing its frame"));
                    };
                    self.start_image("fdAT", w, h);
                }
            }
            b"zTXt" | b"iTXt" | b"iCCP" => self.text = Head::Keyword(0),
            _ if critical => return Err(self.err("unknown critical chunk")),
            _ => {}
        }
        self.feed = match &t {
            b"IHDR" => Feed::Ihdr,
            b"fcTL" => Feed::Fctl,
            b"IDAT" => Feed::Image,
            b"fdAT" => Feed::Frame,
            b"zTXt" | b"iTXt" | b"iCCP" => Feed::Text,
            _ => Feed::Crc,
        };
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
        if let Some(detail) = self.pending.take() {
            return Err(Rejection::malformed(detail));
        }
        match &self.chunk_type {
            b"IHDR" => self.check_ihdr()?,
            b"PLTE" => self.plte_seen = true,
            b"fcTL" => self.check_fctl()?,
            b"zTXt" | b"iTXt" | b"iCCP" => self.end_text()?,
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
        let channels: u64 = match colour {
            2 => 3,
            4 => 2,
            6 => 4,
            _ => 1,
        };
        self.colour_type = colour;
        self.bits = u64::from(depth) * channels;
        self.interlaced = interlace == 1;
        self.pixels = pixels;
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

    /// An IDAT chunk holding the zlib stream of a `w` x `h` image of `bits`
    /// bits per pixel, not interlaced: every row filter type 0, all zero.
    fn idat(w: u32, h: u32, bits: u64) -> Vec<u8> {
        use std::io::Write;
        let row = 1 + (u64::from(w) * bits).div_ceil(8);
        let raw = vec![0u8; (row * u64::from(h)) as usize];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&raw).unwrap();
        chunk(b"IDAT", &z.finish().unwrap())
    }

    fn scan(bytes: &[u8]) -> Result<(), Rejection> {
        let mut s = PngScanner::new(&Limits::default());
        s.feed(bytes)?;
        s.finish()
    }

    #[test]
    fn minimal_ok_every_split() {
        let p = png(ihdr(1, 1, 8, 0), &[idat(1, 1, 8), chunk(b"IEND", b"")]);
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
                let channels = [1, 0, 3, 0, 2, 0, 4, 0][colour as usize];
                let p = png(
                    ihdr(2, 2, depth, colour),
                    &[idat(2, 2, u64::from(depth) * channels), chunk(b"IEND", b"")],
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
                    idat(2, 2, u64::from(depth)),
                    chunk(b"IEND", b""),
                ],
            );
            assert_eq!(scan(&p), Ok(()));
        }
        let p = png(
            ihdr(2, 2, 16, 3),
            &[chunk(b"PLTE", &[0; 6]), idat(2, 2, 16), chunk(b"IEND", b"")],
        );
        assert!(scan(&p).is_err());
    }

    #[test]
    fn ordering_rules() {
        let rgb = || idat(1, 1, 24);
        let iend = || chunk(b"IEND", b"");
        let e = scan(&png(
            ihdr(1, 1, 8, 0),
            &[
                idat(1, 1, 8),
                chunk(b"tEXt", b"a\0b"),
                chunk(b"IDAT", b""),
                iend(),
            ],
        ))
        .unwrap_err();
        assert!(e.detail.contains("not consecutive"), "{e}");
        let e = scan(&png(ihdr(1, 1, 8, 0), &[iend()])).unwrap_err();
        assert!(e.detail.contains("no IDAT"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 0),
            &[chunk(b"PLTE", &[0; 3]), rgb(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("not allowed"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[rgb(), chunk(b"PLTE", &[0; 3]), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("after IDAT"), "{e}");
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[chunk(b"ABCD", b""), rgb(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("unknown critical"), "{e}");
        assert_eq!(
            scan(&png(
                ihdr(1, 1, 8, 2),
                &[chunk(b"abCD", b"??"), rgb(), iend()]
            )),
            Ok(())
        );
        let e = scan(&png(
            ihdr(1, 1, 8, 2),
            &[chunk(b"ab1D", b""), rgb(), iend()],
        ))
        .unwrap_err();
        assert!(e.detail.contains("PNG chunk 61623144 at offset 33"), "{e}");
        let e = scan(&png(ihdr(1, 1, 8, 2), &[rgb(), chunk(b"IEND", b"x")])).unwrap_err();
        assert!(e.detail.contains("must be 0"), "{e}");
    }

    /// Chunks of a fixed length (gAMA, sRGB, pHYs…, the adversarial round's
    /// cases): a wrong length is refused although the CRC is right.
    #[test]
    fn fixed_length_chunks() {
        let with = |colour: u8, c: Vec<u8>| {
            let bits = [8, 0, 24, 8][colour as usize];
            let mut extra = vec![c];
            if colour == 3 {
                extra.push(chunk(b"PLTE", &[0; 3]));
            }
            extra.extend([idat(1, 1, bits), chunk(b"IEND", b"")]);
            scan(&png(ihdr(1, 1, 8, colour), &extra))
        };
        assert_eq!(with(0, chunk(b"gAMA", &[0, 0, 0xb1, 0x8f])), Ok(()));
        for (c, detail) in [
            (
                chunk(b"gAMA", &[0, 0, 0xb1, 0x8f, 0]),
                "gAMA at offset 33: length 5 (must be 4)",
            ),
            (
                chunk(b"sRGB", b""),
                "sRGB at offset 33: length 0 (must be 1)",
            ),
            (
                chunk(b"pHYs", b"\0"),
                "pHYs at offset 33: length 1 (must be 9)",
            ),
        ] {
            assert_eq!(
                with(0, c).unwrap_err().detail,
                format!("PNG chunk {detail}")
            );
        }
        assert_eq!(with(2, chunk(b"bKGD", &[0; 6])), Ok(()));
        assert_eq!(
            with(2, chunk(b"bKGD", &[0; 2])).unwrap_err().detail,
            "PNG chunk bKGD at offset 33: length 2 (must be 6 for colour type 2)"
        );
        assert_eq!(with(3, chunk(b"sBIT", &[8; 3])), Ok(()));
        assert_eq!(
            with(3, chunk(b"sBIT", &[8; 1])).unwrap_err().detail,
            "PNG chunk sBIT at offset 33: length 1 (must be 3 for colour type 3)"
        );
        // Other spellings are unknown ancillary chunks: free.
        assert_eq!(with(0, chunk(b"gAMa", &[0; 5])), Ok(()));
    }

    /// A 10 x 10 image whose data would inflate to 64 MiB: refused after
    /// inflating one byte past the 110 the image needs, whatever the feed.
    #[test]
    fn a_bomb_is_cut_one_byte_past_the_image() {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&vec![0u8; 64 << 20]).unwrap();
        let p = png(
            ihdr(10, 10, 8, 0),
            &[chunk(b"IDAT", &z.finish().unwrap()), chunk(b"IEND", b"")],
        );
        for piece in [p.len(), 16 * 1024, 7] {
            let mut s = PngScanner::new(&Limits::default());
            let r = p.chunks(piece).try_for_each(|c| s.feed(c));
            let e = r.and_then(|()| s.finish()).unwrap_err();
            assert_eq!(
                e.detail,
                "PNG image data (IDAT chunks from offset 33): inflates to more than \
                 the 110 bytes a 10 x 10 image of this type needs"
            );
            let zlib = s.inner().zlib.as_deref().unwrap();
            assert_eq!(zlib.produced, 111, "{piece}-byte pieces");
            assert!(zlib.d.total_in() < 4096, "{}", zlib.d.total_in());
        }
    }

    /// Adam7 passes of small images: which are empty, and the bytes they need.
    #[test]
    fn adam7_sizes() {
        let size = |w, h, bits| Rows::new(w, h, bits, true).expected();
        // 1 x 1: only pass 1, one row of one pixel.
        assert_eq!(size(1, 1, 8), 2);
        assert_eq!(size(1, 1, 1), 2);
        // 8 x 8, 8 bits: passes are 1x1, 1x1, 2x1, 2x2, 4x2, 4x4, 8x4 pixels.
        let rows = [(1, 1), (1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8)];
        let want: u64 = rows.iter().map(|&(h, w)| h * (1 + w)).sum();
        assert_eq!(size(8, 8, 8), want);
        // Not interlaced: rows of ceil(w x bits / 8) bytes plus a filter byte.
        assert_eq!(Rows::new(3, 2, 1, false).expected(), 2 * (1 + 1));
        assert_eq!(Rows::new(70, 46, 24, false).expected(), 46 * 211);
    }
}
