//! The gateway's shared state, built once from a validated [`Config`].

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::auth::{Authenticator, Clock, KeySet, SystemClock};
use crate::clamav::Scanner;
use crate::config::{Config, Files, KeySource, Parsed, UpstreamConfig};
use crate::credentials::refresh::{SharedTokens, TokenManager, check_state_dir};
use crate::credentials::{CredentialStore, Reload};
use crate::metrics::{Metrics, ResultLabel};
use crate::spool::SpoolBudget;
use crate::store::Store;
use crate::telemetry::Telemetry;
use crate::upstream::{Upstream, https_connector, tls_config};

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    /// Rate limits, uploads in flight, Concur back-off and shared token
    /// state: this process's own, or shared on Redis (`store/`).
    pub store: Arc<Store>,
    pub credentials: CredentialStore,
    /// Live access tokens of the refreshing credentials (survives reloads).
    pub tokens: TokenManager,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// The clamd client, with `[scan]`.
    pub scanner: Option<Scanner>,
    /// What chunked uploads may spool at once (`server.spool_max_bytes`).
    pub spool_budget: Arc<SpoolBudget>,
    /// Spans and their export, with `[tracing]` (`telemetry.rs`).
    pub telemetry: Option<Telemetry>,
    draining: AtomicBool,
    /// The shutdown grace ran out: connections still open are being dropped.
    grace_over: AtomicBool,
    /// Keyed uploads, each on a task of its own (`proxy.rs`): they may
    /// outlive their client's connection, and the shutdown waits for them
    /// as for connections.
    pub detached: tokio_util::task::TaskTracker,
    /// Cancelled when the shutdown grace is over: the keyed uploads still
    /// running are cut, their keys released.
    pub cut_detached: tokio_util::sync::CancellationToken,
}

impl Gateway {
    /// Loads keys and credentials and builds the upstream client. Every problem
    /// is reported, naming its config key (this is also what `check-config` runs).
    pub fn new(config: Config) -> Result<Self, Vec<String>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let keys = load_keys(&config.auth.keys).map_err(|e| problems.push(e));
        let credentials =
            open_credentials(&config.credentials.file).map_err(|ps| problems.extend(ps));
        problems.extend(check_state_dir(config.credentials.state_dir.as_deref()).err());
        let metrics = Metrics::with_features(config.scan.is_some(), config.store.redis.is_some());
        let store = Store::new(
            &config.store,
            &config.rate_limit,
            &config.idempotency,
            &metrics,
        )
        .map(Arc::new)
        .map_err(|e| problems.push(e));
        let clients = upstream_connector(&config.upstream)
            .map_err(|e| problems.push(e))
            .and_then(|https| {
                let mut tokens = TokenManager::new(&config, https.clone(), clock.clone(), &metrics)
                    .map_err(|e| problems.push(e))?;
                if let (Some(redis), Ok(store)) = (&config.store.redis, &store) {
                    let key =
                        crate::sealing::load_key(&redis.encryption_key_file).map_err(|e| {
                            problems.push(format!(
                                "store.encryption_key_file {}: {e}",
                                redis.encryption_key_file.display()
                            ))
                        })?;
                    if let Some(shared) =
                        SharedTokens::new(store.clone(), &key, redis.refresh_lock_ttl)
                    {
                        tokens = tokens.with_shared(shared);
                    }
                }
                Ok((Upstream::new(&config.upstream, https), tokens))
            });
        let telemetry = config
            .tracing
            .as_ref()
            .map(|t| Telemetry::new(t, &metrics))
            .transpose()
            .map_err(|e| problems.push(e));
        match (keys, credentials, clients, store, telemetry) {
            (Ok(keys), Ok(credentials), Ok((upstream, tokens)), Ok(store), Ok(telemetry))
                if problems.is_empty() =>
            {
                tokens.start(&credentials.current());
                let scanner = config.scan.as_ref().map(|s| Scanner::new(s, &metrics));
                let spool_budget =
                    SpoolBudget::new(config.server.spool_max_bytes, metrics.spool_bytes.clone());
                Ok(Self {
                    auth: Arc::new(Authenticator::new(&config.auth, keys, clock)),
                    store,
                    credentials,
                    tokens,
                    upstream,
                    metrics,
                    scanner,
                    spool_budget,
                    telemetry,
                    draining: AtomicBool::new(false),
                    grace_over: AtomicBool::new(false),
                    detached: tokio_util::task::TaskTracker::new(),
                    cut_detached: tokio_util::sync::CancellationToken::new(),
                    config,
                })
            }
            _ => Err(problems),
        }
    }

    /// Details for `/readyz`: refreshing credentials Concur refused. They do not
    /// make the gateway unready (it still serves every other caller, and a
    /// restart would not help), but an operator must replace them.
    pub fn readiness_details(&self) -> Vec<String> {
        let mut details = self.tokens.unusable();
        details.extend(self.store.readiness_details());
        details
    }

    /// Ready: configuration, keys and credentials are loaded (they are, once
    /// constructed), the gateway is not draining, and with `[scan]` clamd
    /// answered its last ping (unless `scan.on_error = "allow"`).
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("draining: shutting down".into());
        }
        if !self.auth.keys_loaded() {
            return Err("JWT verification keys not loaded yet (auth.jwks_url)".into());
        }
        let creds = self.credentials.current();
        if creds.is_empty() {
            return Err("no Concur credentials loaded".into());
        }
        if let Some(scanner) = &self.scanner {
            scanner.readiness()?;
        }
        Ok(())
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A connection outlived `server.shutdown_grace_s` and is dropped with
    /// its requests: they were cut short by the gateway, not their clients.
    pub fn mark_grace_over(&self) {
        self.grace_over.store(true, Ordering::SeqCst);
    }

    pub fn is_grace_over(&self) -> bool {
        self.grace_over.load(Ordering::SeqCst)
    }

    /// Background housekeeping: credential reloads, rate-limiter pruning and,
    /// with `[scan]`, clamd health pings (the first one at once).
    pub fn spawn_housekeeping(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let jwks = match &self.config.auth.keys {
            KeySource::JwksUrl(config) => Some(tokio::spawn(crate::auth::jwks::refresher(
                self.auth.clone(),
                self.metrics.jwks_reloads.clone(),
                config.clone(),
            ))),
            _ => None,
        };
        let gw = Arc::downgrade(self);
        let every = self.config.credentials.reload_interval;
        let pings = self.scanner.clone().map(|scanner| async move {
            let mut tick = tokio::time::interval(scanner.ping_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = scanner.ping().await;
            }
        });
        let credentials = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u64 = 0;
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                ticks += 1;
                gw.reload_credentials();
                if ticks.is_multiple_of(12) {
                    gw.store.prune();
                }
            }
        };
        let store_health = self.store.spawn_health();
        tokio::spawn(async move {
            // Aborting housekeeping aborts the JWKS refresher and the store's
            // health loop with it.
            let _jwks = jwks.map(AbortOnDrop);
            let _store = store_health.map(AbortOnDrop);
            match pings {
                Some(pings) => {
                    tokio::join!(pings, credentials);
                }
                None => credentials.await,
            }
        })
    }

    /// Checks the credential file and swaps in a new valid set.
    pub fn reload_credentials(&self) -> Reload {
        let result = self.credentials.reload_if_changed();
        match &result {
            Reload::Unchanged => {}
            Reload::Replaced { credentials } => {
                self.tokens.sync(&self.credentials.current());
                tracing::info!(credentials, "credential file reloaded");
                self.metrics
                    .credential_reloads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
            }
            Reload::Refused(problems) => {
                tracing::error!(
                    ?problems,
                    "credential file refused; the previous set stays in use"
                );
                self.metrics
                    .credential_reloads
                    .get_or_create(&ResultLabel { result: "refused" })
                    .inc();
            }
        }
        result
    }
}

/// `check-config`: everything `serve` would load, every problem in one run.
///
/// The config file is validated and, even when it has problems, every file it
/// names that could be resolved is loaded too (keys, credentials, CA files,
/// the state folder), each problem naming its key. When all of that passes,
/// the gateway is built as `serve` builds it. `auth.jwks_url` is fetched
/// whenever the config itself is valid.
pub async fn check(path: &Path) -> Vec<String> {
    let Parsed { config, files } = Config::read(path);
    let (config, mut problems) = match config {
        Ok(config) => (Some(config), Vec::new()),
        Err(errors) => (None, errors.0),
    };
    problems.extend(check_files(&files));
    let Some(config) = config else {
        return problems;
    };
    // What `serve` fetches at start is fetched here too (unless its CA file
    // failed, which is reported already).
    let jwks = match &config.auth.keys {
        KeySource::JwksUrl(url) if tls_config(url.ca_file.as_deref()).is_ok() => {
            crate::auth::jwks::fetch(url)
                .await
                .err()
                .map(|e| format!("auth.jwks_url {}: {e}", url.url))
        }
        _ => None,
    };
    if problems.is_empty()
        && let Err(ps) = Gateway::new(config)
    {
        problems.extend(ps);
    }
    problems.extend(jwks);
    problems
}

/// Loads each file in `files`, as `serve` would; the problems name their keys.
fn check_files(files: &Files) -> Vec<String> {
    let mut problems = Vec::new();
    let key_files = [
        files.jwks_file.clone().map(KeySource::JwksFile),
        files
            .hs256_secret_file
            .clone()
            .map(KeySource::Hs256SecretFile),
    ];
    for source in key_files.into_iter().flatten() {
        problems.extend(load_keys(&source).err());
    }
    if let Some(file) = &files.credentials_file {
        problems.extend(open_credentials(file).err().unwrap_or_default());
    }
    for (key, ca_file) in [
        ("upstream.ca_file", &files.upstream_ca_file),
        ("auth.jwks_ca_file", &files.jwks_ca_file),
        ("store.ca_file", &files.store_ca_file),
    ] {
        if let Some(ca_file) = ca_file
            && let Err(e) = tls_config(Some(ca_file))
        {
            problems.push(format!("{key} {e}"));
        }
    }
    problems.extend(check_state_dir(files.state_dir.as_deref()).err());
    problems
}

/// `auth.jwks_file` or `auth.hs256_secret_file`, read and parsed (a JWKS URL
/// is fetched later, in the background).
fn load_keys(source: &KeySource) -> Result<KeySet, String> {
    KeySet::load(source).map_err(|e| format!("{} {e}", source.key()))
}

/// `credentials.file`, read and validated.
fn open_credentials(file: &Path) -> Result<CredentialStore, Vec<String>> {
    CredentialStore::open(file).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("credentials.file {p}"))
            .collect()
    })
}

/// The connector to Concur, trusting `upstream.ca_file` besides the Mozilla
/// roots; shared by the upstream client and the OAuth2 token client.
fn upstream_connector(config: &UpstreamConfig) -> Result<HttpsConnector<HttpConnector>, String> {
    https_connector(config.ca_file.as_deref(), config.connect_timeout).map_err(|e| {
        match config.ca_file {
            Some(_) => format!("upstream.ca_file {e}"),
            None => format!("upstream: {e}"),
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_problems_name_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not PEM\n").unwrap();
        let config = Config::from_toml(
            "[upstream]\nca_file = \"ca.pem\"\n\
             [auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"jwks.json\"\n\
             [credentials]\nfile = \"creds.toml\"\nstate_dir = \"state\"\n",
            dir.path(),
        )
        .unwrap();
        let problems = Gateway::new(config).unwrap_err();
        let at = |name: &str| dir.path().join(name).display().to_string();
        assert_eq!(
            problems,
            [
                format!("auth.jwks_file {}: no such file", at("jwks.json")),
                format!("credentials.file {}: no such file", at("creds.toml")),
                format!("credentials.state_dir {}: not a directory", at("state")),
                format!(
                    "upstream.ca_file {}: no PEM certificate found",
                    at("ca.pem")
                ),
            ]
        );
    }
}
