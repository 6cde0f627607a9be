//! The ledger relay (`/cairn/ledger-relay/1`, issue 17 §1): a peer pipes a client's ledger RPC
//! connection to a validator the client cannot reach directly. Pure part: the wire (a fixed
//! header and a fixed answer), the limits and the per-peer slot accounting; the async side is
//! in [`crate::ledger_relay_io`].
//!
//! The client opens a stream and sends [`RelayHeader`]: a version byte, the chain id and the
//! consensus key of the validator, exactly [`HEADER_BYTES`]. The relay answers [`Answer`] (two
//! bytes: version, code): `Ok` and then it pipes bytes both ways between the stream and a TCP
//! connection to that validator's RPC address, or a refusal and the stream is closed.
//!
//! What a relay can and cannot do. It dials only RPC addresses its own genesis lists, found by
//! the validator's key under its own chain id, never an address from the client: it is not an
//! open proxy. It carries the RPC's Noise channel unread (the client authenticates the
//! validator's key and every frame end to end), so it learns sizes and timing only, and a byte
//! it changes makes the channel fail at the client, which blames it and takes another path.
//! What it holds is bounded: streams in all and per peer, bytes per stream, idle and total time.

use std::collections::HashMap;

/// The protocol name.
pub const LEDGER_RELAY_PROTOCOL: &str = "/cairn/ledger-relay/1";
/// The wire version (first byte of the header and of the answer).
pub const RELAY_VERSION: u8 = 1;
/// Header length: version, chain id, validator key.
pub const HEADER_BYTES: usize = 1 + 32 + 32;
/// Answer length: version, code.
pub const ANSWER_BYTES: usize = 2;

/// What a client asks a relay for: a pipe to one validator of one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    /// The chain id (the relay serves only its own).
    pub chain: [u8; 32],
    /// The validator's consensus key, as the genesis lists it.
    pub validator: [u8; 32],
}

impl RelayHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0] = RELAY_VERSION;
        out[1..33].copy_from_slice(&self.chain);
        out[33..].copy_from_slice(&self.validator);
        out
    }

    /// Reads a header; a wrong version is [`Refusal::BadHeader`] (every 65-byte string with the
    /// right version is a well-formed header: the look-up decides the rest).
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> Result<Self, Refusal> {
        if bytes[0] != RELAY_VERSION {
            return Err(Refusal::BadHeader);
        }
        let mut chain = [0u8; 32];
        chain.copy_from_slice(&bytes[1..33]);
        let mut validator = [0u8; 32];
        validator.copy_from_slice(&bytes[33..]);
        Ok(Self { chain, validator })
    }
}

/// Why a relay refused a stream (its code on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The header was malformed (wrong version) or did not arrive in time.
    #[error("malformed relay header")]
    BadHeader,
    /// The relay serves another chain.
    #[error("the relay serves another chain")]
    WrongChain,
    /// No validator with that key in the relay's genesis.
    #[error("no such validator in the relay's genesis")]
    UnknownValidator,
    /// Over the relay's stream limits (in all, or for this peer).
    #[error("relay busy")]
    Busy,
    /// The relay could not reach the validator.
    #[error("the relay cannot reach the validator")]
    Unreachable,
}

impl Refusal {
    /// The code on the wire (0 is "ok").
    pub fn code(self) -> u8 {
        match self {
            Refusal::BadHeader => 1,
            Refusal::WrongChain => 2,
            Refusal::UnknownValidator => 3,
            Refusal::Busy => 4,
            Refusal::Unreachable => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Refusal::BadHeader,
            2 => Refusal::WrongChain,
            3 => Refusal::UnknownValidator,
            4 => Refusal::Busy,
            5 => Refusal::Unreachable,
            _ => return None,
        })
    }
}

/// A relay's answer to a header.
pub type Answer = Result<(), Refusal>;

/// The answer's bytes.
pub fn encode_answer(a: Answer) -> [u8; ANSWER_BYTES] {
    [RELAY_VERSION, a.err().map_or(0, Refusal::code)]
}

/// Reads an answer; `None` if it is not one (wrong version or unknown code).
pub fn decode_answer(bytes: [u8; ANSWER_BYTES]) -> Option<Answer> {
    if bytes[0] != RELAY_VERSION {
        return None;
    }
    match bytes[1] {
        0 => Some(Ok(())),
        c => Refusal::from_code(c).map(Err),
    }
}

/// What one relay gives others, at most. Beyond a limit a stream is refused, nothing queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Relayed streams open at once, in all.
    pub streams_max: usize,
    /// Relayed streams open at once for one peer.
    pub streams_per_peer_max: usize,
    /// Bytes relayed on one stream (both directions together) before it is closed.
    pub stream_bytes_max: u64,
    /// A stream with no byte in either direction for this long is closed, ms.
    pub idle_ms: u64,
    /// Lifetime of one stream, ms.
    pub stream_ms_max: u64,
    /// Time for the header to arrive, and for the TCP connect to the validator, ms each.
    pub setup_ms: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        // A ledger client keeps one channel per validator and a validator closes it after
        // 60 s idle; answers are at most a few MiB (a block with its certificate).
        Self {
            streams_max: 64,
            streams_per_peer_max: 8,
            stream_bytes_max: 64 * 1024 * 1024,
            idle_ms: 60_000,
            stream_ms_max: 10 * 60_000,
            setup_ms: 5_000,
        }
    }
}

/// The streams a relay has open, per peer, within [`RelayLimits`]. The map holds only peers
/// with an open stream, so it never has more than `streams_max` entries.
#[derive(Debug)]
pub struct Slots<P> {
    limits: RelayLimits,
    open: usize,
    per_peer: HashMap<P, usize>,
}

impl<P: std::hash::Hash + Eq + Clone> Slots<P> {
    /// No stream open.
    pub fn new(limits: RelayLimits) -> Self {
        Self { limits, open: 0, per_peer: HashMap::new() }
    }

    /// Takes a slot for `peer`, or [`Refusal::Busy`] beyond a limit.
    pub fn take(&mut self, peer: &P) -> Result<(), Refusal> {
        let mine = self.per_peer.get(peer).copied().unwrap_or(0);
        if self.open >= self.limits.streams_max || mine >= self.limits.streams_per_peer_max {
            return Err(Refusal::Busy);
        }
        self.open += 1;
        self.per_peer.insert(peer.clone(), mine + 1);
        Ok(())
    }

    /// Gives back a slot of `peer` (one it took).
    pub fn give(&mut self, peer: &P) {
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
            self.open -= 1;
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_answers_round_trip_and_reject_other_versions() {
        let h = RelayHeader { chain: [1; 32], validator: [2; 32] };
        let bytes = h.encode();
        assert_eq!(RelayHeader::decode(&bytes), Ok(h));
        let mut bad = bytes;
        bad[0] = 2;
        assert_eq!(RelayHeader::decode(&bad), Err(Refusal::BadHeader));
        for a in [
            Ok(()),
            Err(Refusal::BadHeader),
            Err(Refusal::WrongChain),
            Err(Refusal::UnknownValidator),
            Err(Refusal::Busy),
            Err(Refusal::Unreachable),
        ] {
            assert_eq!(decode_answer(encode_answer(a)), Some(a));
        }
        assert_eq!(decode_answer([RELAY_VERSION, 9]), None);
        assert_eq!(decode_answer([0, 0]), None);
    }

    #[test]
    fn slots_hold_the_total_and_per_peer_limits() {
        let limits = RelayLimits { streams_max: 3, streams_per_peer_max: 2, ..RelayLimits::default() };
        let mut s = Slots::new(limits);
        assert_eq!(s.take(&'a'), Ok(()));
        assert_eq!(s.take(&'a'), Ok(()));
        assert_eq!(s.take(&'a'), Err(Refusal::Busy), "third stream of one peer");
        assert_eq!(s.take(&'b'), Ok(()));
        assert_eq!(s.take(&'c'), Err(Refusal::Busy), "fourth stream in all");
        s.give(&'a');
        assert_eq!(s.take(&'c'), Ok(()));
        s.give(&'z'); // never taken: no effect
        assert_eq!(s.open(), 3);
        for p in ['a', 'b', 'c'] {
            s.give(&p);
        }
        assert_eq!(s.open(), 0);
        assert!(s.per_peer.is_empty());
    }
}
