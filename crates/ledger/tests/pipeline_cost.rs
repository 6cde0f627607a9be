#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! CPU time per transaction of one validator's ledger core, stage by stage, without consensus,
//! the network or the RPC: admission (signature batch and mempool), proposing, verifying a
//! proposal received over the codec, and finalizing (state apply and durable chain-store
//! commit). Two ledgers on disk play the leader and one verifier; each block is 2,000
//! fee-paying transfers among 4,096 accounts, as `cairn ledger bench` offers them.
//!
//! The figures are the thread's CPU time (`/proc/thread-self/schedstat`), so they hold up far
//! better than the bench's latencies on a shared machine: an A/B of two builds is a few runs of
//! each. Ignored by default (about 20 s in release); run with
//! `cargo test --release -p cairn-ledger --test pipeline_cost -- --ignored --nocapture`.
//!
//! What it said at ba2ef1d (medians of 8, load 3.4-3.7): admission 19.3 µs/tx (about 14 of it
//! the signature batch), propose 19.7, codec + verify 15.1, finalize 14.2 per ledger: about
//! 50 µs of CPU per transaction per validator, so 4 validators at 10,000 tx/s need ~2 of this
//! machine's 2 cores before any per-block cost.
//!
//! At e3d4cb6 (medians of 6 runs alternating with 6cdb8cf, the tree before it; load 3.2-3.6):
//! admission 18.3 / 17.4 µs/tx (leader / verifier), propose 19.0, codec + verify 14.8, finalize
//! (both) 25.2, total 94.3 (6cdb8cf: 107.4). malloc and free were then a fifth of the ledger
//! core's CPU: the same binary with `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2`
//! (Debian `libjemalloc2`) measured 71.3 (6cdb8cf: 81.0), with mimalloc about the same. The
//! `cairn` binary now uses jemalloc, and so does this test (below), so that its figures are the
//! validators'.
//!
//! 70 rounds (140,000 transfers) so that finalizing includes the chain store's two moves of
//! recent outcomes into its id index. With them (3 runs each, load ~2): finalize (both) 13.5 /
//! 13.4 / 12.8 µs/tx against 23.4 / 25.1 / 19.4 when every block inserted its ids into the
//! index; total 83.9 / 83.9 / 77.8 against 93.1 / 100.1 / 83.0.

use std::sync::Arc;

use cairn_ledger::block::Block;
use cairn_ledger::chain_store::ChainStore;
use cairn_ledger::core::{Ledger, MempoolLimits};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::tx::{Tx, TxBody};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

/// The `cairn` binary's allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USERS: usize = 4096;
const BLOCK: usize = 2000;
const ROUNDS: usize = 70;
/// Transactions per submission, as the bench's clients send them (a batch every 20 ms).
const SUBMIT_BATCH: usize = 200;

/// CPU time this thread has run, in nanoseconds.
fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "a measurement (prints CPU per transaction by stage); run it in release"]
fn ledger_core_cpu_per_transaction_by_stage() {
    let keys: Vec<SigningKey> = (0..USERS)
        .map(|i| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKey::from_bytes(&s)
        })
        .collect();
    let ids: Vec<AccountId> = keys.iter().map(|k| AccountId(k.verifying_key().to_bytes())).collect();
    let accounts = ids.iter().map(|i| (*i, 1_000_000_000)).collect();
    let (g, _) = Genesis::local("pipeline-cost", 4, 29990, accounts).unwrap();
    let chain = g.chain_id();
    let dir = tempfile::tempdir().unwrap();
    let open = |n: &str| {
        Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&dir.path().join(n)).unwrap()).unwrap()
    };
    let (leader, verifier) = (open("leader.redb"), open("verifier.redb"));
    let mut nonces = vec![0u64; USERS];
    let mut spent = [0u64; 5];
    let mut next = 0usize;
    for _ in 0..ROUNDS {
        let txs: Vec<Vec<u8>> = (0..BLOCK)
            .map(|_| {
                let i = next % USERS;
                next += 1;
                let body = TxBody::Transfer { to: ids[(i + 1) % USERS], amount: 1 };
                let tx = Tx::sign(chain, ids[i], &keys[i], nonces[i], body);
                nonces[i] += 1;
                tx.encode()
            })
            .collect();
        let t0 = cpu_ns();
        for c in txs.chunks(SUBMIT_BATCH) {
            assert!(leader.submit_batch(c.to_vec()).iter().all(Result::is_ok));
        }
        let t1 = cpu_ns();
        for c in txs.chunks(SUBMIT_BATCH) {
            assert!(verifier.submit_batch(c.to_vec()).iter().all(Result::is_ok));
        }
        let t2 = cpu_ns();
        let tip = leader.status();
        let p = leader.propose(&tip.digest, tip.height).unwrap().expect("a proposal");
        assert_eq!(p.block.txs.len(), BLOCK);
        let t3 = cpu_ns();
        // as a peer receives it: encoded, then decoded and checked
        let bytes = commonware_codec::Encode::encode(&p.block);
        let received: Block = commonware_codec::DecodeExt::decode(bytes).unwrap();
        assert!(verifier.verify_block(&received).unwrap());
        let t4 = cpu_ns();
        leader.finalize(Arc::new(p.block));
        verifier.finalize(Arc::new(received));
        let t5 = cpu_ns();
        for (s, d) in spent.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]) {
            *s += d;
        }
    }
    assert!(leader.faults().is_empty() && verifier.faults().is_empty());
    let (l, v) = (leader.status(), verifier.status());
    assert_eq!((l.height, l.state_root), (ROUNDS as u64, v.state_root));
    let n = (ROUNDS * BLOCK) as f64;
    let stages = ["admit (leader)", "admit (verifier)", "propose", "decode + verify", "finalize (both)"];
    for (name, ns) in stages.iter().zip(spent) {
        println!("{name:<18} {:>7.2} us/tx", ns as f64 / n / 1000.0);
    }
    println!("{:<18} {:>7.2} us/tx", "total", spent.iter().sum::<u64>() as f64 / n / 1000.0);
}
