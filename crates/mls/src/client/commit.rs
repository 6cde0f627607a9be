//! Handshakes: a change is staged (built and stored durably), submitted to the sequencer,
//! rebuilt while stale, and merged; every member applies sequenced handshakes in order (`sync`).

use cairn_proto::sequencer::CommitSequencer;
use cairn_proto::{AccountId, DeviceCert, DeviceId, Topic};
use openmls::prelude::{
    KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsGroup, ProcessedMessageContent, Proposal, StagedCommit,
};
use openmls_traits::OpenMlsProvider as _;

use super::error::op_err;
use super::messages::Received;
use super::pending::OwnPending;
use super::state::snapshot_epoch;
use super::{Client, ConversationId, MlsError, inbox_topic, parse_message, to_bytes};
use crate::credential::{CredentialError, DeviceSigner, cert_of, verify_credential};
use crate::keypackage::VerifiedKeyPackage;
use crate::storage::CairnProvider;

/// A group change, built on the latest state and rebuilt if the sequencer says it is stale.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add these devices (one leaf each).
    Add(Vec<VerifiedKeyPackage>),
    /// Remove every device of this account.
    RemoveAccount(AccountId),
    /// Remove this device.
    RemoveDevice(DeviceId),
    /// Rotate this device's leaf keys.
    SelfUpdate,
    /// Commit proposals waiting in the group (e.g. a member's leave).
    CommitPending,
    /// Pin this policy in the group context (`None` removes the pin); every member must
    /// support the policy extension, and the current policy must allow the change.
    SetPolicy(Option<cairn_contracts::policy::PolicyPin>),
}

/// A Welcome for new members, as delivered to their inboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeOut {
    /// Inbox topics of the new devices, with the device each is for.
    pub recipients: Vec<(DeviceId, Topic)>,
    /// The encoded [`WelcomeBundle`](super::WelcomeBundle).
    pub bytes: Vec<u8>,
}

/// Result of a sequenced commit.
#[derive(Debug, Clone)]
pub struct CommitOutcome {
    /// The commit's position in the conversation's handshake order.
    pub seq: u64,
    /// The epoch the group is in after the commit.
    pub epoch: u64,
    /// Size of the commit message in bytes.
    pub commit_bytes: usize,
    /// The Welcome, if members were added.
    pub welcome: Option<WelcomeOut>,
}

/// A commit built but not yet sequenced (see [`Client::stage`]).
#[derive(Debug)]
pub struct StagedChange {
    pub(super) conversation: ConversationId,
    pub(super) change: Change,
    pub(super) built: Built,
}

impl StagedChange {
    /// The commit message bytes to be sequenced.
    pub fn commit_bytes(&self) -> &[u8] {
        &self.built.commit
    }

    /// The number of handshake messages it was built after (its `after` for the sequencer).
    pub fn after(&self) -> u64 {
        self.built.after
    }

    /// The conversation.
    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }
}

/// A Welcome to send once its commit is merged, with the key packages its tree key is sealed to.
pub(super) type PendingWelcome = (WelcomeOut, Vec<KeyPackage>);

#[derive(Debug)]
pub(super) struct Built {
    pub(super) commit: Vec<u8>,
    pub(super) after: u64,
}

/// Something [`Client::sync`] applied or observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A commit was applied; the group is now in `epoch`.
    Commit {
        /// Sequence number of the commit.
        seq: u64,
        /// New epoch.
        epoch: u64,
        /// Devices added.
        added: Vec<DeviceCert>,
        /// Devices removed.
        removed: Vec<DeviceCert>,
        /// This device's own commit, merged when its bytes were seen in the order (its
        /// submission's answer was lost or said "stale"); `added`/`removed` are then empty.
        own: bool,
        /// With `own`: the Welcome of an Add, if this device still held it (in memory: a
        /// restart between submission and merge loses it), to deliver as after
        /// [`Client::commit`].
        welcome: Option<WelcomeOut>,
    },
    /// A member proposed to leave; a commit will follow ([`Client::commit_pending`]).
    LeaveProposed {
        /// Sequence number of the proposal.
        seq: u64,
        /// The leaving device.
        device: Option<DeviceCert>,
    },
    /// This device was removed from the conversation.
    RemovedSelf {
        /// Sequence number of the commit.
        seq: u64,
    },
    /// A sequenced handshake message was invalid; every member skips it alike.
    Skipped {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A buffered application message became readable (or was dropped).
    Message(Received),
}

/// An Add commit of the devices not in the group yet, with its Welcome (the bundle, with the
/// new epoch's ratchet tree, is made once the commit is merged); `None` if all are members.
fn build_add(
    group: &mut MlsGroup,
    provider: &CairnProvider,
    signer: &DeviceSigner,
    kps: &[VerifiedKeyPackage],
    now_ms: u64,
) -> Result<Option<(Vec<u8>, PendingWelcome)>, MlsError> {
    // The committer alone judges expiry, before sequencing; members never consult a clock.
    for k in kps {
        k.check_addable(now_ms)?;
    }
    let members = member_certs(group);
    let fresh: Vec<&VerifiedKeyPackage> =
        kps.iter().filter(|k| !members.iter().any(|(_, c)| c.device == k.cert.device)).collect();
    if fresh.is_empty() {
        return Ok(None);
    }
    let packages: Vec<KeyPackage> = fresh.iter().map(|k| k.package.clone()).collect();
    let (commit, welcome, _) = group
        .add_members_without_update(provider, signer, &packages)
        .map_err(|e| op_err("add members")(e.to_string()))?;
    let recipients = fresh.iter().map(|k| (k.cert.device, inbox_topic(&k.cert.device))).collect();
    let welcome = WelcomeOut { recipients, bytes: to_bytes(&welcome)? };
    Ok(Some((to_bytes(&commit)?, (welcome, packages))))
}

/// The leaves a removal change targets.
fn removal_targets(group: &MlsGroup, change: &Change) -> Vec<LeafNodeIndex> {
    member_certs(group)
        .iter()
        .filter(|(_, cert)| match change {
            Change::RemoveAccount(a) => cert.account == *a,
            Change::RemoveDevice(d) => cert.device == *d,
            _ => false,
        })
        .map(|(i, _)| *i)
        .collect()
}

/// Every member's leaf and certificate. O(N) decodes: only adds and removals need it.
fn member_certs(group: &MlsGroup) -> Vec<(LeafNodeIndex, DeviceCert)> {
    group.members().filter_map(|m| cert_of(&m.credential).map(|cert| (m.index, cert))).collect()
}

/// Checks every leaf a commit brings in (adds, updates, the committer's new leaf).
pub(super) fn verify_commit_leaves(staged: &StagedCommit) -> Result<(), CredentialError> {
    if let Some(leaf) = staged.update_path_leaf_node() {
        verify_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    }
    for p in staged.queued_proposals() {
        let leaf = match p.proposal() {
            Proposal::Add(a) => a.key_package().leaf_node(),
            Proposal::Update(u) => u.leaf_node(),
            _ => continue,
        };
        verify_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    }
    Ok(())
}

impl Client {
    /// Fetches and applies every sequenced handshake message not applied yet, in order, then
    /// retries buffered application messages.
    ///
    /// Architecture invariant: whether a sequenced handshake is merged or skipped depends only
    /// on the group state and the handshake's bytes, never on this device's clock, so every
    /// member decides alike (`_now_ms` is not used for it; key-package lifetimes are
    /// clock-free and their expiry is the committer's check, see
    /// [`crate::keypackage::clock_free_lifetime`]).
    pub fn sync(
        &mut self,
        id: &ConversationId,
        sequencer: &dyn CommitSequencer,
        _now_ms: u64,
    ) -> Result<Vec<Event>, MlsError> {
        let mut events = Vec::new();
        self.catch_up(id, sequencer, &mut events)?;
        self.retry_future(id, &mut events)?;
        Ok(events)
    }

    pub(super) fn catch_up(
        &mut self,
        id: &ConversationId,
        sequencer: &dyn CommitSequencer,
        events: &mut Vec<Event>,
    ) -> Result<(), MlsError> {
        let topic = id.topic();
        loop {
            let from = self.conv(id)?.meta.applied;
            let page = sequencer.fetch(&topic, from, self.config.fetch_page.max(1))?;
            if page.is_empty() {
                return Ok(());
            }
            for m in page {
                let expected = self.conv(id)?.meta.applied;
                if m.seq != expected {
                    return Err(MlsError::Rejected(format!(
                        "sequencer returned handshake {} where {expected} was expected",
                        m.seq
                    )));
                }
                self.apply_sequenced(id, m.seq, &m.payload, events)?;
            }
        }
    }

    /// Applies one sequenced handshake message; an invalid one is skipped (and counted).
    pub(super) fn apply_sequenced(
        &mut self,
        id: &ConversationId,
        seq: u64,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), MlsError> {
        // Our own commit, sequenced before we could merge it (its answer was lost, we were
        // told "stale", or we crashed): its bytes prove it holds this slot.
        let own = self.conv(id)?.meta.pending_commit.as_deref() == Some(payload);
        if own {
            match self.merge_own(id, seq) {
                Ok(event) => events.push(event),
                Err(e) => {
                    self.rollback(id)?;
                    return Err(e);
                }
            }
            return self.persist(id);
        }
        if self.conv(id)?.meta.pending_leave.is_some() {
            // Our leave proposal waits for this slot: its bytes sequence it, others take it.
            match self.settle_own_leave(id, seq, payload) {
                Ok(true) => return self.persist(id),
                Ok(false) => self.persist(id)?,
                Err(e) => {
                    self.rollback(id)?;
                    return Err(e);
                }
            }
        }
        if self.conv(id)?.meta.pending_commit.is_some() || self.conv(id)?.group.pending_commit().is_some() {
            // Other bytes hold the slot our pending commit was built for: it lost (its author
            // rebuilds the change).
            let storage = self.provider.storage();
            let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            c.group.clear_pending_commit(storage)?;
            c.meta.pending_commit = None;
            c.own = None;
            self.persist(id)?;
        }
        match self.process_handshake(id, seq, payload) {
            Ok(mut evs) => {
                self.conv_mut(id)?.meta.applied = seq + 1;
                self.persist(id)?;
                events.append(&mut evs);
                Ok(())
            }
            Err(MlsError::Storage(e)) => {
                self.rollback(id)?;
                Err(e.into())
            }
            Err(e) => {
                // Invalid for everyone alike: restore the state, count it as applied.
                self.rollback(id)?;
                self.conv_mut(id)?.meta.applied = seq + 1;
                self.persist(id)?;
                events.push(Event::Skipped { seq, reason: e.to_string() });
                Ok(())
            }
        }
    }

    pub(super) fn process_handshake(
        &mut self,
        id: &ConversationId,
        seq: u64,
        payload: &[u8],
    ) -> Result<Vec<Event>, MlsError> {
        let msg = parse_message(payload)?;
        if !msg.is_handshake_message() {
            return Err(MlsError::Rejected("application message in the handshake order".into()));
        }
        let provider = &self.provider;
        let signer = &self.signer;
        let past_epochs_max = self.config.past_epochs_max;
        let gate = self.policy_gate.clone();
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let processed =
            c.group.process_message(provider, msg).map_err(|e| MlsError::Rejected(e.to_string()))?;
        let sender = cert_of(processed.credential());
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                verify_commit_leaves(&staged)?;
                // Refused by the pinned policy: skipped by every member alike.
                gate.check_staged(&c.group, &staged)?;
                let added: Vec<DeviceCert> = staged
                    .add_proposals()
                    .filter_map(|a| cert_of(a.add_proposal().key_package().leaf_node().credential()))
                    .collect();
                let removed_idx: Vec<LeafNodeIndex> =
                    staged.remove_proposals().map(|r| r.remove_proposal().removed()).collect();
                let removed: Vec<DeviceCert> = removed_idx
                    .iter()
                    .filter_map(|i| c.group.member_at(*i).and_then(|m| cert_of(&m.credential)))
                    .collect();
                let own = c.group.own_leaf_index();
                let self_removed = staged.self_removed();
                let was_leaving = super::leave::is_leaving(c);
                snapshot_epoch(provider, id, c, past_epochs_max)?;
                c.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| op_err("merge commit")(e.to_string()))?;
                super::note_epoch(&mut self.epochs_entered, id, &c.group);
                if self_removed {
                    return Ok(vec![Event::RemovedSelf { seq }]);
                }
                if was_leaving {
                    // This device's sequenced leave was not covered (only a modified client
                    // commits without its whole proposal store), and every member dropped it
                    // with the epoch: proposed again, pending, in this same transaction.
                    let p =
                        c.group.leave_group(provider, signer).map_err(|e| op_err("leave")(e.to_string()))?;
                    c.meta.pending_leave = Some(to_bytes(&p)?);
                }
                // Keep the tree full: the sibling of a removed leaf refills the blanked path.
                if removed_idx.iter().any(|r| r.u32() ^ 1 == own.u32()) {
                    c.meta.needs_update = true;
                }
                let epoch = c.group.epoch().as_u64();
                Ok(vec![Event::Commit { seq, epoch, added, removed, own: false, welcome: None }])
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let Proposal::Remove(r) = p.proposal() else {
                    return Err(MlsError::Rejected("only leave proposals are accepted".into()));
                };
                let leaving = c.group.member_at(r.removed()).and_then(|m| cert_of(&m.credential));
                if leaving.is_none() || leaving.map(|l| l.device) != sender.map(|s| s.device) {
                    return Err(MlsError::Rejected("a member may only propose its own removal".into()));
                }
                c.group.store_pending_proposal(provider.storage(), *p)?;
                Ok(vec![Event::LeaveProposed { seq, device: leaving }])
            }
            ProcessedMessageContent::OwnPrivateMessage => {
                Err(MlsError::Rejected("own handshake message with no matching pending commit".into()))
            }
            _ => Err(MlsError::Rejected("unexpected handshake content".into())),
        }
    }

    /// Builds `change` on the current local state without sequencing it (no fetch). Returns
    /// `None` if there is nothing to do (e.g. the member to remove is already gone). The pending
    /// commit is stored durably before it can be submitted.
    pub fn stage(
        &mut self,
        id: &ConversationId,
        change: Change,
        now_ms: u64,
    ) -> Result<Option<StagedChange>, MlsError> {
        self.exclusive(|s| s.stage_now(id, change, now_ms))
    }

    pub(super) fn stage_now(
        &mut self,
        id: &ConversationId,
        change: Change,
        now_ms: u64,
    ) -> Result<Option<StagedChange>, MlsError> {
        let built = self.atomically(id, |s| s.build(id, &change, now_ms))?;
        Ok(built.map(|built| StagedChange { conversation: *id, change, built }))
    }

    pub(super) fn build(
        &mut self,
        id: &ConversationId,
        change: &Change,
        now_ms: u64,
    ) -> Result<Option<Built>, MlsError> {
        let provider = &self.provider;
        let signer = &self.signer;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let after = c.meta.applied;
        let g = &mut c.group;
        let (commit, welcome) = match change {
            Change::Add(kps) => match build_add(g, provider, signer, kps, now_ms)? {
                Some((commit, welcome)) => (commit, Some(welcome)),
                None => return Ok(None),
            },
            Change::RemoveAccount(_) | Change::RemoveDevice(_) => {
                let targets = removal_targets(g, change);
                if targets.is_empty() {
                    return Ok(None);
                }
                if targets.contains(&g.own_leaf_index()) {
                    return Err(MlsError::Rejected("use leave to remove this device".into()));
                }
                let (commit, _, _) = g
                    .remove_members(provider, signer, &targets)
                    .map_err(|e| op_err("remove members")(e.to_string()))?;
                (to_bytes(&commit)?, None)
            }
            Change::SelfUpdate => {
                let bundle = g
                    .self_update(provider, signer, LeafNodeParameters::default())
                    .map_err(|e| op_err("self update")(e.to_string()))?;
                (to_bytes(bundle.commit())?, None)
            }
            Change::SetPolicy(pin) => {
                let extensions = crate::policy_ext::with_pin(g.extensions(), pin.as_ref())?;
                let (commit, _, _) = g
                    .update_group_context_extensions(provider, extensions, signer)
                    .map_err(|e| op_err("pin the policy")(e.to_string()))?;
                (to_bytes(&commit)?, None)
            }
            Change::CommitPending => {
                if !g.has_pending_proposals() {
                    return Ok(None);
                }
                let (commit, _, _) = g
                    .commit_to_pending_proposals(provider, signer)
                    .map_err(|e| op_err("commit pending proposals")(e.to_string()))?;
                (to_bytes(&commit)?, None)
            }
        };
        // The same judgement every member makes when the commit is sequenced: refuse it here.
        if let Some(staged) = g.pending_commit() {
            self.policy_gate.check_staged(g, staged)?;
        }
        c.meta.pending_commit = Some(commit.clone());
        let self_update = matches!(change, Change::SelfUpdate);
        c.own = Some(OwnPending { welcome, self_update, built_ms: now_ms });
        Ok(Some(Built { commit, after }))
    }

    /// Catches up, builds `change`, sequences it (rebuilding while stale) and applies it.
    pub fn commit(
        &mut self,
        id: &ConversationId,
        change: Change,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.exclusive(|s| s.commit_now(id, change, sequencer, now_ms))
    }

    pub(super) fn commit_now(
        &mut self,
        id: &ConversationId,
        change: Change,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        let mut events = Vec::new();
        self.catch_up(id, sequencer, &mut events)?;
        if self.has_pending_commit(id) {
            return Err(MlsError::CommitPending);
        }
        match self.stage(id, change, now_ms)? {
            Some(staged) => self.submit(staged, sequencer, now_ms),
            None => Ok(None),
        }
    }
}
