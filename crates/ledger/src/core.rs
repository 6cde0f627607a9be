//! The validator's ledger core, shared by the consensus application, the finalized-block
//! reporter and the client RPC: finalized state, speculative (notarized, not yet final) block
//! states, the mempool, and indexes for clients.
//!
//! All methods are synchronous and take the one lock briefly; consensus tasks and RPC threads
//! share it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_proto::Topic;

use crate::block::{BLOCK_TXS_MAX, Block, Header};
use crate::genesis::{Genesis, GenesisError};
use crate::light::StateProof;
use crate::state::{Executed, Layer, Mode, Outcome, Receipt, StateDb, StateError, StateKey, execute};
use crate::tx::{Tx, TxError, TxId};

/// Most transactions waiting in the mempool.
pub const MEMPOOL_MAX: usize = 200_000;
/// Most verified-signature cache entries.
const SIG_CACHE_MAX: usize = 400_000;

/// Where a transaction stands, as seen by one validator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TxStatus {
    /// Not known to this validator.
    Unknown,
    /// Waiting in the mempool.
    Pending,
    /// Refused before inclusion (not final: another validator may still include a transaction
    /// refused for a transient reason such as a skipped nonce).
    Rejected(TxError),
    /// Included in a finalized block.
    Finalized {
        /// Block height.
        height: u64,
        /// What it did.
        outcome: Outcome,
    },
}

/// An executed, not yet finalized block.
#[derive(Debug)]
struct Spec {
    parent: [u8; 32],
    height: u64,
    layer: Layer,
    receipts: Vec<Receipt>,
}

/// Summary of the finalized chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChainStatus {
    /// Finalized height.
    pub height: u64,
    /// Digest of the finalized tip.
    pub digest: [u8; 32],
    /// State root at the finalized tip.
    pub state_root: [u8; 32],
    /// Transactions waiting in this validator's mempool.
    pub mempool: usize,
}

#[derive(Debug)]
struct Core {
    chain: [u8; 32],
    db: StateDb,
    /// Finalized blocks by height (index 0 = genesis).
    blocks: Vec<Arc<Block>>,
    spec: HashMap<[u8; 32], Spec>,
    mempool: VecDeque<(TxId, Vec<u8>)>,
    in_mempool: HashSet<TxId>,
    sig_ok: HashSet<TxId>,
    sig_order: VecDeque<TxId>,
    tx_index: HashMap<TxId, (u64, Outcome)>,
    rejected: HashMap<TxId, TxError>,
    handshakes: HashMap<Topic, Vec<Vec<u8>>>,
    /// Encoded finalization certificates by block digest.
    finalizations: HashMap<[u8; 32], Vec<u8>>,
    /// Highest finalized height whose own certificate we hold.
    certified: Option<u64>,
    /// Blocks delivered ahead of a gap, applied once the gap fills.
    pending: BTreeMap<u64, Arc<Block>>,
    /// Internal failures (a finalized block that does not execute): never expected.
    faults: Vec<String>,
}

/// Shared handle to a validator's ledger core.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Mutex<Core>>,
    genesis_digest: [u8; 32],
}

/// Result of preparing a proposal.
#[derive(Debug)]
pub struct Proposal {
    /// The block.
    pub block: Block,
    /// Candidates dropped (for good) with their reasons.
    pub dropped: usize,
}

impl Ledger {
    /// A ledger at genesis.
    pub fn new(genesis: &Genesis) -> Result<Self, GenesisError> {
        let (machine, block) = genesis.build()?;
        let genesis_digest = block.id();
        let core = Core {
            chain: machine.chain,
            db: machine.db,
            blocks: vec![Arc::new(block)],
            spec: HashMap::new(),
            mempool: VecDeque::new(),
            in_mempool: HashSet::new(),
            sig_ok: HashSet::new(),
            sig_order: VecDeque::new(),
            tx_index: HashMap::new(),
            rejected: HashMap::new(),
            handshakes: HashMap::new(),
            finalizations: HashMap::new(),
            certified: None,
            pending: BTreeMap::new(),
            faults: Vec::new(),
        };
        Ok(Self { inner: Arc::new(Mutex::new(core)), genesis_digest })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A poisoned lock only means another thread panicked mid-update; the data is still the
        // best we have, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The genesis block.
    pub fn genesis_block(&self) -> Arc<Block> {
        Arc::clone(&self.lock().blocks[0])
    }

    /// Digest of the genesis block.
    pub fn genesis_digest(&self) -> [u8; 32] {
        self.genesis_digest
    }

    /// Chain id.
    pub fn chain(&self) -> [u8; 32] {
        self.lock().chain
    }

    /// Finalized height, tip digest and root.
    pub fn status(&self) -> ChainStatus {
        let c = self.lock();
        let tip = c.blocks.last().map(|b| b.id()).unwrap_or_default();
        ChainStatus {
            height: (c.blocks.len() as u64).saturating_sub(1),
            digest: tip,
            state_root: c.db.root(),
            mempool: c.mempool.len(),
        }
    }

    /// Transactions waiting in the mempool.
    pub fn mempool_len(&self) -> usize {
        self.lock().mempool.len()
    }

    /// Internal faults recorded (empty unless a finalized block failed to execute).
    pub fn faults(&self) -> Vec<String> {
        self.lock().faults.clone()
    }

    /// Finalized block at `height`.
    pub fn block(&self, height: u64) -> Option<Arc<Block>> {
        self.lock().blocks.get(usize::try_from(height).ok()?).cloned()
    }

    /// Digests of every finalized block, by height (for fork checks).
    pub fn chain_digests(&self) -> Vec<[u8; 32]> {
        self.lock().blocks.iter().map(|b| b.id()).collect()
    }

    /// The encoded finalization certificate of the block `digest`, if held.
    pub fn finalization(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.lock().finalizations.get(digest).cloned()
    }

    /// Records a finalization certificate (from the consensus reporter).
    pub fn record_finalization(&self, digest: [u8; 32], encoded: Vec<u8>) {
        let mut c = self.lock();
        c.finalizations.insert(digest, encoded);
        c.update_certified();
    }

    /// Submits a transaction to the mempool after checking it against the finalized state.
    pub fn submit(&self, bytes: Vec<u8>) -> Result<TxId, TxError> {
        let tx = Tx::decode(&bytes)?;
        let id = Tx::id_of(&bytes);
        // Signature outside the lock: it is the expensive part.
        tx.verify_signature()?;
        let mut c = self.lock();
        if c.in_mempool.contains(&id) || c.tx_index.contains_key(&id) {
            return Ok(id);
        }
        let overlay = c.db.overlay(Vec::new());
        let ex = crate::state::Executor::new(&overlay, c.chain);
        match ex.admit(&tx, true) {
            Ok(()) | Err(TxError::NonceSkipped { .. }) => {}
            Err(e) => return Err(e),
        }
        if c.mempool.len() >= MEMPOOL_MAX {
            return Err(TxError::Oversized { len: c.mempool.len(), max: MEMPOOL_MAX });
        }
        c.mark_sig_ok(id);
        c.in_mempool.insert(id);
        c.rejected.remove(&id);
        c.mempool.push_back((id, bytes));
        Ok(id)
    }

    /// Status of a transaction.
    pub fn tx_status(&self, id: &TxId) -> TxStatus {
        let c = self.lock();
        if let Some((height, outcome)) = c.tx_index.get(id) {
            return TxStatus::Finalized { height: *height, outcome: outcome.clone() };
        }
        if c.in_mempool.contains(id) {
            return TxStatus::Pending;
        }
        match c.rejected.get(id) {
            Some(e) => TxStatus::Rejected(e.clone()),
            None => TxStatus::Unknown,
        }
    }

    /// Finalized handshake messages of `topic` from `from`, at most `max`.
    pub fn handshakes(&self, topic: &Topic, from: u64, max: usize) -> Vec<Vec<u8>> {
        let c = self.lock();
        let Some(list) = c.handshakes.get(topic) else { return Vec::new() };
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        list.iter().skip(from).take(max).cloned().collect()
    }

    /// Next nonce of `signer` in the finalized state.
    pub fn nonce(&self, signer: &[u8; 32]) -> u64 {
        let c = self.lock();
        let ov = c.db.overlay(Vec::new());
        crate::state::Executor::new(&ov, c.chain).nonce(signer).unwrap_or(0)
    }

    /// A proof of `key` at the highest finalized height that has its own certificate, if the
    /// state there is still the current one (otherwise `None`; retry after the next
    /// finalization).
    pub fn prove(&self, key: &StateKey) -> Result<Option<StateProof>, StateError> {
        let c = self.lock();
        let Some(h) = c.certified else { return Ok(None) };
        if c.db.height() != Some(h) {
            return Ok(None);
        }
        let Some(block) = c.blocks.get(h as usize) else { return Ok(None) };
        let Some(fin) = c.finalizations.get(&block.id()) else { return Ok(None) };
        let (value, proof) = c.db.prove(key)?;
        Ok(Some(StateProof::new(block.header, fin.clone(), value, &proof)))
    }

    /// Finalized header at `height`.
    pub fn header(&self, height: u64) -> Option<Header> {
        self.block(height).map(|b| b.header)
    }

    /// Whether the state after block `digest` (at `height`) is known: the finalized tip or
    /// executed speculatively.
    pub fn knows(&self, digest: &[u8; 32], height: u64) -> Knowledge {
        self.lock().knows(digest, height)
    }

    /// Executes `block` (verify mode) on top of its parent, which must be known; remembers the
    /// result. Returns whether the block is valid.
    pub fn verify_block(&self, block: &Block) -> Result<bool, StateError> {
        let mut c = self.lock();
        let id = block.id();
        if c.spec.contains_key(&id)
            || c.blocks.get(block.header.height as usize).is_some_and(|b| b.id() == id)
        {
            return Ok(true);
        }
        let Some(layers) = c.layers_for(&block.header.parent) else { return Ok(false) };
        let parent_height = layers.last().map_or(c.db.height().unwrap_or(0), |l| l.height);
        if block.header.height != parent_height + 1 {
            return Ok(false);
        }
        let res = {
            let sig_ok = &c.sig_ok;
            execute(&c.db, layers, c.chain, block.header.height, &block.txs, Mode::Verify, &|id| {
                sig_ok.contains(id)
            })
        };
        match res {
            Ok(Executed { layer, receipts, .. }) => {
                if layer.root != block.header.state_root {
                    return Ok(false);
                }
                let spec = Spec { parent: block.header.parent, height: block.header.height, layer, receipts };
                c.spec.insert(id, spec);
                Ok(true)
            }
            Err(crate::state::BlockError::Tx { .. }) => Ok(false),
            Err(crate::state::BlockError::State(e)) => Err(e),
        }
    }

    /// Builds a block on `parent` (whose state must be known) from the mempool.
    pub fn propose(&self, parent: &[u8; 32], parent_height: u64) -> Result<Option<Proposal>, StateError> {
        let mut guard = self.lock();
        let c = &mut *guard;
        let Some(layers) = c.layers_for(parent) else { return Ok(None) };
        // transactions already in unfinalized ancestors are not candidates
        let mut in_ancestors: HashSet<TxId> = HashSet::new();
        for l in &layers {
            if let Some(s) = c.spec.values().find(|s| std::ptr::eq(&s.layer, *l)) {
                in_ancestors.extend(s.receipts.iter().map(|r| r.tx));
            }
        }
        let candidates: Vec<Vec<u8>> = c
            .mempool
            .iter()
            .filter(|(id, _)| !in_ancestors.contains(id))
            .take(BLOCK_TXS_MAX)
            .map(|(_, b)| b.clone())
            .collect();
        let height = parent_height + 1;
        let ex = {
            let sig_ok = &c.sig_ok;
            execute(&c.db, layers, c.chain, height, &candidates, Mode::Propose, &|id| sig_ok.contains(id))
        };
        let ex = match ex {
            Ok(ex) => ex,
            Err(crate::state::BlockError::State(e)) => return Err(e),
            Err(crate::state::BlockError::Tx { .. }) => return Ok(None),
        };
        let mut dropped = 0;
        for d in &ex.dropped {
            // nonce races are transient (an unfinalized ancestor may be orphaned): keep those,
            // unless the nonce is used in the finalized state
            let transient = match &d.error {
                TxError::NonceSkipped { .. } => true,
                TxError::NonceReplayed { .. } => {
                    candidates.get(d.index).and_then(|b| Tx::decode(b).ok()).is_some_and(|t| {
                        let ov = c.db.overlay(Vec::new());
                        crate::state::Executor::new(&ov, c.chain).nonce(&t.signer).unwrap_or(0) <= t.nonce
                    })
                }
                _ => false,
            };
            if transient {
                continue;
            }
            dropped += 1;
            c.in_mempool.remove(&d.tx);
            c.rejected.insert(d.tx, d.error.clone());
        }
        if dropped > 0 {
            let gone: HashSet<TxId> = ex.dropped.iter().map(|d| d.tx).collect();
            let in_mempool = &c.in_mempool;
            let keep: VecDeque<_> =
                c.mempool.drain(..).filter(|(id, _)| !gone.contains(id) || in_mempool.contains(id)).collect();
            c.mempool = keep;
        }
        let txs: Vec<Vec<u8>> = ex.included.iter().map(|&i| candidates[i].clone()).collect();
        let block = Block::new(height, *parent, ex.layer.root, txs);
        let spec = Spec { parent: *parent, height, layer: ex.layer, receipts: ex.receipts };
        c.spec.insert(block.id(), spec);
        Ok(Some(Proposal { block, dropped }))
    }

    /// A block that honest validators must refuse: it carries a transaction with a forged
    /// signature and claims the parent's root. Used by the Byzantine fault tests.
    pub fn byzantine_proposal(&self, parent: &[u8; 32], parent_height: u64) -> Option<Block> {
        let c = self.lock();
        let key = cairn_proto::ed25519::SigningKey::from_bytes(&[0x0B; 32]);
        let account = cairn_proto::AccountId(key.verifying_key().to_bytes());
        let mut tx = Tx::sign(c.chain, account, &key, 0, crate::tx::TxBody::RegisterAccount);
        tx.signature[0] ^= 1;
        Some(Block::new(parent_height + 1, *parent, c.db.root(), vec![tx.encode()]))
    }

    /// Applies a finalized block delivered by marshal (idempotent; out-of-order deliveries
    /// wait for the gap to fill).
    pub fn finalize(&self, block: Arc<Block>) {
        let mut c = self.lock();
        let tip = (c.blocks.len() as u64).saturating_sub(1);
        let h = block.header.height;
        if h <= tip {
            if c.blocks.get(h as usize).is_some_and(|b| b.id() != block.id()) {
                c.faults.push(format!("conflicting finalized block at height {h}"));
            }
            return;
        }
        c.pending.insert(h, block);
        loop {
            let next = (c.blocks.len()) as u64;
            let Some(b) = c.pending.remove(&next) else { break };
            c.apply_finalized(b);
        }
    }
}

/// Whether a block's post-state is available.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Knowledge {
    /// The finalized tip or an executed unfinalized block.
    Known,
    /// At or below the finalized height but not the tip: nothing valid can be built on it.
    Dead,
    /// Not executed yet.
    Unknown,
}

impl Core {
    fn tip(&self) -> (u64, [u8; 32]) {
        let h = (self.blocks.len() as u64).saturating_sub(1);
        (h, self.blocks.last().map(|b| b.id()).unwrap_or_default())
    }

    fn knows(&self, digest: &[u8; 32], height: u64) -> Knowledge {
        let (tip_h, tip) = self.tip();
        if *digest == tip || self.spec.contains_key(digest) {
            return Knowledge::Known;
        }
        if height <= tip_h {
            return Knowledge::Dead;
        }
        Knowledge::Unknown
    }

    /// Layers from the finalized tip to `digest` (oldest first), or `None` if `digest` does not
    /// descend from the finalized tip through executed blocks.
    fn layers_for(&self, digest: &[u8; 32]) -> Option<Vec<&Layer>> {
        let (tip_h, tip) = self.tip();
        let mut out = Vec::new();
        let mut cur = *digest;
        loop {
            if cur == tip {
                out.reverse();
                return Some(out);
            }
            let s = self.spec.get(&cur)?;
            if s.height <= tip_h {
                return None;
            }
            out.push(&s.layer);
            cur = s.parent;
        }
    }

    fn mark_sig_ok(&mut self, id: TxId) {
        if self.sig_ok.insert(id) {
            self.sig_order.push_back(id);
            while self.sig_order.len() > SIG_CACHE_MAX {
                if let Some(old) = self.sig_order.pop_front() {
                    self.sig_ok.remove(&old);
                }
            }
        }
    }

    fn update_certified(&mut self) {
        let tip = (self.blocks.len() as u64).saturating_sub(1);
        if self.blocks.get(tip as usize).is_some_and(|b| self.finalizations.contains_key(&b.id())) {
            self.certified = Some(tip);
        }
    }

    fn apply_finalized(&mut self, block: Arc<Block>) {
        let id = block.id();
        let h = block.header.height;
        let (_, tip) = self.tip();
        if block.header.parent != tip {
            self.faults.push(format!("finalized block {h} does not extend the finalized tip"));
            return;
        }
        let (layer, receipts) = match self.spec.remove(&id) {
            Some(s) => (s.layer, s.receipts),
            None => {
                let sig_ok = &self.sig_ok;
                match execute(&self.db, Vec::new(), self.chain, h, &block.txs, Mode::Verify, &|i| {
                    sig_ok.contains(i)
                }) {
                    Ok(ex) if ex.layer.root == block.header.state_root => (ex.layer, ex.receipts),
                    Ok(_) => {
                        self.faults.push(format!("finalized block {h} has a wrong state root"));
                        return;
                    }
                    Err(e) => {
                        self.faults.push(format!("finalized block {h} does not execute: {e}"));
                        return;
                    }
                }
            }
        };
        self.db.apply(layer);
        for (r, bytes) in receipts.iter().zip(block.txs.iter()) {
            if let Outcome::Sequenced { topic, .. } = &r.outcome
                && let Ok(tx) = Tx::decode(bytes)
                && let crate::tx::TxBody::SequenceHandshake { payload, .. } = tx.body
            {
                self.handshakes.entry(*topic).or_default().push(payload);
            }
            self.tx_index.insert(r.tx, (h, r.outcome.clone()));
            if self.in_mempool.remove(&r.tx) {
                self.sig_ok.remove(&r.tx);
            }
        }
        self.blocks.push(block);
        // forget unfinalized blocks that can no longer be extended
        self.spec.retain(|_, s| s.height > h);
        // drop mempool entries that were included or whose nonce is now used
        if !self.mempool.is_empty() {
            let in_mempool = &self.in_mempool;
            let keep: VecDeque<_> = self.mempool.drain(..).filter(|(i, _)| in_mempool.contains(i)).collect();
            self.mempool = keep;
        }
        self.update_certified();
    }
}
