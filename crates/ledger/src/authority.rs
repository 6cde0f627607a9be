//! Conversation authority (issue 12 §2): the rule lives in [`cairn_proto::authority`], shared
//! with the in-memory sequencer the MLS tests run against.

pub use cairn_proto::authority::*;
