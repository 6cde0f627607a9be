//! A light client's side of `/cairn/light/1` (see [`crate::light`]): streams to
//! `services_target` service nodes among the connected peers that offer the protocol, one
//! primary (envelopes) and the others secondaries (ids); the cross-check of their feeds; and
//! the back-fill from the store nodes by cursor when the primary changes or its queue
//! overflowed. Envelopes from a service node are admitted like gossip (size, canonical form,
//! proof of work, time window) before the sync state machine sees them.
//!
//! Idle cost: one stream per service node and the connections' keep-alive; nothing here runs
//! per topic while nothing arrives (no periodic page reads), so 50 quiet conversations cost
//! what one does.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_proto::{Envelope, Id, Topic};
use futures::AsyncReadExt as _;
use futures::AsyncWriteExt as _;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::actor::Node;
use super::light_serve::{LIGHT_PROTOCOL, LightInput, read_frame, write_frame};
use super::now_ms;
use crate::light::{Bucket, ClientFrame, CrossCheck, Feed, Judged, LightConfig, ServiceFrame};
use crate::light_pace::PublishPacer;
use crate::sync::Input;
use crate::validate::Verdict;

/// Frames queued for one service node's stream, at most (a full queue drops a want: the
/// back-fill covers it; own publications wait in the pacer instead).
const SESSION_FRAMES_MAX: usize = 256;
/// Of a session's queue, the places own publications may take (the rest stay for
/// subscriptions and wants while a service node holds a fast publisher's stream).
const SESSION_PUBLISH_ROOM: usize = 192;
/// Time to open a stream to a service node, ms.
const OPEN_TIMEOUT_MS: u64 = 10_000;
/// A candidate that could not be opened is not tried again for this long, ms.
const OPEN_FAILED_AVOID_MS: u64 = 30_000;
/// Candidates (connected peers offering the protocol) remembered, at most.
const CANDIDATES_MAX: usize = 256;
/// A newly followed topic is paged once more this long after it was followed, ms: envelopes
/// gossiped while the service nodes were joining its shard reached neither of them (their
/// gossip subscription was not yet known to the sender), only the store nodes.
const FOLLOW_RECHECK_MS: u64 = 10_000;
/// Those second back-fills waiting, at most (a topic beyond it gets none).
const RECHECKS_MAX: usize = 4_096;
/// A light client with no primary stream (every service node refused it, or none is up)
/// pages its followed topics from the store nodes this often, ms: its mail comes late rather
/// than not at all. (A bench saw 76 of 100 light clients refused by full service nodes get no
/// message for the whole 15 s send phase.)
const NO_SERVICE_POLL_MS: u64 = 5_000;

/// What a light client knows about its service nodes, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LightStatus {
    /// This node is a light client.
    pub light: bool,
    /// Service nodes with an open stream.
    pub services: Vec<PeerId>,
    /// The one sending whole envelopes.
    pub primary: Option<PeerId>,
    /// Envelopes each service node was found withholding (cross-check verdicts).
    pub withheld: Vec<(PeerId, u64)>,
    /// Envelopes admitted from service nodes' streams.
    pub stream_envelopes: u64,
    /// Of those, outside the followed topics (bucket neighbours), dropped.
    pub foreign: u64,
    /// Back-fills from the store nodes (start, primary change, overflow).
    pub backfills: u64,
    /// Own publications waiting for the pace of the service nodes.
    pub publishes_waiting: usize,
    /// Own publications dropped from the gossip path on a full pacing queue (stored all the
    /// same; receivers fetch them later).
    pub publishes_unpaced: u64,
    /// Service side: light clients served now.
    pub clients: usize,
    /// Service side: frames queued for clients.
    pub fed: u64,
    /// Service side: frames dropped on full client queues.
    pub dropped: u64,
}

struct Session {
    /// `None` while the stream is opening.
    tx: Option<mpsc::Sender<ClientFrame>>,
    feed: Feed,
}

/// The client's state in the actor.
pub(super) struct LightClient {
    config: LightConfig,
    control: libp2p_stream::Control,
    candidates: HashSet<PeerId>,
    sessions: HashMap<PeerId, Session>,
    primary: Option<PeerId>,
    check: CrossCheck<PeerId>,
    /// Not chosen until then (withholding, or could not be opened), ms; at most
    /// `CANDIDATES_MAX` entries.
    avoid: HashMap<PeerId, u64>,
    withheld: HashMap<PeerId, u64>,
    /// Topics to page from their store nodes as soon as they have some.
    backfill: HashSet<Topic>,
    /// Newly followed topics paged again at the given time (ms), at most `RECHECKS_MAX`.
    rechecks: Vec<(Topic, u64)>,
    /// The bucket set last sent (at most `BUCKETS_MAX`).
    buckets: Vec<Bucket>,
    /// Envelopes received from streams, the last `crosscheck_ids_max` (not wanted again).
    received: crate::validate::SeenIds,
    stream_envelopes: u64,
    foreign: u64,
    backfills: u64,
    /// When the followed topics were last paged for want of a primary stream, ms.
    polled_ms: u64,
    /// Own publications paced to the service nodes' rate (bounded, see `light_pace`).
    pacer: PublishPacer,
}

impl LightClient {
    pub(super) fn new(config: LightConfig, control: libp2p_stream::Control) -> Self {
        Self {
            config,
            control,
            candidates: HashSet::new(),
            sessions: HashMap::new(),
            primary: None,
            check: CrossCheck::new(config.grace_ms, config.warmup_ms, config.crosscheck_ids_max),
            avoid: HashMap::new(),
            withheld: HashMap::new(),
            backfill: HashSet::new(),
            rechecks: Vec::new(),
            buckets: Vec::new(),
            received: crate::validate::SeenIds::new(config.crosscheck_ids_max.max(1)),
            stream_envelopes: 0,
            foreign: 0,
            backfills: 0,
            polled_ms: 0,
            pacer: PublishPacer::new(config.publishes_per_sec),
        }
    }

    pub(super) fn status(&self) -> LightStatus {
        LightStatus {
            light: true,
            services: self.sessions.iter().filter(|(_, s)| s.tx.is_some()).map(|(p, _)| *p).collect(),
            primary: self.primary,
            withheld: self.withheld.iter().map(|(p, n)| (*p, *n)).collect(),
            stream_envelopes: self.stream_envelopes,
            foreign: self.foreign,
            backfills: self.backfills,
            publishes_waiting: self.pacer.waiting(),
            publishes_unpaced: self.pacer.dropped(),
            ..LightStatus::default()
        }
    }

    /// Hands the publications the pace allows now to every open stream with room for them
    /// (with none open, or none with room, they wait). Publications never take the last
    /// `SESSION_FRAMES_MAX - SESSION_PUBLISH_ROOM` places of a session's queue, which stay for
    /// subscriptions and wants; a service node holding the stream (over its rate) fills the
    /// rest, and then the pacer waits rather than a frame being dropped.
    fn publish_due(&mut self, now: u64) {
        let room = |tx: &mpsc::Sender<ClientFrame>| {
            tx.capacity().saturating_sub(SESSION_FRAMES_MAX - SESSION_PUBLISH_ROOM)
        };
        let max = self.sessions.values().filter_map(|s| s.tx.as_ref()).map(room).max().unwrap_or(0);
        for bytes in self.pacer.due(now, max) {
            for s in self.sessions.values() {
                // A session without room misses it; one with room (there is one) gossips it.
                if let Some(tx) = s.tx.as_ref().filter(|tx| room(tx) > 0) {
                    let _ = tx.try_send(ClientFrame::Publish(bytes.clone()));
                }
            }
        }
    }

    fn send(&self, to: &PeerId, f: ClientFrame) {
        if let Some(tx) = self.sessions.get(to).and_then(|s| s.tx.as_ref()) {
            let _ = tx.try_send(f);
        }
    }
}

/// One service node's stream: opens it, then writes what the actor queues and hands each
/// frame read to the actor, until either side ends. Always ends with `Down`.
async fn session(
    mut control: libp2p_stream::Control,
    service: PeerId,
    to_actor: mpsc::Sender<LightInput>,
    max: usize,
    env_max: usize,
) {
    let open = tokio::time::timeout(
        Duration::from_millis(OPEN_TIMEOUT_MS),
        control.open_stream(service, LIGHT_PROTOCOL),
    )
    .await;
    let stream = match open {
        Ok(Ok(s)) => s,
        other => {
            debug!(%service, "light stream not opened: {:?}", other.map(|r| r.map(|_| ())));
            let _ = to_actor.send(LightInput::Down { service }).await;
            return;
        }
    };
    let (mut rd, mut wr) = stream.split();
    let (tx, mut rx) = mpsc::channel::<ClientFrame>(SESSION_FRAMES_MAX);
    if to_actor.send(LightInput::Up { service, tx }).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if write_frame(&mut wr, &f.encode()).await.is_err() {
                break;
            }
        }
        let _ = wr.close().await;
    });
    while let Some(body) = read_frame(&mut rd, max).await {
        let Ok(frame) = ServiceFrame::decode(&body, env_max) else {
            debug!(%service, "bad frame from a service node");
            break;
        };
        let refused = matches!(frame, ServiceFrame::Refused(_));
        if to_actor.send(LightInput::Frame { service, frame }).await.is_err() || refused {
            break;
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
    let _ = to_actor.send(LightInput::Down { service }).await;
}

impl Node {
    /// The frame bound and the envelope bound of light frames here.
    fn light_bounds(&self) -> (usize, usize) {
        let env_max = self.config.admission.limits.envelope_bytes_max + 4096;
        (crate::light::frame_bytes_max(env_max), env_max)
    }

    /// The buckets of the followed topics.
    fn light_buckets(&self) -> Vec<Bucket> {
        let bits = self.light.as_ref().map_or(crate::light::BUCKET_BITS_MIN, |l| l.config.bucket_bits);
        let set: std::collections::BTreeSet<Bucket> =
            self.subscribed.iter().map(|t| Bucket::of(t, bits)).collect();
        set.into_iter().take(crate::light::BUCKETS_MAX).collect()
    }

    /// Client side: a connected peer offers (or stopped offering) the light protocol.
    pub(super) fn light_candidate(&mut self, peer: PeerId, offers: bool) {
        let Some(l) = &mut self.light else { return };
        if offers && l.candidates.len() < CANDIDATES_MAX {
            l.candidates.insert(peer);
        } else if !offers {
            l.candidates.remove(&peer);
        }
        self.light_maintain();
    }

    /// Client side: opens streams until `services_target` are open or opening.
    pub(super) fn light_maintain(&mut self) {
        let (max, env_max) = self.light_bounds();
        let Some(tx) = self.light_tx.clone() else { return };
        let Some(l) = &mut self.light else { return };
        let now = now_ms();
        l.avoid.retain(|_, until| *until > now);
        while l.sessions.len() < l.config.services_target {
            let Some(p) = l
                .candidates
                .iter()
                .find(|p| !l.sessions.contains_key(p) && !l.avoid.contains_key(p))
                .copied()
            else {
                break;
            };
            l.sessions.insert(p, Session { tx: None, feed: Feed::Ids });
            tokio::spawn(session(l.control.clone(), p, tx.clone(), max, env_max));
        }
    }

    /// Client side: the followed topics changed: tell every service node if the bucket set
    /// did (each then warms up again in the cross-check).
    pub(super) fn light_resubscribe(&mut self) {
        let buckets = self.light_buckets();
        let Some(l) = &mut self.light else { return };
        if l.buckets == buckets {
            return;
        }
        l.buckets.clone_from(&buckets);
        let now = now_ms();
        let open: Vec<(PeerId, Feed)> =
            l.sessions.iter().filter(|(_, s)| s.tx.is_some()).map(|(p, s)| (*p, s.feed)).collect();
        for (p, feed) in open {
            l.send(&p, ClientFrame::Subscribe { feed, buckets: buckets.clone() });
            l.check.service_up(p, now);
        }
    }

    /// Client side: an own envelope goes to every service node, which gossip it (the copies
    /// meet as one gossip message id; one withholding service node cannot hold it back), and
    /// the push to the store nodes is the sync state machine's, as for every node.
    /// They go at the pace the service nodes gossip (`light_pace`), the rest in order later.
    pub(super) fn light_publish(&mut self, env: &Envelope) {
        let Some(l) = &mut self.light else { return };
        l.check.own(env.id());
        l.pacer.offer(env.encode());
        l.publish_due(now_ms());
    }

    /// Both sides: an input from a light task.
    pub(super) fn on_light(&mut self, input: LightInput) {
        match input {
            LightInput::Publish { from, client, bytes } => self.light_published(from, client, bytes),
            LightInput::Up { service, tx } => self.light_up(service, tx),
            LightInput::Frame { service, frame } => self.light_frame(service, frame),
            LightInput::Down { service } => self.light_down(service),
        }
    }

    fn light_up(&mut self, service: PeerId, tx: mpsc::Sender<ClientFrame>) {
        let buckets = self.light_buckets();
        let Some(l) = &mut self.light else { return };
        let Some(s) = l.sessions.get_mut(&service) else { return };
        let primary = l.primary.is_none();
        s.feed = if primary { Feed::Envelopes } else { Feed::Ids };
        let sent = buckets.clone();
        let _ = tx.try_send(ClientFrame::Subscribe { feed: s.feed, buckets });
        s.tx = Some(tx);
        l.check.service_up(service, now_ms());
        l.buckets.clone_from(&sent);
        info!(%service, primary, "light: service node stream open");
        if primary {
            l.primary = Some(service);
            self.light_backfill_all();
        }
    }

    fn light_down(&mut self, service: PeerId) {
        let Some(l) = &mut self.light else { return };
        let opened = l.sessions.remove(&service).is_some_and(|s| s.tx.is_some());
        l.check.service_down(&service);
        if !opened {
            // Never shortens a blame (a withholding secondary closed by `light_tick` ends here).
            let until = now_ms() + OPEN_FAILED_AVOID_MS;
            l.avoid.entry(service).and_modify(|u| *u = (*u).max(until)).or_insert(until);
        }
        if l.primary == Some(service) {
            l.primary = None;
            info!(%service, "light: primary service node gone");
            self.light_promote();
            // What the stream would have brought meanwhile is at the store nodes.
            self.light_backfill_all();
        }
        self.light_maintain();
    }

    /// Makes a secondary with an open stream the primary (it sends envelopes from now on).
    fn light_promote(&mut self) {
        let buckets = self.light_buckets();
        let Some(l) = &mut self.light else { return };
        let others: Vec<PeerId> = l
            .sessions
            .iter()
            .filter(|(p, s)| s.tx.is_some() && Some(**p) != l.primary)
            .map(|(p, _)| *p)
            .collect();
        // An unblamed one first; a blamed one rather than none (the cross-check goes on).
        let Some(p) = others.iter().find(|p| !l.avoid.contains_key(p)).or(others.first()).copied() else {
            return;
        };
        if let Some(old) = l.primary.take()
            && let Some(s) = l.sessions.get_mut(&old)
        {
            s.feed = Feed::Ids;
            l.send(&old, ClientFrame::Subscribe { feed: Feed::Ids, buckets: buckets.clone() });
        }
        if let Some(s) = l.sessions.get_mut(&p) {
            s.feed = Feed::Envelopes;
        }
        l.send(&p, ClientFrame::Subscribe { feed: Feed::Envelopes, buckets });
        l.primary = Some(p);
        info!(service = %p, "light: new primary service node");
    }

    fn light_frame(&mut self, service: PeerId, frame: ServiceFrame) {
        let now = now_ms();
        match frame {
            ServiceFrame::Envelope(bytes) => {
                let limits = self.config.admission.limits;
                let Ok(env) = Envelope::decode(&bytes, &limits) else {
                    debug!(%service, "undecodable envelope from a service node");
                    return;
                };
                if let Some(l) = &mut self.light {
                    l.check.reported(env.id(), service, now);
                    l.received.insert(env.id());
                }
                if let Verdict::Accept(env, _) = self.admission.check(&service, &bytes, now) {
                    let followed = self.subscribed.contains(&env.header.topic);
                    if let Some(l) = &mut self.light {
                        l.stream_envelopes += 1;
                        l.foreign += u64::from(!followed);
                    }
                    if followed {
                        let outs = self.sync.handle(Input::Gossip { envelope: *env }, now);
                        self.apply(outs);
                    }
                }
            }
            ServiceFrame::Ids(ids) => {
                if let Some(l) = &mut self.light {
                    for id in ids {
                        l.check.reported(id, service, now);
                    }
                }
            }
            ServiceFrame::Overflow { dropped } => {
                debug!(%service, dropped, "light: service node dropped frames; back-filling");
                if let Some(l) = &mut self.light {
                    l.check.excuse(&service, now);
                }
                self.light_backfill_all();
            }
            ServiceFrame::Refused(r) => {
                debug!(%service, ?r, "light: service node refused");
                if let Some(l) = &mut self.light {
                    l.avoid.insert(service, now + OPEN_FAILED_AVOID_MS);
                }
            }
        }
    }

    /// Client side, on the tick: cross-check verdicts, fetches of what the primary withheld,
    /// back-fills waiting for store nodes, streams to open.
    pub(super) fn light_tick(&mut self) {
        let now = now_ms();
        let Some(l) = &mut self.light else { return };
        l.publish_due(now);
        let verdicts = l.check.tick(now);
        let mut demote = false;
        let mut wants: HashMap<PeerId, Vec<Id>> = HashMap::new();
        for Judged { id, reported_by, silent } in verdicts {
            for service in silent {
                *l.withheld.entry(service).or_insert(0) += 1;
                if l.avoid.len() < CANDIDATES_MAX {
                    l.avoid.insert(service, now + l.config.blame_ms);
                }
                demote |= l.primary == Some(service);
            }
            if !self.sync.is_delivered(&id)
                && !l.received.contains(&id)
                && let Some(from) = reported_by.first()
            {
                wants.entry(*from).or_default().push(id);
            }
        }
        for (to, ids) in wants {
            for part in ids.chunks(crate::light::WANT_IDS_MAX) {
                l.send(&to, ClientFrame::Want(part.to_vec()));
            }
        }
        // A withholding secondary is replaced when another candidate is free.
        let spare = l.candidates.iter().any(|p| !l.sessions.contains_key(p) && !l.avoid.contains_key(p));
        if spare {
            let blamed: Vec<PeerId> = l
                .sessions
                .keys()
                .filter(|p| l.avoid.contains_key(p) && l.primary != Some(**p))
                .copied()
                .collect();
            for p in blamed {
                l.sessions.remove(&p); // dropping the sender ends its stream
                l.check.service_down(&p);
            }
        }
        let due: Vec<Topic> = l.rechecks.iter().filter(|(_, at)| *at <= now).map(|(t, _)| *t).collect();
        l.rechecks.retain(|(_, at)| *at > now);
        l.backfill.extend(due);
        let poll = l.primary.is_none() && now >= l.polled_ms.saturating_add(NO_SERVICE_POLL_MS);
        if poll {
            l.polled_ms = now;
        }
        if demote {
            info!("light: the primary withheld mail; switching");
            self.light_promote();
        }
        if poll && self.light.as_ref().is_some_and(|l| l.primary.is_none()) {
            self.light_backfill_all();
        }
        self.light_backfill_ready();
        self.light_maintain();
    }

    /// Every followed topic is paged from its store nodes (from the saved cursors).
    fn light_backfill_all(&mut self) {
        let topics: Vec<Topic> = self.subscribed.iter().copied().collect();
        if let Some(l) = &mut self.light {
            l.backfills += 1;
            l.backfill.extend(topics);
        }
        self.light_backfill_ready();
    }

    /// Pages the topics waiting for a back-fill that have store nodes now.
    pub(super) fn light_backfill_ready(&mut self) {
        let Some(l) = &self.light else { return };
        if l.backfill.is_empty() {
            return;
        }
        let waiting: Vec<Topic> = l.backfill.iter().copied().collect();
        let now = now_ms();
        for t in waiting {
            let stores = self.stores_for(&t);
            if stores.is_empty() {
                continue;
            }
            if let Some(l) = &mut self.light {
                l.backfill.remove(&t);
            }
            self.load_cursors(&t, &stores);
            let outs = self.sync.handle(Input::Sync { topic: t, stores }, now);
            self.apply(outs);
        }
    }

    /// Light status (the client's, or the service side's figures on a full node).
    pub(super) fn light_status(&self) -> LightStatus {
        let (clients, fed, dropped) = self.light_serve_figures();
        let mut s = self.light.as_ref().map(LightClient::status).unwrap_or_default();
        s.clients = clients;
        s.fed = fed;
        s.dropped = dropped;
        s
    }

    /// Client side: a topic is followed: a back-fill once its store nodes are known.
    pub(super) fn light_follow(&mut self, topic: Topic) {
        if let Some(l) = &mut self.light {
            l.backfill.insert(topic);
            if l.rechecks.len() < RECHECKS_MAX {
                l.rechecks.push((topic, now_ms() + FOLLOW_RECHECK_MS));
            }
        }
        self.light_resubscribe();
        self.light_backfill_ready();
    }
}
