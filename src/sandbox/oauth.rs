//! `POST /oauth2/v0/token`: Concur's refresh-token grant, with refresh-token rotation.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::http::{Resp, json_response, read_small_body};
use super::state::{RefreshError, State};
use super::util::{parse_form, unix_secs};

const TOKEN_BODY_LIMIT: usize = 64 * 1024;
/// Concur's refresh tokens live six months.
const REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(180 * 24 * 3600);
const SCOPE: &str = "openid user COMPANY IMAGE receipts.read receipts.write expense.report.read expense.report.readwrite";

pub(crate) async fn handle(req: Request<Incoming>, state: &State) -> Resp {
    state.count_token_request();
    // As Concur does it: the refresh happens (and the token rotates) at
    // once; it is the answer that takes its time.
    let resp = answer(req, state).await;
    let delay = state.token_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    resp
}

async fn answer(req: Request<Incoming>, state: &State) -> Resp {
    let (parts, body) = req.into_parts();
    if parts.method != Method::POST {
        let mut resp = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint only accepts POST",
            None,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let form_ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let body = match read_small_body(body, TOKEN_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &e, None),
    };
    if !form_ct {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be application/x-www-form-urlencoded",
            None,
        );
    }
    let form = parse_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let grant_type = field("grant_type").unwrap_or("");
    if grant_type != "refresh_token" {
        tracing::debug!(grant_type, "sandbox token request: unsupported grant type");
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=refresh_token is supported by the sandbox",
            None,
        );
    }
    let (Some(client_id), Some(client_secret), Some(refresh_token)) = (
        field("client_id"),
        field("client_secret"),
        field("refresh_token"),
    ) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id, client_secret and refresh_token are required",
            None,
        );
    };
    match state.refresh(client_id, client_secret, refresh_token) {
        Ok(issued) => {
            tracing::debug!(
                client_id,
                serial = issued.serial,
                "sandbox token request: refreshed"
            );
            let expires_in = if issued.serial % 2 == 1 {
                json!(issued.expires_in.to_string())
            } else {
                json!(issued.expires_in)
            };
            let refresh_expires_in = unix_secs(state.now_system() + REFRESH_TOKEN_LIFETIME);
            json_response(
                StatusCode::OK,
                &json!({
                    "access_token": issued.access_token,
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "refresh_token": issued.refresh_token,
                    "refresh_expires_in": refresh_expires_in,
                    "scope": SCOPE,
                    "id_token": "x",
                    "geolocation": state.geolocation(),
                }),
            )
        }
        Err(RefreshError::UnknownClient | RefreshError::BadSecret) => {
            tracing::debug!(client_id, "sandbox token request: invalid client");
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Bad credentials: unknown client_id or wrong client_secret",
                Some(105),
            )
        }
        Err(RefreshError::BadRefreshToken) => {
            tracing::debug!(client_id, "sandbox token request: invalid refresh token");
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Incorrect or expired refresh token",
                Some(108),
            )
        }
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str, code: Option<u32>) -> Resp {
    let mut body = json!({ "error": error, "error_description": description });
    if let Some(code) = code {
        body["code"] = json!(code);
    }
    json_response(status, &body)
}
