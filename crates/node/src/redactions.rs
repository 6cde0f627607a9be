//! Redactions this device applied or is waiting to apply, in `node.redb`.
//!
//! Table `node_redactions`: target envelope id → (redaction envelope id, redacting account,
//! applied). An applied row is the tombstone of an erased message: `verify` and the views
//! report it as erased. A pending row names a target this device has not read yet (held for a
//! future epoch): the redaction is applied when, and if, the target is read and its author is
//! the redacting account.
//!
//! Table `node_erasure_log`: (conversation, n) → target id, n counting the conversation's
//! applied erasures from 1. A follower that was away (the Matrix bridge) reads the erasures
//! after its cursor (`GET …/erasures?after=n`) instead of having to watch the live stream. One
//! row per erased message, kept as long as the conversation's history; forgetting the
//! conversation deletes them.

use cairn_proto::{AccountId, Id};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

/// Value: (redaction id, redacting account, applied).
type RedactionValue = (&'static [u8; 32], &'static [u8; 32], bool);
const REDACTIONS: TableDefinition<'_, &[u8; 32], RedactionValue> = TableDefinition::new("node_redactions");
const ERASURE_LOG: TableDefinition<'_, (&[u8; 32], u64), &[u8; 32]> =
    TableDefinition::new("node_erasure_log");

/// Pending (not yet applied) redactions kept at most. Overflow policy: a redaction of an
/// unread target arriving while the table holds this many rows is dropped (a member would
/// have to send that many redactions of unknown messages, each a paid envelope); applied
/// tombstones are never evicted.
pub const PENDING_REDACTIONS_MAX: u64 = 10_000;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// One redaction row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedactionRow {
    /// The redaction envelope.
    pub redaction: Id,
    /// The account that sent it.
    pub by: AccountId,
    /// Whether the target was erased.
    pub applied: bool,
}

/// Creates the table (called from [`NodeDb::new`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(REDACTIONS).map_err(storage)?;
    tx.open_table(ERASURE_LOG).map_err(storage)?;
    Ok(())
}

impl NodeDb {
    /// The redaction row of `target`, if any.
    pub fn redaction(&self, target: &Id) -> Result<Option<RedactionRow>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(REDACTIONS).map_err(storage)?;
        Ok(t.get(&target.0).map_err(storage)?.map(|v| {
            let (r, by, applied) = v.value();
            RedactionRow { redaction: Id(*r), by: AccountId(*by), applied }
        }))
    }

    /// Whether a redaction waits for a target not read yet (applied tombstones do not count:
    /// the receive path looks redactions up only while one waits).
    pub fn has_pending_redactions(&self) -> Result<bool, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(REDACTIONS).map_err(storage)?;
        for row in t.iter().map_err(storage)? {
            if !row.map_err(storage)?.1.value().2 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a redaction of a target not read yet; false if the pending bound is reached or
    /// the target already has a row.
    pub fn redaction_pending(&self, target: &Id, row: RedactionRow) -> Result<bool, NodeError> {
        let tx = self.begin()?;
        let kept = {
            let mut t = tx.open_table(REDACTIONS).map_err(storage)?;
            if t.get(&target.0).map_err(storage)?.is_some()
                || t.len().map_err(storage)? >= PENDING_REDACTIONS_MAX
            {
                false
            } else {
                t.insert(&target.0, (&row.redaction.0, &row.by.0, false)).map_err(storage)?;
                true
            }
        };
        tx.commit().map_err(storage)?;
        Ok(kept)
    }

    /// Erases a read message of `conv` in one durable transaction: its plaintext goes, the
    /// tombstone row stays, and the erasure log of `conv` gets the next entry.
    pub fn redact(
        &self,
        conv: &[u8; 32],
        target: &Id,
        redaction: Id,
        by: AccountId,
    ) -> Result<(), NodeError> {
        let tx = self.begin()?;
        self.forget_plain_in(&tx, target)?;
        tx.open_table(REDACTIONS)
            .map_err(storage)?
            .insert(&target.0, (&redaction.0, &by.0, true))
            .map_err(storage)?;
        {
            let mut log = tx.open_table(ERASURE_LOG).map_err(storage)?;
            let last = log
                .range((conv, 0)..=(conv, u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value().1);
            log.insert((conv, last + 1), &target.0).map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }

    /// Up to `limit` erasures of `conv` after entry `after`, oldest first: (entry, target).
    pub fn erasures(&self, conv: &[u8; 32], after: u64, limit: usize) -> Result<Vec<(u64, Id)>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(ERASURE_LOG).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.range((conv, after.saturating_add(1))..=(conv, u64::MAX)).map_err(storage)?.take(limit) {
            let (k, v) = row.map_err(storage)?;
            out.push((k.value().1, Id(*v.value())));
        }
        Ok(out)
    }

    /// Deletes a conversation's erasure log, in `tx`.
    pub(crate) fn erasures_forget_in(&self, tx: &WriteTransaction, conv: &[u8; 32]) -> Result<(), NodeError> {
        let mut t = tx.open_table(ERASURE_LOG).map_err(storage)?;
        let keys: Vec<u64> = t
            .range((conv, 0)..=(conv, u64::MAX))
            .map_err(storage)?
            .filter_map(Result::ok)
            .map(|(k, _)| k.value().1)
            .collect();
        for n in keys {
            t.remove((conv, n)).map_err(storage)?;
        }
        Ok(())
    }
}
