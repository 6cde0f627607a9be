//! Conversation authority (issue 12 §2): only a conversation's members may sequence
//! handshakes or anchor heads on its topic.
//!
//! Each topic has a small tree of Ed25519 *authority keys* ([`AuthorityChain`]). Members derive
//! the key of their MLS epoch from the epoch's exporter; a commit's sequencing registers the
//! key of the epoch it creates (`next`) as a child of the key that signed it. A write must be
//! signed ([`TopicAuth`]) by a key in the tree, and using a key *confirms* it: every key that is
//! not it or one of its descendants is pruned. So members who have not merged the latest commit
//! can still anchor with their epoch's key, while a member removed by a commit loses its key at
//! the first write signed with a key of an epoch after the removal.
//!
//! Founding: the first write on a topic with no tree must be signed by the conversation's
//! founder key, whose public half hashes to the topic ([`Topic::founded_by`]). Members derive
//! it from the secret conversation id; an outsider who sees only the topic cannot, so it
//! cannot claim a topic before its members do.
//!
//! The tree is bounded ([`AUTHORITY_KEYS_MAX`]); a registration that would overflow it is
//! refused, never evicting a key (an evicted key could be the only one honest members hold).

use crate::codec::{DecodeError, Reader, Writer};
use crate::ed25519::{Signature, SigningKey, VerifyingKey};
use crate::{Id, Topic};

/// Most keys a topic's authority tree holds.
pub const AUTHORITY_KEYS_MAX: usize = 16;
/// Largest message count an anchor may claim (2^48: beyond any conversation, and far from
/// `u64::MAX`, so no anchor can leave the next one nowhere to go).
pub const ANCHOR_COUNT_MAX: u64 = 1 << 48;
/// Format version of a stored tree.
const CHAIN_VERSION: u8 = 1;
/// Domain of the signed authority message.
const AUTH_DOMAIN: &str = "cairn 2026-12 topic authority v1";

/// What a [`TopicAuth`] signs: the write's kind and fields.
#[derive(Clone, Copy, Debug)]
pub enum TopicWrite<'a> {
    /// A handshake sequenced after `after` others.
    Handshake {
        /// Compare-and-swap position.
        after: u64,
        /// The MLS handshake bytes.
        payload: &'a [u8],
    },
    /// An anchored head.
    Anchor {
        /// Head envelope id (salted).
        head: &'a Id,
        /// Messages up to the head.
        count: u64,
    },
}

/// A member's proof for one write on a topic: signed by an authority key, optionally
/// registering the next epoch's key (commits only; anchors carry none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TopicAuth {
    /// The authority key that signed.
    pub key: [u8; 32],
    /// The key of the epoch this write's commit creates.
    pub next: Option<[u8; 32]>,
    /// Ed25519 signature by `key` over [`TopicAuth::message`].
    pub sig: [u8; 64],
}

impl TopicAuth {
    /// The signed message: chain, topic, the write's fields and `next`. It binds no account,
    /// so copying it into another transaction can only repeat the same write.
    pub fn message(
        chain: &[u8; 32],
        topic: &Topic,
        write: &TopicWrite<'_>,
        next: Option<&[u8; 32]>,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.raw(chain);
        w.raw(&topic.0);
        match write {
            TopicWrite::Handshake { after, payload } => {
                w.u8(1);
                w.u64(*after);
                w.raw(&crate::id::hash(AUTH_DOMAIN, payload));
            }
            TopicWrite::Anchor { head, count } => {
                w.u8(2);
                w.raw(&head.0);
                w.u64(*count);
            }
        }
        match next {
            Some(n) => {
                w.u8(1);
                w.raw(n);
            }
            None => w.u8(0),
        }
        crate::id::hash(AUTH_DOMAIN, &w.finish()).to_vec()
    }

    /// Signs `write` with the authority key of `seed`.
    pub fn sign(
        seed: &[u8; 32],
        chain: &[u8; 32],
        topic: &Topic,
        write: &TopicWrite<'_>,
        next: Option<[u8; 32]>,
    ) -> Self {
        use crate::ed25519::Signer as _;
        let sk = SigningKey::from_bytes(seed);
        let sig = sk.sign(&Self::message(chain, topic, write, next.as_ref())).to_bytes();
        Self { key: sk.verifying_key().to_bytes(), next, sig }
    }

    /// Whether the signature verifies.
    pub fn verifies(&self, chain: &[u8; 32], topic: &Topic, write: &TopicWrite<'_>) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(&self.key) else { return false };
        let msg = Self::message(chain, topic, write, self.next.as_ref());
        vk.verify_strict(&msg, &Signature::from_bytes(&self.sig)).is_ok()
    }

    /// Appends the wire form.
    pub fn encode_to(&self, w: &mut Writer) {
        w.raw(&self.key);
        match &self.next {
            Some(n) => {
                w.u8(1);
                w.raw(n);
            }
            None => w.u8(0),
        }
        w.raw(&self.sig);
    }

    /// Reads the wire form.
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let key = r.array("auth.key")?;
        let next = match r.u8("auth.next")? {
            0 => None,
            1 => Some(r.array("auth.next")?),
            _ => return Err(DecodeError::Invalid { field: "auth.next", reason: "flag is not 0 or 1" }),
        };
        Ok(Self { key, next, sig: r.array("auth.sig")? })
    }
}

/// Why a write was not authorized.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthorityRefusal {
    /// The key is not in the topic's tree (or, founding, does not hash to the topic).
    NotMember,
    /// Registering `next` would overflow the tree.
    Full,
}

/// One key of the tree and the key that registered it (a root names itself).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Entry {
    key: [u8; 32],
    parent: [u8; 32],
}

/// A topic's authority keys, parents before children, at most [`AUTHORITY_KEYS_MAX`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AuthorityChain {
    entries: Vec<Entry>,
}

impl AuthorityChain {
    /// The tree founded by `founder` on `topic`, if the founder key hashes to the topic.
    pub fn found(topic: &Topic, founder: &[u8; 32]) -> Option<Self> {
        (Topic::founded_by(founder) == *topic)
            .then(|| Self { entries: vec![Entry { key: *founder, parent: *founder }] })
    }

    /// Keys held, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.entries.iter().map(|e| &e.key)
    }

    /// Applies one write signed by `key`, registering `next` under it: `key` is confirmed
    /// (every key not it or its descendant is pruned), then `next` is added. Nothing changes on
    /// a refusal.
    pub fn apply(&mut self, key: &[u8; 32], next: Option<&[u8; 32]>) -> Result<(), AuthorityRefusal> {
        let pos = self.entries.iter().position(|e| e.key == *key).ok_or(AuthorityRefusal::NotMember)?;
        let mut kept: Vec<Entry> = Vec::with_capacity(self.entries.len() - pos + 1);
        for e in &self.entries[pos..] {
            if e.key == *key || kept.iter().any(|k| k.key == e.parent) {
                kept.push(*e);
            }
        }
        if let Some(n) = next
            && !kept.iter().any(|e| e.key == *n)
        {
            if kept.len() >= AUTHORITY_KEYS_MAX {
                return Err(AuthorityRefusal::Full);
            }
            kept.push(Entry { key: *n, parent: *key });
        }
        self.entries = kept;
        Ok(())
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(2 + self.entries.len() * 64);
        w.u8(CHAIN_VERSION);
        w.u8(self.entries.len() as u8);
        for e in &self.entries {
            w.raw(&e.key);
            w.raw(&e.parent);
        }
        w.finish()
    }

    /// Reads the stored form (bounded, versioned).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = r.u8("authority.version")?;
        if v != CHAIN_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what: "authority tree",
                found: v,
                supported: CHAIN_VERSION,
            });
        }
        let n = r.u8("authority.count")? as usize;
        if n == 0 || n > AUTHORITY_KEYS_MAX {
            return Err(DecodeError::Invalid { field: "authority.count", reason: "not 1 to 16 keys" });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Entry { key: r.array("authority.key")?, parent: r.array("authority.parent")? });
        }
        r.finish()?;
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn tree(entries: &[(u8, u8)]) -> AuthorityChain {
        AuthorityChain { entries: entries.iter().map(|(a, p)| Entry { key: k(*a), parent: k(*p) }).collect() }
    }

    #[test]
    fn using_a_key_prunes_everything_but_it_and_its_descendants() {
        // 1 founded; 2 registered by 1 (the removal commit); 9 registered by 1 (a removed
        // member's junk after the removal); 3 registered by 2.
        let mut t = tree(&[(1, 1), (2, 1), (9, 1), (3, 2)]);
        // A member who has not merged yet anchors with 1: nothing is pruned.
        t.apply(&k(1), None).unwrap();
        assert_eq!(t.keys().count(), 4);
        // A member of the new epoch uses 2: 1 and the junk 9 go, 3 (its child) stays.
        t.apply(&k(2), None).unwrap();
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![k(2), k(3)]);
        // The removed member's keys are refused from now on.
        assert_eq!(t.apply(&k(1), Some(&k(7))), Err(AuthorityRefusal::NotMember));
        assert_eq!(t.apply(&k(9), None), Err(AuthorityRefusal::NotMember));
        assert_eq!(t.keys().count(), 2, "a refusal changed the tree");
    }

    #[test]
    fn registrations_are_bounded_and_never_evict() {
        let mut t = tree(&[(1, 1)]);
        for i in 2..=AUTHORITY_KEYS_MAX as u8 {
            t.apply(&k(1), Some(&k(i))).unwrap();
        }
        assert_eq!(t.apply(&k(1), Some(&k(200))), Err(AuthorityRefusal::Full));
        assert_eq!(t.keys().count(), AUTHORITY_KEYS_MAX);
        // Re-registering a held key is no change; using a child frees the siblings.
        t.apply(&k(1), Some(&k(2))).unwrap();
        t.apply(&k(5), Some(&k(201))).unwrap();
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), vec![k(5), k(201)]);
    }

    #[test]
    fn founding_needs_the_key_the_topic_commits_to() {
        let founder = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes();
        let topic = Topic::founded_by(&founder);
        assert!(AuthorityChain::found(&topic, &founder).is_some());
        assert!(AuthorityChain::found(&topic, &k(4)).is_none());
        assert!(AuthorityChain::found(&Topic([5; 32]), &founder).is_none());
    }

    #[test]
    fn signatures_bind_the_write_and_the_next_key() {
        let chain = [1; 32];
        let topic = Topic([2; 32]);
        let w = TopicWrite::Handshake { after: 3, payload: b"commit" };
        let a = TopicAuth::sign(&[9; 32], &chain, &topic, &w, Some(k(4)));
        assert!(a.verifies(&chain, &topic, &w));
        assert!(!a.verifies(&[0; 32], &topic, &w));
        assert!(!a.verifies(&chain, &topic, &TopicWrite::Handshake { after: 4, payload: b"commit" }));
        assert!(!a.verifies(&chain, &topic, &TopicWrite::Handshake { after: 3, payload: b"commiT" }));
        let swapped = TopicAuth { next: Some(k(5)), ..a };
        assert!(!swapped.verifies(&chain, &topic, &w));
        let mut wire = Writer::with_capacity(128);
        a.encode_to(&mut wire);
        let bytes = wire.finish();
        assert_eq!(TopicAuth::decode_from(&mut Reader::new(&bytes)).unwrap(), a);
    }

    #[test]
    fn stored_trees_round_trip_and_garbage_is_refused() {
        let t = tree(&[(1, 1), (2, 1)]);
        assert_eq!(AuthorityChain::decode(&t.encode()).unwrap(), t);
        assert!(AuthorityChain::decode(&[]).is_err());
        assert!(AuthorityChain::decode(&[2, 1]).is_err());
        assert!(AuthorityChain::decode(&[1, 0]).is_err());
        assert!(AuthorityChain::decode(&[1, 17]).is_err());
        let mut long = t.encode();
        long.push(0);
        assert!(AuthorityChain::decode(&long).is_err());
    }
}
