//! Light clients (issue 17 §2) on 127.0.0.1: three store nodes, two service nodes, a full
//! sender (alice) and light clients. A light client sends and receives through its service
//! nodes and serves nothing; a withholding service node is found out; killing a service node
//! loses nothing; and the traffic figures (bytes received per delivered byte, idle packets with
//! 1 and 50 conversations) are printed (`cargo nextest run -p cairn-net --test light
//! --no-capture light_traffic_figures`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use cairn_net::light::{LightConfig, LightServeLimits};
use cairn_net::node::{
    LIGHT_PROTOCOL, NodeConfig, NodeEvent, NodeHandle, STEM_PROTOCOL, STORE_PROTOCOL, Traffic, start,
};
use cairn_net::sync::SendStatus;
use cairn_net::{Multiaddr, PeerId};
use cairn_proto::{Envelope, Id, Topic};
use common::{cfg, collect, mined, wait_store_peers};
use libp2p::StreamProtocol;
use tokio::sync::broadcast::Receiver;
use tokio::time::{Instant, sleep, timeout};

fn tcp_only(c: &mut NodeConfig) {
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
}

struct Net {
    stores: Vec<NodeHandle>,
    services: Vec<NodeHandle>,
    alice: NodeHandle,
}

impl Net {
    /// Three store nodes, two service nodes (the second withholding if asked), and alice, a full
    /// node; only the service nodes serve light clients.
    async fn start(dir: &std::path::Path, withhold_second: bool) -> Self {
        let second = LightServeLimits { withhold: withhold_second, ..Default::default() };
        Self::start_with(dir, [LightServeLimits::default(), second]).await
    }

    /// As `start`, the service nodes with these limits.
    async fn start_with(dir: &std::path::Path, limits: [LightServeLimits; 2]) -> Self {
        let mut stores: Vec<NodeHandle> = Vec::new();
        for i in 0..3 {
            let mut c = cfg(dir, &format!("store{i}"));
            tcp_only(&mut c);
            c.serve_store = true;
            c.light_serve = None;
            c.bootstrap = stores.iter().map(|s| s.listen_addrs[0].clone()).collect();
            stores.push(start(c).await.unwrap());
        }
        let store_addrs: Vec<Multiaddr> = stores.iter().map(|s| s.listen_addrs[0].clone()).collect();
        let mut services = Vec::new();
        for (i, l) in limits.into_iter().enumerate() {
            let mut c = cfg(dir, &format!("service{i}"));
            tcp_only(&mut c);
            c.light_serve = Some(l);
            c.bootstrap = store_addrs.clone();
            services.push(start(c).await.unwrap());
        }
        let mut c = cfg(dir, "alice");
        tcp_only(&mut c);
        c.light_serve = None;
        c.bootstrap =
            store_addrs.iter().chain(services.iter().map(|s| &s.listen_addrs[0])).cloned().collect();
        let alice = start(c).await.unwrap();
        wait_store_peers(&alice, 3).await;
        Self { stores, services, alice }
    }

    /// A light client joined through the service nodes and the store nodes.
    async fn light(&self, dir: &std::path::Path, name: &str) -> NodeHandle {
        self.light_with_grace(dir, name, 2_000).await
    }

    /// As `light`, with this cross-check grace (ms).
    async fn light_with_grace(&self, dir: &std::path::Path, name: &str, grace_ms: u64) -> NodeHandle {
        let mut c = cfg(dir, name);
        tcp_only(&mut c);
        c.light = Some(LightConfig { grace_ms, warmup_ms: 1_000, keepalive_ms: 5_000, ..Default::default() });
        c.bootstrap = self.services.iter().chain(&self.stores).map(|s| s.listen_addrs[0].clone()).collect();
        start(c).await.unwrap()
    }
}

/// Waits until the light client has two service streams and three store nodes, and the
/// service nodes joined the shard of its buckets; then lets gossip subscriptions spread.
async fn ready(light: &NodeHandle, services: &[NodeHandle]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = light.status().await.unwrap();
        let mut shards = 0;
        for sv in services {
            shards += usize::from(sv.status().await.unwrap().shards > 0);
        }
        if s.light.services.len() == 2 && s.store_peers == 3 && shards == services.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "light client not ready: {:?}, store peers {}",
            s.light,
            s.store_peers
        );
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_secs(2)).await; // gossipsub subscriptions reach alice
}

/// Publishes `n` chained envelopes (each names the one before as parent); their ids in order.
async fn send_chain(
    from: &NodeHandle,
    topic: Topic,
    tag: &str,
    n: usize,
    body_bytes: usize,
) -> Vec<Envelope> {
    let mut out: Vec<Envelope> = Vec::new();
    for i in 0..n {
        let parents = out.last().map(|e| vec![e.id()]).unwrap_or_default();
        let body = format!("{tag}{i}:{}", "x".repeat(body_bytes));
        let e = mined(topic, &body, parents);
        from.publish(e.clone()).await.unwrap();
        out.push(e);
    }
    out
}

fn ids(es: &[Envelope]) -> HashSet<Id> {
    es.iter().map(Envelope::id).collect()
}

/// Waits until every id is reported stored with at least `k` acknowledgements.
async fn wait_stored_k(rx: &mut Receiver<NodeEvent>, want: &HashSet<Id>, k: usize, secs: u64) {
    let mut stored = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while stored.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Status { id, status: SendStatus::Stored { acks } })) if want.contains(&id) => {
                assert!(acks >= k, "stored with {acks} acks, {k} wanted");
                stored.insert(id);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("only {} of {} stored", stored.len(), want.len()),
        }
    }
}

fn withheld_of(s: &cairn_net::node::NodeStatus, p: PeerId) -> u64 {
    s.light.withheld.iter().find(|(q, _)| *q == p).map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_client_sends_and_receives_through_service_nodes_and_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), false).await;
    let bob = net.light(dir.path(), "bob").await;
    let topic = Topic([0x42; 32]);
    let (mut alice_rx, mut bob_rx) = (net.alice.events(), bob.events());
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;

    let sent = send_chain(&net.alice, topic, "a", 5, 50).await;
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&sent), 30).await.into_iter().collect();
    assert_eq!(got, ids(&sent), "the light client received alice's envelopes");

    let mine = send_chain(&bob, topic, "b", 5, 50).await;
    wait_stored_k(&mut bob_rx, &ids(&mine), 3, 30).await;
    let got: HashSet<Id> = collect(&mut alice_rx, &ids(&mine), 30).await.into_iter().collect();
    assert_eq!(got, ids(&mine), "alice received the light client's envelopes");

    let s = bob.status().await.unwrap();
    assert!(s.light.light);
    assert_eq!(s.shards, 0, "a light client joins no gossip shard");
    assert_eq!(s.relayed, 0, "and receives no gossip");
    assert!(s.light.stream_envelopes >= 5, "{:?}", s.light);
    assert_eq!(s.light.services.len(), 2);
    assert!(s.light.withheld.iter().all(|(_, n)| *n == 0), "no honest service node blamed: {:?}", s.light);
    let served: usize = {
        let mut n = 0;
        for sv in &net.services {
            n += sv.status().await.unwrap().light.clients;
        }
        n
    };
    assert_eq!(served, 2, "each service node serves the client one stream");
    // It serves nothing: no light, store, stem or DHT stream is accepted.
    let mut ctl = net.services[0].stream_control();
    let kad = StreamProtocol::new("/cairn/kad/1");
    for proto in [LIGHT_PROTOCOL, STORE_PROTOCOL, STEM_PROTOCOL, kad] {
        let opened = timeout(Duration::from_secs(10), ctl.open_stream(bob.peer_id, proto.clone())).await;
        assert!(matches!(opened, Ok(Err(_))), "{proto} was accepted by the light client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_client_every_service_node_refuses_still_gets_its_mail_from_the_store_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let full = LightServeLimits { clients_max: 0, ..Default::default() };
    let net = Net::start_with(dir.path(), [full, full]).await;
    let bob = net.light(dir.path(), "bob").await;
    let topic = Topic([0x43; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    wait_store_peers(&bob, 3).await;
    sleep(Duration::from_secs(2)).await;
    // Two rounds: the first may come with the second back-fill 10 s after following a topic;
    // the second, sent once the first is in, can only come from polling the store nodes.
    // Without polling the second round took about 20 s (the test fails at 12; polls are 5 s
    // apart).
    for (round, secs) in [("a", 30), ("b", 12)] {
        let sent = send_chain(&net.alice, topic, round, 3, 50).await;
        let got: HashSet<Id> = collect(&mut bob_rx, &ids(&sent), secs).await.into_iter().collect();
        assert_eq!(got, ids(&sent), "round {round}: the refused light client got alice's envelopes");
    }
    let s = bob.status().await.unwrap();
    assert!(s.light.services.is_empty(), "no service node took the client: {:?}", s.light);
    assert_eq!(s.light.stream_envelopes, 0, "{:?}", s.light);
}

/// Bob (his pacer at `bob_per_sec`) publishes 40 envelopes at once to two service nodes that
/// gossip 5/s of one client's (burst 20); every one must reach carol, another light client,
/// through the service streams (a back-fill may bring some first; the stream copies still
/// come, admitted and counted), and nothing may be left waiting or dropped at bob's.
async fn forty_publications_all_pass_the_streams(bob_per_sec: u32, topic: Topic) {
    let dir = tempfile::tempdir().unwrap();
    let slow = LightServeLimits { publishes_per_sec: 5, ..Default::default() };
    let net = Net::start_with(dir.path(), [slow, slow]).await;
    let light = |name: &str, per_sec: u32| {
        let mut c = cfg(dir.path(), name);
        tcp_only(&mut c);
        c.light = Some(LightConfig { publishes_per_sec: per_sec, warmup_ms: 1_000, ..Default::default() });
        c.bootstrap = net.services.iter().chain(&net.stores).map(|s| s.listen_addrs[0].clone()).collect();
        start(c)
    };
    let (bob, carol) = (light("bob", bob_per_sec).await.unwrap(), light("carol", 5).await.unwrap());
    let mut carol_rx = carol.events();
    bob.subscribe(topic).await.unwrap();
    carol.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;
    ready(&carol, &net.services).await;
    let before = carol.status().await.unwrap().light.stream_envelopes;
    let sent: Vec<Envelope> = (0..40).map(|i| mined(topic, &format!("fast {i}"), vec![])).collect();
    for e in &sent {
        bob.publish(e.clone()).await.unwrap();
    }
    // About 6 s paced (10 at once, then 5/s), 4 s unpaced (20 at once, then 5/s).
    let got: HashSet<Id> = collect(&mut carol_rx, &ids(&sent), 30).await.into_iter().collect();
    assert_eq!(got, ids(&sent), "every publication reached carol");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = carol.status().await.unwrap().light;
        if s.stream_envelopes - before >= 40 {
            break;
        }
        assert!(Instant::now() < deadline, "not all came through the streams: {s:?}");
        sleep(Duration::from_millis(200)).await;
    }
    let b = bob.status().await.unwrap().light;
    assert_eq!((b.publishes_waiting, b.publishes_unpaced), (0, 0), "{b:?}");
}

/// A light client publishing faster than its service nodes gossip one client's envelopes
/// paces itself to their rate: everything passes the streams and nothing is left waiting.
/// (Before the service held an over-rate stream, the pacing was what kept the 20 over the
/// service's burst from being dropped there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_client_publishing_over_the_service_rate_is_paced_and_nothing_skips_the_streams() {
    forty_publications_all_pass_the_streams(5, Topic([0x44; 32])).await;
}

/// A light client that does not pace itself (its pacer at 1,000/s) loses nothing on the
/// streams either: the service node holds the client's stream until its bucket has a token
/// (back-pressure) instead of dropping what is over it, and the client never hands a session
/// more than it has room for. With the service dropping, 20 of the 40 passed (checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_node_holds_back_an_unpaced_client_instead_of_dropping_its_publications() {
    forty_publications_all_pass_the_streams(1_000, Topic([0x45; 32])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withholding_service_node_is_found_out_and_mail_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), true).await;
    let (honest, liar) = (net.services[0].peer_id, net.services[1].peer_id);
    let bob = net.light(dir.path(), "bob").await;
    let topic = Topic([0x17; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;

    let sent = send_chain(&net.alice, topic, "a", 6, 50).await;
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&sent), 40).await.into_iter().collect();
    assert_eq!(got, ids(&sent), "every envelope arrived despite the withholding service node");
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = bob.status().await.unwrap();
        if withheld_of(&s, liar) > 0 && s.light.primary == Some(honest) {
            break s;
        }
        assert!(Instant::now() < deadline, "the withholding node was not found out: {:?}", s.light);
        sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(withheld_of(&s, honest), 0, "the honest service node is not blamed: {:?}", s.light);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withholding_primary_is_demoted_and_its_mail_fetched_from_the_secondary() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), true).await;
    let (honest, liar) = (&net.services[0], &net.services[1]);
    // Bob meets the liar first (and, with room for 4 connections, no one else by himself), so
    // it becomes his primary; the honest service node comes second.
    let mut c = cfg(dir.path(), "bob");
    tcp_only(&mut c);
    c.light =
        Some(LightConfig { grace_ms: 2_000, warmup_ms: 1_000, keepalive_ms: 5_000, ..Default::default() });
    c.dial_target = 4;
    c.bootstrap = std::iter::once(liar).chain(&net.stores).map(|s| s.listen_addrs[0].clone()).collect();
    let bob = start(c).await.unwrap();
    let topic = Topic([0x18; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bob.status().await.unwrap().light.primary != Some(liar.peer_id) {
        assert!(Instant::now() < deadline, "the liar never became the primary");
        sleep(Duration::from_millis(100)).await;
    }
    bob.dial(honest.listen_addrs[0].clone()).await.unwrap();
    ready(&bob, &net.services).await;
    assert_eq!(bob.status().await.unwrap().light.primary, Some(liar.peer_id));

    let sent = send_chain(&net.alice, topic, "a", 4, 50).await;
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&sent), 40).await.into_iter().collect();
    assert_eq!(got, ids(&sent), "the secondary's announcements brought every envelope");
    let s = bob.status().await.unwrap();
    assert!(withheld_of(&s, liar.peer_id) > 0, "{:?}", s.light);
    assert_eq!(s.light.primary, Some(honest.peer_id), "the withholding primary was demoted");
    assert!(s.light.stream_envelopes >= 4, "fetched over the stream (want), not paged: {:?}", s.light);
    assert_eq!(withheld_of(&s, honest.peer_id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_service_node_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), false).await;
    let bob = net.light(dir.path(), "bob").await;
    let topic = Topic([0x99; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;

    let first = send_chain(&net.alice, topic, "a", 3, 50).await;
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&first), 30).await.into_iter().collect();
    assert_eq!(got, ids(&first));
    let primary = bob.status().await.unwrap().light.primary.expect("a primary");
    let (dead, alive) = match net.services.iter().position(|s| s.peer_id == primary) {
        Some(0) => (&net.services[0], &net.services[1]),
        _ => (&net.services[1], &net.services[0]),
    };
    dead.shutdown().await;
    // Sent at once: some leave before the client noticed, none of them may be lost.
    let second = send_chain(&net.alice, topic, "b", 6, 50).await;
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&second), 40).await.into_iter().collect();
    assert_eq!(got.len(), second.len(), "lost {} of {}", second.len() - got.len(), second.len());
    let s = bob.status().await.unwrap();
    assert_eq!(s.light.primary, Some(alive.peer_id), "{:?}", s.light);
    println!(
        "kill: {} + {} envelopes sent, 0 lost; back-fills {}",
        first.len(),
        second.len(),
        s.light.backfills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_dropped_on_a_full_queue_are_back_filled_from_the_store_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = LightServeLimits { queue_bytes_max: 1_500, ..Default::default() };
    let net = Net::start_with(dir.path(), [tiny, tiny]).await;
    let bob = net.light(dir.path(), "bob").await;
    let topic = Topic([0x33; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;
    let before = bob.status().await.unwrap().light.backfills;
    // A burst of 1 KiB envelopes: one fits a queue, the service nodes drop most of the rest.
    let sent: Vec<Envelope> =
        (0..30).map(|i| mined(topic, &format!("burst {i} {}", "y".repeat(900)), vec![])).collect();
    let mut answers = Vec::new();
    for e in &sent {
        answers.push(net.alice.publish_queued(e.clone()).await.unwrap()); // committed together
    }
    for a in answers {
        a.await.unwrap().unwrap();
    }
    let got: HashSet<Id> = collect(&mut bob_rx, &ids(&sent), 40).await.into_iter().collect();
    assert_eq!(got, ids(&sent), "every envelope arrived");
    let mut dropped = 0;
    for s in &net.services {
        dropped += s.status().await.unwrap().light.dropped;
    }
    sleep(Duration::from_secs(3)).await; // past the grace: the cross-check judged every id
    let s = bob.status().await.unwrap();
    println!("overflow: {dropped} frames dropped, back-fills {before} -> {}", s.light.backfills);
    assert!(dropped > 0, "the burst fitted the queues: the test proves nothing");
    assert!(s.light.backfills > before, "an overflow notice leads to a back-fill: {:?}", s.light);
    assert!(s.light.withheld.iter().all(|(_, n)| *n == 0), "an overflow is not withholding: {:?}", s.light);
}

fn delta(a: Traffic, b: Traffic) -> Traffic {
    Traffic {
        bytes_in: b.bytes_in - a.bytes_in,
        bytes_out: b.bytes_out - a.bytes_out,
        reads: b.reads - a.reads,
        writes: b.writes - a.writes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_traffic_figures() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), false).await;
    // The default grace (5 s): the tests' 2 s made a primary that lagged under CI load look
    // withholding, and every envelope it lagged on was fetched again from the secondary.
    let bob = net.light_with_grace(dir.path(), "bob", LightConfig::default().grace_ms).await;
    let topic = Topic([0x5a; 32]);
    let mut bob_rx = bob.events();
    net.alice.subscribe(topic).await.unwrap();
    bob.subscribe(topic).await.unwrap();
    ready(&bob, &net.services).await;

    println!("\nbytes received per delivered byte (light client, 2 service nodes)");
    println!(
        "{:>10} {:>10} {:>14} {:>14} {:>8}",
        "body B", "envelopes", "delivered B", "received B", "ratio"
    );
    let mut ratios = Vec::new();
    // Per round, where the extra bytes could come from: back-fills and anti-entropy reads.
    let mut rounds = Vec::new();
    for (tag, body) in [("s", 100usize), ("m", 900), ("l", 8_000)] {
        let before = bob.status().await.unwrap();
        let sent = send_chain(&net.alice, topic, tag, 40, body).await;
        let got = collect(&mut bob_rx, &ids(&sent), 60).await;
        assert_eq!(got.len(), sent.len());
        sleep(Duration::from_millis(500)).await; // the secondary's announcements
        let after = bob.status().await.unwrap();
        let d = delta(before.traffic, after.traffic);
        let delivered: usize = sent.iter().map(|e| e.encode().len()).sum();
        let ratio = d.bytes_in as f64 / delivered as f64;
        println!("{body:>10} {:>10} {delivered:>14} {:>14} {ratio:>8.3}", sent.len(), d.bytes_in);
        ratios.push(ratio);
        let (r0, r1, l0, l1) = (before.resync, after.resync, before.light, after.light);
        rounds.push(format!(
            "body {body}: ratio {ratio:.2}, back-fills +{}, stream envelopes +{}, id pages +{} \
             ({} ids), whole pages +{} ({} envelopes), fetched +{} ({} B)",
            l1.backfills - l0.backfills,
            l1.stream_envelopes - l0.stream_envelopes,
            r1.id_pages - r0.id_pages,
            r1.ids_listed - r0.ids_listed,
            r1.whole_pages - r0.whole_pages,
            r1.envelopes_paged - r0.envelopes_paged,
            r1.envelopes_fetched - r0.envelopes_fetched,
            r1.fetched_bytes - r0.fetched_bytes,
        ));
    }
    println!("{}", rounds.join("\n"));
    let s = bob.status().await.unwrap().light;
    assert!(
        ratios.iter().all(|r| *r <= 1.5),
        "goal: ≤ 1.5 bytes received per delivered byte: {ratios:?}, {s:?}\n{}",
        rounds.join("\n")
    );

    // Idle: two light clients side by side, one following 1 conversation and one 50.
    let one = net.light(dir.path(), "one").await;
    let fifty = net.light(dir.path(), "fifty").await;
    one.subscribe(Topic([1; 32])).await.unwrap();
    for i in 0..50u8 {
        fifty.subscribe(Topic([i.wrapping_mul(5).wrapping_add(1); 32])).await.unwrap();
    }
    ready(&one, &net.services).await;
    ready(&fifty, &net.services).await;
    sleep(Duration::from_secs(12)).await; // back-fills done, and the second one 10 s after following
    let window = Duration::from_secs(30);
    let (a0, b0) = (one.status().await.unwrap().traffic, fifty.status().await.unwrap().traffic);
    sleep(window).await;
    let (a1, b1) = (one.status().await.unwrap().traffic, fifty.status().await.unwrap().traffic);
    let (a, b) = (delta(a0, a1), delta(b0, b1));
    let per_hour = |t: &Traffic| (t.reads + t.writes) * 3600 / window.as_secs();
    println!(
        "\nidle light client, {} s window, keep-alive 5 s, 5 connections (2 service, 3 store)",
        window.as_secs()
    );
    println!(
        "{:>14} {:>8} {:>8} {:>10} {:>10} {:>16}",
        "conversations", "writes", "reads", "bytes out", "bytes in", "packets/hour"
    );
    for (n, t) in [(1, &a), (50, &b)] {
        println!(
            "{n:>14} {:>8} {:>8} {:>10} {:>10} {:>16}",
            t.writes,
            t.reads,
            t.bytes_out,
            t.bytes_in,
            per_hour(t)
        );
    }
    let (pa, pb) = (per_hour(&a) as f64, per_hour(&b) as f64);
    assert!(pb <= pa * 1.25 + 500.0, "50 idle conversations cost more packets than 1: {pb} vs {pa}");
}

/// Idle packets with the default keep-alive (30 s) over a longer window; slow, so ignored:
/// `cargo nextest run -p cairn-net --test light --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 180 s measurement"]
async fn light_idle_figures_with_the_default_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::start(dir.path(), false).await;
    let mut clients = Vec::new();
    for (name, topics) in [("one", 1u8), ("fifty", 50)] {
        let mut c = cfg(dir.path(), name);
        tcp_only(&mut c);
        c.light = Some(LightConfig::default());
        c.bootstrap = net.services.iter().chain(&net.stores).map(|s| s.listen_addrs[0].clone()).collect();
        let h = start(c).await.unwrap();
        for i in 0..topics {
            h.subscribe(Topic([i.wrapping_mul(5).wrapping_add(1); 32])).await.unwrap();
        }
        clients.push((topics, h));
    }
    for (_, h) in &clients {
        ready(h, &net.services).await;
    }
    sleep(Duration::from_secs(12)).await;
    let window = Duration::from_secs(180);
    let mut before = Vec::new();
    for (_, h) in &clients {
        before.push(h.status().await.unwrap().traffic);
    }
    sleep(window).await;
    println!("\nidle light client, {} s window, default keep-alive (30 s), 5 connections", window.as_secs());
    println!(
        "{:>14} {:>8} {:>8} {:>10} {:>10} {:>16}",
        "conversations", "writes", "reads", "bytes out", "bytes in", "packets/hour"
    );
    let mut per_hour = Vec::new();
    for ((n, h), b) in clients.iter().zip(before) {
        let t = delta(b, h.status().await.unwrap().traffic);
        let ph = (t.reads + t.writes) * 3600 / window.as_secs();
        println!("{n:>14} {:>8} {:>8} {:>10} {:>10} {ph:>16}", t.writes, t.reads, t.bytes_out, t.bytes_in);
        per_hour.push(ph as f64);
    }
    assert!(per_hour[1] <= per_hour[0] * 1.25 + 100.0, "{per_hour:?}");
}
