//! The MLS primitives (RFC 9420 §5, §8, §9) over OpenMLS's crypto provider, as standalone
//! functions: labeled key derivation, the secret tree and sender ratchets, the key schedule,
//! transcript hashes, labeled signatures and labeled HPKE. OpenMLS uses its own internal copies;
//! these exist so Cairn can check the provider it ships against the IETF test vectors
//! (`tests/kat.rs`) and reuse the derivations (e.g. exporters) without OpenMLS internals.

use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{Ciphersuite, CryptoError, HpkeCiphertext};

/// MLS variable-length vector encoding (RFC 9420 §2.1.2): a 1-, 2- or 4-byte varint length,
/// then the bytes.
pub fn vl(bytes: &[u8]) -> Vec<u8> {
    let n = bytes.len();
    let mut out = Vec::with_capacity(n + 4);
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&(0x4000 | n as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&(0x8000_0000 | n as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
    out
}

fn mls_label(label: &[u8]) -> Vec<u8> {
    let mut l = b"MLS 1.0 ".to_vec();
    l.extend_from_slice(label);
    l
}

/// `HKDF-Extract(salt, ikm)`.
pub fn extract(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    salt: &[u8],
    ikm: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    Ok(crypto.hkdf_extract(cs.hash_algorithm(), salt, ikm)?.as_slice().to_vec())
}

/// `ExpandWithLabel(secret, label, context, length)`.
pub fn expand_with_label(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    length: u16,
) -> Result<Vec<u8>, CryptoError> {
    let mut info = length.to_be_bytes().to_vec();
    info.extend_from_slice(&vl(&mls_label(label)));
    info.extend_from_slice(&vl(context));
    Ok(crypto.hkdf_expand(cs.hash_algorithm(), secret, &info, usize::from(length))?.as_slice().to_vec())
}

fn nh(cs: Ciphersuite) -> u16 {
    u16::try_from(cs.hash_length()).unwrap_or(u16::MAX)
}

/// `DeriveSecret(secret, label)`.
pub fn derive_secret(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    secret: &[u8],
    label: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    expand_with_label(crypto, cs, secret, label, &[], nh(cs))
}

/// `DeriveTreeSecret(secret, label, generation, length)`.
pub fn derive_tree_secret(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    secret: &[u8],
    label: &[u8],
    generation: u32,
    length: u16,
) -> Result<Vec<u8>, CryptoError> {
    expand_with_label(crypto, cs, secret, label, &generation.to_be_bytes(), length)
}

/// `RefHash(label, value)`.
pub fn ref_hash(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    label: &[u8],
    value: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut input = vl(label);
    input.extend_from_slice(&vl(value));
    crypto.hash(cs.hash_algorithm(), &input)
}

fn sign_content(label: &[u8], content: &[u8]) -> Vec<u8> {
    let mut c = vl(&mls_label(label));
    c.extend_from_slice(&vl(content));
    c
}

/// `SignWithLabel(key, label, content)`.
pub fn sign_with_label(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    private: &[u8],
    label: &[u8],
    content: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    crypto.sign(cs.signature_algorithm(), &sign_content(label, content), private)
}

/// `VerifyWithLabel(key, label, content, signature)`.
pub fn verify_with_label(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    public: &[u8],
    label: &[u8],
    content: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    crypto.verify_signature(cs.signature_algorithm(), &sign_content(label, content), public, signature)
}

/// `EncryptWithLabel(public, label, context, plaintext)`: `(kem_output, ciphertext)`.
pub fn encrypt_with_label(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    public: &[u8],
    label: &[u8],
    context: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let info = sign_content(label, context);
    let ct = crypto.hpke_seal(cs.hpke_config(), public, &info, &[], plaintext)?;
    Ok((ct.kem_output.as_slice().to_vec(), ct.ciphertext.as_slice().to_vec()))
}

/// `DecryptWithLabel(private, label, context, kem_output, ciphertext)`.
pub fn decrypt_with_label(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    private: &[u8],
    label: &[u8],
    context: &[u8],
    kem_output: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let info = sign_content(label, context);
    let input =
        HpkeCiphertext { kem_output: kem_output.to_vec().into(), ciphertext: ciphertext.to_vec().into() };
    crypto.hpke_open(cs.hpke_config(), &input, private, &info, &[])
}

/// The secret of `leaf` in a secret tree of `leaves` leaves rooted at `encryption_secret`.
pub fn tree_leaf_secret(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    encryption_secret: &[u8],
    leaves: u32,
    leaf: u32,
) -> Result<Vec<u8>, CryptoError> {
    if leaves == 0 || leaf >= leaves {
        return Err(CryptoError::InvalidLength);
    }
    let width = 2 * u64::from(leaves) - 1;
    let root: u64 = (1u64 << (63 - width.leading_zeros())) - 1;
    let target = 2 * u64::from(leaf);
    let (mut node, mut secret) = (root, encryption_secret.to_vec());
    // At most 32 levels; each step halves the distance to the leaf.
    for _ in 0..64 {
        if node == target {
            return Ok(secret);
        }
        let level = node.trailing_ones();
        if level == 0 {
            break;
        }
        let (child, side): (u64, &[u8]) = if target < node {
            (node ^ (1 << (level - 1)), b"left")
        } else {
            (node ^ (3 << (level - 1)), b"right")
        };
        secret = expand_with_label(crypto, cs, &secret, b"tree", side, nh(cs))?;
        node = child;
    }
    Err(CryptoError::InvalidLength)
}

/// Key and nonce of `generation` in the `handshake` or `application` ratchet of a leaf secret.
pub fn ratchet_key_nonce(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    leaf_secret: &[u8],
    ratchet: &[u8],
    generation: u32,
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut secret = expand_with_label(crypto, cs, leaf_secret, ratchet, &[], nh(cs))?;
    for g in 0..generation {
        secret = derive_tree_secret(crypto, cs, &secret, b"secret", g, nh(cs))?;
    }
    let nk = u16::try_from(cs.aead_key_length()).unwrap_or(u16::MAX);
    let nn = u16::try_from(cs.aead_nonce_length()).unwrap_or(u16::MAX);
    Ok((
        derive_tree_secret(crypto, cs, &secret, b"key", generation, nk)?,
        derive_tree_secret(crypto, cs, &secret, b"nonce", generation, nn)?,
    ))
}

/// Sender-data key and nonce for a ciphertext (sampled from its first `Nh` bytes).
pub fn sender_data_key_nonce(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    sender_data_secret: &[u8],
    ciphertext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let sample = &ciphertext[..ciphertext.len().min(cs.hash_length())];
    let nk = u16::try_from(cs.aead_key_length()).unwrap_or(u16::MAX);
    let nn = u16::try_from(cs.aead_nonce_length()).unwrap_or(u16::MAX);
    Ok((
        expand_with_label(crypto, cs, sender_data_secret, b"key", sample, nk)?,
        expand_with_label(crypto, cs, sender_data_secret, b"nonce", sample, nn)?,
    ))
}

/// Secrets of one epoch of the key schedule (RFC 9420 §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSecrets {
    /// `joiner_secret`.
    pub joiner: Vec<u8>,
    /// `welcome_secret`.
    pub welcome: Vec<u8>,
    /// `epoch_secret`.
    pub epoch: Vec<u8>,
    /// `sender_data_secret`.
    pub sender_data: Vec<u8>,
    /// `encryption_secret`.
    pub encryption: Vec<u8>,
    /// `exporter_secret`.
    pub exporter: Vec<u8>,
    /// `external_secret`.
    pub external: Vec<u8>,
    /// `confirmation_key`.
    pub confirmation_key: Vec<u8>,
    /// `membership_key`.
    pub membership_key: Vec<u8>,
    /// `resumption_psk`.
    pub resumption_psk: Vec<u8>,
    /// `epoch_authenticator`.
    pub epoch_authenticator: Vec<u8>,
    /// `init_secret` of the next epoch.
    pub init: Vec<u8>,
}

/// Runs the key schedule for one epoch from the previous init secret.
pub fn key_schedule(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    init_secret: &[u8],
    commit_secret: &[u8],
    psk_secret: &[u8],
    group_context: &[u8],
) -> Result<EpochSecrets, CryptoError> {
    let pre = extract(crypto, cs, init_secret, commit_secret)?;
    let joiner = expand_with_label(crypto, cs, &pre, b"joiner", group_context, nh(cs))?;
    let member = extract(crypto, cs, &joiner, psk_secret)?;
    let welcome = derive_secret(crypto, cs, &member, b"welcome")?;
    let epoch = expand_with_label(crypto, cs, &member, b"epoch", group_context, nh(cs))?;
    let d = |l: &[u8]| derive_secret(crypto, cs, &epoch, l);
    Ok(EpochSecrets {
        sender_data: d(b"sender data")?,
        encryption: d(b"encryption")?,
        exporter: d(b"exporter")?,
        external: d(b"external")?,
        confirmation_key: d(b"confirm")?,
        membership_key: d(b"membership")?,
        resumption_psk: d(b"resumption")?,
        epoch_authenticator: d(b"authentication")?,
        init: d(b"init")?,
        joiner,
        welcome,
        epoch,
    })
}

/// `MLS-Exporter(label, context, length)` from an exporter secret.
pub fn export(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    exporter_secret: &[u8],
    label: &[u8],
    context: &[u8],
    length: u16,
) -> Result<Vec<u8>, CryptoError> {
    let s = derive_secret(crypto, cs, exporter_secret, label)?;
    let h = crypto.hash(cs.hash_algorithm(), context)?;
    expand_with_label(crypto, cs, &s, b"exported", &h, length)
}

/// Transcript hashes after a commit: `(confirmed, interim)`. `content` is the commit's
/// `ConfirmedTranscriptHashInput` (wire format ‖ content ‖ signature), `tag` its confirmation tag.
pub fn transcript_hashes(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    interim_before: &[u8],
    content: &[u8],
    tag: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
    let mut input = interim_before.to_vec();
    input.extend_from_slice(content);
    let confirmed = crypto.hash(cs.hash_algorithm(), &input)?;
    let mut input = confirmed.clone();
    input.extend_from_slice(&vl(tag));
    let interim = crypto.hash(cs.hash_algorithm(), &input)?;
    Ok((confirmed, interim))
}

/// `MAC(key, data)` with the suite's hash.
pub fn mac(
    crypto: &impl OpenMlsCrypto,
    cs: Ciphersuite,
    key: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    Ok(crypto.hmac(cs.hash_algorithm(), key, data)?.as_slice().to_vec())
}
