//! What a client operation failed on.

use cairn_proto::DecodeError;
use cairn_proto::sequencer::SequencerError;
use thiserror::Error;

use super::AAD_BYTES_MAX;
use crate::credential::CredentialError;
use crate::keypackage::KeyPackageError;
use crate::storage::StorageError;

/// What an MLS client operation failed on.
#[derive(Debug, Error)]
pub enum MlsError {
    /// Storage failed; nothing was changed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The sequencer refused or could not be reached.
    #[error("sequencer: {0}")]
    Sequencer(#[from] SequencerError),
    /// No such conversation on this device.
    #[error("unknown conversation")]
    UnknownConversation,
    /// This device is no longer a member of the conversation.
    #[error("this device is no longer a member of the conversation")]
    NotMember,
    /// The bytes are not a well-formed MLS message.
    #[error("malformed MLS message: {0}")]
    Malformed(String),
    /// The message is well-formed but was refused (wrong group, forged, altered, not a member…).
    #[error("message rejected: {0}")]
    Rejected(String),
    /// A certificate chain is broken.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// A key package is invalid.
    #[error(transparent)]
    KeyPackage(#[from] KeyPackageError),
    /// A Cairn structure failed to decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An OpenMLS operation failed.
    #[error("{op}: {reason}")]
    Operation {
        /// What was attempted.
        op: &'static str,
        /// OpenMLS's error.
        reason: String,
    },
    /// A stale commit was rebuilt the maximum number of times and still lost the race.
    #[error("commit still stale after {attempts} rebuilds")]
    TooManyRebuilds {
        /// Attempts made.
        attempts: u32,
    },
    /// Proposals (e.g. a member leaving) are waiting for a commit; call
    /// [`Client::commit_pending`] first.
    #[error("proposals are waiting for a commit before messages can be sent")]
    PendingProposals,
    /// Deferred writes wait for [`Client::flush_into`] (or [`Client::discard_pending`]); this
    /// operation commits its own transaction, so it is refused until then.
    #[error("deferred MLS writes wait for flush_into")]
    FlushPending,
    /// A commit of this device is still pending: its submission failed and the order does
    /// not show yet what holds its slot. Call [`Client::retry_pending`](super::Client::retry_pending)
    /// (its outcome carries the Welcome of an Add) before committing anything else.
    #[error("an earlier commit of this device is pending; retry it first")]
    CommitPending,
    /// The authenticated data given by the caller is over [`AAD_BYTES_MAX`].
    #[error("authenticated data of {len} bytes is over the limit of {max}")]
    AadTooLong {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

pub(super) fn check_aad(aad: &[u8]) -> Result<(), MlsError> {
    if aad.len() > AAD_BYTES_MAX {
        return Err(MlsError::AadTooLong { len: aad.len(), max: AAD_BYTES_MAX });
    }
    Ok(())
}

pub(super) fn op_err(op: &'static str) -> impl FnOnce(String) -> MlsError {
    move |reason| MlsError::Operation { op, reason }
}
