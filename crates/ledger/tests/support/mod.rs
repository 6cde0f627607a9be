//! Small helpers shared by the RPC and light-client tests: certificates signed by chosen
//! validators, and the RPC's length-prefixed frames for fake validators.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Read as _;
use std::net::TcpStream;

use cairn_ledger::block::Header;
use cairn_ledger::genesis::{CONSENSUS_NAMESPACE, Genesis};
use cairn_ledger::light::LedgerFinalization;
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

/// `body` as one RPC frame (big-endian `u32` length, then the bytes).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The next frame a client sent a fake validator; `None` once the connection ends.
pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}
