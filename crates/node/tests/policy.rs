//! A moderated conversation across real engines (MLS, node tables, decision core, redb files)
//! on the simulated network of the `sim` test: the admin pins the shipped roles policy; a
//! non-admin's removal is refused by its own node, and when a modified node sequences it
//! anyway, every honest member skips it alike (same epoch, same epoch authenticator, the
//! member still in the group) and the conversation goes on; the admin's removal passes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "sim/world.rs"]
mod world;

use std::sync::Arc;

use cairn_mls::ConversationId;
use cairn_mls::policy_ext::PolicyGate;
use cairn_mls::policy_ext::shipped_policy::moderation;
use cairn_node::engine::{Commit, Redaction};
use cairn_proto::Id;
use world::{Faults, World};

const USERS: usize = 4;

fn settle(w: &mut World, ms: u64) {
    let until = w.now_ms + ms;
    w.run_until(until, 100);
}

fn epochs(w: &mut World, conv: &ConversationId, users: &[usize]) -> Vec<(u64, Vec<u8>)> {
    users
        .iter()
        .map(|&u| {
            let m = w.engine(u).mls();
            (m.epoch(conv).unwrap(), m.epoch_authenticator(conv).unwrap())
        })
        .collect()
}

fn reads(w: &mut World, u: usize, conv: &ConversationId, id: Id) -> bool {
    w.engine(u).db().messages(&conv.0, 0, 10_000).unwrap().iter().any(|r| r.id == id)
}

#[test]
fn a_non_admin_removal_is_refused_by_every_member_identically() {
    let mut w = World::new(7, USERS, Faults { loss: 0, dup: 0, delay_ms_max: 5 });
    let kps = (1..USERS).map(|u| w.key_package(u)).collect();
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let (conv, state) = w.engine(0).create(kps, &mut seq, now).unwrap();
    assert_eq!(state, Commit::Done);
    w.drain(0);
    settle(&mut w, 3_000);
    for u in 1..USERS {
        assert!(w.engine(u).mls().is_active(&conv).unwrap(), "user {u} joined");
    }
    let account = |w: &World, u: usize| w.users[u].id.account();

    // the admin (user 0) pins the roles policy; every member holds it at the same epoch
    let pin = moderation::Config { admins: vec![account(&w, 0).0], ..Default::default() }.pin().unwrap();
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    assert_eq!(w.engine(0).set_policy(conv, Some(pin.clone()), &mut seq, now).unwrap(), Commit::Done);
    w.drain(0);
    settle(&mut w, 3_000);
    let all: Vec<usize> = (0..USERS).collect();
    for u in 0..USERS {
        let (mut seq, now) = (w.seq.clone(), w.now_ms);
        w.engine(u).sync(&conv, &mut seq, now);
        assert_eq!(w.engine(u).policy(&conv).unwrap(), Some(pin.clone()), "user {u}");
    }
    let pinned = epochs(&mut w, &conv, &all);
    assert!(pinned.iter().all(|e| *e == pinned[0]), "{pinned:?}");

    // user 1's node refuses to remove user 2, naming the rule
    let victim = account(&w, 2);
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let err = w.engine(1).remove(conv, victim, &mut seq, now).unwrap_err();
    assert!(err.to_string().contains("only an admin may remove members"), "{err}");

    // a modified node 1 sequences the removal anyway: every honest member skips it alike
    w.engine(1).set_policy_gate(Arc::new(PolicyGate::disabled()));
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    w.engine(1).remove(conv, victim, &mut seq, now).unwrap();
    w.drain(1);
    settle(&mut w, 3_000);
    let honest = [0usize, 2, 3];
    let order_len = w.engine(1).mls().applied(&conv).unwrap();
    for &u in &honest {
        let (mut seq, now) = (w.seq.clone(), w.now_ms);
        w.engine(u).sync(&conv, &mut seq, now);
        assert_eq!(w.engine(u).mls().applied(&conv).unwrap(), order_len, "user {u} went through the order");
        assert!(w.engine(u).member_accounts(&conv).unwrap().contains(&victim), "user {u} kept user 2");
    }
    let after = epochs(&mut w, &conv, &honest);
    assert_eq!(after, vec![pinned[0].clone(); 3], "the refused commit was merged somewhere");
    assert_ne!(epochs(&mut w, &conv, &[1])[0].0, pinned[0].0, "the modified node forked itself off");

    // the honest members still talk (user 2 included)
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let sent = w.engine(2).send_text(conv, "still here", &mut seq, now).unwrap();
    let id = Id::from_hex(&sent.id).unwrap();
    w.drain(2);
    settle(&mut w, 3_000);
    for u in [0usize, 3] {
        assert!(reads(&mut w, u, &conv, id), "user {u} reads user 2 after the refused removal");
    }

    // the admin's removal of user 1 passes on every honest member
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let out = account(&w, 1);
    assert_eq!(w.engine(0).remove(conv, out, &mut seq, now).unwrap(), Commit::Done);
    w.drain(0);
    settle(&mut w, 3_000);
    for u in [2usize, 3] {
        let (mut seq, now) = (w.seq.clone(), w.now_ms);
        w.engine(u).sync(&conv, &mut seq, now);
        assert!(!w.engine(u).member_accounts(&conv).unwrap().contains(&out), "user {u}");
    }
    let last = epochs(&mut w, &conv, &[0, 2, 3]);
    assert!(last.iter().all(|e| *e == last[0]) && last[0].0 > pinned[0].0, "{last:?}");
}

#[test]
fn the_policy_lets_an_admin_erase_a_members_message_everywhere_and_no_one_else() {
    let mut w = World::new(11, USERS, Faults { loss: 0, dup: 0, delay_ms_max: 5 });
    let kps = (1..USERS).map(|u| w.key_package(u)).collect();
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let (conv, _) = w.engine(0).create(kps, &mut seq, now).unwrap();
    w.drain(0);
    settle(&mut w, 3_000);
    let account = |w: &World, u: usize| w.users[u].id.account();

    // Without a policy, only the author erases: user 0 may not erase user 2's message.
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let first =
        Id::from_hex(&w.engine(2).send_text(conv, "before the pin", &mut seq, now).unwrap().id).unwrap();
    w.drain(2);
    settle(&mut w, 3_000);
    let now = w.now_ms;
    let err = w.engine(0).erase(conv, first, now).unwrap_err();
    assert!(err.to_string().contains("only its author"), "{err}");

    let pin = moderation::Config { admins: vec![account(&w, 0).0], ..Default::default() }.pin().unwrap();
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    assert_eq!(w.engine(0).set_policy(conv, Some(pin), &mut seq, now).unwrap(), Commit::Done);
    w.drain(0);
    settle(&mut w, 3_000);
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let spam = Id::from_hex(&w.engine(2).send_text(conv, "spam", &mut seq, now).unwrap().id).unwrap();
    w.drain(2);
    settle(&mut w, 3_000);
    for u in 0..USERS {
        assert!(reads(&mut w, u, &conv, spam), "user {u} reads the message");
    }

    // A member who is not an admin: refused by its own node, naming the policy...
    let now = w.now_ms;
    let err = w.engine(1).erase(conv, spam, now).unwrap_err();
    assert!(err.to_string().contains("only its author or an admin may erase"), "{err}");
    // ...and by every member when a modified node sends the redaction anyway.
    let now = w.now_ms;
    w.engine(1).send_redaction_unchecked(conv, Redaction { target: spam, secret: None }, now).unwrap();
    w.drain(1);
    settle(&mut w, 3_000);
    for u in 0..USERS {
        assert!(reads(&mut w, u, &conv, spam), "user {u} applied a non-admin's erasure");
    }

    // The admin erases it: gone at every member, the admin named as the eraser.
    let now = w.now_ms;
    w.engine(0).erase(conv, spam, now).unwrap();
    w.drain(0);
    settle(&mut w, 3_000);
    for u in 0..USERS {
        assert!(!reads(&mut w, u, &conv, spam), "user {u} still shows the erased message");
        let row = w.engine(u).db().redaction(&spam).unwrap().expect("a tombstone");
        assert!(row.applied && row.by == account(&w, 0), "user {u}: {row:?}");
    }
    assert!(reads(&mut w, 3, &conv, first), "only the erased message went");
}
