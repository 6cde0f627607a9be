//! The store's tables opened in one write transaction, and the bookkeeping that keeps them
//! consistent (byte quotas, topic counters, deletion from every index).

use redb::ReadableTable;

use crate::{
    COUNTERS, ENVELOPE_META, ENVELOPES, EXPIRY, MetaRecord, Quota, Retention, SOURCE_BYTES, Source,
    StoreError, TOPIC_LOG, TOPIC_STATS,
};

/// Every envelope table of one write transaction.
pub(crate) struct Tables<'t> {
    pub(crate) envs: redb::Table<'t, [u8; 32], &'static [u8]>,
    pub(crate) log: redb::Table<'t, ([u8; 32], u64), [u8; 32]>,
    pub(crate) meta: redb::Table<'t, [u8; 32], MetaRecord>,
    pub(crate) expiry: redb::Table<'t, (u64, [u8; 32]), ()>,
    pub(crate) stats: redb::Table<'t, [u8; 32], (u64, u64, u64)>,
    pub(crate) counters: redb::Table<'t, &'static str, u64>,
    source_bytes: redb::Table<'t, [u8; 32], u64>,
}

impl<'t> Tables<'t> {
    pub(crate) fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            envs: tx.open_table(ENVELOPES)?,
            log: tx.open_table(TOPIC_LOG)?,
            meta: tx.open_table(ENVELOPE_META)?,
            expiry: tx.open_table(EXPIRY)?,
            stats: tx.open_table(TOPIC_STATS)?,
            counters: tx.open_table(COUNTERS)?,
            source_bytes: tx.open_table(SOURCE_BYTES)?,
        })
    }

    /// `(next seq, envelopes stored, bytes stored)` of a topic; zeros for an unknown one.
    pub(crate) fn topic_stats(&self, topic: &[u8; 32]) -> Result<(u64, u64, u64), StoreError> {
        Ok(self.stats.get(*topic)?.map(|v| v.value()).unwrap_or((0, 0, 0)))
    }

    fn source_bytes_of(&self, source: &Source) -> Result<u64, StoreError> {
        Ok(self.source_bytes.get(*source)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The quota `len` more bytes would exceed, if any (`topic_bytes`: what its topic holds).
    pub(crate) fn over_quota(
        &self,
        topic_bytes: u64,
        source: Option<&Source>,
        len: u64,
        r: &Retention,
    ) -> Result<Option<Quota>, StoreError> {
        if self.counter("bytes")?.saturating_add(len) > r.total_bytes_max {
            return Ok(Some(Quota::Total));
        }
        if topic_bytes.saturating_add(len) > r.topic_bytes_max {
            return Ok(Some(Quota::Topic));
        }
        if let Some(s) = source
            && self.source_bytes_of(s)?.saturating_add(len) > r.source_bytes_max
        {
            return Ok(Some(Quota::Source));
        }
        Ok(None)
    }

    /// Counts `len` more bytes in the store's and the source's totals (the topic's are in its
    /// stats, written by the caller with its other counters).
    pub(crate) fn add_bytes(&mut self, source: Option<&Source>, len: u64) -> Result<(), StoreError> {
        let total = self.counter("bytes")?;
        self.counters.insert("bytes", total.saturating_add(len))?;
        if let Some(s) = source {
            let b = self.source_bytes_of(s)?;
            self.source_bytes.insert(*s, b.saturating_add(len))?;
        }
        Ok(())
    }

    /// Counts `len` bytes fewer in the store's, the topic's and the source's totals, and
    /// `removed` envelopes fewer in the topic's count.
    pub(crate) fn sub_bytes(
        &mut self,
        topic: &[u8; 32],
        source: Option<&Source>,
        len: u64,
        removed: u64,
    ) -> Result<(), StoreError> {
        let total = self.counter("bytes")?;
        self.counters.insert("bytes", total.saturating_sub(len))?;
        let (next, count, bytes) = self.topic_stats(topic)?;
        self.stats.insert(*topic, (next, count.saturating_sub(removed), bytes.saturating_sub(len)))?;
        if let Some(s) = source {
            let b = self.source_bytes_of(s)?.saturating_sub(len);
            if b == 0 {
                self.source_bytes.remove(*s)?;
            } else {
                self.source_bytes.insert(*s, b)?;
            }
        }
        Ok(())
    }

    pub(crate) fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.counters.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Removes an envelope from every table and its bytes from every count. The topic keeps
    /// its next seq (a cursor never goes back).
    pub(crate) fn delete(&mut self, id: &[u8; 32]) -> Result<(), StoreError> {
        let Some((topic, seq, expires, source)) = self.meta.remove(*id)?.map(|v| v.value()) else {
            return Ok(());
        };
        let len = self.envs.remove(*id)?.map(|v| v.value().len() as u64).unwrap_or(0);
        self.sub_bytes(&topic, source.as_ref(), len, 1)?;
        self.log.remove((topic, seq))?;
        self.expiry.remove((expires, *id))?;
        Ok(())
    }
}
