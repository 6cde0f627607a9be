#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Real processes on 127.0.0.1: four `cairn ledger validator` processes finalize together while
//! two of them run with their clocks ±110 s off (libfaketime, wall clock only), 220 s apart
//! from each other. With 4 validators a block needs 3, so blocks at every validator prove that
//! the skewed ones take part. Every child is killed when the test ends, pass or fail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;
use common::Net;

const FAKETIME_LIBS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
];

#[test]
fn validators_with_clocks_two_minutes_off_still_finalize_together() {
    let Some(lib) = FAKETIME_LIBS.into_iter().find(|l| Path::new(l).exists()) else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime)");
        return;
    };
    let mut net = Net::chain(4);
    for (i, skew) in [None, None, Some("+110"), Some("-110")].into_iter().enumerate() {
        match skew {
            Some(s) => net.validator_env(
                i,
                &[("LD_PRELOAD", lib), ("FAKETIME", s), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
            ),
            None => net.validator(i),
        }
    }
    let mut client = LedgerClient::new(&Genesis::load(&net.genesis).unwrap()).unwrap();
    let start = Instant::now();
    let mut heights = vec![None; 4];
    while !heights.iter().all(|h| h.is_some_and(|h: u64| h >= 3)) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "heights {heights:?} after 120 s: the skewed validators did not join (logs kept)"
        );
        std::thread::sleep(Duration::from_millis(200));
        for (i, h) in heights.iter_mut().enumerate() {
            if let Ok(s) = client.status_at(i) {
                *h = Some(s.height);
            }
        }
    }
}
