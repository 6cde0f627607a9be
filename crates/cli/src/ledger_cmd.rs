//! `cairn ledger …`: local genesis, running a validator, asking validators for status, and the
//! ledger bench.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_ledger::bench::{self, BenchConfig};
use cairn_ledger::genesis::{Genesis, write_key};
use cairn_ledger::process::{self, ProcessOptions};
use cairn_ledger::rpc::LedgerClient;
use clap::{Args, Subcommand};

/// The ledger subcommands.
#[derive(Debug, Args)]
pub(crate) struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Write a local genesis for N validators on 127.0.0.1 and one key file per validator.
    Genesis {
        /// Number of validators (3f+1 tolerates f faulty).
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Output directory (created; must not already hold a genesis).
        #[arg(long)]
        out: PathBuf,
        /// First port: validator i uses p2p BASE+2i and rpc BASE+2i+1.
        #[arg(long, default_value_t = 26100)]
        base_port: u16,
        /// Chain name.
        #[arg(long, default_value = "local")]
        chain: String,
    },
    /// Run one validator until killed, printing a status line every second.
    Validator {
        /// Genesis file.
        #[arg(long)]
        genesis: PathBuf,
        /// This validator's key file.
        #[arg(long)]
        key: PathBuf,
        /// Data directory (blocks and consensus journal persist here).
        #[arg(long)]
        data: PathBuf,
    },
    /// Ask every validator of a genesis for its finalized height and state root.
    Status {
        /// Genesis file.
        #[arg(long)]
        genesis: PathBuf,
    },
    /// Throughput and finality latency of 4 in-process validators on loopback.
    Bench {
        /// Transactions in the saturation run.
        #[arg(long, default_value_t = 20_000)]
        txs: usize,
        /// Offered rate of the fixed-rate run (tx/s).
        #[arg(long, default_value_t = 2_000)]
        rate: usize,
        /// Seconds of the fixed-rate run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// First port to use.
        #[arg(long, default_value_t = 27100)]
        base_port: u16,
    },
}

pub(crate) fn run(args: LedgerArgs) -> anyhow::Result<()> {
    match args.command {
        LedgerCommand::Genesis { validators, out, base_port, chain } => {
            if validators == 0 {
                bail!("--validators must be at least 1 (use 4 to tolerate one faulty validator)");
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let gpath = out.join("genesis.txt");
            if gpath.exists() {
                bail!("{} already exists; choose another --out", gpath.display());
            }
            let (genesis, keys) = Genesis::local(&chain, validators, base_port, Vec::new())?;
            for (i, k) in keys.iter().enumerate() {
                write_key(&out.join(format!("validator-{i}.key")), k)?;
            }
            std::fs::write(&gpath, genesis.to_text())
                .with_context(|| format!("writing {}", gpath.display()))?;
            println!("wrote {} and {validators} key files (validator-<i>.key)", gpath.display());
            Ok(())
        }
        LedgerCommand::Validator { genesis, key, data } => {
            std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
            process::run(ProcessOptions::new(&genesis, &key, &data), |_| {})?;
            Ok(())
        }
        LedgerCommand::Status { genesis } => {
            let g = Genesis::load(&genesis)?;
            let mut client = LedgerClient::new(&g)?;
            let mut any = false;
            for i in 0..client.validators() {
                match client.status_at(i) {
                    Ok(s) => {
                        any = true;
                        println!(
                            "validator {i}: height={} digest={} root={} mempool={}",
                            s.height,
                            hex8(&s.digest),
                            hex8(&s.state_root),
                            s.mempool
                        );
                    }
                    Err(e) => println!("validator {i}: unreachable ({e})"),
                }
            }
            if !any {
                bail!("no validator answered; start them with `cairn ledger validator`");
            }
            Ok(())
        }
        LedgerCommand::Bench { txs, rate, seconds, base_port } => {
            let dir = tempfile::tempdir()?;
            let cfg = BenchConfig {
                saturation_txs: txs,
                fixed_rate: rate,
                fixed_duration: Duration::from_secs(seconds),
                base_port,
                ..BenchConfig::default()
            };
            let exe = std::env::current_exe().context("locating the cairn binary")?;
            println!("4 validator processes on 127.0.0.1, transfers submitted over RPC by one client");
            for r in bench::run(&cfg, dir.path(), &exe)? {
                println!("{r}");
            }
            Ok(())
        }
    }
}

fn hex8(b: &[u8; 32]) -> String {
    b[..8].iter().map(|x| format!("{x:02x}")).collect()
}
