//! API calls whose commit is submitted but not yet ordered: the actor goes on serving every
//! other conversation, and answers the caller when its commit is merged (the submission
//! worker's answer, or the block follower, shows it), rebuilds the change if other bytes took
//! its slot, passes on a "not a member" refusal, or gives up at the deadline. A call made while
//! another commit of this device was pending in the conversation waits here too, and its change
//! is made once that commit is settled. So does a call whose change could not be built yet
//! because the order it is built on was being read (the actor never reads the ledger itself):
//! it is made once the ledger worker's read is there.

use cairn_mls::policy_ext::PolicyPin;
use cairn_mls::{ConversationId, VerifiedKeyPackage};
use cairn_proto::AccountId;

use super::actor::Reply;
use super::sequencer::NodeSequencer;
use crate::engine::{Commit, Engine};
use crate::error::NodeError;

/// A call waiting for its read of the order is tried again at least this often, ms (it is
/// also tried as soon as the read is there).
pub const READ_AGAIN_MS: u64 = 1_000;
/// Calls waiting for their commit at most. Overflow policy: a new one is answered at once
/// with [`NodeError::Busy`] (its commit stays pending and still applies when ordered).
pub const AWAITING_MAX: usize = 256;
/// How long a caller waits for its commit to be ordered, ms.
pub const AWAIT_COMMIT_MS: u64 = 60_000;
/// Rebuilds of a change whose slot other bytes took, at most.
const REBUILDS_MAX: u32 = 3;
/// A pending commit is offered to the sequencer again this often, ms (a safety net: the
/// submission worker reports each answer at once, and keeps a commit's mining progress
/// between offers).
pub const RESUBMIT_EVERY_MS: u64 = 2_000;

/// The change to make again if its commit lost its slot.
pub enum Intent {
    /// Add these devices (those already members are skipped).
    Add(Vec<VerifiedKeyPackage>),
    /// Remove this account.
    Remove(AccountId),
    /// Pin this policy (`None`: unpin).
    SetPolicy(Option<PolicyPin>),
    /// Leave (a proposal: MLS builds none while a commit of this device is pending).
    Leave,
}

/// Who to answer.
pub enum Answer {
    /// A `create`: answered with the conversation.
    Create(Reply<ConversationId>),
    /// Anything else.
    Unit(Reply<()>),
}

impl Answer {
    /// Answers the caller.
    pub fn send(self, conv: ConversationId, r: Result<(), NodeError>) {
        match self {
            Answer::Create(reply) => {
                let _ = reply.send(r.map(|()| conv));
            }
            Answer::Unit(reply) => {
                let _ = reply.send(r);
            }
        }
    }
}

/// One waiting call.
pub struct Awaiting {
    conv: ConversationId,
    answer: Answer,
    intent: Intent,
    deadline_ms: u64,
    rebuilds: u32,
    last_offer_ms: u64,
    /// Nothing built yet: the order the change is built on is being read.
    reading: bool,
}

/// The waiting calls.
#[derive(Default)]
pub struct AwaitingCalls {
    calls: Vec<Awaiting>,
}

impl AwaitingCalls {
    /// Parks a call (`state`: where its change stands), or answers Busy when full.
    pub fn park(&mut self, conv: ConversationId, answer: Answer, intent: Intent, state: Commit, now_ms: u64) {
        if self.calls.len() >= AWAITING_MAX {
            answer.send(conv, Err(NodeError::Busy));
            return;
        }
        let deadline_ms = now_ms + AWAIT_COMMIT_MS;
        let reading = state == Commit::Reading;
        let call =
            Awaiting { conv, answer, intent, deadline_ms, rebuilds: 0, last_offer_ms: now_ms, reading };
        self.calls.push(call);
    }

    /// Whether any call waits.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Settles the calls whose commit is settled (returned, for the actor to answer once the
    /// engine's I/O is performed); re-offers or rebuilds the others.
    pub fn resolve(&mut self, engine: &mut Engine, seq: &mut NodeSequencer, now_ms: u64) -> Vec<Settled> {
        let mut out = Vec::new();
        for mut a in std::mem::take(&mut self.calls) {
            let conv = a.conv;
            if a.reading {
                self.read_and_make(a, engine, seq, now_ms, &mut out);
                continue;
            }
            if seq.take_not_member(&conv.topic()) {
                let e = NodeError::Sequencer(cairn_proto::SequencerError::NotMember.to_string());
                out.push(Settled::new(a.answer, conv, Err(e)));
            } else if engine.take_own_merged(&conv) && !engine.has_pending_commit(&conv) {
                // Merged; an add of more than one commit goes on with the rest.
                let r = redo(engine, &a.intent, conv, seq, now_ms);
                self.made(a, r, &mut out);
            } else if !engine.has_pending_commit(&conv) {
                // Other bytes took the slot: build the change again.
                a.rebuilds += 1;
                if a.rebuilds > REBUILDS_MAX {
                    let e =
                        NodeError::Conflict("the change lost its slot in the order too often; retry".into());
                    out.push(Settled::new(a.answer, conv, Err(e)));
                    continue;
                }
                let r = redo(engine, &a.intent, conv, seq, now_ms);
                self.made(a, r, &mut out);
            } else if now_ms >= a.deadline_ms {
                let e = NodeError::Sequencer(
                    "the ledger has not ordered the change yet; it applies when it does".into(),
                );
                out.push(Settled::new(a.answer, conv, Err(e)));
            } else {
                if now_ms.saturating_sub(a.last_offer_ms) >= RESUBMIT_EVERY_MS {
                    a.last_offer_ms = now_ms;
                    engine.settle_commit(&conv, seq, now_ms);
                }
                self.calls.push(a);
            }
        }
        out
    }

    /// A call waiting for its read of the order: made again once the read is there (or every
    /// [`READ_AGAIN_MS`], which asks again), until its deadline.
    fn read_and_make(
        &mut self,
        mut a: Awaiting,
        engine: &mut Engine,
        seq: &mut NodeSequencer,
        now_ms: u64,
        out: &mut Vec<Settled>,
    ) {
        let conv = a.conv;
        if engine.has_pending_commit(&conv) {
            // Another change of this device was built first (a parked call, a key update):
            // this one waits for it, as any call made while a commit is pending.
            a.reading = false;
            self.calls.push(a);
            return;
        }
        if now_ms >= a.deadline_ms {
            let e = NodeError::Sequencer("the ledger could not be read in time; try again".into());
            out.push(Settled::new(a.answer, conv, Err(e)));
            return;
        }
        let due = now_ms.saturating_sub(a.last_offer_ms) >= READ_AGAIN_MS;
        if !seq.order_ready(&conv.topic()) && !due {
            self.calls.push(a);
            return;
        }
        a.last_offer_ms = now_ms;
        let r = redo(engine, &a.intent, conv, seq, now_ms);
        self.made(a, r, out);
    }

    /// A change made again: its call is answered when it is done or failed, and otherwise
    /// waits (for its commit, or for its read of the order).
    fn made(&mut self, mut a: Awaiting, r: Result<Commit, NodeError>, out: &mut Vec<Settled>) {
        match r {
            Ok(Commit::Done) => out.push(Settled::new(a.answer, a.conv, Ok(()))),
            Ok(state) => {
                a.reading = state == Commit::Reading;
                self.calls.push(a);
            }
            Err(e) => out.push(Settled::new(a.answer, a.conv, Err(e))),
        }
    }
}

/// A call whose commit is settled, to answer.
pub struct Settled {
    answer: Answer,
    conv: ConversationId,
    result: Result<(), NodeError>,
}

impl Settled {
    fn new(answer: Answer, conv: ConversationId, result: Result<(), NodeError>) -> Self {
        Self { answer, conv, result }
    }

    /// Answers the caller.
    pub fn send(self) {
        self.answer.send(self.conv, self.result);
    }
}

/// Makes the change again (an add skips devices that are members by now).
fn redo(
    engine: &mut Engine,
    intent: &Intent,
    conv: ConversationId,
    seq: &mut dyn cairn_proto::CommitSequencer,
    now_ms: u64,
) -> Result<Commit, NodeError> {
    match intent {
        Intent::Add(kps) => engine.add(conv, kps.clone(), seq, now_ms),
        Intent::Remove(account) => {
            if engine.member_accounts(&conv)?.contains(account) {
                engine.remove(conv, *account, seq, now_ms)
            } else {
                Ok(Commit::Done)
            }
        }
        Intent::Leave => engine.leave(conv, seq, now_ms),
        Intent::SetPolicy(pin) => {
            if engine.policy(&conv)? == *pin {
                Ok(Commit::Done)
            } else {
                engine.set_policy(conv, pin.clone(), seq, now_ms)
            }
        }
    }
}
