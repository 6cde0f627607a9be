//! The libp2p shell: a thin async loop around [`crate::validate`], [`crate::sync`] and the
//! store, speaking TCP/QUIC/WebSocket (addresses by IP or DNS name) + Noise + Yamux, gossipsub
//! (anonymous, validated, scored) on shard topics, Kademlia discovery, mDNS on the LAN
//! (opt-in), identify, ping, relay v2 (client, and server on request), DCUtR, AutoNAT and the
//! `/cairn/store/1` request/response protocol, and the `/cairn/stem/1` stem phase before
//! gossip (issue 17 §5).
//!
//! Code map, one purpose per file:
//! - `config`: [`NodeConfig`], [`ScoreConfig`], [`ServeLimits`].
//! - `codec`: [`StoreCodec`] and [`StemCodec`], the length-prefixed bounded frames of the
//!   store and stem protocols.
//! - `identity`: the node key file (its libp2p identity across restarts), [`SealKey`].
//! - `peers`: the actor's side of the peer book (load, save, redial; see [`crate::peerbook`]).
//! - `lan`: mDNS answers, filtered to local addresses and bounded, then dialled.
//! - `relayed`: the listener through a relay (`listen_via_relay`), opened again when it closes.
//! - `transport`: WebSocket (TLS when configured), TCP and QUIC, each behind DNS resolution.
//! - `behaviour`: the composed libp2p behaviour and the swarm built from a config.
//! - `handle`: [`NodeHandle`], the ingress (commands in, events out), and [`start`].
//! - `events`: [`NodeEvent`] and the two streams that carry it (lossless and lossy).
//! - `actor`: the event loop that owns the swarm and the state machines.
//! - `store_push`: the store requests of one turn, batched per store node; a topic's store
//!   set; store nodes that answered "full"; kept receipts.
//! - `serve`: answers to store requests (when serving as a store node).
//! - `resync`: page requests sent as pages of ids or of envelopes, and their answers to `sync`.
//! - `light_serve`, `light_client`: `/cairn/light/1` (see [`crate::light`]): feeding light
//!   clients on a full node; streams to service nodes and their cross-check on a light client.
//! - `traffic`: bytes and packets across the TCP sockets.
//! - `stem_hop`: the stem phase: own envelopes to one stem successor, stem envelopes from
//!   peers admitted, forwarded or fluffed, store receipts passed back up.
//! - `registry`: the ledger-registered store set placement uses.
//! - `pow_load`: the proof of work a store node asks for under load, and what senders learn.
//! - `writer`: the group-committing history and mailbox writer threads.
//!
//! Data flow and back-pressure: swarm event → `sync` → outputs; network requests leave at
//! once, history jobs (deliveries, statuses, cursors) queue for the history writer, which
//! commits them in batches and only then emits the events. Every queue on the way is bounded
//! (see the constants below and in each file); on the must-deliver path a full queue makes the
//! producer wait, back to the swarm, which simply stops being polled for a while.

mod actor;
mod behaviour;
mod codec;
mod config;
mod events;
mod handle;
mod identity;
mod lan;
mod light_client;
mod light_serve;
mod nearness;
mod network;
mod orphans;
mod peers;
mod pow_load;
mod registry;
mod relayed;
mod resync;
mod serve;
mod stem_batch;
mod stem_hop;
mod store_push;
mod traffic;
mod transport;
mod writer;

use cairn_proto::Id;
use cairn_store::Stats;
use libp2p::{PeerId, StreamProtocol};
use thiserror::Error;

use crate::sync::SendStatus;

pub use codec::{FrameCodec, StemCodec, StoreCodec};
pub use config::{NodeConfig, RelayLimits, ScoreConfig, ServeLimits};
pub use events::{EVENTS_BROADCAST_MAX, EVENTS_LOSSLESS_MAX, NodeEvent};
pub use handle::{NodeHandle, start};
pub use identity::{SealKey, load_plain_seed};
pub use light_client::LightStatus;
pub use light_serve::LIGHT_PROTOCOL;
pub use resync::ResyncStatus;
pub use traffic::Traffic;
pub use transport::WsTls;

/// The store protocol name.
pub const STORE_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/store/1");
/// The stem protocol name (one envelope to a stem hop; store receipts back).
pub const STEM_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/stem/1");

/// Node start-up and request failures.
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

/// A snapshot of the node for `status`.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses this node listens on now, with `/p2p/<id>` (a relayed one appears once the
    /// relay accepted the reservation).
    pub listen: Vec<libp2p::Multiaddr>,
    /// Connected peers.
    pub peers: usize,
    /// Peers in the peer book with an address to redial (0 when the book is off).
    pub dialable_peers: usize,
    /// Store nodes known.
    pub store_peers: usize,
    /// Connections closed for being slow since start (`NodeConfig::nearness`).
    pub near_closed: u64,
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
    /// Store requests not sent because `OUTBOUND_REQUESTS_MAX` were in flight (the state
    /// machine retries them) or not served because the mailbox queue was full (answered busy).
    pub requests_shed: u64,
    /// Store nodes that confirmed dropping a payload this node asked them to erase.
    pub erasures_confirmed: u64,
    /// The stem phase's figures (all 0 with the stem off).
    pub stem: StemStatus,
    /// Gossip shards joined (0 on a light client).
    pub shards: usize,
    /// Light client figures, and the light service's on a full node.
    pub light: LightStatus,
    /// What crossed this node's TCP sockets since start.
    pub traffic: Traffic,
    /// What anti-entropy read from store nodes: pages of ids and of envelopes, fetches by id.
    pub resync: ResyncStatus,
}

/// What the stem phase did, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StemStatus {
    /// Connected peers that take stem envelopes (candidates for the stem successor).
    pub peers: usize,
    /// Stem envelopes accepted from peers as a hop.
    pub relayed: u64,
    /// Of those, diffused (gossiped and pushed to store nodes) here.
    pub fluffed: u64,
    /// Own envelopes whose stem failed, sent the direct way (gossip and push from here).
    pub fallbacks: u64,
    /// Stem requests refused (invalid, over a rate or bound) or answered busy.
    pub refused: u64,
    /// Own envelopes sent the direct way without asking, while the stem successor's last
    /// refusal is recent (`StemConfig::refused_backoff_ms`).
    pub backed_off: u64,
}

impl From<&stem_hop::StemHop> for StemStatus {
    fn from(h: &stem_hop::StemHop) -> Self {
        let c = h.counters;
        Self {
            peers: h.peers_len(),
            relayed: c.relayed,
            fluffed: c.fluffed,
            fallbacks: c.fallbacks,
            refused: c.refused,
            backed_off: c.backed_off,
        }
    }
}

/// A 32-byte key from the OS for keyed hashes peers must not predict (the stem's coins, the
/// near-peer policy's ranks); from the clock only if the OS gives none.
pub(super) fn local_key() -> [u8; 32] {
    cairn_crypto::keystore::random_bytes::<32>()
        .unwrap_or_else(|_| *blake3::hash(&now_ms().to_le_bytes()).as_bytes())
}

/// Wall-clock time, ms since the Unix epoch (0 if the clock is before it).
pub(super) fn now_ms() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
