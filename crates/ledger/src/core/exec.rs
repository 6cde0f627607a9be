//! Block execution for consensus: verifying a proposed block and building one from the
//! mempool. Execution runs outside the core lock, on a snapshot taken under it: the finalized
//! state (`Arc<StateDb>`, which the finalizer does not change while a snapshot is out, see
//! [`Ledger::finalize`]) and the executed ancestors' layers (`Arc<Layer>`); admission, status
//! reads and the finalizer go on meanwhile.

use crate::fast_map::{FastMap, FastSet};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{Core, Knowledge, Ledger, Proposal, SNAPSHOT_WAIT, Spec};
use crate::block::{BLOCK_BYTES_MAX, Block};
use crate::outcome_tree::receipts_root;
use crate::state::{BlockError, Executed, Layer, Mode, StateDb, StateError, execute_with_ids};
use crate::tx::{Tx, TxError, TxId};

/// What execution needs from the core, taken under its lock.
struct Snapshot {
    db: Arc<StateDb>,
    layers: Vec<Arc<Layer>>,
    chain: [u8; 32],
}

impl Snapshot {
    fn run(
        &self,
        height: u64,
        txs: &[Vec<u8>],
        ids: &[TxId],
        mode: Mode,
        verified: &FastSet<TxId>,
    ) -> Result<Executed, BlockError> {
        let layers: Vec<&Layer> = self.layers.iter().map(|l| &**l).collect();
        execute_with_ids(&self.db, layers, self.chain, height, txs, ids, mode, &|id| verified.contains(id))
    }
}

impl Core {
    fn snapshot(&self, layers: Vec<Arc<Layer>>) -> Snapshot {
        Snapshot { db: Arc::clone(&self.db), layers, chain: self.chain }
    }

    /// Records an executed block if its parent is still the finalized tip or an executed block
    /// (the finalizer may have moved past it while it executed).
    fn remember(&mut self, id: [u8; 32], spec: Spec) {
        if self.knows(&spec.parent, spec.height.saturating_sub(1)) == Knowledge::Known {
            self.spec.insert(id, spec);
        }
    }
}

impl Ledger {
    /// The core lock, once no finalizer waits to apply a block (it waits for the snapshots out
    /// to end, see `Ledger::lock_for_apply`), or after [`SNAPSHOT_WAIT`].
    fn lock_for_snapshot(&self) -> MutexGuard<'_, Core> {
        let start = Instant::now();
        loop {
            let c = self.lock();
            if !c.apply_pending || start.elapsed() >= SNAPSHOT_WAIT {
                return c;
            }
            drop(c);
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Executes `block` (verify mode) on top of its parent, which must be known; remembers the
    /// result. Returns whether the block is valid.
    pub fn verify_block(&self, block: &Block) -> Result<bool, StateError> {
        let _work = self.gate.block_work();
        let ids = self.preverify(&block.txs);
        let id = block.id();
        let (snap, verified) = {
            let c = self.lock_for_snapshot();
            if c.spec.contains_key(&id)
                || id == c.tip.id()
                || c.recent.get(&block.header.height).is_some_and(|b| b.id() == id)
                || matches!(c.store.digest(block.header.height), Ok(Some(d)) if d == id)
            {
                return Ok(true);
            }
            let Some(layers) = c.layers_for(&block.header.parent) else { return Ok(false) };
            let parent_height = layers.last().map_or(c.db.height().unwrap_or(0), |l| l.height);
            if block.header.height != parent_height + 1 {
                return Ok(false);
            }
            let verified: FastSet<TxId> = ids.iter().filter(|i| c.sig_ok.contains(*i)).copied().collect();
            (c.snapshot(layers), verified)
        };
        match snap.run(block.header.height, &block.txs, &ids, Mode::Verify, &verified) {
            Ok(Executed { layer, receipts, .. }) => {
                if layer.root != block.header.state_root
                    || receipts_root(&receipts) != block.header.outcome_root
                {
                    return Ok(false);
                }
                drop(snap);
                let spec = Spec {
                    parent: block.header.parent,
                    height: block.header.height,
                    layer: Arc::new(layer),
                    receipts: Arc::new(receipts),
                };
                self.lock().remember(id, spec);
                Ok(true)
            }
            Err(BlockError::Tx { .. }) => Ok(false),
            Err(BlockError::State(e)) => Err(e),
        }
    }

    /// Checks, in one batch and outside the lock, the signatures of those `txs` this node has
    /// not verified yet, and remembers the valid ones (so executing the block verifies nothing).
    /// Returns the transactions' ids.
    fn preverify(&self, txs: &[Vec<u8>]) -> Vec<TxId> {
        let ids: Vec<TxId> = txs.iter().map(|b| Tx::id_of(b)).collect();
        let missing: Vec<usize> = {
            let c = self.lock();
            (0..ids.len()).filter(|&i| !c.sig_ok.contains(&ids[i])).collect()
        };
        if missing.is_empty() {
            return ids;
        }
        let decoded: Vec<(usize, Tx)> =
            missing.iter().filter_map(|&i| Tx::decode(&txs[i]).ok().map(|t| (i, t))).collect();
        let refs: Vec<&Tx> = decoded.iter().map(|(_, t)| t).collect();
        let verdicts = Tx::verify_signatures(&refs);
        let mut c = self.lock();
        for ((i, _), ok) in decoded.iter().zip(verdicts) {
            if ok {
                c.mark_sig_ok(ids[*i]);
            }
        }
        ids
    }

    /// Builds a block on `parent` (whose state must be known) from the mempool.
    pub fn propose(&self, parent: &[u8; 32], parent_height: u64) -> Result<Option<Proposal>, StateError> {
        let _work = self.gate.block_work();
        let (snap, candidates, ids, verified) = {
            let c = self.lock_for_snapshot();
            let Some(layers) = c.layers_for(parent) else { return Ok(None) };
            let (candidates, ids, verified) = c.candidates(&layers);
            (c.snapshot(layers), candidates, ids, verified)
        };
        let height = parent_height + 1;
        let ex = match snap.run(height, &candidates, &ids, Mode::Propose, &verified) {
            Ok(ex) => ex,
            Err(BlockError::State(e)) => return Err(e),
            Err(BlockError::Tx { .. }) => return Ok(None),
        };
        drop(snap);
        let mut guard = self.lock();
        let c = &mut *guard;
        let mut dropped = 0;
        for d in &ex.dropped {
            // nonce races and fees spent by unfinalized ancestors are transient (an ancestor may
            // be orphaned): keep those, unless the finalized state refuses them too
            let finalized = || {
                let bytes = candidates.get(d.index)?;
                let t = Tx::decode(bytes).ok()?;
                let ov = c.db.overlay(Vec::new());
                let ex = crate::state::Executor::new(&ov, c.chain);
                Some((
                    ex.nonce(&t.signer).unwrap_or(0),
                    t.nonce,
                    ex.spendable(&t),
                    ex.params().fee(bytes.len(), t.body.fuel_limit()),
                ))
            };
            let transient = match &d.error {
                TxError::NonceSkipped { .. } | TxError::BlockFuelFull { .. } => true,
                TxError::NonceReplayed { .. } => finalized().is_some_and(|(next, n, _, _)| next <= n),
                TxError::FeeUnpaid { .. } => finalized().is_some_and(|(_, _, have, fee)| have >= fee),
                TxError::StaleSequence { .. } | TxError::AnchorRegressed { .. } => {
                    c.topic_admissible(&candidates[d.index])
                }
                _ => false,
            };
            if transient {
                continue;
            }
            dropped += 1;
            c.remove_from_pool(&d.tx);
            c.reject(d.tx, d.error.clone());
        }
        let txs: Vec<Vec<u8>> = ex.included.iter().map(|&i| candidates[i].clone()).collect();
        let tx_ids: Vec<TxId> = ex.included.iter().map(|&i| ids[i]).collect();
        let block =
            Block::with_tx_ids(height, *parent, ex.layer.root, txs, &tx_ids, receipts_root(&ex.receipts));
        if c.knows(parent, parent_height) != Knowledge::Known {
            // the finalizer moved past the parent while this executed: nothing to build on
            return Ok(None);
        }
        let spec =
            Spec { parent: *parent, height, layer: Arc::new(ex.layer), receipts: Arc::new(ex.receipts) };
        c.spec.insert(block.id(), spec);
        Ok(Some(Proposal { block, dropped }))
    }
}

impl Core {
    /// The next block's candidates on top of `layers` (the parent's executed ancestry) and
    /// the ids among them whose signatures this node verified. In arrival order, each
    /// signer's transactions in nonce order from its next nonce after the parent: a
    /// transaction whose predecessor is missing waits without taking a slot (no head-of-line
    /// blocking), and successors that arrived first still go in one block. Transactions
    /// already in unfinalized ancestors are not candidates.
    fn candidates(&self, layers: &[Arc<Layer>]) -> (Vec<Vec<u8>>, Vec<TxId>, FastSet<TxId>) {
        let mut in_ancestors: FastSet<TxId> = FastSet::default();
        for l in layers {
            if let Some(s) = self.spec.values().find(|s| Arc::ptr_eq(&s.layer, l)) {
                in_ancestors.extend(s.receipts.iter().map(|r| r.tx));
            }
        }
        let overlay = self.db.overlay(layers.iter().map(|l| &**l).collect());
        let ex = crate::state::Executor::new(&overlay, self.chain);
        let mut next: FastMap<[u8; 32], u64> = FastMap::default();
        let mut bytes = crate::block::HEADER_BYTES;
        let mut verified: FastSet<TxId> = FastSet::default();
        let (mut ids, mut out): (Vec<TxId>, Vec<Vec<u8>>) =
            self.topic_candidates(&in_ancestors, &mut bytes, &mut verified).into_iter().unzip();
        'scan: for id in &self.pool.order {
            let Some(p) = self.pool.pool.get(id) else { continue };
            let n = match next.get(&p.signer) {
                Some(n) => *n,
                None => ex.nonce(&p.signer).unwrap_or(0),
            };
            next.insert(p.signer, n);
            if p.nonce != n || in_ancestors.contains(id) {
                continue;
            }
            // this signer's run of consecutive nonces from `n`
            let mut want = n;
            let Some(queue) = self.pool.by_signer.get(&p.signer) else { continue };
            for (nonce, tid) in queue.range((n, TxId([0; 32]))..) {
                if *nonce != want {
                    if *nonce > want {
                        break;
                    }
                    continue; // a second transaction with a nonce already taken
                }
                if in_ancestors.contains(tid) {
                    continue;
                }
                let Some(q) = self.pool.pool.get(tid) else { continue };
                if out.len() >= self.proposal_txs_max || bytes + 4 + q.bytes.len() > BLOCK_BYTES_MAX {
                    break 'scan;
                }
                bytes += 4 + q.bytes.len();
                out.push(q.bytes.clone());
                ids.push(*tid);
                if self.sig_ok.contains(tid) {
                    verified.insert(*tid);
                }
                want += 1;
            }
            next.insert(p.signer, want);
        }
        (out, ids, verified)
    }
}
