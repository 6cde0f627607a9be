//! Key packages: published in signed batches, each used once, with a last-resort package.
//!
//! A device publishes a [`KeyPackageBatch`]: a versioned, bounded list of MLS key packages
//! signed by its device key (whose certificate is the leaf credential). Whoever fetches one
//! checks it with [`verify_key_package`], which verifies the MLS signatures and the device
//! certificate chain back to the account key. [`KeyPackagePool`] is the transport-free
//! bookkeeping of a key-package directory (a mailbox or a client cache): each one-time package is
//! handed out once, after which the device's last-resort package is handed out (RFC 9420 §16.8).

use std::collections::BTreeMap;

use cairn_proto::codec::{Reader, Writer};
use cairn_proto::{DecodeError, DeviceCert, DeviceId};
use openmls::prelude::{Capabilities, ExtensionType, KeyPackage, KeyPackageIn, Lifetime, ProtocolVersion};
use openmls_rust_crypto::RustCrypto;
use thiserror::Error;
use tls_codec::{DeserializeBytes as _, Serialize as _};

use crate::CIPHERSUITE;
use crate::credential::{CredentialError, verify_credential};

/// Format version of [`KeyPackageBatch`].
pub const KEY_PACKAGE_BATCH_VERSION: u8 = 1;
/// Most key packages in one batch.
pub const KEY_PACKAGES_PER_BATCH_MAX: usize = 256;
/// Largest encoded key package accepted, in bytes.
pub const KEY_PACKAGE_BYTES_MAX: usize = 4096;
/// The capabilities every Cairn leaf lists: last-resort key packages, the key-package expiry,
/// the policy pin and the anchor salt. A Cairn group context holds the salt, so a leaf that
/// does not list it cannot join.
pub fn leaf_capabilities() -> Capabilities {
    let expiry = ExtensionType::Unknown(EXPIRY_EXTENSION_TYPE);
    let policy = ExtensionType::Unknown(crate::policy_ext::POLICY_EXTENSION_TYPE);
    let salt = ExtensionType::Unknown(crate::anchor_salt::ANCHOR_SALT_EXTENSION_TYPE);
    Capabilities::builder().extensions(vec![ExtensionType::LastResort, expiry, policy, salt]).build()
}

/// Key-package extension (RFC 9420 §17.3 private-use range) carrying Cairn's expiry of the
/// package, `not_after_ms: u64` big-endian, signed with it. The committer checks it against
/// its own clock when it stages an Add; no other member does.
pub const EXPIRY_EXTENSION_TYPE: u16 = 0xF0CA;

/// The MLS lifetime of Cairn key packages: valid at any time. OpenMLS checks a key package's
/// lifetime against each member's system clock when it processes an Add, so a finite lifetime
/// lets members with different clocks decide differently about the same sequenced commit (a
/// split group). Expiry is Cairn's [`EXPIRY_EXTENSION_TYPE`] instead, checked by the committer
/// alone, before the commit is sequenced.
pub fn clock_free_lifetime() -> Lifetime {
    Lifetime::init(0, u64::MAX)
}

/// Why a key package was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyPackageError {
    /// The bytes are not a key package.
    #[error("malformed key package: {0}")]
    Malformed(String),
    /// The MLS signatures, version, lifetime or extensions are invalid.
    #[error("invalid key package: {0}")]
    Invalid(String),
    /// Not Cairn's ciphersuite.
    #[error("key package uses an unsupported ciphersuite")]
    Ciphersuite,
    /// Its MLS lifetime is finite: members would judge it by their own clocks (see
    /// [`clock_free_lifetime`]); refused when staging an Add.
    #[error("key package lifetime depends on the clock")]
    ClockDependentLifetime,
    /// Past its Cairn expiry ([`EXPIRY_EXTENSION_TYPE`]) at the committer's time.
    #[error("key package expired at {not_after_ms} ms")]
    Expired {
        /// Its expiry.
        not_after_ms: u64,
    },
    /// The credential does not chain back to an account.
    #[error("key package credential refused: {0}")]
    Credential(#[from] CredentialError),
    /// A batch mixes packages of several devices.
    #[error("key package batch mixes devices")]
    MixedDevices,
    /// The batch encoding is wrong.
    #[error("key package batch: {0}")]
    Batch(#[from] DecodeError),
}

/// A key package whose signatures and device certificate chain were checked.
#[derive(Debug, Clone)]
pub struct VerifiedKeyPackage {
    /// The certificate of the device that will own the leaf.
    pub cert: DeviceCert,
    /// Whether this is the device's last-resort package (reusable).
    pub last_resort: bool,
    /// Cairn's expiry ([`EXPIRY_EXTENSION_TYPE`]), if the package carries one.
    pub not_after_ms: Option<u64>,
    pub(crate) package: KeyPackage,
    bytes: Vec<u8>,
}

impl VerifiedKeyPackage {
    /// The encoded key package.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether its MLS lifetime holds at any clock ([`clock_free_lifetime`]).
    pub fn clock_free(&self) -> bool {
        *self.package.life_time() == clock_free_lifetime()
    }

    /// The committer's check before an Add is staged: clock-free MLS lifetime, and not past
    /// its Cairn expiry at `now_ms`.
    pub fn check_addable(&self, now_ms: u64) -> Result<(), KeyPackageError> {
        if !self.clock_free() {
            return Err(KeyPackageError::ClockDependentLifetime);
        }
        match self.not_after_ms {
            Some(not_after_ms) if not_after_ms <= now_ms => Err(KeyPackageError::Expired { not_after_ms }),
            _ => Ok(()),
        }
    }
}

/// Decodes and checks one key package: MLS validity (signatures, version, lifetime,
/// capabilities), Cairn's ciphersuite, and the device certificate chain of its leaf.
pub fn verify_key_package(bytes: &[u8]) -> Result<VerifiedKeyPackage, KeyPackageError> {
    if bytes.len() > KEY_PACKAGE_BYTES_MAX {
        return Err(KeyPackageError::Malformed(format!(
            "{} bytes is over the limit of {KEY_PACKAGE_BYTES_MAX}",
            bytes.len()
        )));
    }
    let kp_in = KeyPackageIn::tls_deserialize_exact_bytes(bytes)
        .map_err(|e| KeyPackageError::Malformed(e.to_string()))?;
    let package = kp_in
        .validate(&RustCrypto::default(), ProtocolVersion::Mls10)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    if package.ciphersuite() != CIPHERSUITE {
        return Err(KeyPackageError::Ciphersuite);
    }
    let not_after_ms = match package.extensions().unknown(EXPIRY_EXTENSION_TYPE) {
        Some(ext) => Some(<[u8; 8]>::try_from(ext.0.as_slice()).map(u64::from_be_bytes).map_err(|_| {
            KeyPackageError::Invalid(format!("expiry extension of {} bytes (8 expected)", ext.0.len()))
        })?),
        None => None,
    };
    let leaf = package.leaf_node();
    let cert = verify_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    let salt = ExtensionType::Unknown(crate::anchor_salt::ANCHOR_SALT_EXTENSION_TYPE);
    if !leaf.capabilities().extensions().contains(&salt) {
        return Err(KeyPackageError::Invalid(
            "made by a Cairn version without anchor salts (its leaf does not list extension 0xF0C8): it \
             cannot join a conversation created now; its owner updates Cairn and publishes new key packages"
                .into(),
        ));
    }
    Ok(VerifiedKeyPackage {
        cert,
        last_resort: package.last_resort(),
        not_after_ms,
        package,
        bytes: bytes.to_vec(),
    })
}

pub(crate) fn encode_key_package(kp: &KeyPackage) -> Result<Vec<u8>, KeyPackageError> {
    kp.tls_serialize_detached().map_err(|e| KeyPackageError::Malformed(e.to_string()))
}

/// Domain of [`KeyPackageBatch::ledger_hash`].
pub const KEY_PACKAGE_BATCH_HASH_DOMAIN: &str = "cairn 2026-12 key package batch hash v1";

/// A batch of key packages as a device publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageBatch {
    /// Encoded key packages (MLS `KeyPackage` structures).
    pub packages: Vec<Vec<u8>>,
}

impl KeyPackageBatch {
    /// Canonical encoding: `version:u8 count:u16 (len:u32 bytes)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(3 + self.packages.iter().map(|p| 4 + p.len()).sum::<usize>());
        w.u8(KEY_PACKAGE_BATCH_VERSION);
        w.u16(u16::try_from(self.packages.len()).unwrap_or(u16::MAX));
        for p in &self.packages {
            w.bytes(p);
        }
        w.finish()
    }

    /// The hash a device records on the ledger (`PublishKeyPackages.batch_hash`) for the batch
    /// whose canonical bytes ([`Self::encode`], equal to the published message body) are
    /// `bytes`: BLAKE3 in derive-key mode under [`KEY_PACKAGE_BATCH_HASH_DOMAIN`].
    pub fn ledger_hash(bytes: &[u8]) -> [u8; 32] {
        cairn_proto::id::hash(KEY_PACKAGE_BATCH_HASH_DOMAIN, bytes)
    }

    /// Decodes a batch (structure and bounds only; verify each package before use).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("key package batch", KEY_PACKAGE_BATCH_VERSION)?;
        let count = r.count(KEY_PACKAGES_PER_BATCH_MAX, "batch.count")?;
        let mut packages = Vec::with_capacity(count);
        for _ in 0..count {
            packages.push(r.bytes(KEY_PACKAGE_BYTES_MAX, "batch.package")?.to_vec());
        }
        r.finish()?;
        Ok(Self { packages })
    }

    /// Decodes and verifies every package; all must belong to one device.
    pub fn verify(bytes: &[u8]) -> Result<Vec<VerifiedKeyPackage>, KeyPackageError> {
        let batch = Self::decode(bytes)?;
        let mut out: Vec<VerifiedKeyPackage> = Vec::with_capacity(batch.packages.len());
        for p in &batch.packages {
            let v = verify_key_package(p)?;
            if out.first().is_some_and(|f| f.cert != v.cert) {
                return Err(KeyPackageError::MixedDevices);
            }
            out.push(v);
        }
        Ok(out)
    }
}

#[derive(Debug, Default)]
struct DevicePackages {
    one_time: Vec<VerifiedKeyPackage>,
    last_resort: Option<VerifiedKeyPackage>,
}

/// Transport-free key-package directory: hands each one-time package out once, then the
/// device's last-resort package.
#[derive(Debug, Default)]
pub struct KeyPackagePool {
    devices: BTreeMap<DeviceId, DevicePackages>,
}

impl KeyPackagePool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies a published batch and adds its packages. A new last-resort package replaces
    /// the previous one. Returns how many packages were added.
    pub fn publish(&mut self, batch: &[u8]) -> Result<usize, KeyPackageError> {
        let packages = KeyPackageBatch::verify(batch)?;
        let n = packages.len();
        for p in packages {
            let entry = self.devices.entry(p.cert.device).or_default();
            if p.last_resort {
                entry.last_resort = Some(p);
            } else {
                entry.one_time.push(p);
            }
        }
        Ok(n)
    }

    /// The next package of `device`: a one-time package (removed from the pool) or, when none
    /// is left, the last-resort package (kept).
    pub fn take(&mut self, device: &DeviceId) -> Option<VerifiedKeyPackage> {
        let entry = self.devices.get_mut(device)?;
        if entry.one_time.is_empty() { entry.last_resort.clone() } else { Some(entry.one_time.remove(0)) }
    }

    /// One package for each device of `account`.
    pub fn take_account(&mut self, account: &cairn_proto::AccountId) -> Vec<VerifiedKeyPackage> {
        let devices: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, p)| {
                p.one_time.first().or(p.last_resort.as_ref()).is_some_and(|k| k.cert.account == *account)
            })
            .map(|(d, _)| *d)
            .collect();
        devices.iter().filter_map(|d| self.take(d)).collect()
    }

    /// One-time packages of `device` not yet handed out.
    pub fn remaining(&self, device: &DeviceId) -> usize {
        self.devices.get(device).map_or(0, |p| p.one_time.len())
    }
}
