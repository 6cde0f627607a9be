//! Cairn contracts: WebAssembly modules run by [wasmi] under the `cairn` v1 host ABI.
//!
//! - [`validate`]: the upload rules (size, memory pages, no floats / SIMD / threads / memory64,
//!   no start function, only `cairn` imports, `memory` and `cairn_abi_v1` exported). A module
//!   that breaks one is refused with an [`UploadError`] naming the rule.
//! - [`Runtime`]: runs one entry point (`init`, `execute`, `query`) of a validated module in a
//!   fresh instance, fuel-metered (instructions and host-call bytes, see [`FuelSchedule`]),
//!   over a read-only [`StateView`] and a [`Context`]. It performs no I/O: it returns the
//!   output, the state writes and the actions (transfers, events) for the caller (the ledger)
//!   to apply, or a [`Trap`] after which nothing of the call is kept.
//! - [`policy`]: policy contracts inside MLS groups: the pinned hash and configuration, and
//!   verdicts on messages and group changes, per-sender state judged in sender order.
//! - [`shipped`]: the contracts Cairn ships (escrow, paid storage, consent), their checked-in
//!   `.wasm` and the canonical encodings of their messages.
//!
//! Determinism: wasmi is pinned exactly, floats are refused, fuel is charged identically on
//! every machine, and the host offers no clock or randomness (block height and time come from
//! the [`Context`]). The same module, input, context and state give the same output, fuel
//! and writes everywhere.

mod abi;
pub mod fuel;
pub mod limits;
pub mod policy;
mod runtime;
pub mod shipped;
pub mod shipped_policy;
mod validate;

pub use abi::{HOST_FUNCTIONS, HostFunction};
pub use fuel::FuelSchedule;
pub use limits::Limits;
pub use runtime::{
    CallReport, Compiled, Context, Effects, Entry, MODULE_CACHE_MAX, Runtime, StateView, Transfer, Trap,
};
pub use validate::{UploadError, validate};

/// Name of the export that marks a module as written for the `cairn` v1 ABI.
pub const ABI_MARKER: &str = "cairn_abi_v1";
/// Name of the host module every import must come from.
pub const HOST_MODULE: &str = "cairn";
/// Optional export run before the entry point in the same fresh instance (AssemblyScript's
/// `--exportStart _initialize`, which replaces a start function).
pub const INITIALIZE_EXPORT: &str = "_initialize";

/// The hash that names contract code: BLAKE3 of the module bytes, domain-separated.
pub fn code_hash(code: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("cairn 2026-12 contract code v1");
    h.update(code);
    *h.finalize().as_bytes()
}
