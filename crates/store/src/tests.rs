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

/// Writes a version 1 file as the version 1 build did: `(topic, n, source)` envelopes.
fn write_v1(path: &Path, items: &[(u8, u64, Option<Source>)]) -> Vec<Envelope> {
    use migrate::v1;
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    let mut out = Vec::new();
    {
        let mut envs = tx.open_table(ENVELOPES).unwrap();
        let mut log = tx.open_table(TOPIC_LOG).unwrap();
        let mut next = tx.open_table(v1::TOPIC_NEXT).unwrap();
        let mut meta = tx.open_table(v1::ENVELOPE_META).unwrap();
        let mut arrival = tx.open_table(v1::ARRIVAL_LOG).unwrap();
        let mut expiry = tx.open_table(EXPIRY).unwrap();
        let mut count = tx.open_table(v1::TOPIC_COUNT).unwrap();
        let mut counters = tx.open_table(COUNTERS).unwrap();
        let mut topic_bytes = tx.open_table(v1::TOPIC_BYTES).unwrap();
        let mut source_bytes = tx.open_table(SOURCE_BYTES).unwrap();
        let mut source_of = tx.open_table(v1::SOURCE_OF).unwrap();
        let mut total = 0;
        for (i, (topic, n, source)) in items.iter().enumerate() {
            let e = env(*topic, *n);
            let (id, t, bytes) = (e.id().0, [*topic; 32], e.encode());
            let len = bytes.len() as u64;
            let seq = next.get(t).unwrap().map(|v| v.value()).unwrap_or(0);
            let expires = e.header.timestamp_ms + 60_000;
            envs.insert(id, bytes.as_slice()).unwrap();
            log.insert((t, seq), id).unwrap();
            next.insert(t, seq + 1).unwrap();
            meta.insert(id, (t, seq, i as u64, expires)).unwrap();
            arrival.insert(i as u64, id).unwrap();
            expiry.insert((expires, id), ()).unwrap();
            let c = count.get(t).unwrap().map(|v| v.value()).unwrap_or(0);
            count.insert(t, c + 1).unwrap();
            let b = topic_bytes.get(t).unwrap().map(|v| v.value()).unwrap_or(0);
            topic_bytes.insert(t, b + len).unwrap();
            if let Some(s) = source {
                let b = source_bytes.get(*s).unwrap().map(|v| v.value()).unwrap_or(0);
                source_bytes.insert(*s, b + len).unwrap();
                source_of.insert(id, *s).unwrap();
            }
            total += len;
            out.push(e);
        }
        counters.insert("bytes", total).unwrap();
        counters.insert("next_arrival", items.len() as u64).unwrap();
        counters.insert("expired", 3).unwrap();
        tx.open_table(KEYS).unwrap().insert("k", &b"kept"[..]).unwrap();
        tx.open_table(META).unwrap().insert("schema_version", 1).unwrap();
    }
    tx.commit().unwrap();
    out
}

#[test]
fn a_version_1_file_is_migrated_on_open_and_keeps_cursors_counts_quotas_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    let (a, b) = ([0xaa; 32], [0xbb; 32]);
    let envs = write_v1(&path, &[(1, 1, Some(a)), (1, 2, Some(b)), (2, 3, None), (1, 4, Some(a))]);
    let s = Store::open(&path, Limits::default()).unwrap();
    let c = s.check().unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!((c.envelopes, c.topics), (4, 2));
    assert_eq!((s.topic_len(&Topic([1; 32])).unwrap(), s.topic_count(&Topic([1; 32])).unwrap()), (3, 3));
    assert_eq!(s.get_key("k").unwrap().as_deref(), Some(&b"kept"[..]));
    let len = envs[0].encode().len() as u64;
    let stats = s.stats().unwrap();
    assert_eq!((stats.envelopes, stats.bytes, stats.expired), (4, 4 * len, 3));
    // Source a offered two envelopes: a quota of three holds one more of a, and none after.
    let quota = Retention { source_bytes_max: 3 * len, ..Retention::unbounded() };
    let more = [env(3, 5), env(3, 6)];
    let r = s.append_with(&more, &[a, a], &quota, 0).unwrap();
    assert_eq!(r.results, vec![Appended::Stored { seq: 0 }, Appended::Full(Quota::Source)]);
    // The topic's cursor goes on from where version 1 left it.
    assert_eq!(s.append(&[env(1, 9)]).unwrap(), vec![Appended::Stored { seq: 3 }]);
    // Deleting a migrated envelope frees its source's bytes: a's quota holds one again.
    assert_eq!(s.remove(&[envs[0].id()]).unwrap(), 1);
    assert_eq!(
        s.append_with(&[env(3, 7)], &[a], &quota, 0).unwrap().results,
        vec![Appended::Stored { seq: 1 }]
    );
    let c = s.check().unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    drop(s);
    // The old tables are gone, and the file now says version 2.
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(tx.open_table(migrate::v1::SOURCE_OF).is_err());
    assert!(tx.open_table(migrate::v1::ARRIVAL_LOG).is_err());
    assert_eq!(tx.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), 2);
}

#[test]
fn a_file_of_a_later_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("schema_version", 3).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(Store::open(&path, Limits::default()), Err(StoreError::Schema { found: 3 })));
}
