#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Topic writes refused at admission because their position is taken are answered "rejected:
//! stale" by every validator, promptly, from a bounded record; and a topic write's member
//! signature is checked in a block unless this validator verified that very write already.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use cairn_ledger::block::Block;
use cairn_ledger::core::{Ledger, MempoolLimits, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::outcome_tree::receipts_root;
use cairn_ledger::rpc::{ClientError, LedgerClient, serve};
use cairn_ledger::state::{Mode, execute};
use cairn_ledger::tx::{TopicBody, TopicTx, Tx, TxError, TxId};
use cairn_proto::Topic;
use support::identity;

const CONV: [u8; 32] = [21; 32];

/// A founder's handshake on [`CONV`] at `after`, mined at the chain's price.
fn hs(g: &Genesis, after: u64, payload: &[u8]) -> Vec<u8> {
    TopicTx::handshake_as_founder(&CONV, &g.chain_id(), after, payload.to_vec()).mined(&g.params)
}

fn is_stale(s: &TxStatus) -> bool {
    matches!(s, TxStatus::Rejected(TxError::StaleSequence { after: 0, current: 1 }))
}

/// The failure the sequencer used to time out on: a commit B reaches three validators after
/// they finalized the competing commit A (refused at admission as stale) and one validator
/// before (admitted, then rejected once A is final there). Every validator now answers
/// "rejected: stale", so `wait_final` returns the refusal at once instead of waiting out its
/// timeout for a fourth word that never came.
#[test]
fn a_write_refused_as_stale_at_every_validator_is_reported_rejected_promptly() {
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let (mut g, keys) = Genesis::local("topic-refusals", 4, 29950, vec![]).unwrap();
    for (v, l) in g.validators.iter_mut().zip(&listeners) {
        v.rpc = l.local_addr().unwrap().into();
    }
    let ledgers: Vec<Ledger> = (0..4).map(|_| Ledger::new(&g).unwrap()).collect();
    for (i, (l, ledger)) in listeners.into_iter().zip(&ledgers).enumerate() {
        let (id, ledger) = (identity(&g, &keys, i), ledger.clone());
        std::thread::spawn(move || serve(l, ledger, id));
    }
    // A everywhere; validator 0 proposes the block carrying it
    for l in &ledgers {
        l.submit(hs(&g, 0, b"A")).unwrap();
    }
    let s = ledgers[0].status();
    let block = Arc::new(ledgers[0].propose(&s.digest, s.height).unwrap().expect("a proposal").block);
    assert_eq!(block.txs.len(), 1);
    for l in &ledgers[1..] {
        l.finalize(block.clone());
    }
    // B at the same position: admitted by validator 0 only
    let mut client = LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5));
    let b = client.submit(&hs(&g, 0, b"B")).expect("validator 0 admits it");
    assert_eq!(ledgers[0].tx_status(&b), TxStatus::Pending);
    for l in &ledgers[1..] {
        assert!(is_stale(&l.tx_status(&b)), "refused at admission, remembered: {:?}", l.tx_status(&b));
    }
    ledgers[0].finalize(block);
    assert!(is_stale(&ledgers[0].tx_status(&b)), "{:?}", ledgers[0].tx_status(&b));
    let start = Instant::now();
    let answer = client.wait_final(&b, Duration::from_secs(20));
    let stale_code = TxError::StaleSequence { after: 0, current: 0 }.code();
    assert!(matches!(&answer, Err(ClientError::Refused { code, .. }) if *code == stale_code), "{answer:?}");
    assert!(start.elapsed() < Duration::from_secs(3), "answered in {:?}", start.elapsed());
    // submitted again, it is refused by all four outright
    let again = client.submit(&hs(&g, 0, b"B"));
    assert!(matches!(&again, Err(ClientError::Refused { code, .. }) if *code == stale_code), "{again:?}");
}

#[test]
fn stale_refusals_are_remembered_within_their_bound() {
    let (g, _) = Genesis::local("topic-refusals-bound", 4, 29960, vec![]).unwrap();
    let max = 8;
    let l =
        Ledger::with_limits(&g, MempoolLimits { stale_refused: max, ..MempoolLimits::default() }).unwrap();
    l.submit(hs(&g, 0, b"A")).unwrap();
    let s = l.status();
    let p = l.propose(&s.digest, s.height).unwrap().expect("a proposal");
    l.finalize(Arc::new(p.block));
    let stale: Vec<TxId> = (0..3 * max as u32)
        .map(|i| {
            let w = hs(&g, 0, &i.to_be_bytes());
            assert_eq!(l.submit(w.clone()), Err(TxError::StaleSequence { after: 0, current: 1 }));
            assert!(l.stale_refusals() <= max);
            Tx::id_of(&w)
        })
        .collect();
    assert_eq!(l.stale_refusals(), max);
    assert!(is_stale(&l.tx_status(stale.last().unwrap())), "the newest is remembered");
    assert_eq!(l.tx_status(&stale[0]), TxStatus::Unknown, "the oldest was forgotten");
    // a handshake too far ahead is refused with the same error but may still come: not final
    let far = hs(&g, 1 + cairn_ledger::mempool::TOPIC_WINDOW as u64, b"far");
    assert!(matches!(l.submit(far.clone()), Err(TxError::StaleSequence { .. })));
    assert_eq!(l.tx_status(&Tx::id_of(&far)), TxStatus::Unknown);
    assert_eq!(l.stale_refusals(), max);
}

/// A block carrying a topic write whose member signature does not verify, with the roots it
/// would have if the signature were fine.
fn block_with_forged_write(g: &Genesis) -> (Block, Vec<u8>) {
    let TopicBody::Handshake { auth, .. } =
        TopicTx::handshake_as_founder(&CONV, &g.chain_id(), 0, b"signed".to_vec()).body
    else {
        unreachable!()
    };
    let topic = Topic::for_conversation(&CONV);
    let forged = TopicTx {
        chain: g.chain_id(),
        body: TopicBody::Handshake { topic, after: 0, payload: b"lifted".to_vec(), auth },
        work_nonce: 0,
    }
    .mined(&g.params);
    (block_of(g, vec![forged.clone()]), forged)
}

/// Block 1 over genesis carrying `txs`, executed as if every signature had been checked.
fn block_of(g: &Genesis, txs: Vec<Vec<u8>>) -> Block {
    let (machine, genesis) = g.build().unwrap();
    let ex = execute(&machine.db, Vec::new(), g.chain_id(), 1, &txs, Mode::Verify, &|_| true).unwrap();
    Block::new(1, genesis.id(), ex.layer.root, txs, receipts_root(&ex.receipts))
}

#[test]
fn a_topic_write_in_a_block_is_checked_unless_verified_here() {
    let (g, _) = Genesis::local("topic-auth-cache", 4, 29970, vec![]).unwrap();
    // never admitted here: its signature is checked, and the block refused
    let (forged_block, forged) = block_with_forged_write(&g);
    let l = Ledger::new(&g).unwrap();
    assert!(!l.verify_block(&forged_block).unwrap());
    assert_eq!(l.submit(forged), Err(TxError::BadTopicAuth), "nor admitted");
    assert!(!l.verify_block(&forged_block).unwrap(), "a refused write is not remembered");
    // a valid write never admitted here executes (checked in the block)
    let valid = block_of(&g, vec![hs(&g, 0, b"A")]);
    assert!(Ledger::new(&g).unwrap().verify_block(&valid).unwrap());
    // and one admitted here (its check remembered) gives the same block and outcome
    let l = Ledger::new(&g).unwrap();
    l.submit(hs(&g, 0, b"A")).unwrap();
    let s = l.status();
    let p = l.propose(&s.digest, s.height).unwrap().expect("a proposal").block;
    assert_eq!(p.header, valid.header);
    assert!(l.verify_block(&valid).unwrap());
}
