//! Contract transactions in the executor: `Deploy` stores checked code, `Instantiate` creates an
//! instance and runs its `init`, `Execute` runs `execute`; [`Executor::query`] runs a read-only
//! `query`. Code, instances and each contract's state are entries of the authenticated state
//! ([`StateKey::Code`], [`StateKey::Contract`], [`StateKey::ContractState`]) and a contract's
//! balance is the account record of its address, so a light client proves any of them.
//!
//! A call's effects (state writes, then transfers in order) are applied only after it returns
//! cleanly; a trap fails the transaction, whose effect is then undone as a whole (funds sent
//! with the call included) while the fee for the fuel used stays paid.

use std::sync::Arc;

use cairn_contracts::{Context, Entry, FuelSchedule, Limits, Runtime, StateView, code_hash};
use cairn_proto::AccountId;
use cairn_proto::codec::Writer;

use super::{Account, ContractRecord, Executor, Outcome, StateKey, usable_key};
use crate::tx::{Tx, TxError};

/// Most fuel one contract call may use (about 50-100 ms of wasmi on one core).
pub const FUEL_LIMIT_MAX: u64 = 10_000_000;
/// Most bytes of a call's output kept in its transaction's outcome (the rest is cut: outcomes
/// are held in memory by every validator; queries return the whole output).
pub const OUTCOME_OUTPUT_MAX: usize = 1024;
/// Fuel given to a read-only query.
pub const QUERY_FUEL: u64 = 10_000_000;
const ADDRESS_DOMAIN: &str = "cairn 2026-12 contract address v1";

/// The address of the contract instantiated by `account`'s transaction signed by `signer` with
/// `nonce` (unique: a signer's nonce is used once) from code `code_hash`.
pub fn contract_address(
    account: &AccountId,
    signer: &[u8; 32],
    nonce: u64,
    code_hash: &[u8; 32],
) -> [u8; 32] {
    let mut w = Writer::with_capacity(104);
    w.raw(&account.0);
    w.raw(signer);
    w.u64(nonce);
    w.raw(code_hash);
    cairn_proto::id::hash(ADDRESS_DOMAIN, &w.finish())
}

/// What a contract sees of the executor's state.
struct View<'e, 'a> {
    ex: &'e Executor<'a>,
    contract: [u8; 32],
}

impl StateView for View<'_, '_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.ex.raw(&StateKey::ContractState(self.contract, key.to_vec()))
    }

    fn balance(&self, account: &[u8; 32]) -> u64 {
        self.ex.account(&AccountId(*account)).ok().flatten().map_or(0, |a| a.balance)
    }

    fn device_active(&self, account: &[u8; 32], device: &[u8; 32]) -> bool {
        self.ex
            .account(&AccountId(*account))
            .ok()
            .flatten()
            .is_some_and(|a| a.devices.iter().any(|d| d.device.0 == *device && !d.revoked))
    }
}

/// The process's ledger runtimes, one per fuel schedule seen (in practice one per chain), so
/// compiled modules are reused across blocks.
static RUNTIMES: std::sync::Mutex<Vec<Arc<Runtime>>> = std::sync::Mutex::new(Vec::new());
/// Most runtimes kept (distinct fuel schedules in one process: tests run several chains).
const RUNTIMES_MAX: usize = 8;

fn shared_runtime(schedule: FuelSchedule) -> Arc<Runtime> {
    let Ok(mut all) = RUNTIMES.lock() else { return Arc::new(Runtime::new(Limits::LEDGER, schedule)) };
    if let Some(rt) = all.iter().find(|rt| *rt.schedule() == schedule) {
        return rt.clone();
    }
    let rt = Arc::new(Runtime::new(Limits::LEDGER, schedule));
    if all.len() >= RUNTIMES_MAX {
        all.remove(0);
    }
    all.push(rt.clone());
    rt
}

impl Executor<'_> {
    fn runtime(&self) -> &Runtime {
        self.runtime.get_or_init(|| shared_runtime(self.params().fuel))
    }

    /// The height recorded in the state (the last applied block's).
    fn stored_height(&self) -> u64 {
        self.raw(&StateKey::Meta)
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// The code and record of the contract at `address`.
    fn contract(&self, address: &[u8; 32]) -> Result<(ContractRecord, Vec<u8>), TxError> {
        let rec = self
            .raw(&StateKey::Contract(*address))
            .and_then(|b| ContractRecord::decode(&b).ok())
            .ok_or(TxError::UnknownContract)?;
        let code = self.raw(&StateKey::Code(rec.code_hash)).ok_or(TxError::UnknownCode)?;
        Ok((rec, code))
    }

    pub(super) fn deploy(&mut self, code: &[u8]) -> Result<Outcome, TxError> {
        self.runtime().compile_cached(code).map_err(|e| TxError::CodeRefused(e.to_string()))?;
        let hash = code_hash(code);
        if self.raw(&StateKey::Code(hash)).is_none() {
            self.put(StateKey::Code(hash), Some(code.to_vec()));
        }
        Ok(Outcome::Applied)
    }

    pub(super) fn instantiate(
        &mut self,
        tx: &Tx,
        code_hash: &[u8; 32],
        msg: &[u8],
        funds: u64,
        fuel_limit: u64,
    ) -> Result<Outcome, TxError> {
        let code = self.raw(&StateKey::Code(*code_hash)).ok_or(TxError::UnknownCode)?;
        let address = contract_address(&tx.account, &tx.signer, tx.nonce, code_hash);
        let id = AccountId(address);
        if self.raw(&StateKey::Contract(address)).is_some() || self.account(&id).ok().flatten().is_some() {
            return Err(TxError::ContractFailed("the contract address is taken".into()));
        }
        let rec = ContractRecord { code_hash: *code_hash, creator: tx.account };
        self.put(StateKey::Contract(address), Some(rec.encode()));
        self.put(StateKey::Account(id), Some(Account::new(id, 0).encode()));
        self.call(tx, address, &code, Entry::Init, msg, funds, fuel_limit)
    }

    pub(super) fn execute_contract(
        &mut self,
        tx: &Tx,
        contract: &[u8; 32],
        msg: &[u8],
        funds: u64,
        fuel_limit: u64,
    ) -> Result<Outcome, TxError> {
        let (_, code) = self.contract(contract)?;
        self.call(tx, *contract, &code, Entry::Execute, msg, funds, fuel_limit)
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        tx: &Tx,
        address: [u8; 32],
        code: &[u8],
        entry: Entry,
        msg: &[u8],
        funds: u64,
        fuel_limit: u64,
    ) -> Result<Outcome, TxError> {
        if funds > 0 {
            self.move_funds(&tx.account, &AccountId(address), funds)?;
        }
        let compiled =
            self.runtime().compile_cached(code).map_err(|e| TxError::CodeRefused(e.to_string()))?;
        let ctx = Context {
            caller: tx.account.0,
            contract: address,
            funds,
            block_height: self.height,
            block_time_ms: 0,
        };
        let report = {
            let view = View { ex: self, contract: address };
            self.runtime().call(&compiled, entry, &ctx, msg, &view, fuel_limit)
        };
        self.fuel_used = report.fuel_used;
        let fx = report.result.map_err(|t| TxError::ContractFailed(t.to_string()))?;
        for (key, value) in fx.writes {
            self.put(StateKey::ContractState(address, key), value);
        }
        for t in &fx.transfers {
            self.move_funds(&AccountId(address), &AccountId(t.to), t.amount)?;
        }
        let mut output = fx.output;
        output.truncate(OUTCOME_OUTPUT_MAX);
        Ok(Outcome::Contract { address, fuel_used: report.fuel_used, output, events: fx.events })
    }

    /// Moves `amount` between accounts; a usable key with no account yet gets one (as a
    /// `Transfer` does).
    fn move_funds(&mut self, from: &AccountId, to: &AccountId, amount: u64) -> Result<(), TxError> {
        if from == to || amount == 0 {
            return Ok(());
        }
        let mut src = self.account(from).ok().flatten().ok_or(TxError::UnknownAccount)?;
        if src.balance < amount {
            return Err(TxError::InsufficientBalance { have: src.balance, need: amount });
        }
        let mut dest = match self.account(to).ok().flatten() {
            Some(a) => a,
            None if self.device_owner(&to.0).is_some() => return Err(TxError::DeviceClaimed),
            None if usable_key(&to.0) => Account::new(*to, 0),
            None => return Err(TxError::UnknownRecipient),
        };
        dest.balance = dest.balance.checked_add(amount).ok_or(TxError::BalanceOverflow)?;
        src.balance -= amount;
        self.put(StateKey::Account(*from), Some(src.encode()));
        self.put(StateKey::Account(*to), Some(dest.encode()));
        Ok(())
    }

    /// Credits back the fee of the fuel `tx` reserved and did not use.
    pub(super) fn refund_fuel(&mut self, tx: &Tx) {
        let limit = tx.body.fuel_limit();
        if limit == 0 {
            return;
        }
        let unused = limit - self.fuel_used.min(limit);
        let refund = self.params().fee_per_fuel.saturating_mul(unused);
        if refund == 0 {
            return;
        }
        if let Ok(Some(mut payer)) = self.account(&tx.account) {
            payer.balance = payer.balance.saturating_add(refund);
            self.put(StateKey::Account(tx.account), Some(payer.encode()));
        }
    }

    /// Runs the read-only `query` of the contract at `contract` with `msg` against this state
    /// (at the height it records), with [`QUERY_FUEL`]. Returns the output and the fuel used.
    pub fn query(&self, contract: &[u8; 32], msg: &[u8]) -> Result<(Vec<u8>, u64), TxError> {
        let (_, code) = self.contract(contract)?;
        let compiled =
            self.runtime().compile_cached(&code).map_err(|e| TxError::CodeRefused(e.to_string()))?;
        let ctx = Context {
            caller: [0; 32],
            contract: *contract,
            funds: 0,
            block_height: self.stored_height(),
            block_time_ms: 0,
        };
        let view = View { ex: self, contract: *contract };
        let report = self.runtime().call(&compiled, Entry::Query, &ctx, msg, &view, QUERY_FUEL);
        let fx = report.result.map_err(|t| TxError::ContractFailed(t.to_string()))?;
        Ok((fx.output, report.fuel_used))
    }
}
