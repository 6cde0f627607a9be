//! `cairn bench net-sim`: the seeded simulation of the network (`cairn_net::sim`), run once
//! without and once with the stem phase (same seed, on two threads), printed as one table.

use anyhow::Result;
use cairn_net::sim::{self, SimConfig};
use cairn_net::stem::StemConfig;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Nodes.
    pub(crate) nodes: usize,
    /// Seed.
    pub(crate) seed: u64,
    /// Messages.
    pub(crate) messages: usize,
    /// Stem fluff probability, per mille.
    pub(crate) fluff_per_mille: u32,
    /// Stem fail-safe base delay, ms.
    pub(crate) failsafe_ms: u64,
    /// Gossip mesh degree D (D_lo = D - 1, D_hi = 2 D, as the defaults 6/5/12).
    pub(crate) mesh_n: usize,
    /// Anti-entropy period, ms (0: only after rejoining).
    pub(crate) resync_ms: u64,
}

pub(crate) fn run(c: Config) -> Result<()> {
    anyhow::ensure!(c.nodes >= 10, "--sim-nodes must be at least 10");
    anyhow::ensure!(c.mesh_n >= 2, "--sim-mesh-n must be at least 2");
    let mut base = SimConfig { seed: c.seed, nodes: c.nodes, messages: c.messages, ..SimConfig::default() };
    base.resync_ms = c.resync_ms;
    base.gossip.mesh_n = c.mesh_n;
    base.gossip.mesh_n_low = c.mesh_n - 1;
    base.gossip.mesh_n_high = 2 * c.mesh_n;
    let stem = StemConfig {
        fluff_per_mille: c.fluff_per_mille,
        failsafe_ms: c.failsafe_ms,
        ..StemConfig::default()
    };
    let with_stem = SimConfig { stem: Some(stem), ..base };
    println!(
        "net-sim: {} simulated nodes ({} store nodes, {} per topic), seed {}, {} messages of {} content bytes over {} s, links {}-{} ms, \
         gossip modelled as gossipsub (D={} D_lo={} D_hi={}, IHAVE/IWANT every {} ms, IDONTWANT, flood publish); \
         real admission, sync and placement code, anti-entropy every {} ms; stem fluff {}/1000, fail-safe {}+{} ms",
        base.nodes,
        base.stores,
        base.replicas,
        base.seed,
        base.messages,
        base.content_bytes,
        base.send_ms / 1000,
        base.latency_ms_min,
        base.latency_ms_max,
        base.gossip.mesh_n,
        base.gossip.mesh_n_low,
        base.gossip.mesh_n_high,
        base.gossip.heartbeat_ms,
        base.resync_ms,
        stem.fluff_per_mille,
        stem.failsafe_ms,
        stem.failsafe_jitter_ms,
    );
    let started = std::time::Instant::now();
    let (off, on) = std::thread::scope(|s| {
        let off = s.spawn(|| sim::run(&base));
        let on = sim::run(&with_stem);
        (off.join(), on)
    });
    let off = off.map_err(|_| anyhow::anyhow!("the simulation thread panicked"))?;
    print!("{}", sim::table(&[off, on]));
    println!("(wall time {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
