//! [`NodeEvent`] and the two streams that carry it.
//!
//! Policy, per stream:
//! - **Lossless** ([`super::NodeHandle::take_events`]): one bounded `mpsc` channel of
//!   `NodeConfig::events_lossless_max` events with a single consumer, taken once. Once taken,
//!   no `Delivered` or `Status` event is ever dropped: when the channel is full, the history
//!   writer waits for room, its job queue fills, the actor then waits for room in that queue
//!   and stops polling the swarm. That is safe because every delivery is already durable in
//!   the local history before its event is sent, and what the swarm could not take meanwhile
//!   (gossip) comes back through anti-entropy from the store nodes. Own publications never
//!   wait behind this stream (they have their own lane to the writer), so a consumer that
//!   publishes while it reads cannot deadlock the node. Before the receiver is taken, events
//!   are kept while there is room and then left out of this stream (call `take_events` before
//!   subscribing); after the receiver is dropped, or once the node is shutting down, nothing
//!   waits for it.
//! - **Observers** ([`super::NodeHandle::events`]): a `broadcast` channel of
//!   [`EVENTS_BROADCAST_MAX`] events; a receiver that lags loses the oldest events (it sees
//!   `RecvError::Lagged`). For benches, tests and dashboards, never for must-deliver work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cairn_proto::{Envelope, Id};
use tokio::sync::{broadcast, mpsc};

use crate::sync::SendStatus;

/// Default capacity of the lossless event stream, events (`NodeConfig::events_lossless_max`).
pub const EVENTS_LOSSLESS_MAX: usize = 1024;
/// Capacity of the observers' broadcast stream, events; a lagging observer loses the oldest.
pub const EVENTS_BROADCAST_MAX: usize = 65_536;

/// Something that happened, for the application.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A new envelope of a subscribed topic, exactly once, after its parents, and only once it
    /// is durable in the local history.
    Delivered {
        /// Envelope.
        envelope: Box<Envelope>,
        /// Id.
        id: Id,
        /// An ancestor could not be found.
        after_gap: bool,
    },
    /// A sent envelope's status changed.
    Status {
        /// Id.
        id: Id,
        /// Status.
        status: SendStatus,
    },
}

/// The producing end, owned by the history writer.
pub(super) struct EventSink {
    broadcast: broadcast::Sender<NodeEvent>,
    lossless: mpsc::Sender<NodeEvent>,
    taken: Arc<AtomicBool>,
}

/// The consuming ends, shared by every clone of the handle.
pub(super) struct EventTap {
    broadcast: broadcast::Sender<NodeEvent>,
    lossless: Mutex<Option<mpsc::Receiver<NodeEvent>>>,
    taken: Arc<AtomicBool>,
}

/// Both streams; the lossless one holds `lossless_max` events (at least 1).
pub(super) fn streams(lossless_max: usize) -> (EventSink, EventTap) {
    let (btx, _) = broadcast::channel(EVENTS_BROADCAST_MAX);
    let (ltx, lrx) = mpsc::channel(lossless_max.max(1));
    let taken = Arc::new(AtomicBool::new(false));
    let sink = EventSink { broadcast: btx.clone(), lossless: ltx, taken: taken.clone() };
    (sink, EventTap { broadcast: btx, lossless: Mutex::new(Some(lrx)), taken })
}

impl EventSink {
    /// Sends to the observers; never waits.
    pub(super) fn observe(&self, ev: &NodeEvent) {
        let _ = self.broadcast.send(ev.clone());
    }

    /// True once the lossless receiver was taken (and until it is dropped).
    pub(super) fn attached(&self) -> bool {
        self.taken.load(Ordering::Acquire) && !self.lossless.is_closed()
    }

    /// Sends on the lossless stream if there is room, without waiting (see the policy).
    pub(super) fn offer(&self, ev: NodeEvent) {
        let _ = self.lossless.try_send(ev);
    }

    /// Room for one event on the lossless stream; `None` if its receiver was dropped.
    pub(super) async fn reserve(&self) -> Option<mpsc::Permit<'_, NodeEvent>> {
        self.lossless.reserve().await.ok()
    }
}

impl EventTap {
    /// A new observer.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.broadcast.subscribe()
    }

    /// The lossless receiver, the first time only.
    pub(super) fn take(&self) -> Option<mpsc::Receiver<NodeEvent>> {
        let mut slot = self.lossless.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = slot.take();
        if rx.is_some() {
            self.taken.store(true, Ordering::Release);
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn status(i: u8) -> NodeEvent {
        NodeEvent::Status { id: Id([i; 32]), status: SendStatus::Sent }
    }

    #[test]
    fn before_it_is_taken_the_stream_keeps_what_fits_and_never_waits() {
        let (sink, tap) = streams(2);
        assert!(!sink.attached());
        for i in 0..5 {
            sink.offer(status(i)); // must not block
        }
        let mut rx = tap.take().expect("first take");
        assert!(tap.take().is_none(), "taken once");
        assert!(sink.attached());
        assert_eq!(rx.len(), 2, "the bound holds");
        assert!(matches!(rx.try_recv(), Ok(NodeEvent::Status { id, .. }) if id == Id([0; 32])));
        drop(rx);
        assert!(!sink.attached(), "a dropped consumer is not waited for");
    }
}
