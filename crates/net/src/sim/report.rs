//! What a simulation run measured, and the table `cairn bench net-sim` prints.

use std::fmt::Write as _;

/// Figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Seed of the run (rerun it with the same seed and settings to reproduce it).
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Hostile nodes, per mille.
    pub hostile_per_mille: u64,
    /// Churn, per mille of nodes per simulated minute.
    pub churn_per_mille_per_min: u64,
    /// True if the stem phase was on.
    pub stem: bool,
    /// Messages sent by honest nodes.
    pub messages: usize,
    /// Deliveries owed: each message to every honest node but its sender.
    pub deliveries_expected: u64,
    /// Deliveries made (exactly once each, counted from `Sync`'s `Deliver`).
    pub deliveries: u64,
    /// Of them, by gossip (the rest by store-node pages after a rejoin).
    pub deliveries_by_gossip: u64,
    /// Up to 10 missed deliveries, as (message index, node).
    pub missed: Vec<(u32, u32)>,
    /// Per message, the time from its send until every honest node that was online at the send
    /// (and stayed so until it received it) had it, ms.
    pub reach_all_ms: Vec<u64>,
    /// Per message, the flood bound at its send: the time a flood over every connection of
    /// honest relays would take to reach the farthest honest node online, ms (a lower bound
    /// on `reach_all_ms` from the topology and link latencies alone).
    pub flood_bound_ms: Vec<u64>,
    /// Per message, how the node that was reached last got it ("mesh push", "flood publish",
    /// "iwant answer", "store") and after how many gossip hops.
    pub last_reached: Vec<(&'static str, u8)>,
    /// Bytes sent by honest nodes: gossip (messages and control), stem, store protocol.
    pub bytes_gossip: u64,
    /// Bytes sent over the stem protocol by honest nodes.
    pub bytes_stem: u64,
    /// Bytes of the store protocol sent by honest nodes (pushes, acks, pages).
    pub bytes_store: u64,
    /// Envelope bytes delivered to honest nodes.
    pub bytes_delivered: u64,
    /// Bytes sent by hostile nodes (floods included).
    pub bytes_hostile: u64,
    /// Bytes sent by honest nodes, by RPC kind (they add up to gossip + stem + store).
    pub bytes_by_kind: Vec<(&'static str, u64)>,
    /// Envelopes stored per honest store node: max / mean.
    pub store_load_max_over_mean: f64,
    /// Placement alone, over 10,000 random topics: max / mean envelopes per store node.
    pub placement_max_over_mean: f64,
    /// Messages some hostile node received (by stem or gossip).
    pub spied: u64,
    /// Of them, those whose first hostile receiver got it straight from its sender.
    pub spied_correct: u64,
    /// Mean over messages of 1 / (the sender's connected peers at the send).
    pub guess_baseline: f64,
    /// Messages whose sender pushed it straight to a hostile store node, which so learns the
    /// sender (with the stem the fluffing hop pushes, the sender only after its fallback).
    pub store_push_to_hostile: u64,
    /// Fail-safe diffusions (stem envelopes not seen in gossip in time).
    pub failsafe_fires: u64,
    /// Envelopes rejected by admission (malformed or unworked: the floods).
    pub rejected: u64,
    /// Events processed.
    pub events: u64,
}

impl Report {
    /// Delivered / owed.
    pub fn delivery_ratio(&self) -> f64 {
        if self.deliveries_expected == 0 {
            1.0
        } else {
            self.deliveries as f64 / self.deliveries_expected as f64
        }
    }
    /// Percentile `p` (0–100) of the time to reach all subscribers, ms.
    pub fn reach_ms(&self, p: f64) -> u64 {
        percentile(&self.reach_all_ms, p)
    }
    /// Bytes sent by honest nodes per envelope byte delivered.
    pub fn bytes_per_delivered(&self) -> f64 {
        let sent = self.bytes_gossip + self.bytes_stem + self.bytes_store;
        sent as f64 / self.bytes_delivered.max(1) as f64
    }
    /// First-spy precision: share of spied messages whose sender the spies named.
    pub fn spy_precision(&self) -> f64 {
        self.spied_correct as f64 / self.spied.max(1) as f64
    }
    /// Precision over the guessing baseline (1 / the sender's degree): ≤ 1 meets the goal.
    pub fn spy_ratio(&self) -> f64 {
        if self.guess_baseline == 0.0 { 0.0 } else { self.spy_precision() / self.guess_baseline }
    }
}

/// Where the time to reach every node goes: the flood bound, and how (and after how many
/// hops) the last node was reached, over all messages and over those at or above the p99.
fn reach_breakdown(r: &Report) -> String {
    let p99 = r.reach_ms(99.0);
    let mut by: Vec<(&str, u64, u64)> = Vec::new();
    let mut hops_all: Vec<u64> = Vec::new();
    let mut hops_tail: Vec<u64> = Vec::new();
    let mut bound_tail: Vec<u64> = Vec::new();
    for (i, (how, hops)) in r.last_reached.iter().enumerate() {
        let tail = r.reach_all_ms.get(i).is_some_and(|ms| *ms >= p99);
        match by.iter_mut().find(|(h, _, _)| h == how) {
            Some(e) => {
                e.1 += 1;
                e.2 += u64::from(tail);
            }
            None => by.push((how, 1, u64::from(tail))),
        }
        hops_all.push(u64::from(*hops));
        if tail {
            hops_tail.push(u64::from(*hops));
            bound_tail.push(r.flood_bound_ms.get(i).copied().unwrap_or(0));
        }
    }
    let by: Vec<String> = by.iter().map(|(h, n, tail)| format!("{h} {n} ({tail} at >= p99)")).collect();
    format!(
        "reach: flood bound p50/p99 {}/{} ms (at the p99 messages: {:?}); last reached by {}; its hops p50/p99 {}/{} (at >= p99: {:?})",
        percentile(&r.flood_bound_ms, 50.0),
        percentile(&r.flood_bound_ms, 99.0),
        bound_tail,
        by.join(", "),
        percentile(&hops_all, 50.0),
        percentile(&hops_all, 99.0),
        hops_tail,
    )
}

/// The value at percentile `p` (nearest rank) of `v`; 0 if empty.
pub fn percentile(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The table of runs (a run without and one with the stem, same seed, give the stem's cost).
pub fn table(reports: &[Report]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>6} {:>8} {:>9} {:>5} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8}",
        "nodes",
        "hostile%",
        "churn%/m",
        "stem",
        "delivery",
        "p50 ms",
        "p99 ms",
        "B/deliv B",
        "store max/",
        "placement",
        "first-spy",
        "ratio",
        "failsafe"
    );
    let _ = writeln!(
        t,
        "{:>6} {:>8} {:>9} {:>5} {:>9} {:>8} {:>8} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8}",
        "", "", "", "", "ratio", "(sim)", "(sim)", "", "mean", "max/mean", "precision", "to 1/deg", "fires"
    );
    for r in reports {
        let _ = writeln!(
            t,
            "{:>6} {:>8.1} {:>9.1} {:>5} {:>9.6} {:>8} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>9.3} {:>8.2} {:>8}",
            r.nodes,
            r.hostile_per_mille as f64 / 10.0,
            r.churn_per_mille_per_min as f64 / 10.0,
            if r.stem { "on" } else { "off" },
            r.delivery_ratio(),
            r.reach_ms(50.0),
            r.reach_ms(99.0),
            r.bytes_per_delivered(),
            r.store_load_max_over_mean,
            r.placement_max_over_mean,
            r.spy_precision(),
            r.spy_ratio(),
            r.failsafe_fires,
        );
    }
    if let (Some(off), Some(on)) = (reports.iter().find(|r| !r.stem), reports.iter().find(|r| r.stem)) {
        let _ = writeln!(
            t,
            "stem latency cost: p50 +{} ms, p99 +{} ms (simulated); first-spy precision {:.3} -> {:.3} (guessing among the sender's peers: {:.3})",
            on.reach_ms(50.0) as i64 - off.reach_ms(50.0) as i64,
            on.reach_ms(99.0) as i64 - off.reach_ms(99.0) as i64,
            off.spy_precision(),
            on.spy_precision(),
            on.guess_baseline,
        );
    }
    for r in reports {
        let _ = writeln!(
            t,
            "seed {} stem {}: {} messages, {}/{} deliveries ({} by gossip, rest by store pages: anti-entropy, rejoins), bytes gossip {} stem {} store {} delivered {} hostile {}, rejected {}, messages pushed to a hostile store {}, {} events",
            r.seed,
            if r.stem { "on" } else { "off" },
            r.messages,
            r.deliveries,
            r.deliveries_expected,
            r.deliveries_by_gossip,
            r.bytes_gossip,
            r.bytes_stem,
            r.bytes_store,
            r.bytes_delivered,
            r.bytes_hostile,
            r.rejected,
            r.store_push_to_hostile,
            r.events,
        );
        let _ = writeln!(t, "  {}", reach_breakdown(r));
        let delivered = r.bytes_delivered.max(1) as f64;
        let kinds: Vec<String> = r
            .bytes_by_kind
            .iter()
            .filter(|(_, b)| *b > 0)
            .map(|(k, b)| format!("{k} {:.3}", *b as f64 / delivered))
            .collect();
        let _ = writeln!(t, "  bytes sent per delivered byte, by kind: {}", kinds.join(", "));
        if !r.missed.is_empty() {
            let _ = writeln!(t, "  missed (message, node): {:?}", r.missed);
        }
    }
    t
}
