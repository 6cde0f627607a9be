//! Topic writes (issue 12 §2): handshake sequencing and anchors that act for **no account**.
//!
//! A [`TopicTx`] names no account, no signing device and no nonce. It is authorized only by its
//! [`TopicAuth`] (a key of the topic's authority tree, derived from the MLS epoch, see
//! [`crate::authority`]), paid for by proof of work over its own bytes, and replay-protected by
//! its position:
//!
//! - a handshake must name the topic's current handshake count (`after`, compare-and-swap):
//!   once sequenced the count moves on, so the same bytes can never apply twice;
//! - an anchor's count must be strictly above the count anchored, so a copy is never newer.
//!
//! Both are *admission* rules: a write at a consumed position is refused, never included, and
//! a block that includes one is invalid. Mempools also refuse an id they already hold or
//! finalized.
//!
//! Wire form (version byte 2, so it can never be read as an account transaction, version 1):
//!
//! ```text
//! u8 2 ‖ chain[32] ‖ u8 kind ‖ body ‖ work_nonce u64
//! kind 1 (handshake): topic[32] ‖ after u64 ‖ u32 len ‖ payload ‖ TopicAuth
//! kind 2 (anchor):    topic[32] ‖ head[32] ‖ count u64 ‖ TopicAuth (no next key)
//! ```
//!
//! The proof of work is the transaction id itself (`BLAKE3-derive-key(tx id domain, bytes)`):
//! it must meet `Params::topic_work(len)` expected hashes ([`cairn_proto::pow::meets_work`]).
//! The nonce is the last 8 bytes, so mining hashes the rest once. The member's signature does
//! not cover the nonce: anyone holding a write may mine it again under another id, which only
//! repeats the same write (one of them can apply; the mempool keeps one per write).

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::sequencer::HANDSHAKE_BYTES_MAX;
use cairn_proto::{Id, Topic, pow};

use crate::authority::{TopicAuth, TopicWrite};
use crate::tx::{TX_BYTES_MAX, Tx, TxError, TxId};

/// Version byte of a topic write (account transactions are version 1).
pub const TOPIC_TX_VERSION: u8 = 2;
/// Kind byte of a handshake write.
const HANDSHAKE_KIND: u8 = 1;
/// Kind byte of an anchor write.
const ANCHOR_KIND: u8 = 2;
/// Domain of a write's digest without its nonce (the mempool keeps one copy per write).
const WRITE_DIGEST_DOMAIN: &str = "cairn 2026-12 ledger topic write digest v1";

/// What a topic write does.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TopicBody {
    /// Sequences an MLS handshake message on a topic (the commit sequencer).
    Handshake {
        /// Conversation topic.
        topic: Topic,
        /// Number of handshake messages the author had applied (compare-and-swap).
        after: u64,
        /// Opaque MLS handshake bytes (at most [`HANDSHAKE_BYTES_MAX`]).
        payload: Vec<u8>,
        /// A member's signature, registering a commit's next epoch key.
        auth: TopicAuth,
    },
    /// Anchors a conversation head.
    Anchor {
        /// Conversation topic.
        topic: Topic,
        /// Head envelope id (salted).
        head: Id,
        /// Number of messages in the history up to the head.
        count: u64,
        /// A member's signature (no next key).
        auth: TopicAuth,
    },
}

/// A topic write: no account, no device, no nonce; authorized by its [`TopicAuth`], paid by
/// proof of work.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TopicTx {
    /// Chain the write is meant for (the genesis hash; the member signature covers it too).
    pub chain: [u8; 32],
    /// What to write.
    pub body: TopicBody,
    /// Proof-of-work nonce (the last 8 bytes of the encoding).
    pub work_nonce: u64,
}

impl TopicBody {
    /// The topic written.
    pub fn topic(&self) -> &Topic {
        match self {
            Self::Handshake { topic, .. } | Self::Anchor { topic, .. } => topic,
        }
    }

    /// The member's authorization.
    pub fn auth(&self) -> &TopicAuth {
        match self {
            Self::Handshake { auth, .. } | Self::Anchor { auth, .. } => auth,
        }
    }

    /// The write as the member signed it.
    pub fn write(&self) -> TopicWrite<'_> {
        match self {
            Self::Handshake { after, payload, .. } => TopicWrite::Handshake { after: *after, payload },
            Self::Anchor { head, count, .. } => TopicWrite::Anchor { head, count: *count },
        }
    }

    /// The position the write takes: a handshake's `after`, an anchor's `count`.
    pub fn position(&self) -> u64 {
        match self {
            Self::Handshake { after, .. } => *after,
            Self::Anchor { count, .. } => *count,
        }
    }
}

impl TopicTx {
    /// A handshake write signed with the authority key of `seed` (registering `next`), with
    /// no work yet (see [`Self::mine`]).
    pub fn handshake(
        chain: [u8; 32],
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        seed: &[u8; 32],
        next: Option<[u8; 32]>,
    ) -> Self {
        let auth =
            TopicAuth::sign(seed, &chain, &topic, &TopicWrite::Handshake { after, payload: &payload }, next);
        Self { chain, body: TopicBody::Handshake { topic, after, payload, auth }, work_nonce: 0 }
    }

    /// An anchor write signed with the authority key of `seed`, with no work yet.
    pub fn anchor(chain: [u8; 32], topic: Topic, head: Id, count: u64, seed: &[u8; 32]) -> Self {
        let auth = TopicAuth::sign(seed, &chain, &topic, &TopicWrite::Anchor { head: &head, count }, None);
        Self { chain, body: TopicBody::Anchor { topic, head, count, auth }, work_nonce: 0 }
    }

    /// A handshake on the topic of conversation `conv`, signed by its founder key (the first
    /// write on a topic; tools, benches and tests), with no work yet.
    pub fn handshake_as_founder(conv: &[u8; 32], chain: &[u8; 32], after: u64, payload: Vec<u8>) -> Self {
        let seed = cairn_proto::id::founder_seed(conv);
        Self::handshake(*chain, Topic::for_conversation(conv), after, payload, &seed, None)
    }

    /// An anchor on the topic of conversation `conv`, signed by its founder key, with no work.
    pub fn anchor_as_founder(conv: &[u8; 32], chain: &[u8; 32], head: Id, count: u64) -> Self {
        let seed = cairn_proto::id::founder_seed(conv);
        Self::anchor(*chain, Topic::for_conversation(conv), head, count, &seed)
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.u8(TOPIC_TX_VERSION);
        w.raw(&self.chain);
        match &self.body {
            TopicBody::Handshake { topic, after, payload, auth } => {
                w.u8(HANDSHAKE_KIND);
                w.raw(&topic.0);
                w.u64(*after);
                w.bytes(payload);
                auth.encode_to(&mut w);
            }
            TopicBody::Anchor { topic, head, count, auth } => {
                w.u8(ANCHOR_KIND);
                w.raw(&topic.0);
                w.raw(&head.0);
                w.u64(*count);
                auth.encode_to(&mut w);
            }
        }
        w.u64(self.work_nonce);
        w.finish()
    }

    /// Decodes exactly one topic write (structure only: work, signature and position are
    /// checked on admission).
    pub fn decode(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > TX_BYTES_MAX {
            return Err(TxError::Oversized { len: bytes.len(), max: TX_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        r.version("topic write", TOPIC_TX_VERSION)?;
        let chain = r.array("topic_tx.chain")?;
        let body = match r.u8("topic_tx.kind")? {
            HANDSHAKE_KIND => TopicBody::Handshake {
                topic: Topic(r.array("topic_tx.topic")?),
                after: r.u64("topic_tx.after")?,
                payload: r.bytes(HANDSHAKE_BYTES_MAX, "topic_tx.payload")?.to_vec(),
                auth: TopicAuth::decode_from(&mut r)?,
            },
            ANCHOR_KIND => {
                let (topic, head, count) = (
                    Topic(r.array("topic_tx.topic")?),
                    Id(r.array("topic_tx.head")?),
                    r.u64("topic_tx.count")?,
                );
                let auth = TopicAuth::decode_from(&mut r)?;
                if auth.next.is_some() {
                    return Err(DecodeError::Invalid {
                        field: "auth.next",
                        reason: "an anchor registers no key",
                    }
                    .into());
                }
                TopicBody::Anchor { topic, head, count, auth }
            }
            _ => {
                return Err(DecodeError::Invalid {
                    field: "topic_tx.kind",
                    reason: "unknown topic write kind",
                }
                .into());
            }
        };
        let work_nonce = r.u64("topic_tx.work_nonce")?;
        r.finish()?;
        Ok(Self { chain, body, work_nonce })
    }

    /// This write's id (and proof of work).
    pub fn id(&self) -> TxId {
        Tx::id_of(&self.encode())
    }

    /// A digest of the write without its nonce: two copies mined under different nonces share
    /// it.
    pub fn write_digest(bytes: &[u8]) -> [u8; 32] {
        cairn_proto::id::hash(WRITE_DIGEST_DOMAIN, &bytes[..bytes.len().saturating_sub(8)])
    }

    /// Whether the encoded write `bytes` (whose id is `id`) carries `need` expected hashes of
    /// work; the refusal names what it carries.
    pub fn check_work(id: &TxId, need: u64) -> Result<(), TxError> {
        if pow::meets_work(&id.0, need) {
            Ok(())
        } else {
            Err(TxError::TopicWorkTooLow { have: pow::work_of(&id.0), need })
        }
    }

    /// Searches work nonces from the current one until the id carries `need` expected hashes,
    /// trying at most `attempts_max` (bounded CPU: run it off any async executor). Returns the
    /// hashes tried, or `None` if none was found (the nonce is then left unchanged).
    pub fn mine(&mut self, need: u64, attempts_max: u64) -> Option<u64> {
        let bytes = self.encode();
        let prefix = &bytes[..bytes.len() - 8];
        let (nonce, tried) =
            pow::mine_suffix(crate::tx::TX_ID_DOMAIN, prefix, self.work_nonce, attempts_max, |h| {
                pow::meets_work(h, need)
            })?;
        self.work_nonce = nonce;
        Some(tried)
    }

    /// Mines the work the chain's parameters `params` ask for this write's size (times
    /// `factor`, for a validator asking more under load), trying at most `attempts_max`.
    pub fn mine_for(
        &mut self,
        params: &crate::params::Params,
        factor: u64,
        attempts_max: u64,
    ) -> Option<u64> {
        let need = params.topic_work(self.encode().len()).saturating_mul(factor.max(1));
        self.mine(need, attempts_max)
    }

    /// Encodes after mining the chain's price (tests and tools; panics only if no nonce was
    /// found in 2^32 attempts, which at any sane price does not happen).
    pub fn mined(mut self, params: &crate::params::Params) -> Vec<u8> {
        let found = self.mine_for(params, 1, 1 << 32);
        debug_assert!(found.is_some(), "no work found in 2^32 attempts");
        self.encode()
    }
}

/// A ledger transaction of either form, read from its first byte.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AnyTx {
    /// An account transaction (version 1): signed, nonce, fee.
    Account(Tx),
    /// A topic write (version 2): no account, proof of work.
    Topic(TopicTx),
}

impl AnyTx {
    /// Whether `bytes` claim to be a topic write (their version byte).
    pub fn is_topic_write(bytes: &[u8]) -> bool {
        bytes.first() == Some(&TOPIC_TX_VERSION)
    }

    /// Decodes either form.
    pub fn decode(bytes: &[u8]) -> Result<Self, TxError> {
        if Self::is_topic_write(bytes) {
            TopicTx::decode(bytes).map(Self::Topic)
        } else {
            Tx::decode(bytes).map(Self::Account)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::params::Params;

    fn writes() -> Vec<TopicTx> {
        vec![
            TopicTx::handshake_as_founder(&[1; 32], &[0; 32], 3, vec![1, 2, 3]),
            TopicTx::handshake([7; 32], Topic([1; 32]), 0, vec![], &[4; 32], Some([2; 32])),
            TopicTx::anchor_as_founder(&[1; 32], &[0; 32], Id([2; 32]), 9),
        ]
    }

    #[test]
    fn round_trip_and_garbage() {
        for w in writes() {
            let bytes = w.encode();
            assert_eq!(TopicTx::decode(&bytes).unwrap(), w);
            assert_eq!(AnyTx::decode(&bytes).unwrap(), AnyTx::Topic(w.clone()));
            assert!(matches!(Tx::decode(&bytes), Err(TxError::Malformed(_))), "never an account tx");
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(TopicTx::decode(&longer).is_err());
            for cut in 0..bytes.len() {
                assert!(TopicTx::decode(&bytes[..cut]).is_err());
            }
        }
        assert!(matches!(TopicTx::decode(&vec![2; TX_BYTES_MAX + 1]), Err(TxError::Oversized { .. })));
        let mut bad_kind = writes()[0].encode();
        bad_kind[33] = 9;
        assert!(TopicTx::decode(&bad_kind).is_err());
    }

    #[test]
    fn mined_work_checks_and_a_changed_byte_loses_it() {
        let p = Params { topic_work_per_byte: 64, ..Params::default() };
        let bytes = writes()[2].clone().mined(&p);
        let need = p.topic_work(bytes.len());
        TopicTx::check_work(&Tx::id_of(&bytes), need).unwrap();
        let mut t = TopicTx::decode(&bytes).unwrap();
        // a different nonce is a different id, which (here, deterministically) has too little
        t.work_nonce = t.work_nonce.wrapping_add(1);
        let e = TopicTx::check_work(&t.id(), need).unwrap_err();
        assert!(matches!(e, TxError::TopicWorkTooLow { need: n, .. } if n == need), "{e:?}");
        // the nonce is not part of the write's digest
        assert_eq!(TopicTx::write_digest(&bytes), TopicTx::write_digest(&t.encode()));
    }
}
