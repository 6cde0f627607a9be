#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Key transparency: a light client holding only the genesis validator keys verifies an
//! account's device set and a handle's absence from a finalized header + certificate, and
//! refuses forged proofs and forged certificates.

mod support;

use cairn_ledger::block::{Block, Header};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::light::{LedgerFinalization, LightClient, LightError, StateProof};
use cairn_ledger::state::{Account, Machine, StateKey};
use cairn_ledger::tx::{Tx, TxBody};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, DeviceCert, DeviceId};
use commonware_codec::{Decode as _, Encode as _};
use commonware_cryptography::certificate::Signers;
use commonware_cryptography::ed25519;
use support::finalize;

struct Setup {
    g: Genesis,
    keys: Vec<ed25519::PrivateKey>,
    machine: Machine,
    header: Header,
    alice: AccountId,
    devices: Vec<DeviceId>,
}

fn setup() -> Setup {
    let a = SigningKey::from_bytes(&[1; 32]);
    let alice = AccountId(a.verifying_key().to_bytes());
    let (g, keys) = Genesis::local("light", 4, 30000, vec![(alice, 1_000_000_000)]).unwrap();
    let (mut machine, genesis_block) = g.build().unwrap();
    let chain = g.chain_id();
    let (k1, k2) = (SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let d1 = DeviceId(k1.verifying_key().to_bytes());
    let d2 = DeviceId(k2.verifying_key().to_bytes());
    let txs = vec![
        Tx::sign(chain, alice, &a, 0, TxBody::add_device(&chain, DeviceCert::issue(&a, d1, 1), &k1)).encode(),
        Tx::sign(chain, alice, &a, 1, TxBody::add_device(&chain, DeviceCert::issue(&a, d2, 2), &k2)).encode(),
        Tx::sign(chain, alice, &a, 2, TxBody::RevokeDevice { device: d1 }).encode(),
        Tx::sign(chain, alice, &a, 3, TxBody::ClaimHandle { name: "alice".into() }).encode(),
    ];
    let receipts = machine.apply_block(&txs).unwrap();
    let outcome_root = cairn_ledger::outcome_tree::receipts_root(&receipts);
    let block = Block::new(1, genesis_block.id(), machine.db.root(), txs, outcome_root);
    Setup { g, keys, machine, header: block.header, alice, devices: vec![d2] }
}

#[test]
fn device_set_and_handle_absence_verify_against_a_certified_header() {
    let s = setup();
    let lc = LightClient::new(&s.g).unwrap();
    let fin = finalize(&s.g, &s.keys, &[0, 1, 3], &s.header);

    // "alice's current device set is {d2}" (d1 was revoked)
    let (v, proof) = s.machine.db.prove(&StateKey::Account(s.alice)).unwrap();
    let sp = StateProof::new(s.header, fin.clone(), v, &proof);
    let sp = StateProof::decode(&sp.encode()).unwrap();
    assert_eq!(lc.verify_devices(&s.alice, &sp).unwrap(), Some(s.devices.clone()));

    // "@bob is not registered"
    let (v, proof) = s.machine.db.prove(&StateKey::Handle(cairn_ledger::handle::skeleton("bob"))).unwrap();
    assert!(v.is_none());
    let absent = StateProof::new(s.header, fin.clone(), None, &proof);
    assert_eq!(lc.verify_handle("bob", &absent).unwrap(), None);
    // "@alice is alice's"
    let (v, proof) = s.machine.db.prove(&StateKey::Handle(cairn_ledger::handle::skeleton("alice"))).unwrap();
    let held = StateProof::new(s.header, fin.clone(), v, &proof);
    assert_eq!(lc.verify_handle("alice", &held).unwrap(), Some(s.alice));
    // a look-alike spelling resolves to the same account with the same proof
    assert_eq!(lc.verify_handle("a1ice", &held).unwrap(), Some(s.alice));
    assert_eq!(lc.verify_handle("AIice", &held).unwrap(), Some(s.alice));

    // forged proof 1: claim the revoked device is still active
    let mut acct = Account::decode(sp.value.as_ref().unwrap()).unwrap();
    acct.devices.iter_mut().for_each(|d| d.revoked = false);
    let mut forged = sp.clone();
    forged.value = Some(acct.encode());
    assert!(matches!(lc.verify_devices(&s.alice, &forged), Err(LightError::BadProof(_))));
    // forged proof 2: claim @alice is free, using the absence proof of @bob
    assert!(matches!(lc.verify_handle("alice", &absent), Err(LightError::BadProof(_))));
    // forged proof 3: claim @alice is free, dropping the value from a real inclusion proof
    let mut dropped = held.clone();
    dropped.value = None;
    assert!(matches!(lc.verify_handle("alice", &dropped), Err(LightError::BadProof(_))));
    // forged proof 4: garbage proof bytes
    let mut garbage = sp.clone();
    garbage.proof = vec![1, 2, 3];
    assert!(matches!(lc.verify_devices(&s.alice, &garbage), Err(LightError::MalformedProof)));
    // a proof against another root (header changed) fails the certificate binding
    let mut other = sp.clone();
    other.header.state_root = [9; 32];
    assert!(matches!(lc.verify_devices(&s.alice, &other), Err(LightError::WrongBlock)));
}

#[test]
fn forged_certificates_are_refused() {
    let s = setup();
    let lc = LightClient::new(&s.g).unwrap();
    let (v, proof) = s.machine.db.prove(&StateKey::Account(s.alice)).unwrap();

    // too few signers (2 of 4, quorum is 3): strip one signature from a valid certificate
    let full = finalize(&s.g, &s.keys, &[0, 1, 2], &s.header);
    let mut fin = LedgerFinalization::decode_cfg(full, &4usize).unwrap();
    let kept: Vec<_> = fin.certificate.signers.iter().take(2).collect();
    fin.certificate.signers = Signers::new(4, kept).unwrap();
    fin.certificate.signatures.truncate(2);
    let weak = fin.encode().to_vec();
    let sp = StateProof::new(s.header, weak, v.clone(), &proof);
    assert!(matches!(lc.verify_devices(&s.alice, &sp), Err(LightError::BadCertificate)));

    // signed by keys outside the genesis validator set (a fake validator set of 4)
    let (fake_g, fake_keys) = Genesis::local("light", 4, 30000, s.g.accounts.clone()).unwrap();
    let fake = finalize(&fake_g, &fake_keys, &[0, 1, 2], &s.header);
    let sp = StateProof::new(s.header, fake, v.clone(), &proof);
    assert!(lc.verify_devices(&s.alice, &sp).is_err());

    // a valid certificate with one signature byte flipped
    let mut bad = finalize(&s.g, &s.keys, &[0, 1, 2], &s.header);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let sp = StateProof::new(s.header, bad, v.clone(), &proof);
    assert!(matches!(lc.verify_devices(&s.alice, &sp), Err(LightError::BadCertificate)));

    // a valid certificate over a different header
    let mut h2 = s.header;
    h2.height = 2;
    let other = finalize(&s.g, &s.keys, &[0, 1, 2], &h2);
    let sp = StateProof::new(s.header, other, v.clone(), &proof);
    assert!(matches!(lc.verify_devices(&s.alice, &sp), Err(LightError::WrongBlock)));

    // truncated certificate
    let sp = StateProof::new(s.header, vec![0; 10], v.clone(), &proof);
    assert!(matches!(lc.verify_devices(&s.alice, &sp), Err(LightError::MalformedCertificate)));

    // and the honest one passes
    let good = finalize(&s.g, &s.keys, &[1, 2, 3], &s.header);
    let sp = StateProof::new(s.header, good, v, &proof);
    assert_eq!(lc.verify_devices(&s.alice, &sp).unwrap(), Some(s.devices));
}
