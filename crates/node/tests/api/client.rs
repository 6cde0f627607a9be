//! The blocking client round trip: run file, token file, every call, errors, shutdown.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_node::client::{self, Client, ClientError};
use cairn_node::model::{DeviceAddRequest, RunFile, TailQuery};

use crate::TOKEN;
use crate::harness::start;

#[test]
fn client_round_trip_through_the_run_file() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().display().to_string();
    let no_node =
        format!("no node running for --home {h}: start one with `cairn up --home {h}` (or `cairn dev`)");
    assert_eq!(Client::for_home(home.path()).unwrap_err().to_string(), no_node, "no run file");

    let s = start();
    let token = client::load_or_create_token(home.path()).unwrap();
    assert_ne!(token, TOKEN, "a fresh token is random");
    // This server uses TOKEN; write it as the home's token file for the client.
    std::fs::remove_file(home.path().join(client::TOKEN_FILE)).unwrap();
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(home.path().join(client::TOKEN_FILE))
            .unwrap();
        f.write_all(TOKEN.as_bytes()).unwrap();
    }
    let run = RunFile { api: s.url(""), p2p: vec![], peer_id: "12D3Koo".into(), pid: std::process::id() };
    client::write_run_file(home.path(), &run).unwrap();
    let c = Client::for_home(home.path()).unwrap();

    let st = c.status().unwrap();
    assert_eq!((st.account.as_str(), st.ledger_height), ("cairn1me", Some(7)));
    let conv = c.create_conversation(&["cairn1bob".into(), "@carol".into()]).unwrap();
    assert_eq!(conv.members.len(), 2);
    assert_eq!(c.conversations().unwrap(), vec![conv.clone()]);
    assert_eq!(c.conversation(&conv.id[..8]).unwrap().id, conv.id, "unique prefix");
    let more = c.add_members(&conv.id, &["@dave".into()]).unwrap();
    assert_eq!((more.members.len(), more.epoch), (3, 2));
    let less = c.remove_member(&conv.id, "@dave").unwrap();
    assert_eq!(less.members.len(), 2);
    let sent = c.send(&conv.id, "hi / there?&").unwrap();
    assert_eq!(sent.delivery.stored_on, 2);
    let msgs = c.messages(&conv.id, &TailQuery { after: None, limit: None, wait_ms: None }).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text, "hi / there?&");
    // Long poll: nothing after seq 1 yet; a send from another thread releases it.
    let (c2, id2) = (c.clone(), conv.id.clone());
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.send(&id2, "second").unwrap()
    });
    let t0 = Instant::now();
    let polled =
        c.messages(&conv.id, &TailQuery { after: Some(1), limit: Some(10), wait_ms: Some(2_500) }).unwrap();
    sender.join().unwrap();
    assert_eq!(polled.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["second"]);
    assert!(t0.elapsed() < Duration::from_millis(2_400), "released by the send, not the timeout");
    let v = c.verify(&conv.id).unwrap();
    assert!(v.intact);
    assert_eq!(v.envelopes, 2);
    assert_eq!(c.claim_handle("alice").unwrap().height, 8);
    let d = c.add_device(&DeviceAddRequest { home: "/tmp/other".into(), passphrase: "pw".into() }).unwrap();
    assert_eq!(c.devices().unwrap().len(), 2);
    assert_eq!(c.revoke_device(&d.device).unwrap().height, 9);
    assert_eq!(c.ledger_status().unwrap().validators[0].height, Some(9));
    assert!(c.account("@alice").unwrap().proof_verified);
    c.leave(&conv.id).unwrap();
    assert!(!c.conversation(&conv.id).unwrap().active);

    // Server errors carry the server's message.
    match c.leave(&conv.id).unwrap_err() {
        ClientError::Api { status, code, message } => {
            assert_eq!((status, code.as_str(), message.as_str()), (409, "conflict", "already left"));
        }
        e => panic!("unexpected {e:?}"),
    }
    let e = c.account("@nobody").unwrap_err();
    assert_eq!(e.to_string(), "no account @nobody");
    let e = c.claim_handle("taken").unwrap_err();
    assert_eq!(e.to_string(), "handle @taken belongs to another account");

    // Shutdown: accepted, and the server (whose shutdown future the fake completes) stops.
    c.shutdown().unwrap();
    assert_eq!(s.fake.shutdowns.load(Ordering::SeqCst), 1);
    let task = s.task;
    let served = s.rt.block_on(async move { tokio::time::timeout(Duration::from_secs(10), task).await });
    served.expect("server stopped within 10 s").unwrap().unwrap();
    // Now the port refuses: the client says no node runs.
    assert_eq!(c.status().unwrap_err().to_string(), no_node);

    client::remove_run_file(home.path()).unwrap();
    assert_eq!(Client::for_home(home.path()).unwrap_err().to_string(), no_node);
}

#[test]
fn wrong_token_from_the_client_is_reported() {
    let s = start();
    let c = Client::new(&s.url(""), "nope", Path::new("/x"));
    match c.status().unwrap_err() {
        ClientError::Api { status: 401, code, .. } => assert_eq!(code, "unauthorized"),
        e => panic!("unexpected {e:?}"),
    }
}
