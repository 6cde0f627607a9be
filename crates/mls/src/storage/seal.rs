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
//!
//! Opening and sealing are cached per entry ([`OPEN_CACHE_BYTES_MAX`]): OpenMLS reads a
//! group's whole state back at every reload (a failed operation's rollback, a past epoch's
//! snapshot) and rewrites unchanged entries at every commit, and the AEAD over those values
//! was most of the CPU of a busy device (54 % of the deterministic simulation). A cached entry
//! is the entry's current value as last sealed or opened: stored bytes equal to the cached
//! sealed bytes open to the cached value (they were made or checked under this key), and a
//! value equal to the cached one seals to the cached bytes (the nonce is synthetic). A deleted
//! entry leaves the cache ([`Sealer::forget`]), and evicted values are zeroized, so the cache
//! keeps no secret the state no longer holds.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::StorageError;

const SEALED_VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;

/// Bytes (entry keys, sealed and opened values) the open/seal cache holds at most, per
/// device. Overflow policy: the whole cache is dropped (zeroized) and refills from the next
/// reads; a value larger than an eighth of it is never cached.
pub(crate) const OPEN_CACHE_BYTES_MAX: usize = 4 << 20;

/// One cached entry: its sealed bytes and its value.
struct Cached {
    sealed: Vec<u8>,
    value: Zeroizing<Vec<u8>>,
}

/// Entries last sealed or opened, by entry key (see the module docs).
#[derive(Default)]
struct OpenCache {
    entries: HashMap<Vec<u8>, Cached>,
    bytes: usize,
}

impl OpenCache {
    fn weight(key: &[u8], sealed: &[u8], value: &[u8]) -> usize {
        key.len() + sealed.len() + value.len()
    }

    fn put(&mut self, key: &[u8], sealed: Vec<u8>, value: &[u8]) {
        let weight = Self::weight(key, &sealed, value);
        self.forget(key);
        if weight > OPEN_CACHE_BYTES_MAX / 8 {
            return;
        }
        if self.bytes + weight > OPEN_CACHE_BYTES_MAX {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += weight;
        self.entries.insert(key.to_vec(), Cached { sealed, value: Zeroizing::new(value.to_vec()) });
    }

    fn forget(&mut self, key: &[u8]) {
        if let Some((k, c)) = self.entries.remove_entry(key) {
            self.bytes -= Self::weight(&k, &c.sealed, &c.value);
        }
    }
}

/// Seals and opens MLS state values.
pub struct Sealer {
    key: Zeroizing<[u8; 32]>,
    nonce_key: Zeroizing<[u8; 32]>,
    cache: Mutex<OpenCache>,
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
            cache: Mutex::new(OpenCache::default()),
        }
    }

    fn cache(&self) -> MutexGuard<'_, OpenCache> {
        // The cache is only ever a copy of values sealed or checked: a poisoned one is cleared.
        self.cache.lock().unwrap_or_else(|p| {
            let mut c = p.into_inner();
            *c = OpenCache::default();
            c
        })
    }

    /// Drops the cached value of `key` (its entry was deleted).
    pub(crate) fn forget(&self, key: &[u8]) {
        self.cache().forget(key);
    }

    /// Seals `value` stored under `key`.
    pub(crate) fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StorageError> {
        if let Some(c) = self.cache().entries.get(key).filter(|c| c.value.as_slice() == value) {
            return Ok(c.sealed.clone());
        }
        let out = self.seal_uncached(key, value)?;
        self.cache().put(key, out.clone(), value);
        Ok(out)
    }

    fn seal_uncached(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StorageError> {
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
        if let Some(c) = self.cache().entries.get(key).filter(|c| c.sealed == sealed) {
            return Ok(c.value.to_vec());
        }
        let value = self.open_uncached(key, sealed)?;
        self.cache().put(key, sealed.to_vec(), &value);
        Ok(value)
    }

    fn open_uncached(&self, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StorageError> {
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

    #[test]
    fn the_cache_answers_only_for_the_exact_bytes_and_stays_bounded() {
        let s = Sealer::new(&[1; 32]);
        let a = s.seal(b"k", b"first").unwrap();
        assert_eq!(s.open(b"k", &a).unwrap(), b"first", "from the cache");
        let b = s.seal(b"k", b"second").unwrap();
        assert_eq!(s.open(b"k", &a).unwrap(), b"first", "older bytes still open to their value");
        assert_eq!(s.open(b"k", &b).unwrap(), b"second");
        let mut t = b.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(s.open(b"k", &t).is_err(), "tampered bytes are checked, not matched by key");
        assert!(s.open(b"other", &b).is_err(), "moved to another entry");
        assert_eq!(b, Sealer::new(&[1; 32]).seal(b"k", b"second").unwrap(), "cached = uncached");
        s.forget(b"k");
        assert!(!s.cache().entries.contains_key(b"k".as_slice()));
        assert_eq!(s.open(b"k", &b).unwrap(), b"second", "opened again after forget");
        let big = vec![7u8; 64 * 1024];
        for i in 0..200u32 {
            let k = i.to_be_bytes();
            let sealed = s.seal(&k, &big).unwrap();
            assert_eq!(s.open(&k, &sealed).unwrap(), big);
            assert!(s.cache().bytes <= OPEN_CACHE_BYTES_MAX);
        }
        let c = s.cache();
        let counted: usize = c.entries.iter().map(|(k, v)| OpenCache::weight(k, &v.sealed, &v.value)).sum();
        assert_eq!(counted, c.bytes);
    }
}
