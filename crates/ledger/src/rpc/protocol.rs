//! The ledger RPC protocol, version 2: typed requests and responses with one canonical, bounded
//! encoding each.
//!
//! ```text
//! request  = version:u8 (= 2) kind:u8 body
//!   1 submit          tx:bytes (≤ TX_BYTES_MAX)
//!   2 status
//!   3 tx_status       id:[32]
//!   4 block           height:u64
//!   5 proof           key
//!   6 handshakes      topic:[32] from:u64 max:u32 (≤ 256)
//!   7 nonce           signer:[32]
//!   8 submit_batch    count:u16 (≤ 4096) tx:bytes*
//!  11 query           contract:[32] msg:bytes (≤ CONTRACT_MSG_MAX)
//!  12 handshake_page  topic:[32] from:u64 max:u32 (≤ 256) until:u64
//!  13 outcome_proof   id:[32]
//! key      = 0 account:[32] | 1 handle:bytes (≤ 32, UTF-8) | 2 nonce:[32] | 3 topic:[32]
//!          | 4 anchor:[32] | 5 meta | 6 params | 7 device owner:[32] | 8 key packages:[32]
//!          | 9 code:[32] | 10 contract:[32] | 11 contract state:[32] key:bytes (≤ 128)
//!          | 12 registered store nodes
//! response = version:u8 (= 2) kind:u8 body
//!   1 submitted       admission
//!   2 status          height:u64 digest:[32] state_root:[32] mempool:u64
//!   3 tx_status       0 unknown | 1 pending | 2 rejected refusal | 3 finalized height:u64 outcome
//!   4 block           0 | 1 block:bytes (0 | 1 finalization:bytes)
//!   5 proof           0 | 1 proof:bytes
//!   6 handshakes      count:u16 (≤ 256) payload:bytes*
//!   7 nonce           next:u64
//!   8 submitted_batch count:u16 (≤ 4096) admission*
//!   9 error           message:bytes (≤ 256, UTF-8)
//!  11 query           0 output:bytes (≤ 64 KiB) | 1 refusal
//!  12 handshake_page  start:[32] count:u16 (≤ 256) payload:bytes* count:u16 (≤ 4096) link:[32]*
//!  13 outcome_proof   0 | 1 proof:bytes (crate::outcome_proof::OutcomeProof)
//! admission = 0 id:[32] | 1 refusal
//! refusal   = code:u8 message:bytes (≤ 256, UTF-8)
//! outcome   = 0 applied | 1 sequenced topic:[32] seq:u64
//!           | 2 failed refusal (0 | 1 after:u64 current:u64)
//! ```
//!
//! Kind 13 was added within version 2 (an older validator refuses it as an unknown kind; the
//! block header format it proves against carries its own version, 2). Version 1 had no version byte; a version-1 peer's first byte (a kind, 1..=8) is refused here
//! as an unsupported version. Every length is checked against its limit before anything is
//! allocated and a decoder consumes its input exactly, so `encode(decode(b)) == b` for every
//! accepted `b` (fuzzed by `fuzz/fuzz_targets/ledger_rpc.rs`).

use cairn_proto::Topic;
use cairn_proto::codec::{DecodeError, Writer};
use cairn_proto::sequencer::HANDSHAKE_BYTES_MAX;
use thiserror::Error;

use super::fields::{
    check_max, cut, open, read_admission, read_block, read_key, read_option, read_outcome, read_refusal,
    read_status, read_text, write_admission, write_block, write_count, write_key, write_option,
    write_outcome, write_refusal, write_status,
};

use crate::block::{BLOCK_BYTES_MAX, Block, HEADER_BYTES};
use crate::light::{FINALIZATION_BYTES_MAX, PROOF_BYTES_MAX, StateProof, VALUE_BYTES_MAX};
use crate::outcome_proof::{OUTCOME_PROOF_BYTES_MAX, OutcomeProof};
use crate::state::{Outcome, StateKey};
use crate::tx::{CONTRACT_MSG_MAX, TX_BYTES_MAX, TxId};

/// Largest query output in an answer, bytes (the ledger contracts' output limit).
pub const QUERY_OUTPUT_MAX: usize = cairn_contracts::Limits::LEDGER.output_max;

/// Protocol version byte, first in every request and response.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest request body, bytes: a batch carries at most one block's worth of transactions.
pub const REQUEST_BYTES_MAX: usize = BLOCK_BYTES_MAX + 64 * 1024;
/// Largest response body, bytes: a block with its certificate and framing.
pub const RESPONSE_BYTES_MAX: usize = BLOCK_BYTES_MAX + FINALIZATION_BYTES_MAX + 1024;
/// Largest frame in either direction, bytes.
pub const FRAME_MAX: usize =
    if REQUEST_BYTES_MAX > RESPONSE_BYTES_MAX { REQUEST_BYTES_MAX } else { RESPONSE_BYTES_MAX };
/// Most transactions in one batch submission.
pub const BATCH_MAX: usize = 4096;
/// Most handshakes in one reply.
pub const HANDSHAKES_PER_REPLY_MAX: usize = 256;
/// Most handshake links (32 bytes each) in one [`Response::HandshakePage`].
pub const LINKS_PER_REPLY_MAX: usize = 4096;
/// Longest refusal reason, bytes (longer reasons are cut at a character boundary).
pub const REFUSAL_BYTES_MAX: usize = 256;
/// Longest error message, bytes (longer messages are cut at a character boundary).
pub const ERROR_BYTES_MAX: usize = 256;
/// Largest encoded [`StateProof`], bytes.
pub const STATE_PROOF_BYTES_MAX: usize =
    HEADER_BYTES + 4 + FINALIZATION_BYTES_MAX + 1 + 4 + VALUE_BYTES_MAX + 4 + PROOF_BYTES_MAX;

// The largest legal answers fit one response frame: a batch answer with every transaction
// refused at full length, a state proof, a block with its certificate.
const _: () = assert!(2 + 2 + BATCH_MAX * (1 + 1 + 4 + REFUSAL_BYTES_MAX) <= RESPONSE_BYTES_MAX);
const _: () = assert!(2 + 1 + 4 + STATE_PROOF_BYTES_MAX <= RESPONSE_BYTES_MAX);
const _: () =
    assert!(2 + 32 + 2 + HANDSHAKE_BYTES_MAX + 4 + 2 + LINKS_PER_REPLY_MAX * 32 <= RESPONSE_BYTES_MAX);
const _: () = assert!(2 + 1 + 4 + BLOCK_BYTES_MAX + 1 + 4 + FINALIZATION_BYTES_MAX <= RESPONSE_BYTES_MAX);
const _: () = assert!(2 + 1 + 4 + OUTCOME_PROOF_BYTES_MAX <= RESPONSE_BYTES_MAX);
/// Largest encoded [`RemoteOutcome`], bytes.
pub const OUTCOME_BYTES_MAX: usize = 1 + 1 + 4 + REFUSAL_BYTES_MAX + 1 + 16;

/// Why bytes were refused as a request or a response.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The peer speaks another protocol version.
    #[error("unsupported ledger rpc version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// A kind byte names nothing this version knows.
    #[error("unknown {what} kind {kind}")]
    UnknownKind {
        /// Which enumeration.
        what: &'static str,
        /// Kind byte found.
        kind: u8,
    },
    /// The whole message is over its limit.
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Request or response.
        what: &'static str,
        /// Length found.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A field is truncated, over its limit, non-canonical or invalid; trailing bytes.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
}

/// Why a validator refused a transaction: [`crate::tx::TxError::code`] and its text.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Refusal {
    /// [`crate::tx::TxError::code`].
    pub code: u8,
    /// Reason, at most [`REFUSAL_BYTES_MAX`] bytes.
    pub message: String,
}

/// A validator's answer to one submitted transaction.
pub type Admission = Result<TxId, Refusal>;

/// A finalized block and, if the validator holds one, its own finalization certificate
/// (verified by [`super::LedgerClient::block`] before it is returned).
pub type CertifiedBlock = (Block, Option<Vec<u8>>);

/// The outcome of a finalized transaction as a client sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RemoteOutcome {
    /// Applied.
    Applied,
    /// Sequenced at a position.
    Sequenced {
        /// Topic.
        topic: Topic,
        /// Position.
        seq: u64,
    },
    /// Included but its effect failed.
    Failed {
        /// [`crate::tx::TxError::code`].
        code: u8,
        /// Reason.
        message: String,
        /// For a stale handshake: `(after, current)`.
        stale: Option<(u64, u64)>,
    },
}

impl RemoteOutcome {
    /// What a client is told of a receipt's outcome (a contract call's output and events are
    /// not part of it: it reads as [`Self::Applied`]). Failure messages are cut to
    /// [`REFUSAL_BYTES_MAX`] by the encoding.
    pub fn of(o: &Outcome) -> Self {
        match o {
            Outcome::Applied | Outcome::Contract { .. } => Self::Applied,
            Outcome::Sequenced { topic, seq } => Self::Sequenced { topic: *topic, seq: *seq },
            Outcome::Failed(e) => {
                let stale = match e {
                    crate::tx::TxError::StaleSequence { after, current } => Some((*after, *current)),
                    _ => None,
                };
                Self::Failed { code: e.code(), message: e.to_string(), stale }
            }
        }
    }

    /// Canonical encoding (the one the outcome tree's leaves hash).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        write_outcome(&mut w, self);
        w.finish()
    }

    /// Bounded, canonical decoding of exactly one outcome.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() > OUTCOME_BYTES_MAX {
            return Err(ProtocolError::TooLarge {
                what: "outcome",
                len: bytes.len(),
                max: OUTCOME_BYTES_MAX,
            });
        }
        let mut r = cairn_proto::codec::Reader::new(bytes);
        let o = read_outcome(&mut r)?;
        r.finish()?;
        Ok(o)
    }
}

/// A transaction's status as reported by a validator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RemoteStatus {
    /// Unknown to the validator.
    Unknown,
    /// In its mempool.
    Pending,
    /// Refused before inclusion.
    Rejected {
        /// [`crate::tx::TxError::code`].
        code: u8,
        /// Reason.
        message: String,
    },
    /// In a finalized block.
    Finalized {
        /// Height.
        height: u64,
        /// Outcome.
        outcome: RemoteOutcome,
    },
}

/// Finalized chain status of one validator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RemoteChainStatus {
    /// Finalized height.
    pub height: u64,
    /// Tip digest.
    pub digest: [u8; 32],
    /// State root.
    pub state_root: [u8; 32],
    /// Mempool size.
    pub mempool: u64,
}

/// One page of a topic's handshakes with what a client needs to check it against the proven
/// [`StateKey::Topic`] record (count `n`, chain head): the chain value before the page, the
/// payloads, then the links ([`crate::state::TopicState::link`]) of the handshakes after the
/// page up to position `until` (at most [`LINKS_PER_REPLY_MAX`]; the client asks for the rest
/// with pages of no payloads).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct HandshakePage {
    /// The topic's chain value just before the first position asked for.
    pub start: [u8; 32],
    /// Payloads from the first position asked for, in topic order.
    pub payloads: Vec<Vec<u8>>,
    /// Links of the handshakes right after the payloads.
    pub links: Vec<[u8; 32]>,
}

/// A client's request to a validator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Request {
    /// Admit this encoded transaction (≤ [`TX_BYTES_MAX`]) into the mempool.
    Submit(Vec<u8>),
    /// The finalized chain status.
    Status,
    /// Where a transaction stands.
    TxStatus(TxId),
    /// The finalized block at a height.
    Block(u64),
    /// A proof of one state entry.
    Proof(StateKey),
    /// Finalized handshakes of a topic.
    Handshakes {
        /// Topic.
        topic: Topic,
        /// First position wanted.
        from: u64,
        /// Most handshakes wanted (≤ [`HANDSHAKES_PER_REPLY_MAX`]).
        max: u32,
    },
    /// The next nonce of a signing key.
    Nonce([u8; 32]),
    /// Admit these encoded transactions (≤ [`BATCH_MAX`]).
    SubmitBatch(Vec<Vec<u8>>),
    /// Run a contract's read-only `query` on the finalized state.
    Query {
        /// Contract address.
        contract: [u8; 32],
        /// The query's input (≤ [`CONTRACT_MSG_MAX`]).
        msg: Vec<u8>,
    },
    /// Finalized handshakes of a topic with what checks them ([`HandshakePage`]).
    HandshakePage {
        /// Topic.
        topic: Topic,
        /// First position wanted.
        from: u64,
        /// Most payloads wanted (≤ [`HANDSHAKES_PER_REPLY_MAX`]; 0: links only).
        max: u32,
        /// Nothing at or after this position (the count the client holds a proof of).
        until: u64,
    },
    /// A proof of a finalized transaction's height and outcome.
    OutcomeProof(TxId),
}

/// A validator's answer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Response {
    /// Answer to [`Request::Submit`].
    Submitted(Admission),
    /// Answer to [`Request::Status`].
    Status(RemoteChainStatus),
    /// Answer to [`Request::TxStatus`].
    TxStatus(RemoteStatus),
    /// Answer to [`Request::Block`] (`None`: not finalized yet).
    Block(Option<CertifiedBlock>),
    /// Answer to [`Request::Proof`] (`None`: no proof at the current height yet).
    Proof(Option<StateProof>),
    /// Answer to [`Request::Handshakes`], in topic order.
    Handshakes(Vec<Vec<u8>>),
    /// Answer to [`Request::Nonce`].
    Nonce(u64),
    /// Answer to [`Request::SubmitBatch`], one admission per transaction in order.
    SubmittedBatch(Vec<Admission>),
    /// The request was refused as malformed (the validator then closes the connection).
    Error(String),
    /// Answer to [`Request::Query`]: the query's output, or why it failed.
    Query(Result<Vec<u8>, Refusal>),
    /// Answer to [`Request::HandshakePage`].
    HandshakePage(HandshakePage),
    /// Answer to [`Request::OutcomeProof`] (`None`: not finalized there, or no certificate
    /// reaches its block yet).
    OutcomeProof(Option<OutcomeProof>),
}

mod kind {
    pub(super) const SUBMIT: u8 = 1;
    pub(super) const STATUS: u8 = 2;
    pub(super) const TX_STATUS: u8 = 3;
    pub(super) const BLOCK: u8 = 4;
    pub(super) const PROOF: u8 = 5;
    pub(super) const HANDSHAKES: u8 = 6;
    pub(super) const NONCE: u8 = 7;
    pub(super) const BATCH: u8 = 8;
    pub(super) const ERROR: u8 = 9;
    pub(super) const QUERY: u8 = 11;
    pub(super) const HANDSHAKE_PAGE: u8 = 12;
    pub(super) const OUTCOME_PROOF: u8 = 13;
}

impl Request {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(PROTOCOL_VERSION);
        match self {
            Self::Submit(tx) => {
                w.u8(kind::SUBMIT);
                w.bytes(tx);
            }
            Self::Status => w.u8(kind::STATUS),
            Self::TxStatus(id) => {
                w.u8(kind::TX_STATUS);
                w.raw(&id.0);
            }
            Self::Block(height) => {
                w.u8(kind::BLOCK);
                w.u64(*height);
            }
            Self::Proof(key) => {
                w.u8(kind::PROOF);
                write_key(&mut w, key);
            }
            Self::Handshakes { topic, from, max } => {
                w.u8(kind::HANDSHAKES);
                w.raw(&topic.0);
                w.u64(*from);
                w.u32(*max);
            }
            Self::Nonce(signer) => {
                w.u8(kind::NONCE);
                w.raw(signer);
            }
            Self::SubmitBatch(txs) => {
                w.u8(kind::BATCH);
                write_count(&mut w, txs.len());
                for tx in txs {
                    w.bytes(tx);
                }
            }
            Self::Query { contract, msg } => {
                w.u8(kind::QUERY);
                w.raw(contract);
                w.bytes(msg);
            }
            Self::HandshakePage { topic, from, max, until } => {
                w.u8(kind::HANDSHAKE_PAGE);
                w.raw(&topic.0);
                w.u64(*from);
                w.u32(*max);
                w.u64(*until);
            }
            Self::OutcomeProof(id) => {
                w.u8(kind::OUTCOME_PROOF);
                w.raw(&id.0);
            }
        }
        w.finish()
    }

    /// Bounded, canonical decoding of one whole request.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = open(bytes, "request", REQUEST_BYTES_MAX)?;
        let req = match r.u8("request.kind")? {
            kind::SUBMIT => Self::Submit(r.bytes(TX_BYTES_MAX, "submit.tx")?.to_vec()),
            kind::STATUS => Self::Status,
            kind::TX_STATUS => Self::TxStatus(TxId(r.array("tx_status.id")?)),
            kind::BLOCK => Self::Block(r.u64("block.height")?),
            kind::PROOF => Self::Proof(read_key(&mut r)?),
            kind::HANDSHAKES => {
                let topic = Topic(r.array("handshakes.topic")?);
                let from = r.u64("handshakes.from")?;
                let max = r.u32("handshakes.max")?;
                check_max(max as usize, HANDSHAKES_PER_REPLY_MAX, "handshakes.max")?;
                Self::Handshakes { topic, from, max }
            }
            kind::NONCE => Self::Nonce(r.array("nonce.signer")?),
            kind::BATCH => {
                let n = r.count(BATCH_MAX, "batch.count")?;
                let mut txs = Vec::with_capacity(n);
                for _ in 0..n {
                    txs.push(r.bytes(TX_BYTES_MAX, "batch.tx")?.to_vec());
                }
                Self::SubmitBatch(txs)
            }
            kind::QUERY => Self::Query {
                contract: r.array("query.contract")?,
                msg: r.bytes(CONTRACT_MSG_MAX, "query.msg")?.to_vec(),
            },
            kind::HANDSHAKE_PAGE => {
                let topic = Topic(r.array("handshake_page.topic")?);
                let from = r.u64("handshake_page.from")?;
                let max = r.u32("handshake_page.max")?;
                check_max(max as usize, HANDSHAKES_PER_REPLY_MAX, "handshake_page.max")?;
                let until = r.u64("handshake_page.until")?;
                Self::HandshakePage { topic, from, max, until }
            }
            kind::OUTCOME_PROOF => Self::OutcomeProof(TxId(r.array("outcome_proof.id")?)),
            other => return Err(ProtocolError::UnknownKind { what: "request", kind: other }),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.u8(PROTOCOL_VERSION);
        match self {
            Self::Submitted(a) => {
                w.u8(kind::SUBMIT);
                write_admission(&mut w, a);
            }
            Self::Status(s) => {
                w.u8(kind::STATUS);
                w.u64(s.height);
                w.raw(&s.digest);
                w.raw(&s.state_root);
                w.u64(s.mempool);
            }
            Self::TxStatus(s) => {
                w.u8(kind::TX_STATUS);
                write_status(&mut w, s);
            }
            Self::Block(b) => {
                w.u8(kind::BLOCK);
                write_block(&mut w, b.as_ref());
            }
            Self::Proof(p) => {
                w.u8(kind::PROOF);
                write_option(&mut w, p.as_ref().map(StateProof::encode).as_deref());
            }
            Self::Handshakes(list) => {
                w.u8(kind::HANDSHAKES);
                write_count(&mut w, list.len());
                for h in list {
                    w.bytes(h);
                }
            }
            Self::Nonce(n) => {
                w.u8(kind::NONCE);
                w.u64(*n);
            }
            Self::SubmittedBatch(list) => {
                w.u8(kind::BATCH);
                write_count(&mut w, list.len());
                for a in list {
                    write_admission(&mut w, a);
                }
            }
            Self::Error(m) => {
                w.u8(kind::ERROR);
                w.bytes(cut(m, ERROR_BYTES_MAX).as_bytes());
            }
            Self::Query(answer) => {
                w.u8(kind::QUERY);
                match answer {
                    Ok(out) => {
                        w.u8(0);
                        w.bytes(out);
                    }
                    Err(refusal) => {
                        w.u8(1);
                        write_refusal(&mut w, refusal.code, &refusal.message);
                    }
                }
            }
            Self::HandshakePage(page) => {
                w.u8(kind::HANDSHAKE_PAGE);
                w.raw(&page.start);
                write_count(&mut w, page.payloads.len());
                for h in &page.payloads {
                    w.bytes(h);
                }
                write_count(&mut w, page.links.len());
                for l in &page.links {
                    w.raw(l);
                }
            }
            Self::OutcomeProof(p) => {
                w.u8(kind::OUTCOME_PROOF);
                write_option(&mut w, p.as_ref().map(OutcomeProof::encode).as_deref());
            }
        }
        w.finish()
    }

    /// Bounded, canonical decoding of one whole response.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = open(bytes, "response", RESPONSE_BYTES_MAX)?;
        let resp = match r.u8("response.kind")? {
            kind::SUBMIT => Self::Submitted(read_admission(&mut r)?),
            kind::STATUS => Self::Status(RemoteChainStatus {
                height: r.u64("status.height")?,
                digest: r.array("status.digest")?,
                state_root: r.array("status.state_root")?,
                mempool: r.u64("status.mempool")?,
            }),
            kind::TX_STATUS => Self::TxStatus(read_status(&mut r)?),
            kind::BLOCK => Self::Block(read_block(&mut r)?),
            kind::PROOF => Self::Proof(match read_option(&mut r, STATE_PROOF_BYTES_MAX, "proof")? {
                None => None,
                Some(b) => Some(StateProof::decode(b)?),
            }),
            kind::HANDSHAKES => {
                let n = r.count(HANDSHAKES_PER_REPLY_MAX, "handshakes.count")?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(r.bytes(HANDSHAKE_BYTES_MAX, "handshakes.payload")?.to_vec());
                }
                Self::Handshakes(list)
            }
            kind::NONCE => Self::Nonce(r.u64("nonce.next")?),
            kind::BATCH => {
                let n = r.count(BATCH_MAX, "batch.count")?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(read_admission(&mut r)?);
                }
                Self::SubmittedBatch(list)
            }
            kind::ERROR => Self::Error(read_text(&mut r, ERROR_BYTES_MAX, "error.message")?),
            kind::QUERY => Self::Query(match r.u8("query.answer")? {
                0 => Ok(r.bytes(QUERY_OUTPUT_MAX, "query.output")?.to_vec()),
                1 => Err(read_refusal(&mut r)?),
                other => return Err(ProtocolError::UnknownKind { what: "query answer", kind: other }),
            }),
            kind::HANDSHAKE_PAGE => {
                let start = r.array("handshake_page.start")?;
                let n = r.count(HANDSHAKES_PER_REPLY_MAX, "handshake_page.count")?;
                let mut payloads = Vec::with_capacity(n);
                for _ in 0..n {
                    payloads.push(r.bytes(HANDSHAKE_BYTES_MAX, "handshake_page.payload")?.to_vec());
                }
                let n = r.count(LINKS_PER_REPLY_MAX, "handshake_page.links")?;
                let mut links = Vec::with_capacity(n);
                for _ in 0..n {
                    links.push(r.array("handshake_page.link")?);
                }
                Self::HandshakePage(HandshakePage { start, payloads, links })
            }
            kind::OUTCOME_PROOF => {
                Self::OutcomeProof(match read_option(&mut r, OUTCOME_PROOF_BYTES_MAX, "outcome_proof")? {
                    None => None,
                    Some(b) => Some(OutcomeProof::decode(b)?),
                })
            }
            other => return Err(ProtocolError::UnknownKind { what: "response", kind: other }),
        };
        r.finish()?;
        Ok(resp)
    }
}

impl Response {
    /// A short name of the answer's kind (for error messages).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Submitted(_) => "submitted",
            Self::Status(_) => "status",
            Self::TxStatus(_) => "tx status",
            Self::Block(_) => "block",
            Self::Proof(_) => "proof",
            Self::Handshakes(_) => "handshakes",
            Self::Nonce(_) => "nonce",
            Self::SubmittedBatch(_) => "submitted batch",
            Self::Error(_) => "error",
            Self::Query(_) => "query",
            Self::HandshakePage(_) => "handshake page",
            Self::OutcomeProof(_) => "outcome proof",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_covers_both_directions() {
        assert_eq!(FRAME_MAX, REQUEST_BYTES_MAX.max(RESPONSE_BYTES_MAX));
    }
}
