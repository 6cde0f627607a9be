//! The ledger through the same peers (issue 17 §1), with real `cairn` processes on 127.0.0.1:
//! a user node started with `--ledger-via-peers` never dials a validator, yet registers its
//! account and handle, reads proven answers, and orders the MLS commits of a conversation
//! with a user that dials the validators directly, all through a store node that relays its
//! ledger channels (end to end encrypted, answers proven at the user node).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod common;

use cairn_node::client::{Client, read_run_file};
use cairn_node::model::TailQuery;
use common::{Net, wait_for};

const PASS: &str = "relay passphrase";
const LOG: &str = "warn,cairn_node=info";

/// `cairn init --handle NAME`, then `cairn up` with `extra`; a client of the node.
fn user(net: &mut Net, name: &str, extra: &[&str]) -> Client {
    net.init(name, PASS);
    net.up(name, PASS, LOG, extra);
    Client::for_home(&net.path(name)).unwrap()
}

#[test]
fn a_node_that_dials_no_validator_registers_and_converses_through_a_relaying_peer() {
    let mut net = Net::new(4);
    // A store node relays ledger channels by default; its relay's stream ends are logged.
    net.up("relay", PASS, "warn,cairn_net::ledger_relay_io=debug", &["--store"]);
    let run = read_run_file(&net.path("relay")).unwrap().unwrap();
    net.stores.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));

    let ann = user(&mut net, "ann", &["--ledger-via-peers"]);
    // Registration, device, handle: transactions submitted and proven final through the relay.
    let me = wait_for("@ann registered through the relay", Duration::from_secs(120), || {
        ann.account("@ann").ok().filter(|a| a.proof_verified)
    });
    assert!(me.proof_verified);
    let ben = user(&mut net, "ben", &[]);
    wait_for("@ben registered", Duration::from_secs(120), || {
        ben.account("@ben").ok().filter(|a| a.proof_verified)
    });
    // ann resolves ben's handle with a proof, through the relay.
    let b = wait_for("@ben proven at ann", Duration::from_secs(60), || {
        ann.account("@ben").ok().filter(|a| a.proof_verified)
    });
    assert!(b.proof_verified);

    // A conversation: ann's commit is ordered on the ledger through the relay.
    let conv = ann.create_conversation(&["@ben".into()]).unwrap().id;
    wait_for("ben to join", Duration::from_secs(90), || {
        ben.conversations().ok()?.into_iter().find(|v| v.id == conv && v.active)
    });
    ann.send(&conv, "through a peer").unwrap();
    wait_for("ben to read ann's message", Duration::from_secs(60), || {
        let q = TailQuery { after: None, limit: Some(100), wait_ms: None };
        ben.messages(&conv, &q).ok()?.into_iter().find(|m| m.text == "through a peer")
    });

    let log = std::fs::read_to_string(net.path("relay.log")).unwrap();
    assert!(log.contains("ledger relay stream"), "the store node relayed no ledger stream:\n{log}");
}
