//! The proof-of-work price per topic: what store nodes under load asked for (`NeedsWork
//! { base_bits }`, learned by the net layer and handed in by the shell). The engine mines each
//! envelope at the higher of its configured difficulty and its topic's price, before the
//! envelope id (which covers the proof of work) is linked to by children: a store refusal
//! cannot be answered by mining again.
//!
//! Bounded: at most [`WORK_PRICES_MAX`] topics, prices at most [`WORK_BITS_MAX`]. Overflow
//! policy: a new topic priced above the cheapest kept one replaces it (the cheapest is the one
//! closest to the floor, so forgetting it costs the least); otherwise the new price is
//! ignored, and that topic is mined at the floor until a slot frees.

use std::collections::HashMap;

use cairn_proto::Topic;
use cairn_proto::pow::Difficulty;

use super::Engine;

/// Topics whose price is kept at most.
pub const WORK_PRICES_MAX: usize = 4_096;
/// Highest base bits taken from a price (the net layer's own cap on what a store may ask is
/// 20; higher would make one send's mining unbounded in practice).
pub const WORK_BITS_MAX: u32 = 20;

/// Prices above the floor, by topic.
#[derive(Debug, Default)]
pub(super) struct WorkPrices {
    bits: HashMap<Topic, u32>,
}

impl WorkPrices {
    /// Records `topic`'s price (clamped to [`WORK_BITS_MAX`]); at or below `floor` the entry
    /// goes. Returns whether the price is now in force.
    pub(super) fn set(&mut self, topic: Topic, base_bits: u32, floor: u32) -> bool {
        let bits = base_bits.min(WORK_BITS_MAX);
        if bits <= floor {
            self.bits.remove(&topic);
            return false;
        }
        if self.bits.len() >= WORK_PRICES_MAX && !self.bits.contains_key(&topic) {
            let cheapest = self.bits.iter().min_by_key(|(t, b)| (**b, **t)).map(|(t, b)| (*t, *b));
            match cheapest {
                Some((t, b)) if b < bits => {
                    self.bits.remove(&t);
                }
                _ => return false,
            }
        }
        self.bits.insert(topic, bits);
        true
    }

    /// The difficulty to mine `topic` at: the floor, or its price when higher.
    pub(super) fn difficulty(&self, topic: &Topic, floor: Difficulty) -> Difficulty {
        match self.bits.get(topic) {
            Some(b) if *b > floor.base_bits => Difficulty { base_bits: *b },
            _ => floor,
        }
    }

    /// Topics priced.
    pub(super) fn len(&self) -> usize {
        self.bits.len()
    }
}

impl Engine {
    /// The net layer's proof-of-work price for `topic` (base bits; `NodeHandle::work_bits`):
    /// envelopes of `topic` mined from now on use it when it is above the configured
    /// difficulty. Never blocks; bounded ([`WORK_PRICES_MAX`]).
    pub fn set_work_price(&mut self, topic: Topic, base_bits: u32) {
        let floor = self.cfg.difficulty.base_bits;
        if self.work_prices.set(topic, base_bits, floor) {
            tracing::debug!(
                "mining topic {} at {} base bits (store load)",
                hex::encode(&topic.0[..4]),
                base_bits.min(WORK_BITS_MAX)
            );
        }
    }

    /// The difficulty envelopes of `topic` are mined at now.
    pub fn work_difficulty(&self, topic: &Topic) -> Difficulty {
        self.work_prices.difficulty(topic, self.cfg.difficulty)
    }

    /// Topics mined above the configured difficulty now.
    pub fn work_prices_len(&self) -> usize {
        self.work_prices.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prices_are_bounded_clamped_and_the_cheapest_gives_way() {
        let mut p = WorkPrices::default();
        let floor = Difficulty { base_bits: 8 };
        let t = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            Topic(b)
        };
        assert_eq!(p.difficulty(&t(0), floor), floor);
        assert!(!p.set(t(0), 8, 8), "at the floor: nothing kept");
        assert!(p.set(t(0), 50, 8));
        assert_eq!(p.difficulty(&t(0), floor).base_bits, WORK_BITS_MAX, "clamped");
        assert!(!p.set(t(0), 3, 8), "back to the floor");
        assert_eq!(p.len(), 0);
        for i in 0..WORK_PRICES_MAX as u32 {
            assert!(p.set(t(i), 9 + i % 3, 8));
        }
        assert_eq!(p.len(), WORK_PRICES_MAX);
        // full: a price no higher than the cheapest kept is ignored …
        assert!(!p.set(t(u32::MAX), 9, 8));
        assert_eq!(p.difficulty(&t(u32::MAX), floor), floor);
        // … a higher one replaces the cheapest; the bound holds; updates of kept topics work
        assert!(p.set(t(u32::MAX), 15, 8));
        assert_eq!(p.len(), WORK_PRICES_MAX);
        assert_eq!(p.difficulty(&t(u32::MAX), floor).base_bits, 15);
        assert_eq!(p.difficulty(&t(0), floor), floor, "t(0) was the cheapest (9 bits, smallest topic)");
        assert!(p.set(t(1), 12, 8));
        assert_eq!(p.difficulty(&t(1), floor).base_bits, 12);
    }

    #[test]
    fn the_engine_mines_at_the_price_it_was_told() {
        use std::sync::Arc;

        use cairn_proto::envelope::pad;
        use cairn_proto::pow::{leading_zero_bits, required_bits};
        use cairn_proto::{Envelope, Limits};

        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        let db = Arc::new(redb::Database::create(dir.path().join("node.redb")).unwrap());
        let history = Arc::new(cairn_store::Store::open(&dir.path().join("history.redb"), limits).unwrap());
        let mut cfg = super::super::EngineConfig::new(limits);
        cfg.difficulty = Difficulty { base_bits: 0 };
        let id = cairn_crypto::Identity::generate(1).unwrap();
        let mut engine = Engine::open(db, history, super::super::IdentityKeys::of(&id), cfg).unwrap();
        let loaded = Topic([3; 32]);
        let other = Topic([4; 32]);
        let env = |topic| Envelope::new(topic, 1, 60, vec![], pad(b"hello", &limits).unwrap());
        let bits_of = |e: &Envelope, base_bits| {
            required_bits(e.header.payload_len, e.header.ttl_secs, Difficulty { base_bits })
        };

        // told nothing: the floor (0 bits: any id)
        assert_eq!(engine.work_difficulty(&loaded).base_bits, 0);
        engine.set_work_price(loaded, 12);
        assert_eq!(engine.work_difficulty(&loaded).base_bits, 12);
        assert_eq!(engine.work_difficulty(&other).base_bits, 0, "another topic keeps the floor");
        // several envelopes: each one's id carries the price (one at the floor by luck is
        // 1 in 4,096; three in a row would not pass)
        for n in 0..3u64 {
            let mut e = env(loaded);
            e.header.pow_nonce = n << 40;
            engine.mine(&mut e).unwrap();
            let need = bits_of(&e, 12);
            assert!(need >= 12);
            assert!(leading_zero_bits(&e.id()) >= need, "mined below the learned price");
            assert!(cairn_proto::pow::check(&e.header, Difficulty { base_bits: 12 }));
        }
        // the price falls back to the floor: mining is cheap again
        engine.set_work_price(loaded, 0);
        assert_eq!(engine.work_difficulty(&loaded).base_bits, 0);
        assert_eq!(engine.work_prices_len(), 0);
    }
}
