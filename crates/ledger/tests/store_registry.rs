#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Store node registration on the ledger: the store fee is paid (burned), the node key must
//! consent, the set is bounded per account and in total, deregistration removes an entry, every
//! refusal is typed, and a light client verifies the whole set against a certified header.

mod support;

use cairn_ledger::block::Block;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::light::{LightClient, StateProof};
use cairn_ledger::params::Params;
use cairn_ledger::state::{Machine, Outcome, STORES_PER_ACCOUNT_MAX, StateKey, StoreSet, store_fee};
use cairn_ledger::tx::{Tx, TxBody, TxError, store_binding_message};
use cairn_proto::AccountId;
use cairn_proto::ed25519::{Signer as _, SigningKey};

const CHAIN: [u8; 32] = [0x5E; 32];
const FUNDS: u64 = 10_000_000_000;

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}
fn acct(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}
fn node(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[0x80 | i; 32])
}

struct W {
    m: Machine,
}

impl W {
    fn run(&mut self, k: &SigningKey, body: TxBody) -> Result<(Outcome, usize), TxError> {
        let n = self.m.nonce(&k.verifying_key().to_bytes());
        let t = Tx::sign(CHAIN, acct(k), k, n, body).encode();
        let len = t.len();
        let (receipts, dropped) = self.m.propose_and_apply(&[t]).unwrap();
        if let Some(d) = dropped.into_iter().next() {
            return Err(d.error);
        }
        Ok((receipts.into_iter().next().unwrap().outcome, len))
    }
    fn stores(&self) -> StoreSet {
        self.m.db.get(&StateKey::Stores).map(|b| StoreSet::decode(&b).unwrap()).unwrap_or_default()
    }
    fn balance(&self, k: &SigningKey) -> u64 {
        self.m.account(&acct(k)).unwrap().balance
    }
}

fn register(owner: &SigningKey, node: &SigningKey) -> TxBody {
    let node_key = node.verifying_key().to_bytes();
    let msg = store_binding_message(&CHAIN, &acct(owner), &node_key);
    TxBody::RegisterStore { node_key, node_signature: node.sign(&msg).to_bytes() }
}

fn failed(r: Result<(Outcome, usize), TxError>) -> TxError {
    match r {
        Ok((Outcome::Failed(e), _)) => e,
        other => panic!("expected a failed outcome, got {other:?}"),
    }
}

#[test]
fn registration_pays_the_store_fee_is_bounded_and_refusals_are_typed() {
    let (a, b, poor) = (key(1), key(2), key(3));
    let p = Params::dev();
    let mut w = W {
        m: Machine::genesis(CHAIN, &[(acct(&a), FUNDS), (acct(&b), FUNDS), (acct(&poor), 5_000_000)], &p)
            .unwrap(),
    };
    let fee = store_fee(&p);
    assert_eq!(fee, 10 * 1024 * 1024 * p.fee_per_byte);

    // registered: the transaction fee and the store fee are both debited (burned)
    let before = w.balance(&a);
    let (o, len) = w.run(&a, register(&a, &node(0))).unwrap();
    assert_eq!(o, Outcome::Applied);
    assert_eq!(w.balance(&a), before - fee - p.fee(len, 0));
    let set = w.stores();
    assert_eq!(set.entries.len(), 1);
    let e = set.get(&node(0).verifying_key().to_bytes()).unwrap();
    assert_eq!(e.account, acct(&a));
    assert_ne!(e.salt, [0; 32]);

    // the same node key again, by anyone: typed refusal, nothing changes but the fees
    assert_eq!(failed(w.run(&a, register(&a, &node(0)))), TxError::StoreExists);
    assert_eq!(failed(w.run(&b, register(&b, &node(0)))), TxError::StoreExists);

    // a node key that did not consent to this account (signed for A, submitted by B), or a
    // garbage signature, or a small-order key
    assert_eq!(failed(w.run(&b, register(&a, &node(1)))), TxError::BadStoreBinding);
    let bad = TxBody::RegisterStore { node_key: node(1).verifying_key().to_bytes(), node_signature: [7; 64] };
    assert_eq!(failed(w.run(&b, bad)), TxError::BadStoreBinding);
    let mut identity = [0u8; 32];
    identity[0] = 1; // the identity point: small order
    let weak = TxBody::RegisterStore { node_key: identity, node_signature: [0; 64] };
    assert_eq!(failed(w.run(&b, weak)), TxError::BadStoreBinding);

    // an account that cannot pay the store fee
    match failed(w.run(&poor, register(&poor, &node(9)))) {
        TxError::InsufficientBalance { need, .. } => assert_eq!(need, fee),
        other => panic!("{other:?}"),
    }

    // at most STORES_PER_ACCOUNT_MAX per account
    for i in 1..STORES_PER_ACCOUNT_MAX as u8 {
        assert_eq!(w.run(&a, register(&a, &node(i))).unwrap().0, Outcome::Applied);
    }
    let over = node(STORES_PER_ACCOUNT_MAX as u8);
    assert_eq!(
        failed(w.run(&a, register(&a, &over))),
        TxError::TooManyStores { max: STORES_PER_ACCOUNT_MAX }
    );
    assert_eq!(w.stores().count_of(&acct(&a)), STORES_PER_ACCOUNT_MAX);

    // a device key may not register stores (account key only)
    assert!(TxBody::DeregisterStore { node_key: [0; 32] }.needs_account_key());

    // deregistration: only by the registering account; then the slot is free again
    let n0 = node(0).verifying_key().to_bytes();
    assert_eq!(failed(w.run(&b, TxBody::DeregisterStore { node_key: n0 })), TxError::UnknownStore);
    assert_eq!(w.run(&a, TxBody::DeregisterStore { node_key: n0 }).unwrap().0, Outcome::Applied);
    assert!(w.stores().get(&n0).is_none());
    assert_eq!(failed(w.run(&a, TxBody::DeregisterStore { node_key: n0 })), TxError::UnknownStore);
    assert_eq!(w.run(&a, register(&a, &over)).unwrap().0, Outcome::Applied);

    // re-registering a node key draws a new salt: a key's rank cannot be kept across tries
    assert_eq!(w.run(&b, register(&b, &node(0))).unwrap().0, Outcome::Applied);
    assert_ne!(w.stores().get(&n0).unwrap().salt, e.salt);
    // the refusals' codes are stable on the wire
    assert_eq!(TxError::BadStoreBinding.code(), 41);
    assert_eq!(TxError::UnknownStore.code(), 45);
}

#[test]
fn salts_differ_per_store_and_replay_is_deterministic() {
    let a = key(1);
    let p = Params::dev();
    let run = || {
        let mut w = W { m: Machine::genesis(CHAIN, &[(acct(&a), FUNDS)], &p).unwrap() };
        for i in 0..3 {
            w.run(&a, register(&a, &node(i))).unwrap();
        }
        (w.stores(), w.m.db.root())
    };
    let (s1, r1) = run();
    let (s2, r2) = run();
    assert_eq!((s1.clone(), r1), (s2, r2), "every validator draws the same salts");
    let mut salts: Vec<[u8; 32]> = s1.entries.iter().map(|e| e.salt).collect();
    salts.dedup();
    assert_eq!(salts.len(), 3);
}

#[test]
fn the_store_set_verifies_against_a_certified_header() {
    let a = SigningKey::from_bytes(&[1; 32]);
    let alice = AccountId(a.verifying_key().to_bytes());
    let (g, keys): (Genesis, _) = Genesis::local("stores", 4, 30000, vec![(alice, FUNDS)]).unwrap();
    let (mut machine, genesis_block) = g.build().unwrap();
    let chain = g.chain_id();
    let lc = LightClient::new(&g).unwrap();

    // before any registration: proven empty
    let (v, proof) = machine.db.prove(&StateKey::Stores).unwrap();
    assert!(v.is_none());
    let header0 = genesis_block.header;
    let fin0 = support::finalize(&g, &keys, &[0, 1, 2], &header0);
    let sp = StateProof::new(header0, fin0, None, &proof);
    assert!(lc.verify_stores(&StateProof::decode(&sp.encode()).unwrap()).unwrap().entries.is_empty());

    let reg = |n: u8, nonce: u64| {
        let nk = SigningKey::from_bytes(&[0x90 + n; 32]);
        let node_key = nk.verifying_key().to_bytes();
        let sig = nk.sign(&store_binding_message(&chain, &alice, &node_key)).to_bytes();
        Tx::sign(chain, alice, &a, nonce, TxBody::RegisterStore { node_key, node_signature: sig }).encode()
    };
    let txs = vec![reg(0, 0), reg(1, 1)];
    let receipts = machine.apply_block(&txs).unwrap();
    let outcome_root = cairn_ledger::outcome_tree::receipts_root(&receipts);
    let block = Block::new(1, genesis_block.id(), machine.db.root(), txs, outcome_root);
    let fin = support::finalize(&g, &keys, &[0, 1, 3], &block.header);
    let (v, proof) = machine.db.prove(&StateKey::Stores).unwrap();
    let sp = StateProof::new(block.header, fin.clone(), v.clone(), &proof);
    let set = lc.verify_stores(&StateProof::decode(&sp.encode()).unwrap()).unwrap();
    assert_eq!(set.entries.len(), 2);
    assert!(set.entries.iter().all(|e| e.account == alice && e.height == 1));

    // a validator that drops a store from the set (or adds one) is caught
    let mut forged = StoreSet::decode(v.as_ref().unwrap()).unwrap();
    forged.entries.pop();
    let lie = StateProof::new(block.header, fin.clone(), Some(forged.encode()), &proof);
    assert!(lc.verify_stores(&lie).is_err());
    let lie = StateProof::new(block.header, fin, None, &proof);
    assert!(lc.verify_stores(&lie).is_err());
}
