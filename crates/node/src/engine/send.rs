//! The send path: sign the inner message, encrypt it bound to its envelope header, mine,
//! record it (MLS state, plaintext, outbox: one transaction), then hand it to the shell.

use std::collections::HashMap;

use cairn_mls::ConversationId;
use cairn_proto::codec::Writer;
use cairn_proto::envelope::{erase_lock, pad};
use cairn_proto::{Envelope, Id, Message, Topic};

use super::{Engine, Io, message_view, mls_err};
use crate::core::Input;
use crate::error::NodeError;
use crate::idempotency::IdempotencyKey;
use crate::model::{SendResult, StreamEvent};

/// Kind byte of a text message body.
pub const KIND_TEXT: u8 = 1;
/// Kind byte of a delivery receipt body.
pub const KIND_RECEIPT: u8 = 2;
/// Longest text message, bytes.
pub const TEXT_BYTES_MAX: usize = 64 * 1024;

/// The MLS authenticated data of a conversation envelope: a domain-separated hash of the
/// header fields that do not depend on the ciphertext (topic, timestamp, ttl, parents). A
/// relay that re-wraps a ciphertext in another header is refused before any key is used.
pub fn header_aad(topic: &Topic, timestamp_ms: u64, ttl_secs: u32, parents: &[Id]) -> [u8; 32] {
    let mut w = Writer::with_capacity(48 + 32 * parents.len());
    w.raw(&topic.0);
    w.u64(timestamp_ms);
    w.u32(ttl_secs);
    w.u16(parents.len() as u16);
    for p in parents {
        w.raw(&p.0);
    }
    blake3::derive_key("cairn 2026-12 envelope header aad v1", &w.finish())
}

/// The secret of an own envelope's erase lock: derived from the device key and what the
/// signed inner message repeats of the header (topic, time, parents), so nothing needs keeping
/// and only the sending device can compute it again.
pub(super) fn erase_secret(device_key: &ed25519_dalek::SigningKey, m: &Message) -> [u8; 32] {
    let mut w = Writer::with_capacity(32 + 32 + 8 + 2 + 32 * m.parents.len());
    w.raw(&device_key.to_bytes());
    w.raw(&m.topic.0);
    w.u64(m.timestamp_ms);
    w.u16(m.parents.len() as u16);
    for p in &m.parents {
        w.raw(&p.0);
    }
    blake3::derive_key("cairn 2026-12 envelope erase secret v1", &w.finish())
}

/// One message of a batch, ready to commit.
pub(super) struct Prepared {
    conv: ConversationId,
    pub(super) id: Id,
    inner: Message,
    env: Envelope,
    /// A text message (listed in the tail, its delivery tracked).
    text: bool,
}

/// Text messages one batch sends at most (one durable commit for all of them).
pub const SEND_BATCH_MAX: usize = 64;

impl Engine {
    /// Sends a text message. The caller has checked membership of the conversation id.
    pub fn send_text(
        &mut self,
        conv: ConversationId,
        text: &str,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<SendResult, NodeError> {
        let mut out = self.send_texts(vec![(conv, text.to_owned(), None)], seq, now_ms);
        out.pop().unwrap_or_else(|| Err(NodeError::Internal("no result".into())))
    }

    /// Sends text messages queued together: each is signed, encrypted and mined, then all of
    /// them (MLS state, plaintexts, outbox, idempotency keys) commit in one durable
    /// transaction, one fsync. A message's parents are the chain's heads, or the previous
    /// message of the batch in the same conversation. A message whose idempotency key already
    /// sent one in its conversation (earlier, or earlier in this batch) is not sent again: its
    /// result is that message's. One result per message, in order.
    pub fn send_texts(
        &mut self,
        items: Vec<(ConversationId, String, Option<IdempotencyKey>)>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Vec<Result<SendResult, NodeError>> {
        // No ledger round trip: the block follower applies new commits as they finalize.
        let _ = seq;
        let n = items.len();
        let mut answered: Vec<Option<Result<SendResult, NodeError>>> = vec![None; n];
        let mut same_as: Vec<Option<usize>> = vec![None; n];
        let mut in_batch: HashMap<(ConversationId, IdempotencyKey), usize> = HashMap::new();
        let mut last: HashMap<ConversationId, Id> = HashMap::new();
        let mut prepared: Vec<Option<(Prepared, Option<IdempotencyKey>)>> = Vec::with_capacity(n);
        for (i, (conv, text, key)) in items.into_iter().enumerate() {
            if let Some(k) = key {
                match self.db.idempotent_send(&conv.0, &k) {
                    Ok(Some(id)) => answered[i] = Some(Ok(self.already_sent(&id))),
                    Ok(None) => match in_batch.get(&(conv, k)) {
                        Some(&j) => same_as[i] = Some(j),
                        None => {
                            in_batch.insert((conv, k), i);
                        }
                    },
                    Err(e) => answered[i] = Some(Err(e)),
                }
            }
            if answered[i].is_some() || same_as[i].is_some() {
                prepared.push(None);
                continue;
            }
            match self.prepare(conv, &text, &mut last, now_ms) {
                Ok(p) => prepared.push(Some((p, key))),
                Err(e) => {
                    answered[i] = Some(Err(e));
                    prepared.push(None);
                }
            }
        }
        let ready: Vec<&(Prepared, Option<IdempotencyKey>)> = prepared.iter().flatten().collect();
        let rows: Vec<crate::db::Accepted> = ready
            .iter()
            .map(|(p, _)| crate::db::Accepted {
                conv: p.conv.0,
                id: p.id,
                inner: p.inner.clone(),
                text: p.text,
                after_gap: false,
                hidden: false,
            })
            .collect();
        let mut rows = rows;
        // This device judges its own text messages too (same policy, same order: its own
        // sequence), so its history matches every other member's.
        for r in rows.iter_mut() {
            let conv = ConversationId(r.conv);
            let epoch = self.mls.epoch(&conv).unwrap_or(0);
            self.policy_judge(conv, std::slice::from_mut(r), &[epoch], now_ms);
        }
        let keys: Vec<(ConversationId, IdempotencyKey, Id)> =
            ready.iter().filter_map(|(p, k)| k.map(|k| (p.conv, k, p.id))).collect();
        let envs: Vec<Envelope> = ready.iter().map(|(p, _)| p.env.clone()).collect();
        match self.commit_keyed(&rows, &envs, &keys) {
            Ok(seqs) => {
                let mut seqs = seqs.into_iter();
                let mut hidden = rows.iter().map(|r| r.hidden);
                for (i, p) in prepared.into_iter().enumerate() {
                    if let Some((p, _)) = p {
                        let shown = !hidden.next().unwrap_or(false);
                        answered[i] = Some(Ok(self.sent(p, seqs.next().unwrap_or(0), shown, now_ms)));
                    }
                }
                self.policy_after_commit(now_ms);
            }
            Err(e) => {
                for (i, p) in prepared.iter().enumerate() {
                    if p.is_some() {
                        answered[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for i in 0..n {
            if let Some(j) = same_as[i] {
                answered[i] = answered[j].clone();
            }
        }
        answered
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NodeError::Internal("no result".into()))))
            .collect()
    }

    /// The result of a message an idempotency key sent before.
    fn already_sent(&self, id: &Id) -> SendResult {
        SendResult { id: id.to_hex(), delivery: self.core.delivery(id).unwrap_or_default() }
    }

    /// Sends one control message (not text: not in the tail, delivery not tracked), with its
    /// own durable commit.
    pub(super) fn send_control(
        &mut self,
        conv: ConversationId,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<SendResult, NodeError> {
        let p = self.prepare_body(conv, body, false, &mut HashMap::new(), now_ms)?;
        let rows = [crate::db::Accepted {
            conv: conv.0,
            id: p.id,
            inner: p.inner.clone(),
            text: false,
            after_gap: false,
            hidden: false,
        }];
        let seqs = self.commit_rows(&rows, std::slice::from_ref(&p.env))?;
        Ok(self.sent(p, seqs.first().copied().unwrap_or(0), true, now_ms))
    }

    /// After the commit: the chain, delivery tracking, the publication and the stream event
    /// (not for a message the policy does not show).
    fn sent(&mut self, p: Prepared, seq_no: u64, shown: bool, now_ms: u64) -> SendResult {
        let parents = p.inner.parents.clone();
        let fx = self.core.handle(Input::Sent { conv: p.conv, id: p.id, parents, text: p.text }, now_ms);
        self.apply_local(fx);
        self.io.push(Io::Publish(Box::new(p.env)));
        if p.text && shown {
            let mut view = message_view(&p.conv, seq_no, &p.id, &p.inner, false);
            self.policy_decorate(&p.conv, &mut view);
            self.io.push(Io::Stream(StreamEvent::Message(view)));
        }
        SendResult { id: p.id.to_hex(), delivery: self.core.delivery(&p.id).unwrap_or_default() }
    }

    /// Signs, encrypts (MLS writes deferred to the batch's commit) and mines one text message.
    fn prepare(
        &mut self,
        conv: ConversationId,
        text: &str,
        last: &mut HashMap<ConversationId, Id>,
        now_ms: u64,
    ) -> Result<Prepared, NodeError> {
        if text.len() > TEXT_BYTES_MAX {
            return Err(NodeError::BadRequest(format!(
                "text is {} bytes; the limit is {TEXT_BYTES_MAX}",
                text.len()
            )));
        }
        let mut body = Vec::with_capacity(text.len() + 1);
        body.push(KIND_TEXT);
        body.extend_from_slice(text.as_bytes());
        self.prepare_body(conv, body, true, last, now_ms)
    }

    /// Signs, encrypts, locks (see [`erase_secret`]) and mines one message body.
    fn prepare_body(
        &mut self,
        conv: ConversationId,
        body: Vec<u8>,
        text: bool,
        last: &mut HashMap<ConversationId, Id>,
        now_ms: u64,
    ) -> Result<Prepared, NodeError> {
        if self.io.len() >= super::IO_QUEUE_MAX {
            return Err(NodeError::Busy);
        }
        if !self.mls.is_active(&conv).map_err(mls_err)? {
            return Err(NodeError::NotMember);
        }
        let parents = match last.get(&conv) {
            Some(prev) => vec![*prev],
            None => self.core.parents_for(&conv),
        };
        let topic = conv.topic();
        // A text message takes the device's next sequence number of this epoch (committed
        // with the send; see `policy_run`).
        let device_seq = if text { Some(self.next_device_seq(&conv)?) } else { None };
        let k = &self.keys;
        let inner = Message::sign_seq(&k.device_key, k.cert, topic, now_ms, device_seq, parents, body);
        // The signed message holds the parents in canonical (sorted) order, as the header will.
        let parents = inner.parents.clone();
        let aad = header_aad(&topic, now_ms, self.cfg.ttl_secs, &parents);
        let ct = self.mls_send(&conv, &inner.encode(), &aad)?;
        let padded = pad(&ct, &self.cfg.limits).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let env = Envelope::new(topic, now_ms, self.cfg.ttl_secs, parents, padded);
        let lock = erase_lock(&erase_secret(&self.keys.device_key, &inner));
        let mut env = env.with_erase_lock(lock);
        // At the topic's load price when the net learned one (its ratchet step commits with
        // the batch, so a failure is a skipped generation, harmless).
        self.mine(&mut env)?;
        let id = env.id();
        last.insert(conv, id);
        if let Some(n) = device_seq {
            self.device_seq_used(&conv, n);
        }
        Ok(Prepared { conv, id, inner, env, text })
    }

    /// Commits the MLS state changes made since the last commit together with these rows
    /// (and an outbox entry) in one transaction.
    pub(super) fn commit_rows(
        &mut self,
        rows: &[crate::db::Accepted],
        outbox: &[Envelope],
    ) -> Result<Vec<u64>, NodeError> {
        self.commit_keyed(rows, outbox, &[])
    }

    /// [`Self::commit_rows`], recording the idempotency keys of the sends among the rows.
    fn commit_keyed(
        &mut self,
        rows: &[crate::db::Accepted],
        outbox: &[Envelope],
        keys: &[(ConversationId, IdempotencyKey, Id)],
    ) -> Result<Vec<u64>, NodeError> {
        if rows.is_empty() && outbox.is_empty() && !self.mls.has_pending_flush() {
            return Ok(Vec::new());
        }
        let r = self.write_rows(rows, outbox, keys);
        match &r {
            Ok(_) => self.cursor_dirty.extend(rows.iter().map(|row| ConversationId(row.conv))),
            Err(_) => self.discard(),
        }
        r
    }

    fn write_rows(
        &mut self,
        rows: &[crate::db::Accepted],
        outbox: &[Envelope],
        keys: &[(ConversationId, IdempotencyKey, Id)],
    ) -> Result<Vec<u64>, NodeError> {
        // A send is acknowledged to its caller: durable now. What a receive writes (ratchet
        // state, plaintexts) can be recomputed from the local history, which the mesh made
        // durable before delivering: it commits without its own fsync and becomes durable
        // with the next durable commit (a send, a commit, or the tick's flush). A crash in
        // between rolls MLS and plaintexts back together, and the unread envelopes are read
        // again at start.
        let lazy = outbox.is_empty();
        // A durable commit also makes the lazy ones before it durable, so the local history
        // they read must be durable first (the hook of `NodeDb::begin`: an fsync of the
        // history when it has deferred writes). With no lazy commit since the last durable
        // one, nothing to be made durable here was read from the local history (a send's rows
        // come from its caller; receipts and envelopes received since changed memory only),
        // and the send skips that fsync.
        let wtx = if lazy {
            self.db.begin_lazy()?
        } else if self.lazy_commits == 0 {
            self.db.begin_unhooked()?
        } else {
            self.db.begin()?
        };
        self.mls.flush_into(&wtx).map_err(mls_err)?;
        let seqs = self.db.accept_in(&wtx, rows)?;
        // The policy's state, verdicts and own sequence numbers: after the rows (a denied
        // row's plaintext is deleted again).
        self.policy_flush_into(&wtx)?;
        self.record_sends_in(&wtx, rows, outbox)?;
        for env in outbox {
            self.db.outbox_put_in(&wtx, env)?;
        }
        for (conv, key, id) in keys {
            self.db.idempotent_put_in(&wtx, &conv.0, key, id)?;
        }
        self.commit_with_acked(wtx)?;
        self.mls.flush_committed().map_err(mls_err)?;
        self.lazy_commits = if lazy { self.lazy_commits + 1 } else { 0 };
        Ok(seqs)
    }

    /// Makes every lazy commit durable (one fsync), if there is any.
    pub fn make_durable(&mut self) -> Result<(), NodeError> {
        self.flush_deliveries()?;
        // The replay cursors move as often as what they rely on becomes durable (every
        // `DURABLE_EVERY_MS` by the tick, and at a stop), not at every tick.
        if let Err(e) = self.advance_replay_cursors() {
            tracing::warn!("replay cursors not moved: {e}");
        }
        if self.lazy_commits == 0 && self.outbox_acked.is_empty() {
            return Ok(());
        }
        let wtx = self.db.begin()?;
        self.commit_with_acked(wtx)?;
        self.lazy_commits = 0;
        Ok(())
    }

    /// Removes the acknowledged envelopes from the outbox, in one transaction without an fsync
    /// (if a crash loses it, they are pushed once more).
    pub(super) fn remove_acked(&mut self) -> Result<(), NodeError> {
        if self.outbox_acked.is_empty() {
            return Ok(());
        }
        let wtx = self.db.begin_lazy()?;
        self.commit_with_acked(wtx)
    }

    /// Removes the acknowledged envelopes from the outbox inside `wtx` and commits it; if a
    /// removal or the commit fails they stay pending (removed by a later commit).
    fn commit_with_acked(&mut self, wtx: redb::WriteTransaction) -> Result<(), NodeError> {
        let acked = std::mem::take(&mut self.outbox_acked);
        let done = acked
            .iter()
            .try_for_each(|id| self.db.outbox_remove_in(&wtx, id).map(|_| ()))
            .and_then(|()| wtx.commit().map_err(|e| NodeError::Storage(e.to_string())));
        if done.is_err() {
            self.outbox_acked.extend(acked);
        }
        done
    }

    /// Drops MLS writes not committed (the state is the last committed one).
    pub(super) fn discard(&mut self) {
        self.policy_discard();
        if let Err(e) = self.mls.discard_pending() {
            tracing::error!("MLS state could not be reloaded: {e}");
        }
    }

    /// Encrypts one message (deferred: committed by [`Engine::commit_rows`]).
    fn mls_send(&mut self, conv: &ConversationId, body: &[u8], aad: &[u8; 32]) -> Result<Vec<u8>, NodeError> {
        self.mls.send(conv, body, aad).map_err(mls_err)
    }
}
