//! Throughput of the streaming PDF scanner, fed in 16 KiB chunks like the HTTP
//! body adapter does.
//!
//! * `stream_data/direct_length`: 8 MiB, almost all image stream data with a
//!   direct `/Length` (skipped by counting, `memmem` checks for an early
//!   `endstream`);
//! * `stream_data/indirect_length`: the same with `/Length N 0 R` (the end is
//!   found by searching for `endstream`);
//! * `syntax/small_objects`: 100,000 small uncompressed objects (the lexer
//!   proper);
//! * `syntax/text_pages`: 10,000 pages, each a page dictionary, a link
//!   annotation and an uncompressed text content stream of 24 lines
//!   (`BT /F1 12 Tf 72 712 Td (...) Tj ET`): syntax-dense, as a text-heavy
//!   file is, with the content streams skipped by `/Length`;
//! * `object_streams`: FlateDecode object streams, throughput counted in
//!   *decoded* bytes (inflate + lex).
//!
//! `cargo bench --bench inspect_pdf -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use concur_gateway::inspect::Limits;
use concur_gateway::inspect::pdf::PdfScanner;
use concur_gateway::testkit::{classic_pdf, noise, zlib};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const CHUNK: usize = 16 * 1024;

fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    classic_pdf(objects, "")
}

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut v = format!("<< {dict} >>\nstream\n").into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\nendstream");
    v
}

fn page_objects() -> Vec<Vec<u8>> {
    vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
        stream("/Length 10", b"q 1 0 0 1 "),
    ]
}

/// Four 2 MiB image streams.
fn image_pdf(indirect: bool) -> Vec<u8> {
    let mut objects = page_objects();
    let data: Vec<Vec<u8>> = (0..4).map(|i| noise(2 << 20, 0x9E37_79B9 + i)).collect();
    let first_len_obj = objects.len() + data.len() + 1;
    for (i, d) in data.iter().enumerate() {
        let length = if indirect {
            format!("/Length {} 0 R", first_len_obj + i)
        } else {
            format!("/Length {}", d.len())
        };
        objects.push(stream(
            &format!("/Type /XObject /Subtype /Image /Width 1024 /Height 2048 /BitsPerComponent 8 /ColorSpace /DeviceGray /Filter /DCTDecode {length}"),
            d,
        ));
    }
    if indirect {
        for d in &data {
            objects.push(d.len().to_string().into_bytes());
        }
    }
    pdf(&objects)
}

/// A typical small object.
fn small_object(i: usize) -> String {
    format!(
        "<< /Type /Annot /Subtype /Link /Rect [{i} 10 {} 20] /Border [0 0 0] /A << /S /URI /URI (https://example.com/{i}) >> /F 4 /NM <{i:08x}> >>",
        i + 100
    )
}

fn syntax_pdf() -> Vec<u8> {
    let mut objects = page_objects();
    objects.extend((0..100_000).map(|i| small_object(i).into_bytes()));
    pdf(&objects)
}

/// Pages of text: objects 1 to 3 are the catalog, the page tree (all pages
/// in one `/Kids` array) and the font; then, for each page, its dictionary,
/// a link annotation and its content stream.
fn text_pages_pdf() -> Vec<u8> {
    const PAGES: usize = 10_000;
    const LINES: usize = 24;
    let page_obj = |p: usize| 4 + 3 * p;
    let kids: Vec<String> = (0..PAGES).map(|p| format!("{} 0 R", page_obj(p))).collect();
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {PAGES} >>",
            kids.join(" ")
        )
        .into_bytes(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ];
    for p in 0..PAGES {
        let n = page_obj(p);
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> /ProcSet [/PDF /Text] >> /Annots [{} 0 R] /Contents {} 0 R >>",
                n + 1,
                n + 2
            )
            .into_bytes(),
        );
        objects.push(small_object(p).into_bytes());
        let text: String = (0..LINES)
            .map(|k| {
                format!(
                    "BT /F1 12 Tf 72 {} Td (Hello, world: line {k} of page {p}) Tj ET\n",
                    712 - 14 * k
                )
            })
            .collect();
        objects.push(stream(&format!("/Length {}", text.len()), text.as_bytes()));
    }
    pdf(&objects)
}

/// Object streams of 100 objects each; returns the file and its decoded size.
fn objstm_pdf() -> (Vec<u8>, u64) {
    let mut objects = page_objects();
    let mut decoded = 0;
    for s in 0..300 {
        let mut header = String::new();
        let mut body = String::new();
        for k in 0..100 {
            let num = 1000 + s * 100 + k;
            header.push_str(&format!("{num} {} ", body.len()));
            body.push_str(&small_object(num));
            body.push('\n');
        }
        let first = header.len();
        let data = header + &body;
        decoded += data.len() as u64;
        let z = zlib(data.as_bytes());
        objects.push(stream(
            &format!(
                "/Type /ObjStm /N 100 /First {first} /Filter /FlateDecode /Length {}",
                z.len()
            ),
            &z,
        ));
    }
    (pdf(&objects), decoded)
}

fn scan(limits: &Limits, bytes: &[u8]) {
    let mut s = PdfScanner::new(limits);
    for chunk in bytes.chunks(CHUNK) {
        s.feed(black_box(chunk)).unwrap();
    }
    s.finish().unwrap();
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();

    let mut g = c.benchmark_group("inspect_pdf/stream_data");
    for (name, bytes) in [
        ("direct_length", image_pdf(false)),
        ("indirect_length", image_pdf(true)),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan(&limits, &bytes)));
    }
    g.finish();

    let mut g = c.benchmark_group("inspect_pdf/syntax");
    for (name, bytes) in [
        ("small_objects", syntax_pdf()),
        ("text_pages", text_pages_pdf()),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| b.iter(|| scan(&limits, &bytes)));
    }
    g.finish();

    let (bytes, decoded) = objstm_pdf();
    let mut g = c.benchmark_group("inspect_pdf/object_streams");
    g.throughput(Throughput::Bytes(decoded));
    g.bench_function("decoded_bytes", |b| b.iter(|| scan(&limits, &bytes)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
