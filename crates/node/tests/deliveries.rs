#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Delivery states of own messages survive a restart: "stored on k" and "delivered to n of m"
//! read the same from the engine opened again from the same files, and a receipt arriving
//! after the restart still moves a state recorded before it.

mod common;

use cairn_mls::MemorySequencer;
use cairn_node::engine::DURABLE_EVERY_MS;
use cairn_node::model::DeliveryState;
use cairn_proto::Id;
use common::{User, converse, deliver, published, restart, user};

/// `(state, stored_on, delivered_to, members)` of each of `u`'s sends in `conv`, by id.
fn states(u: &User, conv: &cairn_mls::ConversationId) -> Vec<(Id, (DeliveryState, u32, u32, u32))> {
    let mut v: Vec<_> = u
        .engine
        .deliveries(conv, 100)
        .into_iter()
        .map(|(id, d)| (id, (d.state, d.stored_on, d.delivered_to, d.members)))
        .collect();
    v.sort_by_key(|(id, _)| id.0);
    v
}

/// `bob`'s receipts for what he read, after his receipt pace passed.
fn receipts(bob: &mut User, seq: &mut MemorySequencer, at: u64) -> Vec<cairn_proto::Envelope> {
    bob.engine.tick(seq, at);
    published(bob)
}

#[test]
fn delivery_states_read_the_same_after_a_restart_and_keep_moving() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);

    // Two sends: both stored on 2 store nodes, bob reads both and receipts them.
    let mut sent = Vec::new();
    for t in ["one", "two"] {
        let r = alice.engine.send_text(conv, t, &mut seq, now + 10).unwrap();
        sent.push(Id::from_hex(&r.id).unwrap());
    }
    let envs = published(&mut alice);
    assert_eq!(envs.len(), 2);
    for id in &sent {
        alice.engine.store_acks(*id, 2, true, now + 20);
    }
    deliver(&mut bob, &envs, &mut seq, now + 30);
    let rs = receipts(&mut bob, &mut seq, now + 5_000);
    assert!(!rs.is_empty(), "bob receipted");
    deliver(&mut alice, &rs, &mut seq, now + 5_010);

    // A third send: stored on 1, not read yet.
    let third =
        Id::from_hex(&alice.engine.send_text(conv, "three", &mut seq, now + 5_020).unwrap().id).unwrap();
    let third_env = published(&mut alice);
    alice.engine.store_acks(third, 1, false, now + 5_030);

    let before = states(&alice, &conv);
    let delivered = (DeliveryState::Delivered, 2, 1, 1);
    let stored = (DeliveryState::Stored, 1, 0, 1);
    assert_eq!(before.len(), 3, "{before:?}");
    for id in &sent {
        assert_eq!(before.iter().find(|(i, _)| i == id).unwrap().1, delivered);
    }
    assert_eq!(before.iter().find(|(i, _)| *i == third).unwrap().1, stored);

    // The tick makes the acks' and receipts' commits durable; then the node restarts.
    alice.engine.tick(&mut seq, now + 5_030 + DURABLE_EVERY_MS);
    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + 10_000).unwrap();
    let _ = published(&mut alice);
    assert_eq!(states(&alice, &conv), before, "the same states after the restart");

    // Bob reads the third message now: his receipt reaches the restarted engine and moves
    // the state recorded before the restart, which a second restart reads back.
    deliver(&mut bob, &third_env, &mut seq, now + 10_010);
    let rs = receipts(&mut bob, &mut seq, now + 20_000);
    deliver(&mut alice, &rs, &mut seq, now + 20_010);
    let moved = states(&alice, &conv);
    assert_eq!(moved.iter().find(|(i, _)| *i == third).unwrap().1, (DeliveryState::Delivered, 1, 1, 1));
    alice.engine.make_durable().unwrap();
    let alice = restart(alice);
    assert_eq!(states(&alice, &conv), moved, "read back without start too (opened from the files)");
}

#[test]
fn a_forgotten_conversation_leaves_no_delivery_rows() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    alice.engine.send_text(conv, "one", &mut seq, now + 10).unwrap();
    let _ = published(&mut alice);
    assert_eq!(alice.engine.db().deliveries_recorded().unwrap().len(), 1);
    alice.engine.db().purge_conversation(&conv.0).unwrap();
    assert!(alice.engine.db().deliveries_recorded().unwrap().is_empty());
}

#[test]
fn a_crash_before_the_tick_leaves_states_behind_never_ahead() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    let id = Id::from_hex(&alice.engine.send_text(conv, "one", &mut seq, now + 10).unwrap().id).unwrap();
    let envs = published(&mut alice);
    alice.engine.store_acks(id, 2, true, now + 20);
    deliver(&mut bob, &envs, &mut seq, now + 30);
    let rs = receipts(&mut bob, &mut seq, now + 5_000);
    deliver(&mut alice, &rs, &mut seq, now + 5_010);
    assert_eq!(states(&alice, &conv)[0].1, (DeliveryState::Delivered, 2, 1, 1));
    // No tick and no stop: the acks' and receipts' changes were not written yet. The send's
    // own row was (in the send's durable transaction): the state reads "sent", waiting for bob.
    let alice = restart(alice);
    assert_eq!(states(&alice, &conv), vec![(id, (DeliveryState::Sent, 0, 0, 1))]);
}

#[test]
fn a_restart_keeps_the_newest_states_in_memory_and_older_ones_still_move() {
    use cairn_node::deliveries_store::DELIVERIES_RESTORED_PER_CONVERSATION;
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    let total = DELIVERIES_RESTORED_PER_CONVERSATION + 6;
    let mut sent = Vec::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(cairn_node::engine::SEND_BATCH_MAX) {
        let items = chunk.iter().map(|i| (conv, format!("m{i}"), None)).collect();
        for r in alice.engine.send_texts(items, &mut MemorySequencer::new(), now + 1) {
            sent.push(Id::from_hex(&r.unwrap().id).unwrap());
        }
    }
    let envs = published(&mut alice);

    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + 2).unwrap();
    let _ = published(&mut alice);
    let oldest = sent[0];
    assert!(alice.engine.core().delivery(&oldest).is_none(), "an older send is not in memory");
    assert_eq!(alice.engine.delivery(&oldest).map(|d| d.state), Some(DeliveryState::Sent), "its row answers");
    assert_eq!(states(&alice, &conv).len(), total, "the API lists the rows");

    // A store acknowledgement and bob's receipt for the oldest send still move its state.
    alice.engine.store_acks(oldest, 2, true, now + 3);
    deliver(&mut bob, &envs, &mut seq, now + 4);
    let rs = receipts(&mut bob, &mut seq, now + 4 + 10_000);
    deliver(&mut alice, &rs, &mut seq, now + 5);
    let d = alice.engine.delivery(&oldest).unwrap();
    assert_eq!((d.state, d.stored_on, d.delivered_to), (DeliveryState::Delivered, 2, 1));
    let newest = alice.engine.deliveries(&conv, 1);
    assert_eq!(newest.first().map(|(id, _)| *id), sent.last().copied(), "newest first");

    // Recorded by the tick: the same after another restart.
    alice.engine.tick(&mut seq, now + 6 + DURABLE_EVERY_MS);
    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + 7 + DURABLE_EVERY_MS).unwrap();
    let d = alice.engine.delivery(&oldest).unwrap();
    assert_eq!((d.state, d.stored_on, d.delivered_to), (DeliveryState::Delivered, 2, 1));
}

#[test]
fn acknowledged_sends_leave_the_outbox_with_the_next_commit_and_are_not_pushed_again() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    let send = |u: &mut User, text: &str, at: u64| {
        let mut s = MemorySequencer::new();
        Id::from_hex(&u.engine.send_text(conv, text, &mut s, at).unwrap().id).unwrap()
    };
    let acked: Vec<Id> = (0..3).map(|i| send(&mut alice, &format!("acked {i}"), now + 10 + i)).collect();
    let _ = published(&mut alice);
    let before = alice.engine.db().outbox_len().unwrap();
    for id in &acked {
        alice.engine.store_acks(*id, 2, true, now + 20);
    }
    // The next commit (a send here) takes the three out, with its own rows.
    let fourth = send(&mut alice, "not acked", now + 30);
    let _ = published(&mut alice);
    assert_eq!(alice.engine.db().outbox_len().unwrap(), before - 3 + 1);

    // A restart pushes again what no store node took, and none of the acknowledged three.
    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + 35).unwrap();
    let again: Vec<Id> = published(&mut alice).iter().map(cairn_proto::Envelope::id).collect();
    assert!(again.contains(&fourth));
    assert!(acked.iter().all(|id| !again.contains(id)), "acknowledged sends are not pushed again");

    // Acknowledged with no commit after: the tick's durable flush takes it out.
    let fifth = send(&mut alice, "acked, then a tick", now + 40);
    alice.engine.store_acks(fifth, 2, true, now + 50);
    alice.engine.tick(&mut seq, now + DURABLE_EVERY_MS + 60);
    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + DURABLE_EVERY_MS + 70).unwrap();
    let again: Vec<Id> = published(&mut alice).iter().map(cairn_proto::Envelope::id).collect();
    assert!(again.contains(&fourth) && !again.contains(&fifth));
}
