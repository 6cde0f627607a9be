//! Typed entries over the raw overlay: JSON (or [`crate::compact`]) encoding, list-valued
//! entries, and the reference-counted blobs that hold trees.

use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BLOB_PREFIX, BLOB_RC_PREFIX, BLOB_SEQ, COMPACT, MESSAGE_SECRETS, MlsStorage, POINTER, StorageError, TREE,
};

impl MlsStorage {
    pub(super) fn put<K: Serialize + ?Sized, T: Serialize + ?Sized>(
        &self,
        l: &[u8],
        k: &K,
        v: &T,
    ) -> Result<(), StorageError> {
        let key = self.key(l, k)?;
        if l == MESSAGE_SECRETS {
            let mut s = self.lock();
            if s.defer {
                s.stats.deferred += 1;
                s.deferred.insert(key);
                return Ok(());
            }
        }
        let started = Instant::now();
        let val = if l == TREE {
            // The tree is O(N): compact binary (a third of the JSON size, faster to encode).
            let mut b = vec![COMPACT];
            b.extend_from_slice(&crate::compact::to_vec(v).map_err(compact_err)?);
            b
        } else {
            serde_json::to_vec(v)?
        };
        self.lock()
            .stats
            .writes
            .entry(String::from_utf8_lossy(l).into_owned())
            .or_default()
            .add(val.len(), Some(started));
        if l == TREE {
            // The tree (O(N) bytes) goes to a reference-counted blob; the entry holds a pointer,
            // so a snapshot of the epoch copies 9 bytes instead of the whole tree.
            if let Some(old) = self.raw_get(&key)? {
                self.release_blob(&old)?;
            }
            let seq = match self.raw_get(BLOB_SEQ)? {
                Some(b) => u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])),
                None => 0,
            } + 1;
            let id = seq.to_be_bytes();
            self.raw_put(BLOB_SEQ.to_vec(), id.to_vec());
            self.raw_put(blob_key(&id), val);
            self.raw_put(blob_rc_key(&id), 1u32.to_be_bytes().to_vec());
            let mut ptr = vec![POINTER];
            ptr.extend_from_slice(&id);
            self.raw_put(key, ptr);
            return Ok(());
        }
        self.raw_put(key, val);
        Ok(())
    }

    /// Counts one more reference to the blob `value` points to (no-op for other values).
    pub(crate) fn retain_blob(&self, value: &[u8]) -> Result<(), StorageError> {
        let Some(id) = blob_id(value) else { return Ok(()) };
        let rc = self.blob_rc(&id)?;
        self.raw_put(blob_rc_key(&id), (rc + 1).to_be_bytes().to_vec());
        Ok(())
    }

    /// Drops one reference to the blob `value` points to, deleting it with the last one
    /// (no-op for other values).
    pub(crate) fn release_blob(&self, value: &[u8]) -> Result<(), StorageError> {
        let Some(id) = blob_id(value) else { return Ok(()) };
        let rc = self.blob_rc(&id)?;
        if rc <= 1 {
            self.raw_del(blob_rc_key(&id));
            self.raw_del(blob_key(&id));
        } else {
            self.raw_put(blob_rc_key(&id), (rc - 1).to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn blob_rc(&self, id: &[u8; 8]) -> Result<u32, StorageError> {
        Ok(self
            .raw_get(&blob_rc_key(id))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map_or(0, u32::from_be_bytes))
    }

    pub(super) fn get<K: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        l: &[u8],
        k: &K,
    ) -> Result<Option<T>, StorageError> {
        let raw = match self.raw_get(&self.key(l, k)?)? {
            Some(p) => match blob_id(&p) {
                Some(id) => self.raw_get(&blob_key(&id))?,
                None => Some(p),
            },
            None => None,
        };
        match raw {
            Some(b) => {
                let started = Instant::now();
                let v = match b.split_first() {
                    Some((&COMPACT, rest)) => crate::compact::from_slice(rest).map_err(compact_err)?,
                    _ => serde_json::from_slice(&b)?,
                };
                self.lock()
                    .stats
                    .reads
                    .entry(String::from_utf8_lossy(l).into_owned())
                    .or_default()
                    .add(b.len(), Some(started));
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    pub(super) fn del<K: Serialize + ?Sized>(&self, l: &[u8], k: &K) -> Result<(), StorageError> {
        let key = self.key(l, k)?;
        self.lock().stats.deletes.entry(String::from_utf8_lossy(l).into_owned()).or_default().add(0, None);
        if l == TREE
            && let Some(old) = self.raw_get(&key)?
        {
            self.release_blob(&old)?;
        }
        self.raw_del(key);
        Ok(())
    }

    // List-valued entries: a JSON array of the JSON encodings of the items.
    pub(super) fn list<K: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        l: &[u8],
        k: &K,
    ) -> Result<Vec<T>, StorageError> {
        let raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        raw.iter().map(|b| serde_json::from_slice(b).map_err(StorageError::from)).collect()
    }

    pub(super) fn push<K: Serialize + ?Sized, T: Serialize>(
        &self,
        l: &[u8],
        k: &K,
        v: &T,
    ) -> Result<(), StorageError> {
        let mut raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        raw.push(serde_json::to_vec(v)?);
        self.put(l, k, &raw)
    }

    pub(super) fn pull<K: Serialize + ?Sized, T: Serialize>(
        &self,
        l: &[u8],
        k: &K,
        v: &T,
    ) -> Result<(), StorageError> {
        let mut raw: Vec<Vec<u8>> = self.get(l, k)?.unwrap_or_default();
        let item = serde_json::to_vec(v)?;
        if let Some(pos) = raw.iter().position(|x| *x == item) {
            raw.remove(pos);
        }
        self.put(l, k, &raw)
    }
}

fn compact_err(e: crate::compact::Error) -> StorageError {
    StorageError::Encoding(<serde_json::Error as serde::de::Error>::custom(e))
}

fn blob_id(value: &[u8]) -> Option<[u8; 8]> {
    match value.split_first() {
        Some((&POINTER, id)) => id.try_into().ok(),
        _ => None,
    }
}

fn blob_key(id: &[u8; 8]) -> Vec<u8> {
    [BLOB_PREFIX, id].concat()
}

fn blob_rc_key(id: &[u8; 8]) -> Vec<u8> {
    [BLOB_RC_PREFIX, id].concat()
}
