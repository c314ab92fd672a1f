//! The Redis backend of the store: a connection (one node over
//! `ConnectionManager`, or a Cluster), and every operation as one atomic step
//! on the server: a Lua script, `SET NX PX`, or a compare-and-set on a
//! version. Nothing here reads, modifies and writes back from the gateway.
//!
//! Key layout (`P` is `store.key_prefix`, `{c:H}` the company's hash tag: `H`
//! is the first 16 hex digits of SHA-256 of the company, so that every key of
//! one company lands in one Cluster slot and every script touches one slot):
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `P{c:H}:rl:u:U` | string | GCRA theoretical arrival time (µs, Redis `TIME`) of user `U` (a hash) | when the bucket is full again |
//! | `P{c:H}:rl:c` | string | the same for the company | idem |
//! | `P{c:H}:if:u:U` / `P{c:H}:if:c` | sorted set | uploads in flight: member = upload id, score = lease end (ms) | leases of 30 s, renewed every 10 s |
//! | `P{c:H}:bo:K` | string | Concur asked credential `K` (a hash) to back off | Concur's `Retry-After` (≤ 5 min) |
//! | `P{c:H}:tok:K` | hash | `v` version, `s` the credential's token state, AES-256-GCM sealed | none |
//! | `P{c:H}:lock:K` | string | the refresh lock: the holder's random id | 15 s, renewed every 5 s while the refresh runs |
//! | `P{c:H}:idem:U:K` | string | an `Idempotency-Key` record of user `U` (hash) for key `K` (hash): `inflight:<id>` while the first request runs, then the final answer (JSON: fingerprint, Concur's status and body) | the in-flight lease (30 s, renewed), then `idempotency.ttl_s` |

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use crate::config::RedisConfig;

/// One connection to the store, single node or cluster. Both reconnect by
/// themselves once established.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a store call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to the store yet")]
    NotConnected,
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("store error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from the store: {0}")]
    Protocol(String),
    /// A stored token state that this replica's key does not open.
    #[error("a stored token state does not open with store.encryption_key_file")]
    Unsealable,
}

/// The shared store on Redis.
pub struct Redis {
    config: RedisConfig,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    /// Each connection worker's own connection (`crate::workers`), by worker
    /// index: made on that worker's runtime after its first call, so that
    /// its calls do not wait for another thread to run the connection. The
    /// shared `conn` serves the rest (housekeeping, health) and a worker
    /// until its own is up.
    local: Arc<[LocalConn]>,
    client: Client,
    scripts: Scripts,
}

#[derive(Default)]
struct LocalConn {
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
}

/// How long a worker waits before trying again to open its own connection.
const LOCAL_RETRY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("urls", &self.config.urls.len())
            .field("connected", &self.conn.load().is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Client {
    Single(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
}

impl Client {
    /// A connection: one node over a reconnecting `ConnectionManager`, or a
    /// Cluster. Its driver runs on the calling runtime.
    async fn open(&self) -> redis::RedisResult<Conn> {
        Ok(match self {
            Client::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                Conn::Single(client.get_connection_manager_with_config(config).await?)
            }
            Client::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        })
    }
}

struct Scripts {
    admit: Script,
    release: Script,
    renew: Script,
    back_off: Script,
    unlock: Script,
    extend_lock: Script,
    cas: Script,
    cas_version: Script,
    idem_begin: Script,
    idem_finish: Script,
}

/// Admission: first the releases it carries (`ARGV[9]` places given back by
/// earlier uploads of the same company: member `ARGV[9 + i]` in the sorted
/// sets `KEYS[4 + 2i]` and `KEYS[5 + 2i]`), then Concur back-off of the
/// credential, uploads in flight per user and company (leases), then GCRA per
/// user and company, all or nothing. Returns
/// `{0, user_remaining, company_remaining}` or `{1, scope, retry_after_ms}`
/// with scope 1 concur, 2 user_concurrent, 3 company_concurrent, 4 user,
/// 5 company.
const ADMIT: &str = r#"
for i = 1, tonumber(ARGV[9]) do
  redis.call('ZREM', KEYS[4 + 2 * i], ARGV[9 + i])
  redis.call('ZREM', KEYS[5 + 2 * i], ARGV[9 + i])
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local bo = redis.call('PTTL', KEYS[3])
if bo > 0 then return {1, 1, bo} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then return {1, 2, 1000} end
if redis.call('ZCARD', KEYS[5]) >= tonumber(ARGV[6]) then return {1, 3, 1000} end
local function tat_of(key)
  local v = redis.call('GET', key)
  if v then v = tonumber(v) end
  if (not v) or v < now_us then v = now_us end
  return v
end
local ue, ut = tonumber(ARGV[1]), tonumber(ARGV[2])
local ce, ct = tonumber(ARGV[3]), tonumber(ARGV[4])
local utat = tat_of(KEYS[1])
if utat - now_us > ut then return {1, 4, math.ceil((utat - ut - now_us) / 1000)} end
local ctat = tat_of(KEYS[2])
if ctat - now_us > ct then return {1, 5, math.ceil((ctat - ct - now_us) / 1000)} end
local unew, cnew = utat + ue, ctat + ce
redis.call('SET', KEYS[1], string.format('%.0f', unew), 'PX', math.ceil((unew - now_us) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%.0f', cnew), 'PX', math.ceil((cnew - now_us) / 1000) + 1000)
local lease = tonumber(ARGV[8])
redis.call('ZADD', KEYS[4], now_ms + lease, ARGV[7])
redis.call('PEXPIRE', KEYS[4], lease * 2)
redis.call('ZADD', KEYS[5], now_ms + lease, ARGV[7])
redis.call('PEXPIRE', KEYS[5], lease * 2)
return {0, math.floor((now_us + ut + ue - unew) / ue), math.floor((now_us + ct + ce - cnew) / ce)}
"#;

/// Places given back: member `ARGV[i]` in `KEYS[2i - 1]` and `KEYS[2i]`.
const RELEASE: &str = r#"
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[2 * i - 1], ARGV[i])
  redis.call('ZREM', KEYS[2 * i], ARGV[i])
end
return 1
"#;

const RENEW: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'XX', now_ms + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('ZADD', KEYS[2], 'XX', now_ms + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[2], lease * 2)
return 1
"#;

/// Sets a back-off unless a longer one is in force.
const BACK_OFF: &str = r#"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"#;

const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const EXTEND_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// Returns the record at KEYS[1] if there is one, else creates the in-flight
/// marker ARGV[1] for ARGV[2] ms and returns false.
const IDEM_BEGIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

/// Replaces the in-flight marker ARGV[1] by the final record ARGV[2] for
/// ARGV[3] ms, if the marker is still ours, or gone (its lease ran out while
/// the store was away, and no other request took the key since). The record
/// there already (an earlier call that timed out here and ran after all)
/// counts as written.
const IDEM_FINISH: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
if v == ARGV[2] then return 1 end
return 0
"#;

/// Writes a token state if the caller still holds the lock and the stored
/// version is the one it read: `1` written, `0` lost the lock, `-1` version moved.
const CAS: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '0') ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], 'v', ARGV[3], 's', ARGV[4])
return 1
"#;

/// Writes a token state if the stored version is still ARGV[1], or if there
/// is none at all, whoever holds the lock: `1` written, `-1` version moved.
/// For a refreshed state whose write failed under the lock (the store went
/// away past the lock's life): the version alone says that no replica
/// stored anything since, and a Redis that came back empty (no persistence)
/// holds nothing newer than the state this replica kept.
const CAS_VERSION: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if v and v ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
return 1
"#;

/// The keys of one admission.
#[derive(Debug, Clone)]
pub struct AdmitKeys {
    pub user_rate: String,
    pub company_rate: String,
    pub backoff: String,
    pub user_in_flight: String,
    pub company_in_flight: String,
}

/// The arguments of one admission (microseconds for GCRA).
#[derive(Debug, Clone, Copy)]
pub struct AdmitLimits {
    pub user_emission_us: u64,
    pub user_tolerance_us: u64,
    pub company_emission_us: u64,
    pub company_tolerance_us: u64,
    pub user_concurrent: usize,
    pub company_concurrent: usize,
    pub lease: Duration,
}

/// An upload's place in flight, given back: its member in the user's and
/// the company's sorted sets (keys of one company, so of one Cluster slot).
#[derive(Debug, Clone)]
pub struct Release {
    pub keys: [String; 2],
    pub member: String,
}

/// The answer to an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitReply {
    Admitted {
        user: u32,
        company: u32,
    },
    Refused {
        scope: &'static str,
        retry_after: Duration,
    },
}

impl Redis {
    /// Builds the client; connecting happens in the background
    /// ([`Redis::connect`]), so a gateway starts while Redis is down.
    pub fn new(config: &RedisConfig) -> Result<Self, String> {
        let certs = match &config.ca_file {
            Some(path) => {
                // The same check as `upstream.ca_file`: a file without a PEM
                // certificate would leave TLS to Redis failing for good.
                crate::upstream::tls_config(Some(path))
                    .map_err(|e| format!("store.ca_file {e}"))?;
                Some(std::fs::read(path).map_err(|e| format!("store.ca_file: {e}"))?)
            }
            None => None,
        };
        let tls = || redis::TlsCertificates {
            client_tls: None,
            root_cert: certs.clone(),
        };
        let client = if config.urls.len() > 1 {
            let mut builder = redis::cluster::ClusterClientBuilder::new(config.urls.clone())
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(Duration::from_secs(1))
                .retries(1);
            if config.urls.iter().any(|u| u.starts_with("rediss://")) && certs.is_some() {
                builder = builder.certs(tls());
            }
            Client::Cluster(Box::new(
                builder
                    .build()
                    .map_err(|e| format!("store.url: {:?}", e.kind()))?,
            ))
        } else {
            let url = config.urls.first().ok_or("store.url: none")?;
            let client = if url.starts_with("rediss://") && certs.is_some() {
                redis::Client::build_with_tls(url.as_str(), tls())
            } else {
                redis::Client::open(url.as_str())
            };
            // The error does not quote the URL (it may hold a password).
            Client::Single(Box::new(
                client.map_err(|e| format!("store.url: {:?}", e.kind()))?,
            ))
        };
        Ok(Self {
            config: config.clone(),
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            local: (0..crate::config::MAX_WORKERS)
                .map(|_| LocalConn::default())
                .collect(),
            client,
            scripts: Scripts {
                admit: Script::new(ADMIT),
                release: Script::new(RELEASE),
                renew: Script::new(RENEW),
                back_off: Script::new(BACK_OFF),
                unlock: Script::new(UNLOCK),
                extend_lock: Script::new(EXTEND_LOCK),
                cas: Script::new(CAS),
                cas_version: Script::new(CAS_VERSION),
                idem_begin: Script::new(IDEM_BEGIN),
                idem_finish: Script::new(IDEM_FINISH),
            },
        })
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn prefix(&self) -> &str {
        &self.config.key_prefix
    }

    /// Whether a connection has been established (it reconnects by itself
    /// afterwards; whether it works now is what the calls tell).
    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Establishes the connection once; the connection then reconnects by
    /// itself. Called at start and again while it has not succeeded.
    pub async fn connect(&self) -> Result<(), StoreError> {
        if self.conn.load().is_some() || self.connecting.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = async {
            let conn = self.client.open().await?;
            self.conn.store(Some(Arc::new(conn)));
            Ok::<_, StoreError>(())
        }
        .await;
        self.connecting.store(false, Ordering::Release);
        result
    }

    /// Runs `op` on the connection under `store.timeout_ms`.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let shared = self.conn.load_full().ok_or(StoreError::NotConnected)?;
        let local = crate::workers::current().and_then(|i| Some((i, self.local.get(i)?)));
        let (conn, own) = match local {
            Some((i, slot)) => match slot.conn.load_full() {
                Some(conn) => (conn, Some(slot)),
                None => {
                    self.open_local(i);
                    (shared, None)
                }
            },
            None => (shared, None),
        };
        match tokio::time::timeout(self.config.timeout, op((*conn).clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                // A worker's own connection that broke (its runtime gone,
                // say) is given up: the shared one serves until a new one
                // is up. An error Redis answered leaves it in place.
                if let Some(slot) = own
                    && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
                {
                    slot.conn.store(None);
                }
                Err(e.into())
            }
            Err(_) => Err(StoreError::Timeout(self.config.timeout)),
        }
    }

    /// Opens worker `i`'s own connection in the background on its runtime,
    /// unless it is being opened (or failed less than [`LOCAL_RETRY`] ago).
    fn open_local(&self, i: usize) {
        if self.local[i].connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, local) = (self.client.clone(), self.local.clone());
        tokio::spawn(async move {
            let slot = &local[i];
            match client.open().await {
                Ok(conn) => slot.conn.store(Some(Arc::new(conn))),
                Err(_) => tokio::time::sleep(LOCAL_RETRY).await,
            }
            slot.connecting.store(false, Ordering::Release);
        });
    }

    /// Connections open now: the shared one and the workers' own.
    pub fn connections(&self) -> usize {
        usize::from(self.conn.load().is_some())
            + self
                .local
                .iter()
                .filter(|slot| slot.conn.load().is_some())
                .count()
    }

    /// Loads every script into Redis's script cache, in the background and
    /// without `timeout_ms`. A script runs by its hash (`EVALSHA`); one
    /// missing from the cache (a fresh or restarted Redis) is loaded and run
    /// again by the same call, and a call that times out never gets to that
    /// second step: on a link slower than `timeout_ms`, a script no replica
    /// had loaded would never run at all (a lock never renewed, a state never
    /// written). Called when the connection is made and whenever the store
    /// comes or goes.
    pub fn load_scripts(&self) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        for code in [
            ADMIT,
            RELEASE,
            RENEW,
            BACK_OFF,
            UNLOCK,
            EXTEND_LOCK,
            CAS,
            CAS_VERSION,
            IDEM_BEGIN,
            IDEM_FINISH,
        ] {
            let mut conn = (*conn).clone();
            tokio::spawn(async move {
                let _: redis::RedisResult<String> = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(code)
                    .query_async(&mut conn)
                    .await;
            });
        }
    }

    /// Pings the store (health).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Admits one upload, after releasing `releases` (places of the same
    /// company given back since the last call: they ride on this round trip).
    pub async fn admit(
        &self,
        keys: &AdmitKeys,
        limits: AdmitLimits,
        member: &str,
        releases: &[Release],
    ) -> Result<AdmitReply, StoreError> {
        let mut invocation = self.scripts.admit.prepare_invoke();
        invocation
            .key(&keys.user_rate)
            .key(&keys.company_rate)
            .key(&keys.backoff)
            .key(&keys.user_in_flight)
            .key(&keys.company_in_flight)
            .arg(limits.user_emission_us)
            .arg(limits.user_tolerance_us)
            .arg(limits.company_emission_us)
            .arg(limits.company_tolerance_us)
            .arg(limits.user_concurrent)
            .arg(limits.company_concurrent)
            .arg(member)
            .arg(limits.lease.as_millis() as u64)
            .arg(releases.len());
        for r in releases {
            invocation.key(&r.keys[0]).key(&r.keys[1]).arg(&r.member);
        }
        let reply: Vec<i64> = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        match reply.as_slice() {
            [0, user, company] => Ok(AdmitReply::Admitted {
                user: (*user).clamp(0, i64::from(u32::MAX)) as u32,
                company: (*company).clamp(0, i64::from(u32::MAX)) as u32,
            }),
            [1, scope, ms] => {
                let scope = match scope {
                    1 => "concur",
                    2 => "user_concurrent",
                    3 => "company_concurrent",
                    4 => "user",
                    5 => "company",
                    other => return Err(StoreError::Protocol(format!("admission scope {other}"))),
                };
                Ok(AdmitReply::Refused {
                    scope,
                    retry_after: Duration::from_millis((*ms).max(1) as u64),
                })
            }
            other => Err(StoreError::Protocol(format!("admission answer {other:?}"))),
        }
    }

    /// Gives uploads' in-flight places back (all of one company).
    pub async fn release(&self, releases: &[Release]) -> Result<(), StoreError> {
        let mut invocation = self.scripts.release.prepare_invoke();
        for r in releases {
            invocation.key(&r.keys[0]).key(&r.keys[1]).arg(&r.member);
        }
        self.call(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Extends an upload's in-flight leases.
    pub async fn renew(
        &self,
        keys: [&str; 2],
        member: &str,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(keys[0])
            .key(keys[1])
            .arg(member)
            .arg(lease.as_millis() as u64);
        self.call(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Concur asked this credential to back off for `wait`.
    pub async fn back_off(&self, key: &str, wait: Duration) -> Result<(), StoreError> {
        let mut invocation = self.scripts.back_off.prepare_invoke();
        invocation.key(key).arg(wait.as_millis().max(1) as u64);
        self.call(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// A token state: its version and sealed value, if any.
    pub async fn token_read(&self, key: &str) -> Result<Option<(u64, String)>, StoreError> {
        let key = key.to_owned();
        let (v, s): (Option<u64>, Option<String>) = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("s")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match (v, s) {
            (Some(v), Some(s)) => Some((v, s)),
            _ => None,
        })
    }

    /// The version of a token state (0: none), a cheap poll for waiters.
    pub async fn token_version(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_owned();
        let v: Option<u64> = self
            .call(|mut c| async move {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("v")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Writes a token state if `owner` holds `lock` and the version is still
    /// `expected`. `Ok(true)` written.
    pub async fn token_cas(
        &self,
        key: &str,
        lock: &str,
        owner: &str,
        expected: u64,
        sealed: &str,
    ) -> Result<CasResult, StoreError> {
        let mut invocation = self.scripts.cas.prepare_invoke();
        invocation
            .key(key)
            .key(lock)
            .arg(owner)
            .arg(expected)
            .arg(expected + 1)
            .arg(sealed);
        let r: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(match r {
            1 => CasResult::Written,
            0 => CasResult::LockLost,
            _ => CasResult::VersionMoved,
        })
    }

    /// Writes `sealed` as version `expected + 1` if the stored version is
    /// still `expected`, lock or no lock ([`CAS_VERSION`]).
    pub async fn token_cas_version(
        &self,
        key: &str,
        expected: u64,
        sealed: &str,
    ) -> Result<CasResult, StoreError> {
        let mut invocation = self.scripts.cas_version.prepare_invoke();
        invocation
            .key(key)
            .arg(expected)
            .arg(expected + 1)
            .arg(sealed);
        let r: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(if r == 1 {
            CasResult::Written
        } else {
            CasResult::VersionMoved
        })
    }

    /// Takes the lock if free: `SET NX PX`.
    pub async fn lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        let r: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(r.is_some())
    }

    /// Extends the lock if still held by `owner`.
    pub async fn extend_lock(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.extend_lock.prepare_invoke();
        invocation.key(key).arg(owner).arg(ttl.as_millis() as u64);
        let r: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(r == 1)
    }

    /// Releases the lock if still held by `owner`.
    pub async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let mut invocation = self.scripts.unlock.prepare_invoke();
        invocation.key(key).arg(owner);
        self.call(|mut c| async move { invocation.invoke_async::<i64>(&mut c).await })
            .await
            .map(|_| ())
    }

    /// Whether the lock is held by anyone.
    pub async fn locked(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let n: i64 = self
            .call(|mut c| async move { redis::cmd("EXISTS").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }
}

impl Redis {
    /// The record at `key`, or `None` after creating the in-flight `marker`.
    pub async fn idem_begin(
        &self,
        key: &str,
        marker: &str,
        lease: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut invocation = self.scripts.idem_begin.prepare_invoke();
        invocation
            .key(key)
            .arg(marker)
            .arg(lease.as_millis() as u64);
        self.call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
    }

    /// Replaces our in-flight `marker` (or nothing) by the final `record`
    /// for `ttl`: `false` when another request holds the key now.
    pub async fn idem_finish(
        &self,
        key: &str,
        marker: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.idem_finish.prepare_invoke();
        invocation
            .key(key)
            .arg(marker)
            .arg(record)
            .arg(ttl.as_millis() as u64);
        let r: i64 = self
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        Ok(r == 1)
    }
}

/// What a compare-and-set of a token state did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    Written,
    /// The lock expired and someone else may hold it: nothing written.
    LockLost,
    /// Someone else wrote a newer state: nothing written.
    VersionMoved,
}
