//! The commit sequencer: where MLS and the ledger meet.
//!
//! MLS needs every member of a group to apply handshake messages (commits) in one order. Cairn
//! takes that order from the BFT ledger: each conversation topic has a dense sequence of
//! handshake messages, `0, 1, 2, …`. A submission names the sequence number it was built after
//! (`after` = how many handshake messages its author had applied); the sequencer refuses it as
//! [`SequencerError::Stale`] if the topic has moved on, so a commit built on a stale epoch never
//! enters the order and its author rebuilds it. Members still validate every sequenced message
//! and skip an invalid one — all alike, since all see the same order.
//!
//! The ledger implements this trait for real; `cairn-mls` tests use an in-memory one.

use thiserror::Error;

use crate::id::Topic;

/// Largest handshake message the sequencer accepts, in bytes.
pub const HANDSHAKE_BYTES_MAX: usize = 64 * 1024;

/// A handshake message with its agreed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequenced {
    /// Conversation topic.
    pub topic: Topic,
    /// Position in the topic's handshake order.
    pub seq: u64,
    /// Opaque MLS handshake bytes.
    pub payload: Vec<u8>,
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SequencerError {
    /// The topic already has more handshake messages than the author applied: rebuild on the
    /// latest state and resubmit.
    #[error("stale submission: built after {after} handshake messages, the topic has {current}")]
    Stale {
        /// What the submission claimed.
        after: u64,
        /// Current length of the topic's order.
        current: u64,
    },
    /// The payload is over [`HANDSHAKE_BYTES_MAX`].
    #[error("handshake message of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The sequencer could not be reached or failed; retry later.
    #[error("sequencer unavailable: {0}")]
    Unavailable(String),
}

/// Orders handshake messages per topic.
pub trait CommitSequencer {
    /// Submits `payload`, built after `after` handshake messages of `topic`. On success returns
    /// the sequence number it was given (always `after`), once that order is final.
    fn submit(&mut self, topic: Topic, after: u64, payload: Vec<u8>) -> Result<u64, SequencerError>;

    /// Up to `max` handshake messages of `topic` from position `from`, in order.
    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError>;
}
