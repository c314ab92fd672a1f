//! Request path, step 8 (see `ARCHITECTURE.md`).
//!
//! Body inspection: the format scanners.
//!
//! The scanners here are sans-IO state machines: they are fed the request body in
//! arbitrary chunks (`feed`) and asked for a final verdict (`finish`). They never
//! see a socket and keep bounded state whatever the file size, so the same code
//! serves the HTTP body adapter (`body.rs`), the `scan` command and the fuzzers.
//!
//! Invariant shared by every scanner: feeding a body in any chunking gives the
//! same verdict as feeding it in one piece.

use std::fmt;

pub mod jpeg;
pub mod pdf;
pub mod png;

/// A scanner's state machine: fed the body in chunks, then told it ended.
/// [`Sticky`] wraps every one of them in the same contract.
pub trait Scan {
    /// The next chunk of the body.
    fn run(&mut self, chunk: &[u8]) -> Result<(), Rejection>;
    /// The body ended: the final checks.
    fn end(&mut self) -> Result<(), Rejection>;
}

/// The one contract of every scanner (and of [`Inspector`]):
/// - the first rejection is the verdict: every later `feed` and `finish`
///   returns it, and the state machine is not run again;
/// - `finish` is idempotent;
/// - a chunk fed after `finish` is ignored: `feed` returns the final verdict.
#[derive(Debug, Clone)]
pub struct Sticky<S> {
    inner: S,
    /// The first rejection.
    verdict: Option<Rejection>,
    /// `finish`'s result, once it ran.
    finished: Option<Result<(), Rejection>>,
}

impl<S: Scan> Sticky<S> {
    pub fn wrap(inner: S) -> Self {
        Self {
            inner,
            verdict: None,
            finished: None,
        }
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        if let Some(v) = &self.verdict {
            return Err(v.clone());
        }
        if let Some(f) = &self.finished {
            return f.clone();
        }
        let result = self.inner.run(chunk);
        if let Err(e) = &result {
            self.verdict = Some(e.clone());
        }
        result
    }

    /// End of body: the final verdict.
    pub fn finish(&mut self) -> Result<(), Rejection> {
        if let Some(v) = &self.verdict {
            return Err(v.clone());
        }
        if let Some(f) = &self.finished {
            return f.clone();
        }
        let result = self.inner.end();
        if let Err(e) = &result {
            self.verdict = Some(e.clone());
        }
        self.finished = Some(result.clone());
        result
    }

    /// The state machine (for what it learnt, not to feed it).
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// `inspect.max_pixels`: width × height above this is `malformed_image`.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
/// `inspect.pdf_active_content`.
pub const DEFAULT_PDF_ACTIVE_CONTENT: ActiveContentPolicy = ActiveContentPolicy::Reject;

/// The image types the gateway accepts, as declared by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    Jpeg,
    Png,
    Pdf,
}

impl MediaType {
    /// Parses a `Content-Type` header value: case-insensitive, parameters allowed,
    /// `image/jpg` is `image/jpeg`. `None` for anything else.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("image/jpeg") || essence.eq_ignore_ascii_case("image/jpg") {
            Some(Self::Jpeg)
        } else if essence.eq_ignore_ascii_case("image/png") {
            Some(Self::Png)
        } else if essence.eq_ignore_ascii_case("application/pdf") {
            Some(Self::Pdf)
        } else {
            None
        }
    }

    /// The canonical MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Pdf => "application/pdf",
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime())
    }
}

/// What to do with PDF active content (`inspect.pdf_active_content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActiveContentPolicy {
    #[default]
    Reject,
    Allow,
}

/// Limits that protect the gateway from decompression bombs and absurd files.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `inspect.max_pixels`: width × height above this is `malformed_image`.
    pub max_pixels: u64,
    pub pdf_active_content: ActiveContentPolicy,
    /// Hard cap on the bytes inflated from one PDF object stream.
    pub max_inflate_bytes: u64,
    /// Hard cap on the total bytes inflated from one PDF.
    pub max_inflate_total: u64,
    /// Maximum PDF dictionary/array nesting depth the scanner follows.
    pub max_nesting: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            pdf_active_content: DEFAULT_PDF_ACTIVE_CONTENT,
            max_inflate_bytes: 16 * 1024 * 1024,
            max_inflate_total: 64 * 1024 * 1024,
            max_nesting: 64,
        }
    }
}

/// The stable codes (`docs/errors.md`) an inspection can end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// The bytes are not of the declared type (422).
    ContentMismatch,
    /// The bytes claim the type but are not a well-formed file of it, or exceed a limit (422).
    MalformedImage,
    /// PDF declares encryption (422).
    PdfEncrypted,
    /// PDF carries JavaScript, launch actions, embedded files or rich media (422).
    PdfActiveContent,
    /// No accepted type could be sniffed (415; the `scan` command only).
    UnsupportedMediaType,
    /// The file is empty (400, as an upload with no body; the `scan` command
    /// only).
    EmptyBody,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentMismatch => "content_mismatch",
            Self::MalformedImage => "malformed_image",
            Self::PdfEncrypted => "pdf_encrypted",
            Self::PdfActiveContent => "pdf_active_content",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::EmptyBody => "empty_body",
        }
    }
}

/// A rejection: a stable code and a human detail such as
/// "PNG chunk IDAT at offset 1234: CRC mismatch". The detail never quotes
/// more than a few bytes of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub detail: String,
}

impl Rejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectCode::MalformedImage, detail)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for Rejection {}

/// Sniffs the type from the first bytes. `None` until enough bytes are seen to
/// tell, or when they match none of the accepted types.
pub fn sniff(prefix: &[u8]) -> Option<MediaType> {
    if prefix.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(MediaType::Jpeg)
    } else if prefix.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(MediaType::Png)
    } else if prefix.starts_with(b"%PDF-") {
        Some(MediaType::Pdf)
    } else {
        None
    }
}

/// The scanner for one declared type. An enum, not a trait object: no boxing.
enum Scanner {
    Jpeg(jpeg::JpegScanner),
    Png(png::PngScanner),
    /// Boxed: the PDF scanner's lexer and inflate state dwarf the others.
    Pdf(Box<pdf::PdfScanner>),
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scanner::Jpeg(_) => "Scanner::Jpeg",
            Scanner::Png(_) => "Scanner::Png",
            Scanner::Pdf(_) => "Scanner::Pdf",
        })
    }
}

impl Scanner {
    fn new(declared: MediaType, limits: &Limits) -> Self {
        match declared {
            MediaType::Jpeg => Self::Jpeg(jpeg::JpegScanner::new(limits)),
            MediaType::Png => Self::Png(png::PngScanner::new(limits)),
            MediaType::Pdf => Self::Pdf(Box::new(pdf::PdfScanner::new(limits))),
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        match self {
            Self::Jpeg(s) => s.feed(chunk),
            Self::Png(s) => s.feed(chunk),
            Self::Pdf(s) => s.feed(chunk),
        }
    }

    fn finish(&mut self) -> Result<(), Rejection> {
        match self {
            Self::Jpeg(s) => s.finish(),
            Self::Png(s) => s.finish(),
            Self::Pdf(s) => s.finish(),
        }
    }
}

/// How many leading bytes [`Inspector`] collects before it decides whether the
/// body is of the declared type (the PNG signature is the longest).
pub const SNIFF_LEN: usize = 8;

/// The signature prefix a body of `ty` must start with (for JPEG and PNG; a PDF
/// header may follow junk, so only its scanner can say).
fn signature(ty: MediaType) -> &'static [u8] {
    match ty {
        MediaType::Jpeg => &[0xFF, 0xD8, 0xFF],
        MediaType::Png => b"\x89PNG\r\n\x1a\n",
        MediaType::Pdf => b"%PDF-",
    }
}

/// Whether a body starting with `prefix` may still turn out to be `ty`, judged
/// from its signature alone.
fn may_be(ty: MediaType, prefix: &[u8]) -> bool {
    match ty {
        // A PDF body is anything that does not start like a JPEG or a PNG.
        MediaType::Pdf => sniff(prefix).is_none_or(|t| t == MediaType::Pdf),
        _ => {
            let sig = signature(ty);
            let n = prefix.len().min(sig.len());
            prefix[..n] == sig[..n]
        }
    }
}

fn article(ty: MediaType) -> &'static str {
    match ty {
        MediaType::Jpeg => "a JPEG",
        MediaType::Png => "a PNG",
        MediaType::Pdf => "a PDF",
    }
}

/// Checks a body against its declared type: sniffs the first [`SNIFF_LEN`]
/// bytes (across chunks), rejects a mismatch with `content_mismatch`, and hands
/// everything to the declared type's scanner. Verdicts are sticky, and any
/// chunking of a body gives the same verdict.
pub type Inspector = Sticky<Sniffer>;

impl Inspector {
    pub fn new(declared: MediaType, limits: &Limits) -> Self {
        Sticky::wrap(Sniffer {
            declared,
            scanner: Scanner::new(declared, limits),
            prefix: [0; SNIFF_LEN],
            prefix_len: 0,
            sniffed: false,
        })
    }

    pub fn declared(&self) -> MediaType {
        self.inner().declared
    }
}

/// The state machine behind [`Inspector`].
#[derive(Debug)]
pub struct Sniffer {
    declared: MediaType,
    scanner: Scanner,
    prefix: [u8; SNIFF_LEN],
    prefix_len: usize,
    /// The prefix was checked and handed to the scanner.
    sniffed: bool,
}

impl Scan for Sniffer {
    fn run(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        self.feed_inner(chunk)
    }

    fn end(&mut self) -> Result<(), Rejection> {
        self.finish_inner()
    }
}

impl Sniffer {
    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        if self.sniffed {
            return self.scanner.feed(chunk);
        }
        let take = (SNIFF_LEN - self.prefix_len).min(chunk.len());
        self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
        self.prefix_len += take;
        if self.prefix_len < SNIFF_LEN {
            return Ok(());
        }
        self.check_prefix()?;
        self.sniffed = true;
        let prefix = self.prefix;
        self.scanner.feed(&prefix)?;
        self.scanner.feed(&chunk[take..])
    }

    fn finish_inner(&mut self) -> Result<(), Rejection> {
        if !self.sniffed {
            // The body ended before the sniff could decide.
            self.check_prefix()?;
            self.sniffed = true;
            let prefix = self.prefix;
            self.scanner.feed(&prefix[..self.prefix_len])?;
        }
        self.scanner.finish()
    }

    fn check_prefix(&self) -> Result<(), Rejection> {
        let prefix = &self.prefix[..self.prefix_len];
        if may_be(self.declared, prefix) {
            return Ok(());
        }
        let detail = match sniff(prefix) {
            Some(other) => format!(
                "declared {} but the body starts like {}",
                self.declared,
                article(other)
            ),
            None => format!(
                "declared {} but the body is not {}",
                self.declared,
                article(self.declared)
            ),
        };
        Err(Rejection::new(RejectCode::ContentMismatch, detail))
    }
}

/// Inspects a whole body fed in `chunk_size`-byte chunks (`0` = one piece): the
/// helper behind the `scan` command's tests, the fuzzers and the benches.
pub fn inspect_all(
    declared: MediaType,
    limits: &Limits,
    bytes: &[u8],
    chunk_size: usize,
) -> Result<(), Rejection> {
    let mut inspector = Inspector::new(declared, limits);
    if chunk_size == 0 {
        inspector.feed(bytes)?;
    } else {
        for chunk in bytes.chunks(chunk_size) {
            inspector.feed(chunk)?;
        }
    }
    inspector.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what the wrapper lets through to the state machine.
    #[derive(Default)]
    struct Probe {
        runs: usize,
        ends: usize,
        fail_at_run: Option<usize>,
    }

    impl Scan for Probe {
        fn run(&mut self, _chunk: &[u8]) -> Result<(), Rejection> {
            self.runs += 1;
            if Some(self.runs) == self.fail_at_run {
                return Err(Rejection::malformed("probe"));
            }
            Ok(())
        }
        fn end(&mut self) -> Result<(), Rejection> {
            self.ends += 1;
            Ok(())
        }
    }

    #[test]
    fn every_scanner_has_one_contract() {
        // The first rejection is the verdict; nothing runs after it.
        let mut s = Sticky::wrap(Probe {
            fail_at_run: Some(2),
            ..Probe::default()
        });
        assert!(s.feed(b"a").is_ok());
        let first = s.feed(b"b").unwrap_err();
        assert_eq!(s.feed(b"c").unwrap_err(), first);
        assert_eq!(s.finish().unwrap_err(), first);
        assert_eq!((s.inner().runs, s.inner().ends), (2, 0));
        // finish is idempotent; a chunk after it is ignored.
        let mut s = Sticky::wrap(Probe::default());
        assert!(s.feed(b"a").is_ok() && s.finish().is_ok() && s.finish().is_ok());
        assert!(s.feed(b"late").is_ok());
        assert_eq!((s.inner().runs, s.inner().ends), (1, 1));
        // The real scanners follow it: a chunk after a JPEG's end changes nothing.
        let sample: &[u8] = &[0xFF, 0xD8, 0xFF];
        let mut j = jpeg::JpegScanner::new(&Limits::default());
        let truncated = j.feed(sample).and_then(|()| j.finish()).unwrap_err();
        assert_eq!(j.feed(b"more").unwrap_err(), truncated);
        assert_eq!(j.finish().unwrap_err(), truncated);
    }
}
