//! Serving as a store node: answers to `/cairn/store/1` requests. Store requests are checked
//! here and committed by the mailbox writer (answered once durable); page and id requests are
//! read from the mailbox and cut to the response frame limit.

use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Topic};
use cairn_store::Store;
use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;
use tracing::debug;

use super::actor::Node;
use super::now_ms;
use super::pow_load::{LOAD_WINDOW_MS, LoadMeter, required_base_bits};
use super::writer::{MailboxJob, NotQueued};
use crate::wire::{EraseOutcome, RESPONSE_BYTES_MAX, Request, Response, StoreAck, StoreOutcome};

/// Keys the quota sources of relayed pushes (`StoreRelayed`) apart from every peer's own.
///
/// Every relayed push, whichever hop pushes it, is charged to the store's relay pool: one of
/// `ServeLimits::relay_pool_shares` sources (1 by default), picked by the push's first
/// envelope id, each holding one source's share (`Retention::source_bytes_max`). Why a pool and not a share
/// per pushing hop: a stem hop pushes envelopes it cannot attribute (it knows only the peer
/// before it, and the store knows only the hop), so a share per hop let a flooder hold one
/// more share per honest hop that fluffed for it. With the pool, what a flooder holds at a
/// store is its own share (direct pushes, keyed by its peer id) plus at most the pool,
/// however many honest hops it routes through. The cost: once the pool is full, relayed
/// pushes are refused `Full`, the hop's answer carries no receipt, and the originator falls
/// back to the direct path (gossip and a push from itself, charged to its own share): an
/// honest sender's mail is still stored, without the stem's cover for that message.
const RELAY_POOL_KEY: &[u8; 32] = b"cairn/store-source/stem-relay/02";
/// Bytes reserved for a response's framing and header when filling it with envelopes.
const RESPONSE_OVERHEAD_BYTES: usize = 64;

impl Node {
    pub(super) fn on_store_request(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    ) {
        let limits = self.config.admission.limits;
        let Some(mailbox) = self.mailbox.clone() else {
            self.respond(channel, Response::Error("not a store node".into()));
            return;
        };
        let bytes = request.len();
        let now = now_ms();
        let resp = match Request::decode(&request, &limits) {
            Err(e) => {
                debug!(%peer, "bad store request: {e}");
                Response::Error(format!("bad request: {e}"))
            }
            Ok(Request::Store(_) | Request::StoreRelayed(_)) if !self.store_rate.allow(&peer, now) => {
                rate_limited(&mut self.counters)
            }
            Ok(Request::StoreMany(ref envs) | Request::StoreRelayedMany(ref envs))
                if !self.store_rate.allow_n(&peer, envs.len() as u32, now) =>
            {
                rate_limited(&mut self.counters)
            }
            Ok(Request::Page { .. } | Request::PageIds { .. } | Request::Ids(_))
                if !self.read_rate.allow(&peer, now) =>
            {
                rate_limited(&mut self.counters)
            }
            Ok(Request::Erase { .. }) if !self.store_rate.allow(&peer, now) => {
                rate_limited(&mut self.counters)
            }
            Ok(Request::Erase { id, secret }) => erase(&mailbox, id, &secret),
            Ok(Request::Store(env)) => return self.store_envelopes(peer, vec![env], bytes, channel, false),
            Ok(Request::StoreMany(envs)) => return self.store_envelopes(peer, envs, bytes, channel, false),
            Ok(Request::StoreRelayed(env)) => {
                return self.store_envelopes(peer, vec![env], bytes, channel, true);
            }
            Ok(Request::StoreRelayedMany(envs)) => {
                return self.store_envelopes(peer, envs, bytes, channel, true);
            }
            Ok(Request::Page { topic, from, limit }) => page(&mailbox, &topic, from, limit),
            Ok(Request::PageIds { topic, from, limit }) => page_ids(&mailbox, &topic, from, limit),
            Ok(Request::Ids(ids)) => by_ids(&mailbox, ids),
        };
        self.respond(channel, resp);
    }

    fn respond(&mut self, channel: ResponseChannel<Vec<u8>>, resp: Response) {
        let _ = self.swarm.behaviour_mut().store.send_response(channel, resp.encode());
    }

    /// Checks the envelopes offered for storage and queues them for the mailbox writer, which
    /// answers once they are committed; answers at once when every one is refused or the
    /// queue is full (in requests or bytes). `relayed`: pushed by a stem hop for someone else,
    /// charged to the store's one relay pool ([`RELAY_POOL_KEY`]) rather than to the peer's
    /// own mail.
    fn store_envelopes(
        &mut self,
        peer: PeerId,
        envs: Vec<Envelope>,
        bytes: usize,
        channel: ResponseChannel<Vec<u8>>,
        relayed: bool,
    ) {
        let now = now_ms();
        let base_bits = self.load_base_bits(now);
        let a = &self.config.admission;
        let loaded = Difficulty { base_bits };
        let items: Vec<Result<Envelope, (Id, StoreOutcome)>> = envs
            .into_iter()
            .map(|env| {
                let h = &env.header;
                let bad = env.payload.is_none()
                    || !pow::check(h, a.difficulty)
                    || h.timestamp_ms > now + a.future_skew_ms_max
                    || h.ttl_secs > a.ttl_secs_max;
                if bad {
                    Err((env.id(), StoreOutcome::Refused))
                } else if base_bits > a.difficulty.base_bits && !pow::check(h, loaded) {
                    let base_bits = u8::try_from(base_bits).unwrap_or(u8::MAX);
                    Err((env.id(), StoreOutcome::NeedsWork { base_bits }))
                } else {
                    Ok(env)
                }
            })
            .collect();
        let accepted = items.iter().filter(|i| i.is_ok()).count() as u64;
        self.load.meter.accepted(accepted, now);
        let source = match relayed {
            false => *blake3::hash(&peer.to_bytes()).as_bytes(),
            true => relay_pool_source(items.first(), self.config.serve.relay_pool_shares),
        };
        let job = MailboxJob { channel, items, bytes, source };
        if job.items.iter().all(Result::is_err) {
            let acks = job
                .items
                .iter()
                .filter_map(|i| i.as_ref().err())
                .map(|(id, outcome)| StoreAck { id: *id, outcome: *outcome, receipt: None })
                .collect();
            return self.respond(job.channel, Response::Stored(acks));
        }
        let Some(queue) = &self.mailbox_jobs else {
            return self.respond(job.channel, Response::Error("store is shutting down".into()));
        };
        match queue.try_push(job) {
            Ok(()) => {}
            Err(NotQueued::Busy(j)) => {
                self.counters.requests_shed += 1;
                self.respond(j.channel, Response::Error("store node busy; retry later".into()));
            }
            Err(NotQueued::Closed(j)) => {
                self.respond(j.channel, Response::Error("store is shutting down".into()))
            }
        }
    }
}

/// How often a store node reads its fill level for the load price, ms.
const FILL_REFRESH_MS: u64 = 1_000;

/// A store node's load: the accept meter and its last fill reading.
#[derive(Default)]
pub(super) struct Load {
    pub(super) meter: LoadMeter,
    fill_permille: u32,
    fill_read_ms: u64,
}

impl Node {
    /// The base bits asked of envelopes now: the admission floor raised by the accept rate
    /// and the fill level ([`required_base_bits`]).
    fn load_base_bits(&mut self, now: u64) -> u32 {
        if now >= self.load.fill_read_ms + FILL_REFRESH_MS {
            self.load.fill_read_ms = now;
            let max = self.config.retention.total_bytes_max.max(1);
            if let Some(stats) = self.mailbox.as_ref().and_then(|m| m.stats().ok()) {
                let permille = stats.bytes.saturating_mul(1000) / max;
                self.load.fill_permille = u32::try_from(permille).unwrap_or(u32::MAX);
            }
        }
        let target = u64::from(self.config.serve.load_envelopes_per_sec) * LOAD_WINDOW_MS / 1000;
        let per_window = self.load.meter.per_window(now);
        required_base_bits(
            self.config.admission.difficulty.base_bits,
            per_window,
            target,
            self.load.fill_permille,
        )
    }
}

/// The relay pool source a push relayed by a stem hop is charged to: one of `shares`
/// (clamped to 1..=`RELAY_POOL_SHARES_MAX`), by the id of its first envelope (a batched push,
/// `StoreRelayedMany`, is charged to one share as a whole; the pool's bound is the same).
fn relay_pool_source(item: Option<&Result<Envelope, (Id, StoreOutcome)>>, shares: u32) -> [u8; 32] {
    let shares = u64::from(shares.clamp(1, super::config::RELAY_POOL_SHARES_MAX));
    let id = match item {
        Some(Ok(env)) => env.id(),
        Some(Err((id, _))) => *id,
        None => Id([0; 32]),
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.0[..8]);
    let pool = u64::from_le_bytes(first) % shares;
    *blake3::keyed_hash(RELAY_POOL_KEY, &pool.to_le_bytes()).as_bytes()
}

fn rate_limited(counters: &mut super::actor::Counters) -> Response {
    counters.requests_shed += 1;
    Response::Error("rate limited: too many requests from this peer; retry with back-off".into())
}

/// Drops the payload of `id` if `secret` opens its header's erase lock (a wrong secret costs
/// one read; only a right one writes, once per envelope).
fn erase(mailbox: &Store, id: Id, secret: &[u8; 32]) -> Response {
    let outcome = match mailbox.get(&id) {
        Err(e) => return Response::Error(e.to_string()),
        Ok(None) => EraseOutcome::Unknown,
        Ok(Some(env)) if !env.header.erase_lock_opens(secret) => EraseOutcome::Refused,
        Ok(Some(env)) if env.payload.is_none() => EraseOutcome::Erased,
        Ok(Some(_)) => match mailbox.erase_payload(&id) {
            Ok(true) => EraseOutcome::Erased,
            Ok(false) => EraseOutcome::Unknown,
            Err(e) => return Response::Error(e.to_string()),
        },
    };
    Response::Erased { id, outcome }
}

/// A page of `topic` from `from`, cut to the response limit (the cursor resumes after the cut).
fn page(mailbox: &Store, topic: &Topic, from: u64, limit: u32) -> Response {
    // The store stops reading at the byte budget (16 bytes of framing per entry).
    match mailbox.page_within(topic, from, limit as usize, RESPONSE_BYTES_MAX - RESPONSE_OVERHEAD_BYTES, 16) {
        Ok(page) => Response::Page { entries: page.entries, next: page.next },
        Err(e) => Response::Error(e.to_string()),
    }
}

/// A page of `topic`'s ids from `from` (at most `limit`, ≤ `PAGE_IDS_MAX` by the decoder):
/// read from the topic log alone, no envelope is read or decoded.
fn page_ids(mailbox: &Store, topic: &Topic, from: u64, limit: u32) -> Response {
    match mailbox.ids_page(topic, from, limit as usize) {
        Ok((entries, next)) => Response::PageIds { entries, next },
        Err(e) => Response::Error(e.to_string()),
    }
}

/// The envelopes found among `ids` (at most `IDS_PER_REQUEST_MAX`, checked by the decoder),
/// as many as fit the response limit.
fn by_ids(mailbox: &Store, ids: Vec<Id>) -> Response {
    let mut found = Vec::new();
    let mut bytes = RESPONSE_OVERHEAD_BYTES;
    for id in ids {
        if let Ok(Some(e)) = mailbox.get(&id) {
            bytes += 8 + e.encode().len();
            if bytes > RESPONSE_BYTES_MAX {
                break;
            }
            found.push(e);
        }
    }
    Response::Envelopes(found)
}
