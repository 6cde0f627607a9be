//! Envelope admission for relaying: a pure function of the bytes, the time and what was seen.
//!
//! A relay forwards an envelope only if it decodes canonically within the size limits (which
//! also checks the padding class and payload hash), carries enough proof of work for its size
//! and TTL, is inside the timestamp window, is new, and its forwarding peer is within its rate.
//! The verdict maps onto gossipsub's `Accept` / `Reject` (the peer is at fault: scored) /
//! `Ignore` (nobody is provably at fault: dropped without penalty). Over-rate and clock-skewed
//! envelopes are ignored, not rejected: an honest relay forwards a flood or a skewed sender's
//! mail without being able to tell, and penalising it would make honest nodes graylist each
//! other under a flood. What is dropped here is fetched again from the topic's store nodes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{DecodeError, Envelope, Id, Limits};

/// Admission settings. Every limit has its unit in its name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionConfig {
    /// Decoding limits (envelope size, parents).
    pub limits: Limits,
    /// Proof-of-work difficulty.
    pub difficulty: Difficulty,
    /// How far in the future a timestamp may be, in ms.
    pub future_skew_ms_max: u64,
    /// Longest TTL accepted, in seconds (default 30 days).
    pub ttl_secs_max: u32,
    /// Sustained envelopes per second accepted from one forwarding peer (a relay forwards
    /// every conversation it meshes for, so this bounds CPU, not one sender).
    pub peer_rate_per_sec: u32,
    /// Burst allowance above the sustained rate, in envelopes.
    pub peer_burst: u32,
    /// Ids remembered to drop duplicates.
    pub seen_ids_max: usize,
    /// Peers tracked by the rate limiter (the least recently seen are forgotten).
    pub rate_peers_max: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            difficulty: Difficulty::default(),
            future_skew_ms_max: 5 * 60 * 1000,
            ttl_secs_max: 30 * 86_400,
            peer_rate_per_sec: 2_000,
            peer_burst: 4_000,
            seen_ids_max: 200_000,
            rate_peers_max: 4096,
        }
    }
}

/// Why an envelope was refused and whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: deliver and forward.
    Accept(Box<Envelope>, Id),
    /// The forwarding peer sent something invalid: drop and penalise.
    Reject(RejectReason),
    /// Drop without penalty (duplicate, expired).
    Ignore(IgnoreReason),
}

/// Invalid input: the peer is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// Did not decode (oversized, non-canonical, wrong padding class, payload hash).
    Malformed(DecodeError),
    /// Erased envelopes are never relayed.
    NoPayload,
    /// Not enough proof of work for its size and TTL.
    InsufficientWork,
    /// TTL above the maximum.
    TtlTooLong,
}

/// Dropped without blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Already seen.
    Duplicate,
    /// Past its TTL.
    Expired,
    /// Timestamp too far in the future (the author's clock, not the forwarder's fault).
    FromTheFuture,
    /// The forwarding peer is over its rate (it may be relaying someone's flood).
    OverRate,
}

/// A bounded set of recently seen ids (FIFO eviction).
#[derive(Debug, Default)]
pub struct SeenIds {
    set: HashSet<Id>,
    order: VecDeque<Id>,
    max: usize,
}

impl SeenIds {
    /// Remembers at most `max` ids.
    pub fn new(max: usize) -> Self {
        Self { set: HashSet::new(), order: VecDeque::new(), max: max.max(1) }
    }
    /// Inserts; returns false if it was already there.
    pub fn insert(&mut self, id: Id) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
    /// True if remembered.
    pub fn contains(&self, id: &Id) -> bool {
        self.set.contains(id)
    }
    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }
    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Per-peer token buckets, bounded in the number of peers tracked.
#[derive(Debug)]
pub struct RateLimiter<P> {
    buckets: HashMap<P, (f64, u64)>,
    rate_per_sec: f64,
    burst: f64,
    peers_max: usize,
}

impl<P: Eq + Hash + Clone> RateLimiter<P> {
    /// `rate_per_sec` sustained, `burst` extra, at most `peers_max` peers tracked.
    pub fn new(rate_per_sec: u32, burst: u32, peers_max: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            peers_max: peers_max.max(1),
        }
    }

    /// Takes one token for `peer` at `now_ms`; false if the peer is over its rate.
    pub fn allow(&mut self, peer: &P, now_ms: u64) -> bool {
        self.allow_n(peer, 1, now_ms)
    }

    /// Takes `n` tokens for `peer` at `now_ms` (all or none); false if the peer is over its rate.
    pub fn allow_n(&mut self, peer: &P, n: u32, now_ms: u64) -> bool {
        let n = f64::from(n.max(1));
        if !self.buckets.contains_key(peer) && self.buckets.len() >= self.peers_max {
            // Forget the peer seen longest ago; bounded memory under a Sybil flood.
            if let Some(old) = self.buckets.iter().min_by_key(|(_, (_, t))| *t).map(|(p, _)| p.clone()) {
                self.buckets.remove(&old);
            }
        }
        let (tokens, last) = self.buckets.entry(peer.clone()).or_insert((self.burst, now_ms));
        let elapsed_s = now_ms.saturating_sub(*last) as f64 / 1000.0;
        *tokens = (*tokens + elapsed_s * self.rate_per_sec).min(self.burst);
        *last = now_ms;
        if *tokens >= n {
            *tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Decides what to do with envelopes arriving from peers.
#[derive(Debug)]
pub struct Admission<P> {
    /// Settings.
    pub config: AdmissionConfig,
    seen: SeenIds,
    rate: RateLimiter<P>,
}

impl<P: Eq + Hash + Clone> Admission<P> {
    /// A fresh admission state.
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            seen: SeenIds::new(config.seen_ids_max),
            rate: RateLimiter::new(config.peer_rate_per_sec, config.peer_burst, config.rate_peers_max),
            config,
        }
    }

    /// Marks an id as seen (e.g. our own publications).
    pub fn mark_seen(&mut self, id: Id) {
        self.seen.insert(id);
    }

    /// The verdict for `bytes` forwarded by `peer` at `now_ms`.
    pub fn check(&mut self, peer: &P, bytes: &[u8], now_ms: u64) -> Verdict {
        self.check_inner(peer, bytes, now_ms, true)
    }

    /// The same checks and costs (rate, size, proof of work, time window) for an envelope
    /// arriving in the stem phase, without remembering it as seen: its gossip copy, once it
    /// is diffused, must still be accepted and forwarded here. `Duplicate` means gossip
    /// already brought it.
    pub fn check_stem(&mut self, peer: &P, bytes: &[u8], now_ms: u64) -> Verdict {
        self.check_inner(peer, bytes, now_ms, false)
    }

    fn check_inner(&mut self, peer: &P, bytes: &[u8], now_ms: u64, remember: bool) -> Verdict {
        if !self.rate.allow(peer, now_ms) {
            return Verdict::Ignore(IgnoreReason::OverRate);
        }
        let env = match Envelope::decode(bytes, &self.config.limits) {
            Ok(e) => e,
            Err(e) => return Verdict::Reject(RejectReason::Malformed(e)),
        };
        if env.payload.is_none() {
            return Verdict::Reject(RejectReason::NoPayload);
        }
        let h = &env.header;
        if h.ttl_secs > self.config.ttl_secs_max {
            return Verdict::Reject(RejectReason::TtlTooLong);
        }
        if h.timestamp_ms > now_ms.saturating_add(self.config.future_skew_ms_max) {
            return Verdict::Ignore(IgnoreReason::FromTheFuture);
        }
        let id = env.id();
        if !pow::check(h, self.config.difficulty) {
            return Verdict::Reject(RejectReason::InsufficientWork);
        }
        if h.timestamp_ms.saturating_add(u64::from(h.ttl_secs) * 1000) < now_ms {
            return Verdict::Ignore(IgnoreReason::Expired);
        }
        let new = if remember { self.seen.insert(id) } else { !self.seen.contains(&id) };
        if !new {
            return Verdict::Ignore(IgnoreReason::Duplicate);
        }
        Verdict::Accept(Box::new(env), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::Topic;
    use cairn_proto::envelope::pad;

    fn mined(ts: u64, ttl: u32, d: Difficulty) -> Envelope {
        let mut e =
            Envelope::new(Topic([1; 32]), ts, ttl, vec![], pad(b"hello", &Limits::default()).unwrap());
        pow::mine(&mut e.header, d, 1 << 24).unwrap();
        e
    }

    fn adm() -> Admission<u32> {
        Admission::new(AdmissionConfig::default())
    }

    #[test]
    fn accepts_then_drops_duplicates() {
        let mut a = adm();
        let e = mined(1_000_000, 3600, Difficulty::default());
        assert!(matches!(a.check(&1, &e.encode(), 1_000_000), Verdict::Accept(..)));
        assert_eq!(a.check(&2, &e.encode(), 1_000_001), Verdict::Ignore(IgnoreReason::Duplicate));
    }

    #[test]
    fn rejects_garbage_oversize_unworked_and_erased_ignores_future() {
        let mut a = adm();
        let now = 10_000_000;
        assert!(matches!(a.check(&1, b"garbage", now), Verdict::Reject(RejectReason::Malformed(_))));
        let huge = vec![1u8; 300 * 1024];
        assert!(matches!(
            a.check(&1, &huge, now),
            Verdict::Reject(RejectReason::Malformed(DecodeError::TooLarge { field: "envelope", .. }))
        ));
        // Pick a nonce that does not carry enough work (most do not), so the check always runs.
        let mut lazy =
            Envelope::new(Topic([2; 32]), now, 3600, vec![], pad(b"x", &Limits::default()).unwrap());
        while pow::check(&lazy.header, Difficulty::default()) {
            lazy.header.pow_nonce += 1;
        }
        assert_eq!(a.check(&1, &lazy.encode(), now), Verdict::Reject(RejectReason::InsufficientWork));
        let future = mined(now + 3_600_000, 3600, Difficulty::default());
        assert_eq!(a.check(&1, &future.encode(), now), Verdict::Ignore(IgnoreReason::FromTheFuture));
        let mut erased = mined(now, 3600, Difficulty::default());
        erased.erase();
        assert_eq!(a.check(&1, &erased.encode(), now), Verdict::Reject(RejectReason::NoPayload));
        let old = mined(1, 60, Difficulty::default());
        assert_eq!(a.check(&1, &old.encode(), now), Verdict::Ignore(IgnoreReason::Expired));
    }

    #[test]
    fn over_rate_is_ignored_without_blame_and_a_busy_relay_fits_the_default() {
        let mut a = adm();
        let now = 10_000_000;
        let envs: Vec<Vec<u8>> =
            (0..1_500).map(|i| mined(now + i, 3600, Difficulty::default()).encode()).collect();
        // One second of a relay forwarding 1,500 envelopes/s (a busy chat) passes.
        let accepted = envs
            .iter()
            .enumerate()
            .filter(|(i, e)| matches!(a.check(&1, e, now + *i as u64 * 2 / 3), Verdict::Accept(..)));
        assert_eq!(accepted.count(), 1_500);
        // A flood beyond the burst is dropped, and never as the forwarder's fault.
        let mut a = adm();
        let burst = AdmissionConfig::default().peer_burst as usize;
        let verdicts: Vec<Verdict> =
            envs.iter().chain(envs.iter()).chain(envs.iter()).map(|e| a.check(&7, e, now)).collect();
        assert!(verdicts.iter().all(|v| !matches!(v, Verdict::Reject(_))));
        let over = verdicts.iter().filter(|v| **v == Verdict::Ignore(IgnoreReason::OverRate)).count();
        assert_eq!(over, 4_500 - burst);
    }

    #[test]
    fn rate_limit_is_per_peer_and_refills() {
        let mut r = RateLimiter::new(10, 5, 100);
        let allowed = (0..20).filter(|_| r.allow(&1u32, 0)).count();
        assert_eq!(allowed, 5, "burst only");
        assert!(r.allow(&2u32, 0), "another peer has its own bucket");
        assert!(!r.allow(&1u32, 50));
        assert!(r.allow(&1u32, 200), "refilled after 200 ms at 10/s");
    }

    #[test]
    fn a_batch_takes_all_its_tokens_or_none() {
        let mut r = RateLimiter::new(10, 20, 100);
        assert!(r.allow_n(&1u32, 15, 0));
        assert!(!r.allow_n(&1u32, 10, 0), "5 left: a batch of 10 is refused whole");
        assert!(r.allow_n(&1u32, 5, 0), "and took nothing");
        assert!(!r.allow(&1u32, 0));
        assert!(r.allow_n(&1u32, 10, 1000), "10 refilled in a second");
    }

    #[test]
    fn limiter_and_seen_set_stay_bounded() {
        let mut r = RateLimiter::new(1, 1, 64);
        for p in 0..10_000u32 {
            r.allow(&p, u64::from(p));
        }
        assert!(r.buckets.len() <= 64);
        let mut s = SeenIds::new(100);
        for i in 0..1000u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            s.insert(Id(b));
        }
        assert_eq!(s.len(), 100);
    }
}
