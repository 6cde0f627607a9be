//! The stem phase in real nodes on 127.0.0.1 (issue 17 §5), bounded in time:
//! - a spy connected directly to the sender (and to everyone else), following the topic's
//!   gossip and serving as one of its store nodes, never gets the sender's envelope first from
//!   the sender's peer id and never gets a store push from it, while every message reaches a
//!   subscriber and the sender's sends reach "stored" with receipts that verify; without the
//!   stem the same spy names the sender;
//! - a stem successor that takes envelopes and never answers: the fail-safe fires and every
//!   message is still stored and delivered;
//! - garbage on `/cairn/stem/1` is refused, costs its sender its rate allowance, makes the hop
//!   send nothing anywhere, and leaves the hop working;
//! - a successor that refused an own envelope is not asked again during the back-off, and
//!   every envelope is still stored with receipts.
//!
//! The loopback latency of the stem (publish → delivered, publish → stored) is printed by the
//! first two tests: `cargo nextest run -p cairn-net --test stem --no-capture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cairn_net::node::{NodeConfig, NodeEvent, NodeHandle, start};
use cairn_net::stem::StemConfig;
use cairn_net::stem_wire::{StemOutcome, StemResponse, decode_answers, encode_batch, encode_request};
use cairn_net::sync::SendStatus;
use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Id, Limits, Topic};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::broadcast::Receiver;
use tokio::time::{sleep, timeout};

mod common;
mod stem_raw;
use common::{mined, wait_store_peers};
use stem_raw::{Raw, Role};

/// Sends per run.
const SENDS: usize = 8;

fn tcp(n: &NodeHandle) -> Multiaddr {
    n.listen_addrs.iter().find(|a| a.to_string().contains("/tcp/")).unwrap().clone()
}

fn cfg(dir: &std::path::Path, name: &str, stem: Option<StemConfig>) -> NodeConfig {
    let mut c = common::cfg(dir, name);
    c.sync.retry_max_ms = 500;
    c.resync_every_ms = 1_000;
    c.stem = stem;
    c
}

/// Waits for `id` to be delivered on `rx` within `secs`; the time it took from `t0`.
async fn delivered(rx: &mut Receiver<NodeEvent>, id: Id, t0: Instant, secs: u64) -> Duration {
    timeout(Duration::from_secs(secs), async {
        loop {
            match rx.recv().await {
                Ok(NodeEvent::Delivered { id: got, .. }) if got == id => return t0.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} not delivered within {secs} s", id.short()))
}

/// Waits for `id` to be reported stored on `rx` within `secs`; the time it took from `t0`.
async fn stored(rx: &mut Receiver<NodeEvent>, id: Id, t0: Instant, secs: u64) -> Duration {
    timeout(Duration::from_secs(secs), async {
        loop {
            match rx.recv().await {
                Ok(NodeEvent::Status { id: got, status: SendStatus::Stored { acks } }) if got == id => {
                    assert!(acks >= 2);
                    return t0.elapsed();
                }
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} not stored within {secs} s", id.short()))
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// What one run of the spy scenario observed.
struct Observed {
    first_from_sender: usize,
    pushes_from_sender: usize,
    spy_saw: usize,
    fallbacks: u64,
    hops_relayed: u64,
    to_delivered_ms: f64,
    to_stored_ms: f64,
}

/// Two store nodes and a spy store (so the spy is one of the topic's 3 store nodes), a sender
/// `a`, two hops and a subscriber, everyone directly connected to the sender, and the spy
/// connected to everyone. `SENDS` messages from `a`, one after the other.
async fn spy_run(stem: Option<StemConfig>) -> Observed {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x17; 32]);
    let spy = Raw::start(Role::Spy(topic)).await;
    let s0 = start({
        let mut c = cfg(dir.path(), "s0", stem);
        c.serve_store = true;
        c
    })
    .await
    .unwrap();
    let s1 = start({
        let mut c = cfg(dir.path(), "s1", stem);
        c.serve_store = true;
        c.bootstrap = vec![tcp(&s0)];
        c
    })
    .await
    .unwrap();
    let mut users = Vec::new();
    for name in ["a", "h1", "h2", "r"] {
        let mut c = cfg(dir.path(), name, stem);
        c.bootstrap = vec![tcp(&s0)];
        users.push(start(c).await.unwrap());
    }
    let (a, r) = (&users[0], &users[3]);
    for u in &users[1..] {
        a.dial(tcp(u)).await.unwrap();
    }
    for n in [&s0, &s1].into_iter().chain(users.iter()) {
        spy.dial(&tcp(n)).await;
    }
    for u in &users {
        wait_store_peers(u, 3).await;
    }
    if stem.is_some() {
        // The sender knows its three neighbours take stem envelopes (identify is done).
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.status().await.unwrap().stem.peers < 3 {
            assert!(Instant::now() < deadline, "the sender never saw its 3 stem peers");
            sleep(Duration::from_millis(100)).await;
        }
    }
    a.subscribe(topic).await.unwrap();
    r.subscribe(topic).await.unwrap();
    let mut a_rx = a.events();
    let mut r_rx = r.events();
    sleep(Duration::from_secs(3)).await; // gossip meshes form (heartbeat 500 ms)

    let (mut to_delivered, mut to_stored) = (Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for i in 0..SENDS {
        let e = mined(topic, &format!("stem {i}"), vec![]);
        let t0 = Instant::now();
        let id = a.publish(e).await.unwrap();
        to_delivered.push(delivered(&mut r_rx, id, t0, 30).await);
        to_stored.push(stored(&mut a_rx, id, t0, 30).await);
        ids.push(id);
    }
    // Every send is stored with receipts of its store nodes that verify under their keys.
    let store_ids: HashSet<PeerId> = [s0.peer_id, s1.peer_id, spy.peer_id].into_iter().collect();
    for id in &ids {
        let receipts = a.receipts(id).unwrap();
        assert!(receipts.len() >= 2, "{} receipts for a stored envelope", receipts.len());
        for (peer, rc) in receipts {
            assert!(store_ids.contains(&peer), "a receipt of a store node of the topic");
            assert_eq!(rc.id, *id);
            assert_eq!(rc.verify(&peer), Ok(()));
        }
    }
    // Let the last gossip copies reach the spy.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spy.log.lock().unwrap().first_from.len() < SENDS && Instant::now() < deadline {
        sleep(Duration::from_millis(100)).await;
    }
    let st = a.status().await.unwrap();
    let mut hops_relayed = 0;
    for n in [&s0, &s1].into_iter().chain(users[1..].iter()) {
        hops_relayed += n.status().await.unwrap().stem.relayed;
    }
    let obs = {
        let log = spy.log.lock().unwrap();
        Observed {
            first_from_sender: ids.iter().filter(|id| log.first_from.get(id) == Some(&a.peer_id)).count(),
            pushes_from_sender: log.store_pushes.iter().filter(|(p, _)| *p == a.peer_id).count(),
            spy_saw: ids.iter().filter(|id| log.first_from.contains_key(id)).count(),
            fallbacks: st.stem.fallbacks,
            hops_relayed,
            to_delivered_ms: median_ms(to_delivered),
            to_stored_ms: median_ms(to_stored),
        }
    };
    for n in [&s0, &s1].into_iter().chain(users.iter()) {
        n.shutdown().await;
    }
    obs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_hop_gives_the_sender_away_only_without_the_stem() {
    let with = spy_run(Some(StemConfig::default())).await;
    let without = spy_run(None).await;
    eprintln!(
        "stem on: first from sender {}/{SENDS}, store pushes from sender {}, spy saw {}, fallbacks {}, \
         hop relays {}, median publish→delivered {:.1} ms, publish→stored {:.1} ms",
        with.first_from_sender,
        with.pushes_from_sender,
        with.spy_saw,
        with.fallbacks,
        with.hops_relayed,
        with.to_delivered_ms,
        with.to_stored_ms
    );
    eprintln!(
        "stem off: first from sender {}/{SENDS}, store pushes from sender {}, spy saw {}, \
         median publish→delivered {:.1} ms, publish→stored {:.1} ms",
        without.first_from_sender,
        without.pushes_from_sender,
        without.spy_saw,
        without.to_delivered_ms,
        without.to_stored_ms
    );
    // Without the stem the spy names the sender (the issue's observation): the test can fail.
    assert!(without.first_from_sender > 0 && without.pushes_from_sender > 0, "the control names no one");
    assert_eq!(with.spy_saw, SENDS, "the spy follows the topic: it saw every message");
    assert_eq!(with.first_from_sender, 0, "a gossip copy came first from the sender");
    assert_eq!(with.pushes_from_sender, 0, "the sender pushed to a store node itself");
    assert_eq!(with.fallbacks, 0, "no stem failed on an honest network");
    assert!(with.hops_relayed >= SENDS as u64, "each message went through at least one hop");
}

/// Three store nodes, each bootstrapped from the first.
async fn three_stores(dir: &std::path::Path) -> Vec<NodeHandle> {
    let mut stores = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir, &format!("s{i}"), None);
        c.serve_store = true;
        if let Some(s) = stores.first() {
            c.bootstrap = vec![tcp(s)];
        }
        stores.push(start(c).await.unwrap());
    }
    stores
}

/// The stem config of a hop that fluffs everything it takes.
fn fluff_always() -> StemConfig {
    StemConfig { fluff_per_mille: 1000, ..StemConfig::default() }
}

/// A stem hop that fluffs everything it takes, bootstrapped from `store`; `tweak` edits its
/// config before it starts.
async fn fluffing_hop(
    dir: &std::path::Path,
    store: &NodeHandle,
    tweak: impl FnOnce(&mut NodeConfig),
) -> NodeHandle {
    let mut c = cfg(dir, "hop", Some(fluff_always()));
    c.bootstrap = vec![tcp(store)];
    tweak(&mut c);
    start(c).await.unwrap()
}

/// A sender running `stem`, bootstrapped from the store nodes and connected to `hop`, its
/// only stem peer; returned once it sees the three store nodes and `hop` as a stem peer.
async fn sender_through(
    dir: &std::path::Path,
    stores: &[NodeHandle],
    hop: &NodeHandle,
    stem: StemConfig,
) -> NodeHandle {
    let mut c = cfg(dir, "a", Some(stem));
    c.bootstrap = vec![tcp(&stores[0])];
    let a = start(c).await.unwrap();
    a.dial(tcp(hop)).await.unwrap();
    wait_store_peers(&a, 3).await;
    wait_store_peers(hop, 3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.status().await.unwrap().stem.peers < 1 {
        assert!(Instant::now() < deadline, "the sender never saw its stem peer");
        sleep(Duration::from_millis(100)).await;
    }
    a
}

/// Waits until `a` has no send pending (each stored on enough store nodes), or panics after
/// 30 s naming `what`.
async fn wait_unpending(a: &NodeHandle, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a.status().await.unwrap().pending.is_empty() {
        assert!(Instant::now() < deadline, "{what} still pending: {:?}", a.status().await.unwrap().pending);
        sleep(Duration::from_millis(50)).await;
    }
}

/// Three store nodes and a sender `a` running the stem with a short fail-safe (returned).
async fn stores_and_fast_sender(dir: &std::path::Path) -> (StemConfig, Vec<NodeHandle>, NodeHandle) {
    let fast = StemConfig { failsafe_ms: 300, failsafe_jitter_ms: 100, ..StemConfig::default() };
    let stores = three_stores(dir).await;
    let mut c = cfg(dir, "a", Some(fast));
    c.bootstrap = vec![tcp(&stores[0])];
    let a = start(c).await.unwrap();
    (fast, stores, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stem_hop_trips_the_failsafe_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x18; 32]);
    let hole = Raw::start(Role::BlackHole).await;
    // Only the sender runs the stem: the black hole is its one stem peer.
    let (fast, stores, a) = stores_and_fast_sender(dir.path()).await;
    let r = start({
        let mut c = cfg(dir.path(), "r", None);
        c.bootstrap = vec![tcp(&stores[1])];
        c
    })
    .await
    .unwrap();
    hole.dial(&tcp(&a)).await;
    wait_store_peers(&a, 3).await;
    wait_store_peers(&r, 3).await;
    r.subscribe(topic).await.unwrap();
    let mut a_rx = a.events();
    let mut r_rx = r.events();
    sleep(Duration::from_secs(1)).await;
    let mut to_stored = Vec::new();
    for i in 0..3 {
        let e = mined(topic, &format!("into the hole {i}"), vec![]);
        let t0 = Instant::now();
        let id = a.publish(e).await.unwrap();
        to_stored.push(stored(&mut a_rx, id, t0, 30).await);
        delivered(&mut r_rx, id, t0, 30).await;
        assert!(a.receipts(&id).unwrap().len() >= 2, "receipts of two store nodes");
    }
    let held = hole.log.lock().unwrap().held;
    let st = a.status().await.unwrap();
    eprintln!(
        "black hole: held {held}, fallbacks {}, median publish→stored {:.0} ms (wait {} ms)",
        st.stem.fallbacks,
        median_ms(to_stored.clone()),
        2 * (fast.failsafe_ms + fast.failsafe_jitter_ms)
    );
    assert_eq!(held, 3, "each envelope went into the black hole first");
    assert_eq!(st.stem.fallbacks, 3, "each one's fail-safe fired");
    assert!(st.pending.is_empty(), "nothing left unstored: {:?}", st.pending);
    for n in stores.iter().chain([&a, &r]) {
        n.shutdown().await;
    }
}

/// A stem successor that drops what it gets is replaced after its first failure: of 4
/// envelopes, at most the first goes into the black hole (before, every envelope of the
/// 10-minute epoch did, each waiting out the fail-safe: this test then failed in the runs
/// where the black hole was chosen first, about half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_successor_is_replaced_after_one_failure() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x19; 32]);
    let hole = Raw::start(Role::BlackHole).await;
    let (fast, stores, a) = stores_and_fast_sender(dir.path()).await;
    // An honest stem peer of the sender, besides the black hole.
    let h = start({
        let mut c = cfg(dir.path(), "h", Some(fast));
        c.bootstrap = vec![tcp(&a), tcp(&stores[1])];
        c
    })
    .await
    .unwrap();
    hole.dial(&tcp(&a)).await;
    wait_store_peers(&a, 3).await;
    wait_store_peers(&h, 3).await;
    let mut a_rx = a.events();
    sleep(Duration::from_secs(1)).await;
    for i in 0..4 {
        let e = mined(topic, &format!("past the hole {i}"), vec![]);
        let t0 = Instant::now();
        let id = a.publish(e).await.unwrap();
        stored(&mut a_rx, id, t0, 30).await;
    }
    let held = hole.log.lock().unwrap().held;
    let st = a.status().await.unwrap();
    eprintln!("black hole beside an honest peer: held {held} of 4, fallbacks {}", st.stem.fallbacks);
    assert!(held <= 1, "the black hole stayed the successor: it held {held} of 4");
    assert!(st.stem.fallbacks <= 1, "{} envelopes waited out the fail-safe", st.stem.fallbacks);
    for n in stores.iter().chain([&a, &h]) {
        n.shutdown().await;
    }
}

/// A 1-hour envelope with no proof of work at all.
fn unmined(topic: Topic) -> Envelope {
    Envelope::new(topic, common::now_ms(), 3600, vec![], pad(b"free", &Limits::default()).unwrap())
}

fn outcome(answer: &Result<Vec<u8>, String>) -> StemOutcome {
    StemResponse::decode(answer.as_ref().expect("an answer")).expect("a well-formed answer").outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_stem_is_refused_costs_its_sender_and_goes_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x19; 32]);
    let stores = three_stores(dir.path()).await;
    // The hop: a stem node that allows each peer 20 envelopes, then 1 per second.
    let hop = fluffing_hop(dir.path(), &stores[0], |c| {
        c.admission.peer_rate_per_sec = 1;
        c.admission.peer_burst = 20;
    })
    .await;
    let r = start({
        let mut c = cfg(dir.path(), "r", None);
        c.bootstrap = vec![tcp(&stores[1])];
        c
    })
    .await
    .unwrap();
    wait_store_peers(&hop, 3).await;
    r.subscribe(topic).await.unwrap();
    let mut r_rx = r.events();
    let attacker = Raw::start(Role::Client).await;
    attacker.dial(&tcp(&hop)).await;
    sleep(Duration::from_secs(1)).await;

    // Twenty pieces of garbage (the hop's whole allowance for one peer), each answered with a
    // 4-byte refusal and sent nowhere.
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![9; 100],                                  // unknown version
        encode_request(&[], &[0xAB; 5000]),            // version 1, not an envelope
        encode_request(&[], &unmined(topic).encode()), // an envelope without proof of work
        {
            let mut e = mined(topic, "cut short", vec![]).encode();
            e.truncate(e.len() - 1);
            encode_request(&[], &e)
        },
    ];
    let (mut sent_bytes, mut answer_bytes) = (0, 0);
    for i in 0..20 {
        let g = garbage[i % garbage.len()].clone();
        sent_bytes += g.len();
        let a = attacker.stem(hop.peer_id, g).await;
        answer_bytes += a.as_ref().map_or(0, Vec::len);
        assert_eq!(outcome(&a), StemOutcome::Refused, "garbage #{i}");
    }
    assert!(answer_bytes <= 4 * 20, "{answer_bytes} bytes of answers to {sent_bytes} bytes of garbage");
    // It cost the attacker its allowance: its next, valid, envelope is refused as over rate.
    let valid = mined(topic, "valid", vec![]);
    let a = attacker.stem(hop.peer_id, encode_request(&[], &valid.encode())).await;
    assert_eq!(outcome(&a), StemOutcome::Refused, "over its rate after the garbage");
    // An oversized frame is cut off by the codec: a failed request, no answer, no work.
    assert!(attacker.stem(hop.peer_id, vec![1; 300 * 1024]).await.is_err(), "oversized frame");
    let st = hop.status().await.unwrap();
    assert_eq!(st.stem.refused, 21, "{:?}", st.stem);
    assert_eq!(st.rejected, 20, "each piece of garbage counts as rejected");
    assert_eq!(st.stem.relayed, 0);
    let mut held = 0;
    for s in &stores {
        held += s.status().await.unwrap().store_envelopes;
    }
    assert_eq!(held, 0, "nothing of the garbage reached a store node");

    // Without harm: like any gossip peer the attacker earns a token a second, and then its
    // valid envelope is taken, fluffed by the hop, stored and delivered to the reader.
    sleep(Duration::from_millis(2500)).await;
    let t0 = Instant::now();
    let a = attacker.stem(hop.peer_id, encode_request(&[], &valid.encode())).await;
    let resp = StemResponse::decode(a.as_ref().unwrap()).unwrap();
    assert_eq!(resp.outcome, StemOutcome::Receipts);
    assert_eq!(resp.receipts.len(), 3, "the three store nodes' receipts come back");
    for (store, rc) in &resp.receipts {
        assert_eq!(rc.verify(store), Ok(()));
    }
    delivered(&mut r_rx, valid.id(), t0, 30).await;
    let mut held = 0;
    for s in &stores {
        held += s.status().await.unwrap().store_envelopes;
    }
    assert_eq!(held, 3, "each store node holds the valid envelope and nothing else");
    for n in stores.iter().chain([&hop, &r]) {
        n.shutdown().await;
    }
}

/// A burst of stem envelopes that a hop fluffs together is pushed to the store nodes in
/// batched requests (`StoreRelayedMany`, one per store node and turn of the hop's loop), and
/// the answer to each envelope still carries the three store nodes' receipts for that envelope
/// alone, whether it travelled alone or in a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_fluffed_together_gets_each_envelope_its_own_receipts() {
    const BURST: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x1A; 32]);
    let stores = three_stores(dir.path()).await;
    let hop = fluffing_hop(dir.path(), &stores[0], |_| {}).await;
    wait_store_peers(&hop, 3).await;
    let sender = Raw::start(Role::Client).await;
    sender.dial(&tcp(&hop)).await;
    sleep(Duration::from_secs(1)).await;

    let envs: Vec<Envelope> = (0..BURST).map(|i| mined(topic, &format!("burst {i}"), vec![])).collect();
    let answers = futures::future::join_all(
        envs.iter().map(|e| sender.stem(hop.peer_id, encode_request(&[], &e.encode()))),
    )
    .await;
    let store_ids: HashSet<PeerId> = stores.iter().map(|s| s.peer_id).collect();
    for (e, a) in envs.iter().zip(&answers) {
        let resp = StemResponse::decode(a.as_ref().expect("an answer")).unwrap();
        assert_eq!(resp.outcome, StemOutcome::Receipts);
        let from: HashSet<PeerId> = resp.receipts.iter().map(|(p, _)| *p).collect();
        assert_eq!(from, store_ids, "one receipt from each of the three store nodes");
        for (store, rc) in &resp.receipts {
            assert_eq!(rc.id, e.id(), "the receipt is for this envelope");
            assert_eq!(rc.verify(store), Ok(()));
        }
    }
    for s in &stores {
        assert_eq!(
            s.status().await.unwrap().store_envelopes,
            BURST as u64,
            "each store node holds the burst"
        );
    }
    // A batch request (version 2): new envelopes and one the hop has seen; one answer each,
    // in order, each new one with the three receipts for it.
    let more: Vec<Envelope> = (0..4).map(|i| mined(topic, &format!("batch {i}"), vec![])).collect();
    let mut encoded: Vec<Vec<u8>> = more.iter().map(Envelope::encode).collect();
    encoded.insert(2, envs[0].encode());
    let a = sender.stem(hop.peer_id, encode_batch(&[], &encoded)).await.expect("an answer");
    let answers = decode_answers(&a).unwrap();
    let outcomes: Vec<StemOutcome> = answers.iter().map(|r| r.outcome).collect();
    use StemOutcome::{Duplicate, Receipts};
    assert_eq!(outcomes, [Receipts, Receipts, Duplicate, Receipts, Receipts]);
    let fresh = answers.iter().filter(|r| r.outcome == Receipts);
    for (e, resp) in more.iter().zip(fresh) {
        assert_eq!(resp.receipts.len(), 3, "three receipts");
        for (store, rc) in &resp.receipts {
            assert_eq!(rc.id, e.id(), "the receipt is for this envelope");
            assert_eq!(rc.verify(store), Ok(()));
        }
    }
    for n in stores.iter().chain([&hop]) {
        n.shutdown().await;
    }
}

/// A sender's burst goes into the stem (batched, version 2, when its envelopes are committed
/// together: batches of 16 and 8 were seen), and every envelope of it is stored with
/// receipts, none by the fallback path, batched or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_burst_through_the_stem_is_stored_with_receipts_and_no_fallback() {
    const BURST: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x1B; 32]);
    let stores = three_stores(dir.path()).await;
    let hop = fluffing_hop(dir.path(), &stores[0], |_| {}).await;
    let a = sender_through(dir.path(), &stores, &hop, fluff_always()).await;
    let envs: Vec<Envelope> = (0..BURST).map(|i| mined(topic, &format!("burst {i}"), vec![])).collect();
    let ids = futures::future::join_all(envs.into_iter().map(|e| a.publish(e))).await;
    let ids: Vec<Id> = ids.into_iter().map(Result::unwrap).collect();
    wait_unpending(&a, "the burst").await;
    for id in &ids {
        let receipts = a.receipts(id).unwrap();
        assert!(receipts.len() >= 2, "{} receipts for {}", receipts.len(), id.short());
        for (peer, rc) in receipts {
            assert_eq!(rc.id, *id);
            assert_eq!(rc.verify(&peer), Ok(()));
        }
    }
    let st = a.status().await.unwrap();
    assert_eq!(st.stem.fallbacks, 0, "no envelope took the direct path");
    assert_eq!(hop.status().await.unwrap().stem.relayed, BURST as u64, "each went through the hop");
    for n in stores.iter().chain([&hop, &a]) {
        n.shutdown().await;
    }
}

/// A successor that refuses an own envelope (here: over its allowance for the sender) is not
/// asked again during the sender's back-off: the next envelopes go the direct way at once, and
/// every envelope is stored with receipts either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_successor_is_not_asked_again_during_the_back_off() {
    const SENDS: usize = 6;
    const ALLOWANCE: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[0x1C; 32]);
    let stores = three_stores(dir.path()).await;
    // One epoch for the whole test: the allowance does not renew midway.
    let hop_stem = StemConfig { per_peer_per_epoch_max: ALLOWANCE, epoch_ms: u64::MAX, ..fluff_always() };
    let hop = fluffing_hop(dir.path(), &stores[0], |c| c.stem = Some(hop_stem)).await;
    let a = sender_through(
        dir.path(),
        &stores,
        &hop,
        StemConfig { refused_backoff_ms: 600_000, ..fluff_always() },
    )
    .await;
    // One at a time, each stored before the next: no batching, each asks (or not) alone.
    let mut ids = Vec::new();
    for i in 0..SENDS {
        let id = a.publish(mined(topic, &format!("one by one {i}"), vec![])).await.unwrap();
        wait_unpending(&a, &format!("send {i}")).await;
        ids.push(id);
    }
    for id in &ids {
        assert!(a.receipts(id).unwrap().len() >= 2, "stored with receipts: {}", id.short());
    }
    let (sender, relay) = (a.status().await.unwrap().stem, hop.status().await.unwrap().stem);
    assert_eq!(relay.relayed, u64::from(ALLOWANCE), "the hop took its allowance");
    assert_eq!(relay.refused, 1, "asked once past the allowance, then not again");
    assert_eq!(sender.fallbacks, 1, "the refused one went direct");
    assert_eq!(sender.backed_off, (SENDS - ALLOWANCE as usize - 1) as u64, "the rest went direct at once");
    for n in stores.iter().chain([&hop, &a]) {
        n.shutdown().await;
    }
}
