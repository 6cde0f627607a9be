//! The envelope: a clear header and a separable, padded, opaque payload.
//!
//! ```text
//! header  = version:u8 topic:[32] timestamp_ms:u64 ttl_secs:u32
//!           parent_count:u8 parents:[32]* (strictly increasing)
//!           payload_len:u32 (a size class) payload_hash:[32]
//!           erase_lock:[32] (version 2 only) pow_nonce:u64
//! envelope = header payload_state:u8 (0 erased, 1 present) payload:[payload_len]?
//! id      = BLAKE3-derive-key("cairn 2026-11 envelope id v1", header)
//! ```
//! The id covers the header only, so erasing a payload keeps the id, the chain of parent links
//! and any ledger anchor verifiable. No sender identity appears in the header.
//!
//! Version 2 adds `erase_lock = BLAKE3-derive-key("cairn 2026-12 erase lock v1", secret)`: a store
//! node drops the payload when shown `secret` (see [`erase_lock`]). A header without a lock (all
//! zeros) is written as version 1, so every version 1 envelope keeps its encoding and id; a
//! version 2 header with a zero lock is non-canonical and refused.

use crate::codec::{DecodeError, Reader, Writer, read_id_set, write_id_set};
use crate::id::{Id, Topic, domain, hash};

/// Envelope format version of a header without an erase lock (read and written).
pub const ENVELOPE_VERSION: u8 = 1;
/// Envelope format version of a header with an erase lock (read and written).
pub const ENVELOPE_VERSION_LOCKED: u8 = 2;

/// The erase lock a header commits to for `secret`: whoever shows `secret` may have store
/// nodes drop the payload. All zeros means "no lock" and is never the lock of a secret.
pub fn erase_lock(secret: &[u8; 32]) -> [u8; 32] {
    let lock = hash(domain::ERASE_LOCK, secret);
    if lock == [0; 32] { [1; 32] } else { lock }
}

/// Decoding limits for envelopes. Every field has a unit in its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded envelope accepted, in bytes (default 256 KiB).
    pub envelope_bytes_max: usize,
    /// Most parents one envelope may name.
    pub parents_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { envelope_bytes_max: 256 * 1024, parents_max: 16 }
    }
}

impl Limits {
    /// Largest header this limit set admits, in bytes.
    pub fn header_bytes_max(&self) -> usize {
        HEADER_FIXED_BYTES + 32 * self.parents_max
    }
    /// Largest payload size class that fits in `envelope_bytes_max` with a full header.
    pub fn payload_bytes_max(&self) -> usize {
        let room = self.envelope_bytes_max.saturating_sub(self.header_bytes_max() + 1);
        let mut best = 0;
        for class in SIZE_CLASSES_SMALL {
            if class <= room {
                best = class;
            }
        }
        if room >= SIZE_CLASS_STEP {
            best = best.max(room / SIZE_CLASS_STEP * SIZE_CLASS_STEP);
        }
        best
    }
}

/// Header bytes without parents: version, topic, timestamp, ttl, count, len, hash, erase
/// lock, nonce (a version 1 header is 32 bytes shorter: no lock).
pub const HEADER_FIXED_BYTES: usize = 1 + 32 + 8 + 4 + 1 + 4 + 32 + 32 + 8;
const SIZE_CLASSES_SMALL: [usize; 4] = [256, 1024, 4096, 16 * 1024];
/// Above 16 KiB, payload sizes grow in steps of this many bytes.
pub const SIZE_CLASS_STEP: usize = 16 * 1024;
/// Bytes of the length prefix inside a padded payload.
pub const PAD_PREFIX_BYTES: usize = 4;

/// The padded size class for `content_len` bytes of content (prefix included).
pub fn size_class(content_len: usize) -> usize {
    let need = content_len + PAD_PREFIX_BYTES;
    for class in SIZE_CLASSES_SMALL {
        if need <= class {
            return class;
        }
    }
    need.div_ceil(SIZE_CLASS_STEP) * SIZE_CLASS_STEP
}

/// True if `len` is one of the padded payload sizes.
pub fn is_size_class(len: usize) -> bool {
    SIZE_CLASSES_SMALL.contains(&len) || (len > 0 && len.is_multiple_of(SIZE_CLASS_STEP))
}

/// Pads content to its size class: `len:u32 content zeros`.
pub fn pad(content: &[u8], limits: &Limits) -> Result<Vec<u8>, DecodeError> {
    let class = size_class(content.len());
    let max = limits.payload_bytes_max();
    if class > max {
        return Err(DecodeError::TooLarge {
            field: "payload",
            len: content.len() as u64,
            max: (max - PAD_PREFIX_BYTES) as u64,
        });
    }
    let mut out = Vec::with_capacity(class);
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
    out.extend_from_slice(content);
    out.resize(class, 0);
    Ok(out)
}

/// Removes padding; refuses a wrong length or non-zero padding (non-canonical).
pub fn unpad(padded: &[u8]) -> Result<&[u8], DecodeError> {
    let mut r = Reader::new(padded);
    let len = r.u32("payload.len")? as usize;
    let content = r.take(len, "payload.content").map_err(|_| DecodeError::Invalid {
        field: "payload.len",
        reason: "longer than the padded payload",
    })?;
    let rest = &padded[PAD_PREFIX_BYTES + len..];
    if rest.iter().any(|b| *b != 0) {
        return Err(DecodeError::NonCanonical { field: "payload.padding", reason: "must be zero" });
    }
    Ok(content)
}

/// The clear part of an envelope: everything relays and store nodes may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Conversation topic (a hash; see [`Topic::for_conversation`]).
    pub topic: Topic,
    /// Sender's clock when sent (Unix ms).
    pub timestamp_ms: u64,
    /// How long store nodes should keep it, in seconds.
    pub ttl_secs: u32,
    /// Ids of the heads the sender had seen, strictly increasing.
    pub parents: Vec<Id>,
    /// Padded payload length (a size class).
    pub payload_len: u32,
    /// Hash of the padded payload.
    pub payload_hash: [u8; 32],
    /// [`erase_lock`] of the sender's erase secret; all zeros: no lock (version 1).
    pub erase_lock: [u8; 32],
    /// Anti-spam proof-of-work nonce (see [`crate::pow`]).
    pub pow_nonce: u64,
}

impl EnvelopeHeader {
    /// Canonical encoding; the nonce is the last 8 bytes (the miner patches it in place).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(HEADER_FIXED_BYTES + 32 * self.parents.len());
        let locked = self.erase_lock != [0; 32];
        w.u8(if locked { ENVELOPE_VERSION_LOCKED } else { ENVELOPE_VERSION });
        w.raw(&self.topic.0);
        w.u64(self.timestamp_ms);
        w.u32(self.ttl_secs);
        let parents: Vec<[u8; 32]> = self.parents.iter().map(|p| p.0).collect();
        write_id_set(&mut w, &parents);
        w.u32(self.payload_len);
        w.raw(&self.payload_hash);
        if locked {
            w.raw(&self.erase_lock);
        }
        w.u64(self.pow_nonce);
        w.finish()
    }

    /// The envelope id: hash of the canonical header.
    pub fn id(&self) -> Id {
        Id(hash(domain::ENVELOPE_ID, &self.encode()))
    }

    /// True if this header has an erase lock and `secret` opens it.
    pub fn erase_lock_opens(&self, secret: &[u8; 32]) -> bool {
        self.erase_lock != [0; 32] && erase_lock(secret) == self.erase_lock
    }

    fn decode_from(r: &mut Reader<'_>, limits: &Limits) -> Result<Self, DecodeError> {
        let version = r.u8("version")?;
        if version != ENVELOPE_VERSION && version != ENVELOPE_VERSION_LOCKED {
            // Reads 1 and 2: names the newest.
            return Err(DecodeError::UnsupportedVersion {
                what: "envelope",
                found: version,
                supported: ENVELOPE_VERSION_LOCKED,
            });
        }
        let topic = Topic(r.array("topic")?);
        let timestamp_ms = r.u64("timestamp_ms")?;
        let ttl_secs = r.u32("ttl_secs")?;
        let parents = read_id_set(r, limits.parents_max, "parents")?.into_iter().map(Id).collect();
        let payload_len = r.u32("payload_len")?;
        let max = limits.payload_bytes_max();
        if payload_len as usize > max {
            return Err(DecodeError::TooLarge {
                field: "payload_len",
                len: u64::from(payload_len),
                max: max as u64,
            });
        }
        if !is_size_class(payload_len as usize) {
            return Err(DecodeError::Invalid { field: "payload_len", reason: "not a padding size class" });
        }
        let payload_hash = r.array("payload_hash")?;
        let erase_lock = if version == ENVELOPE_VERSION_LOCKED {
            let lock: [u8; 32] = r.array("erase_lock")?;
            if lock == [0; 32] {
                return Err(DecodeError::NonCanonical {
                    field: "erase_lock",
                    reason: "a zero lock is written as version 1",
                });
            }
            lock
        } else {
            [0; 32]
        };
        let pow_nonce = r.u64("pow_nonce")?;
        Ok(Self { topic, timestamp_ms, ttl_secs, parents, payload_len, payload_hash, erase_lock, pow_nonce })
    }

    /// Decodes exactly one header.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let h = Self::decode_from(&mut r, limits)?;
        r.finish()?;
        Ok(h)
    }
}

/// A header with its payload, or with the payload erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The clear header.
    pub header: EnvelopeHeader,
    /// The padded opaque payload; `None` once erased.
    pub payload: Option<Vec<u8>>,
}

impl Envelope {
    /// Length of [`Envelope::encode`], without copying the payload.
    pub fn encoded_len(&self) -> usize {
        self.header.encode().len() + 1 + self.payload.as_ref().map_or(0, Vec::len)
    }

    /// Builds an envelope around an already padded payload (pow nonce 0: mine it after).
    pub fn new(
        topic: Topic,
        timestamp_ms: u64,
        ttl_secs: u32,
        mut parents: Vec<Id>,
        padded_payload: Vec<u8>,
    ) -> Self {
        parents.sort();
        parents.dedup();
        let header = EnvelopeHeader {
            topic,
            timestamp_ms,
            ttl_secs,
            parents,
            payload_len: padded_payload.len() as u32,
            payload_hash: hash(domain::PAYLOAD, &padded_payload),
            erase_lock: [0; 32],
            pow_nonce: 0,
        };
        Self { header, payload: Some(padded_payload) }
    }

    /// The envelope id (hash of the header).
    pub fn id(&self) -> Id {
        self.header.id()
    }

    /// Commits the header to an erase lock (before mining: the id changes).
    pub fn with_erase_lock(mut self, lock: [u8; 32]) -> Self {
        self.header.erase_lock = lock;
        self
    }

    /// Drops the payload; id and parent links stay verifiable.
    pub fn erase(&mut self) {
        self.payload = None;
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header.encode();
        match &self.payload {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(p);
            }
        }
        out
    }

    /// Decodes and checks one envelope: size limit first, canonical structure, padding class,
    /// payload length and payload hash. Anything else is an error naming the field.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        if bytes.len() > limits.envelope_bytes_max {
            return Err(DecodeError::TooLarge {
                field: "envelope",
                len: bytes.len() as u64,
                max: limits.envelope_bytes_max as u64,
            });
        }
        let mut r = Reader::new(bytes);
        let header = EnvelopeHeader::decode_from(&mut r, limits)?;
        let payload = match r.u8("payload_state")? {
            0 => None,
            1 => {
                let p = r.take(header.payload_len as usize, "payload")?;
                if hash(domain::PAYLOAD, p) != header.payload_hash {
                    return Err(DecodeError::Invalid {
                        field: "payload",
                        reason: "hash does not match the header",
                    });
                }
                Some(p.to_vec())
            }
            _ => {
                return Err(DecodeError::Invalid { field: "payload_state", reason: "must be 0 or 1" });
            }
        };
        r.finish()?;
        Ok(Self { header, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(252), 256);
        assert_eq!(size_class(253), 1024);
        assert_eq!(size_class(16 * 1024 - 4), 16 * 1024);
        assert_eq!(size_class(16 * 1024), 32 * 1024);
        assert!(is_size_class(48 * 1024));
        assert!(!is_size_class(300));
        let l = Limits::default();
        assert_eq!(l.payload_bytes_max(), 240 * 1024);
        assert!(l.payload_bytes_max() + l.header_bytes_max() < l.envelope_bytes_max);
    }

    #[test]
    fn encoded_len_is_the_encoding_length() {
        let l = Limits::default();
        let mut e =
            Envelope::new(Topic([1; 32]), 5, 60, vec![Id([2; 32]), Id([3; 32])], pad(b"hi", &l).unwrap());
        assert_eq!(e.encoded_len(), e.encode().len());
        e.erase();
        assert_eq!(e.encoded_len(), e.encode().len());
    }

    #[test]
    fn pad_round_trip_and_refusals() {
        let l = Limits::default();
        let p = pad(b"hello", &l).unwrap();
        assert_eq!(p.len(), 256);
        assert_eq!(unpad(&p).unwrap(), b"hello");
        let mut bad = p.clone();
        bad[200] = 1;
        assert!(matches!(unpad(&bad), Err(DecodeError::NonCanonical { .. })));
        let mut long = p;
        long[3] = 255;
        assert!(unpad(&long).is_err());
        assert!(pad(&vec![0; 241 * 1024], &l).is_err());
    }

    #[test]
    fn oversized_and_bad_class_are_refused() {
        let l = Limits::default();
        let e = Envelope::new(Topic([1; 32]), 5, 60, vec![], pad(b"x", &l).unwrap());
        let bytes = e.encode();
        assert_eq!(Envelope::decode(&bytes, &l).unwrap(), e);
        let small = Limits { envelope_bytes_max: 100, ..l };
        assert!(matches!(
            Envelope::decode(&bytes, &small),
            Err(DecodeError::TooLarge { field: "envelope", .. })
        ));
        let mut odd = e.clone();
        odd.header.payload_len = 300;
        assert!(matches!(
            Envelope::decode(&odd.encode(), &l),
            Err(DecodeError::Invalid { field: "payload_len", .. })
        ));
    }

    #[test]
    fn erase_lock_is_version_2_and_opens_only_with_its_secret() {
        let l = Limits::default();
        let plain = Envelope::new(Topic([1; 32]), 5, 60, vec![], pad(b"x", &l).unwrap());
        assert_eq!(plain.header.encode()[0], ENVELOPE_VERSION);
        let secret = [7u8; 32];
        let e = plain.clone().with_erase_lock(erase_lock(&secret));
        let bytes = e.encode();
        assert_eq!(bytes[0], ENVELOPE_VERSION_LOCKED);
        assert_eq!(bytes.len(), plain.encode().len() + 32);
        let back = Envelope::decode(&bytes, &l).unwrap();
        assert_eq!(back, e);
        assert_ne!(back.id(), plain.id());
        assert!(back.header.erase_lock_opens(&secret));
        assert!(!back.header.erase_lock_opens(&[8u8; 32]));
        assert!(!plain.header.erase_lock_opens(&secret), "no lock: nothing opens it");
        // A version 2 header with a zero lock has a shorter canonical form: refused.
        let mut zero = bytes.clone();
        let at = plain.header.encode().len() - 8;
        zero[at..at + 32].fill(0);
        assert!(matches!(
            Envelope::decode(&zero, &l),
            Err(DecodeError::NonCanonical { field: "erase_lock", .. })
        ));
        let mut v9 = bytes;
        v9[0] = 9;
        assert!(matches!(
            Envelope::decode(&v9, &l),
            Err(DecodeError::UnsupportedVersion { what: "envelope", found: 9, .. })
        ));
    }

    #[test]
    fn erased_envelope_keeps_its_id() {
        let l = Limits::default();
        let mut e = Envelope::new(Topic([1; 32]), 5, 60, vec![Id([9; 32])], pad(b"x", &l).unwrap());
        let id = e.id();
        e.erase();
        assert_eq!(e.id(), id);
        let back = Envelope::decode(&e.encode(), &l).unwrap();
        assert_eq!(back.payload, None);
        assert_eq!(back.id(), id);
    }
}
