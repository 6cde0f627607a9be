//! Envelopes on a conversation's topic that this device could not open (yet).
//!
//! Anyone who pays the proof of work can write on a topic, so an unreadable envelope is
//! suspect until proven otherwise. It is held here, bounded in count and in time, and then:
//! - kept, once an accepted message names it as an ancestor (it is part of the group's
//!   history that this device cannot read, e.g. from before it joined);
//! - re-opened, when the conversation reaches a new epoch (it was sent in a future epoch);
//! - otherwise discarded from the local history when its time is up.
//!
//! Overflow policy: when `max` envelopes are held, a new one is discarded at once. Junk that
//! arrives later can never push out an envelope held earlier.

use std::collections::BTreeMap;

use cairn_proto::Id;

/// Why an envelope is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// MLS says it belongs to an epoch this device has not reached yet (or its buffer was
    /// full): worth re-opening after the next epoch change.
    FutureEpoch,
    /// It did not open: junk, or a message this device can never read. Kept only if proven
    /// to be an ancestor of an accepted message.
    Unopened,
}

#[derive(Debug, Clone)]
struct Held {
    arrived_ms: u64,
    parents: Vec<Id>,
    hold: Hold,
}

/// One conversation's quarantine.
#[derive(Debug, Clone, Default)]
pub struct Quarantine {
    held: BTreeMap<Id, Held>,
}

/// The quarantine is full: the caller discards the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Quarantine {
    /// Holds `id` (idempotent; a second hold updates the reason).
    pub fn hold(&mut self, id: Id, parents: &[Id], hold: Hold, now_ms: u64, max: usize) -> Result<(), Full> {
        if let Some(h) = self.held.get_mut(&id) {
            h.hold = hold;
            return Ok(());
        }
        if self.held.len() >= max {
            return Err(Full);
        }
        self.held.insert(id, Held { arrived_ms: now_ms, parents: parents.to_vec(), hold });
        Ok(())
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: &Id) -> bool {
        self.held.contains_key(id)
    }

    /// Releases `id` (it was read).
    pub fn release(&mut self, id: &Id) -> bool {
        self.held.remove(id).is_some()
    }

    /// An accepted message names `parents`: every held ancestor among them (and theirs) is
    /// proven to be history and released. Returns the released ids.
    pub fn prove_ancestors(&mut self, parents: &[Id]) -> Vec<Id> {
        let mut released = Vec::new();
        let mut stack: Vec<Id> = parents.to_vec();
        // Bounded: each id leaves the map at most once.
        while let Some(p) = stack.pop() {
            if let Some(h) = self.held.remove(&p) {
                stack.extend(h.parents);
                released.push(p);
            }
        }
        released
    }

    /// Every held id.
    pub fn ids(&self) -> Vec<Id> {
        self.held.keys().copied().collect()
    }

    /// Envelopes to try again after an epoch change.
    pub fn to_reopen(&self) -> Vec<Id> {
        self.held.iter().filter(|(_, h)| h.hold == Hold::FutureEpoch).map(|(id, _)| *id).collect()
    }

    /// Removes and returns every envelope held longer than `hold_ms`.
    pub fn expire(&mut self, now_ms: u64, hold_ms: u64) -> Vec<Id> {
        let due: Vec<Id> = self
            .held
            .iter()
            .filter(|(_, h)| now_ms.saturating_sub(h.arrived_ms) >= hold_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.held.remove(id);
        }
        due
    }

    /// Envelopes held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn junk_cannot_evict_and_ancestors_are_released() {
        let mut q = Quarantine::default();
        q.hold(id(1), &[], Hold::Unopened, 0, 3).expect("room");
        q.hold(id(2), &[id(1)], Hold::Unopened, 0, 3).expect("room");
        q.hold(id(3), &[], Hold::FutureEpoch, 0, 3).expect("room");
        assert_eq!(q.hold(id(4), &[], Hold::Unopened, 0, 3), Err(Full), "full: the newcomer goes");
        assert!(q.contains(&id(1)), "nothing held earlier was evicted");
        assert_eq!(q.to_reopen(), vec![id(3)]);
        let mut released = q.prove_ancestors(&[id(2)]);
        released.sort();
        assert_eq!(released, vec![id(1), id(2)], "2 and its ancestor 1 are history");
        assert_eq!(q.expire(10, 10), vec![id(3)]);
        assert!(q.is_empty());
    }
}
