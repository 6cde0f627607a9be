//! How an operation's writes become durable: in its own transaction (`persist`), undone
//! (`rollback`), or deferred into the caller's transaction ([`Client::set_deferred`]).

use openmls::prelude::{GroupId, MlsGroup, PastEpochDeletion};
use openmls_traits::OpenMlsProvider as _;

use super::error::op_err;
use super::{Client, ConversationId, Meta, MlsError};
use crate::storage::{CairnProvider, StorageError};

impl Client {
    /// Turns deferred durability on or off.
    ///
    /// While on, [`Client::send_many`], [`Client::receive_many`] and [`Client::sync`] (and
    /// their one-message forms) commit no transaction of their own: their writes accumulate
    /// in memory, readable by later operations, until [`Client::flush_into`] writes them into
    /// the caller's redb transaction (the caller's own rows go in the same transaction, so a
    /// crash keeps both or neither) or [`Client::discard_pending`] drops them. Several
    /// deferred operations may accumulate before one flush; a failed one is undone alone.
    ///
    /// Every other operation that writes (create, join, stage, submit, commit and its
    /// wrappers, leave, key packages, forget) still commits its own transaction — a commit
    /// must be durable before it reaches the sequencer — and is refused with
    /// [`MlsError::FlushPending`] while deferred writes are waiting. Turning the mode off is
    /// refused likewise.
    ///
    /// A ciphertext from a deferred [`Client::send_many`] must not leave the device before
    /// its transaction committed: after a crash the old ratchet state would encrypt another
    /// message under the same key and nonce.
    pub fn set_deferred(&mut self, on: bool) -> Result<(), MlsError> {
        if !on && self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        self.deferred = on;
        Ok(())
    }

    /// Whether deferred durability is on.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// Whether deferred writes wait for [`Client::flush_into`].
    pub fn has_pending_flush(&self) -> bool {
        self.provider.storage().staged_writes() > 0
    }

    /// Writes every deferred write into `tx`; the caller commits `tx` (with its own rows),
    /// then calls [`Client::flush_committed`]. If the transaction is not committed, call
    /// [`Client::discard_pending`]; until one of the two, the writes stay pending (and are
    /// written again by the next `flush_into`), so none is lost.
    pub fn flush_into(&mut self, tx: &redb::WriteTransaction) -> Result<(), MlsError> {
        Ok(self.provider.storage().flush_into(tx)?)
    }

    /// Confirms that the transaction given to [`Client::flush_into`] was committed. Checked:
    /// if the database does not hold that flush, the writes stay pending and
    /// [`StorageError::NotCommitted`] is returned.
    pub fn flush_committed(&mut self) -> Result<(), MlsError> {
        self.provider.storage().staged_committed()?;
        self.staged.clear();
        Ok(())
    }

    /// [`Client::flush_into`] `tx`, commit it, and [`Client::flush_committed`]; on any failure
    /// the deferred writes are discarded ([`Client::discard_pending`]) and the error returned.
    pub fn commit_deferred(&mut self, tx: redb::WriteTransaction) -> Result<(), MlsError> {
        let committed = self
            .flush_into(&tx)
            .and_then(|()| tx.commit().map_err(|e| StorageError::from(e).into()))
            .and_then(|()| self.flush_committed());
        if let Err(e) = committed {
            self.discard_pending()?;
            return Err(e);
        }
        Ok(())
    }

    /// Drops every deferred write and reloads the conversations they touched from the
    /// database: the state is the one of the last committed transaction. Application messages
    /// a discarded [`Client::sync`] took from the future-epoch buffer are not buffered again
    /// (the caller receives them again from its history).
    pub fn discard_pending(&mut self) -> Result<(), MlsError> {
        self.provider.storage().discard_staged();
        for id in std::mem::take(&mut self.staged) {
            if self.conversations.contains_key(&id) {
                self.rollback(&id)?;
            }
        }
        Ok(())
    }

    /// Runs an operation that commits its own transaction: refused while deferred writes
    /// wait, and run with deferral off.
    pub(super) fn exclusive<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        if self.has_pending_flush() {
            return Err(MlsError::FlushPending);
        }
        let mode = std::mem::replace(&mut self.deferred, false);
        let r = f(self);
        self.deferred = mode;
        r
    }

    /// Puts the in-memory group back to its stored state after a failed operation.
    pub(super) fn rollback(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        self.provider.storage().discard();
        let group = MlsGroup::load(self.provider.storage(), &GroupId::from_slice(&id.0))?
            .ok_or(MlsError::Operation { op: "reload group", reason: "MLS state missing".into() })?;
        let meta = match self.provider.storage().raw_get(&Meta::key(id))? {
            Some(b) => Meta::decode(&b)?,
            None => Meta::default(),
        };
        let c = self.conv_mut(id)?;
        c.group = group;
        c.meta = meta;
        c.past.clear();
        if c.meta.pending_commit.is_none() {
            c.own = None;
        }
        Ok(())
    }

    /// Settles deferred writes of the message secrets (see `send_many` / `receive_many`): each
    /// group of the conversation whose secret tree advanced while writes were deferred writes
    /// its final state once.
    pub(super) fn settle(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        let storage = self.provider.storage();
        storage.set_defer(false);
        if !storage.any_deferred() {
            return Ok(());
        }
        let provider = &self.provider;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        let rewrite = |g: &mut MlsGroup, p: &CairnProvider| {
            // With no past epochs kept inside OpenMLS this deletes nothing; it (re)writes the
            // group's message secrets, which is what is needed.
            g.delete_past_epoch_secrets(p, PastEpochDeletion::before_timestamp(std::time::UNIX_EPOCH))
                .map_err(|e| op_err("write message secrets")(e.to_string()))
        };
        if provider.storage().message_secrets_deferred(&id.0)? {
            rewrite(&mut c.group, provider)?;
        }
        for (g, p) in c.past.values_mut() {
            if p.storage().message_secrets_deferred(&id.0)? {
                rewrite(g, p)?;
            }
        }
        Ok(())
    }

    /// Writes the metadata and commits the operation's writes; rolls back on failure.
    pub(super) fn persist(&mut self, id: &ConversationId) -> Result<(), MlsError> {
        if let Err(e) = self.settle(id) {
            self.rollback(id)?;
            return Err(e);
        }
        let meta = self.conv(id)?.meta.encode();
        self.provider.storage().raw_put(Meta::key(id), meta);
        let done = if self.deferred {
            self.staged.insert(*id);
            self.provider.storage().stage()
        } else {
            self.provider.storage().flush()
        };
        if let Err(e) = done {
            self.rollback(id)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs `f`; on error restores the stored state, on success persists it.
    pub(super) fn atomically<T>(
        &mut self,
        id: &ConversationId,
        f: impl FnOnce(&mut Self) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        match f(self) {
            Ok(v) => {
                self.persist(id)?;
                Ok(v)
            }
            Err(e) => {
                self.rollback(id)?;
                Err(e)
            }
        }
    }
}
