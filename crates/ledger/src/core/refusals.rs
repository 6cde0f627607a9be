//! Bounded records of why transactions were refused, kept so that a client asking about one
//! (`Ledger::tx_status`) reads the reason rather than `Unknown`.

use std::collections::VecDeque;

use crate::fast_map::FastMap;

use crate::tx::{TxError, TxId};

/// Refusal reasons by transaction id, at most `max` of them. Overflow policy: the oldest record
/// is forgotten (that transaction's status reads `Unknown` again).
#[derive(Debug)]
pub(super) struct RefusalLog {
    reasons: FastMap<TxId, TxError>,
    /// Order in which `reasons` got its records (may hold ids already gone from it; compacted
    /// when it reaches twice `max`).
    order: VecDeque<TxId>,
    max: usize,
}

impl RefusalLog {
    /// An empty log of at most `max` records (at least 1).
    pub(super) fn new(max: usize) -> Self {
        Self { reasons: FastMap::default(), order: VecDeque::new(), max: max.max(1) }
    }

    /// Records why `id` was refused (a newer reason replaces an older one), forgetting the
    /// oldest records beyond the bound.
    pub(super) fn insert(&mut self, id: TxId, e: TxError) {
        if self.reasons.insert(id, e).is_none() {
            self.order.push_back(id);
        }
        while self.reasons.len() > self.max {
            let Some(old) = self.order.pop_front() else { break };
            self.reasons.remove(&old);
        }
        if self.order.len() >= 2 * self.max {
            let reasons = &self.reasons;
            self.order.retain(|id| reasons.contains_key(id));
        }
        debug_assert!(self.reasons.len() <= self.max && self.order.len() < 2 * self.max);
    }

    /// Forgets `id`'s record (it was admitted or finalized after all).
    pub(super) fn remove(&mut self, id: &TxId) {
        self.reasons.remove(id);
    }

    /// Why `id` was refused, if recorded.
    pub(super) fn get(&self, id: &TxId) -> Option<&TxError> {
        self.reasons.get(id)
    }

    /// Records held.
    pub(super) fn len(&self) -> usize {
        self.reasons.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_record_goes_first_and_the_bound_holds() {
        let mut log = RefusalLog::new(3);
        let id = |i: u8| TxId([i; 32]);
        for i in 0..10u8 {
            log.insert(id(i), TxError::BadSignature);
            // a removed record leaves its place in the order behind; the order stays bounded
            log.remove(&id(i.wrapping_sub(1)));
            assert!(log.len() <= 3 && log.order.len() < 6);
        }
        assert!(log.get(&id(9)).is_some());
        assert!(log.get(&id(0)).is_none(), "the oldest was forgotten");
        let mut log = RefusalLog::new(2);
        log.insert(id(1), TxError::BadSignature);
        log.insert(id(2), TxError::BadSignature);
        log.insert(id(1), TxError::WrongChain);
        assert_eq!(log.get(&id(1)), Some(&TxError::WrongChain), "a newer reason replaces the older");
        log.insert(id(3), TxError::BadSignature);
        assert_eq!(log.len(), 2);
        assert!(log.get(&id(1)).is_none(), "first recorded, first forgotten");
    }
}
