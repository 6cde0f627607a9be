//! Cairn's per-conversation state next to the MLS group: metadata (applied count, pending
//! commit, update schedule) and snapshots of retained past epochs.

use std::collections::BTreeMap;

use cairn_proto::DecodeError;
use cairn_proto::codec::{Reader, Writer};
use openmls::prelude::{GroupId, MlsGroup};
use openmls_traits::OpenMlsProvider as _;

use super::buffer::FutureBuffer;
use super::pending::OwnPending;
use super::{ConversationId, MlsError};
use crate::storage::CairnProvider;

/// Cairn's per-conversation metadata, stored next to the MLS state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) applied: u64,
    pub(super) last_update_ms: u64,
    pub(super) needs_update: bool,
    pub(super) pending_commit: Option<Vec<u8>>,
    /// This device's leave proposal, built after `applied` handshakes and not yet seen in the
    /// order (never beside a pending commit: one own handshake waits at a time).
    pub(super) pending_leave: Option<Vec<u8>>,
}

/// Metadata without a pending leave is written as version 1 (what earlier builds read);
/// version 2 adds the pending-leave tag, which earlier builds refuse instead of misreading.
pub(super) const META_VERSION: u8 = 1;
/// See [`META_VERSION`].
pub(super) const META_VERSION_LEAVE: u8 = 2;

pub(super) const META_PREFIX: &[u8] = b"cairn.conversation\0";

impl Meta {
    pub(super) fn encode(&self) -> Vec<u8> {
        // One own handshake waits at a time (a leaver commits nothing: OpenMLS refuses a
        // commit that removes its committer).
        debug_assert!(self.pending_commit.is_none() || self.pending_leave.is_none());
        let mut w = Writer::with_capacity(32);
        w.u8(if self.pending_leave.is_some() { META_VERSION_LEAVE } else { META_VERSION });
        w.u64(self.applied);
        w.u64(self.last_update_ms);
        w.u8(u8::from(self.needs_update));
        match (&self.pending_commit, &self.pending_leave) {
            (Some(c), _) => {
                w.u8(1);
                w.bytes(c);
            }
            (None, Some(p)) => {
                w.u8(2);
                w.bytes(p);
            }
            (None, None) => w.u8(0),
        }
        w.finish()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != META_VERSION && version != META_VERSION_LEAVE {
            let (what, supported) = ("conversation metadata", META_VERSION_LEAVE);
            return Err(DecodeError::UnsupportedVersion { what, found: version, supported });
        }
        let applied = r.u64("meta.applied")?;
        let last_update_ms = r.u64("meta.last_update_ms")?;
        let needs_update = r.u8("meta.needs_update")? != 0;
        let max = cairn_proto::sequencer::HANDSHAKE_BYTES_MAX;
        let (pending_commit, pending_leave) = match r.u8("meta.pending")? {
            0 => (None, None),
            1 => (Some(r.bytes(max, "meta.pending_commit")?.to_vec()), None),
            2 if version == META_VERSION_LEAVE => (None, Some(r.bytes(max, "meta.pending_leave")?.to_vec())),
            _ => {
                return Err(DecodeError::Invalid {
                    field: "meta.pending",
                    reason: "unknown own-handshake tag",
                });
            }
        };
        r.finish()?;
        Ok(Self { applied, last_update_ms, needs_update, pending_commit, pending_leave })
    }

    pub(super) fn key(id: &ConversationId) -> Vec<u8> {
        let mut k = META_PREFIX.to_vec();
        k.extend_from_slice(&id.0);
        k
    }
}

pub(super) struct Conversation {
    pub(super) group: MlsGroup,
    pub(super) meta: Meta,
    /// Future-epoch application messages with their expected authenticated data.
    pub(super) future: FutureBuffer,
    /// Snapshots of retained past epochs, loaded on demand.
    pub(super) past: BTreeMap<u64, (MlsGroup, CairnProvider)>,
    /// In-memory details of this device's pending commit (see `pending`).
    pub(super) own: Option<OwnPending>,
}

impl Conversation {
    pub(super) fn new(group: MlsGroup, meta: Meta) -> Self {
        Self { group, meta, future: FutureBuffer::default(), past: BTreeMap::new(), own: None }
    }
}

pub(super) const PAST_PREFIX: &[u8] = b"cairn.past\0";

pub(super) fn past_prefix(id: &ConversationId, epoch: u64) -> Vec<u8> {
    let mut p = PAST_PREFIX.to_vec();
    p.extend_from_slice(&id.0);
    p.extend_from_slice(&epoch.to_be_bytes());
    p
}

/// Before a commit is merged: copies the group's state of the ending epoch under a
/// snapshot prefix (raw bytes, no re-encoding) and drops snapshots older than the window.
/// OpenMLS itself keeps no past epochs (its past-epoch store re-serializes every member's
/// leaf on every message, which is O(N) per message); a snapshot costs one copy per commit.
pub(super) fn snapshot_epoch(
    provider: &CairnProvider,
    id: &ConversationId,
    c: &mut Conversation,
    past_epochs_max: usize,
) -> Result<(), MlsError> {
    let epoch = c.group.epoch().as_u64();
    let keep_from = (epoch + 1).saturating_sub(past_epochs_max as u64);
    prune_past(provider, id, c, keep_from)?;
    if past_epochs_max == 0 {
        return Ok(());
    }
    let live = provider.storage();
    let gid = GroupId::from_slice(&id.0);
    let snap = past_prefix(id, epoch);
    for label in crate::storage::GROUP_LABELS {
        let k = live.key(label, &gid)?;
        if let Some(v) = live.raw_get(&k)? {
            let mut sk = snap.clone();
            sk.extend_from_slice(&k);
            // The tree entry is a pointer to a shared blob: the snapshot takes a reference.
            live.retain_blob(&v)?;
            live.raw_put(sk, v);
        }
    }
    Ok(())
}

pub(super) fn prune_past(
    provider: &CairnProvider,
    id: &ConversationId,
    c: &mut Conversation,
    keep_from: u64,
) -> Result<(), MlsError> {
    let storage = provider.storage();
    let mut scope = PAST_PREFIX.to_vec();
    scope.extend_from_slice(&id.0);
    for (k, v) in storage.raw_scan(&scope)? {
        let e = k
            .get(scope.len()..scope.len() + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        if e.is_none_or(|e| e < keep_from) {
            storage.release_blob(&v)?;
            storage.raw_del(k);
        }
    }
    c.past.retain(|e, _| *e >= keep_from);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn metadata_keeps_a_pending_leave_and_stays_readable_by_version_1_builds_without_one() {
        let plain = Meta { applied: 7, last_update_ms: 9, needs_update: true, ..Meta::default() };
        let commit = Meta { pending_commit: Some(vec![1, 2]), ..plain.clone() };
        let leave = Meta { pending_leave: Some(vec![3, 4, 5]), ..plain.clone() };
        for m in [&plain, &commit, &leave] {
            assert_eq!(&Meta::decode(&m.encode()).unwrap(), m);
        }
        // Without a pending leave the bytes are version 1, as earlier builds wrote and read them.
        assert_eq!(plain.encode()[0], META_VERSION);
        assert_eq!(commit.encode()[0], META_VERSION);
        assert_eq!(leave.encode()[0], META_VERSION_LEAVE);
        // A pending-leave tag under version 1, or an unknown tag, is refused, not misread.
        let mut bad = leave.encode();
        bad[0] = META_VERSION;
        assert!(Meta::decode(&bad).is_err());
        let mut bad = commit.encode();
        bad[1 + 8 + 8 + 1] = 3;
        assert!(Meta::decode(&bad).is_err());
        let mut bad = plain.encode();
        bad[0] = 3;
        assert!(matches!(Meta::decode(&bad), Err(DecodeError::UnsupportedVersion { found: 3, .. })));
    }
}
