//! A device's MLS client: its conversations, their sequenced handshakes and messages.
//!
//! Everything here is synchronous and transport-free: the caller passes the time, a
//! [`CommitSequencer`](cairn_proto::sequencer::CommitSequencer), and bytes it received; the client returns bytes to send. Each public
//! operation either completes and commits its whole effect (MLS state and Cairn's per-conversation
//! metadata) in one redb transaction, or fails, leaving the stored state as it was — or, with
//! deferred durability ([`Client::set_deferred`]), in the caller's transaction.
//!
//! - `config`: [`Config`], the tunables.
//! - `error`: [`MlsError`].
//! - `state`: per-conversation metadata and past-epoch snapshots.
//! - `durability`: persist / roll back an operation; deferred writes in the caller's transaction.
//! - `keypackages`: this device's key packages.
//! - `welcome`: [`WelcomeBundle`] (sealed tree) and joining.
//! - `commit`: stage → submit → sequenced → merged, and `sync`.
//! - `pending`: this device's own pending commit, kept until the order proves its slot.
//! - `members`: add, remove, leave, self-update, devices.
//! - `buffer`: the bounded future-epoch buffer.
//! - `messages`: application messages, future-epoch buffer, past epochs.

mod authority;
mod buffer;
mod commit;
mod config;
mod durability;
mod error;
mod keypackages;
mod leave;
mod members;
mod messages;
mod pending;
mod state;
mod welcome;

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_proto::{AccountId, DecodeError, DeviceCert, DeviceId, Topic};
use openmls::prelude::{
    Capabilities, GroupId, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageIn, MlsMessageOut,
    ProtocolMessage, SenderRatchetConfiguration,
};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::random::OpenMlsRand as _;
use tls_codec::{DeserializeBytes as _, Serialize as _};

use crate::CIPHERSUITE;
use crate::credential::{DeviceSigner, cert_of};
use crate::storage::{CairnProvider, DatabaseHandle};

pub use commit::{Change, CommitOutcome, Event, StagedChange, WelcomeOut};
pub use config::Config;
pub use error::MlsError;
pub use messages::{AAD_BYTES_MAX, APPLICATION_BYTES_MAX, Delivered, Dropped, Received};
pub use welcome::{
    RATCHET_TREE_BYTES_MAX, SealedTreeKey, WELCOME_BUNDLE_VERSION, WELCOME_BYTES_MAX, WELCOME_RECIPIENTS_MAX,
    WelcomeBundle, WelcomeInfo,
};

use state::{Conversation, META_PREFIX, Meta};

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
    /// Judges handshakes under the conversation's pinned policy (see [`crate::policy_ext`]).
    policy_gate: Arc<crate::policy_ext::PolicyGate>,
    /// Epochs entered by merging a commit, with the policy pinned in each, until the caller
    /// takes them ([`Client::take_epochs_entered`]); at most [`EPOCHS_ENTERED_MAX`], the
    /// oldest dropped beyond (a caller that never takes them loses the oldest).
    epochs_entered: std::collections::VecDeque<EpochEntered>,
}

/// Epochs entered kept until taken, at most.
pub const EPOCHS_ENTERED_MAX: usize = 4096;

/// A conversation entered an epoch by a merged commit; the policy pinned in it.
pub type EpochEntered = (ConversationId, u64, Option<cairn_contracts::policy::PolicyPin>);

/// Notes that `group` (of `id`) entered its current epoch.
fn note_epoch(log: &mut std::collections::VecDeque<EpochEntered>, id: &ConversationId, group: &MlsGroup) {
    if log.len() >= EPOCHS_ENTERED_MAX {
        log.pop_front();
    }
    log.push_back((*id, group.epoch().as_u64(), crate::policy_ext::pinned(group).ok().flatten()));
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

impl Client {
    /// Opens the client of `signer`'s device over `db`, loading its conversations.
    pub fn open(db: Arc<dyn DatabaseHandle>, signer: DeviceSigner, config: Config) -> Result<Self, MlsError> {
        // The state is sealed at rest under a key only this device's key derives.
        let provider = CairnProvider::sealed(db, crate::storage::Sealer::new(&signer.storage_secret()));
        Self::with_provider(provider, signer, config)
    }

    /// Opens the client like [`Client::open`], but stores the MLS state **in clear** (not
    /// sealed at rest): for simulations and tests whose subject is not encryption at rest
    /// (the node's deterministic simulation spends a sixth of its time sealing otherwise).
    /// Transactions, deferred durability and crash behaviour are those of [`Client::open`];
    /// only the bytes in the `cairn_mls` table differ. A node never opens its state this way,
    /// and a database written by one cannot be opened by the other.
    pub fn open_unsealed_for_tests(
        db: Arc<dyn DatabaseHandle>,
        signer: DeviceSigner,
        config: Config,
    ) -> Result<Self, MlsError> {
        Self::with_provider(CairnProvider::new(db), signer, config)
    }

    /// Loads the conversations stored through `provider`.
    fn with_provider(
        provider: CairnProvider,
        signer: DeviceSigner,
        config: Config,
    ) -> Result<Self, MlsError> {
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
            policy_gate: Arc::new(crate::policy_ext::PolicyGate::shipped()),
            epochs_entered: std::collections::VecDeque::new(),
        })
    }

    /// The policy pinned in a conversation's group context at its current epoch, if any.
    pub fn policy(
        &self,
        id: &ConversationId,
    ) -> Result<Option<cairn_contracts::policy::PolicyPin>, MlsError> {
        crate::policy_ext::pinned(&self.conv(id)?.group)
    }

    /// The epochs entered by merged commits since the last call (whatever path merged them:
    /// a sync, or the catch-up inside an own commit), oldest first, with each epoch's pin.
    pub fn take_epochs_entered(&mut self) -> Vec<EpochEntered> {
        self.epochs_entered.drain(..).collect()
    }

    /// Runs `hook` inside every durable transaction the MLS state commits on its own (see
    /// [`crate::storage::MlsStorage::set_before_durable`]).
    pub fn set_before_durable(&self, hook: crate::storage::DurableHook) {
        self.provider.storage().set_before_durable(hook);
    }

    /// The conversation's anchor salt (see [`crate::anchor_salt`]); `None` for a group created
    /// before salts existed.
    pub fn anchor_salt(
        &self,
        id: &ConversationId,
    ) -> Result<Option<[u8; crate::anchor_salt::ANCHOR_SALT_BYTES]>, MlsError> {
        crate::anchor_salt::salt_of(&self.conv(id)?.group)
    }

    /// Replaces the gate that judges handshakes (tests: [`crate::policy_ext::PolicyGate::disabled`]
    /// plays a modified client).
    pub fn set_policy_gate(&mut self, gate: Arc<crate::policy_ext::PolicyGate>) {
        self.policy_gate = gate;
    }

    /// The gate that runs pinned policies (its runtime and known policy code).
    pub fn policy_gate(&self) -> &Arc<crate::policy_ext::PolicyGate> {
        &self.policy_gate
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
        crate::keypackage::leaf_capabilities()
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

    fn create_config(
        &self,
        salt: [u8; crate::anchor_salt::ANCHOR_SALT_BYTES],
    ) -> Result<MlsGroupCreateConfig, MlsError> {
        Ok(MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .with_group_context_extensions(crate::anchor_salt::creation_extensions(salt)?)
            .use_ratchet_tree_extension(false)
            .padding_size(self.config.padding)
            .sender_ratchet_configuration(SenderRatchetConfiguration::new(
                self.config.out_of_order_tolerance,
                self.config.maximum_forward_distance,
            ))
            .capabilities(Self::capabilities())
            .build())
    }

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
        let salt = self
            .provider
            .rand()
            .random_array()
            .map_err(|e| MlsError::Operation { op: "random anchor salt", reason: format!("{e:?}") })?;
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &self.create_config(salt)?,
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
        let meta = Meta {
            applied: 0,
            last_update_ms: now_ms,
            needs_update: false,
            pending_commit: None,
            pending_leave: None,
        };
        self.provider.storage().raw_put(Meta::key(&id), meta.encode());
        if let Err(e) = self.provider.storage().flush() {
            self.provider.storage().discard();
            return Err(e.into());
        }
        self.conversations.insert(id, Conversation::new(group, meta));
        Ok(id)
    }

    /// Future-epoch application messages held for a conversation (see [`Config`]'s bounds).
    pub fn buffered(&self, id: &ConversationId) -> Result<usize, MlsError> {
        Ok(self.conv(id)?.future.len())
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
        // A device leaving commits nothing (its own removal proposal would be in the commit).
        let leaving = c.meta.pending_leave.is_some() || leave::is_leaving(c);
        Ok(c.group.is_active()
            && !leaving
            && (c.meta.needs_update
                || now_ms.saturating_sub(c.meta.last_update_ms) >= self.config.update_interval_ms))
    }

    /// Conversations where this device's leave proposal waits for its slot in the order.
    pub fn conversations_leaving(&self) -> Vec<ConversationId> {
        self.conversations.iter().filter(|(_, c)| c.meta.pending_leave.is_some()).map(|(id, _)| *id).collect()
    }

    /// Conversations where [`Client::due_for_update`] holds.
    pub fn conversations_due(&self, now_ms: u64) -> Vec<ConversationId> {
        self.conversations
            .keys()
            .filter(|id| self.due_for_update(id, now_ms).unwrap_or(false))
            .copied()
            .collect()
    }

    /// Whether this device has a handshake of `id` (a commit, or its leave proposal) waiting
    /// for the sequencer's order to show what holds its slot (see [`Client::retry_pending`]).
    /// No other change of `id` is built meanwhile.
    pub fn has_pending_commit(&self, id: &ConversationId) -> bool {
        self.conv(id).is_ok_and(|c| c.meta.pending_commit.is_some() || c.meta.pending_leave.is_some())
    }

    /// An MLS exporter secret of the conversation's current epoch (RFC 9420 §8.5): `len` bytes
    /// (≤ 64) for `label` and `context`, known to the epoch's members only. Returns the epoch
    /// it belongs to.
    pub fn exporter(
        &self,
        id: &ConversationId,
        label: &str,
        context: &[u8],
        len: usize,
    ) -> Result<(u64, Vec<u8>), MlsError> {
        if len > 64 {
            return Err(MlsError::Rejected(format!("exporter length {len} is over 64 bytes")));
        }
        let group = &self.conv(id)?.group;
        let secret = group
            .export_secret(self.provider.crypto(), label, context, len)
            .map_err(|e| MlsError::Rejected(format!("exporter: {e}")))?;
        Ok((group.epoch().as_u64(), secret))
    }

    /// Raw OpenMLS group, for inspection and benchmarks.
    pub fn group(&self, id: &ConversationId) -> Result<&MlsGroup, MlsError> {
        Ok(&self.conv(id)?.group)
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
