//! `cairn bench`: tables for the parts that have landed.

use anyhow::Result;
use clap::{Args, ValueEnum};

/// Which benchmark.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Which {
    /// Gossip relay + mailbox store across N loopback nodes.
    Relay,
    /// Same run as `relay` (mailbox figures: durable-ack latency, ingest, fsyncs).
    Mailbox,
    /// MLS at growing group sizes (runs `cargo bench -p cairn-mls --bench scale`; needs the
    /// source tree).
    Mls,
    /// 4 validator processes: tx/s, finality p50/p99, signature CPU share.
    Ledger,
    /// End-to-end encrypted send → deliver through the whole stack, groups of 2, 10, 100.
    E2e,
    /// Contracts: policy verdicts/s per core, escrow executions beside transfers on 4
    /// validator processes, fuel and fee per call.
    Contracts,
    /// Fault campaign in network namespaces (root, iproute2, iptables): partitions, packet
    /// loss, delay, clock skew, SIGKILL/restart; table of lost, duplicated, forks, heal time.
    /// Not part of `all`.
    Faults,
    /// The campaign's delay proxy inside one namespace (started by `faults`).
    #[value(hide = true)]
    FaultsProxy,
    /// Seeded simulation of 2,000 nodes (latency, churn, 10% hostile), without and with the
    /// stem phase: delivery, reach time, bytes per delivered byte, store load, first-spy.
    NetSim,
    /// Everything.
    All,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Benchmark to run.
    #[arg(value_enum)]
    which: Which,
    /// Nodes on loopback (the first three are store nodes).
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// 1 KiB envelopes per phase.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Envelopes per second in the fixed-rate phase.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Group sizes of the e2e bench.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2usize, 10, 100])]
    groups: Vec<usize>,
    /// Messages per group in the e2e bench.
    #[arg(long, default_value_t = 200)]
    e2e_messages: usize,
    /// Messages per second the e2e sender offers (0: as fast as it can send; a rate the group
    /// keeps up with measures latency rather than queueing).
    #[arg(long, default_value_t = 0.0)]
    e2e_rate: f64,
    /// Sends the e2e sender keeps in flight (1: each waits for the previous answer; more lets
    /// the node commit queued sends together).
    #[arg(long, default_value_t = 1)]
    e2e_window: usize,
    /// The e2e bench's user nodes run as light clients served by the store nodes (`cairn up
    /// --light`).
    #[arg(long)]
    e2e_light: bool,
    /// Contracts bench: timed policy verdicts per configuration.
    #[arg(long, default_value_t = 20_000)]
    verdicts: usize,
    /// Contracts bench: escrow opens (then as many transfers) per ledger round.
    #[arg(long, default_value_t = 5_000)]
    contract_txs: usize,
    /// Contracts bench: ledger rounds (the rates are their medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// net-sim: simulated nodes.
    #[arg(long, default_value_t = 2_000)]
    sim_nodes: usize,
    /// net-sim: seed (the same seed reproduces the run).
    #[arg(long, default_value_t = 1)]
    sim_seed: u64,
    /// net-sim: messages sent.
    #[arg(long, default_value_t = 300)]
    sim_messages: usize,
    /// net-sim: stem fluff probability, per mille.
    #[arg(long, default_value_t = 200)]
    sim_fluff_per_mille: u32,
    /// net-sim: stem fail-safe delay, ms (plus up to 1 s of jitter).
    #[arg(long, default_value_t = 2_000)]
    sim_failsafe_ms: u64,
    /// net-sim: gossip mesh degree D (D_lo = D - 1, D_hi = 2 D; our node: 6).
    #[arg(long, default_value_t = 6)]
    sim_mesh_n: usize,
    /// net-sim: anti-entropy period, ms (the node's resync_every_ms; 0: only after rejoining).
    #[arg(long, default_value_t = 5_000)]
    sim_resync_ms: u64,
    /// Faults: scenarios to run.
    #[arg(long, default_value_t = 100)]
    fault_scenarios: usize,
    /// Faults: the seed the scenarios are drawn from.
    #[arg(long, default_value_t = 17)]
    fault_seed: u64,
    /// Faults: user nodes in the group (with 4 validators and 3 store nodes).
    #[arg(long, default_value_t = 5)]
    fault_users: usize,
    /// Faults proxy: its configuration file.
    #[arg(long, hide = true)]
    fault_conf: Option<std::path::PathBuf>,
}

pub(crate) fn run(a: BenchArgs) -> Result<()> {
    match a.which {
        Which::Faults => return crate::bench_faults::run(a.fault_scenarios, a.fault_seed, a.fault_users),
        Which::FaultsProxy => return crate::bench_faults::proxy(a.fault_conf.as_deref()),
        _ => {}
    }
    let cfg = cairn_net::bench::BenchConfig { nodes: a.nodes, messages: a.messages, rate_per_sec: a.rate };
    let all = matches!(a.which, Which::All);
    if all || matches!(a.which, Which::Relay | Which::Mailbox) {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let results = rt.block_on(cairn_net::bench::run(cfg, |line| eprintln!("[bench] {line}")))?;
        print!("{}", cairn_net::bench::table(&cfg, &results));
        pow_cost();
    }
    if all || matches!(a.which, Which::Ledger) {
        let dir = tempfile::tempdir()?;
        let cfg = cairn_ledger::bench::BenchConfig {
            base_port: crate::node_cmd::free_ports(8)?,
            ..cairn_ledger::bench::BenchConfig::default()
        };
        let exe = std::env::current_exe()?;
        println!("ledger: 4 validator processes on 127.0.0.1, transfers submitted over RPC by one client");
        for r in cairn_ledger::bench::run(&cfg, dir.path(), &exe)? {
            println!("{r}");
        }
    }
    if all || matches!(a.which, Which::Mls) {
        println!("mls: cargo bench -p cairn-mls --bench scale -- 2 10 100 1000 10000");
        let status = std::process::Command::new("cargo")
            .args(["bench", "-p", "cairn-mls", "--bench", "scale", "--", "2", "10", "100", "1000", "10000"])
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => anyhow::bail!("the MLS bench failed ({s})"),
            Err(e) => anyhow::bail!("cannot run cargo for the MLS bench ({e}): run it from the source tree"),
        }
    }
    if all || matches!(a.which, Which::E2e) {
        crate::bench_e2e::run(&a.groups, a.e2e_messages, a.e2e_rate, a.e2e_window, a.e2e_light)?;
    }
    if all || matches!(a.which, Which::Contracts) {
        let cfg = crate::bench_contracts::Config {
            verdicts: a.verdicts,
            validators: 4,
            ledger_txs: a.contract_txs,
            rounds: a.rounds,
        };
        println!(
            "contracts: policy verdicts on one core; {} escrow opens and {} transfers per round on 4 validator processes on 127.0.0.1, {} rounds (rates: medians)",
            a.contract_txs, a.contract_txs, a.rounds
        );
        let rows = crate::bench_contracts::run(&cfg, &std::env::current_exe()?)?;
        print!("{}", crate::bench_contracts::table(&rows));
    }
    if all || matches!(a.which, Which::NetSim) {
        crate::bench_net_sim::run(crate::bench_net_sim::Config {
            nodes: a.sim_nodes,
            seed: a.sim_seed,
            messages: a.sim_messages,
            fluff_per_mille: a.sim_fluff_per_mille,
            failsafe_ms: a.sim_failsafe_ms,
            mesh_n: a.sim_mesh_n,
            resync_ms: a.sim_resync_ms,
        })?;
    }
    Ok(())
}

/// The sender's proof-of-work cost per KiB at the default difficulty (1-day TTL).
fn pow_cost() {
    use cairn_proto::envelope::pad;
    use cairn_proto::pow::{self, Difficulty};
    use cairn_proto::{Envelope, Limits, Topic};
    let d = Difficulty::default();
    println!("proof of work at default difficulty ({} bits per KiB-day):", d.base_bits);
    println!("size      ttl      bits  median ms  ms per KiB");
    for (content, ttl) in [(1000usize, 86_400u32), (4000, 86_400), (16_000, 86_400), (1000, 30 * 86_400)] {
        let mut times = Vec::new();
        for i in 0..15u64 {
            let Ok(p) = pad(&vec![7u8; content], &Limits::default()) else { return };
            let mut e = Envelope::new(Topic([9; 32]), i, ttl, vec![], p);
            let t = std::time::Instant::now();
            let _ = pow::mine(&mut e.header, d, 1 << 40);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let kib = (pad(&vec![7u8; content], &Limits::default()).map(|p| p.len()).unwrap_or(1024) as f64
            / 1024.0)
            .max(1.0);
        println!(
            "{:>5} B  {:>4} d  {:>4}  {:>9.3}  {:>10.4}",
            content,
            ttl / 86_400,
            pow::required_bits((kib * 1024.0) as u32, ttl, d),
            times[7],
            times[7] / kib
        );
    }
}
