//! Membership operations built on [`Client::commit`]: add, remove, leave, self-update, and a
//! device added to or revoked from every conversation of the account.

use cairn_proto::sequencer::{CommitSequencer, SequencerError};
use cairn_proto::{AccountId, DeviceId};
use openmls_traits::OpenMlsProvider as _;

use super::commit::{Change, CommitOutcome};
use super::state::{Meta, prune_past};
use super::{Client, ConversationId, MlsError};
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
