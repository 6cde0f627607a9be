//! Ids, topics and the domain-separated hashes that produce them.

use std::fmt;

/// BLAKE3 key-derivation contexts. Each hash in Cairn has its own, so a value hashed for one
/// purpose can never be mistaken for another.
pub mod domain {
    /// Envelope id: hash of the canonical header.
    pub const ENVELOPE_ID: &str = "cairn 2026-11 envelope id v1";
    /// Payload hash committed in the header.
    pub const PAYLOAD: &str = "cairn 2026-11 envelope payload v1";
    /// Erase lock of an envelope header, from the sender's erase secret.
    pub const ERASE_LOCK: &str = "cairn 2026-12 erase lock v1";
    /// Network topic of a conversation, from its founder key.
    pub const TOPIC: &str = "cairn 2026-12 conversation topic v2";
    /// Seed of a conversation's founder key (its first ledger authority), from its id.
    pub const TOPIC_FOUNDER: &str = "cairn 2026-12 conversation founder key v1";
    /// Out-of-band fingerprint of an account key.
    pub const FINGERPRINT: &str = "cairn 2026-11 account fingerprint v1";
    /// Signature context of a device certificate.
    pub const DEVICE_CERT_SIG: &[u8] = b"cairn/device-cert/v1";
    /// Signature context of an inner message.
    pub const MESSAGE_SIG: &[u8] = b"cairn/message/v1";
}

/// Topics remembered per thread by [`Topic::for_conversation`] (direct-mapped; a miss costs
/// one key derivation, ~20 µs).
const TOPIC_MEMO_SLOTS: usize = 64;

/// The seed of a conversation's founder key: every member can derive it from the secret id;
/// its public half is what the topic is the hash of.
pub fn founder_seed(conversation_id: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(domain::TOPIC_FOUNDER, conversation_id)
}

/// A 32-byte content id: the BLAKE3 hash of a canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Lower-case hex of the whole id.
    pub fn to_hex(&self) -> String {
        hex32(&self.0)
    }
    /// First 8 bytes in hex, for logs and tables.
    pub fn short(&self) -> String {
        hex32(&self.0)[..16].to_string()
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex32(s).map(Self)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}
impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The network topic of a conversation: a hash of its random id, so relays, store nodes and
/// the ledger never see the conversation id or its members.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Topic(pub [u8; 32]);

impl Topic {
    /// The topic of the conversation with this (secret, random) id: the hash of its founder
    /// key ([`founder_seed`]), so the ledger can check a founding write against the topic
    /// without learning the id. Memoized per thread (the key derivation is a scalar
    /// multiplication, and hot paths ask for topics per message).
    pub fn for_conversation(conversation_id: &[u8; 32]) -> Self {
        thread_local! {
            static MEMO: std::cell::RefCell<[([u8; 32], Topic); TOPIC_MEMO_SLOTS]> =
                const { std::cell::RefCell::new([([0xff; 32], Topic([0; 32])); TOPIC_MEMO_SLOTS]) };
        }
        let slot = usize::from(conversation_id[0]) % TOPIC_MEMO_SLOTS;
        MEMO.with(|m| {
            let mut m = m.borrow_mut();
            if m[slot].0 == *conversation_id {
                return m[slot].1;
            }
            let seed = founder_seed(conversation_id);
            let key = crate::ed25519::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            let t = Self::founded_by(&key);
            m[slot] = (*conversation_id, t);
            t
        })
    }

    /// The topic whose founder key is `founder` (an Ed25519 public key).
    pub fn founded_by(founder: &[u8; 32]) -> Self {
        Self(blake3::derive_key(domain::TOPIC, founder))
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex32(&self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex32(s).map(Self)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", &self.to_hex()[..16])
    }
}

/// Hashes `data` under a named domain.
pub fn hash(domain: &str, data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(domain);
    h.update(data);
    *h.finalize().as_bytes()
}

pub(crate) fn hex32(bytes: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(s[2 * i])? << 4) | nib(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_domains_differ() {
        let id = Id(hash(domain::ENVELOPE_ID, b"x"));
        assert_eq!(Id::from_hex(&id.to_hex()), Some(id));
        assert_ne!(hash(domain::ENVELOPE_ID, b"x"), hash(domain::PAYLOAD, b"x"));
        assert_eq!(Id::from_hex("zz"), None);
    }
}
