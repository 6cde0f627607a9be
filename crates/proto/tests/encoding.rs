//! Canonical encoding properties and frozen fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use cairn_proto::envelope::pad;
use cairn_proto::{DecodeError, DeviceCert, Envelope, EnvelopeHeader, Id, Limits, Message, Topic};
use common::*;
use proptest::prelude::*;

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<u32>(),
        prop::collection::btree_set(any::<[u8; 32]>(), 0..=16),
        prop::collection::vec(any::<u8>(), 0..2000),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(t, ts, ttl, parents, content, nonce, erased)| {
            let padded = pad(&content, &Limits::default()).unwrap();
            let mut e = Envelope::new(Topic(t), ts, ttl, parents.into_iter().map(Id).collect(), padded);
            e.header.pow_nonce = nonce;
            if erased {
                e.erase();
            }
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_is_exact(e in arb_envelope()) {
        let l = Limits::default();
        let bytes = e.encode();
        let back = Envelope::decode(&bytes, &l).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn every_single_bit_flip_is_rejected_or_changes_the_id(e in arb_envelope(), pos in any::<prop::sample::Index>()) {
        let l = Limits::default();
        let bytes = e.encode();
        let bit = pos.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        match Envelope::decode(&flipped, &l) {
            Err(_) => {}
            Ok(d) => prop_assert_ne!(d.id(), e.id(), "bit {} flipped and nothing noticed", bit),
        }
    }

    #[test]
    fn accepted_bytes_re_encode_identically(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        // Random input is almost always refused; whatever is accepted must be canonical.
        if let Ok(e) = Envelope::decode(&bytes, &Limits::default()) {
            prop_assert_eq!(e.encode(), bytes);
        }
    }
}

#[test]
fn every_bit_flip_of_one_envelope_exhaustively() {
    let s = sender(1);
    let e = envelope(&s, 77, vec![Id([1; 32]), Id([2; 32])], b"exhaustive");
    let bytes = e.encode();
    for bit in 0..bytes.len() * 8 {
        let mut f = bytes.clone();
        f[bit / 8] ^= 1 << (bit % 8);
        if let Ok(d) = Envelope::decode(&f, &Limits::default()) {
            assert_ne!(d.id(), e.id(), "bit {bit}");
        }
    }
}

#[test]
fn limits_are_checked() {
    let l = Limits { parents_max: 2, ..Limits::default() };
    let e = Envelope::new(
        Topic([0; 32]),
        0,
        0,
        vec![Id([1; 32]), Id([2; 32]), Id([3; 32])],
        pad(b"", &l).unwrap(),
    );
    assert!(matches!(
        Envelope::decode(&e.encode(), &l),
        Err(DecodeError::TooLarge { field: "parents", len: 3, max: 2 })
    ));
    assert!(matches!(
        Envelope::decode(&e.encode()[..40], &Limits::default()),
        Err(DecodeError::Truncated { .. })
    ));
    let mut v3 = e.encode();
    v3[0] = 3;
    assert!(matches!(
        Envelope::decode(&v3, &Limits::default()),
        Err(DecodeError::UnsupportedVersion { found: 3, .. })
    ));
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Compares `bytes` with the checked-in fixture `name` (hex). Set `CAIRN_BLESS=1` to rewrite
/// fixtures after an intentional format change (and bump the version byte).
fn check_fixture(name: &str, bytes: &[u8]) {
    let path = fixture_dir().join(name);
    let hex_now = hex::encode(bytes);
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::write(&path, format!("{hex_now}\n")).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} missing ({e}); run with CAIRN_BLESS=1 once", path.display()));
    assert_eq!(hex_now, want.trim(), "encoding of fixture {name} changed: the wire format is frozen");
}

fn fixture_values() -> (DeviceCert, Message, Envelope) {
    let s = sender(7);
    let msg = Message::sign(
        &s.device,
        s.cert,
        // A fixed topic (what `Topic::for_conversation(&[1; 32])` gave before topics were
        // derived from founder keys): the fixture freezes the wire format, not the derivation.
        Topic::from_hex("e6da17e0bc206241de923565ecc93c2d1b673b19feaa5039d8e21e06ce7ff6b5").unwrap(),
        1_764_000_000_000,
        vec![Id([3; 32]), Id([4; 32])],
        b"hello, cairn".to_vec(),
    );
    let mut env = msg.seal_plain(30 * 86_400, &Limits::default()).unwrap();
    env.header.pow_nonce = 12345;
    (s.cert, msg, env)
}

#[test]
fn fixtures_are_frozen() {
    let (cert, msg, env) = fixture_values();
    check_fixture("device_cert.hex", &cert.encode());
    check_fixture("message.hex", &msg.encode());
    check_fixture("envelope.hex", &env.encode());
    check_fixture("envelope_header.hex", &env.header.encode());
    check_fixture("envelope_id.hex", &env.id().0);
    let mut erased = env.clone();
    erased.erase();
    check_fixture("envelope_erased.hex", &erased.encode());
    // And the frozen bytes decode back to the same values.
    let l = Limits::default();
    let read = |n: &str| hex::decode(std::fs::read_to_string(fixture_dir().join(n)).unwrap().trim()).unwrap();
    assert_eq!(Envelope::decode(&read("envelope.hex"), &l).unwrap(), env);
    assert_eq!(EnvelopeHeader::decode(&read("envelope_header.hex"), &l).unwrap(), env.header);
    assert_eq!(Message::decode(&read("message.hex"), &l).unwrap(), msg);
    assert_eq!(DeviceCert::decode(&read("device_cert.hex")).unwrap(), cert);
}
