#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Real processes on 127.0.0.1: four `cairn ledger validator` processes finalize together while
//! two of them run with their clocks ±110 s off (libfaketime, wall clock only), 220 s apart
//! from each other. With 4 validators a block needs 3, so blocks at every validator prove that
//! the skewed ones take part. Every child is killed when the test ends, pass or fail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;

const FAKETIME_LIBS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
];

/// Kills every child on drop.
struct Cluster(Vec<Child>);

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_validator(dir: &Path, i: usize, skew: Option<(&str, &str)>) -> Child {
    let log = std::fs::File::create(dir.join(format!("validator-{i}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["ledger", "validator", "--genesis"])
        .arg(dir.join("genesis.txt"))
        .arg("--key")
        .arg(dir.join(format!("validator-{i}.key")))
        .arg("--data")
        .arg(dir.join(format!("data-{i}")));
    if let Some((lib, offset)) = skew {
        cmd.env("LD_PRELOAD", lib).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    cmd.stdout(Stdio::from(log.try_clone().unwrap())).stderr(Stdio::from(log)).spawn().unwrap()
}

#[test]
fn validators_with_clocks_two_minutes_off_still_finalize_together() {
    let Some(lib) = FAKETIME_LIBS.into_iter().find(|l| Path::new(l).exists()) else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Below the kernel's ephemeral range (32768+), and checked free.
    let base_port = (0..400u32)
        .map(|i| 21_000 + ((std::process::id() + i * 13) % 1_100) as u16 * 10)
        .find(|b| (0..8).all(|k| std::net::TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
        .expect("8 free ports below 32768");
    let addrs: Vec<String> = (0..4).map(|i| format!("127.0.0.1:{}", base_port + 2 * i)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["ledger", "genesis", "--validators", "4", "--addr", &addrs.join(","), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "genesis: {}", String::from_utf8_lossy(&out.stderr));
    let genesis = Genesis::load(&dir.path().join("genesis.txt")).unwrap();
    let skews = [None, None, Some((lib, "+110")), Some((lib, "-110"))];
    let _cluster = Cluster((0..4).map(|i| spawn_validator(dir.path(), i, skews[i])).collect());
    let mut client = LedgerClient::new(&genesis).unwrap();
    let start = Instant::now();
    let mut heights = vec![None; 4];
    while !heights.iter().all(|h| h.is_some_and(|h: u64| h >= 3)) {
        let logs: Vec<String> = (0..4)
            .map(|i| {
                std::fs::read_to_string(dir.path().join(format!("validator-{i}.log"))).unwrap_or_default()
            })
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "heights {heights:?} after 120 s: the skewed validators did not join (logs: {:?})",
            logs.iter().map(|l| l.lines().rev().take(3).collect::<Vec<_>>()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
        for (i, h) in heights.iter_mut().enumerate() {
            if let Ok(s) = client.status_at(i) {
                *h = Some(s.height);
            }
        }
    }
}
