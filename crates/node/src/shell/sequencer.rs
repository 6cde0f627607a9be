//! The node's commit sequencer: MLS commits are ordered by the ledger without the actor ever
//! waiting for mining, the network or finality (issue 11 §1).
//!
//! [`NodeSequencer::submit`] hands a commit to the submission worker through a bounded queue
//! and returns at once with [`SequencerError::Unavailable`], which leaves the commit pending
//! in the MLS client (a committer never forks itself: it is merged once the order shows its
//! bytes, dropped and rebuilt if other bytes hold its slot). The worker mines the topic write
//! in time slices (round robin over the queued commits, so one large commit delays no other
//! conversation's), submits it, waits for finality with its own kept client, then records the
//! answer and tells the actor ([`Job::SubmissionEnded`]); the actor settles the conversation
//! (`Engine::settle_commit`), whose next offer of the same commit receives the recorded answer:
//! sequenced (merged), proven stale (caught up and rebuilt) or not a member (a typed refusal,
//! also kept for the waiting API call, see [`NodeSequencer::take_not_member`]).
//!
//! Mining progress is kept per commit (topic, position, payload hash): a commit offered again
//! after a failed attempt goes on from the nonce where mining stopped, never from zero.
//!
//! Reading the order (`fetch`) is served only from what the ledger worker and this worker
//! read ahead (`shell::order_cache`); a read that is not there is asked of the ledger worker
//! and fails as unavailable meanwhile. The actor holds no ledger connection: a change whose
//! read is missing is parked (`shell::awaiting`) and made once the worker's answer arrives
//! ([`Job::Handshakes`]); a message from an epoch not reached yet waits in the future buffer.
//!
//! Leave proposals (submissions with no next authority key) go the same way: the MLS client
//! keeps its own proposal pending until the order shows what holds its slot, as it keeps a
//! commit, so the actor never waits for one either.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_ledger::mempool::TOPIC_WORK_FACTOR_MAX;
use cairn_ledger::params::Params;
use cairn_ledger::rpc::sequencer::{
    is_not_member_refusal, is_stale_refusal, is_work_too_low_refusal, mine_topic_write,
};
use cairn_ledger::rpc::{ClientError, LedgerClient, RemoteOutcome};
use cairn_ledger::tx::{TopicTx, TxId};
use cairn_proto::Topic;
use cairn_proto::sequencer::{CommitSequencer, HANDSHAKE_BYTES_MAX, Sequenced, SequencerError, TopicKeys};
use tokio::sync::mpsc;

use super::actor::Job;
use super::ledger::LedgerJob;
use super::order_cache::{ORDER_PAGE, OrderCache};

/// Commits queued for or held by the submission worker at most. Overflow policy: a new commit
/// is refused at once as [`SequencerError::Unavailable`]; it stays pending and is offered
/// again at its next resubmission (`awaiting::RESUBMIT_EVERY_MS`, the next tick for a key
/// update, or before the conversation's next commit).
pub const SUBMIT_QUEUE_MAX: usize = 64;
/// Answers of finished submissions kept until their commit is offered again, at most.
/// Overflow policy: the oldest is forgotten (its commit is then settled from the order, or
/// submitted again: the ledger answers "stale" or sequences it).
pub const OUTCOMES_MAX: usize = 256;
/// Mined (or partly mined) topic writes kept for commits whose attempt failed, at most.
/// Overflow policy: the oldest is forgotten (its mining starts again from zero if offered).
pub const MINED_MAX: usize = 64;
/// Conversations whose commit was refused as "not a member" kept for their waiting API call,
/// at most. Overflow policy: the oldest is forgotten (the call then ends at its deadline).
pub const REFUSALS_MAX: usize = 256;
/// Mining of one commit between two looks at the others, ms (round robin).
pub const MINE_SLICE_MS: u64 = 250;
/// One poll of a submitted write's finality, ms.
pub const FINALITY_SLICE_MS: u64 = 250;
/// How long an attempt waits for its submitted write to be final before submitting it again, ms.
pub const FINALITY_WAIT_MS: u64 = 20_000;
/// How long the worker works on one commit in all (mining, submissions, finality waits), ms.
/// Mining at the default price (256 hashes per byte) of the largest commit (64 KiB) takes
/// ~2 s on one core in a release build; a debug build is several times slower.
pub const SUBMISSION_DEADLINE_MS: u64 = 120_000;
/// Attempts (submission and finality wait) per queued commit at most.
pub const ATTEMPTS_MAX: u32 = 3;
/// Pause between two attempts of one commit, ms.
pub const RETRY_PAUSE_MS: u64 = 1_000;
/// How long the worker sleeps waiting for work when it has none, ms (it looks at the stop
/// flag this often).
const IDLE_WAIT_MS: u64 = 500;

/// A commit as the worker knows it: the conversation topic, the position it was built after
/// and a hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubmitKey {
    /// Conversation topic.
    pub topic: Topic,
    /// Handshakes applied before it.
    pub after: u64,
    /// BLAKE3 of the commit bytes.
    pub payload: [u8; 32],
}

impl SubmitKey {
    /// The key of `payload` built after `after` handshakes of `topic`.
    pub fn of(topic: Topic, after: u64, payload: &[u8]) -> Self {
        Self { topic, after, payload: *blake3::hash(payload).as_bytes() }
    }
}

/// A map that keeps its newest `max` entries (insertion order).
#[derive(Debug)]
pub struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    max: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    /// An empty map of at most `max` entries.
    pub fn new(max: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), max: max.max(1) }
    }

    /// Inserts (replacing an older value of `k`), forgetting the oldest entry when full.
    pub fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_some() {
            self.order.retain(|o| *o != k);
        }
        self.order.push_back(k);
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// The value of `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// Removes and returns the value of `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k)?;
        self.order.retain(|o| o != k);
        Some(v)
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What the actor and the worker share: which commits the worker holds, and the answers it
/// found.
#[derive(Debug)]
struct Book {
    /// Queued or being worked on (at most [`SUBMIT_QUEUE_MAX`]).
    in_flight: HashSet<SubmitKey>,
    /// Answers not yet handed to the MLS client.
    outcomes: Recent<SubmitKey, Result<u64, SequencerError>>,
}

/// How long the actor spent inside [`NodeSequencer::submit`] (what it was blocked for per
/// offered commit).
#[derive(Debug, Default)]
pub struct SubmitStall {
    calls: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
}

/// A reading of [`SubmitStall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubmitStallView {
    /// Offers of a commit or proposal to the sequencer.
    pub calls: u64,
    /// Time spent in them in all, µs.
    pub total_us: u64,
    /// Longest of them, µs.
    pub max_us: u64,
}

impl SubmitStall {
    fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The figures so far.
    pub fn view(&self) -> SubmitStallView {
        SubmitStallView {
            calls: self.calls.load(Ordering::Relaxed),
            total_us: self.total_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

/// A commit handed to the worker.
#[derive(Debug)]
pub struct Submission {
    key: SubmitKey,
    payload: Vec<u8>,
    keys: TopicKeys,
}

/// The actor's side: a [`CommitSequencer`] that never blocks on a commit.
pub struct NodeSequencer {
    queue: SyncSender<Submission>,
    book: Arc<Mutex<Book>>,
    refused: Recent<Topic, ()>,
    stall: Arc<SubmitStall>,
    /// The order read ahead by the workers (the only place reads are served from).
    order: Arc<Mutex<OrderCache>>,
    /// Reads of the order served from what was read ahead.
    read_ahead: Arc<AtomicU64>,
    /// Where reads ahead are asked for (the ledger worker), once connected.
    ahead: Option<SyncSender<LedgerJob>>,
    /// Reads ahead asked for and not served yet, by when.
    asked: RefCell<Recent<Topic, Instant>>,
    /// Reads ahead asked for in all.
    asks: Arc<AtomicU64>,
    /// Reads that could not be asked (no worker yet, or its queue was full).
    unasked: Arc<AtomicU64>,
}

/// Conversations with a read ahead asked for and not served yet, at most. Overflow policy:
/// the oldest is forgotten (it is asked again at its next read).
pub const READS_ASKED_MAX: usize = 256;
/// A read ahead not served this long is asked again, ms.
pub const READ_ASK_AGAIN_MS: u64 = 1_000;

/// How the actor's reads of the commit order were answered (never by a round trip of its
/// own: it holds no ledger connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderReadsView {
    /// Served from what the workers read ahead.
    pub read_ahead: u64,
    /// Asked of the ledger worker (the read failed as unavailable meanwhile).
    pub asked: u64,
    /// Not served and not asked (the worker's queue was full): the read is tried again.
    pub unasked: u64,
}

/// The worker's side, run by [`SubmitWorker::run`] on its own thread.
pub struct SubmitWorker {
    client: LedgerClient,
    params: Option<Params>,
    jobs: Receiver<Submission>,
    book: Arc<Mutex<Book>>,
    /// Told when a submission ended with an answer.
    ops: mpsc::Sender<Job>,
    stopping: Arc<dyn Fn() -> bool + Send + Sync>,
    held: VecDeque<Work>,
    mined: Recent<SubmitKey, TopicTx>,
    /// The order read ahead for the actor.
    order: Arc<Mutex<OrderCache>>,
}

/// A commit the worker holds.
struct Work {
    key: SubmitKey,
    tx: TopicTx,
    stage: Stage,
    attempts: u32,
    since: Instant,
    not_before: Instant,
}

enum Stage {
    /// Mining at `factor` times the chain's price (a loaded validator may ask more).
    Mine { factor: u64 },
    /// Submitted as `id` at `at`; waiting for finality.
    Final { id: TxId, at: Instant, factor: u64 },
}

/// What one step of a commit's work led to.
enum Step {
    /// More to do.
    Again(Work),
    /// An answer for the MLS client.
    Answer(SubmitKey, Result<u64, SequencerError>),
    /// No answer within the bounds: the commit stays pending; its mined write is kept.
    GiveUp(SubmitKey, TopicTx),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain sets and queues behind: still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(why: impl std::fmt::Display) -> SequencerError {
    SequencerError::Unavailable(why.to_string())
}

impl NodeSequencer {
    /// The actor's sequencer and its worker (to run on its own thread). `worker` submits
    /// commits and leave proposals. The worker tells `ops` when a submission ended, and stops
    /// once `stopping` says so or this sequencer is dropped.
    pub fn new(
        worker: LedgerClient,
        ops: mpsc::Sender<Job>,
        stopping: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> (Self, SubmitWorker) {
        let (queue, jobs) = std::sync::mpsc::sync_channel(SUBMIT_QUEUE_MAX);
        let order = Arc::new(Mutex::new(OrderCache::new()));
        let book =
            Arc::new(Mutex::new(Book { in_flight: HashSet::new(), outcomes: Recent::new(OUTCOMES_MAX) }));
        let seq = Self {
            queue,
            book: book.clone(),
            refused: Recent::new(REFUSALS_MAX),
            stall: Arc::new(SubmitStall::default()),
            order: order.clone(),
            read_ahead: Arc::new(AtomicU64::new(0)),
            ahead: None,
            asked: RefCell::new(Recent::new(READS_ASKED_MAX)),
            asks: Arc::new(AtomicU64::new(0)),
            unasked: Arc::new(AtomicU64::new(0)),
        };
        let worker = SubmitWorker {
            client: worker,
            params: None,
            jobs,
            book,
            ops,
            stopping,
            held: VecDeque::new(),
            mined: Recent::new(MINED_MAX),
            order,
        };
        (seq, worker)
    }

    /// The order the ledger worker reads ahead into (see `shell::order_cache`).
    pub fn order_cache(&self) -> Arc<Mutex<OrderCache>> {
        self.order.clone()
    }

    /// Connects the ledger worker's queue, where reads ahead are asked for.
    pub fn ask_reads_at(&mut self, ledger: SyncSender<LedgerJob>) {
        self.ahead = Some(ledger);
    }

    /// Whether a read of `topic`'s order at the actor's position would be served now (a
    /// change parked for its read is made again once it would).
    pub fn order_ready(&self, topic: &Topic) -> bool {
        lock(&self.order).ready(topic, super::now_ms())
    }

    /// Asks the ledger worker to read `topic` ahead, at most once per [`READ_ASK_AGAIN_MS`];
    /// `false` if it could not be asked (no worker, or its queue is full).
    fn ask_read(&self, topic: &Topic) -> bool {
        let Some(tx) = &self.ahead else { return false };
        let mut asked = self.asked.borrow_mut();
        if asked.get(topic).is_some_and(|t| t.elapsed() < Duration::from_millis(READ_ASK_AGAIN_MS)) {
            return true;
        }
        if !super::ledger::try_enqueue(tx, LedgerJob::ReadAhead(*topic)) {
            return false;
        }
        asked.insert(*topic, Instant::now());
        self.asks.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A reader of how the actor's reads of the order were answered.
    pub fn order_reads(&self) -> impl Fn() -> OrderReadsView + Send + Sync + 'static {
        let (ahead, asks, unasked) = (self.read_ahead.clone(), self.asks.clone(), self.unasked.clone());
        move || OrderReadsView {
            read_ahead: ahead.load(Ordering::Relaxed),
            asked: asks.load(Ordering::Relaxed),
            unasked: unasked.load(Ordering::Relaxed),
        }
    }

    /// How long the actor spent offering commits.
    pub fn stall(&self) -> Arc<SubmitStall> {
        self.stall.clone()
    }

    /// Whether a commit of `topic` was refused as not signed by a member since the last call
    /// (and forgets it): its waiting API call is answered with the refusal.
    pub fn take_not_member(&mut self, topic: &Topic) -> bool {
        self.refused.remove(topic).is_some()
    }

    /// Commits the worker holds (queued or being worked on).
    pub fn in_flight(&self) -> usize {
        lock(&self.book).in_flight.len()
    }

    fn offer(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        if payload.len() > HANDSHAKE_BYTES_MAX {
            return Err(SequencerError::TooLarge { len: payload.len(), max: HANDSHAKE_BYTES_MAX });
        }
        let key = SubmitKey::of(topic, after, &payload);
        let mut book = lock(&self.book);
        if let Some(answer) = book.outcomes.remove(&key) {
            if answer == Err(SequencerError::NotMember) {
                self.refused.insert(topic, ());
            }
            return answer;
        }
        if book.in_flight.contains(&key) {
            return Err(unavailable(
                "submitted; being mined or waiting for finality (the commit stays pending)",
            ));
        }
        if book.in_flight.len() >= SUBMIT_QUEUE_MAX {
            return Err(unavailable(format!(
                "{SUBMIT_QUEUE_MAX} commits are being submitted; this one stays pending and is offered again"
            )));
        }
        match self.queue.try_send(Submission { key, payload, keys }) {
            Ok(()) => {
                book.in_flight.insert(key);
                Err(unavailable("queued for submission (the commit stays pending until ordered)"))
            }
            Err(TrySendError::Full(_)) => Err(unavailable("the submission queue is full")),
            Err(TrySendError::Disconnected(_)) => Err(unavailable("the submission worker stopped")),
        }
    }
}

impl CommitSequencer for NodeSequencer {
    fn submit(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        let start = Instant::now();
        let r = self.offer(topic, after, payload, keys);
        self.stall.record(start.elapsed());
        r
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        let served = lock(&self.order).take(topic, from, max, super::now_ms());
        if let Some((got, _)) = served {
            self.read_ahead.fetch_add(1, Ordering::Relaxed);
            self.asked.borrow_mut().remove(topic);
            return Ok(got);
        }
        if self.ask_read(topic) {
            return Err(unavailable("the order is being read ahead"));
        }
        self.unasked.fetch_add(1, Ordering::Relaxed);
        Err(unavailable("the ledger worker is busy; the order is read again later"))
    }

    fn expect_more(&mut self, topic: &Topic) {
        lock(&self.order).forget_end(topic);
    }
}

/// Reads each conversation's sequenced handshakes from the actor's read position on, into
/// `order` (`shell::order_cache`), so the actor applies them without a round trip. A failed
/// read leaves the actor to ask.
pub fn read_ahead(client: &mut LedgerClient, order: &Mutex<OrderCache>, at: Vec<(Topic, u64)>) {
    for (topic, from) in at {
        match client.sequenced(&topic, from, ORDER_PAGE) {
            Ok(got) => {
                let complete = got.len() < ORDER_PAGE;
                let payloads = got.into_iter().map(|s| s.payload).collect();
                lock(order).fill(&topic, from, payloads, complete, super::now_ms());
            }
            Err(e) => tracing::debug!("reading the order ahead: {e}"),
        }
    }
}

impl SubmitWorker {
    /// Works on queued commits until the stop flag is set or the actor's sequencer is gone.
    pub fn run(mut self) {
        loop {
            if (self.stopping)() {
                return;
            }
            let now = Instant::now();
            let wait = match self.held.iter().map(|w| w.not_before).min() {
                Some(t) => t.saturating_duration_since(now),
                None => Duration::from_millis(IDLE_WAIT_MS),
            };
            let first = if wait.is_zero() {
                match self.jobs.try_recv() {
                    Ok(s) => Some(s),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match self.jobs.recv_timeout(wait.min(Duration::from_millis(IDLE_WAIT_MS))) {
                    Ok(s) => Some(s),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut new: Vec<Submission> = first.into_iter().collect();
            new.extend(self.jobs.try_iter());
            for s in new {
                self.take(s);
            }
            self.step_next();
        }
    }

    /// Holds a new commit; older ones of its topic are dropped (the MLS client keeps one
    /// pending commit per conversation: a new one means the old one is settled).
    fn take(&mut self, s: Submission) {
        let topic = s.key.topic;
        let stale: Vec<SubmitKey> =
            self.held.iter().filter(|w| w.key.topic == topic && w.key != s.key).map(|w| w.key).collect();
        if !stale.is_empty() {
            self.held.retain(|w| w.key.topic != topic || w.key == s.key);
            let mut book = lock(&self.book);
            for k in &stale {
                book.in_flight.remove(k);
            }
        }
        let now = Instant::now();
        let tx = self.mined.remove(&s.key).unwrap_or_else(|| {
            TopicTx::handshake(self.client.chain(), topic, s.key.after, s.payload, &s.keys.seed, s.keys.next)
        });
        self.held.push_back(Work {
            key: s.key,
            tx,
            stage: Stage::Mine { factor: 1 },
            attempts: 0,
            since: now,
            not_before: now,
        });
    }

    /// One step of the first commit that is due (then it goes to the back: round robin).
    fn step_next(&mut self) {
        let now = Instant::now();
        let Some(i) = self.held.iter().position(|w| w.not_before <= now) else { return };
        let Some(work) = self.held.remove(i) else { return };
        match self.step(work) {
            Step::Again(w) => self.held.push_back(w),
            Step::Answer(key, answer) => {
                tracing::debug!(after = key.after, ok = answer.is_ok(), "commit submission answered");
                // The actor settles by reading the order: read it ahead for it, before the
                // answer shows (a "stale" seen first would be offered, and mined, again).
                let at = lock(&self.order).read_from(&key.topic).map(|from| (key.topic, from));
                read_ahead(&mut self.client, &self.order, at.into_iter().collect());
                {
                    let mut book = lock(&self.book);
                    book.in_flight.remove(&key);
                    book.outcomes.insert(key, answer);
                }
                let _ = self.ops.blocking_send(Job::SubmissionEnded(key.topic));
            }
            Step::GiveUp(key, tx) => {
                tracing::debug!(after = key.after, "commit submission gave up; the commit stays pending");
                lock(&self.book).in_flight.remove(&key);
                self.mined.insert(key, tx);
            }
        }
    }

    fn step(&mut self, mut w: Work) -> Step {
        if w.since.elapsed() >= Duration::from_millis(SUBMISSION_DEADLINE_MS) {
            return Step::GiveUp(w.key, w.tx);
        }
        match w.stage {
            Stage::Mine { factor } => self.mine_and_submit(w, factor),
            Stage::Final { id, at, factor } => {
                match self.client.wait_final(&id, Duration::from_millis(FINALITY_SLICE_MS)) {
                    Ok((_, RemoteOutcome::Sequenced { seq, .. })) => Step::Answer(w.key, Ok(seq)),
                    Ok((_, other)) => {
                        tracing::warn!("a commit's write was finalized as {other:?}");
                        self.failed(w, factor)
                    }
                    Err(ClientError::Timeout) if at.elapsed() < Duration::from_millis(FINALITY_WAIT_MS) => {
                        w.not_before = Instant::now();
                        Step::Again(w)
                    }
                    Err(e) => self.refused(w, factor, e),
                }
            }
        }
    }

    fn mine_and_submit(&mut self, mut w: Work, factor: u64) -> Step {
        let params = match self.params {
            Some(p) => p,
            None => match self.client.params() {
                Ok(p) => *self.params.insert(p),
                Err(e) => {
                    tracing::debug!("chain parameters not read: {e}");
                    return self.failed(w, factor);
                }
            },
        };
        let need = params.topic_work(w.tx.encode().len()).saturating_mul(factor);
        let slice = Instant::now() + Duration::from_millis(MINE_SLICE_MS);
        if !mine_topic_write(&mut w.tx, need, slice) {
            w.not_before = Instant::now();
            return Step::Again(w);
        }
        match self.client.submit(&w.tx.encode()) {
            Ok(id) => {
                let now = Instant::now();
                w.stage = Stage::Final { id, at: now, factor };
                w.not_before = now;
                Step::Again(w)
            }
            Err(e) if factor < TOPIC_WORK_FACTOR_MAX && is_work_too_low_refusal(&e) => {
                w.stage = Stage::Mine { factor: factor * 2 };
                Step::Again(w)
            }
            Err(e) => self.refused(w, factor, e),
        }
    }

    /// A submission or finality wait ended in `e`.
    fn refused(&mut self, w: Work, factor: u64, e: ClientError) -> Step {
        if is_not_member_refusal(&e) {
            return Step::Answer(w.key, Err(SequencerError::NotMember));
        }
        if is_stale_refusal(&e) {
            return match self.client.proven_stale(&w.key.topic, w.key.after) {
                stale @ SequencerError::Stale { .. } => Step::Answer(w.key, Err(stale)),
                _ => self.failed(w, factor),
            };
        }
        tracing::debug!("commit submission attempt failed: {e}");
        self.failed(w, factor)
    }

    /// An attempt without an answer: again after a pause, or give up.
    fn failed(&mut self, mut w: Work, factor: u64) -> Step {
        w.attempts += 1;
        if w.attempts >= ATTEMPTS_MAX {
            return Step::GiveUp(w.key, w.tx);
        }
        w.stage = Stage::Mine { factor };
        w.not_before = Instant::now() + Duration::from_millis(RETRY_PAUSE_MS);
        Step::Again(w)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn keys() -> TopicKeys {
        TopicKeys { seed: [7; 32], next: Some([8; 32]) }
    }

    /// A sequencer whose worker is not running (its queue is read by the test).
    fn sequencer() -> (NodeSequencer, SubmitWorker) {
        let (g, _) = cairn_ledger::genesis::Genesis::local("seq-test", 1, 39_000, Vec::new()).unwrap();
        let client = || LedgerClient::new(&g).unwrap();
        let (ops, _) = mpsc::channel(4);
        NodeSequencer::new(client(), ops, Arc::new(|| false))
    }

    fn is_unavailable(r: &Result<u64, SequencerError>) -> bool {
        matches!(r, Err(SequencerError::Unavailable(_)))
    }

    #[test]
    fn a_commit_is_queued_once_and_answered_at_once() {
        let (mut seq, worker) = sequencer();
        let topic = Topic([1; 32]);
        let start = Instant::now();
        for _ in 0..5 {
            assert!(is_unavailable(&seq.submit(topic, 3, vec![9; 100], keys())), "pending, not blocked");
        }
        assert!(start.elapsed() < Duration::from_secs(1), "no offer waits for mining or the network");
        assert_eq!(worker.jobs.try_iter().count(), 1, "offered five times, queued once");
        assert_eq!(seq.in_flight(), 1);
        // Other bytes, or another position, are another commit.
        assert!(is_unavailable(&seq.submit(topic, 3, vec![8; 100], keys())));
        assert!(is_unavailable(&seq.submit(topic, 4, vec![9; 100], keys())));
        assert_eq!(worker.jobs.try_iter().count(), 2);
        assert_eq!(seq.stall.view().calls, 7);
    }

    #[test]
    fn the_queue_is_bounded_and_refuses_beyond_it() {
        let (mut seq, worker) = sequencer();
        for i in 0..SUBMIT_QUEUE_MAX as u64 {
            assert!(is_unavailable(&seq.submit(Topic([2; 32]), i, vec![1; 10], keys())));
        }
        assert_eq!(seq.in_flight(), SUBMIT_QUEUE_MAX);
        let over = seq.submit(Topic([3; 32]), 0, vec![1; 10], keys());
        let Err(SequencerError::Unavailable(why)) = over else { panic!("refused, not {over:?}") };
        assert!(why.contains("offered again"), "{why}");
        assert_eq!(seq.in_flight(), SUBMIT_QUEUE_MAX, "the overflowing commit is not held");
        assert_eq!(worker.jobs.try_iter().count(), SUBMIT_QUEUE_MAX);
        let big = seq.submit(Topic([3; 32]), 0, vec![1; HANDSHAKE_BYTES_MAX + 1], keys());
        assert!(matches!(big, Err(SequencerError::TooLarge { .. })), "{big:?}");
    }

    #[test]
    fn answers_reach_the_next_offer_once() {
        let (mut seq, worker) = sequencer();
        let topic = Topic([4; 32]);
        let _ = seq.submit(topic, 0, vec![5; 40], keys());
        let s = worker.jobs.try_recv().unwrap();
        // The worker's answers: sequenced, then (for another commit) not a member.
        {
            let mut book = lock(&seq.book);
            book.in_flight.remove(&s.key);
            book.outcomes.insert(s.key, Ok(0));
            book.outcomes.insert(SubmitKey::of(topic, 1, &[6; 40]), Err(SequencerError::NotMember));
        }
        assert_eq!(seq.submit(topic, 0, vec![5; 40], keys()), Ok(0));
        assert!(
            is_unavailable(&seq.submit(topic, 0, vec![5; 40], keys())),
            "answered once, then queued again"
        );
        assert!(!seq.take_not_member(&topic));
        assert_eq!(seq.submit(topic, 1, vec![6; 40], keys()), Err(SequencerError::NotMember));
        assert!(seq.take_not_member(&topic), "the refusal is kept for the waiting call");
        assert!(!seq.take_not_member(&topic), "once");
    }

    #[test]
    fn a_newer_commit_of_a_topic_replaces_the_held_one() {
        let (mut seq, mut worker) = sequencer();
        let topic = Topic([5; 32]);
        let _ = seq.submit(topic, 0, vec![1; 40], keys());
        let _ = seq.submit(topic, 1, vec![2; 40], keys());
        let _ = seq.submit(Topic([6; 32]), 0, vec![3; 40], keys());
        let subs: Vec<Submission> = worker.jobs.try_iter().collect();
        for s in subs {
            worker.take(s);
        }
        let held: Vec<(Topic, u64)> = worker.held.iter().map(|w| (w.key.topic, w.key.after)).collect();
        assert_eq!(held, vec![(topic, 1), (Topic([6; 32]), 0)]);
        assert_eq!(seq.in_flight(), 2, "the replaced commit is no longer in flight");
    }

    #[test]
    fn reads_are_served_from_the_read_ahead_or_asked_of_the_ledger_worker_never_waited_for() {
        let (mut seq, _worker) = sequencer();
        let topic = Topic([7; 32]);
        let unavailable =
            |r: Result<Vec<Sequenced>, SequencerError>| matches!(r, Err(SequencerError::Unavailable(_)));
        // No ledger worker connected yet: not served, not asked, not waited for.
        assert!(unavailable(seq.fetch(&topic, 0, 10)));
        assert_eq!(seq.order_reads()().unasked, 1);
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        seq.ask_reads_at(tx);
        let start = Instant::now();
        assert!(unavailable(seq.fetch(&topic, 0, 10)));
        assert!(unavailable(seq.fetch(&topic, 0, 10)));
        assert!(start.elapsed() < Duration::from_secs(1), "no read waits for the ledger");
        let asked: Vec<LedgerJob> = rx.try_iter().collect();
        assert!(matches!(&asked[..], [LedgerJob::ReadAhead(t)] if *t == topic), "asked once");
        assert!(!seq.order_ready(&topic));
        // The worker's read arrives: its entries, then its end while fresh.
        lock(&seq.order).fill(&topic, 0, vec![vec![1; 8]], true, super::super::now_ms());
        assert!(seq.order_ready(&topic));
        assert_eq!(seq.fetch(&topic, 0, 10).unwrap().len(), 1);
        assert!(seq.fetch(&topic, 1, 10).unwrap().is_empty());
        assert!(seq.fetch(&topic, 1, 10).unwrap().is_empty());
        let v = seq.order_reads()();
        assert_eq!((v.read_ahead, v.asked, v.unasked), (3, 1, 1));
    }

    #[test]
    fn recent_keeps_the_newest() {
        let mut r = Recent::new(3);
        for i in 0..5 {
            r.insert(i, i * 10);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.remove(&1), None);
        assert_eq!(r.remove(&4), Some(40));
        r.insert(2, 21);
        r.insert(5, 50);
        r.insert(6, 60);
        assert_eq!(r.remove(&3), None, "the oldest went first");
        assert_eq!(r.remove(&2), Some(21), "re-inserting made it newer");
    }
}
