//! Sending: the outbox, store acknowledgements and retries with back-off.

use std::collections::HashSet;
use std::hash::Hash;

use cairn_proto::{Envelope, Id};

use super::{Output, Pending, Sync, SyncConfig};

impl<S: Clone + Eq + Hash + Ord + std::fmt::Debug> Sync<S> {
    pub(super) fn on_send(
        &mut self,
        envelope: Envelope,
        stores: Vec<S>,
        held_until_ms: Option<u64>,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        let id = envelope.id();
        if self.outbox.contains_key(&id) {
            return;
        }
        // Bound the outbox: forget the oldest *stored* entries first; never drop unstored ones
        // silently (the caller sees the bound through `pending()` and back-pressure).
        while self.outbox.len() >= self.config.outbox_envelopes_max {
            let Some(old) = self.outbox.iter().find(|(_, p)| p.stored).map(|(id, _)| *id) else { break };
            self.outbox.remove(&old);
        }
        if held_until_ms.is_none() {
            for s in &stores {
                out.push(Output::StoreRequest { to: s.clone(), envelope: envelope.clone() });
            }
        }
        let p = Pending {
            envelope,
            stores,
            acked: HashSet::new(),
            attempt: 1,
            retry_at_ms: held_until_ms.unwrap_or(now_ms + self.config.retry_initial_ms),
            stored: false,
            held: held_until_ms.is_some(),
        };
        out.push(Output::Status { id, status: Self::status_of(&p) });
        self.outbox.insert(id, p);
    }

    pub(super) fn on_ack(&mut self, id: Id, from: S, out: &mut Vec<Output<S>>) {
        let Some(p) = self.outbox.get_mut(&id) else { return };
        if !p.stores.contains(&from) || !p.acked.insert(from) {
            return; // unsolicited or repeated acknowledgement: counts once, from targets only
        }
        if p.acked.len() >= self.config.acks_required || p.stored {
            p.stored = true;
            out.push(Output::Status { id, status: Self::status_of(p) });
        }
    }

    /// Pushes an unstored send again to its unacknowledged store nodes, backing off.
    pub(super) fn retry(
        config: &SyncConfig,
        id: &Id,
        p: &mut Pending<S>,
        now_ms: u64,
        out: &mut Vec<Output<S>>,
    ) {
        p.attempt += 1;
        let backoff = config.retry_initial_ms.saturating_mul(1 << p.attempt.min(16));
        p.retry_at_ms = now_ms + backoff.min(config.retry_max_ms);
        for s in p.stores.iter().filter(|s| !p.acked.contains(*s)) {
            out.push(Output::StoreRequest { to: s.clone(), envelope: p.envelope.clone() });
        }
        out.push(Output::Status { id: *id, status: Self::status_of(p) });
    }
}
