//! Hash maps and sets for the ledger's in-memory indexes (tree nodes, mempool, executed
//! blocks): foldhash instead of std's SipHash, which was a measurable share of executing and
//! finalizing a block. foldhash's state is randomly seeded per map, so keys a peer chooses
//! (transaction ids, tree paths derived from state keys) cannot be aimed at one bucket ahead
//! of time.

/// A `HashMap` with the ledger's hasher; build one with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with the ledger's hasher; build one with `FastSet::default()`.
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
