//! The pinned policy judges every text message of a conversation at every member's node.
//!
//! - **Which policy.** A message is judged by the pin in force at the MLS epoch it was sent
//!   in (recorded per epoch as this device goes through them, `policy_store`). No pin at that
//!   epoch: the message shows with no verdict.
//! - **Order.** One [`Policy`] instance per (conversation, epoch); its partitions are per
//!   sending device and ordered by the signed [`Message::device_seq`] (0, 1, 2… within the
//!   epoch). Every member of an epoch reads that epoch's whole chain of each device, so every
//!   member reaches the same verdicts in any arrival order; an early arrival waits (kept,
//!   not shown, listed as waiting) for the ones before it. The price: a policy's state (e.g.
//!   a rate limit's window) starts afresh at each epoch.
//! - **Atomic.** The policy runs before the messages are stored; the partitions it changed
//!   and the verdicts are written in the same redb transaction as the messages (and as the
//!   MLS ratchet step), so a crash rolls all of them back together and the re-read gives the
//!   same verdicts. State is persisted, not rebuilt: a denied message's text is not kept.
//!   At a restart the partitions are read back, and messages still waiting are offered again.
//! - **Verdicts at this node.** Allow: shown. Label: shown with its tags. Hold: kept, not in
//!   the history, listed by `GET …/held` (the user may release it on this device). Deny: not
//!   shown, its plaintext deleted in the same transaction and the local copy's payload
//!   erased (as an erasure: the id stays, so `verify` still checks the hash chain).
//!   ProposeRemove: shown, listed for the admins. Reply: shown, and ONE member answers: the
//!   member device with the smallest device id other than the sender's, among the
//!   conversation's member devices (the same list at every member of the epoch), so the
//!   reply is sent once. It is sent after the commit: a crash in between loses it (at most
//!   once, never twice).
//! - A text message without a device sequence number under a pin (an older or modified
//!   client) is held, alike at every member.
//! - This device's own text messages are judged the same way when it sends them.

use std::collections::{BTreeMap, HashMap};

use cairn_contracts::policy::{Failure, MessageEvent, Policy, Verdict};
use cairn_mls::ConversationId;
use cairn_mls::policy_ext::PolicyPin;
use cairn_proto::{AccountId, DeviceId, Id, Message};
use redb::WriteTransaction;

use super::policy_store::{self, Record, RecordState, Write};
use super::{Engine, Io, KIND_TEXT, message_view};
use crate::db::{Accepted, NodeDb};
use crate::error::NodeError;
use crate::model::{
    DeniedView, HeldListView, HeldView, MessageVerdict, MessageView, ProposedRemovalView, StreamEvent,
};

/// Policy instances kept in memory at most (one per conversation and epoch); beyond, one
/// with no waiting message is dropped (its partitions are on disk).
const INSTANCES_MAX: usize = 64;
/// Waiting messages offered again when an instance is loaded, at most.
const REOFFER_MAX: usize = 4096;
/// Entries each list of `GET …/held` returns at most.
pub(super) const HELD_LIST_MAX: usize = 1000;

/// Something to do once the transaction holding it committed.
#[derive(Debug)]
enum After {
    /// A message stored hidden is shown now: tell the listeners.
    Show(ConversationId, Id),
    /// This device answers for the bot.
    Reply(ConversationId, Vec<u8>),
    /// A denied message: erase the local copy's payload.
    Erase(ConversationId, Id),
    /// A message was kept out of the history: tell the listeners (the held list changed).
    Held(ConversationId, Id),
}

/// The engine's policy bookkeeping.
#[derive(Default)]
pub(super) struct PolicyRun {
    /// Loaded instances; `None`: no policy at that epoch (or its code is unknown here).
    instances: BTreeMap<(ConversationId, u64), Option<Policy>>,
    /// Writes for the next transaction.
    writes: Vec<Write>,
    /// Records written in the pending transaction (read before the database).
    overlay: HashMap<Id, Record>,
    /// This device's (epoch, next number) per conversation, as committed or about to be.
    send_seq: HashMap<ConversationId, (u64, u64)>,
    /// To do after the commit.
    after: Vec<After>,
    /// Tail positions given by the last commit to messages shown late.
    shown: HashMap<Id, u64>,
    /// Records the last commit wrote (what a message shown live is decorated from).
    committed: HashMap<Id, Record>,
    /// (conversation, epoch) whose pin is recorded (saves a read per message).
    pins_recorded: std::collections::HashSet<(ConversationId, u64)>,
}

/// Why a failed policy call held the message, for people.
fn describe(f: &Failure) -> String {
    match f {
        Failure::Trap(t) => format!("the policy failed ({t}); held"),
        Failure::BadVerdict(e) => format!("the policy's verdict is malformed ({e}); held"),
        Failure::StateFull => "the policy's state for this sender is full; held".into(),
        Failure::Backlog => "too many messages of this sender wait for an earlier one; held".into(),
        Failure::Replayed => "the sender's sequence number was used before (a replay); held".into(),
    }
}

/// Sets a history item's verdict and labels from its record, if the policy judged it.
pub fn decorate(db: &NodeDb, conv: &[u8; 32], view: &mut MessageView) {
    let Some(id) = Id::from_hex(&view.id) else { return };
    if let Ok(Some(r)) = policy_store::record(db, conv, &id) {
        apply_record(&r, view);
    }
}

fn apply_record(r: &Record, view: &mut MessageView) {
    view.verdict = match (r.state, &r.verdict) {
        (RecordState::Released, _) => Some(MessageVerdict::Released),
        (RecordState::Waiting, _) => None,
        (RecordState::Judged, Verdict::Allow) => Some(MessageVerdict::Allow),
        (RecordState::Judged, Verdict::Label(tags)) => {
            view.labels = tags.clone();
            Some(MessageVerdict::Label)
        }
        (RecordState::Judged, Verdict::Reply(_)) => Some(MessageVerdict::Reply),
        (RecordState::Judged, Verdict::ProposeRemove(_)) => Some(MessageVerdict::ProposeRemove),
        (RecordState::Judged, Verdict::Hold | Verdict::Deny(_)) => None,
    };
}

/// `GET …/held`: held and waiting messages, denied ones, proposed removals.
pub fn held(db: &NodeDb, conv: &[u8; 32]) -> Result<HeldListView, NodeError> {
    let mut out = HeldListView::default();
    let rows = policy_store::records(db, conv, 16 * HELD_LIST_MAX, |r| {
        r.state == RecordState::Waiting
            || (r.state == RecordState::Judged
                && matches!(r.verdict, Verdict::Hold | Verdict::Deny(_) | Verdict::ProposeRemove(_)))
    })?;
    let limits = *db.limits();
    for (id, r) in rows {
        let sender = AccountId(r.account).to_text();
        match &r.verdict {
            Verdict::Deny(reason) if r.state == RecordState::Judged && out.denied.len() < HELD_LIST_MAX => {
                out.denied.push(DeniedView { id: id.to_hex(), sender, reason: reason.clone() });
            }
            Verdict::Deny(_) if r.state == RecordState::Judged => {}
            Verdict::ProposeRemove(a) if out.proposed_removals.len() < HELD_LIST_MAX => {
                out.proposed_removals.push(ProposedRemovalView {
                    id: id.to_hex(),
                    sender,
                    account: AccountId(*a).to_text(),
                });
            }
            Verdict::ProposeRemove(_) => {}
            _ if out.held.len() < HELD_LIST_MAX => {
                let waiting = r.state == RecordState::Waiting;
                let reason = if waiting {
                    "waiting for an earlier message of its sender".to_owned()
                } else if r.failure.is_empty() {
                    "held by the conversation's policy".to_owned()
                } else {
                    r.failure.clone()
                };
                let text = db
                    .plain(&id)?
                    .and_then(|b| Message::decode(&b, &limits).ok())
                    .and_then(|m| m.body.split_first().map(|(_, t)| String::from_utf8_lossy(t).into_owned()))
                    .unwrap_or_default();
                out.held.push(HeldView {
                    id: id.to_hex(),
                    sender,
                    device: DeviceId(r.device).to_text(),
                    timestamp_ms: r.ts,
                    reason,
                    waiting,
                    text,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// A view of a sequencer that serves at most the handshakes before `cap`, from pages of the
/// real one fetched once: MLS then applies one handshake per sync call.
struct Steps<'a> {
    inner: &'a dyn cairn_proto::CommitSequencer,
    cap: std::cell::Cell<u64>,
    page: std::cell::RefCell<Vec<cairn_proto::Sequenced>>,
}

/// Handshakes a page of the real sequencer holds at most (what one fetch asks for).
const STEP_PAGE: usize = 64;

impl cairn_proto::CommitSequencer for Steps<'_> {
    fn submit(
        &mut self,
        _: cairn_proto::Topic,
        _: u64,
        _: Vec<u8>,
        _: cairn_proto::sequencer::TopicKeys,
    ) -> Result<u64, cairn_proto::SequencerError> {
        Err(cairn_proto::SequencerError::Unavailable("a sync submits nothing".into()))
    }

    fn fetch(
        &self,
        topic: &cairn_proto::Topic,
        from: u64,
        _max: usize,
    ) -> Result<Vec<cairn_proto::Sequenced>, cairn_proto::SequencerError> {
        if from >= self.cap.get() {
            return Ok(Vec::new());
        }
        let cached = self.page.borrow().iter().any(|m| m.seq == from && m.topic == *topic);
        if !cached {
            *self.page.borrow_mut() = self.inner.fetch(topic, from, STEP_PAGE)?;
        }
        let cap = self.cap.get();
        Ok(self
            .page
            .borrow()
            .iter()
            .filter(|m| m.seq >= from && m.seq < cap && m.topic == *topic)
            .cloned()
            .collect())
    }
}

/// Handshakes one sync applies at most.
const SYNC_STEPS_MAX: usize = 1_000_000;

impl Engine {
    /// `mls.sync`, one handshake at a time: after each, the new epoch's policy pin is
    /// recorded (several commits applied at once would leave the epochs between unknown, and
    /// a message of such an epoch judged by the wrong pin). Messages a step made readable
    /// come back with the events. One fetch of the real sequencer per page, as before.
    pub(super) fn mls_sync_stepwise(
        &mut self,
        conv: &ConversationId,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Vec<cairn_mls::Event>, cairn_mls::MlsError> {
        let steps = Steps { inner: &*seq, cap: std::cell::Cell::new(0), page: Default::default() };
        let mut all = Vec::new();
        for _ in 0..SYNC_STEPS_MAX {
            let applied = self.mls.applied(conv)?;
            steps.cap.set(applied.saturating_add(1));
            match self.mls.sync(conv, &steps, now_ms) {
                Ok(evs) => all.extend(evs),
                // What earlier steps applied is merged and persisted: report it.
                Err(e) if all.is_empty() => return Err(e),
                Err(e) => {
                    tracing::debug!("sync of {} stopped: {e}", hex::encode(conv.0));
                    break;
                }
            }
            self.policy_epoch_seen(conv);
            if self.mls.applied(conv)? <= applied {
                break;
            }
        }
        Ok(all)
    }

    /// This device's next own sequence number in `conv` at its current epoch (0 at a new
    /// epoch). Not used up until [`Engine::device_seq_used`].
    pub(super) fn next_device_seq(&mut self, conv: &ConversationId) -> Result<u64, NodeError> {
        let epoch = self.mls.epoch(conv).map_err(super::mls_err)?;
        let (e, next) = match self.policy_run.send_seq.get(conv) {
            Some(v) => *v,
            None => policy_store::send_seq(&self.db, &conv.0)?.unwrap_or((epoch, 0)),
        };
        Ok(if e == epoch { next } else { 0 })
    }

    /// A message was signed with number `n`: the next one gets `n + 1` (written with the
    /// send's transaction; a failed commit forgets it, see [`Engine::policy_discard`]).
    pub(super) fn device_seq_used(&mut self, conv: &ConversationId, n: u64) {
        let epoch = self.mls.epoch(conv).unwrap_or(0);
        self.policy_run.send_seq.insert(*conv, (epoch, n + 1));
        self.policy_run.writes.push(Write::SendSeq { conv: conv.0, epoch, next: n + 1 });
    }

    /// Records the pin of every epoch the MLS client entered since the last call, whatever
    /// path merged the commit (the catch-up inside an own commit included), then of the
    /// conversation's current epoch (each once).
    pub(super) fn policy_epoch_seen(&mut self, conv: &ConversationId) {
        for (c, epoch, pin) in self.mls.take_epochs_entered() {
            self.record_pin(&c, epoch, pin.map(|p| p.encode()));
        }
        let Ok(epoch) = self.mls.epoch(conv) else { return };
        let pin = self.mls.policy(conv).ok().flatten().map(|p| p.encode());
        self.record_pin(conv, epoch, pin);
    }

    /// Records `pin` as the one in force at (`conv`, `epoch`), once.
    fn record_pin(&mut self, conv: &ConversationId, epoch: u64, pin: Option<Vec<u8>>) {
        if self.policy_run.pins_recorded.contains(&(*conv, epoch)) {
            return;
        }
        if policy_store::pin_recorded(&self.db, &conv.0, epoch).unwrap_or(false) {
            self.policy_run.pins_recorded.insert((*conv, epoch));
            return;
        }
        let r = self.db.begin_lazy().and_then(|tx| {
            policy_store::apply_in(&self.db, &tx, &[Write::Pin { conv: conv.0, epoch, pin }])?;
            tx.commit().map_err(|e| NodeError::Storage(e.to_string()))
        });
        match r {
            Ok(()) => {
                if self.policy_run.pins_recorded.len() >= 4 * INSTANCES_MAX {
                    self.policy_run.pins_recorded.clear();
                }
                self.policy_run.pins_recorded.insert((*conv, epoch));
            }
            Err(e) => tracing::warn!("policy pin of epoch {epoch} not recorded: {e}"),
        }
    }

    /// The pin in force at `epoch`.
    pub(super) fn pin_for(&mut self, conv: &ConversationId, epoch: u64) -> Option<PolicyPin> {
        self.policy_epoch_seen(conv);
        if self.mls.epoch(conv).ok() == Some(epoch) {
            return self.mls.policy(conv).ok().flatten();
        }
        match policy_store::pin_at(&self.db, &conv.0, epoch) {
            Ok(Some(Some(bytes))) => PolicyPin::decode(&bytes).ok(),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("policy pin lookup: {e}");
                None
            }
        }
    }

    /// A message's record: the pending transaction's, else the database's.
    fn policy_record(&self, conv: &ConversationId, id: &Id) -> Option<Record> {
        if let Some(r) = self.policy_run.overlay.get(id) {
            return Some(r.clone());
        }
        policy_store::record(&self.db, &conv.0, id).ok().flatten()
    }

    fn put_record(&mut self, conv: &ConversationId, id: Id, record: Record) {
        self.policy_run.overlay.insert(id, record.clone());
        self.policy_run.writes.push(Write::Record { conv: conv.0, id, record });
    }

    /// Loads (once) the instance of (conversation, epoch): its partitions from disk, then the
    /// messages still waiting in it offered again.
    fn ensure_instance(&mut self, conv: &ConversationId, epoch: u64, pin: &PolicyPin) {
        let key = (*conv, epoch);
        if self.policy_run.instances.contains_key(&key) {
            return;
        }
        if self.policy_run.instances.len() >= INSTANCES_MAX && self.policy_run.writes.is_empty() {
            let idle = self
                .policy_run
                .instances
                .iter()
                .find(|(_, p)| p.as_ref().is_none_or(|p| p.waiting() == 0))
                .map(|(k, _)| *k);
            if let Some(k) = idle {
                self.policy_run.instances.remove(&k);
            }
        }
        let mut policy = match self.mls.policy_gate().load(pin) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("policy of epoch {epoch} not loaded: {e}");
                self.policy_run.instances.insert(key, None);
                return;
            }
        };
        match policy_store::states(&self.db, &conv.0, epoch) {
            Ok(states) => {
                for (device, snap) in states {
                    policy.restore(device, snap);
                }
            }
            Err(e) => tracing::warn!("policy state of epoch {epoch} not read: {e}"),
        }
        self.policy_run.instances.insert(key, Some(policy));
        let waiting = policy_store::records(&self.db, &conv.0, REOFFER_MAX, |r| {
            r.state == RecordState::Waiting && r.epoch == epoch
        })
        .unwrap_or_default();
        for (id, r) in waiting {
            let Ok(Some(plain)) = self.db.plain(&id) else { continue };
            let Ok(m) = Message::decode(&plain, &self.cfg.limits) else { continue };
            self.offer(conv, epoch, id, &m, r);
        }
    }

    /// Runs the policy on one message; applies the judgements it made possible. Returns
    /// whether `id` itself is shown now.
    fn offer(&mut self, conv: &ConversationId, epoch: u64, id: Id, m: &Message, rec: Record) -> bool {
        let ev = MessageEvent {
            id: id.0,
            group: conv.topic().0,
            epoch,
            sender_account: m.sender.account.0,
            sender_device: m.sender.device.0,
            sender_seq: rec.seq,
            ts: m.timestamp_ms,
            content_type: m.body.first().copied().unwrap_or(0),
            body: m.body.get(1..).unwrap_or_default().to_vec(),
        };
        let device = m.sender.device.0;
        let Some(Some(policy)) = self.policy_run.instances.get_mut(&(*conv, epoch)) else { return false };
        let judgements = policy.on_message(ev);
        let snap = policy.snapshot(&device);
        if let Some(snap) = snap {
            self.policy_run.writes.push(Write::State { conv: conv.0, epoch, device, snap: snap.encode() });
        }
        let mut shown_now = false;
        for j in judgements {
            let jid = Id(j.id);
            let Some(mut r) = (if jid == id { Some(rec.clone()) } else { self.policy_record(conv, &jid) })
            else {
                tracing::warn!("judgement of unknown message {}", jid.short());
                continue;
            };
            let was_stored_hidden = jid != id;
            r.state = RecordState::Judged;
            r.verdict = j.verdict.clone();
            r.failure = j.failure.as_ref().map(describe).unwrap_or_default();
            let shown = r.shown();
            let after_gap = r.after_gap;
            let sender_device = r.device;
            self.put_record(conv, jid, r);
            if jid == id {
                shown_now = shown;
            } else if shown && was_stored_hidden {
                self.policy_run.writes.push(Write::Show { conv: conv.0, id: jid, after_gap });
                self.policy_run.after.push(After::Show(*conv, jid));
            }
            match j.verdict {
                Verdict::Deny(_) => {
                    self.policy_run.writes.push(Write::Forget { id: jid });
                    self.policy_run.after.push(After::Erase(*conv, jid));
                }
                Verdict::Reply(body) if self.replies_for(conv, &sender_device) => {
                    self.policy_run.after.push(After::Reply(*conv, body));
                }
                _ => {}
            }
        }
        shown_now
    }

    /// Whether this device answers for the bot: the member device with the smallest id,
    /// the sender's excepted.
    fn replies_for(&self, conv: &ConversationId, sender_device: &[u8; 32]) -> bool {
        let members = self.mls.members(conv).unwrap_or_default();
        members.iter().map(|c| c.device.0).filter(|d| d != sender_device).min() == Some(self.keys.device.0)
    }

    /// Judges the text messages among `rows` (sent in `epochs`) before they are stored:
    /// sets `hidden` on the ones not shown, and queues the writes for the transaction.
    pub(super) fn policy_judge(
        &mut self,
        conv: ConversationId,
        rows: &mut [Accepted],
        epochs: &[u64],
        _now_ms: u64,
    ) {
        for (row, &epoch) in rows.iter_mut().zip(epochs) {
            if !row.text || row.inner.body.first() != Some(&KIND_TEXT) {
                continue;
            }
            // No pin at its epoch: no verdict, and none recorded before.
            let Some(pin) = self.pin_for(&conv, epoch) else { continue };
            if let Some(r) = self.policy_record(&conv, &row.id) {
                row.hidden = !r.shown();
                continue;
            }
            let m = &row.inner;
            let mut rec = Record {
                state: RecordState::Waiting,
                verdict: Verdict::Hold,
                failure: String::new(),
                account: m.sender.account.0,
                device: m.sender.device.0,
                epoch,
                seq: m.device_seq.unwrap_or(u64::MAX),
                ts: m.timestamp_ms,
                after_gap: row.after_gap,
            };
            row.hidden = true;
            if m.device_seq.is_none() {
                rec.state = RecordState::Judged;
                rec.failure =
                    "the message carries no device sequence number (an older or modified client); held"
                        .into();
                self.put_record(&conv, row.id, rec);
                continue;
            }
            self.ensure_instance(&conv, epoch, &pin);
            if !matches!(self.policy_run.instances.get(&(conv, epoch)), Some(Some(_))) {
                rec.state = RecordState::Judged;
                rec.failure = "the pinned policy's code is not known to this version of Cairn; held".into();
                self.put_record(&conv, row.id, rec);
                continue;
            }
            self.put_record(&conv, row.id, rec.clone());
            let inner = row.inner.clone();
            row.hidden = !self.offer(&conv, epoch, row.id, &inner, rec);
        }
        // Judged now and kept out of the history: the held list changed.
        for row in rows.iter().filter(|r| r.hidden && r.text) {
            if self.policy_run.overlay.contains_key(&row.id) {
                self.policy_run.after.push(After::Held(conv, row.id));
            }
        }
    }

    /// Writes the pending policy changes in the engine's transaction (after its rows).
    pub(super) fn policy_flush_into(&mut self, tx: &WriteTransaction) -> Result<(), NodeError> {
        let writes = std::mem::take(&mut self.policy_run.writes);
        self.policy_run.committed = std::mem::take(&mut self.policy_run.overlay);
        let shown = policy_store::apply_in(&self.db, tx, &writes)?;
        self.policy_run.shown = shown.into_iter().collect();
        Ok(())
    }

    /// The transaction failed: forget what the policy did since the last commit (instances
    /// are read again from disk).
    pub(super) fn policy_discard(&mut self) {
        let p = &mut self.policy_run;
        p.writes.clear();
        p.overlay.clear();
        p.after.clear();
        p.instances.clear();
        p.send_seq.clear();
    }

    /// Whether `a` is a message the policy denied here before (its plaintext deleted): then
    /// it goes back into the chain from its header, as read, instead of being read again.
    pub(super) fn policy_denied_known(
        &mut self,
        conv: ConversationId,
        a: &super::receive::Arrival,
        now_ms: u64,
    ) -> bool {
        let Some(r) = self.policy_record(&conv, &a.id) else { return false };
        if r.state != RecordState::Judged || !matches!(r.verdict, Verdict::Deny(_)) {
            return false;
        }
        if !self.core.knows(&conv, &a.id) {
            let input = crate::core::Input::Accepted {
                conv,
                id: a.id,
                parents: a.envelope.header.parents.clone(),
                from: AccountId(r.account),
                device: DeviceId(r.device),
                epoch: r.epoch,
                text: false,
            };
            let fx = self.core.handle(input, now_ms);
            self.apply_local(fx);
        }
        true
    }

    /// Sets the verdict and labels of a history item being shown live (just committed, or
    /// released from waiting by the same commit).
    pub(super) fn policy_decorate(&self, _conv: &ConversationId, view: &mut MessageView) {
        let Some(id) = Id::from_hex(&view.id) else { return };
        if let Some(r) = self.policy_run.committed.get(&id) {
            apply_record(r, view);
        }
    }

    /// After the commit: tell the listeners about messages shown late, send the bot's
    /// replies, erase denied messages' local copies.
    pub(super) fn policy_after_commit(&mut self, now_ms: u64) {
        let after = std::mem::take(&mut self.policy_run.after);
        let shown = std::mem::take(&mut self.policy_run.shown);
        for a in after {
            match a {
                After::Show(conv, id) => {
                    let Some(&seq) = shown.get(&id) else { continue };
                    let Ok(Some(plain)) = self.db.plain(&id) else { continue };
                    let Ok(m) = Message::decode(&plain, &self.cfg.limits) else { continue };
                    let after_gap = self.policy_record(&conv, &id).is_some_and(|r| r.after_gap);
                    let mut view = message_view(&conv, seq, &id, &m, after_gap);
                    self.policy_decorate(&conv, &mut view);
                    self.io.push(Io::Stream(StreamEvent::Message(view)));
                }
                After::Erase(conv, id) => {
                    self.io.push(Io::Erase { topic: conv.topic(), id, secret: None });
                }
                After::Held(conv, id) => {
                    self.io.push(Io::Stream(StreamEvent::Held {
                        conversation: hex::encode(conv.0),
                        id: id.to_hex(),
                    }));
                }
                After::Reply(conv, body) => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    if let Err(e) = self.send_text(conv, &text, &mut super::receive::NoSequencer, now_ms) {
                        tracing::warn!("bot reply not sent: {e}");
                    }
                }
            }
        }
    }
}
