//! Consent to invitations: a Welcome joins at once only if its inviter is this account, an
//! account the user shares a conversation with, or one the user accepted (or the node runs
//! with [`Invitations::Everyone`]); any other Welcome waits in the bounded request list
//! ([`crate::requests`]) and creates no MLS state, subscription or key-package work until the
//! user accepts it.

use cairn_mls::ConversationId;
use cairn_proto::AccountId;

use super::{Engine, Io};
use crate::error::NodeError;
use crate::requests::{InviteRequest, RequestOrStorage};

/// Whose Welcomes a node joins without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Invitations {
    /// This account, accounts the user shares a conversation with, and accounts the user
    /// accepted; the rest wait as requests.
    #[default]
    Ask,
    /// Everyone (local test networks, the demo and the benches).
    Everyone,
}

/// What became of a Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WelcomeFate {
    /// Joined.
    Joined(ConversationId),
    /// Kept as a request for the user.
    Requested(AccountId),
    /// Not joined and not kept (unreadable, a duplicate, declined, or the list is full).
    Dropped(String),
}

impl Engine {
    /// Decides about an assembled Welcome bundle: join, keep as a request, or drop.
    pub(super) fn consider_welcome(
        &mut self,
        bundle: &[u8],
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> WelcomeFate {
        if self.cfg.invitations == Invitations::Everyone {
            return self.join_welcome(bundle, seq, now_ms);
        }
        let info = match self.mls.inspect_welcome(bundle) {
            Ok(i) => i,
            Err(e) => return WelcomeFate::Dropped(format!("welcome not readable: {e}")),
        };
        let inviter = info.inviter.account;
        if self.trusts(&inviter) {
            return self.join_welcome(bundle, seq, now_ms);
        }
        let req = InviteRequest {
            conversation: info.conversation.0,
            inviter,
            inviter_device: info.inviter.device,
            received_at_ms: now_ms,
            members: u32::try_from(info.members).unwrap_or(u32::MAX),
        };
        match self.db.request_put(&req, bundle) {
            Ok(()) => {
                tracing::info!(
                    "invitation from {} to conversation {} waits for consent (`cairn requests`)",
                    inviter.to_text(),
                    hex::encode(info.conversation.0)
                );
                WelcomeFate::Requested(inviter)
            }
            Err(RequestOrStorage::Refused(r)) => WelcomeFate::Dropped(r.to_string()),
            Err(RequestOrStorage::Storage(e)) => WelcomeFate::Dropped(e.to_string()),
        }
    }

    /// Whether Welcomes from `account` join without asking.
    fn trusts(&self, account: &AccountId) -> bool {
        if *account == self.keys.account || self.db.is_accepted(account).unwrap_or(false) {
            return true;
        }
        // bounded by this device's conversations and their members
        self.mls
            .conversations()
            .iter()
            .any(|c| self.mls.member_accounts(c).is_ok_and(|m| m.contains(account)))
    }

    /// Joins from a Welcome bundle and starts following the conversation.
    fn join_welcome(
        &mut self,
        bundle: &[u8],
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> WelcomeFate {
        let id = match self.mls.join(bundle, now_ms) {
            Ok(id) => id,
            Err(e) => return WelcomeFate::Dropped(format!("welcome not joined: {e}")),
        };
        tracing::info!("joined conversation {}", hex::encode(id.0));
        self.io.push(Io::Subscribe(id.topic()));
        self.io.push(Io::Subscribe(self.own_receipt_topic(&id)));
        self.io.push(Io::PublishKeyPackages);
        self.sync(&id, seq, now_ms);
        self.refresh(&id, now_ms);
        if let Err(e) = self.replay_history(id, seq, now_ms) {
            tracing::warn!("reading the history of {}: {e}", hex::encode(id.0));
        }
        self.io.push(Io::Joined(id));
        WelcomeFate::Joined(id)
    }

    /// The invitations waiting for the user's consent.
    pub fn requests(&self) -> Result<Vec<InviteRequest>, NodeError> {
        self.db.requests()
    }

    /// Accepts a request: joins its conversation and accepts its inviter's later Welcomes.
    pub fn accept_request(
        &mut self,
        conversation: &[u8; 32],
        seq: &mut dyn cairn_proto::CommitSequencer,
        now_ms: u64,
    ) -> Result<ConversationId, NodeError> {
        let (req, bundle) = self
            .db
            .request(conversation)?
            .ok_or_else(|| NodeError::NotFound("no such invitation request (see `cairn requests`)".into()))?;
        self.db.accept_account(&req.inviter, now_ms)?;
        let fate = self.join_welcome(&bundle, seq, now_ms);
        self.db.request_remove(conversation, false, now_ms)?;
        match fate {
            WelcomeFate::Joined(id) => Ok(id),
            WelcomeFate::Requested(_) | WelcomeFate::Dropped(_)
                if self.mls.conversations().contains(&ConversationId(*conversation)) =>
            {
                Ok(ConversationId(*conversation))
            }
            WelcomeFate::Requested(_) => Err(NodeError::Internal("accepted request was kept again".into())),
            WelcomeFate::Dropped(why) => Err(NodeError::Conflict(format!(
                "{why}; the request was removed: ask the inviter to add you again"
            ))),
        }
    }

    /// Declines a request: it is removed and a re-delivered Welcome for it is ignored.
    pub fn decline_request(&mut self, conversation: &[u8; 32], now_ms: u64) -> Result<(), NodeError> {
        if self.db.request(conversation)?.is_none() {
            return Err(NodeError::NotFound("no such invitation request (see `cairn requests`)".into()));
        }
        self.db.request_remove(conversation, true, now_ms)
    }
}
