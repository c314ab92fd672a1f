//! Prometheus metrics, served by the admin listener's `/metrics`.
//!
//! Labels are bounded sets (route, status, code, scope, result): never a user,
//! company, token or request id, so cardinality stays small and nothing secret
//! can reach a scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub body_bytes: Family<DirectionLabel, Counter>,
    pub inspection_rejections: Family<CodeLabel, Counter>,
    pub rate_limited: Family<ScopeLabel, Counter>,
    pub in_flight: Gauge,
    pub credential_reloads: Family<ResultLabel, Counter>,
    pub jwks_reloads: Family<ResultLabel, Counter>,
    pub credential_refreshes: Family<ResultLabel, Counter>,
    pub credentials_unusable: Gauge,
    /// Malware scans by result: `clean`, `found`, `error`, `allowed_on_error`.
    pub scans: Family<ResultLabel, Counter>,
    pub scan_duration: Histogram,
    /// 1 while clamd answers its health ping, 0 when not (absent without `[scan]`).
    pub clamd_up: Gauge,
    /// Bytes of chunked bodies spooled now (memory and temp files).
    pub spool_bytes: Gauge,
    /// Idle client connections closed to make room for a new one at `max_connections`.
    pub connections_evicted: Counter,
    /// New client connections closed at once: the limit was reached and none was idle.
    pub connections_refused: Counter,
    /// Store calls that failed or timed out and fell back to local state, by operation.
    pub store_fallbacks: Family<OpLabel, Counter>,
    /// 1 while the shared store (Redis) answers, 0 when not (absent with the memory backend).
    pub store_up: Gauge,
    /// `Idempotency-Key` outcomes: stored, replayed, conflict, reused.
    pub idempotency: Family<ResultLabel, Counter>,
    /// Spans not exported (`[tracing]`): `queue_full`, `export_failed`.
    pub trace_spans_dropped: Family<ReasonLabel, Counter>,
    /// Client connections and HTTP/2 streams each connection worker runs now.
    pub worker_tasks: Family<WorkerLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, `[scan]`'s and the shared store's included.
    pub fn new() -> Self {
        Self::with_features(true, true)
    }

    /// The metrics of a gateway with or without `[scan]` and a shared
    /// (Redis) store: `clamd_up`, `scan_duration_seconds` and `store_up` are
    /// only exported when their feature is on, so that an alert on
    /// `clamd_up == 0` does not fire for a gateway that scans nothing.
    pub fn with_features(scan: bool, shared_store: bool) -> Self {
        let mut registry = Registry::with_prefix("concur_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, status and error code",
            requests.clone(),
        );
        let request_duration: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_duration.clone(),
        );
        let upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "upstream_duration_seconds",
            "Time of the exchange with Concur",
            upstream_duration.clone(),
        );
        let body_bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "body_bytes",
            "Request body bytes received from clients (in) and delivered to Concur (out)",
            body_bytes.clone(),
        );
        let inspection_rejections = Family::<CodeLabel, Counter>::default();
        registry.register(
            "inspection_rejections",
            "Uploads rejected by the body inspection, by code",
            inspection_rejections.clone(),
        );
        let rate_limited = Family::<ScopeLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by scope",
            rate_limited.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being served",
            in_flight.clone(),
        );
        let credential_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "credential_reloads",
            "Credential file reloads, by result",
            credential_reloads.clone(),
        );
        let jwks_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jwks_reloads",
            "JWKS fetches from auth.jwks_url, by result",
            jwks_reloads.clone(),
        );
        let credential_refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "credential_refreshes",
            "OAuth2 access-token refreshes, by result (ok, failed, rejected, persist_failed, store_failed)",
            credential_refreshes.clone(),
        );
        let credentials_unusable = Gauge::default();
        registry.register(
            "credentials_unusable",
            "Refreshing credentials whose refresh token Concur rejected",
            credentials_unusable.clone(),
        );
        let scans = Family::<ResultLabel, Counter>::default();
        registry.register(
            "scans",
            "Malware scans by ClamAV, by result (clean, found, error, allowed_on_error)",
            scans.clone(),
        );
        let scan_duration = duration_histogram();
        let clamd_up = Gauge::default();
        if scan {
            registry.register(
                "scan_duration_seconds",
                "Time from the start of an upload's scan to clamd's verdict",
                scan_duration.clone(),
            );
            registry.register(
                "clamd_up",
                "1 while clamd answers its health ping",
                clamd_up.clone(),
            );
        }
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes of chunked bodies spooled now, memory and temp files (cap: server.spool_max_bytes)",
            spool_bytes.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Idle client connections closed to make room at server.max_connections",
            connections_evicted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once: server.max_connections reached, none idle",
            connections_refused.clone(),
        );
        let store_fallbacks = Family::<OpLabel, Counter>::default();
        registry.register(
            "store_fallbacks",
            "Store calls that failed or timed out and fell back to this replica's own state, by operation",
            store_fallbacks.clone(),
        );
        let store_up = Gauge::default();
        if shared_store {
            registry.register(
                "store_up",
                "1 while the shared store (Redis) answers",
                store_up.clone(),
            );
        }
        let idempotency = Family::<ResultLabel, Counter>::default();
        registry.register(
            "idempotency",
            "Idempotency-Key outcomes: stored (a final answer kept), replayed, conflict (in flight), reused (another request)",
            idempotency.clone(),
        );
        let trace_spans_dropped = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Spans not exported ([tracing]): queue_full (the bounded export queue was full), export_failed (the collector refused, failed or timed out)",
            trace_spans_dropped.clone(),
        );
        let worker_tasks = Family::<WorkerLabel, Gauge>::default();
        registry.register(
            "worker_tasks",
            "Client connections and HTTP/2 streams each connection worker runs now (server.workers)",
            worker_tasks.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            body_bytes,
            inspection_rejections,
            rate_limited,
            in_flight,
            credential_reloads,
            jwks_reloads,
            credential_refreshes,
            credentials_unusable,
            scans,
            scan_duration,
            clamd_up,
            spool_bytes,
            connections_evicted,
            connections_refused,
            store_fallbacks,
            store_up,
            idempotency,
            trace_spans_dropped,
            worker_tasks,
        }
    }

    /// The OpenMetrics text exposition (`application/openmetrics-text;
    /// version=1.0.0`), what Prometheus asks for first.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format (`text/plain; version=0.0.4`), what
    /// `/metrics` answers a client that does not ask for OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }
}

/// Rewrites an OpenMetrics text exposition as the Prometheus text format
/// 0.0.4, which prometheus-client does not write itself. The samples are the
/// same; what differs is the metadata: a counter's family is named after its
/// sample (`x_total`, not `x`), `info` and `unknown` families are `gauge`
/// and `untyped`, and there are no `# UNIT` lines, `_created` samples or
/// `# EOF`.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut help: Option<(&str, &str)> = None;
    let mut created = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_owned(), kind),
                _ => (family.to_owned(), "untyped"),
            };
            if let Some((of, text)) = help.take()
                && of == family
            {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            created = format!("{family}_created");
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not in this format.
        } else if !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            if line[..name_end] == created {
                continue;
            }
            // An exemplar (` # {...} value`) has no place here either.
            let sample = match line.find(" # {") {
                Some(at) => &line[..at],
                None => line,
            };
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of the 0.0.4 text belongs to the family its `# TYPE`
    /// line names (by the format's suffix rules), and the samples are those
    /// of the OpenMetrics text.
    #[test]
    fn the_prometheus_text_names_each_family_after_its_samples() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "receipt",
                status: 201,
                code: "ok",
            })
            .inc();
        m.request_duration
            .get_or_create(&RouteLabel { route: "receipt" })
            .observe(0.01);
        m.in_flight.set(2);
        let open = m.encode();
        let text = m.encode_prometheus();
        assert!(open.ends_with("# EOF\n"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        let mut family: Option<(String, String)> = None;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                }
                family = Some((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with('#') {
                let (name, kind) = family.clone().expect("a TYPE line first");
                let sample = &line[..line.find(['{', ' ']).unwrap()];
                let ok = sample == name
                    || kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| sample.strip_suffix(s) == Some(name.as_str()));
                assert!(ok, "{line} under {name} {kind}");
                assert!(open.contains(line), "{line}");
                samples += 1;
            }
        }
        assert!(samples > 10, "{text}");
        assert!(
            text.contains("# TYPE concur_gateway_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains(
            "concur_gateway_requests_total{route=\"receipt\",status=\"201\",code=\"ok\"} 1\n"
        ));
        assert!(text.contains("# TYPE concur_gateway_in_flight_requests gauge\n"));
        assert!(text.contains("concur_gateway_in_flight_requests 2\n"));
        assert!(text.contains("# TYPE concur_gateway_request_duration_seconds histogram\n"));
    }
}
