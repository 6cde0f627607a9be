//! Preferring near peers, on 127.0.0.1: a node over its dial target closes its slowest dialed
//! connections (measured by ping) down to the target and does not dial them again. Every wait
//! is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cairn_net::nearness::NearConfig;
use cairn_net::node::{NodeConfig, start};
use tokio::time::{Instant, sleep};

mod common;
use common::cfg;

/// A node that serves no store and dials no one by itself.
fn quiet(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = cfg(dir, name);
    c.serve_store = false;
    c.dial_target = 0;
    c.nearness = None;
    c.peer_book = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_target_closes_dialed_connections_down_to_it_and_keeps_them_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut others = Vec::new();
    for name in ["b", "c", "d"] {
        others.push(start(quiet(dir.path(), name)).await.unwrap());
    }
    let mut ac = quiet(dir.path(), "a");
    ac.dial_target = 1;
    ac.nearness = Some(NearConfig {
        probe_extra: 3,
        random_keep: 0,
        probe_every_ms: 500,
        prune_after_ms: 1_500,
        slow_forget_ms: 600_000,
    });
    let a = start(ac).await.unwrap();
    for o in &others {
        a.dial(o.listen_addrs[0].clone()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = a.status().await.unwrap();
        if s.near_closed >= 2 && s.peers == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "a: {} peers, {} closed after 20 s", s.peers, s.near_closed);
        sleep(Duration::from_millis(100)).await;
    }
    // Three more rounds: the closed peers are in a's routing table, but not dialed again.
    sleep(Duration::from_millis(1_600)).await;
    let s = a.status().await.unwrap();
    assert_eq!((s.peers, s.near_closed), (1, 2), "the closed peers stay closed");
    for n in others.into_iter().chain([a]) {
        n.shutdown().await;
    }
}
