//! The actor thread: owns the [`Engine`] (MLS state, node tables, decision core) and the
//! commit sequencer, takes jobs from two bounded queues and performs the engine's I/O.
//! Commits never block it: the [`NodeSequencer`] hands them to its submission worker, which
//! reports back with [`Job::SubmissionEnded`].
//!
//! - `ops` (API calls, timer, ledger results) is served before `net` (deliveries), so a send
//!   never waits behind a backlog of incoming mail; after each send burst `net` gets a
//!   bounded turn ([`NET_AFTER_SEND_MAX`] jobs), so its acknowledgements never starve either;
//! - deliveries are read in bursts of up to [`RECEIVE_BATCH_MAX`]: one MLS batch and one
//!   transaction (one fsync) per conversation per burst.
//!
//! Both queues are bounded; producers wait when they are full (back-pressure up to the mesh,
//! which holds deliveries durably in its local history meanwhile). Nothing is dropped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use cairn_mls::policy_ext::PolicyPin;
use cairn_mls::{ConversationId, VerifiedKeyPackage};
use cairn_proto::{AccountId, DeviceId, Envelope, Id, Topic};
use tokio::sync::{mpsc, oneshot};

use super::awaiting::{Answer, AwaitingCalls, Intent};
use super::ledger::{LedgerJob, try_enqueue};
use super::sequencer::NodeSequencer;
use super::{ConvSnapshot, Shared, now_ms};
use crate::engine::{Arrival, Commit, Engine, Io, SEND_BATCH_MAX};
use crate::error::NodeError;
use crate::idempotency::IdempotencyKey;
use crate::model::{SendResult, StreamEvent};

/// API calls, timer ticks and ledger results queued at most. Overflow: producers wait.
pub const OPS_QUEUE_MAX: usize = 1_024;
/// Mesh jobs (deliveries, acknowledgements) taken after each send burst, at most: the share
/// of the loop `net` gets while `ops` stays busy. A send waits behind at most this many.
pub const NET_AFTER_SEND_MAX: usize = 64;
/// Deliveries and store acknowledgements queued at most. Overflow: the mesh's event pump waits
/// (the deliveries are durable in the local history already).
pub const NET_QUEUE_MAX: usize = 4_096;
/// Deliveries read in one burst at most.
pub const RECEIVE_BATCH_MAX: usize = 512;
/// Publications and subscriptions queued for the mesh at most. Overflow: the actor waits.
pub const MESH_QUEUE_MAX: usize = 1_024;
/// Lifetime of key-package envelopes, seconds.
const KEY_PACKAGE_TTL_SECS: u32 = 14 * 24 * 3600;
/// Key packages per published batch (plus one last-resort package).
const KEY_PACKAGES_PER_BATCH: usize = 16;
/// Revoked devices whose removal is still being committed, at most. Overflow policy: the
/// oldest is forgotten (another member, or the next revocation, removes it).
pub const REVOKING_MAX: usize = 64;
/// A revoked device still in a conversation is removed again at most this often, ms (its
/// removal commit lost its slot, or met another pending commit of this device).
const REVOKE_AGAIN_MS: u64 = 2_000;
/// How long the actor goes on removing a revoked device, ms.
const REVOKE_FOR_MS: u64 = 600_000;

/// The answer channel of an API call.
pub type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// Work for the actor.
pub enum Job {
    /// An envelope delivered by the mesh.
    Arrived(Box<Arrival>),
    /// Store nodes acknowledged a sent envelope.
    Status {
        /// Envelope id.
        id: Id,
        /// Distinct acknowledgements.
        acks: u32,
        /// Enough of them.
        stored: bool,
    },
    /// Timer.
    Tick,
    /// New blocks sequenced handshakes on these conversation topics.
    Handshakes(Vec<Topic>),
    /// The submission worker has an answer for this device's commit on this conversation
    /// topic: settle it (merge, catch up and rebuild, or refuse).
    SubmissionEnded(Topic),
    /// Every conversation re-reads its sequenced order (start, follower error, period).
    Ledger {
        /// Height.
        height: u64,
    },
    /// Account and device are registered on the ledger: publish key packages.
    Registered,
    /// The store nodes registered on the ledger (proven read): `(node key, rank salt)`, at
    /// most `cairn_ledger::state::STORES_MAX`; topics are placed on these.
    Stores(Vec<([u8; 32], [u8; 32])>),
    /// The ledger recorded this key-package batch's hash: publish the batch on the mesh.
    KeyPackagesRecorded(Box<Envelope>),
    /// Proof-of-work prices the mesh learned, `(topic, base bits)`, at most
    /// `work_prices::WORK_PRICE_TOPICS_PER_ROUND`: envelopes of these topics are mined at them.
    WorkPrices(Vec<(Topic, u32)>),
    /// An anchor submission ended.
    AnchorDone {
        /// Conversation.
        conv: ConversationId,
        /// Ancestry count.
        count: u64,
        /// Finalized.
        ok: bool,
    },
    /// Create a conversation with these devices.
    Create(Vec<VerifiedKeyPackage>, Reply<ConversationId>),
    /// Add devices.
    Add(ConversationId, Vec<VerifiedKeyPackage>, Reply<()>),
    /// Remove an account.
    Remove(ConversationId, AccountId, Reply<()>),
    /// Leave.
    Leave(ConversationId, Reply<()>),
    /// Send a text (with the caller's idempotency key, if any).
    Send(ConversationId, String, Option<IdempotencyKey>, Reply<SendResult>),
    /// Erase an own message.
    Erase(ConversationId, Id, Reply<SendResult>),
    /// Forget a conversation left before (keys and state destroyed).
    Forget(ConversationId, Reply<()>),
    /// Remove a revoked device everywhere.
    Revoke(DeviceId, Reply<()>),
    /// Conversations a new device of this account still has to join.
    MissingDevice(DeviceId, Reply<Vec<ConversationId>>),
    /// Member accounts of a conversation.
    Members(ConversationId, Reply<Vec<AccountId>>),
    /// The policy pinned in a conversation.
    Policy(ConversationId, Reply<Option<PolicyPin>>),
    /// Pin a policy (`None`: unpin).
    SetPolicy(ConversationId, Option<PolicyPin>, Reply<()>),
    /// Tracked delivery states of this device's sends in a conversation (newest first, at most
    /// the count given).
    Deliveries(ConversationId, usize, Reply<Vec<(Id, crate::model::DeliveryView)>>),
    /// Accept an invitation request (by conversation id): join.
    AcceptRequest([u8; 32], Reply<ConversationId>),
    /// Decline an invitation request.
    DeclineRequest([u8; 32], Reply<()>),
    /// Stop.
    Stop,
}

/// What the actor asks the mesh task to do, in order.
pub enum MeshCmd {
    /// Publish.
    Publish(Box<Envelope>),
    /// Follow a topic.
    Subscribe(Topic),
    /// Delete junk from the local history.
    Discard(Vec<Id>),
    /// Place topics on these ledger-registered store nodes (`(node key, rank salt)`).
    RegisteredStores(Vec<([u8; 32], [u8; 32])>),
    /// Erase a payload in the local history and, with the secret, on the store nodes.
    Erase {
        /// Conversation topic.
        topic: Topic,
        /// Envelope id.
        id: Id,
        /// Secret of its erase lock.
        secret: Option<[u8; 32]>,
    },
}

/// The actor's state.
pub struct Actor {
    /// The engine.
    pub engine: Engine,
    /// The MLS commit sequencer (ledger, through the submission worker).
    pub sequencer: NodeSequencer,
    /// Shared node state.
    pub shared: Arc<Shared>,
    /// Ledger worker queue.
    pub ledger: SyncSender<LedgerJob>,
    /// Mesh task queue.
    pub mesh: mpsc::Sender<MeshCmd>,
    /// API calls whose commit is submitted and not yet ordered.
    pub awaiting: AwaitingCalls,
    /// Revoked devices still to remove: `(device, revoked at, last try)`, unix ms (at most
    /// [`REVOKING_MAX`]).
    pub revoking: Vec<(DeviceId, u64, u64)>,
}

impl Actor {
    /// Runs until [`Job::Stop`] or both queues close.
    pub fn run(mut self, mut ops: mpsc::Receiver<Job>, mut net: mpsc::Receiver<Job>) {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("actor runtime: {e}");
                return;
            }
        };
        if let Err(e) = self.engine.start(&mut self.sequencer, now_ms()) {
            tracing::error!("loading conversations: {e}");
        }
        self.dispatch();
        loop {
            let job = rt.block_on(async {
                tokio::select! {
                    biased;
                    Some(j) = ops.recv() => Some(j),
                    Some(j) = net.recv() => Some(j),
                    else => None,
                }
            });
            let Some(job) = job else { break };
            if matches!(job, Job::Stop) {
                break;
            }
            match job {
                Job::Arrived(a) => self.net_burst(Some(*a), &mut net, RECEIVE_BATCH_MAX),
                Job::Send(conv, text, key, reply) => {
                    self.send_burst((conv, text, key, reply), &mut ops);
                    // What the mesh has ready goes next, a bounded share: under a steady stream
                    // of sends `ops` is never empty for long, and the store acknowledgements
                    // waited behind it one per turn (~100 ms at 8 sends in flight).
                    self.net_burst(None, &mut net, NET_AFTER_SEND_MAX);
                }
                other => self.handle(other),
            }
            self.dispatch();
            if !self.awaiting.is_empty() {
                let settled = self.awaiting.resolve(&mut self.engine, &mut self.sequencer, now_ms());
                self.dispatch();
                for s in settled {
                    s.send();
                }
            }
        }
        if let Err(e) = self.engine.make_durable() {
            tracing::warn!("durable flush at stop: {e}");
        }
        tracing::debug!("actor stopped");
    }

    /// Takes the mesh's ready jobs behind `first` (at most `max` in all): the deliveries read
    /// as one burst, then the others (acknowledgements) in order.
    fn net_burst(&mut self, first: Option<Arrival>, net: &mut mpsc::Receiver<Job>, max: usize) {
        let (batch, other) = take_ready(first, net, max);
        if !batch.is_empty() {
            self.engine.receive(batch, &mut self.sequencer, now_ms());
        }
        for j in other {
            self.handle(j);
        }
    }

    /// Sends this message and every send queued behind it (up to [`SEND_BATCH_MAX`]) with
    /// one durable commit; other jobs met on the way are handled after.
    fn send_burst(
        &mut self,
        first: (ConversationId, String, Option<IdempotencyKey>, Reply<SendResult>),
        ops: &mut mpsc::Receiver<Job>,
    ) {
        let mut sends = vec![first];
        let mut other = Vec::new();
        while sends.len() < SEND_BATCH_MAX {
            match ops.try_recv() {
                Ok(Job::Send(conv, text, key, reply)) => sends.push((conv, text, key, reply)),
                Ok(j) => {
                    other.push(j);
                    break;
                }
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<_>, Vec<_>) = sends.into_iter().map(|(c, t, k, r)| ((c, t, k), r)).unzip();
        let results = self.engine.send_texts(items, &mut self.sequencer, now_ms());
        self.dispatch();
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
        for j in other {
            self.handle(j);
        }
    }

    fn handle(&mut self, job: Job) {
        let now = now_ms();
        match job {
            Job::Arrived(a) => self.engine.receive(vec![*a], &mut self.sequencer, now),
            Job::Status { id, acks, stored } => self.engine.store_acks(id, acks, stored, now),
            Job::Tick => {
                self.engine.tick(&mut self.sequencer, now);
                self.revoke_again(now);
                self.shared.tick_pending.store(false, Ordering::Release);
            }
            Job::Ledger { height } => self.engine.ledger_height(height, &mut self.sequencer, now),
            Job::Handshakes(topics) => self.engine.handshakes(&topics, &mut self.sequencer, now),
            Job::SubmissionEnded(topic) => {
                let conv = self.engine.conversations().into_iter().find(|c| c.topic() == topic);
                if let Some(conv) = conv {
                    self.engine.settle_commit(&conv, &mut self.sequencer, now);
                }
            }
            Job::Registered => self.publish_key_packages(),
            Job::Stores(stores) => {
                let _ = self.mesh.blocking_send(MeshCmd::RegisteredStores(stores));
            }
            Job::WorkPrices(prices) => {
                for (topic, bits) in prices {
                    self.engine.set_work_price(topic, bits);
                }
            }
            Job::KeyPackagesRecorded(env) => {
                let _ = self.mesh.blocking_send(MeshCmd::Publish(env));
            }
            Job::AnchorDone { conv, count, ok } => self.engine.anchor_done(conv, count, ok, now),
            Job::Create(kps, reply) => {
                let r = self
                    .registered()
                    .and_then(|()| self.engine.create(kps.clone(), &mut self.sequencer, now));
                match r {
                    Ok((conv, state @ (Commit::Pending | Commit::Reading))) => {
                        self.awaiting.park(conv, Answer::Create(reply), Intent::Add(kps), state, now)
                    }
                    other => self.answer(reply, other.map(|(conv, _)| conv)),
                }
            }
            Job::Add(conv, kps, reply) => {
                self.change(conv, reply, Intent::Add(kps.clone()), now, |e, s| e.add(conv, kps, s, now))
            }
            Job::Remove(conv, account, reply) => {
                self.change(conv, reply, Intent::Remove(account), now, |e, s| e.remove(conv, account, s, now))
            }
            Job::Leave(conv, reply) => {
                self.change(conv, reply, Intent::Leave, now, |e, s| e.leave(conv, s, now))
            }
            Job::Send(conv, text, key, reply) => {
                let r = self.engine.send_texts(vec![(conv, text, key)], &mut self.sequencer, now).pop();
                let r = r.unwrap_or_else(|| Err(NodeError::Internal("no result".into())));
                self.answer(reply, r);
            }
            Job::Forget(conv, reply) => {
                let r = self.engine.forget(conv, now);
                self.answer(reply, r);
            }
            Job::Erase(conv, target, reply) => {
                let r = self.engine.erase(conv, target, now);
                self.answer(reply, r);
            }
            Job::Revoke(device, reply) => {
                self.engine.revoke(&device, &mut self.sequencer, now);
                self.revoking.retain(|(d, _, _)| *d != device);
                if self.revoking.len() >= REVOKING_MAX {
                    self.revoking.remove(0);
                }
                self.revoking.push((device, now, now));
                self.answer(reply, Ok(()));
            }
            Job::MissingDevice(device, reply) => {
                let r = Ok(self.engine.missing_device(&device));
                self.answer(reply, r);
            }
            Job::Members(conv, reply) => {
                let r = self.engine.member_accounts(&conv);
                self.answer(reply, r);
            }
            Job::Policy(conv, reply) => {
                let r = self.engine.policy(&conv);
                self.answer(reply, r);
            }
            Job::SetPolicy(conv, pin, reply) => {
                let intent = Intent::SetPolicy(pin.clone());
                self.change(conv, reply, intent, now, |e, s| e.set_policy(conv, pin, s, now))
            }
            Job::Deliveries(conv, max, reply) => {
                let r = Ok(self.engine.deliveries(&conv, max));
                self.answer(reply, r);
            }
            Job::AcceptRequest(conv, reply) => {
                let r = self.engine.accept_request(&conv, &mut self.sequencer, now);
                self.answer(reply, r);
            }
            Job::DeclineRequest(conv, reply) => {
                let r = self.engine.decline_request(&conv, now);
                self.answer(reply, r);
            }
            Job::Stop => {}
        }
    }

    /// Performs the engine's I/O first (views and stream events the caller may read next),
    /// then answers.
    fn answer<T>(&mut self, reply: Reply<T>, r: Result<T, NodeError>) {
        self.dispatch();
        let _ = reply.send(r);
    }

    /// Answers a change that is done (or failed), or parks it until its commit is ordered.
    fn settle_or_park(
        &mut self,
        conv: ConversationId,
        reply: Reply<()>,
        intent: Intent,
        r: Result<Commit, NodeError>,
        now: u64,
    ) {
        match r {
            Ok(state @ (Commit::Pending | Commit::Reading)) => {
                self.awaiting.park(conv, Answer::Unit(reply), intent, state, now)
            }
            other => self.answer(reply, other.map(|_| ())),
        }
    }

    fn registered(&self) -> Result<(), NodeError> {
        registered(&self.shared)
    }

    /// Removes revoked devices again where they are still members and no commit of this device
    /// is pending: a removal commit that lost its slot, or could not be built beside a pending
    /// one, is not rebuilt by anyone else (commits are answered by the commit worker later, not
    /// inside the call that made them).
    fn revoke_again(&mut self, now: u64) {
        if self.revoking.is_empty() {
            return;
        }
        let member_of = |shared: &Shared, d: &DeviceId| -> Vec<ConversationId> {
            let Ok(convs) = shared.convs.lock() else { return Vec::new() };
            convs
                .iter()
                .filter(|(_, s)| s.active && s.members.iter().any(|m| m.device == *d))
                .map(|(id, _)| *id)
                .collect()
        };
        let mut keep = Vec::new();
        for (device, since, last) in std::mem::take(&mut self.revoking) {
            let convs = member_of(&self.shared, &device);
            if convs.is_empty() || now.saturating_sub(since) >= REVOKE_FOR_MS {
                continue;
            }
            let due = now.saturating_sub(last) >= REVOKE_AGAIN_MS;
            if due && convs.iter().any(|c| !self.engine.has_pending_commit(c)) {
                self.engine.revoke(&device, &mut self.sequencer, now);
                keep.push((device, since, now));
            } else {
                keep.push((device, since, last));
            }
        }
        self.revoking = keep;
    }

    /// Makes a membership or policy change: at once, or, while a commit of this device is
    /// still pending in `conv` (a key update being mined, say), once that commit is settled
    /// (the call is parked with its intent: see [`AwaitingCalls::resolve`]).
    fn change(
        &mut self,
        conv: ConversationId,
        reply: Reply<()>,
        intent: Intent,
        now: u64,
        make: impl FnOnce(&mut Engine, &mut NodeSequencer) -> Result<Commit, NodeError>,
    ) {
        if let Err(e) = self.registered() {
            return self.answer(reply, Err(e));
        }
        if self.engine.has_pending_commit(&conv) {
            self.engine.settle_commit(&conv, &mut self.sequencer, now);
        }
        if self.engine.has_pending_commit(&conv) {
            return self.awaiting.park(conv, Answer::Unit(reply), intent, Commit::Pending, now);
        }
        let r = make(&mut self.engine, &mut self.sequencer);
        self.settle_or_park(conv, reply, intent, r, now);
    }

    fn publish_key_packages(&mut self) {
        if !self.shared.registered.load(Ordering::Acquire) {
            return; // published once registration completes
        }
        match self.engine.key_package_envelope(KEY_PACKAGES_PER_BATCH, KEY_PACKAGE_TTL_SECS, now_ms()) {
            Ok(env) => {
                // Recorded on the ledger first (others accept only the recorded batch), then
                // published on the mesh by `Job::KeyPackagesRecorded`.
                let limits = *self.shared.db.limits();
                let Some(record) =
                    super::keypackages::ledger_record(&self.shared.identity.device, &env, &limits)
                else {
                    tracing::warn!("cannot publish key packages: the batch envelope does not decode");
                    return;
                };
                if !try_enqueue(&self.ledger, LedgerJob::KeyPackages { envelope: Box::new(env), record }) {
                    tracing::warn!(
                        "key packages not published: the ledger queue is full; they are published at the next refresh"
                    );
                }
            }
            Err(e) => tracing::warn!("cannot publish key packages: {e}"),
        }
    }

    /// Performs the engine's queued I/O.
    fn dispatch(&mut self) {
        for io in self.engine.take_io() {
            match io {
                Io::Publish(env) => {
                    let _ = self.mesh.blocking_send(MeshCmd::Publish(env));
                }
                Io::Subscribe(topic) => {
                    let _ = self.mesh.blocking_send(MeshCmd::Subscribe(topic));
                }
                Io::Discard(ids) => {
                    let _ = self.mesh.blocking_send(MeshCmd::Discard(ids));
                }
                Io::Erase { topic, id, secret } => {
                    let _ = self.mesh.blocking_send(MeshCmd::Erase { topic, id, secret });
                }
                Io::Stream(ev) => self.shared.emit(ev),
                Io::Anchor { conv, head, count, deadline_ms, authority } => {
                    if !try_enqueue(
                        &self.ledger,
                        LedgerJob::Anchor { conv, head, count, deadline_ms, authority },
                    ) {
                        self.engine.anchor_done(conv, count, false, now_ms());
                    }
                }
                Io::PublishKeyPackages => self.publish_key_packages(),
                Io::Conversation { id, epoch, active, members } => {
                    let accounts: BTreeSet<AccountId> = members.iter().map(|c| c.account).collect();
                    let unknown: Vec<AccountId> =
                        accounts.into_iter().filter(|a| !self.shared.knows_handle(a)).collect();
                    if !unknown.is_empty() {
                        let _ = try_enqueue(&self.ledger, LedgerJob::Handles(unknown));
                    }
                    self.shared.set_conversation(id, ConvSnapshot { epoch, active, members });
                }
                Io::Joined(id) => {
                    if let Ok(v) = self.shared.conversation_view(&id) {
                        self.shared.emit(StreamEvent::Joined { conversation: v });
                    }
                }
                Io::Forgotten(id) => {
                    if let Ok(mut c) = self.shared.convs.lock() {
                        c.remove(&id);
                    }
                }
            }
        }
    }
}

fn registered(shared: &Shared) -> Result<(), NodeError> {
    if shared.registered.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(NodeError::Ledger("this account is not registered on the ledger yet; retry in a moment".into()))
    }
}

/// `first` and the jobs `net` has ready behind it, at most `max` in all, split into the
/// deliveries (in order) and the other jobs (in order).
fn take_ready(first: Option<Arrival>, net: &mut mpsc::Receiver<Job>, max: usize) -> (Vec<Arrival>, Vec<Job>) {
    let mut batch: Vec<Arrival> = first.into_iter().collect();
    let mut other = Vec::new();
    while batch.len() + other.len() < max {
        match net.try_recv() {
            Ok(Job::Arrived(a)) => batch.push(*a),
            Ok(j) => other.push(j),
            Err(_) => break,
        }
    }
    (batch, other)
}

#[cfg(test)]
mod tests {
    use cairn_proto::{Envelope, Id, Topic};
    use tokio::sync::mpsc;

    use super::{Arrival, Job, take_ready};

    fn arrived(i: u8) -> Job {
        let envelope = Envelope::new(Topic([i; 32]), u64::from(i), 60, vec![], vec![i]);
        Job::Arrived(Box::new(Arrival { id: envelope.id(), envelope, after_gap: false }))
    }

    fn status(i: u8) -> Job {
        Job::Status { id: Id([i; 32]), acks: 2, stored: true }
    }

    fn status_id(j: &Job) -> Option<u8> {
        match j {
            Job::Status { id, .. } => Some(id.0[0]),
            _ => None,
        }
    }

    #[test]
    fn a_turn_takes_at_most_its_share_of_ready_mesh_jobs_in_order() {
        let (tx, mut rx) = mpsc::channel(16);
        for j in [status(1), arrived(2), status(3), arrived(4), status(5), status(6)] {
            tx.try_send(j).unwrap();
        }
        // The share after a send burst: 4 of the 6 ready, deliveries apart, each kind in order.
        let (batch, other) = take_ready(None, &mut rx, 4);
        assert_eq!(batch.iter().map(|a| a.envelope.header.topic.0[0]).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(other.iter().filter_map(status_id).collect::<Vec<_>>(), [1, 3]);
        // The rest waits for the next turn, behind a first delivery that counts in the bound.
        let Job::Arrived(first) = arrived(7) else { unreachable!() };
        let (batch, other) = take_ready(Some(*first), &mut rx, 2);
        assert_eq!(batch.len(), 1);
        assert_eq!(other.iter().filter_map(status_id).collect::<Vec<_>>(), [5]);
        let (batch, other) = take_ready(None, &mut rx, 64);
        assert!(batch.is_empty());
        assert_eq!(other.iter().filter_map(status_id).collect::<Vec<_>>(), [6]);
        assert!(take_ready(None, &mut rx, 64).1.is_empty(), "nothing ready: nothing taken");
    }
}
