//! Preferring near peers (sans-IO): a full node keeps its dialed connections among the peers
//! with the lowest round-trip time it has measured, so gossip's mesh, drawn from those
//! connections, spreads a message over short links (issue 17 §4: the time to reach every
//! node is bounded by the topology's own latency, not by the gossip protocol).
//!
//! The policy, driven by the node's tick (`node/nearness.rs`):
//! - the node dials up to `dial_target + probe_extra` peers; every `probe_every_ms` it dials
//!   up to `probe_extra` not-connected peers from its routing table as new candidates;
//! - `prune_after_ms` later (their first pings are in), it closes its slowest dialed
//!   connections down to `dial_target`, at most `probe_extra` per round, and does not dial a
//!   closed one again for `slow_forget_ms`.
//!
//! What is never closed for being slow: connections the peer dialed (its own choice), peers the
//! node needs (its store nodes, its stem successor, its relay), peers whose RTT is unknown, and
//! `random_keep` dialed peers chosen by a keyed hash of both peer ids. The last ones keep
//! some links the attacker cannot win by being close: a hostile neighbour with a low RTT can
//! take near slots, never all of them, so the node cannot be eclipsed by nearness alone.
//! What a peer learns: nothing new (the RTT is the libp2p ping's).

use std::collections::HashMap;
use std::hash::Hash;

/// Peers remembered as closed for slowness, at most (the oldest forgotten first).
pub const SLOW_REMEMBERED_MAX: usize = 256;

/// The policy's settings (`NodeConfig::nearness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearConfig {
    /// Candidates dialed per round, and the most connections closed per round.
    pub probe_extra: u32,
    /// Dialed peers kept whatever their RTT (chosen by a keyed hash).
    pub random_keep: u32,
    /// Rounds start this often, ms.
    pub probe_every_ms: u64,
    /// The slowest are closed this long after a round's dials, ms.
    pub prune_after_ms: u64,
    /// A peer closed for slowness is not dialed again for this long, ms.
    pub slow_forget_ms: u64,
}

impl Default for NearConfig {
    fn default() -> Self {
        Self {
            probe_extra: 8,
            random_keep: 6,
            probe_every_ms: 30_000,
            prune_after_ms: 5_000,
            slow_forget_ms: 600_000,
        }
    }
}

/// One connected peer as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn<P> {
    /// The peer.
    pub peer: P,
    /// Its last measured round-trip time, ms (`None`: not measured yet).
    pub rtt_ms: Option<u64>,
    /// This node dialed it.
    pub dialed: bool,
    /// The node needs it (store node, stem successor, relay): never closed for slowness.
    pub needed: bool,
    /// A keyed hash of both peer ids: the `random_keep` dialed peers with the lowest are kept.
    pub keep_rank: [u8; 32],
}

/// What the node's tick should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<P> {
    /// Nothing this tick.
    Idle,
    /// Dial up to this many new candidates (not connected, not remembered as slow).
    Probe(usize),
    /// Close these connections (the slowest eligible ones).
    Close(Vec<P>),
}

/// The round state and the peers remembered as slow.
#[derive(Debug)]
pub struct Nearness<P> {
    config: NearConfig,
    next_probe_ms: u64,
    prune_at_ms: Option<u64>,
    /// Peers closed for slowness and when, ms; at most [`SLOW_REMEMBERED_MAX`].
    slow: HashMap<P, u64>,
}

impl<P: Clone + Eq + Hash> Nearness<P> {
    /// A policy whose first round starts one period after `now_ms`.
    pub fn new(config: NearConfig, now_ms: u64) -> Self {
        Self {
            config,
            next_probe_ms: now_ms.saturating_add(config.probe_every_ms),
            prune_at_ms: None,
            slow: HashMap::new(),
        }
    }

    /// How many peers the node may dial up to: its target plus the round's candidates (0 stays
    /// 0: a node told to dial no one is not made to probe).
    pub fn dial_ceiling(&self, dial_target: u32) -> u32 {
        if dial_target == 0 { 0 } else { dial_target.saturating_add(self.config.probe_extra) }
    }

    /// False for a peer closed for slowness less than `slow_forget_ms` ago.
    pub fn may_dial(&self, peer: &P, now_ms: u64) -> bool {
        self.slow.get(peer).is_none_or(|at| now_ms.saturating_sub(*at) >= self.config.slow_forget_ms)
    }

    /// True when [`Self::tick`] has something to do at `now_ms` (a round to start or a prune
    /// due), so the caller gathers the connections only then.
    pub fn due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_probe_ms || self.prune_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// The tick: a round's probe, its prune, or nothing. `conns` are the connected peers.
    pub fn tick(&mut self, now_ms: u64, dial_target: usize, conns: &[Conn<P>]) -> Step<P> {
        if let Some(at) = self.prune_at_ms
            && now_ms >= at
        {
            self.prune_at_ms = None;
            let close = slowest(
                conns,
                dial_target,
                self.config.random_keep as usize,
                self.config.probe_extra as usize,
            );
            for p in &close {
                self.remember_slow(p.clone(), now_ms);
            }
            if !close.is_empty() {
                return Step::Close(close);
            }
        }
        if now_ms >= self.next_probe_ms {
            self.next_probe_ms = now_ms.saturating_add(self.config.probe_every_ms.max(1));
            // A pending prune keeps its time: a period shorter than the ping wait must not
            // postpone it for ever.
            self.prune_at_ms.get_or_insert(now_ms.saturating_add(self.config.prune_after_ms));
            let room = self.dial_ceiling(dial_target as u32) as usize;
            let want = room.saturating_sub(conns.len()).min(self.config.probe_extra as usize);
            if want > 0 {
                return Step::Probe(want);
            }
        }
        Step::Idle
    }

    fn remember_slow(&mut self, peer: P, now_ms: u64) {
        let forget = self.config.slow_forget_ms;
        self.slow.retain(|_, at| now_ms.saturating_sub(*at) < forget);
        if self.slow.len() >= SLOW_REMEMBERED_MAX
            && let Some(oldest) = self.slow.iter().min_by_key(|(_, at)| **at).map(|(p, _)| p.clone())
        {
            self.slow.remove(&oldest);
        }
        self.slow.insert(peer, now_ms);
    }
}

/// The connections to close: beyond `target` connections, the slowest dialed ones with a known
/// RTT that are neither needed nor among the `random_keep` kept by hash; at most `max`.
pub fn slowest<P: Clone>(conns: &[Conn<P>], target: usize, random_keep: usize, max: usize) -> Vec<P> {
    let over = conns.len().saturating_sub(target).min(max);
    if over == 0 {
        return Vec::new();
    }
    let mut dialed: Vec<&Conn<P>> = conns.iter().filter(|c| c.dialed && !c.needed).collect();
    dialed.sort_by_key(|c| c.keep_rank);
    let mut eligible: Vec<(u64, &Conn<P>)> =
        dialed.into_iter().skip(random_keep).filter_map(|c| c.rtt_ms.map(|r| (r, c))).collect();
    eligible.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.keep_rank.cmp(&b.1.keep_rank)));
    eligible.into_iter().take(over).map(|(_, c)| c.peer.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: u32, rtt: Option<u64>, dialed: bool) -> Conn<u32> {
        let mut keep_rank = [0u8; 32];
        keep_rank[..4].copy_from_slice(&peer.to_be_bytes());
        Conn { peer, rtt_ms: rtt, dialed, needed: false, keep_rank }
    }

    #[test]
    fn the_slowest_dialed_connections_are_closed_down_to_the_target() {
        // Peers 0..=1 are kept by hash (lowest ranks); 2..=9 are eligible, RTT 10 * peer.
        let conns: Vec<_> = (0..10).map(|p| conn(p, Some(10 * u64::from(p)), true)).collect();
        assert_eq!(slowest(&conns, 7, 2, 8), vec![9, 8, 7]);
        assert_eq!(slowest(&conns, 7, 2, 2), vec![9, 8], "at most max per round");
        assert!(slowest(&conns, 10, 2, 8).is_empty(), "nothing at or under the target");
    }

    #[test]
    fn inbound_needed_unmeasured_and_hash_kept_peers_are_never_closed() {
        let mut conns = vec![
            conn(0, Some(900), true),  // kept by hash (lowest rank)
            conn(1, Some(800), false), // the peer dialed us
            conn(2, None, true),       // not measured yet
            conn(3, Some(700), true),
            conn(4, Some(5), true),
        ];
        conns[3].needed = true; // a store node in use
        assert_eq!(slowest(&conns, 1, 1, 8), vec![4], "only the one eligible peer, however near");
    }

    #[test]
    fn a_round_probes_then_closes_and_a_closed_peer_is_not_dialed_again_for_a_while() {
        let cfg = NearConfig {
            probe_extra: 2,
            random_keep: 0,
            probe_every_ms: 1_000,
            prune_after_ms: 100,
            slow_forget_ms: 5_000,
        };
        let mut n = Nearness::new(cfg, 0);
        let three: Vec<_> = (0..3).map(|p| conn(p, Some(10 * u64::from(p) + 1), true)).collect();
        assert!(!n.due(999) && n.due(1_000), "due at the round's start, not before");
        assert_eq!(n.tick(999, 3, &three), Step::Idle, "no round before its period");
        assert_eq!(n.dial_ceiling(3), 5);
        assert_eq!(n.tick(1_000, 3, &three), Step::Probe(2));
        let five: Vec<_> = (0..5).map(|p| conn(p, Some(10 * u64::from(p) + 1), true)).collect();
        assert!(!n.due(1_050) && n.due(1_100), "then due at the prune");
        assert_eq!(n.tick(1_050, 3, &five), Step::Idle, "pings get their time");
        assert_eq!(n.tick(1_100, 3, &five), Step::Close(vec![4, 3]));
        assert!(!n.may_dial(&4, 1_200));
        assert!(n.may_dial(&2, 1_200));
        assert!(n.may_dial(&4, 6_100), "forgotten after slow_forget_ms");
        assert_eq!(n.tick(1_200, 3, &three), Step::Idle, "one prune per round");
    }

    #[test]
    fn a_round_shorter_than_the_ping_wait_does_not_postpone_the_prune() {
        let cfg = NearConfig {
            probe_extra: 1,
            random_keep: 0,
            probe_every_ms: 100,
            prune_after_ms: 250,
            slow_forget_ms: 5_000,
        };
        let mut n = Nearness::new(cfg, 0);
        let two: Vec<_> = (0..2).map(|p| conn(p, Some(u64::from(p)), true)).collect();
        let steps: Vec<_> = (1..=4).map(|t| n.tick(t * 100, 1, &two)).collect();
        assert_eq!(steps[0], Step::Idle, "no room for a candidate at the ceiling");
        assert_eq!(steps[3], Step::Close(vec![1]), "closed 250 ms after the first round: {steps:?}");
    }

    #[test]
    fn the_slow_set_stays_bounded() {
        let cfg = NearConfig { slow_forget_ms: u64::MAX, ..NearConfig::default() };
        let mut n = Nearness::new(cfg, 0);
        for p in 0..(SLOW_REMEMBERED_MAX as u32 + 10) {
            n.remember_slow(p, u64::from(p));
        }
        assert_eq!(n.slow.len(), SLOW_REMEMBERED_MAX);
        assert!(n.may_dial(&0, 1_000), "the oldest were forgotten first");
        assert!(!n.may_dial(&(SLOW_REMEMBERED_MAX as u32 + 9), 1_000));
    }
}
