//! The receive path: a burst of envelopes of one conversation is decrypted in one MLS batch
//! and committed with the plaintexts in one transaction (one fsync per burst).

use std::collections::BTreeMap;

use cairn_mls::{ConversationId, Delivered, Dropped, Received};
use cairn_proto::envelope::unpad;
use cairn_proto::{Envelope, Id, Message, Topic};

use super::erase::KIND_REDACT;
use super::receipts::receipt_ids;
use super::send::{KIND_RECEIPT, KIND_TEXT, header_aad};
use super::{Engine, Io, message_view};
use crate::core::{Input, Unreadable};
use crate::db::Accepted;
use crate::model::StreamEvent;

/// An envelope the mesh delivered (durable in the local history).
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Its id.
    pub id: Id,
    /// The envelope.
    pub envelope: Envelope,
    /// An ancestor could not be found.
    pub after_gap: bool,
}

/// What one envelope of a batch became.
enum Outcome {
    /// Readable: the row to store, and the MLS epoch it was sent in.
    Accept(Box<Accepted>, u64),
    Hold(Unreadable),
    Ignore,
}

impl Engine {
    /// Reads a burst of delivered envelopes (any topics).
    pub fn receive(&mut self, batch: Vec<Arrival>, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        let inbox = cairn_mls::inbox_topic(&self.keys.device);
        let convs: BTreeMap<Topic, ConversationId> =
            self.mls.conversations().into_iter().map(|c| (c.topic(), c)).collect();
        let receipts: BTreeMap<Topic, ConversationId> =
            self.mls.conversations().into_iter().map(|c| (self.own_receipt_topic(&c), c)).collect();
        let mut by_conv: BTreeMap<ConversationId, Vec<Arrival>> = BTreeMap::new();
        for a in batch {
            let topic = a.envelope.header.topic;
            if topic == inbox {
                self.welcome(&a.envelope, seq, now_ms);
            } else if let Some(conv) = receipts.get(&topic) {
                self.receipt_arrived(*conv, a.id, &a.envelope, now_ms);
            } else if let Some(conv) = convs.get(&topic) {
                by_conv.entry(*conv).or_default().push(a);
            }
        }
        for (conv, arrivals) in by_conv {
            self.receive_conv(conv, arrivals, seq, now_ms);
        }
    }

    /// Opens envelopes of one conversation: one MLS batch, one transaction.
    pub(super) fn receive_conv(
        &mut self,
        conv: ConversationId,
        arrivals: Vec<Arrival>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) {
        let mut fresh: Vec<Arrival> = Vec::with_capacity(arrivals.len());
        // Duplicates are told by their plaintext row's presence (one read for the burst); a
        // plaintext is opened only for a message read before that the chain lacks.
        let ids: Vec<Id> = arrivals.iter().map(|a| a.id).collect();
        let present = self.db.plain_present(&ids).unwrap_or_else(|_| vec![true; ids.len()]);
        for (a, present) in arrivals.into_iter().zip(present) {
            if present && self.core.knows(&conv, &a.id) {
                continue; // read before and in the chain
            }
            let opened = if present { self.db.plain(&a.id) } else { Ok(None) };
            match opened {
                // Read before, but the chain lacks it (the local history lost its lazy tail in
                // a crash and the mesh brought it again): it goes back into the chain.
                Ok(Some(bytes)) => self.known(conv, a.id, &bytes, now_ms),
                // Denied by the policy before: its text is gone, its place in the chain stays.
                _ if self.policy_denied_known(conv, &a, now_ms) => {}
                _ => fresh.push(a),
            }
        }
        if fresh.is_empty() {
            return;
        }
        let mut inputs: Vec<(Vec<u8>, [u8; 32])> = Vec::with_capacity(fresh.len());
        let mut openable = Vec::with_capacity(fresh.len());
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(fresh.len());
        for (i, a) in fresh.iter().enumerate() {
            let h = &a.envelope.header;
            match a.envelope.payload.as_deref().map(unpad) {
                Some(Ok(ct)) => {
                    inputs.push((ct.to_vec(), header_aad(&h.topic, h.timestamp_ms, h.ttl_secs, &h.parents)));
                    openable.push(i);
                    outcomes.push(Outcome::Ignore);
                }
                _ => outcomes.push(Outcome::Hold(Unreadable::Junk)),
            }
        }
        let results = self.mls_receive_many(&conv, &inputs);
        for (i, r) in openable.into_iter().zip(results) {
            outcomes[i] = match r {
                Ok(Received::Message(d)) => self.check(conv, &fresh[i], d),
                Ok(Received::Buffered)
                | Ok(Received::Dropped(Dropped::BufferFull))
                | Ok(Received::Dropped(Dropped::TooFarAhead)) => Outcome::Hold(Unreadable::FutureEpoch),
                Ok(Received::Dropped(Dropped::TooOld)) => Outcome::Hold(Unreadable::TooOld),
                // Re-wrapped in another header by a relay: junk (the genuine one still reads).
                Ok(Received::Dropped(Dropped::AadMismatch)) => Outcome::Hold(Unreadable::Junk),
                // Duplicate or own: read already.
                Ok(Received::Dropped(_)) => Outcome::Ignore,
                Err(e) => {
                    tracing::debug!("message {} does not open: {e}", fresh[i].id.short());
                    Outcome::Hold(Unreadable::Junk)
                }
            };
        }
        self.settle(conv, &fresh, outcomes, seq, now_ms);
    }

    /// Checks the inner message against the MLS sender and the envelope header.
    fn check(&self, conv: ConversationId, a: &Arrival, d: Delivered) -> Outcome {
        let Ok(m) = Message::decode(&d.body, &self.cfg.limits) else {
            tracing::warn!("message {} has a malformed inner message", a.id.short());
            return Outcome::Hold(Unreadable::Junk);
        };
        // `d.sender` is the MLS leaf's certificate, verified when the leaf joined: the inner
        // message must carry that exact certificate, so only its own signature is checked here
        // (one Ed25519 verification per message instead of two).
        if m.sender != d.sender
            || m.verify_signature_only().is_err()
            || m.header_mismatch(&a.envelope.header).is_some()
        {
            tracing::warn!("message {} refused: inner signature, sender or header mismatch", a.id.short());
            return Outcome::Hold(Unreadable::Junk);
        }
        let text = m.body.first() == Some(&KIND_TEXT);
        let epoch = d.epoch;
        Outcome::Accept(
            Box::new(Accepted {
                conv: conv.0,
                id: a.id,
                inner: m,
                text,
                after_gap: a.after_gap,
                hidden: false,
            }),
            epoch,
        )
    }

    /// Commits the accepted rows with the MLS state, then tells the core and the listeners.
    fn settle(
        &mut self,
        conv: ConversationId,
        fresh: &[Arrival],
        outcomes: Vec<Outcome>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) {
        let mut rows = Vec::new();
        let mut epochs = Vec::new();
        let mut held = Vec::new();
        for (a, o) in fresh.iter().zip(outcomes) {
            match o {
                Outcome::Accept(row, epoch) => {
                    rows.push(*row);
                    epochs.push(epoch);
                }
                Outcome::Hold(why) => held.push((a, why)),
                Outcome::Ignore => {}
            }
        }
        // The policy judges the text messages before they are stored (its state and verdicts
        // commit with them); the ones it does not show (yet) are kept out of the tail.
        self.policy_judge(conv, &mut rows, &epochs, now_ms);
        let seqs = match self.commit_rows(&rows, &[]) {
            Ok(s) => s,
            Err(e) => {
                // Nothing was stored, the MLS state was reloaded: the envelopes stay unread in
                // the local history and are read again at the next start.
                tracing::warn!("cannot store {} messages: {e}", rows.len());
                return;
            }
        };
        let mut future = false;
        for (a, why) in held {
            future |= why == Unreadable::FutureEpoch;
            let parents = a.envelope.header.parents.clone();
            let fx = self.core.handle(Input::Unreadable { conv, id: a.id, parents, why }, now_ms);
            self.apply_local(fx);
        }
        for ((row, seq_no), epoch) in rows.into_iter().zip(seqs).zip(epochs) {
            self.accepted(conv, row, seq_no, epoch, now_ms);
        }
        self.policy_after_commit(now_ms);
        if future {
            // A commit is sequenced that this device has not applied yet.
            seq.expect_more(&conv.topic());
            self.sync(&conv, seq, now_ms);
        }
    }

    /// Tells the core and the listeners about one stored message.
    fn accepted(&mut self, conv: ConversationId, row: Accepted, seq_no: u64, epoch: u64, now_ms: u64) {
        let m = &row.inner;
        let from = m.sender.account;
        let device = m.sender.device;
        let parents = m.parents.clone();
        let fx = self.core.handle(
            Input::Accepted { conv, id: row.id, parents, from, device, epoch, text: row.text },
            now_ms,
        );
        self.apply_local(fx);
        match m.body.first() {
            Some(&KIND_TEXT) => {
                // Hidden by the policy (held, denied, or waiting for an earlier message): no
                // place in the tail, nothing shown.
                if !row.hidden {
                    let mut view = message_view(&conv, seq_no, &row.id, m, row.after_gap);
                    self.policy_decorate(&conv, &mut view);
                    self.io.push(Io::Stream(StreamEvent::Message(view)));
                }
                self.redaction_waiting(conv, row.id, from);
            }
            Some(&KIND_REDACT) => {
                let _ = self.redaction_arrived(conv, from, row.id, &m.body, epoch);
            }
            Some(&KIND_RECEIPT) => {
                let ids = receipt_ids(&m.body[1..]);
                ids.iter().for_each(|id| self.track_delivery(id));
                let fx = self.core.handle(Input::Receipt { from, ids }, now_ms);
                self.apply_local(fx);
            }
            _ => {}
        }
    }

    /// Buffered messages became readable during a sync: find their held envelopes, and
    /// commit them with the sync's MLS writes in one transaction.
    pub(super) fn buffered_readable(&mut self, conv: ConversationId, readable: Vec<Delivered>, now_ms: u64) {
        if readable.is_empty() {
            // Only the sync's own MLS writes to commit: no held envelope to look up.
            if let Err(e) = self.commit_rows(&[], &[]) {
                tracing::warn!("cannot store the sync of {}: {e}", hex::encode(conv.0));
            }
            return;
        }
        let held = self.core.held_ids(&conv);
        let mut envs: Vec<(Id, Envelope)> =
            held.iter().filter_map(|id| self.history.get(id).ok().flatten().map(|e| (*id, e))).collect();
        let mut rows = Vec::new();
        let mut epochs = Vec::new();
        // The MLS bytes each held envelope carries, by hash: a released message names the bytes
        // it was decrypted from (two concurrent messages may share topic, timestamp and
        // parents, so the header alone could pair a plaintext with the other's envelope).
        let wire = |e: &Envelope| -> Option<[u8; 32]> {
            let ct = e.payload.as_deref().map(unpad)?.ok()?;
            Some(*blake3::hash(ct).as_bytes())
        };
        for d in readable {
            let Ok(m) = Message::decode(&d.body, &self.cfg.limits) else { continue };
            let found = match &d.wire {
                Some(h) => envs.iter().position(|(_, e)| wire(e) == Some(**h)),
                None => envs.iter().position(|(_, e)| m.header_mismatch(&e.header).is_none()),
            };
            let Some(pos) = found else {
                continue;
            };
            let (id, envelope) = envs.swap_remove(pos);
            if let Outcome::Accept(row, epoch) =
                self.check(conv, &Arrival { id, envelope, after_gap: false }, d)
            {
                rows.push(*row);
                epochs.push(epoch);
            }
        }
        self.policy_judge(conv, &mut rows, &epochs, now_ms);
        match self.commit_rows(&rows, &[]) {
            Ok(seqs) => {
                for ((row, seq_no), epoch) in rows.into_iter().zip(seqs).zip(epochs) {
                    self.accepted(conv, row, seq_no, epoch, now_ms);
                }
                self.policy_after_commit(now_ms);
            }
            Err(e) => tracing::warn!("cannot store {} buffered messages: {e}", rows.len()),
        }
    }

    /// Held envelopes of a new epoch: try them again.
    pub(super) fn reopen(&mut self, conv: ConversationId, ids: &[Id], now_ms: u64) {
        let arrivals: Vec<Arrival> = ids
            .iter()
            .filter_map(|id| self.history.get(id).ok().flatten().map(|envelope| (id, envelope)))
            .map(|(id, envelope)| Arrival { id: *id, envelope, after_gap: false })
            .collect();
        if !arrivals.is_empty() {
            let mut none = NoSequencer;
            self.receive_conv(conv, arrivals, &mut none, now_ms);
        }
    }

    /// An envelope read before this start: back into the chain.
    pub(super) fn known(&mut self, conv: ConversationId, id: Id, plain: &[u8], now_ms: u64) {
        let Ok(m) = Message::decode(plain, &self.cfg.limits) else { return };
        let input = if m.sender.account == self.keys.account && m.sender.device == self.keys.device {
            Input::Sent { conv, id, parents: m.parents.clone(), text: false }
        } else {
            let (from, device) = (m.sender.account, m.sender.device);
            Input::Accepted { conv, id, parents: m.parents.clone(), from, device, epoch: 0, text: false }
        };
        let fx = self.core.handle(input, now_ms);
        self.apply_local(fx);
    }

    /// A Welcome on this device's inbox.
    fn welcome(&mut self, env: &Envelope, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        let Some(Ok(plain)) = env.payload.as_deref().map(unpad) else { return };
        let bundle = if plain.first() == Some(&cairn_mls::WELCOME_CHUNK_VERSION) {
            match self.welcome_chunks.offer(plain, now_ms) {
                Ok(Some(bundle)) => bundle,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("Welcome chunk refused: {e}");
                    return;
                }
            }
        } else {
            plain.to_vec()
        };
        match self.consider_welcome(&bundle, seq, now_ms) {
            super::invites::WelcomeFate::Dropped(why) => tracing::debug!("welcome not joined: {why}"),
            super::invites::WelcomeFate::Requested(_) | super::invites::WelcomeFate::Joined(_) => {}
        }
    }
}

impl Engine {
    /// Decrypts a batch (deferred: committed by [`Engine::commit_rows`]). Each ciphertext
    /// comes with the authenticated data its envelope header requires.
    fn mls_receive_many(
        &mut self,
        conv: &ConversationId,
        inputs: &[(Vec<u8>, [u8; 32])],
    ) -> Vec<Result<Received, cairn_mls::MlsError>> {
        let refs: Vec<(&[u8], &[u8])> = inputs.iter().map(|(c, a)| (c.as_slice(), a.as_slice())).collect();
        self.mls.receive_many(conv, &refs)
    }
}

/// A sequencer for paths that must not reach the ledger (re-reading held envelopes, a bot's
/// reply: a text send needs none).
pub(super) struct NoSequencer;

impl cairn_proto::CommitSequencer for NoSequencer {
    fn submit(
        &mut self,
        _: Topic,
        _: u64,
        _: Vec<u8>,
        _: cairn_proto::sequencer::TopicKeys,
    ) -> Result<u64, cairn_proto::SequencerError> {
        Err(cairn_proto::SequencerError::Unavailable("no ledger on this path".into()))
    }

    fn fetch(
        &self,
        _: &Topic,
        _: u64,
        _: usize,
    ) -> Result<Vec<cairn_proto::Sequenced>, cairn_proto::SequencerError> {
        Ok(Vec::new())
    }
}
