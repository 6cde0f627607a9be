//! The `cairn` v1 host ABI: the functions a contract may import (module `cairn`), with their
//! signatures. The host copies data in and out of the guest's memory; the guest exports no
//! allocator. Pointers and lengths are `i32` (read as unsigned), amounts and heights `i64`
//! (read as unsigned).

/// A value type in a host function signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AbiType {
    /// 32-bit integer (pointer, length, flag).
    I32,
    /// 64-bit integer (amount, height, milliseconds).
    I64,
}

use AbiType::{I32, I64};

/// One host function of the `cairn` module.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HostFunction {
    /// Import name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [AbiType],
    /// Result types (none or one).
    pub results: &'static [AbiType],
    /// What it does (for `docs/contracts.md` and error messages).
    pub doc: &'static str,
}

const fn f(
    name: &'static str,
    params: &'static [AbiType],
    results: &'static [AbiType],
    doc: &'static str,
) -> HostFunction {
    HostFunction { name, params, results, doc }
}

/// Every host function of ABI v1.
pub const HOST_FUNCTIONS: &[HostFunction] = &[
    f("input_len", &[], &[I32], "length of the call's input"),
    f(
        "input_read",
        &[I32, I32],
        &[I32],
        "input_read(ptr, len): copies min(len, input_len) input bytes to ptr, returns the count",
    ),
    f("output_write", &[I32, I32], &[], "output_write(ptr, len): appends len bytes to the call's output"),
    f(
        "state_get",
        &[I32, I32, I32, I32],
        &[I32],
        "state_get(key, key_len, buf, cap): -1 if absent, else the value's length; copies min(len, cap) bytes to buf",
    ),
    f("state_set", &[I32, I32, I32, I32], &[], "state_set(key, key_len, val, val_len)"),
    f("state_del", &[I32, I32], &[], "state_del(key, key_len)"),
    f(
        "blake3",
        &[I32, I32, I32],
        &[],
        "blake3(ptr, len, out): writes the 32-byte BLAKE3 hash of the bytes to out",
    ),
    f(
        "ed25519_verify",
        &[I32, I32, I32, I32],
        &[I32],
        "ed25519_verify(key32, msg, msg_len, sig64): 1 if the strict Ed25519 signature verifies, else 0",
    ),
    f(
        "device_verify",
        &[I32, I32, I32, I32, I32],
        &[I32],
        "device_verify(account32, device32, msg, msg_len, sig64): 1 if device is an active device of account and signed msg, else 0",
    ),
    f(
        "abort",
        &[I32, I32],
        &[],
        "abort(msg, msg_len): traps with the UTF-8 message; the call's effects are reverted",
    ),
    f("caller", &[I32], &[], "caller(out32): the account that called"),
    f("self_address", &[I32], &[], "self_address(out32): this contract's address"),
    f("funds", &[], &[I64], "funds sent with this call (already in the contract's balance)"),
    f("block_height", &[], &[I64], "height of the block being executed"),
    f(
        "block_time_ms",
        &[],
        &[I64],
        "time of the block being executed, ms since the Unix epoch (0 where the host has no agreed time)",
    ),
    f(
        "balance",
        &[I32],
        &[I64],
        "balance(account32): balance at the start of the call, less this call's transfers for the contract itself",
    ),
    f(
        "transfer",
        &[I32, I64],
        &[],
        "transfer(to32, amount): pays amount from the contract after a clean return; traps if the contract cannot cover it",
    ),
    f("emit", &[I32, I32], &[], "emit(ptr, len): records an event after a clean return"),
];

/// The host function named `name`.
pub(crate) fn host_function(name: &str) -> Option<&'static HostFunction> {
    HOST_FUNCTIONS.iter().find(|h| h.name == name)
}
