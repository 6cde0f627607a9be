#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Block execution outside the core lock: proposals and verifications run on a snapshot of
//! the finalized state while other threads submit transactions, verify the same blocks and
//! finalize them. The chain they build must be the one a single thread replaying it gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_ledger::core::{Ledger, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::tx::{Tx, TxBody, TxId};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

const USERS: u8 = 24;
const PER_USER: u64 = 40;

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 90; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

#[test]
fn concurrent_proposals_verifications_and_finalization_build_the_replayed_chain() {
    let users: Vec<SigningKey> = (0..USERS).map(user).collect();
    let accounts = users.iter().map(|k| (id(k), 1_000_000_000)).collect();
    let (genesis, _) = Genesis::local("concurrent", 4, 29500, accounts).unwrap();
    let chain = genesis.chain_id();
    let leader = Ledger::new(&genesis).unwrap();
    let follower = Ledger::new(&genesis).unwrap();
    let txs: Vec<Vec<u8>> = (0..PER_USER)
        .flat_map(|n| {
            users.iter().enumerate().map(move |(i, k)| {
                let to = id(&user(((i + 1) % USERS as usize) as u8));
                (n, k.clone(), to)
            })
        })
        .map(|(n, k, to)| Tx::sign(chain, id(&k), &k, n, TxBody::Transfer { to, amount: 1 }).encode())
        .collect();
    let ids: Vec<TxId> = txs.iter().map(|t| Tx::id_of(t)).collect();
    let done = Arc::new(AtomicBool::new(false));

    // submitters: the transactions in small batches to both ledgers, while blocks execute
    let submit = {
        let (leader, follower, txs) = (leader.clone(), follower.clone(), txs.clone());
        std::thread::spawn(move || {
            for batch in txs.chunks(16) {
                for r in leader.submit_batch(batch.to_vec()) {
                    r.unwrap();
                }
                for r in follower.submit_batch(batch.to_vec()) {
                    r.unwrap();
                }
            }
        })
    };
    // readers: status, nonces and proofs under the lock all along
    let read = {
        let (leader, done, signer) = (leader.clone(), done.clone(), users[0].verifying_key().to_bytes());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let s = leader.status();
                assert!(leader.nonce(&signer) <= PER_USER);
                assert!(s.height < 10_000);
                reads += 1;
            }
            reads
        })
    };
    // the leader proposes a block on its tip and a child on that one (executed on the
    // unfinalized parent's layer); the follower verifies each of them on two threads at once
    // (two consensus tasks) while the parent is being finalized on a third
    let mut blocks = Vec::new();
    let start = Instant::now();
    while ids.iter().any(|i| !matches!(leader.tx_status(i), TxStatus::Finalized { .. })) {
        assert!(start.elapsed() < Duration::from_secs(120), "transactions did not all finalize");
        let s = leader.status();
        let Some(p) = leader.propose(&s.digest, s.height).unwrap() else { continue };
        let parent = Arc::new(p.block);
        let child = leader.propose(&parent.id(), parent.header.height).unwrap().map(|p| Arc::new(p.block));
        let verify = |b: &Arc<cairn_ledger::block::Block>| {
            let (l, b) = (follower.clone(), b.clone());
            std::thread::spawn(move || l.verify_block(&b).unwrap())
        };
        assert!(verify(&parent).join().unwrap(), "an honest block verified as invalid");
        let mut checks = vec![verify(&parent)];
        if let Some(c) = &child {
            checks.push(verify(c));
            checks.push(verify(c));
        }
        let f = {
            let (follower, block) = (follower.clone(), parent.clone());
            std::thread::spawn(move || follower.finalize(block))
        };
        leader.finalize(parent.clone());
        for c in checks {
            assert!(c.join().unwrap(), "an honest block verified as invalid");
        }
        f.join().unwrap();
        blocks.push(parent);
        if let Some(c) = child {
            leader.finalize(c.clone());
            follower.finalize(c.clone());
            blocks.push(c);
        }
    }
    done.store(true, Ordering::Relaxed);
    submit.join().unwrap();
    assert!(read.join().unwrap() > 0);
    assert!(leader.faults().is_empty() && follower.faults().is_empty(), "{:?}", follower.faults());
    let (l, f) = (leader.status(), follower.status());
    assert_eq!((l.height, l.digest, l.state_root), (f.height, f.digest, f.state_root));

    // a fresh ledger replaying the blocks one by one, on one thread, gets every root
    let replay = Ledger::new(&genesis).unwrap();
    for b in &blocks {
        assert!(replay.verify_block(b).unwrap(), "block {} does not replay", b.header.height);
        replay.finalize(b.clone());
    }
    assert_eq!(replay.status().state_root, l.state_root);
    assert!(replay.faults().is_empty());
    for k in &users {
        assert_eq!(replay.nonce(&k.verifying_key().to_bytes()), PER_USER);
    }
}
