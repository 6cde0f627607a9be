#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The ledger RPC protocol: every request and response round-trips canonically, garbage and
//! truncations are refused with a typed error (never a panic), and fixtures freeze the format.

use std::path::PathBuf;

use cairn_ledger::block::Block;
use cairn_ledger::light::StateProof;
use cairn_ledger::outcome_proof::OutcomeProof;
use cairn_ledger::rpc::{
    BATCH_MAX, HandshakePage, PROTOCOL_VERSION, ProtocolError, REQUEST_BYTES_MAX, Refusal, RemoteChainStatus,
    RemoteOutcome, RemoteStatus, Request, Response,
};
use cairn_ledger::state::StateKey;
use cairn_ledger::tx::TxId;
use cairn_proto::codec::DecodeError;
use cairn_proto::{AccountId, Topic};
use proptest::collection::vec;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = String> {
    // At most 60 characters of at most 4 bytes: under every text limit of the protocol.
    "\\PC{0,60}"
}

fn key() -> impl Strategy<Value = StateKey> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|a| StateKey::Account(AccountId(a))),
        "[a-z0-9_]{0,32}".prop_map(StateKey::Handle),
        any::<[u8; 32]>().prop_map(StateKey::Nonce),
        any::<[u8; 32]>().prop_map(|t| StateKey::Topic(Topic(t))),
        any::<[u8; 32]>().prop_map(|t| StateKey::Anchor(Topic(t))),
        any::<[u8; 32]>().prop_map(|t| StateKey::Authority(Topic(t))),
        Just(StateKey::Meta),
        Just(StateKey::Params),
        Just(StateKey::Stores),
        any::<[u8; 32]>().prop_map(|d| StateKey::KeyPackages(cairn_proto::DeviceId(d))),
        any::<[u8; 32]>().prop_map(StateKey::Code),
        any::<[u8; 32]>().prop_map(StateKey::Contract),
        (any::<[u8; 32]>(), bytes(128)).prop_map(|(a, k)| StateKey::ContractState(a, k)),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        bytes(300).prop_map(Request::Submit),
        Just(Request::Status),
        any::<[u8; 32]>().prop_map(|id| Request::TxStatus(TxId(id))),
        any::<u64>().prop_map(Request::Block),
        key().prop_map(Request::Proof),
        (any::<[u8; 32]>(), any::<u64>(), 0u32..=256).prop_map(|(t, from, max)| Request::Handshakes {
            topic: Topic(t),
            from,
            max
        }),
        any::<[u8; 32]>().prop_map(Request::Nonce),
        vec(bytes(64), 0..8).prop_map(Request::SubmitBatch),
        (any::<[u8; 32]>(), bytes(200)).prop_map(|(contract, msg)| Request::Query { contract, msg }),
        (any::<[u8; 32]>(), any::<u64>(), 0u32..=256, any::<u64>()).prop_map(|(t, from, max, until)| {
            Request::HandshakePage { topic: Topic(t), from, max, until }
        }),
        any::<[u8; 32]>().prop_map(|id| Request::OutcomeProof(TxId(id))),
    ]
}

fn refusal() -> impl Strategy<Value = Refusal> {
    (any::<u8>(), text()).prop_map(|(code, message)| Refusal { code, message })
}

fn admission() -> impl Strategy<Value = Result<TxId, Refusal>> {
    prop_oneof![any::<[u8; 32]>().prop_map(|id| Ok(TxId(id))), refusal().prop_map(Err)]
}

fn outcome() -> impl Strategy<Value = RemoteOutcome> {
    prop_oneof![
        Just(RemoteOutcome::Applied),
        (any::<[u8; 32]>(), any::<u64>())
            .prop_map(|(t, seq)| RemoteOutcome::Sequenced { topic: Topic(t), seq }),
        (refusal(), proptest::option::of(any::<(u64, u64)>())).prop_map(|(r, stale)| RemoteOutcome::Failed {
            code: r.code,
            message: r.message,
            stale
        }),
    ]
}

fn status() -> impl Strategy<Value = RemoteStatus> {
    prop_oneof![
        Just(RemoteStatus::Unknown),
        Just(RemoteStatus::Pending),
        refusal().prop_map(|r| RemoteStatus::Rejected { code: r.code, message: r.message }),
        (any::<u64>(), outcome()).prop_map(|(height, outcome)| RemoteStatus::Finalized { height, outcome }),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>(), vec(bytes(80), 0..4), any::<[u8; 32]>())
        .prop_map(|(h, parent, root, txs, outcomes)| Block::new(h, parent, root, txs, outcomes))
}

fn proof() -> impl Strategy<Value = StateProof> {
    (block(), bytes(200), proptest::option::of(bytes(100)), bytes(200)).prop_map(
        |(b, finalization, value, proof)| StateProof { header: b.header, finalization, value, proof },
    )
}

fn outcome_proof() -> impl Strategy<Value = OutcomeProof> {
    (vec(block(), 1..4), bytes(200), any::<u32>(), outcome(), vec(any::<[u8; 32]>(), 0..14)).prop_map(
        |(blocks, finalization, index, outcome, path)| OutcomeProof {
            headers: blocks.iter().map(|b| b.header).collect(),
            finalization,
            index,
            outcome,
            path,
        },
    )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        admission().prop_map(Response::Submitted),
        (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
            |(height, digest, state_root, mempool)| {
                Response::Status(RemoteChainStatus { height, digest, state_root, mempool })
            }
        ),
        status().prop_map(Response::TxStatus),
        proptest::option::of((block(), proptest::option::of(bytes(200)))).prop_map(Response::Block),
        proptest::option::of(proof()).prop_map(Response::Proof),
        vec(bytes(100), 0..6).prop_map(Response::Handshakes),
        any::<u64>().prop_map(Response::Nonce),
        vec(admission(), 0..8).prop_map(Response::SubmittedBatch),
        text().prop_map(Response::Error),
        prop_oneof![bytes(200).prop_map(Ok), refusal().prop_map(Err)].prop_map(Response::Query),
        (any::<[u8; 32]>(), vec(bytes(64), 0..8), vec(any::<[u8; 32]>(), 0..20)).prop_map(
            |(start, payloads, links)| Response::HandshakePage(HandshakePage { start, payloads, links })
        ),
        proptest::option::of(outcome_proof()).prop_map(Response::OutcomeProof),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(req in request()) {
        let b = req.encode();
        prop_assert_eq!(b[0], PROTOCOL_VERSION);
        prop_assert_eq!(Request::decode(&b).unwrap(), req);
        // Every strict prefix is refused, and so is one extra byte.
        for cut in 0..b.len() {
            prop_assert!(Request::decode(&b[..cut]).is_err());
        }
        let mut longer = b.clone();
        longer.push(0);
        prop_assert_eq!(Request::decode(&longer), Err(ProtocolError::Malformed(DecodeError::TrailingBytes { count: 1 })));
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let b = resp.encode();
        prop_assert_eq!(b[0], PROTOCOL_VERSION);
        prop_assert_eq!(Response::decode(&b).unwrap(), resp);
        for cut in 0..b.len() {
            prop_assert!(Response::decode(&b[..cut]).is_err());
        }
        let mut longer = b.clone();
        longer.push(0);
        let trailing = matches!(Response::decode(&longer), Err(ProtocolError::Malformed(DecodeError::TrailingBytes { .. })));
        prop_assert!(trailing, "one trailing byte is refused");
    }

    /// Random bytes never panic a decoder; whatever is accepted is canonical.
    #[test]
    fn garbage_is_refused_or_canonical(b in bytes(600)) {
        if let Ok(r) = Request::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
        if let Ok(r) = Response::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
    }

    /// Garbage after a valid version and kind: still never a panic, still canonical.
    #[test]
    fn garbage_bodies_are_refused_or_canonical(kind in 0u8..12, body in bytes(400)) {
        let mut b = vec![PROTOCOL_VERSION, kind];
        b.extend_from_slice(&body);
        if let Ok(r) = Request::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
        if let Ok(r) = Response::decode(&b) {
            prop_assert_eq!(r.encode(), b.clone());
        }
    }

    /// Flipping any byte of a valid message is refused or decodes to another canonical value.
    #[test]
    fn mutations_are_refused_or_canonical(resp in response(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let mut b = resp.encode();
        let i = at.index(b.len());
        b[i] ^= x;
        if let Ok(r) = Response::decode(&b) {
            prop_assert_eq!(r.encode(), b);
        }
    }

    /// Any first byte other than the version is refused as an unsupported version.
    #[test]
    fn other_versions_are_refused(v in any::<u8>(), rest in bytes(40)) {
        prop_assume!(v != PROTOCOL_VERSION);
        let mut b = vec![v];
        b.extend_from_slice(&rest);
        let want = ProtocolError::UnsupportedVersion { found: v, supported: PROTOCOL_VERSION };
        prop_assert_eq!(Request::decode(&b), Err(want.clone()));
        prop_assert_eq!(Response::decode(&b), Err(want));
    }
}

#[test]
fn empty_input_is_refused() {
    assert!(matches!(Request::decode(&[]), Err(ProtocolError::Malformed(DecodeError::Truncated { .. }))));
    assert!(matches!(Response::decode(&[]), Err(ProtocolError::Malformed(DecodeError::Truncated { .. }))));
}

#[test]
fn version_one_requests_are_refused_clearly() {
    // Version 1 had no version byte: its frames began with their kind (1..=8), so a version-1
    // submit (kind 1) reads as version 1. (Its status request, the lone byte 2, reads as a
    // truncated version-2 request: refused too.)
    let err = Request::decode(&[1, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(err, ProtocolError::UnsupportedVersion { found: 1, supported: 2 });
    assert!(err.to_string().contains("unsupported ledger rpc version 1"), "{err}");
    assert!(Request::decode(&[2]).is_err());
}

#[test]
fn unknown_kinds_are_named() {
    assert_eq!(Request::decode(&[2, 0]), Err(ProtocolError::UnknownKind { what: "request", kind: 0 }));
    assert_eq!(Request::decode(&[2, 9]), Err(ProtocolError::UnknownKind { what: "request", kind: 9 }));
    assert_eq!(Response::decode(&[2, 10]), Err(ProtocolError::UnknownKind { what: "response", kind: 10 }));
    assert_eq!(Request::decode(&[2, 5, 14]), Err(ProtocolError::UnknownKind { what: "state key", kind: 14 }));
    assert_eq!(Response::decode(&[2, 3, 4]), Err(ProtocolError::UnknownKind { what: "tx status", kind: 4 }));
    assert_eq!(Response::decode(&[2, 1, 2]), Err(ProtocolError::UnknownKind { what: "admission", kind: 2 }));
}

#[test]
fn limits_are_checked_before_reading() {
    // A batch announcing more transactions than allowed.
    let mut b = vec![2, 8];
    b.extend_from_slice(&u16::try_from(BATCH_MAX + 1).unwrap().to_be_bytes());
    assert!(matches!(Request::decode(&b), Err(ProtocolError::Malformed(DecodeError::TooLarge { .. }))));
    // A submit announcing 4 GiB.
    assert!(matches!(
        Request::decode(&[2, 1, 0xff, 0xff, 0xff, 0xff]),
        Err(ProtocolError::Malformed(DecodeError::TooLarge { field: "submit.tx", .. }))
    ));
    // A handshake request over the per-reply limit.
    let over = Request::Handshakes { topic: Topic([1; 32]), from: 0, max: 257 }.encode();
    assert!(matches!(Request::decode(&over), Err(ProtocolError::Malformed(DecodeError::TooLarge { .. }))));
    // A handle over the handle limit.
    let long = Request::Proof(StateKey::Handle("a".repeat(33))).encode();
    assert!(matches!(Request::decode(&long), Err(ProtocolError::Malformed(DecodeError::TooLarge { .. }))));
    // A whole request over the frame limit.
    let huge = vec![2u8; REQUEST_BYTES_MAX + 1];
    assert!(matches!(Request::decode(&huge), Err(ProtocolError::TooLarge { what: "request", .. })));
    // Text that is not UTF-8, and a flag that is neither 0 nor 1.
    assert!(matches!(
        Response::decode(&[2, 9, 0, 0, 0, 1, 0xff]),
        Err(ProtocolError::Malformed(DecodeError::Invalid { .. }))
    ));
    assert!(matches!(
        Response::decode(&[2, 5, 2]),
        Err(ProtocolError::Malformed(DecodeError::NonCanonical { .. }))
    ));
}

#[test]
fn long_texts_are_cut_at_a_character_boundary() {
    let long = "é".repeat(500);
    let decoded = Response::decode(&Response::Error(long.clone()).encode()).unwrap();
    let Response::Error(m) = decoded else { panic!("kind changed") };
    assert_eq!(m.len(), 256);
    assert!(long.starts_with(&m));
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Compares `bytes` with the checked-in fixture `name` (hex). Set `CAIRN_BLESS=1` to rewrite
/// fixtures after an intentional format change (and bump [`PROTOCOL_VERSION`]).
fn check_fixture(name: &str, bytes: &[u8]) {
    let path = fixture_dir().join(name);
    let hex_now = hex::encode(bytes);
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::write(&path, format!("{hex_now}\n")).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} missing ({e}); run with CAIRN_BLESS=1 once", path.display()));
    assert_eq!(hex_now, want.trim(), "encoding of fixture {name} changed: the rpc format is frozen");
}

/// Named fixtures: file name and value.
type Fixtures<T> = Vec<(&'static str, T)>;

fn fixture_values() -> (Fixtures<Request>, Fixtures<Response>) {
    let requests = vec![
        ("rpc_request_submit.hex", Request::Submit(vec![0xca, 0x1e, 0x55])),
        ("rpc_request_handshakes.hex", Request::Handshakes { topic: Topic([7; 32]), from: 42, max: 16 }),
        ("rpc_request_proof_handle.hex", Request::Proof(StateKey::Handle("alice".into()))),
        (
            "rpc_request_handshake_page.hex",
            Request::HandshakePage { topic: Topic([7; 32]), from: 42, max: 16, until: 50 },
        ),
        ("rpc_request_outcome_proof.hex", Request::OutcomeProof(TxId([8; 32]))),
    ];
    let responses = vec![
        (
            "rpc_response_tx_status.hex",
            Response::TxStatus(RemoteStatus::Finalized {
                height: 9,
                outcome: RemoteOutcome::Failed {
                    code: 24,
                    message: "stale handshake: built after 3, the topic has 5".into(),
                    stale: Some((3, 5)),
                },
            }),
        ),
        (
            "rpc_response_batch.hex",
            Response::SubmittedBatch(vec![
                Ok(TxId([1; 32])),
                Err(Refusal { code: 5, message: "nonce 1 already used (next is 2)".into() }),
            ]),
        ),
        ("rpc_response_error.hex", Response::Error("malformed request".into())),
        (
            "rpc_response_handshake_page.hex",
            Response::HandshakePage(HandshakePage {
                start: [3; 32],
                payloads: vec![vec![0xc0, 0x31], vec![]],
                links: vec![[4; 32]],
            }),
        ),
        (
            "rpc_response_outcome_proof.hex",
            Response::OutcomeProof(Some(OutcomeProof {
                headers: vec![Block::new(3, [1; 32], [2; 32], vec![vec![9]], [5; 32]).header],
                finalization: vec![0xf1, 0x2a],
                index: 1,
                outcome: RemoteOutcome::Sequenced { topic: Topic([7; 32]), seq: 4 },
                path: vec![[6; 32]],
            })),
        ),
    ];
    (requests, responses)
}

#[test]
fn fixtures_are_frozen() {
    let (requests, responses) = fixture_values();
    let read = |n: &str| hex::decode(std::fs::read_to_string(fixture_dir().join(n)).unwrap().trim()).unwrap();
    for (name, req) in requests {
        check_fixture(name, &req.encode());
        assert_eq!(Request::decode(&read(name)).unwrap(), req);
    }
    for (name, resp) in responses {
        check_fixture(name, &resp.encode());
        assert_eq!(Response::decode(&read(name)).unwrap(), resp);
    }
}
