//! This device's key packages: batches to publish, what is left, replenishing.

use openmls::prelude::{KeyPackage, Lifetime};
use openmls_traits::OpenMlsProvider as _;

use super::{Client, MlsError};
use crate::CIPHERSUITE;
use crate::keypackage::{KeyPackageBatch, encode_key_package};

pub(super) const KP_PREFIX: &[u8] = b"cairn.keypackage\0";

impl Client {
    /// Makes `count` one-time key packages and, if `last_resort`, one last-resort package; their
    /// private keys are stored, the batch is what the device publishes.
    pub fn key_package_batch(&self, count: usize, last_resort: bool) -> Result<KeyPackageBatch, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let mut packages = Vec::with_capacity(count + 1);
        for i in 0..count + usize::from(last_resort) {
            let mut b = KeyPackage::builder()
                .key_package_lifetime(Lifetime::new(self.config.key_package_lifetime_s))
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
