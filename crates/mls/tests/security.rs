//! Security properties, each asserted on behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cairn_mls::{
    CIPHERSUITE, CredentialError, DeviceSigner, Dropped, Event, KeyPackageError, KeyPackagePool,
    MemorySequencer, MlsError, Received, verify_key_package,
};
use cairn_proto::ed25519::{Signer as _, SigningKey};
use cairn_proto::{DeviceCert, DeviceId};
use common::{AAD, Dev, NOW, delivered, group, open_client, say};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup, MlsGroupCreateConfig,
    SignaturePublicKey,
};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use tls_codec::Serialize as _;

#[test]
fn removed_member_cannot_decrypt_after_removal() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    say(&mut a, &mut [&mut b, &mut c], &id, "all three");
    a.client.remove_account(&id, c.cert.account, &mut seq, NOW).unwrap().unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    let secret = a.client.send(&id, b"after carol left", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &secret, AAD).unwrap()).body, b"after carol left");
    // Carol, before she learns of her removal, cannot read it: it is for an epoch she lacks.
    assert_eq!(c.client.receive(&id, &secret, AAD).unwrap(), Received::Buffered);
    // Applying the sequenced removal does not give her that epoch either.
    let ev = c.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })));
    assert!(!ev.iter().any(|e| matches!(e, Event::Message(Received::Message(_)))), "{ev:?}");
    assert!(matches!(c.client.receive(&id, &secret, AAD), Err(MlsError::NotMember)));
    assert!(matches!(c.client.send(&id, b"let me in", AAD), Err(MlsError::NotMember)));
}

#[test]
fn new_member_cannot_decrypt_before_joining() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut d) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let before = a.client.send(&id, b"before dave", AAD).unwrap();
    let mut pool = KeyPackagePool::new();
    d.publish(&mut pool, 1);
    let out = a.client.add(&id, vec![pool.take(&d.device()).unwrap()], &mut seq, NOW).unwrap().unwrap();
    d.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
    let r = d.client.receive(&id, &before, AAD);
    assert!(!matches!(r, Ok(Received::Message(_))), "{r:?}");
    // Bob, a member then, still reads it; Dave reads what comes after.
    assert_eq!(delivered(b.client.receive(&id, &before, AAD).unwrap()).body, b"before dave");
    b.client.sync(&id, &seq, NOW).unwrap();
    say(&mut a, &mut [&mut b, &mut d], &id, "welcome dave");
}

#[test]
fn message_altered_in_flight_is_rejected() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let ct = a.client.send(&id, b"pay 10 coins", AAD).unwrap();
    for pos in [ct.len() - 1, ct.len() / 2, ct.len() - 20] {
        let mut bad = ct.clone();
        bad[pos] ^= 0x01;
        let r = b.client.receive(&id, &bad, AAD);
        assert!(matches!(r, Err(MlsError::Rejected(_) | MlsError::Malformed(_))), "byte {pos}: {r:?}");
    }
    // The genuine message still decrypts: the forgeries changed nothing.
    assert_eq!(delivered(b.client.receive(&id, &ct, AAD).unwrap()).body, b"pay 10 coins");
}

#[test]
fn replayed_message_is_not_shown_twice() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let ct = a.client.send(&id, b"once", AAD).unwrap();
    let ct2 = a.client.send(&id, b"twice?", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct, AAD).unwrap()).body, b"once");
    assert_eq!(b.client.receive(&id, &ct, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    // Also within one batch, and after a restart (the ratchet state is persisted).
    let mut r = b.client.receive_many(&id, &[(ct2.as_slice(), AAD), (ct2.as_slice(), AAD)]).into_iter();
    assert_eq!(delivered(r.next().unwrap().unwrap()).body, b"twice?");
    assert_eq!(r.next().unwrap().unwrap(), Received::Dropped(Dropped::Duplicate));
    let mut b = b.restart();
    assert_eq!(b.client.receive(&id, &ct, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    assert_eq!(b.client.receive(&id, &ct2, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
}

/// Junk in a batch is refused before decryption and takes the batch off no path: the genuine
/// messages around it are read and persisted (duplicates after a restart), the junk changes
/// nothing.
#[test]
fn junk_in_a_batch_is_refused_and_the_rest_is_read_and_kept() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let ct1 = a.client.send(&id, b"one", AAD).unwrap();
    let ct2 = a.client.send(&id, b"two", AAD).unwrap();
    let junk = vec![0x5au8; 120];
    let batch = [(ct1.as_slice(), AAD), (junk.as_slice(), AAD), (ct2.as_slice(), AAD)];
    let mut r = b.client.receive_many(&id, &batch).into_iter();
    assert_eq!(delivered(r.next().unwrap().unwrap()).body, b"one");
    assert!(r.next().unwrap().is_err(), "junk is refused");
    assert_eq!(delivered(r.next().unwrap().unwrap()).body, b"two");
    let mut b = b.restart();
    assert_eq!(b.client.receive(&id, &ct1, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    assert_eq!(b.client.receive(&id, &ct2, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    let ct3 = a.client.send(&id, b"three", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct3, AAD).unwrap()).body, b"three");
}

#[test]
fn message_from_non_member_is_rejected() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, eve) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    // Eve builds her own group under the same group id and sends into it.
    let signer = DeviceSigner::new(eve.device_key.clone(), eve.cert).unwrap();
    let cfg = MlsGroupCreateConfig::builder().ciphersuite(CIPHERSUITE).build();
    let mut fake = MlsGroup::new_with_group_id(
        eve.client.provider(),
        &signer,
        &cfg,
        GroupId::from_slice(&id.0),
        signer.credential_with_key(),
    )
    .unwrap();
    // Stale-epoch forgery: not shown.
    fake.set_aad(AAD.to_vec());
    let early = fake.create_message(eve.client.provider(), &signer, b"trust me").unwrap();
    let r = b.client.receive(&id, &early.tls_serialize_detached().unwrap(), AAD);
    assert!(!matches!(r, Ok(Received::Message(_))), "{r:?}");
    // Eve brings her fake group to the conversation's epoch, so her message is judged on its
    // keys, not its epoch.
    for _ in 0..8 {
        if fake.epoch().as_u64() >= a.client.epoch(&id).unwrap() {
            break;
        }
        fake.self_update(eve.client.provider(), &signer, Default::default()).unwrap();
        fake.merge_pending_commit(eve.client.provider()).unwrap();
    }
    assert_eq!(fake.epoch().as_u64(), a.client.epoch(&id).unwrap());
    fake.set_aad(AAD.to_vec());
    let forged = fake.create_message(eve.client.provider(), &signer, b"trust me").unwrap();
    let forged = forged.tls_serialize_detached().unwrap();
    let r = b.client.receive(&id, &forged, AAD);
    assert!(matches!(r, Err(MlsError::Rejected(_))), "{r:?}");
    // A non-member's commit in the handshake order is skipped by every member.
    let n = seq.len(&id.topic());
    let bundle = fake.self_update(eve.client.provider(), &signer, Default::default()).unwrap();
    let commit = bundle.commit().tls_serialize_detached().unwrap();
    // Eve cannot get it sequenced: her key is not one of the topic's authority keys.
    let eve_keys = cairn_proto::sequencer::TopicKeys { seed: [0xE7; 32], next: None };
    let r = cairn_proto::CommitSequencer::submit(&mut seq, id.topic(), n, commit.clone(), eve_keys);
    assert_eq!(r, Err(cairn_proto::sequencer::SequencerError::NotMember));
    // Should a member put it in the order anyway, every member skips it.
    let member =
        cairn_proto::sequencer::TopicKeys { seed: a.client.authority_seed(&id).unwrap(), next: None };
    cairn_proto::CommitSequencer::submit(&mut seq, id.topic(), n, commit, member).unwrap();
    let ev = b.client.sync(&id, &seq, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::Skipped { .. }]), "{ev:?}");
    say(&mut a, &mut [&mut b], &id, "eve is not here");
}

#[test]
fn post_compromise_security_self_update_locks_out_leaked_state() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    say(&mut a, &mut [&mut b], &id, "hello");
    // The attacker copies Bob's whole state (his redb file) and his device key.
    let leak_dir = tempfile::tempdir().unwrap();
    let leak_path = leak_dir.path().join("leaked.redb");
    std::fs::copy(&b.path, &leak_path).unwrap();
    let (mut leaked, _leaked_db) = open_client(&leak_path, &b.device_key, b.cert);
    // The leak is real: the copy reads current traffic.
    let m1 = a.client.send(&id, b"read by the attacker", AAD).unwrap();
    assert_eq!(delivered(leaked.receive(&id, &m1, AAD).unwrap()).body, b"read by the attacker");
    // Bob heals with a self-update.
    b.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    a.client.sync(&id, &seq, NOW).unwrap();
    let m2 = a.client.send(&id, b"after healing", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &m2, AAD).unwrap()).body, b"after healing");
    // The attacker follows the same handshake order but cannot enter the new epoch…
    let ev = leaked.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::Skipped { .. })), "{ev:?}");
    assert_ne!(leaked.epoch(&id).unwrap(), a.client.epoch(&id).unwrap());
    assert_ne!(leaked.epoch_authenticator(&id).unwrap(), a.client.epoch_authenticator(&id).unwrap());
    // …so later messages stay unreadable to it.
    assert_eq!(leaked.receive(&id, &m2, AAD).unwrap(), Received::Buffered);
    let ev = leaked.sync(&id, &seq, NOW).unwrap();
    assert!(!ev.iter().any(|e| matches!(e, Event::Message(Received::Message(_)))), "{ev:?}");
}

/// Signs with any Ed25519 key, to forge leaves the client itself would never build.
struct RawSigner(SigningKey);

impl Signer for RawSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }
    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

fn forged_key_package(dev: &Dev, cert: DeviceCert, key: &SigningKey) -> Vec<u8> {
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(cert.encode()).into(),
        signature_key: SignaturePublicKey::from(key.verifying_key().to_bytes().to_vec()),
    };
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(cairn_mls::leaf_capabilities())
        .build(CIPHERSUITE, dev.client.provider(), &RawSigner(key.clone()), cwk)
        .unwrap();
    dev.client.provider().storage().discard();
    bundle.key_package().tls_serialize_detached().unwrap()
}

#[test]
fn key_package_with_broken_certificate_chain_is_refused() {
    let dev = Dev::new();
    // A certificate whose account signature no longer matches.
    let mut cert = dev.cert;
    cert.created_at_ms += 1;
    let kp = forged_key_package(&dev, cert, &dev.device_key);
    assert!(matches!(verify_key_package(&kp), Err(KeyPackageError::Credential(CredentialError::Chain(_)))));
    // A valid certificate for another device key than the one that signs the leaf.
    let other = SigningKey::from_bytes(&[7; 32]);
    let kp = forged_key_package(&dev, dev.cert, &other);
    assert!(matches!(
        verify_key_package(&kp),
        Err(KeyPackageError::Credential(CredentialError::KeyMismatch))
    ));
    // A certificate issued by a different account key for this device verifies fine: the
    // chain is the check, not a lookup.
    let cert = DeviceCert::issue(&SigningKey::from_bytes(&[9; 32]), DeviceId(dev.cert.device.0), NOW);
    let kp = forged_key_package(&dev, cert, &dev.device_key);
    assert_eq!(verify_key_package(&kp).unwrap().cert, cert);
    // And the pool refuses a batch containing a broken one.
    let mut pool = KeyPackagePool::new();
    let mut c2 = dev.cert;
    c2.created_at_ms += 1;
    let batch = cairn_mls::KeyPackageBatch { packages: vec![forged_key_package(&dev, c2, &dev.device_key)] };
    assert!(pool.publish(&batch.encode()).is_err());
    assert_eq!(pool.remaining(&dev.device()), 0);
}

#[test]
fn key_packages_are_used_once_then_last_resort() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let mut pool = KeyPackagePool::new();
    b.publish(&mut pool, 2);
    assert_eq!(pool.remaining(&b.device()), 2);
    let k1 = pool.take(&b.device()).unwrap();
    let k2 = pool.take(&b.device()).unwrap();
    assert!(!k1.last_resort && !k2.last_resort && k1.bytes() != k2.bytes());
    assert_eq!(pool.remaining(&b.device()), 0);
    let lr1 = pool.take(&b.device()).unwrap();
    let lr2 = pool.take(&b.device()).unwrap();
    assert!(lr1.last_resort && lr1.bytes() == lr2.bytes());
    // The last-resort package works for several conversations.
    for _ in 0..2 {
        let id = a.client.create(NOW).unwrap();
        let out = a.client.add(&id, vec![lr1.clone()], &mut seq, NOW).unwrap().unwrap();
        b.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
        say(&mut a, &mut [&mut b], &id, "via last resort");
    }
    // A one-time package is consumed by its Welcome: a second Welcome for it fails.
    let id1 = a.client.create(NOW).unwrap();
    let id2 = a.client.create(NOW).unwrap();
    let w1 = a.client.add(&id1, vec![k1.clone()], &mut seq, NOW).unwrap().unwrap().welcome.unwrap();
    let w2 = a.client.add(&id2, vec![k1], &mut seq, NOW).unwrap().unwrap().welcome.unwrap();
    b.client.join(&w1.bytes, NOW).unwrap();
    assert!(b.client.join(&w2.bytes, NOW).is_err());
}

#[test]
fn key_packages_are_replenished_under_the_low_water_mark() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let mut pool = KeyPackagePool::new();
    pool.publish(&b.client.replenish_key_packages(2, 3).unwrap().unwrap().encode()).unwrap();
    assert_eq!(b.client.key_packages_remaining().unwrap(), 3);
    assert!(b.client.replenish_key_packages(2, 3).unwrap().is_none(), "enough left");
    // Two invitations consume two one-time packages.
    for _ in 0..2 {
        let id = a.client.create(NOW).unwrap();
        let kp = pool.take(&b.device()).unwrap();
        assert!(!kp.last_resort);
        let out = a.client.add(&id, vec![kp], &mut seq, NOW).unwrap().unwrap();
        b.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
    }
    assert_eq!(b.client.key_packages_remaining().unwrap(), 1);
    let batch = b.client.replenish_key_packages(2, 3).unwrap().unwrap();
    assert_eq!(batch.packages.len(), 2, "back to the target, no second last-resort package");
    assert_eq!(pool.publish(&batch.encode()).unwrap(), 2);
    assert_eq!(b.client.key_packages_remaining().unwrap(), 3);
    assert_eq!(pool.remaining(&b.device()), 3);
}

#[test]
fn welcome_from_a_member_with_a_broken_chain_is_refused_and_consumes_nothing() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut victim, eve) = (Dev::new(), Dev::new(), Dev::new());
    let mut pool = KeyPackagePool::new();
    victim.publish(&mut pool, 1);
    let kp = pool.take(&victim.device()).unwrap();
    // Eve runs a group whose creator leaf carries a certificate that does not verify.
    let mut cert = eve.cert;
    cert.created_at_ms += 1;
    let cwk = CredentialWithKey {
        credential: BasicCredential::new(cert.encode()).into(),
        signature_key: SignaturePublicKey::from(eve.device_key.verifying_key().to_bytes().to_vec()),
    };
    let signer = RawSigner(eve.device_key.clone());
    let cfg = MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(false)
        .capabilities(
            openmls::prelude::Capabilities::builder()
                .extensions(vec![openmls::prelude::ExtensionType::LastResort])
                .build(),
        )
        .build();
    let gid = [5u8; 32];
    let provider = eve.client.provider();
    let mut g = MlsGroup::new_with_group_id(provider, &signer, &cfg, GroupId::from_slice(&gid), cwk).unwrap();
    let kp_in = <openmls::prelude::KeyPackageIn as tls_codec::DeserializeBytes>::tls_deserialize_exact_bytes(
        kp.bytes(),
    )
    .unwrap();
    let package = kp_in
        .validate(&openmls_rust_crypto::RustCrypto::default(), openmls::prelude::ProtocolVersion::Mls10)
        .unwrap();
    let (_, welcome, _) = g.add_members(provider, &signer, std::slice::from_ref(&package)).unwrap();
    g.merge_pending_commit(provider).unwrap();
    let bundle = cairn_mls::WelcomeBundle::seal(
        provider,
        cairn_mls::ConversationId(gid),
        0,
        welcome.tls_serialize_detached().unwrap(),
        &g.export_ratchet_tree().tls_serialize_detached().unwrap(),
        &[package],
    )
    .unwrap();
    let r = victim.client.join(&bundle.encode(), NOW);
    assert!(matches!(r, Err(MlsError::Credential(CredentialError::Chain(_)))), "{r:?}");
    assert!(victim.client.conversations().is_empty());
    // The refused Welcome did not consume the key package: a genuine invitation still works.
    let id = a.client.create(NOW).unwrap();
    let out = a.client.add(&id, vec![kp], &mut seq, NOW).unwrap().unwrap();
    victim.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
    say(&mut a, &mut [&mut victim], &id, "the real one");
}

#[test]
fn welcome_bundle_hides_the_member_list_from_all_but_the_invitee() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut d, mut e) = (Dev::new(), Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let mut pool = KeyPackagePool::new();
    d.publish(&mut pool, 1);
    e.publish(&mut pool, 1);
    let out = a.client.add(&id, vec![pool.take(&d.device()).unwrap()], &mut seq, NOW).unwrap().unwrap();
    let bytes = out.welcome.unwrap().bytes;
    // What a store node on d's inbox topic sees names no member's device.
    for dev in [a.device(), b.device(), d.device()] {
        assert!(!bytes.windows(32).any(|w| w == dev.0), "a member's device id is readable in the bundle");
    }
    // Someone else's device cannot open it.
    let r = e.client.join(&bytes, NOW);
    assert!(matches!(r, Err(MlsError::Rejected(ref m)) if m.contains("not addressed")), "{r:?}");
    // A tampered tree is refused without consuming d's key package; the genuine bundle works.
    let mut bundle = cairn_mls::WelcomeBundle::decode(&bytes).unwrap();
    let last = bundle.sealed_tree.len() - 1;
    bundle.sealed_tree[last] ^= 1;
    assert!(matches!(d.client.join(&bundle.encode(), NOW), Err(MlsError::Rejected(_))));
    d.client.join(&bytes, NOW).unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    say(&mut a, &mut [&mut b, &mut d], &id, "only invitees read the tree");
}

#[test]
fn rewrapped_ciphertext_is_refused_before_decryption_and_the_genuine_one_still_reads() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let (header, other) = ([7u8; 32], [8u8; 32]);
    let ct = a.client.send(&id, b"bound to its envelope", &header).unwrap();
    // The same ciphertext in another envelope: refused on the clear aad, nothing consumed.
    assert_eq!(b.client.receive(&id, &ct, &other).unwrap(), Received::Dropped(Dropped::AadMismatch));
    assert_eq!(b.client.receive_many(&id, &[(ct.as_slice(), &other)]).len(), 1);
    // Its clear aad rewritten to match the other envelope: the AEAD and the signature refuse it.
    let at = ct.windows(32).position(|w| w == header).unwrap();
    let mut rewrapped = ct.clone();
    rewrapped[at..at + 32].copy_from_slice(&other);
    assert!(matches!(b.client.receive(&id, &rewrapped, &other), Err(MlsError::Rejected(_))));
    // The genuine message with its own header still decrypts, once.
    assert_eq!(delivered(b.client.receive(&id, &ct, &header).unwrap()).body, b"bound to its envelope");
    assert_eq!(b.client.receive(&id, &ct, &header).unwrap(), Received::Dropped(Dropped::Duplicate));
    // The aad is bounded on both sides.
    let long = [0u8; cairn_mls::AAD_BYTES_MAX + 1];
    assert!(matches!(a.client.send(&id, b"x", &long), Err(MlsError::AadTooLong { .. })));
    assert!(matches!(b.client.receive(&id, &ct, &long), Err(MlsError::AadTooLong { .. })));
    let max = [1u8; cairn_mls::AAD_BYTES_MAX];
    let ct = a.client.send(&id, b"largest aad", &max).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct, &max).unwrap()).body, b"largest aad");
}

#[test]
fn members_with_clocks_years_apart_process_the_same_add_alike() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c, d, e) = (Dev::new(), Dev::new(), Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    let mut pool = KeyPackagePool::new();
    d.publish(&mut pool, 1);
    e.publish(&mut pool, 1);
    let kp = pool.take(&d.device()).unwrap();
    // Its MLS lifetime holds at any clock; Cairn's expiry is for the committer alone.
    assert!(kp.clock_free());
    assert!(kp.not_after_ms.unwrap() > NOW);
    a.client.add(&id, vec![kp], &mut seq, NOW).unwrap().unwrap();
    let years: u64 = 10 * 365 * 24 * 3600 * 1000;
    let eb = b.client.sync(&id, &seq, NOW - years).unwrap();
    let ec = c.client.sync(&id, &seq, NOW + years).unwrap();
    assert!(matches!(&eb[..], [Event::Commit { added, .. }] if added.len() == 1), "{eb:?}");
    assert_eq!(eb, ec);
    let auth = a.client.epoch_authenticator(&id).unwrap();
    assert_eq!(b.client.epoch_authenticator(&id).unwrap(), auth);
    assert_eq!(c.client.epoch_authenticator(&id).unwrap(), auth);

    // The committer refuses, before sequencing, a package expired at its time and one whose
    // MLS lifetime members would judge by their own clocks.
    let n = seq.len(&id.topic());
    let kp = pool.take(&e.device()).unwrap();
    let expired = a.client.add(&id, vec![kp.clone()], &mut seq, kp.not_after_ms.unwrap());
    assert!(matches!(expired, Err(MlsError::KeyPackage(KeyPackageError::Expired { .. }))), "{expired:?}");
    let finite = verify_key_package(&forged_key_package(&e, e.cert, &e.device_key)).unwrap();
    assert!(!finite.clock_free());
    let r = a.client.add(&id, vec![finite], &mut seq, NOW);
    assert!(matches!(r, Err(MlsError::KeyPackage(KeyPackageError::ClockDependentLifetime))), "{r:?}");
    assert_eq!(seq.len(&id.topic()), n);
    a.client.add(&id, vec![kp], &mut seq, NOW).unwrap().unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(b.client.epoch_authenticator(&id).unwrap(), a.client.epoch_authenticator(&id).unwrap());
}
