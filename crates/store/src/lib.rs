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
//! Tables (schema version 1):
//! - `envelopes`: id → encoded envelope
//! - `topic_log`: (topic, seq) → id; seq increases per topic (the cursor; gaps after eviction)
//! - `topic_next`: topic → next seq
//! - `envelope_meta`: id → (topic, seq, arrival seq, expires at ms)
//! - `arrival_log`: arrival seq → id (oldest-first eviction across topics)
//! - `expiry`: (expires at ms, id) → () (TTL expiry)
//! - `topic_count`: topic → envelopes currently stored
//! - `counters`: `next_arrival`, `evicted`, `expired`
//! - `keys`: name → bytes (key material, MLS state)
//! - `meta`: name → u64 (`schema_version`)

use std::path::Path;

use cairn_proto::{DecodeError, Envelope, Id, Limits, Topic};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use thiserror::Error;

const ENVELOPES: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("envelopes");
const TOPIC_LOG: TableDefinition<'_, ([u8; 32], u64), [u8; 32]> = TableDefinition::new("topic_log");
const TOPIC_NEXT: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_next");
/// id → (topic, topic seq, arrival seq, expires at ms).
const ENVELOPE_META: TableDefinition<'_, [u8; 32], ([u8; 32], u64, u64, u64)> =
    TableDefinition::new("envelope_meta");
const ARRIVAL_LOG: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("arrival_log");
const EXPIRY: TableDefinition<'_, (u64, [u8; 32]), ()> = TableDefinition::new("expiry");
const TOPIC_COUNT: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_count");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
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
            tx.open_table(ENVELOPES)?;
            tx.open_table(TOPIC_LOG)?;
            tx.open_table(TOPIC_NEXT)?;
            tx.open_table(ENVELOPE_META)?;
            tx.open_table(ARRIVAL_LOG)?;
            tx.open_table(EXPIRY)?;
            tx.open_table(TOPIC_COUNT)?;
            tx.open_table(COUNTERS)?;
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
        Ok(Self { db, limits, deferred: std::sync::atomic::AtomicBool::new(false) })
    }

    /// The underlying database, for components that keep their own typed tables
    /// (MLS state, ledger) in the same file and transactions.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a batch in one transaction and one fsync, with no quota. Returns once durable.
    pub fn append(&self, envelopes: &[Envelope]) -> Result<Vec<Appended>, StoreError> {
        Ok(self.append_with(envelopes, &Retention::unbounded(), 0)?.results)
    }

    /// Stores a batch in one transaction and one fsync, applying `retention`: an envelope
    /// expires at `timestamp + min(ttl, ttl_secs_max)`; when a topic or the whole store is at its
    /// quota, the oldest envelopes (of that topic, or overall) are evicted first and counted.
    pub fn append_with(
        &self,
        envelopes: &[Envelope],
        retention: &Retention,
        now_ms: u64,
    ) -> Result<AppendReport, StoreError> {
        let tx = self.db.begin_write()?;
        let report = Self::append_in(&tx, envelopes, retention, now_ms)?;
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
        let report = Self::append_in(&tx, envelopes, &Retention::unbounded(), 0)?;
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
        retention: &Retention,
        now_ms: u64,
    ) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport { results: Vec::with_capacity(envelopes.len()), evicted: 0 };
        {
            let mut t = Tables::open(tx)?;
            for e in envelopes {
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
                while t.topic_count(&topic)? >= retention.topic_envelopes_max {
                    let Some(oldest) = t.oldest_of_topic(&topic)? else { break };
                    t.delete(&oldest)?;
                    report.evicted += 1;
                }
                while t.envs.len()? >= retention.total_envelopes_max {
                    let Some(oldest) = t.oldest_overall()? else { break };
                    t.delete(&oldest)?;
                    report.evicted += 1;
                }
                let seq = t.next.get(topic)?.map(|v| v.value()).unwrap_or(0);
                let arrival = t.counter("next_arrival")?;
                t.envs.insert(id.0, e.encode().as_slice())?;
                t.log.insert((topic, seq), id.0)?;
                t.meta.insert(id.0, (topic, seq, arrival, expires))?;
                t.arrival.insert(arrival, id.0)?;
                t.expiry.insert((expires, id.0), ())?;
                t.next.insert(topic, seq + 1)?;
                let count = t.topic_count(&topic)?;
                t.count.insert(topic, count + 1)?;
                t.counters.insert("next_arrival", arrival + 1)?;
                report.results.push(Appended::Stored { seq });
            }
            if report.evicted > 0 {
                let ev = t.counter("evicted")?;
                t.counters.insert("evicted", ev + report.evicted)?;
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
        Ok(Stats { envelopes: envs.len()?, evicted: get("evicted")?, expired: get("expired")? })
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

    /// The cursor after the last envelope ever stored for `topic`.
    pub fn topic_len(&self, topic: &Topic) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOPIC_NEXT)?;
        Ok(t.get(topic.0)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Envelopes currently stored for `topic`.
    pub fn topic_count(&self, topic: &Topic) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TOPIC_COUNT)?;
        Ok(t.get(topic.0)?.map(|v| v.value()).unwrap_or(0))
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
    /// every envelope is indexed in every index, and per-topic counts agree.
    pub fn check(&self) -> Result<Consistency, StoreError> {
        let tx = self.db.begin_read()?;
        let envs = tx.open_table(ENVELOPES)?;
        let log = tx.open_table(TOPIC_LOG)?;
        let count = tx.open_table(TOPIC_COUNT)?;
        let meta = tx.open_table(ENVELOPE_META)?;
        let arrival = tx.open_table(ARRIVAL_LOG)?;
        let expiry = tx.open_table(EXPIRY)?;
        let mut c = Consistency { envelopes: envs.len()?, topics: 0, problems: vec![] };
        for item in envs.iter()? {
            let (k, v) = item?;
            let id = Id(k.value());
            match self.decode(&id, v.value()) {
                Err(e) => c.problems.push(e.to_string()),
                Ok(e) => match meta.get(id.0)?.map(|s| s.value()) {
                    None => c.problems.push(format!("envelope {} is not indexed", id.short())),
                    Some((topic, seq, arr, exp)) => {
                        let logged = log.get((topic, seq))?.map(|v| v.value());
                        let arrived = arrival.get(arr)?.map(|v| v.value());
                        let expiring = expiry.get((exp, id.0))?.is_some();
                        if topic != e.header.topic.0
                            || logged != Some(id.0)
                            || arrived != Some(id.0)
                            || !expiring
                        {
                            c.problems.push(format!("index of {} is wrong", id.short()));
                        }
                    }
                },
            }
        }
        for item in count.iter()? {
            let (k, v) = item?;
            let (topic, n) = (k.value(), v.value());
            if n > 0 {
                c.topics += 1;
            }
            let in_log = log.range((topic, 0)..=(topic, u64::MAX))?.count() as u64;
            if in_log != n {
                c.problems.push(format!("topic count says {n} entries, log has {in_log}"));
            }
        }
        for (name, len) in [
            ("topic log", log.len()?),
            ("arrival log", arrival.len()?),
            ("expiry", expiry.len()?),
            ("meta", meta.len()?),
        ] {
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
    /// Most envelopes kept per topic; the oldest of the topic is evicted first.
    pub topic_envelopes_max: u64,
    /// Most envelopes kept in all; the oldest overall is evicted first.
    pub total_envelopes_max: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { ttl_secs_max: 30 * 86_400, topic_envelopes_max: 100_000, total_envelopes_max: 2_000_000 }
    }
}

impl Retention {
    /// Keep everything, forever (a user's own history).
    pub fn unbounded() -> Self {
        Self { ttl_secs_max: u32::MAX, topic_envelopes_max: u64::MAX, total_envelopes_max: u64::MAX }
    }
}

/// Result of [`Store::append_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// One result per envelope given.
    pub results: Vec<Appended>,
    /// Envelopes evicted to make room (never silent: also added to the `evicted` counter).
    pub evicted: u64,
}

/// Store-wide figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Envelopes stored now.
    pub envelopes: u64,
    /// Envelopes evicted by quotas, ever.
    pub evicted: u64,
    /// Envelopes expired by TTL, ever.
    pub expired: u64,
}

struct Tables<'t> {
    envs: redb::Table<'t, [u8; 32], &'static [u8]>,
    log: redb::Table<'t, ([u8; 32], u64), [u8; 32]>,
    next: redb::Table<'t, [u8; 32], u64>,
    meta: redb::Table<'t, [u8; 32], ([u8; 32], u64, u64, u64)>,
    arrival: redb::Table<'t, u64, [u8; 32]>,
    expiry: redb::Table<'t, (u64, [u8; 32]), ()>,
    count: redb::Table<'t, [u8; 32], u64>,
    counters: redb::Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            envs: tx.open_table(ENVELOPES)?,
            log: tx.open_table(TOPIC_LOG)?,
            next: tx.open_table(TOPIC_NEXT)?,
            meta: tx.open_table(ENVELOPE_META)?,
            arrival: tx.open_table(ARRIVAL_LOG)?,
            expiry: tx.open_table(EXPIRY)?,
            count: tx.open_table(TOPIC_COUNT)?,
            counters: tx.open_table(COUNTERS)?,
        })
    }

    fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.counters.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    fn topic_count(&self, topic: &[u8; 32]) -> Result<u64, StoreError> {
        Ok(self.count.get(*topic)?.map(|v| v.value()).unwrap_or(0))
    }

    fn oldest_of_topic(&self, topic: &[u8; 32]) -> Result<Option<[u8; 32]>, StoreError> {
        let mut r = self.log.range((*topic, 0)..=(*topic, u64::MAX))?;
        Ok(r.next().transpose()?.map(|(_, v)| v.value()))
    }

    fn oldest_overall(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.arrival.first()?.map(|(_, v)| v.value()))
    }

    fn delete(&mut self, id: &[u8; 32]) -> Result<(), StoreError> {
        let Some((topic, seq, arrival, expires)) = self.meta.remove(*id)?.map(|v| v.value()) else {
            return Ok(());
        };
        self.envs.remove(*id)?;
        self.log.remove((topic, seq))?;
        self.arrival.remove(arrival)?;
        self.expiry.remove((expires, *id))?;
        let n = self.topic_count(&topic)?;
        self.count.insert(topic, n.saturating_sub(1))?;
        Ok(())
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
    fn deferred_commits_are_visible_at_once_and_durable_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.redb");
        {
            let s = Store::open(&path, Limits::default()).unwrap();
            assert!(!s.has_deferred());
            let keys = vec![("cursor/x".to_string(), 7u64.to_be_bytes().to_vec())];
            let out = s.append_deferred(&[env(1, 0), env(1, 1)], &keys).unwrap();
            assert_eq!(out, vec![Appended::Stored { seq: 0 }, Appended::Stored { seq: 1 }]);
            assert!(s.has_deferred());
            assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 2, "visible before any fsync");
            assert_eq!(s.append_deferred(&[env(1, 1)], &[]).unwrap(), vec![Appended::Duplicate]);
            s.sync().unwrap();
            assert!(!s.has_deferred());
            // A durable append also makes earlier deferred commits durable.
            s.append_deferred(&[env(2, 0)], &[]).unwrap();
            s.append(&[env(3, 0)]).unwrap();
            assert!(!s.has_deferred());
        }
        let s = Store::open(&path, Limits::default()).unwrap();
        assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 2);
        assert_eq!(s.topic_len(&Topic([2; 32])).unwrap(), 1);
        assert_eq!(s.get_key("cursor/x").unwrap(), Some(7u64.to_be_bytes().to_vec()));
        assert!(s.check().unwrap().problems.is_empty());
    }

    #[test]
    fn quotas_evict_oldest_first_and_count_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("q.redb"), Limits::default()).unwrap();
        let r = Retention { ttl_secs_max: 3600, topic_envelopes_max: 3, total_envelopes_max: 5 };
        let now = 10;
        let first: Vec<Envelope> = (0..4).map(|i| env(1, i)).collect();
        let rep = s.append_with(&first, &r, now).unwrap();
        assert_eq!(rep.evicted, 1);
        assert!(s.get(&env(1, 0).id()).unwrap().is_none(), "oldest of the topic goes first");
        assert_eq!(s.topic_count(&Topic([1; 32])).unwrap(), 3);
        let other: Vec<Envelope> = (0..3).map(|i| env(2, i)).collect();
        let rep = s.append_with(&other, &r, now).unwrap();
        assert_eq!(rep.evicted, 1, "total quota evicts the oldest overall");
        assert!(s.get(&env(1, 1).id()).unwrap().is_none());
        assert_eq!(s.stats().unwrap(), Stats { envelopes: 5, evicted: 2, expired: 0 });
        let p = s.page(&Topic([1; 32]), 0, 10).unwrap();
        assert_eq!(p.entries.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![2, 3]);
        assert!(s.check().unwrap().problems.is_empty());
    }

    #[test]
    fn ttl_expiry_deletes_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.redb"), Limits::default()).unwrap();
        let r = Retention::default();
        // env(_, n) has timestamp n ms and a 60 s TTL.
        s.append_with(&[env(1, 0), env(1, 30_000)], &r, 0).unwrap();
        assert_eq!(s.append_with(&[env(1, 1)], &r, 70_000).unwrap().results, vec![Appended::Expired]);
        assert_eq!(s.expire(60_000).unwrap(), 1);
        assert_eq!(s.expire(60_000).unwrap(), 0);
        assert_eq!(s.stats().unwrap().expired, 1);
        assert!(s.get(&env(1, 30_000).id()).unwrap().is_some());
        assert!(s.check().unwrap().problems.is_empty());
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
