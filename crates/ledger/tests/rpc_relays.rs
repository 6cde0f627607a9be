#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The ledger client through relays (issue 17 §1), on 127.0.0.1: a validator whose genesis
//! address cannot be dialled is reached through a relay; a relay that changes bytes (in the
//! handshake or after it) makes the channel fail, is blamed, and the client takes another
//! relay, never believing a forged answer nor suspecting the validator; with relays only, the
//! client never dials the validator's address. The relays here are stand-ins for
//! `cairn_net`'s ledger relay (a thread piping bytes), so only the client's side is under test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_ledger::core::Ledger;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::noise::REPLY_BYTES;
use cairn_ledger::rpc::{ClientError, LedgerClient, Pipe, Relays, RpcIdentity, serve};
use commonware_codec::DecodeExt as _;
use commonware_cryptography::{Signer as _, ed25519};

fn validator_key() -> ed25519::PrivateKey {
    ed25519::PrivateKey::decode(vec![61u8; 32]).unwrap()
}

/// A one-validator genesis listing `rpc` as the validator's address.
fn genesis(rpc: SocketAddr) -> Genesis {
    let (mut g, _) = Genesis::local("relays", 1, 29700, Vec::new()).unwrap();
    g.validators[0].rpc = rpc.into();
    g.validators[0].key = validator_key().public_key();
    g
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The validator's RPC server for `g`, listening on a fresh port (not necessarily the one the
/// genesis lists): its real address.
fn serve_for(g: &Genesis) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let ledger = Ledger::new(g).unwrap();
    let id = RpcIdentity::new(&validator_key(), g.chain_id()).unwrap();
    std::thread::spawn(move || serve(listener, ledger, id));
    addr
}

/// How a stand-in relay treats the bytes from the validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Honest,
    /// Flips every byte from this offset on.
    FlipsFrom(usize),
    /// Refuses every stream.
    Refuses,
}

/// Stand-in relays: each named peer pipes to `to` (the validator's real address).
#[derive(Debug)]
struct Stand {
    to: SocketAddr,
    direct_first: bool,
    peers: Vec<(String, Kind)>,
    opened: Mutex<Vec<String>>,
    blamed: Mutex<Vec<String>>,
}

impl Stand {
    fn new(to: SocketAddr, direct_first: bool, peers: &[(&str, Kind)]) -> Arc<Self> {
        Arc::new(Self {
            to,
            direct_first,
            peers: peers.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect(),
            opened: Mutex::new(Vec::new()),
            blamed: Mutex::new(Vec::new()),
        })
    }
}

/// Copies `from` to `to`, flipping bytes from offset `flip_from`, until either side ends.
fn copy(mut from: impl std::io::Read, mut to: impl std::io::Write, flip_from: Option<usize>) {
    let mut buf = [0u8; 4096];
    let mut seen = 0usize;
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Some(f) = flip_from {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                if seen + i >= f {
                    *b ^= 0x5a;
                }
            }
        }
        seen += n;
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Relays for Stand {
    fn direct_first(&self) -> bool {
        self.direct_first
    }

    fn peers(&self) -> Vec<String> {
        let blamed = self.blamed.lock().unwrap().clone();
        let (mut good, bad): (Vec<String>, Vec<String>) =
            self.peers.iter().map(|(n, _)| n.clone()).partition(|n| !blamed.contains(n));
        good.extend(bad);
        good
    }

    fn open(&self, peer: &str, _: &[u8; 32], _: &[u8; 32], _: Instant) -> Result<Box<dyn Pipe>, String> {
        self.opened.lock().unwrap().push(peer.to_owned());
        let kind = self.peers.iter().find(|(n, _)| n == peer).map(|(_, k)| *k).ok_or("no such peer")?;
        let flip = match kind {
            Kind::Refuses => return Err("refused: busy".into()),
            Kind::Honest => None,
            Kind::FlipsFrom(at) => Some(at),
        };
        let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(self.to).map_err(|e| e.to_string())?;
        let (up_from, up_to) = (theirs.try_clone().unwrap(), tcp.try_clone().unwrap());
        std::thread::spawn(move || {
            copy(up_from, &up_to, None);
            let _ = up_to.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            copy(&tcp, &theirs, flip);
            let _ = theirs.shutdown(std::net::Shutdown::Both);
        });
        Ok(Box::new(mine))
    }

    fn blame(&self, peer: &str) {
        self.blamed.lock().unwrap().push(peer.to_owned());
    }
}

fn client(g: &Genesis, relays: Option<Arc<Stand>>) -> LedgerClient {
    let c = LedgerClient::new(g).unwrap().with_timeout(Duration::from_secs(3));
    match relays {
        Some(r) => c.with_relays(r),
        None => c,
    }
}

#[test]
fn a_validator_that_cannot_be_dialled_answers_through_a_relay() {
    let g = genesis(closed_port());
    let real = serve_for(&g);
    let mut plain = client(&g, None);
    assert!(matches!(plain.status(), Err(ClientError::Unreachable(_))), "nothing listens there");

    let stand = Stand::new(real, true, &[("refusing", Kind::Refuses), ("honest", Kind::Honest)]);
    let mut c = client(&g, Some(stand.clone()));
    let status = c.status().unwrap();
    assert_eq!(status.height, 0);
    // The kept channel carries the next calls; the refusing relay was asked once at most.
    for _ in 0..5 {
        c.status().unwrap();
    }
    let opened = stand.opened.lock().unwrap().clone();
    assert_eq!(opened.iter().filter(|p| *p == "honest").count(), 1, "{opened:?}");
    assert!(!c.is_suspect(0));
}

#[test]
fn a_relay_that_changes_bytes_is_blamed_and_another_path_taken() {
    let g = genesis(closed_port());
    let real = serve_for(&g);

    // Alone, a lying relay gets no answer believed: every call fails, none returns its bytes.
    for flip in [0, REPLY_BYTES + 2 + 8] {
        let stand = Stand::new(real, true, &[("liar", Kind::FlipsFrom(flip))]);
        let mut c = client(&g, Some(stand.clone()));
        let res = c.status();
        assert!(matches!(res, Err(ClientError::Unreachable(_))), "flipping from byte {flip}: {res:?}");
        assert!(stand.blamed.lock().unwrap().contains(&"liar".to_owned()));
        assert!(!c.is_suspect(0), "the validator is not blamed for its relay");
    }

    // With an honest relay too: the liar (tried first) is blamed, the honest one answers, in
    // the same call, whether the bytes changed in the handshake or in the first answer.
    for flip in [0, REPLY_BYTES + 2 + 8] {
        let stand = Stand::new(real, true, &[("liar", Kind::FlipsFrom(flip)), ("honest", Kind::Honest)]);
        let mut c = client(&g, Some(stand.clone()));
        assert_eq!(c.status().unwrap().height, 0, "flipping from byte {flip}");
        assert_eq!(*stand.blamed.lock().unwrap(), vec!["liar".to_owned()]);
        assert_eq!(*stand.opened.lock().unwrap(), vec!["liar".to_owned(), "honest".to_owned()]);
        assert!(!c.is_suspect(0));
    }
}

#[test]
fn with_relays_only_the_validator_address_is_never_dialled() {
    // The genesis lists the real address, but the client may use relays only: with a relay
    // that refuses, nothing answers, although the address would.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let ledger = Ledger::new(&g).unwrap();
    let id = RpcIdentity::new(&validator_key(), g.chain_id()).unwrap();
    std::thread::spawn(move || serve(listener, ledger, id));
    let mut direct = client(&g, None);
    direct.status().unwrap();

    let refusing = Stand::new(addr, false, &[("refusing", Kind::Refuses)]);
    let res = client(&g, Some(refusing)).status();
    assert!(matches!(res, Err(ClientError::Unreachable(_))), "{res:?}");
    let honest = Stand::new(addr, false, &[("honest", Kind::Honest)]);
    client(&g, Some(honest.clone())).status().unwrap();
    assert_eq!(*honest.opened.lock().unwrap(), vec!["honest".to_owned()]);
}

#[test]
fn a_direct_dial_that_works_needs_no_relay() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let g = genesis(addr);
    let ledger = Ledger::new(&g).unwrap();
    let id = RpcIdentity::new(&validator_key(), g.chain_id()).unwrap();
    std::thread::spawn(move || serve(listener, ledger, id));
    let stand = Stand::new(addr, true, &[("honest", Kind::Honest)]);
    let mut c = client(&g, Some(stand.clone()));
    c.status().unwrap();
    assert!(stand.opened.lock().unwrap().is_empty());
}
