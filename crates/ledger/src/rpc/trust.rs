//! What a client believes of the validators it asks (pure; no I/O, no clock of its own).
//!
//! - [`Suspects`]: validators caught lying (a proof that does not verify, a handshake page
//!   that does not hash to the proven head, a nonce outside the proven range, a finality claim
//!   the others contradict) are asked last for [`SUSPECT_FOR`], so a client connected to a
//!   lying validator moves to another and stays there.
//! - [`FinalityTally`]: a transaction's outcome ("finalized at height h with outcome o") is
//!   believed once `f + 1` validators of `n = 3f + 1` report the same one: at least one of them
//!   is honest. The outcome itself is not in a certified header (blocks commit to their
//!   transaction list, not to outcomes), so a quorum, not one answer, decides it.

use std::time::{Duration, Instant};

use super::protocol::RemoteOutcome;

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

/// Finality claims about one transaction, one per validator (its latest).
#[derive(Clone, Debug)]
pub struct FinalityTally {
    quorum: usize,
    claims: Vec<Option<(u64, RemoteOutcome)>>,
}

impl FinalityTally {
    /// A tally over `n` validators: `f + 1` matching claims, with `f = (n - 1) / 3`.
    pub fn new(n: usize) -> Self {
        Self { quorum: n.saturating_sub(1) / 3 + 1, claims: vec![None; n] }
    }

    /// Claims needed.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Validator `i` says the transaction is final at `height` with `outcome`; returns the
    /// claim once `quorum` validators made the same one.
    pub fn claim(&mut self, i: usize, height: u64, outcome: RemoteOutcome) -> Option<(u64, RemoteOutcome)> {
        let slot = self.claims.get_mut(i)?;
        *slot = Some((height, outcome));
        let this = slot.clone()?;
        let agree = self.claims.iter().filter(|c| c.as_ref() == Some(&this)).count();
        (agree >= self.quorum).then_some(this)
    }

    /// Validators whose claim differs from the believed one.
    pub fn dissenters(&self, believed: &(u64, RemoteOutcome)) -> Vec<usize> {
        self.claims
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c != believed))
            .map(|(i, _)| i)
            .collect()
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

    #[test]
    fn one_liar_among_four_cannot_decide_an_outcome() {
        let mut t = FinalityTally::new(4);
        assert_eq!(t.quorum(), 2);
        assert_eq!(t.claim(0, 9, RemoteOutcome::Applied), None, "one claim is not enough");
        assert_eq!(t.claim(0, 9, RemoteOutcome::Applied), None, "nor the same validator twice");
        assert_eq!(t.claim(1, 3, RemoteOutcome::Applied), None);
        assert_eq!(t.claim(2, 3, RemoteOutcome::Applied), Some((3, RemoteOutcome::Applied)));
        assert_eq!(t.dissenters(&(3, RemoteOutcome::Applied)), vec![0]);
        let mut one = FinalityTally::new(1);
        assert_eq!(one.claim(0, 1, RemoteOutcome::Applied), Some((1, RemoteOutcome::Applied)));
        assert_eq!(FinalityTally::new(7).quorum(), 3);
        assert_eq!(t.claim(7, 1, RemoteOutcome::Applied), None, "an unknown validator counts for nothing");
    }
}
