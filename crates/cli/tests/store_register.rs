//! `cairn store register|deregister` against a real local chain on 127.0.0.1: one validator
//! process, a store-only node (`cairn up --store`, whose key file the command reads) and a user
//! node that registers and funds (dev faucet) the paying account. The registered set is read
//! back through the ledger with a proof (`LedgerClient::stores`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;
use cairn_proto::AccountId;
use common::{BIN, Net, cairn_at, refused_at, wait_for};

const PASS: &str = "store register passphrase";

#[test]
fn a_store_node_is_registered_once_and_read_back_from_the_ledger() {
    let mut net = Net::new(1);
    let g = net.genesis.clone();
    let ann = net.path("ann");
    let init = Command::new(BIN)
        .arg("--home")
        .arg(&ann)
        .arg("init")
        .env("CAIRN_PASSPHRASE", PASS)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(init.status.success());
    let text = String::from_utf8_lossy(&init.stdout).into_owned();
    let ann_id = text.lines().find_map(|l| l.strip_prefix("account:")).unwrap().trim().to_owned();
    let ann_account = AccountId::from_text(&ann_id).unwrap();

    // not a store home: typed, says how to make one
    let empty = net.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = refused_at(&ann, &g, PASS, &["store", "register", "--store-home", empty.to_str().unwrap()]);
    assert!(err.contains("not a store node's home") && err.contains("up --store"), "{err}");
    // a user's home (sealed key file, or none) is not one either
    let err = refused_at(&ann, &g, PASS, &["store", "register", "--store-home", ann.to_str().unwrap()]);
    assert!(err.contains("not a store node's home"), "{err}");

    // the store node: its key file appears when it starts
    net.up("store", PASS, "warn", &["--store"]);
    let store = net.path("store");
    let key_file = store.join("net").join("node.key");
    wait_for("the store node's key file", Duration::from_secs(60), || key_file.exists().then_some(()));
    let seed = cairn_net::node::load_plain_seed(&key_file).unwrap();
    let node_key = cairn_proto::ed25519::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let store_arg = store.to_str().unwrap();

    // ann's account is not on the ledger yet: no funds, and the error says how to get them
    let err = refused_at(&ann, &g, PASS, &["store", "register", "--store-home", store_arg]);
    assert!(err.contains("cannot pay the store fee") && err.contains("faucet"), "{err}");

    // ann's node registers the account (the dev faucet funds it) and the device
    net.up("ann", PASS, "warn", &[]);
    let genesis = Genesis::load(&g).unwrap();
    let mut ledger = LedgerClient::new(&genesis).unwrap();
    wait_for("ann's account funded, device registered", Duration::from_secs(120), || {
        ledger
            .account(&ann_account)
            .ok()
            .flatten()
            .filter(|a| a.balance > 0 && !a.active_devices().is_empty())
    });

    // a user node's home has a key file now, sealed by its device key: not a store's
    let err = refused_at(&ann, &g, PASS, &["store", "register", "--store-home", ann.to_str().unwrap()]);
    assert!(err.contains("sealed") && err.contains("store-only node"), "{err}");

    let out = cairn_at(&ann, &g, PASS, &["store", "register", "--store-home", store_arg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "register failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&hex_of(&node_key)) && stdout.contains("registered at height"), "{stdout}");
    // the registered set, proven: this node, for ann
    let set = ledger.stores().unwrap();
    assert_eq!(set.entries.len(), 1, "{set:?}");
    let entry = set.get(&node_key).expect("the store node in the proven set");
    assert_eq!(entry.account, ann_account);

    // a second registration of the same node: refused, typed, nothing changed
    let err = refused_at(&ann, &g, PASS, &["store", "register", "--store-home", store_arg]);
    assert!(err.contains("already registered"), "{err}");
    assert_eq!(ledger.stores().unwrap(), set);

    // deregistered: the set is empty again; a second deregistration is typed too
    let out = cairn_at(&ann, &g, PASS, &["store", "deregister", "--store-home", store_arg]);
    assert!(out.status.success(), "deregister failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(ledger.stores().unwrap().get(&node_key).is_none());
    let err = refused_at(&ann, &g, PASS, &["store", "deregister", "--store-home", store_arg]);
    assert!(err.contains("not registered by this account"), "{err}");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
