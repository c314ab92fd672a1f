//! The gateway's shared state, built once from a validated [`Config`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{Authenticator, Clock, KeySet, SystemClock};
use crate::clamav::Scanner;
use crate::concurrency::InFlightLimits;
use crate::config::{Config, KeySource};
use crate::credentials::refresh::TokenManager;
use crate::credentials::{CredentialStore, Reload};
use crate::metrics::{Metrics, ResultLabel};
use crate::rate_limit::RateLimits;
use crate::spool::SpoolBudget;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub auth: Arc<Authenticator>,
    pub rate_limits: RateLimits,
    /// Uploads in flight per user and per company (`rate_limit.*_concurrent`).
    pub in_flight: Arc<InFlightLimits>,
    pub credentials: CredentialStore,
    /// Live access tokens of the refreshing credentials (survives reloads).
    pub tokens: TokenManager,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// The clamd client, with `[scan]`.
    pub scanner: Option<Scanner>,
    /// What chunked uploads may spool at once (`server.spool_max_bytes`).
    pub spool_budget: Arc<SpoolBudget>,
    draining: AtomicBool,
    /// Per company: until when Concur asked us (429/503 + Retry-After) to back off.
    concur_backoff: Mutex<HashMap<String, Instant>>,
}

/// Longest back-off honoured from a Concur `Retry-After` (a guard against an
/// absurd value stopping a company's traffic for hours).
pub const MAX_CONCUR_BACKOFF: Duration = Duration::from_secs(300);

impl Gateway {
    /// Loads keys and credentials and builds the upstream client. Every problem
    /// is reported (this is also what `check-config` runs).
    pub fn new(config: Config) -> Result<Self, Vec<String>> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let keys = KeySet::load(&config.auth.keys).map_err(|e| problems.push(format!("auth: {e}")));
        let credentials =
            CredentialStore::open(&config.credentials.file).map_err(|ps| problems.extend(ps));
        let upstream =
            Upstream::new(&config.upstream).map_err(|e| problems.push(format!("upstream: {e}")));
        let metrics = Metrics::new();
        let tokens =
            TokenManager::new(&config, clock.clone(), &metrics).map_err(|e| problems.push(e));
        match (keys, credentials, upstream, tokens) {
            (Ok(keys), Ok(credentials), Ok(upstream), Ok(tokens)) if problems.is_empty() => {
                tokens.start(&credentials.current());
                let scanner = config.scan.as_ref().map(|s| Scanner::new(s, &metrics));
                let spool_budget =
                    SpoolBudget::new(config.server.spool_max_bytes, metrics.spool_bytes.clone());
                Ok(Self {
                    auth: Arc::new(Authenticator::new(&config.auth, keys, clock)),
                    rate_limits: RateLimits::new(&config.rate_limit),
                    in_flight: InFlightLimits::new(
                        config.rate_limit.user_concurrent,
                        config.rate_limit.company_concurrent,
                    ),
                    credentials,
                    tokens,
                    upstream,
                    metrics,
                    scanner,
                    spool_budget,
                    draining: AtomicBool::new(false),
                    concur_backoff: Mutex::new(HashMap::new()),
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
        self.tokens.unusable()
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

    /// Concur throttled this company: pause its traffic for `for_`.
    pub fn back_off_company(&self, company: &str, for_: Duration) {
        let until = Instant::now() + for_.min(MAX_CONCUR_BACKOFF);
        let mut map = self.concur_backoff.lock().expect("backoff lock");
        map.retain(|_, t| *t > Instant::now());
        let entry = map.entry(company.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Whole seconds (rounded up) this company must still wait, if any.
    pub fn concur_backoff(&self, company: &str) -> Option<u64> {
        let map = self.concur_backoff.lock().expect("backoff lock");
        let until = *map.get(company)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(crate::rate_limit::retry_after_secs(left))
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
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
                    gw.rate_limits.prune();
                }
            }
        };
        tokio::spawn(async move {
            // Aborting housekeeping aborts the JWKS refresher with it.
            let _jwks = jwks.map(AbortOnDrop);
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
