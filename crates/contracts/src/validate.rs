//! The upload validator: the rules a module must follow before it is stored, each refusal
//! naming its rule. The structural rules are checked here on wasmparser's payloads (bounded:
//! the module size is checked first); the full WebAssembly validation then runs in wasmi under
//! the same feature set as execution ([`crate::Runtime::compile`]).

use thiserror::Error;
use wasmparser::{CompositeInnerType, ExternalKind, Parser, Payload, TypeRef, ValType};

use crate::abi::{AbiType, host_function};
use crate::limits::Limits;
use crate::{ABI_MARKER, HOST_MODULE};

/// Why a module was refused at upload. [`UploadError::rule`] names the rule.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum UploadError {
    /// The module is over the size limit.
    #[error(
        "module of {len} bytes is over the limit of {max} bytes (rule: size): strip debug sections, build with -O3"
    )]
    TooLarge {
        /// Size given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not a valid WebAssembly module (or wasmi cannot compile it).
    #[error("not a valid WebAssembly module (rule: valid-wasm): {0}")]
    Malformed(String),
    /// Uses `f32`/`f64` types or instructions.
    #[error("module uses floating point (rule: no-floats): use integer arithmetic")]
    Floats,
    /// Uses SIMD (`v128`).
    #[error("module uses SIMD (rule: no-simd): build without SIMD")]
    Simd,
    /// Uses threads (atomics or shared memory).
    #[error("module uses threads, atomics or shared memory (rule: no-threads)")]
    Threads,
    /// Declares a 64-bit memory.
    #[error("module declares a 64-bit memory (rule: no-memory64)")]
    Memory64,
    /// Has a start function.
    #[error(
        "module has a start function (rule: no-start): export it as _initialize instead (asc --exportStart _initialize)"
    )]
    StartFunction,
    /// Imports from a module other than `cairn`.
    #[error("import {module}.{name} is not from the `cairn` host module (rule: cairn-imports-only)")]
    ForeignImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// Imports a `cairn` name that ABI v1 does not define.
    #[error("import cairn.{0} is not a host function of ABI v1 (rule: cairn-imports-only)")]
    UnknownHostFunction(String),
    /// Imports a host function with the wrong signature, or something that is not a function.
    #[error("import cairn.{0} has the wrong type (rule: host-signature): see docs/contracts.md")]
    HostSignature(String),
    /// Does not define exactly one memory of its own.
    #[error("module must define exactly one memory, found {0} (rule: one-memory)")]
    MemoryCount(usize),
    /// The memory declares no maximum.
    #[error("memory declares no maximum (rule: memory-bounded): build with --maximumMemory")]
    MemoryUnbounded,
    /// The memory may grow past the limit.
    #[error("memory of up to {pages} pages is over the limit of {max} pages (rule: memory-pages)")]
    MemoryTooLarge {
        /// Declared pages (maximum, or initial if larger).
        pages: u64,
        /// Limit.
        max: u32,
    },
    /// Does not export its memory as `memory`.
    #[error("module does not export its memory as `memory` (rule: export-memory)")]
    NoMemoryExport,
    /// Does not export the `cairn_abi_v1` marker.
    #[error(
        "module does not export `cairn_abi_v1` (rule: abi-marker): add `export const cairn_abi_v1: i32 = 1`"
    )]
    NoAbiMarker,
}

impl UploadError {
    /// The short name of the rule broken.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "size",
            Self::Malformed(_) => "valid-wasm",
            Self::Floats => "no-floats",
            Self::Simd => "no-simd",
            Self::Threads => "no-threads",
            Self::Memory64 => "no-memory64",
            Self::StartFunction => "no-start",
            Self::ForeignImport { .. } | Self::UnknownHostFunction(_) => "cairn-imports-only",
            Self::HostSignature(_) => "host-signature",
            Self::MemoryCount(_) => "one-memory",
            Self::MemoryUnbounded => "memory-bounded",
            Self::MemoryTooLarge { .. } => "memory-pages",
            Self::NoMemoryExport => "export-memory",
            Self::NoAbiMarker => "abi-marker",
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> UploadError {
    let mut s = e.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    UploadError::Malformed(s)
}

/// Classifies a value type: `Err` for floats and SIMD.
fn check_val(v: &ValType) -> Result<(), UploadError> {
    match v {
        ValType::F32 | ValType::F64 => Err(UploadError::Floats),
        ValType::V128 => Err(UploadError::Simd),
        _ => Ok(()),
    }
}

fn abi_matches(params: &[ValType], results: &[ValType], want: (&[AbiType], &[AbiType])) -> bool {
    let same = |got: &[ValType], want: &[AbiType]| {
        got.len() == want.len()
            && got.iter().zip(want).all(|(g, w)| match w {
                AbiType::I32 => *g == ValType::I32,
                AbiType::I64 => *g == ValType::I64,
            })
    };
    same(params, want.0) && same(results, want.1)
}

/// Classifies an instruction by its name: floats, SIMD or atomics are refused.
fn check_operator(name: &str) -> Result<(), UploadError> {
    const SIMD: [&str; 7] = ["V128", "I8x16", "I16x8", "I32x4", "I64x2", "F32x4", "F64x2"];
    if SIMD.iter().any(|p| name.contains(p)) {
        return Err(UploadError::Simd);
    }
    if name.contains("F32") || name.contains("F64") {
        return Err(UploadError::Floats);
    }
    if name.contains("Atomic") {
        return Err(UploadError::Threads);
    }
    Ok(())
}

/// Checks the upload rules of `limits` on `code`. This does not run wasmi's full validation:
/// [`crate::Runtime::compile`] does both.
pub fn validate(code: &[u8], limits: &Limits) -> Result<(), UploadError> {
    use std::fmt::Write as _;
    if code.len() > limits.module_bytes_max {
        return Err(UploadError::TooLarge { len: code.len(), max: limits.module_bytes_max });
    }
    let mut func_types: Vec<Option<(Vec<ValType>, Vec<ValType>)>> = Vec::new();
    let mut memories = 0usize;
    let mut memory_export = false;
    let mut marker = false;
    let mut op_name = String::new();
    for payload in Parser::new(0).parse_all(code) {
        match payload.map_err(malformed)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(malformed)?.into_types() {
                        match &sub.composite_type.inner {
                            CompositeInnerType::Func(ft) => {
                                for v in ft.params().iter().chain(ft.results()) {
                                    check_val(v)?;
                                }
                                func_types.push(Some((ft.params().to_vec(), ft.results().to_vec())));
                            }
                            _ => func_types.push(None),
                        }
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(malformed)?;
                    if import.module != HOST_MODULE {
                        return Err(UploadError::ForeignImport {
                            module: import.module.chars().take(64).collect(),
                            name: import.name.chars().take(64).collect(),
                        });
                    }
                    let Some(host) = host_function(import.name) else {
                        return Err(UploadError::UnknownHostFunction(import.name.chars().take(64).collect()));
                    };
                    let ok = match import.ty {
                        TypeRef::Func(idx) => func_types
                            .get(idx as usize)
                            .and_then(|t| t.as_ref())
                            .is_some_and(|(p, r)| abi_matches(p, r, (host.params, host.results))),
                        _ => false,
                    };
                    if !ok {
                        return Err(UploadError::HostSignature(host.name.to_owned()));
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for mem in reader {
                    let mem = mem.map_err(malformed)?;
                    memories += 1;
                    if mem.memory64 {
                        return Err(UploadError::Memory64);
                    }
                    if mem.shared {
                        return Err(UploadError::Threads);
                    }
                    let max = mem.maximum.ok_or(UploadError::MemoryUnbounded)?;
                    let pages = max.max(mem.initial);
                    if pages > u64::from(limits.memory_pages_max) {
                        return Err(UploadError::MemoryTooLarge { pages, max: limits.memory_pages_max });
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                for g in reader {
                    let g = g.map_err(malformed)?;
                    check_val(&g.ty.content_type)?;
                    if g.ty.shared {
                        return Err(UploadError::Threads);
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e.map_err(malformed)?;
                    match (e.name, e.kind) {
                        ("memory", ExternalKind::Memory) => memory_export = true,
                        (ABI_MARKER, ExternalKind::Func | ExternalKind::Global) => marker = true,
                        _ => {}
                    }
                }
            }
            Payload::StartSection { .. } => return Err(UploadError::StartFunction),
            Payload::CodeSectionEntry(body) => {
                for local in body.get_locals_reader().map_err(malformed)? {
                    check_val(&local.map_err(malformed)?.1)?;
                }
                let mut ops = body.get_operators_reader().map_err(malformed)?;
                while !ops.eof() {
                    let op = match ops.read() {
                        Ok(op) => op,
                        Err(e) if e.message().contains("SIMD") => return Err(UploadError::Simd),
                        Err(e) => return Err(malformed(e)),
                    };
                    op_name.clear();
                    let _ = write!(op_name, "{op:?}");
                    check_operator(&op_name)?;
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(UploadError::MemoryCount(memories));
    }
    if !memory_export {
        return Err(UploadError::NoMemoryExport);
    }
    if !marker {
        return Err(UploadError::NoAbiMarker);
    }
    Ok(())
}
