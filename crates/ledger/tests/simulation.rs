#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Seeded deterministic simulations of 4 validators running commonware simplex + marshal + the
//! ledger over a simulated network: agreement, crash tolerance, liveness loss and recovery
//! without forks, Byzantine validators, and the fork checker itself.

use std::time::Duration;

use cairn_ledger::audit::check_no_fork;
use cairn_ledger::core::TxStatus;
use cairn_ledger::params::Params;
use cairn_ledger::state::Outcome;
use cairn_ledger::tx::{AnyTx, TopicTx, Tx, TxBody, TxError};
use cairn_ledger::validator::Behaviour;
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, DeviceCert, DeviceId, Topic};
use commonware_cryptography::Signer as _;
use commonware_runtime::Clock;

mod common;
use common::*;

/// A batch of account transactions exercising several kinds.
fn workload(chain: [u8; 32], round: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..8u8 {
        let k = user(i);
        let id = AccountId(k.verifying_key().to_bytes());
        let to = AccountId(user((i + 1) % 8).verifying_key().to_bytes());
        let body = match (round + i as u64) % 2 {
            0 => TxBody::Transfer { to, amount: 1 },
            _ => TxBody::PublishKeyPackages { batch_hash: [i; 32], count: round as u32 },
        };
        out.push(Tx::sign(chain, id, &k, round, body).encode());
    }
    out
}

/// A sequencer race: three topic writes (no account) each claiming handshake position
/// `after` of one topic; at most one can take it.
fn race(chain: [u8; 32], after: u64) -> Vec<Vec<u8>> {
    (0..3u8)
        .map(|i| {
            TopicTx::handshake_as_founder(&[7; 32], &chain, after, vec![i; 32]).mined(&Params::default())
        })
        .collect()
}

/// Handshakes sequenced on the race topic at validator 0.
fn sequenced(net: &Net) -> u64 {
    net.ledger(0).unwrap().handshakes(&Topic::for_conversation(&[7; 32]), 0, 1000).len() as u64
}

#[test]
fn four_validators_finalize_identical_state() {
    for seed in [1u64, 2, 3] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                for i in 0..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                assert!(
                    net.wait_height(&ctx, &[0, 1, 2, 3], 2, Duration::from_secs(30)).await,
                    "no progress"
                );
                let chain = net.genesis.chain_id();
                let mut ids = Vec::new();
                let mut races = Vec::new();
                let mut sent = Vec::new();
                for round in 0..3 {
                    for t in workload(chain, round) {
                        ids.push(Tx::id_of(&t));
                        net.submit(&t);
                        sent.push(t);
                    }
                    for t in race(chain, sequenced(&net)) {
                        races.push(Tx::id_of(&t));
                        net.submit(&t);
                    }
                    ctx.sleep(Duration::from_millis(700)).await;
                }
                // wait until every transaction is final everywhere
                let start = ctx.current();
                loop {
                    let all = (0..N).all(|i| {
                        let l = net.ledger(i).unwrap();
                        ids.iter().all(|id| matches!(l.tx_status(id), TxStatus::Finalized { .. }))
                    });
                    if all {
                        break;
                    }
                    assert!(
                        ctx.current().duration_since(start).unwrap() < Duration::from_secs(60),
                        "txs not final"
                    );
                    ctx.sleep(Duration::from_millis(100)).await;
                }
                let target = net.heights().iter().map(|h| h.unwrap()).max().unwrap() + 2;
                assert!(net.wait_height(&ctx, &[0, 1, 2, 3], target, Duration::from_secs(30)).await);
                net.check_safety();
                // same outcomes everywhere; the sequencer gave each topic position exactly once
                let l0 = net.ledger(0).unwrap();
                let mut seqs = Vec::new();
                for id in &ids {
                    let s = l0.tx_status(id);
                    for i in 1..N {
                        assert_eq!(net.ledger(i).unwrap().tx_status(id), s);
                    }
                }
                for id in &races {
                    let s = l0.tx_status(id);
                    if let TxStatus::Finalized { outcome: Outcome::Sequenced { seq, .. }, .. } = s {
                        for i in 1..N {
                            assert_eq!(net.ledger(i).unwrap().tx_status(id), s);
                        }
                        seqs.push(seq);
                    }
                }
                seqs.sort();
                assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "handshake positions are dense");
                assert!(!seqs.is_empty());
                // identical roots at the common height
                let h = net.heights().iter().map(|h| h.unwrap()).min().unwrap();
                let roots: Vec<[u8; 32]> =
                    (0..N).map(|i| net.ledger(i).unwrap().header(h).unwrap().state_root).collect();
                assert!(roots.windows(2).all(|w| w[0] == w[1]));
                // every transaction paid exactly fee_per_byte × its length, burned, on every
                // validator: balances are the genesis funds less fees and transfers sent, plus
                // transfers received
                let fee_per_byte = net.genesis.params.fee_per_byte;
                let mut expect = [i128::from(FUNDS); 8];
                let who = |a: &AccountId| {
                    (0..8u8).position(|i| AccountId(user(i).verifying_key().to_bytes()) == *a)
                };
                for t in &sent {
                    let tx = Tx::decode(t).unwrap();
                    let from = who(&tx.account).unwrap();
                    expect[from] -= i128::from(fee_per_byte) * t.len() as i128;
                    if let TxBody::Transfer { to, amount } = tx.body {
                        expect[from] -= i128::from(amount);
                        expect[who(&to).unwrap()] += i128::from(amount);
                    }
                }
                for (i, want) in expect.iter().enumerate() {
                    let id = AccountId(user(i as u8).verifying_key().to_bytes());
                    for v in 0..N {
                        let got = net.ledger(v).unwrap().balance(&id).unwrap();
                        assert_eq!(i128::from(got), *want, "user {i} at validator {v}");
                    }
                }
                // a light-client-verifiable proof is served
                let lc = cairn_ledger::light::LightClient::new(&net.genesis).unwrap();
                let id = AccountId(user(0).verifying_key().to_bytes());
                let sp = net.ledger(0).unwrap().prove(&cairn_ledger::state::StateKey::Account(id)).unwrap();
                let sp = sp.expect("a proof at the certified tip");
                assert!(
                    lc.verify_account(&id, &sp).unwrap().is_some(),
                    "account proven absent at {}",
                    sp.header.height
                );
            })
        });
    }
}

/// Attack on 4 validators: two accounts race to bind the same device key in one block (the
/// device's holder consented to both), and a third forges a binding without the key. Every
/// validator agrees that exactly one binding lands, the other gets `DeviceClaimed`, the forgery
/// `BadDeviceBinding`, and the key's owner (proven against a certified header) is the winner.
#[test]
fn a_device_claimed_by_a_second_account_is_refused_by_every_validator() {
    run(7, |ctx| {
        Box::pin(async move {
            let mut net = Net::new(&ctx).await;
            for i in 0..N {
                net.start(&ctx, i, Behaviour::Honest).await;
            }
            assert!(net.wait_height(&ctx, &[0, 1, 2, 3], 2, Duration::from_secs(30)).await, "no progress");
            let chain = net.genesis.chain_id();
            let device = SigningKey::from_bytes(&[42; 32]);
            let did = DeviceId(device.verifying_key().to_bytes());
            let claim = |u: u8, consent: &SigningKey| {
                let k = user(u);
                let body = TxBody::add_device(&chain, DeviceCert::issue(&k, did, 1), consent);
                Tx::sign(chain, AccountId(k.verifying_key().to_bytes()), &k, 0, body).encode()
            };
            let txs = [claim(0, &device), claim(1, &device), claim(2, &user(2))];
            let ids: Vec<_> = txs.iter().map(|t| Tx::id_of(t)).collect();
            for t in &txs {
                net.submit(t);
            }
            let start = ctx.current();
            while !(0..N).all(|i| {
                let l = net.ledger(i).unwrap();
                ids.iter().all(|id| matches!(l.tx_status(id), TxStatus::Finalized { .. }))
            }) {
                assert!(ctx.current().duration_since(start).unwrap() < Duration::from_secs(60), "not final");
                ctx.sleep(Duration::from_millis(100)).await;
            }
            let outcome = |v: usize, id| match net.ledger(v).unwrap().tx_status(id) {
                TxStatus::Finalized { outcome, .. } => outcome,
                other => panic!("not final: {other:?}"),
            };
            for v in 1..N {
                for id in &ids {
                    assert_eq!(outcome(v, id), outcome(0, id), "validators disagree");
                }
            }
            let (first, second) = (outcome(0, &ids[0]), outcome(0, &ids[1]));
            let winner = match (&first, &second) {
                (Outcome::Applied, Outcome::Failed(TxError::DeviceClaimed)) => user(0),
                (Outcome::Failed(TxError::DeviceClaimed), Outcome::Applied) => user(1),
                other => panic!("exactly one binding must land: {other:?}"),
            };
            assert_eq!(outcome(0, &ids[2]), Outcome::Failed(TxError::BadDeviceBinding));
            let target = net.heights().iter().map(|h| h.unwrap()).max().unwrap() + 2;
            assert!(net.wait_height(&ctx, &[0, 1, 2, 3], target, Duration::from_secs(30)).await);
            net.check_safety();
            let key = cairn_ledger::state::StateKey::DeviceOwner(did);
            for v in 0..N {
                let p = net.ledger(v).unwrap().prove(&key).unwrap().expect("a proof at the tip");
                assert_eq!(p.value.as_deref(), Some(&winner.verifying_key().to_bytes()[..]), "owner at {v}");
            }
        })
    });
}

#[test]
fn one_crashed_validator_does_not_stop_finality() {
    for seed in [11u64, 12] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                for i in 0..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                assert!(net.wait_height(&ctx, &[0, 1, 2, 3], 3, Duration::from_secs(30)).await);
                net.crash(2);
                let h = net.heights()[0].unwrap();
                let chain = net.genesis.chain_id();
                for t in workload(chain, 0) {
                    net.submit(&t);
                }
                assert!(
                    net.wait_height(&ctx, &[0, 1, 3], h + 8, Duration::from_secs(90)).await,
                    "stalled with 3 of 4"
                );
                net.check_safety();
                // it restarts from its storage and catches up
                net.start(&ctx, 2, Behaviour::Honest).await;
                let target = net.heights()[0].unwrap() + 2;
                assert!(
                    net.wait_height(&ctx, &[0, 1, 2, 3], target, Duration::from_secs(120)).await,
                    "no catch-up"
                );
                net.check_safety();
            })
        });
    }
}

#[test]
fn two_down_halts_without_forking_and_resumes() {
    for seed in [21u64, 22] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                for i in 0..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                assert!(net.wait_height(&ctx, &[0, 1, 2, 3], 3, Duration::from_secs(30)).await);
                net.crash(1);
                net.crash(3);
                ctx.sleep(Duration::from_secs(3)).await; // let in-flight finalizations land
                let stuck = net.heights();
                ctx.sleep(Duration::from_secs(30)).await;
                assert_eq!(net.heights(), stuck, "progress without a quorum");
                net.check_safety();
                // one returns: quorum again, progress resumes and the returning one catches up
                net.start(&ctx, 1, Behaviour::Honest).await;
                let target = stuck[0].unwrap() + 4;
                assert!(
                    net.wait_height(&ctx, &[0, 1, 2], target, Duration::from_secs(120)).await,
                    "no resume"
                );
                net.check_safety();
            })
        });
    }
}

#[test]
fn byzantine_invalid_proposer_cannot_break_safety() {
    for seed in [31u64, 32] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                net.start(&ctx, 0, Behaviour::InvalidProposer).await;
                for i in 1..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                let chain = net.genesis.chain_id();
                for t in workload(chain, 0) {
                    net.submit(&t);
                }
                assert!(net.wait_height(&ctx, &[1, 2, 3], 10, Duration::from_secs(120)).await, "stalled");
                net.check_safety();
                // no finalized block carries the forged transaction: every block re-executes
                let l = net.ledger(1).unwrap();
                for h in 1..=l.status().height {
                    let b = l.block(h).unwrap();
                    for t in &b.txs {
                        if let AnyTx::Account(t) = AnyTx::decode(t).unwrap() {
                            t.verify_signature().unwrap();
                        }
                    }
                }
            })
        });
    }
}

#[test]
fn byzantine_conflicting_voter_cannot_break_safety() {
    for seed in [41u64, 42] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                net.start_conflicter(&ctx, 0).await;
                for i in 1..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                assert!(net.wait_height(&ctx, &[1, 2, 3], 8, Duration::from_secs(120)).await, "stalled");
                net.check_safety();
                let blocked = net.oracle.blocked().await.unwrap();
                let byz = net.keys[0].public_key();
                assert!(
                    blocked.iter().all(|(_, b)| *b == byz),
                    "an honest validator was blocked: {blocked:?}"
                );
            })
        });
    }
}

#[test]
fn fork_checker_catches_a_forked_history() {
    let a: Vec<[u8; 32]> = (0..6u8).map(|i| [i; 32]).collect();
    let mut b = a.clone();
    b.truncate(4);
    assert!(check_no_fork(&[a.clone(), b.clone()]).is_ok(), "a shorter honest chain is not a fork");
    b[3] = [0xFF; 32];
    let f = check_no_fork(&[a.clone(), a.clone(), b]).unwrap_err();
    assert_eq!((f.height, f.a, f.b), (3, 0, 2));
}

#[test]
fn a_restarted_validator_serves_the_same_blocks_handshakes_and_outcomes() {
    for seed in [51u64, 52] {
        run(seed, |ctx| {
            Box::pin(async move {
                let mut net = Net::new(&ctx).await;
                for i in 0..N {
                    net.start(&ctx, i, Behaviour::Honest).await;
                }
                assert!(net.wait_height(&ctx, &[0, 1, 2, 3], 2, Duration::from_secs(30)).await);
                let chain = net.genesis.chain_id();
                let mut ids = Vec::new();
                for round in 0..4 {
                    if round == 2 {
                        // validator 3 goes down with half the workload finalized
                        net.wait_final(&ctx, &ids, Duration::from_secs(60)).await;
                        net.crash(3);
                    }
                    for t in workload(chain, round) {
                        ids.push(Tx::id_of(&t));
                        net.submit(&t);
                    }
                    for t in race(chain, sequenced(&net)) {
                        net.submit(&t);
                    }
                    ctx.sleep(Duration::from_millis(700)).await;
                }
                net.wait_final(&ctx, &ids, Duration::from_secs(60)).await;
                // it comes back from its chain store and catches up
                net.start(&ctx, 3, Behaviour::Honest).await;
                let target = net.heights().iter().flatten().max().unwrap() + 2;
                assert!(net.wait_height(&ctx, &[0, 1, 2, 3], target, Duration::from_secs(120)).await);
                net.check_safety();
                let (l0, l3) = (net.ledger(0).unwrap(), net.ledger(3).unwrap());
                for id in &ids {
                    assert!(matches!(l3.tx_status(id), TxStatus::Finalized { .. }));
                    assert_eq!(l3.tx_status(id), l0.tx_status(id));
                }
                let topic = Topic::for_conversation(&[7; 32]);
                let list = l0.handshakes(&topic, 0, 1000);
                // one race per round, each at the count validator 0 had then: at least the
                // first takes its position (later ones may race a position still pending)
                assert!(!list.is_empty());
                assert_eq!(l3.handshakes(&topic, 0, 1000), list);
                let h = l0.status().height.min(l3.status().height);
                for k in 0..=h {
                    assert_eq!(l3.block(k).unwrap().id(), l0.block(k).unwrap().id());
                }
                assert_eq!(l3.header(h).unwrap().state_root, l0.header(h).unwrap().state_root);
            })
        });
    }
}
