//! Tests of the streaming PDF scanner (`src/inspect/pdf.rs`).
//!
//! Fixtures come from two independent producers, run at test time: Ghostscript
//! (`gs -sDEVICE=pdfwrite` from small PostScript programs, pdfmark for actions)
//! and qpdf (object streams, cross-reference streams, linearization, QDF,
//! encryption, attachments), plus PDFs built by hand here for the cases the tools
//! will not write (escaped names, bombs, bad lengths, ...).
//!
//! Without `qpdf` or `gs` the tool-made cases are skipped with a loud message,
//! unless the `CI` environment variable is set: then the tests fail.
//!
//! Every case is also fed split at every byte offset (small files) and in random
//! chunkings (proptest): the verdict must equal the one-shot verdict.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use concur_gateway::inspect::pdf::{PdfScanner, scan_pdf};
use concur_gateway::inspect::{ActiveContentPolicy, Limits, RejectCode, Rejection};
use concur_gateway::testkit::{PDF_HEADER as HEADER, classic_pdf as pdf, noise, zlib};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Ok,
    /// A code and a substring of the detail.
    Reject(RejectCode, &'static str),
}

use RejectCode::{ContentMismatch, MalformedImage, PdfActiveContent, PdfEncrypted};

struct Case {
    name: String,
    bytes: Vec<u8>,
    limits: Limits,
    /// Under the default policy (`pdf_active_content = Reject`).
    want: Want,
    /// Under `pdf_active_content = Allow`.
    want_allow: Want,
}

fn case(name: &str, bytes: Vec<u8>, want: Want) -> Case {
    let want_allow = match want {
        Want::Reject(PdfActiveContent, _) => Want::Ok,
        ref w => w.clone(),
    };
    Case {
        name: name.to_owned(),
        bytes,
        limits: Limits::default(),
        want,
        want_allow,
    }
}

fn allow(limits: &Limits) -> Limits {
    Limits {
        pdf_active_content: ActiveContentPolicy::Allow,
        ..limits.clone()
    }
}

fn check_verdict(name: &str, policy: &str, got: &Result<(), Rejection>, want: &Want) {
    match (got, want) {
        (Ok(()), Want::Ok) => {}
        (Err(r), Want::Reject(code, detail)) if r.code == *code && r.detail.contains(detail) => {}
        _ => panic!("{name} ({policy}): got {got:?}, want {want:?}"),
    }
}

/// Checks one case: one-shot and in 16 KiB chunks, under both policies.
fn check_case(c: &Case) {
    for (policy, limits, want) in [
        ("reject", c.limits.clone(), &c.want),
        ("allow", allow(&c.limits), &c.want_allow),
    ] {
        let one = scan_pdf(&limits, &c.bytes, c.bytes.len().max(1));
        check_verdict(&c.name, policy, &one, want);
        let chunked = scan_pdf(&limits, &c.bytes, 16 * 1024);
        assert_eq!(chunked, one, "{} ({policy}): 16 KiB chunks differ", c.name);
    }
}

// ---------------------------------------------------------------------------
// Hand-built PDFs (`pdf`, a classic PDF from object bodies, and `zlib` and
// `noise` are the testkit's, shared with benches/inspect_pdf.rs)
// ---------------------------------------------------------------------------

fn obj(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A stream object body with a direct `/Length`.
fn stream(dict_extra: &str, data: &[u8]) -> Vec<u8> {
    let mut v = format!("<< /Length {} {dict_extra} >>\nstream\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\nendstream");
    v
}

const CONTENT: &[u8] = b"BT /F1 24 Tf 72 700 Td (Total 12.34) Tj ET\n";

/// Catalog, page tree, one page, its content stream and a font, then `more`.
fn objects(
    catalog_extra: &str,
    page_extra: &str,
    content: &[u8],
    more: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    let mut v = vec![
        obj(&format!(
            "<< /Type /Catalog /Pages 2 0 R {catalog_extra} >>"
        )),
        obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        obj(&format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
             /Resources << /Font << /F1 5 0 R >> >> {page_extra} >>"
        )),
        stream("", content),
        obj("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"),
    ];
    v.extend_from_slice(more);
    v
}

fn minimal() -> Vec<u8> {
    pdf(&objects("", "", CONTENT, &[]), "")
}

/// The data of an object stream holding `objects` (numbered from `first_num`),
/// with its `/N` and `/First`.
fn objstm_data(first_num: u32, objects: &[&str]) -> (Vec<u8>, usize, usize) {
    let mut header = String::new();
    let mut body = String::new();
    for (i, o) in objects.iter().enumerate() {
        header.push_str(&format!("{} {} ", first_num + i as u32, body.len()));
        body.push_str(o);
        body.push('\n');
    }
    let first = header.len();
    ((header + &body).into_bytes(), objects.len(), first)
}

/// An object stream object: FlateDecode unless `filter` says otherwise
/// (`""` = no filter, else the text of the `/Filter` entry and raw data).
fn objstm(first_num: u32, objects: &[&str], filter: Option<&str>) -> Vec<u8> {
    let (data, n, first) = objstm_data(first_num, objects);
    match filter {
        None => stream(
            &format!("/Type /ObjStm /N {n} /First {first} /Filter /FlateDecode"),
            &zlib(&data),
        ),
        Some("") => stream(&format!("/Type /ObjStm /N {n} /First {first}"), &data),
        Some(f) => stream(
            &format!("/Type /ObjStm /N {n} /First {first} /Filter {f}"),
            &data,
        ),
    }
}

/// Appends an incremental update: `objects` (number, body), a cross-reference
/// section for them and a trailer with `/Prev`.
fn incremental(base: &[u8], objects: &[(u32, Vec<u8>)], trailer_extra: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(base);
    let after = |key: &str| -> u64 {
        let at = text
            .rfind(key)
            .unwrap_or_else(|| panic!("no {key} in the base PDF"))
            + key.len();
        text[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let prev = after("startxref");
    let root = after("/Root");
    let size = after("/Size").max(
        objects
            .iter()
            .map(|(n, _)| u64::from(*n) + 1)
            .max()
            .unwrap_or(0),
    );
    let mut out = base.to_vec();
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    let mut xref = String::from("xref\n");
    for (num, body) in objects {
        let off = out.len();
        out.extend_from_slice(format!("{num} 0 obj\n").as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
        xref.push_str(&format!("{num} 1\n{off:010} 00000 n \n"));
    }
    let xref_at = out.len();
    out.extend_from_slice(xref.as_bytes());
    out.extend_from_slice(
        format!("trailer\n<< /Size {size} /Root {root} 0 R /Prev {prev} {trailer_extra} >>\nstartxref\n{xref_at}\n%%EOF\n")
            .as_bytes(),
    );
    out
}

fn nested(depth: usize) -> Vec<u8> {
    let value = format!("{}1{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
    pdf(&objects(&format!("/Deep {value}"), "", CONTENT, &[]), "")
}

fn hand_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.push(c);

    // --- accepted
    add(case("h_minimal", minimal(), Want::Ok));
    add(case(
        "h_version_2_0",
        [b"%PDF-2.0".as_slice(), &minimal()[8..]].concat(),
        Want::Ok,
    ));
    add(case(
        "h_version_1_0",
        [b"%PDF-1.0".as_slice(), &minimal()[8..]].concat(),
        Want::Ok,
    ));
    // The words only in strings, comments, hex strings and stream data.
    let benign_content = b"% /JavaScript /JS /Launch in a content stream comment\n\
        /JavaScript BMC /RichMedia BDC BT /F1 24 Tf 72 700 Td (JavaScript /JS Launch EmbeddedFile) Tj ET EMC EMC\n\
        /JS << /Encrypt 7 /Type /XRef >> BDC (trailer) Tj EMC\n";
    add(case(
        "h_words_in_strings_comments_streams",
        pdf(
            &objects(
                "",
                "",
                benign_content,
                &[obj(
                    "% /JavaScript /JS /Launch /EmbeddedFiles in a comment\n\
                       << /Title (Pay /JavaScript \\) /Launch \\(x\\) and (nested /JS) too) \
                          /Subject <2F4A617661536372697074> /Keywords (\\/RichMedia) >>",
                )],
            ),
            "/Info 6 0 R",
        ),
        Want::Ok,
    ));
    // Names that are only prefixes/extensions of the active ones.
    add(case(
        "h_near_miss_names",
        pdf(
            &objects(
                "/JavaScripts 1 /JSON /Launcher /RichMediaX",
                "/EmbeddedFilesX 2",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Ok,
    ));
    // /Encrypt that is not a top-level trailer/xref-stream key.
    add(case(
        "h_encrypt_not_a_trailer_key",
        pdf(
            &objects("/Encrypt 5 0 R /Foo << /Encrypt 1 >>", "", CONTENT, &[]),
            "/Info << /Encrypt (x) >> /Foo /Encrypt /Bar [/Encrypt]",
        ),
        Want::Ok,
    ));
    // Binary stream data full of syntax, with a correct /Length.
    let mut binary = noise(5000, 7);
    binary.extend_from_slice(
        b" /JavaScript /Encrypt trailer << /Encrypt 1 0 R >> ((( << [[[[ endstream ",
    );
    binary.extend_from_slice(&noise(3000, 8));
    add(case(
        "h_binary_stream_with_syntax_inside",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[stream(
                    "/Type /XObject /Subtype /Image /Width 10 /Height 10",
                    &binary,
                )],
            ),
            "",
        ),
        Want::Ok,
    ));
    // Indirect /Length: the end is found by searching for endstream.
    let indirect = {
        let mut v = objects("", "", CONTENT, &[]);
        let data = noise(3000, 9);
        let mut s = b"<< /Length 7 0 R /Filter /DCTDecode >>\nstream\n".to_vec();
        s.extend_from_slice(&data);
        s.extend_from_slice(b"\nendstream");
        v.push(s);
        v.push(obj(&format!("{}", data.len())));
        v
    };
    add(case("h_indirect_length", pdf(&indirect, ""), Want::Ok));
    // stream followed by a lone CR, and CRLF.
    let cr = pdf(&objects("", "", CONTENT, &[]), "")
        .windows(7)
        .position(|w| w == b"stream\n")
        .map(|p| {
            let mut v = minimal();
            v[p + 6] = b'\r';
            v
        })
        .unwrap();
    add(case("h_stream_lone_cr", cr, Want::Ok));
    let crlf = {
        let mut s = format!("<< /Length {} >>\r\nstream\r\n", CONTENT.len()).into_bytes();
        s.extend_from_slice(CONTENT);
        s.extend_from_slice(b"\r\nendstream");
        let mut v = objects("", "", CONTENT, &[]);
        v[3] = s;
        pdf(&v, "")
    };
    add(case("h_stream_crlf", crlf, Want::Ok));
    // /Length too short: the data checks out only at the real endstream.
    let short = {
        let mut v = objects("", "", CONTENT, &[]);
        let mut s = format!("<< /Length {} >>\nstream\n", CONTENT.len() - 10).into_bytes();
        s.extend_from_slice(CONTENT);
        s.extend_from_slice(b"\nendstream");
        v[3] = s;
        v
    };
    add(case("h_length_too_short", pdf(&short, ""), Want::Ok));
    let mut short_js = short.clone();
    short_js.push(obj("<< /S /JavaScript /JS (app.alert(1)) >>"));
    add(case(
        "h_length_too_short_then_js",
        pdf(&short_js, ""),
        Want::Reject(PdfActiveContent, "/JavaScript at offset"),
    ));
    // /Length too long by a few bytes: the endstream straddles the count.
    let long_by_3 = {
        let mut v = objects("", "", CONTENT, &[]);
        let mut s = format!("<< /Length {} >>\nstream\n", CONTENT.len() + 3).into_bytes();
        s.extend_from_slice(CONTENT);
        s.extend_from_slice(b"endstream");
        v[3] = s;
        v.push(obj("<< /S /JavaScript /JS (app.alert(1)) >>"));
        v
    };
    add(case(
        "h_length_too_long_by_3_then_js",
        pdf(&long_by_3, ""),
        Want::Reject(PdfActiveContent, "/JavaScript at offset"),
    ));
    // /Length far too long: it swallows the next object, which is not inspected.
    let long = {
        let mut v = objects("", "", CONTENT, &[]);
        let mut s = format!("<< /Length {} >>\nstream\n", CONTENT.len() + 60).into_bytes();
        s.extend_from_slice(CONTENT);
        s.extend_from_slice(
            b"\nendstream\nendobj\n6 0 obj\n<< /S /JavaScript /JS (app.alert(1)) >>\nendobj\n",
        );
        v[3] = s;
        v
    };
    add(case(
        "h_length_too_long",
        pdf(&long, ""),
        Want::Reject(MalformedImage, "runs past its endstream"),
    ));
    // /Length right although the data contains "endstream" (an embedded PDF).
    let embedded_text = b"%PDF-1.4\n1 0 obj << /Length 3 >> stream\nabc\nendstream endobj trailer << /Encrypt 2 0 R >> %%EOF\n";
    add(case(
        "h_length_right_with_endstream_in_data",
        pdf(
            &objects("", "", CONTENT, &[stream("/Type /XObject", embedded_text)]),
            "",
        ),
        Want::Ok,
    ));
    let mut after_embedded = objects("", "", CONTENT, &[stream("/Type /XObject", embedded_text)]);
    after_embedded.push(obj("<< /S /Launch /F (calc.exe) >>"));
    add(case(
        "h_length_right_with_endstream_in_data_then_launch",
        pdf(&after_embedded, ""),
        Want::Reject(PdfActiveContent, "/Launch"),
    ));
    // Trailing white-space, EOLs and NULs after %%EOF.
    let mut trailing = minimal();
    trailing.extend_from_slice(b"\r\n  \t\x0c\0\0\0\n");
    add(case("h_trailing_whitespace_and_nuls", trailing, Want::Ok));
    // Up to 1019 bytes of junk before the header.
    let prefix = |n: usize| [vec![b'x'; n], minimal()].concat();
    add(case("h_header_at_1019", prefix(1019), Want::Ok));
    add(case("h_deep_64", nested(64), Want::Ok));
    add(case(
        "h_objstm_benign",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(
                    7,
                    &["<< /Title (JavaScript /JS /Launch) >>", "[ (x) <2F4A53> ]"],
                    None,
                )],
            ),
            "",
        ),
        Want::Ok,
    ));
    // An incremental update (a second body, xref section and trailer with /Prev).
    add(case(
        "h_incremental_benign",
        incremental(
            &minimal(),
            &[(6, obj("<< /Title (Receipt) /Producer (hand) >>"))],
            "/Info 6 0 R",
        ),
        Want::Ok,
    ));

    // --- not PDF / broken
    add(case(
        "h_empty",
        Vec::new(),
        Want::Reject(ContentMismatch, "no %PDF- header in the first 1024 bytes"),
    ));
    add(case(
        "h_jpeg",
        [b"\xff\xd8\xff\xe0\0\x10JFIF\0".as_slice(), &noise(3000, 3)].concat(),
        Want::Reject(ContentMismatch, "no %PDF- header"),
    ));
    add(case(
        "h_header_at_1020",
        prefix(1020),
        Want::Reject(ContentMismatch, "no %PDF- header"),
    ));
    add(case(
        "h_header_after_1024",
        prefix(1100),
        Want::Reject(ContentMismatch, "no %PDF- header"),
    ));
    add(case(
        "h_bad_version_3_0",
        [b"%PDF-3.0".as_slice(), &minimal()[8..]].concat(),
        Want::Reject(MalformedImage, "unsupported version"),
    ));
    add(case(
        "h_bad_version_1_10",
        [b"%PDF-1.10".as_slice(), &minimal()[8..]].concat(),
        Want::Reject(MalformedImage, "unsupported version"),
    ));
    add(case(
        "h_bad_version_short",
        b"%PDF-1".to_vec(),
        Want::Reject(MalformedImage, "%%EOF"),
    ));
    let m = minimal();
    add(case(
        "h_missing_eof",
        m[..m.len() - 6].to_vec(),
        Want::Reject(MalformedImage, "does not end with %%EOF"),
    ));
    add(case(
        "h_junk_after_eof",
        [m.as_slice(), b"junk\n"].concat(),
        Want::Reject(MalformedImage, "does not end with %%EOF"),
    ));
    add(case(
        "h_split_eof_marker",
        [&m[..m.len() - 6], b"%% EOF\n".as_slice()].concat(),
        Want::Reject(MalformedImage, "does not end with %%EOF"),
    ));
    let content_at = m.windows(6).position(|w| w == b"stream").unwrap();
    add(case(
        "h_truncated_in_stream",
        m[..content_at + 20].to_vec(),
        Want::Reject(MalformedImage, "%%EOF"),
    ));
    add(case(
        "h_truncated_half",
        m[..m.len() / 2].to_vec(),
        Want::Reject(MalformedImage, "%%EOF"),
    ));
    // A stream that never ends although the file ends with %%EOF.
    add(case(
        "h_unterminated_stream",
        [
            HEADER,
            b"1 0 obj\n<< /Length 7 0 R >>\nstream\nabc\n%%EOF\n".as_slice(),
        ]
        .concat(),
        Want::Reject(MalformedImage, "has no endstream"),
    ));
    add(case(
        "h_length_past_eof",
        [
            HEADER,
            b"1 0 obj\n<< /Length 99999 >>\nstream\nabc\n%%EOF\n".as_slice(),
        ]
        .concat(),
        Want::Reject(MalformedImage, "runs past the end of the file"),
    ));
    add(case(
        "h_unterminated_string",
        [
            HEADER,
            b"1 0 obj\n<< /Title (abc >>\nendobj\n%%EOF\n".as_slice(),
        ]
        .concat(),
        Want::Reject(MalformedImage, "string at offset"),
    ));
    add(case(
        "h_deep_65",
        nested(65),
        Want::Reject(MalformedImage, "nest deeper than 64"),
    ));
    add(case(
        "h_deep_dicts",
        pdf(
            &objects(&format!("/D {}", "<< /A ".repeat(70)), "", CONTENT, &[]),
            "",
        ),
        Want::Reject(MalformedImage, "nest deeper than 64"),
    ));

    // --- active content
    add(case(
        "h_js_openaction",
        pdf(
            &objects(
                "/OpenAction << /S /JavaScript /JS (app.alert(1)) >>",
                "",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /JavaScript at offset"),
    ));
    add(case(
        "h_js_key_only",
        pdf(
            &objects(
                "/AA << /O << /S /Foo /JS 6 0 R >> >>",
                "",
                CONTENT,
                &[obj("(app.alert(1))")],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /JS at offset"),
    ));
    add(case(
        "h_launch_annotation",
        pdf(
            &objects(
                "",
                "/Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 100 100] /A << /S /Launch /F (calc.exe) >> >>]",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /Launch"),
    ));
    add(case(
        "h_richmedia",
        pdf(
            &objects(
                "",
                "/Annots [<< /Type /Annot /Subtype /RichMedia /Rect [0 0 1 1] >>]",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /RichMedia"),
    ));
    add(case(
        "h_embedded_files",
        pdf(
            &objects(
                "/Names << /EmbeddedFiles << /Names [(a.txt) 6 0 R] >> >>",
                "",
                CONTENT,
                &[
                    obj("<< /Type /Filespec /F (a.txt) /EF << /F 7 0 R >> >>"),
                    stream("/Type /EmbeddedFile", b"hello"),
                ],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /EmbeddedFiles"),
    ));
    add(case(
        "h_escaped_javascript",
        pdf(
            &objects(
                "/OpenAction << /S /Java#53cript /JS (x) >>",
                "",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /JavaScript"),
    ));
    add(case(
        "h_escaped_js_all_hex",
        pdf(
            &objects("/OpenAction << /#4a#53 (x) >>", "", CONTENT, &[]),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /JS"),
    ));
    // A name right before EOF-ish delimiters and inside nested arrays.
    add(case(
        "h_js_deep_in_arrays",
        pdf(&objects("/X [[[[/JS]]]]", "", CONTENT, &[]), ""),
        Want::Reject(PdfActiveContent, "/JS"),
    ));
    add(case(
        "h_incremental_js",
        incremental(
            &minimal(),
            &[(
                1,
                obj(
                    "<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>",
                ),
            )],
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript"),
    ));
    // Object streams.
    let js_obj = "<< /S /JavaScript /JS (app.alert(1)) >>";
    add(case(
        "h_objstm_flate_js",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm(7, &[js_obj], None)],
            ),
            "",
        ),
        Want::Reject(
            PdfActiveContent,
            "/JavaScript in the object stream at offset",
        ),
    ));
    add(case(
        "h_objstm_raw_js",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm(7, &[js_obj], Some(""))],
            ),
            "",
        ),
        Want::Reject(
            PdfActiveContent,
            "/JavaScript in the object stream at offset",
        ),
    ));
    // `[/FlateDecode]` over data that is not Flate.
    add(case(
        "h_objstm_filter_array_corrupt",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(7, &[js_obj], Some("[/FlateDecode]"))],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "corrupt FlateDecode"),
    ));
    let flate_array_js = {
        let (data, n, first) = objstm_data(7, &[js_obj]);
        stream(
            &format!("/Type /ObjStm /N {n} /First {first} /Filter [ /FlateDecode ]"),
            &zlib(&data),
        )
    };
    add(case(
        "h_objstm_flate_in_array_js",
        pdf(&objects("", "", CONTENT, &[flate_array_js]), ""),
        Want::Reject(PdfActiveContent, "in the object stream"),
    ));
    let indirect_len_objstm = {
        let (data, n, first) = objstm_data(7, &["<< /A /Launch >>"]);
        let z = zlib(&data);
        let mut s = format!(
            "<< /Type /ObjStm /N {n} /First {first} /Filter /FlateDecode /Length 7 0 R >>\nstream\n"
        )
        .into_bytes();
        s.extend_from_slice(&z);
        s.extend_from_slice(b"\nendstream");
        s
    };
    add(case(
        "h_objstm_indirect_length_launch",
        pdf(
            &objects("", "", CONTENT, &[indirect_len_objstm, obj("1")]),
            "",
        ),
        Want::Reject(PdfActiveContent, "/Launch in the object stream"),
    ));
    // No direct /Length and a name touching `endstream`: the name ends there
    // whatever the chunking.
    let touching = {
        let stm = obj("<< /Type /ObjStm /N 1 /First 4 /Length 7 0 R >>\nstream\n7 0 << /S /JS");
        let mut v = pdf(&objects("", "", CONTENT, &[stm, obj("12")]), "");
        let at = v.windows(6).position(|w| w == b"/S /JS").unwrap() + 6;
        v.splice(at..at, b"endstream".iter().copied());
        v
    };
    add(case(
        "h_objstm_raw_name_touching_endstream",
        touching,
        Want::Reject(PdfActiveContent, "/JS in the object stream"),
    ));
    add(case(
        "h_objstm_escaped_name",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(7, &["<< /Rich#4dedia 1 >>"], None)],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/RichMedia in the object stream"),
    ));
    add(case(
        "h_objstm_name_at_end",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[{
                    let data = b"7 0 /EmbeddedFile";
                    stream(
                        "/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode",
                        &zlib(data),
                    )
                }],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/EmbeddedFile in the object stream"),
    ));
    add(case(
        "h_objstm_deep",
        pdf(
            &objects("", "", CONTENT, &[objstm(7, &[&"[".repeat(65)], None)]),
            "",
        ),
        Want::Reject(MalformedImage, "nest deeper than 64 in the object stream"),
    ));
    // Bombs: 1 MiB of white-space per stream, capped at 64 KiB per stream or
    // 128 KiB per file.
    let bomb_limits = Limits {
        max_inflate_bytes: 64 * 1024,
        max_inflate_total: 128 * 1024,
        ..Limits::default()
    };
    let bomb = |len: usize| {
        let mut data = b"7 0 << /Pad (".to_vec();
        data.resize(len, b' ');
        data.extend_from_slice(b") >>");
        stream(
            "/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode",
            &zlib(&data),
        )
    };
    add(Case {
        limits: bomb_limits.clone(),
        ..case(
            "h_objstm_bomb",
            pdf(&objects("", "", CONTENT, &[bomb(1 << 20)]), ""),
            Want::Reject(MalformedImage, "inflates past 65536 bytes"),
        )
    });
    add(Case {
        limits: bomb_limits.clone(),
        ..case(
            "h_objstm_total",
            pdf(
                &objects("", "", CONTENT, &[bomb(50_000), bomb(50_000), bomb(50_000)]),
                "",
            ),
            Want::Reject(MalformedImage, "inflate past 131072 bytes in total"),
        )
    });
    add(Case {
        limits: bomb_limits,
        ..case(
            "h_objstm_under_caps",
            pdf(&objects("", "", CONTENT, &[bomb(50_000), bomb(50_000)]), ""),
            Want::Ok,
        )
    });
    // The caps are inclusive: exactly max_inflate_bytes is fine.
    let (exact_data, _, _) = objstm_data(7, &["<< /Title (Receipt) >>"]);
    let exact = pdf(
        &objects(
            "",
            "",
            CONTENT,
            &[objstm(7, &["<< /Title (Receipt) >>"], None)],
        ),
        "",
    );
    for (name, cap, want) in [
        ("h_objstm_exactly_at_cap", exact_data.len(), Want::Ok),
        (
            "h_objstm_one_past_cap",
            exact_data.len() - 1,
            Want::Reject(MalformedImage, "inflates past"),
        ),
    ] {
        add(Case {
            limits: Limits {
                max_inflate_bytes: cap as u64,
                max_inflate_total: cap as u64,
                ..Limits::default()
            },
            ..case(name, exact.clone(), want)
        });
    }
    let objstm_short = {
        let (data, n, first) = objstm_data(7, &["<< /Title (Receipt) >>"]);
        let z = zlib(&data);
        let mut s = format!(
            "<< /Type /ObjStm /N {n} /First {first} /Filter /FlateDecode /Length {} >>\nstream\n",
            z.len() - 4
        )
        .into_bytes();
        s.extend_from_slice(&z);
        s.extend_from_slice(b"\nendstream");
        s
    };
    add(case(
        "h_objstm_length_too_short",
        pdf(&objects("", "", CONTENT, &[objstm_short]), ""),
        Want::Reject(MalformedImage, "/Length does not match its data"),
    ));
    add(case(
        "h_objstm_corrupt",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[stream(
                    "/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode",
                    b"\x78\x9c\x07garbage",
                )],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "corrupt FlateDecode data"),
    ));
    add(case(
        "h_objstm_other_filter",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(7, &["<< /JS (x) >>"], Some("/ASCIIHexDecode"))],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "filter other than /FlateDecode"),
    ));
    add(case(
        "h_objstm_filter_chain",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(
                    7,
                    &["<< /X 1 >>"],
                    Some("[/ASCII85Decode /FlateDecode]"),
                )],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "filter other than /FlateDecode"),
    ));
    add(case(
        "h_objstm_predictor",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[{
                    let (data, n, first) = objstm_data(7, &["<< /X 1 >>"]);
                    stream(
                        &format!(
                            "/Type /ObjStm /N {n} /First {first} /Filter /FlateDecode /DecodeParms << /Predictor 12 /Columns 4 >>"
                        ),
                        &zlib(&data),
                    )
                }],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "/DecodeParms"),
    ));
    // A non-ObjStm Flate stream holding active names is not inflated.
    add(case(
        "h_flate_content_stream_not_inflated",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[stream(
                    "/Filter /FlateDecode",
                    &zlib(b"/JavaScript BMC EMC"),
                )],
            ),
            "",
        ),
        Want::Ok,
    ));

    // --- encryption
    let fake_encrypt = obj("<< /Filter /Standard /V 1 /R 2 /O <00> /U <00> /P -4 >>");
    add(case(
        "h_encrypt_in_trailer",
        pdf(
            &objects("", "", CONTENT, std::slice::from_ref(&fake_encrypt)),
            "/Encrypt 6 0 R",
        ),
        Want::Reject(
            PdfEncrypted,
            "PDF is encrypted (/Encrypt in trailer at offset",
        ),
    ));
    add(case(
        "h_encrypt_escaped",
        pdf(
            &objects("", "", CONTENT, std::slice::from_ref(&fake_encrypt)),
            "/Encr#79pt 6 0 R",
        ),
        Want::Reject(PdfEncrypted, "/Encrypt in trailer"),
    ));
    add(case(
        "h_encrypt_after_nested_values",
        pdf(
            &objects("", "", CONTENT, std::slice::from_ref(&fake_encrypt)),
            "/Info 9 0 R /ID [<00><01>] /X << /Encrypt 1 >> /Encrypt 6 0 R",
        ),
        Want::Reject(PdfEncrypted, "/Encrypt in trailer"),
    ));
    add(case(
        "h_encrypt_null",
        pdf(&objects("", "", CONTENT, &[]), "/Encrypt null"),
        Want::Ok,
    ));
    add(case(
        "h_encrypt_direct_dict",
        pdf(
            &objects("", "", CONTENT, &[]),
            "/Encrypt << /Filter /Standard /V 2 >>",
        ),
        Want::Reject(PdfEncrypted, "/Encrypt in trailer"),
    ));
    add(case(
        "h_encrypt_in_incremental_trailer",
        incremental(&minimal(), &[(6, fake_encrypt.clone())], "/Encrypt 6 0 R"),
        Want::Reject(PdfEncrypted, "/Encrypt in trailer"),
    ));
    let xref_stream = |dict: &str| {
        let mut v = objects("", "", CONTENT, &[]);
        v.push(stream(dict, &[1, 0, 0, 0, 1, 0, 9, 0]));
        let mut out = HEADER.to_vec();
        for (i, body) in v.iter().enumerate() {
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        out.extend_from_slice(b"startxref\n0\n%%EOF\n");
        out
    };
    add(case(
        "h_encrypt_in_xref_stream",
        xref_stream("/Type /XRef /W [1 2 1] /Size 7 /Root 1 0 R /Encrypt 7 0 R"),
        Want::Reject(
            PdfEncrypted,
            "/Encrypt in cross-reference stream dictionary at offset",
        ),
    ));
    add(case(
        "h_encrypt_before_type_xref",
        xref_stream("/Encrypt 7 0 R /Filter /FlateDecode /Root 1 0 R /Type /XRef"),
        Want::Reject(
            PdfEncrypted,
            "/Encrypt in cross-reference stream dictionary",
        ),
    ));
    add(case(
        "h_xref_stream_plain",
        xref_stream("/Type /XRef /W [1 2 1] /Size 7 /Root 1 0 R /Info << /Encrypt 1 >>"),
        Want::Ok,
    ));
    add(case(
        "h_encrypt_in_other_object_dict",
        xref_stream("/Type /XObject /Encrypt 7 0 R"),
        Want::Ok,
    ));
    cases
}

// ---------------------------------------------------------------------------
// Tool-made PDFs
// ---------------------------------------------------------------------------

fn tool_ok(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether qpdf and gs are there. Missing tools fail the tests in CI.
pub(crate) fn tools_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let missing: Vec<&str> = ["qpdf", "gs"].into_iter().filter(|t| !tool_ok(t)).collect();
        if missing.is_empty() {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {missing:?} cannot be run: install the Debian packages qpdf and ghostscript"
        );
        // Straight to stderr: the test harness does not capture that.
        let _ = writeln!(
            std::io::stderr(),
            "\n********************************************************************\n\
             * SKIPPING the PDF fixtures made by tools: {missing:?} not found.\n\
             * Install them with `apt-get install qpdf ghostscript`.\n\
             ********************************************************************\n"
        );
        false
    })
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    // qpdf exits 3 when it succeeded with warnings.
    let ok = out.status.success() || (program == "qpdf" && out.status.code() == Some(3));
    assert!(
        ok,
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs Ghostscript's pdfwrite on a PostScript program.
pub(crate) fn gs(dir: &Path, name: &str, postscript: &str) -> Vec<u8> {
    let ps = format!("{name}.ps");
    let pdf = format!("{name}.pdf");
    std::fs::write(dir.join(&ps), postscript).unwrap();
    run(
        dir,
        "gs",
        &[
            "-q",
            "-dNOPAUSE",
            "-dBATCH",
            "-dSAFER",
            "-sDEVICE=pdfwrite",
            "-o",
            &pdf,
            &ps,
        ],
    );
    std::fs::read(dir.join(pdf)).unwrap()
}

/// Runs `qpdf [args] input output`; `args` may hold `{out}`-free options only.
pub(crate) fn qpdf(dir: &Path, input: &[u8], args: &[&str]) -> Vec<u8> {
    std::fs::write(dir.join("in.pdf"), input).unwrap();
    let _ = std::fs::remove_file(dir.join("out.pdf"));
    let mut all = args.to_vec();
    all.extend(["in.pdf", "out.pdf"]);
    run(dir, "qpdf", &all);
    std::fs::read(dir.join("out.pdf")).unwrap()
}

/// Whether `qpdf --check` accepts the file without warnings; else its output.
fn qpdf_check(dir: &Path, input: &[u8]) -> Result<(), String> {
    std::fs::write(dir.join("check.pdf"), input).unwrap();
    let out = Command::new("qpdf")
        .args(["--check", "check.pdf"])
        .current_dir(dir)
        .output()
        .expect("cannot run qpdf");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) const PS_SHAPES: &str = "%!PS\n0.2 0.4 0.6 setrgbcolor\n72 72 200 100 rectfill\n\
    newpath 300 300 50 0 360 arc fill\nshowpage\n";
const PS_TEXT: &str = "%!PS\n/Helvetica findfont 24 scalefont setfont\n\
    72 700 moveto (Receipt: JavaScript /JS Launch EmbeddedFile RichMedia 12.34) show\nshowpage\n";
pub(crate) const PS_JS: &str = "%!PS\n[ {Catalog} << /OpenAction << /S /JavaScript /JS (app.alert\\(1\\);) >> >> /PUT pdfmark\n\
    72 72 200 100 rectfill\nshowpage\n";
const PS_LAUNCH: &str = "%!PS\n[ /Rect [72 72 272 172] /Border [0 0 0] /Action << /S /Launch /F (calc.exe) >> \
    /Subtype /Link /ANN pdfmark\n72 72 200 100 rectfill\nshowpage\n";

fn tool_cases() -> Vec<Case> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cases = Vec::new();
    let base = gs(d, "shapes", PS_SHAPES);
    let text = gs(d, "text", PS_TEXT);
    let js = gs(d, "js", PS_JS);
    let launch = gs(d, "launch", PS_LAUNCH);
    qpdf_check(d, &base).expect("qpdf --check accepts Ghostscript's PDF");

    // --- accepted
    cases.push(case("gs_shapes", base.clone(), Want::Ok));
    cases.push(case("gs_text_with_active_words", text.clone(), Want::Ok));
    let qdf_text = qpdf(d, &text, &["--qdf"]);
    assert!(
        qdf_text.windows(10).any(|w| w == b"JavaScript"),
        "the QDF content stream should show the page text"
    );
    cases.push(case("qpdf_qdf_text_with_active_words", qdf_text, Want::Ok));
    for (name, args) in [
        ("qpdf_object_streams", &["--object-streams=generate"][..]),
        ("qpdf_linearize", &["--linearize"]),
        (
            "qpdf_linearize_object_streams",
            &["--linearize", "--object-streams=generate"],
        ),
        ("qpdf_qdf", &["--qdf"]),
        (
            "qpdf_qdf_object_streams",
            &["--qdf", "--object-streams=generate"],
        ),
        ("qpdf_deterministic_id", &["--deterministic-id"]),
        (
            "qpdf_uncompressed",
            &["--stream-data=uncompress", "--object-streams=disable"],
        ),
        (
            "qpdf_pdf_2_0",
            &["--force-version=2.0", "--object-streams=generate"],
        ),
    ] {
        cases.push(case(name, qpdf(d, &base, args), Want::Ok));
    }
    let os_text = qpdf(d, &text, &["--object-streams=generate"]);
    cases.push(case("qpdf_object_streams_text", os_text, Want::Ok));
    // An incremental update appended to Ghostscript's output.
    let updated = incremental(
        &base,
        &[(99, obj("<< /Title (Receipt 42) >>"))],
        "/Info 99 0 R",
    );
    qpdf_check(d, &updated).expect("qpdf --check accepts the incremental update");
    cases.push(case("gs_incremental_update", updated.clone(), Want::Ok));
    cases.push(case(
        "qpdf_incremental_update_rewritten",
        qpdf(d, &updated, &["--object-streams=generate"]),
        Want::Ok,
    ));

    // --- active content
    cases.push(case(
        "gs_js_openaction",
        js.clone(),
        Want::Reject(PdfActiveContent, "/JavaScript at offset"),
    ));
    cases.push(case(
        "gs_launch",
        launch.clone(),
        Want::Reject(PdfActiveContent, "/Launch at offset"),
    ));
    // qpdf sorts keys: /JS comes before /S /JavaScript.
    for (name, input, want_name) in [("js", &js, "/J"), ("launch", &launch, "/Launch")] {
        for (variant, args, want) in [
            (
                "object_streams",
                &["--object-streams=generate"][..],
                "in the object stream",
            ),
            (
                "qdf_object_streams",
                &["--qdf", "--object-streams=generate"],
                "in the object stream",
            ),
            // Linearized files keep the first page's objects out of object streams.
            (
                "linearize_object_streams",
                &["--linearize", "--object-streams=generate"],
                "",
            ),
        ] {
            let out = qpdf(d, input, args);
            cases.push(case(
                &format!("qpdf_{name}_{variant}"),
                out,
                Want::Reject(PdfActiveContent, want),
            ));
        }
        cases.push(case(
            &format!("qpdf_{name}_linearize"),
            qpdf(d, input, &["--linearize"]),
            Want::Reject(PdfActiveContent, want_name),
        ));
    }
    std::fs::write(d.join("note.txt"), b"an attachment\n").unwrap();
    let attached = qpdf(d, &base, &["--add-attachment", "note.txt", "--"]);
    cases.push(case(
        "qpdf_attachment",
        attached.clone(),
        Want::Reject(PdfActiveContent, "/Embedded"),
    ));
    cases.push(case(
        "qpdf_attachment_object_streams",
        qpdf(d, &attached, &["--object-streams=generate"]),
        Want::Reject(PdfActiveContent, "/Embedded"),
    ));
    // --- encryption
    for (label, key_args) in [
        ("rc4_40", &["40", "--"][..]),
        ("rc4_128", &["128", "--use-aes=n", "--"]),
        ("aes_128", &["128", "--use-aes=y", "--"]),
        ("aes_256", &["256", "--"]),
    ] {
        for (pw_label, user) in [("user_pw", "secret"), ("owner_only", "")] {
            let mut args = vec!["--allow-weak-crypto", "--encrypt", user, "owner"];
            args.extend_from_slice(key_args);
            let plain = qpdf(d, &base, &args);
            cases.push(case(
                &format!("qpdf_encrypt_{label}_{pw_label}"),
                plain,
                Want::Reject(PdfEncrypted, "/Encrypt in trailer at offset"),
            ));
            let mut os_args = args.clone();
            os_args.insert(0, "--object-streams=generate");
            cases.push(case(
                &format!("qpdf_encrypt_{label}_{pw_label}_object_streams"),
                qpdf(d, &text, &os_args),
                Want::Reject(
                    PdfEncrypted,
                    "/Encrypt in cross-reference stream dictionary",
                ),
            ));
        }
    }
    cases.push(case(
        "qpdf_encrypt_aes_256_linearized",
        qpdf(
            d,
            &text,
            &["--linearize", "--encrypt", "", "owner", "256", "--"],
        ),
        Want::Reject(PdfEncrypted, "/Encrypt in trailer"),
    ));
    cases.push(case(
        "qpdf_encrypt_aes_256_linearized_object_streams",
        qpdf(
            d,
            &js,
            &[
                "--linearize",
                "--object-streams=generate",
                "--encrypt",
                "",
                "owner",
                "256",
                "--",
            ],
        ),
        Want::Reject(
            PdfEncrypted,
            "/Encrypt in cross-reference stream dictionary",
        ),
    ));
    // Encrypted with JavaScript: names are not encrypted, and the catalog stays
    // out of object streams, so the first verdict is active content.
    cases.push(Case {
        want_allow: Want::Reject(
            PdfEncrypted,
            "/Encrypt in cross-reference stream dictionary",
        ),
        ..case(
            "qpdf_encrypt_js_object_streams",
            qpdf(
                d,
                &js,
                &[
                    "--object-streams=generate",
                    "--encrypt",
                    "u",
                    "owner",
                    "128",
                    "--use-aes=y",
                    "--",
                ],
            ),
            Want::Reject(PdfActiveContent, "/JS at offset"),
        )
    });
    cases
}

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

struct Corpus {
    cases: Vec<Case>,
    tools: bool,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut cases = hand_cases();
        let tools = tools_available();
        if tools {
            cases.extend(tool_cases());
        }
        let mut names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names
            .windows(2)
            .for_each(|w| assert_ne!(w[0], w[1], "duplicate case name"));
        Corpus { cases, tools }
    })
}

fn get(name: &str) -> Option<&'static Case> {
    let c = corpus();
    match c.cases.iter().find(|c| c.name == name) {
        Some(case) => Some(case),
        None if name.starts_with("h_") || c.tools => panic!("no case {name}"),
        None => {
            let _ = writeln!(std::io::stderr(), "SKIPPED {name}: qpdf/gs missing");
            None
        }
    }
}

fn check(name: &str) {
    if let Some(c) = get(name) {
        check_case(c);
    }
}

macro_rules! cases {
    ($($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check(stringify!($test));
            }
        )*
    };
}

// Hand-built.
cases!(
    h_minimal,
    h_version_2_0,
    h_version_1_0,
    h_words_in_strings_comments_streams,
    h_near_miss_names,
    h_encrypt_not_a_trailer_key,
    h_binary_stream_with_syntax_inside,
    h_indirect_length,
    h_stream_lone_cr,
    h_stream_crlf,
    h_length_too_short,
    h_length_too_short_then_js,
    h_length_too_long_by_3_then_js,
    h_length_too_long,
    h_length_right_with_endstream_in_data,
    h_length_right_with_endstream_in_data_then_launch,
    h_trailing_whitespace_and_nuls,
    h_header_at_1019,
    h_deep_64,
    h_objstm_benign,
    h_incremental_benign,
    h_empty,
    h_jpeg,
    h_header_at_1020,
    h_header_after_1024,
    h_bad_version_3_0,
    h_bad_version_1_10,
    h_bad_version_short,
    h_missing_eof,
    h_junk_after_eof,
    h_split_eof_marker,
    h_truncated_in_stream,
    h_truncated_half,
    h_unterminated_stream,
    h_length_past_eof,
    h_unterminated_string,
    h_deep_65,
    h_deep_dicts,
    h_js_openaction,
    h_js_key_only,
    h_launch_annotation,
    h_richmedia,
    h_embedded_files,
    h_escaped_javascript,
    h_escaped_js_all_hex,
    h_js_deep_in_arrays,
    h_incremental_js,
    h_objstm_flate_js,
    h_objstm_raw_js,
    h_objstm_filter_array_corrupt,
    h_objstm_flate_in_array_js,
    h_objstm_indirect_length_launch,
    h_objstm_raw_name_touching_endstream,
    h_objstm_escaped_name,
    h_objstm_name_at_end,
    h_objstm_deep,
    h_objstm_bomb,
    h_objstm_total,
    h_objstm_under_caps,
    h_objstm_exactly_at_cap,
    h_objstm_one_past_cap,
    h_objstm_length_too_short,
    h_objstm_corrupt,
    h_objstm_other_filter,
    h_objstm_filter_chain,
    h_objstm_predictor,
    h_flate_content_stream_not_inflated,
    h_encrypt_in_trailer,
    h_encrypt_escaped,
    h_encrypt_after_nested_values,
    h_encrypt_null,
    h_encrypt_direct_dict,
    h_encrypt_in_incremental_trailer,
    h_encrypt_in_xref_stream,
    h_encrypt_before_type_xref,
    h_xref_stream_plain,
    h_encrypt_in_other_object_dict,
);

// Made by gs and qpdf.
cases!(
    gs_shapes,
    gs_text_with_active_words,
    qpdf_qdf_text_with_active_words,
    qpdf_object_streams,
    qpdf_linearize,
    qpdf_linearize_object_streams,
    qpdf_qdf,
    qpdf_qdf_object_streams,
    qpdf_deterministic_id,
    qpdf_uncompressed,
    qpdf_pdf_2_0,
    qpdf_object_streams_text,
    gs_incremental_update,
    qpdf_incremental_update_rewritten,
    gs_js_openaction,
    gs_launch,
    qpdf_js_object_streams,
    qpdf_js_linearize_object_streams,
    qpdf_js_qdf_object_streams,
    qpdf_js_linearize,
    qpdf_launch_object_streams,
    qpdf_launch_linearize_object_streams,
    qpdf_launch_qdf_object_streams,
    qpdf_launch_linearize,
    qpdf_attachment,
    qpdf_attachment_object_streams,
    qpdf_encrypt_rc4_40_user_pw,
    qpdf_encrypt_rc4_40_user_pw_object_streams,
    qpdf_encrypt_rc4_40_owner_only,
    qpdf_encrypt_rc4_40_owner_only_object_streams,
    qpdf_encrypt_rc4_128_user_pw,
    qpdf_encrypt_rc4_128_user_pw_object_streams,
    qpdf_encrypt_rc4_128_owner_only,
    qpdf_encrypt_rc4_128_owner_only_object_streams,
    qpdf_encrypt_aes_128_user_pw,
    qpdf_encrypt_aes_128_user_pw_object_streams,
    qpdf_encrypt_aes_128_owner_only,
    qpdf_encrypt_aes_128_owner_only_object_streams,
    qpdf_encrypt_aes_256_user_pw,
    qpdf_encrypt_aes_256_user_pw_object_streams,
    qpdf_encrypt_aes_256_owner_only,
    qpdf_encrypt_aes_256_owner_only_object_streams,
    qpdf_encrypt_aes_256_linearized,
    qpdf_encrypt_aes_256_linearized_object_streams,
    qpdf_encrypt_js_object_streams,
);

/// Every case in the corpus has a test of its own above.
#[test]
fn every_case_has_a_test() {
    let src = include_str!("inspect_pdf.rs");
    for c in &corpus().cases {
        assert!(
            src.contains(&format!("    {},\n", c.name)),
            "case {} has no test",
            c.name
        );
    }
}

// ---------------------------------------------------------------------------
// Chunking
// ---------------------------------------------------------------------------

fn feed_chunks(
    limits: &Limits,
    bytes: &[u8],
    sizes: impl Iterator<Item = usize>,
) -> Result<(), Rejection> {
    let mut s = PdfScanner::new(limits);
    let mut rest = bytes;
    for size in sizes {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(size.clamp(1, rest.len()));
        s.feed(a)?;
        rest = b;
    }
    if !rest.is_empty() {
        s.feed(rest)?;
    }
    s.finish()
}

/// Two chunks, split at every offset (files up to 8 KiB) or at 2,000 offsets
/// spread over the file. The `Allow` policy only where its verdict differs.
/// Sharded so that the test threads share the work.
fn split_points(shard: usize, shards: usize) {
    for c in corpus().cases.iter().skip(shard).step_by(shards) {
        let reject = scan_pdf(&c.limits, &c.bytes, c.bytes.len().max(1));
        let allowed = allow(&c.limits);
        let allow_one = scan_pdf(&allowed, &c.bytes, c.bytes.len().max(1));
        let mut runs = vec![(c.limits.clone(), reject.clone())];
        if allow_one != reject {
            runs.push((allowed, allow_one));
        }
        for (limits, one) in runs {
            let n = c.bytes.len();
            let step = if n <= 8 * 1024 { 1 } else { n / 2000 + 1 };
            for at in (0..=n).step_by(step) {
                let (a, b) = c.bytes.split_at(at);
                let mut s = PdfScanner::new(&limits);
                let got = s.feed(a).and_then(|()| s.feed(b)).and_then(|()| s.finish());
                assert_eq!(got, one, "{}: split at {at}", c.name);
            }
        }
    }
}

#[test]
fn every_split_point_gives_the_one_shot_verdict_0() {
    split_points(0, 3);
}

#[test]
fn every_split_point_gives_the_one_shot_verdict_1() {
    split_points(1, 3);
}

#[test]
fn every_split_point_gives_the_one_shot_verdict_2() {
    split_points(2, 3);
}

#[test]
fn byte_at_a_time_gives_the_one_shot_verdict() {
    for c in &corpus().cases {
        let one = scan_pdf(&c.limits, &c.bytes, c.bytes.len().max(1));
        assert_eq!(scan_pdf(&c.limits, &c.bytes, 1), one, "{}", c.name);
        assert_eq!(
            feed_chunks(&c.limits, &c.bytes, std::iter::repeat(0)),
            one,
            "{} (empty feeds)",
            c.name
        );
    }
}

proptest! {
    // PROPTEST_CASES raises the count (e.g. for a long local run).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_chunkings_give_the_one_shot_verdict(
        pick in any::<prop::sample::Index>(),
        sizes in prop::collection::vec(1usize..3000, 1..40),
        allow_active in any::<bool>(),
    ) {
        let cases = &corpus().cases;
        let c = &cases[pick.index(cases.len())];
        let limits = if allow_active { allow(&c.limits) } else { c.limits.clone() };
        let one = scan_pdf(&limits, &c.bytes, c.bytes.len().max(1));
        let got = feed_chunks(&limits, &c.bytes, sizes.iter().copied().cycle());
        prop_assert_eq!(got, one, "{}", c.name);
    }

    /// Mutated files: any verdict, but the same in any chunking, and no panic.
    /// An edit overwrites a byte or splices in a piece of PDF syntax.
    #[test]
    fn mutated_files_are_chunking_invariant(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), prop::option::of(0..SPLICES.len())),
            1..8,
        ),
        sizes in prop::collection::vec(1usize..600, 1..20),
        allow_active in any::<bool>(),
    ) {
        let cases = &corpus().cases;
        let c = &cases[pick.index(cases.len())];
        let limits = if allow_active { allow(&c.limits) } else { c.limits.clone() };
        let mut bytes = c.bytes.clone();
        for (at, b, splice) in &edits {
            let i = at.index(bytes.len() + 1);
            match splice {
                Some(k) => {
                    bytes.splice(i..i, SPLICES[*k].iter().copied());
                }
                None if i < bytes.len() => bytes[i] = *b,
                None => bytes.push(*b),
            }
        }
        let one = scan_pdf(&limits, &bytes, bytes.len().max(1));
        prop_assert_eq!(feed_chunks(&limits, &bytes, sizes.iter().copied().cycle()), one);
    }
}

/// Syntax spliced into files by `mutated_files_are_chunking_invariant`.
const SPLICES: &[&[u8]] = &[
    b"endstream",
    b"endst",
    b"stream\n",
    b"stream\r",
    b"\nendstream\n",
    b"<<",
    b">>",
    b"[",
    b"]",
    b"(",
    b")",
    b"\\",
    b"<",
    b">",
    b"%",
    b"\n",
    b"/JS",
    b"/Java#53cript",
    b"#",
    b"/Encrypt 1 0 R",
    b"trailer <<",
    b"/Type /ObjStm",
    b"/Type /XRef",
    b"/Filter /FlateDecode",
    b"/Length 5",
    b"/Length 0",
    b"obj",
    b"endobj",
    b"null",
    b"%%EOF",
];

// ---------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------

#[test]
fn verdicts_are_sticky() {
    let bytes = get("h_js_openaction").unwrap().bytes.clone();
    let mut s = PdfScanner::new(&Limits::default());
    let err = s.feed(&bytes).unwrap_err();
    assert_eq!(err.code, PdfActiveContent);
    assert_eq!(s.feed(b"more"), Err(err.clone()));
    assert_eq!(s.finish(), Err(err.clone()));
    assert_eq!(s.finish(), Err(err));
}

#[test]
fn finish_is_idempotent() {
    let bytes = minimal();
    let mut s = PdfScanner::new(&Limits::default());
    s.feed(&bytes).unwrap();
    assert_eq!(s.finish(), Ok(()));
    assert_eq!(s.finish(), Ok(()));

    let mut s = PdfScanner::new(&Limits::default());
    s.feed(&bytes[..bytes.len() - 7]).unwrap();
    let err = s.finish().unwrap_err();
    assert_eq!(err.code, MalformedImage);
    assert_eq!(s.finish(), Err(err.clone()));
    assert_eq!(s.feed(b"%%EOF\n"), Err(err));
}

#[test]
fn details_name_offsets() {
    let c = get("h_js_openaction").unwrap();
    let at = c
        .bytes
        .windows(11)
        .position(|w| w == b"/JavaScript")
        .unwrap();
    let err = scan_pdf(&c.limits, &c.bytes, 100).unwrap_err();
    assert_eq!(
        err.detail,
        format!("PDF contains /JavaScript at offset {at}")
    );
    assert_eq!(
        err.to_string(),
        format!("pdf_active_content: PDF contains /JavaScript at offset {at}")
    );

    let c = get("h_encrypt_in_trailer").unwrap();
    let at = c.bytes.windows(8).rposition(|w| w == b"/Encrypt").unwrap();
    let err = scan_pdf(&c.limits, &c.bytes, 100).unwrap_err();
    assert_eq!(
        err.detail,
        format!("PDF is encrypted (/Encrypt in trailer at offset {at})")
    );

    let c = get("h_objstm_flate_js").unwrap();
    let kw = c.bytes.windows(8).position(|w| w == b"/ObjStm ").unwrap();
    let stream_kw = kw
        + c.bytes[kw..]
            .windows(7)
            .position(|w| w == b"stream\n")
            .unwrap();
    let err = scan_pdf(&c.limits, &c.bytes, 100).unwrap_err();
    let (decoded, _, _) = objstm_data(7, &["<< /S /JavaScript /JS (app.alert(1)) >>"]);
    let at = decoded
        .windows(11)
        .position(|w| w == b"/JavaScript")
        .unwrap();
    assert_eq!(
        err.detail,
        format!(
            "PDF contains /JavaScript in the object stream at offset {stream_kw} (offset {at} of its decoded data)"
        )
    );
}

/// Encrypted object streams cannot be inflated: the encryption verdict, which
/// comes later, wins over the deferred "corrupt data" one.
#[test]
fn encryption_beats_undecodable_object_streams() {
    let c = get("h_objstm_corrupt").unwrap();
    let with_encrypt = incremental(
        &c.bytes,
        &[(20, obj("<< /Filter /Standard >>"))],
        "/Encrypt 20 0 R",
    );
    let err = scan_pdf(&c.limits, &with_encrypt, 4096).unwrap_err();
    assert_eq!(err.code, PdfEncrypted, "{err}");
}

/// The same on qpdf's output: hiding the `/Encrypt` key of an encrypted file
/// with object streams leaves undecodable (encrypted) object streams.
#[test]
fn encrypted_object_streams_cannot_be_inflated() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for bits in [&["128", "--use-aes=y", "--"][..], &["256", "--"]] {
        let mut args = vec![
            "--static-id",
            "--static-aes-iv",
            "--object-streams=generate",
            "--encrypt",
            "",
            "owner",
        ];
        args.extend_from_slice(bits);
        let mut bytes = qpdf(dir.path(), &gs(dir.path(), "text", PS_TEXT), &args);
        let at = bytes.windows(8).rposition(|w| w == b"/Encrypt").unwrap();
        bytes[at + 5] = b'x';
        let err = scan_pdf(&Limits::default(), &bytes, 4096).unwrap_err();
        assert_eq!(err.code, MalformedImage, "{err}");
        assert!(err.detail.contains("corrupt FlateDecode data"), "{err}");
    }
}

#[test]
fn qpdf_accepts_the_hand_made_valid_files() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "h_minimal",
        "h_incremental_benign",
        "h_words_in_strings_comments_streams",
        "h_indirect_length",
    ] {
        let c = get(name).unwrap();
        if let Err(e) = qpdf_check(dir.path(), &c.bytes) {
            panic!("qpdf --check rejects {name}: {e}");
        }
    }
}

/// Long files keep bounded state: a 20 MB stream and 100,000 small objects.
#[test]
fn large_inputs() {
    let big = noise(20 << 20, 42);
    let bytes = pdf(
        &objects("", "", CONTENT, &[stream("/Subtype /Image", &big)]),
        "",
    );
    assert_eq!(scan_pdf(&Limits::default(), &bytes, 16 * 1024), Ok(()));

    let many: Vec<Vec<u8>> = (0..100_000)
        .map(|i| obj(&format!("<< /N {i} /S (x) /A [1 2 3] >>")))
        .collect();
    let bytes = pdf(&many, "");
    assert_eq!(scan_pdf(&Limits::default(), &bytes, 16 * 1024), Ok(()));
}
