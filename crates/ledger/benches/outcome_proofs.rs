//! Proven transaction outcomes (issue 12 §3): what the outcome tree costs a validator per block
//! (the root over a full block's receipts, computed by the proposer and by every verifier),
//! what serving one proof costs (the block's outcomes read back from the chain store and the
//! tree rebuilt), and what checking it costs a client (certificate, then path).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::light::LightClient;
use cairn_ledger::outcome_proof;
use cairn_ledger::outcome_tree::receipts_root;
use cairn_ledger::state::{Outcome, Receipt};
use cairn_ledger::tx::{Tx, TxBody, TxError, TxId};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};
use criterion::{Criterion, criterion_group, criterion_main};

const SIGNERS: u8 = 64;
const PER_SIGNER: u64 = 64;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_add(100); 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// A ledger whose block 1 (certified) holds 64 × 64 = 4096 transfers.
fn big_block() -> (Genesis, Ledger, Vec<TxId>) {
    let accounts = (0..SIGNERS).map(|i| (id(&key(i)), 1_000_000_000)).collect();
    let (g, keys) = Genesis::local("outcome-bench", 4, 29900, accounts).unwrap();
    let ledger = Ledger::new(&g).unwrap();
    let chain = g.chain_id();
    let to = id(&SigningKey::from_bytes(&[1; 32]));
    let mut txs = Vec::new();
    for s in 0..SIGNERS {
        let k = key(s);
        for n in 0..PER_SIGNER {
            txs.push(Tx::sign(chain, id(&k), &k, n, TxBody::Transfer { to, amount: 1 }).encode());
        }
    }
    let ids: Vec<TxId> = ledger.submit_batch(txs).into_iter().map(Result::unwrap).collect();
    let s = ledger.status();
    let p = ledger.propose(&s.digest, s.height).unwrap().unwrap();
    assert_eq!(p.block.txs.len(), ids.len());
    let header = p.block.header;
    ledger.finalize(Arc::new(p.block));
    ledger.record_finalization(header.digest(), support::finalize(&g, &keys, &[0, 1, 2], &header));
    (g, ledger, ids)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_outcome_proofs");
    g.sample_size(20);
    let receipts: Vec<Receipt> = (0..8192u32)
        .map(|i| Receipt {
            tx: TxId(cairn_proto::id::hash("bench", &i.to_be_bytes())),
            outcome: match i % 3 {
                0 => Outcome::Applied,
                1 => Outcome::Sequenced { topic: Topic([3; 32]), seq: u64::from(i) },
                _ => Outcome::Failed(TxError::StaleSequence { after: 1, current: 2 }),
            },
        })
        .collect();
    g.bench_function("outcome root of 8192 receipts (per block, each validator)", |b| {
        b.iter(|| receipts_root(&receipts))
    });

    let (genesis, ledger, ids) = big_block();
    let light = LightClient::new(&genesis).unwrap();
    let target = ids[ids.len() / 2];
    g.bench_function("serve one proof from a 4096-tx block", |b| {
        b.iter(|| outcome_proof::prove(&ledger, &target).unwrap())
    });
    let proof = outcome_proof::prove(&ledger, &target).unwrap();
    g.bench_function("verify one proof (certificate + path)", |b| {
        b.iter(|| light.verify_outcome(&target, &proof).unwrap())
    });
    g.finish();
}

criterion_group!(outcome, benches);
criterion_main!(outcome);
