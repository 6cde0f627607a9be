//! Light clients (issue 17 §2), sans-IO: the `/cairn/light/1` frames, bucket matching, the
//! limits of both sides, and the cross-check of two service nodes.
//!
//! A light client (`NodeConfig::light`) relays nothing and serves nothing: it joins no gossip
//! shard, answers no store, DHT, stem, relay or light request. It keeps one stream to each of
//! its service nodes (full nodes, `NodeConfig::light_serve`), sends its bucket set once (again
//! only when it changes), and the service node writes every envelope it admits from gossip
//! into a matching bucket to the stream as it arrives. One service node (the *primary*) sends
//! whole envelopes, the other (the *secondary*) only their ids, so a second feed costs ~35
//! bytes per envelope, not a second copy; an id the secondary announced that the primary did
//! not deliver within `grace_ms` (or the reverse) marks the silent one as withholding
//! ([`CrossCheck`]): it is counted, the client fetches the envelope from the other (`Want`),
//! and a withholding primary is demoted.
//!
//! ```text
//! frame    = length:u32 (≤ frame_bytes_max) ‖ version:u8 (1) ‖ kind:u8 ‖ body
//! client → service
//!   1 subscribe feed:u8 (0 envelopes, 1 ids) count:u16 (≤ BUCKETS_MAX) (bits:u16 prefix:[32])*
//!   2 publish   envelope:bytes          (gossiped by the service node after admission)
//!   3 want      count:u16 (≤ WANT_IDS_MAX) id:[32]*
//! service → client
//!   1 envelope  envelope:bytes
//!   2 ids       count:u16 (≤ ANNOUNCE_IDS_MAX) id:[32]*
//!   3 overflow  dropped:u64             (the client's queue overflowed: back-fill from stores)
//!   4 refused   code:u8                 (1 version, 2 busy, 3 bad frame)
//! ```
//!
//! Privacy: a bucket is the first `bits` bits of a topic (16 to 256). The service node learns
//! the buckets, not the topics; with N active topics in the network a 16-bit bucket hides a
//! conversation among about N / 65,536 others and costs their traffic in bytes (the client
//! drops envelopes of topics it does not follow). Exact topics (256 bits) cost nothing extra and
//! hide nothing. Both service nodes also learn the client's IP and when its mail arrives.

use std::collections::{HashMap, HashSet, VecDeque};

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::{Id, Topic};

use crate::shard::{SHARDS, shard_of};

/// The protocol name.
pub const LIGHT_PROTOCOL_NAME: &str = "/cairn/light/1";
/// Frame format version.
pub const LIGHT_VERSION: u8 = 1;
/// Buckets in one subscription, at most.
pub const BUCKETS_MAX: usize = 1024;
/// Ids in one want, at most.
pub const WANT_IDS_MAX: usize = 256;
/// Ids in one announcement, at most.
pub const ANNOUNCE_IDS_MAX: usize = 256;
/// Shortest bucket, bits: a bucket then lies in one gossip shard (the shard is taken from the
/// first two topic bytes).
pub const BUCKET_BITS_MIN: u16 = 16;
/// Longest bucket, bits (an exact topic).
pub const BUCKET_BITS_MAX: u16 = 256;
/// Bytes of a frame besides an envelope or id list.
const FRAME_OVERHEAD_BYTES: usize = 16;

/// Largest frame either side accepts, bytes: an envelope of `envelope_bytes_max` or a full
/// subscription, with framing.
pub fn frame_bytes_max(envelope_bytes_max: usize) -> usize {
    let subscribe = 5 + BUCKETS_MAX * 34;
    envelope_bytes_max.max(subscribe).max(3 + WANT_IDS_MAX * 32) + FRAME_OVERHEAD_BYTES
}

/// A light client's settings (`NodeConfig::light`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LightConfig {
    /// Service nodes kept (one primary sending envelopes, the others ids).
    pub services_target: usize,
    /// Bucket length, bits ([`BUCKET_BITS_MIN`]..=[`BUCKET_BITS_MAX`]; see the privacy note).
    pub bucket_bits: u16,
    /// How long one service node may lag behind the other before it counts as withholding, ms.
    pub grace_ms: u64,
    /// After a stream opens or the bucket set changes, a service node is not judged for this
    /// long, ms: it is joining the buckets' gossip shards, and until senders learn that, gossip
    /// may reach the other service node only (what it misses is still fetched).
    pub warmup_ms: u64,
    /// Ids tracked by the cross-check, at most (the oldest dropped unjudged).
    pub crosscheck_ids_max: usize,
    /// A service node found withholding is not chosen again for this long, ms.
    pub blame_ms: u64,
    /// Connection keep-alive (libp2p ping) period, ms: the only idle traffic per connection.
    pub keepalive_ms: u64,
    /// Own publications handed to the service nodes per second, at most; more wait in order
    /// ([`crate::light_pace`]). At most the service nodes' `publishes_per_sec`, which hold
    /// the stream (and so the client's other frames) while a client is over theirs.
    pub publishes_per_sec: u32,
}

impl Default for LightConfig {
    fn default() -> Self {
        Self {
            services_target: 2,
            bucket_bits: 16,
            grace_ms: 5_000,
            warmup_ms: 10_000,
            crosscheck_ids_max: 16_384,
            blame_ms: 600_000,
            keepalive_ms: 30_000,
            publishes_per_sec: LightServeLimits::default().publishes_per_sec,
        }
    }
}

/// A service node's burst of one client's publications, in seconds of its
/// `publishes_per_sec`; the client's own pacer keeps half of it (`light_pace`), so the two
/// buckets stay in step.
pub const PUBLISH_BURST_SECS: u32 = 4;

/// What a service node gives light clients, at most (`NodeConfig::light_serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LightServeLimits {
    /// Light clients served at once.
    pub clients_max: usize,
    /// Streams from one peer at once.
    pub clients_per_peer_max: usize,
    /// Streams from one IP address at once (the address of the peer's connection; a peer
    /// reached through a relay counts under the relay's).
    pub clients_per_ip_max: usize,
    /// Frames queued for one client, at most; beyond it (or `queue_bytes_max`) a frame is
    /// dropped and counted, and the client is told (`overflow`) so it back-fills from stores.
    pub queue_frames_max: usize,
    /// Bytes queued for one client, at most.
    pub queue_bytes_max: usize,
    /// Envelopes one client may publish per second (token bucket, burst
    /// [`PUBLISH_BURST_SECS`]×); beyond it the client's stream is not read until a token
    /// is due (back-pressure: nothing is dropped, the client's frames wait).
    pub publishes_per_sec: u32,
    /// Recent envelopes kept to answer `want` (any client's buckets), at most.
    pub recent_max: usize,
    /// Time to read the subscription after the stream opens, ms.
    pub setup_ms: u64,
    /// Test only: a Byzantine service node that forwards nothing (it still reads and
    /// answers the stream, so only the cross-check can tell).
    #[doc(hidden)]
    pub withhold: bool,
}

impl Default for LightServeLimits {
    fn default() -> Self {
        Self {
            clients_max: 256,
            clients_per_peer_max: 2,
            clients_per_ip_max: 16,
            queue_frames_max: 512,
            queue_bytes_max: 8 * 1024 * 1024,
            publishes_per_sec: 50,
            recent_max: 4_096,
            setup_ms: 10_000,
            withhold: false,
        }
    }
}

/// The first `bits` bits of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bucket {
    bits: u16,
    prefix: [u8; 32],
}

impl Bucket {
    /// The bucket of `topic`, `bits` long (clamped to [`BUCKET_BITS_MIN`]..=[`BUCKET_BITS_MAX`]).
    pub fn of(topic: &Topic, bits: u16) -> Self {
        let bits = bits.clamp(BUCKET_BITS_MIN, BUCKET_BITS_MAX);
        Self { bits, prefix: mask(topic.0, bits) }
    }

    /// Whether `topic` lies in this bucket.
    pub fn contains(&self, topic: &Topic) -> bool {
        mask(topic.0, self.bits) == self.prefix
    }

    /// The gossip shard every topic of this bucket is on.
    pub fn shard(&self) -> u16 {
        shard_of(&Topic(self.prefix)) % SHARDS
    }

    /// Its length, bits.
    pub fn bits(&self) -> u16 {
        self.bits
    }
}

/// A client's buckets, indexed for the service node's per-envelope match: one hash look-up per
/// distinct bucket length (one for a client of default buckets), not one comparison per
/// bucket (up to [`BUCKETS_MAX`] per client, for each of up to 256 clients, on the swarm's
/// event loop for every admitted envelope).
#[derive(Debug, Clone, Default)]
pub struct BucketSet {
    buckets: Vec<Bucket>,
    by_bits: Vec<(u16, HashSet<[u8; 32]>)>,
}

impl BucketSet {
    /// The set of `buckets`.
    pub fn new(buckets: Vec<Bucket>) -> Self {
        let mut by_bits: Vec<(u16, HashSet<[u8; 32]>)> = Vec::new();
        for b in &buckets {
            match by_bits.iter_mut().find(|(bits, _)| *bits == b.bits) {
                Some((_, set)) => {
                    set.insert(b.prefix);
                }
                None => by_bits.push((b.bits, HashSet::from([b.prefix]))),
            }
        }
        Self { buckets, by_bits }
    }

    /// Whether `topic` lies in one of the buckets.
    pub fn contains(&self, topic: &Topic) -> bool {
        self.by_bits.iter().any(|(bits, set)| set.contains(&mask(topic.0, *bits)))
    }

    /// The buckets.
    pub fn iter(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.iter()
    }
}

fn mask(mut b: [u8; 32], bits: u16) -> [u8; 32] {
    let bits = usize::from(bits);
    for (i, byte) in b.iter_mut().enumerate() {
        let start = i * 8;
        if start >= bits {
            *byte = 0;
        } else if start + 8 > bits {
            *byte &= 0xffu8 << (start + 8 - bits);
        }
    }
    b
}

/// What a service node sends a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Whole envelopes (the primary).
    Envelopes,
    /// Ids only (a secondary, for the cross-check).
    Ids,
}

/// Why a service node closed a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The frame version is not spoken here.
    Version,
    /// Too many clients (in all, or from this peer).
    Busy,
    /// A frame did not decode or came out of order.
    BadFrame,
}

/// A frame from a light client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// The buckets to feed and how (replaces any earlier subscription).
    Subscribe {
        /// Envelopes or ids.
        feed: Feed,
        /// Buckets, at most [`BUCKETS_MAX`].
        buckets: Vec<Bucket>,
    },
    /// An own envelope (encoded) to gossip.
    Publish(Vec<u8>),
    /// Envelopes wanted by id (announced earlier).
    Want(Vec<Id>),
}

/// A frame from a service node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFrame {
    /// An envelope (encoded) in a subscribed bucket, unchecked until admitted by the client.
    Envelope(Vec<u8>),
    /// Ids of envelopes in subscribed buckets.
    Ids(Vec<Id>),
    /// Frames dropped because the client's queue was full.
    Overflow {
        /// How many.
        dropped: u64,
    },
    /// The stream is closed for this reason.
    Refused(Refusal),
}

fn write_ids(w: &mut Writer, ids: &[Id]) {
    w.u16(ids.len().min(usize::from(u16::MAX)) as u16);
    for id in ids {
        w.raw(&id.0);
    }
}

fn read_ids(r: &mut Reader<'_>, max: usize) -> Result<Vec<Id>, DecodeError> {
    let n = usize::from(r.u16("count")?);
    if n > max {
        return Err(DecodeError::Invalid { field: "count", reason: "too many ids" });
    }
    (0..n).map(|_| r.array::<32>("id").map(Id)).collect()
}

impl ClientFrame {
    /// Canonical encoding (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(LIGHT_VERSION);
        match self {
            Self::Subscribe { feed, buckets } => {
                w.u8(1);
                w.u8(match feed {
                    Feed::Envelopes => 0,
                    Feed::Ids => 1,
                });
                w.u16(buckets.len().min(BUCKETS_MAX) as u16);
                for b in buckets.iter().take(BUCKETS_MAX) {
                    w.u16(b.bits);
                    w.raw(&b.prefix);
                }
            }
            Self::Publish(e) => {
                w.u8(2);
                w.bytes(e);
            }
            Self::Want(ids) => {
                w.u8(3);
                write_ids(&mut w, &ids[..ids.len().min(WANT_IDS_MAX)]);
            }
        }
        w.finish()
    }

    /// Decodes a frame body; envelopes are bounded by `envelope_bytes_max` (and checked later
    /// like gossip).
    pub fn decode(b: &[u8], envelope_bytes_max: usize) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version("light frame", LIGHT_VERSION)?;
        let f = match r.u8("kind")? {
            1 => {
                let feed = match r.u8("feed")? {
                    0 => Feed::Envelopes,
                    1 => Feed::Ids,
                    _ => return Err(DecodeError::Invalid { field: "feed", reason: "unknown" }),
                };
                let n = usize::from(r.u16("count")?);
                if n > BUCKETS_MAX {
                    return Err(DecodeError::Invalid { field: "count", reason: "too many buckets" });
                }
                let mut buckets = Vec::with_capacity(n);
                for _ in 0..n {
                    let bits = r.u16("bits")?;
                    let prefix = r.array::<32>("prefix")?;
                    if !(BUCKET_BITS_MIN..=BUCKET_BITS_MAX).contains(&bits) || mask(prefix, bits) != prefix {
                        return Err(DecodeError::Invalid { field: "bucket", reason: "not canonical" });
                    }
                    buckets.push(Bucket { bits, prefix });
                }
                Self::Subscribe { feed, buckets }
            }
            2 => Self::Publish(r.bytes(envelope_bytes_max, "envelope")?.to_vec()),
            3 => Self::Want(read_ids(&mut r, WANT_IDS_MAX)?),
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown" }),
        };
        r.finish()?;
        Ok(f)
    }
}

impl ServiceFrame {
    /// Canonical encoding (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(LIGHT_VERSION);
        match self {
            Self::Envelope(e) => {
                w.u8(1);
                w.bytes(e);
            }
            Self::Ids(ids) => {
                w.u8(2);
                write_ids(&mut w, &ids[..ids.len().min(ANNOUNCE_IDS_MAX)]);
            }
            Self::Overflow { dropped } => {
                w.u8(3);
                w.u64(*dropped);
            }
            Self::Refused(r) => {
                w.u8(4);
                w.u8(match r {
                    Refusal::Version => 1,
                    Refusal::Busy => 2,
                    Refusal::BadFrame => 3,
                });
            }
        }
        w.finish()
    }

    /// Decodes a frame body (envelopes bounded by `envelope_bytes_max`).
    pub fn decode(b: &[u8], envelope_bytes_max: usize) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        r.version("light frame", LIGHT_VERSION)?;
        let f = match r.u8("kind")? {
            1 => Self::Envelope(r.bytes(envelope_bytes_max, "envelope")?.to_vec()),
            2 => Self::Ids(read_ids(&mut r, ANNOUNCE_IDS_MAX)?),
            3 => Self::Overflow { dropped: r.u64("dropped")? },
            4 => Self::Refused(match r.u8("code")? {
                1 => Refusal::Version,
                2 => Refusal::Busy,
                3 => Refusal::BadFrame,
                _ => return Err(DecodeError::Invalid { field: "code", reason: "unknown" }),
            }),
            _ => return Err(DecodeError::Invalid { field: "kind", reason: "unknown" }),
        };
        r.finish()?;
        Ok(f)
    }
}

/// An id whose grace is over: who reported it, and who stayed silent (withholding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged<P> {
    /// The envelope.
    pub id: Id,
    /// Service nodes that reported it (where to fetch it if it was not delivered: an id
    /// announced by a secondary whose primary went away is fetched this way too).
    pub reported_by: Vec<P>,
    /// Service nodes connected when it was first reported that did not report it.
    pub silent: Vec<P>,
}

#[derive(Debug)]
struct Seen<P> {
    first_ms: u64,
    expected: Vec<P>,
    reported: Vec<P>,
}

/// The cross-check of service nodes: every id one of them reports is expected within
/// `grace_ms` from every other one connected at that moment and past its warm-up. Bounded by
/// `ids_max` (oldest first).
#[derive(Debug)]
pub struct CrossCheck<P> {
    grace_ms: u64,
    warmup_ms: u64,
    ids_max: usize,
    /// Service nodes with an open stream, and from when they are judged (ms).
    services: Vec<(P, u64)>,
    seen: HashMap<Id, Seen<P>>,
    order: VecDeque<Id>,
    /// Ids not to judge (the client's own publications), the last `ids_max`.
    own: crate::validate::SeenIds,
    /// Ids judged already, the last `ids_max`: a later report (the answer to a `want`, a late
    /// feed) is not a new id to expect from the others.
    judged: crate::validate::SeenIds,
}

impl<P: Clone + Eq> CrossCheck<P> {
    /// An empty cross-check.
    pub fn new(grace_ms: u64, warmup_ms: u64, ids_max: usize) -> Self {
        Self {
            grace_ms,
            warmup_ms,
            ids_max: ids_max.max(1),
            services: Vec::new(),
            seen: HashMap::new(),
            order: VecDeque::new(),
            own: crate::validate::SeenIds::new(ids_max.max(1)),
            judged: crate::validate::SeenIds::new(ids_max.max(1)),
        }
    }

    /// A service node's stream is open, or its subscription changed: ids first reported after
    /// its warm-up are expected from it too.
    pub fn service_up(&mut self, p: P, now_ms: u64) {
        let from = now_ms + self.warmup_ms;
        match self.services.iter_mut().find(|(s, _)| *s == p) {
            Some(s) => s.1 = from,
            None => self.services.push((p, from)),
        }
    }

    /// A service node's stream closed: nothing more is expected from it.
    pub fn service_down(&mut self, p: &P) {
        self.services.retain(|(s, _)| s != p);
        for s in self.seen.values_mut() {
            s.expected.retain(|x| x != p);
        }
    }

    /// A service node said it dropped frames (its queue for us overflowed): what it has not
    /// reported yet is not held against it, and it warms up again. Not withholding, but not free
    /// for it either: the client back-fills from the store nodes.
    pub fn excuse(&mut self, p: &P, now_ms: u64) {
        for s in self.seen.values_mut() {
            s.expected.retain(|x| x != p);
        }
        // What it dropped just before the notice may still be reported by the other one up to
        // a grace later.
        let quiet_ms = self.warmup_ms.max(self.grace_ms);
        if let Some(s) = self.services.iter_mut().find(|(s, _)| s == p) {
            s.1 = now_ms + quiet_ms;
        }
    }

    /// An own publication: its echo is not judged (the primary does not echo it).
    pub fn own(&mut self, id: Id) {
        self.own.insert(id);
        self.seen.remove(&id);
    }

    /// `from` reported `id` (an envelope or an announced id).
    pub fn reported(&mut self, id: Id, from: P, now_ms: u64) {
        if self.own.contains(&id) || self.judged.contains(&id) {
            return;
        }
        if let Some(s) = self.seen.get_mut(&id) {
            if !s.reported.contains(&from) {
                s.reported.push(from);
            }
            return;
        }
        while self.seen.len() >= self.ids_max {
            let Some(old) = self.order.pop_front() else { break };
            self.seen.remove(&old);
        }
        self.order.push_back(id);
        let expected =
            self.services.iter().filter(|(_, since)| *since <= now_ms).map(|(p, _)| p.clone()).collect();
        self.seen.insert(id, Seen { first_ms: now_ms, expected, reported: vec![from] });
    }

    /// Judges the ids whose grace is over.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Judged<P>> {
        let mut out = Vec::new();
        let grace = self.grace_ms;
        while let Some(id) = self.order.front().copied() {
            let Some(s) = self.seen.get(&id) else {
                self.order.pop_front();
                continue;
            };
            if s.first_ms + grace > now_ms {
                break;
            }
            self.order.pop_front();
            self.judged.insert(id);
            if let Some(s) = self.seen.remove(&id) {
                let silent = s.expected.iter().filter(|p| !s.reported.contains(p)).cloned().collect();
                out.push(Judged { id, reported_by: s.reported, silent });
            }
        }
        out
    }

    /// Ids being tracked.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is tracked.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_bucket_set_matches_exactly_what_its_buckets_match() {
        let topic = |i: u32| Topic(*blake3::hash(&i.to_be_bytes()).as_bytes());
        let buckets: Vec<Bucket> =
            (0..40u32).map(|i| Bucket::of(&topic(i), [16, 16, 20, 256][(i % 4) as usize])).collect();
        let set = BucketSet::new(buckets.clone());
        assert_eq!(set.iter().count(), buckets.len());
        let mut inside = 0;
        for i in 0..4_000u32 {
            let t = topic(i);
            let want = buckets.iter().any(|b| b.contains(&t));
            assert_eq!(set.contains(&t), want, "topic {i}");
            inside += usize::from(want);
        }
        assert!(inside >= 40, "the buckets' own topics match");
        assert!(!BucketSet::default().contains(&topic(0)));
    }

    #[test]
    fn buckets_match_their_prefix_only_and_lie_in_one_shard() {
        let t = Topic([0xab; 32]);
        let b = Bucket::of(&t, 20);
        assert!(b.contains(&t));
        let mut near = t.0;
        near[2] ^= 0x01; // bit 23: beyond the 20
        assert!(b.contains(&Topic(near)));
        let mut far = t.0;
        far[2] ^= 0x10; // bit 19: inside
        assert!(!b.contains(&Topic(far)));
        assert_eq!(b.shard(), shard_of(&t));
        assert_eq!(Bucket::of(&t, 3).bits(), BUCKET_BITS_MIN, "clamped");
        assert!(Bucket::of(&t, 256).contains(&t) && !Bucket::of(&t, 256).contains(&Topic(near)));
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let t = Topic([7; 32]);
        let frames = [
            ClientFrame::Subscribe {
                feed: Feed::Ids,
                buckets: vec![Bucket::of(&t, 16), Bucket::of(&t, 256)],
            },
            ClientFrame::Publish(vec![1, 2, 3]),
            ClientFrame::Want(vec![Id([1; 32]), Id([2; 32])]),
        ];
        for f in frames {
            assert_eq!(ClientFrame::decode(&f.encode(), 1024).unwrap(), f);
        }
        let frames = [
            ServiceFrame::Envelope(vec![9; 100]),
            ServiceFrame::Ids(vec![Id([3; 32])]),
            ServiceFrame::Overflow { dropped: 5 },
            ServiceFrame::Refused(Refusal::Busy),
        ];
        for f in frames {
            assert_eq!(ServiceFrame::decode(&f.encode(), 1024).unwrap(), f);
        }
        // Over the envelope bound, a wrong version, a non-canonical bucket, trailing bytes.
        assert!(ServiceFrame::decode(&ServiceFrame::Envelope(vec![0; 2000]).encode(), 1024).is_err());
        let mut v = ClientFrame::Want(vec![]).encode();
        v[0] = 2;
        assert!(ClientFrame::decode(&v, 1024).is_err());
        let mut s =
            ClientFrame::Subscribe { feed: Feed::Envelopes, buckets: vec![Bucket::of(&t, 16)] }.encode();
        let last = s.len() - 1;
        s[last] = 1; // a bit beyond the 16
        assert!(ClientFrame::decode(&s, 1024).is_err());
        let mut w = ClientFrame::Want(vec![Id([1; 32])]).encode();
        w.push(0);
        assert!(ClientFrame::decode(&w, 1024).is_err());
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 1) as u8).collect();
            let _ = ClientFrame::decode(&junk, 1024);
            let _ = ServiceFrame::decode(&junk, 1024);
        }
    }

    proptest::proptest! {
        /// Garbage never panics a decoder, and what decodes is canonical (re-encodes to the
        /// same bytes).
        #[test]
        fn frames_from_garbage(kind in 0u8..6, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut b = vec![LIGHT_VERSION, kind];
            b.extend_from_slice(&body);
            if let Ok(f) = ClientFrame::decode(&b, 256) {
                proptest::prop_assert_eq!(f.encode(), b.clone());
            }
            if let Ok(f) = ServiceFrame::decode(&b, 256) {
                proptest::prop_assert_eq!(f.encode(), b);
            }
        }
    }

    #[test]
    fn a_service_node_silent_past_the_grace_is_named_once_per_id() {
        let mut c: CrossCheck<u8> = CrossCheck::new(1_000, 0, 8);
        c.service_up(1, 0);
        c.service_up(2, 0);
        let (a, b, own) = (Id([1; 32]), Id([2; 32]), Id([3; 32]));
        c.reported(a, 1, 0);
        c.reported(a, 2, 500); // both: fine
        c.reported(b, 1, 100); // only 1
        c.own(own);
        c.reported(own, 2, 100); // own echo: not judged
        assert!(c.tick(999).is_empty(), "within the grace");
        let v = c.tick(1_100);
        assert_eq!(
            v,
            vec![
                Judged { id: a, reported_by: vec![1, 2], silent: vec![] },
                Judged { id: b, reported_by: vec![1], silent: vec![2] },
            ]
        );
        assert!(c.tick(5_000).is_empty() && c.is_empty());
        // A service node that went away is not expected any more.
        let f = Id([7; 32]);
        c.reported(f, 1, 6_000);
        c.service_down(&2);
        assert_eq!(c.tick(8_000), vec![Judged { id: f, reported_by: vec![1], silent: vec![] }]);
        // Bounded: the oldest are dropped unjudged.
        c.service_up(2, 0);
        for i in 0..20u8 {
            c.reported(Id([i + 10; 32]), 1, 9_000);
        }
        assert_eq!(c.len(), 8);
    }

    #[test]
    fn a_service_node_is_not_judged_during_its_warm_up() {
        let mut c: CrossCheck<u8> = CrossCheck::new(1_000, 5_000, 8);
        c.service_up(1, 0);
        c.service_up(2, 0);
        let (a, b, d) = (Id([1; 32]), Id([2; 32]), Id([4; 32]));
        c.reported(a, 1, 4_000); // 2 still warming up
        assert_eq!(c.tick(6_000), vec![Judged { id: a, reported_by: vec![1], silent: vec![] }]);
        c.reported(b, 1, 5_000); // warmed up
        assert_eq!(c.tick(7_000), vec![Judged { id: b, reported_by: vec![1], silent: vec![2] }]);
        // A changed subscription starts the warm-up again.
        c.service_up(2, 7_000);
        c.reported(d, 1, 8_000);
        assert_eq!(c.tick(10_000), vec![Judged { id: d, reported_by: vec![1], silent: vec![] }]);
        // An overflow notice excuses what is pending and starts the warm-up again.
        let e = Id([5; 32]);
        c.reported(e, 1, 20_000);
        c.excuse(&2, 20_500);
        c.reported(Id([6; 32]), 1, 21_000);
        let judged = c.tick(30_000);
        assert!(judged.iter().all(|j| j.silent.is_empty()), "{judged:?}");
        // A judged id reported again (the answer to a want) is not judged again.
        c.reported(e, 1, 40_000);
        assert!(c.is_empty() && c.tick(50_000).is_empty());
    }
}
