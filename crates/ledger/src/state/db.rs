//! The authenticated store: finalized state ([`StateDb`]), the layers of unfinalized blocks
//! ([`Layer`]) and read views over both ([`Overlay`]), a Jellyfish Merkle Tree.

use std::collections::{BTreeMap, VecDeque};

use jmt::storage::{LeafNode, Node, NodeBatch, NodeKey, StaleNodeIndexBatch, TreeReader};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, Version};

use super::{Proof, StateError, StateKey, StateRead, Tree};
use crate::fast_map::FastMap;

/// The changes one block made, kept apart until the block is final.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Height (= tree version).
    pub height: u64,
    /// Logical writes.
    pub writes: BTreeMap<KeyHash, Option<Vec<u8>>>,
    /// New tree nodes and values.
    pub nodes: NodeBatch,
    /// Nodes made stale by this version.
    pub stale: StaleNodeIndexBatch,
    /// Root after the block.
    pub root: [u8; 32],
}

/// Finalized state: every node and versioned value of the tree, with stale nodes pruned once
/// no root we may still serve needs them.
#[derive(Clone, Default, Debug)]
pub struct StateDb {
    nodes: FastMap<NodeKey, Node>,
    values: BTreeMap<(KeyHash, Version), Option<OwnedValue>>,
    stale: VecDeque<StaleNodeIndexBatch>,
    height: Option<u64>,
    root: [u8; 32],
}

/// A read view: the finalized state plus unfinalized layers (oldest first).
pub struct Overlay<'a> {
    db: &'a StateDb,
    layers: Vec<&'a Layer>,
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &KeyHash) -> Option<Vec<u8>> {
        for l in self.layers.iter().rev() {
            if let Some(v) = l.writes.get(key) {
                return v.clone();
            }
        }
        self.db.latest_value(key)
    }
}

impl TreeReader for Overlay<'_> {
    fn get_node_option(&self, node_key: &NodeKey) -> anyhow::Result<Option<Node>> {
        for l in self.layers.iter().rev() {
            if let Some(n) = l.nodes.get_node(node_key) {
                return Ok(Some(n.clone()));
            }
        }
        Ok(self.db.nodes.get(node_key).cloned())
    }

    fn get_value_option(
        &self,
        max_version: Version,
        key_hash: KeyHash,
    ) -> anyhow::Result<Option<OwnedValue>> {
        for l in self.layers.iter().rev() {
            if l.height <= max_version
                && let Some(v) = l.nodes.values().get(&(l.height, key_hash))
            {
                return Ok(v.clone());
            }
        }
        // one descent to the last entry at or below (key, max_version), then a check that
        // it is this key's (a bounded range on both ends descends twice)
        Ok(self
            .db
            .values
            .range(..=(key_hash, max_version))
            .next_back()
            .filter(|((k, _), _)| *k == key_hash)
            .and_then(|(_, v)| v.clone()))
    }

    fn get_rightmost_leaf(&self) -> anyhow::Result<Option<(NodeKey, LeafNode)>> {
        Err(anyhow::anyhow!("rightmost leaf is only used by tree restore, which the ledger does not use"))
    }
}

impl StateDb {
    /// Height of the last applied layer (`None` before genesis).
    pub fn height(&self) -> Option<u64> {
        self.height
    }

    /// Root after the last applied layer.
    pub fn root(&self) -> [u8; 32] {
        self.root
    }

    fn latest_value(&self, key: &KeyHash) -> Option<Vec<u8>> {
        // one descent (see `get_value_option`)
        self.values
            .range(..=(*key, Version::MAX))
            .next_back()
            .filter(|((k, _), _)| k == key)
            .and_then(|(_, v)| v.clone())
    }

    /// A view over this state plus `layers` (oldest first, each the child of the previous, the
    /// first the child of this state).
    pub fn overlay<'a>(&'a self, layers: Vec<&'a Layer>) -> Overlay<'a> {
        Overlay { db: self, layers }
    }

    /// Computes the layer for `writes` at `height` on top of `layers`.
    pub fn commit_layer(
        &self,
        layers: Vec<&Layer>,
        height: u64,
        writes: BTreeMap<KeyHash, Option<Vec<u8>>>,
    ) -> Result<Layer, StateError> {
        let overlay = self.overlay(layers);
        let tree: Tree<'_, _> = JellyfishMerkleTree::new(&overlay);
        let (root, batch) = if !writes.is_empty() && writes.values().all(Option::is_some) {
            // Without deletions, the batch insertion hashes each touched internal node once
            // per block rather than once per key (a block of transfers: ~2 keys per tx).
            let set: Vec<(KeyHash, OwnedValue)> =
                writes.iter().filter_map(|(k, v)| Some((*k, v.clone()?))).collect();
            let (roots, batch) = tree
                .batch_put_value_sets(vec![set], None, height)
                .map_err(|e| StateError::Tree(e.to_string()))?;
            let root = roots.first().copied().ok_or_else(|| StateError::Tree("no root".into()))?;
            (root, batch)
        } else {
            let set: Vec<(KeyHash, Option<Vec<u8>>)> = writes.iter().map(|(k, v)| (*k, v.clone())).collect();
            tree.put_value_set(set, height).map_err(|e| StateError::Tree(e.to_string()))?
        };
        Ok(Layer {
            height,
            writes,
            nodes: batch.node_batch,
            stale: batch.stale_node_index_batch,
            root: root.0,
        })
    }

    /// Makes `layer` part of the finalized state. Stale nodes are pruned with a lag of one
    /// version so the previous root can still be proven against while clients catch up.
    pub fn apply(&mut self, layer: Layer) {
        for (k, n) in layer.nodes.nodes() {
            self.nodes.insert(k.clone(), n.clone());
        }
        for (k, v) in layer.nodes.values() {
            self.values.insert((k.1, k.0), v.clone());
        }
        self.stale.push_back(layer.stale);
        while self.stale.len() > 2 {
            if let Some(batch) = self.stale.pop_front() {
                for s in batch {
                    if let Some(Node::Leaf(leaf)) = self.nodes.remove(&s.node_key) {
                        // A leaf that only moved in the tree (a sibling key split its path)
                        // goes stale while its value, stored under the version it was
                        // written at, is still the key's current one: drop a value only
                        // once a newer value of the same key exists below the floor.
                        let (kh, v) = (leaf.key_hash(), s.node_key.version());
                        let floor = layer.height.saturating_sub(2);
                        if v < floor && self.values.range((kh, v + 1)..=(kh, floor)).next().is_some() {
                            self.values.remove(&(kh, v));
                        }
                    }
                }
            }
        }
        self.height = Some(layer.height);
        self.root = layer.root;
    }

    /// Reads a value of the finalized state.
    pub fn get(&self, key: &StateKey) -> Option<Vec<u8>> {
        self.latest_value(&key.hash())
    }

    /// The value at `key` with a proof against the root at the current height.
    pub fn prove(&self, key: &StateKey) -> Result<(Option<Vec<u8>>, Proof), StateError> {
        let height = self.height.ok_or_else(|| StateError::Tree("no state yet".into()))?;
        let overlay = self.overlay(Vec::new());
        let tree: Tree<'_, _> = JellyfishMerkleTree::new(&overlay);
        tree.get_with_proof(key.hash(), height).map_err(|e| StateError::Tree(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use jmt::{JellyfishMerkleTree, KeyHash, RootHash};

    use super::{StateDb, Tree};
    use crate::state::StateKey;

    /// The batch insertion (blocks without deletions) gives the root the per-key insertion
    /// gives, across heights mixing both paths, and the applied nodes still prove every key.
    #[test]
    fn batch_and_per_key_insertion_agree_and_prove() {
        let mut db = StateDb::default();
        let keys: Vec<StateKey> = (0..300u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                StateKey::Nonce(k)
            })
            .collect();
        let mut model: BTreeMap<KeyHash, Vec<u8>> = BTreeMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for height in 0..40u64 {
            let deletes = height > 0 && height.is_multiple_of(5);
            let mut writes = BTreeMap::new();
            for _ in 0..1 + next(60) {
                let k = keys[next(keys.len() as u64) as usize].hash();
                let v = if deletes && next(3) == 0 && model.contains_key(&k) {
                    None
                } else {
                    Some(next(u64::MAX).to_be_bytes().to_vec())
                };
                writes.insert(k, v);
            }
            let reference = {
                let overlay = db.overlay(Vec::new());
                let tree: Tree<'_, _> = JellyfishMerkleTree::new(&overlay);
                let set: Vec<_> = writes.iter().map(|(k, v)| (*k, v.clone())).collect();
                tree.put_value_set(set, height).unwrap().0
            };
            let layer = db.commit_layer(Vec::new(), height, writes.clone()).unwrap();
            assert_eq!(RootHash(layer.root), reference, "roots differ at height {height}");
            db.apply(layer);
            for (k, v) in writes {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
            for key in keys.iter().step_by(7) {
                let (value, proof) = db.prove(key).unwrap();
                assert_eq!(value.as_ref(), model.get(&key.hash()), "value of a key at height {height}");
                proof.verify(RootHash(db.root()), key.hash(), value).unwrap();
            }
        }
    }
}
