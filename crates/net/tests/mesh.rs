//! Real nodes on 127.0.0.1: gossip across ten nodes, mailboxes for an offline recipient, a
//! relayed node, a store node killed with SIGKILL, and a flooding peer. Bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_net::node::{NodeHandle, start};
use cairn_net::shard::shard_of;
use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Id, Limits, Topic};
use libp2p::Multiaddr;
use tokio::time::{Instant, sleep};

mod common;
use common::{cfg, collect, mined, now_ms, wait_store_peers, wait_stored};

async fn wait_for<F: FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>>(
    what: &str,
    secs: u64,
    mut f: F,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_gossip_reaches_every_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[1; 32]);
    let first = start(cfg(dir.path(), "n0")).await.unwrap();
    let mut nodes = vec![first.clone()];
    for i in 1..10 {
        let mut c = cfg(dir.path(), &format!("n{i}"));
        // Half the nodes join over TCP, half over QUIC.
        let quic = i % 2 == 1;
        let addr = first.listen_addrs.iter().find(|a| a.to_string().contains("quic-v1") == quic).unwrap();
        c.bootstrap = vec![addr.clone()];
        nodes.push(start(c).await.unwrap());
    }
    for n in &nodes {
        n.subscribe(topic).await.unwrap();
    }
    // Kademlia discovery: every node ends up with several peers, not only the bootstrap.
    for n in &nodes {
        let n = n.clone();
        wait_for("kademlia discovery", 30, move || {
            let n = n.clone();
            Box::pin(async move { n.status().await.map(|s| s.peers >= 3).unwrap_or(false) })
        })
        .await;
    }
    sleep(Duration::from_secs(2)).await; // a few heartbeats for the shard mesh to form
    let mut rxs: Vec<_> = nodes.iter().map(|n| n.events()).collect();
    let e = mined(topic, "hello, ten nodes", vec![]);
    let id = nodes[1].publish(e).await.unwrap();
    let want: HashSet<Id> = [id].into();
    for (i, rx) in rxs.iter_mut().enumerate() {
        if i == 1 {
            continue;
        }
        let got = collect(rx, &want, 20).await;
        assert_eq!(got, vec![id], "node {i} did not receive the envelope exactly once");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_mail_from_the_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[2; 32]);
    let mut stores = Vec::new();
    for i in 0..3 {
        let mut c = cfg(dir.path(), &format!("s{i}"));
        c.serve_store = true;
        if let Some(s) = stores.first() {
            let s: &NodeHandle = s;
            c.bootstrap = vec![s.listen_addrs[0].clone()];
        }
        stores.push(start(c).await.unwrap());
    }
    let mut c = cfg(dir.path(), "sender");
    c.bootstrap = vec![stores[0].listen_addrs[0].clone()];
    let sender = start(c).await.unwrap();
    sender.subscribe(topic).await.unwrap();
    wait_store_peers(&sender, 3).await;
    let mut rx = sender.events();
    let mut sent = Vec::new();
    let mut parents = vec![];
    for i in 0..12 {
        let e = mined(topic, &format!("letter {i}"), parents);
        parents = vec![e.id()];
        sent.push(sender.publish(e).await.unwrap());
    }
    let want: HashSet<Id> = sent.iter().copied().collect();
    wait_stored(&mut rx, &want, 30).await;
    sender.shutdown().await;

    let mut c = cfg(dir.path(), "recipient");
    c.bootstrap = vec![stores[1].listen_addrs[0].clone()];
    let recipient = start(c).await.unwrap();
    let mut rx = recipient.events();
    wait_store_peers(&recipient, 3).await;
    recipient.subscribe(topic).await.unwrap();
    let got = collect(&mut rx, &want, 30).await;
    assert_eq!(got, sent, "every letter, exactly once, in causal order");
    for s in &stores {
        s.shutdown().await;
    }
    recipient.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_only_dials_out_receives_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[3; 32]);
    let mut rc = cfg(dir.path(), "relay");
    rc.relay_server = true;
    let relay = start(rc).await.unwrap();
    let relay_addr = relay.listen_addrs[0].clone();
    let mut cc = cfg(dir.path(), "hidden");
    cc.listen = vec![]; // accepts no direct connection
    cc.listen_via_relay = Some(relay_addr.clone());
    cc.bootstrap = vec![relay_addr.clone()];
    let hidden = start(cc).await.unwrap();
    hidden.subscribe(topic).await.unwrap();
    let mut rx = hidden.events();
    let mut ac = cfg(dir.path(), "alice");
    ac.bootstrap = vec![relay_addr.clone()];
    let alice = start(ac).await.unwrap();
    alice.subscribe(topic).await.unwrap();
    sleep(Duration::from_secs(2)).await; // reservation at the relay
    let circuit: Multiaddr = format!("{relay_addr}/p2p-circuit/p2p/{}", hidden.peer_id).parse().unwrap();
    alice.dial(circuit).await.unwrap();
    sleep(Duration::from_secs(3)).await;
    let id = alice.publish(mined(topic, "through the relay", vec![])).await.unwrap();
    let got = collect(&mut rx, &[id].into(), 20).await;
    assert_eq!(got, vec![id]);
    for n in [&relay, &hidden, &alice] {
        n.shutdown().await;
    }
}

// ---- SIGKILL of a store node: store nodes run as child processes (this binary re-executed).

const CHILD_DIR: &str = "CAIRN_STORE_CHILD_DIR";

#[test]
#[ignore = "child process of one_store_node_killed_history_still_complete"]
fn store_node_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by the parent test");
    let boot = std::env::var("CAIRN_STORE_CHILD_BOOT").ok().filter(|s| !s.is_empty());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut c = cfg(std::path::Path::new(&dir), "store");
        c.serve_store = true;
        c.bootstrap = boot.into_iter().map(|b| b.parse().unwrap()).collect();
        let n = start(c).await.unwrap();
        println!("addr {}", n.listen_addrs[0]);
        sleep(Duration::from_secs(90)).await; // bounded: the parent kills us long before
    });
}

struct Kill(Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_store(dir: &std::path::Path, boot: &str) -> (Child, Multiaddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["store_node_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env("CAIRN_STORE_CHILD_BOOT", boot)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("child exited").unwrap();
        // libtest prints "test store_node_child ... " before our output on the same line.
        if let Some(pos) = line.find("addr /") {
            break line[pos + 5..].trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_node_killed_history_still_complete() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[4; 32]);
    let (c0, a0) = spawn_store(&dir.path().join("p0"), "");
    let (c1, a1) = spawn_store(&dir.path().join("p1"), &a0.to_string());
    let (c2, a2) = spawn_store(&dir.path().join("p2"), &a0.to_string());
    let mut kids = Kill(vec![c0, c1, c2]);

    let mut c = cfg(dir.path(), "writer");
    c.bootstrap = vec![a0.clone(), a1.clone(), a2.clone()];
    let writer = start(c).await.unwrap();
    writer.subscribe(topic).await.unwrap();
    wait_store_peers(&writer, 3).await;
    let mut rx = writer.events();
    let mut sent = Vec::new();
    let mut parents = vec![];
    for i in 0..20 {
        let e = mined(topic, &format!("entry {i}"), parents);
        parents = vec![e.id()];
        sent.push(writer.publish(e).await.unwrap());
    }
    wait_stored(&mut rx, &sent.iter().copied().collect(), 30).await;
    writer.shutdown().await;

    // SIGKILL one of the three store nodes, then read the whole history from the survivors.
    kids.0[0].kill().unwrap();
    kids.0[0].wait().unwrap();
    let mut c = cfg(dir.path(), "reader");
    c.bootstrap = vec![a1, a2];
    let reader = start(c).await.unwrap();
    let mut rx = reader.events();
    wait_store_peers(&reader, 2).await;
    reader.subscribe(topic).await.unwrap();
    let got = collect(&mut rx, &sent.iter().copied().collect(), 30).await;
    assert_eq!(got, sent, "history served completely, in order, by the two survivors");
    reader.shutdown().await;
    drop(kids);
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_peer_is_graylisted_and_honest_mail_still_flows() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Topic::for_conversation(&[5; 32]);
    let honest = start(cfg(dir.path(), "honest")).await.unwrap();
    honest.subscribe(topic).await.unwrap();
    let mut sc = cfg(dir.path(), "sender");
    sc.bootstrap = vec![honest.listen_addrs[0].clone()];
    let sender = start(sc).await.unwrap();
    sender.subscribe(topic).await.unwrap();
    let mut xc = cfg(dir.path(), "mallory");
    xc.bootstrap = vec![honest.listen_addrs[0].clone()];
    let mallory = start(xc).await.unwrap();
    mallory.subscribe(topic).await.unwrap();
    sleep(Duration::from_secs(2)).await;
    let mut rx = honest.events();
    let rss_before = rss_kib();

    let shard = shard_of(&topic);
    let garbage_kinds = |i: u32| -> Vec<u8> {
        match i % 4 {
            // Oversized frames are dropped by gossipsub's decoder (the stream is reset, no score):
            // one in a hundred, so they do not hide the invalid envelopes batched with them.
            _ if i % 100 == 99 => vec![0xff; 300 * 1024],
            0 | 1 => format!("garbage {i}").into_bytes(),
            2 => {
                // Well-formed but no proof of work and far in the future.
                let mut e = Envelope::new(
                    topic,
                    now_ms() + 86_400_000,
                    3600,
                    vec![],
                    pad(&i.to_be_bytes(), &Limits::default()).unwrap(),
                );
                e.header.pow_nonce = u64::from(i);
                e.encode()
            }
            _ => {
                let mut b = mined(topic, "x", vec![]).encode();
                let n = b.len();
                b[n - 1] ^= 1; // payload no longer matches its hash
                b
            }
        }
    };
    let mut honest_ids = Vec::new();
    for i in 0..10_000u32 {
        mallory.publish_raw(shard, garbage_kinds(i)).await.unwrap();
        if i % 2_000 == 0 {
            honest_ids.push(sender.publish(mined(topic, &format!("honest {i}"), vec![])).await.unwrap());
        }
        if i % 200 == 0 {
            // Let queues drain: a flood that only fills our own send queue proves nothing.
            sleep(Duration::from_millis(5)).await;
        }
    }
    let got = collect(&mut rx, &honest_ids.iter().copied().collect(), 30).await;
    for id in &honest_ids {
        assert!(got.contains(id), "honest envelope lost under flood");
    }
    let score = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = honest.peer_score(mallory.peer_id).await.unwrap().unwrap();
            if s < -80.0 || Instant::now() > deadline {
                break s;
            }
            sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(score < -80.0, "offender's score {score} is not below the graylist threshold -80");
    let sender_score = honest.peer_score(sender.peer_id).await.unwrap().unwrap();
    assert!(sender_score >= 0.0, "honest sender penalised: {sender_score}");
    let st = honest.status().await.unwrap();
    assert!(st.rejected > 0, "nothing was rejected");
    let growth_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 512, "memory grew by {growth_mib} MiB under flood");
    for n in [&honest, &sender, &mallory] {
        n.shutdown().await;
    }
}
