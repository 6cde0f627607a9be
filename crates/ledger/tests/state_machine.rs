#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The pure state machine: every transaction kind, every typed refusal, and order determinism.

use cairn_ledger::params::Params;
use cairn_ledger::state::{BlockError, Machine, Outcome, StateKey};
use cairn_ledger::tx::{AnyTx, TopicBody, TopicTx, Tx, TxBody, TxError, rotation_message};
use cairn_proto::ed25519::{Signer as _, SigningKey};
use cairn_proto::{AccountId, DeviceCert, DeviceId, Id, Topic};
use proptest::prelude::*;

const CHAIN: [u8; 32] = [0xC4; 32];
/// Genesis balance of funded test accounts.
const FUNDS: u64 = 1_000_000_000;

/// The parameters of these tests: default fees, the dev faucet on.
fn params() -> Params {
    Params::dev()
}
/// The fee of the encoded transaction `t`.
fn fee(t: &[u8]) -> u64 {
    params().fee(t.len(), 0)
}

fn key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}
fn acct(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

struct W {
    m: Machine,
}

impl W {
    fn new(alloc: &[(AccountId, u64)]) -> Self {
        Self { m: Machine::genesis(CHAIN, alloc, &params()).unwrap() }
    }
    fn tx(&self, account: AccountId, k: &SigningKey, body: TxBody) -> Vec<u8> {
        let n = self.m.nonce(&k.verifying_key().to_bytes());
        Tx::sign(CHAIN, account, k, n, body).encode()
    }
    /// Runs one transaction as a one-tx block; returns its outcome or admission error.
    fn run(&mut self, account: AccountId, k: &SigningKey, body: TxBody) -> Result<Outcome, TxError> {
        let t = self.tx(account, k, body);
        self.run_raw(t)
    }
    /// Mines `t` for the chain's price and runs it as a one-tx block.
    fn topic(&mut self, t: TopicTx) -> Result<Outcome, TxError> {
        let bytes = t.mined(&params());
        self.run_raw(bytes)
    }
    fn run_raw(&mut self, t: Vec<u8>) -> Result<Outcome, TxError> {
        let (receipts, dropped) = self.m.propose_and_apply(&[t]).unwrap();
        if let Some(d) = dropped.into_iter().next() {
            return Err(d.error);
        }
        Ok(receipts.into_iter().next().unwrap().outcome)
    }
}

fn failed(o: Result<Outcome, TxError>) -> TxError {
    match o {
        Ok(Outcome::Failed(e)) => e,
        other => panic!("expected a failed outcome, got {other:?}"),
    }
}

#[test]
fn register_devices_rotation_and_typed_refusals() {
    let a = key(1);
    let ida = acct(&a);
    let mut w = W::new(&[]);
    assert_eq!(w.run(ida, &a, TxBody::RegisterAccount).unwrap(), Outcome::Applied);
    assert_eq!(failed(w.run(ida, &a, TxBody::RegisterAccount)), TxError::AccountExists);

    // someone else's key cannot register account A
    let b = key(2);
    assert_eq!(w.run(ida, &b, TxBody::RegisterAccount).unwrap_err(), TxError::UnknownSigner);

    // add a device, use it for messaging ops, it may not manage the account
    let d = key(3);
    let did = DeviceId(d.verifying_key().to_bytes());
    let cert = DeviceCert::issue(&a, did, 10);
    let add = TxBody::add_device(&CHAIN, cert, &d);
    assert_eq!(w.run(ida, &a, add.clone()).unwrap(), Outcome::Applied);
    assert_eq!(failed(w.run(ida, &a, add.clone())), TxError::DeviceExists);
    assert_eq!(w.m.account(&ida).unwrap().active_devices(), vec![did]);
    let body = TxBody::PublishKeyPackages { batch_hash: [9; 32], count: 5 };
    assert_eq!(w.run(ida, &d, body).unwrap(), Outcome::Applied);
    assert_eq!(
        w.run(ida, &d, TxBody::ClaimHandle { name: "alice".into() }).unwrap_err(),
        TxError::NeedsAccountKey
    );

    // a certificate by another account key is refused
    let e = key(4);
    let bad = DeviceCert::issue(&b, DeviceId(e.verifying_key().to_bytes()), 1);
    let bad = TxBody::add_device(&CHAIN, bad, &e);
    assert!(matches!(failed(w.run(ida, &a, bad)), TxError::BadDeviceCert(_)));

    // revoke: the device can no longer sign
    assert_eq!(w.run(ida, &a, TxBody::RevokeDevice { device: did }).unwrap(), Outcome::Applied);
    assert_eq!(failed(w.run(ida, &a, TxBody::RevokeDevice { device: did })), TxError::UnknownDevice);
    let body = TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 3 };
    assert_eq!(w.run(ida, &d, body).unwrap_err(), TxError::RevokedDevice);
    // and cannot be re-added
    assert_eq!(failed(w.run(ida, &a, add)), TxError::DeviceExists);

    // rotation needs the new key's consent
    let n = key(7);
    let nk = n.verifying_key().to_bytes();
    let forged = TxBody::RotateKey { new_key: nk, new_key_signature: [0; 64] };
    assert!(matches!(failed(w.run(ida, &a, forged)), TxError::BadRotation(_)));
    let sig = n.sign(&rotation_message(&CHAIN, &ida, &ida.0, &nk)).to_bytes();
    assert_eq!(
        w.run(ida, &a, TxBody::RotateKey { new_key: nk, new_key_signature: sig }).unwrap(),
        Outcome::Applied
    );
    assert_eq!(w.m.account(&ida).unwrap().key, nk);
    // the old key is no longer authorized; the new one is
    assert_eq!(
        w.run(ida, &a, TxBody::ClaimHandle { name: "alice".into() }).unwrap_err(),
        TxError::UnknownSigner
    );
    assert_eq!(w.run(ida, &n, TxBody::ClaimHandle { name: "alice".into() }).unwrap(), Outcome::Applied);
}

#[test]
fn nonces_replay_skip_and_signatures() {
    let a = key(1);
    let ida = acct(&a);
    let mut w = W::new(&[(ida, FUNDS)]);
    let t0 =
        Tx::sign(CHAIN, ida, &a, 0, TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 1 }).encode();
    let paid = fee(&t0);
    assert_eq!(w.run_raw(t0.clone()).unwrap(), Outcome::Applied);
    assert_eq!(w.run_raw(t0).unwrap_err(), TxError::NonceReplayed { expected: 1, got: 0 });
    let t5 = Tx::sign(CHAIN, ida, &a, 5, TxBody::RegisterAccount).encode();
    assert_eq!(w.run_raw(t5).unwrap_err(), TxError::NonceSkipped { expected: 1, got: 5 });
    // bad signature: flip a signature byte
    let mut t1 = Tx::sign(CHAIN, ida, &a, 1, TxBody::RegisterAccount).encode();
    let last = t1.len() - 1;
    t1[last] ^= 1;
    assert_eq!(w.run_raw(t1).unwrap_err(), TxError::BadSignature);
    // wrong chain
    let tc = Tx::sign([0; 32], ida, &a, 1, TxBody::RegisterAccount).encode();
    assert_eq!(w.run_raw(tc).unwrap_err(), TxError::WrongChain);
    // oversized
    assert!(matches!(
        w.run_raw(vec![0; cairn_ledger::tx::TX_BYTES_MAX + 1]).unwrap_err(),
        TxError::Oversized { .. }
    ));
    // unknown account
    let b = key(2);
    let tb = Tx::sign(CHAIN, acct(&b), &b, 0, TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 1 })
        .encode();
    assert_eq!(w.run_raw(tb).unwrap_err(), TxError::UnknownAccount);
    // a failed body still consumes the nonce (and only the nonce)
    let before = w.m.db.root();
    // (a transfer to a small-order key, which can never be an account)
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let t = w.tx(ida, &a, TxBody::Transfer { to: AccountId(weak), amount: 1 });
    let paid = paid + fee(&t);
    assert_eq!(failed(w.run_raw(t)), TxError::UnknownRecipient);
    assert_ne!(w.m.db.root(), before);
    assert_eq!(w.m.nonce(&ida.0), 2);
    // refused transactions paid nothing; admitted ones their fee, whatever their outcome
    assert_eq!(w.m.account(&ida).unwrap().balance, FUNDS - paid);
}

#[test]
fn a_block_with_an_inadmissible_tx_is_invalid() {
    let a = key(1);
    let ida = acct(&a);
    let mut m = Machine::genesis(CHAIN, &[(ida, FUNDS)], &params()).unwrap();
    let good = Tx::sign(CHAIN, ida, &a, 0, TxBody::RegisterAccount).encode();
    let replay = good.clone();
    let root = m.db.root();
    let err = m.apply_block(&[good, replay]).unwrap_err();
    assert!(matches!(err, BlockError::Tx { index: 1, error: TxError::NonceReplayed { .. } }), "{err:?}");
    assert_eq!(m.db.root(), root, "a refused block changes nothing");
}

#[test]
fn handles_are_unique_and_transferable() {
    let (a, b, c) = (key(1), key(2), key(3));
    let (ida, idb, idc) = (acct(&a), acct(&b), acct(&c));
    let mut w = W::new(&[(ida, FUNDS), (idb, FUNDS)]);
    let claim = |n: &str| TxBody::ClaimHandle { name: n.into() };
    assert_eq!(w.run(ida, &a, claim("alice")).unwrap(), Outcome::Applied);
    assert_eq!(failed(w.run(idb, &b, claim("alice"))), TxError::HandleTaken);
    assert_eq!(failed(w.run(ida, &a, claim("alice2"))), TxError::AlreadyHasHandle);
    assert_eq!(
        failed(w.run(idb, &b, TxBody::ReleaseHandle { name: "alice".into() })),
        TxError::HandleNotHeld
    );
    let xfer = |to| TxBody::TransferHandle { name: "alice".into(), to };
    assert_eq!(failed(w.run(ida, &a, xfer(idc))), TxError::UnknownRecipient);
    assert_eq!(w.run(ida, &a, xfer(idb)).unwrap(), Outcome::Applied);
    assert_eq!(w.m.account(&idb).unwrap().handle.as_deref(), Some("alice"));
    assert_eq!(
        w.m.db.get(&StateKey::Handle(cairn_ledger::handle::skeleton("alice"))).unwrap(),
        idb.0.to_vec()
    );
    assert_eq!(w.run(idb, &b, TxBody::ReleaseHandle { name: "alice".into() }).unwrap(), Outcome::Applied);
    assert!(w.m.db.get(&StateKey::Handle(cairn_ledger::handle::skeleton("alice"))).is_none());
    assert_eq!(w.run(ida, &a, claim("alice")).unwrap(), Outcome::Applied);
    // non-normalized handles never decode
    let raw =
        Tx::sign(CHAIN, ida, &a, w.m.nonce(&ida.0), TxBody::ClaimHandle { name: "Bob".into() }).encode();
    assert!(matches!(w.run_raw(raw).unwrap_err(), TxError::Malformed(_)));
}

/// Attack: an account claims a device key it does not hold, or one bound to another account.
/// Without the device key's signature the binding is refused; a second account claiming a bound
/// key (even with a consent the key gave to the first account, or on another chain) is refused
/// with `DeviceClaimed`, and the first account's binding and the key's signing rights are unchanged.
#[test]
fn a_device_claimed_by_a_second_account_is_refused() {
    let (a, m, d) = (key(1), key(2), key(3));
    let (ida, idm) = (acct(&a), acct(&m));
    let did = DeviceId(d.verifying_key().to_bytes());
    let mut w = W::new(&[(ida, FUNDS), (idm, FUNDS)]);

    // the honest binding: A certifies the device, the device consents to A on this chain
    let honest = TxBody::add_device(&CHAIN, DeviceCert::issue(&a, did, 1), &d);
    assert_eq!(w.run(ida, &a, honest.clone()).unwrap(), Outcome::Applied);
    assert_eq!(w.m.device_owner(&did.0), Some(ida));

    // M certifies A's device key without holding it: its own key cannot stand in for the device's
    let forged = TxBody::add_device(&CHAIN, DeviceCert::issue(&m, did, 2), &m);
    assert_eq!(failed(w.run(idm, &m, forged)), TxError::BadDeviceBinding);
    // nor can A's consent be replayed for M (it names A), nor a zero signature
    let TxBody::AddDevice { device_signature, .. } = honest else { panic!("not an AddDevice") };
    let replayed = TxBody::AddDevice { cert: DeviceCert::issue(&m, did, 2), device_signature };
    assert_eq!(failed(w.run(idm, &m, replayed)), TxError::BadDeviceBinding);
    let blank = TxBody::AddDevice { cert: DeviceCert::issue(&m, did, 2), device_signature: [0; 64] };
    assert_eq!(failed(w.run(idm, &m, blank)), TxError::BadDeviceBinding);
    // a consent for another chain does not bind here
    let other_chain = TxBody::add_device(&[0xAB; 32], DeviceCert::issue(&a, acct_dev(&key(4)), 3), &key(4));
    assert_eq!(failed(w.run(ida, &a, other_chain)), TxError::BadDeviceBinding);

    // even with the device's real consent to M (the device's holder colluding or the key
    // leaked), a key bound to A never serves a second account
    let claimed = TxBody::add_device(&CHAIN, DeviceCert::issue(&m, did, 2), &d);
    assert_eq!(failed(w.run(idm, &m, claimed)), TxError::DeviceClaimed);
    // nor once A revoked it (a revoked key stays bound to A)
    assert_eq!(w.run(ida, &a, TxBody::RevokeDevice { device: did }).unwrap(), Outcome::Applied);
    let claimed = TxBody::add_device(&CHAIN, DeviceCert::issue(&m, did, 3), &d);
    assert_eq!(failed(w.run(idm, &m, claimed)), TxError::DeviceClaimed);
    // nor as an account of its own
    assert_eq!(failed(w.run(AccountId(did.0), &d, TxBody::RegisterAccount)), TxError::DeviceClaimed);
    // nor may M bind another account's key as its device
    let e = key(5);
    let ide = acct(&e);
    assert_eq!(w.run(ide, &e, TxBody::RegisterAccount).unwrap(), Outcome::Applied);
    let account_as_device = TxBody::add_device(&CHAIN, DeviceCert::issue(&m, DeviceId(ide.0), 4), &e);
    assert_eq!(failed(w.run(idm, &m, account_as_device)), TxError::DeviceClaimed);

    // the first account's binding is unchanged, M has no devices
    assert_eq!(w.m.device_owner(&did.0), Some(ida));
    let rec = w.m.account(&ida).unwrap();
    assert_eq!(rec.devices.len(), 1);
    assert_eq!(rec.devices[0].device, did);
    assert!(w.m.account(&idm).unwrap().devices.is_empty());

    // honest traffic goes on: M binds a key it holds
    let mine = key(6);
    let ok = TxBody::add_device(&CHAIN, DeviceCert::issue(&m, acct_dev(&mine), 5), &mine);
    assert_eq!(w.run(idm, &m, ok).unwrap(), Outcome::Applied);
    assert_eq!(w.m.device_owner(&acct_dev(&mine).0), Some(idm));
}

fn acct_dev(k: &SigningKey) -> DeviceId {
    DeviceId(k.verifying_key().to_bytes())
}

#[test]
fn commit_sequencer_is_compare_and_swap() {
    let mut w = W::new(&[]);
    let t = Topic::for_conversation(&[8; 32]);
    let hs = |after, p: u8| TopicTx::handshake_as_founder(&[8; 32], &CHAIN, after, vec![p; 10]);
    assert_eq!(w.topic(hs(0, 1)).unwrap(), Outcome::Sequenced { topic: t, seq: 0 });
    assert_eq!(w.topic(hs(1, 2)).unwrap(), Outcome::Sequenced { topic: t, seq: 1 });
    // a taken or a future position is refused whole: never included, nothing paid
    assert_eq!(w.topic(hs(1, 3)).unwrap_err(), TxError::StaleSequence { after: 1, current: 2 });
    assert_eq!(w.topic(hs(5, 3)).unwrap_err(), TxError::StaleSequence { after: 5, current: 2 });
    // two racing submissions in one block: the first wins, the second is left out
    let x = hs(2, 4).mined(&params());
    let y = hs(2, 5).mined(&params());
    let (r, dropped) = w.m.propose_and_apply(&[x, y.clone()]).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, Outcome::Sequenced { topic: t, seq: 2 });
    assert_eq!(dropped[0].tx, Tx::id_of(&y));
    assert_eq!(dropped[0].error, TxError::StaleSequence { after: 2, current: 3 });
    // ... and a block that carries it anyway is invalid
    assert!(matches!(w.m.apply_block(&[y]), Err(BlockError::Tx { index: 0, .. })));
    // anchors only grow: an equal count (a copy) or a lower one is refused
    let anc = |count| TopicTx::anchor_as_founder(&[8; 32], &CHAIN, Id([count as u8; 32]), count);
    assert_eq!(w.topic(anc(10)).unwrap(), Outcome::Applied);
    assert_eq!(w.topic(anc(10)).unwrap_err(), TxError::AnchorRegressed { count: 10, anchored: 10 });
    assert_eq!(w.topic(anc(9)).unwrap_err(), TxError::AnchorRegressed { count: 9, anchored: 10 });
}

#[test]
fn balances_move_and_never_go_negative() {
    let (a, b) = (key(1), key(2));
    let (ida, idb) = (acct(&a), acct(&b));
    let start = 20_000;
    let mut w = W::new(&[(ida, start), (idb, u64::MAX - 1)]);
    let mut have = start;
    let t = w.tx(ida, &a, TxBody::Transfer { to: idb, amount: 1 });
    have -= fee(&t) + 1;
    assert_eq!(w.run_raw(t).unwrap(), Outcome::Applied);
    let t = w.tx(ida, &a, TxBody::Transfer { to: idb, amount: 1 });
    have -= fee(&t);
    assert_eq!(failed(w.run_raw(t)), TxError::BalanceOverflow);
    // the fee is paid before the body runs: the transfer sees the balance after it
    let before = have;
    let t = w.tx(ida, &a, TxBody::Transfer { to: idb, amount: before });
    have -= fee(&t);
    assert_eq!(failed(w.run_raw(t)), TxError::InsufficientBalance { have, need: before });
    let t = w.tx(ida, &a, TxBody::Transfer { to: ida, amount: 1 });
    have -= fee(&t);
    assert_eq!(failed(w.run_raw(t)), TxError::SelfTransfer);
    assert_eq!(w.run(idb, &b, TxBody::Transfer { to: ida, amount: 100 }).unwrap(), Outcome::Applied);
    assert_eq!(w.m.account(&ida).unwrap().balance, have + 100);
}

/// A pool of transactions from 4 accounts that touch shared state (handles, a topic, transfers).
fn tx_pool() -> Vec<Vec<u8>> {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let id = acct(k);
        let to = acct(&keys[(i + 1) % 4]);
        let bodies = vec![
            TxBody::ClaimHandle { name: format!("user{}", i % 2) },
            TxBody::Transfer { to, amount: 7 },
            TxBody::ReleaseHandle { name: format!("user{}", i % 2) },
        ];
        for (n, body) in bodies.into_iter().enumerate() {
            out.push(Tx::sign(CHAIN, id, k, n as u64, body).encode());
        }
        // topic writes, racing for positions and anchors
        let hs = TopicTx::handshake_as_founder(&[1; 32], &CHAIN, (i % 3) as u64, vec![i as u8]);
        out.push(hs.mined(&params()));
        let anchor = TopicTx::anchor_as_founder(&[2; 32], &CHAIN, Id([i as u8; 32]), (i * 3 % 5) as u64);
        out.push(anchor.mined(&params()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    /// The same transactions in the same order give the same receipts and root on two replicas,
    /// however they are split into blocks on the proposer side; and a shuffled order is applied
    /// deterministically too (two replicas agree), though it may reach a different root.
    #[test]
    fn same_txs_same_root(perm in Just((0..20usize).collect::<Vec<_>>()).prop_shuffle(), cut in 1usize..20) {
        let alloc: Vec<(AccountId, u64)> = (1..=4).map(|b| (acct(&key(b)), FUNDS)).collect();
        let pool = tx_pool();
        let order: Vec<Vec<u8>> = perm.iter().map(|&i| pool[i].clone()).collect();
        let mut m1 = Machine::genesis(CHAIN, &alloc, &params()).unwrap();
        let mut m2 = Machine::genesis(CHAIN, &alloc, &params()).unwrap();
        // replica 1 proposes in two blocks (dropping what is not admissible yet, e.g. skipped nonces)
        let (r1a, _) = m1.propose_and_apply(&order[..cut]).unwrap();
        let (r1b, _) = m1.propose_and_apply(&order[cut..]).unwrap();
        // replica 2 replays exactly the included transactions as verified blocks
        let inc = |r: &Vec<cairn_ledger::state::Receipt>| -> Vec<Vec<u8>> {
            r.iter().map(|x| order.iter().find(|t| Tx::id_of(t) == x.tx).unwrap().clone()).collect()
        };
        let r2a = m2.apply_block(&inc(&r1a)).unwrap();
        let r2b = m2.apply_block(&inc(&r1b)).unwrap();
        prop_assert_eq!(r1a, r2a);
        prop_assert_eq!(r1b, r2b);
        prop_assert_eq!(m1.db.root(), m2.db.root());
    }
}

/// Regression: pruning stale tree nodes deleted the current value of a key whose leaf had only
/// *moved* (a new key split its path), so registered accounts became "not registered" a few
/// blocks later and their transactions were refused (lost submissions in the bench).
#[test]
fn values_survive_leaf_moves_and_pruning() {
    let genesis: Vec<SigningKey> = (0..64u8).map(|i| key(100 + i)).collect();
    let alloc: Vec<(AccountId, u64)> = genesis.iter().map(|k| (acct(k), FUNDS)).collect();
    let mut w = W::new(&alloc);
    // many blocks that each create new keys (account + nonce records): existing leaves move
    for round in 0..16u8 {
        let txs: Vec<Vec<u8>> = (0..32u8)
            .map(|i| {
                let mut seed = [0xA5; 32];
                seed[0] = round;
                seed[1] = i;
                let k = SigningKey::from_bytes(&seed);
                Tx::sign(CHAIN, acct(&k), &k, 0, TxBody::RegisterAccount).encode()
            })
            .collect();
        let (receipts, dropped) = w.m.propose_and_apply(&txs).unwrap();
        assert!(dropped.is_empty(), "round {round}: {dropped:?}");
        assert_eq!(receipts.len(), 32);
    }
    // every genesis account is still there and can still transact
    for (i, k) in genesis.iter().enumerate() {
        assert_eq!(w.m.account(&acct(k)).map(|a| a.balance), Some(FUNDS), "genesis account {i} lost");
    }
    for (i, k) in genesis.iter().enumerate() {
        let to = acct(&genesis[(i + 1) % genesis.len()]);
        assert_eq!(w.run(acct(k), k, TxBody::Transfer { to, amount: 1 }).unwrap(), Outcome::Applied);
    }
}

/// Weak (small-order) keys would let anyone sign under the ZIP-215 rules: they cannot become
/// account keys.
#[test]
fn small_order_keys_cannot_register() {
    // the identity point encoding: a small-order key
    let mut weak = [0u8; 32];
    weak[0] = 1;
    assert!(!cairn_ledger::state::usable_key(&weak));
    assert!(cairn_ledger::state::usable_key(&key(9).verifying_key().to_bytes()));
}

/// Every admitted transaction pays `fee_per_byte × its encoded length`, debited from its
/// account (whichever key signed) and burned: the sum of balances falls by exactly the fees.
#[test]
fn fees_are_exact_paid_by_the_account_and_burned() {
    let (a, b, d) = (key(1), key(2), key(3));
    let (ida, idb) = (acct(&a), acct(&b));
    let mut w = W::new(&[(ida, FUNDS), (idb, FUNDS)]);
    let supply = |w: &W| w.m.account(&ida).unwrap().balance + w.m.account(&idb).unwrap().balance;
    let cert = DeviceCert::issue(&a, DeviceId(d.verifying_key().to_bytes()), 1);
    let mut burned = 0;
    let mut paid_by_a = 0;
    let txs = vec![
        (ida, a.clone(), TxBody::add_device(&CHAIN, cert, &d)),
        (ida, d.clone(), TxBody::PublishKeyPackages { batch_hash: [7; 32], count: 5 }),
        // a failed effect still pays
        (ida, a.clone(), TxBody::Deploy { code: vec![8; 100] }),
        (ida, a.clone(), TxBody::ClaimHandle { name: "alice".into() }),
        (idb, b.clone(), TxBody::Transfer { to: ida, amount: 0 }),
    ];
    for (account, k, body) in txs {
        let t = w.tx(account, &k, body);
        let f = fee(&t);
        assert_eq!(f, params().fee_per_byte * t.len() as u64);
        burned += f;
        if account == ida {
            paid_by_a += f;
        }
        w.run_raw(t).unwrap();
        assert_eq!(supply(&w), 2 * FUNDS - burned, "fees leave the supply");
    }
    // topic writes pay with work: no balance moves
    let hs = TopicTx::handshake_as_founder(&[1; 32], &CHAIN, 0, vec![7; 5000]);
    assert!(matches!(w.topic(hs).unwrap(), Outcome::Sequenced { .. }));
    assert_eq!(supply(&w), 2 * FUNDS - burned, "a topic write pays no fee");
    assert_eq!(
        w.m.account(&ida).unwrap().balance,
        FUNDS - paid_by_a,
        "the device's fees came from the account"
    );
    assert_eq!(w.m.params(), params());
}

/// On a chain without the faucet, an account that cannot pay is refused at admission with
/// [`TxError::FeeUnpaid`] (nothing changes, no nonce is consumed), and a block carrying such a
/// transaction is invalid.
#[test]
fn an_unfunded_signer_is_refused() {
    let (a, poor, rich) = (key(1), key(2), key(3));
    let no_faucet = Params { faucet: 0, ..Params::dev() };
    let mut m = Machine::genesis(CHAIN, &[(acct(&poor), 5), (acct(&rich), FUNDS)], &no_faucet).unwrap();
    let root = m.db.root();
    // a new account cannot register itself: nothing pays its fee
    let reg = Tx::sign(CHAIN, acct(&a), &a, 0, TxBody::RegisterAccount).encode();
    let need = no_faucet.fee(reg.len(), 0);
    let (_, dropped) = m.propose_and_apply(std::slice::from_ref(&reg)).unwrap();
    assert_eq!(dropped[0].error, TxError::FeeUnpaid { have: 0, need });
    assert!(dropped[0].error.to_string().contains("fund the account"));
    // a registered account whose balance is below the fee
    let t =
        Tx::sign(CHAIN, acct(&poor), &poor, 0, TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 1 })
            .encode();
    let (receipts, dropped) = m.propose_and_apply(std::slice::from_ref(&t)).unwrap();
    assert!(receipts.is_empty());
    assert_eq!(dropped[0].error, TxError::FeeUnpaid { have: 5, need: no_faucet.fee(t.len(), 0) });
    assert_eq!(m.nonce(&poor.verifying_key().to_bytes()), 0);
    assert_eq!(m.account(&acct(&poor)).unwrap().balance, 5);
    assert!(matches!(
        m.apply_block(&[t]),
        Err(BlockError::Tx { index: 0, error: TxError::FeeUnpaid { .. } })
    ));
    assert!(matches!(
        m.apply_block(&[reg]),
        Err(BlockError::Tx { index: 0, error: TxError::FeeUnpaid { .. } })
    ));
    // only empty blocks went through: the state moved by its height marker only, and the funded
    // account still transacts
    assert_ne!(m.db.root(), root);
    let ok = Tx::sign(CHAIN, acct(&rich), &rich, 0, TxBody::Transfer { to: acct(&poor), amount: 1 }).encode();
    let (receipts, dropped) = m.propose_and_apply(&[ok]).unwrap();
    assert!(dropped.is_empty());
    assert_eq!(receipts[0].outcome, Outcome::Applied);
}

/// The dev faucet credits an account once, when it registers; the registration fee comes out of
/// the credit, and a repeated registration pays its fee without a second credit.
#[test]
fn the_dev_faucet_credits_once_at_registration() {
    let a = key(1);
    let ida = acct(&a);
    let mut w = W::new(&[]);
    let reg = w.tx(ida, &a, TxBody::RegisterAccount);
    let f1 = fee(&reg);
    assert_eq!(w.run_raw(reg).unwrap(), Outcome::Applied);
    assert_eq!(w.m.account(&ida).unwrap().balance, params().faucet - f1);
    let again = w.tx(ida, &a, TxBody::RegisterAccount);
    let f2 = fee(&again);
    assert_eq!(failed(w.run_raw(again)), TxError::AccountExists);
    assert_eq!(w.m.account(&ida).unwrap().balance, params().faucet - f1 - f2);
}

/// Where the faucet is off, a new account is funded (and so created) by a transfer from a
/// funded account; it can then pay for its own writes.
#[test]
fn a_transfer_funds_and_creates_a_new_account() {
    let (rich, new) = (key(1), key(2));
    let no_faucet = Params { faucet: 0, ..Params::dev() };
    let mut m = Machine::genesis(CHAIN, &[(acct(&rich), FUNDS)], &no_faucet).unwrap();
    let give =
        Tx::sign(CHAIN, acct(&rich), &rich, 0, TxBody::Transfer { to: acct(&new), amount: 100_000 }).encode();
    let (r, _) = m.propose_and_apply(&[give]).unwrap();
    assert_eq!(r[0].outcome, Outcome::Applied);
    assert_eq!(m.account(&acct(&new)).unwrap().balance, 100_000);
    let t =
        Tx::sign(CHAIN, acct(&new), &new, 0, TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 1 })
            .encode();
    let paid = no_faucet.fee(t.len(), 0);
    let (r, dropped) = m.propose_and_apply(&[t]).unwrap();
    assert!(dropped.is_empty());
    assert_eq!(r[0].outcome, Outcome::Applied);
    assert_eq!(m.account(&acct(&new)).unwrap().balance, 100_000 - paid);
}

/// A device's `PublishKeyPackages` records its batch under `StateKey::KeyPackages(device)`, the
/// value fetchers check batches against; the newest record replaces the previous one, and the
/// account key (no device) records none.
#[test]
fn a_device_records_its_key_package_batch_hash() {
    use cairn_ledger::state::KeyPackageRecord;
    let a = key(1);
    let ida = acct(&a);
    let mut w = W::new(&[(ida, FUNDS)]);
    let d = key(3);
    let did = DeviceId(d.verifying_key().to_bytes());
    assert_eq!(
        w.run(ida, &a, TxBody::add_device(&CHAIN, DeviceCert::issue(&a, did, 1), &d)).unwrap(),
        Outcome::Applied
    );
    let rec = |w: &W| w.m.db.get(&StateKey::KeyPackages(did)).map(|b| KeyPackageRecord::decode(&b).unwrap());
    assert_eq!(rec(&w), None);
    let body = |h: u8, n: u32| TxBody::PublishKeyPackages { batch_hash: [h; 32], count: n };
    assert_eq!(w.run(ida, &a, body(1, 1)).unwrap(), Outcome::Applied);
    assert_eq!(rec(&w), None, "the account key is no device");
    assert_eq!(w.run(ida, &d, body(2, 5)).unwrap(), Outcome::Applied);
    assert_eq!(rec(&w), Some(KeyPackageRecord { batch_hash: [2; 32], count: 5 }));
    assert_eq!(w.run(ida, &d, body(3, 4)).unwrap(), Outcome::Applied);
    assert_eq!(rec(&w), Some(KeyPackageRecord { batch_hash: [3; 32], count: 4 }));
    // a revoked device records nothing more
    assert_eq!(w.run(ida, &a, TxBody::RevokeDevice { device: did }).unwrap(), Outcome::Applied);
    assert_eq!(w.run(ida, &d, body(4, 4)).unwrap_err(), TxError::RevokedDevice);
    assert_eq!(rec(&w), Some(KeyPackageRecord { batch_hash: [3; 32], count: 4 }));
}

/// Attack: squatting look-alikes of a taken handle (`a1ice`, `aiice`, `al_ice` for `alice`).
/// Each is refused with `HandleLookAlike` naming the taken handle, still pays its fee, and
/// leaves no record; an honest distinct handle is accepted; the owner keeps its display form,
/// and after a release the look-alike becomes claimable.
#[test]
fn a_look_alike_of_a_taken_handle_is_refused() {
    use cairn_ledger::handle::skeleton;
    let (a, b, c) = (key(1), key(2), key(3));
    let (ida, idb, idc) = (acct(&a), acct(&b), acct(&c));
    let mut w = W::new(&[(ida, FUNDS), (idb, FUNDS), (idc, FUNDS)]);
    let claim = |n: &str| TxBody::ClaimHandle { name: n.into() };
    assert_eq!(w.run(ida, &a, claim("alice")).unwrap(), Outcome::Applied);
    for fake in ["a1ice", "aiice", "al_ice", "a11ce", "4lice"] {
        let before = w.m.account(&idb).unwrap().balance;
        let t = w.tx(idb, &b, claim(fake));
        let cost = fee(&t);
        assert_eq!(
            failed(w.run_raw(t)),
            TxError::HandleLookAlike { taken: "alice".into() },
            "{fake} must collide with alice"
        );
        assert_eq!(w.m.account(&idb).unwrap().balance, before - cost, "the refused claim paid its fee");
        assert_eq!(w.m.account(&idb).unwrap().handle, None);
    }
    let text = TxError::HandleLookAlike { taken: "alice".into() }.to_string();
    assert!(text.contains("@alice") && text.contains("choose"), "{text}");
    // an honest distinct handle
    assert_eq!(w.run(idb, &b, claim("alex")).unwrap(), Outcome::Applied);
    assert_eq!(w.m.account(&idb).unwrap().handle.as_deref(), Some("alex"));
    // the owner keeps its display form; both spellings resolve to it
    assert_eq!(w.m.account(&ida).unwrap().handle.as_deref(), Some("alice"));
    for spelling in ["alice", "a1ice"] {
        assert_eq!(w.m.db.get(&StateKey::Handle(skeleton(spelling))).unwrap(), ida.0.to_vec());
    }
    // released, the look-alike is free (and shown as chosen)
    assert_eq!(w.run(ida, &a, TxBody::ReleaseHandle { name: "alice".into() }).unwrap(), Outcome::Applied);
    assert_eq!(w.run(idc, &c, claim("a1ice")).unwrap(), Outcome::Applied);
    assert_eq!(w.m.account(&idc).unwrap().handle.as_deref(), Some("a1ice"));
    assert_eq!(failed(w.run(ida, &a, claim("alice"))), TxError::HandleLookAlike { taken: "a1ice".into() });
}

/// A topic write signed by the authority key of `seed` (the public key of `next`'s seed, if any).
fn hs_by(topic: Topic, after: u64, payload: &[u8], seed: [u8; 32], next: Option<[u8; 32]>) -> TopicTx {
    let next = next.map(|n| SigningKey::from_bytes(&n).verifying_key().to_bytes());
    TopicTx::handshake(CHAIN, topic, after, payload.to_vec(), &seed, next)
}
fn anchor_by(topic: Topic, count: u64, seed: [u8; 32]) -> TopicTx {
    TopicTx::anchor(CHAIN, topic, Id([count as u8; 32]), count, &seed)
}

/// Issue 12 §7 "an outsider sequencing junk into a conversation" and "an anchor hijack": only
/// holders of the topic's authority keys write to it, and a removed member's key dies at the
/// first write of an epoch after its removal.
#[test]
fn only_members_write_to_a_topic_and_a_removed_member_loses_its_key() {
    let mut w = W::new(&[]);
    let conv = [9u8; 32];
    let topic = Topic::for_conversation(&conv);
    let founder = cairn_proto::id::founder_seed(&conv);
    let (k1, k2, junk) = ([11u8; 32], [12u8; 32], [66u8; 32]);

    // An outsider who sees the topic cannot found it, sequence on it or anchor on it.
    assert_eq!(w.topic(hs_by(topic, 0, b"junk", junk, None)).unwrap_err(), TxError::NotTopicAuthority);
    assert_eq!(w.topic(anchor_by(topic, 5, junk)).unwrap_err(), TxError::NotTopicAuthority);
    // The count that once broke every later anchor is refused outright.
    assert_eq!(
        w.topic(anchor_by(topic, u64::MAX, junk)).unwrap_err(),
        TxError::AnchorTooLarge { count: u64::MAX, max: 1 << 48 }
    );

    // The creator's first commit founds the topic and registers epoch 1's key.
    assert_eq!(
        w.topic(hs_by(topic, 0, b"c0", founder, Some(k1))).unwrap(),
        Outcome::Sequenced { topic, seq: 0 }
    );
    // A member's signature lifted onto other bytes does not verify.
    let TopicBody::Handshake { auth, .. } = hs_by(topic, 1, b"c1", k1, Some(k2)).body else { unreachable!() };
    let lifted = TopicTx {
        chain: CHAIN,
        body: TopicBody::Handshake { topic, after: 1, payload: b"junk".to_vec(), auth },
        work_nonce: 0,
    };
    assert_eq!(w.topic(lifted).unwrap_err(), TxError::BadTopicAuth);
    // The outsider still cannot write, whatever work it pays.
    assert_eq!(w.topic(hs_by(topic, 1, b"junk", junk, None)).unwrap_err(), TxError::NotTopicAuthority);

    // Epoch 1 (r is a member): the commit removing r registers epoch 2's key.
    assert_eq!(
        w.topic(hs_by(topic, 1, b"remove r", k1, Some(k2))).unwrap(),
        Outcome::Sequenced { topic, seq: 1 }
    );
    // Until a member writes with epoch 2's key, r's epoch-1 key still counts (members who have
    // not merged yet anchor with it): r can add a junk key under it.
    assert_eq!(
        w.topic(hs_by(topic, 2, b"junk", k1, Some(junk))).unwrap(),
        Outcome::Sequenced { topic, seq: 2 }
    );
    // The first write with epoch 2's key prunes epoch 1's key and everything r registered.
    assert_eq!(w.topic(anchor_by(topic, 10, k2)).unwrap(), Outcome::Applied);
    assert_eq!(w.topic(anchor_by(topic, 11, k1)).unwrap_err(), TxError::NotTopicAuthority);
    assert_eq!(w.topic(hs_by(topic, 3, b"junk", junk, None)).unwrap_err(), TxError::NotTopicAuthority);
    assert_eq!(w.topic(anchor_by(topic, 1 << 40, junk)).unwrap_err(), TxError::NotTopicAuthority);
    // Honest traffic goes on: anchors grow, commits are sequenced.
    assert_eq!(w.topic(anchor_by(topic, 12, k2)).unwrap(), Outcome::Applied);
    assert_eq!(w.topic(hs_by(topic, 3, b"c3", k2, None)).unwrap(), Outcome::Sequenced { topic, seq: 3 });
    let tree = w.m.db.get(&StateKey::Authority(topic)).unwrap();
    let tree = cairn_ledger::authority::AuthorityChain::decode(&tree).unwrap();
    let k2_pub = SigningKey::from_bytes(&k2).verifying_key().to_bytes();
    assert_eq!(tree.keys().copied().collect::<Vec<_>>(), vec![k2_pub]);
}

/// Issue 12 §2: a topic write names no account, no device and no nonce; it is paid by proof of
/// work over its own bytes at the chain's price per byte; and a copy of one that applied is
/// refused by its position, in any block.
#[test]
fn topic_writes_carry_no_account_pay_with_work_and_refuse_replays() {
    let (a, d) = (key(1), key(3));
    let ida = acct(&a);
    let mut w = W::new(&[(ida, FUNDS)]);
    let cert = DeviceCert::issue(&a, DeviceId(d.verifying_key().to_bytes()), 1);
    w.run(ida, &a, TxBody::add_device(&CHAIN, cert, &d)).unwrap();
    let conv = [0x5A; 32];
    let topic = Topic::for_conversation(&conv);

    // The member's commit: no account id, device key or account signature in its bytes.
    let bytes = TopicTx::handshake_as_founder(&conv, &CHAIN, 0, b"commit".to_vec()).mined(&params());
    for (what, secret) in [("account id", ida.0), ("device key", d.verifying_key().to_bytes())] {
        assert!(!bytes.windows(32).any(|x| x == secret), "the write carries the member's {what}");
    }
    assert!(matches!(AnyTx::decode(&bytes).unwrap(), AnyTx::Topic(_)));
    assert!(Tx::decode(&bytes).is_err(), "not readable as an account transaction");

    // Too little work: refused, typed, naming the work asked; nothing changes.
    let need = params().topic_work(bytes.len());
    let mut lazy = TopicTx::decode(&bytes).unwrap();
    let weak = loop {
        // a nonce whose id shows less than the price (most do)
        lazy.work_nonce = lazy.work_nonce.wrapping_add(1);
        if TopicTx::check_work(&lazy.id(), need).is_err() {
            break lazy.encode();
        }
    };
    assert!(matches!(w.run_raw(weak), Err(TxError::TopicWorkTooLow { need: n, .. }) if n == need));
    assert_eq!(w.m.db.get(&StateKey::Topic(topic)), None, "a refused write changes nothing");
    assert_eq!(w.m.db.get(&StateKey::Authority(topic)), None, "a refused write founds nothing");
    // The price grows with the size, per byte.
    let big = TopicTx::handshake_as_founder(&conv, &CHAIN, 0, vec![1; 4000]).encode();
    assert_eq!(params().topic_work(big.len()), params().topic_work_per_byte * big.len() as u64);
    assert!(params().topic_work(big.len()) > 10 * need);

    // With the work: applied; balances and nonces untouched.
    let balance = w.m.account(&ida).unwrap().balance;
    assert_eq!(w.run_raw(bytes.clone()).unwrap(), Outcome::Sequenced { topic, seq: 0 });
    assert_eq!(w.m.account(&ida).unwrap().balance, balance);
    assert_eq!(w.m.nonce(&d.verifying_key().to_bytes()), 0);

    // Replays: the same bytes, or the same write mined again, find their position taken.
    assert_eq!(w.run_raw(bytes.clone()).unwrap_err(), TxError::StaleSequence { after: 0, current: 1 });
    let mut again = TopicTx::decode(&bytes).unwrap();
    again.work_nonce = again.work_nonce.wrapping_add(1 << 40);
    assert_eq!(w.topic(again).unwrap_err(), TxError::StaleSequence { after: 0, current: 1 });
    assert!(
        matches!(w.m.apply_block(&[bytes]), Err(BlockError::Tx { .. })),
        "a block replaying it is invalid"
    );
    let anchor = TopicTx::anchor_as_founder(&conv, &CHAIN, Id([1; 32]), 4).mined(&params());
    assert_eq!(w.run_raw(anchor.clone()).unwrap(), Outcome::Applied);
    assert_eq!(w.run_raw(anchor).unwrap_err(), TxError::AnchorRegressed { count: 4, anchored: 4 });
    // The anchor record names no account either.
    let rec = w.m.db.get(&StateKey::Anchor(topic)).unwrap();
    assert_eq!(cairn_ledger::state::AnchorRecord::decode(&rec).unwrap().count, 4);
    assert!(!rec.windows(32).any(|x| x == ida.0));

    // Another chain's write is refused.
    let other = TopicTx::handshake_as_founder(&conv, &[1; 32], 1, b"x".to_vec()).mined(&params());
    assert_eq!(w.run_raw(other).unwrap_err(), TxError::WrongChain);
}
