//! Request path, step 9 (see `ARCHITECTURE.md`).
//!
//! The client side ("forward the request to Concur
//! over TLS").
//!
//! A hyper-util pooled client over rustls (aws-lc-rs provider), trusting the
//! Mozilla roots plus `upstream.ca_file`, https only. `max_in_flight` bounds the
//! exchanges open with Concur at once, shared fairly between companies
//! ([`FairSlots`]); a request waits at most `queue_timeout` for a slot, then
//! gets `503 overloaded`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::concurrency::{FairSlots, Slot};
use crate::config::UpstreamConfig;
use crate::error::{BoxError, GatewayError};

/// The body of a request to Concur: the inspected stream, or a spooled body.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    base: Uri,
    pub timeout: Duration,
    slots: Arc<FairSlots>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The rustls client configuration: Mozilla roots plus the optional extra CA file.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate found", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// An https-only HTTP/1.1 connector over rustls, trusting the Mozilla roots
/// plus `ca_file`. Shared by the upstream client, the OAuth2 token client and
/// the JWKS fetcher, so every outgoing connection has the same TLS policy.
pub fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http))
}

/// For the OTLP/HTTP exporter (`telemetry.rs`): the same TLS policy
/// (without a private CA), and plain `http://` allowed for a node-local
/// collector.
pub fn https_or_http_connector() -> Result<HttpsConnector<HttpConnector>, String> {
    let tls = tls_config(None)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// How much of a request hyper may queue toward the TLS stream to Concur
/// before it stops reading the body: about one body chunk. hyper's default
/// (~400 KiB) let each upload pin up to six 64 KiB chunks in the queue while
/// rustls and the socket drained it; one chunk keeps the same throughput and
/// CPU per GB, and took 6–9 MiB off the peak RSS of 64 concurrent 8 MiB
/// uploads (`docs/benchmarks.md`).
const UPSTREAM_WRITE_BUF: usize = 64 * 1024;

impl Upstream {
    /// `https` is [`https_connector`] for `config` (shared with the OAuth2 token client).
    pub fn new(config: &UpstreamConfig, https: HttpsConnector<HttpConnector>) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.max_in_flight)
            .http1_max_buf_size(UPSTREAM_WRITE_BUF)
            .build(https);
        Self {
            client,
            base: config.base_url.clone(),
            timeout: config.timeout,
            slots: FairSlots::new(config.max_in_flight, config.queue_timeout),
        }
    }

    /// The Concur URL for a path built by `route::parse`.
    pub fn uri(&self, path_and_query: &str) -> Uri {
        self.uri_at(None, path_and_query)
    }

    /// The URL for a path at `base` (a credential's geolocation, as returned by
    /// Concur's token endpoint and checked by `refresh::parse_base`: https and a
    /// host only), or at `upstream.base_url` when `None`. The connector is
    /// https-only whatever the base.
    pub fn uri_at(&self, base: Option<&Uri>, path_and_query: &str) -> Uri {
        let base = base.unwrap_or(&self.base);
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .expect("route::parse builds valid paths"),
        );
        Uri::from_parts(parts).expect("scheme and authority come from a valid base URL")
    }

    /// The `Host` header value for Concur.
    pub fn authority(&self) -> &str {
        self.authority_at(None)
    }

    /// The `Host` header value for `base` (see [`Upstream::uri_at`]).
    pub fn authority_at<'a>(&'a self, base: Option<&'a Uri>) -> &'a str {
        base.unwrap_or(&self.base)
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("")
    }

    /// Waits for an upstream slot for `company` (bounded by `queue_timeout`;
    /// handed out fairly between companies, see `concurrency.rs`).
    pub async fn acquire(&self, company: &str) -> Result<Slot, GatewayError> {
        self.slots.acquire(company).await
    }

    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}
