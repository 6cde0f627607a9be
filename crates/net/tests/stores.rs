//! Store nodes on 127.0.0.1: a sender's burst travels in store-many requests (one mailbox
//! commit for many envelopes) and comes back with signed receipts, and a store at its byte quota refuses new mail without evicting
//! what it holds, while other topics still get in. Bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeHandle, start};
use cairn_net::stem::StemConfig;
use cairn_proto::{Envelope, Id, Topic};
use cairn_store::Retention;
use tokio::time::{Instant, sleep};

mod common;
use common::{collect, mined, wait_store_peers, wait_stored};

/// The shared test config, retrying a refused store request within half a second.
fn cfg(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = common::cfg(dir, name);
    c.sync.retry_max_ms = 500;
    c
}

async fn stores(dir: &std::path::Path, retention: Retention) -> Vec<NodeHandle> {
    let mut stores: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir, &format!("s{i}"));
        c.serve_store = true;
        c.retention = retention;
        if let Some(s) = stores.first() {
            c.bootstrap = vec![s.listen_addrs[0].clone()];
        }
        stores.push(start(c).await.unwrap());
    }
    stores
}

async fn sender(dir: &std::path::Path, stores: &[NodeHandle]) -> NodeHandle {
    let mut c = cfg(dir, "sender");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let sender = start(c).await.unwrap();
    wait_store_peers(&sender, 3).await;
    sender
}

/// Waits until the store nodes together refused `n` offers as full, or panics after 30 s.
async fn wait_refused(stores: &[NodeHandle], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut refused = 0;
        for s in stores {
            refused += s.status().await.unwrap().mailbox.refused_full;
        }
        if refused >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the store nodes refused only {refused} of {n} offers");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A node that joins later and follows `topic`: the ids it finds in the mailboxes within 30 s
/// (until it has every one of `want`).
async fn reader(
    dir: &std::path::Path,
    stores: &[NodeHandle],
    topic: Topic,
    want: &HashSet<Id>,
) -> HashSet<Id> {
    let mut c = cfg(dir, "reader");
    c.bootstrap = vec![stores[1].listen_addrs[0].clone()];
    let reader = start(c).await.unwrap();
    let mut events = reader.events();
    reader.subscribe(topic).await.unwrap();
    let got = collect(&mut events, want, 30).await.into_iter().collect();
    reader.shutdown().await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_in_batched_requests() {
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path(), Retention::default()).await;
    let sender = sender(dir.path(), &stores).await;
    let topic = Topic::for_conversation(&[7; 32]);
    let envs: Vec<Envelope> = (0..40).map(|i| mined(topic, &format!("burst {i}"), vec![])).collect();
    let want: HashSet<Id> = envs.iter().map(Envelope::id).collect();
    let mut rx = sender.events();
    let ids = futures::future::join_all(envs.into_iter().map(|e| sender.publish(e))).await;
    assert!(ids.iter().all(Result::is_ok), "{ids:?}");
    wait_stored(&mut rx, &want, 30).await;
    let (mut commits, mut stored) = (0, 0);
    for s in &stores {
        let st = s.status().await.unwrap();
        commits += st.store_commits;
        stored += st.store_envelopes;
    }
    assert!(stored >= 2 * 40, "each envelope on at least 2 store nodes: {stored}");
    assert!(commits * 4 <= stored, "{commits} mailbox commits for {stored} stored envelopes");
    // The sender keeps a signed receipt from each store node that acknowledged an envelope.
    let store_ids: HashSet<_> = stores.iter().map(|s| s.peer_id).collect();
    for id in &want {
        let receipts = sender.receipts(id).unwrap();
        assert!(receipts.len() >= 2, "{} receipts for a stored envelope", receipts.len());
        for (peer, r) in receipts {
            assert!(store_ids.contains(&peer));
            assert_eq!(r.id, *id);
            assert_eq!(r.verify(&peer), Ok(()));
            assert!(r.expires_at_ms > r.stored_at_ms + 3_000_000, "kept for its 1 h TTL");
            let other = stores.iter().map(|s| s.peer_id).find(|p| *p != peer).unwrap();
            assert!(r.verify(&other).is_err(), "a receipt speaks for its own store only");
        }
    }
    sender.shutdown().await;
    for s in &stores {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_new_mail_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[8; 32]);
    let size = mined(topic, "x", vec![]).encode().len() as u64;
    let retention = Retention { topic_bytes_max: 5 * size, ..Retention::default() };
    let stores = stores(dir.path(), retention).await;
    let sender = sender(dir.path(), &stores).await;
    let mut rx = sender.events();
    let first: Vec<Envelope> = (0..5).map(|i| mined(topic, &format!("kept {i}"), vec![])).collect();
    let kept: HashSet<Id> = first.iter().map(Envelope::id).collect();
    for e in first {
        sender.publish(e).await.unwrap();
    }
    wait_stored(&mut rx, &kept, 30).await;
    // The topic is full on every store node: these are refused, never stored.
    let late: Vec<Envelope> = (0..3).map(|i| mined(topic, &format!("late {i}"), vec![])).collect();
    let late_ids: HashSet<Id> = late.iter().map(Envelope::id).collect();
    for e in late {
        sender.publish(e).await.unwrap();
    }
    // Another topic still has room.
    let other = mined(Topic::for_conversation(&[9; 32]), "elsewhere", vec![]);
    let other_id: HashSet<Id> = [other.id()].into();
    sender.publish(other).await.unwrap();
    wait_stored(&mut rx, &other_id, 30).await;
    wait_refused(&stores, 3 * 3).await;
    let pending: HashSet<Id> = sender.status().await.unwrap().pending.into_iter().map(|(id, _)| id).collect();
    assert!(late_ids.is_subset(&pending), "refused mail stays pending at the sender, not stored");
    // Stored means 2 acks: wait for the third copy too, then nothing more may come in.
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &stores {
        while s.status().await.unwrap().mailbox.envelopes < 6 {
            assert!(Instant::now() < deadline, "a store node never got its 6 envelopes");
            sleep(Duration::from_millis(100)).await;
        }
    }
    sleep(Duration::from_millis(500)).await;
    for s in &stores {
        let st = s.status().await.unwrap();
        assert_eq!(st.mailbox.envelopes, 6, "5 kept + 1 on the other topic, nothing evicted");
    }
    // A reader that comes later finds the first five in the mailboxes (none was evicted) and
    // none of the refused ones.
    let got = reader(dir.path(), &stores, topic, &kept).await;
    assert!(
        kept.is_subset(&got),
        "the reader found {} of the 5 kept envelopes",
        got.intersection(&kept).count()
    );
    assert!(got.is_disjoint(&late_ids), "refused mail was served");
    sender.shutdown().await;
    for s in &stores {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_by_full_stores_is_stored_on_the_next_ones() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[10; 32]);
    // Three store nodes whose mailbox cannot take one more envelope, two with room. Whichever
    // three are nearest the topic, at most one "Full" answer is needed to move on.
    let mut stores: Vec<NodeHandle> = Vec::new();
    for i in 0..5 {
        let mut c = cfg(dir.path(), &format!("s{i}"));
        c.serve_store = true;
        if i < 3 {
            c.retention = Retention { total_bytes_max: 1, ..Retention::default() };
        }
        if let Some(s) = stores.first() {
            c.bootstrap = vec![s.listen_addrs[0].clone()];
        }
        stores.push(start(c).await.unwrap());
    }
    let mut c = cfg(dir.path(), "sender");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let sender = start(c).await.unwrap();
    wait_store_peers(&sender, 5).await;
    let mut rx = sender.events();
    let e = mined(topic, "find room", vec![]);
    let id: HashSet<Id> = [e.id()].into();
    sender.publish(e).await.unwrap();
    wait_stored(&mut rx, &id, 30).await;
    let holders: Vec<usize> = {
        let mut v = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            if s.status().await.unwrap().mailbox.envelopes > 0 {
                v.push(i);
            }
        }
        v
    };
    assert_eq!(holders, vec![3, 4], "stored on the two stores with room, by none of the full ones");
    sender.shutdown().await;
    for s in &stores {
        s.shutdown().await;
    }
}

/// A flood of cheap envelopes neither wipes nor locks out honest mail, with the stem on (the
/// default) and the flooder spraying its stem over three honest hops: a store node holds at
/// most the flooder's own share (its direct pushes, keyed by its peer id) plus the one relay
/// pool every relayed push is charged to, however many honest hops fluffed for it (with a
/// relay share per pushing hop it held one more share per hop); the honest sender's mail is
/// stored before and after the flood (once the pool is full, through its direct fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_wipe_by_envelope_flood_fails() {
    let dir = tempfile::tempdir().unwrap();
    let size = mined(Topic::for_conversation(&[1; 32]), "x", vec![]).encode().len() as u64;
    // Each source may hold 20 envelopes' worth on a store node: a flooder fills its own share
    // and the relay pool (which has one source's share).
    let retention = Retention { source_bytes_max: 20 * size, ..Retention::default() };
    let stores = stores(dir.path(), retention).await;
    let honest = sender(dir.path(), &stores).await;
    // Three more honest nodes: stem hops that fluff for whoever sends them stem envelopes.
    let mut hops = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir.path(), &format!("hop{i}"));
        c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
        hops.push(start(c).await.unwrap());
    }
    let mut c = cfg(dir.path(), "mallory");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    // A 1 ms epoch: a new stem successor for nearly every envelope, so the flood is spread
    // over every honest hop it is connected to (what a flooder would do on purpose).
    c.stem = Some(StemConfig { epoch_ms: 1, ..StemConfig::default() });
    let mallory = start(c).await.unwrap();
    wait_store_peers(&mallory, 3).await;
    // The stem is on by default: the honest nodes take stem envelopes.
    wait_stem_peers(&mallory, 4).await;
    let topic = Topic::for_conversation(&[11; 32]);
    let mut rx = honest.events();
    let before: Vec<Envelope> = (0..5).map(|i| mined(topic, &format!("before {i}"), vec![])).collect();
    let mut want: HashSet<Id> = before.iter().map(Envelope::id).collect();
    for e in before {
        honest.publish(e).await.unwrap();
    }
    wait_stored(&mut rx, &want, 30).await;
    // 200 cheap envelopes (on many topics, so no one topic's quota is what stops them).
    for i in 0..200u8 {
        mallory.publish(mined(Topic::for_conversation(&[i; 32]), "junk", vec![])).await.unwrap();
    }
    wait_refused(&stores, 3 * 150).await;
    let after: Vec<Envelope> = (0..5).map(|i| mined(topic, &format!("after {i}"), vec![])).collect();
    let later: HashSet<Id> = after.iter().map(Envelope::id).collect();
    for e in after {
        honest.publish(e).await.unwrap();
    }
    wait_stored(&mut rx, &later, 30).await;
    want.extend(later);
    eprintln!("honest sender's stem after the flood: {:?}", honest.status().await.unwrap().stem);
    let fluffed: u64 = {
        let mut n = 0;
        for h in &hops {
            n += u64::from(h.status().await.unwrap().stem.fluffed > 0);
        }
        n
    };
    assert!(fluffed >= 2, "the flood went through {fluffed} of the 3 honest hops, not several");
    for s in &stores {
        let st = s.status().await.unwrap();
        eprintln!("store holds {} envelopes ({fluffed} hops fluffed for the flooder)", st.mailbox.envelopes);
        assert!(
            st.mailbox.envelopes <= 2 * 20 + 10,
            "the flood took more than its own share and the relay pool: {}",
            st.mailbox.envelopes
        );
    }
    // A reader finds all ten honest envelopes in the mailboxes: the flood evicted nothing.
    let got = reader(dir.path(), &stores, topic, &want).await;
    assert!(
        want.is_subset(&got),
        "the reader found {} of the 10 honest envelopes",
        got.intersection(&want).count()
    );
    for n in stores.iter().chain([&honest, &mallory]).chain(&hops) {
        n.shutdown().await;
    }
}

/// Waits until `n` has `k` peers that take stem envelopes, or panics after 30 s.
async fn wait_stem_peers(n: &NodeHandle, k: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.status().await.unwrap().stem.peers < k {
        assert!(Instant::now() < deadline, "never saw {k} stem peers");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Sum of a figure over the store nodes.
async fn total(stores: &[NodeHandle], f: impl Fn(&cairn_net::node::NodeStatus) -> u64) -> u64 {
    let mut n = 0;
    for s in stores {
        n += f(&s.status().await.unwrap());
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_drop_a_payload_only_for_the_secret_of_its_erase_lock() {
    use cairn_proto::envelope::erase_lock;
    use cairn_proto::pow;
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path(), Retention::default()).await;
    let sender = sender(dir.path(), &stores).await;
    let topic = Topic::for_conversation(&[8; 32]);
    let secret = [42u8; 32];
    let mut env = mined(topic, "erase me", vec![]).with_erase_lock(erase_lock(&secret));
    pow::mine(&mut env.header, pow::Difficulty::default(), 1 << 30).unwrap();
    let id = env.id();
    let mut rx = sender.events();
    sender.publish(env).await.unwrap();
    wait_stored(&mut rx, &HashSet::from([id]), 30).await;
    // "Stored" means 2 acknowledgements; a third store node may still be writing its copy:
    // measure once the stores' bytes have not moved for 600 ms (bounded: 10 s).
    let mut held = total(&stores, |s| s.mailbox.bytes).await;
    let mut still = 0;
    for _ in 0..100 {
        sleep(Duration::from_millis(100)).await;
        let now = total(&stores, |s| s.mailbox.bytes).await;
        still = if now == held { still + 1 } else { 0 };
        held = now;
        if still >= 6 {
            break;
        }
    }
    assert!(held >= 2 * 256, "the payload is on at least 2 store nodes: {held} bytes");
    // A wrong secret, and an unknown id: nothing changes, nothing is confirmed.
    sender.erase_at_stores(topic, id, [1; 32]).await.unwrap();
    sender.erase_at_stores(topic, Id([3; 32]), secret).await.unwrap();
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(sender.status().await.unwrap().erasures_confirmed, 0);
    assert_eq!(total(&stores, |s| s.mailbox.bytes).await, held);
    // The secret: every store node holding it drops the payload and keeps the header.
    sender.erase_at_stores(topic, id, secret).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sender.status().await.unwrap().erasures_confirmed < 3 {
        assert!(Instant::now() < deadline, "the store nodes never confirmed the erasure");
        sleep(Duration::from_millis(100)).await;
    }
    let left = total(&stores, |s| s.mailbox.bytes).await;
    assert!(left + 2 * 256 <= held, "payload bytes freed: {held} → {left}");
    assert_eq!(total(&stores, |s| s.mailbox.envelopes).await, 3, "the headers stay as tombstones");
    sender.shutdown().await;
    for s in &stores {
        s.shutdown().await;
    }
}
