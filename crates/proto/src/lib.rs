//! Cairn wire types: canonical bounded encoding, ids, identities, envelopes, the signed inner
//! message, anti-spam proof of work, and verification of hash-linked histories.
//!
//! This crate is pure: no I/O, no clock, no randomness. Everything that crosses the network or
//! is hashed or signed is defined here, with a version byte and explicit decoding limits.

pub mod authority;
pub mod codec;
pub mod envelope;
pub mod history;
pub mod id;
pub mod identity;
pub mod message;
pub mod pow;
pub mod sequencer;

pub use codec::DecodeError;
pub use ed25519_dalek as ed25519;
pub use envelope::{Envelope, EnvelopeHeader, Limits};
pub use history::{Anchor, Report, VerifyOptions, verify};
pub use id::{Id, Topic};
pub use identity::{AccountId, DeviceCert, DeviceId};
pub use message::Message;
pub use sequencer::{CommitSequencer, Sequenced, SequencerError};
