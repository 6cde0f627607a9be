//! This device's own pending commit, from submission to merge.
//!
//! Architecture invariant: a committer never forks itself. Once staged, its commit (bytes in
//! the stored metadata, state in OpenMLS's pending commit) is kept until the sequencer's order
//! proves what holds its slot: its own bytes (then it is merged, at whatever moment they are
//! seen — the answer to the submission, a later `sync`, a restart) or other bytes (then it is
//! dropped and the change rebuilt). A submission that times out or fails says neither, so the
//! commit stays pending and is offered again ([`Client::retry_pending`], or before the next
//! commit); a "stale" answer is checked against the order the same way, since the stale slot
//! may be held by this very commit (an earlier submission whose answer was lost).

use cairn_proto::sequencer::{CommitSequencer, SequencerError};
use openmls_traits::OpenMlsProvider as _;
use tls_codec::Serialize as _;

use super::commit::{CommitOutcome, Event, PendingWelcome, StagedChange, WelcomeOut};
use super::error::op_err;
use super::state::snapshot_epoch;
use super::{Client, ConversationId, MlsError, WelcomeBundle};

/// What this device holds in memory about its pending commit, beyond the stored bytes.
#[derive(Debug)]
pub(super) struct OwnPending {
    /// The Welcome of an Add, sealed once the commit is merged.
    pub(super) welcome: Option<PendingWelcome>,
    /// A self-update: merging it resets the update schedule.
    pub(super) self_update: bool,
    /// When it was staged (the update schedule's time; never used to judge a handshake).
    pub(super) built_ms: u64,
}

impl Client {
    /// Submits a staged change. If the sequencer says it is stale, the order is fetched: if
    /// this very commit holds the slot (an earlier answer was lost) it is merged; otherwise it
    /// is dropped, the conversation caught up, the change rebuilt on the new state and
    /// resubmitted (at most [`Config::rebuild_attempts_max`](super::Config) times).
    /// `Ok(None)`: nothing was left to do. If the sequencer cannot be reached (or times out),
    /// the error is returned and the commit stays pending (see the module docs).
    pub fn submit(
        &mut self,
        staged: StagedChange,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.exclusive(|s| s.submit_now(staged, sequencer, now_ms))
    }

    pub(super) fn submit_now(
        &mut self,
        staged: StagedChange,
        sequencer: &mut dyn CommitSequencer,
        now_ms: u64,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        let id = staged.conversation;
        let mut built = staged.built;
        let attempts = self.config.rebuild_attempts_max.max(1);
        for attempt in 1..=attempts {
            let len = built.commit.len();
            match self.offer(&id, built.after, built.commit.clone(), sequencer)? {
                Some(event) => return Ok(Some(outcome(event, len))),
                None if attempt == attempts => break,
                None => match self.atomically(&id, |s| s.build(&id, &staged.change, now_ms))? {
                    Some(b) => built = b,
                    None => return Ok(None),
                },
            }
        }
        Err(MlsError::TooManyRebuilds { attempts })
    }

    /// Submits the pending commit `bytes` (built after `after` handshakes). `Some`: it is
    /// merged (answered, or found in the order). `None`: other bytes hold its slot and it was
    /// dropped while catching up. Errors other than "stale" leave it pending, except a refusal
    /// for size (never sequenced).
    fn offer(
        &mut self,
        id: &ConversationId,
        after: u64,
        bytes: Vec<u8>,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<Option<Event>, MlsError> {
        let keys = self.topic_keys(id)?;
        match sequencer.submit(id.topic(), after, bytes, keys) {
            Ok(seq) => {
                let event = self.atomically(id, |s| s.merge_own(id, seq))?;
                Ok(Some(event))
            }
            Err(SequencerError::Stale { .. }) => {
                let mut events = Vec::new();
                self.catch_up(id, sequencer, &mut events)?;
                Ok(events.into_iter().find(|e| matches!(e, Event::Commit { own: true, .. })))
            }
            Err(e @ SequencerError::TooLarge { .. }) => {
                self.drop_pending(id)?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Settles a commit left pending by a failed submission: catches up (merging it if it was
    /// sequenced, dropping it if other bytes hold its slot), and otherwise submits it again.
    /// `Ok(None)`: no pending commit, or it lost its slot (rebuild the change if still wanted).
    pub fn retry_pending(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        self.exclusive(|s| s.settle_pending(id, sequencer))
    }

    pub(super) fn settle_pending(
        &mut self,
        id: &ConversationId,
        sequencer: &mut dyn CommitSequencer,
    ) -> Result<Option<CommitOutcome>, MlsError> {
        let mut events = Vec::new();
        self.catch_up(id, sequencer, &mut events)?;
        if let Some(event) = events.into_iter().find(|e| matches!(e, Event::Commit { own: true, .. })) {
            return Ok(Some(outcome(event, 0)));
        }
        if let Some(bytes) = self.conv(id)?.meta.pending_leave.clone() {
            // A leave proposal: told how it went like a commit (nothing to merge: it waits in
            // the proposal store for the commit that removes this device).
            let commit_bytes = bytes.len();
            if !self.offer_leave(id, bytes, sequencer)? {
                return Ok(None);
            }
            let c = self.conv(id)?;
            let (seq, epoch) = (c.meta.applied.saturating_sub(1), c.group.epoch().as_u64());
            return Ok(Some(CommitOutcome { seq, epoch, commit_bytes, welcome: None }));
        }
        let (after, bytes) = {
            let c = self.conv(id)?;
            match &c.meta.pending_commit {
                Some(b) => (c.meta.applied, b.clone()),
                None => return Ok(None),
            }
        };
        let len = bytes.len();
        Ok(self.offer(id, after, bytes, sequencer)?.map(|e| outcome(e, len)))
    }

    /// Merges this device's pending commit, sequenced at `seq`; seals its Welcome if any.
    /// The caller persists (or rolls back).
    pub(super) fn merge_own(&mut self, id: &ConversationId, seq: u64) -> Result<Event, MlsError> {
        let provider = &self.provider;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        snapshot_epoch(provider, id, c, self.config.past_epochs_max)?;
        c.group.merge_pending_commit(provider).map_err(|e| op_err("merge own commit")(e.to_string()))?;
        super::note_epoch(&mut self.epochs_entered, id, &c.group);
        c.meta.pending_commit = None;
        c.meta.applied = seq + 1;
        let own = c.own.take();
        if let Some(o) = own.as_ref().filter(|o| o.self_update) {
            c.meta.last_update_ms = o.built_ms;
            c.meta.needs_update = false;
        }
        let welcome = match own.and_then(|o| o.welcome) {
            Some((w, packages)) => {
                let tree = c
                    .group
                    .export_ratchet_tree()
                    .tls_serialize_detached()
                    .map_err(|e| op_err("export ratchet tree")(e.to_string()))?;
                let bundle = WelcomeBundle::seal(provider, *id, seq + 1, w.bytes, &tree, &packages)?;
                Some(WelcomeOut { recipients: w.recipients, bytes: bundle.encode() })
            }
            None => None,
        };
        let epoch = c.group.epoch().as_u64();
        Ok(Event::Commit { seq, epoch, added: Vec::new(), removed: Vec::new(), own: true, welcome })
    }

    /// Drops the pending commit (never sequenced). The proposal store stays: what it holds
    /// is sequenced (other members' leave proposals, this device's own), and the rebuilt
    /// commit, or any other member's, must still cover it.
    pub(super) fn drop_pending(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.atomically(id, |s| {
            let storage = s.provider.storage();
            let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            c.group.clear_pending_commit(storage)?;
            c.meta.pending_commit = None;
            c.own = None;
            Ok(())
        })
    }
}

/// The outcome of a merged own commit (`event` is its [`Event::Commit`]).
fn outcome(event: Event, commit_bytes: usize) -> CommitOutcome {
    match event {
        Event::Commit { seq, epoch, welcome, .. } => CommitOutcome { seq, epoch, commit_bytes, welcome },
        _ => CommitOutcome { seq: 0, epoch: 0, commit_bytes, welcome: None },
    }
}
