//! The group-committing writer threads. The history writer commits deliveries, own
//! publications and resume cursors to `history.redb` and only then emits the events; the
//! mailbox writer commits store requests to `mailbox.redb` and only then lets the actor answer.
//! One redb transaction per batch.
//!
//! Durability: every mailbox batch, and a batch holding an own publication, is fsynced
//! before anyone is told. A batch of deliveries and cursors only is a deferred commit
//! ([`Store::append_deferred`]), made durable within [`HISTORY_SYNC_EVERY_MS`] (or by the next
//! durable commit, a user node's own durable write, or shutdown): what the mesh delivered is
//! held by the topic's store nodes, and a crash rolls back the deliveries and the cursors past
//! them together, so the next start fetches them again.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self as std_mpsc, TrySendError};
use std::thread::JoinHandle;

use cairn_proto::{Envelope, Id};
use cairn_store::{Appended, Retention, Source, Store, StoreError};
use libp2p::identity::Keypair;
use libp2p::request_response::ResponseChannel;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::events::{EventSink, NodeEvent};
use super::{NodeError, now_ms};
use crate::receipt::StoreReceipt;
use crate::sync::SendStatus;
use crate::wire::{Response, StoreAck, StoreOutcome};

/// Writes grouped into one commit, at most.
const COMMIT_BATCH_MAX: usize = 512;
/// Deferred history commits become durable at most this long after, ms.
pub(super) const HISTORY_SYNC_EVERY_MS: u64 = 1000;
/// History jobs queued for the writer, at most. When full, the actor waits for room (still
/// taking committed results and handle commands meanwhile) and does not poll the swarm: the
/// back-pressure of a slow event consumer reaches the network.
pub(super) const HISTORY_JOBS_MAX: usize = 1024;
/// Own publications queued for the writer, at most. A lane of their own, so a publication is
/// never held behind deliveries that wait for a slow consumer. When full, `publish` is refused
/// with [`NodeError::Refused`] and the caller retries.
pub(super) const OWN_JOBS_MAX: usize = 256;
/// Store requests queued for the mailbox writer, at most. When full, a store request is
/// answered with an error at once and its sender retries with back-off: a store node sheds
/// load instead of queueing without bound.
pub(super) const MAILBOX_JOBS_MAX: usize = 4096;
/// Committed results queued back to the actor, at most. When full, the writer waits; the actor
/// takes from this queue in every state (also while it waits for history room, and while it
/// shuts down), so the wait is short and cannot close a cycle.
pub(super) const COMMITTED_MAX: usize = 1024;

/// Work for the history writer, in the order the state machine produced it.
pub(super) enum HistoryJob {
    /// Persist, then emit `NodeEvent::Delivered` (unless local history already held it).
    Deliver {
        /// Envelope.
        envelope: Envelope,
        /// Its id.
        id: Id,
        /// An ancestor could not be found.
        after_gap: bool,
    },
    /// Emit `NodeEvent::Status` (after the deliveries queued before it).
    Status {
        /// Envelope id.
        id: Id,
        /// New status.
        status: SendStatus,
    },
    /// Persist a resume cursor, in the commit of the envelopes queued before it (or a later one).
    Cursor {
        /// Key in the history store.
        key: String,
        /// Next cursor.
        cursor: u64,
    },
    /// Keep a named value (a store receipt) in the commit of what was queued before it.
    Keep {
        /// Key in the history store.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Time passed: make deferred commits durable if the last sync is old enough.
    Sync,
}

/// Our own publication: persisted, then handed back to the actor to be gossiped.
pub(super) struct OwnJob {
    pub(super) envelope: Envelope,
    pub(super) reply: oneshot::Sender<Result<Id, NodeError>>,
}

/// What a writer hands back to the actor once committed.
pub(super) enum Committed {
    /// A mailbox batch was committed.
    Mailbox(MailboxCommit),
    /// Our own envelope is durable locally: now gossip it and push it to the store nodes.
    Own(Box<Envelope>, oneshot::Sender<Result<Id, NodeError>>),
}

/// A store request (one envelope or a batch) waiting for the mailbox commit.
pub(super) struct MailboxJob {
    pub(super) channel: ResponseChannel<Vec<u8>>,
    /// Each envelope to store, or the id of one refused before the commit and why.
    pub(super) items: Vec<Result<Envelope, (Id, StoreOutcome)>>,
    /// Request bytes, counted against `MAILBOX_QUEUED_BYTES_MAX` while queued.
    pub(super) bytes: usize,
    /// The requesting peer, for its byte quota.
    pub(super) source: Source,
}

impl MailboxJob {
    fn envelopes(&self) -> usize {
        self.items.iter().filter(|i| i.is_ok()).count()
    }
}

/// The answers of one mailbox batch.
pub(super) struct MailboxCommit {
    pub(super) ok: bool,
    pub(super) stored: u64,
    pub(super) answers: Vec<(ResponseChannel<Vec<u8>>, Response)>,
}

/// The actor's ends of the history writer.
pub(super) struct HistoryLanes {
    pub(super) jobs: mpsc::Sender<HistoryJob>,
    pub(super) own: mpsc::Sender<OwnJob>,
    pub(super) thread: JoinHandle<()>,
}

/// Starts the history writer thread.
pub(super) fn spawn_history_writer(
    store: Arc<Store>,
    sink: EventSink,
    committed: mpsc::Sender<Committed>,
) -> io::Result<HistoryLanes> {
    let (jobs_tx, jobs) = mpsc::channel(HISTORY_JOBS_MAX);
    let (own_tx, own) = mpsc::channel(OWN_JOBS_MAX);
    let writer = HistoryWriter {
        store,
        sink,
        committed,
        jobs,
        own,
        jobs_open: true,
        own_open: true,
        synced_at: std::time::Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("cairn-history".into())
        .spawn(move || futures::executor::block_on(writer.run()))?;
    Ok(HistoryLanes { jobs: jobs_tx, own: own_tx, thread })
}

struct HistoryWriter {
    store: Arc<Store>,
    sink: EventSink,
    committed: mpsc::Sender<Committed>,
    jobs: mpsc::Receiver<HistoryJob>,
    own: mpsc::Receiver<OwnJob>,
    jobs_open: bool,
    /// False once the actor closed the own lane (shutdown): from then on nothing waits for
    /// the event consumer.
    own_open: bool,
    /// Last time deferred commits were made durable.
    synced_at: std::time::Instant,
}

impl HistoryWriter {
    async fn run(mut self) {
        while let Some((own, jobs)) = self.next_batch().await {
            self.commit(own, jobs).await;
            self.maybe_sync(false);
        }
        self.maybe_sync(true);
    }

    /// Makes deferred commits durable when `now` or when the last sync is old enough.
    fn maybe_sync(&mut self, now: bool) {
        let due = self.synced_at.elapsed() >= std::time::Duration::from_millis(HISTORY_SYNC_EVERY_MS);
        if !self.store.has_deferred() || !(now || due) {
            return;
        }
        self.synced_at = std::time::Instant::now();
        if let Err(e) = self.store.sync() {
            warn!("cannot make the local history durable: {e}");
        }
    }

    /// Waits for a first job (own publications first), then takes what is already queued, up
    /// to the batch limit. `None` once both lanes are closed and empty.
    async fn next_batch(&mut self) -> Option<(Vec<OwnJob>, Vec<HistoryJob>)> {
        let (mut own, mut jobs) = (Vec::new(), Vec::new());
        while own.is_empty() && jobs.is_empty() {
            tokio::select! {
                biased;
                j = self.own.recv(), if self.own_open => match j {
                    Some(j) => own.push(j),
                    None => self.own_open = false,
                },
                j = self.jobs.recv(), if self.jobs_open => match j {
                    Some(j) => jobs.push(j),
                    None => self.jobs_open = false,
                },
                else => return None,
            }
        }
        while own.len() + jobs.len() < COMMIT_BATCH_MAX
            && let Ok(j) = self.own.try_recv()
        {
            own.push(j);
        }
        while own.len() + jobs.len() < COMMIT_BATCH_MAX
            && let Ok(j) = self.jobs.try_recv()
        {
            jobs.push(j);
        }
        Some((own, jobs))
    }

    /// One commit for the batch (with its cursors), then own replies, then the events in order.
    async fn commit(&mut self, own: Vec<OwnJob>, jobs: Vec<HistoryJob>) {
        let mut envs: Vec<Envelope> = own.iter().map(|j| j.envelope.clone()).collect();
        envs.extend(jobs.iter().filter_map(|j| match j {
            HistoryJob::Deliver { envelope, .. } => Some(envelope.clone()),
            _ => None,
        }));
        let cursors: Vec<(String, Vec<u8>)> = jobs
            .iter()
            .filter_map(|j| match j {
                HistoryJob::Cursor { key, cursor } => Some((key.clone(), cursor.to_be_bytes().to_vec())),
                HistoryJob::Keep { key, value } => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect();
        let result = if own.is_empty() {
            self.append_deferred(&envs, &cursors)
        } else {
            // Own publications are acknowledged: fsynced (with every deferred commit before).
            let r = self.append(&envs);
            if r.is_ok() && !cursors.is_empty() {
                let _ = self.append_deferred(&[], &cursors);
            }
            r
        };
        let own_len = own.len();
        for j in own {
            self.finish_own(j, result.as_ref().map(|_| ()).map_err(ToString::to_string)).await;
        }
        let mut appended = result.ok().map(|r| r.into_iter().skip(own_len));
        for j in jobs {
            let ev = match j {
                HistoryJob::Deliver { envelope, id, after_gap } => {
                    if let Some(Appended::Duplicate) = appended.as_mut().and_then(Iterator::next) {
                        continue; // local history already held it: delivered before (exactly once)
                    }
                    NodeEvent::Delivered { envelope: Box::new(envelope), id, after_gap }
                }
                HistoryJob::Status { id, status } => NodeEvent::Status { id, status },
                HistoryJob::Cursor { .. } | HistoryJob::Keep { .. } | HistoryJob::Sync => continue,
            };
            self.emit(ev).await;
        }
    }

    fn append_deferred(
        &self,
        envs: &[Envelope],
        keys: &[(String, Vec<u8>)],
    ) -> Result<Vec<Appended>, StoreError> {
        if envs.is_empty() && keys.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.store.append_deferred(envs, keys);
        if let Err(e) = &result {
            warn!("cannot persist {} envelopes: {e}", envs.len());
        }
        result
    }

    fn append(&self, envs: &[Envelope]) -> Result<Vec<Appended>, StoreError> {
        if envs.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.store.append(envs);
        if let Err(e) = &result {
            warn!("cannot persist {} envelopes: {e}", envs.len());
        }
        result
    }

    /// An own publication alone (while events wait for the consumer).
    async fn commit_own(&mut self, j: OwnJob) {
        let result = self.append(std::slice::from_ref(&j.envelope)).map(|_| ()).map_err(|e| e.to_string());
        self.finish_own(j, result).await;
    }

    async fn finish_own(&mut self, j: OwnJob, result: Result<(), String>) {
        match result {
            Ok(()) => {
                let _ = self.committed.send(Committed::Own(Box::new(j.envelope), j.reply)).await;
            }
            Err(e) => {
                let _ = j.reply.send(Err(NodeError::Refused(format!("not stored locally: {e}"))));
            }
        }
    }

    /// Observers first (never waits); then the lossless stream, waiting for room while it is
    /// attached, and committing own publications meanwhile (policy: `events.rs`).
    async fn emit(&mut self, ev: NodeEvent) {
        self.sink.observe(&ev);
        loop {
            if !self.own_open || !self.sink.attached() {
                self.sink.offer(ev);
                return;
            }
            let own = tokio::select! {
                biased;
                permit = self.sink.reserve() => {
                    if let Some(p) = permit {
                        p.send(ev);
                    }
                    return;
                }
                j = self.own.recv() => j,
            };
            match own {
                Some(j) => self.commit_own(j).await,
                None => self.own_open = false,
            }
        }
    }
}

/// Store requests waiting for the mailbox writer, in request bytes, at most (with
/// `MAILBOX_JOBS_MAX` requests). Beyond it a store request is answered "busy" at once.
pub(super) const MAILBOX_QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The actor's end of the mailbox writer's queue, bounded in requests and in bytes.
pub(super) struct MailboxQueue {
    jobs: std_mpsc::SyncSender<MailboxJob>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Why a store request was not queued.
pub(super) enum NotQueued {
    /// Over `MAILBOX_JOBS_MAX` requests or `MAILBOX_QUEUED_BYTES_MAX` bytes.
    Busy(MailboxJob),
    /// The writer stopped.
    Closed(MailboxJob),
}

impl MailboxQueue {
    /// Queues a store request unless a bound is reached.
    pub(super) fn try_push(&self, job: MailboxJob) -> Result<(), NotQueued> {
        let bytes = job.bytes;
        if self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > MAILBOX_QUEUED_BYTES_MAX {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(NotQueued::Busy(job));
        }
        self.jobs.try_send(job).map_err(|e| {
            let (job, busy) = match e {
                TrySendError::Full(j) => (j, true),
                TrySendError::Disconnected(j) => (j, false),
            };
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            if busy { NotQueued::Busy(job) } else { NotQueued::Closed(job) }
        })
    }
}

/// The actor's ends of the mailbox writer.
pub(super) struct MailboxLane {
    pub(super) queue: MailboxQueue,
    pub(super) thread: JoinHandle<()>,
}

/// Starts the mailbox writer: group-commits store requests (one transaction, one fsync per
/// batch); the answers go back to the actor only after the commit returned.
/// Expired mail is deleted here too, every `expire_every_ms`, off the swarm's event loop.
pub(super) fn spawn_mailbox_writer(
    store: Arc<Store>,
    key: Keypair,
    retention: Retention,
    expire_every_ms: u64,
    committed: mpsc::Sender<Committed>,
) -> io::Result<MailboxLane> {
    let (tx, rx) = std_mpsc::sync_channel::<MailboxJob>(MAILBOX_JOBS_MAX);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let queued = queued_bytes.clone();
    let every = std::time::Duration::from_millis(expire_every_ms.max(1000));
    let thread = std::thread::Builder::new().name("cairn-mailbox".into()).spawn(move || {
        let mut expired_at = std::time::Instant::now();
        loop {
            if expired_at.elapsed() >= every {
                expired_at = std::time::Instant::now();
                if let Err(e) = store.expire(now_ms()) {
                    warn!("mailbox expiry failed: {e}");
                }
            }
            let batch = match next_mailbox_batch(&rx, every.saturating_sub(expired_at.elapsed())) {
                Batch::Jobs(b) => b,
                Batch::Idle => continue,
                Batch::Closed => break,
            };
            let bytes: usize = batch.iter().map(|j| j.bytes).sum();
            let commit = commit_mailbox(&store, &key, &retention, batch);
            queued.fetch_sub(bytes, Ordering::AcqRel);
            if committed.blocking_send(Committed::Mailbox(commit)).is_err() {
                break;
            }
        }
    })?;
    Ok(MailboxLane { queue: MailboxQueue { jobs: tx, queued_bytes }, thread })
}

enum Batch {
    Jobs(Vec<MailboxJob>),
    Idle,
    Closed,
}

/// Takes the first request (waiting at most `wait`) and the requests already queued, until the
/// batch holds `COMMIT_BATCH_MAX` envelopes.
fn next_mailbox_batch(rx: &std_mpsc::Receiver<MailboxJob>, wait: std::time::Duration) -> Batch {
    let first = match rx.recv_timeout(wait) {
        Ok(j) => j,
        Err(std_mpsc::RecvTimeoutError::Timeout) => return Batch::Idle,
        Err(std_mpsc::RecvTimeoutError::Disconnected) => return Batch::Closed,
    };
    let mut envelopes = first.envelopes();
    let mut batch = vec![first];
    while envelopes < COMMIT_BATCH_MAX
        && let Ok(j) = rx.try_recv()
    {
        envelopes += j.envelopes();
        batch.push(j);
    }
    Batch::Jobs(batch)
}

fn commit_mailbox(
    store: &Store,
    key: &Keypair,
    retention: &Retention,
    batch: Vec<MailboxJob>,
) -> MailboxCommit {
    let (envs, sources): (Vec<Envelope>, Vec<Source>) = batch
        .iter()
        .flat_map(|j| j.items.iter().filter_map(|i| i.as_ref().ok().map(|e| (e.clone(), j.source))))
        .unzip();
    let now = now_ms();
    let result = store.append_with(&envs, &sources, retention, now);
    if let Err(e) = &result {
        warn!("mailbox append failed: {e}");
    }
    let mut results = result.as_ref().ok().map(|r| r.results.iter());
    let mut stored = 0;
    let mut answers = Vec::with_capacity(batch.len());
    for j in batch {
        let acks: Vec<StoreAck> = j
            .items
            .iter()
            .map(|item| match item {
                Err((id, outcome)) => StoreAck { id: *id, outcome: *outcome, receipt: None },
                Ok(e) => {
                    let outcome = match results.as_mut().and_then(Iterator::next) {
                        Some(Appended::Stored { .. }) => {
                            stored += 1;
                            StoreOutcome::Stored
                        }
                        Some(Appended::Duplicate) => StoreOutcome::Duplicate,
                        Some(Appended::Full(_)) => StoreOutcome::Full,
                        _ => StoreOutcome::Refused,
                    };
                    let receipt = matches!(outcome, StoreOutcome::Stored | StoreOutcome::Duplicate)
                        .then(|| receipt_for(key, e, retention, now))
                        .flatten();
                    StoreAck { id: e.id(), outcome, receipt }
                }
            })
            .collect();
        answers.push((j.channel, Response::Stored(acks)));
    }
    MailboxCommit { ok: result.is_ok(), stored, answers }
}

/// The signed promise for a committed envelope: kept until its TTL (capped by retention).
fn receipt_for(key: &Keypair, e: &Envelope, retention: &Retention, now: u64) -> Option<StoreReceipt> {
    let ttl_ms = u64::from(e.header.ttl_secs.min(retention.ttl_secs_max)) * 1000;
    let expires = e.header.timestamp_ms.saturating_add(ttl_ms);
    match StoreReceipt::sign(key, e.id(), now, expires) {
        Ok(r) => Some(r),
        Err(err) => {
            warn!("cannot sign a store receipt: {err}");
            None
        }
    }
}
