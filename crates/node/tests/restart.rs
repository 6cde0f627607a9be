#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A start reads each conversation's chain back from `node.redb` and, from the local history,
//! only what came after the replay cursor; a stop anywhere between the mesh's delivery, the
//! engine's read and the cursor's move loses no message and reads none twice.

mod common;

use cairn_mls::{ConversationId, MemorySequencer};
use cairn_node::engine::{Io, ReplayStats};
use cairn_node::model::StreamEvent;
use cairn_proto::Envelope;
use common::{User, converse, deliver_kept, keep_only, published, restart, texts, user};

fn send(u: &mut User, conv: ConversationId, from: usize, n: usize, now: u64) -> Vec<Envelope> {
    let mut seq = MemorySequencer::new();
    for i in from..from + n {
        u.engine.send_text(conv, &format!("m{i}"), &mut seq, now).unwrap();
    }
    published(u)
}

/// Messages shown to the API listeners since the last look.
fn shown(u: &mut User) -> usize {
    u.engine.take_io().iter().filter(|io| matches!(io, Io::Stream(StreamEvent::Message(_)))).count()
}

/// Restarts `u` and starts its engine; what the start read.
fn start_again(u: User, seq: &mut MemorySequencer, now: u64) -> (User, ReplayStats) {
    let mut u = restart(u);
    u.engine.start(seq, now).unwrap();
    let stats = u.engine.replay_stats();
    (u, stats)
}

#[test]
fn a_restart_reads_only_the_history_after_the_cursor() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);

    let read = send(&mut alice, conv, 0, 20, now + 1);
    deliver_kept(&mut bob, &read, &mut seq, now + 2);
    // Delivered to the history, then a stop before the engine read them.
    let unread = send(&mut alice, conv, 20, 5, now + 3);
    keep_only(&mut bob, &unread);
    // One more is read: the tick moves the cursor over the first 20, and stops at the unread.
    let last = send(&mut alice, conv, 25, 1, now + 4);
    deliver_kept(&mut bob, &last, &mut seq, now + 5);
    bob.engine.tick(&mut seq, now + 6);
    bob.engine.make_durable().unwrap();
    assert_eq!(texts(&bob, &conv).len(), 21);

    let (mut bob, stats) = start_again(bob, &mut seq, now + 7);
    assert_eq!(stats.entries_examined, 6, "the 5 unread and the one after them, not the 20 before");
    assert_eq!(stats.envelopes_read, 5, "only the unread envelopes are read from the history");
    assert_eq!(stats.chain_rows, 21, "the chain comes back from its rows");
    assert_eq!(texts(&bob, &conv).len(), 26, "each message once");
    assert_eq!(shown(&mut bob), 5, "the 5 read late are shown, nothing else again");

    // Everything read: the next start reads nothing from the history.
    bob.engine.tick(&mut seq, now + 8);
    bob.engine.make_durable().unwrap();
    let (mut bob, stats) = start_again(bob, &mut seq, now + 9);
    assert_eq!((stats.entries_examined, stats.envelopes_read, stats.chain_rows), (0, 0, 26));
    assert_eq!(texts(&bob, &conv).len(), 26);
    assert_eq!(shown(&mut bob), 0);

    // The chain read back is the one before the stop: bob's next message names alice's last.
    let mut s = MemorySequencer::new();
    bob.engine.send_text(conv, "reply", &mut s, now + 10).unwrap();
    let reply = published(&mut bob).pop().unwrap();
    assert_eq!(reply.header.parents, vec![last[0].id()]);
}

#[test]
fn a_stop_between_the_message_and_the_cursor_loses_and_doubles_nothing() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);

    // Read and committed (made durable by bob's own send's commit), but no durable flush
    // moved the cursor before the stop.
    let read = send(&mut alice, conv, 0, 10, now + 1);
    deliver_kept(&mut bob, &read, &mut seq, now + 2);
    let own = send(&mut bob, conv, 100, 1, now + 2);
    keep_only(&mut bob, &own);
    let (mut bob, stats) = start_again(bob, &mut seq, now + 3);
    assert_eq!(stats.entries_examined, 11, "replayed from the old cursor");
    assert_eq!(stats.envelopes_read, 0, "each has its chain row: settled, not read again");
    assert_eq!(texts(&bob, &conv).len(), 11, "nothing doubled");
    assert_eq!(shown(&mut bob), 0, "nothing shown twice");

    // The start moved the cursor; the rows it relied on were committed before it.
    bob.engine.make_durable().unwrap();
    let (mut bob, stats) = start_again(bob, &mut seq, now + 4);
    assert_eq!((stats.entries_examined, stats.envelopes_read), (0, 0));

    // Delivered but never read, then a durable flush: the cursor does not pass them.
    let unread = send(&mut alice, conv, 10, 3, now + 5);
    keep_only(&mut bob, &unread);
    bob.engine.make_durable().unwrap();
    let (bob, stats) = start_again(bob, &mut seq, now + 7);
    assert_eq!(stats.envelopes_read, 3, "read at the start: none lost");
    let mut want: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    want.push("m100".into());
    want.extend((10..13).map(|i| format!("m{i}")));
    assert_eq!(texts(&bob, &conv), want);
}

#[test]
fn the_outbox_goes_out_again_a_page_at_start_and_the_rest_a_page_per_tick() {
    use cairn_node::outbox_store::OUTBOX_PAGE_ENVELOPES;
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    // No store node acknowledged any of them: all stay in the outbox.
    let total = OUTBOX_PAGE_ENVELOPES + OUTBOX_PAGE_ENVELOPES / 2;
    let mut sent = Vec::new();
    for chunk in (0..total).collect::<Vec<_>>().chunks(cairn_node::engine::SEND_BATCH_MAX) {
        let items = chunk.iter().map(|i| (conv, format!("m{i}"), None)).collect();
        let mut s = MemorySequencer::new();
        alice.engine.send_texts(items, &mut s, now + 1).into_iter().for_each(|r| drop(r.unwrap()));
        sent.extend(published(&mut alice).iter().map(Envelope::id));
    }
    assert_eq!(sent.len(), total);

    let mut alice = restart(alice);
    alice.engine.start(&mut seq, now + 2).unwrap();
    let mut again: Vec<cairn_proto::Id> = published(&mut alice).iter().map(Envelope::id).collect();
    assert_eq!(again.len(), OUTBOX_PAGE_ENVELOPES, "one page at start");
    assert!(alice.engine.republishing());
    alice.engine.tick(&mut seq, now + 3);
    again.extend(published(&mut alice).iter().map(Envelope::id));
    assert!(!alice.engine.republishing(), "the last page went with the tick");
    // The Welcome of the conversation's creation is in the outbox too, written first.
    assert_eq!(again.len(), total + 1);
    assert_eq!(again[1..], sent[..], "every envelope once, in the order written (parents first)");
    alice.engine.tick(&mut seq, now + 4);
    assert!(published(&mut alice).is_empty(), "nothing twice");
}
