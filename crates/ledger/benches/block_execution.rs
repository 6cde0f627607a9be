//! Executing one block of 1,024 fee-paying transfers among 4,096 funded accounts, as each
//! validator does for every block (proposer or verifier), with signatures already checked at
//! admission: the transaction effects, the fee, the nonces and the Merkle root. Consensus, the
//! network and the chain store are not in this figure (`cairn ledger bench` measures those).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use cairn_ledger::params::Params;
use cairn_ledger::state::{Mode, StateDb, execute, genesis_layer};
use cairn_ledger::tx::{Tx, TxBody};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const CHAIN: [u8; 32] = [0xBE; 32];
const ACCOUNTS: usize = 4096;
const BLOCK: usize = 1024;

fn keys() -> Vec<SigningKey> {
    (0..ACCOUNTS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let keys = keys();
    let ids: Vec<AccountId> = keys.iter().map(|k| AccountId(k.verifying_key().to_bytes())).collect();
    let alloc: Vec<(AccountId, u64)> = ids.iter().map(|id| (*id, 1_000_000_000)).collect();
    let mut db = StateDb::default();
    let layer = genesis_layer(&db, CHAIN, &alloc, &Params::default()).unwrap();
    db.apply(layer);
    // a block: 1,024 distinct senders, each paying the next account
    let txs: Vec<Vec<u8>> = (0..BLOCK)
        .map(|i| {
            let body = TxBody::Transfer { to: ids[(i * 4 + 1) % ACCOUNTS], amount: 1 };
            Tx::sign(CHAIN, ids[i * 4], &keys[i * 4], 0, body).encode()
        })
        .collect();
    let mut g = c.benchmark_group("ledger_block_execution");
    g.throughput(Throughput::Elements(BLOCK as u64));
    g.sample_size(20);
    g.bench_function("1024 transfers, 4096 accounts (signatures checked at admission)", |b| {
        b.iter_batched(
            || (),
            |()| {
                let ex = execute(&db, Vec::new(), CHAIN, 1, &txs, Mode::Verify, &|_| true).unwrap();
                assert_eq!(ex.receipts.len(), BLOCK);
                ex
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
