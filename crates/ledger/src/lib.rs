//! Cairn's replicated ledger: signed transactions, a deterministic state machine over a Jellyfish
//! Merkle Tree (inclusion and non-existence proofs), blocks ordered and finalized by
//! commonware-consensus (simplex, BFT with 3f+1 validators), light-client verification, and the
//! validator / client plumbing.

pub mod app;
pub mod audit;
pub mod authority;
pub mod bench;
pub mod bench_rss;
pub mod block;
pub mod chain_store;
pub mod core;
pub mod endpoint;
pub mod fast_map;
pub mod genesis;
pub mod handle;
pub mod light;
pub mod mempool;
pub mod outcome_proof;
pub mod outcome_tree;
pub mod params;
pub mod process;
pub mod rpc;
pub mod state;
pub mod topic_tx;
pub mod tx;
pub mod tx_error;
pub mod validator;
