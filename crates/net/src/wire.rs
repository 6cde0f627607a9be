//! The store protocol (`/cairn/store/1`): bounded, versioned request/response frames.
//!
//! ```text
//! request  = version:u8 kind:u8 body
//!   1 store  envelope:bytes
//!   2 page   topic:[32] from:u64 limit:u32
//!   3 ids    count:u16 id:[32]*
//!   4 store-many count:u16 (1..=STORE_BATCH_MAX) envelope:bytes*
//!   5 erase  id:[32] secret:[32]   (drop the payload whose header's erase lock `secret` opens)
//! response = version:u8 kind:u8 body
//!   1 stored count:u16 (1..=STORE_BATCH_MAX) ack*
//!        ack = id:[32] outcome:u8 (0 stored, 1 duplicate, 2 refused, 3 full,
//!              4 needs-work base_bits:u8 (≤ 64)) has_receipt:u8
//!              (stored_at:u64 expires_at:u64 signature:[64])?   (see `receipt`)
//!   2 page   count:u32 (seq:u64 envelope:bytes)* has_next:u8 next:u64?
//!   3 envelopes count:u16 envelope:bytes*
//!   4 error  message:bytes (≤ 256)
//!   5 erased id:[32] outcome:u8 (0 erased, 1 unknown, 2 wrong secret or no lock)
//! ```
//! Frames travel length-prefixed (`u32`) and are refused above the size limits before any
//! allocation.

use cairn_proto::codec::{DecodeError, Reader, Writer};
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
                w.u16(es.len().min(usize::from(u16::MAX)) as u16);
                for e in es {
                    w.bytes(&e.encode());
                }
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
        }
        w.finish()
    }

    /// Bounded decoding.
    pub fn decode(b: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        if b.len() > REQUEST_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "request",
                len: b.len() as u64,
                max: REQUEST_BYTES_MAX as u64,
            });
        }
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
            4 => {
                let n = r.count(STORE_BATCH_MAX, "envelopes")?;
                if n == 0 {
                    return Err(DecodeError::Invalid { field: "envelopes", reason: "empty batch" });
                }
                let mut es = Vec::with_capacity(n);
                let mut bytes = 0;
                for _ in 0..n {
                    let b = r.bytes(limits.envelope_bytes_max, "envelope")?;
                    bytes += b.len();
                    if bytes > STORE_BATCH_BYTES_MAX {
                        return Err(DecodeError::TooLarge {
                            field: "store batch",
                            len: bytes as u64,
                            max: STORE_BATCH_BYTES_MAX as u64,
                        });
                    }
                    es.push(Envelope::decode(b, limits)?);
                }
                Self::StoreMany(es)
            }
            5 => Self::Erase { id: Id(r.array("id")?), secret: r.array("secret")? },
            6 => {
                Self::StoreRelayed(Envelope::decode(r.bytes(limits.envelope_bytes_max, "envelope")?, limits)?)
            }
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown request kind" }),
        };
        r.finish()?;
        Ok(req)
    }
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
        }
        w.finish()
    }

    /// Bounded decoding.
    pub fn decode(b: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        if b.len() > RESPONSE_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "response",
                len: b.len() as u64,
                max: RESPONSE_BYTES_MAX as u64,
            });
        }
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
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown response kind" }),
        };
        r.finish()?;
        Ok(resp)
    }
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
        let heavy = Request::StoreMany(vec![fat; 6]);
        assert!(matches!(Request::decode(&heavy.encode(), &l), Err(DecodeError::TooLarge { .. })));
        // Found by the store_protocol fuzz target: non-UTF-8 error text must be refused, since
        // a lossy decode would re-encode to other bytes.
        assert!(Response::decode(&[1, 4, 0, 0, 0, 3, 0, 0, 128], &l).is_err());
        let long = Response::Error("é".repeat(200));
        let back = Response::decode(&long.encode(), &l).unwrap();
        assert_eq!(back.encode(), long.encode());
        assert!(Response::decode(&[2, 1], &l).is_err());
    }
}
