//! This device's leave proposal, from submission to its place in the order.
//!
//! Like a commit, a leave proposal is kept until the order proves what holds its slot
//! (architecture invariant: a device never drops a handshake the others may hold). It is
//! stored in OpenMLS's proposal store and its bytes in the metadata (`pending_leave`), in one
//! transaction, before it is offered. The sequencer may answer later (the node's submission
//! worker mines, submits and waits for finality off the actor): until then the proposal
//! stays pending and is offered again ([`Client::retry_pending`], or the next
//! [`Client::leave`]). When its bytes are seen at its slot it is sequenced and stays in the
//! proposal store, where the commit that removes this device finds it. When other bytes hold
//! the slot it is taken out of the proposal store (the others never saw it) and the next
//! `leave` builds it again.
//!
//! Dropping a proposal whose submission merely failed would be wrong: it may be sequenced
//! later, and this device could then not process the commit that removes it.

use cairn_proto::sequencer::{CommitSequencer, SequencerError};
use openmls::prelude::hash_ref::ProposalRef;
use openmls::prelude::{Proposal, Sender};
use openmls_traits::OpenMlsProvider as _;

use super::error::op_err;
use super::state::Conversation;
use super::{Client, ConversationId, MlsError, to_bytes};

impl Client {
    /// Proposes this device's removal (MLS leave); another member commits it. `Ok`: the
    /// proposal holds its place in the order (sequenced by this call or an earlier one), or
    /// this device is out of the group already.
    /// `Err(Sequencer(..))` with [`Client::has_pending_commit`] true: it was built and offered
    /// but not answered yet; it stays pending and is offered again (see the module docs).
    pub fn leave(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<(), MlsError> {
        let _ = now_ms;
        self.exclusive(|s| s.leave_now(id, sequencer))
    }

    pub(super) fn leave_now(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<(), MlsError> {
        let attempts = self.config.rebuild_attempts_max.max(1);
        for _ in 0..attempts {
            // Proves what holds a pending proposal's slot, if the order shows it already.
            let mut events = Vec::new();
            self.catch_up(id, sequencer, &mut events)?;
            let c = self.conv(id)?;
            if !c.group.is_active() && c.meta.pending_leave.is_none() {
                // Out already (the commit covering the leave was applied in that catch-up, or
                // another member removed this device): nothing left to propose.
                return Ok(());
            }
            if c.meta.pending_commit.is_some() {
                return Err(MlsError::CommitPending);
            }
            let bytes = match c.meta.pending_leave.clone() {
                Some(b) => b,
                None if !own_leave_refs(c).is_empty() => return Ok(()),
                None => self.atomically(id, |s| {
                    let provider = &s.provider;
                    let signer = &s.signer;
                    let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
                    if !c.group.is_active() {
                        return Err(MlsError::NotMember);
                    }
                    let p =
                        c.group.leave_group(provider, signer).map_err(|e| op_err("leave")(e.to_string()))?;
                    let bytes = to_bytes(&p)?;
                    c.meta.pending_leave = Some(bytes.clone());
                    Ok(bytes)
                })?,
            };
            if self.offer_leave(id, bytes, sequencer)? {
                return Ok(());
            }
        }
        Err(MlsError::TooManyRebuilds { attempts })
    }

    /// Offers the pending leave proposal `bytes` (built after `applied` handshakes).
    /// `true`: sequenced. `false`: told "stale" (the next catch-up proves what holds the slot).
    /// Other answers leave it pending and are returned.
    pub(super) fn offer_leave(
        &mut self,
        id: &ConversationId,
        bytes: Vec<u8>,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<bool, MlsError> {
        let after = self.conv(id)?.meta.applied;
        let keys = self.topic_keys(id)?;
        match sequencer.submit(id.topic(), after, bytes, keys) {
            Ok(seq) => {
                self.atomically(id, |s| {
                    let meta = &mut s.conv_mut(id)?.meta;
                    meta.applied = seq + 1;
                    meta.pending_leave = None;
                    Ok(())
                })?;
                Ok(true)
            }
            Err(SequencerError::Stale { .. }) => Ok(false),
            Err(SequencerError::NotMember) => {
                // Already out of the group by the ledger's account: nothing to propose.
                self.drop_own_leave(id)?;
                Err(MlsError::NotMember)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The order shows `payload` at `seq`, where this device's leave proposal waits. `true`:
    /// it is that proposal (now sequenced; it stays in the proposal store). `false`: other
    /// bytes took the slot, and the proposal was taken out (the caller applies `payload`).
    /// The caller persists.
    pub(super) fn settle_own_leave(
        &mut self,
        id: &ConversationId,
        seq: u64,
        payload: &[u8],
    ) -> Result<bool, MlsError> {
        let c = self.conv_mut(id)?;
        let own = c.meta.pending_leave.as_deref() == Some(payload);
        c.meta.pending_leave = None;
        if own {
            c.meta.applied = seq + 1;
            return Ok(true);
        }
        self.remove_own_leave(id)?;
        Ok(false)
    }

    /// Takes this device's unsequenced leave proposal out, persisted.
    fn drop_own_leave(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.atomically(id, |s| {
            s.conv_mut(id)?.meta.pending_leave = None;
            s.remove_own_leave(id)
        })
    }

    /// Removes this device's own leave proposals from the proposal store (only those: the
    /// sequenced proposals of others stay for the commit that covers them).
    fn remove_own_leave(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        let storage = self.provider.storage();
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        for r in own_leave_refs(c) {
            c.group
                .remove_pending_proposal(storage, &r)
                .map_err(|e| op_err("take back the leave proposal")(e.to_string()))?;
        }
        Ok(())
    }
}

/// Whether this device's own removal proposal is in the group's proposal store (sequenced, or
/// waiting for its slot).
pub(super) fn is_leaving(c: &Conversation) -> bool {
    !own_leave_refs(c).is_empty()
}

/// This device's own removal proposals in the group's proposal store.
fn own_leave_refs(c: &Conversation) -> Vec<ProposalRef> {
    let own = c.group.own_leaf_index();
    c.group
        .pending_proposals()
        .filter(|p| matches!(p.sender(), Sender::Member(i) if *i == own))
        .filter(|p| matches!(p.proposal(), Proposal::Remove(r) if r.removed() == own))
        .map(|p| p.proposal_reference_ref().clone())
        .collect()
}
