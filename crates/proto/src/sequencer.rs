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
    /// The submission is not signed by a key of the conversation's authority: the submitter is
    /// not (or no longer) a member of the epoch the topic is at.
    #[error("refused: not signed by a current member of this conversation")]
    NotMember,
    /// The sequencer could not be reached or failed; retry later.
    #[error("sequencer unavailable: {0}")]
    Unavailable(String),
}

/// A member's authority keys for one submission (the ledger lets only members write to a
/// conversation's topic): the seed of the key of the member's epoch (or the founder key
/// before the first commit), and the public key of the epoch the submitted commit creates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TopicKeys {
    /// Ed25519 seed of the signing authority key.
    pub seed: [u8; 32],
    /// Public authority key of the next epoch (commits only).
    pub next: Option<[u8; 32]>,
}

impl std::fmt::Debug for TopicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicKeys").field("seed", &"<secret>").field("next", &self.next.is_some()).finish()
    }
}

/// Orders handshake messages per topic.
pub trait CommitSequencer {
    /// Submits `payload`, built after `after` handshake messages of `topic`, signed with the
    /// member's `keys`. On success returns the sequence number it was given (always `after`),
    /// once that order is final.
    fn submit(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError>;

    /// Up to `max` handshake messages of `topic` from position `from`, in order.
    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError>;

    /// Something received (a message from an epoch not reached yet) proves that `topic` has
    /// handshakes past what this device applied: a "nothing more" remembered from an earlier
    /// read must not answer the next [`fetch`](Self::fetch). The default remembers nothing.
    fn expect_more(&mut self, topic: &Topic) {
        let _ = topic;
    }
}
