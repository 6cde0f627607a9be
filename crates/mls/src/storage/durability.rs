//! Durability of the write-back overlay: [`MlsStorage::flush`] in a transaction of its own, or
//! [`MlsStorage::stage`] then [`MlsStorage::flush_into`] the caller's transaction (confirmed by
//! [`MlsStorage::staged_committed`]); [`MlsStorage::discard`] on error.

use std::time::Instant;

use redb::{ReadableDatabase, ReadableTable};

use super::{MlsStorage, Overlay, StorageError, StorageStats, TABLE};

impl MlsStorage {
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
        if let Some(hook) = &s.before_durable {
            hook();
        }
        let written = {
            let mut t = wtx.open_table(TABLE)?;
            write_entries(&mut t, &s.overlay, self.sealer.as_deref())?
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
        let written = write_entries(&mut t, &s.staged, self.sealer.as_deref())?;
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
fn write_entries(
    t: &mut redb::Table<'_, &[u8], &[u8]>,
    entries: &Overlay,
    sealer: Option<&super::Sealer>,
) -> Result<Written, StorageError> {
    let mut w = Written { entries: 0, bytes: 0, same: 0 };
    for (k, v) in entries {
        match v {
            Some(v) => {
                let sealed;
                let v = match sealer {
                    Some(s) => {
                        sealed = s.seal(k, v)?;
                        &sealed
                    }
                    None => v,
                };
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
                if let Some(s) = sealer {
                    s.forget(k);
                }
            }
        }
    }
    Ok(w)
}
