//! A device's MLS client: its conversations, their sequenced handshakes and messages.
//!
//! Everything here is synchronous and transport-free: the caller passes the time, a
//! [`CommitSequencer`], and bytes it received; the client returns bytes to send. Each public
//! operation either completes and commits its whole effect (MLS state and Cairn's per-conversation
//! metadata) in one redb transaction, or fails, leaving the stored state as it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_proto::codec::{Reader, Writer};
use cairn_proto::sequencer::{CommitSequencer, SequencerError};
use cairn_proto::{AccountId, DecodeError, DeviceCert, DeviceId, Topic};
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::{
    Capabilities, ExtensionType, GroupId, KeyPackage, KeyPackageBundle, KeyPackageRef, LeafNodeIndex,
    LeafNodeParameters, Lifetime, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn,
    MlsMessageIn, MlsMessageOut, PastEpochDeletion, ProcessMessageError, ProcessedMessageContent, Proposal,
    ProtocolMessage, RatchetTreeIn, SenderRatchetConfiguration, StagedCommit, StagedWelcome, ValidationError,
};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::random::OpenMlsRand as _;
use thiserror::Error;
use tls_codec::{DeserializeBytes as _, Serialize as _};

use crate::CIPHERSUITE;
use crate::credential::{CredentialError, DeviceSigner, cert_of, verify_credential};
use crate::keypackage::{
    KeyPackageBatch, KeyPackageError, KeyPackagePool, VerifiedKeyPackage, encode_key_package,
};
use crate::storage::{CairnProvider, DatabaseHandle, StorageError};

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Application messages of up to this many epochs in the past still decrypt (retained
    /// epoch secrets); older ones are dropped with [`Dropped::TooOld`].
    pub past_epochs_max: usize,
    /// Application messages for a future epoch held per conversation until its commits arrive.
    pub future_messages_max: usize,
    /// Out-of-order tolerance within one sender's ratchet (generations).
    pub out_of_order_tolerance: u32,
    /// How far ahead a sender's generation may jump.
    pub maximum_forward_distance: u32,
    /// A member self-updates at least this often (ms).
    pub update_interval_ms: u64,
    /// How many times a commit refused as stale is rebuilt before giving up.
    pub rebuild_attempts_max: u32,
    /// Lifetime of published key packages (seconds).
    pub key_package_lifetime_s: u64,
    /// Handshake messages fetched per sequencer call.
    pub fetch_page: usize,
    /// Application ciphertexts are padded to a multiple of this many bytes.
    pub padding: usize,
    /// Most members [`Client::add_many`] adds per commit (each Add carries a ≈ 0.42 KiB key
    /// package; the sequencer takes commits up to 64 KiB, so 128 adds ≈ 54 KiB). Every commit
    /// costs O(N) (OpenMLS rewrites the whole tree), so fewer, larger commits build a group
    /// faster; a commit the sequencer still finds too large is split.
    pub adds_per_commit_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            past_epochs_max: 2,
            future_messages_max: 1024,
            out_of_order_tolerance: 32,
            maximum_forward_distance: 1000,
            update_interval_ms: 7 * 24 * 3600 * 1000,
            rebuild_attempts_max: 8,
            key_package_lifetime_s: 84 * 24 * 3600,
            fetch_page: 256,
            padding: 32,
            adds_per_commit_max: 128,
        }
    }
}

/// Format version of a [`WelcomeBundle`].
pub const WELCOME_BUNDLE_VERSION: u8 = 2;
/// Largest MLS Welcome accepted, in bytes.
pub const WELCOME_BYTES_MAX: usize = 8 << 20;
/// Largest ratchet tree accepted, in bytes.
pub const RATCHET_TREE_BYTES_MAX: usize = 32 << 20;
/// Largest application message ciphertext accepted, in bytes.
pub const APPLICATION_BYTES_MAX: usize = 256 * 1024;
/// Largest authenticated data bound to an application message (the caller's header binding,
/// e.g. a 32-byte hash of the envelope header), in bytes.
pub const AAD_BYTES_MAX: usize = 256;

/// A random conversation id; the MLS group id is the same 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ConversationId(pub [u8; 32]);

impl ConversationId {
    /// The network topic: a hash of the id.
    pub fn topic(&self) -> Topic {
        Topic::for_conversation(&self.0)
    }
}

/// The inbox topic of a device, where Welcome messages for it are addressed.
pub fn inbox_topic(device: &DeviceId) -> Topic {
    Topic(cairn_proto::id::hash("cairn 2026-11 device inbox topic v1", &device.0))
}

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
    /// The authenticated data given by the caller is over [`AAD_BYTES_MAX`].
    #[error("authenticated data of {len} bytes is over the limit of {max}")]
    AadTooLong {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

fn check_aad(aad: &[u8]) -> Result<(), MlsError> {
    if aad.len() > AAD_BYTES_MAX {
        return Err(MlsError::AadTooLong { len: aad.len(), max: AAD_BYTES_MAX });
    }
    Ok(())
}

fn op_err(op: &'static str) -> impl FnOnce(String) -> MlsError {
    move |reason| MlsError::Operation { op, reason }
}

/// A group change, built on the latest state and rebuilt if the sequencer says it is stale.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add these devices (one leaf each).
    Add(Vec<VerifiedKeyPackage>),
    /// Remove every device of this account.
    RemoveAccount(AccountId),
    /// Remove this device.
    RemoveDevice(DeviceId),
    /// Rotate this device's leaf keys.
    SelfUpdate,
    /// Commit proposals waiting in the group (e.g. a member's leave).
    CommitPending,
}

/// A Welcome for new members, as delivered to their inboxes.
#[derive(Debug, Clone)]
pub struct WelcomeOut {
    /// Inbox topics of the new devices, with the device each is for.
    pub recipients: Vec<(DeviceId, Topic)>,
    /// The encoded [`WelcomeBundle`].
    pub bytes: Vec<u8>,
}

/// Result of a sequenced commit.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The commit's position in the conversation's handshake order.
    pub seq: u64,
    /// The epoch the group is in after the commit.
    pub epoch: u64,
    /// Size of the commit message in bytes.
    pub commit_bytes: usize,
    /// The Welcome, if members were added.
    pub welcome: Option<WelcomeOut>,
}

/// A commit built but not yet sequenced (see [`Client::stage`]).
#[derive(Debug)]
pub struct StagedChange {
    conversation: ConversationId,
    change: Change,
    built: Built,
}

impl StagedChange {
    /// The commit message bytes to be sequenced.
    pub fn commit_bytes(&self) -> &[u8] {
        &self.built.commit
    }

    /// The number of handshake messages it was built after (its `after` for the sequencer).
    pub fn after(&self) -> u64 {
        self.built.after
    }

    /// The conversation.
    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }
}

#[derive(Debug)]
struct Built {
    commit: Vec<u8>,
    /// The Welcome (bytes and recipients) and the key packages its tree key is sealed to.
    welcome: Option<(WelcomeOut, Vec<KeyPackage>)>,
    after: u64,
}

/// A Welcome as shipped: the MLS Welcome plus the ratchet tree (out of band, so the Welcome
/// stays small) and where in the handshake order the new member starts.
///
/// The tree names every member (their credentials), and the bundle travels on the invitee's
/// inbox topic where store nodes see it: it is encrypted under a fresh AEAD key, and that key
/// is HPKE-sealed to each new member's key-package init key (the key the MLS Welcome's own
/// group secrets are sealed to), so only the invitees read who is in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeBundle {
    /// The conversation.
    pub conversation: ConversationId,
    /// Handshake messages already applied when the member joins (it fetches from here).
    pub applied: u64,
    /// MLS `Welcome` message bytes.
    pub welcome: Vec<u8>,
    /// AEAD nonce of the sealed tree.
    pub tree_nonce: Vec<u8>,
    /// The TLS-encoded ratchet tree, AEAD-encrypted (with tag).
    pub sealed_tree: Vec<u8>,
    /// The tree key, sealed to each new member.
    pub keys: Vec<SealedTreeKey>,
}

/// The tree key of a [`WelcomeBundle`], HPKE-sealed to one key package's init key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedTreeKey {
    /// The key package it is sealed to (its TLS-encoded `KeyPackageRef`, which the MLS Welcome
    /// names in the clear too).
    pub key_package_ref: Vec<u8>,
    /// HPKE encapsulated key.
    pub kem_output: Vec<u8>,
    /// HPKE ciphertext of the tree key.
    pub ciphertext: Vec<u8>,
}

/// Most recipients of one Welcome bundle.
pub const WELCOME_RECIPIENTS_MAX: usize = 1024;
const TREE_KEY_INFO: &[u8] = b"cairn 2026-11 welcome tree key v1";

impl WelcomeBundle {
    /// Builds a bundle whose tree only the owners of `recipients` can read.
    pub fn seal(
        provider: &impl openmls_traits::OpenMlsProvider,
        conversation: ConversationId,
        applied: u64,
        welcome: Vec<u8>,
        ratchet_tree: &[u8],
        recipients: &[KeyPackage],
    ) -> Result<Self, MlsError> {
        use openmls_traits::crypto::OpenMlsCrypto as _;
        let fail = |what: &str, e: String| MlsError::Rejected(format!("sealing the welcome ({what}): {e}"));
        if recipients.is_empty() || recipients.len() > WELCOME_RECIPIENTS_MAX {
            return Err(fail("recipients", format!("{} (1..={WELCOME_RECIPIENTS_MAX})", recipients.len())));
        }
        let alg = CIPHERSUITE.aead_algorithm();
        let key = provider
            .rand()
            .random_vec(CIPHERSUITE.aead_key_length())
            .map_err(|e| fail("rng", format!("{e:?}")))?;
        let tree_nonce = provider
            .rand()
            .random_vec(CIPHERSUITE.aead_nonce_length())
            .map_err(|e| fail("rng", format!("{e:?}")))?;
        let aad = Self::aad(&conversation, applied);
        let sealed_tree = provider
            .crypto()
            .aead_encrypt(alg, &key, ratchet_tree, &tree_nonce, &aad)
            .map_err(|e| fail("tree", format!("{e:?}")))?;
        let mut keys = Vec::with_capacity(recipients.len());
        for kp in recipients {
            let r = kp.hash_ref(provider.crypto()).map_err(|e| fail("key package ref", e.to_string()))?;
            let ct = provider
                .crypto()
                .hpke_seal(
                    CIPHERSUITE.hpke_config(),
                    kp.hpke_init_key().as_slice(),
                    TREE_KEY_INFO,
                    &aad,
                    &key,
                )
                .map_err(|e| fail("hpke", format!("{e:?}")))?;
            keys.push(SealedTreeKey {
                key_package_ref: r
                    .tls_serialize_detached()
                    .map_err(|e| fail("key package ref", e.to_string()))?,
                kem_output: ct.kem_output.as_slice().to_vec(),
                ciphertext: ct.ciphertext.as_slice().to_vec(),
            });
        }
        Ok(Self { conversation, applied, welcome, tree_nonce, sealed_tree, keys })
    }

    fn aad(conversation: &ConversationId, applied: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(40);
        aad.extend_from_slice(&conversation.0);
        aad.extend_from_slice(&applied.to_be_bytes());
        aad
    }

    /// Opens the tree with the init key of one of this device's key packages (before the
    /// Welcome is processed: OpenMLS deletes a used key package).
    fn open_tree(&self, provider: &CairnProvider) -> Result<Vec<u8>, MlsError> {
        use openmls_traits::crypto::OpenMlsCrypto as _;
        use openmls_traits::storage::StorageProvider as _;
        let aad = Self::aad(&self.conversation, self.applied);
        for k in &self.keys {
            let Ok(r) = KeyPackageRef::tls_deserialize_exact_bytes(&k.key_package_ref) else { continue };
            let bundle: Option<KeyPackageBundle> = provider.storage().key_package(&r).ok().flatten();
            let Some(bundle) = bundle else { continue };
            let ct = openmls_traits::types::HpkeCiphertext {
                kem_output: k.kem_output.clone().into(),
                ciphertext: k.ciphertext.clone().into(),
            };
            let key = provider
                .crypto()
                .hpke_open(CIPHERSUITE.hpke_config(), &ct, bundle.init_private_key(), TREE_KEY_INFO, &aad)
                .map_err(|_| {
                    MlsError::Rejected(
                        "welcome: the tree key does not open with this device's key package".into(),
                    )
                })?;
            return provider
                .crypto()
                .aead_decrypt(CIPHERSUITE.aead_algorithm(), &key, &self.sealed_tree, &self.tree_nonce, &aad)
                .map_err(|_| MlsError::Rejected("welcome: the sealed ratchet tree does not open".into()));
        }
        Err(MlsError::Rejected("welcome: not addressed to any key package of this device".into()))
    }

    /// Canonical encoding: `version:u8 id:[32] applied:u64 welcome:bytes nonce:bytes
    /// sealed_tree:bytes count:u16 (ref:bytes kem:bytes ct:bytes)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(64 + self.welcome.len() + self.sealed_tree.len() + 128 * self.keys.len());
        w.u8(WELCOME_BUNDLE_VERSION);
        w.raw(&self.conversation.0);
        w.u64(self.applied);
        w.bytes(&self.welcome);
        w.bytes(&self.tree_nonce);
        w.bytes(&self.sealed_tree);
        w.u16(self.keys.len() as u16);
        for k in &self.keys {
            w.bytes(&k.key_package_ref);
            w.bytes(&k.kem_output);
            w.bytes(&k.ciphertext);
        }
        w.finish()
    }

    /// Decodes a bundle, with bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("welcome bundle", WELCOME_BUNDLE_VERSION)?;
        let conversation = ConversationId(r.array("welcome.conversation")?);
        let applied = r.u64("welcome.applied")?;
        let welcome = r.bytes(WELCOME_BYTES_MAX, "welcome.welcome")?.to_vec();
        let tree_nonce = r.bytes(64, "welcome.tree_nonce")?.to_vec();
        let sealed_tree = r.bytes(RATCHET_TREE_BYTES_MAX + 64, "welcome.sealed_tree")?.to_vec();
        let n = r.count(WELCOME_RECIPIENTS_MAX, "welcome.keys")?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                field: "welcome.keys",
                reason: "a bundle seals the tree to someone",
            });
        }
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            keys.push(SealedTreeKey {
                key_package_ref: r.bytes(64, "welcome.key.ref")?.to_vec(),
                kem_output: r.bytes(256, "welcome.key.kem")?.to_vec(),
                ciphertext: r.bytes(256, "welcome.key.ct")?.to_vec(),
            });
        }
        r.finish()?;
        Ok(Self { conversation, applied, welcome, tree_nonce, sealed_tree, keys })
    }
}

/// A decrypted application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The sending device's certificate (its chain was checked when it joined).
    pub sender: DeviceCert,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// The plaintext.
    pub body: Vec<u8>,
}

/// Why an application message was dropped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From an epoch older than [`Config::past_epochs_max`] allows: its keys are gone.
    TooOld,
    /// Already decrypted once (a replay or a duplicate delivery).
    Duplicate,
    /// For a future epoch, but the buffer ([`Config::future_messages_max`]) is full.
    BufferFull,
    /// This device's own message, echoed back.
    Own,
    /// The message's authenticated data (in clear, bound to its ciphertext and signature) is
    /// not the one the caller expected: the ciphertext was re-wrapped into another envelope.
    /// Refused before any decryption, so no ratchet key is consumed.
    AadMismatch,
}

/// What became of a received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Decrypted.
    Message(Delivered),
    /// For an epoch this device has not reached yet; held and retried after [`Client::sync`].
    Buffered,
    /// Dropped, with the reason.
    Dropped(Dropped),
}

/// Something [`Client::sync`] applied or observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A commit was applied; the group is now in `epoch`.
    Commit {
        /// Sequence number of the commit.
        seq: u64,
        /// New epoch.
        epoch: u64,
        /// Devices added.
        added: Vec<DeviceCert>,
        /// Devices removed.
        removed: Vec<DeviceCert>,
    },
    /// A member proposed to leave; a commit will follow ([`Client::commit_pending`]).
    LeaveProposed {
        /// Sequence number of the proposal.
        seq: u64,
        /// The leaving device.
        device: Option<DeviceCert>,
    },
    /// This device was removed from the conversation.
    RemovedSelf {
        /// Sequence number of the commit.
        seq: u64,
    },
    /// A sequenced handshake message was invalid; every member skips it alike.
    Skipped {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A buffered application message became readable (or was dropped).
    Message(Received),
}

/// Cairn's per-conversation metadata, stored next to the MLS state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Meta {
    applied: u64,
    last_update_ms: u64,
    needs_update: bool,
    pending_commit: Option<Vec<u8>>,
}

const META_VERSION: u8 = 1;
const META_PREFIX: &[u8] = b"cairn.conversation\0";
const KP_PREFIX: &[u8] = b"cairn.keypackage\0";

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(32);
        w.u8(META_VERSION);
        w.u64(self.applied);
        w.u64(self.last_update_ms);
        w.u8(u8::from(self.needs_update));
        match &self.pending_commit {
            Some(c) => {
                w.u8(1);
                w.bytes(c);
            }
            None => w.u8(0),
        }
        w.finish()
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("conversation metadata", META_VERSION)?;
        let applied = r.u64("meta.applied")?;
        let last_update_ms = r.u64("meta.last_update_ms")?;
        let needs_update = r.u8("meta.needs_update")? != 0;
        let pending_commit = match r.u8("meta.pending")? {
            0 => None,
            _ => Some(r.bytes(cairn_proto::sequencer::HANDSHAKE_BYTES_MAX, "meta.pending_commit")?.to_vec()),
        };
        r.finish()?;
        Ok(Self { applied, last_update_ms, needs_update, pending_commit })
    }

    fn key(id: &ConversationId) -> Vec<u8> {
        let mut k = META_PREFIX.to_vec();
        k.extend_from_slice(&id.0);
        k
    }
}

struct Conversation {
    group: MlsGroup,
    meta: Meta,
    /// Future-epoch application messages with their expected authenticated data.
    future: Vec<(Vec<u8>, Vec<u8>)>,
    /// Snapshots of retained past epochs, loaded on demand.
    past: BTreeMap<u64, (MlsGroup, CairnProvider)>,
}

impl Conversation {
    fn new(group: MlsGroup, meta: Meta) -> Self {
        Self { group, meta, future: Vec::new(), past: BTreeMap::new() }
    }
}

const PAST_PREFIX: &[u8] = b"cairn.past\0";

fn past_prefix(id: &ConversationId, epoch: u64) -> Vec<u8> {
    let mut p = PAST_PREFIX.to_vec();
    p.extend_from_slice(&id.0);
    p.extend_from_slice(&epoch.to_be_bytes());
    p
}

/// Before a commit is merged: copies the group's state of the ending epoch under a
/// snapshot prefix (raw bytes, no re-encoding) and drops snapshots older than the window.
/// OpenMLS itself keeps no past epochs (its past-epoch store re-serializes every member's
/// leaf on every message, which is O(N) per message); a snapshot costs one copy per commit.
fn snapshot_epoch(
    provider: &CairnProvider,
    id: &ConversationId,
    c: &mut Conversation,
    past_epochs_max: usize,
) -> Result<(), MlsError> {
    let epoch = c.group.epoch().as_u64();
    let keep_from = (epoch + 1).saturating_sub(past_epochs_max as u64);
    prune_past(provider, id, c, keep_from)?;
    if past_epochs_max == 0 {
        return Ok(());
    }
    let live = provider.storage();
    let gid = GroupId::from_slice(&id.0);
    let snap = past_prefix(id, epoch);
    for label in crate::storage::GROUP_LABELS {
        let k = live.key(label, &gid)?;
        if let Some(v) = live.raw_get(&k)? {
            let mut sk = snap.clone();
            sk.extend_from_slice(&k);
            // The tree entry is a pointer to a shared blob: the snapshot takes a reference.
            live.retain_blob(&v)?;
            live.raw_put(sk, v);
        }
    }
    Ok(())
}

fn prune_past(
    provider: &CairnProvider,
    id: &ConversationId,
    c: &mut Conversation,
    keep_from: u64,
) -> Result<(), MlsError> {
    let storage = provider.storage();
    let mut scope = PAST_PREFIX.to_vec();
    scope.extend_from_slice(&id.0);
    for (k, v) in storage.raw_scan(&scope)? {
        let e = k
            .get(scope.len()..scope.len() + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        if e.is_none_or(|e| e < keep_from) {
            storage.release_blob(&v)?;
            storage.raw_del(k);
        }
    }
    c.past.retain(|e, _| *e >= keep_from);
    Ok(())
}

/// One device's MLS client (see the module docs).
pub struct Client {
    provider: CairnProvider,
    signer: DeviceSigner,
    config: Config,
    conversations: BTreeMap<ConversationId, Conversation>,
    /// Deferred durability is on (see [`Client::set_deferred`]).
    deferred: bool,
    /// Conversations with staged writes, reloaded by [`Client::discard_pending`].
    staged: std::collections::BTreeSet<ConversationId>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("device", &self.signer.device())
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

fn parse_message(bytes: &[u8]) -> Result<ProtocolMessage, MlsError> {
    let msg =
        MlsMessageIn::tls_deserialize_exact_bytes(bytes).map_err(|e| MlsError::Malformed(e.to_string()))?;
    msg.try_into_protocol_message().map_err(|e| MlsError::Malformed(e.to_string()))
}

fn to_bytes(m: &MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    m.tls_serialize_detached().map_err(|e| MlsError::Malformed(e.to_string()))
}

/// Checks every leaf a commit brings in (adds, updates, the committer's new leaf).
fn verify_commit_leaves(staged: &StagedCommit) -> Result<(), CredentialError> {
    if let Some(leaf) = staged.update_path_leaf_node() {
        verify_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    }
    for p in staged.queued_proposals() {
        let leaf = match p.proposal() {
            Proposal::Add(a) => a.key_package().leaf_node(),
            Proposal::Update(u) => u.leaf_node(),
            _ => continue,
        };
        verify_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    }
    Ok(())
}

impl Client {
    /// Opens the client of `signer`'s device over `db`, loading its conversations.
    pub fn open(db: Arc<dyn DatabaseHandle>, signer: DeviceSigner, config: Config) -> Result<Self, MlsError> {
        let provider = CairnProvider::new(db);
        let mut conversations = BTreeMap::new();
        for (k, v) in provider.storage().raw_scan(META_PREFIX)? {
            let id: [u8; 32] = k[META_PREFIX.len()..]
                .try_into()
                .map_err(|_| DecodeError::Invalid { field: "meta.key", reason: "not a conversation id" })?;
            let meta = Meta::decode(&v)?;
            let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(&id))?
                .ok_or(MlsError::Operation { op: "load group", reason: "MLS state missing".into() })?;
            conversations.insert(ConversationId(id), Conversation::new(group, meta));
        }
        Ok(Self {
            provider,
            signer,
            config,
            conversations,
            deferred: false,
            staged: std::collections::BTreeSet::new(),
        })
    }

    // ---- deferred durability ------------------------------------------------------------------

    /// Turns deferred durability on or off.
    ///
    /// While on, [`Client::send_many`], [`Client::receive_many`] and [`Client::sync`] (and
    /// their one-message forms) commit no transaction of their own: their writes accumulate
    /// in memory, readable by later operations, until [`Client::flush_into`] writes them into
    /// the caller's redb transaction (the caller's own rows go in the same transaction, so a
    /// crash keeps both or neither) or [`Client::discard_pending`] drops them. Several
    /// deferred operations may accumulate before one flush; a failed one is undone alone.
    ///
    /// Every other operation that writes (create, join, stage, submit, commit and its
    /// wrappers, leave, key packages, forget) still commits its own transaction — a commit
    /// must be durable before it reaches the sequencer — and is refused with
    /// [`MlsError::FlushPending`] while deferred writes are waiting. Turning the mode off is
    /// refused likewise.
    ///
    /// A ciphertext from a deferred [`Client::send_many`] must not leave the device before
    /// its transaction committed: after a crash the old ratchet state would encrypt another
    /// message under the same key and nonce.
    pub fn set_deferred(&mut self, on: bool) -> Result<(), MlsError> {
        if !on && self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        self.deferred = on;
        Ok(())
    }

    /// Whether deferred durability is on.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// Whether deferred writes wait for [`Client::flush_into`].
    pub fn has_pending_flush(&self) -> bool {
        self.provider.storage().staged_writes() > 0
    }

    /// Writes every deferred write into `tx`; the caller commits `tx` (with its own rows),
    /// then calls [`Client::flush_committed`]. If the transaction is not committed, call
    /// [`Client::discard_pending`]; until one of the two, the writes stay pending (and are
    /// written again by the next `flush_into`), so none is lost.
    pub fn flush_into(&mut self, tx: &redb::WriteTransaction) -> Result<(), MlsError> {
        Ok(self.provider.storage().flush_into(tx)?)
    }

    /// Confirms that the transaction given to [`Client::flush_into`] was committed. Checked:
    /// if the database does not hold that flush, the writes stay pending and
    /// [`StorageError::NotCommitted`] is returned.
    pub fn flush_committed(&mut self) -> Result<(), MlsError> {
        self.provider.storage().staged_committed()?;
        self.staged.clear();
        Ok(())
    }

    /// [`Client::flush_into`] `tx`, commit it, and [`Client::flush_committed`]; on any failure
    /// the deferred writes are discarded ([`Client::discard_pending`]) and the error returned.
    pub fn commit_deferred(&mut self, tx: redb::WriteTransaction) -> Result<(), MlsError> {
        let committed = self
            .flush_into(&tx)
            .and_then(|()| tx.commit().map_err(|e| StorageError::from(e).into()))
            .and_then(|()| self.flush_committed());
        if let Err(e) = committed {
            self.discard_pending()?;
            return Err(e);
        }
        Ok(())
    }

    /// Drops every deferred write and reloads the conversations they touched from the
    /// database: the state is the one of the last committed transaction. Application messages
    /// a discarded [`Client::sync`] took from the future-epoch buffer are not buffered again
    /// (the caller receives them again from its history).
    pub fn discard_pending(&mut self) -> Result<(), MlsError> {
        self.provider.storage().discard_staged();
        for id in std::mem::take(&mut self.staged) {
            if self.conversations.contains_key(&id) {
                self.rollback(&id)?;
            }
        }
        Ok(())
    }

    /// Runs an operation that commits its own transaction: refused while deferred writes
    /// wait, and run with deferral off.
    fn exclusive<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, MlsError>) -> Result<T, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let mode = std::mem::replace(&mut self.deferred, false);
        let r = f(self);
        self.deferred = mode;
        r
    }

    /// This device's signer (certificate, ids).
    pub fn signer(&self) -> &DeviceSigner {
        &self.signer
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The OpenMLS provider (crypto and storage).
    pub fn provider(&self) -> &CairnProvider {
        &self.provider
    }

    fn capabilities() -> Capabilities {
        Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build()
    }

    fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .use_ratchet_tree_extension(false)
            .padding_size(self.config.padding)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                self.config.out_of_order_tolerance,
                self.config.maximum_forward_distance,
            ))
            .build()
    }

    fn create_config(&self) -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .use_ratchet_tree_extension(false)
            .padding_size(self.config.padding)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                self.config.out_of_order_tolerance,
                self.config.maximum_forward_distance,
            ))
            .capabilities(Self::capabilities())
            .build()
    }

    // ---- key packages -------------------------------------------------------------------

    /// Makes `count` one-time key packages and, if `last_resort`, one last-resort package; their
    /// private keys are stored, the batch is what the device publishes.
    pub fn key_package_batch(&self, count: usize, last_resort: bool) -> Result<KeyPackageBatch, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let mut packages = Vec::with_capacity(count + 1);
        for i in 0..count + usize::from(last_resort) {
            let mut b = KeyPackage::builder()
                .key_package_lifetime(Lifetime::new(self.config.key_package_lifetime_s))
                .leaf_node_capabilities(Self::capabilities());
            if i == count {
                b = b.mark_as_last_resort();
            }
            let bundle = b
                .build(CIPHERSUITE, &self.provider, &self.signer, self.signer.credential_with_key())
                .map_err(|e| {
                    self.provider.storage().discard();
                    MlsError::Operation { op: "build key package", reason: e.to_string() }
                })?;
            // Remember where its private part is stored, to count what is left unused.
            let hash_ref = bundle.key_package().hash_ref(self.provider.crypto()).map_err(|e| {
                self.provider.storage().discard();
                MlsError::Operation { op: "key package reference", reason: e.to_string() }
            })?;
            let mut k = KP_PREFIX.to_vec();
            k.extend_from_slice(hash_ref.as_slice());
            let mut v = vec![u8::from(i == count)];
            v.extend_from_slice(&self.provider.storage().key(crate::storage::KEY_PACKAGE, &hash_ref)?);
            self.provider.storage().raw_put(k, v);
            packages.push(encode_key_package(bundle.key_package())?);
        }
        self.provider.storage().flush()?;
        Ok(KeyPackageBatch { packages })
    }

    /// Published one-time key packages of this device not consumed by a Welcome yet.
    pub fn key_packages_remaining(&self) -> Result<usize, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let storage = self.provider.storage();
        let mut left = 0;
        for (k, v) in storage.raw_scan(KP_PREFIX)? {
            let Some((&last_resort, stored)) = v.split_first() else { continue };
            if last_resort != 0 {
                continue;
            }
            if storage.raw_get(stored)?.is_some() {
                left += 1;
            } else {
                storage.raw_del(k);
            }
        }
        storage.flush()?;
        Ok(left)
    }

    /// Replenishes published key packages: below `low_water` unused one-time packages, makes
    /// a batch bringing them back to `target` (with a last-resort package if none was made
    /// yet). `None` when enough are left.
    pub fn replenish_key_packages(
        &self,
        low_water: usize,
        target: usize,
    ) -> Result<Option<KeyPackageBatch>, MlsError> {
        let left = self.key_packages_remaining()?;
        if left >= low_water {
            return Ok(None);
        }
        let has_last_resort =
            self.provider.storage().raw_scan(KP_PREFIX)?.iter().any(|(_, v)| v.first() == Some(&1));
        self.key_package_batch(target.saturating_sub(left), !has_last_resort).map(Some)
    }

    // ---- conversations --------------------------------------------------------------------

    fn conv(&self, id: &ConversationId) -> Result<&Conversation, MlsError> {
        self.conversations.get(id).ok_or(MlsError::UnknownConversation)
    }

    fn conv_mut(&mut self, id: &ConversationId) -> Result<&mut Conversation, MlsError> {
        self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)
    }

    /// Ids of every conversation on this device.
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.conversations.keys().copied().collect()
    }

    /// Creates a conversation with this device as its only member.
    pub fn create(&mut self, now_ms: u64) -> Result<ConversationId, MlsError> {
        self.exclusive(|s| s.create_now(now_ms))
    }

    fn create_now(&mut self, now_ms: u64) -> Result<ConversationId, MlsError> {
        let id: [u8; 32] = self
            .provider
            .rand()
            .random_array()
            .map_err(|e| MlsError::Operation { op: "random conversation id", reason: format!("{e:?}") })?;
        let id = ConversationId(id);
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &self.create_config(),
            GroupId::from_slice(&id.0),
            self.signer.credential_with_key(),
        );
        let group = match group {
            Ok(g) => g,
            Err(e) => {
                self.provider.storage().discard();
                return Err(MlsError::Operation { op: "create group", reason: e.to_string() });
            }
        };
        let meta = Meta { applied: 0, last_update_ms: now_ms, needs_update: false, pending_commit: None };
        self.provider.storage().raw_put(Meta::key(&id), meta.encode());
        if let Err(e) = self.provider.storage().flush() {
            self.provider.storage().discard();
            return Err(e.into());
        }
        self.conversations.insert(id, Conversation::new(group, meta));
        Ok(id)
    }

    /// Current epoch of a conversation.
    pub fn epoch(&self, id: &ConversationId) -> Result<u64, MlsError> {
        Ok(self.conv(id)?.group.epoch().as_u64())
    }

    /// Handshake messages applied so far (the next sequence number to fetch).
    pub fn applied(&self, id: &ConversationId) -> Result<u64, MlsError> {
        Ok(self.conv(id)?.meta.applied)
    }

    /// The epoch authenticator: equal on every member in the same state (compare out of band).
    pub fn epoch_authenticator(&self, id: &ConversationId) -> Result<Vec<u8>, MlsError> {
        Ok(self.conv(id)?.group.epoch_authenticator().as_slice().to_vec())
    }

    /// Whether this device is still a member.
    pub fn is_active(&self, id: &ConversationId) -> Result<bool, MlsError> {
        Ok(self.conv(id)?.group.is_active())
    }

    /// The member devices' certificates, in leaf order.
    pub fn members(&self, id: &ConversationId) -> Result<Vec<DeviceCert>, MlsError> {
        Ok(self.conv(id)?.group.members().filter_map(|m| cert_of(&m.credential)).collect())
    }

    /// How many member devices (leaves) the conversation has; no certificate is decoded.
    pub fn member_count(&self, id: &ConversationId) -> Result<usize, MlsError> {
        Ok(self.conv(id)?.group.members().count())
    }

    /// The accounts that are members (each with one or more devices).
    pub fn member_accounts(&self, id: &ConversationId) -> Result<Vec<AccountId>, MlsError> {
        let mut a: Vec<AccountId> = self.members(id)?.iter().map(|c| c.account).collect();
        a.sort();
        a.dedup();
        Ok(a)
    }

    /// Whether this device should self-update now: it joined or was next to a removed leaf
    /// and has not updated since (keeps the tree full), or the update interval has passed.
    pub fn due_for_update(&self, id: &ConversationId, now_ms: u64) -> Result<bool, MlsError> {
        let c = self.conv(id)?;
        Ok(c.group.is_active()
            && (c.meta.needs_update
                || now_ms.saturating_sub(c.meta.last_update_ms) >= self.config.update_interval_ms))
    }

    /// Conversations where [`Client::due_for_update`] holds.
    pub fn conversations_due(&self, now_ms: u64) -> Vec<ConversationId> {
        self.conversations
            .keys()
            .filter(|id| self.due_for_update(id, now_ms).unwrap_or(false))
            .copied()
            .collect()
    }

    /// Puts the in-memory group back to its stored state after a failed operation.
    fn rollback(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.provider.storage().discard();
        let group = MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&id.0))?
            .ok_or(MlsError::Operation { op: "reload group", reason: "MLS state missing".into() })?;
        let meta = match self.provider.storage().raw_get(&Meta::key(id))? {
            Some(b) => Meta::decode(&b)?,
            None => Meta::default(),
        };
        let c = self.conv_mut(id)?;
        c.group = group;
        c.meta = meta;
        c.past.clear();
        Ok(())
    }

    /// Settles deferred writes of the message secrets (see `send_many` / `receive_many`): each
    /// group of the conversation whose secret tree advanced while writes were deferred writes
    /// its final state once.
    fn settle(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        let storage = self.provider.storage();
        storage.set_defer(false);
        if !storage.any_deferred() {
            return Ok(());
        }
        let provider = &self.provider;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        let rewrite = |g: &mut MlsGroup, p: &CairnProvider| {
            // With no past epochs kept inside OpenMLS this deletes nothing; it (re)writes the
            // group's message secrets, which is what is needed.
            g.delete_past_epoch_secrets(p, PastEpochDeletion::before_timestamp(std::time::UNIX_EPOCH))
                .map_err(|e| op_err("write message secrets")(e.to_string()))
        };
        if provider.storage().message_secrets_deferred(&id.0)? {
            rewrite(&mut c.group, provider)?;
        }
        for (g, p) in c.past.values_mut() {
            if p.storage().message_secrets_deferred(&id.0)? {
                rewrite(g, p)?;
            }
        }
        Ok(())
    }

    /// Writes the metadata and commits the operation's writes; rolls back on failure.
    fn persist(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        if let Err(e) = self.settle(id) {
            self.rollback(id)?;
            return Err(e);
        }
        let meta = self.conv(id)?.meta.encode();
        self.provider.storage().raw_put(Meta::key(id), meta);
        let done = if self.deferred {
            self.staged.insert(*id);
            self.provider.storage().stage()
        } else {
            self.provider.storage().flush()
        };
        if let Err(e) = done {
            self.rollback(id)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs `f`; on error restores the stored state, on success persists it.
    fn atomically<T>(
        &mut self,
        id: &ConversationId,
        f: impl FnOnce(&mut Self) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        match f(self) {
            Ok(v) => {
                self.persist(id)?;
                Ok(v)
            }
            Err(e) => {
                self.rollback(id)?;
                Err(e)
            }
        }
    }

    // ---- joining ------------------------------------------------------------------------------

    /// Joins a conversation from a [`WelcomeBundle`] received in this device's inbox. Every
    /// member's certificate chain is checked; a broken one refuses the whole Welcome.
    pub fn join(&mut self, bundle: &[u8], now_ms: u64) -> Result<ConversationId, MlsError> {
        self.exclusive(|s| s.join_now(bundle, now_ms))
    }

    fn join_now(&mut self, bundle: &[u8], now_ms: u64) -> Result<ConversationId, MlsError> {
        let b = WelcomeBundle::decode(bundle)?;
        if self.conversations.contains_key(&b.conversation) {
            return Err(MlsError::Rejected("already a member of this conversation".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(&b.welcome)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(MlsError::Malformed("not a Welcome message".into()));
        };
        let tree_bytes = b.open_tree(&self.provider)?;
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(&tree_bytes)
            .map_err(|e| MlsError::Malformed(format!("ratchet tree: {e}")))?;
        let result = (|| {
            let staged = StagedWelcome::build_from_welcome(&self.provider, &self.join_config(), welcome)
                .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?
                .with_ratchet_tree(tree)
                .skip_lifetime_validation()
                .build()
                .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
            if staged.group_context().group_id().as_slice() != b.conversation.0 {
                return Err(MlsError::Rejected("welcome is for another conversation".into()));
            }
            for m in staged.members() {
                verify_credential(&m.credential, &m.signature_key)?;
            }
            let group =
                staged.into_group(&self.provider).map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
            let meta =
                Meta { applied: b.applied, last_update_ms: now_ms, needs_update: true, pending_commit: None };
            self.provider.storage().raw_put(Meta::key(&b.conversation), meta.encode());
            self.provider.storage().flush()?;
            Ok((group, meta))
        })();
        match result {
            Ok((group, meta)) => {
                self.conversations.insert(b.conversation, Conversation::new(group, meta));
                Ok(b.conversation)
            }
            Err(e) => {
                self.provider.storage().discard();
                Err(e)
            }
        }
    }

    // ---- handshakes -----------------------------------------------------------------------------

    /// Fetches and applies every sequenced handshake message not applied yet, in order, then
    /// retries buffered application messages.
    pub fn sync(
        &mut self,
        id: &ConversationId,
        sequencer: &dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Vec<Event>, MlsError> {
        let mut events = Vec::new();
        self.catch_up(id, sequencer, now_ms, &mut events)?;
        self.retry_future(id, &mut events)?;
        Ok(events)
    }

    fn catch_up(
        &mut self,
        id: &ConversationId,
        sequencer: &dyn CommitSequencer,
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), MlsError> {
        let topic = id.topic();
        loop {
            let from = self.conv(id)?.meta.applied;
            let page = sequencer.fetch(&topic, from, self.config.fetch_page.max(1))?;
            if page.is_empty() {
                return Ok(());
            }
            for m in page {
                let expected = self.conv(id)?.meta.applied;
                if m.seq != expected {
                    return Err(MlsError::Rejected(format!(
                        "sequencer returned handshake {} where {expected} was expected",
                        m.seq
                    )));
                }
                self.apply_sequenced(id, m.seq, &m.payload, now_ms, events)?;
            }
        }
    }

    /// Applies one sequenced handshake message; an invalid one is skipped (and counted).
    fn apply_sequenced(
        &mut self,
        id: &ConversationId,
        seq: u64,
        payload: &[u8],
        now_ms: u64,
        events: &mut Vec<Event>,
    ) -> Result<(), MlsError> {
        // Our own commit, accepted by the sequencer before we could merge it (e.g. a crash).
        let own = self.conv(id)?.meta.pending_commit.as_deref() == Some(payload);
        if own {
            let provider = &self.provider;
            let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            snapshot_epoch(provider, id, c, self.config.past_epochs_max)?;
            c.group.merge_pending_commit(provider).map_err(|e| op_err("merge own commit")(e.to_string()))?;
            c.meta.pending_commit = None;
            c.meta.applied = seq + 1;
            events.push(Event::Commit {
                seq,
                epoch: c.group.epoch().as_u64(),
                added: Vec::new(),
                removed: Vec::new(),
            });
            return self.persist(id);
        }
        if self.conv(id)?.meta.pending_commit.is_some() || self.conv(id)?.group.pending_commit().is_some() {
            // Our pending commit lost the race: drop it (its author rebuilds it).
            let storage = self.provider.storage();
            let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            c.group.clear_pending_commit(storage)?;
            c.meta.pending_commit = None;
            self.persist(id)?;
        }
        match self.process_handshake(id, seq, payload, now_ms) {
            Ok(mut evs) => {
                self.conv_mut(id)?.meta.applied = seq + 1;
                self.persist(id)?;
                events.append(&mut evs);
                Ok(())
            }
            Err(MlsError::Storage(e)) => {
                self.rollback(id)?;
                Err(e.into())
            }
            Err(e) => {
                // Invalid for everyone alike: restore the state, count it as applied.
                self.rollback(id)?;
                self.conv_mut(id)?.meta.applied = seq + 1;
                self.persist(id)?;
                events.push(Event::Skipped { seq, reason: e.to_string() });
                Ok(())
            }
        }
    }

    fn process_handshake(
        &mut self,
        id: &ConversationId,
        seq: u64,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Vec<Event>, MlsError> {
        let msg = parse_message(payload)?;
        if !msg.is_handshake_message() {
            return Err(MlsError::Rejected("application message in the handshake order".into()));
        }
        let provider = &self.provider;
        let past_epochs_max = self.config.past_epochs_max;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let processed =
            c.group.process_message(provider, msg).map_err(|e| MlsError::Rejected(e.to_string()))?;
        let sender = cert_of(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                verify_commit_leaves(&staged)?;
                let added: Vec<DeviceCert> = staged
                    .add_proposals()
                    .filter_map(|a| cert_of(a.add_proposal().key_package().leaf_node().credential()))
                    .collect();
                let removed_idx: Vec<LeafNodeIndex> =
                    staged.remove_proposals().map(|r| r.remove_proposal().removed()).collect();
                let removed: Vec<DeviceCert> = removed_idx
                    .iter()
                    .filter_map(|i| c.group.member_at(*i).and_then(|m| cert_of(&m.credential)))
                    .collect();
                let own = c.group.own_leaf_index();
                let self_removed = staged.self_removed();
                snapshot_epoch(provider, id, c, past_epochs_max)?;
                c.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| op_err("merge commit")(e.to_string()))?;
                if self_removed {
                    return Ok(vec![Event::RemovedSelf { seq }]);
                }
                // Keep the tree full: the sibling of a removed leaf refills the blanked path.
                if removed_idx.iter().any(|r| r.u32() ^ 1 == own.u32()) {
                    c.meta.needs_update = true;
                }
                let _ = now_ms;
                Ok(vec![Event::Commit { seq, epoch: c.group.epoch().as_u64(), added, removed }])
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let Proposal::Remove(r) = p.proposal() else {
                    return Err(MlsError::Rejected("only leave proposals are accepted".into()));
                };
                let leaving = c.group.member_at(r.removed()).and_then(|m| cert_of(&m.credential));
                if leaving.is_none() || leaving.map(|l| l.device) != sender.map(|s| s.device) {
                    return Err(MlsError::Rejected("a member may only propose its own removal".into()));
                }
                c.group.store_pending_proposal(provider.storage(), *p)?;
                Ok(vec![Event::LeaveProposed { seq, device: leaving }])
            }
            ProcessedMessageContent::OwnPrivateMessage => {
                Err(MlsError::Rejected("own handshake message with no matching pending commit".into()))
            }
            _ => Err(MlsError::Rejected("unexpected handshake content".into())),
        }
    }

    /// Builds `change` on the current local state without sequencing it (no fetch). Returns
    /// `None` if there is nothing to do (e.g. the member to remove is already gone). The pending
    /// commit is stored durably before it can be submitted.
    pub fn stage(&mut self, id: &ConversationId, change: Change) -> Result<Option<StagedChange>, MlsError> {
        self.exclusive(|s| s.stage_now(id, change))
    }

    fn stage_now(&mut self, id: &ConversationId, change: Change) -> Result<Option<StagedChange>, MlsError> {
        let built = self.atomically(id, |s| s.build(id, &change))?;
        Ok(built.map(|built| StagedChange { conversation: *id, change, built }))
    }

    fn build(&mut self, id: &ConversationId, change: &Change) -> Result<Option<Built>, MlsError> {
        let provider = &self.provider;
        let signer = &self.signer;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let after = c.meta.applied;
        // Decoding every member's certificate is O(N): only adds and removals need it.
        let certs_of = |g: &MlsGroup| -> Vec<(LeafNodeIndex, DeviceCert)> {
            g.members().filter_map(|m| cert_of(&m.credential).map(|cert| (m.index, cert))).collect()
        };
        let (commit, welcome) = match change {
            Change::Add(kps) => {
                let certs = certs_of(&c.group);
                let fresh: Vec<&VerifiedKeyPackage> =
                    kps.iter().filter(|k| !certs.iter().any(|(_, c)| c.device == k.cert.device)).collect();
                if fresh.is_empty() {
                    return Ok(None);
                }
                let packages: Vec<KeyPackage> = fresh.iter().map(|k| k.package.clone()).collect();
                let (commit, welcome, _) = c
                    .group
                    .add_members_without_update(provider, signer, &packages)
                    .map_err(|e| op_err("add members")(e.to_string()))?;
                let recipients = fresh.iter().map(|k| (k.cert.device, inbox_topic(&k.cert.device))).collect();
                (commit, Some((welcome, recipients, packages)))
            }
            Change::RemoveAccount(_) | Change::RemoveDevice(_) => {
                let targets: Vec<LeafNodeIndex> = certs_of(&c.group)
                    .iter()
                    .filter(|(_, cert)| match change {
                        Change::RemoveAccount(a) => cert.account == *a,
                        Change::RemoveDevice(d) => cert.device == *d,
                        _ => false,
                    })
                    .map(|(i, _)| *i)
                    .collect();
                if targets.is_empty() {
                    return Ok(None);
                }
                if targets.contains(&c.group.own_leaf_index()) {
                    return Err(MlsError::Rejected("use leave to remove this device".into()));
                }
                let (commit, _, _) = c
                    .group
                    .remove_members(provider, signer, &targets)
                    .map_err(|e| op_err("remove members")(e.to_string()))?;
                (commit, None)
            }
            Change::SelfUpdate => {
                let bundle = c
                    .group
                    .self_update(provider, signer, LeafNodeParameters::default())
                    .map_err(|e| op_err("self update")(e.to_string()))?;
                (bundle.into_commit(), None)
            }
            Change::CommitPending => {
                if !c.group.has_pending_proposals() {
                    return Ok(None);
                }
                let (commit, _, _) = c
                    .group
                    .commit_to_pending_proposals(provider, signer)
                    .map_err(|e| op_err("commit pending proposals")(e.to_string()))?;
                (commit, None)
            }
        };
        let commit = to_bytes(&commit)?;
        // The bundle (with the new epoch's ratchet tree) is made once the commit is merged.
        let welcome = match welcome {
            Some((w, recipients, packages)) => {
                Some((WelcomeOut { recipients, bytes: to_bytes(&w)? }, packages))
            }
            None => None,
        };
        c.meta.pending_commit = Some(commit.clone());
        Ok(Some(Built { commit, welcome, after }))
    }

    /// Submits a staged change. If the sequencer says it is stale, the pending commit is
    /// dropped, the conversation caught up, the change rebuilt on the new state and resubmitted
    /// (at most [`Config::rebuild_attempts_max`] times). `Ok(None)`: nothing was left to do.
    pub fn submit(
        &mut self,
        staged: StagedChange,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.exclusive(|s| s.submit_now(staged, sequencer, now_ms))
    }

    fn submit_now(
        &mut self,
        staged: StagedChange,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        let id = staged.conversation;
        let topic = id.topic();
        let mut built = staged.built;
        for _ in 0..self.config.rebuild_attempts_max.max(1) {
            let len = built.commit.len();
            match sequencer.submit(topic, built.after, built.commit.clone()) {
                Ok(seq) => {
                    let outcome = self.atomically(&id, |s| {
                        let provider = &s.provider;
                        let c = s.conversations.get_mut(&id).ok_or(MlsError::UnknownConversation)?;
                        snapshot_epoch(provider, &id, c, s.config.past_epochs_max)?;
                        c.group
                            .merge_pending_commit(provider)
                            .map_err(|e| op_err("merge commit")(e.to_string()))?;
                        c.meta.pending_commit = None;
                        c.meta.applied = seq + 1;
                        if matches!(staged.change, Change::SelfUpdate) {
                            c.meta.last_update_ms = now_ms;
                            c.meta.needs_update = false;
                        }
                        let welcome = match built.welcome.take() {
                            Some((w, packages)) => {
                                let tree = c
                                    .group
                                    .export_ratchet_tree()
                                    .tls_serialize_detached()
                                    .map_err(|e| op_err("export ratchet tree")(e.to_string()))?;
                                let bundle =
                                    WelcomeBundle::seal(provider, id, seq + 1, w.bytes, &tree, &packages)?;
                                Some(WelcomeOut { recipients: w.recipients, bytes: bundle.encode() })
                            }
                            None => None,
                        };
                        Ok(CommitOutcome { seq, epoch: c.group.epoch().as_u64(), commit_bytes: len, welcome })
                    })?;
                    return Ok(Some(outcome));
                }
                Err(SequencerError::Stale { .. }) => {
                    self.drop_pending(&id)?;
                    let mut events = Vec::new();
                    self.catch_up(&id, sequencer, now_ms, &mut events)?;
                    match self.atomically(&id, |s| s.build(&id, &staged.change))? {
                        Some(b) => built = b,
                        None => return Ok(None),
                    }
                }
                Err(e) => {
                    self.drop_pending(&id)?;
                    return Err(e.into());
                }
            }
        }
        self.drop_pending(&id)?;
        Err(MlsError::TooManyRebuilds { attempts: self.config.rebuild_attempts_max.max(1) })
    }

    fn drop_pending(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.atomically(id, |s| {
            let storage = s.provider.storage();
            let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            c.group.clear_pending_commit(storage)?;
            c.group.clear_pending_proposals(storage)?;
            c.meta.pending_commit = None;
            Ok(())
        })
    }

    /// Catches up, builds `change`, sequences it (rebuilding while stale) and applies it.
    pub fn commit(
        &mut self,
        id: &ConversationId,
        change: Change,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.exclusive(|s| s.commit_now(id, change, sequencer, now_ms))
    }

    fn commit_now(
        &mut self,
        id: &ConversationId,
        change: Change,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        let mut events = Vec::new();
        self.catch_up(id, sequencer, now_ms, &mut events)?;
        match self.stage(id, change)? {
            Some(staged) => self.submit(staged, sequencer, now_ms),
            None => Ok(None),
        }
    }

    /// Adds devices (verified key packages; one leaf each). Returns the Welcome to deliver.
    pub fn add(
        &mut self,
        id: &ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::Add(packages), sequencer, now_ms)
    }

    /// Adds any number of devices in as many sequenced commits as
    /// [`Config::adds_per_commit_max`] requires (e.g. creating a large group); one Welcome per
    /// commit. Stops at the first error.
    pub fn add_many(
        &mut self,
        id: &ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Vec<CommitOutcome>, MlsError> {
        let mut out = Vec::new();
        // Chunks still to add, in order (a stack, last chunk at the bottom).
        let mut todo: Vec<Vec<VerifiedKeyPackage>> =
            packages.chunks(self.config.adds_per_commit_max.max(1)).rev().map(<[_]>::to_vec).collect();
        while let Some(chunk) = todo.pop() {
            match self.add(id, chunk.clone(), sequencer, now_ms) {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                // Too large for the sequencer: split the chunk in two and go on.
                Err(MlsError::Sequencer(SequencerError::TooLarge { .. })) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b.to_vec());
                    todo.push(a.to_vec());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes every device of `account`.
    pub fn remove_account(
        &mut self,
        id: &ConversationId,
        account: AccountId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::RemoveAccount(account), sequencer, now_ms)
    }

    /// Rotates this device's keys in the conversation (on demand or when
    /// [`Client::due_for_update`]).
    pub fn self_update(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::SelfUpdate, sequencer, now_ms)
    }

    /// Commits waiting proposals (e.g. after [`Event::LeaveProposed`]).
    pub fn commit_pending(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::CommitPending, sequencer, now_ms)
    }

    /// Proposes this device's removal (MLS leave); another member commits it. Returns the
    /// proposal's sequence number.
    pub fn leave(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<u64, MlsError> {
        self.exclusive(|s| s.leave_now(id, sequencer, now_ms))
    }

    fn leave_now(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<u64, MlsError> {
        let topic = id.topic();
        for _ in 0..self.config.rebuild_attempts_max.max(1) {
            let mut events = Vec::new();
            self.catch_up(id, sequencer, now_ms, &mut events)?;
            let (after, proposal) = self.atomically(id, |s| {
                let provider = &s.provider;
                let signer = &s.signer;
                let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
                let p = c.group.leave_group(provider, signer).map_err(|e| op_err("leave")(e.to_string()))?;
                Ok((c.meta.applied, to_bytes(&p)?))
            })?;
            match sequencer.submit(topic, after, proposal) {
                Ok(seq) => {
                    self.atomically(id, |s| {
                        s.conv_mut(id)?.meta.applied = seq + 1;
                        Ok(())
                    })?;
                    return Ok(seq);
                }
                Err(SequencerError::Stale { .. }) => self.drop_pending(id)?,
                Err(e) => {
                    self.drop_pending(id)?;
                    return Err(e.into());
                }
            }
        }
        Err(MlsError::TooManyRebuilds { attempts: self.config.rebuild_attempts_max.max(1) })
    }

    // ---- multi-device ---------------------------------------------------------------------------

    /// Adds a new device of this device's account to every conversation the account is in,
    /// taking one key package of it from `pool` per conversation.
    pub fn add_device_everywhere(
        &mut self,
        device: &DeviceId,
        pool: &mut KeyPackagePool,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Vec<(ConversationId, Result<Option<CommitOutcome>, MlsError>)> {
        let mut out = Vec::new();
        for id in self.conversations() {
            if !self.is_active(&id).unwrap_or(false) {
                continue;
            }
            let r = match pool.take(device) {
                Some(kp) if kp.cert.account == self.signer.account() => {
                    self.add(&id, vec![kp], sequencer, now_ms)
                }
                Some(_) => Err(MlsError::Rejected("the device belongs to another account".into())),
                None => Err(MlsError::Rejected("no key package left for the device".into())),
            };
            out.push((id, r));
        }
        out
    }

    /// Removes a (revoked) device from every conversation it is in.
    pub fn revoke_device_everywhere(
        &mut self,
        device: &DeviceId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Vec<(ConversationId, Result<Option<CommitOutcome>, MlsError>)> {
        let mut out = Vec::new();
        for id in self.conversations() {
            if !self.is_active(&id).unwrap_or(false) {
                continue;
            }
            out.push((id, self.commit(&id, Change::RemoveDevice(*device), sequencer, now_ms)));
        }
        out
    }

    // ---- application messages --------------------------------------------------------------------

    /// Encrypts an application message for the conversation's current epoch. `aad` (at most
    /// [`AAD_BYTES_MAX`] bytes) travels in clear in the MLS PrivateMessage's
    /// `authenticated_data`, bound to the ciphertext and the sender's signature; receivers
    /// pass the bytes they expect to [`Client::receive`].
    pub fn send(&mut self, id: &ConversationId, body: &[u8], aad: &[u8]) -> Result<Vec<u8>, MlsError> {
        let mut out = self.send_many(id, &[(body, aad)])?;
        out.pop().ok_or(MlsError::Operation { op: "send", reason: "no output".into() })
    }

    /// Encrypts several `(body, aad)` messages (see [`Client::send`]) with one durable write.
    pub fn send_many(
        &mut self,
        id: &ConversationId,
        messages: &[(&[u8], &[u8])],
    ) -> Result<Vec<Vec<u8>>, MlsError> {
        for (_, aad) in messages {
            check_aad(aad)?;
        }
        self.atomically(id, |s| {
            let provider = &s.provider;
            let signer = &s.signer;
            let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            if !c.group.is_active() {
                return Err(MlsError::NotMember);
            }
            if c.group.has_pending_proposals() {
                return Err(MlsError::PendingProposals);
            }
            // OpenMLS rewrites the whole secret tree after every message; only the state after
            // the last one is encoded (settled in `persist`, same transaction).
            provider.storage().set_defer(true);
            let mut out = Vec::with_capacity(messages.len());
            for (body, aad) in messages {
                // Consumed by the next message only (OpenMLS resets it after each).
                c.group.set_aad(aad.to_vec());
                let m = c
                    .group
                    .create_message(provider, signer, body)
                    .map_err(|e| op_err("encrypt")(e.to_string()))?;
                out.push(to_bytes(&m)?);
            }
            Ok(out)
        })
    }

    /// Decrypts a received application message (see [`Received`]). Its clear authenticated
    /// data must equal `expected_aad` (at most [`AAD_BYTES_MAX`] bytes), compared before any
    /// decryption: a mismatch is [`Dropped::AadMismatch`] and consumes no key. Malformed,
    /// altered, foreign or non-member messages are errors and change nothing.
    pub fn receive(
        &mut self,
        id: &ConversationId,
        bytes: &[u8],
        expected_aad: &[u8],
    ) -> Result<Received, MlsError> {
        let mut out = self.receive_many(id, &[(bytes, expected_aad)]);
        out.pop().unwrap_or_else(|| Err(MlsError::Operation { op: "receive", reason: "no output".into() }))
    }

    /// Decrypts several `(ciphertext, expected aad)` messages (see [`Client::receive`]),
    /// persisting once at the end; one result per input. If any message fails, the batch is
    /// undone and replayed one message at a time, so a bad message never leaves a trace in the
    /// stored state.
    pub fn receive_many(
        &mut self,
        id: &ConversationId,
        messages: &[(&[u8], &[u8])],
    ) -> Vec<Result<Received, MlsError>> {
        let Ok(mark) = self.conv(id).map(|c| c.future.len()) else {
            return messages.iter().map(|_| Err(MlsError::UnknownConversation)).collect();
        };
        // Only the secret tree's state after the batch is encoded (settled in `persist`).
        self.provider.storage().set_defer(true);
        let out: Vec<Result<Received, MlsError>> =
            messages.iter().map(|(m, aad)| self.receive_one(id, m, aad)).collect();
        self.provider.storage().set_defer(false);
        if out.iter().all(|r| !Self::failed(r)) {
            return match self.persist(id) {
                Ok(()) => out,
                Err(e) => messages
                    .iter()
                    .map(|_| Err(MlsError::Operation { op: "persist", reason: e.to_string() }))
                    .collect(),
            };
        }
        // Slow path: undo the batch, then one message per transaction.
        if let Err(e) = self.rollback(id) {
            return messages
                .iter()
                .map(|_| Err(MlsError::Operation { op: "rollback", reason: e.to_string() }))
                .collect();
        }
        if let Ok(c) = self.conv_mut(id) {
            c.future.truncate(mark);
        }
        messages
            .iter()
            .map(|(m, aad)| {
                let r = self.receive_one(id, m, aad);
                let settled = if Self::failed(&r) { self.rollback(id) } else { self.persist(id) };
                match settled {
                    Ok(()) => r,
                    Err(e) => Err(e),
                }
            })
            .collect()
    }

    fn failed(r: &Result<Received, MlsError>) -> bool {
        matches!(r, Err(_) | Ok(Received::Dropped(Dropped::Duplicate | Dropped::TooOld)))
    }

    fn receive_one(
        &mut self,
        id: &ConversationId,
        bytes: &[u8],
        expected_aad: &[u8],
    ) -> Result<Received, MlsError> {
        check_aad(expected_aad)?;
        if bytes.len() > APPLICATION_BYTES_MAX {
            return Err(MlsError::Malformed(format!("{} bytes is over the limit", bytes.len())));
        }
        let msg = parse_message(bytes)?;
        let provider = &self.provider;
        let past_max = self.config.past_epochs_max as u64;
        let future_max = self.config.future_messages_max;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if msg.is_handshake_message() {
            return Err(MlsError::Rejected("handshake messages are applied from the sequencer only".into()));
        }
        if msg.group_id().as_slice() != id.0 {
            return Err(MlsError::Rejected("message is for another conversation".into()));
        }
        let ProtocolMessage::PrivateMessage(private) = &msg else {
            return Err(MlsError::Rejected("application messages travel encrypted".into()));
        };
        if private.aad() != expected_aad {
            return Ok(Received::Dropped(Dropped::AadMismatch));
        }
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let epoch = msg.epoch().as_u64();
        let current = c.group.epoch().as_u64();
        if epoch > current {
            if c.future.len() >= future_max {
                return Ok(Received::Dropped(Dropped::BufferFull));
            }
            c.future.push((bytes.to_vec(), expected_aad.to_vec()));
            return Ok(Received::Buffered);
        }
        if current - epoch > past_max {
            return Ok(Received::Dropped(Dropped::TooOld));
        }
        let result = if epoch < current {
            // A retained past epoch: its snapshot decrypts it (ratchet state kept there).
            let (g, p) = match c.past.entry(epoch) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let p = provider.scoped(past_prefix(id, epoch));
                    match MlsGroup::load(p.storage(), &GroupId::from_slice(&id.0))? {
                        Some(g) => v.insert((g, p)),
                        None => return Ok(Received::Dropped(Dropped::TooOld)),
                    }
                }
            };
            g.process_message(&*p, msg)
        } else {
            c.group.process_message(provider, msg)
        };
        match result {
            Ok(p) => {
                let sender = cert_of(p.credential());
                match p.into_content() {
                    ProcessedMessageContent::ApplicationMessage(a) => {
                        let sender =
                            sender.ok_or(MlsError::Rejected("sender has no device certificate".into()))?;
                        Ok(Received::Message(Delivered { sender, epoch, body: a.into_bytes() }))
                    }
                    ProcessedMessageContent::OwnPrivateMessage => Ok(Received::Dropped(Dropped::Own)),
                    _ => Err(MlsError::Rejected("not an application message".into())),
                }
            }
            Err(ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
                MessageDecryptionError::SecretTreeError(SecretTreeError::SecretReuseError),
            ))) => Ok(Received::Dropped(Dropped::Duplicate)),
            Err(ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
                MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInThePast),
            ))) => Ok(Received::Dropped(Dropped::TooOld)),
            Err(ProcessMessageError::StorageError(e)) => Err(e.into()),
            Err(e) => Err(MlsError::Rejected(e.to_string())),
        }
    }

    fn retry_future(&mut self, id: &ConversationId, events: &mut Vec<Event>) -> Result<(), MlsError> {
        let current = self.epoch(id)?;
        let c = self.conv_mut(id)?;
        if c.future.is_empty() {
            return Ok(());
        }
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut c.future)
            .into_iter()
            .partition(|(b, _)| parse_message(b).map(|m| m.epoch().as_u64() <= current).unwrap_or(true));
        c.future = later;
        let refs: Vec<(&[u8], &[u8])> = ready.iter().map(|(b, a)| (b.as_slice(), a.as_slice())).collect();
        for r in self.receive_many(id, &refs).into_iter().flatten() {
            events.push(Event::Message(r));
        }
        Ok(())
    }

    /// Raw OpenMLS group, for inspection and benchmarks.
    pub fn group(&self, id: &ConversationId) -> Result<&MlsGroup, MlsError> {
        Ok(&self.conv(id)?.group)
    }

    /// Forgets a conversation this device was removed from, deleting its state.
    pub fn forget(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.exclusive(|s| s.forget_now(id))
    }

    fn forget_now(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        let mut c = self.conversations.remove(id).ok_or(MlsError::UnknownConversation)?;
        prune_past(&self.provider, id, &mut c, u64::MAX)?;
        c.group.delete(self.provider.storage())?;
        self.provider.storage().raw_del(Meta::key(id));
        self.provider.storage().flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemorySequencer;
    use crate::storage::BLOB_PREFIX;
    use cairn_proto::ed25519::SigningKey;

    const NOW: u64 = 1_800_000_000_000;

    fn blobs(c: &Client) -> usize {
        c.provider.storage().raw_scan(BLOB_PREFIX).unwrap().len()
    }

    #[test]
    fn tree_blobs_are_shared_by_snapshots_and_freed_with_them() {
        let key = |_| SigningKey::from_bytes(&cairn_crypto::keystore::random_bytes::<32>().unwrap());
        let (account, device) = (key(0), key(1));
        let cert = DeviceCert::issue(&account, cairn_proto::DeviceId(device.verifying_key().to_bytes()), NOW);
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("a.redb")).unwrap();
        let mut a =
            Client::open(Arc::new(db), DeviceSigner::new(device, cert).unwrap(), Config::default()).unwrap();
        let mut seq = MemorySequencer::new();
        let id = a.create(NOW).unwrap();
        assert_eq!(blobs(&a), 1);
        for _ in 0..6 {
            a.self_update(&id, &mut seq, NOW).unwrap().unwrap();
            // The live tree plus one per retained past epoch, never more.
            assert!(blobs(&a) <= 1 + a.config().past_epochs_max, "{} blobs", blobs(&a));
        }
        assert_eq!(blobs(&a), 1 + a.config().past_epochs_max);
        a.forget(&id).unwrap();
        assert_eq!(blobs(&a), 0);
    }
}
