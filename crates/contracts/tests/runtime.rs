#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The runtime on WAT modules: determinism, fuel (instructions and host-call bytes), traps that
//! discard every effect, read-only queries, bounded host calls.

use std::collections::BTreeMap;

use cairn_contracts::{CallReport, Context, Entry, FuelSchedule, Limits, Runtime, StateView, Transfer, Trap};
use cairn_proto::ed25519::{Signer as _, SigningKey};

const IMPORTS: &str = r#"
  (import "cairn" "input_len" (func $input_len (result i32)))
  (import "cairn" "input_read" (func $input_read (param i32 i32) (result i32)))
  (import "cairn" "output_write" (func $output_write (param i32 i32)))
  (import "cairn" "state_get" (func $state_get (param i32 i32 i32 i32) (result i32)))
  (import "cairn" "state_set" (func $state_set (param i32 i32 i32 i32)))
  (import "cairn" "state_del" (func $state_del (param i32 i32)))
  (import "cairn" "blake3" (func $blake3 (param i32 i32 i32)))
  (import "cairn" "ed25519_verify" (func $ed25519_verify (param i32 i32 i32 i32) (result i32)))
  (import "cairn" "device_verify" (func $device_verify (param i32 i32 i32 i32 i32) (result i32)))
  (import "cairn" "abort" (func $abort (param i32 i32)))
  (import "cairn" "caller" (func $caller (param i32)))
  (import "cairn" "funds" (func $funds (result i64)))
  (import "cairn" "block_height" (func $block_height (result i64)))
  (import "cairn" "balance" (func $balance (param i32) (result i64)))
  (import "cairn" "transfer" (func $transfer (param i32 i64)))
  (import "cairn" "emit" (func $emit (param i32 i32)))
  (memory (export "memory") 1 2)
  (global (export "cairn_abi_v1") i32 (i32.const 1))
"#;

fn module(body: &str) -> Vec<u8> {
    let text = format!("(module {IMPORTS} {body})");
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

/// Counter: the input is a key; increments the u32 at that key, writes the new value out.
const COUNTER: &str = r#"
  (func (export "execute") (local $klen i32)
    (local.set $klen (call $input_read (i32.const 0) (i32.const 64)))
    (if (i32.lt_s (call $state_get (i32.const 0) (local.get $klen) (i32.const 100) (i32.const 4)) (i32.const 0))
      (then (i32.store (i32.const 100) (i32.const 0))))
    (i32.store (i32.const 100) (i32.add (i32.load (i32.const 100)) (i32.const 1)))
    (call $state_set (i32.const 0) (local.get $klen) (i32.const 100) (i32.const 4))
    (call $output_write (i32.const 100) (i32.const 4)))
  (func (export "query") (local $klen i32)
    (local.set $klen (call $input_read (i32.const 0) (i32.const 64)))
    (drop (call $state_get (i32.const 0) (local.get $klen) (i32.const 100) (i32.const 4)))
    (call $output_write (i32.const 100) (i32.const 4)))
"#;

#[derive(Default, Clone)]
struct Mem {
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
    balances: BTreeMap<[u8; 32], u64>,
    devices: Vec<([u8; 32], [u8; 32])>,
}

impl StateView for Mem {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv.get(key).cloned()
    }
    fn balance(&self, account: &[u8; 32]) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }
    fn device_active(&self, account: &[u8; 32], device: &[u8; 32]) -> bool {
        self.devices.contains(&(*account, *device))
    }
}

impl Mem {
    fn apply(&mut self, r: &CallReport) {
        for (k, v) in &r.result.as_ref().unwrap().writes {
            match v {
                Some(v) => self.kv.insert(k.clone(), v.clone()),
                None => self.kv.remove(k),
            };
        }
    }
}

fn rt() -> Runtime {
    Runtime::new(Limits::LEDGER, FuelSchedule::default())
}

fn ctx() -> Context {
    Context { caller: [1; 32], contract: [2; 32], funds: 0, block_height: 7, block_time_ms: 0 }
}

fn run(code: &[u8], entry: Entry, input: &[u8], state: &Mem, fuel: u64) -> CallReport {
    let rt = rt();
    let compiled = rt.compile(code).unwrap();
    rt.call(&compiled, entry, &ctx(), input, state, fuel)
}

#[test]
fn same_input_same_output_fuel_and_state() {
    let code = module(COUNTER);
    let mut a = Mem::default();
    let mut b = Mem::default();
    for i in 1..=3u32 {
        let ra = run(&code, Entry::Execute, b"n", &a, 1_000_000);
        // a second runtime (a second engine) is another machine
        let rb = run(&code, Entry::Execute, b"n", &b, 1_000_000);
        assert_eq!(ra, rb);
        assert_eq!(ra.result.as_ref().unwrap().output, i.to_le_bytes());
        assert!(ra.fuel_used > 0);
        a.apply(&ra);
        b.apply(&rb);
    }
    assert_eq!(a.kv, b.kv);
    assert_eq!(a.kv.get(&b"n"[..]).unwrap(), &3u32.to_le_bytes());
    let q = run(&code, Entry::Query, b"n", &a, 1_000_000);
    assert_eq!(q.result.unwrap().output, 3u32.to_le_bytes());
}

#[test]
fn out_of_fuel_traps_and_keeps_nothing() {
    let code = module(
        r#"(func (export "execute")
             (call $state_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1))
             (call $transfer (i32.const 0) (i64.const 1))
             (loop $l (br $l)))"#,
    );
    let mut state = Mem::default();
    state.balances.insert([2; 32], 10);
    let r = run(&code, Entry::Execute, b"", &state, 50_000);
    assert_eq!(r.result, Err(Trap::OutOfFuel));
    assert_eq!(r.fuel_used, 50_000);
}

#[test]
fn a_trap_after_writes_keeps_nothing() {
    let code = module(
        r#"(data (i32.const 200) "no")
           (func (export "execute")
             (call $state_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1))
             (call $emit (i32.const 0) (i32.const 1))
             (call $abort (i32.const 200) (i32.const 2)))
           (func (export "init") (unreachable))"#,
    );
    let r = run(&code, Entry::Execute, b"", &Mem::default(), 1_000_000);
    assert_eq!(r.result, Err(Trap::Abort("no".into())));
    assert!(r.fuel_used > 0);
    let r = run(&code, Entry::Init, b"", &Mem::default(), 1_000_000);
    assert!(matches!(r.result, Err(Trap::Wasm(_))));
    let r = run(&code, Entry::Query, b"", &Mem::default(), 1_000_000);
    assert_eq!(r.result, Err(Trap::NoEntry("query")));
}

#[test]
fn host_calls_charge_fuel_per_byte() {
    let code = module(r#"(func (export "execute") (call $output_write (i32.const 0) (call $input_len)))"#);
    let small = run(&code, Entry::Execute, &[0; 10], &Mem::default(), 1_000_000).fuel_used;
    let large = run(&code, Entry::Execute, &[0; 10_010], &Mem::default(), 1_000_000).fuel_used;
    let per_byte = FuelSchedule::default().per_byte;
    assert_eq!(large - small, 10_000 * per_byte);
    // not enough fuel for the bytes: out of fuel, not a partial write
    let r = run(&code, Entry::Execute, &[0; 10_010], &Mem::default(), 5_000);
    assert_eq!(r.result, Err(Trap::OutOfFuel));
}

#[test]
fn a_query_cannot_write_or_act() {
    for call in [
        "(call $state_set (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 1))",
        "(call $state_del (i32.const 0) (i32.const 1))",
        "(call $transfer (i32.const 0) (i64.const 0))",
        "(call $emit (i32.const 0) (i32.const 1))",
    ] {
        let code = module(&format!(r#"(func (export "query") {call})"#));
        let r = run(&code, Entry::Query, b"", &Mem::default(), 1_000_000);
        assert_eq!(r.result, Err(Trap::ReadOnly), "{call}");
    }
}

#[test]
fn transfers_are_actions_bounded_by_the_balance() {
    // pays the caller the u64 amount given as input, twice
    let code = module(
        r#"(func (export "execute")
             (drop (call $input_read (i32.const 100) (i32.const 8)))
             (call $caller (i32.const 0))
             (call $transfer (i32.const 0) (i64.load (i32.const 100)))
             (call $transfer (i32.const 0) (i64.load (i32.const 100)))
             (i64.store (i32.const 200) (call $balance (i32.const 300)))
             (call $output_write (i32.const 200) (i32.const 8)))
           (data (i32.const 300) "\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02\02")"#,
    );
    let mut state = Mem::default();
    state.balances.insert([2; 32], 100);
    let r = run(&code, Entry::Execute, &40u64.to_le_bytes(), &state, 1_000_000);
    let fx = r.result.unwrap();
    assert_eq!(fx.transfers, vec![Transfer { to: [1; 32], amount: 40 }; 2]);
    // the contract's balance seen after its own transfers
    assert_eq!(fx.output, 20u64.to_le_bytes());
    let r = run(&code, Entry::Execute, &60u64.to_le_bytes(), &state, 1_000_000);
    assert_eq!(r.result, Err(Trap::InsufficientFunds { have: 40, need: 60 }));
}

#[test]
fn bad_pointers_and_lengths_trap_without_panicking() {
    for call in [
        "(call $output_write (i32.const 131000) (i32.const 100))",
        "(call $output_write (i32.const 0) (i32.const -1))",
        "(drop (call $state_get (i32.const 0) (i32.const 100000) (i32.const 0) (i32.const 0)))",
        "(drop (call $state_get (i32.const -4) (i32.const 4) (i32.const 0) (i32.const 0)))",
        "(call $state_set (i32.const 0) (i32.const 4) (i32.const 0) (i32.const 100000))",
        "(call $blake3 (i32.const 0) (i32.const 4) (i32.const 131070))",
        "(call $caller (i32.const -1))",
        "(drop (call $ed25519_verify (i32.const 131070) (i32.const 0) (i32.const 0) (i32.const 0)))",
        "(drop (call $input_read (i32.const 131071) (i32.const 2)))",
        "(call $emit (i32.const 0) (i32.const 5000))",
    ] {
        let code = module(&format!(r#"(func (export "execute") {call})"#));
        let r = run(&code, Entry::Execute, b"xy", &Mem::default(), 1_000_000);
        assert!(matches!(r.result, Err(Trap::OutOfBounds | Trap::Limit(_))), "{call}: {:?}", r.result);
    }
}

#[test]
fn too_many_writes_or_events_trap() {
    // writes 300 distinct one-byte keys
    let code = module(
        r#"(func (export "execute") (local $i i32)
             (loop $l
               (i32.store8 (i32.const 0) (local.get $i))
               (i32.store8 (i32.const 1) (i32.shr_u (local.get $i) (i32.const 8)))
               (call $state_set (i32.const 0) (i32.const 2) (i32.const 0) (i32.const 1))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const 300)))))"#,
    );
    let r = run(&code, Entry::Execute, b"", &Mem::default(), 100_000_000);
    assert_eq!(r.result, Err(Trap::Limit("too many state writes in one call")));
}

#[test]
fn signatures_and_device_keys_verify() {
    let device = SigningKey::from_bytes(&[9; 32]);
    let msg = b"delivered";
    let sig = device.sign(msg).to_bytes();
    let dev = device.verifying_key().to_bytes();
    // input: account32 device32 sig64 msg9
    let code = module(
        r#"(func (export "execute")
             (drop (call $input_read (i32.const 0) (i32.const 137)))
             (i32.store8 (i32.const 200) (call $ed25519_verify (i32.const 32) (i32.const 128) (i32.const 9) (i32.const 64)))
             (i32.store8 (i32.const 201) (call $device_verify (i32.const 0) (i32.const 32) (i32.const 128) (i32.const 9) (i32.const 64)))
             (call $blake3 (i32.const 128) (i32.const 9) (i32.const 202))
             (call $output_write (i32.const 200) (i32.const 34)))"#,
    );
    let mut input = Vec::new();
    input.extend_from_slice(&[5; 32]);
    input.extend_from_slice(&dev);
    input.extend_from_slice(&sig);
    input.extend_from_slice(msg);
    let mut state = Mem::default();
    let out = run(&code, Entry::Execute, &input, &state, 1_000_000).result.unwrap().output;
    assert_eq!(&out[..2], &[1, 0], "not a device of the account yet");
    assert_eq!(&out[2..], blake3::hash(msg).as_bytes());
    state.devices.push(([5; 32], dev));
    let out = run(&code, Entry::Execute, &input, &state, 1_000_000).result.unwrap().output;
    assert_eq!(&out[..2], &[1, 1]);
    let mut bad = input.clone();
    bad[136] ^= 1;
    let out = run(&code, Entry::Execute, &bad, &state, 1_000_000).result.unwrap().output;
    assert_eq!(&out[..2], &[0, 0]);
}

#[test]
fn initialize_runs_before_the_entry_in_a_fresh_instance() {
    // _initialize bumps a global; a fresh instance per call means it is 1 every time
    let code = module(
        r#"(global $g (mut i32) (i32.const 0))
           (func (export "_initialize") (global.set $g (i32.add (global.get $g) (i32.const 1))))
           (func (export "execute")
             (i32.store (i32.const 0) (global.get $g))
             (call $output_write (i32.const 0) (i32.const 4)))"#,
    );
    let rt = rt();
    let compiled = rt.compile(&code).unwrap();
    for _ in 0..3 {
        let r = rt.call(&compiled, Entry::Execute, &ctx(), b"", &Mem::default(), 100_000);
        assert_eq!(r.result.unwrap().output, 1u32.to_le_bytes());
    }
}

#[test]
fn memory_growth_stops_at_the_declared_maximum() {
    let code = module(
        r#"(func (export "execute")
             (i32.store (i32.const 0) (memory.grow (i32.const 1)))
             (i32.store (i32.const 4) (memory.grow (i32.const 1)))
             (call $output_write (i32.const 0) (i32.const 8)))"#,
    );
    let out = run(&code, Entry::Execute, b"", &Mem::default(), 100_000).result.unwrap().output;
    assert_eq!(out[..4], 1i32.to_le_bytes());
    assert_eq!(out[4..], (-1i32).to_le_bytes());
}

#[test]
fn deep_recursion_traps() {
    let code = module(r#"(func $f (export "execute") (call $f))"#);
    let r = run(&code, Entry::Execute, b"", &Mem::default(), 100_000_000);
    assert!(matches!(r.result, Err(Trap::Wasm(_) | Trap::OutOfFuel)), "{:?}", r.result);
}

#[test]
fn cached_compilation_gives_the_same_calls_and_stays_bounded() {
    let rt = rt();
    let code = module(COUNTER);
    let a = rt.compile_cached(&code).unwrap();
    let b = rt.compile_cached(&code).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b), "the second compile is a cache hit");
    let fresh = rt.compile(&code).unwrap();
    let state = Mem::default();
    assert_eq!(
        rt.call(&a, Entry::Execute, &ctx(), b"k", &state, 1_000_000),
        rt.call(&fresh, Entry::Execute, &ctx(), b"k", &state, 1_000_000)
    );
    // many distinct modules: the cache keeps at most MODULE_CACHE_MAX, the first is recompiled
    for i in 0..cairn_contracts::MODULE_CACHE_MAX {
        rt.compile_cached(&module(&format!(r#"(func (export "execute") (drop (i32.const {i})))"#))).unwrap();
    }
    let c = rt.compile_cached(&code).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&a, &c), "evicted, compiled again");
}

#[test]
fn a_long_guest_loop_does_not_grow_the_host_stack() {
    // 10M fuel of a tight loop on a thread with a 256 KiB stack: the interpreter must not
    // recurse per instruction (wasmi's tail-call dispatch did when not optimized into jumps)
    let code = module(r#"(func (export "execute") (loop $l (br $l)))"#);
    let r = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || run(&code, Entry::Execute, b"", &Mem::default(), 10_000_000))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(r.result, Err(Trap::OutOfFuel));
}
