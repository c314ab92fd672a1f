//! Request path, step 2 (see `ARCHITECTURE.md`).
//!
//! The request id: the client's `X-Request-Id` when it is a sane token,
//! otherwise a fresh one. Assigned once by the outermost layer (`stack.rs`)
//! and kept in the request's extensions, never written into the client's
//! headers (so that checks of the head, such as its size, see what the client
//! sent). It goes back to the client on every answer, to Concur on the
//! upstream request, and into the access log.

use http::HeaderValue;

/// Header carrying the request id.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The id of one request, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id when valid, else a generated one.
    pub fn from_client(value: Option<&HeaderValue>) -> Self {
        match value {
            Some(v) if valid(v) => Self(v.clone()),
            _ => Self(HeaderValue::from_str(&generate()).expect("hex is a valid header value")),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("validated or generated as ASCII")
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// A client's `X-Request-Id` is echoed only if it is a sane token: 1 to 128 of
/// `A-Z a-z 0-9 - _ . : / + = @`.
fn valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

/// 24 lowercase hex digits of fresh randomness.
pub fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    // One allocation, not one `format!` per byte: this runs for every request.
    let mut id = String::with_capacity(2 * bytes.len());
    for b in bytes {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 0x0F)] as char);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_24_lowercase_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
        assert!(valid(&HeaderValue::from_str(&a).unwrap()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_client_id_is_kept_only_when_sane() {
        let keep = HeaderValue::from_static("req-42:a/b");
        assert_eq!(RequestId::from_client(Some(&keep)).as_str(), "req-42:a/b");
        for bad in ["", "a b", "x\"y"] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_eq!(
                RequestId::from_client(Some(&v)).as_str().len(),
                24,
                "{bad:?}"
            );
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert_eq!(RequestId::from_client(Some(&long)).as_str().len(), 24);
        assert_eq!(RequestId::from_client(None).as_str().len(), 24);
    }
}
