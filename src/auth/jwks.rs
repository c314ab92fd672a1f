//! `auth.jwks_url`: the verification keys fetched from the IdP over HTTPS.
//!
//! Off the request path: a background task fetches the JWKS at start (the
//! gateway is not ready until it has keys), refetches it every
//! `auth.jwks_refresh_s`, and early when a token names an unknown `kid`
//! (an IdP rotated its key), at most once per `auth.jwks_min_refetch_s`.
//! A failed fetch keeps the last good key set: an IdP outage does not lock
//! callers out.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::KeySet;
use crate::config::JwksUrl;
use crate::gateway::Gateway;
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

/// Runs until the gateway is dropped.
pub async fn refresher(gw: Weak<Gateway>, config: JwksUrl) {
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "JWKS client could not be built");
            return;
        }
    };
    let mut retry = Duration::from_secs(1);
    loop {
        let Some(gateway) = gw.upgrade() else { return };
        let result = fetch_with(&client, &config).await;
        let fetched_at = tokio::time::Instant::now();
        let loaded = match result {
            Ok(keys) => {
                tracing::info!(url = %config.url, kids = ?keys.kids(), "JWKS loaded");
                gateway.auth.replace_keys(keys);
                gateway
                    .metrics
                    .jwks_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                true
            }
            Err(e) => {
                tracing::warn!(url = %config.url, error = %e, "JWKS fetch failed; keeping the last good key set");
                gateway
                    .metrics
                    .jwks_reloads
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                false
            }
        };
        // Until the first success, retry with back-off; then the regular period.
        let wait = if loaded || gateway.auth.keys_loaded() {
            retry = Duration::from_secs(1);
            config.refresh
        } else {
            retry = (retry * 2).min(config.refresh);
            retry
        };
        let notified = async {
            gateway.auth.unknown_kid().notified().await;
            // Rate-limit refetches triggered by unknown key ids.
            tokio::time::sleep_until(fetched_at + config.min_refetch).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = notified => {
                tracing::info!("token with an unknown kid: refetching the JWKS");
            }
        }
        drop(gateway);
    }
}
