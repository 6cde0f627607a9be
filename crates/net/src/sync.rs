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
    /// Envelopes held back waiting for their parents, at most.
    pub waiting_envelopes_max: usize,
    /// Unacknowledged sends kept, at most.
    pub outbox_envelopes_max: usize,
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
    outbox: BTreeMap<Id, Pending<S>>,
    delivered: HashSet<Id>,
    waiting: HashMap<Id, Envelope>,
    missing: HashMap<Id, Missing>,
    gaps: HashSet<Id>,
    cursors: HashMap<(Topic, S), u64>,
    topic_stores: HashMap<Topic, Vec<S>>,
    syncing: HashSet<(Topic, S)>,
}

impl<S: Clone + Eq + Hash + Ord + std::fmt::Debug> Sync<S> {
    /// A state machine that already holds `delivered` (from the local store) and resumes
    /// from `cursors`.
    pub fn new(
        config: SyncConfig,
        delivered: impl IntoIterator<Item = Id>,
        cursors: impl IntoIterator<Item = ((Topic, S), u64)>,
    ) -> Self {
        Self {
            config,
            outbox: BTreeMap::new(),
            delivered: delivered.into_iter().collect(),
            waiting: HashMap::new(),
            missing: HashMap::new(),
            gaps: HashSet::new(),
            cursors: cursors.into_iter().collect(),
            topic_stores: HashMap::new(),
            syncing: HashSet::new(),
        }
    }

    /// Records envelopes already handed to the application (e.g. found in local history after
    /// a restart), so they are never delivered again.
    pub fn mark_delivered(&mut self, ids: impl IntoIterator<Item = Id>) {
        self.delivered.extend(ids);
    }

    /// Sets the resume cursor of `topic` at `store` (loaded from disk by the shell); never
    /// moves a cursor backwards.
    pub fn set_cursor(&mut self, topic: Topic, store: S, cursor: u64) {
        let c = self.cursors.entry((topic, store)).or_insert(0);
        *c = (*c).max(cursor);
    }

    /// Status of every envelope not yet stored on enough nodes.
    pub fn pending(&self) -> Vec<(Id, SendStatus)> {
        self.outbox.iter().filter(|(_, p)| !p.stored).map(|(id, p)| (*id, Self::status_of(p))).collect()
    }

    /// Topics of own envelopes not yet stored on enough store nodes (a node publishes on topics
    /// it does not read, e.g. its key packages: these need store targets too).
    pub fn unstored_topics(&self) -> BTreeSet<Topic> {
        self.outbox.values().filter(|p| !p.stored).map(|p| p.envelope.header.topic).collect()
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
            Input::Send { envelope, stores } => self.on_send(envelope, stores, now_ms, &mut out),
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

    fn on_send(&mut self, envelope: Envelope, stores: Vec<S>, now_ms: u64, out: &mut Vec<Output<S>>) {
        let id = envelope.id();
        self.delivered.insert(id);
        if self.outbox.contains_key(&id) {
            return;
        }
        // Bound the outbox: forget the oldest *stored* entries first; never drop unstored ones
        // silently (the caller sees the bound through `pending()` and back-pressure).
        while self.outbox.len() >= self.config.outbox_envelopes_max {
            let Some(old) = self.outbox.iter().find(|(_, p)| p.stored).map(|(id, _)| *id) else { break };
            self.outbox.remove(&old);
        }
        for s in &stores {
            out.push(Output::StoreRequest { to: s.clone(), envelope: envelope.clone() });
        }
        let p = Pending {
            envelope,
            stores,
            acked: HashSet::new(),
            attempt: 1,
            retry_at_ms: now_ms + self.config.retry_initial_ms,
            stored: false,
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
        for s in &stores {
            let from = self.cursors.get(&(topic, s.clone())).copied().unwrap_or(0);
            self.syncing.insert((topic, s.clone()));
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
        let mut cursor = self.cursors.get(&(topic, from.clone())).copied().unwrap_or(0);
        for (seq, e) in entries {
            if e.header.topic != topic {
                continue; // a store node answering with another topic's mail: ignore it
            }
            cursor = cursor.max(seq + 1);
            self.receive(e, now_ms, out);
        }
        if let Some(n) = next {
            cursor = cursor.max(n);
        }
        self.cursors.insert((topic, from.clone()), cursor);
        out.push(Output::Cursor { topic, store: from.clone(), cursor });
        match next {
            Some(n) => out.push(Output::PageRequest {
                to: from,
                topic,
                from: n,
                limit: self.config.page_envelopes_max,
            }),
            None => {
                self.syncing.remove(&(topic, from));
            }
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
            self.deliver(e, id, false, out);
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
            self.missing
                .insert(p, Missing { topic, attempts: 1, retry_at_ms: now_ms + self.config.gap_retry_ms });
            ask.push(p);
        }
        self.ask_ids(topic, ask, out);
    }

    fn ask_ids(&self, topic: Topic, ids: Vec<Id>, out: &mut Vec<Output<S>>) {
        if ids.is_empty() {
            return;
        }
        for s in self.topic_stores.get(&topic).into_iter().flatten() {
            out.push(Output::IdsRequest { to: s.clone(), ids: ids.clone() });
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

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Output<S>>) {
        // Retry unstored sends with exponential back-off, to targets that have not acked.
        for (id, p) in self.outbox.iter_mut() {
            if p.stored || p.retry_at_ms > now_ms {
                continue;
            }
            p.attempt += 1;
            let backoff = self.config.retry_initial_ms.saturating_mul(1 << p.attempt.min(16));
            p.retry_at_ms = now_ms + backoff.min(self.config.retry_max_ms);
            for s in p.stores.iter().filter(|s| !p.acked.contains(*s)) {
                out.push(Output::StoreRequest { to: s.clone(), envelope: p.envelope.clone() });
            }
            out.push(Output::Status { id: *id, status: Self::status_of(p) });
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
