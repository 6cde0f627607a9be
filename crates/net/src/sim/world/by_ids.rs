//! A store node's side of anti-entropy by ids: it answers a page of ids (`Request::PageIds`)
//! with `(cursor, id)` pairs from its log, as the node's `serve.rs` does from the topic log.
//! The asking side is the node's own [`crate::sync::Sync`] (`sync/by_ids.rs`): it decides what
//! to fetch by id and where its cursors stand; the world only carries the RPCs.

use super::{ID_BYTES, Role, World};
use crate::sim::event::Rpc;
use crate::wire::PAGE_IDS_MAX;

impl World {
    /// A store node answers a page of ids (a liar answers it empty).
    pub(super) fn on_page_ids_req(&mut self, from: u32, to: u32, topic: u32, cursor: u64, limit: u32) {
        let node = &self.nodes[to as usize];
        if !node.store {
            return;
        }
        let (entries, next) = match node.role {
            Role::Honest => super::log_page(
                node.log.get(&topic).map(Vec::as_slice).unwrap_or_default(),
                cursor,
                limit.clamp(1, PAGE_IDS_MAX),
            ),
            _ => (Vec::new(), None),
        };
        self.send(to, from, Rpc::PageIds { topic, entries, next });
    }

    /// Bytes of a page of ids: a cursor and an id per entry, and the next cursor.
    pub(super) fn page_ids_bytes(entries: &[(u64, u32)]) -> u64 {
        entries.len() as u64 * (8 + ID_BYTES) + 8
    }
}
