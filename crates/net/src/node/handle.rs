//! The ingress: [`NodeHandle`], through which the application commands a running node and
//! reads its events, and [`start`], which wires a node up.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::{Envelope, Id, Topic};
use cairn_store::Store;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use super::actor::Node;
use super::behaviour::{Behaviour, build_swarm, identity};
use super::config::NodeConfig;
use super::events::{self, EventTap, NodeEvent};
use super::relayed::RelayedListen;
use super::writer::{COMMITTED_MAX, spawn_history_writer, spawn_mailbox_writer};
use super::{NodeError, NodeStatus};
use crate::receipt::StoreReceipt;

/// Commands queued from handles to the actor, at most. When full, the calling handle method
/// waits: back-pressure on the application.
const COMMANDS_MAX: usize = 1024;
/// Time to wait for the listen addresses at start-up.
const LISTEN_TIMEOUT_MS: u64 = 10_000;

/// What a handle asks of the actor.
pub(super) enum Command {
    Publish(Box<Envelope>, oneshot::Sender<Result<Id, NodeError>>),
    Subscribe(Topic, oneshot::Sender<Result<(), NodeError>>),
    Dial(Multiaddr),
    Status(oneshot::Sender<NodeStatus>),
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
    PublishRaw(u16, Vec<u8>),
    Erase(Topic, Id, [u8; 32]),
    SetRegisteredStores(Vec<([u8; 32], [u8; 32])>, oneshot::Sender<usize>),
    WorkBits(Topic, oneshot::Sender<u32>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    cmd: mpsc::Sender<Command>,
    events: Arc<EventTap>,
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on (with `/p2p/<id>`).
    pub listen_addrs: Vec<Multiaddr>,
    history: Arc<Store>,
    streams: libp2p_stream::Control,
}

impl NodeHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }
    /// Publishes an envelope (already mined and sealed). Returns its id once stored locally.
    /// Refused while the outbox is full of unstored sends or the local writer is saturated.
    pub async fn publish(&self, envelope: Envelope) -> Result<Id, NodeError> {
        self.publish_queued(envelope).await?.await.map_err(|_| NodeError::Stopped)?
    }
    /// Queues a publication, in call order, and returns its answer to await later: a caller
    /// keeps many in flight (the local writer commits them together) without reordering them.
    pub async fn publish_queued(
        &self,
        envelope: Envelope,
    ) -> Result<oneshot::Receiver<Result<Id, NodeError>>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::Publish(Box::new(envelope), tx)).await.map_err(|_| NodeError::Stopped)?;
        Ok(rx)
    }
    /// Follows a topic: its shard's gossip, and its history from the mailboxes. Refused
    /// beyond `SyncConfig::topics_max` topics.
    pub async fn subscribe(&self, topic: Topic) -> Result<(), NodeError> {
        self.ask(|tx| Command::Subscribe(topic, tx)).await?
    }
    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.cmd.send(Command::Dial(addr)).await.map_err(|_| NodeError::Stopped)
    }
    /// Feeds the store nodes registered on the ledger, as `(node key, rank salt)` pairs (read
    /// with a proof from the ledger): from now on topics are placed on these only (see
    /// [`crate::shard::place`]); an empty list restores the unregistered fallback. Keys that
    /// are not Ed25519 keys are skipped, and at most `REGISTERED_STORES_MAX` (256) are kept.
    /// Returns how many were kept.
    pub async fn set_registered_stores(&self, stores: Vec<([u8; 32], [u8; 32])>) -> Result<usize, NodeError> {
        self.ask(|tx| Command::SetRegisteredStores(stores, tx)).await
    }

    /// The proof of work (base bits, see [`cairn_proto::pow::Difficulty`]) to mine the next
    /// envelope of `topic` with: the most its store nodes asked for in the last minute
    /// (`NeedsWork` answers under load), or the configured floor.
    pub async fn work_bits(&self, topic: Topic) -> Result<u32, NodeError> {
        self.ask(|tx| Command::WorkBits(topic, tx)).await
    }

    /// The peers connected now (at most `connections_max`).
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NodeError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// A handle for opening raw streams (the ledger relay's client side, see
    /// [`crate::ledger_relay_io::open`]).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.ask(Command::Status).await
    }
    /// Gossipsub score of a peer.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NodeError> {
        self.ask(|tx| Command::PeerScore(peer, tx)).await
    }
    /// Asks the store nodes of `topic` to drop the payload of `id`, showing the secret of its
    /// erase lock; they keep the header as a tombstone. Fire and forget: every member that
    /// applies a redaction asks too, so one unreachable sender does not keep the ciphertext.
    pub async fn erase_at_stores(&self, topic: Topic, id: Id, secret: [u8; 32]) -> Result<(), NodeError> {
        self.cmd.send(Command::Erase(topic, id, secret)).await.map_err(|_| NodeError::Stopped)
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
    /// The store receipts kept for an own envelope: each store node that acknowledged it, with
    /// its signed promise (already verified against that node's key when it arrived).
    pub fn receipts(&self, id: &Id) -> Result<Vec<(PeerId, StoreReceipt)>, NodeError> {
        let prefix = format!("receipt/{}/", id.to_hex());
        let rows = self.history.keys_with_prefix(&prefix, RECEIPTS_PER_ENVELOPE_MAX)?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let peer: PeerId = k.strip_prefix(&prefix)?.parse().ok()?;
                Some((peer, StoreReceipt::decode(&v).ok()?))
            })
            .collect())
    }
    /// The lossless event stream, for the one consumer that must see every `Delivered` and
    /// `Status` event: `Some` the first time (from any clone of the handle), `None` after.
    /// Take it before subscribing. A slow consumer slows the node down instead of losing
    /// events; the policy is described in `node/events.rs`.
    pub fn take_events(&self) -> Option<mpsc::Receiver<NodeEvent>> {
        self.events.take()
    }
    /// A lossy stream of node events for observers (benches, tests): a receiver that lags by
    /// more than [`super::EVENTS_BROADCAST_MAX`] events loses the oldest.
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }
    /// Stops the node cleanly (stores are closed).
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

/// Receipts read back for one envelope, at most (a sender asks k = 3 store nodes, and more
/// when the set changes).
const RECEIPTS_PER_ENVELOPE_MAX: usize = 64;

/// Page cache of a store node's mailbox, bytes (the local history uses the store default).
pub(crate) const MAILBOX_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Starts a node; returns once it listens on every configured address.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    let config = config.effective();
    let (history, mailbox) = open_stores(&config)?;
    let key = identity(&config)?;
    let traffic = Arc::new(super::traffic::Counters::default());
    let mut swarm = build_swarm(&config, key.clone(), traffic.clone())?;
    let peer_id = *swarm.local_peer_id();
    let mut streams = swarm.behaviour().streams.new_control();
    if let Some(relay) = &config.ledger_relay {
        crate::ledger_relay_io::spawn_server(&mut streams, relay.clone()).map_err(NodeError::Setup)?;
    }
    let (light_tx, light_rx) = mpsc::channel(super::light_serve::LIGHT_INPUTS_MAX);
    let light_hub = match config.light_serve {
        Some(limits) => Some(
            super::light_serve::spawn_server(
                &mut streams,
                limits,
                config.admission.limits.envelope_bytes_max + 4096,
                light_tx.clone(),
            )
            .map_err(NodeError::Setup)?,
        ),
        None => None,
    };
    let (listen_addrs, relayed) = listen(&mut swarm, &config).await?;
    for b in &config.bootstrap {
        if let Err(e) = swarm.dial(b.clone()) {
            warn!("cannot dial bootstrap {b}: {e}");
        }
    }
    let setup = |e: std::io::Error| NodeError::Setup(format!("writer thread: {e}"));
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMANDS_MAX);
    let (sink, tap) = events::streams(config.events_lossless_max);
    // Only the writers hold senders: the actor sees the channel close once both finished.
    let (committed_tx, committed_rx) = mpsc::channel(COMMITTED_MAX);
    let history_lanes = spawn_history_writer(history.clone(), sink, committed_tx.clone()).map_err(setup)?;
    let mailbox_lane = match &mailbox {
        Some(m) => Some(
            spawn_mailbox_writer(m.clone(), key, config.retention, config.expire_every_ms, committed_tx)
                .map_err(setup)?,
        ),
        None => None,
    };
    let light = config.light.map(|l| super::light_client::LightClient::new(l, streams.clone()));
    let mut node = Node::new(config, swarm, history.clone(), mailbox, history_lanes, mailbox_lane);
    node.relayed = RelayedListen::started(relayed);
    node.light = light;
    node.light_hub = light_hub;
    node.light_tx = Some(light_tx);
    node.traffic = traffic;
    tokio::spawn(node.run(cmd_rx, committed_rx, light_rx));
    info!(%peer_id, "node started");
    Ok(NodeHandle { cmd: cmd_tx, events: Arc::new(tap), peer_id, listen_addrs, history, streams })
}

type Stores = (Arc<Store>, Option<Arc<Store>>);

/// `history.redb`, and `mailbox.redb` on a store node.
fn open_stores(config: &NodeConfig) -> Result<Stores, NodeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::Setup(format!("{}: {e}", config.data_dir.display())))?;
    let limits = config.admission.limits;
    let history = Arc::new(Store::open(&config.data_dir.join("history.redb"), limits)?);
    let mailbox = match config.serve_store {
        // A store node's mailbox is read by every user it serves: a larger page cache.
        true => Some(Arc::new(Store::open_with_cache(
            &config.data_dir.join("mailbox.redb"),
            limits,
            MAILBOX_CACHE_BYTES,
        )?)),
        false => None,
    };
    Ok((history, mailbox))
}

/// Listens on every configured address (and through the relay, if asked); returns the
/// addresses with `/p2p/<id>`, and the relayed listener (its address comes once the relay
/// accepted the reservation).
async fn listen(
    swarm: &mut Swarm<Behaviour>,
    config: &NodeConfig,
) -> Result<(Vec<Multiaddr>, Option<ListenerId>), NodeError> {
    let peer_id = *swarm.local_peer_id();
    for a in &config.listen {
        swarm.listen_on(a.clone()).map_err(|e| NodeError::Setup(format!("listen on {a}: {e}")))?;
    }
    let mut listen_addrs = Vec::new();
    while listen_addrs.len() < config.listen.len() {
        match tokio::time::timeout(Duration::from_millis(LISTEN_TIMEOUT_MS), swarm.select_next_some()).await {
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
    let mut relayed = None;
    if let Some(relay) = &config.listen_via_relay {
        let circuit = relay.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        relayed = Some(
            swarm
                .listen_on(circuit.clone())
                .map_err(|e| NodeError::Setup(format!("listen via {circuit}: {e}")))?,
        );
    }
    Ok((listen_addrs, relayed))
}
