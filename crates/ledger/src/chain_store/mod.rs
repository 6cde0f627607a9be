//! The validator's chain store: finalized blocks, the transaction-outcome index, the handshake
//! lists of every topic and finalization certificates, on disk in one redb file
//! (`<data>/ledger-chain.redb` for a validator process; an in-memory redb for tests and
//! short-lived ledgers).
//!
//! Everything one finalized block adds is written in ONE redb transaction committed with
//! [`Durability::Immediate`] ([`ChainStore::commit_blocks`]; blocks that waited for the
//! finalizer share one), together with the finalized height,
//! so after a crash the file holds a prefix of the finalized chain with every index complete for
//! exactly that prefix: no gap, no half-applied block. Memory does not grow with the chain: the
//! only cache is redb's page cache, bounded by [`CHAIN_CACHE_BYTES`] (redb evicts by its own
//! policy) — the ledger core keeps only the tip and the last [`crate::core::BLOCK_CACHE_MAX`]
//! blocks.

mod outcome;
mod recent;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_proto::Topic;
use cairn_proto::codec::DecodeError;
use redb::backends::InMemoryBackend;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::block::Block;
use crate::fast_map::FastMap;
use crate::state::{Outcome, Receipt, TopicState};
use crate::tx::TxId;
use recent::{Recent, Slice};

/// Bound of redb's page cache for the chain store, bytes (redb's default, 1 GiB, would let a
/// validator's memory grow with its chain up to that).
pub const CHAIN_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// On-disk format of the chain store (2 added [`TOPIC_LINKS`], 3 [`RECENT_OUTCOMES`]; older
/// stores are migrated when opened, and an older build refuses a format-3 store rather than
/// miss the outcomes not yet in [`TXS`]).
const FORMAT: u64 = 3;
/// Outcomes held in [`RECENT_OUTCOMES`] (and memory) before they are moved into [`TXS`] as one
/// sorted batch, a slice per commit (`recent::DRAIN_COMMITS`). Inserting each block's ids into
/// the id-keyed index one block at a time rewrote one index page per transaction at every
/// block (random keys): with 2,000-transaction blocks that was ~40% of finalizing
/// (`pipeline_cost`, finalize 16.1 -> 9.4 us/tx without it).
pub const RECENT_OUTCOMES_MAX: usize = 65_536;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Height → encoded block.
const BLOCKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("blocks");
/// Height → block digest.
const DIGESTS: TableDefinition<'_, u64, [u8; 32]> = TableDefinition::new("digests");
/// Block digest → height.
const HEIGHTS: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("heights");
/// Transaction id → height and outcome (`outcome::encode`).
const TXS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("txs");
/// (Topic, position) → handshake payload.
const HANDSHAKES: TableDefinition<'_, ([u8; 32], u64), &[u8]> = TableDefinition::new("handshakes");
/// (Topic, position) → the handshake's link ([`TopicState::link`]) then the topic's chain
/// value after it ([`TopicState::chain_step`]): what a client needs to check a page of
/// handshakes against the proven [`crate::state::StateKey::Topic`] record.
const TOPIC_LINKS: TableDefinition<'_, ([u8; 32], u64), [u8; 64]> = TableDefinition::new("topic_links");
/// Height → the outcomes of that block's transactions not yet moved into [`TXS`]
/// (`outcome::encode_recent`): appended in height order, so a block's commit writes one row
/// instead of one random index page per transaction.
const RECENT_OUTCOMES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("recent_outcomes");
/// Block digest → encoded finalization certificate.
const CERTS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("certs");

/// What one finalized block adds to the store ([`ChainStore::commit_blocks`]).
pub(crate) struct FinalizedBlock<'a> {
    /// The block.
    pub(crate) block: &'a Block,
    /// The outcome of each of its transactions, in block order.
    pub(crate) receipts: &'a [Receipt],
    /// The handshakes it sequenced (topic, position, payload).
    pub(crate) handshakes: &'a [(Topic, u64, Vec<u8>)],
    /// Its certificate, if already known.
    pub(crate) cert: Option<&'a [u8]>,
}

/// Chain store failures.
#[derive(Debug, Error)]
pub enum ChainStoreError {
    /// redb failed (I/O, corruption, the file locked by another process).
    #[error("ledger chain store: {0} (is another validator using this data directory?)")]
    Db(String),
    /// A stored value does not decode: the file is damaged.
    #[error(
        "ledger chain store is damaged ({what}): {source}; restore the data directory or resync from peers"
    )]
    Corrupt {
        /// Which entry.
        what: &'static str,
        /// Decoder error.
        source: DecodeError,
    },
    /// The file belongs to another chain or format.
    #[error("ledger chain store {0}: move the data directory away to start this chain afresh")]
    Mismatch(&'static str),
}

/// Why a ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The genesis is invalid.
    #[error(transparent)]
    Genesis(#[from] crate::genesis::GenesisError),
    /// The chain store failed or belongs to another chain.
    #[error(transparent)]
    Store(#[from] ChainStoreError),
    /// A stored block does not re-execute to its state root (the store is damaged).
    #[error("stored finalized block {height} does not re-execute: {reason}; restore the data directory")]
    Replay {
        /// Height of the block.
        height: u64,
        /// What went wrong.
        reason: String,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> ChainStoreError {
    ChainStoreError::Db(e.into().to_string())
}

/// Handle to a chain store (cheap to clone; all clones share the database).
#[derive(Clone)]
pub struct ChainStore {
    db: Arc<Database>,
    /// Transaction id → `outcome::encode` of the outcomes in [`RECENT_OUTCOMES`] (see
    /// [`recent::Recent::plan`] for its bound).
    recent: Arc<Mutex<Recent>>,
    recent_max: usize,
}

impl std::fmt::Debug for ChainStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainStore")
    }
}

impl ChainStore {
    /// Opens (or creates) the chain store file at `path`.
    pub fn open(path: &Path) -> Result<Self, ChainStoreError> {
        let database = redb::Builder::new().set_cache_size(CHAIN_CACHE_BYTES).create(path).map_err(db)?;
        Self::init(database)
    }

    /// A store held in memory (tests, short-lived ledgers): nothing survives the process.
    pub fn in_memory() -> Result<Self, ChainStoreError> {
        let database = redb::Builder::new()
            .set_cache_size(CHAIN_CACHE_BYTES)
            .create_with_backend(InMemoryBackend::new())
            .map_err(db)?;
        Self::init(database)
    }

    fn init(database: Database) -> Result<Self, ChainStoreError> {
        let tx = database.begin_write().map_err(db)?;
        {
            tx.open_table(BLOCKS).map_err(db)?;
            tx.open_table(DIGESTS).map_err(db)?;
            tx.open_table(HEIGHTS).map_err(db)?;
            tx.open_table(TXS).map_err(db)?;
            tx.open_table(HANDSHAKES).map_err(db)?;
            tx.open_table(CERTS).map_err(db)?;
            tx.open_table(TOPIC_LINKS).map_err(db)?;
            tx.open_table(RECENT_OUTCOMES).map_err(db)?;
            let mut meta = tx.open_table(META).map_err(db)?;
            let found = meta.get("format").map_err(db)?.map(|v| read_u64(v.value()));
            match found {
                None | Some(Some(2 | FORMAT)) => {}
                Some(Some(1)) => migrate_links(&tx)?,
                Some(_) => return Err(ChainStoreError::Mismatch("was written in another format")),
            }
            meta.insert("format", FORMAT.to_be_bytes().as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        let mut recent = FastMap::default();
        {
            let r = database.begin_read().map_err(db)?;
            for e in r.open_table(RECENT_OUTCOMES).map_err(db)?.iter().map_err(db)? {
                let (h, v) = e.map_err(db)?;
                outcome::decode_recent(h.value(), v.value(), &mut recent)
                    .map_err(|source| ChainStoreError::Corrupt { what: "recent outcomes", source })?;
            }
        }
        Ok(Self {
            db: Arc::new(database),
            recent: Arc::new(Mutex::new(Recent::from_rows(recent))),
            recent_max: RECENT_OUTCOMES_MAX,
        })
    }

    /// The same store moving outcomes into the id index once `max` are held (tests; the
    /// default is [`RECENT_OUTCOMES_MAX`]).
    pub fn with_recent_outcomes_max(mut self, max: usize) -> Self {
        self.recent_max = max.max(1);
        self
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks that the store belongs to the chain `chain` whose genesis block is `genesis`
    /// (writing both into an empty store) and returns the finalized height stored.
    pub(crate) fn start(&self, chain: &[u8; 32], genesis: &Block) -> Result<u64, ChainStoreError> {
        let digest = genesis.id();
        let r = self.db.begin_read().map_err(db)?;
        let meta = r.open_table(META).map_err(db)?;
        if let Some(g) = meta.get("genesis").map_err(db)? {
            let c = meta.get("chain").map_err(db)?;
            if g.value() != digest.as_slice() || c.is_none_or(|c| c.value() != chain.as_slice()) {
                return Err(ChainStoreError::Mismatch(
                    "belongs to another chain (or to a build before block header v2)",
                ));
            }
            let h = meta.get("height").map_err(db)?.and_then(|v| read_u64(v.value()));
            return h.ok_or(ChainStoreError::Mismatch("has no finalized height"));
        }
        drop(meta);
        drop(r);
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut meta = tx.open_table(META).map_err(db)?;
            meta.insert("genesis", digest.as_slice()).map_err(db)?;
            meta.insert("chain", chain.as_slice()).map_err(db)?;
        }
        put_block(&tx, genesis)?;
        tx.commit().map_err(db)?;
        Ok(0)
    }

    /// Writes everything consecutive finalized `blocks` (in height order) add — each block, its
    /// digest, the outcome of each transaction (in block order), the handshakes it sequenced
    /// (topic, position, payload), its certificate if already known — and the new finalized
    /// height (the last block's), in ONE durable transaction: a finalizer that fell behind pays
    /// one sync for all the blocks that waited, and a crash leaves a gap-free prefix.
    pub(crate) fn commit_blocks(&self, blocks: &[FinalizedBlock<'_>]) -> Result<(), ChainStoreError> {
        debug_assert!(blocks.windows(2).all(|w| w[1].block.header.height == w[0].block.header.height + 1));
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate).map_err(db)?;
        // Readers find these outcomes in `recent` from now on: the blocks are final (consensus
        // decided them); a failed commit is retried with the same blocks.
        // Each outcome is encoded once, for its block's row and for `recent`.
        let mut rows = Vec::with_capacity(blocks.len());
        let last = blocks.last().map_or(0, |b| b.block.header.height);
        let slice = {
            let mut recent = self.recent();
            for b in blocks {
                let h = b.block.header.height;
                let entries: Vec<([u8; 32], Vec<u8>)> =
                    b.receipts.iter().map(|r| (r.tx.0, outcome::encode(h, &r.outcome))).collect();
                rows.push((!entries.is_empty()).then(|| outcome::encode_recent(&entries)));
                recent.hold(entries);
            }
            recent.plan(self.recent_max, last)
        };
        for (b, row) in blocks.iter().zip(rows) {
            let h = b.block.header.height;
            {
                if let Some(row) = row {
                    tx.open_table(RECENT_OUTCOMES).map_err(db)?.insert(h, row.as_slice()).map_err(db)?;
                }
                let mut hs = tx.open_table(HANDSHAKES).map_err(db)?;
                let mut links = tx.open_table(TOPIC_LINKS).map_err(db)?;
                for (topic, seq, payload) in b.handshakes {
                    hs.insert((topic.0, *seq), payload.as_slice()).map_err(db)?;
                    put_link(&mut links, topic, *seq, payload)?;
                }
                if let Some(c) = b.cert {
                    tx.open_table(CERTS).map_err(db)?.insert(b.block.id(), c).map_err(db)?;
                }
            }
            put_block(&tx, b.block)?;
        }
        if let Some(s) = &slice {
            move_into_index(&tx, s)?;
        }
        tx.commit().map_err(db)?;
        if let Some(s) = &slice {
            // only the finalizer commits blocks, so the drain is the one planned above
            self.recent().moved(s);
        }
        Ok(())
    }

    /// Stores the certificate of an already stored block. Not synced on its own: it becomes
    /// durable with the next block's commit (a validator re-reads the newest certificate from
    /// marshal's archive at start, and older ones only annotate served blocks).
    pub(crate) fn put_certificate(&self, digest: &[u8; 32], cert: &[u8]) -> Result<(), ChainStoreError> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::None).map_err(db)?;
        tx.open_table(CERTS).map_err(db)?.insert(*digest, cert).map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The certificate of block `digest`, if stored.
    pub fn certificate(&self, digest: &[u8; 32]) -> Result<Option<Vec<u8>>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(CERTS).map_err(db)?;
        Ok(t.get(*digest).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Height of the stored block `digest`, if stored.
    pub fn height_of(&self, digest: &[u8; 32]) -> Result<Option<u64>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(HEIGHTS).map_err(db)?;
        Ok(t.get(*digest).map_err(db)?.map(|v| v.value()))
    }

    /// The finalized block at `height`, if stored.
    pub fn block(&self, height: u64) -> Result<Option<Block>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(BLOCKS).map_err(db)?;
        let Some(v) = t.get(height).map_err(db)? else { return Ok(None) };
        Block::decode_bytes(v.value())
            .map(Some)
            .map_err(|source| ChainStoreError::Corrupt { what: "block", source })
    }

    /// Digest of the finalized block at `height`, if stored.
    pub fn digest(&self, height: u64) -> Result<Option<[u8; 32]>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(DIGESTS).map_err(db)?;
        Ok(t.get(height).map_err(db)?.map(|v| v.value()))
    }

    /// Digests of every stored block, by height (fork checks in tests; reads the whole table).
    pub fn digests(&self) -> Result<Vec<[u8; 32]>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(DIGESTS).map_err(db)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(db)? {
            out.push(e.map_err(db)?.1.value());
        }
        Ok(out)
    }

    /// Height and outcome of finalized transaction `id`, if stored.
    pub fn tx(&self, id: &TxId) -> Result<Option<(u64, Outcome)>, ChainStoreError> {
        let held = self.recent().get(&id.0);
        let bytes = match held {
            Some(b) => b,
            None => {
                let r = self.db.begin_read().map_err(db)?;
                let t = r.open_table(TXS).map_err(db)?;
                let Some(v) = t.get(id.0).map_err(db)? else { return Ok(None) };
                v.value().to_vec()
            }
        };
        outcome::decode(&bytes)
            .map(Some)
            .map_err(|source| ChainStoreError::Corrupt { what: "outcome", source })
    }

    /// For each of `ids`, whether it is a finalized transaction (one read transaction).
    pub fn known(&self, ids: &[TxId]) -> Result<Vec<bool>, ChainStoreError> {
        let held: Vec<bool> = {
            let recent = self.recent();
            ids.iter().map(|id| recent.contains(&id.0)).collect()
        };
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(TXS).map_err(db)?;
        ids.iter().zip(held).map(|(id, h)| Ok(h || t.get(id.0).map_err(db)?.is_some())).collect()
    }

    /// The chain value of `topic` just before position `from` (all zeros for 0), if the store
    /// holds the handshakes before it.
    pub fn chain_before(&self, topic: &Topic, from: u64) -> Result<Option<[u8; 32]>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(TOPIC_LINKS).map_err(db)?;
        chain_before(&t, topic, from)
    }

    /// Links ([`TopicState::link`]) of `topic`'s handshakes at positions `from..until`, at most
    /// `max` (fewer if the store holds fewer).
    pub fn links(
        &self,
        topic: &Topic,
        from: u64,
        until: u64,
        max: usize,
    ) -> Result<Vec<[u8; 32]>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(TOPIC_LINKS).map_err(db)?;
        let mut out = Vec::new();
        if from >= until {
            return Ok(out);
        }
        for e in t.range((topic.0, from)..(topic.0, until)).map_err(db)?.take(max) {
            let v = e.map_err(db)?.1.value();
            out.push(split_link(&v).0);
        }
        Ok(out)
    }

    /// Handshake payloads of `topic` from position `from`, at most `max`.
    pub fn handshakes(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Vec<u8>>, ChainStoreError> {
        let r = self.db.begin_read().map_err(db)?;
        let t = r.open_table(HANDSHAKES).map_err(db)?;
        let mut out = Vec::new();
        for e in t.range((topic.0, from)..=(topic.0, u64::MAX)).map_err(db)?.take(max) {
            out.push(e.map_err(db)?.1.value().to_vec());
        }
        Ok(out)
    }
}

/// In `tx`: `slice`'s outcomes go into [`TXS`] (a contiguous id range, sorted); its drain's
/// last slice also deletes the drained rows of [`RECENT_OUTCOMES`].
fn move_into_index(tx: &redb::WriteTransaction, slice: &Slice) -> Result<(), ChainStoreError> {
    let mut txs = tx.open_table(TXS).map_err(db)?;
    for (id, o) in &slice.batch[slice.range.clone()] {
        txs.insert(*id, o.as_slice()).map_err(db)?;
    }
    if let Some(upto) = slice.last_of {
        tx.open_table(RECENT_OUTCOMES).map_err(db)?.retain_in(..=upto, |_, _| false).map_err(db)?;
    }
    Ok(())
}

/// Stores the link and chain value of handshake `seq` of `topic` (its predecessor's entry,
/// if any, must already be in `links`).
fn put_link(
    links: &mut redb::Table<'_, ([u8; 32], u64), [u8; 64]>,
    topic: &Topic,
    seq: u64,
    payload: &[u8],
) -> Result<(), ChainStoreError> {
    let prev = chain_before(links, topic, seq)?
        .ok_or(ChainStoreError::Mismatch("has a handshake whose predecessor is missing"))?;
    let link = TopicState::link(payload);
    let mut v = [0u8; 64];
    v[..32].copy_from_slice(&link);
    v[32..].copy_from_slice(&TopicState::chain_step(&prev, &link));
    links.insert((topic.0, seq), v).map_err(db)?;
    Ok(())
}

/// The chain value of `topic` before position `from`, read from `t`.
fn chain_before(
    t: &impl ReadableTable<([u8; 32], u64), [u8; 64]>,
    topic: &Topic,
    from: u64,
) -> Result<Option<[u8; 32]>, ChainStoreError> {
    let Some(prev) = from.checked_sub(1) else { return Ok(Some([0; 32])) };
    Ok(t.get((topic.0, prev)).map_err(db)?.map(|v| split_link(&v.value()).1))
}

fn split_link(v: &[u8; 64]) -> ([u8; 32], [u8; 32]) {
    let mut link = [0u8; 32];
    let mut chain = [0u8; 32];
    link.copy_from_slice(&v[..32]);
    chain.copy_from_slice(&v[32..]);
    (link, chain)
}

/// Format 1 → 2: computes the links table from the stored handshakes (in key order: topic,
/// then position, so each predecessor is written first).
fn migrate_links(tx: &redb::WriteTransaction) -> Result<(), ChainStoreError> {
    let hs = tx.open_table(HANDSHAKES).map_err(db)?;
    let mut links = tx.open_table(TOPIC_LINKS).map_err(db)?;
    for e in hs.iter().map_err(db)? {
        let (k, v) = e.map_err(db)?;
        let (topic, seq) = k.value();
        put_link(&mut links, &Topic(topic), seq, v.value())?;
    }
    Ok(())
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Writes `block` at its height with its digest and the finalized height (in `tx`).
fn put_block(tx: &redb::WriteTransaction, block: &Block) -> Result<(), ChainStoreError> {
    let (h, id) = (block.header.height, block.id());
    tx.open_table(BLOCKS).map_err(db)?.insert(h, block.encode_bytes().as_slice()).map_err(db)?;
    tx.open_table(DIGESTS).map_err(db)?.insert(h, id).map_err(db)?;
    tx.open_table(HEIGHTS).map_err(db)?.insert(id, h).map_err(db)?;
    tx.open_table(META).map_err(db)?.insert("height", h.to_be_bytes().as_slice()).map_err(db)?;
    Ok(())
}
