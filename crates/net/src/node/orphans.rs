//! Own envelopes whose parents the local history lacks. After a crash rolled back the history's
//! deferred tail, a restarted node re-publishes its outbox before the mesh brings those parents
//! back: such an envelope is gossiped and pushed at once, but written to the local history only
//! after its parents, so the history never holds a child before its parent (`verify` checks it).

use std::collections::{HashMap, HashSet};

use cairn_proto::{Envelope, Id};

/// Own envelopes held for their parents, at most; beyond it one is written at once (flagged).
pub(super) const ORPHANS_MAX: usize = 4096;
/// Longest an own envelope waits for its parents, ms; then it is written, flagged as after a gap.
pub(super) const ORPHAN_HOLD_MS: u64 = 10 * 60_000;

/// The held envelopes, with when each was held.
#[derive(Default)]
pub(super) struct Orphans {
    held: HashMap<Id, (Envelope, u64)>,
}

impl Orphans {
    /// Holds `env` until its parents are present; false when full (write it now instead).
    pub(super) fn hold(&mut self, env: Envelope, now_ms: u64) -> bool {
        if self.held.len() >= ORPHANS_MAX {
            return false;
        }
        self.held.insert(env.id(), (env, now_ms));
        true
    }

    /// Whether nothing is held (the common case: a check that costs nothing).
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Takes every held envelope whose parents are all `present` or released before it in the
    /// returned order (parents first).
    pub(super) fn release(&mut self, present: impl Fn(&Id) -> bool) -> Vec<Envelope> {
        let mut out: Vec<Envelope> = Vec::new();
        let mut released: HashSet<Id> = HashSet::new();
        loop {
            let mut ready: Vec<Id> = self
                .held
                .iter()
                .filter(|(_, (e, _))| e.header.parents.iter().all(|p| present(p) || released.contains(p)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                return out;
            }
            // Within one round none names another as a parent (those wait for the next round).
            ready.sort();
            for id in ready {
                if let Some((e, _)) = self.held.remove(&id) {
                    released.insert(id);
                    out.push(e);
                }
            }
        }
    }

    /// Takes the envelopes held longer than `ORPHAN_HOLD_MS` (their parents are lost).
    pub(super) fn expired(&mut self, now_ms: u64) -> Vec<Envelope> {
        let old: Vec<Id> = self
            .held
            .iter()
            .filter(|(_, (_, since))| now_ms.saturating_sub(*since) >= ORPHAN_HOLD_MS)
            .map(|(id, _)| *id)
            .collect();
        old.iter().filter_map(|id| self.held.remove(id)).map(|(e, _)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::envelope::pad;
    use cairn_proto::{Limits, Topic};

    fn env(n: u64, parents: Vec<Id>) -> Envelope {
        Envelope::new(Topic([1; 32]), n, 60, parents, pad(&n.to_be_bytes(), &Limits::default()).unwrap())
    }

    #[test]
    fn children_come_out_after_their_parents_or_after_the_hold() {
        let p = env(1, vec![]);
        let c1 = env(2, vec![p.id()]);
        let c2 = env(3, vec![c1.id()]);
        let mut o = Orphans::default();
        assert!(o.hold(c2.clone(), 0));
        assert!(o.hold(c1.clone(), 0));
        assert!(o.release(|_| false).is_empty(), "the parent is still missing");
        let out = o.release(|id| *id == p.id());
        assert_eq!(out, vec![c1, c2], "parents first");
        assert!(o.is_empty());
        let lost = env(4, vec![Id([9; 32])]);
        o.hold(lost.clone(), 1_000);
        assert!(o.expired(1_000 + ORPHAN_HOLD_MS - 1).is_empty());
        assert_eq!(o.expired(1_000 + ORPHAN_HOLD_MS), vec![lost]);
    }

    #[test]
    fn holding_is_bounded() {
        let mut o = Orphans::default();
        for n in 0..ORPHANS_MAX as u64 {
            assert!(o.hold(env(n, vec![Id([9; 32])]), 0));
        }
        assert!(!o.hold(env(u64::MAX, vec![Id([9; 32])]), 0));
    }
}
