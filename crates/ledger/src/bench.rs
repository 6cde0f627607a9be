//! Throughput / latency bench: 4 validators on loopback (each a full validator: tokio runtime,
//! authenticated p2p, simplex + marshal, persistent storage, RPC), in this process; a client
//! submits fee-paying transfers over the RPC at saturation and at a fixed rate and follows
//! finalized blocks. The bench accounts are funded in genesis, the faucet is off, and fees are
//! the production default ([`Params::default`]). Not a test: figures depend on the machine.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;
use thiserror::Error;

use crate::genesis::{Genesis, GenesisError, write_key};
use crate::mempool::NONCE_WINDOW;
use crate::params::Params;
use crate::rpc::{ClientError, Follower, LedgerClient};
use crate::tx::{Tx, TxBody, TxId};

/// Genesis balance of each bench account, in balance units (about 470,000 transfers' fees at
/// the default fee).
pub const BENCH_FUNDS: u64 = 1_000_000_000;

/// Bench parameters.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Validators (4 for the figure).
    pub validators: usize,
    /// First port (p2p and rpc ports follow).
    pub base_port: u16,
    /// Transactions in the saturation run.
    pub saturation_txs: usize,
    /// Offered rate of the fixed-rate run (tx/s).
    pub fixed_rate: usize,
    /// Duration of the fixed-rate run.
    pub fixed_duration: Duration,
    /// Submitting clients (1..=[`SUBMITTERS_MAX`]).
    pub submitters: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            validators: 4,
            base_port: 27100,
            saturation_txs: 20_000,
            fixed_rate: 2_000,
            fixed_duration: Duration::from_secs(10),
            submitters: SUBMITTERS,
        }
    }
}

/// Figures of one run.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Label.
    pub name: String,
    /// Offered transactions.
    pub offered: usize,
    /// Rate at which the client managed to submit (offered ÷ time of the last submission): below
    /// the offered rate when the client or the validators' admission falls behind.
    pub submit_rate: f64,
    /// Accepted into at least one validator's mempool.
    pub accepted: usize,
    /// Validator refusals by reason (one per validator that refused), and failed calls.
    pub refusals: Vec<(String, usize)>,
    /// Submission calls to a validator that failed (timeout, connection).
    pub failed_calls: usize,
    /// Finalized transactions.
    pub finalized: usize,
    /// Sustained finalized tx/s (first submission to last finalization): below the offered
    /// rate by the last transactions' latency even when the chain keeps up.
    pub tps: f64,
    /// Finalized tx/s while the load is on (see [`steady_rate`]); `None` for a run whose
    /// submissions took under [`STEADY_SPAN_MIN_S`] (the saturation run).
    pub steady_tps: Option<f64>,
    /// Finality latency percentiles, ms (submission to observed finalization).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Estimated share of the validators' CPU time spent verifying transaction signatures
    /// (finalized txs × validators × measured cost of one verification ÷ validator CPU).
    pub sig_cpu_share: f64,
    /// CPU seconds used by the validator processes during the run.
    pub cpu_s: f64,
    /// Finalized blocks during the run.
    pub blocks: u64,
    /// Fees the finalized transactions paid (burned), in balance units.
    pub fees: u64,
    /// Largest resident memory (`VmRSS`) of a validator process at the end of the run, KiB.
    pub validator_rss_kib: u64,
    /// For transactions that did not finalize (a sample): how the validators see them, as
    /// `(status at each validator, count)`.
    pub stuck: Vec<(String, usize)>,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<12} offered {:>6} (submitted at {:>6.0}/s)  accepted {:>6}  finalized {:>6}  {:>8.0} tx/s (steady {})  p50 {:>6.0} ms  p99 {:>6.0} ms  blocks {:>4}  cpu {:>5.1} s  sig-verify {:>4.1}% of cpu  fees {}  validator rss {:.0} MiB",
            self.name,
            self.offered,
            self.submit_rate,
            self.accepted,
            self.finalized,
            self.tps,
            self.steady_tps.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
            self.p50_ms,
            self.p99_ms,
            self.blocks,
            self.cpu_s,
            self.sig_cpu_share * 100.0,
            self.fees,
            self.validator_rss_kib as f64 / 1024.0
        )?;
        if !self.stuck.is_empty() {
            write!(f, "\n             not finalized (sampled, status per validator): {:?}", self.stuck)?;
        }
        if self.failed_calls > 0 || !self.refusals.is_empty() {
            write!(
                f,
                "\n             failed validator calls {}; refusals {:?}",
                self.failed_calls, self.refusals
            )?;
        }
        Ok(())
    }
}

/// Why the bench failed.
#[derive(Debug, Error)]
pub enum BenchError {
    /// Setup.
    #[error(transparent)]
    Genesis(#[from] GenesisError),
    /// Client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster did not come up.
    #[error("validators did not start finalizing")]
    NoProgress,
}

/// Kills the validator processes when dropped.
struct Cluster {
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    fn cpu_seconds(&self) -> f64 {
        self.children.iter().map(|c| process_cpu_seconds(&format!("/proc/{}/stat", c.id()))).sum()
    }

    /// Largest `VmRSS` of the validator processes, KiB.
    fn rss_kib(&self) -> u64 {
        self.children
            .iter()
            .map(|c| {
                let s = std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

/// CPU time (user + system) in seconds of the process whose `stat` file is `path`.
pub fn process_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else { return 0.0 };
    let Some(rest) = stat.rsplit(')').next() else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after the command: state(0) ... utime(11) stime(12)
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Shortest submission span (seconds) for which [`steady_rate`] is reported.
pub const STEADY_SPAN_MIN_S: f64 = 2.0;

/// Finalized transactions per second in the middle of a run's submission span (10% to 90% of
/// `span_s` after the first submission), given each one's finalization time in seconds after
/// the first submission: the rate the chain keeps while the load is on, which equals the
/// offered rate when it keeps up (the whole-run rate is lower by the last transactions'
/// latency). Measured between the first and the last finalization instants in that window
/// (the transactions final after the first, over the time between them), so blocks of
/// thousands do not make it jump by a block at either edge. `None` when the span is under
/// [`STEADY_SPAN_MIN_S`] or the window holds fewer than two finalization instants.
pub fn steady_rate(finalized_at_s: &[f64], span_s: f64) -> Option<f64> {
    if span_s.is_nan() || span_s < STEADY_SPAN_MIN_S {
        return None;
    }
    let (from, to) = (span_s * 0.1, span_s * 0.9);
    let inside: Vec<f64> = finalized_at_s.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    let first = inside.iter().copied().reduce(f64::min)?;
    let last = inside.iter().copied().reduce(f64::max)?;
    if last <= first {
        return None;
    }
    let n = inside.iter().filter(|t| **t > first).count();
    Some(n as f64 / (last - first))
}

/// The `p` quantile (0..=1) of ascending `sorted` values, nearest rank; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Fee-paying bench accounts with fixed keys, each signing with its next nonce (fund `ids`
/// in the bench's genesis).
pub struct Users {
    keys: Vec<SigningKey>,
    /// The accounts.
    pub ids: Vec<AccountId>,
    nonces: Vec<u64>,
}

impl Users {
    /// `n` accounts.
    pub fn new(n: usize) -> Self {
        let keys: Vec<SigningKey> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                seed[8] = 0xBE;
                SigningKey::from_bytes(&seed)
            })
            .collect();
        let ids = keys.iter().map(|k| AccountId(k.verifying_key().to_bytes())).collect();
        Self { keys, ids, nonces: vec![0; n] }
    }

    /// The next nonce of account `i`.
    pub fn next_nonce(&self, i: usize) -> u64 {
        self.nonces[i]
    }

    /// Signs `body` with account `i`'s next nonce.
    pub fn sign(&mut self, chain: [u8; 32], i: usize, body: TxBody) -> Vec<u8> {
        let nonce = self.nonces[i];
        self.nonces[i] += 1;
        Tx::sign(chain, self.ids[i], &self.keys[i], nonce, body).encode()
    }

    /// `count` signed transfers, round-robin over users.
    fn transfers(&mut self, chain: [u8; 32], count: usize, start: usize) -> Vec<Vec<u8>> {
        let n = self.keys.len();
        (0..count)
            .map(|k| {
                let i = (start + k) % n;
                let to = self.ids[(i + 1) % n];
                self.sign(chain, i, TxBody::Transfer { to, amount: 1 })
            })
            .collect()
    }
}

/// Finalized blocks the follower thread may have observed and the submitter not yet counted
/// (the follower waits when it is this far ahead).
const OBSERVED_BLOCKS_MAX: usize = 4096;

/// One finalized block as the follower saw it: when, and its transactions.
type Observed = (Instant, Vec<TxId>);

/// Follows finalized blocks on its own connection and thread, so finality is timed when a
/// block is final rather than when the submitter finds time to look (a submitter that falls
/// behind its schedule used to delay every observation behind its submissions).
fn spawn_follower(
    genesis: Genesis,
    mut follower: Follower,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    out: std::sync::mpsc::SyncSender<Observed>,
) -> std::thread::JoinHandle<Result<Follower, BenchError>> {
    std::thread::spawn(move || {
        let mut client = LedgerClient::new(&genesis)?.with_timeout(Duration::from_secs(30));
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let blocks = follower.poll(&mut client, 64)?;
            let now = Instant::now();
            let idle = blocks.is_empty();
            for b in blocks {
                if out.send((now, b.txs.iter().map(|t| Tx::id_of(t)).collect())).is_err() {
                    return Ok(follower);
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(follower)
    })
}

/// Clients submitting in parallel by default, each on its own connections and thread: the
/// offered load comes from many users, and one client waiting for the slowest of 4 validators
/// per batch could not offer 5,000 tx/s on this machine (it submitted at about 1,700/s); 4 of
/// them submitted 10,000 tx/s offered at about 6,900/s.
pub const SUBMITTERS: usize = 8;

/// Most submitting clients: each holds a connection to every validator, besides the follower's
/// and the main client's, within the RPC's 16 connections per IP address.
pub const SUBMITTERS_MAX: usize = 12;

/// What one submitting client did.
#[derive(Default)]
struct Submitted {
    at: Vec<(TxId, Instant)>,
    accepted: usize,
    failed_calls: usize,
    refusals: Vec<String>,
    last: Option<Instant>,
}

/// Submits `batches` at their offsets from `start` on a client of its own.
fn spawn_submitter(
    genesis: Genesis,
    start: Instant,
    batches: Vec<(Duration, Vec<Vec<u8>>)>,
) -> std::thread::JoinHandle<Result<Submitted, BenchError>> {
    std::thread::spawn(move || {
        let mut client = LedgerClient::new(&genesis)?.with_timeout(Duration::from_secs(30));
        let mut out = Submitted::default();
        for (at, batch) in batches {
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let now = Instant::now();
            out.at.extend(batch.iter().map(|t| (Tx::id_of(t), now)));
            let (ok, refused, failed) = client.submit_batch_detailed(&batch)?;
            out.last = Some(Instant::now());
            out.accepted += ok;
            out.failed_calls += failed;
            out.refusals.extend(refused);
        }
        Ok(out)
    })
}

/// Measures one run: `submitters` clients submit `batches` (each at its scheduled offset from
/// the start, dealt round-robin) while a follower thread observes finalized blocks, until every
/// accepted transaction is final or `deadline` passes.
#[allow(clippy::too_many_arguments)]
fn measure(
    name: &str,
    cluster: &Cluster,
    verify_cost_s: f64,
    genesis: &Genesis,
    client: &mut LedgerClient,
    follower: Follower,
    batches: Vec<(Duration, Vec<Vec<u8>>)>,
    deadline: Duration,
    submitters: usize,
) -> Result<(RunReport, Follower), BenchError> {
    let offered: usize = batches.iter().map(|(_, b)| b.len()).sum();
    let fee_of: HashMap<TxId, u64> = batches
        .iter()
        .flat_map(|(_, b)| b.iter().map(|t| (Tx::id_of(t), Params::default().fee(t.len(), 0))))
        .collect();
    let submitters = submitters.clamp(1, SUBMITTERS_MAX);
    let mut dealt: Vec<Vec<(Duration, Vec<Vec<u8>>)>> = vec![Vec::new(); submitters];
    for (i, b) in batches.into_iter().enumerate() {
        dealt[i % submitters].push(b);
    }
    let cpu0 = cluster.cpu_seconds();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel::<Observed>(OBSERVED_BLOCKS_MAX);
    let follow = spawn_follower(genesis.clone(), follower, stop.clone(), tx);
    let start = Instant::now();
    let mut submitters: Vec<_> =
        dealt.into_iter().map(|b| Some(spawn_submitter(genesis.clone(), start, b))).collect();
    let mut observed: Vec<Observed> = Vec::new();
    let mut submitted: HashMap<TxId, Instant> = HashMap::with_capacity(offered);
    let (mut accepted, mut failed_calls, mut last_submit) = (0usize, 0usize, start);
    let mut refusals: HashMap<String, usize> = HashMap::new();
    let (mut fees, mut blocks, mut last_final) = (0u64, 0u64, start);
    let mut latencies = Vec::with_capacity(offered);
    let mut finalized_at = Vec::with_capacity(offered);
    loop {
        while let Ok(o) = rx.try_recv() {
            blocks += 1;
            observed.push(o);
        }
        for slot in &mut submitters {
            if slot.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = slot.take()
            {
                let s = h.join().map_err(|_| std::io::Error::other("submitter thread panicked"))??;
                submitted.extend(s.at);
                accepted += s.accepted;
                failed_calls += s.failed_calls;
                last_submit = last_submit.max(s.last.unwrap_or(start));
                for r in s.refusals {
                    *refusals.entry(r).or_insert(0usize) += 1;
                }
            }
        }
        let all_submitted = submitters.iter().all(Option::is_none);
        if all_submitted {
            for (at, ids) in observed.drain(..) {
                for id in ids {
                    if let Some(sent) = submitted.remove(&id) {
                        fees += fee_of.get(&id).copied().unwrap_or(0);
                        latencies.push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                        finalized_at.push(at.saturating_duration_since(start).as_secs_f64());
                        last_final = last_final.max(at);
                    }
                }
            }
            if submitted.is_empty() || follow.is_finished() {
                break;
            }
        }
        if start.elapsed() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rx);
    let follower = follow.join().map_err(|_| std::io::Error::other("follower thread panicked"))??;
    let cpu = cluster.cpu_seconds() - cpu0;
    let stuck = stuck_report(client, &submitted);
    let sig = latencies.len() as f64 * cluster.children.len() as f64 * verify_cost_s;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let elapsed = last_final.duration_since(start).as_secs_f64().max(1e-9);
    let report = RunReport {
        name: name.to_owned(),
        offered,
        submit_rate: offered as f64 / last_submit.duration_since(start).as_secs_f64().max(1e-9),
        accepted,
        refusals: {
            let mut v: Vec<(String, usize)> = refusals.into_iter().collect();
            v.sort_by_key(|e| std::cmp::Reverse(e.1));
            v.truncate(3);
            v
        },
        failed_calls,
        finalized: latencies.len(),
        tps: latencies.len() as f64 / elapsed,
        steady_tps: steady_rate(&finalized_at, last_submit.duration_since(start).as_secs_f64()),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        sig_cpu_share: if cpu > 0.0 { sig / cpu } else { 0.0 },
        stuck,
        cpu_s: cpu,
        blocks,
        fees,
        validator_rss_kib: cluster.rss_kib(),
    };
    Ok((report, follower))
}

/// How each validator sees a sample of the transactions that did not finalize.
fn stuck_report(client: &mut LedgerClient, left: &HashMap<TxId, Instant>) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in left.keys().take(200) {
        let mut parts = Vec::new();
        for i in 0..client.validators() {
            let s = match client.tx_status_at(i, id) {
                Ok(crate::rpc::RemoteStatus::Unknown) => "unknown".to_owned(),
                Ok(crate::rpc::RemoteStatus::Pending) => "pending".to_owned(),
                Ok(crate::rpc::RemoteStatus::Rejected { message, .. }) => {
                    format!(
                        "rejected({})",
                        message.chars().filter(|c| !c.is_ascii_digit()).collect::<String>()
                    )
                }
                Ok(crate::rpc::RemoteStatus::Finalized { .. }) => "finalized".to_owned(),
                Err(_) => "error".to_owned(),
            };
            parts.push(s);
        }
        *counts.entry(parts.join("/")).or_insert(0) += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(4);
    v
}

/// Measured CPU cost of one transaction signature verification on this machine, in seconds,
/// the way validators verify them (batches of up to 1024); CPU time, not wall time, so that a
/// loaded machine does not inflate it.
fn verify_cost(chain: [u8; 32]) -> f64 {
    let mut users = Users::new(1024);
    let txs: Vec<Tx> = users.transfers(chain, 8192, 0).iter().filter_map(|b| Tx::decode(b).ok()).collect();
    let cpu0 = process_cpu_seconds("/proc/self/stat");
    let mut ok = 0usize;
    for chunk in txs.chunks(1024) {
        let refs: Vec<&Tx> = chunk.iter().collect();
        ok += Tx::verify_signatures(&refs).iter().filter(|v| **v).count();
    }
    (process_cpu_seconds("/proc/self/stat") - cpu0) / ok.max(1) as f64
}

/// Starts `cfg.validators` validator processes (`exe ledger validator …`, normally the `cairn`
/// binary) on loopback under `dir`, then runs the saturation and fixed-rate measurements. The
/// processes are killed when this returns.
pub fn run(cfg: &BenchConfig, dir: &Path, exe: &Path) -> Result<Vec<RunReport>, BenchError> {
    // enough users that the saturation run keeps each within half its nonce window
    let per_user = (NONCE_WINDOW / 2) as usize;
    let users_n = 4096.max(cfg.saturation_txs.div_ceil(per_user));
    let mut users = Users::new(users_n);
    // each account pays its fees out of this (a 210-byte transfer pays 2,100 units at the default)
    let accounts = users.ids.iter().map(|id| (*id, BENCH_FUNDS)).collect();
    let (mut genesis, keys) = Genesis::local("bench", cfg.validators, cfg.base_port, accounts)?;
    genesis.params = Params::default();
    let gpath = dir.join("genesis.txt");
    std::fs::write(&gpath, genesis.to_text())?;
    let mut cluster = Cluster { children: Vec::new() };
    for (i, k) in keys.iter().enumerate() {
        let kpath = dir.join(format!("validator-{i}.key"));
        write_key(&kpath, k)?;
        let data = dir.join(format!("data-{i}"));
        std::fs::create_dir_all(&data)?;
        let child = Command::new(exe)
            .args(["ledger", "validator", "--genesis"])
            .arg(&gpath)
            .arg("--key")
            .arg(&kpath)
            .arg("--data")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        cluster.children.push(child);
    }
    let verify_cost_s = verify_cost(genesis.chain_id());
    let mut client = LedgerClient::new(&genesis)?.with_timeout(Duration::from_secs(30));
    let chain = client.chain();
    let start = Instant::now();
    while client.status().map(|s| s.height).unwrap_or(0) < 2 {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(BenchError::NoProgress);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let follower = Follower::new(client.status()?.height + 1);
    let mut reports = Vec::new();

    // Saturation: everything up front, in batches.
    let txs = users.transfers(chain, cfg.saturation_txs, 0);
    let batches = txs.chunks(1024).map(|c| (Duration::ZERO, c.to_vec())).collect();
    let (report, follower) = measure(
        "saturation",
        &cluster,
        verify_cost_s,
        &genesis,
        &mut client,
        follower,
        batches,
        Duration::from_secs(120),
        cfg.submitters,
    )?;
    reports.push(report);

    // Fixed rate: a batch every 20 ms.
    let per_tick = (cfg.fixed_rate / 50).max(1);
    let ticks = (cfg.fixed_duration.as_millis() / 20) as usize;
    let mut batches = Vec::with_capacity(ticks);
    for t in 0..ticks {
        batches.push((Duration::from_millis(20 * t as u64), users.transfers(chain, per_tick, t * per_tick)));
    }
    let name = format!("{}/s fixed", cfg.fixed_rate);
    let (report, _) = measure(
        &name,
        &cluster,
        verify_cost_s,
        &genesis,
        &mut client,
        follower,
        batches,
        cfg.fixed_duration + Duration::from_secs(60),
        cfg.submitters,
    )?;
    reports.push(report);
    Ok(reports)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::steady_rate;

    /// A chain keeping up with 1,000/s offered for 10 s, each transaction final 300 ms after
    /// it was sent: the whole-run rate is lower by that latency, the steady rate is the
    /// offered one, also when they are finalized in blocks of 300. One falling behind (half
    /// the rate) shows as such; a short span has none.
    #[test]
    fn the_steady_rate_is_the_offered_rate_when_the_chain_keeps_up_and_lower_when_it_does_not() {
        let kept: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 1000.0 + 0.3).collect();
        let steady = steady_rate(&kept, 10.0).unwrap();
        assert!((steady - 1000.0).abs() <= 1.0, "{steady}");
        let whole = kept.len() as f64 / kept.last().unwrap();
        assert!(whole < 975.0, "{whole}");
        // final in blocks: every 0.3 s, the 300 sent in the 0.3 s before
        let blocks: Vec<f64> = (0..10_000).map(|i| f64::from(i / 300 + 1) * 0.3 + 0.3).collect();
        let steady = steady_rate(&blocks, 10.0).unwrap();
        assert!((steady - 1000.0).abs() <= 1.0, "{steady}");
        let behind: Vec<f64> = (0..10_000).map(|i| f64::from(i) / 500.0).collect();
        assert!((steady_rate(&behind, 10.0).unwrap() - 500.0).abs() <= 1.0);
        assert_eq!(steady_rate(&kept, 1.5), None);
        assert_eq!(steady_rate(&kept, f64::NAN), None);
        assert_eq!(steady_rate(&[5.0; 10], 10.0), None, "one instant is no rate");
    }
}
