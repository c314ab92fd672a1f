//! Request path, step 2 (see `ARCHITECTURE.md`).
//!
//! The request context: one [`RequestCtx`] per request, the facts that the
//! access log line and the metrics are made of.
//!
//! It is created by the outermost layer (`stack.rs`, access log) and travels
//! *by value*: down in the request's extensions, where each layer fills in
//! what it learnt (the identity, the refusal), and back up in the response's
//! extensions, where the access log takes it. The terminal service (`proxy.rs`)
//! takes it out of the request, runs its phases over `&mut RequestCtx`, and
//! puts it into whatever response it ends with, so every exit carries the same
//! facts, recorded once; no layer shares it behind a lock.

use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::request_id::RequestId;
use crate::route::RouteKind;

/// Facts about one request; see the module docs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub id: RequestId,
    /// When the stack first saw the request.
    pub started: Instant,
    /// The authenticated caller (set by the auth layer).
    pub identity: Option<Identity>,
    pub route: Option<RouteKind>,
    /// The Concur credential acting for the caller, as a label
    /// (`company/user (User)`): never the token.
    pub credential: Option<String>,
    pub body: BodyFacts,
    /// Concur's status and the time of the exchange with it.
    pub upstream: Option<(u16, Duration)>,
    /// The image id Concur gave a successful upload.
    pub image_id: Option<String>,
    /// Why the request failed, for the log (the client got the stable code).
    pub error: Option<String>,
    /// What became of the request's `Idempotency-Key`: `stored`, `replayed`.
    pub idempotency: Option<&'static str>,
    /// The `RateLimit` header value once the request went through admission.
    pub rate_limit: Option<String>,
    /// The request's trace (`telemetry.rs`): its server span and the
    /// gateway's tracer; empty without `[tracing]`.
    pub trace: opentelemetry::Context,
}

impl RequestCtx {
    pub fn new(id: RequestId) -> Self {
        Self {
            id,
            started: Instant::now(),
            identity: None,
            route: None,
            credential: None,
            body: BodyFacts::default(),
            upstream: None,
            image_id: None,
            error: None,
            idempotency: None,
            rate_limit: None,
            trace: opentelemetry::Context::new(),
        }
    }
}

/// What became of the request body, as the body adapter reports it once.
#[derive(Debug, Clone, Default)]
pub struct BodyFacts {
    /// Bytes received from the client.
    pub received: u64,
    /// `true` once the inspection (and the scan) accepted the whole body.
    pub accepted: bool,
    /// RFC 9530 `Repr-Digest` value (`sha-256=:…:`) of the accepted body.
    pub repr_digest: Option<String>,
    /// Hex digest of the accepted body, for the access log.
    pub digest_hex: Option<String>,
    /// SHA-256 of the accepted body, when it was computed (the digest is
    /// SHA-256, or an `Idempotency-Key` asked for it).
    pub sha256: Option<Vec<u8>>,
}
