//! The ledger state machine: records, the authenticated store (a Jellyfish Merkle Tree), and
//! deterministic execution of transactions.
//!
//! Everything here is pure: the same transactions applied to the same state give the same
//! receipts and the same root on every machine.
//!
//! Execution is split in two:
//! - **admission** (chain, signer authorization, nonce, signature): a block containing a
//!   transaction that fails admission is invalid as a whole;
//! - **effect** (the body): a failure is recorded in the transaction's [`Receipt`], the nonce is
//!   still consumed and nothing else changes. So a stale handshake or a taken handle gets a final,
//!   agreed answer.

use std::collections::{BTreeMap, HashMap, VecDeque};

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::ed25519::{Signature, VerifyingKey};
use cairn_proto::{AccountId, DeviceId, Id, Topic};
use jmt::storage::{LeafNode, Node, NodeBatch, NodeKey, StaleNodeIndexBatch, TreeReader};
use jmt::{JellyfishMerkleTree, KeyHash, OwnedValue, Version};
use sha2::Sha256;
use thiserror::Error;

use crate::tx::{Tx, TxBody, TxError, TxId, rotation_message};

/// Most devices (active or revoked) an account may have.
pub const DEVICES_MAX: usize = 32;
/// Domain separation for the per-topic handshake hash chain.
const TOPIC_CHAIN_DOMAIN: &str = "cairn 2026-11 ledger topic chain v1";

/// The JMT instantiation used by the ledger.
pub type Tree<'a, R> = JellyfishMerkleTree<'a, R, Sha256>;
/// A JMT proof with the ledger's hasher.
pub type Proof = jmt::proof::SparseMerkleProof<Sha256>;

/// A logical state key (before hashing into the tree).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StateKey {
    /// An account record, by account id.
    Account(AccountId),
    /// The account holding a handle.
    Handle(String),
    /// The next nonce of a signing key.
    Nonce([u8; 32]),
    /// Handshake order of a topic.
    Topic(Topic),
    /// The anchored head of a conversation.
    Anchor(Topic),
    /// Chain metadata (the height of the last applied block).
    Meta,
}

impl StateKey {
    /// The logical key bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        match self {
            Self::Account(a) => {
                v.extend_from_slice(b"acct");
                v.extend_from_slice(&a.0);
            }
            Self::Handle(h) => {
                v.extend_from_slice(b"hndl");
                v.extend_from_slice(h.as_bytes());
            }
            Self::Nonce(k) => {
                v.extend_from_slice(b"nonc");
                v.extend_from_slice(k);
            }
            Self::Topic(t) => {
                v.extend_from_slice(b"topc");
                v.extend_from_slice(&t.0);
            }
            Self::Anchor(t) => {
                v.extend_from_slice(b"anch");
                v.extend_from_slice(&t.0);
            }
            Self::Meta => v.extend_from_slice(b"meta"),
        }
        v
    }

    /// The key's position in the tree.
    pub fn hash(&self) -> KeyHash {
        KeyHash::with::<Sha256>(self.bytes())
    }
}

/// A device of an account.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceEntry {
    /// Device key.
    pub device: DeviceId,
    /// Certificate creation time.
    pub created_at_ms: u64,
    /// Revoked for good.
    pub revoked: bool,
}

/// An account record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Account {
    /// Current account key (equal to the account id until the first rotation).
    pub key: [u8; 32],
    /// Devices, sorted by key, revoked ones kept (a revoked key may never come back).
    pub devices: Vec<DeviceEntry>,
    /// Handle held, if any.
    pub handle: Option<String>,
    /// Token balance.
    pub balance: u64,
    /// Latest published key-package batch: hash and count.
    pub key_packages: Option<([u8; 32], u32)>,
}

impl Account {
    /// A fresh account whose key is its id.
    pub fn new(id: AccountId, balance: u64) -> Self {
        Self { key: id.0, devices: Vec::new(), handle: None, balance, key_packages: None }
    }

    /// Active (non-revoked) devices.
    pub fn active_devices(&self) -> Vec<DeviceId> {
        self.devices.iter().filter(|d| !d.revoked).map(|d| d.device).collect()
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128 + 41 * self.devices.len());
        w.u8(1);
        w.raw(&self.key);
        w.u8(u8::try_from(self.devices.len()).unwrap_or(u8::MAX));
        for d in &self.devices {
            w.raw(&d.device.0);
            w.u64(d.created_at_ms);
            w.u8(u8::from(d.revoked));
        }
        match &self.handle {
            None => w.u8(0),
            Some(h) => {
                w.u8(1);
                w.u8(u8::try_from(h.len()).unwrap_or(u8::MAX));
                w.raw(h.as_bytes());
            }
        }
        w.u64(self.balance);
        match &self.key_packages {
            None => w.u8(0),
            Some((h, n)) => {
                w.u8(1);
                w.raw(h);
                w.u32(*n);
            }
        }
        w.finish()
    }

    /// Decodes a record (canonical: devices strictly sorted, flags 0/1).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("account", 1)?;
        let key = r.array("account.key")?;
        let n = r.u8("account.devices")? as usize;
        if n > DEVICES_MAX {
            return Err(DecodeError::TooLarge {
                field: "account.devices",
                len: n as u64,
                max: DEVICES_MAX as u64,
            });
        }
        let mut devices: Vec<DeviceEntry> = Vec::with_capacity(n);
        for _ in 0..n {
            let device = DeviceId(r.array("account.device")?);
            let created_at_ms = r.u64("account.device.created")?;
            let revoked = read_flag(&mut r, "account.device.revoked")?;
            if devices.last().is_some_and(|p| p.device.0 >= device.0) {
                return Err(DecodeError::NonCanonical {
                    field: "account.devices",
                    reason: "not strictly increasing",
                });
            }
            devices.push(DeviceEntry { device, created_at_ms, revoked });
        }
        let handle = if read_flag(&mut r, "account.handle")? {
            let len = r.u8("account.handle")? as usize;
            let s = std::str::from_utf8(r.take(len, "account.handle")?)
                .map_err(|_| DecodeError::Invalid { field: "account.handle", reason: "not UTF-8" })?;
            crate::tx::check_handle(s)
                .map_err(|_| DecodeError::Invalid { field: "account.handle", reason: "not a handle" })?;
            Some(s.to_owned())
        } else {
            None
        };
        let balance = r.u64("account.balance")?;
        let key_packages = if read_flag(&mut r, "account.key_packages")? {
            Some((r.array("account.key_packages")?, r.u32("account.key_packages")?))
        } else {
            None
        };
        r.finish()?;
        Ok(Self { key, devices, handle, balance, key_packages })
    }
}

fn read_flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::NonCanonical { field, reason: "flag is not 0 or 1" }),
    }
}

/// Handshake order of one topic.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TopicState {
    /// Number of handshake messages sequenced.
    pub count: u64,
    /// Hash chain over the sequenced payloads.
    pub chain: [u8; 32],
}

impl TopicState {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(40);
        w.u64(self.count);
        w.raw(&self.chain);
        w.finish()
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let s = Self { count: r.u64("topic.count")?, chain: r.array("topic.chain")? };
        r.finish()?;
        Ok(s)
    }
}

/// An anchored conversation head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AnchorRecord {
    /// Head envelope id.
    pub head: Id,
    /// Message count up to the head.
    pub count: u64,
    /// Account that anchored it.
    pub by: AccountId,
}

impl AnchorRecord {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(72);
        w.raw(&self.head.0);
        w.u64(self.count);
        w.raw(&self.by.0);
        w.finish()
    }
    /// Decodes a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let s = Self {
            head: Id(r.array("anchor.head")?),
            count: r.u64("anchor.count")?,
            by: AccountId(r.array("anchor.by")?),
        };
        r.finish()?;
        Ok(s)
    }
}

/// What an admitted transaction did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// A handshake got this position in its topic.
    Sequenced {
        /// Topic.
        topic: Topic,
        /// Position.
        seq: u64,
    },
    /// Admitted (nonce consumed) but the body failed; nothing else changed.
    Failed(TxError),
}

/// The result of one transaction in a block.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// Transaction id.
    pub tx: TxId,
    /// What happened.
    pub outcome: Outcome,
}

/// Whether `key` may be authorized to sign: a valid point that is not of small order (the
/// transaction signature rules, ZIP-215, would let anyone sign for a small-order key).
pub fn usable_key(key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| !k.is_weak())
}

/// Reads state values.
pub trait StateRead {
    /// The value at `key`, if any.
    fn get(&self, key: &KeyHash) -> Option<Vec<u8>>;
}

/// Internal inconsistency of the stored state (never caused by a transaction).
#[derive(Debug, Error)]
pub enum StateError {
    /// A stored record does not decode.
    #[error("corrupt state record: {0}")]
    Corrupt(#[from] DecodeError),
    /// The tree failed (missing node).
    #[error("merkle tree: {0}")]
    Tree(String),
}

/// A key written by a transaction's effect and its previous entry in the block's write set.
type UndoEntry = (KeyHash, Option<Option<Vec<u8>>>);

/// Executes transactions over a read-only view, collecting writes.
pub struct Executor<'a> {
    base: &'a dyn StateRead,
    chain: [u8; 32],
    writes: BTreeMap<KeyHash, Option<Vec<u8>>>,
    /// While a transaction's effect runs: the previous entry of every key it wrote (`None`: no
    /// entry), so a failed effect is undone in O(keys touched) rather than by copying the
    /// block's whole write set per transaction.
    undo: Option<Vec<UndoEntry>>,
}

impl<'a> Executor<'a> {
    /// An executor over `base` for chain `chain`.
    pub fn new(base: &'a dyn StateRead, chain: [u8; 32]) -> Self {
        Self { base, chain, writes: BTreeMap::new(), undo: None }
    }

    /// The writes so far.
    pub fn into_writes(self) -> BTreeMap<KeyHash, Option<Vec<u8>>> {
        self.writes
    }

    fn raw(&self, key: &StateKey) -> Option<Vec<u8>> {
        let kh = key.hash();
        match self.writes.get(&kh) {
            Some(v) => v.clone(),
            None => self.base.get(&kh),
        }
    }

    /// Reads an account.
    pub fn account(&self, id: &AccountId) -> Result<Option<Account>, StateError> {
        Ok(self.raw(&StateKey::Account(*id)).map(|b| Account::decode(&b)).transpose()?)
    }

    /// Next nonce of a signing key.
    pub fn nonce(&self, signer: &[u8; 32]) -> Result<u64, StateError> {
        match self.raw(&StateKey::Nonce(*signer)) {
            None => Ok(0),
            Some(b) => {
                let mut r = Reader::new(&b);
                let n = r.u64("nonce")?;
                r.finish()?;
                Ok(n)
            }
        }
    }

    /// Handshake count of a topic.
    pub fn topic(&self, t: &Topic) -> Result<TopicState, StateError> {
        Ok(self.raw(&StateKey::Topic(*t)).map(|b| TopicState::decode(&b)).transpose()?.unwrap_or_default())
    }

    fn put(&mut self, key: StateKey, value: Option<Vec<u8>>) {
        let kh = key.hash();
        let prev = self.writes.insert(kh, value);
        if let Some(undo) = self.undo.as_mut() {
            undo.push((kh, prev));
        }
    }

    /// Writes genesis records (balances) and the height marker.
    pub fn genesis(&mut self, accounts: &[(AccountId, u64)]) {
        for (id, bal) in accounts {
            self.put(StateKey::Account(*id), Some(Account::new(*id, *bal).encode()));
        }
        self.set_height(0);
    }

    /// Records the height of the block being executed.
    pub fn set_height(&mut self, height: u64) {
        self.put(StateKey::Meta, Some(height.to_be_bytes().to_vec()));
    }

    /// Admission checks, cheapest first; `sig_checked` skips the signature check for a
    /// transaction whose signature this node already verified.
    pub fn admit(&self, tx: &Tx, sig_checked: bool) -> Result<(), TxError> {
        if tx.chain != self.chain {
            return Err(TxError::WrongChain);
        }
        let acct = self.account(&tx.account).map_err(|_| TxError::UnknownAccount)?;
        match (&tx.body, acct) {
            (TxBody::RegisterAccount, _) => {
                if tx.signer != tx.account.0 {
                    return Err(TxError::UnknownSigner);
                }
                // a small-order key signs anything under the ZIP-215 rules: never an account key
                if !usable_key(&tx.signer) {
                    return Err(TxError::BadSignature);
                }
            }
            (_, None) => return Err(TxError::UnknownAccount),
            (body, Some(acct)) => {
                if tx.signer != acct.key {
                    match acct.devices.iter().find(|d| d.device.0 == tx.signer) {
                        None => return Err(TxError::UnknownSigner),
                        Some(d) if d.revoked => return Err(TxError::RevokedDevice),
                        Some(_) if body.needs_account_key() => return Err(TxError::NeedsAccountKey),
                        Some(_) => {}
                    }
                }
            }
        }
        let expected = self.nonce(&tx.signer).map_err(|_| TxError::UnknownSigner)?;
        if tx.nonce < expected {
            return Err(TxError::NonceReplayed { expected, got: tx.nonce });
        }
        if tx.nonce > expected {
            return Err(TxError::NonceSkipped { expected, got: tx.nonce });
        }
        if !sig_checked {
            tx.verify_signature()?;
        }
        Ok(())
    }

    /// Admits and applies one transaction. `Err` means it failed admission (no effect at all);
    /// `Ok` carries the outcome of an admitted transaction.
    pub fn apply(&mut self, tx: &Tx, id: TxId, sig_checked: bool) -> Result<Receipt, TxError> {
        self.admit(tx, sig_checked)?;
        let next = tx.nonce.saturating_add(1);
        self.put(StateKey::Nonce(tx.signer), Some(next.to_be_bytes().to_vec()));
        self.undo = Some(Vec::new());
        let res = self.effect(tx);
        let undo = self.undo.take().unwrap_or_default();
        let outcome = match res {
            Ok(o) => o,
            Err(e) => {
                // newest first, so a key written twice ends at its value before the effect
                for (kh, prev) in undo.into_iter().rev() {
                    match prev {
                        Some(v) => self.writes.insert(kh, v),
                        None => self.writes.remove(&kh),
                    };
                }
                Outcome::Failed(e)
            }
        };
        Ok(Receipt { tx: id, outcome })
    }

    fn must_account(&self, id: &AccountId) -> Result<Account, TxError> {
        self.account(id).ok().flatten().ok_or(TxError::UnknownAccount)
    }

    fn effect(&mut self, tx: &Tx) -> Result<Outcome, TxError> {
        let id = tx.account;
        match &tx.body {
            TxBody::RegisterAccount => {
                if self.account(&id).ok().flatten().is_some() {
                    return Err(TxError::AccountExists);
                }
                self.put(StateKey::Account(id), Some(Account::new(id, 0).encode()));
            }
            TxBody::AddDevice { cert } => {
                let mut acct = self.must_account(&id)?;
                if cert.account.0 != acct.key {
                    return Err(TxError::BadDeviceCert("not certified by the current account key"));
                }
                cert.verify().map_err(|_| TxError::BadDeviceCert("signature does not verify"))?;
                if cert.device.0 == acct.key {
                    return Err(TxError::BadDeviceCert("device key equals the account key"));
                }
                if !usable_key(&cert.device.0) {
                    return Err(TxError::BadDeviceCert("device key is not a usable key"));
                }
                let pos = match acct.devices.binary_search_by(|d| d.device.0.cmp(&cert.device.0)) {
                    Ok(_) => return Err(TxError::DeviceExists),
                    Err(p) => p,
                };
                if acct.devices.len() >= DEVICES_MAX {
                    return Err(TxError::TooManyDevices);
                }
                acct.devices.insert(
                    pos,
                    DeviceEntry { device: cert.device, created_at_ms: cert.created_at_ms, revoked: false },
                );
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::RevokeDevice { device } => {
                let mut acct = self.must_account(&id)?;
                match acct.devices.iter_mut().find(|d| d.device == *device && !d.revoked) {
                    None => return Err(TxError::UnknownDevice),
                    Some(d) => d.revoked = true,
                }
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::RotateKey { new_key, new_key_signature } => {
                let mut acct = self.must_account(&id)?;
                if *new_key == acct.key {
                    return Err(TxError::BadRotation("new key equals the current key"));
                }
                if acct.devices.iter().any(|d| d.device.0 == *new_key) {
                    return Err(TxError::BadRotation("new key is a device key"));
                }
                let vk = VerifyingKey::from_bytes(new_key)
                    .map_err(|_| TxError::BadRotation("new key is not a valid key"))?;
                let msg = rotation_message(&self.chain, &id, &acct.key, new_key);
                vk.verify_strict(&msg, &Signature::from_bytes(new_key_signature))
                    .map_err(|_| TxError::BadRotation("new key's signature does not verify"))?;
                acct.key = *new_key;
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::ClaimHandle { name } => {
                let mut acct = self.must_account(&id)?;
                if acct.handle.is_some() {
                    return Err(TxError::AlreadyHasHandle);
                }
                if self.raw(&StateKey::Handle(name.clone())).is_some() {
                    return Err(TxError::HandleTaken);
                }
                acct.handle = Some(name.clone());
                self.put(StateKey::Handle(name.clone()), Some(id.0.to_vec()));
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::ReleaseHandle { name } => {
                let mut acct = self.must_account(&id)?;
                if acct.handle.as_deref() != Some(name.as_str()) {
                    return Err(TxError::HandleNotHeld);
                }
                acct.handle = None;
                self.put(StateKey::Handle(name.clone()), None);
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::TransferHandle { name, to } => {
                let mut acct = self.must_account(&id)?;
                if acct.handle.as_deref() != Some(name.as_str()) {
                    return Err(TxError::HandleNotHeld);
                }
                if *to == id {
                    return Err(TxError::SelfTransfer);
                }
                let mut dest = self.account(to).ok().flatten().ok_or(TxError::UnknownRecipient)?;
                if dest.handle.is_some() {
                    return Err(TxError::AlreadyHasHandle);
                }
                acct.handle = None;
                dest.handle = Some(name.clone());
                self.put(StateKey::Handle(name.clone()), Some(to.0.to_vec()));
                self.put(StateKey::Account(id), Some(acct.encode()));
                self.put(StateKey::Account(*to), Some(dest.encode()));
            }
            TxBody::PublishKeyPackages { batch_hash, count } => {
                let mut acct = self.must_account(&id)?;
                acct.key_packages = Some((*batch_hash, *count));
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::SequenceHandshake { topic, after, payload } => {
                let mut t = self
                    .topic(topic)
                    .map_err(|_| TxError::StaleSequence { after: *after, current: u64::MAX })?;
                if t.count != *after {
                    return Err(TxError::StaleSequence { after: *after, current: t.count });
                }
                let mut w = Writer::with_capacity(72);
                w.raw(&t.chain);
                w.raw(&cairn_proto::id::hash(TOPIC_CHAIN_DOMAIN, payload));
                t.chain = cairn_proto::id::hash(TOPIC_CHAIN_DOMAIN, &w.finish());
                t.count = t.count.saturating_add(1);
                self.put(StateKey::Topic(*topic), Some(t.encode()));
                return Ok(Outcome::Sequenced { topic: *topic, seq: *after });
            }
            TxBody::Anchor { topic, head, count } => {
                if let Some(b) = self.raw(&StateKey::Anchor(*topic))
                    && let Ok(prev) = AnchorRecord::decode(&b)
                    && prev.count > *count
                {
                    return Err(TxError::AnchorRegressed { count: *count, anchored: prev.count });
                }
                let rec = AnchorRecord { head: *head, count: *count, by: id };
                self.put(StateKey::Anchor(*topic), Some(rec.encode()));
            }
            TxBody::Transfer { to, amount } => {
                if *to == id {
                    return Err(TxError::SelfTransfer);
                }
                let mut from = self.must_account(&id)?;
                let mut dest = self.account(to).ok().flatten().ok_or(TxError::UnknownRecipient)?;
                if from.balance < *amount {
                    return Err(TxError::InsufficientBalance { have: from.balance, need: *amount });
                }
                dest.balance = dest.balance.checked_add(*amount).ok_or(TxError::BalanceOverflow)?;
                from.balance -= *amount;
                self.put(StateKey::Account(id), Some(from.encode()));
                self.put(StateKey::Account(*to), Some(dest.encode()));
            }
        }
        Ok(Outcome::Applied)
    }
}

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
#[derive(Default, Debug)]
pub struct StateDb {
    nodes: HashMap<NodeKey, Node>,
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
        Ok(self
            .db
            .values
            .range((key_hash, 0)..=(key_hash, max_version))
            .next_back()
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
        self.values.range((*key, 0)..=(*key, Version::MAX)).next_back().and_then(|(_, v)| v.clone())
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
        let set: Vec<(KeyHash, Option<Vec<u8>>)> = writes.iter().map(|(k, v)| (*k, v.clone())).collect();
        let (root, batch) = tree.put_value_set(set, height).map_err(|e| StateError::Tree(e.to_string()))?;
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

/// Builds the genesis layer (height 0).
pub fn genesis_layer(
    db: &StateDb,
    chain: [u8; 32],
    accounts: &[(AccountId, u64)],
) -> Result<Layer, StateError> {
    let overlay = db.overlay(Vec::new());
    let mut ex = Executor::new(&overlay, chain);
    ex.genesis(accounts);
    let writes = ex.into_writes();
    db.commit_layer(Vec::new(), 0, writes)
}

/// How a block's transactions are treated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Building: transactions failing admission are left out.
    Propose,
    /// Checking someone else's block: any transaction failing admission invalidates it.
    Verify,
}

/// A transaction left out of a proposal, and why.
#[derive(Clone, Debug)]
pub struct Dropped {
    /// Index in the candidate list.
    pub index: usize,
    /// Transaction id.
    pub tx: TxId,
    /// Reason.
    pub error: TxError,
}

/// The result of executing a block's transactions.
#[derive(Debug)]
pub struct Executed {
    /// Indices of the candidate transactions that were included, in order.
    pub included: Vec<usize>,
    /// Receipts of the included transactions.
    pub receipts: Vec<Receipt>,
    /// Candidates left out (propose mode only).
    pub dropped: Vec<Dropped>,
    /// The state changes.
    pub layer: Layer,
}

/// Why a block's transactions are invalid.
#[derive(Debug, Error)]
pub enum BlockError {
    /// A transaction failed admission.
    #[error("transaction {index} refused: {error}")]
    Tx {
        /// Position in the block.
        index: usize,
        /// Reason.
        error: TxError,
    },
    /// State failure.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Executes candidate transactions at `height` on top of `db` + `layers`.
///
/// `sig_checked(id)` tells whether this node already verified that transaction's signature.
pub fn execute(
    db: &StateDb,
    layers: Vec<&Layer>,
    chain: [u8; 32],
    height: u64,
    txs: &[Vec<u8>],
    mode: Mode,
    sig_checked: &dyn Fn(&TxId) -> bool,
) -> Result<Executed, BlockError> {
    let overlay = db.overlay(layers.clone());
    let mut ex = Executor::new(&overlay, chain);
    ex.set_height(height);
    let mut included = Vec::new();
    let mut receipts = Vec::new();
    let mut dropped = Vec::new();
    for (index, bytes) in txs.iter().enumerate() {
        let id = Tx::id_of(bytes);
        let res = Tx::decode(bytes).and_then(|tx| ex.apply(&tx, id, sig_checked(&id)));
        match (res, mode) {
            (Ok(r), _) => {
                included.push(index);
                receipts.push(r);
            }
            (Err(error), Mode::Verify) => return Err(BlockError::Tx { index, error }),
            (Err(error), Mode::Propose) => dropped.push(Dropped { index, tx: id, error }),
        }
    }
    let writes = ex.into_writes();
    let layer = db.commit_layer(layers, height, writes)?;
    Ok(Executed { included, receipts, dropped, layer })
}

/// A single-replica ledger state: applies blocks of transactions one after the other. The
/// validator uses the same functions with fork-aware layers; this is the sequential form, for
/// tests, replay and tools.
#[derive(Debug)]
pub struct Machine {
    /// Finalized state.
    pub db: StateDb,
    /// Chain id.
    pub chain: [u8; 32],
}

impl Machine {
    /// A machine at genesis.
    pub fn genesis(chain: [u8; 32], accounts: &[(AccountId, u64)]) -> Result<Self, StateError> {
        let mut db = StateDb::default();
        let layer = genesis_layer(&db, chain, accounts)?;
        db.apply(layer);
        Ok(Self { db, chain })
    }

    /// Next height.
    pub fn next_height(&self) -> u64 {
        self.db.height().map_or(0, |h| h + 1)
    }

    /// Builds the next block from candidates (dropping those that fail admission), applies it,
    /// and returns what happened.
    pub fn propose_and_apply(&mut self, txs: &[Vec<u8>]) -> Result<(Vec<Receipt>, Vec<Dropped>), StateError> {
        let h = self.next_height();
        let ex = execute(&self.db, Vec::new(), self.chain, h, txs, Mode::Propose, &|_| false).map_err(
            |e| match e {
                BlockError::State(s) => s,
                BlockError::Tx { .. } => StateError::Tree("admission failure in propose mode".into()),
            },
        )?;
        self.db.apply(ex.layer);
        Ok((ex.receipts, ex.dropped))
    }

    /// Applies a block in verify mode: any transaction failing admission rejects it.
    pub fn apply_block(&mut self, txs: &[Vec<u8>]) -> Result<Vec<Receipt>, BlockError> {
        let h = self.next_height();
        let ex = execute(&self.db, Vec::new(), self.chain, h, txs, Mode::Verify, &|_| false)?;
        self.db.apply(ex.layer);
        Ok(ex.receipts)
    }

    /// Reads an account.
    pub fn account(&self, id: &AccountId) -> Option<Account> {
        self.db.get(&StateKey::Account(*id)).and_then(|b| Account::decode(&b).ok())
    }

    /// Next nonce of a signer.
    pub fn nonce(&self, signer: &[u8; 32]) -> u64 {
        let ov = self.db.overlay(Vec::new());
        Executor::new(&ov, self.chain).nonce(signer).unwrap_or(0)
    }
}
