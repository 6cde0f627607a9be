//! Deterministic execution of transactions: admission (chain, signer authorization, nonce,
//! signature), then the effect, over a read-only view, collecting writes. Topic writes
//! ([`TopicTx`]) have their own admission ([`Executor::admit_topic`]): work, position, member
//! signature; no account.

use std::collections::BTreeMap;

use cairn_proto::codec::Reader;
use cairn_proto::ed25519::{Signature, VerifyingKey};
use cairn_proto::{AccountId, DeviceId, Topic};
use jmt::KeyHash;

use super::{
    Account, AnchorRecord, DEVICES_MAX, DeviceEntry, KeyPackageRecord, Outcome, Receipt, StateError,
    StateKey, StateRead, TopicState,
};
use crate::authority::{ANCHOR_COUNT_MAX, AuthorityChain, AuthorityRefusal};
use crate::handle::skeleton;
use crate::params::Params;
use crate::tx::{TopicBody, TopicTx, Tx, TxBody, TxError, TxId, device_binding_message, rotation_message};

/// Whether `key` may be authorized to sign: a valid point that is not of small order (the
/// transaction signature rules, ZIP-215, would let anyone sign for a small-order key).
pub fn usable_key(key: &[u8; 32]) -> bool {
    VerifyingKey::from_bytes(key).is_ok_and(|k| !k.is_weak())
}

/// A key written by a transaction's effect and its previous entry in the block's write set.
type UndoEntry = (KeyHash, Option<Option<Vec<u8>>>);

/// Executes transactions over a read-only view, collecting writes.
pub struct Executor<'a> {
    base: &'a dyn StateRead,
    pub(super) chain: [u8; 32],
    writes: BTreeMap<KeyHash, Option<Vec<u8>>>,
    /// While a transaction's effect runs: the previous entry of every key it wrote (`None`: no
    /// entry), so a failed effect is undone in O(keys touched) rather than by copying the
    /// block's whole write set per transaction.
    undo: Option<Vec<UndoEntry>>,
    /// The chain's parameters, read from the state on first use.
    params: std::cell::OnceCell<Params>,
    /// Height of the block being executed (set by [`Self::set_height`]).
    pub(super) height: u64,
    /// Fuel used by the contract call of the transaction being applied.
    pub(super) fuel_used: u64,
    /// The contract runtime, built with the chain's fuel schedule on first use.
    pub(super) runtime: std::cell::OnceCell<std::sync::Arc<cairn_contracts::Runtime>>,
    /// State root of the parent block (set by [`Self::set_seed`]): the unpredictable input of
    /// a registered store's rank salt (see `stores.rs`).
    pub(super) seed: [u8; 32],
}

impl<'a> Executor<'a> {
    /// An executor over `base` for chain `chain`.
    pub fn new(base: &'a dyn StateRead, chain: [u8; 32]) -> Self {
        Self {
            base,
            chain,
            writes: BTreeMap::new(),
            undo: None,
            params: std::cell::OnceCell::new(),
            height: 0,
            fuel_used: 0,
            runtime: std::cell::OnceCell::new(),
            seed: [0; 32],
        }
    }

    /// Records the parent block's state root, from which registered stores' rank salts are
    /// drawn.
    pub fn set_seed(&mut self, parent_root: [u8; 32]) {
        self.seed = parent_root;
    }

    /// Presets the chain's parameters (what [`Self::params`] would read from the state, which
    /// only genesis writes), so an executor made per transaction skips that read.
    pub fn preset_params(&mut self, params: Params) {
        let _ = self.params.set(params);
    }

    /// The writes so far.
    pub fn into_writes(self) -> BTreeMap<KeyHash, Option<Vec<u8>>> {
        self.writes
    }

    pub(super) fn raw(&self, key: &StateKey) -> Option<Vec<u8>> {
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

    pub(super) fn put(&mut self, key: StateKey, value: Option<Vec<u8>>) {
        let kh = key.hash();
        let prev = self.writes.insert(kh, value);
        if let Some(undo) = self.undo.as_mut() {
            undo.push((kh, prev));
        }
    }

    /// The chain's fee and faucet parameters (the genesis record; a state without one, which
    /// genesis never builds, reads as [`Params::default`]).
    pub fn params(&self) -> Params {
        *self.params.get_or_init(|| {
            self.raw(&StateKey::Params).and_then(|b| Params::decode(&b).ok()).unwrap_or_default()
        })
    }

    /// Writes genesis records (parameters, balances) and the height marker.
    pub fn genesis(&mut self, accounts: &[(AccountId, u64)], params: &Params) {
        self.put(StateKey::Params, Some(params.encode()));
        let _ = self.params.set(*params);
        for (id, bal) in accounts {
            self.put(StateKey::Account(*id), Some(Account::new(*id, *bal).encode()));
        }
        self.set_height(0);
    }

    /// What the account `tx` acts for can spend on fees: its balance, or for the registration
    /// of a new account, the faucet credit (0 where the faucet is off).
    pub fn spendable(&self, tx: &Tx) -> u64 {
        match self.account(&tx.account) {
            Ok(acct) => self.spendable_of(acct.as_ref(), &tx.body),
            Err(_) => 0,
        }
    }

    /// [`Self::spendable`] from an account already read.
    fn spendable_of(&self, acct: Option<&Account>, body: &TxBody) -> u64 {
        match acct {
            Some(a) => a.balance,
            None if matches!(body, TxBody::RegisterAccount) => self.params().faucet,
            None => 0,
        }
    }

    /// Records the height of the block being executed.
    pub fn set_height(&mut self, height: u64) {
        self.height = height;
        self.put(StateKey::Meta, Some(height.to_be_bytes().to_vec()));
    }

    /// Admission checks of a transaction in a block, cheapest first; `len` is its encoded length
    /// and `sig_checked` skips the signature check for a transaction whose signature this node
    /// already verified. Returns the fee it pays.
    pub fn admit(&self, tx: &Tx, len: usize, sig_checked: bool) -> Result<u64, TxError> {
        self.admit_pending(tx, len, sig_checked, 0, 0)
    }

    /// Admission checks of a transaction that may wait in a mempool: its nonce may be up to
    /// `window - 1` ahead of the signer's next one (`window` 0: none ahead, as in a block), and
    /// `reserved` of its account's balance is already promised to the fees of transactions
    /// waiting before it. Returns the fee it pays.
    pub fn admit_pending(
        &self,
        tx: &Tx,
        len: usize,
        sig_checked: bool,
        reserved: u64,
        window: u64,
    ) -> Result<u64, TxError> {
        if tx.chain != self.chain {
            return Err(TxError::WrongChain);
        }
        let acct = self.account(&tx.account).map_err(|_| TxError::UnknownAccount)?;
        let spendable = self.spendable_of(acct.as_ref(), &tx.body);
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
            if window == 0 {
                return Err(TxError::NonceSkipped { expected, got: tx.nonce });
            }
            if tx.nonce - expected >= window {
                return Err(TxError::NonceTooFar { expected, got: tx.nonce, window });
            }
        }
        let fuel_limit = tx.body.fuel_limit();
        if fuel_limit > super::FUEL_LIMIT_MAX {
            return Err(TxError::FuelLimitTooHigh { got: fuel_limit, max: super::FUEL_LIMIT_MAX });
        }
        // a contract call reserves the fee of its whole fuel limit; the unused part is refunded
        let fee = self.params().fee(len, fuel_limit);
        let have = spendable.saturating_sub(reserved);
        if have < fee {
            return Err(TxError::FeeUnpaid { have, need: fee });
        }
        if !sig_checked {
            tx.verify_signature()?;
        }
        Ok(fee)
    }

    /// Admits and applies one transaction. `Err` means it failed admission (no effect at all);
    /// `Ok` carries the outcome of an admitted transaction.
    /// The fee (see [`Params::fee`]) is debited from the account and burned even when the
    /// effect fails, like the nonce; a new account registered through the faucet pays it out of
    /// the faucet credit.
    pub fn apply(&mut self, tx: &Tx, id: TxId, len: usize, sig_checked: bool) -> Result<Receipt, TxError> {
        let fee = self.admit(tx, len, sig_checked)?;
        let next = tx.nonce.saturating_add(1);
        self.put(StateKey::Nonce(tx.signer), Some(next.to_be_bytes().to_vec()));
        if let Ok(Some(mut payer)) = self.account(&tx.account) {
            // admission checked that the balance covers the fee
            payer.balance = payer.balance.saturating_sub(fee);
            self.put(StateKey::Account(tx.account), Some(payer.encode()));
        }
        self.undo = Some(Vec::new());
        self.fuel_used = 0;
        let res = self.effect(tx, fee);
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
        self.refund_fuel(tx);
        Ok(Receipt { tx: id, outcome })
    }

    /// The account a device key is bound to, if any.
    pub fn device_owner(&self, key: &[u8; 32]) -> Option<AccountId> {
        let b = self.raw(&StateKey::DeviceOwner(cairn_proto::DeviceId(*key)))?;
        Some(AccountId(b.as_slice().try_into().ok()?))
    }

    /// Admission of a topic write (no account, no nonce, no fee), cheapest check first: its
    /// chain, its proof of work (`work_factor` × the chain's price for `len` bytes; blocks use
    /// factor 1, a loaded mempool may ask more), its position (a handshake must follow exactly
    /// the topic's handshakes, or in a mempool be less than `window` ahead of them, waiting for
    /// its predecessors; an anchor must count more than the anchored head: a consumed position
    /// refuses every copy), then the member signature (skipped when `auth_checked`: this node
    /// verified the signature of the write with this id already; it is a function of the
    /// write's bytes) and the authority tree. Returns the tree as it is after the write.
    pub fn admit_topic(
        &self,
        tx: &TopicTx,
        id: &TxId,
        len: usize,
        work_factor: u64,
        window: u64,
        auth_checked: bool,
    ) -> Result<AuthorityChain, TxError> {
        if tx.chain != self.chain {
            return Err(TxError::WrongChain);
        }
        TopicTx::check_work(id, self.params().topic_work(len).saturating_mul(work_factor.max(1)))?;
        let topic = *tx.body.topic();
        match &tx.body {
            TopicBody::Handshake { after, .. } => {
                let t = self
                    .topic(&topic)
                    .map_err(|_| TxError::StaleSequence { after: *after, current: u64::MAX })?;
                if *after < t.count || *after - t.count >= window.max(1) {
                    return Err(TxError::StaleSequence { after: *after, current: t.count });
                }
            }
            TopicBody::Anchor { count, .. } => {
                if *count > ANCHOR_COUNT_MAX {
                    return Err(TxError::AnchorTooLarge { count: *count, max: ANCHOR_COUNT_MAX });
                }
                if let Some(prev) = self.anchor(&topic)
                    && prev.count >= *count
                {
                    return Err(TxError::AnchorRegressed { count: *count, anchored: prev.count });
                }
            }
        }
        let auth = tx.body.auth();
        if !auth_checked && !auth.verifies(&tx.chain, &topic, &tx.body.write()) {
            return Err(TxError::BadTopicAuth);
        }
        let mut tree = match self.raw(&StateKey::Authority(topic)) {
            Some(b) => AuthorityChain::decode(&b).map_err(|_| TxError::NotTopicAuthority)?,
            None => AuthorityChain::found(&topic, &auth.key).ok_or(TxError::NotTopicAuthority)?,
        };
        tree.apply(&auth.key, auth.next.as_ref()).map_err(|r| match r {
            AuthorityRefusal::NotMember => TxError::NotTopicAuthority,
            AuthorityRefusal::Full => TxError::AuthorityFull { max: crate::authority::AUTHORITY_KEYS_MAX },
        })?;
        Ok(tree)
    }

    /// Admits and applies one topic write (`id` its id, `len` its encoded length): it either
    /// passes every admission rule and takes its position, or is refused whole. It touches no
    /// account, nonce or balance. `auth_checked` as for [`Self::admit_topic`].
    pub fn apply_topic(
        &mut self,
        tx: &TopicTx,
        id: TxId,
        len: usize,
        auth_checked: bool,
    ) -> Result<Receipt, TxError> {
        let tree = self.admit_topic(tx, &id, len, 1, 1, auth_checked)?;
        let topic = *tx.body.topic();
        self.put(StateKey::Authority(topic), Some(tree.encode()));
        let outcome = match &tx.body {
            TopicBody::Handshake { after, payload, .. } => {
                // admission read the topic state; a decoding failure refused it there
                let mut t = self.topic(&topic).unwrap_or_default();
                t.push(payload);
                self.put(StateKey::Topic(topic), Some(t.encode()));
                Outcome::Sequenced { topic, seq: *after }
            }
            TopicBody::Anchor { head, count, .. } => {
                let rec = AnchorRecord { head: *head, count: *count };
                self.put(StateKey::Anchor(topic), Some(rec.encode()));
                Outcome::Applied
            }
        };
        Ok(Receipt { tx: id, outcome })
    }

    /// The anchored head of `topic`, if any (an undecodable record reads as none).
    pub fn anchor(&self, topic: &Topic) -> Option<AnchorRecord> {
        self.raw(&StateKey::Anchor(*topic)).and_then(|b| AnchorRecord::decode(&b).ok())
    }

    fn must_account(&self, id: &AccountId) -> Result<Account, TxError> {
        self.account(id).ok().flatten().ok_or(TxError::UnknownAccount)
    }

    /// The effect of an admitted transaction whose `fee` is paid (for a new account, still to
    /// be paid out of the faucet credit).
    fn effect(&mut self, tx: &Tx, fee: u64) -> Result<Outcome, TxError> {
        let id = tx.account;
        match &tx.body {
            TxBody::RegisterAccount => {
                if self.account(&id).ok().flatten().is_some() {
                    return Err(TxError::AccountExists);
                }
                if self.device_owner(&id.0).is_some() {
                    return Err(TxError::DeviceClaimed);
                }
                // admission checked that the faucet credit covers the fee
                let credit = self.params().faucet.saturating_sub(fee);
                self.put(StateKey::Account(id), Some(Account::new(id, credit).encode()));
            }
            TxBody::AddDevice { cert, device_signature } => {
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
                // the device key consents to this account on this chain: nobody binds a key
                // they do not hold
                let device_key = VerifyingKey::from_bytes(&cert.device.0)
                    .map_err(|_| TxError::BadDeviceCert("device key is not a usable key"))?;
                let msg = device_binding_message(&self.chain, &id, &cert.device);
                device_key
                    .verify_strict(&msg, &Signature::from_bytes(device_signature))
                    .map_err(|_| TxError::BadDeviceBinding)?;
                if self.device_owner(&cert.device.0).is_some_and(|owner| owner != id) {
                    return Err(TxError::DeviceClaimed);
                }
                // an account key is not a device key of another account either
                if self.account(&AccountId(cert.device.0)).ok().flatten().is_some() {
                    return Err(TxError::DeviceClaimed);
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
                self.put(StateKey::DeviceOwner(cert.device), Some(id.0.to_vec()));
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
                if self.device_owner(new_key).is_some() {
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
                // Stored under its skeleton: a look-alike of a taken handle is taken too.
                let key = StateKey::Handle(skeleton(name));
                if let Some(owner) = self.raw(&key) {
                    let taken = <[u8; 32]>::try_from(owner.as_slice())
                        .ok()
                        .and_then(|o| self.account(&AccountId(o)).ok().flatten())
                        .and_then(|a| a.handle);
                    return Err(match taken {
                        Some(t) if t != *name => TxError::HandleLookAlike { taken: t },
                        _ => TxError::HandleTaken,
                    });
                }
                acct.handle = Some(name.clone());
                self.put(key, Some(id.0.to_vec()));
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::ReleaseHandle { name } => {
                let mut acct = self.must_account(&id)?;
                if acct.handle.as_deref() != Some(name.as_str()) {
                    return Err(TxError::HandleNotHeld);
                }
                acct.handle = None;
                self.put(StateKey::Handle(skeleton(name)), None);
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
                self.put(StateKey::Handle(skeleton(name)), Some(to.0.to_vec()));
                self.put(StateKey::Account(id), Some(acct.encode()));
                self.put(StateKey::Account(*to), Some(dest.encode()));
            }
            TxBody::PublishKeyPackages { batch_hash, count } => {
                let mut acct = self.must_account(&id)?;
                acct.key_packages = Some((*batch_hash, *count));
                // Signed by a device: that device's batch, which other nodes check fetched
                // batches against (admission already refused revoked and unknown signers).
                if tx.signer != acct.key {
                    let rec = KeyPackageRecord { batch_hash: *batch_hash, count: *count };
                    self.put(StateKey::KeyPackages(DeviceId(tx.signer)), Some(rec.encode()));
                }
                self.put(StateKey::Account(id), Some(acct.encode()));
            }
            TxBody::Deploy { code } => return self.deploy(code),
            TxBody::Instantiate { code_hash, msg, funds, fuel_limit } => {
                return self.instantiate(tx, code_hash, msg, *funds, *fuel_limit);
            }
            TxBody::Execute { contract, msg, funds, fuel_limit } => {
                return self.execute_contract(tx, contract, msg, *funds, *fuel_limit);
            }
            TxBody::RegisterStore { node_key, node_signature } => {
                return self.register_store(tx, node_key, node_signature);
            }
            TxBody::DeregisterStore { node_key } => return self.deregister_store(&id, node_key),
            TxBody::Transfer { to, amount } => {
                if *to == id {
                    return Err(TxError::SelfTransfer);
                }
                let mut from = self.must_account(&id)?;
                // a transfer to a key with no account yet creates it (registered, no devices):
                // how a new account is funded where the faucet is off
                let mut dest = match self.account(to).ok().flatten() {
                    Some(a) => a,
                    None if self.device_owner(&to.0).is_some() => return Err(TxError::DeviceClaimed),
                    None if usable_key(&to.0) => Account::new(*to, 0),
                    None => return Err(TxError::UnknownRecipient),
                };
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
