//! Schema migration: a version 1 file is rewritten to version 2 in the transaction that opens
//! it (all or nothing: a crash during it leaves the version 1 file as it was).

use redb::ReadableTable;

use crate::{COUNTERS, ENVELOPE_META, StoreError, TOPIC_STATS};

/// Version 1 tables that version 2 folds into others or drops.
pub(crate) mod v1 {
    use redb::TableDefinition;

    /// topic → next seq.
    pub(crate) const TOPIC_NEXT: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_next");
    /// topic → envelopes stored.
    pub(crate) const TOPIC_COUNT: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_count");
    /// topic → bytes stored.
    pub(crate) const TOPIC_BYTES: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("topic_bytes");
    /// id → (topic, seq, arrival seq, expires at ms).
    pub(crate) const ENVELOPE_META: TableDefinition<'_, [u8; 32], ([u8; 32], u64, u64, u64)> =
        TableDefinition::new("envelope_meta");
    /// id → source.
    pub(crate) const SOURCE_OF: TableDefinition<'_, [u8; 32], [u8; 32]> = TableDefinition::new("source_of");
    /// arrival seq → id (kept for an oldest-first eviction that no longer exists).
    pub(crate) const ARRIVAL_LOG: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("arrival_log");
}

/// Folds a topic's three counters into `topic_stats` and an envelope's source into its meta
/// record, and drops the arrival log. The caller records the new version in the same
/// transaction.
pub(crate) fn v1_to_v2(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    {
        let next = tx.open_table(v1::TOPIC_NEXT)?;
        let count = tx.open_table(v1::TOPIC_COUNT)?;
        let bytes = tx.open_table(v1::TOPIC_BYTES)?;
        let mut stats = tx.open_table(TOPIC_STATS)?;
        let get = |t: &redb::Table<'_, [u8; 32], u64>, k: [u8; 32]| -> Result<u64, StoreError> {
            Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0))
        };
        // Every topic with a seq is in `topic_next`; counts and bytes of others would be zero.
        for item in next.iter()? {
            let (k, v) = item?;
            let topic = k.value();
            stats.insert(topic, (v.value(), get(&count, topic)?, get(&bytes, topic)?))?;
        }
        let old = tx.open_table(v1::ENVELOPE_META)?;
        let source_of = tx.open_table(v1::SOURCE_OF)?;
        let mut meta = tx.open_table(ENVELOPE_META)?;
        for item in old.iter()? {
            let (k, v) = item?;
            let (topic, seq, _arrival, expires) = v.value();
            let source = source_of.get(k.value())?.map(|s| s.value());
            meta.insert(k.value(), (topic, seq, expires, source))?;
        }
        tx.open_table(COUNTERS)?.remove("next_arrival")?;
    }
    tx.delete_table(v1::TOPIC_NEXT)?;
    tx.delete_table(v1::TOPIC_COUNT)?;
    tx.delete_table(v1::TOPIC_BYTES)?;
    tx.delete_table(v1::ENVELOPE_META)?;
    tx.delete_table(v1::SOURCE_OF)?;
    tx.delete_table(v1::ARRIVAL_LOG)?;
    Ok(())
}
