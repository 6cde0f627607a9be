//! History verification: every kind of damage is named, concurrent branches are fine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use cairn_proto::history::{Anchor, PlainOpener, Problem, VerifyOptions, verify};
use cairn_proto::{Envelope, Id, Limits, Message};
use common::*;
use proptest::prelude::*;

fn full_check(entries: &[(Id, Envelope)], anchors: &[Anchor]) -> cairn_proto::Report {
    let mut opener = PlainOpener;
    verify(
        &topic(),
        entries,
        VerifyOptions { opener: Some(&mut opener), anchors, ..VerifyOptions::default() },
    )
}

/// Two senders branch concurrently from a root, then a third message merges both branches.
fn branching_history() -> Vec<Envelope> {
    let (a, b) = (sender(1), sender(2));
    let root = envelope(&a, 10, vec![], b"root");
    let left = envelope(&a, 20, vec![root.id()], b"left");
    let right = envelope(&b, 21, vec![root.id()], b"right");
    let merge = envelope(&b, 30, vec![left.id(), right.id()], b"merge");
    vec![root, left, right, merge]
}

#[test]
fn concurrent_branches_that_merge_verify() {
    let h = branching_history();
    let anchors = [Anchor { head: h[3].id(), count: 4 }];
    let r = full_check(&entries(&h), &anchors);
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(r.signatures_verified, 4);
    assert_eq!(r.heads, vec![h[3].id()]);
}

#[test]
fn changed_header_byte_is_an_id_mismatch() {
    let h = branching_history();
    let mut e = entries(&h);
    e[1].1.header.timestamp_ms += 1;
    let r = full_check(&e, &[]);
    assert!(matches!(r.problems[0], Problem::IdMismatch { index: 1, .. }), "{:?}", r.problems);
}

#[test]
fn changed_payload_byte_is_reported() {
    let h = branching_history();
    let mut e = entries(&h);
    if let Some(p) = e[2].1.payload.as_mut() {
        p[10] ^= 0x40;
    }
    let r = full_check(&e, &[]);
    assert_eq!(r.problems, vec![Problem::PayloadHashMismatch { index: 2, id: h[2].id() }]);
}

#[test]
fn missing_ancestor_is_a_gap() {
    let h = branching_history();
    let mut e = entries(&h);
    e.remove(1);
    let r = full_check(&e, &[]);
    assert_eq!(r.problems, vec![Problem::Gap { child: Some(h[3].id()), missing: h[1].id() }]);
}

#[test]
fn reordered_and_replayed_envelopes_are_reported() {
    let h = branching_history();
    let mut e = entries(&h);
    e.swap(0, 1);
    let r = full_check(&e, &[]);
    assert_eq!(r.problems, vec![Problem::Reordered { index: 0, id: h[1].id(), parent: h[0].id() }]);
    let mut e = entries(&h);
    e.push(e[1].clone());
    let r = full_check(&e, &[]);
    assert_eq!(r.problems, vec![Problem::Replayed { index: 4, id: h[1].id(), first_index: 1 }]);
}

#[test]
fn forged_and_mismatched_signers_are_reported() {
    let (a, mallory) = (sender(1), sender(9));
    let root = envelope(&a, 10, vec![], b"root");
    // Mallory signs with her own device key but presents Alice's certificate.
    let forged = Message::sign(&mallory.device, a.cert, topic(), 11, vec![root.id()], b"x".to_vec())
        .seal_plain(60, &Limits::default())
        .unwrap();
    // A valid message whose header claims other parents than the signed ones.
    let mut mismatched = envelope(&a, 12, vec![root.id()], b"y");
    mismatched.header.parents = vec![];
    let outsider = envelope(&mallory, 13, vec![root.id()], b"z");
    let e = entries(&[root, forged.clone(), mismatched.clone(), outsider.clone()]);
    let members: HashSet<_> = [cairn_proto::AccountId(a.cert.account.0)].into_iter().collect();
    let mut opener = PlainOpener;
    let r = verify(
        &topic(),
        &e,
        VerifyOptions { opener: Some(&mut opener), members: Some(&members), ..VerifyOptions::default() },
    );
    assert!(matches!(&r.problems[0], Problem::BadSignature { index: 1, .. }), "{:?}", r.problems);
    assert!(matches!(&r.problems[1], Problem::HeaderMismatch { index: 2, field: "parents", .. }));
    assert!(matches!(&r.problems[2], Problem::UnknownSigner { index: 3, .. }));
    assert_eq!(r.problems.len(), 3);
}

#[test]
fn erased_payload_still_verifies_as_structure() {
    let h = branching_history();
    let mut e = entries(&h);
    e[1].1.erase();
    let anchors = [Anchor { head: h[3].id(), count: 4 }];
    let r = full_check(&e, &anchors);
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(r.erased, vec![h[1].id()]);
    assert_eq!(r.signatures_verified, 3);
}

#[test]
fn anchors_catch_a_dropped_head_and_a_wrong_count() {
    let h = branching_history();
    let e = entries(&h[..3]);
    let r = full_check(&e, &[Anchor { head: h[3].id(), count: 4 }]);
    assert_eq!(r.problems, vec![Problem::Gap { child: None, missing: h[3].id() }]);
    let r = full_check(&entries(&h), &[Anchor { head: h[3].id(), count: 5 }]);
    assert!(matches!(r.problems[0], Problem::AnchorCountMismatch { found: 4, .. }));
}

/// A random DAG: step `i` is sent by one of three senders and names a random subset of the
/// envelopes before it (at most 3) as parents.
fn random_dag(choices: &[(u8, Vec<prop::sample::Index>)]) -> Vec<Envelope> {
    let senders = [sender(1), sender(2), sender(3)];
    let mut out: Vec<Envelope> = Vec::new();
    for (i, (s, picks)) in choices.iter().enumerate() {
        let mut parents: Vec<Id> = Vec::new();
        if !out.is_empty() {
            for p in picks {
                parents.push(out[p.index(out.len())].id());
            }
        }
        let body = format!("msg {i}");
        out.push(envelope(&senders[(*s % 3) as usize], 1000 + i as u64, parents, body.as_bytes()));
    }
    out
}

fn heads_anchors(h: &[Envelope]) -> Vec<Anchor> {
    let r = verify(&topic(), &entries(h), VerifyOptions::default());
    // Anchor every head with the size of its ancestry (taken from the intact history).
    r.heads
        .iter()
        .map(|head| {
            let probe = verify(
                &topic(),
                &entries(h),
                VerifyOptions { anchors: &[Anchor { head: *head, count: 0 }], ..VerifyOptions::default() },
            );
            let count = match probe.problems.as_slice() {
                [Problem::AnchorCountMismatch { found, .. }] => *found,
                other => panic!("unexpected {other:?}"),
            };
            Anchor { head: *head, count }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_with_concurrent_senders_verify(
        choices in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<prop::sample::Index>(), 0..3)), 1..24)
    ) {
        let h = random_dag(&choices);
        let anchors = heads_anchors(&h);
        let r = full_check(&entries(&h), &anchors);
        prop_assert!(r.is_intact(), "{:?}", r.problems);
        prop_assert_eq!(r.signatures_verified, h.len());
    }

    #[test]
    fn any_deletion_is_reported_as_a_gap(
        choices in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<prop::sample::Index>(), 0..3)), 2..24),
        victim in any::<prop::sample::Index>(),
    ) {
        let h = random_dag(&choices);
        let anchors = heads_anchors(&h);
        let k = victim.index(h.len());
        let gone = h[k].id();
        let mut e = entries(&h);
        e.remove(k);
        let r = full_check(&e, &anchors);
        let reported = r.problems.iter().any(|p| matches!(p, Problem::Gap { missing, .. } if *missing == gone));
        prop_assert!(reported, "deleting #{} not reported as a gap: {:?}", k, r.problems);
    }
}
