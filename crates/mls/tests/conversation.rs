//! Conversations: membership, sequenced commits without forks, persistence, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cairn_mls::{Change, Dropped, Event, KeyPackagePool, MemorySequencer, MlsError, Received};
use cairn_proto::CommitSequencer;
use cairn_proto::sequencer::{SequencerError, TopicKeys};
use common::{AAD, Dev, NOW, delivered, group, say};

#[test]
fn one_to_one_then_group_add_remove_update() {
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob, mut carol) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut alice, &mut [&mut bob], &mut seq);
    assert_eq!(alice.client.members(&id).unwrap().len(), 2);
    assert_eq!(bob.client.applied(&id).unwrap(), 1);
    say(&mut alice, &mut [&mut bob], &id, "hi bob");
    say(&mut bob, &mut [&mut alice], &id, "hi alice");

    // Bob adds Carol; Alice learns it from the sequencer.
    let mut pool = KeyPackagePool::new();
    carol.publish(&mut pool, 1);
    let kp = pool.take(&carol.device()).unwrap();
    let out = bob.client.add(&id, vec![kp], &mut seq, NOW).unwrap().unwrap();
    carol.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
    let ev = alice.client.sync(&id, &seq, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::Commit { added, .. }] if added.len() == 1 && added[0] == carol.cert));
    say(&mut carol, &mut [&mut alice, &mut bob], &id, "hello both");

    // Self-update on demand, then remove Bob's account.
    alice.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    let out = carol.client.remove_account(&id, bob.cert.account, &mut seq, NOW).unwrap().unwrap();
    assert_eq!(out.epoch, alice.client.epoch(&id).unwrap() + 1);
    alice.client.sync(&id, &seq, NOW).unwrap();
    let ev = bob.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })));
    assert!(!bob.client.is_active(&id).unwrap());
    assert_eq!(
        alice.client.epoch_authenticator(&id).unwrap(),
        carol.client.epoch_authenticator(&id).unwrap()
    );
    say(&mut alice, &mut [&mut carol], &id, "just us");
    // Removing someone already gone is a no-op, not a commit.
    assert!(carol.client.remove_account(&id, bob.cert.account, &mut seq, NOW).unwrap().is_none());
}

#[test]
fn concurrent_commits_are_ordered_and_rebuilt_without_fork() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    let start = a.client.epoch(&id).unwrap();
    // Both build a commit on the same epoch.
    let sa = a.client.stage(&id, Change::SelfUpdate, NOW).unwrap().unwrap();
    let sb = b.client.stage(&id, Change::SelfUpdate, NOW).unwrap().unwrap();
    let oa = a.client.submit(sa, &mut seq, NOW).unwrap().unwrap();
    // B's is stale: it drops it, applies A's, rebuilds and lands next.
    let ob = b.client.submit(sb, &mut seq, NOW).unwrap().unwrap();
    assert_eq!(ob.seq, oa.seq + 1);
    a.client.sync(&id, &seq, NOW).unwrap();
    c.client.sync(&id, &seq, NOW).unwrap();
    for d in [&a, &b, &c] {
        assert_eq!(d.client.epoch(&id).unwrap(), start + 2);
        assert_eq!(d.client.applied(&id).unwrap(), seq.len(&id.topic()));
    }
    let auth = a.client.epoch_authenticator(&id).unwrap();
    assert_eq!(auth, b.client.epoch_authenticator(&id).unwrap());
    assert_eq!(auth, c.client.epoch_authenticator(&id).unwrap());
    say(&mut b, &mut [&mut a, &mut c], &id, "no fork");
}

#[test]
fn concurrent_removes_of_the_same_member_resolve_to_one() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    let sa = a.client.stage(&id, Change::RemoveAccount(c.cert.account), NOW).unwrap().unwrap();
    let sb = b.client.stage(&id, Change::RemoveAccount(c.cert.account), NOW).unwrap().unwrap();
    assert!(a.client.submit(sa, &mut seq, NOW).unwrap().is_some());
    // After catching up there is nothing left to remove.
    assert!(b.client.submit(sb, &mut seq, NOW).unwrap().is_none());
    assert_eq!(a.client.epoch_authenticator(&id).unwrap(), b.client.epoch_authenticator(&id).unwrap());
    say(&mut a, &mut [&mut b], &id, "still in sync");
}

#[test]
fn restart_continues_without_reinvite() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    say(&mut a, &mut [&mut b], &id, "before restart");
    let mut b = b.restart();
    let mut a = a.restart();
    assert_eq!(b.client.conversations(), vec![id]);
    say(&mut a, &mut [&mut b], &id, "after restart");
    say(&mut b, &mut [&mut a], &id, "me too");
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    let mut b = b.restart();
    b.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(a.client.epoch_authenticator(&id).unwrap(), b.client.epoch_authenticator(&id).unwrap());
    say(&mut b, &mut [&mut a], &id, "new epoch after restart");
}

#[test]
fn own_commit_sequenced_before_a_crash_is_merged_on_restart() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    // A stages a commit (stored durably); the sequencer accepts it, but A crashes before it
    // learns so.
    let staged = a.client.stage(&id, Change::SelfUpdate, NOW).unwrap().unwrap();
    let keys = a.client.topic_keys(&id).unwrap();
    assert!(keys.next.is_some(), "a pending commit registers its epoch's key");
    seq.submit(id.topic(), staged.after(), staged.commit_bytes().to_vec(), keys).unwrap();
    drop(staged);
    let mut a = a.restart();
    let ev = a.client.sync(&id, &seq, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::Commit { .. }]), "{ev:?}");
    b.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(a.client.epoch_authenticator(&id).unwrap(), b.client.epoch_authenticator(&id).unwrap());
    say(&mut a, &mut [&mut b], &id, "merged after restart");
}

#[test]
fn lost_pending_commit_is_dropped_when_another_wins() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    // A stages a commit and restarts before submitting it; B commits meanwhile.
    drop(a.client.stage(&id, Change::SelfUpdate, NOW).unwrap().unwrap());
    let mut a = a.restart();
    assert!(a.client.stage(&id, Change::SelfUpdate, NOW).is_err(), "a pending commit blocks a second one");
    b.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    // A syncs: B's commit wins, A's pending commit is dropped, state converges.
    a.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(a.client.epoch_authenticator(&id).unwrap(), b.client.epoch_authenticator(&id).unwrap());
    say(&mut a, &mut [&mut b], &id, "converged");
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    say(&mut b, &mut [&mut a], &id, "and A can commit again");
}

#[test]
fn garbage_broken_chains_and_out_of_order_commits_do_not_corrupt_state() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let before = a.client.epoch_authenticator(&id).unwrap();
    // Malformed application input.
    assert!(matches!(b.client.receive(&id, b"garbage", AAD), Err(MlsError::Malformed(_))));
    assert!(matches!(b.client.receive(&id, &[], AAD), Err(MlsError::Malformed(_))));
    // Garbage and a replayed old commit in the handshake order: skipped by everyone alike.
    let old_commit = seq.fetch(&id.topic(), 0, 1).unwrap().remove(0).payload;
    let n = seq.len(&id.topic());
    // (Written by a member: an outsider's are refused by the sequencer, see below.)
    let member = TopicKeys { seed: a.client.authority_seed(&id).unwrap(), next: None };
    seq.submit(id.topic(), n, b"not mls".to_vec(), member).unwrap();
    seq.submit(id.topic(), n + 1, old_commit.clone(), member).unwrap();
    let outsider = TopicKeys { seed: [7; 32], next: None };
    assert_eq!(seq.submit(id.topic(), n + 2, old_commit, outsider), Err(SequencerError::NotMember));
    for d in [&mut a, &mut b] {
        let ev = d.client.sync(&id, &seq, NOW).unwrap();
        assert_eq!(ev.iter().filter(|e| matches!(e, Event::Skipped { .. })).count(), 2, "{ev:?}");
        assert_eq!(d.client.epoch_authenticator(&id).unwrap(), before);
    }
    // A key package whose device certificate is broken is refused.
    let mut bad = b.client.key_package_batch(1, false).unwrap().packages.remove(0);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(cairn_mls::verify_key_package(&bad).is_err());
    // The conversation goes on, also after a restart.
    say(&mut a, &mut [&mut b], &id, "still fine");
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    let mut b = b.restart();
    b.client.sync(&id, &seq, NOW).unwrap();
    say(&mut b, &mut [&mut a], &id, "and after a commit");
}

#[test]
fn leave_is_proposed_then_committed() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    c.client.leave(&id, &mut seq, NOW).unwrap();
    let ev = a.client.sync(&id, &seq, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::LeaveProposed { device: Some(d), .. }] if *d == c.cert));
    assert!(matches!(a.client.send(&id, b"x", AAD), Err(MlsError::PendingProposals)));
    a.client.commit_pending(&id, &mut seq, NOW).unwrap().unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    let ev = c.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    assert_eq!(a.client.members(&id).unwrap().len(), 2);
    say(&mut a, &mut [&mut b], &id, "bye carol");
}

#[test]
fn devices_join_all_account_conversations_and_revocation_removes_them_everywhere() {
    let mut seq = MemorySequencer::new();
    let (mut a1, mut b) = (Dev::new(), Dev::new());
    let mut a2 = a1.sibling();
    // Alice's two devices and Bob, in two conversations.
    let c1 = group(&mut a1, &mut [&mut a2, &mut b], &mut seq);
    let c2 = group(&mut a1, &mut [&mut b], &mut seq);
    assert_eq!(a1.client.member_accounts(&c1).unwrap().len(), 2);
    // A new device of Alice is added everywhere Alice is.
    let mut a3 = a1.sibling();
    let mut pool = KeyPackagePool::new();
    a3.publish(&mut pool, 1); // one one-time package; the second conversation gets the last resort
    let res = a1.client.add_device_everywhere(&a3.device(), &mut pool, &mut seq, NOW);
    assert_eq!(res.len(), 2);
    for (conv, r) in res {
        let out = r.unwrap().unwrap();
        assert_eq!(a3.client.join(&out.welcome.unwrap().bytes, NOW).unwrap(), conv);
    }
    for conv in [c1, c2] {
        b.client.sync(&conv, &seq, NOW).unwrap();
        say(&mut a3, &mut [&mut b], &conv, "new device here");
    }
    // Revoking a2 removes it from c1 (the only one it is in).
    let res = a1.client.revoke_device_everywhere(&a2.device(), &mut seq, NOW);
    let removed: Vec<_> = res.iter().filter(|(_, r)| matches!(r, Ok(Some(_)))).map(|(c, _)| *c).collect();
    assert_eq!(removed, vec![c1]);
    a2.client.sync(&c1, &seq, NOW).unwrap();
    assert!(!a2.client.is_active(&c1).unwrap());
    b.client.sync(&c1, &seq, NOW).unwrap();
    a3.client.sync(&c1, &seq, NOW).unwrap();
    assert!(b.client.members(&c1).unwrap().iter().all(|m| m.device != a2.device()));
    say(&mut b, &mut [&mut a1, &mut a3], &c1, "a2 is gone");
}

#[test]
fn future_epoch_messages_are_buffered_and_past_ones_expire() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let old = a.client.send(&id, b"from epoch 1", AAD).unwrap();
    // A moves one epoch ahead; B has not synced yet.
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    let future = a.client.send(&id, b"from epoch 2", AAD).unwrap();
    assert_eq!(b.client.receive(&id, &future, AAD).unwrap(), Received::Buffered);
    let ev = b.client.sync(&id, &seq, NOW).unwrap();
    let got: Vec<_> = ev
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(Received::Message(d)) => Some(d.body),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![b"from epoch 2".to_vec()]);
    // One epoch back is inside the window.
    assert_eq!(delivered(b.client.receive(&id, &old, AAD).unwrap()).body, b"from epoch 1");
    // Beyond `past_epochs_max` epochs, messages are dropped with a clear status.
    let stale = a.client.send(&id, b"soon too old", AAD).unwrap();
    let window = b.client.config().past_epochs_max;
    for _ in 0..=window {
        a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    }
    b.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(b.client.receive(&id, &stale, AAD).unwrap(), Received::Dropped(Dropped::TooOld));
}

#[test]
fn self_update_is_due_after_joining_and_on_schedule() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    assert!(!a.client.due_for_update(&id, NOW).unwrap());
    assert!(b.client.due_for_update(&id, NOW).unwrap(), "a joiner fills its path");
    assert_eq!(b.client.conversations_due(NOW), vec![id]);
    b.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    assert!(!b.client.due_for_update(&id, NOW).unwrap());
    let later = NOW + b.client.config().update_interval_ms;
    assert!(b.client.due_for_update(&id, later).unwrap());
    assert!(!b.client.due_for_update(&id, later - 1).unwrap());
}

#[test]
fn past_epoch_messages_decrypt_after_restart_once_only() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let m1 = a.client.send(&id, b"one", AAD).unwrap();
    let m2 = a.client.send(&id, b"two", AAD).unwrap();
    let m3 = a.client.send(&id, b"three", AAD).unwrap();
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    b.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &m1, AAD).unwrap()).body, b"one");
    // The retained epoch (and its ratchet position) is persisted.
    let mut b = b.restart();
    assert_eq!(b.client.receive(&id, &m1, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    assert_eq!(delivered(b.client.receive(&id, &m2, AAD).unwrap()).body, b"two");
    assert_eq!(b.client.receive(&id, &m2, AAD).unwrap(), Received::Dropped(Dropped::Duplicate));
    // Garbage aimed at the past epoch changes nothing either.
    let mut bad = m3.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(b.client.receive(&id, &bad, AAD), Err(MlsError::Rejected(_))));
    assert_eq!(delivered(b.client.receive(&id, &m3, AAD).unwrap()).body, b"three");
    say(&mut a, &mut [&mut b], &id, "current epoch still fine");
}

#[test]
fn large_additions_are_split_into_commits_the_sequencer_accepts() {
    let mut seq = MemorySequencer::new();
    let mut a = Dev::new();
    let mut others: Vec<Dev> = (0..5).map(|_| Dev::new()).collect();
    let mut pool = KeyPackagePool::new();
    for o in &others {
        o.publish(&mut pool, 1);
    }
    let kps = others.iter().map(|o| pool.take(&o.device()).unwrap()).collect();
    let id = a.client.create(NOW).unwrap();
    let mut cfg = a.client.config().clone();
    cfg.adds_per_commit_max = 2;
    let client = common::reopen_with(&a, cfg);
    a.client = client;
    let outs = a.client.add_many(&id, kps, &mut seq, NOW).unwrap();
    assert_eq!(outs.len(), 3);
    assert!(outs.iter().all(|o| o.commit_bytes <= cairn_proto::sequencer::HANDSHAKE_BYTES_MAX));
    // Each new member joins from its own Welcome and catches up on the later commits.
    for (i, o) in others.iter_mut().enumerate() {
        let w = outs[i / 2].welcome.as_ref().unwrap();
        assert!(w.recipients.iter().any(|(d, _)| *d == o.device()));
        o.client.join(&w.bytes, NOW).unwrap();
        o.client.sync(&id, &seq, NOW).unwrap();
        assert_eq!(o.client.epoch_authenticator(&id).unwrap(), a.client.epoch_authenticator(&id).unwrap());
    }
    let (first, rest) = others.split_at_mut(1);
    let mut rest: Vec<&mut Dev> = rest.iter_mut().collect();
    rest.push(&mut a);
    say(&mut first[0], &mut rest, &id, "six of us");
}

/// `n` verified key packages of devices of `a`'s account.
fn key_packages(a: &Dev, n: u8) -> Vec<cairn_mls::VerifiedKeyPackage> {
    use cairn_proto::ed25519::SigningKey;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    (0..n)
        .map(|i| {
            let key = SigningKey::from_bytes(&[i.wrapping_add(1); 32]);
            let cert = cairn_proto::DeviceCert::issue(
                &a.account_key,
                cairn_proto::DeviceId(key.verifying_key().to_bytes()),
                NOW,
            );
            let s = cairn_mls::DeviceSigner::new(key, cert).unwrap();
            let b = openmls::prelude::KeyPackage::builder()
                .leaf_node_capabilities(cairn_mls::leaf_capabilities())
                .key_package_lifetime(cairn_mls::clock_free_lifetime())
                .build(cairn_mls::CIPHERSUITE, &provider, &s, s.credential_with_key())
                .unwrap();
            let bytes = tls_codec::Serialize::tls_serialize_detached(b.key_package()).unwrap();
            cairn_mls::verify_key_package(&bytes).unwrap()
        })
        .collect()
}

/// `a`'s client reopened with one commit allowed to add 200 devices (≈ 86 KB, over the
/// sequencer's 64 KiB limit), so such an add is refused as too large and split.
fn with_oversized_adds(a: &mut Dev) {
    let mut cfg = a.client.config().clone();
    cfg.adds_per_commit_max = 200;
    a.client = common::reopen_with(a, cfg);
}

#[test]
fn an_addition_too_large_for_the_sequencer_is_split_adaptively() {
    let mut seq = MemorySequencer::new();
    let mut a = Dev::new();
    let kps = key_packages(&a, 200);
    with_oversized_adds(&mut a);
    let id = a.client.create(NOW).unwrap();
    let outs = a.client.add_many(&id, kps, &mut seq, NOW).unwrap();
    assert!(outs.len() >= 2, "split into {} commits", outs.len());
    assert!(outs.iter().all(|o| o.commit_bytes <= cairn_proto::sequencer::HANDSHAKE_BYTES_MAX));
    assert_eq!(a.client.members(&id).unwrap().len(), 201);
    assert_eq!(seq.len(&id.topic()), outs.len() as u64);
}

#[test]
fn batched_messages_persist_the_final_ratchet_state() {
    // send_many / receive_many encode the secret tree once per batch; the state after the
    // batch must be what is stored, or a restarted sender would reuse a key generation.
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let bodies: Vec<&[u8]> = vec![b"one", b"two", b"three"];
    let cts = a.client.send_many(&id, &with_aad(&bodies)).unwrap();
    let refs: Vec<&[u8]> = cts.iter().map(Vec::as_slice).collect();
    let pairs = with_aad(&refs);
    for (r, want) in b.client.receive_many(&id, &pairs).into_iter().zip(&bodies) {
        assert_eq!(delivered(r.unwrap()).body, *want);
    }
    let mut a = a.restart();
    let mut b = b.restart();
    // A continues after generation 2, and B remembers having consumed 0..=2.
    let ct = a.client.send(&id, b"four", AAD).unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct, AAD).unwrap()).body, b"four");
    assert!(matches!(b.client.receive(&id, &cts[1], AAD), Ok(Received::Dropped(Dropped::Duplicate))));
    say(&mut b, &mut [&mut a], &id, "still in sync");
}

const ROWS: redb::TableDefinition<'_, &[u8], &[u8]> = redb::TableDefinition::new("test_rows");

fn row(dev: &Dev) -> Option<Vec<u8>> {
    use redb::ReadableDatabase as _;
    let rtx = dev.db.begin_read().unwrap();
    let Ok(t) = rtx.open_table(ROWS) else { return None };
    t.get(b"row".as_slice()).unwrap().map(|v| v.value().to_vec())
}

#[test]
fn deferred_writes_commit_with_the_callers_rows_or_not_at_all() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut seq);
    let bodies: Vec<&[u8]> = vec![b"one", b"two", b"three"];
    let cts = a.client.send_many(&id, &with_aad(&bodies)).unwrap();
    let refs: Vec<&[u8]> = cts.iter().map(Vec::as_slice).collect();
    let pairs = with_aad(&refs);

    // Two deferred batches accumulate; the caller's transaction is dropped (a crash).
    b.client.set_deferred(true).unwrap();
    for r in b.client.receive_many(&id, &pairs[..2]) {
        delivered(r.unwrap());
    }
    delivered(b.client.receive(&id, refs[2], AAD).unwrap());
    assert!(b.client.has_pending_flush());
    // Meanwhile operations with their own transaction are refused, and so is leaving the mode.
    assert!(matches!(b.client.self_update(&id, &mut seq, NOW), Err(MlsError::FlushPending)));
    assert!(matches!(b.client.set_deferred(false), Err(MlsError::FlushPending)));
    {
        let tx = b.db.begin_write().unwrap();
        tx.open_table(ROWS).unwrap().insert(b"row".as_slice(), b"lost".as_slice()).unwrap();
        b.client.flush_into(&tx).unwrap();
    }
    // Not committed: the confirmation is refused and the writes stay pending.
    assert!(matches!(
        b.client.flush_committed(),
        Err(MlsError::Storage(cairn_mls::StorageError::NotCommitted))
    ));
    assert!(b.client.has_pending_flush());
    let mut b = b.restart();
    assert_eq!(row(&b), None);
    // The old ratchet state is back: the same messages decrypt again.
    b.client.set_deferred(true).unwrap();
    for (r, want) in b.client.receive_many(&id, &pairs).into_iter().zip(&bodies) {
        assert_eq!(delivered(r.unwrap()).body, *want);
    }
    let tx = b.db.begin_write().unwrap();
    tx.open_table(ROWS).unwrap().insert(b"row".as_slice(), b"kept".as_slice()).unwrap();
    b.client.flush_into(&tx).unwrap();
    tx.commit().unwrap();
    b.client.flush_committed().unwrap();
    assert!(!b.client.has_pending_flush());

    // Both are there after a restart: the row, and the ratchet state (replays are duplicates).
    let mut b = b.restart();
    assert_eq!(row(&b).as_deref(), Some(b"kept".as_slice()));
    assert!(matches!(b.client.receive(&id, refs[1], AAD), Ok(Received::Dropped(Dropped::Duplicate))));

    // discard_pending undoes deferred work in memory; commit_deferred does it all in one call.
    let ct = a.client.send(&id, b"four", AAD).unwrap();
    b.client.set_deferred(true).unwrap();
    delivered(b.client.receive(&id, &ct, AAD).unwrap());
    b.client.discard_pending().unwrap();
    assert_eq!(delivered(b.client.receive(&id, &ct, AAD).unwrap()).body, b"four");
    b.client.commit_deferred(b.db.begin_write().unwrap()).unwrap();
    b.client.set_deferred(false).unwrap();
    let mut b = b.restart();
    assert!(matches!(b.client.receive(&id, &ct, AAD), Ok(Received::Dropped(Dropped::Duplicate))));
    say(&mut b, &mut [&mut a], &id, "still in sync");
}

fn with_aad<'a>(items: &[&'a [u8]]) -> Vec<(&'a [u8], &'static [u8])> {
    items.iter().map(|b| (*b, AAD)).collect()
}

/// A copy of `ct` claiming `epoch`, its ciphertext altered: junk that passes every clear check.
fn junk(ct: &[u8], id: &cairn_mls::ConversationId, epoch: u64, salt: u8) -> Vec<u8> {
    // MLSMessage: version u16, wire format u16, group_id (length 32, 32 bytes), epoch u64, …
    assert_eq!((ct[4], &ct[5..37]), (32, id.0.as_slice()));
    let mut j = ct.to_vec();
    j[37..45].copy_from_slice(&epoch.to_be_bytes());
    let n = j.len();
    j[n - 1] ^= salt;
    j
}

#[test]
fn junk_for_a_future_epoch_cannot_evict_or_lose_genuine_messages() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b_dev) = (Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b_dev], &mut seq);
    let per_epoch = 8;
    let config =
        cairn_mls::Config { future_messages_per_epoch_max: per_epoch, ..cairn_mls::Config::default() };
    let mut b = common::reopen_with(&b_dev, config);
    let e = b.epoch(&id).unwrap();
    a.client.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    // A genuine message for e+1 arrives first and is held.
    let first = a.client.send(&id, b"genuine, before the junk", AAD).unwrap();
    assert_eq!(b.receive(&id, &first, AAD).unwrap(), Received::Buffered);
    // A flood of junk for e+1 fills the epoch's quota; it evicts nothing, later junk is refused.
    for i in 0..3 * per_epoch {
        let r = b.receive(&id, &junk(&first, &id, e + 1, i as u8 + 1), AAD).unwrap();
        let want =
            if i + 1 < per_epoch { Received::Buffered } else { Received::Dropped(Dropped::BufferFull) };
        assert_eq!(r, want, "junk {i}");
    }
    assert_eq!(b.buffered(&id).unwrap(), per_epoch);
    // Too far ahead is refused whatever the quota.
    let ahead = e + 2 + b.config().future_epochs_ahead_max;
    assert_eq!(
        b.receive(&id, &junk(&first, &id, ahead, 1), AAD).unwrap(),
        Received::Dropped(Dropped::TooFarAhead)
    );
    // A genuine message after the flood is refused (not lost: the caller has it in its history).
    let second = a.client.send(&id, b"genuine, after the junk", AAD).unwrap();
    assert_eq!(b.receive(&id, &second, AAD).unwrap(), Received::Dropped(Dropped::BufferFull));
    // The commit arrives: the held genuine message is read, the junk is refused.
    let ev = b.sync(&id, &seq, NOW).unwrap();
    let read: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Message(Received::Message(d)) => Some(d.body.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(read, vec![b"genuine, before the junk".as_slice()]);
    assert_eq!(b.buffered(&id).unwrap(), 0);
    // Received again from history, the refused one is read.
    assert_eq!(delivered(b.receive(&id, &second, AAD).unwrap()).body, b"genuine, after the junk");
}

/// How a [`Flaky`] sequencer fails its next submission.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Sequences it, then answers with a timeout.
    LoseAnswer,
    /// Sequences it, then answers "stale" (a retried request that landed twice).
    StaleAfterSequencing,
    /// Does not sequence it, answers with a timeout.
    LoseRequest,
}

/// A sequencer whose next submission fails with `fault` (then behaves).
struct Flaky {
    inner: MemorySequencer,
    fault: Option<Fault>,
}

impl CommitSequencer for Flaky {
    fn submit(
        &mut self,
        topic: cairn_proto::Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        match self.fault.take() {
            None => self.inner.submit(topic, after, payload, keys),
            Some(Fault::LoseRequest) => Err(SequencerError::Unavailable("timeout".into())),
            Some(Fault::LoseAnswer) => {
                self.inner.submit(topic, after, payload, keys)?;
                Err(SequencerError::Unavailable("timeout".into()))
            }
            Some(Fault::StaleAfterSequencing) => {
                let seq = self.inner.submit(topic, after, payload, keys)?;
                Err(SequencerError::Stale { after, current: seq + 1 })
            }
        }
    }

    fn fetch(
        &self,
        topic: &cairn_proto::Topic,
        from: u64,
        max: usize,
    ) -> Result<Vec<cairn_proto::sequencer::Sequenced>, cairn_proto::sequencer::SequencerError> {
        self.inner.fetch(topic, from, max)
    }
}

fn converged(a: &Dev, b: &Dev, id: &cairn_mls::ConversationId) {
    assert_eq!(a.client.epoch(id).unwrap(), b.client.epoch(id).unwrap());
    assert_eq!(a.client.epoch_authenticator(id).unwrap(), b.client.epoch_authenticator(id).unwrap());
}

#[test]
fn a_committer_whose_answer_is_lost_or_stale_never_forks_itself() {
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut d) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b], &mut flaky.inner);

    // Sequenced, answer lost: the commit stays pending and `sync` merges it from the order.
    flaky.fault = Some(Fault::LoseAnswer);
    let r = a.client.self_update(&id, &mut flaky, NOW);
    assert!(matches!(r, Err(MlsError::Sequencer(_))), "{r:?}");
    // Messages still flow meanwhile (in the old epoch).
    say(&mut a, &mut [&mut b], &id, "while pending");
    b.client.sync(&id, &flaky, NOW).unwrap();
    let ev = a.client.sync(&id, &flaky, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::Commit { own: true, .. }]), "{ev:?}");
    converged(&a, &b, &id);
    say(&mut b, &mut [&mut a], &id, "merged from the order");

    // Sequenced, answered "stale": the order shows its own bytes, so it is merged, not rebuilt.
    flaky.fault = Some(Fault::StaleAfterSequencing);
    let n = flaky.inner.len(&id.topic());
    let out = a.client.self_update(&id, &mut flaky, NOW).unwrap().unwrap();
    assert_eq!((out.seq, flaky.inner.len(&id.topic())), (n, n + 1), "one commit, not two");
    b.client.sync(&id, &flaky, NOW).unwrap();
    converged(&a, &b, &id);

    // Not sequenced, timed out: retried with the same bytes; an Add keeps its Welcome.
    let mut pool = KeyPackagePool::new();
    d.publish(&mut pool, 1);
    flaky.fault = Some(Fault::LoseRequest);
    let r = a.client.add(&id, vec![pool.take(&d.device()).unwrap()], &mut flaky, NOW);
    assert!(matches!(r, Err(MlsError::Sequencer(_))), "{r:?}");
    // Its slot is still open: nothing else is committed before it is settled.
    assert!(matches!(a.client.self_update(&id, &mut flaky, NOW), Err(MlsError::CommitPending)));
    let out = a.client.retry_pending(&id, &mut flaky).unwrap().unwrap();
    d.client.join(&out.welcome.unwrap().bytes, NOW).unwrap();
    b.client.sync(&id, &flaky, NOW).unwrap();
    converged(&a, &b, &id);
    converged(&a, &d, &id);
    say(&mut d, &mut [&mut a, &mut b], &id, "joined after a retried add");

    // Sequenced, answer lost, then another member's commit: the slot is still proven ours.
    flaky.fault = Some(Fault::LoseAnswer);
    assert!(a.client.self_update(&id, &mut flaky, NOW).is_err());
    b.client.self_update(&id, &mut flaky, NOW).unwrap().unwrap();
    assert!(a.client.retry_pending(&id, &mut flaky).unwrap().is_some());
    d.client.sync(&id, &flaky, NOW).unwrap();
    converged(&a, &b, &id);
    converged(&a, &d, &id);
    assert_eq!(a.client.retry_pending(&id, &mut flaky).unwrap().map(|o| o.seq), None);
    say(&mut a, &mut [&mut b, &mut d], &id, "one group");
}

#[test]
fn a_leave_proposal_left_unanswered_stays_pending_until_the_order_shows_what_holds_its_slot() {
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut c, mut d) = (Dev::new(), Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c, &mut d], &mut flaky.inner);
    let topic = id.topic();

    // Not sequenced, timed out: kept, nothing else is built meanwhile, and offered again with
    // the same bytes.
    flaky.fault = Some(Fault::LoseRequest);
    let n = flaky.inner.len(&topic);
    assert!(matches!(d.client.leave(&id, &mut flaky, NOW), Err(MlsError::Sequencer(_))));
    assert!(d.client.has_pending_commit(&id));
    assert_eq!(d.client.conversations_leaving(), vec![id], "offered again by the node's tick");
    assert!(matches!(d.client.self_update(&id, &mut flaky, NOW), Err(MlsError::CommitPending)));
    let out = d.client.retry_pending(&id, &mut flaky).unwrap().expect("sequenced when offered again");
    assert_eq!((out.seq, flaky.inner.len(&topic)), (n, n + 1));
    assert!(!d.client.has_pending_commit(&id));
    // Asking again proposes nothing more.
    d.client.leave(&id, &mut flaky, NOW).unwrap();
    assert_eq!(flaky.inner.len(&topic), n + 1);
    let ev = a.client.sync(&id, &flaky, NOW).unwrap();
    assert!(matches!(&ev[..], [Event::LeaveProposed { device: Some(x), .. }] if *x == d.cert), "{ev:?}");

    // Sequenced, answer lost: the proposal stays, so the commit that covers it (by reference)
    // is read by the leaver, which learns it is out. Dropped, it could not read that commit.
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut flaky.inner);
    flaky.fault = Some(Fault::LoseAnswer);
    assert!(matches!(c.client.leave(&id, &mut flaky, NOW), Err(MlsError::Sequencer(_))));
    a.client.sync(&id, &flaky, NOW).unwrap();
    a.client.commit_pending(&id, &mut flaky, NOW).unwrap().unwrap();
    let ev = c.client.sync(&id, &flaky, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    assert!(!c.client.has_pending_commit(&id));
    b.client.sync(&id, &flaky, NOW).unwrap();
    assert_eq!(a.client.members(&id).unwrap().len(), 2);
    say(&mut a, &mut [&mut b], &id, "bye carol");

    // Not sequenced, and another member's leave took the slot: only the leaver's own proposal
    // is taken back (the other one, sequenced, stays for the commit), and leaving again builds
    // a new one. The commit covering both removes both.
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut flaky.inner);
    flaky.fault = Some(Fault::LoseRequest);
    assert!(c.client.leave(&id, &mut flaky, NOW).is_err());
    b.client.leave(&id, &mut flaky, NOW).unwrap();
    assert_eq!(c.client.retry_pending(&id, &mut flaky).unwrap().map(|o| o.seq), None, "lost its slot");
    assert!(!c.client.has_pending_commit(&id));
    c.client.leave(&id, &mut flaky, NOW).unwrap();
    let ev = a.client.sync(&id, &flaky, NOW).unwrap();
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::LeaveProposed { .. })).count(), 2, "{ev:?}");
    a.client.commit_pending(&id, &mut flaky, NOW).unwrap().unwrap();
    for leaver in [&mut b, &mut c] {
        let ev = leaver.client.sync(&id, &flaky, NOW).unwrap();
        assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    }
    assert_eq!(a.client.members(&id).unwrap().len(), 1);
}

#[test]
fn a_pending_leave_survives_a_restart() {
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut flaky.inner);
    flaky.fault = Some(Fault::LoseAnswer);
    assert!(c.client.leave(&id, &mut flaky, NOW).is_err());
    let mut c = c.restart();
    assert!(c.client.has_pending_commit(&id), "the pending leave is stored");
    a.client.sync(&id, &flaky, NOW).unwrap();
    a.client.commit_pending(&id, &mut flaky, NOW).unwrap().unwrap();
    let ev = c.client.sync(&id, &flaky, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
}

#[test]
fn a_leave_answered_stale_after_it_was_sequenced_is_proposed_once_and_the_leaver_updates_no_key() {
    let mut flaky = Flaky { inner: MemorySequencer::new(), fault: None };
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut flaky.inner);
    let topic = id.topic();
    let n = flaky.inner.len(&topic);
    flaky.fault = Some(Fault::StaleAfterSequencing);
    c.client.leave(&id, &mut flaky, NOW).unwrap();
    assert_eq!(flaky.inner.len(&topic), n + 1, "its own bytes hold the slot: one proposal, not two");
    assert!(!c.client.has_pending_commit(&id));
    assert!(!c.client.due_for_update(&id, NOW + 365 * 86_400_000).unwrap(), "a leaver commits nothing");
    assert!(c.client.conversations_leaving().is_empty());
    a.client.sync(&id, &flaky, NOW).unwrap();
    a.client.commit_pending(&id, &mut flaky, NOW).unwrap().unwrap();
    let ev = c.client.sync(&id, &flaky, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    // Asked again once out: nothing to propose.
    c.client.leave(&id, &mut flaky, NOW).unwrap();
    assert_eq!(flaky.inner.len(&topic), n + 2, "the proposal and the removing commit only");
}

#[test]
fn a_commit_refused_as_too_large_keeps_the_leave_proposals_it_covered() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    c.client.leave(&id, &mut seq, NOW).unwrap();
    let kps = key_packages(&a, 200);
    with_oversized_adds(&mut a);
    a.client.sync(&id, &seq, NOW).unwrap();
    // The first try covers Carol's sequenced leave and is refused as too large; the split
    // commits must still cover it (dropping it from the proposal store lost her leave).
    let outs = a.client.add_many(&id, kps, &mut seq, NOW).unwrap();
    assert!(outs.len() >= 2, "split into {} commits", outs.len());
    let ev = c.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    assert_eq!(a.client.members(&id).unwrap().len(), 2 + 200, "Alice, Bob and the 200 added");
    b.client.sync(&id, &seq, NOW).unwrap();
    converged(&a, &b, &id);
}

/// A modified client's sequencer: orders a handshake at the next position, whatever it was
/// built after.
struct Anywhere<'a>(&'a mut MemorySequencer);

impl CommitSequencer for Anywhere<'_> {
    fn submit(
        &mut self,
        topic: cairn_proto::Topic,
        _after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        let at = self.0.len(&topic);
        self.0.submit(topic, at, payload, keys)
    }

    fn fetch(
        &self,
        topic: &cairn_proto::Topic,
        from: u64,
        max: usize,
    ) -> Result<Vec<cairn_proto::sequencer::Sequenced>, SequencerError> {
        self.0.fetch(topic, from, max)
    }
}

#[test]
fn a_leave_dropped_by_a_commit_that_does_not_cover_it_is_proposed_again() {
    let mut seq = MemorySequencer::new();
    let (mut a, mut b, mut c) = (Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut a, &mut [&mut b, &mut c], &mut seq);
    // Bob builds a key update before Carol's leave, and has it ordered after it: a valid
    // commit that does not cover her sequenced proposal, so every member drops the proposal.
    let staged = b.client.stage(&id, Change::SelfUpdate, NOW).unwrap().unwrap();
    c.client.leave(&id, &mut seq, NOW).unwrap();
    b.client.submit(staged, &mut Anywhere(&mut seq), NOW).unwrap().unwrap();
    a.client.sync(&id, &seq, NOW).unwrap();
    assert_eq!(a.client.members(&id).unwrap().len(), 3, "Carol is still in");
    c.client.sync(&id, &seq, NOW).unwrap();
    assert!(c.client.is_active(&id).unwrap());
    assert_eq!(c.client.conversations_leaving(), vec![id], "her leave is proposed again");
    c.client.retry_pending(&id, &mut seq).unwrap().expect("sequenced");
    let ev = a.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::LeaveProposed { .. })), "{ev:?}");
    a.client.commit_pending(&id, &mut seq, NOW).unwrap().unwrap();
    let ev = c.client.sync(&id, &seq, NOW).unwrap();
    assert!(ev.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{ev:?}");
    b.client.sync(&id, &seq, NOW).unwrap();
    converged(&a, &b, &id);
}
