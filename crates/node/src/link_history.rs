//! The recent history a linked device brings along (`cairn device link --history N`): the
//! existing device's last N text messages of each conversation, as the signed inner messages
//! it kept, keyed by envelope id, sent under the link's PAKE key in numbered parts.
//!
//! The new device cannot read those envelopes itself: MLS gives a new member no key to earlier
//! epochs (forward secrecy). It stores the signed messages (each checked: its signature, and
//! that it belongs to the conversation's topic); once it has joined a conversation, the mesh
//! brings the envelopes from the store nodes, the engine finds their messages already kept and
//! puts them in the hash-linked chain, and `verify` checks each against its envelope header.
//!
//! ```text
//! bundle = version:u8 count:u32 (conversation:[32] envelope_id:[32] message_len:u32 message)*
//! ```

use cairn_proto::codec::{Reader, Writer};
use cairn_proto::{DecodeError, Id, Limits, Message};

use crate::db::{Accepted, NodeDb};
use crate::error::NodeError;

/// Bundle format version.
pub const HISTORY_VERSION: u8 = 1;
/// Messages per conversation a user may ask for, at most.
pub const HISTORY_PER_CONVERSATION_MAX: u32 = 1_000;
/// Messages in one bundle, at most.
pub const HISTORY_MESSAGES_MAX: usize = 10_000;
/// Plaintext bytes of one part (a part, sealed and framed, fits a 4 KiB link frame).
pub const PART_BYTES: usize = 3_600;
/// Parts of one bundle, at most (about 7 MiB).
pub const HISTORY_PARTS_MAX: usize = 2_048;

/// One message brought along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// Conversation id.
    pub conv: [u8; 32],
    /// Its envelope's id.
    pub id: Id,
    /// The signed inner message, encoded.
    pub inner: Vec<u8>,
}

/// The last `n` text messages of each of `convs` in `db`, oldest first, within the bounds
/// (the newest conversations' records are cut first when over [`HISTORY_MESSAGES_MAX`] or
/// [`HISTORY_PARTS_MAX`] parts).
pub fn collect(db: &NodeDb, convs: &[[u8; 32]], n: u32) -> Result<Vec<HistoryRecord>, NodeError> {
    let n = n.min(HISTORY_PER_CONVERSATION_MAX) as usize;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for conv in convs {
        let last = db.count(conv)?;
        let after = last.saturating_sub(n as u64);
        for m in db.messages(conv, after, n)? {
            let inner = m.message.encode();
            bytes += 68 + inner.len();
            if out.len() >= HISTORY_MESSAGES_MAX || bytes > PART_BYTES * HISTORY_PARTS_MAX - 5 {
                return Ok(out);
            }
            out.push(HistoryRecord { conv: *conv, id: m.id, inner });
        }
    }
    Ok(out)
}

/// The bundle of `records`, cut into parts of at most [`PART_BYTES`].
pub fn parts(records: &[HistoryRecord]) -> Vec<Vec<u8>> {
    if records.is_empty() {
        return Vec::new();
    }
    let mut w = Writer::with_capacity(5 + records.iter().map(|r| 68 + r.inner.len()).sum::<usize>());
    w.u8(HISTORY_VERSION);
    w.u32(records.len() as u32);
    for r in records {
        w.raw(&r.conv);
        w.raw(&r.id.0);
        w.bytes(&r.inner);
    }
    w.finish().chunks(PART_BYTES).map(<[u8]>::to_vec).collect()
}

/// Reassembles and decodes the parts (in order), checking every message: its signature and
/// certificate, and that it was sent in its conversation.
pub fn decode(parts: &[Vec<u8>], limits: &Limits) -> Result<Vec<HistoryRecord>, DecodeError> {
    if parts.len() > HISTORY_PARTS_MAX || parts.iter().any(|p| p.len() > PART_BYTES) {
        return Err(DecodeError::Invalid { field: "history", reason: "too many or too large parts" });
    }
    let bundle: Vec<u8> = parts.concat();
    let mut r = Reader::new(&bundle);
    r.version("history", HISTORY_VERSION)?;
    let count = r.u32("history.count")? as usize;
    if count > HISTORY_MESSAGES_MAX {
        return Err(DecodeError::Invalid { field: "history.count", reason: "over the bound" });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let conv: [u8; 32] = r.array("history.conversation")?;
        let id = Id(r.array("history.id")?);
        let inner = r.bytes(limits.envelope_bytes_max, "history.message")?.to_vec();
        let m = Message::decode(&inner, limits)?;
        if m.topic != cairn_mls::ConversationId(conv).topic() || m.verify().is_err() {
            return Err(DecodeError::Invalid {
                field: "history.message",
                reason: "not a signed message of its conversation",
            });
        }
        out.push(HistoryRecord { conv, id, inner });
    }
    r.finish()?;
    Ok(out)
}

/// Keeps `records` in `db` (one transaction), in their order; returns how many were new.
pub fn import(db: &NodeDb, records: &[HistoryRecord]) -> Result<usize, NodeError> {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        if db.has_plain(&r.id)? {
            continue;
        }
        let inner =
            Message::decode(&r.inner, db.limits()).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let text = inner.body.first() == Some(&crate::engine::KIND_TEXT);
        rows.push(Accepted { conv: r.conv, id: r.id, inner, text, after_gap: false, hidden: false });
    }
    let tx = db.begin()?;
    db.accept_in(&tx, &rows)?;
    tx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_mls::ConversationId;
    use cairn_proto::{DeviceCert, DeviceId};
    use ed25519_dalek::SigningKey;

    fn record(conv: [u8; 32], topic_of: [u8; 32], text: &str, i: u8) -> HistoryRecord {
        let account = SigningKey::from_bytes(&[1; 32]);
        let device = SigningKey::from_bytes(&[2; 32]);
        let cert = DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 1);
        let mut body = vec![crate::engine::KIND_TEXT];
        body.extend_from_slice(text.as_bytes());
        let m = Message::sign(
            &device,
            cert,
            ConversationId(topic_of).topic(),
            1_000 + u64::from(i),
            vec![],
            body,
        );
        HistoryRecord { conv, id: Id([i; 32]), inner: m.encode() }
    }

    #[test]
    fn a_bundle_round_trips_through_its_parts() {
        let big = "x".repeat(5_000);
        let records: Vec<HistoryRecord> =
            (0..3).map(|i| record([7; 32], [7; 32], if i == 1 { &big } else { "hi" }, i)).collect();
        let cut = parts(&records);
        assert!(cut.len() >= 2 && cut.iter().all(|p| p.len() <= PART_BYTES), "{}", cut.len());
        assert_eq!(decode(&cut, &Limits::default()).unwrap(), records);
        assert!(decode(&cut[..1], &Limits::default()).is_err(), "a missing part");
        assert!(parts(&[]).is_empty());
    }

    #[test]
    fn a_message_of_another_conversation_or_a_forged_one_is_refused() {
        let other = vec![record([7; 32], [8; 32], "elsewhere", 1)];
        assert!(decode(&parts(&other), &Limits::default()).is_err());
        let mut forged = record([7; 32], [7; 32], "hi", 1);
        let n = forged.inner.len();
        forged.inner[n - 1] ^= 1; // the signature's last byte
        assert!(decode(&parts(&[forged]), &Limits::default()).is_err());
        let too_many = vec![vec![0u8; 10]; HISTORY_PARTS_MAX + 1];
        assert!(decode(&too_many, &Limits::default()).is_err());
    }
}
