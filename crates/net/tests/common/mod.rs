//! Shared by the multi-node tests: mined envelopes, a fast-ticking node config, and bounded
//! waits for store peers, deliveries and "stored" statuses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeEvent, NodeHandle};
use cairn_net::sync::SendStatus;
use cairn_proto::envelope::pad;
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Topic};
use tokio::sync::broadcast::Receiver;
use tokio::time::{Instant, sleep, timeout};

/// Wall-clock ms.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A 1-hour envelope carrying `body`, with the default proof of work.
pub(crate) fn mined(topic: Topic, body: &str, parents: Vec<Id>) -> Envelope {
    let mut e =
        Envelope::new(topic, now_ms(), 3600, parents, pad(body.as_bytes(), &Limits::default()).unwrap());
    pow::mine(&mut e.header, Difficulty::default(), 1 << 30).unwrap();
    e
}

/// A node in `dir/name` that ticks every 100 ms and retries soon.
pub(crate) fn cfg(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(dir.join(name));
    c.tick_ms = 100;
    c.sync.retry_initial_ms = 200;
    c.sync.gap_retry_ms = 300;
    c
}

/// Waits until `n` knows `k` store nodes, or panics after 30 s.
pub(crate) async fn wait_store_peers(n: &NodeHandle, k: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.status().await.unwrap().store_peers < k {
        assert!(Instant::now() < deadline, "never saw {k} store nodes");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Delivered ids, until every one of `want` is seen or `secs` pass.
pub(crate) async fn collect(rx: &mut Receiver<NodeEvent>, want: &HashSet<Id>, secs: u64) -> Vec<Id> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !want.iter().all(|w| got.contains(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Delivered { id, .. })) => got.push(id),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => break,
        }
    }
    got
}

/// Waits until every id in `ids` is reported stored (on ≥ 2 store nodes), or panics.
pub(crate) async fn wait_stored(rx: &mut Receiver<NodeEvent>, ids: &HashSet<Id>, secs: u64) {
    let mut stored = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while stored.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Status { id, status: SendStatus::Stored { acks } })) if ids.contains(&id) => {
                assert!(acks >= 2);
                stored.insert(id);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("only {} of {} envelopes stored", stored.len(), ids.len()),
        }
    }
}
