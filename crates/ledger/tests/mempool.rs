#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The validator mempool without consensus: proposals take each signer's transactions in nonce
//! order, and an accepted transaction always ends finalized or rejected with a reason.

use std::sync::Arc;

use cairn_ledger::core::{Ledger, NONCE_GAP_BLOCKS, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 40; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// Proposes on the finalized tip and finalizes the proposal (a one-validator chain).
fn step(l: &Ledger) -> usize {
    let s = l.status();
    let p = l.propose(&s.digest, s.height).unwrap().expect("a proposal on the tip");
    let n = p.block.txs.len();
    l.finalize(Arc::new(p.block));
    assert_eq!(l.status().height, s.height + 1);
    n
}

/// `n` funded users and a fresh ledger with them in its genesis, plus the chain id.
fn funded(n: u8, base_port: u16) -> (Vec<SigningKey>, Ledger, [u8; 32]) {
    let users: Vec<SigningKey> = (0..n).map(user).collect();
    let accounts = users.iter().map(|k| (id(k), 1_000)).collect();
    let (genesis, _) = Genesis::local("mempool", 4, base_port, accounts).unwrap();
    let l = Ledger::new(&genesis).unwrap();
    (users, l, genesis.chain_id())
}

#[test]
fn gapped_transactions_end_rejected_and_never_block_others() {
    let (users, l, chain) = funded(3, 29100);
    let transfer = |from: usize, nonce: u64| {
        let to = id(&users[(from + 1) % users.len()]);
        Tx::sign(chain, id(&users[from]), &users[from], nonce, TxBody::Transfer { to, amount: 1 }).encode()
    };

    // user 0: nonce 0 never arrives, so nonces 1..=3 can never be included
    let gapped: Vec<_> = (1..=3).map(|n| l.submit(transfer(0, n)).unwrap()).collect();
    // user 1: its nonces arrive in reverse order; they still go in one block, in nonce order
    let reversed: Vec<_> = (0..4).rev().map(|n| l.submit(transfer(1, n)).unwrap()).collect();
    // user 2: in order
    let ordered: Vec<_> = (0..2).map(|n| l.submit(transfer(2, n)).unwrap()).collect();
    for t in &gapped {
        assert_eq!(l.tx_status(t), TxStatus::Pending);
    }

    assert_eq!(step(&l), 6, "every includable transaction in the first block");
    for t in reversed.iter().chain(&ordered) {
        assert!(matches!(l.tx_status(t), TxStatus::Finalized { height: 1, .. }), "{:?}", l.tx_status(t));
    }

    // the gap is never filled: after a bounded number of blocks the waiting transactions are
    // rejected with the reason, instead of staying "pending" forever
    let mut blocks = 1;
    while gapped.iter().any(|t| l.tx_status(t) == TxStatus::Pending) {
        assert_eq!(step(&l), 0);
        blocks += 1;
        assert!(blocks < NONCE_GAP_BLOCKS + 20, "gapped transactions still pending after {blocks} blocks");
    }
    for (i, t) in gapped.iter().enumerate() {
        assert_eq!(
            l.tx_status(t),
            TxStatus::Rejected(TxError::NonceSkipped { expected: 0, got: i as u64 + 1 })
        );
    }
    assert_eq!(l.mempool_len(), 0);

    // once the gap is filled, a resubmission goes through
    l.submit(transfer(0, 0)).unwrap();
    let again = l.submit(transfer(0, 1)).unwrap();
    assert_eq!(step(&l), 2);
    assert!(matches!(l.tx_status(&again), TxStatus::Finalized { .. }));
}

#[test]
fn batch_submission_matches_single_submission() {
    let (users, l, chain) = funded(8, 29200);
    let mut txs: Vec<Vec<u8>> = users
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let to = id(&users[(i + 1) % users.len()]);
            Tx::sign(chain, id(k), k, 0, TxBody::Transfer { to, amount: 1 }).encode()
        })
        .collect();
    // one forged signature in the batch: only it is refused
    let last = txs[3].len() - 1;
    txs[3][last] ^= 1;
    let res = l.submit_batch(txs.clone());
    for (i, r) in res.iter().enumerate() {
        if i == 3 {
            assert_eq!(r, &Err(TxError::BadSignature));
        } else {
            assert_eq!(r, &Ok(Tx::id_of(&txs[i])));
        }
    }
    assert_eq!(l.mempool_len(), 7);
    assert_eq!(step(&l), 7);
}
