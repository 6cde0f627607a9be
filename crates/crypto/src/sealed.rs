//! Sealing small values under a 32-byte key (XChaCha20-Poly1305, random 24-byte nonce):
//! `nonce:[24] ciphertext+tag`. The caller binds the value to its context (file header,
//! format version) through the associated data, and derives the key for one purpose only.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::keystore::{KeystoreError, random_bytes};

/// Bytes sealing adds: nonce and tag.
pub const SEALED_OVERHEAD_BYTES: usize = 24 + 16;

/// Seals `plain` under `key`, bound to `aad`.
pub fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeystoreError> {
    let nonce = random_bytes::<24>()?;
    let ct = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| KeystoreError::Decrypt)?;
    let mut out = Vec::with_capacity(SEALED_OVERHEAD_BYTES + plain.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal`] made; another key, another `aad` or any changed byte is
/// [`KeystoreError::Decrypt`].
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    if sealed.len() < SEALED_OVERHEAD_BYTES {
        return Err(KeystoreError::Decrypt);
    }
    let (nonce, ct) = sealed.split_at(24);
    XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| KeystoreError::Decrypt)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_every_tampering_is_refused() {
        let key = [7u8; 32];
        let s = seal(&key, b"ctx", b"secret seed").unwrap();
        assert_eq!(s.len(), SEALED_OVERHEAD_BYTES + 11);
        assert_eq!(&open(&key, b"ctx", &s).unwrap()[..], b"secret seed");
        assert!(open(&[8u8; 32], b"ctx", &s).is_err(), "another key opened it");
        assert!(open(&key, b"other", &s).is_err(), "another context opened it");
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(open(&key, b"ctx", &t).is_err(), "byte {i} changed and still opened");
        }
        assert!(open(&key, b"ctx", &s[..20]).is_err());
    }
}
