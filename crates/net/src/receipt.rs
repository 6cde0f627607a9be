//! Signed store receipts: a store node's signed statement that it holds an envelope durably
//! until a given time. The sender keeps them (proof of what a store node promised, and what a
//! paid-storage contract redeems); an acknowledgement without a valid receipt does not count.
//!
//! ```text
//! receipt  = envelope id:[32] stored_at_ms:u64 expires_at_ms:u64 signature:[64]   (112 bytes)
//! signed   = "cairn/store-receipt/1" ‖ store peer id bytes ‖ id ‖ stored_at ‖ expires_at
//! ```
//! The signature is the store node's libp2p identity key (Ed25519), so the peer id that
//! answered is the key that signed: nobody can issue a receipt in another node's name.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cairn_proto::Id;
use cairn_proto::codec::{DecodeError, Reader, Writer};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

const DOMAIN: &[u8] = b"cairn/store-receipt/1";
/// Encoded size of a [`StoreReceipt`], bytes.
pub const RECEIPT_BYTES: usize = 32 + 8 + 8 + 64;

/// A store node's signed promise to keep an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreReceipt {
    /// The envelope.
    pub id: Id,
    /// When the store committed it, ms since the epoch (store's clock).
    pub stored_at_ms: u64,
    /// Until when the store keeps it, ms since the epoch.
    pub expires_at_ms: u64,
    /// Ed25519 signature by the store node's identity key.
    pub signature: [u8; 64],
}

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// The store's peer id does not carry an Ed25519 key.
    #[error("the store node's peer id does not carry an Ed25519 key")]
    NoKey,
    /// The signature does not verify under the store's key.
    #[error("the receipt's signature does not verify for this store node")]
    BadSignature,
    /// The store's key cannot sign (not Ed25519).
    #[error("the store node's key cannot sign receipts: {0}")]
    Signing(String),
}

fn signed_bytes(store: &PeerId, id: &Id, stored_at_ms: u64, expires_at_ms: u64) -> Vec<u8> {
    let peer = store.to_bytes();
    let mut b = Vec::with_capacity(DOMAIN.len() + peer.len() + 48);
    b.extend_from_slice(DOMAIN);
    b.extend_from_slice(&peer);
    b.extend_from_slice(&id.0);
    b.extend_from_slice(&stored_at_ms.to_be_bytes());
    b.extend_from_slice(&expires_at_ms.to_be_bytes());
    b
}

/// Store keys kept decoded, at most; when full the cache is emptied and refilled (a node talks
/// to a handful of store nodes, and only peers that answered a store request are looked up).
const STORE_KEYS_MAX: usize = 1024;

/// Decoded store keys by peer id: decoding one (protobuf, then the Ed25519 point's
/// decompression) was about a quarter of verifying a receipt, three receipts per message.
static STORE_KEYS: Mutex<Option<HashMap<PeerId, PublicKey>>> = Mutex::new(None);

/// The public key a peer id carries inline (Ed25519 peer ids embed it), if any.
fn key_of(peer: &PeerId) -> Option<PublicKey> {
    let mut cache = STORE_KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(key) = cache.get(peer) {
        return Some(key.clone());
    }
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf-encoded public key.
    let key = (mh.code() == 0).then(|| PublicKey::try_decode_protobuf(mh.digest()).ok()).flatten()?;
    if cache.len() >= STORE_KEYS_MAX {
        cache.clear();
    }
    cache.insert(*peer, key.clone());
    Some(key)
}

impl StoreReceipt {
    /// Signs a receipt with the store node's identity key.
    pub fn sign(key: &Keypair, id: Id, stored_at_ms: u64, expires_at_ms: u64) -> Result<Self, ReceiptError> {
        let store = key.public().to_peer_id();
        let sig = key
            .sign(&signed_bytes(&store, &id, stored_at_ms, expires_at_ms))
            .map_err(|e| ReceiptError::Signing(e.to_string()))?;
        let signature: [u8; 64] =
            sig.try_into().map_err(|_| ReceiptError::Signing("signature is not 64 bytes".into()))?;
        Ok(Self { id, stored_at_ms, expires_at_ms, signature })
    }

    /// Checks the signature against the key of the store node that answered.
    pub fn verify(&self, store: &PeerId) -> Result<(), ReceiptError> {
        let key = key_of(store).ok_or(ReceiptError::NoKey)?;
        let msg = signed_bytes(store, &self.id, self.stored_at_ms, self.expires_at_ms);
        if key.verify(&msg, &self.signature) { Ok(()) } else { Err(ReceiptError::BadSignature) }
    }

    /// Canonical encoding ([`RECEIPT_BYTES`]).
    pub fn encode_into(&self, w: &mut Writer) {
        w.raw(&self.id.0);
        w.u64(self.stored_at_ms);
        w.u64(self.expires_at_ms);
        w.raw(&self.signature);
    }

    /// Canonical encoding as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode_into(&mut w);
        w.finish()
    }

    /// Decodes one receipt (fixed size).
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            id: Id(r.array("receipt id")?),
            stored_at_ms: r.u64("stored_at")?,
            expires_at_ms: r.u64("expires_at")?,
            signature: r.array("signature")?,
        })
    }

    /// Decodes exactly one receipt.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let v = Self::decode_from(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_verifies_only_for_its_store_and_its_content() {
        let store = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let r = StoreReceipt::sign(&store, Id([5; 32]), 1_000, 9_000).unwrap();
        let peer = store.public().to_peer_id();
        assert_eq!(r.verify(&peer), Ok(()));
        assert_eq!(r.verify(&other.public().to_peer_id()), Err(ReceiptError::BadSignature));
        let mut longer = r.clone();
        longer.expires_at_ms += 1;
        assert_eq!(longer.verify(&peer), Err(ReceiptError::BadSignature), "the promise cannot be stretched");
        let mut moved = r.clone();
        moved.id = Id([6; 32]);
        assert_eq!(moved.verify(&peer), Err(ReceiptError::BadSignature));
        let bytes = r.encode();
        assert_eq!(bytes.len(), RECEIPT_BYTES);
        assert_eq!(StoreReceipt::decode(&bytes).unwrap(), r);
        assert!(StoreReceipt::decode(&bytes[..RECEIPT_BYTES - 1]).is_err());
        let mut longer_bytes = bytes.clone();
        longer_bytes.push(0);
        assert!(StoreReceipt::decode(&longer_bytes).is_err());
    }
}
