//! The simulated world: users (real engines over real redb files), store nodes, a hostile
//! network and an in-memory commit sequencer, all driven by one seeded schedule.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use cairn_crypto::Identity;
use cairn_mls::{KeyPackageBatch, MemorySequencer};
use cairn_net::sync::{Input as SyncInput, Output as SyncOutput, SendStatus, Sync, SyncConfig};
use cairn_node::db::NodeDb;
use cairn_node::engine::{Arrival, Engine, EngineConfig, IdentityKeys, Io};
use cairn_proto::envelope::unpad;
use cairn_proto::pow::Difficulty;
use cairn_proto::sequencer::TopicKeys;
use cairn_proto::{CommitSequencer, Envelope, Id, Limits, Message, Sequenced, SequencerError, Topic};
use cairn_store::Store;
use redb::Database;

/// splitmix64: the only source of randomness of a run (MLS's own key randomness aside,
/// which never changes the schedule).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `permille` / 1000.
    pub(crate) fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

/// The in-memory commit sequencer (`cairn_mls::MemorySequencer`) shared by every user. With
/// `lose_answers`, it sequences a submission but answers "unavailable" (the answer was lost)
/// `permille` / 1000 of the time, decided by a counter so the schedule stays deterministic.
#[derive(Clone, Default)]
pub(crate) struct Sequencer(Rc<RefCell<MemorySequencer>>, Rc<RefCell<Losses>>);

/// Submissions sequenced so far, and the answers lost per thousand.
#[derive(Default)]
pub(crate) struct Losses {
    sequenced: u64,
    permille: u64,
}

impl Sequencer {
    /// Loses this many answers per thousand submissions (after sequencing them).
    pub(crate) fn lose_answers(&self, permille: u64) {
        self.1.borrow_mut().permille = permille;
    }

    /// Handshakes sequenced in all topics (the simulated ledger height).
    pub(crate) fn height(&self) -> u64 {
        self.1.borrow().sequenced
    }
}

impl CommitSequencer for Sequencer {
    fn submit(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        let seq = self.0.borrow_mut().submit(topic, after, payload, keys)?;
        let mut l = self.1.borrow_mut();
        l.sequenced += 1;
        if l.permille > 0 && (l.sequenced * 7919) % 1000 < l.permille {
            return Err(SequencerError::Unavailable("answer lost".into()));
        }
        Ok(seq)
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        self.0.borrow().fetch(topic, from, max)
    }
}

/// A store node: keeps what it is given, answers pages and id requests.
#[derive(Default)]
pub(crate) struct StoreNode {
    log: BTreeMap<Topic, Vec<Envelope>>,
    ids: HashMap<Id, Envelope>,
}

/// What travels between simulated machines.
pub(crate) enum Msg {
    Gossip(Box<Envelope>),
    StoreReq(usize, Box<Envelope>),
    StoreAck(u8, Id),
    PageReq(usize, Topic, u64, u32),
    Page(u8, Topic, Vec<(u64, Envelope)>, Option<u64>),
    IdsReq(usize, Vec<Id>),
    Ids(u8, Vec<Envelope>),
}

/// Where a message goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dest {
    User(usize),
    Store(u8),
}

struct Scheduled {
    at_ms: u64,
    n: u64,
    dest: Dest,
    msg: Msg,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ms, self.n) == (o.at_ms, o.n)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at_ms, o.n).cmp(&(self.at_ms, self.n))
    }
}

/// Network faults of a run, in permille or ms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Faults {
    pub(crate) loss: u64,
    pub(crate) dup: u64,
    pub(crate) delay_ms_max: u64,
}

/// One simulated user device.
pub(crate) struct User {
    pub(crate) id: Identity,
    dir: PathBuf,
    pub(crate) engine: Option<Engine>,
    sync: Sync<u8>,
    history: Option<Arc<Store>>,
    subscribed: BTreeSet<Topic>,
    cursors: BTreeMap<(Topic, u8), u64>,
}

pub(crate) const STORES: u8 = 3;

/// The world.
pub(crate) struct World {
    /// Every envelope any user published (what relays and store nodes see).
    pub(crate) published: Vec<Envelope>,
    pub(crate) rng: Rng,
    pub(crate) now_ms: u64,
    pub(crate) users: Vec<User>,
    stores: Vec<StoreNode>,
    queue: BinaryHeap<Scheduled>,
    n: u64,
    pub(crate) seq: Sequencer,
    pub(crate) faults: Faults,
    limits: Limits,
    _tmp: tempfile::TempDir,
}

/// `Engine::open` with the MLS state kept in clear (`Client::open_unsealed_for_tests`): the
/// same node tables, keyring, MLS transactions and crash behaviour, without the encryption at
/// rest that is not this simulation's subject (it was a sixth of its time). At-rest sealing
/// is tested by `cairn-mls`'s `at_rest` tests and every other node test.
fn open_engine(db: Arc<Database>, history: Arc<Store>, keys: IdentityKeys, cfg: EngineConfig) -> Engine {
    let keyring = cairn_node::keyring::Keyring::derived(&keys.device_key);
    let ndb = NodeDb::with_keyring(db.clone(), cfg.limits, Arc::new(keyring)).expect("node tables");
    let signer = cairn_mls::DeviceSigner::new(keys.device_key.clone(), keys.cert).expect("signer");
    let mls = cairn_mls::Client::open_unsealed_for_tests(db, signer, cairn_node::engine::mls_config())
        .expect("MLS state");
    Engine::new(mls, ndb, history, keys, cfg)
}

fn sync_config() -> SyncConfig {
    SyncConfig { retry_initial_ms: 200, retry_max_ms: 2_000, gap_retry_ms: 300, ..SyncConfig::default() }
}

impl World {
    pub(crate) fn new(seed: u64, users: usize, faults: Faults) -> Self {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let tmp = tempfile::Builder::new().prefix("cairn-sim").tempdir_in(base).expect("tempdir");
        let mut w = Self {
            published: Vec::new(),
            rng: Rng::new(seed),
            now_ms: 1_000_000,
            users: Vec::new(),
            stores: (0..STORES).map(|_| StoreNode::default()).collect(),
            queue: BinaryHeap::new(),
            n: 0,
            seq: Sequencer::default(),
            faults,
            limits: Limits::default(),
            _tmp: tmp,
        };
        for i in 0..users {
            let dir = w._tmp.path().join(format!("u{i}"));
            std::fs::create_dir_all(&dir).expect("dir");
            let id = Identity::generate(w.now_ms).expect("identity");
            let sync = Sync::new(sync_config(), Vec::new(), Vec::new());
            w.users.push(User {
                id,
                dir,
                engine: None,
                sync,
                history: None,
                subscribed: BTreeSet::new(),
                cursors: BTreeMap::new(),
            });
            w.open(i);
        }
        w
    }

    /// (Re)opens a user's engine from its files.
    pub(crate) fn open(&mut self, u: usize) {
        let user = &mut self.users[u];
        let db = Arc::new(Database::create(user.dir.join("node.redb")).expect("node.redb"));
        let history = Arc::new(Store::open(&user.dir.join("history.redb"), self.limits).expect("history"));
        let keys = IdentityKeys::of(&user.id);
        let mut cfg = EngineConfig::new(self.limits);
        cfg.difficulty = Difficulty { base_bits: 0 };
        // members are added by accounts they share no conversation with yet
        cfg.invitations = cairn_node::engine::Invitations::Everyone;
        let mut delivered = Vec::new();
        for t in user.subscribed.iter() {
            let mut from = 0;
            while let Ok(p) = history.page(t, from, 256) {
                delivered.extend(p.entries.iter().map(|(_, e)| e.id()));
                match p.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
        }
        let cursors: Vec<((Topic, u8), u64)> = user.cursors.iter().map(|(k, v)| (*k, *v)).collect();
        user.sync = Sync::new(sync_config(), delivered, cursors);
        user.subscribed.clear();
        user.history = Some(history.clone());
        user.engine = Some(open_engine(db, history, keys, cfg));
        let mut seq = self.seq.clone();
        let now = self.now_ms;
        let r = self.users[u].engine.as_mut().map(|e| e.start(&mut seq, now));
        assert!(matches!(r, Some(Ok(()))), "start of user {u}");
        self.drain(u);
    }

    /// Crashes a user: everything in memory is gone; its files stay.
    pub(crate) fn crash(&mut self, u: usize) {
        self.users[u].engine = None;
        self.users[u].history = None;
    }

    pub(crate) fn alive(&self, u: usize) -> bool {
        self.users[u].engine.is_some()
    }

    pub(crate) fn engine(&mut self, u: usize) -> &mut Engine {
        self.users[u].engine.as_mut().expect("alive")
    }

    /// A fresh key package of user `u`, as a committer gets it from the mesh.
    pub(crate) fn key_package(&mut self, u: usize) -> cairn_mls::VerifiedKeyPackage {
        let now = self.now_ms;
        let env = self.engine(u).key_package_envelope(1, 3600, now).expect("key packages");
        let plain = unpad(env.payload.as_deref().expect("payload")).expect("pad");
        let m = Message::decode(plain, &self.limits).expect("message");
        let batch = KeyPackageBatch::decode(&m.body).expect("batch");
        let p = batch.packages.first().expect("one package");
        cairn_mls::verify_key_package(p).expect("valid package")
    }

    fn schedule(&mut self, dest: Dest, msg: Msg, lossy: bool) {
        if lossy && self.rng.chance(self.faults.loss) {
            return;
        }
        let copies = if lossy && self.rng.chance(self.faults.dup) { 2 } else { 1 };
        let mut msg = Some(msg);
        for c in 0..copies {
            let delay = 1 + self.rng.below(self.faults.delay_ms_max.max(1));
            let m = if c + 1 == copies { msg.take() } else { msg.as_ref().and_then(clone_msg) };
            let Some(m) = m else { return };
            self.n += 1;
            self.queue.push(Scheduled { at_ms: self.now_ms + delay, n: self.n, dest, msg: m });
        }
    }

    /// Performs a user's queued engine I/O (and the sync outputs it causes).
    pub(crate) fn drain(&mut self, u: usize) {
        for _ in 0..1_000 {
            let Some(engine) = self.users[u].engine.as_mut() else { return };
            let io = engine.take_io();
            if io.is_empty() {
                return;
            }
            for i in io {
                self.perform(u, i);
            }
        }
    }

    fn perform(&mut self, u: usize, io: Io) {
        match io {
            Io::Publish(env) => {
                let topic = env.header.topic;
                self.published.push((*env).clone());
                if let Some(h) = &self.users[u].history {
                    let _ = h.append(std::slice::from_ref(&*env));
                }
                let others: Vec<usize> = (0..self.users.len()).filter(|o| *o != u).collect();
                for o in others {
                    self.schedule(Dest::User(o), Msg::Gossip(env.clone()), true);
                }
                let stores = (0..STORES).collect();
                self.sync(u, SyncInput::Send { envelope: *env, stores });
                let _ = topic;
            }
            Io::Subscribe(topic) => {
                self.users[u].subscribed.insert(topic);
                let stores = (0..STORES).collect();
                self.sync(u, SyncInput::Sync { topic, stores });
            }
            Io::Anchor { conv, count, .. } => {
                let now = self.now_ms;
                self.engine(u).anchor_done(conv, count, true, now);
            }
            Io::Discard(ids) => {
                if let Some(h) = &self.users[u].history {
                    let _ = h.remove(&ids);
                }
            }
            Io::Erase { id, .. } => {
                if let Some(h) = &self.users[u].history {
                    let _ = h.erase_payload(&id);
                }
            }
            Io::Stream(_)
            | Io::PublishKeyPackages
            | Io::Conversation { .. }
            | Io::Joined(_)
            | Io::Forgotten(_) => {}
        }
    }

    fn sync(&mut self, u: usize, input: SyncInput<u8>) {
        let now = self.now_ms;
        let outs = self.users[u].sync.handle(input, now);
        let mut deliveries = Vec::new();
        for o in outs {
            match o {
                SyncOutput::StoreRequest { to, envelope } => {
                    self.schedule(Dest::Store(to), Msg::StoreReq(u, Box::new(envelope)), true)
                }
                SyncOutput::PageRequest { to, topic, from, limit } => {
                    self.schedule(Dest::Store(to), Msg::PageReq(u, topic, from, limit), true)
                }
                SyncOutput::IdsRequest { to, ids } => {
                    self.schedule(Dest::Store(to), Msg::IdsReq(u, ids), true)
                }
                SyncOutput::Deliver { envelope, id, after_gap } => {
                    deliveries.push(Arrival { id, envelope, after_gap })
                }
                SyncOutput::Status { id, status } => {
                    let (acks, stored) = match status {
                        SendStatus::Stored { acks } => (acks as u32, true),
                        SendStatus::Retrying { acks, .. } => (acks as u32, false),
                        SendStatus::Sent => (0, false),
                    };
                    if let Some(e) = self.users[u].engine.as_mut() {
                        e.store_acks(id, acks, stored, now);
                    }
                }
                SyncOutput::Cursor { topic, store, cursor } => {
                    self.users[u].cursors.insert((topic, store), cursor);
                }
            }
        }
        self.receive(u, deliveries);
    }

    /// Hands user `u` these deliveries as one burst: durable in its local history first, as
    /// the mesh does, then read by its engine.
    pub(crate) fn receive(&mut self, u: usize, deliveries: Vec<Arrival>) {
        if deliveries.is_empty() {
            return;
        }
        if let Some(h) = &self.users[u].history {
            let envs: Vec<Envelope> = deliveries.iter().map(|a| a.envelope.clone()).collect();
            h.append(&envs).expect("history append");
        }
        let (now, mut seq) = (self.now_ms, self.seq.clone());
        if let Some(e) = self.users[u].engine.as_mut() {
            e.receive(deliveries, &mut seq, now);
        }
        self.drain(u);
    }

    /// Runs the schedule until `until_ms`, with a tick every `tick_ms`.
    pub(crate) fn run_until(&mut self, until_ms: u64, tick_ms: u64) {
        let mut next_tick = self.now_ms;
        let mut next_sync = self.now_ms;
        while self.now_ms < until_ms {
            let next_msg = self.queue.peek().map(|s| s.at_ms).unwrap_or(u64::MAX);
            if next_msg <= next_tick.min(until_ms) {
                let s = self.queue.pop().expect("peeked");
                self.now_ms = self.now_ms.max(s.at_ms);
                self.deliver(s.dest, s.msg);
                continue;
            }
            self.now_ms = next_tick.min(until_ms);
            if self.now_ms >= next_tick {
                next_tick += tick_ms;
                let resync = self.now_ms >= next_sync;
                if resync {
                    next_sync += 1_000;
                }
                self.tick_all(resync);
            }
        }
    }

    fn tick_all(&mut self, resync: bool) {
        let now = self.now_ms;
        let height = self.seq.height();
        for u in 0..self.users.len() {
            if !self.alive(u) {
                continue;
            }
            let mut seq = self.seq.clone();
            let e = self.engine(u);
            e.ledger_height(height, &mut seq, now);
            e.tick(&mut seq, now);
            self.drain(u);
            self.sync(u, SyncInput::Tick);
            if resync {
                let topics: Vec<Topic> = self.users[u].subscribed.iter().copied().collect();
                for topic in topics {
                    self.sync(u, SyncInput::Sync { topic, stores: (0..STORES).collect() });
                }
            }
        }
    }

    fn deliver(&mut self, dest: Dest, msg: Msg) {
        match dest {
            Dest::Store(s) => self.at_store(s, msg),
            Dest::User(u) => {
                if !self.alive(u) {
                    return;
                }
                let input = match msg {
                    Msg::Gossip(env) => {
                        if !self.users[u].subscribed.contains(&env.header.topic) {
                            return;
                        }
                        SyncInput::Gossip { envelope: *env }
                    }
                    Msg::StoreAck(from, id) => SyncInput::StoreAck { id, from },
                    Msg::Page(from, topic, entries, next) => SyncInput::Page { topic, from, entries, next },
                    Msg::Ids(from, envelopes) => SyncInput::Envelopes { from, envelopes },
                    _ => return,
                };
                self.sync(u, input);
            }
        }
    }

    fn at_store(&mut self, s: u8, msg: Msg) {
        let store = &mut self.stores[s as usize];
        let (to, reply) = match msg {
            Msg::StoreReq(u, env) => {
                let id = env.id();
                if !store.ids.contains_key(&id) {
                    store.log.entry(env.header.topic).or_default().push((*env).clone());
                    store.ids.insert(id, *env);
                }
                (u, Msg::StoreAck(s, id))
            }
            Msg::PageReq(u, topic, from, limit) => {
                let log = store.log.get(&topic).map(Vec::as_slice).unwrap_or_default();
                let end = (from as usize).saturating_add(limit as usize).min(log.len());
                let entries: Vec<(u64, Envelope)> =
                    (from as usize..end).map(|i| (i as u64, log[i].clone())).collect();
                let next = (end < log.len()).then_some(end as u64);
                (u, Msg::Page(s, topic, entries, next))
            }
            Msg::IdsReq(u, ids) => {
                let found = ids.iter().filter_map(|i| store.ids.get(i).cloned()).collect();
                (u, Msg::Ids(s, found))
            }
            _ => return,
        };
        if to < self.users.len() {
            self.schedule(Dest::User(to), reply, true);
        }
    }
}

fn clone_msg(m: &Msg) -> Option<Msg> {
    Some(match m {
        Msg::Gossip(e) => Msg::Gossip(e.clone()),
        Msg::StoreAck(s, id) => Msg::StoreAck(*s, *id),
        Msg::Page(s, t, e, n) => Msg::Page(*s, *t, e.clone(), *n),
        Msg::Ids(s, e) => Msg::Ids(*s, e.clone()),
        Msg::StoreReq(u, e) => Msg::StoreReq(*u, e.clone()),
        Msg::PageReq(u, t, f, l) => Msg::PageReq(*u, *t, *f, *l),
        Msg::IdsReq(u, ids) => Msg::IdsReq(*u, ids.clone()),
    })
}

impl World {
    /// An outsider with valid proof of work writes `env` to the network: gossip to every
    /// user and a push to every store node.
    pub(crate) fn inject(&mut self, env: Envelope) {
        for o in 0..self.users.len() {
            self.schedule(Dest::User(o), Msg::Gossip(Box::new(env.clone())), true);
        }
        for s in 0..STORES {
            self.schedule(Dest::Store(s), Msg::StoreReq(usize::MAX, Box::new(env.clone())), true);
        }
    }

    /// Ids of `topic`'s envelopes in user `u`'s local history.
    pub(crate) fn history_ids(&self, u: usize, topic: &Topic) -> Vec<Id> {
        let mut out = Vec::new();
        let Some(h) = self.users[u].history.as_ref() else { return out };
        let mut from = 0;
        while let Ok(p) = h.page(topic, from, 256) {
            out.extend(p.entries.iter().map(|(_, e)| e.id()));
            match p.next {
                Some(n) => from = n,
                None => break,
            }
        }
        out
    }
}
