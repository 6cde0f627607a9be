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
