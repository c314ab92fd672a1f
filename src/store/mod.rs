//! Request path, step 5 (see `ARCHITECTURE.md`).
//!
//! The store: state that must hold across replicas, behind one seam.
//!
//! A sidecar runs once per replica of its service, so ten replicas are ten
//! gateways in front of one Concur company. With `[store] backend = "redis"`
//! the rate limits, the uploads in flight, Concur's back-off and the token
//! state of refreshing credentials (`credentials/refresh.rs`) are shared
//! through Redis ([`redis`]: one atomic script or command per operation).
//! With the default `backend = "memory"` they are this process's own: the
//! governor limiters of `rate_limit.rs`, the counters of `concurrency.rs` and
//! a map of back-offs; the same policy, no network.
//!
//! **Redis unavailable** (down, slower than `store.timeout_ms`, failing over):
//! requests keep flowing on the local state, which is always kept, so limits
//! fall back to this replica's own; each fallback is counted
//! (`store_fallbacks_total{op}`), `/readyz` names the problem (and stays
//! 200: restarting pods does not bring Redis back), and shared behaviour
//! resumes by itself when Redis answers again. What must not happen without
//! Redis, a refresh that rotates a token without the lock, is the token
//! manager's to refuse (`503 store_unavailable`).

pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use self::redis::{AdmitKeys, AdmitLimits, AdmitReply, Redis, Release, StoreError};
use crate::auth::Identity;
use crate::concurrency::{InFlight, InFlightLimits};
use crate::config::{IdempotencyConfig, RateLimitConfig, StoreConfig};
use crate::error::GatewayError;
use crate::idempotency::{Begun, MemoryRecords, Record};
use crate::metrics::{Metrics, OpLabel};
use crate::rate_limit::{RateLimits, Remaining, retry_after_secs};

/// Longest back-off honoured from a Concur `Retry-After` (a guard against an
/// absurd value stopping a credential's traffic for hours).
pub const MAX_CONCUR_BACKOFF: Duration = Duration::from_secs(300);

/// How long an upload's in-flight place lives in Redis without renewal: a
/// replica that dies mid-upload frees its places after this.
pub const IN_FLIGHT_LEASE: Duration = Duration::from_secs(30);

/// At most this many releases ride on one call.
const RELEASES_PER_CALL: usize = 32;

/// The state that must hold across replicas; see the module docs.
#[derive(Debug)]
pub struct Store {
    limits: RateLimits,
    in_flight: Arc<InFlightLimits>,
    /// Per credential key: until when Concur asked us to back off.
    backoff: Mutex<HashMap<String, Instant>>,
    shared: Option<Arc<Redis>>,
    /// Places given back and not yet released in Redis.
    releases: Option<Arc<Releases>>,
    shared_limits: AdmitLimits,
    /// The last store call failed (cleared by the next success).
    degraded: AtomicBool,
    /// The health check's last ping failed (cleared by its next success, or
    /// any call that succeeds): admissions do not wait on Redis meanwhile.
    down: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// A stored token state did not open with `store.encryption_key_file`
    /// (a replica with another key): a configuration problem that a
    /// successful call does not clear; the next state that opens does.
    unsealable: AtomicBool,
    fallbacks: Family<OpLabel, Counter>,
    up: Gauge,
    /// `RateLimit-Policy`: fixed for the gateway's lifetime, built once.
    policy: http::HeaderValue,
    /// `Idempotency-Key` records of the memory backend.
    records: MemoryRecords,
    idempotency: IdempotencyConfig,
    /// Final answers Redis missed, being written ([`finish_later`]): the
    /// shutdown waits for them ([`Store::flush_pending`]).
    pending: tokio_util::task::TaskTracker,
}

/// An admitted request: what is left of the limits, and its place among the
/// uploads in flight (given back when dropped).
#[derive(Debug)]
pub struct Admission {
    pub remaining: Remaining,
    pub place: Place,
}

/// An upload's place under `rate_limit.*_concurrent`.
#[derive(Debug)]
pub enum Place {
    Local(#[allow(dead_code)] InFlight),
    Shared(SharedPlace),
}

/// A place in Redis: renewed while held, released when dropped.
#[derive(Debug)]
pub struct SharedPlace {
    releases: Arc<Releases>,
    /// The company's hash tag.
    tag: String,
    release: Option<Release>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for SharedPlace {
    fn drop(&mut self) {
        self.renewal.abort();
        if let Some(release) = self.release.take() {
            self.releases
                .give_back(std::mem::take(&mut self.tag), vec![release]);
        }
    }
}

/// An admission's call to Redis in progress. If it ends without an answer
/// (an error, a timeout, or the request dropped while it waits), the
/// releases it carried and its own place, which the script may have added,
/// are given back, to be released on their own: an extra `ZREM` costs
/// nothing, a place left behind would count against the limits until its
/// lease runs out.
struct InCall {
    releases: Arc<Releases>,
    tag: String,
    carried: Vec<Release>,
    own: Option<Release>,
}

impl Drop for InCall {
    fn drop(&mut self) {
        let mut places = std::mem::take(&mut self.carried);
        places.extend(self.own.take());
        if !places.is_empty() {
            self.releases
                .give_back(std::mem::take(&mut self.tag), places);
        }
    }
}

/// Places given back, per company hash tag, on their way to be released in
/// Redis. A place given back is sent at once, by a task of its company; while
/// that task's call is out, the places given back meanwhile wait for it and
/// go together in its next call, or ride on an admission of that company
/// that starts first (its script releases them before it counts). No place
/// waits for anything but a call already under way. Off the requests' path;
/// a release that is lost (Redis down) expires with its lease.
#[derive(Debug)]
struct Releases {
    redis: Arc<Redis>,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    places: Vec<Release>,
    /// A task is sending this company's releases.
    sending: bool,
}

impl Releases {
    fn give_back(self: &Arc<Self>, tag: String, places: Vec<Release>) {
        let start = {
            let mut map = self.pending.lock().expect("releases lock");
            let pending = map.entry(tag.clone()).or_default();
            pending.places.extend(places);
            !std::mem::replace(&mut pending.sending, true)
        };
        if !start {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        handle.spawn(async move {
            loop {
                let batch = this.next_batch(&tag);
                if batch.is_empty() {
                    return;
                }
                let _ = this.redis.release(&batch).await;
            }
        });
    }

    /// The sending task's next call: up to [`RELEASES_PER_CALL`] places of
    /// `tag`; none when none is left (the task ends and says so).
    fn next_batch(&self, tag: &str) -> Vec<Release> {
        let mut map = self.pending.lock().expect("releases lock");
        let Some(pending) = map.get_mut(tag) else {
            return Vec::new();
        };
        let n = pending.places.len().min(RELEASES_PER_CALL);
        if n == 0 {
            map.remove(tag);
            return Vec::new();
        }
        pending.places.drain(..n).collect()
    }

    /// Up to [`RELEASES_PER_CALL`] places of `tag` not sent yet, to ride on
    /// an admission.
    fn take(&self, tag: &str) -> Vec<Release> {
        let mut map = self.pending.lock().expect("releases lock");
        let Some(pending) = map.get_mut(tag) else {
            return Vec::new();
        };
        let n = pending.places.len().min(RELEASES_PER_CALL);
        pending.places.drain(..n).collect()
    }

    /// Sends every place not sent yet, and waits (at most `wait`) for the
    /// calls under way (shutdown).
    async fn flush_all(&self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let (all, busy): (Vec<Vec<Release>>, bool) = {
                let mut map = self.pending.lock().expect("releases lock");
                let busy = map.values().any(|p| p.sending);
                let all = map
                    .values_mut()
                    .map(|p| std::mem::take(&mut p.places))
                    .collect();
                (all, busy)
            };
            for places in all {
                for batch in places.chunks(RELEASES_PER_CALL) {
                    let _ = self.redis.release(batch).await;
                }
            }
            if !busy || Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The hash tag of a company's keys: `{c:` + 16 hex digits of SHA-256 + `}`.
pub fn company_tag(company: &str) -> String {
    format!("{{c:{}}}", short_hash(company.as_bytes()))
}

/// 16 hex digits of SHA-256: names in keys that do not spell out users.
pub fn short_hash(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = String::with_capacity(16);
    for b in &d.as_ref()[..8] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

fn gcra(per_second: f64, burst: u32) -> (u64, u64) {
    let emission = (1e6 / per_second).round().max(1.0) as u64;
    (emission, emission * u64::from(burst.max(1) - 1))
}

impl Store {
    /// The store of a validated config. With Redis, the connection is made in
    /// the background ([`Store::spawn_health`]): a gateway starts while Redis
    /// is down, on local state.
    pub fn new(
        config: &StoreConfig,
        rate_limit: &RateLimitConfig,
        idempotency: &IdempotencyConfig,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let shared = match &config.redis {
            Some(redis) => Some(Arc::new(Redis::new(redis)?)),
            None => None,
        };
        let (user_emission_us, user_tolerance_us) =
            gcra(rate_limit.user_per_second, rate_limit.user_burst);
        let (company_emission_us, company_tolerance_us) =
            gcra(rate_limit.company_per_second, rate_limit.company_burst);
        let limits = RateLimits::new(rate_limit);
        let policy = limits
            .policies()
            .iter()
            .map(|p| p.header_item())
            .collect::<Vec<_>>()
            .join(", ");
        let releases = shared.as_ref().map(|redis| {
            Arc::new(Releases {
                redis: redis.clone(),
                pending: Mutex::new(HashMap::new()),
            })
        });
        Ok(Self {
            releases,
            records: MemoryRecords::new(idempotency.max_records, idempotency.ttl),
            idempotency: idempotency.clone(),
            policy: http::HeaderValue::from_str(&policy).expect("ASCII header items"),
            limits,
            in_flight: InFlightLimits::new(
                rate_limit.user_concurrent,
                rate_limit.company_concurrent,
            ),
            backoff: Mutex::new(HashMap::new()),
            shared,
            shared_limits: AdmitLimits {
                user_emission_us,
                user_tolerance_us,
                company_emission_us,
                company_tolerance_us,
                user_concurrent: rate_limit.user_concurrent,
                company_concurrent: rate_limit.company_concurrent,
                lease: IN_FLIGHT_LEASE,
            },
            degraded: AtomicBool::new(false),
            down: AtomicBool::new(false),
            last_error: Mutex::new(None),
            unsealable: AtomicBool::new(false),
            fallbacks: metrics.store_fallbacks.clone(),
            up: metrics.store_up.clone(),
            pending: tokio_util::task::TaskTracker::new(),
        })
    }

    /// At shutdown: waits (for at most `within`) for the final answers Redis
    /// missed to be written; those still unwritten are dropped, each logged.
    pub async fn flush_pending(&self, within: Duration) {
        self.pending.close();
        if self.pending.is_empty() {
            return;
        }
        if tokio::time::timeout(within, self.pending.wait())
            .await
            .is_err()
        {
            tracing::error!(
                answers = self.pending.len(),
                "final answers Redis never took are dropped at shutdown: a retry with their Idempotency-Key will reach Concur again once the key's lease runs out"
            );
        }
    }

    /// The `RateLimit-Policy` header value.
    pub fn policy_header(&self) -> http::HeaderValue {
        self.policy.clone()
    }

    /// The shared backend, when configured.
    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.shared.as_ref()
    }

    /// The rate limits this replica enforces on its own (memory backend, and
    /// the fallback).
    pub fn local_limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Local uploads in flight (memory backend, and the fallback).
    pub fn local_in_flight(&self) -> &Arc<InFlightLimits> {
        &self.in_flight
    }

    /// Counts a fallback to local state and remembers why.
    pub fn fell_back(&self, op: &'static str, error: &StoreError) {
        self.fallbacks.get_or_create(&OpLabel { op }).inc();
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(op, error = %error, "store unavailable: falling back to this replica's own state");
        }
        self.up.set(0);
        let mut last = self.last_error.lock().expect("store lock");
        // "Not connected yet" says nothing new: keep why the connection failed.
        if !(matches!(error, StoreError::NotConnected) && last.is_some()) {
            *last = Some(error.to_string());
        }
    }

    /// A store call succeeded.
    pub fn recovered(&self) {
        self.down.store(false, Ordering::Release);
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("store available again: shared state resumes");
            *self.last_error.lock().expect("store lock") = None;
        }
        self.up.set(1);
    }

    /// Whether the last stored token state read opened with this replica's
    /// `store.encryption_key_file` (see [`Store::readiness_details`]).
    pub fn sealing(&self, opened: bool) {
        if self.unsealable.swap(!opened, Ordering::AcqRel) == opened {
            if opened {
                tracing::info!("stored token states open with store.encryption_key_file again");
            } else {
                tracing::error!(
                    "a stored token state does not open with store.encryption_key_file: every replica sharing this Redis needs the same key; the credentials concerned get 503 until then"
                );
            }
        }
    }

    /// Details for `/readyz` (never a reason to be unready).
    pub fn readiness_details(&self) -> Vec<String> {
        let Some(redis) = &self.shared else {
            return Vec::new();
        };
        let mut details = Vec::new();
        if self.unsealable.load(Ordering::Acquire) {
            details.push(
                "store: a stored token state does not open with store.encryption_key_file (every replica sharing this Redis needs the same key); its credential is not refreshed here".to_owned(),
            );
        }
        if !redis.connected() {
            // Why, when a try failed (a wrong password, an untrusted
            // certificate): the log is not the only place to find it.
            let why = self
                .last_error
                .lock()
                .expect("store lock")
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            details.push(format!(
                "store: not connected to Redis yet{why}; limits are this replica's own, and a credential that needs a refresh gets 503 store_unavailable"
            ));
            return details;
        }
        if self.degraded.load(Ordering::Acquire) {
            let why = self
                .last_error
                .lock()
                .expect("store lock")
                .clone()
                .unwrap_or_default();
            details.push(format!(
                "store: Redis unavailable ({why}); limits are this replica's own, and a credential that needs a refresh gets 503 store_unavailable"
            ));
        }
        details
    }

    /// Connects to Redis (retrying) and pings it every second, so that the
    /// readiness details and the `store_up` gauge follow Redis even when no
    /// request comes. Nothing to do for the memory backend.
    pub fn spawn_health(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let redis = self.shared.clone()?;
        let store = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut was_up = None;
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                let result = match redis.connect().await {
                    Ok(()) => redis.ping().await,
                    Err(e) => Err(e),
                };
                if redis.connected() && was_up != Some(result.is_ok()) {
                    // Connected, back, or gone (a restart empties the
                    // script cache; a slow link needs them loaded).
                    redis.load_scripts();
                    was_up = Some(result.is_ok());
                }
                match result {
                    Ok(()) => store.recovered(),
                    Err(e) => {
                        store.down.store(true, Ordering::Release);
                        store.fell_back("ping", &e);
                    }
                }
            }
        }))
    }

    /// Admits `who` to upload with the credential named `credential` (its key,
    /// [`credential_key`]): Concur's back-off for that credential, uploads in
    /// flight per user and per company, then the request rate per user and
    /// per company. One Redis round trip with the shared backend (it also
    /// carries the releases of places given back and not sent yet).
    pub async fn admit(&self, who: &Identity, credential: &str) -> Result<Admission, GatewayError> {
        if self.shared.is_some() && self.known_down() {
            // Redis did not answer the last health check: this replica's own
            // limits at once, rather than each upload waiting `timeout_ms`
            // for a call that fails (until a ping succeeds, at most a second
            // after Redis is back).
            self.fallbacks.get_or_create(&OpLabel { op: "admit" }).inc();
            return self.admit_local(who, credential);
        }
        if let (Some(redis), Some(releases)) = (&self.shared, &self.releases) {
            match self.admit_shared(redis, releases, who, credential).await {
                Ok(admission) => {
                    self.recovered();
                    return admission;
                }
                Err(e) => self.fell_back("admit", &e),
            }
        }
        self.admit_local(who, credential)
    }

    async fn admit_shared(
        &self,
        redis: &Arc<Redis>,
        releases: &Arc<Releases>,
        who: &Identity,
        credential: &str,
    ) -> Result<Result<Admission, GatewayError>, StoreError> {
        let p = redis.prefix();
        let tag = company_tag(&who.company);
        let user = short_hash(who.user.as_bytes());
        let keys = AdmitKeys {
            user_rate: format!("{p}{tag}:rl:u:{user}"),
            company_rate: format!("{p}{tag}:rl:c"),
            backoff: format!("{p}{tag}:bo:{credential}"),
            user_in_flight: format!("{p}{tag}:if:u:{user}"),
            company_in_flight: format!("{p}{tag}:if:c"),
        };
        let member = crate::request_id::generate();
        let in_flight = [keys.user_in_flight.clone(), keys.company_in_flight.clone()];
        let mut call = InCall {
            releases: releases.clone(),
            carried: releases.take(&tag),
            tag,
            own: Some(Release {
                keys: in_flight.clone(),
                member: member.clone(),
            }),
        };
        let reply = redis
            .admit(&keys, self.shared_limits, &member, &call.carried)
            .await?;
        // Answered: what it carried is released; its own place is taken
        // (below) or was never added (refused).
        call.carried.clear();
        call.own = None;
        match reply {
            AdmitReply::Admitted { user, company } => {
                let renewal = {
                    let (redis, keys, member) = (redis.clone(), in_flight.clone(), member.clone());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(IN_FLIGHT_LEASE / 3).await;
                            let _ = redis
                                .renew([&keys[0], &keys[1]], &member, IN_FLIGHT_LEASE)
                                .await;
                        }
                    })
                };
                Ok(Ok(Admission {
                    remaining: Remaining { user, company },
                    place: Place::Shared(SharedPlace {
                        releases: releases.clone(),
                        tag: std::mem::take(&mut call.tag),
                        release: Some(Release {
                            keys: in_flight,
                            member,
                        }),
                        renewal,
                    }),
                }))
            }
            AdmitReply::Refused { scope, retry_after } => Ok(Err(GatewayError::RateLimited {
                scope,
                retry_after_s: retry_after_secs(retry_after),
            })),
        }
    }

    fn admit_local(&self, who: &Identity, credential: &str) -> Result<Admission, GatewayError> {
        if let Some(retry_after_s) = self.local_backoff(credential) {
            return Err(GatewayError::RateLimited {
                scope: "concur",
                retry_after_s,
            });
        }
        // Concurrency first: a caller refused for having too many uploads
        // open spends none of its rate allowance.
        let place = self.in_flight.try_acquire(who)?;
        let remaining = self.limits.check(who)?;
        Ok(Admission {
            remaining,
            place: Place::Local(place),
        })
    }

    /// Whole seconds (rounded up) the credential must still wait, locally.
    fn local_backoff(&self, credential: &str) -> Option<u64> {
        let map = self.backoff.lock().expect("backoff lock");
        let left = map
            .get(credential)?
            .checked_duration_since(Instant::now())?;
        Some(retry_after_secs(left))
    }

    /// Concur throttled this credential (429/503 + `Retry-After`): pause it
    /// for `wait` (at most [`MAX_CONCUR_BACKOFF`]) on every replica, and on
    /// this one in any case (the fallback honours it too).
    pub async fn back_off(&self, company: &str, credential: &str, wait: Duration) {
        let wait = wait.min(MAX_CONCUR_BACKOFF);
        {
            let until = Instant::now() + wait;
            let mut map = self.backoff.lock().expect("backoff lock");
            map.retain(|_, t| *t > Instant::now());
            let entry = map.entry(credential.to_owned()).or_insert(until);
            *entry = (*entry).max(until);
        }
        if let Some(redis) = &self.shared {
            let key = format!("{}{}:bo:{credential}", redis.prefix(), company_tag(company));
            match redis.back_off(&key, wait).await {
                Ok(()) => self.recovered(),
                Err(e) => self.fell_back("back_off", &e),
            }
        }
    }

    /// Sends the places given back that are not released in Redis yet, and
    /// waits for the releases under way (at shutdown, once the requests have
    /// finished or been dropped): other replicas would count them until
    /// their leases ran out.
    pub async fn flush_releases(&self) {
        if let (Some(redis), Some(releases)) = (&self.shared, &self.releases) {
            releases.flush_all(redis.timeout() * 2).await;
        }
    }

    /// Forgets idle local limiter state (housekeeping).
    pub fn prune(&self) {
        self.limits.prune();
        self.backoff
            .lock()
            .expect("backoff lock")
            .retain(|_, t| *t > Instant::now());
    }
}

/// An `Idempotency-Key` held in flight by this request: renewed while held;
/// dropped without [`KeyHold::finish`], the record is abandoned (the key is
/// free again).
#[derive(Debug)]
pub struct KeyHold {
    store: Arc<Store>,
    key: String,
    marker: String,
    renewal: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
}

/// What became of a final answer handed to [`KeyHold::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Stored: a retry gets it.
    Stored,
    /// The store did not answer: kept in memory with the key's lease renewed,
    /// and written as soon as the store answers ([`FINISH_RETRY`]).
    Pending,
    /// Another request holds the key now (this one's lease ran out): not
    /// stored.
    NotStored,
}

impl Kept {
    /// The access log's `idempotency` and the metric's `result`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kept::Stored => "stored",
            Kept::Pending => "pending",
            Kept::NotStored => "not_stored",
        }
    }
}

/// How often a final answer the store missed is offered again; for at most
/// [`FINISH_KEPT`] (or the record's own life, if shorter).
const FINISH_RETRY: Duration = Duration::from_millis(100);
const FINISH_KEPT: Duration = Duration::from_secs(3600);

impl KeyHold {
    /// Keeps Concur's final answer for `idempotency.ttl_s`.
    pub async fn finish(mut self, record: &Record) -> Kept {
        self.finished = true;
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        let store = &self.store;
        let Some(redis) = &store.shared else {
            store
                .records
                .finish(&self.key, &self.marker, record.clone());
            return Kept::Stored;
        };
        let json = serde_json::to_string(record).expect("a record serialises");
        let ttl = store.idempotency.ttl;
        match redis.idem_finish(&self.key, &self.marker, &json, ttl).await {
            Ok(true) => {
                store.recovered();
                Kept::Stored
            }
            Ok(false) => {
                store.recovered();
                tracing::warn!(
                    "Concur's final answer is not kept under its Idempotency-Key: the key's lease ran out and another request holds it"
                );
                Kept::NotStored
            }
            Err(e) => {
                store.fell_back("idempotency_finish", &e);
                let key = std::mem::take(&mut self.key);
                let marker = std::mem::take(&mut self.marker);
                store.finish_later(redis.clone(), key, marker, json);
                Kept::Pending
            }
        }
    }
}

impl Store {
    /// Whether the health check's last ping failed: calls to Redis are not
    /// worth making until one succeeds (at most a second after it is back).
    fn known_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Writes a final answer the store missed as soon as it answers, holding
    /// the key's in-flight lease meanwhile: a retry gets `409` until then,
    /// never a second upload to Concur. Given up after [`FINISH_KEPT`]
    /// (logged): the key is then free again when its lease runs out, as for
    /// a gateway that died. While Redis is known down, no call is made: a
    /// thousand answers kept in an outage do not each call every 100 ms.
    fn finish_later(
        self: &Arc<Self>,
        redis: Arc<Redis>,
        key: String,
        marker: String,
        record: String,
    ) {
        let (ttl, lease) = (self.idempotency.ttl, self.idempotency.lease);
        let store = Arc::downgrade(self);
        self.pending.spawn(async move {
            let started = Instant::now();
            let until = started + ttl.min(FINISH_KEPT);
            let mut renew_at = started;
            while Instant::now() < until {
                tokio::time::sleep(FINISH_RETRY).await;
                match store.upgrade() {
                    Some(store) if store.known_down() => continue,
                    Some(_) => {}
                    None => break,
                }
                if Instant::now() >= renew_at {
                    let _ = redis.extend_lock(&key, &marker, lease).await;
                    renew_at = Instant::now() + lease / 3;
                }
                match redis.idem_finish(&key, &marker, &record, ttl).await {
                    Ok(true) => {
                        tracing::info!(
                            after_ms = started.elapsed().as_millis() as u64,
                            "a final answer the store had missed is kept under its Idempotency-Key now"
                        );
                        return;
                    }
                    Ok(false) => {
                        tracing::warn!(
                            "a final answer the store had missed is dropped: another request holds its Idempotency-Key"
                        );
                        return;
                    }
                    Err(_) => {}
                }
            }
            tracing::error!(
                "a final answer the store never took is dropped: a retry with its Idempotency-Key will reach Concur again"
            );
        });
    }

    /// Removes this request's in-flight `marker`, if it is there, once the
    /// store answers (every [`FINISH_RETRY`], for at most the lease it would
    /// live; no call while Redis is known down).
    fn unmark_later(self: &Arc<Self>, redis: Arc<Redis>, key: String, marker: String) {
        let lease = self.idempotency.lease;
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let until = Instant::now() + lease;
            while Instant::now() < until {
                let down = match store.upgrade() {
                    Some(store) => store.known_down(),
                    None => return,
                };
                if !down && redis.unlock(&key, &marker).await.is_ok() {
                    return;
                }
                tokio::time::sleep(FINISH_RETRY).await;
            }
        });
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        if let Some(r) = self.renewal.take() {
            r.abort();
        }
        if self.finished {
            return;
        }
        match &self.store.shared {
            None => self.store.records.abandon(&self.key, &self.marker),
            Some(redis) => {
                let (redis, key, marker) = (
                    redis.clone(),
                    std::mem::take(&mut self.key),
                    std::mem::take(&mut self.marker),
                );
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = redis.unlock(&key, &marker).await;
                    });
                }
            }
        }
    }
}

/// What a request's `Idempotency-Key` found.
#[derive(Debug)]
pub enum KeyState {
    /// The key is this request's now.
    Held(KeyHold),
    /// A final answer to replay (if the fingerprint matches).
    Final(Record),
}

impl Store {
    /// Looks up the caller's `key` and, when it has no record, holds it in
    /// flight for this request. Another request holding it: `409
    /// idempotency_conflict`. The store unavailable (Redis): `503
    /// store_unavailable`: a key cannot be honoured without it.
    pub async fn begin_key(
        self: &Arc<Self>,
        who: &Identity,
        key: &str,
    ) -> Result<KeyState, GatewayError> {
        let owner = crate::request_id::generate();
        let marker = format!("inflight:{owner}");
        let lease = self.idempotency.lease;
        let conflict = GatewayError::IdempotencyConflict {
            retry_after_s: retry_after_secs(lease.min(Duration::from_secs(5))),
        };
        match &self.shared {
            None => {
                let record_key = format!("{}\0{}\0{key}", who.company, who.user);
                match self.records.begin(&record_key, &marker, lease) {
                    Begun::InFlight => Err(conflict),
                    Begun::Final(record) => Ok(KeyState::Final(record)),
                    Begun::Started => Ok(KeyState::Held(self.hold(record_key, marker))),
                }
            }
            Some(redis) => {
                let record_key = format!(
                    "{}{}:idem:{}:{}",
                    redis.prefix(),
                    company_tag(&who.company),
                    short_hash(who.user.as_bytes()),
                    short_hash(key.as_bytes())
                );
                let found = match redis.idem_begin(&record_key, &marker, lease).await {
                    Ok(found) => {
                        self.recovered();
                        found
                    }
                    Err(e) => {
                        self.fell_back("idempotency_begin", &e);
                        if matches!(e, StoreError::Timeout(_) | StoreError::Redis(_)) {
                            // The call may have run after all (a stall, a
                            // failover): its in-flight marker would hold the
                            // key for a whole lease against a corrected
                            // retry. Taken away as soon as the store answers.
                            self.unmark_later(redis.clone(), record_key, marker);
                        }
                        return Err(GatewayError::StoreUnavailable {
                            retry_after_s: 5,
                            unsealable: false,
                        });
                    }
                };
                match found {
                    Some(v) if v.starts_with("inflight:") => Err(conflict),
                    Some(v) => serde_json::from_str(&v)
                        .map(KeyState::Final)
                        .map_err(|e| GatewayError::Internal(format!("an idempotency record: {e}"))),
                    None => Ok(KeyState::Held(self.hold(record_key, marker))),
                }
            }
        }
    }
}

impl Store {
    /// Holds a key in flight for this request: its lease is renewed every
    /// third of its life until the hold is finished or dropped.
    fn hold(self: &Arc<Self>, key: String, marker: String) -> KeyHold {
        let lease = self.idempotency.lease;
        let renewal = {
            let (store, k, m) = (Arc::downgrade(self), key.clone(), marker.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    let Some(store) = store.upgrade() else { return };
                    match &store.shared {
                        None => store.records.renew(&k, &m, lease),
                        Some(redis) => {
                            let _ = redis.extend_lock(&k, &m, lease).await;
                        }
                    }
                }
            })
        };
        KeyHold {
            store: self.clone(),
            key,
            marker,
            renewal: Some(renewal),
            finished: false,
        }
    }
}

/// The key naming a Concur credential in the store (back-off, token state):
/// a hash of its owner, never the token.
pub fn credential_key(company: &str, user: Option<&str>) -> String {
    short_hash(format!("{company}\0{}", user.unwrap_or("\0admin")).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_parameters_match_the_configured_rate_and_burst() {
        assert_eq!(gcra(5.0, 10), (200_000, 1_800_000));
        assert_eq!(gcra(1000.0, 1), (1000, 0));
    }

    #[test]
    fn short_hash_is_the_first_8_bytes_of_sha256_in_lowercase_hex() {
        // Keys in Redis are named with it: replicas of two versions must agree.
        assert_eq!(short_hash(b"abc"), "ba7816bf8f01cfea");
        assert_eq!(short_hash(b""), "e3b0c44298fc1c14");
    }

    #[test]
    fn keys_of_one_company_share_a_hash_tag_and_spell_out_nobody() {
        let tag = company_tag("acme");
        assert!(tag.starts_with("{c:") && tag.ends_with('}') && tag.len() == 20);
        assert_eq!(tag, company_tag("acme"));
        assert_ne!(tag, company_tag("globex"));
        let k = credential_key("acme", Some("alice@acme.example"));
        assert!(!k.contains("alice") && k.len() == 16);
        assert_ne!(k, credential_key("acme", None));
    }
}
