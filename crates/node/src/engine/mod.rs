//! The synchronous part of a user node: the decision [`Core`] plus what must change in the
//! same transaction as its decisions: the MLS state and the node's tables (`node.redb`).
//!
//! The engine is driven by calls (an envelope batch arrived, send this text, time passed)
//! and never does network or ledger I/O itself, except through the [`CommitSequencer`] it is
//! handed for MLS commits. What the outside world must do is queued as [`Io`] for the shell
//! (`shell.rs` in production, `tests/sim.rs` in the simulation) to take with
//! [`Engine::take_io`]. It reads no clock: every call gets `now_ms`.
//!
//! Invariant: an envelope this device sent or read is in `node.redb` (plaintext, MLS ratchet
//! state and, for its own, the outbox) in one transaction before anything about it leaves.

mod erase;
mod invites;
mod members;
mod policy;
mod policy_run;
pub mod policy_store;
mod receipts;
mod receive;
mod replay;
mod send;
mod work_price;

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_mls::{Client as MlsClient, ConversationId, MlsError};
use cairn_proto::pow::Difficulty;
use cairn_proto::{AccountId, DeviceCert, DeviceId, Envelope, Id, Limits, Message, Topic};
use cairn_store::Store;
use ed25519_dalek::SigningKey;

use crate::core::{Core, CoreConfig, Effect, Input};
use crate::db::NodeDb;
use crate::error::NodeError;
use crate::model::{DeliveryView, MessageView, StreamEvent};

pub use self::erase::{KIND_REDACT, Redaction, RedactionFate};
pub use self::invites::{Invitations, WelcomeFate};
pub use self::members::Commit;
pub use self::policy_run::{decorate as policy_decorate_view, held as policy_held};
pub use self::receipts::receipt_topic;
pub use self::receive::Arrival;
pub use self::replay::{CURSOR_SCAN_MAX, REPLAY_IDS_PAGE, ReplayStats};
pub use self::send::{KIND_RECEIPT, KIND_TEXT, SEND_BATCH_MAX, TEXT_BYTES_MAX, header_aad};
pub use self::work_price::{WORK_BITS_MAX, WORK_PRICES_MAX};

/// The keys of this device.
#[derive(Clone)]
pub struct IdentityKeys {
    /// Account.
    pub account: AccountId,
    /// This device.
    pub device: DeviceId,
    /// Its certificate (signed by the account key).
    pub cert: DeviceCert,
    /// Account key (registration, devices, handles): only on the device that holds it; a
    /// device added with `cairn device add` has `None`.
    pub account_key: Option<SigningKey>,
    /// Device key (messages, MLS signatures, anchors).
    pub device_key: SigningKey,
}

impl IdentityKeys {
    /// The keys of an unlocked identity.
    pub fn of(id: &cairn_crypto::Identity) -> Self {
        Self {
            account: id.account(),
            device: id.device(),
            cert: id.cert,
            account_key: id.account_key.clone(),
            device_key: id.device_key.clone(),
        }
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Decoder limits.
    pub limits: Limits,
    /// Lifetime of message envelopes on store nodes, seconds.
    pub ttl_secs: u32,
    /// Proof-of-work difficulty of published envelopes.
    pub difficulty: Difficulty,
    /// Give up mining after this many attempts (a bound on the CPU one send may take).
    pub mine_attempts_max: u64,
    /// The decision core's limits.
    pub core: CoreConfig,
    /// Whose Welcomes join without the user's consent.
    pub invitations: Invitations,
    /// The keyring file sealing plaintexts at rest; `None`: keys derived from the device key
    /// (nothing can be shredded; in-process tests and benches).
    pub keyring: Option<std::path::PathBuf>,
}

impl EngineConfig {
    /// Defaults for these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ttl_secs: 7 * 24 * 3600,
            difficulty: Difficulty::default(),
            mine_attempts_max: 1 << 24,
            core: CoreConfig { parents_max: limits.parents_max, ..CoreConfig::default() },
            invitations: Invitations::Ask,
            keyring: None,
        }
    }
}

/// Past epochs whose keys a member keeps (MLS default 2). Scheduled self-updates after each
/// join move a group through epochs quickly, and a message delayed across more epochs than
/// this can never be read; 8 keeps a message readable across a burst of joins and updates
/// while bounding how long old keys live.
pub const PAST_EPOCHS_MAX: usize = 8;

/// Page cache of `node.redb` (MLS state and node tables), bytes (redb's default, 1 GiB, let
/// memory grow with the history).
pub const NODE_DB_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Acknowledged envelopes whose removal from the outbox may wait for the engine's next commit
/// (see `Engine::store_acks`). Overflow policy: at this many, they are removed at once in a
/// transaction of their own. A crash that loses a removal pushes the envelope once more (store
/// nodes answer "duplicate").
pub const OUTBOX_ACKED_PENDING_MAX: usize = 1_024;

/// Lazy (fsync-free) receive commits are made durable at least this often, ms: what a crash
/// can roll back (and read again from the local history) is at most this much.
pub const DURABLE_EVERY_MS: u64 = 2_000;
/// A leave proposal still pending (its API call answered at the deadline, a restart, the
/// commit worker gave up) is offered again this often, ms.
pub const LEAVE_AGAIN_MS: u64 = 5_000;

/// The MLS settings a user node runs with.
pub fn mls_config() -> cairn_mls::Config {
    cairn_mls::Config { past_epochs_max: PAST_EPOCHS_MAX, ..cairn_mls::Config::default() }
}

/// What the engine asks the shell to do.
#[derive(Debug, Clone)]
pub enum Io {
    /// Publish this envelope (already mined and recorded in the outbox).
    Publish(Box<Envelope>),
    /// Follow this topic (gossip and store nodes).
    Subscribe(Topic),
    /// Tell API listeners.
    Stream(StreamEvent),
    /// Record the conversation head on the ledger; answer with [`Engine::anchor_done`].
    Anchor {
        /// Conversation.
        conv: ConversationId,
        /// Head.
        head: Id,
        /// Ancestry count.
        count: u64,
        /// Give up at, ms.
        deadline_ms: u64,
        /// Seed of this device's authority key for the topic at the current epoch (the ledger
        /// accepts anchors from the conversation's members only).
        authority: [u8; 32],
    },
    /// Remove these envelopes from the local history (junk).
    Discard(Vec<Id>),
    /// Erase this envelope's payload in the local history and, with the secret of its erase
    /// lock, on the topic's store nodes.
    Erase {
        /// Conversation topic.
        topic: Topic,
        /// Envelope id.
        id: Id,
        /// Secret of its erase lock, if known.
        secret: Option<[u8; 32]>,
    },
    /// Fresh key packages are needed (one was used by a Welcome).
    PublishKeyPackages,
    /// A conversation's state changed (for views).
    Conversation {
        /// Conversation.
        id: ConversationId,
        /// MLS epoch.
        epoch: u64,
        /// Whether this device is a member.
        active: bool,
        /// Member devices.
        members: Vec<DeviceCert>,
    },
    /// This device joined a conversation.
    Joined(ConversationId),
    /// This device forgot a conversation (keys and state destroyed).
    Forgotten(ConversationId),
}

/// Io entries queued at most between two [`Engine::take_io`] calls. Overflow policy: none
/// needed in practice (each call queues a bounded number); past this the engine refuses new
/// sends with [`NodeError::Busy`] until the shell drains the queue.
pub const IO_QUEUE_MAX: usize = 65_536;

/// One user's engine.
pub struct Engine {
    core: Core,
    mls: MlsClient,
    db: NodeDb,
    history: Arc<Store>,
    keys: IdentityKeys,
    cfg: EngineConfig,
    io: Vec<Io>,
    receipt_keys: receipts::ReceiptKeys,
    /// Welcomes arriving in chunks (bounded: see `cairn_mls::WelcomeAssembler`).
    welcome_chunks: cairn_mls::WelcomeAssembler,
    /// Conversations where an own commit was merged since the shell last asked (one entry per
    /// conversation at most).
    own_merged: std::collections::BTreeSet<ConversationId>,
    /// Commits made without an fsync since the last durable one.
    lazy_commits: u64,
    /// Proof-of-work prices of loaded topics (bounded; see `work_price`).
    work_prices: work_price::WorkPrices,
    /// Whether a redaction may be waiting for its target (see [`crate::redactions`]).
    pending_redactions: bool,
    /// Sent messages whose delivery state changed since it was last written to `node.redb`
    /// (see [`receipts::DELIVERIES_DIRTY_MAX`]).
    deliveries_dirty: BTreeSet<Id>,
    /// When the tick last made lazy commits durable, ms.
    last_durable_ms: u64,
    /// When the tick last offered pending leave proposals again, ms.
    last_leave_offer_ms: u64,
    /// The conversations' message policies (see `policy_run`).
    policy_run: policy_run::PolicyRun,
    /// Receipt signers' certificates verified already.
    receipt_certs: receipts::ReceiptCerts,
    /// Conversations with envelopes settled since their replay cursor last moved (one entry
    /// per conversation at most; see `replay`).
    cursor_dirty: BTreeSet<ConversationId>,
    /// The outbox pages not pushed again since the start: (next position, end position).
    outbox_resume: Option<(u64, u64)>,
    /// Envelopes enough store nodes took, still to be removed from the outbox: removed in the
    /// next commit of the engine (or the tick's durable flush), not one transaction each; at
    /// most [`OUTBOX_ACKED_PENDING_MAX`] (then removed at once).
    outbox_acked: BTreeSet<Id>,
    /// What the starts read (see `replay`).
    replay_stats: replay::ReplayStats,
}

/// What runs inside every durable commit of `node.redb` (the node tables' and MLS's own),
/// before it commits: the local history's deferred deliveries are made durable.
///
/// A send with no lazy commit since the last durable one begins its transaction without the
/// hook (`NodeDb::begin_unhooked`): nothing it makes durable was read from the local history.
///
/// Invariant: the node's tables never durably hold an envelope the local history could lose.
/// The net writer commits deliveries lazily, and the engine reads them into lazy commits too;
/// any durable commit of `node.redb` (a send, a tick's flush, an MLS flush) makes those
/// durable. Were the history's tail rolled back by a crash meanwhile, it would fetch those
/// envelopes again from the store nodes, and a parent that no store holds yet (its sender was
/// killed before pushing it) would become a gap: the child written first, and `verify`
/// reporting it reordered. Running inside the write transaction, no lazy commit slips in
/// between. Costs an fsync only when the history has deferred commits.
fn history_first(history: &Arc<Store>) -> cairn_mls::DurableHook {
    let history = Arc::clone(history);
    Arc::new(move || {
        if let Err(e) = history.sync() {
            tracing::warn!("cannot make the local history durable before a durable commit: {e}");
        }
    })
}

impl Engine {
    /// Opens the engine of `keys`' device: node tables and MLS state in `db`, the local
    /// history in `history`.
    pub fn open(
        db: Arc<redb::Database>,
        history: Arc<Store>,
        keys: IdentityKeys,
        cfg: EngineConfig,
    ) -> Result<Self, NodeError> {
        let keyring = match &cfg.keyring {
            Some(path) => crate::keyring::Keyring::open(path, &keys.device_key)?,
            None => crate::keyring::Keyring::derived(&keys.device_key),
        };
        let ndb = NodeDb::with_keyring(db.clone(), cfg.limits, Arc::new(keyring))?;
        let signer = cairn_mls::DeviceSigner::new(keys.device_key.clone(), keys.cert)
            .map_err(|e| NodeError::Internal(format!("device certificate: {e}")))?;
        let mls = MlsClient::open(db, signer, mls_config())
            .map_err(|e| NodeError::Mls(format!("MLS state: {e}")))?;
        Ok(Self::new(mls, ndb, history, keys, cfg))
    }

    /// An engine over an opened MLS client, the node tables and the local history.
    pub fn new(
        mut mls: MlsClient,
        db: NodeDb,
        history: Arc<Store>,
        keys: IdentityKeys,
        cfg: EngineConfig,
    ) -> Self {
        let mut core = Core::new(cfg.core.clone());
        // Delivery states of sends made before a restart (see `crate::deliveries_store`).
        let restored = crate::deliveries_store::DELIVERIES_RESTORED_PER_CONVERSATION;
        match db.deliveries_recent(restored) {
            Ok(rows) => rows.into_iter().for_each(|(id, d)| core.restore_delivery(id, d)),
            Err(e) => tracing::warn!("delivery states not read back: {e}"),
        }
        // If the table cannot be read, look (one read per message) rather than miss one.
        let pending_redactions = db.has_pending_redactions().unwrap_or(true);
        if let Err(e) = policy_store::create_tables(&db) {
            tracing::error!("policy tables: {e}");
        }
        // Message operations leave their MLS writes to the engine's transaction (with the
        // plaintexts); commits still write their own before they reach the sequencer.
        if let Err(e) = mls.set_deferred(true) {
            tracing::error!("MLS deferred mode: {e}");
        }
        let hook = history_first(&history);
        db.set_before_durable(hook.clone());
        mls.set_before_durable(hook);
        Self {
            core,
            mls,
            db,
            history,
            keys,
            cfg,
            io: Vec::new(),
            receipt_keys: receipts::ReceiptKeys::default(),
            welcome_chunks: cairn_mls::WelcomeAssembler::new(),
            own_merged: std::collections::BTreeSet::new(),
            lazy_commits: 0,
            work_prices: work_price::WorkPrices::default(),
            pending_redactions,
            deliveries_dirty: BTreeSet::new(),
            last_durable_ms: 0,
            last_leave_offer_ms: 0,
            policy_run: policy_run::PolicyRun::default(),
            receipt_certs: receipts::ReceiptCerts::default(),
            cursor_dirty: BTreeSet::new(),
            replay_stats: replay::ReplayStats::default(),
            outbox_resume: None,
            outbox_acked: BTreeSet::new(),
        }
    }

    /// Takes the queued I/O.
    pub fn take_io(&mut self) -> Vec<Io> {
        std::mem::take(&mut self.io)
    }

    /// The decision core (read-only).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The MLS client (read-only).
    pub fn mls(&self) -> &MlsClient {
        &self.mls
    }

    /// The node tables.
    pub fn db(&self) -> &NodeDb {
        &self.db
    }

    /// Keeps the conversation's anchor salt in the node tables once (for `verify` and export).
    fn remember_anchor_salt(&mut self, id: &ConversationId) {
        if let Ok(Some(salt)) = self.mls.anchor_salt(id)
            && !self.db.has_anchor_salt(&id.0).unwrap_or(true)
            && let Err(e) = self.db.put_anchor_salt(&id.0, &salt)
        {
            tracing::warn!("cannot keep the anchor salt of {}: {e}", hex::encode(id.0));
        }
    }

    /// What is anchored for history head `head`: its keyed hash under the conversation's salt
    /// (`cairn_mls::anchor_salt`), or the head itself in a group created before salts.
    fn anchored_head(&self, conv: &ConversationId, head: Id) -> Id {
        match self.mls.anchor_salt(conv) {
            Ok(Some(salt)) => cairn_mls::anchor_salt::salted_head(&salt, &head),
            _ => head,
        }
    }

    /// Whether the local history holds an envelope.
    pub fn history_has(&self, id: &Id) -> bool {
        self.history.get(id).ok().flatten().is_some()
    }

    /// This device's keys.
    pub fn keys(&self) -> &IdentityKeys {
        &self.keys
    }

    /// Conversations this device knows.
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.mls.conversations()
    }

    /// Loads every conversation at start: the core learns members, the chain is read back
    /// from its rows, the local history after the replay cursor is read, and unacknowledged
    /// sends are queued again.
    pub fn start(
        &mut self,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<(), NodeError> {
        self.io.push(Io::Subscribe(cairn_mls::inbox_topic(&self.keys.device)));
        let convs = self.mls.conversations();
        for &id in &convs {
            self.io.push(Io::Subscribe(id.topic()));
            self.io.push(Io::Subscribe(self.own_receipt_topic(&id)));
            self.refresh(&id, now_ms);
            self.sync(&id, seq, now_ms);
            self.replay_history(id, seq, now_ms)?;
        }
        // The unacknowledged sends go out again, a page now and a page per tick after.
        self.db.outbox_order_legacy()?;
        self.outbox_resume = Some((0, self.db.outbox_end()?));
        self.republish_page(now_ms)?;
        // The next start replays from where this one ended.
        if let Err(e) = self.advance_replay_cursors() {
            tracing::warn!("replay cursors not moved: {e}");
        }
        Ok(())
    }

    /// Pushes the next page of the outbox again (written before this start), if any is left.
    fn republish_page(&mut self, now_ms: u64) -> Result<(), NodeError> {
        let Some((from, end)) = self.outbox_resume else { return Ok(()) };
        let page = self.db.outbox_page(from, end, crate::outbox_store::OUTBOX_PAGE_ENVELOPES)?;
        self.outbox_resume = page.next.map(|n| (n, end));
        let by_topic: std::collections::HashMap<Topic, ConversationId> =
            self.mls.conversations().into_iter().map(|c| (c.topic(), c)).collect();
        for env in page.envelopes {
            // A send whose chain row a node.redb from before the chain table lacks, and whose
            // history copy a crash lost: the chain learns it from the outbox.
            let id = env.id();
            if let Some(conv) = by_topic.get(&env.header.topic).copied()
                && !self.core.knows(&conv, &id)
                && let Some(plain) = self.db.plain(&id)?
            {
                self.known(conv, id, &plain, now_ms);
            }
            self.io.push(Io::Publish(Box::new(env)));
        }
        Ok(())
    }

    /// Whether outbox pages written before this start are still to be pushed again.
    pub fn republishing(&self) -> bool {
        self.outbox_resume.is_some()
    }

    /// Time passed: receipts, anchors, quarantine expiry, scheduled key updates.
    pub fn tick(&mut self, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        // Changed delivery states first, so the durable flush below covers them.
        if let Err(e) = self.flush_deliveries() {
            tracing::warn!("delivery states not recorded: {e}");
        }
        if let Err(e) = self.republish_page(now_ms) {
            tracing::warn!("outbox not pushed again: {e}");
        }
        // Bounds what a crash can roll back (and the pages a lazy commit cannot free yet).
        if now_ms.saturating_sub(self.last_durable_ms) >= DURABLE_EVERY_MS {
            self.last_durable_ms = now_ms;
            if let Err(e) = self.make_durable() {
                tracing::warn!("durable flush: {e}");
            }
        }
        let fx = self.core.handle(Input::Tick, now_ms);
        self.apply(fx, seq, now_ms);
        if now_ms.saturating_sub(self.last_leave_offer_ms) >= LEAVE_AGAIN_MS {
            self.last_leave_offer_ms = now_ms;
            for c in self.mls.conversations_leaving() {
                self.settle_commit(&c, seq, now_ms);
            }
        }
        for c in self.mls.conversations_due(now_ms) {
            self.settle_commit(&c, seq, now_ms);
            if let Err(e) = self.mls.self_update(&c, seq, now_ms) {
                tracing::debug!("scheduled key update of {}: {e}", hex::encode(c.0));
            }
            self.refresh(&c, now_ms);
        }
    }

    /// The ledger's height moved: conversations apply newly sequenced commits.
    pub fn ledger_height(&mut self, height: u64, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        let fx = self.core.handle(Input::Ledger { height }, now_ms);
        self.apply(fx, seq, now_ms);
    }

    /// New handshakes were sequenced on these topics: those conversations apply them.
    pub fn handshakes(&mut self, topics: &[Topic], seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        for conv in self.mls.conversations() {
            if topics.contains(&conv.topic()) {
                self.sync(&conv, seq, now_ms);
            }
        }
    }

    /// Store nodes acknowledged a sent envelope (`stored`: enough of them).
    pub fn store_acks(&mut self, id: Id, acks: u32, stored: bool, now_ms: u64) {
        // Removed from the outbox with the next commit (acknowledgements come one by one, a
        // transaction each cost the sender more than its sends' rows).
        if stored {
            self.outbox_acked.insert(id);
        }
        if self.outbox_acked.len() >= OUTBOX_ACKED_PENDING_MAX
            && let Err(e) = self.remove_acked()
        {
            tracing::warn!("outbox: {e}");
        }
        self.track_delivery(&id);
        let fx = self.core.handle(Input::StoreAcks { id, acks }, now_ms);
        self.deliveries_changed(&fx);
        self.apply_local(fx);
    }

    /// An anchor submission ended.
    pub fn anchor_done(&mut self, conv: ConversationId, count: u64, ok: bool, now_ms: u64) {
        let fx = self.core.handle(Input::AnchorDone { conv, count, ok }, now_ms);
        self.apply_local(fx);
    }

    /// The delivery state of a sent message, if still tracked (in memory, else its row).
    pub fn delivery(&self, id: &Id) -> Option<DeliveryView> {
        self.core.delivery(id).or_else(|| self.db.delivery_row(id).ok().flatten().map(|d| d.view()))
    }

    /// The newest `max` delivery states of this device's sends in `conv`, newest first: the
    /// recorded rows, with the state in memory where it is newer, and the sends tracked in
    /// memory only (too many members to record) first.
    pub fn deliveries(&self, conv: &ConversationId, max: usize) -> Vec<(Id, DeliveryView)> {
        let rows = match self.db.deliveries_of(conv, max) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("delivery rows not read: {e}");
                return self.core.deliveries(conv, max);
            }
        };
        let recorded: std::collections::HashSet<Id> = rows.iter().map(|(id, _)| *id).collect();
        let mut out: Vec<(Id, DeliveryView)> = self
            .core
            .deliveries(conv, max)
            .into_iter()
            .filter(|(id, _)| !recorded.contains(id) && self.db.delivery_row(id).ok().flatten().is_none())
            .collect();
        out.extend(rows.into_iter().map(|(id, d)| (id, self.core.delivery(&id).unwrap_or_else(|| d.view()))));
        out.truncate(max);
        out
    }

    /// Tracks in memory again the delivery of `id` that a start left in its row (an
    /// acknowledgement or a receipt names it).
    fn track_delivery(&mut self, id: &Id) {
        if self.core.delivery_record(id).is_none()
            && let Ok(Some(d)) = self.db.delivery_row(id)
        {
            self.core.restore_delivery(*id, d);
        }
    }

    /// Tells the core what MLS now says of a conversation.
    fn refresh(&mut self, id: &ConversationId, now_ms: u64) {
        let epoch = self.mls.epoch(id).unwrap_or(0);
        let active = self.mls.is_active(id).unwrap_or(false);
        let me = self.keys.account;
        let others: BTreeSet<AccountId> =
            self.mls.member_accounts(id).unwrap_or_default().into_iter().filter(|a| *a != me).collect();
        let devices = self.mls.member_count(id).unwrap_or(0) as u32;
        self.remember_receipt_key(id);
        self.remember_anchor_salt(id);
        self.policy_epoch_seen(id);
        let fx = self.core.handle(Input::Conversation { conv: *id, epoch, active, others, devices }, now_ms);
        let members = self.mls.members(id).unwrap_or_default();
        self.io.push(Io::Conversation { id: *id, epoch, active, members });
        self.pending_reopen(fx, now_ms);
    }

    fn pending_reopen(&mut self, fx: Vec<Effect>, now_ms: u64) {
        for e in fx {
            if let Effect::Reopen { conv, ids } = e {
                self.reopen(conv, &ids, now_ms);
            } else {
                self.apply_local(vec![e]);
            }
        }
    }

    /// Performs the core's effects.
    fn apply(&mut self, fx: Vec<Effect>, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        for e in fx {
            match e {
                Effect::SyncLedger { conv } => self.sync(&conv, seq, now_ms),
                Effect::SendReceipt { conv, to, epoch, ids } => {
                    if let Err(e) = self.send_receipt(conv, to, epoch, &ids, now_ms) {
                        tracing::debug!("receipt not sent: {e}");
                    }
                }
                Effect::Reopen { conv, ids } => self.reopen(conv, &ids, now_ms),
                other => self.apply_local(vec![other]),
            }
        }
    }

    /// Effects that need neither MLS nor the sequencer.
    fn apply_local(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Delivery { conv, id, view } => self.io.push(Io::Stream(StreamEvent::Delivery {
                    id: id.to_hex(),
                    conversation: hex::encode(conv.0),
                    delivery: view,
                })),
                Effect::Anchor { conv, head, count, deadline_ms } => {
                    let head = self.anchored_head(&conv, head);
                    match self.mls.authority_seed(&conv) {
                        Ok(authority) => {
                            self.io.push(Io::Anchor { conv, head, count, deadline_ms, authority })
                        }
                        Err(e) => {
                            tracing::debug!("no authority key to anchor with: {e}");
                            self.anchor_done(conv, count, false, deadline_ms);
                        }
                    }
                }
                Effect::Discard { ids, .. } => self.io.push(Io::Discard(ids)),
                Effect::SyncLedger { .. } | Effect::SendReceipt { .. } | Effect::Reopen { .. } => {
                    tracing::error!("effect {e:?} needs MLS; dropped by apply_local (bug)")
                }
            }
        }
    }

    /// Applies newly sequenced handshakes of a conversation.
    pub fn sync(&mut self, conv: &ConversationId, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        // One handshake at a time, so the policy pin of every epoch is recorded.
        let events = match self.mls_sync_stepwise(conv, seq, now_ms) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!("sync of {}: {e}", hex::encode(conv.0));
                return;
            }
        };
        let mut changed = false;
        let mut leave = false;
        let mut readable = Vec::new();
        let mut welcomes = Vec::new();
        for ev in events {
            match ev {
                // This device's own commit, merged once seen in the order (its submission's
                // answer was lost): its Welcome still has to go out.
                cairn_mls::Event::Commit { own: true, welcome, .. } => {
                    changed = true;
                    self.own_merged.insert(*conv);
                    welcomes.extend(welcome);
                }
                cairn_mls::Event::Commit { .. } | cairn_mls::Event::RemovedSelf { .. } => changed = true,
                cairn_mls::Event::LeaveProposed { .. } => {
                    changed = true;
                    leave = true;
                }
                cairn_mls::Event::Skipped { seq, reason } => {
                    tracing::warn!("handshake {seq} skipped by every member: {reason}")
                }
                cairn_mls::Event::Message(cairn_mls::Received::Message(d)) => readable.push(d),
                cairn_mls::Event::Message(_) => {}
            }
        }
        // The sync's MLS writes and the messages it made readable: one transaction.
        self.buffered_readable(*conv, readable, now_ms);
        for w in welcomes {
            if let Err(e) = self.publish_welcome(&w, now_ms) {
                tracing::warn!("Welcome of a late-confirmed commit not sent: {e}");
            }
        }
        if leave && let Err(e) = self.mls.commit_pending(conv, seq, now_ms) {
            tracing::debug!("committing a leave: {e}");
        }
        if changed {
            self.refresh(conv, now_ms);
        }
    }
}

/// The API view of a message (handles are filled in by the service).
pub fn message_view(conv: &ConversationId, seq: u64, id: &Id, m: &Message, after_gap: bool) -> MessageView {
    let text = match m.body.split_first() {
        Some((&KIND_TEXT, rest)) => String::from_utf8_lossy(rest).into_owned(),
        _ => String::new(),
    };
    MessageView {
        seq,
        id: id.to_hex(),
        conversation: hex::encode(conv.0),
        sender: m.sender.account.to_text(),
        device: m.sender.device.to_text(),
        handle: None,
        timestamp_ms: m.timestamp_ms,
        text,
        parents: m.parents.iter().map(Id::to_hex).collect(),
        after_gap,
        verdict: None,
        labels: Vec::new(),
    }
}

/// Maps an MLS error to the node's.
pub fn mls_err(e: MlsError) -> NodeError {
    match e {
        MlsError::UnknownConversation => NodeError::UnknownConversation,
        MlsError::NotMember => NodeError::NotMember,
        MlsError::Sequencer(s) => NodeError::Sequencer(s.to_string()),
        other => NodeError::Mls(other.to_string()),
    }
}
