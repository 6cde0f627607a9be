//! Validator memory as the chain grows: `cargo bench -p cairn-ledger --bench rss` (1M
//! transactions; `RSS_TXS=200000` for a shorter run). Prints VmRSS every 100k transactions.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use cairn_ledger::bench_rss::{RssConfig, run};

/// The `cairn` binary's allocator, so that the figures are a validator's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse
    let mut cfg = RssConfig::default();
    if let Some(n) = std::env::var("RSS_TXS").ok().and_then(|v| v.parse().ok()) {
        cfg.txs = n;
    }
    // `RSS_REOPEN=<dir>`: only reopen a store a killed run left there (crash recovery time)
    if let Ok(dir) = std::env::var("RSS_REOPEN") {
        match cairn_ledger::bench_rss::reopen(std::path::Path::new(&dir), cfg.accounts) {
            Ok((height, secs)) => println!("reopened at height {height} in {secs:.1} s"),
            Err(e) => {
                eprintln!("reopen failed: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    // `RSS_DIR=<dir>`: keep the store there (to kill the run and reopen it)
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir =
        std::env::var("RSS_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).expect("the store directory");
    println!("chain store in {}", dir.display());
    println!(
        "rss bench: {} txs, {} per block, {} accounts (in-process ledger core, chain store on disk)",
        cfg.txs, cfg.per_block, cfg.accounts
    );
    println!(
        "{:>9} {:>7} {:>10} {:>10} {:>11} {:>8}",
        "txs", "height", "rss_MiB", "peak_MiB", "store_MiB", "secs"
    );
    let mut n = 0;
    let r = run(&cfg, &dir, |s| {
        n += 1;
        if s.txs == cfg.txs && n > 1 + cfg.txs.div_ceil(cfg.sample_every) as usize {
            println!("after reopening the store (a restart; secs = reopen time):");
        }
        println!(
            "{:>9} {:>7} {:>10.1} {:>10.1} {:>11.1} {:>8.1}",
            s.txs,
            s.height,
            s.rss_kib as f64 / 1024.0,
            s.hwm_kib as f64 / 1024.0,
            s.store_bytes as f64 / 1048576.0,
            s.secs
        );
    });
    if let Err(e) = r {
        eprintln!("rss bench failed: {e}");
        std::process::exit(1);
    }
}
