//! `GET /v1/conversations/{id}/deliveries`: the delivery states (sent → stored on k →
//! delivered to n of m) of this device's own messages, so a client that (re)loads a history
//! shows them without having watched the live stream.
//!
//! The states come from the node's delivery bookkeeping (`core::delivery`), which is recorded
//! in `node.redb` (`crate::deliveries_store`) and read back when the node starts: a restart
//! keeps them (the newest 2,000 sends of each conversation; older ones show no state).

use cairn_proto::Id;

use crate::model::DeliveryView;

/// Delivery states returned at most (the newest sends).
pub const DELIVERIES_MAX: usize = 2_000;

/// One sent message's delivery state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeliveryEntry {
    /// Envelope id (hex) of the sent message.
    pub id: String,
    /// Its delivery state.
    pub delivery: DeliveryView,
}

/// The API view of the node's `(id, state)` pairs.
pub(crate) fn entries(list: Vec<(Id, DeliveryView)>) -> Vec<DeliveryEntry> {
    list.into_iter().map(|(id, delivery)| DeliveryEntry { id: id.to_hex(), delivery }).collect()
}
