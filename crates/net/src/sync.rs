//! The mailbox and delivery state machine (sans-IO).
//!
//! One [`Sync`] per node drives both directions:
//! - **Sending.** An envelope is pushed to the `k` store nodes nearest its topic. It counts as
//!   *stored* only once `acks_required` distinct store nodes acknowledged it durably; until then
//!   it is retried with exponential back-off and its status says so. No silent loss, no false
//!   "stored".
//! - **Receiving.** On subscribe and on every reconnect the node pages each topic from its last
//!   cursor at each store node, takes gossip as it comes, fetches missing ancestors named by
//!   parent links ("the envelopes with these ids"), and hands each envelope to the application
//!   exactly once, after its parents (causal order). An ancestor that cannot be found after
//!   `gap_fetch_attempts_max` tries is declared a gap; the children are then delivered flagged.
//!
//! Inputs carry the current time; outputs are requests for the shell to perform. Nothing here
//! does I/O, so a seeded simulation can run it through loss, delay, duplication and reordering.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use cairn_proto::{Envelope, Id, Topic};

use crate::validate::SeenIds;
use crate::wire::IDS_PER_REQUEST_MAX;

/// Sync settings; units in names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Distinct durable store acknowledgements for an envelope to count as stored.
    pub acks_required: usize,
    /// First retry delay, ms.
    pub retry_initial_ms: u64,
    /// Longest retry delay, ms.
    pub retry_max_ms: u64,
    /// Envelopes asked per history page.
    pub page_envelopes_max: u32,
    /// Tries to find a missing ancestor before declaring a gap.
    pub gap_fetch_attempts_max: u32,
    /// Delay between tries for a missing ancestor, ms.
    pub gap_retry_ms: u64,
    /// Envelopes held back waiting for their parents, at most. When full, a new envelope
    /// with absent parents is delivered at once, flagged `after_gap`, instead of waiting.
    pub waiting_envelopes_max: usize,
    /// Unacknowledged sends kept, at most. When full, the oldest *stored* entries are
    /// forgotten; unstored ones never are: [`Sync::outbox_has_room`] turns false and the shell
    /// refuses new publications until acknowledgements make room.
    pub outbox_envelopes_max: usize,
    /// Ids remembered as delivered (exactly-once filter), at most; the oldest are forgotten
    /// first (FIFO). An envelope whose id was forgotten may be handed out again: the shell
    /// drops such a repeat because its local history already holds it.
    pub delivered_ids_max: usize,
    /// Ancestors being fetched, at most. When full, a further missing ancestor is declared a
    /// gap at once (its children are delivered flagged) rather than tracked.
    pub missing_ids_max: usize,
    /// Ids remembered as declared gaps, at most (FIFO). A forgotten gap that is named again
    /// is simply looked for again.
    pub gap_ids_max: usize,
    /// Ids asked of a store node in one request, at most (also capped by the wire limit,
    /// [`IDS_PER_REQUEST_MAX`]); a longer list is split into several requests.
    pub ids_per_request_max: usize,
    /// Topics followed (with store targets and resume cursors), at most. A `Sync` for a
    /// further topic is ignored; the shell refuses such a subscription before it gets here.
    pub topics_max: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            acks_required: 2,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            page_envelopes_max: 256,
            gap_fetch_attempts_max: 5,
            gap_retry_ms: 1_000,
            waiting_envelopes_max: 10_000,
            outbox_envelopes_max: 10_000,
            delivered_ids_max: 262_144,
            missing_ids_max: 65_536,
            gap_ids_max: 65_536,
            ids_per_request_max: IDS_PER_REQUEST_MAX,
            topics_max: 65_536,
        }
    }
}

/// Where a sent envelope stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Handed to the network; no durable acknowledgement yet.
    Sent,
    /// Acknowledged durably by this many distinct store nodes (≥ `acks_required`).
    Stored {
        /// Distinct acknowledgements.
        acks: usize,
    },
    /// Not yet stored on enough nodes; retrying.
    Retrying {
        /// Distinct acknowledgements so far.
        acks: usize,
        /// Attempts made.
        attempt: u32,
    },
}

/// What the shell tells the state machine.
#[derive(Debug, Clone)]
pub enum Input<S> {
    /// The application sends `envelope`; `stores` are the store nodes nearest its topic.
    Send {
        /// Envelope to send.
        envelope: Envelope,
        /// Target store nodes.
        stores: Vec<S>,
    },
    /// As `Send`, for an own envelope the local history does not hold yet (its parents are
    /// missing there): pushed the same way, but delivered like a received one, after its
    /// parents, when the mesh brings it back.
    SendUnwritten {
        /// Envelope to send.
        envelope: Envelope,
        /// Target store nodes.
        stores: Vec<S>,
    },
    /// As `Send` (or `SendUnwritten` when `written` is false), for an envelope handed to the
    /// stem phase: nothing is pushed to the store nodes before `until_ms` (a stem hop pushes
    /// it and the shell feeds its store nodes' receipts as [`Input::StoreAck`]); from then on,
    /// or from an [`Input::Release`], the unacknowledged store nodes get it directly as usual.
    SendHeld {
        /// Envelope to send.
        envelope: Envelope,
        /// Target store nodes.
        stores: Vec<S>,
        /// The local history holds it (as `Send`); false: as `SendUnwritten`.
        written: bool,
        /// No direct push before this time, ms.
        until_ms: u64,
    },
    /// The stem did not store a held send: push it to its unacknowledged store nodes now.
    Release {
        /// Envelope id.
        id: Id,
    },
    /// A store node acknowledged an envelope durably.
    StoreAck {
        /// Envelope id.
        id: Id,
        /// Store node.
        from: S,
    },
    /// A store request failed (timeout, refusal, disconnect).
    StoreFailed {
        /// Envelope id.
        id: Id,
        /// Store node.
        from: S,
    },
    /// Subscribe to (or, on reconnect, resync) a topic from these store nodes.
    Sync {
        /// Topic.
        topic: Topic,
        /// Store nodes nearest the topic.
        stores: Vec<S>,
    },
    /// A page of history arrived.
    Page {
        /// Topic.
        topic: Topic,
        /// Store node.
        from: S,
        /// Envelopes with their cursors.
        entries: Vec<(u64, Envelope)>,
        /// Cursor of the next page, if more remain.
        next: Option<u64>,
    },
    /// Envelopes asked for by id arrived (possibly fewer than asked).
    Envelopes {
        /// Store node.
        from: S,
        /// Envelopes found.
        envelopes: Vec<Envelope>,
    },
    /// An envelope arrived by gossip (already admitted).
    Gossip {
        /// Envelope.
        envelope: Envelope,
    },
    /// The store nodes for `topic` changed (one appeared or died): unstored sends of that
    /// topic also target the new ones, and later gap requests go to them.
    Targets {
        /// Topic.
        topic: Topic,
        /// Store nodes nearest the topic now.
        stores: Vec<S>,
    },
    /// Time passed.
    Tick,
}

/// What the state machine asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<S> {
    /// Ask a store node to keep an envelope.
    StoreRequest {
        /// Store node.
        to: S,
        /// Envelope.
        envelope: Envelope,
    },
    /// Ask a store node for a page of a topic.
    PageRequest {
        /// Store node.
        to: S,
        /// Topic.
        topic: Topic,
        /// Cursor to start from.
        from: u64,
        /// Page size.
        limit: u32,
    },
    /// Ask a store node for envelopes by id.
    IdsRequest {
        /// Store node.
        to: S,
        /// Ids wanted.
        ids: Vec<Id>,
    },
    /// Hand an envelope to the application (exactly once, after its parents).
    Deliver {
        /// Envelope.
        envelope: Envelope,
        /// Its id.
        id: Id,
        /// True if an ancestor could not be found (declared gap).
        after_gap: bool,
    },
    /// A sent envelope's status changed.
    Status {
        /// Envelope id.
        id: Id,
        /// New status.
        status: SendStatus,
    },
    /// Persist this cursor (resume point for a topic at a store node).
    Cursor {
        /// Topic.
        topic: Topic,
        /// Store node.
        store: S,
        /// Next cursor.
        cursor: u64,
    },
}

#[derive(Debug)]
struct Pending<S> {
    envelope: Envelope,
    stores: Vec<S>,
    acked: HashSet<S>,
    attempt: u32,
    retry_at_ms: u64,
    stored: bool,
    /// Handed to the stem: no direct push until `retry_at_ms` or a release.
    held: bool,
}

#[derive(Debug)]
struct Missing {
    topic: Topic,
    attempts: u32,
    retry_at_ms: u64,
}

/// The state machine. `S` identifies a store node (a peer id in the shell).
#[derive(Debug)]
pub struct Sync<S> {
    config: SyncConfig,
    /// Bounded by `outbox_envelopes_max` (see there).
    outbox: BTreeMap<Id, Pending<S>>,
    /// Bounded by `delivered_ids_max`, FIFO.
    delivered: SeenIds,
    /// Bounded by `waiting_envelopes_max`.
    waiting: HashMap<Id, Envelope>,
    /// Bounded by `missing_ids_max`.
    missing: HashMap<Id, Missing>,
    /// Bounded by `gap_ids_max`, FIFO.
    gaps: SeenIds,
    /// Resume cursor per topic and store node. At most `topics_max` topics; per topic only
    /// the current targets are kept (the shell persisted the others and reloads them).
    cursors: HashMap<Topic, HashMap<S, u64>>,
    /// Store nodes per followed topic; at most `topics_max` topics.
    topic_stores: HashMap<Topic, Vec<S>>,
    /// Where each envelope waiting for its parents was paged from (topic, store, cursor): the
    /// persisted cursor never passes one, so a restart pages it again rather than skip it (it
    /// is held only in memory). Pruned to `waiting`'s keys at each page.
    waiting_at: HashMap<Id, (Topic, S, u64)>,
}

impl<S: Clone + Eq + Hash + Ord + std::fmt::Debug> Sync<S> {
    /// A state machine that already holds `delivered` (from the local store) and resumes
    /// from `cursors`.
    pub fn new(
        config: SyncConfig,
        delivered: impl IntoIterator<Item = Id>,
        cursors: impl IntoIterator<Item = ((Topic, S), u64)>,
    ) -> Self {
        let mut s = Self {
            config,
            outbox: BTreeMap::new(),
            delivered: SeenIds::new(config.delivered_ids_max),
            waiting: HashMap::new(),
            missing: HashMap::new(),
            gaps: SeenIds::new(config.gap_ids_max),
            cursors: HashMap::new(),
            topic_stores: HashMap::new(),
            waiting_at: HashMap::new(),
        };
        s.mark_delivered(delivered);
        for ((topic, store), c) in cursors {
            s.set_cursor(topic, store, c);
        }
        s
    }

    /// Records envelopes already handed to the application (e.g. found in local history after
    /// a restart), so they are never delivered again.
    pub fn mark_delivered(&mut self, ids: impl IntoIterator<Item = Id>) {
        for id in ids {
            self.delivered.insert(id);
        }
    }

    /// Sets the resume cursor of `topic` at `store` (loaded from disk by the shell); never
    /// moves a cursor backwards.
    pub fn set_cursor(&mut self, topic: Topic, store: S, cursor: u64) {
        if !self.cursors.contains_key(&topic) && self.cursors.len() >= self.config.topics_max {
            return; // bounded: a topic beyond `topics_max` is not followed
        }
        let c = self.cursors.entry(topic).or_default().entry(store).or_insert(0);
        *c = (*c).max(cursor);
    }

    fn cursor(&self, topic: &Topic, store: &S) -> u64 {
        self.cursors.get(topic).and_then(|m| m.get(store)).copied().unwrap_or(0)
    }

    /// True while a new send can be taken: the outbox is below `outbox_envelopes_max` or holds
    /// a stored entry that can be forgotten. The shell refuses publications otherwise.
    pub fn outbox_has_room(&self) -> bool {
        self.outbox.len() < self.config.outbox_envelopes_max || self.outbox.values().any(|p| p.stored)
    }

    /// Status of every envelope not yet stored on enough nodes.
    pub fn pending(&self) -> Vec<(Id, SendStatus)> {
        self.outbox.iter().filter(|(_, p)| !p.stored).map(|(id, p)| (*id, Self::status_of(p))).collect()
    }

    /// The topic of an own envelope still in the outbox.
    pub fn topic_of(&self, id: &Id) -> Option<Topic> {
        self.outbox.get(id).map(|p| p.envelope.header.topic)
    }

    /// Topics of own envelopes not yet stored on enough store nodes (a node publishes on topics
    /// it does not read, e.g. its key packages: these need store targets too).
    pub fn unstored_topics(&self) -> BTreeSet<Topic> {
        self.outbox.values().filter(|p| !p.stored).map(|p| p.envelope.header.topic).collect()
    }

    /// The store nodes an own envelope still in the outbox targets.
    pub fn targets(&self, id: &Id) -> Option<&[S]> {
        self.outbox.get(id).map(|p| p.stores.as_slice())
    }

    /// True if an own envelope is in the outbox and not yet stored on enough store nodes.
    pub fn is_unstored(&self, id: &Id) -> bool {
        self.outbox.get(id).is_some_and(|p| !p.stored)
    }

    /// Envelopes held back for missing parents.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// True if the envelope was already handed to the application.
    pub fn is_delivered(&self, id: &Id) -> bool {
        self.delivered.contains(id)
    }

    fn status_of(p: &Pending<S>) -> SendStatus {
        if p.stored {
            SendStatus::Stored { acks: p.acked.len() }
        } else if p.attempt <= 1 {
            SendStatus::Sent
        } else {
            SendStatus::Retrying { acks: p.acked.len(), attempt: p.attempt }
        }
    }

    /// Feeds one input at `now_ms`; returns the actions to perform.
    pub fn handle(&mut self, input: Input<S>, now_ms: u64) -> Vec<Output<S>> {
        let mut out = Vec::new();
        match input {
            Input::Send { envelope, stores } => {
                self.delivered.insert(envelope.id());
                self.on_send(envelope, stores, None, now_ms, &mut out);
            }
            Input::SendUnwritten { envelope, stores } => {
                self.on_send(envelope, stores, None, now_ms, &mut out)
            }
            Input::SendHeld { envelope, stores, written, until_ms } => {
                if written {
                    self.delivered.insert(envelope.id());
                }
                self.on_send(envelope, stores, Some(until_ms), now_ms, &mut out);
            }
            Input::Release { id } => {
                if let Some(p) = self.outbox.get_mut(&id)
                    && p.held
                    && !p.stored
                {
                    p.held = false;
                    Self::retry(&self.config, &id, p, now_ms, &mut out);
                }
            }
            Input::StoreAck { id, from } => self.on_ack(id, from, &mut out),
            Input::StoreFailed { id, from } => {
                // Retried at the next tick after back-off; nothing to do now but note it.
                if let Some(p) = self.outbox.get_mut(&id)
                    && !p.acked.contains(&from)
                {
                    p.retry_at_ms = p.retry_at_ms.min(now_ms + self.config.retry_initial_ms);
                }
            }
            Input::Sync { topic, stores } => self.on_sync(topic, stores, &mut out),
            Input::Page { topic, from, entries, next } => {
                self.on_page(topic, from, entries, next, now_ms, &mut out);
            }
            Input::Envelopes { envelopes, .. } => {
                for e in envelopes {
                    self.receive(e, now_ms, &mut out);
                }
            }
            Input::Gossip { envelope } => self.receive(envelope, now_ms, &mut out),
            Input::Targets { topic, stores } => {
                for p in self.outbox.values_mut().filter(|p| !p.stored && p.envelope.header.topic == topic) {
                    for s in &stores {
                        if !p.stores.contains(s) {
                            p.stores.push(s.clone());
                            if p.held {
                                continue; // the stem's fluffing hop pushes it
                            }
                            out.push(Output::StoreRequest { to: s.clone(), envelope: p.envelope.clone() });
                        }
                    }
                }
                if self.topic_stores.contains_key(&topic) {
                    self.topic_stores.insert(topic, stores);
                }
            }
            Input::Tick => self.on_tick(now_ms, &mut out),
        }
        out
    }

    fn on_send(
        &mut self,
        envelope: Envelope,
        stores: Vec<S>,
        held_until_ms: Option<u64>,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        let id = envelope.id();
        if self.outbox.contains_key(&id) {
            return;
        }
        // Bound the outbox: forget the oldest *stored* entries first; never drop unstored ones
        // silently (the caller sees the bound through `pending()` and back-pressure).
        while self.outbox.len() >= self.config.outbox_envelopes_max {
            let Some(old) = self.outbox.iter().find(|(_, p)| p.stored).map(|(id, _)| *id) else { break };
            self.outbox.remove(&old);
        }
        if held_until_ms.is_none() {
            for s in &stores {
                out.push(Output::StoreRequest { to: s.clone(), envelope: envelope.clone() });
            }
        }
        let p = Pending {
            envelope,
            stores,
            acked: HashSet::new(),
            attempt: 1,
            retry_at_ms: held_until_ms.unwrap_or(now_ms + self.config.retry_initial_ms),
            stored: false,
            held: held_until_ms.is_some(),
        };
        out.push(Output::Status { id, status: Self::status_of(&p) });
        self.outbox.insert(id, p);
    }

    fn on_ack(&mut self, id: Id, from: S, out: &mut Vec<Output<S>>) {
        let Some(p) = self.outbox.get_mut(&id) else { return };
        if !p.stores.contains(&from) || !p.acked.insert(from) {
            return; // unsolicited or repeated acknowledgement: counts once, from targets only
        }
        if p.acked.len() >= self.config.acks_required || p.stored {
            p.stored = true;
            out.push(Output::Status { id, status: Self::status_of(p) });
        }
    }

    fn on_sync(&mut self, topic: Topic, stores: Vec<S>, out: &mut Vec<Output<S>>) {
        if !self.topic_stores.contains_key(&topic) && self.topic_stores.len() >= self.config.topics_max {
            return; // bounded: see `topics_max`
        }
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

    fn on_page(
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
            cursor = cursor.max(seq + 1);
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
        let waiting = &self.waiting;
        self.waiting_at.retain(|id, _| waiting.contains_key(id));
        let held = self
            .waiting_at
            .values()
            .filter(|(t, s, _)| *t == topic && *s == from)
            .map(|(_, _, seq)| *seq)
            .min();
        let durable = held.map_or(cursor, |h| cursor.min(h));
        out.push(Output::Cursor { topic, store: from.clone(), cursor: durable });
        if let Some(n) = next {
            out.push(Output::PageRequest { to: from, topic, from: n, limit: self.config.page_envelopes_max });
        }
    }

    fn receive(&mut self, e: Envelope, now_ms: u64, out: &mut Vec<Output<S>>) {
        let id = e.id();
        if self.delivered.contains(&id) || self.waiting.contains_key(&id) {
            return; // exactly once
        }
        self.missing.remove(&id);
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
            self.missing
                .insert(p, Missing { topic, attempts: 1, retry_at_ms: now_ms + self.config.gap_retry_ms });
            ask.push(p);
        }
        self.ask_ids(topic, ask, out);
    }

    /// Asks every store node of `topic` for `ids`, in requests of at most
    /// `ids_per_request_max` ids (a store node refuses a longer request as a whole).
    fn ask_ids(&self, topic: Topic, ids: Vec<Id>, out: &mut Vec<Output<S>>) {
        let chunk = self.config.ids_per_request_max.clamp(1, IDS_PER_REQUEST_MAX);
        for s in self.topic_stores.get(&topic).into_iter().flatten() {
            for part in ids.chunks(chunk) {
                out.push(Output::IdsRequest { to: s.clone(), ids: part.to_vec() });
            }
        }
    }

    /// Delivers `e` and then every waiting envelope it unblocks (iteratively, no recursion).
    fn deliver(&mut self, e: Envelope, id: Id, after_gap: bool, out: &mut Vec<Output<S>>) {
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

    /// Pushes an unstored send again to its unacknowledged store nodes, backing off.
    fn retry(config: &SyncConfig, id: &Id, p: &mut Pending<S>, now_ms: u64, out: &mut Vec<Output<S>>) {
        p.attempt += 1;
        let backoff = config.retry_initial_ms.saturating_mul(1 << p.attempt.min(16));
        p.retry_at_ms = now_ms + backoff.min(config.retry_max_ms);
        for s in p.stores.iter().filter(|s| !p.acked.contains(*s)) {
            out.push(Output::StoreRequest { to: s.clone(), envelope: p.envelope.clone() });
        }
        out.push(Output::Status { id: *id, status: Self::status_of(p) });
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output<S>>) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use cairn_proto::Limits;
    use cairn_proto::envelope::pad;

    fn envelope(topic: Topic, i: u64, parents: Vec<Id>) -> Envelope {
        let body = pad(format!("m{i}").as_bytes(), &Limits::default()).unwrap();
        Envelope::new(topic, i, 3600, parents, body)
    }

    /// A store node that, like the real one, refuses a request naming more ids than the wire
    /// allows; `None` stands for that refusal.
    fn answer(store: &HashMap<Id, Envelope>, ids: &[Id]) -> Option<Vec<Envelope>> {
        (ids.len() <= IDS_PER_REQUEST_MAX).then(|| ids.iter().filter_map(|i| store.get(i).cloned()).collect())
    }

    #[test]
    fn a_held_send_is_pushed_only_after_its_stem_deadline_or_a_release() {
        let t = Topic([3; 32]);
        let reqs = |o: &[Output<u8>]| o.iter().filter(|o| matches!(o, Output::StoreRequest { .. })).count();
        let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
        let (a, b) = (envelope(t, 1, vec![]), envelope(t, 2, vec![]));
        let stores = vec![0, 1, 2];
        let held = |e: &Envelope| Input::SendHeld {
            envelope: e.clone(),
            stores: stores.clone(),
            written: true,
            until_ms: 5_000,
        };
        assert_eq!(reqs(&s.handle(held(&a), 0)), 0, "held: no direct push");
        assert_eq!(reqs(&s.handle(held(&b), 0)), 0);
        let new_target = Input::Targets { topic: t, stores: vec![3] };
        assert_eq!(reqs(&s.handle(new_target, 10)), 0, "nor to a new target");
        // The stem brought two receipts for `a`: stored, never pushed by the sender.
        s.handle(Input::StoreAck { id: a.id(), from: 0 }, 20);
        let out = s.handle(Input::StoreAck { id: a.id(), from: 1 }, 20);
        assert!(out.contains(&Output::Status { id: a.id(), status: SendStatus::Stored { acks: 2 } }));
        assert_eq!(reqs(&s.handle(Input::Tick, 4_999)), 0);
        // `b`'s stem failed: a release pushes it to its four targets, once.
        assert_eq!(reqs(&s.handle(Input::Release { id: b.id() }, 100)), 4);
        assert_eq!(reqs(&s.handle(Input::Release { id: b.id() }, 100)), 0);
        // A third one nobody released is pushed at its deadline.
        let c = envelope(t, 3, vec![]);
        s.handle(held(&c), 0);
        let of_c =
            |o: &Output<u8>| matches!(o, Output::StoreRequest { envelope, .. } if envelope.id() == c.id());
        assert!(!s.handle(Input::Tick, 4_000).iter().any(of_c));
        let out = s.handle(Input::Tick, 5_000);
        assert!(out.iter().any(of_c));
        assert!(s.is_delivered(&c.id()), "written: counts as delivered like a Send");
    }

    #[test]
    fn the_persisted_cursor_never_passes_an_envelope_held_for_its_parents() {
        // Found by the SIGKILL test: a page's child waiting for a missing parent lived only in
        // memory while the saved cursor moved past it; a restart then never paged it again.
        let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
        let t = Topic([9; 32]);
        s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
        let parent = envelope(t, 1, vec![]);
        let child = envelope(t, 2, vec![parent.id()]);
        let last = envelope(t, 3, vec![]);
        let entries = vec![(10, child.clone()), (11, last)];
        let out = s.handle(Input::Page { topic: t, from: 0, entries, next: None }, 0);
        let cursor = out.iter().find_map(|o| match o {
            Output::Cursor { cursor, .. } => Some(*cursor),
            _ => None,
        });
        assert_eq!(cursor, Some(10), "the saved cursor stops at the held child (seq 10)");
        // Once the parent arrives the child is delivered, and the next page moves the cursor on.
        let out = s.handle(Input::Envelopes { from: 0, envelopes: vec![parent] }, 0);
        assert!(out.iter().any(|o| matches!(o, Output::Deliver { id, .. } if *id == child.id())));
        let out = s.handle(Input::Page { topic: t, from: 0, entries: vec![], next: None }, 0);
        let cursor = out.iter().find_map(|o| match o {
            Output::Cursor { cursor, .. } => Some(*cursor),
            _ => None,
        });
        assert_eq!(cursor, Some(12));
    }

    #[test]
    fn a_gap_of_more_than_one_request_of_ancestors_is_fetched_completely() {
        let cfg = SyncConfig { gap_retry_ms: 10, gap_fetch_attempts_max: 3, ..SyncConfig::default() };
        let mut s: Sync<u8> = Sync::new(cfg, [], []);
        let t = Topic([7; 32]);
        s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
        // 25 children with 16 distinct missing parents each: 400 ancestors, all at the store.
        let parents_max = 16;
        let roots: Vec<Envelope> = (0..25 * parents_max).map(|i| envelope(t, i, vec![])).collect();
        let store: HashMap<Id, Envelope> = roots.iter().map(|e| (e.id(), e.clone())).collect();
        let children: Vec<Envelope> = roots
            .chunks(parents_max as usize)
            .enumerate()
            .map(|(i, c)| envelope(t, 10_000 + i as u64, c.iter().map(Envelope::id).collect()))
            .collect();
        // The first asks are lost; the retry at the next tick names all 400 ids at once.
        for c in &children {
            s.handle(Input::Gossip { envelope: c.clone() }, 0);
        }
        assert!(store.len() > IDS_PER_REQUEST_MAX);
        let mut delivered: Vec<(Id, bool)> = Vec::new();
        let mut requests = 0;
        let mut outs = s.handle(Input::Tick, 20);
        while !outs.is_empty() {
            let mut next = Vec::new();
            for o in outs {
                match o {
                    Output::IdsRequest { to, ids } => {
                        requests += 1;
                        assert!(ids.len() <= IDS_PER_REQUEST_MAX, "request of {} ids", ids.len());
                        let found = answer(&store, &ids).expect("the store refused a request");
                        next.extend(s.handle(Input::Envelopes { from: to, envelopes: found }, 21));
                    }
                    Output::Deliver { id, after_gap, .. } => delivered.push((id, after_gap)),
                    _ => {}
                }
            }
            outs = next;
        }
        assert!(requests >= 2, "400 ids need at least two requests");
        assert_eq!(delivered.len(), roots.len() + children.len(), "every ancestor and child delivered");
        assert!(delivered.iter().all(|(_, gap)| !gap), "no gap declared");
        let unique: HashSet<Id> = delivered.iter().map(|(id, _)| *id).collect();
        assert_eq!(unique.len(), delivered.len(), "exactly once");
        assert_eq!(s.waiting_len(), 0);
    }

    #[test]
    fn the_delivered_filter_is_bounded() {
        let cfg = SyncConfig { delivered_ids_max: 8, ..SyncConfig::default() };
        let mut s: Sync<u8> = Sync::new(cfg, [], []);
        let t = Topic([8; 32]);
        let ids: Vec<Id> = (0..100).map(|i| envelope(t, i, vec![]).id()).collect();
        s.mark_delivered(ids.iter().copied());
        assert_eq!(s.delivered.len(), 8, "FIFO keeps the newest 8");
        assert!(s.is_delivered(&ids[99]) && !s.is_delivered(&ids[0]));
    }

    #[test]
    fn missing_ancestors_beyond_the_bound_become_gaps_at_once() {
        let cfg = SyncConfig { missing_ids_max: 4, gap_retry_ms: 10, ..SyncConfig::default() };
        let mut s: Sync<u8> = Sync::new(cfg, [], []);
        let t = Topic([9; 32]);
        s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
        let parents: Vec<Id> = (0..10).map(|i| envelope(t, i, vec![]).id()).collect();
        let child = envelope(t, 99, parents);
        let outs = s.handle(Input::Gossip { envelope: child.clone() }, 0);
        let asked: usize =
            outs.iter().map(|o| if let Output::IdsRequest { ids, .. } = o { ids.len() } else { 0 }).sum();
        assert_eq!(asked, 4, "only `missing_ids_max` ancestors are tracked");
        assert!(s.missing.len() <= 4);
    }

    #[test]
    fn a_child_of_a_parent_given_up_on_earlier_is_flagged_after_a_gap() {
        let cfg = SyncConfig { gap_fetch_attempts_max: 1, gap_retry_ms: 10, ..SyncConfig::default() };
        let mut s: Sync<u8> = Sync::new(cfg, [], []);
        let t = Topic([7; 32]);
        s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
        let lost = envelope(t, 1, vec![]);
        let first = envelope(t, 2, vec![lost.id()]);
        let later = envelope(t, 3, vec![lost.id()]);
        let flag_of = |outs: &[Output<u8>], id: Id| {
            outs.iter().find_map(|o| match o {
                Output::Deliver { id: d, after_gap, .. } if *d == id => Some(*after_gap),
                _ => None,
            })
        };
        assert_eq!(flag_of(&s.handle(Input::Gossip { envelope: first.clone() }, 0), first.id()), None);
        let outs = s.handle(Input::Tick, 100);
        assert_eq!(flag_of(&outs, first.id()), Some(true), "released when its parent is given up");
        let outs = s.handle(Input::Gossip { envelope: later.clone() }, 200);
        assert_eq!(
            flag_of(&outs, later.id()),
            Some(true),
            "a later child of the same gap is delivered flagged too, not as if its parent were here"
        );
        let outs = s.handle(Input::Gossip { envelope: lost.clone() }, 300);
        assert_eq!(flag_of(&outs, lost.id()), Some(false), "the late parent itself is still delivered");
    }
}
