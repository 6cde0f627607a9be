//! The future-epoch buffer: application messages for an epoch this device has not reached yet,
//! held until the commits that lead there are applied.
//!
//! The sender of a PrivateMessage is encrypted under its epoch's keys, so nothing about a
//! future-epoch message can be checked before that epoch is reached: anyone who knows the
//! conversation id can fill the buffer with junk. Bounds: at most
//! [`Config::future_epochs_ahead_max`](super::Config::future_epochs_ahead_max) epochs ahead, and
//! per epoch at most
//! [`Config::future_messages_per_epoch_max`](super::Config::future_messages_per_epoch_max)
//! messages and [`Config::future_bytes_per_epoch_max`](super::Config::future_bytes_per_epoch_max)
//! bytes. Policy: a full epoch refuses new entries and never evicts old ones, so junk that
//! arrives later cannot push out a genuine message already held; a genuine message refused
//! because junk came first is not lost either — the caller keeps every envelope in its history
//! and receives the unread ones again after an epoch change.
//!
//! Within the current epoch there is no Cairn buffer: OpenMLS keeps per-sender ratchet state
//! bounded by `out_of_order_tolerance` and `maximum_forward_distance`, and only a message that
//! decrypts and verifies advances it, so junk cannot touch it.

use std::collections::BTreeMap;

/// A buffered message: its bytes and the authenticated data the caller expected (already
/// checked equal to the message's).
pub(super) type Held = (Vec<u8>, Vec<u8>);

/// The bounds of a [`FutureBuffer`], from [`super::Config`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) epochs_ahead_max: u64,
    pub(super) messages_per_epoch_max: usize,
    pub(super) bytes_per_epoch_max: usize,
}

/// Why a message was not buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// More than `epochs_ahead_max` epochs ahead.
    TooFarAhead,
    /// The epoch's quota (messages or bytes) is full.
    Full,
}

#[derive(Debug, Default)]
struct Epoch {
    messages: Vec<Held>,
    bytes: usize,
}

/// Future-epoch messages of one conversation, per epoch (see the module docs).
#[derive(Debug, Default)]
pub(super) struct FutureBuffer {
    epochs: BTreeMap<u64, Epoch>,
}

impl FutureBuffer {
    /// Holds a message of `epoch` (> `current`), or refuses it.
    pub(super) fn push(
        &mut self,
        current: u64,
        epoch: u64,
        held: Held,
        limits: Limits,
    ) -> Result<(), Refused> {
        if epoch.saturating_sub(current) > limits.epochs_ahead_max {
            return Err(Refused::TooFarAhead);
        }
        let e = self.epochs.entry(epoch).or_default();
        let size = held.0.len() + held.1.len();
        if e.messages.len() >= limits.messages_per_epoch_max || e.bytes + size > limits.bytes_per_epoch_max {
            if e.messages.is_empty() {
                self.epochs.remove(&epoch);
            }
            return Err(Refused::Full);
        }
        e.bytes += size;
        e.messages.push(held);
        Ok(())
    }

    /// Removes and returns every message of an epoch up to `current`, oldest epoch first.
    pub(super) fn take_ready(&mut self, current: u64) -> Vec<Held> {
        let later = self.epochs.split_off(&current.saturating_add(1));
        let ready = std::mem::replace(&mut self.epochs, later);
        ready.into_values().flat_map(|e| e.messages).collect()
    }

    /// The number of messages held per epoch (to undo later pushes with [`Self::truncate`]).
    pub(super) fn marks(&self) -> BTreeMap<u64, usize> {
        self.epochs.iter().map(|(e, m)| (*e, m.messages.len())).collect()
    }

    /// Drops every message pushed since `marks` was taken.
    pub(super) fn truncate(&mut self, marks: &BTreeMap<u64, usize>) {
        self.epochs.retain(|e, m| match marks.get(e) {
            Some(&n) => {
                for (b, a) in m.messages.drain(n..) {
                    m.bytes -= b.len() + a.len();
                }
                true
            }
            None => false,
        });
    }

    /// Messages held in all epochs.
    pub(super) fn len(&self) -> usize {
        self.epochs.values().map(|e| e.messages.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LIMITS: Limits =
        Limits { epochs_ahead_max: 2, messages_per_epoch_max: 3, bytes_per_epoch_max: 100 };

    fn msg(n: usize) -> Held {
        (vec![0; n], vec![1; 4])
    }

    #[test]
    fn each_epoch_is_bounded_and_full_refuses_rather_than_evicts() {
        let mut b = FutureBuffer::default();
        for _ in 0..3 {
            b.push(5, 6, msg(10), LIMITS).unwrap();
        }
        assert_eq!(b.push(5, 6, msg(10), LIMITS), Err(Refused::Full));
        // Another epoch has its own quota; bytes are bounded too.
        b.push(5, 7, msg(80), LIMITS).unwrap();
        assert_eq!(b.push(5, 7, msg(20), LIMITS), Err(Refused::Full));
        assert_eq!(b.push(5, 8, msg(1), LIMITS), Err(Refused::TooFarAhead));
        assert_eq!(b.len(), 4);
        // Undo to a mark, then take what became ready: the first three of epoch 6 are intact.
        let marks = b.marks();
        b.push(5, 7, msg(1), LIMITS).unwrap();
        b.truncate(&marks);
        assert_eq!(b.len(), 4);
        let ready = b.take_ready(6);
        assert_eq!(ready, vec![msg(10), msg(10), msg(10)]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.take_ready(u64::MAX).len(), 1);
    }
}
