//! Serving light clients (`/cairn/light/1`, see [`crate::light`]): an accept task beside the
//! swarm hands each stream to a task of its own, which reads the client's frames and writes
//! what the actor queued for it. The actor feeds the [`Hub`] with every envelope it admits from
//! gossip (and with what clients publish), gossips client publications, and joins the gossip
//! shards its clients' buckets lie on.
//!
//! Bounds: `clients_max` streams, `clients_per_peer_max` per peer, `clients_per_ip_max` per
//! IP address (of the peer's connection, as the actor reports it), per client a queue of
//! `queue_frames_max` frames and `queue_bytes_max` bytes (beyond it a frame is dropped and the
//! client is told how many, so it back-fills from the store nodes), `publishes_per_sec` per
//! client (over it the client's stream is held until a token is due: back-pressure, never a
//! silent drop), `recent_max` envelopes kept for `want`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_proto::{Id, Topic};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use libp2p::gossipsub::IdentTopic;
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;
use tracing::debug;

use super::actor::Node;
use super::now_ms;
use crate::light::{
    Bucket, BucketSet, ClientFrame, Feed, LIGHT_PROTOCOL_NAME, LightServeLimits, Refusal, ServiceFrame,
};
use crate::shard::{shard_name, shard_of};
use crate::sync::Input;
use crate::validate::{RateLimiter, Verdict};

/// The protocol as libp2p names it.
pub const LIGHT_PROTOCOL: StreamProtocol = StreamProtocol::new(LIGHT_PROTOCOL_NAME);

/// What the light tasks tell the actor (both sides), through a queue of `LIGHT_INPUTS_MAX`.
pub(super) enum LightInput {
    /// Service side: a client published an envelope (encoded, unchecked).
    Publish { from: PeerId, client: u64, bytes: Vec<u8> },
    /// Client side: a stream to a service node is open; frames for it go to `tx`.
    Up { service: PeerId, tx: mpsc::Sender<ClientFrame> },
    /// Client side: a frame from a service node.
    Frame { service: PeerId, frame: ServiceFrame },
    /// Client side: the stream to a service node ended (or never opened).
    Down { service: PeerId },
}

/// Inputs from the light tasks queued for the actor, at most; beyond it the task waits (a
/// client's stream is then not read: back-pressure, nothing dropped).
pub(super) const LIGHT_INPUTS_MAX: usize = 1024;

/// Writes one frame: `length:u32 ‖ body`, in one write (one Yamux frame, one Noise message).
pub(super) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too long"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame of at most `max` bytes (refused before allocating when longer); `None` at
/// the end of the stream or on an error.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return None;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// One client as the actor feeds it.
struct Client {
    feed: Feed,
    buckets: BucketSet,
    tx: mpsc::Sender<Arc<Vec<u8>>>,
    queued_bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// The clients served and the recent envelopes, shared by the actor and the client tasks.
pub(super) struct Hub {
    limits: LightServeLimits,
    envelope_bytes_max: usize,
    clients: HashMap<u64, Client>,
    per_peer: HashMap<PeerId, usize>,
    next: u64,
    /// Envelopes fed recently, by id, for `want`; at most `recent_max` (oldest first).
    recent: HashMap<Id, (Topic, Arc<Vec<u8>>)>,
    recent_order: VecDeque<Id>,
    /// The bucket set changed: the actor recomputes its shard subscriptions.
    dirty: bool,
    /// The IP address of each connected peer (fed by the actor; at most `connections_max`).
    peer_ips: HashMap<PeerId, IpAddr>,
    /// Slots taken per IP address, and which address each slot was charged to.
    per_ip: HashMap<IpAddr, usize>,
    slot_ips: HashMap<u64, IpAddr>,
    /// Frames queued for clients, and dropped because a queue was full.
    pub(super) fed: u64,
    pub(super) dropped: u64,
}

impl Hub {
    fn new(limits: LightServeLimits, envelope_bytes_max: usize) -> Self {
        Self {
            limits,
            envelope_bytes_max,
            clients: HashMap::new(),
            per_peer: HashMap::new(),
            next: 0,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            dirty: false,
            peer_ips: HashMap::new(),
            per_ip: HashMap::new(),
            slot_ips: HashMap::new(),
            fed: 0,
            dropped: 0,
        }
    }

    /// Clients served now.
    pub(super) fn clients(&self) -> usize {
        self.clients.len()
    }

    fn take_slot(&mut self, peer: PeerId) -> Option<u64> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        let taken: usize = self.per_peer.values().sum();
        let ip = self.peer_ips.get(&peer).copied();
        let from_ip = ip.and_then(|ip| self.per_ip.get(&ip)).copied().unwrap_or(0);
        // The per-address bound holds once the service is half full. Below that, one address
        // may take more: a carrier's NAT puts many phones behind one address (and a bench
        // puts a 100-member group behind 127.0.0.1, where a flat bound of 16 left 76 members
        // with no service node). Either way one address holds at most half the slots beyond
        // its bound, and the other half stays for the others.
        let crowded = taken >= self.limits.clients_max / 2;
        if taken >= self.limits.clients_max
            || mine >= self.limits.clients_per_peer_max
            || (crowded && from_ip >= self.limits.clients_per_ip_max)
        {
            return None;
        }
        *self.per_peer.entry(peer).or_insert(0) += 1;
        self.next += 1;
        if let Some(ip) = ip {
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.slot_ips.insert(self.next, ip);
        }
        Some(self.next)
    }

    /// The actor saw `peer` connect from `ip` (`None`: its last connection closed).
    pub(super) fn peer_ip(&mut self, peer: PeerId, ip: Option<IpAddr>, peers_max: usize) {
        match ip {
            Some(ip) if self.peer_ips.len() < peers_max || self.peer_ips.contains_key(&peer) => {
                self.peer_ips.insert(peer, ip);
            }
            Some(_) => {}
            None => {
                self.peer_ips.remove(&peer);
            }
        }
    }

    fn give_slot(&mut self, id: u64, peer: &PeerId) {
        self.clients.remove(&id);
        if let Some(ip) = self.slot_ips.remove(&id)
            && let Some(n) = self.per_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
        self.dirty = true;
    }

    /// Queues `frame` for a client, within its bounds; false when dropped.
    fn push(&mut self, c: u64, frame: Arc<Vec<u8>>) -> bool {
        let Some(cl) = self.clients.get(&c) else { return false };
        let len = frame.len();
        let over = cl.queued_bytes.load(Ordering::Relaxed) + len > self.limits.queue_bytes_max;
        if over || cl.tx.try_send(frame).is_err() {
            cl.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped += 1;
            return false;
        }
        cl.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.fed += 1;
        true
    }

    /// Feeds an admitted envelope (`bytes`, its canonical encoding) to every client with a
    /// matching bucket but `except`, and keeps it for `want`.
    pub(super) fn feed(&mut self, id: Id, topic: &Topic, bytes: &[u8], except: Option<u64>) {
        if self.limits.withhold {
            return; // the Byzantine test service node
        }
        let targets: Vec<(u64, Feed)> = self
            .clients
            .iter()
            .filter(|(c, cl)| Some(**c) != except && cl.buckets.contains(topic))
            .map(|(c, cl)| (*c, cl.feed))
            .collect();
        if targets.is_empty() {
            return;
        }
        let env = Arc::new(ServiceFrame::Envelope(bytes.to_vec()).encode());
        let ids = Arc::new(ServiceFrame::Ids(vec![id]).encode());
        for (c, feed) in targets {
            let f = match feed {
                Feed::Envelopes => env.clone(),
                Feed::Ids => ids.clone(),
            };
            self.push(c, f);
        }
        if self.recent.insert(id, (*topic, env)).is_none() {
            self.recent_order.push_back(id);
        }
        while self.recent_order.len() > self.limits.recent_max {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Answers a `want` from what was fed recently, in the client's buckets only.
    fn want(&mut self, c: u64, ids: &[Id]) {
        if self.limits.withhold {
            return;
        }
        let Some(cl) = self.clients.get(&c) else { return };
        let frames: Vec<Arc<Vec<u8>>> = ids
            .iter()
            .filter_map(|id| self.recent.get(id))
            .filter(|(t, _)| cl.buckets.contains(t))
            .map(|(_, f)| f.clone())
            .collect();
        for f in frames {
            self.push(c, f);
        }
    }

    /// The gossip shards the clients' buckets lie on, when they changed since the last call.
    fn shards_if_changed(&mut self) -> Option<HashSet<u16>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(self.clients.values().flat_map(|c| c.buckets.iter().map(Bucket::shard)).collect())
    }
}

/// The shared hub.
pub(super) type SharedHub = Arc<Mutex<Hub>>;

fn lock(h: &SharedHub) -> std::sync::MutexGuard<'_, Hub> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts serving light clients: streams of [`LIGHT_PROTOCOL`] are accepted from now on.
pub(super) fn spawn_server(
    control: &mut libp2p_stream::Control,
    limits: LightServeLimits,
    envelope_bytes_max: usize,
    to_actor: mpsc::Sender<LightInput>,
) -> Result<SharedHub, String> {
    let mut incoming = control.accept(LIGHT_PROTOCOL).map_err(|e| e.to_string())?;
    let hub = Arc::new(Mutex::new(Hub::new(limits, envelope_bytes_max)));
    let h = hub.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let slot = lock(&h).take_slot(peer);
            match slot {
                Some(id) => {
                    tokio::spawn(serve_client(id, peer, stream, h.clone(), to_actor.clone()));
                }
                None => {
                    tokio::spawn(refuse(stream, Refusal::Busy));
                }
            }
        }
    });
    Ok(hub)
}

async fn refuse(mut stream: Stream, r: Refusal) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = write_frame(&mut stream, &ServiceFrame::Refused(r).encode()).await;
        let _ = stream.close().await;
    })
    .await;
}

/// One client: its subscription first (within `setup_ms`), then its frames until the stream
/// ends; a writer task empties its queue meanwhile.
async fn serve_client(
    c: u64,
    peer: PeerId,
    stream: Stream,
    hub: SharedHub,
    to_actor: mpsc::Sender<LightInput>,
) {
    let (limits, env_max) = {
        let h = lock(&hub);
        (h.limits, h.envelope_bytes_max)
    };
    let max = crate::light::frame_bytes_max(env_max);
    let (mut rd, mut wr) = stream.split();
    let setup = Duration::from_millis(limits.setup_ms);
    let first = tokio::time::timeout(setup, read_frame(&mut rd, max)).await.ok().flatten();
    let Some(Ok(ClientFrame::Subscribe { feed, buckets })) = first.map(|b| ClientFrame::decode(&b, env_max))
    else {
        let _ = write_frame(&mut wr, &ServiceFrame::Refused(Refusal::BadFrame).encode()).await;
        lock(&hub).give_slot(c, &peer);
        return;
    };
    let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(limits.queue_frames_max.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    {
        let mut h = lock(&hub);
        let cl = Client {
            feed,
            buckets: BucketSet::new(buckets),
            tx,
            queued_bytes: queued_bytes.clone(),
            dropped: dropped.clone(),
        };
        h.clients.insert(c, cl);
        h.dirty = true;
    }
    let writer = tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            queued_bytes.fetch_sub(f.len(), Ordering::Relaxed);
            if write_frame(&mut wr, &f).await.is_err() {
                break;
            }
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0
                && write_frame(&mut wr, &ServiceFrame::Overflow { dropped: lost }.encode()).await.is_err()
            {
                break;
            }
        }
    });
    let burst = limits.publishes_per_sec.saturating_mul(crate::light::PUBLISH_BURST_SECS);
    let mut rate = RateLimiter::new(limits.publishes_per_sec, burst, 1);
    let token_ms = (1_000 / u64::from(limits.publishes_per_sec.max(1))).max(1);
    while let Some(body) = read_frame(&mut rd, max).await {
        match ClientFrame::decode(&body, env_max) {
            Ok(ClientFrame::Subscribe { feed, buckets }) => {
                let mut h = lock(&hub);
                if let Some(cl) = h.clients.get_mut(&c) {
                    cl.feed = feed;
                    cl.buckets = BucketSet::new(buckets);
                }
                h.dirty = true;
            }
            Ok(ClientFrame::Publish(bytes)) => {
                // Over the rate, the stream is held (nothing more is read from it) until the
                // bucket has a token: back-pressure to the client, not a silent drop. Each
                // wait is one token's time; tokens refill, so the loop ends.
                while !rate.allow(&(), now_ms()) {
                    tokio::time::sleep(Duration::from_millis(token_ms)).await;
                }
                if to_actor.send(LightInput::Publish { from: peer, client: c, bytes }).await.is_err() {
                    break;
                }
            }
            Ok(ClientFrame::Want(ids)) => lock(&hub).want(c, &ids),
            Err(e) => {
                debug!(%peer, "light client sent a bad frame: {e}");
                break;
            }
        }
    }
    lock(&hub).give_slot(c, &peer);
    writer.abort();
}

impl Node {
    /// Service side: feeds an envelope admitted from gossip to the light clients.
    pub(super) fn light_feed(&mut self, id: Id, topic: &Topic, bytes: &[u8]) {
        if let Some(h) = &self.light_hub {
            lock(h).feed(id, topic, bytes, None);
        }
    }

    /// Service side: a client's publication, admitted like gossip, then gossiped, fed to the
    /// other clients and delivered here if this node follows the topic.
    pub(super) fn light_published(&mut self, from: PeerId, client: u64, bytes: Vec<u8>) {
        let Verdict::Accept(env, _) = self.admission.check(&from, &bytes, now_ms()) else {
            debug!(%from, "light client publication refused or a duplicate");
            return;
        };
        let topic = env.header.topic;
        let shard = IdentTopic::new(shard_name(shard_of(&topic)));
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(shard, bytes.clone()) {
            debug!("gossip of a light client's envelope: {e}");
        }
        if let Some(h) = &self.light_hub {
            lock(h).feed(env.id(), &topic, &bytes, Some(client));
        }
        if self.subscribed.contains(&topic) {
            let outs = self.sync.handle(Input::Gossip { envelope: *env }, now_ms());
            self.apply(outs);
        }
    }

    /// Service side, on the tick: joins the gossip shards the clients' buckets lie on and
    /// leaves those no client and no own topic needs.
    pub(super) fn light_shards(&mut self) {
        let Some(h) = &self.light_hub else { return };
        let Some(want) = lock(h).shards_if_changed() else { return };
        let own: HashSet<u16> = self.subscribed.iter().map(shard_of).collect();
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        for s in want.difference(&self.light_shards_joined) {
            if let Err(e) = gs.subscribe(&IdentTopic::new(shard_name(*s))) {
                debug!("light shard subscribe: {e}");
            }
        }
        for s in self.light_shards_joined.difference(&want) {
            if !own.contains(s) {
                gs.unsubscribe(&IdentTopic::new(shard_name(*s)));
            }
        }
        self.light_shards_joined = want;
    }

    /// Service side: where a peer's connection comes from (per-IP client limit).
    pub(super) fn light_peer_ip(&mut self, peer: PeerId, addr: Option<&libp2p::Multiaddr>) {
        let Some(h) = &self.light_hub else { return };
        let ip = addr.and_then(|a| {
            a.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
                libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
                _ => None,
            })
        });
        let max = self.config.connections_max as usize;
        lock(h).peer_ip(peer, ip, max);
    }

    /// Service side: clients served, frames fed and dropped.
    pub(super) fn light_serve_figures(&self) -> (usize, u64, u64) {
        self.light_hub.as_ref().map_or((0, 0, 0), |h| {
            let h = lock(h);
            (h.clients(), h.fed, h.dropped)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn client(hub: &mut Hub, peer: PeerId, topic: &Topic, feed: Feed) -> (u64, mpsc::Receiver<Arc<Vec<u8>>>) {
        let id = hub.take_slot(peer).expect("a slot");
        let (tx, rx) = mpsc::channel(hub.limits.queue_frames_max);
        let cl = Client {
            feed,
            buckets: BucketSet::new(vec![Bucket::of(topic, 16)]),
            tx,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        hub.clients.insert(id, cl);
        (id, rx)
    }

    #[test]
    fn slots_are_bounded_in_all_and_per_peer() {
        let limits = LightServeLimits { clients_max: 3, clients_per_peer_max: 2, ..Default::default() };
        let mut hub = Hub::new(limits, 1024);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = hub.take_slot(a).unwrap();
        assert!(hub.take_slot(a).is_some());
        assert!(hub.take_slot(a).is_none(), "a third stream from one peer");
        assert!(hub.take_slot(b).is_some());
        assert!(hub.take_slot(PeerId::random()).is_none(), "a fourth client in all");
        hub.give_slot(first, &a);
        assert!(hub.take_slot(a).is_some(), "a slot given back is free again");
    }

    #[test]
    fn slots_are_bounded_per_ip_address() {
        let limits = LightServeLimits { clients_max: 6, clients_per_ip_max: 2, ..Default::default() };
        let mut hub = Hub::new(limits, 1024);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for p in &peers {
            hub.peer_ip(*p, Some(ip), 16);
        }
        // Below half full, one address (a NAT) takes more than its bound...
        let first = hub.take_slot(peers[0]).unwrap();
        assert!(hub.take_slot(peers[1]).is_some());
        assert!(
            hub.take_slot(peers[2]).is_some(),
            "a third client from one address, the service not crowded"
        );
        // ...and once half full, no more.
        assert!(hub.take_slot(peers[3]).is_none(), "a fourth client from one address, half full");
        let elsewhere = PeerId::random();
        hub.peer_ip(elsewhere, Some("198.51.100.1".parse().unwrap()), 16);
        assert!(hub.take_slot(elsewhere).is_some());
        hub.give_slot(first, &peers[0]);
        assert!(hub.take_slot(peers[3]).is_none(), "still over its bound, the service crowded");
        assert!(hub.take_slot(elsewhere).is_some(), "a second client elsewhere");
        // The peers remembered are bounded.
        let known = hub.peer_ips.len();
        hub.peer_ip(PeerId::random(), Some(ip), known);
        assert_eq!(hub.peer_ips.len(), known);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_feeds_follow_buckets_and_feed_kinds() {
        let limits = LightServeLimits { queue_frames_max: 2, ..Default::default() };
        let mut hub = Hub::new(limits, 1024);
        let t = Topic([5; 32]);
        let (full, mut full_rx) = client(&mut hub, PeerId::random(), &t, Feed::Envelopes);
        let (_ids, mut ids_rx) = client(&mut hub, PeerId::random(), &t, Feed::Ids);
        let (_other, mut other_rx) = client(&mut hub, PeerId::random(), &Topic([6; 32]), Feed::Envelopes);
        for i in 0..3u8 {
            hub.feed(Id([i; 32]), &t, &[i; 40], None);
        }
        assert_eq!(hub.dropped, 2, "one frame too many for each of the two matching clients");
        assert_eq!(hub.clients[&full].dropped.load(Ordering::Relaxed), 1);
        let f = ServiceFrame::decode(&full_rx.try_recv().unwrap(), 1024).unwrap();
        assert_eq!(f, ServiceFrame::Envelope(vec![0; 40]));
        let f = ServiceFrame::decode(&ids_rx.try_recv().unwrap(), 1024).unwrap();
        assert_eq!(f, ServiceFrame::Ids(vec![Id([0; 32])]));
        assert!(other_rx.try_recv().is_err(), "another bucket gets nothing");
        // `want` answers from the recent envelopes, in the client's buckets only.
        while full_rx.try_recv().is_ok() {}
        hub.clients[&full].queued_bytes.store(0, Ordering::Relaxed);
        hub.want(full, &[Id([2; 32]), Id([9; 32])]);
        let f = ServiceFrame::decode(&full_rx.try_recv().unwrap(), 1024).unwrap();
        assert_eq!(f, ServiceFrame::Envelope(vec![2; 40]));
        assert!(full_rx.try_recv().is_err());
    }

    #[test]
    fn the_byte_bound_of_a_queue_holds_and_a_withholding_hub_feeds_nothing() {
        let limits = LightServeLimits { queue_bytes_max: 100, ..Default::default() };
        let mut hub = Hub::new(limits, 1024);
        let t = Topic([5; 32]);
        let (c, _rx) = client(&mut hub, PeerId::random(), &t, Feed::Envelopes);
        hub.feed(Id([1; 32]), &t, &[1; 60], None);
        hub.feed(Id([2; 32]), &t, &[2; 60], None);
        assert_eq!(hub.fed, 1);
        assert_eq!(hub.dropped, 1, "over 100 queued bytes");
        assert!(hub.clients[&c].queued_bytes.load(Ordering::Relaxed) <= 100);
        let mut liar = Hub::new(LightServeLimits { withhold: true, ..Default::default() }, 1024);
        let (_c, mut rx) = client(&mut liar, PeerId::random(), &t, Feed::Envelopes);
        liar.feed(Id([1; 32]), &t, &[1; 60], None);
        assert!(rx.try_recv().is_err());
    }
}
