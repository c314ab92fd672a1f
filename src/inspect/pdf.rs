//! Streaming PDF scanner: a sans-IO [`PdfScanner`] fed the body in chunks.
//!
//! It is a bounded-state PDF *lexer*, not a parser: it never follows the
//! cross-reference table and never buffers the file. What it checks:
//!
//! * **Header.** The body starts with `%PDF-1.x` (any digit) or `%PDF-2.0` at
//!   byte 0: nothing may come before it (no BOM, white-space or junk, which is
//!   how HTML/PDF polyglots are made). A body that does not start with `%PDF-`
//!   is `content_mismatch`, decided as soon as the first differing byte
//!   arrives; a `%PDF-` with another version is `malformed_image`.
//! * **Trailer.** The body must end with `%%EOF`, optionally followed by PDF
//!   whitespace (space, tab, CR, LF, FF, NUL). Only the last five significant
//!   bytes are kept for that.
//! * **File structure** (`malformed_image`, "not a PDF"): the body must hold
//!   at least one object (`N G obj`) and a `startxref` followed by an integer,
//!   and outside objects (between `obj` and `endobj`, or the next `xref`,
//!   `trailer` or `startxref`) only the file's structure may appear: comments,
//!   white-space, integers (object headers, cross-reference entries, the
//!   `startxref` offset), the keywords `obj`, `endobj`, `endstream`, `xref`,
//!   `f`, `n`, `trailer` and `startxref`, and a dictionary right after
//!   `trailer`. A name, a string (`<html>` lexes as a hex string), an array,
//!   another dictionary, `R`, a `stream` (whose data would be skipped
//!   unseen) or a word of printable ASCII (text) there is refused as soon as
//!   it is seen. Tolerated, since real files have them: a stray `endobj` or
//!   `endstream`, a stray closing delimiter (`)`, `]`, `>`, `>>`, `{`, `}`),
//!   and words with a byte that is no printable ASCII (binary junk, as some
//!   writers leave after a `%%EOF` before an incremental update, or a binary
//!   marker line written without its `%`). A word longer than 32 bytes is
//!   judged on its first 32, however the chunks cut it. After a stream whose
//!   end was found by searching (an indirect `/Length`), nothing up to the
//!   next object or cross-reference section is judged: the `endstream` found
//!   may have been quoted in its data.
//! * **Encryption** (`pdf_encrypted`): a name equal, after `#xx` unescaping, to
//!   `/Encrypt` used as a *key*, with a value other than `null`, at the top
//!   level of either a `trailer` dictionary (every trailer of an incremental
//!   update is seen) or of any dictionary followed by `stream` (whatever its
//!   `/Type` says, or leaves out: only a cross-reference stream has one, and a
//!   reader takes it for one), decided at the `stream` keyword, so key order
//!   does not matter; a `/Type /XRef` dictionary with `/Encrypt` is rejected as
//!   soon as it closes. `/Encrypt` as a token elsewhere (a value, a nested
//!   dictionary, a dictionary that is no stream's) does not count: readers
//!   only decrypt when the trailer says so. But `/Encrypt` in the bytes the
//!   lexer skips (stream data, string and comment bodies: [`EncryptWatch`])
//!   does, at the end: a trailer written there is the one a reader uses
//!   when `startxref` or `/Prev` point at it, and the scanner follows
//!   neither. Likewise an object header in a string or comment body is
//!   active content (at the end), as one in stream data is.
//! * **Active content** (`pdf_active_content`, unless the policy is `Allow`,
//!   under which none of the following is even tracked), in the uncompressed
//!   object syntax *and* in the decoded data of object streams, names compared
//!   after unescaping:
//!   * a name `/JavaScript`, `/JS`, `/Launch`, `/XFA`, `/RichMedia`,
//!     `/SubmitForm`, `/ImportData` or `/RF` (a file specification's related
//!     files arrays, which hold embedded file streams the `/EF` check does not
//!     follow; e-invoices never use them), at any depth and in any position
//!     (key or value), at once;
//!   * a `/URI` name followed by a string (literal, with its escapes, octal
//!     `\ddd` and line continuations decoded, or hex; a UTF-16BE string with its
//!     `FE FF` BOM is read by code units, and so, conservatively, is a
//!     UTF-16LE one (`FF FE`); a UTF-8 BOM is skipped) whose scheme,
//!     read as a WHATWG URL parser does (ASCII tab, LF and CR removed anywhere,
//!     leading C0 controls and spaces stripped, `ALPHA *(ALPHA / DIGIT / "+" /
//!     "-" / ".")` before `:`, lowercased), is not `http`, `https` or `mailto`.
//!     A URI without a scheme is fine. Only the first 16 scheme bytes are kept
//!     (a longer scheme is not one of the three). A `/URI` followed by a
//!     number (`/URI 7 0 R`: the string is elsewhere, and the lexer never
//!     follows references) is active content, since it cannot be checked;
//!     followed by a dictionary (the catalog's `/URI << /Base ... >>`), a name
//!     (`/S /URI`) or anything else it is no URI string and is fine;
//!   * embedded files, with one exception for XML data (e-invoices: Factur-X,
//!     ZUGFeRD and XRechnung embed their XML invoice). Every `/EF` must be
//!     followed by a direct dictionary whose values are all references `N G
//!     R` (anything else cannot be verified and is active content at once).
//!     Every stream object (`N G obj << ... >> stream`) is classified as an
//!     *approved* XML file or not: approved means `/Subtype` `text/xml` or
//!     `application/xml` (as a name, e.g. `/text#2Fxml`, any case, in the
//!     stream's own dictionary, not in its `/Params`), with or without
//!     `/Type /EmbeddedFile` (it is optional), no filter or FlateDecode
//!     without `/DecodeParms`, and decoded data starting with `<` after an optional
//!     UTF-8 BOM and at most 1 KiB of XML white-space (only those first bytes
//!     are inflated, outside the inflate limits). At the end of the body, every
//!     object number an `/EF` references must have been approved in its *last*
//!     definition (incremental updates included: a writer may leave an old
//!     definition of the object, such as the XMP metadata stream the
//!     `factur-x` library turns into the invoice, in the file); a `/Type /EmbeddedFile`
//!     stream that is not approved, or an `/EF`, `/EmbeddedFile` or
//!     `/EmbeddedFiles` name in a file without any `/EF` reference, is active
//!     content. These verdicts come at [`PdfScanner::finish`], after the
//!     deferred ones below.
//!
//!   Names inside strings, comments and ordinary stream data (content
//!   streams, images, fonts, ...) are never looked at. But an object header
//!   (`N G obj`: two numbers with white space between them, white space
//!   or none before `obj`, where a comment, `%` to the end of the line,
//!   counts as white space, as it does for a reader's tokenizer: `5 %x`
//!   then `0 obj` on the next line) inside stream data is active content
//!   ([`HeaderWatch`]): a cross-reference table can point a reader at it,
//!   and the lexer never sees the object.
//! * **Nesting** of `<<` / `[` deeper than `Limits::max_nesting` is
//!   `malformed_image`, in the file and in object streams alike.
//!
//! # Lexing
//!
//! The lexer knows comments (`%` to end of line), literal strings with nesting
//! and backslash escapes, hex strings, dictionaries, arrays, names (with `#xx`
//! escapes) and keywords. Name and keyword buffers hold 32 bytes: longer tokens
//! are truncated and never match anything. For the top-level dictionary of each
//! object it keeps `/Type`, `/Subtype`, `/Filter`, `/Length`, `/DecodeParms`,
//! `/Encrypt`, and whether `/N` and `/First` are there (key position is
//! tracked, `N G R` references included) so that the `stream` keyword that
//! follows knows what it opens; it also keeps the number of the object that
//! `N G obj` opened, and remembers top-level objects that are a bare name
//! (`6 0 obj /ObjStm endobj`, at most 16) to resolve an indirect `/Type`. The keywords `obj`, `endobj`,
//! `stream`, `endstream`, `xref`, `startxref` and `trailer` only occur at the top
//! level of a valid file, so they reset the nesting depth to zero: garbage with
//! unbalanced brackets cannot desynchronise the rest of the file.
//!
//! The cost is per token, not per byte: whole tokens are read in one loop
//! (`Lexer::tokens`) that finds their ends with a byte-class table and
//! dispatches once on their first byte; only a token that a chunk boundary
//! splits goes through the per-state code, which finishes it in the next
//! chunk. String and comment bodies are skipped with `memchr`, and the scheme
//! of a `/URI` string that starts with a plain one (`https:`) is read off at
//! once rather than decoded byte by byte. The chunking never changes a
//! verdict.
//!
//! # Streams
//!
//! After `stream` and its end-of-line marker (CRLF, LF or a lone CR) the data is
//! skipped without lexing:
//!
//! * with a direct integer `/Length`, exactly that many bytes are skipped and
//!   then optional whitespace and `endstream` must follow ("the data checks
//!   out"). While skipping, `memmem` looks for an `endstream` inside the counted
//!   data; a stream whose `/Length` does not check out although an `endstream`
//!   occurred inside the counted bytes is `malformed_image`, since the bytes in
//!   between could not be inspected;
//! * otherwise (indirect `/Length`, none, or a `/Length` that is too short) the
//!   data ends at the next `endstream`, found with `memmem` across chunk
//!   boundaries. A reader that resolves the length may take that `endstream`
//!   for data and read on, so nothing after it may hide from the lexer what
//!   such a reader sees. From the first such stream on:
//!   * an object header (`N G obj`) inside a string or comment body is
//!     active content (`Lexer::guard_body`: a string opened in the quoted
//!     data would swallow the real end and the objects after it);
//!   * an `endstream` inside the counted data of a later stream is
//!     `malformed_image` (a quoted `/Length` swallowing the real end);
//!   * a stray `endstream` token after an object header is
//!     `malformed_image` (the real end, the objects before it quoted data);
//!   * an object stream whose data is not over at the found end (its lexer
//!     inside a string, or its zlib stream not ended: what follows would
//!     never be decoded) is `malformed_image`, deferred.
//!
//!   So a file whose streams' lengths are indirect and whose *uncompressed*
//!   text quotes that syntax is refused (Ghostscript without compression,
//!   qpdf's QDF): a known, conservative false positive.
//!
//! In counted data, an object header is looked for in all of it, also past
//! an `endstream` inside it: refused at once before that `endstream`, and
//! past it once the data checks out (a `/Length` that runs past the inner
//! `endstream` is `malformed_image` instead).
//!
//! # Object streams
//!
//! A stream is taken for an object stream, as a reader would (qpdf reads one
//! through its `/N` and `/First`, whatever `/Type` says), when its dictionary
//! has both `/N` and `/First`, or a `/Type` that is `/ObjStm` directly or
//! through a bare name object seen before, or an indirect `/Type` that cannot
//! be resolved (conservatively: that includes a reference to an object that
//! comes later, or past the 16 remembered). It is decoded as it arrives and its
//! objects are run through a second lexer (active content and nesting only; the
//! `trailer`/`stream` keywords mean nothing there):
//!
//! * no `/Filter`: the raw data is lexed;
//! * `/Filter /FlateDecode` or `[/FlateDecode]`: inflated with `flate2` (its
//!   zlib-rs backend), at most `Limits::max_inflate_bytes` per stream and
//!   `Limits::max_inflate_total` per file; going past either is
//!   `malformed_image` at once. The input is staged in
//!   a fixed 16 KiB buffer so that the inflater sees the same calls whatever the
//!   chunking;
//! * any other filter (or filter chain), or a `/DecodeParms`: the stream cannot be
//!   inspected, which is `malformed_image`;
//! * corrupt Flate data, or an object stream whose `/Length` does not check out,
//!   is `malformed_image` too;
//! * a reader finds each object where the stream's header puts it (`/N`
//!   pairs of object number and offset from `/First`), not by reading the
//!   data in order, so the header is read too ([`Layout`]): at each object's
//!   start the second lexer must be between objects (not in a string,
//!   comment, name or word, or an open dictionary or array), else an
//!   object could start inside what the lexer took for a comment of the one
//!   before and never be looked at. Such a stream, one whose `/N` or
//!   `/First` is no direct integer, or whose header is not `/N` pairs of
//!   integers over before `/First`, is `malformed_image`.
//!
//! Those last four verdicts are *deferred* to [`PdfScanner::finish`]: in an
//! encrypted file the object streams are encrypted and cannot be decoded, and the
//! `/Encrypt` entry usually comes later, in the last trailer or cross-reference
//! stream. An encryption or active-content verdict reached before the end wins.
//!
//! # End of body
//!
//! Besides the `%%EOF` check, a body that ends inside stream data or inside a
//! string, or without an object or a `startxref` offset, is
//! `malformed_image`.
//!
//! # State
//!
//! About 4 KiB inline: the two lexers, each with at most 64 `/EF` references
//! (more is `pdf_active_content`: they could not all be checked) and 16 bare
//! name objects, and at most 64 approved XML streams (past that a stream counts
//! as not approved). Under the Reject policy the first stream object adds an
//! 8 KiB bitmap: one bit per object number below 65,536 that has an unapproved
//! stream definition, one flag for all larger numbers, one for streams without
//! `N G obj`. The first decoded stream (object stream or probed XML file) adds
//! a 16 KiB staging buffer, a 32 KiB output buffer and the inflater, reused for
//! the following ones, and an object stream's header its objects' offsets,
//! 4 bytes each (at most [`MAX_OBJSTM_OBJECTS`]: 256 KiB; writers put 100 to
//! 200 objects in one), the buffer reused for the following ones. Nothing
//! else grows with the file, and nothing is allocated per chunk except the
//! detail of a verdict.
//!
//! # Limits of the approach
//!
//! The cross-reference table is not followed, so objects that a reader would
//! find by offset inside bytes the lexer treats as stream data or string content
//! are not seen (nor those hidden in a comment line that an offset points
//! into), references are never resolved (hence the conservative rules
//! for `/URI N G R`, `/EF N G R` and an unresolved `/Type`), and object numbers
//! inside object streams are not tracked (a stream cannot live there). Inside
//! objects, the syntax is not checked: text such as `1 0 obj hello world
//! endobj` passes, and so does binary junk between objects. The
//! scanner is a filter for ordinary files, not a proof.

use flate2::{Decompress, FlushDecompress, Status};
use memchr::memmem;

use super::{ActiveContentPolicy, Limits, RejectCode, Rejection, Scan, Sticky};

/// The marker, its three-byte version and the byte after it.
const HEADER_BUF: usize = 9;
const MARKER: &[u8] = b"%PDF-";
/// Longest name or keyword kept for matching; longer ones match nothing.
const TOKEN_CAP: usize = 32;
const ENDSTREAM: &[u8; 9] = b"endstream";
/// Object stream input is handed to the inflater in pieces of this size.
const STAGE_SIZE: usize = 16 * 1024;
/// Inflater output buffer.
const INFLATE_BUF: usize = 32 * 1024;

const WS: u8 = 0;
const REG: u8 = 1;
const DELIM: u8 = 2;

const fn class_table() -> [u8; 256] {
    let mut t = [REG; 256];
    t[0] = WS;
    t[b'\t' as usize] = WS;
    t[b'\n' as usize] = WS;
    t[0x0C] = WS;
    t[b'\r' as usize] = WS;
    t[b' ' as usize] = WS;
    let d = b"()<>[]{}/%";
    let mut k = 0;
    while k < d.len() {
        t[d[k] as usize] = DELIM;
        k += 1;
    }
    t
}

/// PDF character classes: white-space, regular, delimiter.
static CLASS: [u8; 256] = class_table();

fn is_ws(b: u8) -> bool {
    CLASS[b as usize] == WS
}

/// Bits of [`STOPS`]: the byte ends a run of white-space, of regular bytes,
/// or of the regular bytes of a name (which a `#` escape interrupts).
const STOP_WS: u8 = 1;
const STOP_REG: u8 = 2;
const STOP_NAME: u8 = 4;
/// Neither white-space nor a byte of a number (a digit, sign or point).
const STOP_NUMS: u8 = 8;
/// `(`, `)` or `\\` (in a literal string).
const STOP_LIT: u8 = 16;
/// `>` (the end of a hex string).
const STOP_GT: u8 = 32;
/// `/` or `j`: what may begin `/Encrypt` or end `obj` in a string or comment
/// body ([`Lexer::guard_body`]).
const STOP_GUARD: u8 = 64;
/// `j`, `E` or `#`: the same, told by the byte after the `/` (`/E`, `/#`),
/// for literal strings, where `/` is common (URLs) and those are rare.
const STOP_GUARD_LIT: u8 = 128;

const fn stops_table() -> [u8; 256] {
    let mut t = [0; 256];
    let mut b = 0;
    while b < 256 {
        let class = CLASS[b];
        if class != WS {
            t[b] |= STOP_WS;
        }
        if class != REG {
            t[b] |= STOP_REG | STOP_NAME;
        }
        b += 1;
    }
    t[b'#' as usize] |= STOP_NAME;
    let mut b = 0;
    while b < 256 {
        let num = matches!(b as u8, b'0'..=b'9' | b'.' | b'+' | b'-');
        if CLASS[b] != WS && !num {
            t[b] |= STOP_NUMS;
        }
        b += 1;
    }
    t[b'(' as usize] |= STOP_LIT;
    t[b')' as usize] |= STOP_LIT;
    t[b'\\' as usize] |= STOP_LIT;
    t[b'>' as usize] |= STOP_GT;
    t[b'/' as usize] |= STOP_GUARD;
    t[b'j' as usize] |= STOP_GUARD | STOP_GUARD_LIT;
    t[b'E' as usize] |= STOP_GUARD_LIT;
    t[b'#' as usize] |= STOP_GUARD_LIT;
    t
}

/// For each byte, the runs it ends (`STOP_*` bits).
static STOPS: [u8; 256] = stops_table();

/// The end of an array of numbers whose `[` is right before `from`, when its
/// `]` is in `data` and nothing but white-space and words of digits, signs
/// and points (numbers, or words that are no keyword) comes before it: the
/// index after its `]`.
#[inline(always)]
fn number_array(data: &[u8], from: usize) -> Option<usize> {
    let end = run_end(data, from, STOP_NUMS);
    (data.get(end) == Some(&b']')).then_some(end + 1)
}

/// The first byte at or after `from` that ends a run of the kind `stop` (a
/// `STOP_*` bit), or `data.len()`.
#[inline(always)]
fn run_end(data: &[u8], from: usize, stop: u8) -> usize {
    // Unrolled by four: one bounds check per four bytes. Each byte still has
    // its own branch, which the CPU predicts and speculates past (a
    // branch-free mask would make the next token wait for this one's end).
    let mut i = from;
    while let Some(w) = data.get(i..i + 4) {
        for (k, &b) in w.iter().enumerate() {
            if STOPS[b as usize] & stop != 0 {
                return i + k;
            }
        }
        i += 4;
    }
    data[i..]
        .iter()
        .position(|&b| STOPS[b as usize] & stop != 0)
        .map_or(data.len(), |p| i + p)
}

/// Strings are searched byte by byte up to this length, then with `memchr`
/// (quicker on long ones, slower to set up on the short ones of most
/// dictionaries).
const SHORT: usize = 32;

/// The position in `data` of the first byte with a `stop` bit, like `long`
/// (a `memchr` for the same bytes) finds it.
#[inline(always)]
fn find_stop(data: &[u8], stop: u8, long: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
    let head = &data[..data.len().min(SHORT)];
    let p = run_end(head, 0, stop);
    if p < head.len() {
        return Some(p);
    }
    if head.len() == data.len() {
        return None;
    }
    long(&data[SHORT..]).map(|q| SHORT + q)
}

/// The first byte at or after `from` that is not white-space.
#[inline(always)]
fn skip_ws(data: &[u8], from: usize) -> usize {
    // Tokens are mostly separated by one space or by nothing: step over one
    // white-space byte without a branch, and loop only when there are more.
    let Some(&b) = data.get(from) else {
        return from;
    };
    let i = from + usize::from(STOPS[b as usize] & STOP_WS == 0);
    match data.get(i) {
        Some(&b) if STOPS[b as usize] & STOP_WS == 0 => run_end(data, i, STOP_WS),
        _ => i,
    }
}

/// The end of the run of regular bytes that starts at `from`.
#[inline(always)]
fn token_end(data: &[u8], from: usize) -> usize {
    run_end(data, from, STOP_REG)
}

/// Like [`token_end`], but also stops at `#` (a name escape).
#[inline(always)]
fn name_stop(data: &[u8], from: usize) -> usize {
    run_end(data, from, STOP_NAME)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Feeds `bytes` to a new scanner in chunks of `chunk` bytes (at least 1) and
/// returns the final verdict. For tests, the `scan` command and fuzzing.
pub fn scan_pdf(limits: &Limits, bytes: &[u8], chunk: usize) -> Result<(), Rejection> {
    let mut scanner = PdfScanner::new(limits);
    for piece in bytes.chunks(chunk.max(1)) {
        scanner.feed(piece)?;
    }
    scanner.finish()
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The file itself: streams, trailers and cross-reference streams matter.
    File,
    /// The decoded data of an object stream: only names and nesting matter.
    ObjStm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    Comment,
    Name,
    Word,
    Literal,
    Hex,
    /// Saw `<`: `<<` or a hex string.
    Lt,
    /// Saw `>` outside a hex string: `>>` or a stray byte.
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    None,
    Dict,
    Array,
}

/// A top-level dictionary key the scanner cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    None,
    Type,
    Filter,
    Length,
    DecodeParms,
    Encrypt,
    N,
    First,
    Subtype,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DictType {
    Unknown,
    ObjStm,
    XRef,
    EmbeddedFile,
    /// `/Type N G R` where object `N` is not a known bare name: the stream is
    /// looked into as if it were an object stream.
    Unresolved,
}

impl DictType {
    fn of(v: NameVal) -> Self {
        match v {
            NameVal::ObjStm => Self::ObjStm,
            NameVal::XRef => Self::XRef,
            NameVal::EmbeddedFile => Self::EmbeddedFile,
            _ => Self::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterKind {
    None,
    Flate,
    Other,
}

/// What is kept of an object's top-level dictionary.
#[derive(Debug, Clone, Copy)]
struct DictInfo {
    trailer: bool,
    ty: DictType,
    filter: FilterKind,
    length: Option<u64>,
    decode_parms: bool,
    encrypt_at: Option<u64>,
    n: IntEntry,
    first: IntEntry,
    /// `/Subtype` is `text/xml` or `application/xml`.
    subtype_xml: bool,
}

impl DictInfo {
    fn new(trailer: bool) -> Self {
        Self {
            trailer,
            ty: DictType::Unknown,
            filter: FilterKind::None,
            length: None,
            decode_parms: false,
            encrypt_at: None,
            n: IntEntry::Absent,
            first: IntEntry::Absent,
            subtype_xml: false,
        }
    }
}

/// A top-level dictionary's integer entry (an object stream's `/N` and
/// `/First`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntEntry {
    Absent,
    Int(u64),
    /// A reference, or anything but a non-negative integer.
    Other,
}

impl IntEntry {
    fn of(val: Val) -> Self {
        match val {
            Val::Int(n) => IntEntry::Int(n),
            _ => IntEntry::Other,
        }
    }
}

/// A `/Filter [...]` array being read.
#[derive(Debug, Clone, Copy, Default)]
struct FilterArray {
    count: u32,
    other: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameVal {
    ObjStm,
    XRef,
    FlateDecode,
    EmbeddedFile,
    /// `text/xml` or `application/xml`, any case.
    Xml,
    Other,
}

#[derive(Debug, Clone, Copy)]
enum Val {
    Name(NameVal),
    Int(u64),
    Array(FilterArray),
    Null,
    Other,
}

/// A token, as [`Lexer::watch`] sees it.
#[derive(Debug, Clone, Copy)]
enum Ev {
    Name(NameClass),
    /// A non-negative integer.
    Num(u64),
    R,
    /// Another keyword or number.
    Word,
    /// `<<` (true) or `[`.
    Open(bool),
    /// `>>` (true) or `]`.
    Close(bool),
    /// `(` or `<` of a string.
    StrStart,
    /// The end of a string, or a stray delimiter.
    Value,
}

/// Where [`Lexer::tokens`] stopped.
enum Flow {
    /// At this index, with `Lexer::state` telling what comes next.
    At(usize),
    /// Right after a `stream` keyword that ends at this index.
    Stream(usize),
}

/// What [`Lexer::lex`] stopped at.
enum Step {
    /// All input consumed.
    Done,
    /// The `stream` keyword ended at `consumed` (the byte there is not consumed).
    Stream { consumed: usize, start: StreamStart },
}

/// A `stream` keyword and what came before it.
#[derive(Debug, Clone, Copy)]
struct StreamStart {
    kw_at: u64,
    /// The top-level dictionary right before it.
    dict: Option<DictInfo>,
    /// The number of the object (`N G obj`) it belongs to.
    obj: Option<u64>,
    /// That object's generation is 0.
    gen0: bool,
}

// ---------------------------------------------------------------------------
// Values the lexer looks at: `/URI` strings and `/EF` dictionaries
// ---------------------------------------------------------------------------

/// How many distinct object numbers `/EF` dictionaries may reference; more is
/// `pdf_active_content` (they could not all be checked).
const EF_CAP: usize = 64;
/// How many approved XML embedded-file streams are remembered; past it a stream
/// is treated as not approved.
const APPROVED_CAP: usize = 64;
/// Object numbers below this have an exact "defined as an unapproved stream"
/// bit (8 KiB); above it one flag stands for all of them.
const UNAPPROVED_BITS: u64 = 1 << 16;
/// How many top-level bare name objects (`6 0 obj /ObjStm endobj`) are
/// remembered to resolve an indirect `/Type`.
const NAME_OBJ_CAP: usize = 16;
/// An XML embedded file may start with at most this much white-space.
const XML_WS_CAP: u32 = 1024;

/// A name or value the lexer is following across tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    Idle,
    /// After `/URI`: its value decides.
    Uri,
    /// Inside the string value of a `/URI`, still deciding on its scheme.
    UriStr,
    /// After `/EF`: a dictionary of references must follow.
    Ef(EfStep),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EfStep {
    /// Expecting `<<`.
    Open,
    /// Expecting a key or `>>`.
    Key,
    /// Expecting the object number of a reference.
    Num,
    /// Expecting the generation; the object number read.
    Gen(u64),
    /// Expecting `R`.
    R(u64),
}

/// Escape state of a literal string whose bytes are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LitEsc {
    None,
    /// After `\`.
    Backslash,
    /// In `\ddd`: digits read so far and their value.
    Octal(u8, u8),
    /// After `\` CR: a LF here belongs to the line continuation.
    Cr,
}

/// What a `/URI` string turned out to be, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UriVerdict {
    Pending,
    /// No scheme, or http, https or mailto.
    Fine,
    /// Another scheme.
    Bad,
}

/// Decides whether the string value of a `/URI` has a scheme other than
/// `http`, `https` or `mailto`, reading it as a URL parser would (WHATWG):
/// ASCII tab, LF and CR are removed anywhere, leading C0 controls and spaces
/// are stripped, and a scheme is `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`
/// followed by `:`. A UTF-16BE (`FE FF`) string is read by code units, and so,
/// conservatively, is a UTF-16LE (`FF FE`) one; a UTF-8 BOM is skipped. Only
/// the first 16 bytes of the scheme are kept.
#[derive(Debug, Clone, Copy)]
struct UriCheck {
    /// Offset of the `/URI` name.
    at: u64,
    /// The key whose string this is: `URI`, or `Base` (the base that a
    /// viewer puts before a scheme-less `/URI`).
    key: &'static str,
    lit: LitEsc,
    /// Hex string: the first digit of a pair.
    hex_hi: Option<u8>,
    /// The first decoded bytes while a BOM is possible.
    pre: [u8; 2],
    pre_len: u8,
    /// Reading UTF-16: `Some(first byte)` between the two bytes of a unit.
    utf16: Option<Option<u8>>,
    /// UTF-16 little-endian (an `FF FE` BOM, which PDF does not define but
    /// some readers may honour).
    utf16_le: bool,
    /// A BOM is no longer possible.
    bom_done: bool,
    /// Still stripping leading C0 controls and spaces.
    lead: bool,
    scheme: [u8; 16],
    scheme_len: usize,
}

impl UriCheck {
    fn new(at: u64, key: &'static str) -> Self {
        Self {
            at,
            key,
            lit: LitEsc::None,
            hex_hi: None,
            pre: [0; 2],
            pre_len: 0,
            utf16: None,
            utf16_le: false,
            bom_done: false,
            lead: true,
            scheme: [0; 16],
            scheme_len: 0,
        }
    }

    /// The next decoded byte of the string.
    fn byte(&mut self, b: u8) -> UriVerdict {
        if !self.bom_done {
            let k = self.pre_len as usize;
            match (k, b) {
                (0, 0xFE | 0xFF | 0xEF) | (1, 0xBB) if k == 0 || self.pre[0] == 0xEF => {
                    self.pre[k] = b;
                    self.pre_len += 1;
                    return UriVerdict::Pending;
                }
                (1, 0xFF) if self.pre[0] == 0xFE => {
                    self.bom_done = true;
                    self.utf16 = Some(None);
                    return UriVerdict::Pending;
                }
                (1, 0xFE) if self.pre[0] == 0xFF => {
                    self.bom_done = true;
                    self.utf16 = Some(None);
                    self.utf16_le = true;
                    return UriVerdict::Pending;
                }
                (2, 0xBF) => {
                    self.bom_done = true;
                    return UriVerdict::Pending;
                }
                // A partial BOM is a non-ASCII first character: no scheme.
                (1.., _) => return UriVerdict::Fine,
                _ => self.bom_done = true,
            }
        }
        match self.utf16 {
            None => self.char(b),
            Some(None) => {
                self.utf16 = Some(Some(b));
                UriVerdict::Pending
            }
            Some(Some(first)) => {
                self.utf16 = Some(None);
                let (hi, lo) = if self.utf16_le {
                    (b, first)
                } else {
                    (first, b)
                };
                self.char(if hi == 0 { lo } else { 0x80 })
            }
        }
    }

    /// The next character (ASCII, or 0x80 for anything else).
    fn char(&mut self, c: u8) -> UriVerdict {
        if matches!(c, b'\t' | b'\n' | b'\r') || (self.lead && c <= 0x20) {
            return UriVerdict::Pending;
        }
        self.lead = false;
        let scheme_char = if self.scheme_len == 0 {
            c.is_ascii_alphabetic()
        } else {
            c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')
        };
        if scheme_char {
            if let Some(slot) = self.scheme.get_mut(self.scheme_len) {
                *slot = c.to_ascii_lowercase();
            }
            self.scheme_len += 1;
            return UriVerdict::Pending;
        }
        if c != b':' || self.scheme_len == 0 {
            // No scheme: a relative reference.
            return UriVerdict::Fine;
        }
        self.scheme_verdict()
    }

    /// The scheme read so far ended with its `:`.
    fn scheme_verdict(&self) -> UriVerdict {
        match &self.scheme[..self.scheme_len.min(16)] {
            b"http" | b"https" | b"mailto" if self.scheme_len <= 16 => UriVerdict::Fine,
            _ => UriVerdict::Bad,
        }
    }

    /// A whole scheme, read off a string that starts with it and its `:`
    /// (an ASCII letter first, then letters, digits, `+`, `-` or `.`, nothing
    /// to decode): what [`UriCheck::byte`] would make of those bytes.
    fn plain_scheme(&mut self, scheme: &[u8]) -> UriVerdict {
        self.bom_done = true;
        self.lead = false;
        let kept = scheme.len().min(16);
        for (slot, b) in self.scheme.iter_mut().zip(&scheme[..kept]) {
            *slot = b.to_ascii_lowercase();
        }
        self.scheme_len = scheme.len();
        self.scheme_verdict()
    }

    fn rejection(&self, where_: String) -> Rejection {
        let shown = &self.scheme[..self.scheme_len.min(16)];
        let more = if self.scheme_len > 16 { "..." } else { "" };
        Rejection::new(
            RejectCode::PdfActiveContent,
            format!(
                "PDF contains a /{} with the scheme \"{}{more}:\" {where_}",
                self.key,
                shown.escape_ascii()
            ),
        )
    }
}

/// Where a name was seen, for the detail of a verdict given later.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    name: &'static str,
    at: u64,
    /// In the object stream whose `stream` keyword is at this offset.
    objstm: Option<u64>,
}

fn where_str(objstm: Option<u64>, at: u64) -> String {
    match objstm {
        None => format!("at offset {at}"),
        Some(s) => format!("in the object stream at offset {s} (offset {at} of its decoded data)"),
    }
}

/// What a lexer saw of embedded files: the object numbers that `/EF`
/// dictionaries reference, and the first `/EF`, `/EmbeddedFile` or
/// `/EmbeddedFiles` name.
#[derive(Debug, Clone, Copy)]
struct EfLog {
    refs: [u64; EF_CAP],
    len: usize,
    /// More than `EF_CAP` distinct references: where the first extra one was.
    overflow: Option<Sighting>,
    seen: Option<Sighting>,
}

impl EfLog {
    fn new() -> Self {
        Self {
            refs: [0; EF_CAP],
            len: 0,
            overflow: None,
            seen: None,
        }
    }

    fn add(&mut self, n: u64, at: Sighting) {
        if self.refs[..self.len].contains(&n) {
            return;
        }
        match self.refs.get_mut(self.len) {
            Some(slot) => {
                *slot = n;
                self.len += 1;
            }
            None => {
                self.overflow.get_or_insert(at);
            }
        }
    }

    /// Takes over what `other` saw, and clears it.
    fn merge(&mut self, other: &mut EfLog) {
        if let Some(s) = other.seen {
            self.seen.get_or_insert(s);
        }
        let at = other.overflow.or(other.seen);
        for &n in &other.refs[..other.len] {
            // `other.seen` is set whenever it has references.
            if let Some(at) = at {
                self.add(n, at);
            }
        }
        if let Some(o) = other.overflow {
            self.overflow.get_or_insert(o);
        }
        *other = EfLog::new();
    }
}

/// Top-level objects that are a bare name (`6 0 obj /ObjStm endobj`), so that
/// an indirect `/Type 6 0 R` can be resolved when its target came first.
#[derive(Debug, Clone, Copy)]
struct NameObjs {
    /// Object number and value; `None` when the object was defined twice with
    /// different names.
    entries: [(u64, Option<NameVal>); NAME_OBJ_CAP],
    len: usize,
}

impl NameObjs {
    fn record(&mut self, n: u64, v: NameVal) {
        if let Some(e) = self.entries[..self.len].iter_mut().find(|e| e.0 == n) {
            if e.1 != Some(v) {
                e.1 = None;
            }
        } else if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (n, Some(v));
            self.len += 1;
        }
        // Past the cap the object is not remembered: a `/Type` pointing at it
        // is unresolved, which is the conservative reading (see `DictType`).
    }

    fn get(&self, n: u64) -> Option<NameVal> {
        self.entries[..self.len]
            .iter()
            .find(|e| e.0 == n)
            .and_then(|e| e.1)
    }
}

/// Where the lexer is in `N G obj ... endobj` (file mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjBody {
    None,
    /// Right after `N G obj`.
    Start(u64),
    /// After `N G obj /Name`.
    Name(u64, NameVal),
}

#[derive(Debug)]
struct Lexer {
    mode: Mode,
    reject_active: bool,
    max_nesting: u32,
    /// ObjStm mode: offset of the object stream's `stream` keyword, for details.
    objstm_at: u64,
    state: State,
    /// Offset of the token being read.
    tok_at: u64,
    buf: [u8; TOKEN_CAP],
    len: usize,
    overflow: bool,
    /// Name escape state: 0 none, 1 after `#`, 2 after `#` and one hex digit.
    esc: u8,
    esc_hi: u8,
    str_depth: u32,
    str_escape: bool,
    depth: u32,
    // File mode: the top-level dictionary of the current object.
    top: Top,
    dict: DictInfo,
    expect_key: bool,
    pending: Key,
    /// Offset of the pending key.
    key_at: u64,
    last_valued: Key,
    /// The depth-2 dictionary or array open now is the value of `pending`.
    sub_is_value: bool,
    filter_array: Option<FilterArray>,
    trailer_pending: bool,
    /// The top-level dictionary that just closed, until the next token.
    ready: Option<DictInfo>,
    // Reject policy, both modes: values followed across tokens.
    watch: Watch,
    uri: UriCheck,
    /// Offset of the `/EF` name being followed.
    ef_at: u64,
    ef: EfLog,
    // File mode: object boundaries.
    /// The last two tokens when they were non-negative integers, oldest first.
    ints: [Option<u64>; 2],
    /// The number of the object whose `N G obj` came last.
    cur_obj: Option<u64>,
    /// The generation of `cur_obj` is 0.
    cur_gen0: bool,
    obj_body: ObjBody,
    names: NameObjs,
    // File mode: the file's structure outside objects.
    /// Between `obj` and `endobj` (or the next `xref`, `trailer` or
    /// `startxref`); outside, only the file's structure may appear.
    in_obj: bool,
    /// An `N G obj` was seen.
    saw_obj: bool,
    /// The last token was `startxref`.
    after_startxref: bool,
    /// A `startxref` followed by an integer was seen.
    saw_startxref: bool,
    /// The last stream's end was found by searching for `endstream` (its
    /// `/Length` is indirect): that may have been a word inside its data
    /// (uncompressed text such as `(… endstream endobj) Tj`), so up to the
    /// next object or cross-reference section what follows is not judged as
    /// file structure.
    unsure_end: bool,
    /// File mode: the `stream` keyword of the first stream whose end was
    /// found by searching. From then on an object header inside a string or
    /// a comment is refused ([`Lexer::guard_body`]), and so is a stray
    /// `endstream` after an object header.
    guard_from: Option<u64>,
    /// Object headers in the string or comment body being read, while
    /// guarding.
    guard_watch: HeaderWatch,
    obj_finder: memmem::Finder<'static>,
    /// An object header (`N G obj`) came after a stream whose end was found
    /// by searching.
    obj_after_search: bool,
    /// File mode: `/Encrypt` in the string or comment body being read, and
    /// where the first one found was ([`EncryptWatch`]).
    encrypt_watch: EncryptWatch,
    encrypt_hidden: Option<u64>,
    /// File mode: an object header found in a string or comment body, the
    /// verdict given at the end (whatever the chunking, what the lexer
    /// decides at the string's end, such as a stray string, comes first).
    hidden_in_body: Option<Rejection>,
}

impl Lexer {
    fn new(mode: Mode, limits: &Limits) -> Self {
        Self {
            mode,
            reject_active: limits.pdf_active_content == ActiveContentPolicy::Reject,
            max_nesting: limits.max_nesting,
            objstm_at: 0,
            state: State::Normal,
            tok_at: 0,
            buf: [0; TOKEN_CAP],
            len: 0,
            overflow: false,
            esc: 0,
            esc_hi: 0,
            str_depth: 0,
            str_escape: false,
            depth: 0,
            top: Top::None,
            dict: DictInfo::new(false),
            expect_key: false,
            pending: Key::None,
            key_at: 0,
            last_valued: Key::None,
            sub_is_value: false,
            filter_array: None,
            trailer_pending: false,
            ready: None,
            watch: Watch::Idle,
            uri: UriCheck::new(0, "URI"),
            ef_at: 0,
            ef: EfLog::new(),
            ints: [None; 2],
            cur_obj: None,
            cur_gen0: false,
            obj_body: ObjBody::None,
            names: NameObjs {
                entries: [(0, None); NAME_OBJ_CAP],
                len: 0,
            },
            in_obj: false,
            saw_obj: false,
            after_startxref: false,
            saw_startxref: false,
            unsure_end: false,
            guard_from: None,
            guard_watch: HeaderWatch::default(),
            obj_finder: memmem::Finder::new(b"obj"),
            obj_after_search: false,
            encrypt_watch: EncryptWatch::default(),
            encrypt_hidden: None,
            hidden_in_body: None,
        }
    }

    /// Starts over for a new object stream.
    fn reset(&mut self, objstm_at: u64) {
        self.objstm_at = objstm_at;
        self.state = State::Normal;
        self.depth = 0;
        self.watch = Watch::Idle;
        self.resync();
    }

    /// No value is followed (see [`Lexer::watch`]); a test of the variant
    /// alone, cheaper than `==` on [`Watch`] with its payloads.
    #[inline(always)]
    fn idle(&self) -> bool {
        matches!(self.watch, Watch::Idle)
    }

    /// Inside the string value of a `/URI`, its scheme not decided yet.
    #[inline(always)]
    fn uri_str(&self) -> bool {
        matches!(self.watch, Watch::UriStr)
    }

    fn in_string(&self) -> bool {
        matches!(self.state, State::Literal | State::Hex | State::Lt)
    }

    /// ObjStm mode: whether an object may start here, before `next`: at
    /// the top level, not inside a string, a comment or `<`/`>`, and not in
    /// a name or word that `next` would go on.
    fn between_objects(&self, next: u8) -> bool {
        self.depth == 0
            && match self.state {
                State::Normal => true,
                State::Name | State::Word => is_delim_or_ws(next),
                _ => false,
            }
    }

    /// The object stream this lexer reads, if any.
    fn objstm(&self) -> Option<u64> {
        (self.mode == Mode::ObjStm).then_some(self.objstm_at)
    }

    fn where_(&self, at: u64) -> String {
        where_str(self.objstm(), at)
    }

    fn sighting(&self, name: &'static str, at: u64) -> Sighting {
        Sighting {
            name,
            at,
            objstm: self.objstm(),
        }
    }

    fn active(&self, what: &str, at: u64) -> Rejection {
        Rejection::new(
            RejectCode::PdfActiveContent,
            format!("PDF contains {what} {}", self.where_(at)),
        )
    }

    /// A token ended (Reject policy): follows `/URI` and `/EF` values.
    #[inline(never)]
    fn watch(&mut self, ev: Ev) -> Result<(), Rejection> {
        match self.watch {
            Watch::Idle => {}
            Watch::Uri => match ev {
                Ev::StrStart => {
                    self.watch = Watch::UriStr;
                    self.uri = UriCheck::new(self.uri.at, self.uri.key);
                    return Ok(());
                }
                // `/URI 7 0 R`: the string is elsewhere and cannot be checked;
                // `/URI [(...)]` is no string either, whatever a viewer makes
                // of it. So with `/Base 7 0 R` (a `/Base` that is some other
                // value is left alone).
                Ev::Num(_) | Ev::R | Ev::Open(false) if self.uri.key == "URI" => {
                    return Err(self.active("a /URI whose value is not a string", self.uri.at));
                }
                Ev::Num(_) | Ev::R if self.uri.key == "Base" => {
                    return Err(self.active("a /Base whose value is not a string", self.uri.at));
                }
                // A dictionary (the catalog's `/URI << /Base ... >>`), a name
                // (`/S /URI /URI (...)`: the next name is looked at below) or
                // anything else: no URI string.
                _ => self.watch = Watch::Idle,
            },
            Watch::UriStr => {
                // The string ended before its scheme was decided: no scheme.
                self.watch = Watch::Idle;
                return Ok(());
            }
            Watch::Ef(step) => {
                self.watch = match (step, ev) {
                    (EfStep::Open, Ev::Open(true)) => Watch::Ef(EfStep::Key),
                    (EfStep::Key, Ev::Name(_)) => Watch::Ef(EfStep::Num),
                    (EfStep::Key, Ev::Close(true)) => Watch::Idle,
                    (EfStep::Num, Ev::Num(n)) => Watch::Ef(EfStep::Gen(n)),
                    (EfStep::Gen(n), Ev::Num(_)) => Watch::Ef(EfStep::R(n)),
                    (EfStep::R(n), Ev::R) => {
                        let at = self.sighting("EF", self.ef_at);
                        self.ef.add(n, at);
                        Watch::Ef(EfStep::Key)
                    }
                    _ => {
                        self.watch = Watch::Idle;
                        return Err(self
                            .active("an /EF that is not a dictionary of references", self.ef_at));
                    }
                };
                // The token belonged to the `/EF` value.
                return Ok(());
            }
        }
        if let Ev::Name(class) = ev {
            match class {
                NameClass::Uri => {
                    self.watch = Watch::Uri;
                    self.uri.at = self.tok_at;
                    self.uri.key = "URI";
                }
                // The catalog's `/URI << /Base (...) >>`: a viewer puts the
                // base before scheme-less URIs, so its scheme is theirs.
                NameClass::UriBase => {
                    self.watch = Watch::Uri;
                    self.uri.at = self.tok_at;
                    self.uri.key = "Base";
                }
                NameClass::Ef => {
                    self.watch = Watch::Ef(EfStep::Open);
                    self.ef_at = self.tok_at;
                    let at = self.sighting("EF", self.tok_at);
                    self.ef.seen.get_or_insert(at);
                }
                NameClass::EmbeddedFiles => {
                    let at = self.sighting("EmbeddedFiles", self.tok_at);
                    self.ef.seen.get_or_insert(at);
                }
                NameClass::Val(NameVal::EmbeddedFile) => {
                    let at = self.sighting("EmbeddedFile", self.tok_at);
                    self.ef.seen.get_or_insert(at);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The next decoded byte of a `/URI` string.
    fn uri_byte(&mut self, b: u8) -> Result<(), Rejection> {
        match self.uri.byte(b) {
            UriVerdict::Pending => Ok(()),
            UriVerdict::Fine => {
                // Back to skipping the rest of the string.
                self.watch = Watch::Idle;
                Ok(())
            }
            UriVerdict::Bad => {
                self.watch = Watch::Idle;
                Err(self.uri.rejection(self.where_(self.uri.at)))
            }
        }
    }

    /// One byte of a literal string that is a `/URI` value (its escapes
    /// decoded). Returns how many bytes were consumed (0 or 1).
    fn uri_literal(&mut self, b: u8) -> Result<usize, Rejection> {
        match self.uri.lit {
            LitEsc::None => match b {
                b'\\' => self.uri.lit = LitEsc::Backslash,
                b'(' => {
                    self.str_depth = self.str_depth.saturating_add(1);
                    self.uri_byte(b)?;
                }
                b')' => {
                    self.str_depth -= 1;
                    if self.str_depth == 0 {
                        self.state = State::Normal;
                        self.on_string()?;
                    } else {
                        self.uri_byte(b)?;
                    }
                }
                _ => self.uri_byte(b)?,
            },
            LitEsc::Backslash => {
                self.uri.lit = LitEsc::None;
                match b {
                    b'n' => self.uri_byte(b'\n')?,
                    b'r' => self.uri_byte(b'\r')?,
                    b't' => self.uri_byte(b'\t')?,
                    b'b' => self.uri_byte(0x08)?,
                    b'f' => self.uri_byte(0x0C)?,
                    b'0'..=b'7' => self.uri.lit = LitEsc::Octal(1, b - b'0'),
                    // A line continuation: `\` and the end of line vanish.
                    b'\r' => self.uri.lit = LitEsc::Cr,
                    b'\n' => {}
                    // `\(`, `\)`, `\\`, and an unknown escape: the byte itself.
                    _ => self.uri_byte(b)?,
                }
            }
            LitEsc::Octal(k, v) => {
                if k < 3 && (b'0'..=b'7').contains(&b) {
                    let v = v.wrapping_mul(8).wrapping_add(b - b'0');
                    if k == 2 {
                        self.uri.lit = LitEsc::None;
                        self.uri_byte(v)?;
                    } else {
                        self.uri.lit = LitEsc::Octal(k + 1, v);
                    }
                } else {
                    // The escape ended before this byte, which is read again.
                    self.uri.lit = LitEsc::None;
                    self.uri_byte(v)?;
                    return Ok(0);
                }
            }
            LitEsc::Cr => {
                self.uri.lit = LitEsc::None;
                if b != b'\n' {
                    return Ok(0);
                }
            }
        }
        Ok(1)
    }

    /// The start of a `/URI` literal string, `data` from its first byte on.
    /// When it starts with a plain scheme and its `:` (`https:`), as
    /// nearly every one does, decides at once what decoding it byte by byte
    /// would decide. Returns the bytes consumed: through the `:`, or none
    /// (the string is decoded byte by byte).
    fn uri_scheme(&mut self, data: &[u8]) -> Result<usize, Rejection> {
        // The usual schemes, in the case the check would read them: fine.
        for plain in [&b"https:"[..], b"http:"] {
            if data.starts_with(plain) {
                self.watch = Watch::Idle;
                return Ok(plain.len());
            }
        }
        let scheme_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
        let Some(len) = data.iter().position(|&b| !scheme_char(b)) else {
            return Ok(0);
        };
        if len == 0 || !data[0].is_ascii_alphabetic() || data[len] != b':' {
            return Ok(0);
        }
        self.watch = Watch::Idle;
        match self.uri.plain_scheme(&data[..len]) {
            UriVerdict::Bad => Err(self.uri.rejection(self.where_(self.uri.at))),
            _ => Ok(len + 1),
        }
    }

    /// The bytes of a `/URI` literal string from `i` on, until its scheme is
    /// decided, the string ends or the data does.
    fn uri_literal_run(&mut self, data: &[u8], mut i: usize) -> Result<usize, Rejection> {
        while i < data.len() && self.state == State::Literal && self.uri_str() {
            i += self.uri_literal(data[i])?;
        }
        Ok(i)
    }

    /// One byte of a hex string that is a `/URI` value.
    fn uri_hex(&mut self, b: u8) -> Result<(), Rejection> {
        if b == b'>' {
            if let Some(hi) = self.uri.hex_hi.take() {
                // An odd final digit is followed by an implicit 0.
                self.uri_byte(hi << 4)?;
            }
            self.state = State::Normal;
            return self.on_string();
        }
        if let Some(v) = hex_val(b) {
            match self.uri.hex_hi.take() {
                None => self.uri.hex_hi = Some(v),
                Some(hi) => self.uri_byte(hi << 4 | v)?,
            }
        }
        // White-space (and any other byte) inside a hex string is skipped.
        Ok(())
    }

    /// Lexes `data`, which starts at offset `base`. Whole tokens go through the
    /// hot loop of [`Lexer::tokens`]; the per-state code below only finishes a
    /// token split by a chunk boundary and reads string and comment bodies.
    fn lex(&mut self, data: &[u8], base: u64) -> Result<Step, Rejection> {
        let n = data.len();
        let mut i = 0;
        while i < n {
            let from = i;
            // (`comment`, `literal` and `hex` guard their own bodies.)
            let guarded = self.mode == Mode::File
                && matches!(self.state, State::Literal | State::Hex)
                && self.uri_str();
            i = match self.state {
                State::Normal => match self.tokens(data, base, i)? {
                    Flow::At(i) => i,
                    Flow::Stream(consumed) => return Ok(self.stream_step(consumed)),
                },
                State::Comment => self.comment(data, i)?,
                State::Name => self.rest_of_name(data, i)?,
                State::Word => {
                    let (i, stream) = self.rest_of_word(data, i)?;
                    if stream {
                        return Ok(self.stream_step(i));
                    }
                    i
                }
                State::Literal if self.uri_str() => self.uri_literal_run(data, i)?,
                State::Literal => self.literal(data, i)?,
                State::Hex if self.uri_str() => {
                    self.uri_hex(data[i])?;
                    i + 1
                }
                State::Hex => self.hex(data, i)?,
                State::Lt => self.after_lt(data[i], i)?,
                State::Gt => self.after_gt(data[i], i)?,
            };
            if guarded {
                self.guard_body(&data[from..i])?;
            }
        }
        Ok(Step::Done)
    }

    /// File mode: a string or comment body (`body`: the next piece of the
    /// one that starts at `tok_at`), which the lexer skips, but which a
    /// cross-reference table can point a reader into (the scanner does not
    /// follow it): an object header (`N G obj`) there is refused as one
    /// inside stream data is ([`HeaderWatch`]), and `/Encrypt` there makes
    /// the file encrypted at the end ([`EncryptWatch`]). After a stream whose
    /// end was found by searching for `endstream`, this is also where a
    /// string opened in that stream's quoted data would swallow its real end
    /// and the objects after it. (An `endstream` alone there is fine: text
    /// in an uncompressed content stream may quote it.)
    ///
    /// Out of line: the quiet strings of the token loop never call it, and
    /// kept out of that loop's code it leaves the loop ~2.5 % faster
    /// (`small_objects`).
    #[inline(never)]
    fn guard_body(&mut self, body: &[u8]) -> Result<(), Rejection> {
        // Most bodies hold no `j` (no `obj`) and no `/` that may start
        // `/Encrypt` (`/E`, `/#`, or one at the end): with nothing carried
        // from the body's earlier bytes, there is nothing to watch.
        if self.guard_idle() {
            let mut from = 0;
            let quiet = loop {
                // (Most bodies are short: byte by byte, as the string
                // itself was read, beats setting `memchr` up.)
                match find_stop(&body[from..], STOP_GUARD, |d| {
                    memchr::memchr2(b'/', b'j', d)
                }) {
                    None => break true,
                    Some(p) if body[from + p] == b'j' => break false,
                    Some(p) => {
                        from += p + 1;
                        if matches!(body.get(from), Some(b'E' | b'#') | None) {
                            break false;
                        }
                    }
                }
            };
            // (A piece that ends in what may begin a header, `6 0 `,
            // `6 0 o` or `6 0 %x`, is watched: the rest may come in the
            // next piece.)
            if quiet && !HeaderWatch::may_carry(body) {
                return Ok(());
            }
        }
        self.watch_body(body)
    }

    fn watch_body(&mut self, body: &[u8]) -> Result<(), Rejection> {
        let ended = self.state == State::Normal;
        if self.encrypt_watch.feed(body) || (ended && self.encrypt_watch.pending()) {
            self.encrypt_hidden.get_or_insert(self.tok_at);
        }
        if ended {
            self.encrypt_watch = EncryptWatch::default();
        }
        if !self.reject_active {
            // (As in stream data: a hidden object matters for what it may
            // hold, active content.)
            return Ok(());
        }
        let mut found = self.guard_watch.feed(&self.obj_finder, body);
        if found.is_none() && ended && self.guard_watch.end() {
            found = Some(0);
        }
        if found.is_some() && self.hidden_in_body.is_none() {
            let after = match self.guard_from {
                Some(from) => format!(
                    " after the stream at offset {from}, whose /Length is no number that checks out"
                ),
                None => String::new(),
            };
            self.hidden_in_body = Some(Rejection::new(
                RejectCode::PdfActiveContent,
                format!(
                    "PDF hides an object definition (N G obj) inside the string or comment at offset {}{after}: a reader can be pointed at it, the inspection cannot see it",
                    self.tok_at
                ),
            ));
        }
        if self.state == State::Normal {
            // The body ended.
            self.guard_watch = HeaderWatch::default();
        }
        Ok(())
    }

    /// The hot loop: lexes whole tokens from `i` on in the `Normal` state,
    /// without a round trip through `self.state` per token. Returns where it
    /// stopped: at the end of `data`, at the start of a string or comment
    /// body, at a token that the chunk boundary splits or that has `#`
    /// escapes (with `self.state` set to finish it), or after a `stream`
    /// keyword.
    ///
    /// The handlers of the common tokens (names, numbers, brackets) are
    /// `#[inline(always)]` into this loop and the rare paths (`watch`,
    /// `assign`, `keyword`, `police_name`) `#[inline(never)]`: measured, the
    /// first is worth about 15% on small dictionaries, the second 3%.
    fn tokens(&mut self, data: &[u8], base: u64, mut i: usize) -> Result<Flow, Rejection> {
        let n = data.len();
        loop {
            i = skip_ws(data, i);
            let Some(&b) = data.get(i) else {
                return Ok(Flow::At(n));
            };
            let at = base + i as u64;
            // Names and numbers, most tokens, are told apart by
            // conditional branches, which predict better than the jump table
            // that a `match` on the byte compiles to.
            if b == b'/' {
                let end = name_stop(data, i + 1);
                if end == n || data[end] == b'#' {
                    self.begin_token(at);
                    self.esc = 0;
                    self.state = State::Name;
                    return Ok(Flow::At(i + 1));
                }
                self.tok_at = at;
                self.name(&data[i + 1..end])?;
                i = end;
                continue;
            }
            if CLASS[b as usize] == REG {
                // A regular byte: a keyword or a number. A non-negative
                // integer that ends in this chunk is read in one pass (what
                // `word` would make of it).
                if b.is_ascii_digit() {
                    if self.depth == 0
                        && self.mode == Mode::File
                        && self.idle()
                        && let Some(end) = self.top_level_line(data, i)
                    {
                        i = end;
                        continue;
                    }
                    let mut j = i + 1;
                    let mut v = u64::from(b - b'0');
                    while let Some(&c) = data.get(j) {
                        let d = c.wrapping_sub(b'0');
                        if d > 9 {
                            break;
                        }
                        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
                        j += 1;
                    }
                    if j - i <= 19
                        && let Some(&c) = data.get(j)
                        && STOPS[c as usize] & STOP_REG != 0
                    {
                        self.tok_at = at;
                        i = j;
                        self.uint(v)?;
                        continue;
                    }
                }
                if b == b'e'
                    && self.mode == Mode::File
                    && self.idle()
                    && data.get(i..i + 6) == Some(b"endobj")
                    && let Some(&c) = data.get(i + 6)
                    && STOPS[c as usize] & STOP_REG != 0
                {
                    // What `keyword` does with it, without the search.
                    self.endobj();
                    i += 6;
                    continue;
                }
                let end = token_end(data, i + 1);
                if end == n {
                    self.begin_token(at);
                    self.push_slice(&data[i..]);
                    self.state = State::Word;
                    return Ok(Flow::At(n));
                }
                self.tok_at = at;
                let word = &data[i..end];
                i = end;
                if self.word(word)? {
                    return Ok(Flow::Stream(end));
                }
                continue;
            }
            match b {
                b'[' => {
                    if let Some(end) = self.number_array(data, i)? {
                        i = end;
                        continue;
                    }
                    self.open(false, at)?;
                    i += 1;
                }
                b']' => {
                    self.close(false)?;
                    i += 1;
                }
                b'<' => {
                    self.tok_at = at;
                    match data.get(i + 1) {
                        Some(b'<') => {
                            self.open(true, at)?;
                            i += 2;
                        }
                        Some(_) => {
                            // A hex string: read at once when it ends in
                            // this chunk.
                            self.start_hex()?;
                            if self.uri_str() {
                                return Ok(Flow::At(i + 1));
                            }
                            i = self.hex(data, i + 1)?;
                            if self.state != State::Normal {
                                return Ok(Flow::At(i));
                            }
                        }
                        None => {
                            self.state = State::Lt;
                            return Ok(Flow::At(n));
                        }
                    }
                }
                b'>' => {
                    self.tok_at = at;
                    match data.get(i + 1) {
                        Some(b'>') => {
                            self.close(true)?;
                            i += 2;
                        }
                        Some(_) => {
                            // A stray `>`; the byte after it is read again.
                            self.on_value()?;
                            i += 1;
                        }
                        None => {
                            self.state = State::Gt;
                            return Ok(Flow::At(n));
                        }
                    }
                }
                b'(' => {
                    self.tok_at = at;
                    self.str_depth = 1;
                    self.str_escape = false;
                    self.state = State::Literal;
                    let mut j = i + 1;
                    if !self.idle() {
                        self.watch(Ev::StrStart)?;
                        if self.uri_str() {
                            j += self.uri_scheme(&data[j..])?;
                            if self.uri_str() {
                                return Ok(Flow::At(j));
                            }
                        }
                    }
                    // The body, read at once when the string ends in this
                    // chunk.
                    i = self.literal(data, j)?;
                    if self.state != State::Normal {
                        return Ok(Flow::At(i));
                    }
                }
                b'%' => {
                    self.tok_at = at;
                    self.state = State::Comment;
                    return Ok(Flow::At(i + 1));
                }
                // Stray `)`, `{` or `}` (white-space was skipped, and names
                // and regular bytes are taken above).
                _ => {
                    self.on_value()?;
                    i += 1;
                }
            }
        }
    }

    /// A `[` at `i` that opens an array of numbers ending in this chunk
    /// (`/Rect [0 0 612 792]`), where its tokens would change nothing but
    /// what their last one does: what they would do one by one, at once.
    /// That is anywhere in an object stream (only nesting matters there),
    /// and in the file as the value of a key of an object's top-level
    /// dictionary other than `/Filter`, with no value followed (see
    /// [`Lexer::watch`]). Returns the index after the `]`, or `None` (and
    /// nothing done) when the array is not such.
    #[inline(always)]
    fn number_array(&mut self, data: &[u8], i: usize) -> Result<Option<usize>, Rejection> {
        let file = self.mode == Mode::File;
        if !self.idle()
            || self.depth >= self.max_nesting
            || (file
                && !(self.depth == 1
                    && self.top == Top::Dict
                    && !self.expect_key
                    && self.pending != Key::Filter
                    && self.filter_array.is_none()))
        {
            return Ok(None);
        }
        let Some(end) = number_array(data, i + 1) else {
            return Ok(None);
        };
        // Its words would each set `tok_at`, which is read only for the
        // token that sets it: left alone.
        if file {
            // The `]`: `open` made the array the pending key's value, and
            // its tokens left `note_token`'s state as `close` does.
            self.note_token();
            self.sub_is_value = false;
            self.assign(Val::Other)?;
        }
        Ok(Some(end))
    }

    /// At the top level of the file (file mode, no value followed), at the
    /// digit at `i`: an object's `N G obj`, or an entry of a cross-reference
    /// section (`0000012345 00000 n`, exactly so), that ends in this chunk:
    /// what its three tokens would do one by one, at once. Returns the index
    /// after the last token, or `None` (and nothing done).
    #[inline(always)]
    fn top_level_line(&mut self, data: &[u8], i: usize) -> Option<usize> {
        if let Some(e) = data.get(i..i + 19)
            && is_xref_entry(e)
        {
            // Two integers and an `f` or `n`, which is file structure
            // anywhere at the top level.
            if self.after_startxref {
                self.saw_startxref = true;
            }
            self.note_token();
            return Some(i + 18);
        }
        let (n, j) = top_uint(data, i)?;
        let k = skip_ws(data, j);
        if k == j {
            return None;
        }
        let (g, j) = top_uint(data, k)?;
        let k = skip_ws(data, j);
        if k == j
            || data.get(k..k + 3) != Some(b"obj")
            || STOPS[*data.get(k + 3)? as usize] & STOP_REG == 0
        {
            return None;
        }
        // The integers (the first takes `after_startxref`), then `obj`.
        if self.after_startxref {
            self.saw_startxref = true;
        }
        self.after_startxref = false;
        self.resync();
        self.in_obj = true;
        self.unsure_end = false;
        self.cur_obj = Some(n);
        self.cur_gen0 = g == 0;
        self.obj_body = ObjBody::Start(n);
        self.saw_obj = true;
        self.obj_after_search |= self.guard_from.is_some();
        Some(k + 3)
    }

    /// The `stream` keyword ended at `consumed`.
    fn stream_step(&mut self, consumed: usize) -> Step {
        Step::Stream {
            consumed,
            start: self.stream_start(),
        }
    }

    /// A `<` that is no `<<` opened a hex string.
    fn start_hex(&mut self) -> Result<(), Rejection> {
        self.state = State::Hex;
        if !self.idle() {
            self.watch(Ev::StrStart)?;
        }
        Ok(())
    }

    /// The byte after a `<` that ended the previous chunk.
    fn after_lt(&mut self, b: u8, i: usize) -> Result<usize, Rejection> {
        if b == b'<' {
            self.state = State::Normal;
            self.open(true, self.tok_at)?;
            return Ok(i + 1);
        }
        // A hex string; this byte is its first (or its `>`).
        self.start_hex()?;
        Ok(i)
    }

    /// The byte after a `>` that ended the previous chunk.
    fn after_gt(&mut self, b: u8, i: usize) -> Result<usize, Rejection> {
        self.state = State::Normal;
        if b == b'>' {
            self.close(true)?;
            return Ok(i + 1);
        }
        self.on_value()?;
        Ok(i)
    }

    /// A comment's body, up to and including its end of line.
    fn comment(&mut self, data: &[u8], i: usize) -> Result<usize, Rejection> {
        let end = match memchr::memchr2(b'\n', b'\r', &data[i..]) {
            Some(p) => {
                self.state = State::Normal;
                i + p + 1
            }
            None => data.len(),
        };
        if self.mode == Mode::File {
            self.guard_body(&data[i..end])?;
        }
        Ok(end)
    }

    /// A literal string's body (not a `/URI` value), its bytes watched in
    /// file mode ([`Lexer::guard_body`]).
    #[inline(always)]
    fn literal(&mut self, data: &[u8], i: usize) -> Result<usize, Rejection> {
        if self.mode != Mode::File {
            return Ok(self.literal_body(data, i, false)?.0);
        }
        let idle = self.guard_idle();
        let (end, quiet) = self.literal_body(data, i, idle)?;
        if !(quiet && self.state == State::Normal) {
            self.guard_body(&data[i..end])?;
        }
        Ok(end)
    }

    /// Whether the watches of [`Lexer::guard_body`] carry nothing from an
    /// earlier piece of the body.
    #[inline(always)]
    fn guard_idle(&self) -> bool {
        self.encrypt_watch.pos == 0 && self.guard_watch.idle()
    }

    /// A literal string's body (not a `/URI` value), jumping from one
    /// parenthesis or backslash to the next. With `guard`, the same pass
    /// also stops at `j`, `E` and `#` (in the first [`SHORT`] bytes of each
    /// jump, where it reads byte by byte anyway), and the second value
    /// returned says that the bytes read hold nothing that
    /// [`Lexer::guard_body`] looks for, so that the string, when it ended
    /// here, needs no second pass (`false`: not known, or not so).
    fn literal_body(
        &mut self,
        data: &[u8],
        mut i: usize,
        guard: bool,
    ) -> Result<(usize, bool), Rejection> {
        let n = data.len();
        let mut quiet = guard;
        if self.str_escape {
            self.str_escape = false;
            i += 1;
        }
        while i < n {
            let stops = if quiet {
                STOP_LIT | STOP_GUARD_LIT
            } else {
                STOP_LIT
            };
            let Some(p) = find_stop(&data[i..], stops, |d| memchr::memchr3(b'(', b')', b'\\', d))
            else {
                // (Past `SHORT` bytes, `memchr` looked for the three only.)
                quiet &= n - i <= SHORT;
                return Ok((n, quiet));
            };
            quiet &= p < SHORT;
            let b = data[i + p];
            i += p + 1;
            match b {
                b'\\' if i == n => self.str_escape = true,
                // The escaped byte cannot open or close the string. Nor,
                // after a `\`, can it end `obj` or be the `E` or `#` of `/E`
                // or `/#` (an escaped `/` is a byte like any: the `E` or `#`
                // after it stops the run).
                b'\\' => i += 1,
                b'(' => self.str_depth = self.str_depth.saturating_add(1),
                b')' => {
                    self.str_depth -= 1;
                    if self.str_depth == 0 {
                        self.state = State::Normal;
                        self.on_string()?;
                        return Ok((i, quiet));
                    }
                }
                // An `E` or `#` that is not after a `/` (the byte before the
                // body is its `(`, or the piece before, which would have
                // left the watch busy had it ended in `/`): read on.
                b'E' | b'#' => quiet = i < 2 || data[i - 2] != b'/',
                _ => quiet = false,
            }
        }
        Ok((i, quiet))
    }

    /// A hex string's body (not a `/URI` value). In file mode, its end is
    /// looked for together with what [`Lexer::guard_body`] watches, which a
    /// well-formed hex string never holds: the body needs no second pass.
    fn hex(&mut self, data: &[u8], i: usize) -> Result<usize, Rejection> {
        let file = self.mode == Mode::File;
        if file && self.guard_idle() {
            let head = &data[i..data.len().min(i + SHORT)];
            let p = run_end(head, 0, STOP_GT | STOP_GUARD);
            if head.get(p) == Some(&b'>') {
                self.state = State::Normal;
                self.on_string()?;
                return Ok(i + p + 1);
            }
        }
        let end = match find_stop(&data[i..], STOP_GT, |d| memchr::memchr(b'>', d)) {
            Some(p) => {
                self.state = State::Normal;
                self.on_string()?;
                i + p + 1
            }
            None => data.len(),
        };
        if file {
            self.guard_body(&data[i..end])?;
        }
        Ok(end)
    }

    /// The rest of a name that a chunk boundary split or that has `#`
    /// escapes.
    fn rest_of_name(&mut self, data: &[u8], i: usize) -> Result<usize, Rejection> {
        let n = data.len();
        let stop = name_stop(data, i);
        let plain = data.get(stop) != Some(&b'#');
        let end = if plain { stop } else { token_end(data, stop) };
        let token = &data[i..end];
        if self.esc == 0 && plain {
            self.push_slice(token);
        } else {
            for &b in token {
                self.name_byte(b);
            }
        }
        if end < n {
            self.state = State::Normal;
            self.end_name()?;
        }
        Ok(end)
    }

    /// The rest of a keyword or number that a chunk boundary split. Returns
    /// where it stopped and whether the word was `stream`.
    fn rest_of_word(&mut self, data: &[u8], i: usize) -> Result<(usize, bool), Rejection> {
        let end = token_end(data, i);
        self.push_slice(&data[i..end]);
        if end == data.len() {
            return Ok((end, false));
        }
        self.state = State::Normal;
        Ok((end, self.end_word()?))
    }

    /// End of input: completes a pending name or keyword (a `stream` keyword
    /// here opens nothing).
    fn flush(&mut self) -> Result<(), Rejection> {
        match self.state {
            State::Name => {
                self.state = State::Normal;
                self.end_name()
            }
            State::Word => {
                self.state = State::Normal;
                if self.end_word()? {
                    // A `stream` keyword here opens nothing.
                    self.stream_start();
                }
                Ok(())
            }
            State::Gt => {
                self.state = State::Normal;
                self.on_value()
            }
            _ => Ok(()),
        }?;
        match self.watch {
            // The data ended inside an `/EF` value.
            Watch::Ef(_) => {
                self.watch = Watch::Idle;
                Err(self.active("an /EF that is not a dictionary of references", self.ef_at))
            }
            // A string that does not end: the file is malformed anyway.
            _ => {
                self.watch = Watch::Idle;
                Ok(())
            }
        }
    }

    fn begin_token(&mut self, at: u64) {
        self.tok_at = at;
        self.len = 0;
        self.overflow = false;
    }

    fn push_slice(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(TOKEN_CAP - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
        if take < bytes.len() {
            self.overflow = true;
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < TOKEN_CAP {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.overflow = true;
        }
    }

    fn name_byte(&mut self, b: u8) {
        match self.esc {
            0 => {
                if b == b'#' {
                    self.esc = 1;
                } else {
                    self.push(b);
                }
            }
            1 => {
                if hex_val(b).is_some() {
                    self.esc_hi = b;
                    self.esc = 2;
                } else {
                    // Not an escape: keep the `#` literally.
                    self.push(b'#');
                    self.esc = 0;
                    self.name_byte(b);
                }
            }
            _ => {
                self.esc = 0;
                match (hex_val(self.esc_hi), hex_val(b)) {
                    (Some(hi), Some(lo)) => self.push(hi << 4 | lo),
                    _ => {
                        self.push(b'#');
                        self.push(self.esc_hi);
                        self.name_byte(b);
                    }
                }
            }
        }
    }

    fn end_name(&mut self) -> Result<(), Rejection> {
        match self.esc {
            1 => self.push(b'#'),
            2 => {
                self.push(b'#');
                self.push(self.esc_hi);
            }
            _ => {}
        }
        self.esc = 0;
        let (buf, len) = (self.buf, self.len);
        self.len = 0;
        self.name(if self.overflow { b"" } else { &buf[..len] })
    }

    /// A name ended: its bytes after unescaping (empty if it was too long to
    /// keep, which matches nothing).
    #[inline(always)]
    fn name(&mut self, name: &[u8]) -> Result<(), Rejection> {
        let NameInfo {
            class,
            key,
            val,
            policed,
        } = classify(name);
        if self.reject_active && (policed || !self.idle()) {
            self.police_name(class, name)?;
        }
        if self.mode == Mode::File {
            self.file_name(key, val)?;
        }
        Ok(())
    }

    /// Under the Reject policy, a name that is active content, or that
    /// [`Lexer::watch`] follows or is following.
    #[inline(never)]
    fn police_name(&mut self, class: NameClass, name: &[u8]) -> Result<(), Rejection> {
        if matches!(class, NameClass::Active) {
            let what = if name == b"RF" {
                " (related files of an embedded file)"
            } else {
                ""
            };
            return Err(Rejection::new(
                RejectCode::PdfActiveContent,
                format!(
                    "PDF contains /{}{what} {}",
                    String::from_utf8_lossy(name),
                    self.where_(self.tok_at)
                ),
            ));
        }
        self.watch(Ev::Name(class))
    }

    /// A name in file mode: a key or value of the top-level dictionary, the
    /// body of a bare name object, a `/Filter` array entry.
    #[inline(always)]
    fn file_name(&mut self, key: Key, val: NameVal) -> Result<(), Rejection> {
        if self.outside() {
            return Err(self.stray("a name", self.tok_at));
        }
        let body = self.obj_body;
        self.note_token();
        if let ObjBody::Start(n) = body {
            self.obj_body = ObjBody::Name(n, val);
        }
        if self.top != Top::Dict {
            return Ok(());
        }
        if self.depth == 1 {
            if self.expect_key {
                self.expect_key = false;
                self.pending = key;
                self.key_at = self.tok_at;
                if key == Key::DecodeParms {
                    self.dict.decode_parms = true;
                }
            } else {
                self.assign(Val::Name(val))?;
            }
        } else if self.depth == 2
            && let Some(fa) = &mut self.filter_array
        {
            fa.count += 1;
            if val != NameVal::FlateDecode {
                fa.other = true;
            }
        }
        Ok(())
    }

    /// A keyword or number ended. Returns whether it is `stream` (see
    /// [`Lexer::stream_start`]).
    fn end_word(&mut self) -> Result<bool, Rejection> {
        let (buf, len) = (self.buf, self.len);
        self.len = 0;
        // A word too long to keep: its first `TOKEN_CAP` bytes, which match
        // no keyword or number, and tell binary junk from text as the whole
        // word does in the hot loop (see `Lexer::keyword`).
        self.word(&buf[..len])
    }

    /// A keyword or number ended (only its first `TOKEN_CAP` bytes count:
    /// a longer word matches no keyword or number). Returns whether it
    /// is the `stream` keyword, which the caller then takes with
    /// [`Lexer::stream_start`].
    #[inline(always)]
    fn word(&mut self, word: &[u8]) -> Result<bool, Rejection> {
        match parse_uint(word) {
            Some(n) => self.uint(n).map(|()| false),
            None => self.non_uint(word),
        }
    }

    /// A non-negative integer ended.
    #[inline(always)]
    fn uint(&mut self, n: u64) -> Result<(), Rejection> {
        // `watch` is only ever set under the Reject policy.
        if !self.idle() {
            self.watch(Ev::Num(n))?;
        }
        if self.mode == Mode::File {
            self.number(n)?;
        }
        Ok(())
    }

    /// A keyword, or a number that is no non-negative integer, ended. Returns
    /// whether it is `stream`.
    #[inline(always)]
    fn non_uint(&mut self, word: &[u8]) -> Result<bool, Rejection> {
        if !self.idle() {
            self.watch(if word == b"R" { Ev::R } else { Ev::Word })?;
        }
        if self.mode == Mode::ObjStm {
            return Ok(false);
        }
        self.keyword(word)
    }

    /// A non-negative integer (file mode).
    #[inline(always)]
    fn number(&mut self, n: u64) -> Result<(), Rejection> {
        let older = self.ints[1];
        if std::mem::take(&mut self.after_startxref) {
            self.saw_startxref = true;
        }
        self.note_token();
        self.ints = [older, Some(n)];
        if self.depth == 1 && self.top == Top::Dict {
            if !self.expect_key {
                self.assign(Val::Int(n))?;
            }
        } else if self.depth == 2
            && let Some(fa) = &mut self.filter_array
        {
            fa.other = true;
        }
        Ok(())
    }

    /// A keyword, or a number that is not a non-negative integer (file mode).
    /// Returns whether it is `stream`.
    #[inline(never)]
    fn keyword(&mut self, word: &[u8]) -> Result<bool, Rejection> {
        // What the lexer keeps of a word split by a chunk boundary (see
        // `Lexer::end_word`): the same verdict and detail however it is cut.
        let word = &word[..word.len().min(TOKEN_CAP)];
        let ints = self.ints;
        match word {
            // Outside an object a `stream` would hide its data from the
            // checks: no PDF has one there.
            b"stream" if self.outside() => return Err(self.stray_word(word)),
            b"stream" => return Ok(true),
            b"obj" => {
                self.resync();
                self.in_obj = true;
                self.unsure_end = false;
                if let [Some(n), Some(g)] = ints {
                    self.cur_obj = Some(n);
                    self.cur_gen0 = g == 0;
                    self.obj_body = ObjBody::Start(n);
                    self.saw_obj = true;
                    self.obj_after_search |= self.guard_from.is_some();
                }
            }
            b"endobj" => self.endobj(),
            // A stray `endstream` (some writers leave one) changes nothing,
            // but after a stream whose end was found by searching it may be
            // that stream's real end, the objects since then its data.
            b"endstream" if self.obj_after_search => {
                return Err(Rejection::malformed(format!(
                    "a stray endstream at offset {} follows an object that came after the stream at offset {}, whose /Length is no number that checks out: that stream may really end here, and the objects in between be its data",
                    self.tok_at,
                    self.guard_from.unwrap_or(0)
                )));
            }
            b"endstream" => self.resync(),
            b"xref" | b"startxref" => {
                self.resync();
                self.in_obj = false;
                self.unsure_end = false;
                self.after_startxref = word == b"startxref";
            }
            b"trailer" => {
                self.resync();
                self.in_obj = false;
                self.unsure_end = false;
                self.trailer_pending = true;
            }
            b"R" if self.outside() => return Err(self.stray_word(word)),
            b"R" => self.reference(ints[0])?,
            // Outside objects: the `f` and `n` of cross-reference entries,
            // and words with a byte that is no printable ASCII (binary junk,
            // which some writers leave between a `%%EOF` and an incremental
            // update), but no text.
            _ if self.outside() && !(word == b"f" || word == b"n" || is_binary(word)) => {
                return Err(self.stray_word(word));
            }
            _ => {
                self.note_token();
                if self.depth == 1 && self.top == Top::Dict {
                    if !self.expect_key {
                        let val = if word == b"null" {
                            Val::Null
                        } else {
                            Val::Other
                        };
                        self.assign(val)?;
                    }
                } else if self.depth == 2
                    && let Some(fa) = &mut self.filter_array
                {
                    fa.other = true;
                }
            }
        }
        Ok(false)
    }

    /// The `endobj` keyword (file mode).
    #[inline(always)]
    fn endobj(&mut self) {
        if let ObjBody::Name(n, v) = self.obj_body {
            self.names.record(n, v);
        }
        self.resync();
        self.in_obj = false;
    }

    /// The `R` of `N G R`; `n` is `N` when the two tokens before were
    /// integers.
    fn reference(&mut self, n: Option<u64>) -> Result<(), Rejection> {
        self.note_token();
        if self.depth == 1 && self.top == Top::Dict {
            if self.expect_key {
                // `N G R`: the value just assigned was a reference.
                match self.last_valued {
                    Key::Length => self.dict.length = None,
                    Key::Type => {
                        self.dict.ty = match n.and_then(|n| self.names.get(n)) {
                            Some(v) => DictType::of(v),
                            None => DictType::Unresolved,
                        }
                    }
                    Key::Filter => self.dict.filter = FilterKind::Other,
                    Key::Subtype => self.dict.subtype_xml = false,
                    Key::N => self.dict.n = IntEntry::Other,
                    Key::First => self.dict.first = IntEntry::Other,
                    _ => {}
                }
            } else {
                self.assign(Val::Other)?;
            }
        } else if self.depth == 2
            && let Some(fa) = &mut self.filter_array
        {
            fa.other = true;
        }
        Ok(())
    }

    /// The `stream` keyword just ended (file mode): what it opens. Back to
    /// the top level.
    fn stream_start(&mut self) -> StreamStart {
        let start = StreamStart {
            kw_at: self.tok_at,
            dict: self.ready.take(),
            obj: self.cur_obj,
            gen0: self.cur_gen0,
        };
        self.resync();
        start
    }

    /// A string ended.
    fn on_string(&mut self) -> Result<(), Rejection> {
        // Outside any object: markup (`<html>` lexes as a hex string) or
        // text. A stray `)`, `{`, `}`, `>`, `]` or `>>` is tolerated, like
        // binary junk.
        if self.mode == Mode::File && self.outside() {
            return Err(self.stray("a string", self.tok_at));
        }
        self.on_value()
    }

    /// A string or other non-name, non-composite value ended.
    fn on_value(&mut self) -> Result<(), Rejection> {
        if !self.idle() {
            self.watch(Ev::Value)?;
        }
        if self.mode == Mode::ObjStm {
            return Ok(());
        }
        self.note_token();
        if self.depth == 1 && self.top == Top::Dict {
            if !self.expect_key {
                self.assign(Val::Other)?;
            }
        } else if self.depth == 2
            && let Some(fa) = &mut self.filter_array
        {
            fa.other = true;
        }
        Ok(())
    }

    #[inline(always)]
    fn open(&mut self, dict: bool, at: u64) -> Result<(), Rejection> {
        if self.depth >= self.max_nesting {
            return Err(Rejection::malformed(format!(
                "dictionaries and arrays nest deeper than {} {}",
                self.max_nesting,
                self.where_(at)
            )));
        }
        if !self.idle() {
            self.watch(Ev::Open(dict))?;
        }
        // Outside objects, only a trailer's dictionary.
        if self.mode == Mode::File && self.outside() && !(dict && self.trailer_pending) {
            let what = if dict { "a dictionary" } else { "an array" };
            return Err(self.stray(what, at));
        }
        self.depth += 1;
        if self.mode == Mode::ObjStm {
            return Ok(());
        }
        let trailer = self.note_token();
        match self.depth {
            1 => {
                if dict {
                    self.top = Top::Dict;
                    self.dict = DictInfo::new(trailer);
                    self.expect_key = true;
                    self.pending = Key::None;
                    self.last_valued = Key::None;
                    self.sub_is_value = false;
                    self.filter_array = None;
                } else {
                    self.top = Top::Array;
                }
            }
            2 if self.top == Top::Dict => {
                self.sub_is_value = !self.expect_key;
                if self.sub_is_value && self.pending == Key::Filter && !dict {
                    self.filter_array = Some(FilterArray::default());
                }
            }
            3 => {
                if let Some(fa) = &mut self.filter_array {
                    fa.other = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    #[inline(always)]
    fn close(&mut self, dict: bool) -> Result<(), Rejection> {
        if self.depth == 0 {
            // A stray `]` or `>>`.
            return self.on_value();
        }
        if !self.idle() {
            self.watch(Ev::Close(dict))?;
        }
        self.depth -= 1;
        if self.mode == Mode::ObjStm {
            return Ok(());
        }
        self.note_token();
        if self.depth == 0 {
            if self.top == Top::Dict {
                if self.dict.ty == DictType::XRef
                    && let Some(at) = self.dict.encrypt_at
                {
                    return Err(Rejection::new(
                        RejectCode::PdfEncrypted,
                        format!(
                            "PDF is encrypted (/Encrypt in cross-reference stream dictionary at offset {at})"
                        ),
                    ));
                }
                self.ready = Some(self.dict);
            }
            self.top = Top::None;
        } else if self.depth == 1 && self.top == Top::Dict && self.sub_is_value {
            self.sub_is_value = false;
            let val = match self.filter_array.take() {
                Some(fa) => Val::Array(fa),
                None => Val::Other,
            };
            self.assign(val)?;
        }
        Ok(())
    }

    /// `val` is the value of the pending top-level key.
    #[inline(always)]
    fn assign(&mut self, val: Val) -> Result<(), Rejection> {
        // Most keys are none the scanner keeps anything of.
        if matches!(self.pending, Key::Other | Key::None) {
            self.valued();
            return Ok(());
        }
        self.assign_kept(val)
    }

    /// After the value of the pending key.
    #[inline(always)]
    fn valued(&mut self) {
        self.last_valued = self.pending;
        self.pending = Key::None;
        self.expect_key = true;
    }

    /// [`Lexer::assign`] for a key the scanner keeps something of.
    #[inline(never)]
    fn assign_kept(&mut self, val: Val) -> Result<(), Rejection> {
        match self.pending {
            // `/Encrypt null` is no encryption.
            Key::Encrypt if !matches!(val, Val::Null) => {
                if self.dict.trailer {
                    return Err(Rejection::new(
                        RejectCode::PdfEncrypted,
                        format!(
                            "PDF is encrypted (/Encrypt in trailer at offset {})",
                            self.key_at
                        ),
                    ));
                }
                self.dict.encrypt_at.get_or_insert(self.key_at);
            }
            Key::Type => {
                self.dict.ty = match val {
                    Val::Name(v) => DictType::of(v),
                    _ => DictType::Unknown,
                }
            }
            Key::Filter => {
                self.dict.filter = match val {
                    Val::Name(NameVal::FlateDecode) => FilterKind::Flate,
                    Val::Array(fa) if !fa.other && fa.count == 0 => FilterKind::None,
                    Val::Array(fa) if !fa.other && fa.count == 1 => FilterKind::Flate,
                    _ => FilterKind::Other,
                }
            }
            Key::Length => {
                self.dict.length = match val {
                    Val::Int(n) => Some(n),
                    _ => None,
                }
            }
            Key::N => self.dict.n = IntEntry::of(val),
            Key::First => self.dict.first = IntEntry::of(val),
            Key::Subtype => self.dict.subtype_xml = matches!(val, Val::Name(NameVal::Xml)),
            _ => {}
        }
        self.valued();
        Ok(())
    }

    /// Any token: a closed dictionary is no longer followed by `stream`, a
    /// `trailer` keyword no longer by its dictionary, and the tokens before
    /// are no longer `N G` of `N G obj` or `N G R`. Returns whether a
    /// `trailer` keyword came right before.
    fn note_token(&mut self) -> bool {
        self.after_startxref = false;
        self.ready = None;
        self.ints = [None; 2];
        self.obj_body = ObjBody::None;
        std::mem::take(&mut self.trailer_pending)
    }

    /// At the top level of the file, outside any object (file mode): only
    /// the file's structure belongs here.
    #[inline(always)]
    fn outside(&self) -> bool {
        // Inside an object first: the common case, decided by one test.
        !self.in_obj && self.depth == 0 && !self.unsure_end
    }

    /// Something that is no PDF file structure, outside any object.
    #[cold]
    fn stray(&self, what: &str, at: u64) -> Rejection {
        Rejection::malformed(format!(
            "not a PDF: {what} outside any object at offset {at}, where only the file's structure (objects, cross-reference sections, trailer, startxref) may be"
        ))
    }

    #[cold]
    fn stray_word(&self, word: &[u8]) -> Rejection {
        self.stray(
            &format!("the word \"{}\"", word.escape_ascii()),
            self.tok_at,
        )
    }

    /// Back to the top level (a keyword that only occurs there was seen).
    fn resync(&mut self) {
        self.depth = 0;
        self.top = Top::None;
        self.ready = None;
        self.trailer_pending = false;
        self.filter_array = None;
        self.sub_is_value = false;
        self.expect_key = false;
        self.pending = Key::None;
        self.ints = [None; 2];
        self.cur_obj = None;
        self.obj_body = ObjBody::None;
    }
}

/// What a name means to the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameClass {
    /// Active content whatever its place.
    Active,
    /// `/URI`: its string value is checked.
    Uri,
    /// `/Base`: a string value is checked as a `/URI`'s.
    UriBase,
    /// `/EF`: its value must be a dictionary of references.
    Ef,
    /// `/EmbeddedFiles`.
    EmbeddedFiles,
    Key(Key),
    Val(NameVal),
    Other,
}

impl NameClass {
    /// Under the Reject policy, the lexer has something to do with it.
    fn is_policed(self) -> bool {
        // `matches!`, not the derived `==`, which compares payloads too.
        matches!(self, NameClass::Active) || self.is_watched()
    }

    /// `Lexer::watch` has something to do with it even when idle.
    fn is_watched(self) -> bool {
        matches!(
            self,
            NameClass::Uri
                | NameClass::UriBase
                | NameClass::Ef
                | NameClass::EmbeddedFiles
                | NameClass::Val(NameVal::EmbeddedFile)
        )
    }
}

/// A [`NameClass`] and what the lexer reads of it, worked out in each arm of
/// [`classify`] (constants there) rather than from the class after it.
#[derive(Debug, Clone, Copy)]
struct NameInfo {
    class: NameClass,
    /// The top-level dictionary key it is (`Key::Other` if none).
    key: Key,
    /// The value it is (`NameVal::Other` if none).
    val: NameVal,
    /// [`NameClass::is_policed`].
    policed: bool,
}

impl NameClass {
    #[inline(always)]
    fn info(self) -> NameInfo {
        NameInfo {
            class: self,
            key: match self {
                NameClass::Key(k) => k,
                _ => Key::Other,
            },
            val: match self {
                NameClass::Val(v) => v,
                _ => NameVal::Other,
            },
            policed: self.is_policed(),
        }
    }
}

/// What a name (unescaped, without its `/`) means.
#[inline(always)]
fn classify(name: &[u8]) -> NameInfo {
    classify_class(name).info()
}

#[inline(always)]
fn classify_class(name: &[u8]) -> NameClass {
    use NameClass::{Active, Key as K, Val as V};
    match (name.len(), name) {
        (1, b"N") => K(Key::N),
        (2, b"JS") => Active,
        (2, b"EF") => NameClass::Ef,
        // Related files arrays (ISO 32000-2 §7.11.4.2) hold embedded file
        // streams that the `/EF` check does not follow. Any position, like
        // the other active names: the lexer knows key position only in the
        // top-level dictionary of an object, not in nested ones or in object
        // streams, where file specifications sit.
        (2, b"RF") => Active,
        (3, b"XFA") => Active,
        (3, b"URI") => NameClass::Uri,
        (4, b"Type") => K(Key::Type),
        (4, b"Base") => NameClass::UriBase,
        (4, b"XRef") => V(NameVal::XRef),
        (5, b"First") => K(Key::First),
        (6, b"Launch") => Active,
        (6, b"Filter") => K(Key::Filter),
        (6, b"Length") => K(Key::Length),
        (6, b"ObjStm") => V(NameVal::ObjStm),
        (7, b"Encrypt") => K(Key::Encrypt),
        (7, b"Subtype") => K(Key::Subtype),
        (8, _) if name.eq_ignore_ascii_case(b"text/xml") => V(NameVal::Xml),
        (9, b"RichMedia") => Active,
        (10, b"JavaScript" | b"SubmitForm" | b"ImportData") => Active,
        (11, b"DecodeParms") => K(Key::DecodeParms),
        (11, b"FlateDecode") => V(NameVal::FlateDecode),
        (12, b"EmbeddedFile") => V(NameVal::EmbeddedFile),
        (13, b"EmbeddedFiles") => NameClass::EmbeddedFiles,
        (15, _) if name.eq_ignore_ascii_case(b"application/xml") => V(NameVal::Xml),
        // The rich media action (`/S /RichMediaExecute`), beside the
        // annotation's `/RichMedia`.
        (16, b"RichMediaExecute") => Active,
        _ => NameClass::Other,
    }
}

/// Eight ASCII digits.
#[inline(always)]
fn digits8(w: u64) -> bool {
    const HI: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZERO: u64 = 0x3030_3030_3030_3030;
    w & HI == ZERO && w.wrapping_add(0x0606_0606_0606_0606) & HI == ZERO
}

/// A cross-reference entry as writers write it, `nnnnnnnnnn ggggg n` (or
/// `f`), followed by a byte that ends the `n`.
#[inline(always)]
fn is_xref_entry(e: &[u8]) -> bool {
    e.len() == 19
        && digits8(u64::from_le_bytes([
            e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7],
        ]))
        && e[8..10].iter().all(u8::is_ascii_digit)
        && e[10] == b' '
        && e[11..16].iter().all(u8::is_ascii_digit)
        && e[16] == b' '
        && matches!(e[17], b'f' | b'n')
        && STOPS[e[18] as usize] & STOP_REG != 0
}

/// A non-negative integer of at most 19 digits at `i`, ended by a byte in
/// `data` that is no regular byte: its value and end.
#[inline(always)]
fn top_uint(data: &[u8], i: usize) -> Option<(u64, usize)> {
    let end = token_end(data, i);
    let v = parse_uint(&data[i..end])?;
    data.get(end)?;
    Some((v, end))
}

/// A word with a byte that is no printable ASCII (binary junk, not text).
fn is_binary(word: &[u8]) -> bool {
    word.iter().any(|&b| !(0x21..0x7F).contains(&b))
}

/// A non-negative integer of at most 19 digits (no sign, no point).
fn parse_uint(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in word {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    Some(n)
}

// ---------------------------------------------------------------------------
// Object streams
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Not an object stream, or nothing more to decode.
    Off,
    /// Unfiltered object stream: its data is lexed as is.
    Raw,
    /// FlateDecode object stream.
    Inflate,
}

/// Whether the decoded data of a stream starts like XML: an optional byte
/// order mark, at most `XML_WS_CAP` characters of XML white-space, then `<`.
/// Without a BOM or after a UTF-8 one, in bytes; after a UTF-16 one (XML
/// 1.0 §4.3.3: a UTF-16 document starts with it), in 16-bit units of that
/// byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// This many bytes of a UTF-8 BOM matched.
    Bom(u8),
    /// After the BOM: this many bytes of white-space.
    Ws(u32),
    /// The first byte of a UTF-16 BOM: `FF` (little-endian) or `FE`.
    Bom16 {
        le: bool,
    },
    /// After a UTF-16 BOM: this many units of white-space, and the first byte
    /// of the next unit once read.
    Ws16 {
        le: bool,
        ws: u32,
        first: Option<u8>,
    },
    Xml,
    NotXml,
}

impl Probe {
    fn feed(&mut self, bytes: &[u8]) {
        const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
        for &b in bytes {
            *self = match *self {
                Probe::Bom(k) if b == BOM[k as usize] => {
                    if k == 2 {
                        Probe::Ws(0)
                    } else {
                        Probe::Bom(k + 1)
                    }
                }
                Probe::Bom(0) | Probe::Ws(_) if b == b'<' => Probe::Xml,
                Probe::Bom(0) if matches!(b, b' ' | b'\t' | b'\r' | b'\n') => Probe::Ws(1),
                Probe::Bom(0) if matches!(b, 0xFF | 0xFE) => Probe::Bom16 { le: b == 0xFF },
                Probe::Bom16 { le } if b == if le { 0xFE } else { 0xFF } => Probe::Ws16 {
                    le,
                    ws: 0,
                    first: None,
                },
                Probe::Ws16 {
                    le,
                    ws,
                    first: None,
                } => Probe::Ws16 {
                    le,
                    ws,
                    first: Some(b),
                },
                Probe::Ws16 {
                    le,
                    ws,
                    first: Some(a),
                } => {
                    let unit = if le {
                        u16::from_le_bytes([a, b])
                    } else {
                        u16::from_be_bytes([a, b])
                    };
                    match unit {
                        0x3C => Probe::Xml,
                        0x20 | 0x09 | 0x0D | 0x0A if ws < XML_WS_CAP => Probe::Ws16 {
                            le,
                            ws: ws + 1,
                            first: None,
                        },
                        _ => Probe::NotXml,
                    }
                }
                Probe::Ws(n) if matches!(b, b' ' | b'\t' | b'\r' | b'\n') && n < XML_WS_CAP => {
                    Probe::Ws(n + 1)
                }
                Probe::Xml => Probe::Xml,
                _ => Probe::NotXml,
            };
            if self.decided() {
                return;
            }
        }
    }

    fn decided(self) -> bool {
        matches!(self, Probe::Xml | Probe::NotXml)
    }
}

/// The decoder for the streams whose data is looked at: object streams (their
/// decoded data is lexed) and candidate XML embedded files (only their first
/// decoded bytes are probed).
#[derive(Debug)]
struct ObjStm {
    sink: Sink,
    /// Set while probing an embedded file rather than lexing an object stream.
    probe: Option<Probe>,
    /// Offset of the `stream` keyword.
    at: u64,
    /// Decoded bytes of this stream so far.
    produced: u64,
    /// Inflated bytes of the whole file so far.
    total: u64,
    max_bytes: u64,
    max_total: u64,
    lexer: Lexer,
    /// Where the objects of the object stream start (its header).
    layout: Layout,
    inflater: Option<Decompress>,
    stage: Vec<u8>,
    out: Vec<u8>,
}

impl ObjStm {
    fn new(limits: &Limits) -> Self {
        Self {
            sink: Sink::Off,
            probe: None,
            at: 0,
            produced: 0,
            total: 0,
            max_bytes: limits.max_inflate_bytes,
            max_total: limits.max_inflate_total,
            lexer: Lexer::new(Mode::ObjStm, limits),
            layout: Layout::default(),
            inflater: None,
            stage: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Starts probing the data of a candidate XML embedded file.
    fn begin_probe(&mut self, sink: Sink, at: u64) {
        self.begin(sink, at);
        self.probe = Some(Probe::Bom(0));
    }

    /// Ends a probe: whether the data starts like XML.
    fn take_probe(&mut self) -> bool {
        self.probe.take() == Some(Probe::Xml)
    }

    fn begin(&mut self, sink: Sink, at: u64) {
        self.sink = sink;
        self.probe = None;
        self.at = at;
        self.produced = 0;
        self.lexer.reset(at);
        self.layout.off();
        if sink == Sink::Inflate {
            // Allocated once per scanner, on the first object stream.
            match &mut self.inflater {
                Some(d) => d.reset(true),
                None => self.inflater = Some(Decompress::new(true)),
            }
            if self.out.is_empty() {
                self.stage = Vec::with_capacity(STAGE_SIZE);
                self.out = vec![0; INFLATE_BUF];
            }
            self.stage.clear();
        }
    }

    fn feed(
        &mut self,
        mut bytes: &[u8],
        deferred: &mut Option<Rejection>,
    ) -> Result<(), Rejection> {
        match self.sink {
            Sink::Off => Ok(()),
            Sink::Raw => {
                if let Some(p) = &mut self.probe {
                    p.feed(bytes);
                    if p.decided() {
                        self.sink = Sink::Off;
                    }
                    return Ok(());
                }
                let base = self.produced;
                self.produced += bytes.len() as u64;
                self.layout
                    .lex(&mut self.lexer, bytes, base, self.at, deferred)
            }
            Sink::Inflate => {
                while !bytes.is_empty() && self.sink == Sink::Inflate {
                    let take = (STAGE_SIZE - self.stage.len()).min(bytes.len());
                    self.stage.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.stage.len() == STAGE_SIZE {
                        self.pump(deferred)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The stream ended. Returns whether its data was over there: not in
    /// the middle of a string, nor before the end of its FlateDecode data.
    fn end(&mut self, deferred: &mut Option<Rejection>) -> Result<bool, Rejection> {
        let result = match (self.sink, self.probe.is_some()) {
            (Sink::Off, _) | (Sink::Raw, true) => Ok(()),
            (Sink::Raw, false) => self.lexer.flush(),
            (Sink::Inflate, true) => self.pump(deferred),
            (Sink::Inflate, false) => self.pump(deferred).and_then(|()| self.lexer.flush()),
        };
        if let Some(problem) = self.layout.end() {
            deferred.get_or_insert_with(|| {
                Rejection::malformed(format!("object stream at offset {} {problem}", self.at))
            });
        }
        // A pump that reached the end of the zlib stream turned the sink off.
        let over = match self.sink {
            Sink::Off => true,
            Sink::Raw => !self.lexer.in_string(),
            Sink::Inflate => false,
        };
        self.sink = Sink::Off;
        result.map(|()| over)
    }

    /// Inflates the staged input and lexes the output.
    fn pump(&mut self, deferred: &mut Option<Rejection>) -> Result<(), Rejection> {
        let Some(inflater) = &mut self.inflater else {
            return Ok(());
        };
        let mut input = &self.stage[..];
        if let Some(probe) = &mut self.probe {
            // A probe: at most a few KiB are inflated, outside the inflate
            // limits (it gives no verdict of its own), and corrupt data only
            // means "not XML".
            while !probe.decided() {
                let (in0, out0) = (inflater.total_in(), inflater.total_out());
                let room = self.out.len().min(4096);
                let status =
                    inflater.decompress(input, &mut self.out[..room], FlushDecompress::None);
                let used = (inflater.total_in() - in0) as usize;
                let made = (inflater.total_out() - out0) as usize;
                input = &input[used..];
                probe.feed(&self.out[..made]);
                match status {
                    Err(_) | Ok(Status::StreamEnd) => {
                        if !probe.decided() {
                            *probe = Probe::NotXml;
                        }
                    }
                    Ok(_) if (used == 0 && made == 0) || (input.is_empty() && made < room) => {
                        break;
                    }
                    Ok(_) => {}
                }
            }
            self.stage.clear();
            if probe.decided() {
                self.sink = Sink::Off;
            }
            return Ok(());
        }
        loop {
            let room = (self.out.len() as u64)
                .min(
                    self.max_bytes
                        .saturating_sub(self.produced)
                        .saturating_add(1),
                )
                .min(self.max_total.saturating_sub(self.total).saturating_add(1))
                as usize;
            let (in0, out0) = (inflater.total_in(), inflater.total_out());
            let status = inflater.decompress(input, &mut self.out[..room], FlushDecompress::None);
            let used = (inflater.total_in() - in0) as usize;
            let made = (inflater.total_out() - out0) as usize;
            input = &input[used..];
            if made > 0 {
                let base = self.produced;
                self.produced += made as u64;
                self.total += made as u64;
                if self.produced > self.max_bytes {
                    return Err(Rejection::malformed(format!(
                        "object stream at offset {} inflates past {} bytes",
                        self.at, self.max_bytes
                    )));
                }
                if self.total > self.max_total {
                    return Err(Rejection::malformed(format!(
                        "object streams inflate past {} bytes in total",
                        self.max_total
                    )));
                }
                self.layout
                    .lex(&mut self.lexer, &self.out[..made], base, self.at, deferred)?;
            }
            match status {
                Err(_) => {
                    deferred.get_or_insert_with(|| {
                        Rejection::malformed(format!(
                            "object stream at offset {} has corrupt FlateDecode data",
                            self.at
                        ))
                    });
                    self.sink = Sink::Off;
                    break;
                }
                Ok(Status::StreamEnd) => {
                    // Bytes after the end of the zlib stream are ignored.
                    self.sink = Sink::Off;
                    break;
                }
                Ok(_) => {
                    if (used == 0 && made == 0) || (input.is_empty() && made < room) {
                        break;
                    }
                }
            }
        }
        self.stage.clear();
        if self.sink == Sink::Off {
            // The lexer must still see the end of the decoded data.
            self.lexer.flush()?;
        }
        Ok(())
    }
}

/// Most objects an object stream may declare (`/N`): each takes 4 bytes of
/// [`Layout::starts`] while the stream is read. Writers put 100 to 200
/// objects in one (qpdf, iText, PDFBox).
const MAX_OBJSTM_OBJECTS: u64 = 65_536;

/// Where the objects of an object stream start. A reader finds object `k`
/// at `/First` plus the offset its header gives (the stream's data starts
/// with `/N` pairs of integers: object number, offset), not by reading the
/// data in order; so an object could start inside what the lexer, reading
/// in order, takes for a comment or a string of the object before it, and
/// never be looked at. Hence: the header is read (`/N` pairs of plain
/// integers separated by white space, over before `/First`), and at each
/// object's start the lexer must be between objects ([`Lexer::between_objects`]).
/// Otherwise the object stream is `malformed_image` (deferred: an
/// encrypted file's object streams are not readable).
#[derive(Debug, Default)]
struct Layout {
    state: LayoutState,
    /// The objects' offsets (from `/First`), sorted once the header is read.
    starts: Vec<u32>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum LayoutState {
    /// Not an object stream with a direct `/N` and `/First`, or given up.
    #[default]
    Off,
    /// Reading the header: `got` of its `want` integers, the one being read.
    Header {
        first: u64,
        want: u64,
        got: u64,
        cur: Option<u64>,
    },
    /// Reading the objects: `starts[next..]` are still to come.
    Objects { first: u64, next: usize },
}

impl Layout {
    fn off(&mut self) {
        self.state = LayoutState::Off;
        self.starts.clear();
    }

    /// An object stream with `n` objects, the first at `first`.
    fn expect(&mut self, n: u64, first: u64) -> Result<(), String> {
        if n > MAX_OBJSTM_OBJECTS {
            return Err(format!(
                "declares {n} objects (/N), more than the {MAX_OBJSTM_OBJECTS} the scanner follows"
            ));
        }
        self.starts.clear();
        self.state = LayoutState::Header {
            first,
            want: 2 * n,
            got: 0,
            cur: None,
        };
        if n == 0 {
            self.state = LayoutState::Objects { first, next: 0 };
        }
        Ok(())
    }

    /// Lexes `bytes` (decoded data from offset `base`), checking the lexer
    /// at each object's start. A problem with the layout is deferred, and
    /// the data is lexed in order all the same.
    fn lex(
        &mut self,
        lexer: &mut Lexer,
        mut bytes: &[u8],
        mut base: u64,
        at: u64,
        deferred: &mut Option<Rejection>,
    ) -> Result<(), Rejection> {
        loop {
            match self.state {
                LayoutState::Off => return lexer.lex(bytes, base).map(|_| ()),
                LayoutState::Header { .. } => match self.header(bytes, base) {
                    Ok(None) => return lexer.lex(bytes, base).map(|_| ()),
                    Ok(Some(k)) => {
                        // The header is read; what follows is checked as
                        // objects (the byte at `k` may start one).
                        lexer.lex(&bytes[..k], base)?;
                        bytes = &bytes[k..];
                        base += k as u64;
                    }
                    Err(problem) => {
                        self.off();
                        deferred.get_or_insert_with(|| {
                            Rejection::malformed(format!("object stream at offset {at} {problem}"))
                        });
                    }
                },
                LayoutState::Objects { first, next } => {
                    let Some(&off) = self.starts.get(next) else {
                        self.off();
                        continue;
                    };
                    // (A `/First` of 19 digits puts every object past the end.)
                    let start = first.saturating_add(u64::from(off));
                    let end = base + bytes.len() as u64;
                    if start >= end {
                        return lexer.lex(bytes, base).map(|_| ());
                    }
                    let k = (start - base) as usize;
                    lexer.lex(&bytes[..k], base)?;
                    bytes = &bytes[k..];
                    base = start;
                    if lexer.between_objects(bytes[0]) {
                        self.state = LayoutState::Objects {
                            first,
                            next: next + 1,
                        };
                    } else {
                        self.off();
                        deferred.get_or_insert_with(|| {
                            Rejection::malformed(format!(
                                "object stream at offset {at}: an object starts at offset {start} of its decoded data, inside a string, a comment, a token or an unclosed dictionary or array of the object before it (a reader would read there what was not inspected)"
                            ))
                        });
                    }
                }
            }
        }
    }

    /// Reads header bytes: `Ok(Some(k))` when the header ended at `bytes[k]`
    /// (the byte after its last integer), `Ok(None)` when it goes on.
    fn header(&mut self, bytes: &[u8], base: u64) -> Result<Option<usize>, String> {
        let LayoutState::Header {
            first,
            want,
            mut got,
            mut cur,
        } = self.state
        else {
            return Ok(None);
        };
        const PAIRS: &str = "has a header that is not /N pairs of integers before /First";
        for (i, &b) in bytes.iter().enumerate() {
            let pos = base + i as u64;
            if b.is_ascii_digit() {
                if pos >= first {
                    return Err(PAIRS.to_owned());
                }
                let digit = u64::from(b - b'0');
                cur = Some(
                    cur.unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(digit))
                        .ok_or_else(|| PAIRS.to_owned())?,
                );
                continue;
            }
            if let Some(v) = cur.take() {
                got += 1;
                if got % 2 == 0 {
                    // An offset, counted from `/First`.
                    let off = u32::try_from(v)
                        .map_err(|_| format!("has an object offset ({v}) past any stream's end"))?;
                    self.starts.push(off);
                }
                if got == want {
                    self.starts.sort_unstable();
                    self.starts.dedup();
                    self.state = LayoutState::Objects { first, next: 0 };
                    return Ok(Some(i));
                }
            }
            if !is_ws(b) || pos >= first {
                return Err(PAIRS.to_owned());
            }
        }
        self.state = LayoutState::Header {
            first,
            want,
            got,
            cur,
        };
        Ok(None)
    }

    /// The object stream's data ended: a problem, if its header did not.
    fn end(&mut self) -> Option<&'static str> {
        let unfinished = matches!(self.state, LayoutState::Header { .. });
        self.off();
        unfinished.then_some("ends before its header's /N pairs of integers do")
    }
}

// ---------------------------------------------------------------------------
// Stream data
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Right after the `stream` keyword.
    Eol,
    /// After a CR there.
    EolCr,
    /// Skipping `/Length` bytes; this many remain.
    Counted(u64),
    /// After the counted bytes: optional white-space, then `endstream`; this
    /// many bytes of it matched.
    Verify(usize),
    /// Looking for `endstream`. An object stream sink gets the data 8 bytes
    /// late (see `skip_stream`); entered with an active sink only at the start
    /// of the data, with nothing carried.
    Search,
}

#[derive(Debug)]
struct StreamSkip {
    kw_at: u64,
    /// The number of its object (`N G obj`), if known.
    obj: Option<u64>,
    /// Its generation is 0.
    gen0: bool,
    /// Its dictionary says `/Type /EmbeddedFile`.
    embedded: bool,
    /// Its first decoded bytes are probed for XML.
    probing: bool,
    /// The stream is an object stream.
    objstm: bool,
    length: Option<u64>,
    phase: Phase,
    /// The last (up to 8) bytes of the stream, for matches across chunks.
    carry: [u8; 8],
    carry_len: usize,
    /// An `endstream` inside the `/Length`-counted data.
    early_end: Option<u64>,
    /// An object header in the counted data past `early_end`: hidden, if the
    /// data checks out (else the `/Length` runs past, refused as such).
    hidden_late: Option<u64>,
    encrypt: EncryptWatch,
    /// Object headers hidden in the data (Reject policy).
    headers: HeaderWatch,
}

impl StreamSkip {
    fn push_carry(&mut self, bytes: &[u8]) {
        if bytes.len() >= 8 {
            self.carry.copy_from_slice(&bytes[bytes.len() - 8..]);
            self.carry_len = 8;
        } else {
            // A few bytes (one at a time after the data): shifted in, with
            // moves of a fixed size rather than a call to `memmove`.
            for &b in bytes {
                if self.carry_len < 8 {
                    self.carry[self.carry_len] = b;
                    self.carry_len += 1;
                } else {
                    self.carry.copy_within(1.., 0);
                    self.carry[7] = b;
                }
            }
        }
    }

    /// The end (exclusive, in `bytes`) of the first `endstream` that ends in
    /// `bytes`, including one that started in the carried bytes.
    fn find_end(&self, finder: &memmem::Finder<'_>, bytes: &[u8]) -> Option<usize> {
        let k = self.carry_len;
        let m = bytes.len().min(8);
        if k > 0 && m > 0 {
            let mut tmp = [0u8; 16];
            tmp[..k].copy_from_slice(&self.carry[..k]);
            tmp[k..k + m].copy_from_slice(&bytes[..m]);
            if let Some(p) = finder.find(&tmp[..k + m]) {
                return Some(p + ENDSTREAM.len() - k);
            }
        }
        finder.find(bytes).map(|p| p + ENDSTREAM.len())
    }
}

/// Follows a stream's data, chunk by chunk, for an object header (`N G obj`:
/// digits, white space, digits, white space or none (`5 0obj` lexes as the
/// same three tokens), `obj`, then a delimiter or white space). A comment
/// (`%` to the end of the line, CR or LF) is white space to a reader's
/// tokenizer, and `%` is a delimiter: `5 %x\n0 %y\nobj` and `5 0%\nobj` are
/// headers too. A cross-reference table may point a reader at such a header, and
/// a reader rebuilding a damaged table finds it by searching the file: the
/// object would be one the scanner never lexed. `obj` is searched for
/// (memmem); the digits and white space before it are checked backwards
/// (back over a comment's line to its `%`: [`header_mask_at`]), and what
/// the data so far ends with is carried from chunk to chunk, so that the
/// verdict is the same however the data is cut.
#[derive(Debug, Clone, Copy, Default)]
struct HeaderWatch {
    /// Where the data so far may be in a header ([`header_step`]).
    mask: u8,
    /// The data ends with this many bytes of `obj` (1 to 3), right after a
    /// header's second number or the white space after it.
    kw: u8,
}

/// In the first number, the white space after it, the second number, the
/// white space after that (`obj` may follow), in a comment after the first
/// number and in one after the second (an end of line turns these two into
/// the white space after that number).
const H_N1: u8 = 1;
const H_W1: u8 = 2;
const H_N2: u8 = 4;
const H_W2: u8 = 8;
const H_C1: u8 = 16;
const H_C2: u8 = 32;
const H_C: u8 = H_C1 | H_C2;

/// The header states after byte `b`: any digit may start a first number
/// (inside a comment too: a reader may be pointed anywhere).
/// A number is taken as readers lex one: digits, with a sign or a point
/// (`5 -0 obj`, `5 +00 obj` and `5.0 0 obj` name object 5 for some).
fn header_step(mask: u8, b: u8) -> u8 {
    // A comment goes on, whatever the byte, up to an end of line.
    let comment = mask & H_C;
    let after1 = mask & (H_N1 | H_W1) != 0;
    let after2 = mask & (H_N2 | H_W2) != 0;
    if is_number_byte(b) {
        H_N1 | comment | if mask & (H_W1 | H_N2) != 0 { H_N2 } else { 0 }
    } else if b == b'\n' || b == b'\r' {
        // The end of a comment: white space after its number.
        let w1 = if after1 || comment & H_C1 != 0 {
            H_W1
        } else {
            0
        };
        let w2 = if after2 || comment & H_C2 != 0 {
            H_W2
        } else {
            0
        };
        w1 | w2
    } else if is_ws(b) {
        comment | (if after1 { H_W1 } else { 0 }) | (if after2 { H_W2 } else { 0 })
    } else if b == b'%' {
        comment | (if after1 { H_C1 } else { 0 }) | (if after2 { H_C2 } else { 0 })
    } else {
        comment
    }
}

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
}

fn is_header_byte(b: u8) -> bool {
    is_number_byte(b) || is_ws(b)
}

/// The header states before `data[p]`, given `lo_mask`, those before
/// `data[lo]` (`lo <= p`; nothing before `lo` is read). They are stepped
/// through from where a header may begin: back from `p` over digits and
/// white space, to a byte that is neither and so ends any header, unless
/// it is inside a comment ([`header_start`]).
#[inline(always)]
fn header_mask_at(data: &[u8], lo: usize, lo_mask: u8, p: usize) -> u8 {
    let mut start = p;
    while start > lo && is_header_byte(data[start - 1]) {
        start -= 1;
    }
    let mut mask = lo_mask;
    if start > lo {
        (start, mask) = header_start(data, lo, lo_mask, start);
    }
    for &b in &data[start..p] {
        mask = header_step(mask, b);
    }
    mask
}

/// Where [`header_mask_at`] steps from, and the states there, when
/// `data[start - 1]` (`start > lo`) is neither a digit nor white space. It
/// ends any header (states 0 after it) unless a comment after a number
/// holds it: one begun on its line by a `%` right after a digit or white
/// space (or at `lo`, after the states carried), or, if its line goes back
/// to `lo`, one begun before (`lo_mask`). From the first such `%`, the walk
/// goes on back.
///
/// (Out of line: it runs for each `obj` found and at each chunk's end, and
/// mostly finds no such `%` on the line: most data has no comment.)
#[inline(never)]
fn header_start(data: &[u8], lo: usize, lo_mask: u8, mut start: usize) -> (usize, u8) {
    loop {
        let mut first = None;
        let mut end = start;
        let line_from_lo = loop {
            match memchr::memrchr3(b'%', b'\n', b'\r', &data[lo..end]) {
                Some(i) if data[lo + i] == b'%' => {
                    end = lo + i;
                    // Right after a number or white space?
                    let after = if end > lo {
                        is_header_byte(data[end - 1])
                    } else {
                        lo_mask & !H_C != 0
                    };
                    if after {
                        first = Some(end);
                    }
                }
                Some(_) => break false,
                None => break true,
            }
        };
        match first {
            Some(q) => {
                start = q;
                while start > lo && is_header_byte(data[start - 1]) {
                    start -= 1;
                }
                if start == lo {
                    return (lo, lo_mask);
                }
            }
            None if line_from_lo && lo_mask & H_C != 0 => return (lo, lo_mask),
            None => return (start, 0),
        }
    }
}

impl HeaderWatch {
    /// Follows `data`, the stream's next bytes. The offset in `data` of the
    /// `obj` of a header, when one is complete (negative: it began before).
    fn feed(&mut self, obj: &memmem::Finder<'_>, data: &[u8]) -> Option<isize> {
        let mut from = 0;
        if self.kw > 0 {
            // An `obj` begun in the earlier data.
            while self.kw < 3 && from < data.len() && data[from] == b"obj"[self.kw as usize] {
                self.kw += 1;
                from += 1;
            }
            if from == data.len() {
                // Still open: the rest of it, or its delimiter, comes later.
                return None;
            }
            if self.kw == 3 && is_delim_or_ws(data[from]) {
                return Some(from as isize - 3);
            }
            // Not a header after all: what follows starts afresh, but for a
            // comment that the bytes of `obj` are in (`self.mask`).
            self.kw = 0;
        }
        let len = data.len();
        // Where the states are known: at `from` (those carried), then at
        // each `obj` found, where the next walk back stops (the walks do not
        // overlap: linear time, however many `obj` and comments).
        let (mut lo, mut lo_mask) = (from, self.mask);
        for p in obj.find_iter(&data[from..]).map(|p| p + from) {
            let mask = header_mask_at(data, lo, lo_mask, p);
            (lo, lo_mask) = (p, mask);
            if mask & (H_N2 | H_W2) == 0 {
                continue;
            }
            match data.get(p + 3) {
                Some(&b) if is_delim_or_ws(b) => return Some(p as isize),
                Some(_) => {}
                None => {
                    // Its delimiter comes later. After `obj`, only a
                    // comment that it is in goes on.
                    self.kw = 3;
                    self.mask = mask & H_C;
                    return None;
                }
            }
        }
        // What the data ends with, for the next chunk: an `o` or `ob` at
        // the very end, after a header, may begin its `obj`.
        let tail = &data[from..];
        let k = if tail.ends_with(b"ob") {
            2
        } else {
            usize::from(tail.ends_with(b"o"))
        };
        let mut mask = header_mask_at(data, lo, lo_mask, len - k);
        if k > 0 && mask & (H_N2 | H_W2) != 0 {
            self.kw = k as u8;
        }
        for &b in &data[len - k..] {
            mask = header_step(mask, b);
        }
        self.mask = mask;
        None
    }

    /// The stream's data ended (an end of line and `endstream` follow): an
    /// `obj` right at its end is a header.
    fn end(&self) -> bool {
        self.kw == 3
    }

    /// Nothing carried from the data before: what comes next starts afresh.
    fn idle(&self) -> bool {
        self.kw == 0 && self.mask == 0
    }

    /// Whether `piece`, fed with nothing carried and holding no `j` (no
    /// `obj`), may leave something to carry: it ends in a digit, white
    /// space, `o` or `ob` (`6 0 `, `6 0 o`), or in a comment (`%` on its
    /// last line: `6 0 %x`).
    #[inline(always)]
    fn may_carry(piece: &[u8]) -> bool {
        piece
            .last()
            .is_some_and(|&b| is_header_byte(b) || b == b'o' || b == b'b')
            || memchr::memrchr3(b'%', b'\n', b'\r', piece).is_some_and(|i| piece[i] == b'%')
    }
}

/// Where a hidden header found by [`HeaderWatch::feed`] at `at` ends in the
/// data fed: after `obj` and the byte that closes it.
fn header_end(at: isize) -> usize {
    usize::try_from(at + 4).unwrap_or(0)
}

fn is_delim_or_ws(b: u8) -> bool {
    is_ws(b) || b"()<>[]{}/%".contains(&b)
}

/// Watches bytes the lexer does not read as tokens (stream data, string
/// and comment bodies) for the name `/Encrypt` (`#xx` escapes decoded) and
/// a delimiter after it: a cross-reference section written there, which a
/// reader reaches through `startxref` or `/Prev` (the scanner follows
/// neither), would make it decrypt the file.
#[derive(Debug, Clone, Copy, Default)]
struct EncryptWatch {
    /// 0: no candidate; k (1 to 8): after a `/` and k - 1 letters of it.
    pos: u8,
    /// 0: no escape; 1: after `#`; 2: after `#` and one hex digit.
    esc: u8,
    hi: u8,
}

impl EncryptWatch {
    const NAME: &'static [u8; 7] = b"Encrypt";

    /// [`EncryptWatch::feed`] for stream data, which may be long: only a
    /// name that starts `/E` or `/#` can be `/Encrypt` (`/#45ncrypt`), so
    /// those two are searched for with `finders`, and only from them on is
    /// the name decoded.
    fn feed_data(&mut self, finders: &[memmem::Finder<'static>; 2], data: &[u8]) -> bool {
        let mut i = 0;
        loop {
            if self.pos != 0 {
                // A candidate: decoded byte by byte until it fails (a few
                // bytes) or the data ends.
                while i < data.len() && self.pos != 0 {
                    if self.feed(&data[i..=i]) {
                        return true;
                    }
                    i += 1;
                }
                if self.pos != 0 {
                    return false;
                }
                continue;
            }
            let rest = &data[i..];
            let next = match (finders[0].find(rest), finders[1].find(rest)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match next {
                Some(p) => {
                    i += p + 1;
                    self.pos = 1;
                    self.esc = 0;
                }
                None => {
                    if data.last() == Some(&b'/') {
                        self.pos = 1;
                        self.esc = 0;
                    }
                    return false;
                }
            }
        }
    }

    /// Whether `/Encrypt` and its delimiter were seen in `data` (the watch
    /// starts afresh after).
    fn feed(&mut self, data: &[u8]) -> bool {
        let mut i = 0;
        while i < data.len() {
            if self.pos == 0 {
                match memchr::memchr(b'/', &data[i..]) {
                    Some(p) => {
                        i += p + 1;
                        // Most names start with another letter: skipped here.
                        if matches!(data.get(i), Some(b'E' | b'#') | None) {
                            self.pos = 1;
                            self.esc = 0;
                        }
                        continue;
                    }
                    None => return false,
                }
            }
            let b = data[i];
            i += 1;
            if self.esc == 0 && self.pos == 8 {
                if is_delim_or_ws(b) {
                    *self = Self::default();
                    return true;
                }
                self.restart(b);
                continue;
            }
            let c = match self.esc {
                0 if b == b'#' => {
                    self.esc = 1;
                    continue;
                }
                0 => b,
                1 => match hex_val(b) {
                    Some(v) => {
                        self.hi = v;
                        self.esc = 2;
                        continue;
                    }
                    None => {
                        self.restart(b);
                        continue;
                    }
                },
                _ => match hex_val(b) {
                    Some(v) => {
                        self.esc = 0;
                        self.hi << 4 | v
                    }
                    None => {
                        self.restart(b);
                        continue;
                    }
                },
            };
            if self.pos < 8 && c == Self::NAME[usize::from(self.pos - 1)] {
                self.pos += 1;
            } else if self.esc == 0 && b == c {
                self.restart(b);
            } else {
                *self = Self::default();
            }
        }
        false
    }

    /// The candidate failed at raw byte `b`, which may start the next one.
    fn restart(&mut self, b: u8) {
        *self = Self::default();
        if b == b'/' {
            self.pos = 1;
        }
    }

    /// The data ended right after `/Encrypt` (its delimiter comes next).
    fn pending(&self) -> bool {
        self.pos == 8 && self.esc == 0
    }
}

/// An `/Encrypt` found where the lexer does not read tokens, at `at` (the
/// stream's `stream` keyword, or the string or comment).
fn hidden_encrypt(at: u64) -> Rejection {
    Rejection::new(
        RejectCode::PdfEncrypted,
        format!(
            "PDF may be encrypted: /Encrypt inside the stream data, string or comment at offset {at}, where a cross-reference section the scanner does not read can put it"
        ),
    )
}

fn hidden(kw_at: u64, at: u64) -> Rejection {
    Rejection::new(
        RejectCode::PdfActiveContent,
        format!(
            "PDF hides an object definition (N G obj) inside the data of the stream at offset {kw_at} (at offset {at}): a reader can be pointed at it, the inspection cannot see it"
        ),
    )
}

// ---------------------------------------------------------------------------
// Embedded files
// ---------------------------------------------------------------------------

/// The stream objects seen, as far as embedded files go (Reject policy).
///
/// An embedded file is allowed only when the last definition of every object
/// an `/EF` dictionary references is an approved XML stream: `/Subtype`
/// `text/xml` or `application/xml` (`/Type` optional), no filter or
/// FlateDecode without parameters, and decoded data that starts with `<`
/// (after an optional UTF-8 BOM and white-space). The `/EF` dictionaries may
/// come before or after the streams, so both sides are remembered: the approved
/// object numbers (at most `APPROVED_CAP`) and every object number whose last
/// stream definition so far is unapproved (one bit each below
/// `UNAPPROVED_BITS`; one flag for all the others, which a later approved
/// definition does not clear; and one for streams whose `N G obj` was not
/// seen). A writer may leave an object's old definition in the file and
/// append the new one (the `factur-x` library does, for the XMP metadata
/// object it turns into the invoice), and a reader takes the one the
/// cross-reference table points to, normally the last. Only a definition of
/// generation 0 supersedes, and none once a stream of another generation was
/// not approved: a reference names a generation, and `7 1 obj` must not
/// stand in for the `7 0 obj` a reader takes. A `/Type /EmbeddedFile` stream
/// that is not approved is refused wherever it is.
#[derive(Debug)]
struct Files {
    approved: [u64; APPROVED_CAP],
    approved_len: usize,
    /// Bitmap, allocated on the first stream object.
    unapproved: Vec<u64>,
    unapproved_big: bool,
    unapproved_anon: bool,
    /// A stream object of a generation other than 0 was not approved: the
    /// last definition of a number may not be the one a reference names.
    no_superseding: bool,
    /// A `/Type /EmbeddedFile` stream that is not approved: its offset.
    bad_stream: Option<u64>,
}

impl Files {
    fn new() -> Self {
        Self {
            approved: [0; APPROVED_CAP],
            approved_len: 0,
            unapproved: Vec::new(),
            unapproved_big: false,
            unapproved_anon: false,
            no_superseding: false,
            bad_stream: None,
        }
    }

    /// A stream object ended.
    fn stream(&mut self, obj: Option<u64>, gen0: bool, approved: bool) {
        if !gen0 && !approved {
            // Another generation of an object number: readers tell them
            // apart by the reference, the scanner does not. From now on no
            // definition supersedes another.
            self.no_superseding = true;
        }
        match obj {
            Some(n) if approved => {
                if !self.approved[..self.approved_len].contains(&n)
                    && let Some(slot) = self.approved.get_mut(self.approved_len)
                {
                    *slot = n;
                    self.approved_len += 1;
                }
                if self.approved[..self.approved_len].contains(&n) {
                    if gen0 && !self.no_superseding {
                        // This definition supersedes the earlier ones.
                        self.reapprove(n);
                    }
                } else {
                    // Past the cap the stream counts as not approved.
                    self.unapprove(n);
                }
            }
            Some(n) => self.unapprove(n),
            None => self.unapproved_anon = true,
        }
    }

    fn unapprove(&mut self, n: u64) {
        if n >= UNAPPROVED_BITS {
            self.unapproved_big = true;
            return;
        }
        if self.unapproved.is_empty() {
            self.unapproved = vec![0; (UNAPPROVED_BITS / 64) as usize];
        }
        self.unapproved[(n / 64) as usize] |= 1 << (n % 64);
    }

    /// A later definition of `n` is approved: an earlier one (not a `/Type
    /// /EmbeddedFile` stream: those are refused wherever they are) no longer
    /// counts. Above `UNAPPROVED_BITS` the flag is shared and stays.
    fn reapprove(&mut self, n: u64) {
        if let Some(word) = self.unapproved.get_mut((n / 64) as usize)
            && n < UNAPPROVED_BITS
        {
            *word &= !(1 << (n % 64));
        }
    }

    /// Whether object `n` is an approved XML embedded file, in its last
    /// definition.
    fn ok(&self, n: u64) -> bool {
        let unapproved = if n >= UNAPPROVED_BITS {
            self.unapproved_big
        } else {
            self.unapproved
                .get((n / 64) as usize)
                .is_some_and(|w| w & (1 << (n % 64)) != 0)
        };
        self.approved[..self.approved_len].contains(&n) && !unapproved && !self.unapproved_anon
    }

    /// The verdict at the end of the file, given what the lexers saw.
    fn verdict(&self, ef: &EfLog) -> Result<(), Rejection> {
        let active = |detail: String| Err(Rejection::new(RejectCode::PdfActiveContent, detail));
        if let Some(at) = self.bad_stream {
            return active(format!(
                "PDF contains an embedded file (/EmbeddedFile stream at offset {at}) that is not XML data"
            ));
        }
        if let Some(o) = ef.overflow {
            return active(format!(
                "PDF contains more than {EF_CAP} embedded files (/EF {})",
                where_str(o.objstm, o.at)
            ));
        }
        if ef.len == 0 {
            if let Some(seen) = ef.seen {
                return active(format!(
                    "PDF contains /{} {} and no embedded file that is XML data",
                    seen.name,
                    where_str(seen.objstm, seen.at)
                ));
            }
            return Ok(());
        }
        match ef.refs[..ef.len].iter().find(|&&n| !self.ok(n)) {
            Some(n) => active(format!(
                "PDF contains an embedded file (object {n}, referenced from /EF) that is not XML data"
            )),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Scanner
// ---------------------------------------------------------------------------

/// The streaming PDF scanner: [`Pdf`] under the shared [`Sticky`] contract.
/// See the module documentation for what it checks.
pub type PdfScanner = Sticky<Pdf>;

impl PdfScanner {
    pub fn new(limits: &Limits) -> Self {
        Sticky::wrap(Pdf::new(limits))
    }
}

impl Scan for Pdf {
    fn run(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        self.feed_inner(chunk)
    }

    fn end(&mut self) -> Result<(), Rejection> {
        self.finish_inner()
    }
}

/// The PDF lexer's state behind [`PdfScanner`].
#[derive(Debug)]
pub struct Pdf {
    /// Bytes fed so far.
    offset: u64,
    /// The first bytes, while the header is not checked yet.
    head: [u8; HEADER_BUF],
    head_len: usize,
    /// The header checked out; the lexer has the bytes so far.
    header_done: bool,
    lexer: Lexer,
    stream: Option<StreamSkip>,
    objstm: ObjStm,
    endstream: memmem::Finder<'static>,
    /// `obj`, searched for in stream data ([`HeaderWatch`]).
    obj: memmem::Finder<'static>,
    /// The last (up to 5) bytes fed.
    raw_tail: [u8; 5],
    raw_len: usize,
    /// The last (up to 5) bytes ending at the last non-white-space byte.
    sig_tail: [u8; 5],
    sig_len: usize,
    /// A malformed verdict held back until the end (see the module docs).
    deferred: Option<Rejection>,
    /// `/Encrypt` in stream data ([`EncryptWatch`]): the stream's offset.
    encrypt_hidden: Option<u64>,
    /// `/E` and `/#`, where `/Encrypt` may start.
    encrypt_finders: [memmem::Finder<'static>; 2],
    reject_active: bool,
    files: Files,
}

impl Pdf {
    fn new(limits: &Limits) -> Self {
        Self {
            offset: 0,
            head: [0; HEADER_BUF],
            head_len: 0,
            header_done: false,
            lexer: Lexer::new(Mode::File, limits),
            stream: None,
            objstm: ObjStm::new(limits),
            endstream: memmem::Finder::new(ENDSTREAM),
            obj: memmem::Finder::new(b"obj"),
            raw_tail: [0; 5],
            raw_len: 0,
            sig_tail: [0; 5],
            sig_len: 0,
            deferred: None,
            encrypt_hidden: None,
            encrypt_finders: [memmem::Finder::new(b"/E"), memmem::Finder::new(b"/#")],
            reject_active: limits.pdf_active_content == ActiveContentPolicy::Reject,
            files: Files::new(),
        }
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        self.track_tail(chunk);
        let base = self.offset;
        self.offset += chunk.len() as u64;
        if !self.header_done {
            let take = (HEADER_BUF - self.head_len).min(chunk.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&chunk[..take]);
            self.head_len += take;
            if !header_state(&self.head[..self.head_len])? {
                return Ok(());
            }
            self.header_done = true;
            let head = self.head;
            self.body(&head, 0)?;
            return self.body(&chunk[take..], base + take as u64);
        }
        self.body(chunk, base)
    }

    fn finish_inner(&mut self) -> Result<(), Rejection> {
        if !self.header_done {
            let head = &self.head[..self.head_len];
            if !head.starts_with(MARKER) {
                return Err(no_header());
            }
            if let Some(v) = head.get(5..8)
                && !version_ok(v)
            {
                return Err(bad_version(v));
            }
            return Err(no_eof());
        }
        self.lexer.flush()?;
        if self.sig_tail[..self.sig_len] != *b"%%EOF" {
            return Err(no_eof());
        }
        if let Some(s) = &self.stream {
            return Err(Rejection::malformed(match s.length {
                Some(len) if matches!(s.phase, Phase::Counted(_)) => format!(
                    "stream at offset {}: /Length {len} runs past the end of the file",
                    s.kw_at
                ),
                _ => format!("stream at offset {} has no endstream", s.kw_at),
            }));
        }
        if self.lexer.in_string() {
            return Err(Rejection::malformed(format!(
                "string at offset {} is not terminated",
                self.lexer.tok_at
            )));
        }
        if !self.lexer.saw_obj {
            return Err(Rejection::malformed(
                "not a PDF: it holds no object (N G obj ... endobj)",
            ));
        }
        if !self.lexer.saw_startxref {
            return Err(Rejection::malformed(
                "not a PDF: it has no startxref (the offset of its cross-reference section)",
            ));
        }
        let encrypt = match (self.encrypt_hidden, self.lexer.encrypt_hidden) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = encrypt {
            return Err(hidden_encrypt(at));
        }
        if let Some(hidden) = self.lexer.hidden_in_body.take() {
            return Err(hidden);
        }
        if let Some(d) = self.deferred.take() {
            return Err(d);
        }
        if self.reject_active {
            return self.files.verdict(&self.lexer.ef);
        }
        Ok(())
    }

    /// Keeps the last five significant bytes for the `%%EOF` check.
    fn track_tail(&mut self, chunk: &[u8]) {
        if let Some(j) = chunk.iter().rposition(|&b| !is_ws(b)) {
            let (t, l) = last_n(&self.raw_tail[..self.raw_len], &chunk[..=j]);
            self.sig_tail = t;
            self.sig_len = l;
        }
        let (t, l) = last_n(&self.raw_tail[..self.raw_len], chunk);
        self.raw_tail = t;
        self.raw_len = l;
    }

    fn body(&mut self, data: &[u8], base: u64) -> Result<(), Rejection> {
        let mut i = 0;
        while i < data.len() {
            if self.stream.is_some() {
                i += self.skip_stream(&data[i..], base + i as u64)?;
            } else {
                match self.lexer.lex(&data[i..], base + i as u64)? {
                    Step::Done => break,
                    Step::Stream { consumed, start } => {
                        i += consumed;
                        self.start_stream(start)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn start_stream(&mut self, start: StreamStart) -> Result<(), Rejection> {
        let StreamStart {
            kw_at,
            dict,
            obj,
            gen0,
        } = start;
        let d = dict.unwrap_or(DictInfo::new(false));
        if let Some(at) = d.encrypt_at {
            // Only a cross-reference stream has `/Encrypt`, however its `/Type`
            // is written (or left out).
            return Err(Rejection::new(
                RejectCode::PdfEncrypted,
                format!("PDF is encrypted (/Encrypt in stream dictionary at offset {at})"),
            ));
        }
        // What a reader would take for an object stream: qpdf reads one through
        // `/N` and `/First`, whatever `/Type` says.
        let objstm = dict.is_some()
            && (matches!(d.ty, DictType::ObjStm | DictType::Unresolved)
                || (d.n != IntEntry::Absent && d.first != IntEntry::Absent));
        let sink = match (d.decode_parms, d.filter) {
            (false, FilterKind::None) => Some(Sink::Raw),
            (false, FilterKind::Flate) => Some(Sink::Inflate),
            _ => None,
        };
        let embedded = d.ty == DictType::EmbeddedFile;
        let mut probing = false;
        if objstm {
            match sink {
                Some(sink) => {
                    self.objstm.begin(sink, kw_at);
                    // Where its objects start: a reader finds each through
                    // the header, not by reading the data in order.
                    match (d.n, d.first) {
                        (IntEntry::Int(n), IntEntry::Int(first)) => {
                            if let Err(problem) = self.objstm.layout.expect(n, first) {
                                self.deferred.get_or_insert_with(|| {
                                    Rejection::malformed(format!(
                                        "object stream at offset {kw_at} {problem}"
                                    ))
                                });
                            }
                        }
                        // Without both, no reader reads it as an object
                        // stream: its data is lexed in order all the same.
                        (IntEntry::Absent, _) | (_, IntEntry::Absent) => {}
                        _ => {
                            self.deferred.get_or_insert_with(|| {
                                Rejection::malformed(format!(
                                    "object stream at offset {kw_at} has an /N or /First that is no direct integer: where its objects start cannot be told"
                                ))
                            });
                        }
                    }
                }
                None => {
                    let problem = if d.decode_parms {
                        "has /DecodeParms (predictors are not supported)"
                    } else {
                        "uses a filter other than /FlateDecode"
                    };
                    self.deferred.get_or_insert_with(|| {
                        Rejection::malformed(format!("object stream at offset {kw_at} {problem}"))
                    });
                }
            }
        } else if self.reject_active
            && d.subtype_xml
            && let Some(sink) = sink
        {
            // `/Type /EmbeddedFile` is optional (ISO 32000): an embedded
            // file is approved on its `/Subtype` and its bytes alone.
            self.objstm.begin_probe(sink, kw_at);
            probing = true;
        }
        self.stream = Some(StreamSkip {
            kw_at,
            obj,
            gen0,
            embedded,
            probing,
            objstm,
            length: d.length,
            phase: Phase::Eol,
            carry: [0; 8],
            carry_len: 0,
            early_end: None,
            hidden_late: None,
            encrypt: EncryptWatch::default(),
            headers: HeaderWatch::default(),
        });
        Ok(())
    }

    /// Skips stream data; returns how many bytes of `data` were consumed. Ends
    /// the stream when `endstream` is reached.
    fn skip_stream(&mut self, data: &[u8], base: u64) -> Result<usize, Rejection> {
        let Some(s) = &mut self.stream else {
            return Ok(0);
        };
        let n = data.len();
        let mut i = 0;
        while i < n {
            match s.phase {
                Phase::Eol | Phase::EolCr => {
                    let b = data[i];
                    if s.phase == Phase::Eol && b == b'\r' {
                        i += 1;
                        s.phase = Phase::EolCr;
                        continue;
                    }
                    if b == b'\n' {
                        i += 1;
                    }
                    s.phase = match s.length {
                        Some(0) => Phase::Verify(0),
                        Some(len) => Phase::Counted(len),
                        None => Phase::Search,
                    };
                }
                Phase::Counted(left) => {
                    let take = left.min((n - i) as u64) as usize;
                    let bytes = &data[i..i + take];
                    let before_early_end = s.early_end.is_none();
                    let mut swallowed = None;
                    if before_early_end && let Some(end) = s.find_end(&self.endstream, bytes) {
                        let e = base + (i + end) as u64 - ENDSTREAM.len() as u64;
                        s.early_end = Some(e);
                        // After a stream whose end was found by searching,
                        // this may be that stream's real end, swallowed by a
                        // `/Length` quoted in its data. Refused below, once
                        // the bytes before it have been checked, as a
                        // chunking cut right before it would have them: what
                        // comes first decides, however cut.
                        swallowed = self.lexer.guard_from.map(|from| {
                            Rejection::malformed(format!(
                                "an endstream at offset {e} inside the data of the stream at offset {} follows the stream at offset {from}, whose /Length is no number that checks out: where that stream really ends cannot be told",
                                s.kw_at
                            ))
                        });
                    }
                    // Up to an `endstream` inside the counted bytes: past it
                    // they may be the next objects (a `/Length` too long,
                    // refused below) rather than this stream's data; a
                    // header there is refused once the data checks out.
                    let own = match s.early_end {
                        _ if !before_early_end => 0,
                        Some(e) => (e.saturating_sub(base + i as u64) as usize).min(take),
                        None => take,
                    };
                    if self.reject_active {
                        let mut at = s.headers.feed(&self.obj, bytes);
                        if at.is_none() && left == take as u64 && s.headers.end() {
                            // The data ends with `obj`: its end of line follows.
                            at = Some(take as isize - 3);
                        }
                        if let Some(a) = at {
                            let abs = (base + i as u64).saturating_add_signed(a as i64);
                            if s.early_end.is_some_and(|e| abs >= e) {
                                // Past the `endstream`: decided by the end.
                                s.hidden_late.get_or_insert(abs);
                                s.headers = HeaderWatch::default();
                                at = None;
                            }
                        }
                        if let Some(at) = at {
                            // The data up to the header's end reaches the
                            // object stream first, as in a chunking cut
                            // there: what comes first decides, however cut.
                            let cut = header_end(at).min(own);
                            self.objstm.feed(&bytes[..cut], &mut self.deferred)?;
                            return Err(hidden(
                                s.kw_at,
                                (base + i as u64).saturating_add_signed(at as i64),
                            ));
                        }
                    }
                    if let Some(r) = swallowed {
                        self.objstm.feed(&bytes[..own], &mut self.deferred)?;
                        return Err(r);
                    }
                    if s.encrypt.feed_data(&self.encrypt_finders, bytes)
                        || (left == take as u64 && s.encrypt.pending())
                    {
                        self.encrypt_hidden.get_or_insert(s.kw_at);
                    }
                    s.push_carry(bytes);
                    self.objstm.feed(bytes, &mut self.deferred)?;
                    i += take;
                    s.phase = match left - take as u64 {
                        0 => Phase::Verify(0),
                        left => Phase::Counted(left),
                    };
                }
                Phase::Verify(matched) => {
                    let b = data[i];
                    if matched == 0 && is_ws(b) {
                        s.push_carry(&[b]);
                        i += 1;
                    } else if b == ENDSTREAM[matched] {
                        s.push_carry(&[b]);
                        i += 1;
                        if matched + 1 == ENDSTREAM.len() {
                            if let Some(at) = s.hidden_late {
                                // The data checks out: what followed its
                                // inner `endstream` was data too.
                                return Err(hidden(s.kw_at, at));
                            }
                            return self.end_stream(i, false);
                        }
                        s.phase = Phase::Verify(matched + 1);
                    } else {
                        // The data does not check out against /Length.
                        if let Some(e) = s.early_end {
                            return Err(Rejection::malformed(format!(
                                "stream at offset {}: /Length {} runs past its endstream at offset {e}",
                                s.kw_at,
                                s.length.unwrap_or(0)
                            )));
                        }
                        if s.probing {
                            // Not the data a reader would take: not approved.
                            self.objstm.sink = Sink::Off;
                            self.objstm.probe = Some(Probe::NotXml);
                        }
                        if s.objstm {
                            self.objstm.sink = Sink::Off;
                            self.deferred.get_or_insert_with(|| {
                                Rejection::malformed(format!(
                                    "object stream at offset {}: /Length does not match its data",
                                    s.kw_at
                                ))
                            });
                        }
                        s.phase = Phase::Search;
                    }
                }
                Phase::Search => {
                    // The carried bytes (the last 8 of the stream) may start an
                    // `endstream`: they reach the object stream sink only once
                    // they are known to be data, so that the sink sees the same
                    // bytes whatever the chunking.
                    let bytes = &data[i..];
                    let k = s.carry_len;
                    let carry = s.carry;
                    let (feed_to, done) = match s.find_end(&self.endstream, bytes) {
                        Some(end) => (k + end - ENDSTREAM.len(), Some(end)),
                        None => ((k + bytes.len()).saturating_sub(8), None),
                    };
                    // The stream's own data: up to its `endstream`.
                    let own = done.map_or(bytes.len(), |end| end.saturating_sub(ENDSTREAM.len()));
                    // The watches see the data, not its end: data that ends
                    // in `obj` or `/Encrypt` right before the `endstream`
                    // lexes as `objendstream` or `/Encryptendstream` for a
                    // reader pointed into it, and so it does here however a
                    // chunk boundary cuts that `endstream` (the bytes of a
                    // cut one went to the watches before it was found).
                    if self.reject_active
                        && let Some(at) = s.headers.feed(&self.obj, &bytes[..own])
                    {
                        // As above; the carried bytes are data here (the
                        // header's bytes cannot be part of an `endstream`).
                        let mut upto = k + header_end(at).min(own);
                        if done.is_some() {
                            upto = upto.min(feed_to);
                        }
                        self.objstm
                            .feed(&carry[..upto.min(k)], &mut self.deferred)?;
                        self.objstm
                            .feed(&bytes[..upto.saturating_sub(k)], &mut self.deferred)?;
                        return Err(hidden(
                            s.kw_at,
                            (base + i as u64).saturating_add_signed(at as i64),
                        ));
                    }
                    if s.encrypt.feed_data(&self.encrypt_finders, &bytes[..own]) {
                        self.encrypt_hidden.get_or_insert(s.kw_at);
                    }
                    self.objstm
                        .feed(&carry[..feed_to.min(k)], &mut self.deferred)?;
                    self.objstm
                        .feed(&bytes[..feed_to.saturating_sub(k)], &mut self.deferred)?;
                    if let Some(end) = done {
                        self.lexer.unsure_end = true;
                        self.lexer.guard_from.get_or_insert(s.kw_at);
                        return self.end_stream(i + end, true);
                    }
                    s.push_carry(bytes);
                    i = n;
                }
            }
        }
        Ok(n)
    }

    /// The stream's `endstream` was reached; `searched`: found by searching
    /// rather than after `/Length` bytes.
    fn end_stream(&mut self, consumed: usize, searched: bool) -> Result<usize, Rejection> {
        let s = self.stream.take();
        let over = self.objstm.end(&mut self.deferred)?;
        if searched
            && !over
            && let Some(s) = &s
            && s.objstm
        {
            // The first `endstream` was inside the object stream's data: a
            // reader that knows the length reads on, past what was decoded.
            self.deferred.get_or_insert_with(|| {
                Rejection::malformed(format!(
                    "object stream at offset {}: its /Length is no number that checks out, and its data is not over at the first endstream (inside a string, or before the end of its FlateDecode data): where it really ends cannot be told",
                    s.kw_at
                ))
            });
        }
        self.lexer.resync();
        if self.reject_active
            && let Some(s) = s
        {
            let approved = s.probing && self.objstm.take_probe();
            if s.embedded && !approved {
                self.files.bad_stream.get_or_insert(s.kw_at);
            }
            self.files.stream(s.obj, s.gen0, approved);
            if s.objstm {
                self.lexer.ef.merge(&mut self.objstm.lexer.ef);
            }
        }
        Ok(consumed)
    }
}

/// Checks the first bytes. `Ok(true)`: a good header; `Ok(false)`: more bytes
/// needed.
fn header_state(head: &[u8]) -> Result<bool, Rejection> {
    let n = head.len().min(MARKER.len());
    if head[..n] != MARKER[..n] {
        return Err(no_header());
    }
    if head.len() < HEADER_BUF {
        return Ok(false);
    }
    let v = &head[5..8];
    if !version_ok(v) || head[8].is_ascii_digit() || head[8] == b'.' {
        return Err(bad_version(&head[5..9]));
    }
    Ok(true)
}

fn version_ok(v: &[u8]) -> bool {
    (v[0] == b'1' && v[1] == b'.' && v[2].is_ascii_digit()) || v == b"2.0"
}

fn no_header() -> Rejection {
    Rejection::new(
        RejectCode::ContentMismatch,
        "the body does not start with %PDF-",
    )
}

fn bad_version(v: &[u8]) -> Rejection {
    Rejection::malformed(format!(
        "PDF header has an unsupported version \"{}\"",
        v.escape_ascii()
    ))
}

fn no_eof() -> Rejection {
    Rejection::malformed("PDF does not end with %%EOF (truncated?)")
}

/// The last `N` bytes of `a` followed by `b`, and how many there are.
fn last_n<const N: usize>(a: &[u8], b: &[u8]) -> ([u8; N], usize) {
    let mut out = [0u8; N];
    if b.len() >= N {
        out.copy_from_slice(&b[b.len() - N..]);
        return (out, N);
    }
    let keep = (N - b.len()).min(a.len());
    out[..keep].copy_from_slice(&a[a.len() - keep..]);
    out[keep..keep + b.len()].copy_from_slice(b);
    (out, keep + b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds already-decoded string bytes to a `UriCheck`.
    fn uri(bytes: &[u8]) -> UriVerdict {
        let mut u = UriCheck::new(0, "URI");
        for &b in bytes {
            match u.byte(b) {
                UriVerdict::Pending => {}
                v => return v,
            }
        }
        // The string ended undecided: no scheme.
        UriVerdict::Fine
    }

    #[test]
    fn uri_schemes() {
        for ok in [
            &b"https://x"[..],
            b"HTTP://x",
            b"mailto:a@b",
            b"www.example.com/a:b",
            b"/rel:x",
            b"1a:b",
            b":x",
            b"",
            b"\xC3\xA9javascript:x",
            b"\xFE",
            b"\xFF\xFEh\x00t\x00t\x00p\x00:\x00",
            b"\xFF\xFF",
            b"\xFE\xFF\x00h\x00t\x00t\x00p\x00:",
            b"\xEF\xBB\xBFhttps:",
            b"\xEF\xBBjavascript:",
        ] {
            assert_eq!(uri(ok), UriVerdict::Fine, "{}", ok.escape_ascii());
        }
        for bad in [
            &b"javascript:x"[..],
            b"JaVaScRiPt:x",
            b" \x01\x1f javascript:x",
            b"java\tscr\nipt\r:x",
            b"\t\n javascript:",
            b"file:///x",
            b"ms-msdt:x",
            b"a+b.c-d:x",
            b"https+x:",
            b"\xFE\xFF\x00j\x00s\x00:",
            b"\xFF\xFEj\x00s\x00:\x00",
            b"\xEF\xBB\xBFdata:",
            b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:",
        ] {
            assert_eq!(uri(bad), UriVerdict::Bad, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn uri_utf16_non_ascii_unit_ends_the_scheme() {
        // U+FF4A (fullwidth j) is no ASCII letter.
        assert_eq!(uri(b"\xFE\xFF\xFF\x4A\x00s\x00:"), UriVerdict::Fine);
        assert_eq!(uri(b"\xFE\xFF\x00j\x01s\x00:"), UriVerdict::Fine);
    }

    fn probe(data: &[u8]) -> bool {
        let mut p = Probe::Bom(0);
        p.feed(data);
        p == Probe::Xml
    }

    #[test]
    fn xml_probe() {
        assert!(probe(b"<?xml version='1.0'?>"));
        assert!(probe(b"\xEF\xBB\xBF<a/>"));
        assert!(probe(b"\xEF\xBB\xBF \r\n\t<a/>"));
        assert!(probe(b"\n\n<a/>"));
        assert!(!probe(b""));
        assert!(!probe(b"   "));
        assert!(!probe(b"MZ"));
        assert!(!probe(b"%PDF-1.7"));
        assert!(!probe(b"\xEF\xBB<a/>"));
        assert!(!probe(b"\xEF\xBB\xBF\xEF\xBB\xBF<a/>"));
        // UTF-16 with its BOM, either byte order.
        assert!(probe(b"\xFE\xFF\x00<"));
        assert!(probe(b"\xFF\xFE<\x00"));
        assert!(probe(b"\xFF\xFE \x00\n\x00<\x00?\x00"));
        assert!(!probe(b"\xFF\xFE\x00<"));
        assert!(!probe(b"\xFE\xFF<\x00"));
        assert!(!probe(b"\xFF\xFEM\x00Z\x00"));
        assert!(!probe(b"\xFF\xFF\x00<"));
        assert!(!probe(b"\xFF\xFE<"));
        assert!(!probe(&[vec![b' '; 1025], b"<a/>".to_vec()].concat()));
        assert!(probe(&[vec![b' '; 1024], b"<a/>".to_vec()].concat()));
        // Fed in pieces: the same.
        let mut p = Probe::Bom(0);
        for b in b"\xEF\xBB\xBF  <" {
            p.feed(&[*b]);
        }
        assert_eq!(p, Probe::Xml);
    }

    #[test]
    fn ef_log_dedups_and_caps() {
        let at = Sighting {
            name: "EF",
            at: 1,
            objstm: None,
        };
        let mut log = EfLog::new();
        for n in 0..EF_CAP as u64 {
            log.add(n, at);
            log.add(n, at);
        }
        assert_eq!(log.len, EF_CAP);
        assert!(log.overflow.is_none());
        log.add(1000, at);
        assert!(log.overflow.is_some());
    }

    #[test]
    fn files_the_last_definition_of_generation_0_counts() {
        let mut f = Files::new();
        f.stream(Some(7), true, true);
        assert!(f.ok(7));
        f.stream(Some(7), true, false);
        assert!(!f.ok(7), "redefined as something else");
        f.stream(Some(7), true, true);
        assert!(f.ok(7), "and back: the last definition");
        let mut f = Files::new();
        f.stream(Some(7), true, false);
        f.stream(Some(7), false, true);
        assert!(!f.ok(7), "another generation does not supersede");
        let mut f = Files::new();
        f.stream(Some(9), false, false);
        f.stream(Some(7), true, false);
        f.stream(Some(7), true, true);
        assert!(!f.ok(7), "once generations differ, nothing supersedes");
        let mut f = Files::new();
        f.stream(Some(70_000), true, true);
        assert!(f.ok(70_000));
        f.stream(Some(90_000), true, false);
        assert!(!f.ok(70_000), "one flag stands for all big numbers");
        f.stream(Some(70_000), true, true);
        assert!(!f.ok(70_000), "and is never cleared");
        let mut f = Files::new();
        f.stream(Some(8), true, true);
        f.stream(None, true, false);
        assert!(!f.ok(8), "a stream without N G obj could be any object");
        let mut f = Files::new();
        for n in 0..APPROVED_CAP as u64 + 1 {
            f.stream(Some(n), true, true);
        }
        assert!(f.ok(0));
        assert!(!f.ok(APPROVED_CAP as u64), "past the cap: not approved");
    }

    /// `data` fed to a [`HeaderWatch`] in pieces cut at `cuts` (offsets,
    /// in order): the offset of the `obj` of the first header found, one
    /// right at the end of the data included (as the end of stream data).
    fn header_in_pieces(data: &[u8], cuts: &[usize]) -> Option<usize> {
        let finder = memmem::Finder::new(b"obj");
        let mut w = HeaderWatch::default();
        let mut at = 0;
        for &end in cuts.iter().chain([&data.len()]) {
            if let Some(p) = w.feed(&finder, &data[at..end]) {
                return Some(at.checked_add_signed(p).expect("inside the data"));
            }
            at = end;
        }
        w.end().then(|| data.len() - 3)
    }

    /// The same, by running [`header_step`] over the data byte by byte.
    fn header_by_steps(data: &[u8]) -> Option<usize> {
        let mut mask = 0;
        for (i, &b) in data.iter().enumerate() {
            if mask & (H_N2 | H_W2) != 0
                && data[i..].starts_with(b"obj")
                && data.get(i + 3).is_none_or(|&b| is_delim_or_ws(b))
            {
                return Some(i);
            }
            mask = header_step(mask, b);
        }
        None
    }

    /// Where [`HeaderWatch`] finds a header in `data`, checked to be the
    /// same in one piece, byte by byte, cut at any point and (short data)
    /// at any two points, and the same as [`header_by_steps`].
    fn header_every_cut(data: &[u8]) -> Option<usize> {
        let what = String::from_utf8_lossy(data);
        let one = header_in_pieces(data, &[]);
        assert_eq!(one, header_by_steps(data), "{what:?}: step by step");
        let bytes: Vec<usize> = (1..data.len()).collect();
        assert_eq!(
            header_in_pieces(data, &bytes),
            one,
            "{what:?}: byte by byte"
        );
        for a in 0..=data.len() {
            assert_eq!(header_in_pieces(data, &[a]), one, "{what:?}: cut at {a}");
            if data.len() <= 40 {
                for b in a..=data.len() {
                    assert_eq!(
                        header_in_pieces(data, &[a, b]),
                        one,
                        "{what:?}: cut at {a} and {b}"
                    );
                }
            }
        }
        one
    }

    /// A comment is white space in a header, as a reader's tokenizer reads
    /// it: after either number (right after it, too: `%` is a delimiter),
    /// any number of them, up to a CR or LF, however the data is cut.
    #[test]
    fn header_watch_comments_are_white_space() {
        let long = format!("q 4 0 %{}\nobj ", "x".repeat(300));
        for data in [
            &b"q Q 4 0 %x\nobj << /S /JavaScript >>"[..],
            b"q Q 4 %x\n0 obj <<",
            b"q Q 4 0%\nobj<<",
            b"q Q 4%\n0 obj ",
            b"q Q 4%a\n0%b\robj ",
            b"4 0 %a\r%b\r\n%c\nobj ",
            b"4 %a\n %b\n0 %c\r\nobj/",
            b"4\t%a\n\n%b\r0 \x00%c\nobj(",
            b"q Q 4 0 %x\nobj",
            long.as_bytes(),
            // The numbers inside a comment: a reader pointed at them.
            b"%4 0\nobj ",
            b"x%y 4 0 %\nobj ",
            // `obj` inside a comment after a number is a byte of it, and
            // the comment goes on past it.
            b"7 % 5 0 obz\n0 obj ",
            b"7 % 5 0 objz\n0 obj ",
            b"7 %obj\n0 obj ",
        ] {
            assert!(
                header_every_cut(data).is_some(),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        for data in [
            &b"q Q 4 0 %x obj "[..],
            b"4 %x obj\n",
            b"4 %x\nobj ",
            b"4 0 %x\nobjects",
            b"4 0 x%\nobj ",
            b"4 0 %x\n y obj ",
            b"4 0 %x\n\n%y obj ",
            b"4 0 %x\rz\nobj ",
            b"(50%)\n3 objects 1 %c\nobjx 7 %obj\n",
        ] {
            assert_eq!(
                header_every_cut(data),
                None,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    /// Data made of the bytes that matter to a header, at random: the
    /// watch finds what running [`header_step`] over it finds, however cut.
    #[test]
    fn header_watch_agrees_with_the_steps_however_cut() {
        const PARTS: [&[u8]; 18] = [
            b"4", b"0", b"-", b" ", b"\n", b"\r", b"\t", b"%", b"%x\n", b"x", b"obj", b"o", b"ob",
            b"j", b"/", b"\n0 obj", b" 4 ", b"%x obj",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut found, mut behind_comment) = (0, 0);
        for _ in 0..3000 {
            let n = next() % 14 + 1;
            let data: Vec<u8> = (0..n)
                .flat_map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                .copied()
                .collect();
            if let Some(at) = header_every_cut(&data) {
                found += 1;
                behind_comment += usize::from(data[..at].contains(&b'%'));
            }
        }
        // Both verdicts are common, and headers with a comment before them.
        assert!((150..2850).contains(&found), "{found} of 3000");
        assert!(behind_comment > 100, "{behind_comment} of {found}");
    }

    /// A small syntax-dense file: every kind of token (names with and
    /// without `#` escapes, integers, reals, keywords, literal strings with
    /// escapes and nesting, hex strings, `/URI` strings, comments, nested
    /// dictionaries and arrays) and text content streams, with `extra` in
    /// the last dictionary.
    fn dense(extra: &str) -> Vec<u8> {
        let text = "BT /F1 12 Tf 72 712 Td (Hello \\(world\\) \\\\) Tj ET\n".repeat(4);
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612.0 792] /Resources << /Font \
             << /F1 5 0 R >> >> /Contents [4 0 R 8 0 R] /Annots [6 0 R 7 0 R] >>"
                .to_owned(),
            format!("<< /Length {} >>\nstream\n{text}endstream", text.len()),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica#2DBold >>".to_owned(),
            "<< /Type /Annot /Subtype /Link /Rect [10 10 -20.5 +20] /Border [0 0 0] /A << /S \
             /URI /URI (https://example.com/a\\(b\\)) >> /NM <41 42 4a> /T (nested (paren) \
             \\101) >> % a comment\n"
                .to_owned(),
            "<< /A << /S /URI /URI <68747470733A2F2F782E79> >> /F 4 /Q (\\\r\n) >>".to_owned(),
            format!("<< /Length 9 0 R >>\r\nstream\r\n{text}\r\nendstream"),
            "[/a#20b (x) <00> true false null 1 0 R [[[ ]]] << >> {} ]".to_owned(),
            format!("<< /Last (string) {extra} >>"),
        ];
        let mut out = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
        for (i, body) in objects.iter().enumerate() {
            out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
        }
        out.extend_from_slice(b"trailer\n<< /Size 11 /Root 1 0 R >>\nstartxref\n0\n%%EOF\n");
        out
    }

    /// `bytes` fed in two pieces, cut at every point, gives `one` (the verdict
    /// of the whole file at once, detail included).
    fn same_at_every_split(limits: &Limits, bytes: &[u8], one: &Result<(), Rejection>, what: &str) {
        for at in 0..=bytes.len() {
            let mut s = PdfScanner::new(limits);
            let (a, b) = bytes.split_at(at);
            let got = s.feed(a).and_then(|()| s.feed(b)).and_then(|()| s.finish());
            assert_eq!(&got, one, "{what}: split at {at}");
        }
    }

    /// Arrays of numbers, which the hot loop takes at once when they end in
    /// the chunk (`Lexer::number_array`): the verdict and detail of the
    /// token-by-token reading, with a chunk boundary anywhere, and the nesting
    /// limit counted for them.
    #[test]
    fn number_arrays_any_split_point() {
        let file = |objects: &[&str], trailer: &str| {
            let mut out = b"%PDF-1.7\n".to_vec();
            for (i, body) in objects.iter().enumerate() {
                out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
            }
            out.extend_from_slice(format!("trailer\n{trailer}\nstartxref\n0\n%%EOF\n").as_bytes());
            out
        };
        let fine = "<< /Size 3 /Root 1 0 R >>";
        let data = "<< /Length 5 >>\nstream\nabcde\nendstream";
        let cases = [
            (
                file(
                    &[
                        "<< /Rect [12345 10 -20.5 +20] /Border [0 0 0] /E [ ] /F [] /G [1%c\n2] \
                         /H [1\u{0}2\t3\r\n4] /I [[1 2] [3]] /J [1 0 R] >>",
                        data,
                    ],
                    fine,
                ),
                64,
                None,
            ),
            (
                file(&["<< /Rect [1 2] >>"], fine),
                1,
                Some(RejectCode::MalformedImage),
            ),
            (file(&["[1 2]"], fine), 1, None),
            (
                file(&["<< /K [[1]] >>"], fine),
                2,
                Some(RejectCode::MalformedImage),
            ),
            (
                file(&["<< /Type /XRef /Encrypt [1 2] >>"], fine),
                64,
                Some(RejectCode::PdfEncrypted),
            ),
            (
                file(
                    &["<< /Encrypt [1] /Length 5 >>\nstream\nabcde\nendstream"],
                    fine,
                ),
                64,
                Some(RejectCode::PdfEncrypted),
            ),
            (
                file(&["<< /Length [5] >>\nstream\nabcde\nendstream"], fine),
                64,
                None,
            ),
            (
                file(&[data], "<< /Encrypt [0 0] /Size 2 >>"),
                64,
                Some(RejectCode::PdfEncrypted),
            ),
        ];
        for (bytes, max_nesting, want) in cases {
            let limits = Limits {
                max_nesting,
                ..Limits::default()
            };
            let one = scan_pdf(&limits, &bytes, bytes.len());
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(one.as_ref().err().map(|r| r.code), want, "{text}: {one:?}");
            same_at_every_split(&limits, &bytes, &one, &text);
        }
    }

    /// The top-level lines the hot loop takes at once (`N G obj` and
    /// cross-reference entries, `Lexer::top_level_line`) and `endobj`: the
    /// verdict and detail of the token-by-token reading, with a chunk
    /// boundary anywhere.
    #[test]
    fn top_level_lines_any_split_point() {
        let objs = "1 0 obj\n<< /Type /Catalog >>\nendobj\n12  3\r\nobj[1]endobj\n\
                    4 0 obj /ObjStm endobj 5 0 obj%c\n(x)endobj\n";
        let xref = "xref\n0 4\n0000000000 65535 f \n0000000009 00000 n\r\n\
                    0000000042 00000 n\n0000000077 00001 f\r";
        let malformed = Some(RejectCode::MalformedImage);
        for (bytes, want) in [
            (
                format!("%PDF-1.7\n{objs}{xref}\ntrailer\n<< >>\nstartxref\n0\n%%EOF\n"),
                None,
            ),
            (
                format!("%PDF-1.7\n{objs}startxref\n0000000000 00000 n\n%%EOF\n"),
                None,
            ),
            (format!("%PDF-1.7\n{objs}startxref\n%%EOF\n"), malformed),
            (
                format!("%PDF-1.7\n{objs}0000000009 00000 x\nstartxref 0\n%%EOF\n"),
                malformed,
            ),
            (
                format!("%PDF-1.7\n{objs}1 0 objx\nstartxref 0\n%%EOF\n"),
                malformed,
            ),
            (
                format!("%PDF-1.7\n{objs}1 0 endobjx\nstartxref 0\n%%EOF\n"),
                malformed,
            ),
            (
                "%PDF-1.7\n1 0 obj /A endobj 1 0 obj endobj\nstartxref 0\n%%EOF\n".to_owned(),
                None,
            ),
        ] {
            let bytes = bytes.into_bytes();
            let limits = Limits::default();
            let one = scan_pdf(&limits, &bytes, bytes.len());
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(one.as_ref().err().map(|r| r.code), want, "{text}: {one:?}");
            same_at_every_split(&limits, &bytes, &one, &text);
        }
    }

    /// A chunk boundary anywhere in a syntax-dense file, inside or between
    /// tokens of every kind (every split point, and one byte at a time),
    /// gives the verdict of the whole file, detail included.
    #[test]
    fn dense_syntax_any_split_point() {
        let reject = Limits::default();
        let allow = Limits {
            pdf_active_content: ActiveContentPolicy::Allow,
            ..Limits::default()
        };
        let active = Some(RejectCode::PdfActiveContent);
        for (extra, want) in [
            ("", None),
            ("/URI (javascript:alert(1))", active),
            ("/URI ( \\t JaVa\\nScript:x)", active),
            ("/URI <6A733A>", active),
            ("/AA << /O << /JS (app.alert\\(1\\)) >> >>", active),
            ("/Java#53cript 1", active),
            ("/Type /XRef /Encrypt 3 0 R", Some(RejectCode::PdfEncrypted)),
            ("(unterminated", Some(RejectCode::MalformedImage)),
        ] {
            let bytes = dense(extra);
            for limits in [&reject, &allow] {
                let one = scan_pdf(limits, &bytes, bytes.len());
                let allowed = limits.pdf_active_content == ActiveContentPolicy::Allow;
                let expected = want.filter(|&c| !(allowed && c == RejectCode::PdfActiveContent));
                assert_eq!(
                    one.as_ref().err().map(|r| r.code),
                    expected,
                    "{extra}: {one:?}"
                );
                assert_eq!(scan_pdf(limits, &bytes, 1), one, "{extra}: byte by byte");
                same_at_every_split(limits, &bytes, &one, extra);
            }
        }
    }
}
