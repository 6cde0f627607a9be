#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A conversation's policy pinned in the MLS group context: the pin changes only by a commit
//! (every member sees it at the same epoch), and the roles policy refuses a non-admin's
//! removal on every member alike: locally for an honest client, and as a skipped sequenced
//! commit for a modified one, after which the honest members still talk.

mod common;

use std::sync::Arc;

use cairn_contracts::shipped_policy::moderation;
use cairn_mls::policy_ext::PolicyGate;
use cairn_mls::{Change, Event, MemorySequencer};
use common::{Dev, NOW, group, say};

fn roles(admin: &Dev) -> cairn_contracts::policy::PolicyPin {
    moderation::Config { admins: vec![admin.cert.account.0], ..Default::default() }.pin().unwrap()
}

#[test]
fn a_non_admin_removal_is_refused_by_every_member_identically() {
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob, mut carol, mut dave) = (Dev::new(), Dev::new(), Dev::new(), Dev::new());
    let id = group(&mut alice, &mut [&mut bob, &mut carol, &mut dave], &mut seq);
    for d in [&mut bob, &mut carol, &mut dave] {
        d.client.sync(&id, &seq, NOW).unwrap();
    }
    assert_eq!(alice.client.policy(&id).unwrap(), None);

    // alice pins the roles policy; every member holds the same pin at the same epoch
    let pin = roles(&alice);
    alice.client.commit(&id, Change::SetPolicy(Some(pin.clone())), &mut seq, NOW).unwrap().unwrap();
    let epoch = alice.client.epoch(&id).unwrap();
    for d in [&mut bob, &mut carol, &mut dave] {
        d.client.sync(&id, &seq, NOW).unwrap();
        assert_eq!(d.client.policy(&id).unwrap(), Some(pin.clone()));
        assert_eq!(d.client.epoch(&id).unwrap(), epoch);
    }

    // an honest non-admin client refuses to build the removal, naming the rule
    let err = bob.client.commit(&id, Change::RemoveAccount(carol.cert.account), &mut seq, NOW).unwrap_err();
    assert!(err.to_string().contains("only an admin may remove members"), "{err}");
    let err = bob.client.commit(&id, Change::SetPolicy(None), &mut seq, NOW).unwrap_err();
    assert!(err.to_string().contains("only an admin may change the policy"), "{err}");
    assert_eq!(bob.client.epoch(&id).unwrap(), epoch, "nothing was committed");

    // a modified client sequences the removal anyway: every honest member skips it alike
    bob.client.set_policy_gate(Arc::new(PolicyGate::disabled()));
    bob.client.commit(&id, Change::RemoveAccount(carol.cert.account), &mut seq, NOW).unwrap().unwrap();
    let mut reasons = Vec::new();
    for d in [&mut alice, &mut carol, &mut dave] {
        let events = d.client.sync(&id, &seq, NOW).unwrap();
        let skipped: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Skipped { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(skipped.len(), 1, "{events:?}");
        assert!(skipped[0].contains("only an admin may remove members"), "{}", skipped[0]);
        reasons.push(skipped[0].clone());
        assert_eq!(d.client.epoch(&id).unwrap(), epoch, "the refused commit was not merged");
        assert_eq!(d.client.members(&id).unwrap().len(), 4);
    }
    assert!(reasons.iter().all(|r| *r == reasons[0]));
    // the honest members are still one group
    say(&mut alice, &mut [&mut carol, &mut dave], &id, "still here");
    say(&mut carol, &mut [&mut alice, &mut dave], &id, "me too");

    // the admin's removal passes on every member
    alice.client.commit(&id, Change::RemoveAccount(dave.cert.account), &mut seq, NOW).unwrap().unwrap();
    carol.client.sync(&id, &seq, NOW).unwrap();
    let events = dave.client.sync(&id, &seq, NOW).unwrap();
    assert!(events.iter().any(|e| matches!(e, Event::RemovedSelf { .. })), "{events:?}");
    assert_eq!(carol.client.members(&id).unwrap().len(), 3);
    say(&mut alice, &mut [&mut carol], &id, "after the removal");
}

#[test]
fn pins_naming_unknown_code_are_refused() {
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (Dev::new(), Dev::new());
    let id = group(&mut alice, &mut [&mut bob], &mut seq);
    let unknown = cairn_contracts::policy::PolicyPin { code_hash: [5; 32], config: vec![] };
    let err = alice.client.commit(&id, Change::SetPolicy(Some(unknown)), &mut seq, NOW).unwrap_err();
    assert!(err.to_string().contains("not known"), "{err}");
    assert_eq!(alice.client.policy(&id).unwrap(), None);
}
