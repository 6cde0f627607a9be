#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use cairn_proto::Limits;
use cairn_proto::envelope::pad;

fn envelope(topic: Topic, i: u64, parents: Vec<Id>) -> Envelope {
    let body = pad(format!("m{i}").as_bytes(), &Limits::default()).unwrap();
    Envelope::new(topic, i, 3600, parents, body)
}

/// A store node that, like the real one, refuses a request naming more ids than the wire
/// allows; `None` stands for that refusal.
fn answer(store: &HashMap<Id, Envelope>, ids: &[Id]) -> Option<Vec<Envelope>> {
    (ids.len() <= IDS_PER_REQUEST_MAX).then(|| ids.iter().filter_map(|i| store.get(i).cloned()).collect())
}

#[test]
fn a_held_send_is_pushed_only_after_its_stem_deadline_or_a_release() {
    let t = Topic([3; 32]);
    let reqs = |o: &[Output<u8>]| o.iter().filter(|o| matches!(o, Output::StoreRequest { .. })).count();
    let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
    let (a, b) = (envelope(t, 1, vec![]), envelope(t, 2, vec![]));
    let stores = vec![0, 1, 2];
    let held = |e: &Envelope| Input::SendHeld {
        envelope: e.clone(),
        stores: stores.clone(),
        written: true,
        until_ms: 5_000,
    };
    assert_eq!(reqs(&s.handle(held(&a), 0)), 0, "held: no direct push");
    assert_eq!(reqs(&s.handle(held(&b), 0)), 0);
    let new_target = Input::Targets { topic: t, stores: vec![3] };
    assert_eq!(reqs(&s.handle(new_target, 10)), 0, "nor to a new target");
    // The stem brought two receipts for `a`: stored, never pushed by the sender.
    s.handle(Input::StoreAck { id: a.id(), from: 0 }, 20);
    let out = s.handle(Input::StoreAck { id: a.id(), from: 1 }, 20);
    assert!(out.contains(&Output::Status { id: a.id(), status: SendStatus::Stored { acks: 2 } }));
    assert_eq!(reqs(&s.handle(Input::Tick, 4_999)), 0);
    // `b`'s stem failed: a release pushes it to its four targets, once.
    assert_eq!(reqs(&s.handle(Input::Release { id: b.id() }, 100)), 4);
    assert_eq!(reqs(&s.handle(Input::Release { id: b.id() }, 100)), 0);
    // A third one nobody released is pushed at its deadline.
    let c = envelope(t, 3, vec![]);
    s.handle(held(&c), 0);
    let of_c = |o: &Output<u8>| matches!(o, Output::StoreRequest { envelope, .. } if envelope.id() == c.id());
    assert!(!s.handle(Input::Tick, 4_000).iter().any(of_c));
    let out = s.handle(Input::Tick, 5_000);
    assert!(out.iter().any(of_c));
    assert!(s.is_delivered(&c.id()), "written: counts as delivered like a Send");
}

#[test]
fn the_persisted_cursor_never_passes_an_envelope_held_for_its_parents() {
    // Found by the SIGKILL test: a page's child waiting for a missing parent lived only in
    // memory while the saved cursor moved past it; a restart then never paged it again.
    let mut s: Sync<u8> = Sync::new(SyncConfig::default(), [], []);
    let t = Topic([9; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let parent = envelope(t, 1, vec![]);
    let child = envelope(t, 2, vec![parent.id()]);
    let last = envelope(t, 3, vec![]);
    let entries = vec![(10, child.clone()), (11, last)];
    let out = s.handle(Input::Page { topic: t, from: 0, entries, next: None }, 0);
    let cursor = out.iter().find_map(|o| match o {
        Output::Cursor { cursor, .. } => Some(*cursor),
        _ => None,
    });
    assert_eq!(cursor, Some(10), "the saved cursor stops at the held child (seq 10)");
    // Once the parent arrives the child is delivered, and the next page moves the cursor on.
    let out = s.handle(Input::Envelopes { from: 0, envelopes: vec![parent] }, 0);
    assert!(out.iter().any(|o| matches!(o, Output::Deliver { id, .. } if *id == child.id())));
    let out = s.handle(Input::Page { topic: t, from: 0, entries: vec![], next: None }, 0);
    let cursor = out.iter().find_map(|o| match o {
        Output::Cursor { cursor, .. } => Some(*cursor),
        _ => None,
    });
    assert_eq!(cursor, Some(12));
}

#[test]
fn a_gap_of_more_than_one_request_of_ancestors_is_fetched_completely() {
    let cfg = SyncConfig { gap_retry_ms: 10, gap_fetch_attempts_max: 3, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([7; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    // 25 children with 16 distinct missing parents each: 400 ancestors, all at the store.
    let parents_max = 16;
    let roots: Vec<Envelope> = (0..25 * parents_max).map(|i| envelope(t, i, vec![])).collect();
    let store: HashMap<Id, Envelope> = roots.iter().map(|e| (e.id(), e.clone())).collect();
    let children: Vec<Envelope> = roots
        .chunks(parents_max as usize)
        .enumerate()
        .map(|(i, c)| envelope(t, 10_000 + i as u64, c.iter().map(Envelope::id).collect()))
        .collect();
    // The first asks are lost; the retry at the next tick names all 400 ids at once.
    for c in &children {
        s.handle(Input::Gossip { envelope: c.clone() }, 0);
    }
    assert!(store.len() > IDS_PER_REQUEST_MAX);
    let mut delivered: Vec<(Id, bool)> = Vec::new();
    let mut requests = 0;
    let mut outs = s.handle(Input::Tick, 20);
    while !outs.is_empty() {
        let mut next = Vec::new();
        for o in outs {
            match o {
                Output::IdsRequest { to, ids } => {
                    requests += 1;
                    assert!(ids.len() <= IDS_PER_REQUEST_MAX, "request of {} ids", ids.len());
                    let found = answer(&store, &ids).expect("the store refused a request");
                    next.extend(s.handle(Input::Envelopes { from: to, envelopes: found }, 21));
                }
                Output::Deliver { id, after_gap, .. } => delivered.push((id, after_gap)),
                _ => {}
            }
        }
        outs = next;
    }
    assert!(requests >= 2, "400 ids need at least two requests");
    assert_eq!(delivered.len(), roots.len() + children.len(), "every ancestor and child delivered");
    assert!(delivered.iter().all(|(_, gap)| !gap), "no gap declared");
    let unique: HashSet<Id> = delivered.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique.len(), delivered.len(), "exactly once");
    assert_eq!(s.waiting_len(), 0);
}

#[test]
fn the_delivered_filter_is_bounded() {
    let cfg = SyncConfig { delivered_ids_max: 8, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([8; 32]);
    let ids: Vec<Id> = (0..100).map(|i| envelope(t, i, vec![]).id()).collect();
    s.mark_delivered(ids.iter().copied());
    assert_eq!(s.delivered.len(), 8, "FIFO keeps the newest 8");
    assert!(s.is_delivered(&ids[99]) && !s.is_delivered(&ids[0]));
}

#[test]
fn missing_ancestors_beyond_the_bound_become_gaps_at_once() {
    let cfg = SyncConfig { missing_ids_max: 4, gap_retry_ms: 10, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([9; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let parents: Vec<Id> = (0..10).map(|i| envelope(t, i, vec![]).id()).collect();
    let child = envelope(t, 99, parents);
    let outs = s.handle(Input::Gossip { envelope: child.clone() }, 0);
    let asked: usize =
        outs.iter().map(|o| if let Output::IdsRequest { ids, .. } = o { ids.len() } else { 0 }).sum();
    assert_eq!(asked, 4, "only `missing_ids_max` ancestors are tracked");
    assert!(s.missing.len() <= 4);
}

#[test]
fn a_child_of_a_parent_given_up_on_earlier_is_flagged_after_a_gap() {
    let cfg = SyncConfig { gap_fetch_attempts_max: 1, gap_retry_ms: 10, ..SyncConfig::default() };
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([7; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let lost = envelope(t, 1, vec![]);
    let first = envelope(t, 2, vec![lost.id()]);
    let later = envelope(t, 3, vec![lost.id()]);
    let flag_of = |outs: &[Output<u8>], id: Id| {
        outs.iter().find_map(|o| match o {
            Output::Deliver { id: d, after_gap, .. } if *d == id => Some(*after_gap),
            _ => None,
        })
    };
    assert_eq!(flag_of(&s.handle(Input::Gossip { envelope: first.clone() }, 0), first.id()), None);
    let outs = s.handle(Input::Tick, 100);
    assert_eq!(flag_of(&outs, first.id()), Some(true), "released when its parent is given up");
    let outs = s.handle(Input::Gossip { envelope: later.clone() }, 200);
    assert_eq!(
        flag_of(&outs, later.id()),
        Some(true),
        "a later child of the same gap is delivered flagged too, not as if its parent were here"
    );
    let outs = s.handle(Input::Gossip { envelope: lost.clone() }, 300);
    assert_eq!(flag_of(&outs, lost.id()), Some(false), "the late parent itself is still delivered");
}

/// A parent held up in a stem whose hop died reaches the store nodes only after the
/// originator's wait (2 × (fail-safe + jitter), then its own push). A reader that declared the
/// parent lost before that delivered the child first and the parent after it: the history
/// out of hash-link order (seen in the SIGKILL test, `crates/cli/tests/crash.rs`, with 5
/// tries of 1 s against a 6 s stem wait). With the defaults, the child waits and both come in
/// order, unflagged.
#[test]
fn a_parent_released_late_by_a_stem_originator_is_not_declared_a_gap() {
    let stem = crate::stem::StemConfig::default();
    let cfg = SyncConfig::default();
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([9; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let parent = envelope(t, 1, vec![]);
    let child = envelope(t, 2, vec![parent.id()]);
    let mut delivered: Vec<(Id, bool)> = Vec::new();
    let take = |outs: Vec<Output<u8>>, d: &mut Vec<(Id, bool)>| {
        for o in outs {
            if let Output::Deliver { id, after_gap, .. } = o {
                d.push((id, after_gap));
            }
        }
    };
    take(s.handle(Input::Gossip { envelope: child.clone() }, 0), &mut delivered);
    // The store nodes hold the parent once the originator gave up on its stem and pushed it.
    let pushed_ms = 2 * (stem.failsafe_ms + stem.failsafe_jitter_ms) + cfg.retry_initial_ms;
    let mut now = 0;
    while now < pushed_ms {
        now += 250;
        take(s.handle(Input::Tick, now), &mut delivered);
    }
    assert!(delivered.is_empty(), "the child waits for its parent: {delivered:?}");
    take(s.handle(Input::Envelopes { from: 0, envelopes: vec![parent.clone()] }, now), &mut delivered);
    assert_eq!(delivered, vec![(parent.id(), false), (child.id(), false)], "in order, unflagged");
}

/// With a first-ask wait, a parent that comes soon after its child is never fetched; one that
/// does not come is asked for once the wait is over, and the gap tries follow as before.
#[test]
fn a_missing_parent_is_asked_for_only_after_the_first_ask_wait() {
    let cfg = SyncConfig { missing_first_ask_ms: 1_000, ..SyncConfig::default() };
    let asks = |o: &[Output<u8>]| o.iter().filter(|o| matches!(o, Output::IdsRequest { .. })).count();
    let mut s: Sync<u8> = Sync::new(cfg, [], []);
    let t = Topic([10; 32]);
    s.handle(Input::Sync { topic: t, stores: vec![0] }, 0);
    let (p1, p2) = (envelope(t, 1, vec![]), envelope(t, 3, vec![]));
    let (c1, c2) = (envelope(t, 2, vec![p1.id()]), envelope(t, 4, vec![p2.id()]));
    assert_eq!(asks(&s.handle(Input::Gossip { envelope: c1.clone() }, 0)), 0, "no ask at once");
    assert_eq!(asks(&s.handle(Input::Tick, 200)), 0);
    let out = s.handle(Input::Gossip { envelope: p1.clone() }, 300);
    let got: Vec<Id> = out
        .iter()
        .filter_map(|o| match o {
            Output::Deliver { id, after_gap: false, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![p1.id(), c1.id()], "the parent came: both delivered in order");
    assert_eq!(asks(&s.handle(Input::Tick, 1_200)), 0, "nothing left to ask");
    // A parent that does not come is asked for once the wait is over.
    assert_eq!(asks(&s.handle(Input::Gossip { envelope: c2 }, 2_000)), 0);
    assert_eq!(asks(&s.handle(Input::Tick, 2_800)), 0);
    assert_eq!(asks(&s.handle(Input::Tick, 3_000)), 1, "asked at the end of the wait");
    assert_eq!(asks(&s.handle(Input::Tick, 3_200)), 0, "then every gap_retry_ms");
    assert_eq!(asks(&s.handle(Input::Tick, 4_000)), 1);
}
