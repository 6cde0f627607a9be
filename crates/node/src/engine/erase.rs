//! Erasing a message (right to erasure). The author's device sends a signed redaction inside
//! the conversation; every member that reads it deletes the plaintext, has the shell erase the
//! payload of its local copy, and asks the store nodes to drop the ciphertext with the secret
//! of the envelope's erase lock (only the sending device can derive it: see
//! [`super::send::erase_secret`]). Ids, hash links and anchors stay verifiable: `verify`
//! counts the message as erased.
//!
//! Policy: by default only the author's account may redact (a redaction by anyone else is
//! refused and changes nothing). A conversation's pinned policy decides otherwise: a
//! redaction by another member is applied when the policy pinned at the redaction's epoch
//! allows that member the change "erase a message of the author" (`GroupChange::Erase`; the
//! shipped moderation policy allows its admins). Such an erasure deletes the plaintext at every
//! member; the store nodes keep the ciphertext until it expires, since only the author's device
//! holds the erase lock's secret. A redaction of a message this device has not read yet waits
//! in [`crate::redactions`] and is applied when the message is read (a moderator's under the pin
//! in force then).

use cairn_mls::ConversationId;
use cairn_proto::{AccountId, Id, Message};

use super::send::erase_secret;
use super::{Engine, Io};
use crate::error::NodeError;
use crate::model::{SendResult, StreamEvent};
use crate::redactions::RedactionRow;

/// Kind byte of a redaction body.
pub const KIND_REDACT: u8 = 3;
/// A redaction body: kind, target id, has-secret flag, secret.
const REDACT_BYTES: usize = 1 + 32 + 1 + 32;

/// A parsed redaction body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redaction {
    /// The message to erase.
    pub target: Id,
    /// The secret of the target's erase lock (absent when another device of the author's
    /// account redacts: store nodes then keep the ciphertext until it expires).
    pub secret: Option<[u8; 32]>,
}

impl Redaction {
    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(REDACT_BYTES);
        b.push(KIND_REDACT);
        b.extend_from_slice(&self.target.0);
        match self.secret {
            Some(s) => {
                b.push(1);
                b.extend_from_slice(&s);
            }
            None => {
                b.push(0);
                b.extend_from_slice(&[0; 32]);
            }
        }
        b
    }

    /// Parses a body; `None` unless it is exactly a well-formed redaction.
    pub fn decode(body: &[u8]) -> Option<Self> {
        if body.len() != REDACT_BYTES || body[0] != KIND_REDACT {
            return None;
        }
        let target = Id(body[1..33].try_into().ok()?);
        let secret: [u8; 32] = body[34..66].try_into().ok()?;
        match body[33] {
            0 if secret == [0; 32] => Some(Self { target, secret: None }),
            1 => Some(Self { target, secret: Some(secret) }),
            _ => None,
        }
    }
}

/// What became of a redaction a member read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactionFate {
    /// The target was erased here.
    Applied,
    /// The target is not read yet: the redaction waits for it.
    Pending,
    /// Refused: the redacting account is not the target's author, the target is in another
    /// conversation, or it was erased already.
    Refused,
}

impl Engine {
    /// Erases an own message: sends the redaction, then erases the local copy. Refused for a
    /// message of another author, or one this device never read.
    pub fn erase(&mut self, conv: ConversationId, target: Id, now_ms: u64) -> Result<SendResult, NodeError> {
        let Some(plain) = self.db.plain(&target)? else {
            return Err(match self.db.redaction(&target)? {
                Some(r) if r.applied => {
                    NodeError::Conflict(format!("message {} is erased already", target.to_hex()))
                }
                _ => NodeError::NotFound(format!(
                    "no message {} on this device; list ids with `cairn tail {}`",
                    target.to_hex(),
                    hex::encode(conv.0)
                )),
            });
        };
        let m = Message::decode(&plain, &self.cfg.limits).map_err(|e| NodeError::Storage(e.to_string()))?;
        if m.topic != conv.topic() {
            return Err(NodeError::NotFound(format!(
                "message {} is not in this conversation",
                target.to_hex()
            )));
        }
        let author = m.sender.account;
        if author != self.keys.account {
            let epoch = self.mls.epoch(&conv).unwrap_or(0);
            if let Err(why) = self.policy_lets_erase(&conv, epoch, self.keys.account, author) {
                return Err(NodeError::BadRequest(format!("only its author may erase this message ({why})")));
            }
        }
        let secret = if author == self.keys.account { self.own_erase_secret(&m, &target) } else { None };
        let body = Redaction { target, secret }.encode();
        let sent = self.send_control(conv, body, now_ms)?;
        let redaction =
            Id::from_hex(&sent.id).ok_or_else(|| NodeError::Internal("own id is not hex".into()))?;
        let epoch = self.mls.epoch(&conv).ok();
        self.apply_redaction(conv, self.keys.account, redaction, Redaction { target, secret }, epoch)?;
        Ok(sent)
    }

    /// Sends a redaction of any message without the author check: for misbehaviour tests only
    /// (what a modified client could send; members must refuse it).
    #[doc(hidden)]
    pub fn send_redaction_unchecked(
        &mut self,
        conv: ConversationId,
        r: Redaction,
        now_ms: u64,
    ) -> Result<SendResult, NodeError> {
        self.send_control(conv, r.encode(), now_ms)
    }

    /// The secret of an own envelope's erase lock, if this device sent it (checked against
    /// the header when the local history has it).
    fn own_erase_secret(&self, m: &Message, target: &Id) -> Option<[u8; 32]> {
        if m.sender.device != self.keys.device {
            return None;
        }
        let secret = erase_secret(&self.keys.device_key, m);
        match self.history.get(target).ok().flatten() {
            Some(env) => env.header.erase_lock_opens(&secret).then_some(secret),
            None => Some(secret),
        }
    }

    /// Whether the policy pinned at `epoch` lets `by` erase messages of `author`; `Err` says why
    /// not (no policy: only authors erase).
    fn policy_lets_erase(
        &mut self,
        conv: &ConversationId,
        epoch: u64,
        by: AccountId,
        author: AccountId,
    ) -> Result<(), String> {
        let Some(pin) = self.pin_for(conv, epoch) else {
            return Err("the conversation pins no policy that lets others erase".into());
        };
        let policy = self.mls.policy_gate().load(&pin)?;
        let ev = cairn_contracts::policy::HandshakeEvent {
            group: conv.0,
            epoch,
            proposer: by.0,
            change: cairn_contracts::policy::GroupChange::Erase(author.0),
        };
        policy.on_handshake(&ev).decision.map_err(|why| format!("the conversation's policy: {why}"))
    }

    /// A member's redaction was read (its signature and membership checked by the receive path),
    /// sent in MLS epoch `epoch`.
    pub(super) fn redaction_arrived(
        &mut self,
        conv: ConversationId,
        from: AccountId,
        redaction: Id,
        body: &[u8],
        epoch: u64,
    ) -> RedactionFate {
        let Some(r) = Redaction::decode(body) else {
            tracing::warn!("redaction {} is malformed: ignored", redaction.short());
            return RedactionFate::Refused;
        };
        match self.apply_redaction(conv, from, redaction, r, Some(epoch)) {
            Ok(fate) => fate,
            Err(e) => {
                tracing::warn!("redaction {} not applied: {e}", redaction.short());
                RedactionFate::Refused
            }
        }
    }

    /// Applies a redaction by `from` (sent in `epoch`): erases the target if `from` wrote it,
    /// or if the policy of that epoch lets `from` erase the author's messages.
    fn apply_redaction(
        &mut self,
        conv: ConversationId,
        from: AccountId,
        redaction: Id,
        r: Redaction,
        epoch: Option<u64>,
    ) -> Result<RedactionFate, NodeError> {
        let Some(plain) = self.db.plain(&r.target)? else {
            if self.db.redaction(&r.target)?.is_some() {
                return Ok(RedactionFate::Refused); // erased already, or a redaction waits
            }
            let row = RedactionRow { redaction, by: from, applied: false };
            return Ok(if self.db.redaction_pending(&r.target, row)? {
                self.pending_redactions = true;
                RedactionFate::Pending
            } else {
                RedactionFate::Refused
            });
        };
        let m = Message::decode(&plain, &self.cfg.limits).map_err(|e| NodeError::Storage(e.to_string()))?;
        if m.topic != conv.topic() {
            return Ok(RedactionFate::Refused);
        }
        if m.sender.account != from {
            let epoch = epoch.unwrap_or_else(|| self.mls.epoch(&conv).unwrap_or(0));
            if let Err(why) = self.policy_lets_erase(&conv, epoch, from, m.sender.account) {
                tracing::warn!(
                    "redaction {} of {} by a non-author refused: {why}",
                    redaction.short(),
                    r.target.short()
                );
                return Ok(RedactionFate::Refused);
            }
        }
        // Store nodes check the secret against the header themselves; the local copy, when
        // here, saves them a useless request.
        let secret = r.secret.filter(|s| match self.history.get(&r.target).ok().flatten() {
            Some(e) => e.header.erase_lock_opens(s),
            None => true,
        });
        let row = RedactionRow { redaction, by: from, applied: true };
        self.erase_local(conv, row, Redaction { target: r.target, secret })?;
        Ok(RedactionFate::Applied)
    }

    /// A message was just read: if a redaction by its author waits for it, erase it now.
    pub(super) fn redaction_waiting(&mut self, conv: ConversationId, id: Id, author: AccountId) {
        if !self.pending_redactions {
            return;
        }
        let moderator = |s: &mut Self, by: AccountId| {
            let epoch = s.mls.epoch(&conv).unwrap_or(0);
            s.policy_lets_erase(&conv, epoch, by, author).is_ok()
        };
        match self.db.redaction(&id) {
            Ok(Some(row)) if !row.applied && (row.by == author || moderator(self, row.by)) => {
                let r = Redaction { target: id, secret: None };
                if let Err(e) = self.erase_local(conv, row, r) {
                    tracing::warn!("waiting redaction of {} not applied: {e}", id.short());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("redaction lookup: {e}"),
        }
    }

    /// Deletes the plaintext (durably, with the tombstone row) and the outbox copy, then has
    /// the shell erase the local history's payload and ask the store nodes (with `secret`).
    fn erase_local(
        &mut self,
        conv: ConversationId,
        row: RedactionRow,
        r: Redaction,
    ) -> Result<(), NodeError> {
        self.db.redact(&conv.0, &r.target, row.redaction, row.by)?;
        self.db.outbox_remove(&r.target)?;
        self.io.push(Io::Erase { topic: conv.topic(), id: r.target, secret: r.secret });
        self.io.push(Io::Stream(StreamEvent::Erased {
            conversation: hex::encode(conv.0),
            id: r.target.to_hex(),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_bodies_round_trip_and_junk_is_refused() {
        for r in [
            Redaction { target: Id([1; 32]), secret: Some([2; 32]) },
            Redaction { target: Id([3; 32]), secret: None },
        ] {
            assert_eq!(Redaction::decode(&r.encode()), Some(r));
        }
        let good = Redaction { target: Id([1; 32]), secret: None }.encode();
        assert_eq!(Redaction::decode(&good[..40]), None, "short");
        let mut flag = good.clone();
        flag[33] = 2;
        assert_eq!(Redaction::decode(&flag), None, "unknown flag");
        let mut hidden = good.clone();
        hidden[40] = 1;
        assert_eq!(Redaction::decode(&hidden), None, "no secret but non-zero bytes");
        let mut kind = good;
        kind[0] = 1;
        assert_eq!(Redaction::decode(&kind), None, "not a redaction");
    }
}
