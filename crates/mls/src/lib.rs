//! Cairn conversations over MLS (RFC 9420, OpenMLS 0.9).
//!
//! - [`credential`]: a leaf's identity is its account-signed device certificate; its MLS
//!   signature key is the device key, so every leaf chains back to an account.
//! - [`keypackage`]: signed key-package batches, one-time use, last resort.
//! - [`client`]: a device's conversations — create, add, remove, leave, self-update — with
//!   every handshake ordered by a [`cairn_proto::CommitSequencer`] so groups never fork, and
//!   application messages buffered or dropped by epoch.
//! - [`anchor_salt`]: the salt that keys anchored history heads, in the group context.
//! - [`policy_ext`]: the conversation's policy contract pinned in the group context, judging
//!   every handshake before it is merged.
//! - [`storage`]: OpenMLS state in Cairn's redb file, one transaction per operation.
//! - [`sequencer`]: an in-memory sequencer for tests and benches.
//! - [`primitives`]: the MLS derivations, checked against the IETF test vectors.
//! - [`welcome_chunks`](mod@welcome_chunks): a Welcome bundle larger than one envelope, split into chunks and
//!   reassembled within bounded memory.

pub mod anchor_salt;
pub mod client;
mod compact;
pub mod credential;
pub mod keypackage;
pub mod policy_ext;
pub mod primitives;
pub mod sequencer;
pub mod storage;
pub mod welcome_chunks;

pub use client::{
    AAD_BYTES_MAX, Change, Client, CommitOutcome, Config, ConversationId, Delivered, Dropped, Event,
    MlsError, Received, StagedChange, WelcomeBundle, WelcomeInfo, WelcomeOut, inbox_topic,
};
pub use credential::{CredentialError, DeviceSigner, verify_credential};
pub use keypackage::{
    KeyPackageBatch, KeyPackageError, KeyPackagePool, VerifiedKeyPackage, clock_free_lifetime,
    leaf_capabilities, verify_key_package,
};
pub use sequencer::MemorySequencer;
pub use storage::{
    CairnProvider, CallStats, DatabaseHandle, DurableHook, MlsStorage, StorageError, StorageStats,
};
pub use welcome_chunks::{
    AssemblerLimits, WELCOME_ASSEMBLY_BUNDLES_MAX, WELCOME_ASSEMBLY_BYTES_MAX, WELCOME_ASSEMBLY_DONE_IDS_MAX,
    WELCOME_ASSEMBLY_STALE_MS, WELCOME_CHUNK_HEADER_BYTES, WELCOME_CHUNK_VERSION, WELCOME_CHUNKED_BYTES_MAX,
    WELCOME_CHUNKS_MAX, WelcomeAssembler, WelcomeChunk, WelcomeChunkError, WelcomeSplitError,
    welcome_bundle_id, welcome_chunk_bytes_max, welcome_chunks,
};

/// The ciphersuite of every Cairn group: MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
pub const CIPHERSUITE: openmls::prelude::Ciphersuite =
    openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
