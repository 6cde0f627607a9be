//! Policy contracts: a conversation's moderation rules, run by every member's node on what it
//! receives, inside end-to-end encryption (no server reads the mail).
//!
//! - [`PolicyPin`]: the code hash and configuration a group pins (in its MLS group context;
//!   only a commit changes it, so every member switches at the same epoch).
//! - [`Policy`]: runs the pinned module (a fresh wasmi instance per call, [`Limits::POLICY`],
//!   [`POLICY_FUEL`] fuel) on each message ([`MessageEvent`], export `on_message`) and each
//!   proposed group change ([`HandshakeEvent`], export `on_handshake`).
//! - Verdicts ([`Verdict`]): `Allow`, `Deny(reason)`, `Label(tags)`, `Hold`, `Reply(body)`,
//!   `ProposeRemove(account)`. A trap of any kind (out of fuel included), a malformed verdict
//!   or a state budget overrun gives `Hold` on a message and a refusal on a handshake: the
//!   same on every member, since fuel and traps are deterministic.
//! - Policy state is partitioned per sending device and a device's messages are judged in
//!   its order ([`MessageEvent::sender_seq`], 0, 1, 2…; an early arrival waits in a
//!   bounded buffer for the ones before it). So the verdicts depend only on each sender's own
//!   sequence, never on how senders interleave on the way to a member.
//! - Handshakes are judged on the configuration alone (their writes are discarded): commits
//!   are totally ordered by the ledger's sequencer, and a refused one is skipped by all.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_proto::codec::{DecodeError, Reader, Writer};

use crate::fuel::FuelSchedule;
use crate::limits::Limits;
use crate::runtime::{Compiled, Context, Entry, Runtime, StateView, Trap};
use crate::validate::UploadError;

/// Fuel given to one policy call (about 5-10 ms of wasmi on one core).
pub const POLICY_FUEL: u64 = 1_000_000;
/// Largest policy configuration, in bytes.
pub const CONFIG_MAX: usize = 4 * 1024;
/// Largest message body given to a policy, in bytes (a longer body is cut to this).
pub const BODY_MAX: usize = 16 * 1024;
/// Longest `Deny` reason kept, in bytes.
pub const REASON_MAX: usize = 256;
/// Most `Label` tags.
pub const TAGS_MAX: usize = 8;
/// Longest tag, in bytes.
pub const TAG_MAX: usize = 32;
/// Largest `Reply` body, in bytes.
pub const REPLY_MAX: usize = 4 * 1024;
/// Most state entries one sender's partition may hold (a call that would go over is `Hold`).
pub const SENDER_KEYS_MAX: usize = 64;
/// Most messages of one sender waiting for an earlier one (later arrivals are `Hold`).
pub const PENDING_PER_SENDER_MAX: usize = 256;
/// Most senders a [`Policy`] tracks (a group has at most this many members' partitions).
pub const SENDERS_MAX: usize = 4096;

const PIN_VERSION: u8 = 1;
const EVENT_MESSAGE: u8 = 1;
const EVENT_HANDSHAKE: u8 = 2;

/// What a group pins: the policy module's code hash and its configuration.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PolicyPin {
    /// [`crate::code_hash`] of the module.
    pub code_hash: [u8; 32],
    /// The module's configuration (its own format, at most [`CONFIG_MAX`] bytes).
    pub config: Vec<u8>,
}

impl PolicyPin {
    /// Canonical encoding: version, hash, config behind a `u32` length.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(37 + self.config.len());
        w.u8(PIN_VERSION);
        w.raw(&self.code_hash);
        w.bytes(&self.config);
        w.finish()
    }

    /// Decodes a pin, refusing an unknown version, an oversized config or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("policy_pin", PIN_VERSION)?;
        let code_hash = r.array("policy_pin.code_hash")?;
        let config = r.bytes(CONFIG_MAX, "policy_pin.config")?.to_vec();
        r.finish()?;
        Ok(Self { code_hash, config })
    }
}

/// A received application message, as a policy sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MessageEvent {
    /// An id the caller uses to match verdicts to messages (e.g. the envelope id); not shown to
    /// the policy.
    pub id: [u8; 32],
    /// The group (conversation topic).
    pub group: [u8; 32],
    /// MLS epoch the message was sent in.
    pub epoch: u64,
    /// Sender's account.
    pub sender_account: [u8; 32],
    /// Sender's device.
    pub sender_device: [u8; 32],
    /// The sending device's sequence number: 0 for its first message in the group, then +1
    /// each. Partitions are per sending device: a device's messages form one causal chain,
    /// while two devices of one account have no agreed order between them.
    pub sender_seq: u64,
    /// Sender's timestamp, ms.
    pub ts: u64,
    /// Content type (the first byte of the message body in Cairn).
    pub content_type: u8,
    /// The body (cut to [`BODY_MAX`]).
    pub body: Vec<u8>,
}

/// A change to the group a member proposes or commits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GroupChange {
    /// Add an account's device.
    Add([u8; 32]),
    /// Remove an account (a member removing itself is leaving).
    Remove([u8; 32]),
    /// Pin another policy (the new pin's code hash).
    ChangePolicy([u8; 32]),
    /// Any other change (key update, other extensions).
    Other,
    /// Erase a message of this account (asked only when the eraser is not its author).
    Erase([u8; 32]),
}

impl GroupChange {
    fn code_and_subject(&self) -> (u8, [u8; 32]) {
        match self {
            Self::Add(a) => (1, *a),
            Self::Remove(a) => (2, *a),
            Self::ChangePolicy(h) => (3, *h),
            Self::Other => (4, [0; 32]),
            Self::Erase(a) => (5, *a),
        }
    }
}

/// A proposed or committed group change, as a policy sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HandshakeEvent {
    /// The group.
    pub group: [u8; 32],
    /// Epoch the change applies to.
    pub epoch: u64,
    /// The account that proposed or committed it.
    pub proposer: [u8; 32],
    /// What it changes.
    pub change: GroupChange,
}

/// What a policy decides about a message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Show it.
    Allow,
    /// Drop it, with a reason the members may see.
    Deny(String),
    /// Show it with these tags.
    Label(Vec<String>),
    /// Keep it aside (not shown) for review; also what a failed policy call gives.
    Hold,
    /// Show it, and a bot member answers with this body.
    Reply(Vec<u8>),
    /// Show it, and propose removing this account.
    ProposeRemove([u8; 32]),
}

impl Verdict {
    /// Canonical encoding (what a policy writes as its output; empty output means `Allow`).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        match self {
            Self::Allow => w.u8(0),
            Self::Deny(reason) => {
                w.u8(1);
                w.bytes(reason.as_bytes());
            }
            Self::Label(tags) => {
                w.u8(2);
                w.u8(u8::try_from(tags.len()).unwrap_or(u8::MAX));
                for t in tags {
                    w.bytes(t.as_bytes());
                }
            }
            Self::Hold => w.u8(3),
            Self::Reply(body) => {
                w.u8(4);
                w.bytes(body);
            }
            Self::ProposeRemove(account) => {
                w.u8(5);
                w.raw(account);
            }
        }
        w.finish()
    }

    /// Decodes a policy's output; empty is `Allow`. Bounded; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Ok(Self::Allow);
        }
        let mut r = Reader::new(bytes);
        let v = match r.u8("verdict.kind")? {
            0 => Self::Allow,
            1 => Self::Deny(utf8(r.bytes(REASON_MAX, "verdict.reason")?, "verdict.reason")?),
            2 => {
                let n = usize::from(r.u8("verdict.tags")?);
                if n > TAGS_MAX {
                    return Err(DecodeError::Invalid { field: "verdict.tags", reason: "too many tags" });
                }
                let mut tags = Vec::with_capacity(n);
                for _ in 0..n {
                    tags.push(utf8(r.bytes(TAG_MAX, "verdict.tag")?, "verdict.tag")?);
                }
                Self::Label(tags)
            }
            3 => Self::Hold,
            4 => Self::Reply(r.bytes(REPLY_MAX, "verdict.reply")?.to_vec()),
            5 => Self::ProposeRemove(r.array("verdict.account")?),
            _ => return Err(DecodeError::Invalid { field: "verdict.kind", reason: "unknown verdict" }),
        };
        r.finish()?;
        Ok(v)
    }
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid { field, reason: "not UTF-8" })
}

/// Why a policy call gave `Hold` (or refused a handshake) instead of its own verdict.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Failure {
    /// The call trapped (out of fuel, aborted, out of bounds, a limit).
    Trap(Trap),
    /// The output is not a verdict.
    BadVerdict(String),
    /// The sender's state partition would go over [`SENDER_KEYS_MAX`] entries.
    StateFull,
    /// Too many of the sender's messages wait for an earlier one, or too many senders.
    Backlog,
    /// The message's sequence number was judged already (a replay).
    Replayed,
}

/// A message's judgement.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Judgement {
    /// The message ([`MessageEvent::id`]).
    pub id: [u8; 32],
    /// The verdict.
    pub verdict: Verdict,
    /// Fuel the call used (0 if it did not run).
    pub fuel_used: u64,
    /// Why the verdict is `Hold` without the policy saying so.
    pub failure: Option<Failure>,
}

/// A handshake's judgement: allowed, or refused with a reason.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HandshakeJudgement {
    /// `Ok` to apply the change; `Err(reason)` to skip it.
    pub decision: Result<(), String>,
    /// Fuel used.
    pub fuel_used: u64,
}

const SNAPSHOT_VERSION: u8 = 1;

/// A sending device's partition as kept between runs: the next sequence number to judge and
/// the policy's state entries (at most [`SENDER_KEYS_MAX`]).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SenderSnapshot {
    /// The next sequence number to judge.
    pub next_seq: u64,
    /// The partition's entries.
    pub state: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl SenderSnapshot {
    /// Canonical encoding: version, next sequence number, entries (key, value) in order.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(16 + 64 * self.state.len());
        w.u8(SNAPSHOT_VERSION);
        w.u64(self.next_seq);
        w.u16(u16::try_from(self.state.len()).unwrap_or(u16::MAX));
        for (k, v) in &self.state {
            w.bytes(k);
            w.bytes(v);
        }
        w.finish()
    }

    /// Decodes a snapshot; bounded (entries, key and value sizes of the runtime's limits).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("policy_snapshot", SNAPSHOT_VERSION)?;
        let next_seq = r.u64("policy_snapshot.next_seq")?;
        let n = usize::from(r.u16("policy_snapshot.entries")?);
        if n > SENDER_KEYS_MAX {
            return Err(DecodeError::Invalid {
                field: "policy_snapshot.entries",
                reason: "too many entries",
            });
        }
        let mut state = BTreeMap::new();
        for _ in 0..n {
            let k = r.bytes(SNAPSHOT_KEY_MAX, "policy_snapshot.key")?.to_vec();
            let v = r.bytes(SNAPSHOT_VALUE_MAX, "policy_snapshot.value")?.to_vec();
            state.insert(k, v);
        }
        r.finish()?;
        Ok(Self { next_seq, state })
    }
}

/// Longest state key a snapshot decodes.
const SNAPSHOT_KEY_MAX: usize = 1024;
/// Largest state value a snapshot decodes.
const SNAPSHOT_VALUE_MAX: usize = 64 * 1024;

/// One sender's partition: its state, the next sequence number to judge, early arrivals.
#[derive(Clone, Debug, Default)]
struct Sender {
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    next_seq: u64,
    pending: BTreeMap<u64, MessageEvent>,
}

struct Partition<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

impl StateView for Partition<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn balance(&self, _: &[u8; 32]) -> u64 {
        0
    }
    fn device_active(&self, _: &[u8; 32], _: &[u8; 32]) -> bool {
        false
    }
}

/// The policy a group pinned, with every sender's state: judges messages and handshakes.
#[derive(Debug)]
pub struct Policy {
    runtime: Arc<Runtime>,
    compiled: Arc<Compiled>,
    pin: PolicyPin,
    senders: BTreeMap<[u8; 32], Sender>,
}

/// A runtime for policy contracts ([`Limits::POLICY`], the default fuel schedule).
pub fn policy_runtime() -> Runtime {
    Runtime::new(Limits::POLICY, FuelSchedule::default())
}

impl Policy {
    /// Loads `code` for `pin`: refuses code whose hash is not the pinned one, or that breaks
    /// an upload rule for policies (the error names the rule).
    pub fn new(runtime: Arc<Runtime>, pin: PolicyPin, code: &[u8]) -> Result<Self, UploadError> {
        if crate::code_hash(code) != pin.code_hash {
            return Err(UploadError::Malformed("the code does not match the pinned code hash".into()));
        }
        if pin.config.len() > CONFIG_MAX {
            return Err(UploadError::Malformed(format!("configuration over {CONFIG_MAX} bytes")));
        }
        let compiled = runtime.compile_cached(code)?;
        Ok(Self { runtime, compiled, pin, senders: BTreeMap::new() })
    }

    /// The pin this policy runs.
    pub fn pin(&self) -> &PolicyPin {
        &self.pin
    }

    /// Takes one received message; returns the judgements it made possible, in sender order:
    /// none while an earlier message of the same sender is missing, several when it fills a
    /// gap. A replayed sequence number is judged `Hold` ([`Failure::Replayed`]) at once.
    pub fn on_message(&mut self, ev: MessageEvent) -> Vec<Judgement> {
        if !self.senders.contains_key(&ev.sender_device) && self.senders.len() >= SENDERS_MAX {
            return vec![failed(ev.id, Failure::Backlog)];
        }
        let s = self.senders.entry(ev.sender_device).or_default();
        if ev.sender_seq < s.next_seq || s.pending.contains_key(&ev.sender_seq) {
            return vec![failed(ev.id, Failure::Replayed)];
        }
        if ev.sender_seq > s.next_seq {
            if s.pending.len() >= PENDING_PER_SENDER_MAX {
                return vec![failed(ev.id, Failure::Backlog)];
            }
            s.pending.insert(ev.sender_seq, ev);
            return Vec::new();
        }
        let device = ev.sender_device;
        let mut out = vec![self.judge(ev)];
        while let Some(ev) = self.senders.get_mut(&device).and_then(|s| s.pending.remove(&s.next_seq)) {
            out.push(self.judge(ev));
        }
        out
    }

    /// Messages waiting for an earlier message of their sender.
    pub fn waiting(&self) -> usize {
        self.senders.values().map(|s| s.pending.len()).sum()
    }

    /// A sending device's partition (its state and next sequence number to judge), without
    /// the messages waiting in it; `None` if the device sent nothing judged or waiting yet.
    pub fn snapshot(&self, device: &[u8; 32]) -> Option<SenderSnapshot> {
        self.senders.get(device).map(|s| SenderSnapshot { next_seq: s.next_seq, state: s.state.clone() })
    }

    /// Puts back a partition taken with [`Policy::snapshot`] (at a restart): the device's
    /// next message to judge is `snap.next_seq`. Messages waiting in it are dropped; the
    /// caller offers them again.
    pub fn restore(&mut self, device: [u8; 32], snap: SenderSnapshot) {
        let s = self.senders.entry(device).or_default();
        s.next_seq = snap.next_seq;
        s.state = snap.state;
        s.pending.clear();
    }

    fn judge(&mut self, ev: MessageEvent) -> Judgement {
        let input = message_input(&self.pin.config, &ev);
        let ctx = Context {
            caller: ev.sender_account,
            contract: self.pin.code_hash,
            funds: 0,
            block_height: ev.epoch,
            block_time_ms: ev.ts,
        };
        let s = self.senders.entry(ev.sender_device).or_default();
        s.next_seq = ev.sender_seq.saturating_add(1);
        let report = self.runtime.call(
            &self.compiled,
            Entry::OnMessage,
            &ctx,
            &input,
            &Partition(&s.state),
            POLICY_FUEL,
        );
        let fuel_used = report.fuel_used;
        let effects = match report.result {
            Ok(e) => e,
            Err(t) => return Judgement { fuel_used, ..failed(ev.id, Failure::Trap(t)) },
        };
        let verdict = match Verdict::decode(&effects.output) {
            Ok(v) => v,
            Err(e) => return Judgement { fuel_used, ..failed(ev.id, Failure::BadVerdict(e.to_string())) },
        };
        let mut next = s.state.clone();
        for (k, v) in effects.writes {
            match v {
                Some(v) => next.insert(k, v),
                None => next.remove(&k),
            };
        }
        if next.len() > SENDER_KEYS_MAX {
            return Judgement { fuel_used, ..failed(ev.id, Failure::StateFull) };
        }
        s.state = next;
        Judgement { id: ev.id, verdict, fuel_used, failure: None }
    }

    /// Judges a proposed or committed group change on the configuration alone.
    pub fn on_handshake(&self, ev: &HandshakeEvent) -> HandshakeJudgement {
        let (code, subject) = ev.change.code_and_subject();
        let mut w = Writer::with_capacity(120 + self.pin.config.len());
        w.u8(EVENT_HANDSHAKE);
        w.bytes(&self.pin.config);
        w.raw(&ev.group);
        w.u64(ev.epoch);
        w.raw(&ev.proposer);
        w.u8(code);
        w.raw(&subject);
        let input = w.finish();
        let ctx = Context {
            caller: ev.proposer,
            contract: self.pin.code_hash,
            funds: 0,
            block_height: ev.epoch,
            block_time_ms: 0,
        };
        let empty = BTreeMap::new();
        let report = self.runtime.call(
            &self.compiled,
            Entry::OnHandshake,
            &ctx,
            &input,
            &Partition(&empty),
            POLICY_FUEL,
        );
        let decision = match report.result {
            Err(t) => Err(format!("the policy failed ({t}): the change is refused")),
            Ok(e) => match Verdict::decode(&e.output) {
                Ok(Verdict::Allow) => Ok(()),
                Ok(Verdict::Deny(reason)) => Err(reason),
                Ok(other) => Err(format!("the policy answered {other:?} to a group change: refused")),
                Err(e) => Err(format!("the policy's verdict is malformed ({e}): refused")),
            },
        };
        HandshakeJudgement { decision, fuel_used: report.fuel_used }
    }
}

fn failed(id: [u8; 32], why: Failure) -> Judgement {
    Judgement { id, verdict: Verdict::Hold, fuel_used: 0, failure: Some(why) }
}

/// The input of `on_message`: kind 1, config, group, epoch, sender account and device, sender
/// sequence number, timestamp, content type, body (byte strings behind a `u32` length,
/// integers big-endian).
pub fn message_input(config: &[u8], ev: &MessageEvent) -> Vec<u8> {
    let body = &ev.body[..ev.body.len().min(BODY_MAX)];
    let mut w = Writer::with_capacity(140 + config.len() + body.len());
    w.u8(EVENT_MESSAGE);
    w.bytes(config);
    w.raw(&ev.group);
    w.u64(ev.epoch);
    w.raw(&ev.sender_account);
    w.raw(&ev.sender_device);
    w.u64(ev.sender_seq);
    w.u64(ev.ts);
    w.u8(ev.content_type);
    w.bytes(body);
    w.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn verdicts_and_pins_round_trip_and_refuse_garbage() {
        for v in [
            Verdict::Allow,
            Verdict::Deny("no".into()),
            Verdict::Label(vec!["spam".into(), "x".into()]),
            Verdict::Hold,
            Verdict::Reply(b"hi".to_vec()),
            Verdict::ProposeRemove([7; 32]),
        ] {
            assert_eq!(Verdict::decode(&v.encode()).unwrap(), v);
        }
        assert_eq!(Verdict::decode(&[]).unwrap(), Verdict::Allow);
        assert!(Verdict::decode(&[9]).is_err());
        assert!(Verdict::decode(&[0, 0]).is_err());
        assert!(Verdict::decode(&[2, 9]).is_err());
        let mut long = vec![1];
        long.extend_from_slice(&(REASON_MAX as u32 + 1).to_be_bytes());
        long.extend(vec![b'a'; REASON_MAX + 1]);
        assert!(Verdict::decode(&long).is_err());
        let pin = PolicyPin { code_hash: [3; 32], config: vec![1, 2, 3] };
        assert_eq!(PolicyPin::decode(&pin.encode()).unwrap(), pin);
        let mut bad = pin.encode();
        bad.push(0);
        assert!(PolicyPin::decode(&bad).is_err());
        bad = pin.encode();
        bad[0] = 2;
        assert!(PolicyPin::decode(&bad).is_err());
    }

    #[test]
    fn a_restored_snapshot_gives_the_verdicts_of_an_uninterrupted_run() {
        use crate::shipped_policy::moderation;
        let cfg = moderation::Config { max_messages: 3, window_ms: 60_000, ..Default::default() };
        let pin = cfg.pin().unwrap();
        let rt = Arc::new(policy_runtime());
        let ev = |seq: u64| MessageEvent {
            id: [seq as u8; 32],
            group: [1; 32],
            epoch: 4,
            sender_account: [2; 32],
            sender_device: [3; 32],
            sender_seq: seq,
            ts: 1_000 + seq,
            content_type: 1,
            body: b"hi".to_vec(),
        };
        let mut a = Policy::new(rt.clone(), pin.clone(), moderation::WASM).unwrap();
        let mut first = Vec::new();
        for seq in 0..2 {
            first.extend(a.on_message(ev(seq)));
        }
        let snap = a.snapshot(&[3; 32]).unwrap();
        assert_eq!(SenderSnapshot::decode(&snap.encode()).unwrap(), snap);
        assert!(SenderSnapshot::decode(&[1, 0]).is_err());
        let mut b = Policy::new(rt, pin, moderation::WASM).unwrap();
        b.restore([3; 32], snap);
        let rest_a: Vec<Verdict> = (2..5).flat_map(|s| a.on_message(ev(s))).map(|j| j.verdict).collect();
        let rest_b: Vec<Verdict> = (2..5).flat_map(|s| b.on_message(ev(s))).map(|j| j.verdict).collect();
        assert_eq!(rest_a, rest_b);
        assert_eq!(rest_a[0], Verdict::Allow);
        assert!(matches!(rest_a[1], Verdict::Deny(_)), "{rest_a:?}");
        assert!(first.iter().all(|j| j.verdict == Verdict::Allow));
    }
}
