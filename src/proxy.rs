//! The terminal service: everything that depends on the route.
//!
//! By the time a request gets here the stack has given it a request id, an
//! authenticated [`Identity`] and a rate-limit admission. [`handle`] then reads
//! as the rest of the request path, in order:
//!
//! 1. `route::parse`: which of the four routes, and a valid target ID;
//! 2. `Content-Type` and `Content-Length` checks (415, 413, 400), before reading;
//! 3. `credentials::select`: the Concur credential that may act for this caller
//!    (a credential Concur has refused fails here, before the body is read);
//! 4. `InspectBody`: the first chunk is read and checked *before* Concur is
//!    contacted; a body sent with `Content-Length` then streams to Concur through
//!    the inspection with its tail held back, while a chunked body is spooled
//!    (bounded) and inspected whole, so that Concur always gets a `Content-Length`;
//!    with `[scan]` the same stream is fed to clamd (`scan.rs`), and the tail
//!    waits for its verdict too;
//! 5. `TokenManager::access`: the credential's access token (a refreshing one is
//!    refreshed first if it could expire during the upload) and base URL, then
//!    the exchange with Concur under one deadline (`upstream.timeout_s`); a 403
//!    from Concur marks the access token stale for the next request;
//! 6. `transform::xml_to_json` on Concur's answer (or the XML verbatim when the
//!    client prefers it), or the mapping of Concur's error.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

use crate::auth::Identity;
use crate::credentials;
use crate::credentials::refresh::Access;
use crate::error::{BoxError, ConcurError, GatewayError, ResponseBody};
use crate::gateway::Gateway;
use crate::inspect::body::{BodyTiming, InspectBody, Outcome};
use crate::inspect::{Inspector, MediaType};
use crate::metrics::{CodeLabel, DirectionLabel, RouteLabel};
use crate::request_id::{self, RequestId, X_REQUEST_ID};
use crate::route::{self, Route};
use crate::spool::Spool;
use crate::stack::RequestLog;
use crate::transform;
use crate::upstream::UpstreamBody;

/// Serves one request; errors become problem+json responses.
pub async fn serve<B>(gw: Arc<Gateway>, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let request_id = request_id::of(&req).to_owned();
    let log = req.extensions().get::<RequestLog>().cloned();
    match handle(&gw, req, log.as_ref()).await {
        Ok(response) => response,
        Err(error) => {
            if matches!(
                error,
                GatewayError::Rejected(_) | GatewayError::MalwareDetected
            ) {
                gw.metrics
                    .inspection_rejections
                    .get_or_create(&CodeLabel { code: error.code() })
                    .inc();
            }
            if let Some(log) = &log {
                log.update(|f| f.error = Some(error.to_string()));
            }
            error.into_response(&request_id)
        }
    }
}

async fn handle<B>(
    gw: &Gateway,
    req: Request<B>,
    log: Option<&RequestLog>,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let route = route::parse(&parts.method, parts.uri.path())?;
    if let Some(log) = log {
        log.update(|f| f.route = Some(route.kind.as_str()));
    }
    let identity = parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
        GatewayError::Internal("request reached the proxy unauthenticated".into())
    })?;

    // Checks that need no body byte.
    let media = content_type(&parts.headers)?;
    let max = gw.config.server.max_body_bytes;
    let declared_len = content_length(&parts.headers)?;
    match declared_len {
        Some(0) => return Err(GatewayError::EmptyBody),
        Some(n) if n > max => return Err(GatewayError::BodyTooLarge { limit: max }),
        _ => {}
    }
    let credentials = gw.credentials.current();
    let (credential, acting) = credentials::select(&credentials, &identity, route.kind)
        .ok_or(GatewayError::NoCredential)?;
    if let Some(log) = log {
        let acting = format!("{} ({acting:?})", credential.label());
        log.update(|f| f.acting = Some(acting));
    }
    // A credential Concur has refused fails before any body byte is read.
    gw.tokens.check_usable(&credential)?;

    // The body: the first chunk is checked before Concur is contacted.
    let inspector = Inspector::new(media, &gw.config.inspect.limits);
    let mut body = InspectBody::new(
        body,
        inspector,
        gw.config.inspect.digest,
        max,
        declared_len,
        BodyTiming {
            idle: gw.config.server.body_idle_timeout,
            min_rate: gw.config.server.min_body_rate,
            deadline: gw.config.server.body_deadline,
        },
    );
    let request_id = parts.extensions.get::<RequestId>();
    if let Some(scanner) = &gw.scanner {
        body = body.with_scan(scanner.session(request_id.map_or("", RequestId::as_str)));
    }
    let outcome = body.outcome();
    let finish_log = |o: &Outcome| {
        gw.metrics
            .body_bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(o.received);
        if let Some(log) = log {
            log.update(|f| {
                f.bytes = o.received;
                f.sha = o.digest_hex.clone();
            });
        }
    };
    if let Err(e) = body.prime().await {
        finish_log(&outcome.lock().expect("outcome lock"));
        return Err(e);
    }
    let (upstream_body, length): (UpstreamBody, u64) = match declared_len {
        Some(n) => (body.boxed_unsync(), n),
        None => {
            let spooled = Spool::collect(
                &mut body,
                gw.config.server.spool_memory_bytes,
                &gw.spool_budget,
            )
            .await;
            finish_log(&outcome.lock().expect("outcome lock"));
            let spool = spooled?;
            let len = spool.len();
            (spool.into_body().await?, len)
        }
    };

    // The access token, refreshed first when what is left of it could not
    // cover this upload (never in the middle of a body: nothing is sent yet).
    let access = gw.tokens.access(&credential).await?;
    let _slot = gw.upstream.acquire(&identity.company).await?;
    let request = upstream_request(
        gw,
        &route,
        &access,
        media,
        request_id,
        length,
        upstream_body,
    )?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + gw.upstream.timeout;
    let exchange = tokio::time::timeout_at(deadline, gw.upstream.send(request)).await;
    // A failure of our own body (rejection, timeout, client gone) explains any
    // upstream error that followed it, so it is checked first.
    let body_failure = outcome.lock().expect("outcome lock").failure.take();
    if declared_len.is_some() {
        finish_log(&outcome.lock().expect("outcome lock"));
    }
    if let Some(failure) = body_failure {
        return Err(failure);
    }
    let response = match exchange {
        Err(_) => return Err(GatewayError::UpstreamTimeout(gw.upstream.timeout)),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "Concur exchange failed");
            return Err(GatewayError::UpstreamUnavailable(Box::new(e)));
        }
        Ok(Ok(response)) => response,
    };
    let (head, upstream_body) = response.into_parts();
    if matches!(
        head.status,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
    ) {
        // Concur's answer to an expired or revoked token: refresh before the
        // next request (this upload was streamed and cannot be replayed).
        gw.tokens.mark_stale(&credential, &access);
    }
    let read = Limited::new(upstream_body, transform::MAX_XML_BYTES).collect();
    let bytes = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout(gw.upstream.timeout)),
        Ok(Err(e)) => {
            return Err(if e.is::<http_body_util::LengthLimitError>() {
                GatewayError::UpstreamInvalidResponse(
                    transform::TransformError::TooLarge.to_string(),
                )
            } else {
                GatewayError::UpstreamUnavailable(e)
            });
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    gw.metrics
        .upstream_duration
        .get_or_create(&RouteLabel {
            route: route.kind.as_str(),
        })
        .observe(started.elapsed().as_secs_f64());
    let o = outcome.lock().expect("outcome lock");
    if head.status.is_success() && o.accepted {
        gw.metrics
            .body_bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(length);
    }
    let repr_digest = o.repr_digest.clone();
    drop(o);
    if let Some(log) = log {
        log.update(|f| {
            f.upstream_status = Some(head.status.as_u16());
            f.upstream_ms = Some(started.elapsed().as_millis() as u64);
        });
    }
    if matches!(
        head.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(wait) = retry_after(&head.headers)
    {
        // Concur is throttling: hold this company's callers back instead of
        // hammering it (they get 429 with the remaining time).
        tracing::warn!(
            company = %identity.company,
            wait_s = wait.as_secs(),
            status = head.status.as_u16(),
            "Concur asked to back off"
        );
        gw.back_off_company(&identity.company, wait);
    }
    translate(
        head.status,
        &head.headers,
        bytes,
        &parts.headers,
        repr_digest,
        log,
    )
}

/// `Retry-After` as delta-seconds (Concur's form). An HTTP-date is not
/// interpreted: the client still receives the header as Concur sent it.
fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// `Content-Type` must be one of the four image types (`415` otherwise).
fn content_type(headers: &HeaderMap) -> Result<MediaType, GatewayError> {
    let value = headers.get(header::CONTENT_TYPE).ok_or_else(|| {
        GatewayError::UnsupportedMediaType(
            "Content-Type is required: application/pdf, image/jpeg, image/jpg or image/png".into(),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(MediaType::from_content_type)
        .ok_or_else(|| {
            GatewayError::UnsupportedMediaType(
                "Content-Type must be application/pdf, image/jpeg, image/jpg or image/png".into(),
            )
        })
}

/// The declared length, if any. hyper has already refused malformed or
/// conflicting `Content-Length` headers on the client connection.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, GatewayError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(None);
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(GatewayError::Internal("unparsable Content-Length".into())),
    }
}

/// Builds the request to Concur from scratch: nothing of the client's headers is
/// copied but the request id, so the caller's JWT, cookies and hop-by-hop
/// headers can never reach Concur.
fn upstream_request(
    gw: &Gateway,
    route: &Route,
    access: &Access,
    media: MediaType,
    request_id: Option<&RequestId>,
    length: u64,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, GatewayError> {
    let base = access.base.as_ref();
    let mut builder = Request::post(gw.upstream.uri_at(base, &route.upstream_path))
        .header(header::HOST, gw.upstream.authority_at(base))
        .header(header::AUTHORIZATION, access.authorization.clone())
        .header(header::CONTENT_TYPE, media.mime())
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT, "application/xml")
        .header(
            header::USER_AGENT,
            concat!("concur-gateway/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(id) = request_id {
        builder = builder.header(X_REQUEST_ID, id.header_value());
    }
    builder
        .body(body)
        .map_err(|e| GatewayError::Internal(format!("building the upstream request: {e}")))
}

/// Concur's answer, translated for the client.
fn translate(
    status: StatusCode,
    upstream_headers: &HeaderMap,
    body: Bytes,
    client_headers: &HeaderMap,
    repr_digest: Option<String>,
    log: Option<&RequestLog>,
) -> Result<Response<ResponseBody>, GatewayError> {
    let retry_after = upstream_headers.get(header::RETRY_AFTER).cloned();
    if status == StatusCode::UNAUTHORIZED {
        return Err(GatewayError::UpstreamAuthFailed);
    }
    if !status.is_success() {
        let looks_xml = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'<');
        if !looks_xml {
            // A load balancer's HTML or an empty body: keep Concur's status.
            return Err(GatewayError::Concur(Box::new(ConcurError {
                status,
                message: format!(
                    "Concur answered {} without an XML error body",
                    status.as_u16()
                ),
                body: None,
                retry_after,
            })));
        }
        let json = transform::xml_to_json(&body)
            .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
        let message = transform::error_message(&json)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "Concur answered {}",
                    status.canonical_reason().unwrap_or("an error")
                )
            });
        return Err(GatewayError::Concur(Box::new(ConcurError {
            status,
            message,
            body: Some(json),
            retry_after,
        })));
    }

    let json = transform::xml_to_json(&body)
        .map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
    if let Some(log) = log
        && let Some(id) = json.pointer("/Image/Id").and_then(|v| v.as_str())
    {
        let id = id.to_owned();
        log.update(|f| f.image_id = Some(id));
    }
    let (content_type, out) = if prefers_xml(client_headers) {
        let ct = upstream_headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/xml"));
        (ct, body)
    } else {
        let bytes = serde_json::to_vec(&json)
            .map_err(|e| GatewayError::Internal(format!("serialising JSON: {e}")))?;
        (
            HeaderValue::from_static("application/json"),
            Bytes::from(bytes),
        )
    };
    let mut response = Response::new(Full::new(out));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(location) = upstream_headers.get(header::LOCATION) {
        headers.insert(header::LOCATION, location.clone());
    }
    if let Some(digest) = repr_digest.and_then(|d| HeaderValue::try_from(d).ok()) {
        headers.insert("repr-digest", digest);
    }
    Ok(response)
}

/// Whether `Accept` ranks `application/xml` (or `text/xml`) above JSON.
/// No `Accept`, `*/*` or a tie means JSON, the gateway's native answer.
pub fn prefers_xml(headers: &HeaderMap) -> bool {
    let mut xml = 0.0f32;
    let mut json = 0.0f32;
    let mut wildcard = 0.0f32;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = params
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0);
            match media.as_str() {
                "application/xml" | "text/xml" => xml = xml.max(q),
                "application/json" | "application/*" => json = json.max(q),
                "*/*" => wildcard = wildcard.max(q),
                _ => {}
            }
        }
    }
    xml > 0.0 && xml > json.max(wildcard)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_negotiation() {
        assert!(!prefers_xml(&HeaderMap::new()));
        assert!(prefers_xml(&accept("application/xml")));
        assert!(prefers_xml(&accept("text/xml")));
        assert!(prefers_xml(&accept(
            "application/xml, application/json;q=0.5"
        )));
        assert!(!prefers_xml(&accept(
            "application/json, application/xml;q=0.5"
        )));
        assert!(!prefers_xml(&accept("*/*")));
        assert!(!prefers_xml(&accept("application/xml, */*")));
        assert!(prefers_xml(&accept("application/xml, */*;q=0.1")));
        assert!(!prefers_xml(&accept("application/xml;q=0")));
    }
}
