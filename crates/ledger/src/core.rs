//! The validator's ledger core, shared by the consensus application, the finalized-block
//! reporter and the client RPC: finalized state, speculative (notarized, not yet final) block
//! states, the mempool, and indexes for clients.
//!
//! All methods are synchronous and take the one lock briefly; consensus tasks and RPC threads
//! share it. Block execution runs outside it, on a snapshot (see `core/exec.rs`). Finalized
//! blocks, transaction outcomes, handshake lists and certificates live on disk in the
//! [`ChainStore`]; memory holds the tip, the last [`BLOCK_CACHE_MAX`] blocks and the state
//! tree (whose size follows the live state, not the chain's length).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_proto::Topic;

use crate::block::{Block, Header};
pub use crate::chain_store::OpenError;
use crate::chain_store::{ChainStore, ChainStoreError, FinalizedBlock};
use crate::fast_map::{FastMap, FastSet};
use crate::genesis::Genesis;
use crate::light::StateProof;
use crate::mempool::Mempool;
pub use crate::mempool::{MEMPOOL_BYTES_MAX, MEMPOOL_MAX, MempoolLimits, NONCE_WINDOW, SIGNER_BYTES_MAX};
use crate::outcome_tree::receipts_root;
use crate::state::{Layer, Mode, Outcome, Receipt, StateDb, StateError, StateKey, execute};
use crate::tx::{AnyTx, Tx, TxError, TxId};

mod admission;
mod exec;
mod pool;
mod refusals;

pub use admission::{
    ADMISSION_TURN_WAIT_MS, ADMISSION_YIELD_MS_MAX, ADMISSIONS_CONCURRENT_MAX, AdmissionPolicy, RPC_NICE,
    lower_thread_priority,
};
use refusals::RefusalLog;

/// Most verified-signature cache entries.
const SIG_CACHE_MAX: usize = 400_000;
/// Finalized blocks a transaction may wait for a missing predecessor nonce (one this validator
/// does not hold) before it is rejected with [`TxError::NonceSkipped`]; the predecessor may be
/// at another validator, which includes it within a few blocks.
pub const NONCE_GAP_BLOCKS: u64 = 100;
/// Rejection records kept for clients asking about a transaction (records). Overflow policy: the
/// oldest record is forgotten (that transaction's status reads `Unknown` again; it was never
/// going to be included).
pub const REJECTED_MAX: usize = 100_000;
/// How often (in finalized blocks) the mempool is swept for used nonces and stale gaps.
const SWEEP_EVERY: u64 = 8;
/// Finalized blocks kept in memory besides the tip (blocks, ≤ 2 MiB each). Overflow policy:
/// the lowest height is evicted; older blocks are read from the chain store.
pub const BLOCK_CACHE_MAX: usize = 16;
/// Certificates held for blocks not finalized here yet (certificates, ~2 KiB each with 4
/// validators). Overflow policy: the oldest is forgotten (that block is served without one
/// until the next certificate arrives).
pub const PENDING_CERTS_MAX: usize = 1024;
/// Finalized blocks held while waiting for a lower height or for the chain store to accept
/// a commit (blocks). Overflow policy: the newcomer is dropped with a fault.
const PENDING_BLOCKS_MAX: usize = 1024;

/// Longest the finalizer waits for executions holding a snapshot of the finalized state to
/// end before it copies the state to apply a block (the copy costs memory and time in
/// proportion to the state; the wait, one block's execution at most).
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Finalized blocks committed to the chain store in one durable transaction at most (blocks):
/// those that waited while the finalizer was behind. Marshal leaves at most 16 unacknowledged.
pub const FINALIZE_GROUP_MAX: usize = 16;

/// Internal fault messages kept (messages). Overflow policy: later faults are counted, not kept.
const FAULTS_MAX: usize = 64;

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
    /// Shared with executions of blocks built on this one (see `exec.rs`).
    layer: Arc<Layer>,
    /// Shared with the durable commit of the block once finalized (see `Core::stage_finalized`).
    receipts: Arc<Vec<Receipt>>,
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
    /// Finalized state. Executions take a snapshot (a clone of the `Arc`) and run outside the
    /// lock; the finalizer applies a block in place once no snapshot is out (see
    /// [`Ledger::finalize`]).
    db: Arc<StateDb>,
    /// Finalized tip.
    tip: Arc<Block>,
    /// The last finalized blocks below the tip, by height (≤ [`BLOCK_CACHE_MAX`]).
    recent: BTreeMap<u64, Arc<Block>>,
    /// Finalized blocks, outcomes, handshakes and certificates.
    store: ChainStore,
    spec: FastMap<[u8; 32], Spec>,
    /// Waiting transactions.
    pool: Mempool,
    sig_ok: FastSet<TxId>,
    sig_order: VecDeque<TxId>,
    /// Why admitted transactions were rejected (≤ [`REJECTED_MAX`]).
    rejected: RefusalLog,
    /// Topic writes refused at admission as stale (≤ [`MempoolLimits::stale_refused`]): their
    /// position is taken in the finalized state for good, so the refusal is as final as a
    /// rejection, and a client waiting for one reads it from every validator.
    stale: RefusalLog,
    /// Encoded certificates of blocks not finalized here yet, by digest, and their arrival
    /// order (≤ [`PENDING_CERTS_MAX`]).
    pending_certs: FastMap<[u8; 32], Vec<u8>>,
    pending_cert_order: VecDeque<[u8; 32]>,
    /// The finalized tip's own certificate, once known (proofs are served against it).
    tip_cert: Option<Vec<u8>>,
    /// Blocks delivered ahead of a gap, applied once the gap fills.
    pending: BTreeMap<u64, Arc<Block>>,
    /// Internal failures (a finalized block that does not execute): never expected.
    faults: Vec<String>,
    /// The finalizer waits for the snapshots out to end before it applies a block; new
    /// executions wait meanwhile.
    apply_pending: bool,
    /// Transactions a proposal takes, at most (≤ [`crate::block::BLOCK_TXS_MAX`]).
    proposal_txs_max: usize,
    /// The chain's parameters: written at genesis only, so read once (admission makes an
    /// executor per transaction).
    params: crate::params::Params,
}

/// Shared handle to a validator's ledger core.
#[derive(Clone, Debug)]
pub struct Ledger {
    inner: Arc<Mutex<Core>>,
    /// Held by the one finalizer applying blocks (the core lock is released during commits).
    applying: Arc<Mutex<()>>,
    /// Block work in progress, which admission gives way to (see `core/admission.rs`).
    gate: Arc<admission::Gate>,
    genesis: Arc<Block>,
    store: ChainStore,
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
    /// A ledger at genesis over an in-memory chain store, with the default mempool bounds.
    pub fn new(genesis: &Genesis) -> Result<Self, OpenError> {
        Self::with_limits(genesis, MempoolLimits::default())
    }

    /// A ledger at genesis over an in-memory chain store whose mempool has the bounds `limits`.
    pub fn with_limits(genesis: &Genesis, limits: MempoolLimits) -> Result<Self, OpenError> {
        Self::open(genesis, limits, ChainStore::in_memory()?)
    }

    /// A ledger over `store`: resumes at the finalized height stored there (an empty store
    /// starts at genesis). The state tree is rebuilt by re-executing the stored blocks, whose
    /// signatures were verified before they were stored; each block must reproduce its root.
    pub fn open(genesis: &Genesis, limits: MempoolLimits, store: ChainStore) -> Result<Self, OpenError> {
        let (machine, block) = genesis.build()?;
        let genesis_block = Arc::new(block);
        let height = store.start(&machine.chain, &genesis_block)?;
        let mut db = machine.db;
        let mut tip = Arc::clone(&genesis_block);
        let mut recent = BTreeMap::new();
        for h in 1..=height {
            let replay = |reason: String| OpenError::Replay { height: h, reason };
            let b = Arc::new(store.block(h)?.ok_or_else(|| replay("missing".into()))?);
            if b.header.parent != tip.id() {
                return Err(replay("does not extend the block below it".into()));
            }
            let ex = execute(&db, Vec::new(), machine.chain, h, &b.txs, Mode::Verify, &|_| true)
                .map_err(|e| replay(e.to_string()))?;
            if ex.layer.root != b.header.state_root || receipts_root(&ex.receipts) != b.header.outcome_root {
                return Err(replay("wrong state or outcome root".into()));
            }
            db.apply(ex.layer);
            recent.insert(tip.header.height, tip);
            if recent.len() > BLOCK_CACHE_MAX {
                recent.pop_first();
            }
            tip = b;
        }
        let tip_cert = store.certificate(&tip.id())?;
        let params = crate::state::Executor::new(&db.overlay(Vec::new()), machine.chain).params();
        let core = Core {
            chain: machine.chain,
            db: Arc::new(db),
            tip,
            recent,
            store: store.clone(),
            spec: FastMap::default(),
            pool: Mempool::new(limits),
            sig_ok: FastSet::default(),
            sig_order: VecDeque::new(),
            rejected: RefusalLog::new(REJECTED_MAX),
            stale: RefusalLog::new(limits.sane().stale_refused),
            pending_certs: FastMap::default(),
            pending_cert_order: VecDeque::new(),
            tip_cert,
            pending: BTreeMap::new(),
            faults: Vec::new(),
            apply_pending: false,
            proposal_txs_max: crate::block::BLOCK_TXS_MAX,
            params,
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(core)),
            applying: Arc::new(Mutex::new(())),
            gate: Arc::new(admission::Gate::default()),
            genesis: genesis_block,
            store,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A poisoned lock only means another thread panicked mid-update; the data is still the
        // best we have, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The core lock at a moment no execution holds a snapshot of the finalized state, so the
    /// finalizer changes it in place; executions end within a block's execution time, and
    /// after [`SNAPSHOT_WAIT`] the state is copied instead (the executions keep theirs).
    fn lock_for_apply(&self) -> MutexGuard<'_, Core> {
        let start = std::time::Instant::now();
        loop {
            let mut c = self.lock();
            // snapshots are taken under the lock, so none appears while it is held
            if Arc::strong_count(&c.db) == 1 || start.elapsed() >= SNAPSHOT_WAIT {
                c.apply_pending = false;
                return c;
            }
            // executions not begun yet wait for this apply (see Ledger::lock_for_snapshot), so
            // back-to-back executions cannot starve the finalizer
            c.apply_pending = true;
            drop(c);
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }

    /// The genesis block.
    pub fn genesis_block(&self) -> Arc<Block> {
        Arc::clone(&self.genesis)
    }

    /// Digest of the genesis block.
    pub fn genesis_digest(&self) -> [u8; 32] {
        self.genesis.id()
    }

    /// The chain store (finalized blocks, outcomes, handshakes, certificates).
    pub fn store(&self) -> &ChainStore {
        &self.store
    }

    /// Chain id.
    pub fn chain(&self) -> [u8; 32] {
        self.lock().chain
    }

    /// Finalized height, tip digest and root.
    pub fn status(&self) -> ChainStatus {
        let c = self.lock();
        let (height, digest) = c.tip();
        ChainStatus { height, digest, state_root: c.db.root(), mempool: c.pool.len() }
    }

    /// Sets how admission gives way to block work ([`AdmissionPolicy::default`] unless set).
    pub fn set_admission_policy(&self, policy: AdmissionPolicy) {
        self.gate.set_policy(policy);
    }

    /// Caps the transactions this validator's proposals take (clamped to 1 ..=
    /// [`crate::block::BLOCK_TXS_MAX`], the default). Smaller blocks are quicker to verify
    /// and execute at every validator, at more rounds per transaction.
    pub fn set_proposal_txs_max(&self, n: usize) {
        self.lock().proposal_txs_max = n.clamp(1, crate::block::BLOCK_TXS_MAX);
    }

    /// How admission gives way to block work.
    pub fn admission_policy(&self) -> AdmissionPolicy {
        self.gate.policy()
    }

    /// Transactions waiting in the mempool.
    pub fn mempool_len(&self) -> usize {
        self.lock().pool.len()
    }

    /// Stale topic-write refusals this validator remembers (at most
    /// [`MempoolLimits::stale_refused`]).
    pub fn stale_refusals(&self) -> usize {
        self.lock().stale.len()
    }

    /// Bytes of the transactions waiting in the mempool.
    pub fn mempool_bytes(&self) -> usize {
        self.lock().pool.bytes()
    }

    /// The mempool's bounds.
    pub fn mempool_limits(&self) -> MempoolLimits {
        self.lock().pool.limits()
    }

    /// The chain's fee and faucet parameters.
    pub fn params(&self) -> crate::params::Params {
        let c = self.lock();
        let ov = c.db.overlay(Vec::new());
        crate::state::Executor::new(&ov, c.chain).params()
    }

    /// Runs the read-only `query` of the contract at `contract` with `msg` on the finalized
    /// state: its output and the fuel used, or why it failed (no such contract, a trap).
    pub fn query_contract(
        &self,
        contract: &[u8; 32],
        msg: &[u8],
    ) -> Result<(Vec<u8>, u64), crate::tx::TxError> {
        let c = self.lock();
        let ov = c.db.overlay(Vec::new());
        crate::state::Executor::new(&ov, c.chain).query(contract, msg)
    }

    /// Balance of `account` in the finalized state (`None`: not registered).
    pub fn balance(&self, account: &cairn_proto::AccountId) -> Option<u64> {
        let c = self.lock();
        let ov = c.db.overlay(Vec::new());
        crate::state::Executor::new(&ov, c.chain).account(account).ok().flatten().map(|a| a.balance)
    }

    /// Internal faults recorded (empty unless a finalized block failed to execute).
    pub fn faults(&self) -> Vec<String> {
        self.lock().faults.clone()
    }

    /// Finalized block at `height` (from memory near the tip, else from the chain store).
    pub fn block(&self, height: u64) -> Option<Arc<Block>> {
        {
            let c = self.lock();
            if height == c.tip.header.height {
                return Some(Arc::clone(&c.tip));
            }
            if height > c.tip.header.height {
                return None;
            }
            if let Some(b) = c.recent.get(&height) {
                return Some(Arc::clone(b));
            }
        }
        // stored blocks never change, so this read needs no lock
        self.store.block(height).unwrap_or_else(|e| self.store_failed(e)).map(Arc::new)
    }

    /// Digests of every finalized block, by height (for fork checks; reads the whole store).
    pub fn chain_digests(&self) -> Vec<[u8; 32]> {
        self.store.digests().unwrap_or_else(|e| self.store_failed(e))
    }

    /// The encoded finalization certificate of the block `digest`, if held.
    pub fn finalization(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        {
            let c = self.lock();
            if *digest == c.tip.id() {
                return c.tip_cert.clone();
            }
            if let Some(f) = c.pending_certs.get(digest) {
                return Some(f.clone());
            }
        }
        self.store.certificate(digest).unwrap_or_else(|e| self.store_failed(e))
    }

    /// Records a finalization certificate (from the consensus reporter): with its block if
    /// that is finalized here already, otherwise held until it is.
    pub fn record_finalization(&self, digest: [u8; 32], encoded: Vec<u8>) {
        let mut c = self.lock();
        let stored = if digest == c.tip.id() {
            if c.tip_cert.as_ref() == Some(&encoded) {
                return;
            }
            c.tip_cert = Some(encoded.clone());
            true
        } else {
            matches!(c.store.height_of(&digest), Ok(Some(_)))
        };
        if stored {
            if let Err(e) = c.store.put_certificate(&digest, &encoded) {
                c.fault(format!("certificate could not be stored: {e}"));
            }
            return;
        }
        if c.pending_certs.insert(digest, encoded).is_none() {
            c.pending_cert_order.push_back(digest);
        }
        while c.pending_certs.len() > PENDING_CERTS_MAX {
            let Some(old) = c.pending_cert_order.pop_front() else { break };
            c.pending_certs.remove(&old);
        }
        if c.pending_cert_order.len() > 2 * PENDING_CERTS_MAX {
            let c = &mut *c;
            let held = &c.pending_certs;
            c.pending_cert_order.retain(|d| held.contains_key(d));
        }
    }

    /// Logs a chain store read failure and answers "not found" (the request can be retried;
    /// a damaged store is reported by every read).
    fn store_failed<T: Default>(&self, e: ChainStoreError) -> T {
        tracing::error!(error = %e, "ledger chain store read failed");
        T::default()
    }

    /// Submits a transaction to the mempool after checking it against the finalized state.
    pub fn submit(&self, bytes: Vec<u8>) -> Result<TxId, TxError> {
        self.submit_batch(vec![bytes]).pop().unwrap_or(Err(TxError::BadSignature))
    }

    /// Submits many transactions (one answer each, in order). Signatures are checked outside
    /// the lock, in one batch, and only for transactions this validator does not know yet.
    pub fn submit_batch(&self, txs: Vec<Vec<u8>>) -> Vec<Result<TxId, TxError>> {
        // after block work in progress, a bounded number at a time, if the policy says so
        // (see core/admission.rs)
        let _turn = self.gate.admit();
        let decoded: Vec<Result<(TxId, Tx), TxError>> =
            txs.iter().map(|b| Tx::decode(b).map(|t| (Tx::id_of(b), t))).collect();
        // Seen already: held, or its signature checked here. Else it may be finalized only if
        // its nonce is below its signer's next nonce in the finalized state (a finalized
        // transaction used its nonce): only those are looked up in the chain store. A block
        // finalized meanwhile changes nothing but the work: such a transaction has its
        // signature checked, then admission refuses its used nonce and finds it stored.
        let (mut known, maybe_final): (Vec<bool>, Vec<bool>) = {
            let c = self.lock();
            let overlay = c.db.overlay(Vec::new());
            let ex = crate::state::Executor::new(&overlay, c.chain);
            decoded
                .iter()
                .map(|d| match d {
                    Ok((id, _)) if c.pool.contains(id) || c.sig_ok.contains(id) => (true, false),
                    Ok((_, t)) => (false, ex.nonce(&t.signer).map_or(true, |next| t.nonce < next)),
                    Err(_) => (false, false),
                })
                .unzip()
        };
        let lookup: Vec<TxId> = decoded
            .iter()
            .zip(&maybe_final)
            .filter_map(|(d, m)| match d {
                Ok((id, _)) if *m => Some(*id),
                _ => None,
            })
            .collect();
        if !lookup.is_empty() {
            let finalized = self.store.known(&lookup).unwrap_or_else(|e| self.store_failed(e));
            let mut finalized = finalized.into_iter();
            for (k, m) in known.iter_mut().zip(&maybe_final) {
                if *m {
                    *k = finalized.next().unwrap_or(false);
                }
            }
        }
        let to_check: Vec<&Tx> = decoded
            .iter()
            .zip(&known)
            .filter_map(|(d, k)| match d {
                Ok((_, t)) if !k => Some(t),
                _ => None,
            })
            .collect();
        let mut verdicts = Tx::verify_signatures(&to_check).into_iter();
        let sig_ok: Vec<bool> = decoded
            .iter()
            .zip(&known)
            .map(|(d, k)| d.is_ok() && (*k || verdicts.next().unwrap_or(false)))
            .collect();
        let mut c = self.lock();
        decoded
            .into_iter()
            .zip(txs)
            .zip(sig_ok)
            .map(|((d, bytes), ok)| {
                if AnyTx::is_topic_write(&bytes) {
                    return c.admit_topic(bytes);
                }
                let (id, tx) = d?;
                if !ok {
                    return Err(TxError::BadSignature);
                }
                c.admit_to_pool(id, &tx, bytes)
            })
            .collect()
    }

    /// Status of a transaction.
    pub fn tx_status(&self, id: &TxId) -> TxStatus {
        let c = self.lock();
        // under the lock: a transaction leaves the pool only after its block is stored
        if let Some((height, outcome)) = c.store.tx(id).unwrap_or_else(|e| self.store_failed(e)) {
            return TxStatus::Finalized { height, outcome };
        }
        if c.pool.contains(id) {
            return TxStatus::Pending;
        }
        match c.rejected.get(id).or_else(|| c.stale.get(id)) {
            Some(e) => TxStatus::Rejected(e.clone()),
            None => TxStatus::Unknown,
        }
    }

    /// Finalized handshake messages of `topic` from `from`, at most `max`.
    pub fn handshakes(&self, topic: &Topic, from: u64, max: usize) -> Vec<Vec<u8>> {
        self.store.handshakes(topic, from, max).unwrap_or_else(|e| self.store_failed(e))
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
        let Some(fin) = &c.tip_cert else { return Ok(None) };
        if c.db.height() != Some(c.tip.header.height) {
            return Ok(None);
        }
        let (value, proof) = c.db.prove(key)?;
        Ok(Some(StateProof::new(c.tip.header, fin.clone(), value, &proof)))
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

    /// A block that honest validators must refuse: it carries a transaction with a forged
    /// signature and claims the parent's root. Used by the Byzantine fault tests.
    pub fn byzantine_proposal(&self, parent: &[u8; 32], parent_height: u64) -> Option<Block> {
        let c = self.lock();
        let key = cairn_proto::ed25519::SigningKey::from_bytes(&[0x0B; 32]);
        let account = cairn_proto::AccountId(key.verifying_key().to_bytes());
        let mut tx = Tx::sign(c.chain, account, &key, 0, crate::tx::TxBody::RegisterAccount);
        tx.signature[0] ^= 1;
        Some(Block::new(parent_height + 1, *parent, c.db.root(), vec![tx.encode()], [0; 32]))
    }

    /// Applies a finalized block delivered by marshal (idempotent; out-of-order deliveries
    /// wait for the gap to fill). The durable commit of each block runs outside the core lock,
    /// so admission, proposals and votes on the next blocks go on during its fsync; finalizers
    /// are serialized among themselves.
    pub fn finalize(&self, block: Arc<Block>) {
        self.finalize_many(vec![block]);
    }

    /// Applies finalized blocks delivered by marshal, as [`Self::finalize`] does one. Blocks
    /// waiting in height order (these, and any that waited for a gap) are committed together,
    /// up to [`FINALIZE_GROUP_MAX`] in one durable transaction: a finalizer that fell behind
    /// catches up with one sync instead of one per block.
    pub fn finalize_many(&self, blocks: Vec<Arc<Block>>) {
        let _one = self.applying.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut c = self.lock();
            for block in blocks {
                c.hold_finalized(block);
            }
        }
        loop {
            let group = {
                let _work = self.gate.block_work();
                self.lock().stage_group()
            };
            let Some(last) = group.last() else { break };
            let last_h = last.block.header.height;
            let stored = self.store.commit_blocks(
                &group
                    .iter()
                    .map(|s| FinalizedBlock {
                        block: &s.block,
                        receipts: &s.receipts,
                        handshakes: &s.handshakes,
                        cert: s.cert.as_deref(),
                    })
                    .collect::<Vec<_>>(),
            );
            let _work = self.gate.block_work();
            let mut c = self.lock_for_apply();
            if let Err(e) = stored {
                let first = group.first().map_or(last_h, |s| s.block.header.height);
                c.fault(format!("finalized blocks {first}..={last_h} could not be stored: {e}"));
                // retried at the next delivery; their executed layers stay in `spec`
                for s in group {
                    c.pending.insert(s.block.header.height, s.block);
                }
                break;
            }
            for s in group {
                c.advance(s);
            }
        }
    }
}

/// A finalized block executed and ready for its durable commit.
struct Staged {
    block: Arc<Block>,
    receipts: Arc<Vec<Receipt>>,
    handshakes: Vec<(Topic, u64, Vec<u8>)>,
    cert: Option<Vec<u8>>,
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
        (self.tip.header.height, self.tip.id())
    }

    fn fault(&mut self, message: String) {
        tracing::error!(%message, "ledger fault");
        if self.faults.len() < FAULTS_MAX {
            self.faults.push(message);
        }
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
    fn layers_for(&self, digest: &[u8; 32]) -> Option<Vec<Arc<Layer>>> {
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
            out.push(Arc::clone(&s.layer));
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

    /// Holds a finalized block until it is applied: one at or below the tip is checked against
    /// the chain (a different block there is a fault) and dropped.
    fn hold_finalized(&mut self, block: Arc<Block>) {
        let (tip, _) = self.tip();
        let h = block.header.height;
        if h <= tip {
            let stored = if h == tip { Ok(Some(self.tip.id())) } else { self.store.digest(h) };
            if stored.is_ok_and(|d| d.is_some_and(|d| d != block.id())) {
                self.fault(format!("conflicting finalized block at height {h}"));
            }
            return;
        }
        if self.pending.len() >= PENDING_BLOCKS_MAX && !self.pending.contains_key(&h) {
            // marshal delivers in height order, so this only fills while the chain store
            // fails; marshal redelivers from its processed floor after a restart
            self.fault(format!("finalized block {h} dropped: {PENDING_BLOCKS_MAX} blocks wait already"));
            return;
        }
        self.pending.insert(h, block);
    }

    /// The finalized blocks that follow the tip and wait here, staged for one durable commit
    /// (at most [`FINALIZE_GROUP_MAX`]). Only the first may need executing (on the finalized
    /// state); the others must have been executed here on their parents already, else they
    /// wait for the next group.
    fn stage_group(&mut self) -> Vec<Staged> {
        let mut group: Vec<Staged> = Vec::new();
        let (mut h, mut parent) = self.tip();
        while group.len() < FINALIZE_GROUP_MAX {
            let Some(b) = self.pending.remove(&(h + 1)) else { break };
            if !group.is_empty() && !self.spec.contains_key(&b.id()) {
                self.pending.insert(h + 1, b);
                break;
            }
            let Some(s) = self.stage_finalized(b, parent) else { break };
            h += 1;
            parent = s.block.id();
            group.push(s);
        }
        group
    }

    /// Prepares a finalized block whose parent must be `parent` (the tip, or the block staged
    /// before it) for its durable commit: executes it on the finalized state unless it was
    /// verified here already (its executed layer stays in `spec`, where blocks built on it find
    /// it until [`Core::advance`]), and collects its outcomes, handshakes and certificate. A block
    /// that cannot be applied is recorded as a fault.
    fn stage_finalized(&mut self, block: Arc<Block>, parent: [u8; 32]) -> Option<Staged> {
        let id = block.id();
        let h = block.header.height;
        if block.header.parent != parent {
            self.fault(format!("finalized block {h} does not extend the finalized tip"));
            return None;
        }
        if !self.spec.contains_key(&id) {
            let sig_ok = &self.sig_ok;
            match execute(&self.db, Vec::new(), self.chain, h, &block.txs, Mode::Verify, &|i| {
                sig_ok.contains(i)
            }) {
                Ok(ex)
                    if ex.layer.root == block.header.state_root
                        && receipts_root(&ex.receipts) == block.header.outcome_root =>
                {
                    let spec = Spec {
                        parent: block.header.parent,
                        height: h,
                        layer: Arc::new(ex.layer),
                        receipts: Arc::new(ex.receipts),
                    };
                    self.spec.insert(id, spec);
                }
                Ok(_) => {
                    self.fault(format!("finalized block {h} has a wrong state or outcome root"));
                    return None;
                }
                Err(e) => {
                    self.fault(format!("finalized block {h} does not execute: {e}"));
                    return None;
                }
            }
        }
        let receipts = self.spec.get(&id).map(|s| Arc::clone(&s.receipts)).unwrap_or_default();
        let mut handshakes: Vec<(Topic, u64, Vec<u8>)> = Vec::new();
        for (r, bytes) in receipts.iter().zip(block.txs.iter()) {
            if let Outcome::Sequenced { topic, seq } = &r.outcome
                && let Ok(tx) = crate::tx::TopicTx::decode(bytes)
                && let crate::tx::TopicBody::Handshake { payload, .. } = tx.body
            {
                handshakes.push((*topic, *seq, payload));
            }
        }
        let cert = self.pending_certs.get(&id).cloned();
        Some(Staged { block, receipts, handshakes, cert })
    }

    /// Advances the in-memory state over a block whose commit is durable.
    fn advance(&mut self, staged: Staged) {
        let Staged { block, receipts, cert, .. } = staged;
        let id = block.id();
        let h = block.header.height;
        if let Some(spec) = self.spec.remove(&id) {
            // a block built on this one may still be executing with the layer: copy it then
            let layer = Arc::try_unwrap(spec.layer).unwrap_or_else(|l| (*l).clone());
            // in place unless a snapshot is still out (see Ledger::lock_for_apply)
            Arc::make_mut(&mut self.db).apply(layer);
        }
        // a certificate that arrived during the commit is stored now
        let late = self.pending_certs.remove(&id);
        if cert.is_none()
            && let Some(c) = &late
            && let Err(e) = self.store.put_certificate(&id, c)
        {
            self.fault(format!("certificate could not be stored: {e}"));
        }
        for r in receipts.iter() {
            self.remove_from_pool(&r.tx);
            self.rejected.remove(&r.tx);
            self.stale.remove(&r.tx);
        }
        self.recheck_topics(&block.txs);
        let old = std::mem::replace(&mut self.tip, block);
        self.recent.insert(old.header.height, old);
        if self.recent.len() > BLOCK_CACHE_MAX {
            self.recent.pop_first();
        }
        self.tip_cert = cert.or(late);
        // forget unfinalized blocks that can no longer be extended
        self.spec.retain(|_, s| s.height > h);
        if h.is_multiple_of(SWEEP_EVERY) {
            self.sweep(h);
            self.sweep_topics(h);
        }
        self.pool.compact_order();
    }
}
