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
//! - **Anti-entropy by ids** (`by_ids.rs`, on by default: [`SyncConfig::resync_by_ids`]). A
//!   resync asks each store node for a page of `(cursor, id)` pairs and fetches by id only the
//!   envelopes this node lacks; the cursor kept for a store node never passes an id it listed
//!   and this node has not got. A store node that lists ids but does not serve them (or does
//!   not know the request) is paged whole envelopes for a while instead.
//!
//! Inputs carry the current time; outputs are requests for the shell to perform. Nothing here
//! does I/O, so a seeded simulation can run it through loss, delay, duplication and reordering.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use cairn_proto::{Envelope, Id, Topic};

use crate::validate::SeenIds;
use crate::wire::{IDS_PER_REQUEST_MAX, PAGE_IDS_MAX};

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
    /// Tries to find a missing ancestor before declaring a gap. Together with
    /// `gap_retry_ms` longer than a stem originator's wait for a dead hop (2 × (fail-safe
    /// 2 s + jitter 1 s), then its own push): a parent held up there is late, not lost.
    pub gap_fetch_attempts_max: u32,
    /// Delay between tries for a missing ancestor, ms.
    pub gap_retry_ms: u64,
    /// Wait before the first ask for a missing ancestor, ms (0: ask at once). A parent
    /// overtaken by its child on the way usually follows within moments; asking at once
    /// fetches it a second time. Light clients wait (see `NodeConfig::effective`).
    pub missing_first_ask_ms: u64,
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
    /// Anti-entropy by ids: page ids and fetch only the envelopes not held (`by_ids.rs`).
    /// false: page whole envelopes from every store node, as before.
    pub resync_by_ids: bool,
    /// Ids asked per page of ids (capped by the wire limit, [`PAGE_IDS_MAX`]).
    pub page_ids_max: u32,
    /// Ids listed by a store node and being fetched, at most. When full, a page of ids is read
    /// only up to the first further id not held: the cursor stops there until room is made.
    pub fetch_ids_max: usize,
    /// An id listed and asked for, not yet got, is asked again (of the next store node of its
    /// topic in turn) after this long, ms.
    pub fetch_retry_ms: u64,
    /// Asks for a listed id, at most. After them, every store node that listed it and did not
    /// serve it is paged whole envelopes (from the first id it listed and did not serve) for
    /// `whole_pages_ms`: a store node that lists but withholds cannot stall a cursor.
    pub fetch_attempts_max: u32,
    /// How long a store node is paged whole envelopes after withholding listed ids or refusing
    /// a page of ids (a node that predates the request), ms.
    pub whole_pages_ms: u64,
    /// (topic, store node) pairs paged whole envelopes, at most; when full, the pair closest
    /// to returning to ids is dropped first.
    pub whole_page_pairs_max: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            acks_required: 2,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            page_envelopes_max: 256,
            gap_fetch_attempts_max: 10,
            gap_retry_ms: 1_000,
            missing_first_ask_ms: 0,
            waiting_envelopes_max: 10_000,
            outbox_envelopes_max: 10_000,
            delivered_ids_max: 262_144,
            missing_ids_max: 65_536,
            gap_ids_max: 65_536,
            ids_per_request_max: IDS_PER_REQUEST_MAX,
            topics_max: 65_536,
            resync_by_ids: true,
            page_ids_max: PAGE_IDS_MAX,
            fetch_ids_max: 65_536,
            fetch_retry_ms: 3_000,
            fetch_attempts_max: 3,
            whole_pages_ms: 300_000,
            whole_page_pairs_max: 4_096,
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
    /// A page of a topic's ids arrived (answer to an [`Output::PageRequest`] the shell sent as
    /// a page of ids, see [`Sync::page_ids_limit`]).
    PageIds {
        /// Topic.
        topic: Topic,
        /// Store node.
        from: S,
        /// Ids with their cursors.
        entries: Vec<(u64, Id)>,
        /// Cursor of the next page, if more remain.
        next: Option<u64>,
    },
    /// A store node refused a page of ids (an error answer, or one that does not decode): it
    /// is paged whole envelopes for `whole_pages_ms`, starting now.
    PageIdsRefused {
        /// Topic.
        topic: Topic,
        /// Store node.
        from: S,
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
    /// Ask a store node for a page of a topic: of ids (`Request::PageIds`, at most the limit
    /// [`Sync::page_ids_limit`] gives) when that method says so for this topic and store node,
    /// else of whole envelopes (`Request::Page`, at most `limit`). (One variant for both so
    /// that shells written before pages of ids keep working: they page whole envelopes.)
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
    /// Ids listed by store nodes in pages of ids and not got yet; at most `fetch_ids_max`.
    fetching: HashMap<Id, by_ids::Fetch<S>>,
    /// (topic, store node) pairs paged whole envelopes, until when (ms); at most
    /// `whole_page_pairs_max`.
    whole_pages: HashMap<(Topic, S), u64>,
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
            fetching: HashMap::new(),
            whole_pages: HashMap::new(),
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
            Input::Sync { topic, stores } => self.on_sync(topic, stores, now_ms, &mut out),
            Input::Page { topic, from, entries, next } => {
                self.on_page(topic, from, entries, next, now_ms, &mut out);
            }
            Input::PageIds { topic, from, entries, next } => {
                self.on_page_ids(topic, from, entries, next, now_ms, &mut out);
            }
            Input::PageIdsRefused { topic, from } => {
                if self.page_ids_limit(&topic, &from).is_some() {
                    self.page_whole_envelopes(topic, from, now_ms, &mut out);
                }
            }
            Input::Envelopes { envelopes, .. } => self.on_envelopes(envelopes, now_ms, &mut out),
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
}

mod by_ids;
#[cfg(test)]
mod by_ids_tests;
mod receive;
mod send;
#[cfg(test)]
mod tests;
