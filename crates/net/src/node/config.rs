//! What a node is started with: [`NodeConfig`] and the gossipsub scoring in [`ScoreConfig`].

use std::path::PathBuf;

use cairn_store::Retention;
use libp2p::Multiaddr;

use super::identity::SealKey;
use super::transport::WsTls;
use crate::light::{LightConfig, LightServeLimits};
use crate::stem::StemConfig;
use crate::sync::SyncConfig;
use crate::validate::AdmissionConfig;

/// What a store node serves one peer, per second (token buckets; a request over its rate is
/// answered "rate limited" at once and the peer retries with back-off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Envelopes offered for storage per second, sustained (a store-many request counts each).
    pub store_envelopes_per_sec: u32,
    /// Burst above it, envelopes.
    pub store_envelopes_burst: u32,
    /// Page and by-id reads per second, sustained.
    pub reads_per_sec: u32,
    /// Burst above it, reads.
    pub reads_burst: u32,
    /// Peers tracked by each limiter (the least recently seen are forgotten).
    pub peers_max: usize,
    /// Envelopes per second, from all peers together, a store node accepts at its base proof
    /// of work; each doubling over it asks one more bit (see `node/pow_load.rs`).
    pub load_envelopes_per_sec: u32,
    /// Size of the relay pool, in source shares (`Retention::source_bytes_max` each): every
    /// relayed push (`StoreRelayed`, from a stem hop), whichever hop pushes it, is charged to
    /// one of this many pool sources, picked by the push's first envelope id (see
    /// `node/serve.rs`). It bounds both what a flooder holds beyond its own share by routing
    /// through honest stem hops (at most this many shares, however many hops) and how much
    /// stemmed mail a store keeps before relayed pushes are refused and senders fall back to
    /// pushing directly (losing the stem's cover). Clamped to 1..=64 (`RELAY_POOL_SHARES_MAX`).
    pub relay_pool_shares: u32,
}

/// `ServeLimits::relay_pool_shares`, at most.
pub(super) const RELAY_POOL_SHARES_MAX: u32 = 64;

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            store_envelopes_per_sec: 2_000,
            store_envelopes_burst: 4_000,
            reads_per_sec: 100,
            reads_burst: 400,
            peers_max: 4096,
            load_envelopes_per_sec: 1_000,
            relay_pool_shares: 1,
        }
    }
}

/// What a relay server (`relay_server`) gives others, at most. Beyond a limit a reservation or
/// circuit is refused (the peer is told so) and nothing is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once (peers listening through this relay).
    pub reservations_max: usize,
    /// Reservations held at once by one peer.
    pub reservations_per_peer_max: usize,
    /// How long a reservation lasts before the peer must renew it, seconds.
    pub reservation_secs: u64,
    /// Circuits open at once.
    pub circuits_max: usize,
    /// Circuits open at once per peer (as source or destination).
    pub circuits_per_peer_max: usize,
    /// Bytes relayed on one circuit before it is closed (both directions together).
    pub circuit_bytes_max: u64,
    /// Lifetime of one circuit, seconds.
    pub circuit_secs: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            reservations_max: 128,
            reservations_per_peer_max: 4,
            reservation_secs: 3600,
            circuits_max: 64,
            circuits_per_peer_max: 4,
            circuit_bytes_max: 64 * 1024 * 1024,
            circuit_secs: 3600,
        }
    }
}

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
    /// Addresses to listen on (default: 127.0.0.1, TCP and QUIC, ephemeral ports). A
    /// `…/tcp/P/ws` address listens for WebSocket (e.g. port 443 next to a web server's).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// Directory for this node's stores (`history.redb`, `mailbox.redb`).
    pub data_dir: PathBuf,
    /// Serve as a store node (mailbox).
    pub serve_store: bool,
    /// Serve as a relay (v2) for peers behind NAT.
    pub relay_server: bool,
    /// Limits of the relay server.
    pub relay_limits: RelayLimits,
    /// Reachable only through this relay: listen on its circuit address
    /// (`…/p2p/RELAY`; `/p2p-circuit` is appended).
    pub listen_via_relay: Option<Multiaddr>,
    /// WebSocket TLS: a server certificate (then `…/tcp/P/tls/ws` listens with TLS) and extra
    /// trust anchors for dialling `wss` peers; `None`: plain WebSocket, `wss` dialled with the
    /// web PKI roots.
    pub ws_tls: Option<WsTls>,
    /// Discover peers on the local network with mDNS (announces this node's listen addresses
    /// to the LAN: opt-in). Only private, link-local and loopback addresses are dialled.
    pub mdns: bool,
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
    /// Per-peer rates a store node serves.
    pub serve: ServeLimits,
    /// Fixed identity (Ed25519 seed); it wins over `identity_file`. Neither: a fresh identity.
    pub identity_seed: Option<[u8; 32]>,
    /// Key file keeping the identity across restarts (loaded, or created once; see
    /// `node/identity.rs`).
    pub identity_file: Option<PathBuf>,
    /// Seal the key file under this key (a user node: derived from its device key); `None`:
    /// a plain 0600 file (a store-only node, which has no device key).
    pub identity_seal: Option<SealKey>,
    /// Keep a peer book in `data_dir/peers` and redial its peers with backoff while fewer
    /// than `dial_target` are connected (see [`crate::peerbook`]).
    pub peer_book: bool,
    /// Period of the timer that drives retries and resyncs, ms.
    pub tick_ms: u64,
    /// Period of anti-entropy: every subscribed topic is asked of its store nodes again (from
    /// the saved cursor), so mail that gossip did not bring arrives within this time. 0: never.
    pub resync_every_ms: u64,
    /// Period of mailbox expiry, ms.
    pub expire_every_ms: u64,
    /// Gossipsub heartbeat, ms.
    pub heartbeat_ms: u64,
    /// Capacity of the lossless event stream ([`super::NodeHandle::take_events`]), events.
    /// When it is full the node waits for the consumer (see `events.rs` for the policy).
    pub events_lossless_max: usize,
    /// The stem phase before gossip (`/cairn/stem/1`, see `node/stem_hop.rs`): own envelopes
    /// go to one peer first and are diffused and pushed to the store nodes further on, and
    /// this node relays others' stem envelopes. On by default (`StemConfig::default()`).
    /// `None` (`cairn up --no-stem`): own envelopes are gossiped and pushed from here, and stem
    /// requests are not served. A node with no peer that takes stem envelopes (only store
    /// nodes connected), and a light client (see [`NodeConfig::effective`]), use that direct
    /// path too. Store nodes charge every relayed push to one relay pool per store (see
    /// `node/serve.rs`), so a flooder routing through honest hops holds at most its own share
    /// plus that pool, whatever the number of hops.
    pub stem: Option<StemConfig>,
    /// Prefer near peers: keep the dialed connections with the lowest ping RTT, beside a few
    /// kept by hash (see [`crate::nearness`]); `None`: connections are kept as discovered.
    /// Off for light clients.
    pub nearness: Option<crate::nearness::NearConfig>,
    /// Relay ledger RPC channels to the validators of this genesis for peers
    /// (`/cairn/ledger-relay/1`, see [`crate::ledger_relay`]); `None`: not served.
    pub ledger_relay: Option<crate::ledger_relay_io::LedgerRelayConfig>,
    /// Run as a light client ([`crate::light`]): no gossip shard, no store, DHT (client mode
    /// only), stem, relay or light service; mail comes over streams from service nodes, own
    /// envelopes are gossiped by the primary one and pushed to the store nodes from here, and
    /// count as stored once `replicas` store nodes acknowledged them. Overrides the serving
    /// fields above at start.
    pub light: Option<LightConfig>,
    /// Serve light clients (`/cairn/light/1`) within these limits; `None`: not served. Ignored
    /// on a light client.
    pub light_serve: Option<LightServeLimits>,
}

/// A light client waits this long before asking the store nodes for a parent its stream has
/// not brought yet, ms: under load a child often overtakes its parent on the way, and asking at
/// once fetched the parent a second time (`light_traffic_figures` under load: 27 of 40 small
/// envelopes fetched again, 2.6 bytes received per delivered byte).
pub(super) const LIGHT_MISSING_FIRST_ASK_MS: u64 = 1_000;

impl NodeConfig {
    /// The configuration a node runs with: a light client serves nothing (store, relay, stem,
    /// ledger relay, light service), and counts a send stored only with all `replicas` acks.
    pub(crate) fn effective(mut self) -> Self {
        if self.light.is_some() {
            self.serve_store = false;
            self.relay_server = false;
            self.stem = None;
            self.nearness = None;
            self.ledger_relay = None;
            self.light_serve = None;
            self.resync_every_ms = 0;
            self.sync.acks_required = self.sync.acks_required.max(self.replicas);
            if self.sync.missing_first_ask_ms == 0 {
                self.sync.missing_first_ask_ms = LIGHT_MISSING_FIRST_ASK_MS;
            }
        }
        self
    }

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
            relay_limits: RelayLimits::default(),
            listen_via_relay: None,
            mdns: false,
            ws_tls: None,
            admission: AdmissionConfig::default(),
            sync: SyncConfig::default(),
            retention: Retention::default(),
            replicas: 3,
            connections_max: 1024,
            dial_target: 16,
            score: ScoreConfig::default(),
            serve: ServeLimits::default(),
            identity_seed: None,
            identity_file: None,
            identity_seal: None,
            peer_book: true,
            tick_ms: 200,
            resync_every_ms: 5_000,
            expire_every_ms: 60_000,
            heartbeat_ms: 500,
            events_lossless_max: super::EVENTS_LOSSLESS_MAX,
            stem: Some(StemConfig::default()),
            nearness: Some(crate::nearness::NearConfig::default()),
            ledger_relay: None,
            light: None,
            light_serve: Some(LightServeLimits::default()),
        }
    }
}
