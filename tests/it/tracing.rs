//! `[tracing]`: the spans a gateway exports, received by a real OTLP/HTTP
//! collector (protobuf) started here on port 0; the `traceparent` Concur
//! gets; export that never slows a request. Each gateway owns its tracer
//! provider (`telemetry.rs`), so every test has its own collector.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use tokio::net::TcpListener;

use crate::creds::{BOB_REFRESH, bob_client, credentials_with_bob};
use crate::support::*;

const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";
const RECEIPT: &str = "/api/image/v1.0/receipt";

/// An OTLP/HTTP receiver: `POST /v1/traces`, protobuf; keeps every body.
pub struct Collector {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req
                                    .headers()
                                    .get(http::header::CONTENT_TYPE)
                                    .is_some_and(|v| v == "application/x-protobuf");
                            let body = match req.into_body().collect().await {
                                Ok(c) => c.to_bytes(),
                                Err(_) => Bytes::new(),
                            };
                            let status = if ok {
                                kept.lock().unwrap().push(body);
                                200
                            } else {
                                400
                            };
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, bodies }
    }

    pub fn config(&self) -> String {
        format!(
            "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nprotocol = \"http/protobuf\"\n",
            self.addr
        )
    }

    /// Every export request received, decoded, as resource spans.
    fn resource_spans(&self) -> Vec<ResourceSpans> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| {
                ExportTraceServiceRequest::decode(b.clone())
                    .expect("OTLP protobuf")
                    .resource_spans
            })
            .collect()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.resource_spans()
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// Waits (the export batches for up to a second) until `n` spans are in.
    pub async fn wait_for_spans(&self, n: usize) -> Vec<Span> {
        wait_for(|| self.spans().len() >= n).await;
        self.spans()
    }

    /// The `service.name` of every export request's resources.
    pub fn service_names(&self) -> Vec<String> {
        self.resource_spans()
            .into_iter()
            .filter_map(|rs| rs.resource)
            .flat_map(|r| r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                Some(Value::StringValue(name)) => Some(name),
                _ => None,
            })
            .collect()
    }

    pub fn raw(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().concat()
    }
}

pub fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` the sandbox received, split: (trace id, parent id, flags).
fn upstream_traceparent(h: &Harness) -> (String, String, String) {
    let up = h.uploads().pop().expect("an upload");
    let value = up
        .headers
        .iter()
        .find(|(n, _)| n == "traceparent")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no traceparent to Concur: {:?}", up.headers));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

async fn upload_traced(h: &Harness, who: (&str, &str), traceparent: Option<&str>) -> Reply {
    let token = jwt(who.0, who.1);
    let authorization = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", authorization.as_str()),
        ("content-type", "image/jpeg"),
    ];
    if let Some(tp) = traceparent {
        headers.push(("traceparent", tp));
        headers.push(("tracestate", "caller=opaque-to-concur"));
    }
    h.post(RECEIPT, &headers, JPEG.to_vec()).await
}

#[tokio::test]
async fn a_request_is_a_server_span_under_the_callers_trace_with_a_client_span_to_concur() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&collector.config()).await;
    let logs = capture_logs().await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = upload_traced(&h, ALICE, Some(&traceparent)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let image_id = r.json()["Image"]["Id"].as_str().map(str::to_owned);
    let request_id = r.header("x-request-id").expect("a request id").to_owned();

    // Concur got the gateway's client span as the parent, in the caller's trace.
    let (trace, parent, flags) = upstream_traceparent(&h);
    assert_eq!(trace, CALLER_TRACE);
    assert_eq!(flags, "01");
    assert_ne!(parent, CALLER_SPAN);
    let up = h.uploads().pop().unwrap();
    assert!(
        !up.headers.iter().any(|(n, _)| n == "tracestate"),
        "only traceparent goes to Concur: {:?}",
        up.headers
    );

    let spans = collector.wait_for_spans(5).await;
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            CALLER_TRACE,
            "{}: the caller's trace",
            s.name
        );
    }
    let server = named(&spans, "POST receipt");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    let children = ["authenticate", "admission", "inspection", "concur upload"];
    for name in children {
        let child = named(&spans, name);
        assert_eq!(
            child.parent_span_id, server.span_id,
            "{name}: child of the server span"
        );
    }
    let client = named(&spans, "concur upload");
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(
        hex(&client.span_id),
        parent,
        "Concur's parent is the client span"
    );
    assert!(matches!(
        attr(client, "http.response.status_code"),
        Some(Value::IntValue(201))
    ));

    // The server span carries the access log's safe facts.
    assert!(matches!(attr(server, "http.route"), Some(Value::StringValue(v)) if v == "receipt"));
    assert!(matches!(
        attr(server, "http.response.status_code"),
        Some(Value::IntValue(201))
    ));
    assert!(
        matches!(attr(server, "concur_gateway.code"), Some(Value::StringValue(v)) if v == "ok")
    );
    assert!(
        matches!(attr(server, "concur_gateway.company"), Some(Value::StringValue(v)) if v == ALICE.0)
    );
    assert!(
        matches!(attr(server, "concur_gateway.bytes"), Some(Value::IntValue(n)) if *n == JPEG.len() as i64)
    );
    if let Some(id) = &image_id {
        assert!(
            matches!(attr(server, "concur_gateway.image_id"), Some(Value::StringValue(v)) if v == id)
        );
    }

    // Nothing secret anywhere in what was exported.
    let raw = String::from_utf8_lossy(&collector.raw()).into_owned();
    let jwt = jwt(ALICE.0, ALICE.1);
    for secret in [
        jwt.as_str(),
        jwt.split('.').nth(1).unwrap(),
        ALICE_TOKEN,
        ADMIN_TOKEN,
        GINA_TOKEN,
        ALICE.1,
        "Bearer",
    ] {
        assert!(!raw.contains(secret), "exported spans contain {secret:?}");
    }

    // The access log line has the trace id. (The capture sees every test's
    // events: the line is found by this request's id, not by its path.)
    let logged = logs.finish();
    let line = logged
        .lines()
        .find(|l| l.contains("concur_gateway::access") && l.contains(&request_id))
        .unwrap_or_else(|| panic!("no access line in {logged}"));
    assert!(
        line.contains(&format!("trace_id=\"{CALLER_TRACE}\""))
            || line.contains(&format!("trace_id={CALLER_TRACE}")),
        "{line}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_refused_request_has_its_code_and_a_failed_child_span() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&collector.config()).await;
    let r = h
        .post(
            RECEIPT,
            &[
                ("content-type", "image/jpeg"),
                ("authorization", "Bearer not-a-jwt"),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
    let spans = collector.wait_for_spans(2).await;
    // The route is known before the token is checked.
    let server = named(&spans, "POST receipt");
    assert!(
        matches!(attr(server, "concur_gateway.code"), Some(Value::StringValue(v)) if v == "invalid_token")
    );
    let auth = named(&spans, "authenticate");
    assert_eq!(auth.parent_span_id, server.span_id);
    assert!(
        matches!(attr(auth, "concur_gateway.code"), Some(Value::StringValue(v)) if v == "invalid_token")
    );
    assert!(!String::from_utf8_lossy(&collector.raw()).contains("not-a-jwt"));
    h.stop().await;
}

/// The spans say what sent them (`service.name` in the OTLP resource, which
/// the exporter was never given), a method of the client's own making is
/// `_OTHER` rather than a name without end, and the spans of the last
/// requests reach the collector at shutdown, not a batch delay later (the
/// process would be gone).
#[tokio::test]
async fn spans_name_their_service_bound_methods_and_go_out_at_shutdown() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&format!(
        "{}[server]\ndrain_delay_s = 0\n",
        collector.config()
    ))
    .await;
    let odd = request(h.addr, "FOO-4711", "/nope", &[], Payload::Full(Vec::new())).await;
    assert_eq!(odd.status, 404);
    let r = upload_traced(&h, ("acme", "alice@acme.example"), None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let stopped = Instant::now();
    h.stop().await;
    // No waiting here: what the collector has once the server stopped.
    let spans = collector.spans();
    assert!(
        spans.iter().any(|s| s.name == "POST receipt"),
        "{:?} after {:?}",
        names(&spans),
        stopped.elapsed()
    );
    let other = named(&spans, "HTTP none");
    assert!(
        matches!(attr(other, "http.request.method"), Some(Value::StringValue(v)) if v == "_OTHER")
    );
    assert!(!String::from_utf8_lossy(&collector.raw()).contains("FOO-4711"));
    let services = collector.service_names();
    assert!(
        !services.is_empty() && services.iter().all(|n| n == "concur-gateway"),
        "{services:?}"
    );
}

/// A request its client abandoned (the connection closed while Concur
/// takes its time) still ends its server span with its route, code and
/// request id, and not as an error: the client left, the gateway did not
/// fail.
#[tokio::test]
async fn an_abandoned_request_ends_its_span_with_its_route_and_id() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&collector.config()).await;
    h.sandbox
        .push_fault(concur_gateway::sandbox::Fault::Delay { millis: 1500 });
    let gave_up = tokio::time::timeout(
        Duration::from_millis(700),
        upload_traced(&h, ("acme", "alice@acme.example"), None),
    )
    .await;
    assert!(gave_up.is_err(), "the client gave up before the answer");
    wait_for(|| h.gateway.metrics.in_flight.get() == 0).await;
    let spans = collector.wait_for_spans(1).await;
    let server = named(&spans, "POST receipt");
    assert!(
        matches!(attr(server, "concur_gateway.code"), Some(Value::StringValue(v)) if v == "client_closed"),
        "{server:?}"
    );
    assert!(matches!(attr(server, "http.route"), Some(Value::StringValue(v)) if v == "receipt"));
    assert!(matches!(
        attr(server, "concur_gateway.request_id"),
        Some(Value::StringValue(v)) if !v.is_empty()
    ));
    // 2 is STATUS_CODE_ERROR.
    assert_ne!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "{server:?}"
    );
    h.stop().await;
}

/// A gateway exporting to `collector`, with bob's refreshing credential
/// (its first upload needs a token refresh).
async fn with_bob(collector: &Collector) -> Harness {
    Harness::builder()
        .merge(&collector.config())
        .credentials(credentials_with_bob(BOB_REFRESH))
        .oauth_client(bob_client(BOB_REFRESH))
        .clock(Arc::new(concur_gateway::auth::ManualClock::new(now())))
        .start()
        .await
}

#[tokio::test]
async fn a_token_refresh_is_a_child_span_of_the_request_that_needed_it() {
    let collector = Collector::start().await;
    let h = with_bob(&collector).await;
    let r = upload_traced(&h, BOB, None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let spans = collector.wait_for_spans(6).await;
    let server = named(&spans, "POST receipt");
    assert!(
        server.parent_span_id.is_empty(),
        "the gateway started this trace"
    );
    let refresh = named(&spans, "credential refresh");
    assert_eq!(refresh.parent_span_id, server.span_id);
    let raw = String::from_utf8_lossy(&collector.raw()).into_owned();
    for secret in [BOB_REFRESH, crate::creds::BOB_SECRET, BOB.1] {
        assert!(!raw.contains(secret), "exported spans contain {secret:?}");
    }
    h.stop().await;
}

/// Three requests need bob's token at once; one refreshes (its child span),
/// the two that waited for it link to that span from their own traces.
#[tokio::test]
async fn requests_that_waited_for_a_refresh_link_to_its_span() {
    let collector = Collector::start().await;
    let h = with_bob(&collector).await;
    h.sandbox.delay_token_answers(Duration::from_millis(400));
    let traces = [
        "4bf92f3577b34da6a3ce929d0e0e4730",
        "4bf92f3577b34da6a3ce929d0e0e4731",
        "4bf92f3577b34da6a3ce929d0e0e4732",
    ];
    let parents: Vec<String> = traces
        .iter()
        .map(|t| format!("00-{t}-{CALLER_SPAN}-01"))
        .collect();
    let (a, b, c) = tokio::join!(
        upload_traced(&h, BOB, Some(&parents[0])),
        upload_traced(&h, BOB, Some(&parents[1])),
        upload_traced(&h, BOB, Some(&parents[2])),
    );
    let replies = [a, b, c];
    for r in &replies {
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(h.sandbox.token_requests(), 1, "one refresh for the three");
    let spans = collector.wait_for_spans(3 * 5).await;
    let refreshes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "credential refresh")
        .collect();
    assert_eq!(refreshes.len(), 1, "{:?}", names(&spans));
    let refresh = refreshes[0];
    let linked: Vec<&Span> = spans
        .iter()
        .filter(|s| s.links.iter().any(|l| l.span_id == refresh.span_id))
        .collect();
    assert_eq!(linked.len(), 2, "{:?}", names(&spans));
    let mut traces_seen: Vec<String> = linked.iter().map(|s| hex(&s.trace_id)).collect();
    traces_seen.push(hex(&refresh.trace_id));
    traces_seen.sort();
    assert_eq!(traces_seen, traces, "one refresh trace and two linked ones");
    for s in linked {
        let link = s
            .links
            .iter()
            .find(|l| l.span_id == refresh.span_id)
            .unwrap();
        assert_eq!(link.trace_id, refresh.trace_id);
        assert!(
            s.events
                .iter()
                .any(|e| e.name == "waited for a credential refresh"),
            "{:?}",
            s.events
        );
    }
    h.stop().await;
}

#[tokio::test]
async fn sampling_keeps_a_callers_sampled_trace_and_drops_its_own() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&format!("{}sample_ratio = 0.0\n", collector.config())).await;
    // Not sampled here: no span, but Concur still gets a traceparent (flag 00).
    let r = upload_traced(&h, ALICE, None).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, _, flags) = upstream_traceparent(&h);
    assert_eq!(flags, "00");
    // The caller's sampled trace is honoured.
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = upload_traced(&h, ALICE, Some(&traceparent)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let spans = collector.wait_for_spans(5).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_later = collector.spans();
    assert_eq!(spans.len(), spans_later.len(), "{:?}", names(&spans_later));
    assert!(spans_later.iter().all(|s| hex(&s.trace_id) == CALLER_TRACE));
    h.stop().await;
}

#[tokio::test]
async fn without_a_tracing_section_nothing_is_propagated() {
    let h = Harness::start().await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = upload_traced(&h, ALICE, Some(&traceparent)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let up = h.uploads().pop().unwrap();
    assert!(
        !up.headers.iter().any(|(n, _)| n == "traceparent"),
        "the request to Concur is built from scratch: {:?}",
        up.headers
    );
    h.stop().await;
}

/// A collector that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_delay_requests() {
    for protocol in ["http/protobuf", "grpc"] {
        let (addr, hole) = black_hole().await;
        let endpoint = match protocol {
            "grpc" => format!("http://{addr}"),
            _ => format!("http://{addr}/v1/traces"),
        };
        let h = Harness::with_config(&format!(
            "[tracing]\notlp_endpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n"
        ))
        .await;
        // Warm up the connection to the sandbox, then time a few uploads
        // while the first export is stuck.
        assert_eq!(h.upload(RECEIPT, JPEG).await.status, 201);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        for i in 0..5 {
            let started = Instant::now();
            let r = h.upload(RECEIPT, JPEG).await;
            assert_eq!(r.status, 201, "{protocol} #{i}: {}", r.text());
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{protocol} #{i} took {took:?}"
            );
        }
        h.stop().await;
        hole.abort();
    }
}

#[tokio::test]
async fn spans_a_collector_cannot_take_are_counted_as_dropped() {
    // Nothing listens there: each export fails at once.
    let port = free_port();
    let h = Harness::with_config(&format!(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}/v1/traces\"\nprotocol = \"http/protobuf\"\n"
    ))
    .await;
    let r = h.upload(RECEIPT, JPEG).await;
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for_async(async || {
        h.admin_get("/metrics").await.text().lines().any(|l| {
            l.starts_with("concur_gateway_trace_spans_dropped_total{reason=\"export_failed\"}")
                && !l.ends_with(" 0")
        })
    })
    .await;
    h.stop().await;
}

/// A `traceparent` that is not one (short ids, which the propagator would
/// read zero-padded, or two headers) starts a new trace (W3C Trace Context):
/// Concur gets the gateway's own trace id, not the caller's padded one.
#[tokio::test]
async fn a_malformed_or_doubled_traceparent_starts_a_new_trace() {
    let collector = Collector::start().await;
    let h = Harness::with_config(&collector.config()).await;
    let short = format!("00-{}-{CALLER_SPAN}-01", &CALLER_TRACE[2..]);
    let r = upload_traced(&h, ALICE, Some(&short)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (trace, _, _) = upstream_traceparent(&h);
    assert!(!trace.ends_with(&CALLER_TRACE[2..]), "{trace}");
    // Two traceparent headers: neither is continued.
    let auth = format!("Bearer {}", jwt(ALICE.0, ALICE.1));
    let first = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let other = format!("00-{}-{CALLER_SPAN}-01", "1".repeat(32));
    let r = h
        .post(
            RECEIPT,
            &[
                ("authorization", &auth),
                ("content-type", "image/jpeg"),
                ("traceparent", &first),
                ("traceparent", &other),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let (trace, _, _) = upstream_traceparent(&h);
    assert_ne!(trace, CALLER_TRACE);
    assert_ne!(trace, "1".repeat(32));
    h.stop().await;
}
