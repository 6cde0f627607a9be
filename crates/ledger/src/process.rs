//! Running a validator for real: commonware's tokio runtime, its authenticated p2p (lookup
//! variant: fixed validator addresses from the genesis), persistent storage in a data
//! directory, and the client RPC server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use commonware_cryptography::{ChaCha20Poly1305, Signer as _, ed25519};
use commonware_p2p::authenticated::lookup;
use commonware_p2p::{Address, AddressableManager as _};
use commonware_runtime::{Clock as _, Quota, Runner as _, Spawner as _, Supervisor as _, tokio as cw_tokio};
use commonware_stream::cups::{self, Cups};
use commonware_stream::sake::{self, Sake};
use commonware_utils::ordered::Map;
use commonware_utils::{NZU32, NZUsize};
use thiserror::Error;

use crate::chain_store::{ChainStore, ChainStoreError};
use crate::core::Ledger;
use crate::genesis::{Genesis, GenesisError, P2P_NAMESPACE, public_key_hex, read_key};
use crate::validator::{self, Behaviour, Timeouts, ValidatorError, channel};

/// Why a validator process stopped.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// Genesis or key file problem.
    #[error(transparent)]
    Genesis(#[from] GenesisError),
    /// The validator could not start.
    #[error(transparent)]
    Validator(#[from] ValidatorError),
    /// The key is not in the genesis.
    #[error("key {0} is not a validator of this genesis")]
    NotAValidator(String),
    /// The RPC listener could not bind.
    #[error("rpc listener {addr}: {source}")]
    Rpc {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The validator set is unusable for p2p.
    #[error("bad peer set: {0}")]
    Peers(String),
    /// A validator's address (a DNS name) does not resolve.
    #[error(
        "{what} address {endpoint} does not resolve ({source}); check the name in the genesis and this machine's DNS"
    )]
    Resolve {
        /// Which address.
        what: String,
        /// As the genesis names it.
        endpoint: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The data directory or the ledger's chain store could not be opened.
    #[error("data directory {path}: {reason}")]
    Data {
        /// The data directory.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

/// How far apart two validators' wall clocks may be and still connect: the validator p2p
/// handshake (commonware `Sake`) refuses a timestamp further in the future than this, and one
/// older than this plus [`HANDSHAKE_TIME_MAX`]. Clocks ±2 minutes off true time are 4 minutes
/// apart at worst. Consensus itself runs on local timers. The cost: a captured handshake
/// message can be replayed for this long, and a replay still cannot finish the handshake (it
/// needs the ephemeral key), so it costs the validator one failed attempt, as a stranger's can.
pub const CLOCK_SKEW_TOLERATED: Duration = Duration::from_secs(4 * 60 + 10);
/// A handshake's own time on the wire, at most.
pub const HANDSHAKE_TIME_MAX: Duration = Duration::from_secs(10);

/// File name of the ledger's chain store in a validator's data directory.
pub const CHAIN_STORE_FILE: &str = "ledger-chain.redb";

/// Options of a validator process.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// Genesis file.
    pub genesis: PathBuf,
    /// Validator key file.
    pub key: PathBuf,
    /// Data directory (blocks, consensus journal, the chain store [`CHAIN_STORE_FILE`]).
    pub data: PathBuf,
    /// Consensus timing.
    pub timeouts: Timeouts,
    /// Print a status line this often (`None`: quiet).
    pub status_every: Option<Duration>,
    /// Worker threads for the runtime.
    pub threads: usize,
    /// Listen on every interface at the genesis ports (`0.0.0.0`), not on the genesis
    /// address: for a validator behind NAT, whose public address is on no local interface.
    pub listen_any: bool,
}

impl ProcessOptions {
    /// Defaults for `genesis`, `key`, `data`.
    pub fn new(genesis: &Path, key: &Path, data: &Path) -> Self {
        Self {
            genesis: genesis.to_owned(),
            key: key.to_owned(),
            data: data.to_owned(),
            timeouts: Timeouts::default(),
            status_every: Some(Duration::from_secs(1)),
            threads: 2,
            listen_any: false,
        }
    }
}

/// Runs one validator until the process is killed (blocking). `on_start` is called with the
/// ledger handle once the validator is running (used by in-process benches).
pub fn run(opts: ProcessOptions, on_start: impl FnOnce(Ledger) + Send + 'static) -> Result<(), ProcessError> {
    let genesis = Genesis::load(&opts.genesis)?;
    let key = read_key(&opts.key)?;
    let me = key.public_key();
    let Some(info) = genesis.validators.iter().find(|v| v.key == me).cloned() else {
        return Err(ProcessError::NotAValidator(public_key_hex(&me)));
    };
    let participants = genesis.participants()?;
    // Peers named by DNS are resolved here (each must resolve to start), then again every
    // `RESOLVE_EVERY` by `spawn_resolver`: a validator whose name moves to another IP is
    // dialled there, and its inbound connections accepted from there, without a restart.
    let mut known: Vec<(ed25519::PublicKey, std::net::SocketAddr)> =
        Vec::with_capacity(genesis.validators.len());
    for v in &genesis.validators {
        let addr = v.p2p.resolve().map_err(|source| ProcessError::Resolve {
            what: format!("validator {}'s p2p", public_key_hex(&v.key)),
            endpoint: v.p2p.to_string(),
            source,
        })?;
        known.push((v.key.clone(), addr));
    }
    let peers = peer_map(&known)?;
    let endpoints: Vec<crate::endpoint::Endpoint> =
        genesis.validators.iter().map(|v| v.p2p.clone()).collect();
    let n = u32::try_from(genesis.validators.len()).unwrap_or(u32::MAX);
    // Bind the RPC listener first so a port conflict is reported before consensus starts.
    let resolve_own = |what: &str, e: &crate::endpoint::Endpoint| {
        e.bind_address(opts.listen_any).map_err(|source| ProcessError::Resolve {
            what: format!("this validator's {what}"),
            endpoint: e.to_string(),
            source,
        })
    };
    let rpc_addr = resolve_own("rpc", &info.rpc)?;
    let p2p_listen = resolve_own("p2p", &info.p2p)?;
    let rpc = std::net::TcpListener::bind(rpc_addr)
        .map_err(|source| ProcessError::Rpc { addr: rpc_addr, source })?;
    // The RPC channel's Noise identity, derived from the validator key (nothing more to store).
    let rpc_id = crate::rpc::RpcIdentity::new(&key, genesis.chain_id())
        .map_err(|e| ProcessError::Rpc { addr: rpc_addr, source: std::io::Error::other(e) })?;
    let data_err = |reason: String| ProcessError::Data { path: opts.data.clone(), reason };
    std::fs::create_dir_all(&opts.data).map_err(|e| data_err(e.to_string()))?;
    let store = ChainStore::open(&opts.data.join(CHAIN_STORE_FILE))
        .map_err(|e: ChainStoreError| data_err(e.to_string()))?;

    let cfg = cw_tokio::Config::new()
        .with_storage_directory(opts.data.clone())
        .with_worker_threads(opts.threads.max(1))
        .with_catch_panics(false);
    let runner = cw_tokio::Runner::new(cfg);
    runner.start(move |ctx| async move {
        let handshake = Cups::<_, ChaCha20Poly1305>::new(
            Sake {
                signer: key.clone(),
                synchrony_bound: CLOCK_SKEW_TOLERATED,
                max_handshake_age: CLOCK_SKEW_TOLERATED + HANDSHAKE_TIME_MAX,
                version: sake::Version::V1,
            },
            cups::Version::V1,
        );
        let max_peers = commonware_p2p::authenticated::peer_set_limit(participants.iter(), &me);
        let p2p_cfg = lookup::Config::local(
            handshake,
            P2P_NAMESPACE,
            p2p_listen,
            max_peers,
            validator::max_message_size(n),
            NZUsize!(4096),
        );
        let (mut network, mut oracle) = lookup::Network::new(ctx.child("network"), p2p_cfg);
        let _ = oracle.track(0, peers);
        if endpoints.iter().any(|e| matches!(e, crate::endpoint::Endpoint::Name { .. })) {
            spawn_resolver(endpoints, known, oracle.clone());
        }
        // commonware-p2p preallocates every channel's mailbox at `peers × burst` slots: a
        // burst equal to the per-second rate (`Quota::per_second` alone) made each validator
        // touch ~4 GiB at start-up and took 20–40 s on a loaded machine. The rate stays high;
        // the burst is what a peer may queue at once.
        let quota = Quota::per_second(NZU32!(100_000)).allow_burst(NZU32!(1024));
        let channels: Vec<_> = channel::ALL.iter().map(|c| network.register(*c, quota)).collect();
        let _net = network.start();
        let running = match validator::start(
            ctx.child("validator"),
            &genesis,
            key,
            "ledger",
            store,
            opts.timeouts,
            Behaviour::Honest,
            crate::app::Finalizing::Thread,
            oracle.clone(),
            oracle,
            channels,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("validator failed to start: {e}");
                std::process::exit(1);
            }
        };
        let ledger = running.ledger.clone();
        if let Some(policy) = admission_policy_from_env() {
            ledger.set_admission_policy(policy);
        }
        if let Some(n) = std::env::var(PROPOSAL_TXS_ENV).ok().and_then(|v| v.trim().parse().ok()) {
            ledger.set_proposal_txs_max(n);
        }
        let serve_ledger = ledger.clone();
        std::thread::spawn(move || crate::rpc::serve(rpc, serve_ledger, rpc_id));
        on_start(ledger.clone());
        if let Some(every) = opts.status_every {
            let l = ledger.clone();
            ctx.child("status").spawn(move |ctx| async move {
                loop {
                    ctx.sleep(every).await;
                    let s = l.status();
                    println!(
                        "height={} digest={} root={} mempool={}",
                        s.height,
                        hex::encode(&s.digest[..8]),
                        hex::encode(&s.state_root[..8]),
                        s.mempool
                    );
                }
            });
        }
        let _ = running.engine.await;
    });
    Ok(())
}

/// Environment variable overriding how admission gives way to block work, as
/// `<yield ms>,<concurrent batches>,<rpc nice>` (`0,0,0`: as before the policy); for A/B
/// measurements of [`crate::core::AdmissionPolicy`] with one binary. Unset or unreadable: the
/// defaults.
pub const ADMISSION_ENV: &str = "CAIRN_LEDGER_ADMISSION";

/// Environment variable capping the transactions of this validator's proposals (a number;
/// unset or unreadable: [`crate::block::BLOCK_TXS_MAX`]), for A/B measurements with one binary.
pub const PROPOSAL_TXS_ENV: &str = "CAIRN_LEDGER_PROPOSAL_TXS";

fn admission_policy_from_env() -> Option<crate::core::AdmissionPolicy> {
    let v = std::env::var(ADMISSION_ENV).ok()?;
    let mut parts = v.split(',').map(str::trim);
    let policy = crate::core::AdmissionPolicy {
        yield_ms_max: parts.next()?.parse().ok()?,
        concurrent_max: parts.next()?.parse().ok()?,
        rpc_nice: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(policy)
}

/// How often a validator resolves its peers' p2p names again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(60);

fn peer_map(
    known: &[(ed25519::PublicKey, std::net::SocketAddr)],
) -> Result<Map<ed25519::PublicKey, Address>, ProcessError> {
    let peers: Vec<(ed25519::PublicKey, Address)> =
        known.iter().map(|(k, a)| (k.clone(), Address::from(*a))).collect();
    Map::try_from(peers).map_err(|e| ProcessError::Peers(format!("{e:?}")))
}

/// The peers (by index) whose address resolved now differs from the known one. A name that
/// does not resolve now keeps its last address: a DNS outage never drops a validator.
fn moved(
    known: &[std::net::SocketAddr],
    now: &[Option<std::net::SocketAddr>],
) -> Vec<(usize, std::net::SocketAddr)> {
    known
        .iter()
        .zip(now)
        .enumerate()
        .filter_map(|(i, (old, new))| new.filter(|n| n != old).map(|n| (i, n)))
        .collect()
}

/// Resolves the peers' names every [`RESOLVE_EVERY`] on its own thread (resolution blocks)
/// and tells the p2p layer of each moved peer: its connection on the old IP is cut, it is
/// dialled at the new address, and inbound connections are accepted from the new IP only.
/// The thread ends when the p2p layer has stopped.
fn spawn_resolver(
    endpoints: Vec<crate::endpoint::Endpoint>,
    mut known: Vec<(ed25519::PublicKey, std::net::SocketAddr)>,
    mut oracle: lookup::Oracle<ed25519::PublicKey>,
) {
    let spawned = std::thread::Builder::new().name("cairn-resolve".into()).spawn(move || {
        loop {
            std::thread::sleep(RESOLVE_EVERY);
            let now: Vec<Option<std::net::SocketAddr>> = endpoints.iter().map(|e| e.resolve().ok()).collect();
            let addrs: Vec<std::net::SocketAddr> = known.iter().map(|(_, a)| *a).collect();
            let changed = moved(&addrs, &now);
            if changed.is_empty() {
                continue;
            }
            for (i, addr) in changed {
                tracing::info!(
                    "validator {} ({}) moved to {addr}",
                    public_key_hex(&known[i].0),
                    endpoints[i]
                );
                known[i].1 = addr;
            }
            let Ok(map) = peer_map(&known) else { continue };
            if matches!(oracle.overwrite(map), commonware_actor::Feedback::Closed) {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(
            "peer names will not be resolved again (no thread: {e}); restart to follow a moved validator"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_peers_resolving_elsewhere_move_and_an_outage_keeps_the_last_address() {
        let a: std::net::SocketAddr = "10.0.0.1:9000".parse().unwrap_or_else(|_| unreachable!());
        let b: std::net::SocketAddr = "10.0.0.2:9000".parse().unwrap_or_else(|_| unreachable!());
        let c: std::net::SocketAddr = "10.0.0.9:9000".parse().unwrap_or_else(|_| unreachable!());
        assert!(moved(&[a, b], &[Some(a), Some(b)]).is_empty(), "nothing moved");
        assert!(moved(&[a, b], &[None, None]).is_empty(), "names that do not resolve keep their address");
        assert_eq!(moved(&[a, b], &[Some(a), Some(c)]), vec![(1, c)]);
        assert_eq!(moved(&[a, b], &[None, Some(c)]), vec![(1, c)]);
    }
}
