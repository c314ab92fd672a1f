//! The one error type of the request path, and its one mapping to responses.
//!
//! Every stage returns [`GatewayError`]; [`GatewayError::into_response`] turns it
//! into an RFC 9457 `application/problem+json` body carrying the stable `code` of
//! `docs/errors.md` and the request id. Internal detail (sources, upstream messages that
//! are not Concur's own `Message`) stays in the logs.
//!
//! Secrets never reach this type's messages: variants carry reasons, never tokens.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::inspect::{RejectCode, Rejection};

/// Boxed error used for body and transport errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The gateway's response body: every answer is small and fully built.
pub type ResponseBody = Full<Bytes>;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `code` of an error response, put in the response's extensions so the access
/// log and the metrics can read it without parsing the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// An error answer from Concur: its status, its `Message`, its translated body.
#[derive(Debug)]
pub struct ConcurError {
    pub status: StatusCode,
    pub message: String,
    pub body: Option<serde_json::Value>,
    pub retry_after: Option<HeaderValue>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the target ID must be 1 to 128 characters of A-Z a-z 0-9 $ _ -")]
    InvalidId,
    #[error("the request body is empty")]
    EmptyBody,
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the bearer token is not valid: {0}")]
    InvalidToken(String),
    #[error("no Concur credential may act for this caller on this route")]
    NoCredential,
    #[error("no such route")]
    NotFound,
    #[error("this route only accepts POST")]
    MethodNotAllowed,
    #[error("the client stopped sending the body for longer than {0:?}")]
    BodyTimeout(Duration),
    #[error("the client sent the body slower than {min_bytes_per_s} bytes/s over 10 s")]
    BodyTooSlow { min_bytes_per_s: u64 },
    #[error("the body was still arriving after {0:?}")]
    BodyDeadline(Duration),
    #[error("the body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Rejected(Rejection),
    #[error("the upload contains malware")]
    MalwareDetected,
    #[error("{}", rate_limited_detail(scope, *retry_after_s))]
    RateLimited {
        scope: &'static str,
        retry_after_s: u64,
    },
    #[error("Concur could not be reached")]
    UpstreamUnavailable(#[source] BoxError),
    #[error("Concur refused the gateway's credential")]
    UpstreamAuthFailed,
    /// A refreshing credential whose refresh token (or client) Concur rejected:
    /// unusable until the credentials file provides a new one.
    #[error(
        "the Concur credential for this caller can no longer be refreshed; an operator must provide a new refresh token"
    )]
    CredentialUnusable,
    #[error("Concur's answer could not be read: {0}")]
    UpstreamInvalidResponse(String),
    #[error("the gateway is at capacity; retry shortly")]
    Overloaded { retry_after_s: u64 },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the malware scanner is unavailable")]
    ScanUnavailable,
    /// The shared store is needed (a refresh that must hold the lock) and
    /// does not answer, or (`unsealable`) holds the credential's token
    /// state sealed with another `store.encryption_key_file` than this
    /// replica's.
    #[error("{}; retry in {retry_after_s} s", store_why(*unsealable))]
    StoreUnavailable {
        retry_after_s: u64,
        unsealable: bool,
    },
    #[error("Concur did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    /// Concur answered with an error (boxed: it is the largest variant).
    #[error("Concur answered {}: {}", .0.status, .0.message)]
    Concur(Box<ConcurError>),
    /// The client's body failed or ended early (it disconnected). Nobody reads
    /// this answer; the status and code are for logs and metrics.
    #[error("the client aborted the upload")]
    ClientAborted(String),
    /// The request's framing or head breaks RFC 9112 (no or several `Host`,
    /// several `Authorization` headers, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A malformed `Idempotency-Key` (or none where one is required).
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(&'static str),
    /// The same key is in flight (on any replica).
    #[error("a request with this Idempotency-Key is in progress; retry in {retry_after_s} s")]
    IdempotencyConflict { retry_after_s: u64 },
    /// The same key with another request.
    #[error(
        "this Idempotency-Key was used with another request (route, target, media type or body)"
    )]
    IdempotencyKeyReused,
    /// A `Transfer-Encoding` other than a single `chunked` (RFC 9112 §6.1).
    #[error("transfer coding not implemented: only `chunked` is accepted")]
    NotImplemented,
    /// The request head (request line and header fields) is over the limit.
    #[error("the request head exceeds {limit} bytes or {max_fields} header fields")]
    HeadTooLarge { limit: usize, max_fields: usize },
    #[error("internal error")]
    Internal(String),
}

/// The detail of a `429 rate_limited`: the caller's own limit (`user`,
/// `company`), or Concur's back-off (`concur`: Concur answered 429 or 503
/// with `Retry-After` for the company's credential).
fn rate_limited_detail(scope: &str, retry_after_s: u64) -> String {
    match scope {
        "concur" => format!(
            "Concur asked for uploads with this credential to pause; retry in {retry_after_s} s"
        ),
        _ => format!("rate limit exceeded for this {scope}; retry in {retry_after_s} s"),
    }
}

/// What a `store_unavailable` answer says happened.
fn store_why(unsealable: bool) -> &'static str {
    if unsealable {
        "this replica cannot open the shared store's token state of this credential: its store.encryption_key_file differs from the other replicas'"
    } else {
        "the shared store is unavailable"
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidId | EmptyBody | InvalidRequest(_) | InvalidIdempotencyKey(_) => {
                StatusCode::BAD_REQUEST
            }
            IdempotencyConflict { .. } => StatusCode::CONFLICT,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            NotImplemented => StatusCode::NOT_IMPLEMENTED,
            HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MissingToken | InvalidToken(_) => StatusCode::UNAUTHORIZED,
            NoCredential => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTimeout(_) | BodyTooSlow { .. } | BodyDeadline(_) => StatusCode::REQUEST_TIMEOUT,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejected(r) if r.code == RejectCode::EmptyBody => StatusCode::BAD_REQUEST,
            Rejected(r) if r.code == RejectCode::UnsupportedMediaType => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Rejected(_) | MalwareDetected => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpstreamUnavailable(_)
            | UpstreamAuthFailed
            | CredentialUnusable
            | UpstreamInvalidResponse(_) => StatusCode::BAD_GATEWAY,
            Overloaded { .. } | ShuttingDown | ScanUnavailable | StoreUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Concur(c) => c.status,
            ClientAborted(_) => StatusCode::BAD_REQUEST,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code (`docs/errors.md`).
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidId => "invalid_id",
            EmptyBody => "empty_body",
            MissingToken => "missing_token",
            InvalidToken(_) => "invalid_token",
            NoCredential => "no_credential",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            BodyTimeout(_) | BodyTooSlow { .. } | BodyDeadline(_) => "body_timeout",
            BodyTooLarge { .. } => "body_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            Rejected(r) => r.code.as_str(),
            MalwareDetected => "malware_detected",
            RateLimited { .. } => "rate_limited",
            UpstreamUnavailable(_) => "upstream_unavailable",
            UpstreamAuthFailed | CredentialUnusable => "upstream_auth_failed",
            UpstreamInvalidResponse(_) => "upstream_invalid_response",
            Overloaded { .. } => "overloaded",
            ShuttingDown => "shutting_down",
            ScanUnavailable => "scan_unavailable",
            StoreUnavailable { .. } => "store_unavailable",
            UpstreamTimeout(_) => "upstream_timeout",
            Concur(_) => "concur_error",
            ClientAborted(_) => "client_aborted",
            InvalidRequest(_) => "invalid_request",
            InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            IdempotencyConflict { .. } => "idempotency_conflict",
            IdempotencyKeyReused => "idempotency_key_reused",
            NotImplemented => "not_implemented",
            HeadTooLarge { .. } => "request_head_too_large",
            Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidId => "Invalid target ID",
            EmptyBody => "Empty body",
            MissingToken => "Missing bearer token",
            InvalidToken(_) => "Invalid bearer token",
            NoCredential => "No Concur credential",
            NotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            BodyTimeout(_) | BodyTooSlow { .. } | BodyDeadline(_) => "Body timeout",
            BodyTooLarge { .. } => "Body too large",
            UnsupportedMediaType(_) => "Unsupported media type",
            Rejected(r) => match r.code {
                RejectCode::ContentMismatch => "Content does not match its type",
                RejectCode::MalformedImage => "Malformed image",
                RejectCode::PdfEncrypted => "Encrypted PDF",
                RejectCode::PdfActiveContent => "PDF with active content",
                RejectCode::UnsupportedMediaType => "Unsupported media type",
                RejectCode::EmptyBody => "Empty body",
            },
            MalwareDetected => "Malware detected",
            RateLimited { .. } => "Rate limited",
            UpstreamUnavailable(_) => "Concur unavailable",
            UpstreamAuthFailed | CredentialUnusable => "Concur authentication failed",
            UpstreamInvalidResponse(_) => "Invalid answer from Concur",
            Overloaded { .. } => "Overloaded",
            ShuttingDown => "Shutting down",
            ScanUnavailable => "Malware scanner unavailable",
            StoreUnavailable { .. } => "Shared store unavailable",
            UpstreamTimeout(_) => "Concur timed out",
            Concur(_) => "Concur error",
            ClientAborted(_) => "Client aborted",
            InvalidRequest(_) => "Invalid request",
            InvalidIdempotencyKey(_) => "Invalid Idempotency-Key",
            IdempotencyConflict { .. } => "Idempotency-Key in use",
            IdempotencyKeyReused => "Idempotency-Key reused",
            NotImplemented => "Not implemented",
            HeadTooLarge { .. } => "Request head too large",
            Internal(_) => "Internal error",
        }
    }

    /// The client-facing detail. For upstream transport failures the source chain
    /// stays in the logs; the client learns only which side failed.
    fn detail(&self) -> String {
        match self {
            GatewayError::Rejected(r) => r.detail.clone(),
            GatewayError::Concur(c) => c.message.clone(),
            GatewayError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Whether the failure is the upstream's (for logs and metrics), not the client's.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            GatewayError::UpstreamUnavailable(_)
                | GatewayError::UpstreamAuthFailed
                | GatewayError::CredentialUnusable
                | GatewayError::UpstreamInvalidResponse(_)
                | GatewayError::UpstreamTimeout(_)
                | GatewayError::Concur(_)
        )
    }

    /// The one mapping to an HTTP response.
    pub fn into_response(self, request_id: &str) -> Response<ResponseBody> {
        let status = self.status();
        let code = self.code();
        let mut problem = serde_json::Map::new();
        problem.insert(
            "type".into(),
            format!("https://concur-gateway.dev/errors/{code}").into(),
        );
        problem.insert("title".into(), self.title().into());
        problem.insert("status".into(), status.as_u16().into());
        problem.insert("detail".into(), self.detail().into());
        problem.insert("code".into(), code.into());
        problem.insert("request_id".into(), request_id.into());
        if let GatewayError::Concur(c) = &self
            && let Some(body) = &c.body
        {
            problem.insert("concur".into(), body.clone());
        }
        let body = serde_json::to_vec(&serde_json::Value::Object(problem))
            .expect("a JSON map always serialises");
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            GatewayError::MissingToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"concur-gateway\", error=\"invalid_request\", error_description=\"missing bearer token\"",
                    ),
                );
            }
            GatewayError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"concur-gateway\", error=\"invalid_token\"",
                    ),
                );
            }
            GatewayError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            GatewayError::RateLimited { retry_after_s, .. }
            | GatewayError::Overloaded { retry_after_s }
            | GatewayError::StoreUnavailable { retry_after_s, .. }
            | GatewayError::IdempotencyConflict { retry_after_s } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            GatewayError::ShuttingDown | GatewayError::ScanUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::Concur(c) => {
                if let Some(v) = &c.retry_after {
                    headers.insert(header::RETRY_AFTER, v.clone());
                }
            }
            _ => {}
        }
        if matches!(
            self,
            GatewayError::BodyTimeout(_)
                | GatewayError::BodyTooSlow { .. }
                | GatewayError::BodyDeadline(_)
                | GatewayError::InvalidRequest(_)
                | GatewayError::NotImplemented
                | GatewayError::HeadTooLarge { .. }
        ) {
            // The rest of the body may never come, or its framing cannot be
            // trusted: don't keep the connection.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(r: Response<ResponseBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn problem_json_shape_is_exact() {
        let r = GatewayError::InvalidId.into_response("req-1");
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            r.extensions().get::<ErrorCode>(),
            Some(&ErrorCode("invalid_id"))
        );
        assert_eq!(
            body_json(r).await,
            serde_json::json!({
                "type": "https://concur-gateway.dev/errors/invalid_id",
                "title": "Invalid target ID",
                "status": 400,
                "detail": "the target ID must be 1 to 128 characters of A-Z a-z 0-9 $ _ -",
                "code": "invalid_id",
                "request_id": "req-1",
            })
        );
    }

    #[tokio::test]
    async fn concur_errors_carry_the_translated_body_and_retry_after() {
        let concur =
            serde_json::json!({"Error": {"Message": "busy", "Server-Time": "t", "Id": "X"}});
        let r = GatewayError::Concur(Box::new(ConcurError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "busy".into(),
            body: Some(concur.clone()),
            retry_after: Some(HeaderValue::from_static("7")),
        }))
        .into_response("r");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let v = body_json(r).await;
        assert_eq!(v["code"], "concur_error");
        assert_eq!(v["detail"], "busy");
        assert_eq!(v["concur"], concur);
    }

    #[test]
    fn auth_errors_carry_www_authenticate_with_an_error_parameter() {
        for e in [
            GatewayError::MissingToken,
            GatewayError::InvalidToken("expired".into()),
        ] {
            let r = e.into_response("r");
            let v = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(v.starts_with("Bearer ") && v.contains("error=\""), "{v}");
        }
        let r = GatewayError::MethodNotAllowed.into_response("r");
        assert_eq!(r.headers()[header::ALLOW], "POST");
    }

    #[test]
    fn every_code_has_its_spec_status() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::EmptyBody, 400, "empty_body"),
            (
                GatewayError::InvalidRequest("two Host headers"),
                400,
                "invalid_request",
            ),
            (GatewayError::NotImplemented, 501, "not_implemented"),
            (
                GatewayError::InvalidIdempotencyKey("x"),
                400,
                "invalid_idempotency_key",
            ),
            (
                GatewayError::IdempotencyConflict { retry_after_s: 1 },
                409,
                "idempotency_conflict",
            ),
            (
                GatewayError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
            ),
            (
                GatewayError::HeadTooLarge {
                    limit: 65536,
                    max_fields: 64,
                },
                431,
                "request_head_too_large",
            ),
            (GatewayError::NoCredential, 403, "no_credential"),
            (GatewayError::NotFound, 404, "not_found"),
            (
                GatewayError::BodyTimeout(Duration::from_secs(1)),
                408,
                "body_timeout",
            ),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "body_too_large",
            ),
            (
                GatewayError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (
                GatewayError::Rejected(Rejection::malformed("x")),
                422,
                "malformed_image",
            ),
            (GatewayError::MalwareDetected, 422, "malware_detected"),
            (
                GatewayError::RateLimited {
                    scope: "user",
                    retry_after_s: 1,
                },
                429,
                "rate_limited",
            ),
            (
                GatewayError::UpstreamAuthFailed,
                502,
                "upstream_auth_failed",
            ),
            (
                GatewayError::Overloaded { retry_after_s: 1 },
                503,
                "overloaded",
            ),
            (GatewayError::ShuttingDown, 503, "shutting_down"),
            (GatewayError::ScanUnavailable, 503, "scan_unavailable"),
            (
                GatewayError::StoreUnavailable {
                    retry_after_s: 5,
                    unsealable: false,
                },
                503,
                "store_unavailable",
            ),
            (
                GatewayError::UpstreamTimeout(Duration::from_secs(1)),
                504,
                "upstream_timeout",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().as_u16(), e.code()), (status, code));
        }
    }
}
