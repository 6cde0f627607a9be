//! The conversation's policy contract at the node: pin it, unpin it, read it. A pin is a
//! GroupContextExtensions commit, sequenced like every handshake, so every member switches at
//! the same epoch; while a pin is in place the MLS client judges every handshake with it
//! (`cairn_mls::policy_ext`): a change the policy refuses is refused here before it is
//! submitted, and skipped by every member if a modified client sequences it anyway.

use std::sync::Arc;

use cairn_mls::policy_ext::{PolicyGate, PolicyPin};
use cairn_mls::{Change, ConversationId};

use super::members::Commit;
use super::{Engine, mls_err};
use crate::error::NodeError;

impl Engine {
    /// The policy pinned in a conversation at its current epoch, if any.
    pub fn policy(&self, id: &ConversationId) -> Result<Option<PolicyPin>, NodeError> {
        self.mls.policy(id).map_err(mls_err)
    }

    /// Pins `pin` in a conversation (`None` unpins). The current policy must allow it; the
    /// code must be a policy this version ships.
    pub fn set_policy(
        &mut self,
        id: ConversationId,
        pin: Option<PolicyPin>,
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<Commit, NodeError> {
        self.settle_commit(&id, seq, now_ms);
        let r = self.mls.commit(&id, Change::SetPolicy(pin), seq, now_ms);
        let state = self.commit_state(&id, r);
        self.refresh(&id, now_ms);
        Ok(state?.0)
    }

    /// Replaces the gate that judges handshakes. Only tests use it: `PolicyGate::disabled`
    /// plays a modified client that commits what the policy refuses.
    pub fn set_policy_gate(&mut self, gate: Arc<PolicyGate>) {
        self.mls.set_policy_gate(gate);
    }
}
