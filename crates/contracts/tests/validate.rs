#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The upload rules: a module that breaks one is refused with the rule named; random and
//! mutated bytes never panic the validator or the compiler.

use cairn_contracts::{FuelSchedule, Limits, Runtime, UploadError, validate};
use proptest::prelude::*;

const IMPORTS: &str = r#"
  (import "cairn" "input_len" (func $input_len (result i32)))
  (import "cairn" "output_write" (func $output_write (param i32 i32)))
"#;

/// A module with the standard imports, `extra` fields, memory section `memory`, and exports.
fn module(extra: &str, memory: &str, exports: bool) -> Vec<u8> {
    let exports = if exports {
        r#"(export "memory" (memory 0)) (global (export "cairn_abi_v1") i32 (i32.const 1))"#
    } else {
        ""
    };
    // imports come before every definition
    let text = if extra.trim_start().starts_with("(import") {
        format!("(module {IMPORTS} {extra} {memory} {exports})")
    } else {
        format!("(module {IMPORTS} {memory} {exports} {extra})")
    };
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test WAT: {e}\n{text}"))
}

fn ok_module(extra: &str) -> Vec<u8> {
    module(extra, "(memory 1 4)", true)
}

fn rule(code: &[u8], limits: &Limits) -> &'static str {
    match validate(code, limits) {
        Ok(()) => "ok",
        Err(e) => e.rule(),
    }
}

fn ledger() -> Runtime {
    Runtime::new(Limits::LEDGER, FuelSchedule::default())
}

#[test]
fn a_conforming_module_is_accepted_and_compiles() {
    let code = ok_module(r#"(func (export "execute") (call $output_write (i32.const 0) (call $input_len)))"#);
    assert_eq!(rule(&code, &Limits::LEDGER), "ok");
    assert_eq!(rule(&code, &Limits::POLICY), "ok");
    ledger().compile(&code).unwrap();
}

#[test]
fn size_is_bounded_per_kind() {
    let big = vec![0u8; Limits::LEDGER.module_bytes_max + 1];
    assert!(matches!(validate(&big, &Limits::LEDGER), Err(UploadError::TooLarge { .. })));
    // a valid module of ~130 KiB (a data segment) fits a ledger contract but not a policy
    let data = format!(r#"(data (i32.const 0) "{}")"#, "a".repeat(130 * 1024));
    let code = module(&data, "(memory 4 4)", true);
    assert_eq!(rule(&code, &Limits::LEDGER), "ok");
    assert_eq!(rule(&code, &Limits::POLICY), "size");
}

#[test]
fn garbage_is_not_wasm() {
    assert_eq!(rule(b"\0asm\x01\0\0\0\x01\xff", &Limits::LEDGER), "valid-wasm");
    assert_eq!(rule(b"hello", &Limits::LEDGER), "valid-wasm");
    assert_eq!(rule(b"", &Limits::LEDGER), "valid-wasm");
}

#[test]
fn floats_are_refused_in_code_locals_signatures_and_globals() {
    let cases = [
        r#"(func (drop (f32.add (f32.const 1) (f32.const 2))))"#,
        r#"(func (local f64))"#,
        r#"(func (param f32))"#,
        r#"(global f64 (f64.const 0))"#,
        r#"(func (drop (i32.trunc_f32_s (f32.const 1))))"#,
        r#"(func (drop (f64.load (i32.const 0))))"#,
    ];
    for c in cases {
        assert_eq!(rule(&ok_module(c), &Limits::LEDGER), "no-floats", "{c}");
    }
}

#[test]
fn simd_is_refused() {
    assert_eq!(rule(&ok_module(r#"(func (local v128))"#), &Limits::LEDGER), "no-simd");
    let op = r#"(func (drop (i32x4.extract_lane 0 (v128.load (i32.const 0)))))"#;
    assert_eq!(rule(&ok_module(op), &Limits::LEDGER), "no-simd");
}

#[test]
fn threads_are_refused() {
    let shared = module("", "(memory 1 4 shared)", true);
    assert_eq!(rule(&shared, &Limits::LEDGER), "no-threads");
    let atomic = ok_module(r#"(func (drop (i32.atomic.load (i32.const 0))))"#);
    assert_eq!(rule(&atomic, &Limits::LEDGER), "no-threads");
}

#[test]
fn memory64_is_refused() {
    let code = module("", "(memory i64 1 4)", false);
    assert_eq!(rule(&code, &Limits::LEDGER), "no-memory64");
}

#[test]
fn a_start_function_is_refused() {
    let code = ok_module(r#"(func $s) (start $s)"#);
    assert_eq!(rule(&code, &Limits::LEDGER), "no-start");
    assert_eq!(ledger().compile(&code).unwrap_err().rule(), "no-start");
}

#[test]
fn only_cairn_host_functions_may_be_imported() {
    let env = ok_module(r#"(import "env" "abort" (func (param i32 i32 i32 i32)))"#);
    assert_eq!(rule(&env, &Limits::LEDGER), "cairn-imports-only");
    let clock = ok_module(r#"(import "cairn" "clock" (func (result i64)))"#);
    assert!(
        matches!(validate(&clock, &Limits::LEDGER), Err(UploadError::UnknownHostFunction(n)) if n == "clock")
    );
    let wrong = ok_module(r#"(import "cairn" "block_height" (func (result i32)))"#);
    assert!(
        matches!(validate(&wrong, &Limits::LEDGER), Err(UploadError::HostSignature(n)) if n == "block_height")
    );
    let mem = module(r#"(import "cairn" "caller" (memory 1 1))"#, "", false);
    assert_eq!(rule(&mem, &Limits::LEDGER), "host-signature");
}

#[test]
fn memory_must_be_one_bounded_exported_and_small() {
    assert_eq!(rule(&module("", "", false), &Limits::LEDGER), "one-memory");
    assert_eq!(rule(&module("", "(memory 1)", true), &Limits::LEDGER), "memory-bounded");
    assert_eq!(rule(&module("", "(memory 1 64)", true), &Limits::LEDGER), "ok");
    assert_eq!(rule(&module("", "(memory 1 65)", true), &Limits::LEDGER), "memory-pages");
    assert_eq!(rule(&module("", "(memory 1 16)", true), &Limits::POLICY), "ok");
    assert_eq!(rule(&module("", "(memory 1 17)", true), &Limits::POLICY), "memory-pages");
    assert_eq!(rule(&module("", "(memory 20 20)", true), &Limits::POLICY), "memory-pages");
    let unexported = module(r#"(global (export "cairn_abi_v1") i32 (i32.const 1))"#, "(memory 1 1)", false);
    assert_eq!(rule(&unexported, &Limits::LEDGER), "export-memory");
    let unmarked = module(r#"(export "memory" (memory 0))"#, "(memory 1 1)", false);
    assert_eq!(rule(&unmarked, &Limits::LEDGER), "abi-marker");
    // a function marker is accepted too
    let func_marker =
        module(r#"(export "memory" (memory 0)) (func (export "cairn_abi_v1"))"#, "(memory 1 1)", false);
    assert_eq!(rule(&func_marker, &Limits::LEDGER), "ok");
}

#[test]
fn wasmi_validation_catches_what_the_rules_do_not() {
    // well-formed sections, ill-typed body: the rules pass, wasmi refuses
    let code = ok_module(r#"(func (result i32) (i64.const 1))"#);
    assert_eq!(rule(&code, &Limits::LEDGER), "ok");
    assert_eq!(ledger().compile(&code).unwrap_err().rule(), "valid-wasm");
}

#[test]
fn every_refusal_message_names_its_rule() {
    let errors = [
        UploadError::TooLarge { len: 2, max: 1 },
        UploadError::Malformed("x".into()),
        UploadError::Floats,
        UploadError::Simd,
        UploadError::Threads,
        UploadError::Memory64,
        UploadError::StartFunction,
        UploadError::ForeignImport { module: "env".into(), name: "x".into() },
        UploadError::UnknownHostFunction("x".into()),
        UploadError::HostSignature("x".into()),
        UploadError::MemoryCount(0),
        UploadError::MemoryUnbounded,
        UploadError::MemoryTooLarge { pages: 2, max: 1 },
        UploadError::NoMemoryExport,
        UploadError::NoAbiMarker,
    ];
    for e in errors {
        assert!(e.to_string().contains(&format!("rule: {}", e.rule())), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = validate(&bytes, &Limits::LEDGER);
        let _ = ledger().compile(&bytes);
    }

    #[test]
    fn mutated_modules_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut code = ok_module(
            r#"(func (export "execute") (local i32)
                 (local.set 0 (call $input_len))
                 (call $output_write (i32.const 0) (local.get 0)))"#,
        );
        for (i, b) in flips {
            let at = i.index(code.len());
            code[at] = b;
        }
        let rt = ledger();
        if let Ok(compiled) = rt.compile(&code) {
            let state = common_state();
            let _ = rt.call(&compiled, cairn_contracts::Entry::Execute, &Default::default(), b"abc", &state, 10_000);
        }
    }
}

struct Empty;
impl cairn_contracts::StateView for Empty {
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn balance(&self, _: &[u8; 32]) -> u64 {
        0
    }
    fn device_active(&self, _: &[u8; 32], _: &[u8; 32]) -> bool {
        false
    }
}

fn common_state() -> Empty {
    Empty
}
