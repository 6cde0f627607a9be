//! `cairn up --light` (issue 17 §2) with real `cairn` processes on 127.0.0.1: a light user
//! (no gossip, serves nothing; mail over streams from two service nodes, own mail pushed to the
//! store nodes) registers, is invited by a full user, and the two converse both ways; one of
//! its service nodes is killed (SIGKILL) and the mail sent right after still arrives. A light
//! node cannot be a store node.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

mod common;

use cairn_node::client::{Client, read_run_file};
use cairn_node::model::TailQuery;
use common::{BIN, Net, wait_for};

const PASS: &str = "light passphrase";
const LOG: &str = "warn,cairn_net::node::light_client=info";

/// The service nodes ann's log says she opened streams to, primary first: `(peer id, primary)`.
fn opened_services(log: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = log
        .lines()
        .filter(|l| l.contains("service node stream open"))
        .filter_map(|l| {
            let from = l.find("12D3KooW")?; // the log may carry colour codes around it
            let id: String = l[from..].chars().take_while(char::is_ascii_alphanumeric).collect();
            Some((id, l.trim_end().ends_with("true")))
        })
        .collect();
    out.sort_by_key(|(_, primary)| !primary);
    out
}

fn read(c: &Client, conv: &str, text: &str) -> Option<()> {
    let q = TailQuery { after: None, limit: Some(100), wait_ms: None };
    c.messages(conv, &q).ok()?.into_iter().find(|m| m.text == text).map(|_| ())
}

#[test]
fn a_light_user_converses_with_a_full_user() {
    let mut net = Net::new(4);
    for i in 0..3 {
        let name = format!("store{i}");
        net.up(&name, PASS, LOG, &["--store"]);
        let run = read_run_file(&net.path(&name)).unwrap().unwrap();
        net.stores.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));
    }
    let ben = net.user_with("ben", PASS, LOG);
    net.init("ann", PASS);
    net.up("ann", PASS, LOG, &["--light"]);
    let ann = Client::for_home(&net.path("ann")).unwrap();
    wait_for("@ann registered", Duration::from_secs(120), || {
        ann.account("@ann").ok().filter(|a| a.proof_verified)
    });

    let conv = ben.create_conversation(&["@ann".into()]).unwrap().id;
    wait_for("ann (light) to join", Duration::from_secs(90), || {
        ann.conversations().ok()?.into_iter().find(|v| v.id == conv && v.active)
    });
    ben.send(&conv, "to a light client").unwrap();
    wait_for("ann to read ben's message", Duration::from_secs(60), || read(&ann, &conv, "to a light client"));
    ann.send(&conv, "from a light client").unwrap();
    wait_for("ben to read ann's message", Duration::from_secs(60), || {
        read(&ben, &conv, "from a light client")
    });

    let log = std::fs::read_to_string(net.path("ann.log")).unwrap();
    assert!(log.contains("light: service node stream open"), "no service stream in ann's log:\n{log}");

    // SIGKILL one of ann's service nodes (her primary if it is a store node): what ben sends
    // right after still reaches her.
    let services = opened_services(&log);
    let stores: Vec<(String, String)> = (0..3)
        .map(|i| {
            let name = format!("store{i}");
            (read_run_file(&net.path(&name)).unwrap().unwrap().peer_id, name)
        })
        .collect();
    let (victim, was_primary) = services
        .iter()
        .find_map(|(id, primary)| {
            stores.iter().find(|(s, _)| s == id).map(|(_, name)| (name.clone(), *primary))
        })
        .expect("a store node among ann's service nodes");
    let child = net.children.iter_mut().find(|(n, _)| *n == victim).unwrap();
    child.1.kill().unwrap();
    child.1.wait().unwrap();
    for i in 0..3 {
        ben.send(&conv, &format!("after the kill {i}")).unwrap();
    }
    for i in 0..3 {
        let text = format!("after the kill {i}");
        wait_for(&format!("ann to read {text:?}"), Duration::from_secs(60), || read(&ann, &conv, &text));
    }
    let log = std::fs::read_to_string(net.path("ann.log")).unwrap();
    assert_eq!(log.contains("primary service node gone"), was_primary, "{victim} killed:\n{log}");
    assert!(!log.contains("withheld"), "an honest service node was blamed:\n{log}");

    // A light node serves nothing, so it cannot be a store node.
    let out = Command::new(BIN)
        .arg("--home")
        .arg(net.path("bad"))
        .args(["up", "--light", "--store"])
        .env("CAIRN_PASSPHRASE", PASS)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--light") && err.contains("--store"), "{err}");
}
