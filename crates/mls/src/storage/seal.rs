//! Encryption at rest of the MLS state: every value written to the `cairn_mls` table is sealed
//! with XChaCha20-Poly1305 under a key derived from the device key (held only in the
//! passphrase-protected keystore), with the entry's key as associated data, so a value cannot
//! be moved to another entry. The nonce is synthetic (a keyed hash of key and value): equal
//! values seal to equal bytes, which keeps the write path's "unchanged entry" skip, and reveals
//! only that an entry was rewritten with the same value.
//!
//! ```text
//! sealed = version:u8 (1) nonce:[24] ciphertext+tag
//! ```

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::StorageError;

const SEALED_VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;

/// Seals and opens MLS state values.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    nonce_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer whose keys derive from `secret` (the device's storage secret).
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(blake3::derive_key("cairn 2026-12 mls state seal key v1", secret)),
            nonce_key: Zeroizing::new(blake3::derive_key("cairn 2026-12 mls state seal nonce v1", secret)),
        }
    }

    /// Seals `value` stored under `key`.
    pub(crate) fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StorageError> {
        let mut h = blake3::Hasher::new_keyed(&self.nonce_key);
        h.update(&(key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(value);
        let digest = h.finalize();
        let nonce = &digest.as_bytes()[..NONCE_BYTES];
        let ct = XChaCha20Poly1305::new((&*self.key).into())
            .encrypt(XNonce::from_slice(nonce), Payload { msg: value, aad: key })
            .map_err(|_| StorageError::Sealed("sealing failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value read from the table under `key`.
    pub(crate) fn open(&self, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StorageError> {
        if sealed.len() < 1 + NONCE_BYTES + 16 || sealed[0] != SEALED_VERSION {
            return Err(StorageError::Sealed("an MLS state value is not sealed in a known format".into()));
        }
        XChaCha20Poly1305::new((&*self.key).into())
            .decrypt(
                XNonce::from_slice(&sealed[1..1 + NONCE_BYTES]),
                Payload { msg: &sealed[1 + NONCE_BYTES..], aad: key },
            )
            .map_err(|_| {
                StorageError::Sealed(
                    "an MLS state value does not open: tampered, or another device's key".into(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_under_their_own_key_only_and_equal_values_seal_equal() {
        let s = Sealer::new(&[1; 32]);
        let a = s.seal(b"k1", b"epoch secret").unwrap();
        assert!(!a.windows(5).any(|w| w == b"epoch"));
        assert_eq!(s.open(b"k1", &a).unwrap(), b"epoch secret");
        assert_eq!(a, s.seal(b"k1", b"epoch secret").unwrap(), "deterministic");
        assert_ne!(a, s.seal(b"k2", b"epoch secret").unwrap(), "bound to its entry key");
        assert!(s.open(b"k2", &a).is_err(), "moved to another entry");
        assert!(Sealer::new(&[2; 32]).open(b"k1", &a).is_err(), "another device");
        let mut t = a.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(s.open(b"k1", &t).is_err());
    }
}
