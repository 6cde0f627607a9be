//! The core's mempool upkeep: admission of both transaction forms against the finalized
//! state, block candidates of topic writes, and the sweeps that reject, with a reason a client
//! can read, what can no longer be included.

use crate::fast_map::FastSet;

use cairn_proto::Topic;

use super::{Core, NONCE_GAP_BLOCKS};
use crate::block::BLOCK_BYTES_MAX;
use crate::mempool::{Pooled, TopicPooled};
use crate::tx::{AnyTx, TopicTx, Tx, TxError, TxId};

impl Core {
    /// Admits a transaction whose signature is verified into the pool, checked against the
    /// finalized state: a nonce up to the window ahead of the signer's next one waits for its
    /// predecessors; the account must be able to pay this fee on top of the fees its waiting
    /// transactions already reserve; and the mempool's byte and count bounds must have room
    /// (never making room by evicting another transaction).
    pub(super) fn admit_to_pool(&mut self, id: TxId, tx: &Tx, bytes: Vec<u8>) -> Result<TxId, TxError> {
        if self.pool.contains(&id) {
            return Ok(id);
        }
        let overlay = self.db.overlay(Vec::new());
        let mut ex = crate::state::Executor::new(&overlay, self.chain);
        ex.preset_params(self.params);
        let reserved = self.pool.reserved(&tx.account);
        let window = self.pool.limits().nonce_window;
        let fee = match ex.admit_pending(tx, bytes.len(), true, reserved, window) {
            Ok(fee) => fee,
            // a finalized transaction's nonce is used, so it never passes admission: the chain
            // store is read only for a refused one (not once per admitted transaction)
            Err(_) if matches!(self.store.known(&[id]).as_deref(), Ok([true])) => return Ok(id),
            Err(e) => return Err(e),
        };
        self.pool.check_room(&tx.signer, bytes.len())?;
        self.mark_sig_ok(id);
        self.rejected.remove(&id);
        let since = self.tip.header.height;
        let p = Pooled { signer: tx.signer, account: tx.account, nonce: tx.nonce, fee, bytes, since };
        self.pool.insert(id, p);
        Ok(id)
    }

    pub(super) fn remove_from_pool(&mut self, id: &TxId) {
        self.sig_ok.remove(id);
        self.pool.remove(id);
    }

    /// Rejects, with a reason a client can read, waiting transactions that can never be
    /// included: a nonce used in the finalized state by another transaction
    /// ([`TxError::NonceReplayed`]), or a nonce gap this validator has not seen filled for
    /// [`NONCE_GAP_BLOCKS`] finalized blocks ([`TxError::NonceSkipped`]).
    pub(super) fn sweep(&mut self, height: u64) {
        let overlay = self.db.overlay(Vec::new());
        let ex = crate::state::Executor::new(&overlay, self.chain);
        let mut gone: Vec<(TxId, TxError)> = Vec::new();
        for (signer, queue) in &self.pool.by_signer {
            let expected = ex.nonce(signer).unwrap_or(0);
            let mut want = expected;
            for (nonce, id) in queue {
                if *nonce < expected {
                    gone.push((*id, TxError::NonceReplayed { expected, got: *nonce }));
                } else if *nonce == want {
                    want += 1;
                } else if *nonce > want
                    && self.pool.pool.get(id).is_some_and(|p| p.since + NONCE_GAP_BLOCKS <= height)
                {
                    gone.push((*id, TxError::NonceSkipped { expected: want, got: *nonce }));
                }
            }
        }
        for (id, e) in gone {
            self.remove_from_pool(&id);
            self.reject(id, e);
        }
    }

    /// Records why `id` was rejected, forgetting the oldest records beyond [`REJECTED_MAX`].
    pub(super) fn reject(&mut self, id: TxId, e: TxError) {
        self.rejected.insert(id, e);
    }

    /// Admits a topic write (no account, no signature to batch: its member signature is
    /// checked with its position) into the pool, against the finalized state, at the proof of
    /// work this mempool's load asks. A copy of a write already held (the same write mined
    /// under another nonce) is answered with the id held; a write already finalized with its
    /// own id.
    pub(super) fn admit_topic(&mut self, bytes: Vec<u8>) -> Result<TxId, TxError> {
        let id = Tx::id_of(&bytes);
        let tx = TopicTx::decode(&bytes)?;
        if self.pool.contains(&id) || matches!(self.store.known(&[id]).as_deref(), Ok([true])) {
            return Ok(id);
        }
        let digest = TopicTx::write_digest(&bytes);
        if let Some(held) = self.pool.topic_copy(&digest) {
            return Ok(held);
        }
        let overlay = self.db.overlay(Vec::new());
        let ex = crate::state::Executor::new(&overlay, self.chain);
        let work = self.pool.topic_work_factor();
        if let Err(e) = ex.admit_topic(&tx, &id, bytes.len(), work, self.topic_window(), false) {
            if is_stale_for_good(&e) {
                // as final as a rejection: remembered, so that this validator answers "rejected:
                // stale" like one that admitted the write before the competing commit and
                // rejected it after (a client waits for every validator's word)
                self.stale.insert(id, e.clone());
            }
            return Err(e);
        }
        let topic = *tx.body.topic();
        self.pool.check_topic_room(&topic, bytes.len())?;
        // its member signature verified: executing it in a block skips that check
        self.mark_sig_ok(id);
        self.rejected.remove(&id);
        self.stale.remove(&id);
        let since = self.tip.header.height;
        self.pool.insert_topic(id, TopicPooled { topic, position: tx.body.position(), digest, bytes, since });
        Ok(id)
    }

    /// Topic writes for the next block, topic by topic in the order topics first arrived,
    /// each topic's writes by position (so a commit and the next one can go in one block);
    /// at most half the block's transactions and bytes, so account transactions always have
    /// room. `bytes` is the block size so far and grows with what is taken; `verified` gets the
    /// ids of those whose member signature this node verified.
    pub(super) fn topic_candidates(
        &self,
        in_ancestors: &FastSet<TxId>,
        bytes: &mut usize,
        verified: &mut FastSet<TxId>,
    ) -> Vec<(TxId, Vec<u8>)> {
        let mut out = Vec::new();
        let mut topics: FastSet<Topic> = FastSet::default();
        let pool = &self.pool.topics;
        for id in &pool.order {
            let Some(first) = pool.txs.get(id) else { continue };
            if !topics.insert(first.topic) {
                continue;
            }
            let mut ids: Vec<(u64, TxId)> = pool
                .by_topic
                .get(&first.topic)
                .into_iter()
                .flatten()
                .filter(|t| !in_ancestors.contains(*t))
                .filter_map(|t| pool.txs.get(t).map(|p| (p.position, *t)))
                .collect();
            // by position; at one position, first arrived first (a stable sort of the arrival
            // order): the tx id, a hash of a mined nonce, must not pick the winner
            ids.sort_by_key(|(position, _)| *position);
            for (_, t) in ids {
                let Some(p) = pool.txs.get(&t) else { continue };
                if out.len() >= (self.proposal_txs_max / 2).max(1)
                    || *bytes + 4 + p.bytes.len() > BLOCK_BYTES_MAX / 2
                {
                    return out;
                }
                *bytes += 4 + p.bytes.len();
                out.push((t, p.bytes.clone()));
                if self.sig_ok.contains(&t) {
                    verified.insert(t);
                }
            }
        }
        out
    }

    /// Whether the finalized state still admits the topic write `bytes` (a proposal dropped it
    /// for its position, which an unfinalized ancestor may have taken: transient if so).
    pub(super) fn topic_admissible(&self, bytes: &[u8]) -> bool {
        let Ok(AnyTx::Topic(tx)) = AnyTx::decode(bytes) else { return false };
        let overlay = self.db.overlay(Vec::new());
        let ex = crate::state::Executor::new(&overlay, self.chain);
        let id = Tx::id_of(bytes);
        ex.admit_topic(&tx, &id, bytes.len(), 1, self.topic_window(), self.sig_ok.contains(&id)).is_ok()
    }

    /// How far ahead of a topic's handshake count a waiting handshake may be (positions).
    fn topic_window(&self) -> u64 {
        u64::try_from(self.pool.limits().topic_window).unwrap_or(u64::MAX)
    }

    /// Rejects waiting handshakes whose predecessor this validator has not seen finalized for
    /// [`NONCE_GAP_BLOCKS`] blocks (they hold room that nothing will free).
    pub(super) fn sweep_topics(&mut self, height: u64) {
        let gone: Vec<(TxId, TxError)> = {
            let overlay = self.db.overlay(Vec::new());
            let ex = crate::state::Executor::new(&overlay, self.chain);
            self.pool
                .topics
                .txs
                .iter()
                .filter(|(_, p)| p.since + NONCE_GAP_BLOCKS <= height)
                .filter_map(|(id, p)| {
                    let t = TopicTx::decode(&p.bytes).ok()?;
                    ex.admit_topic(&t, id, p.bytes.len(), 1, 1, self.sig_ok.contains(id))
                        .err()
                        .map(|e| (*id, e))
                })
                .collect()
        };
        for (id, e) in gone {
            self.remove_from_pool(&id);
            self.reject(id, e);
        }
    }

    /// After a finalized block: rejects the waiting writes of every topic the block wrote
    /// that the new state refuses (a competing commit took their position, a newer anchor
    /// passed them, their key was pruned), so every validator tells their submitters at once.
    pub(super) fn recheck_topics(&mut self, block_txs: &[Vec<u8>]) {
        let touched: FastSet<Topic> = block_txs
            .iter()
            .filter(|b| AnyTx::is_topic_write(b))
            .filter_map(|b| TopicTx::decode(b).ok().map(|t| *t.body.topic()))
            .collect();
        let mut gone: Vec<(TxId, TxError)> = Vec::new();
        let window = self.topic_window();
        {
            let overlay = self.db.overlay(Vec::new());
            let ex = crate::state::Executor::new(&overlay, self.chain);
            for topic in &touched {
                for id in self.pool.topics.by_topic.get(topic).into_iter().flatten() {
                    let Some(p) = self.pool.topics.txs.get(id) else { continue };
                    let res = TopicTx::decode(&p.bytes).and_then(|t| {
                        ex.admit_topic(&t, id, p.bytes.len(), 1, window, self.sig_ok.contains(id))
                    });
                    if let Err(e) = res {
                        gone.push((*id, e));
                    }
                }
            }
        }
        for (id, e) in gone {
            self.remove_from_pool(&id);
            self.reject(id, e);
        }
    }
}

/// Whether a topic write's admission refusal holds for good: its position is taken in the
/// finalized state (a handshake behind the topic's count, an anchor at or below the anchored
/// count), which only grows. A handshake too far *ahead* is refused with the same error and is
/// not final: its predecessors may still come.
fn is_stale_for_good(e: &TxError) -> bool {
    match e {
        TxError::StaleSequence { after, current } => after < current,
        TxError::AnchorRegressed { .. } => true,
        _ => false,
    }
}
