//! The Cairn node: wires the P2P mesh, MLS conversations, the ledger and the local store
//! together, and serves the local HTTP + WebSocket API that the `cairn` CLI uses.
//!
//! Layers, from pure to I/O: [`core`] (decisions, no I/O), [`engine`] (core + MLS state +
//! node tables, synchronous), [`shell`] (mesh, ledger worker, actor thread, bounded queues),
//! [`service`] (the API façade) and [`api`] (HTTP).

mod account_ops;
pub mod anchor_salts;
pub mod api;
pub mod api_history;
pub mod api_ledger;
pub mod api_setup;
pub mod archive;
pub mod backend;
pub mod chain_store;
pub mod client;
pub mod core;
pub mod db;
pub mod deliveries_store;
pub mod engine;
pub mod error;
pub mod idempotency;
pub mod keyring;
pub mod link;
pub mod link_history;
pub mod link_host;
pub mod link_join;
pub mod metrics;
pub mod model;
pub mod outbox_store;
pub mod policy_api;
pub mod redactions;
pub mod requests;
pub mod service;
pub mod shell;
pub mod verify;
pub mod web;
