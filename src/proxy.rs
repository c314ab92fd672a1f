//! Request path, steps 6 to 10 (see `ARCHITECTURE.md`).
//!
//! The terminal service: everything that depends on the route.
//!
//! By the time a request gets here the stack has given it a [`RequestCtx`]
//! (request id, authenticated identity) and admitted it under the rate and
//! concurrency limits. [`serve`] takes the context out of the request and runs
//! four phases over it, in the manner of pingora's `ProxyHttp` phases over a
//! per-request `CTX` (steps 5 to 9 of the request path in `lib.rs`):
//!
//! 1. `admit`: the route and its target ID, the `Content-Type` and
//!    `Content-Length` checks (415, 413, 400), and the Concur credential that
//!    may act for this caller; nothing of the body is read yet;
//! 2. `open_body`: the body behind the inspection adapter (`body.rs`); its
//!    first chunk is checked before Concur is contacted; a `Content-Length`
//!    body then streams with its tail held back, a chunked one is spooled
//!    (`spool.rs`) so that Concur gets a `Content-Length`;
//! 3. `exchange`: the access token (refreshed first if it could expire during
//!    the upload), a fair Concur slot, and the exchange, in which Concur may
//!    keep the gateway waiting at most `upstream.timeout_s` at a time (the
//!    caller's own pace is the body's limits); a body failure explains any upstream error that
//!    followed it; Concur's 401/403 mark the token stale, its 429/503 +
//!    `Retry-After` pause the company;
//! 4. `respond`: Concur's XML as JSON (or verbatim when the client prefers
//!    XML), or the mapping of Concur's error.
//!
//! Whatever exit a request takes, [`serve`] records the body's facts (its
//! adapter reports them once) and hands the context back in the response.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanKind;
use serde_json::Value;

use crate::auth::Identity;
use crate::body::{BodyReport, BodyTiming, InspectBody};
use crate::context::RequestCtx;
use crate::credentials::refresh::Access;
use crate::credentials::{self, Credential};
use crate::error::{BoxError, ConcurError, GatewayError, ResponseBody};
use crate::gateway::Gateway;
use crate::head_watch::FragmentTarget;
use crate::idempotency::{self, IDEMPOTENT_REPLAYED, Record};
use crate::inspect::{Inspector, MediaType};
use crate::metrics::{CodeLabel, DirectionLabel, ResultLabel, RouteLabel, ScopeLabel};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::route::{self, Route};
use crate::spool::Spool;
use crate::store::{KeyState, Place};
use crate::telemetry::Child;
use crate::transform;
use crate::upstream::{Pace, Paced, UpstreamBody};

/// The terminal service of the stack (`stack.rs`).
#[derive(Clone)]
pub struct ProxyService {
    gw: Arc<Gateway>,
}

impl ProxyService {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower::Service<Request<B>> for ProxyService
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let gw = self.gw.clone();
        if !req.headers().contains_key(idempotency::IDEMPOTENCY_KEY) {
            return Box::pin(async move { Ok(serve(gw, req).await) });
        }
        // A keyed upload runs on a task of its own, to Concur's answer, even
        // when its client goes away: hyper drops a request's future when the
        // client closes the connection or resets the stream, and a client
        // that gave up waiting is the very one that will retry. Once the
        // whole body went to Concur, only Concur's answer says whether the
        // image exists; kept under the key, the retry gets it (a `409` while
        // the exchange still runs) instead of uploading a second image. A
        // body cut short by the client still fails as before, and drops the
        // key's hold.
        let id = req
            .extensions()
            .get::<RequestCtx>()
            .map(|ctx| ctx.id.clone())
            .unwrap_or_else(|| RequestId::from_client(None));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cut = gw.cut_detached.clone();
        let task_id = id.clone();
        gw.detached.clone().spawn(async move {
            tokio::select! {
                response = serve(gw, req) => {
                    if let Err(response) = tx.send(response) {
                        log_finished_without_client(&response);
                    }
                }
                // The shutdown grace is over: the upload is dropped here,
                // its key released and Concur's request left incomplete.
                () = cut.cancelled() => tracing::info!(
                    target: "concur_gateway::access",
                    request_id = %task_id.as_str(),
                    code = "shutting_down",
                    "keyed upload cut short by the shutdown (server.shutdown_grace_s ran out)"
                ),
            }
        });
        Box::pin(async move { Ok(Detached { rx, id }.await) })
    }
}

/// The answer of a keyed upload running on its own task. Dropped before it
/// took the answer (the client left), it logs the answer if one had come in
/// meanwhile; one that comes later the task logs itself.
struct Detached {
    rx: tokio::sync::oneshot::Receiver<Response<ResponseBody>>,
    id: RequestId,
}

impl Future for Detached {
    type Output = Response<ResponseBody>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|answer| {
            answer.unwrap_or_else(|_| {
                // The task ended without an answer: it panicked, or was cut.
                let mut response =
                    GatewayError::Internal("the request's task ended without an answer".into())
                        .into_response(self.id.as_str());
                response
                    .extensions_mut()
                    .insert(RequestCtx::new(self.id.clone()));
                response
            })
        })
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Ok(response) = self.rx.try_recv() {
            log_finished_without_client(&response);
        }
    }
}

/// A keyed upload whose client left before the answer (its access line,
/// `client_closed`, is written already): what became of it.
fn log_finished_without_client(response: &Response<ResponseBody>) {
    let Some(ctx) = response.extensions().get::<RequestCtx>() else {
        return;
    };
    tracing::info!(
        target: "concur_gateway::access",
        request_id = %ctx.id.as_str(),
        status = response.status().as_u16(),
        upstream_status = ctx.upstream.map(|(status, _)| status),
        image_id = ctx.image_id.as_deref(),
        idempotency = ctx.idempotency,
        error = ctx.error.as_deref(),
        "keyed upload finished after its client left"
    );
}

/// Serves one request; errors become problem+json responses. The single exit:
/// the body's facts and the error reach the context whatever failed, and the
/// context goes back up in the response's extensions.
pub async fn serve<B>(gw: Arc<Gateway>, req: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let mut ctx = parts
        .extensions
        .remove::<RequestCtx>()
        .unwrap_or_else(|| RequestCtx::new(RequestId::from_client(None)));
    let mut report = None;
    let result = handle(&gw, &mut ctx, &mut report, parts, body).await;
    if let Some(outcome) = match report {
        Some(report) => report.collect().await,
        None => None,
    } {
        ctx.body = outcome.facts;
    }
    gw.metrics
        .body_bytes
        .get_or_create(&DirectionLabel { direction: "in" })
        .inc_by(ctx.body.received);
    let mut response = match result {
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
            ctx.error = Some(error.to_string());
            error.into_response(ctx.id.as_str())
        }
    };
    if ctx.idempotency == Some("replayed") {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    if let Some(usage) = ctx
        .rate_limit
        .as_deref()
        .and_then(|u| HeaderValue::from_str(u).ok())
    {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, gw.store.policy_header());
        headers.insert(RATELIMIT, usage);
    }
    response.extensions_mut().insert(ctx);
    response
}

/// draft-ietf-httpapi-ratelimit-headers: the limits, and what is left of them.
const RATELIMIT_POLICY: &str = "ratelimit-policy";
const RATELIMIT: &str = "ratelimit";

async fn handle<B>(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    report: &mut Option<BodyReport>,
    parts: Parts,
    body: B,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut admitted = admit(gw, ctx, &parts).await?;
    let hold = match admitted.key.take() {
        Some(KeyState::Final(record)) => {
            return replay(gw, ctx, &admitted, record, body, report, &parts.headers).await;
        }
        Some(KeyState::Held(hold)) => Some(hold),
        None => None,
    };
    let outgoing = open_body(gw, ctx, &admitted, body, report, hold.is_some()).await?;
    let answer = exchange(gw, ctx, &admitted, outgoing, report).await?;
    if let Some(hold) = hold {
        // Concur's final answer is kept for retries; anything else drops the
        // record (the hold's drop), so a retry goes to Concur again.
        if idempotency::is_final(answer.status.as_u16()) {
            let kept = hold
                .finish(&Record {
                    fingerprint: admitted.fingerprint(&body_sha256(report)),
                    status: answer.status.as_u16(),
                    content_type: header_text(&answer.headers, header::CONTENT_TYPE),
                    body: String::from_utf8_lossy(&answer.body).into_owned(),
                    repr_digest: answer.repr_digest.clone(),
                    location: header_text(&answer.headers, header::LOCATION),
                    retry_after: header_text(&answer.headers, header::RETRY_AFTER),
                    invalid: answer.invalid.clone(),
                })
                .await;
            ctx.idempotency = Some(kept.as_str());
            gw.metrics
                .idempotency
                .get_or_create(&ResultLabel {
                    result: kept.as_str(),
                })
                .inc();
        }
    }
    respond(ctx, answer, &parts.headers)
}

/// The accepted body's SHA-256, as its adapter reported it.
fn body_sha256(report: &mut Option<BodyReport>) -> Vec<u8> {
    report
        .as_mut()
        .and_then(BodyReport::now)
        .and_then(|o| o.facts.sha256.clone())
        .unwrap_or_default()
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A retry whose key has a final record: its body is read whole through the
/// inspection (nothing is sent to Concur), and the same fingerprint gets the
/// stored answer, translated for this request's `Accept`.
async fn replay<B>(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    admitted: &Admitted,
    record: Record,
    body: B,
    report: &mut Option<BodyReport>,
    client_headers: &HeaderMap,
) -> Result<Response<ResponseBody>, GatewayError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = inspect_body(gw, ctx, admitted, body, report).with_sha256();
    while body.next_cleared().await?.is_some() {}
    drop(body);
    if admitted.fingerprint(&body_sha256(report)) != record.fingerprint {
        gw.metrics
            .idempotency
            .get_or_create(&ResultLabel { result: "reused" })
            .inc();
        return Err(GatewayError::IdempotencyKeyReused);
    }
    ctx.idempotency = Some("replayed");
    gw.metrics
        .idempotency
        .get_or_create(&ResultLabel { result: "replayed" })
        .inc();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        (header::CONTENT_TYPE, &record.content_type),
        (header::LOCATION, &record.location),
        (header::RETRY_AFTER, &record.retry_after),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    }
    let status = StatusCode::from_u16(record.status)
        .map_err(|_| GatewayError::Internal("a stored status is not a status".into()))?;
    respond(
        ctx,
        Answer {
            status,
            headers,
            body: Bytes::from(record.body),
            repr_digest: record.repr_digest,
            json: None,
            invalid: record.invalid,
        },
        client_headers,
    )
}

/// What `admit` decided: where the upload goes, as whom, and what it declares.
struct Admitted {
    identity: Identity,
    route: Route,
    media: MediaType,
    declared_len: Option<u64>,
    credential: Arc<Credential>,
    /// The upload's place among the uploads in flight, held until the
    /// answer is ready (none for a replay during Concur's back-off, which
    /// was admitted without one).
    _place: Option<Place>,
    /// What the store holds for the request's `Idempotency-Key`.
    key: Option<KeyState>,
}

impl Admitted {
    /// The request's fingerprint for its `Idempotency-Key`.
    fn fingerprint(&self, body_sha256: &[u8]) -> String {
        idempotency::fingerprint(
            self.route.kind.as_str(),
            self.route.id.as_deref(),
            self.media.mime(),
            body_sha256,
        )
    }
}

/// Phase 1: everything that needs no body byte, ending with the admission
/// under the limits (Concur's back-off for the credential, uploads in flight,
/// request rate: one store call).
async fn admit(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    parts: &Parts,
) -> Result<Admitted, GatewayError> {
    if let Some(sent) = parts.extensions.get::<FragmentTarget>() {
        // hyper parsed the target up to its `#` (src/head_watch.rs): judged on
        // the path as sent, a `#` in a target ID is a bad ID like any other.
        return Err(match route::parse(&parts.method, sent.path()) {
            Err(GatewayError::InvalidId) => GatewayError::InvalidId,
            _ => GatewayError::InvalidRequest(
                "the request-target has a '#' (a fragment is never sent)",
            ),
        });
    }
    let route = route::parse(&parts.method, parts.uri.path())?;
    ctx.route = Some(route.kind);
    let key = idempotency::parse(&parts.headers)?;
    if key.is_none() && gw.config.idempotency.required {
        return Err(GatewayError::InvalidIdempotencyKey(
            "an Idempotency-Key is required (idempotency.required)",
        ));
    }
    let identity = ctx.identity.clone().ok_or_else(|| {
        GatewayError::Internal("request reached the proxy unauthenticated".into())
    })?;
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
    ctx.credential = Some(format!("{} ({acting:?})", credential.label()));
    // A credential Concur has refused fails before any body byte is read.
    gw.tokens.check_usable(&credential)?;
    let span = Child::start(&ctx.trace, "admission", SpanKind::Internal);
    let admitted = gw.store.admit(&identity, &credential.store_key).await;
    // Concur asked this credential to pause. A retry whose answer is kept
    // needs nothing of Concur: it is replayed all the same, without a place
    // in flight. (A hold begun here is given back at once, with the
    // refusal.)
    let kept = match (&admitted, &key) {
        (
            Err(GatewayError::RateLimited {
                scope: "concur", ..
            }),
            Some(k),
        ) => match gw.store.begin_key(&identity, k).await {
            Ok(KeyState::Final(record)) => Some(record),
            _ => None,
        },
        _ => None,
    };
    let (place, key) = match kept {
        Some(record) => {
            drop(span);
            (None, Some(KeyState::Final(record)))
        }
        None => {
            if let Err(e) = &admitted {
                span.fail(e.code());
            }
            drop(span);
            let admission = match admitted {
                Ok(admission) => admission,
                Err(e) => {
                    if let GatewayError::RateLimited {
                        scope,
                        retry_after_s,
                    } = &e
                    {
                        gw.metrics
                            .rate_limited
                            .get_or_create(&ScopeLabel { scope })
                            .inc();
                        ctx.rate_limit = Some(format!("\"{scope}\";r=0;t={retry_after_s}"));
                    }
                    return Err(e);
                }
            };
            let [user, company] = gw.store.local_limits().policies();
            ctx.rate_limit = Some(format!(
                "{}, {}",
                user.usage_item(admission.remaining.user),
                company.usage_item(admission.remaining.company)
            ));
            // The key, last: held in flight from here until Concur's answer.
            let key = match key {
                None => None,
                Some(key) => match gw.store.begin_key(&identity, &key).await {
                    Ok(state) => Some(state),
                    Err(e) => {
                        if matches!(e, GatewayError::IdempotencyConflict { .. }) {
                            gw.metrics
                                .idempotency
                                .get_or_create(&ResultLabel { result: "conflict" })
                                .inc();
                        }
                        return Err(e);
                    }
                },
            };
            (Some(admission.place), key)
        }
    };
    Ok(Admitted {
        key,
        identity,
        route,
        media,
        declared_len,
        credential,
        _place: place,
    })
}

/// The body as it goes to Concur, with its length.
struct Outgoing {
    body: UpstreamBody,
    length: u64,
}

/// Phase 2: the body behind the inspection; its first chunk is checked
/// before Concur is contacted, and a chunked body is spooled whole.
async fn open_body<B>(
    gw: &Gateway,
    ctx: &RequestCtx,
    admitted: &Admitted,
    body: B,
    report: &mut Option<BodyReport>,
    sha256: bool,
) -> Result<Outgoing, GatewayError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let server = &gw.config.server;
    let mut body = inspect_body(gw, ctx, admitted, body, report);
    if sha256 {
        // An Idempotency-Key's fingerprint needs it, whatever inspect.digest says.
        body = body.with_sha256();
    }
    if let Some(scanner) = &gw.scanner {
        body = body
            .with_scan(scanner.session(ctx.id.as_str()))
            .with_span(Child::start(&ctx.trace, "clamav scan", SpanKind::Client));
    }
    body.prime().await?;
    match admitted.declared_len {
        Some(length) => Ok(Outgoing {
            body: body.boxed_unsync(),
            length,
        }),
        None => {
            let spool =
                Spool::collect(&mut body, server.spool_memory_bytes, &gw.spool_budget).await?;
            let length = spool.len();
            Ok(Outgoing {
                body: spool.into_body().await?,
                length,
            })
        }
    }
}

/// The client's body behind the inspection adapter; its report goes to `report`.
fn inspect_body<B>(
    gw: &Gateway,
    ctx: &RequestCtx,
    admitted: &Admitted,
    body: B,
    report: &mut Option<BodyReport>,
) -> InspectBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let server = &gw.config.server;
    let (body, body_report) = InspectBody::new(
        body,
        Inspector::new(admitted.media, &gw.config.inspect.limits),
        gw.config.inspect.digest,
        server.max_body_bytes,
        admitted.declared_len,
        BodyTiming {
            idle: server.body_idle_timeout,
            min_rate: server.min_body_rate,
            deadline: server.body_deadline,
        },
    );
    *report = Some(body_report);
    let span = Child::start(&ctx.trace, "inspection", SpanKind::Internal);
    span.attr(KeyValue::new(
        "concur_gateway.media_type",
        admitted.media.mime(),
    ));
    body.with_span(span)
}

/// Concur's answer, read whole (bounded).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    repr_digest: Option<String>,
    /// `body` translated, when it is meant as XML and was translated
    /// already (`None`: not yet).
    json: Option<Result<Value, transform::TransformError>>,
    /// Concur answered, with something no client may be given (it quotes
    /// the access token, or it is too large): why. Answered `502
    /// upstream_invalid_response`; still Concur's final answer to the upload
    /// (kept under an `Idempotency-Key`, without its body).
    invalid: Option<String>,
}

/// Phase 3: the token, a slot, and the exchange with Concur.
async fn exchange(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    admitted: &Admitted,
    outgoing: Outgoing,
    report: &mut Option<BodyReport>,
) -> Result<Answer, GatewayError> {
    // The access token, refreshed first when what is left of it could not
    // cover this upload (never in the middle of a body: nothing is sent yet).
    // Under the request's trace: a refresh, when one happens, is its child span.
    let access = gw
        .tokens
        .access(&admitted.credential)
        .with_context(ctx.trace.clone())
        .await?;
    let _slot = gw.upstream.acquire(&admitted.identity.company).await?;
    let span = Child::start(&ctx.trace, "concur upload", SpanKind::Client);
    let result = exchange_with(gw, ctx, admitted, outgoing, report, access, &span).await;
    if let Err(e) = &result {
        span.fail(e.code());
    }
    result
}

/// The exchange itself, in the client span `span`.
async fn exchange_with(
    gw: &Gateway,
    ctx: &mut RequestCtx,
    admitted: &Admitted,
    outgoing: Outgoing,
    report: &mut Option<BodyReport>,
    access: Access,
    span: &Child,
) -> Result<Answer, GatewayError> {
    span.attr(KeyValue::new("http.request.method", "POST"));
    span.attr(KeyValue::new("http.route", admitted.route.kind.as_str()));
    // `upstream.timeout_s` runs while Concur keeps the gateway waiting, not
    // while the caller is still sending (its body has its own limits).
    let pace = Pace::new();
    let body = UpstreamBody::new(Paced::new(outgoing.body, pace.clone()));
    let mut request = upstream_request(
        gw,
        &admitted.route,
        &access,
        admitted.media,
        &ctx.id,
        outgoing.length,
        body,
    )?;
    if let (Some(telemetry), Some(cx)) = (&gw.telemetry, span.context()) {
        // The client span is Concur's parent; nothing else of the trace goes.
        telemetry.inject(cx, request.headers_mut());
    }
    let started = Instant::now();
    let timeout = gw.upstream.timeout;
    let sent = pace.within(timeout, gw.upstream.send(request)).await;
    // A failure of our own body (rejection, timeout, client gone) explains any
    // upstream error that followed it, so it is checked first.
    let body_now = report.as_mut().and_then(BodyReport::now);
    if let Some(failure) = body_now.and_then(|o| o.failure.clone()) {
        return Err(failure.into());
    }
    let accepted = body_now.is_some_and(|o| o.facts.accepted);
    let repr_digest = body_now.and_then(|o| o.facts.repr_digest.clone());
    let response = match sent {
        Err(_) => return Err(GatewayError::UpstreamTimeout(gw.upstream.timeout)),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "Concur exchange failed");
            if let crate::upstream::SendError::Http(h) = &e
                && h.is_parse()
            {
                // Concur answered, with something that is not HTTP (a
                // status line such as `HTTP/1.1 099` or `1000`).
                return Err(GatewayError::UpstreamInvalidResponse(
                    "Concur's answer is not valid HTTP".into(),
                ));
            }
            return Err(GatewayError::UpstreamUnavailable(Box::new(e)));
        }
        Ok(Ok(response)) => response,
    };
    let (mut head, upstream_body) = response.into_parts();
    pace.touch();
    if head.status.as_u16() < 200
        || head.status.as_u16() > 599
        || head.status == StatusCode::NOT_MODIFIED
    {
        // 101 without our `Upgrade`, a code HTTP does not define (600 and
        // up), or a 304 to a request that asked for no condition (it can
        // carry no body, so not the problem document a client is owed):
        // nothing a client could be given as Concur's answer.
        return Err(GatewayError::UpstreamInvalidResponse(format!(
            "Concur answered with status {}, which is not a final HTTP status",
            head.status.as_u16()
        )));
    }
    if let Some(token) = token_text(&access.authorization) {
        scrub_headers(&mut head.headers, token);
    }
    if matches!(
        head.status,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
    ) {
        // Concur's answer to an expired or revoked token: refresh before the
        // next request (this upload was streamed and cannot be replayed).
        gw.tokens.mark_stale(&admitted.credential, &access);
    }
    let read = Limited::new(upstream_body, transform::MAX_XML_BYTES).collect();
    let mut invalid = None;
    let body = match pace.within(timeout, read).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout(gw.upstream.timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            invalid = Some(transform::TransformError::TooLarge.to_string());
            Bytes::new()
        }
        Ok(Err(e)) => return Err(GatewayError::UpstreamUnavailable(e)),
        Ok(Ok(collected)) => redact_token(collected.to_bytes(), &access.authorization),
    };
    // The translation, done once here: what the client and the log would see
    // of the token once Concur's escapes are decoded (`&#45;`, CDATA, a
    // comment or an element splitting it), which the byte search above
    // cannot blank out.
    let mut json = (invalid.is_none() && body_is_meant_as_xml(&head.headers, &body))
        .then(|| transform::xml_to_json(&body));
    if let Some(Ok(translated)) = &json
        && let Some(token) = token_text(&access.authorization)
        && json_holds(translated, token)
    {
        invalid = Some(
            "Concur's answer quotes the access token in escaped form; it is not passed on".into(),
        );
        json = None;
    }
    let body = if invalid.is_some() {
        Bytes::new()
    } else {
        body
    };
    let elapsed = started.elapsed();
    gw.metrics
        .upstream_duration
        .get_or_create(&RouteLabel {
            route: admitted.route.kind.as_str(),
        })
        .observe(elapsed.as_secs_f64());
    if head.status.is_success() && accepted {
        gw.metrics
            .body_bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(outgoing.length);
    }
    ctx.upstream = Some((head.status.as_u16(), elapsed));
    span.attr(KeyValue::new(
        "http.response.status_code",
        i64::from(head.status.as_u16()),
    ));
    if matches!(
        head.status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(wait) = retry_after(&head.headers)
    {
        // Concur is throttling this credential: hold its callers back, on
        // every replica, instead of hammering it (429 with the time left).
        tracing::warn!(
            company = %admitted.identity.company,
            wait_s = wait.as_secs(),
            status = head.status.as_u16(),
            "Concur asked to back off"
        );
        gw.store
            .back_off(
                &admitted.identity.company,
                &admitted.credential.store_key,
                wait,
            )
            .await;
    }
    Ok(Answer {
        status: head.status,
        headers: head.headers,
        body,
        repr_digest,
        json,
        invalid,
    })
}

/// `Retry-After` as delta-seconds (Concur's form). An HTTP-date is not
/// interpreted: the client still receives the header as Concur sent it.
fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

/// `Retry-After` as seconds or as an HTTP-date (RFC 9110 §10.2.3), seen at
/// `now`: how long to wait, at least a second; `None` when absent, unreadable
/// or already past.
fn retry_after_at(headers: &HeaderMap, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs = match value.parse::<u64>() {
        Ok(secs) => secs,
        // Delay-seconds too large for 64 bits is still a long pause (it is
        // capped at the back-off's maximum), not none.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let left = at.duration_since(now).ok()?;
            // Round up: a date 0.4 s ahead still asks for a pause.
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        }
    };
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// Whether a `Retry-After` value is well formed: delay-seconds or an
/// HTTP-date.
fn is_retry_after(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
        || httpdate::parse_http_date(text).is_ok()
}

/// `Content-Type` must be one of the four image types (`415` otherwise).
fn content_type(headers: &HeaderMap) -> Result<MediaType, GatewayError> {
    let value = headers.get(header::CONTENT_TYPE).ok_or_else(|| {
        GatewayError::UnsupportedMediaType(
            "Content-Type is required: application/pdf, image/jpeg, image/jpg or image/png".into(),
        )
    })?;
    // Only the type and subtype are read: a parameter may hold bytes past
    // ASCII (RFC 9110 §5.5: `obs-text` in a quoted string, a file name, say).
    let essence = value
        .as_bytes()
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    std::str::from_utf8(essence)
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

/// Concur's answer with every copy of the access token the gateway sent in
/// it replaced by `[redacted]`: written as is, or percent-encoded in part or
/// whole (a URL quoting it, `?access_token=a%2Bb`; `%25XX` too). An error
/// message that quotes the token (`Invalid token: OAuth ...`) would
/// otherwise reach the client, the access log and an idempotency record; the
/// token never leaves the gateway.
fn redact_token(body: Bytes, authorization: &HeaderValue) -> Bytes {
    let Some(token) = token_text(authorization) else {
        return body;
    };
    let token = token.as_bytes();
    let mut body = body;
    if memchr::memmem::find(&body, token).is_some() {
        let mut out = Vec::with_capacity(body.len());
        let mut rest = &body[..];
        while let Some(i) = memchr::memmem::find(rest, token) {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[i + token.len()..];
        }
        out.extend_from_slice(rest);
        body = Bytes::from(out);
    }
    if memchr::memchr(b'%', &body).is_none() {
        return body;
    }
    // Copies only an escape can reveal: found in the decoded bytes, blanked
    // out in the raw ones (the map from decoded to raw offsets, 8 bytes per
    // byte, is built only when there is one).
    let finder = memchr::memmem::Finder::new(token);
    if finder.find(&percent_decode(&body, None)).is_none() {
        return body;
    }
    let mut origin = Vec::with_capacity(body.len() + 1);
    let decoded = percent_decode(&body, Some(&mut origin));
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(i) = finder.find(&decoded[from..]) {
        let (s, e) = (from + i, from + i + token.len());
        ranges.push((origin[s], origin[e]));
        from = e;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for (s, e) in ranges {
        out.extend_from_slice(&body[at..s]);
        out.extend_from_slice(b"[redacted]");
        at = e;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

/// Concur's header fields with the access token the gateway sent taken out:
/// a copy written as is is replaced by `[redacted]` (as in the body); one
/// only percent-encoded (`Location: …?access_token=a%2Bb`) takes its whole
/// field away. Only `Location`, `Content-Type` and `Retry-After` are ever
/// passed on or kept for a retry, but none should hold the token.
fn scrub_headers(headers: &mut HeaderMap, token: &str) {
    let holds = |v: &HeaderValue| {
        let raw = v.as_bytes();
        memchr::memmem::find(raw, token.as_bytes()).is_some()
            || (memchr::memchr(b'%', raw).is_some()
                && memchr::memmem::find(&percent_decode(raw, None), token.as_bytes()).is_some())
    };
    if !headers.values().any(holds) {
        return;
    }
    let names: Vec<header::HeaderName> = headers.keys().cloned().collect();
    for name in names {
        let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        if !values.iter().any(holds) {
            continue;
        }
        headers.remove(&name);
        for v in values {
            if !holds(&v) {
                headers.append(name.clone(), v);
                continue;
            }
            let redacted = String::from_utf8_lossy(v.as_bytes()).replace(token, "[redacted]");
            if let Ok(v) = HeaderValue::try_from(redacted)
                && !holds(&v)
            {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// `raw` with its `%XX` escapes decoded (and `%25XX`, an escape escaped
/// once more, as the byte it names; anything else kept as it is). With
/// `origin`, where each decoded byte starts in `raw` (one more entry:
/// `raw.len()`), asked for only once a match is known to be there.
pub(crate) fn percent_decode(raw: &[u8], mut origin: Option<&mut Vec<usize>>) -> Vec<u8> {
    let hex = |i: usize| {
        raw.get(i)
            .and_then(|&b| char::from(b).to_digit(16))
            .map(|v| v as u8)
    };
    let escape = |i: usize| -> Option<u8> {
        (raw.get(i) == Some(&b'%')).then_some(())?;
        Some(hex(i + 1)? << 4 | hex(i + 2)?)
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if let Some(origin) = origin.as_deref_mut() {
            origin.push(i);
        }
        match escape(i) {
            Some(b'%') if let (Some(h), Some(l)) = (hex(i + 3), hex(i + 4)) => {
                out.push(h << 4 | l);
                i += 5;
            }
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    if let Some(origin) = origin {
        origin.push(raw.len());
    }
    out
}

/// The token of an `Authorization` value (`OAuth …`, `Bearer …`), when it is
/// long enough to look for (a shorter one would match ordinary words).
fn token_text(authorization: &HeaderValue) -> Option<&str> {
    let value = authorization.to_str().ok()?;
    let token = value.split_once(' ').map_or(value, |(_, t)| t).trim();
    (token.len() >= 8).then_some(token)
}

/// Whether a translated answer holds `token` in any key or string.
fn json_holds(value: &Value, token: &str) -> bool {
    match value {
        Value::String(s) => s.contains(token),
        Value::Array(items) => items.iter().any(|v| json_holds(v, token)),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains(token) || json_holds(v, token)),
        _ => false,
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
    request_id: &RequestId,
    length: u64,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, GatewayError> {
    let base = access.base.as_ref();
    let builder = Request::post(gw.upstream.uri_at(base, &route.upstream_path))
        .header(header::HOST, gw.upstream.authority_at(base))
        .header(header::AUTHORIZATION, access.authorization.clone())
        .header(header::CONTENT_TYPE, media.mime())
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT, "application/xml")
        .header(
            header::USER_AGENT,
            concat!("concur-gateway/", env!("CARGO_PKG_VERSION")),
        )
        .header(X_REQUEST_ID, request_id.header_value());
    builder
        .body(body)
        .map_err(|e| GatewayError::Internal(format!("building the upstream request: {e}")))
}

/// Phase 4: Concur's answer, translated for the client.
fn respond(
    ctx: &mut RequestCtx,
    answer: Answer,
    client_headers: &HeaderMap,
) -> Result<Response<ResponseBody>, GatewayError> {
    let Answer {
        status,
        headers: upstream_headers,
        body,
        repr_digest,
        json: translated,
        invalid,
    } = answer;
    if let Some(why) = invalid {
        return Err(GatewayError::UpstreamInvalidResponse(why));
    }
    let translate = || translated.unwrap_or_else(|| transform::xml_to_json(&body));
    // Passed on when it is one (RFC 9110 §10.2.3: seconds or an HTTP-date);
    // anything else is not repeated to the client.
    let retry_after = upstream_headers
        .get(header::RETRY_AFTER)
        .filter(|v| is_retry_after(v))
        .cloned();
    if status == StatusCode::UNAUTHORIZED {
        return Err(GatewayError::UpstreamAuthFailed);
    }
    if !status.is_success() {
        if !body_is_meant_as_xml(&upstream_headers, &body) {
            // A load balancer's HTML page, plain text or an empty body: keep
            // Concur's status (and its Retry-After), without a `concur` body.
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
        let json = translate().map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
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

    if matches!(status, StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT) && body.is_empty() {
        // Nothing to translate, and a 204 (or 205) carries no body; a
        // success all the same, with its `Repr-Digest`.
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        success_headers(headers, &upstream_headers, repr_digest);
        return Ok(response);
    }
    if !body.is_empty() && !body_is_meant_as_xml(&upstream_headers, &body) {
        // A login or error page of something in front of Concur, answered
        // with a 2xx: not an upload Concur confirmed.
        return Err(GatewayError::UpstreamInvalidResponse(format!(
            "Concur answered {} with a page that is not XML",
            status.as_u16()
        )));
    }
    let json = translate().map_err(|e| GatewayError::UpstreamInvalidResponse(e.to_string()))?;
    if let Some(id) = json.pointer("/Image/Id").and_then(|v| v.as_str()) {
        ctx.image_id = Some(id.to_owned());
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
    success_headers(headers, &upstream_headers, repr_digest);
    Ok(response)
}

/// What every success carries besides its body: Concur's `Location`, and the
/// `Repr-Digest` of the bytes sent to Concur.
fn success_headers(headers: &mut HeaderMap, upstream: &HeaderMap, repr_digest: Option<String>) {
    if let Some(location) = upstream.get(header::LOCATION) {
        headers.insert(header::LOCATION, location.clone());
    }
    if let Some(digest) = repr_digest.and_then(|d| HeaderValue::try_from(d).ok()) {
        headers.insert("repr-digest", digest);
    }
}

/// Whether the body of a Concur answer is meant as XML (and so goes through
/// `xml_to_json`, whose refusals are `502 upstream_invalid_response`). Not:
/// an empty or non-markup body, one labelled HTML, or an HTML page by its
/// first tag (`<!DOCTYPE html`, `<html`): what a load balancer or proxy in
/// front of Concur answers a 502/503 with (or a login page with a 200).
fn body_is_meant_as_xml(headers: &HeaderMap, body: &[u8]) -> bool {
    let labelled_html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("text/html") || t.eq_ignore_ascii_case("application/xhtml+xml")
        });
    let start = body
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(body)
        .trim_ascii_start();
    let starts_with = |prefix: &[u8]| {
        start
            .get(..prefix.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(prefix))
    };
    start.first() == Some(&b'<')
        && !labelled_html
        && !starts_with(b"<!doctype html")
        && !starts_with(b"<html")
}

/// Whether `Accept` ranks `application/xml` (or `text/xml`) above JSON.
/// No `Accept`, `*/*` or a tie means JSON, the gateway's native answer.
///
/// Each type gets the quality of the most specific range that matches it
/// (RFC 9110 §12.5.1): `application/json;q=0, */*` makes JSON unacceptable
/// and XML acceptable, and `text/*` or `application/*` rank XML as high as
/// they say.
pub fn prefers_xml(headers: &HeaderMap) -> bool {
    // Per candidate: (specificity of the best match so far, its quality);
    // specificity 0 means no range matched yet.
    let mut q = [(0u8, 0.0f32); 3];
    const CANDIDATES: [(&str, &str); 3] = [
        ("application", "json"),
        ("application", "xml"),
        ("text", "xml"),
    ];
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let range = params.next().unwrap_or("").trim();
            let Some((ty, sub)) = range.split_once('/') else {
                continue;
            };
            let quality = params
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
                })
                .next()
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            for (slot, (cty, csub)) in q.iter_mut().zip(CANDIDATES) {
                let specificity = match (ty.trim(), sub.trim()) {
                    ("*", "*") => 1,
                    (t, "*") if t.eq_ignore_ascii_case(cty) => 2,
                    (t, s) if t.eq_ignore_ascii_case(cty) && s.eq_ignore_ascii_case(csub) => 3,
                    _ => continue,
                };
                // The most specific range decides; among equally specific
                // ones (a repeated range), the higher quality.
                if specificity > slot.0 || (specificity == slot.0 && quality > slot.1) {
                    *slot = (specificity, quality);
                }
            }
        }
    }
    let json = q[0].1;
    let xml = q[1].1.max(q[2].1);
    xml > 0.0 && xml > json
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

    /// Only the type and subtype decide; a parameter may hold any bytes a
    /// field value may (a Latin-1 file name, say).
    #[test]
    fn content_type_reads_the_type_whatever_the_parameters_hold() {
        let of = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_bytes(v).unwrap());
            content_type(&h).ok()
        };
        assert_eq!(of(b"image/jpeg; name=\"\xe9.jpg\""), Some(MediaType::Jpeg));
        assert_eq!(of(b"IMAGE/PNG;x=\xff"), Some(MediaType::Png));
        assert_eq!(of(b"application/pdf ; a=b"), Some(MediaType::Pdf));
        assert_eq!(of(b"image/jp\xe9g"), None);
        assert_eq!(of(b"text/html; x=image/jpeg"), None);
    }

    #[test]
    fn the_token_is_redacted_written_as_is_or_percent_encoded() {
        let auth = HeaderValue::from_static("OAuth cc-Tk/abc+def=1234567890");
        let redact = |body: &str| {
            String::from_utf8(redact_token(Bytes::from(body.to_owned()), &auth).to_vec()).unwrap()
        };
        for (body, expected) in [
            ("<M>cc-Tk/abc+def=1234567890</M>", "<M>[redacted]</M>"),
            (
                "<U>https://c/i?t=cc-Tk%2Fabc%2Bdef%3D1234567890&x=1</U>",
                "<U>https://c/i?t=[redacted]&x=1</U>",
            ),
            ("<U>%63c-Tk%2fabc+def=1234567890</U>", "<U>[redacted]</U>"),
            (
                "<U>cc-Tk%252Fabc%252Bdef%253D1234567890</U>",
                "<U>[redacted]</U>",
            ),
            (
                "a cc-Tk/abc+def=1234567890 b cc-Tk%2Fabc+def=1234567890 c",
                "a [redacted] b [redacted] c",
            ),
            ("<M>100% sure: %zz %2</M>", "<M>100% sure: %zz %2</M>"),
            (
                "<M>cc-Tk/abc+def=123456789</M>",
                "<M>cc-Tk/abc+def=123456789</M>",
            ),
        ] {
            assert_eq!(redact(body), expected, "{body}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let at = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after_at(&h, now)
        };
        let date = |t: SystemTime| httpdate::fmt_http_date(t);
        assert_eq!(at("7"), Some(Duration::from_secs(7)));
        assert_eq!(at(" 60 "), Some(Duration::from_secs(60)));
        assert_eq!(at("0"), None);
        assert_eq!(
            at(&date(now + Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(at(&date(now - Duration::from_secs(5))), None, "past");
        assert_eq!(at(&date(now)), None, "now");
        assert_eq!(at("soon"), None);
        assert_eq!(at("-3"), None);
        // Too large for 64 bits: the longest pause (capped by the back-off).
        assert_eq!(
            at("99999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(retry_after_at(&HeaderMap::new(), now), None);
    }

    #[test]
    fn only_a_well_formed_retry_after_is_passed_on() {
        let ok = |v: &str| is_retry_after(&HeaderValue::from_str(v).unwrap());
        assert!(ok("120"));
        assert!(ok(" 0 "));
        assert!(ok("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!ok("soon<script>"));
        assert!(!ok(""));
        assert!(!ok("-5"));
        assert!(!ok("1.5"));
        assert!(!ok("120 s"));
        assert!(!is_retry_after(
            &HeaderValue::from_bytes(b"\xff12").unwrap()
        ));
    }

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
        // The most specific range that matches a type gives its quality.
        assert!(prefers_xml(&accept("application/json;q=0, */*")));
        assert!(prefers_xml(&accept("text/*")));
        assert!(prefers_xml(&accept(
            "application/*, application/json;q=0.1"
        )));
        assert!(prefers_xml(&accept("*/*;q=0.5, application/json;q=0.1")));
        assert!(prefers_xml(&accept("text/*, application/json;q=0.5")));
        assert!(prefers_xml(&accept("Application/XML")));
        assert!(!prefers_xml(&accept("application/*")));
        assert!(!prefers_xml(&accept("text/*;q=0.5, application/json")));
        assert!(!prefers_xml(&accept("image/png")));
        assert!(!prefers_xml(&accept("application/xml;q=0, */*")));
        assert!(!prefers_xml(&accept("text/*, text/xml;q=0")));
        let mut two = accept("application/json;q=0.2");
        two.append(header::ACCEPT, HeaderValue::from_static("text/xml;q=0.3"));
        assert!(prefers_xml(&two));
    }
}
