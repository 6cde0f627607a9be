//! The lossless event stream on real nodes (127.0.0.1): a consumer that reads slowly still
//! receives every delivered envelope exactly once, and the channel never holds more than its
//! bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeEvent, NodeHandle, start};
use cairn_proto::envelope::pad;
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Topic};
use tokio::time::{Instant, sleep, timeout};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn mined(topic: Topic, i: usize) -> Envelope {
    let body = pad(format!("slow reader {i}").as_bytes(), &Limits::default()).unwrap();
    let mut e = Envelope::new(topic, now_ms(), 3600, vec![], body);
    pow::mine(&mut e.header, Difficulty::default(), 1 << 30).unwrap();
    e
}

fn cfg(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(dir.join(name));
    c.tick_ms = 100;
    c.resync_every_ms = 500;
    c.sync.retry_initial_ms = 200;
    c.sync.gap_retry_ms = 300;
    c
}

async fn wait_store_peers(n: &NodeHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.status().await.map(|s| s.store_peers).unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "no store node found");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_gets_every_delivery_exactly_once_within_the_bound() {
    const N: usize = 300;
    const BOUND: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[42; 32]);
    let mut sc = cfg(dir.path(), "store");
    sc.serve_store = true;
    let store = start(sc).await.unwrap();
    let boot = store.listen_addrs[0].clone();
    let mut rc = cfg(dir.path(), "reader");
    rc.bootstrap = vec![boot.clone()];
    rc.events_lossless_max = BOUND;
    let reader = start(rc).await.unwrap();
    let mut rx = reader.take_events().expect("first take");
    assert!(reader.clone().take_events().is_none(), "the lossless stream is taken once");
    assert_eq!(rx.max_capacity(), BOUND);
    let mut pc = cfg(dir.path(), "publisher");
    pc.bootstrap = vec![boot];
    let publisher = start(pc).await.unwrap();
    wait_store_peers(&reader).await;
    wait_store_peers(&publisher).await;
    reader.subscribe(topic).await.unwrap();
    let mut sent = HashSet::new();
    for i in 0..N {
        sent.insert(publisher.publish(mined(topic, i)).await.unwrap());
    }
    let mut got: HashMap<Id, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.len() < N && Instant::now() < deadline {
        assert!(rx.len() <= BOUND, "channel holds {} events over its bound {BOUND}", rx.len());
        match timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(NodeEvent::Delivered { id, .. })) => {
                *got.entry(id).or_default() += 1;
                sleep(Duration::from_millis(5)).await; // a slow consumer
            }
            Ok(Some(NodeEvent::Status { .. })) | Err(_) => {}
            Ok(None) => panic!("event stream closed"),
        }
    }
    // Anything delivered twice would show up now.
    sleep(Duration::from_secs(2)).await;
    while let Ok(ev) = rx.try_recv() {
        if let NodeEvent::Delivered { id, .. } = ev {
            *got.entry(id).or_default() += 1;
        }
    }
    let missing = sent.iter().filter(|id| !got.contains_key(id)).count();
    assert_eq!(missing, 0, "{missing} of {N} envelopes never delivered");
    assert!(got.values().all(|&n| n == 1), "an envelope was delivered more than once");
    assert_eq!(got.len(), N);
    for n in [&publisher, &reader, &store] {
        n.shutdown().await;
    }
}
