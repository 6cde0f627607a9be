//! The node's decisions, as a pure state machine: `Core::handle(Input, now_ms) -> Vec<Effect>`.
//!
//! The core owns what a user node decides about its conversations: the hash-link chain (the
//! parents of the next message, the head to anchor), which envelopes are held in quarantine
//! and which are discarded, when receipts go out and for which messages, which members a
//! delivery waits for and its state, when to anchor, and when to apply newly sequenced
//! commits. It reads no clock, no disk and no socket, and draws no randomness: the shell
//! (`engine` for MLS and the local tables, `shell` for the mesh and the ledger) feeds it what
//! happened and performs the effects it returns. The same inputs always give the same
//! effects, which is what lets `tests/sim.rs` run many users from one seed.
//!
//! Every map is bounded by a field of [`CoreConfig`] with its unit and overflow policy.

pub mod chain;
pub mod delivery;
pub mod quarantine;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_mls::ConversationId;
use cairn_proto::{AccountId, DeviceId, Id};

use self::chain::Chain;
use self::delivery::{Deliveries, Delivery};
use self::quarantine::{Hold, Quarantine};
use crate::model::DeliveryView;

/// Limits and schedules of the core (all bounds name their unit).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Receipt batches of a conversation are at least this many ms apart. (Receipts go to the
    /// sender alone, so their cost is linear in the group: no pacing by group size is needed.)
    pub receipt_every_ms: u64,
    /// Ids per receipt message.
    pub receipt_ids_max: usize,
    /// Receipts owed per conversation. Overflow policy: the batch goes out at once, whatever
    /// the pace (a receipt is never dropped).
    pub receipts_due_max: usize,
    /// A member anchors its conversation head on the ledger at most this often, ms.
    pub anchor_every_ms: u64,
    /// An anchor submission not answered within this many ms is given up (and retried later).
    pub anchor_deadline_ms: u64,
    /// Sent messages whose delivery is tracked. Overflow: see [`Deliveries`].
    pub deliveries_max: usize,
    /// Unreadable envelopes held per conversation. Overflow: see [`Quarantine`].
    pub quarantine_envelopes_max: usize,
    /// How long an unreadable envelope is held before it is discarded, ms.
    pub quarantine_ms: u64,
    /// Parents named by a message.
    pub parents_max: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            receipt_every_ms: 1_000,
            receipt_ids_max: 128,
            receipts_due_max: 4_096,
            anchor_every_ms: 5_000,
            anchor_deadline_ms: 15_000,
            deliveries_max: 100_000,
            quarantine_envelopes_max: 1_024,
            quarantine_ms: 10 * 60 * 1000,
            parents_max: 8,
        }
    }
}

/// Why an envelope of a conversation could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Sent in an epoch this device has not reached (or MLS's buffer was full).
    FutureEpoch,
    /// Sent in an epoch whose keys this device never had or no longer has (e.g. before it
    /// joined): kept as structure only if an accepted message proves it is history.
    TooOld,
    /// Does not open: not a message of this group, or tampered with.
    Junk,
}

/// What happened, as the shell tells the core.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed (the shell's timer).
    Tick,
    /// The ledger's finalized height, as last seen.
    Ledger {
        /// Height.
        height: u64,
    },
    /// A conversation's membership or epoch changed (or it was loaded at start).
    Conversation {
        /// Conversation.
        conv: ConversationId,
        /// MLS epoch.
        epoch: u64,
        /// Whether this device is a member.
        active: bool,
        /// Member accounts other than this one.
        others: BTreeSet<AccountId>,
        /// Member devices (all accounts).
        devices: u32,
    },
    /// An envelope of another member was opened and verified; its plaintext is stored.
    Accepted {
        /// Conversation.
        conv: ConversationId,
        /// Envelope id.
        id: Id,
        /// Its parents.
        parents: Vec<Id>,
        /// The sending account.
        from: AccountId,
        /// The sending device (a receipt goes to it).
        device: DeviceId,
        /// The MLS epoch it was sent in (the receipt is sealed for that epoch).
        epoch: u64,
        /// Whether it is a text message (owed a receipt).
        text: bool,
    },
    /// An envelope of a conversation did not open.
    Unreadable {
        /// Conversation.
        conv: ConversationId,
        /// Envelope id.
        id: Id,
        /// Parents named in its header (unproven).
        parents: Vec<Id>,
        /// Why.
        why: Unreadable,
    },
    /// This device sent an envelope (stored locally before it left).
    Sent {
        /// Conversation.
        conv: ConversationId,
        /// Envelope id.
        id: Id,
        /// Its parents.
        parents: Vec<Id>,
        /// Whether it is a text message (its delivery is tracked).
        text: bool,
    },
    /// Store nodes acknowledged a sent envelope.
    StoreAcks {
        /// Envelope id.
        id: Id,
        /// Distinct acknowledgements so far.
        acks: u32,
    },
    /// A member's device receipted messages.
    Receipt {
        /// The receipting account.
        from: AccountId,
        /// Message ids.
        ids: Vec<Id>,
    },
    /// An anchor submission ended.
    AnchorDone {
        /// Conversation.
        conv: ConversationId,
        /// The ancestry count it recorded.
        count: u64,
        /// Whether the ledger finalized it.
        ok: bool,
    },
}

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A sent message's delivery state changed: tell API listeners.
    Delivery {
        /// Conversation.
        conv: ConversationId,
        /// Envelope id.
        id: Id,
        /// New state.
        view: DeliveryView,
    },
    /// Send a receipt for these messages to the device that sent them.
    SendReceipt {
        /// Conversation.
        conv: ConversationId,
        /// The sending device.
        to: DeviceId,
        /// The epoch they were sent in.
        epoch: u64,
        /// Message ids (at most `receipt_ids_max`).
        ids: Vec<Id>,
    },
    /// Record the conversation head on the ledger, giving up at `deadline_ms`.
    Anchor {
        /// Conversation.
        conv: ConversationId,
        /// Head.
        head: Id,
        /// Envelopes in its ancestry, itself included.
        count: u64,
        /// When to give up, ms.
        deadline_ms: u64,
    },
    /// Apply the conversation's newly sequenced commits.
    SyncLedger {
        /// Conversation.
        conv: ConversationId,
    },
    /// Delete these envelopes from the local history (junk, or held too long).
    Discard {
        /// Conversation.
        conv: ConversationId,
        /// Envelope ids.
        ids: Vec<Id>,
    },
    /// Try to open these held envelopes again (a new epoch was reached).
    Reopen {
        /// Conversation.
        conv: ConversationId,
        /// Envelope ids.
        ids: Vec<Id>,
    },
}

/// A receipt owed.
#[derive(Debug, Clone, Copy)]
struct Due {
    id: Id,
    to: DeviceId,
    epoch: u64,
}

/// One conversation as the core sees it.
#[derive(Debug, Default, Clone)]
struct Conv {
    epoch: u64,
    active: bool,
    others: BTreeSet<AccountId>,
    /// `others` as the sorted list sends wait for (shared by their deliveries).
    waiting: Arc<[AccountId]>,
    devices: u32,
    chain: Chain,
    quarantine: Quarantine,
    receipts_due: Vec<Due>,
    last_receipt_ms: u64,
    anchored: u64,
    last_anchor_ms: u64,
    anchor_in_flight: Option<u64>,
}

/// The node's decision core.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    convs: BTreeMap<ConversationId, Conv>,
    deliveries: Deliveries,
    ledger_height: Option<u64>,
    /// Envelopes that entered a chain as history by structure only (held unreadable, then
    /// named as an ancestor), for the engine to record (see `crate::chain_store`). Bounded:
    /// an id enters it at most once (it is then in the chain, which no later input changes),
    /// and the engine empties it with [`Core::take_proven`] at every durable flush.
    proven: Vec<(ConversationId, Id)>,
}

impl Core {
    /// A core with no conversations.
    pub fn new(cfg: CoreConfig) -> Self {
        let deliveries = Deliveries::new(cfg.deliveries_max);
        Self { cfg, convs: BTreeMap::new(), deliveries, ledger_height: None, proven: Vec::new() }
    }

    /// Its configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The parents of this device's next message in `conv`.
    pub fn parents_for(&self, conv: &ConversationId) -> Vec<Id> {
        self.convs.get(conv).map(|c| c.chain.parents_for_next(self.cfg.parents_max)).unwrap_or_default()
    }

    /// Drops a forgotten conversation's chain, buffers and schedule.
    pub fn forget(&mut self, conv: &ConversationId) {
        self.convs.remove(conv);
    }

    /// Whether `id` is part of `conv`'s chain (accepted here or proven history).
    pub fn knows(&self, conv: &ConversationId, id: &Id) -> bool {
        self.convs.get(conv).is_some_and(|c| c.chain.contains(id))
    }

    /// Whether `account` is another member of `conv` (as the last membership input said).
    pub fn is_other_member(&self, conv: &ConversationId, account: &AccountId) -> bool {
        self.convs.get(conv).is_some_and(|c| c.others.contains(account))
    }

    /// Whether `id` is held in `conv`'s quarantine.
    pub fn holds(&self, conv: &ConversationId, id: &Id) -> bool {
        self.convs.get(conv).is_some_and(|c| c.quarantine.contains(id))
    }

    /// Ids held in `conv`'s quarantine.
    pub fn held_ids(&self, conv: &ConversationId) -> Vec<Id> {
        self.convs.get(conv).map(|c| c.quarantine.ids()).unwrap_or_default()
    }

    /// Envelopes held in `conv`'s quarantine.
    pub fn held(&self, conv: &ConversationId) -> usize {
        self.convs.get(conv).map_or(0, |c| c.quarantine.len())
    }

    /// The delivery state of a sent message, if still tracked.
    pub fn delivery(&self, id: &Id) -> Option<DeliveryView> {
        self.deliveries.get(id).map(Delivery::view)
    }

    /// The newest `max` tracked delivery states of sent messages in `conv`.
    pub fn deliveries(&self, conv: &ConversationId, max: usize) -> Vec<(Id, DeliveryView)> {
        self.deliveries.of_conversation(conv, max)
    }

    /// The delivery bookkeeping of a sent message, if still tracked (to persist it).
    pub fn delivery_record(&self, id: &Id) -> Option<&Delivery> {
        self.deliveries.get(id)
    }

    /// The accounts a text sent now in `conv` waits for: the other members.
    pub fn waiting_for(&self, conv: &ConversationId) -> Arc<[AccountId]> {
        self.convs.get(conv).map(|c| c.waiting.clone()).unwrap_or_else(|| Arc::new([]))
    }

    /// Tracks a delivery recorded before a restart (oldest first; bounded as every delivery).
    pub fn restore_delivery(&mut self, id: Id, d: Delivery) {
        self.deliveries.insert(id, d);
    }

    /// Puts back an envelope of `conv`'s chain recorded before a restart (no receipt is owed
    /// for it; nothing else changes).
    pub fn restore_link(&mut self, conv: ConversationId, id: Id, parents: &[Id]) {
        self.convs.entry(conv).or_default().chain.add(id, parents);
    }

    /// Takes the envelopes that entered a chain by structure only since the last call.
    pub fn take_proven(&mut self) -> Vec<(ConversationId, Id)> {
        std::mem::take(&mut self.proven)
    }

    /// Receipts owed in `conv`.
    pub fn receipts_due(&self, conv: &ConversationId) -> usize {
        self.convs.get(conv).map_or(0, |c| c.receipts_due.len())
    }

    /// Advances the state machine.
    pub fn handle(&mut self, input: Input, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Tick => self.tick(now_ms, &mut out),
            Input::Ledger { height } => self.ledger(height, &mut out),
            Input::Conversation { conv, epoch, active, others, devices } => {
                self.conversation(conv, epoch, active, others, devices, &mut out)
            }
            Input::Accepted { conv, id, parents, from: _, device, epoch, text } => {
                let due = text.then_some(Due { id, to: device, epoch });
                self.accepted(conv, id, &parents, due, now_ms, &mut out)
            }
            Input::Unreadable { conv, id, parents, why } => {
                self.unreadable(conv, id, &parents, why, now_ms, &mut out)
            }
            Input::Sent { conv, id, parents, text } => self.sent(conv, id, &parents, text),
            Input::StoreAcks { id, acks } => {
                if let Some((conv, view)) = self.deliveries.stored(&id, acks) {
                    out.push(Effect::Delivery { conv, id, view });
                }
            }
            Input::Receipt { from, ids } => {
                for id in ids {
                    if let Some((conv, view)) = self.deliveries.receipted(&id, from) {
                        out.push(Effect::Delivery { conv, id, view });
                    }
                }
            }
            Input::AnchorDone { conv, count, ok } => {
                if let Some(c) = self.convs.get_mut(&conv) {
                    c.anchor_in_flight = None;
                    if ok {
                        c.anchored = c.anchored.max(count);
                    }
                }
            }
        }
        out
    }

    fn ledger(&mut self, height: u64, out: &mut Vec<Effect>) {
        if self.ledger_height == Some(height) {
            return;
        }
        self.ledger_height = Some(height);
        for (conv, c) in &self.convs {
            if c.active {
                out.push(Effect::SyncLedger { conv: *conv });
            }
        }
    }

    fn conversation(
        &mut self,
        conv: ConversationId,
        epoch: u64,
        active: bool,
        others: BTreeSet<AccountId>,
        devices: u32,
        out: &mut Vec<Effect>,
    ) {
        let c = self.convs.entry(conv).or_default();
        let new_epoch = epoch > c.epoch;
        c.epoch = c.epoch.max(epoch);
        c.active = active;
        if c.others != others {
            c.waiting = others.iter().copied().collect();
            c.others = others;
        }
        c.devices = devices;
        if new_epoch {
            let ids = c.quarantine.to_reopen();
            if !ids.is_empty() {
                out.push(Effect::Reopen { conv, ids });
            }
        }
    }

    fn accepted(
        &mut self,
        conv: ConversationId,
        id: Id,
        parents: &[Id],
        due: Option<Due>,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let max_due = self.cfg.receipts_due_max;
        let c = self.convs.entry(conv).or_default();
        c.quarantine.release(&id);
        for p in c.quarantine.prove_ancestors(parents) {
            // Proven history this device cannot read: part of the chain as structure.
            c.chain.add(p, &[]);
            self.proven.push((conv, p));
        }
        c.chain.add(id, parents);
        if let Some(due) = due {
            c.receipts_due.push(due);
            if c.receipts_due.len() >= max_due {
                self.flush_receipts(conv, now_ms, true, out);
            }
        }
    }

    fn unreadable(
        &mut self,
        conv: ConversationId,
        id: Id,
        parents: &[Id],
        why: Unreadable,
        now_ms: u64,
        out: &mut Vec<Effect>,
    ) {
        let max = self.cfg.quarantine_envelopes_max;
        let c = self.convs.entry(conv).or_default();
        if c.chain.contains(&id) {
            return; // already proven history
        }
        if why != Unreadable::FutureEpoch && c.chain.is_referenced(&id) {
            // An accepted message named it before it came (or came again after a restart):
            // proven history this device cannot read, part of the chain as structure.
            c.chain.add(id, &[]);
            self.proven.push((conv, id));
            for p in c.quarantine.prove_ancestors(parents) {
                c.chain.add(p, &[]);
                self.proven.push((conv, p));
            }
            return;
        }
        let hold = match why {
            Unreadable::FutureEpoch => Hold::FutureEpoch,
            Unreadable::TooOld | Unreadable::Junk => Hold::Unopened,
        };
        if c.quarantine.hold(id, parents, hold, now_ms, max).is_err() {
            out.push(Effect::Discard { conv, ids: vec![id] });
        }
    }

    fn sent(&mut self, conv: ConversationId, id: Id, parents: &[Id], text: bool) {
        let c = self.convs.entry(conv).or_default();
        c.chain.add(id, parents);
        if text {
            let d = Delivery::new(conv, 0, c.waiting.clone());
            self.deliveries.insert(id, d);
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let convs: Vec<ConversationId> = self.convs.keys().copied().collect();
        for conv in convs {
            self.flush_receipts(conv, now_ms, false, out);
            self.maybe_anchor(conv, now_ms, out);
            let hold_ms = self.cfg.quarantine_ms;
            if let Some(c) = self.convs.get_mut(&conv) {
                let ids = c.quarantine.expire(now_ms, hold_ms);
                if !ids.is_empty() {
                    out.push(Effect::Discard { conv, ids });
                }
            }
        }
    }

    /// Owed receipts go out every `receipt_every_ms`, one per (sending device, epoch), at
    /// most `receipt_ids_max` ids each.
    fn flush_receipts(&mut self, conv: ConversationId, now_ms: u64, force: bool, out: &mut Vec<Effect>) {
        let cfg = &self.cfg;
        let Some(c) = self.convs.get_mut(&conv) else { return };
        if c.receipts_due.is_empty() || !c.active {
            return;
        }
        if !force && now_ms.saturating_sub(c.last_receipt_ms) < cfg.receipt_every_ms {
            return;
        }
        c.last_receipt_ms = now_ms;
        let mut by_sender: BTreeMap<(DeviceId, u64), Vec<Id>> = BTreeMap::new();
        for d in std::mem::take(&mut c.receipts_due) {
            by_sender.entry((d.to, d.epoch)).or_default().push(d.id);
        }
        for ((to, epoch), ids) in by_sender {
            for chunk in ids.chunks(cfg.receipt_ids_max.max(1)) {
                out.push(Effect::SendReceipt { conv, to, epoch, ids: chunk.to_vec() });
            }
        }
    }

    fn maybe_anchor(&mut self, conv: ConversationId, now_ms: u64, out: &mut Vec<Effect>) {
        let cfg = &self.cfg;
        let Some(c) = self.convs.get_mut(&conv) else { return };
        if let Some(deadline) = c.anchor_in_flight {
            if now_ms < deadline {
                return;
            }
            c.anchor_in_flight = None;
        }
        if !c.active || now_ms.saturating_sub(c.last_anchor_ms) < cfg.anchor_every_ms {
            return;
        }
        c.last_anchor_ms = now_ms;
        // One traversal per anchor, of the newest head only.
        let Some(head) = c.chain.anchor_head() else { return };
        let count = c.chain.ancestry(&head);
        if count <= c.anchored {
            return;
        }
        let deadline_ms = now_ms.saturating_add(cfg.anchor_deadline_ms);
        c.anchor_in_flight = Some(deadline_ms);
        out.push(Effect::Anchor { conv, head, count, deadline_ms });
    }
}

#[cfg(test)]
mod tests;
