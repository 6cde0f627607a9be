//! The CI-sized fault campaign (issue 17 §3): `cairn bench faults` with 3 scenarios of a seed
//! whose scenarios together drop 1–30% of packets, delay by 200 ± 100 ms (every connection,
//! validator-to-validator ones included, which the campaign checks at set-up), partition and heal,
//! and SIGKILL and restart a process with its clock skewed — on 4 validators, 3 store nodes
//! and 5 users in one group, each in its own network namespace that the run creates (and
//! deletes). It must end with every acknowledged message at every member exactly once, no
//! group fork and no ledger fork.
//!
//! Needs root, iproute2 and iptables (`.ci/run` installs them). Where namespaces cannot be
//! made the test says why (on stderr, `faults: SKIPPED: …`) and passes without running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seed whose first three scenarios cover loss, delay, a partition and a SIGKILL with a
/// skewed clock (checked by `faults::scenario`'s unit test `ci_seed_covers_every_fault`).
const SEED: &str = "1";
const SCENARIOS: &str = "3";
/// The whole run's bound (set-up included); the campaign bounds each wait itself.
const LIMIT: Duration = Duration::from_secs(420);
const SKIPPED: i32 = 77;

#[test]
fn faults_heal_without_loss_duplicates_or_forks() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "faults", "--fault-scenarios", SCENARIOS, "--fault-seed", SEED, "--fault-users", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > LIMIT {
            // SIGKILL of the campaign: its namespaces are removed by the next run (they name
            // its pid), its nodes die with their namespace's processes below.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the campaign did not finish within {LIMIT:?}:\n{}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap();
    println!("{out}");
    if status.code() == Some(SKIPPED) {
        // The rule: where namespaces are not permitted, say so and skip. Under CI the
        // log says which case it is in (.ci/run probes namespaces before the tests).
        eprintln!(
            "faults: SKIPPED: network namespaces are not permitted on this machine (see the line above)"
        );
        return;
    }
    assert!(status.success(), "the campaign failed ({status}):\n{out}");
    let last = out.lines().find(|l| l.starts_with("faults: scenarios=")).expect("the campaign's totals line");
    let field = |k: &str| -> u64 {
        last.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {last}"))
    };
    assert_eq!(field("scenarios"), 3);
    assert_eq!(field("passed"), 3);
    assert_eq!((field("lost"), field("duplicated")), (0, 0), "{last}");
    assert_eq!((field("group_forks"), field("ledger_forks"), field("unhealed")), (0, 0, 0), "{last}");
    assert!(field("messages") >= 5, "too few acknowledged messages to prove anything: {last}");
    assert_eq!(field("ledger_checked"), 3, "every scenario's ledger compared at one height: {last}");
}
