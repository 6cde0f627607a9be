#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Sends named by an idempotency key are sent once: a retry with the same key in the same
//! conversation (after a lost answer, after a restart, or twice in one batch) answers with the
//! message sent the first time; the other member reads it once.

mod common;

use cairn_mls::MemorySequencer;
use cairn_node::error::NodeError;
use cairn_node::idempotency::{IDEMPOTENCY_KEY_BYTES_MAX, IdempotencyKey};
use common::{User, converse, deliver, published, restart, texts, user};

fn key(k: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::parse(k).unwrap())
}

#[test]
fn a_keyed_send_retried_after_a_restart_or_in_the_same_batch_is_sent_once() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);

    let send = |u: &mut User, items: Vec<(&str, Option<IdempotencyKey>)>, at: u64| {
        let items = items.into_iter().map(|(t, k)| (conv, t.to_owned(), k)).collect();
        let mut s = MemorySequencer::new();
        u.engine.send_texts(items, &mut s, at).into_iter().map(Result::unwrap).collect::<Vec<_>>()
    };
    let first = send(&mut alice, vec![("hello", key("matrix-event-1"))], now + 1);
    let mut out = published(&mut alice);
    assert_eq!(out.len(), 1);

    // The answer was lost: the same key again sends nothing and names the same message.
    let again = send(&mut alice, vec![("hello", key("matrix-event-1"))], now + 2);
    assert_eq!(again[0].id, first[0].id);
    assert!(published(&mut alice).is_empty(), "nothing new published");

    // A crash after the commit: the key was recorded in the message's own transaction.
    let mut alice = restart(alice);
    let _ = published(&mut alice); // the outbox republished at start
    let after = send(&mut alice, vec![("hello", key("matrix-event-1"))], now + 3);
    assert_eq!(after[0].id, first[0].id, "still the same message after a restart");
    assert!(published(&mut alice).is_empty());

    // The same text under another key (or none) is another message; a key given twice in one
    // batch sends once.
    let batch = send(
        &mut alice,
        vec![("hello", key("matrix-event-2")), ("hello", None), ("twice", key("k3")), ("twice", key("k3"))],
        now + 4,
    );
    assert_ne!(batch[0].id, first[0].id);
    assert_ne!(batch[1].id, batch[0].id);
    assert_eq!(batch[2].id, batch[3].id, "one batch, one key: one message");
    out.extend(published(&mut alice));
    assert_eq!(out.len(), 4, "hello ×3 under three names, twice once");
    assert_eq!(texts(&alice, &conv), ["hello", "hello", "hello", "twice"]);

    deliver(&mut bob, &out, &mut seq, now + 5);
    assert_eq!(texts(&bob, &conv), ["hello", "hello", "hello", "twice"], "bob reads each once");
}

#[test]
fn idempotency_keys_are_checked() {
    assert!(IdempotencyKey::parse("").is_err());
    assert!(IdempotencyKey::parse("has space").is_err());
    assert!(IdempotencyKey::parse("tab\there").is_err());
    let long = "k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1);
    assert!(matches!(IdempotencyKey::parse(&long), Err(NodeError::BadRequest(_))));
    let longest = "k".repeat(IDEMPOTENCY_KEY_BYTES_MAX);
    assert_eq!(IdempotencyKey::parse(&longest).unwrap(), IdempotencyKey::parse(&longest).unwrap());
    assert_ne!(IdempotencyKey::parse("a").unwrap(), IdempotencyKey::parse("b").unwrap());
}

#[test]
fn a_send_makes_the_local_history_durable_first_only_when_a_lazy_commit_read_from_it() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    let send = |u: &mut User, text: &str, at: u64| {
        u.engine.send_text(conv, text, &mut MemorySequencer::new(), at).unwrap();
        published(u)
    };

    // Bob's message reaches alice's history without an fsync (as the mesh keeps what it
    // delivers) and her engine reads it in a lazy commit: her next send's durable commit also
    // makes that read durable, so the history it came from is made durable first.
    let one = send(&mut bob, "one", now + 1);
    alice.history.append_deferred(&one, &[]).unwrap();
    deliver(&mut alice, &one, &mut seq, now + 2);
    assert!(alice.history.has_deferred());
    send(&mut alice, "reply", now + 3);
    assert!(!alice.history.has_deferred(), "the history is durable before the read it fed");

    // Bob's next message is kept but not read yet: no commit of alice's used it, and her send
    // does not wait for an fsync of the history.
    let two = send(&mut bob, "two", now + 4);
    alice.history.append_deferred(&two, &[]).unwrap();
    send(&mut alice, "again", now + 5);
    assert!(alice.history.has_deferred(), "the send skipped an fsync nothing needed");
    deliver(&mut alice, &two, &mut seq, now + 6);
    assert_eq!(texts(&alice, &conv), ["one", "reply", "again", "two"]);
}
