//! The store path of a node's loop: its store requests of one turn batched per store node,
//! the store set of a topic, store nodes that answered "full", and the receipts kept.

use cairn_proto::{Envelope, Id, Topic};
use libp2p::PeerId;
use tracing::debug;

use super::actor::{Node, Outbound, key_of, receipt_key};
use super::now_ms;
use super::writer::HistoryJob;
use crate::receipt::StoreReceipt;
use crate::shard::place;
use crate::sync::Input;
use crate::wire::{Request, STORE_BATCH_BYTES_MAX, STORE_BATCH_MAX};

/// Store requests in flight (awaiting an answer or a failure), at most. A request beyond it is
/// not sent and counted in `requests_shed`; the state machine recovers it (sends are retried
/// with back-off, missing ancestors asked again, pages re-read at the next anti-entropy round).
pub(super) const OUTBOUND_REQUESTS_MAX: usize = 16_384;
/// How long a store node that answered "full" is passed over when choosing targets, ms.
const FULL_STORE_AVOID_MS: u64 = 60_000;

impl Node {
    /// Sends the store requests of the last turn: one request per store node and batch
    /// (at most `STORE_BATCH_MAX` envelopes and `STORE_BATCH_BYTES_MAX` bytes).
    pub(super) fn send_store_batches(&mut self) {
        self.send_own_stems();
        self.send_relayed_batches();
        if self.store_batches.is_empty() {
            return;
        }
        for (to, envs) in std::mem::take(&mut self.store_batches) {
            for batch in batches(envs) {
                self.request_store(to, batch);
            }
        }
    }

    fn request_store(&mut self, to: PeerId, mut batch: Vec<Envelope>) {
        match batch.len() {
            0 => {}
            1 => {
                let e = batch.remove(0);
                let id = e.id();
                let _ = self.request(to, Request::Store(e), Outbound::Store(vec![id]));
            }
            _ => {
                let ids = batch.iter().map(Envelope::id).collect();
                let _ = self.request(to, Request::StoreMany(batch), Outbound::Store(ids));
            }
        }
    }

    /// Keeps a store node's receipt in the local history, with the next history commit.
    pub(super) fn keep_receipt(&mut self, store: &PeerId, r: StoreReceipt) {
        let key = receipt_key(&r.id, store);
        self.staged.push_back(HistoryJob::Keep { key, value: r.encode() });
    }

    /// Sends a store request unless `OUTBOUND_REQUESTS_MAX` are in flight (see there); false
    /// when it was shed.
    pub(super) fn request(&mut self, to: PeerId, req: Request, kind: Outbound) -> bool {
        if self.outbound.len() >= OUTBOUND_REQUESTS_MAX {
            self.counters.requests_shed += 1;
            debug!(%to, "store request shed: {OUTBOUND_REQUESTS_MAX} in flight");
            return false;
        }
        let rid = self.swarm.behaviour_mut().store.send_request(&to, req.encode());
        self.outbound.insert(rid, (to, kind));
        true
    }

    /// The store set of `topic` ([`place`]): the connected registered stores first in rank
    /// order, or with none registered, the connected store nodes XOR-nearest the topic.
    /// Store nodes that answered "full" in the last `FULL_STORE_AVOID_MS` come last.
    pub(super) fn stores_for(&self, topic: &Topic) -> Vec<PeerId> {
        let cands: Vec<(PeerId, [u8; 32])> = if self.registered.is_empty() {
            self.store_peers.iter().map(|(p, k)| (*p, *k)).collect()
        } else {
            Vec::new()
        };
        let now = now_ms();
        let full = |p: &PeerId| self.full_stores.get(p).is_some_and(|until| *until > now);
        let usable = |p: &PeerId| self.store_peers.contains_key(p);
        place(topic, &key_of(&topic.0), &self.registered, &cands, usable, full, self.config.replicas)
    }

    /// A store node answered "full" for these envelopes: avoid it for a while, and give the
    /// unstored sends of their topics the next store nodes as targets.
    pub(super) fn store_full(&mut self, store: PeerId, ids: &[Id]) {
        let now = now_ms();
        self.full_stores.retain(|_, until| *until > now);
        if self.full_stores.len() < self.config.connections_max as usize {
            self.full_stores.insert(store, now + FULL_STORE_AVOID_MS);
        }
        let topics: std::collections::BTreeSet<Topic> =
            ids.iter().filter_map(|id| self.sync.topic_of(id)).collect();
        for topic in topics {
            let stores = self.stores_for(&topic);
            let outs = self.sync.handle(Input::Targets { topic, stores }, now);
            self.apply(outs);
        }
    }
}

/// Splits envelopes bound for one store node into requests of at most `STORE_BATCH_MAX`
/// envelopes and `STORE_BATCH_BYTES_MAX` bytes, in order.
pub(super) fn batches(envs: Vec<Envelope>) -> Vec<Vec<Envelope>> {
    split_batches(envs, STORE_BATCH_MAX, STORE_BATCH_BYTES_MAX, |e| e.encoded_len() + 8)
}

/// Splits `items` into runs of at most `count_max` items and `bytes_max` bytes (as `len`
/// counts them; an item alone over `bytes_max` still makes a run of one), in order.
pub(super) fn split_batches<T>(
    items: Vec<T>,
    count_max: usize,
    bytes_max: usize,
    len: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch: Vec<T> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = len(&item);
        if !batch.is_empty() && (batch.len() == count_max || bytes + n > bytes_max) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += n;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use cairn_proto::envelope::pad;
    use cairn_proto::{Envelope, Limits, Topic};

    use super::batches;
    use crate::wire::{STORE_BATCH_BYTES_MAX, STORE_BATCH_MAX};

    fn env(i: u64, len: usize) -> Envelope {
        Envelope::new(Topic([1; 32]), i, 60, vec![], pad(&vec![7u8; len], &Limits::default()).unwrap())
    }

    #[test]
    fn batches_keep_order_and_stay_within_the_count_and_byte_bounds() {
        assert!(batches(vec![]).is_empty());
        let small: Vec<Envelope> = (0..2 * STORE_BATCH_MAX as u64 + 1).map(|i| env(i, 10)).collect();
        let split = batches(small.clone());
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [STORE_BATCH_MAX, STORE_BATCH_MAX, 1]);
        assert_eq!(split.concat(), small);
        // 200 KiB of text each (more once padded): a request holds as many as fit in its bytes,
        // and the next one starts a new request.
        let fat: Vec<Envelope> = (0..6).map(|i| env(i, 200 * 1024)).collect();
        let per = STORE_BATCH_BYTES_MAX / (fat[0].encoded_len() + 8);
        assert!((1..6).contains(&per), "{per} per request");
        let split = batches(fat.clone());
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [per, 6 - per]);
        for b in &split {
            assert!(b.iter().map(|e| e.encoded_len() + 8).sum::<usize>() <= STORE_BATCH_BYTES_MAX);
        }
        assert_eq!(split.concat(), fat);
    }
}
