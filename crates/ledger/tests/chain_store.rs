#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The chain store: a ledger reopened from its redb file serves the same blocks, handshake
//! lists, transaction outcomes, certificate and state root, and goes on from there; a store
//! of another chain is refused.

use std::sync::Arc;

use cairn_ledger::chain_store::{ChainStore, ChainStoreError};
use cairn_ledger::core::{Ledger, MempoolLimits, OpenError, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::state::Outcome;
use cairn_ledger::tx::{TopicTx, Tx, TxBody, TxError, TxId};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 60; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

fn genesis(name: &str) -> Genesis {
    let accounts = (0..3).map(|i| (id(&user(i)), 1_000_000_000)).collect();
    Genesis::local(name, 4, 29500, accounts).unwrap().0
}

/// Proposes on the tip and finalizes it (a one-validator chain); returns the block's tx count.
fn step(l: &Ledger) -> usize {
    let s = l.status();
    let p = l.propose(&s.digest, s.height).unwrap().expect("a proposal on the tip");
    let n = p.block.txs.len();
    l.finalize(Arc::new(p.block));
    assert_eq!(l.status().height, s.height + 1, "faults: {:?}", l.faults());
    n
}

/// Everything a client can read about the chain, for comparison across a restart.
#[derive(PartialEq, Debug)]
struct View {
    status: (u64, [u8; 32], [u8; 32]),
    blocks: Vec<Vec<u8>>,
    digests: Vec<[u8; 32]>,
    handshakes: Vec<Vec<Vec<u8>>>,
    outcomes: Vec<TxStatus>,
    tip_cert: Option<Vec<u8>>,
    nonce: u64,
}

fn view(l: &Ledger, topics: &[Topic], txs: &[TxId]) -> View {
    let s = l.status();
    View {
        status: (s.height, s.digest, s.state_root),
        blocks: (0..=s.height).map(|h| l.block(h).unwrap().encode_bytes()).collect(),
        digests: l.chain_digests(),
        handshakes: topics.iter().map(|t| l.handshakes(t, 0, 1000)).collect(),
        outcomes: txs.iter().map(|t| l.tx_status(t)).collect(),
        tip_cert: l.finalization(&s.digest),
        nonce: l.nonce(&id(&user(0)).0),
    }
}

#[test]
fn a_reopened_ledger_serves_the_same_chain_and_goes_on() {
    // 120 outcomes: all still in the store's recent rows when it is reopened
    reopened_ledger_serves_the_same_chain(None);
}

#[test]
fn outcomes_moved_into_the_id_index_and_those_still_recent_are_all_served_after_a_reopen() {
    // 4 outcomes a block: a drain every 2 blocks, each finished by the next commit's backlog
    reopened_ledger_serves_the_same_chain(Some(7));
}

#[test]
fn a_reopen_in_the_middle_of_a_drain_into_the_id_index_serves_every_outcome() {
    // a drain starts at block 10 and moves its 40 outcomes 3 a commit; the next starts at
    // block 24 and is 7 slices in when the store is closed at block 30
    reopened_ledger_serves_the_same_chain(Some(40));
}

fn open_store(path: &std::path::Path, recent_max: Option<usize>) -> ChainStore {
    let store = ChainStore::open(path).unwrap();
    match recent_max {
        Some(n) => store.with_recent_outcomes_max(n),
        None => store,
    }
}

fn reopened_ledger_serves_the_same_chain(recent_max: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let g = genesis("reopen");
    let chain = g.chain_id();
    let convs: Vec<[u8; 32]> = (0..3).map(|i| [i + 1; 32]).collect();
    let topics: Vec<Topic> = convs.iter().map(Topic::for_conversation).collect();
    let mut txs = Vec::new();
    let mut nonces = [0u64; 3];
    let mut seqs = [0u64; 3];
    let mut sign = |u: usize, body: TxBody| {
        let k = user(u as u8);
        let t = Tx::sign(chain, id(&k), &k, nonces[u], body).encode();
        nonces[u] += 1;
        t
    };

    let before = {
        let l = Ledger::open(&g, MempoolLimits::default(), open_store(&path, recent_max)).unwrap();
        for round in 0..30u64 {
            for (i, topic) in topics.iter().enumerate() {
                let payload = vec![round as u8, i as u8];
                assert_eq!(*topic, Topic::for_conversation(&convs[i]));
                let t = TopicTx::handshake_as_founder(&convs[i], &chain, seqs[i], payload).mined(&g.params);
                seqs[i] += 1;
                txs.push(l.submit(t).unwrap());
            }
            // a transfer, and a handshake built on a stale position (refused: never included)
            txs.push(l.submit(sign(0, TxBody::Transfer { to: id(&user(1)), amount: 5 })).unwrap());
            if round % 10 == 5 {
                let stale = TopicTx::handshake_as_founder(&convs[2], &chain, 0, vec![9]).mined(&g.params);
                assert!(matches!(l.submit(stale), Err(TxError::StaleSequence { after: 0, .. })));
            }
            step(&l);
        }
        let tip = l.status().digest;
        l.record_finalization(tip, b"certificate of the tip".to_vec());
        assert!(l.faults().is_empty(), "{:?}", l.faults());
        let v = view(&l, &topics, &txs);
        assert_eq!(v.handshakes[0].len(), 30);
        assert_eq!(v.handshakes[1][7], vec![7, 1]);
        assert!(v.outcomes.iter().all(|s| matches!(s, TxStatus::Finalized { .. })));
        v
        // the ledger and its store are dropped here: the file is closed
    };

    let l = Ledger::open(&g, MempoolLimits::default(), open_store(&path, recent_max)).unwrap();
    let after = view(&l, &topics, &txs);
    assert_eq!(after, before);
    assert!(matches!(l.tx_status(&txs[3]), TxStatus::Finalized { height: 1, outcome: Outcome::Applied }));

    // it goes on from the stored tip: nonces and handshake positions continue
    let t = TopicTx::handshake_as_founder(&convs[0], &chain, seqs[0], vec![42]).mined(&g.params);
    let next = l.submit(t).unwrap();
    step(&l);
    assert!(matches!(
        l.tx_status(&next),
        TxStatus::Finalized { height: 31, outcome: Outcome::Sequenced { seq: 30, .. } }
    ));
    assert_eq!(l.handshakes(&topics[0], 30, 10), vec![vec![42]]);
    // a finalized transaction submitted again is recognised as already final
    assert_eq!(
        l.submit(
            Tx::sign(chain, id(&user(0)), &user(0), 0, TxBody::Transfer { to: id(&user(1)), amount: 1 })
                .encode()
        )
        .unwrap_err(),
        TxError::NonceReplayed { expected: nonces[0], got: 0 }
    );
    assert!(l.faults().is_empty(), "{:?}", l.faults());
}

#[test]
fn a_store_of_another_chain_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    {
        let l = Ledger::open(&genesis("one"), MempoolLimits::default(), ChainStore::open(&path).unwrap())
            .unwrap();
        step(&l);
    }
    let err = Ledger::open(&genesis("two"), MempoolLimits::default(), ChainStore::open(&path).unwrap())
        .unwrap_err();
    assert!(matches!(err, OpenError::Store(ChainStoreError::Mismatch(_))), "{err}");
    assert!(err.to_string().contains("move the data directory away"), "{err}");
}

#[test]
fn a_damaged_stored_block_is_reported_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let g = genesis("damaged");
    {
        let l = Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&path).unwrap()).unwrap();
        step(&l);
        step(&l);
    }
    // overwrite block 1 with garbage through redb itself (a bit flip the checksums accepted)
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<'_, u64, &[u8]> = redb::TableDefinition::new("blocks");
            tx.open_table(def).unwrap().insert(1u64, [1u8, 2, 3].as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let err = Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&path).unwrap()).unwrap_err();
    assert!(matches!(err, OpenError::Store(ChainStoreError::Corrupt { .. })), "{err}");
}
