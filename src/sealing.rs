//! Sealing secrets at rest (a leaf module: the config checks the key file,
//! the store seals with it).
//!
//! Secrets at rest in the shared store: AES-256-GCM with the key from
//! `store.encryption_key_file` (32 random bytes, base64). Each value is
//! `base64(nonce ‖ ciphertext ‖ tag)` with a fresh random 96-bit nonce, and the
//! Redis key it is stored under is the associated data, so a value copied to
//! another key does not open.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;

const KEY_LEN: usize = 32;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Reads and checks a key file: base64 of exactly 32 bytes (surrounding
/// white space allowed). The error never quotes the file.
pub fn load_key(path: &Path) -> Result<[u8; KEY_LEN], String> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| "not base64 (make one with `openssl rand -base64 32`)".to_owned())?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("holds {} bytes, expected 32", bytes.len()))
}

/// The sealing key. No `Debug` of the key material.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("32 bytes is an AES-256 key");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Encrypts `plain`, bound to `context` (the Redis key).
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .expect("sealing cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        B64.encode(out)
    }

    /// Decrypts a value sealed for `context`; `None` when it does not open
    /// (another key, tampered, or not ours).
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = B64.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_context() {
        let a = Sealer::new(&[7; 32]);
        let b = Sealer::new(&[8; 32]);
        let sealed = a.seal("k1", b"refresh-token-xyz");
        assert!(!sealed.contains("refresh-token"), "nothing in clear");
        assert_eq!(a.open("k1", &sealed).unwrap(), b"refresh-token-xyz");
        assert!(a.open("k2", &sealed).is_none(), "bound to its key");
        assert!(b.open("k1", &sealed).is_none(), "another encryption key");
        assert_ne!(a.seal("k1", b"x"), a.seal("k1", b"x"), "fresh nonces");
        let mut tampered = B64.decode(&sealed).unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(a.open("k1", &B64.encode(tampered)).is_none());
    }

    #[test]
    fn key_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, format!("{}\n", B64.encode([1u8; 32]))).unwrap();
        assert_eq!(load_key(&ok).unwrap(), [1u8; 32]);
        let short = dir.path().join("short");
        std::fs::write(&short, B64.encode([1u8; 16])).unwrap();
        assert_eq!(load_key(&short).unwrap_err(), "holds 16 bytes, expected 32");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not base64 !!").unwrap();
        assert!(load_key(&junk).unwrap_err().starts_with("not base64"));
        assert_eq!(
            load_key(&dir.path().join("none")).unwrap_err(),
            "no such file"
        );
    }
}
