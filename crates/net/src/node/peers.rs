//! The actor's side of the peer book ([`crate::peerbook`]): loaded from `DIR/peers` at start
//! (bootstrap addresses with a peer id are added as seeds), fed with connections and identify
//! answers, redialled on the tick while fewer than `dial_target` peers are connected (bootstrap
//! addresses without a peer id, such as a DNS name, while none is connected), and
//! saved atomically (temp file, fsync, rename, directory fsync) at most every
//! `PEER_BOOK_SAVE_EVERY_MS` when it changed, and at shutdown. The file is at most
//! `PEER_BOOK_BYTES_MAX` (≈ 340 KiB); writing it blocks the actor for one small fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, warn};

use super::actor::Node;
use super::config::NodeConfig;
use super::now_ms;
use crate::peerbook::{PEER_BOOK_BYTES_MAX, PeerBook, backoff_ms};

/// The peer book's file in the data dir.
pub(super) const PEER_BOOK_FILE: &str = "peers";
/// Saves of a changed book, at most one per this period, ms.
const PEER_BOOK_SAVE_EVERY_MS: u64 = 10_000;
/// Peers redialled per tick, at most.
const REDIALS_PER_TICK_MAX: usize = 8;
/// Bootstrap addresses without a peer id kept for redialling, at most.
const ANONYMOUS_BOOTSTRAP_MAX: usize = 16;

/// The book and where it is saved.
pub(super) struct Book {
    book: PeerBook,
    path: PathBuf,
    saved_ms: u64,
    /// Bootstrap addresses without `/p2p/ID` (the book keys peers by id, so they cannot be
    /// seeds): dialled again while no peer at all is connected, with the same backoff.
    anonymous: Vec<Multiaddr>,
    anonymous_attempts: u32,
    anonymous_next_ms: u64,
}

/// Loads the book of `config` (if kept), seeded with the bootstrap peers. A file that cannot be
/// read is moved aside to `peers.corrupt` (nothing lost, a warning logged) and the node starts
/// with the bootstrap peers alone.
pub(super) fn load(config: &NodeConfig, local: &PeerId) -> Option<Book> {
    if !config.peer_book {
        return None;
    }
    let path = config.data_dir.join(PEER_BOOK_FILE);
    let mut book = match read(&path) {
        Ok(b) => b,
        Err(why) => {
            let aside = path.with_extension("corrupt");
            warn!(
                "peer book {}: {why}; moved to {} and starting without it",
                path.display(),
                aside.display()
            );
            let _ = fs::rename(&path, &aside);
            PeerBook::new()
        }
    };
    let mut anonymous = Vec::new();
    for b in &config.bootstrap {
        match crate::peerbook::split_peer(b) {
            Some((p, _)) if p != *local => book.seed(b),
            Some(_) => {}
            None if anonymous.len() < ANONYMOUS_BOOTSTRAP_MAX => anonymous.push(b.clone()),
            None => {}
        }
    }
    let now = now_ms();
    Some(Book {
        book,
        path,
        saved_ms: now,
        anonymous,
        anonymous_attempts: 1, // dialled once at start
        anonymous_next_ms: now + backoff_ms(0),
    })
}

fn read(path: &Path) -> Result<PeerBook, String> {
    match fs::metadata(path) {
        Ok(m) if m.len() > PEER_BOOK_BYTES_MAX as u64 => {
            return Err(format!("{} bytes, over the limit of {PEER_BOOK_BYTES_MAX}", m.len()));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PeerBook::new()),
        Err(e) => return Err(e.to_string()),
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    PeerBook::decode(&bytes).map_err(|e| e.to_string())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Book {
    /// Peers with an address to redial.
    pub(super) fn dialable(&self) -> usize {
        self.book.dialable()
    }

    /// Saves the book if it changed (and, unless `now`, the last save is old enough).
    pub(super) fn save(&mut self, force: bool) {
        let now = now_ms();
        if !self.book.is_dirty() || (!force && now.saturating_sub(self.saved_ms) < PEER_BOOK_SAVE_EVERY_MS) {
            return;
        }
        self.saved_ms = now;
        if let Err(e) = write_atomic(&self.path, &self.book.encode()) {
            warn!("cannot save the peer book {}: {e}", self.path.display());
        }
    }
}

impl Node {
    /// A connection was established (`dialled`: the address, when we dialled).
    pub(super) fn book_connected(&mut self, peer: PeerId, dialled: Option<Multiaddr>) {
        if let Some(b) = &mut self.book {
            b.book.connected(peer, dialled, now_ms());
        }
    }

    /// The last connection to `peer` closed.
    pub(super) fn book_disconnected(&mut self, peer: &PeerId) {
        if let Some(b) = &mut self.book {
            b.book.disconnected(peer, now_ms());
        }
    }

    /// A connected peer's listen addresses (identify).
    pub(super) fn book_learned(&mut self, peer: &PeerId, addrs: &[Multiaddr]) {
        if let Some(b) = &mut self.book {
            b.book.learned(peer, addrs.iter().cloned());
        }
    }

    /// Dials `peer` at `addrs` unless it is connected or being dialed; `why` names the caller
    /// in the debug log of a refused dial.
    pub(super) fn dial_known(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, why: &str) {
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(%peer, "{why}: {e}");
        }
    }

    /// On the tick: dials the due peers while fewer than `dial_target` are connected, and
    /// saves the book when it changed.
    pub(super) fn redial(&mut self) {
        let connected = self.swarm.connected_peers().count();
        let target = self.config.dial_target as usize;
        if let Some(b) = &mut self.book
            && connected < target
        {
            let want = (target - connected).min(REDIALS_PER_TICK_MAX);
            let swarm = &self.swarm;
            let due = b.book.due(now_ms(), want, |p| swarm.is_connected(p));
            for (peer, addrs) in due {
                self.dial_known(peer, addrs, "redial");
            }
        }
        let Some(b) = &mut self.book else { return };
        let now = now_ms();
        if connected == 0 && !b.anonymous.is_empty() && now >= b.anonymous_next_ms {
            b.anonymous_next_ms = now + backoff_ms(b.anonymous_attempts);
            b.anonymous_attempts = b.anonymous_attempts.saturating_add(1);
            for a in b.anonymous.clone() {
                if let Err(e) = self.swarm.dial(a.clone()) {
                    debug!("redial bootstrap {a}: {e}");
                }
            }
        } else if connected > 0 {
            b.anonymous_attempts = 0;
        }
        b.save(false);
    }

    /// At shutdown: saves the book if it changed.
    pub(super) fn save_book(&mut self) {
        if let Some(b) = &mut self.book {
            b.save(true);
        }
    }
}
