//! The peer book, sans-IO: peers this node was connected to, with the addresses that worked
//! (dialled successfully, or announced by the peer through identify while connected), kept so a
//! restarted node can rejoin when its bootstrap peers are gone, and the redial schedule
//! (exponential backoff per peer). The actor feeds it events and dials what [`PeerBook::due`]
//! returns; it saves [`PeerBook::encode`] to `DIR/peers` and loads it with [`PeerBook::decode`].
//!
//! File format, version 1 (big-endian, every length bounded before allocation):
//! ```text
//! magic:"CAIRNPB\0" version:u8 count:u16 (≤ PEERS_MAX)
//!   { peer:bytes(≤ PEER_ID_BYTES_MAX) last_seen_ms:u64 addrs:u16 (≤ ADDRS_PER_PEER_MAX)
//!     { addr:bytes(≤ ADDR_BYTES_MAX) } }
//! ```
//! Bounded: at most [`PEERS_MAX`] peers of [`ADDRS_PER_PEER_MAX`] addresses each.
//! Eviction: a new peer past [`PEERS_MAX`] replaces the one seen connected longest ago
//! (entries never connected — bootstrap seeds — count as seen at 0, so they go first); a new
//! address past [`ADDRS_PER_PEER_MAX`] replaces that peer's oldest one.

use std::collections::HashMap;

use cairn_proto::codec::{DecodeError, Reader, Writer};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Peers kept, at most.
pub const PEERS_MAX: usize = 256;
/// Addresses kept per peer, at most.
pub const ADDRS_PER_PEER_MAX: usize = 4;
/// Longest address kept, bytes (longer ones are ignored).
pub const ADDR_BYTES_MAX: usize = 256;
/// Longest encoded peer id read, bytes (Ed25519 ids are 38).
pub const PEER_ID_BYTES_MAX: usize = 64;
/// Largest peer book file read, bytes (the format cannot exceed it).
pub const PEER_BOOK_BYTES_MAX: usize =
    16 + PEERS_MAX * (4 + PEER_ID_BYTES_MAX + 8 + 2 + ADDRS_PER_PEER_MAX * (4 + ADDR_BYTES_MAX));
/// First redial delay after a connection is lost or a dial attempt made, ms.
pub const BACKOFF_INITIAL_MS: u64 = 1_000;
/// Longest redial delay, ms (the delay doubles per failed attempt up to it).
pub const BACKOFF_MAX_MS: u64 = 5 * 60_000;

const MAGIC: &[u8; 8] = b"CAIRNPB\0";
const VERSION: u8 = 1;

/// The delay before the next dial after `attempts` attempts without a connection:
/// 1 s, 2 s, 4 s, … up to 5 min.
pub fn backoff_ms(attempts: u32) -> u64 {
    BACKOFF_INITIAL_MS.saturating_mul(1u64 << attempts.min(20)).min(BACKOFF_MAX_MS)
}

#[derive(Debug, Clone)]
struct Entry {
    /// Newest first.
    addrs: Vec<Multiaddr>,
    /// Last connection (ms since the epoch); 0: never connected (a seed).
    last_seen_ms: u64,
    /// Dial attempts since the last connection.
    attempts: u32,
    /// Not dialled before this time, ms.
    next_dial_ms: u64,
}

/// Known peers and their redial schedule. See the module docs for bounds and eviction.
#[derive(Debug, Clone, Default)]
pub struct PeerBook {
    peers: HashMap<PeerId, Entry>,
    dirty: bool,
}

/// The peer id at the end of an address (`…/p2p/ID`), and the address without it.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut a = addr.clone();
    match a.pop() {
        Some(Protocol::P2p(id)) => Some((id, a)),
        _ => None,
    }
}

impl PeerBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Peers known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Peers with at least one address to dial.
    pub fn dialable(&self) -> usize {
        self.peers.values().filter(|e| !e.addrs.is_empty()).count()
    }

    /// Whether the book changed since the last [`PeerBook::encode`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The addresses kept for `peer`, newest first.
    pub fn addrs(&self, peer: &PeerId) -> Option<&[Multiaddr]> {
        self.peers.get(peer).map(|e| e.addrs.as_slice())
    }

    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        if !self.peers.contains_key(&peer) && self.peers.len() >= PEERS_MAX {
            // Eviction: the peer seen connected longest ago (seeds, at 0, first).
            if let Some(old) = self.peers.iter().min_by_key(|(_, e)| e.last_seen_ms).map(|(p, _)| *p) {
                self.peers.remove(&old);
            }
        }
        self.peers.entry(peer).or_insert(Entry {
            addrs: Vec::new(),
            last_seen_ms: 0,
            attempts: 0,
            next_dial_ms: 0,
        })
    }

    fn add_addr(e: &mut Entry, addr: Multiaddr) -> bool {
        if addr.is_empty()
            || addr.len() > ADDR_BYTES_MAX
            || addr.iter().any(|p| matches!(p, Protocol::P2p(_)))
        {
            return false;
        }
        if e.addrs.first() == Some(&addr) {
            return false;
        }
        e.addrs.retain(|a| a != &addr);
        e.addrs.insert(0, addr);
        e.addrs.truncate(ADDRS_PER_PEER_MAX);
        true
    }

    /// A bootstrap address with its peer id: known, dialled when due, never evicting a peer
    /// that was connected. Addresses without `/p2p/ID` are ignored.
    pub fn seed(&mut self, addr: &Multiaddr) {
        let Some((peer, a)) = split_peer(addr) else { return };
        if !self.peers.contains_key(&peer) && self.peers.len() >= PEERS_MAX {
            return;
        }
        let e = self.entry(peer);
        if e.addrs.is_empty() {
            Self::add_addr(e, a);
        }
    }

    /// A connection to `peer` was established; `dialled`: the address we dialled (not the
    /// remote address of an inbound connection, an ephemeral port).
    pub fn connected(&mut self, peer: PeerId, dialled: Option<Multiaddr>, now_ms: u64) {
        let e = self.entry(peer);
        e.last_seen_ms = now_ms;
        e.attempts = 0;
        e.next_dial_ms = 0;
        if let Some(a) = dialled {
            let a = split_peer(&a).map(|(_, a)| a).unwrap_or(a);
            Self::add_addr(e, a);
        }
        self.dirty = true;
    }

    /// Addresses a connected peer says it listens on (identify). Only for known peers: the
    /// actor calls [`PeerBook::connected`] first, so a stranger cannot fill the book.
    pub fn learned(&mut self, peer: &PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let Some(e) = self.peers.get_mut(peer) else { return };
        let mut changed = false;
        // Keep the dialled address first: identify's list goes after it.
        let first = e.addrs.first().cloned();
        for a in addrs.into_iter().take(ADDRS_PER_PEER_MAX * 4) {
            changed |= Self::add_addr(e, a);
        }
        if let Some(f) = first
            && e.addrs.first() != Some(&f)
        {
            e.addrs.retain(|a| a != &f);
            e.addrs.insert(0, f);
            e.addrs.truncate(ADDRS_PER_PEER_MAX);
        }
        self.dirty |= changed;
    }

    /// The last connection to `peer` closed: redial after the first backoff.
    pub fn disconnected(&mut self, peer: &PeerId, now_ms: u64) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.attempts = 0;
            e.next_dial_ms = now_ms + backoff_ms(0);
        }
    }

    /// Up to `want` peers to dial now, with their addresses: known, not `connected`, and due.
    /// Each one returned counts as an attempt: its next dial waits [`backoff_ms`] of the
    /// attempts so far (1 s doubling to 5 min) unless a connection resets it.
    pub fn due(
        &mut self,
        now_ms: u64,
        want: usize,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut cands: Vec<(&PeerId, &Entry)> = self
            .peers
            .iter()
            .filter(|(p, e)| e.next_dial_ms <= now_ms && !e.addrs.is_empty() && !connected(p))
            .collect();
        // Most recently seen first: the likeliest to be up.
        cands.sort_by_key(|(p, e)| (std::cmp::Reverse(e.last_seen_ms), **p));
        let chosen: Vec<PeerId> = cands.into_iter().take(want).map(|(p, _)| *p).collect();
        chosen
            .into_iter()
            .filter_map(|p| {
                let e = self.peers.get_mut(&p)?;
                e.next_dial_ms = now_ms + backoff_ms(e.attempts);
                e.attempts = e.attempts.saturating_add(1);
                Some((p, e.addrs.clone()))
            })
            .collect()
    }

    /// The file bytes (clears the dirty flag). Peers in a fixed order: equal books, equal bytes.
    pub fn encode(&mut self) -> Vec<u8> {
        self.dirty = false;
        let mut peers: Vec<(&PeerId, &Entry)> = self.peers.iter().collect();
        peers.sort_by_key(|(p, _)| **p);
        let mut w = Writer::with_capacity(64 + peers.len() * 128);
        w.raw(MAGIC);
        w.u8(VERSION);
        w.u16(peers.len() as u16);
        for (p, e) in peers {
            w.bytes(&p.to_bytes());
            w.u64(e.last_seen_ms);
            w.u16(e.addrs.len() as u16);
            for a in &e.addrs {
                w.bytes(&a.to_vec());
            }
        }
        w.finish()
    }

    /// Reads a peer book file; every peer is due at once (a fresh start).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > PEER_BOOK_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "peer book",
                len: bytes.len() as u64,
                max: PEER_BOOK_BYTES_MAX as u64,
            });
        }
        let mut r = Reader::new(bytes);
        if r.take(8, "magic")? != MAGIC {
            return Err(DecodeError::Invalid { field: "magic", reason: "not a Cairn peer book" });
        }
        r.version("peer book", VERSION)?;
        let n = r.count(PEERS_MAX, "peers")?;
        let mut peers = HashMap::with_capacity(n);
        for _ in 0..n {
            let peer = PeerId::from_bytes(r.bytes(PEER_ID_BYTES_MAX, "peer")?)
                .map_err(|_| DecodeError::Invalid { field: "peer", reason: "not a peer id" })?;
            let last_seen_ms = r.u64("last_seen_ms")?;
            let k = r.count(ADDRS_PER_PEER_MAX, "addrs")?;
            let mut addrs = Vec::with_capacity(k);
            for _ in 0..k {
                let a = Multiaddr::try_from(r.bytes(ADDR_BYTES_MAX, "addr")?.to_vec())
                    .map_err(|_| DecodeError::Invalid { field: "addr", reason: "not a multiaddr" })?;
                addrs.push(a);
            }
            let e = Entry { addrs, last_seen_ms, attempts: 0, next_dial_ms: 0 };
            if peers.insert(peer, e).is_some() {
                return Err(DecodeError::Invalid { field: "peer", reason: "listed twice" });
            }
        }
        r.finish()?;
        Ok(Self { peers, dirty: false })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let got: Vec<u64> = (0..12).map(backoff_ms).collect();
        assert_eq!(got[..6], [1_000, 2_000, 4_000, 8_000, 16_000, 32_000]);
        assert_eq!(backoff_ms(8), 256_000);
        assert_eq!(backoff_ms(9), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }

    #[test]
    fn due_follows_the_backoff_and_a_connection_resets_it() {
        let mut b = PeerBook::new();
        let p = PeerId::random();
        b.connected(p, Some(addr(1)), 10);
        b.disconnected(&p, 1_000);
        assert!(b.due(1_999, 8, |_| false).is_empty(), "redialled before the first backoff");
        let mut t = 2_000;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let d = b.due(t, 8, |_| false);
            assert_eq!(d, vec![(p, vec![addr(1)])]);
            // The next attempt comes exactly one backoff later.
            let next = (t..t + BACKOFF_MAX_MS + 1)
                .step_by(500)
                .find(|&u| !b.clone().due(u, 8, |_| false).is_empty());
            let next = next.unwrap();
            delays.push(next - t);
            t = next;
        }
        assert_eq!(delays[..4], [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX_MS);
        b.connected(p, None, t);
        assert!(b.due(t + 1, 8, |_| true).is_empty(), "a connected peer is not dialled");
        b.disconnected(&p, t);
        assert_eq!(b.due(t + 1_000, 8, |_| false).len(), 1, "backoff not reset by the connection");
    }

    #[test]
    fn due_takes_at_most_want_most_recent_first() {
        let mut b = PeerBook::new();
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            b.connected(*p, Some(addr(i as u16 + 1)), 100 + i as u64);
        }
        let d = b.due(1_000, 2, |_| false);
        assert_eq!(d.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![peers[4], peers[3]]);
    }

    #[test]
    fn bounded_with_oldest_evicted_and_addresses_capped() {
        let mut b = PeerBook::new();
        let first = PeerId::random();
        b.connected(first, Some(addr(1)), 1);
        for i in 0..PEERS_MAX {
            b.connected(PeerId::random(), Some(addr(2)), 10 + i as u64);
        }
        assert_eq!(b.len(), PEERS_MAX);
        assert!(b.addrs(&first).is_none(), "the least recently seen peer was not evicted");
        let p = PeerId::random();
        b.connected(p, Some(addr(1)), 5_000);
        b.learned(&p, (2..20).map(addr));
        let kept = b.addrs(&p).unwrap();
        assert_eq!(kept.len(), ADDRS_PER_PEER_MAX);
        assert_eq!(kept[0], addr(1), "the dialled address stays first");
        // A stranger's identify does not enter the book.
        b.learned(&PeerId::random(), [addr(9)]);
        assert_eq!(b.len(), PEERS_MAX);
    }

    #[test]
    fn round_trip_and_seeds() {
        let mut b = PeerBook::new();
        let p = PeerId::random();
        b.connected(p, Some(addr(7).with(Protocol::P2p(p))), 42);
        b.learned(&p, [addr(8), "/ip4/127.0.0.1/udp/9/quic-v1".parse().unwrap()]);
        let q = PeerId::random();
        b.seed(&addr(3).with(Protocol::P2p(q)));
        b.seed(&addr(4)); // no peer id: ignored
        assert!(b.is_dirty());
        let bytes = b.encode();
        assert!(!b.is_dirty());
        let mut c = PeerBook::decode(&bytes).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.addrs(&p), b.addrs(&p));
        assert_eq!(c.addrs(&q).unwrap(), &[addr(3)]);
        assert_eq!(c.encode(), bytes);
        // Loaded peers are due at once, most recently seen first.
        assert_eq!(c.due(0, 8, |_| false).into_iter().map(|(p, _)| p).collect::<Vec<_>>(), vec![p, q]);
    }

    #[test]
    fn decoder_refuses_garbage_oversize_and_other_versions() {
        let mut b = PeerBook::new();
        b.connected(PeerId::random(), Some(addr(1)), 1);
        let good = b.encode();
        assert!(PeerBook::decode(b"").is_err());
        assert!(PeerBook::decode(b"hello world, not a peer book").is_err());
        let mut v = good.clone();
        v[8] = 2;
        assert!(matches!(PeerBook::decode(&v), Err(DecodeError::UnsupportedVersion { found: 2, .. })));
        assert!(matches!(
            PeerBook::decode(&vec![0u8; PEER_BOOK_BYTES_MAX + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut count = good.clone();
        count[9..11].copy_from_slice(&(PEERS_MAX as u16 + 1).to_be_bytes());
        assert!(matches!(PeerBook::decode(&count), Err(DecodeError::TooLarge { .. })));
        for cut in 0..good.len() {
            assert!(PeerBook::decode(&good[..cut]).is_err(), "truncated at {cut} accepted");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(PeerBook::decode(&trailing).is_err());
        // Every single-byte flip either fails or decodes to a bounded book: never a panic.
        for i in 0..good.len() {
            let mut t = good.clone();
            t[i] ^= 0xff;
            if let Ok(b) = PeerBook::decode(&t) {
                assert!(b.len() <= PEERS_MAX);
            }
        }
    }
}
