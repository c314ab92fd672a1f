//! Request path, step 4 (see `ARCHITECTURE.md`).
//!
//! JWT authentication.
//!
//! The caller's `Authorization: Bearer <JWT>` is verified against the configured
//! keys (a JWKS file or an HS256 secret) and turned into an [`Identity`]
//! (company, user) that the rest of the path uses. Rules:
//! - the token is only read from the `Authorization` header (never a query string);
//! - the header's `alg` must be in the allow-list *and* fit the selected key's type
//!   (no `none`, no HS/RS confusion: a JWKS never yields an HMAC key);
//! - `kid` selects the key; without `kid`, the only key of a fitting type is used;
//! - `iss` and `aud` must match; `exp` is required and `nbf` honoured, both with
//!   `leeway_s`, against an injected [`Clock`] so tests move time instead of sleeping;
//! - `company_claim` and `user_claim` must be non-empty strings;
//! - no JWS extension is understood, so a header with `crit` (in any form) or
//!   `b64` is refused before any key is selected (RFC 7515 §4.1.11, RFC 7797 §6).
//!
//! Error reasons name what failed, never the token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::{AuthConfig, KeySource};
use crate::error::GatewayError;

pub mod jwks;

/// Who is calling, as the JWT says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub company: String,
    pub user: String,
}

/// Wall-clock seconds since the Unix epoch, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> u64;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A verification key and the algorithms it may verify.
struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// A usable JWKS key and its `kid`, if it has one.
type KidKey = (Option<String>, Arc<VerifyKey>);

/// Loaded keys: by `kid`, plus those without one.
pub struct KeySet {
    /// Several keys may share a `kid` (a set published mid-rotation): each is
    /// tried.
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    /// The keys without a `kid` (an HS256 secret's one): what a token whose
    /// `kid` names no key is checked against.
    unnamed: Vec<Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("keys", &self.all.len())
            .finish()
    }
}

/// Asymmetric algorithms a JWKS key may verify, by key type.
fn algorithms_for(params: &AlgorithmParameters) -> Result<Vec<Algorithm>, String> {
    use Algorithm::*;
    Ok(match params {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match &ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match &okp.curve {
            EllipticCurve::Ed25519 => vec![EdDSA],
            other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are refused in a JWKS: use hs256_secret_file".into());
        }
        _ => return Err("unsupported key type".into()),
    })
}

/// Refuses key material no signature could verify against, so that such a
/// key is skipped with a reason instead of failing every token as "bad
/// signature": an RSA modulus under 2048 bits (RFC 7518 §3.3) or without an
/// exponent, an EC point that is not on its curve (or has the other curve's
/// size), an Ed25519 key that is not 32 bytes.
fn check_key_material(params: &AlgorithmParameters) -> Result<(), String> {
    use aws_lc_rs::signature::{self, ParsedPublicKey};
    let bytes = |what: &str, b64: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| format!("`{what}` is not base64url"))
    };
    match params {
        AlgorithmParameters::RSA(rsa) => {
            let n = bytes("n", &rsa.n)?;
            let e = bytes("e", &rsa.e)?;
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if bits < 2048 {
                return Err(format!("an RSA key of {bits} bits (2048 at least)"));
            }
            if e.iter().all(|&b| b == 0) {
                return Err("an RSA key without an exponent".into());
            }
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (alg, size): (&'static dyn signature::VerificationAlgorithm, usize) = match ec.curve
            {
                EllipticCurve::P256 => (&signature::ECDSA_P256_SHA256_FIXED, 32),
                EllipticCurve::P384 => (&signature::ECDSA_P384_SHA384_FIXED, 48),
                _ => return Ok(()),
            };
            let (x, y) = (bytes("x", &ec.x)?, bytes("y", &ec.y)?);
            if x.len() != size || y.len() != size {
                return Err(format!(
                    "EC coordinates of {} and {} bytes, not {size}",
                    x.len(),
                    y.len()
                ));
            }
            let point = [&[4u8][..], &x, &y].concat();
            ParsedPublicKey::new(alg, point).map_err(|_| "an EC point that is not on its curve")?;
        }
        AlgorithmParameters::OctetKeyPair(okp) => {
            let x = bytes("x", &okp.x)?;
            ParsedPublicKey::new(&signature::ED25519, x)
                .map_err(|_| "an Ed25519 key that is not 32 bytes")?;
        }
        _ => {}
    }
    Ok(())
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

impl KeySet {
    /// Parses a JWKS document. Keys meant for encryption (`use: enc`) are
    /// skipped, and so, with a warning, are keys the gateway cannot verify
    /// with (an unknown `kty`, a curve such as P-521 or secp256k1, an `alg`
    /// that does not fit the key, unreadable key material): RFC 7517 §5, an
    /// identity provider that adds such a key must not stop every
    /// authentication. A symmetric (`oct`) key refuses the whole set: it is a
    /// secret published. Without one usable signature key the set is refused.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut by_kid: HashMap<String, Vec<Arc<VerifyKey>>> = HashMap::new();
        let mut unnamed = Vec::new();
        let mut all = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw) in set.keys.into_iter().enumerate() {
            let name = raw
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .map_or_else(|| format!("#{i}"), str::to_owned);
            if raw.get("kty").and_then(serde_json::Value::as_str) == Some("oct") {
                return Err(format!(
                    "key {name}: symmetric (oct) keys are refused in a JWKS: use hs256_secret_file"
                ));
            }
            match Self::verify_key(raw) {
                Ok(None) => {}
                Ok(Some((kid, key))) => {
                    match kid {
                        Some(kid) => by_kid.entry(kid).or_default().push(key.clone()),
                        None => unnamed.push(key.clone()),
                    }
                    all.push(key);
                }
                Err(reason) => skipped.push(format!("key {name}: {reason}")),
            }
        }
        for reason in &skipped {
            tracing::warn!(reason = %reason, "JWKS key skipped: the gateway cannot verify with it");
        }
        if all.is_empty() {
            return Err(if skipped.is_empty() {
                "the JWKS has no signature keys".into()
            } else {
                format!(
                    "the JWKS has no signature keys the gateway can use ({})",
                    skipped.join("; ")
                )
            });
        }
        Ok(Self {
            by_kid,
            unnamed,
            all,
        })
    }

    /// One JWK: `Ok(None)` for an encryption key, else its `kid` and the
    /// key, or why it cannot be used.
    fn verify_key(raw: serde_json::Value) -> Result<Option<KidKey>, String> {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(raw).map_err(|e| format!("not a key the gateway reads: {e}"))?;
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            return Ok(None);
        }
        let mut algorithms = algorithms_for(&jwk.algorithm)?;
        if let Some(alg) = jwk.common.key_algorithm {
            let alg = key_algorithm(alg)
                .filter(|a| algorithms.contains(a))
                .ok_or_else(|| format!("`alg` {alg:?} does not fit the key type"))?;
            algorithms = vec![alg];
        }
        check_key_material(&jwk.algorithm)?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
        Ok(Some((
            jwk.common.key_id.clone(),
            Arc::new(VerifyKey { key, algorithms }),
        )))
    }

    /// No keys: every token is refused (a JWKS URL not fetched yet).
    pub fn empty() -> Self {
        Self {
            by_kid: HashMap::new(),
            unnamed: Vec::new(),
            all: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key ids, for logs.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// An HS256 shared secret (at least 32 bytes, RFC 7518 §3.2).
    pub fn from_hs256_secret(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the HS256 secret has {} bytes; at least 32 are required",
                secret.len()
            ));
        }
        let key = Arc::new(VerifyKey {
            key: DecodingKey::from_secret(secret),
            algorithms: vec![Algorithm::HS256],
        });
        Ok(Self {
            by_kid: HashMap::new(),
            unnamed: vec![key.clone()],
            all: vec![key],
        })
    }

    /// Loads the configured key source.
    pub fn load(source: &KeySource) -> Result<Self, String> {
        match source {
            KeySource::JwksFile(path) => {
                let bytes = read(path)?;
                Self::from_jwks(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            // Fetched by the background refresher (`jwks.rs`); until then the
            // set is empty and the gateway is not ready.
            KeySource::JwksUrl(_) => Ok(Self::empty()),
            KeySource::Hs256SecretFile(path) => {
                let bytes = read(path)?;
                // A trailing newline from an editor is not part of the secret.
                let trimmed = bytes
                    .strip_suffix(b"\n")
                    .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
                    .unwrap_or(&bytes);
                Self::from_hs256_secret(trimmed).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }

    /// The keys a token's signature is checked against, in order: those of
    /// its `kid` (usually one) that allow its algorithm, or the one key
    /// that fits the algorithm when it has no `kid`. A `kid` that names no
    /// key is checked against the keys without one (an HS256 secret, a JWKS
    /// key published without `kid`: many issuers set a `kid` all the same);
    /// `Selected::by_kid` false says so.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Selected<'_>, SelectError> {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(keys) => {
                    let keys = fitting(keys, alg);
                    if keys.is_empty() {
                        return Err(SelectError::Other(format!(
                            "algorithm {alg:?} is not allowed for this key"
                        )));
                    }
                    Ok(Selected { keys, by_kid: true })
                }
                None => {
                    let keys = fitting(&self.unnamed, alg);
                    if keys.is_empty() {
                        return Err(SelectError::UnknownKid);
                    }
                    Ok(Selected {
                        keys,
                        by_kid: false,
                    })
                }
            },
            None => {
                let mut fitting = self.all.iter().filter(|k| k.algorithms.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(Selected {
                        keys: vec![&**k],
                        by_kid: true,
                    }),
                    (None, _) => Err(SelectError::Other("no key for this algorithm".to_owned())),
                    (Some(_), Some(_)) => Err(SelectError::Other(
                        "several keys fit and the token has no kid".to_owned(),
                    )),
                }
            }
        }
    }
}

/// The keys of `keys` that allow `alg`.
fn fitting(keys: &[Arc<VerifyKey>], alg: Algorithm) -> Vec<&VerifyKey> {
    keys.iter()
        .map(|k| &**k)
        .filter(|k| k.algorithms.contains(&alg))
        .collect()
}

/// The keys to check a token against.
struct Selected<'a> {
    keys: Vec<&'a VerifyKey>,
    /// False: the token's `kid` named no key, these are the keys without one.
    by_kid: bool,
}

/// Why no key was found for a token.
enum SelectError {
    UnknownKid,
    Other(String),
}

/// Longest encoded JOSE header segment read (an `x5c` chain of a few
/// certificates fits; the request head limit bounds it anyway).
const MAX_HEADER_SEGMENT: usize = 8 * 1024;

/// Refuses JWS extensions before anything else is looked at (RFC 7515 §4.1.11):
/// the gateway understands none, so a `crit` header parameter, present in any
/// form (even an empty list, which the RFC forbids, or `null`), makes the token
/// invalid. `b64` (RFC 7797 unencoded payloads) is refused too: RFC 7797 §6
/// requires it to be listed in `crit`, so without `crit` the header is invalid.
///
/// The header segment is decoded here (base64url, JSON object, bounded size)
/// rather than through `jsonwebtoken::decode_header`, whose typed `Header` maps
/// `"crit": null` to "absent" and keeps no trace of `b64`. Escaped spellings
/// (`"cr\u0069t"`) are the same key once the JSON is parsed.
fn refuse_jws_extensions(token: &str) -> Result<(), String> {
    let malformed = || "malformed token".to_owned();
    let mut segments = token.split('.');
    let header = segments.next().unwrap_or_default();
    if segments.count() != 2 {
        return Err(malformed());
    }
    if header.len() > MAX_HEADER_SEGMENT {
        return Err("token header too large".into());
    }
    let json = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
        .map_err(|_| malformed())?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| malformed())?;
    if header.contains_key("crit") {
        return Err("critical header parameter (`crit`) not supported".into());
    }
    if header.contains_key("b64") {
        return Err("unencoded payload header parameter (`b64`) not supported".into());
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| crate::config::file_problem(path, &e))
}

/// Most verified tokens remembered (see [`Authenticator::verify`]).
pub const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// A verified token's outcome, remembered under the SHA-256 of the token (the
/// token itself is never stored). Time claims are re-checked on every hit.
#[derive(Debug, Clone)]
struct Verified {
    identity: Identity,
    exp: f64,
    nbf: Option<f64>,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    cache: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
    keys: arc_swap::ArcSwap<KeySet>,
    /// Woken when a token names an unknown `kid` (the JWKS refresher listens).
    unknown_kid: tokio::sync::Notify,
    issuer: String,
    audience: String,
    user_claim: String,
    company_claim: String,
    leeway: u64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig, keys: KeySet, clock: Arc<dyn Clock>) -> Self {
        Self {
            cache: std::sync::Mutex::new(HashMap::new()),
            keys: arc_swap::ArcSwap::from_pointee(keys),
            unknown_kid: tokio::sync::Notify::new(),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            user_claim: config.user_claim.clone(),
            company_claim: config.company_claim.clone(),
            leeway: config.leeway.as_secs(),
            clock,
        }
    }

    /// Verifies the `Authorization` header's bearer token.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Identity, GatewayError> {
        let token = bearer_token(authorization)?;
        self.verify(token).map_err(GatewayError::InvalidToken)
    }

    /// Verifies a compact JWT; the error is a reason safe to show the caller.
    ///
    /// A caller reusing its JWT costs one SHA-256 and a map lookup instead of a
    /// signature check: verified tokens are cached (bounded, keyed by the
    /// token's hash), and a hit re-checks `exp` and `nbf` against the clock.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let key: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        let hit = self.cache.lock().expect("token cache").get(&key).cloned();
        if let Some(v) = hit {
            return match self.check_times(v.exp, v.nbf) {
                Ok(()) => Ok(v.identity),
                Err(e) => {
                    self.cache.lock().expect("token cache").remove(&key);
                    Err(e)
                }
            };
        }
        let verified = self.verify_uncached(token)?;
        let identity = verified.identity.clone();
        let mut cache = self.cache.lock().expect("token cache");
        if cache.len() >= TOKEN_CACHE_CAPACITY {
            let now = self.clock.now_unix() as f64;
            let leeway = self.leeway as f64;
            cache.retain(|_, v| v.exp + leeway >= now);
            if cache.len() >= TOKEN_CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, verified);
        Ok(identity)
    }

    /// Whether any verification key is loaded.
    pub fn keys_loaded(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Swaps in a new key set (a JWKS refresh). Cached verifications are
    /// dropped: a key that was removed must stop vouching for its tokens.
    pub fn replace_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
        self.cache.lock().expect("token cache").clear();
    }

    /// Notified when a token names a `kid` the key set lacks.
    pub fn unknown_kid(&self) -> &tokio::sync::Notify {
        &self.unknown_kid
    }

    /// Number of tokens cached.
    pub fn cached_tokens(&self) -> usize {
        self.cache.lock().expect("token cache").len()
    }

    fn check_times(&self, exp: f64, nbf: Option<f64>) -> Result<(), String> {
        let now = self.clock.now_unix() as f64;
        let leeway = self.leeway as f64;
        // RFC 7519 §4.1.4: the current time must be before `exp`. The clock
        // reads whole seconds: a fractional `exp` counts from its second, so
        // a token is never taken after it expired (at worst < 1 s before).
        if now >= exp.floor() + leeway {
            return Err("token expired".into());
        }
        if let Some(nbf) = nbf
            && now + leeway < nbf
        {
            return Err("token not yet valid".into());
        }
        Ok(())
    }

    fn verify_uncached(&self, token: &str) -> Result<Verified, String> {
        refuse_jws_extensions(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_owned())?;
        let keys = self.keys.load();
        let selected = match keys.select(header.kid.as_deref(), header.alg) {
            Ok(selected) => selected,
            Err(SelectError::UnknownKid) => {
                self.unknown_kid.notify_one();
                return Err("unknown key id".to_owned());
            }
            Err(SelectError::Other(e)) => return Err(e),
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // Time claims are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.required_spec_claims.insert("iss".into());
        validation.required_spec_claims.insert("aud".into());
        // Each key of the `kid` in turn: a signature that fails with one may
        // be another's.
        let mut decoded = Err(jsonwebtoken::errors::ErrorKind::InvalidSignature.into());
        for key in &selected.keys {
            decoded = jsonwebtoken::decode::<UniqueClaims>(token, &key.key, &validation);
            match &decoded {
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                }
                _ => break,
            }
        }
        if !selected.by_kid
            && let Err(e) = &decoded
            && matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature)
        {
            // Not a key without `kid` either: perhaps one the set does not
            // hold yet.
            self.unknown_kid.notify_one();
            return Err("unknown key id".to_owned());
        }
        let data = decoded.map_err(|e: jsonwebtoken::errors::Error| {
            use jsonwebtoken::errors::ErrorKind::*;
            match e.kind() {
                InvalidSignature => "bad signature".to_owned(),
                InvalidIssuer => "wrong issuer".to_owned(),
                InvalidAudience => "wrong audience".to_owned(),
                MissingRequiredClaim(c) => format!("missing claim `{c}`"),
                InvalidAlgorithm | InvalidAlgorithmName => "algorithm not allowed".to_owned(),
                _ => "malformed token".to_owned(),
            }
        })?;
        let claims = data.claims.0;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .ok_or("missing or non-numeric `exp`")?;
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(v.as_f64().ok_or("non-numeric `nbf`")?),
        };
        self.check_times(exp, nbf)?;
        let claim = |name: &str| -> Result<String, String> {
            match claims.get(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                _ => Err(format!("claim `{name}` missing or not a string")),
            }
        };
        Ok(Verified {
            identity: Identity {
                company: claim(&self.company_claim)?,
                user: claim(&self.user_claim)?,
            },
            exp,
            nbf,
        })
    }
}

/// A JWT's claims, refused when a name appears twice. JSON parsers differ on
/// which one wins (serde_json takes the last); for the claims that choose
/// the company and the user, and so whose Concur token acts, a component
/// that reads the first would see another tenant. (jsonwebtoken already
/// refuses a repeated registered claim.)
struct UniqueClaims(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueClaims, A::Error> {
                let mut claims = serde_json::Map::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom("a claim appears twice"));
                    }
                    claims.insert(name, value);
                }
                Ok(UniqueClaims(claims))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Extracts the token from `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: Option<&HeaderValue>) -> Result<&str, GatewayError> {
    let value = value.ok_or(GatewayError::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| GatewayError::InvalidToken("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(GatewayError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(GatewayError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(GatewayError::MissingToken);
    }
    Ok(token)
}

/// A clock tests can set and advance.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(now_unix: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(now_unix))
    }
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_secs(), std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set(&self, now_unix: u64) {
        self.0.store(now_unix, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
    const T0: u64 = 1_900_000_000;

    fn authenticator(clock: Arc<ManualClock>) -> Authenticator {
        let config = AuthConfig {
            issuer: "iss".into(),
            audience: "aud".into(),
            keys: KeySource::Hs256SecretFile("unused".into()),
            user_claim: "email".into(),
            company_claim: "org".into(),
            leeway: Duration::from_secs(30),
        };
        Authenticator::new(&config, KeySet::from_hs256_secret(SECRET).unwrap(), clock)
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// A claim named twice is refused, whichever it is (the black-box round
    /// of 2026-11-30: a repeated company claim was taken, the last one
    /// winning, while a repeated `sub` was refused).
    #[test]
    fn a_claim_named_twice_is_refused() {
        use base64::Engine as _;
        let clock = Arc::new(ManualClock::new(T0));
        let auth = authenticator(clock);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let signed = |payload: &str| {
            let message = format!(
                "{}.{}",
                b64(br#"{"alg":"HS256","typ":"JWT"}"#),
                b64(payload.as_bytes())
            );
            let sig = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap();
            format!("{message}.{sig}")
        };
        let exp = T0 + 600;
        let once = format!(r#"{{"iss":"iss","aud":"aud","email":"u","org":"acme","exp":{exp}}}"#);
        assert!(auth.verify(&signed(&once)).is_ok());
        for twice in [
            format!(
                r#"{{"iss":"iss","aud":"aud","email":"u","org":"acme","org":"beta","exp":{exp}}}"#
            ),
            format!(
                r#"{{"iss":"iss","aud":"aud","email":"x","email":"u","org":"acme","exp":{exp}}}"#
            ),
            format!(
                r#"{{"iss":"iss","aud":"aud","email":"u","org":"acme","extra":1,"extra":2,"exp":{exp}}}"#
            ),
        ] {
            assert_eq!(
                auth.verify(&signed(&twice)).unwrap_err(),
                "malformed token",
                "{twice}"
            );
        }
    }

    #[test]
    fn time_claims_follow_the_injected_clock_with_leeway() {
        let clock = Arc::new(ManualClock::new(T0));
        let auth = authenticator(clock.clone());
        let t = token(serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c",
            "nbf": T0 + 60, "exp": T0 + 600,
        }));
        assert_eq!(auth.verify(&t).unwrap_err(), "token not yet valid");
        clock.set(T0 + 30); // nbf - leeway
        assert_eq!(
            auth.verify(&t).unwrap(),
            Identity {
                company: "c".into(),
                user: "u".into()
            }
        );
        clock.set(T0 + 629); // the last second before exp + leeway
        assert!(auth.verify(&t).is_ok());
        // RFC 7519 §4.1.4: the time must be before `exp` (+ leeway), not at it.
        clock.advance(Duration::from_secs(1));
        assert_eq!(auth.verify(&t).unwrap_err(), "token expired");
        // A fractional `exp`: the clock's second T0 + 630 may be T0 + 630.8,
        // past an `exp` of T0 + 600.2 (+ leeway).
        let t = token(serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c",
            "exp": (T0 + 600) as f64 + 0.2,
        }));
        assert_eq!(auth.verify(&t).unwrap_err(), "token expired");
        clock.set(T0 + 629);
        assert!(auth.verify(&t).is_ok());
    }

    #[test]
    fn a_kid_that_names_no_key_is_checked_against_the_keys_without_one() {
        let clock = Arc::new(ManualClock::new(T0));
        let auth = authenticator(clock);
        let claims = serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c", "exp": T0 + 600,
        });
        let header = Header {
            kid: Some("hs-2026".into()),
            ..Header::default()
        };
        let t = encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap();
        assert!(auth.verify(&t).is_ok(), "an HS256 token with a kid");
        let forged = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!"),
        )
        .unwrap();
        assert_eq!(auth.verify(&forged).unwrap_err(), "unknown key id");
    }

    #[test]
    fn weak_or_broken_key_material_is_skipped() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // The test suite's real keys all pass the check.
        let good: serde_json::Value = serde_json::from_str(&crate::testkit::keys().jwks).unwrap();
        assert_eq!(
            KeySet::from_jwks(good.to_string().as_bytes())
                .unwrap()
                .all
                .len(),
            3
        );
        let es = good["keys"][0].clone();
        let mut off_curve = es.clone();
        off_curve["y"] = es["x"].clone();
        let mut wrong_curve = es.clone();
        wrong_curve["crv"] = "P-384".into();
        for (key, reason) in [
            (
                serde_json::json!({"kty": "RSA", "n": b64(&[0xC5; 128]), "e": "AQAB"}),
                "an RSA key of 1024 bits",
            ),
            (
                serde_json::json!({"kty": "RSA", "n": b64(&[0xC5; 256]), "e": "AA"}),
                "without an exponent",
            ),
            (
                serde_json::json!({"kty": "RSA", "n": b64(&[0; 4]), "e": "AQAB"}),
                "an RSA key of 0 bits",
            ),
            (off_curve, "not on its curve"),
            (wrong_curve, "not 48"),
            (
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 31])}),
                "not 32 bytes",
            ),
        ] {
            let set = serde_json::json!({"keys": [key]}).to_string();
            let err = KeySet::from_jwks(set.as_bytes()).unwrap_err();
            assert!(err.contains(reason), "{reason}: {err}");
            // Beside a good key, it is skipped and the good one kept.
            let mixed = serde_json::json!({"keys": [key, es]}).to_string();
            assert_eq!(KeySet::from_jwks(mixed.as_bytes()).unwrap().all.len(), 1);
        }
    }

    #[test]
    fn the_token_cache_never_accepts_an_expired_token() {
        let clock = Arc::new(ManualClock::new(T0));
        let auth = authenticator(clock.clone());
        let t = token(serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c", "exp": T0 + 100,
        }));
        assert!(auth.verify(&t).is_ok());
        assert_eq!(auth.cached_tokens(), 1);
        assert!(auth.verify(&t).is_ok(), "served from the cache");
        clock.set(T0 + 131); // past exp + leeway
        assert_eq!(auth.verify(&t).unwrap_err(), "token expired");
        assert_eq!(auth.cached_tokens(), 0, "the expired entry is dropped");
        // A failed verification is never cached.
        let bad = format!("{t}x");
        assert!(auth.verify(&bad).is_err());
        assert_eq!(auth.cached_tokens(), 0);
    }

    #[test]
    fn configured_claims_and_algorithms() {
        let auth = authenticator(Arc::new(ManualClock::new(T0)));
        let base = serde_json::json!({"iss": "iss", "aud": ["x", "aud"], "exp": T0 + 60});
        let mut c = base.clone();
        c["sub"] = "u".into();
        c["org"] = "c".into();
        assert!(auth.verify(&token(c)).unwrap_err().contains("`email`"));
        let mut c = base.clone();
        c["email"] = "u".into();
        c["org"] = serde_json::json!(["c"]);
        assert!(auth.verify(&token(c)).unwrap_err().contains("`org`"));
        // HS384 with the same secret is not on this key's allow-list.
        let mut c = base;
        c["email"] = "u".into();
        c["org"] = "c".into();
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &c,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(auth.verify(&hs384).is_err());
        assert!(auth.verify(&token(c)).is_ok());
    }

    /// An HS256 token whose JOSE header is exactly `header` (raw JSON).
    fn token_with_header(header: &str, claims: &serde_json::Value) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(claims.to_string()));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{sig}")
    }

    #[test]
    fn any_crit_header_parameter_is_refused() {
        let auth = authenticator(Arc::new(ManualClock::new(T0)));
        let c = serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c", "exp": T0 + 60,
        });
        // Control: the same construction without `crit` verifies.
        let ok = token_with_header(r#"{"alg":"HS256","typ":"JWT"}"#, &c);
        assert!(auth.verify(&ok).is_ok());
        for header in [
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","crit":["foo"],"foo":1}"#,
            r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"alg":"HS256","crit":null}"#,
            r#"{"alg":"HS256","crit":"foo"}"#,
            r#"{"alg":"HS256","cr\u0069t":["foo"]}"#,
            r#"{"crit":["exp"],"alg":"HS256","typ":"JWT"}"#,
        ] {
            let t = token_with_header(header, &c);
            assert_eq!(
                auth.verify(&t).unwrap_err(),
                "critical header parameter (`crit`) not supported",
                "{header}"
            );
        }
        // `b64` without `crit` is invalid too (RFC 7797 §6), whatever its value.
        for header in [
            r#"{"alg":"HS256","b64":false}"#,
            r#"{"alg":"HS256","b64":true}"#,
        ] {
            let t = token_with_header(header, &c);
            assert_eq!(
                auth.verify(&t).unwrap_err(),
                "unencoded payload header parameter (`b64`) not supported",
                "{header}"
            );
        }
        assert_eq!(auth.cached_tokens(), 1, "only the control token is cached");
    }

    #[test]
    fn the_jose_header_is_bounded_and_must_be_a_json_object() {
        let auth = authenticator(Arc::new(ManualClock::new(T0)));
        let c = serde_json::json!({
            "iss": "iss", "aud": "aud", "email": "u", "org": "c", "exp": T0 + 60,
        });
        let pad = "x".repeat(MAX_HEADER_SEGMENT);
        let big = token_with_header(&format!(r#"{{"alg":"HS256","x":"{pad}"}}"#), &c);
        assert_eq!(auth.verify(&big).unwrap_err(), "token header too large");
        // Just under the bound is fine.
        let pad = "x".repeat(MAX_HEADER_SEGMENT / 4 * 3 - 40);
        let fits = token_with_header(&format!(r#"{{"alg":"HS256","x":"{pad}"}}"#), &c);
        assert!(fits.split('.').next().unwrap().len() <= MAX_HEADER_SEGMENT);
        assert!(auth.verify(&fits).is_ok());
        for header in [r#"["alg","HS256"]"#, "null", r#"{"alg":"HS256""#] {
            let t = token_with_header(header, &c);
            assert_eq!(auth.verify(&t).unwrap_err(), "malformed token", "{header}");
        }
        let ok = token_with_header(r#"{"alg":"HS256"}"#, &c);
        for bad in [format!("{ok}.x"), ok.replacen('.', "..", 1), "a.b".into()] {
            assert_eq!(auth.verify(&bad).unwrap_err(), "malformed token", "{bad}");
        }
    }

    #[test]
    fn short_secrets_and_symmetric_jwks_keys_are_refused() {
        assert!(KeySet::from_hs256_secret(b"short").is_err());
        let jwks = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"k"}]}"#;
        assert!(KeySet::from_jwks(jwks).unwrap_err().contains("symmetric"));
        assert!(KeySet::from_jwks(br#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn bearer_parsing() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer_token(Some(&v("Bearer abc"))).unwrap(), "abc");
        assert_eq!(bearer_token(Some(&v("bearer  abc "))).unwrap(), "abc");
        assert!(matches!(
            bearer_token(None),
            Err(GatewayError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(Some(&v("Basic abc"))),
            Err(GatewayError::MissingToken)
        ));
        assert!(matches!(
            bearer_token(Some(&v("Bearer"))),
            Err(GatewayError::MissingToken)
        ));
    }
}
