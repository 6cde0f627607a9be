//! The stem phase in the node (issue 17 §5): `/cairn/stem/1` around [`crate::stem::Stem`].
//!
//! - **Originator.** An own envelope goes to ONE peer (this epoch's stem successor, chosen
//!   among connected peers that serve the protocol: store nodes never do),
//!   not to gossip and not to the store nodes: [`crate::sync::Input::SendHeld`] keeps the sync
//!   state machine from pushing it. The answer carries the store nodes' signed receipts, which
//!   are verified and fed as acknowledgements exactly like a direct push's. With no valid
//!   answer by `origin_wait_ms` the node falls back to today's path (gossip and direct push).
//!   A successor that answered busy or refused is not asked for `refused_backoff_ms`: own
//!   envelopes take the direct path at once meanwhile.
//! - **Hop.** A stem envelope passes the gossip admission (rate, size, proof of work, time
//!   window; [`crate::validate::Admission::check_stem`]), then [`crate::stem::Stem::relay`]
//!   says: forward to our successor (never back to the sender) and wait for its answer, or
//!   fluff: gossip it and push it to the topic's store nodes *from here*, then answer with
//!   their receipts. A downstream that fails, answers without a valid receipt, or is silent
//!   past this hop's fail-safe (`failsafe_ms` plus jitter) makes this hop fluff it itself.
//!
//! Bounds (all adversarial input is bounded): [`OWN_STEMMED_MAX`] own envelopes waiting
//! (beyond: direct path), [`RELAYS_MAX`] relayed envelopes waiting, [`RELAYS_PER_PEER_MAX`]
//! of them from one peer (beyond: answered busy at once, the sender then diffuses it itself), requests in flight at most the sum of both
//! (beyond: fluffed here), stem peers at most `connections_max` (connected ones only), and
//! the per-peer and per-epoch bounds of [`crate::stem::StemConfig`].

use std::collections::{HashMap, HashSet};

use cairn_proto::{Envelope, Id};
use libp2p::PeerId;
use libp2p::gossipsub::IdentTopic;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use tracing::debug;

use super::actor::{Node, Outbound};
use super::stem_batch::{BatchReplies, Reply};
use super::store_push::{batches, split_batches};
use super::{STEM_PROTOCOL, now_ms};
use crate::receipt::StoreReceipt;
use crate::shard::{shard_name, shard_of};
use crate::stem::{Stem, StemAction, StemConfig};
use crate::stem_wire::{
    STEM_BATCH_MAX, STEM_RECEIPTS_MAX, StemOutcome, StemResponse, decode_answers, decode_any, encode_answers,
    encode_batch, encode_request,
};
use crate::sync::Input;
use crate::validate::Verdict;
use crate::wire::{Request, Response, StoreOutcome};

/// Own envelopes in the stem awaiting their receipts, at most; beyond it a send takes the
/// direct path (gossip and store push from this node).
pub(super) const OWN_STEMMED_MAX: usize = 1_024;
/// Envelopes relayed for others and awaiting an answer, at most (any peer can send stem
/// requests; each holds its envelope, so at most 64 MiB of the largest ones); beyond it a new
/// one is answered busy at once and its sender diffuses it.
pub(super) const RELAYS_MAX: usize = 256;
/// Of those, from one peer, at most (so one peer cannot take the whole table and make every
/// other sender fall back to the direct path); beyond it: answered busy.
pub(super) const RELAYS_PER_PEER_MAX: usize = 32;

/// How long an originator waits for its stem's answer, ms: twice a hop's longest fail-safe,
/// so a hop that fluffs on its fail-safe answers before the originator gives up.
pub(super) fn origin_wait_ms(c: &StemConfig) -> u64 {
    2 * (c.failsafe_ms + c.failsafe_jitter_ms)
}

/// The libp2p timeout of one stem request: a backstop past every deadline kept here.
pub(super) fn request_timeout_ms(c: &StemConfig) -> u64 {
    origin_wait_ms(c) + 5_000
}

/// A uniform `u64` stream: BLAKE3 keyed by 32 bytes from the OS, in counter mode (successor
/// choice and fluff coins must not be predictable by peers).
struct Coins {
    key: [u8; 32],
    n: u64,
}

impl Coins {
    fn new() -> Self {
        Self { key: super::local_key(), n: 0 }
    }
    fn next(&mut self) -> u64 {
        self.n += 1;
        Self::first_u64(blake3::keyed_hash(&self.key, &self.n.to_le_bytes()))
    }

    /// The same uniform `u64` for every envelope from `from` in epoch `epoch` (and a fresh one
    /// in the next), unpredictable to peers: the relay decision (fluff or forward, and to
    /// whom) is made once per incoming link and epoch, as in Dandelion++, not per envelope.
    /// Per envelope, a sender's burst split at random between paths of different lengths and
    /// arrived out of order (every receiver then fetched the "missing" parents from the store
    /// nodes), and each envelope was a fresh sample of the paths for an observer.
    fn per_link(&self, from: &PeerId, epoch: u64) -> u64 {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"per-link relay decision");
        h.update(&epoch.to_le_bytes());
        h.update(&from.to_bytes());
        Self::first_u64(h.finalize())
    }

    fn first_u64(h: blake3::Hash) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(b)
    }
}

/// An own envelope in the stem.
struct Own {
    envelope: Envelope,
    written: bool,
    deadline_ms: u64,
    /// The stem successor it was sent to.
    to: PeerId,
}

enum RelayState {
    /// Forwarded to this peer; waiting for its answer.
    Waiting(OutboundRequestId, PeerId),
    /// Fluffed here; waiting for these store nodes' answers.
    Storing(Vec<PeerId>),
}

/// An envelope relayed for a peer, until it is answered.
struct Relay {
    from: PeerId,
    /// The store nodes the originator targets (as named in the request).
    targets: Vec<PeerId>,
    reply: Reply,
    envelope: Envelope,
    state: RelayState,
    failsafe_at_ms: u64,
    answer_by_ms: u64,
    receipts: Vec<(PeerId, StoreReceipt)>,
}

/// Figures for `status`.
#[derive(Default, Clone, Copy)]
pub(super) struct StemCounters {
    pub(super) relayed: u64,
    pub(super) fluffed: u64,
    pub(super) fallbacks: u64,
    pub(super) refused: u64,
    pub(super) backed_off: u64,
}

/// The node's stem state.
pub(super) struct StemHop {
    stem: Stem<PeerId>,
    /// Connected peers that speak `/cairn/stem/1`; at most `connections_max`.
    peers: HashSet<PeerId>,
    own: HashMap<Id, Own>,
    relays: HashMap<Id, Relay>,
    /// Stem requests in flight (the envelopes each carries), at most
    /// `OWN_STEMMED_MAX + RELAYS_MAX`.
    requests: HashMap<OutboundRequestId, Vec<Id>>,
    /// Own envelopes of this turn per (successor, store targets), sent batched at its end
    /// (`send_own_stems`); at most `OWN_STEMMED_MAX`.
    own_batches: HashMap<(PeerId, Vec<PeerId>), Vec<Envelope>>,
    /// Batches received, waiting for the answers of their envelopes.
    replies: BatchReplies,
    /// Stem successors that refused an own envelope, until when (ms) we do not ask them; at
    /// most one entry per stem peer (`connections_max`), expired ones dropped on insert.
    refused_by: HashMap<PeerId, u64>,
    coins: Coins,
    pub(super) counters: StemCounters,
}

impl StemHop {
    pub(super) fn new(config: StemConfig) -> Self {
        Self {
            stem: Stem::new(config),
            peers: HashSet::new(),
            own: HashMap::new(),
            relays: HashMap::new(),
            requests: HashMap::new(),
            own_batches: HashMap::new(),
            replies: BatchReplies::default(),
            refused_by: HashMap::new(),
            coins: Coins::new(),
            counters: StemCounters::default(),
        }
    }

    /// Connected peers that take stem envelopes.
    pub(super) fn peers_len(&self) -> usize {
        self.peers.len()
    }

    /// True if `peer` is the successor or has stem envelopes of ours or for us in flight
    /// (closing it would cost them a fail-safe).
    pub(super) fn uses(&self, peer: &PeerId) -> bool {
        self.stem.current_successor() == Some(peer)
            || self.own.values().any(|o| o.to == *peer)
            || self
                .relays
                .values()
                .any(|r| r.from == *peer || matches!(&r.state, RelayState::Waiting(_, p) if p == peer))
    }

    fn config(&self) -> StemConfig {
        *self.stem.config()
    }

    fn requests_full(&self) -> bool {
        self.requests.len() >= OWN_STEMMED_MAX + RELAYS_MAX
    }

    /// `to` refused an own envelope: ask it nothing for `refused_backoff_ms`.
    fn back_off(&mut self, to: PeerId, now: u64) {
        let until = now + self.config().refused_backoff_ms;
        if self.refused_by.len() >= self.peers.len().max(1) {
            self.refused_by.retain(|p, t| *t > now && self.peers.contains(p));
        }
        if self.refused_by.len() < self.peers.len().max(1) || self.refused_by.contains_key(&to) {
            self.refused_by.insert(to, until);
        }
    }
}

/// Receipts in `resp` that are for `id` and verify under their store's key, at most
/// [`STEM_RECEIPTS_MAX`].
fn valid_receipts(id: &Id, resp: Option<StemResponse>) -> Vec<(PeerId, StoreReceipt)> {
    let Some(resp) = resp.filter(|r| r.outcome == StemOutcome::Receipts) else { return Vec::new() };
    resp.receipts
        .into_iter()
        .filter(|(store, r)| r.id == *id && r.verify(store).is_ok())
        .take(STEM_RECEIPTS_MAX)
        .collect()
}

impl Node {
    /// Candidates for our stem successor: connected peers that serve the stem protocol (store
    /// nodes do not; see `behaviour.rs`), and are not known as store nodes.
    fn stem_candidates(&self) -> Vec<PeerId> {
        let Some(hop) = &self.stem else { return Vec::new() };
        let mut all: Vec<PeerId> =
            hop.peers.iter().filter(|p| !self.store_peers.contains_key(p)).copied().collect();
        all.sort();
        all
    }

    /// Identify told us what `peer` speaks.
    pub(super) fn stem_learned(&mut self, peer: PeerId, protocols: &[libp2p::StreamProtocol]) {
        let max = self.config.connections_max as usize;
        let connected = self.swarm.is_connected(&peer);
        if let Some(hop) = &mut self.stem
            && protocols.contains(&STEM_PROTOCOL)
            && connected
            && (hop.peers.len() < max || hop.peers.contains(&peer))
        {
            hop.peers.insert(peer);
        }
    }

    /// The last connection to `peer` closed.
    pub(super) fn stem_gone(&mut self, peer: &PeerId) {
        if let Some(hop) = &mut self.stem {
            hop.peers.remove(peer);
        }
    }

    /// Hands an own envelope to the stem; gives it back when it takes the direct path (stem
    /// off, no stem peer, a bound reached).
    pub(super) fn stem_originate(&mut self, env: Envelope, written: bool) -> Option<Envelope> {
        let cands = self.stem_candidates();
        let Some(hop) = self.stem.as_mut() else { return Some(env) };
        let id = env.id();
        if hop.own.len() >= OWN_STEMMED_MAX || hop.own.contains_key(&id) || hop.requests_full() {
            return Some(env);
        }
        let now = now_ms();
        let rand = hop.coins.next();
        let StemAction::Forward(to) = hop.stem.originate(id, &cands, now, rand) else { return Some(env) };
        hop.stem.disarm(&id);
        if hop.refused_by.get(&to).is_some_and(|until| now < *until) {
            hop.counters.backed_off += 1;
            return Some(env);
        }
        let deadline_ms = now + origin_wait_ms(&hop.config());
        let stores = self.stores_for(&env.header.topic);
        let Some(hop) = self.stem.as_mut() else { return Some(env) };
        // Sent with this turn's other own envelopes for the same successor and stores.
        hop.own_batches.entry((to, stores.clone())).or_default().push(env.clone());
        hop.own.insert(id, Own { envelope: env.clone(), written, deadline_ms, to });
        debug!(%to, "own envelope {} into the stem", id.short());
        let outs =
            self.sync.handle(Input::SendHeld { envelope: env, stores, written, until_ms: deadline_ms }, now);
        self.apply(outs);
        None
    }

    pub(super) fn on_stem_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_stem_request(peer, &request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    self.on_stem_answer(request_id, decode_answers(&response).ok());
                }
            },
            request_response::Event::OutboundFailure { request_id, peer, error, .. } => {
                debug!(%peer, %error, "stem request failed");
                self.on_stem_answer(request_id, None);
            }
            _ => {}
        }
    }

    /// Answers one stem envelope: on its request's channel, or into its batch's slot (the
    /// batch is answered with its last envelope).
    fn stem_reply(&mut self, to: Reply, resp: StemResponse) {
        let (channel, bytes) = match to {
            Reply::One(channel) => (channel, resp.encode()),
            Reply::Part { slot, index } => {
                let Some(hop) = self.stem.as_mut() else { return };
                let Some((channel, answers)) = hop.replies.answer(slot, index, resp) else { return };
                (channel, encode_answers(&answers))
            }
        };
        if let Some(b) = self.swarm.behaviour_mut().stem.as_mut() {
            let _ = b.send_response(channel, bytes);
        }
    }

    /// A stem request from `peer`: one envelope, or a batch whose envelopes are each taken
    /// as if they came alone and answered together.
    fn on_stem_request(&mut self, peer: PeerId, request: &[u8], channel: ResponseChannel<Vec<u8>>) {
        let limit = self.config.admission.limits.envelope_bytes_max;
        let req = match decode_any(request, limit) {
            Ok(r) => r,
            Err(e) => {
                // A request that does not even parse is charged like a malformed envelope: it
                // takes the peer's rate allowance (shared with its gossip) and is refused.
                debug!(%peer, "bad stem request: {e}");
                return self.on_stem_envelope(peer, Vec::new(), &[], Reply::One(channel));
            }
        };
        if !req.batch {
            return self.on_stem_envelope(peer, req.targets, req.envelopes[0], Reply::One(channel));
        }
        let Some(hop) = self.stem.as_mut() else { return };
        let slot = match hop.replies.open(channel, req.envelopes.len()) {
            Ok(slot) => slot,
            Err(channel) => {
                let busy = vec![StemResponse::bare(StemOutcome::Busy); req.envelopes.len()];
                if let Some(b) = self.swarm.behaviour_mut().stem.as_mut() {
                    let _ = b.send_response(channel, encode_answers(&busy));
                }
                return;
            }
        };
        for (index, bytes) in req.envelopes.iter().enumerate() {
            self.on_stem_envelope(peer, req.targets.clone(), bytes, Reply::Part { slot, index });
        }
    }

    /// A stem envelope from `peer`: admitted like gossip, then forwarded or fluffed.
    fn on_stem_envelope(&mut self, peer: PeerId, targets: Vec<PeerId>, bytes: &[u8], channel: Reply) {
        let now = now_ms();
        let verdict = self.admission.check_stem(&peer, bytes, now);
        let env = match verdict {
            Verdict::Accept(env, _) => *env,
            Verdict::Ignore(crate::validate::IgnoreReason::Duplicate) => {
                return self.stem_reply(channel, StemResponse::bare(StemOutcome::Duplicate));
            }
            Verdict::Reject(reason) => {
                debug!(%peer, ?reason, "stem envelope rejected");
                self.counters.rejected += 1;
                return self.stem_refused(channel, StemOutcome::Refused);
            }
            Verdict::Ignore(_) => {
                self.counters.ignored += 1;
                return self.stem_refused(channel, StemOutcome::Refused);
            }
        };
        let cands = self.stem_candidates();
        let Some(hop) = self.stem.as_mut() else { return self.stem_refused(channel, StemOutcome::Busy) };
        let id = env.id();
        if hop.relays.len() >= RELAYS_MAX
            || hop.relays.values().filter(|r| r.from == peer).count() >= RELAYS_PER_PEER_MAX
        {
            return self.stem_refused(channel, StemOutcome::Busy);
        }
        let rand = hop.coins.per_link(&peer, now / hop.config().epoch_ms.max(1));
        let mut action = hop.stem.relay(&peer, id, &cands, now, rand);
        hop.stem.disarm(&id);
        if matches!(action, StemAction::Forward(_)) && hop.requests_full() {
            action = StemAction::Fluff;
        }
        let c = hop.config();
        let failsafe_at_ms = now + c.failsafe_ms + hop.coins.next() % (c.failsafe_jitter_ms + 1);
        let answer_by_ms = now + origin_wait_ms(&c);
        let state = match action {
            StemAction::Duplicate => {
                return self.stem_reply(channel, StemResponse::bare(StemOutcome::Duplicate));
            }
            StemAction::Refuse => return self.stem_refused(channel, StemOutcome::Busy),
            StemAction::Forward(to) => {
                let Some(b) = self.swarm.behaviour_mut().stem.as_mut() else {
                    return self.stem_refused(channel, StemOutcome::Busy);
                };
                let rid = b.send_request(&to, encode_request(&targets, &env.encode()));
                let Some(hop) = self.stem.as_mut() else { return };
                hop.requests.insert(rid, vec![id]);
                RelayState::Waiting(rid, to)
            }
            StemAction::Fluff => RelayState::Storing(Vec::new()),
        };
        let fluff = matches!(state, RelayState::Storing(_));
        let Some(hop) = self.stem.as_mut() else { return };
        hop.counters.relayed += 1;
        let relay = Relay {
            from: peer,
            targets,
            reply: channel,
            envelope: env.clone(),
            state,
            failsafe_at_ms,
            answer_by_ms,
            receipts: vec![],
        };
        hop.relays.insert(id, relay);
        if self.subscribed.contains(&env.header.topic) {
            let outs = self.sync.handle(Input::Gossip { envelope: env }, now);
            self.apply(outs);
        }
        if fluff {
            self.stem_fluff(id);
        }
    }

    fn stem_refused(&mut self, channel: Reply, outcome: StemOutcome) {
        if let Some(hop) = self.stem.as_mut() {
            hop.counters.refused += 1;
        }
        self.stem_reply(channel, StemResponse::bare(outcome));
    }

    /// Diffuses a relayed envelope from here, after those of its ancestors still waiting here
    /// for a downstream answer (a burst's envelopes travel as separate requests, and their
    /// answers come back in any order: a child diffused before its parent makes every
    /// receiver fetch the parent from the store nodes). At most the relay table is visited;
    /// only ancestors from the same peer and topic are diffused with it.
    fn stem_fluff(&mut self, id: Id) {
        let Some(hop) = self.stem.as_ref() else { return };
        let mut order = Vec::new();
        let mut visited = HashSet::new();
        let mut stack = vec![id];
        while let Some(x) = stack.pop() {
            if !visited.insert(x) {
                continue;
            }
            order.push(x);
            let Some(r) = hop.relays.get(&x) else { continue };
            // Only ancestors that came over the same link on the same topic: a peer naming
            // others' envelopes as parents cannot make this hop diffuse them early.
            for p in &r.envelope.header.parents {
                let same_link_waiting = hop.relays.get(p).is_some_and(|pr| {
                    matches!(pr.state, RelayState::Waiting(..))
                        && pr.from == r.from
                        && pr.envelope.header.topic == r.envelope.header.topic
                });
                if same_link_waiting {
                    stack.push(*p);
                }
            }
        }
        for x in order.into_iter().rev() {
            self.stem_fluff_one(x);
        }
    }

    /// Diffuses one relayed envelope from here: gossip, and a push to the topic's store nodes
    /// whose receipts go back up the stem.
    fn stem_fluff_one(&mut self, id: Id) {
        let Some((env, targets)) = self
            .stem
            .as_ref()
            .and_then(|h| h.relays.get(&id))
            .map(|r| (r.envelope.clone(), r.targets.clone()))
        else {
            return;
        };
        self.admission.mark_seen(id);
        let topic = env.header.topic;
        let shard = IdentTopic::new(shard_name(shard_of(&topic)));
        let bytes = env.encode();
        // Gossipsub never hands a node its own publication, and the envelope is now seen here,
        // so this node's light clients get it from here or not at all (a service node that
        // fluffed it would otherwise never stream it and be blamed for withholding it).
        self.light_feed(id, &topic, &bytes);
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(shard, bytes) {
            debug!("stem fluff of {}: gossip publish: {e}", id.short());
        }
        let mut awaiting = Vec::new();
        // The originator's targets that are store nodes connected here; none: our own
        // placement for the topic.
        let mut stores: Vec<PeerId> =
            targets.into_iter().filter(|t| self.store_peers.contains_key(t)).collect();
        if stores.is_empty() {
            stores = self.stores_for(&topic);
        }
        for s in stores {
            // Pushed with the rest of this turn's fluffed envelopes (`send_relayed_batches`).
            self.relayed_batches.entry(s).or_default().push(env.clone());
            awaiting.push(s);
        }
        let Some(hop) = self.stem.as_mut() else { return };
        hop.counters.fluffed += 1;
        let done = awaiting.is_empty();
        if let Some(r) = hop.relays.get_mut(&id) {
            r.state = RelayState::Storing(awaiting);
        }
        if done {
            self.stem_answer(id);
        }
    }

    /// Pushes this turn's fluffed envelopes to their store nodes: one request per store node
    /// (and batch). A push that cannot be sent counts as that store node's failed answer.
    pub(super) fn send_relayed_batches(&mut self) {
        if self.relayed_batches.is_empty() {
            return;
        }
        for (to, envs) in std::mem::take(&mut self.relayed_batches) {
            for mut batch in batches(envs) {
                let ids: Vec<Id> = batch.iter().map(Envelope::id).collect();
                let req = match batch.len() {
                    1 => Request::StoreRelayed(batch.remove(0)),
                    _ => Request::StoreRelayedMany(batch),
                };
                if !self.request(to, req, Outbound::StemStore(ids.clone())) {
                    for id in ids {
                        self.on_stem_store_answer(to, id, None);
                    }
                }
            }
        }
    }

    /// Answers the peer a relayed envelope came from with the receipts gathered, and forgets it.
    fn stem_answer(&mut self, id: Id) {
        let Some(r) = self.stem.as_mut().and_then(|h| h.relays.remove(&id)) else { return };
        self.stem_reply(r.reply, StemResponse { outcome: StemOutcome::Receipts, receipts: r.receipts });
    }

    /// A store node answered (or failed, `None`) the push of a relayed envelope fluffed here.
    pub(super) fn on_stem_store_answer(&mut self, from: PeerId, id: Id, response: Option<&Response>) {
        let Some(r) = self.stem.as_mut().and_then(|h| h.relays.get_mut(&id)) else { return };
        let RelayState::Storing(awaiting) = &mut r.state else { return };
        awaiting.retain(|p| *p != from);
        let done = awaiting.is_empty();
        if let Some(Response::Stored(acks)) = response {
            for a in acks.iter().filter(|a| a.id == id) {
                // Not verified here: every hop above (and the originator) verifies what it is
                // answered (`valid_receipts`), so checking it here too only doubled the
                // signature checks of the stem path. A bad one costs its own store's slot.
                if let (StoreOutcome::Stored | StoreOutcome::Duplicate, Some(rc)) = (a.outcome, &a.receipt)
                    && rc.id == id
                    && r.receipts.len() < STEM_RECEIPTS_MAX
                    && !r.receipts.iter().any(|(p, _)| *p == from)
                {
                    r.receipts.push((from, rc.clone()));
                }
            }
        }
        if done {
            self.stem_answer(id);
        }
    }

    /// Sends this turn's own envelopes into the stem: per successor and store targets, in
    /// batches of at most `STEM_BATCH_MAX` envelopes and the envelope limit in bytes (one
    /// alone goes as a version 1 request).
    pub(super) fn send_own_stems(&mut self) {
        let Some(hop) = self.stem.as_mut() else { return };
        if hop.own_batches.is_empty() {
            return;
        }
        let limit = self.config.admission.limits.envelope_bytes_max;
        for ((to, stores), envs) in std::mem::take(&mut hop.own_batches) {
            let encoded: Vec<(Id, Vec<u8>)> = envs.iter().map(|e| (e.id(), e.encode())).collect();
            for batch in split_batches(encoded, STEM_BATCH_MAX, limit, |(_, b)| b.len()) {
                self.send_stem_batch(to, &stores, batch);
            }
        }
    }

    fn send_stem_batch(&mut self, to: PeerId, stores: &[PeerId], batch: Vec<(Id, Vec<u8>)>) {
        let (ids, encoded): (Vec<Id>, Vec<Vec<u8>>) = batch.into_iter().unzip();
        let req = match encoded.as_slice() {
            [] => return,
            [one] => encode_request(stores, one),
            _ => encode_batch(stores, &encoded),
        };
        let Some(b) = self.swarm.behaviour_mut().stem.as_mut() else { return };
        let rid = b.send_request(&to, req);
        if let Some(hop) = self.stem.as_mut() {
            hop.requests.insert(rid, ids);
        }
    }

    /// The answer (or failure, `None`) to a stem request we sent: one answer per envelope it
    /// carried, in order (an answer of another length counts as a failure for each).
    fn on_stem_answer(&mut self, rid: OutboundRequestId, resp: Option<Vec<StemResponse>>) {
        let Some(hop) = self.stem.as_mut() else { return };
        let Some(ids) = hop.requests.remove(&rid) else { return };
        let mut answers = resp.filter(|a| a.len() == ids.len()).map(Vec::into_iter);
        for id in ids {
            let answer = answers.as_mut().and_then(Iterator::next);
            self.on_stem_answer_one(rid, id, answer);
        }
    }

    fn on_stem_answer_one(&mut self, rid: OutboundRequestId, id: Id, resp: Option<StemResponse>) {
        let Some(hop) = self.stem.as_mut() else { return };
        let refused =
            matches!(&resp, Some(r) if matches!(r.outcome, StemOutcome::Busy | StemOutcome::Refused));
        let receipts = valid_receipts(&id, resp);
        if let Some(own) = hop.own.remove(&id) {
            if refused {
                hop.back_off(own.to, now_ms());
            }
            return self.stem_own_answered(own, receipts);
        }
        let Some(r) = hop.relays.get_mut(&id) else { return };
        if !matches!(r.state, RelayState::Waiting(w, _) if w == rid) {
            return; // fluffed here meanwhile: our own store nodes answer
        }
        if receipts.is_empty() {
            return self.stem_fluff(id);
        }
        r.receipts = receipts;
        self.stem_answer(id);
    }

    /// Our own stem came back: its verified receipts count as the store nodes' acks; with
    /// none, or too few, the send falls back to the direct path.
    fn stem_own_answered(&mut self, own: Own, receipts: Vec<(PeerId, StoreReceipt)>) {
        let id = own.envelope.id();
        let now = now_ms();
        let targets: Vec<PeerId> = self.sync.targets(&id).map(<[PeerId]>::to_vec).unwrap_or_default();
        let mut counted = 0;
        for (store, r) in receipts {
            if targets.contains(&store) {
                counted += 1;
                self.keep_receipt(&store, r);
                let outs = self.sync.handle(Input::StoreAck { id, from: store }, now);
                self.apply(outs);
            }
        }
        if counted == 0 {
            debug!("stem of {} brought no receipt of its store nodes: direct path", id.short());
            self.stem_fallback(own);
        } else if self.sync.is_unstored(&id) {
            let outs = self.sync.handle(Input::Release { id }, now);
            self.apply(outs);
        }
    }

    /// The stem of an own envelope failed: gossip it and push it from here (today's path).
    fn stem_fallback(&mut self, own: Own) {
        if let Some(hop) = self.stem.as_mut() {
            hop.counters.fallbacks += 1;
        }
        let id = own.envelope.id();
        let shard = IdentTopic::new(shard_name(shard_of(&own.envelope.header.topic)));
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(shard, own.envelope.encode()) {
            debug!("fallback publish of {} (written: {}): {e}", id.short(), own.written);
        }
        let outs = self.sync.handle(Input::Release { id }, now_ms());
        self.apply(outs);
    }

    /// Timers: own envelopes past their wait fall back; relays past their fail-safe fluff
    /// here; relays past their answer deadline answer with what they have.
    pub(super) fn stem_tick(&mut self) {
        let Some(hop) = self.stem.as_mut() else { return };
        let now = now_ms();
        let late: Vec<Id> = hop.own.iter().filter(|(_, o)| o.deadline_ms <= now).map(|(id, _)| *id).collect();
        let failsafe: Vec<Id> = hop
            .relays
            .iter()
            .filter(|(_, r)| matches!(r.state, RelayState::Waiting(..)) && r.failsafe_at_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        let overdue: Vec<Id> =
            hop.relays.iter().filter(|(_, r)| r.answer_by_ms <= now).map(|(id, _)| *id).collect();
        let own: Vec<Own> = late.iter().filter_map(|id| hop.own.remove(id)).collect();
        for o in own {
            // The successor never answered: the next envelopes take another one.
            if let Some(h) = self.stem.as_mut() {
                h.stem.successor_failed(&o.to);
            }
            self.stem_fallback(o);
        }
        for id in failsafe {
            // Still waiting: not fluffed meanwhile as an ancestor of an earlier one.
            let waiting = self.stem.as_ref().and_then(|h| h.relays.get(&id)).and_then(|r| match r.state {
                RelayState::Waiting(_, to) => Some(to),
                RelayState::Storing(_) => None,
            });
            if let Some(to) = waiting {
                if let Some(h) = self.stem.as_mut() {
                    h.stem.successor_failed(&to);
                }
                self.stem_fluff(id);
            }
        }
        for id in overdue {
            self.stem_answer(id);
        }
    }
}
