//! The outbox: this device's own envelopes that no store node has acknowledged enough yet,
//! in `node.redb`, pushed again after a restart in bounded pages, in the order they were
//! written (a parent before its children).
//!
//! - `node_outbox`: envelope id → encoded envelope.
//! - `node_outbox_order`: position → envelope id; positions count up in write order.
//! - `node_outbox_position`: envelope id → position.
//!
//! An envelope enters the outbox in its send's durable transaction (with its plaintext and
//! MLS step) and leaves it, without an fsync, once enough store nodes took it: a crash that
//! loses the removal pushes it once more (store nodes answer "duplicate").
//!
//! Bounds and overflow policy: at most [`OUTBOX_ENVELOPES_MAX`] envelopes; a new one past
//! it drops the oldest (its envelope stays in the local history and on whatever store nodes
//! took it). A restart reads [`OUTBOX_PAGE_ENVELOPES`] at a time. Rows written before the
//! order tables existed are given positions once, parents first, at the next start.

use std::collections::{HashMap, HashSet, VecDeque};

use cairn_proto::{Envelope, Id};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const OUTBOX: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_outbox");
const ORDER: TableDefinition<'_, u64, &[u8; 32]> = TableDefinition::new("node_outbox_order");
const POSITION: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_outbox_position");

/// Envelopes kept in the outbox at most. Overflow policy: the oldest is dropped (its envelope
/// stays in the local history and on whatever store nodes took it).
pub const OUTBOX_ENVELOPES_MAX: u64 = 10_000;

/// Envelopes of the outbox read and pushed again per page after a restart.
pub const OUTBOX_PAGE_ENVELOPES: usize = 512;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Creates the tables (called from [`NodeDb::with_keyring`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(OUTBOX).map_err(storage)?;
    tx.open_table(ORDER).map_err(storage)?;
    tx.open_table(POSITION).map_err(storage)?;
    Ok(())
}

/// One page of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxPage {
    /// Envelopes, in write order.
    pub envelopes: Vec<Envelope>,
    /// Position of the next page (`None`: no more).
    pub next: Option<u64>,
}

impl NodeDb {
    /// Puts an own envelope in the outbox, in `tx`.
    pub fn outbox_put_in(&self, tx: &WriteTransaction, env: &Envelope) -> Result<(), NodeError> {
        let id = env.id();
        let mut t = tx.open_table(OUTBOX).map_err(storage)?;
        if t.get(&id.0).map_err(storage)?.is_some() {
            return Ok(());
        }
        let mut order = tx.open_table(ORDER).map_err(storage)?;
        let mut position = tx.open_table(POSITION).map_err(storage)?;
        if t.len().map_err(storage)? >= OUTBOX_ENVELOPES_MAX {
            let oldest = match order.first().map_err(storage)? {
                Some((k, v)) => Some((Some(k.value()), *v.value())),
                // Only rows from before the order tables: the lowest id, as before.
                None => t.first().map_err(storage)?.map(|(k, _)| (None, *k.value())),
            };
            if let Some((pos, old)) = oldest {
                t.remove(&old).map_err(storage)?;
                position.remove(&old).map_err(storage)?;
                if let Some(pos) = pos {
                    order.remove(pos).map_err(storage)?;
                }
            }
        }
        let next = order.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1);
        t.insert(&id.0, env.encode().as_slice()).map_err(storage)?;
        order.insert(next, &id.0).map_err(storage)?;
        position.insert(&id.0, next).map_err(storage)?;
        Ok(())
    }

    /// Removes an envelope from the outbox (stored on enough store nodes). Without an fsync:
    /// if a crash loses the removal, the envelope is pushed once more at start (store nodes
    /// answer "duplicate").
    pub fn outbox_remove(&self, id: &Id) -> Result<(), NodeError> {
        let tx = self.begin_lazy()?;
        let removed = self.outbox_remove_in(&tx, id)?;
        if removed { tx.commit().map_err(storage) } else { tx.abort().map_err(storage) }
    }

    /// Removes an envelope from the outbox in `tx`; whether it was there.
    pub(crate) fn outbox_remove_in(&self, tx: &WriteTransaction, id: &Id) -> Result<bool, NodeError> {
        let removed = tx.open_table(OUTBOX).map_err(storage)?.remove(&id.0).map_err(storage)?.is_some();
        let pos =
            tx.open_table(POSITION).map_err(storage)?.remove(&id.0).map_err(storage)?.map(|v| v.value());
        if let Some(pos) = pos {
            tx.open_table(ORDER).map_err(storage)?.remove(pos).map_err(storage)?;
        }
        Ok(removed)
    }

    /// Envelopes in the outbox.
    pub fn outbox_len(&self) -> Result<u64, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        tx.open_table(OUTBOX).map_err(storage)?.len().map_err(storage)
    }

    /// The position the next envelope put in the outbox will take.
    pub fn outbox_end(&self) -> Result<u64, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let order = tx.open_table(ORDER).map_err(storage)?;
        Ok(order.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1))
    }

    /// The outbox's envelopes from position `from` (inclusive) and before `end`, at most
    /// `limit`, in write order.
    pub fn outbox_page(&self, from: u64, end: u64, limit: usize) -> Result<OutboxPage, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let order = tx.open_table(ORDER).map_err(storage)?;
        let t = tx.open_table(OUTBOX).map_err(storage)?;
        let mut envelopes = Vec::with_capacity(limit.min(OUTBOX_PAGE_ENVELOPES));
        for row in order.range(from..end).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if envelopes.len() >= limit {
                return Ok(OutboxPage { envelopes, next: Some(k.value()) });
            }
            if let Some(bytes) = t.get(v.value()).map_err(storage)? {
                envelopes.push(Envelope::decode(bytes.value(), self.limits()).map_err(storage)?);
            }
        }
        Ok(OutboxPage { envelopes, next: None })
    }

    /// Gives the outbox rows written before the order tables existed their positions,
    /// parents first (one durable transaction; nothing to do when every row has one).
    pub fn outbox_order_legacy(&self) -> Result<usize, NodeError> {
        let tx = self.begin()?;
        let n = {
            let t = tx.open_table(OUTBOX).map_err(storage)?;
            let mut order = tx.open_table(ORDER).map_err(storage)?;
            let mut position = tx.open_table(POSITION).map_err(storage)?;
            if t.len().map_err(storage)? == position.len().map_err(storage)? {
                0
            } else {
                let mut legacy = Vec::new();
                for row in t.iter().map_err(storage)? {
                    let (k, v) = row.map_err(storage)?;
                    if position.get(k.value()).map_err(storage)?.is_none() {
                        legacy.push(Envelope::decode(v.value(), self.limits()).map_err(storage)?);
                    }
                }
                let first = order.last().map_err(storage)?.map_or(0, |(k, _)| k.value() + 1);
                let n = legacy.len();
                for (pos, env) in (first..).zip(causal_order(legacy)) {
                    let id = env.id();
                    order.insert(pos, &id.0).map_err(storage)?;
                    position.insert(&id.0, pos).map_err(storage)?;
                }
                n
            }
        };
        if n == 0 {
            tx.abort().map_err(storage)?;
        } else {
            tx.commit().map_err(storage)?;
        }
        Ok(n)
    }
}

/// `envs` with every parent before its children (among `envs`; Kahn's algorithm, linear).
fn causal_order(envs: Vec<Envelope>) -> Vec<Envelope> {
    let index: HashMap<Id, usize> = envs.iter().enumerate().map(|(i, e)| (e.id(), i)).collect();
    let mut waiting_on = vec![0usize; envs.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); envs.len()];
    for (i, e) in envs.iter().enumerate() {
        for p in &e.header.parents {
            if let Some(&pi) = index.get(p)
                && pi != i
            {
                waiting_on[i] += 1;
                children[pi].push(i);
            }
        }
    }
    let mut ready: VecDeque<usize> = (0..envs.len()).filter(|i| waiting_on[*i] == 0).collect();
    let mut order = Vec::with_capacity(envs.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &c in &children[i] {
            waiting_on[c] -= 1;
            if waiting_on[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    // A cycle cannot be built from hash links; whatever is left goes last, as it came.
    let placed: HashSet<usize> = order.iter().copied().collect();
    order.extend((0..envs.len()).filter(|i| !placed.contains(i)));
    let mut slots: Vec<Option<Envelope>> = envs.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::envelope::pad;
    use cairn_proto::{Limits, Topic};

    fn env(n: u64, parents: Vec<Id>) -> Envelope {
        Envelope::new(Topic([1; 32]), n, 60, parents, pad(b"x", &Limits::default()).unwrap())
    }

    #[test]
    fn legacy_rows_are_ordered_parents_first() {
        let a = env(1, vec![]);
        let b = env(2, vec![a.id()]);
        let c = env(3, vec![b.id(), a.id()]);
        let d = env(4, vec![Id([7; 32])]);
        let out = causal_order(vec![c.clone(), d.clone(), b.clone(), a.clone()]);
        let pos = |x: &Envelope| out.iter().position(|o| o.id() == x.id()).unwrap();
        assert_eq!(out.len(), 4);
        assert!(pos(&a) < pos(&b) && pos(&b) < pos(&c));
    }

    fn db() -> (tempfile::TempDir, NodeDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(redb::Database::create(dir.path().join("n.redb")).unwrap());
        (dir, NodeDb::new(db, Limits::default()).unwrap())
    }

    #[test]
    fn pages_follow_write_order_and_skip_what_left() {
        let (_dir, ndb) = db();
        let envs: Vec<Envelope> = (0..7).map(|n| env(n, vec![])).collect();
        let tx = ndb.begin().unwrap();
        for e in &envs {
            ndb.outbox_put_in(&tx, e).unwrap();
        }
        ndb.outbox_put_in(&tx, &envs[0]).unwrap();
        tx.commit().unwrap();
        ndb.outbox_remove(&envs[2].id()).unwrap();
        let end = ndb.outbox_end().unwrap();
        assert_eq!(end, 7, "a second put of the same envelope takes no new place");
        let mut seen = Vec::new();
        let mut from = Some(0);
        while let Some(f) = from {
            let page = ndb.outbox_page(f, end, 2).unwrap();
            assert!(page.envelopes.len() <= 2);
            seen.extend(page.envelopes.iter().map(Envelope::id));
            from = page.next;
        }
        let want: Vec<Id> = envs.iter().filter(|e| e.id() != envs[2].id()).map(Envelope::id).collect();
        assert_eq!(seen, want);
        assert_eq!(ndb.outbox_len().unwrap(), 6);
        // An envelope put after the end taken at start is not in the start's pages.
        let tx = ndb.begin().unwrap();
        ndb.outbox_put_in(&tx, &env(9, vec![])).unwrap();
        tx.commit().unwrap();
        assert_eq!(ndb.outbox_page(0, end, 100).unwrap().envelopes.len(), 6);
    }

    #[test]
    fn the_oldest_goes_when_the_outbox_is_full() {
        let (_dir, ndb) = db();
        let tx = ndb.begin().unwrap();
        for n in 0..OUTBOX_ENVELOPES_MAX + 1 {
            ndb.outbox_put_in(&tx, &env(n, vec![])).unwrap();
        }
        tx.commit().unwrap();
        assert_eq!(ndb.outbox_len().unwrap(), OUTBOX_ENVELOPES_MAX);
        let first = ndb.outbox_page(0, u64::MAX, 1).unwrap();
        assert_eq!(first.envelopes[0].id(), env(1, vec![]).id(), "envelope 0, the oldest, went");
    }

    #[test]
    fn rows_from_before_the_order_tables_get_positions_parents_first() {
        let (_dir, ndb) = db();
        let a = env(1, vec![]);
        let b = env(2, vec![a.id()]);
        let c = env(3, vec![b.id()]);
        let tx = ndb.begin().unwrap();
        {
            let mut t = tx.open_table(OUTBOX).unwrap();
            for e in [&c, &a, &b] {
                t.insert(&e.id().0, e.encode().as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        assert!(ndb.outbox_page(0, u64::MAX, 10).unwrap().envelopes.is_empty(), "no positions yet");
        assert_eq!(ndb.outbox_order_legacy().unwrap(), 3);
        assert_eq!(ndb.outbox_order_legacy().unwrap(), 0, "once");
        let ids: Vec<Id> =
            ndb.outbox_page(0, u64::MAX, 10).unwrap().envelopes.iter().map(Envelope::id).collect();
        assert_eq!(ids, vec![a.id(), b.id(), c.id()]);
        ndb.outbox_remove(&b.id()).unwrap();
        assert_eq!(ndb.outbox_page(0, u64::MAX, 10).unwrap().envelopes.len(), 2);
    }
}
