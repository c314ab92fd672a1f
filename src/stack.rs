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
//!       RateLimit        keyed limits on that identity: uploads in flight,
//!                        request rate, and Concur's own back-off for the
//!                        company (429); RateLimit headers
//!         Proxy          route, credential, body, Concur, translation
//! ```
//!
//! Ordering constraints:
//! - AccessLog is outermost so that *every* answer, including 401s, 429s and
//!   panics, carries `X-Request-Id` and is logged and counted exactly once.
//! - CatchPanic sits inside AccessLog so a panic is still logged with its id.
//! - Framing precedes auth: a message whose framing cannot be trusted (two
//!   `Authorization` headers, say) is refused before any of it is believed.
//! - Auth precedes rate limiting: limits are keyed by the authenticated
//!   identity, and unauthenticated traffic must not spend a caller's allowance.
//! - Rate limiting precedes the proxy: a refused caller costs no body read and
//!   no upstream slot.
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
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::context::RequestCtx;
use crate::error::{BoxError, ErrorCode, GatewayError, ResponseBody};
use crate::gateway::Gateway;
use crate::metrics::{RequestLabels, RouteLabel, ScopeLabel};
use crate::proxy::ProxyService;
use crate::request_id::{RequestId, X_REQUEST_ID};

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
            let identity = gw
                .auth
                .authenticate(req.headers().get(header::AUTHORIZATION))?;
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestCtx>() {
                ctx.identity = Some(identity);
            }
            Ok(())
        }
    };
    let framing = |req: &mut Request<B>| {
        crate::framing::check(req.method(), req.uri(), req.version(), req.headers())
    };
    ServiceBuilder::new()
        .layer(AccessLogLayer { gw: gw.clone() })
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(GuardLayer { check: framing })
        .layer(GuardLayer { check: auth })
        .layer(RateLimitLayer {
            policy: policy_header(&gw),
            gw: gw.clone(),
        })
        .service(ProxyService::new(gw))
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
        let fallback = RequestCtx::new(id.clone());
        req.extensions_mut().insert(RequestCtx::new(id));
        let method = req.method().clone();
        // The path only: query strings may hold secrets and are never logged.
        let path: String = req.uri().path().chars().take(256).collect();
        let gw = self.gw.clone();
        let mut pending = Pending::new(gw.clone(), fallback.id.clone(), method, path);
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
            tracing::info!(
                target: "concur_gateway::access",
                request_id = %ctx.id.as_str(),
                method = %pending.method,
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
    started: std::time::Instant,
    answered: bool,
}

impl Pending {
    fn new(gw: Arc<Gateway>, id: RequestId, method: http::Method, path: String) -> Self {
        gw.metrics.in_flight.inc();
        Self {
            gw,
            id,
            method,
            path,
            started: std::time::Instant::now(),
            answered: false,
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
            tracing::info!(
                target: "concur_gateway::access",
                request_id = %self.id.as_str(),
                method = %self.method,
                path = %self.path,
                code = "client_closed",
                duration_ms = self.started.elapsed().as_millis() as u64,
                "request abandoned by the client before its answer"
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

// ---- RateLimit: keyed limits, Concur back-off, IETF RateLimit headers ----

#[derive(Clone)]
struct RateLimitLayer {
    gw: Arc<Gateway>,
    policy: HeaderValue,
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            gw: self.gw.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// `RateLimit-Policy`: the limits are fixed for the gateway's lifetime, so the
/// header is built once, not per request.
fn policy_header(gw: &Gateway) -> HeaderValue {
    let items: Vec<String> = gw
        .rate_limits
        .policies()
        .iter()
        .map(|p| p.header_item())
        .collect();
    HeaderValue::from_str(&items.join(", ")).expect("ASCII header items")
}

/// Admits the authenticated caller or answers `429 rate_limited` with
/// `Retry-After`. Every answer carries `RateLimit-Policy`; admitted ones also
/// `RateLimit` with what is left (draft-ietf-httpapi-ratelimit-headers).
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    gw: Arc<Gateway>,
    policy: HeaderValue,
}

const RATELIMIT: &str = "ratelimit";
const RATELIMIT_POLICY: &str = "ratelimit-policy";

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let policy = self.policy.clone();
        let Some(identity) = req
            .extensions()
            .get::<RequestCtx>()
            .and_then(|ctx| ctx.identity.clone())
        else {
            let e = GatewayError::Internal("rate limit before auth".into());
            return Box::pin(std::future::ready(Ok(refuse(&mut req, e))));
        };
        // Concurrency first: a caller refused for having too many uploads
        // open spends none of its rate allowance. The place is held until
        // the answer is ready (the whole upload, for a streamed body).
        let admitted = match self.gw.concur_backoff(&identity.company) {
            Some(retry_after_s) => Err(GatewayError::RateLimited {
                scope: "concur",
                retry_after_s,
            }),
            None => self
                .gw
                .in_flight
                .try_acquire(&identity)
                .and_then(|place| Ok((place, self.gw.rate_limits.check(&identity)?))),
        };
        match admitted {
            Err(e) => {
                let mut usage = None;
                if let GatewayError::RateLimited {
                    scope,
                    retry_after_s,
                } = &e
                {
                    self.gw
                        .metrics
                        .rate_limited
                        .get_or_create(&ScopeLabel { scope })
                        .inc();
                    usage = Some(format!("\"{scope}\";r=0;t={retry_after_s}"));
                }
                let mut response = refuse(&mut req, e);
                response.headers_mut().insert(RATELIMIT_POLICY, policy);
                if let Some(v) = usage.and_then(|u| HeaderValue::from_str(&u).ok()) {
                    response.headers_mut().insert(RATELIMIT, v);
                }
                Box::pin(std::future::ready(Ok(response)))
            }
            Ok((in_flight, remaining)) => {
                let [user, company] = self.gw.rate_limits.policies();
                let usage = format!(
                    "{}, {}",
                    user.usage_item(remaining.user),
                    company.usage_item(remaining.company)
                );
                let future = self.inner.call(req);
                Box::pin(async move {
                    let Ok(mut response) = future.await;
                    drop(in_flight);
                    let headers = response.headers_mut();
                    headers.insert(RATELIMIT_POLICY, policy);
                    if let Ok(v) = HeaderValue::from_str(&usage) {
                        headers.insert(RATELIMIT, v);
                    }
                    Ok(response)
                })
            }
        }
    }
}
