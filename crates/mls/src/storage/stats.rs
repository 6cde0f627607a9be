//! Counters of what OpenMLS and the client ask of the storage ([`MlsStorage::stats`]).

use std::collections::BTreeMap;
use std::time::Instant;

#[cfg(doc)]
use super::MlsStorage;

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
    pub(super) fn add(&mut self, bytes: usize, since: Option<Instant>) {
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
