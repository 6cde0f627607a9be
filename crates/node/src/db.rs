//! The node's own tables, in the same redb database as the MLS state (`node.redb`), so one
//! transaction can commit a ratchet step together with what it decrypted.
//!
//! - `plain`: envelope id → the decrypted inner [`Message`], sealed under its conversation's
//!   data key ([`crate::keyring`]) (every conversation envelope this
//!   device could read, own ones included): what `verify` checks signatures against, since MLS
//!   ciphertexts cannot be decrypted twice.
//! - `messages`: (conversation id, seq) → envelope id, for text messages only, in the order
//!   this device accepted them (parents always first): the `tail` order.
//! - `by_id`: envelope id → (conversation id, seq, after_gap).
//! - the outbox of own envelopes no store node has acknowledged enough yet (pushed again
//!   after a restart): see [`crate::outbox_store`].
//! - `pending_devices`: devices of this account to add to every conversation.
//! - redactions: see [`crate::redactions`].
//! - delivery states of own sends: see [`crate::deliveries_store`].
//! - each conversation's chain and replay cursor: see [`crate::chain_store`].

use std::sync::Arc;

use cairn_proto::{Id, Limits, Message};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::NodeError;
use crate::keyring::Keyring;

const PLAIN: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_plain");
const MESSAGES: TableDefinition<'_, (&[u8; 32], u64), &[u8; 32]> = TableDefinition::new("node_messages");
const BY_ID: TableDefinition<'_, &[u8; 32], (&[u8; 32], u64, bool)> = TableDefinition::new("node_by_id");
const PENDING_DEVICES: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_pending_devices");
const ARCHIVED: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_archived");

pub use crate::outbox_store::OUTBOX_ENVELOPES_MAX;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Highest text-message seq of a conversation (0: none).
fn last_seq(
    messages: &impl ReadableTable<(&'static [u8; 32], u64), &'static [u8; 32]>,
    conv: &[u8; 32],
) -> Result<u64, NodeError> {
    Ok(messages
        .range((conv, 0)..=(conv, u64::MAX))
        .map_err(storage)?
        .next_back()
        .transpose()
        .map_err(storage)?
        .map(|(k, _)| k.value().1)
        .unwrap_or(0))
}

/// A stored text message.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Position in the conversation's tail order.
    pub seq: u64,
    /// Envelope id.
    pub id: Id,
    /// The inner message.
    pub message: Message,
    /// An ancestor could not be found when it arrived.
    pub after_gap: bool,
}

/// An envelope this device read or wrote, to record.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Conversation id.
    pub conv: [u8; 32],
    /// Envelope id.
    pub id: Id,
    /// The inner message.
    pub inner: Message,
    /// A text message (listed in the tail order).
    pub text: bool,
    /// An ancestor could not be found.
    pub after_gap: bool,
    /// Kept out of the tail: the conversation's policy did not let it show (yet).
    pub hidden: bool,
}

/// The node's tables.
#[derive(Clone)]
pub struct NodeDb {
    db: Arc<Database>,
    limits: Limits,
    /// Seals the plaintexts kept in `plain` (see [`crate::keyring`]).
    keyring: Arc<Keyring>,
    /// Run inside every durable write transaction, before it commits (shared by clones).
    before_durable: Arc<std::sync::OnceLock<cairn_mls::DurableHook>>,
}

impl NodeDb {
    /// Opens (creates) the tables, with an ephemeral keyring: plaintexts sealed now cannot be
    /// read after a reopen (use [`NodeDb::with_keyring`] for a node's database).
    pub fn new(db: Arc<Database>, limits: Limits) -> Result<Self, NodeError> {
        Self::with_keyring(db, limits, Arc::new(Keyring::ephemeral()?))
    }

    /// Opens (creates) the tables; plaintexts are sealed with `keyring`'s conversation keys.
    pub fn with_keyring(db: Arc<Database>, limits: Limits, keyring: Arc<Keyring>) -> Result<Self, NodeError> {
        let tx = db.begin_write().map_err(storage)?;
        {
            tx.open_table(PLAIN).map_err(storage)?;
            tx.open_table(MESSAGES).map_err(storage)?;
            tx.open_table(BY_ID).map_err(storage)?;
            crate::outbox_store::create_tables(&tx)?;
            tx.open_table(PENDING_DEVICES).map_err(storage)?;
            tx.open_table(ARCHIVED).map_err(storage)?;
            crate::requests::create_tables(&tx)?;
            crate::redactions::create_tables(&tx)?;
            crate::idempotency::create_tables(&tx)?;
            crate::anchor_salts::create_tables(&tx)?;
            crate::deliveries_store::create_tables(&tx)?;
            crate::chain_store::create_tables(&tx)?;
        }
        tx.commit().map_err(storage)?;
        Ok(Self { db, limits, keyring, before_durable: Arc::new(std::sync::OnceLock::new()) })
    }

    /// The keyring sealing the plaintexts.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The shared database (for the tables of sibling modules, e.g. [`crate::requests`]).
    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    /// The decoder limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A durable write transaction on the shared database (MLS state goes in it too). Its
    /// commit also makes every earlier lazy commit durable, so the hook set with
    /// [`NodeDb::set_before_durable`] runs first, inside it (no lazy commit can slip in between).
    pub fn begin(&self) -> Result<WriteTransaction, NodeError> {
        let tx = self.db.begin_write().map_err(storage)?;
        if let Some(hook) = self.before_durable.get() {
            hook();
        }
        Ok(tx)
    }

    /// A durable write transaction that does not run the hook of
    /// [`NodeDb::set_before_durable`]: only for a caller that knows no commit since the last
    /// durable one used what the hook makes durable (the engine's send when it made no lazy
    /// commit since: its rows come from the caller, not from the local history).
    pub(crate) fn begin_unhooked(&self) -> Result<WriteTransaction, NodeError> {
        self.db.begin_write().map_err(storage)
    }

    /// Sets (once) what must happen before every durable commit: the node makes its local
    /// history durable, so nothing the engine read from it outlives it after a crash.
    pub fn set_before_durable(&self, hook: cairn_mls::DurableHook) {
        let _ = self.before_durable.set(hook);
    }

    /// A write transaction that commits without an fsync: durable with the next durable
    /// commit of the database (redb `Durability::None`). Only for state that can be
    /// recomputed from durable data after a crash.
    pub fn begin_lazy(&self) -> Result<WriteTransaction, NodeError> {
        let mut tx = self.db.begin_write().map_err(storage)?;
        tx.set_durability(redb::Durability::None).map_err(storage)?;
        Ok(tx)
    }

    /// Whether this envelope was already accepted.
    pub fn has_plain(&self, id: &Id) -> Result<bool, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(PLAIN).map_err(storage)?;
        Ok(t.get(&id.0).map_err(storage)?.is_some())
    }

    /// Which of `ids` this device read or wrote (their plaintext rows exist), in one read
    /// transaction and without opening any.
    pub fn plain_present(&self, ids: &[Id]) -> Result<Vec<bool>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(PLAIN).map_err(storage)?;
        ids.iter().map(|id| Ok(t.get(&id.0).map_err(storage)?.is_some())).collect()
    }

    /// The inner message of an envelope, if this device read (or wrote) it and its
    /// conversation was not forgotten.
    pub fn plain(&self, id: &Id) -> Result<Option<Vec<u8>>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(PLAIN).map_err(storage)?;
        match t.get(&id.0).map_err(storage)? {
            Some(v) => self.keyring.open_sealed(id, v.value()),
            None => Ok(None),
        }
    }

    /// Records accepted envelopes in `tx`; returns each one's text seq (0 if not text).
    /// Idempotent: an id recorded before keeps its seq.
    pub fn accept_in(&self, tx: &WriteTransaction, rows: &[Accepted]) -> Result<Vec<u64>, NodeError> {
        let mut plain = tx.open_table(PLAIN).map_err(storage)?;
        let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
        let mut by_id = tx.open_table(BY_ID).map_err(storage)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(prev) = by_id.get(&r.id.0).map_err(storage)? {
                out.push(prev.value().1);
                continue;
            }
            if plain.get(&r.id.0).map_err(storage)?.is_some() && !r.text {
                out.push(0);
                continue;
            }
            let sealed = self.keyring.seal(&r.conv, &r.id, &r.inner.encode())?;
            plain.insert(&r.id.0, sealed.as_slice()).map_err(storage)?;
            if r.text && !r.hidden {
                let seq = last_seq(&messages, &r.conv)? + 1;
                messages.insert((&r.conv, seq), &r.id.0).map_err(storage)?;
                by_id.insert(&r.id.0, (&r.conv, seq, r.after_gap)).map_err(storage)?;
                out.push(seq);
            } else {
                out.push(0);
            }
        }
        drop((plain, messages, by_id));
        // Each row's place in its chain, in the same transaction (see `crate::chain_store`).
        let links: Vec<(&[u8; 32], &Id, &[Id])> =
            rows.iter().map(|r| (&r.conv, &r.id, r.inner.parents.as_slice())).collect();
        self.chain_put_in(tx, &links)?;
        Ok(out)
    }

    /// Gives a stored text message kept out of the tail (held by the conversation's policy)
    /// its place at the tail's end, in `tx`; `None` if it has one already.
    pub(crate) fn show_in(
        &self,
        tx: &WriteTransaction,
        conv: &[u8; 32],
        id: &Id,
        after_gap: bool,
    ) -> Result<Option<u64>, NodeError> {
        let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
        let mut by_id = tx.open_table(BY_ID).map_err(storage)?;
        if by_id.get(&id.0).map_err(storage)?.is_some() {
            return Ok(None);
        }
        let seq = last_seq(&messages, conv)? + 1;
        messages.insert((conv, seq), &id.0).map_err(storage)?;
        by_id.insert(&id.0, (conv, seq, after_gap)).map_err(storage)?;
        Ok(Some(seq))
    }

    /// Deletes a message's plaintext, in `tx` (erasure). Its tail position and id row stay, so
    /// seqs are never reused and a copy delivered again is not read as new.
    pub(crate) fn forget_plain_in(&self, tx: &WriteTransaction, id: &Id) -> Result<(), NodeError> {
        tx.open_table(PLAIN).map_err(storage)?.remove(&id.0).map_err(storage)?;
        Ok(())
    }

    /// Deletes every plaintext, tail entry and id row of a conversation (after its key was
    /// forgotten: the sealed rows could not be opened any more). Returns the rows deleted.
    pub fn purge_conversation(&self, conv: &[u8; 32]) -> Result<u64, NodeError> {
        let tx = self.begin()?;
        let mut n = 0;
        {
            let mut plain = tx.open_table(PLAIN).map_err(storage)?;
            let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
            let mut by_id = tx.open_table(BY_ID).map_err(storage)?;
            let ids: Vec<[u8; 32]> = plain
                .iter()
                .map_err(storage)?
                .filter_map(Result::ok)
                .filter(|(_, v)| v.value().get(1..33) == Some(&conv[..]))
                .map(|(k, _)| *k.value())
                .collect();
            for id in ids {
                plain.remove(&id).map_err(storage)?;
                by_id.remove(&id).map_err(storage)?;
                n += 1;
            }
            let seqs: Vec<u64> = messages
                .range((conv, 0)..=(conv, u64::MAX))
                .map_err(storage)?
                .filter_map(Result::ok)
                .map(|(k, _)| k.value().1)
                .collect();
            for seq in seqs {
                messages.remove((conv, seq)).map_err(storage)?;
            }
        }
        self.idempotent_forget_in(&tx, conv)?;
        self.erasures_forget_in(&tx, conv)?;
        self.deliveries_forget_in(&tx, conv)?;
        self.chain_forget_in(&tx, conv)?;
        tx.commit().map_err(storage)?;
        Ok(n)
    }

    /// Text messages of a conversation after `after`, at most `limit`.
    pub fn messages(&self, conv: &[u8; 32], after: u64, limit: usize) -> Result<Vec<Stored>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let messages = tx.open_table(MESSAGES).map_err(storage)?;
        let plain = tx.open_table(PLAIN).map_err(storage)?;
        let by_id = tx.open_table(BY_ID).map_err(storage)?;
        let mut out = Vec::new();
        for row in messages.range((conv, after.saturating_add(1))..=(conv, u64::MAX)).map_err(storage)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(storage)?;
            let id = Id(*v.value());
            let Some(sealed) = plain.get(&id.0).map_err(storage)? else { continue };
            let Some(bytes) = self.keyring.open_sealed(&id, sealed.value())? else { continue };
            let message = Message::decode(&bytes, &self.limits).map_err(storage)?;
            let after_gap = by_id.get(&id.0).map_err(storage)?.map(|g| g.value().2).unwrap_or(false);
            out.push(Stored { seq: k.value().1, id, message, after_gap });
        }
        Ok(out)
    }

    /// Number of text messages of a conversation.
    pub fn count(&self, conv: &[u8; 32]) -> Result<u64, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let messages = tx.open_table(MESSAGES).map_err(storage)?;
        last_seq(&messages, conv)
    }

    /// Conversations that have rows here (read messages), from the sealed plaintexts.
    pub fn conversations_with_rows(&self) -> Result<std::collections::BTreeSet<[u8; 32]>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let plain = tx.open_table(PLAIN).map_err(storage)?;
        let mut out = std::collections::BTreeSet::new();
        for row in plain.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            if let Some(c) = v.value().get(1..33).and_then(|c| <[u8; 32]>::try_from(c).ok()) {
                out.insert(c);
            }
        }
        Ok(out)
    }

    /// The tail position of a text message.
    pub fn seq_of(&self, id: &Id) -> Result<Option<u64>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(BY_ID).map_err(storage)?;
        Ok(t.get(&id.0).map_err(storage)?.map(|v| v.value().1))
    }

    /// Records a conversation restored from an archive (readable, not joined).
    pub fn archive_conversation(&self, conv: &[u8; 32], now_ms: u64) -> Result<(), NodeError> {
        let tx = self.begin()?;
        tx.open_table(ARCHIVED).map_err(storage)?.insert(conv, now_ms).map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Conversations restored from an archive.
    pub fn archived(&self) -> Result<Vec<[u8; 32]>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(ARCHIVED).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            out.push(*row.map_err(storage)?.0.value());
        }
        Ok(out)
    }

    /// Devices waiting to be added to this account's conversations.
    pub fn pending_devices(&self) -> Result<Vec<[u8; 32]>, NodeError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(PENDING_DEVICES).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            out.push(*row.map_err(storage)?.0.value());
        }
        Ok(out)
    }

    /// Adds or removes a pending device.
    pub fn set_pending_device(&self, device: &[u8; 32], pending: bool, now_ms: u64) -> Result<(), NodeError> {
        let tx = self.begin()?;
        {
            let mut t = tx.open_table(PENDING_DEVICES).map_err(storage)?;
            if pending {
                t.insert(device, now_ms).map_err(storage)?;
            } else {
                t.remove(device).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }
}
