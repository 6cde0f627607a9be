//! `cairn`: the command-line program of the Cairn messenger.

mod archive_cmd;
mod bench;
mod bench_contracts;
mod bench_e2e;
mod bench_faults;
mod bench_net_sim;
mod bench_web;
mod bridge_cmd;
mod client_cmd;
mod contract_cmd;
mod demo;
mod faults;
mod held_cmd;
mod home;
mod ledger_cmd;
mod link_cmd;
mod node_cmd;
mod selfcheck;
mod store_cmd;
mod tx_submit;
mod web_cmd;
mod web_setup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's malloc: the validators spent about a fifth of their CPU in malloc
/// and free. `cairn ledger bench` (4 validator processes), 3 runs each, alternating: saturation
/// 10.0-12.8k -> 13.6-14.6k tx/s; see ARCHITECTURE.md ("Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Cairn: decentralized, end-to-end encrypted messaging.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    /// Data directory (default: $XDG_DATA_HOME/cairn, else ~/.local/share/cairn).
    #[arg(long, global = true, env = "CAIRN_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this account's identity key and this device's key in --home.
    ///
    /// The keystore is encrypted with a passphrase read from CAIRN_PASSPHRASE or prompted.
    /// Refuses, changing nothing, if --home already holds a keystore.
    Init {
        /// Handle to claim on the ledger once the node runs (`@name`).
        #[arg(long, value_name = "NAME", conflicts_with = "link")]
        handle: Option<String>,
        /// Link this new device to an existing account with the one-time code printed by
        /// `cairn device link` there: the keystore then holds this device's key only.
        #[arg(long, value_name = "CODE")]
        link: Option<String>,
        /// With --link: the network's ledger genesis (copied to DIR/genesis.txt).
        #[arg(long, env = "CAIRN_GENESIS", value_name = "FILE", requires = "link")]
        genesis: Option<PathBuf>,
        /// With --link: a peer of the network to meet the existing device through (multiaddr
        /// with /p2p/…); repeat for several.
        #[arg(long, value_delimiter = ',', value_name = "MULTIADDR", requires = "link")]
        bootstrap: Vec<String>,
        /// With --link: seconds to wait for each answer of the existing device.
        #[arg(long, default_value_t = 120, value_name = "SECS", requires = "link")]
        link_wait: u64,
    },
    /// Print the account id, this device's id and the account fingerprint.
    Id {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Exercise identities, the wire format, the store and history verification end to end,
    /// in a temporary directory, and report every check.
    Selfcheck {
        /// Messages in the generated history.
        #[arg(long, default_value_t = 200)]
        messages: u32,
    },
    /// Run a benchmark on this machine and print its table (not a test: figures vary).
    Bench(bench::BenchArgs),
    /// The replicated ledger: local genesis, validators, status, accounts with proofs, bench.
    Ledger(ledger_cmd::LedgerArgs),
    /// Run a node with the roles asked for (user if --home holds an identity; --store,
    /// --validator) until Ctrl-C; writes DIR/run/node.json for the other commands.
    Up(node_cmd::UpArgs),
    /// A one-machine network on 127.0.0.1: N validators, a store node and this user's node.
    Dev(node_cmd::DevArgs),
    /// A real multi-process network on loopback (4 validators, 3 store nodes, 3 users) playing
    /// the whole story step by step; exit 0 only if every step was checked.
    Demo(demo::DemoArgs),
    /// Write this account's data (conversations, histories, messages, receipts, the encrypted
    /// keystore) to a passphrase-sealed archive; the node must be stopped.
    Export(archive_cmd::ExportArgs),
    /// Restore an archive written by `cairn export` into an empty --home; `cairn up` then
    /// shows its conversations (readable and verifiable; not joined again).
    Import(archive_cmd::ImportArgs),
    /// Print a one-time login link to the running node's web client (served on its API address).
    Web(web_cmd::WebArgs),
    /// Bridges to other messengers: `cairn bridge matrix` (a Matrix application service).
    Bridge(bridge_cmd::BridgeArgs),
    /// Ledger contracts: deploy code, instantiate it, execute and query instances.
    Contract(contract_cmd::ContractArgs),
    /// Pay an account (id or @handle) from this account's ledger balance.
    Pay(contract_cmd::PayArgs),
    /// The ledger balance of this account (or of another), checked against a proof.
    Balance(contract_cmd::BalanceArgs),
    /// Store nodes on the ledger: `cairn store register --store-home DIR` (this account pays),
    /// `deregister`, `list`.
    Store(store_cmd::StoreArgs),
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let home = home::resolve(cli.home);
    let result = match cli.command {
        Command::Init { link: Some(code), genesis, bootstrap, link_wait, .. } => {
            link_cmd::init_link(&home, link_cmd::InitLink { code, genesis, bootstrap, wait_secs: link_wait })
        }
        Command::Init { handle, .. } => home::init_with_handle(&home, handle.as_deref()),
        Command::Id { json } => home::print_id(&home, json),
        Command::Selfcheck { messages } => selfcheck::run(messages),
        Command::Bench(args) => bench::run(args),
        Command::Ledger(args) => ledger_cmd::run_in(&home, args),
        Command::Up(args) => node_cmd::up(&home, args),
        Command::Dev(args) => node_cmd::dev(&home, args),
        Command::Demo(args) => demo::run(args),
        Command::Web(args) => web_cmd::run(&home, args),
        Command::Export(args) => archive_cmd::export(&home, args),
        Command::Import(args) => archive_cmd::import(&home, args),
        Command::Bridge(args) => bridge_cmd::run(&home, args),
        Command::Contract(args) => contract_cmd::run(&home, args),
        Command::Pay(args) => contract_cmd::pay(&home, args),
        Command::Balance(args) => contract_cmd::balance(&home, args),
        Command::Store(args) => store_cmd::run(&home, args),
        Command::Client(cmd) => client_cmd::run(&home, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
