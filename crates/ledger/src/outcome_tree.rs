//! The outcome tree: a binary Merkle tree over a block's receipts, whose root the block header
//! carries ([`crate::block::Header::outcome_root`]), so one certified header proves every
//! included transaction's outcome.
//!
//! - leaf `i` = BLAKE3-derive-key([`LEAF_DOMAIN`], tx id ‖ [`RemoteOutcome::encode`]), in block
//!   order; node = BLAKE3-derive-key([`NODE_DOMAIN`], left ‖ right); leaves and nodes are
//!   domain-separated, so no node passes for a leaf;
//! - a level of odd width carries its last node up unchanged (no duplication: a list and the
//!   same list with its last leaf repeated have different roots);
//! - the root is BLAKE3-derive-key([`ROOT_DOMAIN`], count:u64 big-endian ‖ top node), the top
//!   node of the empty tree being 32 zero bytes: a root binds the number of leaves, so a path
//!   checks against one width only.
//!
//! A path is checked against the leaf count (the header's `tx_count`): its length must be
//! exactly the number of siblings the tree of that width has at that index, at most
//! [`PATH_MAX`]. Pure: no I/O.

use crate::rpc::RemoteOutcome;
use crate::state::Receipt;
use crate::tx::TxId;

/// Domain of a leaf hash.
pub const LEAF_DOMAIN: &str = "cairn 2026-12 ledger outcome leaf v1";
/// Domain of an inner node hash.
pub const NODE_DOMAIN: &str = "cairn 2026-12 ledger outcome node v1";
/// Domain of the root (count and top node).
pub const ROOT_DOMAIN: &str = "cairn 2026-12 ledger outcome root v1";
/// Most siblings in a path (a tree of up to 2^32 leaves; blocks hold at most 8192).
pub const PATH_MAX: usize = 32;

/// The leaf of transaction `tx` with outcome `outcome`.
pub fn leaf(tx: &TxId, outcome: &RemoteOutcome) -> [u8; 32] {
    let enc = outcome.encode();
    let mut data = Vec::with_capacity(32 + enc.len());
    data.extend_from_slice(&tx.0);
    data.extend_from_slice(&enc);
    cairn_proto::id::hash(LEAF_DOMAIN, &data)
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(left);
    data[32..].copy_from_slice(right);
    cairn_proto::id::hash(NODE_DOMAIN, &data)
}

fn next_level(level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node(l, r),
            [lone] => *lone,
            _ => unreachable!("chunks(2) yields one or two"),
        })
        .collect()
}

fn seal(count: u64, top: &[u8; 32]) -> [u8; 32] {
    let mut data = [0u8; 40];
    data[..8].copy_from_slice(&count.to_be_bytes());
    data[8..].copy_from_slice(top);
    cairn_proto::id::hash(ROOT_DOMAIN, &data)
}

/// A whole tree, every level kept: its root, and any leaf's path without hashing again.
#[derive(Clone, Debug)]
pub struct Tree {
    /// Levels bottom up: the leaves first, the top node last.
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// The tree over `leaves`.
    pub fn new(leaves: Vec<[u8; 32]>) -> Self {
        let mut levels = vec![leaves];
        while let Some(top) = levels.last().filter(|l| l.len() > 1) {
            let next = next_level(top);
            levels.push(next);
        }
        Self { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree has no leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root.
    pub fn root(&self) -> [u8; 32] {
        let top = self.levels.last().and_then(|l| l.first()).copied().unwrap_or([0; 32]);
        seal(self.len() as u64, &top)
    }

    /// The siblings proving leaf `index`, bottom up (`None`: no such leaf).
    pub fn path(&self, index: usize) -> Option<Vec<[u8; 32]>> {
        if index >= self.len() {
            return None;
        }
        let mut i = index;
        let mut siblings = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(s) = level.get(i ^ 1) {
                siblings.push(*s);
            }
            i /= 2;
        }
        Some(siblings)
    }
}

/// The root over `leaves`.
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    Tree::new(leaves.to_vec()).root()
}

/// The outcome root of a block's receipts (in block order).
pub fn receipts_root(receipts: &[Receipt]) -> [u8; 32] {
    let leaves: Vec<[u8; 32]> =
        receipts.iter().map(|r| leaf(&r.tx, &RemoteOutcome::of(&r.outcome))).collect();
    root(&leaves)
}

/// The siblings proving leaf `index` of `leaves`, bottom up (`None`: no such leaf).
pub fn path(leaves: &[[u8; 32]], index: usize) -> Option<Vec<[u8; 32]>> {
    Tree::new(leaves.to_vec()).path(index)
}

/// Whether `path` proves `leaf` at `index` of a tree of `count` leaves with root `root`.
pub fn verify(root: &[u8; 32], count: u64, index: u64, leaf: &[u8; 32], path: &[[u8; 32]]) -> bool {
    if index >= count || path.len() > PATH_MAX {
        return false;
    }
    let (mut acc, mut i, mut width, mut used) = (*leaf, index, count, 0usize);
    while width > 1 {
        let sibling = i ^ 1;
        if sibling < width {
            let Some(s) = path.get(used) else { return false };
            acc = if i % 2 == 0 { node(&acc, s) } else { node(s, &acc) };
            used += 1;
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    used == path.len() && seal(count, &acc) == *root
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| {
                leaf(
                    &TxId([i as u8; 32]),
                    &RemoteOutcome::Sequenced { topic: cairn_proto::Topic([1; 32]), seq: i as u64 },
                )
            })
            .collect()
    }

    #[test]
    fn every_path_of_every_width_verifies_and_nothing_else_does() {
        for n in 1..=33usize {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = path(&l, i).unwrap();
                assert!(p.len() <= PATH_MAX);
                let tree = Tree::new(l.clone());
                assert_eq!((tree.root(), tree.path(i).unwrap(), tree.len()), (r, p.clone(), n));
                assert!(verify(&r, n as u64, i as u64, &l[i], &p), "n={n} i={i}");
                // another index, another count, a flipped bit anywhere, a short or long path
                assert!(!verify(&r, n as u64, ((i + 1) % n) as u64, &l[i], &p) || l[i] == l[(i + 1) % n]);
                assert!(!verify(&r, n as u64 + 1, i as u64, &l[i], &p), "n={n} i={i} count+1");
                assert!(!verify(&r, n as u64, i as u64 + n as u64, &l[i], &p), "index out of range");
                let mut bad_leaf = l[i];
                bad_leaf[7] ^= 0x10;
                assert!(!verify(&r, n as u64, i as u64, &bad_leaf, &p));
                let mut bad_root = r;
                bad_root[31] ^= 1;
                assert!(!verify(&bad_root, n as u64, i as u64, &l[i], &p));
                for k in 0..p.len() {
                    for bit in [0usize, 100, 255] {
                        let mut q = p.clone();
                        q[k][bit / 8] ^= 1 << (bit % 8);
                        assert!(!verify(&r, n as u64, i as u64, &l[i], &q), "n={n} i={i} k={k}");
                    }
                }
                if !p.is_empty() {
                    assert!(!verify(&r, n as u64, i as u64, &l[i], &p[..p.len() - 1]));
                }
                let mut long = p.clone();
                long.push([0; 32]);
                assert!(!verify(&r, n as u64, i as u64, &l[i], &long));
            }
            assert_eq!(path(&l, n), None);
        }
    }

    #[test]
    fn odd_widths_do_not_collide_with_duplicated_leaves_and_roots_bind_order() {
        let l = leaves(3);
        let mut dup = l.clone();
        dup.push(l[2]);
        assert_ne!(root(&l), root(&dup), "the lone node is carried up, not duplicated");
        let mut swapped = l.clone();
        swapped.swap(0, 1);
        assert_ne!(root(&l), root(&swapped));
        assert_ne!(root(&[]), root(&leaves(1)));
        let empty = Tree::new(Vec::new());
        assert!(empty.is_empty() && empty.path(0).is_none() && empty.root() == root(&[]));
        assert_ne!(root(&leaves(1)), leaves(1)[0], "a root is never a leaf");
    }

    #[test]
    fn bounds_hold_for_huge_counts() {
        let l = [[9u8; 32]];
        assert!(!verify(&l[0], 0, 0, &l[0], &[]), "an empty tree has no leaf");
        // u64::MAX leaves need 64 siblings, more than PATH_MAX: refused before any hashing
        let p = vec![[0u8; 32]; PATH_MAX + 1];
        assert!(!verify(&l[0], u64::MAX, 5, &l[0], &p));
        assert!(!verify(&l[0], u64::MAX, 5, &l[0], &p[..PATH_MAX]));
        // a leaf with a different outcome or id differs
        let a = leaf(&TxId([1; 32]), &RemoteOutcome::Applied);
        assert_ne!(a, leaf(&TxId([2; 32]), &RemoteOutcome::Applied));
        let failed = RemoteOutcome::Failed { code: 24, message: "stale".into(), stale: Some((1, 2)) };
        assert_ne!(a, leaf(&TxId([1; 32]), &failed));
    }
}
