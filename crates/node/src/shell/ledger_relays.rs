//! The node's ledger clients reach validators through connected peers when they cannot dial
//! them (issue 17 §1): [`PeerRelays`] is the [`Relays`] a [`LedgerClient`] falls back to,
//! opening `/cairn/ledger-relay/1` streams (see `cairn_net::ledger_relay`) through the mesh.
//! The RPC channel and every proof check run end to end through the relay, so a relay is
//! trusted with nothing; one whose channel fails is tried last for [`BLAME_MS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{Pipe, Relays};
use cairn_net::PeerId;
use cairn_net::ledger_relay::{RelayHeader, RelayLimits};
use cairn_net::ledger_relay_io::{LedgerRelayConfig, RelayTarget, open_blocking};
use cairn_net::node::NodeHandle;

/// A relay whose channel failed is tried after the others for this long, ms.
pub const BLAME_MS: u64 = 60_000;
/// Relays remembered as blamed, at most. Overflow policy: the list is cleared (blame only
/// orders the peers; nothing is refused because of it).
pub const BLAMED_MAX: usize = 1_024;
/// Connected peers offered as relays per new connection, at most (the client tries fewer).
pub const RELAY_CANDIDATES_MAX: usize = 16;
/// How long asking the mesh for its connected peers may take, ms.
const PEERS_ASK_MS: u64 = 1_000;

/// What the node relays for others: the validators of its own genesis, by key, at the RPC
/// addresses that genesis lists.
pub fn relay_config(genesis: &Genesis) -> LedgerRelayConfig {
    LedgerRelayConfig {
        chain: genesis.chain_id(),
        validators: genesis
            .validators
            .iter()
            .map(|v| RelayTarget { key: key_bytes(v), rpc: v.rpc.to_string() })
            .collect(),
        limits: RelayLimits::default(),
    }
}

/// A validator's consensus key's 32 bytes (through its hex form, the one encoding the genesis exposes).
fn key_bytes(v: &cairn_ledger::genesis::ValidatorInfo) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(b) = hex::decode(cairn_ledger::genesis::public_key_hex(&v.key)) {
        let n = b.len().min(32);
        out[..n].copy_from_slice(&b[..n]);
    }
    out
}

/// Connected peers as relays of ledger RPC channels, for the node's blocking ledger clients.
pub struct PeerRelays {
    net: NodeHandle,
    rt: tokio::runtime::Handle,
    direct_first: AtomicBool,
    blamed: Mutex<HashMap<PeerId, Instant>>,
}

impl std::fmt::Debug for PeerRelays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRelays").field("direct_first", &self.direct_first).finish_non_exhaustive()
    }
}

impl PeerRelays {
    /// Relays through the peers of `net`, driven on `rt`; validators are dialled directly
    /// first until [`PeerRelays::set_direct_first`] says otherwise.
    pub fn new(net: NodeHandle, rt: tokio::runtime::Handle) -> Self {
        Self { net, rt, direct_first: AtomicBool::new(true), blamed: Mutex::new(HashMap::new()) }
    }

    /// `false`: validators are reached through peers only (`cairn up --ledger-via-peers`).
    pub fn set_direct_first(&self, direct: bool) {
        self.direct_first.store(direct, Ordering::Release);
    }

    fn is_blamed(&self, peer: &PeerId, now: Instant) -> bool {
        let blamed = self.blamed.lock().unwrap_or_else(PoisonError::into_inner);
        blamed.get(peer).is_some_and(|t| now.duration_since(*t) < Duration::from_millis(BLAME_MS))
    }
}

impl Relays for PeerRelays {
    fn direct_first(&self) -> bool {
        self.direct_first.load(Ordering::Acquire)
    }

    fn peers(&self) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let net = self.net.clone();
        self.rt.spawn(async move {
            let _ = tx.send(net.connected_peers().await.unwrap_or_default());
        });
        let Ok(mut peers) = rx.recv_timeout(Duration::from_millis(PEERS_ASK_MS)) else { return Vec::new() };
        let now = Instant::now();
        // Peers not blamed first, each group in a fresh random order (so clients spread over
        // relays, and a relay cannot make itself first).
        let mut keyed: Vec<(bool, u64, PeerId)> =
            peers.drain(..).map(|p| (self.is_blamed(&p, now), shuffle_key(), p)).collect();
        keyed.sort_by_key(|(blamed, r, _)| (*blamed, *r));
        keyed.into_iter().take(RELAY_CANDIDATES_MAX).map(|(_, _, p)| p.to_string()).collect()
    }

    fn open(
        &self,
        peer: &str,
        chain: &[u8; 32],
        validator: &[u8; 32],
        deadline: Instant,
    ) -> Result<Box<dyn Pipe>, String> {
        let peer: PeerId = peer.parse().map_err(|e| format!("peer id {peer}: {e}"))?;
        let header = RelayHeader { chain: *chain, validator: *validator };
        let control = self.net.stream_control();
        match open_blocking(&self.rt, control, peer, header, deadline, RelayLimits::default()) {
            Ok(pipe) => Ok(Box::new(pipe)),
            Err(e) => Err(e.to_string()),
        }
    }

    fn blame(&self, peer: &str) {
        let Ok(peer) = peer.parse::<PeerId>() else { return };
        tracing::info!(%peer, "a ledger channel relayed by this peer failed; trying others first");
        let mut blamed = self.blamed.lock().unwrap_or_else(PoisonError::into_inner);
        if blamed.len() >= BLAMED_MAX {
            blamed.clear();
        }
        blamed.insert(peer, Instant::now());
    }
}

/// A random sort key (0 if no randomness: the order is then the mesh's).
fn shuffle_key() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}
