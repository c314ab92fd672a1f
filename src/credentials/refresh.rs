//! Request path, step 7 (see `ARCHITECTURE.md`).
//!
//! Refreshing OAuth2 credentials: the step between `credentials::select` and the
//! exchange with Concur in `proxy.rs`.
//!
//! `select` (pure) picks *which* credential acts; for a refreshing one,
//! [`TokenManager::access`] then turns it into a live access token and the base
//! URL to send to (Concur's `geolocation` for that user). It is called once the
//! first body chunk has been checked and before the upload starts, never in the
//! middle of a body: a token is refreshed when 80% of its life has passed, or
//! when what is left of it is shorter than an upload may take
//! (`upstream.timeout_s` + `upstream.queue_timeout_s`).
//!
//! Per credential there is one `Slot`, keyed by a hash of (company, user,
//! client_id), that outlives reloads of the credentials file:
//! - **single flight**: a `tokio::sync::Mutex` per slot; the first request that
//!   needs a refresh performs it, the others wait and re-check;
//! - **backoff**: a failed refresh is not retried before an exponential delay
//!   with jitter (1 s doubling, capped at 5 min); meanwhile a still-valid token
//!   keeps being used, otherwise requests fail fast (`502 upstream_unavailable`);
//! - **dead refresh tokens**: `invalid_grant` / code 108 (or `invalid_client`)
//!   marks the credential unusable (`502 upstream_auth_failed`, logged, counted,
//!   listed by `/readyz`) until the file provides a new refresh token or secret;
//! - **rotation kept safe**: a new refresh token is persisted in
//!   `credentials.state_dir` (temp file, fsync, rename, fsync of the folder)
//!   *before* the new access token is used. The state file records the
//!   fingerprint of the file's refresh token it descends from, so at start-up the
//!   persisted token is preferred unless the operator has since put another one
//!   in the file (then the file wins).
//!
//! No secret is ever logged: credentials are named by owner, tokens stay
//! [`Secret`]s, and the state file is written with mode 0600.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use opentelemetry::trace::SpanContext;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::{Credential, CredentialSet, RefreshSpec, Secret};

mod shared;
use crate::auth::Clock;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{Metrics, ResultLabel};
use crate::telemetry::Child;
pub use shared::{CRASH_AFTER_TOKEN_ANSWER_ENV, SharedTokens};

/// Test hook: when set (to anything), the process aborts right after persisting
/// a rotated refresh token and before using the new access token, to prove that
/// a crash at that point loses nothing.
pub const CRASH_AFTER_PERSIST_ENV: &str = "CONCUR_GATEWAY_TEST_CRASH_AFTER_PERSIST";

const TOKEN_BODY_LIMIT: usize = 64 * 1024;
const BACKOFF_BASE_S: f64 = 1.0;
/// With the shared store, how often a dead credential asks it whether another
/// replica stored a live state since.
const REVIVE_CHECK_S: u64 = 5;
const BACKOFF_CAP_S: f64 = 300.0;
/// When Concur's answer has no usable `expires_in`: its documented lifetime.
const DEFAULT_EXPIRES_IN: u64 = 3600;

/// What the proxy needs to call Concur for one request.
#[derive(Clone, Debug)]
pub struct Access {
    /// The upstream `Authorization` value (marked sensitive).
    pub authorization: HeaderValue,
    /// Where to send: `None` is `upstream.base_url`, otherwise the credential's
    /// `geolocation` as returned by the token endpoint (https, host only).
    pub base: Option<Uri>,
    /// Which access token this is (0: a static one), for [`TokenManager::mark_stale`].
    generation: u64,
}

/// The refresh policy, a pure function: refresh once 80% of the token's life
/// has passed, or when less than `margin_s` is left (an upload starting now
/// could outlive it). For tokens shorter-lived than the margin, half their life
/// is the margin, so that a fresh token is always usable at least once.
pub fn needs_refresh(now: u64, obtained: u64, expires_at: u64, margin_s: u64) -> bool {
    let life = expires_at.saturating_sub(obtained);
    let refresh_at = obtained + life * 8 / 10;
    let left = expires_at.saturating_sub(now);
    now >= refresh_at || left < margin_s.min(life / 2)
}

/// The exponential backoff after `failures` consecutive failures (>= 1), with
/// `jitter` in [0, 1) taking off up to half.
pub fn backoff_secs(failures: u32, jitter: f64) -> u64 {
    let exp = BACKOFF_BASE_S * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let full = exp.min(BACKOFF_CAP_S);
    (full * (1.0 - jitter.clamp(0.0, 1.0) / 2.0))
        .ceil()
        .max(1.0) as u64
}

type TokenClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The refreshing credentials' live state (see the module docs).
pub struct TokenManager {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    client: TokenClient,
    default_token_url: Uri,
    state_dir: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    margin_s: u64,
    request_timeout: Duration,
    crash_after_persist: bool,
    refreshes: Family<ResultLabel, Counter>,
    unusable: Gauge,
    /// With `[store] backend = "redis"`: the token state every replica shares.
    shared: Option<SharedTokens>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("state_dir", &self.state_dir)
            .field("slots", &self.slots.lock().expect("slots lock").len())
            .finish_non_exhaustive()
    }
}

struct Slot {
    key: String,
    owner: String,
    company: String,
    user: Option<String>,
    state: Mutex<SlotState>,
    /// Held for the whole of a refresh: concurrent requests share it.
    flight: tokio::sync::Mutex<()>,
    /// The refreshes this process ran for the slot, for the requests that
    /// waited for one to link to its span.
    last_refresh: Mutex<RefreshMark>,
}

#[derive(Default)]
struct RefreshMark {
    /// Refreshes started.
    started: u64,
    /// Whether the latest is still running.
    running: bool,
    /// The latest's span (none without `[tracing]`).
    span: Option<SpanContext>,
}

/// Marks the slot's refresh finished when dropped.
struct RefreshRunning<'a>(&'a Slot);

impl Drop for RefreshRunning<'_> {
    fn drop(&mut self) {
        self.0
            .last_refresh
            .lock()
            .expect("refresh mark lock")
            .running = false;
    }
}

struct SlotState {
    client_id: String,
    client_secret: Secret,
    token_url: Option<Uri>,
    /// The latest refresh token (possibly rotated, newer than the file's).
    refresh_token: Secret,
    /// Fingerprint of the file's refresh token that `refresh_token` descends from.
    origin: String,
    geolocation: Option<Uri>,
    access: Option<AccessToken>,
    generation: u64,
    dead: Option<String>,
    /// With the shared store: the stored version known when the credential
    /// was found dead, and when the store may next be asked whether another
    /// replica has stored a newer, live state since (it revives then).
    dead_version: u64,
    revive_at: u64,
    failures: u32,
    retry_at: u64,
}

struct AccessToken {
    token: Secret,
    obtained: u64,
    expires_at: u64,
    stale: bool,
}

/// The state file of one credential. No `Debug`: it holds a refresh token.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    company: String,
    user: Option<String>,
    client_id: String,
    refresh_token: String,
    /// Fingerprint (SHA-256, hex) of the file's refresh token this one descends from.
    descends_from: String,
    written_at: u64,
}

/// What a token request ended with.
enum Failure {
    /// Concur says the refresh token or the client is no good: retrying cannot help.
    Rejected(String),
    /// Anything else: retry after a backoff.
    Transient(String),
    /// A new credentials file replaced the refresh token while this refresh
    /// was in flight: its answer is dropped, no backoff.
    Superseded,
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of a refresh token: not reversible, safe in the state file.
fn fingerprint(token: &Secret) -> String {
    sha256_hex(token.expose().as_bytes())
}

/// The slot (and state file) key: a hash of (company, user, client_id).
fn slot_key(cred: &Credential, spec: &RefreshSpec) -> String {
    let user = cred.user.as_deref().unwrap_or("");
    let mut h = sha256_hex(format!("{}\0{user}\0{}", cred.company, spec.client_id).as_bytes());
    h.truncate(32);
    h
}

/// A `geolocation` Concur returned, as a base URL: https, a host, nothing else.
pub fn parse_base(text: &str) -> Option<Uri> {
    let uri: Uri = text.trim_end_matches('/').parse().ok()?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() || uri.query().is_some() {
        return None;
    }
    if !(uri.path().is_empty() || uri.path() == "/") {
        return None;
    }
    format!("https://{}", uri.authority()?).parse().ok()
}

/// `{geolocation}/oauth2/v0/token`.
fn token_url_at(base: &Uri) -> Option<Uri> {
    format!("https://{}/oauth2/v0/token", base.authority()?)
        .parse()
        .ok()
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, part) in [k, v].iter().enumerate() {
            if j == 1 {
                out.push('=');
            }
            for b in part.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    out
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// `credentials.state_dir`, when set, must be a directory.
pub fn check_state_dir(dir: Option<&Path>) -> Result<(), String> {
    match dir {
        Some(dir) if !dir.is_dir() => Err(format!(
            "credentials.state_dir {}: not a directory",
            dir.display()
        )),
        _ => Ok(()),
    }
}

impl TokenManager {
    /// `https` is the gateway's connector to Concur (trusting `upstream.ca_file`);
    /// `credentials.state_dir` must have passed [`check_state_dir`].
    pub fn new(
        config: &Config,
        https: HttpsConnector<HttpConnector>,
        clock: Arc<dyn Clock>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let default_token_url = format!(
            "{}/oauth2/v0/token",
            config.upstream.base_url.to_string().trim_end_matches('/')
        )
        .parse()
        .map_err(|e| format!("upstream.base_url: {e}"))?;
        Ok(Self {
            slots: Mutex::new(HashMap::new()),
            client,
            default_token_url,
            state_dir: config.credentials.state_dir.clone(),
            clock,
            margin_s: (config.upstream.timeout + config.upstream.queue_timeout)
                .as_secs_f64()
                .ceil() as u64,
            request_timeout: config.upstream.timeout.min(Duration::from_secs(30)),
            crash_after_persist: std::env::var_os(CRASH_AFTER_PERSIST_ENV).is_some(),
            refreshes: metrics.credential_refreshes.clone(),
            unusable: metrics.credentials_unusable.clone(),
            shared: None,
        })
    }

    /// Shares the token state of refreshing credentials through the store
    /// (`shared.rs`); `credentials.state_dir` is then not used.
    pub fn with_shared(mut self, shared: SharedTokens) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Start-up: loads the refreshing credentials of `set` (and their persisted
    /// state) and warns when rotation cannot be persisted.
    pub fn start(&self, set: &CredentialSet) {
        let refreshing = set.iter().filter(|c| c.refresh_spec().is_some()).count();
        if refreshing > 0 && self.state_dir.is_none() && self.shared.is_none() {
            tracing::warn!(
                refreshing,
                "credentials.state_dir is not set: rotated refresh tokens are kept in memory only and are lost on restart"
            );
        }
        if self.state_dir.is_some() && self.shared.is_some() {
            tracing::warn!(
                "credentials.state_dir is not used with store.backend = \"redis\": rotated refresh tokens live in the store, sealed"
            );
        }
        self.sync(set);
    }

    /// After a (re)load of the credentials file: creates the slots of new
    /// refreshing credentials, lets a new refresh token in the file replace the
    /// rotated one, and forgets credentials that are gone.
    pub fn sync(&self, set: &CredentialSet) {
        let mut slots = self.slots.lock().expect("slots lock");
        let mut seen = HashSet::new();
        for cred in set.iter() {
            let Some(spec) = cred.refresh_spec() else {
                continue;
            };
            let key = slot_key(cred, spec);
            seen.insert(key.clone());
            match slots.get(&key) {
                Some(slot) => slot.adopt(spec),
                None => {
                    let slot = Arc::new(self.new_slot(cred, spec, key.clone()));
                    slots.insert(key, slot);
                }
            }
        }
        slots.retain(|k, _| seen.contains(k));
        self.update_gauge(&slots);
    }

    fn update_gauge(&self, slots: &HashMap<String, Arc<Slot>>) {
        let dead = slots
            .values()
            .filter(|s| s.state.lock().expect("slot lock").dead.is_some())
            .count();
        self.unusable.set(dead as i64);
    }

    /// Credentials Concur refused, by owner, with the reason (for `/readyz`).
    pub fn unusable(&self) -> Vec<String> {
        let slots = self.slots.lock().expect("slots lock");
        let mut out: Vec<String> = slots
            .values()
            .filter_map(|s| {
                let st = s.state.lock().expect("slot lock");
                st.dead
                    .as_ref()
                    .map(|why| format!("credential {} unusable: {why}", s.owner))
            })
            .collect();
        out.sort();
        out
    }

    fn new_slot(&self, cred: &Credential, spec: &RefreshSpec, key: String) -> Slot {
        let owner = cred.label();
        let origin = fingerprint(&spec.refresh_token);
        let mut refresh_token = spec.refresh_token.clone();
        if let Some(dir) = &self.state_dir {
            let path = dir.join(format!("{key}.json"));
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                    Ok(state)
                        if state.descends_from == origin
                            && state.client_id == spec.client_id
                            && !state.refresh_token.is_empty() =>
                    {
                        tracing::info!(
                            credential = %owner,
                            "using the rotated refresh token persisted in the state directory"
                        );
                        refresh_token = Secret::new(state.refresh_token);
                    }
                    Ok(_) => tracing::info!(
                        credential = %owner,
                        "the credentials file holds another refresh token than the persisted one descends from; the file's wins"
                    ),
                    Err(e) => tracing::error!(
                        credential = %owner,
                        file = %path.display(),
                        error = %e,
                        "unreadable state file; using the credentials file's refresh token"
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!(
                    credential = %owner,
                    file = %path.display(),
                    error = %e,
                    "cannot read the state file; using the credentials file's refresh token"
                ),
            }
        }
        Slot {
            key,
            owner,
            company: cred.company.clone(),
            user: cred.user.clone(),
            state: Mutex::new(SlotState {
                client_id: spec.client_id.clone(),
                client_secret: spec.client_secret.clone(),
                token_url: spec.token_url.clone(),
                refresh_token,
                origin,
                geolocation: None,
                access: None,
                generation: 0,
                dead: None,
                dead_version: 0,
                revive_at: 0,
                failures: 0,
                retry_at: 0,
            }),
            flight: tokio::sync::Mutex::new(()),
            last_refresh: Mutex::new(RefreshMark::default()),
        }
    }

    fn slot(&self, cred: &Credential, spec: &RefreshSpec) -> Arc<Slot> {
        let key = slot_key(cred, spec);
        let mut slots = self.slots.lock().expect("slots lock");
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        // A request that selected its credential just before a reload removed it.
        let slot = Arc::new(self.new_slot(cred, spec, key.clone()));
        slots.insert(key, slot.clone());
        slot
    }

    /// Fails fast, before the body is read, for a credential Concur has refused.
    pub fn check_usable(&self, cred: &Credential) -> Result<(), GatewayError> {
        let Some(spec) = cred.refresh_spec() else {
            return Ok(());
        };
        let slot = self.slot(cred, spec);
        let mut st = slot.state.lock().expect("slot lock");
        match st.dead {
            // With the shared store, one request every few seconds goes on
            // to ask it whether another replica stored a live state since
            // ([`TokenManager::access`]).
            Some(_) if self.shared.is_some() && self.clock.now_unix() >= st.revive_at => {
                st.revive_at = self.clock.now_unix() + REVIVE_CHECK_S;
                Ok(())
            }
            Some(_) => Err(GatewayError::CredentialUnusable),
            None => Ok(()),
        }
    }

    /// The access token and base URL for `cred`, refreshing first if needed.
    pub async fn access(&self, cred: &Credential) -> Result<Access, GatewayError> {
        let Some(spec) = cred.refresh_spec() else {
            let token = cred
                .static_token()
                .expect("a credential is static or refreshing");
            return Ok(Access {
                authorization: header(cred, token)?,
                base: None,
                generation: 0,
            });
        };
        let slot = self.slot(cred, spec);
        if let Some(shared) = &self.shared
            && slot.state.lock().expect("slot lock").dead.is_some()
        {
            self.revive_shared(shared, &slot).await;
        }
        if let Some(access) = slot.current(cred, self.clock.now_unix(), Some(self.margin_s))? {
            return Ok(access);
        }
        // Single flight: whoever holds this refreshes; the others find the new
        // token when they get it (and their spans a link to the refresh).
        let seen = slot.refreshes_finished();
        let _flight = slot.flight.lock().await;
        slot.link_refreshes_since(seen);
        let now = self.clock.now_unix();
        if let Some(access) = slot.current(cred, now, Some(self.margin_s))? {
            return Ok(access);
        }
        if let Some(shared) = &self.shared {
            return self.access_shared(shared, &slot, cred).await;
        }
        let retry_at = slot.state.lock().expect("slot lock").retry_at;
        if now < retry_at {
            return slot.current(cred, now, None)?.ok_or_else(|| {
                GatewayError::UpstreamUnavailable(
                    format!(
                        "refreshing the Concur access token failed; next attempt in {} s",
                        retry_at - now
                    )
                    .into(),
                )
            });
        }
        match self.refresh(&slot).await {
            Ok(()) => {
                self.refreshes
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                slot.current(cred, self.clock.now_unix(), None)?
                    .ok_or_else(|| GatewayError::Internal("refreshed token already expired".into()))
            }
            Err(Failure::Rejected(why)) => Err(self.on_rejected(&slot, why)),
            Err(Failure::Superseded) => Err(GatewayError::UpstreamUnavailable(
                "the credentials file changed during the token refresh; retry".into(),
            )),
            Err(Failure::Transient(why)) => self.on_transient(&slot, cred, why),
        }
    }

    /// Concur refused the refresh token or the client: the credential is
    /// unusable until the file provides a new one (logged, counted, listed).
    fn on_rejected(&self, slot: &Slot, why: String) -> GatewayError {
        tracing::error!(
            credential = %slot.owner,
            reason = %why,
            "Concur rejected the credential's refresh; it is unusable until the credentials file provides a new refresh token"
        );
        self.refreshes
            .get_or_create(&ResultLabel { result: "rejected" })
            .inc();
        self.mark_dead(slot, why);
        GatewayError::CredentialUnusable
    }

    /// The credential's refresh token is dead (here or on another replica).
    fn mark_dead(&self, slot: &Slot, why: String) {
        {
            let mut st = slot.state.lock().expect("slot lock");
            st.dead = Some(why);
            st.access = None;
        }
        let slots = self.slots.lock().expect("slots lock");
        self.update_gauge(&slots);
    }

    /// A refresh failed for a reason that may pass: back off (exponential,
    /// with jitter), and meanwhile use a token that is still valid if any.
    fn on_transient(
        &self,
        slot: &Slot,
        cred: &Credential,
        why: String,
    ) -> Result<Access, GatewayError> {
        let now = self.clock.now_unix();
        let wait = {
            let mut st = slot.state.lock().expect("slot lock");
            st.failures += 1;
            let wait = backoff_secs(st.failures, jitter());
            st.retry_at = now + wait;
            wait
        };
        tracing::warn!(
            credential = %slot.owner,
            reason = %why,
            retry_in_s = wait,
            "refreshing the Concur access token failed"
        );
        self.refreshes
            .get_or_create(&ResultLabel { result: "failed" })
            .inc();
        // A token that is still valid is better than none.
        slot.current(cred, now, None)?.ok_or_else(|| {
            GatewayError::UpstreamUnavailable(
                format!("refreshing the Concur access token failed: {why}").into(),
            )
        })
    }

    /// Concur refused the access token of `access` (403: expired or revoked):
    /// the next request refreshes first. The current upload cannot be replayed.
    pub fn mark_stale(&self, cred: &Credential, access: &Access) {
        let (Some(spec), true) = (cred.refresh_spec(), access.generation > 0) else {
            return;
        };
        let slot = self.slot(cred, spec);
        let mut st = slot.state.lock().expect("slot lock");
        if st.generation == access.generation
            && let Some(a) = &mut st.access
        {
            a.stale = true;
            tracing::info!(
                credential = %slot.owner,
                "Concur refused the access token; it will be refreshed before the next request"
            );
        }
    }

    /// One token request with `refresh_token` (I/O only; the answer is parsed
    /// by [`parse_token_answer`]). The client, its secret and where to send
    /// come from the slot.
    async fn request_token(
        &self,
        slot: &Slot,
        refresh_token: &Secret,
    ) -> Result<TokenAnswer, Failure> {
        let (url, form) = {
            let st = slot.state.lock().expect("slot lock");
            let url = match &st.geolocation {
                Some(geo) => token_url_at(geo).unwrap_or_else(|| self.default_token_url.clone()),
                None => st
                    .token_url
                    .clone()
                    .unwrap_or_else(|| self.default_token_url.clone()),
            };
            let form = form_encode(&[
                ("grant_type", "refresh_token"),
                ("client_id", &st.client_id),
                ("client_secret", st.client_secret.expose()),
                ("refresh_token", refresh_token.expose()),
            ]);
            (url, form)
        };
        let host = url.host().unwrap_or("").to_owned();
        let request = Request::post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("concur-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Failure::Transient(format!("building the token request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("token endpoint {host} unreachable: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), TOKEN_BODY_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("reading the token endpoint's answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.request_timeout, exchange)
            .await
            .map_err(|_| {
                Failure::Transient(format!(
                    "token endpoint {host} did not answer within {:?}",
                    self.request_timeout
                ))
            })?
            .map_err(Failure::Transient)?;
        parse_token_answer(status, &body, &slot.owner)
    }

    /// One token request; on success the new state is in the slot (and the
    /// rotated refresh token on disk) before the new access token is handed out.
    async fn refresh(&self, slot: &Slot) -> Result<(), Failure> {
        // A child of the request that needed it (the current trace context).
        let span = crate::telemetry::Child::current("credential refresh");
        let _running = slot.refresh_started(&span);
        let (sent_refresh, origin) = {
            let st = slot.state.lock().expect("slot lock");
            (st.refresh_token.clone(), st.origin.clone())
        };
        let TokenAnswer {
            access_token,
            expires_in,
            refresh_token: new_refresh,
            geolocation,
        } = self.request_token(slot, &sent_refresh).await?;
        let rotated = new_refresh.filter(|rt| *rt != sent_refresh);
        if let Some(rt) = &rotated {
            {
                let mut st = slot.state.lock().expect("slot lock");
                if st.origin != origin {
                    // The operator put a new refresh token in the file while this
                    // refresh was in flight: the file wins; drop this answer.
                    tracing::info!(credential = %slot.owner, "refresh answer superseded by a new credentials file");
                    return Err(Failure::Superseded);
                }
                // Concur has already invalidated the one we sent.
                st.refresh_token = rt.clone();
            }
            // Persist BEFORE the new access token is used (see the module docs).
            if let Some(dir) = &self.state_dir {
                let state = StateFile {
                    version: 1,
                    company: slot.company.clone(),
                    user: slot.user.clone(),
                    client_id: slot.state.lock().expect("slot lock").client_id.clone(),
                    refresh_token: rt.expose().to_owned(),
                    descends_from: origin.clone(),
                    written_at: self.clock.now_unix(),
                };
                let bytes = serde_json::to_vec_pretty(&state).expect("state serialises");
                let dir = dir.clone();
                let key = slot.key.clone();
                let written =
                    tokio::task::spawn_blocking(move || write_state(&dir, &key, &bytes)).await;
                match written {
                    Ok(Ok(())) => {
                        tracing::info!(credential = %slot.owner, "rotated refresh token persisted")
                    }
                    Ok(Err(e)) => {
                        self.refreshes
                            .get_or_create(&ResultLabel {
                                result: "persist_failed",
                            })
                            .inc();
                        tracing::error!(credential = %slot.owner, error = %e, "cannot persist the rotated refresh token; it is kept in memory only")
                    }
                    Err(e) => {
                        tracing::error!(credential = %slot.owner, error = %e, "persisting the rotated refresh token panicked")
                    }
                }
            }
            if self.crash_after_persist {
                tracing::error!(
                    credential = %slot.owner,
                    "{CRASH_AFTER_PERSIST_ENV} is set: aborting after persisting, before using the new token"
                );
                std::process::abort();
            }
        }

        let now = self.clock.now_unix();
        let mut st = slot.state.lock().expect("slot lock");
        if st.origin != origin {
            return Err(Failure::Superseded);
        }
        st.generation += 1;
        st.access = Some(AccessToken {
            token: access_token,
            obtained: now,
            expires_at: now + expires_in,
            stale: false,
        });
        if geolocation.is_some() {
            st.geolocation = geolocation;
        }
        st.failures = 0;
        st.retry_at = 0;
        tracing::info!(
            credential = %slot.owner,
            expires_in,
            rotated = rotated.is_some(),
            base = %st.geolocation.as_ref().map(|g| g.to_string()).unwrap_or_default(),
            "Concur access token refreshed"
        );
        Ok(())
    }
}

/// A successful token answer, parsed.
struct TokenAnswer {
    access_token: Secret,
    expires_in: u64,
    /// A refresh token in the answer (the same as sent, or a rotated one).
    refresh_token: Option<Secret>,
    geolocation: Option<Uri>,
}

/// Concur's answer to a token request, a pure function: the tokens, their
/// lifetime (`expires_in` as a number or a string) and the geolocation, or
/// the failure it means. `owner` names the credential in warnings.
fn parse_token_answer(
    status: StatusCode,
    body: &[u8],
    owner: &str,
) -> Result<TokenAnswer, Failure> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        return Err(classify_error(status, json.as_ref()));
    }
    let json = json.ok_or_else(|| {
        Failure::Transient(format!("token endpoint answered {status} without JSON"))
    })?;
    let access_token = json
        .get("access_token")
        .and_then(|v| v.as_str())
        .map(Secret::new)
        .filter(super::token_like)
        .ok_or_else(|| Failure::Transient("the token answer has no access_token".into()))?;
    let expires_in = match json.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    let expires_in = expires_in.filter(|&s| s > 0).unwrap_or_else(|| {
        tracing::warn!(credential = %owner, "token answer without a usable expires_in; assuming one hour");
        DEFAULT_EXPIRES_IN
    });
    let refresh_token = json
        .get("refresh_token")
        .and_then(|v| v.as_str())
        .map(Secret::new)
        .filter(super::token_like);
    let geolocation = match json.get("geolocation").and_then(|v| v.as_str()) {
        None => None,
        Some(text) => {
            let base = parse_base(text);
            if base.is_none() {
                tracing::warn!(credential = %owner, geolocation = %text, "ignoring a geolocation that is not an https base URL");
            }
            base
        }
    };
    Ok(TokenAnswer {
        access_token,
        expires_in,
        refresh_token,
        geolocation,
    })
}

fn classify_error(status: StatusCode, json: Option<&serde_json::Value>) -> Failure {
    let error = json
        .and_then(|j| j.get("error"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let code = json.and_then(|j| j.get("code")).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    // Only Concur's stable fields are repeated, never the whole answer.
    let what = match code {
        Some(c) => format!("{error} (code {c}, HTTP {})", status.as_u16()),
        None => format!("{error} (HTTP {})", status.as_u16()),
    };
    if error == "invalid_grant" || code == Some(108) {
        Failure::Rejected(format!("Concur refused the refresh token: {what}"))
    } else if error == "invalid_client" {
        Failure::Rejected(format!("Concur refused the client id or secret: {what}"))
    } else {
        Failure::Transient(format!("token endpoint answered {what}"))
    }
}

fn header(cred: &Credential, token: &Secret) -> Result<HeaderValue, GatewayError> {
    cred.authorization(token)
        .map_err(|_| GatewayError::Internal("credential is not a valid header value".into()))
}

impl Slot {
    /// Refreshes that had ended when a request started waiting for the slot.
    fn refreshes_finished(&self) -> u64 {
        let mark = self.last_refresh.lock().expect("refresh mark lock");
        mark.started - u64::from(mark.running)
    }

    /// Called with the span of a refresh this process starts for the slot;
    /// the refresh counts as running until the guard is dropped.
    fn refresh_started(&self, span: &Child) -> RefreshRunning<'_> {
        let mut mark = self.last_refresh.lock().expect("refresh mark lock");
        mark.started += 1;
        mark.running = true;
        mark.span = span.span_context();
        RefreshRunning(self)
    }

    /// A request that waited for the slot while a refresh ran or started
    /// (`seen` refreshes had ended before it waited) links its span to that
    /// refresh's.
    fn link_refreshes_since(&self, seen: u64) {
        let target = {
            let mark = self.last_refresh.lock().expect("refresh mark lock");
            if mark.started == seen {
                return;
            }
            mark.span.clone()
        };
        if let Some(target) = target {
            crate::telemetry::link_current(target, "waited for a credential refresh");
        }
    }

    /// The current token if it may be used now: with `margin` (Some), only
    /// while the refresh policy does not ask for a new one; without, as long as
    /// it has not expired and Concur has not refused it.
    fn current(
        &self,
        cred: &Credential,
        now: u64,
        margin: Option<u64>,
    ) -> Result<Option<Access>, GatewayError> {
        let st = self.state.lock().expect("slot lock");
        if st.dead.is_some() {
            return Err(GatewayError::CredentialUnusable);
        }
        let Some(a) = &st.access else {
            return Ok(None);
        };
        let usable = !a.stale
            && match margin {
                Some(m) => !needs_refresh(now, a.obtained, a.expires_at, m),
                None => now < a.expires_at,
            };
        if !usable {
            return Ok(None);
        }
        Ok(Some(Access {
            authorization: header(cred, &a.token)?,
            base: st.geolocation.clone(),
            generation: st.generation,
        }))
    }

    /// The file changed: a new refresh token there wins over the rotated one.
    fn adopt(&self, spec: &RefreshSpec) {
        let mut st = self.state.lock().expect("slot lock");
        let origin = fingerprint(&spec.refresh_token);
        let mut reset = false;
        if origin != st.origin {
            tracing::info!(
                credential = %self.owner,
                "the credentials file provides a new refresh token; it replaces the rotated one"
            );
            st.refresh_token = spec.refresh_token.clone();
            st.origin = origin;
            st.access = None;
            st.geolocation = None;
            reset = true;
        }
        if st.client_secret != spec.client_secret || st.token_url != spec.token_url {
            st.client_secret = spec.client_secret.clone();
            st.token_url = spec.token_url.clone();
            reset = true;
        }
        if reset {
            st.dead = None;
            st.failures = 0;
            st.retry_at = 0;
        }
    }
}

/// Writes `bytes` as `{dir}/{key}.json` so that a crash at any point leaves
/// either the old file or the new one: temp file, fsync, rename, fsync folder.
fn write_state(dir: &Path, key: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{key}.json.tmp"));
    let path = dir.join(format!("{key}.json"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_policy() {
        // A one-hour token obtained at 1000, margin 95 s.
        let (t0, exp) = (1000, 4600);
        assert!(!needs_refresh(t0, t0, exp, 95));
        assert!(!needs_refresh(t0 + 2879, t0, exp, 95), "before 80%");
        assert!(needs_refresh(t0 + 2880, t0, exp, 95), "at 80%");
        // A long-lived token is refreshed once less than the margin is left.
        // A five-minute token: less than the margin left comes before 80%.
        assert!(!needs_refresh(204, 0, 300, 95));
        assert!(needs_refresh(206, 0, 300, 95));
        // A token shorter-lived than the margin is still used while fresh.
        assert!(!needs_refresh(0, 0, 60, 95));
        assert!(needs_refresh(31, 0, 60, 95));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_secs(1, 0.0), 1);
        assert_eq!(backoff_secs(2, 0.0), 2);
        assert_eq!(backoff_secs(5, 0.0), 16);
        assert_eq!(backoff_secs(20, 0.0), 300);
        assert_eq!(backoff_secs(20, 0.999), 151);
        assert!(backoff_secs(6, 0.5) >= 24 && backoff_secs(6, 0.5) <= 32);
    }

    #[test]
    fn geolocations_are_https_bases_only() {
        assert_eq!(
            parse_base("https://us2.api.concursolutions.com").unwrap(),
            "https://us2.api.concursolutions.com/"
        );
        assert!(parse_base("https://127.0.0.1:8443/").is_some());
        assert!(parse_base("http://us.api.concursolutions.com").is_none());
        assert!(parse_base("https://evil.example/path").is_none());
        assert!(parse_base("https://evil.example?x=1").is_none());
        assert!(parse_base("not a url").is_none());
        let geo = parse_base("https://us2.api.concursolutions.com/").unwrap();
        assert_eq!(
            token_url_at(&geo).unwrap(),
            "https://us2.api.concursolutions.com/oauth2/v0/token"
        );
    }

    #[test]
    fn token_errors_are_classified() {
        let dead = serde_json::json!({"error": "invalid_grant", "error_description": "Incorrect or expired refresh token", "code": 108});
        assert!(matches!(
            classify_error(StatusCode::BAD_REQUEST, Some(&dead)),
            Failure::Rejected(_)
        ));
        let client = serde_json::json!({"error": "invalid_client", "code": 105});
        assert!(matches!(
            classify_error(StatusCode::UNAUTHORIZED, Some(&client)),
            Failure::Rejected(_)
        ));
        assert!(matches!(
            classify_error(StatusCode::SERVICE_UNAVAILABLE, None),
            Failure::Transient(_)
        ));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("a", "x y&z=1"), ("b", "é~")]),
            "a=x%20y%26z%3D1&b=%C3%A9~"
        );
    }

    #[test]
    fn state_files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), "k", b"one").unwrap();
        write_state(dir.path(), "k", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("k.json")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
    }
}
