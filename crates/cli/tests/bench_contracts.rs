//! `cairn bench contracts` in a tiny configuration (4 validator processes on 127.0.0.1): the
//! table has every row, with non-zero rates, fuel where a call runs code, and a transfer that
//! costs less than an escrow call. No timing goal is checked here (speed lives in the bench).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

mod common;

use common::BIN;

/// One table row: its cells (columns are separated by two or more spaces).
fn cells(line: &str) -> Vec<String> {
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()
}

fn row<'a>(rows: &'a [Vec<String>], what: &str, place: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == what && r[1].starts_with(place))
        .unwrap_or_else(|| panic!("no row '{what}' on '{place}' in {rows:?}"))
}

fn rate(r: &[String]) -> f64 {
    r[2].strip_suffix("/s").unwrap().parse().unwrap()
}

fn num(cell: &str) -> Option<u64> {
    cell.parse().ok()
}

#[test]
fn the_contracts_bench_prints_sane_figures() {
    let out = Command::new(BIN)
        .args(["bench", "contracts", "--verdicts", "600", "--contract-txs", "40", "--rounds", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the bench failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("[bench contracts] ledger round 1/1"), "no progress lines: {stderr}");
    let table: Vec<Vec<String>> =
        stdout.lines().skip_while(|l| !l.starts_with("what")).skip(1).map(cells).collect();
    assert_eq!(table.len(), 8, "{stdout}");
    for r in &table {
        assert_eq!(r.len(), 7, "a row lacks a column: {r:?}");
        let v = rate(r);
        assert!(v.is_finite() && v > 0.0, "zero rate in {r:?}");
    }
    for name in ["policy verdict: rate limit", "policy verdict: roles + rate limit + 3-word filter"] {
        let r = row(&table, name, "1 core");
        assert!(num(&r[5]).unwrap() > 1_000, "a verdict runs the module: {r:?}");
        assert_eq!(r[6], "—", "a policy verdict pays no fee: {r:?}");
    }
    let hs = row(&table, "policy judgement: non-admin removal", "1 core");
    assert!(num(&hs[5]).unwrap() > 0, "{hs:?}");
    for place in ["4 validator processes", "state machine"] {
        let what = |w: &str| if place.starts_with('4') { format!("{w}, finalized") } else { w.to_owned() };
        let open = row(&table, &what("escrow open (Execute)"), place);
        let transfer = row(&table, &what("transfer"), place);
        let (open_fuel, open_fee) = (num(&open[5]).unwrap(), num(&open[6]).unwrap());
        assert!(open_fuel > 0, "{open:?}");
        assert_eq!(num(&transfer[5]), Some(0), "a transfer runs no code: {transfer:?}");
        let transfer_fee = num(&transfer[6]).unwrap();
        assert!(transfer_fee > 0 && transfer_fee < open_fee, "{transfer:?} vs {open:?}");
        // the fee is the bytes plus the fuel: at least the fuel (1 unit per fuel by default)
        assert!(open_fee >= open_fuel, "{open:?}");
    }
    // a release checks the device's signature on the receipt: it runs, and costs more than a transfer
    let release = row(&table, "escrow release on a delivery receipt (Execute)", "state machine");
    assert!(num(&release[5]).unwrap() > 0, "{release:?}");
    assert!(num(&release[6]).unwrap() > num(&row(&table, "transfer", "state machine")[6]).unwrap());
    // the ledger figures and the state machine's agree on the fuel of an open (deterministic)
    assert_eq!(
        row(&table, "escrow open (Execute), finalized", "4 validator")[5],
        row(&table, "escrow open (Execute)", "state machine")[5]
    );
}
