//! The signed inner message carried (encrypted, once MLS wraps it) inside an envelope payload.
//!
//! ```text
//! message = version:u8 topic:[32] sender:DeviceCert timestamp_ms:u64 [device_seq:u64]
//!           parent_count:u8 parents:[32]* body_len:u32 body signature:[64]
//! ```
//! Version 1 has no `device_seq`; version 2 (a message with [`Message::device_seq`]) has it,
//! under the signature. Both decode.
//! The device key signs everything before the signature, prefixed by a context string. Topic,
//! parents and timestamp repeat the header's, so the sender's signature covers the hash links.

use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::codec::{DecodeError, Reader, Writer, read_id_set, write_id_set};
use crate::envelope::{Envelope, EnvelopeHeader, Limits, pad};
use crate::id::{Id, Topic, domain};
use crate::identity::{DeviceCert, SignatureError};

const MESSAGE_VERSION: u8 = 1;
/// Version of a message that carries a [`Message::device_seq`].
const MESSAGE_VERSION_SEQ: u8 = 2;

/// A sender-signed message: who sent it is proven here, never in the clear header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Conversation topic (must equal the header's).
    pub topic: Topic,
    /// Sender's device certificate.
    pub sender: DeviceCert,
    /// Sender's clock (must equal the header's).
    pub timestamp_ms: u64,
    /// The sending device's sequence number among its text messages of this conversation in
    /// the MLS epoch it was sent in (0, 1, 2…), signed; `None` in version-1 messages and in
    /// control messages. A policy orders a device's messages by it (`cairn_contracts::policy`).
    ///
    /// Safe to order by: one device sends one message at a time, each in its current epoch,
    /// so a device's messages of one epoch form one causal chain and the number says where in
    /// that chain a message stands; every member of the epoch reads the whole chain (counting
    /// arrivals instead would differ after a gap timeout). A device that reuses a number (a
    /// restored backup) only gets its own later message judged a replay.
    pub device_seq: Option<u64>,
    /// Heads the sender had seen (must equal the header's), strictly increasing.
    pub parents: Vec<Id>,
    /// Application content.
    pub body: Vec<u8>,
    /// Device key signature over everything above.
    pub signature: [u8; 64],
}

impl Message {
    fn unsigned_bytes(
        topic: &Topic,
        sender: &DeviceCert,
        timestamp_ms: u64,
        device_seq: Option<u64>,
        parents: &[Id],
        body: &[u8],
    ) -> Writer {
        let mut w = Writer::with_capacity(256 + body.len());
        w.u8(if device_seq.is_some() { MESSAGE_VERSION_SEQ } else { MESSAGE_VERSION });
        w.raw(&topic.0);
        sender.encode_to(&mut w);
        w.u64(timestamp_ms);
        if let Some(n) = device_seq {
            w.u64(n);
        }
        let ps: Vec<[u8; 32]> = parents.iter().map(|p| p.0).collect();
        write_id_set(&mut w, &ps);
        w.bytes(body);
        w
    }

    /// Signs a message (version 1, no device sequence number) with the device key named in
    /// `sender`.
    pub fn sign(
        device_key: &SigningKey,
        sender: DeviceCert,
        topic: Topic,
        timestamp_ms: u64,
        parents: Vec<Id>,
        body: Vec<u8>,
    ) -> Self {
        Self::sign_seq(device_key, sender, topic, timestamp_ms, None, parents, body)
    }

    /// Signs a message carrying `device_seq` (version 2 when it is `Some`).
    pub fn sign_seq(
        device_key: &SigningKey,
        sender: DeviceCert,
        topic: Topic,
        timestamp_ms: u64,
        device_seq: Option<u64>,
        mut parents: Vec<Id>,
        body: Vec<u8>,
    ) -> Self {
        parents.sort();
        parents.dedup();
        let unsigned = Self::unsigned_bytes(&topic, &sender, timestamp_ms, device_seq, &parents, &body);
        let mut to_sign = domain::MESSAGE_SIG.to_vec();
        to_sign.extend_from_slice(&unsigned.finish());
        let signature = device_key.sign(&to_sign).to_bytes();
        Self { topic, sender, timestamp_ms, device_seq, parents, body, signature }
    }

    /// Checks the certificate chain (account → device) and the device's signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.sender.verify()?;
        self.verify_signature_only()
    }

    /// Checks only the device's signature, for a caller that already verified this exact
    /// certificate.
    pub fn verify_signature_only(&self) -> Result<(), SignatureError> {
        let vk = self.sender.device.verifying_key()?;
        let unsigned = self.unsigned();
        let mut signed = domain::MESSAGE_SIG.to_vec();
        signed.extend_from_slice(&unsigned.finish());
        vk.verify_strict(&signed, &Signature::from_bytes(&self.signature))
            .map_err(|_| SignatureError::BadSignature { what: "message" })
    }

    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = self.unsigned();
        w.raw(&self.signature);
        w.finish()
    }

    fn unsigned(&self) -> Writer {
        Self::unsigned_bytes(
            &self.topic,
            &self.sender,
            self.timestamp_ms,
            self.device_seq,
            &self.parents,
            &self.body,
        )
    }

    /// Decodes one message (structure only; call [`Message::verify`] before trusting it).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let max = limits.payload_bytes_max();
        if bytes.len() > max {
            return Err(DecodeError::TooLarge { field: "message", len: bytes.len() as u64, max: max as u64 });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != MESSAGE_VERSION && version != MESSAGE_VERSION_SEQ {
            return Err(DecodeError::UnsupportedVersion {
                what: "message",
                found: version,
                supported: MESSAGE_VERSION_SEQ,
            });
        }
        let topic = Topic(r.array("message.topic")?);
        let sender = DeviceCert::decode_from(&mut r)?;
        let timestamp_ms = r.u64("message.timestamp_ms")?;
        let device_seq =
            if version == MESSAGE_VERSION_SEQ { Some(r.u64("message.device_seq")?) } else { None };
        let parents =
            read_id_set(&mut r, limits.parents_max, "message.parents")?.into_iter().map(Id).collect();
        let body = r.bytes(max, "message.body")?.to_vec();
        let signature = r.array("message.signature")?;
        r.finish()?;
        Ok(Self { topic, sender, timestamp_ms, device_seq, parents, body, signature })
    }

    /// Wraps this message, unencrypted but padded, in an envelope (used before MLS wraps
    /// payloads, by the self-check and by tests).
    pub fn seal_plain(&self, ttl_secs: u32, limits: &Limits) -> Result<Envelope, DecodeError> {
        let padded = pad(&self.encode(), limits)?;
        Ok(Envelope::new(self.topic, self.timestamp_ms, ttl_secs, self.parents.clone(), padded))
    }

    /// Which header field disagrees with this message, if any.
    pub fn header_mismatch(&self, header: &EnvelopeHeader) -> Option<&'static str> {
        if self.topic != header.topic {
            Some("topic")
        } else if self.timestamp_ms != header.timestamp_ms {
            Some("timestamp_ms")
        } else if self.parents != header.parents {
            Some("parents")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceId;

    #[test]
    fn sign_verify_round_trip_and_tamper() {
        let account = SigningKey::from_bytes(&[1; 32]);
        let device = SigningKey::from_bytes(&[2; 32]);
        let cert = DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 7);
        let m =
            Message::sign(&device, cert, Topic([5; 32]), 9, vec![Id([2; 32]), Id([1; 32])], b"hi".to_vec());
        m.verify().unwrap();
        assert_eq!(m.parents, vec![Id([1; 32]), Id([2; 32])]);
        let l = Limits::default();
        let back = Message::decode(&m.encode(), &l).unwrap();
        assert_eq!(back, m);
        let mut t = m.clone();
        t.body[0] ^= 1;
        assert!(t.verify().is_err());
        // Signed by another device than the certificate names: refused.
        let other = SigningKey::from_bytes(&[3; 32]);
        let forged = Message::sign(&other, cert, Topic([5; 32]), 9, vec![], b"x".to_vec());
        assert_eq!(forged.verify(), Err(SignatureError::BadSignature { what: "message" }));
    }

    #[test]
    fn device_seq_is_signed_versioned_and_old_messages_still_decode() {
        let account = SigningKey::from_bytes(&[1; 32]);
        let device = SigningKey::from_bytes(&[2; 32]);
        let cert = DeviceCert::issue(&account, DeviceId(device.verifying_key().to_bytes()), 7);
        let l = Limits::default();
        let v1 = Message::sign(&device, cert, Topic([5; 32]), 9, vec![], b"a".to_vec());
        assert_eq!(v1.encode()[0], 1);
        assert_eq!(Message::decode(&v1.encode(), &l).unwrap().device_seq, None);
        let v2 = Message::sign_seq(&device, cert, Topic([5; 32]), 9, Some(41), vec![], b"a".to_vec());
        assert_eq!(v2.encode()[0], 2);
        let back = Message::decode(&v2.encode(), &l).unwrap();
        assert_eq!(back.device_seq, Some(41));
        back.verify().unwrap();
        // the number is under the signature
        let mut t = back.clone();
        t.device_seq = Some(40);
        assert!(t.verify().is_err());
        // an unknown version and a truncated number are refused
        let mut bad = v2.encode();
        bad[0] = 3;
        assert!(Message::decode(&bad, &l).is_err());
        let mut cut = v1.encode();
        cut[0] = 2;
        assert!(Message::decode(&cut, &l).is_err());
    }
}
