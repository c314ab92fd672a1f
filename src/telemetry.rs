//! `[tracing]`: OpenTelemetry spans, exported by OTLP (see `ARCHITECTURE.md`).
//!
//! Design: spans are made with the OpenTelemetry API directly, not through
//! `tracing` macros and a subscriber layer. Each [`Gateway`](crate::gateway::Gateway)
//! owns its [`Telemetry`] (tracer provider, sampler, exporter), so several
//! gateways in one process (the integration tests) each export to their own
//! collector, and the process-global `tracing` subscriber (the logs) is left
//! alone.
//!
//! The request's trace travels in its [`RequestCtx`](crate::context::RequestCtx)
//! as an [`opentelemetry::Context`]: the server span, and this gateway's
//! tracer as a context value. Any code holding that context (or running under
//! it as the current one, as the token refresh does) opens child spans with
//! [`Child`], without reaching for the gateway.
//!
//! Export is batched and bounded: a finished span goes into a bounded queue
//! (`try_send`, never waiting); one task per gateway takes batches from it and
//! exports them, each under a timeout. A full queue or a failed export drops
//! spans, counted in `concur_gateway_trace_spans_dropped_total`. A slow or
//! absent collector therefore never slows or fails a request.
//!
//! Attributes are chosen here and in `stack.rs` only from facts that are safe
//! to show: route, status, code, company, bytes, image id. Never a token, a
//! JWT, a secret, the user id or a query string.

use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;

use crate::config::{OtlpProtocol, TracingConfig};
use crate::metrics::{Metrics, ReasonLabel};

/// Finished spans waiting for export; beyond this they are dropped (counted).
pub const QUEUE_SPANS: usize = 2048;
/// Spans per export request.
pub const MAX_BATCH: usize = 512;
/// How long a batch waits to fill before it is sent anyway.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export (connect, send, answer); its spans are dropped past it.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, how long the spans still queued may take to go out (within
/// the margin the Kubernetes base leaves past `shutdown_grace_s`).
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// The service name when `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`) does not give one.
pub const SERVICE_NAME: &str = "concur-gateway";

/// This gateway's tracer, carried in a request's [`Context`].
#[derive(Clone, Debug)]
struct GatewayTracer(SdkTracer);

/// A gateway's tracing: provider, tracer, the W3C propagator.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// The export task, awaited at shutdown ([`Telemetry::flush`]).
    export: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Telemetry {
    /// Builds the exporter and starts its export task. Needs a Tokio runtime.
    pub fn new(config: &TracingConfig, metrics: &Metrics) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing: the exporter needs a Tokio runtime".to_owned())?;
        let dropped = metrics.trace_spans_dropped.clone();
        let resource = resource();
        let (processor, export) = match config.protocol {
            OtlpProtocol::Grpc => {
                let _guard = runtime.enter();
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&config.otlp_endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
                exporter.set_resource(&resource);
                BoundedBatch::start(&runtime, exporter, dropped)
            }
            OtlpProtocol::HttpProtobuf => {
                let connector = crate::upstream::https_or_http_connector()
                    .map_err(|e| format!("tracing: {e}"))?;
                let client =
                    opentelemetry_http::hyper::HyperClient::new(connector, EXPORT_TIMEOUT, None);
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(&config.otlp_endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
                exporter.set_resource(&resource);
                BoundedBatch::start(&runtime, exporter, dropped)
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("concur-gateway");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            export: Mutex::new(Some(export)),
        })
    }

    /// At shutdown, once the requests are done: closes the queue and waits
    /// (at most [`SHUTDOWN_FLUSH`]) for the export task to send what is left,
    /// the spans of the uploads that finished during the drain among them.
    pub async fn flush(&self) {
        let _ = self.provider.shutdown();
        let export = self.export.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(export) = export
            && tokio::time::timeout(SHUTDOWN_FLUSH, export).await.is_err()
        {
            tracing::warn!(
                "the spans still queued at shutdown did not reach the collector in time"
            );
        }
    }

    /// The request's server span, child of the caller's `traceparent` when
    /// it sent one, in a context that also carries this gateway's tracer.
    pub fn server_span(&self, method: &http::Method, headers: &HeaderMap) -> Context {
        let parent = self.propagator.extract(&HeaderExtract(headers));
        let span = self
            .tracer
            .span_builder(span_method(method))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method_label(method))])
            .start_with_context(&self.tracer, &parent);
        parent
            .with_span(span)
            .with_value(GatewayTracer(self.tracer.clone()))
    }

    /// Writes the `traceparent` of `cx` into `headers`. Only that: the
    /// caller's `tracestate` is its own data, and the request to Concur is
    /// built from scratch.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInject(headers));
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Closes the queue: the export task sends what is left and ends.
        let _ = self.provider.shutdown();
    }
}

/// A request's method as spans show it (`http.request.method`): one of
/// HTTP's own, or `_OTHER` (OpenTelemetry's HTTP conventions), so that a
/// client cannot make span names and attribute values without end.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

/// The method part of a span name: [`method_label`], `HTTP` for `_OTHER`.
pub fn span_method(method: &http::Method) -> &'static str {
    match method_label(method) {
        "_OTHER" => "HTTP",
        known => known,
    }
}

/// What the spans are from (the OTLP resource): the service's name and
/// version, with what the standard variables add (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`: a pod name, an environment) and the SDK's own
/// `telemetry.sdk.*`. The name is `concur-gateway` unless they give one.
fn resource() -> Resource {
    resource_named(std::env::var("OTEL_SERVICE_NAME").ok())
}

/// [`resource`], with `OTEL_SERVICE_NAME` given: it wins over a
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (OpenTelemetry's SDK
/// configuration spec; the SDK's detectors let the latter win).
fn resource_named(service_name: Option<String>) -> Resource {
    let from_env = service_name.filter(|n| !n.trim().is_empty());
    let detected = Resource::builder().build();
    let named = from_env.or_else(|| {
        detected
            .get(&opentelemetry::Key::new("service.name"))
            .map(|v| v.to_string())
            .filter(|n| !n.is_empty() && !n.starts_with("unknown_service"))
    });
    Resource::builder()
        .with_service_name(named.unwrap_or_else(|| SERVICE_NAME.to_owned()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The trace id of `cx`'s span, for the access log; `None` without tracing.
pub fn trace_id(cx: &Context) -> Option<String> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// A child span of a request's context; ended when dropped. Without
/// `[tracing]` (no tracer in the context) it is nothing.
#[derive(Debug)]
pub struct Child(Option<Context>);

impl Child {
    pub fn start(parent: &Context, name: &'static str, kind: SpanKind) -> Self {
        Child(parent.get::<GatewayTracer>().map(|GatewayTracer(tracer)| {
            let span = tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(tracer, parent);
            parent.with_span(span)
        }))
    }

    /// An internal child of the current context (see [`opentelemetry::context::FutureExt`]).
    pub fn current(name: &'static str) -> Self {
        Context::map_current(|cx| Self::start(cx, name, SpanKind::Internal))
    }

    pub fn attr(&self, kv: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(kv);
        }
    }

    /// Marks the span failed with the gateway's stable error code.
    pub fn fail(&self, code: &'static str) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new("concur_gateway.code", code));
            span.set_status(Status::error(code));
        }
    }

    /// The span's context (to parent further spans, or to propagate).
    pub fn context(&self) -> Option<&Context> {
        self.0.as_ref()
    }

    /// The span's identity, for other spans to link to.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|cx| cx.span().span_context().clone())
    }
}

/// Links the current span to `target`, a span of another trace (or of
/// another request) that this one waited for, with an event saying so: the
/// requests that waited for one credential refresh each point at the single
/// refresh span, which is a child of the request that started it.
pub fn link_current(target: SpanContext, event: &'static str) {
    Context::map_current(|cx| {
        let span = cx.span();
        if !span.span_context().is_valid() {
            return;
        }
        span.add_event(
            event,
            vec![
                KeyValue::new("linked.trace_id", target.trace_id().to_string()),
                KeyValue::new("linked.span_id", target.span_id().to_string()),
            ],
        );
        span.add_link(target, Vec::new());
    });
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// A server span is an error for a 5xx answer only (OpenTelemetry's HTTP
/// conventions: a 4xx is the caller's problem, told by its `code`).
pub fn set_outcome(cx: &Context, status: u16, code: &'static str) {
    if status >= 500 {
        cx.span().set_status(Status::error(code));
    }
}

struct HeaderExtract<'a>(&'a HeaderMap);

impl Extractor for HeaderExtract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == "traceparent" {
            // W3C Trace Context: one header, of exactly the shape of its
            // version, or none at all (a new trace). The propagator itself
            // reads short ids as if zero-padded.
            let mut values = self.0.get_all(key).iter();
            let value = values.next()?.to_str().ok()?;
            return (values.next().is_none() && is_traceparent(value)).then_some(value);
        }
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Whether `value` is a `traceparent` as W3C Trace Context §3.2 writes it:
/// `version-traceid-parentid-flags` in lowercase hex of 2, 32, 16 and 2
/// digits; version `00` is exactly that, a later version may add fields
/// after a `-`, and version `ff` is invalid. (All-zero ids are the
/// propagator's to refuse.)
fn is_traceparent(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|s| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    };
    let dash = |i: usize| b.get(i) == Some(&b'-');
    let fields =
        hex(0..2) && dash(2) && hex(3..35) && dash(35) && hex(36..52) && dash(52) && hex(53..55);
    let rest = match b.get(..2) {
        Some(b"00") => b.len() == 55,
        Some(b"ff") => false,
        _ => b.len() == 55 || dash(55),
    };
    fields && rest
}

struct HeaderInject<'a>(&'a mut HeaderMap);

impl Injector for HeaderInject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if key != "traceparent" {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

// ---- Export: a bounded queue and one task ----

/// The span processor: finished spans into a bounded queue, never waiting.
#[derive(Debug)]
struct BoundedBatch {
    queue: Mutex<Option<mpsc::Sender<SpanData>>>,
    dropped: Family<ReasonLabel, Counter>,
}

impl BoundedBatch {
    fn start<E: SpanExporter + 'static>(
        runtime: &tokio::runtime::Handle,
        exporter: E,
        dropped: Family<ReasonLabel, Counter>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        let export = runtime.spawn(export_loop(exporter, rx, dropped.clone()));
        let batch = Self {
            queue: Mutex::new(Some(tx)),
            dropped,
        };
        (batch, export)
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sent = match queue.as_ref() {
            Some(tx) => tx.try_send(span).is_ok(),
            None => false,
        };
        if !sent {
            self.dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full",
                })
                .inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
}

async fn export_loop<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    dropped: Family<ReasonLabel, Counter>,
) {
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(first);
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let failed = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        if let Some(why) = failed {
            tracing::debug!(error = %why, spans = n, "span export failed");
            dropped
                .get_or_create(&ReasonLabel {
                    reason: "export_failed",
                })
                .inc_by(n);
        }
    }
    let _ = exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_named_by_otel_service_name_else_concur_gateway() {
        let name = |r: &Resource| {
            r.get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
        };
        // (This process sets neither variable.)
        assert_eq!(name(&resource_named(None)).as_deref(), Some(SERVICE_NAME));
        assert_eq!(
            name(&resource_named(Some(" ".into()))).as_deref(),
            Some(SERVICE_NAME)
        );
        let named = resource_named(Some("receipts-gw".into()));
        assert_eq!(name(&named).as_deref(), Some("receipts-gw"));
        assert!(
            named
                .get(&opentelemetry::Key::new("service.version"))
                .is_some()
        );
    }

    #[test]
    fn only_a_well_formed_traceparent_is_read() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = "00f067aa0ba902b7";
        assert!(is_traceparent(&format!("00-{id}-{parent}-01")));
        assert!(is_traceparent(&format!("01-{id}-{parent}-01-later-fields")));
        assert!(is_traceparent(&format!("01-{id}-{parent}-00")));
        for bad in [
            format!("00-{}-{parent}-01", &id[2..]),
            format!("00-{id}-{}-01", &parent[1..]),
            format!("00-{id}-{parent}-1"),
            format!("00-{id}-{parent}-01-extra"),
            format!("ff-{id}-{parent}-01"),
            format!("01-{id}-{parent}-01x"),
            format!("00-{}-{parent}-01", id.to_uppercase()),
            format!("00-{id}0-{parent}-01"),
            format!("0-{id}-{parent}-01"),
            String::new(),
        ] {
            assert!(!is_traceparent(&bad), "{bad}");
        }
        // Two headers: none is read.
        let mut h = HeaderMap::new();
        h.append(
            "traceparent",
            HeaderValue::from_str(&format!("00-{id}-{parent}-01")).unwrap(),
        );
        assert!(HeaderExtract(&h).get("traceparent").is_some());
        h.append(
            "traceparent",
            HeaderValue::from_str(&format!("00-{id}-{parent}-00")).unwrap(),
        );
        assert_eq!(HeaderExtract(&h).get("traceparent"), None);
    }
}
