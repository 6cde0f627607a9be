//! What the local API needs from a node: the [`Backend`] trait (implemented by
//! [`crate::service::Service`]; tests of the HTTP layer may use their own).

use std::future::Future;

use tokio::sync::broadcast;

use crate::model::{
    AccountForgetRequest, AccountForgetView, AccountView, ConversationView, DeviceAddRequest, DeviceView,
    ErasureView, ErasuresQuery, LedgerStatusView, MessageView, PolicySetRequest, PolicyView, RequestView,
    SendResult, StatusView, StreamEvent, TailQuery, TxView, VerifyView,
};

/// Why a node operation failed; the API maps each kind to an HTTP status.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// The request is malformed or names something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such conversation, account, message… (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state, e.g. handle taken (409).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (ledger, store nodes) is unreachable; retry later (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a local storage failure (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Stable code for JSON answers.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// Result of a node operation.
pub type ApiResult<T> = Result<T, ApiError>;

/// Everything the CLI does, as async operations on a running node.
pub trait Backend: Send + Sync + 'static {
    /// Node status.
    fn status(&self) -> impl Future<Output = ApiResult<StatusView>> + Send;
    /// Creates a conversation with these members (account ids or `@handles`).
    fn create_conversation(
        &self,
        members: Vec<String>,
    ) -> impl Future<Output = ApiResult<ConversationView>> + Send;
    /// Conversations of this device.
    fn conversations(&self) -> impl Future<Output = ApiResult<Vec<ConversationView>>> + Send;
    /// One conversation (id in hex, or a unique prefix of at least 8 hex digits).
    fn conversation(&self, id: String) -> impl Future<Output = ApiResult<ConversationView>> + Send;
    /// Adds members.
    fn add_members(
        &self,
        id: String,
        members: Vec<String>,
    ) -> impl Future<Output = ApiResult<ConversationView>> + Send;
    /// Removes a member account (all its devices).
    fn remove_member(
        &self,
        id: String,
        member: String,
    ) -> impl Future<Output = ApiResult<ConversationView>> + Send;
    /// Leaves a conversation.
    fn leave(&self, id: String) -> impl Future<Output = ApiResult<()>> + Send;
    /// Forgets a conversation this device left: destroys its keys (crypto-shredding), its MLS
    /// state and its messages on this device.
    fn forget(&self, id: String) -> impl Future<Output = ApiResult<()>> + Send;
    /// Erases an own message everywhere (a signed redaction to the members, the payload on the
    /// store nodes); answers with the redaction's id.
    fn erase(&self, id: String, message: String) -> impl Future<Output = ApiResult<SendResult>> + Send;
    /// Sends a text message; a retry with the same idempotency key in the same conversation
    /// answers with the message sent the first time instead of sending again.
    fn send(
        &self,
        id: String,
        text: String,
        idempotency_key: Option<String>,
    ) -> impl Future<Output = ApiResult<SendResult>> + Send;
    /// The policy pinned in a conversation.
    fn policy(&self, id: String) -> impl Future<Output = ApiResult<PolicyView>> + Send;
    /// What the conversation's policy kept out of the history on this device: held and
    /// waiting messages, denied ones, proposed removals.
    fn held(&self, id: String) -> impl Future<Output = ApiResult<crate::model::HeldListView>> + Send {
        let _ = id;
        async { Err(ApiError::NotFound("this node keeps no policy verdicts".into())) }
    }
    /// Shows a held message in this device's history (this device only; the policy's verdict
    /// at the other members is unchanged).
    fn release_held(
        &self,
        id: String,
        message: String,
    ) -> impl Future<Output = ApiResult<MessageView>> + Send {
        let _ = (id, message);
        async { Err(ApiError::NotFound("this node keeps no policy verdicts".into())) }
    }
    /// Pins a shipped policy in a conversation (a commit: every member switches at the same
    /// epoch; the current policy must allow the change).
    fn set_policy(
        &self,
        id: String,
        req: PolicySetRequest,
    ) -> impl Future<Output = ApiResult<PolicyView>> + Send;
    /// Forgets this account: leaves and forgets every conversation (crypto-shredding), releases
    /// the handle and revokes every device on the ledger.
    fn forget_account(
        &self,
        req: AccountForgetRequest,
    ) -> impl Future<Output = ApiResult<AccountForgetView>> + Send;
    /// Erasures applied in a conversation after a cursor, oldest first (for followers that
    /// were away while they happened).
    fn erasures(
        &self,
        id: String,
        query: ErasuresQuery,
    ) -> impl Future<Output = ApiResult<Vec<ErasureView>>> + Send;
    /// Local history after a cursor (long poll with `wait_ms`).
    fn messages(
        &self,
        id: String,
        query: TailQuery,
    ) -> impl Future<Output = ApiResult<Vec<MessageView>>> + Send;
    /// Verifies the local history: signatures, links, ledger anchors.
    fn verify(&self, id: String) -> impl Future<Output = ApiResult<VerifyView>> + Send;
    /// Claims a handle on the ledger.
    fn claim_handle(&self, name: String) -> impl Future<Output = ApiResult<TxView>> + Send;
    /// This account's devices (from the ledger).
    fn devices(&self) -> impl Future<Output = ApiResult<Vec<DeviceView>>> + Send;
    /// Creates and registers a new device of this account in another data directory.
    fn add_device(&self, req: DeviceAddRequest) -> impl Future<Output = ApiResult<DeviceView>> + Send;
    /// Revokes a device of this account everywhere.
    fn revoke_device(&self, device: String) -> impl Future<Output = ApiResult<TxView>> + Send;
    /// Starts linking a device on another machine: a one-time code (see [`crate::link`]).
    fn link_device(
        &self,
        q: crate::link_host::LinkQuery,
    ) -> impl Future<Output = ApiResult<crate::link_host::LinkStartView>> + Send {
        let _ = q;
        async { Err(ApiError::Unavailable("this node cannot link devices".into())) }
    }
    /// The state of a link started with [`Backend::link_device`].
    fn link_status(
        &self,
        link: String,
    ) -> impl Future<Output = ApiResult<crate::link_host::LinkStatusView>> + Send {
        let _ = link;
        async { Err(ApiError::Unavailable("this node cannot link devices".into())) }
    }
    /// What each validator says.
    fn ledger_status(&self) -> impl Future<Output = ApiResult<LedgerStatusView>> + Send;
    /// An account (id or `@handle`), checked against a certified header.
    fn account(&self, who: String) -> impl Future<Output = ApiResult<AccountView>> + Send;
    /// Delivery states of this device's own messages in a conversation (newest first).
    fn deliveries(
        &self,
        id: String,
    ) -> impl Future<Output = ApiResult<Vec<crate::api_history::DeliveryEntry>>> + Send {
        let _ = id;
        async { Err(ApiError::Unavailable("this node keeps no delivery states".into())) }
    }
    /// This account's balance on the ledger (nodes without a wallet: unavailable).
    fn balance(&self) -> impl Future<Output = ApiResult<crate::api_ledger::BalanceView>> + Send {
        async { Err(ApiError::Unavailable("this node keeps no ledger account".into())) }
    }
    /// Pays an amount to a `@handle` or account id (a ledger transfer).
    fn pay(
        &self,
        req: crate::api_ledger::PaymentRequest,
    ) -> impl Future<Output = Result<crate::api_ledger::PaymentView, crate::api_ledger::PaymentError>> + Send
    {
        let _ = req;
        async { Err(ApiError::Unavailable("this node keeps no ledger account".into()).into()) }
    }
    /// Invitations waiting for the user's consent.
    fn requests(&self) -> impl Future<Output = ApiResult<Vec<RequestView>>> + Send;
    /// Accepts an invitation (id: conversation hex or a unique prefix of at least 8 digits):
    /// joins, and later invitations from the same account join at once.
    fn accept_request(&self, id: String) -> impl Future<Output = ApiResult<ConversationView>> + Send;
    /// Declines an invitation: removed, and ignored if delivered again.
    fn decline_request(&self, id: String) -> impl Future<Output = ApiResult<()>> + Send;
    /// Live events.
    fn subscribe(&self) -> broadcast::Receiver<StreamEvent>;
    /// Prometheus text exposition of the node's metrics.
    fn metrics(&self) -> String;
    /// Asks the node to stop (clean exit: run file removed).
    fn shutdown(&self);
}
