//! Integration tests of the Concur sandbox over real TLS on port 0.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use concur_gateway::sandbox::{
    Fault, OAuthClient, Sandbox, SandboxConfig, SandboxToken, UploadRecord,
};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// --- helpers ------------------------------------------------------------------------

const ALICE: &str = "tok-alice-6f1e2d";
const ACME_ADMIN: &str = "tok-acme-admin-91ab";
const GLOBEX_ADMIN: &str = "tok-globex-admin-77cd";

/// What the sandbox answers for an image created under `id`.
pub(crate) fn image_xml(id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Image xmlns=\"http://www.concursolutions.com/api/image/2011/02\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Id>{id}</Id><Url i:nil=\"true\" /></Image>"
    )
}

fn tokens() -> Vec<SandboxToken> {
    vec![
        SandboxToken {
            token: ALICE.into(),
            company: "acme".into(),
            user: Some("alice@acme.example".into()),
        },
        SandboxToken {
            token: ACME_ADMIN.into(),
            company: "acme".into(),
            user: None,
        },
        SandboxToken {
            token: GLOBEX_ADMIN.into(),
            company: "globex".into(),
            user: None,
        },
    ]
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start() -> Sandbox {
    start_with(SandboxConfig {
        tokens: tokens(),
        ..SandboxConfig::default()
    })
    .await
}

async fn start_with(config: SandboxConfig) -> Sandbox {
    Sandbox::start(localhost(), config)
        .await
        .expect("sandbox starts")
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(sb: &Sandbox) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    connector(&sb.ca_cert_pem())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the sandbox")
}

type ReqBody = BoxBody<Bytes, io::Error>;

/// One HTTP/1.1 connection to the sandbox.
struct Conn {
    sender: SendRequest<ReqBody>,
}

impl Conn {
    async fn open(sb: &Sandbox) -> Conn {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls_stream(sb).await))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Conn { sender }
    }

    async fn send(&mut self, req: Request<ReqBody>) -> hyper::Result<Reply> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        })
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn full(body: impl Into<Bytes>) -> ReqBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A request body of unknown length: hyper sends it chunked.
struct Streaming(VecDeque<Bytes>);

impl Body for Streaming {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn request(
    method: Method,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: ReqBody,
) -> Request<ReqBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body).unwrap()
}

/// POSTs `body` on a fresh connection.
async fn post(
    sb: &Sandbox,
    path: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let req = request(Method::POST, path, auth, content_type, full(body.to_vec()));
    Conn::open(sb).await.send(req).await.unwrap()
}

async fn upload(sb: &Sandbox, path: &str, token: &str) -> Reply {
    post(
        sb,
        path,
        Some(&format!("OAuth {token}")),
        Some("image/png"),
        b"\x89PNG fake image",
    )
    .await
}

async fn control(sb: &Sandbox, method: Method, path: &str, body: &str) -> Reply {
    let ct = (!body.is_empty()).then_some("application/json");
    let req = request(method, path, None, ct, full(body.to_owned()));
    Conn::open(sb).await.send(req).await.unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> &'a str {
    let start = s.find(open).unwrap_or_else(|| panic!("{open} in {s}")) + open.len();
    let end = s[start..]
        .find(close)
        .unwrap_or_else(|| panic!("{close} in {s}"))
        + start;
    &s[start..end]
}

fn is_concur_id(id: &str) -> bool {
    id.len() == 20
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
}

/// Checks Concur's Error XML shape and returns the message.
fn assert_error_xml(reply: &Reply) -> String {
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    let b = &reply.body;
    assert!(
        b.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Message>"),
        "{b}"
    );
    assert!(b.ends_with("</Id></Error>"), "{b}");
    let time = between(b, "<Server-Time>", "</Server-Time>");
    assert_eq!(time.len(), 19, "{time}");
    let shape: String = time
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd");
    assert!(is_concur_id(between(b, "<Id>", "</Id>")), "{b}");
    between(b, "<Message>", "</Message>").to_owned()
}

async fn wait_for_records(sb: &Sandbox, n: usize) -> Vec<UploadRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = sb.uploads();
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- upload routes ------------------------------------------------------------------

#[tokio::test]
async fn receipt_gets_a_fresh_id_each_time() {
    let sb = start().await;
    assert_eq!(
        sb.base_url(),
        format!("https://localhost:{}", sb.local_addr().port())
    );
    let a = upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    let b = upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    for r in [&a, &b] {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        assert_eq!(
            r.header("content-type"),
            Some("application/xml; charset=utf-8")
        );
    }
    let id_a = between(&a.body, "<Id>", "</Id>").to_owned();
    let id_b = between(&b.body, "<Id>", "</Id>").to_owned();
    assert!(is_concur_id(&id_a), "{id_a}");
    assert!(is_concur_id(&id_b), "{id_b}");
    assert_ne!(id_a, id_b);
    assert_eq!(a.body, image_xml(&id_a));
    assert_eq!(b.body, image_xml(&id_b));
    let records = sb.uploads();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].kind, "receipt");
    assert_eq!(records[0].target_id, None);
    assert_eq!(records[0].image_id.as_deref(), Some(id_a.as_str()));
    assert_eq!(records[1].image_id.as_deref(), Some(id_b.as_str()));
    sb.shutdown().await;
}

#[tokio::test]
async fn expense_entry_takes_one_image() {
    let sb = start().await;
    let first = upload(&sb, "/api/image/v1.0/expenseentry/E123", ALICE).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.body, image_xml("E123"));

    let second = upload(&sb, "/api/image/v1.0/expenseentry/E123", ALICE).await;
    assert_eq!(second.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        assert_error_xml(&second),
        "An image already exists for this entry."
    );
    // The company's admin token sees the same entry.
    let third = upload(&sb, "/api/image/v1.0/expenseentry/E123", ACME_ADMIN).await;
    assert_eq!(third.status, StatusCode::BAD_REQUEST);
    // Another company's entry with the same id is another entry.
    let other = upload(&sb, "/api/image/v1.0/expenseentry/E123", GLOBEX_ADMIN).await;
    assert_eq!(other.status, StatusCode::CREATED);

    let records = sb.uploads();
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 400, 400, 201]);
    assert_eq!(records[1].image_id, None);
    assert_eq!(
        records[1].error_message.as_deref(),
        Some("An image already exists for this entry.")
    );
    assert_eq!(records[0].target_id.as_deref(), Some("E123"));
    sb.shutdown().await;
}

#[tokio::test]
async fn invoice_takes_one_image_across_api_versions() {
    let sb = start().await;
    let v10 = upload(&sb, "/api/image/v1.0/invoice/INV-9", ACME_ADMIN).await;
    assert_eq!(v10.status, StatusCode::CREATED);
    assert_eq!(v10.body, image_xml("INV-9"));
    let v11 = upload(&sb, "/api/image/v1.1/invoice/INV-9", ACME_ADMIN).await;
    assert_eq!(v11.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        assert_error_xml(&v11),
        "An image already exists for this entry."
    );
    let other = upload(&sb, "/api/image/v1.1/invoice/INV-10", ACME_ADMIN).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_eq!(other.body, image_xml("INV-10"));
    let kinds: Vec<String> = sb.uploads().into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["invoice"; 3]);
    sb.shutdown().await;
}

#[tokio::test]
async fn report_images_append() {
    let sb = start().await;
    for _ in 0..3 {
        let r = upload(&sb, "/api/image/v1.0/report/RPT42", ALICE).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.body, image_xml("RPT42"));
    }
    assert_eq!(sb.uploads().len(), 3);
    sb.shutdown().await;
}

#[tokio::test]
async fn fixed_path_segments_are_case_insensitive() {
    let sb = start().await;
    let r = upload(&sb, "/API/Image/V1.0/ExpenseEntry/Mixed", ALICE).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body, image_xml("Mixed"));
    assert_eq!(sb.uploads()[0].kind, "expenseentry");
    sb.shutdown().await;
}

// --- rejections ---------------------------------------------------------------------

#[tokio::test]
async fn missing_or_malformed_authorization_is_401() {
    let sb = start().await;
    let none = post(
        &sb,
        "/api/image/v1.0/receipt",
        None,
        Some("image/png"),
        b"img",
    )
    .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_error_xml(&none);
    let bare = post(
        &sb,
        "/api/image/v1.0/receipt",
        Some("Bearer"),
        Some("image/png"),
        b"img",
    )
    .await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    let records = sb.uploads();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.status == 401 && r.image_id.is_none())
    );
    assert_eq!(records[0].auth_scheme, None);
    assert_eq!(records[0].company, None);
    sb.shutdown().await;
}

#[tokio::test]
async fn unknown_token_is_403_and_bearer_is_accepted() {
    let sb = start().await;
    let r = post(
        &sb,
        "/api/image/v1.0/receipt",
        Some("OAuth not-a-token"),
        Some("image/png"),
        b"img",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_error_xml(&r);
    let bearer = post(
        &sb,
        "/api/image/v1.0/receipt",
        Some(&format!("Bearer {ALICE}")),
        Some("image/jpeg"),
        b"img",
    )
    .await;
    assert_eq!(bearer.status, StatusCode::CREATED);
    let records = sb.uploads();
    assert_eq!(records[0].token.as_deref(), Some("not-a-token"));
    assert_eq!(records[0].company, None);
    assert_eq!(records[1].auth_scheme.as_deref(), Some("Bearer"));
    assert_eq!(records[1].token.as_deref(), Some(ALICE));
    sb.shutdown().await;
}

#[tokio::test]
async fn content_type_is_checked() {
    let sb = start().await;
    let auth = format!("OAuth {ALICE}");
    let gif = post(
        &sb,
        "/api/image/v1.0/expenseentry/E1",
        Some(&auth),
        Some("image/gif"),
        b"GIF89a",
    )
    .await;
    assert_eq!(gif.status, StatusCode::BAD_REQUEST);
    assert!(assert_error_xml(&gif).contains("image/gif"));
    let missing = post(
        &sb,
        "/api/image/v1.0/expenseentry/E1",
        Some(&auth),
        None,
        b"data",
    )
    .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    // The rejected uploads created nothing; case and parameters are tolerated.
    for (i, ct) in ["IMAGE/PNG; name=\"r.png\"", "image/jpg", "application/pdf"]
        .iter()
        .enumerate()
    {
        let ok = post(
            &sb,
            &format!("/api/image/v1.0/expenseentry/E{}", i + 1),
            Some(&auth),
            Some(ct),
            b"data",
        )
        .await;
        assert_eq!(ok.status, StatusCode::CREATED, "{ct}");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn chunked_upload_is_400_and_recorded() {
    let sb = start().await;
    let parts: VecDeque<Bytes> = [&b"part one "[..], b"part two"]
        .into_iter()
        .map(Bytes::from_static)
        .collect();
    let req = request(
        Method::POST,
        "/api/image/v1.0/expenseentry/E7",
        Some(&format!("OAuth {ALICE}")),
        Some("image/png"),
        Streaming(parts).boxed(),
    );
    let mut conn = Conn::open(&sb).await;
    let r = conn.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(assert_error_xml(&r), "chunked uploads are not supported");
    let rec = &sb.uploads()[0];
    assert!(rec.chunked);
    assert_eq!(rec.content_length, None);
    assert_eq!(rec.received_bytes, 17);
    assert_eq!(rec.sha256_hex, sha256_hex(b"part one part two"));
    assert!(rec.complete);
    assert_eq!(rec.image_id, None);
    // The connection is still usable and the entry is still free.
    let again = request(
        Method::POST,
        "/api/image/v1.0/expenseentry/E7",
        Some(&format!("OAuth {ALICE}")),
        Some("image/png"),
        full(&b"whole"[..]),
    );
    assert_eq!(conn.send(again).await.unwrap().status, StatusCode::CREATED);
    sb.shutdown().await;
}

#[tokio::test]
async fn unknown_path_is_404_and_other_method_is_405() {
    let sb = start().await;
    let nf = upload(&sb, "/api/image/v3.0/receipts", ALICE).await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    assert_error_xml(&nf);
    let req = request(
        Method::GET,
        "/api/image/v1.0/expenseentry/E1",
        Some(&format!("OAuth {ALICE}")),
        None,
        full(Bytes::new()),
    );
    let na = Conn::open(&sb).await.send(req).await.unwrap();
    assert_eq!(na.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(na.header("allow"), Some("POST"));
    assert_error_xml(&na);
    let records = sb.uploads();
    assert_eq!(records[0].kind, "other");
    assert_eq!(records[0].status, 404);
    assert_eq!(records[1].kind, "expenseentry");
    assert_eq!(records[1].method, "GET");
    assert_eq!(records[1].status, 405);
    sb.shutdown().await;
}

// --- records ------------------------------------------------------------------------

/// The load bench's switch: with the body digest off, an upload is still
/// read whole and counted, only not hashed.
#[tokio::test]
async fn body_digest_can_be_switched_off_and_on() {
    let sb = start().await;
    let body = b"\x89PNG fake image";
    assert_eq!(
        control(&sb, Method::GET, "/_sandbox/body-digest", "")
            .await
            .json()["on"],
        true
    );
    let off = control(&sb, Method::PUT, "/_sandbox/body-digest", r#"{"on":false}"#).await;
    assert_eq!(off.status, StatusCode::OK);
    assert_eq!(off.json()["on"], false);
    upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    control(&sb, Method::PUT, "/_sandbox/body-digest", r#"{"on":true}"#).await;
    upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    let recs = wait_for_records(&sb, 2).await;
    assert_eq!(recs[0].received_bytes, body.len() as u64);
    assert!(recs[0].complete);
    assert_eq!(recs[0].sha256_hex, "", "not hashed while off");
    assert_eq!(recs[1].sha256_hex, sha256_hex(body));
    let bad = control(&sb, Method::PUT, "/_sandbox/body-digest", r#"{"on":"no"}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn upload_record_describes_what_arrived() {
    let sb = start().await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/image/v1.0/expenseentry/E55?source=test")
        .header("host", "localhost")
        .header("authorization", format!("OAuth {ALICE}"))
        .header("content-type", "image/jpeg")
        .header("content-length", body.len().to_string())
        .header("x-trace", "abc")
        .body(full(body.clone()))
        .unwrap();
    let r = Conn::open(&sb).await.send(req).await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED);
    let rec = sb.uploads().remove(0);
    assert_eq!(rec.path, "/api/image/v1.0/expenseentry/E55");
    assert_eq!(rec.query.as_deref(), Some("source=test"));
    assert_eq!(rec.kind, "expenseentry");
    assert_eq!(rec.target_id.as_deref(), Some("E55"));
    assert_eq!(rec.company.as_deref(), Some("acme"));
    assert_eq!(rec.user.as_deref(), Some("alice@acme.example"));
    assert_eq!(rec.auth_scheme.as_deref(), Some("OAuth"));
    assert_eq!(rec.token.as_deref(), Some(ALICE));
    assert_eq!(rec.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(rec.content_length, Some(body.len() as u64));
    assert!(!rec.chunked);
    assert_eq!(rec.received_bytes, body.len() as u64);
    assert_eq!(rec.sha256_hex, sha256_hex(&body));
    assert!(rec.complete);
    assert_eq!(rec.status, 201);
    assert_eq!(rec.image_id.as_deref(), Some("E55"));
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.fault, None);
    assert_eq!(rec.connection_id, 1);
    assert!(rec.headers.contains(&("x-trace".into(), "abc".into())));
    assert!(
        rec.headers
            .contains(&("authorization".into(), format!("OAuth {ALICE}")))
    );
    assert!(rec.headers.iter().all(|(k, _)| *k == k.to_lowercase()));

    sb.clear_uploads();
    assert!(sb.uploads().is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn aborted_upload_is_incomplete_and_creates_nothing() {
    let sb = start().await;
    let mut tls = tls_stream(&sb).await;
    let head = format!(
        "POST /api/image/v1.0/expenseentry/E9 HTTP/1.1\r\nhost: localhost\r\nauthorization: OAuth {ALICE}\r\ncontent-type: image/png\r\ncontent-length: 1000\r\n\r\n0123456789"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // Let the sandbox read what was sent, then vanish without a TLS close_notify.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tls);

    let records = wait_for_records(&sb, 1).await;
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert!(!rec.complete);
    assert_eq!(rec.status, 0);
    assert_eq!(rec.content_length, Some(1000));
    assert_eq!(rec.received_bytes, 10);
    assert_eq!(rec.sha256_hex, sha256_hex(b"0123456789"));
    assert_eq!(rec.image_id, None);
    assert_eq!(rec.company.as_deref(), Some("acme"));

    let later = upload(&sb, "/api/image/v1.0/expenseentry/E9", ALICE).await;
    assert_eq!(later.status, StatusCode::CREATED);
    sb.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let sb = start().await;
    let mut conn = Conn::open(&sb).await;
    for i in 0..5 {
        let req = request(
            Method::POST,
            &format!("/api/image/v1.0/report/R{i}"),
            Some(&format!("OAuth {ALICE}")),
            Some("application/pdf"),
            full(vec![b'%'; 1000 + i]),
        );
        assert_eq!(conn.send(req).await.unwrap().status, StatusCode::CREATED);
    }
    assert_eq!(sb.connections(), 1);
    let records = sb.uploads();
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.connection_id == 1));
    let ids: Vec<_> = records
        .iter()
        .map(|r| r.target_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["R0", "R1", "R2", "R3", "R4"]);
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_large_uploads() {
    let sb = Arc::new(start().await);
    // 10 MiB each, the size of the largest images.
    let body = Bytes::from(
        (0..(10 << 20))
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<u8>>(),
    );
    let digest = sha256_hex(&body);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        let sb = Arc::clone(&sb);
        let body = body.clone();
        tasks.spawn(async move {
            // Feed it in 64 KiB frames with a declared length, as a proxy would stream it.
            let frames: VecDeque<Bytes> =
                body.chunks(64 * 1024).map(|c| body.slice_ref(c)).collect();
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("/api/image/v1.0/expenseentry/C{i}"))
                .header("host", "localhost")
                .header("authorization", format!("Bearer {ALICE}"))
                .header("content-type", "image/jpeg")
                .header("content-length", body.len().to_string())
                .body(Streaming(frames).boxed())
                .unwrap();
            Conn::open(&sb).await.send(req).await.unwrap().status
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
    let records = sb.uploads();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.complete
        && !r.chunked
        && r.received_bytes == body.len() as u64
        && r.sha256_hex == digest));
    Arc::into_inner(sb).unwrap().shutdown().await;
}

// --- faults -------------------------------------------------------------------------

#[tokio::test]
async fn status_fault_applies_once_with_retry_after() {
    let sb = start().await;
    sb.push_fault(Fault::Status {
        status: 503,
        message: "Service <busy> & away".into(),
        retry_after: Some("7".into()),
    });
    let r = upload(&sb, "/api/image/v1.0/expenseentry/F1", ALICE).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert!(
        r.body
            .contains("<Message>Service &lt;busy&gt; &amp; away</Message>"),
        "{}",
        r.body
    );
    assert_eq!(assert_error_xml(&r), "Service &lt;busy&gt; &amp; away");
    // Exactly one request: the next one is normal, and the entry was left free.
    let ok = upload(&sb, "/api/image/v1.0/expenseentry/F1", ALICE).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let records = sb.uploads();
    assert_eq!(records[0].fault.as_deref(), Some("Status"));
    assert_eq!(records[0].status, 503);
    assert_eq!(records[0].image_id, None);
    assert_eq!(records[1].fault, None);
    sb.shutdown().await;
}

#[tokio::test]
async fn faults_apply_in_order_and_before_auth() {
    let sb = start().await;
    sb.push_fault(Fault::Status {
        status: 500,
        message: "first".into(),
        retry_after: None,
    });
    sb.push_fault(Fault::Status {
        status: 429,
        message: "second".into(),
        retry_after: None,
    });
    // No Authorization at all: the fault still wins.
    let a = post(
        &sb,
        "/api/image/v1.0/receipt",
        None,
        Some("image/png"),
        b"x",
    )
    .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(assert_error_xml(&a), "first");
    assert_eq!(a.header("retry-after"), None);
    // 404s do not consume faults.
    let nf = upload(&sb, "/nowhere", ALICE).await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    let b = upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    assert_eq!(b.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(assert_error_xml(&b), "second");
    let c = upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    assert_eq!(c.status, StatusCode::CREATED);
    sb.shutdown().await;
}

#[tokio::test]
async fn delay_fault_answers_normally_later() {
    let sb = start().await;
    sb.push_fault(Fault::Delay { millis: 300 });
    let started = Instant::now();
    let r = upload(&sb, "/api/image/v1.0/expenseentry/D1", ALICE).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body, image_xml("D1"));
    let rec = &sb.uploads()[0];
    assert_eq!(rec.fault.as_deref(), Some("Delay"));
    assert_eq!(rec.image_id.as_deref(), Some("D1"));
    sb.shutdown().await;
}

#[tokio::test]
async fn reset_fault_drops_the_connection() {
    let sb = start().await;
    sb.push_fault(Fault::Reset);
    let req = request(
        Method::POST,
        "/api/image/v1.0/expenseentry/X1",
        Some(&format!("OAuth {ALICE}")),
        Some("image/png"),
        full(&b"image"[..]),
    );
    // The connection goes away without an HTTP answer (and without a TLS close_notify).
    let err = Conn::open(&sb).await.send(req).await.unwrap_err();
    assert!(
        err.is_incomplete_message() || err.is_closed() || err.to_string().contains("connection"),
        "{err:?}"
    );
    let rec = &sb.uploads()[0];
    assert_eq!(rec.fault.as_deref(), Some("Reset"));
    assert_eq!(rec.status, 0);
    assert!(rec.complete);
    assert_eq!(rec.image_id, None);
    let ok = upload(&sb, "/api/image/v1.0/expenseentry/X1", ALICE).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    sb.shutdown().await;
}

#[tokio::test]
async fn malformed_xml_fault_answers_broken_201() {
    let sb = start().await;
    sb.push_fault(Fault::MalformedXml);
    let r = upload(&sb, "/api/image/v1.0/expenseentry/M1", ALICE).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    assert!(r.body.starts_with("<?xml"));
    assert!(!r.body.ends_with("</Image>"), "{}", r.body);
    assert_eq!(sb.uploads()[0].image_id, None);
    let ok = upload(&sb, "/api/image/v1.0/expenseentry/M1", ALICE).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    sb.shutdown().await;
}

#[tokio::test]
async fn raw_fault_answers_exactly() {
    let sb = start().await;
    sb.push_fault(Fault::Raw {
        status: 502,
        content_type: "text/html".into(),
        body: "<html>Bad Gateway</html>".into(),
        retry_after: None,
        location: None,
    });
    let r = upload(&sb, "/api/image/v1.0/report/RR", ALICE).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(r.body, "<html>Bad Gateway</html>");
    assert_eq!(sb.uploads()[0].fault.as_deref(), Some("Raw"));
    sb.clear_faults();
    sb.shutdown().await;
}

#[test]
fn faults_deserialize_externally_tagged() {
    let f: Fault =
        serde_json::from_str(r#"{"Status":{"status":503,"message":"busy","retry_after":"7"}}"#)
            .unwrap();
    assert_eq!(
        f,
        Fault::Status {
            status: 503,
            message: "busy".into(),
            retry_after: Some("7".into())
        }
    );
    let f: Fault = serde_json::from_str(r#"{"Status":{"status":500,"message":"x"}}"#).unwrap();
    assert!(matches!(
        f,
        Fault::Status {
            retry_after: None,
            ..
        }
    ));
    assert_eq!(
        serde_json::from_str::<Fault>(r#""Reset""#).unwrap(),
        Fault::Reset
    );
    assert_eq!(
        serde_json::from_str::<Fault>(r#""MalformedXml""#).unwrap(),
        Fault::MalformedXml
    );
    assert_eq!(
        serde_json::from_str::<Fault>(r#"{"Delay":{"millis":5}}"#).unwrap(),
        Fault::Delay { millis: 5 }
    );
}

// --- control endpoints --------------------------------------------------------------

#[tokio::test]
async fn control_endpoints_work() {
    let sb = start_with(SandboxConfig::default()).await;
    // No tokens yet.
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", "late-token")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let added = control(
        &sb,
        Method::POST,
        "/_sandbox/tokens",
        r#"{"token":"late-token","company":"initech","user":"peter"}"#,
    )
    .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let added = control(
        &sb,
        Method::POST,
        "/_sandbox/tokens",
        r#"{"token":"initech-admin","company":"initech"}"#,
    )
    .await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let fault = control(
        &sb,
        Method::POST,
        "/_sandbox/faults",
        r#"{"Status":{"status":503,"message":"busy","retry_after":"7"}}"#,
    )
    .await;
    assert_eq!(fault.json()["queued"], 1);
    let listed = control(&sb, Method::GET, "/_sandbox/faults", "").await;
    assert_eq!(listed.json()[0]["Status"]["status"], 503);

    let busy = upload(&sb, "/api/image/v1.0/receipt", "late-token").await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.header("retry-after"), Some("7"));
    let ok = upload(&sb, "/api/image/v1.0/receipt", "late-token").await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let admin = upload(&sb, "/api/image/v1.0/receipt", "initech-admin").await;
    assert_eq!(admin.status, StatusCode::CREATED);

    let listed = control(&sb, Method::GET, "/_sandbox/uploads", "").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let records: Vec<UploadRecord> = serde_json::from_str(&listed.body).unwrap();
    assert_eq!(records, sb.uploads());
    assert_eq!(records.len(), 4);
    assert_eq!(records[2].company.as_deref(), Some("initech"));
    assert_eq!(records[2].user.as_deref(), Some("peter"));
    assert_eq!(records[3].user, None);
    // Control requests are not recorded.
    assert!(records.iter().all(|r| !r.path.starts_with("/_sandbox")));

    let cleared = control(&sb, Method::DELETE, "/_sandbox/uploads", "").await;
    assert_eq!(cleared.json()["cleared"], 4);
    assert!(sb.uploads().is_empty());

    control(&sb, Method::POST, "/_sandbox/faults", r#""Reset""#).await;
    let cleared = control(&sb, Method::DELETE, "/_sandbox/faults", "").await;
    assert_eq!(cleared.json()["cleared"], 1);

    let bad = control(&sb, Method::POST, "/_sandbox/faults", r#"{"Nope":{}}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].is_string());
    let bad = control(&sb, Method::POST, "/_sandbox/tokens", "{}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let nf = control(&sb, Method::GET, "/_sandbox/nothing", "").await;
    assert_eq!(nf.status, StatusCode::NOT_FOUND);
    let na = control(&sb, Method::PUT, "/_sandbox/uploads", "").await;
    assert_eq!(na.status, StatusCode::METHOD_NOT_ALLOWED);
    sb.shutdown().await;
}

// --- TLS and lifecycle --------------------------------------------------------------

#[tokio::test]
async fn uses_a_given_certificate() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = generated.cert.pem();
    let key_pem = generated.signing_key.serialize_pem();
    let sb = start_with(SandboxConfig {
        tokens: tokens(),
        tls: Some((cert_pem.clone(), key_pem)),
        ..SandboxConfig::default()
    })
    .await;
    assert_eq!(sb.ca_cert_pem(), cert_pem);
    let r = upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    assert_eq!(r.status, StatusCode::CREATED);
    sb.shutdown().await;

    let bad = Sandbox::start(
        localhost(),
        SandboxConfig {
            tls: Some(("not a pem".into(), "nor this".into())),
            ..SandboxConfig::default()
        },
    )
    .await;
    assert_eq!(bad.unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn generated_certificate_covers_ipv6_loopback() {
    let Ok(sb) = Sandbox::start("[::1]:0".parse().unwrap(), SandboxConfig::default()).await else {
        return; // no IPv6 loopback on this machine
    };
    let tcp = TcpStream::connect(sb.local_addr()).await.unwrap();
    let tls = connector(&sb.ca_cert_pem())
        .connect(ServerName::try_from("::1").unwrap(), tcp)
        .await;
    assert!(tls.is_ok(), "{tls:?}");
    sb.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let sb = start().await;
    let addr = sb.local_addr();
    let mut idle = tls_stream(&sb).await;
    let req = format!(
        "POST /api/image/v1.0/receipt HTTP/1.1\r\nhost: localhost\r\nauthorization: OAuth {ALICE}\r\ncontent-type: image/png\r\ncontent-length: 3\r\n\r\nabc"
    );
    idle.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 201"));

    tokio::time::timeout(Duration::from_secs(5), sb.shutdown())
        .await
        .expect("shutdown is prompt");
    // The idle keep-alive connection was closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection still open after shutdown");
    assert!(TcpStream::connect(addr).await.is_err());
}

// --- logging ------------------------------------------------------------------------

#[tokio::test]
async fn logs_never_contain_secrets() {
    // A process-wide subscriber (see support::capture_logs): a scoped one
    // raced with other tests registering the same callsites on their threads.
    let capture = crate::support::capture_logs().await;

    let sb = start_with(SandboxConfig {
        tokens: tokens(),
        oauth_clients: vec![client()],
        ..SandboxConfig::default()
    })
    .await;
    upload(&sb, "/api/image/v1.0/receipt", ALICE).await;
    upload(&sb, "/api/image/v1.0/receipt", "unknown-secret-token").await;
    let issued = refresh(&sb, "client-1", "s3cret", "rt-initial")
        .await
        .json();
    refresh(&sb, "client-1", "wrong-secret-value", "rt-initial").await;
    let access = issued["access_token"].as_str().unwrap().to_owned();
    upload(&sb, "/api/image/v1.0/receipt", &access).await;
    sb.shutdown().await;

    let logs = capture.finish();
    assert!(logs.contains("sandbox upload answered"), "{logs}");
    for secret in [
        ALICE,
        "unknown-secret-token",
        "s3cret",
        "wrong-secret-value",
        "rt-initial",
        issued["refresh_token"].as_str().unwrap(),
        &access,
    ] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

// --- phase 2: OAuth2 token endpoint -------------------------------------------------

fn client() -> OAuthClient {
    OAuthClient {
        client_id: "client-1".into(),
        client_secret: "s3cret".into(),
        company: "acme".into(),
        user: Some("bob@acme.example".into()),
        refresh_token: "rt-initial".into(),
    }
}

async fn refresh(sb: &Sandbox, client_id: &str, secret: &str, refresh_token: &str) -> Reply {
    let form = format!(
        "grant_type=refresh_token&client_id={client_id}&client_secret={secret}&refresh_token={refresh_token}"
    );
    let req = request(
        Method::POST,
        "/oauth2/v0/token",
        None,
        Some("application/x-www-form-urlencoded"),
        full(form),
    );
    Conn::open(sb).await.send(req).await.unwrap()
}

#[tokio::test]
async fn refresh_issues_tokens_and_rotates() {
    let sb = start_with(SandboxConfig {
        oauth_clients: vec![client()],
        ..SandboxConfig::default()
    })
    .await;
    assert_eq!(
        sb.current_refresh_token("client-1").as_deref(),
        Some("rt-initial")
    );
    assert_eq!(sb.current_refresh_token("nobody"), None);

    let first = refresh(&sb, "client-1", "s3cret", "rt-initial").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let j = first.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], "3600"); // a string on the first refresh
    assert_eq!(j["id_token"], "x");
    assert_eq!(j["geolocation"], sb.base_url());
    assert!(j["scope"].is_string());
    assert!(j["refresh_expires_in"].as_u64().unwrap() > 1_700_000_000);
    let access1 = j["access_token"].as_str().unwrap().to_owned();
    let rt1 = j["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, "rt-initial");
    assert_eq!(
        sb.current_refresh_token("client-1").as_deref(),
        Some(rt1.as_str())
    );

    // The access token works on uploads and is owned by the client's company/user.
    let up = upload(&sb, "/api/image/v1.0/receipt", &access1).await;
    assert_eq!(up.status, StatusCode::CREATED);
    let rec = &sb.uploads()[0];
    assert_eq!(rec.company.as_deref(), Some("acme"));
    assert_eq!(rec.user.as_deref(), Some("bob@acme.example"));

    // The old refresh token is dead.
    let old = refresh(&sb, "client-1", "s3cret", "rt-initial").await;
    assert_eq!(old.status, StatusCode::BAD_REQUEST);
    assert_eq!(old.json()["error"], "invalid_grant");
    assert_eq!(old.json()["code"], 108);

    // The new one works; expires_in is a number this time.
    let second = refresh(&sb, "client-1", "s3cret", &rt1).await;
    assert_eq!(second.status, StatusCode::OK);
    let j2 = second.json();
    assert_eq!(j2["expires_in"], 3600);
    assert_ne!(j2["access_token"].as_str().unwrap(), access1);
    assert_ne!(j2["refresh_token"].as_str().unwrap(), rt1);
    // Earlier access tokens stay valid until they expire.
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", &access1)
            .await
            .status,
        StatusCode::CREATED
    );
    let third = refresh(
        &sb,
        "client-1",
        "s3cret",
        j2["refresh_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(third.json()["expires_in"], "3600");

    assert_eq!(sb.token_requests(), 4);
    let state = control(&sb, Method::GET, "/_sandbox/oauth", "")
        .await
        .json();
    assert_eq!(state["token_requests"], 4);
    assert_eq!(
        state["refresh_tokens"]["client-1"].as_str(),
        sb.current_refresh_token("client-1").as_deref()
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn refresh_rejects_bad_clients_and_requests() {
    let sb = start_with(SandboxConfig {
        oauth_clients: vec![client()],
        ..SandboxConfig::default()
    })
    .await;
    let wrong = refresh(&sb, "client-1", "nope", "rt-initial").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert_eq!(wrong.json()["code"], 105);
    assert!(wrong.json()["error_description"].is_string());
    let unknown = refresh(&sb, "client-2", "s3cret", "rt-initial").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.json()["code"], 105);
    let bogus = refresh(&sb, "client-1", "s3cret", "made-up").await;
    assert_eq!(bogus.status, StatusCode::BAD_REQUEST);
    assert_eq!(bogus.json()["code"], 108);
    // None of that rotated anything.
    assert_eq!(
        sb.current_refresh_token("client-1").as_deref(),
        Some("rt-initial")
    );

    let password = request(
        Method::POST,
        "/oauth2/v0/token",
        None,
        Some("application/x-www-form-urlencoded"),
        full("grant_type=password&client_id=client-1"),
    );
    let r = Conn::open(&sb).await.send(password).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let json_body = request(
        Method::POST,
        "/oauth2/v0/token",
        None,
        Some("application/json"),
        full(r#"{"grant_type":"refresh_token"}"#),
    );
    let r = Conn::open(&sb).await.send(json_body).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
    let get = request(
        Method::GET,
        "/oauth2/v0/token",
        None,
        None,
        full(Bytes::new()),
    );
    let r = Conn::open(&sb).await.send(get).await.unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(sb.token_requests(), 6);
    // Token requests are not upload records.
    assert!(sb.uploads().is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn form_values_are_percent_decoded() {
    let mut c = client();
    c.client_secret = "a+b/c d&e".into();
    c.refresh_token = "rt with space".into();
    let sb = start_with(SandboxConfig {
        oauth_clients: vec![c],
        ..SandboxConfig::default()
    })
    .await;
    let r = refresh(&sb, "client-1", "a%2Bb%2Fc+d%26e", "rt+with%20space").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    sb.shutdown().await;
}

#[tokio::test]
async fn expired_access_token_is_403() {
    let sb = start_with(SandboxConfig {
        tokens: tokens(),
        oauth_clients: vec![client()],
        access_token_ttl: Duration::from_secs(60),
        ..SandboxConfig::default()
    })
    .await;
    let j = refresh(&sb, "client-1", "s3cret", "rt-initial")
        .await
        .json();
    assert_eq!(j["expires_in"], "60");
    let access = j["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", &access).await.status,
        StatusCode::CREATED
    );
    sb.advance_clock(Duration::from_secs(61));
    let expired = upload(&sb, "/api/image/v1.0/receipt", &access).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert_error_xml(&expired);
    // Configured tokens never expire.
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", ALICE).await.status,
        StatusCode::CREATED
    );
    // A refresh gives a working token again; a zero TTL gives a dead one.
    let rt = j["refresh_token"].as_str().unwrap().to_owned();
    let j = refresh(&sb, "client-1", "s3cret", &rt).await.json();
    let fresh = j["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", &fresh).await.status,
        StatusCode::CREATED
    );
    sb.set_access_token_ttl(Duration::ZERO);
    let rt = j["refresh_token"].as_str().unwrap().to_owned();
    let j = refresh(&sb, "client-1", "s3cret", &rt).await.json();
    assert_eq!(j["expires_in"], "0");
    let dead = j["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", &dead).await.status,
        StatusCode::FORBIDDEN
    );
    // The clock is also reachable from outside.
    sb.set_access_token_ttl(Duration::from_secs(10));
    let rt = j["refresh_token"].as_str().unwrap().to_owned();
    let j = refresh(&sb, "client-1", "s3cret", &rt).await.json();
    let short = j["access_token"].as_str().unwrap().to_owned();
    let adv = control(
        &sb,
        Method::POST,
        "/_sandbox/clock",
        r#"{"advance_secs":11}"#,
    )
    .await;
    assert_eq!(adv.status, StatusCode::OK);
    assert_eq!(
        upload(&sb, "/api/image/v1.0/receipt", &short).await.status,
        StatusCode::FORBIDDEN
    );
    let rec = sb.uploads().pop().unwrap();
    assert_eq!(
        rec.error_message.as_deref(),
        Some("The access token has expired.")
    );
    assert_eq!(rec.company.as_deref(), Some("acme"));
    sb.shutdown().await;
}

#[tokio::test]
async fn oauth_clients_can_be_added_later() {
    let sb = start().await;
    assert_eq!(
        refresh(&sb, "client-1", "s3cret", "rt-initial")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    sb.add_oauth_client(client());
    sb.add_token(SandboxToken {
        token: "added".into(),
        company: "umbrella".into(),
        user: None,
    });
    assert_eq!(
        refresh(&sb, "client-1", "s3cret", "rt-initial")
            .await
            .status,
        StatusCode::OK
    );
    let r = upload(&sb, "/api/image/v1.0/receipt", "added").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(sb.uploads()[0].company.as_deref(), Some("umbrella"));
    sb.shutdown().await;
}
