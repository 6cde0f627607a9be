#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Erasing a message in a 3-member group (engines driven in-process, envelopes handed over by
//! the test): the author's redaction makes every member delete the plaintext and queue the
//! erasure of the payload (local history, and store nodes with the lock's secret); a member
//! offline during the redaction applies it on return, one that reads the redaction before the
//! message applies it when the message arrives, and a redaction by a non-author changes nothing.

mod common;

use cairn_mls::MemorySequencer;
use cairn_node::engine::{Io, Redaction};
use cairn_node::error::NodeError;
use cairn_node::model::StreamEvent;
use std::sync::Arc;

use cairn_proto::{Id, Limits};
use common::{Setup, User, converse, deliver, key_package, published, texts, user, user_with};
use redb::Database;

/// The erasures `u`'s engine asked of its shell since the last call.
fn erasures(u: &mut User) -> Vec<(Id, Option<[u8; 32]>)> {
    let mut out = Vec::new();
    u.io.retain(|io| match io {
        Io::Erase { id, secret, .. } => {
            out.push((*id, *secret));
            false
        }
        _ => true,
    });
    out
}

fn erased_event(u: &User, id: &Id) -> bool {
    u.io.iter().any(|io| matches!(io, Io::Stream(StreamEvent::Erased { id: e, .. }) if *e == id.to_hex()))
}

#[test]
fn an_erased_message_is_gone_from_every_member_and_only_its_author_can_erase_it() {
    let now = 1_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob, mut carol) = (user(now), user(now), user(now));
    let kps = vec![key_package(&mut bob, now), key_package(&mut carol, now)];
    let (conv, _) = alice.engine.create(kps, &mut seq, now).unwrap();
    let welcomes = published(&mut alice);
    deliver(&mut bob, &welcomes, &mut seq, now);
    deliver(&mut carol, &welcomes, &mut seq, now);
    assert_eq!(bob.engine.conversations(), vec![conv]);
    assert_eq!(carol.engine.conversations(), vec![conv]);

    // Alice writes a canary and a second message; everyone reads both.
    alice.engine.send_text(conv, "canary 7f3e", &mut seq, now + 1).unwrap();
    alice.engine.send_text(conv, "kept", &mut seq, now + 2).unwrap();
    let msgs = published(&mut alice);
    let canary = msgs[0].clone();
    let canary_id = canary.id();
    assert_ne!(canary.header.erase_lock, [0; 32], "a sent envelope commits to an erase lock");
    deliver(&mut bob, &msgs, &mut seq, now + 3);
    deliver(&mut carol, &msgs, &mut seq, now + 3);
    assert_eq!(texts(&bob, &conv), ["canary 7f3e", "kept"]);

    // Bob may not erase Alice's message: refused before anything is sent.
    assert!(matches!(bob.engine.erase(conv, canary_id, now + 4), Err(NodeError::BadRequest(_))));
    assert!(published(&mut bob).is_empty());
    // A modified client sends the redaction anyway: every member refuses it.
    bob.engine
        .send_redaction_unchecked(conv, Redaction { target: canary_id, secret: None }, now + 5)
        .unwrap();
    let forged = published(&mut bob);
    deliver(&mut alice, &forged, &mut seq, now + 6);
    deliver(&mut carol, &forged, &mut seq, now + 6);
    assert_eq!(texts(&carol, &conv), ["canary 7f3e", "kept"], "a non-author's redaction changes nothing");
    assert!(erasures(&mut carol).is_empty());
    assert_eq!(texts(&alice, &conv), ["canary 7f3e", "kept"]);

    // Alice erases it: her own copy goes at once, with the lock's secret for the stores.
    let unknown = Id([9; 32]);
    assert!(matches!(alice.engine.erase(conv, unknown, now + 7), Err(NodeError::NotFound(_))));
    alice.engine.erase(conv, canary_id, now + 8).unwrap();
    let redaction = published(&mut alice);
    assert_eq!(redaction.len(), 1);
    assert_eq!(texts(&alice, &conv), ["kept"]);
    let asked = erasures(&mut alice);
    assert_eq!(asked.len(), 1);
    let secret = asked[0].1.expect("the sending device knows its lock's secret");
    assert!(canary.header.erase_lock_opens(&secret));
    assert!(erased_event(&alice, &canary_id));
    assert!(matches!(alice.engine.erase(conv, canary_id, now + 9), Err(NodeError::Conflict(_))));

    // Bob reads the redaction: plaintext gone, payload erasure queued with the same secret.
    deliver(&mut bob, &redaction, &mut seq, now + 10);
    assert_eq!(texts(&bob, &conv), ["kept"]);
    assert!(bob.engine.db().plain(&canary_id).unwrap().is_none());
    assert_eq!(erasures(&mut bob), vec![(canary_id, Some(secret))]);
    assert!(bob.engine.db().redaction(&canary_id).unwrap().unwrap().applied);

    // Carol was offline: more messages went by, and she applies it when she returns.
    alice.engine.send_text(conv, "after", &mut seq, now + 11).unwrap();
    let later = published(&mut alice);
    let mut backlog = redaction.clone();
    backlog.extend(later);
    deliver(&mut carol, &backlog, &mut seq, now + 20);
    assert_eq!(texts(&carol, &conv), ["kept", "after"]);
    assert_eq!(erasures(&mut carol), vec![(canary_id, Some(secret))]);

    // Each member's erasure log lists it once, for a follower that was away (a bridge); a
    // refused redaction left no entry.
    for u in [&alice, &bob, &carol] {
        assert_eq!(u.engine.db().erasures(&conv.0, 0, 10).unwrap(), vec![(1, canary_id)]);
        assert!(u.engine.db().erasures(&conv.0, 1, 10).unwrap().is_empty(), "nothing after its cursor");
    }
}

#[test]
fn a_redaction_read_before_its_message_is_applied_when_the_message_arrives() {
    let now = 2_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user(now));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    alice.engine.send_text(conv, "secret plan", &mut seq, now + 1).unwrap();
    let msg = published(&mut alice);
    let id = msg[0].id();
    alice.engine.erase(conv, id, now + 2).unwrap();
    let redaction = published(&mut alice);
    // The redaction overtakes the message (MLS opens either order within an epoch).
    deliver(&mut bob, &redaction, &mut seq, now + 3);
    assert!(bob.engine.db().redaction(&id).unwrap().is_some_and(|r| !r.applied), "waits for its target");
    deliver(&mut bob, &msg, &mut seq, now + 4);
    assert_eq!(bob.engine.db().count(&conv.0).unwrap(), 1, "the message was read");
    assert!(texts(&bob, &conv).is_empty(), "read, then erased at once");
    assert!(bob.engine.db().plain(&id).unwrap().is_none());
    assert_eq!(erasures(&mut bob).into_iter().map(|(i, _)| i).collect::<Vec<_>>(), vec![id]);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_forgotten_conversation_cannot_be_read_from_any_copy_of_the_database() {
    let now = 3_000_000;
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (user(now), user_with(now, Setup { keyring: true, ..Setup::default() }));
    let conv = converse(&mut alice, &mut bob, &mut seq, now);
    alice.engine.send_text(conv, "canary 51d0 at rest", &mut seq, now + 1).unwrap();
    let msg = published(&mut alice);
    let id = msg[0].id();
    deliver(&mut bob, &msg, &mut seq, now + 2);
    assert_eq!(texts(&bob, &conv), ["canary 51d0 at rest"]);
    bob.engine.make_durable().unwrap();
    let db_path = bob.dir().join("node.redb");
    // Sealed at rest: the plaintext never reaches the file in clear.
    let copy = std::fs::read(&db_path).unwrap();
    assert!(!contains(&copy, b"canary 51d0"), "plaintext found in node.redb");
    let copy_path = bob.dir().join("copy.redb");
    std::fs::write(&copy_path, &copy).unwrap();

    // Still a member: forgetting is refused.
    assert!(matches!(bob.engine.forget(conv, now + 3), Err(NodeError::Conflict(_))));
    // Removed by Alice, then forgotten.
    let bob_account = bob.engine.keys().account;
    alice.engine.remove(conv, bob_account, &mut seq, now + 4).unwrap();
    let _ = published(&mut alice);
    bob.engine.handshakes(&[conv.topic()], &mut seq, now + 5);
    let _ = published(&mut bob);
    assert!(!bob.engine.mls().is_active(&conv).unwrap(), "bob was removed");
    bob.engine.forget(conv, now + 6).unwrap();
    assert!(bob.engine.conversations().is_empty());
    assert!(bob.engine.db().messages(&conv.0, 0, 10).unwrap().is_empty());
    assert!(matches!(bob.engine.forget(conv, now + 7), Err(NodeError::UnknownConversation)));

    // The copy taken before: its sealed row is there, and no key opens it any more.
    let keyring =
        cairn_node::keyring::Keyring::open(&bob.dir().join("keyring"), &bob.engine.keys().device_key)
            .unwrap();
    let old = Arc::new(Database::open(&copy_path).unwrap());
    let old_db = cairn_node::db::NodeDb::with_keyring(old, Limits::default(), Arc::new(keyring)).unwrap();
    assert!(old_db.has_plain(&id).unwrap(), "the old copy still holds the sealed row");
    assert_eq!(old_db.plain(&id).unwrap(), None, "but it cannot be opened");
}
