//! The Cairn node: wires the P2P mesh, MLS conversations, the ledger and the local store
//! together, and serves the local HTTP + WebSocket API that the `cairn` CLI uses.

pub mod api;
pub mod backend;
pub mod client;
pub mod metrics;
pub mod model;
pub mod service;

mod db;
