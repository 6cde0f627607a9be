//! Cairn's durable store on redb: envelopes by id and by topic (with an ordered cursor), and
//! named key material.
//!
//! Every write is one ACID transaction committed with `Durability::Immediate` (fsync) before it
//! is acknowledged; [`Store::append`] takes a batch so callers can group-commit many envelopes
//! with one fsync. Values read back from disk are decoded with the same bounded decoders as
//! network input: a damaged file gives an error, never a panic.
//!
//! Tables (schema version 1):
//! - `envelopes`: id → encoded envelope
//! - `topic_log`: (topic, seq) → id, seq dense from 0 per topic (the cursor)
//! - `topic_next`: topic → next seq
//! - `envelope_seq`: id → (topic, seq)
//! - `keys`: name → bytes (key material, MLS state)
//! - `meta`: name → u64 (`schema_version`)

use std::path::Path;

use cairn_proto::{DecodeError, Envelope, Id, Limits, Topic};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

const ENVELOPES: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("envelopes");
const TOPIC_LOG: TableDefinition<'_, ([u8; 32], u64), [u8; 32]> = TableDefinition::new("topic_log");
const TOPIC_NEXT: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_next");
const ENVELOPE_SEQ: TableDefinition<'_, [u8; 32], ([u8; 32], u64)> = TableDefinition::new("envelope_seq");
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;
/// Largest page a history query returns.
pub const PAGE_ENVELOPES_MAX: usize = 1000;

/// Store failures.
#[derive(Debug, Error)]
pub enum StoreError {
    /// redb reported an error (I/O, corruption, lock held by another process…).
    #[error("storage error: {0} (is another cairn process using this --home?)")]
    Db(#[from] redb::Error),
    /// A stored value failed to decode: the file is damaged.
    #[error("stored envelope {id} is damaged: {source}")]
    Corrupt {
        /// Which entry.
        id: String,
        /// Decoder error.
        source: DecodeError,
    },
    /// The file was written by an incompatible version.
    #[error("store schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    Schema {
        /// Version found on disk.
        found: u64,
    },
    /// Caller asked for more than a limit allows.
    #[error("{0}")]
    Limit(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { Self::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What happened to one envelope given to [`Store::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Newly stored at this position in its topic.
    Stored {
        /// Position (cursor) in the topic.
        seq: u64,
    },
    /// Already present; nothing changed.
    Duplicate,
}

/// One page of a topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `(seq, envelope)` in topic order.
    pub entries: Vec<(u64, Envelope)>,
    /// Cursor to pass for the next page; `None` when the topic has no more entries.
    pub next: Option<u64>,
}

/// Result of [`Store::check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Envelopes stored.
    pub envelopes: u64,
    /// Topics with at least one envelope.
    pub topics: u64,
    /// Every inconsistency found (empty when the store is sound).
    pub problems: Vec<String>,
}

/// The durable store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    limits: Limits,
}

impl Store {
    /// Opens or creates the store file, creating tables and checking the schema version.
    pub fn open(path: &Path, limits: Limits) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            tx.open_table(ENVELOPES)?;
            tx.open_table(TOPIC_LOG)?;
            tx.open_table(TOPIC_NEXT)?;
            tx.open_table(ENVELOPE_SEQ)?;
            tx.open_table(KEYS)?;
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => return Err(StoreError::Schema { found }),
            }
        }
        tx.commit()?;
        Ok(Self { db, limits })
    }

    /// The underlying database, for components that keep their own typed tables
    /// (MLS state, ledger) in the same file and transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a batch in one transaction and one fsync. Returns once durable.
    pub fn append(&self, envelopes: &[Envelope]) -> Result<Vec<Appended>, StoreError> {
        let tx = self.db.begin_write()?;
        let mut out = Vec::with_capacity(envelopes.len());
        {
            let mut env_t = tx.open_table(ENVELOPES)?;
            let mut log_t = tx.open_table(TOPIC_LOG)?;
            let mut next_t = tx.open_table(TOPIC_NEXT)?;
            let mut seq_t = tx.open_table(ENVELOPE_SEQ)?;
            for e in envelopes {
                let id = e.id();
                if env_t.get(id.0)?.is_some() {
                    out.push(Appended::Duplicate);
                    continue;
                }
                let topic = e.header.topic.0;
                let seq = next_t.get(topic)?.map(|v| v.value()).unwrap_or(0);
                env_t.insert(id.0, e.encode().as_slice())?;
                log_t.insert((topic, seq), id.0)?;
                seq_t.insert(id.0, (topic, seq))?;
                next_t.insert(topic, seq + 1)?;
                out.push(Appended::Stored { seq });
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The envelope with this id, if stored.
    pub fn get(&self, id: &Id) -> Result<Option<Envelope>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ENVELOPES)?;
        let Some(v) = t.get(id.0)? else { return Ok(None) };
        self.decode(id, v.value()).map(Some)
    }

    fn decode(&self, id: &Id, bytes: &[u8]) -> Result<Envelope, StoreError> {
        let e = Envelope::decode(bytes, &self.limits)
            .map_err(|source| StoreError::Corrupt { id: id.to_hex(), source })?;
        if e.id() != *id {
            return Err(StoreError::Corrupt {
                id: id.to_hex(),
                source: DecodeError::Invalid { field: "id", reason: "header hash differs from key" },
            });
        }
        Ok(e)
    }

    /// Envelopes of `topic` from cursor `from` (inclusive), at most `limit` of them.
    pub fn page(&self, topic: &Topic, from: u64, limit: usize) -> Result<Page, StoreError> {
        if limit == 0 || limit > PAGE_ENVELOPES_MAX {
            return Err(StoreError::Limit(format!("page size must be 1..={PAGE_ENVELOPES_MAX}")));
        }
        let tx = self.db.begin_read()?;
        let log = tx.open_table(TOPIC_LOG)?;
        let envs = tx.open_table(ENVELOPES)?;
        let mut entries = Vec::with_capacity(limit.min(64));
        let mut next = None;
        for item in log.range((topic.0, from)..=(topic.0, u64::MAX))? {
            let (k, v) = item?;
            let (_, seq) = k.value();
            if entries.len() == limit {
                next = Some(seq);
                break;
            }
            let id = Id(v.value());
            let Some(bytes) = envs.get(id.0)? else {
                return Err(StoreError::Corrupt {
                    id: id.to_hex(),
                    source: DecodeError::Invalid {
                        field: "topic_log",
                        reason: "points to a missing envelope",
                    },
                });
            };
            entries.push((seq, self.decode(&id, bytes.value())?));
        }
        Ok(Page { entries, next })
    }

    /// Number of envelopes stored for `topic` (its next cursor).
    pub fn topic_len(&self, topic: &Topic) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOPIC_NEXT)?;
        Ok(t.get(topic.0)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Erases an envelope's payload in place (id and links stay). Returns false if unknown.
    pub fn erase_payload(&self, id: &Id) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let found;
        {
            let mut t = tx.open_table(ENVELOPES)?;
            let current = match t.get(id.0)? {
                Some(v) => Some(self.decode(id, v.value())?),
                None => None,
            };
            found = current.is_some();
            if let Some(mut e) = current {
                e.erase();
                t.insert(id.0, e.encode().as_slice())?;
            }
        }
        tx.commit()?;
        Ok(found)
    }

    /// Stores named key material (replacing any previous value), durably.
    pub fn put_key(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(KEYS)?.insert(name, value)?;
        tx.commit()?;
        Ok(())
    }

    /// Reads named key material.
    pub fn get_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        Ok(t.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Full consistency check: every index entry points at a decodable envelope of its topic,
    /// every envelope is indexed, and topic cursors are dense.
    pub fn check(&self) -> Result<Consistency, StoreError> {
        let tx = self.db.begin_read()?;
        let envs = tx.open_table(ENVELOPES)?;
        let log = tx.open_table(TOPIC_LOG)?;
        let next = tx.open_table(TOPIC_NEXT)?;
        let seqs = tx.open_table(ENVELOPE_SEQ)?;
        let mut c = Consistency { envelopes: envs.len()?, topics: next.len()?, problems: vec![] };
        for item in envs.iter()? {
            let (k, v) = item?;
            let id = Id(k.value());
            match self.decode(&id, v.value()) {
                Err(e) => c.problems.push(e.to_string()),
                Ok(e) => match seqs.get(id.0)?.map(|s| s.value()) {
                    None => c.problems.push(format!("envelope {} is not indexed", id.short())),
                    Some((topic, seq)) => {
                        let logged = log.get((topic, seq))?.map(|v| v.value());
                        if topic != e.header.topic.0 || logged != Some(id.0) {
                            c.problems.push(format!("index of {} is wrong", id.short()));
                        }
                    }
                },
            }
        }
        for item in next.iter()? {
            let (k, v) = item?;
            let (topic, n) = (k.value(), v.value());
            let count = log.range((topic, 0)..=(topic, u64::MAX))?.count() as u64;
            if count != n {
                c.problems.push(format!("topic cursor says {n} entries, log has {count}"));
            }
        }
        if log.len()? != c.envelopes {
            c.problems.push(format!("{} log entries for {} envelopes", log.len()?, c.envelopes));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::envelope::pad;

    fn env(topic: u8, n: u64) -> Envelope {
        Envelope::new(Topic([topic; 32]), n, 60, vec![], pad(&n.to_be_bytes(), &Limits::default()).unwrap())
    }

    #[test]
    fn append_page_duplicate_erase_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = Store::open(&path, Limits::default()).unwrap();
            let batch: Vec<Envelope> = (0..25).map(|i| env(1, i)).chain([env(2, 0)]).collect();
            let out = s.append(&batch).unwrap();
            assert_eq!(out[24], Appended::Stored { seq: 24 });
            assert_eq!(out[25], Appended::Stored { seq: 0 });
            assert_eq!(s.append(&[env(1, 3)]).unwrap(), vec![Appended::Duplicate]);
            let p = s.page(&Topic([1; 32]), 0, 10).unwrap();
            assert_eq!(p.entries.len(), 10);
            assert_eq!(p.next, Some(10));
            let p = s.page(&Topic([1; 32]), 20, 10).unwrap();
            assert_eq!(p.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![20, 21, 22, 23, 24]);
            assert_eq!(p.next, None);
            assert!(s.erase_payload(&env(1, 5).id()).unwrap());
            assert!(s.page(&Topic([1; 32]), 0, 0).is_err());
            s.put_key("k", b"secret").unwrap();
        }
        let s = Store::open(&path, Limits::default()).unwrap();
        assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 25);
        let erased = s.get(&env(1, 5).id()).unwrap().unwrap();
        assert_eq!(erased.payload, None);
        assert_eq!(erased.id(), env(1, 5).id());
        assert_eq!(s.get_key("k").unwrap().as_deref(), Some(&b"secret"[..]));
        let c = s.check().unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!((c.envelopes, c.topics), (26, 2));
    }

    #[test]
    fn damaged_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb"), Limits::default()).unwrap();
        let e = env(1, 1);
        s.append(std::slice::from_ref(&e)).unwrap();
        // Overwrite the stored bytes with garbage behind the store's back.
        let tx = s.db.begin_write().unwrap();
        tx.open_table(ENVELOPES).unwrap().insert(e.id().0, &[1u8, 2, 3][..]).unwrap();
        tx.commit().unwrap();
        assert!(matches!(s.get(&e.id()), Err(StoreError::Corrupt { .. })));
        assert!(!s.check().unwrap().problems.is_empty());
    }
}
