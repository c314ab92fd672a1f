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
        /JS << /Encrypted 7 /Type /XRef >> BDC (trailer) Tj EMC\n";
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
        b" /JavaScript /EncryptMetadata trailer << /Size 1 >> ((( << [[[[ endstream ",
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
    // (No /Encrypt in it: that would count, see
    // `h_encrypt_where_a_reader_can_be_pointed`.)
    let embedded_text = b"%PDF-1.4\n<< /Length 3 >> stream\nabc\nendstream endobj trailer << /Root 2 0 R >> %%EOF\n";
    add(case(
        "h_length_right_with_endstream_in_data",
        pdf(
            &objects("", "", CONTENT, &[stream("/Type /XObject", embedded_text)]),
            "",
        ),
        Want::Ok,
    ));
    // An object definition inside stream data (a whole PDF, or the one
    // object a crafted cross-reference table points a reader at: here the
    // catalog's /OpenAction): hidden from the lexer.
    let hidden_pdf = b"%PDF-1.4\n1 0 obj << /Length 3 >> stream\nabc\nendstream endobj %%EOF\n";
    add(case(
        "h_object_inside_stream_data_embedded_pdf",
        pdf(
            &objects("", "", CONTENT, &[stream("/Type /XObject", hidden_pdf)]),
            "",
        ),
        Want::Reject(PdfActiveContent, "hides an object definition"),
    ));
    let js = b"BT ET\n5 0 obj\n<< /Type /Action /S /JavaScript /JS (app.alert\\(1\\)) >>\nendobj\n";
    let spread = [
        &b"q Q 5"[..],
        &[b' '; 300],
        b"0",
        &[b'\n'; 300],
        b"obj << /S /JavaScript >> endobj",
    ]
    .concat();
    for (name, data) in [
        ("h_object_inside_stream_data_js", &js[..]),
        (
            "h_object_inside_stream_data_tabs",
            b"q Q 12345678\t0\r\nobj<< >>endobj",
        ),
        // White space longer than anything carried between chunks.
        ("h_object_inside_stream_data_spread", &spread[..]),
        // Numbers as readers lex them: signs, points.
        (
            "h_object_inside_stream_data_signed_gen",
            b"q Q 5 -0 obj << >> endobj",
        ),
        (
            "h_object_inside_stream_data_plus_gen",
            b"q Q 5 +00 obj<<>>endobj",
        ),
        (
            "h_object_inside_stream_data_point",
            b"q Q 5.0 0 obj<<>>endobj",
        ),
        // At the very end of the data.
        ("h_object_inside_stream_data_at_end", b"q Q 5 0 obj"),
        // No white space before `obj`: still three tokens.
        (
            "h_object_inside_stream_data_no_space",
            b"q Q 5 0obj<<>>endobj",
        ),
    ] {
        add(case(
            name,
            pdf(&objects("", "", CONTENT, &[stream("", data)]), ""),
            Want::Reject(PdfActiveContent, "hides an object definition"),
        ));
    }
    // Not a header: "obj" in text, one number, "obj" inside a longer word.
    add(case(
        "h_obj_word_inside_stream_data",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[stream(
                    "",
                    b"BT (see obj 3 and 4 obj) Tj 1 obj ET 0 objx (Total 5 0 objects) Tj",
                )],
            ),
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
    // Nothing may come before the header (SPEC: "nothing before it").
    let prefix = |junk: &[u8]| [junk, &minimal()].concat();
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
        Want::Reject(ContentMismatch, "the body does not start with %PDF-"),
    ));
    add(case(
        "h_jpeg",
        [b"\xff\xd8\xff\xe0\0\x10JFIF\0".as_slice(), &noise(3000, 3)].concat(),
        Want::Reject(ContentMismatch, "does not start with %PDF-"),
    ));
    for (name, junk) in [
        ("h_header_at_1", &b"x"[..]),
        ("h_header_after_bom", b"\xEF\xBB\xBF"),
        ("h_header_after_whitespace", b"\n \r\n"),
        ("h_header_after_nul", b"\0"),
        (
            "h_header_after_html_script",
            b"<html><script>alert(document.cookie)</script><!--\n",
        ),
        ("h_header_at_1019", &[b'x'; 1019]),
        ("h_header_after_1024", &[b'x'; 1100]),
    ] {
        add(case(
            name,
            prefix(junk),
            Want::Reject(ContentMismatch, "does not start with %PDF-"),
        ));
    }
    add(case(
        "h_header_prefix_only",
        b"%PD".to_vec(),
        Want::Reject(ContentMismatch, "does not start with %PDF-"),
    ));
    add(case(
        "h_header_lowercase",
        [b"%pdf-1.7".as_slice(), &minimal()[8..]].concat(),
        Want::Reject(ContentMismatch, "does not start with %PDF-"),
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
    // Text after the last `%%EOF` is no PDF structure, which is seen first.
    add(case(
        "h_junk_after_eof",
        [m.as_slice(), b"junk\n"].concat(),
        Want::Reject(MalformedImage, "the word \"junk\" outside any object"),
    ));
    add(case(
        "h_binary_after_eof",
        [m.as_slice(), b"\x80\x81\xFE\n"].concat(),
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
        Want::Reject(PdfActiveContent, "(/EmbeddedFile stream at offset"),
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
    // Any stream dictionary with /Encrypt is a cross-reference stream to a
    // reader, whatever its /Type says.
    add(case(
        "h_encrypt_in_other_object_dict",
        xref_stream("/Type /XObject /Encrypt 7 0 R"),
        Want::Reject(PdfEncrypted, "/Encrypt in stream dictionary at offset"),
    ));
    cases
}

/// The XML of a Factur-X invoice (shortened).
const INVOICE_XML: &[u8] = b"<?xml version='1.0' encoding='UTF-8'?>\n\
<rsm:CrossIndustryInvoice xmlns:rsm=\"urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100\">\
<rsm:ExchangedDocument><ram:ID xmlns:ram=\"urn:x\">INV-42</ram:ID></rsm:ExchangedDocument>\
</rsm:CrossIndustryInvoice>\n";

/// An embedded file stream: FlateDecode unless `raw`.
fn ef_stream(dict: &str, data: &[u8], raw: bool) -> Vec<u8> {
    if raw {
        stream(dict, data)
    } else {
        stream(&format!("{dict} /Filter /FlateDecode"), &zlib(data))
    }
}

const XML_EF_DICT: &str = "/Type /EmbeddedFile /Subtype /text#2Fxml /Params << /Size 300 >>";

/// A PDF with an attachment the way Factur-X writes it: the catalog's
/// `/Names /EmbeddedFiles` tree and `/AF` name file specification 6, whose
/// `/EF` names stream 7 (`file`); then `more`.
fn with_attachment(file: Vec<u8>, more: &[Vec<u8>]) -> Vec<u8> {
    let mut v = vec![
        obj(
            "<< /Type /Filespec /F (factur-x.xml) /UF (factur-x.xml) /AFRelationship /Data \
             /Desc (Factur-X invoice) /EF << /F 7 0 R /UF 7 0 R >> >>",
        ),
        file,
    ];
    v.extend_from_slice(more);
    pdf(
        &objects(
            "/Names << /EmbeddedFiles << /Names [(factur-x.xml) 6 0 R] >> >> /AF [6 0 R]",
            "",
            CONTENT,
            &v,
        ),
        "",
    )
}

/// An object stream object whose dictionary is `dict` (no `/Length`, no
/// `/Filter`), holding `objects` from number `first_num`, FlateDecode-compressed.
fn objstm_with_dict(dict: &str, first_num: u32, objects: &[&str]) -> Vec<u8> {
    let (data, n, first) = objstm_data(first_num, objects);
    let dict = dict
        .replace("{n}", &n.to_string())
        .replace("{first}", &first.to_string());
    stream(&dict, &zlib(&data))
}

fn uri_case(value: &str) -> Vec<u8> {
    pdf(
        &objects(
            "",
            &format!(
                "/Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 100 100] /A << /S /URI /URI {value} >> >>]"
            ),
            CONTENT,
            &[],
        ),
        "",
    )
}

/// Hand-built cases for object streams however their dictionary is written,
/// the extended active-content list, `/URI` schemes and XML embedded files.
fn hand_cases_2() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.push(c);
    let js_obj = "<< /S /JavaScript /JS (app.alert(1)) >>";

    // --- object streams whatever their /Type says
    add(case(
        "h_objstm_indirect_type_js",
        pdf(
            &objects(
                "/OpenAction 8 0 R",
                "",
                CONTENT,
                &[
                    obj("/ObjStm"),
                    objstm_with_dict(
                        "/Type 6 0 R /N {n} /First {first} /Filter /FlateDecode",
                        8,
                        &[js_obj],
                    ),
                ],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    // Object 8 (the name) comes after the stream: unresolved, so looked into.
    add(case(
        "h_objstm_indirect_type_forward_no_n_js",
        pdf(
            &objects(
                "/OpenAction 20 0 R",
                "",
                CONTENT,
                &[
                    objstm_with_dict("/Type 8 0 R /Filter /FlateDecode", 20, &[js_obj]),
                    obj("/Foo"),
                    obj("/ObjStm"),
                ],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    add(case(
        "h_objstm_no_type_js",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm_with_dict(
                    "/N {n} /First {first} /Filter /FlateDecode",
                    7,
                    &[js_obj],
                )],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    add(case(
        "h_objstm_other_type_js",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm_with_dict(
                    "/Type /XObject /N {n} /First {first} /Filter /FlateDecode",
                    7,
                    &[js_obj],
                )],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    add(case(
        "h_objstm_escaped_reordered_keys_launch",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm_with_dict(
                    "/Fi#6cter /Fl#61teDecode /Fir#73t {first} /#4E {n}",
                    7,
                    &["<< /S /Launch /F (calc.exe) >>"],
                )],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/Launch in the object stream"),
    ));
    add(case(
        "h_objstm_no_type_raw_js",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[{
                    let (data, n, first) = objstm_data(7, &[js_obj]);
                    stream(&format!("/First {first} /N {n}"), &data)
                }],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    add(case(
        "h_objstm_no_type_other_filter",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[{
                    let (data, n, first) = objstm_data(7, &["<< /X 1 >>"]);
                    stream(
                        &format!("/N {n} /First {first} /Filter /ASCIIHexDecode"),
                        &data,
                    )
                }],
            ),
            "",
        ),
        Want::Reject(MalformedImage, "filter other than /FlateDecode"),
    ));
    // An ICC profile has /N but no /First; an image with an indirect /Type
    // naming /XObject: neither is looked into.
    add(case(
        "h_stream_with_n_only",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[stream("/N 3 /Alternate /DeviceRGB", &noise(600, 11))],
            ),
            "",
        ),
        Want::Ok,
    ));
    add(case(
        "h_indirect_type_resolved_not_objstm",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[
                    obj("/XObject"),
                    stream(
                        "/Type 6 0 R /Subtype /Image /Width 1 /Height 1 /Filter /DCTDecode",
                        &noise(300, 12),
                    ),
                ],
            ),
            "",
        ),
        Want::Ok,
    ));

    // --- /Encrypt in any stream dictionary
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
        "h_encrypt_in_stream_without_type",
        xref_stream("/W [1 2 1] /Size 7 /Root 1 0 R /Encrypt 7 0 R"),
        Want::Reject(PdfEncrypted, "/Encrypt in stream dictionary at offset"),
    ));
    add(case(
        "h_encrypt_in_stream_indirect_type",
        xref_stream("/Type 9 0 R /W [1 2 1] /Size 7 /Root 1 0 R /Encr#79pt 7 0 R"),
        Want::Reject(PdfEncrypted, "/Encrypt in stream dictionary"),
    ));
    add(case(
        "h_encrypt_null_in_stream",
        xref_stream("/W [1 2 1] /Size 7 /Root 1 0 R /Encrypt null"),
        Want::Ok,
    ));
    add(case(
        "h_encrypt_nested_in_stream_dict",
        xref_stream("/W [1 2 1] /Size 7 /Root 1 0 R /X << /Encrypt 7 0 R >>"),
        Want::Ok,
    ));

    // --- more active content
    for (name, catalog, want) in [
        (
            "h_xfa",
            "/AcroForm << /Fields [] /XFA 6 0 R >>",
            "PDF contains /XFA at offset",
        ),
        (
            "h_submitform",
            "/OpenAction << /S /SubmitForm /F (https://evil.example/) >>",
            "PDF contains /SubmitForm",
        ),
        (
            "h_importdata",
            "/OpenAction << /S /ImportData /F (data.fdf) >>",
            "PDF contains /ImportData",
        ),
        ("h_xfa_escaped", "/AcroForm << /#58FA [] >>", "/XFA"),
    ] {
        add(case(
            name,
            pdf(&objects(catalog, "", CONTENT, &[obj("[]")]), ""),
            Want::Reject(PdfActiveContent, want),
        ));
    }
    add(case(
        "h_submitform_in_objstm",
        pdf(
            &objects(
                "",
                "",
                CONTENT,
                &[objstm(7, &["<< /S /Submit#46orm /F (x) >>"], None)],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/SubmitForm in the object stream"),
    ));

    // --- /URI: the scheme of the string decides
    for (name, value) in [
        ("h_uri_https", "(https://example.com/receipt?id=1)"),
        ("h_uri_http_upper", "(HTTP://EXAMPLE.COM/)"),
        ("h_uri_mailto", "(mailto:billing@example.com)"),
        ("h_uri_no_scheme", "(www.example.com/a:b)"),
        ("h_uri_relative", "(/path/to:x)"),
        ("h_uri_digit_first", "(1javascript:x)"),
        ("h_uri_colon_first", "(:javascript:x)"),
        ("h_uri_empty", "()"),
        ("h_uri_parens", "(https://example.com/\\(a\\)/(b))"),
        (
            "h_uri_long_no_scheme",
            "(www.a-very-long-host-name-of-more-than-sixty-four-characters.example.com/x)",
        ),
        ("h_uri_hex_https", "<68747470733A2F2F782E6578616D706C65>"),
        (
            "h_uri_utf16_https",
            "<FEFF00680074007400700073003A002F002F0078>",
        ),
        ("h_uri_name_value", "/javascript"),
        ("h_uri_null", "null"),
        ("h_uri_non_ascii_first", "(\u{e9}javascript:x)"),
    ] {
        add(case(name, uri_case(value), Want::Ok));
    }
    for (name, value, scheme) in [
        (
            "h_uri_javascript",
            "(javascript:app.alert\\(1\\))",
            "javascript",
        ),
        (
            "h_uri_javascript_nested_parens",
            "(javascript:alert(1))",
            "javascript",
        ),
        (
            "h_uri_file",
            "(file:///C:/Windows/System32/calc.exe)",
            "file",
        ),
        ("h_uri_data", "(data:text/html,<script>x</script>)", "data"),
        ("h_uri_smb_upper", "(SMB://host/share)", "smb"),
        ("h_uri_ms_msdt", "(ms-msdt:/id PCWDiagnostic)", "ms-msdt"),
        (
            "h_uri_leading_space_and_c0",
            "(\\001\\037  javascript:x)",
            "javascript",
        ),
        ("h_uri_tab_escape_inside", "(java\\tscript:x)", "javascript"),
        (
            "h_uri_raw_newline_inside",
            "(java\nscr\r\nipt:x)",
            "javascript",
        ),
        ("h_uri_octal", "(\\152\\141vascript:x)", "javascript"),
        ("h_uri_octal_short", "(\\12javascript:x)", "javascript"),
        (
            "h_uri_line_continuation",
            "(java\\\nscript:x)",
            "javascript",
        ),
        (
            "h_uri_line_continuation_crlf",
            "(java\\\r\nscript:x)",
            "javascript",
        ),
        (
            "h_uri_escaped_letters",
            "(\\j\\a\\v\\ascript:x)",
            "javascript",
        ),
        ("h_uri_hex", "<6A617661 73637269 70743A78>", "javascript"),
        ("h_uri_hex_lower_odd", "<66696c653a2f2f2f6>", "file"),
        (
            "h_uri_utf16",
            "<FEFF006A006100760061007300630072006900700074003A0078>",
            "javascript",
        ),
        (
            "h_uri_utf16_real",
            "<FEFF006A00610076006100730063007200690070 0074\n003A0078>",
            "javascript",
        ),
        (
            "h_uri_utf8_bom",
            "<EFBBBF6A6176617363726970743A78>",
            "javascript",
        ),
        ("h_uri_utf16le", "<FFFE6A00730061003A007800>", "jsa"),
        (
            "h_uri_long_scheme",
            "(aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:x)",
            "aaaaaaaaaaaaaaaa...",
        ),
        ("h_uri_https_lookalike", "(https+x:y)", "https+x"),
    ] {
        add(case(
            name,
            uri_case(value),
            Want::Reject(PdfActiveContent, scheme_detail(scheme)),
        ));
    }
    add(case(
        "h_uri_indirect",
        uri_case("7 0 R"),
        Want::Reject(PdfActiveContent, "a /URI whose value is not a string"),
    ));
    // The catalog's base for scheme-less URIs: a viewer puts it before
    // them, so its scheme is checked as theirs.
    add(case(
        "h_uri_catalog_base_dict",
        pdf(
            &objects("/URI << /Base (file:///C:/) >>", "", CONTENT, &[]),
            "",
        ),
        Want::Reject(PdfActiveContent, "a /Base with the scheme \"file"),
    ));
    // Its string elsewhere: cannot be checked.
    add(case(
        "h_uri_catalog_base_indirect",
        pdf(
            &objects(
                "/URI << /Base 6 0 R >>",
                "",
                CONTENT,
                &[obj("(file:///C:/)")],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "a /Base whose value is not a string"),
    ));
    add(case(
        "h_uri_catalog_base_dict_https",
        pdf(
            &objects(
                "/URI << /Base (https://example.com/docs/) >>",
                "/Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 1 1] /A << /S /URI /URI (a.html) >> >>]",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Ok,
    ));
    add(case(
        "h_uri_array",
        uri_case("[(javascript:x)]"),
        Want::Reject(PdfActiveContent, "a /URI whose value is not a string"),
    ));
    add(case(
        "h_rich_media_execute_action",
        pdf(
            &objects(
                "/OpenAction << /S /RichMediaExecute /TA 9 0 R /TI 9 0 R >>",
                "",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /RichMediaExecute"),
    ));
    add(case(
        "h_uri_key_before_s",
        pdf(
            &objects(
                "/OpenAction << /URI (javascript:x) /S /URI >>",
                "",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, scheme_detail("javascript")),
    ));
    add(case(
        "h_uri_escaped_name",
        pdf(
            &objects(
                "/OpenAction << /S /U#52I /#55#52#49 (javascript:x) >>",
                "",
                CONTENT,
                &[],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, scheme_detail("javascript")),
    ));
    add(case(
        "h_uri_in_objstm",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm(
                    7,
                    &["<< /S /URI /URI (file:///etc/passwd) >>"],
                    None,
                )],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "in the object stream"),
    ));
    add(case(
        "h_uri_in_objstm_ok",
        pdf(
            &objects(
                "/OpenAction 7 0 R",
                "",
                CONTENT,
                &[objstm(
                    7,
                    &["<< /S /URI /URI (https://x.example/) >>"],
                    None,
                )],
            ),
            "",
        ),
        Want::Ok,
    ));
    add(case(
        "h_uri_in_incremental",
        incremental(
            &minimal(),
            &[(6, obj("<< /S /URI /URI <6A6176617363726970743A78> >>"))],
            "",
        ),
        Want::Reject(PdfActiveContent, scheme_detail("javascript")),
    ));

    // --- embedded files: only XML data (e-invoices) passes
    add(case(
        "h_ef_xml",
        with_attachment(ef_stream(XML_EF_DICT, INVOICE_XML, false), &[]),
        Want::Ok,
    ));
    add(case(
        "h_ef_xml_raw",
        with_attachment(ef_stream(XML_EF_DICT, INVOICE_XML, true), &[]),
        Want::Ok,
    ));
    add(case(
        "h_ef_xml_bom_whitespace",
        with_attachment(
            ef_stream(
                "/Type /EmbeddedFile /Subtype /application#2Fxml",
                &[b"\xEF\xBB\xBF\r\n \t".as_slice(), INVOICE_XML].concat(),
                false,
            ),
            &[],
        ),
        Want::Ok,
    ));
    // UTF-16 with its byte order mark (XML 1.0 allows it), little-endian and
    // compressed: the first character after the BOM and white-space is `<`.
    let utf16le: Vec<u8> = [0xFEFF_u16]
        .into_iter()
        .chain(" \n".encode_utf16())
        .chain(String::from_utf8_lossy(INVOICE_XML).encode_utf16())
        .flat_map(u16::to_le_bytes)
        .collect();
    add(case(
        "h_ef_xml_utf16le_bom",
        with_attachment(
            ef_stream("/Type /EmbeddedFile /Subtype /text#2Fxml", &utf16le, false),
            &[],
        ),
        Want::Ok,
    ));
    // The same BOM before bytes that are no XML.
    add(case(
        "h_ef_xml_utf16le_bom_not_xml",
        with_attachment(
            ef_stream(
                "/Type /EmbeddedFile /Subtype /text#2Fxml",
                b"\xFF\xFEM\x00Z\x00\x90\x00",
                false,
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "that is not XML data"),
    ));
    add(case(
        "h_ef_xml_subtype_case_and_escapes",
        with_attachment(
            ef_stream(
                "/Type /Embedded#46ile /Sub#74ype /Text#2FXML",
                INVOICE_XML,
                false,
            ),
            &[],
        ),
        Want::Ok,
    ));
    // The file specification in an object stream, after the file.
    add(case(
        "h_ef_xml_filespec_in_objstm",
        pdf(
            &objects(
                "/Names << /EmbeddedFiles << /Names [(factur-x.xml) 9 0 R] >> >> /AF [9 0 R]",
                "",
                CONTENT,
                &[
                    ef_stream(XML_EF_DICT, INVOICE_XML, false),
                    obj("null"),
                    objstm(
                        9,
                        &[
                            "<< /Type /Filespec /F (factur-x.xml) /AFRelationship /Data /E#46 << /F 6 0 R /UF 6 0 R >> >>",
                        ],
                        None,
                    ),
                ],
            ),
            "",
        ),
        Want::Ok,
    ));
    let not_xml = [
        (
            "h_ef_xml_subtype_exe_bytes",
            b"MZ\x90\0\x03\0\0\0PE\0\0".as_slice(),
        ),
        ("h_ef_xml_subtype_pdf_bytes", b"%PDF-1.7\n<< >>\n%%EOF\n"),
        ("h_ef_xml_subtype_empty", b""),
        ("h_ef_xml_subtype_only_whitespace", b"  \n\n  "),
        ("h_ef_xml_subtype_text_before", b"hello <x/>"),
        ("h_ef_xml_subtype_partial_bom", b"\xEF\xBB<x/>"),
    ];
    for (name, data) in not_xml {
        add(case(
            name,
            with_attachment(ef_stream(XML_EF_DICT, data, false), &[]),
            Want::Reject(PdfActiveContent, "that is not XML data"),
        ));
    }
    add(case(
        "h_ef_xml_too_much_whitespace",
        with_attachment(
            ef_stream(
                XML_EF_DICT,
                &[vec![b' '; 2000], INVOICE_XML.to_vec()].concat(),
                false,
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "that is not XML data"),
    ));
    add(case(
        "h_ef_no_subtype",
        with_attachment(ef_stream("/Type /EmbeddedFile", INVOICE_XML, false), &[]),
        Want::Reject(PdfActiveContent, "/EmbeddedFile stream at offset"),
    ));
    add(case(
        "h_ef_other_subtype",
        with_attachment(
            ef_stream(
                "/Type /EmbeddedFile /Subtype /application#2Fpdf",
                INVOICE_XML,
                false,
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "not XML data"),
    ));
    // `/Type /EmbeddedFile` is optional: `/Subtype` and the bytes decide.
    add(case(
        "h_ef_no_type",
        with_attachment(ef_stream("/Subtype /text#2Fxml", INVOICE_XML, false), &[]),
        Want::Ok,
    ));
    add(case(
        "h_ef_xml_other_filter",
        with_attachment(
            stream(
                &format!("{XML_EF_DICT} /Filter /ASCIIHexDecode"),
                b"3C3F786D6C3E>",
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "not XML data"),
    ));
    add(case(
        "h_ef_xml_predictor",
        with_attachment(
            ef_stream(
                &format!("{XML_EF_DICT} /DecodeParms << /Predictor 2 >>"),
                INVOICE_XML,
                false,
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "not XML data"),
    ));
    add(case(
        "h_ef_xml_corrupt_flate",
        with_attachment(
            stream(
                &format!("{XML_EF_DICT} /Filter /FlateDecode"),
                b"\x78\x9c\x07garbage",
            ),
            &[],
        ),
        Want::Reject(PdfActiveContent, "not XML data"),
    ));
    // A second file beside the XML one.
    add(case(
        "h_ef_xml_and_exe",
        with_attachment(
            ef_stream(XML_EF_DICT, INVOICE_XML, false),
            &[
                obj("<< /Type /Filespec /F (x.exe) /EF << /F 9 0 R >> >>"),
                stream("/Subtype /application#2Foctet-stream", b"MZ\x90\0"),
            ],
        ),
        Want::Reject(PdfActiveContent, "(object 9, referenced from /EF)"),
    ));
    add(case(
        "h_ef_xml_and_unreferenced_embedded_file",
        with_attachment(
            ef_stream(XML_EF_DICT, INVOICE_XML, false),
            &[stream("/Type /EmbeddedFile", b"MZ\x90\0")],
        ),
        Want::Reject(PdfActiveContent, "/EmbeddedFile stream at offset"),
    ));
    add(case(
        "h_ef_indirect_dict",
        pdf(
            &objects(
                "/AF [6 0 R]",
                "",
                CONTENT,
                &[
                    obj("<< /Type /Filespec /F (a.xml) /EF 8 0 R >>"),
                    ef_stream(XML_EF_DICT, INVOICE_XML, false),
                    obj("<< /F 7 0 R >>"),
                ],
            ),
            "",
        ),
        Want::Reject(
            PdfActiveContent,
            "an /EF that is not a dictionary of references",
        ),
    ));
    add(case(
        "h_ef_direct_stream_value",
        with_attachment(
            ef_stream(XML_EF_DICT, INVOICE_XML, false),
            &[obj("<< /EF << /F << /Length 3 >> >> >>")],
        ),
        Want::Reject(
            PdfActiveContent,
            "an /EF that is not a dictionary of references",
        ),
    ));
    add(case(
        "h_ef_reference_never_defined",
        pdf(
            &objects(
                "/AF [6 0 R]",
                "",
                CONTENT,
                &[obj("<< /Type /Filespec /F (a.xml) /EF << /F 99 0 R >> >>")],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "(object 99, referenced from /EF)"),
    ));
    add(case(
        "h_ef_empty_dict",
        pdf(
            &objects(
                "/AF [6 0 R]",
                "",
                CONTENT,
                &[obj("<< /Type /Filespec /F (a.xml) /EF << >> >>")],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/EF at offset"),
    ));
    add(case(
        "h_embedded_files_name_only",
        pdf(
            &objects(
                "/Names << /EmbeddedFiles 6 0 R >>",
                "",
                CONTENT,
                &[obj("<< /Names [] >>")],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "PDF contains /EmbeddedFiles at offset"),
    ));
    // Object 7 redefined by an incremental update: its last definition is
    // the one a reader takes (and `factur-x` leaves old definitions behind).
    let exe = stream("/Subtype /text#2Fxml", b"MZ\x90\0");
    add(case(
        "h_ef_xml_then_redefined_as_exe",
        incremental(
            &with_attachment(ef_stream(XML_EF_DICT, INVOICE_XML, false), &[]),
            &[(7, exe.clone())],
            "",
        ),
        Want::Reject(PdfActiveContent, "(object 7, referenced from /EF)"),
    ));
    add(case(
        "h_ef_exe_then_redefined_as_xml",
        incremental(
            &with_attachment(exe.clone(), &[]),
            &[(7, ef_stream(XML_EF_DICT, INVOICE_XML, false))],
            "",
        ),
        Want::Ok,
    ));
    // ...unless the earlier one is an embedded file that is not XML data:
    // refused wherever it is.
    add(case(
        "h_ef_typed_exe_then_redefined_as_xml",
        incremental(
            &with_attachment(ef_stream(XML_EF_DICT, b"MZ\x90\0", false), &[]),
            &[(7, ef_stream(XML_EF_DICT, INVOICE_XML, false))],
            "",
        ),
        Want::Reject(PdfActiveContent, "/EmbeddedFile stream at offset"),
    ));
    add(case(
        "h_ef_xml_redefined_as_xml",
        incremental(
            &with_attachment(ef_stream(XML_EF_DICT, INVOICE_XML, false), &[]),
            &[(7, ef_stream(XML_EF_DICT, b"<x/>", true))],
            "",
        ),
        Want::Ok,
    ));
    // Two generations of one number: the reference names one, and the
    // scanner does not follow references, so neither supersedes the other.
    let two_gens = |first: (u32, Vec<u8>), second: (u32, Vec<u8>)| {
        let mut v = b"%PDF-1.7\n".to_vec();
        let objs: Vec<(u32, u32, Vec<u8>)> = vec![
            (
                1,
                0,
                obj(
                    "<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names [(factur-x.xml) 5 0 R] >> >> >>",
                ),
            ),
            (2, 0, obj("<< /Type /Pages /Kids [] /Count 0 >>")),
            (
                5,
                0,
                obj("<< /Type /Filespec /F (factur-x.xml) /EF << /F 7 0 R >> >>"),
            ),
            (7, first.0, first.1),
            (7, second.0, second.1),
        ];
        for (n, g, body) in objs {
            v.extend_from_slice(format!("{n} {g} obj\n").as_bytes());
            v.extend_from_slice(&body);
            v.extend_from_slice(b"\nendobj\n");
        }
        v.extend_from_slice(b"trailer\n<< /Size 8 /Root 1 0 R >>\nstartxref\n0\n%%EOF\n");
        v
    };
    add(case(
        "h_ef_exe_gen0_then_xml_gen1",
        two_gens(
            (0, exe.clone()),
            (1, ef_stream(XML_EF_DICT, INVOICE_XML, false)),
        ),
        Want::Reject(PdfActiveContent, "(object 7, referenced from /EF)"),
    ));
    add(case(
        "h_ef_exe_gen1_then_xml_gen0",
        two_gens(
            (1, exe.clone()),
            (0, ef_stream(XML_EF_DICT, INVOICE_XML, false)),
        ),
        Want::Reject(PdfActiveContent, "(object 7, referenced from /EF)"),
    ));
    // Large object numbers (past the exact bitmap).
    add(case(
        "h_ef_xml_big_object_number",
        incremental(
            &minimal(),
            &[
                (
                    70_000,
                    obj("<< /Type /Filespec /F (a.xml) /EF << /F 70001 0 R >> >>"),
                ),
                (70_001, ef_stream(XML_EF_DICT, INVOICE_XML, false)),
            ],
            "",
        ),
        Want::Ok,
    ));
    add(case(
        "h_ef_big_object_number_exe_beside",
        incremental(
            &minimal(),
            &[
                (
                    70_000,
                    obj("<< /Type /Filespec /F (a.xml) /EF << /F 70001 0 R >> >>"),
                ),
                (70_001, ef_stream(XML_EF_DICT, INVOICE_XML, false)),
                (80_000, stream("/Subtype /Image", b"MZ")),
            ],
            "",
        ),
        Want::Reject(PdfActiveContent, "(object 70001, referenced from /EF)"),
    ));
    // More /EF references than are remembered.
    let many: Vec<Vec<u8>> = (0..65)
        .map(|i| {
            obj(&format!(
                "<< /Type /Filespec /EF << /F {} 0 R >> >>",
                100 + i
            ))
        })
        .collect();
    add(case(
        "h_ef_too_many_references",
        pdf(&objects("", "", CONTENT, &many), ""),
        Want::Reject(PdfActiveContent, "more than 64 embedded files"),
    ));
    add(case(
        "h_ef_in_objstm_not_a_dict",
        pdf(
            &objects("", "", CONTENT, &[objstm(7, &["<< /EF [7 0 R] >>"], None)]),
            "",
        ),
        Want::Reject(
            PdfActiveContent,
            "an /EF that is not a dictionary of references in the object stream",
        ),
    ));
    cases
}

fn scheme_detail(scheme: &str) -> &'static str {
    Box::leak(format!("a /URI with the scheme \"{scheme}").into_boxed_str())
}

// ---------------------------------------------------------------------------
// Committed fixtures (tests/fixtures/pdf, made by its regen.py)
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pdf")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A real Factur-X invoice (the `factur-x` package) and pikepdf edits of it.
fn fixture_cases() -> Vec<Case> {
    vec![
        case("f_facturx", fixture("facturx.pdf"), Want::Ok),
        // Object 6 defined twice: first the base's stream, then the invoice.
        case(
            "f_facturx_as_written",
            fixture("facturx-as-written.pdf"),
            Want::Ok,
        ),
        case(
            "f_facturx_xml_subtype_exe_bytes",
            fixture("facturx-xml-subtype-exe.pdf"),
            Want::Reject(PdfActiveContent, "that is not XML data"),
        ),
        case(
            "f_facturx_xml_subtype_pdf_bytes",
            fixture("facturx-xml-subtype-pdf.pdf"),
            Want::Reject(PdfActiveContent, "that is not XML data"),
        ),
        // `/Type /EmbeddedFile` is optional: `/Subtype` and the bytes decide.
        case(
            "f_facturx_ef_stream_without_type",
            fixture("facturx-ef-no-type.pdf"),
            Want::Ok,
        ),
    ]
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
    // --- Factur-X: the XML invoice is the one embedded file allowed
    let fx = fixture("facturx.pdf");
    for (name, args) in [
        (
            "qpdf_facturx_object_streams",
            &["--object-streams=generate"][..],
        ),
        ("qpdf_facturx_qdf", &["--qdf", "--object-streams=disable"]),
        (
            "qpdf_facturx_linearize_object_streams",
            &["--linearize", "--object-streams=generate"],
        ),
    ] {
        cases.push(case(name, qpdf(d, &fx, args), Want::Ok));
    }
    std::fs::write(d.join("extra.xml"), b"<?xml version=\"1.0\"?>\n<note/>\n").unwrap();
    cases.push(case(
        "qpdf_facturx_plus_xml_attachment",
        qpdf(
            d,
            &fx,
            &[
                "--add-attachment",
                "extra.xml",
                "--mimetype=text/xml",
                "--",
                "--object-streams=generate",
            ],
        ),
        Want::Ok,
    ));
    let fx_note = qpdf(d, &fx, &["--add-attachment", "note.txt", "--"]);
    cases.push(case(
        "qpdf_facturx_plus_attachment",
        fx_note.clone(),
        Want::Reject(PdfActiveContent, "/EmbeddedFile stream at offset"),
    ));
    cases.push(case(
        "qpdf_facturx_plus_attachment_object_streams",
        qpdf(d, &fx_note, &["--object-streams=generate"]),
        Want::Reject(PdfActiveContent, "/EmbeddedFile stream at offset"),
    ));
    // Claims text/xml, holds an executable.
    std::fs::write(d.join("invoice.xml"), b"MZ\x90\0\x03\0\0\0PE\0\0").unwrap();
    cases.push(case(
        "qpdf_facturx_plus_fake_xml_attachment",
        qpdf(
            d,
            &fx,
            &[
                "--add-attachment",
                "invoice.xml",
                "--mimetype=application/xml",
                "--",
            ],
        ),
        Want::Reject(PdfActiveContent, "that is not XML data"),
    ));
    cases.push(case(
        "qpdf_facturx_encrypted",
        qpdf(d, &fx, &["--encrypt", "", "owner", "256", "--"]),
        Want::Reject(PdfEncrypted, "PDF is encrypted"),
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
        cases.extend(hand_cases_2());
        cases.extend(hand_cases_3());
        cases.extend(objstm_layout_cases());
        cases.extend(fixture_cases());
        cases.extend(generated_cases());
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
        None if name.starts_with("h_") || name.starts_with("f_") || c.tools => {
            panic!("no case {name}")
        }
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
    h_object_inside_stream_data_embedded_pdf,
    h_object_inside_stream_data_js,
    h_object_inside_stream_data_tabs,
    h_object_inside_stream_data_spread,
    h_object_inside_stream_data_signed_gen,
    h_object_inside_stream_data_plus_gen,
    h_object_inside_stream_data_point,
    h_object_inside_stream_data_at_end,
    h_object_inside_stream_data_no_space,
    h_obj_word_inside_stream_data,
    h_trailing_whitespace_and_nuls,
    h_deep_64,
    h_objstm_benign,
    h_incremental_benign,
    h_empty,
    h_jpeg,
    h_header_at_1,
    h_header_after_bom,
    h_header_after_whitespace,
    h_header_after_nul,
    h_header_after_html_script,
    h_header_at_1019,
    h_header_after_1024,
    h_header_prefix_only,
    h_header_lowercase,
    h_bad_version_3_0,
    h_bad_version_1_10,
    h_bad_version_short,
    h_missing_eof,
    h_junk_after_eof,
    h_binary_after_eof,
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

// Hand-built: object streams however written, more active content, /URI, XML
// embedded files.
cases!(
    h_objstm_indirect_type_js,
    h_objstm_indirect_type_forward_no_n_js,
    h_objstm_no_type_js,
    h_objstm_other_type_js,
    h_objstm_escaped_reordered_keys_launch,
    h_objstm_no_type_raw_js,
    h_objstm_no_type_other_filter,
    h_stream_with_n_only,
    h_indirect_type_resolved_not_objstm,
    h_encrypt_in_stream_without_type,
    h_encrypt_in_stream_indirect_type,
    h_encrypt_null_in_stream,
    h_encrypt_nested_in_stream_dict,
    h_xfa,
    h_submitform,
    h_importdata,
    h_xfa_escaped,
    h_submitform_in_objstm,
    h_uri_https,
    h_uri_http_upper,
    h_uri_mailto,
    h_uri_no_scheme,
    h_uri_relative,
    h_uri_digit_first,
    h_uri_colon_first,
    h_uri_empty,
    h_uri_parens,
    h_uri_long_no_scheme,
    h_uri_hex_https,
    h_uri_utf16_https,
    h_uri_name_value,
    h_uri_null,
    h_uri_non_ascii_first,
    h_uri_javascript,
    h_uri_javascript_nested_parens,
    h_uri_file,
    h_uri_data,
    h_uri_smb_upper,
    h_uri_ms_msdt,
    h_uri_leading_space_and_c0,
    h_uri_tab_escape_inside,
    h_uri_raw_newline_inside,
    h_uri_octal,
    h_uri_octal_short,
    h_uri_line_continuation,
    h_uri_line_continuation_crlf,
    h_uri_escaped_letters,
    h_uri_hex,
    h_uri_hex_lower_odd,
    h_uri_utf16,
    h_uri_utf16_real,
    h_uri_utf8_bom,
    h_uri_utf16le,
    h_uri_long_scheme,
    h_uri_https_lookalike,
    h_uri_indirect,
    h_uri_catalog_base_dict,
    h_uri_catalog_base_dict_https,
    h_uri_catalog_base_indirect,
    h_uri_array,
    h_rich_media_execute_action,
    h_uri_key_before_s,
    h_uri_escaped_name,
    h_uri_in_objstm,
    h_uri_in_objstm_ok,
    h_uri_in_incremental,
    h_ef_xml,
    h_ef_xml_raw,
    h_ef_xml_bom_whitespace,
    h_ef_xml_utf16le_bom,
    h_ef_xml_utf16le_bom_not_xml,
    h_ef_xml_subtype_case_and_escapes,
    h_ef_xml_filespec_in_objstm,
    h_ef_xml_subtype_exe_bytes,
    h_ef_xml_subtype_pdf_bytes,
    h_ef_xml_subtype_empty,
    h_ef_xml_subtype_only_whitespace,
    h_ef_xml_subtype_text_before,
    h_ef_xml_subtype_partial_bom,
    h_ef_xml_too_much_whitespace,
    h_ef_no_subtype,
    h_ef_other_subtype,
    h_ef_no_type,
    h_ef_xml_other_filter,
    h_ef_xml_predictor,
    h_ef_xml_corrupt_flate,
    h_ef_xml_and_exe,
    h_ef_xml_and_unreferenced_embedded_file,
    h_ef_indirect_dict,
    h_ef_direct_stream_value,
    h_ef_reference_never_defined,
    h_ef_empty_dict,
    h_embedded_files_name_only,
    h_ef_xml_then_redefined_as_exe,
    h_ef_exe_then_redefined_as_xml,
    h_ef_typed_exe_then_redefined_as_xml,
    h_ef_exe_gen0_then_xml_gen1,
    h_ef_exe_gen1_then_xml_gen0,
    h_ef_xml_redefined_as_xml,
    h_ef_xml_big_object_number,
    h_ef_big_object_number_exe_beside,
    h_ef_too_many_references,
    h_ef_in_objstm_not_a_dict,
);

// Made by gs and qpdf.
/// A file specification (object 6, named by the catalog's `/EmbeddedFiles`)
/// whose `/EF` names an approved XML stream (7), with `rf` after it; object 8
/// is an untyped stream holding an executable's first bytes, 9 a related
/// files array naming it.
fn with_related_files(rf: &str, objstm_filespec: bool) -> Vec<u8> {
    let filespec = format!("<< /Type /Filespec /F (a.xml) /EF << /F 7 0 R >> {rf} >>");
    let first = if objstm_filespec {
        // The file specification, object 10, in an object stream (object 6).
        objstm(10, &[&filespec], None)
    } else {
        obj(&filespec)
    };
    let names = if objstm_filespec { "10 0 R" } else { "6 0 R" };
    pdf(
        &objects(
            &format!("/Names << /EmbeddedFiles << /Names [(a.xml) {names}] >> >>"),
            "",
            CONTENT,
            &[
                first,
                ef_stream(
                    "/Type /EmbeddedFile /Subtype /text#2Fxml",
                    INVOICE_XML,
                    true,
                ),
                stream("", b"MZ\x90\0"),
                obj("[(x.exe) 8 0 R]"),
            ],
        ),
        "",
    )
}

/// Hand-built cases for related files arrays (`/RF`), embedded files without
/// `/Type`, and bodies that are no PDF although they start with `%PDF-` and end
/// with `%%EOF`.
fn hand_cases_3() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.push(c);

    // --- /RF: related files arrays hold embedded file streams too.
    add(case(
        "h_rf_related_files_exe",
        with_related_files("/RF << /F 9 0 R >>", false),
        Want::Reject(
            PdfActiveContent,
            "PDF contains /RF (related files of an embedded file) at offset",
        ),
    ));
    // Without the /RF the same file passes: the executable stream 8 is named
    // by nothing the scanner follows (what the /RF bypass used).
    add(case(
        "h_rf_control_without_rf",
        with_related_files("", false),
        Want::Ok,
    ));
    add(case(
        "h_rf_escaped",
        with_related_files("/R#46 << /F 9 0 R >>", false),
        Want::Reject(
            PdfActiveContent,
            "PDF contains /RF (related files of an embedded file) at offset",
        ),
    ));
    add(case(
        "h_rf_in_object_stream",
        with_related_files("/RF << /F 9 0 R >>", true),
        Want::Reject(
            PdfActiveContent,
            "/RF (related files of an embedded file) in the object stream",
        ),
    ));
    add(case(
        "h_rf_lookalikes_fine",
        pdf(
            &objects("/RFC 1 /XRF 2 /R#46x 3", "/T (RF /RF)", b"/RF 12 Tf\n", &[]),
            "",
        ),
        Want::Ok,
    ));

    // --- Embedded files without `/Type /EmbeddedFile` (optional in ISO
    // 32000): approved on `/Subtype` and the decoded bytes alone.
    add(case(
        "h_ef_no_type_raw_xml",
        with_attachment(
            stream("/Subtype /text#2Fxml", b"<?xml version=\"1.0\"?><Invoice/>"),
            &[],
        ),
        Want::Ok,
    ));
    add(case(
        "h_ef_no_type_application_xml_bom",
        with_attachment(
            ef_stream(
                "/Subtype /application#2Fxml",
                b"\xEF\xBB\xBF \r\n<Invoice/>",
                false,
            ),
            &[],
        ),
        Want::Ok,
    ));
    add(case(
        "h_ef_no_type_not_xml",
        with_attachment(stream("/Subtype /text#2Fxml", b"MZ\x90\0"), &[]),
        Want::Reject(
            PdfActiveContent,
            "(object 7, referenced from /EF) that is not XML data",
        ),
    ));
    add(case(
        "h_ef_no_type_xml_beside_exe",
        with_attachment(
            stream("/Subtype /text#2Fxml", INVOICE_XML),
            &[
                obj("<< /Type /Filespec /F (x.exe) /EF << /F 9 0 R >> >>"),
                stream("", b"MZ\x90\0"),
            ],
        ),
        Want::Reject(
            PdfActiveContent,
            "(object 9, referenced from /EF) that is not XML data",
        ),
    ));
    add(case(
        "h_ef_no_type_subtype_only_in_params",
        with_attachment(
            stream("/Params << /Subtype /text#2Fxml /Size 40 >>", INVOICE_XML),
            &[],
        ),
        Want::Reject(
            PdfActiveContent,
            "(object 7, referenced from /EF) that is not XML data",
        ),
    ));

    // --- Not a PDF, although it starts with `%PDF-` and ends with `%%EOF`.
    let not_pdf = "not a PDF: ";
    add(case(
        "h_not_pdf_html",
        b"%PDF-1.7\n<html><script>alert(1)</script></html>\n%%EOF\n".to_vec(),
        Want::Reject(
            MalformedImage,
            "not a PDF: a string outside any object at offset 9",
        ),
    ));
    add(case(
        "h_not_pdf_text",
        b"%PDF-1.7\nhello world this is not a pdf\n%%EOF\n".to_vec(),
        Want::Reject(
            MalformedImage,
            "not a PDF: the word \"hello\" outside any object",
        ),
    ));
    add(case(
        "h_not_pdf_header_and_eof_only",
        b"%PDF-1.7\n%%EOF\n".to_vec(),
        Want::Reject(MalformedImage, "not a PDF: it holds no object"),
    ));
    add(case(
        "h_not_pdf_array_offset",
        b"%PDF-1.7\n1 0 obj\nnull\nendobj\n  [1]\nstartxref\n0\n%%EOF\n".to_vec(),
        Want::Reject(
            MalformedImage,
            "not a PDF: an array outside any object at offset 31,",
        ),
    ));
    add(case(
        "h_not_pdf_zip",
        [
            &b"%PDF-1.7\nPK\x03\x04\x14\0\0\0\x08\0"[..],
            &noise(200, 3),
            b"\n%%EOF",
        ]
        .concat(),
        Want::Reject(MalformedImage, not_pdf),
    ));
    for seed in 1..=4 {
        add(case(
            &format!("h_not_pdf_random_{seed}"),
            [HEADER, &noise(4000, seed), b"\n%%EOF\n"].concat(),
            Want::Reject(MalformedImage, not_pdf),
        ));
    }
    // Objects, but no `startxref` (or none with its offset): no reader finds
    // them as a PDF's.
    for (name, tail) in [
        ("h_not_pdf_no_startxref", &b"%%EOF\n"[..]),
        ("h_not_pdf_startxref_without_offset", b"startxref\n%%EOF\n"),
    ] {
        let m = minimal();
        let at = m.windows(9).rposition(|w| w == b"startxref").unwrap();
        add(case(
            name,
            [&m[..at], tail].concat(),
            Want::Reject(MalformedImage, "not a PDF: it has no startxref"),
        ));
    }
    // Markup, text, names, arrays, dictionaries or a stream between objects.
    let between = |junk: &[u8]| {
        let m = minimal();
        let at = m.windows(6).position(|w| w == b"2 0 ob").unwrap();
        [&m[..at], junk, b"\n", &m[at..]].concat()
    };
    for (name, junk, detail) in [
        (
            "h_not_pdf_html_between_objects",
            &b"<html><body onload=alert(1)></body></html>"[..],
            "not a PDF: a string outside any object",
        ),
        (
            "h_not_pdf_text_between_objects",
            b"Dear customer, please find attached",
            "not a PDF: the word \"Dear\" outside any object",
        ),
        (
            "h_not_pdf_name_between_objects",
            b"/Foo",
            "not a PDF: a name outside any object",
        ),
        (
            "h_not_pdf_dict_between_objects",
            b"<< /Foo 1 >>",
            "not a PDF: a dictionary outside any object",
        ),
        (
            "h_not_pdf_array_between_objects",
            b"[1 2]",
            "not a PDF: an array outside any object",
        ),
        (
            "h_not_pdf_reference_between_objects",
            b"4 0 R",
            "not a PDF: the word \"R\" outside any object",
        ),
        // The data of a stream outside any object would not be looked at.
        (
            "h_not_pdf_stream_between_objects",
            b"stream\n<html><script>alert(1)</script></html>\nendstream",
            "not a PDF: the word \"stream\" outside any object",
        ),
        (
            "h_not_pdf_long_text_word_between_objects",
            b"Supercalifragilisticexpialidocious-and-then-some-more",
            "not a PDF: the word \"Supercalifragilisticexpialidocio\"",
        ),
    ] {
        add(case(
            name,
            between(junk),
            Want::Reject(MalformedImage, detail),
        ));
    }
    // Text between a `%%EOF` and an incremental update.
    add(case(
        "h_not_pdf_text_before_incremental_update",
        incremental(
            &[minimal().as_slice(), b"<script>alert(1)</script>\n"].concat(),
            &[(3, obj("<< /Type /Page /Parent 2 0 R >>"))],
            "",
        ),
        Want::Reject(MalformedImage, "not a PDF: a string outside any object"),
    ));
    // What real files hold between objects is tolerated: stray `endobj` and
    // `endstream`, NULs and binary junk after a mid-file `%%EOF`, stray
    // closing delimiters, comments, a cross-reference table.
    add(case(
        "h_tolerated_stray_keywords",
        between(b"endobj\nendstream\nendobj ] >> ) } % a comment <html>\n"),
        Want::Ok,
    ));
    add(case(
        "h_tolerated_binary_junk_before_incremental_update",
        incremental(
            &[
                minimal().as_slice(),
                &[0u8; 64],
                b"\x80\x81\x82 \xFE\xFFjunk\x01\x02 \xC3\xA9t\xC3\xA9\n",
                &[0u8; 16],
            ]
            .concat(),
            &[(3, obj("<< /Type /Page /Parent 2 0 R >>"))],
            "",
        ),
        Want::Ok,
    ));
    add(case(
        "h_tolerated_binary_line_without_percent",
        [
            &b"%PDF-1.4\n\xE2\xE3\xCF\xD3\n"[..],
            &minimal()[HEADER.len()..],
        ]
        .concat(),
        Want::Ok,
    ));
    // A content stream with an indirect `/Length` (Ghostscript, qpdf's QDF)
    // whose uncompressed text quotes `endstream endobj`: the search for its
    // end stops there, and the rest of its data, up to the next object, is
    // not judged as file structure (it was refused as "the word Tj").
    let text = b"BT /F1 12 Tf 72 720 Td (Keywords: endstream endobj) Tj ET";
    add(case(
        "h_tolerated_endstream_quoted_in_a_stream_of_indirect_length",
        pdf(
            &[
                b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_vec(),
                [&b"<< /Length 5 0 R >>\nstream\n"[..], text, b"\nendstream"].concat(),
                text.len().to_string().into_bytes(),
            ],
            "",
        ),
        Want::Ok,
    ));
    endstream_inside_data_cases(&mut add);
    hidden_header_comment_cases(&mut add);
    cases
}

/// Page objects 1-3 (the catalog with `catalog_extra`), then `more`.
fn page_with(catalog_extra: &str, more: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut v = vec![
        format!("<< /Type /Catalog /Pages 2 0 R {catalog_extra} >>").into_bytes(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>".to_vec(),
    ];
    v.extend_from_slice(more);
    v
}

/// An object stream with an indirect `/Length` (object 5, which follows it).
fn objstm_indirect_length(dict: &str, data: &[u8]) -> [Vec<u8>; 2] {
    [
        [
            format!("<< /Type /ObjStm {dict} /Length 5 0 R >>\nstream\n").as_bytes(),
            data,
            b"\nendstream",
        ]
        .concat(),
        data.len().to_string().into_bytes(),
    ]
}

/// A stream whose `/Length 5 0 R` (object 5, which follows it) counts
/// `data`; `after` comes between the data and the end of the object (with
/// its `endstream` if it is to have one).
fn indirect_stream(data: &[u8], after: &[u8]) -> [Vec<u8>; 2] {
    [
        [&b"<< /Length 5 0 R >>\nstream\n"[..], data, after].concat(),
        data.len().to_string().into_bytes(),
    ]
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

/// A stream whose `/Length` is indirect ends, for the scanner, at the first
/// `endstream`; a reader that resolves the length may read on. Data that
/// quotes `endstream` must not hide from the scanner what such a reader
/// sees (the black-box round of 2026-11-30 hid an `/OpenAction` JavaScript
/// and an embedded `.exe` so).
fn endstream_inside_data_cases(add: &mut impl FnMut(Case)) {
    // A Flate object stream: the first object's string quotes `endstream
    // endobj` in a stored (uncompressed) deflate block; the second object,
    // the JavaScript, is in a Huffman-coded block the scanner never inflated.
    let o1 = "<< /A (x\nendstream\nendobj\n) >>\n";
    let flate = (0..20_000)
        .find_map(|pad| {
            let spaces = " ".repeat(pad % 7);
            let o2 =
                format!("<< /K{pad} 0 {spaces}/S /JavaScript /JS <6170702e616c657274283129> >>\n");
            let head = format!("1 0 2 {}\n", o1.len());
            let part1 = format!("{head}{o1}");
            let mut z = vec![0x78, 0x01, 0x00];
            let len = part1.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(part1.as_bytes());
            let part2 = {
                use std::io::Write as _;
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(o2.as_bytes()).unwrap();
                e.finish().unwrap()
            };
            // Bytes that open a string, a comment or an array at the top
            // level would make the string guard answer first.
            if part2.iter().any(|b| b"(<[%".contains(b)) {
                return None;
            }
            z.extend_from_slice(&part2);
            z.extend_from_slice(&adler32(format!("{part1}{o2}").as_bytes()).to_be_bytes());
            Some((z, head.len()))
        })
        .expect("a padding whose Huffman block opens nothing");
    let dict = format!("/N 2 /First {} /Filter /FlateDecode", flate.1);
    add(case(
        "h_objstm_indirect_length_endstream_in_stored_block_js",
        pdf(
            &page_with(
                "/OpenAction 11 0 R",
                &objstm_indirect_length(&dict, &flate.0),
            ),
            "",
        ),
        Want::Reject(
            MalformedImage,
            "its data is not over at the first endstream",
        ),
    ));
    // The same without the quoted `endstream`: its end found at once, and
    // the JavaScript seen.
    let (data, n, first) = objstm_data(10, &["<< /A (x) >>", "<< /S /JavaScript >>"]);
    add(case(
        "h_objstm_indirect_length_control_js",
        pdf(
            &page_with(
                "",
                &objstm_indirect_length(
                    &format!("/N {n} /First {first} /Filter /FlateDecode"),
                    &zlib(&data),
                ),
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "/JavaScript in the object stream"),
    ));
    // An uncompressed object stream: after the quoted `endstream`, a `<`
    // that opens a hex string for the file's lexer up to the `>>` ending
    // the object that holds the JavaScript.
    let (data, n, first) = objstm_data(
        10,
        &[
            "<< /A (x\nendstream\n<) /S /JavaScript /JS (a) >>",
            "<< /B 1 >>",
        ],
    );
    add(case(
        "h_objstm_indirect_length_endstream_in_string_js",
        pdf(
            &page_with(
                "",
                &objstm_indirect_length(&format!("/N {n} /First {first}"), &data),
            ),
            "",
        ),
        Want::Reject(
            MalformedImage,
            "its data is not over at the first endstream",
        ),
    ));
    // A content stream: after its quoted `endstream`, a `(` opens a string
    // for the file's lexer that runs over the real end and the object with
    // the JavaScript (a `)` in a comment closes it).
    let text = b"BT /F1 12 Tf 72 700 Td (Hello) Tj ET\n% endstream\n(";
    add(case(
        "h_string_after_quoted_endstream_hides_an_object",
        pdf(
            &page_with(
                "/OpenAction 6 0 R",
                &[
                    indirect_stream(text, b"\nendstream").as_slice(),
                    &[
                        b"<< /S /JavaScript /JS (app.alert\\(1\\)) >>".to_vec(),
                        b"<< /X (x) % )\n>>".to_vec(),
                    ],
                ]
                .concat(),
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "inside the string or comment at offset"),
    ));
    // The same with a comment: the real `endstream` and the next object on
    // the comment's line.
    let text = b"BT ET\nendstream\n% ";
    add(case(
        "h_comment_after_quoted_endstream_hides_an_object",
        pdf(
            &page_with(
                "/OpenAction 6 0 R",
                &indirect_stream(text, b"endstream endobj 6 0 obj << /S /JavaScript >>"),
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "inside the string or comment at offset"),
    ));
    // (Second black-box round.) A stream of direct length whose data quotes
    // `endstream`: the object header after it, in the same data, is still
    // watched for once the data checks out.
    let text = b"BT (endstream) Tj ET\n11 0 obj << /S /JavaScript /JS (a) >> endobj\n";
    add(case(
        "h_header_after_quoted_endstream_in_counted_data",
        pdf(
            &page_with(
                "/OpenAction 11 0 R",
                &[[
                    format!("<< /Length {} >>\nstream\n", text.len()).as_bytes(),
                    text,
                    b"\nendstream",
                ]
                .concat()],
            ),
            "",
        ),
        Want::Reject(PdfActiveContent, "hides an object definition"),
    ));
    // A stream of indirect length quotes `endstream endobj` and the head of
    // a stream of direct length, which swallows the real end and what
    // follows (here a trailer with /Encrypt, no object header in it).
    let swallowing = |swallowed: &[u8]| {
        let quoted = [
            &b"BT ET\nendstream\nendobj\n20 0 obj\n"[..],
            format!("<< /Length {} >>\nstream\n", swallowed.len()).as_bytes(),
        ]
        .concat();
        pdf(
            &page_with(
                "",
                &indirect_stream(&quoted, &[swallowed, b"endstream"].concat()),
            ),
            "",
        )
    };
    add(case(
        "h_fake_direct_stream_after_quoted_endstream_swallows_a_trailer",
        swallowing(b"\nendstream\nendobj\nxref\n0 1\n0000000000 65535 f \ntrailer\n<< /Size 9 /Root 1 0 R /Encrypt 9 0 R >>\n"),
        Want::Reject(MalformedImage, "inside the data of the stream at offset"),
    ));
    // (Fuzzing, 2026-12-01.) The same with an object header in the swallowed
    // bytes, before the `endstream` inside them: the header comes first, so
    // it decides however the body is cut (fed in one piece, the `endstream`
    // used to decide). Without the header watch (`Allow`) the `endstream`
    // does.
    add(Case {
        want_allow: Want::Reject(MalformedImage, "inside the data of the stream at offset"),
        ..case(
            "h_header_before_a_swallowed_endstream",
            swallowing(b"\n7 0 obj\n<< /S /JavaScript >>\nendobj\nendstream\n"),
            Want::Reject(PdfActiveContent, "hides an object definition"),
        )
    });
    // (Fuzzing, 2026-12-01.) Data of indirect length that ends in `/Encrypt`
    // or `obj` right before its `endstream`: a reader pointed into it lexes
    // `/Encryptendstream` or `objendstream`, so neither counts, whether the
    // body comes in one piece or cut inside that `endstream` (fed in one
    // piece, the end of the data used to count as the end of the token).
    for (name, data) in [
        (
            "h_encrypt_right_before_endstream_fine",
            &b"BT ET /Encrypt"[..],
        ),
        ("h_obj_right_before_endstream_fine", b"BT ET 6 0 obj"),
    ] {
        add(case(
            name,
            pdf(&page_with("", &indirect_stream(data, b"endstream")), ""),
            Want::Ok,
        ));
    }
    // A stream of indirect length quotes a decoy XML definition of object 6,
    // which the /EF names; the real object 6 is an executable.
    let decoy = b"BT ET\nendstream\nendobj\n6 0 obj\n<< /Type /EmbeddedFile /Subtype /text#2Fxml >>\nstream\n<x/>\nendstream\nendobj\n";
    add(case(
        "h_decoy_definition_inside_a_stream_of_indirect_length",
        pdf(
            &page_with(
                "/Names << /EmbeddedFiles << /Names [(a.xml) << /Type /Filespec /F (a.xml) /EF << /F 6 0 R >> >>] >> >>",
                &[
                    indirect_stream(decoy, b"\nendstream").as_slice(),
                    &[[
                        &b"<< /Type /EmbeddedFile /Length 8 >>\nstream\n"[..],
                        b"MZ\x90\x00\x03\x00\x00\x00",
                        b"\nendstream",
                    ]
                    .concat()],
                ]
                .concat(),
            ),
            "",
        ),
        Want::Reject(MalformedImage, "a stray endstream at offset"),
    ));
    // (Third black-box round.) Bytes the scanner skips but a cross-reference
    // table can point a reader into: an object header in a comment or a
    // string, and a trailer with /Encrypt in a string or in stream data.
    for (name, catalog, more) in [
        (
            "h_object_in_a_comment",
            "/OpenAction 6 0 R",
            obj("<< /A 1 >> % 6 0 obj << /S /JavaScript /JS (a) >> endobj"),
        ),
        (
            "h_object_in_a_string",
            "/OpenAction 6 0 R",
            obj("<< /Title (6 0 obj << /S /JavaScript /JS <61> >> endobj) >>"),
        ),
    ] {
        add(case(
            name,
            pdf(&page_with(catalog, &[more]), ""),
            Want::Reject(PdfActiveContent, "inside the string or comment at offset"),
        ));
    }
    let trailer =
        "xref\n0 1\n0000000000 65535 f \ntrailer\n<< /Size 9 /Root 1 0 R /Encr#79pt 9 0 R >>\n";
    add(case(
        "h_encrypt_where_a_reader_can_be_pointed_string",
        pdf(&page_with("", &[obj(&format!("({trailer})"))]), ""),
        Want::Reject(
            PdfEncrypted,
            "/Encrypt inside the stream data, string or comment",
        ),
    ));
    add(case(
        "h_encrypt_where_a_reader_can_be_pointed_stream",
        pdf(&page_with("", &[stream("", trailer.as_bytes())]), ""),
        Want::Reject(
            PdfEncrypted,
            "/Encrypt inside the stream data, string or comment",
        ),
    ));
    // Lookalikes are fine.
    add(case(
        "h_encrypt_lookalikes_in_data_fine",
        pdf(
            &page_with(
                "",
                &[
                    stream(
                        "",
                        b"/EncryptMetadata /Encrypted /Encryp /Encr#79pts Encrypt",
                    ),
                    obj("<< /Title (/EncryptMetadata true) >>"),
                ],
            ),
            "",
        ),
        Want::Ok,
    ));
    // A string quoting `endstream` in a file whose streams all have direct
    // lengths is fine (a title, say).
    add(case(
        "h_endstream_in_a_string_with_direct_lengths_fine",
        pdf(
            &objects("", "", CONTENT, &[obj("<< /Title (endstream endobj) >>")]),
            "",
        ),
        Want::Ok,
    ));
    // The string and hex-string bodies that the lexer reads in one pass
    // with the watches' bytes (`j`, and `E` or `#` after a `/`): the same
    // verdicts as the watches give, where the bytes sit early or late in
    // the body (past the first 32, found by `memchr`), escaped, hex-encoded
    // or in a hex string that no reader decodes.
    let filler = "x".repeat(40);
    for (name, title, want) in [
        ("h_guard_literal_encrypt", "(/Encrypt 9 0 R)", Some(true)),
        (
            "h_guard_literal_escaped_slash",
            "(a\\/Encrypt 9 0 R)",
            Some(true),
        ),
        (
            "h_guard_literal_hash_escape",
            "(/#45ncrypt 9 0 R)",
            Some(true),
        ),
        (
            "h_guard_literal_late_encrypt",
            &format!("({filler} /Encrypt 9 0 R)"),
            Some(true),
        ),
        (
            "h_guard_literal_late_header",
            &format!("({filler} 6 0 obj << >>)"),
            Some(false),
        ),
        ("h_guard_literal_header", "(6 0 obj)", Some(false)),
        ("h_guard_hex_encrypt", "<00 /Encrypt 9 0 R>", Some(true)),
        ("h_guard_hex_header", "<00 6 0 obj>", Some(false)),
        (
            "h_guard_lookalikes_fine",
            "(ENCRYPT E# \\E \\#45 a\\j https://e.com/a/b#E) <2F456E6372797074>",
            None,
        ),
    ] {
        let file = pdf(&page_with("", &[obj(&format!("<< /Title {title} >>"))]), "");
        let want = match want {
            Some(true) => Want::Reject(
                PdfEncrypted,
                "/Encrypt inside the stream data, string or comment",
            ),
            Some(false) => Want::Reject(PdfActiveContent, "inside the string or comment at offset"),
            None => Want::Ok,
        };
        add(case(name, file, want));
    }
}

/// The spellings of an object header with comments for white space (a
/// reader's tokenizer skips `%` to the end of the line; `%` is a delimiter,
/// so it may follow a number directly), each with its name.
const COMMENTED_HEADERS: [(&str, &str); 3] = [
    ("before_obj", "6 0 %x\nobj"),
    ("between_numbers", "6 %x\n0 obj"),
    ("right_after_number", "6 0%\nobj"),
];

/// (Fourth black-box round.) An object header whose white space is a
/// comment, hidden in stream data (direct and indirect `/Length`) and in a
/// string: qpdf and pikepdf resolve object 6 to the JavaScript action.
fn hidden_header_comment_cases(add: &mut impl FnMut(Case)) {
    for (name, header) in COMMENTED_HEADERS {
        let js = "<< /S /JavaScript /JS (app.alert\\(1\\)) >>\nendobj\n";
        let data = format!("q Q\n{header} {js}q Q\n").into_bytes();
        add(case(
            &format!("h_hidden_header_comment_{name}_stream"),
            pdf(&page_with("/OpenAction 6 0 R", &[stream("", &data)]), ""),
            Want::Reject(PdfActiveContent, "hides an object definition"),
        ));
        add(case(
            &format!("h_hidden_header_comment_{name}_indirect_length"),
            pdf(
                &page_with("/OpenAction 6 0 R", &indirect_stream(&data, b"\nendstream")),
                "",
            ),
            Want::Reject(PdfActiveContent, "hides an object definition"),
        ));
        add(case(
            &format!("h_hidden_header_comment_{name}_string"),
            pdf(
                &page_with(
                    "/OpenAction 6 0 R",
                    &[obj(&format!(
                        "<< /Subject ({header} << /S /JavaScript /JS (app.alert) >> endobj) >>"
                    ))],
                ),
                "",
            ),
            Want::Reject(PdfActiveContent, "inside the string or comment at offset"),
        ));
    }
    // Not headers: `obj` inside the comment (on its line), a comment after
    // a single number, `obj` as the start of a longer word after a comment.
    let data = b"q Q 6 0 %x obj\n(50%)\n3 objects 1 %c\nobjx 7 %obj\nBT (6 0 % obj) Tj ET\n";
    add(case(
        "h_hidden_header_comment_lookalikes_fine",
        pdf(
            &page_with(
                "",
                &[
                    stream("", data),
                    obj("<< /Subject (6 0 %x obj 1 %c\nobjx) >> % 6 0 % obj"),
                ],
            ),
            "",
        ),
        Want::Ok,
    ));
}

cases!(
    h_hidden_header_comment_before_obj_stream,
    h_hidden_header_comment_before_obj_indirect_length,
    h_hidden_header_comment_before_obj_string,
    h_hidden_header_comment_between_numbers_stream,
    h_hidden_header_comment_between_numbers_indirect_length,
    h_hidden_header_comment_between_numbers_string,
    h_hidden_header_comment_right_after_number_stream,
    h_hidden_header_comment_right_after_number_indirect_length,
    h_hidden_header_comment_right_after_number_string,
    h_hidden_header_comment_lookalikes_fine,
);

/// The headers behind comments are refused however the file is cut: in
/// chunks of several sizes (every split point in two is checked for every
/// case by `every_split_point_gives_the_one_shot_verdict_*`).
#[test]
fn hidden_headers_behind_comments_are_refused_in_chunks_of_any_size() {
    for (name, _) in COMMENTED_HEADERS {
        for place in ["stream", "indirect_length", "string"] {
            let case = format!("h_hidden_header_comment_{name}_{place}");
            let c = get(&case).expect("a hand-made case");
            for size in [1, 2, 3, 4, 5, 7, 8, 13, 64, 1000, c.bytes.len()] {
                let got = scan_pdf(&c.limits, &c.bytes, size);
                assert!(
                    matches!(&got, Err(r) if r.code == PdfActiveContent),
                    "{case}, chunks of {size}: {got:?}"
                );
            }
        }
    }
}

cases!(
    h_guard_literal_encrypt,
    h_guard_literal_escaped_slash,
    h_guard_literal_hash_escape,
    h_guard_literal_late_encrypt,
    h_guard_literal_late_header,
    h_guard_literal_header,
    h_guard_hex_encrypt,
    h_guard_hex_header,
    h_guard_lookalikes_fine,
    h_object_in_a_comment,
    h_object_in_a_string,
    h_encrypt_where_a_reader_can_be_pointed_string,
    h_encrypt_where_a_reader_can_be_pointed_stream,
    h_encrypt_lookalikes_in_data_fine,
    h_header_after_quoted_endstream_in_counted_data,
    h_fake_direct_stream_after_quoted_endstream_swallows_a_trailer,
    h_header_before_a_swallowed_endstream,
    h_encrypt_right_before_endstream_fine,
    h_obj_right_before_endstream_fine,
    h_decoy_definition_inside_a_stream_of_indirect_length,
    h_objstm_indirect_length_endstream_in_stored_block_js,
    h_objstm_indirect_length_control_js,
    h_objstm_indirect_length_endstream_in_string_js,
    h_string_after_quoted_endstream_hides_an_object,
    h_comment_after_quoted_endstream_hides_an_object,
    h_endstream_in_a_string_with_direct_lengths_fine,
    h_tolerated_endstream_quoted_in_a_stream_of_indirect_length,
    h_not_pdf_html,
    h_not_pdf_text,
    h_not_pdf_header_and_eof_only,
    h_not_pdf_array_offset,
    h_not_pdf_zip,
    h_not_pdf_random_1,
    h_not_pdf_random_2,
    h_not_pdf_random_3,
    h_not_pdf_random_4,
    h_not_pdf_no_startxref,
    h_not_pdf_startxref_without_offset,
    h_not_pdf_html_between_objects,
    h_not_pdf_text_between_objects,
    h_not_pdf_name_between_objects,
    h_not_pdf_dict_between_objects,
    h_not_pdf_array_between_objects,
    h_not_pdf_reference_between_objects,
    h_not_pdf_stream_between_objects,
    h_not_pdf_long_text_word_between_objects,
    h_not_pdf_text_before_incremental_update,
    h_tolerated_stray_keywords,
    h_tolerated_binary_junk_before_incremental_update,
    h_tolerated_binary_line_without_percent,
    h_ef_no_type_raw_xml,
    h_ef_no_type_application_xml_bom,
    h_ef_no_type_not_xml,
    h_ef_no_type_xml_beside_exe,
    h_ef_no_type_subtype_only_in_params,
    h_rf_related_files_exe,
    h_rf_control_without_rf,
    h_rf_escaped,
    h_rf_in_object_stream,
    h_rf_lookalikes_fine,
);

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
    qpdf_facturx_object_streams,
    qpdf_facturx_qdf,
    qpdf_facturx_linearize_object_streams,
    qpdf_facturx_plus_xml_attachment,
    qpdf_facturx_plus_attachment,
    qpdf_facturx_plus_attachment_object_streams,
    qpdf_facturx_plus_fake_xml_attachment,
    qpdf_facturx_encrypted,
);

// Committed fixtures.
cases!(
    f_facturx,
    f_facturx_as_written,
    f_facturx_xml_subtype_exe_bytes,
    f_facturx_xml_subtype_pdf_bytes,
    f_facturx_ef_stream_without_type,
);

// ---------------------------------------------------------------------------
// Object streams: where a reader finds their objects
// ---------------------------------------------------------------------------

/// A file whose one object stream has `dict` (`{n}` and `{first}` filled
/// in: the number of pairs in `header`, and `header`'s length) and the data
/// `header` then `body`, deflated unless `raw`; the catalog's `/OpenAction`
/// names object 4, which the header may place anywhere.
fn objstm_layout(dict: &str, header: &str, body: &str, raw: bool) -> Vec<u8> {
    let n = header.split_ascii_whitespace().count() / 2;
    let dict = dict
        .replace("{n}", &n.to_string())
        .replace("{first}", &header.len().to_string());
    let data = format!("{header}{body}").into_bytes();
    let stm = if raw {
        stream(&dict, &data)
    } else {
        stream(&format!("{dict} /Filter /FlateDecode"), &zlib(&data))
    };
    pdf(&objects("/OpenAction 4 0 R", "", CONTENT, &[stm]), "")
}

const OBJSTM: &str = "/Type /ObjStm /N {n} /First {first}";
const JS_ACTION: &str = "<< /S /JavaScript /JS (app.alert) >>";

fn objstm_layout_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |c: Case| cases.push(c);
    let hidden = "an object starts at offset";
    // Object 4 starts inside a comment of object 5, read in order: a reader
    // goes to its offset and finds the JavaScript action.
    let in_comment = format!("null %{JS_ACTION}\n");
    for (name, raw) in [
        ("h_objstm_object_inside_a_comment", true),
        ("h_objstm_object_inside_a_comment_flate", false),
    ] {
        add(case(
            name,
            objstm_layout(OBJSTM, "5 0 4 6\n", &in_comment, raw),
            Want::Reject(MalformedImage, hidden),
        ));
    }
    add(case(
        "h_objstm_object_inside_a_string",
        objstm_layout(
            OBJSTM,
            "5 0 4 5\n",
            &format!("(pad {JS_ACTION} pad)\n"),
            false,
        ),
        Want::Reject(MalformedImage, hidden),
    ));
    // An embedded executable, its file specification hidden so.
    add(case(
        "h_objstm_filespec_inside_a_comment",
        objstm_layout(
            OBJSTM,
            "5 0 4 6\n",
            "null %<< /Type /Filespec /F (a.exe) /E#46 << /F 9 0 R >> >>\n",
            false,
        ),
        Want::Reject(MalformedImage, hidden),
    ));
    // Where a token, a dictionary or a `>>` of the object before goes on.
    add(case(
        "h_objstm_object_inside_a_word",
        objstm_layout(OBJSTM, "5 0 4 2\n", "truefalse\n", true),
        Want::Reject(MalformedImage, hidden),
    ));
    add(case(
        "h_objstm_object_inside_a_name",
        objstm_layout(OBJSTM, "5 0 4 5\n", "/Abcdef\n", true),
        Want::Reject(MalformedImage, hidden),
    ));
    add(case(
        "h_objstm_object_inside_a_dictionary",
        objstm_layout(OBJSTM, "5 0 4 8\n", "<< /A 1 << /B 2 >> >>\n", true),
        Want::Reject(MalformedImage, hidden),
    ));
    add(case(
        "h_objstm_object_inside_a_hex_string",
        objstm_layout(OBJSTM, "5 0 4 3\n", "<4142 4344>\n", true),
        Want::Reject(MalformedImage, hidden),
    ));
    // What writers do: fine, in any order, with or without white space
    // before an object, the first one right after the header.
    add(case(
        "h_objstm_layout_unsorted_offsets",
        objstm_layout(OBJSTM, "5 11 4 0 ", "<< /A 1 >> [ (x) ]\n", false),
        Want::Ok,
    ));
    add(case(
        "h_objstm_layout_offset_on_white_space",
        objstm_layout(OBJSTM, "4 0 5 10\n", "<< /A 1 >>  << /B (%) >>\n", false),
        Want::Ok,
    ));
    add(case(
        "h_objstm_layout_no_space_after_header",
        objstm_layout(OBJSTM, "4 0 5 8", "<</A 1>>/Name\n", true),
        Want::Ok,
    ));
    add(case(
        "h_objstm_layout_name_then_dictionary",
        objstm_layout(OBJSTM, "4 0 5 5", "/Name<</A 1>>", true),
        Want::Ok,
    ));
    add(case(
        "h_objstm_layout_offset_past_the_end",
        objstm_layout(OBJSTM, "4 0 5 999 ", "<< /A 1 >>\n", false),
        Want::Ok,
    ));
    // A /First no data reaches: every object past the end.
    add(case(
        "h_objstm_layout_first_past_any_end",
        objstm_layout(
            "/Type /ObjStm /N 2 /First 9999999999999999999",
            "5 0 4 6 ",
            "<< /A 1 >>\n",
            false,
        ),
        Want::Ok,
    ));
    add(case(
        "h_objstm_layout_no_objects",
        objstm_layout("/Type /ObjStm /N 0 /First 0", "", "", false),
        Want::Ok,
    ));
    // Headers a reader cannot read as /N pairs of integers before /First.
    let pairs = "has a header that is not /N pairs of integers before /First";
    add(case(
        "h_objstm_header_with_a_word",
        objstm_layout(OBJSTM, "5 0 4 x ", "<< /A 1 >>\n", false),
        Want::Reject(MalformedImage, pairs),
    ));
    add(case(
        "h_objstm_header_with_a_comment",
        objstm_layout(OBJSTM, "5 0 %c\n4 6 ", "<< /A 1 >>\n", false),
        Want::Reject(MalformedImage, pairs),
    ));
    add(case(
        "h_objstm_header_past_first",
        objstm_layout(
            "/Type /ObjStm /N 2 /First 3",
            "5 0 4 6 ",
            "<< /A 1 >>\n",
            false,
        ),
        Want::Reject(MalformedImage, pairs),
    ));
    add(case(
        "h_objstm_header_cut_short",
        objstm_layout("/Type /ObjStm /N 3 /First 40", "5 0 4 6 ", "", false),
        Want::Reject(MalformedImage, "ends before its header's /N pairs"),
    ));
    add(case(
        "h_objstm_first_indirect",
        objstm_layout(
            "/Type /ObjStm /N {n} /First 9 0 R",
            "5 0 4 6\n",
            &in_comment,
            false,
        ),
        Want::Reject(MalformedImage, "no direct integer"),
    ));
    add(case(
        "h_objstm_n_indirect",
        objstm_layout(
            "/Type /ObjStm /N 9 0 R /First {first}",
            "5 0 4 6\n",
            &in_comment,
            false,
        ),
        Want::Reject(MalformedImage, "no direct integer"),
    ));
    add(case(
        "h_objstm_too_many_objects",
        objstm_layout(
            "/Type /ObjStm /N 65537 /First {first}",
            "5 0 ",
            "<< /A 1 >>\n",
            false,
        ),
        Want::Reject(MalformedImage, "more than the 65536 the scanner follows"),
    ));
    cases
}

cases!(
    h_objstm_object_inside_a_comment,
    h_objstm_object_inside_a_comment_flate,
    h_objstm_object_inside_a_string,
    h_objstm_filespec_inside_a_comment,
    h_objstm_object_inside_a_word,
    h_objstm_object_inside_a_name,
    h_objstm_object_inside_a_dictionary,
    h_objstm_object_inside_a_hex_string,
    h_objstm_layout_unsorted_offsets,
    h_objstm_layout_offset_on_white_space,
    h_objstm_layout_no_space_after_header,
    h_objstm_layout_name_then_dictionary,
    h_objstm_layout_offset_past_the_end,
    h_objstm_layout_first_past_any_end,
    h_objstm_layout_no_objects,
    h_objstm_header_with_a_word,
    h_objstm_header_with_a_comment,
    h_objstm_header_past_first,
    h_objstm_header_cut_short,
    h_objstm_first_indirect,
    h_objstm_n_indirect,
    h_objstm_too_many_objects,
);

/// Every case in the corpus has a test of its own above.
#[test]
fn every_case_has_a_test() {
    let src = include_str!("inspect_pdf.rs");
    // The generated cases are all checked by `generated_markers_agree_with_qpdf`.
    for c in corpus().cases.iter().filter(|c| !c.name.starts_with("g_")) {
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
/// spread over the file (200 for the generated files). The `Allow` policy only where its verdict differs.
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
            // The many generated files: 200 split points each.
            let step = if c.name.starts_with("g_") {
                n / 200 + 1
            } else if n <= 8 * 1024 {
                1
            } else {
                n / 2000 + 1
            };
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

/// An object stream (no filter) whose objects hold `/Launch` and, in its
/// data, a hidden object header: the first problem in the data is the one
/// reported, at every split point. (One-shot, the header used to win: the
/// search ran over the whole data before the object stream saw any of it.)
#[test]
fn an_object_stream_problem_and_a_hidden_header_first_comes_first_however_cut() {
    let launch = "<< /S /Launch /F (a.exe) >>";
    let hidden = "(filler) 9 0 obj << >> endobj";
    for (objects, first_problem) in [
        ([launch, hidden], "/Launch"),
        ([hidden, launch], "hides an object definition"),
    ] {
        let (data, n, first) = objstm_data(5, &objects);
        let file = pdf(
            &[
                b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
                b"<< /Type /Pages /Kids [] /Count 0 >>".to_vec(),
                stream(&format!("/Type /ObjStm /N {n} /First {first}"), &data),
            ],
            "",
        );
        let limits = Limits::default();
        let one = scan_pdf(&limits, &file, file.len());
        let err = one.clone().expect_err("rejected");
        assert_eq!(err.code, PdfActiveContent);
        assert!(err.detail.contains(first_problem), "{}", err.detail);
        for at in 1..file.len() {
            let got = feed_chunks(&limits, &file, [at, file.len()].into_iter());
            assert_eq!(got, one, "split at {at}");
        }
        for size in [1, 2, 3, 7, 64] {
            assert_eq!(scan_pdf(&limits, &file, size), one, "chunks of {size}");
        }
    }
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

    /// Mutated files: any verdict, but the same in any chunking, no panic, and
    /// the two policies agree but for `pdf_active_content`.
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
        prop_assert_eq!(feed_chunks(&limits, &bytes, sizes.iter().copied().cycle()), one.clone());
        // As the fuzz target checks: `Allow` only drops the active-content
        // verdict.
        let (reject, allowed) = if allow_active {
            (scan_pdf(&c.limits, &bytes, bytes.len().max(1)), one)
        } else {
            let allowed = scan_pdf(&allow(&c.limits), &bytes, bytes.len().max(1));
            (one, allowed)
        };
        if let Err(e) = &allowed {
            prop_assert_ne!(e.code, PdfActiveContent);
        }
        if !matches!(&reject, Err(e) if e.code == PdfActiveContent) {
            prop_assert_eq!(reject, allowed);
        }
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
    b"/URI (javascript:",
    b"/URI (ht\\\ntp:",
    b"/URI <FEFF006A",
    b"/URI 7 0 R",
    b"\\15",
    b"/EF << /F 7 0 R >>",
    b"/EF <<",
    b"/N 1 /First 4",
    b"/Type /EmbeddedFile /Subtype /text#2Fxml",
    b"7 0 obj /ObjStm endobj",
    b"/Type 7 0 R",
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

// ---------------------------------------------------------------------------
// Structure-aware generator, checked against qpdf's own reading
// ---------------------------------------------------------------------------

/// A small PDF writer: top-level objects and object streams, then a classic
/// cross-reference table or a cross-reference stream. Offsets are exact, so
/// qpdf reads the files without reconstruction.
struct Gen {
    out: Vec<u8>,
    xref: Vec<(u32, Loc)>,
}

/// Where an object is: at an offset, or (object stream, index).
enum Loc {
    At(usize),
    InStm(u32, u32),
}

impl Gen {
    fn new() -> Self {
        Gen {
            out: HEADER.to_vec(),
            xref: Vec::new(),
        }
    }

    fn obj(&mut self, num: u32, body: &[u8]) {
        self.xref.push((num, Loc::At(self.out.len())));
        self.out
            .extend_from_slice(format!("{num} 0 obj\n").as_bytes());
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\nendobj\n");
    }

    /// An object stream `num` holding `objects`; `dict` is its dictionary
    /// without `/Length`, with `{n}` and `{first}` in it; FlateDecode data
    /// when `dict` names a filter.
    fn objstm(&mut self, num: u32, dict: &str, objects: &[(u32, String)]) {
        let mut header = String::new();
        let mut body = String::new();
        for (i, (n, o)) in objects.iter().enumerate() {
            header.push_str(&format!("{n} {} ", body.len()));
            body.push_str(o);
            body.push('\n');
            self.xref.push((*n, Loc::InStm(num, i as u32)));
        }
        let first = header.len();
        let data = (header + &body).into_bytes();
        let dict = dict
            .replace("{n}", &objects.len().to_string())
            .replace("{first}", &first.to_string());
        let data = if dict.contains("Filter") || dict.contains("F#69lter") {
            zlib(&data)
        } else {
            data
        };
        self.obj(num, &stream(&dict, &data));
    }

    fn size(&self) -> u32 {
        self.xref.iter().map(|e| e.0).max().unwrap_or(0) + 1
    }

    /// A classic table and trailer (no object streams).
    fn finish_table(mut self, trailer: &str) -> Vec<u8> {
        let size = self.size();
        let at = self.out.len();
        let mut t = format!("xref\n0 {size}\n");
        for n in 0..size {
            match self.xref.iter().find(|e| e.0 == n) {
                Some((_, Loc::At(off))) => t.push_str(&format!("{off:010} 00000 n \n")),
                Some((_, Loc::InStm(..))) => panic!("object {n} is in an object stream"),
                None => t.push_str("0000000000 65535 f \n"),
            }
        }
        self.out.extend_from_slice(t.as_bytes());
        self.out.extend_from_slice(
            format!("trailer\n<< /Size {size} /Root 1 0 R {trailer} >>\nstartxref\n{at}\n%%EOF\n")
                .as_bytes(),
        );
        self.out
    }

    /// A cross-reference stream (object `num`), whose dictionary is `dict`
    /// followed by `/Size`, `/W`, `/Root` and `/Length`.
    fn finish_stream(mut self, num: u32, dict: &str) -> Vec<u8> {
        let at = self.out.len();
        self.xref.push((num, Loc::At(at)));
        let size = self.size();
        let mut data = Vec::new();
        for n in 0..size {
            let (t, a, b): (u8, u32, u16) = match self.xref.iter().find(|e| e.0 == n) {
                Some((_, Loc::At(off))) => (1, *off as u32, 0),
                Some((_, Loc::InStm(s, i))) => (2, *s, *i as u16),
                None => (0, 0, if n == 0 { 65535 } else { 0 }),
            };
            data.push(t);
            data.extend_from_slice(&a.to_be_bytes());
            data.extend_from_slice(&b.to_be_bytes());
        }
        let body = stream(
            &format!("{dict} /Size {size} /W [1 4 2] /Root 1 0 R"),
            &data,
        );
        self.out
            .extend_from_slice(format!("{num} 0 obj\n").as_bytes());
        self.out.extend_from_slice(&body);
        self.out
            .extend_from_slice(format!("\nendobj\nstartxref\n{at}\n%%EOF\n").as_bytes());
        self.out
    }
}

/// Escapes the first character of every name in `pdf_text` as `#xx`.
fn escape_names(pdf_text: &str) -> String {
    let mut out = String::new();
    let mut chars = pdf_text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '/'
            && let Some(&n) = chars.peek()
            && n.is_ascii_alphanumeric()
        {
            out.push_str(&format!("#{:02X}", n as u32));
            chars.next();
        }
    }
    out
}

/// What the generator hides.
struct Marker {
    name: &'static str,
    /// Object 10; the catalog points at it with `/X 10 0 R`.
    payload: &'static str,
    /// An embedded file: object 11 is a stream with this data and
    /// `/Subtype`, named by the catalog's `/EmbeddedFiles`.
    file: Option<(&'static str, &'static [u8])>,
    /// A control: the scanner must accept it and qpdf must find no marker.
    benign: bool,
}

const MARKERS: &[Marker] = &[
    Marker {
        name: "javascript",
        payload: "<< /S /JavaScript /JS (app.alert\\(1\\)) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "launch",
        payload: "<< /S /Launch /F (calc.exe) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "xfa",
        payload: "<< /Fields [] /XFA (<xdp/>) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "submitform",
        payload: "<< /S /SubmitForm /F (https://e.example/) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "importdata",
        payload: "<< /S /ImportData /F (x.fdf) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "richmedia",
        payload: "<< /Type /Annot /Subtype /RichMedia /Rect [0 0 1 1] >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "uri_javascript",
        payload: "<< /S /URI /URI (javascript:app.alert\\(1\\)) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "uri_file_key_first",
        payload: "<< /URI (file:///etc/passwd) /S /URI >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "uri_hex",
        payload: "<< /S /URI /URI <6A6176617363726970743A78> >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "uri_octal_tab",
        payload: "<< /S /URI /URI ( \\t\\152ava\\tscript:x) >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "uri_utf16",
        payload: "<< /S /URI /URI <FEFF0064006100740061003A0078> >>",
        file: None,
        benign: false,
    },
    Marker {
        name: "embedded_exe",
        payload: "<< /Type /Filespec /F (a.bin) /UF (a.bin) /EF << /F 11 0 R /UF 11 0 R >> >>",
        file: Some(("/application#2Foctet-stream", b"MZ\x90\0\x03\0\0\0PE\0\0")),
        benign: false,
    },
    Marker {
        name: "embedded_exe_as_xml",
        payload: "<< /Type /Filespec /F (a.xml) /UF (a.xml) /EF << /F 11 0 R >> >>",
        file: Some(("/text#2Fxml", b"MZ\x90\0\x03\0\0\0PE\0\0")),
        benign: false,
    },
    Marker {
        name: "control_goto",
        payload: "<< /S /GoTo /D [3 0 R /Fit] >>",
        file: None,
        benign: true,
    },
    Marker {
        name: "control_uri_https",
        payload: "<< /S /URI /URI (https://example.com/a?b=javascript:x) >>",
        file: None,
        benign: true,
    },
    Marker {
        name: "control_embedded_xml",
        payload: "<< /Type /Filespec /F (a.xml) /UF (a.xml) /AFRelationship /Data /EF << /F 11 0 R >> >>",
        file: Some((
            "/text#2Fxml",
            b"<?xml version=\"1.0\"?>\n<Invoice>42</Invoice>\n",
        )),
        benign: true,
    },
];

const PLACEMENTS: &[&str] = &[
    "direct",
    "escaped_names",
    "incremental",
    "objstm_type",
    "objstm_indirect_type",
    "objstm_no_type",
    "objstm_escaped_keys",
    "objstm_reordered_raw",
    "objstm_escaped_names",
];

/// The file for `marker` in `placement`.
fn generate(marker: &Marker, placement: &str) -> Vec<u8> {
    let names = if marker.file.is_some() {
        "/Names << /EmbeddedFiles << /Names [(a) 10 0 R] >> >>"
    } else {
        ""
    };
    let catalog = format!("<< /Type /Catalog /Pages 2 0 R /X 10 0 R {names} >>");
    let payload = match placement {
        "escaped_names" | "objstm_escaped_names" => escape_names(marker.payload),
        _ => marker.payload.to_owned(),
    };
    let base = objects("", "", CONTENT, &[]);
    let file = marker
        .file
        .map(|(subtype, data)| stream(&format!("/Type /EmbeddedFile /Subtype {subtype}"), data));
    let mut g = Gen::new();
    if placement == "incremental" {
        for (i, o) in base.iter().enumerate() {
            g.obj(i as u32 + 1, o);
        }
        let original = g.finish_table("");
        let mut update = vec![(1, obj(&catalog)), (10, obj(&payload))];
        if let Some(f) = file {
            update.push((11, f));
        }
        return incremental(&original, &update, "");
    }
    g.obj(1, catalog.as_bytes());
    for (i, o) in base.iter().enumerate().skip(1) {
        g.obj(i as u32 + 1, o);
    }
    if let Some(f) = &file {
        g.obj(11, f);
    }
    let stm_dict = match placement {
        "direct" | "escaped_names" => {
            g.obj(10, payload.as_bytes());
            return g.finish_table("");
        }
        "objstm_type" | "objstm_escaped_names" => {
            "/Type /ObjStm /N {n} /First {first} /Filter /FlateDecode"
        }
        "objstm_indirect_type" => {
            g.obj(21, b"/ObjStm");
            "/Type 21 0 R /N {n} /First {first} /Filter /FlateDecode"
        }
        "objstm_no_type" => "/N {n} /First {first} /Filter /FlateDecode",
        "objstm_escaped_keys" => {
            "/Ty#70e /Obj#53tm /#4E {n} /Fi#72st {first} /F#69lter /Fl#61teDecode"
        }
        "objstm_reordered_raw" => "/First {first} /N {n} /Type /ObjStm",
        other => panic!("no placement {other}"),
    };
    g.objstm(20, stm_dict, &[(10, payload)]);
    g.finish_stream(30, "/Type /XRef")
}

/// The generated files, for the chunking tests (their verdicts are checked
/// against qpdf by `generated_markers_agree_with_qpdf`).
fn generated_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for marker in MARKERS {
        for placement in PLACEMENTS {
            let want = if marker.benign {
                Want::Ok
            } else {
                Want::Reject(PdfActiveContent, "")
            };
            cases.push(case(
                &format!("g_{}_{placement}", marker.name),
                generate(marker, placement),
                want,
            ));
        }
    }
    cases
}

/// qpdf's reading of a file: every object (object streams resolved, names
/// unescaped, strings decoded) as JSON, and the bytes of each attachment.
struct QpdfView {
    objects: serde_json::Value,
    attachments: Vec<Vec<u8>>,
}

fn qpdf_view(dir: &Path, bytes: &[u8]) -> Result<QpdfView, String> {
    std::fs::write(dir.join("gen.pdf"), bytes).unwrap();
    let out = Command::new("qpdf")
        .args(["--json=2", "--json-key=qpdf", "gen.pdf"])
        .current_dir(dir)
        .output()
        .expect("cannot run qpdf");
    if !(out.status.success() || out.status.code() == Some(3)) {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let objects = json["qpdf"][1].clone();
    let list = Command::new("qpdf")
        .args(["--list-attachments", "gen.pdf"])
        .current_dir(dir)
        .output()
        .expect("cannot run qpdf");
    let mut attachments = Vec::new();
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        if let Some((key, _)) = line.split_once(" -> ") {
            let shown = Command::new("qpdf")
                .args([&format!("--show-attachment={}", key.trim()), "gen.pdf"])
                .current_dir(dir)
                .output()
                .expect("cannot run qpdf");
            attachments.push(shown.stdout);
        }
    }
    Ok(QpdfView {
        objects,
        attachments,
    })
}

/// What qpdf sees of the active-content markers: the names (keys or values)
/// of the SPEC's list, `/URI` strings with a scheme other than http, https or
/// mailto (read the WHATWG way), and attachments that are not XML.
fn qpdf_markers(view: &QpdfView) -> Vec<String> {
    fn walk(v: &serde_json::Value, found: &mut Vec<String>) {
        const NAMES: &[&str] = &[
            "/JavaScript",
            "/JS",
            "/Launch",
            "/XFA",
            "/RichMedia",
            "/SubmitForm",
            "/ImportData",
        ];
        match v {
            serde_json::Value::String(s) if NAMES.contains(&s.as_str()) => found.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, found)),
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if NAMES.contains(&k.as_str()) {
                        found.push(k.clone());
                    }
                    if k == "/URI"
                        && let Some(s) = x.as_str().and_then(|s| s.strip_prefix("u:"))
                    {
                        let s: String = s
                            .chars()
                            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                            .collect();
                        let s = s
                            .trim_start_matches(|c: char| c <= ' ')
                            .to_ascii_lowercase();
                        if let Some((scheme, _)) = s.split_once(':')
                            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                            && scheme
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                            && !["http", "https", "mailto"].contains(&scheme)
                        {
                            found.push(format!("/URI {scheme}:"));
                        }
                    }
                    walk(x, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&view.objects, &mut found);
    for a in &view.attachments {
        if !a.trim_ascii_start().starts_with(b"<") {
            found.push(format!(
                "attachment {:?}",
                String::from_utf8_lossy(&a[..a.len().min(8)])
            ));
        }
    }
    found
}

/// Every marker in every place the syntax allows: whenever qpdf finds the
/// marker, the scanner rejects the file (under `Allow` it accepts it); the
/// controls are read by qpdf without a marker and accepted. Each file is
/// also scanned in several chunkings.
#[test]
fn generated_markers_agree_with_qpdf() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for marker in MARKERS {
        for placement in PLACEMENTS {
            let label = format!("{} / {placement}", marker.name);
            let bytes = generate(marker, placement);
            let view = qpdf_view(dir.path(), &bytes)
                .unwrap_or_else(|e| panic!("{label}: qpdf cannot read the file: {e}"));
            assert!(
                view.objects.get("obj:10 0 R").is_some(),
                "{label}: qpdf does not see object 10"
            );
            let found = qpdf_markers(&view);
            let limits = Limits::default();
            let got = scan_pdf(&limits, &bytes, bytes.len());
            for n in [1, 7, 64, 1000] {
                assert_eq!(
                    scan_pdf(&limits, &bytes, n),
                    got,
                    "{label}: {n}-byte chunks"
                );
            }
            assert_eq!(
                scan_pdf(&allow(&limits), &bytes, 64),
                Ok(()),
                "{label}: under Allow"
            );
            if marker.benign {
                assert!(
                    found.is_empty(),
                    "{label}: qpdf sees {found:?} in a control"
                );
                assert_eq!(got, Ok(()), "{label}: a control is rejected");
            } else {
                assert!(!found.is_empty(), "{label}: qpdf does not see the marker");
                match &got {
                    Err(r) if r.code == PdfActiveContent => {}
                    _ => panic!("{label}: qpdf sees {found:?}, the scanner says {got:?}"),
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, MARKERS.len() * PLACEMENTS.len());
}

/// `/Encrypt` in every place the syntax allows: whenever qpdf takes the file
/// for encrypted (`--requires-password` exits 0 or 3), the scanner says
/// `pdf_encrypted`; the same files without `/Encrypt` are read as not
/// encrypted and accepted.
#[test]
fn generated_encryption_agrees_with_qpdf() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = b"<< /Filter /Standard /V 1 /R 2 /O <00> /U <00> /P -4 >>";
    let build = |placement: &str, encrypt: &str| -> Vec<u8> {
        let mut g = Gen::new();
        for (i, o) in objects("", "", CONTENT, &[]).iter().enumerate() {
            g.obj(i as u32 + 1, o);
        }
        g.obj(9, fake);
        let key = if encrypt.is_empty() {
            ""
        } else {
            "/Encrypt 9 0 R"
        };
        match placement {
            "trailer" => g.finish_table(key),
            "trailer_escaped" => g.finish_table(&encrypt.replace("/Encrypt", "/Encr#79pt")),
            "incremental" => {
                let base = g.finish_table("");
                incremental(&base, &[(12, obj("(x)"))], key)
            }
            "xref_stream" => g.finish_stream(30, &format!("/Type /XRef {key}")),
            "xref_stream_indirect_type" => {
                g.obj(21, b"/XRef");
                g.finish_stream(30, &format!("/Type 21 0 R {key}"))
            }
            "xref_stream_no_type" => g.finish_stream(30, key),
            "xref_stream_escaped" => g.finish_stream(
                30,
                &format!("{} /T#79pe /XR#65f", key.replace("/Encrypt", "/#45ncrypt")),
            ),
            other => panic!("no placement {other}"),
        }
    };
    let mut seen = Vec::new();
    for placement in [
        "trailer",
        "trailer_escaped",
        "incremental",
        "xref_stream",
        "xref_stream_indirect_type",
        "xref_stream_no_type",
        "xref_stream_escaped",
    ] {
        for encrypted in [true, false] {
            let bytes = build(placement, if encrypted { "/Encrypt 9 0 R" } else { "" });
            std::fs::write(dir.path().join("enc.pdf"), &bytes).unwrap();
            let out = Command::new("qpdf")
                .args(["--requires-password", "enc.pdf"])
                .current_dir(dir.path())
                .output()
                .expect("cannot run qpdf");
            let qpdf_encrypted = matches!(out.status.code(), Some(0 | 3));
            let got = scan_pdf(&Limits::default(), &bytes, 64);
            assert_eq!(got, scan_pdf(&Limits::default(), &bytes, bytes.len()));
            if encrypted {
                // Where qpdf does not take the file for encrypted (it does not
                // read that cross-reference stream), rejecting is conservative.
                assert!(
                    matches!(&got, Err(r) if r.code == PdfEncrypted),
                    "{placement}: the scanner says {got:?} (qpdf encrypted: {qpdf_encrypted})"
                );
                if qpdf_encrypted {
                    seen.push(placement);
                }
            } else {
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{placement}: qpdf says encrypted"
                );
                assert_eq!(got, Ok(()), "{placement}: control rejected");
            }
        }
    }
    let _ = writeln!(std::io::stderr(), "qpdf sees /Encrypt in: {seen:?}");
    for p in [
        "trailer",
        "trailer_escaped",
        "incremental",
        "xref_stream",
        "xref_stream_escaped",
    ] {
        assert!(seen.contains(&p), "qpdf does not see /Encrypt in {p}");
    }
}
