//! Export and import of a user's data (data portability). An archive is JSON Lines (one
//! [`Record`] per line, the first a [`Record::Header`]), sealed in a passphrase container
//! (`cairn_crypto::container`). Written and read offline, with the node stopped.
//!
//! What it holds: the account (ids, handle, the encrypted keystore), every conversation this
//! device read (with its anchor salt), each conversation's local history (envelopes in stored order: headers, hash
//! links, ciphertexts or erased payloads), the decrypted signed messages this device kept
//! (erased ones are not: they are gone), tombstones of erased messages, and the store
//! receipts kept for own envelopes. What it does not hold: MLS group state (forward secrecy:
//! an import reads and verifies the history; to write in a conversation again, the imported
//! device is added to it like a new device).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use cairn_mls::ConversationId;
use cairn_proto::{Envelope, Id, Limits, Message};
use cairn_store::Store;
use serde::{Deserialize, Serialize};

use crate::db::{Accepted, NodeDb};
use crate::error::NodeError;

/// The `format` of an archive's header.
pub const ARCHIVE_FORMAT: &str = "cairn-export";
/// The archive version this build writes and reads.
pub const ARCHIVE_VERSION: u32 = 1;
/// Longest line read, bytes (an envelope of 256 KiB, hex-encoded, with its fields).
pub const LINE_BYTES_MAX: usize = 600 * 1024;
/// Records read at most.
pub const RECORDS_MAX: usize = 10_000_000;
/// Store receipts exported at most.
pub const RECEIPTS_MAX: usize = 1_000_000;

/// One line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// First line.
    Header {
        /// Always [`ARCHIVE_FORMAT`].
        format: String,
        /// [`ARCHIVE_VERSION`].
        version: u32,
        /// When it was written (Unix ms).
        created_ms: u64,
    },
    /// The account and this device.
    Account {
        /// Account id (`cairn1…`).
        account: String,
        /// Device id.
        device: String,
        /// Claimed handle, if any.
        handle: Option<String>,
        /// The passphrase-encrypted keystore file, hex.
        keystore_hex: String,
    },
    /// A conversation this device read.
    Conversation {
        /// Conversation id, hex.
        id: String,
        /// Its anchor salt, hex (absent for a conversation created before salts): what
        /// `verify` needs to find the anchored heads in the history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor_salt: Option<String>,
    },
    /// An envelope of a conversation's local history, in stored order.
    Envelope {
        /// Conversation id, hex.
        conversation: String,
        /// Envelope id, hex.
        id: String,
        /// The encoded envelope (payload erased or not), hex.
        envelope_hex: String,
    },
    /// A signed message this device decrypted.
    Message {
        /// Conversation id, hex.
        conversation: String,
        /// Envelope id, hex.
        id: String,
        /// Tail position of a text message (0: not text).
        seq: u64,
        /// Sender account (readable copy of what `inner_hex` proves).
        sender: String,
        /// Sender's clock (Unix ms).
        timestamp_ms: u64,
        /// Text, for a text message (readable copy).
        text: Option<String>,
        /// The signed inner message, hex: what `verify` checks.
        inner_hex: String,
    },
    /// A message erased by its author.
    Erased {
        /// The erased envelope, hex.
        id: String,
        /// The redaction that erased it, hex.
        redaction: String,
        /// The redacting account.
        by: String,
    },
    /// A store node's signed receipt for an own envelope.
    Receipt {
        /// Key it is kept under (`receipt/<id>/<store peer>`).
        key: String,
        /// The encoded receipt, hex.
        receipt_hex: String,
    },
}

/// The account part of an export.
pub struct AccountInfo {
    /// Account id text.
    pub account: String,
    /// Device id text.
    pub device: String,
    /// Handle.
    pub handle: Option<String>,
    /// The keystore file's bytes.
    pub keystore: Vec<u8>,
}

fn line(out: &mut Vec<u8>, r: &Record) -> Result<(), NodeError> {
    serde_json::to_writer(&mut *out, r).map_err(|e| NodeError::Internal(e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

/// Writes the JSON Lines of an export of `db` and `history`.
pub fn export(account: AccountInfo, db: &NodeDb, history: &Store, now_ms: u64) -> Result<Vec<u8>, NodeError> {
    let mut out = Vec::new();
    let st = |e: cairn_store::StoreError| NodeError::Storage(e.to_string());
    line(
        &mut out,
        &Record::Header { format: ARCHIVE_FORMAT.into(), version: ARCHIVE_VERSION, created_ms: now_ms },
    )?;
    line(
        &mut out,
        &Record::Account {
            account: account.account,
            device: account.device,
            handle: account.handle,
            keystore_hex: hex::encode(&account.keystore),
        },
    )?;
    let convs: BTreeSet<[u8; 32]> = db.conversations_with_rows()?;
    for conv in &convs {
        let conv_hex = hex::encode(conv);
        let anchor_salt = db.anchor_salt(conv)?.map(hex::encode);
        line(&mut out, &Record::Conversation { id: conv_hex.clone(), anchor_salt })?;
        let topic = ConversationId(*conv).topic();
        let mut from = 0;
        loop {
            let page = history.page(&topic, from, 256).map_err(st)?;
            for (_, env) in page.entries {
                let id = env.id();
                let envelope_hex = hex::encode(env.encode());
                line(
                    &mut out,
                    &Record::Envelope { conversation: conv_hex.clone(), id: id.to_hex(), envelope_hex },
                )?;
                if let Some(row) = db.redaction(&id)?
                    && row.applied
                {
                    let (redaction, by) = (row.redaction.to_hex(), row.by.to_text());
                    line(&mut out, &Record::Erased { id: id.to_hex(), redaction, by })?;
                    continue;
                }
                if let Some(plain) = db.plain(&id)? {
                    let m = Message::decode(&plain, db.limits())
                        .map_err(|e| NodeError::Storage(e.to_string()))?;
                    let text = match m.body.split_first() {
                        Some((&crate::engine::KIND_TEXT, rest)) => {
                            Some(String::from_utf8_lossy(rest).into_owned())
                        }
                        _ => None,
                    };
                    line(
                        &mut out,
                        &Record::Message {
                            conversation: conv_hex.clone(),
                            id: id.to_hex(),
                            seq: db.seq_of(&id)?.unwrap_or(0),
                            sender: m.sender.account.to_text(),
                            timestamp_ms: m.timestamp_ms,
                            text,
                            inner_hex: hex::encode(&plain),
                        },
                    )?;
                }
            }
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
    }
    for (key, value) in history.keys_with_prefix("receipt/", RECEIPTS_MAX).map_err(st)? {
        line(&mut out, &Record::Receipt { key, receipt_hex: hex::encode(value) })?;
    }
    Ok(out)
}

/// Parses an archive's JSON Lines (bounded), checking the header first.
pub fn parse(jsonl: &[u8]) -> Result<Vec<Record>, NodeError> {
    let bad = |why: String| NodeError::BadRequest(format!("archive: {why}; nothing was imported"));
    let mut records = Vec::new();
    for (n, raw) in jsonl.split(|b| *b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        if raw.len() > LINE_BYTES_MAX {
            return Err(bad(format!("line {} is longer than {LINE_BYTES_MAX} bytes", n + 1)));
        }
        if records.len() >= RECORDS_MAX {
            return Err(bad(format!("more than {RECORDS_MAX} records")));
        }
        let r: Record = serde_json::from_slice(raw).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
        if records.is_empty() {
            match &r {
                Record::Header { format, version, .. }
                    if format == ARCHIVE_FORMAT && *version == ARCHIVE_VERSION => {}
                Record::Header { format, version, .. } => {
                    return Err(bad(format!(
                        "format {format} version {version}; this build reads {ARCHIVE_FORMAT} version {ARCHIVE_VERSION}"
                    )));
                }
                _ => return Err(bad("the first line is not a header".into())),
            }
        }
        records.push(r);
    }
    if records.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(records)
}

/// The keystore bytes and handle of an archive's account record.
pub fn account_of(records: &[Record]) -> Result<(Vec<u8>, Option<String>), NodeError> {
    match records.iter().find(|r| matches!(r, Record::Account { .. })) {
        Some(Record::Account { keystore_hex, handle, .. }) => {
            let ks = hex::decode(keystore_hex).map_err(|e| {
                NodeError::BadRequest(format!("archive: keystore: {e}; nothing was imported"))
            })?;
            Ok((ks, handle.clone()))
        }
        _ => Err(NodeError::BadRequest("the archive holds no account; nothing was imported".into())),
    }
}

fn unhex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], NodeError> {
    let v = hex::decode(s).map_err(|e| NodeError::BadRequest(format!("archive: {what}: {e}")))?;
    v.try_into().map_err(|_| NodeError::BadRequest(format!("archive: {what}: wrong length")))
}

/// What an import restored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Conversations.
    pub conversations: usize,
    /// Envelopes written to the local history.
    pub envelopes: usize,
    /// Signed messages restored.
    pub messages: usize,
}

/// Restores the conversations, histories and messages of `records` (already parsed, the
/// keystore written by the caller) into an empty `db` and `history`. Every envelope and
/// message is checked before anything is written: ids against headers, messages against
/// their envelopes and signatures.
pub fn import(records: &[Record], db: &NodeDb, history: &Store, now_ms: u64) -> Result<Imported, NodeError> {
    let limits: Limits = *db.limits();
    let bad = |why: String| NodeError::BadRequest(format!("archive: {why}; nothing was imported"));
    let mut convs: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut salts: Vec<([u8; 32], [u8; 32])> = Vec::new();
    let mut envs: Vec<Envelope> = Vec::new();
    let mut rows: Vec<(u64, Accepted)> = Vec::new();
    let mut erased: Vec<([u8; 32], Id, Id, String)> = Vec::new();
    let mut receipts: Vec<(String, Vec<u8>)> = Vec::new();
    let mut headers = std::collections::HashMap::new();
    for r in records {
        match r {
            Record::Header { .. } | Record::Account { .. } => {}
            Record::Conversation { id, anchor_salt } => {
                let conv = unhex::<32>(id, "conversation id")?;
                convs.insert(conv);
                if let Some(s) = anchor_salt {
                    salts.push((conv, unhex::<32>(s, "anchor salt")?));
                }
            }
            Record::Envelope { conversation, id, envelope_hex } => {
                let conv = unhex::<32>(conversation, "conversation id")?;
                let bytes = hex::decode(envelope_hex).map_err(|e| bad(format!("envelope {id}: {e}")))?;
                let env =
                    Envelope::decode(&bytes, &limits).map_err(|e| bad(format!("envelope {id}: {e}")))?;
                if env.id().to_hex() != *id || env.header.topic != ConversationId(conv).topic() {
                    return Err(bad(format!("envelope {id} does not match its id or conversation")));
                }
                headers.insert(env.id(), (conv, env.header.clone()));
                envs.push(env);
            }
            Record::Message { conversation, id, seq, inner_hex, .. } => {
                let conv = unhex::<32>(conversation, "conversation id")?;
                let id = Id(unhex::<32>(id, "message id")?);
                let bytes =
                    hex::decode(inner_hex).map_err(|e| bad(format!("message {}: {e}", id.short())))?;
                let inner = Message::decode(&bytes, &limits)
                    .map_err(|e| bad(format!("message {}: {e}", id.short())))?;
                let (_, header) = headers
                    .get(&id)
                    .ok_or_else(|| bad(format!("message {} before its envelope", id.short())))?;
                if inner.verify().is_err() || inner.header_mismatch(header).is_some() {
                    return Err(bad(format!(
                        "message {} is not the signed message of its envelope",
                        id.short()
                    )));
                }
                let text = *seq > 0;
                rows.push((*seq, Accepted { conv, id, inner, text, after_gap: false, hidden: false }));
            }
            Record::Erased { id, redaction, by } => {
                let by_ok = cairn_proto::AccountId::from_text(by).is_ok();
                if !by_ok {
                    return Err(bad(format!("erased {id}: bad account")));
                }
                let target = Id(unhex::<32>(id, "erased id")?);
                let Some((conv, _)) = headers.get(&target) else {
                    return Err(bad(format!("erased {id} follows no envelope of the archive")));
                };
                erased.push((*conv, target, Id(unhex::<32>(redaction, "redaction id")?), by.clone()));
            }
            Record::Receipt { key, receipt_hex } => {
                if !key.starts_with("receipt/") || key.len() > 256 {
                    return Err(bad(format!("receipt key {key}")));
                }
                receipts.push((
                    key.clone(),
                    hex::decode(receipt_hex).map_err(|e| bad(format!("receipt {key}: {e}")))?,
                ));
            }
        }
    }
    // Text messages keep their order: sorted by their exported tail position.
    rows.sort_by_key(|(seq, r)| (u64::from(!r.text), *seq));
    let st = |e: cairn_store::StoreError| NodeError::Storage(e.to_string());
    for chunk in envs.chunks(256) {
        history.append(chunk).map_err(st)?;
    }
    let accepted: Vec<Accepted> = rows.into_iter().map(|(_, r)| r).collect();
    let tx = db.begin()?;
    db.accept_in(&tx, &accepted)?;
    tx.commit().map_err(|e| NodeError::Storage(e.to_string()))?;
    for (conv, target, redaction, by) in &erased {
        let by = cairn_proto::AccountId::from_text(by).map_err(|e| bad(e.to_string()))?;
        db.redact(conv, target, *redaction, by)?;
    }
    for c in &convs {
        db.archive_conversation(c, now_ms)?;
    }
    for (c, salt) in &salts {
        db.put_anchor_salt(c, salt)?;
    }
    for (k, v) in &receipts {
        history.put_key(k, v).map_err(st)?;
    }
    Ok(Imported { conversations: convs.len(), envelopes: envs.len(), messages: accepted.len() })
}

/// Opens a stopped node's databases for export or import: `node.redb` (with the keyring) and
/// the local history.
pub fn open_home(
    home: &Path,
    device_key: &ed25519_dalek::SigningKey,
    limits: Limits,
) -> Result<(NodeDb, Arc<Store>), NodeError> {
    let busy = |e: String| {
        NodeError::Conflict(format!(
            "{e}: stop the node first (`cairn shutdown` or Ctrl-C), then run this again"
        ))
    };
    std::fs::create_dir_all(home.join("net"))
        .map_err(|e| NodeError::Storage(format!("{}: {e}", home.display())))?;
    let db = redb::Database::create(home.join("node.redb")).map_err(|e| busy(e.to_string()))?;
    let keyring = crate::keyring::Keyring::open(&home.join(crate::service::KEYRING_FILE), device_key)?;
    let ndb = NodeDb::with_keyring(Arc::new(db), limits, Arc::new(keyring))?;
    let history =
        Store::open(&home.join("net").join("history.redb"), limits).map_err(|e| busy(e.to_string()))?;
    Ok((ndb, Arc::new(history)))
}
