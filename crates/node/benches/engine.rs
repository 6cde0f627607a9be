//! `cargo bench -p cairn-node --bench engine`: the user node's engine (MLS, node tables,
//! decision core) on real redb files, without the network, in two scenarios of the node-core
//! goals:
//! - one receiver in a 10-member group reads a burst of 10,000 messages (bursts of 512: one
//!   MLS batch and one transaction each), and the sender's rate writing them;
//! - a node holding 100 conversations × 1,000 messages restarts (a fresh process opens the
//!   files and loads every conversation): time to ready and peak RSS.
//!
//! Prints a table; medians of `CAIRN_BENCH_RUNS` runs (default 3).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cairn_crypto::Identity;
use cairn_mls::{KeyPackageBatch, MemorySequencer};
use cairn_node::engine::{Arrival, Engine, EngineConfig, IdentityKeys, Io};
use cairn_proto::envelope::unpad;
use cairn_proto::pow::Difficulty;
use cairn_proto::{Envelope, Limits, Message};
use cairn_store::Store;

/// The `cairn` binary's allocator, so that the restart row's RSS is the node's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Node {
    engine: Engine,
    history: Arc<Store>,
}

fn open(dir: &Path, id: &Identity) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let limits = Limits::default();
    let cache = cairn_node::engine::NODE_DB_CACHE_BYTES;
    let db = Arc::new(redb::Builder::new().set_cache_size(cache).create(dir.join("node.redb")).unwrap());
    let history = Arc::new(Store::open(&dir.join("history.redb"), limits).unwrap());
    let mut cfg = EngineConfig::new(limits);
    cfg.difficulty = Difficulty { base_bits: 0 };
    // the bench's nodes invite each other without a consent step
    cfg.invitations = cairn_node::engine::Invitations::Everyone;
    Node { engine: Engine::open(db, history.clone(), IdentityKeys::of(id), cfg).unwrap(), history }
}

/// Envelopes the engine published (kept in its history, as the mesh does).
fn published(n: &mut Node) -> Vec<Envelope> {
    let mut out = Vec::new();
    for io in n.engine.take_io() {
        if let Io::Publish(env) = io {
            out.push(*env);
        }
    }
    n.history.append(&out).unwrap();
    out
}

fn key_package(n: &mut Node) -> cairn_mls::VerifiedKeyPackage {
    let env = n.engine.key_package_envelope(1, 3600, now()).unwrap();
    let m = Message::decode(unpad(env.payload.as_deref().unwrap()).unwrap(), &Limits::default()).unwrap();
    let batch = KeyPackageBatch::decode(&m.body).unwrap();
    cairn_mls::verify_key_package(&batch.packages[0]).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn arrivals(envs: Vec<Envelope>) -> Vec<Arrival> {
    envs.into_iter().map(|e| Arrival { id: e.id(), envelope: e, after_gap: false }).collect()
}

/// This process's CPU time (user + system) and bytes written to storage so far.
fn cpu_and_writes() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    let cpu = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let written = io
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu as f64 * 10.0, written)
}

/// (send msg/s, receive msg/s) for one burst.
fn burst(messages: usize, members: usize) -> (f64, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let mut seq = MemorySequencer::new();
    let ids: Vec<Identity> = (0..members).map(|_| Identity::generate(now()).unwrap()).collect();
    let mut nodes: Vec<Node> =
        ids.iter().enumerate().map(|(i, id)| open(&tmp.path().join(format!("n{i}")), id)).collect();
    for n in nodes.iter_mut() {
        n.engine.start(&mut seq, now()).unwrap();
        n.engine.take_io();
    }
    let kps = (1..members).map(|i| key_package(&mut nodes[i])).collect();
    let (conv, _) = nodes[0].engine.create(kps, &mut seq, now()).unwrap();
    let welcome = published(&mut nodes[0]);
    nodes[1].engine.receive(arrivals(welcome), &mut seq, now());
    nodes[1].engine.take_io();
    assert!(nodes[1].engine.conversations().contains(&conv), "the receiver joined");
    let t = Instant::now();
    let (cpu0, written0) = cpu_and_writes();
    let mut sent = Vec::with_capacity(messages);
    for i in 0..messages {
        nodes[0].engine.send_text(conv, &format!("message {i} of the burst"), &mut seq, now()).unwrap();
        sent.extend(published(&mut nodes[0]));
    }
    let send_rate = messages as f64 / t.elapsed().as_secs_f64();
    if std::env::var_os("CAIRN_BENCH_SEND_ONLY").is_some() {
        let (cpu1, written1) = cpu_and_writes();
        let per = |v: f64| v / messages as f64;
        println!(
            "send: {send_rate:.0} msg/s, {:.2} ms CPU/send, {:.1} KiB written/send",
            per(cpu1 - cpu0),
            per((written1 - written0) as f64) / 1024.0
        );
        return (send_rate, 0.0);
    }
    let receiver = &mut nodes[1];
    for chunk in sent.chunks(512) {
        receiver.history.append(chunk).unwrap();
    }
    let t = Instant::now();
    let all = arrivals(sent);
    for chunk in all.chunks(512) {
        receiver.engine.receive(chunk.to_vec(), &mut seq, now());
        receiver.engine.take_io();
    }
    let recv_rate = messages as f64 / t.elapsed().as_secs_f64();
    let stored = receiver.engine.db().count(&conv.0).unwrap();
    assert_eq!(stored as usize, messages, "every message decrypted and stored");
    (send_rate, recv_rate)
}

/// Writes `convs` conversations × `messages` messages into `dir` (one node, one other member).
fn fill(dir: &Path, convs: usize, messages: usize) {
    let mut seq = MemorySequencer::new();
    let a = Identity::generate(now()).unwrap();
    let b = Identity::generate(now()).unwrap();
    std::fs::write(
        dir.join("identity"),
        a.account_key
            .as_ref()
            .unwrap()
            .as_bytes()
            .iter()
            .chain(a.device_key.as_bytes())
            .copied()
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let mut na = open(&dir.join("a"), &a);
    let mut nb = open(&dir.join("b"), &b);
    na.engine.start(&mut seq, now()).unwrap();
    nb.engine.start(&mut seq, now()).unwrap();
    for _ in 0..convs {
        let kp = key_package(&mut nb);
        let (conv, _) = na.engine.create(vec![kp], &mut seq, now()).unwrap();
        published(&mut na);
        for i in 0..messages {
            na.engine.send_text(conv, &format!("message {i}"), &mut seq, now()).unwrap();
        }
        published(&mut na);
    }
    // A running node ticks (every second): its replay cursors move over what was written.
    na.engine.tick(&mut seq, now());
    na.engine.make_durable().unwrap();
    na.engine.take_io();
    std::fs::write(dir.join("cert"), a.cert.encode()).unwrap();
}

fn rss_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// In a fresh process: open `dir/a` and load every conversation; prints "ms hwm_kib".
fn restart_child(dir: &Path) {
    let keys = std::fs::read(dir.join("identity")).unwrap();
    let cert = cairn_proto::DeviceCert::decode(&std::fs::read(dir.join("cert")).unwrap()).unwrap();
    let account_key = ed25519_dalek::SigningKey::from_bytes(&keys[..32].try_into().unwrap());
    let device_key = ed25519_dalek::SigningKey::from_bytes(&keys[32..64].try_into().unwrap());
    let id = Identity { account_key: Some(account_key), device_key, cert };
    let mut seq = MemorySequencer::new();
    let t = Instant::now();
    let mut n = open(&dir.join("a"), &id);
    n.engine.start(&mut seq, now()).unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    println!("{ms:.1} {}", rss_kib("VmHWM:"));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--restart-child") {
        restart_child(Path::new(&args[i + 1]));
        return;
    }
    let runs: usize = std::env::var("CAIRN_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (mut sends, mut recvs) = (Vec::new(), Vec::new());
    // CAIRN_BENCH_SEND_ONLY=N: only the sender's part, N messages per run, with its CPU time
    // and bytes written per send (what a storage change costs, apart from the disk's noise).
    if let Some(n) = std::env::var("CAIRN_BENCH_SEND_ONLY").ok().and_then(|v| v.parse().ok()) {
        for _ in 0..runs {
            sends.push(burst(n, 10).0);
        }
        println!("sender writes {n} (msg/s, median of {runs}): {:.0}", median(&mut sends));
        return;
    }
    for _ in 0..runs {
        let (s, r) = burst(10_000, 10);
        sends.push(s);
        recvs.push(r);
    }
    println!("engine bench (release, redb with fsync on this disk, no network), medians of {runs} runs");
    println!("scenario                                              value");
    println!("10-member group: sender writes 10,000 (msg/s)         {:>8.0}", median(&mut sends));
    println!("10-member group: one receiver reads the burst (msg/s) {:>8.0}", median(&mut recvs));
    // The 100,000 sends that fill the node are written on tmpfs (one fsync each on this disk
    // would take minutes); the restart then measures the node's own work, not the disk.
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let tmp = tempfile::tempdir_in(base).unwrap();
    let (convs, messages) = (100, 1_000);
    fill(tmp.path(), convs, messages);
    let exe = std::env::current_exe().unwrap();
    let (mut times, mut hwms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = std::process::Command::new(&exe).arg("--restart-child").arg(tmp.path()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        times.push(parts.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN));
        hwms.push(parts.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0);
    }
    println!(
        "restart with {convs} conversations × {messages} messages: ready (ms)   {:>8.0}",
        median(&mut times)
    );
    println!(
        "restart with {convs} conversations × {messages} messages: peak RSS (MB) {:>8.1}",
        median(&mut hwms)
    );
    // CAIRN_BENCH_KEEP=1 keeps the filled node for a profiler (`<bench> --restart-child DIR`).
    if std::env::var_os("CAIRN_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
}
