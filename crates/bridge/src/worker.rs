//! The bridge's three relay loops (blocking threads) and the Cairn stream wake-up task.
//!
//! - inbound: the inbound queue (Matrix events) → the Cairn conversation, in order, each once;
//! - cairn: new messages of bridged conversations (after a persisted cursor) → the outbound
//!   queue, with the cursor moved in the same transaction;
//! - outbound: the outbound queue → the homeserver, in order, retrying 429 after the time it
//!   asks and other failures with backoff (a homeserver restart only delays delivery).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_node::client::{Client, ClientError};
use cairn_node::model::TailQuery;
use ruma::events::room::message::RoomMessageEventContent;
use ruma::{OwnedRoomId, OwnedUserId};

use crate::db::{Db, OutJob};
use crate::mapping::{self, FromCairn, Inbound, Names};
use crate::matrix::{CallError, Matrix};
use crate::retry::Backoff;

/// Cairn messages read per conversation per poll.
const BATCH: usize = 200;
/// Longest idle wait of a loop before it looks again by itself.
const IDLE: Duration = Duration::from_secs(1);

/// What the loops share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) db: Arc<Db>,
    pub(crate) matrix: Matrix,
    pub(crate) names: Names,
    pub(crate) home: PathBuf,
    pub(crate) node: Mutex<Option<Client>>,
    pub(crate) account: String,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) out_wake: SyncSender<()>,
}

impl Ctx {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `d`, waking early when the bridge stops.
    fn sleep(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        while !self.stopped() {
            let now = std::time::Instant::now();
            if now >= end {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// Calls the node, finding it again (a restarted node has a new port) when it is gone.
    pub(crate) fn node<T>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let client = {
            let mut guard = self.node.lock().map_err(|_| ClientError::Io("lock poisoned".into()))?;
            if guard.is_none() {
                *guard = Some(Client::for_home(&self.home)?);
            }
            guard.clone()
        };
        let Some(client) = client else { return Err(ClientError::Io("no node".into())) };
        let r = f(&client);
        if matches!(r, Err(ClientError::NoNode { .. }) | Err(ClientError::Transport { .. }))
            && let Ok(mut g) = self.node.lock()
        {
            *g = None;
        }
        r
    }
}

/// A node error worth retrying (node down, restarting, busy) rather than dropping the event.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, .. } => *status >= 500 || *status == 409 || *status == 429,
        _ => true,
    }
}

// ---- Matrix → Cairn -----------------------------------------------------------------------

pub(crate) fn inbound_loop(ctx: &Ctx, wake: &Receiver<()>) {
    let mut backoff = Backoff::default();
    while !ctx.stopped() {
        let next = match ctx.db.next_in() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reading the inbound queue: {e}");
                ctx.sleep(IDLE);
                continue;
            }
        };
        let Some((key, raw)) = next else {
            let _ = wake.recv_timeout(IDLE);
            continue;
        };
        match relay_in(ctx, key, &raw) {
            Ok(()) => {
                backoff.reset();
                if let Err(e) = ctx.db.done_in(key) {
                    tracing::error!("inbound event {key}: {e}");
                    ctx.sleep(IDLE);
                }
            }
            Err(e) => {
                let w = backoff.next_wait();
                tracing::warn!("inbound event {key}: {e}; retrying in {w:?}");
                ctx.sleep(w);
            }
        }
    }
}

/// Relays one queued event. `Err` means: try the same event again later.
fn relay_in(ctx: &Ctx, key: u64, raw: &str) -> Result<(), String> {
    let ev = match mapping::parse_event(raw) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!("inbound event {key} dropped: {e}");
            return Ok(());
        }
    };
    let Some(conv) = ctx.db.conv_of_room(ev.room_id.as_str()).map_err(|e| e.to_string())? else {
        tracing::debug!("event {} in a room that is no portal: ignored", ev.event_id);
        return Ok(());
    };
    match mapping::classify(&ev, &ctx.names) {
        Inbound::Ignore(why) => {
            tracing::debug!("event {} ({}) not relayed: {why}", ev.event_id, ev.kind);
            Ok(())
        }
        Inbound::EncryptionEnabled => {
            let notice = OutJob::Notice { conv: conv.clone(), text: mapping::ENCRYPTION_REFUSED.to_string() };
            // Queued before the Cairn side is told, so a retry cannot queue it twice: the
            // Cairn send below is the only step retried.
            if ctx.db.mark(&format!("encrypted|{conv}")).map_err(|e| e.to_string())?.is_none() {
                ctx.db
                    .queue_out(None, &[notice], Some(&format!("encrypted|{conv}")))
                    .map_err(|e| e.to_string())?;
                let _ = ctx.out_wake.try_send(());
            }
            send_to_cairn(ctx, key, &conv, mapping::ENCRYPTION_REFUSED, ev.event_id.as_str(), false)
        }
        Inbound::Text(t) => send_to_cairn(ctx, key, &conv, &t, ev.event_id.as_str(), true),
        Inbound::Redact { redacts, text } => {
            match ctx.db.related(&format!("m:{redacts}")).map_err(|e| e.to_string())? {
                // The bridge account wrote the Cairn copy, so it may erase it.
                Some(envelope) => match ctx.node(|c| c.erase(&conv, &envelope)) {
                    Ok(_) => Ok(()),
                    Err(e) if retryable_erase(&e) => Err(e.to_string()),
                    Err(e) => {
                        tracing::info!("erasing the Cairn copy of {redacts}: {e} (nothing to do)");
                        Ok(())
                    }
                },
                None => send_to_cairn(ctx, key, &conv, &text, ev.event_id.as_str(), false),
            }
        }
    }
}

/// An erase failure worth retrying (the node is down or busy); a refusal (already erased,
/// unknown message) is final.
fn retryable_erase(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, .. } => *status >= 500 || *status == 429,
        _ => true,
    }
}

/// Sends `text` into `conv` once for Matrix event `event`: the send carries an idempotency key
/// derived from the event id, which the node records in the message's own transaction, so a
/// retry after a crash at any point (before the send, after it, before the queue entry was
/// dropped) returns the copy sent the first time instead of sending again. With `relate`, the
/// Cairn copy is remembered for a later redaction of the event.
fn send_to_cairn(
    ctx: &Ctx,
    key: u64,
    conv: &str,
    text: &str,
    event: &str,
    relate: bool,
) -> Result<(), String> {
    let idem = idempotency_key(event);
    match ctx.node(|c| c.send_once(conv, text, &idem)) {
        Ok(sent) if relate => ctx.db.relate(&format!("m:{event}"), &sent.id).map_err(|e| e.to_string()),
        Ok(_) => Ok(()),
        Err(e) if retryable(&e) => Err(e.to_string()),
        Err(e) => {
            tracing::warn!("inbound event {key} refused by the node, dropped: {e}");
            Ok(())
        }
    }
}

/// The idempotency key of the Cairn copy of a Matrix event: fixed length and visible ASCII
/// whatever the event id holds.
pub(crate) fn idempotency_key(event: &str) -> String {
    format!("matrix-event-{}", blake3::hash(event.as_bytes()).to_hex())
}

// ---- Cairn → outbound queue ---------------------------------------------------------------

pub(crate) fn cairn_loop(ctx: &Ctx, wake: &Receiver<()>) {
    let mut backoff = Backoff::default();
    while !ctx.stopped() {
        match poll_cairn(ctx) {
            Ok(more) => {
                backoff.reset();
                if !more {
                    let _ = wake.recv_timeout(IDLE);
                }
            }
            Err(e) => {
                let w = backoff.next_wait();
                tracing::warn!("reading Cairn: {e}; again in {w:?}");
                ctx.sleep(w);
            }
        }
    }
}

/// One pass over the bridged conversations. `Ok(true)`: more is waiting.
fn poll_cairn(ctx: &Ctx) -> Result<bool, String> {
    let convs = ctx.node(Client::conversations).map_err(|e| e.to_string())?;
    let mut more = false;
    for c in convs.iter().filter(|c| c.active) {
        let requested = format!("portal|{}", c.id);
        if ctx.db.mark(&requested).map_err(|e| e.to_string())?.is_none() {
            ctx.db
                .queue_out(None, &[OutJob::Portal { conv: c.id.clone() }], Some(&requested))
                .map_err(|e| e.to_string())?;
            let _ = ctx.out_wake.try_send(());
        }
        // Membership: puppets of new members join, those of departed members leave.
        let members_key = format!("members|{}", c.id);
        let old: Vec<mapping::Member> = ctx
            .db
            .mark(&members_key)
            .map_err(|e| e.to_string())?
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default();
        let now: Vec<mapping::Member> =
            c.members.iter().map(|m| (m.account.clone(), m.handle.clone())).collect();
        let (joined, left) = mapping::member_changes(&old, &now, &ctx.account);
        let mut jobs: Vec<OutJob> = joined
            .into_iter()
            .map(|(account, handle)| OutJob::PuppetJoin { conv: c.id.clone(), account, handle })
            .chain(left.into_iter().map(|(account, handle)| OutJob::PuppetLeave {
                conv: c.id.clone(),
                account,
                handle,
            }))
            .collect();
        // Every poll, new messages or not. Either order is safe: an erased message is no longer
        // listed, and the redaction of a message never relayed is a no-op.
        more |= poll_erasures(ctx, &c.id)?;
        let after = ctx.db.cursor(&c.id).map_err(|e| e.to_string())?;
        let q = TailQuery { after: Some(after), limit: Some(BATCH), wait_ms: None };
        let msgs = ctx.node(|n| n.messages(&c.id, &q)).map_err(|e| e.to_string())?;
        if msgs.is_empty() && jobs.is_empty() {
            continue;
        }
        let last = msgs.last().map_or(after, |m| m.seq);
        jobs.extend(msgs.iter().filter_map(|m| match mapping::from_cairn(m, &ctx.account, &ctx.names) {
            FromCairn::Text(text) => Some(OutJob::Text {
                conv: c.id.clone(),
                account: m.sender.clone(),
                handle: m.handle.clone(),
                envelope: m.id.clone(),
                text,
            }),
            FromCairn::Invite(user) => Some(OutJob::Invite { conv: c.id.clone(), user: user.to_string() }),
            FromCairn::Skip(why) => {
                tracing::debug!("Cairn message {} not relayed: {why}", m.id);
                None
            }
        }));
        let members = serde_json::to_string(&now).map_err(|e| e.to_string())?;
        if ctx
            .db
            .queue_out_marked(Some((&c.id, last)), &jobs, Some((&members_key, &members)))
            .map_err(|e| e.to_string())?
        {
            let _ = ctx.out_wake.try_send(());
            more |= msgs.len() == BATCH;
        } else {
            tracing::warn!("outbound queue full: reading Cairn pauses until it drains");
            ctx.sleep(IDLE);
        }
    }
    Ok(more)
}

/// Queues a Matrix redaction for each erasure the node applied in `conv` after the bridge's
/// erasure cursor (moved in the same transaction), including those made while the bridge was
/// down. Returns whether a full batch was read (more may wait).
fn poll_erasures(ctx: &Ctx, conv: &str) -> Result<bool, String> {
    let cursor = format!("erasures|{conv}");
    let after = ctx.db.cursor(&cursor).map_err(|e| e.to_string())?;
    let erased = ctx.node(|n| n.erasures(conv, after, BATCH)).map_err(|e| e.to_string())?;
    let Some(last) = erased.last().map(|e| e.n) else { return Ok(false) };
    let jobs: Vec<OutJob> =
        erased.iter().map(|e| OutJob::Redact { conv: conv.to_string(), envelope: e.id.clone() }).collect();
    if ctx.db.queue_out(Some((&cursor, last)), &jobs, None).map_err(|e| e.to_string())? {
        let _ = ctx.out_wake.try_send(());
        Ok(erased.len() == BATCH)
    } else {
        tracing::warn!("outbound queue full: erasures wait until it drains");
        Ok(false)
    }
}

// ---- outbound queue → Matrix --------------------------------------------------------------

pub(crate) fn outbound_loop(ctx: &Ctx, wake: &Receiver<()>) {
    let mut backoff = Backoff::default();
    while !ctx.stopped() {
        let next = match ctx.db.next_out() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reading the outbound queue: {e}");
                ctx.sleep(IDLE);
                continue;
            }
        };
        let Some((key, job)) = next else {
            let _ = wake.recv_timeout(IDLE);
            continue;
        };
        tracing::debug!("outbound job {key}: {job:?}");
        let result = match &job {
            Some(job) => run_job(ctx, key, job),
            None => Err(CallError::Fatal { errcode: "BRIDGE_JOB".into(), error: "undecodable job".into() }),
        };
        let done = match result {
            Ok(()) => {
                backoff.reset();
                true
            }
            Err(CallError::RateLimited(d)) => {
                tracing::info!("rate limited by the homeserver: waiting {d:?}");
                ctx.sleep(d);
                false
            }
            Err(CallError::Transient(e)) => {
                let w = backoff.next_wait();
                tracing::warn!("outbound job {key}: {e}; retrying in {w:?}");
                ctx.sleep(w);
                false
            }
            Err(e @ CallError::Fatal { .. }) => {
                tracing::warn!("outbound job {key} dropped: {e}");
                true
            }
        };
        if done && let Err(e) = ctx.db.done_out(key) {
            tracing::error!("outbound job {key}: {e}");
            ctx.sleep(IDLE);
        }
    }
}

fn transient(e: impl std::fmt::Display) -> CallError {
    CallError::Transient(e.to_string())
}

fn portal_room(ctx: &Ctx, conv: &str) -> Result<OwnedRoomId, CallError> {
    let Some(room) = ctx.db.portal(conv).map_err(transient)? else {
        return Err(CallError::Fatal {
            errcode: "BRIDGE_NO_PORTAL".into(),
            error: format!("no portal for {conv}"),
        });
    };
    OwnedRoomId::try_from(room)
        .map_err(|e| CallError::Fatal { errcode: "BRIDGE_ROOM".into(), error: e.to_string() })
}

fn run_job(ctx: &Ctx, key: u64, job: &OutJob) -> Result<(), CallError> {
    match job {
        OutJob::Portal { conv } => {
            if ctx.db.portal(conv).map_err(transient)?.is_some() {
                return Ok(());
            }
            // Creation is idempotent (an existing alias names the room), so a crash before the
            // portal is recorded repeats it harmlessly. The portal is recorded before anything
            // is posted, so no event of the new room is taken for a stranger's.
            let alias = ctx.names.alias(conv);
            let notice = mapping::portal_notice(conv);
            let name = format!("Cairn {}", &conv[..conv.len().min(8)]);
            let room = ctx.matrix.create_portal(&Names::alias_localpart(conv), &alias, &name, &notice)?;
            let notices = [
                OutJob::Notice { conv: conv.clone(), text: notice },
                OutJob::CairnNotice { conv: conv.clone(), text: mapping::cairn_notice(&alias) },
            ];
            ctx.db.portal_created(conv, room.as_str(), &notices).map_err(transient)?;
            tracing::info!("portal {room} ({alias}) bridges conversation {conv}");
            Ok(())
        }
        // Outbound keys never repeat: the job's key names the notice, sent once across retries.
        OutJob::CairnNotice { conv, text } => {
            match ctx.node(|c| c.send_once(conv, text, &format!("bridge-out-{key}"))) {
                Ok(_) => Ok(()),
                Err(e) if retryable(&e) => Err(transient(e)),
                Err(e) => Err(CallError::Fatal { errcode: "CAIRN_REFUSED".into(), error: e.to_string() }),
            }
        }
        OutJob::Text { conv, account, handle, envelope, text } => {
            let room = portal_room(ctx, conv)?;
            let user = puppet_id(ctx, account, handle.as_deref())?;
            ensure_puppet(ctx, &room, &user)?;
            let content = RoomMessageEventContent::text_plain(text.clone());
            let event = ctx.matrix.send(&room, &format!("cairn{envelope}"), &content, Some(&user))?;
            ctx.db.relate(&format!("c:{envelope}"), &format!("{room}\t{event}\t{user}")).map_err(transient)
        }
        OutJob::Redact { conv, envelope } => {
            let Some(rel) = ctx.db.related(&format!("c:{envelope}")).map_err(transient)? else {
                tracing::debug!(
                    "erased Cairn message {envelope} ({conv}) was not relayed: nothing to redact"
                );
                return Ok(());
            };
            let bad = |e: String| CallError::Fatal { errcode: "BRIDGE_RELATION".into(), error: e };
            let mut parts = rel.split('\t');
            let (Some(room), Some(event), Some(user)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(format!("malformed relation {rel}")));
            };
            let room = OwnedRoomId::try_from(room).map_err(|e| bad(e.to_string()))?;
            let event = ruma::OwnedEventId::try_from(event).map_err(|e| bad(e.to_string()))?;
            let user = OwnedUserId::try_from(user).map_err(|e| bad(e.to_string()))?;
            ctx.matrix.redact(&room, &event, &format!("redact{key}"), &user)
        }
        OutJob::PuppetJoin { conv, account, handle } => {
            let room = portal_room(ctx, conv)?;
            ensure_puppet(ctx, &room, &puppet_id(ctx, account, handle.as_deref())?)
        }
        OutJob::PuppetLeave { conv, account, handle } => {
            let room = portal_room(ctx, conv)?;
            let user = puppet_id(ctx, account, handle.as_deref())?;
            ctx.matrix.leave(&room, &user)?;
            ctx.db.del_mark(&format!("puppet|{room}|{user}")).map_err(transient)
        }
        OutJob::Invite { conv, user } => {
            let room = portal_room(ctx, conv)?;
            let user = OwnedUserId::try_from(user.as_str())
                .map_err(|e| CallError::Fatal { errcode: "BRIDGE_USER".into(), error: e.to_string() })?;
            ctx.matrix.invite(&room, &user)
        }
        OutJob::Notice { conv, text } => {
            let room = portal_room(ctx, conv)?;
            let notice = RoomMessageEventContent::notice_plain(text.clone());
            ctx.matrix.send(&room, &format!("notice{key}"), &notice, None).map(|_| ())
        }
    }
}

/// The puppet of an account, chosen once and remembered: `@cairn_<handle>` when the handle is
/// known (from the message, else from the node's proven ledger read) and no other account has
/// that puppet already (a handle can change hands), else `@cairn_<account id>`.
fn puppet_id(ctx: &Ctx, account: &str, hint: Option<&str>) -> Result<OwnedUserId, CallError> {
    let fatal = |e: String| CallError::Fatal { errcode: "BRIDGE_PUPPET".into(), error: e };
    let key = format!("puppetof|{account}");
    if let Some(u) = ctx.db.mark(&key).map_err(transient)? {
        return OwnedUserId::try_from(u).map_err(|e| fatal(e.to_string()));
    }
    let handle = match hint {
        Some(h) => Some(h.to_string()),
        None => ctx.node(|c| c.account(account)).ok().filter(|a| a.proof_verified).and_then(|a| a.handle),
    };
    let mut user = ctx.names.puppet(account, handle.as_deref());
    let owner = ctx.db.mark(&format!("puppetuser|{user}")).map_err(transient)?;
    if owner.is_some_and(|o| o != account) {
        user = ctx.names.puppet(account, None);
    }
    let id = OwnedUserId::try_from(user.as_str()).map_err(|e| fatal(e.to_string()))?;
    // Registered and named before it is recorded (both idempotent), so a crash repeats them.
    ctx.matrix.register(id.localpart())?;
    let short: String = account.chars().take(16).collect();
    let display = match handle.as_deref() {
        Some(h) => format!("{} (Cairn)", h.trim_start_matches('@')),
        None => format!("{short}… (Cairn)"),
    };
    if let Err(e) = ctx.matrix.set_display_name(&id, &display) {
        tracing::debug!("display name of {id}: {e}");
    }
    ctx.db.set_marks(&[(&key, &user), (&format!("puppetuser|{user}"), account)]).map_err(transient)?;
    Ok(id)
}

/// Registers a puppet and joins it to a portal, once.
fn ensure_puppet(ctx: &Ctx, room: &OwnedRoomId, user: &OwnedUserId) -> Result<(), CallError> {
    let mark = format!("puppet|{room}|{user}");
    if ctx.db.mark(&mark).map_err(transient)?.is_some() {
        return Ok(());
    }
    ctx.matrix.register(user.localpart())?;
    ctx.matrix.join(room, user)?;
    ctx.db.set_mark(&mark, "").map_err(transient)
}

// ---- wake-ups from the node's event stream ------------------------------------------------

/// Follows the node's WebSocket stream: wakes the Cairn loop on every message, join or
/// erasure, so relaying does not wait for the next poll (what to relay is read from the node's
/// message list and erasure log after the bridge's cursors, so nothing depends on the stream).
/// Reconnects (finding the node again) when it drops.
pub(crate) async fn stream_wakeups(home: PathBuf, wake: SyncSender<()>, stop: Arc<AtomicBool>) {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    while !stop.load(Ordering::Relaxed) {
        let target = cairn_node::client::read_run_file(&home)
            .ok()
            .flatten()
            .zip(std::fs::read_to_string(home.join(cairn_node::client::TOKEN_FILE)).ok());
        if let Some((run, token)) = target {
            let url = format!("{}/v1/stream", run.api.replacen("http://", "ws://", 1));
            if let Ok(mut req) = url.into_client_request()
                && let Ok(v) = format!("Bearer {}", token.trim()).parse()
            {
                req.headers_mut().insert("authorization", v);
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await {
                    let _ = wake.try_send(());
                    while let Some(Ok(msg)) = ws.next().await {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Message::Text(t) = msg else { continue };
                        match serde_json::from_str::<cairn_node::model::StreamEvent>(t.as_str()) {
                            Ok(cairn_node::model::StreamEvent::Delivery { .. }) => {}
                            _ => {
                                let _ = wake.try_send(());
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
