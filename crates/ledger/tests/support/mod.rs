//! Small helpers shared by the RPC and light-client tests: certificates signed by chosen
//! validators, and the RPC's encrypted channel for fake validators and raw clients.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cairn_ledger::block::Header;
use cairn_ledger::genesis::{CONSENSUS_NAMESPACE, Genesis};
use cairn_ledger::light::LedgerFinalization;
use cairn_ledger::rpc::{Channel, FRAME_MAX, RpcIdentity};
use commonware_codec::Encode as _;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::types::{Finalize, Proposal};
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::ed25519;
use commonware_cryptography::sha256::Digest;
use commonware_parallel::Sequential;
use commonware_utils::non_empty;

/// A finalization certificate over `header` signed by the validators at `signers`.
pub fn finalize(g: &Genesis, keys: &[ed25519::PrivateKey], signers: &[usize], header: &Header) -> Vec<u8> {
    let participants = g.participants().unwrap();
    let proposal =
        Proposal::new(Round::new(Epoch::zero(), View::new(5)), View::new(4), Digest(header.digest()));
    let votes: Vec<Finalize<Scheme, Digest>> = signers
        .iter()
        .map(|&i| {
            let s = Scheme::signer(CONSENSUS_NAMESPACE, participants.clone(), keys[i].clone()).unwrap();
            Finalize::sign(&s, proposal.clone()).unwrap()
        })
        .collect();
    let scheme = Scheme::verifier(CONSENSUS_NAMESPACE, participants);
    LedgerFinalization::from_finalizes(&scheme, non_empty![@&votes], &Sequential).unwrap().encode().to_vec()
}

/// Ten seconds from now: the deadline of a test's channel operation.
pub fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// The channel identity of validator `i` of `g` (whose private keys are `keys`).
pub fn identity(g: &Genesis, keys: &[ed25519::PrivateKey], i: usize) -> RpcIdentity {
    RpcIdentity::new(&keys[i], g.chain_id()).unwrap()
}

/// A fake validator's side of a connection: the handshake as `id`; `None` if it fails.
pub fn accept(s: TcpStream, id: &RpcIdentity) -> Option<Channel> {
    Channel::accept(s, id, soon()).ok()
}

/// The next frame a client sent a fake validator; `None` once the connection ends.
pub fn read_frame(ch: &mut Channel) -> Option<Vec<u8>> {
    ch.recv(FRAME_MAX, soon()).ok()
}

/// Sends one frame; `false` once the connection is gone.
pub fn write_frame(ch: &mut Channel, body: &[u8]) -> bool {
    ch.send(body, soon()).is_ok()
}

/// A raw client channel to the server of validator `i` of `g` at `addr`.
pub fn connect(addr: SocketAddr, g: &Genesis, i: usize) -> Channel {
    let s = TcpStream::connect(addr).unwrap();
    Channel::connect(s, &g.chain_id(), &g.validators[i].key, soon()).unwrap()
}
