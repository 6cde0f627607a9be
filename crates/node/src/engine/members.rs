//! Membership changes: create, add, remove, leave, revoke. Each is an MLS commit ordered by
//! the sequencer; the key packages it needs were fetched by the shell beforehand (with a
//! deadline), so no commit waits for the mesh.

use cairn_mls::{ConversationId, VerifiedKeyPackage, WelcomeOut};
use cairn_proto::envelope::pad;
use cairn_proto::{AccountId, DeviceId, Envelope, pow};

use super::{Engine, Io, mls_err};
use crate::error::NodeError;

/// Lifetime of a Welcome envelope on store nodes, seconds (an invitee may be offline a while).
const WELCOME_TTL_SECS: u32 = 14 * 24 * 3600;

/// Adds per commit at most (a commit must fit the sequencer's handshake bound).
const ADDS_PER_COMMIT_MAX: usize = 128;

/// Where a membership change stands once the actor may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Sequenced and applied.
    Done,
    /// Submitted, not yet ordered within the sequencer's short wait: the commit stays pending
    /// and is merged when the order shows it (or rebuilt if other bytes took its slot).
    Pending,
    /// Not built: a change is built on the latest order, and it is being read (asked of the
    /// ledger worker). Make the change again once the read is there.
    Reading,
}

impl Engine {
    /// Creates a conversation and adds these devices.
    pub fn create(
        &mut self,
        packages: Vec<VerifiedKeyPackage>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<(ConversationId, Commit), NodeError> {
        let id = self.mls.create(now_ms).map_err(mls_err)?;
        self.io.push(Io::Subscribe(id.topic()));
        self.io.push(Io::Subscribe(self.own_receipt_topic(&id)));
        self.refresh(&id, now_ms);
        let state = self.add_chunks(id, packages, seq, now_ms)?;
        self.refresh(&id, now_ms);
        self.io.push(Io::Joined(id));
        Ok((id, state))
    }

    /// Adds devices in commits of at most [`ADDS_PER_COMMIT_MAX`], publishing each Welcome;
    /// stops at a pending one (the rest is added when it is settled).
    fn add_chunks(
        &mut self,
        id: ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Commit, NodeError> {
        for chunk in packages.chunks(ADDS_PER_COMMIT_MAX) {
            let r = self.mls.add(&id, chunk.to_vec(), seq, now_ms);
            match self.commit_state(&id, r)? {
                (Commit::Done, Some(o)) => {
                    if let Some(w) = &o.welcome {
                        self.publish_welcome(w, now_ms)?;
                    }
                }
                (Commit::Done, None) => {}
                (state @ (Commit::Pending | Commit::Reading), _) => return Ok(state),
            }
        }
        Ok(Commit::Done)
    }

    /// A commit's result: done, pending (submitted without an answer in time; kept), reading
    /// (the order it is built on is being read: nothing was built), or an error.
    pub(super) fn commit_state<T>(
        &self,
        id: &ConversationId,
        r: Result<Option<T>, cairn_mls::MlsError>,
    ) -> Result<(Commit, Option<T>), NodeError> {
        match r {
            Ok(v) => Ok((Commit::Done, v)),
            Err(cairn_mls::MlsError::Sequencer(cairn_proto::SequencerError::Unavailable(_))) => {
                if self.mls.has_pending_commit(id) {
                    Ok((Commit::Pending, None))
                } else {
                    Ok((Commit::Reading, None))
                }
            }
            Err(e) => Err(mls_err(e)),
        }
    }

    /// Whether a commit of this device waits for the order in `id`.
    pub fn has_pending_commit(&self, id: &ConversationId) -> bool {
        self.mls.has_pending_commit(id)
    }

    /// Whether an own commit of `id` was merged since the last call (and forgets it).
    pub fn take_own_merged(&mut self, id: &ConversationId) -> bool {
        self.own_merged.remove(id)
    }

    /// Settles a commit of this device left pending by a lost or refused answer (merged if
    /// sequenced, else resubmitted or dropped), so the next commit can be built.
    pub fn settle_commit(
        &mut self,
        id: &ConversationId,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) {
        self.sync(id, seq, now_ms);
        if !self.mls.has_pending_commit(id) {
            return;
        }
        match self.mls.retry_pending(id, seq) {
            Ok(Some(o)) => {
                self.own_merged.insert(*id);
                if let Some(w) = &o.welcome
                    && let Err(e) = self.publish_welcome(w, now_ms)
                {
                    tracing::warn!("Welcome of a settled commit not sent: {e}");
                }
                self.refresh(id, now_ms);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!("pending commit of {}: {e}", hex::encode(id.0)),
        }
    }

    /// Adds devices to a conversation (those already members are skipped).
    pub fn add(
        &mut self,
        id: ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Commit, NodeError> {
        self.settle_commit(&id, seq, now_ms);
        let members = self.mls.members(&id).map_err(mls_err)?;
        let packages: Vec<VerifiedKeyPackage> =
            packages.into_iter().filter(|p| !members.iter().any(|m| m.device == p.cert.device)).collect();
        let state = self.add_chunks(id, packages, seq, now_ms)?;
        self.refresh(&id, now_ms);
        Ok(state)
    }

    /// Member accounts of a conversation.
    pub fn member_accounts(&self, id: &ConversationId) -> Result<Vec<AccountId>, NodeError> {
        self.mls.member_accounts(id).map_err(mls_err)
    }

    /// Removes every device of `account`.
    pub fn remove(
        &mut self,
        id: ConversationId,
        account: AccountId,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Commit, NodeError> {
        self.settle_commit(&id, seq, now_ms);
        if !self.mls.member_accounts(&id).map_err(mls_err)?.contains(&account) {
            return Err(NodeError::NotFound(format!(
                "{} is not a member of this conversation",
                account.to_text()
            )));
        }
        let r = self.mls.remove_account(&id, account, seq, now_ms);
        let state = self.commit_state(&id, r);
        self.refresh(&id, now_ms);
        Ok(state?.0)
    }

    /// Leaves a conversation (another member commits the removal): `Done` once the leave
    /// proposal holds its place in the order (or this device is out already), `Pending` while
    /// it waits for the commit worker (kept, and offered again like a pending commit),
    /// `Reading` while the order it is built on is being read (nothing built yet).
    pub fn leave(
        &mut self,
        id: ConversationId,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Commit, NodeError> {
        self.settle_commit(&id, seq, now_ms);
        let r = self.mls.leave(&id, seq, now_ms).map(|()| None::<()>);
        let state = self.commit_state(&id, r);
        self.refresh(&id, now_ms);
        Ok(state?.0)
    }

    /// Forgets a conversation this device left (or was removed from): its data key is
    /// destroyed first (crypto-shredding: every copy of the database, earlier ones included,
    /// holds only sealed plaintexts nobody can open), then its MLS state and its rows go.
    pub fn forget(&mut self, id: ConversationId, now_ms: u64) -> Result<(), NodeError> {
        if !self.mls.conversations().contains(&id) {
            return Err(NodeError::UnknownConversation);
        }
        if self.mls.is_active(&id).map_err(mls_err)? {
            return Err(NodeError::Conflict(
                "leave the conversation first (`cairn chat leave`), then forget it".into(),
            ));
        }
        self.db.keyring().forget(&id.0)?;
        self.mls.forget(&id).map_err(mls_err)?;
        self.commit_rows(&[], &[])?;
        self.make_durable()?;
        let rows = self.db.purge_conversation(&id.0)?;
        self.db.forget_anchor_salt(&id.0)?;
        tracing::info!("forgot conversation {}: {rows} plaintexts deleted", hex::encode(id.0));
        self.core.forget(&id);
        self.cursor_dirty.remove(&id);
        self.io.push(Io::Forgotten(id));
        let _ = now_ms;
        Ok(())
    }

    /// Removes a revoked device from every conversation.
    pub fn revoke(&mut self, device: &DeviceId, seq: &mut dyn cairn_proto::CommitSequencer, now_ms: u64) {
        for (conv, r) in self.mls.revoke_device_everywhere(device, seq, now_ms) {
            if let Err(e) = r {
                tracing::warn!("could not remove the revoked device from {}: {e}", hex::encode(conv.0));
            }
            self.refresh(&conv, now_ms);
        }
    }

    /// Conversations a new device of this account still has to join.
    pub fn missing_device(&self, device: &DeviceId) -> Vec<ConversationId> {
        self.mls
            .conversations()
            .into_iter()
            .filter(|c| self.mls.is_active(c).unwrap_or(false))
            .filter(|c| !self.mls.members(c).unwrap_or_default().iter().any(|m| m.device == *device))
            .collect()
    }

    /// A fresh key-package batch, as a signed envelope ready to publish (key packages are
    /// public by MLS design: their owner's credential shows).
    pub fn key_package_envelope(
        &mut self,
        count: usize,
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<Envelope, NodeError> {
        let batch = self.mls.key_package_batch_at(count, true, now_ms).map_err(mls_err)?;
        let k = &self.keys;
        let topic = crate::shell::keypackages::key_package_topic(&k.device);
        let m = cairn_proto::Message::sign(&k.device_key, k.cert, topic, now_ms, vec![], batch.encode());
        let mut env =
            m.seal_plain(ttl_secs, &self.cfg.limits).map_err(|e| NodeError::Internal(e.to_string()))?;
        self.mine(&mut env)?;
        Ok(env)
    }

    /// Publishes a Welcome to each invitee's inbox. The envelope carries the sealed bundle
    /// only: no signature wrapper, so relays and store nodes see neither inviter nor members
    /// (the bundle is authenticated inside MLS). Persisted in the outbox until stored.
    pub(super) fn publish_welcome(&mut self, w: &WelcomeOut, now_ms: u64) -> Result<(), NodeError> {
        // A large group's Welcome (its sealed ratchet tree: ≈ 310 B per member) does not fit
        // one envelope: it travels in chunks, reassembled by the invitee.
        let max = cairn_mls::welcome_chunk_bytes_max(&self.cfg.limits);
        let chunks =
            cairn_mls::welcome_chunks(&w.bytes, max).map_err(|e| NodeError::Internal(e.to_string()))?;
        for (device, topic) in &w.recipients {
            let mut envs = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                let padded = pad(chunk, &self.cfg.limits).map_err(|e| NodeError::Internal(e.to_string()))?;
                let mut env = Envelope::new(*topic, now_ms, WELCOME_TTL_SECS, vec![], padded);
                self.mine(&mut env)?;
                envs.push(env);
            }
            let wtx = self.db.begin()?;
            for env in &envs {
                self.db.outbox_put_in(&wtx, env)?;
            }
            wtx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
            tracing::debug!("Welcome for {} queued ({} envelopes)", device.to_text(), envs.len());
            self.io.extend(envs.into_iter().map(|e| Io::Publish(Box::new(e))));
        }
        Ok(())
    }

    /// Mines `env` at its topic's price ([`Engine::work_difficulty`]); if that is not found
    /// within the attempt bound, at the configured difficulty (stores not under load take it).
    pub(super) fn mine(&self, env: &mut Envelope) -> Result<(), NodeError> {
        let max = self.cfg.mine_attempts_max;
        let d = self.work_difficulty(&env.header.topic);
        if pow::mine(&mut env.header, d, max).is_some() {
            return Ok(());
        }
        if d != self.cfg.difficulty && pow::mine(&mut env.header, self.cfg.difficulty, max).is_some() {
            tracing::warn!(
                "proof of work at {} base bits not found in {max} attempts: mined at the floor",
                d.base_bits
            );
            return Ok(());
        }
        Err(NodeError::Internal("proof of work not found within its bound".into()))
    }
}
