//! This device's key packages: batches to publish, what is left, replenishing.

use openmls::prelude::{Extension, Extensions, KeyPackage, UnknownExtension};
use openmls_traits::OpenMlsProvider as _;

use super::{Client, MlsError};
use crate::CIPHERSUITE;
use crate::keypackage::{EXPIRY_EXTENSION_TYPE, KeyPackageBatch, clock_free_lifetime, encode_key_package};

pub(super) const KP_PREFIX: &[u8] = b"cairn.keypackage\0";

impl Client {
    /// [`Client::key_package_batch_at`] at the system clock's time.
    pub fn key_package_batch(&self, count: usize, last_resort: bool) -> Result<KeyPackageBatch, MlsError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.key_package_batch_at(count, last_resort, now_ms)
    }

    /// Makes `count` one-time key packages and, if `last_resort`, one last-resort package; their
    /// private keys are stored, the batch is what the device publishes. Each expires
    /// [`Config::key_package_lifetime_s`](super::Config::key_package_lifetime_s) after `now_ms`
    /// (Cairn's expiry extension, checked by a committer; the MLS lifetime is
    /// [`clock_free_lifetime`], so no member's clock decides a sequenced Add).
    pub fn key_package_batch_at(
        &self,
        count: usize,
        last_resort: bool,
        now_ms: u64,
    ) -> Result<KeyPackageBatch, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let not_after_ms = now_ms.saturating_add(self.config.key_package_lifetime_s.saturating_mul(1000));
        let expiry =
            Extension::Unknown(EXPIRY_EXTENSION_TYPE, UnknownExtension(not_after_ms.to_be_bytes().to_vec()));
        let extensions = Extensions::single(expiry)
            .map_err(|e| MlsError::Operation { op: "key package extensions", reason: e.to_string() })?;
        let mut packages = Vec::with_capacity(count + 1);
        for i in 0..count + usize::from(last_resort) {
            let mut b = KeyPackage::builder()
                .key_package_lifetime(clock_free_lifetime())
                .key_package_extensions(extensions.clone())
                .leaf_node_capabilities(Self::capabilities());
            if i == count {
                b = b.mark_as_last_resort();
            }
            let bundle = b
                .build(CIPHERSUITE, &self.provider, &self.signer, self.signer.credential_with_key())
                .map_err(|e| {
                    self.provider.storage().discard();
                    MlsError::Operation { op: "build key package", reason: e.to_string() }
                })?;
            // Remember where its private part is stored, to count what is left unused.
            let hash_ref = bundle.key_package().hash_ref(self.provider.crypto()).map_err(|e| {
                self.provider.storage().discard();
                MlsError::Operation { op: "key package reference", reason: e.to_string() }
            })?;
            let mut k = KP_PREFIX.to_vec();
            k.extend_from_slice(hash_ref.as_slice());
            let mut v = vec![u8::from(i == count)];
            v.extend_from_slice(&self.provider.storage().key(crate::storage::KEY_PACKAGE, &hash_ref)?);
            self.provider.storage().raw_put(k, v);
            packages.push(encode_key_package(bundle.key_package())?);
        }
        self.provider.storage().flush()?;
        Ok(KeyPackageBatch { packages })
    }

    /// Published one-time key packages of this device not consumed by a Welcome yet.
    pub fn key_packages_remaining(&self) -> Result<usize, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let storage = self.provider.storage();
        let mut left = 0;
        for (k, v) in storage.raw_scan(KP_PREFIX)? {
            let Some((&last_resort, stored)) = v.split_first() else { continue };
            if last_resort != 0 {
                continue;
            }
            if storage.raw_get(stored)?.is_some() {
                left += 1;
            } else {
                storage.raw_del(k);
            }
        }
        storage.flush()?;
        Ok(left)
    }

    /// Replenishes published key packages: below `low_water` unused one-time packages, makes
    /// a batch bringing them back to `target` (with a last-resort package if none was made
    /// yet). `None` when enough are left.
    pub fn replenish_key_packages(
        &self,
        low_water: usize,
        target: usize,
    ) -> Result<Option<KeyPackageBatch>, MlsError> {
        let left = self.key_packages_remaining()?;
        if left >= low_water {
            return Ok(None);
        }
        let has_last_resort =
            self.provider.storage().raw_scan(KP_PREFIX)?.iter().any(|(_, v)| v.first() == Some(&1));
        self.key_package_batch(target.saturating_sub(left), !has_last_resort).map(Some)
    }
}
