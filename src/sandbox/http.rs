//! Small HTTP helpers shared by the sandbox's endpoints (the Image API in
//! `server.rs`, the OAuth2 token endpoint in `oauth.rs`, the control API in
//! `control.rs`). A leaf module: the endpoints import it, it imports none of them.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// The response type of every sandbox endpoint.
pub(crate) type Resp = Response<Full<Bytes>>;

/// A JSON response (control and token endpoints).
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Reads a small body completely (control and token endpoints).
pub(crate) async fn read_small_body(body: Incoming, limit: usize) -> Result<Bytes, String> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("cannot read the request body: {e}"))
}
