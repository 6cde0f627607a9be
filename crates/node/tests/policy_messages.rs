//! The pinned policy judges every text message at every member (issue 13 §3), with real
//! engines (MLS, node tables, decision core, redb files) on the simulated network of the
//! `sim` test (random delays and duplicated deliveries):
//! - `moderation` with a word filter and a rate limit: a filtered message is held at every
//!   member (not in the history, listed as held), allowed ones show with their verdict, a
//!   burst over the rate limit is denied (its text gone, its id listed with the reason), and
//!   every member reaches the same verdicts — one of them fed the burst in reverse order,
//!   duplicated, and restarted halfway, with some messages still waiting;
//! - a restart keeps the verdicts and the policy's state (the next message over the limit is
//!   still denied);
//! - the echo bot: one `!echo` gets exactly one reply, from one member.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "sim/world.rs"]
mod world;

use cairn_contracts::policy::Verdict;
use cairn_mls::ConversationId;
use cairn_mls::policy_ext::shipped_policy::{echo_bot, moderation};
use cairn_node::engine::policy_store::{self, RecordState};
use cairn_node::engine::{Arrival, Commit};
use cairn_proto::{Envelope, Id};
use world::{Faults, World};

fn settle(w: &mut World, ms: u64) {
    let until = w.now_ms + ms;
    w.run_until(until, 100);
}

/// A conversation of `users` users created by user 0, everyone joined and settled.
fn group(w: &mut World, users: usize) -> ConversationId {
    let kps = (1..users).map(|u| w.key_package(u)).collect();
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let (conv, state) = w.engine(0).create(kps, &mut seq, now).unwrap();
    assert_eq!(state, Commit::Done);
    w.drain(0);
    settle(w, 3_000);
    for u in 1..users {
        assert!(w.engine(u).mls().is_active(&conv).unwrap(), "user {u} joined");
    }
    conv
}

fn pin(w: &mut World, conv: ConversationId, pin: cairn_mls::policy_ext::PolicyPin, users: &[usize]) {
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    assert_eq!(w.engine(0).set_policy(conv, Some(pin.clone()), &mut seq, now).unwrap(), Commit::Done);
    w.drain(0);
    settle(w, 3_000);
    for &u in users {
        let (mut seq, now) = (w.seq.clone(), w.now_ms);
        w.engine(u).sync(&conv, &mut seq, now);
        assert_eq!(w.engine(u).policy(&conv).unwrap(), Some(pin.clone()), "user {u} holds the pin");
    }
    settle(w, 1_000);
}

fn send(w: &mut World, u: usize, conv: ConversationId, text: &str) -> Id {
    let (mut seq, now) = (w.seq.clone(), w.now_ms);
    let r = w.engine(u).send_text(conv, text, &mut seq, now).unwrap();
    w.drain(u);
    Id::from_hex(&r.id).unwrap()
}

/// What user `u` decided about each message: `None` if it has no record.
fn verdicts(
    w: &mut World,
    u: usize,
    conv: &ConversationId,
    ids: &[Id],
) -> Vec<Option<(RecordState, Verdict)>> {
    let db = w.engine(u).db().clone();
    ids.iter()
        .map(|id| policy_store::record(&db, &conv.0, id).unwrap().map(|r| (r.state, r.verdict)))
        .collect()
}

fn history(w: &mut World, u: usize, conv: &ConversationId) -> Vec<(Id, String)> {
    let rows = w.engine(u).db().messages(&conv.0, 0, 10_000).unwrap();
    rows.into_iter().map(|r| (r.id, String::from_utf8_lossy(&r.message.body[1..]).into_owned())).collect()
}

fn judged(v: Verdict) -> Option<(RecordState, Verdict)> {
    Some((RecordState::Judged, v))
}

#[test]
fn moderation_verdicts_are_the_same_at_every_member_in_any_order_and_across_restarts() {
    const USERS: usize = 4;
    let mut w = World::new(11, USERS, Faults { loss: 0, dup: 300, delay_ms_max: 40 });
    let conv = group(&mut w, USERS);
    let admin = w.users[0].id.account().0;
    let cfg = moderation::Config {
        admins: vec![admin],
        max_messages: 4,
        window_ms: 600_000,
        words: vec!["spam".into()],
        deny_filtered: false,
    };
    pin(&mut w, conv, cfg.pin().unwrap(), &(0..USERS).collect::<Vec<_>>());

    // user 3 is away during the burst: it will be fed it by hand, reversed and duplicated
    w.engine(3).make_durable().unwrap();
    w.crash(3);
    let epoch = w.engine(1).mls().epoch(&conv).unwrap();
    let texts = ["one", "two", "buy SPAM now", "four", "five", "six"];
    let burst: Vec<Id> = texts.iter().map(|t| send(&mut w, 1, conv, t)).collect();
    let other = send(&mut w, 2, conv, "hello from two");
    settle(&mut w, 3_000);

    // rate limit first (every message counts), then the word filter
    let expected = vec![
        judged(Verdict::Allow),
        judged(Verdict::Allow),
        judged(Verdict::Hold),
        judged(Verdict::Allow),
        judged(Verdict::Deny("rate limit: at most 4 messages per 600 s".into())),
        judged(Verdict::Deny("rate limit: at most 4 messages per 600 s".into())),
    ];
    for u in 0..3 {
        assert_eq!(verdicts(&mut w, u, &conv, &burst), expected, "user {u}");
        assert_eq!(verdicts(&mut w, u, &conv, &[other]), vec![judged(Verdict::Allow)], "user {u}");
        let shown: Vec<String> = history(&mut w, u, &conv).into_iter().map(|(_, t)| t).collect();
        for t in ["one", "two", "four", "hello from two"] {
            assert!(shown.contains(&t.to_string()), "user {u} shows {t:?}: {shown:?}");
        }
        for t in ["buy SPAM now", "five", "six"] {
            assert!(!shown.contains(&t.to_string()), "user {u} hides {t:?}: {shown:?}");
        }
        let held = cairn_node::engine::policy_held(w.engine(u).db(), &conv.0).unwrap();
        assert_eq!(held.held.len(), 1, "user {u}: {held:?}");
        assert_eq!(held.held[0].id, burst[2].to_hex());
        assert_eq!(held.held[0].text, "buy SPAM now");
        assert!(!held.held[0].waiting);
        let denied: Vec<&str> = held.denied.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(denied.len(), 2, "user {u}: {held:?}");
        assert!(denied.contains(&burst[4].to_hex().as_str()) && denied.contains(&burst[5].to_hex().as_str()));
        // a denied message's text is not kept; a held one's is
        assert!(w.engine(u).db().plain(&burst[4]).unwrap().is_none(), "user {u} kept a denied text");
        assert!(w.engine(u).db().plain(&burst[2]).unwrap().is_some(), "user {u} lost a held text");
    }

    // user 3 comes back and reads the burst in reverse, each twice, with a restart halfway:
    // the later messages wait for the earlier ones (not shown, listed as waiting)
    let envs: Vec<(Id, Envelope)> =
        burst.iter().map(|id| (*id, w.published.iter().find(|e| e.id() == *id).unwrap().clone())).collect();
    w.open(3);
    let feed = |w: &mut World, ids: &[usize]| {
        let batch: Vec<Arrival> = ids
            .iter()
            .flat_map(|&i| {
                let a = Arrival { id: envs[i].0, envelope: envs[i].1.clone(), after_gap: false };
                [a.clone(), a]
            })
            .collect();
        let (mut seq, now) = (w.seq.clone(), w.now_ms);
        w.engine(3).receive(batch, &mut seq, now);
    };
    feed(&mut w, &[5, 4, 3]);
    assert_eq!(epoch, w.engine(3).mls().epoch(&conv).unwrap(), "no commit in between");
    let waiting = cairn_node::engine::policy_held(w.engine(3).db(), &conv.0).unwrap();
    assert_eq!(waiting.held.iter().filter(|h| h.waiting).count(), 3, "{waiting:?}");
    assert!(history(&mut w, 3, &conv).iter().all(|(id, _)| !burst.contains(id)));
    w.engine(3).make_durable().unwrap();
    w.crash(3);
    w.open(3);
    feed(&mut w, &[2, 1, 0]);
    assert_eq!(verdicts(&mut w, 3, &conv, &burst), expected, "user 3, reversed, duplicated, restarted");
    settle(&mut w, 3_000);
    assert_eq!(verdicts(&mut w, 3, &conv, &burst), expected, "user 3 after the mesh caught up");
    let shown3: Vec<Id> = history(&mut w, 3, &conv).into_iter().map(|(id, _)| id).collect();
    for i in [0usize, 1, 3] {
        assert!(shown3.contains(&burst[i]), "user 3 shows message {i}");
    }
    for i in [2usize, 4, 5] {
        assert!(!shown3.contains(&burst[i]), "user 3 hides message {i}");
    }

    // a restart keeps verdicts, history and the policy's state: the next message of user 1
    // is still over the limit, at every member, the restarted ones included
    let before: Vec<_> = (0..USERS).map(|u| history(&mut w, u, &conv)).collect();
    w.engine(2).make_durable().unwrap();
    w.crash(2);
    w.open(2);
    assert_eq!(history(&mut w, 2, &conv), before[2], "user 2's history across a restart");
    assert_eq!(verdicts(&mut w, 2, &conv, &burst), expected, "user 2's verdicts across a restart");
    for i in [4usize, 5] {
        assert!(w.engine(2).core().knows(&conv, &burst[i]), "user 2's chain holds denied message {i}");
    }
    assert_eq!(epoch, w.engine(1).mls().epoch(&conv).unwrap(), "no commit in between");
    let seventh = send(&mut w, 1, conv, "seven");
    settle(&mut w, 3_000);
    for u in 0..USERS {
        let v = verdicts(&mut w, u, &conv, &[seventh]);
        assert!(matches!(&v[0], Some((RecordState::Judged, Verdict::Deny(_)))), "user {u}: {v:?}");
    }

    // the user of one device may release a held message there (only there)
    let released = policy_store::release(w.engine(0).db(), &conv.0, &burst[2]).unwrap();
    assert!(released > 0);
    assert!(history(&mut w, 0, &conv).iter().any(|(id, _)| *id == burst[2]));
    assert!(!history(&mut w, 1, &conv).iter().any(|(id, _)| *id == burst[2]));
    assert!(policy_store::release(w.engine(0).db(), &conv.0, &burst[0]).is_err(), "an allowed one");
}

#[test]
fn the_echo_bot_is_answered_once() {
    const USERS: usize = 3;
    let mut w = World::new(5, USERS, Faults { loss: 0, dup: 200, delay_ms_max: 30 });
    let conv = group(&mut w, USERS);
    pin(&mut w, conv, echo_bot::pin(), &[0, 1, 2]);
    let asked = send(&mut w, 1, conv, "!echo hi there");
    settle(&mut w, 3_000);
    for _ in 0..3 {
        for u in 0..USERS {
            w.drain(u);
        }
        settle(&mut w, 1_000);
    }
    // the member device with the smallest id, the asker's excepted, answers
    let devices: Vec<[u8; 32]> = (0..USERS).map(|u| w.users[u].id.device().0).collect();
    let replier = (0..USERS).filter(|&u| u != 1).min_by_key(|&u| devices[u]).unwrap();
    for u in 0..USERS {
        let rows = w.engine(u).db().messages(&conv.0, 0, 10_000).unwrap();
        let replies: Vec<_> = rows.iter().filter(|r| r.message.body[1..] == *b"hi there").collect();
        assert_eq!(replies.len(), 1, "user {u} sees one reply");
        assert_eq!(replies[0].message.sender.device.0, devices[replier], "user {u}: from the replier");
        let v = verdicts(&mut w, u, &conv, &[asked]);
        assert_eq!(v, vec![judged(Verdict::Reply(b"hi there".to_vec()))], "user {u}");
        // the reply is itself judged (allowed: it is no command)
        assert_eq!(verdicts(&mut w, u, &conv, &[replies[0].id]), vec![judged(Verdict::Allow)], "user {u}");
    }
}

#[test]
fn a_member_that_applies_two_pins_at_once_judges_each_message_by_its_epochs_pin() {
    const USERS: usize = 3;
    let mut w = World::new(23, USERS, Faults { loss: 0, dup: 100, delay_ms_max: 30 });
    let conv = group(&mut w, USERS);
    // user 2 is away while the policy changes twice
    w.engine(2).make_durable().unwrap();
    w.crash(2);
    let admin = w.users[0].id.account().0;
    let filter = moderation::Config { admins: vec![admin], words: vec!["spam".into()], ..Default::default() };
    pin(&mut w, conv, filter.pin().unwrap(), &[0, 1]);
    let first = send(&mut w, 1, conv, "spam under the filter");
    settle(&mut w, 2_000);
    let open = moderation::Config { admins: vec![admin], ..Default::default() };
    pin(&mut w, conv, open.pin().unwrap(), &[0, 1]);
    let second = send(&mut w, 1, conv, "spam after the filter");
    settle(&mut w, 2_000);
    let expected = vec![judged(Verdict::Hold), judged(Verdict::Allow)];
    for u in 0..2 {
        assert_eq!(verdicts(&mut w, u, &conv, &[first, second]), expected, "user {u}");
    }
    // user 2 comes back: both commits are applied in one sync, then the messages arrive
    w.open(2);
    settle(&mut w, 4_000);
    assert_eq!(verdicts(&mut w, 2, &conv, &[first, second]), expected, "user 2");
}
