//! Rejoining after restarts, on 127.0.0.1: a node keeps its peer id in its key file and is
//! found again at its saved address; a node whose bootstrap peer is gone joins through its
//! saved peer book. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cairn_net::Multiaddr;
use cairn_net::node::{NodeConfig, NodeHandle, SealKey, start};
use cairn_net::peerbook::PeerBook;
use tokio::time::{Instant, sleep};

mod common;
use common::cfg;

/// Waits until `n` has at least `k` connected peers, or panics after `secs`.
async fn wait_peers(n: &NodeHandle, k: usize, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while n.status().await.unwrap().peers < k {
        assert!(Instant::now() < deadline, "{what}: fewer than {k} peers after {secs} s");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A node listening on TCP only, at `listen` (port 0: any).
fn tcp_node(dir: &std::path::Path, name: &str, listen: &str) -> NodeConfig {
    let mut c = cfg(dir, name);
    c.listen = vec![listen.parse().unwrap()];
    c
}

/// The TCP listen address of `n` with its `/p2p/ID`.
fn tcp_addr(n: &NodeHandle) -> Multiaddr {
    n.listen_addrs.iter().find(|a| a.to_string().contains("/tcp/")).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_peer_id_and_is_redialled_at_its_saved_address() {
    let dir = tempfile::tempdir().unwrap();
    let seal = SealKey::from_device_secret(&[9u8; 32]);
    let b_cfg = |listen: &str| {
        let mut c = tcp_node(dir.path(), "b", listen);
        c.identity_file = Some(dir.path().join("b/node.key"));
        c.identity_seal = Some(seal.clone());
        // b keeps no peer book: the reconnection must come from a's redial, not from b.
        c.peer_book = false;
        c
    };
    let b = start(b_cfg("/ip4/127.0.0.1/tcp/0")).await.unwrap();
    let b_addr = tcp_addr(&b);
    let mut a_cfg = tcp_node(dir.path(), "a", "/ip4/127.0.0.1/tcp/0");
    a_cfg.bootstrap = vec![b_addr.clone()];
    let a = start(a_cfg).await.unwrap();
    wait_peers(&a, 1, 20, "a joining b").await;
    let first_id = b.peer_id;
    b.shutdown().await;
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.status().await.unwrap().peers > 0 {
        assert!(Instant::now() < deadline, "a never saw b go");
        sleep(Duration::from_millis(50)).await;
    }

    // Same data dir, same port: same peer id, and a reconnects by itself (nobody dials a).
    let mut same = b_addr.clone();
    same.pop();
    let b = start(b_cfg(&same.to_string())).await.unwrap();
    assert_eq!(b.peer_id, first_id, "the restarted node has another peer id");
    assert_eq!(tcp_addr(&b), b_addr);
    wait_peers(&a, 1, 30, "a redialling b from its peer book").await;
    wait_peers(&b, 1, 5, "b seeing a").await;

    // The key file opens only with the same device's key: another one is a clear error.
    b.shutdown().await;
    drop(b);
    let mut other = b_cfg("/ip4/127.0.0.1/tcp/0");
    other.identity_seal = Some(SealKey::from_device_secret(&[8u8; 32]));
    let err = start(other).await.err().expect("started with another device's key").to_string();
    assert!(err.contains("node key file") && err.contains("delete it"), "{err}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_bootstrap_is_gone_joins_through_its_peer_book() {
    let dir = tempfile::tempdir().unwrap();
    let any = "/ip4/127.0.0.1/tcp/0";
    let b = start(tcp_node(dir.path(), "b", any)).await.unwrap();
    let b_addr = tcp_addr(&b);
    let mut c_cfg = tcp_node(dir.path(), "c", any);
    c_cfg.bootstrap = vec![b_addr.clone()];
    let c = start(c_cfg).await.unwrap();
    wait_peers(&c, 1, 20, "c joining b").await;
    let a_cfg = || {
        let mut a = tcp_node(dir.path(), "a", any);
        a.bootstrap = vec![b_addr.clone()];
        a
    };
    // a learns c from b (Kademlia) and connects to it.
    let a = start(a_cfg()).await.unwrap();
    wait_peers(&a, 2, 30, "a discovering c through b").await;
    // When c dialled a, a learns c's listen address only from identify, a moment later
    // (a CI run read the book before it came).
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.status().await.unwrap().dialable_peers < 2 {
        assert!(Instant::now() < deadline, "a has no address for c after 10 s");
        sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
    drop(a);
    let saved = PeerBook::decode(&std::fs::read(dir.path().join("a/peers")).unwrap()).unwrap();
    assert!(saved.addrs(&c.peer_id).is_some_and(|x| !x.is_empty()), "c is not in a's saved peer book");

    // b goes; a restarts with b as its only bootstrap peer and still reaches c.
    b.shutdown().await;
    drop(b);
    let a = start(a_cfg()).await.unwrap();
    wait_peers(&a, 1, 30, "a joining through its peer book").await;
    // c registers the connection a moment after a does (a CI rehearsal read it too early).
    wait_peers(&c, 1, 10, "c seeing a again").await;
    a.shutdown().await;
    c.shutdown().await;
}
