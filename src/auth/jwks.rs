//! `auth.jwks_url`: the verification keys fetched from the IdP over HTTPS.
//!
//! Off the request path: a background task fetches the JWKS at start (the
//! gateway is not ready until it has keys), refetches it every
//! `auth.jwks_refresh_s`, and early when a token names an unknown `kid`
//! (an IdP rotated its key), at most once per `auth.jwks_min_refetch_s`.
//! A failed fetch keeps the last good key set: an IdP outage does not lock
//! callers out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{Authenticator, KeySet};
use crate::config::JwksUrl;
use crate::metrics::ResultLabel;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client(config: &JwksUrl) -> Result<HttpsClient, String> {
    let https = crate::upstream::https_connector(config.ca_file.as_deref(), FETCH_TIMEOUT)?;
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// One fetch of the key set.
pub async fn fetch(config: &JwksUrl) -> Result<KeySet, String> {
    let client = client(config)?;
    fetch_with(&client, config).await
}

async fn fetch_with(client: &HttpsClient, config: &JwksUrl) -> Result<KeySet, String> {
    let request = http::Request::get(config.url.clone())
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        KeySet::from_jwks(&body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// Keeps `auth`'s key set fresh; runs until its task is aborted (the
/// gateway's housekeeping owns it). `reloads` counts fetches by result.
pub async fn refresher(
    auth: Arc<Authenticator>,
    reloads: Family<ResultLabel, Counter>,
    config: JwksUrl,
) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "JWKS client could not be built");
            return;
        }
    };
    let mut retry = Duration::from_secs(1);
    loop {
        let result = fetch_with(&client, &config).await;
        let fetched_at = tokio::time::Instant::now();
        let loaded = match result {
            Ok(keys) => {
                tracing::info!(url = %config.url, kids = ?keys.kids(), "JWKS loaded");
                auth.replace_keys(keys);
                reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                true
            }
            Err(e) => {
                tracing::warn!(url = %config.url, error = %e, "JWKS fetch failed; keeping the last good key set");
                reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                false
            }
        };
        // Until the first success, retry with back-off; then the regular period.
        let wait = if loaded || auth.keys_loaded() {
            retry = Duration::from_secs(1);
            config.refresh
        } else {
            retry = (retry * 2).min(config.refresh);
            retry
        };
        let notified = async {
            auth.unknown_kid().notified().await;
            // Rate-limit refetches triggered by unknown key ids.
            tokio::time::sleep_until(fetched_at + config.min_refetch).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {
                tracing::info!("token with an unknown kid: refetching the JWKS");
            }
        }
    }
}
