//! `/_sandbox/*` control endpoints (plain JSON, no authentication).

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::http::{Resp, json_response, read_small_body};
use super::state::State;
use super::{Fault, SandboxToken};

const CONTROL_BODY_LIMIT: usize = 64 * 1024;

#[derive(Deserialize)]
struct ClockAdvance {
    advance_secs: u64,
}

pub(crate) async fn handle(req: Request<Incoming>, state: &State) -> Resp {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let method = parts.method;
    tracing::debug!(%method, path = %path, "sandbox control request");
    let body = match read_small_body(body, CONTROL_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    match (path.as_str(), &method) {
        ("/_sandbox/uploads", &Method::GET) => match serde_json::to_value(state.uploads()) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": e.to_string() }),
            ),
        },
        ("/_sandbox/uploads", &Method::DELETE) => {
            let n = state.clear_uploads();
            json_response(StatusCode::OK, &json!({ "cleared": n }))
        }
        ("/_sandbox/body-digest", &Method::GET) => {
            json_response(StatusCode::OK, &json!({ "on": state.body_digest() }))
        }
        ("/_sandbox/body-digest", &Method::PUT) => {
            #[derive(Deserialize)]
            struct Switch {
                on: bool,
            }
            match serde_json::from_slice::<Switch>(&body) {
                Ok(Switch { on }) => {
                    state.set_body_digest(on);
                    json_response(StatusCode::OK, &json!({ "on": on }))
                }
                Err(e) => bad_request(format!("invalid switch, expected {{\"on\": bool}}: {e}")),
            }
        }
        ("/_sandbox/faults", &Method::POST) => match serde_json::from_slice::<Fault>(&body) {
            Ok(fault) => {
                let n = state.push_fault(fault);
                json_response(StatusCode::OK, &json!({ "queued": n }))
            }
            Err(e) => bad_request(format!("invalid fault: {e}")),
        },
        ("/_sandbox/faults", &Method::GET) => match serde_json::to_value(state.faults()) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(e) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": e.to_string() }),
            ),
        },
        ("/_sandbox/faults", &Method::DELETE) => {
            let n = state.clear_faults();
            json_response(StatusCode::OK, &json!({ "cleared": n }))
        }
        ("/_sandbox/tokens", &Method::POST) => {
            match serde_json::from_slice::<SandboxToken>(&body) {
                Ok(token) => {
                    state.add_token(token, None);
                    json_response(StatusCode::OK, &json!({ "added": 1 }))
                }
                Err(e) => bad_request(format!("invalid token: {e}")),
            }
        }
        ("/_sandbox/oauth", &Method::GET) => json_response(
            StatusCode::OK,
            &json!({
                "token_requests": state.token_requests(),
                "refresh_tokens": state.refresh_tokens(),
            }),
        ),
        ("/_sandbox/clock", &Method::POST) => match serde_json::from_slice::<ClockAdvance>(&body) {
            Ok(c) => {
                state.advance_clock(Duration::from_secs(c.advance_secs));
                json_response(StatusCode::OK, &json!({ "advanced_secs": c.advance_secs }))
            }
            Err(e) => bad_request(format!("invalid clock advance: {e}")),
        },
        (
            "/_sandbox/uploads" | "/_sandbox/faults" | "/_sandbox/tokens" | "/_sandbox/oauth"
            | "/_sandbox/clock",
            _,
        ) => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": format!("method {method} not allowed on {path}") }),
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no control endpoint {path}") }),
        ),
    }
}

fn bad_request(message: String) -> Resp {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}
