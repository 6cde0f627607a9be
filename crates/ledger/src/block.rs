//! Blocks: a small header that commits to everything (parent, height, state root, transactions,
//! their outcomes) and the transactions themselves.
//!
//! The block digest is the hash of the header alone, so a light client holding a header and the
//! finalization certificate over its digest knows the state root without the transactions, and
//! the outcome of any of them from a Merkle path to the outcome root ([`crate::outcome_tree`]).
//!
//! Version 2 added the outcome root (version 1 headers are refused).

use bytes::BufMut;
use cairn_proto::codec::{DecodeError, Reader, Writer};
use commonware_codec::{Buf, EncodeSize, Error as CodecError, Read, ReadExt as _, Write};
use commonware_consensus::types::Height;
use commonware_consensus::{Block as ConsensusBlock, BoundedBlock, Heightable};
use commonware_cryptography::Digestible;
use commonware_cryptography::sha256::Digest;
use sha2::{Digest as _, Sha256};

use crate::tx::{TX_BYTES_MAX, Tx, TxId};

const BLOCK_VERSION: u8 = 2;
const HEADER_DOMAIN: &[u8] = b"cairn/ledger-block/v2";
const TX_ROOT_DOMAIN: &str = "cairn 2026-11 ledger tx root v1";

/// Most transactions in one block.
pub const BLOCK_TXS_MAX: usize = 8192;
/// Largest encoded block, in bytes.
pub const BLOCK_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Encoded size of a header.
pub const HEADER_BYTES: usize = 1 + 8 + 32 + 32 + 32 + 32 + 4;

/// A block header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Height (genesis is 0).
    pub height: u64,
    /// Digest of the parent header (zero for genesis).
    pub parent: [u8; 32],
    /// State root after this block's transactions.
    pub state_root: [u8; 32],
    /// Commitment to the transaction list.
    pub tx_root: [u8; 32],
    /// Root of the outcome tree over the block's receipts, in block order
    /// ([`crate::outcome_tree::receipts_root`]); every validator recomputes it.
    pub outcome_root: [u8; 32],
    /// Number of transactions.
    pub tx_count: u32,
}

impl Header {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(HEADER_BYTES);
        self.encode_to(&mut w);
        w.finish()
    }

    fn encode_to(&self, w: &mut Writer) {
        w.u8(BLOCK_VERSION);
        w.u64(self.height);
        w.raw(&self.parent);
        w.raw(&self.state_root);
        w.raw(&self.tx_root);
        w.raw(&self.outcome_root);
        w.u32(self.tx_count);
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("block", BLOCK_VERSION)?;
        Ok(Self {
            height: r.u64("block.height")?,
            parent: r.array("block.parent")?,
            state_root: r.array("block.state_root")?,
            tx_root: r.array("block.tx_root")?,
            outcome_root: r.array("block.outcome_root")?,
            tx_count: r.u32("block.tx_count")?,
        })
    }

    /// Decodes exactly one header.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let h = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(h)
    }

    /// The block digest (what consensus orders and certificates sign).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HEADER_DOMAIN);
        h.update(self.encode());
        h.finalize().into()
    }
}

/// Commitment to a transaction list: a hash over the count and every transaction id.
pub fn tx_root(txs: &[Vec<u8>]) -> [u8; 32] {
    let ids: Vec<TxId> = txs.iter().map(|t| Tx::id_of(t)).collect();
    tx_root_of_ids(&ids)
}

/// [`tx_root`] from the transactions' ids (`Tx::id_of` of each, in order), when the caller
/// has them already.
pub fn tx_root_of_ids(ids: &[TxId]) -> [u8; 32] {
    let mut w = Writer::with_capacity(4 + 32 * ids.len());
    w.u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for id in ids {
        w.raw(&id.0);
    }
    cairn_proto::id::hash(TX_ROOT_DOMAIN, &w.finish())
}

/// A block.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Block {
    /// Header.
    pub header: Header,
    /// Encoded transactions, in execution order.
    pub txs: Vec<Vec<u8>>,
    digest: [u8; 32],
}

impl Block {
    /// Builds a block, computing the transaction root and digest; `outcome_root` is the root of
    /// its receipts' outcome tree ([`crate::outcome_tree::receipts_root`]).
    pub fn new(
        height: u64,
        parent: [u8; 32],
        state_root: [u8; 32],
        txs: Vec<Vec<u8>>,
        outcome_root: [u8; 32],
    ) -> Self {
        let header = Header {
            height,
            parent,
            state_root,
            tx_root: tx_root(&txs),
            outcome_root,
            tx_count: u32::try_from(txs.len()).unwrap_or(u32::MAX),
        };
        let digest = header.digest();
        Self { header, txs, digest }
    }

    /// [`Block::new`] for a builder that has the transactions' ids already (`ids[i]` is
    /// `Tx::id_of(&txs[i])`, checked in debug builds): they are not hashed again.
    pub fn with_tx_ids(
        height: u64,
        parent: [u8; 32],
        state_root: [u8; 32],
        txs: Vec<Vec<u8>>,
        ids: &[TxId],
        outcome_root: [u8; 32],
    ) -> Self {
        debug_assert!(ids.len() == txs.len() && txs.iter().zip(ids).all(|(t, i)| Tx::id_of(t) == *i));
        let header = Header {
            height,
            parent,
            state_root,
            tx_root: tx_root_of_ids(ids),
            outcome_root,
            tx_count: u32::try_from(txs.len()).unwrap_or(u32::MAX),
        };
        let digest = header.digest();
        Self { header, txs, digest }
    }

    /// The digest as bytes.
    pub fn id(&self) -> [u8; 32] {
        self.digest
    }

    /// Canonical encoding.
    pub fn encode_bytes(&self) -> Vec<u8> {
        let size: usize = self.txs.iter().map(|t| 4 + t.len()).sum();
        let mut w = Writer::with_capacity(HEADER_BYTES + size);
        self.header.encode_to(&mut w);
        for t in &self.txs {
            w.bytes(t);
        }
        w.finish()
    }

    /// Decodes and checks a block: bounded sizes, transaction root matches.
    pub fn decode_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > BLOCK_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "block",
                len: bytes.len() as u64,
                max: BLOCK_BYTES_MAX as u64,
            });
        }
        let mut r = Reader::new(bytes);
        let header = Header::decode_from(&mut r)?;
        let n = header.tx_count as usize;
        if n > BLOCK_TXS_MAX {
            return Err(DecodeError::TooLarge {
                field: "block.tx_count",
                len: n as u64,
                max: BLOCK_TXS_MAX as u64,
            });
        }
        let mut txs = Vec::with_capacity(n);
        for _ in 0..n {
            txs.push(r.bytes(TX_BYTES_MAX, "block.tx")?.to_vec());
        }
        r.finish()?;
        if tx_root(&txs) != header.tx_root {
            return Err(DecodeError::Invalid {
                field: "block.tx_root",
                reason: "does not match the transactions",
            });
        }
        let digest = header.digest();
        Ok(Self { header, txs, digest })
    }
}

impl Write for Block {
    fn write(&self, buf: &mut impl BufMut) {
        let bytes = self.encode_bytes();
        buf.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        buf.put_slice(&bytes);
    }
}

impl EncodeSize for Block {
    fn encode_size(&self) -> usize {
        4 + HEADER_BYTES + self.txs.iter().map(|t| 4 + t.len()).sum::<usize>()
    }
}

impl Read for Block {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _cfg: &()) -> Result<Self, CodecError> {
        let len = u32::read(buf)? as usize;
        if len > BLOCK_BYTES_MAX {
            return Err(CodecError::Invalid("cairn block", "over the size limit"));
        }
        if buf.remaining() < len {
            return Err(CodecError::EndOfBuffer);
        }
        let mut bytes = vec![0u8; len];
        buf.copy_to_slice(&mut bytes);
        Self::decode_bytes(&bytes).map_err(|_| CodecError::Invalid("cairn block", "malformed"))
    }
}

impl Digestible for Block {
    type Digest = Digest;

    fn digest(&self) -> Digest {
        Digest(self.digest)
    }
}

impl Heightable for Block {
    fn height(&self) -> Height {
        Height::new(self.header.height)
    }
}

impl ConsensusBlock for Block {
    fn parent(&self) -> Digest {
        Digest(self.header.parent)
    }
}

impl BoundedBlock for Block {
    fn max_encode_size(_cfg: &()) -> usize {
        4 + BLOCK_BYTES_MAX
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use commonware_codec::{DecodeExt as _, Encode as _};

    #[test]
    fn block_round_trips_and_is_bound_to_its_txs() {
        let b = Block::new(7, [1; 32], [2; 32], vec![vec![1, 2, 3], vec![4]], [3; 32]);
        let enc = b.encode();
        let back = Block::decode(enc.clone()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.digest(), b.digest());
        // tamper with a transaction byte: the tx root no longer matches
        let mut raw = b.encode_bytes();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(Block::decode_bytes(&raw).is_err());
        assert_eq!(Header::decode(&b.header.encode()).unwrap(), b.header);
        assert_eq!(b.header.encode().len(), HEADER_BYTES);
        // the outcome root is part of the digest
        let mut other = b.header;
        other.outcome_root[0] ^= 1;
        assert_ne!(other.digest(), b.header.digest());
        // a version-1 header is refused
        let mut v1 = b.header.encode();
        v1[0] = 1;
        assert!(Header::decode(&v1).is_err());
    }
}
