//! The store protocol (`/cairn/store/1`): bounded, versioned request/response frames.
//!
//! ```text
//! request  = version:u8 kind:u8 body
//!   1 store  envelope:bytes
//!   2 page   topic:[32] from:u64 limit:u32
//!   3 ids    count:u16 id:[32]*
//!   4 store-many count:u16 (1..=STORE_BATCH_MAX) envelope:bytes*
//!   5 erase  id:[32] secret:[32]   (drop the payload whose header's erase lock `secret` opens)
//!   6 store-relayed envelope:bytes
//!   7 page-ids topic:[32] from:u64 limit:u32 (1..=PAGE_IDS_MAX)
//!   8 store-relayed-many count:u16 (1..=STORE_BATCH_MAX) envelope:bytes*
//! response = version:u8 kind:u8 body
//!   1 stored count:u16 (1..=STORE_BATCH_MAX) ack*
//!        ack = id:[32] outcome:u8 (0 stored, 1 duplicate, 2 refused, 3 full,
//!              4 needs-work base_bits:u8 (≤ 64)) has_receipt:u8
//!              (stored_at:u64 expires_at:u64 signature:[64])?   (see `receipt`)
//!   2 page   count:u32 (seq:u64 envelope:bytes)* has_next:u8 next:u64?
//!   3 envelopes count:u16 envelope:bytes*
//!   4 error  message:bytes (≤ 256)
//!   5 erased id:[32] outcome:u8 (0 erased, 1 unknown, 2 wrong secret or no lock)
//!   6 page-ids count:u32 (≤ PAGE_IDS_MAX) (seq:u64 id:[32])* has_next:u8 next:u64?
//!        (seqs strictly increasing, next above the last)
//! ```
//! Kinds 7 (request) and 6 (response) were added after the first release: a store node that
//! predates them answers a page-ids request with an error ("unknown request kind"), and the
//! asker falls back to whole pages (kind 2) for that store node (`Sync::page_by_ids`).
//! Request kind 8 came later still: a store node that predates it answers with an error, so
//! the envelopes a stem hop pushed in it get no receipt from that node, and the originator
//! falls back to its direct path (`stem_own_answered`).
//! Frames travel length-prefixed (`u32`) and are refused above the size limits before any
//! allocation.

use cairn_proto::codec::{DecodeError, Reader, Writer, at_most};
use cairn_proto::{Envelope, Id, Limits, Topic};

use crate::receipt::StoreReceipt;

const VERSION: u8 = 1;
/// Envelopes in one store-many request, at most.
pub const STORE_BATCH_MAX: usize = 64;
/// Encoded envelopes in one store-many request, bytes at most (a sender cuts its batches to fit).
pub const STORE_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Largest request frame, bytes (one batch plus framing).
pub const REQUEST_BYTES_MAX: usize = STORE_BATCH_BYTES_MAX + 64 + 4 * STORE_BATCH_MAX;
/// Largest response frame, bytes.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most ids in one by-id request.
pub const IDS_PER_REQUEST_MAX: usize = 256;
/// Most envelopes in one page.
pub const PAGE_ENVELOPES_MAX: u32 = 256;
/// Most `(cursor, id)` pairs in one page of ids (40 bytes each: a page-ids answer stays
/// under 41 KiB).
pub const PAGE_IDS_MAX: u32 = 1024;
const ERROR_BYTES_MAX: usize = 256;

/// A request to a store node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Keep this envelope.
    Store(Envelope),
    /// A page of a topic from a cursor.
    Page {
        /// Topic.
        topic: Topic,
        /// Cursor (inclusive).
        from: u64,
        /// Most envelopes wanted.
        limit: u32,
    },
    /// The envelopes with these ids.
    Ids(Vec<Id>),
    /// Keep these envelopes (1 to [`STORE_BATCH_MAX`], at most [`STORE_BATCH_BYTES_MAX`]
    /// encoded): one request and one durable commit for a sender's burst.
    StoreMany(Vec<Envelope>),
    /// Drop the payload of `id`: `secret` must open the erase lock its header commits to. The
    /// header stays as a tombstone.
    Erase {
        /// Envelope id.
        id: Id,
        /// Preimage of the header's erase lock.
        secret: [u8; 32],
    },
    /// Keep this envelope, pushed by a stem hop that diffused it for someone else: counted
    /// against the pushing peer's relay share of the quotas, apart from its own mail's share,
    /// so a flood laundered through an honest relay cannot use up what the relay itself sends.
    StoreRelayed(Envelope),
    /// Several [`Request::StoreRelayed`] pushes in one request (1 to [`STORE_BATCH_MAX`], at
    /// most [`STORE_BATCH_BYTES_MAX`] encoded): what a stem hop fluffed in one turn of its loop.
    StoreRelayedMany(Vec<Envelope>),
    /// A page of a topic's ids from a cursor (no envelope): the asker then fetches only the
    /// envelopes it lacks, with [`Request::Ids`].
    PageIds {
        /// Topic.
        topic: Topic,
        /// Cursor (inclusive).
        from: u64,
        /// Most ids wanted (1..=[`PAGE_IDS_MAX`]).
        limit: u32,
    },
}

/// What a store node did with an erase request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseOutcome {
    /// The payload is gone (or was already).
    Erased,
    /// This store node does not hold the envelope.
    Unknown,
    /// The secret does not open the header's erase lock, or the header has none.
    Refused,
}

fn encode_outcome(w: &mut Writer, o: StoreOutcome) {
    w.u8(match o {
        StoreOutcome::Stored => 0,
        StoreOutcome::Duplicate => 1,
        StoreOutcome::Refused => 2,
        StoreOutcome::Full => 3,
        StoreOutcome::NeedsWork { .. } => 4,
    });
    if let StoreOutcome::NeedsWork { base_bits } = o {
        w.u8(base_bits);
    }
}

fn decode_outcome(r: &mut Reader<'_>) -> Result<StoreOutcome, DecodeError> {
    match r.u8("outcome")? {
        0 => Ok(StoreOutcome::Stored),
        1 => Ok(StoreOutcome::Duplicate),
        2 => Ok(StoreOutcome::Refused),
        3 => Ok(StoreOutcome::Full),
        4 => match r.u8("base_bits")? {
            b if b <= 64 => Ok(StoreOutcome::NeedsWork { base_bits: b }),
            _ => Err(DecodeError::Invalid { field: "base_bits", reason: "over 64" }),
        },
        _ => Err(DecodeError::Invalid { field: "outcome", reason: "unknown" }),
    }
}

/// What happened to a stored envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Durably stored now.
    Stored,
    /// Was already stored durably.
    Duplicate,
    /// Refused (invalid, expired, or this node is not a store).
    Refused,
    /// Refused for now: a byte quota (of the topic, the requesting peer or the store) is
    /// reached. Nothing stored was evicted; try another store node or later.
    Full,
    /// Refused for now: the store node is loaded and asks for more proof of work than the
    /// envelope carries. Mine the next envelopes with this difficulty (base bits, see
    /// [`cairn_proto::pow::Difficulty`]), or try another store node.
    NeedsWork {
        /// Base bits asked for.
        base_bits: u8,
    },
}

/// What a store node answers for one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreAck {
    /// The envelope.
    pub id: Id,
    /// What happened.
    pub outcome: StoreOutcome,
    /// The store's signed promise (for `Stored` and `Duplicate`).
    pub receipt: Option<StoreReceipt>,
}

/// A store node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Outcome of a store or store-many request, one per envelope in its order; stored and
    /// duplicate outcomes carry the store node's signed receipt.
    Stored(Vec<StoreAck>),
    /// A page of history.
    Page {
        /// `(cursor, envelope)` pairs.
        entries: Vec<(u64, Envelope)>,
        /// Cursor for the next page.
        next: Option<u64>,
    },
    /// Envelopes found by id.
    Envelopes(Vec<Envelope>),
    /// The request could not be served.
    Error(String),
    /// Answer to an erase request.
    Erased {
        /// Envelope id.
        id: Id,
        /// What happened.
        outcome: EraseOutcome,
    },
    /// A page of a topic's ids (answer to [`Request::PageIds`]).
    PageIds {
        /// `(cursor, id)` pairs, cursors strictly increasing.
        entries: Vec<(u64, Id)>,
        /// Cursor for the next page (above the last entry's), if more remain.
        next: Option<u64>,
    },
}

impl Request {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(VERSION);
        match self {
            Self::Store(e) => {
                w.u8(1);
                w.bytes(&e.encode());
            }
            Self::Page { topic, from, limit } => {
                w.u8(2);
                w.raw(&topic.0);
                w.u64(*from);
                w.u32(*limit);
            }
            Self::Ids(ids) => {
                w.u8(3);
                w.u16(ids.len().min(usize::from(u16::MAX)) as u16);
                for id in ids {
                    w.raw(&id.0);
                }
            }
            Self::StoreMany(es) => {
                w.u8(4);
                envelopes(&mut w, es);
            }
            Self::Erase { id, secret } => {
                w.u8(5);
                w.raw(&id.0);
                w.raw(secret);
            }
            Self::StoreRelayed(e) => {
                w.u8(6);
                w.bytes(&e.encode());
            }
            Self::PageIds { topic, from, limit } => {
                w.u8(7);
                w.raw(&topic.0);
                w.u64(*from);
                w.u32(*limit);
            }
            Self::StoreRelayedMany(es) => {
                w.u8(8);
                envelopes(&mut w, es);
            }
        }
        w.finish()
    }

    /// Bounded decoding.
    pub fn decode(b: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        at_most("request", b.len(), REQUEST_BYTES_MAX)?;
        let mut r = Reader::new(b);
        r.version("store request", VERSION)?;
        let req = match r.u8("kind")? {
            1 => Self::Store(Envelope::decode(r.bytes(limits.envelope_bytes_max, "envelope")?, limits)?),
            2 => {
                let topic = Topic(r.array("topic")?);
                let from = r.u64("from")?;
                let limit = r.u32("limit")?;
                if limit == 0 || limit > PAGE_ENVELOPES_MAX {
                    return Err(DecodeError::Invalid { field: "limit", reason: "must be 1..=256" });
                }
                Self::Page { topic, from, limit }
            }
            3 => {
                let n = r.count(IDS_PER_REQUEST_MAX, "ids")?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(Id(r.array("id")?));
                }
                Self::Ids(ids)
            }
            4 => Self::StoreMany(read_envelopes(&mut r, limits)?),
            5 => Self::Erase { id: Id(r.array("id")?), secret: r.array("secret")? },
            6 => {
                Self::StoreRelayed(Envelope::decode(r.bytes(limits.envelope_bytes_max, "envelope")?, limits)?)
            }
            7 => {
                let topic = Topic(r.array("topic")?);
                let from = r.u64("from")?;
                let limit = r.u32("limit")?;
                if limit == 0 || limit > PAGE_IDS_MAX {
                    return Err(DecodeError::Invalid { field: "limit", reason: "must be 1..=1024" });
                }
                Self::PageIds { topic, from, limit }
            }
            8 => Self::StoreRelayedMany(read_envelopes(&mut r, limits)?),
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown request kind" }),
        };
        r.finish()?;
        Ok(req)
    }
}

/// A batch's body: `count:u16 envelope:bytes*`.
fn envelopes(w: &mut Writer, es: &[Envelope]) {
    w.u16(es.len().min(usize::from(u16::MAX)) as u16);
    for e in es {
        w.bytes(&e.encode());
    }
}

/// Reads a batch's body: 1 to [`STORE_BATCH_MAX`] envelopes, at most [`STORE_BATCH_BYTES_MAX`]
/// encoded, each checked as it is read.
fn read_envelopes(r: &mut Reader<'_>, limits: &Limits) -> Result<Vec<Envelope>, DecodeError> {
    let n = r.count(STORE_BATCH_MAX, "envelopes")?;
    if n == 0 {
        return Err(DecodeError::Invalid { field: "envelopes", reason: "empty batch" });
    }
    let mut es = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let b = r.bytes(limits.envelope_bytes_max, "envelope")?;
        bytes += b.len();
        at_most("store batch", bytes, STORE_BATCH_BYTES_MAX)?;
        es.push(Envelope::decode(b, limits)?);
    }
    Ok(es)
}

impl Response {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(VERSION);
        match self {
            Self::Stored(acks) => {
                w.u8(1);
                w.u16(acks.len().min(usize::from(u16::MAX)) as u16);
                for a in acks {
                    w.raw(&a.id.0);
                    encode_outcome(&mut w, a.outcome);
                    match &a.receipt {
                        None => w.u8(0),
                        Some(r) => {
                            w.u8(1);
                            w.u64(r.stored_at_ms);
                            w.u64(r.expires_at_ms);
                            w.raw(&r.signature);
                        }
                    }
                }
            }
            Self::Page { entries, next } => {
                w.u8(2);
                w.u32(entries.len() as u32);
                for (seq, e) in entries {
                    w.u64(*seq);
                    w.bytes(&e.encode());
                }
                match next {
                    None => w.u8(0),
                    Some(n) => {
                        w.u8(1);
                        w.u64(*n);
                    }
                }
            }
            Self::Envelopes(es) => {
                w.u8(3);
                w.u16(es.len().min(usize::from(u16::MAX)) as u16);
                for e in es {
                    w.bytes(&e.encode());
                }
            }
            Self::Error(m) => {
                w.u8(4);
                // Cut at a character boundary so the text stays valid UTF-8.
                let mut end = m.len().min(ERROR_BYTES_MAX);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                w.bytes(&m.as_bytes()[..end]);
            }
            Self::Erased { id, outcome } => {
                w.u8(5);
                w.raw(&id.0);
                w.u8(match outcome {
                    EraseOutcome::Erased => 0,
                    EraseOutcome::Unknown => 1,
                    EraseOutcome::Refused => 2,
                });
            }
            Self::PageIds { entries, next } => {
                w.u8(6);
                w.u32(entries.len().min(u32::MAX as usize) as u32);
                for (seq, id) in entries {
                    w.u64(*seq);
                    w.raw(&id.0);
                }
                match next {
                    None => w.u8(0),
                    Some(n) => {
                        w.u8(1);
                        w.u64(*n);
                    }
                }
            }
        }
        w.finish()
    }

    /// Bounded decoding.
    pub fn decode(b: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        at_most("response", b.len(), RESPONSE_BYTES_MAX)?;
        let mut r = Reader::new(b);
        r.version("store response", VERSION)?;
        let resp = match r.u8("kind")? {
            1 => {
                let n = r.count(STORE_BATCH_MAX, "acks")?;
                if n == 0 {
                    return Err(DecodeError::Invalid { field: "acks", reason: "empty" });
                }
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = Id(r.array("id")?);
                    let outcome = decode_outcome(&mut r)?;
                    let receipt = match r.u8("has_receipt")? {
                        0 => None,
                        1 => Some(StoreReceipt {
                            id,
                            stored_at_ms: r.u64("stored_at")?,
                            expires_at_ms: r.u64("expires_at")?,
                            signature: r.array("signature")?,
                        }),
                        _ => {
                            return Err(DecodeError::Invalid {
                                field: "has_receipt",
                                reason: "must be 0 or 1",
                            });
                        }
                    };
                    acks.push(StoreAck { id, outcome, receipt });
                }
                Self::Stored(acks)
            }
            2 => {
                let n = r.u32("count")?;
                if n > PAGE_ENVELOPES_MAX {
                    return Err(DecodeError::TooLarge {
                        field: "page",
                        len: u64::from(n),
                        max: u64::from(PAGE_ENVELOPES_MAX),
                    });
                }
                let mut entries = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let seq = r.u64("seq")?;
                    entries.push((
                        seq,
                        Envelope::decode(r.bytes(limits.envelope_bytes_max, "envelope")?, limits)?,
                    ));
                }
                let next = match r.u8("has_next")? {
                    0 => None,
                    1 => Some(r.u64("next")?),
                    _ => return Err(DecodeError::Invalid { field: "has_next", reason: "must be 0 or 1" }),
                };
                Self::Page { entries, next }
            }
            3 => {
                let n = r.count(IDS_PER_REQUEST_MAX, "envelopes")?;
                let mut es = Vec::with_capacity(n);
                for _ in 0..n {
                    es.push(Envelope::decode(r.bytes(limits.envelope_bytes_max, "envelope")?, limits)?);
                }
                Self::Envelopes(es)
            }
            4 => {
                // Strict UTF-8: a lossy conversion would accept several encodings of one value.
                let text = std::str::from_utf8(r.bytes(ERROR_BYTES_MAX, "error")?)
                    .map_err(|_| DecodeError::Invalid { field: "error", reason: "not UTF-8" })?;
                Self::Error(text.to_string())
            }
            5 => {
                let id = Id(r.array("id")?);
                let outcome = match r.u8("erase outcome")? {
                    0 => EraseOutcome::Erased,
                    1 => EraseOutcome::Unknown,
                    2 => EraseOutcome::Refused,
                    _ => return Err(DecodeError::Invalid { field: "erase outcome", reason: "unknown" }),
                };
                Self::Erased { id, outcome }
            }
            6 => decode_page_ids(&mut r)?,
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown response kind" }),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// The body of a page-ids answer: at most [`PAGE_IDS_MAX`] entries (checked before anything
/// is allocated), cursors strictly increasing and `next` above the last (one encoding per
/// answer, and a cursor that can only move forward).
fn decode_page_ids(r: &mut Reader<'_>) -> Result<Response, DecodeError> {
    let n = r.u32("count")?;
    if n > PAGE_IDS_MAX {
        return Err(DecodeError::TooLarge {
            field: "page ids",
            len: u64::from(n),
            max: u64::from(PAGE_IDS_MAX),
        });
    }
    let mut entries: Vec<(u64, Id)> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let seq = r.u64("seq")?;
        if entries.last().is_some_and(|(last, _)| seq <= *last) {
            return Err(DecodeError::Invalid { field: "seq", reason: "not strictly increasing" });
        }
        entries.push((seq, Id(r.array("id")?)));
    }
    let next = match r.u8("has_next")? {
        0 => None,
        1 => Some(r.u64("next")?),
        _ => return Err(DecodeError::Invalid { field: "has_next", reason: "must be 0 or 1" }),
    };
    if let (Some(n), Some((last, _))) = (next, entries.last())
        && n <= *last
    {
        return Err(DecodeError::Invalid { field: "next", reason: "not above the last cursor" });
    }
    Ok(Response::PageIds { entries, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::envelope::pad;

    #[test]
    fn round_trips_and_bounds() {
        let l = Limits::default();
        let e = Envelope::new(Topic([1; 32]), 1, 60, vec![], pad(b"x", &l).unwrap());
        for req in [
            Request::Store(e.clone()),
            Request::Page { topic: Topic([2; 32]), from: 5, limit: 10 },
            Request::Ids(vec![Id([3; 32])]),
            Request::StoreMany(vec![e.clone(), e.clone()]),
            Request::Erase { id: e.id(), secret: [5; 32] },
            Request::StoreRelayed(e.clone()),
            Request::StoreRelayedMany(vec![e.clone(), e.clone(), e.clone()]),
        ] {
            assert_eq!(Request::decode(&req.encode(), &l).unwrap(), req);
        }
        for resp in [
            Response::Stored(vec![StoreAck { id: e.id(), outcome: StoreOutcome::Refused, receipt: None }]),
            Response::Page { entries: vec![(3, e.clone())], next: Some(4) },
            Response::Page { entries: vec![], next: None },
            Response::Envelopes(vec![e.clone()]),
            Response::Error("nope".into()),
            Response::Erased { id: e.id(), outcome: EraseOutcome::Erased },
            Response::Erased { id: e.id(), outcome: EraseOutcome::Refused },
            Response::Stored(vec![
                StoreAck {
                    id: e.id(),
                    outcome: StoreOutcome::Stored,
                    receipt: Some(StoreReceipt {
                        id: e.id(),
                        stored_at_ms: 1,
                        expires_at_ms: 2,
                        signature: [9; 64],
                    }),
                },
                StoreAck { id: Id([4; 32]), outcome: StoreOutcome::Full, receipt: None },
                StoreAck {
                    id: Id([5; 32]),
                    outcome: StoreOutcome::NeedsWork { base_bits: 13 },
                    receipt: None,
                },
            ]),
        ] {
            assert_eq!(Response::decode(&resp.encode(), &l).unwrap(), resp);
        }
        // A needs-work ack names at most 64 bits.
        let ack = |bits: u8| {
            let a = StoreAck {
                id: Id([5; 32]),
                outcome: StoreOutcome::NeedsWork { base_bits: bits },
                receipt: None,
            };
            Response::Stored(vec![a]).encode()
        };
        assert!(Response::decode(&ack(64), &l).is_ok());
        assert!(Response::decode(&ack(65), &l).is_err());
        let big = Request::Page { topic: Topic([2; 32]), from: 5, limit: 100_000 };
        assert!(Request::decode(&big.encode(), &l).is_err());
        let mut too_many = vec![VERSION, 3];
        too_many.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(Request::decode(&too_many, &l), Err(DecodeError::TooLarge { .. })));
        assert!(Request::decode(&[VERSION, 9], &l).is_err());
        // An erase request is exactly an id and a secret.
        assert!(Request::decode(&[VERSION, 5, 1, 2], &l).is_err());
        let mut bad_outcome = Response::Erased { id: e.id(), outcome: EraseOutcome::Unknown }.encode();
        *bad_outcome.last_mut().unwrap() = 7;
        assert!(Response::decode(&bad_outcome, &l).is_err());
        // A store-many batch: not empty, not above its count or its bytes.
        assert!(Request::decode(&[VERSION, 4, 0, 0], &l).is_err());
        let over = Request::StoreMany(vec![e.clone(); STORE_BATCH_MAX + 1]);
        assert!(matches!(Request::decode(&over.encode(), &l), Err(DecodeError::TooLarge { .. })));
        let fat = Envelope::new(Topic([1; 32]), 1, 60, vec![], pad(&vec![7u8; 200 * 1024], &l).unwrap());
        let heavy = Request::StoreMany(vec![fat.clone(); 6]);
        assert!(matches!(Request::decode(&heavy.encode(), &l), Err(DecodeError::TooLarge { .. })));
        // A relayed batch has the same bounds.
        assert!(Request::decode(&[VERSION, 8, 0, 0], &l).is_err());
        let over = Request::StoreRelayedMany(vec![e.clone(); STORE_BATCH_MAX + 1]);
        assert!(matches!(Request::decode(&over.encode(), &l), Err(DecodeError::TooLarge { .. })));
        let heavy = Request::StoreRelayedMany(vec![fat; 6]);
        assert!(matches!(Request::decode(&heavy.encode(), &l), Err(DecodeError::TooLarge { .. })));
        // Found by the store_protocol fuzz target: non-UTF-8 error text must be refused, since
        // a lossy decode would re-encode to other bytes.
        assert!(Response::decode(&[1, 4, 0, 0, 0, 3, 0, 0, 128], &l).is_err());
        let long = Response::Error("é".repeat(200));
        let back = Response::decode(&long.encode(), &l).unwrap();
        assert_eq!(back.encode(), long.encode());
        assert!(Response::decode(&[2, 1], &l).is_err());
    }

    #[test]
    fn page_ids_round_trip_and_bounds() {
        let l = Limits::default();
        let req = Request::PageIds { topic: Topic([2; 32]), from: 7, limit: PAGE_IDS_MAX };
        assert_eq!(Request::decode(&req.encode(), &l).unwrap(), req);
        for limit in [0, PAGE_IDS_MAX + 1, u32::MAX] {
            let bad = Request::PageIds { topic: Topic([2; 32]), from: 7, limit };
            assert!(Request::decode(&bad.encode(), &l).is_err(), "limit {limit}");
        }
        let entries: Vec<(u64, Id)> = (0..PAGE_IDS_MAX as u64).map(|i| (i * 2, Id([i as u8; 32]))).collect();
        for resp in [
            Response::PageIds { entries: entries.clone(), next: Some(2 * PAGE_IDS_MAX as u64) },
            Response::PageIds { entries: vec![(5, Id([1; 32]))], next: None },
            Response::PageIds { entries: vec![], next: Some(9) },
            Response::PageIds { entries: vec![], next: None },
        ] {
            assert_eq!(Response::decode(&resp.encode(), &l).unwrap(), resp);
        }
        // More than PAGE_IDS_MAX entries: refused on the count, before reading them.
        let mut over = vec![VERSION, 6];
        over.extend_from_slice(&(PAGE_IDS_MAX + 1).to_be_bytes());
        assert!(matches!(Response::decode(&over, &l), Err(DecodeError::TooLarge { .. })));
        let mut huge = vec![VERSION, 6];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Response::decode(&huge, &l), Err(DecodeError::TooLarge { .. })));
        // Cursors must increase, and `next` must lie beyond the last one.
        let back = Response::PageIds { entries: vec![(5, Id([1; 32])), (5, Id([2; 32]))], next: None };
        assert!(Response::decode(&back.encode(), &l).is_err());
        let behind = Response::PageIds { entries: vec![(5, Id([1; 32]))], next: Some(5) };
        assert!(Response::decode(&behind.encode(), &l).is_err());
        // A count that promises more than the frame holds, and trailing bytes, are errors.
        let one = Response::PageIds { entries: vec![(5, Id([1; 32]))], next: None }.encode();
        let mut short = one.clone();
        short.truncate(one.len() - 10);
        assert!(Response::decode(&short, &l).is_err());
        let mut long = one;
        long.push(0);
        assert!(Response::decode(&long, &l).is_err());
    }

    #[test]
    fn garbage_never_panics_the_decoders() {
        let l = Limits::default();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2_000usize {
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            // Steer a share of them at the new kinds.
            if len > 2 && len % 3 == 0 {
                b[0] = VERSION;
                b[1] = if len % 2 == 0 { 6 } else { 7 };
            }
            let _ = Request::decode(&b, &l);
            let _ = Response::decode(&b, &l);
        }
    }
}
