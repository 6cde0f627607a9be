//! Unit tests of the store.
use super::*;
use cairn_proto::envelope::pad;

fn env(topic: u8, n: u64) -> Envelope {
    Envelope::new(Topic([topic; 32]), n, 60, vec![], pad(&n.to_be_bytes(), &Limits::default()).unwrap())
}

#[test]
fn append_page_duplicate_erase_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let s = Store::open(&path, Limits::default()).unwrap();
        let batch: Vec<Envelope> = (0..25).map(|i| env(1, i)).chain([env(2, 0)]).collect();
        let out = s.append(&batch).unwrap();
        assert_eq!(out[24], Appended::Stored { seq: 24 });
        assert_eq!(out[25], Appended::Stored { seq: 0 });
        assert_eq!(s.append(&[env(1, 3)]).unwrap(), vec![Appended::Duplicate]);
        let p = s.page(&Topic([1; 32]), 0, 10).unwrap();
        assert_eq!(p.entries.len(), 10);
        assert_eq!(p.next, Some(10));
        let p = s.page(&Topic([1; 32]), 20, 10).unwrap();
        assert_eq!(p.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![20, 21, 22, 23, 24]);
        assert_eq!(p.next, None);
        assert!(s.erase_payload(&env(1, 5).id()).unwrap());
        assert!(s.page(&Topic([1; 32]), 0, 0).is_err());
        s.put_key("k", b"secret").unwrap();
    }
    let s = Store::open(&path, Limits::default()).unwrap();
    assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 25);
    let erased = s.get(&env(1, 5).id()).unwrap().unwrap();
    assert_eq!(erased.payload, None);
    assert_eq!(erased.id(), env(1, 5).id());
    assert_eq!(s.get_key("k").unwrap().as_deref(), Some(&b"secret"[..]));
    let c = s.check().unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!((c.envelopes, c.topics), (26, 2));
}

#[test]
fn deferred_commits_are_visible_at_once_and_durable_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.redb");
    {
        let s = Store::open(&path, Limits::default()).unwrap();
        assert!(!s.has_deferred());
        let keys = vec![("cursor/x".to_string(), 7u64.to_be_bytes().to_vec())];
        let out = s.append_deferred(&[env(1, 0), env(1, 1)], &keys).unwrap();
        assert_eq!(out, vec![Appended::Stored { seq: 0 }, Appended::Stored { seq: 1 }]);
        assert!(s.has_deferred());
        assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 2, "visible before any fsync");
        assert_eq!(s.append_deferred(&[env(1, 1)], &[]).unwrap(), vec![Appended::Duplicate]);
        s.sync().unwrap();
        assert!(!s.has_deferred());
        // A durable append also makes earlier deferred commits durable.
        s.append_deferred(&[env(2, 0)], &[]).unwrap();
        s.append(&[env(3, 0)]).unwrap();
        assert!(!s.has_deferred());
    }
    let s = Store::open(&path, Limits::default()).unwrap();
    assert_eq!(s.topic_len(&Topic([1; 32])).unwrap(), 2);
    assert_eq!(s.topic_len(&Topic([2; 32])).unwrap(), 1);
    assert_eq!(s.get_key("cursor/x").unwrap(), Some(7u64.to_be_bytes().to_vec()));
    assert!(s.check().unwrap().problems.is_empty());
}

#[test]
fn byte_quotas_refuse_new_mail_and_never_evict() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("q.redb"), Limits::default()).unwrap();
    let size = env(1, 0).encode().len() as u64;
    let r = Retention {
        ttl_secs_max: 3600,
        topic_bytes_max: 3 * size,
        source_bytes_max: 4 * size,
        total_bytes_max: 6 * size,
    };
    let (a, b) = ([0xa; 32], [0xb; 32]);
    let first: Vec<Envelope> = (0..4).map(|i| env(1, i)).collect();
    let rep = s.append_with(&first, &[a; 4], &r, 10).unwrap();
    assert_eq!(rep.results[3], Appended::Full(Quota::Topic));
    assert!(s.get(&env(1, 0).id()).unwrap().is_some(), "the oldest stays");
    // Source `a` has 3 envelopes; its 5th would pass its quota, on any topic.
    let more = [env(2, 0), env(3, 0)];
    let rep = s.append_with(&more, &[a, a], &r, 10).unwrap();
    assert_eq!(rep.results, vec![Appended::Stored { seq: 0 }, Appended::Full(Quota::Source)]);
    // Another source still gets in, up to the total.
    let rep = s.append_with(&[env(3, 0), env(4, 0), env(5, 0)], &[b; 3], &r, 10).unwrap();
    assert_eq!(rep.results[..2], [Appended::Stored { seq: 0 }, Appended::Stored { seq: 0 }]);
    assert_eq!(rep.results[2], Appended::Full(Quota::Total));
    let st = s.stats().unwrap();
    assert_eq!((st.envelopes, st.bytes, st.refused_full), (6, 6 * size, 3));
    // Expiry and erasure give the bytes back to the topic and the source.
    assert!(s.erase_payload(&env(1, 0).id()).unwrap());
    assert!(s.stats().unwrap().bytes < 6 * size);
    assert!(s.check().unwrap().problems.is_empty(), "{:?}", s.check().unwrap().problems);
    assert_eq!(s.expire(u64::MAX / 2).unwrap(), 6);
    assert_eq!(s.stats().unwrap().bytes, 0);
    let rep = s.append_with(&[env(1, 9)], &[a], &r, 10).unwrap();
    assert_eq!(rep.results, vec![Appended::Stored { seq: 3 }]);
    assert!(s.check().unwrap().problems.is_empty());
}

#[test]
fn ttl_expiry_deletes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("t.redb"), Limits::default()).unwrap();
    let r = Retention::default();
    // env(_, n) has timestamp n ms and a 60 s TTL.
    s.append_with(&[env(1, 0), env(1, 30_000)], &[], &r, 0).unwrap();
    assert_eq!(s.append_with(&[env(1, 1)], &[], &r, 70_000).unwrap().results, vec![Appended::Expired]);
    assert_eq!(s.expire(60_000).unwrap(), 1);
    assert_eq!(s.expire(60_000).unwrap(), 0);
    assert_eq!(s.stats().unwrap().expired, 1);
    assert!(s.get(&env(1, 30_000).id()).unwrap().is_some());
    assert!(s.check().unwrap().problems.is_empty());
}

#[test]
fn damaged_value_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("s.redb"), Limits::default()).unwrap();
    let e = env(1, 1);
    s.append(std::slice::from_ref(&e)).unwrap();
    // Overwrite the stored bytes with garbage behind the store's back.
    let tx = s.db.begin_write().unwrap();
    tx.open_table(ENVELOPES).unwrap().insert(e.id().0, &[1u8, 2, 3][..]).unwrap();
    tx.commit().unwrap();
    assert!(matches!(s.get(&e.id()), Err(StoreError::Corrupt { .. })));
    assert!(!s.check().unwrap().problems.is_empty());
}

#[test]
fn an_erased_payload_stays_erased_past_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("t.redb"), Limits::default()).unwrap();
    let r = Retention::default();
    let full = env(1, 0);
    let id = full.id();
    s.append_with(std::slice::from_ref(&full), &[], &r, 10).unwrap();
    assert!(s.erase_payload(&id).unwrap());
    assert!(!s.erase_payload(&Id([9; 32])).unwrap(), "unknown id");
    // Pushed again in full: a duplicate, and the payload does not come back.
    let rep = s.append_with(std::slice::from_ref(&full), &[], &r, 10).unwrap();
    assert_eq!(rep.results, vec![Appended::Duplicate]);
    assert_eq!(s.get(&id).unwrap().unwrap().payload, None);
    // The tombstone outlives the envelope's own expiry (60 s TTL) by the grace.
    assert_eq!(s.expire(60_000 + 1).unwrap(), 0);
    assert_eq!(s.get(&id).unwrap().unwrap().payload, None);
    assert_eq!(s.expire(60_000 + TOMBSTONE_GRACE_MS).unwrap(), 1);
    // After that the copy is expired on arrival and refused.
    let rep = s.append_with(&[full], &[], &r, 60_001).unwrap();
    assert_eq!(rep.results, vec![Appended::Expired]);
    assert!(s.check().unwrap().problems.is_empty());
}

#[test]
fn ids_pages_follow_the_topic_log_without_reading_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("i.redb"), Limits::default()).unwrap();
    let batch: Vec<Envelope> = (0..5).map(|i| env(1, i)).chain([env(2, 0)]).collect();
    s.append(&batch).unwrap();
    s.remove(&[env(1, 2).id()]).unwrap();
    let t = Topic([1; 32]);
    let (ids, next) = s.ids_page(&t, 0, 2).unwrap();
    assert_eq!(ids, vec![(0, env(1, 0).id()), (1, env(1, 1).id())]);
    assert_eq!(next, Some(3), "a removed envelope leaves a gap in the log");
    let (ids, next) = s.ids_page(&t, 3, 10).unwrap();
    assert_eq!(ids, vec![(3, env(1, 3).id()), (4, env(1, 4).id())]);
    assert_eq!(next, None);
    assert!(s.ids_page(&t, 0, 0).is_err() && s.ids_page(&t, 0, IDS_PAGE_MAX + 1).is_err());
}
