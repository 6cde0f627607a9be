//! The ledger state machine: records, the authenticated store (a Jellyfish Merkle Tree), and
//! deterministic execution of transactions.
//!
//! Everything here is pure: the same transactions applied to the same state give the same
//! receipts and the same root on every machine.
//!
//! Execution is split in two:
//! - **admission** (chain, signer authorization, nonce, signature): a block containing a
//!   transaction that fails admission is invalid as a whole;
//! - **effect** (the body): a failure is recorded in the transaction's [`Receipt`], the nonce is
//!   still consumed and nothing else changes. So a stale handshake or a taken handle gets a final,
//!   agreed answer.

mod block;
mod contracts;
mod db;
mod executor;
mod records;
mod stores;

use cairn_proto::codec::DecodeError;
use jmt::{JellyfishMerkleTree, KeyHash};
use sha2::Sha256;
use thiserror::Error;

pub use block::{
    BLOCK_FUEL_MAX, BlockError, Dropped, Executed, Machine, Mode, execute, execute_with_ids, genesis_layer,
};
pub use contracts::{FUEL_LIMIT_MAX, OUTCOME_OUTPUT_MAX, QUERY_FUEL, contract_address};
pub use db::{Layer, Overlay, StateDb};
pub use executor::{Executor, usable_key};
pub use records::{
    Account, AnchorRecord, ContractRecord, DeviceEntry, KeyPackageRecord, Outcome, Receipt, StateKey,
    TopicState,
};
pub use stores::{STORE_FEE_BYTES, STORES_MAX, STORES_PER_ACCOUNT_MAX, StoreEntry, StoreSet, store_fee};

/// Most devices (active or revoked) an account may have.
pub const DEVICES_MAX: usize = 32;

/// The JMT instantiation used by the ledger.
pub type Tree<'a, R> = JellyfishMerkleTree<'a, R, Sha256>;
/// A JMT proof with the ledger's hasher.
pub type Proof = jmt::proof::SparseMerkleProof<Sha256>;

/// Reads state values.
pub trait StateRead {
    /// The value at `key`, if any.
    fn get(&self, key: &KeyHash) -> Option<Vec<u8>>;
}

/// Internal inconsistency of the stored state (never caused by a transaction).
#[derive(Debug, Error)]
pub enum StateError {
    /// A stored record does not decode.
    #[error("corrupt state record: {0}")]
    Corrupt(#[from] DecodeError),
    /// The tree failed (missing node).
    #[error("merkle tree: {0}")]
    Tree(String),
}
