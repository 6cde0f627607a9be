//! The typed reasons a ledger transaction is refused ([`TxError`]), each with a stable wire
//! code.

use cairn_proto::codec::DecodeError;
use thiserror::Error;

/// Why a transaction was refused. Every validator reaches the same reason for the same
/// transaction against the same state.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum TxError {
    /// The bytes are not a canonical transaction.
    #[error("malformed transaction: {0}")]
    Malformed(#[from] DecodeError),
    /// Over [`crate::tx::TX_BYTES_MAX`].
    #[error("transaction of {len} bytes is over the limit of {max}")]
    Oversized {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Built for another chain.
    #[error("transaction is for another chain")]
    WrongChain,
    /// The signature does not verify under the signer key.
    #[error("bad signature")]
    BadSignature,
    /// The nonce was already used.
    #[error("nonce {got} already used (next is {expected})")]
    NonceReplayed {
        /// Next nonce of the signer.
        expected: u64,
        /// Nonce given.
        got: u64,
    },
    /// The nonce skips ahead.
    #[error("nonce {got} skips ahead (next is {expected})")]
    NonceSkipped {
        /// Next nonce of the signer.
        expected: u64,
        /// Nonce given.
        got: u64,
    },
    /// The account is not registered.
    #[error("account is not registered")]
    UnknownAccount,
    /// The account is already registered.
    #[error("account is already registered")]
    AccountExists,
    /// The signer is neither the account key nor one of its devices.
    #[error("signer is not authorized for this account")]
    UnknownSigner,
    /// The signer is a revoked device.
    #[error("signer is a revoked device")]
    RevokedDevice,
    /// Only the account key may do this.
    #[error("this operation needs the account key, not a device key")]
    NeedsAccountKey,
    /// The device certificate does not verify or names another key.
    #[error("bad device certificate: {0}")]
    BadDeviceCert(&'static str),
    /// The device is already known to the account (active or revoked).
    #[error("device already added")]
    DeviceExists,
    /// The device key is already bound to another account (devices are bound for good, even
    /// once revoked).
    #[error("device key is already bound to another account: generate a new device key for this account")]
    DeviceClaimed,
    /// The device key's consent signature is missing or does not verify.
    #[error(
        "the device key did not sign its binding to this account on this chain: sign \
         device_binding_message with the device key"
    )]
    BadDeviceBinding,
    /// The device is not an active device of the account.
    #[error("device is not an active device of this account")]
    UnknownDevice,
    /// The account has [`crate::state::DEVICES_MAX`] devices.
    #[error("too many devices")]
    TooManyDevices,
    /// The new key's consent signature is bad, or the key is unusable.
    #[error("bad key rotation: {0}")]
    BadRotation(&'static str),
    /// The handle breaks the naming rules.
    #[error("bad handle: {0}")]
    BadHandle(&'static str),
    /// Someone holds the handle.
    #[error("handle is taken: choose another one")]
    HandleTaken,
    /// Someone holds a handle that looks like this one (same [`crate::handle::skeleton`]).
    #[error("handle looks like @{taken}, which is taken: choose a handle that does not look like it")]
    HandleLookAlike {
        /// The taken handle it collides with (display form).
        taken: String,
    },
    /// The account does not hold the handle.
    #[error("account does not hold this handle")]
    HandleNotHeld,
    /// The account (or the receiver) already holds a handle.
    #[error("account already holds a handle")]
    AlreadyHasHandle,
    /// Receiving account is not registered (for a transfer: the receiving id is not a usable
    /// key, so no account can be created for it).
    #[error("receiving account is not registered")]
    UnknownRecipient,
    /// Not enough balance.
    #[error("insufficient balance: have {have}, need {need}")]
    InsufficientBalance {
        /// Balance.
        have: u64,
        /// Amount asked.
        need: u64,
    },
    /// Balance would overflow.
    #[error("balance overflow")]
    BalanceOverflow,
    /// The handshake was built on a stale topic length.
    #[error("stale handshake: built after {after}, the topic has {current}")]
    StaleSequence {
        /// What the submission claimed.
        after: u64,
        /// Current length of the topic's order.
        current: u64,
    },
    /// An anchor must name more messages than the one anchored (so a copy of an anchor is
    /// never applied twice).
    #[error("anchor count {count} is not above the anchored {anchored}")]
    AnchorRegressed {
        /// Count given.
        count: u64,
        /// Count already anchored.
        anchored: u64,
    },
    /// Transferring to oneself.
    #[error("cannot transfer to the same account")]
    SelfTransfer,
    /// The validator's mempool is full (transient: retry later or at another validator).
    #[error("mempool is full ({max} transactions): retry later or at another validator")]
    MempoolFull {
        /// Mempool bound.
        max: usize,
    },
    /// The account cannot pay the transaction's fee (its balance, less the fees of its
    /// transactions already waiting, is below the fee).
    #[error(
        "balance {have} cannot pay the fee of {need}: fund the account first (a transfer from a \
         funded account or a genesis allocation; local dev networks credit new accounts when they \
         register), or wait for its waiting transactions to finalize"
    )]
    FeeUnpaid {
        /// Balance available for this fee.
        have: u64,
        /// Fee of the transaction.
        need: u64,
    },
    /// The nonce is too far ahead of the signer's next one for a mempool to hold it.
    #[error(
        "nonce {got} is {window} or more ahead of the next nonce {expected}: wait for the earlier \
         transactions to finalize, then resubmit"
    )]
    NonceTooFar {
        /// Next nonce of the signer.
        expected: u64,
        /// Nonce given.
        got: u64,
        /// Pending nonces a signer may have ahead of its next one.
        window: u64,
    },
    /// The signer already has this many bytes waiting in this validator's mempool (transient).
    #[error(
        "the signer already has {pending} bytes waiting (limit {max}): wait for them to finalize, \
         then resubmit"
    )]
    SignerMempoolFull {
        /// Bytes of the signer's waiting transactions.
        pending: usize,
        /// Per-signer bound, bytes.
        max: usize,
    },
    /// Contract code breaks an upload rule (the message names it).
    #[error("contract code refused: {0}")]
    CodeRefused(String),
    /// No code with this hash is deployed.
    #[error("no contract code with this hash: deploy it first")]
    UnknownCode,
    /// No contract at this address.
    #[error("no contract at this address")]
    UnknownContract,
    /// The contract call trapped (aborted, ran out of fuel, broke a limit); all its effects are
    /// reverted, the fee for the fuel used is paid.
    #[error("contract call failed: {0}")]
    ContractFailed(String),
    /// The fuel limit is over [`crate::state::FUEL_LIMIT_MAX`].
    #[error("fuel limit {got} is over the maximum of {max}: split the work into several calls")]
    FuelLimitTooHigh {
        /// Limit given.
        got: u64,
        /// Maximum.
        max: u64,
    },
    /// The block's contract calls already reserve [`crate::state::BLOCK_FUEL_MAX`] fuel
    /// (transient: the transaction waits for a later block).
    #[error("the block's fuel budget of {max} is reserved: the call waits for a later block")]
    BlockFuelFull {
        /// Per-block fuel budget.
        max: u64,
    },
    /// The store node key's consent signature is missing or does not verify, or the key is
    /// unusable.
    #[error(
        "the store node key did not sign its registration for this account on this chain: sign \
         store_binding_message with the node's identity key"
    )]
    BadStoreBinding,
    /// The store node key is already registered (by this or another account).
    #[error("store node is already registered: deregister it first, or use another node key")]
    StoreExists,
    /// The account already registered the most store nodes it may.
    #[error("the account already registered {max} store nodes, the most: deregister one first")]
    TooManyStores {
        /// Per-account bound.
        max: usize,
    },
    /// The ledger's store set holds its bound.
    #[error("the ledger already holds {max} registered store nodes, the most: retry once one leaves")]
    StoreSetFull {
        /// Bound of the store set.
        max: usize,
    },
    /// The account did not register this store node.
    #[error("this account has not registered this store node")]
    UnknownStore,
    /// The topic write is not signed by a key of the conversation's authority: only its
    /// current members can sequence or anchor on it.
    #[error("not signed by a current member of this conversation: only its members can write to its topic")]
    NotTopicAuthority,
    /// The topic write's member signature does not verify.
    #[error("the member signature of this topic write does not verify")]
    BadTopicAuth,
    /// The conversation's authority tree is full (a member's next write frees it).
    #[error("the conversation's authority holds {max} keys: retry after a member's next anchor")]
    AuthorityFull {
        /// Bound.
        max: usize,
    },
    /// An anchor's message count is beyond any real conversation.
    #[error("anchor count {count} is over the limit of {max}")]
    AnchorTooLarge {
        /// Count given.
        count: u64,
        /// Limit.
        max: u64,
    },
    /// The validator's mempool holds its byte bound (transient: retry later or at another
    /// validator).
    #[error("mempool is full ({max} bytes): retry later or at another validator")]
    MempoolBytesFull {
        /// Mempool bound, bytes.
        max: usize,
    },
    /// The topic already has its most topic writes waiting in this validator's mempool
    /// (transient: retry once one is finalized).
    #[error("{pending} writes on this topic are waiting already, the most: retry once one is final")]
    TopicWindowFull {
        /// Writes waiting on the topic.
        pending: usize,
        /// Per-topic bound ([`crate::mempool::TOPIC_WINDOW`]).
        max: usize,
    },
    /// The mempool's share for topic writes holds its byte bound (transient).
    #[error("the mempool's room for topic writes ({max} bytes) is full: retry later")]
    TopicMempoolFull {
        /// Bound, bytes.
        max: usize,
    },
    /// A topic write carries too little proof of work for its size (at this validator's
    /// current load, which may ask more than the chain's price: mine again for `need`).
    #[error("topic write carries {have} hashes of work, {need} are needed: mine again")]
    TopicWorkTooLow {
        /// Work shown (expected hashes).
        have: u64,
        /// Work asked (expected hashes).
        need: u64,
    },
}

impl TxError {
    /// A short stable code for the reason, used on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Self::Malformed(_) => 1,
            Self::Oversized { .. } => 2,
            Self::WrongChain => 3,
            Self::BadSignature => 4,
            Self::NonceReplayed { .. } => 5,
            Self::NonceSkipped { .. } => 6,
            Self::UnknownAccount => 7,
            Self::AccountExists => 8,
            Self::UnknownSigner => 9,
            Self::RevokedDevice => 10,
            Self::NeedsAccountKey => 11,
            Self::BadDeviceCert(_) => 12,
            Self::DeviceExists => 13,
            Self::UnknownDevice => 14,
            Self::TooManyDevices => 15,
            Self::BadRotation(_) => 16,
            Self::BadHandle(_) => 17,
            Self::HandleTaken => 18,
            Self::HandleNotHeld => 19,
            Self::AlreadyHasHandle => 20,
            Self::UnknownRecipient => 21,
            Self::InsufficientBalance { .. } => 22,
            Self::BalanceOverflow => 23,
            Self::StaleSequence { .. } => 24,
            Self::AnchorRegressed { .. } => 25,
            Self::SelfTransfer => 26,
            Self::MempoolFull { .. } => 27,
            Self::FeeUnpaid { .. } => 28,
            Self::NonceTooFar { .. } => 29,
            Self::SignerMempoolFull { .. } => 30,
            Self::MempoolBytesFull { .. } => 31,
            Self::DeviceClaimed => 32,
            Self::BadDeviceBinding => 33,
            Self::HandleLookAlike { .. } => 34,
            Self::CodeRefused(_) => 35,
            Self::UnknownCode => 36,
            Self::UnknownContract => 37,
            Self::ContractFailed(_) => 38,
            Self::FuelLimitTooHigh { .. } => 39,
            Self::BlockFuelFull { .. } => 40,
            Self::BadStoreBinding => 41,
            Self::StoreExists => 42,
            Self::TooManyStores { .. } => 43,
            Self::StoreSetFull { .. } => 44,
            Self::UnknownStore => 45,
            Self::NotTopicAuthority => 46,
            Self::BadTopicAuth => 47,
            Self::AuthorityFull { .. } => 48,
            Self::AnchorTooLarge { .. } => 49,
            Self::TopicWindowFull { .. } => 50,
            Self::TopicMempoolFull { .. } => 51,
            Self::TopicWorkTooLow { .. } => 52,
        }
    }
}
