//! Client access to validators: a versioned request/response protocol ([`protocol`]) over an
//! authenticated, encrypted channel ([`noise`], [`transport`]), the server a validator runs
//! next to consensus ([`server`]), a blocking client for non-validator nodes ([`client`],
//! [`follower`]) and the real [`cairn_proto::sequencer::CommitSequencer`] ([`sequencer`]).
//!
//! A connection starts with a Noise `NX` handshake: the client stays anonymous, the validator
//! proves the consensus key the genesis lists for its address. Then frames (`u32` length +
//! body, sealed into Noise messages of at most 64 KiB) carry [`Request`] / [`Response`] in the
//! canonical codec, version byte first. Every length is checked before allocation; a malformed
//! request gets a [`Response::Error`] and its connection is closed; every client round trip
//! is bounded by a deadline.

pub mod client;
mod fields;
pub mod follower;
mod link;
pub mod noise;
pub mod protocol;
pub mod sequencer;
pub mod server;
pub mod transport;
pub mod trust;

pub use client::{CALL_TIMEOUT_DEFAULT, ClientError, LedgerClient};
pub use follower::Follower;
pub use noise::{NoiseError, RpcIdentity};
pub use protocol::{
    Admission, BATCH_MAX, CertifiedBlock, FRAME_MAX, HandshakePage, LINKS_PER_REPLY_MAX, PROTOCOL_VERSION,
    ProtocolError, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, Refusal, RemoteChainStatus, RemoteOutcome,
    RemoteStatus, Request, Response,
};
pub use sequencer::LedgerSequencer;
pub use server::{CONNECTIONS_MAX, serve, spawn_server};
pub use transport::{Channel, FrameError, Pipe, Relays};
