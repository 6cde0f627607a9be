//! Crash test with real processes on 127.0.0.1: one validator, two store nodes and three users
//! in one group. A seeded loop has every member send through its API (`send` with a short
//! `wait_ms`) while, at ≥ 50 random points, a random member's node is SIGKILLed — with its own
//! sends in flight, while it receives the others', or while it is still starting and catching
//! up — and restarted on the same home; at the end all three are SIGKILLed at once and
//! restarted. Afterwards every message whose send answer said it is
//! stored (state `stored`/`delivered`, or `stored_on` ≥ 1) is at every member exactly once,
//! after its parents; nothing nobody sent shows up; and `verify` passes at every member.
//!
//! `CAIRN_CRASH_SEED=n` replays the random choices of one seed (timing still varies). On
//! failure the processes' logs and data are kept (the path is printed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use cairn_node::client::{Client, read_run_file};
use cairn_node::model::{DeliveryState, DeliveryView, MessageView, TailQuery};
use common::{BIN, Net, wait_for};

const PASS: &str = "crash passphrase";
const USERS: [&str; 3] = ["ann", "ben", "cat"];
/// SIGKILLs of user nodes during the run (the requirement: at least 50).
const KILLS: usize = 52;
const DEFAULT_SEED: u64 = 0x00C0_FFEE_2024;
/// How long the members get, after the last restart, to hold every acknowledged message.
const CONVERGE: Duration = Duration::from_secs(90);

/// SplitMix64: a tiny seeded generator (the test needs no quality, only replayable choices).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

impl Net {
    /// Starts `cairn up` on `name`'s home without waiting for it; returns its pid.
    fn spawn(&mut self, name: &str, extra: &[&str]) -> u32 {
        let home = self.path(name);
        std::fs::create_dir_all(&home).unwrap();
        let mut log = self.log(name);
        let _ = std::io::Write::write_all(&mut log, b"\n===== (re)start =====\n");
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(&home).arg("up").arg("--genesis").arg(&self.genesis);
        cmd.arg("--invitations").arg("everyone");
        for s in &self.stores {
            cmd.arg("--bootstrap").arg(s);
        }
        let child = cmd
            .args(extra)
            .env("CAIRN_PASSPHRASE", PASS)
            .env_remove("CAIRN_CONFIG")
            .env("RUST_LOG", "warn,cairn_node=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        pid
    }

    /// Waits until the node `pid` of `name` wrote its run file (and, for a user, answers).
    fn wait_up(&self, name: &str, pid: u32, user: bool) {
        let home = self.path(name);
        wait_for(&format!("{name} (pid {pid}) to start"), Duration::from_secs(60), || {
            read_run_file(&home).ok().flatten().filter(|r| r.pid == pid)?;
            if user {
                Client::for_home(&home).ok()?.status().ok()?;
            }
            Some(())
        });
    }

    fn store(&mut self, name: &str) {
        let pid = self.spawn(name, &["--store"]);
        self.wait_up(name, pid, false);
        let run = read_run_file(&self.path(name)).unwrap().unwrap();
        self.stores.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));
    }

    fn init_user(&mut self, name: &str) -> u32 {
        let st = Command::new(BIN)
            .arg("--home")
            .arg(self.path(name))
            .args(["init", "--handle", name])
            .env("CAIRN_PASSPHRASE", PASS)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        self.spawn(name, &[])
    }

    fn client(&self, name: &str) -> Client {
        Client::for_home(&self.path(name)).unwrap()
    }

    /// SIGKILL (`Child::kill` on Unix), then reap.
    fn sigkill(&mut self, name: &str) {
        let pos = self.children.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut c) = self.children.remove(pos);
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

/// A send the API answered.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    text: String,
    from: usize,
    round: usize,
    delivery: DeliveryView,
}

impl Sent {
    /// The answer said a store node (or every member) keeps it durably.
    fn acknowledged(&self) -> bool {
        self.delivery.stored_on >= 1 || self.delivery.state != DeliveryState::Sent
    }
}

/// One SIGKILL.
#[derive(Debug)]
struct Kill {
    round: usize,
    victim: usize,
    /// `sending` (killed while the round's sends were running), `restarting` (killed while
    /// starting again and catching up) or `all at once` (every user node, at the end).
    phase: &'static str,
    /// Milliseconds since the round's sends began, or since the restart.
    after_ms: u64,
    /// The victim's own sends in flight at the kill.
    own_in_flight: usize,
    /// Every member's sends in flight at the kill.
    all_in_flight: usize,
}

fn all_messages(c: &Client, conv: &str) -> Vec<MessageView> {
    c.messages(conv, &TailQuery { after: None, limit: Some(10_000), wait_ms: None }).unwrap()
}

// What this test found, now fixed (seed 828927516708, 3 failures in 4 runs before):
// - Sender: a send cut off by a SIGKILL reached the sender's history but no store node; at
//   restart the outbox re-publish found its id "delivered" and the net answered without a
//   push (net `publish` now pushes it to the store nodes again).
// - Receiver: `Sync::on_page` persisted the per-store cursor past envelopes parked in memory
//   for a missing parent; a SIGKILL then lost them for good (the saved cursor now stops at
//   the first parked one).
// - Receiver (stop 29, 1 failure in 3 runs): a parent reached the store nodes 5-6 s late (a
//   stem originator waits up to 6 s for a silent hop; a killed sender restarts, then re-pushes);
//   readers declared it lost after 5 s and showed its child first (`Reordered`). Gaps are now
//   declared after 10 s.
#[test]
fn sigkilled_senders_and_receivers_lose_and_duplicate_nothing_acknowledged() {
    let seed = std::env::var("CAIRN_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    println!("crash test seed {seed} (replay its choices with CAIRN_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let mut net = Net::new(1);
    for i in 0..2 {
        net.store(&format!("store-{i}"));
    }
    let pids: Vec<u32> = USERS.iter().map(|u| net.init_user(u)).collect();
    for (u, pid) in USERS.iter().zip(&pids) {
        net.wait_up(u, *pid, true);
        let c = net.client(u);
        wait_for(&format!("@{u} registered"), Duration::from_secs(120), || {
            c.account(&format!("@{u}")).ok().filter(|a| a.proof_verified)
        });
    }
    let conv = net.client(USERS[0]).create_conversation(&["@ben".into(), "@cat".into()]).unwrap().id;
    for u in &USERS[1..] {
        let c = net.client(u);
        wait_for(&format!("{u} to join"), Duration::from_secs(90), || {
            c.conversations().ok()?.into_iter().find(|v| v.id == conv && v.active)
        });
    }
    let setup = t0.elapsed();
    println!("setup: {:.1} s", setup.as_secs_f64());

    let mut sent: Vec<Sent> = Vec::new();
    let mut failed: Vec<(String, usize, usize, String)> = Vec::new(); // text, from, round, error
    let mut kills: Vec<Kill> = Vec::new();
    let mut round = 0;
    let in_flight: [AtomicUsize; 3] = Default::default();
    let t_loop = Instant::now();
    while kills.len() < KILLS {
        round += 1;
        assert!(round <= 2 * KILLS, "bounded loop");
        let victim = rng.range(0, 2) as usize;
        let plans: Vec<Vec<(String, u64)>> = (0..3)
            .map(|i| {
                (0..rng.range(1, 3))
                    .map(|j| (format!("r{round} {} #{j}", USERS[i]), rng.range(100, 500)))
                    .collect()
            })
            .collect();
        let kill_after = rng.range(0, 600);
        let restart_kill = (rng.range(0, 3) == 0).then(|| rng.range(0, 1_500));
        let clients: Vec<Client> = USERS.iter().map(|u| net.client(u)).collect();
        let started = Instant::now();
        let mut last_pid = 0;
        let answers: Vec<Vec<Result<Sent, (String, String)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = plans
                .iter()
                .enumerate()
                .map(|(i, plan)| {
                    let (c, conv, flight) = (&clients[i], &conv, &in_flight[i]);
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for (text, wait_ms) in plan {
                            flight.fetch_add(1, Ordering::SeqCst);
                            let r = c.send_wait(conv, text, *wait_ms);
                            flight.fetch_sub(1, Ordering::SeqCst);
                            match r {
                                Ok(r) => out.push(Ok(Sent {
                                    id: r.id,
                                    text: text.clone(),
                                    from: i,
                                    round,
                                    delivery: r.delivery,
                                })),
                                Err(e) => {
                                    out.push(Err((text.clone(), e.to_string())));
                                    break;
                                }
                            }
                        }
                        out
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(kill_after));
            let flights = || -> (usize, usize) {
                let all: Vec<usize> = in_flight.iter().map(|f| f.load(Ordering::SeqCst)).collect();
                (all[victim], all.iter().sum())
            };
            let (own, all) = flights();
            net.sigkill(USERS[victim]);
            kills.push(Kill {
                round,
                victim,
                phase: "sending",
                after_ms: started.elapsed().as_millis() as u64,
                own_in_flight: own,
                all_in_flight: all,
            });
            last_pid = net.spawn(USERS[victim], &[]);
            if let Some(d) = restart_kill {
                let restarted = Instant::now();
                std::thread::sleep(Duration::from_millis(d));
                let (own, all) = flights();
                net.sigkill(USERS[victim]);
                kills.push(Kill {
                    round,
                    victim,
                    phase: "restarting",
                    after_ms: restarted.elapsed().as_millis() as u64,
                    own_in_flight: own,
                    all_in_flight: all,
                });
                last_pid = net.spawn(USERS[victim], &[]);
            }
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for a in answers.into_iter().flatten() {
            match a {
                Ok(s) => sent.push(s),
                Err((text, e)) => {
                    let from = USERS.iter().position(|u| text.contains(&format!(" {u} #"))).unwrap();
                    failed.push((text, from, round, e));
                }
            }
        }
        net.wait_up(USERS[victim], last_pid, true);
    }
    let loop_time = t_loop.elapsed();
    // Restart everything: every user node SIGKILLed at once (each may still owe receipts,
    // mailbox acknowledgements and outbox entries), then started again.
    for (i, u) in USERS.iter().enumerate() {
        net.sigkill(u);
        kills.push(Kill {
            round,
            victim: i,
            phase: "all at once",
            after_ms: 0,
            own_in_flight: 0,
            all_in_flight: 0,
        });
    }
    let pids: Vec<u32> = USERS.iter().map(|u| net.spawn(u, &[])).collect();
    for (u, pid) in USERS.iter().zip(pids) {
        net.wait_up(u, pid, true);
    }
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.acknowledged()).collect();
    let sending_kills = kills.iter().filter(|k| k.phase == "sending").count();
    println!(
        "{} rounds in {:.1} s, then a restart of every user: {} SIGKILLs ({} during sends — {} with \
         the victim's own send in flight, {} with some send in flight — {} while restarting, then \
         all 3 at once; per member {:?}); {} sends answered ({} acknowledged as stored), {} cut off \
         by a kill",
        round,
        loop_time.as_secs_f64(),
        kills.len(),
        sending_kills,
        kills.iter().filter(|k| k.phase == "sending" && k.own_in_flight > 0).count(),
        kills.iter().filter(|k| k.all_in_flight > 0).count(),
        kills.iter().filter(|k| k.phase == "restarting").count(),
        (0..3).map(|i| kills.iter().filter(|k| k.victim == i).count()).collect::<Vec<_>>(),
        sent.len(),
        acked.len(),
        failed.len(),
    );
    for k in &kills {
        println!(
            "  kill in round {}: {} {} after {} ms ({} own, {} in all sends in flight)",
            k.round, USERS[k.victim], k.phase, k.after_ms, k.own_in_flight, k.all_in_flight
        );
    }
    assert!(kills.len() >= 50);
    assert!(acked.len() >= 50, "too few acknowledged sends to prove anything: {}", acked.len());

    // Every member must end up with every acknowledged message.
    let clients: Vec<Client> = USERS.iter().map(|u| net.client(u)).collect();
    let want: HashSet<&str> = acked.iter().map(|s| s.id.as_str()).collect();
    let t_conv = Instant::now();
    let mut histories: Vec<Vec<MessageView>>;
    loop {
        histories = clients.iter().map(|c| all_messages(c, &conv)).collect();
        let complete = histories.iter().all(|h| {
            let have: HashSet<&str> = h.iter().map(|m| m.id.as_str()).collect();
            want.iter().all(|w| have.contains(w))
        });
        if complete || t_conv.elapsed() > CONVERGE {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("convergence: {:.1} s", t_conv.elapsed().as_secs_f64());

    let by_id: HashMap<&str, &Sent> = sent.iter().map(|s| (s.id.as_str(), s)).collect();
    let attempted: HashSet<&str> =
        sent.iter().map(|s| s.text.as_str()).chain(failed.iter().map(|f| f.0.as_str())).collect();
    let mut report = String::new();
    for (u, h) in USERS.iter().zip(&histories) {
        let mut pos: HashMap<&str, usize> = HashMap::new();
        let mut texts: HashMap<&str, &str> = HashMap::new();
        for (i, m) in h.iter().enumerate() {
            if pos.insert(m.id.as_str(), i).is_some() {
                writeln!(report, "{u} has message {} ({:?}) twice", m.id, m.text).unwrap();
            }
            if let Some(other) = texts.insert(m.text.as_str(), m.id.as_str())
                && other != m.id
            {
                writeln!(report, "{u} has text {:?} under two ids: {other} and {}", m.text, m.id).unwrap();
            }
            if !attempted.contains(m.text.as_str()) {
                writeln!(report, "{u} shows {} ({:?}), which nobody sent", m.id, m.text).unwrap();
            }
            if let Some(s) = by_id.get(m.id.as_str())
                && s.text != m.text
            {
                writeln!(report, "{u}: {} reads {:?}, sent as {:?}", m.id, m.text, s.text).unwrap();
            }
        }
        for (i, m) in h.iter().enumerate() {
            for p in &m.parents {
                if let Some(&j) = pos.get(p.as_str())
                    && j > i
                {
                    writeln!(report, "{u}: message {} comes before its parent {p}", m.id).unwrap();
                }
            }
        }
        // Parents this member's messages name but it does not hold: who has them, and was
        // their send acknowledged or cut off by a kill?
        let mut absent: Vec<&str> = h
            .iter()
            .flat_map(|m| m.parents.iter().map(String::as_str))
            .filter(|p| !pos.contains_key(p))
            .collect();
        absent.sort_unstable();
        absent.dedup();
        for p in absent.iter().take(5) {
            let holders: Vec<&str> = USERS
                .iter()
                .zip(&histories)
                .filter(|(_, h)| h.iter().any(|m| m.id == *p))
                .map(|(u, _)| *u)
                .collect();
            let text = histories.iter().flatten().find(|m| m.id == *p).map(|m| m.text.as_str());
            let fate = match (by_id.get(p), text.and_then(|t| failed.iter().find(|f| f.0 == t))) {
                (Some(s), _) => format!("its send was answered {:?}", s.delivery),
                (None, Some(f)) => format!("its send (round {}) was cut off by a kill: {}", f.2, f.3),
                (None, None) => "not a send of this test".to_owned(),
            };
            writeln!(report, "{u} lacks parent {p} ({text:?}), held by {holders:?}; {fate}").unwrap();
        }
        let missing: Vec<&&Sent> = acked.iter().filter(|s| !pos.contains_key(s.id.as_str())).collect();
        if !missing.is_empty() {
            writeln!(
                report,
                "{u} misses {} of {} acknowledged messages ({} held):",
                missing.len(),
                acked.len(),
                h.len()
            )
            .unwrap();
        }
        for s in missing.iter().take(10) {
            let near: Vec<&Kill> = kills.iter().filter(|k| k.round.abs_diff(s.round) <= 1).collect();
            writeln!(
                report,
                "  {} {:?} from {} in round {}, answer {:?}; kills nearby: {near:?}",
                s.id, s.text, USERS[s.from], s.round, s.delivery
            )
            .unwrap();
        }
    }
    // Not required (their sends were not acknowledged), only reported: sends whose answer was
    // lost to a kill or said `sent`, and whether they arrived anyway.
    let unacked_everywhere = sent
        .iter()
        .filter(|s| !s.acknowledged())
        .filter(|s| histories.iter().all(|h| h.iter().any(|m| m.id == s.id)))
        .count();
    let cut_off_everywhere =
        failed.iter().filter(|f| histories.iter().all(|h| h.iter().any(|m| m.text == f.0))).count();
    println!(
        "not acknowledged: {} answered `sent` ({} of them at every member), {} cut off ({} of them at \
         every member); histories hold {:?} messages",
        sent.len() - acked.len(),
        unacked_everywhere,
        failed.len(),
        cut_off_everywhere,
        histories.iter().map(Vec::len).collect::<Vec<_>>(),
    );

    for (u, c) in USERS.iter().zip(&clients) {
        match c.verify(&conv) {
            Ok(v) if v.intact => {
                println!(
                    "{u}: verify intact ({} envelopes, {} signatures)",
                    v.envelopes, v.signatures_verified
                )
            }
            Ok(v) => {
                writeln!(report, "{u}: verify not intact: {:?} ({} problems)", v.first_problem, v.problems)
                    .unwrap()
            }
            Err(e) => writeln!(report, "{u}: verify failed: {e}").unwrap(),
        }
    }
    println!("total: {:.1} s", t0.elapsed().as_secs_f64());
    assert!(report.is_empty(), "seed {seed}:\n{report}");
}
