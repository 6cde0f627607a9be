//! The node's own tables, in the same redb database as the MLS state (`node.redb`).
//!
//! - `plain`: envelope id → the decrypted inner [`Message`] (every conversation envelope this
//!   device could read, own ones included): what `verify` checks signatures against, since MLS
//!   ciphertexts cannot be decrypted twice.
//! - `messages`: (conversation id, seq) → envelope id, for text messages only, in the order
//!   this device accepted them (parents always first): the `tail` order.
//! - `by_id`: envelope id → (conversation id, seq, after_gap).
//! - `pending_devices`: devices of this account to add to every conversation.
//!
//! Every write is one redb transaction (durable on commit).

use std::sync::Arc;

use cairn_proto::{Id, Limits, Message};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::backend::ApiError;

const PLAIN: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_plain");
const MESSAGES: TableDefinition<'_, (&[u8; 32], u64), &[u8; 32]> = TableDefinition::new("node_messages");
const BY_ID: TableDefinition<'_, &[u8; 32], (&[u8; 32], u64, bool)> = TableDefinition::new("node_by_id");
const PENDING_DEVICES: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_pending_devices");

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("local database: {e}"))
}

/// Highest text-message seq of a conversation (0: none).
fn last_seq(
    messages: &impl ReadableTable<(&'static [u8; 32], u64), &'static [u8; 32]>,
    conv: &[u8; 32],
) -> Result<u64, ApiError> {
    Ok(messages
        .range((conv, 0)..=(conv, u64::MAX))
        .map_err(internal)?
        .next_back()
        .transpose()
        .map_err(internal)?
        .map(|(k, _)| k.value().1)
        .unwrap_or(0))
}

/// A stored text message.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) id: Id,
    pub(crate) message: Message,
    pub(crate) after_gap: bool,
}

/// The node's tables.
#[derive(Clone)]
pub(crate) struct NodeDb {
    db: Arc<Database>,
    limits: Limits,
}

impl NodeDb {
    pub(crate) fn new(db: Arc<Database>, limits: Limits) -> Result<Self, ApiError> {
        let tx = db.begin_write().map_err(internal)?;
        {
            tx.open_table(PLAIN).map_err(internal)?;
            tx.open_table(MESSAGES).map_err(internal)?;
            tx.open_table(BY_ID).map_err(internal)?;
            tx.open_table(PENDING_DEVICES).map_err(internal)?;
        }
        tx.commit().map_err(internal)?;
        Ok(Self { db, limits })
    }

    /// Whether this envelope was already accepted.
    pub(crate) fn has_plain(&self, id: &Id) -> Result<bool, ApiError> {
        let tx = self.db.begin_read().map_err(internal)?;
        let t = tx.open_table(PLAIN).map_err(internal)?;
        Ok(t.get(&id.0).map_err(internal)?.is_some())
    }

    /// The inner message of an envelope, if this device read (or wrote) it.
    pub(crate) fn plain(&self, id: &Id) -> Result<Option<Vec<u8>>, ApiError> {
        let tx = self.db.begin_read().map_err(internal)?;
        let t = tx.open_table(PLAIN).map_err(internal)?;
        Ok(t.get(&id.0).map_err(internal)?.map(|v| v.value().to_vec()))
    }

    /// Records an accepted envelope; `text` adds it to the conversation's message list.
    /// Returns the message seq (text) or 0. Idempotent.
    pub(crate) fn accept(
        &self,
        conv: &[u8; 32],
        id: &Id,
        inner: &Message,
        text: bool,
        after_gap: bool,
    ) -> Result<u64, ApiError> {
        let tx = self.db.begin_write().map_err(internal)?;
        let seq;
        {
            let mut plain = tx.open_table(PLAIN).map_err(internal)?;
            if let Some(prev) = tx.open_table(BY_ID).map_err(internal)?.get(&id.0).map_err(internal)? {
                return Ok(prev.value().1);
            }
            if plain.get(&id.0).map_err(internal)?.is_some() && !text {
                return Ok(0);
            }
            plain.insert(&id.0, inner.encode().as_slice()).map_err(internal)?;
            if text {
                let mut messages = tx.open_table(MESSAGES).map_err(internal)?;
                seq = last_seq(&messages, conv)? + 1;
                messages.insert((conv, seq), &id.0).map_err(internal)?;
                tx.open_table(BY_ID)
                    .map_err(internal)?
                    .insert(&id.0, (conv, seq, after_gap))
                    .map_err(internal)?;
            } else {
                seq = 0;
            }
        }
        tx.commit().map_err(internal)?;
        Ok(seq)
    }

    /// Text messages of a conversation after `after`, at most `limit`.
    pub(crate) fn messages(
        &self,
        conv: &[u8; 32],
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, ApiError> {
        let tx = self.db.begin_read().map_err(internal)?;
        let messages = tx.open_table(MESSAGES).map_err(internal)?;
        let plain = tx.open_table(PLAIN).map_err(internal)?;
        let by_id = tx.open_table(BY_ID).map_err(internal)?;
        let mut out = Vec::new();
        for row in messages.range((conv, after.saturating_add(1))..=(conv, u64::MAX)).map_err(internal)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(internal)?;
            let id = Id(*v.value());
            let Some(bytes) = plain.get(&id.0).map_err(internal)? else { continue };
            let message = Message::decode(bytes.value(), &self.limits).map_err(internal)?;
            let after_gap = by_id.get(&id.0).map_err(internal)?.map(|g| g.value().2).unwrap_or(false);
            out.push(Stored { seq: k.value().1, id, message, after_gap });
        }
        Ok(out)
    }

    /// Number of text messages of a conversation.
    pub(crate) fn count(&self, conv: &[u8; 32]) -> Result<u64, ApiError> {
        let tx = self.db.begin_read().map_err(internal)?;
        let messages = tx.open_table(MESSAGES).map_err(internal)?;
        last_seq(&messages, conv)
    }

    /// Devices waiting to be added to this account's conversations.
    pub(crate) fn pending_devices(&self) -> Result<Vec<[u8; 32]>, ApiError> {
        let tx = self.db.begin_read().map_err(internal)?;
        let t = tx.open_table(PENDING_DEVICES).map_err(internal)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(internal)? {
            out.push(*row.map_err(internal)?.0.value());
        }
        Ok(out)
    }

    /// Adds or removes a pending device.
    pub(crate) fn set_pending_device(
        &self,
        device: &[u8; 32],
        pending: bool,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let tx = self.db.begin_write().map_err(internal)?;
        {
            let mut t = tx.open_table(PENDING_DEVICES).map_err(internal)?;
            if pending {
                t.insert(device, now_ms).map_err(internal)?;
            } else {
                t.remove(device).map_err(internal)?;
            }
        }
        tx.commit().map_err(internal)
    }
}
