//! Each conversation's hash-link chain and replay cursor, in `node.redb`, so a start reads
//! the chain back without opening a plaintext and replays only the local history that came
//! after the cursor.
//!
//! - `node_chain`: (conversation, n) → `id:[32] parents:[32]×k` (k ≤ the decoder limits'
//!   `parents_max`), n counting up from 1 per conversation: every envelope of the chain in the
//!   order this device learned it.
//! - `node_chain_ids`: envelope id → (conversation, n): whether an envelope is settled.
//! - `node_replay_cursor`: conversation → the position in the local history's topic log from
//!   which a start replays.
//!
//! When each row is written:
//! - an accepted envelope's chain row in the transaction that stores its plaintext and MLS
//!   step ([`NodeDb::accept_in`]): a crash keeps both or neither;
//! - an envelope that is history by structure only (held unreadable, then named as an ancestor
//!   by an accepted one) in the transaction that next moves the cursor;
//! - the cursor, before each durable flush (the tick's, every `DURABLE_EVERY_MS`, and at a
//!   stop) and at the end of a start, in a transaction of its own:
//!   it moves over the topic log while each entry has a chain row in that same transaction or
//!   an earlier one, and stops at the first that has none (not read yet, or held).
//!
//! Invariant: every local-history envelope of a conversation's topic at a position below its
//! cursor has a chain row committed no later than the cursor. A crash rolls the cursor back
//! with the rows it relied on (one database, commits in order), never past them; a start
//! clamps a cursor past the history's end (a history that lost its tail) to that end.
//!
//! Bounds: a row holds at most `parents_max` parents (a longer value read back is refused as
//! damaged); rows are per envelope of the chain, the chain's own bound. Forgetting a
//! conversation deletes its rows and cursor.

use cairn_mls::ConversationId;
use cairn_proto::Id;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const CHAIN: TableDefinition<'_, (&[u8; 32], u64), &[u8]> = TableDefinition::new("node_chain");
const CHAIN_IDS: TableDefinition<'_, &[u8; 32], (&[u8; 32], u64)> = TableDefinition::new("node_chain_ids");
const CURSOR: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_replay_cursor");

/// Chain rows read back per page at start.
pub const CHAIN_PAGE_ROWS: usize = 1_024;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Creates the tables (called from [`NodeDb::with_keyring`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(CHAIN).map_err(storage)?;
    tx.open_table(CHAIN_IDS).map_err(storage)?;
    tx.open_table(CURSOR).map_err(storage)?;
    Ok(())
}

/// One envelope of a chain as stored: its id and its parents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Envelope id.
    pub id: Id,
    /// Its parents (empty for history known by structure only).
    pub parents: Vec<Id>,
}

fn encode(id: &Id, parents: &[Id]) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 * (1 + parents.len()));
    v.extend_from_slice(&id.0);
    parents.iter().for_each(|p| v.extend_from_slice(&p.0));
    v
}

fn decode(bytes: &[u8], parents_max: usize) -> Result<Link, NodeError> {
    let damaged = || NodeError::Storage("damaged chain row".into());
    if bytes.len() < 32 || !bytes.len().is_multiple_of(32) || bytes.len() / 32 - 1 > parents_max {
        return Err(damaged());
    }
    let mut ids = bytes.chunks_exact(32).map(|c| <[u8; 32]>::try_from(c).map(Id));
    let id = ids.next().ok_or_else(damaged)?.map_err(|_| damaged())?;
    let parents = ids.collect::<Result<Vec<Id>, _>>().map_err(|_| damaged())?;
    Ok(Link { id, parents })
}

impl NodeDb {
    /// Records each `(conversation, id, parents)` in its conversation's chain, in `tx`.
    /// Idempotent: an id recorded before keeps its row. Parents past the decoder limit are not
    /// recorded (a verified message never has that many).
    pub(crate) fn chain_put_in(
        &self,
        tx: &WriteTransaction,
        links: &[(&[u8; 32], &Id, &[Id])],
    ) -> Result<(), NodeError> {
        if links.is_empty() {
            return Ok(());
        }
        let mut ids = tx.open_table(CHAIN_IDS).map_err(storage)?;
        let mut chain = tx.open_table(CHAIN).map_err(storage)?;
        for (conv, id, parents) in links {
            if ids.get(&id.0).map_err(storage)?.is_some() {
                continue;
            }
            let last = chain
                .range((*conv, 0)..=(*conv, u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map(|(k, _)| k.value().1)
                .unwrap_or(0);
            let n = last + 1;
            let parents = &parents[..parents.len().min(self.limits().parents_max)];
            chain.insert((*conv, n), encode(id, parents).as_slice()).map_err(storage)?;
            ids.insert(&id.0, (*conv, n)).map_err(storage)?;
        }
        Ok(())
    }

    /// `conv`'s chain rows from position `from` (inclusive), at most `limit`, and the position
    /// to read next (`None`: no more).
    pub fn chain_page(
        &self,
        conv: &ConversationId,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<Link>, Option<u64>), NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let chain = tx.open_table(CHAIN).map_err(storage)?;
        let mut out = Vec::with_capacity(limit.min(CHAIN_PAGE_ROWS));
        for row in chain.range((&conv.0, from)..=(&conv.0, u64::MAX)).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if out.len() >= limit {
                return Ok((out, Some(k.value().1)));
            }
            out.push(decode(v.value(), self.limits().parents_max)?);
        }
        Ok((out, None))
    }

    /// Which of `ids` have a chain row (one read transaction).
    pub fn chain_has(&self, ids: &[Id]) -> Result<Vec<bool>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(CHAIN_IDS).map_err(storage)?;
        ids.iter().map(|id| Ok(t.get(&id.0).map_err(storage)?.is_some())).collect()
    }

    /// Which of `ids` have a chain row, as seen by `tx` (rows written in it count).
    pub(crate) fn chain_has_in(&self, tx: &WriteTransaction, ids: &[Id]) -> Result<Vec<bool>, NodeError> {
        let t = tx.open_table(CHAIN_IDS).map_err(storage)?;
        ids.iter().map(|id| Ok(t.get(&id.0).map_err(storage)?.is_some())).collect()
    }

    /// `conv`'s replay cursor (0: replay the whole local history).
    pub fn replay_cursor(&self, conv: &ConversationId) -> Result<u64, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(CURSOR).map_err(storage)?;
        Ok(t.get(&conv.0).map_err(storage)?.map(|v| v.value()).unwrap_or(0))
    }

    /// `conv`'s replay cursor as seen by `tx`.
    pub(crate) fn replay_cursor_in(
        &self,
        tx: &WriteTransaction,
        conv: &ConversationId,
    ) -> Result<u64, NodeError> {
        let t = tx.open_table(CURSOR).map_err(storage)?;
        Ok(t.get(&conv.0).map_err(storage)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Sets `conv`'s replay cursor in `tx` (the caller checked the rows below it).
    pub(crate) fn set_replay_cursor_in(
        &self,
        tx: &WriteTransaction,
        conv: &ConversationId,
        cursor: u64,
    ) -> Result<(), NodeError> {
        tx.open_table(CURSOR).map_err(storage)?.insert(&conv.0, cursor).map_err(storage)?;
        Ok(())
    }

    /// Deletes `conv`'s chain rows and cursor, in `tx`.
    pub(crate) fn chain_forget_in(&self, tx: &WriteTransaction, conv: &[u8; 32]) -> Result<(), NodeError> {
        let mut chain = tx.open_table(CHAIN).map_err(storage)?;
        let mut ids = tx.open_table(CHAIN_IDS).map_err(storage)?;
        let rows: Vec<(u64, [u8; 32])> = chain
            .range((conv, 0)..=(conv, u64::MAX))
            .map_err(storage)?
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                v.value().get(..32).and_then(|i| i.try_into().ok()).map(|i| (k.value().1, i))
            })
            .collect();
        for (n, id) in rows {
            chain.remove((conv, n)).map_err(storage)?;
            ids.remove(&id).map_err(storage)?;
        }
        tx.open_table(CURSOR).map_err(storage)?.remove(conv).map_err(storage)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn rows_round_trip_and_damage_is_refused() {
        let bytes = encode(&id(1), &[id(2), id(3)]);
        assert_eq!(decode(&bytes, 8).unwrap(), Link { id: id(1), parents: vec![id(2), id(3)] });
        assert!(decode(&bytes, 1).is_err(), "more parents than the limit");
        assert!(decode(&bytes[..40], 8).is_err(), "not whole ids");
        assert!(decode(&[], 8).is_err(), "no id");
    }

    #[test]
    fn rows_keep_their_order_are_idempotent_and_forgotten_with_the_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(redb::Database::create(dir.path().join("n.redb")).unwrap());
        let ndb = NodeDb::new(db, cairn_proto::Limits::default()).unwrap();
        let (a, b) = (ConversationId([7; 32]), ConversationId([8; 32]));
        let tx = ndb.begin().unwrap();
        let links: [(&[u8; 32], &Id, &[Id]); 4] =
            [(&a.0, &id(3), &[]), (&b.0, &id(9), &[]), (&a.0, &id(1), &[id(3)]), (&a.0, &id(3), &[id(5)])];
        ndb.chain_put_in(&tx, &links).unwrap();
        ndb.set_replay_cursor_in(&tx, &a, 12).unwrap();
        tx.commit().unwrap();
        let (rows, next) = ndb.chain_page(&a, 0, 10).unwrap();
        assert_eq!(next, None);
        assert_eq!(rows, vec![Link { id: id(3), parents: vec![] }, Link { id: id(1), parents: vec![id(3)] }]);
        let (first, next) = ndb.chain_page(&a, 0, 1).unwrap();
        assert_eq!((first.len(), next), (1, Some(2)));
        assert_eq!(ndb.chain_has(&[id(1), id(9), id(4)]).unwrap(), vec![true, true, false]);
        assert_eq!(ndb.replay_cursor(&a).unwrap(), 12);

        let tx = ndb.begin().unwrap();
        ndb.chain_forget_in(&tx, &a.0).unwrap();
        tx.commit().unwrap();
        assert_eq!(ndb.chain_has(&[id(1), id(3), id(9)]).unwrap(), vec![false, false, true]);
        assert_eq!(ndb.replay_cursor(&a).unwrap(), 0);
        assert!(ndb.chain_page(&a, 0, 10).unwrap().0.is_empty());
    }
}
