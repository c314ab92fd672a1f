//! TLS listener, connection handling and the Image v1.0 upload routes.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::http::Resp;
use super::state::{Owner, State};
use super::util::{concur_id, hex_lower, server_time, xml_escape};
use super::{Fault, UploadRecord, control, oauth};

const XML: &str = "application/xml; charset=utf-8";
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Returned by the service to make hyper drop the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by the sandbox")]
pub(crate) struct DropConnection;

/// Builds the rustls server config (aws-lc-rs provider, HTTP/1.1 ALPN) and the PEM a
/// client should trust.
pub(crate) fn tls_config(given: Option<&(String, String)>) -> io::Result<(ServerConfig, String)> {
    let (chain, key, trust_pem) = match given {
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("sandbox certificate chain: {e}")))?;
            if chain.is_empty() {
                return Err(invalid("sandbox certificate chain: no certificate"));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| invalid(format!("sandbox private key: {e}")))?;
            (chain, key, chain_pem.clone())
        }
        None => {
            let names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            let generated = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
            let cert_pem = generated.cert.pem();
            let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
                .map_err(io::Error::other)?;
            (vec![generated.cert.der().clone()], key, cert_pem)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("sandbox certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, trust_pem))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// Accept loop; returns after a shutdown request once connections are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // E.g. out of file descriptors under a benchmark: back off briefly.
                        tracing::debug!(error = %e, "sandbox accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let conn_id = state.new_connection();
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                let mut close = state.close_signal();
                conns.spawn(async move {
                    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, conn_id, error = %e, "sandbox TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, conn_id, "sandbox TLS handshake timed out");
                            return;
                        }
                    };
                    let service = service_fn(move |req| handle(req, Arc::clone(&state), conn_id));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(tls), service);
                    let mut conn = std::pin::pin!(conn);
                    let ended = loop {
                        tokio::select! {
                            ended = conn.as_mut() => break ended,
                            // Closed now if idle, else after its answer.
                            Ok(()) = close.changed() => conn.as_mut().graceful_shutdown(),
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(%peer, conn_id, error = %e, "sandbox connection ended with an error");
                    }
                });
                // Reap finished connection tasks so the set does not grow forever.
                while conns.try_join_next().is_some() {}
            }
        }
    }
    drop(listener);
    state.close_connections();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    conn_id: u64,
) -> Result<Resp, DropConnection> {
    let path = req.uri().path();
    if path == "/_sandbox" || path.starts_with("/_sandbox/") {
        return Ok(control::handle(req, &state).await);
    }
    if path == "/oauth2/v0/token" {
        return Ok(oauth::handle(req, &state).await);
    }
    upload(req, &state, conn_id).await
}

// --- routes -----------------------------------------------------------------------

/// A matched upload route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    pub kind: &'static str,
    pub id: Option<String>,
}

/// Matches the Image v1.0 upload paths (fixed segments case-insensitively).
pub(crate) fn route(path: &str) -> Option<Route> {
    let rest = path.strip_prefix('/')?;
    let segs: Vec<&str> = rest.split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    if segs.len() < 4 || !eq(segs[0], "api") || !eq(segs[1], "image") {
        return None;
    }
    let version = segs[2];
    let kind_seg = segs[3];
    let kind: &'static str = match kind_seg.to_ascii_lowercase().as_str() {
        "receipt" if eq(version, "v1.0") => "receipt",
        "expenseentry" if eq(version, "v1.0") => "expenseentry",
        "invoice" if eq(version, "v1.0") || eq(version, "v1.1") => "invoice",
        "report" if eq(version, "v1.0") => "report",
        _ => return None,
    };
    match (kind, &segs[4..]) {
        ("receipt", []) => Some(Route { kind, id: None }),
        ("receipt", _) => None,
        (_, [id]) if !id.is_empty() => Some(Route {
            kind,
            id: Some((*id).to_owned()),
        }),
        _ => None,
    }
}

// --- uploads ----------------------------------------------------------------------

/// The answer decided for an upload request.
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
    retry_after: Option<HeaderValue>,
    location: Option<HeaderValue>,
    allow_post: bool,
    image_id: Option<String>,
    error_message: Option<String>,
}

impl Answer {
    fn error(state: &State, status: StatusCode, message: impl Into<String>) -> Answer {
        let message = message.into();
        Answer {
            status,
            content_type: Some(XML.to_owned()),
            body: error_xml(state, &message),
            retry_after: None,
            location: None,
            allow_post: false,
            image_id: None,
            error_message: Some(message),
        }
    }

    fn created(id: String) -> Answer {
        Answer {
            status: StatusCode::CREATED,
            content_type: Some(XML.to_owned()),
            body: image_xml(&id),
            retry_after: None,
            location: None,
            allow_post: false,
            image_id: Some(id),
            error_message: None,
        }
    }

    fn into_response(self) -> Resp {
        let mut resp = Response::new(Full::new(Bytes::from(self.body)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(ct) = self.content_type
            && let Ok(v) = HeaderValue::from_str(&ct)
        {
            h.insert(header::CONTENT_TYPE, v);
        }
        if let Some(ra) = self.retry_after {
            h.insert(header::RETRY_AFTER, ra);
        }
        if let Some(location) = self.location {
            h.insert(header::LOCATION, location);
        }
        if self.allow_post {
            h.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }
}

/// `<Image>` success body.
pub(crate) fn image_xml(id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Image xmlns=\"http://www.concursolutions.com/api/image/2011/02\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Id>{}</Id><Url i:nil=\"true\" /></Image>",
        xml_escape(id)
    )
}

/// Concur's `<Error>` body.
fn error_xml(state: &State, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Message>{}</Message><Server-Time>{}</Server-Time><Id>{}</Id></Error>",
        xml_escape(message),
        server_time(state.now_system()),
        concur_id()
    )
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Splits `Authorization: <scheme> <token>`; None when absent or without a token.
fn parse_authorization(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if scheme.is_empty() || token.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), token.to_owned()))
}

fn content_type_accepted(ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim();
    ["image/jpeg", "image/jpg", "image/png", "application/pdf"]
        .iter()
        .any(|ok| media.eq_ignore_ascii_case(ok))
}

/// Streams the body: its byte count, with `hash` its SHA-256 (else ""), and
/// whether it ended cleanly.
async fn read_body(mut body: Incoming, hash: bool) -> (u64, String, Result<(), hyper::Error>) {
    let mut ctx = hash.then(|| digest::Context::new(&digest::SHA256));
    let mut n = 0u64;
    let result = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                    if let Some(ctx) = &mut ctx {
                        ctx.update(data);
                    }
                }
            }
            Some(Err(e)) => break Err(e),
        }
    };
    let sha = ctx.map_or_else(String::new, |c| hex_lower(c.finish().as_ref()));
    (n, sha, result)
}

async fn upload(
    req: Request<Incoming>,
    state: &State,
    conn_id: u64,
) -> Result<Resp, DropConnection> {
    let seq = state.next_seq();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let route = route(&path);
    let auth = parse_authorization(&parts.headers);
    let owner: Option<Owner> = auth.as_ref().and_then(|(_, t)| state.lookup(t));
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .to_ascii_lowercase()
                .contains("chunked")
        });
    let mut rec = UploadRecord {
        path: path.clone(),
        kind: route.as_ref().map_or("other", |r| r.kind).to_owned(),
        target_id: route.as_ref().and_then(|r| r.id.clone()),
        company: owner.as_ref().map(|o| o.company.clone()),
        user: owner.as_ref().and_then(|o| o.user.clone()),
        auth_scheme: auth.as_ref().map(|(s, _)| s.clone()),
        token: auth.as_ref().map(|(_, t)| t.clone()),
        content_type: header_str(&parts.headers, header::CONTENT_TYPE),
        content_length,
        chunked,
        received_bytes: 0,
        sha256_hex: String::new(),
        complete: false,
        status: 0,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        image_id: None,
        method: parts.method.as_str().to_owned(),
        target: parts.uri.to_string(),
        query: parts.uri.query().map(str::to_owned),
        connection_id: conn_id,
        fault: None,
        error_message: None,
    };

    let (received, sha, result) = read_body(body, state.body_digest()).await;
    rec.received_bytes = received;
    rec.sha256_hex = sha;
    if let Err(e) = result {
        tracing::debug!(seq, conn_id, path = %path, kind = %rec.kind, received, error = %e,
            "sandbox upload aborted by the client");
        state.record(seq, rec);
        return Err(DropConnection);
    }
    rec.complete = true;

    let is_upload = route.is_some() && parts.method == Method::POST;
    let fault = if is_upload { state.pop_fault() } else { None };
    rec.fault = fault.as_ref().map(|f| f.name().to_owned());
    let mut delay = None;
    let answer = match fault {
        None => normal_answer(
            state,
            &parts.method,
            &path,
            route.as_ref(),
            &rec,
            owner.as_ref(),
        ),
        Some(Fault::Delay { millis }) => {
            delay = Some(Duration::from_millis(millis));
            normal_answer(
                state,
                &parts.method,
                &path,
                route.as_ref(),
                &rec,
                owner.as_ref(),
            )
        }
        Some(Fault::Reset) => {
            tracing::debug!(seq, conn_id, path = %path, "sandbox fault: dropping the connection");
            state.record(seq, rec);
            return Err(DropConnection);
        }
        Some(Fault::Status {
            status,
            message,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut a = Answer::error(state, status, message);
            a.retry_after = retry_after.and_then(|r| HeaderValue::from_str(&r).ok());
            a
        }
        Some(Fault::MalformedXml) => Answer {
            status: StatusCode::CREATED,
            content_type: Some(XML.to_owned()),
            body: format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><Image xmlns=\"http://www.concursolutions.com/api/image/2011/02\"><Id>{}</Image",
                concur_id()
            ),
            retry_after: None,
            location: None,
            allow_post: false,
            image_id: None,
            error_message: None,
        },
        Some(Fault::Raw {
            status,
            content_type,
            body,
            retry_after,
            location,
        }) => Answer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            content_type: Some(content_type),
            body,
            retry_after: retry_after.and_then(|r| HeaderValue::from_str(&r).ok()),
            location: location.and_then(|l| HeaderValue::from_str(&l).ok()),
            allow_post: false,
            image_id: None,
            error_message: None,
        },
    };
    rec.status = answer.status.as_u16();
    rec.image_id = answer.image_id.clone();
    rec.error_message = answer.error_message.clone();
    tracing::debug!(
        seq,
        conn_id,
        method = %parts.method,
        path = %path,
        kind = %rec.kind,
        company = rec.company.as_deref().unwrap_or("-"),
        received,
        status = rec.status,
        fault = rec.fault.as_deref().unwrap_or("-"),
        "sandbox upload answered"
    );
    state.record(seq, rec);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    Ok(answer.into_response())
}

/// The answer of a well-behaved Concur.
fn normal_answer(
    state: &State,
    method: &Method,
    path: &str,
    route: Option<&Route>,
    rec: &UploadRecord,
    owner: Option<&Owner>,
) -> Answer {
    let Some(route) = route else {
        return Answer::error(
            state,
            StatusCode::NOT_FOUND,
            format!("No HTTP resource was found that matches the request URI '{path}'."),
        );
    };
    if method != Method::POST {
        let mut a = Answer::error(
            state,
            StatusCode::METHOD_NOT_ALLOWED,
            format!("The requested resource does not support http method '{method}'."),
        );
        a.allow_post = true;
        return a;
    }
    if rec.token.is_none() {
        return Answer::error(
            state,
            StatusCode::UNAUTHORIZED,
            "Authorization has been denied for this request: missing or malformed Authorization header.",
        );
    }
    let owner = match owner {
        None => {
            return Answer::error(
                state,
                StatusCode::FORBIDDEN,
                "The access token is not valid.",
            );
        }
        Some(o) if o.expired => {
            return Answer::error(
                state,
                StatusCode::FORBIDDEN,
                "The access token has expired.",
            );
        }
        Some(o) => o,
    };
    match rec.content_type.as_deref() {
        Some(ct) if content_type_accepted(ct) => {}
        Some(ct) => {
            return Answer::error(
                state,
                StatusCode::BAD_REQUEST,
                format!(
                    "Unsupported content type '{ct}'. Supported types: image/jpeg, image/jpg, image/png, application/pdf."
                ),
            );
        }
        None => {
            return Answer::error(
                state,
                StatusCode::BAD_REQUEST,
                "The Content-Type header is required.",
            );
        }
    }
    if rec.content_length.is_none() {
        let message = if rec.chunked {
            "chunked uploads are not supported"
        } else {
            "Content-Length is required"
        };
        return Answer::error(state, StatusCode::BAD_REQUEST, message);
    }
    match (route.kind, route.id.as_deref()) {
        ("receipt", _) => Answer::created(concur_id()),
        (kind @ ("expenseentry" | "invoice"), Some(id)) => {
            if state.attach(&owner.company, kind, id) {
                Answer::created(id.to_owned())
            } else {
                Answer::error(
                    state,
                    StatusCode::BAD_REQUEST,
                    "An image already exists for this entry.",
                )
            }
        }
        (_, Some(id)) => Answer::created(id.to_owned()),
        (_, None) => Answer::created(concur_id()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match() {
        assert_eq!(
            route("/api/image/v1.0/receipt"),
            Some(Route {
                kind: "receipt",
                id: None
            })
        );
        assert_eq!(
            route("/API/Image/V1.0/ExpenseEntry/abc"),
            Some(Route {
                kind: "expenseentry",
                id: Some("abc".into())
            })
        );
        assert_eq!(
            route("/api/image/v1.1/invoice/X1"),
            Some(Route {
                kind: "invoice",
                id: Some("X1".into())
            })
        );
        assert_eq!(
            route("/api/image/v1.0/report/R"),
            Some(Route {
                kind: "report",
                id: Some("R".into())
            })
        );
        assert_eq!(route("/api/image/v1.1/receipt"), None);
        assert_eq!(route("/api/image/v1.0/receipt/x"), None);
        assert_eq!(route("/api/image/v1.0/report"), None);
        assert_eq!(route("/api/image/v1.0/report/"), None);
        assert_eq!(route("/api/image/v1.0/report/a/b"), None);
        assert_eq!(route("/api/image/v1.0/other/a"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn content_types() {
        assert!(content_type_accepted("image/jpeg"));
        assert!(content_type_accepted("IMAGE/PNG; name=x.png"));
        assert!(content_type_accepted("application/pdf"));
        assert!(content_type_accepted("image/jpg"));
        assert!(!content_type_accepted("image/gif"));
        assert!(!content_type_accepted("text/plain"));
    }
}
