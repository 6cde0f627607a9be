//! Membership operations built on [`Client::commit`]: add, remove, leave, self-update, and a
//! device added to or revoked from every conversation of the account.

use cairn_proto::sequencer::{CommitSequencer, SequencerError};
use cairn_proto::{AccountId, DeviceId};
use openmls_traits::OpenMlsProvider as _;

use super::commit::{Change, CommitOutcome};
use super::error::op_err;
use super::state::{Meta, prune_past};
use super::{Client, ConversationId, MlsError, to_bytes};
use crate::keypackage::{KeyPackagePool, VerifiedKeyPackage};

impl Client {
    /// Adds devices (verified key packages; one leaf each). Returns the Welcome to deliver.
    pub fn add(
        &mut self,
        id: &ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::Add(packages), sequencer, now_ms)
    }

    /// Adds any number of devices in as many sequenced commits as
    /// [`Config::adds_per_commit_max`] requires (e.g. creating a large group); one Welcome per
    /// commit. Stops at the first error.
    pub fn add_many(
        &mut self,
        id: &ConversationId,
        packages: Vec<VerifiedKeyPackage>,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Vec<CommitOutcome>, MlsError> {
        let mut out = Vec::new();
        // Chunks still to add, in order (a stack, last chunk at the bottom).
        let mut todo: Vec<Vec<VerifiedKeyPackage>> =
            packages.chunks(self.config.adds_per_commit_max.max(1)).rev().map(<[_]>::to_vec).collect();
        while let Some(chunk) = todo.pop() {
            match self.add(id, chunk.clone(), sequencer, now_ms) {
                Ok(Some(o)) => out.push(o),
                Ok(None) => {}
                // Too large for the sequencer: split the chunk in two and go on.
                Err(MlsError::Sequencer(SequencerError::TooLarge { .. })) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    todo.push(b.to_vec());
                    todo.push(a.to_vec());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes every device of `account`.
    pub fn remove_account(
        &mut self,
        id: &ConversationId,
        account: AccountId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::RemoveAccount(account), sequencer, now_ms)
    }

    /// Rotates this device's keys in the conversation (on demand or when
    /// [`Client::due_for_update`]).
    pub fn self_update(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::SelfUpdate, sequencer, now_ms)
    }

    /// Commits waiting proposals (e.g. after [`Event::LeaveProposed`]).
    pub fn commit_pending(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.commit(id, Change::CommitPending, sequencer, now_ms)
    }

    /// Proposes this device's removal (MLS leave); another member commits it. Returns the
    /// proposal's sequence number.
    pub fn leave(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<u64, MlsError> {
        let _ = now_ms;
        self.exclusive(|s| s.leave_now(id, sequencer))
    }

    pub(super) fn leave_now(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<u64, MlsError> {
        let topic = id.topic();
        for _ in 0..self.config.rebuild_attempts_max.max(1) {
            let mut events = Vec::new();
            self.catch_up(id, sequencer, &mut events)?;
            let (after, proposal) = self.atomically(id, |s| {
                let provider = &s.provider;
                let signer = &s.signer;
                let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
                let p = c.group.leave_group(provider, signer).map_err(|e| op_err("leave")(e.to_string()))?;
                Ok((c.meta.applied, to_bytes(&p)?))
            })?;
            let keys = self.topic_keys(id)?;
            match sequencer.submit(topic, after, proposal, keys) {
                Ok(seq) => {
                    self.atomically(id, |s| {
                        s.conv_mut(id)?.meta.applied = seq + 1;
                        Ok(())
                    })?;
                    return Ok(seq);
                }
                Err(SequencerError::Stale { .. }) => self.drop_pending(id)?,
                Err(e) => {
                    self.drop_pending(id)?;
                    return Err(e.into());
                }
            }
        }
        Err(MlsError::TooManyRebuilds { attempts: self.config.rebuild_attempts_max.max(1) })
    }

    /// Adds a new device of this device's account to every conversation the account is in,
    /// taking one key package of it from `pool` per conversation.
    pub fn add_device_everywhere(
        &mut self,
        device: &DeviceId,
        pool: &mut KeyPackagePool,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Vec<(ConversationId, Result<Option<CommitOutcome>, MlsError>)> {
        let mut out = Vec::new();
        for id in self.conversations() {
            if !self.is_active(&id).unwrap_or(false) {
                continue;
            }
            let r = match pool.take(device) {
                Some(kp) if kp.cert.account == self.signer.account() => {
                    self.add(&id, vec![kp], sequencer, now_ms)
                }
                Some(_) => Err(MlsError::Rejected("the device belongs to another account".into())),
                None => Err(MlsError::Rejected("no key package left for the device".into())),
            };
            out.push((id, r));
        }
        out
    }

    /// Removes a (revoked) device from every conversation it is in.
    pub fn revoke_device_everywhere(
        &mut self,
        device: &DeviceId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Vec<(ConversationId, Result<Option<CommitOutcome>, MlsError>)> {
        let mut out = Vec::new();
        for id in self.conversations() {
            if !self.is_active(&id).unwrap_or(false) {
                continue;
            }
            out.push((id, self.commit(&id, Change::RemoveDevice(*device), sequencer, now_ms)));
        }
        out
    }

    /// Forgets a conversation this device was removed from, deleting its state.
    pub fn forget(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.exclusive(|s| s.forget_now(id))
    }

    pub(super) fn forget_now(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        let mut c = self.conversations.remove(id).ok_or(MlsError::UnknownConversation)?;
        prune_past(&self.provider, id, &mut c, u64::MAX)?;
        c.group.delete(self.provider.storage())?;
        self.provider.storage().raw_del(Meta::key(id));
        self.provider.storage().flush()?;
        Ok(())
    }
}
