//! JPEG / PNG scanners, the dispatching `Inspector` and the `scan` command core.
//!
//! Fixtures under `tests/fixtures/inspect/` come from real encoders (see the
//! README there); corrupt inputs are derived from them here.

use std::path::{Path, PathBuf};

use concur_gateway::inspect::jpeg::JpegScanner;
use concur_gateway::inspect::png::PngScanner;
use concur_gateway::inspect::{Inspector, Limits, MediaType, RejectCode, Rejection, inspect_all};
use concur_gateway::scan_cmd::run_scan;
use proptest::prelude::*;

use crate::support::{png_chunk_bytes, zlib};

// ---------------------------------------------------------------------------
// Fixtures and helpers
// ---------------------------------------------------------------------------

const JPEGS: &[&str] = &[
    "im-baseline.jpg",
    "im-progressive.jpg",
    "im-gray.jpg",
    "cjpeg-restart.jpg",
    "cjpeg-progressive-gray.jpg",
    "cjpeg-arithmetic.jpg",
    "guetzli.jpg",
    "exif-thumb.jpg",
    "pillow-exif-progressive.jpg",
    "pillow-cmyk.jpg",
];

const PNGS: &[&str] = &[
    "im-rgb.png",
    "im-interlaced.png",
    "im-rgb16.png",
    "im-palette.png",
    "im-rgba.png",
    "optipng.png",
    "pngcrush.png",
    "pillow-palette.png",
    "pillow-bilevel.png",
    "pillow-gray-alpha.png",
    "pillow-gray16.png",
    "pillow-text.png",
    "pillow-apng.png",
    "pypng-rgb16-interlaced.png",
    "pypng-gray2-smallidat.png",
    "pypng-adam7-1x1-gray1.png",
    "pypng-adam7-3x2-gray4.png",
    "pypng-adam7-5x7-rgb8.png",
    "pypng-adam7-9x9-rgba16.png",
    "pypng-adam7-17x3-palette2.png",
    "pypng-adam7-2x13-graya8.png",
    "pillow-ztxt-iccp.png",
];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inspect")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn limits() -> Limits {
    Limits::default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jpeg,
    Png,
    /// Through `Inspector` with this declared type.
    Inspect(MediaType),
}

/// Object-safe view of the three feeders.
trait Feed {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection>;
    fn finish(&mut self) -> Result<(), Rejection>;
}

impl Feed for JpegScanner {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        JpegScanner::feed(self, chunk)
    }
    fn finish(&mut self) -> Result<(), Rejection> {
        JpegScanner::finish(self)
    }
}

impl Feed for PngScanner {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        PngScanner::feed(self, chunk)
    }
    fn finish(&mut self) -> Result<(), Rejection> {
        PngScanner::finish(self)
    }
}

impl Feed for Inspector {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Rejection> {
        Inspector::feed(self, chunk)
    }
    fn finish(&mut self) -> Result<(), Rejection> {
        Inspector::finish(self)
    }
}

fn new_feeder(kind: Kind, limits: &Limits) -> Box<dyn Feed> {
    match kind {
        Kind::Jpeg => Box::new(JpegScanner::new(limits)),
        Kind::Png => Box::new(PngScanner::new(limits)),
        Kind::Inspect(t) => Box::new(Inspector::new(t, limits)),
    }
}

/// Feeds `pieces` in order and returns the verdict, checking on the way that an
/// `Err` is sticky (every later feed and the finish return the same `Err`).
fn run_pieces(kind: Kind, limits: &Limits, pieces: &[&[u8]]) -> Result<(), Rejection> {
    let mut s = new_feeder(kind, limits);
    let mut first_err: Option<Rejection> = None;
    for p in pieces {
        let r = s.feed(p);
        match (&first_err, r) {
            (None, Ok(())) => {}
            (None, Err(e)) => first_err = Some(e),
            (Some(e), r) => assert_eq!(r.as_ref(), Err(e), "error is not sticky"),
        }
    }
    let fin = s.finish();
    if let Some(e) = &first_err {
        assert_eq!(
            fin.as_ref(),
            Err(e),
            "finish does not repeat the sticky error"
        );
    }
    // finish is idempotent
    assert_eq!(s.finish(), fin, "second finish differs");
    fin
}

fn one_shot(kind: Kind, limits: &Limits, bytes: &[u8]) -> Result<(), Rejection> {
    run_pieces(kind, limits, &[bytes])
}

/// Offsets worth splitting `bytes` at: all of them for small inputs; for larger
/// ones the first and last 512 bytes, about 300 offsets spread over the rest, and
/// the neighbourhoods of the `extra` offsets (chunk boundaries).
fn split_points(len: usize, extra: &[usize]) -> Vec<usize> {
    if len <= 4096 {
        return (0..=len).collect();
    }
    let step = (len / 300).max(61);
    let mut v: Vec<usize> = (0..=512)
        .chain(len - 512..=len)
        .chain((0..len).step_by(step))
        .collect();
    for &e in extra {
        v.extend(e.saturating_sub(10)..=(e + 10).min(len));
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Every two-chunk split in `split_points`, plus byte-at-a-time and 3-byte
/// chunking, gives the one-shot verdict (detail included). Returns it.
fn check_chunking(
    kind: Kind,
    limits: &Limits,
    bytes: &[u8],
    extra: &[usize],
) -> Result<(), Rejection> {
    let expected = one_shot(kind, limits, bytes);
    for k in split_points(bytes.len(), extra) {
        let got = run_pieces(kind, limits, &[&bytes[..k], &bytes[k..]]);
        assert_eq!(got, expected, "{kind:?}: split at {k} of {}", bytes.len());
    }
    // Empty chunks are harmless.
    let got = run_pieces(kind, limits, &[&[], bytes, &[]]);
    assert_eq!(got, expected, "{kind:?}: with empty chunks");
    for size in [1usize, 3, 16 * 1024] {
        let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
        assert_eq!(
            run_pieces(kind, limits, &pieces),
            expected,
            "{kind:?}: {size}-byte chunks"
        );
        if let Kind::Inspect(t) = kind {
            assert_eq!(
                inspect_all(t, limits, bytes, size),
                expected,
                "inspect_all, {size}-byte chunks"
            );
        }
    }
    expected
}

fn expect_malformed(r: Result<(), Rejection>, needle: &str) -> Rejection {
    let e = r.expect_err("expected a rejection");
    assert_eq!(e.code, RejectCode::MalformedImage, "{e}");
    assert!(
        e.detail.contains(needle),
        "detail {:?} lacks {needle:?}",
        e.detail
    );
    e
}

// --- PNG surgery -----------------------------------------------------------

#[derive(Debug, Clone)]
struct PngChunk {
    ty: [u8; 4],
    data: Vec<u8>,
}

fn png_parse(bytes: &[u8]) -> Vec<PngChunk> {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let mut i = 8;
    let mut out = Vec::new();
    while i < bytes.len() {
        let n = u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let ty: [u8; 4] = bytes[i + 4..i + 8].try_into().unwrap();
        out.push(PngChunk {
            ty,
            data: bytes[i + 8..i + 8 + n].to_vec(),
        });
        i += 12 + n;
    }
    out
}

fn png_build(chunks: &[PngChunk]) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    for c in chunks {
        v.extend(png_chunk_bytes(&c.ty, &c.data));
    }
    v
}

/// Offsets of the chunks (of their length fields).
fn png_offsets(chunks: &[PngChunk]) -> Vec<usize> {
    let mut off = 8;
    chunks
        .iter()
        .map(|c| {
            let o = off;
            off += 12 + c.data.len();
            o
        })
        .collect()
}

fn chunk(ty: &[u8; 4], data: &[u8]) -> PngChunk {
    PngChunk {
        ty: *ty,
        data: data.to_vec(),
    }
}

fn find_chunk(chunks: &[PngChunk], ty: &[u8; 4]) -> usize {
    chunks
        .iter()
        .position(|c| &c.ty == ty)
        .unwrap_or_else(|| panic!("no {ty:?} chunk"))
}

fn with_ihdr(bytes: &[u8], patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut chunks = png_parse(bytes);
    patch(&mut chunks[0].data);
    png_build(&chunks)
}

// --- JPEG surgery ----------------------------------------------------------

/// (offset of FF, marker, segment length) for the segments before the first SOS
/// (the SOS included).
fn jpeg_segments(bytes: &[u8]) -> Vec<(usize, u8, usize)> {
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
    let mut i = 2;
    let mut out = Vec::new();
    loop {
        assert_eq!(bytes[i], 0xFF, "fixture has padding between segments");
        let m = bytes[i + 1];
        let n = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        out.push((i, m, n));
        if m == 0xDA {
            return out;
        }
        i += 2 + n;
    }
}

fn first_segment(bytes: &[u8], pred: impl Fn(u8) -> bool) -> (usize, u8, usize) {
    *jpeg_segments(bytes)
        .iter()
        .find(|s| pred(s.1))
        .expect("segment")
}

fn is_sof(m: u8) -> bool {
    (0xC0..=0xCF).contains(&m) && !matches!(m, 0xC4 | 0xC8 | 0xCC)
}

/// Sets the SOF dimensions of the first frame header.
fn jpeg_with_dims(bytes: &[u8], width: u16, height: u16) -> Vec<u8> {
    let (off, _, _) = first_segment(bytes, is_sof);
    let mut v = bytes.to_vec();
    v[off + 5..off + 7].copy_from_slice(&height.to_be_bytes());
    v[off + 7..off + 9].copy_from_slice(&width.to_be_bytes());
    v
}

/// Deterministic pseudo-random bytes (xorshift), no crate needed.
fn pseudo_random(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Fixtures are accepted, in any chunking
// ---------------------------------------------------------------------------

#[test]
fn fixture_lists_match_directory() {
    let mut listed: Vec<&str> = JPEGS.iter().chain(PNGS).copied().collect();
    listed.sort_unstable();
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".jpg") || n.ends_with(".png"))
        .collect();
    on_disk.sort_unstable();
    assert_eq!(on_disk, listed);
    let readme = String::from_utf8(fixture("README.md")).unwrap();
    for name in &listed {
        assert!(readme.contains(name), "README.md does not describe {name}");
    }
    let total: u64 = listed.iter().map(|n| fixture(n).len() as u64).sum();
    assert!(total < 1024 * 1024, "fixtures total {total} bytes");
}

#[test]
fn jpeg_fixtures_accepted_in_any_split() {
    for name in JPEGS {
        let bytes = fixture(name);
        let r = check_chunking(Kind::Jpeg, &limits(), &bytes, &[]);
        assert_eq!(r, Ok(()), "{name}");
        let r = check_chunking(Kind::Inspect(MediaType::Jpeg), &limits(), &bytes, &[]);
        assert_eq!(r, Ok(()), "{name} through Inspector");
    }
}

#[test]
fn png_fixtures_accepted_in_any_split() {
    for name in PNGS {
        let bytes = fixture(name);
        let chunks = png_parse(&bytes);
        let offsets = png_offsets(&chunks);
        let r = check_chunking(Kind::Png, &limits(), &bytes, &offsets);
        assert_eq!(r, Ok(()), "{name}");
        let r = check_chunking(Kind::Inspect(MediaType::Png), &limits(), &bytes, &offsets);
        assert_eq!(r, Ok(()), "{name} through Inspector");
    }
}

#[test]
fn fixtures_cover_the_required_variants() {
    // PNG colour types / depths / interlace / palette / APNG.
    let ihdr = |n: &str| {
        let c = png_parse(&fixture(n));
        (c[0].data[8], c[0].data[9], c[0].data[12])
    };
    assert_eq!(ihdr("im-palette.png").1, 3);
    assert_eq!(ihdr("pillow-palette.png").1, 3);
    assert_eq!(ihdr("im-rgb16.png").0, 16);
    assert_eq!(ihdr("pillow-gray16.png"), (16, 0, 0));
    assert_eq!(ihdr("im-interlaced.png").2, 1);
    assert_eq!(ihdr("pypng-rgb16-interlaced.png"), (16, 2, 1));
    assert_eq!(ihdr("pillow-bilevel.png"), (1, 0, 0));
    assert_eq!(ihdr("pillow-gray-alpha.png").1, 4);
    assert_eq!(ihdr("im-rgba.png").1, 6);
    let apng = png_parse(&fixture("pillow-apng.png"));
    assert!(apng.iter().any(|c| &c.ty == b"acTL") && apng.iter().any(|c| &c.ty == b"fdAT"));
    let small = png_parse(&fixture("pypng-gray2-smallidat.png"));
    assert!(small.iter().filter(|c| &c.ty == b"IDAT").count() >= 2);
    // JPEG frame types.
    let sof = |n: &str| first_segment(&fixture(n), is_sof).1;
    assert_eq!(sof("im-baseline.jpg"), 0xC0);
    assert_eq!(sof("im-progressive.jpg"), 0xC2);
    assert_eq!(sof("cjpeg-progressive-gray.jpg"), 0xC2);
    assert_eq!(sof("cjpeg-arithmetic.jpg"), 0xC9);
    assert_eq!(sof("guetzli.jpg"), 0xC1);
    let restart = fixture("cjpeg-restart.jpg");
    assert!(restart.windows(2).any(|w| w == [0xFF, 0xD0]));
    // EXIF thumbnail: a second SOI inside APP1.
    let exif = fixture("exif-thumb.jpg");
    let (app1, m, len) = first_segment(&exif, |m| m == 0xE1);
    assert_eq!(m, 0xE1);
    assert!(
        exif[app1..app1 + 2 + len]
            .windows(3)
            .any(|w| w == [0xFF, 0xD8, 0xFF])
    );
}

// ---------------------------------------------------------------------------
// PNG corruptions
// ---------------------------------------------------------------------------

/// Small PNG fixtures: every corruption is checked at every split offset.
const SMALL_PNGS: &[&str] = &[
    "pillow-palette.png",
    "pillow-bilevel.png",
    "pypng-gray2-smallidat.png",
    "im-palette.png",
];

fn check_png_reject(bytes: &[u8], needle: &str) -> Rejection {
    let r = check_chunking(Kind::Png, &limits(), bytes, &[]);
    let e = expect_malformed(r, needle);
    assert_eq!(
        check_chunking(Kind::Inspect(MediaType::Png), &limits(), bytes, &[]),
        Err(e.clone())
    );
    e
}

#[test]
fn png_crc_flip() {
    for name in SMALL_PNGS {
        let bytes = fixture(name);
        let chunks = png_parse(&bytes);
        let offsets = png_offsets(&chunks);
        for (idx, c) in chunks.iter().enumerate() {
            let ty = String::from_utf8_lossy(&c.ty).into_owned();
            let end = offsets[idx] + 12 + c.data.len();
            // Flip a CRC bit, then a data/type bit.
            for pos in [
                end - 1,
                offsets[idx] + 4,
                offsets[idx] + 8 + c.data.len() / 2,
            ] {
                if pos == offsets[idx] + 8 + c.data.len() / 2 && c.data.is_empty() {
                    continue; // no data: that's the CRC
                }
                let mut bad = bytes.clone();
                bad[pos] ^= 0x01;
                let e = check_png_reject(&bad, "");
                if pos != offsets[idx] + 4 {
                    assert_eq!(
                        e.detail,
                        format!("PNG chunk {ty} at offset {}: CRC mismatch", offsets[idx]),
                        "{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn png_truncations() {
    for name in SMALL_PNGS {
        let bytes = fixture(name);
        for k in 0..bytes.len() {
            let r = one_shot(Kind::Png, &limits(), &bytes[..k]);
            let e = r.expect_err("truncated PNG accepted");
            assert_eq!(e.code, RejectCode::MalformedImage);
        }
    }
    // Larger fixtures: a few points, each at every split.
    let bytes = fixture("im-rgb.png");
    let offsets = png_offsets(&png_parse(&bytes));
    for k in [
        1,
        7,
        8,
        12,
        20,
        33,
        offsets[offsets.len() - 1],
        bytes.len() - 1,
    ] {
        let e = check_png_reject(&bytes[..k], "");
        assert!(
            e.detail.contains("truncated") || e.detail.contains("signature"),
            "{e}"
        );
    }
    check_png_reject(&bytes[..bytes.len() - 12], "truncated at offset");
    assert_eq!(
        one_shot(Kind::Png, &limits(), b""),
        Err(Rejection::malformed("PNG: empty body"))
    );
}

#[test]
fn png_bad_chunk_length() {
    let bytes = fixture("pillow-palette.png");
    let chunks = png_parse(&bytes);
    let offsets = png_offsets(&chunks);
    let idat = find_chunk(&chunks, b"IDAT");
    let at = offsets[idat];
    let mut bad = bytes.clone();
    bad[at..at + 4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    let e = check_png_reject(&bad, "exceeds 2^31-1");
    assert_eq!(
        e.detail,
        format!("PNG chunk IDAT at offset {at}: length 2147483648 exceeds 2^31-1")
    );
    // Longer than the data: runs past the end of the body.
    let mut bad = bytes.clone();
    bad[at..at + 4].copy_from_slice(&0x7FFF_FFFFu32.to_be_bytes());
    check_png_reject(&bad, "truncated");
    // Off by one: the CRC is read from the wrong place.
    for delta in [-1i64, 1] {
        let mut bad = bytes.clone();
        let n = chunks[idat].data.len() as i64 + delta;
        bad[at..at + 4].copy_from_slice(&(n as u32).to_be_bytes());
        check_png_reject(&bad, "");
    }
    // IHDR of the wrong length (CRC recomputed).
    let mut c = chunks.clone();
    c[0].data.push(0);
    check_png_reject(&png_build(&c), "length 14 (must be 13)");
}

#[test]
fn png_data_after_iend() {
    for name in SMALL_PNGS {
        let bytes = fixture(name);
        for tail in [&b"\0"[..], b"\n", b"PK\x03\x04", &[0u8; 100]] {
            let bad = concat(&[&bytes, tail]);
            let e = check_png_reject(&bad, "data after IEND");
            assert_eq!(
                e.detail,
                format!("PNG: data after IEND at offset {}", bytes.len())
            );
        }
    }
}

#[test]
fn png_ihdr_not_first() {
    let chunks = png_parse(&fixture("im-palette.png"));
    let mut c = chunks.clone();
    c.swap(0, 1);
    let e = check_png_reject(&png_build(&c), "the first chunk must be IHDR");
    assert!(e.detail.starts_with(&format!(
        "PNG chunk {} at offset 8:",
        String::from_utf8_lossy(&c[0].ty)
    )));
    // Two IHDRs.
    let mut c = chunks.clone();
    c.insert(1, c[0].clone());
    check_png_reject(&png_build(&c), "second IHDR");
}

#[test]
fn png_palette_rules() {
    for name in ["im-palette.png", "pillow-palette.png"] {
        let mut c = png_parse(&fixture(name));
        let plte = find_chunk(&c, b"PLTE");
        let palette = c.remove(plte);
        check_png_reject(
            &png_build(&c),
            "colour type 3 needs a PLTE before the first IDAT",
        );
        // Moved after IDAT, the palette comes too late for the first IDAT.
        let idat = find_chunk(&c, b"IDAT");
        c.insert(idat + 1, palette.clone());
        check_png_reject(
            &png_build(&c),
            "colour type 3 needs a PLTE before the first IDAT",
        );
        // Two palettes.
        let mut c = png_parse(&fixture(name));
        c.insert(plte, palette.clone());
        check_png_reject(&png_build(&c), "second PLTE");
        // Bad palette length.
        let mut c = png_parse(&fixture(name));
        c[plte].data.push(0);
        check_png_reject(&png_build(&c), "invalid palette length");
    }
    // PLTE forbidden for grey (0) and grey+alpha (4); optional for truecolour.
    for name in ["pillow-bilevel.png", "pillow-gray-alpha.png"] {
        let mut c = png_parse(&fixture(name));
        c.insert(1, chunk(b"PLTE", &[0; 6]));
        check_png_reject(&png_build(&c), "PLTE is not allowed for colour type");
    }
    let mut c = png_parse(&fixture("pillow-text.png"));
    c.insert(1, chunk(b"PLTE", &[0; 6]));
    assert_eq!(one_shot(Kind::Png, &limits(), &png_build(&c)), Ok(()));
    // A suggested palette must still come before IDAT.
    let mut c = png_parse(&fixture("pillow-text.png"));
    let idat = find_chunk(&c, b"IDAT");
    c.insert(idat + 1, chunk(b"PLTE", &[0; 6]));
    check_png_reject(&png_build(&c), "PLTE after IDAT");
}

#[test]
fn png_dimensions_and_limits() {
    let bytes = fixture("pillow-bilevel.png"); // 70 x 46 = 3220 pixels
    let dims = |w: u32, h: u32| {
        with_ihdr(&bytes, |d| {
            d[..4].copy_from_slice(&w.to_be_bytes());
            d[4..8].copy_from_slice(&h.to_be_bytes());
        })
    };
    let e = check_png_reject(&dims(100_000, 100_000), "exceeds the limit");
    assert_eq!(
        e.detail,
        "PNG chunk IHDR at offset 8: 100000 x 100000 = 10000000000 pixels exceeds the limit of 100000000 (inspect.max_pixels)"
    );
    check_png_reject(&dims(0, 46), "zero dimension");
    check_png_reject(&dims(70, 0), "zero dimension");
    check_png_reject(&dims(0x8000_0000, 1), "exceeds 2^31-1");
    // Against a configured limit: exactly at the limit is fine.
    let mut l = limits();
    l.max_pixels = 3220;
    assert_eq!(one_shot(Kind::Png, &l, &bytes), Ok(()));
    l.max_pixels = 3219;
    let e = check_chunking(Kind::Png, &l, &bytes, &[]).unwrap_err();
    assert!(
        e.detail
            .contains("70 x 46 = 3220 pixels exceeds the limit of 3219"),
        "{e}"
    );
}

#[test]
fn png_ihdr_fields() {
    let bytes = fixture("pillow-text.png"); // 8-bit RGB
    let patched = |idx: usize, v: u8| with_ihdr(&bytes, |d| d[idx] = v);
    check_png_reject(&patched(8, 4), "bit depth 4 is invalid for colour type 2");
    check_png_reject(&patched(9, 5), "invalid colour type 5");
    check_png_reject(&patched(9, 1), "invalid colour type 1");
    check_png_reject(&patched(10, 1), "compression method 1");
    check_png_reject(&patched(11, 1), "filter method 1");
    check_png_reject(&patched(12, 2), "interlace method 2");
    // IHDR fields that are valid but do not describe the image data: it
    // inflates to another size, or its rows are cut elsewhere.
    check_png_reject(
        &patched(8, 16),
        "PNG image data (IDAT chunks from offset 114): ",
    );
    check_png_reject(
        &patched(12, 1),
        "PNG image data (IDAT chunks from offset 114): ",
    );
    check_png_reject(
        &with_ihdr(&bytes, |d| d[7] = 45),
        "inflates to more than the 9495 bytes a 70 x 45 image of this type needs",
    );
    check_png_reject(
        &with_ihdr(&bytes, |d| d[7] = 47),
        "inflates to 9706 of the 9917 bytes a 70 x 47 image of this type needs",
    );
}

#[test]
fn png_chunk_rules() {
    let base = png_parse(&fixture("pypng-gray2-smallidat.png"));
    let idats: Vec<usize> = base
        .iter()
        .enumerate()
        .filter(|(_, c)| &c.ty == b"IDAT")
        .map(|(i, _)| i)
        .collect();
    assert!(idats.len() >= 2);
    // IDATs not consecutive: the first run ends before its zlib stream does;
    // an IDAT after the run, even empty, is out of place.
    let mut c = base.clone();
    c.insert(idats[1], chunk(b"tEXt", b"k\0v"));
    check_png_reject(
        &png_build(&c),
        "PNG image data (IDAT chunks from offset 33): ends before its zlib stream does",
    );
    let mut c = base.clone();
    let last = *idats.last().unwrap();
    c.insert(last + 1, chunk(b"IDAT", b""));
    c.insert(last + 1, chunk(b"tEXt", b"k\0v"));
    check_png_reject(&png_build(&c), "IDAT chunks are not consecutive");
    // Unknown critical chunk, anywhere.
    for at in [1, idats[0], base.len() - 1] {
        let mut c = base.clone();
        c.insert(at, chunk(b"ZZZZ", b"data"));
        check_png_reject(&png_build(&c), "unknown critical chunk");
    }
    // Unknown ancillary chunks (any case of the other letters) are fine.
    let mut c = base.clone();
    c.insert(1, chunk(b"zzZZ", b"data"));
    c.insert(1, chunk(b"prIV", b""));
    c.insert(c.len() - 1, chunk(b"eXIf", b"MM\0*\0\0\0\x08\0\0"));
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &png_build(&c), &[]),
        Ok(())
    );
    // Type bytes must be letters.
    let mut c = base.clone();
    c.insert(1, chunk(b"te1t", b""));
    check_png_reject(&png_build(&c), "chunk type is not four ASCII letters");
    // No IDAT at all; no IEND at all; IEND with data.
    let c: Vec<PngChunk> = base.iter().filter(|c| &c.ty != b"IDAT").cloned().collect();
    check_png_reject(&png_build(&c), "no IDAT before IEND");
    let c: Vec<PngChunk> = base.iter().filter(|c| &c.ty != b"IEND").cloned().collect();
    check_png_reject(&png_build(&c), "no IEND chunk");
    let mut c = base.clone();
    c.last_mut().unwrap().data.push(0);
    check_png_reject(&png_build(&c), "length 1 (must be 0)");
    // Bad signature.
    let mut bad = fixture("pillow-bilevel.png");
    bad[4] = b'\n';
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &bad, &[]),
        Err(Rejection::malformed("PNG at offset 0: bad signature"))
    );
}

/// Chunks whose data length the PNG specification (third edition) fixes: a
/// wrong length is refused even with the CRC right, in any chunking; the
/// right one passes. sBIT's and bKGD's depend on the IHDR's colour type.
#[test]
fn png_fixed_length_chunks() {
    // (fixture, its colour type)
    let bases = [
        ("pypng-adam7-1x1-gray1.png", 0u8),
        ("pypng-adam7-5x7-rgb8.png", 2),
        ("pypng-adam7-17x3-palette2.png", 3),
        ("pypng-adam7-2x13-graya8.png", 4),
        ("pypng-adam7-9x9-rgba16.png", 6),
    ];
    for (name, colour) in bases {
        let base = png_parse(&fixture(name));
        assert_eq!(base[0].data[9], colour, "{name}");
        let sbit = [1, 0, 3, 3, 2, 0, 4][colour as usize];
        let bkgd = [2, 0, 6, 1, 2, 0, 6][colour as usize];
        let mut cases: Vec<(&[u8; 4], usize)> = vec![(b"sBIT", sbit), (b"bKGD", bkgd)];
        if colour == 0 {
            cases.extend([
                (b"gAMA", 4),
                (b"cHRM", 32),
                (b"sRGB", 1),
                (b"pHYs", 9),
                (b"tIME", 7),
                (b"cICP", 4),
                (b"mDCV", 24),
                (b"mDCv", 24),
                (b"cLLI", 8),
                (b"cLLi", 8),
                (b"acTL", 8),
            ]);
        }
        for (ty, n) in cases {
            let with = |len: usize| {
                let mut c = base.clone();
                c.insert(1, chunk(ty, &vec![1; len]));
                png_build(&c)
            };
            assert_eq!(
                check_chunking(Kind::Png, &limits(), &with(n), &[]),
                Ok(()),
                "{name}: {}",
                String::from_utf8_lossy(ty)
            );
            for bad in [0, n - 1, n + 1, 4 * n] {
                if bad == n {
                    continue;
                }
                let e = check_png_reject(&with(bad), "");
                assert_eq!(
                    e.detail,
                    format!(
                        "PNG chunk {} at offset 33: length {bad} (must be {n}{})",
                        String::from_utf8_lossy(ty),
                        if matches!(ty, b"sBIT" | b"bKGD") {
                            format!(" for colour type {colour}")
                        } else {
                            String::new()
                        }
                    ),
                    "{name}"
                );
            }
        }
    }
    // Other cases of the letters are other (unknown, ancillary) chunks:
    // free, as are private chunks.
    let base = png_parse(&fixture("pypng-adam7-1x1-gray1.png"));
    let mut c = base.clone();
    for ty in [b"gAMa", b"sRGb", b"pHYS", b"tIMe", b"acTl", b"prIV"] {
        c.insert(1, chunk(ty, b"12345"));
    }
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &png_build(&c), &[]),
        Ok(())
    );
}

// ---------------------------------------------------------------------------
// PNG compressed data: inflated, to the byte
// ---------------------------------------------------------------------------

/// A 10 x 10 8-bit grey PNG whose IDAT chunks hold `idats`.
fn gray10(idats: &[&[u8]]) -> Vec<u8> {
    let mut ihdr = 10u32.to_be_bytes().to_vec();
    ihdr.extend(10u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    let mut c = vec![chunk(b"IHDR", &ihdr)];
    c.extend(idats.iter().map(|d| chunk(b"IDAT", d)));
    c.push(chunk(b"IEND", b""));
    png_build(&c)
}

/// The 110 bytes of a 10 x 10 8-bit grey image: each row a filter type
/// (all five in turn) and ten bytes.
fn rows10() -> Vec<u8> {
    (0..10u8)
        .flat_map(|r| std::iter::once(r % 5).chain((0..10u8).map(move |x| x * 25 + r)))
        .collect()
}

const IDAT10: &str = "PNG image data (IDAT chunks from offset 33): ";

/// `check_chunking` for bodies that inflate to megabytes (each run inflates
/// them again): one piece, 16 KiB and 4093-byte pieces, and splits around
/// every chunk boundary; the scanner and the inspector agree.
fn check_png_few(bytes: &[u8]) -> Result<(), Rejection> {
    let l = limits();
    let expected = one_shot(Kind::Png, &l, bytes);
    for size in [16 * 1024, 4093] {
        let pieces: Vec<&[u8]> = bytes.chunks(size).collect();
        assert_eq!(
            run_pieces(Kind::Png, &l, &pieces),
            expected,
            "{size}-byte pieces"
        );
    }
    for k in png_offsets(&png_parse(bytes)) {
        for k in [k - 1, k + 9] {
            let got = run_pieces(Kind::Png, &l, &[&bytes[..k], &bytes[k..]]);
            assert_eq!(got, expected, "split at {k}");
        }
    }
    assert_eq!(one_shot(Kind::Inspect(MediaType::Png), &l, bytes), expected);
    expected
}

#[test]
fn png_image_data_must_inflate_to_exactly_the_image() {
    let rows = rows10();
    let z = zlib(&rows);
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &gray10(&[&z]), &[]),
        Ok(())
    );
    // Spread over many IDAT chunks, empty ones among them.
    let pieces: Vec<&[u8]> = std::iter::once(&[][..])
        .chain(z.chunks(7))
        .chain([&[][..]])
        .collect();
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &gray10(&pieces), &[]),
        Ok(())
    );

    let too_long =
        format!("{IDAT10}inflates to more than the 110 bytes a 10 x 10 image of this type needs");
    check_png_reject(&gray10(&[&zlib(&[&rows[..], &[0]].concat())]), &too_long);
    // A bomb: 64 MiB of zeros behind a 10 x 10 image.
    let bomb = zlib(&vec![0; 64 << 20]);
    assert!(bomb.len() < 100_000);
    let e = check_png_reject(&gray10(&[&bomb]), &too_long);
    assert_eq!(e.detail, too_long);
    check_png_reject(
        &gray10(&[&zlib(&rows[..99])]),
        &format!("{IDAT10}inflates to 99 of the 110 bytes a 10 x 10 image of this type needs"),
    );
    let mut bad_filter = rows.clone();
    bad_filter[3 * 11] = 5;
    check_png_reject(
        &gray10(&[&zlib(&bad_filter)]),
        &format!("{IDAT10}row 3 has filter type 5 (0-4 are defined)"),
    );
    // Cut short: the stream (or its checksum) does not end in the IDAT run.
    for cut in [1, 4, 20] {
        check_png_reject(
            &gray10(&[&z[..z.len() - cut]]),
            &format!("{IDAT10}ends before its zlib stream does"),
        );
    }
    // A wrong Adler-32, damaged data, no zlib header, not zlib at all.
    let invalid = format!("{IDAT10}not a valid zlib stream (corrupt data or checksum)");
    let mut bad_sum = z.clone();
    *bad_sum.last_mut().unwrap() ^= 1;
    check_png_reject(&gray10(&[&bad_sum]), &invalid);
    let mut raw_deflate = z.clone();
    raw_deflate.drain(..2);
    check_png_reject(&gray10(&[&raw_deflate]), &invalid);
    check_png_reject(&gray10(&[b"xyz"]), &invalid);
    check_png_reject(&gray10(&[b"PK\x03\x04 not an image"]), &invalid);
    // Anything after the end of the stream, in its chunk or in the next.
    let extra = format!("{IDAT10}data after the end of its zlib stream");
    check_png_reject(&gray10(&[&[&z[..], b"<html>"].concat()]), &extra);
    check_png_reject(&gray10(&[&z, b"\0"]), &extra);
    // A damaged IDAT is still a CRC mismatch first.
    let mut damaged = gray10(&[&z]);
    damaged[33 + 8 + 5] ^= 0x40;
    let e = check_png_reject(&damaged, "");
    assert_eq!(e.detail, "PNG chunk IDAT at offset 33: CRC mismatch");
}

#[test]
fn png_animation_frames_are_checked_like_the_image() {
    // pillow-apng.png: IHDR, acTL, fcTL, IDAT, fcTL, fdAT, fcTL, fdAT, IEND;
    // three 70 x 46 frames.
    let base = png_parse(&fixture("pillow-apng.png"));
    let at = |ty: &[u8; 4], n: usize| {
        base.iter()
            .enumerate()
            .filter(|(_, c)| &c.ty == ty)
            .nth(n)
            .map(|(i, _)| i)
            .unwrap()
    };
    let offsets = png_offsets(&base);
    let (fctl0, fctl1, fdat0, fdat1) = (
        at(b"fcTL", 0),
        at(b"fcTL", 1),
        at(b"fdAT", 0),
        at(b"fdAT", 1),
    );
    let patched = |idx: usize, f: &dyn Fn(&mut Vec<u8>)| {
        let mut c = base.clone();
        f(&mut c[idx].data);
        png_build(&c)
    };
    let set_u32 = |d: &mut Vec<u8>, i: usize, v: u32| d[i..i + 4].copy_from_slice(&v.to_be_bytes());
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &png_build(&base), &[]),
        Ok(())
    );

    check_png_reject(
        &patched(fctl1, &|d| set_u32(d, 12, 1)),
        "frame 70 x 46 at (1, 0) leaves the 70 x 46 image",
    );
    check_png_reject(
        &patched(fctl0, &|d| set_u32(d, 4, 69)),
        "the fcTL before IDAT must frame the whole 70 x 46 image",
    );
    // A frame one row shorter than its data, one pixel narrower.
    let frame0 = format!(
        "PNG frame data (fdAT chunks from offset {}): ",
        offsets[fdat0]
    );
    check_png_reject(
        &patched(fctl1, &|d| set_u32(d, 8, 45)),
        &format!("{frame0}inflates to more than the 9495 bytes a 70 x 45 image of this type needs"),
    );
    check_png_reject(
        &patched(fctl1, &|d| set_u32(d, 4, 69)),
        &format!("{frame0}row 13 has filter type 252 (0-4 are defined)"),
    );
    check_png_reject(
        &patched(fctl1, &|d| d[24] = 3),
        "dispose_op 3 (0-2 are defined)",
    );
    // Damaged frame data (CRC recomputed), the sequence number aside.
    check_png_reject(
        &patched(fdat1, &|d| {
            let mid = d.len() / 2;
            d[mid] ^= 0xFF;
        }),
        &format!(
            "PNG frame data (fdAT chunks from offset {}): ",
            offsets[fdat1]
        ),
    );
    let seq_only = patched(fdat0, &|d| d[..4].copy_from_slice(&[9, 9, 9, 9]));
    assert_eq!(check_chunking(Kind::Png, &limits(), &seq_only, &[]), Ok(()));
    // A frame announced and never given data; data with no frame announced.
    let mut c = base.clone();
    c.remove(fdat1);
    check_png_reject(
        &png_build(&c),
        &format!(
            "the frame announced by the fcTL at offset {} has no fdAT data",
            offsets[at(b"fcTL", 2)]
        ),
    );
    let mut c = base.clone();
    c.remove(fdat0);
    check_png_reject(
        &png_build(&c),
        &format!(
            "the frame announced by the fcTL at offset {} has no fdAT data",
            offsets[fctl1]
        ),
    );
    let mut c = base.clone();
    c.remove(fctl1);
    check_png_reject(&png_build(&c), "fdAT without an fcTL announcing its frame");
    // fdAT before IDAT.
    let mut c = base.clone();
    let f = c.remove(fdat0);
    c.insert(fctl0, f);
    check_png_reject(&png_build(&c), "fdAT before the image data (IDAT)");
    // The frames' pixels count together against max_pixels.
    let mut l = limits();
    l.max_pixels = 3 * 70 * 46;
    assert_eq!(
        check_chunking(Kind::Png, &l, &png_build(&base), &[]),
        Ok(())
    );
    l.max_pixels -= 1;
    let e = check_chunking(Kind::Png, &l, &png_build(&base), &[]).unwrap_err();
    assert_eq!(
        e.detail,
        format!(
            "PNG chunk fcTL at offset {}: the animation's frames total 9660 pixels, over the \
             limit of 9659 (inspect.max_pixels)",
            offsets[at(b"fcTL", 2)]
        )
    );
}

#[test]
fn png_compressed_text_and_icc_chunks_are_inflated_and_bounded() {
    // pillow-ztxt-iccp.png: IHDR, iCCP, zTXt, IDAT, IEND.
    let base = png_parse(&fixture("pillow-ztxt-iccp.png"));
    let offsets = png_offsets(&base);
    let with = |extra: Vec<PngChunk>| {
        let mut c = base.clone();
        for (k, x) in extra.into_iter().enumerate() {
            c.insert(3 + k, x);
        }
        png_build(&c)
    };
    let at = offsets[3];
    let ztxt = |key: &[u8], method: u8, data: &[u8]| {
        chunk(b"zTXt", &[key, b"\0", &[method], data].concat())
    };
    let text = zlib(b"a comment");
    assert_eq!(
        check_chunking(
            Kind::Png,
            &limits(),
            &with(vec![ztxt(b"Comment", 0, &text)]),
            &[]
        ),
        Ok(())
    );
    // iTXt: compressed or not.
    let itxt = |flag: u8, method: u8, data: &[u8]| {
        chunk(
            b"iTXt",
            &[&b"Title\0"[..], &[flag, method], b"fr\0Titre\0", data].concat(),
        )
    };
    assert_eq!(
        check_chunking(
            Kind::Png,
            &limits(),
            &with(vec![itxt(0, 0, "été".as_bytes())]),
            &[]
        ),
        Ok(())
    );
    assert_eq!(
        check_chunking(Kind::Png, &limits(), &with(vec![itxt(1, 0, &text)]), &[]),
        Ok(())
    );

    let here = |what: &str| format!("PNG chunk zTXt at offset {at}: {what}");
    // Bombs: one chunk, or several, past 8 000 000 bytes in all.
    let past = here("compressed text and ICC profile chunks inflate past 8000000 bytes in total");
    let e = check_png_few(&with(vec![ztxt(
        b"Comment",
        0,
        &zlib(&vec![b' '; 8_000_001]),
    )]));
    assert_eq!(e.unwrap_err().detail, past);
    let four = zlib(&vec![b' '; 4_000_000]);
    assert_eq!(
        check_png_few(&with(vec![
            ztxt(b"a", 0, &four),
            ztxt(b"b", 0, &zlib(&vec![b' '; 3_990_000]))
        ])),
        Ok(()),
        "the fixture's own iCCP and zTXt inflate to under 10 000 bytes"
    );
    let e = check_png_few(&with(vec![ztxt(b"a", 0, &four), ztxt(b"b", 0, &four)])).unwrap_err();
    assert!(e.detail.contains("inflate past 8000000 bytes"), "{e}");
    assert!(
        e.detail
            .contains(&format!("zTXt at offset {}", at + 12 + 3 + four.len())),
        "{e}"
    );
    // Broken streams.
    let mut bad = text.clone();
    *bad.last_mut().unwrap() ^= 1;
    check_png_reject(
        &with(vec![ztxt(b"Comment", 0, &bad)]),
        &here("compressed data is not a valid zlib stream"),
    );
    check_png_reject(
        &with(vec![ztxt(b"Comment", 0, b"plain text")]),
        &here("compressed data is not a valid zlib stream"),
    );
    check_png_reject(
        &with(vec![ztxt(b"Comment", 0, &text[..text.len() - 2])]),
        &here("compressed data ends before its zlib stream does"),
    );
    check_png_reject(
        &with(vec![ztxt(
            b"Comment",
            0,
            &[&text[..], b"PK\x03\x04"].concat(),
        )]),
        &here("data after the end of its zlib stream"),
    );
    // The header.
    check_png_reject(
        &with(vec![ztxt(b"Comment", 1, &text)]),
        &here("unknown compression method 1"),
    );
    check_png_reject(&with(vec![ztxt(b"", 0, &text)]), &here("empty keyword"));
    check_png_reject(
        &with(vec![ztxt(&[b'k'; 80], 0, &text)]),
        &here("keyword longer than 79 bytes"),
    );
    assert_eq!(
        check_chunking(
            Kind::Png,
            &limits(),
            &with(vec![ztxt(&[b'k'; 79], 0, &text)]),
            &[]
        ),
        Ok(())
    );
    check_png_reject(
        &with(vec![chunk(b"zTXt", b"Comment")]),
        &here("the chunk ends inside its header"),
    );
    check_png_reject(
        &with(vec![chunk(b"zTXt", b"")]),
        &here("the chunk ends inside its header"),
    );
    let itxt_at = |what: &str| format!("PNG chunk iTXt at offset {at}: {what}");
    check_png_reject(
        &with(vec![itxt(2, 0, &text)]),
        &itxt_at("compression flag 2 (must be 0 or 1)"),
    );
    check_png_reject(
        &with(vec![itxt(1, 8, &text)]),
        &itxt_at("unknown compression method 8"),
    );
    check_png_reject(
        &with(vec![itxt(1, 0, b"not zlib")]),
        &itxt_at("compressed data is not a valid zlib stream"),
    );
    check_png_reject(
        &with(vec![chunk(b"iTXt", b"Title\0\x01\0fr")]),
        &itxt_at("the chunk ends inside its header"),
    );
    // The fixture's ICC profile, damaged with its CRC recomputed, then not.
    let mut c = base.clone();
    assert_eq!(&c[1].ty, b"iCCP");
    let n = c[1].data.len();
    c[1].data[n - 10] ^= 0x10;
    check_png_reject(
        &png_build(&c),
        "PNG chunk iCCP at offset 33: compressed data ",
    );
    let mut raw = fixture("pillow-ztxt-iccp.png");
    raw[33 + 8 + n - 10] ^= 0x10;
    let e = check_png_reject(&raw, "");
    assert_eq!(e.detail, "PNG chunk iCCP at offset 33: CRC mismatch");
}

// ---------------------------------------------------------------------------
// JPEG corruptions
// ---------------------------------------------------------------------------

fn check_jpeg(bytes: &[u8]) -> Result<(), Rejection> {
    let r = check_chunking(Kind::Jpeg, &limits(), bytes, &[]);
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        assert_eq!(
            check_chunking(Kind::Inspect(MediaType::Jpeg), &limits(), bytes, &[]),
            r
        );
    }
    r
}

fn check_jpeg_reject(bytes: &[u8], needle: &str) -> Rejection {
    expect_malformed(check_jpeg(bytes), needle)
}

/// [`check_jpeg`] with extra split points (for bodies over 4 KiB, where only some
/// offsets are tried).
fn check_jpeg_at(bytes: &[u8], extra: &[usize]) -> Result<(), Rejection> {
    let r = check_chunking(Kind::Jpeg, &limits(), bytes, extra);
    assert_eq!(
        check_chunking(Kind::Inspect(MediaType::Jpeg), &limits(), bytes, extra),
        r
    );
    r
}

/// `image` followed by `trailer`, checked for chunking invariance where the
/// trailer logic lives: every two-chunk split from just before the EOI to the
/// end, byte-at-a-time and 3-byte chunking of the whole body, and the same
/// verdict through the `Inspector`. Cheaper than [`check_jpeg`] (which also
/// splits inside the image) for many small trailers.
fn check_jpeg_trailer(image: &[u8], trailer: &[u8]) -> Result<(), Rejection> {
    let body = concat(&[image, trailer]);
    let expected = one_shot(Kind::Jpeg, &limits(), &body);
    for k in image.len() - 4..=body.len() {
        let got = run_pieces(Kind::Jpeg, &limits(), &[&body[..k], &body[k..]]);
        assert_eq!(got, expected, "split at {k} of {}", body.len());
    }
    for size in [1usize, 3] {
        let pieces: Vec<&[u8]> = body.chunks(size).collect();
        assert_eq!(
            run_pieces(Kind::Jpeg, &limits(), &pieces),
            expected,
            "{size}-byte chunks"
        );
    }
    let inspect = Kind::Inspect(MediaType::Jpeg);
    assert_eq!(one_shot(inspect, &limits(), &body), expected, "inspector");
    expected
}

/// UTF-16 little-endian code units of an ASCII string (NUL after every byte).
fn utf16le(s: &[u8]) -> Vec<u8> {
    s.iter().flat_map(|&b| [b, 0]).collect()
}

/// UTF-16 big-endian code units of an ASCII string (NUL before every byte).
fn utf16be(s: &[u8]) -> Vec<u8> {
    s.iter().flat_map(|&b| [0, b]).collect()
}

#[test]
fn jpeg_every_truncation_rejected() {
    for name in JPEGS {
        let bytes = fixture(name);
        for k in 0..bytes.len() {
            let e =
                one_shot(Kind::Jpeg, &limits(), &bytes[..k]).expect_err("truncated JPEG accepted");
            assert_eq!(e.code, RejectCode::MalformedImage, "{name} cut at {k}");
        }
        // A few cuts at every split, with their details.
        let n = bytes.len();
        check_jpeg_reject(
            &bytes[..n - 2],
            &format!(
                "JPEG truncated at offset {} inside entropy-coded data",
                n - 2
            ),
        );
        check_jpeg_reject(&bytes[..n - 1], "inside entropy-coded data");
        check_jpeg_reject(&bytes[..n / 2], "missing EOI");
        check_jpeg_reject(&bytes[..30], "truncated");
    }
    assert_eq!(
        one_shot(Kind::Jpeg, &limits(), b""),
        Err(Rejection::malformed("JPEG: empty body"))
    );
}

#[test]
fn jpeg_bad_segment_length() {
    let bytes = fixture("im-baseline.jpg");
    let (dqt, _, len) = first_segment(&bytes, |m| m == 0xDB);
    for bad_len in [0u16, 1] {
        let mut bad = bytes.clone();
        bad[dqt + 2..dqt + 4].copy_from_slice(&bad_len.to_be_bytes());
        let e = check_jpeg_reject(&bad, "invalid length");
        assert_eq!(
            e.detail,
            format!("JPEG DQT segment at offset {dqt}: invalid length {bad_len}")
        );
    }
    // Too long by one / too short by one: the DQT's tables say so (the
    // next marker's FF read as a table's Pq/Tq, or a table cut short) ...
    for (delta, detail) in [
        (1i32, "quantization table precision 15 (0 or 1)".to_string()),
        (
            -1,
            format!(
                "length {} inconsistent with its quantization tables",
                len - 1
            ),
        ),
    ] {
        let mut bad = bytes.clone();
        bad[dqt + 2..dqt + 4].copy_from_slice(&((len as i32 + delta) as u16).to_be_bytes());
        let e = check_jpeg_reject(&bad, "");
        assert_eq!(
            e.detail,
            format!("JPEG DQT segment at offset {dqt}: {detail}")
        );
    }
    // ... and a segment whose content is not checked misaligns the next marker.
    let (app0, _, app0_len) = first_segment(&bytes, |m| m == 0xE0);
    for delta in [1i32, -1] {
        let mut bad = bytes.clone();
        bad[app0 + 2..app0 + 4].copy_from_slice(&((app0_len as i32 + delta) as u16).to_be_bytes());
        check_jpeg_reject(&bad, "expected a marker");
    }
    // A length running past the end of the body.
    let mut bad = bytes[..app0 + 100].to_vec();
    bad[app0 + 2..app0 + 4].copy_from_slice(&0xFFFFu16.to_be_bytes());
    check_jpeg_reject(
        &bad,
        &format!(
            "JPEG APP0 segment at offset {app0}: truncated at offset {}",
            app0 + 100
        ),
    );
    // SOF / SOS lengths inconsistent with their component counts.
    let (sof, _, _) = first_segment(&bytes, is_sof);
    let mut bad = bytes.clone();
    bad[sof + 9] = 2; // Nf 3 -> 2 with the length of 3
    check_jpeg_reject(&bad, "components inconsistent with length");
    let (sos, _, _) = first_segment(&bytes, |m| m == 0xDA);
    let mut bad = bytes.clone();
    bad[sos + 4] = 2; // Ns 3 -> 2
    check_jpeg_reject(&bad, "components inconsistent with length");
    let mut bad = bytes.clone();
    bad[sos + 5] = 9; // component id not in the frame
    check_jpeg_reject(&bad, "component 9 is not in the frame");
}

/// DQT and DHT segments whose length contradicts their tables (libjpeg:
/// "Bogus marker length", "Bogus Huffman table definition"), at every split.
#[test]
fn jpeg_table_segments_match_their_lengths() {
    let bytes = fixture("im-baseline.jpg");
    let after_soi = |seg: &[u8]| concat(&[&bytes[..2], seg, &bytes[2..]]);
    // A DQT with 10 of its 64 values; a DHT of 200 codes holding 1.
    let dqt = concat(&[b"\xFF\xDB\x00\x0D\x00", &[1; 10]]);
    let e = check_jpeg_reject(&after_soi(&dqt), "");
    assert_eq!(
        e.detail,
        "JPEG DQT segment at offset 2: length 13 inconsistent with its quantization tables"
    );
    let dht = concat(&[b"\xFF\xC4\x00\x14\x00", &[0; 15], &[200, 0]]);
    let e = check_jpeg_reject(&after_soi(&dht), "");
    assert_eq!(
        e.detail,
        "JPEG DHT segment at offset 2: length 20 inconsistent with its Huffman tables"
    );
    // The fixture's own tables, damaged: a precision of 2, one code more.
    let (q, _, _) = first_segment(&bytes, |m| m == 0xDB);
    let mut bad = bytes.clone();
    bad[q + 4] = 0x20;
    check_jpeg_reject(
        &bad,
        &format!("JPEG DQT segment at offset {q}: quantization table precision 2 (0 or 1)"),
    );
    let (h, _, _) = first_segment(&bytes, |m| m == 0xC4);
    let mut bad = bytes.clone();
    bad[h + 5] += 1;
    check_jpeg_reject(&bad, &format!("JPEG DHT segment at offset {h}: "));
    // A DHT between the scans of a progressive file (reached from entropy data).
    let prog = fixture("im-progressive.jpg");
    let (sos, _, _) = first_segment(&prog, |m| m == 0xDA);
    let h = sos
        + prog[sos..]
            .windows(2)
            .position(|w| w == [0xFF, 0xC4])
            .unwrap();
    let mut bad = prog.clone();
    bad[h + 5] += 1;
    check_jpeg_reject(&bad, &format!("JPEG DHT segment at offset {h}: "));
}

#[test]
fn jpeg_missing_sof() {
    for name in [
        "im-baseline.jpg",
        "im-progressive.jpg",
        "cjpeg-arithmetic.jpg",
    ] {
        let bytes = fixture(name);
        let (sof, _, len) = first_segment(&bytes, is_sof);
        let bad = concat(&[&bytes[..sof], &bytes[sof + 2 + len..]]);
        check_jpeg_reject(&bad, "no SOF (frame header) before the first scan");
    }
    // A second frame header in one image.
    let bytes = fixture("im-gray.jpg");
    let (sof, _, len) = first_segment(&bytes, is_sof);
    let seg = &bytes[sof..sof + 2 + len];
    let bad = concat(&[&bytes[..sof + 2 + len], seg, &bytes[sof + 2 + len..]]);
    check_jpeg_reject(&bad, "second frame header");
}

#[test]
fn jpeg_dimensions_and_limits() {
    let bytes = fixture("im-baseline.jpg"); // 70 x 46
    let (sof, _, _) = first_segment(&bytes, is_sof);
    check_jpeg_reject(&jpeg_with_dims(&bytes, 0, 46), "zero dimension (0 x 46)");
    check_jpeg_reject(&jpeg_with_dims(&bytes, 70, 0), "zero dimension (70 x 0)");
    let e = check_jpeg_reject(&jpeg_with_dims(&bytes, 65535, 65535), "exceeds the limit");
    assert_eq!(
        e.detail,
        format!(
            "JPEG SOF0 at offset {sof}: 65535 x 65535 = 4294836225 pixels exceeds the limit of 100000000 (inspect.max_pixels)"
        )
    );
    let mut l = limits();
    l.max_pixels = 3220;
    assert_eq!(one_shot(Kind::Jpeg, &l, &bytes), Ok(()));
    l.max_pixels = 3219;
    let e = check_chunking(Kind::Jpeg, &l, &bytes, &[]).unwrap_err();
    assert!(
        e.detail
            .contains("70 x 46 = 3220 pixels exceeds the limit of 3219"),
        "{e}"
    );
    // Precision, sampling factors.
    let mut bad = bytes.clone();
    bad[sof + 4] = 0;
    check_jpeg_reject(&bad, "invalid sample precision 0");
    let mut bad = bytes.clone();
    bad[sof + 11] = 0x51;
    check_jpeg_reject(&bad, "invalid sampling factors");
}

#[test]
fn jpeg_marker_rules() {
    let bytes = fixture("im-baseline.jpg");
    let (dqt, _, _) = first_segment(&bytes, |m| m == 0xDB);
    let ins = |what: &[u8]| concat(&[&bytes[..dqt], what, &bytes[dqt..]]);
    // Fill bytes before a marker, standalone markers between segments: fine.
    assert_eq!(check_jpeg(&ins(&[0xFF, 0xFF, 0xFF])), Ok(()));
    assert_eq!(check_jpeg(&ins(&[0xFF, 0x01, 0xFF, 0xD3])), Ok(()));
    // COM and APPn may contain anything, even markers and other formats.
    let mut com = vec![0xFF, 0xFE, 0x00, 0x00];
    com.extend_from_slice(b"\xFF\xD9\xFF\xD8PK\x03\x04%PDF<html>");
    let n = (com.len() - 2) as u16;
    com[2..4].copy_from_slice(&n.to_be_bytes());
    assert_eq!(check_jpeg(&ins(&com)), Ok(()));
    let app15 = [&[0xFF, 0xEF, 0x00, 0x02][..]].concat();
    assert_eq!(check_jpeg(&ins(&app15)), Ok(()));
    // Garbage between segments.
    let e = check_jpeg_reject(&ins(b"\x00"), "expected a marker, found byte 00");
    assert_eq!(
        e.detail,
        format!("JPEG at offset {dqt}: expected a marker, found byte 00")
    );
    check_jpeg_reject(
        &ins(&[0xFF, 0x00]),
        "stuffed FF 00 outside entropy-coded data",
    );
    check_jpeg_reject(&ins(&[0xFF, 0xD8]), "unexpected SOI");
    check_jpeg_reject(&ins(&[0xFF, 0x42, 0x00, 0x02]), "reserved marker FF 42");
    check_jpeg_reject(
        &ins(&[0xFF, 0xDD, 0x00, 0x05, 0, 0, 0]),
        "inconsistent with a restart interval",
    );
    // EOI before any scan.
    check_jpeg_reject(&ins(&[0xFF, 0xD9]), "no SOF");
    let (sos, _, _) = first_segment(&bytes, |m| m == 0xDA);
    let eoi_early = concat(&[&bytes[..sos], &[0xFF, 0xD9]]);
    check_jpeg_reject(&eoi_early, "no SOS (scan) in the image");
    // Not starting with SOI.
    check_jpeg_reject(&bytes[2..], "missing SOI");
    // Entropy data: FF 00, RSTn and FF FF fill are part of the scan; another
    // marker ends it (here a COM between "scans" of a baseline file is fine too).
    let body_end = bytes.len() - 2;
    let patched = concat(&[
        &bytes[..body_end],
        &[0xFF, 0x00, 0xFF, 0xD5, 0x12, 0xFF, 0xFF, 0xD9],
    ]);
    assert_eq!(check_jpeg(&patched), Ok(()));
    let patched = concat(&[
        &bytes[..body_end],
        &[0xFF, 0xFE, 0x00, 0x03, b'x'],
        &bytes[body_end..],
    ]);
    assert_eq!(check_jpeg(&patched), Ok(()));
    // ... but a marker inside the scan that is not allowed there is caught.
    let patched = concat(&[&bytes[..body_end], &[0xFF, 0x07], &bytes[body_end..]]);
    check_jpeg_reject(
        &patched,
        &format!("JPEG at offset {body_end}: reserved marker FF 07"),
    );
}

#[test]
fn jpeg_trailers_that_look_like_files() {
    let bytes = fixture("im-baseline.jpg");
    let end = bytes.len();
    let cases: &[(&[u8], &str)] = &[
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "looks like ZIP"),
        (b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n", "looks like PDF"),
        (b"<html><body>hi</body></html>", "looks like HTML"),
        (b"<!DOCTYPE html>", "looks like HTML"),
        (b"<?xml version=\"1.0\"?>", "looks like XML"),
        (b"<script>alert(1)</script>", "looks like a script"),
        (
            b"<SVG xmlns=\"http://www.w3.org/2000/svg\">",
            "looks like SVG",
        ),
        (b"#!/bin/sh\nrm -rf /\n", "looks like a script"),
        (b"MZ\x90\x00\x03\x00", "looks like a Windows executable"),
        (b"\x89PNG\r\n\x1a\n", "looks like PNG"),
        (b"GIF89a\x01\x00", "looks like GIF"),
        (b"Rar!\x1a\x07\x00", "looks like RAR"),
        (b"7z\xBC\xAF\x27\x1C", "looks like 7-Zip"),
        (b"\x1f\x8b\x08\x00", "looks like gzip"),
        // Signatures that hold NUL bytes, as the files start.
        (b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46", "looks like xz"),
        (
            b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0",
            "looks like WebAssembly",
        ),
        (
            b"L\0\0\0\x01\x14\x02\0\0\0\0\0\xc0\0\0\0\0\0\0\x46",
            "looks like a Windows shortcut",
        ),
    ];
    for (trailer, needle) in cases {
        for lead in [&b""[..], b"\0\0\0\0", b"\r\n \t", b"\n"] {
            let bad = concat(&[&bytes, lead, trailer]);
            let e = check_jpeg_reject(&bad, needle);
            assert_eq!(
                e.detail,
                format!("JPEG: data after EOI (trailer at offset {end}) {needle}")
            );
        }
    }
    // A ZIP local header anywhere in the trailer (polyglot).
    let mut junk = pseudo_random(3000, 7);
    junk[0] = 0x42;
    junk[1500..1504].copy_from_slice(b"PK\x03\x04");
    let e = check_jpeg_reject(&concat(&[&bytes, &junk]), "ZIP local file header");
    assert_eq!(
        e.detail,
        format!(
            "JPEG: data after EOI holds a ZIP local file header at offset {}",
            end + 1500
        )
    );
    // At the very end of the trailer, too.
    let tail = concat(&[&[0x01u8; 100], b"PK\x03\x04"]);
    check_jpeg_reject(&concat(&[&bytes, &tail]), "ZIP local file header");
    // Too long a trailer.
    let e = check_jpeg_reject(
        &concat(&[&bytes, &vec![0u8; 64 * 1024 + 1]]),
        "more than 65536 bytes",
    );
    assert_eq!(
        e.detail,
        format!("JPEG: more than 65536 bytes of data after EOI (trailer at offset {end})")
    );
}

/// SPEC: a trailer holding another format's signature *anywhere* is
/// `malformed_image`, not only at its start; in any chunking.
#[test]
fn jpeg_trailer_signatures_anywhere() {
    let bytes = fixture("im-baseline.jpg");
    let end = bytes.len();
    // (signature as written in the trailer, detail it must give)
    let cases: &[(&[u8], &str)] = &[
        (b"PK\x03\x04\x14\x00", "a ZIP local file header"),
        (b"PK\x01\x02\x14\x00", "a ZIP central directory header"),
        (
            b"PK\x05\x06\x00\x00",
            "a ZIP end of central directory record",
        ),
        (b"%PDF-1.7\n", "a PDF header (%PDF)"),
        (b"<html>", "an HTML tag (<html)"),
        (b"<HTML lang=en>", "an HTML tag (<html)"),
        (b"<!doctype html>", "an HTML doctype (<!doctype)"),
        (b"<!DOCTYPE html>", "an HTML doctype (<!doctype)"),
        (b"<head>", "an HTML tag (<head)"),
        (b"<Body onload=x()>", "an HTML tag (<body)"),
        (b"<script>alert(1)</script>", "a script tag (<script)"),
        (b"<ScRiPt\tsrc=//e.example>", "a script tag (<script)"),
        (b"<iframe src=//e.example>", "an HTML tag (<iframe)"),
        (b"<svg/onload=alert(1)>", "an SVG tag (<svg)"),
        (
            b"<SVG xmlns=\"http://www.w3.org/2000/svg\">",
            "an SVG tag (<svg)",
        ),
        (
            b"<svg:svg xmlns:svg=\"http://www.w3.org/2000/svg\">",
            "an SVG tag (<svg)",
        ),
        (b"<?xml version=\"1.0\"?>", "an XML declaration (<?xml)"),
        (b"<?php system($_GET['c']); ?>", "a PHP tag (<?php)"),
        (b"<object data=x>", "an HTML tag (<object)"),
        (b"<embed src=x>", "an HTML tag (<embed)"),
        (b"<img src=x onerror=alert(1)>", "an HTML tag (<img)"),
        (b"JavaScript:alert(1)", "a javascript: URL"),
        // WHATWG MIME sniffing's HTML patterns of 4 fixed bytes or more.
        (b"<!-- x -->", "an HTML comment (<!--)"),
        (b"<div onclick=alert(1)>x</div>", "an HTML tag (<div)"),
        (b"<title>x</title>", "an HTML tag (<title)"),
        (b"<TABLE>", "an HTML tag (<table)"),
        (b"<font color=red>", "an HTML tag (<font)"),
    ];
    let mut junk = pseudo_random(600, 11);
    junk[0] = 0x01;
    for &(sig, what) in cases {
        // One leading byte, after a BOM, deep inside binary data, as UTF-16 (with
        // and without BOM), and at the very end.
        let variants: Vec<(Vec<u8>, usize)> = vec![
            (concat(&[b"X", sig]), 1),
            (concat(&[b"\x01\x02 hello ", sig, b" bye"]), 9),
            (concat(&[b"\xEF\xBB\xBFx", sig]), 4),
            (concat(&[&junk[..300], sig, &junk[300..]]), 300),
            (concat(&[b"\xFF\xFE", &utf16le(b"x"), &utf16le(sig)]), 4),
            (concat(&[b"\xFE\xFF", &utf16be(b"x"), &utf16be(sig)]), 5),
            (concat(&[&utf16le(b"ab"), &utf16le(sig)]), 4),
            (concat(&[&junk[..100], sig]), 100),
        ];
        // Right at the start (after padding or a BOM) the start-of-trailer
        // classifier may name the format first ("looks like …"): rejected either way.
        for lead in [&b""[..], b"\xEF\xBB\xBF", b"\0\0 \r\n", b"\xFF\xFE"] {
            let t = concat(&[lead, sig]);
            let e = expect_malformed(check_jpeg_trailer(&bytes, &t), "");
            assert!(e.detail.starts_with("JPEG: data after EOI"), "{e}");
        }
        for lead in [&b"\xFF\xFE"[..], b"\xFE\xFF\0", b""] {
            let t = concat(&[lead, &utf16le(sig)]);
            let e = expect_malformed(check_jpeg_trailer(&bytes, &t), "");
            assert!(e.detail.starts_with("JPEG: data after EOI"), "{e}");
        }
        for (trailer, at) in variants {
            let e = expect_malformed(check_jpeg_trailer(&bytes, &trailer), what);
            assert_eq!(
                e.detail,
                format!("JPEG: data after EOI holds {what} at offset {}", end + at),
                "trailer {trailer:?}"
            );
        }
    }
    // The brief's examples, one by one.
    for (trailer, what) in [
        (&b"X%PDF-1.4\n"[..], "a PDF header (%PDF)"),
        (b"X<script>alert(1)</script>", "a script tag (<script)"),
        (b"\xEF\xBB\xBF<html><body>", "looks like HTML"),
        (b"\xFF\xFE<\0h\0t\0m\0l\0>\0", "looks like HTML"),
        (b"\xEF\xBB\xBF\r\n%PDF-1.4", "looks like PDF"),
    ] {
        // Every split, inside the image too.
        check_jpeg_reject(&concat(&[&bytes, trailer]), what);
    }
    // Tag names after an XML namespace prefix, interpreter lines with blanks.
    for (sig, what) in [
        (
            &b"<s:svg xmlns:s=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>"[..],
            "an SVG tag (<svg) with a namespace prefix",
        ),
        (
            b"<x:script xmlns:x=\"http://www.w3.org/1999/xhtml\">alert(1)</x:script>",
            "a script tag (<script) with a namespace prefix",
        ),
        (b"#! /bin/sh\nrm -rf ~\n", "a script (#!/bin/)"),
    ] {
        for (trailer, at) in [
            (concat(&[b"\x01", sig]), 1),
            (concat(&[&junk[..300], sig, &junk[300..]]), 300),
            (concat(&[b"\xFF\xFE", &utf16le(b"x"), &utf16le(sig)]), 4),
        ] {
            let e = expect_malformed(check_jpeg_trailer(&bytes, &trailer), what);
            assert_eq!(
                e.detail,
                format!("JPEG: data after EOI holds {what} at offset {}", end + at),
            );
        }
    }
    // A signature straddling a 16 KiB chunk boundary far into a long trailer.
    let mut long = pseudo_random(40_000, 5);
    long[0] = 0x01;
    let at = 16 * 1024 - end - 2;
    long[at..at + 8].copy_from_slice(b"<svg\n/>x");
    let body = concat(&[&bytes, &long]);
    let e = expect_malformed(check_jpeg_at(&body, &[end + at, 16 * 1024]), "<svg");
    assert_eq!(
        e.detail,
        format!(
            "JPEG: data after EOI holds an SVG tag (<svg) at offset {}",
            end + at
        )
    );
}

/// What stays accepted: tag-like text that is no tag (a tag name must end at
/// whitespace, `/`, `>` or `:`), signatures cut off by the end of the body, and
/// big trailers of random binary (see the false-positive note in `jpeg.rs`).
#[test]
fn jpeg_trailers_near_signatures_accepted() {
    let bytes = fixture("im-baseline.jpg");
    for t in [
        &b"\x01<svgx <htmlfoo <scripted <headers"[..],
        b"\x01 %PD %pdf PK\x03\x05 PK\x04\x03",
        b"\x01 javascript alert",
        b"\x01<svg",
        b"\x01<scrip",
        b"\x01PK\x05",
        b"\x01 < html>",
        b"\x01<s:svgx <:svg <1:svg ",
        b"\x01#! bin/sh #! /opt/x",
        // WHATWG patterns of under 4 fixed bytes are left out (jpeg.rs has
        // the arithmetic): random binary would match them too often.
        b"\x01<br> <h1>x</h1> <a href=x> <b>x</b> <p>x</p>",
    ] {
        assert_eq!(check_jpeg(&concat(&[&bytes, t])), Ok(()), "trailer {t:?}");
    }
    // 64 KiB of random binary (compressed or encrypted maker data), many seeds.
    for seed in 1..=24u64 {
        let mut junk = pseudo_random(64 * 1024, seed);
        junk[0] = 0x01;
        let body = concat(&[&bytes, &junk]);
        assert_eq!(
            one_shot(Kind::Jpeg, &limits(), &body),
            Ok(()),
            "seed {seed}"
        );
    }
    let mut junk = pseudo_random(64 * 1024, 99);
    junk[0] = 0x01;
    let body = concat(&[&bytes, &junk]);
    for size in [1usize, 7, 16 * 1024] {
        let pieces: Vec<&[u8]> = body.chunks(size).collect();
        assert_eq!(run_pieces(Kind::Jpeg, &limits(), &pieces), Ok(()), "{size}");
    }
}

#[test]
fn jpeg_camera_trailers_accepted() {
    let bytes = fixture("im-baseline.jpg");
    let zeros = vec![0u8; 4096];
    assert_eq!(check_jpeg(&concat(&[&bytes, &zeros])), Ok(()));
    assert_eq!(
        check_jpeg(&concat(&[&bytes, &vec![0u8; 64 * 1024]])),
        Ok(())
    );
    // Random-ish maker-note-style binary.
    let mut junk = pseudo_random(3000, 42);
    junk[0] = 0x01;
    assert!(!junk.windows(4).any(|w| w == b"PK\x03\x04"));
    assert_eq!(check_jpeg(&concat(&[&bytes, &junk])), Ok(()));
    // Maker data as cameras append it: a TIFF-style IFD (big- and little-endian),
    // ASCII tags, a Samsung-style SEFH/SEFT directory, padding.
    let mut maker = Vec::new();
    maker.extend_from_slice(b"MM\x00\x2A\x00\x00\x00\x08\x00\x03");
    maker.extend_from_slice(&[0x01, 0x0F, 0x00, 0x02, 0x00, 0x00, 0x00, 0x06]);
    maker.extend_from_slice(b"Canon\x00Canon EOS 5D Mark IV\x00\x00");
    maker.extend_from_slice(b"II\x2A\x00\x08\x00\x00\x00");
    maker.extend_from_slice(&pseudo_random(1500, 3));
    maker.extend_from_slice(b"Image_UTC_Data1458170015363\x00MCC_Data262\x00");
    maker.extend_from_slice(b"SEFH\x6B\x00\x00\x00\x02\x00\x00\x00");
    maker.extend_from_slice(&[0u8; 300]);
    maker.extend_from_slice(b"<x:xmpmeta> <rdf:RDF> text <3 a<b c>d \x00SEFT");
    maker[4] = 0x01; // no `FF D8 FF` / signature at the start
    assert_eq!(check_jpeg_trailer(&bytes, &maker), Ok(()));
    // Multi-picture: the maker trailer after the last of several images.
    let second = fixture("cjpeg-progressive-gray.jpg");
    assert_eq!(check_jpeg(&concat(&[&bytes, &second, &maker])), Ok(()));
    // Short text-ish trailers that are no known format.
    for t in [
        &b"\xFF"[..],
        b"\xFF\xD8",
        b"\xFF\xD8\x00",
        b"<",
        b"< 3",
        b"P",
        b"PK",
        b"PK\x03",
        b"  hello",
        b"\0\0<3",
    ] {
        assert_eq!(check_jpeg(&concat(&[&bytes, t])), Ok(()), "trailer {t:?}");
    }
}

#[test]
fn jpeg_concatenated_images() {
    let a = fixture("im-baseline.jpg");
    let b = fixture("cjpeg-progressive-gray.jpg");
    let c = fixture("exif-thumb.jpg");
    assert_eq!(check_jpeg(&concat(&[&a, &b])), Ok(()));
    assert_eq!(check_jpeg(&concat(&[&a, &b, &c, &vec![0u8; 1000]])), Ok(()));
    // The second image follows the same rules.
    let e = check_jpeg_reject(&concat(&[&a, &b[..b.len() - 2]]), "missing EOI");
    assert!(e.detail.contains("inside entropy-coded data"), "{e}");
    let b_nosof = {
        let (sof, _, len) = first_segment(&b, is_sof);
        concat(&[&b[..sof], &b[sof + 2 + len..]])
    };
    check_jpeg_reject(&concat(&[&a, &b_nosof]), "no SOF");
    check_jpeg_reject(&concat(&[&a, &jpeg_with_dims(&b, 0, 1)]), "zero dimension");
    let e = check_jpeg_reject(&concat(&[&a, &b[..20]]), "missing EOI");
    assert_eq!(
        e.detail,
        format!(
            "JPEG truncated at offset {}: missing EOI (image 2 started at offset {})",
            a.len() + 20,
            a.len()
        )
    );
    // A trailer after the last image is still checked.
    check_jpeg_reject(&concat(&[&a, &b, b"%PDF-1.4"]), "looks like PDF");
    // At most 16 images.
    let sixteen: Vec<u8> = std::iter::repeat_n(&b[..], 16).flatten().copied().collect();
    assert_eq!(one_shot(Kind::Jpeg, &limits(), &sixteen), Ok(()));
    let seventeen = concat(&[&sixteen, &b]);
    let e = expect_malformed(
        one_shot(Kind::Jpeg, &limits(), &seventeen),
        "more than 16 concatenated images",
    );
    assert_eq!(
        e.detail,
        format!(
            "JPEG at offset {}: more than 16 concatenated images",
            sixteen.len()
        )
    );
    let e2 = check_chunking(Kind::Jpeg, &limits(), &seventeen, &[sixteen.len()]);
    assert_eq!(e2, Err(e));
    // The images' pixels count together against max_pixels, as an
    // animated PNG's frames do: two 70 x 46 images are 6440.
    let two = concat(&[&a, &a]);
    let mut l = limits();
    l.max_pixels = 6440;
    assert_eq!(check_chunking(Kind::Jpeg, &l, &two, &[]), Ok(()));
    l.max_pixels = 6439;
    let e = check_chunking(Kind::Jpeg, &l, &two, &[a.len()]).unwrap_err();
    assert!(
        e.detail.contains(
            "70 x 46 pixels take the images of this file to 6440 pixels together, past the limit of 6439"
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Inspector: declared type vs content
// ---------------------------------------------------------------------------

/// A small PDF-looking body (the PDF scanner's verdict on it is not asserted).
const PDF: &[u8] =
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";

fn mismatch(declared: MediaType, bytes: &[u8], detail: &str) {
    let r = check_chunking(Kind::Inspect(declared), &limits(), bytes, &[]);
    assert_eq!(
        r,
        Err(Rejection::new(RejectCode::ContentMismatch, detail)),
        "declared {declared}"
    );
}

#[test]
fn inspector_type_mismatches() {
    let jpeg = fixture("im-baseline.jpg");
    let png = fixture("pillow-palette.png");
    mismatch(
        MediaType::Jpeg,
        &png,
        "declared image/jpeg but the body starts like a PNG",
    );
    mismatch(
        MediaType::Png,
        &jpeg,
        "declared image/png but the body starts like a JPEG",
    );
    mismatch(
        MediaType::Pdf,
        &jpeg,
        "declared application/pdf but the body starts like a JPEG",
    );
    mismatch(
        MediaType::Pdf,
        &png,
        "declared application/pdf but the body starts like a PNG",
    );
    mismatch(
        MediaType::Png,
        PDF,
        "declared image/png but the body starts like a PDF",
    );
    mismatch(
        MediaType::Jpeg,
        PDF,
        "declared image/jpeg but the body starts like a PDF",
    );
    mismatch(
        MediaType::Jpeg,
        b"GIF89a\x01\x00\x01\x00",
        "declared image/jpeg but the body is not a JPEG",
    );
    mismatch(
        MediaType::Png,
        b"<html></html>",
        "declared image/png but the body is not a PNG",
    );
    // A JPEG signature without the third FF is not a JPEG.
    mismatch(
        MediaType::Jpeg,
        b"\xFF\xD8\x00\x00\x00\x00\x00\x00\x00",
        "declared image/jpeg but the body is not a JPEG",
    );
    // image/jpg is image/jpeg.
    let t = MediaType::from_content_type("Image/JPG; q=1").unwrap();
    assert_eq!(Inspector::new(t, &limits()).declared(), MediaType::Jpeg);
    assert_eq!(inspect_all(t, &limits(), &jpeg, 1000), Ok(()));
}

#[test]
fn inspector_short_bodies() {
    // Too short to sniff, but could be the declared type: the scanner decides.
    for (declared, body) in [
        (MediaType::Jpeg, &b""[..]),
        (MediaType::Jpeg, b"\xFF"),
        (MediaType::Jpeg, b"\xFF\xD8"),
        (MediaType::Jpeg, b"\xFF\xD8\xFF\xE0\x00"),
        (MediaType::Png, b""),
        (MediaType::Png, b"\x89PN"),
        (MediaType::Png, b"\x89PNG\r\n\x1a"),
    ] {
        let r = check_chunking(Kind::Inspect(declared), &limits(), body, &[]);
        assert_eq!(
            r.unwrap_err().code,
            RejectCode::MalformedImage,
            "{declared} {body:?}"
        );
    }
    // Too short, and cannot be the declared type.
    mismatch(
        MediaType::Jpeg,
        b"\x89PN",
        "declared image/jpeg but the body is not a JPEG",
    );
    mismatch(
        MediaType::Png,
        b"\xFF\xD8\xFF",
        "declared image/png but the body starts like a JPEG",
    );
    mismatch(
        MediaType::Png,
        b"%PDF-",
        "declared image/png but the body starts like a PDF",
    );
    mismatch(
        MediaType::Png,
        b"x",
        "declared image/png but the body is not a PNG",
    );
    mismatch(
        MediaType::Pdf,
        b"\xFF\xD8\xFF",
        "declared application/pdf but the body starts like a JPEG",
    );
}

#[test]
fn inspector_declared_pdf_goes_to_the_pdf_scanner() {
    let r = check_chunking(Kind::Inspect(MediaType::Pdf), &limits(), PDF, &[]);
    if let Err(e) = &r {
        assert_ne!(e.code, RejectCode::ContentMismatch, "{e}");
    }
    // A PDF header after junk (an HTML polyglot) is no PDF: SPEC wants `%PDF-`
    // at byte 0, and the PDF scanner says so.
    let junk_first = concat(&[b"<html><script>x()</script>\n", PDF]);
    let r = check_chunking(Kind::Inspect(MediaType::Pdf), &limits(), &junk_first, &[]);
    let e = r.unwrap_err();
    assert_eq!(e.code, RejectCode::ContentMismatch, "{e}");
    assert!(e.detail.contains("does not start with %PDF-"), "{e}");
    // Without any header, the PDF scanner itself says the bytes are no PDF.
    let r = check_chunking(
        Kind::Inspect(MediaType::Pdf),
        &limits(),
        b"not a pdf at all, but only the PDF scanner can say",
        &[],
    );
    assert_eq!(r.unwrap_err().code, RejectCode::ContentMismatch);
}

#[test]
fn inspector_passes_scanner_verdicts_through() {
    let png = fixture("pillow-bilevel.png");
    let mut bad = png.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xFF; // IEND CRC
    let direct = one_shot(Kind::Png, &limits(), &bad);
    assert_eq!(
        check_chunking(Kind::Inspect(MediaType::Png), &limits(), &bad, &[]),
        direct
    );
    assert!(direct.unwrap_err().detail.contains("PNG chunk IEND"));
}

// ---------------------------------------------------------------------------
// Random chunkings and mutations (proptest)
// ---------------------------------------------------------------------------

fn all_fixtures() -> Vec<(Kind, Vec<u8>)> {
    JPEGS
        .iter()
        .map(|n| (Kind::Jpeg, fixture(n)))
        .chain(PNGS.iter().map(|n| (Kind::Png, fixture(n))))
        .collect()
}

/// Cuts `bytes` at the (sorted, deduplicated) `cuts`, taken modulo its length.
fn cut<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut prev = 0;
    for a in at {
        pieces.push(&bytes[prev..a]);
        prev = a;
    }
    pieces.push(&bytes[prev..]);
    pieces
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, mask: u8 },
    Set { at: usize, value: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Append { bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (
            any::<usize>(),
            prop_oneof![
                Just(0xFFu8),
                Just(0x00),
                Just(0xD9),
                Just(0xD8),
                any::<u8>()
            ]
        )
            .prop_map(|(at, value)| Mutation::Set { at, value }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        proptest::collection::vec(any::<u8>(), 1..32).prop_map(|bytes| Mutation::Append { bytes }),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match m {
        Mutation::Flip { at, mask } => bytes[at % n] ^= mask,
        Mutation::Set { at, value } => bytes[at % n] = *value,
        Mutation::Insert { at, bytes: ins } => {
            let at = at % (n + 1);
            bytes.splice(at..at, ins.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { at } => bytes.truncate(at % n),
        Mutation::Append { bytes: extra } => bytes.extend_from_slice(extra),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_chunking_of_fixtures_is_accepted(idx in any::<usize>(), cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        let fixtures = all_fixtures();
        let (kind, bytes) = &fixtures[idx % fixtures.len()];
        let pieces = cut(bytes, &cuts);
        prop_assert_eq!(run_pieces(*kind, &limits(), &pieces), Ok(()));
    }

    #[test]
    fn mutated_fixtures_same_verdict_in_any_chunking(
        idx in any::<usize>(),
        muts in proptest::collection::vec(mutation(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 1..24),
        via_inspector in any::<bool>(),
    ) {
        let fixtures = all_fixtures();
        let (kind, original) = &fixtures[idx % fixtures.len()];
        let mut bytes = original.clone();
        for m in &muts {
            if !bytes.is_empty() {
                apply(&mut bytes, m);
            }
        }
        let kind = match (via_inspector, kind) {
            (false, k) => *k,
            (true, Kind::Jpeg) => Kind::Inspect(MediaType::Jpeg),
            (true, _) => Kind::Inspect(MediaType::Png),
        };
        let expected = one_shot(kind, &limits(), &bytes);
        let pieces = cut(&bytes, &cuts);
        prop_assert_eq!(run_pieces(kind, &limits(), &pieces), expected.clone());
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(run_pieces(kind, &limits(), &bytewise), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_are_chunking_invariant(
        head in prop_oneof![Just(vec![0xFFu8, 0xD8, 0xFF]), Just(b"\x89PNG\r\n\x1a\n".to_vec()), Just(vec![])],
        body in proptest::collection::vec(prop_oneof![Just(0xFFu8), Just(0x00), 0xC0u8..=0xDA, any::<u8>()], 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        declared in prop_oneof![Just(MediaType::Jpeg), Just(MediaType::Png)],
    ) {
        let bytes = concat(&[&head, &body]);
        for kind in [Kind::Jpeg, Kind::Png, Kind::Inspect(declared)] {
            let expected = one_shot(kind, &limits(), &bytes);
            prop_assert_eq!(run_pieces(kind, &limits(), &cut(&bytes, &cuts)), expected);
        }
    }
}

// ---------------------------------------------------------------------------
// scan command core
// ---------------------------------------------------------------------------

struct ScanOut {
    code: i32,
    out: String,
    err: String,
}

fn scan(files: &[PathBuf], content_type: Option<&str>, json: bool) -> ScanOut {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_scan(files, content_type, json, &limits(), &mut out, &mut err);
    ScanOut {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn fixture_path(name: &str) -> PathBuf {
    fixture_dir().join(name)
}

fn write_temp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn scan_all_accepted_plain() {
    let files: Vec<PathBuf> = ["im-baseline.jpg", "im-rgb.png"]
        .iter()
        .map(|n| fixture_path(n))
        .collect();
    let r = scan(&files, None, false);
    assert_eq!(r.code, 0, "{}", r.err);
    assert_eq!(
        r.out,
        format!(
            "{}: accept (image/jpeg)\n{}: accept (image/png)\n",
            files[0].display(),
            files[1].display()
        )
    );
    assert_eq!(r.err, "");
}

/// An empty file gets what an upload of it gets: `empty_body`, whatever
/// type is declared or not.
#[test]
fn scan_an_empty_file_is_empty_body() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_temp(&dir, "empty.pdf", b"");
    for content_type in [None, Some("application/pdf"), Some("image/png")] {
        let r = scan(std::slice::from_ref(&empty), content_type, true);
        assert_eq!(r.code, 1, "{content_type:?}: {}", r.err);
        let v: serde_json::Value = serde_json::from_str(r.out.trim()).unwrap();
        assert_eq!(v["verdict"], "reject");
        assert_eq!(v["code"], "empty_body", "{content_type:?}: {v}");
    }
    // Not a regular file: /dev/null reads as empty too.
    let r = scan(&[PathBuf::from("/dev/null")], None, true);
    let v: serde_json::Value = serde_json::from_str(r.out.trim()).unwrap();
    assert_eq!(v["code"], "empty_body", "{v}");
    // An unsupported declared type is said first, as for an upload (415).
    let r = scan(std::slice::from_ref(&empty), Some("text/plain"), true);
    let v: serde_json::Value = serde_json::from_str(r.out.trim()).unwrap();
    assert_eq!(v["code"], "unsupported_media_type", "{v}");
}

#[test]
fn scan_json_lines_shape() {
    let dir = tempfile::tempdir().unwrap();
    let good = fixture_path("pillow-palette.png");
    let txt = write_temp(&dir, "notes.txt", b"hello, world\n");
    let mut bad_png = fixture("pillow-palette.png");
    bad_png.push(0);
    let bad = write_temp(&dir, "bad.png", &bad_png);
    let r = scan(&[good.clone(), txt.clone(), bad.clone()], None, true);
    assert_eq!(r.code, 1);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines.len(), 3);
    let expected_accept = serde_json::json!({
        "file": good.display().to_string(), "verdict": "accept", "type": "image/png", "code": null, "detail": null,
    });
    assert_eq!(lines[0], expected_accept.to_string());
    assert_eq!(
        lines[0],
        format!(
            r#"{{"file":{},"verdict":"accept","type":"image/png","code":null,"detail":null}}"#,
            serde_json::to_string(&good.display().to_string()).unwrap()
        )
    );
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["file", "verdict", "type", "code", "detail"],
            "{line}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["file"], txt.display().to_string());
    assert_eq!(v["verdict"], "reject");
    assert_eq!(v["type"], serde_json::Value::Null);
    assert_eq!(v["code"], "unsupported_media_type");
    assert!(v["detail"].is_string());
    let v: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(v["verdict"], "reject");
    assert_eq!(v["type"], "image/png");
    assert_eq!(v["code"], "malformed_image");
    assert_eq!(
        v["detail"],
        format!("PNG: data after IEND at offset {}", bad_png.len() - 1)
    );
}

#[test]
fn scan_reject_plain_and_content_type() {
    let jpeg = fixture_path("im-baseline.jpg");
    let png = fixture_path("im-rgb.png");
    // Declared type used instead of sniffing; image/jpg is image/jpeg.
    let r = scan(&[jpeg.clone(), png.clone()], Some("image/jpg"), false);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.out,
        format!(
            "{}: accept (image/jpeg)\n{}: reject content_mismatch (image/jpeg): declared image/jpeg but the body starts like a PNG\n",
            jpeg.display(),
            png.display()
        )
    );
    // Unsupported declared type: every file rejected, type unknown / null.
    let r = scan(std::slice::from_ref(&jpeg), Some("image/gif"), false);
    assert_eq!(r.code, 1);
    assert!(
        r.out.starts_with(&format!(
            "{}: reject unsupported_media_type (unknown): ",
            jpeg.display()
        )),
        "{}",
        r.out
    );
    let r = scan(std::slice::from_ref(&jpeg), Some("text/html"), true);
    let v: serde_json::Value = serde_json::from_str(r.out.trim_end()).unwrap();
    assert_eq!(v["code"], "unsupported_media_type");
    assert_eq!(v["type"], serde_json::Value::Null);
}

#[test]
fn scan_io_errors_exit_2_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jpg");
    let good = fixture_path("im-baseline.jpg");
    let bad = write_temp(&dir, "bad.jpg", &fixture("im-baseline.jpg")[..100]);
    let r = scan(&[missing.clone(), good.clone(), bad.clone()], None, true);
    assert_eq!(r.code, 2);
    assert_eq!(r.out.lines().count(), 2, "{}", r.out);
    assert!(r.out.contains("\"verdict\":\"accept\"") && r.out.contains("\"verdict\":\"reject\""));
    assert_eq!(r.err.lines().count(), 1);
    assert!(r.err.contains(&missing.display().to_string()), "{}", r.err);
    // A directory cannot be read as a file either.
    let r = scan(&[dir.path().to_path_buf()], None, false);
    assert_eq!(r.code, 2);
    assert_eq!(r.out, "");
    // Usage error: no file.
    let r = scan(&[], None, false);
    assert_eq!(r.code, 2);
    assert!(r.err.contains("usage"));
}

/// The `scan` command reports trailer signatures like the server (its 16 KiB
/// reads are one more chunking).
#[test]
fn scan_reports_signatures_hidden_in_a_jpeg_trailer() {
    let bytes = fixture("im-baseline.jpg");
    let end = bytes.len();
    let dir = tempfile::tempdir().unwrap();
    let pdf = write_temp(&dir, "pdf.jpg", &concat(&[&bytes, b"X%PDF-1.4\n"]));
    let html = write_temp(
        &dir,
        "html.jpg",
        &concat(&[&bytes, b"\xEF\xBB\xBF<html><body>"]),
    );
    // `<script` across the first 16 KiB read, in UTF-16.
    let mut trailer = vec![0x01u8; 16 * 1024 - end - 3];
    trailer.extend_from_slice(&utf16le(b"<script>"));
    let straddle = write_temp(&dir, "straddle.jpg", &concat(&[&bytes, &trailer]));
    let r = scan(&[pdf.clone(), html.clone(), straddle.clone()], None, false);
    assert_eq!(r.code, 1, "{}", r.err);
    assert_eq!(
        r.out,
        format!(
            "{}: reject malformed_image (image/jpeg): JPEG: data after EOI holds a PDF header (%PDF) at offset {}\n\
             {}: reject malformed_image (image/jpeg): JPEG: data after EOI (trailer at offset {end}) looks like HTML\n\
             {}: reject malformed_image (image/jpeg): JPEG: data after EOI holds a script tag (<script) at offset {}\n",
            pdf.display(),
            end + 1,
            html.display(),
            straddle.display(),
            16 * 1024 - 3,
        )
    );
    let r = scan(std::slice::from_ref(&pdf), Some("image/jpeg"), true);
    let v: serde_json::Value = serde_json::from_str(r.out.trim_end()).unwrap();
    assert_eq!(v["verdict"], "reject");
    assert_eq!(v["type"], "image/jpeg");
    assert_eq!(v["code"], "malformed_image");
    // Declared as a PDF, the polyglot is a type mismatch.
    let r = scan(std::slice::from_ref(&pdf), Some("application/pdf"), false);
    assert_eq!(r.code, 1);
    assert!(r.out.contains("reject content_mismatch"), "{}", r.out);
}

#[test]
fn scan_reads_large_files_in_chunks() {
    // ~200 KiB: APP15 segments of padding spread the image over many 16 KiB reads.
    let bytes = fixture("im-baseline.jpg");
    let mut big = bytes[..2].to_vec();
    for k in 0..3u8 {
        big.extend_from_slice(&[0xFF, 0xEF, 0xFF, 0xFF]);
        big.extend(std::iter::repeat_n(0xFF - k, 0xFFFF - 2));
    }
    big.extend_from_slice(&bytes[2..]);
    let dir = tempfile::tempdir().unwrap();
    let p = write_temp(&dir, "big.jpeg", &big);
    let r = scan(std::slice::from_ref(&p), None, false);
    assert_eq!(
        (r.code, r.out),
        (0, format!("{}: accept (image/jpeg)\n", p.display()))
    );
    // Truncated in the middle of the padding: rejected with the scanner's detail.
    let p = write_temp(&dir, "cut.jpeg", &big[..100_000]);
    let r = scan(std::slice::from_ref(&p), Some("image/jpeg"), false);
    assert_eq!(r.code, 1);
    assert!(
        r.out
            .contains("reject malformed_image (image/jpeg): JPEG APP15 segment at offset"),
        "{}",
        r.out
    );
}
