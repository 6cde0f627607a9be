#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Transaction outcomes are proven (issue 12 §3): each block header commits to its receipts'
//! outcomes, and a client checks "finalized at height h with outcome o" against a certified
//! header. One lying validator (claiming Sequenced for a transaction that failed, a stale
//! failure for a commit that was sequenced, another height, or another transaction's proof) is
//! caught and the client takes the true outcome from an honest one; with only liars nothing is
//! believed. A commit refused as stale (topic writes at a taken position are never included)
//! is proven stale by the topic's proven handshake count.
//! Real ledgers, driven block by block; real servers and fake ones on 127.0.0.1 over the real
//! channel.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

mod support;

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::light::{LightClient, LightError};
use cairn_ledger::outcome_proof::{self, OutcomeProof};
use cairn_ledger::rpc::protocol::{Request, Response};
use cairn_ledger::rpc::server::{answer, serve};
use cairn_ledger::rpc::{ClientError, LedgerClient, RemoteOutcome, RemoteStatus};
use cairn_ledger::tx::{TopicTx, Tx, TxBody, TxError, TxId};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};
use commonware_cryptography::ed25519;
use support::{accept, finalize, identity, read_frame, write_frame};

const CONV: [u8; 32] = [9; 32];

fn user() -> SigningKey {
    SigningKey::from_bytes(&[44; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// A ledger with three finalized blocks:
/// 1 (certified): `sequenced` (first handshake of the topic, a topic write) and `stale` (a
///   transfer to oneself: included, its effect failed);
/// 2 (no certificate of its own): `late`, a transfer;
/// 3 (certified): a transfer.
struct Chain {
    g: Genesis,
    keys: Vec<ed25519::PrivateKey>,
    ledger: Ledger,
    sequenced: TxId,
    stale: TxId,
    late: TxId,
    /// The RPC listeners at the genesis addresses, for the first [`cluster`] (later ones serve
    /// reads from other addresses, under another chain id, so they cannot submit).
    listeners: std::sync::Mutex<Vec<TcpListener>>,
}

fn chain() -> Chain {
    let u = user();
    let (mut g, keys) = Genesis::local("outcome-proofs", 4, 29800, vec![(id(&u), u64::MAX / 4)]).unwrap();
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    for (v, l) in g.validators.iter_mut().zip(&listeners) {
        v.rpc = l.local_addr().unwrap().into();
    }
    let ledger = Ledger::new(&g).unwrap();
    let c = g.chain_id();
    let sign = |nonce: u64, body: TxBody| Tx::sign(c, id(&u), &u, nonce, body).encode();
    let to = id(&SigningKey::from_bytes(&[45; 32]));
    let block = |txs: Vec<Vec<u8>>, certify: bool| {
        let ids: Vec<TxId> = txs.iter().map(|t| ledger.submit(t.clone()).unwrap()).collect();
        let s = ledger.status();
        let p = ledger.propose(&s.digest, s.height).unwrap().expect("a proposal on the tip");
        assert_eq!(p.block.txs.len(), txs.len(), "dropped: {:?}", p.dropped);
        let header = p.block.header;
        ledger.finalize(Arc::new(p.block));
        assert_eq!(ledger.status().height, s.height + 1, "faults: {:?}", ledger.faults());
        if certify {
            ledger.record_finalization(header.digest(), finalize(&g, &keys, &[0, 1, 2], &header));
        }
        ids
    };
    let b1 = block(
        vec![
            TopicTx::handshake_as_founder(&CONV, &c, 0, b"commit A".to_vec()).mined(&g.params),
            sign(0, TxBody::Transfer { to: id(&u), amount: 1 }),
        ],
        true,
    );
    let b2 = block(vec![sign(1, TxBody::Transfer { to, amount: 7 })], false);
    block(vec![sign(2, TxBody::Transfer { to, amount: 8 })], true);
    let listeners = std::sync::Mutex::new(listeners);
    Chain { g, keys, ledger, sequenced: b1[0], stale: b1[1], late: b2[0], listeners }
}

fn topic() -> Topic {
    Topic::for_conversation(&CONV)
}

fn stale_code() -> u8 {
    TxError::StaleSequence { after: 0, current: 0 }.code()
}

/// How a lying validator rewrites the honest answer to a status or an outcome-proof request.
type Lie = fn(&Chain, &Request, Response) -> Response;

/// Serves `c`'s ledger as each validator on its own loopback port: validator `i` honestly, or
/// rewriting its answers with `lies[i]`. Returns a client of the genesis with those addresses.
fn cluster(c: &Arc<Chain>, lies: [Option<Lie>; 4]) -> LedgerClient {
    let mut g = c.g.clone();
    let mut listeners = std::mem::take(&mut *c.listeners.lock().unwrap());
    if listeners.is_empty() {
        listeners = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        for (v, l) in g.validators.iter_mut().zip(&listeners) {
            v.rpc = l.local_addr().unwrap().into();
        }
    }
    for (i, (listener, lie)) in listeners.into_iter().zip(lies).enumerate() {
        let id = identity(&g, &c.keys, i);
        let Some(lie) = lie else {
            let ledger = c.ledger.clone();
            std::thread::spawn(move || serve(listener, ledger, id));
            continue;
        };
        let c = Arc::clone(c);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let (c, id) = (Arc::clone(&c), id.clone());
                std::thread::spawn(move || {
                    let Some(mut s) = accept(s, &id) else { return };
                    while let Some(body) = read_frame(&mut s) {
                        let req = Request::decode(&body).unwrap();
                        let out = lie(&c, &req, answer(&c.ledger, req.clone()));
                        if !write_frame(&mut s, &out.encode()) {
                            return;
                        }
                    }
                });
            }
        });
    }
    LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5))
}

/// Replaces the outcome in both the status and the proof (the proof keeps its honest path).
fn with_outcome(resp: Response, fake: RemoteOutcome) -> Response {
    match resp {
        Response::TxStatus(RemoteStatus::Finalized { height, .. }) => {
            Response::TxStatus(RemoteStatus::Finalized { height, outcome: fake })
        }
        Response::OutcomeProof(Some(mut p)) => {
            p.outcome = fake;
            Response::OutcomeProof(Some(p))
        }
        other => other,
    }
}

fn claims_sequenced(_: &Chain, _: &Request, resp: Response) -> Response {
    with_outcome(resp, RemoteOutcome::Sequenced { topic: topic(), seq: 1 })
}

fn claims_stale(_: &Chain, _: &Request, resp: Response) -> Response {
    let fake = RemoteOutcome::Failed {
        code: stale_code(),
        message: TxError::StaleSequence { after: 0, current: 0 }.to_string(),
        stale: Some((0, 0)),
    };
    with_outcome(resp, fake)
}

/// Claims the opposite outcome: Sequenced for a failure, a stale failure for a sequenced one.
fn flips(c: &Chain, req: &Request, resp: Response) -> Response {
    let failed = match &resp {
        Response::TxStatus(RemoteStatus::Finalized { outcome, .. }) => {
            matches!(outcome, RemoteOutcome::Failed { .. })
        }
        Response::OutcomeProof(Some(p)) => matches!(p.outcome, RemoteOutcome::Failed { .. }),
        _ => return resp,
    };
    if failed { claims_sequenced(c, req, resp) } else { claims_stale(c, req, resp) }
}

/// Status at another height with an honest proof: its own proof contradicts it.
fn claims_other_height(_: &Chain, _: &Request, resp: Response) -> Response {
    match resp {
        Response::TxStatus(RemoteStatus::Finalized { height, outcome }) => {
            Response::TxStatus(RemoteStatus::Finalized { height: height + 2, outcome })
        }
        other => other,
    }
}

/// A proof whose header claims another height (so the certificate is for another block).
fn proves_other_height(_: &Chain, _: &Request, resp: Response) -> Response {
    match resp {
        Response::OutcomeProof(Some(mut p)) => {
            p.headers[0].height += 2;
            Response::OutcomeProof(Some(p))
        }
        other => other,
    }
}

/// Serves the (valid) proof of the other transaction of block 1.
fn proves_another_tx(c: &Chain, req: &Request, resp: Response) -> Response {
    match req {
        Request::OutcomeProof(t) => {
            let other = if *t == c.sequenced { c.stale } else { c.sequenced };
            Response::OutcomeProof(outcome_proof::prove(&c.ledger, &other))
        }
        _ => resp,
    }
}

fn truth(c: &Chain) -> [(TxId, (u64, RemoteOutcome)); 2] {
    [
        (c.sequenced, (1, RemoteOutcome::Sequenced { topic: topic(), seq: 0 })),
        (
            c.stale,
            (
                1,
                RemoteOutcome::Failed {
                    code: TxError::SelfTransfer.code(),
                    message: TxError::SelfTransfer.to_string(),
                    stale: None,
                },
            ),
        ),
    ]
}

#[test]
fn honest_proofs_verify_for_every_outcome_and_a_block_without_its_own_certificate() {
    let c = chain();
    let lc = LightClient::new(&c.g).unwrap();
    for (tx, expected) in truth(&c) {
        let p = outcome_proof::prove(&c.ledger, &tx).expect("a proof of a finalized transaction");
        assert_eq!(p.headers.len(), 1, "block 1 has its own certificate");
        let p = OutcomeProof::decode(&p.encode()).unwrap();
        assert_eq!(lc.verify_outcome(&tx, &p).unwrap(), expected);
    }
    // block 2 is finalized only as block 3's ancestor: its proof carries both headers
    let p = outcome_proof::prove(&c.ledger, &c.late).unwrap();
    assert_eq!(p.headers.iter().map(|h| h.height).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(lc.verify_outcome(&c.late, &p).unwrap(), (2, RemoteOutcome::Applied));
    // ... a broken chain of headers is refused
    let mut broken = p.clone();
    broken.headers[1].parent[0] ^= 1;
    assert!(matches!(
        lc.verify_outcome(&c.late, &broken),
        Err(LightError::BadOutcomeProof(_) | LightError::WrongBlock)
    ));
    let mut cut = p.clone();
    cut.headers.pop();
    assert!(matches!(lc.verify_outcome(&c.late, &cut), Err(LightError::WrongBlock)));
    // an unknown transaction has no proof
    assert!(outcome_proof::prove(&c.ledger, &TxId([1; 32])).is_none());

    // each part of a proof matters
    let good = outcome_proof::prove(&c.ledger, &c.stale).unwrap();
    let mut wrong_index = good.clone();
    wrong_index.index = 0;
    assert!(lc.verify_outcome(&c.stale, &wrong_index).is_err());
    let mut wrong_path = good.clone();
    wrong_path.path[0][3] ^= 4;
    assert!(lc.verify_outcome(&c.stale, &wrong_path).is_err());
    let mut wrong_cert = good.clone();
    wrong_cert.finalization = finalize(&c.g, &c.keys, &[0, 1, 2], &c.ledger.header(3).unwrap());
    assert!(matches!(lc.verify_outcome(&c.stale, &wrong_cert), Err(LightError::WrongBlock)));
    let mut swapped = good.clone();
    swapped.outcome = RemoteOutcome::Sequenced { topic: topic(), seq: 1 };
    assert!(matches!(lc.verify_outcome(&c.stale, &swapped), Err(LightError::BadOutcomeProof(_))));
    assert!(lc.verify_outcome(&c.sequenced, &good).is_err(), "another transaction's proof");
}

#[test]
fn honest_validators_give_proven_outcomes() {
    let c = Arc::new(chain());
    let mut client = cluster(&c, [None; 4]);
    for (tx, expected) in truth(&c) {
        assert_eq!(client.wait_final(&tx, Duration::from_secs(10)).unwrap(), expected);
        assert_eq!(client.outcome_proof_at(2, &tx).unwrap(), Some(expected));
    }
    assert_eq!(client.wait_final(&c.late, Duration::from_secs(10)).unwrap(), (2, RemoteOutcome::Applied));
    assert_eq!(client.outcome_proof_at(0, &TxId([1; 32])).unwrap(), None);
    assert!((0..4).all(|i| !client.is_suspect(i)));
}

#[test]
fn one_lying_validator_is_caught_and_the_true_outcome_comes_from_an_honest_one() {
    let c = Arc::new(chain());
    let lies: [(&str, Lie); 5] = [
        ("claims Sequenced", claims_sequenced),
        ("claims a stale failure", claims_stale),
        ("claims another height", claims_other_height),
        ("proves another height", proves_other_height),
        ("proves another transaction", proves_another_tx),
    ];
    for (name, lie) in lies {
        for (tx, expected) in truth(&c) {
            let mut client = cluster(&c, [Some(lie), None, None, None]);
            let got = client.wait_final(&tx, Duration::from_secs(10)).unwrap();
            assert_eq!(got, expected, "{name}");
            // every lie differs from the truth here (the fake Sequenced is at position 1, the
            // fake stale failure names current 0), and the liar is asked first
            assert!(client.is_suspect(0), "{name}: the liar is caught");
            assert!((1..4).all(|i| !client.is_suspect(i)), "{name}");
            // asked last from now on: the next read is answered by an honest validator
            assert_eq!(client.wait_final(&tx, Duration::from_secs(10)).unwrap(), expected, "{name}");
        }
    }
}

#[test]
fn with_only_liars_no_outcome_is_believed() {
    let c = Arc::new(chain());
    let mut client = cluster(&c, [Some(claims_sequenced as Lie); 4]);
    let r = client.wait_final(&c.stale, Duration::from_millis(1_500));
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    assert!((0..4).all(|i| client.is_suspect(i)));
    let r = client.outcome_proof_at(1, &c.stale);
    assert!(matches!(r, Err(ClientError::Light(LightError::BadOutcomeProof(_)))), "{r:?}");
}

/// Proposes, finalizes and certifies a block whenever `c`'s mempool holds transactions, for at
/// most `secs` seconds (a one-node stand-in for consensus).
fn produce_blocks(c: &Arc<Chain>, secs: u64) {
    let c = Arc::clone(c);
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            if c.ledger.mempool_len() > 0 {
                let s = c.ledger.status();
                if let Ok(Some(p)) = c.ledger.propose(&s.digest, s.height) {
                    let header = p.block.header;
                    c.ledger.finalize(Arc::new(p.block));
                    c.ledger
                        .record_finalization(header.digest(), finalize(&c.g, &c.keys, &[0, 1, 2], &header));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn the_commit_sequencer_is_told_the_proven_outcome_whatever_the_first_validator_says() {
    use cairn_ledger::rpc::LedgerSequencer;
    use cairn_proto::sequencer::{CommitSequencer as _, SequencerError, TopicKeys};

    let c = Arc::new(chain());
    produce_blocks(&c, 60);
    let keys = || TopicKeys { seed: cairn_proto::id::founder_seed(&CONV), next: None };
    // validator 0 flips every outcome: one that was sequenced "failed as stale" (the member
    // would drop a commit the others applied). A commit on a taken position is refused by
    // every validator and proven stale by the topic's proven count, whatever anyone claims.
    let client = cluster(&c, [Some(flips as Lie), None, None, None]);
    let mut seq = LedgerSequencer::new(client).with_timeout(Duration::from_secs(20));
    let r = seq.submit(topic(), 0, b"commit C on a stale epoch".to_vec(), keys());
    assert!(matches!(r, Err(SequencerError::Stale { after: 0, current: 1 })), "{r:?}");

    assert_eq!(seq.submit(topic(), 1, b"commit D".to_vec(), keys()).unwrap(), 1);
    assert_eq!(c.ledger.handshakes(&topic(), 0, 10), vec![b"commit A".to_vec(), b"commit D".to_vec()]);
}
