#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The ledger RPC over loopback: a real validator-side server answers a real client; garbage
//! gets an error answer and a closed connection, never a panic; every client call returns
//! within its deadline even when a validator stalls or drips bytes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod support;

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::server::respond;
use cairn_ledger::rpc::{ClientError, LedgerClient, RemoteStatus, Request, Response, serve};
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};
use proptest::prelude::*;
use support::{frame, read_frame};

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 90; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// A one-validator genesis whose RPC address is `rpc`, funding two users.
fn genesis(rpc: SocketAddr) -> Genesis {
    let accounts = (0..2).map(|i| (id(&user(i)), 1_000_000_000)).collect();
    let (mut g, _) = Genesis::local("rpc", 1, 29500, accounts).unwrap();
    g.validators[0].rpc = rpc.into();
    g
}

/// A ledger served on a fresh loopback port.
fn served() -> (Genesis, Ledger, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let ledger = Ledger::new(&g).unwrap();
    let l = ledger.clone();
    std::thread::spawn(move || serve(listener, l));
    (g, ledger, addr)
}

/// Sends raw bytes, then reads one response frame and checks the server closes after it.
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    let mut rest = Vec::new();
    // The server closes: end of stream (or a reset if our unread bytes were still queued).
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the error answer");
    Response::decode(&body).unwrap()
}

#[test]
fn a_client_gets_real_answers() {
    let (g, _ledger, _) = served();
    let mut c = LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5));
    assert_eq!(c.status().unwrap().height, 0);
    assert_eq!(c.status_at(0).unwrap().mempool, 0);
    let (a, b) = (user(0), user(1));
    assert_eq!(c.nonce(&id(&a).0).unwrap(), 0);

    let tx = Tx::sign(c.chain(), id(&a), &a, 0, TxBody::Transfer { to: id(&b), amount: 5 }).encode();
    let tx_id = c.submit(&tx).unwrap();
    assert_eq!(c.tx_status_at(0, &tx_id).unwrap(), RemoteStatus::Pending);
    assert_eq!(c.status().unwrap().mempool, 1);

    // A replay of the same nonce with another body is refused with its code.
    let other = Tx::sign(c.chain(), id(&a), &a, 0, TxBody::Transfer { to: id(&b), amount: 6 }).encode();
    let batch = c.submit_batch_detailed(&[other, vec![1, 2, 3]]).unwrap();
    assert_eq!(batch.2, 0, "no failed calls");
    assert_eq!(batch.1.len() + batch.0, 2);

    // Oversized transactions are refused before they leave.
    let huge = vec![0u8; cairn_ledger::tx::TX_BYTES_MAX + 1];
    let code = TxError::Oversized { len: 0, max: 0 }.code();
    assert!(matches!(c.submit(&huge), Err(ClientError::Refused { code: c2, .. }) if c2 == code));

    let (genesis_block, fin) = c.block(0).unwrap().expect("the genesis block");
    assert_eq!(genesis_block.header.height, 0);
    assert!(fin.is_none());
    assert!(c.block(1).unwrap().is_none());
    // No block is certified yet, so nothing about a topic is proven and no list is believed.
    let unproven = c.handshakes(&Topic([3; 32]), 0, 10);
    assert!(matches!(unproven, Err(ClientError::Unreachable(ref m)) if m.contains("proof")), "{unproven:?}");
    assert!(c.handshakes(&Topic([3; 32]), 0, 0).unwrap().is_empty());
}

#[test]
fn garbage_gets_an_error_answer_and_a_closed_connection() {
    let (_, _, addr) = served();
    for body in [vec![], vec![9, 9, 9], vec![1], vec![2], vec![2, 77], vec![2, 2, 0]] {
        let resp = raw_exchange(addr, &frame(&body));
        assert!(matches!(&resp, Response::Error(m) if m.contains("malformed request")), "{body:?}: {resp:?}");
    }
    // A length prefix over the limit: refused unread.
    let resp = raw_exchange(addr, &u32::MAX.to_be_bytes());
    assert!(matches!(&resp, Response::Error(m) if m.contains("over the limit")), "{resp:?}");
    // The server still serves well-formed requests afterwards.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&frame(&Request::Status.encode())).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert!(matches!(Response::decode(&body).unwrap(), Response::Status(_)));
}

#[test]
fn a_validator_refusing_the_request_is_a_bad_answer() {
    // A validator that answers every request with an error (as for a malformed request).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().take(1) {
            let mut s = s.unwrap();
            let _ = s.write_all(&frame(&Response::Error("nope".into()).encode()));
        }
    });
    let mut c = LedgerClient::new(&genesis(addr)).unwrap().with_timeout(Duration::from_secs(5));
    assert!(matches!(c.status(), Err(ClientError::BadAnswer(m)) if m.contains("nope")));
}

/// A fake validator that accepts connections and then does `behave` with each.
fn fake_validator(behave: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || behave(s));
        }
    });
    addr
}

fn silent(s: TcpStream) {
    std::thread::sleep(Duration::from_secs(5));
    drop(s);
}

fn dripping(mut s: TcpStream) {
    let _ = s.write_all(&1000u32.to_be_bytes());
    for _ in 0..250 {
        if s.write_all(&[2]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_call_returns_within_its_deadline() {
    for (name, addr) in [("silent", fake_validator(silent)), ("dripping", fake_validator(dripping))] {
        let mut c = LedgerClient::new(&genesis(addr)).unwrap().with_timeout(Duration::from_millis(300));
        let start = Instant::now();
        let res = c.status();
        assert!(matches!(res, Err(ClientError::Timeout)), "{name}: {res:?}");
        assert!(start.elapsed() < Duration::from_millis(1500), "{name}: took {:?}", start.elapsed());

        // wait_final's own bound wins over the (longer) call timeout.
        let mut c = c.with_timeout(Duration::from_secs(10));
        let start = Instant::now();
        let res = c.wait_final(&cairn_ledger::tx::TxId([1; 32]), Duration::from_millis(400));
        assert!(matches!(res, Err(ClientError::Timeout)), "{name}: {res:?}");
        assert!(start.elapsed() < Duration::from_millis(2000), "{name}: took {:?}", start.elapsed());
    }
}

/// A lying validator: no proofs, and a next nonce far ahead of any real one (a client that
/// believed it would sign transactions no mempool accepts).
fn inflating(mut s: TcpStream) {
    while let Some(body) = read_frame(&mut s) {
        let answer = match Request::decode(&body) {
            Ok(Request::Nonce(_)) => Response::Nonce(1_000_000),
            Ok(Request::Proof(_)) => Response::Proof(None),
            _ => Response::Error("no".into()),
        };
        if s.write_all(&frame(&answer.encode())).is_err() {
            return;
        }
    }
}

#[test]
fn a_nonce_far_ahead_of_the_proven_one_is_ignored() {
    let mut c =
        LedgerClient::new(&genesis(fake_validator(inflating))).unwrap().with_timeout(Duration::from_secs(5));
    assert!(matches!(c.nonce(&id(&user(0)).0), Err(ClientError::Unreachable(m)) if m.contains("plausible")));
    assert!(c.is_suspect(0), "a nonce beyond any mempool is a lie");
}

#[test]
fn an_absent_validator_is_unreachable() {
    // Bind then drop: nothing listens there any more.
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut c = LedgerClient::new(&genesis(addr)).unwrap().with_timeout(Duration::from_secs(2));
    assert!(matches!(c.status(), Err(ClientError::Unreachable(_))));
    assert!(matches!(c.nonce(&[0; 32]), Err(ClientError::Unreachable(_))));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// The server's request handling never panics: garbage gets an error answer and `close`.
    #[test]
    fn the_server_survives_garbage(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let ledger = Ledger::new(&genesis(SocketAddr::from(([127, 0, 0, 1], 1)))).unwrap();
        let (resp, keep) = respond(&ledger, &body);
        if Request::decode(&body).is_err() {
            prop_assert!(!keep);
            prop_assert!(matches!(resp, Response::Error(_)));
        } else {
            prop_assert!(keep);
        }
        // The answer always encodes within the frame limit and decodes back.
        let b = resp.encode();
        prop_assert!(b.len() <= cairn_ledger::rpc::RESPONSE_BYTES_MAX);
        prop_assert_eq!(Response::decode(&b).unwrap(), resp);
    }
}

#[test]
fn a_contract_query_travels_over_rpc_and_names_its_refusal() {
    let (g, _ledger, _) = served();
    let mut c = LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5));
    match c.query(&[7; 32], b"anything") {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, TxError::UnknownContract.code());
            assert!(message.contains("no contract"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
