//! Cairn's peer-to-peer layer.
//!
//! - [`validate`]: pure admission of relayed envelopes (size, canonical form, proof of work,
//!   timestamp window, duplicates, per-peer rate) mapped to gossipsub verdicts.
//! - [`sync`]: the pure mailbox/delivery state machine (acks, retries, cursors, gap filling,
//!   exactly-once causal delivery).
//! - [`shard`]: topic → gossip shard and topic → nearest store nodes.
//! - [`wire`]: the bounded request/response protocol spoken with store nodes.
//! - [`peerbook`]: the saved peer book and its redial schedule (exponential backoff).
//! - [`stem`]: the stem phase before gossip (Dandelion++-style), sans-IO.
//! - [`stem_wire`]: the bounded `/cairn/stem/1` messages (an envelope; receipts back).
//! - [`ledger_relay`], [`ledger_relay_io`]: `/cairn/ledger-relay/1`, a peer pipes a client's
//!   ledger RPC channel (end-to-end encrypted) to a validator of its own genesis.
//! - [`light`]: light clients (`/cairn/light/1`): frames, buckets, the cross-check of two
//!   service nodes (sans-IO; the shell is in `node/light_*`).
//! - [`sim`]: a seeded simulation of thousands of nodes running the pure parts above.
//! - [`node`]: the thin libp2p shell that drives them.

pub mod bench;
pub mod ledger_relay;
pub mod ledger_relay_io;
pub mod light;
pub mod light_pace;
pub mod nearness;
pub mod node;
pub mod peerbook;
pub mod receipt;
pub mod shard;
pub mod sim;
pub mod stem;
pub mod stem_wire;
pub mod sync;
pub mod validate;
pub mod wire;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};
