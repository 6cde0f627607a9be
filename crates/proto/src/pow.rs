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
    // The nonce is the header's last 8 bytes: the key derivation and every block before it
    // are hashed once, and each attempt only finishes the hash (the same id as hashing the
    // whole header, several times faster).
    let mut prefix = blake3::Hasher::new_derive_key(domain::ENVELOPE_ID);
    prefix.update(&bytes[..at]);
    for attempt in 0..attempts_max {
        let nonce = header.pow_nonce.wrapping_add(attempt);
        let mut h = prefix.clone();
        h.update(&nonce.to_be_bytes());
        let id = Id(*h.finalize().as_bytes());
        if leading_zero_bits(&id) >= bits {
            header.pow_nonce = nonce;
            return Some(attempt + 1);
        }
    }
    None
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
}
