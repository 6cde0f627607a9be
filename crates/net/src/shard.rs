//! Topic → gossip shard, and topic → the store nodes responsible for it.
//!
//! Conversations are spread over a small fixed number of gossip topics (shards), so gossip
//! reveals nothing about who talks with whom beyond "somebody on shard 17".
//!
//! **Store placement** ([`place`]). Where the ledger has registered store nodes (see
//! `cairn_ledger::state::StoreSet`), a topic's store set is the `k` registered stores with the
//! smallest [`rank_key`] = `BLAKE3(topic ‖ node key ‖ salt)`, the salt drawn by the ledger when
//! the store registered. Peers that are not registered are never chosen, however close their
//! peer id is to the topic, so grinding peer ids gains nothing; and since the salt is unknown
//! until the registration executes, a node key cannot be ground offline towards a topic either:
//! each try costs a registration fee. Senders and readers that read the same (proven) set rank
//! it the same, whatever order they learned it in. Stores that answered "full" come after the
//! others; registered stores not connected are skipped, in rank order.
//!
//! **Fallback** (local dev networks with no registration): with an empty registered set, the
//! `k` connected store nodes whose Kademlia key is XOR-closest to the topic's key — grindable,
//! which is acceptable only where every node is the developer's own.

use cairn_proto::Topic;

/// Key-derivation domain of [`rank_key`].
const RANK_DOMAIN: &str = "cairn 2026-12 store rank v1";

/// A store node registered on the ledger, as placement sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RegisteredStore<T> {
    /// How the network layer names it (its peer id).
    pub peer: T,
    /// Its Ed25519 node key, as registered.
    pub node_key: [u8; 32],
    /// The rank salt the ledger drew at registration.
    pub salt: [u8; 32],
}

/// The rank of a registered store for `topic` (smaller is nearer): `BLAKE3` keyed derivation
/// over `topic ‖ node_key ‖ salt`.
pub fn rank_key(topic: &Topic, node_key: &[u8; 32], salt: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(RANK_DOMAIN);
    h.update(&topic.0);
    h.update(node_key);
    h.update(salt);
    *h.finalize().as_bytes()
}

/// Every registered store in rank order for `topic` (ties, which need a BLAKE3 collision, broken
/// by node key): the same order for every holder of the same set, whatever its input order.
pub fn rank_registered<T: Clone>(topic: &Topic, registered: &[RegisteredStore<T>]) -> Vec<T> {
    let mut v: Vec<([u8; 32], [u8; 32], &T)> =
        registered.iter().map(|r| (rank_key(topic, &r.node_key, &r.salt), r.node_key, &r.peer)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|(_, _, p)| p.clone()).collect()
}

/// A topic's store set: with registered stores, the first `k` in rank order among those
/// `usable` (connected store peers), those `avoid`ed (answered "full") only after every other
/// one; unregistered peers never. With none registered, the fallback: [`nearest_avoiding`]
/// over `unregistered` (connected store peers and their Kademlia keys) by `topic_key`.
pub fn place<T: Clone>(
    topic: &Topic,
    topic_key: &[u8; 32],
    registered: &[RegisteredStore<T>],
    unregistered: &[(T, [u8; 32])],
    usable: impl Fn(&T) -> bool,
    avoid: impl Fn(&T) -> bool,
    k: usize,
) -> Vec<T> {
    if registered.is_empty() {
        return nearest_avoiding(topic_key, unregistered, avoid, k);
    }
    let (avoided, preferred): (Vec<T>, Vec<T>) =
        rank_registered(topic, registered).into_iter().filter(|p| usable(p)).partition(|p| avoid(p));
    preferred.into_iter().chain(avoided).take(k).collect()
}

/// Number of gossip shards.
pub const SHARDS: u16 = 64;

/// The shard of a topic.
pub fn shard_of(topic: &Topic) -> u16 {
    u16::from_be_bytes([topic.0[0], topic.0[1]]) % SHARDS
}

/// The gossipsub topic name of a shard.
pub fn shard_name(shard: u16) -> String {
    format!("/cairn/shard/1/{shard}")
}

/// XOR distance between two 32-byte keys, as a big-endian byte string (comparable).
pub fn distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for i in 0..32 {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// The `k` candidates nearest `key`, by XOR distance of their keys (ties broken by key).
pub fn nearest<T: Clone>(key: &[u8; 32], candidates: &[(T, [u8; 32])], k: usize) -> Vec<T> {
    let mut v: Vec<(&T, [u8; 32], [u8; 32])> =
        candidates.iter().map(|(t, ck)| (t, distance(key, ck), *ck)).collect();
    v.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
    v.into_iter().take(k).map(|(t, _, _)| t.clone()).collect()
}

/// As [`nearest`], but candidates for which `avoid` holds (a store that answered "full") come
/// only after every other one: they fill the set only when too few others exist.
pub fn nearest_avoiding<T: Clone>(
    key: &[u8; 32],
    candidates: &[(T, [u8; 32])],
    avoid: impl Fn(&T) -> bool,
    k: usize,
) -> Vec<T> {
    let (avoided, preferred): (Vec<_>, Vec<_>) = candidates.iter().cloned().partition(|(t, _)| avoid(t));
    let mut picked = nearest(key, &preferred, k);
    if picked.len() < k {
        picked.extend(nearest(key, &avoided, k - picked.len()));
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(i: u32) -> RegisteredStore<u32> {
        let mut node_key = [0u8; 32];
        node_key[..4].copy_from_slice(&i.to_be_bytes());
        node_key[31] = 0xAA;
        RegisteredStore { peer: i, node_key, salt: *blake3::hash(&node_key).as_bytes() }
    }

    #[test]
    fn ground_unregistered_peers_never_enter_the_set() {
        let topic = Topic([0x5A; 32]);
        let key = [0x5A; 32];
        let registered: Vec<RegisteredStore<u32>> = (0..20).map(reg).collect();
        // 1,000 attacker peers whose keys are ground to share 24 or more leading bits with the
        // topic key: far nearer than any honest store in XOR distance.
        let ground: Vec<(u32, [u8; 32])> = (0..1000u32)
            .map(|i| {
                let mut k = key;
                k[28..].copy_from_slice(&i.to_be_bytes());
                (1_000_000 + i, k)
            })
            .collect();
        // with no registration the fallback rule is grindable: the attacker takes the whole set
        let mut ground = ground;
        ground.extend(registered.iter().map(|r| (r.peer, r.node_key)));
        let fallback = place(&topic, &key, &[], &ground, |_| true, |_| false, 3);
        assert!(fallback.iter().all(|p| *p >= 1_000_000));
        // with registrations, not one ground peer is chosen, whichever k and whichever honest
        // stores are reachable or full
        for k in [1, 3, 5, 20, 40] {
            let set = place(&topic, &key, &registered, &ground, |_| true, |_| false, k);
            assert_eq!(set.len(), k.min(20));
            assert!(set.iter().all(|p| *p < 20), "an unregistered peer was placed: {set:?}");
            let set = place(&topic, &key, &registered, &ground, |p| p % 2 == 0, |p| p % 4 == 0, k);
            assert!(set.iter().all(|p| *p < 20 && p % 2 == 0));
        }
        // even a registered set none of which is reachable gives no ground peer (sends wait)
        assert!(place(&topic, &key, &registered, &ground, |_| false, |_| false, 3).is_empty());
    }

    #[test]
    fn sender_and_reader_rank_the_registered_set_alike() {
        let registered: Vec<RegisteredStore<u32>> = (0..50).map(reg).collect();
        let mut shuffled = registered.clone();
        shuffled.reverse();
        shuffled.swap(3, 17);
        for t in 0..200u8 {
            let topic = Topic([t; 32]);
            let a = rank_registered(&topic, &registered);
            let b = rank_registered(&topic, &shuffled);
            assert_eq!(a, b);
            assert_eq!(
                place(&topic, &[t; 32], &registered, &[], |_| true, |_| false, 3),
                place(&topic, &[t; 32], &shuffled, &[], |_| true, |_| false, 3),
            );
        }
        // topics spread over the stores: every store leads some topic among 2,000
        let mut leads = std::collections::HashSet::new();
        for i in 0..2000u32 {
            let mut t = [0u8; 32];
            t[..4].copy_from_slice(&i.to_be_bytes());
            leads.insert(rank_registered(&Topic(t), &registered)[0]);
        }
        assert_eq!(leads.len(), 50);
    }

    #[test]
    fn deregistered_stores_leave_and_the_rest_keep_their_order() {
        let topic = Topic([9; 32]);
        let registered: Vec<RegisteredStore<u32>> = (0..10).map(reg).collect();
        let before = rank_registered(&topic, &registered);
        let gone = before[0];
        let left: Vec<RegisteredStore<u32>> = registered.iter().copied().filter(|r| r.peer != gone).collect();
        let after = rank_registered(&topic, &left);
        assert!(!after.contains(&gone));
        assert_eq!(after, before[1..].to_vec());
        assert_eq!(place(&topic, &[9; 32], &left, &[], |_| true, |_| false, 3), before[1..4].to_vec());
    }

    #[test]
    fn rank_depends_on_the_ledger_salt() {
        // the same node key ranks anew under another salt: a key ground for one salt is not
        // ground for the salt the ledger draws
        let topic = Topic([1; 32]);
        let a = rank_key(&topic, &[2; 32], &[3; 32]);
        assert_ne!(a, rank_key(&topic, &[2; 32], &[4; 32]));
        assert_ne!(a, rank_key(&Topic([0; 32]), &[2; 32], &[3; 32]));
        assert_eq!(a, rank_key(&topic, &[2; 32], &[3; 32]));
    }

    #[test]
    fn full_registered_stores_come_last() {
        let topic = Topic([7; 32]);
        let registered: Vec<RegisteredStore<u32>> = (0..6).map(reg).collect();
        let order = rank_registered(&topic, &registered);
        let first = order[0];
        let set = place(&topic, &[7; 32], &registered, &[], |_| true, |p| *p == first, 3);
        assert_eq!(set, order[1..4].to_vec());
        let only = &registered[..2];
        let order2 = rank_registered(&topic, only);
        let set = place(&topic, &[7; 32], only, &[], |_| true, |p| *p == order2[0], 3);
        assert_eq!(set, vec![order2[1], order2[0]]);
    }

    #[test]
    fn full_stores_are_passed_over_while_others_remain() {
        let cands: Vec<(u8, [u8; 32])> = (0..5u8).map(|i| (i, [i; 32])).collect();
        let key = [0u8; 32];
        assert_eq!(nearest(&key, &cands, 3), vec![0, 1, 2]);
        assert_eq!(nearest_avoiding(&key, &cands, |t| *t < 2, 3), vec![2, 3, 4]);
        // Too few others: the nearest avoided ones fill the set.
        assert_eq!(nearest_avoiding(&key, &cands, |t| *t != 4, 3), vec![4, 0, 1]);
        assert_eq!(nearest_avoiding(&key, &cands, |_| false, 3), nearest(&key, &cands, 3));
    }

    #[test]
    fn shards_are_in_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000u32 {
            let t = Topic::for_conversation(&[
                i as u8,
                (i >> 8) as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ]);
            let s = shard_of(&t);
            assert!(s < SHARDS);
            seen.insert(s);
        }
        assert_eq!(seen.len(), SHARDS as usize);
    }

    #[test]
    fn nearest_orders_by_xor_distance() {
        let key = [0u8; 32];
        let mut a = [0u8; 32];
        a[0] = 1;
        let mut b = [0u8; 32];
        b[0] = 2;
        let mut c = [0u8; 32];
        c[31] = 1;
        let got = nearest(&key, &[("a", a), ("b", b), ("c", c)], 2);
        assert_eq!(got, vec!["c", "a"]);
    }
}
