//! Account and device identities: public keys, device certificates, text forms, fingerprints.
//!
//! An account is an Ed25519 identity key. Each device has its own Ed25519 signing key, certified
//! by the account key with a [`DeviceCert`]. Everything a peer sends is signed by a device key
//! whose certificate chains back to the account key.

use std::fmt;

use bech32::{Bech32m, Hrp};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::id::domain;

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The 32 bytes are not a valid Ed25519 public key.
    #[error("{what} is not a valid Ed25519 public key")]
    BadKey {
        /// Which key.
        what: &'static str,
    },
    /// The signature does not verify under the key.
    #[error("{what} signature does not verify")]
    BadSignature {
        /// Which signature.
        what: &'static str,
    },
}

macro_rules! public_key_type {
    ($name:ident, $hrp:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Human-readable prefix of the text form.
            pub const HRP: &'static str = $hrp;

            /// The Ed25519 verifying key, if these bytes are a valid point.
            pub fn verifying_key(&self) -> Result<VerifyingKey, SignatureError> {
                VerifyingKey::from_bytes(&self.0)
                    .map_err(|_| SignatureError::BadKey { what: stringify!($name) })
            }

            /// Checksummed text form (bech32m), e.g. `cairn1…`.
            pub fn to_text(&self) -> String {
                match Hrp::parse($hrp) {
                    Ok(hrp) => bech32::encode::<Bech32m>(hrp, &self.0).unwrap_or_default(),
                    Err(_) => String::new(),
                }
            }

            /// Parses the text form; a typo fails the checksum.
            pub fn from_text(s: &str) -> Result<Self, IdTextError> {
                let (hrp, data) = bech32::decode(s).map_err(|_| IdTextError::Checksum)?;
                if hrp.as_str() != $hrp {
                    return Err(IdTextError::WrongKind { expected: $hrp, found: hrp.as_str().to_string() });
                }
                let bytes: [u8; 32] = data.try_into().map_err(|_| IdTextError::Length)?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_text())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let t = self.to_text();
                write!(f, "{}({}…)", stringify!($name), &t[..t.len().min(16)])
            }
        }
    };
}

public_key_type!(AccountId, "cairn", "An account: its Ed25519 identity public key.");
public_key_type!(DeviceId, "cairndev", "A device: its Ed25519 signing public key.");

/// Why an id in text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdTextError {
    /// Not bech32m or the checksum failed (a typo).
    #[error("not a valid id: checksum or character set is wrong (check for a typo)")]
    Checksum,
    /// A valid id of another kind.
    #[error("expected an id starting with `{expected}1`, found `{found}1…`")]
    WrongKind {
        /// Expected prefix.
        expected: &'static str,
        /// Prefix found.
        found: String,
    },
    /// Wrong number of bytes.
    #[error("id has the wrong length")]
    Length,
}

impl AccountId {
    /// Short decimal fingerprint for out-of-band comparison, six groups of five digits
    /// (like a safety number): two people read them aloud and compare.
    pub fn fingerprint(&self) -> String {
        let h = blake3::derive_key(domain::FINGERPRINT, &self.0);
        let groups: Vec<String> = h
            .chunks(5)
            .take(6)
            .map(|c| {
                let mut v: u64 = 0;
                for b in c {
                    v = (v << 8) | u64::from(*b);
                }
                format!("{:05}", v % 100_000)
            })
            .collect();
        groups.join(" ")
    }
}

/// Encoded size of a [`DeviceCert`].
pub const DEVICE_CERT_BYTES: usize = 1 + 32 + 32 + 8 + 64;
const DEVICE_CERT_VERSION: u8 = 1;

/// A device certificate: the account key vouches for a device key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct DeviceCert {
    /// The certifying account.
    pub account: AccountId,
    /// The certified device key.
    pub device: DeviceId,
    /// When the certificate was made (Unix ms).
    pub created_at_ms: u64,
    /// Account key's signature over the fields above.
    pub signature: [u8; 64],
}

impl DeviceCert {
    fn signed_bytes(account: &AccountId, device: &DeviceId, created_at_ms: u64) -> Vec<u8> {
        let mut w = Writer::with_capacity(96);
        w.raw(domain::DEVICE_CERT_SIG);
        w.u8(DEVICE_CERT_VERSION);
        w.raw(&account.0);
        w.raw(&device.0);
        w.u64(created_at_ms);
        w.finish()
    }

    /// Certifies `device` with the account signing key.
    pub fn issue(account_key: &SigningKey, device: DeviceId, created_at_ms: u64) -> Self {
        let account = AccountId(account_key.verifying_key().to_bytes());
        let sig = account_key.sign(&Self::signed_bytes(&account, &device, created_at_ms));
        Self { account, device, created_at_ms, signature: sig.to_bytes() }
    }

    /// Checks the account's signature (strict Ed25519: no malleable or small-order keys).
    pub fn verify(&self) -> Result<(), SignatureError> {
        let vk = self.account.verifying_key()?;
        self.device.verifying_key()?;
        let msg = Self::signed_bytes(&self.account, &self.device, self.created_at_ms);
        vk.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| SignatureError::BadSignature { what: "device certificate" })
    }

    /// Canonical encoding.
    pub fn encode_to(&self, w: &mut Writer) {
        w.u8(DEVICE_CERT_VERSION);
        w.raw(&self.account.0);
        w.raw(&self.device.0);
        w.u64(self.created_at_ms);
        w.raw(&self.signature);
    }

    /// Canonical encoding as a fresh buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(DEVICE_CERT_BYTES);
        self.encode_to(&mut w);
        w.finish()
    }

    /// Reads a certificate (structure only; call [`DeviceCert::verify`] before trusting it).
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("device certificate", DEVICE_CERT_VERSION)?;
        Ok(Self {
            account: AccountId(r.array("cert.account")?),
            device: DeviceId(r.array("cert.device")?),
            created_at_ms: r.u64("cert.created_at_ms")?,
            signature: r.array("cert.signature")?,
        })
    }

    /// Decodes exactly one certificate.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let c = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn cert_verifies_and_any_change_breaks_it() {
        let dev = DeviceId(key(2).verifying_key().to_bytes());
        let cert = DeviceCert::issue(&key(1), dev, 1_700_000_000_000);
        cert.verify().unwrap();
        let back = DeviceCert::decode(&cert.encode()).unwrap();
        assert_eq!(back, cert);
        let mut bad = cert;
        bad.created_at_ms += 1;
        assert_eq!(bad.verify(), Err(SignatureError::BadSignature { what: "device certificate" }));
        let mut forged = cert;
        forged.account = AccountId(key(3).verifying_key().to_bytes());
        assert!(forged.verify().is_err());
    }

    #[test]
    fn text_form_round_trips_and_catches_typos() {
        let a = AccountId(key(1).verifying_key().to_bytes());
        let t = a.to_text();
        assert!(t.starts_with("cairn1"));
        assert_eq!(AccountId::from_text(&t).unwrap(), a);
        let mut typo: Vec<char> = t.chars().collect();
        let i = typo.len() - 3;
        typo[i] = if typo[i] == 'q' { 'p' } else { 'q' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(AccountId::from_text(&typo), Err(IdTextError::Checksum));
        let d = DeviceId(a.0);
        assert!(matches!(AccountId::from_text(&d.to_text()), Err(IdTextError::WrongKind { .. })));
    }

    #[test]
    fn fingerprint_is_stable_and_distinct() {
        let a = AccountId(key(1).verifying_key().to_bytes());
        let b = AccountId(key(2).verifying_key().to_bytes());
        assert_eq!(a.fingerprint(), a.fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 6 * 5 + 5);
    }
}
