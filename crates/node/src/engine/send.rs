//! The send path: sign the inner message, encrypt it bound to its envelope header, mine,
//! record it (MLS state, plaintext, outbox: one transaction), then hand it to the shell.

use cairn_mls::ConversationId;
use cairn_proto::codec::Writer;
use cairn_proto::envelope::pad;
use cairn_proto::{Envelope, Id, Message, Topic, pow};

use super::{Engine, Io, message_view, mls_err};
use crate::core::Input;
use crate::error::NodeError;
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

impl Engine {
    /// Sends a text message. The caller has checked membership of the conversation id.
    pub fn send_text(
        &mut self,
        conv: ConversationId,
        text: &str,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<SendResult, NodeError> {
        if text.len() > TEXT_BYTES_MAX {
            return Err(NodeError::BadRequest(format!(
                "text is {} bytes; the limit is {TEXT_BYTES_MAX}",
                text.len()
            )));
        }
        if self.io.len() >= super::IO_QUEUE_MAX {
            return Err(NodeError::Busy);
        }
        // No ledger round trip: the block follower applies new commits as they finalize.
        let _ = seq;
        if !self.mls.is_active(&conv).map_err(mls_err)? {
            return Err(NodeError::NotMember);
        }
        let mut body = Vec::with_capacity(text.len() + 1);
        body.push(KIND_TEXT);
        body.extend_from_slice(text.as_bytes());
        let (id, inner) = self.send_inner(conv, body, now_ms)?;
        let delivery = self.core.delivery(&id).unwrap_or_default();
        let seq_no = self.db.count(&conv.0)?;
        let view = message_view(&conv, seq_no, &id, &inner, false);
        self.io.push(Io::Stream(StreamEvent::Message(view)));
        Ok(SendResult { id: id.to_hex(), delivery })
    }

    /// Signs, encrypts, mines and records one inner message; queues its publication.
    fn send_inner(
        &mut self,
        conv: ConversationId,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<(Id, Message), NodeError> {
        let topic = conv.topic();
        let parents = self.core.parents_for(&conv);
        let k = &self.keys;
        let inner = Message::sign(&k.device_key, k.cert, topic, now_ms, parents, body);
        // The signed message holds the parents in canonical (sorted) order, as the header will.
        let parents = inner.parents.clone();
        let aad = header_aad(&topic, now_ms, self.cfg.ttl_secs, &parents);
        let ct = self.mls_send(&conv, &inner.encode(), &aad)?;
        let padded = pad(&ct, &self.cfg.limits).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let mut env = Envelope::new(topic, now_ms, self.cfg.ttl_secs, parents.clone(), padded);
        if pow::mine(&mut env.header, self.cfg.difficulty, self.cfg.mine_attempts_max).is_none() {
            self.discard();
            return Err(NodeError::Internal("proof of work not found within its bound".into()));
        }
        let id = env.id();
        let text = inner.body.first() == Some(&KIND_TEXT);
        // Durable before it leaves: MLS state, plaintext and outbox in one transaction.
        let row = crate::db::Accepted { conv: conv.0, id, inner: inner.clone(), text, after_gap: false };
        self.commit_rows(&[row], Some(&env))?;
        let fx = self.core.handle(Input::Sent { conv, id, parents, text }, now_ms);
        self.apply_local(fx);
        self.io.push(Io::Publish(Box::new(env)));
        Ok((id, inner))
    }

    /// Commits the MLS state changes made since the last commit together with these rows
    /// (and an outbox entry) in one transaction.
    pub(super) fn commit_rows(
        &mut self,
        rows: &[crate::db::Accepted],
        outbox: Option<&Envelope>,
    ) -> Result<Vec<u64>, NodeError> {
        if rows.is_empty() && outbox.is_none() && !self.mls.has_pending_flush() {
            return Ok(Vec::new());
        }
        let r = self.write_rows(rows, outbox);
        if r.is_err() {
            self.discard();
        }
        r
    }

    fn write_rows(
        &mut self,
        rows: &[crate::db::Accepted],
        outbox: Option<&Envelope>,
    ) -> Result<Vec<u64>, NodeError> {
        // A send is acknowledged to its caller: durable now. What a receive writes (ratchet
        // state, plaintexts) can be recomputed from the local history, which the mesh made
        // durable before delivering: it commits without its own fsync and becomes durable
        // with the next durable commit (a send, a commit, or the tick's flush). A crash in
        // between rolls MLS and plaintexts back together, and the unread envelopes are read
        // again at start.
        let lazy = outbox.is_none();
        let wtx = if lazy { self.db.begin_lazy()? } else { self.db.begin()? };
        self.mls.flush_into(&wtx).map_err(mls_err)?;
        let seqs = self.db.accept_in(&wtx, rows)?;
        if let Some(env) = outbox {
            self.db.outbox_put_in(&wtx, env)?;
        }
        wtx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
        self.mls.flush_committed().map_err(mls_err)?;
        self.lazy_commits = if lazy { self.lazy_commits + 1 } else { 0 };
        Ok(seqs)
    }

    /// Makes every lazy commit durable (one fsync), if there is any.
    pub fn make_durable(&mut self) -> Result<(), NodeError> {
        if self.lazy_commits == 0 {
            return Ok(());
        }
        let wtx = self.db.begin()?;
        wtx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
        self.lazy_commits = 0;
        Ok(())
    }

    /// Drops MLS writes not committed (the state is the last committed one).
    pub(super) fn discard(&mut self) {
        if let Err(e) = self.mls.discard_pending() {
            tracing::error!("MLS state could not be reloaded: {e}");
        }
    }

    /// Encrypts one message (deferred: committed by [`Engine::commit_rows`]).
    fn mls_send(&mut self, conv: &ConversationId, body: &[u8], aad: &[u8; 32]) -> Result<Vec<u8>, NodeError> {
        self.mls.send(conv, body, aad).map_err(mls_err)
    }
}
