//! Refreshing credentials shared by every replica (`[store] backend = "redis"`).
//!
//! Concur may hand back a new refresh token on any refresh and then refuses
//! the old one. With ten replicas each refreshing from its own copy, the first
//! rotation would kill the other nine. So, per credential, the store holds
//! **one token state** (`tok:K`: the latest refresh token, the access token,
//! its lifetime, the geolocation; sealed with AES-256-GCM) under a version,
//! and **one refresh lock** (`lock:K`):
//!
//! 1. A valid access token cached in this process is used as is: no store
//!    call at all.
//! 2. Otherwise the state is read; a fresh access token there (another
//!    replica refreshed) is adopted.
//! 3. Otherwise the lock is taken (`SET NX PX`, renewed every third of its
//!    life while the refresh runs, so a slow token endpoint cannot make it
//!    expire under us); the others wait for the version to move and take the
//!    winner's result.
//! 4. The winner refreshes with the stored refresh token and writes the new
//!    state with a compare-and-set (it still holds the lock, the version is
//!    the one it read) **before** it uses the new access token: no replica
//!    ever refreshes with a dead token.
//!
//! `credentials.file` stays the operator's input: the state records the
//! fingerprint of the file's refresh token it descends from, and the
//! fingerprints of older file tokens it replaced. A file token the store has
//! not seen is a Secret update: it replaces the stored one. A file token the
//! store lists as replaced is a replica whose Secret has not caught up yet:
//! the stored one wins.
//!
//! **Store unavailable**: a cached access token that has not expired keeps
//! being used; a credential that needs a refresh is *not* refreshed without
//! the lock (a lost rotation would need a person to issue a new refresh
//! token): its callers get `503 store_unavailable`.
//!
//! **The store slow or gone**: Concur answered, and the write under the lock
//! failed (the store did not answer in time, or the lock expired while it
//! was away). The replica keeps the sealed new state and writes it with a
//! version-only compare-and-set as soon as the store answers (every 100 ms,
//! for up to an hour; first thing too when it needs the token again): the
//! version says no replica stored anything since. Meanwhile its callers get
//! `503 store_unavailable`. Unless the store said the lock is gone, the
//! replica **keeps the lock** until the state is written (renewing it, and
//! releasing it after): a store that is only slow for this replica still
//! takes the renewals, and the other replicas wait for the state instead
//! of refreshing with the refresh token it rotated out. A renewal that
//! times out does not count as a lost lock either: the compare-and-set
//! checks the lock in the store.
//!
//! **The window no client can close**: Concur rotated the refresh token but
//! its answer never reached the store (the replica died before writing it,
//! or another replica refreshed with the old token while the store was
//! away and before the kept state was written). The stored refresh token is
//! then dead; the next refresh gets `invalid_grant`, and the credential is
//! reported unusable (log, metric, `/readyz`) until the Secret provides a new
//! refresh token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Access, AccessToken, Failure, Slot, TokenAnswer, TokenManager};
use crate::credentials::{Credential, Secret};
use crate::error::GatewayError;
use crate::metrics::ResultLabel;
use crate::sealing::Sealer;
use crate::store::redis::{CasResult, Redis, StoreError};
use crate::store::{Store, company_tag};

/// How often a waiter looks whether the lock holder stored its result.
const POLL: Duration = Duration::from_millis(50);
/// Older file fingerprints remembered as replaced.
const SUPERSEDED_KEPT: usize = 16;

/// Test hook: when set (to anything), the process aborts right after the token
/// endpoint answered and before the answer is stored, while it holds the
/// refresh lock: the window of the module docs.
pub const CRASH_AFTER_TOKEN_ANSWER_ENV: &str = "CONCUR_GATEWAY_TEST_CRASH_AFTER_TOKEN_ANSWER";

/// The shared side of the token manager.
pub struct SharedTokens {
    redis: Arc<Redis>,
    store: Arc<Store>,
    sealer: Arc<Sealer>,
    /// The refresh lock's life (`store.refresh_lock_ttl_ms`), renewed every
    /// third of it while a refresh runs.
    lock_ttl: Duration,
    crash_after_answer: bool,
    /// Refreshed states whose write under the lock failed (the store went
    /// away past the lock's life), by token key: written with a version-only
    /// compare-and-set as soon as the store answers ([`UNSTORED_RETRY`]).
    unstored: Arc<std::sync::Mutex<HashMap<String, Unstored>>>,
}

/// A sealed token state not written yet, and the version it follows.
#[derive(Clone)]
struct Unstored {
    version: u64,
    sealed: String,
}

/// How often a state the store missed is offered again, and for how long.
const UNSTORED_RETRY: Duration = Duration::from_millis(100);
const UNSTORED_KEPT: Duration = Duration::from_secs(3600);

/// The refresh lock held on to by a state kept for the store.
struct HeldLock {
    lock: String,
    owner: String,
    ttl: Duration,
}

impl std::fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTokens").finish_non_exhaustive()
    }
}

/// One credential's state in the store. Sealed as a whole; no `Debug`.
#[derive(Serialize, Deserialize, Clone)]
struct Record {
    refresh_token: String,
    /// Fingerprint of the file's refresh token this state descends from.
    descends_from: String,
    /// Fingerprints of file tokens this lineage replaced (newest last).
    superseded: Vec<String>,
    access_token: Option<String>,
    obtained: u64,
    expires_at: u64,
    geolocation: Option<String>,
    /// Concur refused this lineage's refresh token (or the client).
    dead: Option<String>,
    written_at: u64,
}

/// What the stored state means for this replica's file.
enum Lineage {
    /// Nothing stored yet, or the file has a token the store has not seen:
    /// refresh with the file's token.
    File,
    /// The stored state is the current lineage.
    Stored,
}

impl SharedTokens {
    pub fn new(store: Arc<Store>, key: &[u8; 32], lock_ttl: Duration) -> Option<Self> {
        Some(Self {
            lock_ttl,
            redis: store.redis()?.clone(),
            store,
            sealer: Arc::new(Sealer::new(key)),
            crash_after_answer: std::env::var_os(CRASH_AFTER_TOKEN_ANSWER_ENV).is_some(),
            unstored: Arc::default(),
        })
    }

    /// Keeps a refreshed state the store did not take, and offers it again
    /// every [`UNSTORED_RETRY`] until it is written, a newer state is found,
    /// or [`UNSTORED_KEPT`] has passed; `held`, the refresh lock, is renewed
    /// meanwhile and released after. Returns whether it took `held` (a
    /// state already kept for `key` has its own task, and the caller
    /// releases its lock).
    fn keep_unstored(
        &self,
        key: &str,
        owner: &str,
        version: u64,
        sealed: String,
        held: Option<HeldLock>,
    ) -> bool {
        let fresh = self
            .unstored
            .lock()
            .expect("unstored lock")
            .insert(key.to_owned(), Unstored { version, sealed })
            .is_none();
        if !fresh {
            return false;
        }
        let took = held.is_some();
        let (redis, unstored, sealer) = (
            self.redis.clone(),
            self.unstored.clone(),
            self.sealer.clone(),
        );
        let (key, owner) = (key.to_owned(), owner.to_owned());
        tokio::spawn(async move {
            let mut held = held;
            let start = tokio::time::Instant::now();
            let until = start + UNSTORED_KEPT;
            let mut renew_at = start;
            let mut written = false;
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(UNSTORED_RETRY).await;
                if let Some(h) = &held
                    && tokio::time::Instant::now() >= renew_at
                {
                    renew_at = tokio::time::Instant::now() + h.ttl / 3;
                    // A timeout may still have renewed it; only the
                    // store's "not yours" ends it.
                    if let Ok(false) = redis.extend_lock(&h.lock, &h.owner, h.ttl).await {
                        held = None;
                    }
                }
                if let Ok(Flushed::Nothing | Flushed::Written(_) | Flushed::Dropped) =
                    flush_unstored(&redis, &sealer, &unstored, &key, &owner).await
                {
                    written = true;
                    break;
                }
            }
            if let Some(h) = held {
                let _ = redis.unlock(&h.lock, &h.owner).await;
            }
            if !written
                && unstored
                    .lock()
                    .expect("unstored lock")
                    .remove(&key)
                    .is_some()
            {
                tracing::error!(credential = %owner, "a refreshed token state the store never took is dropped; if Concur rotated the refresh token, this credential needs a new one");
            }
        });
        took
    }

    fn keys(&self, slot: &Slot) -> (String, String) {
        let p = self.redis.prefix();
        let tag = company_tag(&slot.company);
        (
            format!("{p}{tag}:tok:{}", slot.key),
            format!("{p}{tag}:lock:{}", slot.key),
        )
    }

    async fn read(&self, key: &str) -> Result<Option<(u64, Record)>, StoreError> {
        let Some((version, sealed)) = self.redis.token_read(key).await? else {
            return Ok(None);
        };
        let plain = self.sealer.open(key, &sealed);
        self.store.sealing(plain.is_some());
        let plain = plain.ok_or(StoreError::Unsealable)?;
        let record = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Protocol(format!("a stored token state: {e}")))?;
        Ok(Some((version, record)))
    }
}

/// What became of a state kept for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    /// None was kept.
    Nothing,
    /// Written, as this version.
    Written(u64),
    /// A newer state was stored first.
    Dropped,
}

/// Writes the state kept for `key`, if any (when `Ok`, nothing is kept any
/// more).
async fn flush_unstored(
    redis: &Redis,
    sealer: &Sealer,
    unstored: &std::sync::Mutex<HashMap<String, Unstored>>,
    key: &str,
    owner: &str,
) -> Result<Flushed, StoreError> {
    let Some(kept) = unstored.lock().expect("unstored lock").get(key).cloned() else {
        return Ok(Flushed::Nothing);
    };
    let mut written_as = kept.version + 1;
    let mut result = redis
        .token_cas_version(key, kept.version, &kept.sealed)
        .await?;
    if matches!(result, CasResult::VersionMoved)
        && let Ok(Some((stored_version, stored))) = redis.token_read(key).await
    {
        if stored == kept.sealed {
            // Written already, by this replica's other flush (the background
            // one and a request's may run at once).
            result = CasResult::Written;
            written_as = stored_version;
        } else if sealer
            .open(key, &stored)
            .and_then(|plain| serde_json::from_slice::<Record>(&plain).ok())
            .is_some_and(|r| r.dead.is_some())
        {
            // What was stored meanwhile is a refresh Concur refused: another
            // replica took the lock after it expired and refreshed with the
            // refresh token this state rotated out. This state is the live
            // one.
            result = redis
                .token_cas_version(key, stored_version, &kept.sealed)
                .await?;
            written_as = stored_version + 1;
            if matches!(result, CasResult::Written) {
                tracing::warn!(
                    credential = %owner,
                    "a refreshed token state the store had missed replaces the dead state another replica stored meanwhile (it refreshed with the refresh token this one had rotated out)"
                );
            }
        }
    }
    {
        let mut map = unstored.lock().expect("unstored lock");
        if map.get(key).is_some_and(|k| k.version == kept.version) {
            map.remove(key);
        }
    }
    Ok(match result {
        CasResult::Written => {
            tracing::info!(
                credential = %owner,
                version = written_as,
                "a refreshed token state the store had missed is stored now, for every replica"
            );
            Flushed::Written(written_as)
        }
        _ => {
            tracing::error!(
                credential = %owner,
                "a refreshed token state the store had missed is dropped: another replica stored a newer one first; if Concur rotated the refresh token, this credential may need a new one"
            );
            Flushed::Dropped
        }
    })
}

/// The lineage of `record` against the file's refresh token `file_fp`.
fn lineage(record: Option<&Record>, file_fp: &str) -> Lineage {
    match record {
        None => Lineage::File,
        Some(r) if r.descends_from == file_fp || r.superseded.iter().any(|s| s == file_fp) => {
            Lineage::Stored
        }
        Some(_) => Lineage::File,
    }
}

impl TokenManager {
    /// `access` for a refreshing credential whose cached token cannot be
    /// used, with the shared store (see the module docs). Called under the
    /// slot's local single flight.
    pub(super) async fn access_shared(
        &self,
        shared: &SharedTokens,
        slot: &Slot,
        cred: &Credential,
    ) -> Result<Access, GatewayError> {
        let (key, lock) = shared.keys(slot);
        // Waiting for another replica's refresh is bounded by what a refresh
        // may take, plus the lock's life (a holder that died).
        let give_up = tokio::time::Instant::now() + self.request_timeout + shared.lock_ttl * 2;
        loop {
            // A refreshed state this replica holds and the store missed goes
            // first: refreshing with the stored (rotated-out) token would fail.
            if let Err(e) = flush_unstored(
                &shared.redis,
                &shared.sealer,
                &shared.unstored,
                &key,
                &slot.owner,
            )
            .await
            {
                return self.without_store(shared, slot, cred, "token_write", &e);
            }
            let stored = match shared.read(&key).await {
                Ok(stored) => {
                    shared.store.recovered();
                    stored
                }
                Err(e) => return self.without_store(shared, slot, cred, "token_read", &e),
            };
            let (version, record) = match stored {
                Some((v, r)) => (v, Some(r)),
                None => (0, None),
            };
            let now = self.clock.now_unix();
            let file_fp = slot.state.lock().expect("slot lock").origin.clone();
            if let (Lineage::Stored, Some(r)) = (lineage(record.as_ref(), &file_fp), &record) {
                if let Some(why) = &r.dead {
                    self.mark_dead(slot, why.clone());
                    dead_at(slot, version);
                    return Err(GatewayError::CredentialUnusable);
                }
                if adopt(slot, version, r, now, Some(self.margin_s)) {
                    return self.current_or(slot, cred, now);
                }
            }
            let retry_at = slot.state.lock().expect("slot lock").retry_at;
            if now < retry_at {
                if let Some(r) = &record {
                    adopt(slot, version, r, now, None);
                }
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
            // Take the lock, or wait for the one who has it.
            let owner = crate::request_id::generate();
            match shared.redis.lock(&lock, &owner, shared.lock_ttl).await {
                Err(e) => return self.without_store(shared, slot, cred, "token_lock", &e),
                Ok(false) => {
                    if tokio::time::Instant::now() >= give_up {
                        return Err(GatewayError::UpstreamUnavailable(
                            "waiting for another replica's token refresh took too long".into(),
                        ));
                    }
                    self.wait_for_holder(shared, &key, &lock, version).await;
                    continue;
                }
                Ok(true) => {}
            }
            let mut handed_over = false;
            let result = self
                .refresh_under_lock(shared, slot, cred, &key, &lock, &owner, &mut handed_over)
                .await;
            if !handed_over {
                let _ = shared.redis.unlock(&lock, &owner).await;
            }
            return result;
        }
    }

    /// Waits until the stored version moves past `seen` or the lock is gone.
    async fn wait_for_holder(&self, shared: &SharedTokens, key: &str, lock: &str, seen: u64) {
        let until = tokio::time::Instant::now() + shared.lock_ttl;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(POLL).await;
            match shared.redis.token_version(key).await {
                Ok(v) if v != seen => return,
                Ok(_) => {}
                Err(_) => return, // the caller's next read reports it
            }
            if let Ok(false) = shared.redis.locked(lock).await {
                return;
            }
        }
    }

    /// The refresh itself, holding the lock: re-read, refresh, store, use.
    /// Sets `handed_over` when the lock went to the task that writes a state
    /// the store did not take (it releases it).
    #[allow(clippy::too_many_arguments)]
    async fn refresh_under_lock(
        &self,
        shared: &SharedTokens,
        slot: &Slot,
        cred: &Credential,
        key: &str,
        lock: &str,
        owner: &str,
        handed_over: &mut bool,
    ) -> Result<Access, GatewayError> {
        // A child of the request that needed it (the current trace context).
        let span = crate::telemetry::Child::current("credential refresh");
        let _running = slot.refresh_started(&span);
        // Keep the lock alive while the token endpoint takes its time. Lost
        // only when the store says so: a renewal that timed out may still
        // have been applied (a slow link), and the write checks the lock.
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = {
            let (redis, lock, owner, lost, ttl) = (
                shared.redis.clone(),
                lock.to_owned(),
                owner.to_owned(),
                lost.clone(),
                shared.lock_ttl,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if let Ok(false) = redis.extend_lock(&lock, &owner, ttl).await {
                        lost.store(true, Ordering::Release);
                    }
                }
            })
        };
        let _renewal = AbortOnDrop(renewal);
        // Someone may have refreshed between our read and our lock.
        let (version, record) = match shared.read(key).await {
            Ok(Some((v, r))) => (v, Some(r)),
            Ok(None) => (0, None),
            Err(e) => return self.without_store(shared, slot, cred, "token_read", &e),
        };
        let now = self.clock.now_unix();
        let file_fp = slot.state.lock().expect("slot lock").origin.clone();
        let lineage = lineage(record.as_ref(), &file_fp);
        if let (Lineage::Stored, Some(r)) = (&lineage, &record) {
            if let Some(why) = &r.dead {
                self.mark_dead(slot, why.clone());
                dead_at(slot, version);
                return Err(GatewayError::CredentialUnusable);
            }
            if adopt(slot, version, r, now, Some(self.margin_s)) {
                return self.current_or(slot, cred, now);
            }
        }
        let (refresh_token, descends_from, superseded) =
            next_lineage(slot, &lineage, record.as_ref());
        let answer = self.request_token(slot, &refresh_token).await;
        if shared.crash_after_answer {
            tracing::error!(
                credential = %slot.owner,
                "{CRASH_AFTER_TOKEN_ANSWER_ENV} is set: aborting after the token answer, before storing it"
            );
            std::process::abort();
        }
        let now = self.clock.now_unix();
        let write = |record: &Record| {
            let plain = serde_json::to_vec(record).expect("a record serialises");
            shared.sealer.seal(key, &plain)
        };
        match answer {
            Ok(TokenAnswer {
                access_token,
                expires_in,
                refresh_token: new_refresh,
                geolocation,
            }) => {
                let rotated = new_refresh.as_ref().is_some_and(|rt| *rt != refresh_token);
                let new = Record {
                    refresh_token: new_refresh.unwrap_or(refresh_token).expose().to_owned(),
                    descends_from,
                    superseded,
                    access_token: Some(access_token.expose().to_owned()),
                    obtained: now,
                    expires_at: now + expires_in,
                    geolocation: geolocation
                        .map(|g| g.to_string())
                        .or_else(|| record.as_ref().and_then(|r| r.geolocation.clone())),
                    dead: None,
                    written_at: now,
                };
                // Stored BEFORE it is used (see the module docs).
                let sealed = write(&new);
                let stored = if lost.load(Ordering::Acquire) {
                    Ok(CasResult::LockLost)
                } else {
                    shared
                        .redis
                        .token_cas(key, lock, owner, version, &sealed)
                        .await
                };
                if matches!(stored, Ok(CasResult::LockLost) | Err(_)) {
                    // Not lost: written as soon as the store answers, if no
                    // replica stored anything since `version`. Unless the
                    // store said the lock is gone, it is kept until then,
                    // so that no replica refreshes with the refresh token
                    // Concur just rotated out.
                    let held = stored.is_err().then(|| HeldLock {
                        lock: lock.to_owned(),
                        owner: owner.to_owned(),
                        ttl: shared.lock_ttl,
                    });
                    *handed_over = shared.keep_unstored(key, &slot.owner, version, sealed, held);
                }
                // Offered again at once, without the lock (a Redis that lost
                // it, or came back empty, takes it by the version alone):
                // the other replicas then find it before they refresh.
                let (stored, version) = match stored {
                    Ok(CasResult::LockLost) => {
                        match flush_unstored(
                            &shared.redis,
                            &shared.sealer,
                            &shared.unstored,
                            key,
                            &slot.owner,
                        )
                        .await
                        {
                            // (`after_store` takes the version it follows.)
                            Ok(Flushed::Written(v)) => {
                                (Ok(CasResult::Written), v.saturating_sub(1))
                            }
                            _ => (stored, version),
                        }
                    }
                    other => (other, version),
                };
                self.after_store(slot, cred, stored, &new, version, rotated, expires_in, now)
            }
            Err(Failure::Rejected(why)) => {
                // Tell the other replicas, so they do not hammer Concur.
                let dead = Record {
                    refresh_token: refresh_token.expose().to_owned(),
                    descends_from,
                    superseded,
                    access_token: None,
                    obtained: 0,
                    expires_at: 0,
                    geolocation: None,
                    dead: Some(why.clone()),
                    written_at: now,
                };
                let wrote = shared
                    .redis
                    .token_cas(key, lock, owner, version, &write(&dead))
                    .await;
                let error = self.on_rejected(slot, why);
                dead_at(
                    slot,
                    version + u64::from(matches!(wrote, Ok(CasResult::Written))),
                );
                Err(error)
            }
            Err(Failure::Superseded) => Err(GatewayError::UpstreamUnavailable(
                "the credentials file changed during the token refresh; retry".into(),
            )),
            Err(Failure::Transient(why)) => self.on_transient(slot, cred, why),
        }
    }

    /// What became of the write of a refreshed state: use it, or report the
    /// window of the module docs (Concur answered, the store did not take
    /// it: reported, not hidden).
    #[allow(clippy::too_many_arguments)]
    fn after_store(
        &self,
        slot: &Slot,
        cred: &Credential,
        stored: Result<CasResult, StoreError>,
        new: &Record,
        version: u64,
        rotated: bool,
        expires_in: u64,
        now: u64,
    ) -> Result<Access, GatewayError> {
        let why = match stored {
            Ok(CasResult::Written) => {
                self.refreshes
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                tracing::info!(
                    credential = %slot.owner,
                    expires_in,
                    rotated,
                    version = version + 1,
                    "Concur access token refreshed and stored for every replica"
                );
                adopt(slot, version + 1, new, now, None);
                {
                    let mut st = slot.state.lock().expect("slot lock");
                    st.failures = 0;
                    st.retry_at = 0;
                }
                return self.current_or(slot, cred, now);
            }
            Ok(CasResult::LockLost) => "the refresh lock expired".to_owned(),
            Ok(CasResult::VersionMoved) => "another replica stored a newer state".to_owned(),
            Err(e) => e.to_string(),
        };
        self.refreshes
            .get_or_create(&ResultLabel {
                result: "store_failed",
            })
            .inc();
        tracing::error!(
            credential = %slot.owner,
            rotated,
            reason = %why,
            "Concur answered the refresh but the store did not take the new state; it is kept here and written as soon as the store answers (unless another replica stores a newer state first)"
        );
        Err(GatewayError::StoreUnavailable {
            retry_after_s: 5,
            unsealable: false,
        })
    }

    /// The store did not answer, or holds the credential's state sealed
    /// with another key: a cached token that has not expired is still used;
    /// nothing is refreshed without the lock.
    fn without_store(
        &self,
        shared: &SharedTokens,
        slot: &Slot,
        cred: &Credential,
        op: &'static str,
        error: &StoreError,
    ) -> Result<Access, GatewayError> {
        // A state sealed with another key: Redis answers (nothing falls
        // back, `store_up` stays 1); `Store::sealing` logged it and
        // `/readyz` says it.
        let unsealable = matches!(error, StoreError::Unsealable);
        if !unsealable {
            shared.store.fell_back(op, error);
        }
        let now = self.clock.now_unix();
        match slot.current(cred, now, None)? {
            Some(access) => Ok(access),
            None => {
                tracing::warn!(
                    credential = %slot.owner,
                    error = %error,
                    "the access token needs a refresh and the store cannot be used for it: not refreshing without the lock"
                );
                Err(GatewayError::StoreUnavailable {
                    retry_after_s: 5,
                    unsealable,
                })
            }
        }
    }

    /// A credential found dead here: whether another replica has stored a
    /// newer, live state since (it refreshed after this one's refresh was
    /// refused: the lock holder cut off from Redis, say). It revives then,
    /// rather than stay unusable until the credentials file changes while
    /// every other replica works. Asked by one request every few seconds.
    pub(super) async fn revive_shared(&self, shared: &SharedTokens, slot: &Slot) {
        let (key, _) = shared.keys(slot);
        let Ok(Some((version, record))) = shared.read(&key).await else {
            return;
        };
        let (dead_version, file_fp) = {
            let st = slot.state.lock().expect("slot lock");
            (st.dead_version, st.origin.clone())
        };
        if version <= dead_version
            || record.dead.is_some()
            || !matches!(lineage(Some(&record), &file_fp), Lineage::Stored)
        {
            return;
        }
        {
            let mut st = slot.state.lock().expect("slot lock");
            st.dead = None;
            st.failures = 0;
            st.retry_at = 0;
            // Its refresh token, should its access token need a refresh.
            st.refresh_token = Secret::new(record.refresh_token.clone());
            st.generation = version;
        }
        adopt(slot, version, &record, self.clock.now_unix(), None);
        {
            let slots = self.slots.lock().expect("slots lock");
            self.update_gauge(&slots);
        }
        tracing::info!(
            credential = %slot.owner,
            version,
            "the credential is usable again: another replica stored a newer, live token state since this one found it dead"
        );
    }

    fn current_or(&self, slot: &Slot, cred: &Credential, now: u64) -> Result<Access, GatewayError> {
        slot.current(cred, now, None)?
            .ok_or_else(|| GatewayError::Internal("refreshed token already expired".into()))
    }
}

/// The refresh token to refresh with, and the lineage the new state will
/// record: the stored one, or the file's when the store has not seen it (a
/// Secret update), which then lists the stored lineage as replaced.
fn next_lineage(
    slot: &Slot,
    lineage: &Lineage,
    record: Option<&Record>,
) -> (Secret, String, Vec<String>) {
    if let (Lineage::Stored, Some(r)) = (lineage, record) {
        return (
            Secret::new(r.refresh_token.clone()),
            r.descends_from.clone(),
            r.superseded.clone(),
        );
    }
    let st = slot.state.lock().expect("slot lock");
    let mut superseded = record.map(|r| r.superseded.clone()).unwrap_or_default();
    if let Some(r) = record {
        tracing::info!(credential = %slot.owner, "the credentials file provides a refresh token the store has not seen; it replaces the stored one");
        superseded.push(r.descends_from.clone());
        let excess = superseded.len().saturating_sub(SUPERSEDED_KEPT);
        superseded.drain(..excess);
    }
    (st.refresh_token.clone(), st.origin.clone(), superseded)
}

/// Notes the stored version at which the credential was found dead.
fn dead_at(slot: &Slot, version: u64) {
    slot.state.lock().expect("slot lock").dead_version = version;
}

/// Takes the stored access token into the slot when it is usable at `now`
/// (under `margin`, as for a cached one); returns whether it was.
fn adopt(slot: &Slot, version: u64, r: &Record, now: u64, margin: Option<u64>) -> bool {
    let Some(token) = &r.access_token else {
        return false;
    };
    let usable = match margin {
        Some(m) => !super::needs_refresh(now, r.obtained, r.expires_at, m),
        None => now < r.expires_at,
    };
    if !usable {
        return false;
    }
    let mut st = slot.state.lock().expect("slot lock");
    // A stale mark on the same token stays (Concur refused it).
    if st.generation == version && st.access.as_ref().is_some_and(|a| a.stale) {
        return false;
    }
    st.refresh_token = Secret::new(r.refresh_token.clone());
    st.generation = version;
    st.access = Some(AccessToken {
        token: Secret::new(token.clone()),
        obtained: r.obtained,
        expires_at: r.expires_at,
        stale: false,
    });
    if let Some(geo) = r.geolocation.as_deref().and_then(super::parse_base) {
        st.geolocation = Some(geo);
    }
    true
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
