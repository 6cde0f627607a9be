#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Handshake lists are proven: a client checks every page against the topic's hash chain
//! proven under a certified header, so one lying validator (reordering, altering, shifting or
//! garbling a topic's handshakes) is detected and the client takes the list from an honest
//! one; with only liars the read fails with `BadAnswer` instead of returning their list.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

mod support;

use cairn_ledger::chain_store::ChainStore;
use cairn_ledger::core::{Ledger, MempoolLimits};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::protocol::{HandshakePage, Request, Response};
use cairn_ledger::rpc::server::{answer, serve};
use cairn_ledger::rpc::{ClientError, LINKS_PER_REPLY_MAX, LedgerClient};
use cairn_ledger::state::TopicState;
use cairn_ledger::tx::TopicTx;
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{AccountId, Topic};
use commonware_cryptography::ed25519;
use support::{accept, finalize, identity, read_frame, write_frame};

/// The conversation whose topic the chain holds handshakes of.
const CONV: [u8; 32] = [7; 32];

/// [`CONV`]'s topic.
fn topic() -> Topic {
    Topic::for_conversation(&CONV)
}

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 120; 32])
}
fn id(k: &SigningKey) -> AccountId {
    AccountId(k.verifying_key().to_bytes())
}

/// An honest validator's ledger whose topic [`topic`] holds `n` handshakes (payload of
/// position `i`: its index as 4 bytes, then `i % 7` more bytes), every block certified.
struct Chain {
    g: Genesis,
    keys: Vec<ed25519::PrivateKey>,
    ledger: Ledger,
    payloads: Vec<Vec<u8>>,
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = (i as u32).to_be_bytes().to_vec();
    p.extend(std::iter::repeat_n(0xA5, (i % 7) as usize));
    p
}

fn chain(n: u64) -> Chain {
    chain_in(n, ChainStore::in_memory().unwrap())
}

fn chain_in(n: u64, store: ChainStore) -> Chain {
    let (g, keys, ledger, payloads) = build(n, store);
    Chain { g, keys, ledger, payloads }
}

/// The ledger of [`chain_in`] and its validator keys (not served).
fn build(n: u64, store: ChainStore) -> (Genesis, Vec<ed25519::PrivateKey>, Ledger, Vec<Vec<u8>>) {
    let signer = user(0);
    let (g, keys) = Genesis::local("handshake-proofs", 4, 29700, vec![(id(&signer), u64::MAX / 4)]).unwrap();
    // 64 writes of the one topic may wait (the default window is 4): 64 handshakes a block
    let limits = MempoolLimits { topic_window: 64, ..MempoolLimits::default() };
    let ledger = Ledger::open(&g, limits, store).unwrap();

    let chain = g.chain_id();
    let mut payloads = Vec::new();
    let mut nonce = 0u64;
    // one block per topic window, and always one block (certified)
    loop {
        let batch = (n - nonce).min(64);
        for _ in 0..batch {
            let p = payload(nonce);
            let tx = TopicTx::handshake_as_founder(&CONV, &chain, nonce, p.clone());
            assert_eq!(*tx.body.topic(), topic());
            // each write follows the one before it in the mempool: admitted against the
            // finalized count, only the first of a batch is at the count; the rest wait
            ledger.submit(tx.mined(&g.params)).unwrap();
            payloads.push(p);
            nonce += 1;
        }
        let s = ledger.status();
        let proposal = ledger.propose(&s.digest, s.height).unwrap().expect("a proposal on the tip");
        assert_eq!(proposal.block.txs.len() as u64, batch);
        let header = proposal.block.header;
        ledger.finalize(Arc::new(proposal.block));
        assert_eq!(ledger.status().height, s.height + 1, "faults: {:?}", ledger.faults());
        ledger.record_finalization(header.digest(), finalize(&g, &keys, &[0, 1, 2], &header));
        if nonce == n {
            break;
        }
    }
    assert_eq!(ledger.handshakes(&topic(), 0, n as usize + 1), payloads, "the honest store");
    (g, keys, ledger, payloads)
}

/// Serves `ledger` as each validator of `g` (keys `keys`) on its own loopback port, over the
/// real channel: validator `i` honestly, or lying about handshake pages with `lies[i]`.
/// Returns a client of the genesis with those addresses.
fn cluster(
    g: &Genesis,
    keys: &[ed25519::PrivateKey],
    ledger: &Ledger,
    lies: [Option<Lie>; 4],
) -> LedgerClient {
    let mut g = g.clone();
    let listeners: Vec<TcpListener> = (0..4).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    for (v, l) in g.validators.iter_mut().zip(&listeners) {
        v.rpc = l.local_addr().unwrap().into();
    }
    for (i, (l, lie)) in listeners.into_iter().zip(lies).enumerate() {
        let (id, ledger) = (identity(&g, keys, i), ledger.clone());
        match lie {
            None => drop(std::thread::spawn(move || serve(l, ledger, id))),
            Some(lie) => liar(l, id, ledger, lie),
        }
    }
    LedgerClient::new(&g).unwrap().with_timeout(Duration::from_secs(5))
}

/// A client of `c`'s chain whose first validator lies with `first` (the others are honest).
fn client(c: &Chain, first: Option<Lie>) -> LedgerClient {
    cluster(&c.g, &c.keys, &c.ledger, [first, None, None, None])
}

/// A client of `c`'s chain whose validators all lie with `lie`.
fn only_liars(c: &Chain, lie: Lie) -> LedgerClient {
    cluster(&c.g, &c.keys, &c.ledger, [Some(lie); 4])
}

/// How a fake validator answers a handshake page request: from the honest answer.
type Lie = fn(&Request, HandshakePage) -> Vec<u8>;

/// A fake validator on `listener`, proving `id`, that answers everything from the honest
/// `ledger` (proofs included, so the client trusts its header) except handshake pages, which
/// it answers with `lie`.
fn liar(listener: TcpListener, id: cairn_ledger::rpc::RpcIdentity, ledger: Ledger, lie: Lie) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let (ledger, id) = (ledger.clone(), id.clone());
            std::thread::spawn(move || {
                let Some(mut s) = accept(s, &id) else { return };
                while let Some(body) = read_frame(&mut s) {
                    let req = Request::decode(&body).unwrap();
                    let out = match answer(&ledger, req.clone()) {
                        Response::HandshakePage(page) => lie(&req, page),
                        other => other.encode(),
                    };
                    if !write_frame(&mut s, &out) {
                        return;
                    }
                }
            });
        }
    });
}

fn page(p: HandshakePage) -> Vec<u8> {
    Response::HandshakePage(p).encode()
}

/// Every lie a validator might tell about a topic's handshakes.
fn lies() -> Vec<(&'static str, Lie)> {
    vec![
        ("two handshakes swapped", |_, mut p| {
            if p.payloads.len() >= 2 {
                p.payloads.swap(0, 1);
            }
            page(p)
        }),
        ("a payload altered", |_, mut p| {
            if let Some(h) = p.payloads.first_mut() {
                h[0] ^= 1;
            }
            page(p)
        }),
        ("one handshake left out", |_, mut p| {
            if p.payloads.len() >= 2 {
                p.payloads.remove(1);
            }
            page(p)
        }),
        ("a handshake added", |_, mut p| {
            p.payloads.push(b"forged commit".to_vec());
            page(p)
        }),
        ("list shifted by one with a matching start value", |req, mut p| {
            // start at the chain value after the first handshake and serve from the second:
            // every hash checks out, but each handshake is claimed one position early
            if let (Request::HandshakePage { .. }, Some(first)) = (req, p.payloads.first()) {
                p.start = TopicState::chain_step(&p.start, &TopicState::link(first));
                p.payloads.remove(0);
            }
            page(p)
        }),
        ("forged payloads with their own links", |_, mut p| {
            p.payloads = vec![b"forged".to_vec()];
            p.links.truncate(0);
            page(p)
        }),
        ("an empty page", |_, _| page(HandshakePage::default())),
        ("the old unproven answer", |_, p| Response::Handshakes(p.payloads).encode()),
        ("garbage bytes", |_, _| vec![2, 12, 0xFF, 0xFF, 0xFF]),
        ("an oversized count", |_, p| {
            let mut b = page(p);
            b[34] = 0xFF;
            b[35] = 0xFF;
            b
        }),
    ]
}

#[test]
fn honest_pages_verify_from_any_position() {
    let c = chain(20);
    let mut cl = client(&c, None);
    assert_eq!(cl.handshakes(&topic(), 0, 100).unwrap(), c.payloads);
    assert_eq!(cl.handshakes(&topic(), 5, 4).unwrap(), c.payloads[5..9].to_vec());
    assert_eq!(cl.handshakes(&topic(), 13, 100).unwrap(), c.payloads[13..].to_vec());
    assert_eq!(cl.handshakes(&topic(), 19, 1).unwrap(), c.payloads[19..].to_vec());
    assert!(cl.handshakes(&topic(), 20, 10).unwrap().is_empty(), "nothing after the proven count");
    assert!(cl.handshakes(&topic(), u64::MAX, 10).unwrap().is_empty());
    assert!(cl.handshakes(&topic(), 0, 0).unwrap().is_empty());
    assert!(cl.handshakes(&Topic([8; 32]), 0, 10).unwrap().is_empty(), "a topic proven empty");
}

#[test]
fn a_page_far_from_the_head_is_checked_over_continuations() {
    // more handshakes after the page than one answer carries links for
    let n = LINKS_PER_REPLY_MAX as u64 + 300;
    let c = chain(n);
    let mut cl = client(&c, None);
    assert_eq!(cl.handshakes(&topic(), 0, 3).unwrap(), c.payloads[..3].to_vec());
    assert_eq!(cl.handshakes(&topic(), 100, 256).unwrap(), c.payloads[100..356].to_vec());
    let tail = n as usize - 10;
    assert_eq!(cl.handshakes(&topic(), tail as u64, 256).unwrap(), c.payloads[tail..].to_vec());

    // a liar that serves honest pages but drops the last link of every continuation
    let short: Lie = |req, mut p| {
        if matches!(req, Request::HandshakePage { max: 0, .. }) {
            p.links.pop();
        }
        page(p)
    };
    let mut cl = client(&c, Some(short));
    assert_eq!(cl.handshakes(&topic(), 0, 3).unwrap(), c.payloads[..3].to_vec(), "from an honest one");
    let mut cl = only_liars(&c, short);
    assert!(matches!(cl.handshakes(&topic(), 0, 3), Err(ClientError::BadAnswer(_))));
}

#[test]
fn a_lying_validator_is_detected_and_the_client_moves_on() {
    let c = chain(12);
    for (name, lie) in lies() {
        // the liar is asked first; the honest order comes from the next validator
        let mut cl = client(&c, Some(lie));
        assert_eq!(cl.handshakes(&topic(), 0, 100).unwrap(), c.payloads, "{name}");
        assert_eq!(cl.handshakes(&topic(), 4, 5).unwrap(), c.payloads[4..9].to_vec(), "{name}: mid-list");

        // with only liars, nothing is returned
        let mut cl = only_liars(&c, lie);
        for (from, max) in [(0, 100), (4, 5)] {
            let res = cl.handshakes(&topic(), from, max);
            assert!(matches!(res, Err(ClientError::BadAnswer(_))), "{name} from {from}: {res:?}");
        }
    }
}

#[test]
fn handshake_pages_round_trip_and_refuse_garbage() {
    let req = Request::HandshakePage { topic: topic(), from: 3, max: 256, until: 9 };
    assert_eq!(Request::decode(&req.encode()), Ok(req));
    let over = Request::HandshakePage { topic: topic(), from: 3, max: 257, until: 9 };
    assert!(Request::decode(&over.encode()).is_err(), "max over the reply limit");
    let p = HandshakePage { start: [1; 32], payloads: vec![vec![1, 2], vec![]], links: vec![[3; 32]; 5] };
    let resp = Response::HandshakePage(p);
    let bytes = resp.encode();
    assert_eq!(Response::decode(&bytes), Ok(resp));
    for cut in 0..bytes.len() {
        assert!(Response::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(Response::decode(&long).is_err(), "trailing bytes");
    // a link count over the limit is refused before anything is read
    let mut b = Response::HandshakePage(HandshakePage::default()).encode();
    let n = b.len();
    b[n - 2..].copy_from_slice(&u16::try_from(LINKS_PER_REPLY_MAX + 1).unwrap().to_be_bytes());
    assert!(Response::decode(&b).is_err());
}

#[test]
fn a_store_written_before_chain_values_were_kept_is_migrated_and_serves_proven_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let (g, keys, ledger, want) = build(30, ChainStore::open(&path).unwrap());
    drop(ledger);
    // Turn the file into the format-1 layout: no per-position chain values.
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let links: redb::TableDefinition<'_, ([u8; 32], u64), [u8; 64]> =
            redb::TableDefinition::new("topic_links");
        assert!(tx.delete_table(links).unwrap(), "the format-2 store keeps chain values");
        let meta: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("meta");
        tx.open_table(meta).unwrap().insert("format", 1u64.to_be_bytes().as_slice()).unwrap();
        tx.commit().unwrap();
    }
    let ledger = Ledger::open(&g, MempoolLimits::default(), ChainStore::open(&path).unwrap()).unwrap();
    let mut cl = cluster(&g, &keys, &ledger, [None; 4]);
    assert_eq!(cl.handshakes(&topic(), 0, 100).unwrap(), want);
    assert_eq!(cl.handshakes(&topic(), 17, 5).unwrap(), want[17..22].to_vec());
}
