//! Unit tests of anti-entropy by ids (`by_ids.rs`): what is fetched, where the persisted
//! cursor stands, and the fall-back to whole pages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Id, Limits, Topic};

use super::{Input, Output, Sync, SyncConfig};

fn envelope(topic: Topic, i: u64) -> Envelope {
    let body = pad(format!("m{i}").as_bytes(), &Limits::default()).unwrap();
    Envelope::new(topic, i, 3600, vec![], body)
}

/// Ids asked of each store node, in order.
fn asked(outs: &[Output<u8>]) -> Vec<(u8, Vec<Id>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::IdsRequest { to, ids } => Some((*to, ids.clone())),
            _ => None,
        })
        .collect()
}

/// The last cursor persisted for `store`.
fn cursor_of(outs: &[Output<u8>], store: u8) -> Option<u64> {
    outs.iter().rev().find_map(|o| match o {
        Output::Cursor { store: s, cursor, .. } if *s == store => Some(*cursor),
        _ => None,
    })
}

fn delivered(outs: &[Output<u8>]) -> Vec<Id> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Deliver { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

fn page_requests(outs: &[Output<u8>]) -> Vec<(u8, u64)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::PageRequest { to, from, .. } => Some((*to, *from)),
            _ => None,
        })
        .collect()
}

fn following(cfg: SyncConfig, t: Topic, stores: Vec<u8>) -> Sync<u8> {
    let mut s = Sync::new(cfg, [], []);
    s.handle(Input::Sync { topic: t, stores }, 0);
    s
}

#[test]
fn a_page_of_ids_fetches_only_the_envelopes_not_held() {
    let t = Topic([1; 32]);
    let mut s = following(SyncConfig::default(), t, vec![0, 1]);
    assert!(s.page_ids_limit(&t, &0).is_some(), "by ids is the default");
    let es: Vec<Envelope> = (0..4).map(|i| envelope(t, i)).collect();
    for e in &es[..2] {
        s.handle(Input::Gossip { envelope: e.clone() }, 10);
    }
    let entries = es.iter().enumerate().map(|(i, e)| (i as u64, e.id())).collect();
    let outs = s.handle(Input::PageIds { topic: t, from: 0, entries, next: None }, 20);
    assert_eq!(asked(&outs), vec![(0, vec![es[2].id(), es[3].id()])], "only the two not held, of the lister");
    assert_eq!(cursor_of(&outs, 0), Some(2), "held at the first id not got");
    let outs = s.handle(Input::Envelopes { from: 0, envelopes: vec![es[3].clone()] }, 30);
    assert_eq!(delivered(&outs), vec![es[3].id()]);
    assert_eq!(cursor_of(&outs, 0), Some(2), "still held at seq 2");
    let outs = s.handle(Input::Envelopes { from: 0, envelopes: vec![es[2].clone()] }, 40);
    assert_eq!(delivered(&outs), vec![es[2].id()]);
    assert_eq!(cursor_of(&outs, 0), Some(4), "everything listed is held: the cursor moves on");
    assert_eq!(s.fetching_len(), 0);
    // A page listing only held ids fetches nothing.
    let entries = es.iter().enumerate().map(|(i, e)| (i as u64 + 10, e.id())).collect();
    let outs = s.handle(Input::PageIds { topic: t, from: 1, entries, next: None }, 50);
    assert!(asked(&outs).is_empty(), "nothing fetched when everything is held: {outs:?}");
    assert_eq!(cursor_of(&outs, 1), Some(14));
}

#[test]
fn a_store_that_lists_ids_and_withholds_them_is_paged_whole_envelopes_from_the_first() {
    let t = Topic([2; 32]);
    let cfg = SyncConfig { fetch_retry_ms: 100, fetch_attempts_max: 3, ..SyncConfig::default() };
    let mut s = following(cfg, t, vec![0, 1]);
    let es: Vec<Envelope> = (0..3).map(|i| envelope(t, i)).collect();
    let entries = vec![(5, es[0].id()), (6, es[1].id())];
    let outs = s.handle(Input::PageIds { topic: t, from: 0, entries, next: Some(7) }, 0);
    assert_eq!(page_requests(&outs), vec![(0, 7)], "the next page is asked at once");
    let outs = s.handle(Input::PageIds { topic: t, from: 0, entries: vec![(7, es[2].id())], next: None }, 0);
    assert_eq!(cursor_of(&outs, 0), Some(5));
    // Store 0 serves only the first; the others never come.
    let outs = s.handle(Input::Envelopes { from: 0, envelopes: vec![es[0].clone()] }, 10);
    assert_eq!(cursor_of(&outs, 0), Some(6), "held at the first id withheld");
    // Asked again at each retry, of the topic's store nodes in turn, up to the bound.
    let outs = s.handle(Input::Tick, 99);
    assert!(asked(&outs).is_empty(), "not before fetch_retry_ms");
    for (now, store) in [(100u64, 1u8), (200, 0)] {
        let outs = s.handle(Input::Tick, now);
        let mut want = vec![es[1].id(), es[2].id()];
        want.sort_unstable_by_key(|id| id.0);
        assert_eq!(asked(&outs), vec![(store, want)], "retry at {now}");
        assert!(page_requests(&outs).is_empty());
    }
    let outs = s.handle(Input::Tick, 300);
    assert_eq!(page_requests(&outs), vec![(0, 6)], "whole pages from the first id withheld");
    assert!(s.page_ids_limit(&t, &0).is_none() && s.page_ids_limit(&t, &1).is_some());
    assert_eq!(s.fetching_len(), 0);
    // A late answer to a page of ids from before the switch cannot move the cursor on.
    let late = Input::PageIds { topic: t, from: 0, entries: vec![(9, Id([9; 32]))], next: Some(10) };
    assert!(s.handle(late, 310).is_empty());
    // The whole page brings them and moves the cursor.
    let entries = vec![(6, es[1].clone()), (7, es[2].clone())];
    let outs = s.handle(Input::Page { topic: t, from: 0, entries, next: None }, 320);
    assert_eq!(delivered(&outs), vec![es[1].id(), es[2].id()]);
    assert_eq!(cursor_of(&outs, 0), Some(8));
    // After whole_pages_ms, the next resync asks for ids again.
    s.handle(Input::Sync { topic: t, stores: vec![0, 1] }, 300 + cfg.whole_pages_ms + 1);
    assert!(s.page_ids_limit(&t, &0).is_some());
}

#[test]
fn a_store_that_refuses_pages_of_ids_is_paged_whole_envelopes_at_once() {
    let t = Topic([3; 32]);
    let mut s = following(SyncConfig::default(), t, vec![0, 1]);
    let outs = s.handle(Input::PageIdsRefused { topic: t, from: 1 }, 50);
    assert_eq!(page_requests(&outs), vec![(1, 0)]);
    assert!(s.page_ids_limit(&t, &1).is_none() && s.page_ids_limit(&t, &0).is_some());
    assert!(
        s.handle(Input::PageIdsRefused { topic: t, from: 1 }, 60).is_empty(),
        "a late refusal: nothing more"
    );
    // With by-ids off, every page is of whole envelopes.
    let off = following(SyncConfig { resync_by_ids: false, ..SyncConfig::default() }, t, vec![0]);
    assert!(off.page_ids_limit(&t, &0).is_none());
}

#[test]
fn ids_being_fetched_are_bounded_and_the_cursor_stops_before_the_first_not_taken() {
    let t = Topic([4; 32]);
    let mut s = following(SyncConfig { fetch_ids_max: 2, ..SyncConfig::default() }, t, vec![0]);
    let es: Vec<Envelope> = (0..5).map(|i| envelope(t, i)).collect();
    let entries = es.iter().enumerate().map(|(i, e)| (i as u64 * 10, e.id())).collect();
    let outs = s.handle(Input::PageIds { topic: t, from: 0, entries, next: Some(50) }, 0);
    assert_eq!(asked(&outs), vec![(0, vec![es[0].id(), es[1].id()])]);
    assert_eq!(s.fetching_len(), 2);
    assert!(page_requests(&outs).is_empty(), "no next page while full");
    s.handle(Input::Envelopes { from: 0, envelopes: vec![es[0].clone(), es[1].clone()] }, 5);
    // The next resync lists from after the last id taken (seq 10), so seq 20 is listed again.
    let outs = s.handle(Input::Sync { topic: t, stores: vec![0] }, 10);
    assert_eq!(page_requests(&outs), vec![(0, 11)]);
}

#[test]
fn an_envelope_listed_under_another_topic_is_dropped_and_releases_the_cursor() {
    let (t, u) = (Topic([5; 32]), Topic([6; 32]));
    let mut s = following(SyncConfig::default(), t, vec![0]);
    let foreign = envelope(u, 1);
    let outs =
        s.handle(Input::PageIds { topic: t, from: 0, entries: vec![(3, foreign.id())], next: None }, 0);
    assert_eq!(cursor_of(&outs, 0), Some(3));
    let outs = s.handle(Input::Envelopes { from: 0, envelopes: vec![foreign] }, 1);
    assert!(delivered(&outs).is_empty(), "not delivered as mail of {t:?}");
    assert_eq!(cursor_of(&outs, 0), Some(4));
    assert_eq!(s.fetching_len(), 0);
}

#[test]
fn a_hostile_cursor_near_the_end_of_u64_does_not_overflow() {
    let t = Topic([7; 32]);
    let mut s = following(SyncConfig::default(), t, vec![0]);
    let e = envelope(t, 1);
    let outs =
        s.handle(Input::PageIds { topic: t, from: 0, entries: vec![(u64::MAX, e.id())], next: None }, 0);
    assert_eq!(cursor_of(&outs, 0), Some(u64::MAX));
    let outs =
        s.handle(Input::Page { topic: t, from: 0, entries: vec![(u64::MAX, e.clone())], next: None }, 1);
    assert_eq!(delivered(&outs), vec![e.id()]);
}
