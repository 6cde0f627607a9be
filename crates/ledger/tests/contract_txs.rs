#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Contract transactions on the single-replica state machine: upload refusals with the rule
//! named, fuel reserved at admission and the unused part refunded, traps reverting the funds
//! sent, bounds on the fuel limit, and replay determinism of the state root.

use cairn_contracts::code_hash;
use cairn_contracts::shipped::escrow;
use cairn_ledger::params::Params;
use cairn_ledger::state::{FUEL_LIMIT_MAX, Machine, Outcome, StateKey, contract_address};
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

const CHAIN: [u8; 32] = [0xC5; 32];
const FUNDS: u64 = 1_000_000_000;

fn params() -> Params {
    Params { fee_per_fuel: 2, ..Params::default() }
}

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}

fn acct(b: u8) -> AccountId {
    AccountId(key(b).verifying_key().to_bytes())
}

struct W {
    m: Machine,
}

impl W {
    fn new() -> Self {
        let alloc = [(acct(1), FUNDS), (acct(2), FUNDS)];
        Self { m: Machine::genesis(CHAIN, &alloc, &params()).unwrap() }
    }

    fn tx(&self, who: u8, body: TxBody) -> Vec<u8> {
        let k = key(who);
        Tx::sign(CHAIN, acct(who), &k, self.m.nonce(&k.verifying_key().to_bytes()), body).encode()
    }

    fn run_raw(&mut self, t: Vec<u8>) -> Result<Outcome, TxError> {
        let (receipts, dropped) = self.m.propose_and_apply(&[t]).unwrap();
        if let Some(d) = dropped.into_iter().next() {
            return Err(d.error);
        }
        Ok(receipts.into_iter().next().unwrap().outcome)
    }

    fn balance(&self, who: &AccountId) -> u64 {
        self.m.account(who).map_or(0, |a| a.balance)
    }

    /// Deploys and instantiates the escrow (by account 1); its address.
    fn escrow(&mut self) -> [u8; 32] {
        let t = self.tx(1, TxBody::Deploy { code: escrow::WASM.to_vec() });
        assert_eq!(self.run_raw(t).unwrap(), Outcome::Applied);
        let hash = code_hash(escrow::WASM);
        let nonce = self.m.nonce(&acct(1).0);
        let t =
            self.tx(1, TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: 1_000_000 });
        assert!(matches!(self.run_raw(t).unwrap(), Outcome::Contract { .. }));
        contract_address(&acct(1), &acct(1).0, nonce, &hash)
    }
}

#[test]
fn code_breaking_an_upload_rule_is_refused_with_the_rule_named() {
    let mut w = W::new();
    let mut code = escrow::WASM.to_vec();
    code[0] = b'X';
    let t = w.tx(1, TxBody::Deploy { code });
    match w.run_raw(t).unwrap() {
        Outcome::Failed(TxError::CodeRefused(m)) => assert!(m.contains("rule: valid-wasm"), "{m}"),
        other => panic!("{other:?}"),
    }
    // a module with a start function
    let start = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x08\x01\0\x0a\x04\x01\x02\0\x0b";
    let t = w.tx(1, TxBody::Deploy { code: start.to_vec() });
    match w.run_raw(t).unwrap() {
        Outcome::Failed(TxError::CodeRefused(m)) => assert!(m.contains("rule: no-start"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(w.m.db.get(&StateKey::Code(code_hash(start))).is_none());
    // instantiating code nobody deployed
    let t = w.tx(1, TxBody::Instantiate { code_hash: [1; 32], msg: vec![], funds: 0, fuel_limit: 10 });
    assert_eq!(w.run_raw(t).unwrap(), Outcome::Failed(TxError::UnknownCode));
    let t = w.tx(1, TxBody::Execute { contract: [1; 32], msg: vec![], funds: 0, fuel_limit: 10 });
    assert_eq!(w.run_raw(t).unwrap(), Outcome::Failed(TxError::UnknownContract));
}

#[test]
fn fuel_is_reserved_at_admission_and_the_unused_part_refunded() {
    let mut w = W::new();
    let contract = w.escrow();
    let p = params();
    let before = w.balance(&acct(2));
    let msg = escrow::open(&[5; 32], &acct(1).0, 1_000);
    let t = w.tx(2, TxBody::Execute { contract, msg: msg.clone(), funds: 70, fuel_limit: 1_000_000 });
    let len = t.len();
    let fuel = match w.run_raw(t).unwrap() {
        Outcome::Contract { fuel_used, .. } => fuel_used,
        other => panic!("{other:?}"),
    };
    assert!(fuel > 1_000 && fuel < 1_000_000, "{fuel}");
    assert_eq!(before - w.balance(&acct(2)), 70 + p.fee(len, fuel));
    assert_eq!(w.balance(&AccountId(contract)), 70);
    // a fuel limit over the maximum is refused at admission (nothing charged)
    let before = w.balance(&acct(2));
    let t = w.tx(2, TxBody::Execute { contract, msg: msg.clone(), funds: 0, fuel_limit: FUEL_LIMIT_MAX + 1 });
    assert!(matches!(w.run_raw(t), Err(TxError::FuelLimitTooHigh { .. })));
    // a limit whose fee the balance cannot reserve is refused at admission too
    let body = TxBody::Execute { contract, msg: msg.clone(), funds: 0, fuel_limit: FUEL_LIMIT_MAX };
    let t = Tx::sign(CHAIN, acct(2), &key(2), 0, body).encode();
    let poor = Params { fee_per_fuel: 200, ..p };
    let mut poor_chain = Machine::genesis(CHAIN, &[(acct(2), 1_000)], &poor).unwrap();
    let (_, dropped) = poor_chain.propose_and_apply(&[t]).unwrap();
    assert!(matches!(dropped[0].error, TxError::FeeUnpaid { .. }));
    assert_eq!(w.balance(&acct(2)), before);
}

#[test]
fn a_trap_reverts_the_funds_sent_and_keeps_the_fee() {
    let mut w = W::new();
    let contract = w.escrow();
    let p = params();
    // opening the same message id twice: the second aborts, its 70 stays with the sender
    let msg = escrow::open(&[6; 32], &acct(1).0, 1_000);
    let t = w.tx(2, TxBody::Execute { contract, msg: msg.clone(), funds: 70, fuel_limit: 1_000_000 });
    assert!(matches!(w.run_raw(t).unwrap(), Outcome::Contract { .. }));
    let before = w.balance(&acct(2));
    let root = w.m.db.root();
    let t = w.tx(2, TxBody::Execute { contract, msg, funds: 70, fuel_limit: 1_000_000 });
    let len = t.len();
    match w.run_raw(t).unwrap() {
        Outcome::Failed(TxError::ContractFailed(m)) => assert!(m.contains("exists"), "{m}"),
        other => panic!("{other:?}"),
    }
    let paid = before - w.balance(&acct(2));
    assert!(paid > p.fee(len, 0) && paid < p.fee(len, 1_000_000), "only the fee: {paid}");
    assert_eq!(w.balance(&AccountId(contract)), 70);
    assert_ne!(w.m.db.root(), root, "the fee and nonce changed the state");
    // sending more funds than the balance fails the call, with no contract state written
    let huge = escrow::open(&[7; 32], &acct(1).0, 1_000);
    let t = w.tx(2, TxBody::Execute { contract, msg: huge, funds: FUNDS * 2, fuel_limit: 1_000_000 });
    assert!(matches!(w.run_raw(t).unwrap(), Outcome::Failed(TxError::InsufficientBalance { .. })));
    let q = w.m.query(&contract, &escrow::query(&[7; 32]));
    assert!(matches!(q, Err(TxError::ContractFailed(m)) if m.contains("no escrow")));
}

#[test]
fn replaying_the_same_blocks_gives_the_same_root() {
    let run = || {
        let mut w = W::new();
        let contract = w.escrow();
        for i in 0..5u8 {
            let t = w.tx(
                2,
                TxBody::Execute {
                    contract,
                    msg: escrow::open(&[i; 32], &acct(1).0, 1_000),
                    funds: 10 + u64::from(i),
                    fuel_limit: 1_000_000,
                },
            );
            w.run_raw(t).unwrap();
        }
        w.m.db.root()
    };
    assert_eq!(run(), run());
}

#[test]
fn a_block_reserves_at_most_its_fuel_budget() {
    use cairn_ledger::state::BLOCK_FUEL_MAX;
    let mut w = W::new();
    let contract = w.escrow();
    let per = FUEL_LIMIT_MAX;
    let fit = BLOCK_FUEL_MAX / per;
    let k = key(2);
    let n = w.m.nonce(&acct(2).0);
    let txs: Vec<Vec<u8>> = (0..=fit)
        .map(|i| {
            let body = TxBody::Execute {
                contract,
                msg: escrow::open(&[i as u8 + 40; 32], &acct(1).0, 1_000),
                funds: 1,
                fuel_limit: per,
            };
            Tx::sign(CHAIN, acct(2), &k, n + i, body).encode()
        })
        .collect();
    let (receipts, dropped) = w.m.propose_and_apply(&txs).unwrap();
    assert_eq!(receipts.len() as u64, fit, "{fit} calls fit, the next one waits");
    assert!(matches!(dropped[0].error, TxError::BlockFuelFull { .. }));
    // the next block takes it
    let (receipts, dropped) = w.m.propose_and_apply(&txs[fit as usize..]).unwrap();
    assert_eq!((receipts.len(), dropped.len()), (1, 0));
}

/// A module with the ABI marker and memory whose `execute` is `body`.
fn wat_module(body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
             (import "cairn" "output_write" (func $out (param i32 i32)))
             (memory (export "memory") 1 64)
             (global (export "cairn_abi_v1") i32 (i32.const 1))
             (func (export "init"))
             (func (export "execute") {body}))"#
    ))
    .unwrap()
}

#[test]
fn hostile_contracts_run_out_of_fuel_and_pay_for_it() {
    let mut w = W::new();
    let p = params();
    let cases = [
        ("infinite loop", "(loop $l (br $l))"),
        // grow to the 64-page maximum, then write everywhere forever
        (
            "memory bomb",
            "(local $i i32) (drop (memory.grow (i32.const 63)))
             (loop $l (i32.store (local.get $i) (local.get $i))
               (local.set $i (i32.and (i32.add (local.get $i) (i32.const 4)) (i32.const 4194300)))
               (br $l))",
        ),
        // a huge output: every byte costs fuel; over the limit it traps
        ("output flood", "(loop $l (call $out (i32.const 0) (i32.const 65536)) (br $l))"),
    ];
    for (name, body) in cases {
        let code = wat_module(body);
        let t = w.tx(1, TxBody::Deploy { code: code.clone() });
        assert_eq!(w.run_raw(t).unwrap(), Outcome::Applied, "{name}");
        let hash = code_hash(&code);
        let nonce = w.m.nonce(&acct(1).0);
        let t = w.tx(1, TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: 100_000 });
        assert!(matches!(w.run_raw(t).unwrap(), Outcome::Contract { .. }), "{name}");
        let contract = contract_address(&acct(1), &acct(1).0, nonce, &hash);
        let before = w.balance(&acct(2));
        let t = w.tx(2, TxBody::Execute { contract, msg: vec![], funds: 5, fuel_limit: 3_000_000 });
        let len = t.len();
        match w.run_raw(t).unwrap() {
            Outcome::Failed(TxError::ContractFailed(m)) => {
                assert!(m.contains("out of fuel") || m.contains("limit"), "{name}: {m}")
            }
            other => panic!("{name}: {other:?}"),
        }
        let paid = before - w.balance(&acct(2));
        assert!(paid <= p.fee(len, 3_000_000) && paid > p.fee(len, 0), "{name}: paid {paid}");
        assert_eq!(w.balance(&AccountId(contract)), 0, "{name}: the funds went back");
    }
}
