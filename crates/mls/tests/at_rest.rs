#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The MLS state is sealed at rest: no value of the `cairn_mls` table is readable without the
//! device key, and the state reopens (a restart) and keeps working.

mod common;

use cairn_mls::MemorySequencer;
use common::{Dev, group, say};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("cairn_mls");

#[test]
fn no_mls_state_value_is_stored_in_clear() {
    let mut seq = MemorySequencer::new();
    let (mut alice, mut bob) = (Dev::new(), Dev::new());
    let id = group(&mut alice, &mut [&mut bob], &mut seq);
    say(&mut alice, &mut [&mut bob], &id, "hello");
    let rtx = alice.db.begin_read().unwrap();
    let t = rtx.open_table(TABLE).unwrap();
    let mut values = 0;
    for row in t.iter().unwrap() {
        let (k, v) = row.unwrap();
        if k.value() == b"cairn.flushmarker" {
            continue; // the flush marker (a counter, no secret)
        }
        values += 1;
        let v = v.value();
        assert_eq!(v[0], 1, "sealed format version");
        assert!(serde_json::from_slice::<serde_json::Value>(v).is_err(), "a JSON value in clear");
        assert!(!v.windows(6).any(|w| w == b"secret"), "a field name in clear");
    }
    assert!(values > 10, "only {values} values: the group was not stored");
    drop(t);
    drop(rtx);
    // A restart opens the sealed state and the conversation goes on.
    let mut alice = alice.restart();
    say(&mut alice, &mut [&mut bob], &id, "after a restart");
}

/// `Client::open_unsealed_for_tests` (the node simulation's constructor) keeps the state in
/// clear and reopens it, and a node's `Client::open` refuses such a state: the two never mix,
/// so a node only ever reads a sealed state.
#[test]
fn a_state_kept_in_clear_for_tests_never_opens_as_a_sealed_one() {
    use std::sync::Arc;

    use cairn_mls::{Client, Config, DeviceSigner};

    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("clear.redb")).unwrap());
    let id = cairn_crypto::Identity::generate(common::NOW).unwrap();
    let signer = || DeviceSigner::new(id.device_key.clone(), id.cert).unwrap();
    let mut c = Client::open_unsealed_for_tests(db.clone(), signer(), Config::default()).unwrap();
    let conv = c.create(common::NOW).unwrap();
    drop(c);
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(TABLE).unwrap();
    let in_clear =
        t.iter().unwrap().filter(|row| row.as_ref().unwrap().1.value().first() != Some(&1)).count();
    assert!(in_clear > 5, "only {in_clear} values in clear");
    drop(t);
    drop(rtx);
    let c = Client::open_unsealed_for_tests(db.clone(), signer(), Config::default()).unwrap();
    assert_eq!(c.conversations(), vec![conv], "reopened in clear");
    drop(c);
    assert!(Client::open(db, signer(), Config::default()).is_err(), "a node refuses a state in clear");
}
