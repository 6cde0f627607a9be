//! Anti-entropy by ids (`SimConfig::resync_by_ids`): a *proposed* store protocol, not yet in
//! the node. A store node answers a page with `(cursor, id)` pairs instead of whole envelopes,
//! and the node fetches by id (`Request::Ids`, as for missing parents) only those it has not
//! delivered. The node today pages whole envelopes (`Request::Page`), so every envelope gossip
//! already brought is downloaded again from each honest store node of its topic.

use super::{ID_BYTES, Role, World};
use crate::sim::event::Rpc;

/// Ids per page (as `PAGE_ENVELOPES_MAX`).
pub(super) const PAGE_IDS_MAX: u32 = 256;
/// An id asked of a store and not answered is asked again after this long, ms.
const REFETCH_MS: u64 = 5_000;

/// An envelope asked by id after an ids page listed it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fetch {
    /// When it was asked, ms.
    at: u64,
    topic: u32,
    store: u32,
    /// Its cursor at that store.
    seq: u64,
}

impl World {
    /// Asks every store node of every topic for the ids after this node's cursor there. An id
    /// asked by id and still missing after `REFETCH_MS` (its answer lost while this node was
    /// away) moves that cursor back to it, so it is listed and asked again.
    pub(super) fn sync_all_by_ids(&mut self, n: u32) {
        let now = self.now;
        let node = &mut self.nodes[n as usize];
        let got = &node.got;
        let mut back = Vec::new();
        node.fetching.retain(|k, f| {
            if got.contains(k) {
                return false;
            }
            if now < f.at + REFETCH_MS {
                return true;
            }
            back.push(*f);
            false
        });
        for f in back {
            let c = node.id_cursors.entry((f.topic, f.store)).or_default();
            *c = (*c).min(f.seq);
        }
        for t in 0..self.topics.len() as u32 {
            for s in self.stores_of(t) {
                let from = self.nodes[n as usize].id_cursors.get(&(t, s)).copied().unwrap_or(0);
                self.send(n, s, Rpc::PageIdsReq { topic: t, from });
            }
        }
    }

    /// A store node answers an ids page (a liar answers it empty).
    pub(super) fn on_page_ids_req(&mut self, from: u32, to: u32, topic: u32, cursor: u64) {
        let node = &self.nodes[to as usize];
        if !node.store {
            return;
        }
        let (entries, next) = match node.role {
            Role::Honest => super::log_page(
                node.log.get(&topic).map(Vec::as_slice).unwrap_or_default(),
                cursor,
                PAGE_IDS_MAX,
            ),
            _ => (Vec::new(), None),
        };
        self.send(to, from, Rpc::PageIds { topic, entries, next });
    }

    /// An ids page arrived: fetch what is missing, move the cursor, ask the next page.
    pub(super) fn on_page_ids(
        &mut self,
        from: u32,
        to: u32,
        topic: u32,
        entries: &[(u64, u32)],
        next: Option<u64>,
    ) {
        let now = self.now;
        let node = &mut self.nodes[to as usize];
        let mut cursor = node.id_cursors.get(&(topic, from)).copied().unwrap_or(0);
        let mut want = Vec::new();
        for (seq, k) in entries {
            cursor = cursor.max(seq + 1);
            if node.got.contains(k) {
                continue;
            }
            match node.fetching.get(k) {
                Some(f) if now < f.at + REFETCH_MS => {}
                _ => {
                    node.fetching.insert(*k, Fetch { at: now, topic, store: from, seq: *seq });
                    want.push(self.msgs[*k as usize].id);
                }
            }
        }
        if let Some(c) = next {
            cursor = cursor.max(c);
        }
        node.id_cursors.insert((topic, from), cursor);
        if !want.is_empty() {
            self.send(to, from, Rpc::IdsReq(want));
        }
        if let Some(c) = next {
            self.send(to, from, Rpc::PageIdsReq { topic, from: c });
        }
    }

    /// Bytes of an ids page: a cursor and an id per entry.
    pub(super) fn page_ids_bytes(entries: &[(u64, u32)]) -> u64 {
        entries.len() as u64 * (8 + ID_BYTES) + 8
    }
}
