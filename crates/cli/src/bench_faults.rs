//! `cairn bench faults`: the fault campaign (issue 17 §3) — scenarios drawn from a seed, run
//! one after another on one cluster in network namespaces, then the table: scenarios,
//! messages, lost, duplicated, forks, time to heal p50/p99. Needs root, iproute2 and iptables
//! (and libfaketime for clock skew); where namespaces cannot be made it says why and exits
//! with [`SKIPPED`].
//!
//! `CAIRN_FAULTS_VALIDATOR_DELAY=0` leaves validator-to-validator traffic undelayed (loss and
//! partitions still apply), to compare a campaign with and without that delay on one build.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::faults::cluster::Cluster;
use crate::faults::scenario::{Scenario, Topology};
use crate::faults::stats::{Row, table, totals};

/// Exit code when network namespaces are not permitted here (nothing ran).
pub(crate) const SKIPPED: i32 = 77;

/// Runs `scenarios` scenarios of campaign `seed` with `users` users (4 validators, 3 store
/// nodes); fails when any scenario lost, duplicated or forked anything, or did not heal.
pub(crate) fn run(scenarios: usize, seed: u64, users: usize) -> Result<()> {
    if let Some(why) = crate::faults::netns::unavailable() {
        println!("faults: skipped: {why}");
        std::process::exit(SKIPPED);
    }
    if !(2..=10).contains(&users) {
        bail!("--fault-users must be 2 to 10");
    }
    let topo = Topology { validators: 4, stores: 3, users };
    let exe = std::env::current_exe()?;
    let t0 = Instant::now();
    let mut log = |l: &str| eprintln!("[faults] {l}");
    let validator_delay = std::env::var("CAIRN_FAULTS_VALIDATOR_DELAY").map_or(true, |v| v != "0");
    println!(
        "fault campaign: seed {seed}, {scenarios} scenarios, {} validators, {} store nodes, {} users in one group, each in its own network namespace; delay between validators {}",
        topo.validators,
        topo.stores,
        topo.users,
        if validator_delay { "on" } else { "off" }
    );
    let mut cluster = Cluster::start(topo, &exe, validator_delay, &mut log)?;
    println!("set-up: {:.1} s", t0.elapsed().as_secs_f64());
    let mut rows: Vec<Row> = Vec::new();
    let mut failure = None;
    for i in 0..scenarios {
        let s = Scenario::generate(seed, i, &topo);
        log(&s.describe());
        match cluster.run(&s) {
            Ok(r) => {
                log(&format!(
                    "scenario {i}: {} sent, {} acknowledged so far, {} lost, {} duplicated, heal {:?} ms{}",
                    r.sent,
                    r.verdict.messages,
                    r.verdict.lost,
                    r.verdict.duplicated,
                    r.heal_ms,
                    [r.verdict.group_forks.clone(), r.verdict.ledger_forks.clone()].concat().join("; ")
                ));
                rows.push(r);
            }
            Err(e) => {
                failure = Some(format!("scenario {i} could not run: {e:#}"));
                break;
            }
        }
    }
    print!("{}", table(&rows));
    println!("total: {:.1} s", t0.elapsed().as_secs_f64());
    let t = totals(&rows);
    if failure.is_some() || t.passed < t.scenarios {
        if let Some(kept) = cluster.keep() {
            println!("logs and data kept in {}", kept.display());
        }
        bail!(
            "{}the campaign (seed {seed}) found {} lost, {} duplicated, {} group forks, {} ledger forks, {} unhealed",
            failure.map(|f| format!("{f}; ")).unwrap_or_default(),
            t.lost,
            t.duplicated,
            t.group_forks,
            t.ledger_forks,
            t.unhealed
        );
    }
    Ok(())
}

/// `cairn bench faults-proxy --fault-conf FILE` (started by the campaign inside each namespace).
pub(crate) fn proxy(conf: Option<&Path>) -> Result<()> {
    let Some(conf) = conf else { bail!("faults-proxy needs --fault-conf FILE") };
    crate::faults::proxy::run(conf)
}
