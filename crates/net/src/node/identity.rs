//! The node's libp2p identity across restarts: an Ed25519 seed in a key file (`node.key`,
//! mode 0600), loaded at start or created once. A user node seals it under a key derived from
//! its device key ([`SealKey`]), so a copy of the home without the passphrase-protected
//! keystore does not give away the peer id's key. A store-only node has no device key: its
//! file is plain (its peer id is public anyway; the file mode only stops other local users
//! from impersonating it).
//!
//! File format, version 1: `magic:"CAIRNNK\0" version:u8 kind:u8 body`, where kind 0 is a plain
//! seed (`seed:[32]`) and kind 1 a sealed one (`cairn_crypto::sealed`, the 10 header bytes as
//! associated data). Anything else is refused with an error saying what to do: a damaged file
//! never silently becomes a new identity.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;

use super::NodeError;

const MAGIC: &[u8; 8] = b"CAIRNNK\0";
const VERSION: u8 = 1;
const KIND_PLAIN: u8 = 0;
const KIND_SEALED: u8 = 1;
const HEADER_BYTES: usize = 10;
const SEED_BYTES: usize = 32;
/// Largest key file read, bytes (a sealed one is 82).
const KEY_FILE_BYTES_MAX: u64 = 128;

/// The key a user node's key file is sealed under, derived from the device key (kept out of
/// `Debug` output).
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl SealKey {
    /// The node-key sealing key of a device: a keyed hash of its secret key, for this one use.
    pub fn from_device_secret(device_secret: &[u8; 32]) -> Self {
        Self(blake3::derive_key("cairn 2026-12 node key file seal v1", device_secret))
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

fn fix(path: &Path, what: impl std::fmt::Display) -> NodeError {
    NodeError::Setup(format!(
        "node key file {}: {what}. Restore it from a backup, or delete it to start under a new \
         peer id (peers that saved the old one will not find this node until they learn the new one)",
        path.display()
    ))
}

/// The identity kept in `path`: loaded, or created (and written durably) when absent.
pub(super) fn load_or_create(path: &Path, seal: Option<&SealKey>) -> Result<Keypair, NodeError> {
    match fs::metadata(path) {
        Ok(m) if m.len() > KEY_FILE_BYTES_MAX => {
            return Err(fix(path, format!("{} bytes, not a node key file", m.len())));
        }
        Ok(_) => {
            let bytes = fs::read(path).map_err(|e| fix(path, e))?;
            let seed = decode(&bytes, seal).map_err(|why| fix(path, why))?;
            return Keypair::ed25519_from_bytes(seed).map_err(|e| fix(path, e));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fix(path, e)),
    }
    let mut seed = [0u8; SEED_BYTES];
    getrandom_seed(&mut seed)?;
    let bytes = encode(&seed, seal)?;
    write_new(path, &bytes).map_err(|e| NodeError::Setup(format!("writing {}: {e}", path.display())))?;
    Keypair::ed25519_from_bytes(seed).map_err(|e| NodeError::Setup(e.to_string()))
}

/// The Ed25519 seed of a store-only node's key file (plain, kind 0): loaded, never created, for
/// a tool that signs as that node (`cairn store register`). A missing file, a sealed one (a user
/// node's, whose key never leaves it) or a damaged one is an error saying which.
pub fn load_plain_seed(path: &Path) -> Result<zeroize::Zeroizing<[u8; SEED_BYTES]>, NodeError> {
    let m = fs::metadata(path).map_err(|e| {
        NodeError::Setup(format!(
            "node key file {}: {e}. A store node's directory holds one once `cairn up --store` ran there",
            path.display()
        ))
    })?;
    if m.len() > KEY_FILE_BYTES_MAX {
        return Err(fix(path, format!("{} bytes, not a node key file", m.len())));
    }
    // not `fix`: its advice (delete the file) is for a node starting, not for a reader
    let bytes =
        fs::read(path).map_err(|e| NodeError::Setup(format!("node key file {}: {e}", path.display())))?;
    decode(&bytes, None)
        .map(zeroize::Zeroizing::new)
        .map_err(|why| NodeError::Setup(format!("node key file {}: {why}", path.display())))
}

fn getrandom_seed(seed: &mut [u8; SEED_BYTES]) -> Result<(), NodeError> {
    *seed =
        cairn_crypto::keystore::random_bytes::<SEED_BYTES>().map_err(|e| NodeError::Setup(e.to_string()))?;
    Ok(())
}

fn header(kind: u8) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9] = kind;
    h
}

fn encode(seed: &[u8; SEED_BYTES], seal: Option<&SealKey>) -> Result<Vec<u8>, NodeError> {
    let mut out = Vec::with_capacity(96);
    match seal {
        None => {
            out.extend_from_slice(&header(KIND_PLAIN));
            out.extend_from_slice(seed);
        }
        Some(k) => {
            let h = header(KIND_SEALED);
            out.extend_from_slice(&h);
            out.extend(
                cairn_crypto::sealed::seal(&k.0, &h, seed).map_err(|e| NodeError::Setup(e.to_string()))?,
            );
        }
    }
    Ok(out)
}

fn decode(bytes: &[u8], seal: Option<&SealKey>) -> Result<[u8; SEED_BYTES], String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not a node key file (damaged?)".into());
    }
    if bytes[8] != VERSION {
        return Err(format!("format version {} (this build reads version {VERSION})", bytes[8]));
    }
    let body = &bytes[HEADER_BYTES..];
    let plain = match (bytes[9], seal) {
        (KIND_PLAIN, None) => zeroize::Zeroizing::new(body.to_vec()),
        (KIND_PLAIN, Some(_)) => {
            return Err("unsealed, but this is a user node (its key file is sealed by its device key); \
                        it was made by a store-only node in this directory"
                .into());
        }
        (KIND_SEALED, None) => {
            return Err("sealed by a device key, but this node was started without a user identity".into());
        }
        (KIND_SEALED, Some(k)) => {
            cairn_crypto::sealed::open(&k.0, &bytes[..HEADER_BYTES], body).map_err(|_| {
                "cannot be opened with this device's key: it belongs to another identity, or it was altered"
                    .to_owned()
            })?
        }
        (other, _) => return Err(format!("unknown key kind {other}")),
    };
    <[u8; SEED_BYTES]>::try_from(&plain[..]).map_err(|_| format!("seed of {} bytes, not 32", plain.len()))
}

/// Writes a new file (0600) durably: temp file, fsync, hard link (no overwrite), directory fsync.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kept_across_loads_sealed_or_plain_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let k = SealKey::from_device_secret(&[1u8; 32]);
        let sealed = dir.path().join("u/node.key");
        let a = load_or_create(&sealed, Some(&k)).unwrap();
        let b = load_or_create(&sealed, Some(&k)).unwrap();
        assert_eq!(a.public(), b.public());
        let bytes = fs::read(&sealed).unwrap();
        assert_eq!(bytes.len(), 82);
        let seed = a.clone().try_into_ed25519().unwrap().secret();
        assert!(!bytes.windows(32).any(|w| w == seed.as_ref()), "seed in clear in a sealed file");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&sealed).unwrap().permissions().mode() & 0o777, 0o600);
        // Another device's key, no key, a flipped byte, garbage: errors, the file untouched.
        let other = SealKey::from_device_secret(&[2u8; 32]);
        let err = load_or_create(&sealed, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
        assert!(load_or_create(&sealed, None).is_err());
        let mut t = bytes.clone();
        t[50] ^= 1;
        fs::write(&sealed, &t).unwrap();
        assert!(load_or_create(&sealed, Some(&k)).is_err());
        fs::write(&sealed, b"garbage").unwrap();
        assert!(load_or_create(&sealed, Some(&k)).is_err());
        fs::write(&sealed, vec![0u8; 4096]).unwrap();
        assert!(load_or_create(&sealed, Some(&k)).is_err());
        let mut v = bytes;
        v[8] = 9;
        fs::write(&sealed, &v).unwrap();
        assert!(load_or_create(&sealed, Some(&k)).unwrap_err().to_string().contains("version 9"));

        let plain = dir.path().join("s/node.key");
        let c = load_or_create(&plain, None).unwrap();
        assert_eq!(load_or_create(&plain, None).unwrap().public(), c.public());
        assert_eq!(fs::read(&plain).unwrap().len(), 42);
        assert!(load_or_create(&plain, Some(&k)).is_err(), "a plain file taken as a user node's");
        // the loader reads a store node's seed, and refuses a user node's file or none
        let seed = load_plain_seed(&plain).unwrap();
        let again = Keypair::ed25519_from_bytes(*seed).unwrap();
        assert_eq!(again.public(), c.public());
        assert!(load_plain_seed(&dir.path().join("u/node.key")).is_err(), "a sealed file read plain");
        assert!(load_plain_seed(&dir.path().join("none/node.key")).is_err());
        assert!(!dir.path().join("none").exists(), "the loader created something");
    }
}
