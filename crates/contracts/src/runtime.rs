//! Running one entry point of a contract: a fresh wasmi instance per call, fuel-metered, over a
//! read-only [`StateView`]; the effects come back to the caller, which applies them only after
//! a clean return.

use std::collections::BTreeMap;

use thiserror::Error;
use wasmi::{
    Caller, CompilationMode, Config, EnforcedLimits, Engine, Error, Extern, Linker, Memory, Module, Store,
    StoreLimits, StoreLimitsBuilder, TrapCode,
};

use crate::fuel::FuelSchedule;
use crate::limits::Limits;
use crate::validate::{UploadError, validate};
use crate::{HOST_MODULE, INITIALIZE_EXPORT};

/// What a contract may read of the world: its own state and the ledger's accounts.
pub trait StateView {
    /// The value at `key` in this contract's state.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// The balance of `account` (a contract address or an account id); 0 if unknown.
    fn balance(&self, account: &[u8; 32]) -> u64;
    /// Whether `device` is an active (registered, not revoked) device of `account`.
    fn device_active(&self, account: &[u8; 32], device: &[u8; 32]) -> bool;
}

/// The entry point a call runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry {
    /// `init`: once, when an instance is created.
    Init,
    /// `execute`: a transaction's call; may write state and act.
    Execute,
    /// `query`: read-only; any write or action traps.
    Query,
    /// `on_message`: a policy contract judges a received message (see [`crate::policy`]).
    OnMessage,
    /// `on_handshake`: a policy contract judges a proposed group change.
    OnHandshake,
}

impl Entry {
    /// The export name.
    pub fn export(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Execute => "execute",
            Self::Query => "query",
            Self::OnMessage => "on_message",
            Self::OnHandshake => "on_handshake",
        }
    }
}

/// Who calls, what it sends, and where in the chain: everything a call may know besides state.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Context {
    /// The calling account.
    pub caller: [u8; 32],
    /// This contract's address.
    pub contract: [u8; 32],
    /// Funds sent with the call (already credited to the contract's balance).
    pub funds: u64,
    /// Height of the block being executed.
    pub block_height: u64,
    /// Time of the block, ms since the Unix epoch (0 where the host has no agreed time).
    pub block_time_ms: u64,
}

/// A payment from the contract, applied after a clean return.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transfer {
    /// Receiving account.
    pub to: [u8; 32],
    /// Amount.
    pub amount: u64,
}

/// The effects of a call that returned cleanly.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Effects {
    /// Bytes written with `output_write`.
    pub output: Vec<u8>,
    /// State writes (`None`: delete), by key.
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Transfers, in call order.
    pub transfers: Vec<Transfer>,
    /// Events, in call order.
    pub events: Vec<Vec<u8>>,
}

/// Why a call stopped without effects.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum Trap {
    /// The fuel limit was reached.
    #[error("out of fuel: raise the fuel limit")]
    OutOfFuel,
    /// The contract called `abort`.
    #[error("contract aborted: {0}")]
    Abort(String),
    /// A WebAssembly trap (unreachable, out of bounds, division by zero, stack exhausted).
    #[error("contract trapped: {0}")]
    Wasm(String),
    /// The module does not export the entry point.
    #[error("contract has no `{0}` entry point")]
    NoEntry(&'static str),
    /// A guest pointer or length is outside its memory.
    #[error("contract passed a pointer outside its memory")]
    OutOfBounds,
    /// A bound of [`Limits`] was hit.
    #[error("contract exceeded a limit: {0}")]
    Limit(&'static str),
    /// A query tried to write or act.
    #[error("a query cannot write state, transfer or emit")]
    ReadOnly,
    /// A transfer exceeds what the contract holds.
    #[error("contract balance {have} cannot cover a transfer of {need}")]
    InsufficientFunds {
        /// Balance left for transfers.
        have: u64,
        /// Amount asked.
        need: u64,
    },
}

impl wasmi::errors::HostError for Trap {}

/// What a call used and did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CallReport {
    /// Fuel consumed (instructions and host calls), whether or not the call trapped.
    pub fuel_used: u64,
    /// The effects, or the trap that discarded them.
    pub result: Result<Effects, Trap>,
}

/// A validated, compiled module.
#[derive(Debug)]
pub struct Compiled {
    module: Module,
}

/// Most compiled modules a [`Runtime`] keeps (by code hash) for [`Runtime::compile_cached`].
pub const MODULE_CACHE_MAX: usize = 64;

/// Runs contracts of one kind ([`Limits::LEDGER`] or [`Limits::POLICY`]).
#[derive(Debug)]
pub struct Runtime {
    engine: Engine,
    limits: Limits,
    schedule: FuelSchedule,
    /// Compiled modules by code hash, oldest first (bounded by [`MODULE_CACHE_MAX`]).
    cache: std::sync::Mutex<std::collections::VecDeque<([u8; 32], std::sync::Arc<Compiled>)>>,
}

struct Host<'a> {
    ctx: Context,
    input: &'a [u8],
    state: &'a dyn StateView,
    limits: Limits,
    schedule: FuelSchedule,
    read_only: bool,
    memory: Option<Memory>,
    effects: Effects,
    /// Sum of this call's transfers.
    spent: u64,
    store_limits: StoreLimits,
}

type Cx<'c, 'a> = Caller<'c, Host<'a>>;

fn trap(t: Trap) -> Error {
    Error::host(t)
}

fn u(v: i32) -> usize {
    // i32 guest values are unsigned addresses and lengths
    v as u32 as usize
}

fn charge(c: &mut Cx<'_, '_>, fuel: u64) -> Result<(), Error> {
    let left = c.get_fuel()?;
    if left < fuel {
        c.set_fuel(0)?;
        return Err(trap(Trap::OutOfFuel));
    }
    c.set_fuel(left - fuel)
}

fn charge_bytes(c: &mut Cx<'_, '_>, extra: u64, bytes: usize) -> Result<(), Error> {
    let s = c.data().schedule;
    let b = u64::try_from(bytes).unwrap_or(u64::MAX);
    charge(c, s.host_call.saturating_add(extra).saturating_add(s.per_byte.saturating_mul(b)))
}

fn memory(c: &Cx<'_, '_>) -> Result<Memory, Error> {
    c.data().memory.ok_or_else(|| trap(Trap::OutOfBounds))
}

fn read(c: &Cx<'_, '_>, ptr: i32, len: usize) -> Result<Vec<u8>, Error> {
    let mem = memory(c)?;
    let mut buf = vec![0u8; len];
    mem.read(c, u(ptr), &mut buf).map_err(|_| trap(Trap::OutOfBounds))?;
    Ok(buf)
}

fn read32(c: &Cx<'_, '_>, ptr: i32) -> Result<[u8; 32], Error> {
    let mem = memory(c)?;
    let mut buf = [0u8; 32];
    mem.read(c, u(ptr), &mut buf).map_err(|_| trap(Trap::OutOfBounds))?;
    Ok(buf)
}

fn read64(c: &Cx<'_, '_>, ptr: i32) -> Result<[u8; 64], Error> {
    let mem = memory(c)?;
    let mut buf = [0u8; 64];
    mem.read(c, u(ptr), &mut buf).map_err(|_| trap(Trap::OutOfBounds))?;
    Ok(buf)
}

fn write(c: &mut Cx<'_, '_>, ptr: i32, data: &[u8]) -> Result<(), Error> {
    let mem = memory(c)?;
    mem.write(c, u(ptr), data).map_err(|_| trap(Trap::OutOfBounds))
}

fn bounded(len: i32, max: usize, what: &'static str) -> Result<usize, Error> {
    let len = u(len);
    if len > max { Err(trap(Trap::Limit(what))) } else { Ok(len) }
}

fn writable(c: &Cx<'_, '_>) -> Result<(), Error> {
    if c.data().read_only { Err(trap(Trap::ReadOnly)) } else { Ok(()) }
}

fn state_value(c: &Cx<'_, '_>, key: &[u8]) -> Option<Vec<u8>> {
    match c.data().effects.writes.get(key) {
        Some(v) => v.clone(),
        None => c.data().state.get(key),
    }
}

fn put(c: &mut Cx<'_, '_>, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), Error> {
    let h = c.data_mut();
    if !h.effects.writes.contains_key(&key) && h.effects.writes.len() >= h.limits.writes_max {
        return Err(trap(Trap::Limit("too many state writes in one call")));
    }
    h.effects.writes.insert(key, value);
    Ok(())
}

fn verify(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    use cairn_proto::ed25519::{Signature, VerifyingKey};
    VerifyingKey::from_bytes(key).is_ok_and(|k| k.verify_strict(msg, &Signature::from_bytes(sig)).is_ok())
}

fn define(linker: &mut Linker<Host<'_>>) -> Result<(), Error> {
    let m = HOST_MODULE;
    linker.func_wrap(m, "input_len", |mut c: Cx<'_, '_>| -> Result<i32, Error> {
        charge_bytes(&mut c, 0, 0)?;
        Ok(i32::try_from(c.data().input.len()).unwrap_or(i32::MAX))
    })?;
    linker.func_wrap(m, "input_read", |mut c: Cx<'_, '_>, ptr: i32, len: i32| -> Result<i32, Error> {
        let n = u(len).min(c.data().input.len());
        charge_bytes(&mut c, 0, n)?;
        let input = c.data().input;
        write(&mut c, ptr, &input[..n])?;
        Ok(i32::try_from(n).unwrap_or(i32::MAX))
    })?;
    linker.func_wrap(m, "output_write", |mut c: Cx<'_, '_>, ptr: i32, len: i32| -> Result<(), Error> {
        let room = c.data().limits.output_max.saturating_sub(c.data().effects.output.len());
        let n = bounded(len, room, "output over the limit")?;
        charge_bytes(&mut c, 0, n)?;
        let bytes = read(&c, ptr, n)?;
        c.data_mut().effects.output.extend_from_slice(&bytes);
        Ok(())
    })?;
    linker.func_wrap(
        m,
        "state_get",
        |mut c: Cx<'_, '_>, kp: i32, kl: i32, vp: i32, cap: i32| -> Result<i32, Error> {
            let kl = bounded(kl, c.data().limits.state_key_max, "state key too long")?;
            let s = c.data().schedule;
            charge_bytes(&mut c, s.state_read, kl)?;
            let key = read(&c, kp, kl)?;
            let Some(value) = state_value(&c, &key) else { return Ok(-1) };
            let n = value.len().min(u(cap));
            charge_bytes(&mut c, 0, n)?;
            write(&mut c, vp, &value[..n])?;
            Ok(i32::try_from(value.len()).unwrap_or(i32::MAX))
        },
    )?;
    linker.func_wrap(
        m,
        "state_set",
        |mut c: Cx<'_, '_>, kp: i32, kl: i32, vp: i32, vl: i32| -> Result<(), Error> {
            writable(&c)?;
            let kl = bounded(kl, c.data().limits.state_key_max, "state key too long")?;
            let vl = bounded(vl, c.data().limits.state_value_max, "state value too large")?;
            let s = c.data().schedule;
            let per_value = s.state_write_byte.saturating_mul(u64::try_from(vl).unwrap_or(u64::MAX));
            charge_bytes(&mut c, s.state_write.saturating_add(per_value), kl + vl)?;
            let key = read(&c, kp, kl)?;
            let value = read(&c, vp, vl)?;
            put(&mut c, key, Some(value))
        },
    )?;
    linker.func_wrap(m, "state_del", |mut c: Cx<'_, '_>, kp: i32, kl: i32| -> Result<(), Error> {
        writable(&c)?;
        let kl = bounded(kl, c.data().limits.state_key_max, "state key too long")?;
        let s = c.data().schedule;
        charge_bytes(&mut c, s.state_write, kl)?;
        let key = read(&c, kp, kl)?;
        put(&mut c, key, None)
    })?;
    linker.func_wrap(
        m,
        "blake3",
        |mut c: Cx<'_, '_>, ptr: i32, len: i32, out: i32| -> Result<(), Error> {
            let n = bounded(len, c.data().limits.input_max, "hashed input too large")?;
            charge_bytes(&mut c, 0, n + 32)?;
            let bytes = read(&c, ptr, n)?;
            write(&mut c, out, blake3::hash(&bytes).as_bytes())
        },
    )?;
    linker.func_wrap(
        m,
        "ed25519_verify",
        |mut c: Cx<'_, '_>, kp: i32, mp: i32, ml: i32, sp: i32| -> Result<i32, Error> {
            let n = bounded(ml, c.data().limits.input_max, "signed message too large")?;
            let s = c.data().schedule;
            charge_bytes(&mut c, s.signature_verify, n + 96)?;
            let key = read32(&c, kp)?;
            let msg = read(&c, mp, n)?;
            let sig = read64(&c, sp)?;
            Ok(i32::from(verify(&key, &msg, &sig)))
        },
    )?;
    linker.func_wrap(
        m,
        "device_verify",
        |mut c: Cx<'_, '_>, ap: i32, dp: i32, mp: i32, ml: i32, sp: i32| -> Result<i32, Error> {
            let n = bounded(ml, c.data().limits.input_max, "signed message too large")?;
            let s = c.data().schedule;
            charge_bytes(&mut c, s.signature_verify.saturating_add(s.state_read), n + 128)?;
            let account = read32(&c, ap)?;
            let device = read32(&c, dp)?;
            let msg = read(&c, mp, n)?;
            let sig = read64(&c, sp)?;
            let ok = c.data().state.device_active(&account, &device) && verify(&device, &msg, &sig);
            Ok(i32::from(ok))
        },
    )?;
    linker.func_wrap(m, "abort", |mut c: Cx<'_, '_>, ptr: i32, len: i32| -> Result<(), Error> {
        let n = u(len).min(256);
        charge_bytes(&mut c, 0, n)?;
        let bytes = read(&c, ptr, n).unwrap_or_default();
        Err(trap(Trap::Abort(String::from_utf8_lossy(&bytes).into_owned())))
    })?;
    linker.func_wrap(m, "caller", |mut c: Cx<'_, '_>, out: i32| -> Result<(), Error> {
        charge_bytes(&mut c, 0, 32)?;
        let v = c.data().ctx.caller;
        write(&mut c, out, &v)
    })?;
    linker.func_wrap(m, "self_address", |mut c: Cx<'_, '_>, out: i32| -> Result<(), Error> {
        charge_bytes(&mut c, 0, 32)?;
        let v = c.data().ctx.contract;
        write(&mut c, out, &v)
    })?;
    linker.func_wrap(m, "funds", |mut c: Cx<'_, '_>| -> Result<i64, Error> {
        charge_bytes(&mut c, 0, 0)?;
        Ok(c.data().ctx.funds as i64)
    })?;
    linker.func_wrap(m, "block_height", |mut c: Cx<'_, '_>| -> Result<i64, Error> {
        charge_bytes(&mut c, 0, 0)?;
        Ok(c.data().ctx.block_height as i64)
    })?;
    linker.func_wrap(m, "block_time_ms", |mut c: Cx<'_, '_>| -> Result<i64, Error> {
        charge_bytes(&mut c, 0, 0)?;
        Ok(c.data().ctx.block_time_ms as i64)
    })?;
    linker.func_wrap(m, "balance", |mut c: Cx<'_, '_>, ap: i32| -> Result<i64, Error> {
        let s = c.data().schedule;
        charge_bytes(&mut c, s.state_read, 32)?;
        let account = read32(&c, ap)?;
        let h = c.data();
        let mut bal = h.state.balance(&account);
        if account == h.ctx.contract {
            bal = bal.saturating_sub(h.spent);
        }
        Ok(bal as i64)
    })?;
    linker.func_wrap(m, "transfer", |mut c: Cx<'_, '_>, tp: i32, amount: i64| -> Result<(), Error> {
        writable(&c)?;
        let s = c.data().schedule;
        charge_bytes(&mut c, s.action, 32)?;
        let to = read32(&c, tp)?;
        let amount = amount as u64;
        let h = c.data_mut();
        if h.effects.transfers.len() >= h.limits.transfers_max {
            return Err(trap(Trap::Limit("too many transfers in one call")));
        }
        let have = h.state.balance(&h.ctx.contract).saturating_sub(h.spent);
        if amount > have {
            return Err(trap(Trap::InsufficientFunds { have, need: amount }));
        }
        h.spent += amount;
        h.effects.transfers.push(Transfer { to, amount });
        Ok(())
    })?;
    linker.func_wrap(m, "emit", |mut c: Cx<'_, '_>, ptr: i32, len: i32| -> Result<(), Error> {
        writable(&c)?;
        let n = bounded(len, c.data().limits.event_bytes_max, "event too large")?;
        let s = c.data().schedule;
        charge_bytes(&mut c, s.action, n)?;
        if c.data().effects.events.len() >= c.data().limits.events_max {
            return Err(trap(Trap::Limit("too many events in one call")));
        }
        let bytes = read(&c, ptr, n)?;
        c.data_mut().effects.events.push(bytes);
        Ok(())
    })?;
    Ok(())
}

fn classify(err: &Error) -> Trap {
    if let Some(t) = err.downcast_ref::<Trap>() {
        return t.clone();
    }
    match err.as_trap_code() {
        Some(TrapCode::OutOfFuel) => Trap::OutOfFuel,
        Some(code) => Trap::Wasm(code.to_string()),
        None => Trap::Wasm(err.to_string().chars().take(200).collect()),
    }
}

impl Runtime {
    /// A runtime for contracts bounded by `limits`, charging host calls by `schedule`.
    pub fn new(limits: Limits, schedule: FuelSchedule) -> Self {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            .floats(false)
            .allow_start_fn(false)
            .wasm_reference_types(false)
            .wasm_tail_call(false)
            .wasm_multi_memory(false)
            .wasm_extended_const(false)
            .wasm_custom_page_sizes(false)
            .wasm_wide_arithmetic(false)
            .compilation_mode(CompilationMode::Eager)
            .enforced_limits(EnforcedLimits::strict());
        Self {
            engine: Engine::new(&config),
            limits,
            schedule,
            cache: std::sync::Mutex::new(Default::default()),
        }
    }

    /// The fuel schedule this runtime charges host calls by.
    pub fn schedule(&self) -> &FuelSchedule {
        &self.schedule
    }

    /// [`Self::compile`], keeping the last [`MODULE_CACHE_MAX`] modules compiled (by code hash;
    /// compilation is not metered, so caching changes no fuel or result).
    pub fn compile_cached(&self, code: &[u8]) -> Result<std::sync::Arc<Compiled>, UploadError> {
        let hash = crate::code_hash(code);
        if let Ok(cache) = self.cache.lock()
            && let Some((_, c)) = cache.iter().find(|(h, _)| *h == hash)
        {
            return Ok(c.clone());
        }
        let compiled = std::sync::Arc::new(self.compile(code)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MODULE_CACHE_MAX {
                cache.pop_front();
            }
            cache.push_back((hash, compiled.clone()));
        }
        Ok(compiled)
    }

    /// The bounds this runtime applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks the upload rules, then validates and compiles `code` with wasmi.
    pub fn compile(&self, code: &[u8]) -> Result<Compiled, UploadError> {
        validate(code, &self.limits)?;
        let module = Module::new(&self.engine, code)
            .map_err(|e| UploadError::Malformed(e.to_string().chars().take(200).collect()))?;
        Ok(Compiled { module })
    }

    /// Runs `entry` of `compiled` in a fresh instance with `input`, at most `fuel_limit` fuel.
    /// Never panics on guest behaviour: every misuse is a [`Trap`].
    pub fn call(
        &self,
        compiled: &Compiled,
        entry: Entry,
        ctx: &Context,
        input: &[u8],
        state: &dyn StateView,
        fuel_limit: u64,
    ) -> CallReport {
        if input.len() > self.limits.input_max {
            return CallReport { fuel_used: 0, result: Err(Trap::Limit("input over the limit")) };
        }
        let host = Host {
            ctx: *ctx,
            input,
            state,
            limits: self.limits,
            schedule: self.schedule,
            read_only: entry == Entry::Query,
            memory: None,
            effects: Effects::default(),
            spent: 0,
            store_limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_pages_max as usize * 65536)
                .instances(1)
                .memories(1)
                .tables(1)
                .build(),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.store_limits);
        if store.set_fuel(fuel_limit).is_err() {
            return CallReport { fuel_used: 0, result: Err(Trap::Wasm("fuel metering is off".into())) };
        }
        let result = self.run(&mut store, compiled, entry);
        // out of fuel means all of it: wasmi stops before an instruction it cannot pay for
        let fuel_used = match result {
            Err(Trap::OutOfFuel) => fuel_limit,
            _ => fuel_limit.saturating_sub(store.get_fuel().unwrap_or(0)),
        };
        let result = result.map(|()| std::mem::take(&mut store.data_mut().effects));
        CallReport { fuel_used, result }
    }

    fn run(&self, store: &mut Store<Host<'_>>, compiled: &Compiled, entry: Entry) -> Result<(), Trap> {
        let mut linker = Linker::new(&self.engine);
        define(&mut linker).map_err(|e| Trap::Wasm(e.to_string()))?;
        let instance =
            linker.instantiate_and_start(&mut *store, &compiled.module).map_err(|e| classify(&e))?;
        let memory = instance.get_export(&*store, "memory").and_then(Extern::into_memory);
        store.data_mut().memory = memory;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&*store, INITIALIZE_EXPORT) {
            init.call(&mut *store, ()).map_err(|e| classify(&e))?;
        }
        let func = instance
            .get_typed_func::<(), ()>(&*store, entry.export())
            .map_err(|_| Trap::NoEntry(entry.export()))?;
        func.call(&mut *store, ()).map_err(|e| classify(&e))
    }
}
