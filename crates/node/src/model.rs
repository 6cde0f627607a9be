//! The JSON shapes of the local API (shared by the server, the CLI and the tests).
//!
//! Ids travel as text: accounts `cairn1…`, devices `cairndev1…`, conversations, envelopes and
//! topics as lowercase hex. Every request body is bounded by the server (see `api`).

use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    /// This account (`cairn1…`).
    pub account: String,
    /// This device (`cairndev1…`).
    pub device: String,
    /// Account fingerprint, for comparing out of band.
    pub fingerprint: String,
    /// Claimed handle, without `@`.
    pub handle: Option<String>,
    /// libp2p peer id.
    pub peer_id: String,
    /// Multiaddrs this node listens on.
    pub p2p: Vec<String>,
    /// Connected peers.
    pub peers: usize,
    /// Store nodes known.
    pub store_peers: usize,
    /// Latest finalized ledger height seen (None: ledger unreachable).
    pub ledger_height: Option<u64>,
    /// Envelopes held for others (store nodes).
    pub mailbox_backlog: u64,
    /// Own envelopes not yet stored on enough store nodes.
    pub pending_sends: usize,
    /// Conversations this device is in.
    pub conversations: usize,
    /// Roles of this node.
    pub roles: Vec<String>,
}

/// A member of a conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    /// Account id.
    pub account: String,
    /// Handle, if the ledger knows one.
    pub handle: Option<String>,
    /// Account fingerprint, for comparing out of band before marking the member verified.
    pub fingerprint: String,
    /// Devices of this account in the conversation.
    pub devices: Vec<String>,
}

/// A conversation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationView {
    /// Conversation id (hex, 32 bytes; never leaves the members).
    pub id: String,
    /// Network topic (hash of the id).
    pub topic: String,
    /// MLS epoch.
    pub epoch: u64,
    /// Whether this device is still a member.
    pub active: bool,
    /// Members (accounts).
    pub members: Vec<MemberView>,
    /// Messages in the local history.
    pub messages: u64,
}

/// `POST /v1/conversations` and `POST /v1/conversations/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MembersRequest {
    /// Account ids (`cairn1…`) or handles (`@name`).
    pub members: Vec<String>,
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendRequest {
    /// UTF-8 text.
    pub text: String,
}

/// Delivery state of a sent message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryView {
    /// Where the message is: sent, stored or delivered.
    pub state: DeliveryState,
    /// Store nodes that acknowledged it durably.
    pub stored_on: u32,
    /// Other members whose device acknowledged it.
    pub delivered_to: u32,
    /// Other members.
    pub members: u32,
}

/// How far a sent message got (JSON: `"sent"`, `"stored"`, `"delivered"`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Handed to the mesh; no store node acknowledged it yet.
    #[default]
    Sent,
    /// At least one store node keeps it durably; not every member receipted it yet.
    Stored,
    /// Every other member's device receipted it.
    Delivered,
}

impl DeliveryState {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Sent => "sent",
            DeliveryState::Stored => "stored",
            DeliveryState::Delivered => "delivered",
        }
    }
}

/// `POST /v1/conversations/{id}/messages` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SendQuery {
    /// Wait up to this long (capped) for the message to be delivered to every member before
    /// answering; the answer then carries the latest state reached. 0 or absent: answer at once.
    pub wait_ms: Option<u64>,
}

/// `POST /v1/conversations/{id}/messages` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendResult {
    /// Envelope id (hex).
    pub id: String,
    /// Its delivery state.
    pub delivery: DeliveryView,
}

/// One message of a conversation's local history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageView {
    /// Position in this device's history (1-based, increasing; use as `after` cursor).
    pub seq: u64,
    /// Envelope id (hex).
    pub id: String,
    /// Conversation id (hex).
    pub conversation: String,
    /// Sender account.
    pub sender: String,
    /// Sender device.
    pub device: String,
    /// Sender handle, if known.
    pub handle: Option<String>,
    /// Sender's clock, ms since the epoch.
    pub timestamp_ms: u64,
    /// Text.
    pub text: String,
    /// Parent envelope ids (hex).
    pub parents: Vec<String>,
    /// An ancestor could not be found (gap).
    pub after_gap: bool,
    /// What the conversation's policy decided, if a policy was pinned at the message's epoch
    /// (a held or denied message is not in the history: see `GET …/held`).
    #[serde(default)]
    pub verdict: Option<MessageVerdict>,
    /// Tags the policy put on the message (verdict `label`).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// The policy's verdict on a message shown in the history (JSON: `"allow"`, `"label"`,
/// `"reply"`, `"propose_remove"`, `"released"`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageVerdict {
    /// Allowed.
    Allow,
    /// Allowed, with tags (see `labels`).
    Label,
    /// Allowed; a bot member answers it.
    Reply,
    /// Allowed; the policy proposes removing its sender (see `GET …/held`).
    ProposeRemove,
    /// Held by the policy, then released on this device by its user.
    Released,
}

/// `GET /v1/conversations/{id}/held`: what the conversation's policy kept out of the history
/// on this device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldListView {
    /// Held messages (verdict `Hold`), and messages waiting for an earlier message of their
    /// sender before they can be judged.
    pub held: Vec<HeldView>,
    /// Denied messages: their text is not kept.
    pub denied: Vec<DeniedView>,
    /// Removals the policy proposed (for the conversation's admins to decide).
    pub proposed_removals: Vec<ProposedRemovalView>,
}

/// A held message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeldView {
    /// Envelope id (hex).
    pub id: String,
    /// Sender account.
    pub sender: String,
    /// Sender device.
    pub device: String,
    /// Sender's clock, ms.
    pub timestamp_ms: u64,
    /// Why it is held.
    pub reason: String,
    /// Not judged yet: an earlier message of its sender is missing.
    pub waiting: bool,
    /// Its text (kept on this device).
    pub text: String,
}

/// A denied message (its text is gone; its id stays so the history still verifies).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeniedView {
    /// Envelope id (hex).
    pub id: String,
    /// Sender account.
    pub sender: String,
    /// The policy's reason.
    pub reason: String,
}

/// A removal the policy proposed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProposedRemovalView {
    /// The message that caused it (hex).
    pub id: String,
    /// Its sender.
    pub sender: String,
    /// The account to remove.
    pub account: String,
}

/// `GET /v1/conversations/{id}/messages` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TailQuery {
    /// Only messages with `seq` greater than this.
    pub after: Option<u64>,
    /// At most this many (server caps it).
    pub limit: Option<usize>,
    /// Wait up to this long for a first message when none is there (long poll; capped).
    pub wait_ms: Option<u64>,
}

/// `POST /v1/account/forget`: the caller repeats this account's id, so it cannot happen by
/// accident.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountForgetRequest {
    /// This account's id (`cairn1…`).
    pub confirm: String,
}

/// What forgetting the account did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AccountForgetView {
    /// Conversations this device left (the others were told by an MLS commit).
    pub left: usize,
    /// Conversations whose keys, state and messages were destroyed on this device.
    pub forgotten: usize,
    /// The handle released on the ledger, if the account held one.
    pub handle_released: Option<String>,
    /// Devices revoked on the ledger (this one last).
    pub devices_revoked: usize,
}

/// `PUT /v1/conversations/{id}/policy`: the shipped policy to pin (committed to the group,
/// so every member switches at the same epoch) and its settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PolicySetRequest {
    /// `moderation`, `echo_bot` or `none` (unpin).
    pub policy: String,
    /// Moderation: admin accounts (ids or @handles); only they may add, remove or change the
    /// policy. None: every member may.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Moderation: most messages per window per sender (0: no rate limit).
    #[serde(default)]
    pub max_messages: u32,
    /// Moderation: the rate limit's window, ms.
    #[serde(default)]
    pub window_ms: u64,
    /// Moderation: filtered words (ASCII, case-insensitive).
    #[serde(default)]
    pub words: Vec<String>,
    /// Moderation: deny a filtered message instead of holding it.
    #[serde(default)]
    pub deny_filtered: bool,
}

/// The policy pinned in a conversation at its current epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyView {
    /// `moderation`, `echo_bot`, `none`, or `unknown` (code this version does not ship).
    pub policy: String,
    /// The module's code hash (hex), if a policy is pinned.
    pub code_hash: Option<String>,
    /// Its configuration bytes (hex), if a policy is pinned.
    pub config: Option<String>,
}

/// `GET /v1/conversations/{id}/erasures` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErasuresQuery {
    /// Only erasures with `n` greater than this.
    pub after: Option<u64>,
    /// At most this many (server caps it).
    pub limit: Option<usize>,
}

/// One applied erasure of a conversation, in the order this device applied them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErasureView {
    /// Position in the conversation's erasure log (1-based, increasing; use as `after`).
    pub n: u64,
    /// The erased message's id (hex).
    pub id: String,
}

/// `POST /v1/conversations/{id}/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyView {
    /// True only if every check passed.
    pub intact: bool,
    /// Envelopes examined.
    pub envelopes: usize,
    /// Inner signatures verified.
    pub signatures_verified: usize,
    /// Ledger anchors checked.
    pub anchors: usize,
    /// Erased payloads (structure checked only).
    pub erased: usize,
    /// First problem, naming the envelope.
    pub first_problem: Option<String>,
    /// Number of problems.
    pub problems: usize,
}

/// `POST /v1/handle`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HandleRequest {
    /// Handle, with or without `@`.
    pub name: String,
}

/// A ledger transaction's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TxView {
    /// Transaction id (hex).
    pub tx: String,
    /// Finalized height.
    pub height: u64,
}

/// An invitation waiting for the user's consent (`GET /v1/requests`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestView {
    /// Request id: the conversation id (hex).
    pub id: String,
    /// Inviting account.
    pub inviter: String,
    /// Inviting device.
    pub inviter_device: String,
    /// When the invitation arrived (Unix ms).
    pub received_at_ms: u64,
    /// Member devices of the conversation, this device included.
    pub members: u32,
}

/// A device of an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceView {
    /// Device id.
    pub device: String,
    /// Whether it is this node's device.
    pub this_device: bool,
}

/// `POST /v1/devices`: create a new device of this account into another data directory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceAddRequest {
    /// Data directory of the new device (must not hold a keystore yet).
    pub home: String,
    /// Passphrase of the new device's keystore.
    pub passphrase: String,
}

/// `GET /v1/ledger/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LedgerStatusView {
    /// Chain id (hex).
    pub chain: String,
    /// Per validator: its RPC address and what it answered.
    pub validators: Vec<ValidatorView>,
}

/// One validator's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidatorView {
    /// RPC address.
    pub rpc: String,
    /// Finalized height (None: unreachable).
    pub height: Option<u64>,
    /// State root at that height (hex).
    pub state_root: Option<String>,
    /// Error text when unreachable.
    pub error: Option<String>,
}

/// `GET /v1/ledger/accounts/{id-or-@handle}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountView {
    /// Account id.
    pub account: String,
    /// Handle.
    pub handle: Option<String>,
    /// Active devices.
    pub devices: Vec<String>,
    /// Height of the finalized, validator-signed header the proof was checked against.
    pub height: u64,
    /// The node checked a Merkle proof against a certified header (never trusts the server).
    pub proof_verified: bool,
}

/// A live event on `GET /v1/stream` (WebSocket, one JSON text frame each).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// A message arrived (or was sent by this device).
    Message(MessageView),
    /// A sent message's delivery state changed.
    Delivery {
        /// Envelope id.
        id: String,
        /// Conversation id.
        conversation: String,
        /// New state.
        delivery: DeliveryView,
    },
    /// A message was erased (by its author, or a moderator the policy allows): drop it from views.
    Erased {
        /// Conversation id.
        conversation: String,
        /// The erased message's id.
        id: String,
    },
    /// The conversation's policy kept a message out of the history on this device (held,
    /// waiting for an earlier one, or denied): re-read `GET …/held`.
    Held {
        /// Conversation id.
        conversation: String,
        /// The message's id.
        id: String,
    },
    /// This device joined a conversation.
    Joined {
        /// Conversation.
        conversation: ConversationView,
    },
    /// This listener fell behind and missed events: re-read the messages it follows with
    /// `GET …/messages?after=` (nothing is lost from the local history).
    Lagged {
        /// Events missed.
        skipped: u64,
    },
}

/// Every error answer: `{"error": "...", "code": "..."}` with a matching HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong and what to do next.
    pub error: String,
    /// Stable machine-readable code (`bad_request`, `unauthorized`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`, `unavailable`, `internal`).
    pub code: String,
}

/// `DIR/run/node.json`: how clients find a running node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunFile {
    /// Base URL of the local API (`http://127.0.0.1:PORT`).
    pub api: String,
    /// P2P multiaddrs (with `/p2p/PEER`).
    pub p2p: Vec<String>,
    /// libp2p peer id.
    pub peer_id: String,
    /// Process id.
    pub pid: u32,
}
