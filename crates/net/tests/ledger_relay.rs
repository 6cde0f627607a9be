//! The ledger relay on 127.0.0.1 (issue 17 §1): a node pipes a stream to a validator address
//! of its own genesis (here a TCP echo server stands in for the validator's RPC listener), and
//! refuses a validator or chain it does not know, an unreachable validator, garbage headers and
//! streams beyond its limits, with typed codes, and keeps serving. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use cairn_net::ledger_relay::{Refusal, RelayHeader, RelayLimits};
use cairn_net::ledger_relay_io::{self, LedgerRelayConfig, RelayOpenError, RelayTarget};
use cairn_net::node::{NodeHandle, start};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};

mod common;
use common::cfg;

const CHAIN: [u8; 32] = [7; 32];
const ECHO: [u8; 32] = [1; 32];
const CLOSED: [u8; 32] = [2; 32];

/// A TCP server on 127.0.0.1 that echoes every connection (one thread each).
fn echo_server() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A port nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A relay node (with `limits`) and a client node connected to it.
async fn relay_and_client(dir: &std::path::Path, limits: RelayLimits) -> (NodeHandle, NodeHandle) {
    let mut rc = cfg(dir, "relay");
    rc.ledger_relay = Some(LedgerRelayConfig {
        chain: CHAIN,
        validators: vec![
            RelayTarget { key: ECHO, rpc: echo_server().to_string() },
            RelayTarget { key: CLOSED, rpc: closed_port().to_string() },
        ],
        limits,
    });
    let relay = start(rc).await.unwrap();
    let mut cc = cfg(dir, "client");
    cc.bootstrap = vec![relay.listen_addrs[0].clone()];
    let client = start(cc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.connected_peers().await.unwrap().contains(&relay.peer_id) {
        assert!(Instant::now() < deadline, "the client never connected to the relay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (relay, client)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

async fn open(
    client: &NodeHandle,
    relay: &NodeHandle,
    chain: [u8; 32],
    key: [u8; 32],
) -> Result<libp2p::Stream, RelayOpenError> {
    let header = RelayHeader { chain, validator: key };
    ledger_relay_io::open(&mut client.stream_control(), relay.peer_id, header, soon()).await
}

/// Writes `msg` and reads it back through the relay.
async fn echoes(s: &mut libp2p::Stream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, msg);
}

fn refused(r: Result<libp2p::Stream, RelayOpenError>) -> Refusal {
    match r {
        Err(RelayOpenError::Refused(why)) => why,
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipes_to_genesis_validators_only_and_survives_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits { setup_ms: 1_000, ..RelayLimits::default() };
    let (relay, client) = relay_and_client(dir.path(), limits).await;

    let mut s = open(&client, &relay, CHAIN, ECHO).await.unwrap();
    echoes(&mut s, b"a relayed hello").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    echoes(&mut s, &big).await;

    // Typed refusals: a key not in the relay's genesis, another chain, a validator the relay
    // cannot reach. The client names keys, never addresses: nothing else can be dialled.
    assert_eq!(refused(open(&client, &relay, CHAIN, [9; 32]).await), Refusal::UnknownValidator);
    assert_eq!(refused(open(&client, &relay, [8; 32], ECHO).await), Refusal::WrongChain);
    assert_eq!(refused(open(&client, &relay, CHAIN, CLOSED).await), Refusal::Unreachable);

    // Garbage: a header with another version is refused; a short header then silence is
    // refused when the setup time runs out; a header-sized burst of random bytes too.
    let mut raw =
        client.stream_control().open_stream(relay.peer_id, ledger_relay_io::PROTOCOL).await.unwrap();
    let mut bad = RelayHeader { chain: CHAIN, validator: ECHO }.encode();
    bad[0] = 0xee;
    raw.write_all(&bad).await.unwrap();
    raw.flush().await.unwrap();
    let mut answer = [0u8; 2];
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [1, Refusal::BadHeader.code()]);

    let mut raw =
        client.stream_control().open_stream(relay.peer_id, ledger_relay_io::PROTOCOL).await.unwrap();
    raw.write_all(&[1, 2, 3]).await.unwrap();
    raw.flush().await.unwrap();
    let started = Instant::now();
    raw.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [1, Refusal::BadHeader.code()]);
    assert!(started.elapsed() < Duration::from_secs(5), "the header wait is bounded");

    for seed in 0..20u32 {
        let mut raw =
            client.stream_control().open_stream(relay.peer_id, ledger_relay_io::PROTOCOL).await.unwrap();
        let junk: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(seed + 31) >> 3) as u8).collect();
        let _ = raw.write_all(&junk).await;
        let _ = raw.close().await;
    }

    // Still serving, and the first stream still pipes.
    let mut again = open(&client, &relay, CHAIN, ECHO).await.unwrap();
    echoes(&mut again, b"still here").await;
    echoes(&mut s, b"first stream still open").await;

    // A node that does not relay does not take the protocol.
    let plain = start(cfg(dir.path(), "plain")).await.unwrap();
    client.dial(plain.listen_addrs[0].clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client.connected_peers().await.unwrap().contains(&plain.peer_id) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(open(&client, &plain, CHAIN, ECHO).await, Err(RelayOpenError::Stream(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_bytes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayLimits {
        streams_max: 3,
        streams_per_peer_max: 2,
        stream_bytes_max: 100_000,
        idle_ms: 1_500,
        ..RelayLimits::default()
    };
    let (relay, client) = relay_and_client(dir.path(), limits).await;

    // Per peer: the third concurrent stream is refused as busy; closing one frees its slot.
    let mut a = open(&client, &relay, CHAIN, ECHO).await.unwrap();
    let mut b = open(&client, &relay, CHAIN, ECHO).await.unwrap();
    echoes(&mut a, b"a").await;
    echoes(&mut b, b"b").await;
    assert_eq!(refused(open(&client, &relay, CHAIN, ECHO).await), Refusal::Busy);
    b.close().await.unwrap();
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match open(&client, &relay, CHAIN, ECHO).await {
            Ok(c) => break c,
            Err(RelayOpenError::Refused(Refusal::Busy)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("slot not given back: {e}"),
        }
    };
    echoes(&mut c, b"c").await;

    // In all: a second client takes the third slot, and a fourth stream is refused.
    let mut cc = cfg(dir.path(), "client-2");
    cc.bootstrap = vec![relay.listen_addrs[0].clone()];
    let other = start(cc).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !other.connected_peers().await.unwrap().contains(&relay.peer_id) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut d = open(&other, &relay, CHAIN, ECHO).await.unwrap();
    echoes(&mut d, b"d").await;
    assert_eq!(refused(open(&other, &relay, CHAIN, ECHO).await), Refusal::Busy);

    // Bytes: past 100,000 bytes in both directions the relay closes the stream.
    let chunk = vec![5u8; 20_000];
    let mut closed = false;
    for _ in 0..10 {
        if a.write_all(&chunk).await.is_err() || a.flush().await.is_err() {
            closed = true;
            break;
        }
        let mut back = vec![0u8; chunk.len()];
        match tokio::time::timeout(Duration::from_secs(5), a.read_exact(&mut back)).await {
            Ok(Ok(())) => {}
            _ => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "200,000 bytes went through a stream bounded at 100,000");

    // Idle: a stream with no byte for 1.5 s is closed by the relay.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), d.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "an idle stream stays open: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_caller_gets_a_socket_piped_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (relay, client) = relay_and_client(dir.path(), RelayLimits::default()).await;
    let rt = tokio::runtime::Handle::current();
    let control = client.stream_control();
    let peer = relay.peer_id;
    tokio::task::spawn_blocking(move || {
        let header = RelayHeader { chain: CHAIN, validator: ECHO };
        let mut s = ledger_relay_io::open_blocking(
            &rt,
            control.clone(),
            peer,
            header,
            soon(),
            RelayLimits::default(),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"blocking hello").unwrap();
        let mut back = [0u8; 14];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"blocking hello");
        let header = RelayHeader { chain: CHAIN, validator: [9; 32] };
        let r = ledger_relay_io::open_blocking(&rt, control, peer, header, soon(), RelayLimits::default());
        assert!(matches!(r, Err(RelayOpenError::Refused(Refusal::UnknownValidator))), "{r:?}");
    })
    .await
    .unwrap();
}
