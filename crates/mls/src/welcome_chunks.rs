//! A Welcome bundle larger than one envelope, sent as chunks and reassembled.
//!
//! An encoded [`WelcomeBundle`](crate::WelcomeBundle) carries the group's ratchet tree (sealed to
//! the invitees), which grows with the group: hundreds of bytes per member, megabytes at
//! thousands of members, while one envelope's payload is bounded
//! ([`cairn_proto::Limits::payload_bytes_max`], 240 KiB by default). The sender splits the
//! encoded bundle with [`welcome_chunks`] and publishes each chunk as the padded payload of its
//! own envelope on the invitee's inbox topic; the invitee feeds every payload it reads there to
//! a [`WelcomeAssembler`], which returns the whole bundle once every chunk arrived and the bundle
//! hashes to its id. A bundle that fits in one envelope is one chunk.
//!
//! # Format
//!
//! ```text
//! chunk     = version:u8 (0x81) bundle_id:[32] index:u16 count:u16 total_bytes:u32
//!             slice_bytes:u32 slice:[..]
//! bundle_id = BLAKE3-derive-key("cairn 2026-11 welcome bundle id v1", bundle)
//! ```
//! Integers are big-endian. The bundle (`total_bytes` long, 1..=[`WELCOME_CHUNKED_BYTES_MAX`])
//! is cut into `count` = ⌈`total_bytes` / `slice_bytes`⌉ slices (1..=[`WELCOME_CHUNKS_MAX`]):
//! slice `index` is `bundle[index * slice_bytes ..][.. slice_bytes]`, so every slice but the
//! last is exactly `slice_bytes` long and the last holds the rest. The slice fills the chunk to
//! its end. Every header field is thus determined by the bundle and `slice_bytes`: one
//! encoding per chunk, and a chunk whose header disagrees with the rule (or with earlier chunks
//! of the same id) is refused before anything is stored. The version byte has its high bit
//! set, unlike any [`WELCOME_BUNDLE_VERSION`](crate::client::WELCOME_BUNDLE_VERSION), so a
//! reader can tell a chunk from a bare bundle.
//!
//! # What a stranger can cost
//!
//! Anyone can publish on an inbox topic, including chunks of made-up ids that never complete.
//! The assembler's memory is bounded by [`AssemblerLimits`]: at most `bundles_max` bundles in
//! progress and `bytes_max` bytes, counted as the declared `total_bytes` of each bundle in
//! progress (reserved by its first chunk, so a bundle admitted can always complete). When
//! full, a chunk of a new bundle is refused ([`WelcomeChunkError::Full`]) — bundles in progress
//! are never evicted by newcomers — but bundles older than `stale_after_ms` (counted from their
//! first chunk, so a trickle of junk cannot keep one alive) are dropped first. A refused or
//! failed bundle is not lost: its envelopes stay in the inbox history, to be read again.
//!
//! The id only makes reassembly exact (a tampered or mixed-up chunk fails the hash check and
//! nothing is returned); it does not authenticate the bundle — [`Client::join`](crate::Client::join)
//! does, through MLS.

use std::collections::{BTreeMap, VecDeque};

use cairn_proto::DecodeError;
use cairn_proto::codec::{Reader, Writer};
use cairn_proto::envelope::{Limits, PAD_PREFIX_BYTES};
use thiserror::Error;

use crate::client::{RATCHET_TREE_BYTES_MAX, WELCOME_BYTES_MAX};

/// Format version of a Welcome chunk (high bit set: never a Welcome bundle's version byte).
pub const WELCOME_CHUNK_VERSION: u8 = 0x81;

/// Bytes of a chunk's header: version, bundle id, index, count, total bytes, slice bytes.
pub const WELCOME_CHUNK_HEADER_BYTES: usize = 1 + 32 + 2 + 2 + 4 + 4;

/// Most chunks one bundle is cut into.
pub const WELCOME_CHUNKS_MAX: usize = 1024;

/// Largest bundle sent in chunks, in bytes: the largest MLS Welcome and ratchet tree a
/// [`WelcomeBundle`](crate::WelcomeBundle) admits, plus 1 MiB for its other fields (the tree
/// key sealed to up to 1,024 recipients is ≈ 110 KiB).
pub const WELCOME_CHUNKED_BYTES_MAX: usize = WELCOME_BYTES_MAX + RATCHET_TREE_BYTES_MAX + (1 << 20);

/// Default most bundles a [`WelcomeAssembler`] has in progress at once.
pub const WELCOME_ASSEMBLY_BUNDLES_MAX: usize = 8;

/// Default most bytes a [`WelcomeAssembler`] has in progress (declared sizes of the bundles in
/// progress): one bundle of the largest size fits, with room for a few ordinary ones.
pub const WELCOME_ASSEMBLY_BYTES_MAX: usize = 64 << 20;

/// Default age, in ms since its first chunk, after which a bundle still in progress is dropped.
pub const WELCOME_ASSEMBLY_STALE_MS: u64 = 10 * 60 * 1000;

/// Ids of bundles already returned that an assembler remembers, so that late duplicates of
/// their chunks (e.g. read again from history) do not start a new bundle.
pub const WELCOME_ASSEMBLY_DONE_IDS_MAX: usize = 64;

const BUNDLE_ID_DOMAIN: &str = "cairn 2026-11 welcome bundle id v1";

/// The id of an encoded bundle: its domain-separated BLAKE3 hash.
pub fn welcome_bundle_id(bundle: &[u8]) -> [u8; 32] {
    cairn_proto::id::hash(BUNDLE_ID_DOMAIN, bundle)
}

/// The largest chunk (header included) that fits, once padded, in the payload of one envelope
/// under `limits`: the `chunk_bytes_max` to pass to [`welcome_chunks`].
pub fn welcome_chunk_bytes_max(limits: &Limits) -> usize {
    limits.payload_bytes_max().saturating_sub(PAD_PREFIX_BYTES)
}

/// Why [`welcome_chunks`] cannot split a bundle (the caller's input, never a peer's).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WelcomeSplitError {
    /// There is nothing to send.
    #[error("an empty welcome bundle")]
    Empty,
    /// The bundle is larger than [`WELCOME_CHUNKED_BYTES_MAX`].
    #[error("welcome bundle of {bytes} bytes, over the limit of {max}")]
    TooLarge {
        /// Bundle size.
        bytes: usize,
        /// Limit.
        max: usize,
    },
    /// `chunk_bytes_max` leaves no room for a slice after the header.
    #[error("chunks of at most {chunk_bytes_max} bytes leave no room after a {header}-byte header")]
    ChunkTooSmall {
        /// Chunk size asked for.
        chunk_bytes_max: usize,
        /// Header size.
        header: usize,
    },
    /// The bundle needs more than [`WELCOME_CHUNKS_MAX`] chunks of this size.
    #[error("{count} chunks needed, over the limit of {max}")]
    TooManyChunks {
        /// Chunks needed.
        count: usize,
        /// Limit.
        max: usize,
    },
}

/// Why [`WelcomeAssembler::offer`] refused a chunk (bad or unlucky peer input).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WelcomeChunkError {
    /// The chunk does not decode, or its header breaks the format's rules (see the module docs).
    #[error("welcome chunk: {0}")]
    Decode(#[from] DecodeError),
    /// The declared bundle is larger than [`WELCOME_CHUNKED_BYTES_MAX`].
    #[error("welcome chunk declares a bundle of {total_bytes} bytes, over the limit of {max}")]
    TooLarge {
        /// Declared bundle size.
        total_bytes: u64,
        /// Limit.
        max: u64,
    },
    /// The declared chunk count is over [`WELCOME_CHUNKS_MAX`].
    #[error("welcome chunk declares {count} chunks, over the limit of {max}")]
    TooManyChunks {
        /// Declared count.
        count: u16,
        /// Limit.
        max: usize,
    },
    /// The index is not below the count.
    #[error("welcome chunk index {index} of {count}")]
    IndexOutOfRange {
        /// Index found.
        index: u16,
        /// Declared count.
        count: u16,
    },
    /// The header disagrees with an earlier chunk of the same bundle id.
    #[error("welcome chunk `{field}` differs from earlier chunks of the same bundle")]
    Inconsistent {
        /// Header field at fault.
        field: &'static str,
    },
    /// A chunk with this index but other bytes arrived earlier (the first one is kept).
    #[error("welcome chunk {index} differs from the one received before")]
    Conflict {
        /// Index at fault.
        index: u16,
    },
    /// Every chunk arrived but the bundle does not hash to its id: it is dropped.
    #[error("reassembled welcome bundle does not match its id")]
    HashMismatch,
    /// A new bundle would exceed a bound of the assembler.
    #[error("welcome assembler full: {limit}")]
    Full {
        /// The bound reached: `"bundles"` or `"bytes"`.
        limit: &'static str,
    },
}

/// One chunk, decoded and checked against the format's rules (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeChunk<'a> {
    /// Hash of the whole bundle ([`welcome_bundle_id`]).
    pub bundle_id: [u8; 32],
    /// Position of this slice, below `count`.
    pub index: u16,
    /// Chunks of the bundle.
    pub count: u16,
    /// Bundle size in bytes.
    pub total_bytes: u32,
    /// Size of every slice but the last, in bytes.
    pub slice_bytes: u32,
    /// This chunk's part of the bundle.
    pub slice: &'a [u8],
}

impl<'a> WelcomeChunk<'a> {
    /// Canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(WELCOME_CHUNK_HEADER_BYTES + self.slice.len());
        w.u8(WELCOME_CHUNK_VERSION);
        w.raw(&self.bundle_id);
        w.u16(self.index);
        w.u16(self.count);
        w.u32(self.total_bytes);
        w.u32(self.slice_bytes);
        w.raw(self.slice);
        w.finish()
    }

    /// Decodes a chunk and checks every header rule; borrows the slice.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WelcomeChunkError> {
        let mut r = Reader::new(bytes);
        r.version("welcome chunk", WELCOME_CHUNK_VERSION)?;
        let bundle_id = r.array("welcome_chunk.bundle_id")?;
        let index = r.u16("welcome_chunk.index")?;
        let count = r.u16("welcome_chunk.count")?;
        let total_bytes = r.u32("welcome_chunk.total_bytes")?;
        let slice_bytes = r.u32("welcome_chunk.slice_bytes")?;
        let slice = r.take(r.remaining(), "welcome_chunk.slice")?;
        let (total, slice_max) = (total_bytes as usize, slice_bytes as usize);
        if total > WELCOME_CHUNKED_BYTES_MAX {
            return Err(WelcomeChunkError::TooLarge {
                total_bytes: u64::from(total_bytes),
                max: WELCOME_CHUNKED_BYTES_MAX as u64,
            });
        }
        if usize::from(count) > WELCOME_CHUNKS_MAX {
            return Err(WelcomeChunkError::TooManyChunks { count, max: WELCOME_CHUNKS_MAX });
        }
        if index >= count {
            return Err(WelcomeChunkError::IndexOutOfRange { index, count });
        }
        if total == 0 || slice_max == 0 || slice_max > total {
            return Err(DecodeError::Invalid {
                field: "welcome_chunk.slice_bytes",
                reason: "sizes must satisfy 1 <= slice_bytes <= total_bytes",
            }
            .into());
        }
        if total.div_ceil(slice_max) != usize::from(count) {
            return Err(DecodeError::NonCanonical {
                field: "welcome_chunk.count",
                reason: "must be total_bytes / slice_bytes rounded up",
            }
            .into());
        }
        let offset = usize::from(index) * slice_max;
        if slice.len() != slice_max.min(total - offset) {
            return Err(DecodeError::Invalid {
                field: "welcome_chunk.slice",
                reason: "length differs from the one its index, slice_bytes and total_bytes give",
            }
            .into());
        }
        Ok(Self { bundle_id, index, count, total_bytes, slice_bytes, slice })
    }
}

/// Cuts an encoded bundle into chunks of at most `chunk_bytes_max` bytes each (header
/// included; see [`welcome_chunk_bytes_max`] for one envelope's), as even in size as the format
/// allows. A bundle that fits yields one chunk.
pub fn welcome_chunks(bundle: &[u8], chunk_bytes_max: usize) -> Result<Vec<Vec<u8>>, WelcomeSplitError> {
    if bundle.is_empty() {
        return Err(WelcomeSplitError::Empty);
    }
    if bundle.len() > WELCOME_CHUNKED_BYTES_MAX {
        return Err(WelcomeSplitError::TooLarge { bytes: bundle.len(), max: WELCOME_CHUNKED_BYTES_MAX });
    }
    let slice_max = chunk_bytes_max.saturating_sub(WELCOME_CHUNK_HEADER_BYTES);
    if slice_max == 0 {
        return Err(WelcomeSplitError::ChunkTooSmall { chunk_bytes_max, header: WELCOME_CHUNK_HEADER_BYTES });
    }
    let needed = bundle.len().div_ceil(slice_max);
    if needed > WELCOME_CHUNKS_MAX {
        return Err(WelcomeSplitError::TooManyChunks { count: needed, max: WELCOME_CHUNKS_MAX });
    }
    // Even slices: the smallest slice size that still needs no more chunks.
    let slice_bytes = bundle.len().div_ceil(needed);
    let count = bundle.len().div_ceil(slice_bytes);
    let bundle_id = welcome_bundle_id(bundle);
    // Bounded above: `count` ≤ WELCOME_CHUNKS_MAX < u16::MAX and the bundle length ≤
    // WELCOME_CHUNKED_BYTES_MAX < u32::MAX.
    let chunks = bundle
        .chunks(slice_bytes)
        .enumerate()
        .map(|(i, slice)| {
            WelcomeChunk {
                bundle_id,
                index: i as u16,
                count: count as u16,
                total_bytes: bundle.len() as u32,
                slice_bytes: slice_bytes as u32,
                slice,
            }
            .encode()
        })
        .collect::<Vec<_>>();
    debug_assert_eq!(chunks.len(), count);
    Ok(chunks)
}

/// Bounds of a [`WelcomeAssembler`] (defaults: the `WELCOME_ASSEMBLY_*` constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerLimits {
    /// Most bundles in progress at once.
    pub bundles_max: usize,
    /// Most bytes in progress: the sum of the declared sizes of the bundles in progress.
    pub bytes_max: usize,
    /// A bundle still in progress this many ms after its first chunk is dropped.
    pub stale_after_ms: u64,
}

impl Default for AssemblerLimits {
    fn default() -> Self {
        Self {
            bundles_max: WELCOME_ASSEMBLY_BUNDLES_MAX,
            bytes_max: WELCOME_ASSEMBLY_BYTES_MAX,
            stale_after_ms: WELCOME_ASSEMBLY_STALE_MS,
        }
    }
}

/// One bundle in progress.
#[derive(Debug)]
struct Partial {
    first_ms: u64,
    count: u16,
    total_bytes: u32,
    slice_bytes: u32,
    slices: Vec<Option<Vec<u8>>>,
    received: usize,
}

/// Reassembles Welcome bundles from their chunks, in any order, within bounded memory (see
/// the module docs). Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct WelcomeAssembler {
    limits: AssemblerLimits,
    partial: BTreeMap<[u8; 32], Partial>,
    /// Sum of `total_bytes` over `partial`.
    bytes_reserved: usize,
    /// Ids of bundles returned, oldest first, at most [`WELCOME_ASSEMBLY_DONE_IDS_MAX`].
    done: VecDeque<[u8; 32]>,
}

impl WelcomeAssembler {
    /// An assembler with the default bounds.
    pub fn new() -> Self {
        Self::with_limits(AssemblerLimits::default())
    }

    /// An assembler with other bounds.
    pub fn with_limits(limits: AssemblerLimits) -> Self {
        Self { limits, partial: BTreeMap::new(), bytes_reserved: 0, done: VecDeque::new() }
    }

    /// Bundles in progress.
    pub fn bundles_in_progress(&self) -> usize {
        self.partial.len()
    }

    /// Bytes in progress (declared sizes of the bundles in progress).
    pub fn bytes_in_progress(&self) -> usize {
        self.bytes_reserved
    }

    /// Takes one chunk (an envelope's unpadded payload). Returns the whole bundle when this
    /// chunk completes it and it matches its id; `Ok(None)` while chunks are missing, and for
    /// a duplicate or a chunk of a bundle already returned. A refused chunk changes nothing,
    /// except that a bundle failing its hash check is dropped; stale bundles are dropped first.
    pub fn offer(&mut self, chunk: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, WelcomeChunkError> {
        let c = WelcomeChunk::decode(chunk)?;
        self.drop_stale(now_ms);
        if self.done.contains(&c.bundle_id) {
            return Ok(None);
        }
        if c.count == 1 {
            return self.finish(c.bundle_id, c.slice.to_vec()).map(Some);
        }
        let p = self.entry(&c, now_ms)?;
        let slot = &mut p.slices[usize::from(c.index)];
        match slot {
            Some(held) if held.as_slice() == c.slice => return Ok(None),
            Some(_) => return Err(WelcomeChunkError::Conflict { index: c.index }),
            None => *slot = Some(c.slice.to_vec()),
        }
        p.received += 1;
        if p.received < usize::from(p.count) {
            return Ok(None);
        }
        let Some(p) = self.partial.remove(&c.bundle_id) else {
            return Ok(None);
        };
        self.bytes_reserved -= p.total_bytes as usize;
        let mut bundle = Vec::with_capacity(p.total_bytes as usize);
        for s in p.slices.into_iter().flatten() {
            bundle.extend_from_slice(&s);
        }
        self.finish(c.bundle_id, bundle).map(Some)
    }

    /// The bundle in progress for this chunk's id, checked against its header, or a new one if
    /// the bounds admit it.
    fn entry(&mut self, c: &WelcomeChunk<'_>, now_ms: u64) -> Result<&mut Partial, WelcomeChunkError> {
        if !self.partial.contains_key(&c.bundle_id) {
            if self.partial.len() >= self.limits.bundles_max {
                return Err(WelcomeChunkError::Full { limit: "bundles" });
            }
            let total = c.total_bytes as usize;
            if self.bytes_reserved + total > self.limits.bytes_max {
                return Err(WelcomeChunkError::Full { limit: "bytes" });
            }
            self.bytes_reserved += total;
            self.partial.insert(
                c.bundle_id,
                Partial {
                    first_ms: now_ms,
                    count: c.count,
                    total_bytes: c.total_bytes,
                    slice_bytes: c.slice_bytes,
                    slices: vec![None; usize::from(c.count)],
                    received: 0,
                },
            );
        }
        let p = self
            .partial
            .get_mut(&c.bundle_id)
            .ok_or(WelcomeChunkError::Inconsistent { field: "bundle_id" })?;
        // `count` follows from the sizes, so the sizes decide consistency.
        if p.total_bytes != c.total_bytes {
            return Err(WelcomeChunkError::Inconsistent { field: "total_bytes" });
        }
        if p.slice_bytes != c.slice_bytes {
            return Err(WelcomeChunkError::Inconsistent { field: "slice_bytes" });
        }
        Ok(p)
    }

    /// Checks a whole bundle against its id and remembers the id.
    fn finish(&mut self, id: [u8; 32], bundle: Vec<u8>) -> Result<Vec<u8>, WelcomeChunkError> {
        if welcome_bundle_id(&bundle) != id {
            return Err(WelcomeChunkError::HashMismatch);
        }
        if self.done.len() >= WELCOME_ASSEMBLY_DONE_IDS_MAX {
            self.done.pop_front();
        }
        self.done.push_back(id);
        Ok(bundle)
    }

    fn drop_stale(&mut self, now_ms: u64) {
        let stale_after_ms = self.limits.stale_after_ms;
        let mut freed = 0;
        self.partial.retain(|_, p| {
            let keep = now_ms.saturating_sub(p.first_ms) < stale_after_ms;
            if !keep {
                freed += p.total_bytes as usize;
            }
            keep
        });
        self.bytes_reserved -= freed;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use cairn_proto::envelope::pad;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Fisher–Yates with the same generator.
    fn shuffle<T>(v: &mut [T], seed: u64) {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }

    /// Offers every chunk; returns the bundles returned and the errors.
    fn offer_all(
        a: &mut WelcomeAssembler,
        chunks: &[Vec<u8>],
        now_ms: u64,
    ) -> (Vec<Vec<u8>>, Vec<WelcomeChunkError>) {
        let (mut out, mut errs) = (Vec::new(), Vec::new());
        for c in chunks {
            match a.offer(c, now_ms) {
                Ok(Some(b)) => out.push(b),
                Ok(None) => {}
                Err(e) => errs.push(e),
            }
        }
        (out, errs)
    }

    fn small(bundles_max: usize, bytes_max: usize) -> WelcomeAssembler {
        WelcomeAssembler::with_limits(AssemblerLimits { bundles_max, bytes_max, stale_after_ms: 1000 })
    }

    #[test]
    fn format_is_frozen() {
        let chunks = welcome_chunks(b"hello world", WELCOME_CHUNK_HEADER_BYTES + 4).unwrap();
        let id = welcome_bundle_id(b"hello world");
        assert_eq!(hex::encode(id), "098263879fb0b6fc7844c1300b0975ad1bf2cce9513216e894d733927f129132");
        let slices: [&[u8]; 3] = [b"hell", b"o wo", b"rld"];
        for (i, (c, s)) in chunks.iter().zip(slices).enumerate() {
            let mut want = vec![0x81];
            want.extend_from_slice(&id);
            want.extend_from_slice(&[0, i as u8, 0, 3, 0, 0, 0, 11, 0, 0, 0, 4]);
            want.extend_from_slice(s);
            assert_eq!(c, &want);
        }
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn a_bundle_that_fits_is_one_chunk_and_returns_at_once() {
        let b = bytes(1000, 1);
        let chunks = welcome_chunks(&b, 4096).unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].len(), WELCOME_CHUNK_HEADER_BYTES + 1000);
        let mut a = WelcomeAssembler::new();
        assert_eq!(a.offer(&chunks[0], 0).unwrap(), Some(b));
        assert_eq!(a.offer(&chunks[0], 0).unwrap(), None, "a late duplicate returns nothing");
        assert_eq!(a.bundles_in_progress(), 0);
    }

    #[test]
    fn round_trip_in_random_order_with_duplicates() {
        let b = bytes(100_000, 2);
        let chunks = welcome_chunks(&b, 4096).unwrap();
        assert_eq!(chunks.len(), 100_000usize.div_ceil(4096 - WELCOME_CHUNK_HEADER_BYTES));
        assert!(chunks.iter().all(|c| c.len() <= 4096));
        for seed in 1..20 {
            // Every chunk twice, some three times, shuffled.
            let mut stream: Vec<Vec<u8>> =
                chunks.iter().chain(&chunks).chain(&chunks[..5]).cloned().collect();
            shuffle(&mut stream, seed);
            let mut a = WelcomeAssembler::new();
            let (out, errs) = offer_all(&mut a, &stream, 0);
            assert!(errs.is_empty(), "{errs:?}");
            assert_eq!(out, vec![b.clone()], "returned exactly once");
            assert_eq!((a.bundles_in_progress(), a.bytes_in_progress()), (0, 0));
        }
    }

    #[test]
    fn several_mib_in_many_chunks_reassemble_and_each_fits_an_envelope() {
        let b = bytes(6 << 20, 3);
        let limits = Limits::default();
        let max = welcome_chunk_bytes_max(&limits);
        assert!(pad(&b, &limits).is_err(), "the bundle alone does not fit one envelope");
        for chunk_bytes_max in [100 << 10, max] {
            let mut chunks = welcome_chunks(&b, chunk_bytes_max).unwrap();
            if chunk_bytes_max == 100 << 10 {
                assert!(chunks.len() >= 50, "{} chunks", chunks.len());
            }
            for c in &chunks {
                assert!(c.len() <= chunk_bytes_max);
                assert!(pad(c, &limits).is_ok());
            }
            shuffle(&mut chunks, 7);
            let mut a = WelcomeAssembler::new();
            let (out, errs) = offer_all(&mut a, &chunks, 0);
            assert!(errs.is_empty(), "{errs:?}");
            assert_eq!(out.len(), 1);
            assert!(out[0] == b);
        }
    }

    #[test]
    fn a_tampered_chunk_fails_the_hash_and_nothing_is_returned() {
        let b = bytes(50_000, 4);
        let chunks = welcome_chunks(&b, 8192).unwrap();
        for victim in [0, chunks.len() / 2, chunks.len() - 1] {
            let mut bad = chunks.clone();
            let last = bad[victim].len() - 1;
            bad[victim][last] ^= 1;
            let mut a = WelcomeAssembler::new();
            let (out, errs) = offer_all(&mut a, &bad, 0);
            assert!(out.is_empty());
            assert_eq!(errs, vec![WelcomeChunkError::HashMismatch]);
            assert_eq!(
                (a.bundles_in_progress(), a.bytes_in_progress()),
                (0, 0),
                "the failed bundle is dropped"
            );
            // The genuine chunks, read again, still make the bundle.
            let (out, errs) = offer_all(&mut a, &chunks, 0);
            assert!(errs.is_empty());
            assert_eq!(out, vec![b.clone()]);
        }
        // One chunk alone, tampered.
        let mut one = welcome_chunks(b"tiny", 1024).unwrap().remove(0);
        *one.last_mut().unwrap() ^= 1;
        assert_eq!(WelcomeAssembler::new().offer(&one, 0), Err(WelcomeChunkError::HashMismatch));
    }

    #[test]
    fn a_second_version_of_a_chunk_is_refused_and_the_first_kept() {
        let b = bytes(20_000, 5);
        let chunks = welcome_chunks(&b, 4096).unwrap();
        let mut a = WelcomeAssembler::new();
        assert_eq!(a.offer(&chunks[1], 0), Ok(None));
        let mut other = chunks[1].clone();
        other[WELCOME_CHUNK_HEADER_BYTES] ^= 1;
        assert_eq!(a.offer(&other, 0), Err(WelcomeChunkError::Conflict { index: 1 }));
        let (out, errs) = offer_all(&mut a, &chunks, 0);
        assert!(errs.is_empty());
        assert_eq!(out, vec![b]);
    }

    #[test]
    fn inconsistent_or_impossible_headers_are_refused() {
        let b = bytes(10_000, 6);
        let id = welcome_bundle_id(&b);
        let chunks = welcome_chunks(&b, 1000).unwrap();
        let mut a = WelcomeAssembler::new();
        assert_eq!(a.offer(&chunks[0], 0), Ok(None));
        let c0 = WelcomeChunk::decode(&chunks[0]).unwrap();
        // Same id, other sizes (each valid on its own).
        let other_total = WelcomeChunk { total_bytes: 9_000, count: 10, ..c0.clone() };
        assert_eq!(
            a.offer(&other_total.encode(), 0),
            Err(WelcomeChunkError::Inconsistent { field: "total_bytes" })
        );
        let s = &b[..1000];
        let other_slice = WelcomeChunk { slice_bytes: 1000, count: 10, slice: s, ..c0.clone() };
        assert_eq!(
            a.offer(&other_slice.encode(), 0),
            Err(WelcomeChunkError::Inconsistent { field: "slice_bytes" })
        );
        // Rules of the format.
        let hdr = |index, count, total_bytes, slice_bytes, slice: &'static [u8]| {
            WelcomeChunk { bundle_id: id, index, count, total_bytes, slice_bytes, slice }.encode()
        };
        assert_eq!(
            a.offer(&hdr(3, 3, 3, 1, b"x"), 0),
            Err(WelcomeChunkError::IndexOutOfRange { index: 3, count: 3 })
        );
        let huge = WELCOME_CHUNKED_BYTES_MAX as u32 + 1;
        assert!(matches!(
            a.offer(&hdr(0, 2, huge, huge / 2 + 1, b""), 0),
            Err(WelcomeChunkError::TooLarge { .. })
        ));
        assert_eq!(
            a.offer(&hdr(0, 1025, 1025, 1, b"x"), 0),
            Err(WelcomeChunkError::TooManyChunks { count: 1025, max: WELCOME_CHUNKS_MAX })
        );
        for bad in [
            hdr(0, 2, 3, 1, b"x"),  // count is not ⌈3 / 1⌉
            hdr(0, 3, 3, 1, b"xy"), // slice longer than slice_bytes
            hdr(2, 3, 5, 2, b"xy"), // the last slice is 1 byte
            hdr(0, 1, 0, 0, b""),   // empty bundle
            hdr(0, 1, 2, 3, b"xy"), // slice_bytes over the total
            vec![WELCOME_BUNDLE_VERSION_FOR_TESTS],
            chunks[0][..WELCOME_CHUNK_HEADER_BYTES - 1].to_vec(),
        ] {
            assert!(matches!(a.offer(&bad, 0), Err(WelcomeChunkError::Decode(_))), "{bad:?}");
        }
        assert_eq!(a.bundles_in_progress(), 1, "refusals store nothing");
        let (out, _) = offer_all(&mut a, &chunks, 0);
        assert_eq!(out, vec![b]);
    }

    const WELCOME_BUNDLE_VERSION_FOR_TESTS: u8 = crate::client::WELCOME_BUNDLE_VERSION;

    #[test]
    fn bounds_refuse_new_bundles_never_evict_and_stale_ones_go_first() {
        let bundles: Vec<Vec<u8>> = (0..3).map(|i| bytes(3000, 10 + i)).collect();
        let chunks: Vec<Vec<Vec<u8>>> = bundles.iter().map(|b| welcome_chunks(b, 1000).unwrap()).collect();
        // Two bundles in progress at most.
        let mut a = small(2, 1 << 20);
        assert_eq!(a.offer(&chunks[0][0], 0), Ok(None));
        assert_eq!(a.offer(&chunks[1][0], 0), Ok(None));
        assert_eq!(a.offer(&chunks[2][0], 10), Err(WelcomeChunkError::Full { limit: "bundles" }));
        // The ones in progress go on and complete; then there is room.
        let (out, errs) = offer_all(&mut a, &chunks[0], 20);
        assert!(errs.is_empty());
        assert_eq!(out, vec![bundles[0].clone()]);
        let (out, _) = offer_all(&mut a, &chunks[2], 30);
        assert_eq!(out, vec![bundles[2].clone()]);

        // Bytes: 5,000 declared bytes at most; each bundle declares 3,000.
        let mut a = small(8, 5000);
        assert_eq!(a.offer(&chunks[0][0], 0), Ok(None));
        assert_eq!(a.bytes_in_progress(), 3000);
        assert_eq!(a.offer(&chunks[1][0], 0), Err(WelcomeChunkError::Full { limit: "bytes" }));
        assert_eq!(a.bundles_in_progress(), 1);

        // Stale (1,000 ms after its first chunk): dropped before a new bundle is judged.
        assert_eq!(a.offer(&chunks[0][1], 999), Ok(None));
        assert_eq!(a.offer(&chunks[1][0], 1000), Ok(None));
        assert_eq!((a.bundles_in_progress(), a.bytes_in_progress()), (1, 3000));
        // The dropped bundle's remaining chunk starts it again, not completes it.
        assert_eq!(a.offer(&chunks[0][2], 1000), Err(WelcomeChunkError::Full { limit: "bytes" }));
        let (out, _) = offer_all(&mut a, &chunks[1], 1500);
        assert_eq!(out, vec![bundles[1].clone()]);
        // A clock going backwards makes nothing stale.
        assert_eq!(a.offer(&chunks[0][0], 5000), Ok(None));
        assert_eq!(a.offer(&chunks[0][1], 0), Ok(None));
        assert_eq!(a.bundles_in_progress(), 1);
    }

    #[test]
    fn junk_ids_cost_at_most_the_bounds() {
        let mut a = WelcomeAssembler::new();
        let mut full = 0;
        for i in 0..10_000u32 {
            let junk = WelcomeChunk {
                bundle_id: welcome_bundle_id(&i.to_be_bytes()),
                index: 0,
                count: 1024,
                total_bytes: 1024 * 40_000,
                slice_bytes: 40_000,
                slice: &[0; 40_000],
            };
            if a.offer(&junk.encode(), u64::from(i)).is_err() {
                full += 1;
            }
            assert!(a.bundles_in_progress() <= WELCOME_ASSEMBLY_BUNDLES_MAX);
            assert!(a.bytes_in_progress() <= WELCOME_ASSEMBLY_BYTES_MAX);
        }
        assert!(full > 9_000);
        // Once the junk is stale, a genuine bundle gets in.
        let b = bytes(300_000, 9);
        let (out, errs) =
            offer_all(&mut a, &welcome_chunks(&b, 64 << 10).unwrap(), 10_000 + WELCOME_ASSEMBLY_STALE_MS);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out, vec![b]);
    }

    #[test]
    fn splitting_refuses_what_it_cannot_send() {
        assert_eq!(welcome_chunks(b"", 1000), Err(WelcomeSplitError::Empty));
        assert_eq!(
            welcome_chunks(b"abc", WELCOME_CHUNK_HEADER_BYTES),
            Err(WelcomeSplitError::ChunkTooSmall {
                chunk_bytes_max: WELCOME_CHUNK_HEADER_BYTES,
                header: WELCOME_CHUNK_HEADER_BYTES
            })
        );
        assert_eq!(
            welcome_chunks(&[0; 2000], WELCOME_CHUNK_HEADER_BYTES + 1),
            Err(WelcomeSplitError::TooManyChunks { count: 2000, max: WELCOME_CHUNKS_MAX })
        );
        assert_eq!(welcome_chunks(&[0; 1024], WELCOME_CHUNK_HEADER_BYTES + 1).unwrap().len(), 1024);
        let big = vec![0; WELCOME_CHUNKED_BYTES_MAX + 1];
        assert!(matches!(welcome_chunks(&big, 256 << 10), Err(WelcomeSplitError::TooLarge { .. })));
        // The largest bundle fits in one envelope's chunks.
        let max = welcome_chunks(&big[1..], welcome_chunk_bytes_max(&Limits::default())).unwrap();
        assert!(max.len() <= WELCOME_CHUNKS_MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..200), now in any::<u64>()) {
            let mut a = small(2, 1 << 16);
            let _ = a.offer(&junk, now);
            // The same behind a valid version byte, so the header fields are exercised.
            let mut v = vec![WELCOME_CHUNK_VERSION];
            v.extend_from_slice(&junk);
            let _ = a.offer(&v, now);
            prop_assert!(a.bundles_in_progress() <= 2 && a.bytes_in_progress() <= 1 << 16);
        }

        #[test]
        fn random_headers_never_panic(
            index in any::<u16>(), count in 0u16..40, total in 0u32..200, slice_bytes in 0u32..200,
            slice in proptest::collection::vec(any::<u8>(), 0..200), now in 0u64..5000,
        ) {
            let mut a = small(2, 1000);
            let c = WelcomeChunk { bundle_id: [7; 32], index, count, total_bytes: total, slice_bytes, slice: &slice };
            let _ = a.offer(&c.encode(), now);
            prop_assert!(a.bundles_in_progress() <= 2 && a.bytes_in_progress() <= 1000);
        }

        #[test]
        fn any_bundle_round_trips(
            len in 1usize..20_000, chunk in (WELCOME_CHUNK_HEADER_BYTES + 20)..5000, seed in any::<u64>(),
        ) {
            let b = bytes(len, seed);
            let mut chunks = welcome_chunks(&b, chunk).unwrap();
            prop_assert!(chunks.iter().all(|c| c.len() <= chunk));
            shuffle(&mut chunks, seed);
            let mut a = WelcomeAssembler::new();
            let (out, errs) = offer_all(&mut a, &chunks, 0);
            prop_assert!(errs.is_empty());
            prop_assert_eq!(out, vec![b]);
        }
    }
}
