//! The store nodes registered on the ledger, as the actor keeps them for placement
//! ([`crate::shard::place`]): fed by the application from a proven ledger read, converted from
//! Ed25519 node keys to peer ids, bounded.

use libp2p::PeerId;
use libp2p::identity::{PublicKey, ed25519};

use super::actor::Node;
use crate::shard::RegisteredStore;

/// Most registered stores kept (the ledger's own bound, `cairn_ledger::state::STORES_MAX`).
pub(super) const REGISTERED_STORES_MAX: usize = 256;

/// The peer id of an Ed25519 node key, if it is one.
pub(super) fn peer_of_node_key(node_key: &[u8; 32]) -> Option<PeerId> {
    let pk = ed25519::PublicKey::try_from_bytes(node_key).ok()?;
    Some(PublicKey::from(pk).to_peer_id())
}

/// `(node key, salt)` pairs as placement entries: keys that are not Ed25519 keys skipped,
/// duplicates dropped, at most [`REGISTERED_STORES_MAX`].
pub(super) fn registered_stores(stores: &[([u8; 32], [u8; 32])]) -> Vec<RegisteredStore<PeerId>> {
    let mut out: Vec<RegisteredStore<PeerId>> = Vec::new();
    for (node_key, salt) in stores {
        if out.len() >= REGISTERED_STORES_MAX {
            break;
        }
        if out.iter().any(|r| r.node_key == *node_key) {
            continue;
        }
        if let Some(peer) = peer_of_node_key(node_key) {
            out.push(RegisteredStore { peer, node_key: *node_key, salt: *salt });
        }
    }
    out
}

impl Node {
    /// Replaces the registered set and, if it changed, retargets unstored sends and followed
    /// topics. Returns how many entries were kept.
    pub(super) fn set_registered(&mut self, stores: &[([u8; 32], [u8; 32])]) -> usize {
        let next = registered_stores(stores);
        let kept = next.len();
        let mut a: Vec<[u8; 32]> = self.registered.iter().map(|r| r.node_key).collect();
        let mut b: Vec<[u8; 32]> = next.iter().map(|r| r.node_key).collect();
        a.sort_unstable();
        b.sort_unstable();
        let changed = a != b
            || self
                .registered
                .iter()
                .any(|r| next.iter().any(|n| n.node_key == r.node_key && n.salt != r.salt));
        self.registered = next;
        if changed {
            self.retarget();
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_keys_become_peer_ids_and_the_set_is_bounded() {
        let kp = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
        let key: [u8; 32] = kp.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(peer_of_node_key(&key), Some(kp.public().to_peer_id()));
        let mut many: Vec<([u8; 32], [u8; 32])> = vec![(key, [1; 32]), (key, [2; 32])];
        for i in 0..400u32 {
            let mut seed = [1u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let kp = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
            many.push((kp.public().try_into_ed25519().unwrap().to_bytes(), [0; 32]));
        }
        let set = registered_stores(&many);
        assert_eq!(set.len(), REGISTERED_STORES_MAX);
        assert_eq!(set[0].salt, [1; 32]);
        assert_eq!(set.iter().filter(|r| r.node_key == key).count(), 1);
    }
}
