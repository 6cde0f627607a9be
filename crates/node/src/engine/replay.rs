//! Start-up of a conversation: its chain is read back from `node.redb` (no plaintext is
//! opened), and only the local history after its replay cursor is read again (a stop
//! between the mesh's delivery and the engine's read, or an envelope held unreadable). The
//! durable flush moves the cursors over what was settled since (see [`crate::chain_store`]).

use cairn_mls::ConversationId;
use cairn_proto::Id;

use super::Engine;
use super::receive::Arrival;
use crate::chain_store::CHAIN_PAGE_ROWS;
use crate::error::NodeError;

/// Topic-log entries examined per page at start.
pub const REPLAY_IDS_PAGE: usize = 1_024;

/// Topic-log entries one flush examines per conversation at most when it moves the cursor
/// (the rest at the next).
pub const CURSOR_SCAN_MAX: usize = 4_096;

/// Topic-log entries read per page when the cursor moves (most flushes need one page).
const CURSOR_SCAN_PAGE: usize = 256;

/// Pages a start reads per conversation at most (chain rows, then topic-log ids): a bound on
/// the loop far above any history the node keeps (2^20 pages of 1,024).
const PAGES_MAX: usize = 1 << 20;

/// What the starts of this engine read (summed over conversations and starts): a start
/// after a restart reads every chain row, and from the local history only what came after
/// the replay cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Chain rows read back.
    pub chain_rows: u64,
    /// Topic-log entries looked at (after the cursors).
    pub entries_examined: u64,
    /// Envelopes read from the local history (entries without a chain row).
    pub envelopes_read: u64,
}

fn store_err(e: cairn_store::StoreError) -> NodeError {
    NodeError::Storage(e.to_string())
}

impl Engine {
    /// Rebuilds the conversation's chain from its rows, then reads every envelope of its
    /// local history after the replay cursor that has no chain row (not read yet, or held).
    pub(super) fn replay_history(
        &mut self,
        conv: ConversationId,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<(), NodeError> {
        self.restore_chain(conv)?;
        let topic = conv.topic();
        // A history that lost its tail in a crash ends before the cursor: replay from its end.
        let end = self.history.topic_len(&topic).map_err(store_err)?;
        let mut from = self.db.replay_cursor(&conv)?.min(end);
        for _ in 0..PAGES_MAX {
            let (entries, next) = self.history.ids_page(&topic, from, REPLAY_IDS_PAGE).map_err(store_err)?;
            let ids: Vec<Id> = entries.iter().map(|(_, id)| *id).collect();
            let settled = self.db.chain_has(&ids)?;
            self.replay_stats.entries_examined += ids.len() as u64;
            let mut unread = Vec::new();
            let mut backfill = Vec::new();
            for (id, settled) in ids.into_iter().zip(settled) {
                if settled {
                    continue;
                }
                let Some(envelope) = self.history.get(&id).map_err(store_err)? else { continue };
                self.replay_stats.envelopes_read += 1;
                match self.db.plain(&id)? {
                    // Read before its chain row existed (a node.redb from before the chain
                    // table): into the chain, and its row written now.
                    Some(bytes) => {
                        self.known(conv, id, &bytes, now_ms);
                        backfill.push((id, envelope.header.parents));
                    }
                    None => unread.push(Arrival { id, envelope, after_gap: false }),
                }
            }
            if !backfill.is_empty() {
                let tx = self.db.begin_lazy()?;
                let links: Vec<(&[u8; 32], &Id, &[Id])> =
                    backfill.iter().map(|(id, ps)| (&conv.0, id, ps.as_slice())).collect();
                self.db.chain_put_in(&tx, &links)?;
                tx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
                self.lazy_commits += 1;
            }
            if !unread.is_empty() {
                self.receive_conv(conv, unread, seq, now_ms);
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        self.cursor_dirty.insert(conv);
        Ok(())
    }

    /// Puts the conversation's recorded chain back into the core, in the order it was learned.
    fn restore_chain(&mut self, conv: ConversationId) -> Result<(), NodeError> {
        let mut from = 0;
        for _ in 0..PAGES_MAX {
            let (links, next) = self.db.chain_page(&conv, from, CHAIN_PAGE_ROWS)?;
            self.replay_stats.chain_rows += links.len() as u64;
            for l in links {
                self.core.restore_link(conv, l.id, &l.parents);
            }
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(())
    }

    /// What the starts of this engine read so far.
    pub fn replay_stats(&self) -> ReplayStats {
        self.replay_stats
    }

    /// Records the envelopes the core proved to be history by structure, and moves the
    /// replay cursor of each conversation settled since the last call over every topic-log
    /// entry that has a chain row, up to the first that has none. One transaction without an
    /// fsync (made durable by the next durable commit; a crash rolls it back with nothing
    /// lost: the next start replays from the older cursor).
    pub(super) fn advance_replay_cursors(&mut self) -> Result<(), NodeError> {
        let proven = self.core.take_proven();
        if proven.is_empty() && self.cursor_dirty.is_empty() {
            return Ok(());
        }
        let mut convs = std::mem::take(&mut self.cursor_dirty);
        convs.extend(proven.iter().map(|(c, _)| *c));
        let r = self.advance_in(&proven, &convs);
        if r.is_err() {
            // Tried again at the next flush (the core's chain already holds the proven ones).
            self.cursor_dirty.extend(convs);
        }
        r
    }

    fn advance_in(
        &mut self,
        proven: &[(ConversationId, Id)],
        convs: &std::collections::BTreeSet<ConversationId>,
    ) -> Result<(), NodeError> {
        let tx = self.db.begin_lazy()?;
        let links: Vec<(&[u8; 32], &Id, &[Id])> = proven.iter().map(|(c, id)| (&c.0, id, &[][..])).collect();
        self.db.chain_put_in(&tx, &links)?;
        let mut moved = false;
        for conv in convs {
            let cursor = self.db.replay_cursor_in(&tx, conv)?;
            let to = self.settled_until(&tx, conv, cursor)?;
            if to > cursor {
                self.db.set_replay_cursor_in(&tx, conv, to)?;
                moved = true;
            }
        }
        if !moved && proven.is_empty() {
            return tx.abort().map_err(|e| NodeError::Storage(e.to_string()));
        }
        tx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
        self.lazy_commits += 1;
        Ok(())
    }

    /// The position of the first topic-log entry from `cursor` on without a chain row as `tx`
    /// sees it (or the log's end), looking at [`CURSOR_SCAN_MAX`] entries at most (past it
    /// the conversation is looked at again at the next flush).
    fn settled_until(
        &mut self,
        tx: &redb::WriteTransaction,
        conv: &ConversationId,
        cursor: u64,
    ) -> Result<u64, NodeError> {
        let topic = conv.topic();
        let mut at = cursor;
        for _ in 0..CURSOR_SCAN_MAX / CURSOR_SCAN_PAGE {
            let (entries, next) = self.history.ids_page(&topic, at, CURSOR_SCAN_PAGE).map_err(store_err)?;
            let ids: Vec<Id> = entries.iter().map(|(_, id)| *id).collect();
            let settled = self.db.chain_has_in(tx, &ids)?;
            if let Some(((seq, _), _)) = entries.iter().zip(&settled).find(|(_, s)| !**s) {
                return Ok(*seq);
            }
            match next {
                Some(n) => at = n,
                None => return Ok(entries.last().map_or(at, |(seq, _)| seq + 1)),
            }
        }
        self.cursor_dirty.insert(*conv);
        Ok(at)
    }
}
