#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! One lying validator among four (issue 12 §3, §7): it claims a transaction final at a
//! height it cannot prove (no certificate covers that header), or final while it is not. The
//! client believes only outcomes proven against a certified header, catches the liar, and
//! asks the others first from then on (tests/outcome_proofs.rs lies about outcomes of a real
//! chain). A validator that cannot prove the genesis key of its address is refused the
//! same way. Fake validators on 127.0.0.1 answer the real RPC protocol over the real channel.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod support;

use cairn_ledger::block::Header;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::outcome_proof::OutcomeProof;
use cairn_ledger::outcome_tree;
use cairn_ledger::rpc::RpcIdentity;
use cairn_ledger::rpc::{
    ClientError, LedgerClient, RemoteChainStatus, RemoteOutcome, RemoteStatus, Request, Response,
};
use cairn_ledger::tx::TxId;
use commonware_cryptography::ed25519;
use support::{accept, finalize, read_frame, write_frame};

/// The height at which the transactions are really final: only headers there are certified.
const TRUE_HEIGHT: u64 = 3;

/// The header of a one-transaction block at `height` holding `tx` with `outcome`.
fn header(height: u64, tx: &TxId, outcome: &RemoteOutcome) -> Header {
    Header {
        height,
        parent: [0; 32],
        state_root: [0; 32],
        tx_root: [0; 32],
        outcome_root: outcome_tree::root(&[outcome_tree::leaf(tx, outcome)]),
        tx_count: 1,
    }
}

/// The proof a fake validator serves for its claim: a quorum certificate exists only for the
/// header at [`TRUE_HEIGHT`], so a claim at another height carries a certificate over another
/// header.
fn proof_of(
    g: &Genesis,
    keys: &[ed25519::PrivateKey],
    tx: &TxId,
    status: &RemoteStatus,
) -> Option<OutcomeProof> {
    let RemoteStatus::Finalized { height, outcome } = status else { return None };
    let certified = header(TRUE_HEIGHT, tx, outcome);
    Some(OutcomeProof {
        headers: vec![header(*height, tx, outcome)],
        finalization: finalize(g, keys, &[1, 2, 3], &certified),
        index: 0,
        outcome: outcome.clone(),
        path: Vec::new(),
    })
}

/// How a fake validator answers a transaction's status.
type Answer = fn() -> RemoteStatus;

/// A fake validator on `listener`, proving `id`: answers `TxStatus` with `answer()`,
/// `OutcomeProof` with [`proof_of`] that answer and `Status` with height 5; counts the
/// requests it gets.
fn validator(
    listener: TcpListener,
    id: RpcIdentity,
    answer: Answer,
    asked: Arc<AtomicUsize>,
    chain: (Genesis, Vec<ed25519::PrivateKey>),
) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let (asked, id, (g, keys)) = (asked.clone(), id.clone(), chain.clone());
            std::thread::spawn(move || {
                let Some(mut s) = accept(s, &id) else { return };
                while let Some(body) = read_frame(&mut s) {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let resp = match Request::decode(&body) {
                        Ok(Request::TxStatus(_)) => Response::TxStatus(answer()),
                        Ok(Request::OutcomeProof(tx)) => {
                            Response::OutcomeProof(proof_of(&g, &keys, &tx, &answer()))
                        }
                        Ok(Request::Status) => Response::Status(RemoteChainStatus {
                            height: 5,
                            digest: [0; 32],
                            state_root: [0; 32],
                            mempool: 0,
                        }),
                        _ => Response::Error("not served by this fake".into()),
                    };
                    if !write_frame(&mut s, &resp.encode()) {
                        return;
                    }
                }
            });
        }
    });
}

fn honest() -> RemoteStatus {
    RemoteStatus::Finalized { height: TRUE_HEIGHT, outcome: RemoteOutcome::Applied }
}
fn wrong_height() -> RemoteStatus {
    RemoteStatus::Finalized { height: 9, outcome: RemoteOutcome::Applied }
}
fn pending() -> RemoteStatus {
    RemoteStatus::Pending
}

/// A client of 4 fake validators answering as `answers` say, and their request counters.
fn cluster(answers: [Answer; 4]) -> (LedgerClient, Vec<Arc<AtomicUsize>>) {
    cluster_with(answers, None)
}

/// [`cluster`], with validator 0 proving the key `impostor` instead of its genesis key.
fn cluster_with(
    answers: [Answer; 4],
    impostor: Option<commonware_cryptography::ed25519::PrivateKey>,
) -> (LedgerClient, Vec<Arc<AtomicUsize>>) {
    let (mut g, keys) = Genesis::local("liar", 4, 29700, Vec::new()).unwrap();
    let counters: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    for (v, l) in g.validators.iter_mut().zip(&listeners) {
        v.rpc = l.local_addr().unwrap().into();
    }
    for (i, (l, (a, c))) in listeners.into_iter().zip(answers.iter().zip(&counters)).enumerate() {
        let key = match (i, &impostor) {
            (0, Some(k)) => k,
            _ => &keys[i],
        };
        let chain = (g.clone(), keys.clone());
        validator(l, RpcIdentity::new(key, g.chain_id()).unwrap(), *a, c.clone(), chain);
    }
    (LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5)), counters)
}

#[test]
fn a_finality_claim_without_a_valid_proof_is_refused_and_its_validator_asked_last() {
    let (mut c, asked) = cluster([wrong_height, honest, honest, honest]);
    let got = c.wait_final(&TxId([1; 32]), Duration::from_secs(10)).unwrap();
    assert_eq!(got, (3, RemoteOutcome::Applied), "the liar answered first, the proof decided");
    assert!(c.is_suspect(0) && !c.is_suspect(1));
    // From now on the liar is asked last: a plain status call never reaches it.
    let before = asked[0].load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(c.status().unwrap().height, 5);
    }
    assert_eq!(asked[0].load(Ordering::SeqCst), before, "the caught validator was asked again");
}

#[test]
fn a_transaction_one_validator_calls_final_is_not_believed_while_the_others_wait() {
    let (mut c, _) = cluster([wrong_height, pending, pending, pending]);
    let r = c.wait_final(&TxId([2; 32]), Duration::from_millis(1_500));
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
}

#[test]
fn one_proven_answer_suffices_when_the_others_are_silent_or_behind() {
    let (mut c, _) = cluster([pending, honest, pending, pending]);
    assert_eq!(c.wait_final(&TxId([3; 32]), Duration::from_secs(10)).unwrap(), (3, RemoteOutcome::Applied));
    assert!((0..4).all(|i| !c.is_suspect(i)), "a validator that is only behind is not a liar");
}

#[test]
fn a_validator_proving_another_key_is_refused_and_the_others_answer() {
    // Validator 0's address answers with a key the genesis does not list there (a man in the
    // middle, or a validator presenting another's address): its answers would be honest, but
    // the client never sends it a request.
    let impostor = cairn_ledger::genesis::fresh_key().unwrap();
    let (mut c, asked) = cluster_with([honest, honest, honest, honest], Some(impostor));
    assert_eq!(c.wait_final(&TxId([4; 32]), Duration::from_secs(10)).unwrap(), (3, RemoteOutcome::Applied));
    assert_eq!(c.status().unwrap().height, 5);
    assert!(c.is_suspect(0) && (1..4).all(|i| !c.is_suspect(i)));
    assert_eq!(asked[0].load(Ordering::SeqCst), 0, "no request reached the unauthenticated validator");
    assert!(asked[1].load(Ordering::SeqCst) > 0);
}
