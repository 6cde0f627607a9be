//! Cairn's durable store on redb: envelopes by id and by topic (with an ordered cursor), and
//! named key material.
//!
//! Every acknowledged write is one ACID transaction committed with `Durability::Immediate`
//! (fsync); [`Store::append`] takes a batch so callers can group-commit many envelopes with one
//! fsync. The one exception is [`Store::append_deferred`], for copies that can be fetched again
//! (a user node's local history of what the mesh delivered): its commits are atomic and visible
//! at once, made durable by the next durable commit or [`Store::sync`], and a crash before that
//! rolls the file back to a consistent earlier state. Values read back from disk are decoded with the same bounded decoders as
//! network input: a damaged file gives an error, never a panic.
//!
//! Tables (schema version 2):
//! - `envelopes`: id → encoded envelope
//! - `topic_log`: (topic, seq) → id; seq increases per topic (the cursor; gaps after deletion)
//! - `envelope_meta_v2`: id → (topic, seq, expires at ms, source if any)
//! - `expiry`: (expires at ms, id) → () (TTL expiry)
//! - `topic_stats`: topic → (next seq, envelopes stored, bytes stored)
//! - `source_bytes`: source → bytes stored
//! - `counters`: `refused_full`, `expired`, `bytes`
//! - `keys`: name → bytes (key material, MLS state)
//! - `meta`: name → u64 (`schema_version`)
//!
//! Version 2 writes 6 tables per stored envelope (7 with a source), version 1 wrote 10 (11):
//! a topic's three counters were three tables, an envelope's source a third table keyed by
//! its random id, and an arrival log kept for an eviction that no longer exists. Each table
//! an envelope touches costs a commit its copied root-to-leaf pages. A version 1 file is
//! migrated when opened, in one transaction ([`migrate`]).

use std::path::Path;

use cairn_proto::{DecodeError, Envelope, Id, Limits, Topic};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

mod migrate;
mod tables;

use tables::Tables;

const ENVELOPES: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("envelopes");
const TOPIC_LOG: TableDefinition<'_, ([u8; 32], u64), [u8; 32]> = TableDefinition::new("topic_log");
/// An envelope's record: (topic, seq, expires at ms, source).
type MetaRecord = ([u8; 32], u64, u64, Option<[u8; 32]>);
/// id → its record.
const ENVELOPE_META: TableDefinition<'_, [u8; 32], MetaRecord> = TableDefinition::new("envelope_meta_v2");
const EXPIRY: TableDefinition<'_, (u64, [u8; 32]), ()> = TableDefinition::new("expiry");
/// topic → (next seq, envelopes stored, bytes stored).
const TOPIC_STATS: TableDefinition<'_, [u8; 32], (u64, u64, u64)> = TableDefinition::new("topic_stats");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
/// Bytes stored per source (the peer that offered them), for its quota.
const SOURCE_BYTES: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("source_bytes");
const KEYS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("keys");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 2;
/// Largest page a history query returns.
pub const PAGE_ENVELOPES_MAX: usize = 1000;
/// Largest page of ids [`Store::ids_page`] returns (32 bytes and a cursor each).
pub const IDS_PAGE_MAX: usize = 4096;

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
    redb::CommitError,
    redb::SetDurabilityError
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
    /// Already past its retention time; not stored.
    Expired,
    /// Refused: storing it would exceed this quota (nothing stored is ever evicted for it).
    Full(Quota),
}

/// Which byte quota refused an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// The topic's bytes.
    Topic,
    /// The bytes offered by one source (a peer).
    Source,
    /// The whole store's bytes.
    Total,
}

/// Who offered an envelope, for the per-source quota (a store node uses a hash of the peer id).
pub type Source = [u8; 32];

/// One page of a topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// `(seq, envelope)` in topic order.
    pub entries: Vec<(u64, Envelope)>,
    /// Cursor to pass for the next page; `None` when the topic has no more entries.
    pub next: Option<u64>,
}

/// One page of a topic's ids ([`Store::ids_page`]): `(cursor, id)` in topic order, and the
/// cursor of the next page (`None` when the topic has no more entries).
pub type IdsPage = (Vec<(u64, Id)>, Option<u64>);

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
    /// A deferred commit is not durable yet.
    deferred: std::sync::atomic::AtomicBool,
}

/// Page cache of a store opened with [`Store::open`], bytes.
pub const CACHE_BYTES_DEFAULT: usize = 8 * 1024 * 1024;

impl Store {
    /// Opens or creates the store file with the default page cache
    /// ([`CACHE_BYTES_DEFAULT`]), creating tables and checking the schema version.
    pub fn open(path: &Path, limits: Limits) -> Result<Self, StoreError> {
        Self::open_with_cache(path, limits, CACHE_BYTES_DEFAULT)
    }

    /// Opens or creates the store file with a page cache of at most `cache_bytes` (redb's
    /// default, 1 GiB, let a user node's memory grow with its history).
    pub fn open_with_cache(path: &Path, limits: Limits, cache_bytes: usize) -> Result<Self, StoreError> {
        let db = redb::Builder::new().set_cache_size(cache_bytes).create(path)?;
        let tx = db.begin_write()?;
        {
            let found = tx.open_table(META)?.get("schema_version")?.map(|v| v.value());
            match found {
                None | Some(SCHEMA_VERSION) => {}
                Some(1) => migrate::v1_to_v2(&tx)?,
                Some(found) => return Err(StoreError::Schema { found }),
            }
            tx.open_table(ENVELOPES)?;
            tx.open_table(TOPIC_LOG)?;
            tx.open_table(ENVELOPE_META)?;
            tx.open_table(EXPIRY)?;
            tx.open_table(TOPIC_STATS)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(SOURCE_BYTES)?;
            tx.open_table(KEYS)?;
            if found != Some(SCHEMA_VERSION) {
                tx.open_table(META)?.insert("schema_version", SCHEMA_VERSION)?;
            }
        }
        tx.commit()?;
        Ok(Self { db, limits, deferred: std::sync::atomic::AtomicBool::new(false) })
    }

    /// The underlying database, for components that keep their own typed tables
    /// (MLS state, ledger) in the same file and transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a batch in one transaction and one fsync, with no quota. Returns once durable.
    pub fn append(&self, envelopes: &[Envelope]) -> Result<Vec<Appended>, StoreError> {
        Ok(self.append_with(envelopes, &[], &Retention::unbounded(), 0)?.results)
    }

    /// Stores a batch in one transaction and one fsync, applying `retention`: an envelope
    /// expires at `timestamp + min(ttl, ttl_secs_max)`; one that would take its topic, its
    /// source (`sources[i]`, when `sources` is not empty) or the store above a byte quota is
    /// refused ([`Appended::Full`]): unexpired mail is never evicted to make room.
    pub fn append_with(
        &self,
        envelopes: &[Envelope],
        sources: &[Source],
        retention: &Retention,
        now_ms: u64,
    ) -> Result<AppendReport, StoreError> {
        if !sources.is_empty() && sources.len() != envelopes.len() {
            return Err(StoreError::Limit("one source per envelope, or none".into()));
        }
        let tx = self.db.begin_write()?;
        let report = Self::append_in(&tx, envelopes, sources, retention, now_ms)?;
        tx.commit()?;
        self.deferred.store(false, std::sync::atomic::Ordering::Release);
        Ok(report)
    }

    /// Stores a batch and named values in one atomic transaction that is not flushed to disk
    /// (redb `Durability::None`): visible at once, durable at the next durable commit of this
    /// store or [`Store::sync`]. Only for what can be fetched again after a crash rolls it back.
    pub fn append_deferred(
        &self,
        envelopes: &[Envelope],
        keys: &[(String, Vec<u8>)],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::None)?;
        let report = Self::append_in(&tx, envelopes, &[], &Retention::unbounded(), 0)?;
        {
            let mut t = tx.open_table(KEYS)?;
            for (name, value) in keys {
                t.insert(name.as_str(), value.as_slice())?;
            }
        }
        tx.commit()?;
        self.deferred.store(true, std::sync::atomic::Ordering::Release);
        Ok(report.results)
    }

    /// Whether a deferred commit is not durable yet.
    pub fn has_deferred(&self) -> bool {
        self.deferred.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes every deferred commit durable (one fsync; nothing to do when none is pending).
    pub fn sync(&self) -> Result<(), StoreError> {
        if !self.has_deferred() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        // Cleared under the write lock: a deferred commit after this one sets it again.
        self.deferred.store(false, std::sync::atomic::Ordering::Release);
        tx.commit()?;
        Ok(())
    }

    fn append_in(
        tx: &redb::WriteTransaction,
        envelopes: &[Envelope],
        sources: &[Source],
        retention: &Retention,
        now_ms: u64,
    ) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport { results: Vec::with_capacity(envelopes.len()), refused_full: 0 };
        {
            let mut t = Tables::open(tx)?;
            for (i, e) in envelopes.iter().enumerate() {
                let id = e.id();
                if t.envs.get(id.0)?.is_some() {
                    report.results.push(Appended::Duplicate);
                    continue;
                }
                let ttl_ms = u64::from(e.header.ttl_secs.min(retention.ttl_secs_max)) * 1000;
                let expires = e.header.timestamp_ms.saturating_add(ttl_ms);
                if retention.ttl_secs_max != u32::MAX && expires <= now_ms {
                    report.results.push(Appended::Expired);
                    continue;
                }
                let topic = e.header.topic.0;
                let bytes = e.encode();
                let len = bytes.len() as u64;
                let source = sources.get(i).copied();
                let (seq, count, topic_bytes) = t.topic_stats(&topic)?;
                if let Some(q) = t.over_quota(topic_bytes, source.as_ref(), len, retention)? {
                    report.results.push(Appended::Full(q));
                    report.refused_full += 1;
                    continue;
                }
                t.add_bytes(source.as_ref(), len)?;
                t.stats.insert(topic, (seq + 1, count + 1, topic_bytes.saturating_add(len)))?;
                t.envs.insert(id.0, bytes.as_slice())?;
                t.log.insert((topic, seq), id.0)?;
                t.meta.insert(id.0, (topic, seq, expires, source))?;
                t.expiry.insert((expires, id.0), ())?;
                report.results.push(Appended::Stored { seq });
            }
            if report.refused_full > 0 {
                let n = t.counter("refused_full")?;
                t.counters.insert("refused_full", n + report.refused_full)?;
            }
        }
        Ok(report)
    }

    /// Deletes every envelope whose expiry is at or before `now_ms`; returns how many.
    pub fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut t = Tables::open(&tx)?;
            let due: Vec<[u8; 32]> = t
                .expiry
                .range((0, [0u8; 32])..=(now_ms, [0xff; 32]))?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for id in due {
                t.delete(&id)?;
                n += 1;
            }
            if n > 0 {
                let ex = t.counter("expired")?;
                t.counters.insert("expired", ex + n)?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Store-wide figures for metrics.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let tx = self.db.begin_read()?;
        let envs = tx.open_table(ENVELOPES)?;
        let counters = tx.open_table(COUNTERS)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(counters.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        Ok(Stats {
            envelopes: envs.len()?,
            bytes: get("bytes")?,
            refused_full: get("refused_full")?,
            expired: get("expired")?,
        })
    }

    /// Whether an envelope with this id is stored (nothing is decoded).
    pub fn contains(&self, id: &Id) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(ENVELOPES)?.get(id.0)?.is_some())
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
        self.page_within(topic, from, limit, usize::MAX, 0)
    }

    /// As [`Store::page`], and at most `bytes_max` bytes of stored envelopes (each counted with
    /// `overhead` more): reading stops before the envelope that would pass it, and the cursor
    /// resumes there. At least one entry is returned when the budget holds one.
    pub fn page_within(
        &self,
        topic: &Topic,
        from: u64,
        limit: usize,
        bytes_max: usize,
        overhead: usize,
    ) -> Result<Page, StoreError> {
        if limit == 0 || limit > PAGE_ENVELOPES_MAX {
            return Err(StoreError::Limit(format!("page size must be 1..={PAGE_ENVELOPES_MAX}")));
        }
        let tx = self.db.begin_read()?;
        let log = tx.open_table(TOPIC_LOG)?;
        let envs = tx.open_table(ENVELOPES)?;
        let mut entries = Vec::with_capacity(limit.min(64));
        let mut next = None;
        let mut budget = bytes_max;
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
            // The length is known from the table before the value is decoded.
            let cost = bytes.value().len().saturating_add(overhead);
            if cost > budget {
                next = Some(seq);
                break;
            }
            budget -= cost;
            entries.push((seq, self.decode(&id, bytes.value())?));
        }
        Ok(Page { entries, next })
    }

    /// The ids of `topic`'s envelopes from cursor `from` (inclusive), at most `limit`, with
    /// their cursors, and the cursor of the next one (`None`: no more). Reads the topic log
    /// only: no envelope is read or decoded.
    pub fn ids_page(&self, topic: &Topic, from: u64, limit: usize) -> Result<IdsPage, StoreError> {
        if limit == 0 || limit > IDS_PAGE_MAX {
            return Err(StoreError::Limit(format!("id page size must be 1..={IDS_PAGE_MAX}")));
        }
        let tx = self.db.begin_read()?;
        let log = tx.open_table(TOPIC_LOG)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in log.range((topic.0, from)..=(topic.0, u64::MAX))? {
            let (k, v) = item?;
            let (_, seq) = k.value();
            if out.len() == limit {
                return Ok((out, Some(seq)));
            }
            out.push((seq, Id(v.value())));
        }
        Ok((out, None))
    }

    /// The cursor after the last envelope ever stored for `topic`.
    pub fn topic_len(&self, topic: &Topic) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOPIC_STATS)?;
        Ok(t.get(topic.0)?.map(|v| v.value().0).unwrap_or(0))
    }

    /// Envelopes currently stored for `topic`.
    pub fn topic_count(&self, topic: &Topic) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOPIC_STATS)?;
        Ok(t.get(topic.0)?.map(|v| v.value().1).unwrap_or(0))
    }

    /// Deletes these envelopes (junk a reader refused) in one transaction; returns how many
    /// were present. Their ids leave the topic log too.
    pub fn remove(&self, ids: &[Id]) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut t = Tables::open(&tx)?;
            for id in ids {
                if t.envs.get(id.0)?.is_some() {
                    t.delete(&id.0)?;
                    n += 1;
                }
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Erases an envelope's payload in place (id and links stay). Returns false if unknown.
    /// The erased envelope stays as a tombstone [`TOMBSTONE_GRACE_MS`] past its own expiry,
    /// so a copy pushed again before it expires is a duplicate and cannot bring the payload
    /// back (after that, the copy itself is refused as expired).
    pub fn erase_payload(&self, id: &Id) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let found;
        {
            let mut t = Tables::open(&tx)?;
            let current = match t.envs.get(id.0)? {
                Some(v) => Some((self.decode(id, v.value())?, v.value().len() as u64)),
                None => None,
            };
            found = current.is_some();
            if let Some((mut e, old_len)) = current
                && e.payload.is_some()
            {
                e.erase();
                let bytes = e.encode();
                t.envs.insert(id.0, bytes.as_slice())?;
                // The freed bytes leave the quotas of its topic and source.
                let meta = t.meta.get(id.0)?.map(|v| v.value());
                let source = meta.and_then(|m| m.3);
                t.sub_bytes(
                    &e.header.topic.0,
                    source.as_ref(),
                    old_len.saturating_sub(bytes.len() as u64),
                    0,
                )?;
                if let Some((topic, seq, expires, source)) = meta {
                    let later = expires.saturating_add(TOMBSTONE_GRACE_MS);
                    t.expiry.remove((expires, id.0))?;
                    t.expiry.insert((later, id.0), ())?;
                    t.meta.insert(id.0, (topic, seq, later, source))?;
                }
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

    /// Named values whose name starts with `prefix`, in name order, at most `limit`.
    pub fn keys_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        let mut out = Vec::new();
        for item in t.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Reads named key material.
    pub fn get_key(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        Ok(t.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Full consistency check: every index entry points at a decodable envelope of its topic,
    /// every envelope is indexed in every index, and per-topic counts agree.
    pub fn check(&self) -> Result<Consistency, StoreError> {
        let tx = self.db.begin_read()?;
        let envs = tx.open_table(ENVELOPES)?;
        let log = tx.open_table(TOPIC_LOG)?;
        let stats = tx.open_table(TOPIC_STATS)?;
        let meta = tx.open_table(ENVELOPE_META)?;
        let expiry = tx.open_table(EXPIRY)?;
        let mut c = Consistency { envelopes: envs.len()?, topics: 0, problems: vec![] };
        let mut bytes_by_topic: std::collections::HashMap<[u8; 32], u64> = std::collections::HashMap::new();
        let mut bytes_total = 0u64;
        for item in envs.iter()? {
            let (k, v) = item?;
            let id = Id(k.value());
            bytes_total += v.value().len() as u64;
            match self.decode(&id, v.value()) {
                Err(e) => c.problems.push(e.to_string()),
                Ok(e) => match meta.get(id.0)?.map(|s| s.value()) {
                    None => c.problems.push(format!("envelope {} is not indexed", id.short())),
                    Some((topic, seq, exp, _)) => {
                        let logged = log.get((topic, seq))?.map(|v| v.value());
                        let expiring = expiry.get((exp, id.0))?.is_some();
                        *bytes_by_topic.entry(topic).or_default() += v.value().len() as u64;
                        if topic != e.header.topic.0 || logged != Some(id.0) || !expiring {
                            c.problems.push(format!("index of {} is wrong", id.short()));
                        }
                    }
                },
            }
        }
        for item in stats.iter()? {
            let (k, v) = item?;
            let (topic, (_, n, bytes)) = (k.value(), v.value());
            if n > 0 {
                c.topics += 1;
            }
            let in_log = log.range((topic, 0)..=(topic, u64::MAX))?.count() as u64;
            if in_log != n {
                c.problems.push(format!("topic count says {n} entries, log has {in_log}"));
            }
            let held = bytes_by_topic.remove(&topic).unwrap_or(0);
            if held != bytes {
                c.problems.push(format!("topic byte count says {bytes}, its envelopes hold {held}"));
            }
        }
        let counters = tx.open_table(COUNTERS)?;
        let counted = counters.get("bytes")?.map(|v| v.value()).unwrap_or(0);
        if counted != bytes_total {
            c.problems.push(format!("byte count says {counted}, envelopes hold {bytes_total}"));
        }
        if !bytes_by_topic.is_empty() {
            c.problems.push(format!("{} topics hold bytes that are not counted", bytes_by_topic.len()));
        }
        for (name, len) in [("topic log", log.len()?), ("expiry", expiry.len()?), ("meta", meta.len()?)] {
            if len != c.envelopes {
                c.problems.push(format!("{len} {name} entries for {} envelopes", c.envelopes));
            }
        }
        Ok(c)
    }
}

/// How long and how much a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Longest time an envelope is kept, whatever its TTL says, in seconds (default 30 days).
    pub ttl_secs_max: u32,
    /// Bytes kept per topic (encoded envelopes), at most; beyond it new envelopes are refused.
    pub topic_bytes_max: u64,
    /// Bytes kept per source (what one peer offered), at most; beyond it its envelopes are
    /// refused, so one peer cannot fill the store for everyone.
    pub source_bytes_max: u64,
    /// Bytes kept in all, at most; beyond it new envelopes are refused.
    pub total_bytes_max: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            ttl_secs_max: 30 * 86_400,
            topic_bytes_max: 64 * 1024 * 1024,
            source_bytes_max: 256 * 1024 * 1024,
            total_bytes_max: 4 * 1024 * 1024 * 1024,
        }
    }
}

impl Retention {
    /// Keep everything, forever (a user's own history).
    pub fn unbounded() -> Self {
        Self {
            ttl_secs_max: u32::MAX,
            topic_bytes_max: u64::MAX,
            source_bytes_max: u64::MAX,
            total_bytes_max: u64::MAX,
        }
    }
}

/// Result of [`Store::append_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// One result per envelope given.
    pub results: Vec<Appended>,
    /// Envelopes refused by a byte quota (also added to the `refused_full` counter).
    pub refused_full: u64,
}

/// Store-wide figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Envelopes stored now.
    pub envelopes: u64,
    /// Bytes of the envelopes stored now.
    pub bytes: u64,
    /// Envelopes refused by a byte quota, ever.
    pub refused_full: u64,
    /// Envelopes expired by TTL, ever.
    pub expired: u64,
}

/// How long an erased envelope outlives its own expiry, ms (one day: longer than any clock
/// skew a store admits).
pub const TOMBSTONE_GRACE_MS: u64 = 24 * 3600 * 1000;

#[cfg(test)]
mod tests;
