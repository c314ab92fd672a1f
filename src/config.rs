//! Typed configuration, validated once, every problem reported together.
//!
//! The TOML file is read into `Raw*` structs (serde, every key optional so one
//! missing key does not hide the next), unknown keys are collected with
//! `serde_ignored` (a typo must not pass silently), then [`Config::from_toml`]
//! validates everything and returns either a [`Config`] or the full list of
//! problems. Relative paths are resolved against the config file's folder.
//!
//! Each key's default is documented where it is parsed, below, and in the README.

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
}

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
}

/// Over every 10 s window that ends after `grace`, a body must bring at least
/// `10 × bytes_per_s` bytes (0 disables the check); slower is `408 body_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinBodyRate {
    pub bytes_per_s: u64,
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub base_url: http::Uri,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_in_flight: usize,
    pub queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    JwksFile(PathBuf),
    Hs256SecretFile(PathBuf),
    /// Fetched over HTTPS at start and refreshed in the background.
    JwksUrl(JwksUrl),
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

#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub clamd: ClamdAddr,
    pub timeout: Duration,
    pub on_error: OnScanError,
    pub max_concurrent: usize,
    pub ping_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub file: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub reload_interval: Duration,
}

// ---- raw, as written in the file ----

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
}

#[derive(Debug, Default, Deserialize)]
struct RawServer {
    /// Default `127.0.0.1:8080`: a sidecar listens on loopback only.
    listen: Option<String>,
    /// Default `127.0.0.1:9090`.
    admin_listen: Option<String>,
    /// Default 10 MiB, Concur's documented limit.
    max_body_bytes: Option<u64>,
    /// Default 10 s.
    header_read_timeout_s: Option<f64>,
    /// Default 30 s.
    body_idle_timeout_s: Option<f64>,
    /// Default 5 s.
    drain_delay_s: Option<f64>,
    /// Default 30 s.
    shutdown_grace_s: Option<f64>,
    /// Default 1024 open client connections; past it new connections are closed at once.
    max_connections: Option<usize>,
    /// Default 1 MiB: a chunked body is spooled in memory up to this, then to a temp file.
    spool_memory_bytes: Option<usize>,
    /// Default 1024 bytes/s over every 10 s window once the grace has passed
    /// (0 disables): a trickling client cannot hold a Concur slot for hours.
    /// SPEC's name; `min_body_bytes_per_s` is the older spelling, still read.
    #[serde(alias = "min_body_bytes_per_s")]
    min_body_rate_bytes_per_s: Option<u64>,
    /// Default 300 s: the whole body, however it arrives (spooled bodies included).
    body_deadline_s: Option<f64>,
    /// Default 256 MiB: chunked bodies spooled at once, memory and temp files
    /// together (size the temp volume above it).
    spool_max_bytes: Option<u64>,
    /// Default 10 s.
    min_body_rate_grace_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawUpstream {
    /// Default `https://www.concursolutions.com`.
    base_url: Option<String>,
    ca_file: Option<PathBuf>,
    /// Default 90 s for the whole exchange with Concur.
    timeout_s: Option<f64>,
    /// Default 10 s.
    connect_timeout_s: Option<f64>,
    /// Default 64 exchanges with Concur at once.
    max_in_flight: Option<usize>,
    /// Default 5 s: how long a request waits for an upstream slot before `503 overloaded`.
    queue_timeout_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    issuer: Option<String>,
    audience: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    /// Extra CA (PEM) for `jwks_url`.
    jwks_ca_file: Option<PathBuf>,
    /// Default 300 s.
    jwks_refresh_s: Option<f64>,
    /// Default 10 s.
    jwks_min_refetch_s: Option<f64>,
    hs256_secret_file: Option<PathBuf>,
    /// Default `sub`.
    user_claim: Option<String>,
    /// Default `company`.
    company_claim: Option<String>,
    /// Default 30 s.
    leeway_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRateLimit {
    /// Default 5 requests/s per (company, user), burst 10.
    user_per_second: Option<f64>,
    user_burst: Option<u32>,
    /// Default 50 requests/s per company, burst 100.
    company_per_second: Option<f64>,
    company_burst: Option<u32>,
    /// Default 8 uploads in flight at once per (company, user).
    user_concurrent: Option<usize>,
    /// Default 32 uploads in flight at once per company.
    company_concurrent: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
struct RawInspect {
    /// Default 100 000 000.
    max_pixels: Option<u64>,
    /// Default `reject`.
    pdf_active_content: Option<String>,
    /// Default `sha-256`.
    digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawScan {
    /// Required in the section: `tcp://host:port` or `unix:/path`.
    clamd: Option<String>,
    /// Default 30 s: bounds each step with clamd (a permit, the connection,
    /// each write, the verdict after the last byte).
    timeout_s: Option<f64>,
    /// Default `reject` (fail closed); or `allow`.
    on_error: Option<String>,
    /// Default 8 scans at once (clamd has a fixed pool of threads, 10 by default).
    max_concurrent: Option<usize>,
    /// Default 10 s between health pings (`/readyz`).
    ping_interval_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCredentials {
    file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    /// Default 5 s: how often the credential file is checked for changes.
    reload_interval_s: Option<f64>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base)
    }

    /// Parses and validates config text; `base` is the folder relative paths are
    /// resolved against. This is the source tests swap.
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigErrors(vec![format!("TOML syntax: {}", e.message())]))?;
        let raw: RawConfig = match serde_ignored::deserialize(de, |path| {
            // `?` is how serde_ignored shows an optional section.
            unknown.push(path.to_string().replace(".?.", "."))
        }) {
            Ok(raw) => raw,
            Err(e) => return Err(ConfigErrors(vec![format!("{}", e.message())])),
        };
        for key in unknown {
            problems.push(format!("unknown key `{key}`"));
        }
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        // [server]
        let s = raw.server;
        let listen = parse_addr(&mut problems, "server.listen", s.listen, "127.0.0.1:8080");
        let admin_listen = parse_addr(
            &mut problems,
            "server.admin_listen",
            s.admin_listen,
            "127.0.0.1:9090",
        );
        let max_body_bytes = s.max_body_bytes.unwrap_or(10 * 1024 * 1024);
        if max_body_bytes == 0 {
            problems.push("server.max_body_bytes must be greater than 0".into());
        }
        let server = ServerConfig {
            listen,
            admin_listen,
            max_body_bytes,
            header_read_timeout: secs(
                &mut problems,
                "server.header_read_timeout_s",
                s.header_read_timeout_s,
                10.0,
                false,
            ),
            body_idle_timeout: secs(
                &mut problems,
                "server.body_idle_timeout_s",
                s.body_idle_timeout_s,
                30.0,
                false,
            ),
            drain_delay: secs(
                &mut problems,
                "server.drain_delay_s",
                s.drain_delay_s,
                5.0,
                true,
            ),
            shutdown_grace: secs(
                &mut problems,
                "server.shutdown_grace_s",
                s.shutdown_grace_s,
                30.0,
                true,
            ),
            max_connections: positive(
                &mut problems,
                "server.max_connections",
                s.max_connections,
                1024,
            ),
            spool_memory_bytes: s.spool_memory_bytes.unwrap_or(1024 * 1024),
            spool_max_bytes: s.spool_max_bytes.unwrap_or(256 * 1024 * 1024),
            body_deadline: secs(
                &mut problems,
                "server.body_deadline_s",
                s.body_deadline_s,
                300.0,
                false,
            ),
            min_body_rate: MinBodyRate {
                bytes_per_s: s.min_body_rate_bytes_per_s.unwrap_or(1024),
                grace: secs(
                    &mut problems,
                    "server.min_body_rate_grace_s",
                    s.min_body_rate_grace_s,
                    10.0,
                    true,
                ),
            },
        };

        // [upstream]
        let u = raw.upstream;
        let base_url_text = u
            .base_url
            .unwrap_or_else(|| "https://www.concursolutions.com".to_owned());
        let base_url = match base_url_text.trim_end_matches('/').parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
                    problems.push(format!(
                        "upstream.base_url `{base_url_text}` must be a scheme and host only (no path or query)"
                    ));
                }
                uri
            }
            Ok(_) => {
                problems.push(format!(
                    "upstream.base_url `{base_url_text}` must be an https:// URL: Concur is only reached over TLS"
                ));
                http::Uri::from_static("https://invalid")
            }
            Err(e) => {
                problems.push(format!("upstream.base_url `{base_url_text}`: {e}"));
                http::Uri::from_static("https://invalid")
            }
        };
        let ca_file = u.ca_file.map(resolve);
        if let Some(ca) = &ca_file
            && !ca.is_file()
        {
            problems.push(format!("upstream.ca_file {}: no such file", ca.display()));
        }
        let upstream = UpstreamConfig {
            base_url,
            ca_file,
            timeout: secs(
                &mut problems,
                "upstream.timeout_s",
                u.timeout_s,
                90.0,
                false,
            ),
            connect_timeout: secs(
                &mut problems,
                "upstream.connect_timeout_s",
                u.connect_timeout_s,
                10.0,
                false,
            ),
            max_in_flight: positive(&mut problems, "upstream.max_in_flight", u.max_in_flight, 64),
            queue_timeout: secs(
                &mut problems,
                "upstream.queue_timeout_s",
                u.queue_timeout_s,
                5.0,
                true,
            ),
        };

        // [auth]
        let a = raw.auth;
        let issuer = a.issuer.unwrap_or_else(|| {
            problems.push("auth.issuer is required".into());
            String::new()
        });
        let audience = a.audience.unwrap_or_else(|| {
            problems.push("auth.audience is required".into());
            String::new()
        });
        let jwks_url = a
            .jwks_url
            .as_deref()
            .map(|text| match text.parse::<http::Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => uri,
                _ => {
                    problems.push(format!("auth.jwks_url `{text}` must be an https:// URL"));
                    http::Uri::from_static("https://invalid")
                }
            });
        let jwks_ca_file = a.jwks_ca_file.map(resolve);
        if let Some(ca) = &jwks_ca_file
            && !ca.is_file()
        {
            problems.push(format!("auth.jwks_ca_file {}: no such file", ca.display()));
        }
        let refresh = secs(
            &mut problems,
            "auth.jwks_refresh_s",
            a.jwks_refresh_s,
            300.0,
            false,
        );
        let min_refetch = secs(
            &mut problems,
            "auth.jwks_min_refetch_s",
            a.jwks_min_refetch_s,
            10.0,
            true,
        );
        let keys = match (a.jwks_file, a.hs256_secret_file, jwks_url) {
            (Some(f), None, None) => KeySource::JwksFile(resolve(f)),
            (None, Some(f), None) => KeySource::Hs256SecretFile(resolve(f)),
            (None, None, Some(url)) => KeySource::JwksUrl(JwksUrl {
                url,
                ca_file: jwks_ca_file,
                refresh,
                min_refetch,
            }),
            (None, None, None) => {
                problems.push(
                    "auth: one of jwks_file, jwks_url or hs256_secret_file is required".into(),
                );
                KeySource::JwksFile(PathBuf::new())
            }
            _ => {
                problems
                    .push("auth: set only one of jwks_file, jwks_url and hs256_secret_file".into());
                KeySource::JwksFile(PathBuf::new())
            }
        };
        let auth = AuthConfig {
            issuer,
            audience,
            keys,
            user_claim: a.user_claim.unwrap_or_else(|| "sub".into()),
            company_claim: a.company_claim.unwrap_or_else(|| "company".into()),
            leeway: secs(&mut problems, "auth.leeway_s", a.leeway_s, 30.0, true),
        };

        // [rate_limit]
        let r = raw.rate_limit;
        let rate_limit = RateLimitConfig {
            user_per_second: rate(
                &mut problems,
                "rate_limit.user_per_second",
                r.user_per_second,
                5.0,
            ),
            user_burst: burst(&mut problems, "rate_limit.user_burst", r.user_burst, 10),
            company_per_second: rate(
                &mut problems,
                "rate_limit.company_per_second",
                r.company_per_second,
                50.0,
            ),
            company_burst: burst(
                &mut problems,
                "rate_limit.company_burst",
                r.company_burst,
                100,
            ),
            user_concurrent: positive(
                &mut problems,
                "rate_limit.user_concurrent",
                r.user_concurrent,
                8,
            ),
            company_concurrent: positive(
                &mut problems,
                "rate_limit.company_concurrent",
                r.company_concurrent,
                32,
            ),
        };

        // [inspect]
        let i = raw.inspect;
        let max_pixels = i.max_pixels.unwrap_or(100_000_000);
        if max_pixels == 0 {
            problems.push("inspect.max_pixels must be greater than 0".into());
        }
        let pdf_active_content = match i.pdf_active_content.as_deref() {
            None | Some("reject") => ActiveContentPolicy::Reject,
            Some("allow") => ActiveContentPolicy::Allow,
            Some(other) => {
                problems.push(format!(
                    "inspect.pdf_active_content `{other}`: expected \"reject\" or \"allow\""
                ));
                ActiveContentPolicy::Reject
            }
        };
        let digest = match i.digest.as_deref() {
            None | Some("sha-256") => DigestAlgorithm::Sha256,
            Some("sha-512") => DigestAlgorithm::Sha512,
            Some("none") => DigestAlgorithm::None,
            Some(other) => {
                problems.push(format!(
                    "inspect.digest `{other}`: expected \"sha-256\", \"sha-512\" or \"none\""
                ));
                DigestAlgorithm::Sha256
            }
        };
        let inspect = InspectConfig {
            limits: Limits {
                max_pixels,
                pdf_active_content,
                ..Limits::default()
            },
            digest,
        };

        // [scan]: absent, no malware scanning.
        let scan = raw.scan.map(|sc| {
            let clamd = match sc.clamd.as_deref() {
                None => {
                    problems.push(
                        "scan.clamd is required in [scan] (\"tcp://host:port\" or \"unix:/path\")"
                            .into(),
                    );
                    ClamdAddr::Tcp(String::new())
                }
                Some(text) => parse_clamd(text, base).unwrap_or_else(|why| {
                    problems.push(format!("scan.clamd `{text}`: {why}"));
                    ClamdAddr::Tcp(String::new())
                }),
            };
            let on_error = match sc.on_error.as_deref() {
                None | Some("reject") => OnScanError::Reject,
                Some("allow") => OnScanError::Allow,
                Some(other) => {
                    problems.push(format!(
                        "scan.on_error `{other}`: expected \"reject\" or \"allow\""
                    ));
                    OnScanError::Reject
                }
            };
            ScanConfig {
                clamd,
                timeout: secs(&mut problems, "scan.timeout_s", sc.timeout_s, 30.0, false),
                on_error,
                max_concurrent: positive(
                    &mut problems,
                    "scan.max_concurrent",
                    sc.max_concurrent,
                    8,
                ),
                ping_interval: secs(
                    &mut problems,
                    "scan.ping_interval_s",
                    sc.ping_interval_s,
                    10.0,
                    false,
                ),
            }
        });

        // [credentials]
        let c = raw.credentials;
        let file = c.file.map(resolve).unwrap_or_else(|| {
            problems.push("credentials.file is required".into());
            PathBuf::new()
        });
        let credentials = CredentialsConfig {
            file,
            state_dir: c.state_dir.map(resolve),
            reload_interval: secs(
                &mut problems,
                "credentials.reload_interval_s",
                c.reload_interval_s,
                5.0,
                false,
            ),
        };

        if problems.is_empty() {
            Ok(Config {
                server,
                upstream,
                auth,
                rate_limit,
                inspect,
                scan,
                credentials,
            })
        } else {
            Err(ConfigErrors(problems))
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

fn parse_addr(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<String>,
    default: &str,
) -> SocketAddr {
    let text = value.unwrap_or_else(|| default.to_owned());
    text.parse().unwrap_or_else(|e| {
        problems.push(format!("{key} `{text}`: {e} (expected IP:PORT)"));
        default.parse().expect("default addresses parse")
    })
}

fn secs(
    problems: &mut Vec<String>,
    key: &str,
    value: Option<f64>,
    default: f64,
    zero_ok: bool,
) -> Duration {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v < 0.0 || (!zero_ok && v == 0.0) || v > 86_400.0 * 365.0 {
        let range = if zero_ok { ">= 0" } else { "> 0" };
        problems.push(format!("{key} = {v}: expected seconds {range}"));
        return Duration::from_secs_f64(default);
    }
    Duration::from_secs_f64(v)
}

fn positive(problems: &mut Vec<String>, key: &str, value: Option<usize>, default: usize) -> usize {
    let v = value.unwrap_or(default);
    if v == 0 {
        problems.push(format!("{key} must be greater than 0"));
        return default;
    }
    v
}

fn rate(problems: &mut Vec<String>, key: &str, value: Option<f64>, default: f64) -> f64 {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 1_000_000.0 {
        problems.push(format!(
            "{key} = {v}: expected a rate > 0 (requests per second)"
        ));
        return default;
    }
    v
}

fn burst(problems: &mut Vec<String>, key: &str, value: Option<u32>, default: u32) -> u32 {
    let v = value.unwrap_or(default);
    if v == 0 {
        problems.push(format!("{key} must be at least 1"));
        return default;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[auth]
issuer = "https://idp.example.com"
audience = "concur-gateway"
jwks_file = "jwks.json"
[credentials]
file = "credentials.toml"
"#;

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
    fn every_problem_is_reported_together() {
        let text = r#"
[server]
listen = "nowhere"
lisen = "typo"
header_read_timeout_s = 0
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
            "must be an https:// URL",
            "auth.issuer is required",
            "one of jwks_file, jwks_url or hs256_secret_file",
            "rate_limit.user_per_second",
            "inspect.digest `md5`",
            "credentials.file is required",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(errs.len() >= 10, "{errs:#?}");
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
}
