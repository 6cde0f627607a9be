//! Identity keys and their encrypted keystore file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, DeviceCert, DeviceId};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

const MAGIC: &[u8; 8] = b"CAIRNKS\0";
const VERSION: u8 = 1;
/// Version of the encrypted content: 1 always holds the account key, 2 says whether it does.
const CONTENT_VERSION: u8 = 2;
const HEADER_BYTES: usize = 8 + 1 + 4 + 4 + 4 + 16 + 24;
/// Largest keystore file read, in bytes.
pub const KEYSTORE_BYTES_MAX: usize = 64 * 1024;
/// Argon2 memory cost ceiling accepted from a file, in KiB (1 GiB).
pub const KDF_M_COST_KIB_MAX: u32 = 1024 * 1024;
/// Argon2 time cost ceiling accepted from a file.
pub const KDF_T_COST_MAX: u32 = 64;

/// Why the keystore could not be created or opened. Each says what to do.
#[derive(Debug, Error)]
pub enum KeystoreError {
    /// Wrong passphrase, or the file was altered.
    #[error("cannot decrypt the keystore: wrong passphrase, or the file was altered")]
    Decrypt,
    /// The file is not a keystore this build can read.
    #[error("keystore file is malformed: {0}")]
    Format(#[from] DecodeError),
    /// A keystore already exists.
    #[error("a keystore already exists at {0}; refusing to overwrite it (use another --home)")]
    Exists(String),
    /// The OS random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// The KDF parameters are out of range.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// This device's keystore holds no account key (a device added with `cairn device add`).
    #[error(
        "this device holds no account key: run account operations (handles, adding or revoking devices) on the device that holds it"
    )]
    NoAccountKey,
    /// The stored keys are inconsistent (certificate does not match).
    #[error("keystore content is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// File system error.
    #[error("keystore I/O error on {path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io { path: path.display().to_string(), source }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// Sized for a long-term key: 64 MiB, 3 passes, 1 lane (RFC 9106 § 4's second
    /// recommendation at one lane; OWASP's 19 MiB minimum is for login hashes checked often).
    /// Keystores sealed with other costs still open: the costs are read from the file.
    fn default() -> Self {
        Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

/// An account key (on the device that holds it), this device's key and the certificate
/// binding them.
pub struct Identity {
    /// Account identity key: on the primary device only. A device added with
    /// `cairn device add` holds `None` and cannot manage the account (handles, devices).
    pub account_key: Option<SigningKey>,
    /// This device's signing key.
    pub device_key: SigningKey,
    /// The account's certificate for this device.
    pub cert: DeviceCert,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("account", &self.account()).field("device", &self.device()).finish()
    }
}

/// Fills a buffer from the OS RNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeystoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeystoreError::Random(e.to_string()))?;
    Ok(b)
}

impl Identity {
    /// Generates a fresh account and device key, and certifies the device.
    pub fn generate(now_ms: u64) -> Result<Self, KeystoreError> {
        let account_key = SigningKey::from_bytes(&Zeroizing::new(random_bytes::<32>()?));
        let device_key = SigningKey::from_bytes(&Zeroizing::new(random_bytes::<32>()?));
        let cert = DeviceCert::issue(&account_key, DeviceId(device_key.verifying_key().to_bytes()), now_ms);
        Ok(Self { account_key: Some(account_key), device_key, cert })
    }

    /// A device's identity without the account key: what a new device's keystore holds. The
    /// certificate must be for `device_key` and signed by the account.
    pub fn device_only(device_key: SigningKey, cert: DeviceCert) -> Result<Self, KeystoreError> {
        if cert.device.0 != device_key.verifying_key().to_bytes() {
            return Err(KeystoreError::Inconsistent("certificate is for another device key"));
        }
        cert.verify().map_err(|_| KeystoreError::Inconsistent("certificate signature"))?;
        Ok(Self { account_key: None, device_key, cert })
    }

    /// The account key, or a refusal saying where to run an account operation.
    pub fn require_account_key(&self) -> Result<&SigningKey, KeystoreError> {
        self.account_key.as_ref().ok_or(KeystoreError::NoAccountKey)
    }

    /// The account id.
    pub fn account(&self) -> AccountId {
        self.cert.account
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.cert.device
    }

    fn plaintext(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::with_capacity(200);
        w.u8(CONTENT_VERSION);
        match &self.account_key {
            Some(k) => {
                w.u8(1);
                w.raw(k.as_bytes());
            }
            None => w.u8(0),
        }
        w.raw(self.device_key.as_bytes());
        self.cert.encode_to(&mut w);
        Zeroizing::new(w.finish())
    }

    fn from_plaintext(bytes: &[u8]) -> Result<Self, KeystoreError> {
        let mut r = Reader::new(bytes);
        let has_account_key = match r.u8("keystore content version")? {
            1 => true,
            CONTENT_VERSION => match r.u8("account_key flag")? {
                0 => false,
                1 => true,
                _ => {
                    return Err(DecodeError::NonCanonical {
                        field: "account_key flag",
                        reason: "not 0 or 1",
                    }
                    .into());
                }
            },
            _ => {
                return Err(
                    DecodeError::Invalid { field: "keystore content", reason: "unknown version" }.into()
                );
            }
        };
        let account_key = if has_account_key {
            Some(SigningKey::from_bytes(&Zeroizing::new(r.array::<32>("account_key")?)))
        } else {
            None
        };
        let device_key = SigningKey::from_bytes(&Zeroizing::new(r.array::<32>("device_key")?));
        let cert = DeviceCert::decode_from(&mut r)?;
        r.finish()?;
        if account_key.as_ref().is_some_and(|k| cert.account.0 != k.verifying_key().to_bytes())
            || cert.device.0 != device_key.verifying_key().to_bytes()
        {
            return Err(KeystoreError::Inconsistent("certificate does not match the keys"));
        }
        cert.verify().map_err(|_| KeystoreError::Inconsistent("certificate signature"))?;
        Ok(Self { account_key, device_key, cert })
    }

    /// Encrypts the identity under a passphrase into keystore bytes.
    pub fn seal(&self, passphrase: &[u8], kdf: KdfParams) -> Result<Vec<u8>, KeystoreError> {
        let salt = random_bytes::<16>()?;
        let nonce = random_bytes::<24>()?;
        let mut header = Writer::with_capacity(HEADER_BYTES);
        header.raw(MAGIC);
        header.u8(VERSION);
        header.u32(kdf.m_cost_kib);
        header.u32(kdf.t_cost);
        header.u32(kdf.p_cost);
        header.raw(&salt);
        header.raw(&nonce);
        let header = header.finish();
        let key = derive_key(passphrase, &salt, kdf)?;
        let cipher = XChaCha20Poly1305::new((&*key).into());
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &self.plaintext(), aad: &header })
            .map_err(|_| KeystoreError::Kdf("encryption failed".into()))?;
        let mut w = Writer::with_capacity(header.len() + 4 + ct.len());
        w.raw(&header);
        w.bytes(&ct);
        Ok(w.finish())
    }

    /// Decrypts keystore bytes. Bounded: size, KDF costs and lengths are checked first.
    pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Self, KeystoreError> {
        if bytes.len() > KEYSTORE_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "keystore",
                len: bytes.len() as u64,
                max: KEYSTORE_BYTES_MAX as u64,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        if r.array::<8>("magic")? != *MAGIC {
            return Err(DecodeError::Invalid { field: "magic", reason: "not a Cairn keystore" }.into());
        }
        r.version("keystore", VERSION)?;
        let kdf =
            KdfParams { m_cost_kib: r.u32("m_cost")?, t_cost: r.u32("t_cost")?, p_cost: r.u32("p_cost")? };
        if kdf.m_cost_kib > KDF_M_COST_KIB_MAX || kdf.t_cost > KDF_T_COST_MAX || kdf.p_cost > 16 {
            return Err(DecodeError::Invalid { field: "kdf", reason: "cost parameters out of range" }.into());
        }
        let salt = r.array::<16>("salt")?;
        let nonce = r.array::<24>("nonce")?;
        let header = &bytes[..r.position()];
        let ct = r.bytes(KEYSTORE_BYTES_MAX, "ciphertext")?;
        r.finish()?;
        let key = derive_key(passphrase, &salt, kdf)?;
        let cipher = XChaCha20Poly1305::new((&*key).into());
        let mut pt = cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: ct, aad: header })
            .map_err(|_| KeystoreError::Decrypt)?;
        let out = Self::from_plaintext(&pt);
        pt.zeroize();
        out
    }

    /// Writes a new keystore file (mode 0600) atomically and durably; refuses to overwrite.
    pub fn create_file(&self, path: &Path, passphrase: &[u8], kdf: KdfParams) -> Result<(), KeystoreError> {
        if path.exists() {
            return Err(KeystoreError::Exists(path.display().to_string()));
        }
        let bytes = self.seal(passphrase, kdf)?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        let mut f =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        // A hard link fails if the target appeared meanwhile: no overwrite even under a race.
        fs::hard_link(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeystoreError::Exists(path.display().to_string())
            } else {
                KeystoreError::Io { path: path.display().to_string(), source: e }
            }
        })?;
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(())
    }

    /// Reads and decrypts a keystore file.
    pub fn open_file(path: &Path, passphrase: &[u8]) -> Result<Self, KeystoreError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        if meta.len() > KEYSTORE_BYTES_MAX as u64 {
            return Err(DecodeError::TooLarge {
                field: "keystore",
                len: meta.len(),
                max: KEYSTORE_BYTES_MAX as u64,
            }
            .into());
        }
        let bytes = fs::read(path).map_err(io_err(path))?;
        Self::open(&bytes, passphrase)
    }
}

pub(crate) fn derive_key(
    passphrase: &[u8],
    salt: &[u8; 16],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, KeystoreError> {
    let params = Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|e| KeystoreError::Kdf(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut *key)
        .map_err(|e| KeystoreError::Kdf(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FAST: KdfParams = KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 };

    #[test]
    fn seal_open_round_trip() {
        let id = Identity::generate(5).unwrap();
        let bytes = id.seal(b"pw", FAST).unwrap();
        let back = Identity::open(&bytes, b"pw").unwrap();
        assert_eq!(back.account(), id.account());
        assert_eq!(back.device_key.to_bytes(), id.device_key.to_bytes());
        assert!(matches!(Identity::open(&bytes, b"wrong"), Err(KeystoreError::Decrypt)));
    }

    #[test]
    fn a_device_only_keystore_holds_no_account_key() {
        let primary = Identity::generate(5).unwrap();
        let account_key = primary.require_account_key().unwrap();
        let device_key = SigningKey::from_bytes(&[9; 32]);
        let cert = DeviceCert::issue(account_key, DeviceId(device_key.verifying_key().to_bytes()), 6);
        let id = Identity::device_only(device_key, cert).unwrap();
        let back = Identity::open(&id.seal(b"pw", FAST).unwrap(), b"pw").unwrap();
        assert!(back.account_key.is_none(), "the account key never reaches the new device");
        assert_eq!(back.account(), primary.account());
        assert_eq!(back.device_key.to_bytes(), [9; 32]);
        let refusal = back.require_account_key().unwrap_err();
        assert!(refusal.to_string().contains("on the device that holds it"), "{refusal}");
        // a certificate for another key is refused
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(Identity::device_only(other, cert), Err(KeystoreError::Inconsistent(_))));
    }

    #[test]
    fn a_version_1_keystore_content_still_opens_with_its_account_key() {
        let id = Identity::generate(5).unwrap();
        let mut w = Writer::with_capacity(200);
        w.u8(1);
        w.raw(id.require_account_key().unwrap().as_bytes());
        w.raw(id.device_key.as_bytes());
        id.cert.encode_to(&mut w);
        let back = Identity::from_plaintext(&w.finish()).unwrap();
        assert_eq!(
            back.require_account_key().unwrap().to_bytes(),
            id.require_account_key().unwrap().to_bytes()
        );
    }

    #[test]
    fn every_byte_change_and_truncation_is_refused() {
        let id = Identity::generate(5).unwrap();
        let bytes = id.seal(b"pw", FAST).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(Identity::open(&b, b"pw").is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(Identity::open(&bytes[..n], b"pw").is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn crafted_kdf_costs_are_refused_before_work() {
        let id = Identity::generate(5).unwrap();
        let mut bytes = id.seal(b"pw", FAST).unwrap();
        bytes[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = Identity::open(&bytes, b"pw").unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        let id = Identity::generate(5).unwrap();
        id.create_file(&path, b"pw", FAST).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = fs::read(&path).unwrap();
        let other = Identity::generate(6).unwrap();
        assert!(matches!(other.create_file(&path, b"pw", FAST), Err(KeystoreError::Exists(_))));
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(Identity::open_file(&path, b"pw").unwrap().account(), id.account());
    }
}
