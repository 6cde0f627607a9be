//! Idempotency keys of sends, in `node.redb`.
//!
//! A caller that may retry a send after a crash or a lost answer (the Matrix bridge, a script)
//! names the send with a key of its own (`Idempotency-Key` on `POST …/messages`). The key is
//! recorded in the same transaction as the message, so a retry with the same key in the same
//! conversation returns the message already sent instead of sending it again: exactly once,
//! whatever the crash point.
//!
//! Table `node_idempotency`: (conversation, BLAKE3 of the key) → envelope id. One row per keyed
//! message, kept as long as the conversation's history (a retry days later still finds it);
//! forgetting the conversation deletes its rows.

use cairn_proto::Id;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const IDEMPOTENCY: TableDefinition<'_, (&[u8; 32], &[u8; 32]), &[u8; 32]> =
    TableDefinition::new("node_idempotency");

/// Longest idempotency key, bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// A checked idempotency key, kept as its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey([u8; 32]);

impl IdempotencyKey {
    /// Checks a caller's key: 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes of visible ASCII (as
    /// an HTTP header value carries it).
    pub fn parse(key: &str) -> Result<Self, NodeError> {
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(NodeError::BadRequest(format!(
                "the idempotency key is {} bytes; give 1 to {IDEMPOTENCY_KEY_BYTES_MAX}",
                key.len()
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(NodeError::BadRequest(
                "the idempotency key must be visible ASCII characters without spaces".into(),
            ));
        }
        Ok(Self(blake3::derive_key("cairn 2026-12 idempotency key v1", key.as_bytes())))
    }
}

/// Creates the table (called from [`NodeDb::new`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(IDEMPOTENCY).map_err(storage)?;
    Ok(())
}

impl NodeDb {
    /// The message sent earlier in `conv` under `key`, if any.
    pub fn idempotent_send(&self, conv: &[u8; 32], key: &IdempotencyKey) -> Result<Option<Id>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(IDEMPOTENCY).map_err(storage)?;
        Ok(t.get((conv, &key.0)).map_err(storage)?.map(|v| Id(*v.value())))
    }

    /// Records that `key` sent `id` in `conv`, in `tx` (the message's own transaction).
    pub(crate) fn idempotent_put_in(
        &self,
        tx: &WriteTransaction,
        conv: &[u8; 32],
        key: &IdempotencyKey,
        id: &Id,
    ) -> Result<(), NodeError> {
        tx.open_table(IDEMPOTENCY).map_err(storage)?.insert((conv, &key.0), &id.0).map_err(storage)?;
        Ok(())
    }

    /// Deletes a conversation's keys, in `tx`.
    pub(crate) fn idempotent_forget_in(
        &self,
        tx: &WriteTransaction,
        conv: &[u8; 32],
    ) -> Result<(), NodeError> {
        let mut t = tx.open_table(IDEMPOTENCY).map_err(storage)?;
        let keys: Vec<[u8; 32]> = t
            .range((conv, &[0u8; 32])..=(conv, &[0xffu8; 32]))
            .map_err(storage)?
            .filter_map(Result::ok)
            .map(|(k, _)| *k.value().1)
            .collect();
        for k in keys {
            t.remove((conv, &k)).map_err(storage)?;
        }
        Ok(())
    }
}
