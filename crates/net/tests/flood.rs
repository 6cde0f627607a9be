//! Honest relays under a flood of *valid* envelopes (mined, well-formed: nothing to reject), ten
//! times the honest rate, on 127.0.0.1. The receiver's per-peer rate limit drops part of what
//! the relays forward, honest mail included; it must ignore without blame (relays are not
//! penalised, so nobody graylists an honest node) and the mailboxes bring back what was dropped:
//! at least 99% of honest messages arrive. Bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeEvent, NodeHandle, start};
use cairn_net::shard::shard_of;
use cairn_proto::{Envelope, Id, Topic};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{mined, wait_store_peers};

fn cfg(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = common::cfg(dir, name);
    c.resync_every_ms = 1_000;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_relays_under_a_tenfold_valid_flood_deliver_99_percent() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[21; 32]);
    // Same shard, another conversation: the flood travels the receiver's gossip mesh.
    let flood_topic = (0u8..=255)
        .map(|b| Topic::for_conversation(&[b; 32]))
        .find(|t| shard_of(t) == shard_of(&topic) && *t != topic)
        .expect("a topic on the same shard");
    let mut relays: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir.path(), &format!("relay{i}"));
        c.serve_store = true;
        if let Some(r) = relays.first() {
            c.bootstrap = vec![r.listen_addrs[0].clone()];
        }
        relays.push(start(c).await.unwrap());
    }
    for r in &relays {
        r.subscribe(topic).await.unwrap();
    }
    let boot = vec![relays[0].listen_addrs[0].clone()];
    // The receiver takes at most 100 envelopes/s from each forwarding peer (burst 200).
    let mut c = cfg(dir.path(), "receiver");
    c.bootstrap.clone_from(&boot);
    c.admission.peer_rate_per_sec = 100;
    c.admission.peer_burst = 200;
    let receiver = start(c).await.unwrap();
    let mut c = cfg(dir.path(), "sender");
    c.bootstrap.clone_from(&boot);
    let sender = start(c).await.unwrap();
    let mut c = cfg(dir.path(), "mallory");
    c.bootstrap.clone_from(&boot);
    let mallory = start(c).await.unwrap();
    for n in [&receiver, &sender] {
        wait_store_peers(n, 3).await;
        n.subscribe(topic).await.unwrap();
    }
    mallory.subscribe(flood_topic).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    let mut rx = receiver.events();

    // 200 honest envelopes at ~50/s, 2,000 flood envelopes at ~500/s alongside.
    let honest: Vec<Envelope> = (0..200).map(|i| mined(topic, &format!("honest {i}"), vec![])).collect();
    let flood: Vec<Vec<u8>> =
        (0..2_000).map(|i| mined(flood_topic, &format!("flood {i}"), vec![]).encode()).collect();
    let want: HashSet<Id> = honest.iter().map(Envelope::id).collect();
    let shard = shard_of(&flood_topic);
    let mut flood = flood.into_iter();
    for e in honest {
        sender.publish(e).await.unwrap();
        for b in flood.by_ref().take(10) {
            mallory.publish_raw(shard, b).await.unwrap();
        }
        sleep(Duration::from_millis(20)).await;
    }
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Delivered { id, .. })) if want.contains(&id) => {
                got.insert(id);
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => break,
        }
    }
    let ratio = got.len() as f64 / want.len() as f64;
    assert!(ratio >= 0.99, "only {:.1}% of honest messages delivered", ratio * 100.0);
    let st = receiver.status().await.unwrap();
    assert!(st.ignored > 0, "the flood never hit the receiver's rate limit: the test proves nothing");
    for r in &relays {
        let score = receiver.peer_score(r.peer_id).await.unwrap().unwrap_or(0.0);
        assert!(score >= 0.0, "an honest relay was penalised for forwarding a flood: {score}");
    }
    for n in relays.iter().chain([&receiver, &sender, &mallory]) {
        n.shutdown().await;
    }
}
