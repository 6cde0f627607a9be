//! Memory bench: drives one validator's ledger core (mempool admission with signature checks,
//! proposal, execution, finalization into the on-disk chain store — the same code a validator
//! runs, without consensus and networking) through many fee-paying transactions, and samples
//! the process's resident memory (`VmRSS`) as the chain grows. A single-process driver because
//! a 4-process run of a million transactions takes far too long on a 2-core machine; consensus
//! adds no per-transaction memory of its own (marshal's archives are on disk too).
//!
//! Not a test: the figures depend on the machine and allocator.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

use crate::chain_store::ChainStore;
use crate::core::{Ledger, MempoolLimits, OpenError};
use crate::genesis::Genesis;
use crate::params::Params;
use crate::tx::{Tx, TxBody};

/// Bench parameters.
#[derive(Clone, Debug)]
pub struct RssConfig {
    /// Transactions to finalize in total.
    pub txs: u64,
    /// Transactions per block.
    pub per_block: usize,
    /// Signing accounts (funded in genesis); each also sequences handshakes on its own topic.
    pub accounts: usize,
    /// Print a sample every this many transactions.
    pub sample_every: u64,
}

impl Default for RssConfig {
    fn default() -> Self {
        Self { txs: 1_000_000, per_block: 4000, accounts: 1000, sample_every: 100_000 }
    }
}

/// One sample.
#[derive(Clone, Copy, Debug)]
pub struct RssSample {
    /// Finalized transactions so far.
    pub txs: u64,
    /// Finalized height.
    pub height: u64,
    /// Resident memory, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident memory so far, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Size of the chain store file, bytes.
    pub store_bytes: u64,
    /// Seconds since the start.
    pub secs: f64,
}

/// Reads a `kB` field of `/proc/self/status` (0 where there is none, e.g. not Linux).
pub fn proc_status_kib(field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn bench_keys(accounts: usize) -> Vec<SigningKey> {
    (0..accounts)
        .map(|i| {
            let mut seed = [0x5A; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect()
}

/// The bench chain's genesis: fixed validator keys, `ids` funded, production fees.
fn bench_genesis(ids: &[AccountId]) -> Genesis {
    use commonware_cryptography::Signer as _;
    let validators = (0..4u16)
        .map(|i| crate::genesis::ValidatorInfo {
            key: commonware_cryptography::ed25519::PrivateKey::from_seed(u64::from(i)).public_key(),
            p2p: std::net::SocketAddr::from(([127, 0, 0, 1], 1 + 2 * i)).into(),
            rpc: std::net::SocketAddr::from(([127, 0, 0, 1], 2 + 2 * i)).into(),
        })
        .collect();
    Genesis {
        chain: "rss-bench".into(),
        validators,
        accounts: ids.iter().map(|a| (*a, u64::MAX / 4 / ids.len().max(1) as u64)).collect(),
        // the least topic work: the bench measures memory, and at the default work mining its
        // 500,000 handshakes took the run's time (100,000 transactions in 380 s)
        params: Params { topic_work_per_byte: 1, ..Params::default() },
    }
}

/// Reopens a bench chain store left in `dir` (e.g. by a killed run with `accounts` accounts):
/// the finalized height reached and the seconds the reopen took (redb's recovery after an
/// unclean shutdown, then the state tree's rebuild).
pub fn reopen(dir: &Path, accounts: usize) -> Result<(u64, f64), OpenError> {
    let ids: Vec<AccountId> =
        bench_keys(accounts).iter().map(|k| AccountId(k.verifying_key().to_bytes())).collect();
    let t0 = Instant::now();
    let store = ChainStore::open(&dir.join("ledger-chain.redb"))?;
    let l = Ledger::open(&bench_genesis(&ids), MempoolLimits::default(), store)?;
    Ok((l.status().height, t0.elapsed().as_secs_f64()))
}

/// Runs the bench with its chain store in `dir`, calling `report` with each sample (the first
/// at genesis). The last sample is taken after reopening the store (a restart): its `secs` is
/// the time the reopen took.
pub fn run(
    cfg: &RssConfig,
    dir: &Path,
    mut report: impl FnMut(&RssSample),
) -> Result<Vec<RssSample>, OpenError> {
    let keys = bench_keys(cfg.accounts);
    let ids: Vec<AccountId> = keys.iter().map(|k| AccountId(k.verifying_key().to_bytes())).collect();
    let genesis = bench_genesis(&ids);
    let chain = genesis.chain_id();
    let path = dir.join("ledger-chain.redb");
    let ledger = Ledger::open(&genesis, MempoolLimits::default(), ChainStore::open(&path)?)?;
    let mut nonces = vec![0u64; cfg.accounts];
    let mut seqs = vec![0u64; cfg.accounts];
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut sample = |ledger: &Ledger, txs: u64| {
        let s = RssSample {
            txs,
            height: ledger.status().height,
            rss_kib: proc_status_kib("VmRSS"),
            hwm_kib: proc_status_kib("VmHWM"),
            store_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            secs: start.elapsed().as_secs_f64(),
        };
        report(&s);
        samples.push(s);
    };
    sample(&ledger, 0);
    let mut done = 0u64;
    let mut next_sample = cfg.sample_every;
    let mut turn = 0usize;
    let params = ledger.params();
    while done < cfg.txs {
        let n = cfg.per_block.min((cfg.txs - done) as usize);
        // half transfers, half handshakes on the signer's own topic (64-byte payloads)
        let batch: Vec<Vec<u8>> = (0..n)
            .map(|j| {
                let a = (turn + j) % cfg.accounts;
                if (turn / cfg.accounts + j).is_multiple_of(2) {
                    let body = TxBody::Transfer { to: ids[(a + 1) % cfg.accounts], amount: 1 };
                    let t = Tx::sign(chain, ids[a], &keys[a], nonces[a], body).encode();
                    nonces[a] += 1;
                    t
                } else {
                    let mut conv = [0u8; 32];
                    conv[..8].copy_from_slice(&(a as u64).to_le_bytes());
                    let after = seqs[a];
                    seqs[a] += 1;
                    crate::tx::TopicTx::handshake_as_founder(&conv, &chain, after, vec![0xAB; 64])
                        .mined(&params)
                }
            })
            .collect();
        turn += n;
        for r in ledger.submit_batch(batch) {
            r.map_err(|e| OpenError::Replay {
                height: 0,
                reason: format!("bench transaction refused: {e}"),
            })?;
        }
        let s = ledger.status();
        let p = ledger
            .propose(&s.digest, s.height)
            .map_err(|e| OpenError::Replay { height: s.height + 1, reason: e.to_string() })?
            .ok_or_else(|| OpenError::Replay { height: s.height + 1, reason: "no proposal".into() })?;
        let included = p.block.txs.len() as u64;
        ledger.finalize(Arc::new(p.block));
        if ledger.status().height != s.height + 1 || included != n as u64 {
            return Err(OpenError::Replay {
                height: s.height + 1,
                reason: format!("block not finalized ({included}/{n} txs; faults {:?})", ledger.faults()),
            });
        }
        done += included;
        if done >= next_sample || done >= cfg.txs {
            sample(&ledger, done);
            next_sample += cfg.sample_every;
        }
    }
    // a restart: reopen the store and rebuild the state tree from it
    let tip = ledger.status();
    drop(ledger);
    let t0 = Instant::now();
    let reopened = Ledger::open(&genesis, MempoolLimits::default(), ChainStore::open(&path)?)?;
    let reopen_secs = t0.elapsed().as_secs_f64();
    let again = reopened.status();
    if (again.height, again.digest, again.state_root) != (tip.height, tip.digest, tip.state_root) {
        return Err(OpenError::Replay { height: again.height, reason: "reopened at another tip".into() });
    }
    let s = RssSample {
        txs: done,
        height: again.height,
        rss_kib: proc_status_kib("VmRSS"),
        hwm_kib: proc_status_kib("VmHWM"),
        store_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        secs: reopen_secs,
    };
    report(&s);
    samples.push(s);
    Ok(samples)
}
