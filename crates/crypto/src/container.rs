//! A passphrase-sealed container for bulk data (export archives):
//! ```text
//! magic:"CAIRNARC" version:u8 m_cost_kib:u32 t_cost:u32 p_cost:u32 salt:[16] nonce:[24]
//! ciphertext (XChaCha20-Poly1305, key = Argon2id(passphrase, salt), header as AAD)
//! ```
//! Bounded on read: the size first, then the KDF costs, before any work.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::keystore::{KDF_M_COST_KIB_MAX, KDF_T_COST_MAX, KdfParams, KeystoreError, derive_key};

const MAGIC: &[u8; 8] = b"CAIRNARC";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 8 + 1 + 12 + 16 + 24;
/// Largest container opened or written, bytes.
pub const CONTAINER_BYTES_MAX: usize = 1 << 30;

fn random<const N: usize>() -> Result<[u8; N], KeystoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeystoreError::Random(e.to_string()))?;
    Ok(b)
}

/// Seals `plain` under `passphrase`.
pub fn seal(plain: &[u8], passphrase: &[u8], kdf: KdfParams) -> Result<Vec<u8>, KeystoreError> {
    if plain.len() + HEADER_BYTES + 16 > CONTAINER_BYTES_MAX {
        return Err(KeystoreError::Kdf(format!("archive larger than {CONTAINER_BYTES_MAX} bytes")));
    }
    let salt = random::<16>()?;
    let nonce = random::<24>()?;
    let mut out = Vec::with_capacity(HEADER_BYTES + plain.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&kdf.m_cost_kib.to_be_bytes());
    out.extend_from_slice(&kdf.t_cost.to_be_bytes());
    out.extend_from_slice(&kdf.p_cost.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = derive_key(passphrase, &salt, kdf)?;
    let ct = XChaCha20Poly1305::new((&*key).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &out })
        .map_err(|_| KeystoreError::Decrypt)?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a container; a wrong passphrase or any changed byte is [`KeystoreError::Decrypt`].
pub fn open(bytes: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    use cairn_proto::codec::DecodeError;
    if bytes.len() > CONTAINER_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            field: "archive",
            len: bytes.len() as u64,
            max: CONTAINER_BYTES_MAX as u64,
        }
        .into());
    }
    if bytes.len() < HEADER_BYTES + 16 || &bytes[..8] != MAGIC {
        return Err(DecodeError::Invalid { field: "archive", reason: "not a Cairn archive" }.into());
    }
    if bytes[8] != VERSION {
        return Err(
            DecodeError::UnsupportedVersion { what: "archive", found: bytes[8], supported: VERSION }.into()
        );
    }
    let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let kdf = KdfParams { m_cost_kib: u32_at(9), t_cost: u32_at(13), p_cost: u32_at(17) };
    if kdf.m_cost_kib > KDF_M_COST_KIB_MAX || kdf.t_cost > KDF_T_COST_MAX || kdf.p_cost > 16 {
        return Err(DecodeError::Invalid { field: "kdf", reason: "cost parameters out of range" }.into());
    }
    let salt: [u8; 16] = bytes[21..37].try_into().map_err(|_| KeystoreError::Decrypt)?;
    let key = derive_key(passphrase, &salt, kdf)?;
    let plain = XChaCha20Poly1305::new((&*key).into())
        .decrypt(
            XNonce::from_slice(&bytes[37..61]),
            Payload { msg: &bytes[HEADER_BYTES..], aad: &bytes[..HEADER_BYTES] },
        )
        .map_err(|_| KeystoreError::Decrypt)?;
    Ok(Zeroizing::new(plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_cost_kib: 256, t_cost: 1, p_cost: 1 };

    #[test]
    fn round_trip_and_every_tampering_is_refused() {
        let sealed = seal(b"{\"kind\":\"header\"}\n", b"pw", FAST).unwrap();
        assert_eq!(&open(&sealed, b"pw").unwrap()[..], b"{\"kind\":\"header\"}\n");
        assert!(matches!(open(&sealed, b"other"), Err(KeystoreError::Decrypt)));
        for i in [0, 8, 10, 30, 50, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(open(&t, b"pw").is_err(), "byte {i} changed and still opened");
        }
        assert!(open(&sealed[..40], b"pw").is_err());
        let mut huge_kdf = sealed;
        huge_kdf[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(open(&huge_kdf, b"pw"), Err(KeystoreError::Format(_))));
    }
}
