//! The records of the ledger state ([`StateKey`], [`Account`], [`TopicState`], [`AnchorRecord`])
//! and what a transaction reports ([`Outcome`], [`Receipt`]).

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::{AccountId, DeviceId, Id, Topic};
use jmt::KeyHash;
use sha2::Sha256;

use super::DEVICES_MAX;
use crate::tx::{TxError, TxId};

/// A logical state key (before hashing into the tree).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StateKey {
    /// An account record, by account id.
    Account(AccountId),
    /// The account holding a handle, keyed by the handle's [`crate::handle::skeleton`] (so
    /// look-alikes share one key).
    Handle(String),
    /// The next nonce of a signing key.
    Nonce([u8; 32]),
    /// Handshake order of a topic.
    Topic(Topic),
    /// The anchored head of a conversation.
    Anchor(Topic),
    /// The authority keys of a conversation's topic ([`crate::authority::AuthorityChain`]).
    Authority(Topic),
    /// Chain metadata (the height of the last applied block).
    Meta,
    /// The chain's fee and faucet parameters ([`crate::params::Params`]), set at genesis.
    Params,
    /// The account a device key is bound to (32 bytes: the account id). Written once by the
    /// first `AddDevice` of the key and never removed, so a key serves one account for good.
    DeviceOwner(DeviceId),
    /// The latest key-package batch a device published (its [`KeyPackageRecord`]), written by
    /// `PublishKeyPackages` signed with that device's key.
    KeyPackages(DeviceId),
    /// Contract code (the module bytes), by its [`cairn_contracts::code_hash`].
    Code([u8; 32]),
    /// A contract instance ([`ContractRecord`]), by address. Its balance is the
    /// [`StateKey::Account`] record of the same id.
    Contract([u8; 32]),
    /// One entry of a contract's own state: the address and the contract's key (at most
    /// [`cairn_contracts::Limits::LEDGER`]`.state_key_max` bytes).
    ContractState([u8; 32], Vec<u8>),
    /// The registered store nodes ([`super::StoreSet`]): one bounded record, so one proof
    /// covers the whole set senders and readers place topics on.
    Stores,
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
            Self::Authority(t) => {
                v.extend_from_slice(b"auth");
                v.extend_from_slice(&t.0);
            }
            Self::Meta => v.extend_from_slice(b"meta"),
            Self::Params => v.extend_from_slice(b"parm"),
            Self::DeviceOwner(d) => {
                v.extend_from_slice(b"dvow");
                v.extend_from_slice(&d.0);
            }
            Self::KeyPackages(d) => {
                v.extend_from_slice(b"kpkg");
                v.extend_from_slice(&d.0);
            }
            Self::Code(h) => {
                v.extend_from_slice(b"code");
                v.extend_from_slice(h);
            }
            Self::Contract(a) => {
                v.extend_from_slice(b"ctrt");
                v.extend_from_slice(a);
            }
            Self::ContractState(a, k) => {
                v.extend_from_slice(b"cst/");
                v.extend_from_slice(a);
                v.extend_from_slice(k);
            }
            Self::Stores => v.extend_from_slice(b"stor"),
        }
        v
    }

    /// The key's position in the tree.
    pub fn hash(&self) -> KeyHash {
        KeyHash::with::<Sha256>(self.bytes())
    }
}

/// The batch hash and count a device last published ([`StateKey::KeyPackages`]): the only
/// key-package batch of that device other nodes accept.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KeyPackageRecord {
    /// Hash of the batch's canonical bytes (see `cairn_mls::KeyPackageBatch::ledger_hash`).
    pub batch_hash: [u8; 32],
    /// Number of key packages in the batch.
    pub count: u32,
}

impl KeyPackageRecord {
    /// Canonical encoding: `hash:32 count:u32` (36 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(36);
        w.raw(&self.batch_hash);
        w.u32(self.count);
        w.finish()
    }

    /// Decodes a record (exactly 36 bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let batch_hash = r.array("key_packages.hash")?;
        let count = r.u32("key_packages.count")?;
        r.finish()?;
        Ok(Self { batch_hash, count })
    }
}

/// A contract instance: the code it runs and who created it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ContractRecord {
    /// Hash of its code ([`StateKey::Code`]).
    pub code_hash: [u8; 32],
    /// Account that instantiated it.
    pub creator: AccountId,
}

impl ContractRecord {
    /// Canonical encoding: `version:u8 code_hash:[32] creator:[32]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(65);
        w.u8(1);
        w.raw(&self.code_hash);
        w.raw(&self.creator.0);
        w.finish()
    }

    /// Decodes a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("contract", 1)?;
        let rec = Self {
            code_hash: r.array("contract.code_hash")?,
            creator: AccountId(r.array("contract.creator")?),
        };
        r.finish()?;
        Ok(rec)
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

/// Domain separation for the per-topic handshake hash chain.
const TOPIC_CHAIN_DOMAIN: &str = "cairn 2026-11 ledger topic chain v1";

impl TopicState {
    /// The link of one handshake in its topic's hash chain: the hash of its payload.
    pub fn link(payload: &[u8]) -> [u8; 32] {
        cairn_proto::id::hash(TOPIC_CHAIN_DOMAIN, payload)
    }

    /// The chain value after appending the handshake whose link is `link` to a chain whose
    /// value was `prev` (the empty chain's value is all zeros).
    pub fn chain_step(prev: &[u8; 32], link: &[u8; 32]) -> [u8; 32] {
        let mut w = Writer::with_capacity(64);
        w.raw(prev);
        w.raw(link);
        cairn_proto::id::hash(TOPIC_CHAIN_DOMAIN, &w.finish())
    }

    /// Appends one handshake payload: the count grows by one and the chain takes its link.
    pub fn push(&mut self, payload: &[u8]) {
        self.chain = Self::chain_step(&self.chain, &Self::link(payload));
        self.count = self.count.saturating_add(1);
    }

    /// Canonical encoding (the value under [`StateKey::Topic`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(40);
        w.u64(self.count);
        w.raw(&self.chain);
        w.finish()
    }
    /// Bounded, canonical decoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let s = Self { count: r.u64("topic.count")?, chain: r.array("topic.chain")? };
        r.finish()?;
        Ok(s)
    }
}

/// An anchored conversation head. It records no account: anchors are topic writes, made by
/// whichever member holds an authority key, paid by proof of work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AnchorRecord {
    /// Head envelope id.
    pub head: Id,
    /// Message count up to the head.
    pub count: u64,
}

impl AnchorRecord {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(40);
        w.raw(&self.head.0);
        w.u64(self.count);
        w.finish()
    }
    /// Decodes a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let s = Self { head: Id(r.array("anchor.head")?), count: r.u64("anchor.count")? };
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
    /// A contract call (instantiate or execute) returned cleanly; its effects are applied.
    Contract {
        /// The contract's address.
        address: [u8; 32],
        /// Fuel used (the fee paid for fuel is `fee_per_fuel × fuel_used`).
        fuel_used: u64,
        /// The call's output.
        output: Vec<u8>,
        /// Events emitted, in order.
        events: Vec<Vec<u8>>,
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
