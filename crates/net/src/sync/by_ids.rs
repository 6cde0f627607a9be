//! Anti-entropy by ids: a store node answers a resync with a page of `(cursor, id)` pairs
//! (`Request::PageIds`), and only the envelopes this node does not hold are fetched by id
//! (`Request::Ids`, as for missing ancestors). Whole-envelope pages downloaded every envelope
//! gossip had already brought once more from each store node of its topic.
//!
//! The rules that keep it lossless:
//! - A store node's cursor, as persisted, never passes an id that store node listed and this
//!   node has not got (`first_unfetched`): a lost answer, a restart or a lie costs a re-read,
//!   never an envelope.
//! - An id not got within `fetch_retry_ms` is asked again, of the next store node of its
//!   topic in turn (one copy per ask, not one per store node); after `fetch_attempts_max` asks, every store node that listed it is paged whole envelopes
//!   from the first id it listed and did not serve, for `whole_pages_ms`. So a store node that
//!   lists ids but withholds the envelopes cannot stall a cursor: it is read as before.
//! - A store node that refuses a page of ids (one that predates the request) is paged whole
//!   envelopes at once, for `whole_pages_ms`.

use std::collections::HashMap;
use std::hash::Hash;

use cairn_proto::{Envelope, Id, Topic};

use super::{Output, Sync};
use crate::wire::{IDS_PER_REQUEST_MAX, PAGE_IDS_MAX};

/// Store nodes remembered as having listed one id, at most (a topic has `replicas` of them;
/// a further one is not remembered, so its cursor is not held at that id).
const LISTED_BY_MAX: usize = 8;

/// An id listed in a page of ids and not got yet.
#[derive(Debug)]
pub(super) struct Fetch<S> {
    /// The topic it was listed under.
    pub(super) topic: Topic,
    /// The store nodes that listed it, with its cursor there (≤ [`LISTED_BY_MAX`]); the first
    /// is the one asked first.
    pub(super) at: Vec<(S, u64)>,
    /// When it was last asked for, ms.
    asked_ms: u64,
    /// Asks made.
    attempts: u32,
}

impl<S: Clone + Eq + Hash + Ord + std::fmt::Debug> Sync<S> {
    /// How the shell should send an [`Output::PageRequest`] to `store` for `topic`:
    /// `Some(limit)`: as a page of at most `limit` ids (`Request::PageIds`); `None`: as a page of
    /// whole envelopes (`Request::Page` with the output's limit) — by-ids is off, or this store
    /// node withheld listed ids or refused a page of ids lately.
    pub fn page_ids_limit(&self, topic: &Topic, store: &S) -> Option<u32> {
        let by_ids = self.config.resync_by_ids && !self.whole_pages.contains_key(&(*topic, store.clone()));
        by_ids.then(|| self.config.page_ids_max.clamp(1, PAGE_IDS_MAX))
    }

    /// Ids listed by store nodes and being fetched.
    pub fn fetching_len(&self) -> usize {
        self.fetching.len()
    }

    /// A page of ids from `from`: fetch what is not held, move the read cursor, ask the next.
    pub(super) fn on_page_ids(
        &mut self,
        topic: Topic,
        from: S,
        entries: Vec<(u64, Id)>,
        next: Option<u64>,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        if !self.topic_stores.contains_key(&topic) || self.page_ids_limit(&topic, &from).is_none() {
            // Not followed, or an answer from before this store node was switched to whole
            // pages (its cursor was moved back then: this answer must not move it on).
            return;
        }
        let mut cursor = self.cursor(&topic, &from);
        let mut want = Vec::new();
        let mut full = false;
        for (seq, id) in entries {
            if self.delivered.contains(&id) {
                // held already
            } else if self.waiting.contains_key(&id) {
                self.waiting_at.entry(id).or_insert((topic, from.clone(), seq));
            } else if let Some(f) = self.fetching.get_mut(&id) {
                if f.at.len() < LISTED_BY_MAX && !f.at.iter().any(|(s, _)| *s == from) {
                    f.at.push((from.clone(), seq));
                }
            } else if self.fetching.len() >= self.config.fetch_ids_max {
                full = true; // bounded: read no further; the cursor stops before this id
                break;
            } else {
                self.fetching.insert(
                    id,
                    Fetch { topic, at: vec![(from.clone(), seq)], asked_ms: now_ms, attempts: 1 },
                );
                want.push(id);
            }
            cursor = cursor.max(seq.saturating_add(1));
        }
        let next = next.filter(|_| !full);
        if let Some(n) = next {
            cursor = cursor.max(n);
        }
        self.cursors.entry(topic).or_default().insert(from.clone(), cursor);
        self.ask_of(&from, &want, out);
        let durable = self.durable_cursor(&topic, &from);
        out.push(Output::Cursor { topic, store: from.clone(), cursor: durable });
        if let Some(n) = next {
            out.push(Output::PageRequest { to: from, topic, from: n, limit: self.config.page_envelopes_max });
        }
    }

    /// Envelopes asked for by id (listed ids, or missing ancestors). One whose id was listed
    /// under another topic is dropped: the id commits to the topic, so the listing was false.
    pub(super) fn on_envelopes(&mut self, envelopes: Vec<Envelope>, now_ms: u64, out: &mut Vec<Output<S>>) {
        let mut moved: Vec<(Topic, S)> = Vec::new();
        for e in envelopes {
            let id = e.id();
            if let Some(f) = self.fetching.get(&id) {
                for (s, _) in &f.at {
                    if !moved.iter().any(|(t, m)| *t == f.topic && m == s) {
                        moved.push((f.topic, s.clone()));
                    }
                }
                if f.topic != e.header.topic {
                    self.fetching.remove(&id);
                    continue;
                }
            }
            self.receive(e, now_ms, out);
        }
        // The persisted cursors held at those ids may move on now.
        for (topic, store) in moved {
            if self.topic_stores.contains_key(&topic) {
                let cursor = self.durable_cursor(&topic, &store);
                out.push(Output::Cursor { topic, store, cursor });
            }
        }
    }

    /// The smallest cursor of an id `store` listed for `topic` that this node has not got.
    pub(super) fn first_unfetched(&self, topic: &Topic, store: &S) -> Option<u64> {
        self.fetching
            .values()
            .filter(|f| f.topic == *topic)
            .filter_map(|f| f.at.iter().find(|(s, _)| s == store).map(|(_, seq)| *seq))
            .min()
    }

    /// At the tick: asks again for listed ids not got in `fetch_retry_ms`, each of the next
    /// store node of its topic in turn (after the one that listed it first); past `fetch_attempts_max` asks, pages the store nodes that listed them
    /// whole envelopes instead.
    pub(super) fn retry_fetches(&mut self, now_ms: u64, out: &mut Vec<Output<S>>) {
        if self.fetching.is_empty() {
            return;
        }
        let retry_ms = self.config.fetch_retry_ms;
        let mut again: HashMap<S, Vec<Id>> = HashMap::new();
        let mut withheld: Vec<(Topic, S)> = Vec::new();
        for (id, f) in self.fetching.iter_mut() {
            if now_ms < f.asked_ms.saturating_add(retry_ms) {
                continue;
            }
            if f.attempts >= self.config.fetch_attempts_max {
                for (s, _) in &f.at {
                    if !withheld.iter().any(|(t, w)| *t == f.topic && w == s) {
                        withheld.push((f.topic, s.clone()));
                    }
                }
                continue;
            }
            f.attempts += 1;
            f.asked_ms = now_ms;
            let Some(stores) = self.topic_stores.get(&f.topic).filter(|s| !s.is_empty()) else { continue };
            let first = f.at.first().and_then(|(l, _)| stores.iter().position(|s| s == l)).unwrap_or(0);
            let to = &stores[(first + f.attempts as usize - 1) % stores.len()];
            again.entry(to.clone()).or_default().push(*id);
        }
        let mut again: Vec<(S, Vec<Id>)> = again.into_iter().collect();
        again.sort_by(|a, b| a.0.cmp(&b.0)); // deterministic order (the simulation replays it)
        for (to, mut ids) in again {
            ids.sort_unstable_by_key(|id| id.0);
            self.ask_of(&to, &ids, out);
        }
        withheld.sort();
        for (topic, store) in withheld {
            self.page_whole_envelopes(topic, store, now_ms, out);
        }
    }

    /// Pages `store` whole envelopes for `topic` from now for `whole_pages_ms`: its read cursor
    /// moves back to the first id it listed and this node has not got (those ids stop holding
    /// it), and a page of whole envelopes is asked from there at once.
    pub(super) fn page_whole_envelopes(
        &mut self,
        topic: Topic,
        store: S,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        if self.whole_pages.len() >= self.config.whole_page_pairs_max.max(1) {
            // Bounded: drop the pair closest to returning to ids.
            let first = self.whole_pages.iter().min_by_key(|(_, until)| **until).map(|(k, _)| k.clone());
            if let Some(k) = first {
                self.whole_pages.remove(&k);
            }
        }
        self.whole_pages.insert((topic, store.clone()), now_ms.saturating_add(self.config.whole_pages_ms));
        let back = self.first_unfetched(&topic, &store);
        for f in self.fetching.values_mut().filter(|f| f.topic == topic) {
            f.at.retain(|(s, _)| *s != store);
        }
        self.fetching.retain(|_, f| !f.at.is_empty());
        if let Some(back) = back {
            let c = self.cursors.entry(topic).or_default().entry(store.clone()).or_insert(0);
            *c = (*c).min(back);
        }
        if self.topic_stores.get(&topic).is_some_and(|s| s.contains(&store)) {
            let from = self.cursor(&topic, &store);
            out.push(Output::PageRequest { to: store, topic, from, limit: self.config.page_envelopes_max });
        }
    }

    /// Asks `store` for `ids`, in requests of at most `ids_per_request_max` ids.
    fn ask_of(&self, store: &S, ids: &[Id], out: &mut Vec<Output<S>>) {
        for part in ids.chunks(self.config.ids_per_request_max.clamp(1, IDS_PER_REQUEST_MAX)) {
            out.push(Output::IdsRequest { to: store.clone(), ids: part.to_vec() });
        }
    }
}
