//! The actor: one task that owns the swarm and the state machines ([`Sync`], [`Admission`])
//! and runs the event loop. Network requests leave at once; history work is staged and handed
//! to the history writer, waiting for room when it is full (the must-deliver path: see
//! `events.rs`). What the swarm reports is handled in `network.rs` and `serve.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_proto::{Envelope, Id, Topic, pow};
use cairn_store::Store;
use futures::{FutureExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::kad::KBucketKey;
use libp2p::request_response::OutboundRequestId;
use libp2p::{PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::behaviour::Behaviour;
use super::config::NodeConfig;
use super::handle::Command;
use super::orphans::Orphans;
use super::peers::Book;
use super::relayed::RelayedListen;
use super::stem_hop::StemHop;
use super::writer::{Committed, HistoryJob, HistoryLanes, MailboxLane, MailboxQueue, OWN_JOBS_MAX, OwnJob};
use super::{NodeError, NodeStatus, StemStatus, now_ms};
use crate::shard::{RegisteredStore, SHARDS, shard_name, shard_of};
use crate::sync::{Input, Output, Sync};
use crate::validate::{Admission, RateLimiter, SeenIds};
use crate::wire::Request;

/// History jobs staged in the actor, at most, before it stops taking handle commands while it
/// waits for the writer. Staged jobs are the outputs of inputs already taken (one swarm event
/// yields at most a page plus the envelopes it unblocks, ≤ `waiting_envelopes_max` + 256);
/// the stage is emptied before the next turn of the loop, and a turn takes more ready swarm
/// events only while fewer than `DRAIN_STAGED_MAX` jobs are staged.
const STAGED_JOBS_MAX: usize = 16_384;
/// Swarm events taken in one turn of the loop, at most, when more are ready: the store
/// requests they cause leave together, one per store node (a stem hop that fluffed a burst of
/// relayed envelopes pushes them in one request to each store node, not one request each).
const SWARM_DRAIN_MAX: usize = 32;
/// Staged history jobs above which a turn takes no more ready swarm events.
const DRAIN_STAGED_MAX: usize = 256;

/// Own publication ids remembered as queued for the local history, at most (oldest forgotten;
/// by then they are committed and in the sync state's delivered set).
const OWN_QUEUED_MAX: usize = 65_536;
/// Committed results taken in one go, at most: own publications committed together leave in
/// one store-many request per store node.
const COMMITTED_DRAIN_MAX: usize = 64;

/// What a request to a store node was for, to read its answer.
pub(super) enum Outbound {
    Store(Vec<Id>),
    Page(Topic),
    /// A page of ids (`resync.rs`).
    PageIds(Topic),
    Ids,
    Erase(Id),
    /// Relayed stem envelopes fluffed here, pushed to a store node (`stem_hop.rs`).
    StemStore(Vec<Id>),
}

/// Whether the loop goes on after waiting for the writer.
enum Flow {
    Go,
    Stop(Option<oneshot::Sender<()>>),
}

/// The actor's state.
pub(super) struct Node {
    pub(super) config: NodeConfig,
    pub(super) swarm: Swarm<Behaviour>,
    history: Arc<Store>,
    pub(super) mailbox: Option<Arc<Store>>,
    history_jobs: Option<mpsc::Sender<HistoryJob>>,
    own_jobs: Option<mpsc::Sender<OwnJob>>,
    pub(super) mailbox_jobs: Option<MailboxQueue>,
    threads: Vec<JoinHandle<()>>,
    /// History jobs waiting for room in the writer's queue; see `STAGED_JOBS_MAX`.
    pub(super) staged: VecDeque<HistoryJob>,
    /// Store requests of the current turn, per store node, sent (batched) before the next
    /// turn; bounded by what one turn's events (≤ `SWARM_DRAIN_MAX`, or one drain of committed
    /// results) yield.
    pub(super) store_batches: HashMap<PeerId, Vec<Envelope>>,
    /// Relayed envelopes this turn fluffed, per store node, pushed (batched) before the next
    /// turn (`stem_hop.rs`); bounded like `store_batches`.
    pub(super) relayed_batches: HashMap<PeerId, Vec<Envelope>>,
    pub(super) sync: Sync<PeerId>,
    pub(super) admission: Admission<PeerId>,
    /// Own envelopes waiting for their parents before they are written locally (`orphans.rs`).
    orphans: Orphans,
    /// Ids of own publications handed to the history writer's own lane, the last
    /// `OWN_QUEUED_MAX`.
    own_queued: SeenIds,
    /// Ids of held own envelopes released to the delivery lane, the last `OWN_QUEUED_MAX`.
    /// Kept apart from `own_queued`: the own lane is written ahead of the delivery lane, so a
    /// child must not take it while its parent waits in the delivery lane.
    orphans_released: SeenIds,
    /// Store nodes that answered "full", until when they are passed over (ms); at most
    /// `connections_max`, expired entries dropped at each insert.
    pub(super) full_stores: HashMap<PeerId, u64>,
    /// Per-peer rate of envelopes offered for storage (store nodes).
    pub(super) store_rate: RateLimiter<PeerId>,
    /// Per-peer rate of page and by-id reads (store nodes).
    pub(super) read_rate: RateLimiter<PeerId>,
    /// Store nodes among connected peers, with their Kademlia key: at most `connections_max`
    /// (added on identify while connected, removed when the last connection closes).
    pub(super) store_peers: HashMap<PeerId, [u8; 32]>,
    /// Store nodes registered on the ledger, as last fed by the application (at most
    /// `registry::REGISTERED_STORES_MAX`): when not empty, topics are placed on these only.
    pub(super) registered: Vec<RegisteredStore<PeerId>>,
    /// Serving: the accept meter and fill level the asked-for proof of work follows.
    pub(super) load: super::serve::Load,
    /// Sending: the proof of work store nodes asked for (`NeedsWork`), at most
    /// `connections_max` stores, each for `DEMAND_KEEP_MS`.
    pub(super) demands: super::pow_load::Demands,
    /// Followed topics, at most `sync.topics_max` (a further subscription is refused).
    pub(super) subscribed: HashSet<Topic>,
    /// Requests in flight, at most `OUTBOUND_REQUESTS_MAX`; each leaves on its answer or failure
    /// (request-response times out after 10 s).
    pub(super) outbound: HashMap<OutboundRequestId, (PeerId, Outbound)>,
    pub(super) counters: Counters,
    /// What anti-entropy read from store nodes (`resync.rs`).
    pub(super) resync: super::resync::ResyncStatus,
    /// The peer book and its redial schedule (`peers.rs`), unless disabled.
    pub(super) book: Option<Book>,
    /// The listener through `listen_via_relay` and its retry schedule (`relayed.rs`).
    pub(super) relayed: RelayedListen,
    /// The stem phase (`stem_hop.rs`), unless `config.stem` is off.
    pub(super) stem: Option<StemHop>,
    /// Preferring near peers (`nearness.rs`), unless `config.nearness` is off.
    pub(super) near: Option<super::nearness::NearState>,
    /// A light client's streams to its service nodes (`light_client.rs`).
    pub(super) light: Option<super::light_client::LightClient>,
    /// Serving light clients (`light_serve.rs`).
    pub(super) light_hub: Option<super::light_serve::SharedHub>,
    /// Gossip shards joined for light clients' buckets (at most `SHARDS`).
    pub(super) light_shards_joined: HashSet<u16>,
    /// Where the light tasks reach the actor.
    pub(super) light_tx: Option<mpsc::Sender<super::light_serve::LightInput>>,
    /// TCP traffic counters (`traffic.rs`).
    pub(super) traffic: Arc<super::traffic::Counters>,
}

/// Figures for `status`.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) relayed: u64,
    pub(super) rejected: u64,
    pub(super) ignored: u64,
    pub(super) store_commits: u64,
    pub(super) store_envelopes: u64,
    pub(super) requests_shed: u64,
    pub(super) erasures_confirmed: u64,
}

/// The loop's timers.
struct Timers {
    tick: Interval,
    resync: Interval,
}

impl Timers {
    fn new(c: &NodeConfig) -> Self {
        let tick = tokio::time::interval(Duration::from_millis(c.tick_ms.max(10)));
        let resync_ms = if c.resync_every_ms == 0 { u64::MAX / 4 } else { c.resync_every_ms };
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(resync_ms),
            Duration::from_millis(resync_ms.max(100)),
        );
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick, resync }
    }
}

pub(super) fn key_of(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&KBucketKey::new(bytes.to_vec()).hashed_bytes()[..32]);
    out
}

/// The Kademlia key of a peer (XOR placement of topics on store nodes).
pub(super) fn peer_key(p: &PeerId) -> [u8; 32] {
    key_of(&p.to_bytes())
}

/// Where the receipt of `store` for `id` is kept in the local history's named values.
pub(super) fn receipt_key(id: &Id, store: &PeerId) -> String {
    format!("receipt/{}/{store}", id.to_hex())
}

fn cursor_key(topic: &Topic, store: &PeerId) -> String {
    format!("cursor/{}/{store}", topic.to_hex())
}

impl Node {
    /// The actor around a built swarm and started writers.
    pub(super) fn new(
        config: NodeConfig,
        swarm: Swarm<Behaviour>,
        history: Arc<Store>,
        mailbox: Option<Arc<Store>>,
        history_lanes: HistoryLanes,
        mailbox_lane: Option<MailboxLane>,
    ) -> Self {
        let mut threads = vec![history_lanes.thread];
        let mailbox_jobs = mailbox_lane.map(|l| {
            threads.push(l.thread);
            l.queue
        });
        Self {
            sync: Sync::new(config.sync, [], []),
            admission: Admission::new(config.admission),
            full_stores: HashMap::new(),
            orphans: Orphans::default(),
            own_queued: SeenIds::new(OWN_QUEUED_MAX),
            orphans_released: SeenIds::new(OWN_QUEUED_MAX),
            store_rate: RateLimiter::new(
                config.serve.store_envelopes_per_sec,
                config.serve.store_envelopes_burst,
                config.serve.peers_max,
            ),
            read_rate: RateLimiter::new(
                config.serve.reads_per_sec,
                config.serve.reads_burst,
                config.serve.peers_max,
            ),
            book: super::peers::load(&config, swarm.local_peer_id()),
            stem: config.stem.map(StemHop::new),
            near: config.nearness.map(super::nearness::NearState::new),
            relayed: RelayedListen::default(),
            config,
            swarm,
            history,
            mailbox,
            history_jobs: Some(history_lanes.jobs),
            own_jobs: Some(history_lanes.own),
            mailbox_jobs,
            threads,
            staged: VecDeque::new(),
            store_batches: HashMap::new(),
            relayed_batches: HashMap::new(),
            store_peers: HashMap::new(),
            registered: Vec::new(),
            load: super::serve::Load::default(),
            demands: super::pow_load::Demands::default(),
            subscribed: HashSet::new(),
            outbound: HashMap::new(),
            counters: Counters::default(),
            resync: super::resync::ResyncStatus::default(),
            light: None,
            light_hub: None,
            light_shards_joined: HashSet::new(),
            light_tx: None,
            traffic: Arc::default(),
        }
    }

    /// The event loop, until a shutdown command or every handle is gone.
    pub(super) async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut committed: mpsc::Receiver<Committed>,
        mut light_rx: mpsc::Receiver<super::light_serve::LightInput>,
    ) {
        let mut timers = Timers::new(&self.config);
        let mut done = None;
        loop {
            self.send_store_batches();
            if !self.staged.is_empty()
                && let Flow::Stop(d) = self.flush(&mut cmds, &mut committed).await
            {
                done = d;
                break;
            }
            tokio::select! {
                ev = self.swarm.select_next_some() => {
                    self.on_swarm(ev);
                    self.drain_swarm();
                }
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(d)) => { done = Some(d); break; }
                    Some(c) => self.on_command(c),
                },
                Some(c) = committed.recv() => {
                    self.on_committed(c);
                    for _ in 1..COMMITTED_DRAIN_MAX {
                        let Ok(c) = committed.try_recv() else { break };
                        self.on_committed(c);
                    }
                }
                Some(l) = light_rx.recv() => self.on_light(l),
                _ = timers.tick.tick() => {
                    let outs = self.sync.handle(Input::Tick, now_ms());
                    self.apply(outs);
                    self.light_tick();
                    self.light_shards();
                    self.release_orphans();
                    self.stem_tick();
                    self.redial();
                    self.near_tick();
                    self.relisten();
                    // Order-free; when the queue is full the writer checks after its next batch.
                    if let Some(jobs) = &self.history_jobs {
                        let _ = jobs.try_send(HistoryJob::Sync);
                    }
                }
                _ = timers.resync.tick() => self.resync(),
            }
        }
        self.close(committed).await;
        // The stores and the swarm go before the shutdown is answered: once `shutdown` returns
        // (and the handles are dropped) the same data dir and port can be opened again.
        drop(self);
        if let Some(d) = done {
            let _ = d.send(());
        }
        info!("node stopped");
    }

    /// Hands the staged history jobs to the writer, waiting for room. Meanwhile committed
    /// results are taken (the writers may wait on them) and so are handle commands while the
    /// stage is below its bound (a consumer that publishes while reading events must not
    /// deadlock); the swarm is not polled: that is the back-pressure.
    async fn flush(
        &mut self,
        cmds: &mut mpsc::Receiver<Command>,
        committed: &mut mpsc::Receiver<Committed>,
    ) -> Flow {
        while let Some(job) = self.staged.pop_front() {
            let Some(tx) = self.history_jobs.clone() else {
                self.staged.clear();
                break;
            };
            let mut job = Some(job);
            while let Some(j) = job.take() {
                tokio::select! {
                    biased;
                    Some(c) = committed.recv() => {
                        job = Some(j);
                        self.on_committed(c);
                        self.send_store_batches();
                    }
                    permit = tx.reserve() => if let Ok(p) = permit { p.send(j) },
                    cmd = cmds.recv(), if self.staged.len() < STAGED_JOBS_MAX => {
                        job = Some(j);
                        match cmd {
                            None => return Flow::Stop(None),
                            Some(Command::Shutdown(d)) => return Flow::Stop(Some(d)),
                            Some(c) => self.on_command(c),
                        }
                    }
                }
            }
        }
        Flow::Go
    }

    /// Lets the writers finish their queues (everything acknowledged is committed), answering
    /// their results until both are done. Staged jobs are dropped: neither their envelopes nor
    /// the cursors after them are durable, so the next start reads them again.
    async fn close(&mut self, mut committed: mpsc::Receiver<Committed>) {
        self.history_jobs = None;
        self.own_jobs = None;
        self.mailbox_jobs = None;
        self.staged.clear();
        self.save_book();
        while let Some(c) = committed.recv().await {
            self.on_committed(c);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn on_committed(&mut self, c: Committed) {
        let c = match c {
            Committed::Own(env, reply) => {
                let id = env.id();
                self.announce_own(*env);
                let _ = reply.send(Ok(id));
                self.release_orphans();
                return;
            }
            Committed::Mailbox(c) => c,
        };
        if c.ok {
            self.counters.store_commits += 1;
        }
        self.counters.store_envelopes += c.stored;
        for (channel, response) in c.answers {
            let _ = self.swarm.behaviour_mut().store.send_response(channel, response.encode());
        }
    }

    /// Performs the state machine's outputs: requests now, history work staged.
    pub(super) fn apply(&mut self, outs: Vec<Output<PeerId>>) {
        for o in outs {
            match o {
                Output::StoreRequest { to, envelope } => {
                    self.store_batches.entry(to).or_default().push(envelope)
                }
                Output::PageRequest { to, topic, from, limit } => self.request_page(to, topic, from, limit),
                Output::IdsRequest { to, ids } => {
                    let _ = self.request(to, Request::Ids(ids), Outbound::Ids);
                }
                Output::Deliver { envelope, id, after_gap } => {
                    self.staged.push_back(HistoryJob::Deliver { envelope, id, after_gap });
                    self.release_orphans();
                }
                Output::Status { id, status } => self.staged.push_back(HistoryJob::Status { id, status }),
                Output::Cursor { topic, store, cursor } => {
                    self.staged.push_back(HistoryJob::Cursor { key: cursor_key(&topic, &store), cursor });
                }
            }
        }
    }

    /// Takes the swarm events that are ready already (at most `SWARM_DRAIN_MAX` in a turn),
    /// so that the store requests they cause leave batched.
    fn drain_swarm(&mut self) {
        for _ in 1..SWARM_DRAIN_MAX {
            if self.staged.len() >= DRAIN_STAGED_MAX {
                return;
            }
            match self.swarm.next().now_or_never() {
                Some(Some(ev)) => self.on_swarm(ev),
                _ => return,
            }
        }
    }

    /// Loads the persisted resume cursors of `topic` at `stores` (before a history sync only;
    /// the send path never reads them).
    pub(super) fn load_cursors(&mut self, topic: &Topic, stores: &[PeerId]) {
        for s in stores {
            if let Ok(Some(b)) = self.history.get_key(&cursor_key(topic, s))
                && let Ok(arr) = <[u8; 8]>::try_from(b.as_slice())
            {
                self.sync.set_cursor(*topic, *s, u64::from_be_bytes(arr));
            }
        }
    }

    /// Anti-entropy: ask the store nodes of every subscribed topic for what came after the
    /// cursor (an empty page when gossip already brought everything).
    fn resync(&mut self) {
        let now = now_ms();
        let topics: Vec<Topic> = self.subscribed.iter().copied().collect();
        for t in topics {
            let stores = self.stores_for(&t);
            if stores.is_empty() {
                continue;
            }
            let outs = self.sync.handle(Input::Sync { topic: t, stores }, now);
            self.apply(outs);
        }
    }

    /// The set of store nodes changed: new targets for unstored sends and followed topics.
    pub(super) fn retarget(&mut self) {
        let now = now_ms();
        if self.light.is_some() {
            // A light client pages nothing when store connections come and go (idle traffic
            // would grow with its topics): unstored sends get the new targets, and topics
            // waiting for a back-fill are paged once they have store nodes.
            let topics: std::collections::BTreeSet<Topic> =
                self.sync.unstored_topics().into_iter().chain(self.subscribed.iter().copied()).collect();
            for t in topics {
                let stores = self.stores_for(&t);
                let outs = self.sync.handle(Input::Targets { topic: t, stores }, now);
                self.apply(outs);
            }
            self.light_backfill_ready();
            return;
        }
        // Own envelopes still short of store nodes, on topics this node does not read: give
        // them the store nodes now known (a node that published before it found any).
        for t in self.sync.unstored_topics() {
            if !self.subscribed.contains(&t) {
                let stores = self.stores_for(&t);
                let outs = self.sync.handle(Input::Targets { topic: t, stores }, now);
                self.apply(outs);
            }
        }
        let topics: Vec<Topic> = self.subscribed.iter().copied().collect();
        for t in topics {
            let stores = self.stores_for(&t);
            self.load_cursors(&t, &stores);
            let outs = self.sync.handle(Input::Targets { topic: t, stores: stores.clone() }, now);
            self.apply(outs);
            let outs = self.sync.handle(Input::Sync { topic: t, stores }, now);
            self.apply(outs);
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Publish(env, reply) => self.publish(*env, reply),
            Command::Subscribe(topic, reply) => {
                let _ = reply.send(self.subscribe(topic));
            }
            Command::Dial(a) => {
                if let Err(e) = self.swarm.dial(a.clone()) {
                    warn!("dial {a}: {e}");
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::PeerScore(p, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&p));
            }
            Command::PublishRaw(shard, bytes) => {
                let t = IdentTopic::new(shard_name(shard % SHARDS));
                let _ = self.swarm.behaviour_mut().gossipsub.publish(t, bytes);
            }
            Command::Erase(topic, id, secret) => {
                for to in self.stores_for(&topic) {
                    let _ = self.request(to, Request::Erase { id, secret }, Outbound::Erase(id));
                }
            }
            Command::WorkBits(topic, reply) => {
                let stores = self.stores_for(&topic);
                let floor = self.config.admission.difficulty.base_bits;
                let _ = reply.send(self.demands.bits_for(&stores, floor, now_ms()));
            }
            Command::SetRegisteredStores(stores, reply) => {
                let _ = reply.send(self.set_registered(&stores));
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown(_) => {} // taken by the loop
        }
    }

    fn status(&self) -> NodeStatus {
        let c = &self.counters;
        NodeStatus {
            peer_id: *self.swarm.local_peer_id(),
            listen: self
                .swarm
                .listeners()
                .map(|a| a.clone().with_p2p(*self.swarm.local_peer_id()).unwrap_or_else(|a| a))
                .collect(),
            peers: self.swarm.connected_peers().count(),
            dialable_peers: self.book.as_ref().map_or(0, |b| b.dialable()),
            store_peers: self.store_peers.len(),
            near_closed: self.near.as_ref().map_or(0, |n| n.closed),
            mailbox: self.mailbox.as_ref().and_then(|m| m.stats().ok()).unwrap_or_default(),
            pending: self.sync.pending(),
            relayed: c.relayed,
            rejected: c.rejected,
            ignored: c.ignored,
            store_commits: c.store_commits,
            store_envelopes: c.store_envelopes,
            requests_shed: c.requests_shed,
            erasures_confirmed: c.erasures_confirmed,
            stem: self.stem.as_ref().map(StemStatus::from).unwrap_or_default(),
            shards: self.swarm.behaviour().gossipsub.topics().count(),
            light: self.light_status(),
            traffic: self.traffic.snapshot(),
            resync: self.resync,
        }
    }

    fn subscribe(&mut self, topic: Topic) -> Result<(), NodeError> {
        let max = self.config.sync.topics_max;
        if !self.subscribed.contains(&topic) && self.subscribed.len() >= max {
            return Err(NodeError::Refused(format!("already following {max} topics, the most")));
        }
        if self.light.is_none() {
            let shard = IdentTopic::new(shard_name(shard_of(&topic)));
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&shard) {
                warn!("subscribe failed: {e}");
            }
        }
        let new = self.subscribed.insert(topic);
        // Exactly once across restarts: what is in local history was delivered.
        let mut cursor = Some(0);
        while let Some(c) = cursor {
            match self.history.page(&topic, c, cairn_store::PAGE_ENVELOPES_MAX) {
                Ok(pg) => {
                    self.sync.mark_delivered(pg.entries.iter().map(|(_, e)| e.id()));
                    cursor = pg.next;
                }
                Err(e) => {
                    warn!("cannot read local history: {e}");
                    cursor = None;
                }
            }
        }
        if self.light.is_some() {
            if new {
                self.light_follow(topic);
            }
            return Ok(());
        }
        let stores = self.stores_for(&topic);
        self.load_cursors(&topic, &stores);
        let outs = self.sync.handle(Input::Sync { topic, stores }, now_ms());
        self.apply(outs);
        Ok(())
    }

    /// Checks our own envelope and queues it for the local history writer; it is gossiped and
    /// pushed to the store nodes only once durable, and the caller's reply waits for that.
    fn publish(&mut self, env: Envelope, reply: oneshot::Sender<Result<Id, NodeError>>) {
        let id = env.id();
        if env.payload.is_none() || !pow::check(&env.header, self.config.admission.difficulty) {
            let why = "envelope has no payload or not enough proof of work";
            let _ = reply.send(Err(NodeError::Refused(why.into())));
            return;
        }
        if !self.sync.outbox_has_room() {
            let why = format!(
                "{} sends are not yet stored on enough store nodes; retry later",
                self.sync.pending().len()
            );
            let _ = reply.send(Err(NodeError::Refused(why)));
            return;
        }
        if !self.sync.is_delivered(&id)
            && !self.own_queued.contains(&id)
            && !self.orphans_released.contains(&id)
            && env.header.parents.iter().any(|p| !self.in_local_history(p))
            && self.orphans.hold(env.clone(), now_ms())
        {
            // A parent is not written yet: staged (learned first from the ledger) or coming
            // back from the mesh (a restart after a crash). Out now, written locally after it.
            debug!("own envelope {} waits for its parents in the local history", id.short());
            self.admission.mark_seen(id);
            self.announce(env, false);
            let _ = reply.send(Ok(id));
            // Parents delivered but not yet written are staged: it goes right after them.
            self.release_orphans();
            return;
        }
        if self.sync.is_delivered(&id) {
            // Already in the local history: a restart re-publishes its unacknowledged sends
            // (the node's outbox). Push it to the store nodes again (gossip dedupes); answering
            // Ok without a push left a send killed mid-flight on this device alone.
            self.announce_own(env);
            let _ = reply.send(Ok(id));
            return;
        }
        let Some(tx) = &self.own_jobs else {
            let _ = reply.send(Err(NodeError::Stopped));
            return;
        };
        match tx.try_send(OwnJob { envelope: env, reply }) {
            Ok(()) => {
                self.admission.mark_seen(id);
                self.own_queued.insert(id);
            }
            Err(mpsc::error::TrySendError::Full(j)) => {
                let why = format!("local history writer busy ({OWN_JOBS_MAX} publications queued); retry");
                let _ = j.reply.send(Err(NodeError::Refused(why)));
            }
            Err(mpsc::error::TrySendError::Closed(j)) => {
                let _ = j.reply.send(Err(NodeError::Stopped));
            }
        }
    }

    /// Whether the local history holds `id` or will (delivered, or an own publication queued).
    /// Whether `id` is committed in the local history or queued on the own lane before what
    /// comes next. A delivery that is only staged does not count: own publications take their
    /// own lane, ahead of staged deliveries, so a parent the node learned elsewhere (an MLS
    /// commit from the ledger) could otherwise be written after its child.
    fn in_local_history(&self, id: &Id) -> bool {
        self.own_queued.contains(id) || self.history.contains(id).unwrap_or(false)
    }

    /// Writes the held own envelopes whose parents are now present, parents first; and, on
    /// `expired`, those held too long (flagged as after a gap).
    pub(super) fn release_orphans(&mut self) {
        if self.orphans.is_empty() {
            return;
        }
        let ready = {
            let sync = &self.sync;
            let (own, released) = (&self.own_queued, &self.orphans_released);
            let staged: std::collections::HashSet<Id> = self
                .staged
                .iter()
                .filter_map(|j| match j {
                    HistoryJob::Deliver { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            self.orphans.release(|p| {
                sync.is_delivered(p) || own.contains(p) || released.contains(p) || staged.contains(p)
            })
        };
        let expired = self.orphans.expired(now_ms());
        for (e, after_gap) in
            ready.into_iter().map(|e| (e, false)).chain(expired.into_iter().map(|e| (e, true)))
        {
            let id = e.id();
            // Written from now on, in the delivery lane: its own children need not wait for the
            // mesh to bring it back, but they follow it in that lane (held, then released).
            self.orphans_released.insert(id);
            self.staged.push_back(HistoryJob::Deliver { envelope: e, id, after_gap });
        }
    }

    fn announce_own(&mut self, env: Envelope) {
        self.announce(env, true);
    }

    /// Hands an own envelope to the stem (`stem_hop.rs`) or, with the stem off or unusable,
    /// gossips it and pushes it to its store nodes; `written`: the local history holds it
    /// (else it is delivered locally after its parents, see `orphans.rs`).
    fn announce(&mut self, env: Envelope, written: bool) {
        let Some(env) = self.stem_originate(env, written) else { return };
        let id = env.id();
        let topic = env.header.topic;
        if self.light.is_some() {
            self.light_publish(&env); // the service nodes gossip it
        } else {
            let shard = IdentTopic::new(shard_name(shard_of(&topic)));
            match self.swarm.behaviour_mut().gossipsub.publish(shard, env.encode()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                Err(e) => debug!("gossip publish of {} deferred to mailboxes: {e}", id.short()),
            }
        }
        let stores = self.stores_for(&topic);
        let input = if written {
            Input::Send { envelope: env, stores }
        } else {
            Input::SendUnwritten { envelope: env, stores }
        };
        let outs = self.sync.handle(input, now_ms());
        self.apply(outs);
    }
}
