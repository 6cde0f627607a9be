//! The stem phase as the node runs it (`node/stem_hop.rs`): store nodes are never hops; the
//! originator holds its own send (`Sync`'s `SendHeld`, 2 × (fail-safe + jitter)) and pushes
//! nothing; the hop that fluffs gossips it and pushes it to the topic's store nodes, whose
//! receipts go back up the stem to the originator (counted as its store acks); with no answer
//! by its deadline the originator gossips it and `Sync` pushes it itself.

use super::{Role, World};
use crate::sim::event::{Kind, Rpc};
use crate::stem::StemAction;
use crate::sync::Input;
use crate::validate::Verdict;

impl World {
    /// The peers a node may use as its stem successor: connected, not store nodes.
    fn stem_candidates(&self, n: u32) -> Vec<u32> {
        self.nodes[n as usize].peers.iter().copied().filter(|p| !self.nodes[*p as usize].store).collect()
    }

    /// An own message into the stem; false: it takes the direct path (no candidate, or the
    /// stem fluffed at once).
    pub(super) fn stem_originate(&mut self, origin: u32, k: u32, stores: &[u32]) -> bool {
        let (now, r) = (self.now, self.rng.next_u64());
        let cands = self.stem_candidates(origin);
        let m = &self.msgs[k as usize];
        let (id, env) = (m.id, m.env.clone());
        let node = &mut self.nodes[origin as usize];
        let StemAction::Forward(to) = node.stem.originate(id, &cands, now, r) else { return false };
        node.stem.disarm(&id);
        let c = *node.stem.config();
        let until_ms = now + 2 * (c.failsafe_ms + c.failsafe_jitter_ms);
        let input = Input::SendHeld { envelope: env, stores: stores.to_vec(), written: true, until_ms };
        let outs = node.sync.handle(input, now);
        self.apply(origin, outs, false);
        self.send(origin, to, Rpc::Stem(k));
        self.schedule(until_ms, Kind::StemDeadline(k));
        true
    }

    pub(super) fn arm_stem_check(&mut self, n: u32) {
        if let Some(at) = self.nodes[n as usize].stem.next_deadline() {
            self.schedule(at.max(self.now), Kind::StemCheck(n));
        }
    }

    pub(super) fn on_stem(&mut self, from: u32, to: u32, k: u32) {
        let now = self.now;
        let r = self.rng.next_u64();
        let id = self.msgs[k as usize].id;
        let cands = self.stem_candidates(to);
        let node = &mut self.nodes[to as usize];
        if !matches!(
            node.stem_admission.check(&from, &self.msgs[k as usize].bytes, super::BASE_MS + now),
            Verdict::Accept(..)
        ) {
            return;
        }
        if node.router.seen.contains(&k) {
            return; // already in gossip here
        }
        match node.stem.relay(&from, id, &cands, now, r) {
            StemAction::Forward(next) => {
                self.msgs[k as usize].stem_hops += 1;
                self.send(to, next, Rpc::Stem(k));
                self.arm_stem_check(to);
            }
            StemAction::Fluff => self.fluff(to, k),
            StemAction::Duplicate | StemAction::Refuse => {}
        }
    }

    /// A hop diffuses a relayed message: gossip, and a push to the topic's store nodes.
    fn fluff(&mut self, n: u32, k: u32) {
        self.msgs[k as usize].stem_hops += 1;
        self.publish(n, k);
        for s in self.stores_of(self.msgs[k as usize].topic) {
            self.send(n, s, Rpc::StoreReq(k));
        }
    }

    /// Fail-safe at a hop: it fluffs what its successor has not diffused in time.
    pub(super) fn on_stem_check(&mut self, n: u32) {
        if !self.nodes[n as usize].online {
            return;
        }
        let due = self.nodes[n as usize].stem.due(self.now);
        for id in due {
            let Some(&k) = self.id_index.get(&id) else { continue };
            if !self.nodes[n as usize].router.seen.contains(&k) {
                self.stats.failsafe_fires += 1;
                self.fluff(n, k);
            }
        }
        self.arm_stem_check(n);
    }

    /// A store node acknowledged a push; at a hop that pushed someone else's message, the
    /// receipt goes back up the stem (one answer per hop, counted as such).
    pub(super) fn on_store_ack(&mut self, store: u32, to: u32, k: u32) {
        let origin = self.msgs[k as usize].origin;
        if to != origin {
            if self.nodes[to as usize].role == Role::Honest {
                self.send(to, origin, Rpc::StemAnswer(k, store));
            }
            return;
        }
        self.msgs[k as usize].stem_answered = true;
        let id = self.msgs[k as usize].id;
        let outs = self.nodes[origin as usize].sync.handle(Input::StoreAck { id, from: store }, self.now);
        self.apply(origin, outs, false);
    }

    /// The originator's wait is over: with no receipt back, it diffuses the message itself
    /// (its `Sync` pushes it to the store nodes from now on).
    pub(super) fn on_stem_deadline(&mut self, k: u32) {
        let m = &self.msgs[k as usize];
        if !m.stem_answered && self.nodes[m.origin as usize].online {
            self.stats.failsafe_fires += 1;
            self.publish(m.origin, k);
        }
    }
}
