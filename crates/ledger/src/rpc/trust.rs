//! What a client believes of the validators it asks (pure; no I/O, no clock of its own).
//!
//! - [`Suspects`]: validators caught lying (a proof that does not verify, a handshake page
//!   that does not hash to the proven head, a nonce outside the proven range, an outcome proof
//!   that does not verify or a finality claim its own proof contradicts) are asked last for
//!   [`SUSPECT_FOR`], so a client connected to a lying validator moves to another and stays
//!   there.
//!
//! Transaction outcomes need no vote: each block header commits to its receipts' outcomes
//! ([`crate::outcome_tree`]), so one validator's proof decides ([`crate::outcome_proof`]).

use std::time::{Duration, Instant};

/// How long a validator caught lying is asked last.
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);

/// Validators caught lying, until when.
#[derive(Clone, Debug)]
pub struct Suspects {
    until: Vec<Option<Instant>>,
}

impl Suspects {
    /// None suspected among `n` validators.
    pub fn new(n: usize) -> Self {
        Self { until: vec![None; n] }
    }

    /// Validator `i` lied at `now`.
    pub fn caught(&mut self, i: usize, now: Instant) {
        if let Some(u) = self.until.get_mut(i) {
            *u = Some(now + SUSPECT_FOR);
        }
    }

    /// Whether validator `i` is suspected at `now`.
    pub fn is_suspect(&self, i: usize, now: Instant) -> bool {
        self.until.get(i).copied().flatten().is_some_and(|u| u > now)
    }

    /// Every validator, the unsuspected first (each group in index order).
    pub fn order(&self, now: Instant) -> Vec<usize> {
        let (mut first, last): (Vec<usize>, Vec<usize>) =
            (0..self.until.len()).partition(|i| !self.is_suspect(*i, now));
        first.extend(last);
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspects_are_asked_last_until_their_time_is_up() {
        let now = Instant::now();
        let mut s = Suspects::new(4);
        assert_eq!(s.order(now), vec![0, 1, 2, 3]);
        s.caught(0, now);
        s.caught(9, now); // out of range: ignored
        assert_eq!(s.order(now), vec![1, 2, 3, 0]);
        assert!(s.is_suspect(0, now + SUSPECT_FOR - Duration::from_secs(1)));
        assert_eq!(s.order(now + SUSPECT_FOR), vec![0, 1, 2, 3], "forgiven after SUSPECT_FOR");
    }
}
