//! Device credentials: the MLS identity of a leaf is its account-signed [`DeviceCert`].
//!
//! A leaf's credential is a `BasicCredential` whose identity is the encoded device certificate,
//! and its MLS signature key is the device's Ed25519 key itself. Accepting a leaf (in a key
//! package, a Welcome's tree or a commit) means: the certificate decodes, the account's
//! signature on it verifies, and the leaf's signature key equals the certified device key. So
//! every leaf chains back to an account key.

use cairn_proto::identity::SignatureError;
use cairn_proto::{AccountId, DecodeError, DeviceCert, DeviceId};
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, Credential, CredentialType, CredentialWithKey, SignaturePublicKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use thiserror::Error;

/// Why a leaf's credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// Not a basic credential.
    #[error("credential is not a basic credential carrying a device certificate")]
    WrongType,
    /// The identity bytes are not a device certificate.
    #[error("credential identity is not a device certificate: {0}")]
    Decode(#[from] DecodeError),
    /// The account's signature on the certificate does not verify.
    #[error("device certificate chain is broken: {0}")]
    Chain(#[from] SignatureError),
    /// The leaf signs with another key than the certified device key.
    #[error("leaf signature key is not the certified device key")]
    KeyMismatch,
}

/// Checks a leaf's credential and signature key; returns the certificate it carries.
pub fn verify_credential(
    credential: &Credential,
    signature_key: &[u8],
) -> Result<DeviceCert, CredentialError> {
    if credential.credential_type() != CredentialType::Basic {
        return Err(CredentialError::WrongType);
    }
    let cert = DeviceCert::decode(credential.serialized_content())?;
    cert.verify()?;
    if cert.device.0.as_slice() != signature_key {
        return Err(CredentialError::KeyMismatch);
    }
    Ok(cert)
}

/// Reads the certificate of an already-verified leaf credential (no signature check).
pub(crate) fn cert_of(credential: &Credential) -> Option<DeviceCert> {
    DeviceCert::decode(credential.serialized_content()).ok()
}

/// A device's MLS signer: its Ed25519 device key and the account's certificate for it.
pub struct DeviceSigner {
    key: SigningKey,
    cert: DeviceCert,
}

impl std::fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSigner").field("device", &self.cert.device).finish_non_exhaustive()
    }
}

impl DeviceSigner {
    /// Pairs the device key with its certificate, checking that the certificate verifies and
    /// certifies this key.
    pub fn new(device_key: SigningKey, cert: DeviceCert) -> Result<Self, CredentialError> {
        cert.verify()?;
        if cert.device.0 != device_key.verifying_key().to_bytes() {
            return Err(CredentialError::KeyMismatch);
        }
        Ok(Self { key: device_key, cert })
    }

    /// The secret this device's MLS state is sealed under at rest.
    pub(crate) fn storage_secret(&self) -> [u8; 32] {
        blake3::derive_key("cairn 2026-12 mls storage secret v1", &self.key.to_bytes())
    }

    /// The device certificate.
    pub fn cert(&self) -> &DeviceCert {
        &self.cert
    }

    /// The device id (its public key).
    pub fn device(&self) -> DeviceId {
        self.cert.device
    }

    /// The account this device belongs to.
    pub fn account(&self) -> AccountId {
        self.cert.account
    }

    /// The credential and signature key this device's leaves carry.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.cert.encode()).into(),
            signature_key: SignaturePublicKey::from(self.cert.device.0.to_vec()),
        }
    }
}

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
