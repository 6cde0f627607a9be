//! Finalized outcomes not yet in the chain store's id-keyed index, in memory: those of the
//! rows still held, and those of the rows being moved into the index a slice per commit.
//!
//! Moving all held outcomes in one commit made that commit a burst (65,536 sorted inserts and
//! their sync on the finalizer thread) that delayed the finality of every block behind it.
//! A drain instead sorts the rows' outcomes once and moves one contiguous id range per commit
//! over [`DRAIN_COMMITS`] commits: each index page is still rewritten about once per drain,
//! and no commit carries more than its share.

use std::ops::Range;
use std::sync::Arc;

use crate::fast_map::FastMap;

/// Commits a drain is spread over (at most; a backlog finishes it sooner).
pub(super) const DRAIN_COMMITS: usize = 16;

/// One encoded outcome by transaction id.
pub(super) type Entry = ([u8; 32], Vec<u8>);

/// Outcomes of the rows being moved into the index, sorted by id.
struct Drain {
    /// Rows at heights up to this one are the drain's (deleted by its last slice).
    upto: u64,
    batch: Arc<Vec<Entry>>,
    /// Entries committed into the index so far (a prefix of `batch`).
    moved: usize,
}

impl Drain {
    /// Entries moved per commit: the batch in [`DRAIN_COMMITS`] shares.
    fn per_commit(&self) -> usize {
        self.batch.len().div_ceil(DRAIN_COMMITS).max(1)
    }
}

/// What one commit moves into the index.
pub(super) struct Slice {
    /// The drain's sorted entries; the commit moves `range` of them.
    pub(super) batch: Arc<Vec<Entry>>,
    pub(super) range: Range<usize>,
    /// Set on the drain's last slice: the commit deletes the rows at heights up to this one.
    pub(super) last_of: Option<u64>,
}

/// The outcomes held in memory until they are in the index (see the module doc).
#[derive(Default)]
pub(super) struct Recent {
    held: FastMap<[u8; 32], Vec<u8>>,
    drain: Option<Drain>,
}

impl Recent {
    /// Held outcomes by id (a reopened store's rows).
    pub(super) fn from_rows(held: FastMap<[u8; 32], Vec<u8>>) -> Self {
        Self { held, drain: None }
    }

    /// Holds the outcomes of a commit's blocks.
    pub(super) fn hold(&mut self, entries: impl IntoIterator<Item = Entry>) {
        self.held.extend(entries);
    }

    /// The encoded outcome of `id`, if held or being moved.
    pub(super) fn get(&self, id: &[u8; 32]) -> Option<Vec<u8>> {
        if let Some(o) = self.held.get(id) {
            return Some(o.clone());
        }
        let d = self.drain.as_ref()?;
        let i = d.batch.binary_search_by(|e| e.0.cmp(id)).ok()?;
        Some(d.batch[i].1.clone())
    }

    /// Whether `id`'s outcome is held or being moved.
    pub(super) fn contains(&self, id: &[u8; 32]) -> bool {
        self.held.contains_key(id)
            || self.drain.as_ref().is_some_and(|d| d.batch.binary_search_by(|e| e.0.cmp(id)).is_ok())
    }

    /// Outcomes in memory (held and being moved).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len() + self.drain.as_ref().map_or(0, |d| d.batch.len())
    }

    /// The slice the commit of blocks up to `height` moves into the index, if any: a drain of
    /// every held outcome starts once `max` are held; a drain goes on by one share per
    /// commit, and finishes at once if `2 * max` are held again meanwhile (a finalizer far
    /// behind commits many blocks at a time), which bounds memory to about `3 * max`.
    pub(super) fn plan(&mut self, max: usize, height: u64) -> Option<Slice> {
        if self.drain.is_none() && self.held.len() >= max {
            let mut batch: Vec<Entry> = std::mem::take(&mut self.held).into_iter().collect();
            batch.sort_unstable_by_key(|e| e.0);
            self.drain = Some(Drain { upto: height, batch: Arc::new(batch), moved: 0 });
        }
        let d = self.drain.as_ref()?;
        let end = if self.held.len() >= max.saturating_mul(2) {
            d.batch.len()
        } else {
            (d.moved + d.per_commit()).min(d.batch.len())
        };
        let last_of = (end == d.batch.len()).then_some(d.upto);
        Some(Slice { batch: Arc::clone(&d.batch), range: d.moved..end, last_of })
    }

    /// Records that `slice` is committed into the index.
    pub(super) fn moved(&mut self, slice: &Slice) {
        if slice.last_of.is_some() {
            self.drain = None;
        } else if let Some(d) = &mut self.drain {
            d.moved = slice.range.end;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(i: u32) -> Entry {
        let mut id = [0u8; 32];
        // ids out of order: the drain must sort them
        id[..4].copy_from_slice(&i.wrapping_mul(0x9E37_79B9).to_be_bytes());
        (id, i.to_be_bytes().to_vec())
    }

    /// A drain moves every held outcome exactly once, in id order, in contiguous slices over
    /// at most `DRAIN_COMMITS` commits, while every outcome stays readable; outcomes held
    /// meanwhile wait for the next drain.
    #[test]
    fn a_drain_moves_each_outcome_once_in_id_order_and_all_stay_readable() {
        let mut r = Recent::default();
        r.hold((0..160).map(entry));
        assert!(r.plan(161, 1).is_none(), "below the bound nothing moves");
        let mut moved: Vec<Entry> = Vec::new();
        let mut commits = 0;
        let mut next = 160u32;
        let mut height = 1;
        while let Some(s) = r.plan(160, height) {
            commits += 1;
            // one new outcome per commit (not enough to force the drain to finish)
            moved.extend(s.batch[s.range.clone()].iter().cloned());
            r.moved(&s);
            r.hold([entry(next)]);
            next += 1;
            height += 1;
            // until the drain's last commit, its outcomes are read from memory too (after
            // it, from the index only)
            let from = if s.last_of.is_some() { 160 } else { 0 };
            for i in from..next {
                let e = entry(i);
                assert_eq!(r.get(&e.0), Some(e.1.clone()), "outcome {i} readable after commit {commits}");
            }
            if s.last_of.is_some() {
                assert!((0..160).all(|i| !r.contains(&entry(i).0)), "the drained are forgotten");
                assert_eq!(s.last_of, Some(1), "the rows of the drain's first commit and before go");
                break;
            }
        }
        assert_eq!(commits, DRAIN_COMMITS);
        assert_eq!(moved.len(), 160);
        assert!(moved.windows(2).all(|w| w[0].0 < w[1].0), "in id order, each once");
        assert_eq!(r.len(), (next - 160) as usize, "what arrived during the drain is still held");
        assert!(r.plan(160, height).is_none());
    }

    /// A backlog of twice the bound finishes the drain in one commit; a slice not committed
    /// (a failed commit) is planned again.
    #[test]
    fn a_backlog_finishes_the_drain_and_a_failed_commit_moves_the_same_slice_again() {
        let mut r = Recent::default();
        r.hold((0..64).map(entry));
        let first = r.plan(64, 5).unwrap();
        assert_eq!(first.range, 0..4);
        let again = r.plan(64, 6).unwrap();
        assert_eq!(again.range, 0..4, "not recorded as moved: the same slice");
        r.moved(&again);
        r.hold((64..192).map(entry));
        let rest = r.plan(64, 7).unwrap();
        assert_eq!((rest.range.clone(), rest.last_of), (4..64, Some(5)));
        r.moved(&rest);
        assert_eq!(r.len(), 128);
        assert!(r.contains(&entry(100).0) && !r.contains(&entry(5).0));
    }
}
