//! mDNS discovery on the local network (opt-in: `NodeConfig::mdns`). Any host on the LAN can
//! answer mDNS queries, so what it announces is hostile input: only addresses that stay on the
//! local network (private, link-local, loopback, unique-local IPv6) are taken, at most
//! `LAN_ADDRS_PER_PEER_MAX` per peer and `LAN_PEERS_PER_EVENT_MAX` peers per answer; they go to
//! Kademlia and are dialled only while fewer than `dial_target` peers are connected. A
//! responder cannot make this node dial the Internet on its behalf.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, mdns};

use super::actor::Node;

/// Addresses taken per discovered peer, at most.
const LAN_ADDRS_PER_PEER_MAX: usize = 4;
/// Peers taken from one mDNS answer, at most.
const LAN_PEERS_PER_EVENT_MAX: usize = 32;

/// Whether `ip` stays on the local network.
fn is_local_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => {
            let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            unique_local || link_local || v6 == Ipv6Addr::LOCALHOST
        }
    }
}

/// Whether a discovered address may be dialled: it starts with a local IP (no DNS name, which
/// could resolve anywhere) and names no other peer than the one announced.
fn is_lan_addr(addr: &Multiaddr, peer: &PeerId) -> bool {
    let mut it = addr.iter();
    let local = match it.next() {
        Some(Protocol::Ip4(ip)) => is_local_ip(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => is_local_ip(IpAddr::V6(ip)),
        _ => false,
    };
    local && it.all(|p| !matches!(p, Protocol::P2p(id) if id != *peer) && p != Protocol::P2pCircuit)
}

/// The peers and addresses of an mDNS answer worth using, bounded (see the module docs);
/// `local` (this node) is skipped.
pub(super) fn lan_candidates(
    found: impl IntoIterator<Item = (PeerId, Multiaddr)>,
    local: &PeerId,
) -> HashMap<PeerId, Vec<Multiaddr>> {
    let mut out: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    for (peer, addr) in found {
        if peer == *local || !is_lan_addr(&addr, &peer) {
            continue;
        }
        if !out.contains_key(&peer) && out.len() >= LAN_PEERS_PER_EVENT_MAX {
            continue;
        }
        let addrs = out.entry(peer).or_default();
        if addrs.len() < LAN_ADDRS_PER_PEER_MAX && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    out
}

impl Node {
    /// An mDNS answer: LAN peers go to Kademlia and are dialled while under `dial_target`.
    pub(super) fn on_mdns(&mut self, ev: mdns::Event) {
        let mdns::Event::Discovered(found) = ev else { return };
        let local = *self.swarm.local_peer_id();
        for (peer, addrs) in lan_candidates(found, &local) {
            for a in &addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
            }
            let connected = self.swarm.connected_peers().count() as u32;
            if connected < self.config.dial_target && !self.swarm.is_connected(&peer) {
                self.dial_known(peer, addrs, "mdns dial");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_local_addresses_of_the_announced_peer_are_taken() {
        let me = PeerId::random();
        let p = PeerId::random();
        let other = PeerId::random();
        // The refused ones come first: a missing check would let them take the places.
        let found = vec![
            (p, a("/ip4/8.8.8.8/tcp/53")),
            (p, a("/ip6/2001:db8::1/tcp/53")),
            (p, a("/dns4/example.com/tcp/443")),
            (p, a(&format!("/ip4/192.168.1.7/tcp/1/p2p/{other}"))),
            (p, a("/ip4/192.168.1.7/tcp/4001/p2p-circuit")),
            (me, a("/ip4/192.168.1.8/tcp/4001")),
            (p, a("/ip4/192.168.1.7/tcp/4001")),
            (p, a("/ip4/192.168.1.7/tcp/4001")), // duplicate
            (p, a("/ip4/10.0.0.2/udp/4001/quic-v1")),
            (p, a(&format!("/ip4/169.254.3.4/tcp/4001/ws/p2p/{p}"))),
            (p, a("/ip6/fe80::1/tcp/4001")),
        ];
        let got = lan_candidates(found, &me);
        assert_eq!(got.len(), 1, "only the announced peer, never ourselves");
        let addrs: Vec<String> = got[&p].iter().map(ToString::to_string).collect();
        assert_eq!(
            addrs,
            [
                "/ip4/192.168.1.7/tcp/4001".to_owned(),
                "/ip4/10.0.0.2/udp/4001/quic-v1".to_owned(),
                format!("/ip4/169.254.3.4/tcp/4001/ws/p2p/{p}"),
                "/ip6/fe80::1/tcp/4001".to_owned(),
            ]
        );
    }

    #[test]
    fn one_answer_is_bounded_in_peers_and_addresses() {
        let me = PeerId::random();
        let many: Vec<(PeerId, Multiaddr)> = (0..200u32)
            .map(|i| (PeerId::random(), a(&format!("/ip4/10.0.{}.{}/tcp/4001", i / 250, i % 250))))
            .collect();
        assert_eq!(lan_candidates(many, &me).len(), LAN_PEERS_PER_EVENT_MAX);
        let p = PeerId::random();
        let addrs: Vec<(PeerId, Multiaddr)> =
            (0..50u16).map(|port| (p, a(&format!("/ip4/10.0.0.1/tcp/{port}")))).collect();
        assert_eq!(lan_candidates(addrs, &me)[&p].len(), LAN_ADDRS_PER_PEER_MAX);
    }
}
