//! Delivery states of this device's own text messages, in `node.redb`, so "stored on k" and
//! "delivered to n of m" survive a restart of the node.
//!
//! - `node_deliveries`: envelope id → record (format below).
//! - `node_delivery_order`: (conversation, position) → envelope id: the order of a
//!   conversation's sends (positions count up from 1 per conversation) and its bound.
//! - `node_delivery_count`: conversation → (rows in `node_delivery_order`, next position).
//!
//! When each row is written:
//! - a send's row (nothing stored, nobody delivered, the members it waits for) in the send's
//!   own durable transaction (with its plaintext, MLS step and outbox entry);
//! - store acknowledgements and receipts change the state in memory first (what the API
//!   shows); the changed rows are written together by the engine's next tick (or at once when
//!   4,096 wait), in a transaction without an fsync, made durable by the next durable commit
//!   and at least every [`crate::engine::DURABLE_EVERY_MS`] by the tick. One write per tick
//!   however many receipts a large group sends. A crash can roll back that much: a state read
//!   after it may be behind (e.g. "stored on 2" for "delivered to 1 of 1"), never ahead of
//!   what happened.
//!
//! A start keeps the newest [`DELIVERIES_RESTORED_PER_CONVERSATION`] rows of each
//! conversation in memory; an older row is read when a store acknowledgement or a receipt
//! names its message (and then tracked in memory again), and the API reads the rows.
//!
//! Bounds and overflow policy: at most [`DELIVERY_ROWS_PER_CONVERSATION_MAX`] rows per
//! conversation; a new send past it deletes the conversation's oldest row (that message then
//! shows no state after a restart; the message itself is untouched). A send waiting for more
//! than [`DELIVERY_MEMBERS_MAX`] member accounts is not recorded here (its state is kept in
//! memory only, as before). Forgetting a conversation deletes its rows.
//!
//! Record format (version 1): `version:u8 conv:[32] stored_on:u32 n:u16
//! waiting:[32]×n delivered:bitmap(⌈n/8⌉)`, bit i set when `waiting[i]` receipted it.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_mls::ConversationId;
use cairn_proto::codec::{Reader, Writer};
use cairn_proto::{AccountId, Id};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::core::delivery::Delivery;
use crate::db::NodeDb;
use crate::error::NodeError;

const DELIVERIES: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_deliveries");
const ORDER: TableDefinition<'_, (&[u8; 32], u64), &[u8; 32]> = TableDefinition::new("node_delivery_order");
const COUNT: TableDefinition<'_, &[u8; 32], (u64, u64)> = TableDefinition::new("node_delivery_count");

/// Record format version.
const RECORD_VERSION: u8 = 1;
/// Delivery rows kept per conversation (the newest sends).
pub const DELIVERY_ROWS_PER_CONVERSATION_MAX: u64 = 2_000;
/// Delivery rows of each conversation a start reads into memory (its newest sends).
pub const DELIVERIES_RESTORED_PER_CONVERSATION: usize = 64;
/// Member accounts a recorded delivery waits for at most.
pub const DELIVERY_MEMBERS_MAX: usize = 4_096;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Creates the tables (called from [`NodeDb::with_keyring`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(DELIVERIES).map_err(storage)?;
    tx.open_table(ORDER).map_err(storage)?;
    tx.open_table(COUNT).map_err(storage)?;
    Ok(())
}

fn encode(d: &Delivery) -> Option<Vec<u8>> {
    let n = d.waiting_for().len();
    if n > DELIVERY_MEMBERS_MAX {
        return None;
    }
    let mut w = Writer::with_capacity(39 + 32 * n + n.div_ceil(8));
    w.u8(RECORD_VERSION);
    w.raw(&d.conversation.0);
    w.u32(d.stored_on);
    w.u16(n as u16);
    let mut bits = vec![0u8; n.div_ceil(8)];
    for (i, a) in d.waiting_for().iter().enumerate() {
        w.raw(&a.0);
        if d.has_receipt(a) {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    w.raw(&bits);
    Some(w.finish())
}

/// Member lists read back so far, one per conversation: rows of the same membership share it.
type Lists = HashMap<ConversationId, Arc<[AccountId]>>;

fn decode(bytes: &[u8], lists: &mut Lists) -> Option<Delivery> {
    let mut r = Reader::new(bytes);
    if r.u8("delivery.version").ok()? != RECORD_VERSION {
        return None;
    }
    let conversation = ConversationId(r.array::<32>("delivery.conv").ok()?);
    let stored_on = r.u32("delivery.stored_on").ok()?;
    let n = r.u16("delivery.members").ok()? as usize;
    if n > DELIVERY_MEMBERS_MAX {
        return None;
    }
    let mut waiting = Vec::with_capacity(n);
    for _ in 0..n {
        waiting.push(AccountId(r.array::<32>("delivery.member").ok()?));
    }
    let bits = r.take(n.div_ceil(8), "delivery.delivered").ok()?;
    r.finish().ok()?;
    let receipted: Vec<AccountId> = waiting
        .iter()
        .enumerate()
        .filter(|(i, _)| bits[i / 8] & (1 << (i % 8)) != 0)
        .map(|(_, a)| *a)
        .collect();
    let members = match lists.get(&conversation) {
        Some(l) if l[..] == waiting[..] => l.clone(),
        _ => {
            let l: Arc<[AccountId]> = waiting.into();
            lists.insert(conversation, l.clone());
            l
        }
    };
    let mut d = Delivery::new(conversation, stored_on, members);
    for a in &receipted {
        d.add_receipt(a);
    }
    Some(d)
}

impl NodeDb {
    /// Records a new send's delivery row in `tx` (bounded per conversation: the oldest row
    /// goes). A row already there is left as it is.
    pub(crate) fn delivery_insert_in(
        &self,
        tx: &WriteTransaction,
        id: &Id,
        d: &Delivery,
    ) -> Result<(), NodeError> {
        let Some(record) = encode(d) else { return Ok(()) };
        let mut rows = tx.open_table(DELIVERIES).map_err(storage)?;
        if rows.get(&id.0).map_err(storage)?.is_some() {
            return Ok(());
        }
        let mut order = tx.open_table(ORDER).map_err(storage)?;
        let mut count = tx.open_table(COUNT).map_err(storage)?;
        let conv = &d.conversation.0;
        let (mut n, next) = count.get(conv).map_err(storage)?.map(|v| v.value()).unwrap_or((0, 1));
        while n >= DELIVERY_ROWS_PER_CONVERSATION_MAX {
            let oldest = order
                .range((conv, 0)..=(conv, u64::MAX))
                .map_err(storage)?
                .next()
                .transpose()
                .map_err(storage)?
                .map(|(k, v)| (k.value().1, *v.value()));
            let Some((old_seq, old_id)) = oldest else { break };
            order.remove((conv, old_seq)).map_err(storage)?;
            rows.remove(&old_id).map_err(storage)?;
            n -= 1;
        }
        rows.insert(&id.0, record.as_slice()).map_err(storage)?;
        order.insert((conv, next), &id.0).map_err(storage)?;
        count.insert(conv, (n + 1, next + 1)).map_err(storage)?;
        Ok(())
    }

    /// Overwrites the row of `id` with its new state, in `tx`; nothing if it has no row
    /// (never recorded, or gone past the bound).
    pub(crate) fn delivery_update_in(
        &self,
        tx: &WriteTransaction,
        id: &Id,
        d: &Delivery,
    ) -> Result<(), NodeError> {
        let mut rows = tx.open_table(DELIVERIES).map_err(storage)?;
        if rows.get(&id.0).map_err(storage)?.is_none() {
            return Ok(());
        }
        if let Some(record) = encode(d) {
            rows.insert(&id.0, record.as_slice()).map_err(storage)?;
        }
        Ok(())
    }

    /// Every recorded delivery, each conversation's oldest first. A row that does not decode
    /// is skipped (its message shows no state).
    pub fn deliveries_recorded(&self) -> Result<Vec<(Id, Delivery)>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let order = tx.open_table(ORDER).map_err(storage)?;
        let rows = tx.open_table(DELIVERIES).map_err(storage)?;
        let mut out = Vec::new();
        let mut lists = Lists::new();
        for entry in order.iter().map_err(storage)? {
            let (_, id) = entry.map_err(storage)?;
            let id = *id.value();
            if let Some(row) = rows.get(&id).map_err(storage)?.and_then(|v| decode(v.value(), &mut lists)) {
                out.push((Id(id), row));
            }
        }
        Ok(out)
    }

    /// The newest `per_conversation` recorded deliveries of every conversation, each
    /// conversation's oldest first (what a start keeps in memory; older rows are read when
    /// needed). A row that does not decode is skipped.
    pub fn deliveries_recent(&self, per_conversation: usize) -> Result<Vec<(Id, Delivery)>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let order = tx.open_table(ORDER).map_err(storage)?;
        let rows = tx.open_table(DELIVERIES).map_err(storage)?;
        let count = tx.open_table(COUNT).map_err(storage)?;
        let mut out = Vec::new();
        let mut lists = Lists::new();
        for c in count.iter().map_err(storage)? {
            let (conv, _) = c.map_err(storage)?;
            let conv = *conv.value();
            let mut ids = Vec::with_capacity(per_conversation);
            for entry in
                order.range((&conv, 0)..=(&conv, u64::MAX)).map_err(storage)?.rev().take(per_conversation)
            {
                ids.push(*entry.map_err(storage)?.1.value());
            }
            for id in ids.into_iter().rev() {
                if let Some(row) = rows.get(&id).map_err(storage)?.and_then(|v| decode(v.value(), &mut lists))
                {
                    out.push((Id(id), row));
                }
            }
        }
        Ok(out)
    }

    /// The recorded delivery of `id`, if it has a row that decodes.
    pub fn delivery_row(&self, id: &Id) -> Result<Option<Delivery>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let rows = tx.open_table(DELIVERIES).map_err(storage)?;
        Ok(rows.get(&id.0).map_err(storage)?.and_then(|v| decode(v.value(), &mut Lists::new())))
    }

    /// The newest `max` recorded deliveries of `conv`, newest first.
    pub fn deliveries_of(&self, conv: &ConversationId, max: usize) -> Result<Vec<(Id, Delivery)>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let order = tx.open_table(ORDER).map_err(storage)?;
        let rows = tx.open_table(DELIVERIES).map_err(storage)?;
        let mut out = Vec::with_capacity(max.min(1024));
        let mut lists = Lists::new();
        for entry in order.range((&conv.0, 0)..=(&conv.0, u64::MAX)).map_err(storage)?.rev() {
            if out.len() >= max {
                break;
            }
            let id = *entry.map_err(storage)?.1.value();
            if let Some(row) = rows.get(&id).map_err(storage)?.and_then(|v| decode(v.value(), &mut lists)) {
                out.push((Id(id), row));
            }
        }
        Ok(out)
    }

    /// Deletes a conversation's delivery rows, in `tx`.
    pub(crate) fn deliveries_forget_in(
        &self,
        tx: &WriteTransaction,
        conv: &[u8; 32],
    ) -> Result<(), NodeError> {
        let mut order = tx.open_table(ORDER).map_err(storage)?;
        let mut rows = tx.open_table(DELIVERIES).map_err(storage)?;
        let keys: Vec<(u64, [u8; 32])> = order
            .range((conv, 0)..=(conv, u64::MAX))
            .map_err(storage)?
            .filter_map(Result::ok)
            .map(|(k, v)| (k.value().1, *v.value()))
            .collect();
        for (seq, id) in keys {
            order.remove((conv, seq)).map_err(storage)?;
            rows.remove(&id).map_err(storage)?;
        }
        tx.open_table(COUNT).map_err(storage)?.remove(conv).map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(waiting: &[u8], delivered: &[u8], stored_on: u32) -> Delivery {
        let waiting = waiting.iter().map(|n| AccountId([*n; 32])).collect();
        let mut d = Delivery::new(ConversationId([9; 32]), stored_on, waiting);
        for n in delivered {
            d.add_receipt(&AccountId([*n; 32]));
        }
        d
    }

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let d = delivery(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[2, 9], 3);
        let bytes = encode(&d).unwrap();
        let lists = &mut Lists::new();
        assert_eq!(decode(&bytes, lists), Some(d.clone()));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], lists).is_none(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, lists).is_none(), "trailing bytes");
        let mut other = bytes;
        other[0] = 2;
        assert!(decode(&other, lists).is_none(), "unknown version");
    }

    #[test]
    fn rows_of_one_membership_share_one_member_list() {
        let lists = &mut Lists::new();
        let a = decode(&encode(&delivery(&[2, 3], &[], 0)).unwrap(), lists).unwrap();
        let b = decode(&encode(&delivery(&[2, 3], &[3], 1)).unwrap(), lists).unwrap();
        let c = decode(&encode(&delivery(&[2, 4], &[], 0)).unwrap(), lists).unwrap();
        assert!(Arc::ptr_eq(a.waiting_for(), b.waiting_for()), "one list for both sends");
        assert!(!Arc::ptr_eq(a.waiting_for(), c.waiting_for()), "another membership, another list");
        assert!(b.has_receipt(&AccountId([3; 32])) && !a.has_receipt(&AccountId([3; 32])));
    }

    #[test]
    fn rows_are_bounded_per_conversation_oldest_first_and_forgotten_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(redb::Database::create(dir.path().join("n.redb")).unwrap());
        let ndb = NodeDb::new(db, cairn_proto::Limits::default()).unwrap();
        let d = delivery(&[1], &[], 0);
        let tx = ndb.begin().unwrap();
        for seq in 1..=DELIVERY_ROWS_PER_CONVERSATION_MAX + 2 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&seq.to_be_bytes());
            ndb.delivery_insert_in(&tx, &Id(id), &d).unwrap();
        }
        tx.commit().unwrap();
        let all = ndb.deliveries_recorded().unwrap();
        assert_eq!(all.len() as u64, DELIVERY_ROWS_PER_CONVERSATION_MAX);
        assert_eq!(all.first().map(|(i, _)| i.0[7]), Some(3), "the two oldest went");

        let (id, _) = all[0];
        let tx = ndb.begin().unwrap();
        ndb.delivery_update_in(&tx, &id, &delivery(&[1], &[1], 2)).unwrap();
        tx.commit().unwrap();
        let all = ndb.deliveries_recorded().unwrap();
        assert_eq!(all[0].0, id, "an update keeps the row's place");
        assert_eq!((all[0].1.stored_on, all[0].1.view().delivered_to), (2, 1));

        let tx = ndb.begin().unwrap();
        ndb.deliveries_forget_in(&tx, &[9; 32]).unwrap();
        tx.commit().unwrap();
        assert!(ndb.deliveries_recorded().unwrap().is_empty());
    }

    #[test]
    fn a_start_reads_the_newest_rows_of_each_conversation_and_older_ones_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(redb::Database::create(dir.path().join("n.redb")).unwrap());
        let ndb = NodeDb::new(db, cairn_proto::Limits::default()).unwrap();
        let id = |conv: u8, n: u8| Id([conv * 16 + n; 32]);
        let tx = ndb.begin().unwrap();
        for conv in [1u8, 2] {
            let d = Delivery::new(ConversationId([conv; 32]), 0, vec![AccountId([5; 32])].into());
            for n in 0..5 {
                ndb.delivery_insert_in(&tx, &id(conv, n), &d).unwrap();
            }
        }
        tx.commit().unwrap();
        let recent: Vec<Id> = ndb.deliveries_recent(2).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(
            recent,
            vec![id(1, 3), id(1, 4), id(2, 3), id(2, 4)],
            "the newest 2 of each, oldest first"
        );
        let d = ndb.delivery_row(&id(1, 0)).unwrap().expect("an older row is still there");
        assert_eq!(d.conversation, ConversationId([1; 32]));
        assert!(ndb.delivery_row(&Id([99; 32])).unwrap().is_none());
        let of: Vec<Id> =
            ndb.deliveries_of(&ConversationId([2; 32]), 3).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(of, vec![id(2, 4), id(2, 3), id(2, 2)], "newest first");
    }
}
