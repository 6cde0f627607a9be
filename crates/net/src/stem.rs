//! The stem phase before gossip (Dandelion++-style), sans-IO.
//!
//! Without it, a peer connected to a sender receives the sender's envelopes first from the
//! sender's own peer id, which names the sender. With it, an originator hands its envelope to
//! ONE peer (its *stem successor*, chosen per epoch), and each stem hop either *fluffs* (diffuses
//! it by gossip) with probability `fluff_per_mille / 1000` or passes it to its own successor. A
//! spy receiving a stem envelope cannot tell an originator from a relaying hop.
//!
//! A fail-safe covers hops that drop: the originator and every stem hop remember the envelope
//! with a deadline (`failsafe_ms` plus jitter); if it is not seen in gossip by then, that node
//! diffuses it itself.
//!
//! Nothing here does I/O or draws randomness: the shell passes the time and uniform random
//! `u64`s, so a seeded simulation and the real node drive the same decisions.
//!
//! Bounds (named in [`StemConfig`]): at most `pending_max` envelopes awaiting their fail-safe
//! (overflow: the new envelope is fluffed at once, never dropped); at most
//! `per_peer_per_epoch_max` stem envelopes accepted from one peer per epoch, tracked for at most
//! `peers_tracked_max` peers (overflow: the peer's envelope is refused with
//! [`StemAction::Refuse`]; the shell drops it, and its originator's fail-safe diffuses it); at
//! most `handled_ids_max` ids remembered for duplicate suppression (FIFO).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use cairn_proto::Id;

use crate::validate::SeenIds;

/// Stem settings; units in names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StemConfig {
    /// Chance in 1/1000 that a stem hop fluffs rather than forwards (Dandelion++ uses 100–200).
    pub fluff_per_mille: u32,
    /// Length of an epoch, ms: the stem successor is re-chosen at each one.
    pub epoch_ms: u64,
    /// Base fail-safe delay, ms: a node that forwarded a stem envelope diffuses it itself if it
    /// has not seen it in gossip by then.
    pub failsafe_ms: u64,
    /// Random extra fail-safe delay, ms, at most (so the timers of the originator and the
    /// hops do not fire together, and which of them diffuses first says nothing).
    pub failsafe_jitter_ms: u64,
    /// Envelopes awaiting their fail-safe, at most; beyond it a new one is fluffed at once.
    pub pending_max: usize,
    /// Stem envelopes accepted from one peer in one epoch, at most.
    pub per_peer_per_epoch_max: u32,
    /// Peers whose per-epoch count is tracked, at most; a further peer is refused this epoch.
    pub peers_tracked_max: usize,
    /// Ids remembered as handled (duplicate suppression), at most; the oldest are forgotten.
    pub handled_ids_max: usize,
    /// After our stem successor refused an own envelope (busy, or over its allowance for us),
    /// own envelopes take the direct path for this long, ms, without asking it first: each
    /// refused ask cost a round trip and the hop's admission check, and the envelope then went
    /// the direct way anyway. A hostile successor gains nothing by it: it could refuse each.
    pub refused_backoff_ms: u64,
}

impl Default for StemConfig {
    fn default() -> Self {
        Self {
            fluff_per_mille: 200,
            epoch_ms: 600_000,
            failsafe_ms: 2_000,
            failsafe_jitter_ms: 1_000,
            pending_max: 4_096,
            per_peer_per_epoch_max: 2_000,
            peers_tracked_max: 1_024,
            handled_ids_max: 65_536,
            refused_backoff_ms: 1_000,
        }
    }
}

/// What to do with an envelope entering the stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StemAction<P> {
    /// Send it to this peer over the stem protocol (a fail-safe timer was set).
    Forward(P),
    /// Diffuse it by gossip now.
    Fluff,
    /// Already handled (seen in the stem or in gossip): do nothing.
    Duplicate,
    /// The sending peer is over its stem bound: drop it (the originator's fail-safe covers it).
    Refuse,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    deadline_ms: u64,
}

/// One node's stem state.
#[derive(Debug)]
pub struct Stem<P> {
    config: StemConfig,
    epoch: u64,
    successor: Option<P>,
    /// Bounded by `pending_max`; ordered by id so [`Stem::due`] is deterministic.
    pending: BTreeMap<Id, Pending>,
    /// Ids handled (stemmed, relayed or seen in gossip): duplicate suppression, at most
    /// `handled_ids_max`, FIFO.
    handled: SeenIds,
    /// Stem envelopes accepted per peer this epoch; at most `peers_tracked_max` peers.
    per_peer: HashMap<P, u32>,
    /// Successors that failed this epoch (see [`Stem::successor_failed`]), at most
    /// [`FAILED_SUCCESSORS_MAX`] (the oldest forgotten).
    failed: Vec<P>,
}

/// Failed successors remembered per epoch, at most.
pub const FAILED_SUCCESSORS_MAX: usize = 16;

impl<P: Clone + Eq + Hash> Stem<P> {
    /// A fresh stem state.
    pub fn new(config: StemConfig) -> Self {
        Self {
            config,
            epoch: u64::MAX,
            successor: None,
            pending: BTreeMap::new(),
            handled: SeenIds::new(config.handled_ids_max),
            per_peer: HashMap::new(),
            failed: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &StemConfig {
        &self.config
    }

    /// Envelopes awaiting their fail-safe.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn roll_epoch(&mut self, now_ms: u64) {
        let epoch = now_ms / self.config.epoch_ms.max(1);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.successor = None;
            self.per_peer.clear();
            self.failed.clear();
        }
    }

    /// This epoch's stem successor among `peers` (the connected peers able to take stem
    /// envelopes), re-chosen with `rand` when the epoch changes, the successor is gone or it
    /// failed; a peer that failed this epoch is not chosen again while another is available.
    pub fn successor(&mut self, peers: &[P], now_ms: u64, rand: u64) -> Option<P> {
        self.roll_epoch(now_ms);
        if let Some(s) = &self.successor
            && peers.contains(s)
        {
            return Some(s.clone());
        }
        if peers.is_empty() {
            self.successor = None;
            return None;
        }
        let fresh: Vec<&P> = peers.iter().filter(|p| !self.failed.contains(p)).collect();
        let pool: Vec<&P> = if fresh.is_empty() { peers.iter().collect() } else { fresh };
        let pick = pool[(rand % pool.len() as u64) as usize].clone();
        self.successor = Some(pick.clone());
        Some(pick)
    }

    /// The current successor, if one is chosen.
    pub fn current_successor(&self) -> Option<&P> {
        self.successor.as_ref()
    }

    /// What was sent to `peer` through the stem was never answered in time (the fail-safe or
    /// the originator's wait ran out): a successor that drops envelopes would otherwise delay
    /// every one of them for the rest of the epoch. It stops being the successor and is not
    /// chosen again this epoch while another peer is available.
    pub fn successor_failed(&mut self, peer: &P) {
        if self.successor.as_ref() == Some(peer) {
            self.successor = None;
        }
        if !self.failed.contains(peer) {
            if self.failed.len() >= FAILED_SUCCESSORS_MAX {
                self.failed.remove(0);
            }
            self.failed.push(peer.clone());
        }
    }

    fn seen(&self, id: &Id) -> bool {
        self.handled.contains(id)
    }

    fn arm(&mut self, id: Id, now_ms: u64, rand: u64) -> bool {
        if self.pending.len() >= self.config.pending_max {
            return false;
        }
        let jitter = rand % (self.config.failsafe_jitter_ms + 1);
        self.pending.insert(id, Pending { deadline_ms: now_ms + self.config.failsafe_ms + jitter });
        true
    }

    /// Our own new envelope: always stemmed first (to the successor among `peers`), or fluffed
    /// if there is no peer or the fail-safe table is full. `rand` must be uniform random.
    pub fn originate(&mut self, id: Id, peers: &[P], now_ms: u64, rand: u64) -> StemAction<P> {
        self.roll_epoch(now_ms);
        self.handled.insert(id);
        match self.successor(peers, now_ms, rand) {
            Some(s) if self.arm(id, now_ms, rand.rotate_left(17)) => StemAction::Forward(s),
            _ => StemAction::Fluff,
        }
    }

    /// A stem envelope from `from` that passed admission (validation and proof of work): fluff
    /// it (coin), or forward it to our successor among `peers` (never back to `from`). `rand`
    /// must be uniform random; a shell that passes the same value for every envelope from one
    /// peer in one epoch gets Dandelion++'s per-epoch routing (one decision per incoming link,
    /// so a sender's envelopes share a path and keep their order): the node does.
    pub fn relay(&mut self, from: &P, id: Id, peers: &[P], now_ms: u64, rand: u64) -> StemAction<P> {
        self.roll_epoch(now_ms);
        if self.seen(&id) {
            return StemAction::Duplicate;
        }
        if !self.per_peer.contains_key(from) && self.per_peer.len() >= self.config.peers_tracked_max {
            return StemAction::Refuse;
        }
        let n = self.per_peer.entry(from.clone()).or_insert(0);
        if *n >= self.config.per_peer_per_epoch_max {
            return StemAction::Refuse;
        }
        *n += 1;
        self.handled.insert(id);
        if rand % 1000 < u64::from(self.config.fluff_per_mille) {
            return StemAction::Fluff;
        }
        let others: Vec<P> = peers.iter().filter(|p| *p != from).cloned().collect();
        let successor = match self.successor(peers, now_ms, rand.rotate_left(23)) {
            Some(s) if s != *from => Some(s),
            // Our successor sent it to us: pick another peer for this envelope only.
            _ if !others.is_empty() => {
                Some(others[(rand.rotate_left(41) % others.len() as u64) as usize].clone())
            }
            _ => None,
        };
        match successor {
            Some(s) if self.arm(id, now_ms, rand.rotate_left(7)) => StemAction::Forward(s),
            _ => StemAction::Fluff,
        }
    }

    /// The envelope was seen in gossip (it was fluffed somewhere): cancel its fail-safe.
    pub fn seen_in_gossip(&mut self, id: &Id) {
        self.pending.remove(id);
        self.handled.insert(*id);
    }

    /// The shell keeps its own deadline for `id` (a node that waits for its downstream's
    /// answer): drop the fail-safe timer set here.
    pub fn disarm(&mut self, id: &Id) {
        self.pending.remove(id);
    }

    /// The earliest fail-safe deadline, if any (the shell sets one timer for it).
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }

    /// Envelopes whose fail-safe expired at `now_ms`: the shell diffuses each itself.
    pub fn due(&mut self, now_ms: u64) -> Vec<Id> {
        let due: Vec<Id> =
            self.pending.iter().filter(|(_, p)| p.deadline_ms <= now_ms).map(|(id, _)| *id).collect();
        for id in &due {
            self.pending.remove(id);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(i: u8) -> Id {
        Id([i; 32])
    }

    #[test]
    fn the_successor_holds_for_an_epoch_and_changes_after() {
        let mut s: Stem<u32> = Stem::new(StemConfig { epoch_ms: 1000, ..StemConfig::default() });
        let peers = [1, 2, 3, 4];
        let a = s.successor(&peers, 0, 1).unwrap();
        assert_eq!(s.successor(&peers, 999, 2), Some(a), "kept within the epoch");
        assert_eq!(s.successor(&peers, 1000, 2), Some(peers[2]), "re-chosen in the next");
        assert_eq!(s.successor(&[9], 1001, 5), Some(9), "re-chosen when gone");
        assert_eq!(s.successor(&[], 1002, 5), None);
    }

    #[test]
    fn a_failed_successor_is_replaced_and_not_chosen_again_this_epoch() {
        let mut s: Stem<u32> = Stem::new(StemConfig { epoch_ms: 1000, ..StemConfig::default() });
        let peers = [1, 2, 3];
        let first = s.successor(&peers, 0, 0).expect("a successor");
        s.successor_failed(&first);
        for rand in 0..50 {
            let mut t: Stem<u32> = Stem::new(StemConfig { epoch_ms: 1000, ..StemConfig::default() });
            let _ = t.successor(&peers, 0, 0);
            t.successor_failed(&first);
            assert_ne!(t.successor(&peers, 10, rand), Some(first), "a failed successor chosen again");
        }
        let next = s.successor(&peers, 10, 0).expect("a successor");
        assert_ne!(next, first);
        assert_eq!(s.successor(&peers, 20, 7), Some(next), "kept until it fails");
        // with every peer failed, one is still chosen; a new epoch forgets the failures
        for p in peers {
            s.successor_failed(&p);
        }
        assert!(s.successor(&peers, 30, 1).is_some());
        s.successor_failed(&first);
        assert!((0..50).any(|r| {
            let mut t: Stem<u32> = Stem::new(StemConfig { epoch_ms: 1000, ..StemConfig::default() });
            t.successor_failed(&first);
            t.successor(&peers, 1000, r) == Some(first)
        }));
    }

    #[test]
    fn originate_forwards_and_the_failsafe_fires_unless_seen_in_gossip() {
        let cfg = StemConfig { failsafe_ms: 100, failsafe_jitter_ms: 0, ..StemConfig::default() };
        let mut s: Stem<u32> = Stem::new(cfg);
        assert_eq!(s.originate(id(1), &[7], 0, 0), StemAction::Forward(7));
        assert_eq!(s.originate(id(2), &[7], 0, 0), StemAction::Forward(7));
        s.seen_in_gossip(&id(2));
        assert_eq!(s.next_deadline(), Some(100));
        assert!(s.due(99).is_empty());
        assert_eq!(s.due(100), vec![id(1)]);
        assert_eq!(s.pending_len(), 0);
        assert_eq!(s.originate(id(3), &[], 0, 0), StemAction::Fluff, "no peer: diffuse");
    }

    #[test]
    fn relay_fluffs_by_coin_never_returns_to_sender_and_drops_duplicates() {
        let mut s: Stem<u32> = Stem::new(StemConfig { fluff_per_mille: 200, ..StemConfig::default() });
        assert_eq!(s.relay(&1, id(1), &[1, 2], 0, 199), StemAction::Fluff, "coin below 200/1000");
        assert_eq!(s.relay(&1, id(1), &[1, 2], 0, 500), StemAction::Duplicate);
        // Whatever successor is drawn, the envelope does not go back to its sender.
        for r in 0..50u64 {
            let mut s: Stem<u32> = Stem::new(StemConfig::default());
            match s.relay(&1, id(2), &[1, 2], 0, 1000 * r + 500) {
                StemAction::Forward(p) => assert_eq!(p, 2),
                other => panic!("{other:?}"),
            }
        }
        let mut s: Stem<u32> = Stem::new(StemConfig::default());
        assert_eq!(s.relay(&1, id(3), &[1], 0, 500), StemAction::Fluff, "only the sender: fluff");
    }

    #[test]
    fn bounds_refuse_a_flooding_peer_and_fluff_on_a_full_table() {
        let cfg = StemConfig {
            per_peer_per_epoch_max: 3,
            pending_max: 2,
            peers_tracked_max: 2,
            epoch_ms: 1000,
            ..StemConfig::default()
        };
        let mut s: Stem<u32> = Stem::new(cfg);
        let acts: Vec<_> = (0..5).map(|i| s.relay(&1, id(i), &[1, 2], 0, 500)).collect();
        assert_eq!(&acts[..2], &[StemAction::Forward(2), StemAction::Forward(2)]);
        assert_eq!(acts[2], StemAction::Fluff, "fail-safe table full: fluffed, not dropped");
        assert_eq!(&acts[3..], &[StemAction::Refuse, StemAction::Refuse], "over the per-peer bound");
        assert_ne!(s.relay(&3, id(10), &[1, 2], 0, 500), StemAction::Refuse);
        assert_eq!(s.relay(&4, id(11), &[1, 2], 0, 500), StemAction::Refuse, "peers tracked bound");
        assert_ne!(s.relay(&1, id(12), &[1, 2], 1000, 500), StemAction::Refuse, "new epoch, new allowance");
        assert!(s.pending_len() <= 2);
    }
}
