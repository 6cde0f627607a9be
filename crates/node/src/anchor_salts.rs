//! Each conversation's anchor salt, kept in `node.redb` so that `verify` (which runs beside
//! the engine, and on conversations restored from an archive without MLS state) can map an
//! anchored keyed hash back to a head of the local history.
//!
//! Table `node_anchor_salts`: conversation → the salt, sealed under the conversation's data
//! key (`crate::keyring`). Forgetting the conversation destroys that key first, so the
//! salt, and with it any link from the ledger's anchors to envelope ids, goes with it; the row
//! is deleted too.

use cairn_mls::anchor_salt::{ANCHOR_SALT_BYTES, salted_head};
use cairn_proto::Id;
use redb::{ReadableDatabase, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const SALTS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_anchor_salts");

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// Creates the table (called from [`NodeDb::new`]).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(SALTS).map_err(storage)?;
    Ok(())
}

/// The head of the local history that an anchored `head` names: itself when the conversation
/// has no salt, else the local id whose salted hash it is (`None`: no local envelope).
pub fn unsalt(salt: Option<&[u8; ANCHOR_SALT_BYTES]>, head: &Id, local: &[Id]) -> Option<Id> {
    match salt {
        None => local.contains(head).then_some(*head),
        Some(s) => local.iter().find(|id| salted_head(s, id) == *head).copied(),
    }
}

impl NodeDb {
    /// Keeps `conv`'s anchor salt (sealed). Idempotent.
    pub fn put_anchor_salt(&self, conv: &[u8; 32], salt: &[u8; ANCHOR_SALT_BYTES]) -> Result<(), NodeError> {
        let sealed = self.keyring().seal(conv, &Id(*conv), salt)?;
        let tx = self.begin()?;
        tx.open_table(SALTS).map_err(storage)?.insert(conv, sealed.as_slice()).map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Whether a salt is kept for `conv` (no unsealing).
    pub fn has_anchor_salt(&self, conv: &[u8; 32]) -> Result<bool, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        Ok(tx.open_table(SALTS).map_err(storage)?.get(conv).map_err(storage)?.is_some())
    }

    /// `conv`'s anchor salt; `None` when the conversation has none (created before salts) or
    /// was forgotten.
    pub fn anchor_salt(&self, conv: &[u8; 32]) -> Result<Option<[u8; ANCHOR_SALT_BYTES]>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(SALTS).map_err(storage)?;
        let Some(sealed) = t.get(conv).map_err(storage)? else { return Ok(None) };
        let Some(plain) = self.keyring().open_sealed(&Id(*conv), sealed.value())? else { return Ok(None) };
        <[u8; ANCHOR_SALT_BYTES]>::try_from(plain.as_slice())
            .map(Some)
            .map_err(|_| storage("a kept anchor salt has the wrong length"))
    }

    /// Deletes `conv`'s salt row (its key is already destroyed when a conversation is forgotten).
    pub fn forget_anchor_salt(&self, conv: &[u8; 32]) -> Result<(), NodeError> {
        let tx = self.begin()?;
        tx.open_table(SALTS).map_err(storage)?.remove(conv).map_err(storage)?;
        tx.commit().map_err(storage)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn db() -> (tempfile::TempDir, NodeDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.redb");
        let device_key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let keyring =
            crate::keyring::Keyring::open(&dir.path().join("keyring"), &device_key).expect("keyring");
        let db = redb::Database::create(path).expect("db");
        let db = NodeDb::with_keyring(Arc::new(db), cairn_proto::Limits::default(), Arc::new(keyring))
            .expect("node db");
        (dir, db)
    }

    #[test]
    fn a_salt_is_kept_sealed_and_goes_with_the_conversation_key() {
        let (_dir, db) = db();
        let conv = [3; 32];
        assert_eq!(db.anchor_salt(&conv).expect("read"), None);
        db.put_anchor_salt(&conv, &[9; 32]).expect("put");
        assert!(db.has_anchor_salt(&conv).expect("has"));
        assert_eq!(db.anchor_salt(&conv).expect("read"), Some([9; 32]));
        db.keyring().forget(&conv).expect("forget key");
        assert_eq!(db.anchor_salt(&conv).expect("read"), None, "unreadable once the key is gone");
        db.forget_anchor_salt(&conv).expect("delete");
        assert!(!db.has_anchor_salt(&conv).expect("has"));
    }

    #[test]
    fn an_anchored_hash_maps_back_to_its_local_head_only_with_the_salt() {
        let local = [Id([1; 32]), Id([2; 32])];
        let anchored = salted_head(&[5; 32], &local[1]);
        assert_eq!(unsalt(Some(&[5; 32]), &anchored, &local), Some(local[1]));
        assert_eq!(unsalt(Some(&[6; 32]), &anchored, &local), None, "another salt finds nothing");
        assert_eq!(unsalt(None, &local[0], &local), Some(local[0]), "unsalted groups anchor the id");
    }
}
