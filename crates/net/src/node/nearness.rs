//! The actor's side of [`crate::nearness`]: RTTs from the libp2p ping, which connections this
//! node dialed, the round's candidates from the Kademlia routing table, and closing the slowest.
//! Light clients do not run it (`NodeConfig::effective`).

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use tracing::debug;

use super::actor::Node;
use super::now_ms;
use crate::nearness::{Conn, NearConfig, Nearness, Step};

/// Candidates looked at per round in the routing table, at most.
const ROUTING_SCAN_MAX: usize = 1_024;

/// The node's nearness state; its maps hold connected peers only (≤ `connections_max`).
pub(super) struct NearState {
    policy: Nearness<PeerId>,
    /// Last ping RTT per connected peer, ms.
    rtt_ms: HashMap<PeerId, u64>,
    /// Connected peers this node dialed.
    dialed: HashSet<PeerId>,
    /// Keys the hash that keeps `random_keep` peers and orders candidates (from the OS).
    key: [u8; 32],
    round: u64,
    /// Connections closed for slowness since start (`status`).
    pub(super) closed: u64,
}

impl NearState {
    pub(super) fn new(config: NearConfig) -> Self {
        Self {
            policy: Nearness::new(config, now_ms()),
            rtt_ms: HashMap::new(),
            dialed: HashSet::new(),
            key: super::local_key(),
            round: 0,
            closed: 0,
        }
    }

    fn rank(&self, salt: &[u8], peer: &PeerId) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(salt);
        h.update(&peer.to_bytes());
        *h.finalize().as_bytes()
    }
}

impl Node {
    /// How many peers discovery may dial up to: `dial_target`, plus a round's candidates.
    pub(super) fn dial_ceiling(&self) -> u32 {
        match &self.near {
            Some(n) => n.policy.dial_ceiling(self.config.dial_target),
            None => self.config.dial_target,
        }
    }

    /// False for a peer recently closed for being slow.
    pub(super) fn near_may_dial(&self, peer: &PeerId) -> bool {
        self.near.as_ref().is_none_or(|n| n.policy.may_dial(peer, now_ms()))
    }

    /// A ping answer from a connected peer.
    pub(super) fn near_rtt(&mut self, peer: PeerId, rtt_ms: u64) {
        if let Some(n) = &mut self.near
            && self.swarm.is_connected(&peer)
        {
            n.rtt_ms.insert(peer, rtt_ms);
        }
    }

    /// A first connection to `peer`; `dialed` if this node opened it.
    pub(super) fn near_connected(&mut self, peer: PeerId, dialed: bool) {
        if let Some(n) = &mut self.near
            && dialed
        {
            n.dialed.insert(peer);
        }
    }

    /// The last connection to `peer` closed.
    pub(super) fn near_gone(&mut self, peer: &PeerId) {
        if let Some(n) = &mut self.near {
            n.rtt_ms.remove(peer);
            n.dialed.remove(peer);
        }
    }

    /// On the tick: a round's dials of new candidates, or its closing of the slowest.
    pub(super) fn near_tick(&mut self) {
        let now = now_ms();
        let Some(n) = self.near.as_ref().filter(|n| n.policy.due(now)) else { return };
        let conns: Vec<Conn<PeerId>> = self
            .swarm
            .connected_peers()
            .map(|p| Conn {
                peer: *p,
                rtt_ms: n.rtt_ms.get(p).copied(),
                dialed: n.dialed.contains(p),
                needed: self.near_needed(p),
                keep_rank: n.rank(b"keep", p),
            })
            .collect();
        let target = self.config.dial_target as usize;
        let Some(n) = &mut self.near else { return };
        match n.policy.tick(now, target, &conns) {
            Step::Idle => {}
            Step::Close(peers) => {
                for p in peers {
                    debug!(peer = %p, rtt_ms = ?n.rtt_ms.get(&p), "closing a slow connection");
                    n.closed += 1;
                    let _ = self.swarm.disconnect_peer_id(p);
                }
            }
            Step::Probe(want) => self.near_probe(want),
        }
    }

    /// Peers the node must not close for slowness: store nodes, the stem's peers in use, the
    /// relay it listens through.
    fn near_needed(&self, p: &PeerId) -> bool {
        self.store_peers.contains_key(p)
            || self.stem.as_ref().is_some_and(|s| s.uses(p))
            || self.config.listen_via_relay.as_ref().is_some_and(|a| {
                a.iter().any(|x| matches!(x, libp2p::multiaddr::Protocol::P2p(id) if id == *p))
            })
    }

    /// Dials up to `want` routing-table peers that are not connected and not remembered as
    /// slow, in an order peers cannot predict.
    fn near_probe(&mut self, want: usize) {
        let Some(n) = &mut self.near else { return };
        n.round += 1;
        let salt = n.round.to_le_bytes();
        let now = now_ms();
        let mut candidates: Vec<(PeerId, Vec<libp2p::Multiaddr>)> = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|b| {
                b.iter()
                    .map(|e| (*e.node.key.preimage(), e.node.value.iter().cloned().collect()))
                    .collect::<Vec<_>>()
            })
            .take(ROUTING_SCAN_MAX)
            .collect();
        let Some(n) = &self.near else { return };
        candidates.retain(|(p, _)| !self.swarm.is_connected(p) && n.policy.may_dial(p, now));
        candidates.sort_by_cached_key(|(p, _)| n.rank(&salt, p));
        for (peer, addrs) in candidates.into_iter().take(want) {
            self.dial_known(peer, addrs, "nearness probe");
        }
    }
}
