//! The user's node as the local API sees it: [`Service`] starts the shell (mesh, actor,
//! ledger worker, timer) and implements [`Backend`] by asking the actor or the ledger.
//!
//! On the wire: a conversation envelope's payload is a padded MLS application message whose
//! plaintext is a signed [`cairn_proto::Message`], bound to its envelope header through the MLS
//! authenticated data. Key packages are signed plain envelopes on a per-device topic; Welcomes
//! go to the invitee's inbox topic as sealed bundles with no signature wrapper.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_crypto::Identity;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;
use cairn_mls::{Client as MlsClient, ConversationId, DeviceSigner, VerifiedKeyPackage};
use cairn_proto::{AccountId, DeviceId};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::backend::{ApiError, ApiResult, Backend};
use crate::db::NodeDb;
use crate::engine::{Engine, EngineConfig, IdentityKeys};
use crate::error::NodeError;
use crate::idempotency::IdempotencyKey;
use crate::model::{
    AccountForgetRequest, AccountForgetView, AccountView, ConversationView, DeviceAddRequest, DeviceView,
    ErasureView, ErasuresQuery, LedgerStatusView, MessageView, PolicySetRequest, PolicyView, RequestView,
    SendResult, StatusView, StreamEvent, TailQuery, TxView, VerifyView,
};
use crate::shell::actor::{Actor, Job, MESH_QUEUE_MAX, NET_QUEUE_MAX, OPS_QUEUE_MAX, Reply};
use crate::shell::keypackages::KeyPackageRefusal;
use crate::shell::ledger::{LEDGER_JOBS_MAX, LedgerWorker, read_retry, resolve_account, unavailable};
use crate::shell::sequencer::{NodeSequencer, OrderReadsView, SubmitStall, SubmitStallView};
use crate::shell::{STREAM_EVENTS_MAX, Shared, now_ms};

pub use crate::engine::TEXT_BYTES_MAX;
pub use crate::shell::keypackages::key_package_topic;

/// Everything a user node needs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Data directory (`node.redb`, `net/`).
    pub home: PathBuf,
    /// The ledger's genesis (validator RPC addresses, chain id).
    pub genesis: Genesis,
    /// P2P settings (its `data_dir` should be `home/net`).
    pub net: cairn_net::node::NodeConfig,
    /// Roles, for status (`user`, `store`, `validator`).
    pub roles: Vec<String>,
    /// Lifetime of message envelopes on store nodes, seconds.
    pub ttl_secs: u32,
    /// Period of the timer (receipts, anchors, ledger polls), ms.
    pub tick_ms: u64,
    /// A member anchors its conversation head on the ledger at most this often, ms.
    pub anchor_every_ms: u64,
    /// How long to wait for a member's key packages to arrive from store nodes, ms.
    pub key_package_wait_ms: u64,
    /// Handle to claim once the account is registered (if it has none).
    pub handle: Option<String>,
    /// Whose invitations join without the user's consent (default: ask, see
    /// [`crate::engine::Invitations`]).
    pub invitations: crate::engine::Invitations,
    /// Reach validators through peers only, never dialling their addresses (`cairn up
    /// --ledger-via-peers`); otherwise peers are the fallback (`shell::ledger_relays`).
    pub ledger_via_peers: bool,
}

impl ServiceConfig {
    /// Defaults for `home` and `genesis`.
    pub fn new(home: PathBuf, genesis: Genesis) -> Self {
        let net = cairn_net::node::NodeConfig::new(home.join("net"));
        Self {
            home,
            genesis,
            net,
            roles: vec!["user".into()],
            ttl_secs: 7 * 24 * 3600,
            tick_ms: 250,
            anchor_every_ms: 5_000,
            key_package_wait_ms: 20_000,
            handle: None,
            invitations: crate::engine::Invitations::Ask,
            ledger_via_peers: false,
        }
    }
}

/// A running user node.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Job>,
    genesis: Genesis,
    roles: Vec<String>,
    kp_wait: Duration,
    /// One-time device link codes (see [`crate::link_host`]).
    links: Arc<crate::link_host::Links>,
    /// Time the actor spent offering commits to the sequencer.
    stall: Arc<SubmitStall>,
    order_reads: Arc<dyn Fn() -> OrderReadsView + Send + Sync>,
}

/// The keyring file in a node's data directory (see [`crate::keyring`]).
pub const KEYRING_FILE: &str = "keyring";

impl Service {
    /// Starts the node: P2P, the actor, the ledger worker, the timer. `identity` is the
    /// unlocked keystore of `cfg.home`.
    pub async fn start(cfg: ServiceConfig, identity: Identity) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.home)?;
        let limits = cfg.net.admission.limits;
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(crate::engine::NODE_DB_CACHE_BYTES)
                .create(cfg.home.join("node.redb"))?,
        );
        let keys = IdentityKeys::of(&identity);
        let keyring = crate::keyring::Keyring::open(&cfg.home.join(KEYRING_FILE), &keys.device_key)?;
        let node_db = NodeDb::with_keyring(db.clone(), limits, Arc::new(keyring))?;
        let signer = DeviceSigner::new(keys.device_key.clone(), keys.cert)
            .map_err(|e| anyhow::anyhow!("device certificate: {e}"))?;
        let mls = MlsClient::open(db.clone(), signer, crate::engine::mls_config())
            .map_err(|e| anyhow::anyhow!("MLS state: {e}"))?;
        let net = cairn_net::node::start(cfg.net.clone()).await?;
        let net_events = net.take_events().ok_or_else(|| anyhow::anyhow!("mesh events already taken"))?;
        let (events, _) = broadcast::channel(STREAM_EVENTS_MAX);
        let shared = Arc::new(Shared::new(keys.clone(), node_db.clone(), net.clone(), events));
        let (ops_tx, ops_rx) = mpsc::channel(OPS_QUEUE_MAX);
        let (net_tx, net_rx) = mpsc::channel(NET_QUEUE_MAX);
        let (mesh_tx, mesh_rx) = mpsc::channel(MESH_QUEUE_MAX);
        let (ledger_tx, ledger_rx) = std::sync::mpsc::sync_channel(LEDGER_JOBS_MAX);
        let mut ecfg = EngineConfig::new(limits);
        ecfg.ttl_secs = cfg.ttl_secs;
        ecfg.core.anchor_every_ms = cfg.anchor_every_ms;
        ecfg.invitations = cfg.invitations;
        ecfg.difficulty = cfg.net.admission.difficulty;
        // Views of every conversation before the API answers (the actor then loads their
        // histories in the background; a client asking at once must not hear "no such
        // conversation").
        for id in mls.conversations() {
            let snap = crate::shell::ConvSnapshot {
                epoch: mls.epoch(&id).unwrap_or(0),
                active: mls.is_active(&id).unwrap_or(false),
                members: mls.members(&id).unwrap_or_default(),
            };
            shared.set_conversation(id, snap);
        }
        // Conversations restored from an archive: readable and verifiable, not joined.
        let joined = mls.conversations();
        for c in node_db.archived()? {
            let id = ConversationId(c);
            if !joined.contains(&id) {
                let snap = crate::shell::ConvSnapshot { epoch: 0, active: false, members: Vec::new() };
                shared.set_conversation(id, snap);
            }
        }
        let engine = Engine::new(mls, node_db, net.history().clone(), keys.clone(), ecfg);
        if let Some(r) = &shared.ledger_relays {
            r.set_direct_first(!cfg.ledger_via_peers);
        }
        // Commits and leave proposals are topic writes (no account or device key goes with
        // them), mined, submitted and awaited by the commit worker: the actor only queues them,
        // and each stays pending (never forked) until the order shows what holds its slot.
        let client = || shared.ledger_client(&cfg.genesis).map(|c| c.with_timeout(Duration::from_secs(3)));
        let stopping = {
            let shared = shared.clone();
            Arc::new(move || shared.stopping.load(Ordering::Acquire))
        };
        let (mut sequencer, submitter) = NodeSequencer::new(client()?, ops_tx.clone(), stopping);
        sequencer.ask_reads_at(ledger_tx.clone());
        let stall = sequencer.stall();
        let order = sequencer.order_cache();
        let order_reads = Arc::new(sequencer.order_reads());
        std::thread::Builder::new().name("cairn-commits".into()).spawn(move || submitter.run())?;
        let actor = Actor {
            engine,
            sequencer,
            shared: shared.clone(),
            ledger: ledger_tx,
            mesh: mesh_tx,
            awaiting: Default::default(),
            revoking: Vec::new(),
        };
        std::thread::Builder::new().name("cairn-actor".into()).spawn(move || actor.run(ops_rx, net_rx))?;
        let worker = LedgerWorker {
            shared: shared.clone(),
            ops: ops_tx.clone(),
            tick_ms: cfg.tick_ms,
            handle: cfg.handle.clone(),
            handles: shared.handles.clone(),
            order,
        };
        let genesis = cfg.genesis.clone();
        std::thread::Builder::new()
            .name("cairn-ledger".into())
            .spawn(move || worker.run(genesis, ledger_rx))?;
        tokio::spawn(crate::shell::pump_mesh_events(shared.clone(), net_events, net_tx));
        tokio::spawn(crate::shell::run_mesh_commands(net.clone(), mesh_rx));
        tokio::spawn(crate::shell::run_timer(shared.clone(), ops_tx.clone(), cfg.tick_ms));
        let service = Service {
            shared,
            ops: ops_tx,
            genesis: cfg.genesis.clone(),
            roles: cfg.roles.clone(),
            kp_wait: Duration::from_millis(cfg.key_package_wait_ms),
            links: Arc::new(crate::link_host::Links::new(limits, cfg.net.admission.difficulty)),
            stall,
            order_reads,
        };
        tokio::spawn(service.clone().add_pending_devices());
        tracing::info!(account = %keys.account.to_text(), device = %keys.device.to_text(), "node service started");
        Ok(service)
    }

    /// How long the actor spent offering commits to the sequencer so far (it never waits for
    /// mining, the network or finality: see `shell::sequencer`).
    pub fn commit_stall(&self) -> SubmitStallView {
        self.stall.view()
    }

    /// How the actor's reads of the commit order were answered: from what the ledger worker
    /// read ahead, or by a round trip it waited for (see `shell::order_cache`).
    pub fn order_reads(&self) -> OrderReadsView {
        (self.order_reads)()
    }

    /// The P2P node.
    pub fn net(&self) -> &cairn_net::node::NodeHandle {
        &self.shared.net
    }

    /// Resolves when [`Backend::shutdown`] was called.
    pub async fn stopped(&self) {
        if self.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        self.shared.stop.notified().await;
    }

    /// Stops the actor and the P2P node (stores closed).
    pub async fn close(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.ops.send(Job::Stop).await;
        self.shared.net.shutdown().await;
    }

    async fn ask<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Job) -> ApiResult<T> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(make(tx)).await.map_err(|_| ApiError::from(NodeError::Stopping))?;
        Ok(rx.await.map_err(|_| ApiError::from(NodeError::Stopping))??)
    }

    /// The waiting request named by `id` (hex, or a unique prefix of at least 8 digits).
    fn find_request(&self, id: &str) -> ApiResult<[u8; 32]> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "'{id}' is not a request id: give its hex id or at least 8 leading hex digits (see `cairn requests`)"
            )));
        }
        let found: Vec<[u8; 32]> = self
            .shared
            .db
            .requests()?
            .into_iter()
            .map(|r| r.conversation)
            .filter(|c| hex::encode(c).starts_with(&id))
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ApiError::NotFound(format!("no invitation request {id} (see `cairn requests`)"))),
            _ => Err(ApiError::BadRequest(format!("'{id}' names several requests: give more digits"))),
        }
    }

    fn find_conversation(&self, id: &str) -> ApiResult<ConversationId> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "'{id}' is not a conversation id: give its hex id or at least 8 leading hex digits (see `cairn chat list`)"
            )));
        }
        let convs = self.shared.convs.lock().map_err(|_| ApiError::Internal("lock".into()))?;
        let found: Vec<ConversationId> =
            convs.keys().filter(|c| hex::encode(c.0).starts_with(&id)).copied().collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ApiError::NotFound(format!(
                "no conversation {id} on this device (see `cairn chat list`)"
            ))),
            _ => Err(ApiError::BadRequest(format!("'{id}' names several conversations: give more digits"))),
        }
    }

    /// Runs blocking ledger calls on the blocking pool.
    async fn ledger_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LedgerClient, &Shared) -> Result<T, NodeError> + Send + 'static,
    ) -> ApiResult<T> {
        let shared = self.shared.clone();
        let genesis = self.genesis.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = shared.ledger_client(&genesis).map_err(unavailable)?;
            f(&mut client, &shared)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
    }

    async fn resolve_members(&self, members: Vec<String>) -> ApiResult<Vec<AccountId>> {
        if members.is_empty() {
            return Err(ApiError::BadRequest("name at least one member (account id or @handle)".into()));
        }
        let me = self.shared.identity.account;
        Ok(self.resolve_accounts(members).await?.into_iter().filter(|a| *a != me).collect())
    }

    /// Account ids or @handles resolved with proofs, each once, in the order given.
    async fn resolve_accounts(&self, names: Vec<String>) -> ApiResult<Vec<AccountId>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.ledger_call(move |client, _| {
            let mut out = Vec::new();
            for n in names {
                let a = resolve_account(client, &n)?;
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    /// One key package of each active device of these accounts (this device excluded),
    /// fetched from the mesh with a deadline. `required`: an account without devices is an
    /// error.
    async fn key_packages_of(
        &self,
        accounts: Vec<AccountId>,
        required: bool,
    ) -> ApiResult<Vec<VerifiedKeyPackage>> {
        let devices = self
            .ledger_call(move |client, _| {
                let mut out = Vec::new();
                for a in accounts {
                    let ds = read_retry(|| client.devices(&a)).map_err(unavailable)?;
                    match ds {
                        Some(ds) => out.push((a, ds)),
                        None if required => {
                            return Err(NodeError::NotFound(format!(
                                "{} is not registered on the ledger",
                                a.to_text()
                            )));
                        }
                        None => {}
                    }
                }
                Ok(out)
            })
            .await?;
        let me = self.shared.identity.device;
        let mut out = Vec::new();
        for (account, ds) in devices {
            let ds: Vec<DeviceId> = ds.into_iter().filter(|d| *d != me).collect();
            if ds.is_empty() && required {
                return Err(ApiError::NotFound(format!("{} has no active device", account.to_text())));
            }
            for d in ds {
                match self.recorded_key_package(d, self.kp_wait).await {
                    Ok(kp) => out.push(kp),
                    Err(e) if required => return Err(e),
                    Err(_) => {}
                }
            }
        }
        Ok(out)
    }

    /// One key package of `device` from the batch it recorded on the ledger, waiting at most
    /// `wait`. The record is re-read about every second while waiting: it may still be in
    /// flight (a device that just registered) or replaced by a newer batch.
    async fn recorded_key_package(&self, device: DeviceId, wait: Duration) -> ApiResult<VerifiedKeyPackage> {
        let limits = *self.shared.db.limits();
        let deadline = Instant::now() + wait;
        loop {
            let expected = self
                .ledger_call(move |client, _| {
                    read_retry(|| client.key_packages(&device)).map_err(unavailable)
                })
                .await?;
            let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            let r = match expected {
                Some(_) => {
                    self.shared.key_packages.fetch(&self.shared.net, device, expected, &limits, slice).await
                }
                None => {
                    tokio::time::sleep(slice.min(Duration::from_millis(250))).await;
                    Err(KeyPackageRefusal::NotOnLedger { device: device.to_text() }.into())
                }
            };
            match r {
                Ok(kp) => return Ok(kp),
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => {}
            }
        }
    }

    /// Adds this account's new devices to every conversation, as their key packages arrive.
    async fn add_pending_devices(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.shared.stopping.load(Ordering::Acquire) {
                return;
            }
            if !self.shared.registered.load(Ordering::Acquire) {
                continue;
            }
            let Ok(pending) = self.shared.db.pending_devices() else { continue };
            for d in pending {
                let device = DeviceId(d);
                let Ok(missing) = self.ask(|r| Job::MissingDevice(device, r)).await else { continue };
                if missing.is_empty() {
                    let _ = self.shared.db.set_pending_device(&d, false, now_ms());
                    continue;
                }
                let mut done = true;
                for conv in missing {
                    let kp = match self.recorded_key_package(device, Duration::from_secs(3)).await {
                        Ok(kp) => kp,
                        Err(_) => {
                            done = false;
                            break;
                        }
                    };
                    if let Err(e) = self.ask(|r| Job::Add(conv, vec![kp], r)).await {
                        tracing::warn!("adding device {} to {}: {e}", device.to_text(), hex::encode(conv.0));
                        done = false;
                    }
                }
                if done {
                    let _ = self.shared.db.set_pending_device(&d, false, now_ms());
                }
            }
        }
    }

    fn message_view(&self, conv: &ConversationId, s: &crate::db::Stored) -> MessageView {
        let mut v = crate::engine::message_view(conv, s.seq, &s.id, &s.message, s.after_gap);
        v.handle = self.shared.cached_handle(&s.message.sender.account);
        crate::engine::policy_decorate_view(&self.shared.db, &conv.0, &mut v);
        v
    }
}

/// Longest `forget_account` waits for the other members to commit this device's leaving.
const ACCOUNT_FORGET_LEAVE_WAIT: Duration = Duration::from_secs(60);

impl Backend for Service {
    async fn status(&self) -> ApiResult<StatusView> {
        let s = self.shared.net.status().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let h = self.shared.ledger_height.load(Ordering::Relaxed);
        let m = &self.shared.metrics;
        m.set_peers(s.peers);
        m.set_envelopes_relayed(s.relayed);
        m.set_envelopes_stored(s.store_envelopes);
        if h != u64::MAX {
            m.set_ledger_height(h);
        }
        let k = &self.shared.identity;
        Ok(StatusView {
            account: k.account.to_text(),
            device: k.device.to_text(),
            fingerprint: k.account.fingerprint(),
            handle: self.shared.cached_handle(&k.account),
            peer_id: s.peer_id.to_string(),
            p2p: self.shared.net.listen_addrs.iter().map(ToString::to_string).collect(),
            peers: s.peers,
            store_peers: s.store_peers,
            ledger_height: (h != u64::MAX).then_some(h),
            mailbox_backlog: s.mailbox.envelopes,
            pending_sends: s.pending.len(),
            conversations: self.shared.convs.lock().map(|c| c.len()).unwrap_or(0),
            roles: self.roles.clone(),
        })
    }

    async fn create_conversation(&self, members: Vec<String>) -> ApiResult<ConversationView> {
        let members = self.resolve_members(members).await?;
        let mut kps = self.key_packages_of(members, true).await?;
        // This account's other devices join too.
        kps.extend(self.key_packages_of(vec![self.shared.identity.account], false).await.unwrap_or_default());
        let id = self.ask(|r| Job::Create(kps, r)).await?;
        Ok(self.shared.conversation_view(&id)?)
    }

    async fn conversations(&self) -> ApiResult<Vec<ConversationView>> {
        let ids: Vec<ConversationId> = self
            .shared
            .convs
            .lock()
            .map_err(|_| ApiError::Internal("lock".into()))?
            .keys()
            .copied()
            .collect();
        ids.iter().map(|id| self.shared.conversation_view(id).map_err(ApiError::from)).collect()
    }

    async fn conversation(&self, id: String) -> ApiResult<ConversationView> {
        let id = self.find_conversation(&id)?;
        Ok(self.shared.conversation_view(&id)?)
    }

    async fn add_members(&self, id: String, members: Vec<String>) -> ApiResult<ConversationView> {
        let conv = self.find_conversation(&id)?;
        let members = self.resolve_members(members).await?;
        let present = self.ask(|r| Job::Members(conv, r)).await?;
        let new: Vec<AccountId> = members.into_iter().filter(|a| !present.contains(a)).collect();
        if new.is_empty() {
            return Err(ApiError::Conflict("every named account is already a member".into()));
        }
        let kps = self.key_packages_of(new, true).await?;
        self.ask(|r| Job::Add(conv, kps, r)).await?;
        Ok(self.shared.conversation_view(&conv)?)
    }

    async fn remove_member(&self, id: String, member: String) -> ApiResult<ConversationView> {
        let conv = self.find_conversation(&id)?;
        let mut members = self.resolve_members(vec![member]).await?;
        let Some(account) = members.pop() else {
            return Err(ApiError::BadRequest("to leave a conversation use `cairn chat leave`".into()));
        };
        self.ask(|r| Job::Remove(conv, account, r)).await?;
        Ok(self.shared.conversation_view(&conv)?)
    }

    async fn policy(&self, id: String) -> ApiResult<PolicyView> {
        let conv = self.find_conversation(&id)?;
        let pin = self.ask(|r| Job::Policy(conv, r)).await?;
        Ok(crate::policy_api::view_of(pin.as_ref()))
    }

    async fn held(&self, id: String) -> ApiResult<crate::model::HeldListView> {
        let conv = self.find_conversation(&id)?;
        Ok(crate::engine::policy_held(&self.shared.db, &conv.0)?)
    }

    async fn release_held(&self, id: String, message: String) -> ApiResult<MessageView> {
        let conv = self.find_conversation(&id)?;
        let target = cairn_proto::Id::from_hex(&message).ok_or_else(|| {
            ApiError::BadRequest("a message id is 64 hex digits (see `cairn chat held <conv>`)".into())
        })?;
        let seq = crate::engine::policy_store::release(&self.shared.db, &conv.0, &target)?;
        self.shared.new_message.notify_waiters();
        let rows = self.shared.db.messages(&conv.0, seq.saturating_sub(1), 1)?;
        let view = rows
            .first()
            .map(|s| self.message_view(&conv, s))
            .ok_or_else(|| ApiError::Internal("the released message is not in the history".into()))?;
        // Other windows on this device show it too (and re-read the held list).
        let _ = self.shared.events.send(crate::model::StreamEvent::Message(view.clone()));
        let _ = self
            .shared
            .events
            .send(crate::model::StreamEvent::Held { conversation: hex::encode(conv.0), id: view.id.clone() });
        Ok(view)
    }

    async fn set_policy(&self, id: String, req: PolicySetRequest) -> ApiResult<PolicyView> {
        let conv = self.find_conversation(&id)?;
        // This account may be an admin of its own conversation.
        let admins = self.resolve_accounts(req.admins.clone()).await?;
        let pin = crate::policy_api::pin_of(&req, admins)?;
        self.ask(|r| Job::SetPolicy(conv, pin, r)).await?;
        self.policy(id).await
    }

    async fn forget_account(&self, req: AccountForgetRequest) -> ApiResult<AccountForgetView> {
        let me = self.shared.identity.account.to_text();
        if req.confirm.trim() != me {
            return Err(ApiError::BadRequest(format!(
                "to forget this account, confirm with its id ({me}); nothing was changed"
            )));
        }
        if self.shared.identity.account_key.is_none() {
            return Err(ApiError::Conflict(
                "this device does not hold the account key: forget the account from the device that does"
                    .into(),
            ));
        }
        let mut done = AccountForgetView::default();
        // Conversations first, while this device can still take part: its leave proposals are
        // sequenced now, and it is out once another member commits one (bounded wait).
        for c in self.conversations().await? {
            if c.active {
                self.leave(c.id.clone()).await?;
                done.left += 1;
            }
        }
        let deadline = Instant::now() + ACCOUNT_FORGET_LEAVE_WAIT;
        let mut still = Vec::new();
        loop {
            still.clear();
            for c in self.conversations().await? {
                if c.active {
                    still.push(c.id);
                } else {
                    self.forget(c.id).await?;
                    done.forgotten += 1;
                }
            }
            if still.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !still.is_empty() {
            return Err(ApiError::Conflict(format!(
                "left every conversation, but no member has committed the leaving of {} yet ({} forgotten so far); run `cairn account forget --yes` again in a minute (nothing on the ledger was changed yet)",
                still.join(", "),
                done.forgotten
            )));
        }
        let (handle, devices) = crate::account_ops::release_and_revoke_all(self).await?;
        done.handle_released = handle;
        done.devices_revoked = devices.len();
        Ok(done)
    }

    async fn leave(&self, id: String) -> ApiResult<()> {
        let conv = self.find_conversation(&id)?;
        self.ask(|r| Job::Leave(conv, r)).await
    }

    async fn forget(&self, id: String) -> ApiResult<()> {
        let conv = self.find_conversation(&id)?;
        self.ask(|r| Job::Forget(conv, r)).await
    }

    async fn erase(&self, id: String, message: String) -> ApiResult<SendResult> {
        let conv = self.find_conversation(&id)?;
        let target = cairn_proto::Id::from_hex(&message).ok_or_else(|| {
            ApiError::BadRequest("a message id is 64 hex digits (see `cairn tail <conv>`)".into())
        })?;
        self.ask(|r| Job::Erase(conv, target, r)).await
    }

    async fn send(&self, id: String, text: String, idempotency_key: Option<String>) -> ApiResult<SendResult> {
        let conv = self.find_conversation(&id)?;
        let key = idempotency_key.as_deref().map(IdempotencyKey::parse).transpose()?;
        self.ask(|r| Job::Send(conv, text, key, r)).await
    }

    async fn messages(&self, id: String, query: TailQuery) -> ApiResult<Vec<MessageView>> {
        let conv = self.find_conversation(&id)?;
        let after = query.after.unwrap_or(0);
        let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
        let deadline = Instant::now() + Duration::from_millis(query.wait_ms.unwrap_or(0).min(60_000));
        loop {
            let notified = self.shared.new_message.notified();
            let rows = self.shared.db.messages(&conv.0, after, limit)?;
            if !rows.is_empty() || Instant::now() >= deadline {
                return Ok(rows.iter().map(|s| self.message_view(&conv, s)).collect());
            }
            let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified).await;
        }
    }

    async fn erasures(&self, id: String, query: ErasuresQuery) -> ApiResult<Vec<ErasureView>> {
        let conv = self.find_conversation(&id)?;
        let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
        let rows = self.shared.db.erasures(&conv.0, query.after.unwrap_or(0), limit)?;
        Ok(rows.into_iter().map(|(n, id)| ErasureView { n, id: id.to_hex() }).collect())
    }

    async fn verify(&self, id: String) -> ApiResult<VerifyView> {
        let conv = self.find_conversation(&id)?;
        let genesis = self.genesis.clone();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || crate::verify::verify(&genesis, &shared, conv))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)
    }

    async fn claim_handle(&self, name: String) -> ApiResult<TxView> {
        crate::account_ops::claim_handle(self, name).await
    }

    async fn devices(&self) -> ApiResult<Vec<DeviceView>> {
        crate::account_ops::devices(self).await
    }

    async fn add_device(&self, req: DeviceAddRequest) -> ApiResult<DeviceView> {
        crate::account_ops::add_device(self, req).await
    }

    async fn revoke_device(&self, device: String) -> ApiResult<TxView> {
        let (d, view) = crate::account_ops::revoke_device(self, device).await?;
        self.ask(|r| Job::Revoke(d, r)).await?;
        Ok(view)
    }

    async fn link_device(
        &self,
        q: crate::link_host::LinkQuery,
    ) -> ApiResult<crate::link_host::LinkStartView> {
        crate::link_host::start(self, self.links.clone(), q).await
    }

    async fn link_status(&self, link: String) -> ApiResult<crate::link_host::LinkStatusView> {
        crate::link_host::status(&self.links, &link)
    }

    async fn ledger_status(&self) -> ApiResult<LedgerStatusView> {
        crate::account_ops::ledger_status(self).await
    }

    async fn account(&self, who: String) -> ApiResult<AccountView> {
        crate::account_ops::account(self, who).await
    }

    async fn deliveries(&self, id: String) -> ApiResult<Vec<crate::api_history::DeliveryEntry>> {
        let conv = self.find_conversation(&id)?;
        let list = self.ask(|r| Job::Deliveries(conv, crate::api_history::DELIVERIES_MAX, r)).await?;
        Ok(crate::api_history::entries(list))
    }

    async fn balance(&self) -> ApiResult<crate::api_ledger::BalanceView> {
        crate::api_ledger::balance(self).await
    }

    async fn pay(
        &self,
        req: crate::api_ledger::PaymentRequest,
    ) -> Result<crate::api_ledger::PaymentView, crate::api_ledger::PaymentError> {
        crate::api_ledger::pay(self, req).await
    }

    async fn requests(&self) -> ApiResult<Vec<RequestView>> {
        Ok(self
            .shared
            .db
            .requests()?
            .into_iter()
            .map(|r| RequestView {
                id: hex::encode(r.conversation),
                inviter: r.inviter.to_text(),
                inviter_device: r.inviter_device.to_text(),
                received_at_ms: r.received_at_ms,
                members: r.members,
            })
            .collect())
    }

    async fn accept_request(&self, id: String) -> ApiResult<ConversationView> {
        let conv = self.find_request(&id)?;
        let joined = self.ask(|r| Job::AcceptRequest(conv, r)).await?;
        Ok(self.shared.conversation_view(&joined)?)
    }

    async fn decline_request(&self, id: String) -> ApiResult<()> {
        let conv = self.find_request(&id)?;
        self.ask(|r| Job::DeclineRequest(conv, r)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.shared.events.subscribe()
    }

    fn metrics(&self) -> String {
        self.shared.metrics.render()
    }

    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
    }
}

impl Service {
    /// Runs blocking ledger calls (for the account operations module).
    pub(crate) async fn ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LedgerClient, &Shared) -> Result<T, NodeError> + Send + 'static,
    ) -> ApiResult<T> {
        self.ledger_call(f).await
    }

    /// Shared state (for the account operations module).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The genesis (for the account operations module).
    pub(crate) fn genesis(&self) -> &Genesis {
        &self.genesis
    }
}
