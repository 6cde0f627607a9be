//! The validator's mempool: waiting transactions with their arrival order, each signer's queue
//! by nonce, and the bounds that keep one signer (or everyone together) from filling it.
//!
//! Bounds (see [`MempoolLimits`]): transactions in total, bytes in total, bytes per signer, and
//! how far ahead of its next nonce a signer's transactions may be. **Overflow policy:** a
//! transaction that would cross a bound is refused at once with a typed [`TxError`]
//! ([`TxError::MempoolFull`], [`TxError::MempoolBytesFull`], [`TxError::SignerMempoolFull`],
//! [`TxError::NonceTooFar`]) and the submitter retries later or at another validator; an
//! admitted transaction is never evicted to make room. It leaves only by being finalized or
//! by being rejected with a reason the client can read.
//!
//! The fees of an account's waiting transactions are reserved against its balance, so an
//! account cannot queue more transactions than it can pay for.
//!
//! **Topic writes** ([`crate::topic_tx`]) name no signer, so they have their own bounds: at
//! most [`TOPIC_WINDOW`] waiting per topic ([`TxError::TopicWindowFull`]) and
//! [`TOPIC_BYTES_MAX`] bytes in total ([`TxError::TopicMempoolFull`]), one copy per write
//! (another copy mined under another nonce is answered with the id already held), and a
//! proof of work that rises with their share of the room ([`Mempool::topic_work_factor`]:
//! ×1 below half full, ×2, ×4, then ×8 above seven eighths), refused as
//! [`TxError::TopicWorkTooLow`] with the work asked. Same policy: refused, never evicted.

use std::collections::{BTreeSet, VecDeque};

use crate::fast_map::FastMap;

use cairn_proto::{AccountId, Topic};

use crate::tx::{TX_BYTES_MAX, TxError, TxId};

/// Most transactions waiting in the mempool (transactions).
pub const MEMPOOL_MAX: usize = 200_000;
/// Most bytes of encoded transactions waiting in the mempool (bytes): 128 MiB.
pub const MEMPOOL_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Most bytes of encoded transactions one signing key may have waiting (bytes): 1 MiB, room
/// for 15 handshakes of the largest size.
pub const SIGNER_BYTES_MAX: usize = 1024 * 1024;
/// Pending nonces a signer may have ahead of its next finalized nonce (nonces): a transaction
/// with nonce `next + NONCE_WINDOW` or beyond is refused with [`TxError::NonceTooFar`].
pub const NONCE_WINDOW: u64 = 64;
/// Topic writes one topic may have waiting (writes): room for a commit, its competitors and an
/// anchor; a fifth is refused with [`TxError::TopicWindowFull`].
pub const TOPIC_WINDOW: usize = 4;
/// Most bytes of topic writes waiting in the mempool (bytes): 16 MiB, 256 handshakes of the
/// largest size.
pub const TOPIC_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most times the chain's proof-of-work price a loaded mempool asks of a topic write.
pub const TOPIC_WORK_FACTOR_MAX: u64 = 8;
/// Topic writes refused at admission because their position is taken (stale) whose refusal a
/// validator remembers, so a client asking about one reads "rejected: stale" rather than
/// `Unknown` (writes). Overflow policy: the oldest record is forgotten. Kept apart from the
/// rejections of admitted transactions, so a flood of stale copies cannot push those out.
pub const STALE_REFUSED_MAX: usize = 16_384;

/// The mempool's bounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MempoolLimits {
    /// Transactions in total.
    pub txs: usize,
    /// Bytes in total.
    pub bytes: usize,
    /// Bytes per signing key.
    pub signer_bytes: usize,
    /// Nonces a signer may be ahead of its next one (at least 1).
    pub nonce_window: u64,
    /// Topic writes waiting per topic (at least 1).
    pub topic_window: usize,
    /// Bytes of topic writes waiting in total.
    pub topic_bytes: usize,
    /// Stale topic-write refusals remembered (at least 1; see [`STALE_REFUSED_MAX`]).
    pub stale_refused: usize,
}

impl Default for MempoolLimits {
    /// [`MEMPOOL_MAX`], [`MEMPOOL_BYTES_MAX`], [`SIGNER_BYTES_MAX`], [`NONCE_WINDOW`],
    /// [`TOPIC_WINDOW`], [`TOPIC_BYTES_MAX`], [`STALE_REFUSED_MAX`].
    fn default() -> Self {
        Self {
            txs: MEMPOOL_MAX,
            bytes: MEMPOOL_BYTES_MAX,
            signer_bytes: SIGNER_BYTES_MAX,
            nonce_window: NONCE_WINDOW,
            topic_window: TOPIC_WINDOW,
            topic_bytes: TOPIC_BYTES_MAX,
            stale_refused: STALE_REFUSED_MAX,
        }
    }
}

impl MempoolLimits {
    /// The limits with every bound at least what one transaction of the largest size needs.
    pub fn sane(self) -> Self {
        Self {
            txs: self.txs.max(1),
            bytes: self.bytes.max(TX_BYTES_MAX),
            signer_bytes: self.signer_bytes.max(TX_BYTES_MAX),
            nonce_window: self.nonce_window.max(1),
            topic_window: self.topic_window.max(1),
            topic_bytes: self.topic_bytes.max(TX_BYTES_MAX),
            stale_refused: self.stale_refused.max(1),
        }
    }
}

/// A transaction waiting in the mempool.
#[derive(Debug)]
pub(crate) struct Pooled {
    pub(crate) signer: [u8; 32],
    pub(crate) account: AccountId,
    pub(crate) nonce: u64,
    /// Fee it will pay (reserved against its account's balance while it waits).
    pub(crate) fee: u64,
    pub(crate) bytes: Vec<u8>,
    /// Finalized height when it was admitted.
    pub(crate) since: u64,
}

/// A topic write waiting in the mempool.
#[derive(Debug)]
pub(crate) struct TopicPooled {
    pub(crate) topic: Topic,
    /// A handshake's `after` or an anchor's `count` (same-topic writes go in this order).
    pub(crate) position: u64,
    /// Digest of the write without its work nonce.
    pub(crate) digest: [u8; 32],
    pub(crate) bytes: Vec<u8>,
    /// Finalized height when it was admitted.
    pub(crate) since: u64,
}

/// Waiting topic writes and their accounting.
#[derive(Debug, Default)]
pub(crate) struct TopicPool {
    /// Waiting writes by id.
    pub(crate) txs: FastMap<TxId, TopicPooled>,
    /// Ids waiting per topic (≤ the topic window each).
    pub(crate) by_topic: FastMap<Topic, Vec<TxId>>,
    /// Id held for each write digest (one copy per write).
    by_digest: FastMap<[u8; 32], TxId>,
    /// Arrival order (may hold ids already gone; compacted when mostly stale).
    pub(crate) order: VecDeque<TxId>,
    /// Bytes waiting.
    bytes: usize,
}

/// Waiting transactions and their accounting.
#[derive(Debug)]
pub(crate) struct Mempool {
    limits: MempoolLimits,
    /// Waiting transactions by id.
    pub(crate) pool: FastMap<TxId, Pooled>,
    /// Arrival order (may hold ids already gone from `pool`; compacted when mostly stale).
    pub(crate) order: VecDeque<TxId>,
    /// Waiting transactions of each signer, by nonce.
    pub(crate) by_signer: FastMap<[u8; 32], BTreeSet<(u64, TxId)>>,
    /// Bytes waiting in total.
    bytes: usize,
    /// Bytes waiting per signer.
    signer_bytes: FastMap<[u8; 32], usize>,
    /// Fees of waiting transactions per account.
    reserved: FastMap<AccountId, u64>,
    /// Waiting topic writes.
    pub(crate) topics: TopicPool,
}

impl Mempool {
    /// An empty mempool with `limits` (made [`MempoolLimits::sane`]).
    pub(crate) fn new(limits: MempoolLimits) -> Self {
        Self {
            limits: limits.sane(),
            pool: FastMap::default(),
            order: VecDeque::new(),
            by_signer: FastMap::default(),
            bytes: 0,
            signer_bytes: FastMap::default(),
            reserved: FastMap::default(),
            topics: TopicPool::default(),
        }
    }

    pub(crate) fn limits(&self) -> MempoolLimits {
        self.limits
    }

    /// Waiting transactions of both forms.
    pub(crate) fn len(&self) -> usize {
        self.pool.len() + self.topics.txs.len()
    }

    /// Bytes of the waiting transactions of both forms.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes + self.topics.bytes
    }

    pub(crate) fn contains(&self, id: &TxId) -> bool {
        self.pool.contains_key(id) || self.topics.txs.contains_key(id)
    }

    /// The id already held for the write with this digest (another copy of it), if any.
    pub(crate) fn topic_copy(&self, digest: &[u8; 32]) -> Option<TxId> {
        self.topics.by_digest.get(digest).copied()
    }

    /// How many times the chain's price a topic write must carry now: ×1 while topic writes
    /// fill less than half their room, then ×2, ×4 and, above seven eighths,
    /// [`TOPIC_WORK_FACTOR_MAX`].
    pub(crate) fn topic_work_factor(&self) -> u64 {
        let eighths = self.topics.bytes.saturating_mul(8) / self.limits.topic_bytes.max(1);
        match eighths {
            0..=3 => 1,
            4..=5 => 2,
            6 => 4,
            _ => TOPIC_WORK_FACTOR_MAX,
        }
    }

    /// Whether a topic write of `len` bytes on `topic` fits every bound (the refusal if not).
    pub(crate) fn check_topic_room(&self, topic: &Topic, len: usize) -> Result<(), TxError> {
        if self.len() >= self.limits.txs {
            return Err(TxError::MempoolFull { max: self.limits.txs });
        }
        let pending = self.topics.by_topic.get(topic).map_or(0, Vec::len);
        if pending >= self.limits.topic_window {
            return Err(TxError::TopicWindowFull { pending, max: self.limits.topic_window });
        }
        if self.topics.bytes + len > self.limits.topic_bytes {
            return Err(TxError::TopicMempoolFull { max: self.limits.topic_bytes });
        }
        Ok(())
    }

    /// Adds an admitted topic write (the caller checked [`Self::check_topic_room`]).
    pub(crate) fn insert_topic(&mut self, id: TxId, p: TopicPooled) {
        self.topics.bytes += p.bytes.len();
        self.topics.by_topic.entry(p.topic).or_default().push(id);
        self.topics.by_digest.insert(p.digest, id);
        self.topics.txs.insert(id, p);
        self.topics.order.push_back(id);
    }

    /// Removes a topic write and its accounting.
    pub(crate) fn remove_topic(&mut self, id: &TxId) -> Option<TopicPooled> {
        let p = self.topics.txs.remove(id)?;
        self.topics.bytes = self.topics.bytes.saturating_sub(p.bytes.len());
        if let Some(ids) = self.topics.by_topic.get_mut(&p.topic) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.topics.by_topic.remove(&p.topic);
            }
        }
        if self.topics.by_digest.get(&p.digest) == Some(id) {
            self.topics.by_digest.remove(&p.digest);
        }
        Some(p)
    }

    /// Fees already promised by `account`'s waiting transactions.
    pub(crate) fn reserved(&self, account: &AccountId) -> u64 {
        self.reserved.get(account).copied().unwrap_or(0)
    }

    /// Whether a transaction of `len` bytes from `signer` fits every bound (the refusal if not).
    pub(crate) fn check_room(&self, signer: &[u8; 32], len: usize) -> Result<(), TxError> {
        if self.pool.len() >= self.limits.txs {
            return Err(TxError::MempoolFull { max: self.limits.txs });
        }
        let pending = self.signer_bytes.get(signer).copied().unwrap_or(0);
        if pending + len > self.limits.signer_bytes {
            return Err(TxError::SignerMempoolFull { pending, max: self.limits.signer_bytes });
        }
        if self.bytes + len > self.limits.bytes {
            return Err(TxError::MempoolBytesFull { max: self.limits.bytes });
        }
        Ok(())
    }

    /// Adds an admitted transaction (the caller checked [`Self::check_room`]).
    pub(crate) fn insert(&mut self, id: TxId, p: Pooled) {
        let len = p.bytes.len();
        self.bytes += len;
        *self.signer_bytes.entry(p.signer).or_insert(0) += len;
        let r = self.reserved.entry(p.account).or_insert(0);
        *r = r.saturating_add(p.fee);
        self.by_signer.entry(p.signer).or_default().insert((p.nonce, id));
        self.pool.insert(id, p);
        self.order.push_back(id);
    }

    /// Removes a transaction of either form and its accounting (an account transaction is
    /// returned).
    pub(crate) fn remove(&mut self, id: &TxId) -> Option<Pooled> {
        let Some(p) = self.pool.remove(id) else {
            self.remove_topic(id);
            return None;
        };
        let len = p.bytes.len();
        self.bytes = self.bytes.saturating_sub(len);
        if let Some(b) = self.signer_bytes.get_mut(&p.signer) {
            *b = b.saturating_sub(len);
            if *b == 0 {
                self.signer_bytes.remove(&p.signer);
            }
        }
        if let Some(r) = self.reserved.get_mut(&p.account) {
            *r = r.saturating_sub(p.fee);
            if *r == 0 {
                self.reserved.remove(&p.account);
            }
        }
        if let Some(q) = self.by_signer.get_mut(&p.signer) {
            q.remove(&(p.nonce, *id));
            if q.is_empty() {
                self.by_signer.remove(&p.signer);
            }
        }
        Some(p)
    }

    /// Drops stale ids from the arrival order once they are the majority.
    pub(crate) fn compact_order(&mut self) {
        if self.order.len() > 1024 && self.order.len() > 2 * self.pool.len() {
            let pool = &self.pool;
            self.order.retain(|id| pool.contains_key(id));
        }
        let t = &mut self.topics;
        if t.order.len() > 1024 && t.order.len() > 2 * t.txs.len() {
            let txs = &t.txs;
            t.order.retain(|id| txs.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pooled(signer: u8, nonce: u64, len: usize, fee: u64) -> Pooled {
        Pooled {
            signer: [signer; 32],
            account: AccountId([signer; 32]),
            nonce,
            fee,
            bytes: vec![0; len],
            since: 0,
        }
    }

    #[test]
    fn accounting_follows_inserts_and_removals() {
        let limits = MempoolLimits {
            txs: 3,
            bytes: 3 * TX_BYTES_MAX,
            signer_bytes: 2 * TX_BYTES_MAX,
            nonce_window: 4,
            ..MempoolLimits::default()
        };
        let mut m = Mempool::new(limits);
        let big = TX_BYTES_MAX;
        m.insert(TxId([1; 32]), pooled(1, 0, big, 5));
        m.insert(TxId([2; 32]), pooled(1, 1, big, 7));
        assert_eq!(m.reserved(&AccountId([1; 32])), 12);
        assert_eq!(m.bytes(), 2 * big);
        assert_eq!(
            m.check_room(&[1; 32], 1),
            Err(TxError::SignerMempoolFull { pending: 2 * big, max: 2 * big })
        );
        m.check_room(&[2; 32], big).unwrap();
        m.insert(TxId([3; 32]), pooled(2, 0, big, 1));
        assert_eq!(m.check_room(&[3; 32], 1), Err(TxError::MempoolFull { max: 3 }));
        m.remove(&TxId([1; 32])).unwrap();
        assert_eq!(m.reserved(&AccountId([1; 32])), 7);
        assert_eq!(m.check_room(&[3; 32], big + 1), Err(TxError::MempoolBytesFull { max: 3 * big }));
        m.check_room(&[3; 32], big).unwrap();
        m.remove(&TxId([2; 32])).unwrap();
        m.remove(&TxId([3; 32])).unwrap();
        assert_eq!((m.len(), m.bytes(), m.reserved(&AccountId([1; 32]))), (0, 0, 0));
        assert!(m.by_signer.is_empty() && m.signer_bytes.is_empty() && m.reserved.is_empty());
    }

    fn topic_write(topic: u8, position: u64, digest: u8, len: usize) -> TopicPooled {
        TopicPooled {
            topic: Topic([topic; 32]),
            position,
            digest: [digest; 32],
            bytes: vec![0; len],
            since: 0,
        }
    }

    #[test]
    fn topic_writes_are_bounded_per_topic_and_in_bytes_and_work_rises_with_load() {
        let limits =
            MempoolLimits { topic_window: 2, topic_bytes: 4 * TX_BYTES_MAX, ..MempoolLimits::default() };
        let mut m = Mempool::new(limits);
        let t = Topic([1; 32]);
        assert_eq!(m.topic_work_factor(), 1);
        m.check_topic_room(&t, TX_BYTES_MAX).unwrap();
        m.insert_topic(TxId([1; 32]), topic_write(1, 0, 1, TX_BYTES_MAX));
        m.insert_topic(TxId([2; 32]), topic_write(1, 0, 2, TX_BYTES_MAX));
        assert_eq!(m.check_topic_room(&t, 10), Err(TxError::TopicWindowFull { pending: 2, max: 2 }));
        assert_eq!(m.topic_work_factor(), 2, "half the room is used");
        assert_eq!(m.topic_copy(&[2; 32]), Some(TxId([2; 32])));
        m.insert_topic(TxId([3; 32]), topic_write(2, 0, 3, TX_BYTES_MAX));
        assert_eq!(m.topic_work_factor(), 4);
        m.insert_topic(TxId([4; 32]), topic_write(3, 0, 4, TX_BYTES_MAX - 10));
        assert_eq!(m.topic_work_factor(), TOPIC_WORK_FACTOR_MAX);
        assert_eq!(
            m.check_topic_room(&Topic([4; 32]), 11),
            Err(TxError::TopicMempoolFull { max: 4 * TX_BYTES_MAX })
        );
        assert_eq!((m.len(), m.contains(&TxId([3; 32]))), (4, true));
        for i in 1..=4 {
            assert!(m.remove(&TxId([i; 32])).is_none(), "a topic write is not an account transaction");
        }
        assert_eq!((m.len(), m.bytes(), m.topic_work_factor()), (0, 0, 1));
        assert!(m.topics.by_topic.is_empty() && m.topics.by_digest.is_empty());
    }
}
