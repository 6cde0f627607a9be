//! The user's node: one account's device on the mesh, in MLS conversations ordered by the
//! ledger. Implements [`Backend`] for the local API.
//!
//! Shape: the P2P node (`cairn-net`) runs on tokio; all MLS state and ledger round trips live
//! in one blocking *actor* thread that owns the [`cairn_mls::Client`] and the ledger clients
//! (MLS operations are synchronous and a commit waits for finality). Async handlers send the
//! actor jobs and await the reply; an event task feeds it envelopes from the mesh; a timer
//! asks it to follow the ledger (new commits, anchors, scheduled key updates).
//!
//! On the wire: a conversation envelope's payload is a padded MLS application message whose
//! plaintext is a signed [`Message`] (so `verify` can later check every sender signature and
//! parent link without decrypting twice: the plaintext is kept in `node.redb`). The body of the
//! inner message starts with a kind byte: text or delivery receipt. Key packages are published
//! as signed plain envelopes on a per-device topic; Welcomes go to the invitee's inbox topic.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_crypto::Identity;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{ClientError, LedgerClient, LedgerSequencer, RemoteOutcome};
use cairn_ledger::state::{AnchorRecord, StateKey};
use cairn_ledger::tx::{Tx, TxBody, TxError, normalize_handle};
use cairn_mls::{
    Client as MlsClient, Config as MlsConfig, ConversationId, DeviceSigner, Event as MlsEvent,
    KeyPackageBatch, MlsError, Received, VerifiedKeyPackage, WelcomeOut, inbox_topic,
};
use cairn_net::node::{NodeEvent, NodeHandle};
use cairn_net::sync::SendStatus;
use cairn_proto::codec::{Reader, Writer};
use cairn_proto::envelope::{pad, unpad};
use cairn_proto::history::{Opener, Problem};
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{
    AccountId, Anchor, DeviceCert, DeviceId, Envelope, Id, Limits, Message, Topic, VerifyOptions,
};
use ed25519_dalek::SigningKey;
use redb::Database;
use tokio::sync::{Notify, broadcast, oneshot};
use tracing::{debug, info, warn};

use crate::backend::{ApiError, ApiResult, Backend};
use crate::db::NodeDb;
use crate::model::{
    AccountView, ConversationView, DeliveryView, DeviceAddRequest, DeviceView, LedgerStatusView, MemberView,
    MessageView, SendResult, StatusView, StreamEvent, TailQuery, TxView, ValidatorView, VerifyView,
};

/// Kind byte of a text message body.
const KIND_TEXT: u8 = 1;
/// Kind byte of a delivery receipt body.
const KIND_RECEIPT: u8 = 2;
/// Ids per receipt.
const RECEIPT_IDS_MAX: usize = 128;
/// Receipt batches are at least this many ms × members² apart.
const RECEIPT_PACE_MS_PER_MEMBER2: u64 = 2;
/// Longest text message, bytes.
pub const TEXT_BYTES_MAX: usize = 64 * 1024;
/// Key packages per published batch (plus one last-resort package).
const KEY_PACKAGES_PER_BATCH: usize = 16;

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
    /// Period of the ledger-following timer, ms.
    pub tick_ms: u64,
    /// A member anchors its conversation head on the ledger at most this often, ms.
    pub anchor_every_ms: u64,
    /// How long to wait for a member's key packages to arrive from store nodes, ms.
    pub key_package_wait_ms: u64,
    /// Handle to claim once the account is registered (if it has none).
    pub handle: Option<String>,
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
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Topic on which a device publishes its key packages.
pub fn key_package_topic(device: &DeviceId) -> Topic {
    Topic(blake3::derive_key("cairn 2026-11 key package topic v1", &device.0))
}

fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("ledger: {e} (are the validators running? see `cairn ledger status`)"))
}

fn mls_err(e: MlsError) -> ApiError {
    match e {
        MlsError::UnknownConversation => ApiError::NotFound("no such conversation on this device".into()),
        MlsError::Sequencer(s) => ApiError::Unavailable(format!("commit sequencer (ledger): {s}")),
        other => ApiError::Conflict(other.to_string()),
    }
}

/// Delivery bookkeeping of one sent text message.
#[derive(Debug, Clone)]
struct Delivery {
    conversation: ConversationId,
    stored_on: u32,
    receipts: HashSet<AccountId>,
    members: u32,
    sent_ms: u64,
}

impl Delivery {
    fn view(&self) -> DeliveryView {
        let delivered_to = self.receipts.len() as u32;
        let state = if self.members > 0 && delivered_to >= self.members {
            "delivered"
        } else if self.stored_on > 0 {
            "stored"
        } else {
            "sent"
        };
        DeliveryView { state: state.into(), stored_on: self.stored_on, delivered_to, members: self.members }
    }
}

/// What the views need to know of a conversation (kept by the actor after each change).
#[derive(Debug, Clone, Default)]
struct ConvSnapshot {
    epoch: u64,
    active: bool,
    members: Vec<DeviceCert>,
}

/// The newest key-package batch seen from a device: its timestamp and the encoded packages.
type KeyPackageEntry = (u64, Vec<Vec<u8>>);

struct Inner {
    identity: IdentityKeys,
    net: NodeHandle,
    db: NodeDb,
    genesis: Genesis,
    roles: Vec<String>,
    limits: Limits,
    jobs: std_mpsc::Sender<Job>,
    events: broadcast::Sender<StreamEvent>,
    new_message: Notify,
    ledger_height: AtomicU64,
    registered: AtomicBool,
    handle: Mutex<Option<String>>,
    handles: Mutex<HashMap<AccountId, Option<String>>>,
    key_packages: Mutex<HashMap<DeviceId, KeyPackageEntry>>,
    kp_topics: Mutex<HashMap<Topic, DeviceId>>,
    deliveries: Mutex<HashMap<Id, Delivery>>,
    convs: Mutex<HashMap<ConversationId, ConvSnapshot>>,
    tick_pending: AtomicBool,
    stop: Notify,
    stopping: AtomicBool,
    metrics: crate::metrics::Metrics,
}

#[derive(Clone)]
struct IdentityKeys {
    account: AccountId,
    device: DeviceId,
    cert: DeviceCert,
    account_key: SigningKey,
    device_key: SigningKey,
}

type Reply<T> = oneshot::Sender<ApiResult<T>>;

enum Job {
    Create(Vec<AccountId>, Reply<ConversationId>),
    Add(ConversationId, Vec<AccountId>, Reply<()>),
    Remove(ConversationId, AccountId, Reply<()>),
    Leave(ConversationId, Reply<()>),
    Send(ConversationId, String, Reply<SendResult>),
    Received(Topic, Box<Envelope>, Id, bool),
    Revoke(DeviceId, Reply<()>),
    Tick,
    Stop,
}

/// A running user node.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// Starts the node: P2P, the MLS actor, the ledger follower. `identity` is the unlocked
    /// keystore of `cfg.home`.
    pub async fn start(cfg: ServiceConfig, identity: Identity) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&cfg.home)?;
        let limits = cfg.net.admission.limits;
        let db = Arc::new(Database::create(cfg.home.join("node.redb"))?);
        let node_db = NodeDb::new(db.clone(), limits).map_err(|e| anyhow::anyhow!("{e}"))?;
        let keys = IdentityKeys {
            account: identity.account(),
            device: identity.device(),
            cert: identity.cert,
            account_key: identity.account_key.clone(),
            device_key: identity.device_key.clone(),
        };
        let signer = DeviceSigner::new(keys.device_key.clone(), keys.cert)
            .map_err(|e| anyhow::anyhow!("device certificate: {e}"))?;
        let mls = MlsClient::open(db.clone(), signer, MlsConfig::default())
            .map_err(|e| anyhow::anyhow!("MLS state: {e}"))?;
        let net = cairn_net::node::start(cfg.net.clone()).await?;
        let (jobs, rx) = std_mpsc::channel();
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            identity: keys,
            net,
            db: node_db,
            genesis: cfg.genesis.clone(),
            roles: cfg.roles.clone(),
            limits,
            jobs,
            events,
            new_message: Notify::new(),
            ledger_height: AtomicU64::new(u64::MAX),
            registered: AtomicBool::new(false),
            handle: Mutex::new(None),
            handles: Mutex::new(HashMap::new()),
            key_packages: Mutex::new(HashMap::new()),
            kp_topics: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(HashMap::new()),
            convs: Mutex::new(HashMap::new()),
            tick_pending: AtomicBool::new(false),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            metrics: crate::metrics::Metrics::new(),
        });
        let service = Service { inner: inner.clone() };
        // Follow the inbox and every conversation before anything arrives.
        let mut net_events = inner.net.events();
        inner.net.subscribe(inbox_topic(&inner.identity.device)).await?;
        for id in mls.conversations() {
            inner.net.subscribe(id.topic()).await?;
        }
        let actor = Actor::new(inner.clone(), mls, &cfg)?;
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new().name("cairn-actor".into()).spawn(move || actor.run(rx, rt))?;
        // Mesh events → actor / caches.
        let ev_inner = inner.clone();
        tokio::spawn(async move {
            loop {
                match net_events.recv().await {
                    Ok(ev) => ev_inner.on_net_event(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!("dropped {n} mesh events (they are re-read from local history on restart)")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        // Ledger-following timer.
        let tick_inner = inner.clone();
        let tick = Duration::from_millis(cfg.tick_ms.max(10));
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                if tick_inner.stopping.load(Ordering::Relaxed) {
                    break;
                }
                if !tick_inner.tick_pending.swap(true, Ordering::AcqRel)
                    && tick_inner.jobs.send(Job::Tick).is_err()
                {
                    break;
                }
            }
        });
        info!(account = %inner.identity.account.to_text(), device = %inner.identity.device.to_text(), "node service started");
        Ok(service)
    }

    /// The P2P node.
    pub fn net(&self) -> &NodeHandle {
        &self.inner.net
    }

    /// Resolves when [`Backend::shutdown`] was called.
    pub async fn stopped(&self) {
        if self.inner.stopping.load(Ordering::Acquire) {
            return;
        }
        self.inner.stop.notified().await;
    }

    /// Stops the actor and the P2P node (stores closed).
    pub async fn close(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        let _ = self.inner.jobs.send(Job::Stop);
        self.inner.net.shutdown().await;
    }

    async fn ask<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Job) -> ApiResult<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.jobs.send(make(tx)).map_err(|_| ApiError::Unavailable("the node is stopping".into()))?;
        rx.await.map_err(|_| ApiError::Unavailable("the node is stopping".into()))?
    }

    fn find_conversation(&self, id: &str) -> ApiResult<ConversationId> {
        let id = id.trim().to_ascii_lowercase();
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::BadRequest(format!(
                "'{id}' is not a conversation id: give its hex id or at least 8 leading hex digits (see `cairn chat list`)"
            )));
        }
        let convs = self.inner.convs.lock().map_err(|_| ApiError::Internal("lock".into()))?;
        let found: Vec<ConversationId> =
            convs.keys().filter(|c| hex32(&c.0).starts_with(&id)).copied().collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(ApiError::NotFound(format!(
                "no conversation {id} on this device (see `cairn chat list`)"
            ))),
            _ => Err(ApiError::BadRequest(format!("'{id}' names several conversations: give more digits"))),
        }
    }

    async fn resolve_members(&self, members: Vec<String>) -> ApiResult<Vec<AccountId>> {
        if members.is_empty() {
            return Err(ApiError::BadRequest("name at least one member (account id or @handle)".into()));
        }
        let genesis = self.inner.genesis.clone();
        let me = self.inner.identity.account;
        tokio::task::spawn_blocking(move || {
            let mut client = LedgerClient::new(&genesis).map_err(unavailable)?;
            let mut out = Vec::new();
            for m in members {
                let a = resolve_account(&mut client, &m)?;
                if a != me && !out.contains(&a) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    fn conversation_view(&self, id: &ConversationId) -> ApiResult<ConversationView> {
        let snap = self
            .inner
            .convs
            .lock()
            .map_err(|_| ApiError::Internal("lock".into()))?
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound("no such conversation on this device".into()))?;
        let mut by_account: Vec<MemberView> = Vec::new();
        for cert in &snap.members {
            let device = cert.device.to_text();
            match by_account.iter_mut().find(|m| m.account == cert.account.to_text()) {
                Some(m) => m.devices.push(device),
                None => by_account.push(MemberView {
                    account: cert.account.to_text(),
                    handle: self.inner.cached_handle(&cert.account),
                    devices: vec![device],
                }),
            }
        }
        Ok(ConversationView {
            id: hex32(&id.0),
            topic: hex32(&id.topic().0),
            epoch: snap.epoch,
            active: snap.active,
            members: by_account,
            messages: self.inner.db.count(&id.0)?,
        })
    }

    fn message_view(&self, conv: &ConversationId, s: &crate::db::Stored) -> MessageView {
        self.inner.message_view(conv, s.seq, &s.id, &s.message, s.after_gap)
    }

    async fn ledger_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LedgerClient, &Inner) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = LedgerClient::new(&inner.genesis).map_err(unavailable)?;
            f(&mut client, &inner)
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }
}

/// Retries a ledger read a few times: a validator may briefly have no proof to serve (e.g.
/// while it applies a block), and another may be down.
fn read_retry<T>(mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut attempt = 0u64;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 5 => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
        }
    }
}

fn resolve_account(client: &mut LedgerClient, who: &str) -> ApiResult<AccountId> {
    let who = who.trim();
    if let Some(h) = who.strip_prefix('@') {
        let name = normalize_handle(h).map_err(|e| ApiError::BadRequest(format!("@{h}: {e}")))?;
        return read_retry(|| client.handle_owner(&name))
            .map_err(unavailable)?
            .ok_or_else(|| ApiError::NotFound(format!("@{name} is not registered on the ledger")));
    }
    AccountId::from_text(who).map_err(|e| {
        ApiError::BadRequest(format!("'{who}' is neither an account id (cairn1…) nor a @handle: {e}"))
    })
}

/// Submits a transaction signed by `key` for `account`, retrying on nonce races; waits for
/// finality. Refusals and failed effects become clear errors.
fn submit_tx(
    client: &mut LedgerClient,
    account: AccountId,
    key: &SigningKey,
    body: TxBody,
    timeout: Duration,
) -> ApiResult<(Tx, u64, RemoteOutcome)> {
    let signer = key.verifying_key().to_bytes();
    let mut last = ApiError::Unavailable("ledger: no attempt".into());
    for attempt in 0..5u64 {
        let nonce = client.nonce(&signer).map_err(unavailable)?;
        let tx = Tx::sign(client.chain(), account, key, nonce, body.clone());
        let id = match client.submit(&tx.encode()) {
            Ok(id) => id,
            Err(ClientError::Refused { code, message }) => {
                last = ApiError::Conflict(format!("ledger refused the transaction: {message}"));
                let nonce_race = code == (TxError::NonceReplayed { expected: 0, got: 0 }).code()
                    || code == (TxError::NonceSkipped { expected: 0, got: 0 }).code();
                if !nonce_race {
                    return Err(last);
                }
                std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
                continue;
            }
            Err(e) => return Err(unavailable(e)),
        };
        match client.wait_final(&id, timeout) {
            Ok((height, RemoteOutcome::Failed { message, .. })) => {
                return Err(ApiError::Conflict(format!("ledger (height {height}): {message}")));
            }
            Ok((height, outcome)) => return Ok((tx, height, outcome)),
            Err(ClientError::Refused { message, .. }) => {
                last = ApiError::Conflict(format!("ledger refused the transaction: {message}"));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(last)
}

impl Inner {
    fn cached_handle(&self, account: &AccountId) -> Option<String> {
        if *account == self.identity.account {
            return self.handle.lock().ok().and_then(|h| h.clone());
        }
        self.handles.lock().ok().and_then(|h| h.get(account).cloned().flatten())
    }

    fn message_view(
        &self,
        conv: &ConversationId,
        seq: u64,
        id: &Id,
        m: &Message,
        after_gap: bool,
    ) -> MessageView {
        let text = match m.body.split_first() {
            Some((&KIND_TEXT, rest)) => String::from_utf8_lossy(rest).into_owned(),
            _ => String::new(),
        };
        MessageView {
            seq,
            id: id.to_hex(),
            conversation: hex32(&conv.0),
            sender: m.sender.account.to_text(),
            device: m.sender.device.to_text(),
            handle: self.cached_handle(&m.sender.account),
            timestamp_ms: m.timestamp_ms,
            text,
            parents: m.parents.iter().map(Id::to_hex).collect(),
            after_gap,
        }
    }

    fn on_net_event(&self, ev: NodeEvent) {
        match ev {
            NodeEvent::Delivered { envelope, id, after_gap } => {
                let topic = envelope.header.topic;
                let kp_device = self.kp_topics.lock().ok().and_then(|m| m.get(&topic).copied());
                if let Some(device) = kp_device {
                    self.cache_key_packages(device, &envelope);
                    return;
                }
                let _ = self.jobs.send(Job::Received(topic, envelope, id, after_gap));
            }
            NodeEvent::Status { id, status } => {
                let stored_on = match status {
                    SendStatus::Stored { acks } => acks as u32,
                    SendStatus::Retrying { acks, .. } => acks as u32,
                    SendStatus::Sent => 0,
                };
                let mut d = match self.deliveries.lock() {
                    Ok(d) => d,
                    Err(_) => return,
                };
                if let Some(entry) = d.get_mut(&id)
                    && stored_on > entry.stored_on
                {
                    entry.stored_on = stored_on;
                    let _ = self.events.send(StreamEvent::Delivery {
                        id: id.to_hex(),
                        conversation: hex32(&entry.conversation.0),
                        delivery: entry.view(),
                    });
                }
            }
        }
    }

    /// Keeps the newest valid key-package batch each device published.
    fn cache_key_packages(&self, device: DeviceId, env: &Envelope) {
        let Some(payload) = &env.payload else { return };
        let Ok(plain) = unpad(payload) else { return };
        let Ok(m) = Message::decode(plain, &self.limits) else { return };
        if m.verify().is_err() || m.sender.device != device || m.header_mismatch(&env.header).is_some() {
            warn!("ignored a key-package envelope not signed by {}", device.to_text());
            return;
        }
        let Ok(batch) = KeyPackageBatch::decode(&m.body) else { return };
        if let Ok(mut cache) = self.key_packages.lock() {
            let newer = cache.get(&device).is_none_or(|(ts, _)| *ts < m.timestamp_ms);
            if newer {
                cache.insert(device, (m.timestamp_ms, batch.packages));
            }
        }
    }

    /// Seals, mines and publishes an envelope; returns its id once stored locally.
    fn publish(&self, rt: &tokio::runtime::Handle, mut env: Envelope) -> ApiResult<Id> {
        if pow::mine(&mut env.header, Difficulty::default(), 1 << 26).is_none() {
            return Err(ApiError::Internal("proof of work not found".into()));
        }
        rt.block_on(self.net.publish(env)).map_err(|e| ApiError::Unavailable(format!("mesh: {e}")))
    }

    fn publish_signed(
        &self,
        rt: &tokio::runtime::Handle,
        topic: Topic,
        body: Vec<u8>,
        ttl: u32,
    ) -> ApiResult<Id> {
        let k = &self.identity;
        let m = Message::sign(&k.device_key, k.cert, topic, now_ms(), vec![], body);
        let env = m.seal_plain(ttl, &self.limits).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        self.publish(rt, env)
    }
}

/// Per-conversation chain state kept by the actor.
#[derive(Default)]
struct Chain {
    loaded: bool,
    heads: BTreeSet<Id>,
    parents: HashMap<Id, Vec<Id>>,
    /// Ids some known envelope names as a parent (an arriving one of these is not a head).
    referenced: HashSet<Id>,
    /// The head added last: the one anchored (its ancestry is, in practice, the widest).
    newest_head: Option<Id>,
    anchored: u64,
    last_anchor_ms: u64,
    /// Readable later (MLS buffered them for a future epoch).
    pending: Vec<(Id, Envelope, bool)>,
    receipts_due: Vec<Id>,
    last_receipt_ms: u64,
}

impl Chain {
    fn add(&mut self, id: Id, parents: &[Id]) {
        if self.parents.contains_key(&id) {
            return;
        }
        for p in parents {
            self.heads.remove(p);
            self.referenced.insert(*p);
        }
        if !self.referenced.contains(&id) {
            self.heads.insert(id);
            self.newest_head = Some(id);
        }
        self.parents.insert(id, parents.to_vec());
    }

    /// The head to anchor: the newest one still a head, else the first.
    fn anchor_head(&self) -> Option<Id> {
        self.newest_head.filter(|h| self.heads.contains(h)).or_else(|| self.heads.first().copied())
    }

    /// Size of the ancestry of `head`, itself included, over known envelopes.
    fn ancestry(&self, head: &Id) -> u64 {
        let mut seen = HashSet::new();
        let mut stack = vec![*head];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(ps) = self.parents.get(&id) {
                stack.extend(ps.iter().copied());
            }
        }
        seen.len() as u64
    }
}

struct Actor {
    inner: Arc<Inner>,
    mls: MlsClient,
    sequencer: LedgerSequencer,
    ledger: LedgerClient,
    chains: HashMap<ConversationId, Chain>,
    used_packages: HashSet<Vec<u8>>,
    ttl_secs: u32,
    anchor_every_ms: u64,
    kp_wait: Duration,
    last_height: u64,
    last_register_try: Option<Instant>,
    published_packages: bool,
    wanted_handle: Option<String>,
}

impl Actor {
    fn new(inner: Arc<Inner>, mls: MlsClient, cfg: &ServiceConfig) -> anyhow::Result<Self> {
        let client = LedgerClient::new(&cfg.genesis)?.with_timeout(Duration::from_secs(3));
        let seq_client = LedgerClient::new(&cfg.genesis)?.with_timeout(Duration::from_secs(3));
        let sequencer =
            LedgerSequencer::new(seq_client, inner.identity.account, inner.identity.device_key.clone())
                .with_timeout(Duration::from_secs(20));
        Ok(Self {
            inner,
            mls,
            sequencer,
            ledger: client,
            chains: HashMap::new(),
            used_packages: HashSet::new(),
            ttl_secs: cfg.ttl_secs,
            anchor_every_ms: cfg.anchor_every_ms,
            kp_wait: Duration::from_millis(cfg.key_package_wait_ms),
            last_height: 0,
            last_register_try: None,
            published_packages: false,
            wanted_handle: cfg.handle.clone(),
        })
    }

    fn run(mut self, rx: std_mpsc::Receiver<Job>, rt: tokio::runtime::Handle) {
        for id in self.mls.conversations() {
            self.snapshot(&id);
            self.sync(&id);
            self.replay_history(id);
        }
        while let Ok(job) = rx.recv() {
            match job {
                Job::Stop => break,
                Job::Tick => {
                    self.tick(&rt);
                    self.inner.tick_pending.store(false, Ordering::Release);
                }
                Job::Received(topic, env, id, after_gap) => self.received(&rt, topic, *env, id, after_gap),
                Job::Create(members, reply) => {
                    let r = self.create(&rt, members);
                    let _ = reply.send(r);
                }
                Job::Add(conv, members, reply) => {
                    let r = self.add_members(&rt, conv, members);
                    let _ = reply.send(r);
                }
                Job::Remove(conv, account, reply) => {
                    let r = self.ensure_registered(&rt).and_then(|_| {
                        self.sync(&conv);
                        self.mls
                            .remove_account(&conv, account, &mut self.sequencer, now_ms())
                            .map_err(mls_err)
                            .and_then(|o| match o {
                                Some(_) => Ok(()),
                                None => Err(ApiError::NotFound(format!(
                                    "{} is not a member of this conversation",
                                    account.to_text()
                                ))),
                            })
                    });
                    self.snapshot(&conv);
                    let _ = reply.send(r);
                }
                Job::Leave(conv, reply) => {
                    let r = self.ensure_registered(&rt).and_then(|_| {
                        self.mls.leave(&conv, &mut self.sequencer, now_ms()).map(|_| ()).map_err(mls_err)
                    });
                    self.snapshot(&conv);
                    let _ = reply.send(r);
                }
                Job::Send(conv, text, reply) => {
                    let r = self.send_text(&rt, conv, text);
                    let _ = reply.send(r);
                }
                Job::Revoke(device, reply) => {
                    let now = now_ms();
                    for (conv, r) in self.mls.revoke_device_everywhere(&device, &mut self.sequencer, now) {
                        if let Err(e) = r {
                            warn!("could not remove the revoked device from {}: {e}", hex32(&conv.0));
                        }
                        self.snapshot(&conv);
                    }
                    let _ = reply.send(Ok(()));
                }
            }
        }
        debug!("actor stopped");
    }

    fn snapshot(&mut self, id: &ConversationId) {
        let snap = ConvSnapshot {
            epoch: self.mls.epoch(id).unwrap_or(0),
            active: self.mls.is_active(id).unwrap_or(false),
            members: self.mls.members(id).unwrap_or_default(),
        };
        if let Ok(mut c) = self.inner.convs.lock() {
            c.insert(*id, snap);
        }
        let accounts: Vec<AccountId> = self
            .mls
            .member_accounts(id)
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !self.has_handle(a))
            .collect();
        for a in accounts {
            let h = self.ledger.account(&a).ok().flatten().and_then(|acc| acc.handle);
            if let Ok(mut m) = self.inner.handles.lock() {
                m.insert(a, h);
            }
        }
        let (epochs, n) = match self.inner.convs.lock() {
            Ok(c) => (c.values().map(|s| s.epoch).sum::<u64>(), c.len()),
            Err(_) => (0, 0),
        };
        self.inner.metrics.set_mls(n, epochs);
    }

    fn has_handle(&self, a: &AccountId) -> bool {
        self.inner.handles.lock().map(|m| m.contains_key(a)).unwrap_or(false)
    }

    /// Registers the account and this device on the ledger (once), then publishes key
    /// packages.
    fn ensure_registered(&mut self, rt: &tokio::runtime::Handle) -> ApiResult<()> {
        if self.inner.registered.load(Ordering::Acquire) {
            return Ok(());
        }
        let k = self.inner.identity.clone();
        let timeout = Duration::from_secs(30);
        let ledger = &mut self.ledger;
        let account = read_retry(|| ledger.account(&k.account)).map_err(unavailable)?;
        let account = match account {
            Some(a) => a,
            None => {
                info!("registering account {} on the ledger", k.account.to_text());
                submit_tx(&mut self.ledger, k.account, &k.account_key, TxBody::RegisterAccount, timeout)?;
                self.ledger
                    .account(&k.account)
                    .map_err(unavailable)?
                    .ok_or_else(|| ApiError::Unavailable("account not visible after registration".into()))?
            }
        };
        if let Ok(mut h) = self.inner.handle.lock() {
            h.clone_from(&account.handle);
        }
        if account.devices.iter().any(|d| d.device == k.device && d.revoked) {
            return Err(ApiError::Conflict(
                "this device was revoked on the ledger: it can no longer send; create a new device".into(),
            ));
        }
        if !account.active_devices().contains(&k.device) {
            info!("registering device {} on the ledger", k.device.to_text());
            submit_tx(
                &mut self.ledger,
                k.account,
                &k.account_key,
                TxBody::AddDevice { cert: k.cert },
                timeout,
            )?;
        }
        if account.handle.is_none()
            && let Some(name) = self.wanted_handle.clone()
        {
            info!("claiming @{name}");
            submit_tx(
                &mut self.ledger,
                k.account,
                &k.account_key,
                TxBody::ClaimHandle { name: name.clone() },
                timeout,
            )?;
            if let Ok(mut h) = self.inner.handle.lock() {
                *h = Some(name);
            }
        }
        self.inner.registered.store(true, Ordering::Release);
        if !self.published_packages {
            self.publish_key_packages(rt)?;
        }
        Ok(())
    }

    fn publish_key_packages(&mut self, rt: &tokio::runtime::Handle) -> ApiResult<()> {
        let batch = self
            .mls
            .key_package_batch(KEY_PACKAGES_PER_BATCH, true)
            .map_err(|e| ApiError::Internal(format!("key packages: {e}")))?;
        let topic = key_package_topic(&self.inner.identity.device);
        self.inner.publish_signed(rt, topic, batch.encode(), 14 * 24 * 3600)?;
        self.published_packages = true;
        debug!("published {} key packages", batch.packages.len());
        Ok(())
    }

    /// One key package of each active device of `account`, fetched from the mesh.
    fn key_packages_of(
        &mut self,
        rt: &tokio::runtime::Handle,
        account: &AccountId,
    ) -> ApiResult<Vec<VerifiedKeyPackage>> {
        let ledger = &mut self.ledger;
        let devices = read_retry(|| ledger.devices(account)).map_err(unavailable)?.ok_or_else(|| {
            ApiError::NotFound(format!("{} is not registered on the ledger", account.to_text()))
        })?;
        let mut out = Vec::new();
        for d in devices {
            if d == self.inner.identity.device {
                continue;
            }
            let wait = self.kp_wait;
            out.push(self.key_package_of(rt, &d, wait)?);
        }
        if out.is_empty() {
            return Err(ApiError::NotFound(format!("{} has no active device", account.to_text())));
        }
        Ok(out)
    }

    fn key_package_of(
        &mut self,
        rt: &tokio::runtime::Handle,
        device: &DeviceId,
        wait: Duration,
    ) -> ApiResult<VerifiedKeyPackage> {
        let topic = key_package_topic(device);
        let fresh =
            self.inner.kp_topics.lock().map(|mut m| m.insert(topic, *device).is_none()).unwrap_or(false);
        if fresh {
            // Whatever the local history already holds, then what the store nodes have.
            if let Ok(page) = self.inner.net.history().page(&topic, 0, 256) {
                for (_, env) in page.entries {
                    self.inner.cache_key_packages(*device, &env);
                }
            }
            rt.block_on(self.inner.net.subscribe(topic)).map_err(|e| ApiError::Unavailable(e.to_string()))?;
        }
        let deadline = Instant::now() + wait;
        let mut last_page = Instant::now();
        loop {
            if last_page.elapsed() > Duration::from_secs(2) {
                // Ask the store nodes again (gossip may have missed a fresh batch).
                last_page = Instant::now();
                let _ = rt.block_on(self.inner.net.subscribe(topic));
            }
            let batch =
                self.inner.key_packages.lock().ok().and_then(|c| c.get(device).map(|(_, b)| b.clone()));
            if let Some(packages) = batch {
                let mut last_resort = None;
                for p in packages {
                    let Ok(v) = cairn_mls::verify_key_package(&p) else { continue };
                    if v.cert.device != *device {
                        continue;
                    }
                    if v.last_resort {
                        last_resort = Some(v);
                    } else if self.used_packages.insert(p) {
                        return Ok(v);
                    }
                }
                if let Some(v) = last_resort {
                    return Ok(v);
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "no key packages of device {} arrived from store nodes: is that user's node running and connected?",
                    device.to_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn publish_welcomes(&mut self, rt: &tokio::runtime::Handle, welcome: &WelcomeOut) {
        for (device, topic) in &welcome.recipients {
            if let Err(e) = self.inner.publish_signed(rt, *topic, welcome.bytes.clone(), self.ttl_secs) {
                warn!("could not send the Welcome to {}: {e}", device.to_text());
            }
        }
    }

    fn create(&mut self, rt: &tokio::runtime::Handle, members: Vec<AccountId>) -> ApiResult<ConversationId> {
        self.ensure_registered(rt)?;
        let mut packages = Vec::new();
        for a in &members {
            packages.extend(self.key_packages_of(rt, a)?);
        }
        // This account's other devices join too.
        let own = self.inner.identity.account;
        if let Ok(own_kps) = self.key_packages_of(rt, &own) {
            packages.extend(own_kps);
        }
        let id = self.mls.create(now_ms()).map_err(mls_err)?;
        rt.block_on(self.inner.net.subscribe(id.topic()))
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        self.snapshot(&id);
        if !packages.is_empty() {
            let outcomes =
                self.mls.add_many(&id, packages, &mut self.sequencer, now_ms()).map_err(mls_err)?;
            for o in &outcomes {
                if let Some(w) = &o.welcome {
                    self.publish_welcomes(rt, w);
                }
            }
        }
        self.snapshot(&id);
        if let Ok(v) = self.view(&id) {
            let _ = self.inner.events.send(StreamEvent::Joined { conversation: v });
        }
        Ok(id)
    }

    fn view(&self, id: &ConversationId) -> ApiResult<ConversationView> {
        Service { inner: self.inner.clone() }.conversation_view(id)
    }

    fn add_members(
        &mut self,
        rt: &tokio::runtime::Handle,
        id: ConversationId,
        members: Vec<AccountId>,
    ) -> ApiResult<()> {
        self.ensure_registered(rt)?;
        self.sync(&id);
        let present = self.mls.member_accounts(&id).map_err(mls_err)?;
        let mut packages = Vec::new();
        for a in members.iter().filter(|a| !present.contains(a)) {
            packages.extend(self.key_packages_of(rt, a)?);
        }
        if packages.is_empty() {
            return Err(ApiError::Conflict("every named account is already a member".into()));
        }
        let outcomes = self.mls.add_many(&id, packages, &mut self.sequencer, now_ms()).map_err(mls_err)?;
        for o in &outcomes {
            if let Some(w) = &o.welcome {
                self.publish_welcomes(rt, w);
            }
        }
        self.snapshot(&id);
        Ok(())
    }

    fn chain(&mut self, id: &ConversationId) -> &mut Chain {
        let history = self.inner.net.history().clone();
        let c = self.chains.entry(*id).or_default();
        if !c.loaded {
            c.loaded = true;
            let topic = id.topic();
            let mut from = 0;
            for _ in 0..100_000 {
                let Ok(page) = history.page(&topic, from, 256) else { break };
                for (_, env) in &page.entries {
                    c.add(env.id(), &env.header.parents);
                }
                match page.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        c
    }

    fn parents_for(&mut self, id: &ConversationId) -> Vec<Id> {
        let max = self.inner.limits.parents_max;
        self.chain(id).heads.iter().rev().take(max).copied().collect()
    }

    /// Signs, encrypts, stores and publishes one inner message; returns the envelope id.
    fn send_inner(
        &mut self,
        rt: &tokio::runtime::Handle,
        conv: &ConversationId,
        body: Vec<u8>,
    ) -> ApiResult<(Id, Message)> {
        let topic = conv.topic();
        let parents = self.parents_for(conv);
        let k = &self.inner.identity;
        let now = now_ms();
        let inner = Message::sign(&k.device_key, k.cert, topic, now, parents.clone(), body);
        let ct = self.mls.send(conv, &inner.encode()).map_err(mls_err)?;
        let padded = pad(&ct, &self.inner.limits).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut env = Envelope::new(topic, now, self.ttl_secs, inner.parents.clone(), padded);
        if pow::mine(&mut env.header, Difficulty::default(), 1 << 26).is_none() {
            return Err(ApiError::Internal("proof of work not found".into()));
        }
        let id = env.id();
        let text = inner.body.first() == Some(&KIND_TEXT);
        // Durable before it leaves: the plaintext is kept for history verification.
        self.inner.db.accept(&conv.0, &id, &inner, text, false)?;
        self.chain(conv).add(id, &inner.parents);
        rt.block_on(self.inner.net.publish(env)).map_err(|e| ApiError::Unavailable(format!("mesh: {e}")))?;
        Ok((id, inner))
    }

    fn send_text(
        &mut self,
        rt: &tokio::runtime::Handle,
        conv: ConversationId,
        text: String,
    ) -> ApiResult<SendResult> {
        if text.len() > TEXT_BYTES_MAX {
            return Err(ApiError::BadRequest(format!(
                "text is {} bytes; the limit is {TEXT_BYTES_MAX}",
                text.len()
            )));
        }
        // Encrypt in the newest epoch the ledger has sequenced: a member added a moment ago
        // can only read messages of epochs it is in.
        self.sync(&conv);
        if !self.mls.is_active(&conv).map_err(mls_err)? {
            return Err(ApiError::Conflict("this device is no longer a member of that conversation".into()));
        }
        let mut body = Vec::with_capacity(text.len() + 1);
        body.push(KIND_TEXT);
        body.extend_from_slice(text.as_bytes());
        let (id, inner) = self.send_inner(rt, &conv, body)?;
        let me = self.inner.identity.account;
        let members =
            self.mls.member_accounts(&conv).unwrap_or_default().into_iter().filter(|a| *a != me).count()
                as u32;
        let delivery = Delivery {
            conversation: conv,
            stored_on: 0,
            receipts: HashSet::new(),
            members,
            sent_ms: inner.timestamp_ms,
        };
        let view = delivery.view();
        if let Ok(mut d) = self.inner.deliveries.lock() {
            if d.len() > 100_000 {
                let oldest: Vec<Id> =
                    d.iter().filter(|(_, v)| v.sent_ms + 3_600_000 < now_ms()).map(|(k, _)| *k).collect();
                for k in oldest {
                    d.remove(&k);
                }
            }
            d.insert(id, delivery);
        }
        self.inner.metrics.inc_messages_sent();
        let seq = self.inner.db.count(&conv.0).unwrap_or(0);
        let mv = self.inner.message_view(&conv, seq, &id, &inner, false);
        let _ = self.inner.events.send(StreamEvent::Message(mv));
        self.inner.new_message.notify_waiters();
        Ok(SendResult { id: id.to_hex(), delivery: view })
    }

    fn conversation_of(&self, topic: &Topic) -> Option<ConversationId> {
        self.mls.conversations().into_iter().find(|c| c.topic() == *topic)
    }

    fn received(
        &mut self,
        rt: &tokio::runtime::Handle,
        topic: Topic,
        env: Envelope,
        id: Id,
        after_gap: bool,
    ) {
        if topic == inbox_topic(&self.inner.identity.device) {
            self.welcome(rt, &env);
            return;
        }
        let Some(conv) = self.conversation_of(&topic) else {
            debug!("envelope on an unknown topic ignored");
            return;
        };
        self.chain(&conv).add(id, &env.header.parents);
        if self.inner.db.has_plain(&id).unwrap_or(false) {
            return; // own message, or already read
        }
        self.open(conv, id, env, after_gap, true);
    }

    /// Decrypts and accepts one conversation envelope.
    fn open(&mut self, conv: ConversationId, id: Id, env: Envelope, after_gap: bool, may_sync: bool) {
        let Some(payload) = env.payload.as_ref() else { return };
        let Ok(ct) = unpad(payload) else {
            warn!("conversation envelope {} has bad padding", id.short());
            return;
        };
        match self.mls.receive(&conv, ct) {
            Ok(Received::Message(d)) => self.accept(conv, id, &env, d.sender, &d.body, after_gap),
            Ok(Received::Buffered) => {
                self.chain(&conv).pending.push((id, env, after_gap));
                if may_sync {
                    self.sync(&conv);
                }
            }
            Ok(Received::Dropped(reason)) => debug!("message {} dropped: {reason:?}", id.short()),
            Err(e) => debug!("message {} unreadable here: {e}", id.short()),
        }
    }

    fn accept(
        &mut self,
        conv: ConversationId,
        id: Id,
        env: &Envelope,
        sender: DeviceCert,
        body: &[u8],
        after_gap: bool,
    ) {
        let m = match Message::decode(body, &self.inner.limits) {
            Ok(m) => m,
            Err(e) => {
                warn!("message {} has a malformed inner message: {e}", id.short());
                return;
            }
        };
        if m.verify().is_err() || m.sender != sender || m.header_mismatch(&env.header).is_some() {
            warn!("message {} refused: inner signature, sender or header mismatch", id.short());
            return;
        }
        match m.body.first() {
            Some(&KIND_TEXT) => {
                let seq = match self.inner.db.accept(&conv.0, &id, &m, true, after_gap) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("cannot store message {}: {e}", id.short());
                        return;
                    }
                };
                self.inner.metrics.inc_messages_received();
                self.inner
                    .metrics
                    .observe_delivery_latency(now_ms().saturating_sub(m.timestamp_ms) as f64 / 1000.0);
                let view = self.inner.message_view(&conv, seq, &id, &m, after_gap);
                let _ = self.inner.events.send(StreamEvent::Message(view));
                self.inner.new_message.notify_waiters();
                self.chain(&conv).receipts_due.push(id);
            }
            Some(&KIND_RECEIPT) => {
                let _ = self.inner.db.accept(&conv.0, &id, &m, false, after_gap);
                let mut r = Reader::new(&m.body[1..]);
                let n = r.u16("receipt.count").unwrap_or(0) as usize;
                let mut d = match self.inner.deliveries.lock() {
                    Ok(d) => d,
                    Err(_) => return,
                };
                for _ in 0..n.min(RECEIPT_IDS_MAX) {
                    let Ok(acked) = r.array::<32>("receipt.id") else { break };
                    if let Some(entry) = d.get_mut(&Id(acked))
                        && entry.receipts.insert(m.sender.account)
                    {
                        let _ = self.inner.events.send(StreamEvent::Delivery {
                            id: Id(acked).to_hex(),
                            conversation: hex32(&conv.0),
                            delivery: entry.view(),
                        });
                    }
                }
            }
            _ => {
                let _ = self.inner.db.accept(&conv.0, &id, &m, false, after_gap);
            }
        }
    }

    fn welcome(&mut self, rt: &tokio::runtime::Handle, env: &Envelope) {
        let Some(payload) = &env.payload else { return };
        let Ok(plain) = unpad(payload) else { return };
        let Ok(m) = Message::decode(plain, &self.inner.limits) else {
            warn!("malformed envelope on the inbox ignored");
            return;
        };
        if m.verify().is_err() {
            warn!("inbox envelope with a bad signature ignored");
            return;
        }
        let id = match self.mls.join(&m.body, now_ms()) {
            Ok(id) => id,
            Err(e) => {
                debug!("welcome not joined: {e}");
                return;
            }
        };
        info!("joined conversation {} (invited by {})", hex32(&id.0), m.sender.account.to_text());
        if let Err(e) = rt.block_on(self.inner.net.subscribe(id.topic())) {
            warn!("cannot follow the conversation: {e}");
        }
        self.sync(&id);
        // Our used key package is gone: publish a fresh batch.
        if let Err(e) = self.publish_key_packages(rt) {
            warn!("cannot publish fresh key packages: {e}");
        }
        // Read what arrived before we joined the conversation's topic.
        self.replay_history(id);
        self.snapshot(&id);
        if let Ok(v) = self.view(&id) {
            let _ = self.inner.events.send(StreamEvent::Joined { conversation: v });
        }
    }

    /// Opens every envelope of the conversation's local history that this device has not
    /// accepted yet: the mesh marks an envelope delivered once it is durable in its history,
    /// which may be before this node read it (a stop in between). Readable ones are accepted
    /// (exactly once: accepted ids are skipped), the others are left for `verify` to check as
    /// structure.
    fn replay_history(&mut self, id: ConversationId) {
        // This walk also builds the chain: mark it loaded so `chain()` does not page the same
        // history a second time.
        self.chains.entry(id).or_default().loaded = true;
        let topic = id.topic();
        let mut from = 0;
        let history = self.inner.net.history().clone();
        for _ in 0..100_000 {
            let Ok(page) = history.page(&topic, from, 256) else { break };
            for (_, env) in page.entries {
                let eid = env.id();
                self.chain(&id).add(eid, &env.header.parents);
                if !self.inner.db.has_plain(&eid).unwrap_or(true) {
                    self.open(id, eid, env, false, false);
                }
            }
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
    }

    /// Applies newly sequenced handshakes of a conversation, then retries buffered messages.
    fn sync(&mut self, conv: &ConversationId) {
        let events = match self.mls.sync(conv, &self.sequencer, now_ms()) {
            Ok(e) => e,
            Err(e) => {
                debug!("sync of {}: {e}", hex32(&conv.0));
                return;
            }
        };
        let mut changed = false;
        for ev in events {
            match ev {
                MlsEvent::Commit { .. } | MlsEvent::RemovedSelf { .. } => changed = true,
                MlsEvent::LeaveProposed { .. } => {
                    changed = true;
                    if let Err(e) = self.mls.commit_pending(conv, &mut self.sequencer, now_ms()) {
                        debug!("committing a leave: {e}");
                    }
                }
                MlsEvent::Skipped { seq, reason } => {
                    warn!("handshake {seq} skipped by every member: {reason}")
                }
                MlsEvent::Message(Received::Message(d)) => {
                    // A buffered message became readable: find its envelope by its header.
                    if let Ok(m) = Message::decode(&d.body, &self.inner.limits) {
                        let chain = self.chain(conv);
                        if let Some(pos) =
                            chain.pending.iter().position(|(_, e, _)| m.header_mismatch(&e.header).is_none())
                        {
                            let (id, env, gap) = chain.pending.remove(pos);
                            self.accept(*conv, id, &env, d.sender, &d.body, gap);
                        }
                    }
                }
                MlsEvent::Message(_) => {}
            }
        }
        if changed {
            self.snapshot(conv);
        }
    }

    fn tick(&mut self, rt: &tokio::runtime::Handle) {
        if !self.inner.registered.load(Ordering::Acquire) {
            let due = self.last_register_try.is_none_or(|t| t.elapsed() > Duration::from_secs(2));
            if due {
                self.last_register_try = Some(Instant::now());
                if let Err(e) = self.ensure_registered(rt) {
                    debug!("not registered yet: {e}");
                }
            }
        }
        let height = match self.ledger.status() {
            Ok(s) => s.height,
            Err(_) => return,
        };
        self.inner.ledger_height.store(height, Ordering::Relaxed);
        self.inner.metrics.set_ledger_height(height);
        let now = now_ms();
        let convs: Vec<ConversationId> =
            self.mls.conversations().into_iter().filter(|c| self.mls.is_active(c).unwrap_or(false)).collect();
        if height != self.last_height {
            self.last_height = height;
            for c in &convs {
                self.sync(c);
            }
        }
        for c in &convs {
            self.flush_receipts(rt, c);
            self.maybe_anchor(c, now);
        }
        for c in self.mls.conversations_due(now) {
            if let Err(e) = self.mls.self_update(&c, &mut self.sequencer, now) {
                debug!("scheduled key update of {}: {e}", hex32(&c.0));
            }
            self.snapshot(&c);
        }
        self.pending_devices(rt);
    }

    fn flush_receipts(&mut self, rt: &tokio::runtime::Handle, conv: &ConversationId) {
        if self.chain(conv).receipts_due.is_empty() {
            return;
        }
        // Every member decrypts every receipt, so a group of m members costs each member
        // (m-1)/every receipt decryptions per second. Pacing at m² × 2 ms (at most 30 s) keeps
        // that below one per 2·m ms: 3 members every tick, 10 every 200 ms, 100 every 20 s.
        // (Receipts sent to the sender alone would make this linear; see ARCHITECTURE.md.)
        let now = now_ms();
        let members = self.mls.member_count(conv).unwrap_or(2) as u64;
        let every = members.saturating_mul(members).saturating_mul(RECEIPT_PACE_MS_PER_MEMBER2).min(30_000);
        if now.saturating_sub(self.chain(conv).last_receipt_ms) < every {
            return;
        }
        self.chain(conv).last_receipt_ms = now;
        let due: Vec<Id> = std::mem::take(&mut self.chain(conv).receipts_due);
        for chunk in due.chunks(RECEIPT_IDS_MAX) {
            let mut w = Writer::with_capacity(3 + 32 * chunk.len());
            w.u8(KIND_RECEIPT);
            w.u16(chunk.len() as u16);
            for id in chunk {
                w.raw(&id.0);
            }
            if let Err(e) = self.send_inner(rt, conv, w.finish()) {
                debug!("receipt not sent: {e}");
            }
        }
    }

    fn maybe_anchor(&mut self, conv: &ConversationId, now: u64) {
        let every = self.anchor_every_ms;
        let chain = self.chain(conv);
        if now.saturating_sub(chain.last_anchor_ms) < every {
            return;
        }
        chain.last_anchor_ms = now;
        // One traversal per anchor (not one per head: with a hundred members writing at once
        // there are as many heads, and this ran every 5 s over the whole history).
        let Some(head) = chain.anchor_head() else {
            return;
        };
        let count = chain.ancestry(&head);
        if count <= chain.anchored {
            return;
        }
        let k = self.inner.identity.clone();
        let body = TxBody::Anchor { topic: conv.topic(), head, count };
        // Signed by the device key (nonce stream shared with the sequencer, which re-reads it).
        match submit_tx(&mut self.ledger, k.account, &k.device_key, body, Duration::from_secs(10)) {
            Ok(_) => self.chain(conv).anchored = count,
            Err(e) => debug!("anchor not recorded: {e}"),
        }
    }

    fn pending_devices(&mut self, rt: &tokio::runtime::Handle) {
        let Ok(pending) = self.inner.db.pending_devices() else { return };
        for d in pending {
            let device = DeviceId(d);
            let mut done = true;
            for conv in self.mls.conversations() {
                if !self.mls.is_active(&conv).unwrap_or(false) {
                    continue;
                }
                if self.mls.members(&conv).unwrap_or_default().iter().any(|c| c.device == device) {
                    continue;
                }
                let kp = match self.key_package_of(rt, &device, Duration::from_secs(3)) {
                    Ok(kp) => kp,
                    Err(_) => {
                        done = false;
                        break;
                    }
                };
                match self.mls.add(&conv, vec![kp], &mut self.sequencer, now_ms()) {
                    Ok(Some(o)) => {
                        if let Some(w) = &o.welcome {
                            self.publish_welcomes(rt, w);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        use cairn_proto::CommitSequencer as _;
                        let sequenced =
                            self.sequencer.fetch(&conv.topic(), 0, 100_000).map(|v| v.len()).unwrap_or(0);
                        warn!(
                            "adding device {} to {}: {e} (applied here {}, sequenced on the ledger {sequenced})",
                            device.to_text(),
                            hex32(&conv.0),
                            self.mls.applied(&conv).unwrap_or(0)
                        );
                        done = false;
                    }
                }
                self.snapshot(&conv);
            }
            if done {
                let _ = self.inner.db.set_pending_device(&d, false, now_ms());
            }
        }
    }
}

/// Opens payloads from the plaintexts kept at receipt.
struct KeptOpener<'a> {
    db: &'a NodeDb,
}

impl Opener for KeptOpener<'_> {
    fn open(&mut self, envelope: &Envelope, _payload: &[u8]) -> Result<Vec<u8>, String> {
        match self.db.plain(&envelope.id()) {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("not readable on this device".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn describe(p: &Problem, entries: &[(Id, Envelope)]) -> String {
    let name = |i: usize| entries.get(i).map(|(id, _)| id.to_hex()).unwrap_or_else(|| format!("#{i}"));
    match p {
        Problem::IdMismatch { index, .. } => {
            format!("envelope {}: id does not match its header", name(*index))
        }
        other => format!("{other:?}"),
    }
}

impl Backend for Service {
    async fn status(&self) -> ApiResult<StatusView> {
        let s = self.inner.net.status().await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let h = self.inner.ledger_height.load(Ordering::Relaxed);
        self.inner.metrics.set_peers(s.peers);
        self.inner.metrics.set_envelopes_relayed(s.relayed);
        self.inner.metrics.set_envelopes_stored(s.store_envelopes);
        let k = &self.inner.identity;
        Ok(StatusView {
            account: k.account.to_text(),
            device: k.device.to_text(),
            fingerprint: k.account.fingerprint(),
            handle: self.inner.cached_handle(&k.account),
            peer_id: s.peer_id.to_string(),
            p2p: self.inner.net.listen_addrs.iter().map(ToString::to_string).collect(),
            peers: s.peers,
            store_peers: s.store_peers,
            ledger_height: (h != u64::MAX).then_some(h),
            mailbox_backlog: s.mailbox.envelopes,
            pending_sends: s.pending.len(),
            conversations: self.inner.convs.lock().map(|c| c.len()).unwrap_or(0),
            roles: self.inner.roles.clone(),
        })
    }

    async fn create_conversation(&self, members: Vec<String>) -> ApiResult<ConversationView> {
        let members = self.resolve_members(members).await?;
        let id = self.ask(|r| Job::Create(members, r)).await?;
        self.conversation_view(&id)
    }

    async fn conversations(&self) -> ApiResult<Vec<ConversationView>> {
        let ids: Vec<ConversationId> =
            self.inner.convs.lock().map_err(|_| ApiError::Internal("lock".into()))?.keys().copied().collect();
        ids.iter().map(|id| self.conversation_view(id)).collect()
    }

    async fn conversation(&self, id: String) -> ApiResult<ConversationView> {
        let id = self.find_conversation(&id)?;
        self.conversation_view(&id)
    }

    async fn add_members(&self, id: String, members: Vec<String>) -> ApiResult<ConversationView> {
        let conv = self.find_conversation(&id)?;
        let members = self.resolve_members(members).await?;
        self.ask(|r| Job::Add(conv, members, r)).await?;
        self.conversation_view(&conv)
    }

    async fn remove_member(&self, id: String, member: String) -> ApiResult<ConversationView> {
        let conv = self.find_conversation(&id)?;
        let mut members = self.resolve_members(vec![member]).await?;
        let Some(account) = members.pop() else {
            return Err(ApiError::BadRequest("to leave a conversation use `cairn chat leave`".into()));
        };
        self.ask(|r| Job::Remove(conv, account, r)).await?;
        self.conversation_view(&conv)
    }

    async fn leave(&self, id: String) -> ApiResult<()> {
        let conv = self.find_conversation(&id)?;
        self.ask(|r| Job::Leave(conv, r)).await
    }

    async fn send(&self, id: String, text: String) -> ApiResult<SendResult> {
        let conv = self.find_conversation(&id)?;
        self.ask(|r| Job::Send(conv, text, r)).await
    }

    async fn messages(&self, id: String, query: TailQuery) -> ApiResult<Vec<MessageView>> {
        let conv = self.find_conversation(&id)?;
        let after = query.after.unwrap_or(0);
        let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
        let deadline = Instant::now() + Duration::from_millis(query.wait_ms.unwrap_or(0).min(60_000));
        loop {
            let notified = self.inner.new_message.notified();
            let rows = self.inner.db.messages(&conv.0, after, limit)?;
            if !rows.is_empty() || Instant::now() >= deadline {
                return Ok(rows.iter().map(|s| self.message_view(&conv, s)).collect());
            }
            let _ = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), notified).await;
        }
    }

    async fn verify(&self, id: String) -> ApiResult<VerifyView> {
        let conv = self.find_conversation(&id)?;
        let topic = conv.topic();
        let anchor = self
            .ledger_call(move |c, _| {
                read_retry(|| c.prove(&StateKey::Anchor(topic)))
                    .map_err(unavailable)?
                    .map(|b| AnchorRecord::decode(&b).map_err(|e| ApiError::Internal(e.to_string())))
                    .transpose()
            })
            .await?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let history = inner.net.history();
            let mut entries: Vec<(Id, Envelope)> = Vec::new();
            let mut from = 0;
            loop {
                let page = history.page(&topic, from, 256).map_err(|e| ApiError::Internal(e.to_string()))?;
                for (_, mut env) in page.entries {
                    let id = env.id();
                    // Envelopes from before this device joined: structure only.
                    if !inner.db.has_plain(&id)? {
                        env.erase();
                    }
                    entries.push((id, env));
                }
                match page.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            let anchors: Vec<Anchor> =
                anchor.iter().map(|a| Anchor { head: a.head, count: a.count }).collect();
            let mut opener = KeptOpener { db: &inner.db };
            let report = cairn_proto::verify(
                &topic,
                &entries,
                VerifyOptions {
                    opener: Some(&mut opener),
                    members: None,
                    anchors: &anchors,
                    limits: inner.limits,
                },
            );
            Ok(VerifyView {
                intact: report.is_intact(),
                envelopes: report.envelopes,
                signatures_verified: report.signatures_verified,
                anchors: anchors.len(),
                erased: report.erased.len(),
                first_problem: report.problems.first().map(|p| describe(p, &entries)),
                problems: report.problems.len(),
            })
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
    }

    async fn claim_handle(&self, name: String) -> ApiResult<TxView> {
        let raw = name.trim().trim_start_matches('@').to_owned();
        let name = normalize_handle(&raw).map_err(|e| ApiError::BadRequest(format!("@{raw}: {e}")))?;
        let (tx, height) = self
            .ledger_call(move |c, inner| {
                let k = &inner.identity;
                let (tx, height, _) = submit_tx(
                    c,
                    k.account,
                    &k.account_key,
                    TxBody::ClaimHandle { name: name.clone() },
                    Duration::from_secs(30),
                )?;
                if let Ok(mut h) = inner.handle.lock() {
                    *h = Some(name);
                }
                Ok((tx, height))
            })
            .await?;
        Ok(TxView { tx: hex32(&tx.id().0), height })
    }

    async fn devices(&self) -> ApiResult<Vec<DeviceView>> {
        self.ledger_call(|c, inner| {
            let me = inner.identity.device;
            let devices =
                read_retry(|| c.devices(&inner.identity.account)).map_err(unavailable)?.unwrap_or_default();
            Ok(devices
                .into_iter()
                .map(|d| DeviceView { device: d.to_text(), this_device: d == me })
                .collect())
        })
        .await
    }

    async fn add_device(&self, req: DeviceAddRequest) -> ApiResult<DeviceView> {
        if req.passphrase.is_empty() {
            return Err(ApiError::BadRequest("the new device's keystore needs a passphrase".into()));
        }
        self.ledger_call(move |c, inner| {
            let home = PathBuf::from(&req.home);
            let ks = home.join("keystore");
            if ks.exists() {
                return Err(ApiError::Conflict(format!(
                    "{} already holds a keystore; nothing was changed",
                    home.display()
                )));
            }
            let k = &inner.identity;
            let device_key = SigningKey::from_bytes(
                &cairn_crypto::keystore::random_bytes::<32>()
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            let device = DeviceId(device_key.verifying_key().to_bytes());
            let cert = DeviceCert::issue(&k.account_key, device, now_ms());
            let identity = Identity { account_key: k.account_key.clone(), device_key, cert };
            std::fs::create_dir_all(&home)
                .map_err(|e| ApiError::BadRequest(format!("{}: {e}", home.display())))?;
            identity
                .create_file(&ks, req.passphrase.as_bytes(), cairn_crypto::KdfParams::default())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            submit_tx(c, k.account, &k.account_key, TxBody::AddDevice { cert }, Duration::from_secs(30))?;
            inner.db.set_pending_device(&device.0, true, now_ms())?;
            Ok(DeviceView { device: device.to_text(), this_device: false })
        })
        .await
    }

    async fn revoke_device(&self, device: String) -> ApiResult<TxView> {
        let d = DeviceId::from_text(device.trim())
            .map_err(|e| ApiError::BadRequest(format!("'{device}' is not a device id (cairndev1…): {e}")))?;
        if d == self.inner.identity.device {
            return Err(ApiError::BadRequest(
                "this is the device you are using: revoke it from another one".into(),
            ));
        }
        let (tx, height) = self
            .ledger_call(move |c, inner| {
                let k = &inner.identity;
                let (tx, height, _) = submit_tx(
                    c,
                    k.account,
                    &k.account_key,
                    TxBody::RevokeDevice { device: d },
                    Duration::from_secs(30),
                )?;
                let _ = inner.db.set_pending_device(&d.0, false, now_ms());
                Ok((tx, height))
            })
            .await?;
        self.ask(|r| Job::Revoke(d, r)).await?;
        Ok(TxView { tx: hex32(&tx.id().0), height })
    }

    async fn ledger_status(&self) -> ApiResult<LedgerStatusView> {
        self.ledger_call(|c, inner| {
            let mut validators = Vec::new();
            for (i, v) in inner.genesis.validators.iter().enumerate() {
                validators.push(match c.status_at(i) {
                    Ok(s) => ValidatorView {
                        rpc: v.rpc.to_string(),
                        height: Some(s.height),
                        state_root: Some(hex32(&s.state_root)),
                        error: None,
                    },
                    Err(e) => ValidatorView {
                        rpc: v.rpc.to_string(),
                        height: None,
                        state_root: None,
                        error: Some(e.to_string()),
                    },
                });
            }
            Ok(LedgerStatusView { chain: hex32(&c.chain()), validators })
        })
        .await
    }

    async fn account(&self, who: String) -> ApiResult<AccountView> {
        self.ledger_call(move |c, _| {
            let id = resolve_account(c, &who)?;
            let account = read_retry(|| c.account(&id)).map_err(unavailable)?.ok_or_else(|| {
                ApiError::NotFound(format!("{} is not registered on the ledger", id.to_text()))
            })?;
            let height = c.status().map(|s| s.height).unwrap_or(0);
            Ok(AccountView {
                account: id.to_text(),
                handle: account.handle.clone(),
                devices: account.active_devices().iter().map(DeviceId::to_text).collect(),
                height,
                proof_verified: true,
            })
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<StreamEvent> {
        self.inner.events.subscribe()
    }

    fn metrics(&self) -> String {
        self.inner.metrics.render()
    }

    fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.stop.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn chain_heads_follow_links_in_any_arrival_order() {
        // 1 ← 2, 1 ← 3, {2,3} ← 4; the child 4 arrives before its parent 3.
        let mut c = Chain::default();
        c.add(id(1), &[]);
        c.add(id(2), &[id(1)]);
        assert_eq!(c.heads.iter().copied().collect::<Vec<_>>(), vec![id(2)]);
        c.add(id(4), &[id(2), id(3)]);
        c.add(id(3), &[id(1)]);
        assert_eq!(c.heads.iter().copied().collect::<Vec<_>>(), vec![id(4)], "3 is 4's parent: not a head");
        assert_eq!(c.anchor_head(), Some(id(4)));
        assert_eq!(c.ancestry(&id(4)), 4);
        assert_eq!(c.ancestry(&id(2)), 2);
        // A fork: 5 on top of 3 makes two heads; the newest is anchored.
        c.add(id(5), &[id(3)]);
        assert_eq!(c.heads.len(), 2);
        assert_eq!(c.anchor_head(), Some(id(5)));
        assert_eq!(c.ancestry(&id(5)), 3);
        // Re-adding is a no-op.
        c.add(id(5), &[id(3)]);
        assert_eq!(c.parents.len(), 5);
    }
}
