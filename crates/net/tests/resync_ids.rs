//! Anti-entropy by ids on 127.0.0.1 (three store nodes): a node that missed envelopes while
//! it was away gets exactly those by id, and a node that already holds a topic's envelopes
//! lists their ids and fetches no envelope. Bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeHandle, ResyncStatus, start};
use cairn_proto::{Envelope, Id, Topic};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{mined, wait_store_peers, wait_stored};

fn cfg(dir: &std::path::Path, name: &str, resync_every_ms: u64) -> NodeConfig {
    let mut c = common::cfg(dir, name);
    c.resync_every_ms = resync_every_ms;
    // A listed id is asked of one store node; a retry would ask all three, so keep retries
    // out of the counts on a slow machine.
    c.sync.fetch_retry_ms = 60_000;
    c
}

async fn stores(dir: &std::path::Path) -> Vec<NodeHandle> {
    let mut stores: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir, &format!("s{i}"), 5_000);
        c.serve_store = true;
        if let Some(s) = stores.first() {
            c.bootstrap = vec![s.listen_addrs[0].clone()];
        }
        stores.push(start(c).await.unwrap());
    }
    stores
}

async fn node(dir: &std::path::Path, name: &str, resync_every_ms: u64, stores: &[NodeHandle]) -> NodeHandle {
    let mut c = cfg(dir, name, resync_every_ms);
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let n = start(c).await.unwrap();
    wait_store_peers(&n, 3).await;
    n
}

/// Publishes `count` envelopes on `topic` from `n` and waits until each is stored.
async fn publish(n: &NodeHandle, topic: Topic, label: &str, count: usize) -> HashSet<Id> {
    let mut rx = n.events();
    let envs: Vec<Envelope> = (0..count).map(|i| mined(topic, &format!("{label} {i}"), vec![])).collect();
    let ids: HashSet<Id> = envs.iter().map(Envelope::id).collect();
    for e in envs {
        n.publish(e).await.unwrap();
    }
    wait_stored(&mut rx, &ids, 30).await;
    ids
}

/// `n`'s anti-entropy figures once `ready` holds for them, or panics after 30 s.
async fn resync_once(n: &NodeHandle, ready: impl Fn(&ResyncStatus) -> bool) -> ResyncStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = n.status().await.unwrap().resync;
        if ready(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "anti-entropy never got there: {r:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fetches_by_id_exactly_the_envelopes_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path()).await;
    let (t, u) = (Topic::for_conversation(&[31; 32]), Topic::for_conversation(&[32; 32]));

    // Ann publishes 4 envelopes on t (so her history holds them) and goes away.
    let ann = node(dir.path(), "ann", 0, &stores).await;
    let held = publish(&ann, t, "ann", 4).await;
    ann.shutdown().await;
    drop(ann); // the handle holds the history database open

    // Ben follows u, publishes 5 there and 6 on t while Ann is away.
    let ben = node(dir.path(), "ben", 500, &stores).await;
    ben.subscribe(u).await.unwrap();
    let ben_own = publish(&ben, u, "ben u", 5).await;
    let missed = publish(&ben, t, "ben t", 6).await;

    // Ben holds everything on u: his pages of ids list his 5 at each of the 3 store nodes and
    // he fetches no envelope (whole pages would have brought all 15 back).
    let r = resync_once(&ben, |r| r.ids_listed >= 3 * ben_own.len() as u64).await;
    assert_eq!((r.envelopes_fetched, r.fetched_bytes), (0, 0), "ben fetched envelopes he holds: {r:?}");
    assert_eq!((r.whole_pages, r.envelopes_paged, r.id_pages_refused), (0, 0, 0), "{r:?}");

    // Past gossipsub's IHAVE window (3 heartbeats of 500 ms), so what Ann gets comes by id.
    sleep(Duration::from_secs(3)).await;
    // Ann comes back and follows t from cursor 0: the store nodes list all 10 ids; she fetches
    // the 6 she missed and nothing else.
    let ann = node(dir.path(), "ann", 0, &stores).await;
    let mut rx = ann.events();
    ann.subscribe(t).await.unwrap();
    let mut got: Vec<Id> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < missed.len() + held.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Ok(cairn_net::node::NodeEvent::Delivered { id, .. })) => got.push(id),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => break, // the deadline: what came is all that comes
        }
        if got.len() == missed.len() {
            // Leave a moment for anything delivered twice or from her own history to show.
            let extra = timeout(Duration::from_secs(2), async {
                loop {
                    if let Ok(cairn_net::node::NodeEvent::Delivered { id, .. }) = rx.recv().await {
                        return id;
                    }
                }
            })
            .await;
            if let Ok(id) = extra {
                got.push(id);
            }
            break;
        }
    }
    let got_set: HashSet<Id> = got.iter().copied().collect();
    assert_eq!(got.len(), got_set.len(), "delivered once each");
    assert_eq!(got_set, missed, "ann got exactly the envelopes she missed");
    let r = resync_once(&ann, |r| r.ids_listed >= (held.len() + missed.len()) as u64).await;
    assert_eq!(r.envelopes_fetched, missed.len() as u64, "fetched only what she lacked: {r:?}");
    assert_eq!((r.whole_pages, r.envelopes_paged), (0, 0), "{r:?}");
    ann.shutdown().await;
    ben.shutdown().await;
    for s in &stores {
        s.shutdown().await;
    }
}
