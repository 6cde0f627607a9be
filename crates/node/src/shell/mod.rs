//! The I/O shell around the engine: the libp2p node (tokio), the actor thread that owns the
//! engine, the ledger worker thread, the commit submission worker thread, and the tasks that
//! connect them with bounded queues.
//!
//! ```text
//!  mesh events ──(net queue, lossless)──▶ actor ◀──(ops queue)── API calls, timer, workers
//!                                          │
//!           mesh task ◀──(mesh queue)──────┤ publish / subscribe / discard
//!           ledger worker ◀──(ledger queue)┤ anchors, handle look-ups
//!           commit worker ◀──(submit queue)┘ mining, submission, finality of MLS commits
//! ```

pub mod actor;
pub mod awaiting;
pub mod keypackages;
pub mod ledger;
pub mod ledger_relays;
pub mod order_cache;
pub mod sequencer;
pub mod work_prices;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_mls::ConversationId;
use cairn_net::node::{NodeEvent, NodeHandle};
use cairn_net::sync::SendStatus;
use cairn_proto::{AccountId, DeviceCert};
use tokio::sync::{Notify, broadcast, mpsc};

use self::actor::{Job, MeshCmd};
use self::keypackages::KeyPackages;
use crate::db::NodeDb;
use crate::engine::{Arrival, IdentityKeys};
use crate::error::NodeError;
use crate::model::{ConversationView, MemberView, StreamEvent};

/// Events kept for slow API stream listeners. Overflow policy: a listener that falls this far
/// behind gets a `lagged` event counting what it missed and re-reads the history with
/// `GET …/messages?after=`; nothing is lost from the local history.
pub const STREAM_EVENTS_MAX: usize = 4_096;

/// Conversations whose view is kept at most (one per conversation this device is in).
pub const CONVERSATIONS_MAX: usize = 100_000;

/// Wall-clock time, ms since the Unix epoch (the shell's clock; the core never reads it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the views need to know of a conversation (kept by the actor after each change).
#[derive(Debug, Clone, Default)]
pub struct ConvSnapshot {
    /// MLS epoch.
    pub epoch: u64,
    /// Whether this device is a member.
    pub active: bool,
    /// Member devices.
    pub members: Vec<DeviceCert>,
}

/// State shared by the shell's threads and the API façade.
pub struct Shared {
    /// This device's keys.
    pub identity: IdentityKeys,
    /// The node tables (read side for the API).
    pub db: NodeDb,
    /// The mesh.
    pub net: NodeHandle,
    /// API stream.
    pub events: broadcast::Sender<StreamEvent>,
    /// Wakes `messages?wait_ms` long polls.
    pub new_message: Notify,
    /// Latest finalized height seen (`u64::MAX`: none yet).
    pub ledger_height: AtomicU64,
    /// Account and device registered on the ledger.
    pub registered: AtomicBool,
    /// A tick is queued and not yet handled (ticks never pile up).
    pub tick_pending: AtomicBool,
    /// Shutting down.
    pub stopping: AtomicBool,
    /// Wakes `stopped()`.
    pub stop: Notify,
    /// This account's handle.
    pub handle: Mutex<Option<String>>,
    /// Other accounts' handles (see `ledger::HANDLES_MAX`).
    pub handles: Arc<Mutex<HashMap<AccountId, Option<String>>>>,
    /// Conversation views.
    pub convs: Mutex<HashMap<ConversationId, ConvSnapshot>>,
    /// Key packages seen on the mesh.
    pub key_packages: KeyPackages,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
    /// Peers the ledger clients fall back to when a validator cannot be dialled (`None`
    /// outside a tokio runtime).
    pub ledger_relays: Option<Arc<ledger_relays::PeerRelays>>,
}

impl Shared {
    /// A device's shared state at start: nothing seen of the ledger yet, no handles, no
    /// conversation views.
    pub fn new(
        identity: IdentityKeys,
        db: NodeDb,
        net: NodeHandle,
        events: broadcast::Sender<StreamEvent>,
    ) -> Self {
        let ledger_relays = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| Arc::new(ledger_relays::PeerRelays::new(net.clone(), rt)));
        Self {
            ledger_relays,
            identity,
            db,
            net,
            events,
            new_message: Notify::new(),
            ledger_height: AtomicU64::new(u64::MAX),
            registered: AtomicBool::new(false),
            tick_pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            handle: Mutex::new(None),
            handles: Arc::new(Mutex::new(HashMap::new())),
            convs: Mutex::new(HashMap::new()),
            key_packages: KeyPackages::default(),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// A ledger client for `genesis` that reaches validators through peers when it cannot
    /// dial them.
    pub fn ledger_client(
        &self,
        genesis: &cairn_ledger::genesis::Genesis,
    ) -> Result<cairn_ledger::rpc::LedgerClient, cairn_ledger::rpc::ClientError> {
        let client = cairn_ledger::rpc::LedgerClient::new(genesis)?;
        Ok(match &self.ledger_relays {
            Some(r) => client.with_relays(r.clone()),
            None => client,
        })
    }

    /// Publishes an API stream event.
    pub fn emit(&self, ev: StreamEvent) {
        if let StreamEvent::Message(m) = &ev {
            if m.sender == self.identity.account.to_text() {
                self.metrics.inc_messages_sent();
            } else {
                self.metrics.inc_messages_received();
                let lag = now_ms().saturating_sub(m.timestamp_ms);
                self.metrics.observe_delivery_latency(lag as f64 / 1000.0);
            }
            self.new_message.notify_waiters();
        }
        let ev = match ev {
            StreamEvent::Message(mut m) => {
                m.handle = self.account_handle(&m.sender);
                StreamEvent::Message(m)
            }
            other => other,
        };
        let _ = self.events.send(ev);
    }

    /// Sets this account's handle.
    pub fn set_handle(&self, h: Option<String>) {
        if let Ok(mut g) = self.handle.lock() {
            *g = h;
        }
    }

    /// Whether a handle look-up was done for `a`.
    pub fn knows_handle(&self, a: &AccountId) -> bool {
        *a == self.identity.account || self.handles.lock().map(|m| m.contains_key(a)).unwrap_or(false)
    }

    /// The cached handle of an account.
    pub fn cached_handle(&self, account: &AccountId) -> Option<String> {
        if *account == self.identity.account {
            return self.handle.lock().ok().and_then(|h| h.clone());
        }
        self.handles.lock().ok().and_then(|h| h.get(account).cloned().flatten())
    }

    fn account_handle(&self, text: &str) -> Option<String> {
        AccountId::from_text(text).ok().and_then(|a| self.cached_handle(&a))
    }

    /// Keeps a conversation's view.
    pub fn set_conversation(&self, id: ConversationId, snap: ConvSnapshot) {
        if let Ok(mut c) = self.convs.lock() {
            if c.len() >= CONVERSATIONS_MAX && !c.contains_key(&id) {
                tracing::warn!(
                    "more than {CONVERSATIONS_MAX} conversations: view of {} not kept",
                    hex::encode(id.0)
                );
                return;
            }
            c.insert(id, snap);
            let epochs = c.values().map(|s| s.epoch).sum::<u64>();
            self.metrics.set_mls(c.len(), epochs);
        }
    }

    /// A conversation's API view.
    pub fn conversation_view(&self, id: &ConversationId) -> Result<ConversationView, NodeError> {
        let snap = self
            .convs
            .lock()
            .map_err(|_| NodeError::Internal("lock".into()))?
            .get(id)
            .cloned()
            .ok_or(NodeError::UnknownConversation)?;
        // Accounts in order of their first device; one index look-up per device (a linear
        // search encoding every account's text made a 100-member view cost 10,000 encodings).
        let mut by_account: Vec<MemberView> = Vec::new();
        let mut index: HashMap<AccountId, usize> = HashMap::new();
        for cert in &snap.members {
            let device = cert.device.to_text();
            match index.get(&cert.account) {
                Some(&i) => by_account[i].devices.push(device),
                None => {
                    index.insert(cert.account, by_account.len());
                    by_account.push(MemberView {
                        account: cert.account.to_text(),
                        handle: self.cached_handle(&cert.account),
                        fingerprint: cert.account.fingerprint(),
                        devices: vec![device],
                    });
                }
            }
        }
        Ok(ConversationView {
            id: hex::encode(id.0),
            topic: hex::encode(id.topic().0),
            epoch: snap.epoch,
            active: snap.active,
            members: by_account,
            messages: self.db.count(&id.0)?,
        })
    }
}

/// Forwards mesh events: deliveries and acknowledgements to the actor (waiting when its queue
/// is full: lossless), key-package batches to their cache.
pub async fn pump_mesh_events(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<NodeEvent>,
    net: mpsc::Sender<Job>,
) {
    let limits = *shared.db.limits();
    while let Some(ev) = events.recv().await {
        let job = match ev {
            NodeEvent::Delivered { envelope, id, after_gap } => {
                if let Some(device) = shared.key_packages.device_of(&envelope.header.topic) {
                    shared.key_packages.offer(device, &envelope, &limits);
                    continue;
                }
                Job::Arrived(Box::new(Arrival { id, envelope: *envelope, after_gap }))
            }
            NodeEvent::Status { id, status } => {
                let (acks, stored) = match status {
                    SendStatus::Stored { acks } => (acks as u32, true),
                    SendStatus::Retrying { acks, .. } => (acks as u32, false),
                    SendStatus::Sent => (0, false),
                };
                Job::Status { id, acks, stored }
            }
        };
        if net.send(job).await.is_err() {
            return;
        }
    }
}

/// Publications handed to the mesh and not yet answered, at most (below the mesh's own lane of
/// 256); beyond it the runner waits for answers before taking more commands.
const PUBLISH_IN_FLIGHT_MAX: usize = 128;

/// Performs the actor's mesh commands in order. Publications are queued in order and answered
/// later, so a burst is committed and pushed together instead of one local fsync each.
pub async fn run_mesh_commands(net: NodeHandle, mut cmds: mpsc::Receiver<MeshCmd>) {
    use futures::StreamExt;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let log = |r: Result<Result<cairn_proto::Id, cairn_net::node::NodeError>, _>| match r {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("publish: {e} (kept in the outbox, pushed again at the next start)"),
        Err(_) => tracing::warn!("publish: the mesh stopped (kept in the outbox)"),
    };
    loop {
        let cmd = tokio::select! {
            Some(r) = in_flight.next(), if !in_flight.is_empty() => { log(r); continue; }
            cmd = cmds.recv() => match cmd { Some(c) => c, None => break },
        };
        match cmd {
            MeshCmd::Publish(env) => {
                while in_flight.len() >= PUBLISH_IN_FLIGHT_MAX {
                    if let Some(r) = in_flight.next().await {
                        log(r);
                    }
                }
                match net.publish_queued(*env).await {
                    Ok(answer) => in_flight.push(answer),
                    Err(e) => {
                        tracing::warn!("publish: {e} (kept in the outbox, pushed again at the next start)")
                    }
                }
            }
            MeshCmd::Subscribe(topic) => {
                if let Err(e) = net.subscribe(topic).await {
                    tracing::warn!("subscribe: {e}");
                }
            }
            MeshCmd::RegisteredStores(stores) => match net.set_registered_stores(stores).await {
                Ok(n) => tracing::debug!("placing topics on {n} ledger-registered store nodes"),
                Err(e) => tracing::warn!("registered store nodes: {e}"),
            },
            MeshCmd::Erase { topic, id, secret } => {
                let history = net.history().clone();
                match tokio::task::spawn_blocking(move || history.erase_payload(&id)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("erasing {} in the local history: {e}", id.short()),
                    Err(e) => tracing::warn!("erasing {} in the local history: {e}", id.short()),
                }
                if let Some(secret) = secret {
                    let _ = net.erase_at_stores(topic, id, secret).await;
                }
            }
            MeshCmd::Discard(ids) => {
                let history = net.history().clone();
                let n = ids.len();
                match tokio::task::spawn_blocking(move || history.remove(&ids)).await {
                    Ok(Ok(removed)) => tracing::debug!("discarded {removed} of {n} junk envelopes"),
                    Ok(Err(e)) => tracing::warn!("discarding junk: {e}"),
                    Err(e) => tracing::warn!("discarding junk: {e}"),
                }
            }
        }
    }
    while let Some(r) = in_flight.next().await {
        log(r);
    }
}

/// Queues a tick every `tick_ms` (never more than one pending), and starts the task that
/// feeds the engine the mesh's proof-of-work prices ([`work_prices::run_work_prices`]).
pub async fn run_timer(shared: Arc<Shared>, ops: mpsc::Sender<Job>, tick_ms: u64) {
    tokio::spawn(work_prices::run_work_prices(shared.clone(), ops.clone()));
    let mut iv = tokio::time::interval(Duration::from_millis(tick_ms.max(10)));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        if !shared.tick_pending.swap(true, Ordering::AcqRel) && ops.send(Job::Tick).await.is_err() {
            return;
        }
    }
}
