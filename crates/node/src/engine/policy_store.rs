//! What the message policy keeps in `node.redb`, in the same transactions as the messages it
//! judges (see `policy_run`):
//!
//! - `node_policy_pins`: (conversation, epoch) → the pin in force at that epoch (empty: none),
//!   recorded as this device goes through epochs.
//! - `node_policy_state`: (conversation, epoch, sending device) → that device's partition
//!   ([`SenderSnapshot`]: next sequence number and the policy's entries).
//! - `node_policy_verdicts`: (conversation, envelope id) → [`Record`]: waiting for an earlier
//!   message of its sender, judged (the verdict), or released by this device's user.
//! - `node_policy_send_seq`: conversation → (epoch, next number) of this device's own text
//!   messages ([`cairn_proto::Message::device_seq`]), written with the send's transaction.
//!
//! Policy state is persisted, not rebuilt: a denied message's plaintext is not kept, so its
//! effect on the state could not be recomputed from history.

use cairn_contracts::policy::{SenderSnapshot, Verdict};
use cairn_proto::Id;
use cairn_proto::codec::{DecodeError, Reader, Writer};
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const PINS: TableDefinition<'_, (&[u8; 32], u64), &[u8]> = TableDefinition::new("node_policy_pins");
/// (conversation, epoch, sending device).
type StateKey<'a> = (&'a [u8; 32], u64, &'a [u8; 32]);
const STATE: TableDefinition<'_, StateKey<'static>, &[u8]> = TableDefinition::new("node_policy_state");
const VERDICTS: TableDefinition<'_, (&[u8; 32], &[u8; 32]), &[u8]> =
    TableDefinition::new("node_policy_verdicts");
const SEND_SEQ: TableDefinition<'_, &[u8; 32], (u64, u64)> = TableDefinition::new("node_policy_send_seq");

const RECORD_VERSION: u8 = 1;
/// Longest failure text kept with a record.
const FAILURE_MAX: usize = 512;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Creates the tables (at engine open).
pub(crate) fn create_tables(db: &NodeDb) -> Result<(), NodeError> {
    let tx = db.begin()?;
    tx.open_table(PINS).map_err(storage)?;
    tx.open_table(STATE).map_err(storage)?;
    tx.open_table(VERDICTS).map_err(storage)?;
    tx.open_table(SEND_SEQ).map_err(storage)?;
    tx.commit().map_err(storage)
}

/// Where a judged-or-waiting message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Waits for an earlier message of its sender (not shown).
    Waiting,
    /// Judged: see the verdict.
    Judged,
    /// Held, then released by this device's user (shown here only).
    Released,
}

/// A message the policy saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where it stands.
    pub state: RecordState,
    /// The verdict (`Hold` while waiting).
    pub verdict: Verdict,
    /// Why the verdict is `Hold` without the policy saying so (empty otherwise).
    pub failure: String,
    /// Sender's account.
    pub account: [u8; 32],
    /// Sender's device.
    pub device: [u8; 32],
    /// MLS epoch it was sent in.
    pub epoch: u64,
    /// Its device sequence number (`u64::MAX`: none).
    pub seq: u64,
    /// Sender's clock, ms.
    pub ts: u64,
    /// An ancestor could not be found when it arrived.
    pub after_gap: bool,
}

impl Record {
    /// Whether the message is shown in the normal history.
    pub fn shown(&self) -> bool {
        match self.state {
            RecordState::Waiting => false,
            RecordState::Released => true,
            RecordState::Judged => !matches!(self.verdict, Verdict::Hold | Verdict::Deny(_)),
        }
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(160);
        w.u8(RECORD_VERSION);
        w.u8(match self.state {
            RecordState::Waiting => 0,
            RecordState::Judged => 1,
            RecordState::Released => 2,
        });
        w.bytes(&self.verdict.encode());
        let f = self.failure.as_bytes();
        w.bytes(&f[..f.len().min(FAILURE_MAX)]);
        w.raw(&self.account);
        w.raw(&self.device);
        w.u64(self.epoch);
        w.u64(self.seq);
        w.u64(self.ts);
        w.u8(u8::from(self.after_gap));
        w.finish()
    }

    /// Decodes a record (bounded; an unknown version or state is an error).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("policy_record", RECORD_VERSION)?;
        let state = match r.u8("policy_record.state")? {
            0 => RecordState::Waiting,
            1 => RecordState::Judged,
            2 => RecordState::Released,
            _ => return Err(DecodeError::Invalid { field: "policy_record.state", reason: "unknown state" }),
        };
        let verdict = Verdict::decode(r.bytes(8 * 1024, "policy_record.verdict")?)?;
        let failure = String::from_utf8_lossy(r.bytes(FAILURE_MAX, "policy_record.failure")?).into_owned();
        let account = r.array("policy_record.account")?;
        let device = r.array("policy_record.device")?;
        let epoch = r.u64("policy_record.epoch")?;
        let seq = r.u64("policy_record.seq")?;
        let ts = r.u64("policy_record.ts")?;
        let after_gap = r.u8("policy_record.after_gap")? == 1;
        r.finish()?;
        Ok(Self { state, verdict, failure, account, device, epoch, seq, ts, after_gap })
    }
}

/// One write the policy makes, applied inside the engine's next transaction.
#[derive(Clone, Debug)]
pub(crate) enum Write {
    /// The pin of an epoch (`None`: no policy).
    Pin { conv: [u8; 32], epoch: u64, pin: Option<Vec<u8>> },
    /// A sender partition.
    State { conv: [u8; 32], epoch: u64, device: [u8; 32], snap: Vec<u8> },
    /// A message's record.
    Record { conv: [u8; 32], id: Id, record: Record },
    /// This device's next own sequence number.
    SendSeq { conv: [u8; 32], epoch: u64, next: u64 },
    /// A message stored hidden is now shown: it takes a place in the history's tail.
    Show { conv: [u8; 32], id: Id, after_gap: bool },
    /// A denied message's plaintext goes.
    Forget { id: Id },
}

/// Applies `writes` in `tx`, in order; returns the tail positions of the `Show` writes (by id).
pub(crate) fn apply_in(
    db: &NodeDb,
    tx: &WriteTransaction,
    writes: &[Write],
) -> Result<Vec<(Id, u64)>, NodeError> {
    let mut shown = Vec::new();
    for w in writes {
        match w {
            Write::Pin { conv, epoch, pin } => {
                let v = pin.clone().unwrap_or_default();
                tx.open_table(PINS)
                    .map_err(storage)?
                    .insert((conv, *epoch), v.as_slice())
                    .map_err(storage)?;
            }
            Write::State { conv, epoch, device, snap } => {
                tx.open_table(STATE)
                    .map_err(storage)?
                    .insert((conv, *epoch, device), snap.as_slice())
                    .map_err(storage)?;
            }
            Write::Record { conv, id, record } => {
                tx.open_table(VERDICTS)
                    .map_err(storage)?
                    .insert((conv, &id.0), record.encode().as_slice())
                    .map_err(storage)?;
            }
            Write::SendSeq { conv, epoch, next } => {
                tx.open_table(SEND_SEQ).map_err(storage)?.insert(conv, (*epoch, *next)).map_err(storage)?;
            }
            Write::Show { conv, id, after_gap } => {
                if let Some(seq) = db.show_in(tx, conv, id, *after_gap)? {
                    shown.push((*id, seq));
                }
            }
            Write::Forget { id } => db.forget_plain_in(tx, id)?,
        }
    }
    Ok(shown)
}

/// The pin recorded for `epoch` or the closest epoch before it: `None` if no epoch up to it
/// was recorded; `Some(None)` if no policy was pinned then.
pub(crate) fn pin_at(db: &NodeDb, conv: &[u8; 32], epoch: u64) -> Result<Option<Option<Vec<u8>>>, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(PINS).map_err(storage)?;
    let last =
        t.range((conv, 0)..=(conv, epoch)).map_err(storage)?.next_back().transpose().map_err(storage)?;
    Ok(last.map(|(_, v)| {
        let v = v.value();
        if v.is_empty() { None } else { Some(v.to_vec()) }
    }))
}

/// Whether `epoch`'s pin is recorded exactly.
pub(crate) fn pin_recorded(db: &NodeDb, conv: &[u8; 32], epoch: u64) -> Result<bool, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(PINS).map_err(storage)?;
    Ok(t.get((conv, epoch)).map_err(storage)?.is_some())
}

/// Every sender partition of (conversation, epoch).
pub(crate) fn states(
    db: &NodeDb,
    conv: &[u8; 32],
    epoch: u64,
) -> Result<Vec<([u8; 32], SenderSnapshot)>, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(STATE).map_err(storage)?;
    let mut out = Vec::new();
    for row in t.range((conv, epoch, &[0u8; 32])..=(conv, epoch, &[0xffu8; 32])).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        let snap = SenderSnapshot::decode(v.value()).map_err(storage)?;
        out.push((*k.value().2, snap));
    }
    Ok(out)
}

/// A message's record.
pub fn record(db: &NodeDb, conv: &[u8; 32], id: &Id) -> Result<Option<Record>, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(VERDICTS).map_err(storage)?;
    t.get((conv, &id.0)).map_err(storage)?.map(|v| Record::decode(v.value()).map_err(storage)).transpose()
}

/// Records of a conversation (at most `max`, by id), filtered by `keep`.
pub fn records(
    db: &NodeDb,
    conv: &[u8; 32],
    max: usize,
    keep: impl Fn(&Record) -> bool,
) -> Result<Vec<(Id, Record)>, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(VERDICTS).map_err(storage)?;
    let mut out = Vec::new();
    for row in t.range((conv, &[0u8; 32])..=(conv, &[0xffu8; 32])).map_err(storage)? {
        if out.len() >= max {
            break;
        }
        let (k, v) = row.map_err(storage)?;
        let r = Record::decode(v.value()).map_err(storage)?;
        if keep(&r) {
            out.push((Id(*k.value().1), r));
        }
    }
    Ok(out)
}

/// This device's (epoch, next own sequence number) in a conversation.
pub(crate) fn send_seq(db: &NodeDb, conv: &[u8; 32]) -> Result<Option<(u64, u64)>, NodeError> {
    let tx = db.database().begin_read().map_err(storage)?;
    let t = tx.open_table(SEND_SEQ).map_err(storage)?;
    Ok(t.get(conv).map_err(storage)?.map(|v| v.value()))
}

/// Releases a held message on this device (durable): it shows in the history from now on.
/// Returns its new tail position; an error if it is not held.
pub fn release(db: &NodeDb, conv: &[u8; 32], id: &Id) -> Result<u64, NodeError> {
    let Some(mut r) = record(db, conv, id)? else {
        return Err(NodeError::BadRequest("no such message among the policy's verdicts".into()));
    };
    if r.state != RecordState::Judged || r.verdict != Verdict::Hold {
        return Err(NodeError::BadRequest(
            "only a held message can be released (see `cairn chat held <conv>`)".into(),
        ));
    }
    if db.plain(id)?.is_none() {
        return Err(NodeError::BadRequest("the message's text is not kept on this device".into()));
    }
    r.state = RecordState::Released;
    let tx = db.begin()?;
    let writes = [
        Write::Show { conv: *conv, id: *id, after_gap: r.after_gap },
        Write::Record { conv: *conv, id: *id, record: r },
    ];
    let shown = apply_in(db, &tx, &writes)?;
    tx.commit().map_err(storage)?;
    match shown.first() {
        Some((_, seq)) => Ok(*seq),
        None => db.seq_of(id)?.ok_or_else(|| NodeError::Internal("released message has no place".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_garbage() {
        let r = Record {
            state: RecordState::Judged,
            verdict: Verdict::Label(vec!["a".into()]),
            failure: String::new(),
            account: [1; 32],
            device: [2; 32],
            epoch: 3,
            seq: 4,
            ts: 5,
            after_gap: true,
        };
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        assert!(r.shown());
        let mut bad = r.encode();
        bad[1] = 9;
        assert!(Record::decode(&bad).is_err());
        bad = r.encode();
        bad.push(0);
        assert!(Record::decode(&bad).is_err());
        let held = Record { verdict: Verdict::Hold, ..r.clone() };
        assert!(!held.shown());
        assert!(Record { state: RecordState::Released, ..held }.shown());
        assert!(!Record { state: RecordState::Waiting, verdict: Verdict::Allow, ..r }.shown());
    }
}
