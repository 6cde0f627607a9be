//! Attacks on store placement and store capacity, on 127.0.0.1, bounded in time:
//! - **Sybil store placement**: an attacker runs store nodes whose peer ids are ground to be
//!   XOR-closest to a topic (under the unregistered rule they would be its whole store set). With
//!   the ledger's registered set fed to sender and reader, not one envelope reaches them, and the
//!   honest messages are stored on the registered stores and read back.
//! - **Flood against load-priced proof of work**: a flood raises what the store nodes ask
//!   (`NeedsWork`), and an honest sender that mines for the announced price still gets through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::node::{NodeConfig, NodeEvent, NodeHandle, start};
use cairn_net::shard::nearest;
use cairn_net::sync::SendStatus;
use cairn_proto::envelope::pad;
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Topic};
use libp2p::identity::Keypair;
use libp2p::kad::KBucketKey;
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{collect, mined, now_ms, wait_store_peers, wait_stored};

fn kad_key(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&KBucketKey::new(bytes.to_vec()).hashed_bytes()[..32]);
    out
}

/// The node key (Ed25519 public key) and peer id of an identity seed.
fn identity(seed: [u8; 32]) -> ([u8; 32], libp2p::PeerId) {
    let kp = Keypair::ed25519_from_bytes(seed).unwrap();
    (kp.public().try_into_ed25519().unwrap().to_bytes(), kp.public().to_peer_id())
}

fn cfg(dir: &std::path::Path, name: &str) -> NodeConfig {
    let mut c = common::cfg(dir, name);
    c.sync.retry_max_ms = 500;
    c
}

async fn store(dir: &std::path::Path, name: &str, seed: [u8; 32], boot: Option<&NodeHandle>) -> NodeHandle {
    let mut c = cfg(dir, name);
    c.serve_store = true;
    c.identity_seed = Some(seed);
    if let Some(b) = boot {
        c.bootstrap = vec![b.listen_addrs[0].clone()];
    }
    start(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_store_ids_get_no_mail_and_honest_mail_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic([0x3C; 32]);
    let topic_key = kad_key(&topic.0);

    // honest stores, registered on the ledger (here: their keys and salts, as the proven
    // store set gives them)
    let honest_seeds: Vec<[u8; 32]> = (0..3u8).map(|i| [0xA0 + i; 32]).collect();
    let registered: Vec<([u8; 32], [u8; 32])> =
        honest_seeds.iter().enumerate().map(|(i, s)| (identity(*s).0, [i as u8 + 1; 32])).collect();

    // the attacker grinds 3,000 identities and keeps the 4 whose peer ids are XOR-closest to the
    // topic
    let mut ground: Vec<([u8; 32], [u8; 32])> = (0..3000u32)
        .map(|i| {
            let mut seed = [0x55u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let (_, peer) = identity(seed);
            (seed, kad_key(&peer.to_bytes()))
        })
        .collect();
    ground.sort_by_key(|(_, k)| cairn_net::shard::distance(&topic_key, k));
    let attacker_seeds: Vec<[u8; 32]> = ground.iter().take(4).map(|(s, _)| *s).collect();

    // under the old rule (XOR distance among every store peer) the attacker takes the whole set
    let mut cands: Vec<(bool, [u8; 32])> =
        honest_seeds.iter().map(|s| (false, kad_key(&identity(*s).1.to_bytes()))).collect();
    cands.extend(attacker_seeds.iter().map(|s| (true, kad_key(&identity(*s).1.to_bytes()))));
    assert!(nearest(&topic_key, &cands, 3).into_iter().all(|attacker| attacker), "grinding failed");

    let mut stores = vec![store(dir.path(), "h0", honest_seeds[0], None).await];
    for (i, s) in honest_seeds.iter().enumerate().skip(1) {
        let h = store(dir.path(), &format!("h{i}"), *s, stores.first()).await;
        stores.push(h);
    }
    let mut attackers = Vec::new();
    for (i, s) in attacker_seeds.iter().enumerate() {
        attackers.push(store(dir.path(), &format!("x{i}"), *s, stores.first()).await);
    }

    let mut c = cfg(dir.path(), "sender");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let sender = start(c).await.unwrap();
    assert_eq!(sender.set_registered_stores(registered.clone()).await.unwrap(), 3);
    // the sender knows every store peer, the attacker's included
    wait_store_peers(&sender, 7).await;

    let mut events = sender.events();
    let mut ids = HashSet::new();
    let mut parent = vec![];
    for i in 0..20 {
        let e = mined(topic, &format!("honest {i}"), parent.clone());
        parent = vec![e.id()];
        ids.insert(sender.publish(e).await.unwrap());
    }
    wait_stored(&mut events, &ids, 30).await;

    // a reader that also reads the registered set finds every message at the same stores
    let mut c = cfg(dir.path(), "reader");
    c.bootstrap = vec![attackers[0].listen_addrs[0].clone()];
    let reader = start(c).await.unwrap();
    reader.set_registered_stores(registered).await.unwrap();
    wait_store_peers(&reader, 7).await;
    let mut revents = reader.events();
    reader.subscribe(topic).await.unwrap();
    let got: HashSet<Id> = collect(&mut revents, &ids, 30).await.into_iter().collect();
    assert_eq!(got, ids, "the reader missed honest messages");

    // the honest stores hold the mail; the ground ones were never asked to store anything
    let mut held = 0;
    for s in &stores {
        held += s.status().await.unwrap().mailbox.envelopes;
    }
    assert!(held >= 2 * ids.len() as u64, "honest stores hold only {held} copies");
    for a in &attackers {
        let st = a.status().await.unwrap();
        assert_eq!(st.mailbox.envelopes, 0, "an unregistered store was given mail");
        assert_eq!(st.store_envelopes, 0);
    }
    for n in [sender, reader].iter().chain(stores.iter()).chain(attackers.iter()) {
        n.shutdown().await;
    }
}

/// An envelope of `topic` mined for `base_bits`.
fn mined_at(topic: Topic, body: &str, base_bits: u32) -> Envelope {
    let mut e =
        Envelope::new(topic, now_ms(), 3600, vec![], pad(body.as_bytes(), &Limits::default()).unwrap());
    pow::mine(&mut e.header, Difficulty { base_bits }, 1 << 32).unwrap();
    e
}

/// An envelope whose id has exactly 8 leading zero bits: the floor's price and not a bit more
/// (so a store asking 9 or more refuses it, whatever the luck).
fn mined_at_floor_exactly(topic: Topic, body: &str) -> Envelope {
    let mut e = mined_at(topic, body, 8);
    while pow::leading_zero_bits(&e.id()) > 8 {
        e.header.pow_nonce = e.header.pow_nonce.wrapping_add(1);
        pow::mine(&mut e.header, Difficulty { base_bits: 8 }, 1 << 32).unwrap();
    }
    e
}

/// Waits up to `secs` for `id` to be reported stored.
async fn stored_within(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>, id: Id, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Ok(NodeEvent::Status { id: got, status: SendStatus::Stored { .. } })) if got == id => {
                return true;
            }
            Ok(Ok(_)) => {}
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_raises_the_price_and_an_honest_sender_pays_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut stores: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir.path(), &format!("s{i}"));
        c.serve_store = true;
        // a small store: more than 1 envelope a second (10 per window) raises the price
        c.serve.load_envelopes_per_sec = 1;
        if let Some(s) = stores.first() {
            c.bootstrap = vec![s.listen_addrs[0].clone()];
        }
        stores.push(start(c).await.unwrap());
    }
    let mut c = cfg(dir.path(), "flooder");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let flooder = start(c).await.unwrap();
    wait_store_peers(&flooder, 3).await;
    let mut c = cfg(dir.path(), "honest");
    c.bootstrap = vec![stores[1].listen_addrs[0].clone()];
    let honest = start(c).await.unwrap();
    wait_store_peers(&honest, 3).await;

    let topic = Topic([0x77; 32]);
    let spam = Topic([0x66; 32]);
    // the flood: envelopes at the floor's price, as fast as they are taken, until the honest
    // sender is done (at most 20,000 and 90 s)
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (flooder, stop) = (flooder.clone(), stop.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut sent = 0u32;
            while sent < 20_000
                && Instant::now() < deadline
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                if flooder.publish(mined_at(spam, &format!("spam {sent}"), 8)).await.is_ok() {
                    sent += 1;
                } else {
                    sleep(Duration::from_millis(20)).await;
                }
            }
            sent
        })
    };
    // the stores answer the flood with a higher price, which the flooder learns
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut price = 8;
    while price <= 8 {
        assert!(Instant::now() < deadline, "the flood never raised the price");
        sleep(Duration::from_millis(200)).await;
        price = flooder.work_bits(spam).await.unwrap();
    }
    assert!((9..=20).contains(&price), "price {price}");

    // an honest envelope at exactly the floor's price is refused with the price (NeedsWork) …
    let mut events = honest.events();
    let probe = honest.publish(mined_at_floor_exactly(topic, "at the floor")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut asked = honest.work_bits(topic).await.unwrap();
    while asked <= 8 {
        assert!(Instant::now() < deadline, "the honest sender was never told the price");
        sleep(Duration::from_millis(100)).await;
        asked = honest.work_bits(topic).await.unwrap();
    }
    // … and one mined for the announced price gets through while the flood goes on
    let mut stored = None;
    let mut paid = asked;
    for i in 0..6 {
        paid = honest.work_bits(topic).await.unwrap().max(9);
        let id = honest.publish(mined_at(topic, &format!("honest {i}"), paid)).await.unwrap();
        if stored_within(&mut events, id, 10).await {
            stored = Some(id);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.unwrap();
    assert!(stored.is_some(), "the honest sender never got through (last paid {paid} bits)");
    eprintln!(
        "flood: {sent} envelopes at 8 bits; price seen by the flooder {price} bits; the honest probe \
         {} was answered NeedsWork {asked}; paid {paid} bits and got through",
        probe.short()
    );
    for n in [flooder, honest].iter().chain(stores.iter()) {
        n.shutdown().await;
    }
}
