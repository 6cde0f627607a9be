//! Topic → gossip shard, and topic → the store nodes responsible for it.
//!
//! Conversations are spread over a small fixed number of gossip topics (shards), so gossip
//! reveals nothing about who talks with whom beyond "somebody on shard 17". Store placement
//! uses the Kademlia metric: the `k` store nodes whose key is XOR-closest to the topic's key.

use cairn_proto::Topic;

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
