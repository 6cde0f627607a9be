#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Topic writes in a validator's mempool (issue 12 §2): bounded per topic and in bytes with
//! typed refusals, one copy per write, proof of work that rises with load, replays answered
//! without pooling them again, and waiting writes that a competing commit passed rejected at
//! every validator.

use std::sync::Arc;

use cairn_ledger::core::{Ledger, MempoolLimits, TxStatus};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::mempool::{TOPIC_WINDOW, TOPIC_WORK_FACTOR_MAX};
use cairn_ledger::params::Params;
use cairn_ledger::state::Outcome;
use cairn_ledger::tx::{TX_BYTES_MAX, TopicTx, TxError};
use cairn_proto::Id;

fn ledger(limits: MempoolLimits) -> (Ledger, [u8; 32], Params) {
    let (g, _) = Genesis::local("topic-writes", 4, 29900, vec![]).unwrap();
    let l = Ledger::with_limits(&g, limits).unwrap();
    (l, g.chain_id(), g.params)
}

/// Proposes and finalizes one block; returns how many transactions it carried.
fn step(l: &Ledger) -> usize {
    let s = l.status();
    let p = l.propose(&s.digest, s.height).unwrap().expect("a proposal on the tip");
    let n = p.block.txs.len();
    l.finalize(Arc::new(p.block));
    assert!(l.faults().is_empty(), "{:?}", l.faults());
    n
}

/// `tx` encoded with work of at least `price` but less than twice it.
fn just_enough(mut tx: TopicTx, price: u64) -> Vec<u8> {
    loop {
        tx.mine(price, 1 << 32).unwrap();
        if TopicTx::check_work(&tx.id(), 2 * price).is_err() {
            return tx.encode();
        }
        tx.work_nonce += 1;
    }
}

#[test]
fn the_topic_window_refuses_the_fifth_and_copies_are_one_write() {
    let (l, chain, params) = ledger(MempoolLimits::default());
    let conv = [3; 32];
    let anchor = |count: u64| TopicTx::anchor_as_founder(&conv, &chain, Id([count as u8; 32]), count);
    let ids: Vec<_> =
        (1..=TOPIC_WINDOW as u64).map(|c| l.submit(anchor(c).mined(&params)).unwrap()).collect();
    assert_eq!(
        l.submit(anchor(99).mined(&params)),
        Err(TxError::TopicWindowFull { pending: TOPIC_WINDOW, max: TOPIC_WINDOW })
    );
    // another topic has its own window
    l.submit(TopicTx::anchor_as_founder(&[4; 32], &chain, Id([1; 32]), 1).mined(&params)).unwrap();
    // the same write mined under another nonce is the write already held
    let mut copy = anchor(1);
    copy.mine_for(&params, 1, 1 << 32).unwrap();
    copy.work_nonce += 1;
    copy.mine_for(&params, 1, 1 << 32).unwrap();
    assert_ne!(copy.id(), ids[0]);
    assert_eq!(l.submit(copy.encode()).unwrap(), ids[0]);
    assert_eq!(l.mempool_len(), TOPIC_WINDOW + 1);
    // one block takes them all, each topic's in position order
    assert_eq!(step(&l), TOPIC_WINDOW + 1);
    for id in &ids {
        assert!(matches!(l.tx_status(id), TxStatus::Finalized { outcome: Outcome::Applied, .. }));
    }
    // a finalized write submitted again is known by its id: not pooled again
    assert_eq!(l.submit(anchor(1).mined(&params)).unwrap(), ids[0]);
    assert_eq!(l.mempool_len(), 0);
    // under another id, its position is taken
    assert_eq!(l.submit(copy.encode()), Err(TxError::AnchorRegressed { count: 1, anchored: 4 }));
}

#[test]
fn a_commit_that_lost_its_position_is_rejected_at_every_validator() {
    let (l, chain, params) = ledger(MempoolLimits::default());
    let conv = [5; 32];
    let hs =
        |after: u64, p: &[u8]| TopicTx::handshake_as_founder(&conv, &chain, after, p.to_vec()).mined(&params);
    let a = l.submit(hs(0, b"A")).unwrap();
    let b = l.submit(hs(0, b"B")).unwrap();
    // one built on A waits for it (ahead by less than the window)
    let c = l.submit(hs(1, b"C")).unwrap();
    assert!(matches!(
        l.submit(hs(TOPIC_WINDOW as u64, b"far")),
        Err(TxError::StaleSequence { after: 4, current: 0 })
    ));
    assert_eq!(step(&l), 2);
    assert!(matches!(
        l.tx_status(&a),
        TxStatus::Finalized { outcome: Outcome::Sequenced { seq: 0, .. }, .. }
    ));
    assert!(matches!(
        l.tx_status(&c),
        TxStatus::Finalized { outcome: Outcome::Sequenced { seq: 1, .. }, .. }
    ));
    // B was left out of the block and, once A is final, rejected with the reason
    assert!(
        matches!(l.tx_status(&b), TxStatus::Rejected(TxError::StaleSequence { after: 0, .. })),
        "{:?}",
        l.tx_status(&b)
    );
    assert_eq!(l.mempool_len(), 0);
    assert_eq!(
        l.handshakes(&cairn_proto::Topic::for_conversation(&conv), 0, 10),
        vec![b"A".to_vec(), b"C".to_vec()]
    );
}

/// Two commits at one position: the one the validator received first is proposed, whatever
/// their ids. Ids are hashes of mined nonces: a proposal ordered by id would pass this test
/// with probability 2^-24.
#[test]
fn at_one_position_the_first_arrived_write_is_sequenced() {
    let (l, chain, params) = ledger(MempoolLimits::default());
    let mut firsts = Vec::new();
    for i in 0..24u8 {
        let conv = [100 + i; 32];
        let hs = |p: &[u8]| TopicTx::handshake_as_founder(&conv, &chain, 0, p.to_vec()).mined(&params);
        firsts.push((conv, l.submit(hs(b"first")).unwrap()));
        l.submit(hs(b"second")).unwrap();
    }
    assert_eq!(step(&l), 24);
    for (conv, id) in firsts {
        assert!(
            matches!(
                l.tx_status(&id),
                TxStatus::Finalized { outcome: Outcome::Sequenced { seq: 0, .. }, .. }
            ),
            "{:?}",
            l.tx_status(&id)
        );
        assert_eq!(
            l.handshakes(&cairn_proto::Topic::for_conversation(&conv), 0, 10),
            vec![b"first".to_vec()]
        );
    }
}

#[test]
fn topic_write_work_rises_with_load_and_their_bytes_are_bounded() {
    let limits = MempoolLimits { topic_bytes: TX_BYTES_MAX, ..MempoolLimits::default() };
    let (l, chain, params) = ledger(limits);
    let write = |i: u8| TopicTx::handshake_as_founder(&[i; 32], &chain, 0, vec![i; 8_000]);
    let price = params.topic_work(write(0).encode().len());
    // at the chain's price until half the room is used
    let mut i = 0u8;
    let refused = loop {
        let before = l.mempool_bytes();
        match l.submit(just_enough(write(i), price)) {
            Ok(_) => assert!(before * 2 < TX_BYTES_MAX, "admitted at the base price with {before} bytes"),
            Err(e) => {
                assert!(before * 2 >= TX_BYTES_MAX, "refused with {before} bytes waiting: {e}");
                break e;
            }
        }
        i += 1;
    };
    assert!(matches!(refused, TxError::TopicWorkTooLow { need, .. } if need == 2 * price), "{refused}");
    // more work gets in, until the bytes bound refuses whatever the work
    let mut full = None;
    for _ in 0..8 {
        let mut t = write(i);
        t.mine_for(&params, TOPIC_WORK_FACTOR_MAX, 1 << 32).unwrap();
        match l.submit(t.encode()) {
            Ok(_) => i += 1,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    assert_eq!(full, Some(TxError::TopicMempoolFull { max: TX_BYTES_MAX }));
    assert!(l.mempool_bytes() <= TX_BYTES_MAX);
    // nothing admitted is evicted: all of it finalizes
    let waiting = l.mempool_len();
    assert_eq!(step(&l), waiting);
}

mod decoding {
    use cairn_ledger::tx::{AnyTx, TopicTx};
    use cairn_proto::Id;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]
        /// The decoder of peer input never panics, and what it accepts re-encodes identically
        /// (one encoding per write).
        #[test]
        fn garbage_never_panics_and_accepted_bytes_are_canonical(
            mut data in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            data.insert(0, 2);
            if let Ok(t) = TopicTx::decode(&data) {
                prop_assert_eq!(t.encode(), data.clone());
            }
            let _ = AnyTx::decode(&data);
        }

        /// Any one byte of a valid write changed: refused, or another canonical write.
        #[test]
        fn a_changed_byte_is_refused_or_canonical(at in 0usize..400, flip in 1u8..=255, kind in 0u8..2) {
            let t = if kind == 0 {
                TopicTx::handshake_as_founder(&[1; 32], &[2; 32], 3, vec![9; 40])
            } else {
                TopicTx::anchor_as_founder(&[1; 32], &[2; 32], Id([4; 32]), 7)
            };
            let mut b = t.encode();
            let at = at % b.len();
            b[at] ^= flip;
            if let Ok(back) = TopicTx::decode(&b) {
                prop_assert_eq!(back.encode(), b);
            }
        }
    }
}
