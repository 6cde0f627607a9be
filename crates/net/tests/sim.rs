//! Seeded simulation of the sync state machine through a hostile network: dropped, delayed,
//! duplicated and reordered messages, three store nodes. Everything sent must end up stored on
//! at least two nodes (and said so), and every receiver must see each envelope exactly once,
//! after its parents.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_net::sync::{Input, Output, SendStatus, Sync, SyncConfig};
use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Id, Limits, Topic};
use proptest::prelude::*;

/// Node ids: 0..3 are store nodes, 10 is the sender, 11 the receiver.
type NodeId = u8;
const STORES: [NodeId; 3] = [0, 1, 2];
const SENDER: NodeId = 10;
const RECEIVER: NodeId = 11;

#[derive(Clone, Debug)]
enum Msg {
    Store(Envelope),
    Ack(Id),
    PageReq(Topic, u64, u32),
    Page(Topic, Vec<(u64, Envelope)>, Option<u64>),
    IdsReq(Vec<Id>),
    Ids(Vec<Envelope>),
    Gossip(Envelope),
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Default)]
struct StoreNode {
    log: BTreeMap<u64, Envelope>,
    ids: HashMap<Id, Envelope>,
}

struct Net {
    rng: Rng,
    queue: Vec<(u64, NodeId, NodeId, Msg)>,
    loss: u64,
    dup: u64,
    delay_ms_max: u64,
}

impl Net {
    fn send(&mut self, now: u64, from: NodeId, to: NodeId, m: Msg) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + 1 + self.rng.next() % self.delay_ms_max;
            self.queue.push((at, from, to, m.clone()));
        }
    }
}

fn envelope(topic: Topic, i: u64, parents: Vec<Id>) -> Envelope {
    Envelope::new(topic, i, 3600, parents, pad(format!("m{i}").as_bytes(), &Limits::default()).unwrap())
}

fn run(seed: u64, messages: u64, loss: u64, dup: u64) {
    let topic = Topic([9; 32]);
    let cfg = SyncConfig {
        retry_initial_ms: 50,
        retry_max_ms: 400,
        gap_retry_ms: 100,
        gap_fetch_attempts_max: 50,
        page_envelopes_max: 7,
        ..SyncConfig::default()
    };
    let mut net = Net { rng: Rng(seed | 1), queue: vec![], loss, dup, delay_ms_max: 40 };
    let mut sender: Sync<NodeId> = Sync::new(cfg, [], []);
    let mut receiver: Sync<NodeId> = Sync::new(cfg, [], []);
    let mut stores: HashMap<NodeId, StoreNode> = STORES.iter().map(|s| (*s, StoreNode::default())).collect();
    let mut statuses: HashMap<Id, SendStatus> = HashMap::new();
    let mut delivered: Vec<(Id, Envelope)> = Vec::new();
    let mut sent: Vec<Envelope> = Vec::new();
    let mut head: Vec<Id> = vec![];
    let mut now = 0u64;

    let apply = |node: NodeId,
                 outs: Vec<Output<NodeId>>,
                 net: &mut Net,
                 now: u64,
                 statuses: &mut HashMap<Id, SendStatus>,
                 delivered: &mut Vec<(Id, Envelope)>| {
        for o in outs {
            match o {
                Output::StoreRequest { to, envelope } => net.send(now, node, to, Msg::Store(envelope)),
                Output::PageRequest { to, topic, from, limit } => {
                    net.send(now, node, to, Msg::PageReq(topic, from, limit))
                }
                Output::IdsRequest { to, ids } => net.send(now, node, to, Msg::IdsReq(ids)),
                Output::Deliver { envelope, id, after_gap } => {
                    assert!(!after_gap, "seed {seed}: gap declared for {id:?}");
                    delivered.push((id, envelope));
                }
                Output::Status { id, status } => {
                    statuses.insert(id, status);
                }
                Output::Cursor { .. } => {}
            }
        }
    };

    // The receiver is "offline" for the first half: it syncs from the stores later.
    let mut receiver_online = false;
    for step in 0..20_000u64 {
        now += 5;
        if step < messages {
            let e = envelope(topic, step, head.clone());
            head = vec![e.id()];
            sent.push(e.clone());
            let outs = sender.handle(Input::Send { envelope: e.clone(), stores: STORES.to_vec() }, now);
            apply(SENDER, outs, &mut net, now, &mut statuses, &mut delivered);
            if receiver_online {
                net.send(now, SENDER, RECEIVER, Msg::Gossip(e));
            }
        }
        if step == messages / 2 {
            receiver_online = true;
            let outs = receiver.handle(Input::Sync { topic, stores: STORES.to_vec() }, now);
            apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);
        }
        // Periodic resync, as on reconnect.
        if receiver_online && step % 200 == 0 {
            let outs = receiver.handle(Input::Sync { topic, stores: STORES.to_vec() }, now);
            apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);
        }
        let outs = sender.handle(Input::Tick, now);
        apply(SENDER, outs, &mut net, now, &mut statuses, &mut delivered_sink());
        let outs = receiver.handle(Input::Tick, now);
        apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);

        // Deliver due messages in a shuffled order (reordering).
        let mut due: Vec<(u64, NodeId, NodeId, Msg)> = Vec::new();
        net.queue.retain(|m| {
            if m.0 <= now {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        for i in (1..due.len()).rev() {
            let j = (net.rng.next() % (i as u64 + 1)) as usize;
            due.swap(i, j);
        }
        for (_, from, to, msg) in due {
            match (to, msg) {
                (s, Msg::Store(e)) if STORES.contains(&s) => {
                    let st = stores.get_mut(&s).unwrap();
                    let id = e.id();
                    if !st.ids.contains_key(&id) {
                        let seq = st.log.len() as u64;
                        st.log.insert(seq, e.clone());
                        st.ids.insert(id, e);
                    }
                    net.send(now, s, from, Msg::Ack(id));
                }
                (s, Msg::PageReq(t, from_seq, limit)) if STORES.contains(&s) => {
                    let st = &stores[&s];
                    let entries: Vec<(u64, Envelope)> =
                        st.log.range(from_seq..).take(limit as usize).map(|(k, v)| (*k, v.clone())).collect();
                    let next = st.log.range(from_seq..).nth(limit as usize).map(|(k, _)| *k);
                    net.send(now, s, from, Msg::Page(t, entries, next));
                }
                (s, Msg::IdsReq(ids)) if STORES.contains(&s) => {
                    let st = &stores[&s];
                    let found: Vec<Envelope> = ids.iter().filter_map(|i| st.ids.get(i).cloned()).collect();
                    net.send(now, s, from, Msg::Ids(found));
                }
                (SENDER, Msg::Ack(id)) => {
                    let outs = sender.handle(Input::StoreAck { id, from }, now);
                    apply(SENDER, outs, &mut net, now, &mut statuses, &mut delivered_sink());
                }
                (RECEIVER, Msg::Page(t, entries, next)) => {
                    let outs = receiver.handle(Input::Page { topic: t, from, entries, next }, now);
                    apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);
                }
                (RECEIVER, Msg::Ids(envelopes)) => {
                    let outs = receiver.handle(Input::Envelopes { from, envelopes }, now);
                    apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);
                }
                (RECEIVER, Msg::Gossip(e)) => {
                    let outs = receiver.handle(Input::Gossip { envelope: e }, now);
                    apply(RECEIVER, outs, &mut net, now, &mut vec_statuses(), &mut delivered);
                }
                (to, m) => panic!("unexpected {m:?} to {to}"),
            }
        }
        let all_stored = sent.len() as u64 == messages
            && sent.iter().all(|e| matches!(statuses.get(&e.id()), Some(SendStatus::Stored { .. })));
        if all_stored && delivered.len() == sent.len() {
            break;
        }
    }

    // Sender: every envelope stored on ≥ 2 distinct store nodes, and it really is there.
    for e in &sent {
        let id = e.id();
        match statuses.get(&id) {
            Some(SendStatus::Stored { acks }) => assert!(*acks >= 2, "seed {seed}"),
            other => panic!("seed {seed}: {id:?} not stored: {other:?}"),
        }
        let holders = stores.values().filter(|s| s.ids.contains_key(&id)).count();
        assert!(holders >= 2, "seed {seed}: status says stored but {holders} stores hold it");
    }
    assert!(sender.pending().is_empty());
    // Receiver: each exactly once, parents first.
    let ids: Vec<Id> = delivered.iter().map(|(id, _)| *id).collect();
    let unique: HashSet<Id> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "seed {seed}: duplicate delivery");
    assert_eq!(unique.len(), sent.len(), "seed {seed}: {} of {} delivered", unique.len(), sent.len());
    let pos: HashMap<Id, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for (id, e) in &delivered {
        for p in &e.header.parents {
            assert!(pos[p] < pos[id], "seed {seed}: delivered before its parent");
        }
    }
    assert_eq!(receiver.waiting_len(), 0);
}

fn vec_statuses() -> HashMap<Id, SendStatus> {
    HashMap::new()
}
fn delivered_sink() -> Vec<(Id, Envelope)> {
    Vec::new()
}

#[test]
fn clean_network_delivers_everything() {
    run(1, 60, 0, 0);
}

#[test]
fn hostile_network_fixed_seeds() {
    for seed in [2, 3, 5, 8, 13, 21, 34, 55] {
        run(seed, 60, 20, 15);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn hostile_network_random_seeds(seed in any::<u64>(), loss in 0u64..35, dup in 0u64..30) {
        run(seed, 40, loss, dup);
    }
}

#[test]
fn acks_from_non_targets_and_repeats_do_not_count() {
    let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
    let e = envelope(Topic([1; 32]), 1, vec![]);
    let id = e.id();
    s.handle(Input::Send { envelope: e, stores: vec![0, 1, 2] }, 0);
    assert!(s.handle(Input::StoreAck { id, from: 0 }, 1).is_empty());
    assert!(s.handle(Input::StoreAck { id, from: 0 }, 2).is_empty(), "repeat counted");
    assert!(s.handle(Input::StoreAck { id, from: 7 }, 3).is_empty(), "stranger counted");
    let outs = s.handle(Input::StoreAck { id, from: 2 }, 4);
    assert_eq!(outs, vec![Output::Status { id, status: SendStatus::Stored { acks: 2 } }]);
}

#[test]
fn unreachable_stores_mean_retrying_never_stored() {
    let cfg = SyncConfig { retry_initial_ms: 10, retry_max_ms: 100, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let e = envelope(Topic([1; 32]), 1, vec![]);
    let id = e.id();
    s.handle(Input::Send { envelope: e, stores: vec![0, 1, 2] }, 0);
    s.handle(Input::StoreAck { id, from: 1 }, 1);
    let mut retries = 0;
    for t in (0..2_000).step_by(10) {
        for o in s.handle(Input::Tick, t) {
            if let Output::StoreRequest { to, .. } = o {
                assert_ne!(to, 1, "re-sent to a store that already acked");
                retries += 1;
            }
        }
    }
    assert!(retries >= 10, "retries with back-off: {retries}");
    assert!(matches!(s.pending()[..], [(pid, SendStatus::Retrying { acks: 1, .. })] if pid == id));
}

#[test]
fn a_send_before_any_store_is_known_goes_out_once_targets_appear() {
    let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
    let topic = Topic([4; 32]);
    let e = envelope(topic, 1, vec![]);
    let id = e.id();
    let outs = s.handle(Input::Send { envelope: e, stores: vec![] }, 0);
    assert!(!outs.iter().any(|o| matches!(o, Output::StoreRequest { .. })));
    assert_eq!(s.unstored_topics().into_iter().collect::<Vec<_>>(), vec![topic]);
    let outs = s.handle(Input::Targets { topic, stores: vec![0, 2] }, 1);
    let to: Vec<u8> = outs
        .iter()
        .filter_map(|o| match o {
            Output::StoreRequest { to, envelope } if envelope.id() == id => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(to, vec![0, 2]);
    s.handle(Input::StoreAck { id, from: 0 }, 2);
    s.handle(Input::StoreAck { id, from: 2 }, 3);
    assert!(s.unstored_topics().is_empty(), "stored on two: nothing left to target");
}

#[test]
fn unfindable_ancestor_becomes_a_flagged_gap() {
    let cfg = SyncConfig { gap_fetch_attempts_max: 3, gap_retry_ms: 10, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([1; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let lost = envelope(t, 1, vec![]);
    let child = envelope(t, 2, vec![lost.id()]);
    let outs = s.handle(Input::Gossip { envelope: child.clone() }, 0);
    assert!(outs.contains(&Output::IdsRequest { to: 0, ids: vec![lost.id()] }));
    let mut flagged = false;
    for now in (10..200).step_by(10) {
        for o in s.handle(Input::Tick, now) {
            if let Output::Deliver { id, after_gap, .. } = o {
                assert_eq!(id, child.id());
                flagged = after_gap;
            }
        }
    }
    assert!(flagged, "child must be released, flagged, once the gap is declared");
}
