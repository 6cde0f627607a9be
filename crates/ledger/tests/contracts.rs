#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The shipped contracts on 4 validators (seeded simulation): escrow / pay on delivery, paid
//! storage, consent registry. Every validator reaches the same outcomes and state root; fuel
//! is paid from the caller's balance; a trap reverts everything but the fee.

use std::time::Duration;

use cairn_contracts::code_hash;
use cairn_contracts::shipped::{consent, escrow, paid_storage};
use cairn_ledger::core::TxStatus;
use cairn_ledger::params::Params;
use cairn_ledger::state::{Outcome, StateKey, contract_address};
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_ledger::validator::Behaviour;
use cairn_proto::ed25519::{Signer as _, SigningKey};
use cairn_proto::{DeviceCert, DeviceId};
use commonware_runtime::{Clock, deterministic};

mod common;
use common::*;

const FUEL: u64 = 2_000_000;

fn params() -> Params {
    Params { fee_per_fuel: 1, ..Params::default() }
}

/// A network of 4 running validators past height 2, with a per-user nonce counter.
struct Chain {
    net: Net,
    chain: [u8; 32],
    nonces: [u64; 8],
}

impl Chain {
    async fn start(ctx: &deterministic::Context) -> Self {
        let mut net = Net::with_params(ctx, params()).await;
        for i in 0..N {
            net.start(ctx, i, Behaviour::Honest).await;
        }
        assert!(net.wait_height(ctx, &[0, 1, 2, 3], 2, Duration::from_secs(30)).await, "no progress");
        let chain = net.genesis.chain_id();
        Self { net, chain, nonces: [0; 8] }
    }

    fn tx(&mut self, u: u8, body: TxBody) -> Vec<u8> {
        let n = self.nonces[u as usize];
        self.nonces[u as usize] += 1;
        Tx::sign(self.chain, Net::account(u), &user(u), n, body).encode()
    }

    /// Signs, submits and finalizes one transaction by user `u`; its status everywhere.
    async fn send(&mut self, ctx: &deterministic::Context, u: u8, body: TxBody) -> (Vec<u8>, TxStatus) {
        let t = self.tx(u, body);
        let s = self.net.finalize(ctx, std::slice::from_ref(&t)).await.remove(0);
        (t, s)
    }

    /// Deploys `code` and instantiates it (by user 0); the contract address.
    async fn install(&mut self, ctx: &deterministic::Context, code: &[u8]) -> [u8; 32] {
        let (_, s) = self.send(ctx, 0, TxBody::Deploy { code: code.to_vec() }).await;
        assert!(matches!(s, TxStatus::Finalized { outcome: Outcome::Applied, .. }), "{s:?}");
        let hash = code_hash(code);
        let nonce = self.nonces[0];
        let body = TxBody::Instantiate { code_hash: hash, msg: vec![], funds: 0, fuel_limit: FUEL };
        let (_, s) = self.send(ctx, 0, body).await;
        let address = contract_address(&Net::account(0), &Net::account(0).0, nonce, &hash);
        assert!(
            matches!(&s, TxStatus::Finalized { outcome: Outcome::Contract { address: a, .. }, .. } if *a == address),
            "{s:?}"
        );
        address
    }

    fn balance(&self, u: u8) -> u64 {
        self.net.ledger(0).unwrap().balance(&Net::account(u)).unwrap()
    }

    fn balance_of(&self, address: &[u8; 32]) -> u64 {
        self.net.ledger(0).unwrap().balance(&cairn_proto::AccountId(*address)).unwrap_or(0)
    }

    /// The same query answer on every validator.
    fn query(&self, contract: &[u8; 32], msg: &[u8]) -> Result<Vec<u8>, TxError> {
        let answers: Vec<_> = (0..N)
            .map(|i| self.net.ledger(i).unwrap().query_contract(contract, msg).map(|(out, _)| out))
            .collect();
        assert!(answers.windows(2).all(|w| w[0] == w[1]), "validators answer differently: {answers:?}");
        answers.into_iter().next().unwrap()
    }

    /// Waits two blocks, then checks every validator has the same state root at a common height.
    async fn check_same_root(&self, ctx: &deterministic::Context) {
        let target = self.net.heights().iter().map(|h| h.unwrap()).max().unwrap() + 2;
        assert!(self.net.wait_height(ctx, &[0, 1, 2, 3], target, Duration::from_secs(30)).await);
        self.net.check_safety();
        let h = self.net.heights().iter().map(|h| h.unwrap()).min().unwrap();
        let roots: Vec<[u8; 32]> =
            (0..N).map(|i| self.net.ledger(i).unwrap().header(h).unwrap().state_root).collect();
        assert!(roots.windows(2).all(|w| w[0] == w[1]), "state roots differ at {h}");
    }

    fn height(&self) -> u64 {
        self.net.heights().iter().map(|h| h.unwrap()).min().unwrap()
    }
}

fn failed(s: &TxStatus, needle: &str) -> bool {
    matches!(s, TxStatus::Finalized { outcome: Outcome::Failed(TxError::ContractFailed(m)), .. } if m.contains(needle))
}

fn fuel_of(s: &TxStatus) -> u64 {
    match s {
        TxStatus::Finalized { outcome: Outcome::Contract { fuel_used, .. }, .. } => *fuel_used,
        other => panic!("not a contract outcome: {other:?}"),
    }
}

fn execute(contract: [u8; 32], msg: Vec<u8>, funds: u64) -> TxBody {
    TxBody::Execute { contract, msg, funds, fuel_limit: FUEL }
}

#[test]
fn escrow_pays_on_a_delivery_receipt_once_and_refunds_after_the_deadline() {
    run(11, |ctx| {
        Box::pin(async move {
            let mut c = Chain::start(&ctx).await;
            let fee_per_byte = c.net.genesis.params.fee_per_byte;
            let contract = c.install(&ctx, escrow::WASM).await;
            // bob (user 1) registers a device
            let device = SigningKey::from_bytes(&[42; 32]);
            let dev = device.verifying_key().to_bytes();
            let cert = DeviceCert::issue(&user(1), DeviceId(dev), 5);
            let chain = c.chain;
            let (_, s) = c.send(&ctx, 1, TxBody::add_device(&chain, cert, &device)).await;
            assert!(matches!(s, TxStatus::Finalized { outcome: Outcome::Applied, .. }), "{s:?}");
            let bob = Net::account(1).0;
            let id = [0xAB; 32];
            // a call that runs out of fuel reverts everything, the funds included; the fee for
            // the fuel used (all of it) and the bytes is paid
            let before = c.balance(0);
            let body = TxBody::Execute {
                contract,
                msg: escrow::open(&id, &bob, 10_000),
                funds: 500,
                fuel_limit: 100,
            };
            let (t, s) = c.send(&ctx, 0, body).await;
            assert!(failed(&s, "out of fuel"), "{s:?}");
            assert_eq!(before - c.balance(0), fee_per_byte * t.len() as u64 + 100);
            assert_eq!(c.balance_of(&contract), 0);
            // the payer locks 500 for message `id`; the fee is bytes plus the fuel used
            let before = c.balance(0);
            let (t, s) = c.send(&ctx, 0, execute(contract, escrow::open(&id, &bob, 10_000), 500)).await;
            let fuel = fuel_of(&s);
            assert!(fuel > 0 && fuel < FUEL);
            assert_eq!(before - c.balance(0), 500 + fee_per_byte * t.len() as u64 + fuel);
            assert_eq!(c.balance_of(&contract), 500);
            let rec = escrow::Record::decode(&c.query(&contract, &escrow::query(&id)).unwrap()).unwrap();
            assert_eq!(rec.status, escrow::Status::Open);
            // a receipt signed by a key that is not one of bob's devices is refused
            let stranger = SigningKey::from_bytes(&[43; 32]);
            let bad = stranger.sign(&escrow::receipt_message(&id)).to_bytes();
            let msg = escrow::release(&id, &stranger.verifying_key().to_bytes(), &bad);
            let (_, s) = c.send(&ctx, 2, execute(contract, msg, 0)).await;
            assert!(failed(&s, "not a delivery receipt"), "{s:?}");
            // bob's device's receipt, relayed by anyone (user 2), releases the 500 to bob
            let sig = device.sign(&escrow::receipt_message(&id)).to_bytes();
            let bob_before = c.balance(1);
            let (_, s) = c.send(&ctx, 2, execute(contract, escrow::release(&id, &dev, &sig), 0)).await;
            match &s {
                TxStatus::Finalized { outcome: Outcome::Contract { events, .. }, .. } => {
                    assert!(events[0].starts_with(b"released"));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(c.balance(1), bob_before + 500);
            assert_eq!(c.balance_of(&contract), 0);
            // a double release is refused
            let (_, s) = c.send(&ctx, 2, execute(contract, escrow::release(&id, &dev, &sig), 0)).await;
            assert!(failed(&s, "closed"), "{s:?}");
            assert_eq!(c.balance(1), bob_before + 500);
            // a second escrow with a near deadline: no refund before it, one refund after it
            let id2 = [0xCD; 32];
            let deadline = c.height() + 3;
            let (_, s) = c.send(&ctx, 0, execute(contract, escrow::open(&id2, &bob, deadline), 300)).await;
            fuel_of(&s);
            let refund = execute(contract, escrow::refund(&id2), 0);
            if c.height() < deadline {
                let (_, s) = c.send(&ctx, 2, refund.clone()).await;
                // it may have landed after the deadline if blocks came fast; then it refunded
                assert!(failed(&s, "not passed") || fuel_of(&s) > 0, "{s:?}");
            }
            assert!(c.net.wait_height(&ctx, &[0, 1, 2, 3], deadline + 1, Duration::from_secs(30)).await);
            let rec = escrow::Record::decode(&c.query(&contract, &escrow::query(&id2)).unwrap()).unwrap();
            if rec.status == escrow::Status::Open {
                let payer_before = c.balance(0);
                let (_, s) = c.send(&ctx, 2, refund.clone()).await;
                fuel_of(&s);
                assert_eq!(c.balance(0), payer_before + 300);
            }
            let rec = escrow::Record::decode(&c.query(&contract, &escrow::query(&id2)).unwrap()).unwrap();
            assert_eq!(rec.status, escrow::Status::Refunded);
            let (_, s) = c.send(&ctx, 2, refund).await;
            assert!(failed(&s, "closed"), "{s:?}");
            assert_eq!(c.balance_of(&contract), 0);
            c.check_same_root(&ctx).await;
        })
    });
}

/// A store receipt as `cairn_net::receipt::StoreReceipt::sign` makes it (Ed25519 libp2p
/// identity: the peer id bytes are the identity multihash of the protobuf public key).
fn store_receipt(store: &SigningKey, id: [u8; 32], stored: u64, expires: u64) -> [u8; 112] {
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
fn paid_storage_redeems_each_store_receipt_once() {
    run(12, |ctx| {
        Box::pin(async move {
            let mut c = Chain::start(&ctx).await;
            let contract = c.install(&ctx, paid_storage::WASM).await;
            let store = SigningKey::from_bytes(&[77; 32]);
            let skey = store.verifying_key().to_bytes();
            let (sender, payee) = (Net::account(0).0, Net::account(3).0);
            let (_, s) =
                c.send(&ctx, 0, execute(contract, paid_storage::deposit(&skey, &payee, 40), 100)).await;
            fuel_of(&s);
            let receipts: Vec<[u8; 112]> =
                (0..3u8).map(|i| store_receipt(&store, [i; 32], 1_000, 2_000_000)).collect();
            // the store node's payee redeems two receipts, 40 each
            for r in &receipts[..2] {
                let before = c.balance(3);
                let (t, s) =
                    c.send(&ctx, 3, execute(contract, paid_storage::redeem(&sender, &skey, r), 0)).await;
                let fee = c.net.genesis.params.fee_per_byte * t.len() as u64 + fuel_of(&s);
                assert_eq!(c.balance(3) + fee, before + 40);
            }
            // the same receipt again is refused, whoever sends it
            let again = paid_storage::redeem(&sender, &skey, &receipts[0]);
            let (_, s) = c.send(&ctx, 3, execute(contract, again, 0)).await;
            assert!(failed(&s, "redeemed already"), "{s:?}");
            // a third receipt exceeds what is left (100 - 80 < 40)
            let third = paid_storage::redeem(&sender, &skey, &receipts[2]);
            let (_, s) = c.send(&ctx, 3, execute(contract, third, 0)).await;
            assert!(failed(&s, "used up"), "{s:?}");
            let out = c.query(&contract, &paid_storage::query_redeemed(&skey, &[0; 32])).unwrap();
            assert_eq!(out, [1]);
            let out = c.query(&contract, &paid_storage::query_redeemed(&skey, &[2; 32])).unwrap();
            assert_eq!(out, [0]);
            let d = paid_storage::Deposit::decode(
                &c.query(&contract, &paid_storage::query_deposit(&sender, &skey)).unwrap(),
            )
            .unwrap();
            assert_eq!((d.payee, d.price, d.balance), (payee, 40, 20));
            assert_eq!(c.balance_of(&contract), 20);
            c.check_same_root(&ctx).await;
        })
    });
}

#[test]
fn consent_grants_and_revocations_are_provable_to_a_light_client() {
    run(13, |ctx| {
        Box::pin(async move {
            let mut c = Chain::start(&ctx).await;
            let contract = c.install(&ctx, consent::WASM).await;
            let (owner, doctor) = (Net::account(0).0, Net::account(1).0);
            let pointer = b"blake3:9f2c/records/2026-11";
            let expires = c.height() + 1_000;
            let (_, s) =
                c.send(&ctx, 0, execute(contract, consent::grant(&doctor, expires, pointer), 0)).await;
            fuel_of(&s);
            let access = c.query(&contract, &consent::query(&owner, &doctor, pointer)).unwrap();
            assert_eq!(consent::decode_access(&access).unwrap(), (true, expires));
            let lc = cairn_ledger::light::LightClient::new(&c.net.genesis).unwrap();
            let key = StateKey::ContractState(contract, consent::grant_key(&owner, &doctor, pointer));
            let proven = prove(&ctx, &c, &lc, &key).await;
            assert_eq!(consent::decode_grant(&proven.unwrap()).unwrap(), (expires, pointer.to_vec()));
            // another party was never granted: its absence is proven
            let other =
                StateKey::ContractState(contract, consent::grant_key(&owner, &Net::account(2).0, pointer));
            assert!(prove(&ctx, &c, &lc, &other).await.is_none());
            // revoked: the query and the proof both say no
            let (_, s) = c.send(&ctx, 0, execute(contract, consent::revoke(&doctor, pointer), 0)).await;
            fuel_of(&s);
            let access = c.query(&contract, &consent::query(&owner, &doctor, pointer)).unwrap();
            assert_eq!(consent::decode_access(&access).unwrap(), (false, 0));
            assert!(prove(&ctx, &c, &lc, &key).await.is_none());
            // the code and the instance are provable too
            let code = prove(&ctx, &c, &lc, &StateKey::Code(code_hash(consent::WASM))).await;
            assert_eq!(code.as_deref(), Some(consent::WASM));
            // a query cannot write: the shipped query entry only reads, and a grant by query is
            // impossible; an unknown contract is named
            assert_eq!(c.query(&[9; 32], b"").unwrap_err(), TxError::UnknownContract);
            c.check_same_root(&ctx).await;
        })
    });
}

/// A light-client-verified value of `key` (retrying until a certified proof at the tip exists).
async fn prove(
    ctx: &deterministic::Context,
    c: &Chain,
    lc: &cairn_ledger::light::LightClient,
    key: &StateKey,
) -> Option<Vec<u8>> {
    for _ in 0..200 {
        if let Some(p) = c.net.ledger(0).unwrap().prove(key).unwrap() {
            return lc.verify(key, &p).unwrap();
        }
        ctx.sleep(Duration::from_millis(100)).await;
    }
    panic!("no certified proof within 20 s");
}
