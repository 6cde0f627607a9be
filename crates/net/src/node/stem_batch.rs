//! Answering a batch of stem envelopes (`stem_wire`, version 2) once every envelope in it is
//! answered: each envelope of a batch is relayed on its own, and its answer waits in a slot
//! here until the batch's last one comes in. Pure bookkeeping; `stem_hop.rs` sends.

use std::collections::HashMap;

use libp2p::request_response::ResponseChannel;

use crate::stem_wire::StemResponse;

/// Batches waiting for answers, at most. Each holds at least one relayed envelope (the
/// others were answered at once), and relays are bounded by `RELAYS_MAX`; beyond it a batch is
/// answered busy as a whole.
pub(super) const BATCH_SLOTS_MAX: usize = super::stem_hop::RELAYS_MAX;

/// Where the answer to one stem envelope goes.
#[derive(Debug)]
pub(super) enum Reply<C = ResponseChannel<Vec<u8>>> {
    /// The request carried this envelope alone: its channel.
    One(C),
    /// Envelope `index` of the batch in `slot`.
    Part {
        /// Slot of the batch ([`BatchReplies::open`]).
        slot: u64,
        /// Position in the batch.
        index: usize,
    },
}

struct Slot<C> {
    channel: C,
    answers: Vec<Option<StemResponse>>,
}

/// The batches waiting for their envelopes' answers.
pub(super) struct BatchReplies<C = ResponseChannel<Vec<u8>>> {
    slots: HashMap<u64, Slot<C>>,
    next: u64,
}

impl<C> Default for BatchReplies<C> {
    fn default() -> Self {
        Self { slots: HashMap::new(), next: 0 }
    }
}

impl<C> BatchReplies<C> {
    /// A slot for a batch of `n` envelopes answered on `channel`; `Err` gives the channel
    /// back when [`BATCH_SLOTS_MAX`] batches are waiting already.
    pub(super) fn open(&mut self, channel: C, n: usize) -> Result<u64, C> {
        if self.slots.len() >= BATCH_SLOTS_MAX {
            return Err(channel);
        }
        let slot = self.next;
        self.next += 1;
        self.slots.insert(slot, Slot { channel, answers: vec![None; n] });
        Ok(slot)
    }

    /// Records the answer to envelope `index` of `slot`; once every envelope of the batch is
    /// answered, gives back its channel and the answers in order. An unknown slot or index,
    /// or a second answer to one envelope, changes nothing.
    pub(super) fn answer(
        &mut self,
        slot: u64,
        index: usize,
        resp: StemResponse,
    ) -> Option<(C, Vec<StemResponse>)> {
        let s = self.slots.get_mut(&slot)?;
        let a = s.answers.get_mut(index)?;
        if a.is_none() {
            *a = Some(resp);
        }
        if s.answers.iter().any(Option::is_none) {
            return None;
        }
        let s = self.slots.remove(&slot)?;
        Some((s.channel, s.answers.into_iter().flatten().collect()))
    }

    /// Batches waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{BATCH_SLOTS_MAX, BatchReplies};
    use crate::stem_wire::{StemOutcome, StemResponse};

    #[test]
    fn a_batch_is_answered_once_all_its_envelopes_are_in_order() {
        let mut b: BatchReplies<&str> = BatchReplies::default();
        let slot = b.open("ch", 3).unwrap();
        let bare = StemResponse::bare;
        assert!(b.answer(slot, 2, bare(StemOutcome::Busy)).is_none());
        assert!(b.answer(slot, 0, bare(StemOutcome::Duplicate)).is_none());
        assert!(b.answer(slot, 2, bare(StemOutcome::Refused)).is_none(), "a second answer is ignored");
        assert!(b.answer(slot, 7, bare(StemOutcome::Refused)).is_none(), "no such envelope");
        let (ch, answers) = b.answer(slot, 1, bare(StemOutcome::Receipts)).unwrap();
        assert_eq!(ch, "ch");
        let outcomes: Vec<StemOutcome> = answers.iter().map(|a| a.outcome).collect();
        assert_eq!(outcomes, [StemOutcome::Duplicate, StemOutcome::Receipts, StemOutcome::Busy]);
        assert_eq!(b.len(), 0, "the slot is freed");
        assert!(b.answer(slot, 1, bare(StemOutcome::Receipts)).is_none(), "answered once");
    }

    #[test]
    fn slots_are_bounded() {
        let mut b: BatchReplies<usize> = BatchReplies::default();
        for i in 0..BATCH_SLOTS_MAX {
            assert!(b.open(i, 2).is_ok());
        }
        assert_eq!(b.open(99, 2), Err(99), "full: the channel comes back to be answered busy");
    }
}
