//! `cairn contract …`, `cairn pay` and `cairn balance` against a real local network: 4
//! validator processes and a user node on 127.0.0.1 (the node registers the account; the CLI
//! signs and submits on its own, beside it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use cairn_contracts::shipped::escrow;
use cairn_node::client::read_run_file;
use common::{BIN, Net, cairn_at, refused_at, wait_for};

const PASS: &str = "contracts passphrase";

/// A module whose memory may grow to 100 pages (the ledger allows 64): refused at upload.
const TOO_MUCH_MEMORY: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x05, 0x04, 0x01, 0x01, 0x01, 0x64, // memory 1..100 pages
    0x06, 0x06, 0x01, 0x7f, 0x00, 0x41, 0x01, 0x0b, // global i32 = 1
    0x07, 0x19, 0x02, 0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, 0x0c, b'c', b'a', b'i', b'r',
    b'n', b'_', b'a', b'b', b'i', b'_', b'v', b'1', 0x03, 0x00,
];

fn ok(home: &Path, genesis: &Path, args: &[&str]) -> String {
    let out = cairn_at(home, genesis, PASS, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "cairn {args:?} failed: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The value after `label` on its line of `text`.
fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' in:\n{text}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn init(home: &Path) -> String {
    let st = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .arg("init")
        .env("CAIRN_PASSPHRASE", PASS)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(st.status.success());
    field(&String::from_utf8_lossy(&st.stdout), "account:")
}

fn balance_of(home: &Path, genesis: &Path, who: &str) -> u64 {
    let out = ok(home, genesis, &["balance", who]);
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn contracts_and_payments_from_the_command_line() {
    let mut net = Net::new(4);
    let g = net.genesis.clone();
    let ann = net.path("ann");
    let ann_id = init(&ann);
    // ann's node registers her account (the dev faucet funds it)
    let log = net.log("ann");
    let child = Command::new(BIN)
        .arg("--home")
        .arg(&ann)
        .arg("up")
        .arg("--genesis")
        .arg(&g)
        .env("CAIRN_PASSPHRASE", PASS)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    net.children.push(("ann".into(), child));
    wait_for("ann's node", Duration::from_secs(60), || {
        read_run_file(&ann).ok().flatten().filter(|r| r.pid == pid)
    });
    let funded = wait_for("ann's account funded", Duration::from_secs(120), || {
        let out = cairn_at(&ann, &g, PASS, &["balance"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().nth(1).and_then(|b| b.parse::<u64>().ok()).filter(|b| *b > 0)
    });
    assert!(ok(&ann, &g, &["balance"]).starts_with(&ann_id));
    // The node signs its device registration with the same account key as the CLI: wait until
    // it is on the ledger, or the two race for a nonce (found by a CI rehearsal: the payment
    // was dropped for its nonce and never finalized).
    let node = cairn_node::client::Client::for_home(&ann).unwrap();
    wait_for("ann's device on the ledger", Duration::from_secs(120), || {
        node.account(&ann_id).ok().filter(|a| !a.devices.is_empty())
    });

    // pay: bob has no account yet; the transfer creates it
    let bob = net.path("bob");
    let bob_id = init(&bob);
    let out = ok(&ann, &g, &["pay", &bob_id, "5000"]);
    assert!(out.contains("paid 5000"), "{out}");
    wait_for("bob's 5000", Duration::from_secs(20), || (balance_of(&ann, &g, &bob_id) == 5000).then_some(()));
    let after_pay = balance_of(&ann, &g, &ann_id);
    assert!(after_pay < funded - 5000, "the fee was paid too: {funded} -> {after_pay}");
    let err = refused_at(&ann, &g, PASS, &["pay", &bob_id, &u64::MAX.to_string()]);
    assert!(err.contains("insufficient balance") && err.contains("cairn pay"), "{err}");
    let err = refused_at(&ann, &g, PASS, &["pay", &ann_id, "1"]);
    assert!(err.contains("this account"), "{err}");

    // a module that breaks an upload rule is refused here, naming the rule
    let bad: PathBuf = net.path("bad.wasm");
    std::fs::write(&bad, TOO_MUCH_MEMORY).unwrap();
    let err = refused_at(&ann, &g, PASS, &["contract", "deploy", bad.to_str().unwrap()]);
    assert!(err.contains("refused before upload") && err.contains("64"), "{err}");

    // deploy, instantiate, execute and query the shipped escrow
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts/escrow.wasm");
    let out = ok(&ann, &g, &["contract", "deploy", wasm.to_str().unwrap()]);
    let code = field(&out, "code");
    assert_eq!(code, hex(&cairn_contracts::code_hash(escrow::WASM)));
    let err = refused_at(&ann, &g, PASS, &["contract", "instantiate", &"00".repeat(32)]);
    assert!(err.contains("deploy it first"), "{err}");
    let out = ok(&ann, &g, &["contract", "instantiate", &code]);
    let contract = field(&out, "contract");
    let bob_key = cairn_proto::AccountId::from_text(&bob_id).unwrap().0;
    let id = [7u8; 32];
    let open = hex(&escrow::open(&id, &bob_key, 1_000_000));
    ok(&ann, &g, &["contract", "execute", &contract, "--msg", &format!("0x{open}"), "--funds", "1234"]);
    // A query is answered from the state of whichever validator answers, which may not have
    // applied the block that finalized the execute yet (a CI rehearsal read "no escrow" once):
    // ask again for a bounded time, then require the answer.
    let query = ["contract", "query", &contract, "--msg", &hex(&escrow::query(&id))];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cairn_at(&ann, &g, PASS, &query).status.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = ok(&ann, &g, &query);
    let record = escrow::Record::decode(&output_bytes(&out)).unwrap();
    assert_eq!((record.status, record.amount, record.recipient), (escrow::Status::Open, 1234, bob_key));
    // the same escrow id again: the contract aborts, the funds come back, the error says why
    let before = balance_of(&ann, &g, &ann_id);
    let err =
        refused_at(&ann, &g, PASS, &["contract", "execute", &contract, "--msg", &open, "--funds", "1000000"]);
    assert!(err.contains("failed") && err.contains("nothing of the call was kept"), "{err}");
    // (a validator may answer from a block before the call's: wait until one shows the fee)
    let after = wait_for("the failed call's fee", Duration::from_secs(20), || {
        Some(balance_of(&ann, &g, &ann_id)).filter(|b| *b < before)
    });
    let lost = before - after;
    assert!(lost < 1_000_000, "only the fee is paid, the funds come back (lost {lost})");
    let err = refused_at(&ann, &g, PASS, &["contract", "call", &contract, "--msg", "zz"]);
    assert!(err.contains("neither hex"), "{err}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of a query's "output   N bytes  0xHEX" line.
fn output_bytes(out: &str) -> Vec<u8> {
    let line = out.lines().find(|l| l.starts_with("output")).unwrap_or_else(|| panic!("no output in {out}"));
    let h = line.split_whitespace().last().unwrap().trim_start_matches("0x");
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
}
