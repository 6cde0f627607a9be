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
//!
//! Batches (version 2) carry several envelopes of one originator, bound for the same store
//! nodes, in one request, and their answers in one response, in the request's order:
//!
//! ```text
//! batch request  = version:u8 (2) ‖ targets as above
//!                  ‖ count:u16 (2..=STEM_BATCH_MAX) ‖ count × envelope (u32 length ‖ bytes)
//!                  (the envelopes' bytes together at most the envelope limit)
//! batch response = version:u8 (2) ‖ count:u16 (≤ STEM_BATCH_MAX)
//!                  ‖ count × answer (u32 length (≤ STEM_RESPONSE_BYTES_MAX) ‖ version 1 answer)
//! ```
//! A hop that predates version 2 refuses a batch as malformed; its originator then takes the
//! direct path for those envelopes (the fail-safe of an unanswered stem).

use cairn_proto::codec::{DecodeError, Reader, Writer, at_most};
use libp2p::PeerId;

use crate::receipt::{RECEIPT_BYTES, StoreReceipt};

/// Format version of both messages.
pub const STEM_VERSION: u8 = 1;
/// Format version of a batch request and its response.
pub const STEM_BATCH_VERSION: u8 = 2;
/// Envelopes in one batch request, at most.
pub const STEM_BATCH_MAX: usize = 16;
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
/// A batch request's bytes besides its envelopes' own, at most.
pub const STEM_BATCH_OVERHEAD_BYTES: usize = STEM_REQUEST_OVERHEAD_BYTES + 2 + 4 * STEM_BATCH_MAX;
/// Encoded batch response, bytes, at most.
pub const STEM_BATCH_RESPONSE_BYTES_MAX: usize = 3 + STEM_BATCH_MAX * (4 + STEM_RESPONSE_BYTES_MAX);

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
    write_targets(&mut w, targets);
    w.raw(envelope);
    w.finish()
}

/// The batch request carrying `envelopes` (canonical encodings; 2 to [`STEM_BATCH_MAX`],
/// their bytes together at most the envelope limit: the caller's to check) for `targets`.
pub fn encode_batch(targets: &[PeerId], envelopes: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(STEM_BATCH_VERSION);
    write_targets(&mut w, targets);
    w.u16(envelopes.len().min(usize::from(u16::MAX)) as u16);
    for e in envelopes {
        w.bytes(e);
    }
    w.finish()
}

fn write_targets(w: &mut Writer, targets: &[PeerId]) {
    let n = targets.len().min(STEM_TARGETS_MAX);
    w.u16(n as u16);
    for t in &targets[..n] {
        w.bytes(&t.to_bytes());
    }
}

/// A decoded request: the store targets and each envelope's bytes (decoded and checked by
/// admission afterwards, one by one).
#[derive(Debug, PartialEq, Eq)]
pub struct StemRequest<'a> {
    /// The store nodes the originator targets.
    pub targets: Vec<PeerId>,
    /// The envelopes' bytes: one for version 1, 2 to [`STEM_BATCH_MAX`] for a batch.
    pub envelopes: Vec<&'a [u8]>,
    /// Sent as a batch (answered with a batch response).
    pub batch: bool,
}

/// Decodes a request of either version; a batch's envelopes are bounded in count and in
/// bytes together (`envelope_bytes_max`).
pub fn decode_any(b: &[u8], envelope_bytes_max: usize) -> Result<StemRequest<'_>, DecodeError> {
    if b.first() == Some(&STEM_VERSION) {
        let (targets, env) = decode_request(b)?;
        return Ok(StemRequest { targets, envelopes: vec![env], batch: false });
    }
    let mut r = Reader::new(b);
    r.version("stem request", STEM_BATCH_VERSION)?;
    let targets = read_targets(&mut r)?;
    let n = r.count(STEM_BATCH_MAX, "envelopes")?;
    if n < 2 {
        return Err(DecodeError::Invalid { field: "envelopes", reason: "a batch holds 2 or more" });
    }
    let mut envelopes = Vec::with_capacity(n);
    let mut total = 0;
    for _ in 0..n {
        let e = r.bytes(envelope_bytes_max, "envelope")?;
        total += e.len();
        at_most("stem batch", total, envelope_bytes_max)?;
        envelopes.push(e);
    }
    r.finish()?;
    Ok(StemRequest { targets, envelopes, batch: true })
}

/// The answers to a batch, in its order (at most [`STEM_BATCH_MAX`]).
pub fn encode_answers(answers: &[StemResponse]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(STEM_BATCH_VERSION);
    let n = answers.len().min(STEM_BATCH_MAX);
    w.u16(n as u16);
    for a in &answers[..n] {
        w.bytes(&a.encode());
    }
    w.finish()
}

/// Decodes an answer of either version: one answer (version 1) or a batch's answers.
pub fn decode_answers(b: &[u8]) -> Result<Vec<StemResponse>, DecodeError> {
    if b.first() == Some(&STEM_VERSION) {
        return Ok(vec![StemResponse::decode(b)?]);
    }
    at_most("stem batch response", b.len(), STEM_BATCH_RESPONSE_BYTES_MAX)?;
    let mut r = Reader::new(b);
    r.version("stem response", STEM_BATCH_VERSION)?;
    let n = r.count(STEM_BATCH_MAX, "answers")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(StemResponse::decode(r.bytes(STEM_RESPONSE_BYTES_MAX, "answer")?)?);
    }
    r.finish()?;
    Ok(out)
}

/// The store targets and the envelope bytes of a version 1 request (the envelope is decoded
/// and checked by admission afterwards).
pub fn decode_request(b: &[u8]) -> Result<(Vec<PeerId>, &[u8]), DecodeError> {
    let mut r = Reader::new(b);
    r.version("stem request", STEM_VERSION)?;
    let targets = read_targets(&mut r)?;
    Ok((targets, r.take(r.remaining(), "envelope")?))
}

fn read_targets(r: &mut Reader<'_>) -> Result<Vec<PeerId>, DecodeError> {
    let n = r.count(STEM_TARGETS_MAX, "targets")?;
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        targets.push(
            PeerId::from_bytes(r.bytes(PEER_ID_BYTES_MAX, "target")?)
                .map_err(|_| DecodeError::Invalid { field: "target", reason: "not a peer id" })?,
        );
    }
    Ok(targets)
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
        at_most("stem response", b.len(), STEM_RESPONSE_BYTES_MAX)?;
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

    #[test]
    fn batches_round_trip_and_are_bounded() {
        let k = Keypair::generate_ed25519();
        let t = vec![k.public().to_peer_id()];
        let envs = vec![b"one".to_vec(), b"two!".to_vec(), vec![7; 10]];
        let req = encode_batch(&t, &envs);
        assert!(req.len() <= STEM_BATCH_OVERHEAD_BYTES + 17);
        let got = decode_any(&req, 100).unwrap();
        assert_eq!(
            got,
            StemRequest { targets: t.clone(), envelopes: vec![&b"one"[..], b"two!", &[7; 10]], batch: true }
        );
        // A version 1 request reads as a one-envelope request.
        let single = encode_request(&t, b"env");
        let one = decode_any(&single, 100).unwrap();
        assert_eq!(one, StemRequest { targets: t.clone(), envelopes: vec![&b"env"[..]], batch: false });
        // Bounds: the envelopes' bytes together, their count (2..=STEM_BATCH_MAX), the frame.
        assert!(matches!(decode_any(&req, 16), Err(DecodeError::TooLarge { .. })), "17 bytes over 16");
        assert!(decode_any(&encode_batch(&t, &envs[..1]), 100).is_err(), "a batch of one");
        let many = vec![b"x".to_vec(); STEM_BATCH_MAX + 1];
        assert!(matches!(decode_any(&encode_batch(&t, &many), 100), Err(DecodeError::TooLarge { .. })));
        assert!(decode_any(&req[..req.len() - 1], 100).is_err(), "truncated");
        let mut longer = req.clone();
        longer.push(0);
        assert!(decode_any(&longer, 100).is_err(), "trailing bytes");
        assert!(decode_any(&[3, 0, 0], 100).is_err(), "unknown version");

        let r = StoreReceipt::sign(&k, Id([1; 32]), 1, 2).unwrap();
        let answers = vec![
            StemResponse { outcome: StemOutcome::Receipts, receipts: vec![(t[0], r)] },
            StemResponse::bare(StemOutcome::Busy),
        ];
        let b = encode_answers(&answers);
        assert_eq!(decode_answers(&b).unwrap(), answers);
        assert_eq!(decode_answers(&answers[1].encode()).unwrap(), vec![answers[1].clone()], "version 1");
        assert!(decode_answers(&b[..b.len() - 1]).is_err(), "truncated");
        let mut over = vec![STEM_BATCH_VERSION];
        over.extend_from_slice(&(STEM_BATCH_MAX as u16 + 1).to_be_bytes());
        assert!(decode_answers(&over).is_err(), "more answers than a batch holds");
        assert!(decode_answers(&vec![STEM_BATCH_VERSION; STEM_BATCH_RESPONSE_BYTES_MAX + 1]).is_err());
    }
}
