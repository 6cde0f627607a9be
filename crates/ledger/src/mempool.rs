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

use std::collections::{BTreeSet, HashMap, VecDeque};

use cairn_proto::AccountId;

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
}

impl Default for MempoolLimits {
    /// [`MEMPOOL_MAX`], [`MEMPOOL_BYTES_MAX`], [`SIGNER_BYTES_MAX`], [`NONCE_WINDOW`].
    fn default() -> Self {
        Self {
            txs: MEMPOOL_MAX,
            bytes: MEMPOOL_BYTES_MAX,
            signer_bytes: SIGNER_BYTES_MAX,
            nonce_window: NONCE_WINDOW,
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

/// Waiting transactions and their accounting.
#[derive(Debug)]
pub(crate) struct Mempool {
    limits: MempoolLimits,
    /// Waiting transactions by id.
    pub(crate) pool: HashMap<TxId, Pooled>,
    /// Arrival order (may hold ids already gone from `pool`; compacted when mostly stale).
    pub(crate) order: VecDeque<TxId>,
    /// Waiting transactions of each signer, by nonce.
    pub(crate) by_signer: HashMap<[u8; 32], BTreeSet<(u64, TxId)>>,
    /// Bytes waiting in total.
    bytes: usize,
    /// Bytes waiting per signer.
    signer_bytes: HashMap<[u8; 32], usize>,
    /// Fees of waiting transactions per account.
    reserved: HashMap<AccountId, u64>,
}

impl Mempool {
    /// An empty mempool with `limits` (made [`MempoolLimits::sane`]).
    pub(crate) fn new(limits: MempoolLimits) -> Self {
        Self {
            limits: limits.sane(),
            pool: HashMap::new(),
            order: VecDeque::new(),
            by_signer: HashMap::new(),
            bytes: 0,
            signer_bytes: HashMap::new(),
            reserved: HashMap::new(),
        }
    }

    pub(crate) fn limits(&self) -> MempoolLimits {
        self.limits
    }

    pub(crate) fn len(&self) -> usize {
        self.pool.len()
    }

    /// Bytes of the waiting transactions.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn contains(&self, id: &TxId) -> bool {
        self.pool.contains_key(id)
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

    /// Removes a transaction and its accounting.
    pub(crate) fn remove(&mut self, id: &TxId) -> Option<Pooled> {
        let p = self.pool.remove(id)?;
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
}
