#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The ledger RPC over loopback: a real validator-side server answers a real client over the
//! encrypted channel; garbage (in a handshake or in a request) gets an error answer or a
//! closed connection, never a panic, and the server keeps serving; a validator that cannot
//! prove the genesis key of its address is refused; every client call returns within its
//! deadline even when a validator stalls or drips bytes.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

mod support;

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::server::respond;
use cairn_ledger::rpc::{
    Channel, ClientError, FrameError, LedgerClient, NoiseError, RemoteStatus, Request, Response, RpcIdentity,
    serve,
};
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};
use commonware_codec::DecodeExt as _;
use commonware_cryptography::{Signer as _, ed25519};
use proptest::prelude::*;
use support::{accept, connect, read_frame, soon, write_frame};

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 90; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// An ed25519 key from a one-byte seed.
fn key(seed: u8) -> ed25519::PrivateKey {
    ed25519::PrivateKey::decode(vec![seed; 32]).unwrap()
}

/// The key of the genesis validator.
fn validator_key() -> ed25519::PrivateKey {
    key(61)
}

/// A one-validator genesis whose RPC address is `rpc` and key [`validator_key`], funding two
/// users (the same genesis for the same address).
fn genesis(rpc: SocketAddr) -> Genesis {
    let accounts = (0..2).map(|i| (id(&user(i)), 1_000_000_000)).collect();
    let (mut g, _) = Genesis::local("rpc", 1, 29500, accounts).unwrap();
    g.validators[0].rpc = rpc.into();
    g.validators[0].key = validator_key().public_key();
    g
}

/// The channel identity of the genesis validator at `rpc`.
fn identity(rpc: SocketAddr) -> RpcIdentity {
    RpcIdentity::new(&validator_key(), genesis(rpc).chain_id()).unwrap()
}

/// A ledger served on a fresh loopback port, as the genesis validator.
fn served() -> (Genesis, Ledger, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let ledger = Ledger::new(&g).unwrap();
    let l = ledger.clone();
    std::thread::spawn(move || serve(listener, l, identity(addr)));
    (g, ledger, addr)
}

/// Over a fresh channel: `send` raw messages, then reads one response frame and checks the
/// server closes after it.
fn raw_exchange(addr: SocketAddr, send: impl FnOnce(&mut Channel)) -> Response {
    let mut ch = connect(addr, &genesis(addr), 0);
    send(&mut ch);
    let body = read_frame(&mut ch).expect("an answer");
    // The server closes: end of stream (or a reset if our unread bytes were still queued).
    let after = ch.recv(cairn_ledger::rpc::FRAME_MAX, soon());
    assert!(
        matches!(after, Err(FrameError::Closed | FrameError::Io(_))),
        "nothing after the error: {after:?}"
    );
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
        let resp = raw_exchange(addr, |ch| assert!(write_frame(ch, &body)));
        assert!(matches!(&resp, Response::Error(m) if m.contains("malformed request")), "{body:?}: {resp:?}");
    }
    // A length over the limit: refused unread.
    let resp = raw_exchange(addr, |ch| ch.send_message(&u32::MAX.to_be_bytes(), soon()).unwrap());
    assert!(matches!(&resp, Response::Error(m) if m.contains("over the limit")), "{resp:?}");
    // A frame whose messages break the layout (a first message without its length).
    let resp = raw_exchange(addr, |ch| ch.send_message(&[1, 2], soon()).unwrap());
    assert!(matches!(&resp, Response::Error(m) if m.contains("layout")), "{resp:?}");
    // The server still serves well-formed requests afterwards.
    let mut ch = connect(addr, &genesis(addr), 0);
    assert!(write_frame(&mut ch, &Request::Status.encode()));
    let body = read_frame(&mut ch).unwrap();
    assert!(matches!(Response::decode(&body).unwrap(), Response::Status(_)));
}

/// Sends `bytes` on a plain TCP connection and reads until the server closes it (or 10 s).
fn raw_then_closed(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut got = Vec::new();
    let start = Instant::now();
    let _ = s.read_to_end(&mut got);
    assert!(start.elapsed() < Duration::from_secs(9), "the server closed the connection");
    got
}

#[test]
fn garbage_handshakes_are_refused_and_the_server_keeps_serving() {
    let (g, _, addr) = served();
    // A plaintext frame of the unencrypted protocol, a huge announced hello, a hello cut
    // short: closed without an answer (there is no channel to answer on).
    let status = Request::Status.encode();
    let plain = [(status.len() as u32).to_be_bytes().as_slice(), &status].concat();
    for bytes in [plain, vec![0xff, 0xff, 1, 2, 3], vec![0, 32, 1, 2, 3], vec![0; 1000]] {
        assert!(raw_then_closed(addr, &bytes).is_empty(), "{bytes:?}");
    }
    // 32 random bytes are a well-formed hello (any 32 bytes are an X25519 key): the server
    // replies, then refuses the garbage that follows and closes.
    let mut bytes = vec![0, 32];
    bytes.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    bytes.extend([0, 40]);
    bytes.extend([7u8; 40]);
    let got = raw_then_closed(addr, &bytes);
    assert!(got.len() >= 2 + cairn_ledger::rpc::noise::REPLY_BYTES, "a reply, then an end: {got:?}");
    // Dozens of garbage connections later, a real client is served.
    for i in 0..40u8 {
        raw_then_closed(addr, &[i; 7]);
    }
    let mut c = LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5));
    assert_eq!(c.status().unwrap().height, 0);
}

#[test]
fn a_validator_without_the_genesis_key_is_refused() {
    // A man in the middle at the validator's address: it serves the real ledger (it could
    // relay it) under its own key, which is not the one the genesis lists there.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let ledger = Ledger::new(&g).unwrap();
    let impostor = RpcIdentity::new(&key(62), g.chain_id()).unwrap();
    std::thread::spawn(move || serve(listener, ledger, impostor));
    let mut c = LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5));
    let res = c.status();
    assert!(
        matches!(&res, Err(ClientError::Unauthenticated(m)) if m.contains("genesis") && m.contains(&addr.to_string())),
        "{res:?}"
    );
    assert!(c.is_suspect(0), "a validator that cannot prove its key is asked last");
    assert!(matches!(c.submit(&[1, 2, 3]), Err(ClientError::Unreachable(_))), "nothing is sent to it");

    // The real key, but for another chain (the genesis differs): refused as well.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let elsewhere = RpcIdentity::new(&validator_key(), [9; 32]).unwrap();
    std::thread::spawn(move || serve(listener, Ledger::new(&g).unwrap(), elsewhere));
    let res = Channel::connect(
        TcpStream::connect(addr).unwrap(),
        &genesis(addr).chain_id(),
        &validator_key().public_key(),
        soon(),
    );
    assert!(matches!(res, Err(FrameError::Noise(NoiseError::Reply(_)))), "{res:?}");
}

#[test]
fn a_validator_refusing_the_request_is_a_bad_answer() {
    // A validator that answers every request with an error (as for a malformed request).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().take(1) {
            let Some(mut ch) = accept(s.unwrap(), &identity(addr)) else { return };
            let _ = read_frame(&mut ch);
            write_frame(&mut ch, &Response::Error("nope".into()).encode());
        }
    });
    let mut c = LedgerClient::new(&genesis(addr)).unwrap().with_timeout(Duration::from_secs(5));
    assert!(matches!(c.status(), Err(ClientError::BadAnswer(m)) if m.contains("nope")));
}

/// A fake validator that accepts connections and then does `behave` with each (and the
/// genesis validator's channel identity).
fn fake_validator(behave: fn(TcpStream, RpcIdentity)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || behave(s, identity(addr)));
        }
    });
    addr
}

/// Never answers, not even the handshake.
fn silent(s: TcpStream, _: RpcIdentity) {
    std::thread::sleep(Duration::from_secs(5));
    drop(s);
}

/// Completes the handshake, then announces a 1000-byte message and drips it a byte at a time.
fn dripping(s: TcpStream, id: RpcIdentity) {
    let mut raw = s.try_clone().unwrap();
    let Some(ch) = accept(s, &id) else { return };
    let _ = raw.write_all(&1000u16.to_be_bytes());
    for _ in 0..250 {
        if raw.write_all(&[2]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(ch);
}

/// Drips its handshake reply a byte at a time.
fn dripping_handshake(mut s: TcpStream, _: RpcIdentity) {
    let _ = s.write_all(&(cairn_ledger::rpc::noise::REPLY_BYTES as u16).to_be_bytes());
    for _ in 0..250 {
        if s.write_all(&[2]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_call_returns_within_its_deadline() {
    for (name, addr) in [
        ("silent", fake_validator(silent)),
        ("dripping", fake_validator(dripping)),
        ("dripping handshake", fake_validator(dripping_handshake)),
    ] {
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
fn inflating(s: TcpStream, id: RpcIdentity) {
    let Some(mut s) = accept(s, &id) else { return };
    while let Some(body) = read_frame(&mut s) {
        let answer = match Request::decode(&body) {
            Ok(Request::Nonce(_)) => Response::Nonce(1_000_000),
            Ok(Request::Proof(_)) => Response::Proof(None),
            _ => Response::Error("no".into()),
        };
        if !write_frame(&mut s, &answer.encode()) {
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
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// The channel's decoders never panic on garbage (as the fuzz target checks): a validator
    /// reading a hello, a client reading a reply (garbage never authenticates), either side
    /// opening a sealed message.
    #[test]
    fn handshake_decoders_survive_garbage(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        use cairn_ledger::rpc::noise::{answer_hello, hello};
        let chain = [1; 32];
        let id = RpcIdentity::from_seed([7; 32], chain).unwrap();
        let _ = answer_hello(&id, &data);
        let (pending, _) = hello(&chain).unwrap();
        prop_assert!(pending.finish(&data, &id.public_key()).is_err());
        let (pending, msg) = hello(&chain).unwrap();
        let (reply, mut server) = answer_hello(&id, &msg).unwrap();
        let mut client = pending.finish(&reply, &id.public_key()).unwrap();
        prop_assert!(server.open_first(&data).is_err(), "garbage does not decrypt");
        prop_assert!(client.open(&data).is_err());
    }
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
