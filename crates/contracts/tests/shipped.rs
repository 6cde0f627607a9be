#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The shipped AssemblyScript contracts (checked-in .wasm) on the runtime over an in-memory
//! state: they pass the upload rules, and their messages do what `contracts/*.ts` say.

use std::collections::BTreeMap;

use cairn_contracts::shipped::{consent, escrow, paid_storage};
use cairn_contracts::{CallReport, Context, Entry, FuelSchedule, Limits, Runtime, StateView, Transfer, Trap};
use cairn_proto::ed25519::{Signer as _, SigningKey};

#[derive(Default)]
struct World {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    balances: BTreeMap<[u8; 32], u64>,
    devices: Vec<([u8; 32], [u8; 32])>,
    height: u64,
}

impl StateView for World {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn balance(&self, a: &[u8; 32]) -> u64 {
        self.balances.get(a).copied().unwrap_or(0)
    }
    fn device_active(&self, a: &[u8; 32], d: &[u8; 32]) -> bool {
        self.devices.contains(&(*a, *d))
    }
}

const CONTRACT: [u8; 32] = [0xCC; 32];

impl World {
    /// Runs a call like the ledger does: funds credited first, effects applied on success.
    fn call(&mut self, code: &[u8], entry: Entry, caller: [u8; 32], funds: u64, msg: &[u8]) -> CallReport {
        let rt = Runtime::new(Limits::LEDGER, FuelSchedule::default());
        let compiled = rt.compile(code).unwrap();
        *self.balances.entry(CONTRACT).or_default() += funds;
        let ctx = Context { caller, contract: CONTRACT, funds, block_height: self.height, block_time_ms: 0 };
        let r = rt.call(&compiled, entry, &ctx, msg, self, 10_000_000);
        match &r.result {
            Ok(fx) => {
                for (k, v) in &fx.writes {
                    match v {
                        Some(v) => self.kv.insert(k.clone(), v.clone()),
                        None => self.kv.remove(k),
                    };
                }
                for Transfer { to, amount } in &fx.transfers {
                    *self.balances.get_mut(&CONTRACT).unwrap() -= amount;
                    *self.balances.entry(*to).or_default() += amount;
                }
            }
            Err(_) => *self.balances.get_mut(&CONTRACT).unwrap() -= funds,
        }
        r
    }
}

fn aborted(r: &CallReport, needle: &str) -> bool {
    matches!(&r.result, Err(Trap::Abort(m)) if m.contains(needle))
}

#[test]
fn shipped_modules_pass_the_upload_rules_for_both_kinds() {
    let rt = Runtime::new(Limits::LEDGER, FuelSchedule::default());
    for code in [escrow::WASM, paid_storage::WASM, consent::WASM] {
        cairn_contracts::validate(code, &Limits::LEDGER).unwrap();
        cairn_contracts::validate(code, &Limits::POLICY).unwrap();
        rt.compile(code).unwrap();
    }
}

#[test]
fn escrow_releases_on_a_device_receipt_once_and_refunds_after_the_deadline() {
    let mut w = World { height: 10, ..World::default() };
    let (payer, bob) = ([1; 32], [2; 32]);
    let bob_device = SigningKey::from_bytes(&[3; 32]);
    let dev = bob_device.verifying_key().to_bytes();
    w.devices.push((bob, dev));
    let id = [7; 32];
    let r = w.call(escrow::WASM, Entry::Execute, payer, 500, &escrow::open(&id, &bob, 20));
    r.result.unwrap();
    let q = w.call(escrow::WASM, Entry::Query, payer, 0, &escrow::query(&id));
    let rec = escrow::Record::decode(&q.result.unwrap().output).unwrap();
    assert_eq!(rec.status, escrow::Status::Open);
    assert_eq!((rec.payer, rec.recipient, rec.amount, rec.deadline_height), (payer, bob, 500, 20));
    // a reused id is refused
    assert!(aborted(&w.call(escrow::WASM, Entry::Execute, payer, 1, &escrow::open(&id, &bob, 20)), "exists"));
    // a receipt by a key that is not bob's device does not release
    let stranger = SigningKey::from_bytes(&[4; 32]);
    let sig = stranger.sign(&escrow::receipt_message(&id)).to_bytes();
    let r = w.call(
        escrow::WASM,
        Entry::Execute,
        bob,
        0,
        &escrow::release(&id, &stranger.verifying_key().to_bytes(), &sig),
    );
    assert!(aborted(&r, "not a delivery receipt"));
    // a refund before the deadline is refused
    assert!(aborted(&w.call(escrow::WASM, Entry::Execute, payer, 0, &escrow::refund(&id)), "not passed"));
    let sig = bob_device.sign(&escrow::receipt_message(&id)).to_bytes();
    let r = w.call(escrow::WASM, Entry::Execute, payer, 0, &escrow::release(&id, &dev, &sig));
    assert_eq!(r.result.unwrap().transfers, vec![Transfer { to: bob, amount: 500 }]);
    assert_eq!(w.balances[&bob], 500);
    let again = w.call(escrow::WASM, Entry::Execute, payer, 0, &escrow::release(&id, &dev, &sig));
    assert!(aborted(&again, "closed"));
    // a second escrow times out and is refunded once
    let id2 = [8; 32];
    w.call(escrow::WASM, Entry::Execute, payer, 300, &escrow::open(&id2, &bob, 12)).result.unwrap();
    w.height = 13;
    let r = w.call(escrow::WASM, Entry::Execute, bob, 0, &escrow::refund(&id2));
    assert_eq!(r.result.unwrap().transfers, vec![Transfer { to: payer, amount: 300 }]);
    assert!(aborted(&w.call(escrow::WASM, Entry::Execute, payer, 0, &escrow::refund(&id2)), "closed"));
    assert_eq!(w.balances[&CONTRACT], 0);
}

/// A store receipt as `cairn_net::receipt` signs it (libp2p Ed25519 peer id inline).
pub fn store_receipt(store: &SigningKey, id: [u8; 32], stored: u64, expires: u64) -> [u8; 112] {
    let key = store.verifying_key().to_bytes();
    let mut signed = b"cairn/store-receipt/1".to_vec();
    signed.extend_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
    signed.extend_from_slice(&key);
    signed.extend_from_slice(&id);
    signed.extend_from_slice(&stored.to_be_bytes());
    signed.extend_from_slice(&expires.to_be_bytes());
    let mut out = [0u8; 112];
    out[..32].copy_from_slice(&id);
    out[32..40].copy_from_slice(&stored.to_be_bytes());
    out[40..48].copy_from_slice(&expires.to_be_bytes());
    out[48..].copy_from_slice(&store.sign(&signed).to_bytes());
    out
}

#[test]
fn paid_storage_pays_each_receipt_once() {
    let mut w = World::default();
    let (sender, payee) = ([1; 32], [9; 32]);
    let store = SigningKey::from_bytes(&[5; 32]);
    let skey = store.verifying_key().to_bytes();
    w.call(paid_storage::WASM, Entry::Execute, sender, 100, &paid_storage::deposit(&skey, &payee, 30))
        .result
        .unwrap();
    let receipt = store_receipt(&store, [0xE1; 32], 1_000, 9_000);
    // only the payee redeems
    let r = w.call(
        paid_storage::WASM,
        Entry::Execute,
        sender,
        0,
        &paid_storage::redeem(&sender, &skey, &receipt),
    );
    assert!(aborted(&r, "only the store node's payee"));
    let r =
        w.call(paid_storage::WASM, Entry::Execute, payee, 0, &paid_storage::redeem(&sender, &skey, &receipt));
    assert_eq!(r.result.unwrap().transfers, vec![Transfer { to: payee, amount: 30 }]);
    let r =
        w.call(paid_storage::WASM, Entry::Execute, payee, 0, &paid_storage::redeem(&sender, &skey, &receipt));
    assert!(aborted(&r, "redeemed already"));
    // a stretched receipt does not verify
    let mut forged = store_receipt(&store, [0xE2; 32], 1_000, 9_000);
    forged[47] ^= 1;
    let r =
        w.call(paid_storage::WASM, Entry::Execute, payee, 0, &paid_storage::redeem(&sender, &skey, &forged));
    assert!(aborted(&r, "not signed by this store node"));
    let q =
        w.call(paid_storage::WASM, Entry::Query, payee, 0, &paid_storage::query_redeemed(&skey, &[0xE1; 32]));
    assert_eq!(q.result.unwrap().output, [1]);
    let q = w.call(paid_storage::WASM, Entry::Query, payee, 0, &paid_storage::query_deposit(&sender, &skey));
    let d = paid_storage::Deposit::decode(&q.result.unwrap().output).unwrap();
    assert_eq!((d.payee, d.price, d.balance), (payee, 30, 70));
    let r = w.call(paid_storage::WASM, Entry::Execute, sender, 0, &paid_storage::withdraw(&skey));
    assert_eq!(r.result.unwrap().transfers, vec![Transfer { to: sender, amount: 70 }]);
}

#[test]
fn consent_grants_expire_and_revoke() {
    let mut w = World { height: 5, ..World::default() };
    let (owner, doctor) = ([1; 32], [2; 32]);
    let pointer = b"blake3:ab12/records/2026";
    let ask = |w: &mut World| {
        let q = w.call(consent::WASM, Entry::Query, doctor, 0, &consent::query(&owner, &doctor, pointer));
        consent::decode_access(&q.result.unwrap().output).unwrap()
    };
    assert_eq!(ask(&mut w), (false, 0));
    w.call(consent::WASM, Entry::Execute, owner, 0, &consent::grant(&doctor, 8, pointer)).result.unwrap();
    assert_eq!(ask(&mut w), (true, 8));
    let stored = w.kv.get(&consent::grant_key(&owner, &doctor, pointer)).unwrap();
    assert_eq!(consent::decode_grant(stored).unwrap(), (8, pointer.to_vec()));
    w.height = 9;
    assert_eq!(ask(&mut w), (false, 8));
    w.call(consent::WASM, Entry::Execute, owner, 0, &consent::grant(&doctor, 20, pointer)).result.unwrap();
    assert_eq!(ask(&mut w), (true, 20));
    // only the owner's own grants can be revoked by the owner; another caller finds none
    let r = w.call(consent::WASM, Entry::Execute, doctor, 0, &consent::revoke(&doctor, pointer));
    assert!(aborted(&r, "no such grant"));
    w.call(consent::WASM, Entry::Execute, owner, 0, &consent::revoke(&doctor, pointer)).result.unwrap();
    assert_eq!(ask(&mut w), (false, 0));
    let long = vec![0u8; consent::POINTER_MAX + 1];
    assert!(aborted(
        &w.call(consent::WASM, Entry::Execute, owner, 0, &consent::grant(&doctor, 30, &long)),
        "limit"
    ));
}
