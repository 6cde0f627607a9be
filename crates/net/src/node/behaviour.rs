//! The composed libp2p behaviour and the swarm built from a [`NodeConfig`]: transports (TCP,
//! QUIC, WebSocket, all behind DNS resolution, and relayed circuits), anonymous scored
//! gossipsub on the shard topics, Kademlia, identify, relay, DCUtR, AutoNAT, mDNS (opt-in),
//! connection limits and the store protocol.

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic};
use libp2p::identity::Keypair;
use libp2p::kad;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify, mdns, noise, ping,
    relay, yamux,
};

use super::codec::{StemCodec, StoreCodec};
use super::config::{NodeConfig, RelayLimits, ScoreConfig};
use super::{NodeError, STEM_PROTOCOL, STORE_PROTOCOL};
use crate::shard::{SHARDS, shard_name};

/// The Kademlia protocol name.
pub(super) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/kad/1");
const IDENTIFY_PROTOCOL: &str = "/cairn/id/1";
/// Yamux streams per connection, at most: room for many concurrent store requests (one stream
/// each); a further stream is refused by yamux and the request fails (and is retried).
const YAMUX_STREAMS_MAX: usize = 1024;
/// Concurrent inbound and outbound store streams per connection, at most; beyond it
/// request-response refuses the stream (the requester's retry covers it).
const STORE_STREAMS_MAX: usize = 512;
/// Concurrent inbound and outbound stem streams per connection, at most; beyond it
/// request-response refuses the stream (the sender then diffuses the envelope itself).
const STEM_STREAMS_MAX: usize = 256;
/// Connections still in their handshake, at most (capped again by `connections_max`);
/// beyond it new inbound connections are denied.
const PENDING_INCOMING_MAX: u32 = 128;
/// Established connections per peer, at most; a further one is denied.
const CONNECTIONS_PER_PEER_MAX: u32 = 2;

/// The composed libp2p behaviour.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    // First, so a connection over the limits is denied before any other behaviour records it.
    limits: connection_limits::Behaviour,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: Toggle<autonat::Behaviour>,
    pub(super) identify: identify::Behaviour,
    ping: ping::Behaviour,
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) store: request_response::Behaviour<StoreCodec>,
    pub(super) stem: Toggle<request_response::Behaviour<StemCodec>>,
    /// Raw streams: the ledger relay (`crate::ledger_relay_io`).
    pub(super) streams: libp2p_stream::Behaviour,
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
pub(super) fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(YAMUX_STREAMS_MAX);
    c
}

/// The node's identity key: from the configured seed, else from the key file (created once),
/// else a fresh one.
pub(super) fn identity(c: &NodeConfig) -> Result<Keypair, NodeError> {
    match (c.identity_seed, &c.identity_file) {
        (Some(seed), _) => Keypair::ed25519_from_bytes(seed).map_err(|e| NodeError::Setup(e.to_string())),
        (None, Some(path)) => super::identity::load_or_create(path, c.identity_seal.as_ref()),
        (None, None) => Ok(Keypair::generate_ed25519()),
    }
}

/// Builds the swarm: WebSocket (TLS when configured), TCP and QUIC transports (addresses with
/// `/dns`, `/dns4` or `/dns6` names are resolved with the system's resolver; see
/// `transport.rs`), relay client, and [`behaviour`].
pub(super) fn build_swarm(
    c: &NodeConfig,
    keypair: Keypair,
    counters: std::sync::Arc<super::traffic::Counters>,
) -> Result<Swarm<Behaviour>, NodeError> {
    let setup = |e: &dyn std::fmt::Display| NodeError::Setup(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| super::transport::build(key, c.ws_tls.as_ref(), counters.clone()))
        .map_err(|e| setup(&format!("transports (the DNS resolver reads /etc/resolv.conf): {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_behaviour(|key, relay_client| behaviour(c, key, relay_client))
        .map_err(|e| setup(&e))?
        .with_swarm_config(|s| s.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// The composed behaviour for `key`.
fn behaviour(
    c: &NodeConfig,
    key: &Keypair,
    relay_client: relay::client::Behaviour,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let id = key.public().to_peer_id();
    let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
    kad_cfg.set_query_timeout(Duration::from_secs(20));
    let mut kad = kad::Behaviour::with_config(id, kad::store::MemoryStore::new(id), kad_cfg);
    // A light client asks the DHT but answers no one (client mode: not in others' tables).
    kad.set_mode(Some(if c.light.is_some() { kad::Mode::Client } else { kad::Mode::Server }));
    let relay = c.relay_server.then(|| relay::Behaviour::new(id, relay_config(&c.relay_limits)));
    let mdns = match c.mdns {
        true => Some(mdns::tokio::Behaviour::new(mdns::Config::default(), id)?),
        false => None,
    };
    // A light client is never dialled back for service: no reachability probes (idle traffic).
    let autonat = c.light.is_none().then(|| {
        autonat::Behaviour::new(id, autonat::Config { only_global_ips: false, ..Default::default() })
    });
    let ping = match &c.light {
        Some(l) => ping::Behaviour::new(
            ping::Config::new().with_interval(Duration::from_millis(l.keepalive_ms.max(1_000))),
        ),
        None => ping::Behaviour::default(),
    };
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(c.connections_max))
            .with_max_pending_incoming(Some(c.connections_max.min(PENDING_INCOMING_MAX)))
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX)),
    );
    Ok(Behaviour {
        relay_client,
        relay: Toggle::from(relay),
        mdns: Toggle::from(mdns),
        dcutr: dcutr::Behaviour::new(id),
        autonat: Toggle::from(autonat),
        // Pushed again when a listen address appears (a relayed one, after the reservation),
        // so peers learn how to reach a node that listens only through a relay.
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public()).with_push_listen_addr_updates(true),
        ),
        ping,
        kad,
        gossipsub: build_gossipsub(c)?,
        store: store_behaviour(c.serve_store),
        stem: Toggle::from(stem_behaviour(c)),
        streams: libp2p_stream::Behaviour::new(),
        limits,
    })
}

/// The relay server's configuration from its named limits (libp2p's default per-peer and
/// per-IP reservation and circuit rate limiters stay on).
fn relay_config(l: &RelayLimits) -> relay::Config {
    relay::Config {
        max_reservations: l.reservations_max,
        max_reservations_per_peer: l.reservations_per_peer_max,
        reservation_duration: Duration::from_secs(l.reservation_secs),
        max_circuits: l.circuits_max,
        max_circuits_per_peer: l.circuits_per_peer_max,
        max_circuit_bytes: l.circuit_bytes_max,
        max_circuit_duration: Duration::from_secs(l.circuit_secs),
        ..relay::Config::default()
    }
}

/// The stem protocol when the stem is on: one envelope per request, answered once its store
/// nodes answered (see `stem_hop.rs` for the deadlines this timeout backs up). A store node
/// sends its own envelopes through the stem but is never a stem hop: a stem through a store
/// would show it the first hop it is meant not to see, and a store fluffing an envelope
/// could not push it to itself (it is one of the topic's stores).
fn stem_behaviour(c: &NodeConfig) -> Option<request_response::Behaviour<StemCodec>> {
    let s = c.stem?;
    let codec = StemCodec::stem(c.admission.limits.envelope_bytes_max);
    let support = if c.serve_store { ProtocolSupport::Outbound } else { ProtocolSupport::Full };
    Some(request_response::Behaviour::with_codec(
        codec,
        [(STEM_PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_millis(super::stem_hop::request_timeout_ms(&s)))
            .with_max_concurrent_streams(STEM_STREAMS_MAX),
    ))
}

/// The store protocol: inbound only on store nodes; 10 s per request.
fn store_behaviour(serve: bool) -> request_response::Behaviour<StoreCodec> {
    let support = if serve { ProtocolSupport::Full } else { ProtocolSupport::Outbound };
    request_response::Behaviour::with_codec(
        StoreCodec::store(),
        [(STORE_PROTOCOL, support)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(10))
            .with_max_concurrent_streams(STORE_STREAMS_MAX),
    )
}
