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
    /// Everything available.
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
}

pub(crate) fn run(a: BenchArgs) -> Result<()> {
    let cfg = cairn_net::bench::BenchConfig { nodes: a.nodes, messages: a.messages, rate_per_sec: a.rate };
    match a.which {
        Which::Relay | Which::Mailbox | Which::All => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let results = rt.block_on(cairn_net::bench::run(cfg, |line| eprintln!("[bench] {line}")))?;
            print!("{}", cairn_net::bench::table(&cfg, &results));
            pow_cost();
        }
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
