//! Throughput of the JPEG, PNG and PDF scanners through `Inspector`, on
//! multi-MB bodies fed in 16 KiB chunks (as the HTTP body adapter and the `scan`
//! command do), and of the request digest (SHA-256/512, aws-lc-rs) alone, fed
//! the same way: together they are the per-byte CPU cost of an upload.
//!
//! The inputs are synthesised at start-up and checked to be accepted:
//! * JPEG: a 4000 × 3000 baseline frame whose scan is ~4 MB of pseudo-random
//!   entropy-coded bytes (every `FF` stuffed as `FF 00`, about 1 in 256 bytes, as
//!   in real Huffman output) with RSTn markers every 4 KiB;
//! * PNG, two shapes, both split into 8 KiB IDAT chunks like libpng writes
//!   them, both inflated and checked row by row by the scanner: `png` is
//!   1400 × 1000 RGB, pseudo-random pixels, zlib with stored blocks (flate2
//!   level 0: inflating is a copy); `png_scan` is what a scanned A4 receipt
//!   looks like, 2480 × 3508 8-bit grey at 300 dpi (white paper with a little
//!   noise, lines of dark strokes), deflated at zlib's default level;
//! * PDF, two shapes: `pdf_image` is a page with one ~4 MB DCT image stream
//!   (direct `/Length`, so the scanner skips the data and checks `endstream`),
//!   `pdf_objects` ~2 MB of small uncompressed dictionaries (link annotations),
//!   which the scanner lexes byte by byte: the slow end of real files.
//!
//! `cargo bench --bench inspect -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io::Write;

use aws_lc_rs::digest;
use concur_gateway::inspect::{Limits, MediaType, inspect_all};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CHUNK: usize = 16 * 1024;

struct Rng(u64);

impl Rng {
    fn next_u8(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

fn synth_jpeg(entropy_bytes: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8];
    segment(&mut v, 0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
    let mut dqt = vec![0u8];
    dqt.extend(1..=64u8);
    segment(&mut v, 0xDB, &dqt);
    // SOF0: 8-bit, 3000 high, 4000 wide, Y 2x2, Cb 1x1, Cr 1x1.
    segment(
        &mut v,
        0xC0,
        &[
            8, 0x0B, 0xB8, 0x0F, 0xA0, 3, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0,
        ],
    );
    // A (syntactically plausible) DHT: the scanner does not decode it.
    let mut dht = vec![0x00, 0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    dht.extend(0..12u8);
    segment(&mut v, 0xC4, &dht);
    segment(&mut v, 0xDD, &[0x00, 0x40]);
    segment(&mut v, 0xDA, &[3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut rst = 0u8;
    let start = v.len();
    while v.len() - start < entropy_bytes {
        for _ in 0..4096 {
            let b = rng.next_u8();
            v.push(b);
            if b == 0xFF {
                v.push(0x00);
            }
        }
        v.extend_from_slice(&[0xFF, 0xD0 + rst]);
        rst = (rst + 1) & 7;
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

fn png_chunk(out: &mut Vec<u8>, ty: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(ty);
    out.extend_from_slice(data);
    let mut h = crc32fast::Hasher::new();
    h.update(ty);
    h.update(data);
    out.extend_from_slice(&h.finalize().to_be_bytes());
}

fn synth_png(width: u32, height: u32) -> Vec<u8> {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut raw = Vec::with_capacity((height * (1 + 3 * width)) as usize);
    for _ in 0..height {
        raw.push(0); // filter: None
        raw.extend((0..3 * width).map(|_| rng.next_u8()));
    }
    let text: &[u8] = b"Comment\0synthetic benchmark input";
    png_file(
        width,
        height,
        2,
        Some(text),
        &raw,
        flate2::Compression::none(),
    )
}

/// A PNG of 8-bit `colour` type: IHDR, an optional tEXt, `raw` (the filtered
/// rows) deflated at `level` in 8 KiB IDAT chunks, IEND.
fn png_file(
    width: u32,
    height: u32,
    colour: u8,
    text: Option<&[u8]>,
    raw: &[u8],
    level: flate2::Compression,
) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), level);
    z.write_all(raw).unwrap();
    let zdata = z.finish().unwrap();
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, colour, 0, 0, 0]);
    png_chunk(&mut v, b"IHDR", &ihdr);
    if let Some(text) = text {
        png_chunk(&mut v, b"tEXt", text);
    }
    for part in zdata.chunks(8192) {
        png_chunk(&mut v, b"IDAT", part);
    }
    png_chunk(&mut v, b"IEND", b"");
    v
}

/// A grey "scanned receipt": paper white with two bits of noise, every 40th
/// row band holding 12 rows of dark strokes; deflated at the default level.
fn synth_png_scan(width: u32, height: u32) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut raw = Vec::with_capacity((height * (1 + width)) as usize);
    for y in 0..height {
        raw.push(0); // filter: None
        let text = y % 40 < 12;
        let mut x = 0;
        while x < width {
            let r = rng.next_u8();
            if text && r < 24 {
                // A stroke: a dark run of 2 to 9 pixels.
                let run = (2 + (r & 7) as u32).min(width - x);
                raw.extend((0..run).map(|_| 20 + (rng.next_u8() & 15)));
                x += run;
            } else {
                raw.push(255 - (r & 3));
                x += 1;
            }
        }
    }
    png_file(width, height, 0, None, &raw, flate2::Compression::default())
}

/// A PDF whose bulk is one image stream of `image_bytes` (direct `/Length`).
fn synth_pdf_image(image_bytes: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
    v.extend_from_slice(b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n");
    v.extend_from_slice(b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n");
    v.extend_from_slice(
        b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
          /Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>\nendobj\n",
    );
    v.extend_from_slice(
        format!(
            "4 0 obj\n<< /Type /XObject /Subtype /Image /Width 4000 /Height 3000 \
             /ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode /Length {image_bytes} >>\nstream\n"
        )
        .as_bytes(),
    );
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    v.extend((0..image_bytes).map(|_| rng.next_u8()));
    v.extend_from_slice(b"\nendstream\nendobj\n");
    let content = b"q 612 0 0 792 0 0 cm /Im0 Do Q";
    v.extend_from_slice(format!("5 0 obj\n<< /Length {} >>\nstream\n", content.len()).as_bytes());
    v.extend_from_slice(content);
    v.extend_from_slice(b"\nendstream\nendobj\n");
    pdf_trailer(&mut v, 6);
    v
}

/// A PDF of `count` small dictionaries the scanner has to lex.
fn synth_pdf_objects(count: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n".to_vec();
    v.extend_from_slice(b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n");
    v.extend_from_slice(b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n");
    for i in 3..count + 3 {
        v.extend_from_slice(
            format!(
                "{i} 0 obj\n<< /Type /Annot /Subtype /Link /Border [0 0 0] /Rect [{} 72.5 {} 90.25] \
                 /A << /S /URI /URI (https://receipts.example/item/{i}?q=\\(x\\)) >> /F 4 >>\nendobj\n",
                i % 500,
                i % 500 + 120
            )
            .as_bytes(),
        );
    }
    pdf_trailer(&mut v, count + 3);
    v
}

/// A (token) xref table and the trailer: the scanner never follows offsets.
fn pdf_trailer(v: &mut Vec<u8>, size: usize) {
    let xref = v.len();
    v.extend_from_slice(b"xref\n0 1\n0000000000 65535 f \n");
    v.extend_from_slice(
        format!("trailer\n<< /Size {size} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n").as_bytes(),
    );
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let jpeg = synth_jpeg(4 * 1024 * 1024);
    let png = synth_png(1400, 1000);
    let png_scan = synth_png_scan(2480, 3508);
    let pdf_image = synth_pdf_image(4 * 1024 * 1024);
    let pdf_objects = synth_pdf_objects(16_000);
    assert_eq!(
        inspect_all(MediaType::Jpeg, &limits, &jpeg, CHUNK),
        Ok(()),
        "synthetic JPEG rejected"
    );
    for (name, png) in [("stored", &png), ("scan", &png_scan)] {
        assert_eq!(
            inspect_all(MediaType::Png, &limits, png, CHUNK),
            Ok(()),
            "synthetic PNG ({name}) rejected"
        );
    }
    for (name, pdf) in [("image", &pdf_image), ("objects", &pdf_objects)] {
        assert_eq!(
            inspect_all(MediaType::Pdf, &limits, pdf, CHUNK),
            Ok(()),
            "synthetic PDF ({name}) rejected"
        );
    }

    let mut g = c.benchmark_group("inspect_16KiB_chunks");
    for (name, ty, body) in [
        ("jpeg", MediaType::Jpeg, &jpeg),
        ("png", MediaType::Png, &png),
        ("png_scan", MediaType::Png, &png_scan),
        ("pdf_image", MediaType::Pdf, &pdf_image),
        ("pdf_objects", MediaType::Pdf, &pdf_objects),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("{name}_{:.1}MB", body.len() as f64 / 1e6), |b| {
            b.iter(|| inspect_all(ty, &limits, black_box(body), CHUNK))
        });
    }
    g.finish();

    // The digest alone, over the same 16 KiB chunks (what `InspectBody` adds
    // per byte with `inspect.digest` on).
    let mut g = c.benchmark_group("digest_16KiB_chunks");
    g.throughput(Throughput::Bytes(jpeg.len() as u64));
    for (name, alg) in [("sha256", &digest::SHA256), ("sha512", &digest::SHA512)] {
        g.bench_function(format!("{name}_{:.1}MB", jpeg.len() as f64 / 1e6), |b| {
            b.iter(|| {
                let mut ctx = digest::Context::new(alg);
                for chunk in black_box(&jpeg).chunks(CHUNK) {
                    ctx.update(chunk);
                }
                ctx.finish()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
