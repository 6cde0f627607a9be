//! The simulated network: nodes, links, the event queue, churn, hostile behaviour and the
//! measurements. See the module above for what is real code and what is a model.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::rc::Rc;

use cairn_proto::envelope::pad;
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Topic};

use super::SimConfig;
use super::event::{Ev, KINDS, Kind, Rpc, Via};
use super::gossip::{Control, Router};
use super::report::Report;
use super::rng::Rng;
use crate::shard;
use crate::stem::Stem;
use crate::sync::{Input, Output, Sync, SyncConfig};
use crate::validate::{Admission, AdmissionConfig, Verdict};

mod by_ids;
mod links;
mod reach;
mod stem_path;

/// Simulated wall-clock origin (envelope timestamps), ms since the Unix epoch.
const BASE_MS: u64 = 1_800_000_000_000;
/// Framing bytes counted per RPC (protobuf/length prefixes, stream headers: an estimate).
const FRAME_BYTES: u64 = 16;
/// Bytes of a message id or topic in a control message.
const ID_BYTES: u64 = 32;
/// Meshes form before the first message, ms.
const WARMUP_MS: u64 = 5_000;
/// A node that left comes back after this long, ms (range).
const OFFLINE_MS: (u64, u64) = (10_000, 60_000);
/// Time after the last rejoin for store pages to arrive, ms.
const DRAIN_MS: u64 = 20_000;
/// Missed deliveries listed in the report, at most.
const MISSED_LISTED_MAX: usize = 10;
/// Topics placed to measure the placement's balance alone.
const PLACEMENT_TOPICS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Honest,
    /// In meshes, forwards nothing, advertises by IHAVE and never answers IWANT.
    Dropper,
    /// Sends malformed and unworked envelopes to every peer.
    Flooder,
    /// A store node that acknowledges without storing and answers pages empty (and drops).
    Liar,
}

struct Msg {
    env: Envelope,
    bytes: Vec<u8>,
    id: Id,
    topic: u32,
    origin: u32,
    sent_at: u64,
    origin_degree: usize,
    /// First hostile receipt: (time, the peer it came from).
    spy_first: Option<(u64, u32)>,
    reach_ms: u64,
    /// How the node that set `reach_ms` got it, and its gossip hop count (diagnostic).
    last: (reach::How, u8),
    /// The flood bound at the send, ms (`world/reach.rs`).
    flood_bound_ms: u64,
    /// Stem hops it took (a store receipt goes back up that many).
    stem_hops: u64,
    /// A receipt came back up the stem to the originator.
    stem_answered: bool,
    /// Its originator pushed it to a hostile store node (which so learns the sender).
    pushed_to_hostile: bool,
}

struct Node {
    role: Role,
    store: bool,
    online: bool,
    online_since: u64,
    peers: Vec<u32>,
    /// Of them, those this node dialed (gossipsub takes a GRAFT over D_hi only from these).
    outbound: HashSet<u32>,
    router: Router,
    admission: Admission<u32>,
    /// Admission of stem envelopes (its own seen set and per-peer rate: a stem envelope seen
    /// first must still be taken from gossip later).
    stem_admission: Admission<u32>,
    sync: Sync<u32>,
    stem: Stem<u32>,
    got: HashSet<u32>,
    log: HashMap<u32, Vec<u32>>,
    stored: HashSet<u32>,
}

#[derive(Default)]
struct Stats {
    bytes_gossip: u64,
    bytes_stem: u64,
    bytes_store: u64,
    bytes_hostile: u64,
    /// Bytes sent by honest nodes per RPC kind ([`KINDS`]).
    bytes_by_kind: [u64; KINDS.len()],
    deliveries: u64,
    deliveries_by_gossip: u64,
    bytes_delivered: u64,
    failsafe_fires: u64,
    rejected: u64,
    store_push_to_hostile: u64,
    events: u64,
}

pub(super) struct World {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Ev>,
    nodes: Vec<Node>,
    msgs: Vec<Msg>,
    id_index: HashMap<Id, u32>,
    topics: Vec<Topic>,
    store_keys: Vec<(u32, [u8; 32])>,
    /// The store nodes as registered on the ledger (node key, rank salt).
    registered: Vec<shard::RegisteredStore<u32>>,
    junk: Vec<Vec<u8>>,
    stats: Stats,
    send_end: u64,
    /// Gossip hops of each (node, message) first receipt (diagnostic, `world/reach.rs`).
    hops: HashMap<(u32, u32), u8>,
    /// How the deliveries being applied came (diagnostic).
    delivering: (reach::How, u8),
}

fn node_key(seed: u64, i: u32) -> [u8; 32] {
    *blake3::hash(&[seed.to_be_bytes(), u64::from(i).to_be_bytes()].concat()).as_bytes()
}

impl World {
    pub(super) fn new(cfg: &SimConfig) -> Self {
        let cfg = *cfg;
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.nodes.max(2);
        let mut order: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut order);
        let stores: HashSet<u32> = order.iter().take(cfg.stores.min(n)).copied().collect();
        rng.shuffle(&mut order);
        let hostile_n = (n as u64 * cfg.hostile_per_mille / 1000) as usize;
        let hostile: Vec<u32> = order.iter().take(hostile_n).copied().collect();
        let stem_cfg = cfg.stem.unwrap_or_default();
        let sync_cfg = SyncConfig { resync_by_ids: cfg.resync_by_ids, ..SyncConfig::default() };
        let stem_admission_cfg = AdmissionConfig {
            peer_rate_per_sec: 50,
            peer_burst: 100,
            seen_ids_max: 65_536,
            ..AdmissionConfig::default()
        };
        let mut nodes: Vec<Node> = (0..n as u32)
            .map(|i| Node {
                role: Role::Honest,
                store: stores.contains(&i),
                online: true,
                online_since: 0,
                peers: Vec::new(),
                outbound: HashSet::new(),
                router: Router::default(),
                admission: Admission::new(AdmissionConfig::default()),
                stem_admission: Admission::new(stem_admission_cfg),
                sync: Sync::new(sync_cfg, [], []),
                stem: Stem::new(stem_cfg),
                got: HashSet::new(),
                log: HashMap::new(),
                stored: HashSet::new(),
            })
            .collect();
        let mut alternate = false;
        for h in hostile {
            let node = &mut nodes[h as usize];
            node.role = if node.store {
                Role::Liar
            } else {
                alternate = !alternate;
                if alternate { Role::Dropper } else { Role::Flooder }
            };
        }
        let mut store_keys: Vec<(u32, [u8; 32])> =
            stores.iter().map(|s| (*s, node_key(cfg.seed, *s))).collect();
        store_keys.sort();
        let registered = store_keys
            .iter()
            .map(|(s, key)| shard::RegisteredStore {
                peer: *s,
                node_key: *key,
                salt: *blake3::hash(&[&key[..], b"salt"].concat()).as_bytes(),
            })
            .collect();
        let topics = (0..cfg.conversations.max(1) as u64)
            .map(|c| Topic::for_conversation(&node_key(cfg.seed ^ 0x70_1c, c as u32)))
            .collect();
        let mut unworked = Envelope::new(
            Topic([0; 32]),
            BASE_MS,
            86_400,
            vec![],
            pad(&[7; 900], &Limits::default()).unwrap_or_default(),
        );
        while pow::check(&unworked.header, Difficulty::default()) {
            unworked.header.pow_nonce += 1;
        }
        let junk = vec![vec![0xA5; 1_100], unworked.encode()];
        let send_end = WARMUP_MS + cfg.send_ms;
        let mut w = Self {
            cfg,
            rng,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            nodes,
            msgs: Vec::new(),
            id_index: HashMap::new(),
            topics,
            store_keys,
            registered,
            junk,
            stats: Stats::default(),
            send_end,
            hops: HashMap::new(),
            delivering: Default::default(),
        };
        for i in 0..n as u32 {
            w.dial_all(i);
            let offset = w.rng.below(cfg.gossip.heartbeat_ms);
            w.schedule(offset, Kind::Heartbeat(i));
            if cfg.resync_ms > 0 && w.nodes[i as usize].role == Role::Honest {
                let offset = w.rng.below(cfg.resync_ms);
                w.schedule(offset, Kind::Resync(i));
            }
            if w.nodes[i as usize].role == Role::Flooder && cfg.flood_per_sec > 0 {
                let offset = w.rng.below(1000);
                w.schedule(offset, Kind::Flood(i));
            }
        }
        for k in 0..cfg.messages as u64 {
            let at = WARMUP_MS + k * cfg.send_ms / cfg.messages.max(1) as u64;
            w.schedule(at, Kind::Send(k as u32));
        }
        if let Some(every) = w.churn_interval_ms() {
            w.schedule(every, Kind::Churn);
        }
        w
    }

    fn churn_interval_ms(&self) -> Option<u64> {
        let per_min = self.cfg.nodes as u64 * self.cfg.churn_per_mille_per_min / 1000;
        (per_min > 0).then(|| (60_000 / per_min).max(1))
    }

    fn schedule(&mut self, at: u64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev { at, seq: self.seq, kind });
    }

    fn rpc_bytes(&self, rpc: &Rpc) -> u64 {
        let size = |k: &u32| self.msgs[*k as usize].bytes.len() as u64;
        FRAME_BYTES
            + match rpc {
                Rpc::Publish(k, _) | Rpc::StoreReq(k) => size(k),
                // The envelope and the originator's store targets.
                Rpc::Stem(k) => size(k) + ID_BYTES * self.cfg.replicas as u64,
                // One store receipt (with the store's peer id), relayed by every hop.
                Rpc::StemAnswer(k, _) => {
                    self.msgs[*k as usize].stem_hops.max(1) * (40 + crate::receipt::RECEIPT_BYTES as u64)
                }
                Rpc::IHave(ids) => ID_BYTES * ids.len() as u64,
                Rpc::IWant(ids) => ID_BYTES * ids.len() as u64,
                Rpc::IdsReq(ids) => ID_BYTES * ids.len() as u64,
                Rpc::IDontWant(_) | Rpc::Subscribe | Rpc::Graft | Rpc::Prune => ID_BYTES,
                // An outcome and the store's signed receipt.
                Rpc::StoreAck(_) => 2 + crate::receipt::RECEIPT_BYTES as u64,
                Rpc::Junk(j) => self.junk[*j].len() as u64,
                Rpc::PageReq { .. } | Rpc::PageIdsReq { .. } => ID_BYTES + 12,
                Rpc::PageIds { entries, .. } => Self::page_ids_bytes(entries),
                Rpc::Page { entries, .. } => entries.iter().map(|(_, k)| size(k) + 8).sum::<u64>() + 8,
                Rpc::Ids(ks) => ks.iter().map(size).sum(),
            }
    }

    fn send(&mut self, from: u32, to: u32, rpc: Rpc) {
        if !self.nodes[from as usize].online {
            return;
        }
        let bytes = self.rpc_bytes(&rpc);
        if self.nodes[from as usize].role != Role::Honest {
            self.stats.bytes_hostile += bytes;
            return self.deliver_rpc(from, to, rpc);
        }
        self.stats.bytes_by_kind[rpc.kind()] += bytes;
        if matches!(rpc, Rpc::Stem(_) | Rpc::StemAnswer(..)) {
            self.stats.bytes_stem += bytes;
        } else if rpc.is_gossip() {
            self.stats.bytes_gossip += bytes;
        } else {
            self.stats.bytes_store += bytes;
        }
        self.deliver_rpc(from, to, rpc);
    }

    /// Schedules `rpc`'s arrival after the link's latency.
    fn deliver_rpc(&mut self, from: u32, to: u32, rpc: Rpc) {
        let at = self.now + self.latency(from, to);
        self.schedule(at, Kind::Rpc { from, to, rpc });
    }

    pub(super) fn run(mut self) -> Report {
        let end = self.send_end + OFFLINE_MS.1 + DRAIN_MS;
        while let Some(ev) = self.heap.pop() {
            if ev.at > end {
                break;
            }
            self.now = ev.at;
            self.stats.events += 1;
            match ev.kind {
                Kind::Rpc { from, to, rpc } => self.on_rpc(from, to, rpc),
                Kind::Heartbeat(n) => self.on_heartbeat(n),
                Kind::Send(k) => self.on_send(k),
                Kind::StemCheck(n) => self.on_stem_check(n),
                Kind::StemDeadline(k) => self.on_stem_deadline(k),
                Kind::Churn => self.on_churn(),
                Kind::Rejoin(n) => self.on_rejoin(n),
                Kind::Flood(n) => self.on_flood(n),
                Kind::Resync(n) => {
                    self.schedule(self.now + self.cfg.resync_ms, Kind::Resync(n));
                    if self.nodes[n as usize].online {
                        self.sync_all(n);
                    }
                }
            }
        }
        self.report()
    }

    fn stores_of(&self, topic: u32) -> Vec<u32> {
        Self::place(&self.registered, &self.topics[topic as usize], self.cfg.replicas)
    }

    /// The node's placement ([`shard::place`]) over the registered store nodes.
    fn place(registered: &[shard::RegisteredStore<u32>], topic: &Topic, k: usize) -> Vec<u32> {
        shard::place(topic, &topic.0, registered, &[], |_| true, |_| false, k)
    }

    fn honest_online(&mut self) -> Option<u32> {
        for _ in 0..1000 {
            let i = self.rng.below(self.nodes.len() as u64) as u32;
            let n = &self.nodes[i as usize];
            if n.online && n.role == Role::Honest {
                return Some(i);
            }
        }
        None
    }

    fn on_send(&mut self, k_planned: u32) {
        let Some(origin) = self.honest_online() else { return };
        let k = self.msgs.len() as u32;
        debug_assert!(k <= k_planned);
        let topic = self.rng.below(self.topics.len() as u64) as u32;
        let mut content = vec![0u8; self.cfg.content_bytes];
        for (i, b) in k.to_be_bytes().iter().chain(self.cfg.seed.to_be_bytes().iter()).enumerate() {
            if i < content.len() {
                content[i] = *b;
            }
        }
        let Ok(padded) = pad(&content, &Limits::default()) else { return };
        let mut env = Envelope::new(self.topics[topic as usize], BASE_MS + self.now, 86_400, vec![], padded);
        if pow::mine(&mut env.header, Difficulty::default(), 1 << 24).is_none() {
            return;
        }
        let id = env.id();
        let bytes = env.encode();
        let stores = self.stores_of(topic);
        let flood_bound_ms = self.flood_bound_ms(origin);
        self.msgs.push(Msg {
            env: env.clone(),
            bytes,
            id,
            topic,
            origin,
            sent_at: self.now,
            origin_degree: self.nodes[origin as usize].peers.len(),
            spy_first: None,
            reach_ms: 0,
            last: (reach::How::Store, 0),
            flood_bound_ms,
            stem_hops: 0,
            stem_answered: false,
            pushed_to_hostile: false,
        });
        self.id_index.insert(id, k);
        self.nodes[origin as usize].got.insert(k);
        if self.cfg.stem.is_some() && self.stem_originate(origin, k, &stores) {
            return;
        }
        let outs = self.nodes[origin as usize].sync.handle(Input::Send { envelope: env, stores }, self.now);
        self.apply(origin, outs, false);
        self.publish(origin, k);
    }

    /// `n` publishes message `k` into gossip (originator, fluffing stem hop, or fail-safe):
    /// flood publishing to every connected peer, delivered locally if new.
    fn publish(&mut self, n: u32, k: u32) {
        let node = &mut self.nodes[n as usize];
        node.router.seen.insert(k);
        node.router.cache(k);
        let id = self.msgs[k as usize].id;
        node.stem.seen_in_gossip(&id);
        node.admission.mark_seen(id);
        if !node.got.contains(&k) {
            let env = self.msgs[k as usize].env.clone();
            let outs = node.sync.handle(Input::Gossip { envelope: env }, self.now);
            self.apply(n, outs, true);
        }
        let node = &self.nodes[n as usize];
        let targets: Vec<u32> = if self.cfg.gossip.flood_publish {
            node.peers.iter().copied().filter(|p| !node.router.graylist.contains(p)).collect()
        } else {
            node.router.push_targets(k, None)
        };
        for t in targets {
            self.send(n, t, Rpc::Publish(k, Via::Origin));
        }
    }

    fn spy(&mut self, n: u32, from: u32, k: u32) {
        if self.nodes[n as usize].role != Role::Honest {
            let m = &mut self.msgs[k as usize];
            if m.spy_first.is_none() {
                m.spy_first = Some((self.now, from));
            }
        }
    }

    fn on_rpc(&mut self, from: u32, to: u32, rpc: Rpc) {
        let node = &self.nodes[to as usize];
        if !node.online {
            return;
        }
        if (rpc.is_gossip() || matches!(rpc, Rpc::Stem(_)))
            && (!node.peers.contains(&from) || node.router.graylist.contains(&from))
        {
            return;
        }
        let role = node.role;
        match rpc {
            Rpc::Publish(k, via) => {
                self.spy(to, from, k);
                self.on_publish(from, to, k, via);
            }
            Rpc::Stem(k) => {
                self.spy(to, from, k);
                if role == Role::Honest {
                    self.on_stem(from, to, k);
                }
            }
            Rpc::IHave(ids) => {
                let p = self.cfg.gossip;
                let want = self.nodes[to as usize].router.want(&ids, self.now, &p);
                if !want.is_empty() {
                    self.send(to, from, Rpc::IWant(want));
                }
            }
            Rpc::IWant(ids) => {
                if role == Role::Honest {
                    let have: Vec<u32> =
                        ids.into_iter().filter(|k| self.nodes[to as usize].router.cached(*k)).collect();
                    for k in have {
                        self.send(to, from, Rpc::Publish(k, Via::IWant));
                    }
                }
            }
            Rpc::IDontWant(k) => {
                self.nodes[to as usize].router.dont_send.insert((from, k));
            }
            Rpc::Subscribe => {
                // As libp2p-gossipsub: a subscription from a new peer while the mesh holds
                // fewer than D_lo peers grafts it at once, not at the next heartbeat.
                let node = &mut self.nodes[to as usize];
                if node.router.mesh.len() < self.cfg.gossip.mesh_n_low && !node.router.mesh.contains(&from) {
                    node.router.mesh.push(from);
                    self.send(to, from, Rpc::Graft);
                }
            }
            Rpc::Graft => {
                // As libp2p-gossipsub: a GRAFT is refused with a PRUNE once the mesh holds
                // D_hi peers, unless this node dialed the grafting peer.
                let node = &mut self.nodes[to as usize];
                let full =
                    node.router.mesh.len() >= self.cfg.gossip.mesh_n_high && !node.outbound.contains(&from);
                if full {
                    self.send(to, from, Rpc::Prune);
                } else if !node.router.mesh.contains(&from) {
                    node.router.mesh.push(from);
                }
            }
            Rpc::Prune => self.nodes[to as usize].router.forget_peer(from),
            Rpc::Junk(j) => {
                // Floods come from throwaway identities (one per junk message): each is
                // rejected by admission and its identity graylisted, while the flooder's own
                // identity stays clean to keep spying.
                if role == Role::Honest {
                    let now = BASE_MS + self.now;
                    let sybil = u32::MAX - (self.stats.rejected as u32 & 0xFFFF);
                    let node = &mut self.nodes[to as usize];
                    if let Verdict::Reject(_) = node.admission.check(&sybil, &self.junk[j], now) {
                        self.stats.rejected += 1;
                    }
                }
            }
            Rpc::StoreReq(k) => self.on_store_req(from, to, k),
            Rpc::StoreAck(k) => self.on_store_ack(from, to, k),
            Rpc::StemAnswer(k, store) => self.on_store_ack(store, to, k),
            Rpc::PageReq { topic, from: cursor, limit } => self.on_page_req(from, to, topic, cursor, limit),
            Rpc::Page { topic, entries, next } => {
                let entries =
                    entries.into_iter().map(|(s, k)| (s, self.msgs[k as usize].env.clone())).collect();
                let input = Input::Page { topic: self.topics[topic as usize], from, entries, next };
                let outs = self.nodes[to as usize].sync.handle(input, self.now);
                self.apply(to, outs, false);
            }
            Rpc::IdsReq(ids) => {
                if role == Role::Honest {
                    let node = &self.nodes[to as usize];
                    let found: Vec<u32> = ids
                        .iter()
                        .filter_map(|id| self.id_index.get(id))
                        .filter(|k| node.stored.contains(k))
                        .copied()
                        .collect();
                    self.send(to, from, Rpc::Ids(found));
                }
            }
            Rpc::PageIdsReq { topic, from: cursor, limit } => {
                self.on_page_ids_req(from, to, topic, cursor, limit)
            }
            Rpc::PageIds { topic, entries, next } => {
                let entries = entries.into_iter().map(|(s, k)| (s, self.msgs[k as usize].id)).collect();
                let input = Input::PageIds { topic: self.topics[topic as usize], from, entries, next };
                let outs = self.nodes[to as usize].sync.handle(input, self.now);
                self.apply(to, outs, false);
            }
            Rpc::Ids(ks) => {
                let envelopes = ks.iter().map(|k| self.msgs[*k as usize].env.clone()).collect();
                let outs =
                    self.nodes[to as usize].sync.handle(Input::Envelopes { from, envelopes }, self.now);
                self.apply(to, outs, false);
            }
        }
    }

    fn on_publish(&mut self, from: u32, to: u32, k: u32, via: Via) {
        let threshold = self.cfg.gossip.idontwant_threshold_bytes;
        let size = self.msgs[k as usize].bytes.len();
        let node = &mut self.nodes[to as usize];
        if !node.router.seen.insert(k) {
            return; // duplicate: suppressed by message id before validation
        }
        if size > threshold {
            let mesh: Vec<u32> = node.router.mesh.iter().copied().filter(|p| *p != from).collect();
            for p in mesh {
                self.send(to, p, Rpc::IDontWant(k));
            }
        }
        let node = &mut self.nodes[to as usize];
        match node.admission.check(&from, &self.msgs[k as usize].bytes, BASE_MS + self.now) {
            Verdict::Accept(..) => {}
            Verdict::Reject(_) => {
                self.stats.rejected += 1;
                node.router.seen.remove(&k);
                node.router.graylist.insert(from);
                node.router.forget_peer(from);
                return;
            }
            Verdict::Ignore(_) => return,
        }
        node.router.cache(k);
        let id = self.msgs[k as usize].id;
        node.stem.seen_in_gossip(&id);
        if node.role != Role::Honest {
            return; // hostile nodes forward nothing
        }
        let hops = self.hops.get(&(from, k)).copied().unwrap_or(0).saturating_add(1);
        self.hops.insert((to, k), hops);
        if !node.got.contains(&k) {
            let env = self.msgs[k as usize].env.clone();
            let outs = node.sync.handle(Input::Gossip { envelope: env }, self.now);
            self.delivering = (reach::How::of(via), hops);
            self.apply(to, outs, true);
            self.delivering = Default::default();
        }
        let targets = self.nodes[to as usize].router.push_targets(k, Some(from));
        for t in targets {
            self.send(to, t, Rpc::Publish(k, Via::Forward));
        }
    }

    fn on_store_req(&mut self, from: u32, to: u32, k: u32) {
        let node = &mut self.nodes[to as usize];
        if !node.store {
            return;
        }
        match node.role {
            Role::Honest => {
                if node.stored.insert(k) {
                    let topic = self.msgs[k as usize].topic;
                    node.log.entry(topic).or_default().push(k);
                }
                self.send(to, from, Rpc::StoreAck(k));
            }
            Role::Liar => self.send(to, from, Rpc::StoreAck(k)),
            Role::Dropper | Role::Flooder => {}
        }
    }

    fn on_page_req(&mut self, from: u32, to: u32, topic: u32, cursor: u64, limit: u32) {
        let node = &self.nodes[to as usize];
        if !node.store {
            return;
        }
        let (entries, next) = match node.role {
            Role::Honest => {
                log_page(node.log.get(&topic).map(Vec::as_slice).unwrap_or_default(), cursor, limit)
            }
            _ => (Vec::new(), None),
        };
        self.send(to, from, Rpc::Page { topic, entries, next });
    }

    /// Performs what a node's `Sync` asked for; `by_gossip` labels its deliveries.
    fn apply(&mut self, n: u32, outs: Vec<Output<u32>>, by_gossip: bool) {
        for o in outs {
            match o {
                Output::StoreRequest { to, envelope } => {
                    if let Some(&k) = self.id_index.get(&envelope.id()) {
                        let m = &mut self.msgs[k as usize];
                        if m.origin == n
                            && !m.pushed_to_hostile
                            && self.nodes[to as usize].role != Role::Honest
                        {
                            m.pushed_to_hostile = true;
                            self.stats.store_push_to_hostile += 1;
                        }
                        self.send(n, to, Rpc::StoreReq(k));
                    }
                }
                Output::PageRequest { to, topic, from, limit } => {
                    // As the node's shell (`node/resync.rs`): `Sync` says which kind of page.
                    let Some(t) = self.topics.iter().position(|x| *x == topic) else { continue };
                    let topic_at = t as u32;
                    match self.nodes[n as usize].sync.page_ids_limit(&topic, &to) {
                        Some(limit) => self.send(n, to, Rpc::PageIdsReq { topic: topic_at, from, limit }),
                        None => self.send(n, to, Rpc::PageReq { topic: topic_at, from, limit }),
                    }
                }
                Output::IdsRequest { to, ids } => self.send(n, to, Rpc::IdsReq(ids)),
                Output::Deliver { id, .. } => {
                    let Some(&k) = self.id_index.get(&id) else { continue };
                    let node = &mut self.nodes[n as usize];
                    if node.role != Role::Honest || !node.got.insert(k) {
                        continue;
                    }
                    self.stats.deliveries += 1;
                    self.stats.bytes_delivered += self.msgs[k as usize].bytes.len() as u64;
                    if by_gossip {
                        self.stats.deliveries_by_gossip += 1;
                    }
                    let node = &mut self.nodes[n as usize];
                    let m = &mut self.msgs[k as usize];
                    if node.online_since <= m.sent_at && self.now - m.sent_at >= m.reach_ms {
                        m.reach_ms = self.now - m.sent_at;
                        m.last = self.delivering;
                    }
                }
                Output::Status { .. } | Output::Cursor { .. } => {}
            }
        }
    }

    fn on_heartbeat(&mut self, n: u32) {
        let hb = self.cfg.gossip.heartbeat_ms;
        self.schedule(self.now + hb, Kind::Heartbeat(n));
        if !self.nodes[n as usize].online {
            return;
        }
        if self.nodes[n as usize].peers.len() < self.cfg.degree_min {
            let j = self.rng.below(self.nodes.len() as u64) as u32;
            self.connect(n, j);
        }
        let p = self.cfg.gossip;
        let node = &mut self.nodes[n as usize];
        let peers = node.peers.clone();
        let controls = node.router.heartbeat(&peers, &p, &mut self.rng);
        for c in controls {
            match c {
                Control::Graft(to) => self.send(n, to, Rpc::Graft),
                Control::Prune(to) => self.send(n, to, Rpc::Prune),
                Control::IHave(to, ids) => self.send(n, to, Rpc::IHave(Rc::new(ids))),
            }
        }
        if self.nodes[n as usize].role == Role::Honest {
            let outs = self.nodes[n as usize].sync.handle(Input::Tick, self.now);
            self.apply(n, outs, false);
        }
    }

    fn on_churn(&mut self) {
        if self.now >= self.send_end {
            return;
        }
        if let Some(every) = self.churn_interval_ms() {
            self.schedule(self.now + every, Kind::Churn);
        }
        for _ in 0..100 {
            let i = self.rng.below(self.nodes.len() as u64) as u32;
            let node = &self.nodes[i as usize];
            if node.online && !node.store {
                self.leave(i);
                let back = self.now + self.rng.range(OFFLINE_MS.0, OFFLINE_MS.1);
                self.schedule(back, Kind::Rejoin(i));
                return;
            }
        }
    }

    fn leave(&mut self, n: u32) {
        let peers = std::mem::take(&mut self.nodes[n as usize].peers);
        for p in peers {
            let peer = &mut self.nodes[p as usize];
            peer.peers.retain(|x| *x != n);
            peer.outbound.remove(&n);
            peer.router.forget_peer(n);
        }
        let node = &mut self.nodes[n as usize];
        node.online = false;
        node.outbound.clear();
        node.router.mesh.clear();
    }

    fn on_rejoin(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        node.online = true;
        node.online_since = self.now;
        self.dial_all(n);
        if self.nodes[n as usize].role == Role::Honest {
            self.sync_all(n);
        }
    }

    /// Anti-entropy (after rejoining, and every `resync_ms` like the node's `resync_every_ms`):
    /// every followed topic is paged again from the saved cursor at its store nodes (by ids
    /// or whole envelopes, as `Sync` decides per store node).
    fn sync_all(&mut self, n: u32) {
        for t in 0..self.topics.len() as u32 {
            let stores = self.stores_of(t);
            let topic = self.topics[t as usize];
            let outs = self.nodes[n as usize].sync.handle(Input::Sync { topic, stores }, self.now);
            self.apply(n, outs, false);
        }
    }

    fn on_flood(&mut self, n: u32) {
        if self.now >= self.send_end + OFFLINE_MS.1 {
            return;
        }
        let every = (1000 / self.cfg.flood_per_sec.max(1)).max(1);
        self.schedule(self.now + every, Kind::Flood(n));
        if !self.nodes[n as usize].online {
            return;
        }
        let peers = self.nodes[n as usize].peers.clone();
        for p in peers {
            let j = self.rng.below(self.junk.len() as u64) as usize;
            self.send(n, p, Rpc::Junk(j));
        }
    }

    fn report(self) -> Report {
        let honest: Vec<u32> =
            (0..self.nodes.len() as u32).filter(|i| self.nodes[*i as usize].role == Role::Honest).collect();
        let mut expected = 0u64;
        let mut missed = Vec::new();
        let (mut spied, mut spied_correct, mut inv_degree) = (0u64, 0u64, 0f64);
        for (k, m) in self.msgs.iter().enumerate() {
            for h in &honest {
                if *h == m.origin {
                    continue;
                }
                expected += 1;
                if !self.nodes[*h as usize].got.contains(&(k as u32)) && missed.len() < MISSED_LISTED_MAX {
                    missed.push((k as u32, *h));
                }
            }
            if let Some((_, from)) = m.spy_first {
                spied += 1;
                if from == m.origin {
                    spied_correct += 1;
                }
            }
            inv_degree += 1.0 / m.origin_degree.max(1) as f64;
        }
        let loads: Vec<u64> = self
            .store_keys
            .iter()
            .filter(|(s, _)| self.nodes[*s as usize].role == Role::Honest)
            .map(|(s, _)| self.nodes[*s as usize].stored.len() as u64)
            .collect();
        let mut placement: HashMap<u32, u64> = self.store_keys.iter().map(|(s, _)| (*s, 0)).collect();
        for t in 0..PLACEMENT_TOPICS {
            let topic = Topic(node_key(self.cfg.seed ^ 0x91ace, t as u32));
            for s in Self::place(&self.registered, &topic, self.cfg.replicas) {
                *placement.entry(s).or_default() += 1;
            }
        }
        let placement: Vec<u64> = placement.into_values().collect();
        Report {
            seed: self.cfg.seed,
            nodes: self.nodes.len(),
            hostile_per_mille: self.cfg.hostile_per_mille,
            churn_per_mille_per_min: self.cfg.churn_per_mille_per_min,
            stem: self.cfg.stem.is_some(),
            messages: self.msgs.len(),
            deliveries_expected: expected,
            deliveries: self.stats.deliveries,
            deliveries_by_gossip: self.stats.deliveries_by_gossip,
            missed,
            reach_all_ms: self.msgs.iter().map(|m| m.reach_ms).collect(),
            flood_bound_ms: self.msgs.iter().map(|m| m.flood_bound_ms).collect(),
            last_reached: self.msgs.iter().map(|m| (m.last.0.label(), m.last.1)).collect(),
            bytes_gossip: self.stats.bytes_gossip,
            bytes_stem: self.stats.bytes_stem,
            bytes_store: self.stats.bytes_store,
            bytes_delivered: self.stats.bytes_delivered,
            bytes_hostile: self.stats.bytes_hostile,
            bytes_by_kind: KINDS.iter().copied().zip(self.stats.bytes_by_kind).collect(),
            store_load_max_over_mean: max_over_mean(&loads),
            placement_max_over_mean: max_over_mean(&placement),
            spied,
            spied_correct,
            guess_baseline: if self.msgs.is_empty() { 0.0 } else { inv_degree / self.msgs.len() as f64 },
            store_push_to_hostile: self.stats.store_push_to_hostile,
            failsafe_fires: self.stats.failsafe_fires,
            rejected: self.stats.rejected,
            events: self.stats.events,
        }
    }
}

fn max_over_mean(v: &[u64]) -> f64 {
    let sum: u64 = v.iter().sum();
    if v.is_empty() || sum == 0 {
        return 0.0;
    }
    *v.iter().max().unwrap_or(&0) as f64 / (sum as f64 / v.len() as f64)
}

/// A store's page of a topic's log from `cursor`: up to `limit` (position, message) entries
/// and the next cursor if more follow.
pub(super) fn log_page(log: &[u32], cursor: u64, limit: u32) -> (Vec<(u64, u32)>, Option<u64>) {
    let start = (cursor as usize).min(log.len());
    let stop = (start + limit as usize).min(log.len());
    ((start..stop).map(|i| (i as u64, log[i])).collect(), (stop < log.len()).then_some(stop as u64))
}
