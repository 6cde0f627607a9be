//! Contract calls through the ledger's state machine (one replica, one core): a block of 100
//! escrow `open` executions beside a block of 100 plain transfers, signature checks included.
//! Prints the fuel and fee of one call. Consensus and the network are not in these figures
//! (`cairn bench ledger` measures those for transfers).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use cairn_contracts::code_hash;
use cairn_contracts::shipped::escrow;
use cairn_ledger::params::Params;
use cairn_ledger::state::{Machine, Outcome, contract_address};
use cairn_ledger::tx::{Tx, TxBody};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const CHAIN: [u8; 32] = [0xBE; 32];
const BLOCK: usize = 100;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn acct(i: u8) -> AccountId {
    AccountId(key(i).verifying_key().to_bytes())
}

/// A chain with the escrow instantiated (by account 1); the machine and the contract address.
fn chain() -> (Machine, [u8; 32]) {
    let alloc = [(acct(1), 1_000_000_000_000), (acct(2), 1_000_000_000_000)];
    let mut m = Machine::genesis(CHAIN, &alloc, &Params::default()).unwrap();
    let hash = code_hash(escrow::WASM);
    let deploy = Tx::sign(CHAIN, acct(1), &key(1), 0, TxBody::Deploy { code: escrow::WASM.to_vec() });
    let inst = TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: 1_000_000 };
    let inst = Tx::sign(CHAIN, acct(1), &key(1), 1, inst);
    let (r, d) = m.propose_and_apply(&[deploy.encode(), inst.encode()]).unwrap();
    assert!(d.is_empty() && matches!(r[1].outcome, Outcome::Contract { .. }));
    (m, contract_address(&acct(1), &acct(1).0, 1, &hash))
}

fn opens(contract: [u8; 32]) -> Vec<Vec<u8>> {
    (0..BLOCK)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let msg = escrow::open(&id, &acct(1).0, 1_000);
            let body = TxBody::Execute { contract, msg, funds: 10, fuel_limit: 100_000 };
            Tx::sign(CHAIN, acct(2), &key(2), i as u64, body).encode()
        })
        .collect()
}

fn transfers() -> Vec<Vec<u8>> {
    (0..BLOCK)
        .map(|i| {
            Tx::sign(CHAIN, acct(2), &key(2), i as u64, TxBody::Transfer { to: acct(1), amount: 10 }).encode()
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let (mut m, contract) = chain();
    let txs = opens(contract);
    let before = m.account(&acct(2)).unwrap().balance;
    let (r, _) = m.propose_and_apply(&txs[..1]).unwrap();
    if let Outcome::Contract { fuel_used, .. } = r[0].outcome {
        let paid = before - m.account(&acct(2)).unwrap().balance - 10;
        println!("escrow open: {fuel_used} fuel, fee {paid} units ({} bytes)", txs[0].len());
    }
    let t = transfers();
    println!("transfer: fee {} units ({} bytes)", Params::default().fee(t[0].len(), 0), t[0].len());

    let mut g = c.benchmark_group("ledger_block_of_100");
    g.throughput(Throughput::Elements(BLOCK as u64));
    g.sample_size(20);
    g.bench_function("escrow open executions", |b| {
        b.iter_batched(
            || (chain().0, opens(contract)),
            |(mut m, txs)| {
                let (r, d) = m.propose_and_apply(&txs).unwrap();
                assert!(d.is_empty() && r.len() == BLOCK);
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("plain transfers", |b| {
        b.iter_batched(
            || (chain().0, transfers()),
            |(mut m, txs)| {
                let (r, d) = m.propose_and_apply(&txs).unwrap();
                assert!(d.is_empty() && r.len() == BLOCK);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
