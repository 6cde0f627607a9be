//! Cairn conversations over MLS (RFC 9420, OpenMLS 0.9).
//!
//! - [`credential`]: a leaf's identity is its account-signed device certificate; its MLS
//!   signature key is the device key, so every leaf chains back to an account.
//! - [`keypackage`]: signed key-package batches, one-time use, last resort.
//! - [`client`]: a device's conversations — create, add, remove, leave, self-update — with
//!   every handshake ordered by a [`cairn_proto::CommitSequencer`] so groups never fork, and
//!   application messages buffered or dropped by epoch.
//! - [`storage`]: OpenMLS state in Cairn's redb file, one transaction per operation.
//! - [`sequencer`]: an in-memory sequencer for tests and benches.
//! - [`primitives`]: the MLS derivations, checked against the IETF test vectors.

pub mod client;
mod compact;
pub mod credential;
pub mod keypackage;
pub mod primitives;
pub mod sequencer;
pub mod storage;

pub use client::{
    AAD_BYTES_MAX, Change, Client, CommitOutcome, Config, ConversationId, Delivered, Dropped, Event,
    MlsError, Received, StagedChange, WelcomeBundle, WelcomeOut, inbox_topic,
};
pub use credential::{CredentialError, DeviceSigner, verify_credential};
pub use keypackage::{
    KeyPackageBatch, KeyPackageError, KeyPackagePool, VerifiedKeyPackage, clock_free_lifetime,
    verify_key_package,
};
pub use sequencer::MemorySequencer;
pub use storage::{CairnProvider, CallStats, DatabaseHandle, MlsStorage, StorageError, StorageStats};

/// The ciphersuite of every Cairn group: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
pub const CIPHERSUITE: openmls::prelude::Ciphersuite =
    openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
