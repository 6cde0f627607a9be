//! Application messages: encrypt, decrypt (current, retained past and future epochs), and the
//! header binding (authenticated data).

use cairn_proto::DeviceCert;
use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::prelude::{
    GroupId, MlsGroup, ProcessMessageError, ProcessedMessage, ProcessedMessageContent, ProtocolMessage,
    ValidationError,
};
use openmls_traits::OpenMlsProvider as _;

use super::buffer::{Limits, Refused};
use super::commit::Event;
use super::error::{check_aad, op_err};
use super::state::past_prefix;
use super::{Client, ConversationId, MlsError, parse_message, to_bytes};
use crate::credential::cert_of;
use crate::storage::StorageError;

/// Largest application message ciphertext accepted, in bytes.
pub const APPLICATION_BYTES_MAX: usize = 256 * 1024;

/// Largest authenticated data bound to an application message (the caller's header binding,
/// e.g. a 32-byte hash of the envelope header), in bytes.
pub const AAD_BYTES_MAX: usize = 256;

/// A decrypted application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The sending device's certificate (its chain was checked when it joined).
    pub sender: DeviceCert,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// The plaintext.
    pub body: Vec<u8>,
    /// For a message released from the future-epoch buffer: BLAKE3 of the MLS message bytes
    /// it was decrypted from, so the caller can tell which of its held envelopes it is (two
    /// concurrent messages may share topic, timestamp and parents). `None` otherwise.
    pub wire: Option<Box<[u8; 32]>>,
}

/// Why an application message was dropped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From an epoch older than [`Config::past_epochs_max`] allows: its keys are gone.
    TooOld,
    /// Already decrypted once (a replay or a duplicate delivery).
    Duplicate,
    /// For a future epoch whose buffer quota
    /// ([`Config::future_messages_per_epoch_max`](super::Config::future_messages_per_epoch_max),
    /// [`Config::future_bytes_per_epoch_max`](super::Config::future_bytes_per_epoch_max)) is
    /// full. Receive it again after the next epoch change.
    BufferFull,
    /// For an epoch more than
    /// [`Config::future_epochs_ahead_max`](super::Config::future_epochs_ahead_max) ahead.
    TooFarAhead,
    /// This device's own message, echoed back.
    Own,
    /// The message's authenticated data (in clear, bound to its ciphertext and signature) is
    /// not the one the caller expected: the ciphertext was re-wrapped into another envelope.
    /// Refused before any decryption, so no ratchet key is consumed.
    AadMismatch,
}

/// What became of a received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Decrypted.
    Message(Delivered),
    /// For an epoch this device has not reached yet; held and retried after [`Client::sync`].
    Buffered,
    /// Dropped, with the reason.
    Dropped(Dropped),
}

impl Client {
    /// Encrypts an application message for the conversation's current epoch. `aad` (at most
    /// [`AAD_BYTES_MAX`] bytes) travels in clear in the MLS PrivateMessage's
    /// `authenticated_data`, bound to the ciphertext and the sender's signature; receivers
    /// pass the bytes they expect to [`Client::receive`].
    pub fn send(&mut self, id: &ConversationId, body: &[u8], aad: &[u8]) -> Result<Vec<u8>, MlsError> {
        let mut out = self.send_many(id, &[(body, aad)])?;
        out.pop().ok_or(MlsError::Operation { op: "send", reason: "no output".into() })
    }

    /// Encrypts several `(body, aad)` messages (see [`Client::send`]) with one durable write.
    pub fn send_many(
        &mut self,
        id: &ConversationId,
        messages: &[(&[u8], &[u8])],
    ) -> Result<Vec<Vec<u8>>, MlsError> {
        for (_, aad) in messages {
            check_aad(aad)?;
        }
        self.atomically(id, |s| {
            let provider = &s.provider;
            let signer = &s.signer;
            let c = s.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
            if !c.group.is_active() {
                return Err(MlsError::NotMember);
            }
            if c.group.has_pending_proposals() {
                return Err(MlsError::PendingProposals);
            }
            // OpenMLS rewrites the whole secret tree after every message; only the state after
            // the last one is encoded (settled in `persist`, same transaction).
            provider.storage().set_defer(true);
            let mut out = Vec::with_capacity(messages.len());
            for (body, aad) in messages {
                // Consumed by the next message only (OpenMLS resets it after each).
                c.group.set_aad(aad.to_vec());
                let m = c
                    .group
                    .create_message(provider, signer, body)
                    .map_err(|e| op_err("encrypt")(e.to_string()))?;
                out.push(to_bytes(&m)?);
            }
            Ok(out)
        })
    }

    /// Decrypts a received application message (see [`Received`]). Its clear authenticated
    /// data must equal `expected_aad` (at most [`AAD_BYTES_MAX`] bytes), compared before any
    /// decryption: a mismatch is [`Dropped::AadMismatch`] and consumes no key. Malformed,
    /// altered, foreign or non-member messages are errors and change nothing.
    pub fn receive(
        &mut self,
        id: &ConversationId,
        bytes: &[u8],
        expected_aad: &[u8],
    ) -> Result<Received, MlsError> {
        let mut out = self.receive_many(id, &[(bytes, expected_aad)]);
        out.pop().unwrap_or_else(|| Err(MlsError::Operation { op: "receive", reason: "no output".into() }))
    }

    /// Decrypts several `(ciphertext, expected aad)` messages (see [`Client::receive`]),
    /// persisting once at the end; one result per input. If any message fails in decryption,
    /// the batch is undone and replayed one message at a time, so a bad message never leaves a
    /// trace in the stored state (one refused by the clear checks before decryption changes
    /// nothing and needs no undo).
    pub fn receive_many(
        &mut self,
        id: &ConversationId,
        messages: &[(&[u8], &[u8])],
    ) -> Vec<Result<Received, MlsError>> {
        let Ok(marks) = self.conv(id).map(|c| c.future.marks()) else {
            return messages.iter().map(|_| Err(MlsError::UnknownConversation)).collect();
        };
        // Only the secret tree's state after the batch is encoded (settled in `persist`).
        self.provider.storage().set_defer(true);
        // Whether a message failed after it reached decryption (which may leave state behind).
        // One refused by the clear checks of `screen` (malformed, foreign, too old) changed
        // nothing, so it does not send the batch down the slow path of reloading the group.
        let mut dirty = false;
        let out: Vec<Result<Received, MlsError>> = messages
            .iter()
            .map(|(m, aad)| {
                let r = self.receive_screened(id, m, aad);
                dirty |= r.1;
                r.0
            })
            .collect();
        self.provider.storage().set_defer(false);
        if !dirty {
            return match self.persist(id) {
                Ok(()) => out,
                Err(e) => messages
                    .iter()
                    .map(|_| Err(MlsError::Operation { op: "persist", reason: e.to_string() }))
                    .collect(),
            };
        }
        // Slow path: undo the batch, then one message per transaction.
        if let Err(e) = self.rollback(id) {
            return messages
                .iter()
                .map(|_| Err(MlsError::Operation { op: "rollback", reason: e.to_string() }))
                .collect();
        }
        if let Ok(c) = self.conv_mut(id) {
            c.future.truncate(&marks);
        }
        messages
            .iter()
            .map(|(m, aad)| {
                let (r, dirty) = self.receive_screened(id, m, aad);
                let settled = if dirty {
                    self.rollback(id)
                } else if Self::failed(&r) {
                    Ok(()) // refused by `screen`: nothing changed, nothing to write
                } else {
                    self.persist(id)
                };
                match settled {
                    Ok(()) => r,
                    Err(e) => Err(e),
                }
            })
            .collect()
    }

    pub(super) fn failed(r: &Result<Received, MlsError>) -> bool {
        matches!(r, Err(_) | Ok(Received::Dropped(Dropped::Duplicate | Dropped::TooOld)))
    }

    /// Receives one message, and tells whether it failed after reaching decryption (only then
    /// may the in-memory group differ from a clean state: a refusal by `screen` changes nothing
    /// but the future-epoch buffer, which `receive_many` restores by its marks).
    fn receive_screened(
        &mut self,
        id: &ConversationId,
        bytes: &[u8],
        expected_aad: &[u8],
    ) -> (Result<Received, MlsError>, bool) {
        match self.screen(id, bytes, expected_aad) {
            Ok(Screened::Decrypt(msg)) => {
                let r = self.decrypt(id, msg);
                let dirty = Self::failed(&r);
                (r, dirty)
            }
            Ok(Screened::Done(r)) => (Ok(r), false),
            Err(e) => (Err(e), false),
        }
    }

    /// Decrypts a message `screen` passed, in its epoch's group.
    fn decrypt(&mut self, id: &ConversationId, msg: ProtocolMessage) -> Result<Received, MlsError> {
        let provider = &self.provider;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        let epoch = msg.epoch().as_u64();
        let result = if epoch < c.group.epoch().as_u64() {
            // A retained past epoch: its snapshot decrypts it (ratchet state kept there).
            let (g, p) = match c.past.entry(epoch) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let p = provider.scoped(past_prefix(id, epoch));
                    match MlsGroup::load(p.storage(), &GroupId::from_slice(&id.0))? {
                        Some(g) => v.insert((g, p)),
                        None => return Ok(Received::Dropped(Dropped::TooOld)),
                    }
                }
            };
            g.process_message(&*p, msg)
        } else {
            c.group.process_message(provider, msg)
        };
        processed(result, epoch)
    }

    /// Every check made before any decryption, in clear: size, form, conversation,
    /// authenticated data, epoch. A future-epoch message is buffered here.
    fn screen(
        &mut self,
        id: &ConversationId,
        bytes: &[u8],
        expected_aad: &[u8],
    ) -> Result<Screened, MlsError> {
        check_aad(expected_aad)?;
        if bytes.len() > APPLICATION_BYTES_MAX {
            return Err(MlsError::Malformed(format!("{} bytes is over the limit", bytes.len())));
        }
        let msg = parse_message(bytes)?;
        let limits = self.buffer_limits();
        let past_max = self.config.past_epochs_max as u64;
        let c = self.conversations.get_mut(id).ok_or(MlsError::UnknownConversation)?;
        if msg.is_handshake_message() {
            return Err(MlsError::Rejected("handshake messages are applied from the sequencer only".into()));
        }
        if msg.group_id().as_slice() != id.0 {
            return Err(MlsError::Rejected("message is for another conversation".into()));
        }
        let ProtocolMessage::PrivateMessage(private) = &msg else {
            return Err(MlsError::Rejected("application messages travel encrypted".into()));
        };
        if private.aad() != expected_aad {
            return Ok(Screened::Done(Received::Dropped(Dropped::AadMismatch)));
        }
        if !c.group.is_active() {
            return Err(MlsError::NotMember);
        }
        let epoch = msg.epoch().as_u64();
        let current = c.group.epoch().as_u64();
        if epoch > current {
            let held = (bytes.to_vec(), expected_aad.to_vec());
            return Ok(Screened::Done(match c.future.push(current, epoch, held, limits) {
                Ok(()) => Received::Buffered,
                Err(Refused::Full) => Received::Dropped(Dropped::BufferFull),
                Err(Refused::TooFarAhead) => Received::Dropped(Dropped::TooFarAhead),
            }));
        }
        if current - epoch > past_max {
            return Ok(Screened::Done(Received::Dropped(Dropped::TooOld)));
        }
        Ok(Screened::Decrypt(msg))
    }

    fn buffer_limits(&self) -> Limits {
        Limits {
            epochs_ahead_max: self.config.future_epochs_ahead_max,
            messages_per_epoch_max: self.config.future_messages_per_epoch_max,
            bytes_per_epoch_max: self.config.future_bytes_per_epoch_max,
        }
    }

    pub(super) fn retry_future(
        &mut self,
        id: &ConversationId,
        events: &mut Vec<Event>,
    ) -> Result<(), MlsError> {
        let current = self.epoch(id)?;
        let ready = self.conv_mut(id)?.future.take_ready(current);
        if ready.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&[u8], &[u8])> = ready.iter().map(|(b, a)| (b.as_slice(), a.as_slice())).collect();
        let results = self.receive_many(id, &refs);
        for ((bytes, _), r) in ready.iter().zip(results) {
            let Ok(mut r) = r else { continue };
            if let Received::Message(d) = &mut r {
                d.wire = Some(Box::new(*blake3::hash(bytes).as_bytes()));
            }
            events.push(Event::Message(r));
        }
        Ok(())
    }
}

/// What [`Client::screen`] decided.
enum Screened {
    /// Passed every clear check: decrypt it.
    Decrypt(ProtocolMessage),
    /// Settled without decryption (buffered or dropped).
    Done(Received),
}

/// The result of OpenMLS processing an application message.
fn processed(
    result: Result<ProcessedMessage, ProcessMessageError<StorageError>>,
    epoch: u64,
) -> Result<Received, MlsError> {
    match result {
        Ok(p) => {
            let sender = cert_of(p.credential());
            match p.into_content() {
                ProcessedMessageContent::ApplicationMessage(a) => {
                    let sender =
                        sender.ok_or(MlsError::Rejected("sender has no device certificate".into()))?;
                    Ok(Received::Message(Delivered { sender, epoch, body: a.into_bytes(), wire: None }))
                }
                ProcessedMessageContent::OwnPrivateMessage => Ok(Received::Dropped(Dropped::Own)),
                _ => Err(MlsError::Rejected("not an application message".into())),
            }
        }
        Err(ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
            MessageDecryptionError::SecretTreeError(SecretTreeError::SecretReuseError),
        ))) => Ok(Received::Dropped(Dropped::Duplicate)),
        Err(ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
            MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInThePast),
        ))) => Ok(Received::Dropped(Dropped::TooOld)),
        Err(ProcessMessageError::StorageError(e)) => Err(e.into()),
        Err(e) => Err(MlsError::Rejected(e.to_string())),
    }
}
