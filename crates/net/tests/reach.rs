//! Joining when others try to stop it, on 127.0.0.1: bootstrap by DNS name, a node that can
//! only dial out receives through a relay, and a node reachable only over WebSocket takes part
//! in the mesh. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::Multiaddr;
use cairn_net::node::{NodeConfig, NodeHandle, WsTls, start};
use cairn_proto::{Id, Topic};
use tokio::time::{Instant, sleep};

mod common;
use common::{cfg, collect, mined};

/// Waits until `n` has at least `k` connected peers, or panics after `secs`.
async fn wait_peers(n: &NodeHandle, k: usize, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while n.status().await.unwrap().peers < k {
        assert!(Instant::now() < deadline, "{what}: fewer than {k} peers after {secs} s");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A node listening on `listen` only.
fn node(dir: &std::path::Path, name: &str, listen: &[&str]) -> NodeConfig {
    let mut c = cfg(dir, name);
    c.listen = listen.iter().map(|a| a.parse().unwrap()).collect();
    c
}

/// The listen address of `n` whose text contains `part`.
fn addr_with(n: &NodeHandle, part: &str) -> Multiaddr {
    n.listen_addrs.iter().find(|a| a.to_string().contains(part)).unwrap().clone()
}

/// `/ip4/127.0.0.1/tcp/P[/ws]/p2p/ID` as `/dns4/localhost/tcp/P[/ws]/p2p/ID`.
fn by_name(a: &Multiaddr) -> Multiaddr {
    let text = a.to_string();
    assert!(text.starts_with("/ip4/127.0.0.1/"), "{text}");
    text.replacen("/ip4/127.0.0.1/", "/dns4/localhost/", 1).parse().unwrap()
}

/// Waits for the mesh of `topic` to carry an envelope from `from` to every one of `to`.
async fn delivered(from: &NodeHandle, to: &[&NodeHandle], topic: Topic, body: &str) {
    let mut rxs: Vec<_> = to.iter().map(|n| n.events()).collect();
    let id: Id = from.publish(mined(topic, body, vec![])).await.unwrap();
    let want: HashSet<Id> = [id].into();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let got = collect(rx, &want, 20).await;
        assert_eq!(got, vec![id], "{body}: receiver {i} did not get it exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_by_dns_name() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(node(dir.path(), "b", &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]))
        .await
        .unwrap();
    let mut a_cfg = node(dir.path(), "a", &["/ip4/127.0.0.1/tcp/0"]);
    a_cfg.bootstrap = vec![by_name(&addr_with(&b, "/tcp/"))];
    a_cfg.peer_book = false;
    let a = start(a_cfg).await.unwrap();
    wait_peers(&a, 1, 20, "a joining b by name").await;
    wait_peers(&b, 1, 5, "b seeing a").await;
    // QUIC by name too.
    let mut q_cfg = node(dir.path(), "q", &["/ip4/127.0.0.1/udp/0/quic-v1"]);
    q_cfg.bootstrap = vec![by_name(&addr_with(&b, "/quic-v1"))];
    q_cfg.peer_book = false;
    let q = start(q_cfg).await.unwrap();
    wait_peers(&q, 1, 20, "q joining b by name over QUIC").await;

    // A name that does not resolve is a failed dial, not a crash: the node runs on.
    let mut c_cfg = node(dir.path(), "c", &["/ip4/127.0.0.1/tcp/0"]);
    c_cfg.bootstrap = vec![format!("/dns4/no-such-host.invalid/tcp/1/p2p/{}", b.peer_id).parse().unwrap()];
    c_cfg.peer_book = false;
    let c = start(c_cfg).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(c.status().await.unwrap().peers, 0);
    for n in [&a, &b, &c, &q] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_can_only_dial_out_receives_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[17; 32]);
    let mut rc = node(dir.path(), "relay", &["/ip4/127.0.0.1/tcp/0"]);
    rc.relay_server = true;
    let relay = start(rc).await.unwrap();
    let relay_addr = addr_with(&relay, "/tcp/");

    // Neither h nor a listens on an address of its own: a connection between them can only
    // be a circuit through the relay.
    let mut hc = node(dir.path(), "hidden", &[]);
    hc.listen_via_relay = Some(relay_addr.clone());
    hc.bootstrap = vec![relay_addr.clone()];
    let hidden = start(hc).await.unwrap();
    assert!(hidden.listen_addrs.is_empty());
    let circuit = wait_circuit(&hidden, 20, "hidden").await;
    assert!(circuit.to_string().starts_with(&relay_addr.to_string()), "{circuit}");
    hidden.subscribe(topic).await.unwrap();

    let mut ac = node(dir.path(), "alice", &[]);
    ac.bootstrap = vec![relay_addr.clone()];
    let alice = start(ac).await.unwrap();
    alice.subscribe(topic).await.unwrap();
    // alice finds hidden through the relay's DHT (its relayed address, pushed by identify once
    // the reservation was made) and dials it there.
    wait_peers(&alice, 2, 30, "alice reaching hidden through the relay").await;
    sleep(Duration::from_secs(2)).await; // a few heartbeats for the shard mesh
    delivered(&alice, &[&hidden], topic, "to the hidden node").await;
    delivered(&hidden, &[&alice], topic, "from the hidden node").await;
    // The relay follows no topic: it carried the circuit's bytes, never the gossip itself.
    assert_eq!(relay.status().await.unwrap().relayed, 0, "the relay took part in the gossip");
    for n in [&relay, &hidden, &alice] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reachable_only_over_websocket_takes_part_in_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[18; 32]);
    // w listens only on WebSocket and joins through nobody: the hub dials it.
    let mut wc = node(dir.path(), "w", &["/ip4/127.0.0.1/tcp/0/ws"]);
    wc.dial_target = 0;
    wc.peer_book = false;
    let w = start(wc).await.unwrap();
    assert!(w.listen_addrs.iter().all(|a| a.to_string().contains("/ws/")), "{:?}", w.listen_addrs);
    // The hub listens on TCP and WebSocket, and reaches w by name over WebSocket.
    let hub =
        start(node(dir.path(), "hub", &["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"])).await.unwrap();
    hub.dial(by_name(&addr_with(&w, "/ws"))).await.unwrap();
    wait_peers(&w, 1, 20, "the hub reaching w over WebSocket").await;
    // c speaks TCP to the hub.
    let mut cc = node(dir.path(), "c", &["/ip4/127.0.0.1/tcp/0"]);
    cc.bootstrap = vec![addr_with(&hub, "/tcp/")];
    let c = start(cc).await.unwrap();
    wait_peers(&c, 1, 20, "c joining the hub").await;
    for n in [&w, &hub, &c] {
        n.subscribe(topic).await.unwrap();
    }
    sleep(Duration::from_secs(2)).await; // a few heartbeats for the shard mesh
    delivered(&c, &[&w, &hub], topic, "from a TCP node").await;
    delivered(&w, &[&c, &hub], topic, "from the WebSocket node").await;
    for n in [&w, &hub, &c] {
        n.shutdown().await;
    }
}

/// The relayed listen address of `n`, waiting up to `secs` for the relay to accept it.
async fn wait_circuit(n: &NodeHandle, secs: u64, what: &str) -> Multiaddr {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = n.status().await.unwrap();
        if let Some(a) = st.listen.iter().find(|a| a.to_string().contains("/p2p-circuit")) {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "{what}: no reservation at the relay after {secs} s");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_node_listens_again_after_the_relay_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[19; 32]);
    let relay_cfg = |listen: &str| {
        let mut c = node(dir.path(), "relay", &[listen]);
        c.relay_server = true;
        c.identity_file = Some(dir.path().join("relay/node.key"));
        c
    };
    let relay = start(relay_cfg("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let relay_addr = addr_with(&relay, "/tcp/");
    let mut hc = node(dir.path(), "hidden", &[]);
    hc.listen_via_relay = Some(relay_addr.clone());
    hc.bootstrap = vec![relay_addr.clone()];
    let hidden = start(hc).await.unwrap();
    let first = wait_circuit(&hidden, 20, "first reservation").await;
    hidden.subscribe(topic).await.unwrap();

    // The relay goes: the hidden node loses its relayed address…
    relay.shutdown().await;
    drop(relay);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hidden.status().await.unwrap().listen.iter().any(|a| a.to_string().contains("/p2p-circuit")) {
        assert!(Instant::now() < deadline, "the relayed address outlived the relay");
        sleep(Duration::from_millis(100)).await;
    }
    // …and it comes back at the same address: the hidden node reserves again by itself.
    let mut same = relay_addr.clone();
    same.pop();
    let relay = start(relay_cfg(&same.to_string())).await.unwrap();
    assert_eq!(addr_with(&relay, "/tcp/"), relay_addr);
    let again = wait_circuit(&hidden, 30, "reservation after the relay restarted").await;
    assert_eq!(again, first);

    let mut ac = node(dir.path(), "alice", &[]);
    ac.bootstrap = vec![relay_addr.clone()];
    let alice = start(ac).await.unwrap();
    alice.subscribe(topic).await.unwrap();
    wait_peers(&alice, 2, 30, "alice reaching hidden through the restarted relay").await;
    sleep(Duration::from_secs(2)).await; // a few heartbeats for the shard mesh
    delivered(&alice, &[&hidden], topic, "after the relay restarted").await;
    for n in [&relay, &hidden, &alice] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_name_without_peer_id_is_dialled_again_until_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Nobody listens there yet: the first dial fails.
    let mut a_cfg = node(dir.path(), "a", &["/ip4/127.0.0.1/tcp/0"]);
    a_cfg.bootstrap = vec![format!("/dns4/localhost/tcp/{port}").parse().unwrap()];
    let a = start(a_cfg).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(a.status().await.unwrap().peers, 0);
    // The bootstrap node comes up; a reaches it by itself (backoff 1 s, 2 s, 4 s, …).
    let b = start(node(dir.path(), "b", &[&format!("/ip4/127.0.0.1/tcp/{port}")])).await.unwrap();
    wait_peers(&a, 1, 20, "a redialling its bootstrap name").await;
    wait_peers(&b, 1, 5, "b seeing a").await;
    for n in [&a, &b] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[20; 32]);
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    // s listens only on WebSocket over TLS, with the certificate from PEM files.
    let mut sc = node(dir.path(), "s", &["/ip4/127.0.0.1/tcp/0/tls/ws"]);
    sc.ws_tls = Some(WsTls::from_pem_files(&cert, &key).unwrap());
    sc.peer_book = false;
    let s = start(sc).await.unwrap();
    let s_addr = by_name(&addr_with(&s, "/ws"));
    assert!(s_addr.to_string().contains("/tls/ws/"), "{s_addr}");

    // A node that does not trust the certificate cannot connect: TLS is really in the way.
    let mut uc = node(dir.path(), "u", &["/ip4/127.0.0.1/tcp/0"]);
    uc.peer_book = false;
    let u = start(uc).await.unwrap();
    u.dial(s_addr.clone()).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(u.status().await.unwrap().peers, 0, "connected over TLS without trusting the certificate");

    // One that trusts it (as it would a web PKI certificate) connects by name and gossips.
    let mut cc = node(dir.path(), "c", &["/ip4/127.0.0.1/tcp/0"]);
    cc.ws_tls = Some(WsTls { trust_der: vec![ck.cert.der().to_vec()], ..WsTls::default() });
    cc.peer_book = false;
    let c = start(cc).await.unwrap();
    c.dial(s_addr).await.unwrap();
    wait_peers(&c, 1, 20, "c reaching s over WebSocket + TLS").await;
    for n in [&s, &c] {
        n.subscribe(topic).await.unwrap();
    }
    sleep(Duration::from_secs(2)).await; // a few heartbeats for the shard mesh
    delivered(&c, &[&s], topic, "to the TLS WebSocket node").await;
    delivered(&s, &[&c], topic, "from the TLS WebSocket node").await;

    // A key that does not parse is a start-up error, not a panic.
    let mut bad = node(dir.path(), "bad", &["/ip4/127.0.0.1/tcp/0/tls/ws"]);
    bad.ws_tls =
        Some(WsTls { key_der: b"not a key".to_vec(), ..WsTls::from_pem_files(&cert, &key).unwrap() });
    let err = start(bad).await.err().expect("started with a garbage TLS key").to_string();
    assert!(err.contains("WebSocket TLS key"), "{err}");
    for n in [&s, &u, &c] {
        n.shutdown().await;
    }
}
