//! Keeping the relayed listen address of `NodeConfig::listen_via_relay`: the relay client's
//! listener closes when its reservation is refused or the connection to the relay drops (the
//! relay restarted, or someone cut it); the node then listens through the relay again on the
//! tick, with the peer book's backoff (1 s doubling to 5 min, reset once a reservation holds).

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use tracing::{debug, info};

use super::actor::Node;
use super::now_ms;
use crate::peerbook::backoff_ms;

/// The relayed listener and its retry schedule.
#[derive(Debug, Default)]
pub(super) struct RelayedListen {
    /// The open listener, if any.
    listener: Option<ListenerId>,
    /// Listens since the last reservation that held.
    attempts: u32,
    /// Not tried again before this time, ms.
    next_ms: u64,
}

impl RelayedListen {
    /// The listener opened at start-up (counts as a first attempt).
    pub(super) fn started(listener: Option<ListenerId>) -> Self {
        let attempts = u32::from(listener.is_some());
        Self { listener, attempts, next_ms: now_ms() + backoff_ms(attempts.saturating_sub(1)) }
    }
}

impl Node {
    /// On the tick: listens through the relay again if its listener is gone and it is time.
    pub(super) fn relisten(&mut self) {
        let Some(relay) = self.config.listen_via_relay.clone() else { return };
        let now = now_ms();
        let r = &mut self.relayed;
        if r.listener.is_some() || now < r.next_ms {
            return;
        }
        let circuit = relay.with(Protocol::P2pCircuit);
        r.next_ms = now + backoff_ms(r.attempts);
        r.attempts = r.attempts.saturating_add(1);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => r.listener = Some(id),
            Err(e) => debug!("listen via {circuit}: {e}"),
        }
    }

    /// A listener produced an address: a reservation through the relay holds.
    pub(super) fn relayed_addr(&mut self, listener: ListenerId) {
        if self.relayed.listener == Some(listener) {
            // One event per relay address; say it once per reservation.
            if self.relayed.attempts > 0 {
                info!("reachable through the relay");
            }
            self.relayed.attempts = 0;
        }
    }

    /// A listener closed: if it was the relayed one, listen again after the backoff.
    pub(super) fn relayed_closed(&mut self, listener: ListenerId, why: &str) {
        if self.relayed.listener == Some(listener) {
            if self.relayed.attempts == 0 {
                info!("the relay dropped this node's reservation ({why}); listening through it again");
            } else {
                debug!("no reservation at the relay ({why}); trying again after a backoff");
            }
            self.relayed.listener = None;
        }
    }
}
