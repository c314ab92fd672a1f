//! What an adversarial round got past the gateway, each case over real
//! sockets: framing tricks, oversized heads sent in one write, trickling and
//! endless bodies, tiny chunked frames, spool exhaustion, one caller holding
//! every upload slot, idle connections filling the connection table. Every
//! test asserts on what reached the sandbox, not only on the answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `bytes` on a fresh connection and reads until the gateway closes it
/// (or `wait` passes): the raw answer.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer (and close) before it read everything.
    let _ = s.write_all(bytes).await;
    read_answer(&mut s, wait).await
}

/// Reads one answer head and its body (by `content-length`), or until close.
async fn read_answer(s: &mut TcpStream, wait: Duration) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return String::from_utf8_lossy(&buf).into_owned(),
        }
    }
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn code_of(answer: &str) -> String {
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    v["code"].as_str().unwrap_or_default().to_owned()
}

fn upload_head(token: &str, extra: &str) -> String {
    format!(
        "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{extra}\r\n"
    )
}

/// A well-framed upload of the sample JPEG: head and body.
fn good_upload(token: &str) -> Vec<u8> {
    [
        upload_head(token, &format!("content-length: {}\r\n", JPEG.len())).as_bytes(),
        JPEG,
    ]
    .concat()
}

/// `body` as chunked frames of `size` bytes each, with the last chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn framing_rfc9112_host_transfer_encoding_and_authorization() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let body_len = format!("content-length: {}\r\n", JPEG.len());
    let wait = Duration::from_secs(5);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "no Host",
            format!(
                "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{body_len}\r\n"
            ),
            400,
            "invalid_request",
        ),
        (
            "two Hosts",
            upload_head(&token, &format!("host: other.test\r\n{body_len}")),
            400,
            "invalid_request",
        ),
        (
            "a Host with user info",
            format!(
                "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: user@gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{body_len}\r\n"
            ),
            400,
            "invalid_request",
        ),
        // An absolute-form target wins over Host (RFC 9112 §3.2.2): its
        // authority is held to the same rules, and its scheme is http(s).
        (
            "an absolute-form target with user info",
            format!(
                "POST http://u:p@evil.example/api/image/v1.0/report/R1 HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{body_len}\r\n"
            ),
            400,
            "invalid_request",
        ),
        (
            "an absolute-form target with another scheme",
            format!(
                "POST ftp://gw.test/api/image/v1.0/report/R1 HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{body_len}\r\n"
            ),
            400,
            "invalid_request",
        ),
        (
            "two Authorization headers",
            upload_head(
                &token,
                &format!("authorization: Bearer {token}\r\n{body_len}"),
            ),
            400,
            "invalid_request",
        ),
        (
            "two Content-Type headers",
            upload_head(&token, &format!("content-type: image/png\r\n{body_len}")),
            400,
            "invalid_request",
        ),
        (
            "gzip, chunked",
            upload_head(&token, "transfer-encoding: gzip, chunked\r\n"),
            501,
            "not_implemented",
        ),
        (
            "identity, chunked",
            upload_head(&token, "transfer-encoding: identity, chunked\r\n"),
            501,
            "not_implemented",
        ),
        (
            "gzip then chunked in two fields",
            upload_head(
                &token,
                "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n",
            ),
            501,
            "not_implemented",
        ),
        // A last coding other than chunked: hyper refuses such a head itself
        // (a bare 400); the head watch (src/head_watch.rs) gets it to the
        // gateway's own 501.
        (
            "gzip",
            upload_head(&token, "transfer-encoding: gzip\r\n"),
            501,
            "not_implemented",
        ),
        (
            "chunked, gzip",
            upload_head(&token, "Transfer-Encoding: chunked, gzip\r\n"),
            501,
            "not_implemented",
        ),
        // An empty coding: hyper reads `, chunked` as chunked; the gateway
        // refuses it like `chunked,` (which hyper refuses) and an empty line
        // before a `chunked` one (fuzzing, tests/fuzz `h1`).
        (
            "an empty coding before chunked",
            upload_head(&token, "Transfer-Encoding: , chunked\r\n"),
            501,
            "not_implemented",
        ),
        (
            "an empty line before chunked",
            upload_head(
                &token,
                "transfer-encoding:\r\ntransfer-encoding: chunked\r\n",
            ),
            501,
            "not_implemented",
        ),
        (
            "chunked then gzip in two fields",
            upload_head(
                &token,
                "transfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n",
            ),
            501,
            "not_implemented",
        ),
        (
            "gzip and a content-length",
            upload_head(&token, &format!("transfer-encoding: gzip\r\n{body_len}")),
            501,
            "not_implemented",
        ),
        // A Content-Length hyper refuses (its bare 400): the head watch gets
        // it to the gateway's own 400.
        (
            "a content-length that is no number",
            upload_head(&token, "content-length: abc\r\n"),
            400,
            "invalid_request",
        ),
        (
            "a content-length list",
            upload_head(&token, &format!("content-length: {0}, {0}\r\n", JPEG.len())),
            400,
            "invalid_request",
        ),
        (
            "two content-lengths that differ",
            upload_head(
                &token,
                &format!("{body_len}content-length: {}\r\n", JPEG.len() + 1),
            ),
            400,
            "invalid_request",
        ),
        (
            "a signed content-length",
            upload_head(&token, &format!("content-length: +{}\r\n", JPEG.len())),
            400,
            "invalid_request",
        ),
        (
            "gzip then a content-length that is no number",
            upload_head(&token, "transfer-encoding: gzip\r\ncontent-length: x\r\n"),
            501,
            "not_implemented",
        ),
    ];
    for (name, head, status, code) in cases {
        let mut wire = head.into_bytes();
        if status == 501 {
            wire.extend_from_slice(&chunked(JPEG, 4096));
        } else {
            wire.extend_from_slice(JPEG);
        }
        let answer = raw(h.addr, &wire, wait).await;
        assert_eq!(status_of(&answer), status, "{name}: {answer}");
        assert_eq!(code_of(&answer), code, "{name}");
        assert!(
            answer.to_ascii_lowercase().contains("x-request-id"),
            "{name}"
        );
    }
    // The control: the same request, well framed, goes through.
    let answer = raw(
        h.addr,
        &[upload_head(&token, &body_len).as_bytes(), JPEG].concat(),
        wait,
    )
    .await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    // An absolute-form target that is well formed is served (RFC 9112: a
    // server accepts it).
    let answer = raw(
        h.addr,
        &[
            format!(
                "POST http://gw.test/api/image/v1.0/report/R2 HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\n{body_len}\r\n"
            )
            .as_bytes(),
            JPEG,
        ]
        .concat(),
        wait,
    )
    .await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    settle().await;
    assert_eq!(
        h.uploads().len(),
        2,
        "only the well-framed uploads reached Concur"
    );
}

/// A field line HTTP/1.1 does not allow gets the gateway's `400
/// invalid_request` (problem body, `X-Request-Id`, connection closed), not
/// hyper's bare `400`: in one write, dripped byte by byte, and after an
/// upload on a keep-alive connection. Nothing reaches Concur, and what was
/// pipelined after it is not served.
#[tokio::test]
async fn a_malformed_field_line_gets_the_gateways_400_however_it_arrives() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let length = format!("content-length: {}\r\n", JPEG.len());
    let good = good_upload(&token);
    let lines = [
        "x-note: a\x00b\r\n",
        "x-note: a\x01b\r\n",
        "x-note: a\x7fb\r\n",
        "x-note: a\rb\r\n",
        "x note: a\r\n",
        "x-note : a\r\n",
        "content-length : 5\r\n",
        "no-colon\r\n",
        " folded\r\n",
        ": no name\r\n",
        "\rx-note: a\r\n",
        "x\r\n",
    ];
    for line in lines {
        let head = upload_head(&token, &format!("{line}{length}"));
        let wire = [head.as_bytes(), JPEG].concat();
        for drip in [false, true] {
            let mut s = TcpStream::connect(h.addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            if drip {
                for b in head.as_bytes() {
                    if s.write_all(std::slice::from_ref(b)).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                let _ = s.write_all(JPEG).await;
            } else {
                // The same head after a served upload, the next one
                // pipelined behind it.
                s.write_all(&good).await.unwrap();
                let answer = read_answer(&mut s, wait).await;
                assert_eq!(status_of(&answer), 201, "{answer}");
                let _ = s.write_all(&[&wire[..], &good].concat()).await;
            }
            let answer = read_answer(&mut s, wait).await;
            assert_eq!(status_of(&answer), 400, "{line:?} drip {drip}: {answer}");
            assert_eq!(code_of(&answer), "invalid_request", "{line:?}");
            let lower = answer.to_ascii_lowercase();
            assert!(lower.contains("x-request-id"), "{line:?}");
            assert!(lower.contains("connection: close"), "{line:?}");
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(wait, s.read_to_end(&mut rest)).await;
            assert!(!String::from_utf8_lossy(&rest).contains("201"), "{line:?}");
        }
    }
    settle().await;
    assert_eq!(
        h.uploads().len(),
        lines.len(),
        "only the uploads before the malformed heads reached Concur"
    );
}

/// `Transfer-Encoding: gzip` gets the gateway's `501` whether the head comes
/// in one write, dripped byte by byte (the watch holds a partial field line
/// back from hyper until it is whole), or after an upload on a keep-alive
/// connection; the connection is closed after it and nothing reaches Concur.
#[tokio::test]
async fn a_transfer_coding_hyper_refuses_gets_the_501_however_it_arrives() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let gzip = upload_head(&token, "Transfer-Encoding: gzip\r\n");

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in gzip.as_bytes() {
        s.write_all(std::slice::from_ref(b)).await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let _ = s.write_all(b"compressed bytes").await;
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 501, "dripped: {answer}");
    assert_eq!(code_of(&answer), "not_implemented");
    assert!(answer.to_ascii_lowercase().contains("x-request-id"));
    assert!(answer.to_ascii_lowercase().contains("connection: close"));

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let good = good_upload(&token);
    s.write_all(&good).await.unwrap();
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    s.write_all(&[gzip.as_bytes(), &good].concat())
        .await
        .unwrap();
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 501, "keep-alive: {answer}");
    assert_eq!(code_of(&answer), "not_implemented");
    // The pipelined upload after it is not served: the connection is closed.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(wait, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the connection is closed"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("201"), "{rest:?}");
    settle().await;
    assert_eq!(h.uploads().len(), 1, "only the first upload reached Concur");
}

#[tokio::test]
async fn a_head_over_64_kib_is_refused_however_it_arrives() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    for size in [66 * 1024, 70 * 1024, 100 * 1024] {
        let filler = format!("x-filler: {}\r\n", "a".repeat(size));
        let head = upload_head(
            &token,
            &format!("{filler}content-length: {}\r\n", JPEG.len()),
        );
        assert!(head.len() > 64 * 1024);
        let wire = [head.as_bytes(), JPEG].concat();
        // In one write, and in pieces of 1000 bytes.
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s.write_all(&wire).await;
        let one_write = read_answer(&mut s, wait).await;
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        for piece in wire.chunks(1000) {
            if s.write_all(piece).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        let pieces = read_answer(&mut s, wait).await;
        for (how, answer) in [("one write", one_write), ("pieces", pieces)] {
            assert_eq!(status_of(&answer), 431, "{size}, {how}: {answer}");
            assert_eq!(code_of(&answer), "request_head_too_large", "{size}, {how}");
            assert!(answer.to_ascii_lowercase().contains("x-request-id"));
        }
    }
    // After an upload on a keep-alive connection.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let good = good_upload(&token);
    s.write_all(&good).await.unwrap();
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    let filler = format!("x-filler: {}\r\n", "a".repeat(80 * 1024));
    let _ = s
        .write_all(&[upload_head(&token, &filler).as_bytes(), &good].concat())
        .await;
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 431, "keep-alive: {answer}");
    assert_eq!(code_of(&answer), "request_head_too_large");
    // Just under the limit, in one write: accepted.
    let base = upload_head(&token, &format!("content-length: {}\r\n", JPEG.len())).len();
    let room = 64 * 1024 - base - "x-filler: \r\n".len();
    let head = upload_head(
        &token,
        &format!(
            "x-filler: {}\r\ncontent-length: {}\r\n",
            "a".repeat(room),
            JPEG.len()
        ),
    );
    assert_eq!(head.len(), 64 * 1024);
    let answer = raw(h.addr, &[head.as_bytes(), JPEG].concat(), wait).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    settle().await;
    assert_eq!(
        h.uploads().len(),
        2,
        "only the keep-alive upload and the one at the limit reached Concur"
    );
}

#[tokio::test]
async fn the_minimum_rate_is_judged_over_a_sliding_window() {
    // A client that sends 40 KB at once, then trickles: averaged since the
    // start it stays above 1 KiB/s for ~40 s, but no 10 s window after the
    // first one brings 10 KiB.
    let h = Harness::with_config("[server]\nbody_idle_timeout_s = 30").await;
    let token = jwt(ALICE.0, ALICE.1);
    let body = big_jpeg(200 * 1024);
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let head = upload_head(&token, &format!("content-length: {}\r\n", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..40 * 1024]).await.unwrap();
    let started = Instant::now();
    let mut sent = 40 * 1024;
    let answer = loop {
        tokio::select! {
            answer = read_answer(&mut s, Duration::from_secs(30)) => break answer,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if s.write_all(&body[sent..sent + 200]).await.is_err() {
                    break read_answer(&mut s, Duration::from_secs(5)).await;
                }
                sent += 200;
                assert!(started.elapsed() < Duration::from_secs(25), "never cut");
            }
        }
    };
    let took = started.elapsed();
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(code_of(&answer), "body_timeout");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(16),
        "cut after {took:?}: the first full window ends at 10 s"
    );
    // Its exchange with Concur had started (40 KB is past the first chunk),
    // and was cut short.
    let ups = h.wait_for_uploads(1).await;
    assert!(!ups[0].complete, "{ups:?}");
    assert!(ups[0].received_bytes < body.len() as u64, "{ups:?}");
}

#[tokio::test]
async fn a_chunked_body_that_never_ends_meets_the_whole_body_deadline() {
    // Spooled (chunked) bodies are read before any upstream slot or timeout
    // exists: the deadline is what ends them.
    let h = Harness::with_config(
        "[server]\nbody_deadline_s = 2\nmin_body_rate_bytes_per_s = 0\nbody_idle_timeout_s = 30",
    )
    .await;
    let token = jwt(ALICE.0, ALICE.1);
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(upload_head(&token, "transfer-encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let body = big_jpeg(100 * 1024);
    let started = Instant::now();
    let mut at = 0;
    let answer = loop {
        tokio::select! {
            answer = read_answer(&mut s, Duration::from_secs(10)) => break answer,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let piece = &body[at..at + 1000];
                at += 1000;
                let frame = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
                if s.write_all(&frame).await.is_err() {
                    break read_answer(&mut s, Duration::from_secs(5)).await;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "never cut");
            }
        }
    };
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert_eq!(code_of(&answer), "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    settle().await;
    assert!(
        h.uploads().is_empty(),
        "a spooled body never reached Concur"
    );
    assert!(
        h.admin_get("/metrics")
            .await
            .text()
            .contains("concur_gateway_spool_bytes 0"),
        "its spool was given back"
    );
}

#[tokio::test]
async fn one_byte_chunked_frames_arrive_intact_through_memory_and_file_spools() {
    // 1-byte frames used to cost a `Bytes` (pinning hyper's read buffer) and
    // a spool write per byte. Coalesced, they cost what 16 KiB frames cost.
    let h = Harness::with_config("[server]\nspool_memory_bytes = 65536").await;
    let token = jwt(ALICE.0, ALICE.1);
    for (i, size) in [(1, 48 * 1024), (2, 256 * 1024)] {
        let body = big_jpeg(size);
        let wire = [
            upload_head(&token, "transfer-encoding: chunked\r\n")
                // The path only: "R1" may occur in the JWT's base64 too.
                .replace("/report/R1 ", &format!("/report/R{i} "))
                .as_bytes(),
            &chunked(&body, 1),
        ]
        .concat();
        let answer = raw(h.addr, &wire, Duration::from_secs(60)).await;
        assert_eq!(status_of(&answer), 201, "{answer}");
        let up = h.uploads().pop().unwrap();
        assert!(up.complete);
        assert_eq!(up.sha256_hex, sha256_hex(&body), "byte-identical upstream");
    }
}

#[tokio::test]
async fn the_spool_budget_caps_what_chunked_uploads_hold_at_once() {
    let h = Harness::with_config("[server]\nspool_memory_bytes = 65536\nspool_max_bytes = 200000")
        .await;
    let token = jwt(ALICE.0, ALICE.1);
    let send = |body: Vec<u8>| {
        let wire = [
            upload_head(&token, "transfer-encoding: chunked\r\n").as_bytes(),
            &chunked(&body, 16 * 1024),
        ]
        .concat();
        async move { raw(h.addr, &wire, Duration::from_secs(10)).await }
    };
    // Over the budget on its own: refused, nothing upstream.
    let answer = send(big_jpeg(300 * 1024)).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert_eq!(code_of(&answer), "overloaded");
    assert!(answer.to_ascii_lowercase().contains("retry-after"));
    settle().await;
    assert!(h.uploads().is_empty());
    assert!(
        h.admin_get("/metrics")
            .await
            .text()
            .contains("concur_gateway_spool_bytes 0")
    );
    // Within it: accepted, and the budget is given back afterwards.
    let body = big_jpeg(150 * 1024);
    let answer = send(body.clone()).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    assert_eq!(h.uploads().pop().unwrap().sha256_hex, sha256_hex(&body));
    assert_eq!(h.gateway.spool_budget.used(), 0);
}

/// Opens an upload that sends its head and 20 KiB of a 200 KiB body (past
/// the 16 KiB the gateway coalesces before its first check, so it takes a
/// Concur slot), then stalls until the stream is dropped.
async fn slow_upload(addr: SocketAddr, who: (&str, &str), path: &str) -> TcpStream {
    let token = jwt(who.0, who.1);
    let body = big_jpeg(200 * 1024);
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..20 * 1024]).await.unwrap();
    s
}

#[tokio::test]
async fn one_caller_cannot_hold_every_upload_slot() {
    // Four Concur slots; acme may hold two of them, alice one.
    let h = Harness::with_config(
        "[upstream]\nmax_in_flight = 4\nqueue_timeout_s = 1\n[rate_limit]\nuser_concurrent = 1\ncompany_concurrent = 2",
    )
    .await;
    let alice1 = slow_upload(h.addr, ALICE, "/api/image/v1.0/report/A1").await;
    wait_for(|| h.gateway.store.local_in_flight().current(&identity(ALICE)) == (1, 1)).await;
    // Alice's second upload at once: refused before its body is read.
    let r = h
        .upload_as(ALICE, "/api/image/v1.0/report/A2", "image/jpeg", JPEG)
        .await;
    r.problem(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another acme user fills the company's cap; a third acme user is refused.
    let bob = slow_upload(h.addr, BOB, "/api/image/v1.0/report/B1").await;
    wait_for(|| h.gateway.store.local_in_flight().current(&identity(BOB)) == (1, 2)).await;
    h.upload_as(
        ("acme", "carol@acme.example"),
        "/api/image/v1.0/report/C1",
        "image/jpeg",
        JPEG,
    )
    .await
    .problem(429, "rate_limited");
    // Another company is served at once, however long acme's uploads last.
    let started = Instant::now();
    let r = h
        .upload_as(GINA, "/api/image/v1.0/report/G1", "image/jpeg", JPEG)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not queued behind acme"
    );
    let metrics = h.admin_get("/metrics").await.text();
    assert!(metrics.contains("scope=\"user_concurrent\""), "{metrics}");
    assert!(
        metrics.contains("scope=\"company_concurrent\""),
        "{metrics}"
    );
    // Alice's place comes back when her upload ends.
    drop(alice1);
    drop(bob);
    wait_for(|| h.gateway.store.local_in_flight().current(&identity(ALICE)) == (0, 0)).await;
    assert_eq!(
        h.upload("/api/image/v1.0/report/A3", JPEG).await.status,
        201
    );
    let ups = h.wait_for_uploads(4).await;
    let (complete, cut): (Vec<_>, Vec<_>) = ups.iter().partition(|u| u.complete);
    let paths = |v: Vec<&concur_gateway::sandbox::UploadRecord>| {
        let mut p: Vec<String> = v.into_iter().map(|u| u.path.clone()).collect();
        p.sort();
        p
    };
    assert_eq!(
        paths(complete),
        ["/api/image/v1.0/report/A3", "/api/image/v1.0/report/G1"]
    );
    assert_eq!(
        paths(cut),
        ["/api/image/v1.0/report/A1", "/api/image/v1.0/report/B1"],
        "the stalled uploads held Concur slots but never completed"
    );
}

#[tokio::test]
async fn idle_connections_make_room_for_a_caller_with_a_request() {
    let h = Harness::with_config("[server]\nmax_connections = 8").await;
    // Eight connections that never send a byte fill the table.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Time for the accept loop to take them all in (no gauge shows it).
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A normal caller still gets through, at once.
    for i in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            h.upload(&format!("/api/image/v1.0/report/N{i}"), JPEG),
        )
        .await
        .expect("served without waiting for the header timeout");
        assert_eq!(r.status, 201);
    }
    // The oldest idle connections were the ones closed.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut buf))
        .await
        .expect("the oldest idle connection was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let still_open = tokio::time::timeout(Duration::from_millis(200), idle[7].read(&mut buf)).await;
    assert!(
        still_open.is_err(),
        "the newest idle connection is still open"
    );
    let metrics = h.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("concur_gateway_connections_evicted_total"),
        "{metrics}"
    );
    assert_eq!(h.uploads().len(), 3);
}

#[tokio::test]
async fn every_exit_records_the_body_facts() {
    // An upload refused at the slot step (after its body was read): the
    // access log line and the body_bytes metric still count what arrived.
    let h = Harness::with_config("[upstream]\nmax_in_flight = 1\nqueue_timeout_s = 0.3").await;
    let holder = slow_upload(h.addr, GINA, "/api/image/v1.0/report/H1").await;
    // Its exchange has begun (a connection to Concur): it holds the one slot.
    wait_for(|| h.sandbox.connections() == 1).await;
    let capture = capture_logs().await;
    let token = jwt(ALICE.0, ALICE.1);
    let r = h
        .post(
            "/api/image/v1.0/report/R1",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "image/jpeg"),
                ("x-request-id", "facts-on-every-exit"),
            ],
            JPEG.to_vec(),
        )
        .await;
    r.problem(503, "overloaded");
    let logs = capture.finish();
    let line = logs
        .lines()
        .find(|l| l.contains("request_id=facts-on-every-exit"))
        .unwrap_or_else(|| panic!("no access log line in {logs}"));
    assert!(line.contains(&format!("bytes={}", JPEG.len())), "{line}");
    assert!(
        line.contains("code=\"overloaded\"") || line.contains("code=overloaded"),
        "{line}"
    );
    let metrics = h.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(&format!(
            "concur_gateway_body_bytes_total{{direction=\"in\"}} {}",
            JPEG.len()
        )),
        "{metrics}"
    );
    drop(holder);
    // Concur saw the holder's upload, cut short, and nothing of alice's.
    let ups = h.wait_for_uploads(1).await;
    assert_eq!(ups[0].user.as_deref(), Some(GINA.1));
    assert!(!ups[0].complete);
}

/// hyper parses a request-target with a `#` and the `http` crate drops the
/// `#` and what follows: `report/R1#R2` reached the router as `report/R1`.
/// Refused instead, on a keep-alive connection too, and the watch that sees
/// it (src/head_watch.rs) is not fooled by a body that holds such a line.
#[tokio::test]
async fn a_hash_in_the_request_target_is_refused_not_cut_off() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let request = |target: &str, content_type: &str, body: &[u8]| {
        let head = upload_head(&token, &format!("content-length: {}\r\n", body.len()))
            .replace("/api/image/v1.0/report/R1", target)
            .replace("image/jpeg", content_type);
        [head.as_bytes(), body].concat()
    };
    // A PDF holding, in a string, what looks like a request line with a `#`.
    let pdf = concur_gateway::testkit::classic_pdf(
        &[
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [] /Count 0 >>".to_vec(),
            b"(\r\nPOST /api/image/v1.0/report/R4#x HTTP/1.1\r\nhost: a\r\n\r\n)".to_vec(),
        ],
        "",
    );
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    for (target, content_type, body, status, code) in [
        ("/api/image/v1.0/report/R1", "image/jpeg", JPEG, 201, ""),
        (
            "/api/image/v1.0/report/R2",
            "application/pdf",
            &pdf[..],
            201,
            "",
        ),
        ("/api/image/v1.0/report/R4", "image/jpeg", JPEG, 201, ""),
        (
            "/api/image/v1.0/report/R1#R2",
            "image/jpeg",
            JPEG,
            400,
            "invalid_id",
        ),
    ] {
        s.write_all(&request(target, content_type, body))
            .await
            .unwrap();
        let answer = read_answer(&mut s, wait).await;
        assert_eq!(status_of(&answer), status, "{target}: {answer}");
        if !code.is_empty() {
            assert_eq!(code_of(&answer), code, "{target}");
        }
        assert!(answer.to_ascii_lowercase().contains("x-request-id"));
    }
    for (target, code) in [
        ("/api/image/v1.0/report/R1#/../../R3", "invalid_request"),
        ("/api/image/v1.0/expenseentry/E1#", "invalid_id"),
        ("/api/image/v1.0/receipt#x", "invalid_request"),
        ("/api/image/v1.0/report/R1?x=1#y", "invalid_request"),
    ] {
        let answer = raw(h.addr, &request(target, "image/jpeg", JPEG), wait).await;
        assert_eq!(status_of(&answer), 400, "{target}: {answer}");
        assert_eq!(code_of(&answer), code, "{target}");
    }
    settle().await;
    let targets: Vec<String> = h.uploads().into_iter().map(|u| u.target).collect();
    assert_eq!(
        targets,
        [
            "/api/image/v1.0/report/R1",
            "/api/image/v1.0/report/R2",
            "/api/image/v1.0/report/R4"
        ],
        "only the uploads without a `#` reached Concur"
    );
}

#[tokio::test]
async fn more_than_64_header_fields_get_the_gateways_own_431() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    // The head of `upload_head` has 3 fields, content-length a fourth.
    let with_fields = |n: usize| {
        let extra: String = (4..n).map(|i| format!("x-f{i}: v\r\n")).collect();
        let head = upload_head(
            &token,
            &format!("{extra}content-length: {}\r\n", JPEG.len()),
        );
        assert_eq!(head.matches("\r\n").count() - 2, n);
        [head.as_bytes(), JPEG].concat()
    };
    let answer = raw(h.addr, &with_fields(64), wait).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    for n in [65, 100] {
        let answer = raw(h.addr, &with_fields(n), wait).await;
        assert_eq!(status_of(&answer), 431, "{n}: {answer}");
        assert_eq!(code_of(&answer), "request_head_too_large", "{n}");
        assert!(answer.to_ascii_lowercase().contains("x-request-id"), "{n}");
    }
    // Past hyper's own cap (100) the head watch cuts the head short for
    // hyper (src/head_watch.rs): the same answer.
    for n in [101, 1000] {
        let answer = raw(h.addr, &with_fields(n), wait).await;
        assert_eq!(status_of(&answer), 431, "{n}: {answer}");
        assert_eq!(code_of(&answer), "request_head_too_large", "{n}");
        assert!(answer.to_ascii_lowercase().contains("x-request-id"), "{n}");
    }
    settle().await;
    assert_eq!(
        h.uploads().len(),
        1,
        "only the 64-field upload reached Concur"
    );
}

/// Everything the gateway answers on one connection to `wire`, until it
/// closes it (or `wait` passes).
async fn answers(addr: SocketAddr, wire: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(wire).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut all)).await;
    String::from_utf8_lossy(&all).into_owned()
}

fn statuses(answers: &str) -> Vec<u16> {
    answers
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answers[i + 9..i + 12].parse().ok())
        .collect()
}

/// Smuggling attempts a black-box round found against the head watch: a
/// `Transfer-Encoding: chunked,` the watch renamed for hyper (hyper then
/// framed the body by `Content-Length` and served the request hidden in it),
/// and a trailer line ending in a bare LF, where the watch's framing parted
/// from hyper's (every note then landed on the next request: a gzip upload
/// and a `#` target went through). Each ends with the gateway's refusal and
/// nothing smuggled reaches Concur.
#[tokio::test]
async fn smuggling_through_the_head_watch_is_refused() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let head = |target: &str, extra: &str| {
        upload_head(&token, extra).replace("/api/image/v1.0/report/R1", target)
    };
    let jpeg_len = format!("content-length: {}\r\n", JPEG.len());

    // TE.CL with `chunked,`: 501, and the request inside is never served.
    let inner = [
        head("/api/image/v1.0/report/EVIL", &jpeg_len).as_bytes(),
        JPEG,
    ]
    .concat();
    let pre = format!("{:x}\r\n", inner.len());
    for te in ["chunked,", ""] {
        let wire = [
            head(
                "/api/image/v1.0/report/R1",
                &format!(
                    "Transfer-Encoding: {te}\r\nContent-Length: {}\r\n",
                    pre.len()
                ),
            )
            .as_bytes(),
            pre.as_bytes(),
            &inner,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        let all = answers(h.addr, &wire, wait).await;
        assert_eq!(statuses(&all), [501], "{te:?}: {all}");
        assert!(all.contains("not_implemented"));
    }

    // A trailer line ending in a bare LF, with what looks like a request
    // after it (hyper reads it as trailer), then a gzip upload, a `#`
    // target and a good upload.
    let mut r1 = head(
        "/api/image/v1.0/report/R1",
        "Transfer-Encoding: chunked\r\n",
    )
    .into_bytes();
    r1.extend_from_slice(format!("{:x}\r\n", JPEG.len()).as_bytes());
    r1.extend_from_slice(JPEG);
    r1.extend_from_slice(b"\r\n0\r\nX-Trailer: a\n\r\nGET /phantom HTTP/1.1\r\nHost: gw\r\n\r\n");
    let hash = [
        head("/api/image/v1.0/report/R2#R3", &jpeg_len).as_bytes(),
        JPEG,
    ]
    .concat();
    let gzip = [
        head(
            "/api/image/v1.0/report/R4",
            &format!("Transfer-Encoding: gzip\r\n{jpeg_len}"),
        )
        .as_bytes(),
        JPEG,
    ]
    .concat();
    let good = [
        head("/api/image/v1.0/report/R5", &jpeg_len).as_bytes(),
        JPEG,
    ]
    .concat();
    let all = answers(h.addr, &[&r1[..], &hash, &good].concat(), wait).await;
    // (A `#` in a target ID is refused before its body is read: the
    // connection closes after the 400, and says so.)
    assert_eq!(statuses(&all), [201, 400], "{all}");
    assert!(all.contains("invalid_id"), "{all}");
    let all = answers(h.addr, &good, wait).await;
    assert_eq!(statuses(&all), [201], "{all}");
    let all = answers(h.addr, &[&r1[..], &gzip, &good].concat(), wait).await;
    assert_eq!(statuses(&all), [201, 501], "{all}");
    settle().await;
    let mut targets: Vec<String> = h.uploads().into_iter().map(|u| u.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "/api/image/v1.0/report/R1",
            "/api/image/v1.0/report/R1",
            "/api/image/v1.0/report/R5"
        ],
        "the uploads around the refusals, each to its own report"
    );
}

/// Where the head watch used to stop following (fail-open), a `#` target
/// after it reached Concur cut at the `#`: after a `CONNECT` (hyper serves
/// the connection on, the gateway never answers it with a 2xx) and after 64
/// pipelined requests ahead of the service.
#[tokio::test]
async fn a_hash_target_is_refused_after_connect_and_deep_pipelining() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(10);
    let hash = [
        upload_head(&token, &format!("content-length: {}\r\n", JPEG.len()))
            .replace("/report/R1", "/report/R1#R2")
            .as_bytes(),
        JPEG,
    ]
    .concat();
    let connect = b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n";
    let all = answers(h.addr, &[&connect[..], &hash].concat(), wait).await;
    assert_eq!(statuses(&all).last(), Some(&400), "{all}");
    assert!(all.contains("invalid_id"), "{all}");
    let mut wire = Vec::new();
    for i in 0..100 {
        wire.extend_from_slice(
            format!("POST /x{i}#y HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
    }
    wire.extend_from_slice(&hash);
    let all = answers(h.addr, &wire, wait).await;
    let got = statuses(&all);
    assert_eq!(got.len(), 101, "{all}");
    assert!(got[..100].iter().all(|&s| s == 404), "{got:?}");
    assert_eq!(got[100], 400);
    assert!(all.trim_end().ends_with('}') && all.contains("invalid_id"));
    settle().await;
    assert!(h.uploads().is_empty(), "{:?}", h.uploads());
}

/// The 64 KiB limit is on the head as it came: one of exactly 64 KiB is
/// served whatever its line ends and the white space around its colons
/// (the size estimated from the parsed fields, CRLF and `": "` each, used
/// to refuse heads of bare-LF `name:value` lines well under the limit), and
/// one byte more is refused.
#[tokio::test]
async fn the_head_limit_counts_the_bytes_sent() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let head_of = |total: usize| {
        let mut head = format!(
            "POST /api/image/v1.0/report/R1 HTTP/1.1\nhost:gw.test\nauthorization:Bearer {token}\ncontent-type:image/jpeg\ncontent-length:{}\n",
            JPEG.len()
        );
        for i in 0..40 {
            head.push_str(&format!("x-{i}:v\n"));
        }
        let filler = total - head.len() - "x-f:\n\n".len();
        head.push_str(&format!("x-f:{}\n\n", "a".repeat(filler)));
        assert_eq!(head.len(), total);
        head
    };
    let answer = raw(
        h.addr,
        &[head_of(64 * 1024).as_bytes(), JPEG].concat(),
        wait,
    )
    .await;
    assert_eq!(status_of(&answer), 201, "{answer}");
    let answer = raw(
        h.addr,
        &[head_of(64 * 1024 + 1).as_bytes(), JPEG].concat(),
        wait,
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(code_of(&answer), "request_head_too_large");
}

/// An answer sent before the request's body was read to its end (a refusal
/// that does not need the body) says `Connection: close`: hyper does not
/// read the rest and closes the connection after it, and a client must not
/// send its next request into it (RFC 9112 §9.6). An answer after the whole
/// body keeps the connection.
#[tokio::test]
async fn an_answer_before_the_whole_body_says_the_connection_closes() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let wait = Duration::from_secs(5);
    let big = vec![0u8; 256 * 1024];
    // Refused before the body is read: no token.
    let head = format!(
        "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: gw.test\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let _ = s.write_all(&[head.as_bytes(), &big[..]].concat()).await;
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Refused after the whole (small) body was read: the connection stays.
    let bad = b"\xff\xd8\xff\xe0 not a jpeg at all";
    let head = upload_head(&token, &format!("content-length: {}\r\n", bad.len()));
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(&[head.as_bytes(), &bad[..]].concat())
        .await
        .unwrap();
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 422, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let good = good_upload(&token);
    s.write_all(&good).await.unwrap();
    let answer = read_answer(&mut s, wait).await;
    assert_eq!(status_of(&answer), 201, "kept alive: {answer}");
}
