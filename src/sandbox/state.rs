//! The sandbox's shared state: tokens, images, records, faults, OAuth clients, clock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{Fault, OAuthClient, SandboxConfig, SandboxToken, UploadRecord};

const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Who owns a token, and whether it is still valid.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub company: String,
    pub user: Option<String>,
    pub expired: bool,
}

struct TokenEntry {
    company: String,
    user: Option<String>,
    /// Sandbox-clock instant at which it stops being accepted.
    expires_at: Option<Instant>,
}

/// A successful refresh.
pub(crate) struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    /// 1-based count of successful refreshes (decides string vs number `expires_in`).
    pub serial: u64,
}

/// Why a refresh failed.
pub(crate) enum RefreshError {
    UnknownClient,
    BadSecret,
    BadRefreshToken,
}

struct Inner {
    tokens: HashMap<String, TokenEntry>,
    records: BTreeMap<u64, UploadRecord>,
    faults: VecDeque<Fault>,
    /// (company, kind, id) of expense entries and invoices that have their image.
    attached: HashSet<(String, &'static str, String)>,
    oauth_clients: HashMap<String, OAuthClient>,
    access_token_ttl: Duration,
    refreshes: u64,
    clock_offset: Duration,
    /// Answered as `geolocation` by the token endpoint; `None`: `base_url`.
    geolocation: Option<String>,
}

pub(crate) struct State {
    pub base_url: String,
    inner: Mutex<Inner>,
    next_seq: AtomicU64,
    connections: AtomicU64,
    token_requests: AtomicU64,
    /// How long the token endpoint waits before answering (tests of callers
    /// that wait for one refresh).
    token_delay_ms: AtomicU64,
    /// Whether uploads' bodies are hashed (`sha256_hex`); on by default. The
    /// load bench turns it off while it measures, so that the sink costs no
    /// more than reading the bytes (`PUT /_sandbox/body-digest`).
    body_digest: AtomicBool,
    /// Bumped to close the connections between requests (and the others
    /// after their answer): [`State::close_connections`].
    close: tokio::sync::watch::Sender<u64>,
}

impl State {
    pub fn new(base_url: String, config: &SandboxConfig) -> State {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                (
                    t.token.clone(),
                    TokenEntry {
                        company: t.company.clone(),
                        user: t.user.clone(),
                        expires_at: None,
                    },
                )
            })
            .collect();
        let oauth_clients = config
            .oauth_clients
            .iter()
            .map(|c| (c.client_id.clone(), c.clone()))
            .collect();
        let access_token_ttl = if config.access_token_ttl.is_zero() {
            DEFAULT_ACCESS_TOKEN_TTL
        } else {
            config.access_token_ttl
        };
        State {
            base_url,
            inner: Mutex::new(Inner {
                tokens,
                records: BTreeMap::new(),
                faults: VecDeque::new(),
                attached: HashSet::new(),
                oauth_clients,
                access_token_ttl,
                refreshes: 0,
                clock_offset: Duration::ZERO,
                geolocation: None,
            }),
            next_seq: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_delay_ms: AtomicU64::new(0),
            body_digest: AtomicBool::new(true),
            close: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Closes every connection that is between requests, and each other one
    /// once its answer is sent (hyper's graceful shutdown of a connection).
    pub fn close_connections(&self) {
        self.close.send_modify(|n| *n += 1);
    }

    /// What a connection watches for [`State::close_connections`].
    pub fn close_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.close.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way
        // that matters to a test double; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sandbox clock, monotonic.
    fn now_instant(inner: &Inner) -> Instant {
        Instant::now() + inner.clock_offset
    }

    /// Sandbox clock, wall time.
    pub fn now_system(&self) -> SystemTime {
        SystemTime::now() + self.lock().clock_offset
    }

    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    // --- counters ---------------------------------------------------------------

    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a new connection and returns its 1-based id.
    pub fn new_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn count_token_request(&self) {
        self.token_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Token requests that were answered with a new access token.
    pub fn successful_refreshes(&self) -> u64 {
        self.lock().refreshes
    }

    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    pub fn set_token_delay(&self, delay: Duration) {
        self.token_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_body_digest(&self, on: bool) {
        self.body_digest.store(on, Ordering::Relaxed);
    }

    pub fn body_digest(&self) -> bool {
        self.body_digest.load(Ordering::Relaxed)
    }

    pub fn token_delay(&self) -> Duration {
        Duration::from_millis(self.token_delay_ms.load(Ordering::Relaxed))
    }

    // --- tokens -----------------------------------------------------------------

    pub fn add_token(&self, token: SandboxToken, expires_at: Option<Instant>) {
        self.lock().tokens.insert(
            token.token,
            TokenEntry {
                company: token.company,
                user: token.user,
                expires_at,
            },
        );
    }

    pub fn lookup(&self, token: &str) -> Option<Owner> {
        let inner = self.lock();
        let now = Self::now_instant(&inner);
        inner.tokens.get(token).map(|e| Owner {
            company: e.company.clone(),
            user: e.user.clone(),
            expired: e.expires_at.is_some_and(|at| now >= at),
        })
    }

    // --- records ----------------------------------------------------------------

    pub fn record(&self, seq: u64, record: UploadRecord) {
        self.lock().records.insert(seq, record);
    }

    pub fn uploads(&self) -> Vec<UploadRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// Clears the records and returns how many there were.
    pub fn clear_uploads(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.records.len();
        inner.records.clear();
        n
    }

    // --- faults -----------------------------------------------------------------

    /// Queues a fault and returns how many are queued.
    pub fn push_fault(&self, fault: Fault) -> usize {
        let mut inner = self.lock();
        inner.faults.push_back(fault);
        inner.faults.len()
    }

    pub fn pop_fault(&self) -> Option<Fault> {
        self.lock().faults.pop_front()
    }

    pub fn faults(&self) -> Vec<Fault> {
        self.lock().faults.iter().cloned().collect()
    }

    /// Clears the queued faults and returns how many there were.
    pub fn clear_faults(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.faults.len();
        inner.faults.clear();
        n
    }

    // --- images -----------------------------------------------------------------

    /// Attaches an image to (company, kind, id); false if one is already attached.
    pub fn attach(&self, company: &str, kind: &'static str, id: &str) -> bool {
        self.lock()
            .attached
            .insert((company.to_owned(), kind, id.to_owned()))
    }

    // --- OAuth ------------------------------------------------------------------

    pub fn add_oauth_client(&self, client: OAuthClient) {
        self.lock()
            .oauth_clients
            .insert(client.client_id.clone(), client);
    }

    pub fn current_refresh_token(&self, client_id: &str) -> Option<String> {
        self.lock()
            .oauth_clients
            .get(client_id)
            .map(|c| c.refresh_token.clone())
    }

    pub fn refresh_tokens(&self) -> BTreeMap<String, String> {
        self.lock()
            .oauth_clients
            .values()
            .map(|c| (c.client_id.clone(), c.refresh_token.clone()))
            .collect()
    }

    pub fn set_geolocation(&self, geolocation: Option<String>) {
        self.lock().geolocation = geolocation;
    }

    pub fn geolocation(&self) -> String {
        self.lock()
            .geolocation
            .clone()
            .unwrap_or_else(|| self.base_url.clone())
    }

    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.lock().access_token_ttl = ttl;
    }

    /// Checks the client and its refresh token; on success registers a fresh access
    /// token and rotates the refresh token, atomically.
    pub fn refresh(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<Issued, RefreshError> {
        let mut inner = self.lock();
        let now = Self::now_instant(&inner);
        let ttl = inner.access_token_ttl;
        let client = inner
            .oauth_clients
            .get_mut(client_id)
            .ok_or(RefreshError::UnknownClient)?;
        if !constant_time_eq(client.client_secret.as_bytes(), client_secret.as_bytes()) {
            return Err(RefreshError::BadSecret);
        }
        if !constant_time_eq(client.refresh_token.as_bytes(), refresh_token.as_bytes()) {
            return Err(RefreshError::BadRefreshToken);
        }
        let new_refresh = super::util::uuid_v4();
        client.refresh_token = new_refresh.clone();
        let (company, user) = (client.company.clone(), client.user.clone());
        let access_token = super::util::opaque_token();
        inner.tokens.insert(
            access_token.clone(),
            TokenEntry {
                company,
                user,
                expires_at: Some(now + ttl),
            },
        );
        inner.refreshes += 1;
        Ok(Issued {
            access_token,
            refresh_token: new_refresh,
            expires_in: ttl.as_secs(),
            serial: inner.refreshes,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
