//! Request path, step 7 (see `ARCHITECTURE.md`).
//!
//! Concur credentials ("swap the caller's JWT for the
//! right Concur OAuth token").
//!
//! [`CredentialSet`] is loaded from `credentials.toml` and validated as a whole; a
//! [`CredentialStore`] holds the current set behind an `ArcSwap`, so a reload
//! replaces it atomically while in-flight requests keep the `Arc<Credential>` they
//! started with. [`select`] is the pure selection policy (`docs/credentials.md`).
//!
//! A credential is either a static token (legacy Concur tokens last about a
//! year) or a refreshing OAuth2 credential (refresh token + client); the latter
//! is turned into a live access token by [`refresh::TokenManager`], after
//! selection and before the exchange with Concur.

pub mod refresh;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::auth::Identity;
use crate::route::RouteKind;

/// A secret string: a token, a refresh token, a client secret. Its `Debug` and
/// `Display` print `[redacted]`, so it cannot leak through a log line or a panic.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The `Authorization` scheme Concur expects for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Scheme {
    /// Legacy Concur tokens: `Authorization: OAuth <token>`.
    #[default]
    OAuth,
    /// OAuth2 tokens: `Authorization: Bearer <token>`.
    Bearer,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::OAuth => "OAuth",
            Scheme::Bearer => "Bearer",
        }
    }
}

/// One Concur credential: a user's, or a company's admin credential (`user: None`).
#[derive(Debug, Clone)]
pub struct Credential {
    pub company: String,
    pub user: Option<String>,
    /// The credential's name in the store (Concur's back-off, token state):
    /// [`crate::store::credential_key`], worked out once.
    pub store_key: String,
    pub scheme: Scheme,
    pub source: Source,
}

/// Where a credential's access token comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A token given in the file, used as is.
    Static(Secret),
    /// An OAuth2 credential the gateway keeps fresh (see [`refresh`]).
    Refresh(RefreshSpec),
}

/// What the file says about a refreshing credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSpec {
    /// The refresh token as written in the file (the state directory may hold
    /// a newer one descending from it).
    pub refresh_token: Secret,
    pub client_id: String,
    pub client_secret: Secret,
    /// Where the first refresh goes; `None`: `{upstream.base_url}/oauth2/v0/token`.
    pub token_url: Option<http::Uri>,
}

impl Credential {
    /// The value of the upstream `Authorization` header for `token`.
    pub fn authorization(
        &self,
        token: &Secret,
    ) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
        let mut v =
            http::HeaderValue::try_from(format!("{} {}", self.scheme.as_str(), token.expose()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// The static token, if this is not a refreshing credential.
    pub fn static_token(&self) -> Option<&Secret> {
        match &self.source {
            Source::Static(t) => Some(t),
            Source::Refresh(_) => None,
        }
    }

    pub fn refresh_spec(&self) -> Option<&RefreshSpec> {
        match &self.source {
            Source::Static(_) => None,
            Source::Refresh(spec) => Some(spec),
        }
    }

    /// For logs: whose credential this is, never the token.
    pub fn label(&self) -> String {
        match &self.user {
            Some(u) => format!("{}/{u}", self.company),
            None => format!("{}/(admin)", self.company),
        }
    }
}

/// Which credential acted, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acting {
    User,
    CompanyAdmin,
}

/// A validated set of credentials.
#[derive(Debug, Default)]
pub struct CredentialSet {
    users: HashMap<(String, String), Arc<Credential>>,
    admins: HashMap<String, Arc<Credential>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    company: Option<String>,
    user: Option<String>,
    access_token: Option<Secret>,
    refresh_token: Option<Secret>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    token_url: Option<String>,
    scheme: Option<Scheme>,
}

/// A deserialisation error's first line, without the values it quotes
/// (`invalid type: string \`…\``): a misplaced secret would be quoted.
fn without_values(e: &toml::de::Error) -> String {
    let first = e.message().lines().next().unwrap_or("");
    let mut out = String::with_capacity(first.len());
    let mut quoted = false;
    for part in first.split('`') {
        if !quoted {
            out.push_str(part);
        } else if !(first.starts_with("invalid type") || first.starts_with("invalid value")) {
            out.push('`');
            out.push_str(part);
            out.push('`');
        } else {
            out.push('…');
        }
        quoted = !quoted;
    }
    out
}

impl CredentialSet {
    /// Parses and validates `credentials.toml`; every problem is reported.
    /// Error messages name entries by position and owner, never by secret.
    /// A relative `client_secret_file` is resolved against the current folder.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        Self::from_toml_in(text, Path::new("."))
    }

    /// As [`CredentialSet::from_toml`], resolving `client_secret_file` against
    /// `base` (the credentials file's folder).
    pub fn from_toml_in(text: &str, base: &Path) -> Result<Self, Vec<String>> {
        // Syntax first; then each entry on its own, so that one entry of the
        // wrong shape does not hide the problems of the others.
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            // toml's message can quote the offending line, which may hold a
            // secret: keep only the message's first line and the position.
            let first = e.message().lines().next().unwrap_or("").to_owned();
            let at = e
                .span()
                .map(|s| format!(" (at byte {})", s.start))
                .unwrap_or_default();
            vec![format!("credentials file: {first}{at}")]
        })?;
        let mut problems = Vec::new();
        for key in table.keys().filter(|k| *k != "credential") {
            problems.push(format!(
                "credentials file: unknown key `{key}` (expected `[[credential]]` entries)"
            ));
        }
        let entries = match table.get("credential") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries.clone(),
            Some(_) => {
                problems
                    .push("credentials file: `credential` must be `[[credential]]` entries".into());
                Vec::new()
            }
        };
        let mut raw = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            match RawCredential::deserialize(entry) {
                Ok(c) => raw.push((i + 1, c)),
                Err(e) => problems.push(format!("credential #{}: {}", i + 1, without_values(&e))),
            }
        }
        let mut set = CredentialSet::default();
        for (n, c) in raw {
            let company = match c.company.clone() {
                Some(company) if !company.is_empty() => company,
                _ => {
                    problems.push(format!("credential #{n}: `company` is required"));
                    continue;
                }
            };
            if c.user.as_deref() == Some("") {
                problems.push(format!(
                    "credential #{n} ({company}): `user` is empty; omit it for the admin credential"
                ));
                continue;
            }
            let owner = match &c.user {
                Some(u) => format!("{company}/{u}"),
                None => format!("{company}/(admin)"),
            };
            let refreshing = c.refresh_token.is_some()
                || c.client_id.is_some()
                || c.client_secret.is_some()
                || c.client_secret_file.is_some()
                || c.token_url.is_some();
            let source = if refreshing {
                match refresh_spec(&c, &owner, n, base) {
                    Ok(spec) => Source::Refresh(spec),
                    Err(mut ps) => {
                        problems.append(&mut ps);
                        continue;
                    }
                }
            } else {
                let Some(access_token) = c.access_token.clone() else {
                    problems.push(format!(
                        "credential #{n} ({owner}): `access_token` (a static token) or `refresh_token`, `client_id` and `client_secret` (a refreshing one) are required"
                    ));
                    continue;
                };
                if !token_like(&access_token) {
                    problems.push(format!(
                        "credential #{n} ({owner}): `access_token` must be non-empty printable ASCII without spaces"
                    ));
                    continue;
                }
                Source::Static(access_token)
            };
            // OAuth2 access tokens are sent as `Bearer`; legacy tokens as `OAuth`.
            let scheme = c.scheme.unwrap_or(match source {
                Source::Static(_) => Scheme::OAuth,
                Source::Refresh(_) => Scheme::Bearer,
            });
            let cred = Arc::new(Credential {
                store_key: crate::store::credential_key(&company, c.user.as_deref()),
                company: company.clone(),
                user: c.user.clone(),
                scheme,
                source,
            });
            let duplicate = match c.user {
                Some(user) => set.users.insert((company, user), cred).is_some(),
                None => set.admins.insert(company, cred).is_some(),
            };
            if duplicate {
                problems.push(format!("credential #{n} ({owner}): duplicate entry"));
            }
        }
        if problems.is_empty() && set.is_empty() {
            // An empty file is what a truncating editor or a torn write
            // leaves for a moment: as a reload it would take every
            // credential away, so it is refused like any invalid file.
            problems.push(
                "credentials file: no `[[credential]]` entry: the gateway could act for no caller"
                    .into(),
            );
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            // In file order: the file's own problems, then entry by entry.
            problems.sort_by_key(|p| {
                p.strip_prefix("credential #")
                    .and_then(|rest| rest.split([':', ' ']).next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            });
            Err(problems)
        }
    }

    pub fn load(path: &Path) -> Result<Self, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![crate::config::file_problem(path, &e)])?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_in(&text, base).map_err(|ps| {
            ps.into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect()
        })
    }

    pub fn len(&self) -> usize {
        self.users.len() + self.admins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every credential, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Credential>> {
        self.users.values().chain(self.admins.values())
    }
}

fn token_like(s: &Secret) -> bool {
    let t = s.expose();
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic())
}

/// Validates the refreshing half of an entry; problems name the owner only.
fn refresh_spec(
    c: &RawCredential,
    owner: &str,
    n: usize,
    base: &Path,
) -> Result<RefreshSpec, Vec<String>> {
    let mut problems = Vec::new();
    let at = format!("credential #{n} ({owner})");
    if c.access_token.is_some() {
        problems.push(format!(
            "{at}: give either `access_token` (static) or `refresh_token` (refreshing), not both"
        ));
    }
    let refresh_token = match &c.refresh_token {
        Some(t) if token_like(t) => Some(t.clone()),
        Some(_) => {
            problems.push(format!(
                "{at}: `refresh_token` must be non-empty printable ASCII without spaces"
            ));
            None
        }
        None => {
            problems.push(format!("{at}: `refresh_token` is required"));
            None
        }
    };
    let client_id = match &c.client_id {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic()) => Some(id.clone()),
        Some(_) => {
            problems.push(format!(
                "{at}: `client_id` must be non-empty printable ASCII"
            ));
            None
        }
        None => {
            problems.push(format!("{at}: `client_id` is required"));
            None
        }
    };
    let client_secret = match (&c.client_secret, &c.client_secret_file) {
        (Some(s), None) => Some(s.clone()),
        (None, Some(file)) => {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    let text = text.strip_suffix('\r').unwrap_or(text);
                    Some(Secret::new(text))
                }
                Err(e) => {
                    problems.push(format!("{at}: client_secret_file {}: {e}", path.display()));
                    None
                }
            }
        }
        (Some(_), Some(_)) => {
            problems.push(format!(
                "{at}: give either `client_secret` or `client_secret_file`, not both"
            ));
            None
        }
        (None, None) => {
            problems.push(format!(
                "{at}: `client_secret` or `client_secret_file` is required"
            ));
            None
        }
    };
    if let Some(s) = &client_secret
        && s.expose().is_empty()
    {
        problems.push(format!("{at}: the client secret is empty"));
    }
    let token_url = match &c.token_url {
        None => None,
        Some(text) => match text.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("https")
                    && uri.host().is_some()
                    && crate::config::port_ok(&uri)
                    && !crate::config::has_userinfo(&uri) =>
            {
                Some(uri)
            }
            _ => {
                problems.push(format!(
                    "{at}: `token_url` `{}` must be an https:// URL without user info (and a port, if any, from 1 to 65535)",
                    crate::config::shown_url(text)
                ));
                None
            }
        },
    };
    match (refresh_token, client_id, client_secret) {
        (Some(refresh_token), Some(client_id), Some(client_secret)) if problems.is_empty() => {
            Ok(RefreshSpec {
                refresh_token,
                client_id,
                client_secret,
                token_url,
            })
        }
        _ => Err(problems),
    }
}

/// The selection policy (`docs/credentials.md`), a pure function:
/// - receipts go to the caller's own receipt store, so only the caller's user
///   credential may act (never the admin's: the image would land in the wrong store);
/// - entries, invoices and reports use the caller's credential, else the company's
///   admin credential;
/// - otherwise there is none (`403 no_credential`).
pub fn select(
    set: &CredentialSet,
    identity: &Identity,
    route: RouteKind,
) -> Option<(Arc<Credential>, Acting)> {
    let own = set
        .users
        .get(&(identity.company.clone(), identity.user.clone()))
        .cloned();
    if let Some(c) = own {
        return Some((c, Acting::User));
    }
    match route {
        RouteKind::Receipt => None,
        RouteKind::ExpenseEntry | RouteKind::Invoice | RouteKind::Report => set
            .admins
            .get(&identity.company)
            .cloned()
            .map(|c| (c, Acting::CompanyAdmin)),
    }
}

/// The live credential set, replaced atomically on reload.
pub struct CredentialStore {
    current: ArcSwap<CredentialSet>,
    path: PathBuf,
    /// (mtime, len, inode-ish identity) of the file last loaded, to notice changes.
    stamp: std::sync::Mutex<Option<FileStamp>>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialStore")
            .field("path", &self.path)
            .field("credentials", &self.current.load().len())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    canonical: Option<PathBuf>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        // Kubernetes swaps a `..data` symlink: the resolved path changes.
        canonical: std::fs::canonicalize(path).ok(),
    })
}

/// What a reload check did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Replaced { credentials: usize },
    Refused(Vec<String>),
}

impl CredentialStore {
    /// Loads the file; fails when it does not validate.
    pub fn open(path: &Path) -> Result<Self, Vec<String>> {
        let before = stamp(path);
        let set = CredentialSet::load(path)?;
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            path: path.to_owned(),
            stamp: std::sync::Mutex::new(before),
        })
    }

    pub fn current(&self) -> Arc<CredentialSet> {
        self.current.load_full()
    }

    /// Reloads the file if it changed. A file that does not validate is refused
    /// and the previous set stays in use.
    pub fn reload_if_changed(&self) -> Reload {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock().expect("stamp lock");
        if now == *last {
            return Reload::Unchanged;
        }
        *last = now;
        match CredentialSet::load(&self.path) {
            Ok(set) => {
                let credentials = set.len();
                self.current.store(Arc::new(set));
                Reload::Replaced { credentials }
            }
            Err(problems) => Reload::Refused(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[credential]]
company = "acme"
user = "alice@acme.example"
access_token = "alice-token"

[[credential]]
company = "acme"
access_token = "acme-admin-token"
scheme = "Bearer"

[[credential]]
company = "globex"
user = "gina"
access_token = "gina-token"
"#;

    fn who(company: &str, user: &str) -> Identity {
        Identity {
            company: company.into(),
            user: user.into(),
        }
    }

    #[test]
    fn selection_policy() {
        let set = CredentialSet::from_toml(FILE).unwrap();
        let alice = who("acme", "alice@acme.example");
        let bob = who("acme", "bob@acme.example");
        let gus = who("globex", "gus");
        for kind in [
            RouteKind::Receipt,
            RouteKind::ExpenseEntry,
            RouteKind::Invoice,
            RouteKind::Report,
        ] {
            let (c, acting) = select(&set, &alice, kind).unwrap();
            assert_eq!(
                (c.static_token().unwrap().expose(), acting),
                ("alice-token", Acting::User)
            );
            assert!(select(&set, &gus, kind).is_none(), "no admin for globex");
        }
        // Receipts never fall back to the admin credential.
        assert!(select(&set, &bob, RouteKind::Receipt).is_none());
        for kind in [
            RouteKind::ExpenseEntry,
            RouteKind::Invoice,
            RouteKind::Report,
        ] {
            let (c, acting) = select(&set, &bob, kind).unwrap();
            assert_eq!(acting, Acting::CompanyAdmin);
            let token = c.static_token().unwrap();
            assert_eq!(c.authorization(token).unwrap(), "Bearer acme-admin-token");
        }
        // Another company's user never gets acme's admin.
        assert!(select(&set, &who("evil", "alice@acme.example"), RouteKind::Report).is_none());
    }

    #[test]
    fn secrets_never_print() {
        let set = CredentialSet::from_toml(FILE).unwrap();
        let dump = format!("{set:?}");
        assert!(!dump.contains("token\""), "{dump}");
        assert!(!dump.contains("alice-token") && !dump.contains("acme-admin-token"));
        assert_eq!(format!("{}", Secret::new("s3cr3t")), "[redacted]");
    }

    #[test]
    fn invalid_files_report_every_problem_without_secrets() {
        let text = r#"
[[credential]]
user = "x"
access_token = "tok-1"
[[credential]]
company = "a"
[[credential]]
company = "a"
access_token = "has space"
[[credential]]
company = "b"
refresh_token = "rt-secret"
client_secret = "cs-secret"
"#;
        let problems = CredentialSet::from_toml(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[3].contains("`client_id` is required"),
            "{problems:#?}"
        );
        let all = problems.join("\n");
        for s in ["tok-1", "has space", "rt-secret", "cs-secret"] {
            assert!(!all.contains(s), "secret {s} leaked: {all}");
        }
        // A syntax error near a secret does not quote it.
        let e = CredentialSet::from_toml("[[credential]]\naccess_token = \"abc\nsecret-xyz")
            .unwrap_err();
        assert!(!e.join("").contains("secret-xyz"), "{e:?}");
    }

    /// A file with no credential is refused (as a reload, the previous set
    /// stays), and a `token_url` never shows its password or query.
    #[test]
    fn an_empty_file_and_a_token_url_with_user_info_are_refused() {
        for text in ["", "# nothing yet\n"] {
            let problems = CredentialSet::from_toml(text).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("no `[[credential]]` entry"),
                "{problems:?}"
            );
        }
        let text = r#"
[[credential]]
company = "acme"
user = "f"
refresh_token = "rt"
client_id = "id"
client_secret = "cs"
token_url = "https://u:URLPW@concur.example/oauth2/v0/token?client_secret=QS"
"#;
        let problems = CredentialSet::from_toml(text).unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("`token_url` `https://u:[redacted]@concur.example/oauth2/v0/token?[redacted]` must be an https:// URL without user info"),
            "{all}"
        );
        assert!(!all.contains("URLPW") && !all.contains("QS"), "{all}");
        let text = text.replace("u:URLPW@concur.example/", "concur.example:abc/");
        let all = CredentialSet::from_toml(&text).unwrap_err().join("\n");
        assert!(all.contains("`token_url`"), "{all}");
    }

    /// An entry of the wrong shape is reported, and so are the others.
    #[test]
    fn entries_of_the_wrong_shape_do_not_hide_the_rest() {
        let text = r#"
[[credential]]
company = "a"
user = "x"
access_token = "tok-1"
scheme = "Basic"
[[credential]]
company = "a"
user = "y"
access_token = 123456789
[[credential]]
user = "z"
access_token = "tok-3"
[[credential]]
company = "a"
colour = "blue"
access_token = "tok-4"
"#;
        let problems = CredentialSet::from_toml(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with("credential #1: unknown variant"),
            "{problems:#?}"
        );
        assert!(
            problems[1].starts_with("credential #2: invalid type"),
            "{problems:#?}"
        );
        assert!(
            problems[2].contains("credential #3: `company` is required"),
            "{problems:#?}"
        );
        assert!(
            problems[3].contains("credential #4: unknown field `colour`"),
            "{problems:#?}"
        );
        assert!(!problems.join("\n").contains("123456789"), "{problems:#?}");
        let top = CredentialSet::from_toml("credentials = 1\n").unwrap_err();
        assert!(top[0].contains("unknown key `credentials`"), "{top:?}");
    }

    #[test]
    fn refreshing_credentials_parse_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "cs-from-file\n").unwrap();
        let text = r#"
[[credential]]
company = "acme"
user = "bob"
refresh_token = "rt-1"
client_id = "client-bob"
client_secret_file = "secret.txt"
[[credential]]
company = "acme"
refresh_token = "rt-2"
client_id = "client-admin"
client_secret = "cs-2"
token_url = "https://us.api.concursolutions.com/oauth2/v0/token"
scheme = "OAuth"
"#;
        let set = CredentialSet::from_toml_in(text, dir.path()).unwrap();
        let bob = who("acme", "bob");
        let (c, _) = select(&set, &bob, RouteKind::Receipt).unwrap();
        assert_eq!(
            c.scheme,
            Scheme::Bearer,
            "refreshing credentials default to Bearer"
        );
        let spec = c.refresh_spec().unwrap();
        assert_eq!(spec.client_secret.expose(), "cs-from-file");
        assert_eq!(spec.refresh_token.expose(), "rt-1");
        assert!(spec.token_url.is_none());
        let (admin, _) = select(&set, &who("acme", "eve"), RouteKind::Report).unwrap();
        assert_eq!(admin.scheme, Scheme::OAuth);
        assert_eq!(
            admin
                .refresh_spec()
                .unwrap()
                .token_url
                .as_ref()
                .unwrap()
                .host(),
            Some("us.api.concursolutions.com")
        );

        let bad = r#"
[[credential]]
company = "acme"
user = "bob"
access_token = "at-secret"
refresh_token = "rt-secret"
client_id = "c"
client_secret = "cs-secret"
token_url = "http://plain.example/token"
[[credential]]
company = "acme"
user = "carl"
refresh_token = "rt-secret"
client_id = "c"
client_secret_file = "missing.txt"
"#;
        let problems = CredentialSet::from_toml_in(bad, dir.path()).unwrap_err();
        let all = problems.join("\n");
        assert_eq!(problems.len(), 3, "{all}");
        assert!(
            all.contains("not both") && all.contains("https://") && all.contains("missing.txt")
        );
        for s in ["at-secret", "rt-secret", "cs-secret"] {
            assert!(!all.contains(s), "{all}");
        }
    }
}
