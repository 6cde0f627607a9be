//! The libp2p shell: a thin async loop around [`crate::validate`], [`crate::sync`] and the
//! store, speaking TCP/QUIC + Noise + Yamux, gossipsub (anonymous, validated, scored) on shard
//! topics, Kademlia discovery, identify, ping, relay v2 (client, and server on request), DCUtR,
//! AutoNAT and the `/cairn/store/1` request/response protocol.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::pow;
use cairn_proto::{Envelope, Id, Topic};
use cairn_store::{Appended, Retention, Stats, Store};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::kad::{self, KBucketKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify,
    noise, ping, relay, tcp, yamux,
};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::shard::{SHARDS, nearest, shard_name, shard_of};
use crate::sync::{Input, Output, SendStatus, Sync, SyncConfig};
use crate::validate::{Admission, AdmissionConfig, Verdict};
use crate::wire::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, Request, Response, StoreOutcome};

/// The store protocol name.
pub const STORE_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/store/1");
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/kad/1");
const IDENTIFY_PROTOCOL: &str = "/cairn/id/1";

/// Gossipsub peer-scoring thresholds and weights (see ARCHITECTURE.md, "Peer scoring").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    /// Below this, no gossip (IHAVE/IWANT) with the peer.
    pub gossip_threshold: f64,
    /// Below this, we do not publish to the peer.
    pub publish_threshold: f64,
    /// Below this, every RPC from the peer is ignored (graylisted).
    pub graylist_threshold: f64,
    /// Weight of the (squared) count of invalid envelopes on a shard (P4).
    pub invalid_message_weight: f64,
    /// Per-second decay of the invalid-envelope counter (close to 1 = long memory).
    pub invalid_message_decay: f64,
    /// Weight of the IP-colocation penalty (P6); beyond `ip_colocation_threshold` peers per IP.
    pub ip_colocation_weight: f64,
    /// Peers from one IP before P6 applies.
    pub ip_colocation_threshold: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            gossip_threshold: -10.0,
            publish_threshold: -50.0,
            graylist_threshold: -80.0,
            invalid_message_weight: -10.0,
            invalid_message_decay: 0.99,
            ip_colocation_weight: -5.0,
            ip_colocation_threshold: 10.0,
        }
    }
}

/// Everything a node needs to start. Limits carry their unit in their name.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Addresses to listen on (default: 127.0.0.1, TCP and QUIC, ephemeral ports).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Directory for this node's stores (`history.redb`, `mailbox.redb`).
    pub data_dir: PathBuf,
    /// Serve as a store node (mailbox).
    pub serve_store: bool,
    /// Serve as a relay (v2) for peers behind NAT.
    pub relay_server: bool,
    /// Reachable only through this relay: listen on its circuit address
    /// (`…/p2p/RELAY`; `/p2p-circuit` is appended).
    pub listen_via_relay: Option<Multiaddr>,
    /// Relay admission rules.
    pub admission: AdmissionConfig,
    /// Mailbox/delivery rules.
    pub sync: SyncConfig,
    /// Store retention (TTL, quotas) when serving as a store node.
    pub retention: Retention,
    /// Store nodes each envelope is pushed to (k).
    pub replicas: usize,
    /// Most established connections (inbound and outbound). A store node serves every user
    /// that picks it, so this is a server-sized cap, not a mesh size.
    pub connections_max: u32,
    /// Peers found through the DHT are dialled only while fewer than this many are connected;
    /// gossip needs a handful of mesh peers, not the whole network.
    pub dial_target: u32,
    /// Peer scoring.
    pub score: ScoreConfig,
    /// Fixed identity (Ed25519 seed) or a fresh one.
    pub identity_seed: Option<[u8; 32]>,
    /// Period of the timer that drives retries and resyncs, ms.
    pub tick_ms: u64,
    /// Period of anti-entropy: every subscribed topic is asked of its store nodes again (from
    /// the saved cursor), so mail that gossip did not bring arrives within this time. 0: never.
    pub resync_every_ms: u64,
    /// Period of mailbox expiry, ms.
    pub expire_every_ms: u64,
    /// Gossipsub heartbeat, ms.
    pub heartbeat_ms: u64,
}

impl NodeConfig {
    /// Defaults for a node keeping its data in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: vec![],
            data_dir,
            serve_store: false,
            relay_server: false,
            listen_via_relay: None,
            admission: AdmissionConfig::default(),
            sync: SyncConfig::default(),
            retention: Retention::default(),
            replicas: 3,
            connections_max: 1024,
            dial_target: 16,
            score: ScoreConfig::default(),
            identity_seed: None,
            tick_ms: 200,
            resync_every_ms: 5_000,
            expire_every_ms: 60_000,
            heartbeat_ms: 500,
        }
    }
}

/// Node start-up failures.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] cairn_store::StoreError),
    /// libp2p set-up failed.
    #[error("network set-up: {0}")]
    Setup(String),
    /// The node has stopped.
    #[error("the node has stopped")]
    Stopped,
    /// A request was refused.
    #[error("{0}")]
    Refused(String),
}

/// Something that happened, for the application.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A new envelope of a subscribed topic, exactly once, after its parents.
    Delivered {
        /// Envelope.
        envelope: Box<Envelope>,
        /// Id.
        id: Id,
        /// An ancestor could not be found.
        after_gap: bool,
    },
    /// A sent envelope's status changed.
    Status {
        /// Id.
        id: Id,
        /// Status.
        status: SendStatus,
    },
}

/// A snapshot of the node for `status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Connected peers.
    pub peers: usize,
    /// Store nodes known.
    pub store_peers: usize,
    /// Mailbox figures (store nodes).
    pub mailbox: Stats,
    /// Unstored sends.
    pub pending: Vec<(Id, SendStatus)>,
    /// Envelopes relayed (accepted from gossip), rejected, ignored.
    pub relayed: u64,
    /// Envelopes rejected.
    pub rejected: u64,
    /// Envelopes ignored.
    pub ignored: u64,
    /// Mailbox transactions committed (each one fsync).
    pub store_commits: u64,
    /// Envelopes newly stored in the mailbox.
    pub store_envelopes: u64,
}

enum Command {
    Publish(Box<Envelope>, oneshot::Sender<Result<Id, NodeError>>),
    Subscribe(Topic),
    Dial(Multiaddr),
    Status(oneshot::Sender<NodeStatus>),
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
    PublishRaw(u16, Vec<u8>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on (with `/p2p/<id>`).
    pub listen_addrs: Vec<Multiaddr>,
    history: Arc<Store>,
}

impl NodeHandle {
    /// Publishes an envelope (already mined and sealed). Returns its id once stored locally.
    pub async fn publish(&self, envelope: Envelope) -> Result<Id, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::Publish(Box::new(envelope), tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }
    /// Follows a topic: its shard's gossip, and its history from the mailboxes.
    pub async fn subscribe(&self, topic: Topic) -> Result<(), NodeError> {
        self.cmd.send(Command::Subscribe(topic)).await.map_err(|_| NodeError::Stopped)
    }
    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.cmd.send(Command::Dial(addr)).await.map_err(|_| NodeError::Stopped)
    }
    /// A status snapshot.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::Status(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
    /// Gossipsub score of a peer.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::PeerScore(peer, tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
    /// Publishes raw bytes on a shard without any check: for misbehaviour tests only.
    #[doc(hidden)]
    pub async fn publish_raw(&self, shard: u16, bytes: Vec<u8>) -> Result<(), NodeError> {
        self.cmd.send(Command::PublishRaw(shard, bytes)).await.map_err(|_| NodeError::Stopped)
    }
    /// The local history: every envelope delivered or published here, by topic (read-only use;
    /// the node writes it).
    pub fn history(&self) -> &Arc<Store> {
        &self.history
    }
    /// Subscribes to node events.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }
    /// Stops the node cleanly (stores are closed).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Length-prefixed, bounded frames for the store protocol.
#[derive(Debug, Clone, Default)]
pub struct StoreCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes over {max}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8], max: usize) -> io::Result<()> {
    if data.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(data).await
}

impl request_response::Codec for StoreCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, REQUEST_BYTES_MAX).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, RESPONSE_BYTES_MAX).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req, REQUEST_BYTES_MAX).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res, RESPONSE_BYTES_MAX).await
    }
}

// The composed libp2p behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // First, so a connection over the limits is denied before any other behaviour records it.
    limits: connection_limits::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    store: request_response::Behaviour<StoreCodec>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn key_of(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&KBucketKey::new(bytes.to_vec()).hashed_bytes()[..32]);
    out
}

fn cursor_key(topic: &Topic, store: &PeerId) -> String {
    format!("cursor/{}/{store}", topic.to_hex())
}

fn peer_key(p: &PeerId) -> [u8; 32] {
    key_of(&p.to_bytes())
}

fn build_gossipsub(c: &NodeConfig) -> Result<gossipsub::Behaviour, String> {
    let cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .max_transmit_size(c.admission.limits.envelope_bytes_max + 4096)
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .heartbeat_interval(Duration::from_millis(c.heartbeat_ms))
        .heartbeat_initial_delay(Duration::from_millis(c.heartbeat_ms.min(500)))
        .protocol_id_prefix("/cairn/meshsub")
        .build()
        .map_err(|e| e.to_string())?;
    let mut gs = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, cfg)?;
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: c.score.ip_colocation_weight,
        ip_colocation_factor_threshold: c.score.ip_colocation_threshold,
        // Processes on this machine are not a Sybil risk worth graylisting: a dev network or a
        // bench runs dozens of nodes on loopback, and P6 would cut them all off from gossip.
        ip_colocation_factor_whitelist: [
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .collect(),
        ..gossipsub::PeerScoreParams::default()
    };
    for shard in 0..SHARDS {
        params.topics.insert(IdentTopic::new(shard_name(shard)).hash(), topic_score(&c.score));
    }
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: c.score.gossip_threshold,
        publish_threshold: c.score.publish_threshold,
        graylist_threshold: c.score.graylist_threshold,
        ..gossipsub::PeerScoreThresholds::default()
    };
    gs.with_peer_score(params, thresholds)?;
    Ok(gs)
}

/// Per-shard score parameters: only invalid envelopes (P4) move the score, so an honest but
/// quiet peer stays at 0 and a peer forwarding garbage sinks quickly.
fn topic_score(s: &ScoreConfig) -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: s.invalid_message_weight,
        invalid_message_deliveries_decay: s.invalid_message_decay,
        ..gossipsub::TopicScoreParams::default()
    }
}

/// Yamux with room for many concurrent store requests (one stream each).
fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(1024);
    c
}

fn build_swarm(c: &NodeConfig) -> Result<Swarm<Behaviour>, NodeError> {
    let keypair = match c.identity_seed {
        Some(seed) => Keypair::ed25519_from_bytes(seed).map_err(|e| NodeError::Setup(e.to_string()))?,
        None => Keypair::generate_ed25519(),
    };
    let setup = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux_config)
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| {
            let id = key.public().to_peer_id();
            let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
            kad_cfg.set_query_timeout(Duration::from_secs(20));
            let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let support = if c.serve_store { ProtocolSupport::Full } else { ProtocolSupport::Outbound };
            let store = request_response::Behaviour::with_codec(
                StoreCodec,
                [(STORE_PROTOCOL, support)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(10))
                    .with_max_concurrent_streams(512),
            );
            let relay = c.relay_server.then(|| {
                relay::Behaviour::new(
                    id,
                    relay::Config {
                        max_circuit_bytes: 64 * 1024 * 1024,
                        max_circuit_duration: Duration::from_secs(3600),
                        ..relay::Config::default()
                    },
                )
            });
            let autonat =
                autonat::Behaviour::new(id, autonat::Config { only_global_ips: false, ..Default::default() });
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(c.connections_max))
                    .with_max_pending_incoming(Some(c.connections_max.min(128)))
                    .with_max_established_per_peer(Some(2)),
            );
            Ok(Behaviour {
                relay_client,
                relay: Toggle::from(relay),
                dcutr: dcutr::Behaviour::new(id),
                autonat,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                kad,
                gossipsub: build_gossipsub(c)?,
                store,
                limits,
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|s| s.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Starts a node; returns once it listens on every configured address.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::Setup(format!("{}: {e}", config.data_dir.display())))?;
    let history = Arc::new(Store::open(&config.data_dir.join("history.redb"), config.admission.limits)?);
    let mailbox = if config.serve_store {
        Some(Arc::new(Store::open(&config.data_dir.join("mailbox.redb"), config.admission.limits)?))
    } else {
        None
    };
    let mut swarm = build_swarm(&config)?;
    let peer_id = *swarm.local_peer_id();
    for a in &config.listen {
        swarm.listen_on(a.clone()).map_err(|e| NodeError::Setup(format!("listen on {a}: {e}")))?;
    }
    let mut listen_addrs = Vec::new();
    while listen_addrs.len() < config.listen.len() {
        match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                if config.relay_server {
                    swarm.add_external_address(address.clone());
                }
                listen_addrs.push(address.with(libp2p::multiaddr::Protocol::P2p(peer_id)));
            }
            Ok(_) => {}
            Err(_) => return Err(NodeError::Setup("timed out waiting for listen addresses".into())),
        }
    }
    if let Some(relay) = &config.listen_via_relay {
        let circuit = relay.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        swarm
            .listen_on(circuit.clone())
            .map_err(|e| NodeError::Setup(format!("listen via {circuit}: {e}")))?;
    }
    for b in &config.bootstrap {
        if let Err(e) = swarm.dial(b.clone()) {
            warn!("cannot dial bootstrap {b}: {e}");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, _) = broadcast::channel(65_536);
    let (committed_tx, committed_rx) = mpsc::unbounded_channel();
    let (history_tx, history_thread) =
        spawn_history_writer(history.clone(), ev_tx.clone(), committed_tx.clone());
    let mailbox_writer =
        mailbox.as_ref().map(|m| spawn_mailbox_writer(m.clone(), config.retention, committed_tx));
    let history_for_handle = history.clone();
    let node = Node {
        history_tx: Some(history_tx),
        history_thread: Some(history_thread),
        mailbox_tx: mailbox_writer.as_ref().map(|(tx, _)| tx.clone()),
        mailbox_thread: mailbox_writer.map(|(_, t)| t),
        sync: Sync::new(config.sync, [], []),
        admission: Admission::new(config.admission),
        config,
        swarm,
        history,
        mailbox,
        events: ev_tx.clone(),
        store_peers: HashMap::new(),
        subscribed: HashSet::new(),
        outbound: HashMap::new(),
        relayed: 0,
        rejected: 0,
        ignored: 0,
        store_commits: 0,
        store_envelopes: 0,
    };
    tokio::spawn(node.run(cmd_rx, committed_rx));
    info!(%peer_id, "node started");
    Ok(NodeHandle { cmd: cmd_tx, events: ev_tx, peer_id, listen_addrs, history: history_for_handle })
}

enum Outbound {
    Store(Id),
    Page(Topic),
    Ids,
}

struct Node {
    config: NodeConfig,
    swarm: Swarm<Behaviour>,
    history: Arc<Store>,
    mailbox: Option<Arc<Store>>,
    history_tx: Option<std_mpsc::Sender<HistoryJob>>,
    history_thread: Option<JoinHandle<()>>,
    mailbox_tx: Option<std_mpsc::Sender<MailboxJob>>,
    mailbox_thread: Option<JoinHandle<()>>,
    sync: Sync<PeerId>,
    admission: Admission<PeerId>,
    events: broadcast::Sender<NodeEvent>,
    store_peers: HashMap<PeerId, [u8; 32]>,
    subscribed: HashSet<Topic>,
    outbound: HashMap<OutboundRequestId, (PeerId, Outbound)>,
    relayed: u64,
    rejected: u64,
    ignored: u64,
    store_commits: u64,
    store_envelopes: u64,
}

impl Node {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut committed: mpsc::UnboundedReceiver<Committed>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.tick_ms.max(10)));
        let mut expire = tokio::time::interval(Duration::from_millis(self.config.expire_every_ms.max(1000)));
        let resync_ms =
            if self.config.resync_every_ms == 0 { u64::MAX / 4 } else { self.config.resync_every_ms };
        let mut resync = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(resync_ms),
            Duration::from_millis(resync_ms.max(100)),
        );
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = cmds.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(done)) => { self.close_writers(); let _ = done.send(()); break; }
                    Some(c) => self.on_command(c),
                },
                Some(c) = committed.recv() => self.on_committed(c),
                _ = tick.tick() => {
                    let outs = self.sync.handle(Input::Tick, now_ms());
                    self.apply(outs);
                }
                _ = resync.tick() => self.resync(),
                _ = expire.tick() => {
                    if let Some(m) = &self.mailbox && let Err(e) = m.expire(now_ms()) {
                        warn!("mailbox expiry failed: {e}");
                    }
                }
            }
        }
        self.close_writers();
        info!("node stopped");
    }

    /// Lets the writer threads finish their queues (everything acknowledged is committed).
    fn close_writers(&mut self) {
        self.history_tx = None;
        self.mailbox_tx = None;
        for t in [self.history_thread.take(), self.mailbox_thread.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }

    fn on_committed(&mut self, c: Committed) {
        let c = match c {
            Committed::Own(env, reply) => {
                let id = env.id();
                self.announce_own(*env);
                let _ = reply.send(Ok(id));
                return;
            }
            Committed::Mailbox(c) => c,
        };
        if c.ok {
            self.store_commits += 1;
        }
        self.store_envelopes += c.stored;
        for (channel, id, outcome) in c.answers {
            let _ = self
                .swarm
                .behaviour_mut()
                .store
                .send_response(channel, Response::Stored(id, outcome).encode());
        }
    }

    fn apply(&mut self, outs: Vec<Output<PeerId>>) {
        for o in outs {
            match o {
                Output::StoreRequest { to, envelope } => {
                    let id = envelope.id();
                    let rid =
                        self.swarm.behaviour_mut().store.send_request(&to, Request::Store(envelope).encode());
                    self.outbound.insert(rid, (to, Outbound::Store(id)));
                }
                Output::PageRequest { to, topic, from, limit } => {
                    let rid = self
                        .swarm
                        .behaviour_mut()
                        .store
                        .send_request(&to, Request::Page { topic, from, limit }.encode());
                    self.outbound.insert(rid, (to, Outbound::Page(topic)));
                }
                Output::IdsRequest { to, ids } => {
                    let rid = self.swarm.behaviour_mut().store.send_request(&to, Request::Ids(ids).encode());
                    self.outbound.insert(rid, (to, Outbound::Ids));
                }
                Output::Deliver { envelope, id, after_gap } => {
                    if let Err(e) = self.history.append(std::slice::from_ref(&envelope)) {
                        warn!("cannot persist delivered envelope {}: {e}", id.short());
                    }
                    let _ = self.events.send(NodeEvent::Delivered {
                        envelope: Box::new(envelope),
                        id,
                        after_gap,
                    });
                }
                Output::Status { id, status } => {
                    let _ = self.events.send(NodeEvent::Status { id, status });
                }
                Output::Cursor { topic, store, cursor } => {
                    if let Err(e) = self.history.put_key(&cursor_key(&topic, &store), &cursor.to_be_bytes()) {
                        warn!("cannot persist cursor: {e}");
                    }
                }
            }
        }
    }

    /// The store nodes XOR-nearest `topic` among those known.
    fn stores_for(&self, topic: &Topic) -> Vec<PeerId> {
        let cands: Vec<(PeerId, [u8; 32])> = self.store_peers.iter().map(|(p, k)| (*p, *k)).collect();
        nearest(&key_of(&topic.0), &cands, self.config.replicas)
    }

    /// Loads the persisted resume cursors of `topic` at `stores` (before a history sync only;
    /// the send path never reads them).
    fn load_cursors(&mut self, topic: &Topic, stores: &[PeerId]) {
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

    fn retarget(&mut self) {
        let now = now_ms();
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
            Command::Subscribe(topic) => {
                let shard = IdentTopic::new(shard_name(shard_of(&topic)));
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&shard) {
                    warn!("subscribe failed: {e}");
                }
                self.subscribed.insert(topic);
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
                let stores = self.stores_for(&topic);
                self.load_cursors(&topic, &stores);
                let outs = self.sync.handle(Input::Sync { topic, stores }, now_ms());
                self.apply(outs);
            }
            Command::Dial(a) => {
                if let Err(e) = self.swarm.dial(a.clone()) {
                    warn!("dial {a}: {e}");
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(NodeStatus {
                    peer_id: *self.swarm.local_peer_id(),
                    peers: self.swarm.connected_peers().count(),
                    store_peers: self.store_peers.len(),
                    mailbox: self.mailbox.as_ref().and_then(|m| m.stats().ok()).unwrap_or_default(),
                    pending: self.sync.pending(),
                    relayed: self.relayed,
                    rejected: self.rejected,
                    ignored: self.ignored,
                    store_commits: self.store_commits,
                    store_envelopes: self.store_envelopes,
                });
            }
            Command::PeerScore(p, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&p));
            }
            Command::PublishRaw(shard, bytes) => {
                let t = IdentTopic::new(shard_name(shard % SHARDS));
                let _ = self.swarm.behaviour_mut().gossipsub.publish(t, bytes);
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Checks our own envelope and queues it for the local history writer; it is gossiped and
    /// pushed to the store nodes only once durable, and the caller's reply waits for that.
    fn publish(&mut self, env: Envelope, reply: oneshot::Sender<Result<Id, NodeError>>) {
        let id = env.id();
        if env.payload.is_none() || !pow::check(&env.header, self.config.admission.difficulty) {
            let _ = reply
                .send(Err(NodeError::Refused("envelope has no payload or not enough proof of work".into())));
            return;
        }
        if self.sync.is_delivered(&id) {
            let _ = reply.send(Ok(id));
            return;
        }
        self.admission.mark_seen(id);
        match &self.history_tx {
            Some(tx) => {
                let _ = tx.send(HistoryJob { envelope: env, id, after_gap: false, own: Some(reply) });
            }
            None => {
                let _ = reply.send(Err(NodeError::Stopped));
            }
        }
    }

    fn announce_own(&mut self, env: Envelope) {
        let id = env.id();
        let topic = env.header.topic;
        let shard = IdentTopic::new(shard_name(shard_of(&topic)));
        match self.swarm.behaviour_mut().gossipsub.publish(shard, env.encode()) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => debug!("gossip publish of {} deferred to mailboxes: {e}", id.short()),
        }
        let stores = self.stores_for(&topic);
        let outs = self.sync.handle(Input::Send { envelope: env, stores }, now_ms());
        self.apply(outs);
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message.topic, message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for a in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                    }
                }
                if info.protocols.contains(&STORE_PROTOCOL) && !self.store_peers.contains_key(&peer_id) {
                    self.store_peers.insert(peer_id, peer_key(&peer_id));
                    self.retarget();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })) => {
                let connected = self.swarm.connected_peers().count() as u32;
                if !self.swarm.is_connected(&peer) && connected < self.config.dial_target {
                    let _ = self.swarm.dial(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Store(ev)) => self.on_store_event(ev),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                // Bootstrap while joining (first few peers); afterwards kad's periodic bootstrap
                // suffices — one per connection made every node of a 100-node mesh flood the
                // others' kad handlers.
                if num_established.get() == 1
                    && self.swarm.behaviour().kad.mode() == kad::Mode::Server
                    && self.swarm.connected_peers().count() <= 3
                {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                debug!(%peer_id, "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                if self.store_peers.remove(&peer_id).is_some() =>
            {
                self.retarget();
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, source: PeerId, mid: gossipsub::MessageId, topic: TopicHash, data: Vec<u8>) {
        let verdict = self.admission.check(&source, &data, now_ms());
        let (acceptance, deliver) = match verdict {
            Verdict::Accept(env, _) => {
                self.relayed += 1;
                (MessageAcceptance::Accept, Some(env))
            }
            Verdict::Reject(reason) => {
                self.rejected += 1;
                debug!(%source, ?reason, %topic, "rejected envelope");
                (MessageAcceptance::Reject, None)
            }
            Verdict::Ignore(_) => {
                self.ignored += 1;
                (MessageAcceptance::Ignore, None)
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&mid, &source, acceptance);
        if let Some(env) = deliver
            && self.subscribed.contains(&env.header.topic)
        {
            let outs = self.sync.handle(Input::Gossip { envelope: *env }, now_ms());
            self.apply(outs);
        }
    }

    fn on_store_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        let limits = self.config.admission.limits;
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_store_request(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    let Some((from, kind)) = self.outbound.remove(&request_id) else { return };
                    let now = now_ms();
                    let input = match (Response::decode(&response, &limits), kind) {
                        (
                            Ok(Response::Stored(id, StoreOutcome::Stored | StoreOutcome::Duplicate)),
                            Outbound::Store(want),
                        ) if id == want => Input::StoreAck { id, from },
                        (_, Outbound::Store(id)) => Input::StoreFailed { id, from },
                        (Ok(Response::Page { entries, next }), Outbound::Page(topic)) => {
                            Input::Page { topic, from, entries, next }
                        }
                        (Ok(Response::Envelopes(envelopes)), Outbound::Ids) => {
                            Input::Envelopes { from, envelopes }
                        }
                        (other, _) => {
                            debug!(%from, "unusable store response: {:?}", other.map(|_| ()));
                            return;
                        }
                    };
                    let outs = self.sync.handle(input, now);
                    self.apply(outs);
                }
            },
            request_response::Event::OutboundFailure { request_id, peer, error, .. } => {
                debug!(%peer, %error, "store request failed");
                if let Some((from, Outbound::Store(id))) = self.outbound.remove(&request_id) {
                    let outs = self.sync.handle(Input::StoreFailed { id, from }, now_ms());
                    self.apply(outs);
                }
            }
            _ => {}
        }
    }

    fn on_store_request(&mut self, peer: PeerId, request: Vec<u8>, channel: ResponseChannel<Vec<u8>>) {
        let limits = self.config.admission.limits;
        let Some(mailbox) = &self.mailbox else {
            let _ = self
                .swarm
                .behaviour_mut()
                .store
                .send_response(channel, Response::Error("not a store node".into()).encode());
            return;
        };
        let resp = match Request::decode(&request, &limits) {
            Err(e) => {
                debug!(%peer, "bad store request: {e}");
                Response::Error(format!("bad request: {e}"))
            }
            Ok(Request::Store(env)) => {
                let h = &env.header;
                let now = now_ms();
                if env.payload.is_none()
                    || !pow::check(h, self.config.admission.difficulty)
                    || h.timestamp_ms > now + self.config.admission.future_skew_ms_max
                    || h.ttl_secs > self.config.admission.ttl_secs_max
                {
                    Response::Stored(env.id(), StoreOutcome::Refused)
                } else {
                    match &self.mailbox_tx {
                        Some(tx) => {
                            let _ = tx.send(MailboxJob { channel, envelope: env });
                            return;
                        }
                        None => Response::Error("store is shutting down".into()),
                    }
                }
            }
            Ok(Request::Page { topic, from, limit }) => match mailbox.page(&topic, from, limit as usize) {
                Ok(mut page) => {
                    // Keep the response under the frame limit; the cursor resumes after the cut.
                    let mut bytes = 64;
                    let mut keep = 0;
                    for (_, e) in &page.entries {
                        bytes += 16 + e.encode().len();
                        if bytes > RESPONSE_BYTES_MAX {
                            break;
                        }
                        keep += 1;
                    }
                    if keep < page.entries.len() {
                        page.next = Some(page.entries[keep].0);
                        page.entries.truncate(keep);
                    }
                    Response::Page { entries: page.entries, next: page.next }
                }
                Err(e) => Response::Error(e.to_string()),
            },
            Ok(Request::Ids(ids)) => {
                let mut found = Vec::new();
                let mut bytes = 64;
                for id in ids {
                    if let Ok(Some(e)) = mailbox.get(&id) {
                        bytes += 8 + e.encode().len();
                        if bytes > RESPONSE_BYTES_MAX {
                            break;
                        }
                        found.push(e);
                    }
                }
                Response::Envelopes(found)
            }
        };
        let _ = self.swarm.behaviour_mut().store.send_response(channel, resp.encode());
    }
}

struct HistoryJob {
    envelope: Envelope,
    id: Id,
    after_gap: bool,
    /// Set for our own publication: hand it back to the event loop once durable.
    own: Option<oneshot::Sender<Result<Id, NodeError>>>,
}

enum Committed {
    /// A mailbox batch was committed.
    Mailbox(MailboxCommit),
    /// Our own envelope is durable locally: now gossip it and push it to the store nodes.
    Own(Box<Envelope>, oneshot::Sender<Result<Id, NodeError>>),
}

struct MailboxJob {
    channel: ResponseChannel<Vec<u8>>,
    envelope: Envelope,
}

struct MailboxCommit {
    ok: bool,
    stored: u64,
    answers: Vec<(ResponseChannel<Vec<u8>>, Id, StoreOutcome)>,
}

/// Most writes grouped into one commit.
const COMMIT_BATCH_MAX: usize = 512;

/// Takes the first job (blocking) and every job already queued, up to the batch limit.
fn next_batch<T>(rx: &std_mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    while batch.len() < COMMIT_BATCH_MAX {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Local history writer: group-commits delivered envelopes, then announces them, so what the
/// application sees is already durable.
fn spawn_history_writer(
    store: Arc<Store>,
    events: broadcast::Sender<NodeEvent>,
    committed: mpsc::UnboundedSender<Committed>,
) -> (std_mpsc::Sender<HistoryJob>, JoinHandle<()>) {
    let (tx, rx) = std_mpsc::channel::<HistoryJob>();
    let t = std::thread::spawn(move || {
        while let Some(batch) = next_batch(&rx) {
            let envs: Vec<Envelope> = batch.iter().map(|j| j.envelope.clone()).collect();
            let result = store.append(&envs);
            if let Err(e) = &result {
                warn!("cannot persist {} envelopes: {e}", envs.len());
            }
            for j in batch {
                match (j.own, &result) {
                    (Some(reply), Ok(_)) => {
                        let _ = committed.send(Committed::Own(Box::new(j.envelope), reply));
                    }
                    (Some(reply), Err(e)) => {
                        let _ = reply.send(Err(NodeError::Refused(format!("not stored locally: {e}"))));
                    }
                    (None, _) => {
                        let _ = events.send(NodeEvent::Delivered {
                            envelope: Box::new(j.envelope),
                            id: j.id,
                            after_gap: j.after_gap,
                        });
                    }
                }
            }
        }
    });
    (tx, t)
}

/// Mailbox writer: group-commits store requests (one transaction, one fsync per batch); the
/// answers go back to the event loop only after the commit returned.
fn spawn_mailbox_writer(
    store: Arc<Store>,
    retention: Retention,
    committed: mpsc::UnboundedSender<Committed>,
) -> (std_mpsc::Sender<MailboxJob>, JoinHandle<()>) {
    let (tx, rx) = std_mpsc::channel::<MailboxJob>();
    let t = std::thread::spawn(move || {
        while let Some(batch) = next_batch(&rx) {
            let envs: Vec<Envelope> = batch.iter().map(|j| j.envelope.clone()).collect();
            let result = store.append_with(&envs, &retention, now_ms());
            if let Err(e) = &result {
                warn!("mailbox append failed: {e}");
            }
            let mut stored = 0;
            let answers = batch
                .into_iter()
                .enumerate()
                .map(|(i, j)| {
                    let outcome = match result.as_ref().ok().and_then(|r| r.results.get(i)) {
                        Some(Appended::Stored { .. }) => {
                            stored += 1;
                            StoreOutcome::Stored
                        }
                        Some(Appended::Duplicate) => StoreOutcome::Duplicate,
                        _ => StoreOutcome::Refused,
                    };
                    (j.channel, j.envelope.id(), outcome)
                })
                .collect();
            if committed
                .send(Committed::Mailbox(MailboxCommit { ok: result.is_ok(), stored, answers }))
                .is_err()
            {
                break;
            }
        }
    });
    (tx, t)
}
