//! Ledger transactions: canonical encoding, signing, and the typed reasons a transaction is
//! refused.
//!
//! A transaction names the account it acts for, the key that signed it (the account key or one
//! of the account's devices), a per-signer nonce, and a body. The signature covers the domain
//! separation string, the chain id, and every other field, so a transaction is valid on one chain
//! only and cannot be replayed under another nonce.
//!
//! Handshake sequencing and anchors are not account transactions: they are topic writes
//! ([`crate::topic_tx`]), which name no account and pay by proof of work. The account-paid
//! kinds that carried them (8, 9, 17, 18) are retired and refused as malformed.

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::ed25519::{Signer as _, SigningKey};
use cairn_proto::sequencer::HANDSHAKE_BYTES_MAX;
use cairn_proto::{AccountId, DeviceCert, DeviceId};

pub use crate::authority::{TopicAuth, TopicWrite};
pub use crate::topic_tx::{AnyTx, TopicBody, TopicTx};
use commonware_codec::DecodeExt as _;
use commonware_cryptography::{BatchEntry, BatchVerifier as _, Verifier as _, ed25519 as cw_ed25519};

pub use crate::tx_error::TxError;

/// Signature namespace of transactions: a transaction signature is an Ed25519 signature over
/// `union_unique(namespace, unsigned transaction)` (commonware's length-prefixed framing), checked
/// under the ZIP-215 rules (see [`Tx::verify_signature`]).
const TX_SIG_NAMESPACE: &[u8] = b"cairn/ledger-tx/v2";
/// Batches of signatures at least this large are checked with one batch equation.
const SIG_BATCH_MIN: usize = 4;
/// Domain separation for the new key's consent to an account key rotation.
const ROTATE_SIG_DOMAIN: &[u8] = b"cairn/ledger-rotate/v1";
/// Domain separation for a device key's consent to being bound to an account.
const DEVICE_BIND_SIG_DOMAIN: &[u8] = b"cairn/ledger-device-bind/v1";
/// Domain separation for transaction ids.
pub(crate) const TX_ID_DOMAIN: &str = "cairn 2026-11 ledger tx id v1";
const TX_VERSION: u8 = 1;
/// Kind byte of [`TxBody::AddDevice`] (kind 1, without the device's consent, is retired).
const ADD_DEVICE_KIND: u8 = 11;
const DEPLOY_KIND: u8 = 12;
const INSTANTIATE_KIND: u8 = 13;
const EXECUTE_KIND: u8 = 14;
/// Kind byte of [`TxBody::RegisterStore`].
const REGISTER_STORE_KIND: u8 = 15;
/// Kind byte of [`TxBody::DeregisterStore`].
const DEREGISTER_STORE_KIND: u8 = 16;
/// Domain separation for a store node key's consent to being registered for an account.
const STORE_BIND_SIG_DOMAIN: &[u8] = b"cairn/ledger-store-bind/v1";
/// Largest contract message (an instantiate or execute input), in bytes.
pub const CONTRACT_MSG_MAX: usize = 16 * 1024;
/// Largest contract code a transaction carries, in bytes: the ledger's module limit
/// ([`cairn_contracts::Limits::LEDGER`], 512 KiB) cut to what fits in [`TX_BYTES_MAX`].
pub const CODE_BYTES_MAX: usize = TX_BYTES_MAX - 256;

/// Largest encoded transaction, in bytes (a full handshake message plus the envelope).
pub const TX_BYTES_MAX: usize = HANDSHAKE_BYTES_MAX + 512;
/// Shortest handle, in characters.
pub const HANDLE_LEN_MIN: usize = 3;
/// Longest handle, in characters.
pub const HANDLE_LEN_MAX: usize = 32;

/// Signer keys decoded for batch verification, kept (keys, ~200 bytes each, so ≤ ~4 MiB):
/// decoding a key decompresses a curve point, about a sixth of a batch verification's cost,
/// and a validator sees the same signers again and again. A decoded key is a function of its
/// bytes, so a kept one verifies exactly as a fresh one. Overflow policy: the cache is emptied.
pub const SIGNER_KEYS_MAX: usize = 16_384;
static SIGNER_KEYS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<[u8; 32], cw_ed25519::PublicKey>>,
> = std::sync::LazyLock::new(|| std::sync::Mutex::new(std::collections::HashMap::new()));

static SIG_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Total time this process spent verifying transaction signatures, in nanoseconds (for the
/// bench's CPU breakdown).
pub fn signature_verify_nanos() -> u64 {
    SIG_NANOS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The id of a transaction: a hash of its canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TxId(pub [u8; 32]);

impl std::fmt::Display for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// What a transaction does.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TxBody {
    /// Creates the account named by the transaction; signed by that account key.
    RegisterAccount,
    /// Authorizes a device; the certificate must be signed by the account's current key, and the
    /// device key proves it consents (so nobody binds a key they do not hold). A device key is
    /// bound to one account for good.
    AddDevice {
        /// Certificate of the new device.
        cert: DeviceCert,
        /// The device key's signature over [`device_binding_message`].
        device_signature: [u8; 64],
    },
    /// Revokes a device for good.
    RevokeDevice {
        /// Device to revoke.
        device: DeviceId,
    },
    /// Replaces the account key; signed by the old key, and the new key consents.
    RotateKey {
        /// The new account key.
        new_key: [u8; 32],
        /// The new key's signature over [`rotation_message`].
        new_key_signature: [u8; 64],
    },
    /// Claims a free handle.
    ClaimHandle {
        /// Normalized handle (see [`normalize_handle`]).
        name: String,
    },
    /// Releases the account's handle.
    ReleaseHandle {
        /// The handle held.
        name: String,
    },
    /// Gives the account's handle to another registered account that has none.
    TransferHandle {
        /// The handle held.
        name: String,
        /// Receiving account.
        to: AccountId,
    },
    /// Publishes the hash of a batch of MLS key packages.
    PublishKeyPackages {
        /// Hash of the batch.
        batch_hash: [u8; 32],
        /// Number of key packages in the batch.
        count: u32,
    },
    /// Moves balance to another account; if the receiving key has no account yet, creates it
    /// (registered, with no devices), which is how a new account is funded where the faucet is
    /// off.
    Transfer {
        /// Receiving account.
        to: AccountId,
        /// Amount.
        amount: u64,
    },
    /// Stores contract code (checked against the upload rules), named by its
    /// [`cairn_contracts::code_hash`].
    Deploy {
        /// The WebAssembly module (at most [`CODE_BYTES_MAX`]).
        code: Vec<u8>,
    },
    /// Creates a contract instance of stored code at [`crate::state::contract_address`], moves
    /// `funds` to it and runs its `init` with `msg`.
    Instantiate {
        /// Hash of deployed code.
        code_hash: [u8; 32],
        /// Input of `init` (at most [`CONTRACT_MSG_MAX`]).
        msg: Vec<u8>,
        /// Amount moved from the account to the contract before `init` runs.
        funds: u64,
        /// Most fuel the call may use (at most [`crate::state::FUEL_LIMIT_MAX`]); the fee for
        /// all of it is reserved, the unused part refunded.
        fuel_limit: u64,
    },
    /// Runs a contract's `execute` with `msg`, after moving `funds` to it.
    Execute {
        /// Contract address.
        contract: [u8; 32],
        /// Input of `execute` (at most [`CONTRACT_MSG_MAX`]).
        msg: Vec<u8>,
        /// Amount moved from the account to the contract before the call.
        funds: u64,
        /// Most fuel the call may use (at most [`crate::state::FUEL_LIMIT_MAX`]).
        fuel_limit: u64,
    },
    /// Registers a store node (its libp2p Ed25519 key) for the account, paying the store fee
    /// ([`crate::state::store_fee`], burned) on top of the transaction fee; the node key consents
    /// (so nobody registers, or squats, a node they do not run). See [`crate::state::StoreSet`].
    RegisterStore {
        /// The store node's Ed25519 public key (its libp2p identity).
        node_key: [u8; 32],
        /// The node key's signature over [`store_binding_message`].
        node_signature: [u8; 64],
    },
    /// Removes a store node the account registered (the store fee is not refunded).
    DeregisterStore {
        /// The store node's key.
        node_key: [u8; 32],
    },
}

/// A signed transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Tx {
    /// Chain the transaction is meant for (the genesis hash).
    pub chain: [u8; 32],
    /// The account acted for (its original key, which stays its id across rotations).
    pub account: AccountId,
    /// The signing key: the account's current key or one of its active devices.
    pub signer: [u8; 32],
    /// Per-signer sequence number, starting at 0.
    pub nonce: u64,
    /// What to do.
    pub body: TxBody,
    /// Ed25519 signature by `signer`.
    pub signature: [u8; 64],
}

/// Normalizes a handle: strips one leading `@`, lowercases ASCII, then checks the rules
/// (`[a-z0-9_]`, [`HANDLE_LEN_MIN`]`..=`[`HANDLE_LEN_MAX`] characters).
pub fn normalize_handle(input: &str) -> Result<String, TxError> {
    let s = input.strip_prefix('@').unwrap_or(input);
    let s = s.to_ascii_lowercase();
    check_handle(&s)?;
    Ok(s)
}

/// Checks that `s` is already a normalized handle.
pub fn check_handle(s: &str) -> Result<(), TxError> {
    if s.len() < HANDLE_LEN_MIN {
        return Err(TxError::BadHandle("shorter than 3 characters"));
    }
    if s.len() > HANDLE_LEN_MAX {
        return Err(TxError::BadHandle("longer than 32 characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(TxError::BadHandle("only a-z, 0-9 and _ are allowed"));
    }
    Ok(())
}

/// The message the new key signs to consent to a rotation.
pub fn rotation_message(chain: &[u8; 32], account: &AccountId, old: &[u8; 32], new: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(160);
    w.raw(ROTATE_SIG_DOMAIN);
    w.raw(chain);
    w.raw(&account.0);
    w.raw(old);
    w.raw(new);
    w.finish()
}

/// The message a device key signs to consent to being bound to `account` on chain `chain` (the
/// genesis hash, so the consent cannot be replayed on another chain).
pub fn device_binding_message(chain: &[u8; 32], account: &AccountId, device: &DeviceId) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.raw(DEVICE_BIND_SIG_DOMAIN);
    w.raw(chain);
    w.raw(&account.0);
    w.raw(&device.0);
    w.finish()
}

/// The message a store node's identity key signs to consent to being registered as a store of
/// `account` on chain `chain` (the genesis hash).
pub fn store_binding_message(chain: &[u8; 32], account: &AccountId, node_key: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.raw(STORE_BIND_SIG_DOMAIN);
    w.raw(chain);
    w.raw(&account.0);
    w.raw(node_key);
    w.finish()
}

impl TxBody {
    /// An `AddDevice` body for `cert`, with the device key's consent for chain `chain`.
    /// `device_key` must be the key `cert` certifies.
    pub fn add_device(chain: &[u8; 32], cert: DeviceCert, device_key: &SigningKey) -> Self {
        let msg = device_binding_message(chain, &cert.account, &cert.device);
        Self::AddDevice { cert, device_signature: device_key.sign(&msg).to_bytes() }
    }
}

fn write_handle(w: &mut Writer, name: &str) {
    w.u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
    w.raw(name.as_bytes());
}

fn read_handle(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = r.u8("handle")? as usize;
    if len > HANDLE_LEN_MAX {
        return Err(DecodeError::TooLarge { field: "handle", len: len as u64, max: HANDLE_LEN_MAX as u64 });
    }
    let bytes = r.take(len, "handle")?;
    let s = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::Invalid { field: "handle", reason: "not UTF-8" })?;
    check_handle(s)
        .map_err(|_| DecodeError::Invalid { field: "handle", reason: "not a normalized handle" })?;
    Ok(s.to_owned())
}

impl TxBody {
    fn encode_to(&self, w: &mut Writer) {
        match self {
            Self::RegisterAccount => w.u8(0),
            Self::AddDevice { cert, device_signature } => {
                w.u8(ADD_DEVICE_KIND);
                cert.encode_to(w);
                w.raw(device_signature);
            }
            Self::RevokeDevice { device } => {
                w.u8(2);
                w.raw(&device.0);
            }
            Self::RotateKey { new_key, new_key_signature } => {
                w.u8(3);
                w.raw(new_key);
                w.raw(new_key_signature);
            }
            Self::ClaimHandle { name } => {
                w.u8(4);
                write_handle(w, name);
            }
            Self::ReleaseHandle { name } => {
                w.u8(5);
                write_handle(w, name);
            }
            Self::TransferHandle { name, to } => {
                w.u8(6);
                write_handle(w, name);
                w.raw(&to.0);
            }
            Self::PublishKeyPackages { batch_hash, count } => {
                w.u8(7);
                w.raw(batch_hash);
                w.u32(*count);
            }
            Self::Transfer { to, amount } => {
                w.u8(10);
                w.raw(&to.0);
                w.u64(*amount);
            }
            Self::Deploy { code } => {
                w.u8(DEPLOY_KIND);
                w.bytes(code);
            }
            Self::Instantiate { code_hash, msg, funds, fuel_limit } => {
                w.u8(INSTANTIATE_KIND);
                w.raw(code_hash);
                w.bytes(msg);
                w.u64(*funds);
                w.u64(*fuel_limit);
            }
            Self::Execute { contract, msg, funds, fuel_limit } => {
                w.u8(EXECUTE_KIND);
                w.raw(contract);
                w.bytes(msg);
                w.u64(*funds);
                w.u64(*fuel_limit);
            }
            Self::RegisterStore { node_key, node_signature } => {
                w.u8(REGISTER_STORE_KIND);
                w.raw(node_key);
                w.raw(node_signature);
            }
            Self::DeregisterStore { node_key } => {
                w.u8(DEREGISTER_STORE_KIND);
                w.raw(node_key);
            }
        }
    }

    /// The most fuel this body may use (0 for everything but contract calls).
    pub fn fuel_limit(&self) -> u64 {
        match self {
            Self::Instantiate { fuel_limit, .. } | Self::Execute { fuel_limit, .. } => *fuel_limit,
            _ => 0,
        }
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("tx.kind")? {
            0 => Self::RegisterAccount,
            1 => {
                return Err(DecodeError::Invalid {
                    field: "tx.kind",
                    reason: "AddDevice without the device key's signature is retired: use kind 11",
                });
            }
            ADD_DEVICE_KIND => Self::AddDevice {
                cert: DeviceCert::decode_from(r)?,
                device_signature: r.array("tx.device_signature")?,
            },
            2 => Self::RevokeDevice { device: DeviceId(r.array("tx.device")?) },
            3 => Self::RotateKey {
                new_key: r.array("tx.new_key")?,
                new_key_signature: r.array("tx.new_key_signature")?,
            },
            4 => Self::ClaimHandle { name: read_handle(r)? },
            5 => Self::ReleaseHandle { name: read_handle(r)? },
            6 => Self::TransferHandle { name: read_handle(r)?, to: AccountId(r.array("tx.to")?) },
            7 => {
                Self::PublishKeyPackages { batch_hash: r.array("tx.batch_hash")?, count: r.u32("tx.count")? }
            }
            8 | 9 | 17 | 18 => {
                return Err(DecodeError::Invalid {
                    field: "tx.kind",
                    reason: "a topic write paid by an account is retired: send a topic write (version 2), \
                             which names no account",
                });
            }
            10 => Self::Transfer { to: AccountId(r.array("tx.to")?), amount: r.u64("tx.amount")? },
            DEPLOY_KIND => Self::Deploy { code: r.bytes(CODE_BYTES_MAX, "tx.code")?.to_vec() },
            INSTANTIATE_KIND => Self::Instantiate {
                code_hash: r.array("tx.code_hash")?,
                msg: r.bytes(CONTRACT_MSG_MAX, "tx.msg")?.to_vec(),
                funds: r.u64("tx.funds")?,
                fuel_limit: r.u64("tx.fuel_limit")?,
            },
            EXECUTE_KIND => Self::Execute {
                contract: r.array("tx.contract")?,
                msg: r.bytes(CONTRACT_MSG_MAX, "tx.msg")?.to_vec(),
                funds: r.u64("tx.funds")?,
                fuel_limit: r.u64("tx.fuel_limit")?,
            },
            REGISTER_STORE_KIND => Self::RegisterStore {
                node_key: r.array("tx.node_key")?,
                node_signature: r.array("tx.node_signature")?,
            },
            DEREGISTER_STORE_KIND => Self::DeregisterStore { node_key: r.array("tx.node_key")? },
            _ => return Err(DecodeError::Invalid { field: "tx.kind", reason: "unknown transaction kind" }),
        })
    }

    /// True if only the account key (not a device key) may sign this body.
    pub fn needs_account_key(&self) -> bool {
        !matches!(self, Self::PublishKeyPackages { .. })
    }
}

impl Tx {
    fn unsigned_to(&self, w: &mut Writer) {
        w.u8(TX_VERSION);
        w.raw(&self.chain);
        w.raw(&self.account.0);
        w.raw(&self.signer);
        w.u64(self.nonce);
        self.body.encode_to(w);
    }

    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        self.unsigned_to(&mut w);
        w.finish()
    }

    fn signed_message(&self) -> Vec<u8> {
        commonware_utils::union_unique(TX_SIG_NAMESPACE, &self.unsigned_bytes())
    }

    fn sig_parts(&self) -> Option<(cw_ed25519::PublicKey, cw_ed25519::Signature)> {
        let key = cw_ed25519::PublicKey::decode(self.signer.to_vec()).ok()?;
        let sig = cw_ed25519::Signature::decode(self.signature.to_vec()).ok()?;
        Some((key, sig))
    }

    /// Builds and signs a transaction with `key` (the account key or a device key).
    pub fn sign(chain: [u8; 32], account: AccountId, key: &SigningKey, nonce: u64, body: TxBody) -> Self {
        let mut tx =
            Self { chain, account, signer: key.verifying_key().to_bytes(), nonce, body, signature: [0; 64] };
        tx.signature = key.sign(&tx.signed_message()).to_bytes();
        tx
    }

    /// Checks the signature under the ZIP-215 rules (canonical `s`, cofactored equation; the
    /// rules under which batch verification agrees exactly with single verification, so every
    /// validator reaches the same answer whichever way it checked). Weak (small-order) keys are
    /// kept out of the state where keys are authorized (registration, device certificates,
    /// rotation), so they never sign for an account.
    pub fn verify_signature(&self) -> Result<(), TxError> {
        let start = std::time::Instant::now();
        let ok = self
            .sig_parts()
            .is_some_and(|(key, sig)| key.verify(TX_SIG_NAMESPACE, &self.unsigned_bytes(), &sig));
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        SIG_NANOS.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        if ok { Ok(()) } else { Err(TxError::BadSignature) }
    }

    /// Checks many signatures at once: one batch equation for the lot (about twice as fast
    /// per signature as one by one), falling back to single checks only if the batch fails.
    /// The answer for each transaction is exactly [`Self::verify_signature`]'s.
    pub fn verify_signatures(txs: &[&Tx]) -> Vec<bool> {
        if txs.len() < SIG_BATCH_MIN {
            return txs.iter().map(|t| t.verify_signature().is_ok()).collect();
        }
        let start = std::time::Instant::now();
        let cached: Vec<Option<cw_ed25519::PublicKey>> = {
            let keys = SIGNER_KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            txs.iter().map(|t| keys.get(&t.signer).cloned()).collect()
        };
        let mut fresh: Vec<([u8; 32], cw_ed25519::PublicKey)> = Vec::new();
        let parts: Vec<Option<(cw_ed25519::PublicKey, cw_ed25519::Signature, Vec<u8>)>> = txs
            .iter()
            .zip(cached)
            .map(|(t, key)| {
                let key = match key {
                    Some(k) => k,
                    None => {
                        let k = cw_ed25519::PublicKey::decode(t.signer.to_vec()).ok()?;
                        fresh.push((t.signer, k.clone()));
                        k
                    }
                };
                let sig = cw_ed25519::Signature::decode(t.signature.to_vec()).ok()?;
                Some((key, sig, t.unsigned_bytes()))
            })
            .collect();
        if !fresh.is_empty() {
            let mut keys = SIGNER_KEYS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if keys.len() + fresh.len() > SIGNER_KEYS_MAX {
                keys.clear();
            }
            keys.extend(fresh);
        }
        let items: Vec<&(cw_ed25519::PublicKey, cw_ed25519::Signature, Vec<u8>)> =
            parts.iter().flatten().collect();
        let all_ok = items.len() == txs.len()
            && cw_ed25519::PublicKey::verify_batch(
                &mut commonware_utils::sys_rng(),
                &items,
                |_, item| BatchEntry {
                    namespace: TX_SIG_NAMESPACE,
                    message: &item.2,
                    public_key: &item.0,
                    signature: &item.1,
                },
                &commonware_parallel::Sequential,
            );
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        SIG_NANOS.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        if all_ok {
            return vec![true; txs.len()];
        }
        txs.iter().map(|t| t.verify_signature().is_ok()).collect()
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        self.unsigned_to(&mut w);
        w.raw(&self.signature);
        w.finish()
    }

    /// Decodes exactly one transaction (structure only; the signature is checked on admission).
    pub fn decode(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > TX_BYTES_MAX {
            return Err(TxError::Oversized { len: bytes.len(), max: TX_BYTES_MAX });
        }
        let mut r = Reader::new(bytes);
        r.version("transaction", TX_VERSION)?;
        let chain = r.array("tx.chain")?;
        let account = AccountId(r.array("tx.account")?);
        let signer = r.array("tx.signer")?;
        let nonce = r.u64("tx.nonce")?;
        let body = TxBody::decode_from(&mut r)?;
        let signature = r.array("tx.signature")?;
        r.finish()?;
        Ok(Self { chain, account, signer, nonce, body, signature })
    }

    /// The id of the encoded transaction `bytes`.
    pub fn id_of(bytes: &[u8]) -> TxId {
        TxId(cairn_proto::id::hash(TX_ID_DOMAIN, bytes))
    }

    /// This transaction's id.
    pub fn id(&self) -> TxId {
        Self::id_of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    /// Batches whose signers' keys are kept from an earlier batch give the verdicts single
    /// verification gives: a forged signature or a changed field by a kept signer is refused.
    #[test]
    fn batches_with_kept_signer_keys_agree_with_single_verification() {
        let chain = [5; 32];
        let signers: Vec<SigningKey> = (60..68).map(key).collect();
        let batch = |round: u64| -> Vec<Tx> {
            signers
                .iter()
                .map(|k| {
                    let acct = AccountId(k.verifying_key().to_bytes());
                    Tx::sign(chain, acct, k, round, TxBody::Transfer { to: AccountId([9; 32]), amount: 1 })
                })
                .collect()
        };
        let first = batch(0);
        assert!(Tx::verify_signatures(&first.iter().collect::<Vec<_>>()).iter().all(|v| *v));
        // the same signers again (their keys kept), three of them tampered with
        let mut second = batch(1);
        second[1].signature[5] ^= 1;
        second[4].nonce += 1;
        second[6].signer = signers[7].verifying_key().to_bytes();
        let verdicts = Tx::verify_signatures(&second.iter().collect::<Vec<_>>());
        let single: Vec<bool> = second.iter().map(|t| t.verify_signature().is_ok()).collect();
        assert_eq!(verdicts, single);
        assert_eq!(verdicts, vec![true, false, true, true, false, true, false, true]);
    }

    #[test]
    fn round_trip_every_kind() {
        let k = key(1);
        let acct = AccountId(k.verifying_key().to_bytes());
        let dev = DeviceId(key(2).verifying_key().to_bytes());
        let bodies = vec![
            TxBody::RegisterAccount,
            TxBody::add_device(&[0; 32], DeviceCert::issue(&k, dev, 5), &key(2)),
            TxBody::RevokeDevice { device: dev },
            TxBody::RotateKey { new_key: [3; 32], new_key_signature: [4; 64] },
            TxBody::ClaimHandle { name: "alice_1".into() },
            TxBody::ReleaseHandle { name: "alice_1".into() },
            TxBody::TransferHandle { name: "alice_1".into(), to: AccountId([9; 32]) },
            TxBody::PublishKeyPackages { batch_hash: [7; 32], count: 10 },
            TxBody::Transfer { to: AccountId([9; 32]), amount: 77 },
            TxBody::Deploy { code: vec![0, 97, 115, 109] },
            TxBody::Instantiate { code_hash: [3; 32], msg: vec![1, 2], funds: 5, fuel_limit: 1000 },
            TxBody::Execute { contract: [4; 32], msg: vec![], funds: 0, fuel_limit: 7 },
            TxBody::RegisterStore { node_key: [5; 32], node_signature: [6; 64] },
            TxBody::DeregisterStore { node_key: [5; 32] },
        ];
        for body in bodies {
            let tx = Tx::sign([0; 32], acct, &k, 4, body);
            let bytes = tx.encode();
            let back = Tx::decode(&bytes).unwrap();
            assert_eq!(back, tx);
            assert_eq!(back.encode(), bytes);
            back.verify_signature().unwrap();
            // trailing byte refused
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                Tx::decode(&longer),
                Err(TxError::Malformed(DecodeError::TrailingBytes { .. }))
            ));
            // a flipped bit anywhere either fails to decode or fails the signature
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x10;
                if let Ok(t) = Tx::decode(&b) {
                    assert!(t.verify_signature().is_err(), "bit flip at {i} still verifies");
                }
            }
        }
    }

    #[test]
    fn handles_are_normalized_and_bounded() {
        assert_eq!(normalize_handle("@Alice_99").unwrap(), "alice_99");
        assert!(matches!(normalize_handle("ab"), Err(TxError::BadHandle(_))));
        assert!(matches!(normalize_handle(&"a".repeat(33)), Err(TxError::BadHandle(_))));
        assert!(matches!(normalize_handle("al-ice"), Err(TxError::BadHandle(_))));
        assert!(matches!(normalize_handle("alicé"), Err(TxError::BadHandle(_))));
        assert_eq!(normalize_handle(&"a".repeat(32)).unwrap().len(), 32);
    }

    #[test]
    fn account_paid_topic_writes_are_retired() {
        let k = key(1);
        let acct = AccountId(k.verifying_key().to_bytes());
        let mut bytes = Tx::sign([0; 32], acct, &k, 0, TxBody::RegisterAccount).encode();
        // version ‖ chain ‖ account ‖ signer ‖ nonce, then the kind byte
        let at = 1 + 32 + 32 + 32 + 8;
        for kind in [8u8, 9, 17, 18] {
            bytes[at] = kind;
            assert!(matches!(
                Tx::decode(&bytes),
                Err(TxError::Malformed(DecodeError::Invalid { field: "tx.kind", reason }))
                    if reason.contains("retired")
            ));
        }
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let bytes = vec![1u8; TX_BYTES_MAX + 1];
        assert!(matches!(Tx::decode(&bytes), Err(TxError::Oversized { .. })));
    }
}
