//! Canonical, bounded binary encoding.
//!
//! Every integer is fixed-width big-endian, every variable-length field carries an explicit
//! length that is checked against a limit *before* anything is allocated, and a decoder must
//! consume its input exactly. Together this gives one byte string per value: for every accepted
//! input `b`, `encode(decode(b)) == b`.

use thiserror::Error;

/// Why a byte string was refused by a decoder. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated input: `{field}` needs more bytes than remain")]
    Truncated {
        /// Field being read.
        field: &'static str,
    },
    /// A length or count exceeded its configured limit.
    #[error("`{field}` is {len}, over the limit of {max}")]
    TooLarge {
        /// Field at fault.
        field: &'static str,
        /// Length found.
        len: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The format version is not one this build understands.
    #[error("unsupported {what} version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// What kind of object.
        what: &'static str,
        /// Version byte found.
        found: u8,
        /// Version this build supports.
        supported: u8,
    },
    /// The value is well-formed but not in its one canonical form.
    #[error("non-canonical `{field}`: {reason}")]
    NonCanonical {
        /// Field at fault.
        field: &'static str,
        /// What rule was broken.
        reason: &'static str,
    },
    /// The value is out of its domain.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// Field at fault.
        field: &'static str,
        /// What rule was broken.
        reason: &'static str,
    },
    /// Bytes were left over after a complete value.
    #[error("{count} trailing bytes after the end of the value")]
    TrailingBytes {
        /// Number of unread bytes.
        count: usize,
    },
}

/// Appends canonical encodings to a buffer.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A writer with `capacity` bytes reserved.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity) }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a big-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Appends a big-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Appends raw bytes with no length prefix (fixed-size fields).
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Appends a `u32` length prefix, then the bytes.
    ///
    /// Callers guarantee `v.len()` fits in `u32` (all Cairn limits are far below 4 GiB).
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.raw(v);
    }
    /// Current length of the output.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True if nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads canonical encodings from a byte slice, refusing anything out of bounds.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }
    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated { field });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    /// Reads a `u16` item count and checks it against `max` (before anything is allocated).
    pub fn count(&mut self, max: usize, field: &'static str) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16(field)?);
        if n > max {
            return Err(DecodeError::TooLarge { field, len: n as u64, max: max as u64 });
        }
        Ok(n)
    }
    /// Reads a `u32` length prefix, checks it against `max`, then borrows that many bytes.
    pub fn bytes(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { field, len: len as u64, max: max as u64 });
        }
        self.take(len, field)
    }
    /// Reads a version byte and checks it.
    pub fn version(&mut self, what: &'static str, supported: u8) -> Result<(), DecodeError> {
        let found = self.u8("version")?;
        if found != supported {
            return Err(DecodeError::UnsupportedVersion { what, found, supported });
        }
        Ok(())
    }
    /// Fails unless the whole input was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}

/// Refuses `len` bytes (or items) of `field` above `max`, as [`DecodeError::TooLarge`].
pub fn at_most(field: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::TooLarge { field, len: len as u64, max: max as u64 });
    }
    Ok(())
}

/// Reads a set of 32-byte ids as a `u8` count then the ids in strictly increasing order.
///
/// Strict order makes the set canonical: no duplicates, one order.
pub fn read_id_set(
    r: &mut Reader<'_>,
    max: usize,
    field: &'static str,
) -> Result<Vec<[u8; 32]>, DecodeError> {
    let count = r.u8(field)? as usize;
    if count > max {
        return Err(DecodeError::TooLarge { field, len: count as u64, max: max as u64 });
    }
    let mut out: Vec<[u8; 32]> = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.array::<32>(field)?;
        if let Some(last) = out.last()
            && *last >= id
        {
            return Err(DecodeError::NonCanonical { field, reason: "ids must be strictly increasing" });
        }
        out.push(id);
    }
    Ok(out)
}

/// Writes a set of ids (caller passes them sorted and deduplicated).
pub fn write_id_set(w: &mut Writer, ids: &[[u8; 32]]) {
    w.u8(u8::try_from(ids.len()).unwrap_or(u8::MAX));
    for id in ids {
        w.raw(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_truncation_and_trailing_bytes() {
        let mut r = Reader::new(&[0, 1]);
        assert_eq!(r.u32("x"), Err(DecodeError::Truncated { field: "x" }));
        let mut r = Reader::new(&[0, 0, 0, 1, 7, 9]);
        assert_eq!(r.bytes(4, "b").unwrap(), &[7]);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn length_is_checked_before_reading() {
        // Claims 4 GiB: must fail on the limit, not try to read or allocate.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(r.bytes(10, "b"), Err(DecodeError::TooLarge { max: 10, .. })));
    }

    #[test]
    fn id_sets_must_be_strictly_increasing() {
        let mut w = Writer::default();
        write_id_set(&mut w, &[[2; 32], [1; 32]]);
        let bytes = w.finish();
        let err = read_id_set(&mut Reader::new(&bytes), 8, "parents").unwrap_err();
        assert!(matches!(err, DecodeError::NonCanonical { .. }));
        let mut w = Writer::default();
        write_id_set(&mut w, &[[1; 32], [1; 32]]);
        let bytes = w.finish();
        assert!(read_id_set(&mut Reader::new(&bytes), 8, "parents").is_err());
    }
}
