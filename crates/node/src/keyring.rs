//! Encryption at rest of what this device decrypted: each conversation's plaintexts in
//! `node.redb` are sealed (XChaCha20-Poly1305, the envelope id as associated data) under that
//! conversation's data key, kept in the keyring.
//!
//! The keyring is a small file beside the database (`DIR/keyring`, 0600), itself sealed under
//! a key derived from this device's key (which only the passphrase-protected keystore holds),
//! and rewritten whole (temp file, fsync, rename) when a key is added or forgotten. Forgetting
//! a conversation drops its key from the file: every copy of `node.redb`, taken before or
//! after, holds only ciphertexts nobody can open any more (crypto-shredding).
//!
//! Without a file (in-process tests and benches), keys are derived from the device key: the
//! same sealing, but nothing can be shredded.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_crypto::sealed;
use cairn_proto::Id;
use cairn_proto::codec::{Reader, Writer};
use zeroize::Zeroizing;

use crate::error::NodeError;

/// Format version of the keyring file.
const KEYRING_VERSION: u8 = 1;
/// Format version of a sealed plaintext.
const SEALED_VERSION: u8 = 1;
/// Conversations with a key, at most (the file stays under 4 MiB). Overflow policy: a new
/// conversation past it is refused with an error saying to forget old ones.
pub const KEYRING_KEYS_MAX: usize = 50_000;
/// Bytes a sealed plaintext adds: version, conversation id, nonce and tag.
pub const SEALED_OVERHEAD_BYTES: usize = 1 + 32 + sealed::SEALED_OVERHEAD_BYTES;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

enum Source {
    /// Keys derived from the device key (no file, no shredding).
    Derived,
    /// Random keys kept in this file.
    File(PathBuf),
}

/// The conversation data keys of this device.
pub struct Keyring {
    /// Derived from the device key: seals the file, or derives the keys.
    root: Zeroizing<[u8; 32]>,
    source: Source,
    keys: Mutex<BTreeMap<[u8; 32], Zeroizing<[u8; 32]>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(..)")
    }
}

fn root_key(device_key: &ed25519_dalek::SigningKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key("cairn 2026-12 keyring root v1", &device_key.to_bytes()))
}

fn random_bytes<const N: usize>() -> Result<[u8; N], NodeError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| NodeError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

impl Keyring {
    /// Keys derived from the device key, nothing on disk (tests, benches).
    pub fn derived(device_key: &ed25519_dalek::SigningKey) -> Self {
        Self { root: root_key(device_key), source: Source::Derived, keys: Mutex::new(BTreeMap::new()) }
    }

    /// Keys derived from a random root, nothing on disk: what this opening seals, no later
    /// opening can read (for tables that never hold plaintexts, e.g. request lists in tests).
    pub fn ephemeral() -> Result<Self, NodeError> {
        let root = Zeroizing::new(random_bytes::<32>()?);
        Ok(Self { root, source: Source::Derived, keys: Mutex::new(BTreeMap::new()) })
    }

    /// Opens (or creates) the keyring file at `path`.
    pub fn open(path: &Path, device_key: &ed25519_dalek::SigningKey) -> Result<Self, NodeError> {
        let root = root_key(device_key);
        let keys = match std::fs::read(path) {
            Ok(bytes) => unseal_file(&root, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(storage(format!("{}: {e}", path.display()))),
        };
        Ok(Self { root, source: Source::File(path.to_owned()), keys: Mutex::new(keys) })
    }

    /// Whether forgetting a conversation destroys its key (a file-backed keyring).
    pub fn can_shred(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    fn key(&self, conv: &[u8; 32], create: bool) -> Result<Option<Zeroizing<[u8; 32]>>, NodeError> {
        if let Source::Derived = self.source {
            let mut w = Writer::with_capacity(64);
            w.raw(&self.root[..]);
            w.raw(conv);
            return Ok(Some(Zeroizing::new(blake3::derive_key(
                "cairn 2026-12 derived data key v1",
                &w.finish(),
            ))));
        }
        let mut keys = self.keys.lock().map_err(|_| NodeError::Internal("keyring lock".into()))?;
        if let Some(k) = keys.get(conv) {
            return Ok(Some(k.clone()));
        }
        if !create {
            return Ok(None);
        }
        if keys.len() >= KEYRING_KEYS_MAX {
            return Err(NodeError::Conflict(format!(
                "the keyring holds {KEYRING_KEYS_MAX} conversation keys, the most: forget conversations you left"
            )));
        }
        let k = Zeroizing::new(random_bytes::<32>()?);
        keys.insert(*conv, k.clone());
        if let Err(e) = self.persist(&keys) {
            keys.remove(conv);
            return Err(e);
        }
        Ok(Some(k))
    }

    /// Destroys a conversation's key: its sealed plaintexts can never be opened again.
    pub fn forget(&self, conv: &[u8; 32]) -> Result<(), NodeError> {
        let mut keys = self.keys.lock().map_err(|_| NodeError::Internal("keyring lock".into()))?;
        if keys.remove(conv).is_some() {
            self.persist(&keys)?;
        }
        Ok(())
    }

    /// Writes the whole keyring durably: temp file (0600), fsync, rename, fsync the directory.
    fn persist(&self, keys: &BTreeMap<[u8; 32], Zeroizing<[u8; 32]>>) -> Result<(), NodeError> {
        let Source::File(path) = &self.source else { return Ok(()) };
        let bytes = seal_file(&self.root, keys)?;
        let tmp = path.with_extension("tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| storage(format!("{}: {e}", tmp.display())))?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(storage)?;
        std::fs::rename(&tmp, path).map_err(storage)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(storage)?;
        }
        Ok(())
    }

    /// Tag of an account in this device's contact tables: a keyed hash, so `node.redb` names
    /// no account in clear (only this keyring can compute the tag of a given account).
    pub fn contact_tag(&self, account: &[u8; 32]) -> [u8; 32] {
        let key = self.contacts_key();
        *blake3::keyed_hash(&key, account).as_bytes()
    }

    /// Seals a contact record (`aad` names its row).
    pub fn seal_contact(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, NodeError> {
        sealed::seal(&self.contacts_key(), aad, plain)
            .map_err(|e| NodeError::Internal(format!("sealing: {e}")))
    }

    /// Opens a contact record sealed by [`Self::seal_contact`].
    pub fn open_contact(&self, aad: &[u8], sealed_record: &[u8]) -> Result<Zeroizing<Vec<u8>>, NodeError> {
        sealed::open(&self.contacts_key(), aad, sealed_record).map_err(|_| {
            storage("a sealed contact record does not open: tampered or another device's database")
        })
    }

    fn contacts_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key("cairn 2026-12 contacts key v1", self.root.as_slice()))
    }

    /// Seals a plaintext of conversation `conv` for envelope `id`.
    pub fn seal(&self, conv: &[u8; 32], id: &Id, plain: &[u8]) -> Result<Vec<u8>, NodeError> {
        let key = self.key(conv, true)?.ok_or_else(|| NodeError::Internal("no data key".into()))?;
        let ct =
            sealed::seal(&key, &id.0, plain).map_err(|e| NodeError::Internal(format!("sealing: {e}")))?;
        let mut out = Vec::with_capacity(1 + 32 + ct.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(conv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed plaintext; `None` when its conversation's key was forgotten.
    pub fn open_sealed(&self, id: &Id, sealed: &[u8]) -> Result<Option<Vec<u8>>, NodeError> {
        if sealed.len() < SEALED_OVERHEAD_BYTES || sealed[0] != SEALED_VERSION {
            return Err(storage(format!("sealed plaintext of {} is malformed", id.short())));
        }
        let conv: [u8; 32] = sealed[1..33].try_into().map_err(storage)?;
        let Some(key) = self.key(&conv, false)? else { return Ok(None) };
        sealed::open(&key, &id.0, &sealed[33..]).map(|p| Some(p.to_vec())).map_err(|_| {
            storage(format!("sealed plaintext of {} does not open: tampered or wrong key", id.short()))
        })
    }
}

fn seal_file(root: &[u8; 32], keys: &BTreeMap<[u8; 32], Zeroizing<[u8; 32]>>) -> Result<Vec<u8>, NodeError> {
    let mut w = Writer::with_capacity(4 + keys.len() * 64);
    w.u32(keys.len() as u32);
    for (conv, k) in keys {
        w.raw(conv);
        w.raw(&k[..]);
    }
    let body = Zeroizing::new(w.finish());
    let ct = sealed::seal(root, &[KEYRING_VERSION], &body)
        .map_err(|e| NodeError::Internal(format!("sealing the keyring: {e}")))?;
    let mut out = vec![KEYRING_VERSION];
    out.extend_from_slice(&ct);
    Ok(out)
}

fn unseal_file(root: &[u8; 32], bytes: &[u8]) -> Result<BTreeMap<[u8; 32], Zeroizing<[u8; 32]>>, NodeError> {
    let bad = |why: &str| storage(format!("keyring file: {why}"));
    if bytes.len() > 1 + sealed::SEALED_OVERHEAD_BYTES + 4 + KEYRING_KEYS_MAX * 64 {
        return Err(bad("too large"));
    }
    if bytes.len() < 1 + sealed::SEALED_OVERHEAD_BYTES || bytes[0] != KEYRING_VERSION {
        return Err(bad("unknown format version or truncated"));
    }
    let body = sealed::open(root, &[KEYRING_VERSION], &bytes[1..])
        .map_err(|_| bad("does not open with this device's key (tampered, or another device's)"))?;
    let mut r = Reader::new(&body);
    let n = r.u32("keys").map_err(|e| bad(&e.to_string()))? as usize;
    if n > KEYRING_KEYS_MAX {
        return Err(bad("too many keys"));
    }
    let mut keys = BTreeMap::new();
    for _ in 0..n {
        let conv: [u8; 32] = r.array("conversation").map_err(|e| bad(&e.to_string()))?;
        let k: [u8; 32] = r.array("key").map_err(|e| bad(&e.to_string()))?;
        keys.insert(conv, Zeroizing::new(k));
    }
    r.finish().map_err(|e| bad(&e.to_string()))?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn sealed_plaintexts_open_until_their_conversation_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let ring = Keyring::open(&path, &device()).unwrap();
        let (a, b, id) = ([1u8; 32], [2u8; 32], Id([3; 32]));
        let sa = ring.seal(&a, &id, b"canary in a").unwrap();
        let sb = ring.seal(&b, &id, b"kept in b").unwrap();
        assert!(!sa.windows(6).any(|w| w == b"canary"), "no plaintext in the sealed bytes");
        assert_eq!(ring.open_sealed(&id, &sa).unwrap().unwrap(), b"canary in a");
        assert!(ring.open_sealed(&Id([4; 32]), &sa).is_err(), "bound to its envelope id");
        let mut tampered = sa.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.open_sealed(&id, &tampered).is_err());
        // Reopened from the file: same keys. Forgotten: gone, in memory and on disk.
        let again = Keyring::open(&path, &device()).unwrap();
        assert_eq!(again.open_sealed(&id, &sb).unwrap().unwrap(), b"kept in b");
        again.forget(&a).unwrap();
        assert_eq!(again.open_sealed(&id, &sa).unwrap(), None);
        let after = Keyring::open(&path, &device()).unwrap();
        assert_eq!(after.open_sealed(&id, &sa).unwrap(), None, "the key is gone from the file");
        assert_eq!(after.open_sealed(&id, &sb).unwrap().unwrap(), b"kept in b");
        // Another device's key does not open the file; a damaged file is an error.
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        assert!(Keyring::open(&path, &other).is_err());
        std::fs::write(&path, b"\x01short").unwrap();
        assert!(Keyring::open(&path, &device()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn the_keyring_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring");
        let ring = Keyring::open(&path, &device()).unwrap();
        ring.seal(&[1; 32], &Id([1; 32]), b"x").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
