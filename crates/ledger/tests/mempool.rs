#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The validator mempool without consensus: proposals take each signer's transactions in nonce
//! order, and an accepted transaction always ends finalized or rejected with a reason.

use std::sync::Arc;

use cairn_ledger::core::{Ledger, MempoolLimits, NONCE_GAP_BLOCKS, NONCE_WINDOW, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::params::Params;
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
    let accounts = users.iter().map(|k| (id(k), 1_000_000_000)).collect();
    let (genesis, _) = Genesis::local("mempool", 4, base_port, accounts).unwrap();
    let l = Ledger::new(&genesis).unwrap();
    (users, l, genesis.chain_id())
}

/// A ledger without the faucet whose mempool has `limits`; users `0..funded` hold `funds`
/// each, and the users in `funded..n` are registered with nothing.
fn chain(n: u8, funded: u8, funds: u64, limits: MempoolLimits) -> (Vec<SigningKey>, Ledger, [u8; 32]) {
    let users: Vec<SigningKey> = (0..n).map(user).collect();
    let accounts =
        users.iter().enumerate().map(|(i, k)| (id(k), if i < funded as usize { funds } else { 0 })).collect();
    let (mut genesis, _) = Genesis::local("bounded", 4, 29300, accounts).unwrap();
    genesis.params = Params::default();
    let l = Ledger::with_limits(&genesis, limits).unwrap();
    (users, l, genesis.chain_id())
}

/// An account transaction carrying `payload` bytes from `k` at `nonce` (code that is no
/// WebAssembly: admitted and paid for, its effect fails). Handshakes are topic writes now,
/// paid by work, not by an account.
fn handshake(chain: [u8; 32], k: &SigningKey, nonce: u64, payload: usize) -> Vec<u8> {
    Tx::sign(chain, id(k), k, nonce, TxBody::Deploy { code: vec![1; payload] }).encode()
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

/// A finalized transaction submitted again (after its sender's nonce moved past it) is
/// answered with its id, alone or in a batch, while the same batch's other transactions get
/// their own answers: a forged copy is refused for its signature, a new one reusing a
/// finalized nonce is refused as replayed, one at the next nonce is admitted. (Admission looks
/// in the chain store only for transactions whose nonce is already used.)
#[test]
fn a_finalized_transaction_submitted_again_is_answered_with_its_id() {
    let (users, l, chain) = funded(4, 29210);
    let to = id(&users[3]);
    let first: Vec<Vec<u8>> = users[..3]
        .iter()
        .map(|k| Tx::sign(chain, id(k), k, 0, TxBody::Transfer { to, amount: 1 }).encode())
        .collect();
    assert!(l.submit_batch(first.clone()).iter().all(Result::is_ok));
    assert_eq!(step(&l), 3);
    let mut forged = first[1].clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let reused = Tx::sign(chain, id(&users[2]), &users[2], 0, TxBody::Transfer { to, amount: 2 }).encode();
    let next = Tx::sign(chain, id(&users[0]), &users[0], 1, TxBody::Transfer { to, amount: 1 }).encode();
    let res = l.submit_batch(vec![first[0].clone(), forged, reused, next.clone()]);
    assert_eq!(res[0], Ok(Tx::id_of(&first[0])));
    assert_eq!(res[1], Err(TxError::BadSignature));
    assert!(matches!(res[2], Err(TxError::NonceReplayed { expected: 1, got: 0 })), "{:?}", res[2]);
    assert_eq!(res[3], Ok(Tx::id_of(&next)));
    assert_eq!(l.submit(first[2].clone()), Ok(Tx::id_of(&first[2])));
    assert!(matches!(l.tx_status(&Tx::id_of(&first[2])), TxStatus::Finalized { height: 1, .. }));
    assert_eq!(l.mempool_len(), 1);
    assert_eq!(step(&l), 1);
}

/// The free-flood attack: unregistered keys and registered accounts with no balance flood a
/// validator; every one of their transactions is refused at admission with
/// [`TxError::FeeUnpaid`] and takes no room, while an honest funded account's transactions go
/// in and finalize, each paying exactly its fee.
#[test]
fn a_free_flood_is_refused_and_honest_transactions_finalize() {
    let (users, l, chain) = chain(8, 1, 1_000_000_000, MempoolLimits::default());
    let honest = &users[0];
    let fee_per_byte = l.params().fee_per_byte;
    let mut refused = 0;
    // 2,000 registrations by fresh keys (no faucet) and 2,000 writes by the 7 broke accounts
    for i in 0..2_000u32 {
        let mut seed = [0x77; 32];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        let k = SigningKey::from_bytes(&seed);
        let reg = Tx::sign(chain, id(&k), &k, 0, TxBody::RegisterAccount).encode();
        let broke = &users[1 + (i as usize % 7)];
        let spam = handshake(chain, broke, u64::from(i / 7) % NONCE_WINDOW, 1_000);
        for r in l.submit_batch(vec![reg, spam]) {
            assert!(matches!(r, Err(TxError::FeeUnpaid { have: 0, .. })), "{r:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 4_000);
    assert_eq!((l.mempool_len(), l.mempool_bytes()), (0, 0), "refused transactions take no room");
    // the honest account goes on
    let before = l.balance(&id(honest)).unwrap();
    let txs: Vec<Vec<u8>> = (0..10).map(|n| handshake(chain, honest, n, 200)).collect();
    let ids: Vec<_> = txs.iter().map(|t| l.submit(t.clone()).unwrap()).collect();
    assert_eq!(step(&l), 10);
    for t in &ids {
        assert!(matches!(l.tx_status(t), TxStatus::Finalized { height: 1, .. }));
    }
    let fees: u64 = txs.iter().map(|t| fee_per_byte * t.len() as u64).sum();
    assert_eq!(l.balance(&id(honest)).unwrap(), before - fees, "fees are exact");
}

/// An account cannot queue more transactions than its balance pays for: the fees of its waiting
/// transactions are reserved, and the one that would overdraw is refused.
#[test]
fn waiting_fees_are_reserved_against_the_balance() {
    let k = user(0);
    // the length, so the fee, of a transaction does not depend on the chain it is signed for
    let fee = Params::default().fee(handshake([0; 32], &k, 0, 100).len(), 0);
    // funds for exactly three fees
    let (mut g, _) = Genesis::local("reserve", 4, 29400, vec![(id(&k), 3 * fee)]).unwrap();
    g.params = Params::default();
    let l = Ledger::new(&g).unwrap();
    let (chain, k) = (g.chain_id(), &k);
    for n in 0..3 {
        l.submit(handshake(chain, k, n, 100)).unwrap();
    }
    assert_eq!(l.submit(handshake(chain, k, 3, 100)), Err(TxError::FeeUnpaid { have: 0, need: fee }));
    assert_eq!(step(&l), 3);
    assert_eq!(l.balance(&id(k)), Some(0));
}

/// Each signer may have at most [`NONCE_WINDOW`] nonces pending from its next one; beyond that
/// a typed refusal. Inside the window, out-of-order nonces wait and then finalize.
#[test]
fn the_nonce_window_is_bounded() {
    let (users, l, chain) = chain(1, 1, 1_000_000_000, MempoolLimits::default());
    let k = &users[0];
    let last = NONCE_WINDOW - 1;
    assert_eq!(
        l.submit(handshake(chain, k, NONCE_WINDOW, 10)),
        Err(TxError::NonceTooFar { expected: 0, got: NONCE_WINDOW, window: NONCE_WINDOW })
    );
    let far = l.submit(handshake(chain, k, u64::MAX, 10)).unwrap_err();
    assert!(matches!(far, TxError::NonceTooFar { .. }));
    assert!(far.to_string().contains("wait for the earlier transactions"));
    for n in (0..=last).rev() {
        l.submit(handshake(chain, k, n, 10)).unwrap();
    }
    assert_eq!(l.mempool_len(), NONCE_WINDOW as usize);
    assert_eq!(step(&l), NONCE_WINDOW as usize);
    // the window moves with the finalized nonce
    l.submit(handshake(chain, k, NONCE_WINDOW + last, 10)).unwrap();
    assert!(matches!(l.submit(handshake(chain, k, 2 * NONCE_WINDOW, 10)), Err(TxError::NonceTooFar { .. })));
}

/// The mempool is bounded in bytes per signer and in total; overflow refuses the newcomer with a
/// typed error and never evicts what was admitted, which still finalizes.
#[test]
fn mempool_byte_bounds_refuse_and_never_evict() {
    let big = 60_000;
    let limits = MempoolLimits {
        txs: 1_000,
        bytes: 5 * 61_000,
        signer_bytes: 2 * 61_000,
        nonce_window: 16,
        ..MempoolLimits::default()
    };
    let (users, l, chain) = chain(4, 4, 1_000_000_000, limits);
    let t = |u: usize, n: u64| handshake(chain, &users[u], n, big);
    // per signer: two fit, the third is refused
    let mut admitted = vec![l.submit(t(0, 0)).unwrap(), l.submit(t(0, 1)).unwrap()];
    let len = t(0, 0).len();
    assert_eq!(l.submit(t(0, 2)), Err(TxError::SignerMempoolFull { pending: 2 * len, max: 2 * 61_000 }));
    // in total: five fit across signers, the sixth is refused though its signer has room
    admitted.push(l.submit(t(1, 0)).unwrap());
    admitted.push(l.submit(t(1, 1)).unwrap());
    admitted.push(l.submit(t(2, 0)).unwrap());
    assert_eq!(l.mempool_bytes(), 5 * len);
    assert_eq!(l.submit(t(3, 0)), Err(TxError::MempoolBytesFull { max: 5 * 61_000 }));
    // nothing admitted was evicted, and all of it finalizes
    for id in &admitted {
        assert_eq!(l.tx_status(id), TxStatus::Pending);
    }
    let mut included = 0;
    for _ in 0..5 {
        included += step(&l);
        if included == admitted.len() {
            break;
        }
    }
    for id in &admitted {
        assert!(matches!(l.tx_status(id), TxStatus::Finalized { .. }), "{:?}", l.tx_status(id));
    }
    // room again: the refused transactions now go in
    assert_eq!((l.mempool_len(), l.mempool_bytes()), (0, 0));
    l.submit(t(3, 0)).unwrap();
    l.submit(t(0, 2)).unwrap();
}
