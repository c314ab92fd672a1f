//! Request path, step 2 (see `ARCHITECTURE.md`).
//!
//! The tower stack, outermost layer first: top to bottom is request order.
//!
//! ```text
//! AccessLog      the request context (`context.rs`: request id echoed or
//!                generated), in-flight gauge, metrics, one structured log
//!                line per request from the context that comes back
//!   CatchPanic   a panic becomes a 500 problem+json; the connection survives
//!    Guard(framing)      RFC 9112 checks hyper leaves to us: head size, Host,
//!                        Transfer-Encoding, one Authorization (400/431/501)
//!     Guard(auth)        JWT -> Identity in the request context (401)
//!       Proxy            route, credential, admission under the limits
//!                        (store.rs: Concur back-off, uploads in flight,
//!                        request rate; 429), body, Concur, translation
//! ```
//!
//! Ordering constraints:
//! - AccessLog is outermost so that *every* answer, including 401s, 429s and
//!   panics, carries `X-Request-Id` and is logged and counted exactly once.
//! - CatchPanic sits inside AccessLog so a panic is still logged with its id.
//! - Framing precedes auth: a message whose framing cannot be trusted (two
//!   `Authorization` headers, say) is refused before any of it is believed.
//! - Auth precedes the proxy, where the limits are: limits are keyed by the
//!   authenticated identity, and unauthenticated traffic must not spend a
//!   caller's allowance. The admission under the limits is the proxy's first
//!   phase, once the route and the Concur credential are known (Concur's
//!   back-off is per credential), and before any body byte is read.
//! - Only concerns that do not depend on the route are layers; route-specific
//!   decisions are plain functions called from `proxy.rs`.
//!
//! The [`RequestCtx`] travels by value: down in the request's extensions, back
//! up in the response's. A layer that answers in place of the inner service
//! moves it into its own answer (`refuse`), so the access log always gets it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::context::RequestCtx;
use crate::error::{BoxError, ErrorCode, GatewayError, ResponseBody};
use crate::gateway::Gateway;
use crate::head_watch::{
    HeadSize, HeadTooLarge, InvalidLength, LostTrack, MalformedField, RefusedCoding,
};
use crate::metrics::{RequestLabels, RouteLabel};
use crate::proxy::ProxyService;
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::route;
use crate::telemetry::{self, Child};

/// The response body the server writes.
pub type HttpBody = UnsyncBoxBody<Bytes, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Answers `error` in place of the inner service: the request's context
/// moves into the answer, with the error for the log.
fn refuse<B>(req: &mut Request<B>, error: GatewayError) -> Response<ResponseBody> {
    let mut ctx = req
        .extensions_mut()
        .remove::<RequestCtx>()
        .unwrap_or_else(|| RequestCtx::new(RequestId::from_client(None)));
    ctx.error = Some(error.to_string());
    let mut response = error.into_response(ctx.id.as_str());
    response.extensions_mut().insert(ctx);
    response
}

/// Marks the response CatchPanic built, so AccessLog can give it a request id.
#[derive(Debug, Clone, Copy)]
struct Panicked;

/// Builds the whole stack over `gw`. Generic over the request body so that
/// benches and tests can drive it with `oneshot`, without sockets.
pub fn build<B>(
    gw: Arc<Gateway>,
) -> impl Service<Request<B>, Response = Response<HttpBody>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let auth = {
        let gw = gw.clone();
        move |req: &mut Request<B>| {
            // The route first: an unknown path is `404` and another method on
            // a route `405`, with a token or without (a probe's `GET` learns
            // the method, not `missing_token`). Routes are public; what a
            // route's answer depends on is checked after authentication.
            let kind = route::kind(req.uri().path()).ok_or(GatewayError::NotFound)?;
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.route = Some(kind);
            }
            if req.method() != http::Method::POST {
                return Err(GatewayError::MethodNotAllowed);
            }
            let span = req
                .extensions()
                .get::<RequestCtx>()
                .map(|ctx| Child::start(&ctx.trace, "authenticate", SpanKind::Internal));
            let identity = gw
                .auth
                .authenticate(req.headers().get(header::AUTHORIZATION))
                .inspect_err(|e| {
                    if let Some(span) = &span {
                        span.fail(e.code());
                    }
                })?;
            drop(span);
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.identity = Some(identity);
            }
            Ok(())
        }
    };
    let framing = |req: &mut Request<B>| {
        // What the head watch (head_watch.rs) saw of the head as sent.
        if req.extensions().get::<LostTrack>().is_some() {
            tracing::warn!("the head watch lost track of the connection's messages");
            return Err(GatewayError::InvalidRequest(
                "the connection's message framing could not be followed",
            ));
        }
        if req.extensions().get::<HeadTooLarge>().is_some() {
            return Err(crate::framing::head_too_large());
        }
        if req.extensions().get::<MalformedField>().is_some() {
            return Err(GatewayError::InvalidRequest(
                "a malformed header field line (RFC 9112 §5: a token, a colon, a value without control characters)",
            ));
        }
        if req.extensions().get::<RefusedCoding>().is_some() {
            return Err(GatewayError::NotImplemented);
        }
        if req.extensions().get::<InvalidLength>().is_some() {
            return Err(GatewayError::InvalidRequest(
                "an invalid Content-Length (RFC 9112 §6.3: one decimal length, the same in every Content-Length field)",
            ));
        }
        let measured = req.extensions().get::<HeadSize>().map(|s| s.0);
        crate::framing::check(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            measured,
        )
    };
    ServiceBuilder::new()
        .layer(AccessLogLayer { gw: gw.clone() })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(GuardLayer { check: framing })
        .layer(GuardLayer { check: auth })
        .service(ProxyService::new(gw))
}

/// The request path as the access log shows it: its first 256 characters,
/// with anything shaped like a JWT replaced by `[redacted]`: a run of
/// base64url characters and dots that starts `eyJ` (a JSON object), or that
/// holds a dot and is 32 characters or longer, and the one or two long runs
/// right after such a run (a token whose dots were sent as `/`). The path is
/// judged with its `%XX` escapes decoded (dots sent as `%2E`), and shown so
/// when something was redacted. A client that put its token in the path
/// (`/nope/<JWT>`, `…/report/<JWT>`) gets `404` or `400 invalid_id`; its
/// token stays out of the log all the same.
fn logged_path(raw: &str) -> String {
    let decoded;
    let path = if raw.contains('%') {
        decoded = String::from_utf8_lossy(&crate::proxy::percent_decode(raw.as_bytes(), None))
            .into_owned();
        first_chars(&decoded, 256)
    } else {
        first_chars(raw, 256)
    };
    let is_run = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut redacted = false;
    // Runs still to redact after a JWT-like one, if they follow at once.
    let mut follow = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && is_run(bytes[i]) {
            i += 1;
        }
        let run = &path[start..i];
        let jwt_like =
            (run.starts_with("eyJ") && run.len() >= 16) || (run.len() >= 32 && run.contains('.'));
        let follows = follow > 0 && run.len() >= 16;
        follow = if jwt_like {
            2
        } else if follows {
            follow - 1
        } else {
            0
        };
        if jwt_like || follows {
            out.push_str("[redacted]");
            redacted = true;
        } else {
            out.push_str(run);
        }
        let rest = &path[i..];
        let other = rest
            .find(|c: char| c.is_ascii() && is_run(c as u8))
            .unwrap_or(rest.len());
        if other > 1 {
            // Only a one-character separator keeps a token's parts together.
            follow = 0;
        }
        out.push_str(&rest[..other]);
        i += other;
    }
    if !raw.contains('%') {
        out
    } else if redacted {
        // Decoded for the search; control characters go back to escapes
        // (a `%0A` must not start a line of its own in a terminal's log).
        out.chars()
            .map(|c| {
                if c.is_control() {
                    format!("%{:02X}", u32::from(c))
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        first_chars(raw, 256).to_owned()
    }
}

/// An extension method is logged by its first 32 characters (HTTP sets no
/// bound; hyper takes any token).
const LOGGED_METHOD_CHARS: usize = 32;

/// The first `n` characters of `s` (the whole of it when shorter).
fn first_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    s.char_indices().nth(n).map_or(s, |(end, _)| &s[..end])
}

fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response<ResponseBody> {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "request handler panicked");
    let mut r = GatewayError::Internal("panic".into()).into_response("");
    r.extensions_mut().insert(Panicked);
    r
}

// ---- AccessLog ----

#[derive(Clone)]
struct AccessLogLayer {
    gw: Arc<Gateway>,
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            gw: self.gw.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    gw: Arc<Gateway>,
}

impl<S, B, ResB> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<HttpBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<HttpBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = RequestId::from_client(req.headers().get(X_REQUEST_ID));
        let id_header = id.header_value();
        // Kept here too, for an answer that comes back without its context
        // (a panic unwound the future that held it).
        let mut fallback = RequestCtx::new(id.clone());
        let mut ctx = RequestCtx::new(id);
        if let Some(telemetry) = &self.gw.telemetry {
            // The caller's `traceparent`, if any, is the server span's parent.
            ctx.trace = telemetry.server_span(req.method(), req.headers());
            fallback.trace = ctx.trace.clone();
        }
        req.extensions_mut().insert(ctx);
        let method = req.method().clone();
        // The path only: query strings may hold secrets and are never logged.
        let path = logged_path(req.uri().path());
        let gw = self.gw.clone();
        let mut pending = Pending::new(
            gw.clone(),
            fallback.id.clone(),
            method,
            path,
            route::kind(req.uri().path()),
            fallback.trace.clone(),
        );
        let future = self.inner.call(req);
        Box::pin(async move {
            let response = match future.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            pending.answered();
            let mut response = if response.extensions().get::<Panicked>().is_some() {
                GatewayError::Internal("panic".into())
                    .into_response(fallback.id.as_str())
                    .map(|b| b.map_err(|never| match never {}).boxed_unsync())
            } else {
                response.map(|b| b.map_err(Into::into).boxed_unsync())
            };
            if pending.method == http::Method::HEAD {
                // A HEAD answer has no content (RFC 9110 §9.3.2). hyper drops
                // it on HTTP/1.1; over HTTP/2 the problem body would follow
                // the head, a stream error to the client. The head (its
                // `Content-Length` included) stays as a GET's would be.
                *response.body_mut() = Empty::new().map_err(|never| match never {}).boxed_unsync();
            }
            let ctx = response
                .extensions_mut()
                .remove::<RequestCtx>()
                .unwrap_or(fallback);
            response.headers_mut().insert(X_REQUEST_ID, id_header);
            let status = response.status().as_u16();
            let code = response
                .extensions()
                .get::<ErrorCode>()
                .map(|c| c.0)
                .unwrap_or("ok");
            let route = ctx.route.map_or("none", |r| r.as_str());
            let elapsed = ctx.started.elapsed();
            gw.metrics
                .requests
                .get_or_create(&RequestLabels {
                    route,
                    status,
                    code,
                })
                .inc();
            gw.metrics
                .request_duration
                .get_or_create(&RouteLabel { route })
                .observe(elapsed.as_secs_f64());
            let identity = ctx.identity.as_ref();
            end_server_span(&ctx, &pending.method, route, status, code);
            tracing::info!(
                target: "concur_gateway::access",
                request_id = %ctx.id.as_str(),
                trace_id = telemetry::trace_id(&ctx.trace),
                method = first_chars(pending.method.as_str(), LOGGED_METHOD_CHARS),
                path = %pending.path,
                route,
                company = identity.map(|i| i.company.as_str()),
                user = identity.map(|i| i.user.as_str()),
                credential = ctx.credential.as_deref(),
                status,
                code,
                bytes = ctx.body.received,
                sha = ctx.body.digest_hex.as_deref(),
                image_id = ctx.image_id.as_deref(),
                idempotency = ctx.idempotency,
                upstream_status = ctx.upstream.map(|(s, _)| s),
                upstream_ms = ctx.upstream.map(|(_, t)| t.as_millis() as u64),
                duration_ms = elapsed.as_millis() as u64,
                error = ctx.error.as_deref(),
                "request"
            );
            Ok(response)
        })
    }
}

/// Ends the request's server span with what the access log line says, safe
/// facts only: never the user, a token or the query string.
fn end_server_span(
    ctx: &RequestCtx,
    method: &http::Method,
    route: &'static str,
    status: u16,
    code: &'static str,
) {
    let span = ctx.trace.span();
    if !span.is_recording() {
        span.end();
        return;
    }
    span.update_name(format!("{} {route}", telemetry::span_method(method)));
    let mut attributes = vec![
        KeyValue::new("http.route", route),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("concur_gateway.code", code),
        KeyValue::new("concur_gateway.request_id", ctx.id.as_str().to_owned()),
        KeyValue::new("concur_gateway.bytes", ctx.body.received as i64),
    ];
    if let Some(identity) = &ctx.identity {
        attributes.push(KeyValue::new(
            "concur_gateway.company",
            identity.company.clone(),
        ));
    }
    if let Some(image_id) = &ctx.image_id {
        attributes.push(KeyValue::new("concur_gateway.image_id", image_id.clone()));
    }
    if let Some((upstream_status, _)) = ctx.upstream {
        attributes.push(KeyValue::new(
            "concur_gateway.upstream_status",
            i64::from(upstream_status),
        ));
    }
    span.set_attributes(attributes);
    telemetry::set_outcome(&ctx.trace, status, code);
    span.end();
}

/// A request in the in-flight gauge until dropped. The future that holds it
/// may be dropped before it has an answer: hyper drops a request's future
/// when its HTTP/2 stream is reset by the client (or its connection goes
/// away). Such a request has no answer to log or count, but it leaves the
/// gauge all the same, and one access line says it was abandoned.
struct Pending {
    gw: Arc<Gateway>,
    id: RequestId,
    method: http::Method,
    path: String,
    /// The route the path names (an abandoned request has no other).
    route: Option<route::RouteKind>,
    started: std::time::Instant,
    answered: bool,
    /// The server span, ended here if the request is abandoned.
    trace: opentelemetry::Context,
}

impl Pending {
    fn new(
        gw: Arc<Gateway>,
        id: RequestId,
        method: http::Method,
        path: String,
        route: Option<route::RouteKind>,
        trace: opentelemetry::Context,
    ) -> Self {
        gw.metrics.in_flight.inc();
        Self {
            gw,
            id,
            method,
            path,
            route,
            started: std::time::Instant::now(),
            answered: false,
            trace,
        }
    }

    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.gw.metrics.in_flight.dec();
        if !self.answered {
            // Past the shutdown grace, the gateway drops the connections
            // still open: their requests were cut short by the shutdown.
            let (code, message) = if self.gw.is_grace_over() {
                (
                    "shutting_down",
                    "request cut short by the shutdown (server.shutdown_grace_s ran out)",
                )
            } else {
                (
                    "client_closed",
                    "request abandoned by the client before its answer",
                )
            };
            let route = self.route.map_or("none", |r| r.as_str());
            let span = self.trace.span();
            if span.is_recording() {
                span.update_name(format!("{} {route}", telemetry::span_method(&self.method)));
            }
            span.set_attributes([
                KeyValue::new("http.route", route),
                KeyValue::new("concur_gateway.code", code),
                KeyValue::new("concur_gateway.request_id", self.id.as_str().to_owned()),
            ]);
            if code == "shutting_down" {
                // Cut by this gateway; a client that left is no error of ours.
                span.set_status(opentelemetry::trace::Status::error(code));
            }
            span.end();
            tracing::info!(
                target: "concur_gateway::access",
                request_id = %self.id.as_str(),
                trace_id = telemetry::trace_id(&self.trace),
                method = first_chars(self.method.as_str(), LOGGED_METHOD_CHARS),
                path = %self.path,
                route,
                code,
                duration_ms = self.started.elapsed().as_millis() as u64,
                "{message}"
            );
        }
    }
}

// ---- Guard: a check that may answer in place of the inner service ----

#[derive(Clone)]
struct GuardLayer<F> {
    check: F,
}

impl<S, F: Clone> Layer<S> for GuardLayer<F> {
    type Service = Guard<S, F>;
    fn layer(&self, inner: S) -> Guard<S, F> {
        Guard {
            inner,
            check: self.check.clone(),
        }
    }
}

/// Runs `check` on the request; an `Err` is answered at once, without calling
/// the inner service.
#[derive(Clone)]
pub struct Guard<S, F> {
    inner: S,
    check: F,
}

impl<S, F, B> Service<Request<B>> for Guard<S, F>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = Infallible>,
    S::Future: Send + 'static,
    F: Fn(&mut Request<B>) -> Result<(), GatewayError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match (self.check)(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => Box::pin(std::future::ready(Ok(refuse(&mut req, e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{first_chars, logged_path};

    #[test]
    fn logged_paths_keep_routes_and_ids_and_lose_jwts() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
        for path in [
            "/api/image/v1.0/receipt",
            "/api/image/v1.1/invoice/INV-2024_0001$x",
            "/nope",
            "/api/image/v1.0/report/ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            "/é/x.jpg",
        ] {
            assert_eq!(logged_path(path), path);
        }
        assert_eq!(logged_path(&format!("/nope/{jwt}")), "/nope/[redacted]");
        assert_eq!(
            logged_path(&format!("/api/image/v1.0/receipt;jwt={jwt}/x")),
            "/api/image/v1.0/receipt;jwt=[redacted]/x"
        );
        // Cut at 256 characters, what is left of it still goes.
        let long = format!("/{}/{jwt}{}", "a".repeat(200), "b".repeat(100));
        assert_eq!(
            logged_path(&long),
            format!("/{}/[redacted]", "a".repeat(200))
        );
        // No padding, other alphabets, nothing shaped like one: kept.
        assert_eq!(logged_path("/a.b.c"), "/a.b.c");
        let dotted = format!("/x/{}.{}", "k".repeat(20), "m".repeat(20));
        assert_eq!(logged_path(&dotted), "/x/[redacted]");
        // Dots sent as %2E, or as slashes.
        let escaped = jwt.replace('.', "%2E");
        assert_eq!(
            logged_path(&format!("/api/image/v1.0/report/{escaped}")),
            "/api/image/v1.0/report/[redacted]"
        );
        let lower = jwt.replace('.', "%2e");
        assert_eq!(logged_path(&format!("/r/{lower}?")), "/r/[redacted]?");
        let slashed = jwt.replace('.', "/");
        assert_eq!(
            logged_path(&format!("/nope/{slashed}")),
            "/nope/[redacted]/[redacted]/[redacted]"
        );
        // A path with escapes and nothing to hide is shown as sent.
        assert_eq!(logged_path("/a%20b/c"), "/a%20b/c");
        // Decoded and redacted, control characters are escaped again.
        assert_eq!(
            logged_path(&format!("/x%0Afake%09line/{escaped}")),
            "/x%0Afake%09line/[redacted]"
        );
    }

    #[test]
    fn first_chars_counts_characters_not_bytes() {
        assert_eq!(first_chars("/api/x", 256), "/api/x");
        assert_eq!(first_chars("abcdef", 3), "abc");
        assert_eq!(first_chars("éééé", 2), "éé");
        assert_eq!(first_chars("abc", 3), "abc");
        assert_eq!(first_chars("", 0), "");
    }
}
