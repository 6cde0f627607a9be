//! `cairn bench contracts`: policy verdicts per second on one core (the shipped moderation
//! policy: its rate limit alone, then roles + rate limit + word filter, and a handshake
//! judgement), the ledger's escrow `open` executions beside plain transfers on validator
//! processes on 127.0.0.1 (fees on, as in production), and the fuel and fee of each call.
//!
//! A policy rate is its verdicts over the thread's CPU time for all of them (so the machine's
//! other load does not lower a per-core figure; wall time for runs too short to count CPU time
//! exactly), its p50/p99 are wall time per verdict; a state-machine figure is the median over
//! blocks of wall time per call; a ledger rate is the median over rounds, its p50/p99 are
//! submission-to-finality latencies over every round. Not a test: the figures depend on the
//! machine and its load.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_contracts::code_hash;
use cairn_contracts::policy::{GroupChange, HandshakeEvent, MessageEvent, Policy, Verdict, policy_runtime};
use cairn_contracts::shipped::escrow;
use cairn_contracts::shipped_policy::moderation;
use cairn_ledger::bench::{Users, percentile};
use cairn_ledger::genesis::{Genesis, write_key};
use cairn_ledger::params::Params;
use cairn_ledger::rpc::{Follower, LedgerClient, RemoteOutcome, RemoteStatus};
use cairn_ledger::state::{Machine, Outcome, contract_address};
use cairn_ledger::tx::{Tx, TxBody, TxId};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

/// Policy verdicts run untimed first (warm-up).
const SAMPLE: usize = 250;
/// Calls per state-machine block (one core, no network).
const MACHINE_BLOCK: usize = 100;
/// Funds locked by each benchmarked escrow `open`.
const OPEN_FUNDS: u64 = 1;
/// Genesis balance of each bench account (fees are on).
const FUNDS: u64 = 1_000_000_000_000;
/// Transactions a bench account keeps in flight at most (half the mempool's nonce window).
const PER_USER: usize = (cairn_ledger::mempool::NONCE_WINDOW / 2) as usize;
/// Time given to one ledger round to finalize.
const ROUND_DEADLINE: Duration = Duration::from_secs(120);

/// Sizes of a `cairn bench contracts` run.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Timed verdicts per policy configuration.
    pub(crate) verdicts: usize,
    /// Validator processes.
    pub(crate) validators: usize,
    /// Transactions per ledger round (escrow opens, then as many transfers).
    pub(crate) ledger_txs: usize,
    /// Ledger rounds (and state-machine blocks) the medians are taken over.
    pub(crate) rounds: usize,
}

/// One line of the table.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    what: String,
    place: String,
    /// Per second (median).
    rate: f64,
    /// Latency percentiles, seconds.
    p50: f64,
    p99: f64,
    fuel: Option<u64>,
    fee: Option<u64>,
}

fn progress(line: &str) {
    eprintln!("[bench contracts] {line}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

fn duration_text(s: f64) -> String {
    if !s.is_finite() {
        "—".into()
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Prints the table (also what the bench's test parses: columns are separated by two or more
/// spaces, the rate is `N/s`).
pub(crate) fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<52}  {:<32}  {:>12}  {:>10}  {:>10}  {:>8}  {:>8}\n",
        "what", "where", "rate", "p50", "p99", "fuel", "fee"
    );
    let opt = |v: Option<u64>| v.map_or("—".to_owned(), |v| v.to_string());
    for r in rows {
        s.push_str(&format!(
            "{:<52}  {:<32}  {:>10.0}/s  {:>10}  {:>10}  {:>8}  {:>8}\n",
            r.what,
            r.place,
            r.rate,
            duration_text(r.p50),
            duration_text(r.p99),
            opt(r.fuel),
            opt(r.fee)
        ));
    }
    s
}

/// Runs the whole bench; `exe` is the `cairn` binary the validators run as.
pub(crate) fn run(cfg: &Config, exe: &Path) -> Result<Vec<Row>> {
    if cfg.verdicts == 0 || cfg.ledger_txs == 0 || cfg.rounds == 0 || cfg.validators == 0 {
        bail!("--verdicts, --contract-txs, --rounds and --validators must each be at least 1");
    }
    let mut rows = policy_rows(cfg.verdicts)?;
    let (machine_rows, open_fuel) = machine_rows(cfg.rounds)?;
    let dir = tempfile::tempdir()?;
    rows.extend(ledger_rows(cfg, dir.path(), exe, open_fuel)?);
    rows.extend(machine_rows);
    Ok(rows)
}

/// Policy verdicts on one core: a fresh wasmi instance per call, per-sender state.
fn policy_rows(verdicts: usize) -> Result<Vec<Row>> {
    let rt = Arc::new(policy_runtime());
    let rate_only = moderation::Config { max_messages: 1_000_000, window_ms: 60_000, ..Default::default() };
    let full = moderation::Config {
        admins: vec![[1; 32]],
        words: vec!["spam".into(), "scam".into(), "phish".into()],
        ..rate_only.clone()
    };
    let mut rows = Vec::new();
    for (name, c) in [("rate limit", &rate_only), ("roles + rate limit + 3-word filter", &full)] {
        progress(&format!("policy verdicts ({name}): {verdicts} on one core"));
        let pin = c.pin().context("the bench's moderation configuration does not encode")?;
        let mut p = Policy::new(rt.clone(), pin, moderation::WASM)?;
        let ev = |seq: u64| MessageEvent {
            id: [0; 32],
            group: [9; 32],
            epoch: 1,
            sender_account: [2; 32],
            sender_device: [2; 32],
            sender_seq: seq,
            ts: seq,
            content_type: 1,
            body: b"a message of an ordinary length, with nothing to filter in it".to_vec(),
        };
        let mut fuel = 0;
        let mut times = Vec::with_capacity(verdicts);
        let mut cpu0 = None;
        // the first SAMPLE verdicts warm up and are not timed
        for seq in 0..(verdicts + SAMPLE) as u64 {
            if seq as usize == SAMPLE {
                cpu0 = thread_cpu_s();
            }
            let t = Instant::now();
            let j = p.on_message(ev(seq));
            let dt = t.elapsed().as_secs_f64();
            let [j] = j.as_slice() else { bail!("policy: {} judgements for one in-order message", j.len()) };
            if j.verdict != Verdict::Allow {
                bail!(
                    "policy ({name}) judged an ordinary message {:?} ({:?}): the bench would time the wrong path",
                    j.verdict,
                    j.failure
                );
            }
            fuel = j.fuel_used;
            if seq as usize >= SAMPLE {
                times.push(dt);
            }
        }
        let spent = cpu_spent(cpu0, || times.iter().sum());
        times.sort_by(f64::total_cmp);
        rows.push(Row {
            what: format!("policy verdict: {name}"),
            place: "1 core (wasmi, fresh instance)".into(),
            rate: verdicts as f64 / spent,
            p50: percentile(&times, 0.5),
            p99: percentile(&times, 0.99),
            fuel: Some(fuel),
            fee: None,
        });
    }
    progress("policy handshake judgements (a non-admin's removal)");
    let p = Policy::new(rt, full.pin().context("bench configuration")?, moderation::WASM)?;
    let hs =
        HandshakeEvent { group: [9; 32], epoch: 2, proposer: [2; 32], change: GroupChange::Remove([3; 32]) };
    let n = verdicts;
    let mut times = Vec::with_capacity(n);
    let mut fuel = 0;
    let start = Instant::now();
    let cpu0 = thread_cpu_s();
    for _ in 0..n {
        let t = Instant::now();
        let j = p.on_handshake(&hs);
        times.push(t.elapsed().as_secs_f64());
        if j.decision.is_ok() {
            bail!("policy: a non-admin's removal was allowed; the bench would time the wrong path");
        }
        fuel = j.fuel_used;
    }
    let total = cpu_spent(cpu0, || start.elapsed().as_secs_f64());
    times.sort_by(f64::total_cmp);
    rows.push(Row {
        what: "policy judgement: non-admin removal".into(),
        place: "1 core (wasmi, fresh instance)".into(),
        rate: n as f64 / total,
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        fuel: Some(fuel),
        fee: None,
    });
    Ok(rows)
}

/// CPU time this thread has run, seconds (`/proc/thread-self/schedstat`, nanoseconds).
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<u64>().ok()? as f64 / 1e9)
}

/// CPU time this thread spent since `cpu0`, if the kernel tells it and it is long enough to be
/// exact (the kernel may account it only at scheduler ticks, every few ms); else `wall()`.
fn cpu_spent(cpu0: Option<f64>, wall: impl FnOnce() -> f64) -> f64 {
    match (cpu0, thread_cpu_s()) {
        (Some(a), Some(b)) if b - a >= 0.2 => b - a,
        _ => wall().max(1e-12),
    }
}

fn machine_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn machine_acct(i: u8) -> AccountId {
    AccountId(machine_key(i).verifying_key().to_bytes())
}

/// A one-replica state machine with the escrow instantiated; the contract's address.
fn machine_with_escrow(chain: [u8; 32]) -> Result<(Machine, [u8; 32])> {
    let alloc = [(machine_acct(1), FUNDS), (machine_acct(2), FUNDS)];
    let mut m = Machine::genesis(chain, &alloc, &Params::default())?;
    let hash = code_hash(escrow::WASM);
    let (a, k) = (machine_acct(1), machine_key(1));
    let deploy = Tx::sign(chain, a, &k, 0, TxBody::Deploy { code: escrow::WASM.to_vec() });
    let inst = TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: 1_000_000 };
    let inst = Tx::sign(chain, a, &k, 1, inst);
    let (r, d) = m.propose_and_apply(&[deploy.encode(), inst.encode()])?;
    if !d.is_empty() || !matches!(r.get(1).map(|r| &r.outcome), Some(Outcome::Contract { .. })) {
        bail!("the escrow did not instantiate on the bench's state machine: {r:?} {d:?}");
    }
    Ok((m, contract_address(&a, &a.0, 1, &hash)))
}

fn escrow_id(round: usize, i: usize) -> [u8; 32] {
    let mut id = [0xE5; 32];
    id[..8].copy_from_slice(&(round as u64).to_be_bytes());
    id[8..16].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

/// Blocks of escrow opens and of transfers applied by one replica (signature checks and
/// fees included; no consensus, no network), and the fuel an open uses.
fn machine_rows(rounds: usize) -> Result<(Vec<Row>, u64)> {
    progress(&format!(
        "state machine: {rounds} blocks of {MACHINE_BLOCK} escrow opens, of releases and of transfers on one core"
    ));
    let chain = [0xBC; 32];
    let recipient = machine_acct(1).0;
    let opens = |contract: [u8; 32], fuel_limit: u64| -> Vec<Vec<u8>> {
        (0..MACHINE_BLOCK)
            .map(|i| {
                let msg = escrow::open(&escrow_id(0, i), &recipient, 1_000_000);
                let body = TxBody::Execute { contract, msg, funds: OPEN_FUNDS, fuel_limit };
                Tx::sign(chain, machine_acct(2), &machine_key(2), i as u64, body).encode()
            })
            .collect()
    };
    let transfers: Vec<Vec<u8>> = (0..MACHINE_BLOCK)
        .map(|i| {
            let body = TxBody::Transfer { to: machine_acct(1), amount: 10 };
            Tx::sign(chain, machine_acct(2), &machine_key(2), i as u64, body).encode()
        })
        .collect();
    // the fuel and fee of one open, and of one transfer
    let (mut m, contract) = machine_with_escrow(chain)?;
    let probe = opens(contract, 1_000_000);
    let before = m.account(&machine_acct(2)).map_or(0, |a| a.balance);
    let (r, _) = m.propose_and_apply(&probe[..1])?;
    let open_fuel = match r.first().map(|r| &r.outcome) {
        Some(Outcome::Contract { fuel_used, .. }) => *fuel_used,
        other => bail!("an escrow open failed on the bench's state machine: {other:?}"),
    };
    let after = m.account(&machine_acct(2)).map_or(0, |a| a.balance);
    let fuel_limit = (2 * open_fuel).max(10_000);
    let open_len = opens(contract, fuel_limit)[0].len();
    let open_fee = Params::default().fee(open_len, open_fuel);
    if before - after != OPEN_FUNDS + Params::default().fee(probe[0].len(), open_fuel) {
        bail!("an escrow open cost {} on the state machine, not funds + the scheduled fee", before - after);
    }
    let transfer_fee = Params::default().fee(transfers[0].len(), 0);
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let (mut release_fuel, mut release_fee) = (0, 0);
    for _ in 0..rounds {
        for (k, times) in times.iter_mut().enumerate() {
            let (mut m, contract) = machine_with_escrow(chain)?;
            let txs = match k {
                0 => opens(contract, fuel_limit),
                1 => transfers.clone(),
                _ => releases_ready(&mut m, contract, opens(contract, fuel_limit))?,
            };
            let t = Instant::now();
            let (r, d) = m.propose_and_apply(&txs)?;
            let dt = t.elapsed().as_secs_f64();
            let ok = r.iter().filter(|r| !matches!(r.outcome, Outcome::Failed { .. })).count();
            if !d.is_empty() || ok != MACHINE_BLOCK {
                bail!("the state machine applied {ok} of {MACHINE_BLOCK} calls ({} dropped)", d.len());
            }
            times.push(dt / MACHINE_BLOCK as f64);
            if k == 2
                && let Some(Outcome::Contract { fuel_used, .. }) = r.first().map(|r| &r.outcome)
            {
                release_fuel = *fuel_used;
                release_fee = Params::default().fee(txs[0].len(), *fuel_used);
            }
        }
    }
    let row = |what: &str, mut t: Vec<f64>, fuel: u64, fee: u64| {
        t.sort_by(f64::total_cmp);
        let p50 = percentile(&t, 0.5);
        Row {
            what: what.into(),
            place: format!("state machine, 1 core, {MACHINE_BLOCK}/block"),
            rate: 1.0 / p50,
            p50,
            p99: f64::NAN,
            fuel: Some(fuel),
            fee: Some(fee),
        }
    };
    let [open_t, transfer_t, release_t] = times;
    Ok((
        vec![
            row("escrow open (Execute)", open_t, open_fuel, open_fee),
            row("escrow release on a delivery receipt (Execute)", release_t, release_fuel, release_fee),
            row("transfer", transfer_t, 0, transfer_fee),
        ],
        open_fuel,
    ))
}

/// Makes `m` ready for a block of releases: the recipient (account 1) registers a device and
/// the `opens` are applied; returns the releases, each carrying that device's signed delivery
/// receipt for its escrow (signed by account 1, who is paid).
fn releases_ready(m: &mut Machine, contract: [u8; 32], opens: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    use cairn_proto::ed25519::Signer as _;
    let chain = m.chain;
    let device = SigningKey::from_bytes(&[0xD1; 32]);
    let dev = device.verifying_key().to_bytes();
    let cert = cairn_proto::DeviceCert::issue(&machine_key(1), cairn_proto::DeviceId(dev), 1);
    let add = Tx::sign(chain, machine_acct(1), &machine_key(1), 2, TxBody::add_device(&chain, cert, &device));
    let (r, d) = m.propose_and_apply(&[add.encode()])?;
    if !d.is_empty() || !matches!(r.first().map(|r| &r.outcome), Some(Outcome::Applied)) {
        bail!("the bench's recipient could not register a device: {r:?} {d:?}");
    }
    let (r, d) = m.propose_and_apply(&opens)?;
    let ok = r.iter().filter(|r| !matches!(r.outcome, Outcome::Failed { .. })).count();
    if !d.is_empty() || ok != opens.len() {
        bail!("the state machine opened {ok} of {} escrows ({} dropped)", opens.len(), d.len());
    }
    Ok((0..opens.len())
        .map(|i| {
            let id = escrow_id(0, i);
            let sig = device.sign(&escrow::receipt_message(&id)).to_bytes();
            let msg = escrow::release(&id, &dev, &sig);
            let body = TxBody::Execute { contract, msg, funds: 0, fuel_limit: 400_000 };
            Tx::sign(chain, machine_acct(1), &machine_key(1), 3 + i as u64, body).encode()
        })
        .collect())
}

/// Kills the validator processes when dropped.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Submits `txs` at once and follows finalized blocks until all are in one (or the deadline);
/// returns (finalized, tx/s from the first submission to the last finalization, latencies s).
fn measure(
    client: &mut LedgerClient,
    follower: &mut Follower,
    txs: &[Vec<u8>],
) -> Result<(usize, f64, Vec<f64>)> {
    let start = Instant::now();
    let mut submitted: HashMap<TxId, Instant> = HashMap::with_capacity(txs.len());
    for chunk in txs.chunks(256) {
        let now = Instant::now();
        for t in chunk {
            submitted.insert(Tx::id_of(t), now);
        }
        let (accepted, refusals, _) = client.submit_batch_detailed(chunk)?;
        if accepted < chunk.len() {
            bail!("validators took {accepted} of {} transactions: {:?}", chunk.len(), refusals.first());
        }
    }
    let mut latencies = Vec::with_capacity(txs.len());
    let mut last = start;
    while !submitted.is_empty() && start.elapsed() < ROUND_DEADLINE {
        for b in follower.poll(client, 64)? {
            let now = Instant::now();
            for t in &b.txs {
                if let Some(at) = submitted.remove(&Tx::id_of(t)) {
                    latencies.push(now.duration_since(at).as_secs_f64());
                    last = now;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let rate = latencies.len() as f64 / last.duration_since(start).as_secs_f64().max(1e-9);
    Ok((latencies.len(), rate, latencies))
}

/// Checks that a sample of the finalized calls applied (a failed call still finalizes and pays
/// its fee, so it would count as a transaction without being one).
fn check_applied(client: &mut LedgerClient, txs: &[Vec<u8>], what: &str) -> Result<()> {
    let step = (txs.len() / 10).max(1);
    for t in txs.iter().step_by(step) {
        match client.tx_status_at(0, &Tx::id_of(t))? {
            RemoteStatus::Finalized { outcome: RemoteOutcome::Failed { message, .. }, .. } => {
                bail!("a benchmarked {what} failed on the ledger: {message}")
            }
            RemoteStatus::Finalized { .. } => {}
            other => bail!("a benchmarked {what} is {other:?} at validator 0 after its block"),
        }
    }
    Ok(())
}

/// Escrow opens and transfers through `cfg.validators` validator processes on 127.0.0.1.
fn ledger_rows(cfg: &Config, dir: &Path, exe: &Path, open_fuel: u64) -> Result<Vec<Row>> {
    let n_users = (cfg.ledger_txs.div_ceil(PER_USER)).max(8);
    // one more account, used once at the end: its balance before is exactly its genesis funds
    let mut users = Users::new(n_users + 1);
    let accounts = users.ids.iter().map(|id| (*id, FUNDS)).collect();
    let base = crate::node_cmd::free_ports(2 * cfg.validators as u16)?;
    let (mut genesis, keys) = Genesis::local("bench-contracts", cfg.validators, base, accounts)?;
    genesis.params = Params::default();
    let gpath = dir.join("genesis.txt");
    std::fs::write(&gpath, genesis.to_text())?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut cluster = Cluster(Vec::new());
    for (i, k) in keys.iter().enumerate() {
        let kpath = dir.join(format!("validator-{i}.key"));
        write_key(&kpath, k)?;
        let data = dir.join(format!("data-{i}"));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(logs.join(format!("validator-{i}.log")))?;
        let child = Command::new(exe)
            .args(["ledger", "validator", "--genesis"])
            .arg(&gpath)
            .arg("--key")
            .arg(&kpath)
            .arg("--data")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a validator process")?;
        cluster.0.push(child);
    }
    progress(&format!("ledger: {} validator processes on 127.0.0.1 starting", cfg.validators));
    let mut client = LedgerClient::new(&genesis)?.with_timeout(Duration::from_secs(30));
    let chain = client.chain();
    let start = Instant::now();
    while client.status().map(|s| s.height).unwrap_or(0) < 2 {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("the validators did not finalize 2 blocks within 90 s (logs were in {})", logs.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // user 0 deploys and instantiates the escrow
    progress("ledger: deploying and instantiating the shipped escrow");
    let hash = code_hash(escrow::WASM);
    let deploy = users.sign(chain, 0, TxBody::Deploy { code: escrow::WASM.to_vec() });
    let inst_nonce = users.next_nonce(0);
    let inst = users.sign(
        chain,
        0,
        TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: 1_000_000 },
    );
    for (t, what) in [(&deploy, "deploy"), (&inst, "instantiate")] {
        let id = client.submit(t)?;
        match client.wait_final(&id, Duration::from_secs(60))? {
            (_, RemoteOutcome::Failed { message, .. }) => bail!("the escrow's {what} failed: {message}"),
            (h, _) => progress(&format!("ledger: escrow {what} final at height {h}")),
        }
    }
    let contract = contract_address(&users.ids[0], &users.ids[0].0, inst_nonce, &hash);
    let fuel_limit = (2 * open_fuel).max(10_000);
    let mut follower = Follower::new(client.status()?.height + 1);
    let mut rates = [Vec::new(), Vec::new()];
    let mut lat = [Vec::new(), Vec::new()];
    let mut lens = [0usize; 2];
    for round in 0..cfg.rounds {
        for (k, what) in [(0usize, "escrow opens"), (1, "transfers")] {
            let txs: Vec<Vec<u8>> = (0..cfg.ledger_txs)
                .map(|i| {
                    let u = i % n_users;
                    let body = if k == 0 {
                        let msg =
                            escrow::open(&escrow_id(round, i), &users.ids[(u + 1) % n_users].0, u64::MAX);
                        TxBody::Execute { contract, msg, funds: OPEN_FUNDS, fuel_limit }
                    } else {
                        TxBody::Transfer { to: users.ids[(u + 1) % n_users], amount: 1 }
                    };
                    users.sign(chain, u, body)
                })
                .collect();
            lens[k] = txs[0].len();
            let (done, rate, l) = measure(&mut client, &mut follower, &txs)?;
            progress(&format!(
                "ledger round {}/{}: {done} of {} {what} final, {rate:.0}/s",
                round + 1,
                cfg.rounds,
                txs.len()
            ));
            if done < txs.len() {
                bail!("only {done} of {} {what} were final within {ROUND_DEADLINE:?}", txs.len());
            }
            check_applied(&mut client, &txs, what)?;
            rates[k].push(rate);
            lat[k].extend(l);
        }
    }
    // the fee an open actually paid on this chain: the payer's proven balance before and after
    let probe = users.sign(
        chain,
        n_users,
        TxBody::Execute {
            contract,
            msg: escrow::open(&escrow_id(usize::MAX, 0), &users.ids[0].0, u64::MAX),
            funds: OPEN_FUNDS,
            fuel_limit,
        },
    );
    let before = FUNDS;
    let id = client.submit(&probe)?;
    client.wait_final(&id, Duration::from_secs(60))?;
    let paid = {
        let t = Instant::now();
        loop {
            let now = client.account(&users.ids[n_users])?.map_or(0, |a| a.balance);
            if now != before || t.elapsed() > Duration::from_secs(20) {
                break before.saturating_sub(now).saturating_sub(OPEN_FUNDS);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let expected = Params::default().fee(probe.len(), open_fuel);
    if paid != expected {
        bail!("an escrow open paid {paid} on the ledger; the fuel schedule says {expected}");
    }
    progress(&format!("ledger: one escrow open paid {paid} in fees (bytes + {open_fuel} fuel)"));
    let place = format!("{} validator processes", cfg.validators);
    let [open_r, transfer_r] = rates;
    let [mut open_l, mut transfer_l] = lat;
    open_l.sort_by(f64::total_cmp);
    transfer_l.sort_by(f64::total_cmp);
    Ok(vec![
        Row {
            what: "escrow open (Execute), finalized".into(),
            place: place.clone(),
            rate: median(open_r),
            p50: percentile(&open_l, 0.5),
            p99: percentile(&open_l, 0.99),
            fuel: Some(open_fuel),
            fee: Some(paid),
        },
        Row {
            what: "transfer, finalized".into(),
            place,
            rate: median(transfer_r),
            p50: percentile(&transfer_l, 0.5),
            p99: percentile(&transfer_l, 0.99),
            fuel: Some(0),
            fee: Some(Params::default().fee(lens[1], 0)),
        },
    ])
}
