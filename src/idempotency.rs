//! Request path, step 6 (see `ARCHITECTURE.md`).
//!
//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): a retried
//! upload never becomes a duplicate receipt.
//!
//! A client that lost the answer to an upload cannot know whether Concur
//! stored the image. With a key, the gateway keeps Concur's final answer and
//! gives it again to a retry, without calling Concur:
//!
//! - the key is scoped to the caller (company and user, hashed) and stored
//!   hashed; records live in the store (`store/`), so a retry may land on any
//!   replica with `[store] backend = "redis"`;
//! - before Concur is contacted an **in-flight** record is created
//!   atomically (a map entry; `SET NX PX` on Redis) with a short lease that
//!   is renewed while the upload runs: a second request with the same key
//!   meanwhile gets `409 idempotency_conflict` (whatever its body: the first
//!   one's body is not known yet), and a gateway that dies leaves a record
//!   that expires with its lease;
//! - once Concur's answer is **final** (a 2xx, or a 4xx other than 408, 425
//!   and 429, and other than 401: see [`is_final`]) the record keeps the
//!   request's fingerprint (route, target ID,
//!   media type, SHA-256 of the body) and Concur's status and body for
//!   `idempotency.ttl_s`; any other outcome drops the record, so a retry goes
//!   through again;
//! - a retry with a final record is read whole (and inspected) but not sent:
//!   the same fingerprint gets the stored answer, translated for the retry's
//!   own `Accept`, with `Idempotent-Replayed: true`; another fingerprint gets
//!   `422 idempotency_key_reused`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// The header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Marks a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// Parses the request's `Idempotency-Key`: an sf-string (`"…"`, with `\"`
/// and `\\` escapes) or the same characters bare, 1 to 255 visible ASCII
/// characters. `Ok(None)` without the header.
pub fn parse(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &'static str| GatewayError::InvalidIdempotencyKey(why);
    if values.next().is_some() {
        return Err(invalid("more than one Idempotency-Key header"));
    }
    let raw = value.as_bytes().trim_ascii();
    let key: Vec<u8> = match raw.strip_prefix(b"\"") {
        Some(rest) => {
            let inner = rest
                .strip_suffix(b"\"")
                .ok_or(invalid("an sf-string must end with a quote"))?;
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => match bytes.next() {
                        Some(&e @ (b'"' | b'\\')) => out.push(e),
                        _ => return Err(invalid("only \\\" and \\\\ escapes are allowed")),
                    },
                    b'"' => return Err(invalid("an unescaped quote inside the key")),
                    _ => out.push(b),
                }
            }
            out
        }
        None => raw.to_vec(),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("the key must be 1 to 255 characters"));
    }
    if !key.iter().all(|b| (0x21..=0x7E).contains(b)) {
        return Err(invalid("the key must be visible ASCII characters"));
    }
    Ok(Some(String::from_utf8(key).expect("ASCII")))
}

/// A final answer, kept for replays. No secret in it: Concur's answer to an
/// upload (an image id, or an error message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The request's fingerprint (hex SHA-256 of route, ID, media type and
    /// the body's SHA-256).
    pub fingerprint: String,
    pub status: u16,
    /// Concur's `Content-Type`, if it sent one.
    pub content_type: Option<String>,
    /// Concur's body (bounded by the XML cap of `transform`).
    pub body: String,
    /// The original `Repr-Digest`, if one was sent.
    pub repr_digest: Option<String>,
    /// Concur's `Location`, if any.
    pub location: Option<String>,
    /// Concur's `Retry-After`, if any (a 4xx may carry one); absent from
    /// records written before it was kept.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Concur's answer could not be given to a client (it quoted the access
    /// token, or it was too large): why. Its body is not kept; a replay is
    /// the same `502 upstream_invalid_response`. Absent from older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
}

/// The fingerprint of a request: route kind, target ID, canonical media type
/// and the body's SHA-256.
pub fn fingerprint(route: &str, target: Option<&str>, media: &str, body_sha256: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        route.as_bytes(),
        target.unwrap_or("").as_bytes(),
        media.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.update(body_sha256);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether Concur's status is final for the key (kept and replayed): a 2xx,
/// or a 4xx other than 408, 425 and 429 (SPEC) — and other than 401, which
/// the client gets as `502 upstream_auth_failed` (SPEC): the gateway's Concur
/// token was refused (it is refreshed before the next request), which says
/// nothing of the upload, and a 5xx is never final. A 403 is Concur's
/// refusal of this request, final as SPEC says.
pub fn is_final(status: u16) -> bool {
    (200..300).contains(&status)
        || ((400..500).contains(&status) && !matches!(status, 401 | 408 | 425 | 429))
}

/// What [`MemoryRecords::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// No record: an in-flight one now holds the key for this request.
    Started,
    /// Another request with this key is in flight.
    InFlight,
    /// A final answer exists.
    Final(Record),
}

/// The memory backend: a bounded map of records, oldest dropped first.
#[derive(Debug)]
pub struct MemoryRecords {
    max: usize,
    ttl: Duration,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    map: HashMap<String, Entry>,
    /// Keys in insertion order, with the sequence number of their entry (an
    /// entry re-created later has a newer one; stale queue items are skipped).
    order: VecDeque<(String, u64)>,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    expires: Instant,
    state: EntryState,
}

#[derive(Debug)]
enum EntryState {
    InFlight { owner: String },
    Final(Record),
}

impl MemoryRecords {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            max,
            ttl,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    /// Looks up `key`; creates an in-flight record owned by `owner` (for
    /// `lease`) when there is none.
    pub fn begin(&self, key: &str, owner: &str, lease: Duration) -> Begun {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("idempotency lock");
        if let Some(entry) = inner.map.get(key) {
            if entry.expires > now {
                return match &entry.state {
                    EntryState::InFlight { .. } => Begun::InFlight,
                    EntryState::Final(r) => Begun::Final(r.clone()),
                };
            }
            inner.map.remove(key);
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.map.insert(
            key.to_owned(),
            Entry {
                seq,
                expires: now + lease,
                state: EntryState::InFlight {
                    owner: owner.to_owned(),
                },
            },
        );
        inner.order.push_back((key.to_owned(), seq));
        inner.evict(self.max);
        Begun::Started
    }

    /// Extends an in-flight record still owned by `owner`.
    pub fn renew(&self, key: &str, owner: &str, lease: Duration) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if let Some(entry) = inner.map.get_mut(key)
            && matches!(&entry.state, EntryState::InFlight { owner: o } if o == owner)
        {
            entry.expires = Instant::now() + lease;
        }
    }

    /// Turns `owner`'s in-flight record into a final one.
    pub fn finish(&self, key: &str, owner: &str, record: Record) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if let Some(entry) = inner.map.get_mut(key)
            && matches!(&entry.state, EntryState::InFlight { owner: o } if o == owner)
        {
            entry.state = EntryState::Final(record);
            entry.expires = Instant::now() + self.ttl;
        }
    }

    /// Drops `owner`'s in-flight record.
    pub fn abandon(&self, key: &str, owner: &str) {
        let mut inner = self.inner.lock().expect("idempotency lock");
        if inner
            .map
            .get(key)
            .is_some_and(|e| matches!(&e.state, EntryState::InFlight { owner: o } if o == owner))
        {
            inner.map.remove(key);
        }
    }

    /// Records held now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("idempotency lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MemoryInner {
    /// Drops the oldest final records beyond `max` (and expired ones met on
    /// the way). A record still in flight is passed over, never dropped:
    /// dropped, a retry of its key would go to Concur while the first upload
    /// is still there. So the map may hold `max` plus the uploads in flight
    /// (which the upload limits bound).
    fn evict(&mut self, max: usize) {
        let now = Instant::now();
        // At most one turn through the queue (every record in flight).
        let mut turns = self.order.len();
        while (self.map.len() > max || self.order.len() > 2 * max.max(1)) && turns > 0 {
            turns -= 1;
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(entry) = self.map.get(&key).filter(|e| e.seq == seq) else {
                continue; // a stale queue item
            };
            let expired = entry.expires <= now;
            let in_flight = matches!(entry.state, EntryState::InFlight { .. });
            if expired || (self.map.len() > max && !in_flight) {
                // The oldest final record goes first; an expired one anyway.
                self.map.remove(&key);
            } else if in_flight {
                self.order.push_back((key, seq));
            } else {
                self.order.push_front((key, seq));
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(v: &str) -> Result<Option<String>, &'static str> {
        let mut h = HeaderMap::new();
        h.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(v).unwrap());
        parse(&h).map_err(|e| e.code())
    }

    #[test]
    fn keys_are_sf_strings_or_bare_visible_ascii() {
        assert_eq!(key("\"abc\""), Ok(Some("abc".into())));
        assert_eq!(key("abc"), Ok(Some("abc".into())), "the same key bare");
        assert_eq!(
            key("8e03978e-40d5-43e8-bc93-6894a57f9324"),
            Ok(Some("8e03978e-40d5-43e8-bc93-6894a57f9324".into()))
        );
        assert_eq!(key(r#""a\"b\\c""#), Ok(Some(r#"a"b\c"#.into())));
        assert_eq!(key(&"k".repeat(255)), Ok(Some("k".repeat(255))));
        for bad in [
            "",
            "\"\"",
            "\"abc",
            "a b",
            "\"a b\"",
            r#""a\nb""#,
            "\"a\"b\"",
        ] {
            assert_eq!(key(bad), Err("invalid_idempotency_key"), "{bad:?}");
        }
        assert_eq!(key(&"k".repeat(256)), Err("invalid_idempotency_key"));
        let mut h = HeaderMap::new();
        assert_eq!(parse(&h).unwrap(), None);
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        h.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert!(parse(&h).is_err(), "two keys");
    }

    #[test]
    fn final_answers_are_2xx_and_4xx_but_401_408_425_429() {
        for s in [200, 201, 400, 403, 404, 409, 422] {
            assert!(is_final(s), "{s}");
        }
        for s in [401, 408, 425, 429, 500, 502, 503, 504, 301] {
            assert!(!is_final(s), "{s}");
        }
    }

    #[test]
    fn fingerprints_separate_every_part() {
        let sha = [1u8; 32];
        let a = fingerprint("report", Some("R1"), "image/jpeg", &sha);
        assert_eq!(a, fingerprint("report", Some("R1"), "image/jpeg", &sha));
        assert_ne!(a, fingerprint("report", Some("R2"), "image/jpeg", &sha));
        assert_ne!(a, fingerprint("invoice", Some("R1"), "image/jpeg", &sha));
        assert_ne!(a, fingerprint("report", Some("R1"), "image/png", &sha));
        assert_ne!(
            a,
            fingerprint("report", Some("R1"), "image/jpeg", &[2u8; 32])
        );
        assert_ne!(
            fingerprint("report", Some("R1x"), "", &sha),
            fingerprint("report", Some("R1"), "x", &sha),
            "length-prefixed"
        );
    }

    fn record(fp: &str) -> Record {
        Record {
            fingerprint: fp.into(),
            status: 201,
            content_type: None,
            body: "<Image/>".into(),
            repr_digest: None,
            location: None,
            retry_after: None,
            invalid: None,
        }
    }

    /// A record written before `retry_after` was kept (a Redis record of an
    /// older build) still reads.
    #[test]
    fn a_record_without_retry_after_still_reads() {
        let old = r#"{"fingerprint":"f","status":400,"content_type":null,"body":"<Error/>","repr_digest":null,"location":null}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!(r.retry_after, None);
        assert_eq!(r.invalid, None);
        assert_eq!(r.status, 400);
    }

    #[test]
    fn in_flight_then_final_then_replayed() {
        let m = MemoryRecords::new(10, Duration::from_secs(60));
        let lease = Duration::from_secs(5);
        assert_eq!(m.begin("k", "o1", lease), Begun::Started);
        assert_eq!(m.begin("k", "o2", lease), Begun::InFlight);
        m.finish("k", "o2", record("x")); // not the owner: ignored
        assert_eq!(m.begin("k", "o2", lease), Begun::InFlight);
        m.finish("k", "o1", record("fp"));
        assert_eq!(m.begin("k", "o2", lease), Begun::Final(record("fp")));
        // Abandoned in-flight records free the key.
        assert_eq!(m.begin("j", "o1", lease), Begun::Started);
        m.abandon("j", "o1");
        assert_eq!(m.begin("j", "o3", lease), Begun::Started);
        // An expired lease frees it too.
        assert_eq!(m.begin("e", "o1", Duration::ZERO), Begun::Started);
        assert_eq!(m.begin("e", "o2", lease), Begun::Started);
    }

    #[test]
    fn records_in_flight_are_never_dropped_to_make_room() {
        let lease = Duration::from_secs(60);
        let m = MemoryRecords::new(3, Duration::from_secs(60));
        m.begin("done", "o", lease);
        m.finish("done", "o", record("fp"));
        for k in ["a", "b", "c", "d"] {
            assert_eq!(m.begin(k, "o", lease), Begun::Started);
        }
        // The final record made room first; then four in flight, over max.
        assert_eq!(m.begin("done", "o", lease), Begun::Started);
        for k in ["a", "b", "c", "d"] {
            assert_eq!(m.begin(k, "o2", lease), Begun::InFlight, "{k}");
        }
        // Finished, they are dropped oldest first as new keys come.
        for k in ["a", "b", "c", "d", "done"] {
            m.finish(k, "o", record(k));
        }
        m.begin("e", "o", lease);
        assert_eq!(m.len(), 3);
        assert_eq!(m.begin("a", "o", lease), Begun::Started, "the oldest went");
    }

    #[test]
    fn a_million_keys_stay_within_max_records() {
        let m = MemoryRecords::new(1000, Duration::from_secs(60));
        for i in 0..1_000_000u32 {
            let k = format!("key-{i}");
            assert_eq!(m.begin(&k, "o", Duration::from_secs(60)), Begun::Started);
            m.finish(&k, "o", record("fp"));
        }
        assert_eq!(m.len(), 1000, "the oldest were dropped first");
        assert_eq!(
            m.begin("key-999999", "o", Duration::from_secs(60)),
            Begun::Final(record("fp")),
            "the newest kept"
        );
        assert_eq!(
            m.begin("key-0", "o", Duration::from_secs(60)),
            Begun::Started
        );
        assert!(m.inner.lock().unwrap().order.len() <= 2 * 1000 + 1);
    }
}
