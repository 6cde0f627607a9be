//! OpenMLS state in Cairn's redb file.
//!
//! [`MlsStorage`] implements OpenMLS's `StorageProvider` over one redb table (`cairn_mls`) of the
//! same [`redb::Database`] as the rest of the store. OpenMLS makes several storage writes per
//! API call; they go to a write-back overlay first and [`MlsStorage::flush`] commits them in one
//! redb transaction, so a group is always stored in a consistent state: either all of an
//! operation's changes are on disk or none. On error the caller [`MlsStorage::discard`]s the
//! overlay and reloads the group. Repeated writes of one key within an operation are coalesced,
//! so each transaction writes only the entries that changed, once.
//!
//! Deferred durability: instead of its own transaction, a completed operation may be
//! [`MlsStorage::stage`]d; staged writes stay readable and [`MlsStorage::flush_into`] writes
//! them into a transaction of the caller, so the caller's rows and the MLS state commit
//! together. While writes are staged, [`MlsStorage::flush`] is refused.
//!
//! Keys are `label ‖ 0x00 ‖ json(key) ‖ storage version (u16 BE)`; values are JSON (the same
//! self-describing encoding OpenMLS's own providers use, so entities round-trip exactly).

mod durability;
mod entries;
mod provider;
mod seal;
mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use openmls_traits::storage::CURRENT_VERSION;
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use thiserror::Error;

pub use provider::CairnProvider;
pub use seal::Sealer;
pub use stats::{CallStats, StorageStats};

const TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("cairn_mls");
const V: u16 = CURRENT_VERSION;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StorageError {
    /// A stored value could not be encoded or decoded.
    #[error("MLS state encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    /// The database refused the operation.
    #[error("MLS state database: {0}")]
    Database(#[from] redb::Error),
    /// A flush was attempted while a deferred write had not been settled (a bug in the
    /// caller: the stored state would lag behind the group in memory).
    #[error("MLS state: {0} deferred write(s) not settled before flush")]
    Unsettled(usize),
    /// A flush of its own transaction was attempted while the writes of earlier operations
    /// wait for [`MlsStorage::flush_into`] (they must reach the database in the caller's
    /// transaction, never in another one).
    #[error("MLS state: {0} staged write(s) wait for the caller's transaction")]
    StagedPending(usize),
    /// [`MlsStorage::staged_committed`] was called but the database does not hold the last
    /// [`MlsStorage::flush_into`] (its transaction was not committed).
    #[error("MLS state: the transaction given to flush_into was not committed")]
    NotCommitted,
    /// A sealed value could not be sealed or opened.
    #[error("MLS state at rest: {0}")]
    Sealed(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => { $(impl From<$t> for StorageError {
        fn from(e: $t) -> Self { Self::Database(e.into()) }
    })* };
}
from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Something that owns a redb [`Database`]: the database itself or Cairn's [`cairn_store::Store`].
pub trait DatabaseHandle: Send + Sync {
    /// The database.
    fn database(&self) -> &Database;
}

impl DatabaseHandle for Database {
    fn database(&self) -> &Database {
        self
    }
}

impl DatabaseHandle for cairn_store::Store {
    fn database(&self) -> &Database {
        cairn_store::Store::database(self)
    }
}

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Default)]
struct Shared {
    /// Writes of the operation in progress (dropped by [`MlsStorage::discard`]).
    overlay: Overlay,
    /// Writes of completed operations waiting for the caller's transaction
    /// ([`MlsStorage::stage`], [`MlsStorage::flush_into`]); read through, under `overlay`.
    staged: Overlay,
    /// The marker value written by the last [`MlsStorage::flush_into`], if not confirmed yet.
    flushed_marker: Option<[u8; 8]>,
    /// While set, writes of the message secrets (rewritten by OpenMLS after every
    /// application message) are not encoded; the key is remembered until a real write.
    defer: bool,
    deferred: BTreeSet<Vec<u8>>,
    stats: StorageStats,
    /// Run inside each durable write transaction of [`MlsStorage::flush`], before it commits.
    before_durable: Option<DurableHook>,
}

/// What must happen before a durable commit of the database (see
/// [`MlsStorage::set_before_durable`]).
pub type DurableHook = Arc<dyn Fn() + Send + Sync>;

/// OpenMLS storage provider over redb with a write-back overlay (see the module docs).
pub struct MlsStorage {
    db: Arc<dyn DatabaseHandle>,
    pending: Arc<Mutex<Shared>>,
    prefix: Vec<u8>,
    /// Seals values at rest (`None`: stored in clear, for tests of the storage itself).
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for MlsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsStorage").field("pending", &self.lock().overlay.len()).finish()
    }
}

impl MlsStorage {
    /// Storage over `db` (creates the table on first flush).
    pub fn new(db: Arc<dyn DatabaseHandle>) -> Self {
        Self { db, pending: Arc::new(Mutex::new(Shared::default())), prefix: Vec::new(), sealer: None }
    }

    /// Storage over `db` whose values are sealed at rest with `sealer`.
    pub fn sealed(db: Arc<dyn DatabaseHandle>, sealer: Sealer) -> Self {
        Self { sealer: Some(Arc::new(sealer)), ..Self::new(db) }
    }

    /// A table value as stored → the value.
    fn opened(&self, k: &[u8], stored: &[u8]) -> Result<Vec<u8>, StorageError> {
        match &self.sealer {
            Some(s) => s.open(k, stored),
            None => Ok(stored.to_vec()),
        }
    }

    /// A view of the same database and overlay whose keys all start with `prefix` (used to
    /// keep snapshots of past epochs apart from the live state; flushed together with it).
    pub(crate) fn scoped(&self, prefix: Vec<u8>) -> Self {
        Self {
            db: Arc::clone(&self.db),
            pending: Arc::clone(&self.pending),
            prefix,
            sealer: self.sealer.clone(),
        }
    }

    /// Runs `hook` inside every durable transaction this storage commits on its own (a
    /// durable commit also makes the database's earlier lazy commits durable: the node makes
    /// its local history durable first, so nothing read from it outlives it after a crash).
    pub fn set_before_durable(&self, hook: DurableHook) {
        self.lock().before_durable = Some(hook);
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A poisoned lock only means another thread panicked mid-update of the overlay; the
        // overlay is discarded by the caller's rollback in that case, so keep going.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn key<K: Serialize + ?Sized>(&self, label: &[u8], k: &K) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::with_capacity(self.prefix.len() + label.len() + 64);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(label);
        out.push(0);
        serde_json::to_writer(&mut out, k)?;
        out.extend_from_slice(&V.to_be_bytes());
        Ok(out)
    }

    /// Reads a raw entry, seeing unflushed writes.
    pub(crate) fn raw_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        {
            let s = self.lock();
            if let Some(v) = s.overlay.get(k).or_else(|| s.staged.get(k)) {
                return Ok(v.clone());
            }
        }
        let rtx = self.db.database().begin_read()?;
        let t = match rtx.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        t.get(k)?.map(|g| self.opened(k, g.value())).transpose()
    }

    /// Buffers a raw write (flushed with the rest of the operation).
    pub(crate) fn raw_put(&self, k: Vec<u8>, v: Vec<u8>) {
        let mut s = self.lock();
        s.deferred.remove(&k);
        s.overlay.insert(k, Some(v));
    }

    /// Buffers a raw delete.
    pub(crate) fn raw_del(&self, k: Vec<u8>) {
        let mut s = self.lock();
        s.deferred.remove(&k);
        s.overlay.insert(k, None);
    }

    /// Starts or stops deferring writes of the message secrets. While deferred, OpenMLS's
    /// per-message rewrite of the whole secret tree (O(N) bytes at N members) is not encoded;
    /// the caller must settle each deferred key with a real write (see
    /// [`MlsStorage::is_deferred`]) before [`MlsStorage::flush`], which refuses otherwise.
    pub(crate) fn set_defer(&self, on: bool) {
        self.lock().defer = on;
    }

    /// Whether the message secrets of `group_id` (in this view) have a deferred write.
    pub(crate) fn message_secrets_deferred(&self, group_id: &[u8]) -> Result<bool, StorageError> {
        let k = self.key(MESSAGE_SECRETS, &openmls::prelude::GroupId::from_slice(group_id))?;
        Ok(self.lock().deferred.contains(&k))
    }

    /// Whether any deferred write is waiting to be settled.
    pub(crate) fn any_deferred(&self) -> bool {
        !self.lock().deferred.is_empty()
    }

    /// Storage calls since the last reset (for benchmarks and diagnostics).
    pub fn stats(&self) -> StorageStats {
        self.lock().stats.clone()
    }

    /// Resets the counters of [`MlsStorage::stats`].
    pub fn reset_stats(&self) {
        self.lock().stats = StorageStats::default();
    }

    /// Every `(key, value)` whose key starts with `prefix`, seeing unflushed writes.
    pub(crate) fn raw_scan(&self, prefix: &[u8]) -> Result<Entries, StorageError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let rtx = self.db.database().begin_read()?;
        match rtx.open_table(TABLE) {
            Ok(t) => {
                for item in t.range(prefix..)? {
                    let (k, v) = item?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    out.insert(k.value().to_vec(), self.opened(k.value(), v.value())?);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let s = self.lock();
        for layer in [&s.staged, &s.overlay] {
            for (k, v) in layer.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Trees are stored as blobs `BLOB_PREFIX ‖ id (u64 BE)` → JSON, with a reference count
/// `BLOB_RC_PREFIX ‖ id` → u32 BE; the `Tree` entry (and each snapshot's copy of it) holds
/// `POINTER ‖ id`. JSON never starts with 0xFF, so entries written before hold JSON and still load.
pub(crate) const BLOB_PREFIX: &[u8] = b"cairn.tree\0";
const BLOB_RC_PREFIX: &[u8] = b"cairn.treerc\0";
const BLOB_SEQ: &[u8] = b"cairn.treeseq";
const POINTER: u8 = 0xFF;
/// First byte of a value in [`crate::compact`] encoding (JSON never starts with it).
const COMPACT: u8 = 0xFE;

pub(crate) const KEY_PACKAGE: &[u8] = b"KeyPackage";
const PSK: &[u8] = b"Psk";
const ENC_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
const SIG_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const TREE: &[u8] = b"Tree";
const GROUP_CONTEXT: &[u8] = b"GroupContext";
const INTERIM_TH: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
const GROUP_STATE: &[u8] = b"GroupState";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_REFS: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_INDEX: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
const RESUMPTION_PSK: &[u8] = b"ResumptionPsk";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";

/// Labels of the entries keyed by group id that make up a group's state (what a snapshot of
/// an epoch copies).
pub(crate) const GROUP_LABELS: [&[u8]; 11] = [
    JOIN_CONFIG,
    OWN_LEAF_NODES,
    TREE,
    GROUP_CONTEXT,
    INTERIM_TH,
    CONFIRMATION_TAG,
    GROUP_STATE,
    MESSAGE_SECRETS,
    RESUMPTION_PSK,
    OWN_LEAF_INDEX,
    EPOCH_SECRETS,
];
