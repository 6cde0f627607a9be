//! Receiving: pages from store nodes, gossip, missing ancestors fetched by id, delivery in
//! causal order exactly once, and the tick that retries and gives up.

use std::collections::HashMap;
use std::hash::Hash;

use cairn_proto::{Envelope, Id, Topic};

use super::{Missing, Output, Sync};
use crate::wire::IDS_PER_REQUEST_MAX;

impl<S: Clone + Eq + Hash + Ord + std::fmt::Debug> Sync<S> {
    pub(super) fn on_sync(&mut self, topic: Topic, stores: Vec<S>, now_ms: u64, out: &mut Vec<Output<S>>) {
        if !self.topic_stores.contains_key(&topic) && self.topic_stores.len() >= self.config.topics_max {
            return; // bounded: see `topics_max`
        }
        // Store nodes paged whole envelopes for a while are asked for ids again once it is over.
        self.whole_pages.retain(|_, until| *until > now_ms);
        // Cursors at former targets were persisted by the shell (`Output::Cursor`): forget them.
        if let Some(m) = self.cursors.get_mut(&topic) {
            m.retain(|s, _| stores.contains(s));
        }
        for s in &stores {
            let from = self.cursor(&topic, s);
            out.push(Output::PageRequest {
                to: s.clone(),
                topic,
                from,
                limit: self.config.page_envelopes_max,
            });
        }
        self.topic_stores.insert(topic, stores);
    }

    pub(super) fn on_page(
        &mut self,
        topic: Topic,
        from: S,
        entries: Vec<(u64, Envelope)>,
        next: Option<u64>,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        if !self.topic_stores.contains_key(&topic) {
            return; // not a topic we follow (answer to a request from before a bound applied)
        }
        let mut cursor = self.cursor(&topic, &from);
        for (seq, e) in entries {
            if e.header.topic != topic {
                continue; // a store node answering with another topic's mail: ignore it
            }
            cursor = cursor.max(seq.saturating_add(1));
            let id = e.id();
            self.receive(e, now_ms, out);
            if self.waiting.contains_key(&id) {
                self.waiting_at.insert(id, (topic, from.clone(), seq));
            }
        }
        if let Some(n) = next {
            cursor = cursor.max(n);
        }
        self.cursors.entry(topic).or_default().insert(from.clone(), cursor);
        let durable = self.durable_cursor(&topic, &from);
        out.push(Output::Cursor { topic, store: from.clone(), cursor: durable });
        if let Some(n) = next {
            out.push(Output::PageRequest { to: from, topic, from: n, limit: self.config.page_envelopes_max });
        }
    }

    pub(super) fn receive(&mut self, e: Envelope, now_ms: u64, out: &mut Vec<Output<S>>) {
        let id = e.id();
        if self.delivered.contains(&id) || self.waiting.contains_key(&id) {
            return; // exactly once
        }
        self.missing.remove(&id);
        // Listed by a store node in a page of ids: got now. If it waits for its parents below,
        // the first store node that listed it holds its cursor there instead.
        let listed = self.fetching.remove(&id);
        let absent: Vec<Id> = e
            .header
            .parents
            .iter()
            .filter(|p| !self.delivered.contains(p) && !self.gaps.contains(p))
            .copied()
            .collect();
        if absent.is_empty() {
            // A parent given up on earlier is a gap for this child too: flagged like the
            // children released when it was declared (it may still arrive, after them).
            let gap = e.header.parents.iter().any(|p| !self.delivered.contains(p));
            self.deliver(e, id, gap, out);
            return;
        }
        if self.waiting.len() >= self.config.waiting_envelopes_max {
            // Full buffer: deliver now, flagged, rather than drop or grow without bound.
            out.push(Output::Deliver { envelope: e, id, after_gap: true });
            self.delivered.insert(id);
            return;
        }
        let topic = e.header.topic;
        self.waiting.insert(id, e);
        if let Some((store, seq)) = listed.and_then(|f| f.at.into_iter().next()) {
            self.waiting_at.insert(id, (topic, store, seq));
        }
        let mut ask = Vec::new();
        for p in absent {
            if self.waiting.contains_key(&p) || self.missing.contains_key(&p) {
                continue;
            }
            if self.missing.len() >= self.config.missing_ids_max {
                // Bounded: not tracked, so a gap now; the child is released at the next tick.
                self.gaps.insert(p);
                continue;
            }
            let first = self.config.missing_first_ask_ms;
            if first == 0 {
                self.missing.insert(
                    p,
                    Missing { topic, attempts: 1, retry_at_ms: now_ms + self.config.gap_retry_ms },
                );
                ask.push(p);
            } else {
                // Asked by the tick once `first` has passed, if it has not come by then.
                self.missing.insert(p, Missing { topic, attempts: 0, retry_at_ms: now_ms + first });
            }
        }
        self.ask_ids(topic, ask, out);
    }

    /// Asks every store node of `topic` for `ids`, in requests of at most
    /// `ids_per_request_max` ids (a store node refuses a longer request as a whole).
    pub(super) fn ask_ids(&self, topic: Topic, ids: Vec<Id>, out: &mut Vec<Output<S>>) {
        let chunk = self.config.ids_per_request_max.clamp(1, IDS_PER_REQUEST_MAX);
        for s in self.topic_stores.get(&topic).into_iter().flatten() {
            for part in ids.chunks(chunk) {
                out.push(Output::IdsRequest { to: s.clone(), ids: part.to_vec() });
            }
        }
    }

    /// Delivers `e` and then every waiting envelope it unblocks (iteratively, no recursion).
    pub(super) fn deliver(&mut self, e: Envelope, id: Id, after_gap: bool, out: &mut Vec<Output<S>>) {
        let mut ready = vec![(e, id, after_gap)];
        while let Some((e, id, after_gap)) = ready.pop() {
            if !self.delivered.insert(id) {
                continue;
            }
            out.push(Output::Deliver { envelope: e, id, after_gap });
            let unblocked: Vec<Id> = self
                .waiting
                .iter()
                .filter(|(_, w)| w.header.parents.contains(&id))
                .filter(|(_, w)| {
                    w.header.parents.iter().all(|p| self.delivered.contains(p) || self.gaps.contains(p))
                })
                .map(|(wid, _)| *wid)
                .collect();
            for wid in unblocked {
                if let Some(w) = self.waiting.remove(&wid) {
                    let gap = w.header.parents.iter().any(|p| self.gaps.contains(p));
                    ready.push((w, wid, gap));
                }
            }
        }
    }

    /// The cursor to persist for `topic` at `store`: the read cursor, held back at the first
    /// envelope from there waiting for its parents (held only in memory) and at the first id
    /// that store listed and this node has not got, so a restart reads them again.
    pub(super) fn durable_cursor(&mut self, topic: &Topic, store: &S) -> u64 {
        let waiting = &self.waiting;
        self.waiting_at.retain(|id, _| waiting.contains_key(id));
        let held = self
            .waiting_at
            .values()
            .filter(|(t, s, _)| t == topic && s == store)
            .map(|(_, _, seq)| *seq)
            .min();
        let cursor = self.cursor(topic, store);
        let cursor = held.map_or(cursor, |h| cursor.min(h));
        self.first_unfetched(topic, store).map_or(cursor, |f| cursor.min(f))
    }

    pub(super) fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output<S>>) {
        self.retry_fetches(now_ms, out);
        // Retry unstored sends with exponential back-off, to targets that have not acked.
        for (id, p) in self.outbox.iter_mut() {
            if p.stored || p.retry_at_ms > now_ms {
                continue;
            }
            p.held = false;
            Self::retry(&self.config, id, p, now_ms, out);
        }
        // Re-ask for missing ancestors; give up after the limit and release the children.
        let mut again: HashMap<Topic, Vec<Id>> = HashMap::new();
        let mut given_up = Vec::new();
        for (id, m) in self.missing.iter_mut() {
            if m.retry_at_ms > now_ms {
                continue;
            }
            if m.attempts >= self.config.gap_fetch_attempts_max {
                given_up.push(*id);
                continue;
            }
            m.attempts += 1;
            m.retry_at_ms = now_ms + self.config.gap_retry_ms;
            again.entry(m.topic).or_default().push(*id);
        }
        for (topic, ids) in again {
            self.ask_ids(topic, ids, out);
        }
        for id in given_up {
            self.missing.remove(&id);
            self.gaps.insert(id);
        }
        if !self.gaps.is_empty() {
            let released: Vec<Id> = self
                .waiting
                .iter()
                .filter(|(_, w)| {
                    w.header.parents.iter().all(|p| self.delivered.contains(p) || self.gaps.contains(p))
                })
                .map(|(id, _)| *id)
                .collect();
            for id in released {
                if let Some(w) = self.waiting.remove(&id) {
                    self.deliver(w, id, true, out);
                }
            }
        }
    }
}
