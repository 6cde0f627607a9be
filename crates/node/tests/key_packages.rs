#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Key packages are accepted only if their batch matches the hash its device recorded on the
//! ledger: a substituted batch on the device's key-package topic is refused (typed, saying what
//! to do next) and no invitation uses it; the recorded batch is used.

mod common;

use cairn_mls::{KeyPackageBatch, MemorySequencer};
use cairn_node::engine::{Arrival, Io};
use cairn_node::shell::keypackages::{KeyPackageRefusal, KeyPackages, ledger_record};
use cairn_proto::envelope::unpad;
use cairn_proto::{Envelope, Limits, Message};
use common::user;

/// The encoded packages in a key-package envelope.
fn packages(env: &Envelope) -> Vec<Vec<u8>> {
    let m = Message::decode(unpad(env.payload.as_deref().unwrap()).unwrap(), &Limits::default()).unwrap();
    KeyPackageBatch::decode(&m.body).unwrap().packages
}

/// Attack: a batch other than the one the device recorded on the ledger (a stale batch
/// replayed, or one substituted by a store node) is put on the device's key-package topic,
/// newer than the genuine one, plus a batch signed by another device. The substitute is
/// refused with `HashMismatch` while it is all there is; once the genuine batch is seen, the
/// invitation uses a package of the genuine batch only, and the invitee joins.
#[test]
fn a_substituted_key_package_batch_is_refused_and_the_recorded_one_is_used() {
    let now = 1_000_000;
    let limits = Limits::default();
    let mut seq = MemorySequencer::new();
    let mut alice = user(now);
    let mut bob = user(now);
    let mut mallory = user(now);
    let bob_dev = bob.engine.keys().device;

    // What bob's node records on the ledger and then publishes.
    let genuine = bob.engine.key_package_envelope(2, 3600, now).unwrap();
    let recorded = ledger_record(&bob_dev, &genuine, &limits).unwrap();
    assert_eq!(recorded.count as usize, packages(&genuine).len());
    assert_eq!(recorded.batch_hash, {
        let m = Message::decode(unpad(genuine.payload.as_deref().unwrap()).unwrap(), &limits).unwrap();
        KeyPackageBatch::ledger_hash(&KeyPackageBatch::decode(&m.body).unwrap().encode())
    });
    // A validly signed batch of bob that is not the recorded one, newer than it.
    let substitute = bob.engine.key_package_envelope(2, 3600, now + 60_000).unwrap();
    assert_ne!(ledger_record(&bob_dev, &substitute, &limits).unwrap(), recorded);
    // A batch signed by another device, on bob's topic.
    let foreign = mallory.engine.key_package_envelope(2, 3600, now + 120_000).unwrap();

    let kps = KeyPackages::default();
    assert!(kps.take(&bob_dev, &recorded).unwrap().is_none(), "nothing seen yet");
    kps.offer(bob_dev, &foreign, &limits);
    assert!(kps.take(&bob_dev, &recorded).unwrap().is_none(), "another device's batch is ignored");
    kps.offer(bob_dev, &substitute, &limits);
    let refusal = kps.take(&bob_dev, &recorded).unwrap_err();
    assert!(matches!(refusal, KeyPackageRefusal::HashMismatch { .. }), "{refusal:?}");
    let text = refusal.to_string();
    assert!(text.contains("ledger") && text.contains("republish"), "says what to do next: {text}");

    // The genuine batch arrives (from another store node, or a later retry).
    kps.offer(bob_dev, &genuine, &limits);
    let kp = kps.take(&bob_dev, &recorded).unwrap().expect("the recorded batch is used");
    assert!(packages(&genuine).contains(&kp.bytes().to_vec()), "the package comes from the recorded batch");
    assert!(!packages(&substitute).contains(&kp.bytes().to_vec()), "no package of the substitute is used");
    for _ in 0..8 {
        // every package handed out, one-time or last-resort, is from the recorded batch
        let k = kps.take(&bob_dev, &recorded).unwrap().unwrap();
        assert!(packages(&genuine).contains(&k.bytes().to_vec()));
    }

    // The invitation uses it and bob joins.
    let (conv, _) = alice.engine.create(vec![kp], &mut seq, now).unwrap();
    let inbox = cairn_mls::inbox_topic(&bob_dev);
    let welcomes: Vec<Envelope> = alice
        .engine
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            Io::Publish(env) if env.header.topic == inbox => Some(*env),
            _ => None,
        })
        .collect();
    assert!(!welcomes.is_empty());
    let batch = welcomes.into_iter().map(|e| Arrival { id: e.id(), envelope: e, after_gap: false }).collect();
    bob.engine.receive(batch, &mut seq, now);
    assert_eq!(bob.engine.conversations(), vec![conv], "bob joined with the recorded package");
}

/// The cache keeps at most `KP_BATCHES_PER_DEVICE` batches of a device (newest first), so a
/// flood of substitutes cannot grow memory; refused batches are dropped, so the recorded one,
/// offered again (store nodes are asked again), is used.
#[test]
fn the_batch_cache_is_bounded_per_device() {
    let now = 2_000_000;
    let limits = Limits::default();
    let mut bob = user(now);
    let bob_dev = bob.engine.keys().device;
    let genuine = bob.engine.key_package_envelope(1, 3600, now).unwrap();
    let recorded = ledger_record(&bob_dev, &genuine, &limits).unwrap();
    let kps = KeyPackages::default();
    kps.offer(bob_dev, &genuine, &limits);
    for i in 1..=(cairn_node::shell::keypackages::KP_BATCHES_PER_DEVICE as u64 + 2) {
        let s = bob.engine.key_package_envelope(1, 3600, now + i * 1_000).unwrap();
        kps.offer(bob_dev, &s, &limits);
    }
    assert!(kps.take(&bob_dev, &recorded).is_err(), "pushed out by newer substitutes: refused, not used");
    kps.offer(bob_dev, &genuine, &limits);
    assert!(kps.take(&bob_dev, &recorded).unwrap().is_some(), "offered again, it is used");
}
