//! Light-client verification: trust only the genesis validator keys.
//!
//! A node serves a [`StateProof`]: a finalized header, the finalization certificate over its
//! digest (a quorum of validator signatures), a state value (or its absence) and a Jellyfish
//! Merkle proof against the header's state root. [`LightClient`] checks all three, so the node
//! serving it need not be trusted.

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::{AccountId, DeviceId};
use commonware_codec::{Decode as _, Encode as _};
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::types::Finalization;
use commonware_cryptography::sha256::Digest;
use commonware_parallel::Sequential;
use jmt::RootHash;
use thiserror::Error;

use crate::block::Header;
use crate::genesis::{Genesis, GenesisError};
use crate::state::{Account, Proof, StateKey, StoreSet};

/// Largest encoded JMT proof accepted (256 siblings of at most 65 bytes, plus the leaf).
pub const PROOF_BYTES_MAX: usize = 256 * 72 + 128;
/// Largest encoded finalization accepted.
pub const FINALIZATION_BYTES_MAX: usize = 64 * 1024;
/// Largest state value carried in a proof.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

/// The consensus finalization type used by the ledger.
pub type LedgerFinalization = Finalization<Scheme, Digest>;

/// Why a proof was refused.
#[derive(Debug, Error)]
pub enum LightError {
    /// The certificate does not decode.
    #[error("malformed finalization certificate")]
    MalformedCertificate,
    /// The certificate's signatures do not verify under the genesis validator set.
    #[error("finalization certificate does not verify under the validator set")]
    BadCertificate,
    /// The certificate is for another block.
    #[error("certificate is for another block")]
    WrongBlock,
    /// The Merkle proof does not decode.
    #[error("malformed merkle proof")]
    MalformedProof,
    /// The Merkle proof does not match the state root.
    #[error("merkle proof does not match the state root: {0}")]
    BadProof(String),
    /// The proven value does not decode.
    #[error("bad state value: {0}")]
    BadValue(#[from] DecodeError),
    /// An outcome proof does not hold (header chain, index or Merkle path).
    #[error("outcome proof does not hold: {0}")]
    BadOutcomeProof(&'static str),
    /// The genesis is unusable.
    #[error(transparent)]
    Genesis(#[from] GenesisError),
}

/// A self-contained proof of one state entry at a finalized height.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StateProof {
    /// Finalized header whose state root the proof is against.
    pub header: Header,
    /// Encoded finalization certificate over the header digest.
    pub finalization: Vec<u8>,
    /// The value, or `None` for a proof of absence.
    pub value: Option<Vec<u8>>,
    /// Borsh-encoded Jellyfish Merkle proof.
    pub proof: Vec<u8>,
}

impl StateProof {
    /// Encodes a proof of `value` at `key` with `proof`.
    pub fn new(header: Header, finalization: Vec<u8>, value: Option<Vec<u8>>, proof: &Proof) -> Self {
        let proof = borsh::to_vec(proof).unwrap_or_default();
        Self { header, finalization, value, proof }
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256 + self.proof.len());
        w.raw(&self.header.encode());
        w.bytes(&self.finalization);
        match &self.value {
            None => w.u8(0),
            Some(v) => {
                w.u8(1);
                w.bytes(v);
            }
        }
        w.bytes(&self.proof);
        w.finish()
    }

    /// Decodes a proof (structure only).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let header = Header::decode(r.take(crate::block::HEADER_BYTES, "proof.header")?)?;
        let finalization = r.bytes(FINALIZATION_BYTES_MAX, "proof.finalization")?.to_vec();
        let value = match r.u8("proof.value")? {
            0 => None,
            1 => Some(r.bytes(VALUE_BYTES_MAX, "proof.value")?.to_vec()),
            _ => return Err(DecodeError::NonCanonical { field: "proof.value", reason: "flag" }),
        };
        let proof = r.bytes(PROOF_BYTES_MAX, "proof.proof")?.to_vec();
        r.finish()?;
        Ok(Self { header, finalization, value, proof })
    }
}

/// Holds the genesis validator set and verifies headers and state proofs.
#[derive(Clone, Debug)]
pub struct LightClient {
    verifier: Scheme,
    n: usize,
}

impl LightClient {
    /// A light client for the chain of `genesis`.
    pub fn new(genesis: &Genesis) -> Result<Self, LightError> {
        Ok(Self { verifier: genesis.verifier()?, n: genesis.validators.len() })
    }

    /// Decodes and verifies a finalization certificate and returns the digest it finalizes.
    pub fn verify_finalization(&self, finalization: &[u8]) -> Result<LedgerFinalization, LightError> {
        if finalization.len() > FINALIZATION_BYTES_MAX {
            return Err(LightError::MalformedCertificate);
        }
        let fin = LedgerFinalization::decode_cfg(finalization.to_vec(), &self.n)
            .map_err(|_| LightError::MalformedCertificate)?;
        let mut rng = commonware_utils::sys_rng();
        if !fin.verify(&mut rng, &self.verifier, &Sequential) {
            return Err(LightError::BadCertificate);
        }
        Ok(fin)
    }

    /// Checks that `header` is finalized by `finalization`.
    pub fn verify_header(&self, header: &Header, finalization: &[u8]) -> Result<(), LightError> {
        let fin = self.verify_finalization(finalization)?;
        if fin.proposal.payload.0 != header.digest() {
            return Err(LightError::WrongBlock);
        }
        Ok(())
    }

    /// Verifies a state proof for `key` and returns the proven value (`None`: proven absent).
    pub fn verify(&self, key: &StateKey, p: &StateProof) -> Result<Option<Vec<u8>>, LightError> {
        self.verify_header(&p.header, &p.finalization)?;
        if p.proof.len() > PROOF_BYTES_MAX {
            return Err(LightError::MalformedProof);
        }
        let proof: Proof = borsh::from_slice(&p.proof).map_err(|_| LightError::MalformedProof)?;
        proof
            .verify(RootHash(p.header.state_root), key.hash(), p.value.as_deref())
            .map_err(|e| LightError::BadProof(e.to_string()))?;
        Ok(p.value.clone())
    }

    /// Verifies "account `id` is `Some(account)` / is not registered" and returns it.
    pub fn verify_account(&self, id: &AccountId, p: &StateProof) -> Result<Option<Account>, LightError> {
        Ok(self.verify(&StateKey::Account(*id), p)?.map(|v| Account::decode(&v)).transpose()?)
    }

    /// Verifies "account `id`'s current (active) device set is ..." and returns the set.
    pub fn verify_devices(
        &self,
        id: &AccountId,
        p: &StateProof,
    ) -> Result<Option<Vec<DeviceId>>, LightError> {
        Ok(self.verify_account(id, p)?.map(|a| a.active_devices()))
    }

    /// Verifies who holds `handle` (normalized); `None` means proven not registered.
    pub fn verify_handle(&self, handle: &str, p: &StateProof) -> Result<Option<AccountId>, LightError> {
        let v = self.verify(&StateKey::Handle(crate::handle::skeleton(handle)), p)?;
        v.map(|b| {
            <[u8; 32]>::try_from(b.as_slice()).map(AccountId).map_err(|_| {
                LightError::BadValue(DecodeError::Invalid { field: "handle owner", reason: "not 32 bytes" })
            })
        })
        .transpose()
    }

    /// Verifies "the registered store nodes are ..." (proven absent: none registered) and
    /// returns the set, which placement ranks (`cairn_net::shard::place`).
    pub fn verify_stores(&self, p: &StateProof) -> Result<StoreSet, LightError> {
        Ok(self.verify(&StateKey::Stores, p)?.map(|v| StoreSet::decode(&v)).transpose()?.unwrap_or_default())
    }

    /// Verifies that transaction `tx` is in the finalized block at the returned height with
    /// the returned outcome: the certificate finalizes the last header, each header is the
    /// parent of the next, and the path leads from `tx`'s leaf to the first header's outcome
    /// root at the proof's index.
    pub fn verify_outcome(
        &self,
        tx: &crate::tx::TxId,
        p: &crate::outcome_proof::OutcomeProof,
    ) -> Result<(u64, crate::rpc::RemoteOutcome), LightError> {
        let bad = LightError::BadOutcomeProof;
        let (Some(first), Some(last)) = (p.headers.first(), p.headers.last()) else {
            return Err(bad("no header"));
        };
        if p.headers.len() > crate::outcome_proof::HEADER_CHAIN_MAX {
            return Err(bad("too many headers"));
        }
        for pair in p.headers.windows(2) {
            if pair[1].parent != pair[0].digest() || pair[1].height != pair[0].height.wrapping_add(1) {
                return Err(bad("headers that do not form a chain"));
            }
        }
        self.verify_header(last, &p.finalization)?;
        let leaf = crate::outcome_tree::leaf(tx, &p.outcome);
        let count = u64::from(first.tx_count);
        if !crate::outcome_tree::verify(&first.outcome_root, count, u64::from(p.index), &leaf, &p.path) {
            return Err(bad("the path does not lead to the outcome root"));
        }
        Ok((first.height, p.outcome.clone()))
    }

    /// Encodes a finalization (for serving).
    pub fn encode_finalization(fin: &LedgerFinalization) -> Vec<u8> {
        fin.encode().to_vec()
    }
}
