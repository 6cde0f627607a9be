//! The ledger bench without the full `cairn` binary (which pulls in every other crate): the same
//! [`cairn_ledger::bench::run`], spawning this executable as the validator processes.
//!
//! ```text
//! cargo run --release -p cairn-ledger --example ledger_bench -- [txs] [rate] [seconds]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use cairn_ledger::bench::{self, BenchConfig};
use cairn_ledger::process::{self, ProcessOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("ledger")
        && args.get(2).map(String::as_str) == Some("validator")
    {
        // `ledger validator --genesis G --key K --data D`, as spawned by the bench
        let get = |flag: &str| -> PathBuf {
            let i = args.iter().position(|a| a == flag).expect("flag present");
            PathBuf::from(&args[i + 1])
        };
        let mut opts = ProcessOptions::new(&get("--genesis"), &get("--key"), &get("--data"));
        opts.status_every = None;
        process::run(opts, |_| {}).expect("validator runs");
        return;
    }
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let cfg = BenchConfig {
        saturation_txs: num(1, 20_000) as usize,
        fixed_rate: num(2, 2_000) as usize,
        fixed_duration: Duration::from_secs(num(3, 10)),
        base_port: num(4, 27300) as u16,
        ..BenchConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    println!("4 validator processes on 127.0.0.1, transfers submitted over RPC by one client");
    for r in bench::run(&cfg, dir.path(), &exe).unwrap() {
        println!("{r}");
    }
}
