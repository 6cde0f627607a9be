//! Registered store nodes: who may hold a conversation topic's mail.
//!
//! A store node is registered by an account with `RegisterStore`: the node's libp2p Ed25519 key
//! signs its consent ([`crate::tx::store_binding_message`]), and the account pays the **store
//! fee** ([`store_fee`]: the price of [`STORE_FEE_BYTES`] of transactions, burned) on top of the
//! transaction fee. The set lives in one bounded state record ([`StateKey::Stores`], at most
//! [`STORES_MAX`] entries, [`STORES_PER_ACCOUNT_MAX`] per account), so one state proof against a
//! certified header gives a light client the whole set.
//!
//! **Placement.** Senders and readers place a topic on the registered stores with the smallest
//! `BLAKE3(topic ‖ node key ‖ salt)` (`cairn_net::shard::rank_registered`). The salt is drawn by
//! the ledger when the registration executes, from the parent block's state root and the
//! transaction id ([`StoreEntry::salt`]): a node key cannot be ground offline towards a topic
//! (its rank is unknown until it is registered), so each try at a better rank costs one store
//! fee. What is left: a party that predicts the parent state root of the block its registration
//! lands in (a proposer, or anyone on a quiet chain) can grind against it; a randomness beacon
//! in the certificate would close that.

use cairn_proto::AccountId;
use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::ed25519::{Signature, VerifyingKey};

use super::{Executor, Outcome, StateKey, usable_key};
use crate::params::Params;
use crate::tx::{Tx, TxError, store_binding_message};

/// Most registered store nodes (the record stays under 27 KB, inside one state proof).
pub const STORES_MAX: usize = 256;
/// Most store nodes one account may register.
pub const STORES_PER_ACCOUNT_MAX: usize = 4;
/// The store fee is the fee of this many transaction bytes (10 MiB): at the default price,
/// about 10^8 units, what writing 10 MiB to the ledger costs.
pub const STORE_FEE_BYTES: u64 = 10 * 1024 * 1024;
const STORES_VERSION: u8 = 1;
const SALT_DOMAIN: &str = "cairn 2026-12 store rank salt v1";
const ENTRY_BYTES: usize = 32 + 32 + 32 + 8;

/// The fee of registering a store node (burned), on top of the transaction's own fee.
pub fn store_fee(params: &Params) -> u64 {
    params.fee_per_byte.saturating_mul(STORE_FEE_BYTES)
}

/// One registered store node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoreEntry {
    /// The node's Ed25519 key (its libp2p identity).
    pub node_key: [u8; 32],
    /// The account that registered it.
    pub account: AccountId,
    /// Rank salt drawn by the ledger at registration (parent state root and transaction id).
    pub salt: [u8; 32],
    /// Height of the block that registered it.
    pub height: u64,
}

/// The registered store nodes, sorted by node key (the value under [`StateKey::Stores`]).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct StoreSet {
    /// Entries, sorted by node key, at most [`STORES_MAX`].
    pub entries: Vec<StoreEntry>,
}

impl StoreSet {
    /// Canonical encoding: `version:u8 count:u16 (node_key:[32] account:[32] salt:[32]
    /// height:u64)*`, sorted by node key.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(3 + self.entries.len() * ENTRY_BYTES);
        w.u8(STORES_VERSION);
        w.u16(u16::try_from(self.entries.len()).unwrap_or(u16::MAX));
        for e in &self.entries {
            w.raw(&e.node_key);
            w.raw(&e.account.0);
            w.raw(&e.salt);
            w.u64(e.height);
        }
        w.finish()
    }

    /// Bounded decoding: at most [`STORES_MAX`] entries, strictly sorted by node key.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("store set", STORES_VERSION)?;
        let n = r.count(STORES_MAX, "stores")?;
        let mut entries: Vec<StoreEntry> = Vec::with_capacity(n);
        for _ in 0..n {
            let e = StoreEntry {
                node_key: r.array("store.node_key")?,
                account: AccountId(r.array("store.account")?),
                salt: r.array("store.salt")?,
                height: r.u64("store.height")?,
            };
            if entries.last().is_some_and(|p| p.node_key >= e.node_key) {
                return Err(DecodeError::NonCanonical { field: "stores", reason: "not sorted by node key" });
            }
            entries.push(e);
        }
        r.finish()?;
        Ok(Self { entries })
    }

    /// The entry of `node_key`, if registered.
    pub fn get(&self, node_key: &[u8; 32]) -> Option<&StoreEntry> {
        self.entries.binary_search_by(|e| e.node_key.cmp(node_key)).ok().map(|i| &self.entries[i])
    }

    /// How many stores `account` registered.
    pub fn count_of(&self, account: &AccountId) -> usize {
        self.entries.iter().filter(|e| e.account == *account).count()
    }
}

impl Executor<'_> {
    /// The registered store nodes (empty when none; a corrupt record reads as empty, which
    /// genesis and the executor never write).
    pub fn stores(&self) -> StoreSet {
        self.raw(&StateKey::Stores).and_then(|b| StoreSet::decode(&b).ok()).unwrap_or_default()
    }

    pub(super) fn register_store(
        &mut self,
        tx: &Tx,
        node_key: &[u8; 32],
        node_signature: &[u8; 64],
    ) -> Result<Outcome, TxError> {
        let id = tx.account;
        let mut acct = self.account(&id).ok().flatten().ok_or(TxError::UnknownAccount)?;
        if !usable_key(node_key) {
            return Err(TxError::BadStoreBinding);
        }
        let vk = VerifyingKey::from_bytes(node_key).map_err(|_| TxError::BadStoreBinding)?;
        let msg = store_binding_message(&self.chain, &id, node_key);
        vk.verify_strict(&msg, &Signature::from_bytes(node_signature))
            .map_err(|_| TxError::BadStoreBinding)?;
        let mut set = self.stores();
        let at = match set.entries.binary_search_by(|e| e.node_key.cmp(node_key)) {
            Ok(_) => return Err(TxError::StoreExists),
            Err(at) => at,
        };
        if set.count_of(&id) >= STORES_PER_ACCOUNT_MAX {
            return Err(TxError::TooManyStores { max: STORES_PER_ACCOUNT_MAX });
        }
        if set.entries.len() >= STORES_MAX {
            return Err(TxError::StoreSetFull { max: STORES_MAX });
        }
        let fee = store_fee(&self.params());
        if acct.balance < fee {
            return Err(TxError::InsufficientBalance { have: acct.balance, need: fee });
        }
        // burned, like the transaction fee
        acct.balance -= fee;
        let mut input = Vec::with_capacity(96);
        input.extend_from_slice(&self.seed);
        input.extend_from_slice(&tx.id().0);
        input.extend_from_slice(node_key);
        let salt = cairn_proto::id::hash(SALT_DOMAIN, &input);
        set.entries.insert(at, StoreEntry { node_key: *node_key, account: id, salt, height: self.height });
        self.put(StateKey::Account(id), Some(acct.encode()));
        self.put(StateKey::Stores, Some(set.encode()));
        Ok(Outcome::Applied)
    }

    pub(super) fn deregister_store(
        &mut self,
        id: &AccountId,
        node_key: &[u8; 32],
    ) -> Result<Outcome, TxError> {
        let mut set = self.stores();
        match set.entries.binary_search_by(|e| e.node_key.cmp(node_key)) {
            Ok(i) if set.entries[i].account == *id => {
                set.entries.remove(i);
            }
            _ => return Err(TxError::UnknownStore),
        }
        let value = if set.entries.is_empty() { None } else { Some(set.encode()) };
        self.put(StateKey::Stores, value);
        Ok(Outcome::Applied)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_set_round_trips_and_decoding_is_bounded() {
        let e =
            |k: u8| StoreEntry { node_key: [k; 32], account: AccountId([9; 32]), salt: [k; 32], height: 7 };
        let set = StoreSet { entries: vec![e(1), e(2), e(5)] };
        let bytes = set.encode();
        assert_eq!(bytes.len(), 3 + 3 * ENTRY_BYTES);
        assert_eq!(StoreSet::decode(&bytes).unwrap(), set);
        assert_eq!(set.get(&[2; 32]).unwrap().height, 7);
        assert!(set.get(&[3; 32]).is_none());
        // unsorted or duplicate entries are not canonical
        let dup = StoreSet { entries: vec![e(2), e(2)] };
        assert!(StoreSet::decode(&dup.encode()).is_err());
        // a count over the bound is refused before anything is read
        let mut w = Writer::with_capacity(3);
        w.u8(STORES_VERSION);
        w.u16(u16::try_from(STORES_MAX + 1).unwrap());
        assert!(matches!(StoreSet::decode(&w.finish()), Err(DecodeError::TooLarge { .. })));
        assert!(StoreSet::decode(&[]).is_err());
        let mut long = bytes;
        long.push(0);
        assert!(StoreSet::decode(&long).is_err());
        // a full set fits one proven state value
        let full = StoreSet {
            entries: (0..STORES_MAX)
                .map(|i| {
                    let mut k = [0; 32];
                    k[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    StoreEntry { node_key: k, ..e(0) }
                })
                .collect(),
        };
        assert!(full.encode().len() <= crate::light::VALUE_BYTES_MAX);
        assert_eq!(StoreSet::decode(&full.encode()).unwrap(), full);
    }
}
