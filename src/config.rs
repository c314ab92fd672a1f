//! Typed configuration, validated once, every problem reported together.
//!
//! The TOML file is read into `Raw*` structs (serde, every key optional so one
//! missing key does not hide the next), unknown keys are collected with
//! `serde_ignored` (a typo must not pass silently), then each section's
//! `parse` validates its keys into a typed section, pushing every problem into
//! one shared list. [`Config::from_toml`] returns either a [`Config`] or the
//! full list of problems; [`Config::parse`] also returns the files the config
//! names, so `check-config` can load them even when the config itself has
//! problems. Relative paths are resolved against the config file's folder.
//!
//! Each key's default is a `DEFAULT_*` constant beside its section, named in
//! the key's doc comment below (and documented in `docs/configuration.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::inspect::{ActiveContentPolicy, Limits};

/// Every problem found in a configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub inspect: InspectConfig,
    /// `None`: no `[scan]` section, no malware scanning.
    pub scan: Option<ScanConfig>,
    pub credentials: CredentialsConfig,
    pub store: StoreConfig,
    pub idempotency: IdempotencyConfig,
    /// `None`: no `[tracing]` section, no spans exported.
    pub tracing: Option<TracingConfig>,
}

/// A config file as far as it could be read: the validated config or every
/// problem in it, and in both cases the files it names.
#[derive(Debug)]
pub struct Parsed {
    pub config: Result<Config, ConfigErrors>,
    pub files: Files,
}

/// The files and folders a config names, resolved against its folder, each
/// `Some` when its key was given and passed validation — whether or not the
/// rest of the config did. `serve` loads them at start; `check-config` loads
/// them even from a config with problems, to report everything in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    /// `auth.jwks_file`.
    pub jwks_file: Option<PathBuf>,
    /// `auth.hs256_secret_file`.
    pub hs256_secret_file: Option<PathBuf>,
    /// `auth.jwks_ca_file` (it exists; its PEM is not yet read).
    pub jwks_ca_file: Option<PathBuf>,
    /// `upstream.ca_file` (it exists; its PEM is not yet read).
    pub upstream_ca_file: Option<PathBuf>,
    /// `store.ca_file` (it exists; its PEM is not yet read).
    pub store_ca_file: Option<PathBuf>,
    /// `credentials.file`.
    pub credentials_file: Option<PathBuf>,
    /// `credentials.state_dir`.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    inspect: RawInspect,
    scan: Option<RawScan>,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    idempotency: RawIdempotency,
    tracing: Option<RawTracing>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::read(path).config
    }

    /// Reads a config file: [`Config::parse`] on its text.
    pub fn read(path: &Path) -> Parsed {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path.parent().unwrap_or(Path::new("."))),
            Err(e) => Parsed::unreadable(file_problem(path, &e)),
        }
    }

    /// Parses and validates config text; `base` is the folder relative paths are
    /// resolved against. This is the source tests swap.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        Self::parse(text, base).config
    }

    /// [`Config::from_toml`], and the files the text names.
    ///
    /// A value of the wrong type (`max_body_bytes = "10MB"`) stops serde at
    /// the first one. To report every problem in one run, such a line is
    /// named (key and line number), taken out of the text and the text read
    /// again, until it reads; the rest of the config is then checked as
    /// usual, without the problems of the keys taken out (they are reported
    /// already).
    pub fn parse(text: &str, base: &Path) -> Parsed {
        let mut text = std::borrow::Cow::Borrowed(text);
        let mut typed = Vec::new();
        let mut taken_out: Vec<String> = Vec::new();
        let (raw, unknown) = loop {
            let de = match toml::Deserializer::parse(&text) {
                Ok(de) => de,
                Err(e) if typed.is_empty() => {
                    return Parsed::unreadable(format!("TOML syntax: {}", e.message()));
                }
                // Taking out a value that spans lines broke the syntax: what
                // was found so far.
                Err(_) => return Parsed::problems(typed),
            };
            let mut unknown = Vec::new();
            match serde_ignored::deserialize::<_, _, RawConfig>(de, |path| {
                // `?` is how serde_ignored shows an optional section.
                unknown.push(path.to_string().replace(".?.", "."))
            }) {
                Ok(raw) => break (raw, unknown),
                Err(e) => match e.span().and_then(|span| line_of(&text, span.start)) {
                    Some((number, start, key)) if typed.len() < 32 && !taken_out.contains(&key) => {
                        typed.push(format!("{key} (line {number}): {}", e.message()));
                        taken_out.push(key);
                        text.to_mut().insert(start, '#');
                    }
                    _ => {
                        typed.push(e.message().to_owned());
                        return Parsed::problems(typed);
                    }
                },
            }
        };
        let mut cx = Cx {
            base,
            problems: unknown
                .into_iter()
                .map(|key| format!("unknown key `{key}`"))
                .collect(),
            files: Files::default(),
        };
        let config = Config {
            server: raw.server.parse(&mut cx),
            upstream: raw.upstream.parse(&mut cx),
            auth: raw.auth.parse(&mut cx),
            rate_limit: raw.rate_limit.parse(&mut cx),
            inspect: raw.inspect.parse(&mut cx),
            scan: raw.scan.map(|scan| scan.parse(&mut cx)),
            credentials: raw.credentials.parse(&mut cx),
            store: raw.store.parse(&mut cx),
            idempotency: raw.idempotency.parse(&mut cx),
            tracing: raw.tracing.map(|t| t.parse(&mut cx)),
        };
        // A key taken out above reads as absent: not a problem of its own.
        cx.problems.retain(|p| {
            !taken_out.iter().any(|key| {
                p.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', ':', '.']))
            })
        });
        typed.append(&mut cx.problems);
        Parsed {
            config: if typed.is_empty() {
                Ok(config)
            } else {
                Err(ConfigErrors(typed))
            },
            files: cx.files,
        }
    }
}

/// The line holding byte `at` of a config's text: its number (from 1), the
/// offset where it starts, and the dotted path of the key it sets (its
/// `[section]` first).
fn line_of(text: &str, at: usize) -> Option<(usize, usize, String)> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let number = text[..start].matches('\n').count() + 1;
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        let name = l
            .strip_prefix("[[")
            .and_then(|l| l.split_once("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|l| l.split_once(']')))?;
        Some(name.0.trim())
    });
    let key = key.trim_matches('"');
    Some((
        number,
        start,
        section.map_or_else(|| key.to_owned(), |s| format!("{s}.{key}")),
    ))
}

impl Parsed {
    /// Text that is not a config at all (unreadable, not TOML): one problem,
    /// no files.
    fn unreadable(problem: String) -> Self {
        Self::problems(vec![problem])
    }

    /// Problems found before the config could be read whole: no files.
    fn problems(problems: Vec<String>) -> Self {
        Parsed {
            config: Err(ConfigErrors(problems)),
            files: Files::default(),
        }
    }
}

/// `PATH: why` for a file that cannot be read; a missing one is `no such
/// file`, as the config's own checks say it.
pub fn file_problem(path: &Path, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("{}: no such file", path.display())
    } else {
        format!("{}: {e}", path.display())
    }
}

/// What the section parsers share.
struct Cx<'a> {
    /// The folder relative paths are resolved against.
    base: &'a Path,
    /// Every problem found so far, one line each, starting with its key.
    problems: Vec<String>,
    /// The files named so far.
    files: Files,
}

impl Cx<'_> {
    fn resolve(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.base.join(path)
        }
    }

    /// A CA file (PEM) key: resolved, and it must exist.
    fn ca_file(&mut self, key: &str, path: Option<PathBuf>) -> Option<PathBuf> {
        let path = self.resolve(path?);
        if !path.is_file() {
            self.problems
                .push(format!("{key} {}: no such file", path.display()));
        }
        Some(path)
    }

    /// Seconds, greater than 0.
    fn duration(&mut self, key: &str, value: Option<f64>, default: Duration) -> Duration {
        self.secs(key, value, default, false)
    }

    /// Seconds, at least 1: a record's life or lease, which Redis keeps in
    /// whole milliseconds and a lease renews every third of (a lease of a
    /// few microseconds would be renewed without pause, and `PX 0` is an
    /// error).
    fn duration_from_a_second(
        &mut self,
        key: &str,
        value: Option<f64>,
        default: Duration,
    ) -> Duration {
        let d = self.secs(key, value, default, false);
        if d < Duration::from_secs(1) {
            self.problems.push(format!(
                "{key} = {}: expected seconds, at least 1 and at most a year (31536000)",
                d.as_secs_f64()
            ));
            return default;
        }
        d
    }

    /// Seconds, 0 allowed.
    fn duration_or_zero(&mut self, key: &str, value: Option<f64>, default: Duration) -> Duration {
        self.secs(key, value, default, true)
    }

    fn secs(
        &mut self,
        key: &str,
        value: Option<f64>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        let v = value.unwrap_or(default.as_secs_f64());
        if !v.is_finite() || v < 0.0 || (!zero_ok && v == 0.0) || v > 86_400.0 * 365.0 {
            let range = if zero_ok { "from 0" } else { "more than 0" };
            self.problems.push(format!(
                "{key} = {v}: expected seconds, {range} and at most a year (31536000)"
            ));
            return default;
        }
        Duration::from_secs_f64(v)
    }

    /// Requests per second.
    fn rate(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        let v = value.unwrap_or(default);
        if !v.is_finite() || v <= 0.0 || v > 1_000_000.0 {
            self.problems.push(format!(
                "{key} = {v}: expected a rate in requests per second, more than 0 and at most 1000000"
            ));
            return default;
        }
        v
    }

    fn burst(&mut self, key: &str, value: Option<u32>, default: u32) -> u32 {
        let v = value.unwrap_or(default);
        if v == 0 {
            self.problems.push(format!("{key} must be at least 1"));
            return default;
        }
        v
    }

    fn positive(&mut self, key: &str, value: Option<usize>, default: usize) -> usize {
        let v = value.unwrap_or(default);
        if v == 0 {
            self.problems.push(format!("{key} must be greater than 0"));
            return default;
        }
        v
    }

    fn addr(&mut self, key: &str, value: Option<String>, default: &str) -> SocketAddr {
        let text = value.unwrap_or_else(|| default.to_owned());
        text.parse().unwrap_or_else(|e| {
            self.problems
                .push(format!("{key} `{text}`: {e} (expected IP:PORT)"));
            default.parse().expect("default addresses parse")
        })
    }

    fn required(&mut self, key: &str, value: Option<String>) -> String {
        let value = value.unwrap_or_else(|| {
            self.problems.push(format!("{key} is required"));
            String::new()
        });
        self.not_blank(key, &value);
        value
    }

    /// A value that was given must hold more than white space (an empty
    /// issuer would accept only tokens with `"iss": ""`).
    fn not_blank(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() && !self.problems.iter().any(|p| p.starts_with(key)) {
            self.problems.push(format!("{key} must not be empty"));
        }
    }
}

// ---- [server] ----

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub drain_delay: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub spool_memory_bytes: usize,
    /// Total bytes of chunked bodies spooled at once (memory and disk); past
    /// it a new spooled upload is `503 overloaded`.
    pub spool_max_bytes: u64,
    pub min_body_rate: MinBodyRate,
    /// The whole body must have arrived within this (`408 body_timeout`).
    pub body_deadline: Duration,
    /// Streams one HTTP/2 connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub h2_max_concurrent_streams: u32,
    /// Connection workers: threads that each run their own connections from
    /// accept to close (`crate::workers`).
    pub workers: usize,
}

/// Over every 10 s window that ends after `grace`, a body must bring at least
/// `10 × bytes_per_s` bytes (0 disables the check); slower is `408 body_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinBodyRate {
    pub bytes_per_s: u64,
    pub grace: Duration,
}

/// A sidecar listens on loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 10 MiB, Concur's documented limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// 1 MiB.
pub const DEFAULT_SPOOL_MEMORY_BYTES: usize = 1024 * 1024;
/// 256 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_MIN_BODY_RATE_BYTES_PER_S: u64 = 1024;
pub const DEFAULT_MIN_BODY_RATE_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_DEADLINE: Duration = Duration::from_secs(300);
/// Streams per HTTP/2 connection; RFC 9113 §6.5.2 recommends no fewer than 100.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;

#[derive(Debug, Default, Deserialize)]
struct RawServer {
    /// Default [`DEFAULT_LISTEN`].
    listen: Option<String>,
    /// Default [`DEFAULT_ADMIN_LISTEN`].
    admin_listen: Option<String>,
    /// Default [`DEFAULT_MAX_BODY_BYTES`].
    max_body_bytes: Option<u64>,
    /// Default [`DEFAULT_HEADER_READ_TIMEOUT`].
    header_read_timeout_s: Option<f64>,
    /// Default [`DEFAULT_BODY_IDLE_TIMEOUT`].
    body_idle_timeout_s: Option<f64>,
    /// Default [`DEFAULT_DRAIN_DELAY`].
    drain_delay_s: Option<f64>,
    /// Default [`DEFAULT_SHUTDOWN_GRACE`].
    shutdown_grace_s: Option<f64>,
    /// Default [`DEFAULT_MAX_CONNECTIONS`] open client connections; past it new
    /// connections are closed at once.
    max_connections: Option<usize>,
    /// Default [`DEFAULT_SPOOL_MEMORY_BYTES`]: a chunked body is spooled in
    /// memory up to this, then to a temp file.
    spool_memory_bytes: Option<usize>,
    /// Default [`DEFAULT_MIN_BODY_RATE_BYTES_PER_S`] over every 10 s window once
    /// the grace has passed (0 disables): a trickling client cannot hold a
    /// Concur slot for hours. SPEC's name; `min_body_bytes_per_s` is the older
    /// spelling, still read.
    #[serde(alias = "min_body_bytes_per_s")]
    min_body_rate_bytes_per_s: Option<u64>,
    /// Default [`DEFAULT_BODY_DEADLINE`]: the whole body, however it arrives
    /// (spooled bodies included).
    body_deadline_s: Option<f64>,
    /// Default [`DEFAULT_SPOOL_MAX_BYTES`]: chunked bodies spooled at once,
    /// memory and temp files together (size the temp volume above it).
    spool_max_bytes: Option<u64>,
    /// Default [`DEFAULT_MIN_BODY_RATE_GRACE`].
    min_body_rate_grace_s: Option<f64>,
    /// Default [`DEFAULT_H2_MAX_CONCURRENT_STREAMS`]: requests one HTTP/2
    /// (h2c) connection may have open at once; each is a request like an
    /// HTTP/1.1 one, under every limit.
    h2_max_concurrent_streams: Option<u32>,
    /// Default: the CPUs this process may run on ([`default_workers`]).
    workers: Option<usize>,
}

impl RawServer {
    fn parse(self, cx: &mut Cx<'_>) -> ServerConfig {
        let listen = cx.addr("server.listen", self.listen, DEFAULT_LISTEN);
        let admin_listen = cx.addr(
            "server.admin_listen",
            self.admin_listen,
            DEFAULT_ADMIN_LISTEN,
        );
        if listen == admin_listen && listen.port() != 0 {
            cx.problems.push(format!(
                "server.admin_listen {admin_listen} is server.listen too: they need two addresses"
            ));
        }
        let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            cx.problems
                .push("server.max_body_bytes must be greater than 0".into());
        }
        if self.spool_max_bytes == Some(0) {
            cx.problems.push(
                "server.spool_max_bytes must be greater than 0 (0 would refuse every chunked upload)"
                    .into(),
            );
        }
        ServerConfig {
            listen,
            admin_listen,
            max_body_bytes,
            header_read_timeout: cx.duration(
                "server.header_read_timeout_s",
                self.header_read_timeout_s,
                DEFAULT_HEADER_READ_TIMEOUT,
            ),
            body_idle_timeout: cx.duration(
                "server.body_idle_timeout_s",
                self.body_idle_timeout_s,
                DEFAULT_BODY_IDLE_TIMEOUT,
            ),
            drain_delay: cx.duration_or_zero(
                "server.drain_delay_s",
                self.drain_delay_s,
                DEFAULT_DRAIN_DELAY,
            ),
            shutdown_grace: cx.duration_or_zero(
                "server.shutdown_grace_s",
                self.shutdown_grace_s,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            max_connections: cx.positive(
                "server.max_connections",
                self.max_connections,
                DEFAULT_MAX_CONNECTIONS,
            ),
            spool_memory_bytes: self
                .spool_memory_bytes
                .unwrap_or(DEFAULT_SPOOL_MEMORY_BYTES),
            spool_max_bytes: self.spool_max_bytes.unwrap_or(DEFAULT_SPOOL_MAX_BYTES),
            body_deadline: cx.duration(
                "server.body_deadline_s",
                self.body_deadline_s,
                DEFAULT_BODY_DEADLINE,
            ),
            min_body_rate: MinBodyRate {
                bytes_per_s: self
                    .min_body_rate_bytes_per_s
                    .unwrap_or(DEFAULT_MIN_BODY_RATE_BYTES_PER_S),
                grace: cx.duration_or_zero(
                    "server.min_body_rate_grace_s",
                    self.min_body_rate_grace_s,
                    DEFAULT_MIN_BODY_RATE_GRACE,
                ),
            },
            h2_max_concurrent_streams: cx.positive(
                "server.h2_max_concurrent_streams",
                self.h2_max_concurrent_streams.map(|n| n as usize),
                DEFAULT_H2_MAX_CONCURRENT_STREAMS as usize,
            ) as u32,
            workers: {
                let n = cx.positive("server.workers", self.workers, default_workers());
                if n > MAX_WORKERS {
                    cx.problems.push(format!(
                        "server.workers must be at most {MAX_WORKERS} (got {n})"
                    ));
                }
                n.min(MAX_WORKERS)
            },
        }
    }
}

/// The most connection workers a configuration may ask for.
pub const MAX_WORKERS: usize = 1024;

/// One connection worker per CPU this process may run on: the CPUs in its
/// affinity mask and within its cgroup's CPU quota (a Kubernetes limit of
/// `2` gives 2), as [`std::thread::available_parallelism`] reads them.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---- [upstream] ----

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub base_url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight: usize,
    pub queue_timeout: Duration,
}

pub const DEFAULT_BASE_URL: &str = "https://www.concursolutions.com";
/// For the whole exchange with Concur.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(90);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Exchanges with Concur at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
struct RawUpstream {
    /// Default [`DEFAULT_BASE_URL`].
    base_url: Option<String>,
    /// Extra trust anchors (PEM), besides the Mozilla roots.
    ca_file: Option<PathBuf>,
    /// Default [`DEFAULT_UPSTREAM_TIMEOUT`].
    timeout_s: Option<f64>,
    /// Default [`DEFAULT_CONNECT_TIMEOUT`].
    connect_timeout_s: Option<f64>,
    /// Default [`DEFAULT_MAX_IN_FLIGHT`].
    max_in_flight: Option<usize>,
    /// Default [`DEFAULT_QUEUE_TIMEOUT`]: how long a request waits for an
    /// upstream slot before `503 overloaded`.
    queue_timeout_s: Option<f64>,
}

impl RawUpstream {
    fn parse(self, cx: &mut Cx<'_>) -> UpstreamConfig {
        let base_url = parse_base_url(
            &mut cx.problems,
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
        );
        let ca_file = cx.ca_file("upstream.ca_file", self.ca_file);
        cx.files.upstream_ca_file = ca_file.clone().filter(|p| p.is_file());
        UpstreamConfig {
            base_url,
            ca_file,
            timeout: cx.duration(
                "upstream.timeout_s",
                self.timeout_s,
                DEFAULT_UPSTREAM_TIMEOUT,
            ),
            connect_timeout: cx.duration(
                "upstream.connect_timeout_s",
                self.connect_timeout_s,
                DEFAULT_CONNECT_TIMEOUT,
            ),
            max_in_flight: cx.positive(
                "upstream.max_in_flight",
                self.max_in_flight,
                DEFAULT_MAX_IN_FLIGHT,
            ),
            queue_timeout: cx.duration_or_zero(
                "upstream.queue_timeout_s",
                self.queue_timeout_s,
                DEFAULT_QUEUE_TIMEOUT,
            ),
        }
    }
}

/// `upstream.base_url`: https, a scheme and host only.
fn parse_base_url(problems: &mut Vec<String>, text: &str) -> http::Uri {
    let shown = shown_url(text);
    match text.trim_end_matches('/').parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
            if !port_ok(&uri) {
                problems.push(format!(
                    "upstream.base_url `{shown}`: the port is not a number from 1 to 65535"
                ));
            }
            if uri.path() != "/" && !uri.path().is_empty()
                || uri.query().is_some()
                || has_userinfo(&uri)
            {
                problems.push(format!(
                    "upstream.base_url `{shown}` must be a scheme and host only (no user info, path or query)"
                ));
            }
            uri
        }
        Ok(_) => {
            problems.push(format!(
                "upstream.base_url `{shown}` must be an https:// URL: Concur is only reached over TLS"
            ));
            http::Uri::from_static("https://invalid")
        }
        Err(e) => {
            problems.push(format!("upstream.base_url `{shown}`: {e}"));
            http::Uri::from_static("https://invalid")
        }
    }
}

// ---- [auth] ----

#[derive(Debug, Clone)]
pub enum KeySource {
    JwksFile(PathBuf),
    Hs256SecretFile(PathBuf),
    /// Fetched over HTTPS at start and refreshed in the background.
    JwksUrl(JwksUrl),
}

impl KeySource {
    /// The config key this source comes from.
    pub fn key(&self) -> &'static str {
        match self {
            KeySource::JwksFile(_) => "auth.jwks_file",
            KeySource::Hs256SecretFile(_) => "auth.hs256_secret_file",
            KeySource::JwksUrl(_) => "auth.jwks_url",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwksUrl {
    pub url: http::Uri,
    /// Extra trust anchors for the IdP (PEM), besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// How often the key set is refetched.
    pub refresh: Duration,
    /// At most one refetch this often when a token names an unknown `kid`.
    pub min_refetch: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub keys: KeySource,
    pub user_claim: String,
    pub company_claim: String,
    pub leeway: Duration,
}

pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(10);
pub const DEFAULT_USER_CLAIM: &str = "sub";
pub const DEFAULT_COMPANY_CLAIM: &str = "company";
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    /// Required.
    issuer: Option<String>,
    /// Required.
    audience: Option<String>,
    /// Exactly one of `jwks_file`, `jwks_url` and `hs256_secret_file`.
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    /// Extra CA (PEM) for `jwks_url`.
    jwks_ca_file: Option<PathBuf>,
    /// Default [`DEFAULT_JWKS_REFRESH`].
    jwks_refresh_s: Option<f64>,
    /// Default [`DEFAULT_JWKS_MIN_REFETCH`].
    jwks_min_refetch_s: Option<f64>,
    hs256_secret_file: Option<PathBuf>,
    /// Default [`DEFAULT_USER_CLAIM`].
    user_claim: Option<String>,
    /// Default [`DEFAULT_COMPANY_CLAIM`].
    company_claim: Option<String>,
    /// Default [`DEFAULT_LEEWAY`].
    leeway_s: Option<f64>,
}

impl RawAuth {
    fn parse(self, cx: &mut Cx<'_>) -> AuthConfig {
        let issuer = cx.required("auth.issuer", self.issuer);
        let audience = cx.required("auth.audience", self.audience);
        let jwks_url = self
            .jwks_url
            .as_deref()
            .map(|text| match text.parse::<http::Uri>() {
                Ok(uri)
                    if uri.scheme_str() == Some("https")
                        && uri.host().is_some()
                        && port_ok(&uri)
                        && !has_userinfo(&uri) =>
                {
                    uri
                }
                _ => {
                    cx.problems.push(format!(
                        "auth.jwks_url `{}` must be an https:// URL without user info (and a port, if any, from 1 to 65535)",
                        shown_url(text)
                    ));
                    http::Uri::from_static("https://invalid")
                }
            });
        let jwks_ca_file = cx.ca_file("auth.jwks_ca_file", self.jwks_ca_file);
        cx.files.jwks_ca_file = jwks_ca_file.clone().filter(|p| p.is_file());
        let refresh = cx.duration(
            "auth.jwks_refresh_s",
            self.jwks_refresh_s,
            DEFAULT_JWKS_REFRESH,
        );
        let min_refetch = cx.duration_or_zero(
            "auth.jwks_min_refetch_s",
            self.jwks_min_refetch_s,
            DEFAULT_JWKS_MIN_REFETCH,
        );
        let jwks_file = self.jwks_file.map(|f| cx.resolve(f));
        let hs256_secret_file = self.hs256_secret_file.map(|f| cx.resolve(f));
        cx.files.jwks_file = jwks_file.clone();
        cx.files.hs256_secret_file = hs256_secret_file.clone();
        let keys = match (jwks_file, hs256_secret_file, jwks_url) {
            (Some(f), None, None) => KeySource::JwksFile(f),
            (None, Some(f), None) => KeySource::Hs256SecretFile(f),
            (None, None, Some(url)) => KeySource::JwksUrl(JwksUrl {
                url,
                ca_file: jwks_ca_file,
                refresh,
                min_refetch,
            }),
            (None, None, None) => {
                cx.problems.push(
                    "auth: one of jwks_file, jwks_url or hs256_secret_file is required".into(),
                );
                KeySource::JwksFile(PathBuf::new())
            }
            _ => {
                cx.problems
                    .push("auth: set only one of jwks_file, jwks_url and hs256_secret_file".into());
                KeySource::JwksFile(PathBuf::new())
            }
        };
        let user_claim = self.user_claim.unwrap_or_else(|| DEFAULT_USER_CLAIM.into());
        cx.not_blank("auth.user_claim", &user_claim);
        let company_claim = self
            .company_claim
            .unwrap_or_else(|| DEFAULT_COMPANY_CLAIM.into());
        cx.not_blank("auth.company_claim", &company_claim);
        AuthConfig {
            issuer,
            audience,
            keys,
            user_claim,
            company_claim,
            leeway: cx.duration_or_zero("auth.leeway_s", self.leeway_s, DEFAULT_LEEWAY),
        }
    }
}

// ---- [rate_limit] ----

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub user_per_second: f64,
    pub user_burst: u32,
    pub company_per_second: f64,
    pub company_burst: u32,
    /// Uploads in flight at once per (company, user); past it `429 rate_limited`.
    pub user_concurrent: usize,
    /// Uploads in flight at once per company.
    pub company_concurrent: usize,
}

/// Requests per second per (company, user).
pub const DEFAULT_USER_PER_SECOND: f64 = 5.0;
pub const DEFAULT_USER_BURST: u32 = 10;
/// Requests per second per company.
pub const DEFAULT_COMPANY_PER_SECOND: f64 = 50.0;
pub const DEFAULT_COMPANY_BURST: u32 = 100;
/// Uploads in flight at once per (company, user).
pub const DEFAULT_USER_CONCURRENT: usize = 8;
/// Uploads in flight at once per company.
pub const DEFAULT_COMPANY_CONCURRENT: usize = 32;

#[derive(Debug, Default, Deserialize)]
struct RawRateLimit {
    /// Default [`DEFAULT_USER_PER_SECOND`].
    user_per_second: Option<f64>,
    /// Default [`DEFAULT_USER_BURST`].
    user_burst: Option<u32>,
    /// Default [`DEFAULT_COMPANY_PER_SECOND`].
    company_per_second: Option<f64>,
    /// Default [`DEFAULT_COMPANY_BURST`].
    company_burst: Option<u32>,
    /// Default [`DEFAULT_USER_CONCURRENT`].
    user_concurrent: Option<usize>,
    /// Default [`DEFAULT_COMPANY_CONCURRENT`].
    company_concurrent: Option<usize>,
}

impl RawRateLimit {
    fn parse(self, cx: &mut Cx<'_>) -> RateLimitConfig {
        RateLimitConfig {
            user_per_second: cx.rate(
                "rate_limit.user_per_second",
                self.user_per_second,
                DEFAULT_USER_PER_SECOND,
            ),
            user_burst: cx.burst("rate_limit.user_burst", self.user_burst, DEFAULT_USER_BURST),
            company_per_second: cx.rate(
                "rate_limit.company_per_second",
                self.company_per_second,
                DEFAULT_COMPANY_PER_SECOND,
            ),
            company_burst: cx.burst(
                "rate_limit.company_burst",
                self.company_burst,
                DEFAULT_COMPANY_BURST,
            ),
            user_concurrent: cx.positive(
                "rate_limit.user_concurrent",
                self.user_concurrent,
                DEFAULT_USER_CONCURRENT,
            ),
            company_concurrent: cx.positive(
                "rate_limit.company_concurrent",
                self.company_concurrent,
                DEFAULT_COMPANY_CONCURRENT,
            ),
        }
    }
}

// ---- [inspect] ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
    None,
}

#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub limits: Limits,
    pub digest: DigestAlgorithm,
}

// Defined beside the scanners (the lower module), named here with the keys.
pub use crate::inspect::{DEFAULT_MAX_PIXELS, DEFAULT_PDF_ACTIVE_CONTENT};
pub const DEFAULT_DIGEST: DigestAlgorithm = DigestAlgorithm::Sha256;

#[derive(Debug, Default, Deserialize)]
struct RawInspect {
    /// Default [`DEFAULT_MAX_PIXELS`].
    max_pixels: Option<u64>,
    /// `reject` or `allow`; default [`DEFAULT_PDF_ACTIVE_CONTENT`].
    pdf_active_content: Option<String>,
    /// `sha-256`, `sha-512` or `none`; default [`DEFAULT_DIGEST`].
    digest: Option<String>,
}

impl RawInspect {
    fn parse(self, cx: &mut Cx<'_>) -> InspectConfig {
        let max_pixels = self.max_pixels.unwrap_or(DEFAULT_MAX_PIXELS);
        if max_pixels == 0 {
            cx.problems
                .push("inspect.max_pixels must be greater than 0".into());
        }
        let pdf_active_content = match self.pdf_active_content.as_deref() {
            None => DEFAULT_PDF_ACTIVE_CONTENT,
            Some("reject") => ActiveContentPolicy::Reject,
            Some("allow") => ActiveContentPolicy::Allow,
            Some(other) => {
                cx.problems.push(format!(
                    "inspect.pdf_active_content `{other}`: expected \"reject\" or \"allow\""
                ));
                DEFAULT_PDF_ACTIVE_CONTENT
            }
        };
        let digest = match self.digest.as_deref() {
            None => DEFAULT_DIGEST,
            Some("sha-256") => DigestAlgorithm::Sha256,
            Some("sha-512") => DigestAlgorithm::Sha512,
            Some("none") => DigestAlgorithm::None,
            Some(other) => {
                cx.problems.push(format!(
                    "inspect.digest `{other}`: expected \"sha-256\", \"sha-512\" or \"none\""
                ));
                DEFAULT_DIGEST
            }
        };
        InspectConfig {
            limits: Limits {
                max_pixels,
                pdf_active_content,
                ..Limits::default()
            },
            digest,
        }
    }
}

// ---- [scan]: absent, no malware scanning ----

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// `tcp://host:port`; the host is resolved at each connection.
    Tcp(String),
    /// `unix:/path/to/clamd.sock`.
    Unix(PathBuf),
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ClamdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What to do when clamd cannot give a verdict (down, erroring, too slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnScanError {
    /// `503 scan_unavailable`: fail closed (the default).
    Reject,
    /// Let the upload through unscanned, with a warning and a metric.
    Allow,
}

/// How spans reach the collector (`tracing.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (tonic), e.g. `http://127.0.0.1:4317`.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, to an `http(s)://…/v1/traces` URL.
    HttpProtobuf,
}

/// `[tracing]`: OpenTelemetry spans exported by OTLP (`telemetry.rs`).
#[derive(Debug, Clone)]
pub struct TracingConfig {
    pub otlp_endpoint: String,
    pub protocol: OtlpProtocol,
    /// Of the traces the gateway starts; a caller's sampling decision is kept.
    pub sample_ratio: f64,
}

/// The collector's usual OTLP/gRPC port on the node.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4317";
pub const DEFAULT_OTLP_PROTOCOL: OtlpProtocol = OtlpProtocol::Grpc;
/// Every trace the gateway starts is sampled.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;

#[derive(Debug, Default, Deserialize)]
struct RawTracing {
    /// Default [`DEFAULT_OTLP_ENDPOINT`].
    otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; default [`DEFAULT_OTLP_PROTOCOL`].
    protocol: Option<String>,
    /// 0.0 to 1.0; default [`DEFAULT_SAMPLE_RATIO`].
    sample_ratio: Option<f64>,
}

impl RawTracing {
    fn parse(self, cx: &mut Cx<'_>) -> TracingConfig {
        let protocol = match self.protocol.as_deref() {
            None => DEFAULT_OTLP_PROTOCOL,
            Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                cx.problems.push(format!(
                    "tracing.protocol `{other}`: expected \"grpc\" or \"http/protobuf\""
                ));
                DEFAULT_OTLP_PROTOCOL
            }
        };
        let otlp_endpoint = self
            .otlp_endpoint
            .unwrap_or_else(|| DEFAULT_OTLP_ENDPOINT.to_owned());
        match otlp_endpoint.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty()) =>
            {
                let otlp_endpoint = shown_url(&otlp_endpoint);
                if has_userinfo(&uri) {
                    cx.problems.push(format!(
                        "tracing.otlp_endpoint `{otlp_endpoint}`: no user info (the exporter would send it in clear to the collector)"
                    ));
                }
                if !port_ok(&uri) {
                    cx.problems.push(format!(
                        "tracing.otlp_endpoint `{otlp_endpoint}`: the port is not a number from 1 to 65535"
                    ));
                }
                if protocol == OtlpProtocol::HttpProtobuf && !uri.path().ends_with("/v1/traces") {
                    cx.problems.push(format!(
                        "tracing.otlp_endpoint `{otlp_endpoint}`: with protocol = \"http/protobuf\" the URL ends with /v1/traces"
                    ));
                }
                if protocol == OtlpProtocol::Grpc && uri.scheme_str() == Some("https") {
                    cx.problems.push(format!(
                        "tracing.otlp_endpoint `{otlp_endpoint}`: gRPC is plaintext only (a node-local collector); use protocol = \"http/protobuf\" for https"
                    ));
                }
                if uri.query().is_some() {
                    cx.problems.push(format!(
                        "tracing.otlp_endpoint `{otlp_endpoint}`: no query string"
                    ));
                }
            }
            _ => cx.problems.push(format!(
                "tracing.otlp_endpoint `{}`: expected an http:// or https:// URL",
                shown_url(&otlp_endpoint)
            )),
        }
        let sample_ratio = self.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
        let sample_ratio = if (0.0..=1.0).contains(&sample_ratio) {
            sample_ratio
        } else {
            cx.problems.push(format!(
                "tracing.sample_ratio = {sample_ratio}: expected 0.0 to 1.0"
            ));
            DEFAULT_SAMPLE_RATIO
        };
        TracingConfig {
            otlp_endpoint,
            protocol,
            sample_ratio,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub clamd: ClamdAddr,
    pub timeout: Duration,
    pub on_error: OnScanError,
    pub max_concurrent: usize,
    pub ping_interval: Duration,
}

/// Bounds each step with clamd (a permit, the connection, each write, the
/// verdict after the last byte).
pub const DEFAULT_SCAN_TIMEOUT: Duration = Duration::from_secs(30);
/// Fail closed.
pub const DEFAULT_ON_SCAN_ERROR: OnScanError = OnScanError::Reject;
/// Scans at once (clamd has a fixed pool of threads, 10 by default).
pub const DEFAULT_SCAN_MAX_CONCURRENT: usize = 8;
/// Between health pings (`/readyz`).
pub const DEFAULT_SCAN_PING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize)]
struct RawScan {
    /// Required in the section: `tcp://host:port` or `unix:/path`.
    clamd: Option<String>,
    /// Default [`DEFAULT_SCAN_TIMEOUT`].
    timeout_s: Option<f64>,
    /// `reject` or `allow`; default [`DEFAULT_ON_SCAN_ERROR`].
    on_error: Option<String>,
    /// Default [`DEFAULT_SCAN_MAX_CONCURRENT`].
    max_concurrent: Option<usize>,
    /// Default [`DEFAULT_SCAN_PING_INTERVAL`].
    ping_interval_s: Option<f64>,
}

impl RawScan {
    fn parse(self, cx: &mut Cx<'_>) -> ScanConfig {
        let clamd = match self.clamd.as_deref() {
            None => {
                cx.problems.push(
                    "scan.clamd is required in [scan] (\"tcp://host:port\" or \"unix:/path\")"
                        .into(),
                );
                ClamdAddr::Tcp(String::new())
            }
            Some(text) => parse_clamd(text, cx.base).unwrap_or_else(|why| {
                cx.problems.push(format!("scan.clamd `{text}`: {why}"));
                ClamdAddr::Tcp(String::new())
            }),
        };
        let on_error = match self.on_error.as_deref() {
            None => DEFAULT_ON_SCAN_ERROR,
            Some("reject") => OnScanError::Reject,
            Some("allow") => OnScanError::Allow,
            Some(other) => {
                cx.problems.push(format!(
                    "scan.on_error `{other}`: expected \"reject\" or \"allow\""
                ));
                DEFAULT_ON_SCAN_ERROR
            }
        };
        ScanConfig {
            clamd,
            timeout: cx.duration("scan.timeout_s", self.timeout_s, DEFAULT_SCAN_TIMEOUT),
            on_error,
            max_concurrent: cx.positive(
                "scan.max_concurrent",
                self.max_concurrent,
                DEFAULT_SCAN_MAX_CONCURRENT,
            ),
            ping_interval: cx.duration(
                "scan.ping_interval_s",
                self.ping_interval_s,
                DEFAULT_SCAN_PING_INTERVAL,
            ),
        }
    }
}

/// `tcp://host:port` or `unix:/path` (relative paths against the config folder).
fn parse_clamd(text: &str, base: &Path) -> Result<ClamdAddr, String> {
    if let Some(hostport) = text.strip_prefix("tcp://") {
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or("expected tcp://host:port (the port is required; clamd's usual is 3310)")?;
        let host_ok = !host.is_empty()
            && (host.parse::<std::net::IpAddr>().is_ok()
                || host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return Err(format!("`{host}` is not a host name or IP address"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(ClamdAddr::Tcp(hostport.to_owned())),
            _ => Err(format!("`{port}` is not a port (1-65535)")),
        }
    } else if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("expected unix:/path/to/clamd.sock".into());
        }
        let path = PathBuf::from(path);
        Ok(ClamdAddr::Unix(if path.is_absolute() {
            path
        } else {
            base.join(path)
        }))
    } else {
        Err("expected \"tcp://host:port\" or \"unix:/path/to/clamd.sock\"".into())
    }
}

// ---- [credentials] ----

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub file: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub reload_interval: Duration,
}

/// How often the credential file is checked for changes.
pub const DEFAULT_CREDENTIALS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Deserialize)]
struct RawCredentials {
    /// Required.
    file: Option<PathBuf>,
    /// Where rotated refresh tokens are kept; without it, in memory only.
    state_dir: Option<PathBuf>,
    /// Default [`DEFAULT_CREDENTIALS_RELOAD_INTERVAL`].
    reload_interval_s: Option<f64>,
}

impl RawCredentials {
    fn parse(self, cx: &mut Cx<'_>) -> CredentialsConfig {
        let file = self.file.map(|f| cx.resolve(f));
        let state_dir = self.state_dir.map(|d| cx.resolve(d));
        cx.files.credentials_file = file.clone();
        cx.files.state_dir = state_dir.clone();
        CredentialsConfig {
            file: file.unwrap_or_else(|| {
                cx.problems.push("credentials.file is required".into());
                PathBuf::new()
            }),
            state_dir,
            reload_interval: cx.duration(
                "credentials.reload_interval_s",
                self.reload_interval_s,
                DEFAULT_CREDENTIALS_RELOAD_INTERVAL,
            ),
        }
    }
}

// ---- [idempotency] ----

/// `Idempotency-Key` records (`idempotency.rs`).
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a final answer is kept for replays.
    pub ttl: Duration,
    /// Memory backend: most records kept (oldest dropped first).
    pub max_records: usize,
    /// A request without a key is `400 invalid_idempotency_key`.
    pub required: bool,
    /// Life of an in-flight record, renewed while the upload runs: a gateway
    /// that dies mid-request frees the key after this.
    pub lease: Duration,
}

/// How long a final answer is kept.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);
/// Memory backend: most records kept.
pub const DEFAULT_IDEMPOTENCY_MAX_RECORDS: usize = 100_000;
/// Life of an in-flight record (renewed every third of it).
pub const DEFAULT_IDEMPOTENCY_LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
struct RawIdempotency {
    /// Default [`DEFAULT_IDEMPOTENCY_TTL`] (one day).
    ttl_s: Option<f64>,
    /// Default [`DEFAULT_IDEMPOTENCY_MAX_RECORDS`].
    max_records: Option<usize>,
    /// Default `false`.
    required: Option<bool>,
    /// Default [`DEFAULT_IDEMPOTENCY_LEASE`].
    lease_s: Option<f64>,
}

impl RawIdempotency {
    fn parse(self, cx: &mut Cx<'_>) -> IdempotencyConfig {
        IdempotencyConfig {
            ttl: cx.duration_from_a_second(
                "idempotency.ttl_s",
                self.ttl_s,
                DEFAULT_IDEMPOTENCY_TTL,
            ),
            max_records: cx.positive(
                "idempotency.max_records",
                self.max_records,
                DEFAULT_IDEMPOTENCY_MAX_RECORDS,
            ),
            required: self.required.unwrap_or(false),
            lease: cx.duration_from_a_second(
                "idempotency.lease_s",
                self.lease_s,
                DEFAULT_IDEMPOTENCY_LEASE,
            ),
        }
    }
}

// ---- [store] ----

/// Where state that must hold across replicas lives.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `None`: `backend = "memory"`, the state of this process only.
    pub redis: Option<RedisConfig>,
}

/// `backend = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One URL (`redis://` or `rediss://`), or several: the seeds of a Redis
    /// Cluster.
    pub urls: Vec<String>,
    /// Extra trust anchors (PEM) for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    /// 32 random bytes, base64: the AES-256-GCM key of stored secrets.
    pub encryption_key_file: PathBuf,
    /// A store call slower than this counts as the store being unavailable.
    pub timeout: Duration,
    /// Life of the refresh lock; renewed every third of it while a refresh
    /// runs, so it only matters when its holder dies.
    pub refresh_lock_ttl: Duration,
}

/// Prefix of every Redis key the gateway writes.
pub const DEFAULT_STORE_KEY_PREFIX: &str = "concur-gateway:";
/// A store call slower than this counts as unavailable.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
/// Life of the refresh lock (renewed while held): how long the other replicas
/// wait before taking over from a replica that died mid-refresh.
pub const DEFAULT_REFRESH_LOCK_TTL: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize)]
struct RawStore {
    /// `"memory"` (default) or `"redis"`.
    backend: Option<String>,
    /// Required with redis: `redis://host:port/db`, `rediss://…` for TLS, or
    /// several comma-separated seed URLs for a Redis Cluster.
    url: Option<String>,
    /// Extra CA (PEM) for `rediss://`, besides the Mozilla roots.
    ca_file: Option<PathBuf>,
    /// Default [`DEFAULT_STORE_KEY_PREFIX`].
    key_prefix: Option<String>,
    /// Required with redis.
    encryption_key_file: Option<PathBuf>,
    /// Default [`DEFAULT_STORE_TIMEOUT`] (50 ms).
    timeout_ms: Option<u64>,
    /// Default [`DEFAULT_REFRESH_LOCK_TTL`] (15 s).
    refresh_lock_ttl_ms: Option<u64>,
}

impl RawStore {
    fn parse(self, cx: &mut Cx<'_>) -> StoreConfig {
        match self.backend.as_deref() {
            None | Some("memory") => {
                for (key, set) in [
                    ("url", self.url.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                    ("encryption_key_file", self.encryption_key_file.is_some()),
                ] {
                    if set {
                        cx.problems.push(format!(
                            "store.{key} is only used with store.backend = \"redis\""
                        ));
                    }
                }
                return StoreConfig { redis: None };
            }
            Some("redis") => {}
            Some(other) => {
                cx.problems.push(format!(
                    "store.backend `{other}`: expected \"memory\" or \"redis\""
                ));
                return StoreConfig { redis: None };
            }
        }
        let urls: Vec<String> = match &self.url {
            None => {
                cx.problems
                    .push("store.url is required with store.backend = \"redis\"".into());
                Vec::new()
            }
            Some(text) => text
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        for url in &urls {
            if let Err(why) = check_redis_url(url, urls.len() > 1) {
                cx.problems
                    .push(format!("store.url `{}`: {why}", shown_url(url)));
            }
        }
        if urls.len() > 1
            && urls.iter().any(|u| u.starts_with("rediss://"))
                != urls.iter().all(|u| u.starts_with("rediss://"))
        {
            cx.problems.push(
                "store.url: the seed URLs of a cluster must all be redis:// or all rediss://"
                    .into(),
            );
        }
        let ca_file = self.ca_file.map(|p| cx.resolve(p));
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            cx.problems
                .push(format!("store.ca_file {}: no such file", ca.display()));
        }
        cx.files.store_ca_file = ca_file.clone().filter(|p| p.is_file());
        let encryption_key_file = match self.encryption_key_file.map(|p| cx.resolve(p)) {
            None => {
                cx.problems.push(
                    "store.encryption_key_file is required with store.backend = \"redis\" (32 random bytes, base64: `openssl rand -base64 32`)".into(),
                );
                PathBuf::new()
            }
            Some(path) => {
                if let Err(why) = crate::sealing::load_key(&path) {
                    cx.problems.push(format!(
                        "store.encryption_key_file {}: {why}",
                        path.display()
                    ));
                }
                path
            }
        };
        let timeout = match self.timeout_ms {
            None => DEFAULT_STORE_TIMEOUT,
            Some(0) => {
                cx.problems
                    .push("store.timeout_ms must be greater than 0".into());
                DEFAULT_STORE_TIMEOUT
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let refresh_lock_ttl = match self.refresh_lock_ttl_ms {
            None => DEFAULT_REFRESH_LOCK_TTL,
            Some(ms) if ms < 300 => {
                cx.problems
                    .push("store.refresh_lock_ttl_ms must be at least 300".into());
                DEFAULT_REFRESH_LOCK_TTL
            }
            Some(ms) => Duration::from_millis(ms),
        };
        StoreConfig {
            redis: Some(RedisConfig {
                refresh_lock_ttl,
                urls,
                ca_file,
                key_prefix: self
                    .key_prefix
                    .unwrap_or_else(|| DEFAULT_STORE_KEY_PREFIX.to_owned()),
                encryption_key_file,
                timeout,
            }),
        }
    }
}

/// `url` as a message may show it: the password of its user info
/// (`redis://user:PASSWORD@host`) and its query (`?client_secret=…`)
/// replaced, as either may hold a secret. Conservative: everything before
/// the last `@` after the scheme is taken for user info.
pub(crate) fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') || url.contains('?') {
            "[redacted]".to_owned()
        } else {
            url.to_owned()
        };
    };
    let (user, rest) = match rest.rsplit_once('@') {
        Some((userinfo, after)) => {
            let user = userinfo.split([':', '/', '?']).next().unwrap_or("");
            (format!("{user}:[redacted]@"), after)
        }
        None => (String::new(), rest),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((before, _)) => (before, "?[redacted]"),
        None => (rest, ""),
    };
    format!("{scheme}://{user}{rest}{query}")
}

/// Whether a URL's port, if it names one, is a number from 1 to 65535.
/// (`http::Uri` takes `host:99999` or `host:abc` and then has no port: the
/// client would quietly use 443.)
pub(crate) fn port_ok(uri: &http::Uri) -> bool {
    let Some(authority) = uri.authority() else {
        return true;
    };
    let hostport = authority.as_str().rsplit('@').next().unwrap_or("");
    let after_host = match hostport.rfind(']') {
        Some(i) => &hostport[i + 1..],
        None => hostport,
    };
    match after_host.split_once(':') {
        None => true,
        Some((_, port)) => port.parse::<u16>().is_ok_and(|p| p > 0),
    }
}

/// Whether a URL carries user info (`https://user:password@host`): refused
/// where the gateway calls the URL, as it would send it on.
pub(crate) fn has_userinfo(uri: &http::Uri) -> bool {
    uri.authority().is_some_and(|a| a.as_str().contains('@'))
}

/// `redis://[user:pass@]host[:port][/db][?…]` or `rediss://…`, one of the
/// seeds of a cluster when `cluster`; checked without connecting. What it
/// quotes comes from before the query (which may hold a password).
fn check_redis_url(url: &str, cluster: bool) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or("expected redis://host:port or rediss://host:port")?;
    let rest = rest.split('?').next().unwrap_or("");
    let authority = rest.split('/').next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or("");
    if hostport.is_empty() {
        return Err("no host".into());
    }
    if let Some((host, port)) = hostport.rsplit_once(':')
        && !hostport.ends_with(']')
    {
        if host.is_empty() {
            return Err("no host".into());
        }
        port.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("`{port}` is not a port"))?;
    }
    if let Some(db) = rest.split('/').nth(1)
        && !db.is_empty()
        && db.parse::<u32>().is_err()
    {
        return Err(format!("`{db}` is not a database number"));
    }
    if cluster
        && rest
            .split('/')
            .nth(1)
            .is_some_and(|db| !db.is_empty() && db != "0")
    {
        return Err("a Redis Cluster has database 0 only (no /db in its seed URLs)".into());
    }
    // What the client will make of it (no connection): a host with a space,
    // an unclosed `[`… The client's error is not quoted: it says nothing more.
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|_| "not a URL the Redis client can read (check the host name)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// Every problem `Config::parse` finds in `text`, one per line (empty
    /// when it finds none).
    fn problems_in(text: &str, dir: &Path) -> String {
        Config::parse(text, dir)
            .config
            .err()
            .map(|e| e.0.join("\n"))
            .unwrap_or_default()
    }

    #[test]
    fn blank_identity_keys_the_same_address_twice_and_a_zero_spool_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |extra: &str, auth: &str| {
            let text = format!(
                "[server]\n{extra}\n[auth]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_file = \"s\"\n{auth}\n[credentials]\nfile = \"c.toml\"\n"
            );
            problems_in(&text, dir.path())
        };
        for (issuer, audience, claims, problem) in [
            ("", "a", "", "auth.issuer must not be empty"),
            ("i", " ", "", "auth.audience must not be empty"),
            (
                "i",
                "a",
                "user_claim = \"\"",
                "auth.user_claim must not be empty",
            ),
            (
                "i",
                "a",
                "company_claim = \"\"",
                "auth.company_claim must not be empty",
            ),
        ] {
            let text = format!(
                "[auth]\nissuer = \"{issuer}\"\naudience = \"{audience}\"\n{claims}\nhs256_secret_file = \"s\"\n[credentials]\nfile = \"c.toml\"\n"
            );
            let all = problems_in(&text, dir.path());
            assert!(all.contains(problem), "{problem}: {all}");
        }
        let all = with(
            "listen = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"",
            "",
        );
        assert!(
            all.contains("server.admin_listen 127.0.0.1:8080 is server.listen too"),
            "{all}"
        );
        assert!(
            !with(
                "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
                ""
            )
            .contains("admin_listen")
        );
        let all = with("spool_max_bytes = 0", "");
        assert!(
            all.contains("server.spool_max_bytes must be greater than 0"),
            "{all}"
        );
    }

    #[test]
    fn idempotency_lives_and_leases_under_a_second_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let problems = |idem: &str| {
            let text = format!(
                "[auth]\nissuer = \"i\"\naudience = \"a\"\nhs256_secret_file = \"s\"\n[credentials]\nfile = \"c.toml\"\n[idempotency]\n{idem}\n"
            );
            problems_in(&text, dir.path())
        };
        for (idem, problem) in [
            (
                "ttl_s = 0.0001",
                "idempotency.ttl_s = 0.0001: expected seconds, at least 1",
            ),
            (
                "lease_s = 0.5",
                "idempotency.lease_s = 0.5: expected seconds, at least 1",
            ),
            (
                "lease_s = 0",
                "idempotency.lease_s = 0: expected seconds, more than 0",
            ),
        ] {
            assert!(
                problems(idem).contains(problem),
                "{idem}: {}",
                problems(idem)
            );
        }
        for fine in ["ttl_s = 1", "lease_s = 1.5", "ttl_s = 86400\nlease_s = 30"] {
            assert!(
                !problems(fine).contains("idempotency"),
                "{fine}: {}",
                problems(fine)
            );
        }
    }

    /// A port that is no number from 1 to 65535 is refused: `http::Uri`
    /// takes it and then has none, and the client would use 443 (the
    /// black-box round of 2026-11-30: `check-config` said OK, `serve` logged
    /// `:99999` and connected to 443).
    #[test]
    fn a_url_port_out_of_range_is_refused() {
        for (url, ok) in [
            ("https://x.example", true),
            ("https://x.example:8443", true),
            ("https://[::1]:8443", true),
            ("https://[::1]", true),
            ("https://x.example:99999", false),
            ("https://x.example:65536", false),
            ("https://x.example:abc", false),
            ("https://x.example:0", false),
            ("https://x.example:", false),
            ("https://[::1]:x", false),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(port_ok(&uri), ok, "{url}");
        }
        let problems = |text: &str| match Config::from_toml(text, Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let p = problems("[upstream]\nbase_url = \"https://localhost:99999\"\n");
        assert!(
            p.iter()
                .any(|l| l.contains("upstream.base_url `https://localhost:99999`: the port")),
            "{p:?}"
        );
        let p = problems("[auth]\njwks_url = \"https://idp.example:abc/jwks\"\n");
        assert!(p.iter().any(|l| l.starts_with("auth.jwks_url")), "{p:?}");
        let p = problems("[tracing]\notlp_endpoint = \"http://u:OTLPPW@127.0.0.1:99999\"\n");
        assert!(
            p.iter().any(|l| l.contains("no user info"))
                && p.iter().any(|l| l.contains("the port is not a number"))
                && !p.iter().any(|l| l.contains("OTLPPW")),
            "{p:?}"
        );
    }

    #[test]
    fn urls_in_messages_never_show_a_password_or_a_query() {
        for (url, shown) in [
            ("https://www.example.com", "https://www.example.com"),
            (
                "redis://app:hunter2@h:6379/0",
                "redis://app:[redacted]@h:6379/0",
            ),
            ("redis://:hunter2@h", "redis://:[redacted]@h"),
            (
                "http://u:pw@plain.example/oauth2/v0/token?client_secret=s3cret",
                "http://u:[redacted]@plain.example/oauth2/v0/token?[redacted]",
            ),
            ("https://a:p@ss@host/x", "https://a:[redacted]@host/x"),
            ("u:pw@host", "[redacted]"),
            ("host", "host"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
        let problems = |text: &str| match Config::from_toml(text, Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let p = problems("[upstream]\nbase_url = \"https://u:BASEPW@www.example.com/path?x=1\"\n");
        assert!(
            p.iter().any(|l| l.starts_with("upstream.base_url `https://u:[redacted]@www.example.com/path?[redacted]` must be a scheme and host only")),
            "{p:?}"
        );
        let p = problems("[upstream]\nbase_url = \"https://u:BASEPW@www.example.com\"\n");
        assert!(
            p.iter().any(|l| l.contains("no user info")) && !p.iter().any(|l| l.contains("BASEPW")),
            "{p:?}"
        );
        let p = problems("[auth]\njwks_url = \"https://u:JWKSPW@idp.example/jwks\"\n");
        assert!(
            p.iter()
                .any(|l| l.contains("auth.jwks_url `https://u:[redacted]@idp.example/jwks`")),
            "{p:?}"
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_all_named_with_their_line() {
        let problems = |text: &str| match Config::from_toml(text, Path::new(".")) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0,
        };
        let p = problems("[server]\nmax_body_bytes = true\nlisten = 5\n");
        assert_eq!(p.len(), 2 + problems("").len(), "{p:?}");
        for want in [
            "server.max_body_bytes (line 2): invalid type: boolean",
            "server.listen (line 3): invalid type: integer",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want}: {p:?}");
        }
        // A value over several lines cannot be taken out line by line: the
        // problems found so far, no panic.
        let p = problems("[server]\nmax_body_bytes = [\n 1,\n 2]\nlisten = 5\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter()
                .any(|l| l.starts_with("server.max_body_bytes (line 2): invalid type: sequence")),
            "{p:?}"
        );
        assert_eq!(
            line_of("a = 1\n[x]\n\"b\" = 2\n", 13),
            Some((3, 10, "x.b".to_owned()))
        );
        assert_eq!(line_of("[x]\n", 1), None);
    }

    const MINIMAL: &str = r#"
[auth]
issuer = "https://idp.example.com"
audience = "concur-gateway"
jwks_file = "jwks.json"
[credentials]
file = "credentials.toml"
"#;

    #[test]
    fn tracing_section_defaults_and_checks() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/gw")).unwrap();
        assert!(c.tracing.is_none(), "absent: no spans exported");
        let c = Config::from_toml(&format!("{MINIMAL}[tracing]\n"), Path::new("/etc/gw")).unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.otlp_endpoint, DEFAULT_OTLP_ENDPOINT);
        assert_eq!(t.protocol, OtlpProtocol::Grpc);
        assert_eq!(t.sample_ratio, 1.0);
        let c = Config::from_toml(
            &format!(
                "{MINIMAL}[tracing]\notlp_endpoint = \"https://otel.example:4318/v1/traces\"\nprotocol = \"http/protobuf\"\nsample_ratio = 0.25\n"
            ),
            Path::new("/etc/gw"),
        )
        .unwrap();
        let t = c.tracing.unwrap();
        assert_eq!(t.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(t.sample_ratio, 0.25);
        for (snippet, problem) in [
            ("protocol = \"http/json\"", "tracing.protocol `http/json`"),
            (
                "otlp_endpoint = \"collector:4317\"",
                "tracing.otlp_endpoint `collector:4317`",
            ),
            (
                "otlp_endpoint = \"ftp://c/v1/traces\"",
                "expected an http:// or https:// URL",
            ),
            (
                "otlp_endpoint = \"http://c:4318/\"\nprotocol = \"http/protobuf\"",
                "ends with /v1/traces",
            ),
            (
                "otlp_endpoint = \"https://c:4317\"",
                "gRPC is plaintext only",
            ),
            ("sample_ratio = 1.5", "tracing.sample_ratio = 1.5"),
            ("sample_ratio = -0.1", "tracing.sample_ratio = -0.1"),
            ("sample_ratio = nan", "tracing.sample_ratio = NaN"),
            ("endpoint = \"x\"", "unknown key `tracing.endpoint`"),
        ] {
            let e = Config::from_toml(
                &format!("{MINIMAL}[tracing]\n{snippet}\n"),
                Path::new("/etc/gw"),
            )
            .unwrap_err();
            assert!(
                e.0.iter().any(|p| p.contains(problem)),
                "{snippet}: {:?}",
                e.0
            );
        }
    }

    #[test]
    fn connection_workers_are_one_per_cpu_unless_set() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/gw")).unwrap();
        assert_eq!(
            c.server.workers,
            std::thread::available_parallelism().unwrap().get()
        );
        let set = |n: &str| {
            let text = format!("{MINIMAL}[server]\nworkers = {n}\n");
            Config::from_toml(&text, Path::new("/etc/gw"))
        };
        assert_eq!(set("3").unwrap().server.workers, 3);
        assert_eq!(set("1024").unwrap().server.workers, 1024);
        let e = set("1025").unwrap_err().0.join("\n");
        assert!(e.contains("server.workers must be at most 1024"), "{e}");
        let e = set("0").unwrap_err().0.join("\n");
        assert!(e.contains("server.workers must be greater than 0"), "{e}");
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml(MINIMAL, Path::new("/etc/gw")).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.server.max_body_bytes, 10_485_760);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.body_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.server.drain_delay, Duration::from_secs(5));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.server.h2_max_concurrent_streams, 100);
        assert_eq!(c.server.workers, default_workers());
        assert!(c.server.workers >= 1);
        assert_eq!(c.upstream.base_url, "https://www.concursolutions.com");
        assert_eq!(c.upstream.timeout, Duration::from_secs(90));
        assert_eq!(c.auth.user_claim, "sub");
        assert_eq!(c.auth.company_claim, "company");
        assert_eq!(c.auth.leeway, Duration::from_secs(30));
        assert_eq!(c.rate_limit.user_per_second, 5.0);
        assert_eq!(c.rate_limit.company_burst, 100);
        assert_eq!(c.inspect.limits.max_pixels, 100_000_000);
        assert_eq!(c.inspect.digest, DigestAlgorithm::Sha256);
        assert!(
            matches!(&c.auth.keys, KeySource::JwksFile(p) if p == Path::new("/etc/gw/jwks.json"))
        );
        assert_eq!(c.credentials.file, Path::new("/etc/gw/credentials.toml"));
    }

    #[test]
    fn store_settings_are_checked_without_redis() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("good.key"),
            base64::engine::general_purpose::STANDARD.encode([3u8; 32]),
        )
        .unwrap();
        std::fs::write(dir.path().join("short.key"), "AAAA").unwrap();
        let with = |store: &str| Config::from_toml(&format!("{MINIMAL}\n{store}"), dir.path());
        assert!(with("").unwrap().store.redis.is_none(), "memory by default");
        let c = with("[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\nencryption_key_file = \"good.key\"\n").unwrap();
        let redis = c.store.redis.unwrap();
        assert_eq!(redis.urls, ["redis://127.0.0.1:6379/0"]);
        assert_eq!(redis.key_prefix, DEFAULT_STORE_KEY_PREFIX);
        assert_eq!(redis.timeout, DEFAULT_STORE_TIMEOUT);
        let c = with("[store]\nbackend = \"redis\"\nurl = \"redis://a:7000, redis://b:7001,redis://c:7002\"\nencryption_key_file = \"good.key\"\ntimeout_ms = 20\n").unwrap();
        assert_eq!(c.store.redis.unwrap().urls.len(), 3, "cluster seeds");
        let problems = with("[store]\nbackend = \"redis\"\nurl = \"http://x\"\nencryption_key_file = \"short.key\"\ntimeout_ms = 0\n")
            .unwrap_err()
            .0;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("store.url `http://x`")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("store.encryption_key_file")
                    && p.ends_with("holds 3 bytes, expected 32")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("store.timeout_ms")),
            "{problems:?}"
        );
        let problems = with("[store]\nbackend = \"redis\"\n").unwrap_err().0;
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("store.url is required"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("store.encryption_key_file is required"))
        );
        let problems = with("[store]\nbackend = \"redis\"\nurl = \"redis://app:hunter2@h:x\"\nencryption_key_file = \"good.key\"\n")
            .unwrap_err()
            .0;
        assert!(
            problems[0].contains("app:[redacted]@h:x") && !problems[0].contains("hunter2"),
            "{problems:?}"
        );
        // A URL the client cannot read is named (redacted) beside the other
        // problems of the section.
        let problems = with("[store]\nbackend = \"redis\"\nurl = \"redis://:PW@bad host:6379\"\nencryption_key_file = \"missing.key\"\n")
            .unwrap_err()
            .0;
        assert!(
            problems.iter().any(|p| p.starts_with(
                "store.url `redis://:[redacted]@bad host:6379`: not a URL the Redis client can read"
            )),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("missing.key")),
            "{problems:?}"
        );
        assert!(!problems.iter().any(|p| p.contains("PW")), "{problems:?}");
        let problems = with("[store]\nbackend = \"memcached\"\n").unwrap_err().0;
        assert!(problems[0].starts_with("store.backend `memcached`"));
        let problems = with("[store]\nurl = \"redis://x:1\"\n").unwrap_err().0;
        assert!(problems[0].contains("only used with store.backend = \"redis\""));
        let problems = with("[store]\nbackend = \"redis\"\nurl = \"redis://x:99999\"\nencryption_key_file = \"none.key\"\n").unwrap_err().0;
        assert!(
            problems.iter().any(|p| p.contains("is not a port")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.ends_with("no such file")),
            "{problems:?}"
        );
        // What is quoted comes from before the query, which may hold a
        // password (it was quoted in clear as the wrong part).
        for url in [
            "redis://127.0.0.1:6379/0?password=TopSecretPW/x",
            "redis://127.0.0.1:6379/x?password=TopSecretPW",
            "redis://127.0.0.1:x?password=TopSecretPW",
            "redis://127.0.0.1:6379?password=Top/Secret:PW",
        ] {
            let problems = with(&format!(
                "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nencryption_key_file = \"good.key\"\n"
            ));
            if let Err(problems) = problems {
                assert!(
                    !problems
                        .0
                        .iter()
                        .any(|p| p.contains("TopSecret") || p.contains("Secret:PW")),
                    "{url}: {problems:?}"
                );
            }
        }
        // A cluster has database 0 only.
        let problems = with("[store]\nbackend = \"redis\"\nurl = \"redis://a:7001/3,redis://b:7002/3\"\nencryption_key_file = \"good.key\"\n").unwrap_err().0;
        assert!(
            problems.iter().any(|p| p.contains("database 0 only")),
            "{problems:?}"
        );
        assert!(
            with("[store]\nbackend = \"redis\"\nurl = \"redis://a:7001/0,redis://b:7002\"\nencryption_key_file = \"good.key\"\n").is_ok()
        );
    }

    #[test]
    fn every_problem_is_reported_together() {
        let text = r#"
[server]
listen = "nowhere"
lisen = "typo"
header_read_timeout_s = 0
h2_max_concurrent_streams = 0
workers = 0
[upstream]
base_url = "http://plain.example.com"
[auth]
audience = "a"
[rate_limit]
user_per_second = -1
[inspect]
digest = "md5"
[bogus]
x = 1
"#;
        let errs = Config::from_toml(text, Path::new("/")).unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "server.listen `nowhere`",
            "unknown key `server.lisen`",
            "unknown key `bogus`",
            "server.header_read_timeout_s",
            "server.h2_max_concurrent_streams must be greater than 0",
            "server.workers must be greater than 0",
            "must be an https:// URL",
            "auth.issuer is required",
            "one of jwks_file, jwks_url or hs256_secret_file",
            "rate_limit.user_per_second",
            "inspect.digest `md5`",
            "credentials.file is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(errs.len() >= 11, "{errs:#?}");
    }

    #[test]
    fn fractional_and_integer_seconds_both_parse() {
        let text = format!("{MINIMAL}\n[server]\nbody_idle_timeout_s = 0.5\ndrain_delay_s = 0\n");
        let c = Config::from_toml(&text, Path::new("/")).unwrap();
        assert_eq!(c.server.body_idle_timeout, Duration::from_millis(500));
        assert_eq!(c.server.drain_delay, Duration::ZERO);
    }

    #[test]
    fn scan_is_off_without_the_section_and_defaults_to_fail_closed() {
        let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
        assert!(c.scan.is_none());
        let text = format!("{MINIMAL}\n[scan]\nclamd = \"tcp://127.0.0.1:3310\"\n");
        let s = Config::from_toml(&text, Path::new("/"))
            .unwrap()
            .scan
            .unwrap();
        assert_eq!(s.clamd, ClamdAddr::Tcp("127.0.0.1:3310".into()));
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.on_error, OnScanError::Reject);
        assert_eq!(s.max_concurrent, 8);
        assert_eq!(s.ping_interval, Duration::from_secs(10));
        let text = format!(
            "{MINIMAL}\n[scan]\nclamd = \"unix:clamd.ctl\"\non_error = \"allow\"\ntimeout_s = 2.5\nmax_concurrent = 3\n"
        );
        let s = Config::from_toml(&text, Path::new("/etc/gw"))
            .unwrap()
            .scan
            .unwrap();
        assert_eq!(s.clamd, ClamdAddr::Unix("/etc/gw/clamd.ctl".into()));
        assert_eq!(s.on_error, OnScanError::Allow);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.max_concurrent, 3);
        for ok in [
            "tcp://clamav:3310",
            "tcp://[::1]:3310",
            "unix:/run/clamav/clamd.ctl",
        ] {
            parse_clamd(ok, Path::new("/")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn scan_problems_are_reported_together() {
        let text = format!(
            "{MINIMAL}\n[scan]\nclamd = \"127.0.0.1:3310\"\non_error = \"ignore\"\ntimeout_s = 0\nmax_concurrent = 0\nclamd_typo = 1\n"
        );
        let all = Config::from_toml(&text, Path::new("/"))
            .unwrap_err()
            .0
            .join("\n");
        for needle in [
            "scan.clamd `127.0.0.1:3310`",
            "scan.on_error `ignore`",
            "scan.timeout_s",
            "scan.max_concurrent",
            "unknown key `scan.clamd_typo`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        for bad in [
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:99999",
            "tcp://bad host:3310",
            "unix:",
            "http://clamd:3310",
        ] {
            assert!(parse_clamd(bad, Path::new("/")).is_err(), "{bad}");
        }
        let text = format!("{MINIMAL}\n[scan]\n");
        let errs = Config::from_toml(&text, Path::new("/")).unwrap_err().0;
        assert!(errs[0].contains("scan.clamd is required"), "{errs:?}");
    }

    #[test]
    fn files_are_named_even_when_the_config_has_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let text = "[upstream]\nca_file = \"ca.pem\"\n\
            [auth]\njwks_file = \"jwks.json\"\nhs256_secret_file = \"/s\"\njwks_ca_file = \"gone.pem\"\n\
            [rate_limit]\nuser_per_second = -1\n\
            [credentials]\nfile = \"creds.toml\"\nstate_dir = \"state\"\n";
        let parsed = Config::parse(text, dir.path());
        let all = parsed.config.unwrap_err().0.join("\n");
        for needle in [
            "rate_limit.user_per_second",
            "auth.issuer is required",
            "set only one of jwks_file, jwks_url and hs256_secret_file",
            "auth.jwks_ca_file",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let at = |name: &str| Some(dir.path().join(name));
        assert_eq!(
            parsed.files,
            Files {
                jwks_file: at("jwks.json"),
                hs256_secret_file: Some("/s".into()),
                // Reported already as missing: not loaded again.
                jwks_ca_file: None,
                upstream_ca_file: at("ca.pem"),
                store_ca_file: None,
                credentials_file: at("creds.toml"),
                state_dir: at("state"),
            }
        );
        let parsed = Config::parse("[server\n", dir.path());
        assert!(parsed.config.unwrap_err().0[0].starts_with("TOML syntax"));
        assert_eq!(parsed.files, Files::default());
    }
}
