//! The bridge's persistent state (redb, `DATA/bridge.redb`): transaction ids seen, the
//! inbound queue (Matrix → Cairn), the outbound queue (Cairn → Matrix), portals, Cairn read
//! cursors and small marks. Every acknowledged write is committed durably before the answer.
//!
//! Both queues are ordered by a global sequence number, so per-room order is the order of
//! arrival; both are bounded (a full inbound queue makes the homeserver retry later, a full
//! outbound queue stops reading Cairn until it drains — nothing is dropped).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::BridgeError;

const TXNS: TableDefinition<'_, &str, u64> = TableDefinition::new("txns");
const INBOX: TableDefinition<'_, u64, &str> = TableDefinition::new("inbox");
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
const PORTALS: TableDefinition<'_, &str, &str> = TableDefinition::new("portals");
const ROOMS: TableDefinition<'_, &str, &str> = TableDefinition::new("rooms");
const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");
const MARKS: TableDefinition<'_, &str, &str> = TableDefinition::new("marks");
const RELAYED: TableDefinition<'_, &str, (&str, u64)> = TableDefinition::new("relayed");

/// Events held in the inbound queue at most.
pub const INBOX_MAX: u64 = 10_000;
/// Jobs held in the outbound queue at most.
pub const OUTBOX_MAX: u64 = 10_000;
/// Transaction ids remembered at most; beyond it the oldest day is forgotten.
pub const TXNS_MAX: u64 = 100_000;
/// Relayed-message pairs remembered at most; beyond it those older than 30 days are forgotten
/// (an erasure or redaction of an older message is then announced, not mirrored).
pub const RELAYED_MAX: u64 = 200_000;
/// Longest transaction id accepted.
pub const TXN_ID_MAX: usize = 255;

fn db_err(e: impl std::fmt::Display) -> BridgeError {
    BridgeError::Storage(e.to_string())
}

/// A job for the Matrix side, in queue order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutJob {
    /// Create the portal of a conversation (once).
    Portal {
        /// Conversation id.
        conv: String,
    },
    /// A Cairn message, posted by its sender's puppet.
    Text {
        /// Conversation id.
        conv: String,
        /// Sender account.
        account: String,
        /// Sender handle.
        handle: Option<String>,
        /// Envelope id (the Matrix transaction id derives from it).
        envelope: String,
        /// Text.
        text: String,
    },
    /// A Cairn member's puppet joins the portal.
    PuppetJoin {
        /// Conversation id.
        conv: String,
        /// Account.
        account: String,
        /// Handle.
        handle: Option<String>,
    },
    /// A former Cairn member's puppet leaves the portal.
    PuppetLeave {
        /// Conversation id.
        conv: String,
        /// Account.
        account: String,
        /// Handle.
        handle: Option<String>,
    },
    /// Redact on Matrix what a Cairn message (now erased by its author) was relayed as.
    Redact {
        /// Conversation id.
        conv: String,
        /// Erased envelope id.
        envelope: String,
    },
    /// Invite a Matrix user into the portal.
    Invite {
        /// Conversation id.
        conv: String,
        /// Matrix user id.
        user: String,
    },
    /// A message by the bridge account into the Cairn conversation.
    CairnNotice {
        /// Conversation id.
        conv: String,
        /// Text.
        text: String,
    },
    /// A notice by the bridge bot into the portal.
    Notice {
        /// Conversation id.
        conv: String,
        /// Text.
        text: String,
    },
}

/// What happened to a pushed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// New: its events are queued (count).
    Accepted(usize),
    /// Seen before: nothing queued again.
    Duplicate,
    /// The inbound queue is full: the homeserver must retry later.
    Full,
}

/// The bridge's database.
#[derive(Debug)]
pub struct Db {
    db: Database,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn next_key<T: ReadableTable<u64, V>, V: redb::Value + 'static>(t: &T) -> Result<u64, BridgeError> {
    Ok(t.last().map_err(db_err)?.map(|(k, _)| k.value() + 1).unwrap_or(1))
}

/// Appends `jobs` to the outbound queue under keys that never repeat (they name Matrix
/// transactions, and the queue may drain empty).
fn push_jobs(
    out: &mut redb::Table<'_, u64, &[u8]>,
    cursors: &mut redb::Table<'_, &str, u64>,
    jobs: &[OutJob],
) -> Result<(), BridgeError> {
    let floor = cursors.get(OUT_SEQ).map_err(db_err)?.map(|v| v.value()).unwrap_or(1);
    let first = next_key(out)?.max(floor);
    let mut next = first;
    for (key, j) in (first..).zip(jobs) {
        let bytes = serde_json::to_vec(j).map_err(db_err)?;
        out.insert(key, bytes.as_slice()).map_err(db_err)?;
        next = key + 1;
    }
    cursors.insert(OUT_SEQ, next).map_err(db_err)?;
    Ok(())
}

impl Db {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Db, BridgeError> {
        let db = Database::create(path).map_err(|e| {
            BridgeError::Storage(format!(
                "opening {}: {e} (is another bridge running on it?)",
                path.display()
            ))
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(TXNS).map_err(db_err)?;
            tx.open_table(INBOX).map_err(db_err)?;
            tx.open_table(OUTBOX).map_err(db_err)?;
            tx.open_table(PORTALS).map_err(db_err)?;
            tx.open_table(ROOMS).map_err(db_err)?;
            tx.open_table(CURSORS).map_err(db_err)?;
            tx.open_table(MARKS).map_err(db_err)?;
            tx.open_table(RELAYED).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Db { db })
    }

    /// Records transaction `txn` and queues its (already validated) events, atomically; a
    /// transaction id seen before queues nothing.
    pub fn accept_txn(&self, txn: &str, events: &[String]) -> Result<TxnOutcome, BridgeError> {
        if txn.is_empty() || txn.len() > TXN_ID_MAX {
            return Err(BridgeError::Invalid(format!("transaction id must be 1-{TXN_ID_MAX} bytes")));
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        let outcome = {
            let mut txns = tx.open_table(TXNS).map_err(db_err)?;
            if txns.get(txn).map_err(db_err)?.is_some() {
                TxnOutcome::Duplicate
            } else {
                let mut inbox = tx.open_table(INBOX).map_err(db_err)?;
                if inbox.len().map_err(db_err)? + events.len() as u64 > INBOX_MAX {
                    TxnOutcome::Full
                } else {
                    let first = next_key(&inbox)?;
                    for (key, e) in (first..).zip(events) {
                        inbox.insert(key, e.as_str()).map_err(db_err)?;
                    }
                    let now = now_ms();
                    if txns.len().map_err(db_err)? >= TXNS_MAX {
                        let cutoff = now.saturating_sub(24 * 3600 * 1000);
                        txns.retain(|_, t| t > cutoff).map_err(db_err)?;
                    }
                    txns.insert(txn, now).map_err(db_err)?;
                    TxnOutcome::Accepted(events.len())
                }
            }
        };
        tx.commit().map_err(db_err)?;
        Ok(outcome)
    }

    /// The oldest queued inbound event.
    pub fn next_in(&self) -> Result<Option<(u64, String)>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(INBOX).map_err(db_err)?;
        Ok(t.first().map_err(db_err)?.map(|(k, v)| (k.value(), v.value().to_string())))
    }

    /// Removes inbound event `key` (processed) and clears a legacy in-flight mark.
    pub fn done_in(&self, key: u64) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(INBOX).map_err(db_err)?.remove(key).map_err(db_err)?;
            tx.open_table(MARKS).map_err(db_err)?.remove(INFLIGHT).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Queues outbound jobs and, in the same transaction, moves a conversation's read cursor
    /// and sets a mark (to `""`). Returns `false` (nothing written) when the queue has no room.
    pub fn queue_out(
        &self,
        cursor: Option<(&str, u64)>,
        jobs: &[OutJob],
        mark: Option<&str>,
    ) -> Result<bool, BridgeError> {
        self.queue_out_marked(cursor, jobs, mark.map(|m| (m, "")))
    }

    /// [`Db::queue_out`] setting a mark to a value.
    pub fn queue_out_marked(
        &self,
        cursor: Option<(&str, u64)>,
        jobs: &[OutJob],
        mark: Option<(&str, &str)>,
    ) -> Result<bool, BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut out = tx.open_table(OUTBOX).map_err(db_err)?;
            if out.len().map_err(db_err)? + jobs.len() as u64 > OUTBOX_MAX {
                return Ok(false);
            }
            let mut cursors = tx.open_table(CURSORS).map_err(db_err)?;
            push_jobs(&mut out, &mut cursors, jobs)?;
            if let Some((conv, seq)) = cursor {
                cursors.insert(conv, seq).map_err(db_err)?;
            }
            if let Some((m, v)) = mark {
                tx.open_table(MARKS).map_err(db_err)?.insert(m, v).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }

    /// The oldest queued outbound job (an undecodable one is reported as `None` job).
    pub fn next_out(&self) -> Result<Option<(u64, Option<OutJob>)>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(OUTBOX).map_err(db_err)?;
        Ok(t.first().map_err(db_err)?.map(|(k, v)| (k.value(), serde_json::from_slice(v.value()).ok())))
    }

    /// Removes outbound job `key` (done).
    pub fn done_out(&self, key: u64) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(OUTBOX).map_err(db_err)?.remove(key).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Queue lengths (inbound, outbound).
    pub fn queue_lens(&self) -> Result<(u64, u64), BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let i = tx.open_table(INBOX).map_err(db_err)?.len().map_err(db_err)?;
        let o = tx.open_table(OUTBOX).map_err(db_err)?.len().map_err(db_err)?;
        Ok((i, o))
    }

    /// Last Cairn message seq relayed from a conversation (0: none).
    pub fn cursor(&self, conv: &str) -> Result<u64, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CURSORS).map_err(db_err)?;
        Ok(t.get(conv).map_err(db_err)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Records a conversation's portal room (both directions).
    pub fn set_portal(&self, conv: &str, room: &str) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(PORTALS).map_err(db_err)?.insert(conv, room).map_err(db_err)?;
            tx.open_table(ROOMS).map_err(db_err)?.insert(room, conv).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Records a new portal and queues `jobs` (its notices), atomically. The queue bound is
    /// not applied: a portal is created once per conversation.
    pub fn portal_created(&self, conv: &str, room: &str, jobs: &[OutJob]) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(PORTALS).map_err(db_err)?.insert(conv, room).map_err(db_err)?;
            tx.open_table(ROOMS).map_err(db_err)?.insert(room, conv).map_err(db_err)?;
            let mut out = tx.open_table(OUTBOX).map_err(db_err)?;
            let mut cursors = tx.open_table(CURSORS).map_err(db_err)?;
            push_jobs(&mut out, &mut cursors, jobs)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The portal room of a conversation.
    pub fn portal(&self, conv: &str) -> Result<Option<String>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PORTALS).map_err(db_err)?;
        Ok(t.get(conv).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    /// The conversation bridged to a room.
    pub fn conv_of_room(&self, room: &str) -> Result<Option<String>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ROOMS).map_err(db_err)?;
        Ok(t.get(room).map_err(db_err)?.map(|v| v.value().to_string()))
    }

    /// The portal whose conversation id starts with `prefix`.
    pub fn portal_by_prefix(&self, prefix: &str) -> Result<Option<(String, String)>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PORTALS).map_err(db_err)?;
        let mut range = t.range(prefix..).map_err(db_err)?;
        match range.next().transpose().map_err(db_err)? {
            Some((k, v)) if k.value().starts_with(prefix) => {
                Ok(Some((k.value().to_string(), v.value().to_string())))
            }
            _ => Ok(None),
        }
    }

    /// Sets mark `key` to `value`.
    pub fn set_mark(&self, key: &str, value: &str) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(MARKS).map_err(db_err)?.insert(key, value).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Remembers that `key` (`m:<Matrix event id>` or `c:<Cairn envelope id>`) was relayed as
    /// `value`, to mirror a later redaction or erasure.
    pub fn relate(&self, key: &str, value: &str) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RELAYED).map_err(db_err)?;
            let now = now_ms();
            if t.len().map_err(db_err)? >= RELAYED_MAX {
                let cutoff = now.saturating_sub(30 * 24 * 3600 * 1000);
                t.retain(|_, (_, at)| at > cutoff).map_err(db_err)?;
            }
            t.insert(key, (value, now)).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// What `key` was relayed as.
    pub fn related(&self, key: &str) -> Result<Option<String>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(RELAYED).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().0.to_string()))
    }

    /// Sets several marks in one transaction.
    pub fn set_marks(&self, marks: &[(&str, &str)]) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(MARKS).map_err(db_err)?;
            for (k, v) in marks {
                t.insert(*k, *v).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Removes mark `key`.
    pub fn del_mark(&self, key: &str) -> Result<(), BridgeError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(MARKS).map_err(db_err)?.remove(key).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The value of mark `key`.
    pub fn mark(&self, key: &str) -> Result<Option<String>, BridgeError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MARKS).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_string()))
    }
}

/// Cursor entry holding the next outbound key (not a conversation id: those are hex).
const OUT_SEQ: &str = "#outbox-next";

/// Mark of the inbound event being relayed to Cairn, written by bridges before sends carried
/// an idempotency key; dropped with the next processed event.
const INFLIGHT: &str = "inflight";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn replayed_transactions_are_ignored_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        let db = Db::open(&path).unwrap();
        let evs = vec!["a".to_string(), "b".to_string()];
        assert_eq!(db.accept_txn("t1", &evs).unwrap(), TxnOutcome::Accepted(2));
        assert_eq!(db.accept_txn("t1", &evs).unwrap(), TxnOutcome::Duplicate);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.accept_txn("t1", &evs).unwrap(), TxnOutcome::Duplicate);
        assert_eq!(db.accept_txn("t2", &["c".to_string()]).unwrap(), TxnOutcome::Accepted(1));
        // In order, each once.
        let mut got = Vec::new();
        while let Some((k, e)) = db.next_in().unwrap() {
            got.push(e);
            db.done_in(k).unwrap();
        }
        assert_eq!(got, ["a", "b", "c"]);
        assert!(db.accept_txn("", &evs).is_err());
        assert!(db.accept_txn(&"x".repeat(TXN_ID_MAX + 1), &evs).is_err());
    }

    #[test]
    fn a_full_inbox_refuses_whole_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("b.redb")).unwrap();
        let many: Vec<String> = (0..INBOX_MAX).map(|i| i.to_string()).collect();
        assert_eq!(db.accept_txn("big", &many).unwrap(), TxnOutcome::Accepted(INBOX_MAX as usize));
        assert_eq!(db.accept_txn("more", &["x".to_string()]).unwrap(), TxnOutcome::Full);
        // Not recorded: the homeserver's retry is accepted once there is room.
        let (k, _) = db.next_in().unwrap().unwrap();
        db.done_in(k).unwrap();
        assert_eq!(db.accept_txn("more", &["x".to_string()]).unwrap(), TxnOutcome::Accepted(1));
    }

    #[test]
    fn outbound_jobs_and_cursor_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.redb");
        let db = Db::open(&path).unwrap();
        let j = |i: u32| OutJob::Notice { conv: "c".into(), text: i.to_string() };
        assert!(db.queue_out(Some(("c", 7)), &[j(1), j(2)], Some("m")).unwrap());
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.cursor("c").unwrap(), 7);
        assert_eq!(db.mark("m").unwrap().as_deref(), Some(""));
        let (k, first) = db.next_out().unwrap().unwrap();
        assert_eq!(first, Some(j(1)));
        db.done_out(k).unwrap();
        let (k2, second) = db.next_out().unwrap().unwrap();
        assert_eq!(second, Some(j(2)));
        db.done_out(k2).unwrap();
        assert!(db.queue_out(None, &[j(3)], None).unwrap());
        assert!(db.next_out().unwrap().unwrap().0 > k2, "keys never repeat after the queue drains");
        db.set_portal("abcdef00", "!r:hs").unwrap();
        assert_eq!(db.portal_by_prefix("abcd").unwrap(), Some(("abcdef00".into(), "!r:hs".into())));
        assert_eq!(db.portal_by_prefix("abce").unwrap(), None);
        assert_eq!(db.conv_of_room("!r:hs").unwrap().as_deref(), Some("abcdef00"));
        db.relate("m:$e", "envelope").unwrap();
        assert_eq!(db.related("m:$e").unwrap().as_deref(), Some("envelope"));
        assert_eq!(db.related("m:$other").unwrap(), None);
    }
}
