//! HTTP/2 over cleartext with prior knowledge (h2c) on the gateway's port:
//! every rule of an HTTP/1.1 request holds per stream (inspection, hold-back,
//! limits, timeouts, rate limits), streams of one connection do not harm each
//! other, abusive stream patterns stay bounded, and the drain sends GOAWAY
//! while streams in flight finish. Concur is still called over HTTP/1.1.
//! Requests go through hyper's HTTP/2 client; the `h2` crate is used directly
//! where a test needs frames hyper would not send (resets at will, a
//! `content-length` the DATA does not match).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::support::*;

const ALICE: (&str, &str) = ("acme", "alice@acme.example");
const GINA: (&str, &str) = ("globex", "gina@globex.example");

type Body = BoxBody<Bytes, std::io::Error>;

/// An HTTP/2 connection with prior knowledge; the connection task is
/// returned so that tests can see how it ended.
async fn h2c(
    addr: SocketAddr,
) -> (
    SendRequest<Body>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    (sender, tokio::spawn(conn))
}

fn full(body: Vec<u8>) -> Body {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed by the test, of unknown length (no `content-length` unless
/// the request names one). An `Err` sent into it makes hyper reset the stream.
struct Fed(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for Fed {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn fed() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, Body) {
    let (tx, rx) = mpsc::channel(64);
    (tx, Fed(rx).boxed())
}

fn upload_request(
    addr: SocketAddr,
    path: &str,
    who: (&str, &str),
    content_length: Option<usize>,
    body: Body,
) -> Request<Body> {
    let mut b = Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {}", jwt(who.0, who.1)))
        .header("content-type", "image/jpeg");
    if let Some(n) = content_length {
        b = b.header("content-length", n);
    }
    b.body(body).unwrap()
}

async fn send(sender: &mut SendRequest<Body>, req: Request<Body>) -> Result<Reply, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(req).await?;
    assert_eq!(response.version(), Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Uploads `body` with its `content-length` as `who` on `sender`.
async fn upload(
    sender: &SendRequest<Body>,
    addr: SocketAddr,
    path: &str,
    who: (&str, &str),
    body: &[u8],
) -> Reply {
    let req = upload_request(addr, path, who, Some(body.len()), full(body.to_vec()));
    send(&mut sender.clone(), req).await.unwrap()
}

async fn metric(h: &Harness, name: &str) -> Option<f64> {
    let text = h.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the in-flight gauge is back to zero: every request's future
/// ended, answered or abandoned.
async fn in_flight_settles(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = metric(h, "concur_gateway_in_flight_requests").await;
        if n == Some(0.0) {
            return;
        }
        assert!(Instant::now() < deadline, "in-flight gauge stuck at {n:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn polyglot() -> Vec<u8> {
    // Valid for its first 2 MB (so the exchange with Concur starts and
    // bytes flow), then a ZIP after EOI: only the end of the body decides.
    let mut body = big_jpeg(2_000_000);
    body.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x08\x00payload.exe");
    body
}

#[tokio::test]
async fn an_upload_over_h2c_reaches_concur_byte_for_byte_with_and_without_content_length() {
    let h = Harness::start().await;
    let (mut sender, _conn) = h2c(h.addr).await;
    // Larger than the connection's flow-control window: window updates must flow.
    let body = big_jpeg(3_000_000);
    let r = upload(&sender, h.addr, "/api/image/v1.0/report/WITH", ALICE, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["id"].is_string() || r.json().is_object());
    // Without content-length: like a chunked HTTP/1.1 body, spooled first.
    let (tx, fed_body) = fed();
    let pieces = body.clone();
    tokio::spawn(async move {
        for piece in pieces.chunks(100_000) {
            tx.send(Ok(Bytes::copy_from_slice(piece))).await.unwrap();
        }
    });
    let req = upload_request(
        h.addr,
        "/api/image/v1.0/report/WITHOUT",
        ALICE,
        None,
        fed_body,
    );
    assert!(req.headers().get("content-length").is_none());
    let r = send(&mut sender, req).await.unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let ups = h.uploads();
    assert_eq!(ups.len(), 2, "{ups:?}");
    for u in &ups {
        assert!(u.complete, "{u:?}");
        assert_eq!(u.sha256_hex, sha256_hex(&body));
        assert_eq!(u.content_length, Some(body.len() as u64));
        assert!(!u.chunked, "Concur always gets a Content-Length");
    }
    in_flight_settles(&h).await;
}

#[tokio::test]
async fn a_malformed_jpeg_over_h2c_is_422_and_never_complete_upstream() {
    let h = Harness::start().await;
    let (mut sender, _conn) = h2c(h.addr).await;
    let bad = polyglot();
    // With content-length the body streams to Concur, the tail held back.
    let r = upload(&sender, h.addr, "/api/image/v1.0/report/BAD1", ALICE, &bad).await;
    r.problem(422, "malformed_image");
    // Without, it is spooled and refused before Concur is called at all.
    let (tx, body) = fed();
    tx.send(Ok(Bytes::from(bad.clone()))).await.unwrap();
    drop(tx);
    let req = upload_request(h.addr, "/api/image/v1.0/report/BAD2", ALICE, None, body);
    send(&mut sender, req)
        .await
        .unwrap()
        .problem(422, "malformed_image");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ups = h.uploads();
    assert!(!ups.is_empty(), "the first upload had started streaming");
    for u in &ups {
        assert!(!u.complete, "{u:?}");
        assert_eq!(u.path, "/api/image/v1.0/report/BAD1", "{u:?}");
        assert!(u.image_id.is_none());
    }
    // The rejection cost the stream, not the connection.
    let r = upload(&sender, h.addr, "/api/image/v1.0/report/GOOD", ALICE, JPEG).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn a_hundred_concurrent_streams_on_one_connection_all_get_201() {
    let h = Harness::start().await;
    let (sender, conn) = h2c(h.addr).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let sender = sender.clone();
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            upload(
                &sender,
                addr,
                &format!("/api/image/v1.0/report/S{i}"),
                ALICE,
                JPEG,
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    eprintln!("100 streams on one connection: {:?}", started.elapsed());
    let ups = h.uploads();
    assert_eq!(ups.len(), 100);
    assert!(
        ups.iter()
            .all(|u| u.complete && u.sha256_hex == sha256_hex(JPEG))
    );
    assert!(!conn.is_finished(), "one connection carried them all");
    in_flight_settles(&h).await;
}

#[tokio::test]
async fn a_stream_reset_mid_body_leaves_nothing_complete_and_spares_its_neighbours() {
    let h = Harness::start().await;
    let (sender, conn) = h2c(h.addr).await;
    let body = big_jpeg(1_000_000);
    // Stream A declares its length, so its bytes stream on to Concur.
    let (tx_a, body_a) = fed();
    let req = upload_request(
        h.addr,
        "/api/image/v1.0/report/RESET",
        ALICE,
        Some(body.len()),
        body_a,
    );
    let mut s = sender.clone();
    let a = tokio::spawn(async move { send(&mut s, req).await });
    // Stream B on the same connection, also under way.
    let (tx_b, body_b) = fed();
    let req = upload_request(
        h.addr,
        "/api/image/v1.0/report/KEPT",
        GINA,
        Some(body.len()),
        body_b,
    );
    let mut s = sender.clone();
    let b = tokio::spawn(async move { send(&mut s, req).await });
    tx_a.send(Ok(Bytes::copy_from_slice(&body[..600_000])))
        .await
        .unwrap();
    tx_b.send(Ok(Bytes::copy_from_slice(&body[..500_000])))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client gives up on A: hyper resets the stream.
    tx_a.send(Err(std::io::Error::other("client gives up")))
        .await
        .unwrap();
    assert!(a.await.unwrap().is_err(), "stream A was reset");
    tx_b.send(Ok(Bytes::copy_from_slice(&body[500_000..])))
        .await
        .unwrap();
    drop(tx_b);
    let r = b.await.unwrap().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ups = h.uploads();
    let reset: Vec<_> = ups.iter().filter(|u| u.path.ends_with("/RESET")).collect();
    assert!(reset.iter().all(|u| !u.complete), "{reset:?}");
    let kept: Vec<_> = ups.iter().filter(|u| u.path.ends_with("/KEPT")).collect();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].complete && kept[0].sha256_hex == sha256_hex(&body));
    assert!(
        !conn.is_finished(),
        "the connection survives a stream's reset"
    );
    // The abandoned request left the in-flight gauge and its places.
    in_flight_settles(&h).await;
    let r = upload(&sender, h.addr, "/api/image/v1.0/report/AFTER", ALICE, JPEG).await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn rapid_reset_abuse_leaves_the_gateway_responsive_and_bounded() {
    let h = Harness::start().await;
    let addr = h.addr;
    let token = jwt(ALICE.0, ALICE.1);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    let mut client = client;
    let mut opened = 0;
    for i in 0..5_000 {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = Request::post(format!("http://{addr}/api/image/v1.0/report/RR{i}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "image/jpeg")
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let Ok((response, mut stream)) = client.send_request(req, false) else {
            break;
        };
        let _ = stream.send_data(Bytes::from_static(&JPEG[..1000]), false);
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        opened += 1;
    }
    let abuse = started.elapsed();
    // Another caller is answered at once, on a new HTTP/2 connection and
    // over HTTP/1.1.
    let t = Instant::now();
    let (other, _c) = h2c(addr).await;
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        upload(&other, addr, "/api/image/v1.0/report/OTHER", GINA, JPEG),
    )
    .await
    .expect("answered within a second of the abuse");
    assert_eq!(r.status, 201);
    let gina = format!("Bearer {}", jwt(GINA.0, GINA.1));
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        h.post(
            "/api/image/v1.0/report/H1",
            &[("authorization", &gina), ("content-type", "image/jpeg")],
            JPEG.to_vec(),
        ),
    )
    .await
    .expect("HTTP/1.1 answered within a second");
    assert_eq!(r.status, 201);
    eprintln!(
        "rapid reset: {opened} streams opened and reset in {abuse:?}; next caller answered in {:?}; abusive connection {}",
        t.elapsed(),
        match tokio::time::timeout(Duration::from_secs(2), conn).await {
            Ok(Ok(Ok(()))) => "closed cleanly".to_owned(),
            Ok(Ok(Err(e))) => format!("closed: {e}"),
            Ok(Err(e)) => format!("task failed: {e}"),
            Err(_) => "still open".to_owned(),
        }
    );
    // Nothing of the abuse reached Concur complete, and nothing is left
    // holding a place.
    in_flight_settles(&h).await;
    for u in h.uploads() {
        assert!(!u.path.contains("/RR") || !u.complete, "{u:?}");
    }
    let alice = concur_gateway::auth::Identity {
        company: ALICE.0.into(),
        user: ALICE.1.into(),
    };
    assert_eq!(h.gateway.store.local_in_flight().current(&alice), (0, 0));
}

#[tokio::test]
async fn the_drain_lets_streams_in_flight_finish_and_refuses_new_ones_with_goaway() {
    let mut h = Harness::with_config("[server]\ndrain_delay_s = 0.2\nshutdown_grace_s = 10").await;
    let (sender, conn) = h2c(h.addr).await;
    let (tx, body) = fed();
    let req = upload_request(
        h.addr,
        "/api/image/v1.0/report/DRAIN",
        ALICE,
        Some(JPEG.len()),
        body,
    );
    let mut s = sender.clone();
    let in_flight = tokio::spawn(async move { send(&mut s, req).await });
    tx.send(Ok(Bytes::copy_from_slice(&JPEG[..2000])))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.begin_shutdown();
    // Past the drain delay: accept stopped, GOAWAY sent.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(TcpStream::connect(h.addr).await.is_err(), "accept stopped");
    let req = upload_request(
        h.addr,
        "/api/image/v1.0/report/LATE",
        ALICE,
        Some(JPEG.len()),
        full(JPEG.to_vec()),
    );
    let late = tokio::time::timeout(Duration::from_secs(2), send(&mut sender.clone(), req))
        .await
        .expect("a new stream is refused at once");
    assert!(late.is_err(), "no new stream after GOAWAY: {late:?}");
    // The stream in flight finishes.
    tx.send(Ok(Bytes::copy_from_slice(&JPEG[2000..])))
        .await
        .unwrap();
    drop(tx);
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let ups = h.uploads();
    assert_eq!(ups.len(), 1);
    assert!(ups[0].complete && ups[0].path.ends_with("/DRAIN"));
    // Then the connection closes, and the server stops.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection closes once its streams are done")
        .unwrap()
        .unwrap();
    h.stop().await;
}

#[tokio::test]
async fn per_stream_limits_hold_over_h2c() {
    let h =
        Harness::with_config("[server]\nmax_body_bytes = 200000\nbody_idle_timeout_s = 0.5").await;
    let (sender, conn) = h2c(h.addr).await;
    let addr = h.addr;
    // A stalled body (408) and a good upload, side by side on one connection.
    let (stall_tx, stall_body) = fed();
    let req = upload_request(
        addr,
        "/api/image/v1.0/report/STALL",
        ALICE,
        Some(JPEG.len()),
        stall_body,
    );
    let mut s = sender.clone();
    let stalled = tokio::spawn(async move { send(&mut s, req).await });
    stall_tx
        .send(Ok(Bytes::copy_from_slice(&JPEG[..1000])))
        .await
        .unwrap();
    let r = upload(&sender, addr, "/api/image/v1.0/report/OK", GINA, JPEG).await;
    assert_eq!(r.status, 201);
    stalled.await.unwrap().unwrap().problem(408, "body_timeout");
    drop(stall_tx);
    // Over max_body_bytes, declared (413 before any byte is read) or not
    // (413 when the limit is crossed).
    let big = big_jpeg(300_000);
    upload(&sender, addr, "/api/image/v1.0/report/BIG1", ALICE, &big)
        .await
        .problem(413, "body_too_large");
    let (tx, body) = fed();
    tx.send(Ok(Bytes::from(big.clone()))).await.unwrap();
    drop(tx);
    let req = upload_request(addr, "/api/image/v1.0/report/BIG2", ALICE, None, body);
    send(&mut sender.clone(), req)
        .await
        .unwrap()
        .problem(413, "body_too_large");
    // More than 64 header fields.
    let mut req = upload_request(
        addr,
        "/api/image/v1.0/report/HDR",
        ALICE,
        Some(JPEG.len()),
        full(JPEG.to_vec()),
    );
    for i in 0..64 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    send(&mut sender.clone(), req)
        .await
        .unwrap()
        .problem(431, "request_head_too_large");
    // A head over 64 KiB (one 70 KiB field): the gateway's own 431 too, not
    // the h2 crate's bare one and a reset stream.
    let mut req = upload_request(
        addr,
        "/api/image/v1.0/report/BIGHEAD",
        ALICE,
        Some(JPEG.len()),
        full(JPEG.to_vec()),
    );
    req.headers_mut()
        .insert("x-filler", "a".repeat(70 * 1024).parse().unwrap());
    send(&mut sender.clone(), req)
        .await
        .unwrap()
        .problem(431, "request_head_too_large");
    // A Host that names another target than :authority.
    let mut req = upload_request(
        addr,
        "/api/image/v1.0/report/HOST",
        ALICE,
        Some(JPEG.len()),
        full(JPEG.to_vec()),
    );
    req.headers_mut()
        .insert("host", "elsewhere.test".parse().unwrap());
    send(&mut sender.clone(), req)
        .await
        .unwrap()
        .problem(400, "invalid_request");
    // No token.
    let req = Request::post(format!("http://{addr}/api/image/v1.0/report/ANON"))
        .header("content-type", "image/jpeg")
        .body(full(JPEG.to_vec()))
        .unwrap();
    assert_eq!(send(&mut sender.clone(), req).await.unwrap().status, 401);
    // Only the good upload reached Concur complete; the connection lives on.
    let ups = h.uploads();
    assert_eq!(ups.iter().filter(|u| u.complete).count(), 1, "{ups:?}");
    assert!(!conn.is_finished());
    in_flight_settles(&h).await;
}

#[tokio::test]
async fn a_content_length_the_data_does_not_match_resets_the_stream() {
    let h = Harness::start().await;
    let addr = h.addr;
    let token = jwt(ALICE.0, ALICE.1);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let body = big_jpeg(400_000);
    // Declares more than it sends, then less than it sends.
    for (i, (declared, sent)) in [(body.len() + 10, body.len()), (body.len() - 10, body.len())]
        .into_iter()
        .enumerate()
    {
        let mut client = client.clone().ready().await.unwrap();
        let req = Request::post(format!("http://{addr}/api/image/v1.0/report/CL{i}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "image/jpeg")
            .header("content-length", declared)
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(req, false).unwrap();
        for piece in body[..sent].chunks(16_384) {
            stream.reserve_capacity(piece.len());
            let _ = stream.send_data(Bytes::copy_from_slice(piece), false);
        }
        let _ = stream.send_data(Bytes::new(), true);
        let outcome = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered or reset");
        match outcome {
            Err(e) => {
                eprintln!("declared {declared}, sent {sent}: {e}");
                assert_eq!(e.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{e}")
            }
            Ok(r) => assert!(r.status().is_client_error(), "{r:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for u in h.uploads() {
        assert!(!u.complete, "{u:?}");
    }
    in_flight_settles(&h).await;
}

#[tokio::test]
async fn rate_limits_hold_per_stream() {
    let h = Harness::with_config(
        "[rate_limit]\nuser_per_second = 0.1\nuser_burst = 3\ncompany_per_second = 100.0\ncompany_burst = 100",
    )
    .await;
    let (sender, _conn) = h2c(h.addr).await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let sender = sender.clone();
        let addr = h.addr;
        tasks.push(tokio::spawn(async move {
            upload(
                &sender,
                addr,
                &format!("/api/image/v1.0/report/L{i}"),
                ALICE,
                JPEG,
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
}

#[tokio::test]
async fn http1_and_h2c_share_the_port_and_idle_connections_are_closed() {
    let h = Harness::with_config("[server]\nheader_read_timeout_s = 0.5").await;
    let r = h.upload("/api/image/v1.0/report/H1", JPEG).await;
    assert_eq!(r.status, 201);
    let (sender, conn) = h2c(h.addr).await;
    let r = upload(&sender, h.addr, "/api/image/v1.0/report/H2", ALICE, JPEG).await;
    assert_eq!(r.status, 201);
    // No upgrade from HTTP/1.1: the request is served over HTTP/1.1.
    let token = format!("Bearer {}", jwt(ALICE.0, ALICE.1));
    let r = h
        .post(
            "/api/image/v1.0/report/H1b",
            &[
                ("authorization", &token),
                ("content-type", "image/jpeg"),
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201);
    // An HTTP/2 connection with no stream for the head timeout gets GOAWAY
    // and closes.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("an idle HTTP/2 connection is closed")
        .unwrap()
        .unwrap();
    // So does a connection that never says which protocol it speaks, or
    // stops halfway through the HTTP/2 preface.
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{opening:?}: closed after the head timeout"))
            .unwrap();
    }
    let ups = h.uploads();
    assert_eq!(ups.len(), 3);
    assert!(ups.iter().all(|u| u.complete));
}

/// The gateway's SETTINGS, read off the wire: a client preface and an empty
/// SETTINGS frame, then the server's first frame.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(
        (head[3], head[4]),
        (0x4, 0),
        "a SETTINGS frame first, not an ACK"
    );
    let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    s.read_exact(&mut payload).await.unwrap();
    assert_eq!(payload.len() % 6, 0);
    payload
        .chunks(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

#[tokio::test]
async fn clients_may_send_64_kib_data_frames_and_such_uploads_reach_concur_whole() {
    let h = Harness::start().await;
    let settings = server_settings(h.addr).await;
    assert!(
        settings.contains(&(0x5, 64 * 1024)),
        "SETTINGS_MAX_FRAME_SIZE = 64 KiB in {settings:?}"
    );
    // Uploads in 64 KiB pieces (the h2 crate sends each as one DATA frame,
    // now that the server allows it) and in 16 KiB ones (the protocol's
    // default frame size).
    let body = big_jpeg(1_500_000);
    for (i, piece) in [64 * 1024, 16 * 1024].into_iter().enumerate() {
        let tcp = TcpStream::connect(h.addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = Request::post(format!("http://{}/api/image/v1.0/report/F{i}", h.addr))
            .header("authorization", format!("Bearer {}", jwt(ALICE.0, ALICE.1)))
            .header("content-type", "image/jpeg")
            .header("content-length", body.len())
            .body(())
            .unwrap();
        let (response, mut stream) = client.send_request(req, false).unwrap();
        let pieces: Vec<&[u8]> = body.chunks(piece).collect();
        for (k, p) in pieces.iter().enumerate() {
            stream
                .send_data(Bytes::copy_from_slice(p), k + 1 == pieces.len())
                .unwrap();
        }
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(response.status(), 201, "{piece}-byte frames");
    }
    let ups = h.uploads();
    assert_eq!(ups.len(), 2, "{ups:?}");
    for u in &ups {
        assert!(u.complete, "{u:?}");
        assert_eq!(u.sha256_hex, sha256_hex(&body));
    }
    in_flight_settles(&h).await;
}

/// An HPACK literal field without indexing, new name, raw strings.
fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    for s in [name, value] {
        let mut n = s.len();
        if n < 127 {
            out.push(n as u8);
        } else {
            out.push(127);
            n -= 127;
            while n >= 128 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        out.extend_from_slice(s.as_bytes());
    }
}

/// What a client sends first: the preface and an empty SETTINGS frame.
fn client_preface() -> Vec<u8> {
    let mut wire = concur_gateway::h2_watch::PREFACE.to_vec();
    wire.extend(h2_frame(0x4, 0, 0, &[]));
    wire
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes `streams` (stream id, `:path`) as hand-made h2c frames, each an
/// upload of `JPEG` with literal header fields, and reads until the gateway
/// has answered every stream or closed the connection: each answered
/// stream's `:status`, and whether the connection was closed.
async fn h2_raw_uploads(
    h: &Harness,
    streams: &[(u32, &str)],
) -> (std::collections::BTreeMap<u32, String>, bool) {
    let token = jwt(ALICE.0, ALICE.1);
    let mut wire = client_preface();
    for &(stream, path) in streams {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "gw.test"),
            (":path", path),
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "image/jpeg"),
            ("content-length", &JPEG.len().to_string()),
        ] {
            hpack_literal(&mut block, name, value);
        }
        wire.extend(h2_frame(0x1, 0x4, stream, &block));
        jpeg_data_frames(&mut wire, stream);
    }
    h2_raw_exchange(h, &wire, streams.len()).await
}

/// `JPEG` as DATA frames of 16 KiB, the last with END_STREAM.
fn jpeg_data_frames(wire: &mut Vec<u8>, stream: u32) {
    let chunks: Vec<&[u8]> = JPEG.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let end = if i + 1 == chunks.len() { 0x1 } else { 0 };
        wire.extend(h2_frame(0x0, end, stream, chunk));
    }
}

/// Writes `wire` (preface and frames) on a new connection and reads until
/// the gateway has answered `streams` streams or closed the connection.
async fn h2_raw_exchange(
    h: &Harness,
    wire: &[u8],
    streams: usize,
) -> (std::collections::BTreeMap<u32, String>, bool) {
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    let mut hpack = concur_gateway::h2_watch::Hpack::default();
    let mut statuses = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while statuses.len() < streams {
        let mut chunk = [0u8; 16384];
        let read = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("an answer on every stream, or a close");
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => return (statuses, true),
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]));
            if kind == 0x1 {
                let mut status = String::new();
                hpack
                    .decode(&buf[9..9 + len], |name, value| {
                        if name == b":status" {
                            status = String::from_utf8_lossy(value).into_owned();
                        }
                    })
                    .unwrap();
                statuses.insert(stream, status);
            }
            buf.drain(..9 + len);
        }
    }
    (statuses, false)
}

/// The h2 layer under hyper drops a `:path`'s `#` and what follows (the
/// `http` crate's URI does), so `report/R9#evil` would be served as
/// `report/R9`. The head watch decodes the client's header blocks itself
/// (`h2_watch.rs`) and fails the connection before hyper sees such a block:
/// no stream of that write is served, nothing reaches Concur. The same path
/// without the `#` goes through. Frames are written by hand: no HTTP/2
/// client sends a fragment.
#[tokio::test]
async fn a_hash_in_an_h2_path_closes_the_connection_before_it_is_served() {
    let h = Harness::start().await;
    let (statuses, closed) = h2_raw_uploads(&h, &[(1, "/api/image/v1.0/report/R9#evil")]).await;
    assert!(closed && statuses.is_empty(), "{statuses:?}");
    // A good stream before it in the same write is not served either.
    let (statuses, closed) = h2_raw_uploads(
        &h,
        &[
            (1, "/api/image/v1.0/report/R8"),
            (3, "/api/image/v1.0/receipt#x"),
        ],
    )
    .await;
    assert!(closed && statuses.is_empty(), "{statuses:?}");
    let (statuses, closed) = h2_raw_uploads(
        &h,
        &[
            (1, "/api/image/v1.0/report/R9"),
            (3, "/api/image/v1.0/report/R7"),
        ],
    )
    .await;
    assert!(!closed, "{statuses:?}");
    assert_eq!(statuses.values().collect::<Vec<_>>(), ["201", "201"]);
    settle().await;
    let mut targets: Vec<String> = h.uploads().into_iter().map(|u| u.target).collect();
    targets.sort();
    assert_eq!(
        targets,
        ["/api/image/v1.0/report/R7", "/api/image/v1.0/report/R9"],
        "only the paths without a `#`"
    );
}

/// `:method POST`, `:scheme http` and `:authority gw.test` as HPACK literals.
fn hpack_post_start(out: &mut Vec<u8>) {
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "gw.test"),
    ] {
        hpack_literal(out, name, value);
    }
}

/// An upload's regular fields, as literals: the caller's JWT, a JPEG type
/// and `JPEG`'s length.
fn upload_fields(out: &mut Vec<u8>, token: &str) {
    for (name, value) in [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "image/jpeg".to_owned()),
        ("content-length", JPEG.len().to_string()),
    ] {
        hpack_literal(out, name, &value);
    }
}

/// Writes `wire` and reads until `streams` answers or a close: the
/// connection must be closed before stream 3 (the one whose `:path` holds
/// `report/R2#R3`) is answered, and nothing of R2 may reach Concur.
async fn r2_never_served(h: &Harness, wire: &[u8], streams: usize) {
    let (statuses, closed) = h2_raw_exchange(h, wire, streams).await;
    settle().await;
    let targets: Vec<String> = h.uploads().into_iter().map(|u| u.target).collect();
    assert!(
        !targets.iter().any(|t| t.contains("R2")),
        "the stream with a `#` was served: {targets:?} {statuses:?}"
    );
    assert!(closed && !statuses.contains_key(&3), "{statuses:?}");
}

/// A literal field with an empty name, in a header block that goes on in a
/// CONTINUATION frame, is dropped by the h2 layer and never enters its
/// dynamic table. A watch that added it to its own table read every older
/// entry one index further on: here a later block names its `:path` by
/// index 62 (the h2 layer's `:path` entry, the watch's empty one) and its
/// `#` went unseen, so `report/R2#R3` was served as `report/R2`. Found by
/// the `h2` fuzz target (tests/fuzz). The watch first skipped such a field
/// as the h2 layer does here; it now refuses the connection at once.
#[tokio::test]
async fn an_empty_field_name_keeps_the_watch_in_step_with_the_h2_layer() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let mut wire = client_preface();
    // Stream 1: `:path` added to the table (index 62), then an empty name
    // added to it, in a HEADERS frame that a CONTINUATION ends.
    let mut first = Vec::new();
    hpack_post_start(&mut first);
    let path = b"/api/image/v1.0/report/R1";
    first.extend([0x44, path.len() as u8]);
    first.extend_from_slice(path);
    first.extend([0x40, 0x00, 0x00]);
    let mut second = Vec::new();
    upload_fields(&mut second, &token);
    wire.extend(h2_frame(0x1, 0, 1, &first));
    wire.extend(h2_frame(0x9, 0x4, 1, &second));
    jpeg_data_frames(&mut wire, 1);
    // Stream 3: the `:path` by the name at index 62, with a `#`.
    let mut block = Vec::new();
    hpack_post_start(&mut block);
    let hashed = b"/api/image/v1.0/report/R2#R3";
    block.extend([0x0f, 62 - 15, hashed.len() as u8]);
    block.extend_from_slice(hashed);
    upload_fields(&mut block, &token);
    wire.extend(h2_frame(0x1, 0x4, 3, &block));
    jpeg_data_frames(&mut wire, 3);

    r2_never_served(&h, &wire, 2).await;
}

/// Two `:path`s in one request head, the first with a `#`, in a HEADERS
/// frame that ends inside a field and a CONTINUATION: the h2 layer loses,
/// across the two frames, that a repeated `:path` makes the request
/// malformed, and serves it by the first (`report/R2#R3` as `report/R2`).
/// The watch looked at the last `:path` only; it now refuses a `#` in any.
/// Found by the `h2` fuzz target (tests/fuzz).
#[tokio::test]
async fn a_hash_in_the_first_of_two_h2_paths_is_refused() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "gw.test"),
        (":path", "/api/image/v1.0/report/R2#R3"),
        (":path", "/api/image/v1.0/report/R4"),
        ("authorization", &format!("Bearer {token}")),
        ("content-type", "image/jpeg"),
        ("content-length", &JPEG.len().to_string()),
    ] {
        hpack_literal(&mut block, name, value);
    }
    // Cut inside the `authorization` field.
    let cut = block
        .windows(13)
        .position(|w| w == b"authorization")
        .unwrap()
        + 5;
    let mut wire = client_preface();
    wire.extend(h2_frame(0x1, 0, 1, &block[..cut]));
    wire.extend(h2_frame(0x9, 0x4, 1, &block[cut..]));
    jpeg_data_frames(&mut wire, 1);

    let (statuses, closed) = h2_raw_exchange(&h, &wire, 1).await;
    assert!(closed && statuses.is_empty(), "{statuses:?}");
    settle().await;
    assert_eq!(h.uploads().len(), 0, "nothing reaches Concur");
}

/// An empty field name, in a header block that goes on in a CONTINUATION
/// frame, makes the h2 layer's decoder stop with "need more bytes" after
/// consuming the name but not a Huffman-coded value: once the next frame
/// comes, it decodes from the value's length byte on, as header fields. The
/// watch skipped the whole field, so it never saw what the h2 layer read
/// there: here, after the length byte (read as index 62: the `:method POST`
/// an earlier request put in the table), a `:path` with a `#` (the value is
/// valid Huffman code too, with harmless `user-agent` and `referer` fields
/// after the `:path`): `report/R2#R3` was served as `report/R2`. Found by
/// the `h2` fuzz target's rich mode (tests/fuzz). The watch now refuses any
/// field with an empty name.
#[tokio::test]
async fn an_empty_field_name_with_a_huffman_value_closes_the_connection() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let mut wire = client_preface();
    // Stream 1, an upload to R1: `:method POST` added to the table.
    let mut block = vec![0x43, 4];
    block.extend_from_slice(b"POST");
    hpack_literal(&mut block, ":scheme", "http");
    hpack_literal(&mut block, ":authority", "gw.test");
    hpack_literal(&mut block, ":path", "/api/image/v1.0/report/R1");
    upload_fields(&mut block, &token);
    wire.extend(h2_frame(0x1, 0x4, 1, &block));
    jpeg_data_frames(&mut wire, 1);
    // Stream 3: no `:method` but in the value of a field with an empty
    // name: its length byte (Huffman, 62 bytes) reads as index 62.
    let hashed = b"/api/image/v1.0/report/R2#R3";
    let mut value = vec![0x04, hashed.len() as u8];
    value.extend_from_slice(hashed);
    value.extend([0xba; 30]);
    value.extend([0xb3; 2]);
    assert_eq!(value.len(), 62);
    let mut first = Vec::new();
    hpack_literal(&mut first, ":scheme", "http");
    hpack_literal(&mut first, ":authority", "gw.test");
    first.extend([0x00, 0x00, 0x80 | 62]);
    first.extend(&value);
    let mut second = Vec::new();
    upload_fields(&mut second, &token);
    wire.extend(h2_frame(0x1, 0, 3, &first));
    wire.extend(h2_frame(0x9, 0x4, 3, &second));
    jpeg_data_frames(&mut wire, 3);

    r2_never_served(&h, &wire, 2).await;
}

/// A client must not send PUSH_PROMISE (RFC 9113 §8.4), and the h2 layer
/// closes the connection for one, except on a stream it has reset: there it
/// resets the stream again and goes on, after decoding the frame's header
/// block into its dynamic table. A watch that skipped the frame lost step:
/// here the promise adds a `:path` with a `#` to the h2 layer's table, and
/// a later stream names its `:path` by index 62, the promise's entry for
/// the h2 layer and an older one without a `#` for the watch.
#[tokio::test]
async fn a_push_promise_from_the_client_closes_the_connection() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let mut wire = client_preface();
    // Stream 1: malformed (a connection-specific field), so the h2 layer
    // resets it; its `:path` enters both tables (index 62).
    let mut first = Vec::new();
    hpack_post_start(&mut first);
    let path = b"/api/image/v1.0/report/R1";
    first.extend([0x44, path.len() as u8]);
    first.extend_from_slice(path);
    hpack_literal(&mut first, "connection", "close");
    wire.extend(h2_frame(0x1, 0x4 | 0x1, 1, &first));
    // PUSH_PROMISE on stream 1 (promised stream 2): a `:path` with a `#`
    // added to the table.
    let mut promise = 2u32.to_be_bytes().to_vec();
    let hashed = b"/api/image/v1.0/report/R2#R3";
    promise.extend([0x44, hashed.len() as u8]);
    promise.extend_from_slice(hashed);
    wire.extend(h2_frame(0x5, 0x4, 1, &promise));
    // Stream 3: the `:path` at index 62.
    let mut block = Vec::new();
    hpack_post_start(&mut block);
    block.push(0x80 | 62);
    upload_fields(&mut block, &token);
    wire.extend(h2_frame(0x1, 0x4, 3, &block));
    jpeg_data_frames(&mut wire, 3);

    r2_never_served(&h, &wire, 1).await;
}

/// The watch's own HPACK decoder keeps step with what a real encoder sends
/// (hyper's: Huffman coding, a dynamic table filled, evicted and reused):
/// 120 requests on one connection with header fields of many sizes, some
/// repeated, none with a `#`, are all served; a decoder that lost step
/// would close the connection.
#[tokio::test]
async fn the_h2_watch_keeps_step_with_hyper_s_hpack_encoder() {
    let h = Harness::start().await;
    let (sender, conn) = h2c(h.addr).await;
    for i in 0..120usize {
        let mut req = upload_request(
            h.addr,
            &format!(
                "/api/image/v1.0/report/R{}?q={}",
                i % 7,
                "x".repeat(i * 13 % 300)
            ),
            ALICE,
            Some(JPEG.len()),
            full(JPEG.to_vec()),
        );
        let headers = req.headers_mut();
        headers.insert("x-trace", format!("{i:08}").parse().unwrap());
        headers.insert(
            "x-note",
            "~é".repeat(i * 37 % 900).replace('é', "e").parse().unwrap(),
        );
        if i % 3 == 0 {
            headers.insert(
                "x-same",
                "a value repeated on every third request".parse().unwrap(),
            );
        }
        let r = send(&mut sender.clone(), req).await.unwrap();
        assert_eq!(r.status, 201, "request {i}");
    }
    assert!(!conn.is_finished());
}

/// A HEAD answer has no content: over HTTP/2 the refusal's head comes
/// alone, ending the stream (a problem body after it would be a stream error
/// to the client), as hyper does on HTTP/1.1.
#[tokio::test]
async fn a_head_request_gets_its_answer_without_a_body() {
    let h = Harness::start().await;
    let (sender, _conn) = h2c(h.addr).await;
    for (path, status) in [
        ("/api/image/v1.0/receipt", 405),
        ("/api/image/v1.0/nothing", 404),
    ] {
        let req = Request::head(format!("http://{}{path}", h.addr))
            .body(full(Vec::new()))
            .unwrap();
        let r = send(&mut sender.clone(), req)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        assert_eq!(r.status.as_u16(), status, "{path}");
        assert!(r.body.is_empty(), "{path}: {:?}", r.body);
        assert!(r.headers.get("x-request-id").is_some());
    }
    // The connection is still good for an upload.
    let r = upload(&sender, h.addr, "/api/image/v1.0/receipt", ALICE, JPEG).await;
    assert_eq!(r.status.as_u16(), 201);
}

/// Trailers with a pseudo-header field make the request malformed (RFC 9113
/// §8.1); the h2 layer would drop the field and serve the upload. The watch
/// fails the connection before hyper reads them, so the body never reaches
/// Concur complete; plain trailers are fine.
#[tokio::test]
async fn pseudo_header_fields_in_trailers_are_refused() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let upload = |trailer: (&str, &str)| {
        let mut wire = client_preface();
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "gw.test"),
            (":path", "/api/image/v1.0/report/T1"),
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "image/jpeg"),
            ("content-length", &JPEG.len().to_string()),
        ] {
            hpack_literal(&mut block, name, value);
        }
        wire.extend(h2_frame(0x1, 0x4, 1, &block));
        for chunk in JPEG.chunks(16 * 1024) {
            wire.extend(h2_frame(0x0, 0, 1, chunk));
        }
        let mut trailers = Vec::new();
        hpack_literal(&mut trailers, trailer.0, trailer.1);
        wire.extend(h2_frame(0x1, 0x4 | 0x1, 1, &trailers));
        wire
    };
    for (trailer, served) in [((":path", "/x"), false), (("x-sum", "1"), true)] {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(&upload(trailer)).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut chunk = [0u8; 16384];
            loop {
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => {
                        got.extend_from_slice(&chunk[..n]);
                        // A HEADERS frame back on stream 1: the answer.
                        if got.windows(5).any(|w| w == [0x1, 0x4, 0, 0, 0]) && served {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        })
        .await;
        assert!(read.is_ok(), "{trailer:?}: neither an answer nor a close");
        settle().await;
        let complete = h.uploads().iter().filter(|u| u.complete).count();
        assert_eq!(
            complete,
            usize::from(served),
            "{trailer:?}: {:?}",
            h.uploads()
        );
    }
}

/// Each connection worker's `concur_gateway_worker_tasks`, worker 0 first.
async fn worker_tasks(h: &Harness, workers: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for w in 0..workers {
        let name = format!("concur_gateway_worker_tasks{{worker=\"{w}\"}}");
        out.push(metric(h, &name).await.unwrap_or(-1.0));
    }
    out
}

/// Waits until the workers' gauges, in increasing order, are `want`.
async fn workers_settle(h: &Harness, want: &[f64]) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut now = worker_tasks(h, want.len()).await;
        now.sort_by(f64::total_cmp);
        if now == want {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "worker tasks {now:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_streams_of_one_connection_run_on_every_connection_worker() {
    // A mesh sidecar may send all its callers' requests over one HTTP/2
    // connection: its streams must not all queue on the connection's worker.
    let h = Harness::with_config("[server]\nworkers = 2").await;
    workers_settle(&h, &[0.0, 0.0]).await;
    let (sender, conn) = h2c(h.addr).await;
    // The connection alone: one task on one worker.
    workers_settle(&h, &[0.0, 1.0]).await;
    let body = big_jpeg(200_000);
    let mut feeds = Vec::new();
    let mut answers = Vec::new();
    for i in 0..6 {
        let (tx, fed_body) = fed();
        let who = if i % 2 == 0 { ALICE } else { GINA };
        let path = format!("/api/image/v1.0/report/W{i}");
        let req = upload_request(h.addr, &path, who, Some(body.len()), fed_body);
        let mut s = sender.clone();
        answers.push(tokio::spawn(async move { send(&mut s, req).await }));
        tx.send(Ok(Bytes::copy_from_slice(&body[..100_000])))
            .await
            .unwrap();
        feeds.push(tx);
    }
    // Six uploads under way: with the connection, seven tasks, split 3 / 4.
    workers_settle(&h, &[3.0, 4.0]).await;
    for tx in feeds {
        tx.send(Ok(Bytes::copy_from_slice(&body[100_000..])))
            .await
            .unwrap();
    }
    for a in answers {
        let r = a.await.unwrap().unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let ups = h.wait_for_uploads(6).await;
    assert!(
        ups.iter()
            .all(|u| u.complete && u.sha256_hex == sha256_hex(&body))
    );
    workers_settle(&h, &[0.0, 1.0]).await;
    drop(sender);
    let _ = conn.await;
    workers_settle(&h, &[0.0, 0.0]).await;
}
