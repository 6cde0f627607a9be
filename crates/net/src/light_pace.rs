//! A light client's own publications, paced to what its service nodes gossip (sans-IO).
//!
//! A service node gossips at most [`crate::light::LightServeLimits::publishes_per_sec`] of one
//! client's publications (token bucket, burst [`PUBLISH_BURST_SECS`]×). Over it, it stops
//! reading the client's stream until a token is due: nothing is dropped, but the client's
//! other frames (a new subscription, a want) wait behind its publications. (It used to drop
//! them without a word: a bench of one light sender at 100 msg/s left 27 of 9,000 deliveries
//! missing 290 s after the last send.)
//! The client therefore keeps its own bucket at the same rate with half the burst (the
//! service's bucket, filled at the same rate from a larger start, then always has a token
//! for what the client sends, even when the network bunches frames), queues what is over
//! it, in order, up to a bound, and hands a session only what its queue has room for
//! ([`PublishPacer::due`]'s `max`).

use std::collections::VecDeque;

use crate::light::PUBLISH_BURST_SECS;
use crate::validate::RateLimiter;

/// Publications waiting for the pace, at most. Beyond it the oldest is dropped from the
/// gossip path (it is still stored by the store nodes; receivers fetch it as an ancestor of
/// a later message or in a back-fill) and counted.
pub const PUBLISH_QUEUE_MAX: usize = 1_024;

/// Bytes of publications waiting for the pace, at most (the same overflow policy).
pub const PUBLISH_QUEUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Paces a light client's publications (see the module docs).
#[derive(Debug)]
pub struct PublishPacer {
    bucket: RateLimiter<()>,
    queue: VecDeque<Vec<u8>>,
    queued_bytes: usize,
    dropped: u64,
}

impl PublishPacer {
    /// Publications at `per_sec` sustained, with half the service's burst.
    pub fn new(per_sec: u32) -> Self {
        let per_sec = per_sec.max(1);
        let burst = per_sec.saturating_mul(PUBLISH_BURST_SECS / 2).max(1);
        Self {
            bucket: RateLimiter::new(per_sec, burst, 1),
            queue: VecDeque::new(),
            queued_bytes: 0,
            dropped: 0,
        }
    }

    /// Queues an encoded envelope behind those waiting; the oldest go when a bound is passed.
    pub fn offer(&mut self, bytes: Vec<u8>) {
        self.queued_bytes += bytes.len();
        self.queue.push_back(bytes);
        while self.queue.len() > PUBLISH_QUEUE_MAX || self.queued_bytes > PUBLISH_QUEUE_BYTES_MAX {
            let Some(old) = self.queue.pop_front() else { break };
            self.queued_bytes -= old.len();
            self.dropped += 1;
        }
    }

    /// The publications the pace allows at `now_ms`, oldest first, at most `max` (the room
    /// the caller has for them; the rest wait in order).
    pub fn due(&mut self, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !self.queue.is_empty() && out.len() < max && self.bucket.allow(&(), now_ms) {
            if let Some(b) = self.queue.pop_front() {
                self.queued_bytes -= b.len();
                out.push(b);
            }
        }
        out
    }

    /// Publications waiting now.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Publications dropped from the gossip path on a full queue, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn a_burst_goes_out_at_once_and_the_rest_at_the_sustained_rate_in_order() {
        let mut p = PublishPacer::new(50);
        for i in 0..300 {
            p.offer(env(i));
        }
        let first = p.due(1_000, usize::MAX);
        assert_eq!(first.len(), 100, "burst of 2 × 50");
        assert_eq!(first[0], env(0));
        assert!(p.due(1_000, usize::MAX).is_empty(), "nothing more at the same instant");
        let next = p.due(1_200, usize::MAX);
        assert_eq!(next.len(), 10, "50/s for 200 ms");
        assert_eq!(next[0], env(100), "in order");
        assert_eq!(p.waiting(), 190);
        assert_eq!(p.dropped(), 0);
    }

    #[test]
    fn what_the_pacer_lets_through_a_service_bucket_of_the_same_rate_accepts() {
        let mut p = PublishPacer::new(50);
        let mut arrivals = Vec::new();
        for t in 0..2_000u64 {
            // 100 offered per second (twice the rate), the pacer asked every 10 ms.
            p.offer(env(t as u32));
            for _ in p.due(t * 10, usize::MAX) {
                // Each frame is delayed 0-299 ms on the way, so arrivals bunch up.
                let i = arrivals.len() as u64;
                arrivals.push(t * 10 + (i * 7_919) % 300);
            }
        }
        arrivals.sort_unstable();
        assert!(arrivals.len() >= 1_000, "about 50/s for 20 s plus the burst, got {}", arrivals.len());
        // The service's bucket, as in light_serve.rs.
        let mut service = RateLimiter::new(50, 50 * PUBLISH_BURST_SECS, 1);
        for (n, at) in arrivals.iter().enumerate() {
            assert!(service.allow(&(), *at), "the service dropped frame {n} (at {at} ms)");
        }
        // Without the pacer, the same offer overruns it.
        let mut unpaced = RateLimiter::new(50, 50 * PUBLISH_BURST_SECS, 1);
        let refused = (0..2_000u64).filter(|t| !unpaced.allow(&(), t * 10)).count();
        assert!(refused > 500, "{refused}");
    }

    #[test]
    fn no_more_than_the_room_given_leaves_and_the_rest_keeps_its_place() {
        let mut p = PublishPacer::new(50);
        for i in 0..10 {
            p.offer(env(i));
        }
        assert_eq!(p.due(0, 3), vec![env(0), env(1), env(2)]);
        assert!(p.due(0, 0).is_empty(), "no room, nothing taken");
        assert_eq!(p.due(0, usize::MAX), (3..10).map(env).collect::<Vec<_>>());
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let mut p = PublishPacer::new(1);
        for i in 0..(PUBLISH_QUEUE_MAX as u32 + 5) {
            p.offer(env(i));
        }
        assert_eq!(p.waiting(), PUBLISH_QUEUE_MAX);
        assert_eq!(p.dropped(), 5);
        assert_eq!(p.due(0, usize::MAX)[0], env(5), "the oldest five went");
    }
}
