//! Where the time to reach every node goes (a diagnostic of the p99, not a model): for each
//! message, how the last node to get it got it (mesh push, flood publish, IWANT answer, or
//! anti-entropy), after how many gossip hops, and the *flood bound*: the time a flood over
//! every connection of honest relays would take to reach the farthest node online at the send
//! (shortest path by link latency; churn during the spread is ignored). The gap between the
//! reach and the bound is what the protocol adds to the topology's own latency.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Role, World};
use crate::sim::event::Via;

/// How a node got a message, for the last-reached breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum How {
    /// From a store node (page, ids) or any path but gossip.
    #[default]
    Store,
    /// Gossip, as the originator's (or a fluffing hop's) flood publish.
    Flood,
    /// Gossip, an eager push from a mesh peer.
    Mesh,
    /// Gossip, an answer to an IWANT (lazy pull after an IHAVE).
    IWant,
}

impl How {
    pub(super) fn of(via: Via) -> Self {
        match via {
            Via::Origin => How::Flood,
            Via::Forward => How::Mesh,
            Via::IWant => How::IWant,
        }
    }

    /// Label in the report.
    pub(super) fn label(self) -> &'static str {
        match self {
            How::Store => "store",
            How::Flood => "flood publish",
            How::Mesh => "mesh push",
            How::IWant => "iwant answer",
        }
    }
}

impl World {
    /// The flood bound of a message sent now by `origin`, ms (see the module).
    pub(super) fn flood_bound_ms(&self, origin: u32) -> u64 {
        let n = self.nodes.len();
        let mut dist = vec![u64::MAX; n];
        let mut heap = BinaryHeap::new();
        dist[origin as usize] = 0;
        heap.push(Reverse((0u64, origin)));
        while let Some(Reverse((d, u))) = heap.pop() {
            if d > dist[u as usize] {
                continue;
            }
            let node = &self.nodes[u as usize];
            if u != origin && node.role != Role::Honest {
                continue; // hostile nodes relay nothing
            }
            for &v in &node.peers {
                let nd = d + self.latency(u, v);
                if nd < dist[v as usize] {
                    dist[v as usize] = nd;
                    heap.push(Reverse((nd, v)));
                }
            }
        }
        (0..n)
            .filter(|i| {
                let x = &self.nodes[*i];
                x.online && x.role == Role::Honest && *i != origin as usize && dist[*i] != u64::MAX
            })
            .map(|i| dist[i])
            .max()
            .unwrap_or(0)
    }
}
