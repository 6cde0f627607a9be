#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Consent to invitations: a stranger's Welcomes wait in a bounded request list and join
//! nothing until the user accepts one; accepted and known inviters join at once.

mod common;

use std::sync::Arc;

use cairn_mls::MemorySequencer;
use cairn_node::db::NodeDb;
use cairn_node::engine::{Arrival, Invitations, Io};
use cairn_node::keyring::Keyring;
use cairn_node::requests::{
    InviteRequest, REQUESTS_MAX, REQUESTS_PER_INVITER_MAX, RequestOrStorage, RequestRefused,
};
use cairn_proto::{AccountId, DeviceId, Envelope, Limits, Topic};
use common::{Setup, User, key_package, user_with};
use redb::Database;

/// Conversations the stranger creates around the user.
const STRANGER_CONVERSATIONS: usize = 1_000;

fn user(now: u64, invitations: Invitations) -> User {
    user_with(now, Setup { invitations, ..Setup::default() })
}

/// The Welcome envelopes `from` published to `to`'s inbox since the last call.
fn welcomes_to(from: &mut User, to: &User) -> Vec<Envelope> {
    let inbox = cairn_mls::inbox_topic(&to.engine.keys().device);
    from.engine
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            Io::Publish(env) if env.header.topic == inbox => Some(*env),
            _ => None,
        })
        .collect()
}

fn deliver(to: &mut User, envs: Vec<Envelope>, seq: &mut MemorySequencer, now: u64) -> Vec<Topic> {
    let batch = envs.into_iter().map(|e| Arrival { id: e.id(), envelope: e, after_gap: false }).collect();
    to.engine.receive(batch, seq, now);
    to.engine
        .take_io()
        .into_iter()
        .filter_map(|io| match io {
            Io::Subscribe(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// Attack: a stranger holding the user's public key package adds the user to 1,000
/// conversations. The user's node keeps a bounded list of requests (the stranger's share of
/// it: `REQUESTS_PER_INVITER_MAX`), joins nothing, creates no MLS group state and follows no
/// topic. Honest traffic goes on: a friend's Welcome still becomes a request, and the request
/// the user accepts joins (and that inviter's next Welcome joins at once).
#[test]
fn a_stranger_adding_a_user_to_1000_conversations_costs_a_bounded_list_and_no_joins() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let mut bob = user(now, Invitations::Ask);
    let mut mallory = user(now, Invitations::Ask);
    let mut alice = user(now, Invitations::Ask);
    let kp = key_package(&mut bob, now);

    for i in 0..STRANGER_CONVERSATIONS {
        mallory.engine.create(vec![kp.clone()], &mut seq, now + i as u64).unwrap();
        let envs = welcomes_to(&mut mallory, &bob);
        assert_eq!(envs.len(), 1, "one Welcome per conversation");
        let subs = deliver(&mut bob, envs, &mut seq, now + i as u64);
        assert!(subs.is_empty(), "a stranger's Welcome made the node follow {subs:?}");
    }
    assert!(bob.engine.conversations().is_empty(), "no MLS group joined");
    assert!(bob.engine.mls().conversations().is_empty(), "no MLS group state");
    let reqs = bob.engine.requests().unwrap();
    assert_eq!(reqs.len(), REQUESTS_PER_INVITER_MAX, "the stranger's share of the list is bounded");
    let mallory_id = mallory.engine.keys().account;
    assert!(reqs.iter().all(|r| r.inviter == mallory_id && r.members == 2));

    // a friend's first Welcome is a request too, not refused by the stranger's flood
    let (alice_conv, _) = alice.engine.create(vec![kp.clone()], &mut seq, now).unwrap();
    let envs = welcomes_to(&mut alice, &bob);
    assert!(deliver(&mut bob, envs.clone(), &mut seq, now).is_empty());
    let reqs = bob.engine.requests().unwrap();
    assert_eq!(reqs.len(), REQUESTS_PER_INVITER_MAX + 1);
    assert!(reqs.iter().any(|r| r.conversation == alice_conv.0 && r.inviter == alice.engine.keys().account));

    // accepting joins: MLS state, the conversation's topic followed, the request gone
    let joined = bob.engine.accept_request(&alice_conv.0, &mut seq, now).unwrap();
    assert_eq!(joined, alice_conv);
    assert_eq!(bob.engine.conversations(), vec![alice_conv]);
    let subs: Vec<Topic> = bob
        .engine
        .take_io()
        .into_iter()
        .filter_map(|io| if let Io::Subscribe(t) = io { Some(t) } else { None })
        .collect();
    assert!(subs.contains(&alice_conv.topic()), "the accepted conversation is followed");
    assert_eq!(bob.engine.requests().unwrap().len(), REQUESTS_PER_INVITER_MAX);
    // the same Welcome delivered again neither joins twice nor comes back as a request
    assert!(deliver(&mut bob, envs, &mut seq, now).is_empty());
    assert_eq!(bob.engine.requests().unwrap().len(), REQUESTS_PER_INVITER_MAX);

    // the accepted inviter's next Welcome joins at once (with a fresh key package: joining
    // consumed the one the first Welcome used)
    let kp2 = key_package(&mut bob, now);
    let (second, _) = alice.engine.create(vec![kp2], &mut seq, now + 1).unwrap();
    let envs = welcomes_to(&mut alice, &bob);
    let subs = deliver(&mut bob, envs, &mut seq, now + 1);
    assert!(subs.contains(&second.topic()));
    assert_eq!(bob.engine.conversations().len(), 2);

    // a declined request is gone and its Welcome, delivered again, stays ignored
    let first = bob.engine.requests().unwrap()[0].conversation;
    bob.engine.decline_request(&first, now).unwrap();
    assert_eq!(bob.engine.requests().unwrap().len(), REQUESTS_PER_INVITER_MAX - 1);
    assert!(matches!(
        bob.engine.decline_request(&first, now),
        Err(cairn_node::error::NodeError::NotFound(_))
    ));
}

/// The list's total bound: request number `REQUESTS_MAX + 1` (from as many inviters) is refused
/// as the newest, and every kept request stays. Requests and accepted accounts are sealed at
/// rest: the file names no inviter in clear, and another device's keyring cannot read them.
#[test]
fn the_request_list_refuses_the_newest_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let device_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let open = |key: &ed25519_dalek::SigningKey| {
        let db = Arc::new(Database::create(dir.path().join("node.redb")).unwrap());
        NodeDb::with_keyring(db, Limits::default(), Arc::new(Keyring::derived(key))).unwrap()
    };
    let ndb = open(&device_key);
    let req = |i: u64| {
        let mut conv = [0u8; 32];
        conv[..8].copy_from_slice(&i.to_be_bytes());
        let mut inviter = [1u8; 32];
        inviter[..8].copy_from_slice(&i.to_be_bytes());
        InviteRequest {
            conversation: conv,
            inviter: AccountId(inviter),
            inviter_device: DeviceId([2; 32]),
            received_at_ms: i,
            members: 2,
        }
    };
    for i in 0..REQUESTS_MAX {
        ndb.request_put(&req(i), b"bundle").unwrap();
    }
    assert_eq!(
        ndb.request_put(&req(REQUESTS_MAX), b"bundle"),
        Err(RequestOrStorage::Refused(RequestRefused::Full { max: REQUESTS_MAX }))
    );
    assert_eq!(ndb.requests().unwrap().len() as u64, REQUESTS_MAX);
    assert_eq!(ndb.request_put(&req(3), b"bundle"), Err(RequestOrStorage::Refused(RequestRefused::Exists)));
    // an oversized Welcome is refused before anything is written
    let big = vec![0u8; cairn_node::requests::REQUEST_BUNDLE_BYTES_MAX + 1];
    assert!(matches!(
        ndb.request_put(&req(REQUESTS_MAX + 1), &big),
        Err(RequestOrStorage::Refused(RequestRefused::TooLarge { .. }))
    ));
    ndb.accept_account(&req(3).inviter, 9).unwrap();
    // persisted: a reopened database has the same list
    drop(ndb);
    let ndb = open(&device_key);
    assert_eq!(ndb.requests().unwrap().len() as u64, REQUESTS_MAX);
    assert_eq!(ndb.request(&req(3).conversation).unwrap().unwrap().0, req(3));
    assert!(ndb.is_accepted(&req(3).inviter).unwrap());
    assert!(!ndb.is_accepted(&req(4).inviter).unwrap());
    drop(ndb);
    // sealed: no inviter account in clear in the file; another keyring opens nothing
    let file = std::fs::read(dir.path().join("node.redb")).unwrap();
    for i in [0, 3, REQUESTS_MAX - 1] {
        let inviter = req(i).inviter.0;
        assert!(!file.windows(32).any(|w| w == inviter), "inviter {i} in clear");
    }
    let other = open(&ed25519_dalek::SigningKey::from_bytes(&[8; 32]));
    assert!(other.requests().is_err(), "another device's keyring cannot read the requests");
    assert!(!other.is_accepted(&req(3).inviter).unwrap());
}
