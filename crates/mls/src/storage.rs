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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use openmls_traits::storage::{CURRENT_VERSION, StorageProvider, traits};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

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

/// Counters of one kind of storage call (see [`MlsStorage::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls.
    pub calls: u64,
    /// Bytes encoded (writes) or decoded (reads).
    pub bytes: u64,
    /// Time spent encoding (writes) or decoding (reads), in nanoseconds.
    pub nanos: u64,
}

impl CallStats {
    fn add(&mut self, bytes: usize, since: Option<Instant>) {
        self.calls += 1;
        self.bytes += bytes as u64;
        self.nanos += since.map_or(0, |t| u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
}

/// What OpenMLS and the client asked of the storage since the last
/// [`MlsStorage::reset_stats`], per entry label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Writes (encoded and buffered), per label.
    pub writes: BTreeMap<String, CallStats>,
    /// Writes of the message secrets skipped because they were deferred (see
    /// [`MlsStorage`] docs: only the last state of a batch is encoded).
    pub deferred: u64,
    /// Reads that found a value, per label.
    pub reads: BTreeMap<String, CallStats>,
    /// Deletes, per label.
    pub deletes: BTreeMap<String, CallStats>,
    /// Transactions committed.
    pub flushes: u64,
    /// Entries written to the database by those transactions (unchanged values are skipped).
    pub flushed_entries: u64,
    /// Bytes of the values written to the database.
    pub flushed_bytes: u64,
    /// Buffered values skipped at flush because the database already held the same bytes.
    pub unchanged_skipped: u64,
    /// Time spent in those transactions (compare, write, commit with fsync), in nanoseconds.
    pub flush_nanos: u64,
}

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
}

/// OpenMLS storage provider over redb with a write-back overlay (see the module docs).
pub struct MlsStorage {
    db: Arc<dyn DatabaseHandle>,
    pending: Arc<Mutex<Shared>>,
    prefix: Vec<u8>,
}

impl std::fmt::Debug for MlsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsStorage").field("pending", &self.lock().overlay.len()).finish()
    }
}

impl MlsStorage {
    /// Storage over `db` (creates the table on first flush).
    pub fn new(db: Arc<dyn DatabaseHandle>) -> Self {
        Self { db, pending: Arc::new(Mutex::new(Shared::default())), prefix: Vec::new() }
    }

    /// A view of the same database and overlay whose keys all start with `prefix` (used to
    /// keep snapshots of past epochs apart from the live state; flushed together with it).
    pub(crate) fn scoped(&self, prefix: Vec<u8>) -> Self {
        Self { db: Arc::clone(&self.db), pending: Arc::clone(&self.pending), prefix }
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
        Ok(t.get(k)?.map(|g| g.value().to_vec()))
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
                    out.insert(k.value().to_vec(), v.value().to_vec());
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

    /// Commits every buffered write in one durable redb transaction. Refused while writes of
    /// earlier operations are staged for the caller's transaction
    /// ([`StorageError::StagedPending`]): they must not reach the database without it.
    pub fn flush(&self) -> Result<(), StorageError> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if !s.deferred.is_empty() {
            return Err(StorageError::Unsettled(s.deferred.len()));
        }
        if !s.staged.is_empty() {
            return Err(StorageError::StagedPending(s.staged.len()));
        }
        if s.overlay.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let wtx = self.db.database().begin_write()?;
        let written = {
            let mut t = wtx.open_table(TABLE)?;
            write_entries(&mut t, &s.overlay)?
        };
        if written.entries > 0 {
            wtx.commit()?;
        } else {
            wtx.abort()?;
        }
        s.stats.flushes += u64::from(written.entries > 0);
        written.count(&mut s.stats, started);
        s.overlay.clear();
        Ok(())
    }

    /// Ends an operation without a transaction of its own: its writes join the staged writes
    /// that [`MlsStorage::flush_into`] writes into the caller's transaction. Refused while a
    /// deferred write is not settled.
    pub(crate) fn stage(&self) -> Result<(), StorageError> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if !s.deferred.is_empty() {
            return Err(StorageError::Unsettled(s.deferred.len()));
        }
        let overlay = std::mem::take(&mut s.overlay);
        s.staged.extend(overlay);
        Ok(())
    }

    /// Number of staged writes waiting for [`MlsStorage::flush_into`].
    pub fn staged_writes(&self) -> usize {
        self.lock().staged.len()
    }

    /// Writes every staged write into `tx` (the caller commits it), plus a marker that
    /// [`MlsStorage::staged_committed`] checks. The staged writes stay readable (and are
    /// written again by the next `flush_into`) until that confirmation or
    /// [`MlsStorage::discard_staged`]. Refused while an operation is in progress.
    pub fn flush_into(&self, tx: &redb::WriteTransaction) -> Result<(), StorageError> {
        let mut guard = self.lock();
        let s = &mut *guard;
        if !s.deferred.is_empty() || !s.overlay.is_empty() {
            return Err(StorageError::Unsettled(s.deferred.len() + s.overlay.len()));
        }
        if s.staged.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut t = tx.open_table(TABLE)?;
        let written = write_entries(&mut t, &s.staged)?;
        let previous = t
            .get(FLUSH_MARKER)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_be_bytes);
        let marker = previous.wrapping_add(1).to_be_bytes();
        t.insert(FLUSH_MARKER, marker.as_slice())?;
        written.count(&mut s.stats, started);
        s.flushed_marker = Some(marker);
        Ok(())
    }

    /// Confirms that the transaction of the last [`MlsStorage::flush_into`] was committed:
    /// the staged writes are dropped from memory (the database holds them). Refused, with the
    /// staged writes kept, if the database does not hold that flush's marker.
    pub fn staged_committed(&self) -> Result<(), StorageError> {
        let mut s = self.lock();
        let Some(marker) = s.flushed_marker else {
            return if s.staged.is_empty() { Ok(()) } else { Err(StorageError::NotCommitted) };
        };
        let rtx = self.db.database().begin_read()?;
        let stored = match rtx.open_table(TABLE) {
            Ok(t) => t.get(FLUSH_MARKER)?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if stored.as_deref() != Some(marker.as_slice()) {
            return Err(StorageError::NotCommitted);
        }
        s.stats.flushes += 1;
        s.staged.clear();
        s.flushed_marker = None;
        Ok(())
    }

    /// Drops the staged writes and the operation in progress (the caller then reloads its
    /// groups from storage).
    pub fn discard_staged(&self) {
        let mut s = self.lock();
        s.staged.clear();
        s.flushed_marker = None;
        drop(s);
        self.discard();
    }

    /// Drops the writes of the operation in progress (the caller then reloads its groups from
    /// storage); staged writes of completed operations stay.
    pub fn discard(&self) {
        let mut s = self.lock();
        s.overlay.clear();
        s.deferred.clear();
        s.defer = false;
    }

    /// Number of buffered, unflushed writes.
    pub fn pending_writes(&self) -> usize {
        self.lock().overlay.len()
    }

    fn put<K: Serialize + ?Sized, T: Serialize + ?Sized>(
        &self,
        l: &[u8],
        k: &K,
        v: &T,
    ) -> Result<(), StorageError> {
        let key = self.key(l, k)?;
        if l == MESSAGE_SECRETS {
            let mut s = self.lock();
            if s.defer {
                s.stats.deferred += 1;
                s.deferred.insert(key);
                return Ok(());
            }
        }
        let started = Instant::now();
        let val = if l == TREE {
            // The tree is O(N): compact binary (a third of the JSON size, faster to encode).
            let mut b = vec![COMPACT];
            b.extend_from_slice(&crate::compact::to_vec(v).map_err(compact_err)?);
            b
        } else {
            serde_json::to_vec(v)?
        };
        self.lock()
            .stats
            .writes
            .entry(String::from_utf8_lossy(l).into_owned())
            .or_default()
            .add(val.len(), Some(started));
        if l == TREE {
            // The tree (O(N) bytes) goes to a reference-counted blob; the entry holds a pointer,
            // so a snapshot of the epoch copies 9 bytes instead of the whole tree.
            if let Some(old) = self.raw_get(&key)? {
                self.release_blob(&old)?;
            }
            let seq = match self.raw_get(BLOB_SEQ)? {
                Some(b) => u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])),
                None => 0,
            } + 1;
            let id = seq.to_be_bytes();
            self.raw_put(BLOB_SEQ.to_vec(), id.to_vec());
            self.raw_put(blob_key(&id), val);
            self.raw_put(blob_rc_key(&id), 1u32.to_be_bytes().to_vec());
            let mut ptr = vec![POINTER];
            ptr.extend_from_slice(&id);
            self.raw_put(key, ptr);
            return Ok(());
        }
        self.raw_put(key, val);
        Ok(())
    }

    /// Counts one more reference to the blob `value` points to (no-op for other values).
    pub(crate) fn retain_blob(&self, value: &[u8]) -> Result<(), StorageError> {
        let Some(id) = blob_id(value) else { return Ok(()) };
        let rc = self.blob_rc(&id)?;
        self.raw_put(blob_rc_key(&id), (rc + 1).to_be_bytes().to_vec());
        Ok(())
    }

    /// Drops one reference to the blob `value` points to, deleting it with the last one
    /// (no-op for other values).
    pub(crate) fn release_blob(&self, value: &[u8]) -> Result<(), StorageError> {
        let Some(id) = blob_id(value) else { return Ok(()) };
        let rc = self.blob_rc(&id)?;
        if rc <= 1 {
            self.raw_del(blob_rc_key(&id));
            self.raw_del(blob_key(&id));
        } else {
            self.raw_put(blob_rc_key(&id), (rc - 1).to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn blob_rc(&self, id: &[u8; 8]) -> Result<u32, StorageError> {
        Ok(self
            .raw_get(&blob_rc_key(id))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map_or(0, u32::from_be_bytes))
    }

    fn get<K: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        l: &[u8],
        k: &K,
    ) -> Result<Option<T>, StorageError> {
        let raw = match self.raw_get(&self.key(l, k)?)? {
            Some(p) => match blob_id(&p) {
                Some(id) => self.raw_get(&blob_key(&id))?,
                None => Some(p),
            },
            None => None,
        };
        match raw {
            Some(b) => {
                let started = Instant::now();
                let v = match b.split_first() {
                    Some((&COMPACT, rest)) => crate::compact::from_slice(rest).map_err(compact_err)?,
                    _ => serde_json::from_slice(&b)?,
                };
                self.lock()
                    .stats
                    .reads
                    .entry(String::from_utf8_lossy(l).into_owned())
                    .or_default()
                    .add(b.len(), Some(started));
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    fn del<K: Serialize + ?Sized>(&self, l: &[u8], k: &K) -> Result<(), StorageError> {
        let key = self.key(l, k)?;
        self.lock().stats.deletes.entry(String::from_utf8_lossy(l).into_owned()).or_default().add(0, None);
        if l == TREE
            && let Some(old) = self.raw_get(&key)?
        {
            self.release_blob(&old)?;
        }
        self.raw_del(key);
        Ok(())
    }

    // List-valued entries: a JSON array of the JSON encodings of the items.
    fn list<K: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        l: &[u8],
        k: &K,
    ) -> Result<Vec<T>, StorageError> {
        let raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        raw.iter().map(|b| serde_json::from_slice(b).map_err(StorageError::from)).collect()
    }

    fn push<K: Serialize + ?Sized, T: Serialize>(&self, l: &[u8], k: &K, v: &T) -> Result<(), StorageError> {
        let mut raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        raw.push(serde_json::to_vec(v)?);
        self.put(l, k, &raw)
    }

    fn pull<K: Serialize + ?Sized, T: Serialize>(&self, l: &[u8], k: &K, v: &T) -> Result<(), StorageError> {
        let mut raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        let item = serde_json::to_vec(v)?;
        if let Some(pos) = raw.iter().position(|x| *x == item) {
            raw.remove(pos);
        }
        self.put(l, k, &raw)
    }
}

/// Written by every [`MlsStorage::flush_into`]: a counter that tells whether the caller's
/// transaction was committed.
const FLUSH_MARKER: &[u8] = b"cairn.flushmarker";

/// What [`write_entries`] wrote.
struct Written {
    entries: u64,
    bytes: u64,
    same: u64,
}

impl Written {
    fn count(&self, stats: &mut StorageStats, started: Instant) {
        stats.flushed_entries += self.entries;
        stats.flushed_bytes += self.bytes;
        stats.unchanged_skipped += self.same;
        stats.flush_nanos += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }
}

/// Writes `entries` into `t`, skipping values the table already holds: OpenMLS rewrites
/// entries that did not change (e.g. the group state on every commit).
fn write_entries(t: &mut redb::Table<'_, &[u8], &[u8]>, entries: &Overlay) -> Result<Written, StorageError> {
    let mut w = Written { entries: 0, bytes: 0, same: 0 };
    for (k, v) in entries {
        match v {
            Some(v) => {
                if t.get(k.as_slice())?.is_some_and(|old| old.value() == v.as_slice()) {
                    w.same += 1;
                    continue;
                }
                w.entries += 1;
                w.bytes += v.len() as u64;
                t.insert(k.as_slice(), v.as_slice())?;
            }
            None => {
                w.entries += 1;
                t.remove(k.as_slice())?;
            }
        }
    }
    Ok(w)
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

fn compact_err(e: crate::compact::Error) -> StorageError {
    StorageError::Encoding(<serde_json::Error as serde::de::Error>::custom(e))
}

fn blob_id(value: &[u8]) -> Option<[u8; 8]> {
    match value.split_first() {
        Some((&POINTER, id)) => id.try_into().ok(),
        _ => None,
    }
}

fn blob_key(id: &[u8; 8]) -> Vec<u8> {
    [BLOB_PREFIX, id].concat()
}

fn blob_rc_key(id: &[u8; 8]) -> Vec<u8> {
    [BLOB_RC_PREFIX, id].concat()
}

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

type R<T> = Result<T, StorageError>;

impl StorageProvider<V> for MlsStorage {
    type Error = StorageError;

    fn write_mls_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        group_id: &G,
        config: &C,
    ) -> R<()> {
        self.put(JOIN_CONFIG, group_id, config)
    }
    fn append_own_leaf_node<G: traits::GroupId<V>, L: traits::LeafNode<V>>(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> R<()> {
        self.push(OWN_LEAF_NODES, group_id, leaf_node)
    }
    fn queue_proposal<G: traits::GroupId<V>, P: traits::ProposalRef<V>, Q: traits::QueuedProposal<V>>(
        &self,
        group_id: &G,
        proposal_ref: &P,
        proposal: &Q,
    ) -> R<()> {
        self.put(QUEUED_PROPOSAL, &(group_id, proposal_ref), proposal)?;
        self.push(PROPOSAL_REFS, group_id, proposal_ref)
    }
    fn write_tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, group_id: &G, tree: &T) -> R<()> {
        self.put(TREE, group_id, tree)
    }
    fn write_interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        group_id: &G,
        h: &H,
    ) -> R<()> {
        self.put(INTERIM_TH, group_id, h)
    }
    fn write_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(&self, group_id: &G, c: &C) -> R<()> {
        self.put(GROUP_CONTEXT, group_id, c)
    }
    fn write_confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        group_id: &G,
        tag: &C,
    ) -> R<()> {
        self.put(CONFIRMATION_TAG, group_id, tag)
    }
    fn write_group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(GROUP_STATE, group_id, s)
    }
    fn write_message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        group_id: &G,
        m: &M,
    ) -> R<()> {
        self.put(MESSAGE_SECRETS, group_id, m)
    }
    fn write_resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(RESUMPTION_PSK, group_id, s)
    }
    fn write_own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        group_id: &G,
        i: &L,
    ) -> R<()> {
        self.put(OWN_LEAF_INDEX, group_id, i)
    }
    fn write_group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(EPOCH_SECRETS, group_id, s)
    }
    fn write_signature_key_pair<P: traits::SignaturePublicKey<V>, K: traits::SignatureKeyPair<V>>(
        &self,
        public_key: &P,
        kp: &K,
    ) -> R<()> {
        self.put(SIG_KEY_PAIR, public_key, kp)
    }
    fn write_encryption_key_pair<E: traits::EncryptionKey<V>, K: traits::HpkeKeyPair<V>>(
        &self,
        public_key: &E,
        kp: &K,
    ) -> R<()> {
        self.put(ENC_KEY_PAIR, public_key, kp)
    }
    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        K: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[K],
    ) -> R<()> {
        self.put(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index), key_pairs)
    }
    fn write_key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(
        &self,
        r: &H,
        kp: &K,
    ) -> R<()> {
        self.put(KEY_PACKAGE, r, kp)
    }
    fn write_psk<P: traits::PskId<V>, B: traits::PskBundle<V>>(&self, psk_id: &P, psk: &B) -> R<()> {
        self.put(PSK, psk_id, psk)
    }

    fn mls_group_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<C>> {
        self.get(JOIN_CONFIG, group_id)
    }
    fn own_leaf_nodes<G: traits::GroupId<V>, L: traits::LeafNode<V>>(&self, group_id: &G) -> R<Vec<L>> {
        self.list(OWN_LEAF_NODES, group_id)
    }
    fn queued_proposal_refs<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        group_id: &G,
    ) -> R<Vec<P>> {
        self.list(PROPOSAL_REFS, group_id)
    }
    fn queued_proposals<G: traits::GroupId<V>, P: traits::ProposalRef<V>, Q: traits::QueuedProposal<V>>(
        &self,
        group_id: &G,
    ) -> R<Vec<(P, Q)>> {
        let refs: Vec<P> = self.list(PROPOSAL_REFS, group_id)?;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            if let Some(p) = self.get(QUEUED_PROPOSAL, &(group_id, &r))? {
                out.push((r, p));
            }
        }
        Ok(out)
    }
    fn tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, group_id: &G) -> R<Option<T>> {
        self.get(TREE, group_id)
    }
    fn group_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(&self, group_id: &G) -> R<Option<C>> {
        self.get(GROUP_CONTEXT, group_id)
    }
    fn interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<H>> {
        self.get(INTERIM_TH, group_id)
    }
    fn confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<C>> {
        self.get(CONFIRMATION_TAG, group_id)
    }
    fn group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(&self, group_id: &G) -> R<Option<S>> {
        self.get(GROUP_STATE, group_id)
    }
    fn message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<M>> {
        self.get(MESSAGE_SECRETS, group_id)
    }
    fn resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<S>> {
        self.get(RESUMPTION_PSK, group_id)
    }
    fn own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<L>> {
        self.get(OWN_LEAF_INDEX, group_id)
    }
    fn group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<S>> {
        self.get(EPOCH_SECRETS, group_id)
    }
    fn signature_key_pair<P: traits::SignaturePublicKey<V>, K: traits::SignatureKeyPair<V>>(
        &self,
        public_key: &P,
    ) -> R<Option<K>> {
        self.get(SIG_KEY_PAIR, public_key)
    }
    fn encryption_key_pair<K: traits::HpkeKeyPair<V>, E: traits::EncryptionKey<V>>(
        &self,
        public_key: &E,
    ) -> R<Option<K>> {
        self.get(ENC_KEY_PAIR, public_key)
    }
    fn encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        K: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<Vec<K>> {
        Ok(self.get(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))?.unwrap_or_default())
    }
    fn key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(&self, r: &H) -> R<Option<K>> {
        self.get(KEY_PACKAGE, r)
    }
    fn psk<B: traits::PskBundle<V>, P: traits::PskId<V>>(&self, psk_id: &P) -> R<Option<B>> {
        self.get(PSK, psk_id)
    }

    fn remove_proposal<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        group_id: &G,
        r: &P,
    ) -> R<()> {
        self.pull(PROPOSAL_REFS, group_id, r)?;
        self.del(QUEUED_PROPOSAL, &(group_id, r))
    }
    fn delete_own_leaf_nodes<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(OWN_LEAF_NODES, group_id)
    }
    fn delete_group_config<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(JOIN_CONFIG, group_id)
    }
    fn delete_tree<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(TREE, group_id)
    }
    fn delete_confirmation_tag<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(CONFIRMATION_TAG, group_id)
    }
    fn delete_group_state<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(GROUP_STATE, group_id)
    }
    fn delete_context<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(GROUP_CONTEXT, group_id)
    }
    fn delete_interim_transcript_hash<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(INTERIM_TH, group_id)
    }
    fn delete_message_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(MESSAGE_SECRETS, group_id)
    }
    fn delete_all_resumption_psk_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(RESUMPTION_PSK, group_id)
    }
    fn delete_own_leaf_index<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(OWN_LEAF_INDEX, group_id)
    }
    fn delete_group_epoch_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(EPOCH_SECRETS, group_id)
    }
    fn clear_proposal_queue<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(&self, group_id: &G) -> R<()> {
        let refs: Vec<P> = self.list(PROPOSAL_REFS, group_id)?;
        for r in &refs {
            self.del(QUEUED_PROPOSAL, &(group_id, r))?;
        }
        self.del(PROPOSAL_REFS, group_id)
    }
    fn delete_signature_key_pair<P: traits::SignaturePublicKey<V>>(&self, public_key: &P) -> R<()> {
        self.del(SIG_KEY_PAIR, public_key)
    }
    fn delete_encryption_key_pair<E: traits::EncryptionKey<V>>(&self, public_key: &E) -> R<()> {
        self.del(ENC_KEY_PAIR, public_key)
    }
    fn delete_encryption_epoch_key_pairs<G: traits::GroupId<V>, E: traits::EpochKey<V>>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<()> {
        self.del(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))
    }
    fn delete_key_package<H: traits::HashReference<V>>(&self, r: &H) -> R<()> {
        self.del(KEY_PACKAGE, r)
    }
    fn delete_psk<P: traits::PskId<V>>(&self, psk_id: &P) -> R<()> {
        self.del(PSK, psk_id)
    }
}

/// The OpenMLS provider Cairn uses: RustCrypto primitives and randomness, redb storage.
#[derive(Debug)]
pub struct CairnProvider {
    crypto: openmls_rust_crypto::RustCrypto,
    storage: MlsStorage,
}

impl CairnProvider {
    /// A provider storing into `db`.
    pub fn new(db: Arc<dyn DatabaseHandle>) -> Self {
        Self { crypto: openmls_rust_crypto::RustCrypto::default(), storage: MlsStorage::new(db) }
    }

    /// A provider over the same database and overlay, with keys under `prefix`.
    pub(crate) fn scoped(&self, prefix: Vec<u8>) -> Self {
        Self { crypto: openmls_rust_crypto::RustCrypto::default(), storage: self.storage.scoped(prefix) }
    }
}

impl openmls_traits::OpenMlsProvider for CairnProvider {
    type CryptoProvider = openmls_rust_crypto::RustCrypto;
    type RandProvider = openmls_rust_crypto::RustCrypto;
    type StorageProvider = MlsStorage;

    fn storage(&self) -> &MlsStorage {
        &self.storage
    }
    fn crypto(&self) -> &openmls_rust_crypto::RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &openmls_rust_crypto::RustCrypto {
        &self.crypto
    }
}
