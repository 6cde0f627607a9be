//! A model of one node's gossipsub router, for one topic (every simulated node subscribes to
//! the same shard: the worst case, all 2,000 nodes in one mesh).
//!
//! It follows libp2p-gossipsub 0.50 with the parameters our node uses (`node/behaviour.rs`
//! builds gossipsub from the library defaults plus a 500 ms heartbeat): mesh degree D = 6,
//! D_lo = 5, D_hi = 12; eager push of each new message to every mesh peer but the one it came
//! from and those that sent IDONTWANT for it (gossipsub 1.2, sent to mesh peers on first
//! receipt of a message over 1,000 bytes); flood publishing by the originator (to every
//! connected subscribed peer); duplicate suppression by message id before validation; at each
//! heartbeat mesh repair (GRAFT up to D below D_lo, PRUNE down to D above D_hi), a GRAFT at
//! once to a newly connected peer while the mesh holds fewer than D_lo (libp2p does this when
//! the peer's subscription arrives; the world sends it as the connection opens), and lazy
//! repair: IHAVE with the ids of the last 3 heartbeat windows to max(D_lazy = 6, 0.25 × the
//! non-mesh peers), answered by IWANT for ids not seen, re-asked from another peer after 3 s.
//!
//! Simplified: peer scoring is modelled only by its effect on a peer that sent an invalid
//! message (our P4 weight graylists it at once: all its RPCs are ignored and it is pruned);
//! outbound-degree quotas (D_out), opportunistic grafting, PX and the prune back-off timing
//! are not modelled; a GRAFT is accepted unless the peer is graylisted or the mesh already
//! holds D_hi peers and the grafting peer is not one this node dialed (then it is answered
//! with PRUNE, as libp2p does), and the next heartbeat trims the mesh.

use std::collections::{HashMap, HashSet, VecDeque};

use super::rng::Rng;

/// Gossipsub parameters (libp2p-gossipsub 0.50 defaults, as our node uses them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GossipParams {
    /// Target mesh degree (D).
    pub mesh_n: usize,
    /// Graft below this (D_lo).
    pub mesh_n_low: usize,
    /// Prune above this (D_hi).
    pub mesh_n_high: usize,
    /// Peers sent IHAVE at each heartbeat, at least (D_lazy).
    pub gossip_lazy: usize,
    /// Share of the non-mesh peers sent IHAVE, if more than `gossip_lazy`.
    pub gossip_factor: f64,
    /// Heartbeat windows kept in the message cache (served to IWANT).
    pub history_length: usize,
    /// Heartbeat windows advertised by IHAVE.
    pub history_gossip: usize,
    /// Heartbeat interval, ms (our node's `heartbeat_ms`).
    pub heartbeat_ms: u64,
    /// An unanswered IWANT is asked again of another peer after this long, ms.
    pub iwant_followup_ms: u64,
    /// Messages larger than this many bytes trigger IDONTWANT to the mesh.
    pub idontwant_threshold_bytes: usize,
    /// The originator sends to every connected subscribed peer, not only its mesh.
    pub flood_publish: bool,
}

impl Default for GossipParams {
    fn default() -> Self {
        Self {
            mesh_n: 6,
            mesh_n_low: 5,
            mesh_n_high: 12,
            gossip_lazy: 6,
            gossip_factor: 0.25,
            history_length: 5,
            history_gossip: 3,
            heartbeat_ms: 500,
            iwant_followup_ms: 3_000,
            idontwant_threshold_bytes: 1_000,
            flood_publish: true,
        }
    }
}

/// A control message the router asks to send at a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// Join the peer's mesh.
    Graft(u32),
    /// Leave the peer's mesh.
    Prune(u32),
    /// Advertise these message ids to the peer.
    IHave(u32, Vec<u32>),
}

/// One node's router state (messages are named by their index in the run).
#[derive(Debug, Default)]
pub(crate) struct Router {
    /// Mesh peers.
    pub(crate) mesh: Vec<u32>,
    /// Message ids seen (the duplicate cache).
    pub(crate) seen: HashSet<u32>,
    /// Ids per heartbeat window, newest first; at most `history_length` windows.
    pub(crate) mcache: VecDeque<Vec<u32>>,
    /// (peer, message) pairs the peer said it does not want; dropped when the message leaves
    /// the cache.
    pub(crate) dont_send: HashSet<(u32, u32)>,
    /// Peers that sent invalid messages: ignored.
    pub(crate) graylist: HashSet<u32>,
    /// Ids asked by IWANT and when, ms (re-asked after `iwant_followup_ms`).
    pub(crate) asked: HashMap<u32, u64>,
}

impl Router {
    /// Records a new valid message in the cache (current window).
    pub(crate) fn cache(&mut self, msg: u32) {
        if self.mcache.is_empty() {
            self.mcache.push_front(Vec::new());
        }
        if let Some(w) = self.mcache.front_mut() {
            w.push(msg);
        }
        self.asked.remove(&msg);
    }

    /// True if the message is still in the cache (an IWANT for it is served).
    pub(crate) fn cached(&self, msg: u32) -> bool {
        self.mcache.iter().any(|w| w.contains(&msg))
    }

    /// A peer went away: out of the mesh.
    pub(crate) fn forget_peer(&mut self, peer: u32) {
        self.mesh.retain(|p| *p != peer);
    }

    /// The peers a new message is pushed to (not `from`, not those that sent IDONTWANT).
    pub(crate) fn push_targets(&self, msg: u32, from: Option<u32>) -> Vec<u32> {
        self.mesh
            .iter()
            .copied()
            .filter(|p| Some(*p) != from && !self.dont_send.contains(&(*p, msg)))
            .collect()
    }

    /// Ids of an IHAVE not yet seen nor asked recently: the IWANT to send back.
    pub(crate) fn want(&mut self, ids: &[u32], now_ms: u64, p: &GossipParams) -> Vec<u32> {
        let mut want = Vec::new();
        for id in ids {
            if self.seen.contains(id) {
                continue;
            }
            match self.asked.get(id) {
                Some(t) if now_ms < t + p.iwant_followup_ms => continue,
                _ => {}
            }
            self.asked.insert(*id, now_ms);
            want.push(*id);
        }
        want
    }

    /// The heartbeat: mesh repair among `connected` peers, lazy gossip, cache shift.
    pub(crate) fn heartbeat(&mut self, connected: &[u32], p: &GossipParams, rng: &mut Rng) -> Vec<Control> {
        let mut out = Vec::new();
        self.mesh.retain(|m| connected.contains(m) && !self.graylist.contains(m));
        if self.mesh.len() < p.mesh_n_low {
            let mut cands: Vec<u32> = connected
                .iter()
                .copied()
                .filter(|c| !self.mesh.contains(c) && !self.graylist.contains(c))
                .collect();
            rng.shuffle(&mut cands);
            for c in cands.into_iter().take(p.mesh_n - self.mesh.len()) {
                self.mesh.push(c);
                out.push(Control::Graft(c));
            }
        } else if self.mesh.len() > p.mesh_n_high {
            rng.shuffle(&mut self.mesh);
            for c in self.mesh.split_off(p.mesh_n) {
                out.push(Control::Prune(c));
            }
        }
        let ids: Vec<u32> = self.mcache.iter().take(p.history_gossip).flatten().copied().collect();
        if !ids.is_empty() {
            let mut others: Vec<u32> = connected
                .iter()
                .copied()
                .filter(|c| !self.mesh.contains(c) && !self.graylist.contains(c))
                .collect();
            let n = p.gossip_lazy.max((others.len() as f64 * p.gossip_factor) as usize);
            rng.shuffle(&mut others);
            for c in others.into_iter().take(n) {
                out.push(Control::IHave(c, ids.clone()));
            }
        }
        self.mcache.push_front(Vec::new());
        while self.mcache.len() > p.history_length {
            if let Some(old) = self.mcache.pop_back() {
                let old: HashSet<u32> = old.into_iter().collect();
                self.dont_send.retain(|(_, m)| !old.contains(m));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_grafts_to_d_and_prunes_to_d_and_gossips_recent_ids() {
        let p = GossipParams::default();
        let mut rng = Rng::new(1);
        let connected: Vec<u32> = (0..30).collect();
        let mut r = Router::default();
        let out = r.heartbeat(&connected, &p, &mut rng);
        assert_eq!(r.mesh.len(), 6);
        assert_eq!(out.iter().filter(|c| matches!(c, Control::Graft(_))).count(), 6);
        r.mesh = (0..13).collect();
        r.cache(42);
        let out = r.heartbeat(&connected, &p, &mut rng);
        assert_eq!(r.mesh.len(), 6);
        assert_eq!(out.iter().filter(|c| matches!(c, Control::Prune(_))).count(), 7);
        let ihaves: Vec<_> =
            out.iter().filter(|c| matches!(c, Control::IHave(_, ids) if ids == &[42])).collect();
        assert_eq!(ihaves.len(), 6, "max(6, 0.25 × 24 non-mesh peers)");
        for _ in 0..5 {
            r.heartbeat(&connected, &p, &mut rng);
        }
        assert!(!r.cached(42), "out of the cache after history_length windows");
    }

    #[test]
    fn push_skips_the_source_and_idontwant_and_iwant_is_asked_once_per_followup() {
        let p = GossipParams::default();
        let mut r = Router { mesh: vec![1, 2, 3], ..Router::default() };
        r.dont_send.insert((3, 9));
        assert_eq!(r.push_targets(9, Some(1)), vec![2]);
        assert_eq!(r.want(&[9, 10], 0, &p), vec![9, 10]);
        assert!(r.want(&[9], 100, &p).is_empty());
        assert_eq!(r.want(&[9], 3_000, &p), vec![9]);
        r.seen.insert(10);
        assert!(r.want(&[10], 10_000, &p).is_empty());
    }
}
