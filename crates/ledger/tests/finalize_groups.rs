#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Finalized blocks that waited for the finalizer are committed together (one durable chain
//! store transaction): the ledger ends where finalizing them one by one ends, whether it had
//! executed them before (as a validator that voted) or not (as one catching up), and a restart
//! replays the stored chain.

use std::sync::Arc;

use cairn_ledger::block::Block;
use cairn_ledger::chain_store::ChainStore;
use cairn_ledger::core::{Ledger, MempoolLimits, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::tx::{Tx, TxBody, TxId};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

const USERS: u8 = 8;

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 40; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// Four blocks proposed one on another by `leader` (none finalized), with the ids of their
/// transfers.
fn unfinalized_chain(g: &Genesis, leader: &Ledger) -> (Vec<Arc<Block>>, Vec<(TxId, u64)>) {
    let users: Vec<SigningKey> = (0..USERS).map(user).collect();
    let mut blocks: Vec<Arc<Block>> = Vec::new();
    let mut ids = Vec::new();
    for n in 0..4u64 {
        let txs: Vec<Vec<u8>> = users
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let to = id(&users[(i + 1) % users.len()]);
                Tx::sign(g.chain_id(), id(k), k, n, TxBody::Transfer { to, amount: 1 }).encode()
            })
            .collect();
        ids.extend(txs.iter().map(|t| (Tx::id_of(t), n + 1)));
        for r in leader.submit_batch(txs) {
            r.unwrap();
        }
        let (parent, height) = match blocks.last() {
            Some(b) => (b.id(), b.header.height),
            None => {
                let s = leader.status();
                (s.digest, s.height)
            }
        };
        let p = leader.propose(&parent, height).unwrap().expect("a proposal");
        assert_eq!(p.block.txs.len(), USERS as usize, "block {} takes nonce {n}", height + 1);
        blocks.push(Arc::new(p.block));
    }
    (blocks, ids)
}

#[test]
fn blocks_that_waited_are_committed_together_and_replay() {
    let accounts = (0..USERS).map(|i| (id(&user(i)), 1_000_000_000)).collect();
    let (g, _) = Genesis::local("finalize-groups", 4, 29980, accounts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let leader = Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&path).unwrap()).unwrap();
    let (blocks, ids) = unfinalized_chain(&g, &leader);

    // the one that executed them finalizes all four at once
    leader.finalize_many(blocks.clone());
    assert!(leader.faults().is_empty(), "{:?}", leader.faults());
    let end = leader.status();
    assert_eq!(end.height, 4);
    for (id, height) in &ids {
        assert!(
            matches!(leader.tx_status(id), TxStatus::Finalized { height: h, .. } if h == *height),
            "{:?}",
            leader.tx_status(id)
        );
    }
    assert_eq!(leader.mempool_len(), 0);

    // one that never saw them (catching up) gets the same state, delivered out of order too
    let late = Ledger::new(&g).unwrap();
    late.finalize_many(vec![blocks[2].clone(), blocks[0].clone(), blocks[3].clone(), blocks[1].clone()]);
    assert!(late.faults().is_empty(), "{:?}", late.faults());
    let s = late.status();
    assert_eq!((s.height, s.digest, s.state_root), (end.height, end.digest, end.state_root));

    // the same as one by one
    let single = Ledger::new(&g).unwrap();
    for b in &blocks {
        single.finalize(b.clone());
    }
    assert_eq!(single.status().state_root, end.state_root);

    // a restart replays the four blocks from the store
    drop(leader);
    let reopened = Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&path).unwrap()).unwrap();
    let s = reopened.status();
    assert_eq!((s.height, s.digest, s.state_root), (end.height, end.digest, end.state_root));
    for (id, height) in &ids {
        assert!(matches!(reopened.tx_status(id), TxStatus::Finalized { height: h, .. } if h == *height));
    }
}
