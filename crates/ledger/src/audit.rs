//! Safety checks across validators.

use thiserror::Error;

/// Two validators finalized different blocks at one height.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
#[error("fork at height {height}: validator {a} finalized {digest_a}, validator {b} finalized {digest_b}")]
pub struct Fork {
    /// Height of the first disagreement.
    pub height: u64,
    /// First validator (index in the input).
    pub a: usize,
    /// Second validator.
    pub b: usize,
    /// Digest finalized by `a` (hex prefix).
    pub digest_a: String,
    /// Digest finalized by `b` (hex prefix).
    pub digest_b: String,
}

/// Compares every validator's finalized chain (block digests by height, genesis first): each
/// pair must agree on every height both have finalized. Chains may have different lengths.
pub fn check_no_fork(chains: &[Vec<[u8; 32]>]) -> Result<(), Fork> {
    for a in 0..chains.len() {
        for b in a + 1..chains.len() {
            for (h, (x, y)) in chains[a].iter().zip(chains[b].iter()).enumerate() {
                if x != y {
                    return Err(Fork {
                        height: h as u64,
                        a,
                        b,
                        digest_a: hex::encode(&x[..8]),
                        digest_b: hex::encode(&y[..8]),
                    });
                }
            }
        }
    }
    Ok(())
}
