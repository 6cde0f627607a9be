//! Proven transaction outcomes: "transaction `t` is in the finalized block at height `h` with
//! outcome `o`", checked against a certified header, so a client need not believe the
//! validator that answers.
//!
//! An [`OutcomeProof`] carries the header of the block holding the transaction, the headers of
//! its descendants up to the first one the serving validator holds a finalization certificate
//! for (most blocks have their own; one finalized only as an ancestor of a later block has
//! none), that certificate, the transaction's index, its outcome and the Merkle path to the
//! header's outcome root ([`crate::outcome_tree`]). [`crate::light::LightClient::verify_outcome`]
//! checks certificate → header chain → path → outcome.
//!
//! Only included transactions have provable outcomes. A transaction refused at admission (never
//! in a block) leaves no trace in any header: its "rejected" status stays a validator's word,
//! which the client believes only when every validator says it.
//!
//! ```text
//! proof = count:u8 (1..=HEADER_CHAIN_MAX) header* finalization:bytes (≤ FINALIZATION_BYTES_MAX)
//!         index:u32 outcome:bytes (≤ OUTCOME_BYTES_MAX) siblings:u8 (≤ PATH_MAX) node:[32]*
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cairn_proto::codec::{DecodeError, Reader, Writer};

use crate::block::{HEADER_BYTES, Header};
use crate::core::Ledger;
use crate::light::FINALIZATION_BYTES_MAX;
use crate::outcome_tree::{self, PATH_MAX, Tree};
use crate::rpc::RemoteOutcome;
use crate::rpc::protocol::OUTCOME_BYTES_MAX;
use crate::tx::{Tx, TxId};

/// Blocks whose rebuilt outcome tree is kept for the next proofs (each at most 8192 leaves:
/// about 1 MiB with its index).
pub const TREE_CACHE_BLOCKS: usize = 8;
/// Outcome trees rebuilt from the chain store per second, at most, across all connections (a
/// rebuild of a full block costs ~9 ms; a stranger asking about old transactions must not buy a
/// validator's CPU for free). Over it, the answer is "no proof yet", which honest clients ask
/// again after a pause; proofs from cached blocks are not counted.
pub const REBUILDS_PER_SECOND_MAX: u32 = 32;
/// Most headers in one proof: the block's and its descendants' up to a certified one.
pub const HEADER_CHAIN_MAX: usize = 16;
/// Largest encoded [`OutcomeProof`], bytes.
pub const OUTCOME_PROOF_BYTES_MAX: usize = 1
    + HEADER_CHAIN_MAX * HEADER_BYTES
    + 4
    + FINALIZATION_BYTES_MAX
    + 4
    + 4
    + OUTCOME_BYTES_MAX
    + 1
    + PATH_MAX * 32;

/// A proof of one finalized transaction's height and outcome.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutcomeProof {
    /// The header of the block holding the transaction, then each child up to the certified one.
    pub headers: Vec<Header>,
    /// Encoded finalization certificate over the last header's digest.
    pub finalization: Vec<u8>,
    /// The transaction's position in its block.
    pub index: u32,
    /// Its outcome.
    pub outcome: RemoteOutcome,
    /// Siblings from the leaf up to the outcome root.
    pub path: Vec<[u8; 32]>,
}

impl OutcomeProof {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512 + self.finalization.len());
        w.u8(u8::try_from(self.headers.len()).unwrap_or(u8::MAX));
        for h in &self.headers {
            w.raw(&h.encode());
        }
        w.bytes(&self.finalization);
        w.u32(self.index);
        w.bytes(&self.outcome.encode());
        w.u8(u8::try_from(self.path.len()).unwrap_or(u8::MAX));
        for n in &self.path {
            w.raw(n);
        }
        w.finish()
    }

    /// Bounded decoding (structure only; [`crate::light::LightClient::verify_outcome`] checks it).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let too_large =
            |field, len: usize, max: usize| DecodeError::TooLarge { field, len: len as u64, max: max as u64 };
        if bytes.len() > OUTCOME_PROOF_BYTES_MAX {
            return Err(too_large("outcome_proof", bytes.len(), OUTCOME_PROOF_BYTES_MAX));
        }
        let mut r = Reader::new(bytes);
        let n = usize::from(r.u8("outcome_proof.headers")?);
        if n == 0 {
            return Err(DecodeError::Invalid { field: "outcome_proof.headers", reason: "no header" });
        }
        if n > HEADER_CHAIN_MAX {
            return Err(too_large("outcome_proof.headers", n, HEADER_CHAIN_MAX));
        }
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            headers.push(Header::decode(r.take(HEADER_BYTES, "outcome_proof.header")?)?);
        }
        let finalization = r.bytes(FINALIZATION_BYTES_MAX, "outcome_proof.finalization")?.to_vec();
        let index = r.u32("outcome_proof.index")?;
        let outcome =
            RemoteOutcome::decode(r.bytes(OUTCOME_BYTES_MAX, "outcome_proof.outcome")?).map_err(|_| {
                DecodeError::Invalid { field: "outcome_proof.outcome", reason: "not a canonical outcome" }
            })?;
        let k = usize::from(r.u8("outcome_proof.path")?);
        if k > PATH_MAX {
            return Err(too_large("outcome_proof.path", k, PATH_MAX));
        }
        let mut path = Vec::with_capacity(k);
        for _ in 0..k {
            path.push(r.array("outcome_proof.node")?);
        }
        r.finish()?;
        Ok(Self { headers, finalization, index, outcome, path })
    }

    /// Height of the block holding the transaction.
    pub fn height(&self) -> Option<u64> {
        self.headers.first().map(|h| h.height)
    }
}

/// A block's outcome tree, with each transaction's index and outcome.
struct BlockOutcomes {
    tree: Tree,
    index: HashMap<TxId, (u32, RemoteOutcome)>,
}

/// The trees of the blocks proofs were last served from, newest last, by block digest (a
/// digest names one block and so one list of outcomes, whatever ledger in this process
/// serves it).
static TREES: Mutex<VecDeque<([u8; 32], Arc<BlockOutcomes>)>> = Mutex::new(VecDeque::new());

/// Rebuilds allowed in the current one-second window ([`REBUILDS_PER_SECOND_MAX`]).
#[derive(Debug)]
struct RebuildBudget {
    window: Option<std::time::Instant>,
    used: u32,
}

impl RebuildBudget {
    /// Takes one rebuild at `now`; false when this second's are spent.
    fn take(&mut self, now: std::time::Instant) -> bool {
        match self.window {
            Some(w) if now.saturating_duration_since(w) < std::time::Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used >= REBUILDS_PER_SECOND_MAX {
            return false;
        }
        self.used += 1;
        true
    }
}

static REBUILDS: Mutex<RebuildBudget> = Mutex::new(RebuildBudget { window: None, used: 0 });

/// Rebuilds the outcome tree of `block` from the chain store and checks it against the header.
fn block_outcomes(ledger: &Ledger, block: &crate::block::Block) -> Option<Arc<BlockOutcomes>> {
    let digest = block.id();
    let cached = |t: &VecDeque<([u8; 32], Arc<BlockOutcomes>)>| {
        t.iter().find(|(d, _)| *d == digest).map(|(_, o)| Arc::clone(o))
    };
    if let Some(o) = cached(&TREES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
        return Some(o);
    }
    if !REBUILDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take(std::time::Instant::now()) {
        tracing::debug!(
            height = block.header.height,
            "outcome proof deferred: rebuild budget of this second spent"
        );
        return None;
    }
    let store = ledger.store();
    let mut leaves = Vec::with_capacity(block.txs.len());
    let mut index = HashMap::with_capacity(block.txs.len());
    for (i, bytes) in block.txs.iter().enumerate() {
        let t = Tx::id_of(bytes);
        let (_, o) = store.tx(&t).ok()??;
        let o = RemoteOutcome::of(&o);
        leaves.push(outcome_tree::leaf(&t, &o));
        index.insert(t, (u32::try_from(i).ok()?, o));
    }
    let tree = Tree::new(leaves);
    if tree.root() != block.header.outcome_root {
        tracing::error!(
            height = block.header.height,
            "stored outcomes do not rebuild the block's outcome root"
        );
        return None;
    }
    let o = Arc::new(BlockOutcomes { tree, index });
    let mut trees = TREES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cached(&trees).is_none() {
        trees.push_back((digest, Arc::clone(&o)));
        if trees.len() > TREE_CACHE_BLOCKS {
            trees.pop_front();
        }
    }
    Some(o)
}

/// Builds the proof of transaction `id`'s outcome from `ledger`'s chain store (`None`: not
/// finalized here, or no certificate held for its block or the next [`HEADER_CHAIN_MAX`] − 1).
///
/// The first proof from a block reads every outcome in it (at most 8192) to rebuild the tree,
/// checked against the header; the trees of the last [`TREE_CACHE_BLOCKS`] blocks are kept.
pub fn prove(ledger: &Ledger, id: &TxId) -> Option<OutcomeProof> {
    let (height, _) = ledger.store().tx(id).ok()??;
    let block = ledger.block(height)?;
    let outcomes = block_outcomes(ledger, &block)?;
    let (index, outcome) = outcomes.index.get(id)?.clone();
    let path = outcomes.tree.path(index as usize)?;
    let mut headers = vec![block.header];
    let finalization = loop {
        let last = headers.last()?;
        if let Some(f) = ledger.finalization(&last.digest()) {
            break f;
        }
        if headers.len() >= HEADER_CHAIN_MAX {
            return None;
        }
        let next = ledger.header(last.height + 1)?;
        headers.push(next);
    };
    Some(OutcomeProof { headers, finalization, index, outcome, path })
}

#[cfg(test)]
mod budget_tests {
    use std::time::{Duration, Instant};

    use super::{REBUILDS_PER_SECOND_MAX, RebuildBudget};

    #[test]
    fn rebuilds_are_bounded_per_second_and_the_next_second_starts_afresh() {
        let mut b = RebuildBudget { window: None, used: 0 };
        let t = Instant::now();
        for i in 0..REBUILDS_PER_SECOND_MAX {
            assert!(b.take(t + Duration::from_millis(u64::from(i))), "rebuild {i} refused");
        }
        assert!(!b.take(t + Duration::from_millis(999)), "one over the budget");
        assert!(b.take(t + Duration::from_millis(1_000)), "a new second");
    }
}
