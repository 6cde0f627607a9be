//! Invitation requests: Welcomes from accounts the user has not accepted wait here, in
//! `node.redb`, until the user accepts (the node joins) or declines them — like message
//! requests in Signal. Nothing about a waiting Welcome reaches MLS state or the mesh.
//!
//! Tables (contact data is sealed at rest with the keyring's contacts key, so a copy of
//! `node.redb` names no inviter or accepted account in clear):
//! - `node_requests`: conversation id → version 2, the inviter's tag (a keyed hash, to count
//!   requests per inviter without opening them), and the sealed [`InviteRequest`] record with
//!   the Welcome bundle.
//! - `node_accepted`: the account's tag → when the user accepted it (its Welcomes join at once).
//! - `node_declined`: conversation id → when the user declined it (a re-delivered Welcome for
//!   it is ignored).
//!
//! Every table is bounded; see the constants for the overflow policy of each.

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::{AccountId, DeviceId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::db::NodeDb;
use crate::error::NodeError;

const REQUESTS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("node_requests");
const ACCEPTED: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_accepted");
const DECLINED: TableDefinition<'_, &[u8; 32], u64> = TableDefinition::new("node_declined");

/// Requests kept at most. Overflow policy: the newest Welcome is refused
/// ([`RequestRefused::Full`]); a waiting request is never evicted and accepted state is never
/// touched. The inviter may invite again once the user has cleared the list.
pub const REQUESTS_MAX: u64 = 256;
/// Requests one inviting account may have waiting at most (newest refused), so a single
/// stranger cannot take the whole list.
pub const REQUESTS_PER_INVITER_MAX: usize = 8;
/// Largest Welcome bundle a request keeps, bytes (a Welcome to a group of ≈ 6,000 devices);
/// a larger one is refused ([`RequestRefused::TooLarge`]).
pub const REQUEST_BUNDLE_BYTES_MAX: usize = 2 << 20;
/// Bytes of Welcome bundles kept in all requests at most (newest refused).
pub const REQUESTS_BYTES_MAX: u64 = 64 << 20;
/// Accounts remembered as accepted at most. Overflow policy: a request accepted while the
/// table is full still joins, but its inviter is not remembered (its next Welcome asks again);
/// an accepted account is never evicted.
pub const ACCEPTED_MAX: u64 = 4_096;
/// Declined conversations remembered at most. Overflow policy: the oldest-keyed decline is
/// forgotten (a re-delivered Welcome for it only becomes a request again).
pub const DECLINED_MAX: u64 = 1_024;
/// Format version of a stored request record (inside the seal).
const REQUEST_VERSION: u8 = 1;
/// Format version of a stored request row: tag and sealed record.
const REQUEST_ROW_VERSION: u8 = 2;

fn storage(e: impl std::fmt::Display) -> NodeError {
    NodeError::Storage(e.to_string())
}

/// A Welcome waiting for the user's consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRequest {
    /// The conversation it invites to (also the request's id).
    pub conversation: [u8; 32],
    /// The account that invited (the committer that added this device).
    pub inviter: AccountId,
    /// The inviting device.
    pub inviter_device: DeviceId,
    /// When the Welcome arrived (Unix ms).
    pub received_at_ms: u64,
    /// Member devices of the conversation, this device included.
    pub members: u32,
}

/// Why a Welcome did not become a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefused {
    /// The list holds [`REQUESTS_MAX`] requests or [`REQUESTS_BYTES_MAX`] bytes.
    #[error("the request list is full ({max} requests or their bytes): decline or accept some first")]
    Full {
        /// Requests kept at most.
        max: u64,
    },
    /// The inviter already has [`REQUESTS_PER_INVITER_MAX`] requests waiting.
    #[error("this inviter already has {max} requests waiting: answer those first")]
    InviterFull {
        /// Requests per inviter at most.
        max: usize,
    },
    /// The Welcome is over [`REQUEST_BUNDLE_BYTES_MAX`].
    #[error("the Welcome is {len} bytes, over the {max} a request keeps")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The user declined this conversation.
    #[error("the user declined this conversation")]
    Declined,
    /// A request for this conversation is already waiting.
    #[error("a request for this conversation is already waiting")]
    Exists,
}

impl InviteRequest {
    fn encode_with(&self, bundle: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(96 + bundle.len());
        w.u8(REQUEST_VERSION);
        w.raw(&self.inviter.0);
        w.raw(&self.inviter_device.0);
        w.u64(self.received_at_ms);
        w.u32(self.members);
        w.bytes(bundle);
        w.finish()
    }

    /// Decodes a stored record: the request and its bundle.
    fn decode(conversation: [u8; 32], bytes: &[u8]) -> Result<(Self, Vec<u8>), DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("invite request", REQUEST_VERSION)?;
        let inviter = AccountId(r.array("request.inviter")?);
        let inviter_device = DeviceId(r.array("request.inviter_device")?);
        let received_at_ms = r.u64("request.received_at_ms")?;
        let members = r.u32("request.members")?;
        let bundle = r.bytes(REQUEST_BUNDLE_BYTES_MAX, "request.bundle")?.to_vec();
        r.finish()?;
        Ok((Self { conversation, inviter, inviter_device, received_at_ms, members }, bundle))
    }
}

/// Creates the tables (at open).
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), NodeError> {
    tx.open_table(REQUESTS).map_err(storage)?;
    tx.open_table(ACCEPTED).map_err(storage)?;
    tx.open_table(DECLINED).map_err(storage)?;
    Ok(())
}

impl NodeDb {
    /// Keeps a Welcome as a request, within the bounds (durable when this returns `Ok`).
    pub fn request_put(&self, req: &InviteRequest, bundle: &[u8]) -> Result<(), RequestOrStorage> {
        if bundle.len() > REQUEST_BUNDLE_BYTES_MAX {
            return Err(RequestRefused::TooLarge { len: bundle.len(), max: REQUEST_BUNDLE_BYTES_MAX }.into());
        }
        let tx = self.begin()?;
        {
            if tx.open_table(DECLINED).map_err(storage)?.get(&req.conversation).map_err(storage)?.is_some() {
                return Err(RequestRefused::Declined.into());
            }
            let mut t = tx.open_table(REQUESTS).map_err(storage)?;
            if t.get(&req.conversation).map_err(storage)?.is_some() {
                return Err(RequestRefused::Exists.into());
            }
            if t.len().map_err(storage)? >= REQUESTS_MAX {
                return Err(RequestRefused::Full { max: REQUESTS_MAX }.into());
            }
            // bounded scan: at most REQUESTS_MAX rows
            let tag = self.keyring().contact_tag(&req.inviter.0);
            let (mut bytes, mut same) = (bundle.len() as u64, 0usize);
            for row in t.iter().map_err(storage)? {
                let (_, v) = row.map_err(storage)?;
                bytes = bytes.saturating_add(v.value().len() as u64);
                if v.value().get(1..33) == Some(tag.as_slice()) {
                    same += 1;
                }
            }
            if same >= REQUESTS_PER_INVITER_MAX {
                return Err(RequestRefused::InviterFull { max: REQUESTS_PER_INVITER_MAX }.into());
            }
            if bytes > REQUESTS_BYTES_MAX {
                return Err(RequestRefused::Full { max: REQUESTS_MAX }.into());
            }
            let sealed =
                self.keyring().seal_contact(&request_aad(&req.conversation), &req.encode_with(bundle))?;
            let mut row = Vec::with_capacity(33 + sealed.len());
            row.push(REQUEST_ROW_VERSION);
            row.extend_from_slice(&tag);
            row.extend_from_slice(&sealed);
            t.insert(&req.conversation, row.as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(())
    }

    /// The waiting requests, oldest conversation id first (at most [`REQUESTS_MAX`]).
    pub fn requests(&self) -> Result<Vec<InviteRequest>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(REQUESTS).map_err(storage)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            out.push(self.open_request(k.value(), v.value())?.0);
        }
        Ok(out)
    }

    /// One request and its Welcome bundle.
    pub fn request(&self, conversation: &[u8; 32]) -> Result<Option<(InviteRequest, Vec<u8>)>, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(REQUESTS).map_err(storage)?;
        let Some(v) = t.get(conversation).map_err(storage)? else { return Ok(None) };
        Ok(Some(self.open_request(conversation, v.value())?))
    }

    fn open_request(
        &self,
        conversation: &[u8; 32],
        row: &[u8],
    ) -> Result<(InviteRequest, Vec<u8>), NodeError> {
        if row.len() < 33 || row[0] != REQUEST_ROW_VERSION {
            return Err(storage("a stored invitation request has an unknown format"));
        }
        let plain = self.keyring().open_contact(&request_aad(conversation), &row[33..])?;
        InviteRequest::decode(*conversation, &plain).map_err(storage)
    }

    /// Removes a request; with `declined`, remembers the decline (bounded: the oldest-keyed
    /// decline is forgotten when full).
    pub fn request_remove(
        &self,
        conversation: &[u8; 32],
        declined: bool,
        now_ms: u64,
    ) -> Result<(), NodeError> {
        let tx = self.begin()?;
        {
            tx.open_table(REQUESTS).map_err(storage)?.remove(conversation).map_err(storage)?;
            if declined {
                let mut d = tx.open_table(DECLINED).map_err(storage)?;
                if d.len().map_err(storage)? >= DECLINED_MAX {
                    let first = d.first().map_err(storage)?.map(|(k, _)| *k.value());
                    if let Some(k) = first {
                        d.remove(&k).map_err(storage)?;
                    }
                }
                d.insert(conversation, now_ms).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }

    /// Remembers an accepted account (not when [`ACCEPTED_MAX`] are: see its policy).
    pub fn accept_account(&self, account: &AccountId, now_ms: u64) -> Result<(), NodeError> {
        let tx = self.begin()?;
        {
            let mut t = tx.open_table(ACCEPTED).map_err(storage)?;
            let tag = self.keyring().contact_tag(&account.0);
            if t.get(&tag).map_err(storage)?.is_none() && t.len().map_err(storage)? >= ACCEPTED_MAX {
                tracing::warn!(
                    "{ACCEPTED_MAX} accounts accepted already: {} not remembered",
                    account.to_text()
                );
            } else {
                t.insert(&tag, now_ms).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }

    /// Whether the user accepted this account's invitations.
    pub fn is_accepted(&self, account: &AccountId) -> Result<bool, NodeError> {
        let tx = self.database().begin_read().map_err(storage)?;
        let t = tx.open_table(ACCEPTED).map_err(storage)?;
        Ok(t.get(&self.keyring().contact_tag(&account.0)).map_err(storage)?.is_some())
    }
}

/// Associated data of a sealed request: its conversation (a row cannot be moved to another).
fn request_aad(conversation: &[u8; 32]) -> Vec<u8> {
    let mut aad = b"cairn 2026-12 request v1".to_vec();
    aad.extend_from_slice(conversation);
    aad
}

/// A Welcome refused as a request, or the database failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestOrStorage {
    /// Refused by a bound or a decline.
    #[error(transparent)]
    Refused(#[from] RequestRefused),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] NodeError),
}
