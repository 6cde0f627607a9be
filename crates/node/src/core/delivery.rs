//! Delivery bookkeeping of sent messages: sent → stored on k → delivered to n of m.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cairn_mls::ConversationId;
use cairn_proto::{AccountId, Id};

use crate::model::{DeliveryState, DeliveryView};

/// Delivery bookkeeping of one sent message.
///
/// Memory: the member list is shared by every delivery of a conversation sent while its
/// membership was the same (an `Arc`: the core's list for new sends, one per conversation and
/// membership for rows read back at start, see `deliveries_store`), and receipts are one bit per
/// member, so 100,000 tracked sends of a 2-member group cost a few MB, not 60.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its conversation.
    pub conversation: ConversationId,
    /// Store nodes that acknowledged it durably.
    pub stored_on: u32,
    /// The other member accounts when it was sent (sorted, distinct): the ones it waits for.
    waiting_for: Arc<[AccountId]>,
    /// Bit `i`: `waiting_for[i]` receipted it.
    receipts: Box<[u64]>,
}

impl Delivery {
    /// A delivery waiting for `waiting_for` (sorted and deduplicated here), none receipted.
    pub fn new(conversation: ConversationId, stored_on: u32, waiting_for: Arc<[AccountId]>) -> Self {
        let waiting_for = if waiting_for.windows(2).all(|w| w[0] < w[1]) {
            waiting_for
        } else {
            let mut v = waiting_for.to_vec();
            v.sort();
            v.dedup();
            v.into()
        };
        let receipts = vec![0u64; waiting_for.len().div_ceil(64)].into_boxed_slice();
        Self { conversation, stored_on, waiting_for, receipts }
    }

    /// The accounts it waits for, sorted (shared with the other sends of the same membership).
    pub fn waiting_for(&self) -> &Arc<[AccountId]> {
        &self.waiting_for
    }

    /// Whether `account` receipted it.
    pub fn has_receipt(&self, account: &AccountId) -> bool {
        self.waiting_for.binary_search(account).is_ok_and(|i| self.receipts[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Records `account`'s receipt; false if it is not waited for or already counted.
    pub fn add_receipt(&mut self, account: &AccountId) -> bool {
        let Ok(i) = self.waiting_for.binary_search(account) else { return false };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.receipts[word] & bit != 0 {
            return false;
        }
        self.receipts[word] |= bit;
        true
    }

    /// The state shown to the user.
    pub fn state(&self) -> DeliveryState {
        let members = self.waiting_for.len();
        if members > 0 && self.delivered_to() >= members {
            DeliveryState::Delivered
        } else if self.stored_on > 0 {
            DeliveryState::Stored
        } else {
            DeliveryState::Sent
        }
    }

    fn delivered_to(&self) -> usize {
        self.receipts.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The API view.
    pub fn view(&self) -> DeliveryView {
        DeliveryView {
            state: self.state(),
            stored_on: self.stored_on,
            delivered_to: self.delivered_to() as u32,
            members: self.waiting_for.len() as u32,
        }
    }
}

/// Deliveries being tracked, bounded by count.
///
/// Overflow policy: when `max` entries are tracked, the oldest entry is forgotten (its state
/// stops changing; the message itself is untouched). Finished deliveries are forgotten first.
#[derive(Debug)]
pub struct Deliveries {
    map: HashMap<Id, Delivery>,
    order: VecDeque<Id>,
    max: usize,
}

impl Deliveries {
    /// Tracks at most `max` deliveries.
    pub fn new(max: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), max: max.max(1) }
    }

    /// Starts tracking a sent message.
    pub fn insert(&mut self, id: Id, d: Delivery) {
        if self.map.contains_key(&id) {
            return;
        }
        while self.map.len() >= self.max {
            self.evict_one();
        }
        self.map.insert(id, d);
        self.order.push_back(id);
    }

    fn evict_one(&mut self) {
        let delivered = self
            .order
            .iter()
            .position(|i| self.map.get(i).is_some_and(|d| d.state() == DeliveryState::Delivered));
        let victim = match delivered {
            Some(pos) => self.order.remove(pos),
            None => self.order.pop_front(),
        };
        if let Some(v) = victim {
            self.map.remove(&v);
        }
    }

    /// A tracked delivery.
    pub fn get(&self, id: &Id) -> Option<&Delivery> {
        self.map.get(id)
    }

    /// Records store acknowledgements; returns the new view if it changed.
    pub fn stored(&mut self, id: &Id, acks: u32) -> Option<(ConversationId, DeliveryView)> {
        let d = self.map.get_mut(id)?;
        if acks <= d.stored_on {
            return None;
        }
        d.stored_on = acks;
        Some((d.conversation, d.view()))
    }

    /// Records a receipt from `from`; returns the new view if it changed.
    pub fn receipted(&mut self, id: &Id, from: AccountId) -> Option<(ConversationId, DeliveryView)> {
        let d = self.map.get_mut(id)?;
        if !d.add_receipt(&from) {
            return None;
        }
        Some((d.conversation, d.view()))
    }

    /// The newest `max` tracked deliveries of `conv`, newest first.
    pub fn of_conversation(&self, conv: &ConversationId, max: usize) -> Vec<(Id, DeliveryView)> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.map.get(id).filter(|d| d.conversation == *conv).map(|d| (*id, d.view())))
            .take(max)
            .collect()
    }

    /// Tracked deliveries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(n: u8) -> AccountId {
        AccountId([n; 32])
    }

    fn delivery(waiting: &[u8]) -> Delivery {
        Delivery::new(ConversationId([9; 32]), 0, waiting.iter().map(|n| acc(*n)).collect())
    }

    #[test]
    fn states_progress_and_strangers_do_not_count() {
        let mut ds = Deliveries::new(8);
        let id = Id([1; 32]);
        ds.insert(id, delivery(&[2, 3]));
        assert_eq!(ds.get(&id).map(Delivery::state), Some(DeliveryState::Sent));
        assert_eq!(ds.stored(&id, 2).map(|(_, v)| v.state), Some(DeliveryState::Stored));
        assert!(ds.stored(&id, 1).is_none(), "fewer acks never lower the count");
        assert!(ds.receipted(&id, acc(7)).is_none(), "a non-member's receipt is ignored");
        assert_eq!(ds.receipted(&id, acc(2)).map(|(_, v)| v.delivered_to), Some(1));
        assert!(ds.receipted(&id, acc(2)).is_none(), "a repeated receipt changes nothing");
        let (_, v) = ds.receipted(&id, acc(3)).expect("changed");
        assert_eq!((v.state, v.delivered_to, v.members), (DeliveryState::Delivered, 2, 2));
    }

    #[test]
    fn overflow_forgets_finished_deliveries_first() {
        let mut ds = Deliveries::new(2);
        ds.insert(Id([1; 32]), delivery(&[2]));
        ds.insert(Id([2; 32]), delivery(&[2]));
        ds.receipted(&Id([2; 32]), acc(2));
        ds.insert(Id([3; 32]), delivery(&[2]));
        assert_eq!(ds.len(), 2);
        assert!(ds.get(&Id([1; 32])).is_some(), "the unfinished one is kept");
        assert!(ds.get(&Id([2; 32])).is_none(), "the delivered one went first");
        ds.insert(Id([4; 32]), delivery(&[2]));
        assert!(ds.get(&Id([1; 32])).is_none(), "then the oldest");
    }

    #[test]
    fn member_lists_are_sorted_and_receipts_are_bits() {
        let a = delivery(&[3, 2]);
        assert_eq!(a.waiting_for()[..], [acc(2), acc(3)], "sorted");
        // 70 members: receipts span two words.
        let many: Vec<u8> = (1..=70).collect();
        let mut d = delivery(&many);
        assert!(d.add_receipt(&acc(70)) && d.add_receipt(&acc(1)) && !d.add_receipt(&acc(70)));
        assert!(d.has_receipt(&acc(70)) && !d.has_receipt(&acc(69)) && !d.has_receipt(&acc(200)));
        assert_eq!(d.view().delivered_to, 2);
    }
}
