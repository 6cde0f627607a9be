//! A seeded, deterministic simulation of the Cairn network in one process (no wall clock, no
//! tokio): thousands of nodes, simulated link latency, churn and hostile nodes.
//!
//! What is real and what is a model:
//! - **Real code**: every envelope is a real, mined [`cairn_proto::Envelope`]; each node admits
//!   it with its own [`crate::validate::Admission`] (decode limits, proof of work, timestamp
//!   window, per-peer rate) before delivering or forwarding it; each honest node runs its own
//!   [`crate::sync::Sync`] state machine (store pushes with acknowledgements and retries;
//!   anti-entropy from store nodes every `resync_ms` and after rejoining, by pages of ids and
//!   fetches of the missing envelopes as the node does, `Sync` deciding what to ask, what to
//!   fetch and where the cursors stand); store targets come from
//!   [`crate::shard::place`] over the store nodes as registered on the ledger (rank by
//!   BLAKE3 of topic, node key and salt); the stem phase is [`crate::stem::Stem`], the module the node
//!   uses, on the node's store path (`world/stem_path.rs`: store nodes are never hops, the
//!   originator holds its send, the fluffing hop pushes to the stores and their receipts go
//!   back to the originator).
//! - **Model**: the gossip mesh. The real node uses libp2p gossipsub; here [`gossip`] models its
//!   router with our parameters (D = 6, D_lo = 5, D_hi = 12, eager push, IDONTWANT, flood
//!   publishing, IHAVE/IWANT at a 500 ms heartbeat, duplicate suppression by message id); see
//!   that module for what is simplified. Links have a fixed latency per pair, uniform in
//!   `latency_ms_min..=latency_ms_max` (or growing with distance on a torus: `geometric`); bandwidth and CPU time are not modelled. Connections
//!   stand in for the Kademlia routing table: each node dials `dial` peers at start and on
//!   rejoining (`near_dials` of them the nearest of `near_probe` random candidates, the steady
//!   state of the node's [`crate::nearness`] policy; the rest random), and dials a random one
//!   again when it has fewer than `degree_min`.
//! - **Churn**: `churn_per_mille_per_min` of the non-store nodes leave per simulated minute, each
//!   coming back after 10–60 s (a returning node counts as the join); store nodes stay up.
//!   Churn stops when sending stops, and the run continues until every node is back and synced.
//! - **Hostile nodes** (`hostile_per_mille`), colluding: droppers (join meshes, forward
//!   nothing, advertise by IHAVE and never answer IWANT), flooders (send malformed and unworked
//!   envelopes at `flood_per_sec` to every peer, each from a throwaway identity, so their own
//!   stays clean and keeps spying) and, among store nodes, liars (acknowledge
//!   store requests without storing and answer every page empty). All of them record where
//!   each message first reached them (the first-spy estimator).
//!
//! [`run`] returns a [`report::Report`]; [`report::table`] prints it.

mod event;
mod gossip;
pub mod report;
mod rng;
mod world;

pub use gossip::GossipParams;
pub use report::{Report, table};
pub use rng::Rng;

use crate::stem::StemConfig;

/// One simulation's settings; units in names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// The seed: the same seed and settings give the same run.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Store nodes among them.
    pub stores: usize,
    /// Store nodes per topic (the node's `replicas`).
    pub replicas: usize,
    /// Hostile nodes, per mille.
    pub hostile_per_mille: u64,
    /// Non-store nodes leaving (and coming back) per simulated minute, per mille.
    pub churn_per_mille_per_min: u64,
    /// Messages sent, from random honest online nodes, spread evenly over `send_ms`.
    pub messages: usize,
    /// Conversations (topics) the messages are spread over.
    pub conversations: usize,
    /// Content bytes per message (padded to its size class: 900 gives a 1 KiB payload).
    pub content_bytes: usize,
    /// Simulated time during which messages are sent, ms.
    pub send_ms: u64,
    /// Shortest link latency, ms.
    pub latency_ms_min: u64,
    /// Longest link latency, ms.
    pub latency_ms_max: u64,
    /// Links from geometry instead of independent per pair: each node sits at a seeded point
    /// of a unit torus and a link's latency grows with the distance (min at 0, max at the
    /// farthest point), so latencies obey the triangle inequality as real RTTs roughly do.
    pub geometric: bool,
    /// Peers each node dials.
    pub dial: usize,
    /// A node with fewer connected peers dials another at its heartbeat.
    pub degree_min: usize,
    /// Of the `dial` peers, how many are the nearest (lowest latency) of `near_probe` random
    /// candidates; the rest stay random. This models the steady state of the node's
    /// [`crate::nearness`] policy (its dialed connections beyond the few kept by hash converge
    /// to the lowest-RTT peers it has probed), not its rounds. 0: all random.
    pub near_dials: usize,
    /// Candidates looked at per near dial (the nearest is dialed).
    pub near_probe: usize,
    /// Anti-entropy period, ms (the node's `resync_every_ms`): each honest node pages every
    /// topic again from its cursor. 0: only after rejoining.
    pub resync_ms: u64,
    /// Anti-entropy by ids (the node's `SyncConfig::resync_by_ids`, on by default there too):
    /// pages list ids and `Sync` fetches only the missing envelopes. false: whole envelopes per
    /// page, as the node does with a store node that predates pages of ids.
    pub resync_by_ids: bool,
    /// Junk messages per second a flooder sends to each peer.
    pub flood_per_sec: u64,
    /// The gossip model's parameters.
    pub gossip: GossipParams,
    /// Stem phase before gossip (`None`: publish straight to gossip).
    pub stem: Option<StemConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            nodes: 2_000,
            stores: 100,
            replicas: 3,
            hostile_per_mille: 100,
            churn_per_mille_per_min: 50,
            messages: 300,
            conversations: 32,
            content_bytes: 900,
            send_ms: 60_000,
            latency_ms_min: 10,
            latency_ms_max: 200,
            geometric: false,
            dial: 5,
            degree_min: 6,
            near_dials: 3,
            near_probe: 8,
            resync_ms: 5_000,
            resync_by_ids: true,
            flood_per_sec: 5,
            gossip: GossipParams::default(),
            stem: None,
        }
    }
}

/// Runs one simulation.
pub fn run(config: &SimConfig) -> Report {
    world::World::new(config).run()
}
