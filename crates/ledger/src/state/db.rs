//! The authenticated store: finalized state ([`StateDb`]), the layers of unfinalized blocks
//! ([`Layer`]) and read views over both ([`Overlay`]), a Jellyfish Merkle Tree.

use std::collections::{BTreeMap, VecDeque};

use jmt::storage::{LeafNode, Node, NodeBatch, NodeKey, StaleNodeIndexBatch, TreeReader};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, Version};

use super::{Proof, StateError, StateKey, StateRead, Tree};
use crate::fast_map::FastMap;

/// How far back state is kept: reads are at the current version or the one before (proofs
/// while clients catch up), so values and stale nodes older than `version - KEPT_BACK` go.
const KEPT_BACK: u64 = 2;

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
    /// Each key's values by version, oldest first (a few per key: older ones are pruned with
    /// the leaves that pointed at them). A hash lookup and a short scan instead of a descent of
    /// one ordered map over (key, version), which showed in admission, execution and apply.
    values: FastMap<KeyHash, Vec<(Version, Option<OwnedValue>)>>,
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
        Ok(self.db.value_at(&key_hash, max_version))
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
        self.values.get(key)?.last()?.1.clone()
    }

    /// The value of `key` at `max_version`: its newest version at or below it.
    fn value_at(&self, key: &KeyHash, max_version: Version) -> Option<OwnedValue> {
        let versions = self.values.get(key)?;
        versions.iter().rev().find(|(v, _)| *v <= max_version)?.1.clone()
    }

    /// Records `value` as `key`'s value at `version`, keeping the versions in order.
    fn put_value(&mut self, key: KeyHash, version: Version, value: Option<OwnedValue>) {
        let versions = self.values.entry(key).or_default();
        match versions.last() {
            Some((last, _)) if *last >= version => {
                // not reached by `apply` (heights increase); kept ordered all the same
                match versions.binary_search_by_key(&version, |(v, _)| *v) {
                    Ok(i) => versions[i].1 = value,
                    Err(i) => versions.insert(i, (version, value)),
                }
            }
            _ => versions.push((version, value)),
        }
        // Reads are at the current version or the one before (proofs while clients catch up,
        // see `apply`), never below `version - 2`: of the versions at or below that floor,
        // only the newest can still be read. Pruning by stale leaves alone kept the others of
        // a key deleted and written again, or whose leaf had moved in the tree.
        let floor = version.saturating_sub(KEPT_BACK);
        if let Some(newest) = versions.iter().rposition(|(v, _)| *v <= floor)
            && newest > 0
        {
            versions.drain(..newest);
        }
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
        // the tree's batch holds exactly these writes as its values at this version (jmt
        // records every key of the write set, deletions as `None`): moved, not cloned
        let height = layer.height;
        for (k, v) in layer.writes {
            self.put_value(k, height, v);
        }
        self.stale.push_back(layer.stale);
        while self.stale.len() as u64 > KEPT_BACK {
            if let Some(batch) = self.stale.pop_front() {
                for s in batch {
                    if let Some(Node::Leaf(leaf)) = self.nodes.remove(&s.node_key) {
                        // A leaf that only moved in the tree (a sibling key split its path)
                        // goes stale while its value, stored under the version it was
                        // written at, is still the key's current one: drop a value only
                        // once a newer value of the same key exists below the floor.
                        let (kh, v) = (leaf.key_hash(), s.node_key.version());
                        let floor = height.saturating_sub(KEPT_BACK);
                        if v < floor
                            && let Some(versions) = self.values.get_mut(&kh)
                            && versions.iter().any(|(w, _)| *w > v && *w <= floor)
                        {
                            versions.retain(|(w, _)| *w != v);
                        }
                    }
                }
            }
        }
        self.height = Some(height);
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

    /// `n` distinct nonce keys.
    fn nonce_keys(n: u32) -> Vec<StateKey> {
        (0..n)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                StateKey::Nonce(k)
            })
            .collect()
    }

    /// The batch insertion (blocks without deletions) gives the root the per-key insertion
    /// gives, across heights mixing both paths, and the applied nodes still prove every key.
    #[test]
    fn batch_and_per_key_insertion_agree_and_prove() {
        let mut db = StateDb::default();
        let keys: Vec<StateKey> = nonce_keys(300);
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

    /// Each key's values by version: after every block, reads at the current height and at
    /// the one before (which `apply` keeps while clients catch up) give the model's values,
    /// through the state and through the tree reader, while values are rewritten, deleted and
    /// pruned; a key keeps at most 3 versions (the newest at or below the floor, and the two
    /// above it).
    #[test]
    fn versioned_values_read_back_and_are_pruned() {
        use jmt::storage::TreeReader;

        let mut db = StateDb::default();
        let keys: Vec<StateKey> = nonce_keys(40);
        let mut history: Vec<BTreeMap<KeyHash, Vec<u8>>> = Vec::new();
        let mut model: BTreeMap<KeyHash, Vec<u8>> = BTreeMap::new();
        for height in 0..60u64 {
            let mut writes = BTreeMap::new();
            for (i, key) in keys.iter().enumerate() {
                let i = i as u64;
                let k = key.hash();
                // key i is written every (i % 7 + 1) heights, and deleted at some of them
                if (height + i).is_multiple_of(i % 7 + 1) {
                    let delete = height > 0 && (height + i).is_multiple_of(11) && model.contains_key(&k);
                    writes.insert(
                        k,
                        if delete { None } else { Some((height * 100 + i).to_be_bytes().to_vec()) },
                    );
                }
            }
            let layer = db.commit_layer(Vec::new(), height, writes.clone()).unwrap();
            db.apply(layer);
            for (k, v) in writes {
                match v {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
            }
            history.push(model.clone());
            let overlay = db.overlay(Vec::new());
            for key in &keys {
                let k = key.hash();
                assert_eq!(db.get(key).as_ref(), model.get(&k), "latest value at height {height}");
                for at in height.saturating_sub(1)..=height {
                    let want = history[at as usize].get(&k);
                    let got = overlay.get_value_option(at, k).unwrap();
                    assert_eq!(got.as_ref(), want, "value at version {at}, height {height}");
                }
            }
        }
        let most = db.values.values().map(Vec::len).max().unwrap();
        assert!(most <= 3, "a key keeps {most} versions");
        assert!(db.values.values().all(|v| v.windows(2).all(|w| w[0].0 < w[1].0)), "versions in order");
    }
}
