//! The node's errors, typed by what went wrong; the API layer (`backend::ApiError`) maps them
//! to answers.

use crate::backend::ApiError;

/// Why a node operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    /// The caller asked for something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing (account, member…).
    #[error("{0}")]
    NotFound(String),
    /// No such conversation on this device.
    #[error("no such conversation on this device (see `cairn chat list`)")]
    UnknownConversation,
    /// This device is no longer a member of the conversation.
    #[error("this device is no longer a member of that conversation")]
    NotMember,
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// MLS refused the operation.
    #[error("MLS: {0}")]
    Mls(String),
    /// The commit sequencer (the ledger) failed.
    #[error("commit sequencer (ledger): {0}")]
    Sequencer(String),
    /// The ledger is unreachable or refused.
    #[error("ledger: {0} (are the validators running? see `cairn ledger status`)")]
    Ledger(String),
    /// The mesh refused or is stopping.
    #[error("mesh: {0}")]
    Mesh(String),
    /// The local database failed.
    #[error("local database: {0}")]
    Storage(String),
    /// Too much is queued; retry shortly.
    #[error("the node is busy: retry in a moment")]
    Busy,
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopping,
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let text = e.to_string();
        match e {
            NodeError::BadRequest(_) => ApiError::BadRequest(text),
            NodeError::NotFound(_) | NodeError::UnknownConversation => ApiError::NotFound(text),
            NodeError::NotMember | NodeError::Conflict(_) | NodeError::Mls(_) => ApiError::Conflict(text),
            NodeError::Sequencer(_)
            | NodeError::Ledger(_)
            | NodeError::Mesh(_)
            | NodeError::Busy
            | NodeError::Stopping => ApiError::Unavailable(text),
            NodeError::Storage(_) | NodeError::Internal(_) => ApiError::Internal(text),
        }
    }
}
