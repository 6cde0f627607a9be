//! Blocks: executing a block's transactions into a [`Layer`] ([`execute`], [`genesis_layer`]),
//! and [`Machine`], the sequential single-replica form.

use cairn_proto::AccountId;
use thiserror::Error;

use super::{Account, Executor, Layer, Receipt, StateDb, StateError, StateKey};
use crate::params::Params;
use crate::tx::{AnyTx, Tx, TxError, TxId};

/// Builds the genesis layer (height 0).
pub fn genesis_layer(
    db: &StateDb,
    chain: [u8; 32],
    accounts: &[(AccountId, u64)],
    params: &Params,
) -> Result<Layer, StateError> {
    let overlay = db.overlay(Vec::new());
    let mut ex = Executor::new(&overlay, chain);
    ex.genesis(accounts, params);
    let writes = ex.into_writes();
    db.commit_layer(Vec::new(), 0, writes)
}

/// How a block's transactions are treated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Building: transactions failing admission are left out.
    Propose,
    /// Checking someone else's block: any transaction failing admission invalidates it.
    Verify,
}

/// A transaction left out of a proposal, and why.
#[derive(Clone, Debug)]
pub struct Dropped {
    /// Index in the candidate list.
    pub index: usize,
    /// Transaction id.
    pub tx: TxId,
    /// Reason.
    pub error: TxError,
}

/// The result of executing a block's transactions.
#[derive(Debug)]
pub struct Executed {
    /// Indices of the candidate transactions that were included, in order.
    pub included: Vec<usize>,
    /// Receipts of the included transactions.
    pub receipts: Vec<Receipt>,
    /// Candidates left out (propose mode only).
    pub dropped: Vec<Dropped>,
    /// The state changes.
    pub layer: Layer,
}

/// Why a block's transactions are invalid.
#[derive(Debug, Error)]
pub enum BlockError {
    /// A transaction failed admission.
    #[error("transaction {index} refused: {error}")]
    Tx {
        /// Position in the block.
        index: usize,
        /// Reason.
        error: TxError,
    },
    /// State failure.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Most fuel the contract calls of one block may reserve together (their fuel limits summed):
/// bounds the time a validator spends executing a block.
pub const BLOCK_FUEL_MAX: u64 = 50_000_000;

/// Executes candidate transactions at `height` on top of `db` + `layers`.
///
/// `sig_checked(id)` tells whether this node already verified that transaction's signature (for
/// a topic write, its member signature).
pub fn execute(
    db: &StateDb,
    layers: Vec<&Layer>,
    chain: [u8; 32],
    height: u64,
    txs: &[Vec<u8>],
    mode: Mode,
    sig_checked: &dyn Fn(&TxId) -> bool,
) -> Result<Executed, BlockError> {
    let ids: Vec<TxId> = txs.iter().map(|b| Tx::id_of(b)).collect();
    execute_with_ids(db, layers, chain, height, txs, &ids, mode, sig_checked)
}

/// [`execute`] for a caller that has the transactions' ids already (`ids[i]` is
/// `Tx::id_of(&txs[i])`, checked in debug builds): they are not hashed again.
#[allow(clippy::too_many_arguments)]
pub fn execute_with_ids(
    db: &StateDb,
    layers: Vec<&Layer>,
    chain: [u8; 32],
    height: u64,
    txs: &[Vec<u8>],
    ids: &[TxId],
    mode: Mode,
    sig_checked: &dyn Fn(&TxId) -> bool,
) -> Result<Executed, BlockError> {
    if ids.len() != txs.len() {
        return Err(BlockError::State(StateError::Tree(format!(
            "{} transaction ids for {} transactions",
            ids.len(),
            txs.len()
        ))));
    }
    debug_assert!(txs.iter().zip(ids).all(|(t, i)| Tx::id_of(t) == *i));
    let overlay = db.overlay(layers.clone());
    let mut ex = Executor::new(&overlay, chain);
    ex.set_height(height);
    // layers are oldest first: the last is the parent block's
    ex.set_seed(layers.last().map_or(db.root(), |l| l.root));
    let mut included = Vec::new();
    let mut receipts = Vec::new();
    let mut dropped = Vec::new();
    let mut fuel = 0u64;
    for (index, (bytes, &id)) in txs.iter().zip(ids).enumerate() {
        let res = AnyTx::decode(bytes).and_then(|tx| {
            let tx = match tx {
                AnyTx::Topic(t) => return ex.apply_topic(&t, id, bytes.len(), sig_checked(&id)),
                AnyTx::Account(tx) => tx,
            };
            let limit = tx.body.fuel_limit();
            if fuel.saturating_add(limit) > BLOCK_FUEL_MAX {
                return Err(TxError::BlockFuelFull { max: BLOCK_FUEL_MAX });
            }
            let receipt = ex.apply(&tx, id, bytes.len(), sig_checked(&id))?;
            fuel += limit;
            Ok(receipt)
        });
        match (res, mode) {
            (Ok(r), _) => {
                included.push(index);
                receipts.push(r);
            }
            (Err(error), Mode::Verify) => return Err(BlockError::Tx { index, error }),
            (Err(error), Mode::Propose) => dropped.push(Dropped { index, tx: id, error }),
        }
    }
    let writes = ex.into_writes();
    let layer = db.commit_layer(layers, height, writes)?;
    Ok(Executed { included, receipts, dropped, layer })
}

/// A single-replica ledger state: applies blocks of transactions one after the other. The
/// validator uses the same functions with fork-aware layers; this is the sequential form, for
/// tests, replay and tools.
#[derive(Debug)]
pub struct Machine {
    /// Finalized state.
    pub db: StateDb,
    /// Chain id.
    pub chain: [u8; 32],
}

impl Machine {
    /// A machine at genesis with parameters `params`.
    pub fn genesis(
        chain: [u8; 32],
        accounts: &[(AccountId, u64)],
        params: &Params,
    ) -> Result<Self, StateError> {
        let mut db = StateDb::default();
        let layer = genesis_layer(&db, chain, accounts, params)?;
        db.apply(layer);
        Ok(Self { db, chain })
    }

    /// Next height.
    pub fn next_height(&self) -> u64 {
        self.db.height().map_or(0, |h| h + 1)
    }

    /// Builds the next block from candidates (dropping those that fail admission), applies it,
    /// and returns what happened.
    pub fn propose_and_apply(&mut self, txs: &[Vec<u8>]) -> Result<(Vec<Receipt>, Vec<Dropped>), StateError> {
        let h = self.next_height();
        let ex = execute(&self.db, Vec::new(), self.chain, h, txs, Mode::Propose, &|_| false).map_err(
            |e| match e {
                BlockError::State(s) => s,
                BlockError::Tx { .. } => StateError::Tree("admission failure in propose mode".into()),
            },
        )?;
        self.db.apply(ex.layer);
        Ok((ex.receipts, ex.dropped))
    }

    /// Applies a block in verify mode: any transaction failing admission rejects it.
    pub fn apply_block(&mut self, txs: &[Vec<u8>]) -> Result<Vec<Receipt>, BlockError> {
        let h = self.next_height();
        let ex = execute(&self.db, Vec::new(), self.chain, h, txs, Mode::Verify, &|_| false)?;
        self.db.apply(ex.layer);
        Ok(ex.receipts)
    }

    /// Reads an account.
    pub fn account(&self, id: &AccountId) -> Option<Account> {
        self.db.get(&StateKey::Account(*id)).and_then(|b| Account::decode(&b).ok())
    }

    /// The chain's parameters.
    pub fn params(&self) -> Params {
        let ov = self.db.overlay(Vec::new());
        Executor::new(&ov, self.chain).params()
    }

    /// The account a device key is bound to, if any.
    pub fn device_owner(&self, device: &[u8; 32]) -> Option<AccountId> {
        let ov = self.db.overlay(Vec::new());
        Executor::new(&ov, self.chain).device_owner(device)
    }

    /// Runs the read-only `query` of the contract at `contract` with `msg`: its output and the
    /// fuel used.
    pub fn query(&self, contract: &[u8; 32], msg: &[u8]) -> Result<(Vec<u8>, u64), TxError> {
        let ov = self.db.overlay(Vec::new());
        Executor::new(&ov, self.chain).query(contract, msg)
    }

    /// Next nonce of a signer.
    pub fn nonce(&self, signer: &[u8; 32]) -> u64 {
        let ov = self.db.overlay(Vec::new());
        Executor::new(&ov, self.chain).nonce(signer).unwrap_or(0)
    }
}
