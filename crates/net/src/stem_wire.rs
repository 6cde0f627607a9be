//! The `/cairn/stem/1` messages: one envelope handed to a stem hop, and the hop's answer,
//! which carries the signed receipts of the store nodes the fluffing hop pushed it to. Both
//! are versioned and bounded; the frames around them are in `node/codec.rs`. A request names
//! the store nodes its originator targets (the topic's placement, the same for every sender
//! with the same view of the registered store set), so the fluffing hop pushes to the stores
//! whose receipts the originator counts.
//!
//! ```text
//! request  = version:u8 (1) ‖ count:u16 (≤ STEM_TARGETS_MAX)
//!            ‖ count × store peer id (u32 length (≤ 64) ‖ bytes)
//!            ‖ envelope (canonical encoding, at most the envelope limit)
//! response = version:u8 (1) ‖ outcome:u8 ‖ count:u16 (≤ STEM_RECEIPTS_MAX)
//!            ‖ count × (store peer id: u32 length (≤ 64) ‖ bytes, receipt: 112 bytes)
//! outcome  = 0 receipts | 1 duplicate | 2 busy | 3 refused
//! ```

use cairn_proto::codec::{DecodeError, Reader, Writer};
use libp2p::PeerId;

use crate::receipt::{RECEIPT_BYTES, StoreReceipt};

/// Format version of both messages.
pub const STEM_VERSION: u8 = 1;
/// Receipts in one answer, at most (a topic has `replicas` store nodes, 3 by default).
pub const STEM_RECEIPTS_MAX: usize = 8;
/// Store targets named in one request, at most.
pub const STEM_TARGETS_MAX: usize = 8;
/// Encoded peer id, bytes, at most (an Ed25519 peer id is 38).
const PEER_ID_BYTES_MAX: usize = 64;
/// A request's bytes besides its envelope, at most.
pub const STEM_REQUEST_OVERHEAD_BYTES: usize = 3 + STEM_TARGETS_MAX * (4 + PEER_ID_BYTES_MAX);
/// Encoded answer, bytes, at most.
pub const STEM_RESPONSE_BYTES_MAX: usize = 4 + STEM_RECEIPTS_MAX * (4 + PEER_ID_BYTES_MAX + RECEIPT_BYTES);

/// What a stem hop did with an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StemOutcome {
    /// Diffused (by this hop or a later one); the receipts are the store nodes' (possibly none).
    Receipts,
    /// Already handled here (in the stem or in gossip): nothing done.
    Duplicate,
    /// Over a bound (this hop's table, or the sender's stem allowance): nothing done.
    Busy,
    /// Invalid (format, size, proof of work, time window) or over the sender's rate.
    Refused,
}

/// A stem hop's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StemResponse {
    /// What was done.
    pub outcome: StemOutcome,
    /// `(store node, its signed receipt)`, at most [`STEM_RECEIPTS_MAX`]; to be verified.
    pub receipts: Vec<(PeerId, StoreReceipt)>,
}

/// The request carrying `envelope` (its canonical encoding) for the store nodes `targets`
/// (the first [`STEM_TARGETS_MAX`]).
pub fn encode_request(targets: &[PeerId], envelope: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(STEM_VERSION);
    let n = targets.len().min(STEM_TARGETS_MAX);
    w.u16(n as u16);
    for t in &targets[..n] {
        w.bytes(&t.to_bytes());
    }
    w.raw(envelope);
    w.finish()
}

/// The store targets and the envelope bytes of a request (the envelope is decoded and
/// checked by admission afterwards).
pub fn decode_request(b: &[u8]) -> Result<(Vec<PeerId>, &[u8]), DecodeError> {
    let mut r = Reader::new(b);
    r.version("stem request", STEM_VERSION)?;
    let n = r.count(STEM_TARGETS_MAX, "targets")?;
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        targets.push(
            PeerId::from_bytes(r.bytes(PEER_ID_BYTES_MAX, "target")?)
                .map_err(|_| DecodeError::Invalid { field: "target", reason: "not a peer id" })?,
        );
    }
    Ok((targets, r.take(r.remaining(), "envelope")?))
}

impl StemResponse {
    /// An answer without receipts.
    pub fn bare(outcome: StemOutcome) -> Self {
        Self { outcome, receipts: Vec::new() }
    }

    /// Canonical encoding; receipts beyond [`STEM_RECEIPTS_MAX`] are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(STEM_VERSION);
        w.u8(match self.outcome {
            StemOutcome::Receipts => 0,
            StemOutcome::Duplicate => 1,
            StemOutcome::Busy => 2,
            StemOutcome::Refused => 3,
        });
        let n = self.receipts.len().min(STEM_RECEIPTS_MAX);
        w.u16(n as u16);
        for (peer, r) in &self.receipts[..n] {
            w.bytes(&peer.to_bytes());
            r.encode_into(&mut w);
        }
        w.finish()
    }

    /// Decodes an answer (peer input: bounded, canonical).
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() > STEM_RESPONSE_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "stem response",
                len: b.len() as u64,
                max: STEM_RESPONSE_BYTES_MAX as u64,
            });
        }
        let mut r = Reader::new(b);
        r.version("stem response", STEM_VERSION)?;
        let outcome = match r.u8("outcome")? {
            0 => StemOutcome::Receipts,
            1 => StemOutcome::Duplicate,
            2 => StemOutcome::Busy,
            3 => StemOutcome::Refused,
            _ => return Err(DecodeError::Invalid { field: "outcome", reason: "unknown" }),
        };
        let n = r.count(STEM_RECEIPTS_MAX, "receipts")?;
        let mut receipts = Vec::with_capacity(n);
        for _ in 0..n {
            let peer = PeerId::from_bytes(r.bytes(PEER_ID_BYTES_MAX, "store peer id")?)
                .map_err(|_| DecodeError::Invalid { field: "store peer id", reason: "not a peer id" })?;
            receipts.push((peer, StoreReceipt::decode_from(&mut r)?));
        }
        r.finish()?;
        Ok(Self { outcome, receipts })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_proto::Id;
    use libp2p::identity::Keypair;

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let k = Keypair::generate_ed25519();
        let r = StoreReceipt::sign(&k, Id([1; 32]), 1, 2).unwrap();
        let resp =
            StemResponse { outcome: StemOutcome::Receipts, receipts: vec![(k.public().to_peer_id(), r)] };
        let b = resp.encode();
        assert!(b.len() <= STEM_RESPONSE_BYTES_MAX);
        assert_eq!(StemResponse::decode(&b).unwrap(), resp);
        assert!(StemResponse::decode(&b[..b.len() - 1]).is_err(), "truncated");
        let mut longer = b.clone();
        longer.push(0);
        assert!(StemResponse::decode(&longer).is_err(), "trailing bytes");
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(StemResponse::decode(&v2).is_err(), "unknown version");
        let too_many = [STEM_VERSION, 0, 0xff, 0xff];
        assert!(StemResponse::decode(&too_many).is_err(), "count over the bound");
        let bare = StemResponse::bare(StemOutcome::Busy);
        assert_eq!(StemResponse::decode(&bare.encode()).unwrap(), bare);
        let t = vec![k.public().to_peer_id()];
        let req = encode_request(&t, b"env");
        assert!(req.len() <= STEM_REQUEST_OVERHEAD_BYTES + 3);
        assert_eq!(decode_request(&req).unwrap(), (t, &b"env"[..]));
        assert!(decode_request(&[9, 0, 0, 1, 2]).is_err(), "unknown request version");
        assert!(decode_request(&[STEM_VERSION, 0, 9]).is_err(), "more targets than allowed");
        assert!(decode_request(&[STEM_VERSION, 0, 1, 0, 0, 0, 2, 1, 2]).is_err(), "not a peer id");
        assert!(decode_request(&[]).is_err());
    }
}
