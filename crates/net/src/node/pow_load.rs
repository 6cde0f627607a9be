//! Proof of work that rises with a store node's load.
//!
//! A store node asks for `base_bits` of work (see [`cairn_proto::pow`]) that grow with its
//! recent accept rate and its fill level ([`required_base_bits`], a pure function): each
//! doubling of the accept rate over the target adds one bit, and so does each halving of the
//! free space once the store is half full, between the configured floor and
//! [`LOAD_BITS_MAX`]. An envelope with enough work for the floor but not for the load is
//! refused with the typed outcome `NeedsWork { base_bits }`: the sender learns the price and
//! mines its next envelopes for it (see `NodeHandle::work_bits`). A flood is paid for: at
//! 20 bits each envelope costs its sender about a million hashes, 4,096 times the floor's price,
//! while the store checks it with one hash.

use std::collections::HashMap;

use libp2p::PeerId;

/// Highest base bits a loaded store asks for (about 10^6 hashes for a 1 KiB, one-day envelope:
/// a second or so of one core).
pub(super) const LOAD_BITS_MAX: u32 = 20;
/// Length of the accept-rate window, ms.
pub(super) const LOAD_WINDOW_MS: u64 = 10_000;
/// How long a sender remembers a store's asked-for bits, ms.
pub(super) const DEMAND_KEEP_MS: u64 = 60_000;

fn floor_log2(x: u64) -> u32 {
    if x == 0 { 0 } else { 63 - x.leading_zeros() }
}

/// The base bits a store asks for: `floor` plus one bit per doubling of `accepted_per_window`
/// over `target_per_window` (from the first doubling), or one bit per halving of the free
/// space once at least half full (`fill_permille`, 0..=1000), whichever is more; capped at
/// `max(floor, LOAD_BITS_MAX)`.
pub(super) fn required_base_bits(
    floor: u32,
    accepted_per_window: u64,
    target_per_window: u64,
    fill_permille: u32,
) -> u32 {
    let cap = floor.max(LOAD_BITS_MAX);
    let target = target_per_window.max(1);
    let rate_bits =
        if accepted_per_window >= 2 * target { floor_log2(accepted_per_window / target) } else { 0 };
    let free = 1000u64.saturating_sub(u64::from(fill_permille.min(1000))).max(1);
    let fill_bits = floor_log2(1000 / free);
    floor.saturating_add(rate_bits.max(fill_bits)).min(cap)
}

/// A store node's accept-rate estimate: a sliding window of [`LOAD_WINDOW_MS`] made of the
/// current and the previous window's counts (the previous one weighted by its overlap).
#[derive(Debug, Default, Clone)]
pub(super) struct LoadMeter {
    start_ms: u64,
    current: u64,
    previous: u64,
}

impl LoadMeter {
    fn roll(&mut self, now_ms: u64) {
        if now_ms >= self.start_ms + 2 * LOAD_WINDOW_MS {
            self.previous = 0;
            self.current = 0;
            self.start_ms = now_ms;
        } else if now_ms >= self.start_ms + LOAD_WINDOW_MS {
            self.previous = self.current;
            self.current = 0;
            self.start_ms += LOAD_WINDOW_MS;
        }
    }

    /// Counts `n` accepted envelopes at `now_ms`.
    pub(super) fn accepted(&mut self, n: u64, now_ms: u64) {
        self.roll(now_ms);
        self.current = self.current.saturating_add(n);
    }

    /// Envelopes accepted over the last window, estimated.
    pub(super) fn per_window(&mut self, now_ms: u64) -> u64 {
        self.roll(now_ms);
        let elapsed = now_ms.saturating_sub(self.start_ms).min(LOAD_WINDOW_MS);
        let weight = LOAD_WINDOW_MS - elapsed;
        self.current + self.previous * weight / LOAD_WINDOW_MS
    }
}

/// What a sender learned: the base bits each store node asked for, until when (ms); at most
/// `max` stores (expired entries dropped first, then the insert is skipped).
#[derive(Debug, Default)]
pub(super) struct Demands {
    by_store: HashMap<PeerId, (u32, u64)>,
}

impl Demands {
    /// Records that `store` asked for `bits` at `now_ms`.
    pub(super) fn record(&mut self, store: PeerId, bits: u32, now_ms: u64, max: usize) {
        self.by_store.retain(|_, (_, until)| *until > now_ms);
        if self.by_store.len() < max || self.by_store.contains_key(&store) {
            self.by_store.insert(store, (bits, now_ms + DEMAND_KEEP_MS));
        }
    }

    /// The most bits any of `stores` asks for now (`floor` if none asks more).
    pub(super) fn bits_for(&self, stores: &[PeerId], floor: u32, now_ms: u64) -> u32 {
        stores
            .iter()
            .filter_map(|s| self.by_store.get(s))
            .filter(|(_, until)| *until > now_ms)
            .map(|(b, _)| *b)
            .fold(floor, u32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_rise_with_rate_and_fill_within_bounds() {
        assert_eq!(required_base_bits(8, 0, 1000, 0), 8);
        assert_eq!(required_base_bits(8, 1999, 1000, 0), 8);
        assert_eq!(required_base_bits(8, 2000, 1000, 0), 9);
        assert_eq!(required_base_bits(8, 4000, 1000, 0), 10);
        assert_eq!(required_base_bits(8, 1 << 40, 1000, 0), LOAD_BITS_MAX);
        assert_eq!(required_base_bits(8, 0, 1000, 499), 8);
        assert_eq!(required_base_bits(8, 0, 1000, 500), 9);
        assert_eq!(required_base_bits(8, 0, 1000, 750), 10);
        assert_eq!(required_base_bits(8, 0, 1000, 1000), 8 + 9);
        assert_eq!(required_base_bits(8, 0, 1000, u32::MAX), 8 + 9);
        // the larger of the two, never both added
        assert_eq!(required_base_bits(8, 4000, 1000, 500), 10);
        // a zero target is a target of one; a floor above the cap stays the floor
        assert_eq!(required_base_bits(8, 2, 0, 0), 9);
        assert_eq!(required_base_bits(24, u64::MAX, 1, 1000), 24);
        // monotone in both inputs
        let mut last = 0;
        for r in (0..100_000u64).step_by(997) {
            let b = required_base_bits(8, r, 1000, 0);
            assert!(b >= last && (8..=LOAD_BITS_MAX).contains(&b));
            last = b;
        }
    }

    #[test]
    fn the_meter_forgets_after_two_windows() {
        let mut m = LoadMeter::default();
        m.accepted(1000, 0);
        assert_eq!(m.per_window(0), 1000);
        m.accepted(500, LOAD_WINDOW_MS + 1);
        let mid = m.per_window(LOAD_WINDOW_MS + LOAD_WINDOW_MS / 2);
        assert!((900..=1000).contains(&mid), "{mid}");
        assert_eq!(m.per_window(5 * LOAD_WINDOW_MS), 0);
    }

    #[test]
    fn demands_expire_and_are_bounded() {
        let mut d = Demands::default();
        let a = PeerId::random();
        let b = PeerId::random();
        d.record(a, 12, 0, 1);
        d.record(b, 14, 0, 1); // over the bound: skipped
        assert_eq!(d.bits_for(&[a, b], 8, 1), 12);
        assert_eq!(d.bits_for(&[b], 8, 1), 8);
        assert_eq!(d.bits_for(&[a], 8, DEMAND_KEEP_MS), 8);
        d.record(b, 14, DEMAND_KEEP_MS, 1); // a expired: room again
        assert_eq!(d.bits_for(&[a, b], 8, DEMAND_KEEP_MS + 1), 14);
    }
}
