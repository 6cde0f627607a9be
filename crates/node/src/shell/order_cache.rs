//! Sequenced handshakes read ahead of the actor (issue 11 §1: no ledger round trip on it).
//!
//! The MLS client reads a conversation's commit order through `CommitSequencer::fetch`, a
//! synchronous call on the actor thread. The ledger worker already learns, one block read per
//! height, which conversation topics got handshakes; it now also reads those handshakes (a
//! proven `handshakes` query, on its own connection) and leaves them here, then tells the
//! actor. The actor's `fetch` is served from here only: what is not here is asked of the
//! ledger worker, and the actor goes on (the actor never makes a ledger round trip).
//!
//! Sans-IO: no I/O; times are passed in. The workers and the actor share it behind a mutex.
//!
//! Why this is safe: a sequenced handshake never changes once final, so an entry read ahead
//! is as true as one read now. The only thing that can age is "nothing after position n",
//! which is therefore served for [`END_FRESH_MS`] after it was read, then no more. What a
//! stale end can cost is bounded and never wrong: a commit built on it is refused as stale
//! (with a proof) and rebuilt; a handshake not seen yet is read at the next block the ledger
//! worker follows, or the next ask.

use std::collections::{HashMap, VecDeque};

use cairn_proto::Topic;
use cairn_proto::sequencer::Sequenced;

/// Conversations whose read position is kept, at most. Overflow policy: the position noted
/// longest ago is forgotten, with its entries; that conversation's order is then read on the
/// actor (as before) until it reads again.
pub const ORDER_TOPICS_MAX: usize = 4_096;
/// Handshake bytes held in all, at most. Overflow policy: a read-ahead that would pass it
/// keeps what fits and no end; the rest is read on the actor.
pub const ORDER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Handshakes the worker reads ahead per conversation and read, at most.
pub const ORDER_PAGE: usize = 64;
/// "Nothing after position n" is served this long after the ledger said it, ms: longer than
/// every retry period of a change that asked for the read (a parked call 1 s, a revocation
/// 2 s, a key update at the next 250 ms tick), so the retry finds it. While the block
/// follower runs, newer handshakes are read ahead as entries (served before the end) within
/// its poll, so the window bounds staleness only when the follower lags.
pub const END_FRESH_MS: u64 = 5_000;

/// One conversation's read position and what was read ahead of it.
#[derive(Debug, Default)]
struct TopicOrder {
    /// The position the actor reads next (the handshakes it applied).
    cursor: u64,
    /// Entries from position `cursor` on (never older ones).
    entries: VecDeque<Vec<u8>>,
    /// "Nothing after this position" as the ledger said at the read-ahead, and when (ms),
    /// served while fresh.
    end: Option<(u64, u64)>,
}

impl TopicOrder {
    fn bytes(&self) -> usize {
        self.entries.iter().map(Vec::len).sum()
    }

    /// Whether the ledger said "nothing after `at`" less than [`END_FRESH_MS`] before `now_ms`.
    fn fresh_end(&self, at: u64, now_ms: u64) -> bool {
        self.end.is_some_and(|(e, read)| e == at && now_ms.saturating_sub(read) < END_FRESH_MS)
    }

    /// Drops entries before `cursor` (they were applied).
    fn advance(&mut self, cursor: u64) -> usize {
        let mut freed = 0;
        while self.cursor < cursor {
            match self.entries.pop_front() {
                Some(e) => freed += e.len(),
                None => {
                    self.cursor = cursor;
                    break;
                }
            }
            self.cursor += 1;
        }
        if self.end.is_some_and(|(e, _)| e < self.cursor) {
            self.end = None;
        }
        freed
    }
}

/// What was served, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Entries read ahead.
    Entries,
    /// The end of the order as read ahead (served while fresh).
    End,
}

/// The read-ahead order of the node's conversations (see the module docs).
#[derive(Debug, Default)]
pub struct OrderCache {
    topics: HashMap<Topic, TopicOrder>,
    /// Topics by when their position was first noted (eviction order).
    noted: VecDeque<Topic>,
    bytes: usize,
}

impl OrderCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The actor reads `topic` from position `from`: older entries are dropped, and the
    /// worker reads ahead from there.
    pub fn note(&mut self, topic: &Topic, from: u64) {
        if let Some(t) = self.topics.get_mut(topic) {
            if from > t.cursor {
                self.bytes -= t.advance(from);
            } else if from < t.cursor {
                // A read behind what was applied (a rolled-back state): start over there.
                self.bytes -= t.bytes();
                *t = TopicOrder { cursor: from, ..TopicOrder::default() };
            }
            return;
        }
        while self.topics.len() >= ORDER_TOPICS_MAX {
            let Some(old) = self.noted.pop_front() else { break };
            if let Some(t) = self.topics.remove(&old) {
                self.bytes -= t.bytes();
            }
        }
        self.topics.insert(*topic, TopicOrder { cursor: from, ..TopicOrder::default() });
        self.noted.push_back(*topic);
    }

    /// Where the worker should read `topic` from: the first position it holds nothing for
    /// (`None`: the actor never read this topic).
    pub fn read_from(&self, topic: &Topic) -> Option<u64> {
        self.topics.get(topic).map(|t| t.cursor + t.entries.len() as u64)
    }

    /// Every noted topic with its [`read_from`](Self::read_from) position.
    pub fn all(&self) -> Vec<(Topic, u64)> {
        self.noted.iter().filter_map(|t| Some((*t, self.read_from(t)?))).collect()
    }

    /// The worker read `payloads`, the handshakes at positions `from`, `from + 1`, …;
    /// `complete` if the ledger had nothing after them (at `now_ms`). Entries the actor
    /// already passed, or that leave a hole, are dropped.
    pub fn fill(&mut self, topic: &Topic, from: u64, payloads: Vec<Vec<u8>>, complete: bool, now_ms: u64) {
        let Some(t) = self.topics.get_mut(topic) else { return };
        let mut pos = from;
        let mut whole = complete;
        for p in payloads {
            let next = t.cursor + t.entries.len() as u64;
            if pos == next {
                if self.bytes + p.len() > ORDER_BYTES_MAX {
                    whole = false;
                    break;
                }
                self.bytes += p.len();
                t.entries.push_back(p);
            } else if pos > next {
                whole = false;
                break;
            }
            pos += 1;
        }
        if whole && pos == t.cursor + t.entries.len() as u64 {
            t.end = Some((pos, now_ms));
        }
    }

    /// Forgets `topic`'s end: the next read past its entries asks the ledger worker.
    pub fn forget_end(&mut self, topic: &Topic) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.end = None;
        }
    }

    /// Whether a read of `topic` at its position would be served now (entries, or a fresh
    /// end).
    pub fn ready(&self, topic: &Topic, now_ms: u64) -> bool {
        self.topics.get(topic).is_some_and(|t| !t.entries.is_empty() || t.fresh_end(t.cursor, now_ms))
    }

    /// Serves the actor's read of `topic` from `from` (at most `max` entries), or `None`: ask
    /// the ledger worker. Notes `from` as the topic's position either way.
    pub fn take(
        &mut self,
        topic: &Topic,
        from: u64,
        max: usize,
        now_ms: u64,
    ) -> Option<(Vec<Sequenced>, Served)> {
        self.note(topic, from);
        let t = self.topics.get_mut(topic)?;
        if t.cursor != from {
            return None;
        }
        if !t.entries.is_empty() {
            let out = t
                .entries
                .iter()
                .take(max.max(1))
                .enumerate()
                .map(|(i, p)| Sequenced { topic: *topic, seq: from + i as u64, payload: p.clone() })
                .collect();
            return Some((out, Served::Entries));
        }
        if t.fresh_end(from, now_ms) {
            return Some((Vec::new(), Served::End));
        }
        t.end = None;
        None
    }

    /// Handshake bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(i: u8) -> Topic {
        Topic([i; 32])
    }

    fn payloads(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i; 10]).collect()
    }

    #[test]
    fn a_read_ahead_is_served_then_its_end_while_fresh_then_the_worker_is_asked() {
        let mut c = OrderCache::new();
        // never read: the worker has no position, the actor asks it
        assert_eq!(c.read_from(&t(1)), None);
        assert!(c.take(&t(1), 3, 10, 0).is_none());
        assert!(!c.ready(&t(1), 0));
        assert_eq!(c.read_from(&t(1)), Some(3));
        c.fill(&t(1), 3, payloads(2), true, 100);
        assert!(c.ready(&t(1), 100));
        let (got, how) = c.take(&t(1), 3, 10, 100).expect("served");
        assert_eq!(how, Served::Entries);
        assert_eq!(got.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(got[1].payload, vec![1; 10]);
        // the catch-up's next read, and any other while fresh: the end as read
        for now in [100, 600, 100 + END_FRESH_MS - 1] {
            assert_eq!(c.take(&t(1), 5, 10, now).map(|(g, h)| (g.len(), h)), Some((0, Served::End)));
            assert!(c.ready(&t(1), now));
        }
        assert_eq!(c.bytes(), 0);
        // a message from a newer epoch proves it moved: forgotten at once
        c.fill(&t(1), 5, Vec::new(), true, 100);
        assert!(c.ready(&t(1), 100));
        c.forget_end(&t(1));
        assert!(!c.ready(&t(1), 100));
        assert!(c.take(&t(1), 5, 10, 100).is_none());
        c.fill(&t(1), 5, Vec::new(), true, 100);
        // and it ages: the end may have moved
        assert!(!c.ready(&t(1), 100 + END_FRESH_MS));
        assert!(c.take(&t(1), 5, 10, 100 + END_FRESH_MS).is_none());
        assert!(c.take(&t(1), 5, 10, 100).is_none(), "a stale end is forgotten");
    }

    #[test]
    fn entries_are_served_in_pages_and_a_hole_or_a_passed_position_is_dropped() {
        let mut c = OrderCache::new();
        c.note(&t(1), 0);
        c.fill(&t(1), 0, payloads(5), true, 0);
        let (got, _) = c.take(&t(1), 0, 2, 0).expect("served");
        assert_eq!(got.len(), 2);
        let (got, _) = c.take(&t(1), 2, 2, 0).expect("served");
        assert_eq!(got[0].seq, 2);
        assert_eq!(c.read_from(&t(1)), Some(5));
        // a read-ahead that starts after a hole is not kept, and leaves no end
        c.fill(&t(1), 7, payloads(1), true, 0);
        assert_eq!(c.read_from(&t(1)), Some(5));
        // one that overlaps what is held adds only the new positions
        c.fill(&t(1), 3, payloads(4), true, 0);
        assert_eq!(c.read_from(&t(1)), Some(7));
        let (got, _) = c.take(&t(1), 6, 10, 0).expect("served");
        assert_eq!(got.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![6]);
        // the actor read the order itself past what was held
        c.note(&t(1), 9);
        assert_eq!(c.read_from(&t(1)), Some(9));
        assert_eq!(c.bytes(), 0);
        assert!(c.take(&t(1), 9, 10, 0).is_none());
    }

    #[test]
    fn a_read_behind_the_position_starts_over_and_a_partial_read_has_no_end() {
        let mut c = OrderCache::new();
        c.note(&t(2), 4);
        c.fill(&t(2), 4, payloads(3), false, 0);
        c.note(&t(2), 1);
        assert_eq!(c.read_from(&t(2)), Some(1));
        assert_eq!(c.bytes(), 0);
        c.fill(&t(2), 1, payloads(2), false, 0);
        let _ = c.take(&t(2), 1, 10, 0).expect("served");
        // no end was read: the next position asks the ledger
        assert!(c.take(&t(2), 3, 10, 0).is_none());
    }

    #[test]
    fn bytes_and_topics_are_bounded() {
        let mut c = OrderCache::new();
        c.note(&t(0), 0);
        let big = vec![vec![0u8; ORDER_BYTES_MAX / 2 + 1]; 3];
        c.fill(&t(0), 0, big, true, 0);
        assert!(c.bytes() <= ORDER_BYTES_MAX);
        assert_eq!(c.read_from(&t(0)), Some(1));
        let (_, _) = c.take(&t(0), 0, 10, 0).expect("served");
        // what did not fit left no end behind it
        assert!(c.take(&t(0), 1, 10, 0).is_none());
        for i in 0..ORDER_TOPICS_MAX + 10 {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.note(&Topic(b), 0);
        }
        assert_eq!(c.all().len(), ORDER_TOPICS_MAX);
        // the first noted were forgotten
        assert_eq!(c.read_from(&t(0)), None);
    }
}
