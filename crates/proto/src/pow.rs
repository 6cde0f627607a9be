//! Anti-spam proof of work, priced like Whisper's: the work grows with size and TTL.
//!
//! The proof is the envelope id itself: an id needs at least [`required_bits`] leading zero bits.
//! Checking costs one header hash (which a receiver computes anyway); producing it costs about
//! `2^bits` hashes. Each doubling of the padded size (above 1 KiB) or of the TTL (above one day)
//! adds one bit, so the sender's cost is linear in `size × ttl`.

use crate::envelope::EnvelopeHeader;
use crate::id::{Id, domain};

/// Named difficulty: the leading zero bits for a 1 KiB envelope kept for one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Difficulty {
    /// Bits for the base unit (1 KiB × 1 day).
    pub base_bits: u32,
}

impl Default for Difficulty {
    fn default() -> Self {
        Self { base_bits: 8 }
    }
}

fn ceil_log2(x: u64) -> u32 {
    if x <= 1 { 0 } else { 64 - (x - 1).leading_zeros() }
}

/// Leading zero bits an id must have for this size and TTL.
pub fn required_bits(payload_len: u32, ttl_secs: u32, d: Difficulty) -> u32 {
    let kib = u64::from(payload_len).div_ceil(1024);
    let days = u64::from(ttl_secs).div_ceil(86_400);
    (d.base_bits + ceil_log2(kib) + ceil_log2(days)).min(64)
}

/// Leading zero bits of an id.
pub fn leading_zero_bits(id: &Id) -> u32 {
    let mut n = 0;
    for b in id.0 {
        if b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n
}

/// True if the header carries enough work for its size and TTL.
pub fn check(header: &EnvelopeHeader, d: Difficulty) -> bool {
    leading_zero_bits(&header.id()) >= required_bits(header.payload_len, header.ttl_secs, d)
}

/// Searches nonces until the id has enough leading zeros; gives up after `attempts_max`.
/// Returns the number of hashes tried on success.
pub fn mine(header: &mut EnvelopeHeader, d: Difficulty, attempts_max: u64) -> Option<u64> {
    let bits = required_bits(header.payload_len, header.ttl_secs, d);
    let bytes = header.encode();
    let at = bytes.len() - 8;
    let (nonce, tried) =
        mine_suffix(domain::ENVELOPE_ID, &bytes[..at], header.pow_nonce, attempts_max, |id| {
            leading_zero_bits(&Id(*id)) >= bits
        })?;
    header.pow_nonce = nonce;
    Some(tried)
}

/// The general search behind [`mine`]: the hash is BLAKE3 in key-derivation mode under
/// `domain` over `prefix ‖ nonce` (the nonce big-endian, the last 8 bytes of the hashed
/// encoding), tried for nonces from `start` until `good` accepts one or `attempts_max` were
/// tried. The key derivation and every block of the prefix are hashed once; each attempt only
/// finishes the hash. Returns the nonce and the number of hashes tried.
pub fn mine_suffix(
    domain: &str,
    prefix: &[u8],
    start: u64,
    attempts_max: u64,
    good: impl Fn(&[u8; 32]) -> bool,
) -> Option<(u64, u64)> {
    let mut base = blake3::Hasher::new_derive_key(domain);
    base.update(prefix);
    for attempt in 0..attempts_max {
        let nonce = start.wrapping_add(attempt);
        let mut h = base.clone();
        h.update(&nonce.to_be_bytes());
        if good(h.finalize().as_bytes()) {
            return Some((nonce, attempt + 1));
        }
    }
    None
}

/// Whether `hash` carries `expected_hashes` of work: its first 8 bytes, read as a big-endian
/// number, are at most `u64::MAX / expected_hashes`, which a uniformly random hash is with
/// probability `1 / expected_hashes`. Unlike leading zero bits this prices work exactly
/// (not in powers of two), so a price per byte stays a price per byte. 0 and 1 accept any hash.
pub fn meets_work(hash: &[u8; 32], expected_hashes: u64) -> bool {
    expected_hashes <= 1 || work_value(hash) <= u64::MAX / expected_hashes
}

/// The work `hash` shows: the largest `w` with [`meets_work`]`(hash, w)` (for telling a
/// submitter how far it fell short).
pub fn work_of(hash: &[u8; 32]) -> u64 {
    u64::MAX / work_value(hash).max(1)
}

fn work_value(hash: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Limits, pad};
    use crate::id::Topic;

    #[test]
    fn price_grows_with_size_and_ttl() {
        let d = Difficulty { base_bits: 8 };
        assert_eq!(required_bits(1024, 86_400, d), 8);
        assert_eq!(required_bits(256, 60, d), 8);
        assert_eq!(required_bits(4096, 86_400, d), 10);
        assert_eq!(required_bits(1024, 30 * 86_400, d), 13);
    }

    #[test]
    fn mined_header_checks_and_tampering_breaks_it() {
        let d = Difficulty { base_bits: 10 };
        let mut e = Envelope::new(Topic([3; 32]), 1, 3600, vec![], pad(b"hi", &Limits::default()).unwrap());
        assert!(mine(&mut e.header, d, 1 << 20).is_some());
        assert!(check(&e.header, d));
        e.header.timestamp_ms += 1;
        // The inputs are fixed, so this is deterministic: the changed header lost its proof.
        assert!(!check(&e.header, d));
    }

    /// The mining rate of this machine, for the price table in ARCHITECTURE.md:
    /// `cargo test --release -p cairn-proto pow::tests::mining_rate -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn mining_rate() {
        let prefix = vec![7u8; 300];
        let n = 1u64 << 24;
        let start = std::time::Instant::now();
        let found =
            mine_suffix("cairn rate", &prefix, 0, n, |h| h[0] == 0 && h[1] == 0 && h[2] == 0 && h[3] == 0);
        let secs = start.elapsed().as_secs_f64();
        let tried = found.map_or(n, |(_, t)| t);
        println!("{tried} hashes in {secs:.3} s: {:.2} M hashes/s on one core", tried as f64 / secs / 1e6);
    }

    #[test]
    fn work_targets_price_exactly_and_mining_finds_them() {
        let mut h = [0xFF; 32];
        assert!(meets_work(&h, 0) && meets_work(&h, 1));
        assert!(!meets_work(&h, 2));
        h[..8].copy_from_slice(&(u64::MAX / 3).to_be_bytes());
        assert!(meets_work(&h, 3) && !meets_work(&h, 4));
        assert_eq!(work_of(&h), 3);
        let (nonce, tried) =
            mine_suffix("cairn test work", b"prefix", 0, 1 << 20, |x| meets_work(x, 1000)).unwrap();
        assert!(tried >= 1 && nonce == tried - 1);
        let mut full = b"prefix".to_vec();
        full.extend_from_slice(&nonce.to_be_bytes());
        assert!(meets_work(&crate::id::hash("cairn test work", &full), 1000));
        assert!(mine_suffix("cairn test work", b"prefix", 0, 10, |_| false).is_none());
    }
}
