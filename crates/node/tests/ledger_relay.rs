//! The node's ledger clients through a peer (issue 17 §1), on 127.0.0.1: a real ledger RPC
//! server, a real relay node (`/cairn/ledger-relay/1`) and the node's [`PeerRelays`] over a
//! real libp2p connection. A validator whose genesis address is closed answers through the
//! relay, a peer that does not relay is skipped; the test prints the round trip direct and
//! relayed (run with `--nocapture` to see it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{ClientError, LedgerClient, RpcIdentity, serve};
use cairn_net::ledger_relay_io::RelayTarget;
use cairn_net::node::{NodeConfig, NodeHandle, start};
use cairn_node::shell::ledger_relays::{PeerRelays, relay_config};

/// Round trips timed per path.
const ROUNDS: u32 = 200;

/// A one-validator genesis listing `rpc`, and the validator's RPC server for it on a fresh
/// port: the genesis and the server's real address.
fn chain(rpc: Option<SocketAddr>) -> (Genesis, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let real = listener.local_addr().unwrap();
    let (mut g, keys) = Genesis::local("relay-rtt", 1, 29800, Vec::new()).unwrap();
    g.validators[0].rpc = rpc.unwrap_or(real).into();
    let ledger = Ledger::new(&g).unwrap();
    let id = RpcIdentity::new(&keys[0], g.chain_id()).unwrap();
    std::thread::spawn(move || serve(listener, ledger, id));
    (g, real)
}

async fn node(
    dir: &std::path::Path,
    name: &str,
    relay: Option<cairn_net::ledger_relay_io::LedgerRelayConfig>,
) -> NodeHandle {
    let mut c = NodeConfig::new(dir.join(name));
    c.ledger_relay = relay;
    start(c).await.unwrap()
}

async fn connect(from: &NodeHandle, to: &NodeHandle) {
    from.dial(to.listen_addrs[0].clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !from.connected_peers().await.unwrap().contains(&to.peer_id) {
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Mean of `ROUNDS` status round trips on one kept channel, and of `ROUNDS / 10` on fresh ones.
fn time(client: &mut LedgerClient) -> (Duration, Duration) {
    client.status().unwrap();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        client.status().unwrap();
    }
    let kept = start.elapsed() / ROUNDS;
    let start = Instant::now();
    for _ in 0..ROUNDS / 10 {
        client.detached().status().unwrap();
    }
    (kept, start.elapsed() / (ROUNDS / 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_behind_a_closed_address_answers_through_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (g, real) = chain(Some(closed));
    // The relay's genesis copy is the same chain; it reaches the validator at its real address
    // (as a relay on another network would reach what the client cannot).
    let mut rc = relay_config(&g);
    rc.validators = vec![RelayTarget { key: rc.validators[0].key, rpc: real.to_string() }];
    let relay = node(dir.path(), "relay", Some(rc)).await;
    let plain = node(dir.path(), "plain", None).await;
    let me = node(dir.path(), "me", None).await;
    connect(&me, &plain).await;
    connect(&me, &relay).await;

    let relays = Arc::new(PeerRelays::new(me.clone(), tokio::runtime::Handle::current()));
    let g2 = g.clone();
    let figures = tokio::task::spawn_blocking(move || {
        let mut direct_only = LedgerClient::new(&g2).unwrap().with_timeout(Duration::from_secs(3));
        assert!(matches!(direct_only.status(), Err(ClientError::Unreachable(_))));
        let mut relayed =
            LedgerClient::new(&g2).unwrap().with_timeout(Duration::from_secs(3)).with_relays(relays);
        // Whichever order the peers come in, the one that does not relay is skipped.
        for _ in 0..5 {
            assert_eq!(relayed.detached().status().unwrap().height, 0);
        }
        time(&mut relayed)
    })
    .await
    .unwrap();

    // The direct path, timed on a chain whose genesis lists the server's real address (another
    // address is another chain id, so it is another chain).
    let (g_direct, _) = chain(None);
    let direct = tokio::task::spawn_blocking(move || {
        let mut c = LedgerClient::new(&g_direct).unwrap().with_timeout(Duration::from_secs(3));
        time(&mut c)
    })
    .await
    .unwrap();
    eprintln!(
        "ledger status round trip on loopback, mean: direct {:?} kept / {:?} new channel; via a peer {:?} kept / {:?} new channel",
        direct.0, direct.1, figures.0, figures.1
    );
}
