//! `cairn ledger …`: local genesis, running a validator, asking validators for status (directly
//! from a genesis, or through the running node), account look-ups, and the ledger bench.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_ledger::bench::{self, BenchConfig};
use cairn_ledger::genesis::{Genesis, write_key};
use cairn_ledger::process::{self, ProcessOptions};
use cairn_ledger::rpc::LedgerClient;
use cairn_node::client::{Client, ClientError};
use cairn_node::model::{AccountView, LedgerStatusView};
use clap::{Args, Subcommand};

/// The ledger subcommands.
#[derive(Debug, Args)]
pub(crate) struct LedgerArgs {
    #[command(subcommand)]
    command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Write a genesis for N validators (on 127.0.0.1, or at --addr) and one key file per
    /// validator.
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
        /// Validator i's public address IP:PORT or NAME:PORT (p2p at PORT, rpc at PORT+1),
        /// once per validator in order, instead of 127.0.0.1 (--base-port is then unused). A
        /// DNS name is resolved when used, so a validator whose address changes keeps its entry.
        #[arg(long = "addr", value_delimiter = ',', value_name = "IP:PORT|NAME:PORT")]
        addrs: Vec<String>,
        /// Chain name.
        #[arg(long, default_value = "local")]
        chain: String,
        /// Transaction fee per encoded byte, in balance units (at least 1; the fee is burned).
        #[arg(long, default_value_t = cairn_ledger::params::DEFAULT_FEE_PER_BYTE)]
        fee_per_byte: u64,
        /// Dev faucet: balance units credited to each account when it registers (0 turns the
        /// faucet off; keep it off on any network open to strangers).
        #[arg(long, default_value_t = cairn_ledger::params::DEV_FAUCET_GRANT)]
        faucet: u64,
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
        /// Listen on every interface (0.0.0.0) at this validator's genesis ports instead of
        /// its genesis address: for a validator behind NAT or named by a public DNS name.
        #[arg(long)]
        listen_any: bool,
    },
    /// Ask every validator for its finalized height and state root: those of --genesis, or
    /// without it, those the node running for --home knows.
    Status {
        /// Genesis file (default: ask the running node).
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// With --genesis: each validator's finalized block at this height instead of its tip
        /// (two digests at one height are a fork).
        #[arg(long, requires = "genesis", value_name = "HEIGHT")]
        at: Option<u64>,
    },
    /// Look up an account (id or @handle) through the running node.
    Account {
        /// Account id (`cairn1…`) or `@handle`.
        who: String,
        /// Fail unless the node verified the account's Merkle proof against a finalized,
        /// validator-signed header.
        #[arg(long)]
        proof: bool,
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
        /// Submitting clients, each on its own thread and connections (at most
        /// `cairn_ledger::bench::SUBMITTERS_MAX`).
        #[arg(long, default_value_t = cairn_ledger::bench::SUBMITTERS)]
        submitters: usize,
    },
}

/// The (p2p, rpc) addresses of `--addr` (empty: none given), one per validator: IP:PORT or
/// NAME:PORT, the rpc listener at PORT+1 of the same host.
fn validator_addrs(
    addrs: &[String],
    validators: usize,
) -> anyhow::Result<Vec<(cairn_ledger::endpoint::Endpoint, cairn_ledger::endpoint::Endpoint)>> {
    if !addrs.is_empty() && addrs.len() != validators {
        bail!(
            "--addr given {} times for {validators} validators: give one IP:PORT per validator",
            addrs.len()
        );
    }
    addrs
        .iter()
        .map(|a| {
            let p2p: cairn_ledger::endpoint::Endpoint = a.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--addr: {e}; e.g. 203.0.113.7:26100, [2001:db8::7]:26100 or ledger.example.org:26100"
                )
            })?;
            let rpc_port = p2p
                .port()
                .checked_add(1)
                .ok_or_else(|| anyhow::anyhow!("--addr {a}: the rpc port PORT+1 must be below 65536"))?;
            let rpc = p2p.with_port(rpc_port);
            Ok((p2p, rpc))
        })
        .collect()
}

/// Runs a ledger command; `home` is the resolved --home (used by `status` without --genesis
/// and by `account`).
pub(crate) fn run_in(home: &Path, args: LedgerArgs) -> anyhow::Result<()> {
    match args.command {
        LedgerCommand::Genesis { validators, out, base_port, chain, fee_per_byte, faucet, addrs } => {
            if validators == 0 {
                bail!("--validators must be at least 1 (use 4 to tolerate one faulty validator)");
            }
            let addrs = validator_addrs(&addrs, validators)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let gpath = out.join("genesis.txt");
            if gpath.exists() {
                bail!("{} already exists; choose another --out", gpath.display());
            }
            let (mut genesis, keys) = Genesis::local(&chain, validators, base_port, Vec::new())?;
            for (v, (p2p, rpc)) in genesis.validators.iter_mut().zip(addrs) {
                (v.p2p, v.rpc) = (p2p, rpc);
            }
            genesis.params.fee_per_byte = fee_per_byte;
            genesis.params.faucet = faucet;
            genesis.params.check().map_err(|e| anyhow::anyhow!("--fee-per-byte / --faucet: {e}"))?;
            for (i, k) in keys.iter().enumerate() {
                write_key(&out.join(format!("validator-{i}.key")), k)?;
            }
            std::fs::write(&gpath, genesis.to_text())
                .with_context(|| format!("writing {}", gpath.display()))?;
            println!("wrote {} and {validators} key files (validator-<i>.key)", gpath.display());
            Ok(())
        }
        LedgerCommand::Validator { genesis, key, data, listen_any } => {
            std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
            let opts = ProcessOptions { listen_any, ..ProcessOptions::new(&genesis, &key, &data) };
            process::run(opts, |_| {})?;
            Ok(())
        }
        LedgerCommand::Account { who, proof } => run_account(home, &who, proof),
        LedgerCommand::Status { genesis: None, .. } => {
            if status_via_node(home)? {
                return Ok(());
            }
            let h = home.display();
            bail!(
                "no --genesis given and no node running for --home {h}: pass --genesis FILE, or start a \
                 node with `cairn up --home {h}` (or `cairn dev`)"
            )
        }
        LedgerCommand::Status { genesis: Some(genesis), at: Some(height) } => {
            let g = Genesis::load(&genesis)?;
            let mut client = LedgerClient::new(&g)?;
            for i in 0..client.validators() {
                match client.block_at(i, height) {
                    Ok(Some((b, _))) => println!(
                        "validator {i}: height={height} digest={} root={}",
                        hex8(&b.header.digest()),
                        hex8(&b.header.state_root)
                    ),
                    Ok(None) => println!("validator {i}: height {height} not finalized there yet"),
                    Err(e) => println!("validator {i}: unreachable ({e})"),
                }
            }
            Ok(())
        }
        LedgerCommand::Status { genesis: Some(genesis), at: None } => {
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
        LedgerCommand::Bench { txs, rate, seconds, base_port, submitters } => {
            let dir = tempfile::tempdir()?;
            let cfg = BenchConfig {
                saturation_txs: txs,
                fixed_rate: rate,
                fixed_duration: Duration::from_secs(seconds),
                base_port,
                submitters: submitters.clamp(1, bench::SUBMITTERS_MAX),
                ..BenchConfig::default()
            };
            let exe = std::env::current_exe().context("locating the cairn binary")?;
            println!(
                "4 validator processes on 127.0.0.1, fee-paying transfers (genesis-funded accounts, fee {} \
                 units/byte, no faucet) submitted over RPC by {} clients, finality observed by another",
                cairn_ledger::params::Params::default().fee_per_byte,
                cfg.submitters
            );
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

/// `cairn ledger account <id|@handle> [--proof]`: with `--proof`, fails unless the node
/// checked the account's Merkle proof against a finalized, validator-signed header.
fn run_account(home: &Path, who: &str, proof: bool) -> anyhow::Result<()> {
    let a = Client::for_home(home)?.account(who)?;
    print!("{}", account_text(&a));
    if !proof {
        if a.proof_verified {
            println!("(the node checked the proof against the finalized header at height {})", a.height);
        }
        return Ok(());
    }
    // Client-side: this process checks the proof itself, trusting only the genesis (the
    // validator set), not the node nor the validator that serves the proof.
    let Some(gpath) =
        [home.join("genesis.txt"), home.join("dev/chain/genesis.txt")].into_iter().find(|p| p.exists())
    else {
        bail!(
            "no genesis in {h} (genesis.txt or dev/chain/genesis.txt) to check the proof against: copy the \
             network's genesis there",
            h = home.display()
        );
    };
    let genesis = Genesis::load(&gpath)?;
    let mut client = LedgerClient::new(&genesis)?;
    let id = cairn_proto::AccountId::from_text(&a.account).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proven = client
        .account(&id)
        .with_context(|| format!("checking the proof for {who} against {}", gpath.display()))?
        .with_context(|| format!("the ledger proves that {} is not registered", a.account))?;
    let devices: Vec<String> = proven.active_devices().iter().map(cairn_proto::DeviceId::to_text).collect();
    if devices != a.devices || proven.handle != a.handle {
        bail!("the node's answer differs from the proven ledger state: do not trust this node");
    }
    if let Some(h) = &a.handle {
        let owner = client.handle_owner(h)?;
        if owner != Some(id) {
            bail!("the ledger does not prove that @{h} belongs to {}", a.account);
        }
    }
    println!(
        "proof verified here: Merkle proof against a finalized header signed by a quorum of the {} validators in {}",
        genesis.validators.len(),
        gpath.display()
    );
    Ok(())
}

fn account_text(a: &AccountView) -> String {
    let mut out = format!(
        "account  {}\nhandle   {}\n",
        a.account,
        a.handle.as_ref().map(|h| format!("@{h}")).unwrap_or_else(|| "(none)".into())
    );
    if a.devices.is_empty() {
        out.push_str("devices  (none active)\n");
    }
    for d in &a.devices {
        out.push_str(&format!("device   {d}\n"));
    }
    out
}

/// `cairn ledger status` through the node of `home`. `Ok(false)` when no node runs there.
fn status_via_node(home: &Path) -> anyhow::Result<bool> {
    let c = match Client::for_home(home) {
        Ok(c) => c,
        Err(ClientError::NoNode { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let s = c.ledger_status()?;
    print!("{}", ledger_status_text(&s));
    if s.validators.iter().all(|v| v.height.is_none()) {
        bail!("no validator answered the node; check that the validators are running");
    }
    Ok(true)
}

fn ledger_status_text(s: &LedgerStatusView) -> String {
    let mut out = format!("chain {}\n", s.chain);
    for (i, v) in s.validators.iter().enumerate() {
        match v.height {
            Some(h) => out.push_str(&format!(
                "validator {i} ({}): height={h} root={}\n",
                v.rpc,
                v.state_root
                    .as_deref()
                    .map(|r| r.chars().take(16).collect::<String>())
                    .unwrap_or_else(|| "?".into())
            )),
            None => out.push_str(&format!(
                "validator {i} ({}): unreachable ({})\n",
                v.rpc,
                v.error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    out
}
