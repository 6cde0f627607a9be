//! Ledger round trips, off the actor: a worker thread with a bounded queue runs registration,
//! anchors, handle look-ups and height polls, each bounded by a deadline, and reports back to
//! the actor as jobs. A slow or dead validator delays only these.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{ClientError, Follower, LedgerClient, RemoteOutcome};
use cairn_ledger::state::KeyPackageRecord;
use cairn_ledger::tx::{TopicBody, TopicTx, Tx, TxBody, TxError, normalize_handle};
use cairn_mls::ConversationId;
use cairn_proto::{AccountId, Envelope, Id, Topic};
use ed25519_dalek::SigningKey;
use tokio::sync::mpsc;

use super::Shared;
use super::actor::Job;
use super::order_cache::OrderCache;
use super::sequencer::read_ahead;
use crate::error::NodeError;

/// Ledger jobs queued at most. Overflow policy: the job is refused at once (an anchor is
/// reported as not recorded and retried at its next period; a handle look-up is skipped and
/// the handle shown later).
pub const LEDGER_JOBS_MAX: usize = 256;

/// Blocks read per poll at most (the rest on the next poll).
pub const BLOCKS_PER_POLL_MAX: usize = 64;
/// Every conversation re-reads its sequenced commits at least this often, ms (a safety net
/// behind the block follower).
pub const FULL_RESYNC_MS: u64 = 30_000;
/// How often the ledger worker reads the registered store set, ms.
pub const STORES_REFRESH_MS: u64 = 30_000;

/// Registered store nodes as the mesh takes them: `(node key, rank salt)`.
type StoreKeys = Vec<([u8; 32], [u8; 32])>;

/// Handles cached at most. Overflow policy: the cache is cleared (handles are looked up again).
pub const HANDLES_MAX: usize = 100_000;

/// A ledger round trip to run.
#[derive(Debug)]
pub enum LedgerJob {
    /// Record a conversation head.
    Anchor {
        /// Conversation.
        conv: ConversationId,
        /// Head.
        head: Id,
        /// Ancestry count.
        count: u64,
        /// Give up at (unix ms).
        deadline_ms: u64,
        /// Seed of the device's authority key for the topic.
        authority: [u8; 32],
    },
    /// Look up the handles of these accounts.
    Handles(Vec<AccountId>),
    /// Record a key-package batch's hash (signed by this device), then publish the batch.
    KeyPackages {
        /// The batch envelope, published once the hash is final.
        envelope: Box<Envelope>,
        /// Its hash and count.
        record: KeyPackageRecord,
    },
    /// Read a conversation's sequenced handshakes ahead for the actor (a read it could not
    /// serve from the read-ahead: a change to build, a message from an epoch not reached yet,
    /// a conversation at start), then tell it.
    ReadAhead(Topic),
}

/// How long recording a key-package batch on the ledger may take, ms.
pub const KEY_PACKAGES_RECORD_MS: u64 = 20_000;

/// Enqueues a ledger job; `false` if the queue is full.
pub fn try_enqueue(tx: &SyncSender<LedgerJob>, job: LedgerJob) -> bool {
    match tx.try_send(job) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
    }
}

/// Retries a ledger read a few times: a validator may briefly have no proof to serve (e.g.
/// while it applies a block), and another may be down.
pub fn read_retry<T>(mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let mut attempt = 0u64;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 5 => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
        }
    }
}

/// A ledger client error as the node's.
pub fn unavailable(e: impl std::fmt::Display) -> NodeError {
    NodeError::Ledger(e.to_string())
}

/// An account id or `@handle`, resolved against proven ledger state.
pub fn resolve_account(client: &mut LedgerClient, who: &str) -> Result<AccountId, NodeError> {
    let who = who.trim();
    if let Some(h) = who.strip_prefix('@') {
        let name = normalize_handle(h).map_err(|e| NodeError::BadRequest(format!("@{h}: {e}")))?;
        return read_retry(|| client.handle_owner(&name))
            .map_err(unavailable)?
            .ok_or_else(|| NodeError::NotFound(format!("@{name} is not registered on the ledger")));
    }
    AccountId::from_text(who).map_err(|e| {
        NodeError::BadRequest(format!("'{who}' is neither an account id (cairn1…) nor a @handle: {e}"))
    })
}

/// Submits a transaction signed by `key` for `account`, retrying on nonce races; waits for
/// finality at most `timeout`. Refusals and failed effects become clear errors.
pub fn submit_tx(
    client: &mut LedgerClient,
    account: AccountId,
    key: &SigningKey,
    body: TxBody,
    timeout: Duration,
) -> Result<(Tx, u64, RemoteOutcome), NodeError> {
    let signer = key.verifying_key().to_bytes();
    let deadline = Instant::now() + timeout;
    let mut last = NodeError::Ledger("no attempt".into());
    for attempt in 0..5u64 {
        let nonce = client.nonce(&signer).map_err(unavailable)?;
        let tx = Tx::sign(client.chain(), account, key, nonce, body.clone());
        let id = match client.submit(&tx.encode()) {
            Ok(id) => id,
            Err(ClientError::Refused { code, message }) => {
                last = NodeError::Conflict(format!("ledger refused the transaction: {message}"));
                let nonce_race = code == (TxError::NonceReplayed { expected: 0, got: 0 }).code()
                    || code == (TxError::NonceSkipped { expected: 0, got: 0 }).code();
                if !nonce_race || Instant::now() >= deadline {
                    return Err(last);
                }
                std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
                continue;
            }
            Err(e) => return Err(unavailable(e)),
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        match client.wait_final(&id, left) {
            Ok((height, RemoteOutcome::Failed { message, .. })) => {
                return Err(NodeError::Conflict(format!("ledger (height {height}): {message}")));
            }
            Ok((height, outcome)) => return Ok((tx, height, outcome)),
            Err(ClientError::Refused { message, .. }) => {
                last = NodeError::Conflict(format!("ledger refused the transaction: {message}"));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(last)
}

/// Records `head` (`count` messages) as the anchor of `topic`: a topic write signed with the
/// device's authority key of the topic (`authority` seed), naming no account or device, paid
/// by proof of work mined here on the ledger worker thread, bounded by `deadline_ms`. An
/// anchor at or past `count` already on the ledger (another member's) counts as recorded.
fn anchor(
    client: &mut LedgerClient,
    topic: cairn_proto::Topic,
    head: Id,
    count: u64,
    authority: &[u8; 32],
    deadline_ms: u64,
) -> Result<(), NodeError> {
    let deadline = Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(super::now_ms()));
    let params = client.params().map_err(unavailable)?;
    let mut tx = TopicTx::anchor(client.chain(), topic, head, count, authority);
    let passed = (TxError::AnchorRegressed { count: 0, anchored: 0 }).code();
    let id = match client.submit_topic_write(&mut tx, &params, deadline) {
        Ok(id) => id,
        Err(ClientError::Refused { code, .. }) if code == passed => return Ok(()),
        Err(e) => return Err(unavailable(e)),
    };
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    match client.wait_final(&id, left) {
        Ok((_, RemoteOutcome::Applied)) => Ok(()),
        Ok((height, other)) => Err(NodeError::Conflict(format!("ledger (height {height}): {other:?}"))),
        Err(ClientError::Refused { code, .. }) if code == passed => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

/// The ledger worker: registration first, then height polls between jobs.
pub struct LedgerWorker {
    /// Shared node state (identity, flags, caches).
    pub shared: Arc<Shared>,
    /// Where results go.
    pub ops: mpsc::Sender<Job>,
    /// Poll period, ms.
    pub tick_ms: u64,
    /// Handle to claim once registered.
    pub handle: Option<String>,
    /// Cached handles (shared with the service).
    pub handles: Arc<Mutex<HashMap<AccountId, Option<String>>>>,
    /// The commit order read ahead for the actor (`shell::order_cache`).
    pub order: Arc<Mutex<OrderCache>>,
}

impl LedgerWorker {
    /// Runs until the job queue closes.
    pub fn run(self, genesis: Genesis, jobs: Receiver<LedgerJob>) {
        let Ok(client) = self.shared.ledger_client(&genesis) else {
            tracing::error!("ledger client: bad genesis");
            return;
        };
        let mut client = client.with_timeout(Duration::from_secs(3));
        let mut last_register = None::<Instant>;
        let mut refusal_logged = false;
        let mut follower: Option<Follower> = None;
        let mut last_full = Instant::now();
        let mut last_stores: Option<(Instant, StoreKeys)> = None;
        loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                return;
            }
            if !self.shared.registered.load(Ordering::Acquire)
                && last_register.is_none_or(|t| t.elapsed() > Duration::from_secs(2))
            {
                last_register = Some(Instant::now());
                match self.register(&mut client) {
                    Ok(()) => {
                        self.shared.registered.store(true, Ordering::Release);
                        let _ = self.ops.blocking_send(Job::Registered);
                    }
                    // A refusal (e.g. an unfunded account on a network without the dev
                    // faucet) will not go away by itself: say so once, loudly.
                    Err(e @ NodeError::Conflict(_)) if !refusal_logged => {
                        refusal_logged = true;
                        tracing::warn!("not registered on the ledger: {e}");
                    }
                    Err(e) => tracing::debug!("not registered yet: {e}"),
                }
            }
            if let Ok(s) = client.status() {
                self.shared.ledger_height.store(s.height, Ordering::Relaxed);
                self.follow(&mut client, &mut follower, s.height, &mut last_full);
                self.refresh_stores(&mut client, &mut last_stores);
            }
            match jobs.recv_timeout(Duration::from_millis(self.tick_ms.max(10))) {
                Ok(job) => self.run_job(&mut client, job),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Reads new blocks and tells the actor which conversation topics got handshakes (one
    /// block read per height, not one handshake query per conversation). A follower error, or
    /// the period, makes every conversation re-read its order instead.
    fn follow(
        &self,
        client: &mut LedgerClient,
        follower: &mut Option<Follower>,
        height: u64,
        last_full: &mut Instant,
    ) {
        let full_due = last_full.elapsed() >= Duration::from_millis(FULL_RESYNC_MS);
        let Some(f) = follower.as_mut() else {
            *follower = Some(Follower::new(height + 1));
            *last_full = Instant::now();
            let _ = self.ops.blocking_send(Job::Ledger { height });
            return;
        };
        if full_due {
            *last_full = Instant::now();
            let all = self.order.lock().map(|c| c.all()).unwrap_or_default();
            read_ahead(client, &self.order, all);
            let _ = self.ops.blocking_send(Job::Ledger { height });
        }
        match f.poll(client, BLOCKS_PER_POLL_MAX) {
            Ok(blocks) => {
                let mut topics = std::collections::BTreeSet::new();
                for b in &blocks {
                    for raw in &b.txs {
                        if let Ok(TopicTx { body: TopicBody::Handshake { topic, .. }, .. }) =
                            TopicTx::decode(raw)
                        {
                            topics.insert(topic);
                        }
                    }
                }
                if !topics.is_empty() {
                    let at: Vec<(Topic, u64)> = self.order.lock().map_or_else(
                        |_| Vec::new(),
                        |c| topics.iter().filter_map(|t| Some((*t, c.read_from(t)?))).collect(),
                    );
                    read_ahead(client, &self.order, at);
                    let _ = self.ops.blocking_send(Job::Handshakes(topics.into_iter().collect()));
                }
            }
            Err(e) => {
                tracing::debug!("block follower: {e}; every conversation re-reads its order");
                *follower = None;
            }
        }
    }

    /// Every `STORES_REFRESH_MS`, reads the registered store set with a proof and hands it to
    /// the mesh when it changed (bounded by the ledger's `STORES_MAX`).
    fn refresh_stores(&self, client: &mut LedgerClient, last: &mut Option<(Instant, StoreKeys)>) {
        if last.as_ref().is_some_and(|(t, _)| t.elapsed() < Duration::from_millis(STORES_REFRESH_MS)) {
            return;
        }
        match client.stores() {
            Ok(set) => {
                let stores: Vec<([u8; 32], [u8; 32])> =
                    set.entries.iter().map(|e| (e.node_key, e.salt)).collect();
                let changed = last.as_ref().is_none_or(|(_, prev)| *prev != stores);
                if changed {
                    let _ = self.ops.blocking_send(Job::Stores(stores.clone()));
                }
                *last = Some((Instant::now(), stores));
            }
            Err(e) => {
                tracing::debug!("registered store nodes not read: {e}");
                let prev = last.take().map(|(_, s)| s).unwrap_or_default();
                // retry at the next period, keeping what the mesh has
                *last = Some((Instant::now(), prev));
            }
        }
    }

    fn run_job(&self, client: &mut LedgerClient, job: LedgerJob) {
        match job {
            LedgerJob::ReadAhead(topic) => {
                let at = self.order.lock().ok().and_then(|c| c.read_from(&topic));
                read_ahead(client, &self.order, at.map(|from| (topic, from)).into_iter().collect());
                let _ = self.ops.blocking_send(Job::Handshakes(vec![topic]));
            }
            LedgerJob::Anchor { conv, head, count, deadline_ms, authority } => {
                let r = anchor(client, conv.topic(), head, count, &authority, deadline_ms);
                if let Err(e) = &r {
                    tracing::debug!("anchor not recorded: {e}");
                }
                let _ = self.ops.blocking_send(Job::AnchorDone { conv, count, ok: r.is_ok() });
            }
            LedgerJob::KeyPackages { envelope, record } => {
                let k = &self.shared.identity;
                let body = TxBody::PublishKeyPackages { batch_hash: record.batch_hash, count: record.count };
                let timeout = Duration::from_millis(KEY_PACKAGES_RECORD_MS);
                match submit_tx(client, k.account, &k.device_key, body, timeout) {
                    Ok(_) => {
                        let _ = self.ops.blocking_send(Job::KeyPackagesRecorded(envelope));
                    }
                    Err(e) => tracing::warn!(
                        "key packages not recorded on the ledger ({e}); they are published again at the next refresh"
                    ),
                }
            }
            LedgerJob::Handles(accounts) => {
                for a in accounts {
                    let h = client.account(&a).ok().flatten().and_then(|acc| acc.handle);
                    if let Ok(mut m) = self.handles.lock() {
                        if m.len() >= HANDLES_MAX {
                            m.clear();
                        }
                        m.insert(a, h);
                    }
                }
            }
        }
    }

    /// Registers the account and this device on the ledger, and claims the handle.
    fn register(&self, client: &mut LedgerClient) -> Result<(), NodeError> {
        let k = &self.shared.identity;
        let timeout = Duration::from_secs(30);
        // A device without the account key was registered by the device that holds it
        // (`cairn device add`); it can only check that it was.
        let no_key = || {
            NodeError::Conflict(format!(
                "device {} is not registered on the ledger and holds no account key: add it with `cairn device add` on the device that holds the account key",
                k.device.to_text()
            ))
        };
        let account = match read_retry(|| client.account(&k.account)).map_err(unavailable)? {
            Some(a) => a,
            None => {
                let Some(account_key) = k.account_key.as_ref() else { return Err(no_key()) };
                tracing::info!("registering account {} on the ledger", k.account.to_text());
                submit_tx(client, k.account, account_key, TxBody::RegisterAccount, timeout)?;
                client
                    .account(&k.account)
                    .map_err(unavailable)?
                    .ok_or_else(|| NodeError::Ledger("account not visible after registration".into()))?
            }
        };
        self.shared.set_handle(account.handle.clone());
        if account.devices.iter().any(|d| d.device == k.device && d.revoked) {
            return Err(NodeError::Conflict(
                "this device was revoked on the ledger: it can no longer send; create a new device".into(),
            ));
        }
        if !account.active_devices().contains(&k.device) {
            let Some(account_key) = k.account_key.as_ref() else { return Err(no_key()) };
            tracing::info!("registering device {} on the ledger", k.device.to_text());
            let body = TxBody::add_device(&client.chain(), k.cert, &k.device_key);
            submit_tx(client, k.account, account_key, body, timeout)?;
        }
        if account.handle.is_none()
            && let Some(name) = self.handle.clone()
            && let Some(account_key) = k.account_key.as_ref()
        {
            tracing::info!("claiming @{name}");
            submit_tx(client, k.account, account_key, TxBody::ClaimHandle { name: name.clone() }, timeout)?;
            self.shared.set_handle(Some(name));
        }
        Ok(())
    }
}
