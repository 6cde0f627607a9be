//! Linking a device on another machine with a one-time code (issue 14 §6): the pure part
//! (code, frames, the SPAKE2 exchange and what each side seals). No I/O: the existing
//! device's side runs in [`crate::link_host`], the new device's in [`crate::link_join`].
//!
//! The code is 80 random bits shown as `xxxx-xxxx-xxxx-xxxx` (RFC 4648 base32, lower case).
//! Its first 40 bits name the rendezvous topic (a keyed hash of them); all 80 bits are the
//! SPAKE2 password. Four frames travel as ordinary envelopes on that topic (gossip and
//! store nodes, like any other envelope):
//!
//! 1. `Start` (new → existing): the SPAKE2 message of side B.
//! 2. `Offer` (existing → new): side A's message, and, sealed under the PAKE key, the account
//!    id. The new device opens it only with the right code (and the same chain).
//! 3. `Request` (new → existing), sealed: the new device key and its binding signature for
//!    the `AddDevice` transaction.
//! 4. `Certified` (existing → new), sealed: the account's certificate for that device, sent
//!    once the transaction is final, and how many `History` frames follow.
//! 5. `History` (existing → new), sealed, numbered: the parts of the recent history the user
//!    asked to bring along (`cairn device link --history N`, see [`crate::link_history`]).
//!
//! A `Refused` frame (clear, unauthenticated: it only ends a wait early) says the code was
//! wrong, used or expired. Every frame answering another names it by hash, so an old
//! exchange replayed from a store node is ignored. The first well-formed `Start` consumes the
//! code: a wrong guess burns it, and the next `Start` is refused as used.

use std::time::Duration;

use cairn_ledger::tx::device_binding_message;
use cairn_proto::codec::{Reader, Writer};
use cairn_proto::envelope::{Limits, pad, unpad};
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{AccountId, DecodeError, DeviceCert, DeviceId, Envelope, Topic};
use ed25519_dalek::{Signature, Signer, SigningKey};
use spake2::{Ed25519Group, Identity as SpakeId, Password, Spake2};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Wire version of every link frame.
pub const LINK_VERSION: u8 = 1;
/// How long a code can be used after `cairn device link` printed it.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// Largest encoded frame.
pub const FRAME_BYTES_MAX: usize = 4096;
/// Length of a SPAKE2 (Ed25519 group) message: a side byte and a point.
pub const SPAKE_MSG_BYTES: usize = 33;
/// Bytes of a code: the rendezvous half, then the secret half.
const CODE_BYTES: usize = 10;
const RENDEZVOUS_BYTES: usize = 5;
/// Characters of a code's text, without dashes.
const CODE_CHARS: usize = 16;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Longest handle carried in `Certified`.
const HANDLE_BYTES_MAX: usize = 64;

/// What can go wrong while linking.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The code's text is not a code.
    #[error(
        "'{0}' is not a link code: type the 16 letters and digits `cairn device link` printed (xxxx-xxxx-xxxx-xxxx)"
    )]
    BadCode(String),
    /// The key exchange gave different keys: another code, or another network.
    #[error(
        "wrong code: the key exchange failed (or this device uses another network's genesis); nothing was changed, run `cairn device link` again on your other device for a new code"
    )]
    WrongCode,
    /// The other side refused.
    #[error("{0}")]
    Refused(Refusal),
    /// A frame or sealed body did not decode.
    #[error("malformed link frame: {0}")]
    Malformed(String),
    /// The device key or its signature is invalid.
    #[error("the new device's key or binding signature is invalid; nothing was changed")]
    BadDevice,
    /// The certificate received is not for this device and account.
    #[error("the certificate received does not certify this device for that account")]
    BadCertificate,
    /// A frame came at a moment the exchange does not expect it.
    #[error("unexpected link frame")]
    Unexpected,
    /// Randomness or sealing failed.
    #[error("link crypto: {0}")]
    Crypto(String),
}

impl From<DecodeError> for LinkError {
    fn from(e: DecodeError) -> Self {
        Self::Malformed(e.to_string())
    }
}

/// Why a side refused (sent in clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The sealed frame did not open: another code was typed.
    WrongCode = 1,
    /// The code was used already (once, successfully or not).
    Used = 2,
    /// The code expired.
    Expired = 3,
    /// The existing device could not certify the new one (ledger).
    Failed = 4,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WrongCode => "wrong code: the other device could not open the exchange; nothing was changed, run `cairn device link` again for a new code",
            Self::Used => "this code was used already (a code works once, right or wrong): run `cairn device link` again for a new code",
            Self::Expired => "this code expired: run `cairn device link` again for a new code",
            Self::Failed => "the existing device could not certify this one on the ledger; see its output, then try again with a new code",
        })
    }
}

impl Refusal {
    fn from_u8(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            1 => Self::WrongCode,
            2 => Self::Used,
            3 => Self::Expired,
            4 => Self::Failed,
            _ => return Err(DecodeError::Invalid { field: "refusal", reason: "unknown reason" }),
        })
    }
}

/// A one-time link code.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct LinkCode([u8; CODE_BYTES]);

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCode(…)")
    }
}

impl LinkCode {
    /// A fresh random code.
    pub fn random() -> Result<Self, LinkError> {
        cairn_crypto::keystore::random_bytes::<CODE_BYTES>()
            .map(Self)
            .map_err(|e| LinkError::Crypto(e.to_string()))
    }

    /// Reads a code as printed (dashes, spaces and case ignored).
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let bad = || LinkError::BadCode(text.chars().take(40).collect());
        let chars: Vec<u8> =
            text.bytes().filter(|b| !matches!(b, b'-' | b' ')).map(|b| b.to_ascii_lowercase()).collect();
        if chars.len() != CODE_CHARS {
            return Err(bad());
        }
        let mut acc: u128 = 0;
        for c in chars {
            let v = BASE32.iter().position(|x| *x == c).ok_or_else(bad)?;
            acc = (acc << 5) | v as u128;
        }
        let mut out = [0u8; CODE_BYTES];
        out.copy_from_slice(&acc.to_be_bytes()[16 - CODE_BYTES..]);
        Ok(Self(out))
    }

    /// The printed form, `xxxx-xxxx-xxxx-xxxx`.
    pub fn to_text(&self) -> String {
        let mut wide = [0u8; 16];
        wide[16 - CODE_BYTES..].copy_from_slice(&self.0);
        let acc = u128::from_be_bytes(wide);
        let mut s = String::with_capacity(CODE_CHARS + 3);
        for i in 0..CODE_CHARS {
            if i > 0 && i % 4 == 0 {
                s.push('-');
            }
            let v = (acc >> (5 * (CODE_CHARS - 1 - i))) & 31;
            s.push(BASE32[v as usize] as char);
        }
        s
    }

    /// The rendezvous topic: a keyed hash of the code's public half only.
    pub fn topic(&self) -> Topic {
        Topic(blake3::derive_key("cairn link v1 rendezvous topic", &self.0[..RENDEZVOUS_BYTES]))
    }

    fn password(&self) -> Password {
        Password::new(self.0)
    }
}

fn spake_ids(chain: &[u8; 32]) -> (SpakeId, SpakeId) {
    let mut a = b"cairn link v1 existing device ".to_vec();
    a.extend_from_slice(chain);
    let mut b = b"cairn link v1 new device ".to_vec();
    b.extend_from_slice(chain);
    (SpakeId::new(&a), SpakeId::new(&b))
}

/// The two directions' keys, derived from the SPAKE2 key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Keys {
    to_new: [u8; 32],
    to_existing: [u8; 32],
}

impl Keys {
    fn derive(shared: &[u8]) -> Self {
        Self {
            to_new: blake3::derive_key("cairn link v1 existing to new", shared),
            to_existing: blake3::derive_key("cairn link v1 new to existing", shared),
        }
    }
}

fn aad(what: &[u8], topic: &Topic, answers: &[u8; 32]) -> Vec<u8> {
    let mut a = Vec::with_capacity(what.len() + 64);
    a.extend_from_slice(what);
    a.extend_from_slice(&topic.0);
    a.extend_from_slice(answers);
    a
}

fn seal(key: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, LinkError> {
    cairn_crypto::sealed::seal(key, aad, plain).map_err(|e| LinkError::Crypto(e.to_string()))
}

/// Hash naming the frame content being answered.
fn name_of(bytes: &[u8]) -> [u8; 32] {
    blake3::derive_key("cairn link v1 answer", bytes)
}

/// One frame on the rendezvous topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// New → existing: SPAKE2 side B.
    Start {
        /// Side B's message.
        spake: Vec<u8>,
    },
    /// Existing → new: SPAKE2 side A and the sealed account id.
    Offer {
        /// Name of the `Start` answered.
        answers: [u8; 32],
        /// Side A's message.
        spake: Vec<u8>,
        /// Sealed account id.
        sealed: Vec<u8>,
    },
    /// New → existing: the sealed device key and binding signature.
    Request {
        /// Name of the `Offer` answered.
        answers: [u8; 32],
        /// Sealed body.
        sealed: Vec<u8>,
    },
    /// Existing → new: the sealed certificate.
    Certified {
        /// Name of the `Start` answered.
        answers: [u8; 32],
        /// Sealed body.
        sealed: Vec<u8>,
    },
    /// Existing → new: one sealed part of the history bundle.
    History {
        /// Name of the `Start` answered.
        answers: [u8; 32],
        /// Part number, from 0.
        index: u16,
        /// Sealed part.
        sealed: Vec<u8>,
    },
    /// Either way: the exchange ends.
    Refused {
        /// Name of the frame answered.
        answers: [u8; 32],
        /// Why.
        reason: Refusal,
    },
}

impl Frame {
    /// Canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.u8(LINK_VERSION);
        match self {
            Self::Start { spake } => {
                w.u8(1);
                w.bytes(spake);
            }
            Self::Offer { answers, spake, sealed } => {
                w.u8(2);
                w.raw(answers);
                w.bytes(spake);
                w.bytes(sealed);
            }
            Self::Request { answers, sealed } => {
                w.u8(3);
                w.raw(answers);
                w.bytes(sealed);
            }
            Self::Certified { answers, sealed } => {
                w.u8(4);
                w.raw(answers);
                w.bytes(sealed);
            }
            Self::Refused { answers, reason } => {
                w.u8(5);
                w.raw(answers);
                w.u8(*reason as u8);
            }
            Self::History { answers, index, sealed } => {
                w.u8(6);
                w.raw(answers);
                w.u16(*index);
                w.bytes(sealed);
            }
        }
        w.finish()
    }

    /// Decodes a frame (bounded; trailing bytes refused).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                field: "link frame",
                len: bytes.len() as u64,
                max: FRAME_BYTES_MAX as u64,
            });
        }
        let mut r = Reader::new(bytes);
        r.version("link frame", LINK_VERSION)?;
        let spake = |r: &mut Reader<'_>| -> Result<Vec<u8>, DecodeError> {
            let s = r.bytes(SPAKE_MSG_BYTES, "spake2 message")?;
            if s.len() != SPAKE_MSG_BYTES {
                return Err(DecodeError::Invalid { field: "spake2 message", reason: "not 33 bytes" });
            }
            Ok(s.to_vec())
        };
        let f = match r.u8("link frame kind")? {
            1 => Self::Start { spake: spake(&mut r)? },
            2 => Self::Offer {
                answers: r.array("answers")?,
                spake: spake(&mut r)?,
                sealed: r.bytes(FRAME_BYTES_MAX, "sealed")?.to_vec(),
            },
            3 => Self::Request {
                answers: r.array("answers")?,
                sealed: r.bytes(FRAME_BYTES_MAX, "sealed")?.to_vec(),
            },
            4 => Self::Certified {
                answers: r.array("answers")?,
                sealed: r.bytes(FRAME_BYTES_MAX, "sealed")?.to_vec(),
            },
            5 => Self::Refused { answers: r.array("answers")?, reason: Refusal::from_u8(r.u8("refusal")?)? },
            6 => Self::History {
                answers: r.array("answers")?,
                index: r.u16("history part")?,
                sealed: r.bytes(FRAME_BYTES_MAX, "sealed")?.to_vec(),
            },
            _ => return Err(DecodeError::Invalid { field: "link frame kind", reason: "unknown kind" }),
        };
        r.finish()?;
        Ok(f)
    }

    /// Wraps the frame in a mined envelope on `topic`, kept by store nodes for the code's life.
    pub fn envelope(
        &self,
        topic: Topic,
        now_ms: u64,
        limits: &Limits,
        difficulty: Difficulty,
    ) -> Result<Envelope, LinkError> {
        let padded = pad(&self.encode(), limits)?;
        let mut env = Envelope::new(topic, now_ms, CODE_TTL.as_secs() as u32, vec![], padded);
        pow::mine(&mut env.header, difficulty, 1 << 24)
            .ok_or_else(|| LinkError::Crypto("proof of work not found within its bound".into()))?;
        Ok(env)
    }

    /// The frame inside an envelope of `topic`, if it is one.
    pub fn of_envelope(env: &Envelope, topic: &Topic) -> Option<Self> {
        if env.header.topic != *topic {
            return None;
        }
        Self::decode(unpad(env.payload.as_deref()?).ok()?).ok()
    }
}

/// The existing device's side of one code.
pub struct HostSession {
    code: LinkCode,
    chain: [u8; 32],
    account: AccountId,
    /// After the first `Start`: the keys and the names of the `Start` and `Offer`.
    offered: Option<(Keys, [u8; 32], [u8; 32])>,
}

/// What the existing device learns from a valid `Request`.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    /// The new device key.
    pub device: DeviceId,
    /// Its signature over the binding message (for `TxBody::AddDevice`).
    pub device_signature: [u8; 64],
}

impl HostSession {
    /// A session for `code`, certifying devices of `account` on chain `chain`.
    pub fn new(code: LinkCode, chain: [u8; 32], account: AccountId) -> Self {
        Self { code, chain, account, offered: None }
    }

    /// Whether a `Start` was answered (the code is consumed).
    pub fn consumed(&self) -> bool {
        self.offered.is_some()
    }

    /// Answers the first `Start` with an `Offer` (consuming the code); a later one with
    /// `Refused(Used)`. `None` for a malformed SPAKE2 message (ignored: garbage burns nothing).
    pub fn on_start(&mut self, spake_b: &[u8]) -> Result<Option<Frame>, LinkError> {
        let answers = name_of(spake_b);
        if self.offered.is_some() {
            return Ok(Some(Frame::Refused { answers, reason: Refusal::Used }));
        }
        let (ida, idb) = spake_ids(&self.chain);
        let (s, spake_a) = Spake2::<Ed25519Group>::start_a(&self.code.password(), &ida, &idb);
        let Ok(shared) = s.finish(spake_b) else { return Ok(None) };
        let keys = Keys::derive(&shared);
        let topic = self.code.topic();
        let sealed = seal(&keys.to_new, &aad(b"offer", &topic, &answers), &self.account.0)?;
        let offer_name = name_of(&spake_a);
        self.offered = Some((keys, answers, offer_name));
        Ok(Some(Frame::Offer { answers, spake: spake_a, sealed }))
    }

    /// Opens a `Request` answering this session's `Offer`. `Ok(None)`: it answers another
    /// exchange (ignored). An `Err` ends the session.
    pub fn on_request(&self, answers: &[u8; 32], sealed: &[u8]) -> Result<Option<DeviceRequest>, LinkError> {
        let Some((keys, _, offer)) = &self.offered else { return Ok(None) };
        if answers != offer {
            return Ok(None);
        }
        let plain = cairn_crypto::sealed::open(
            &keys.to_existing,
            &aad(b"request", &self.code.topic(), offer),
            sealed,
        )
        .map_err(|_| LinkError::WrongCode)?;
        let mut r = Reader::new(&plain);
        r.version("link request", LINK_VERSION)?;
        let device = DeviceId(r.array("device")?);
        let device_signature: [u8; 64] = r.array("device signature")?;
        r.finish()?;
        let vk = device.verifying_key().map_err(|_| LinkError::BadDevice)?;
        let msg = device_binding_message(&self.chain, &self.account, &device);
        vk.verify_strict(&msg, &Signature::from_bytes(&device_signature))
            .map_err(|_| LinkError::BadDevice)?;
        Ok(Some(DeviceRequest { device, device_signature }))
    }

    /// The `Certified` frame carrying `cert` (and the account's handle), announcing
    /// `history_parts` `History` frames after it.
    pub fn certified(
        &self,
        cert: &DeviceCert,
        handle: Option<&str>,
        history_parts: u16,
    ) -> Result<Frame, LinkError> {
        let (keys, start, _) = self.offered.as_ref().ok_or(LinkError::Unexpected)?;
        let mut w = Writer::with_capacity(256);
        w.u8(LINK_VERSION);
        cert.encode_to(&mut w);
        let h = handle.unwrap_or("").as_bytes();
        w.bytes(&h[..h.len().min(HANDLE_BYTES_MAX)]);
        w.u16(history_parts);
        let sealed = seal(&keys.to_new, &aad(b"certified", &self.code.topic(), start), &w.finish())?;
        Ok(Frame::Certified { answers: *start, sealed })
    }

    /// History part `index`, sealed under the key to the new device (its number is in the
    /// associated data, so parts cannot be swapped).
    pub fn history(&self, index: u16, part: &[u8]) -> Result<Frame, LinkError> {
        let (keys, start, _) = self.offered.as_ref().ok_or(LinkError::Unexpected)?;
        let sealed = seal(&keys.to_new, &history_aad(&self.code.topic(), start, index), part)?;
        Ok(Frame::History { answers: *start, index, sealed })
    }

    /// A refusal answering this session's `Start` (or `name` when none was answered).
    pub fn refusal(&self, reason: Refusal) -> Option<Frame> {
        self.offered.as_ref().map(|(_, start, _)| Frame::Refused { answers: *start, reason })
    }

    /// Whether `answers` names this session's `Offer` (for a refusal from the new device).
    pub fn answers_offer(&self, answers: &[u8; 32]) -> bool {
        self.offered.as_ref().is_some_and(|(_, _, o)| o == answers)
    }
}

/// The new device's side.
pub struct JoinSession {
    code: LinkCode,
    chain: [u8; 32],
    device_key: SigningKey,
    spake: Option<Spake2<Ed25519Group>>,
    start_name: [u8; 32],
    keys: Option<(Keys, AccountId)>,
}

/// What the new device gets at the end.
#[derive(Debug, Clone)]
pub struct Linked {
    /// The account's certificate for this device.
    pub cert: DeviceCert,
    /// The account's handle, if it has one.
    pub handle: Option<String>,
    /// `History` frames announced after the certificate.
    pub history_parts: u16,
}

impl JoinSession {
    /// Starts: returns the session and its `Start` frame.
    pub fn start(code: LinkCode, chain: [u8; 32], device_key: SigningKey) -> (Self, Frame) {
        let (ida, idb) = spake_ids(&chain);
        let (s, spake_b) = Spake2::<Ed25519Group>::start_b(&code.password(), &ida, &idb);
        let start_name = name_of(&spake_b);
        (
            Self { code, chain, device_key, spake: Some(s), start_name, keys: None },
            Frame::Start { spake: spake_b },
        )
    }

    /// Whether a host frame answers this session's `Start`.
    pub fn answers_me(&self, answers: &[u8; 32]) -> bool {
        *answers == self.start_name
    }

    /// Opens the `Offer` and answers with the sealed `Request`. [`LinkError::WrongCode`] if it
    /// does not open (then send [`JoinSession::refusal`]).
    pub fn on_offer(&mut self, spake_a: &[u8], sealed: &[u8]) -> Result<Frame, LinkError> {
        let s = self.spake.take().ok_or(LinkError::Unexpected)?;
        let shared = s.finish(spake_a).map_err(|_| LinkError::WrongCode)?;
        let keys = Keys::derive(&shared);
        let topic = self.code.topic();
        let plain =
            cairn_crypto::sealed::open(&keys.to_new, &aad(b"offer", &topic, &self.start_name), sealed)
                .map_err(|_| LinkError::WrongCode)?;
        let account =
            AccountId(plain.as_slice().try_into().map_err(|_| LinkError::Malformed("account id".into()))?);
        account.verifying_key().map_err(|_| LinkError::Malformed("account id is not a key".into()))?;
        let device = DeviceId(self.device_key.verifying_key().to_bytes());
        let sig = self.device_key.sign(&device_binding_message(&self.chain, &account, &device));
        let mut w = Writer::with_capacity(100);
        w.u8(LINK_VERSION);
        w.raw(&device.0);
        w.raw(&sig.to_bytes());
        let offer = name_of(spake_a);
        let sealed = seal(&keys.to_existing, &aad(b"request", &topic, &offer), &w.finish())?;
        self.keys = Some((keys, account));
        Ok(Frame::Request { answers: offer, sealed })
    }

    /// The refusal to send after a wrong code (names the `Offer` that did not open).
    pub fn refusal(spake_a: &[u8]) -> Frame {
        Frame::Refused { answers: name_of(spake_a), reason: Refusal::WrongCode }
    }

    /// Opens `Certified`: the certificate must be the account's, for this device key.
    pub fn on_certified(&self, sealed: &[u8]) -> Result<Linked, LinkError> {
        let (keys, account) = self.keys.as_ref().ok_or(LinkError::Unexpected)?;
        let plain = cairn_crypto::sealed::open(
            &keys.to_new,
            &aad(b"certified", &self.code.topic(), &self.start_name),
            sealed,
        )
        .map_err(|_| LinkError::WrongCode)?;
        let mut r = Reader::new(&plain);
        r.version("link certificate", LINK_VERSION)?;
        let cert = DeviceCert::decode_from(&mut r)?;
        let handle = r.bytes(HANDLE_BYTES_MAX, "handle")?;
        let handle = (!handle.is_empty())
            .then(|| String::from_utf8(handle.to_vec()))
            .transpose()
            .map_err(|_| LinkError::Malformed("handle is not UTF-8".into()))?;
        let history_parts = r.u16("history parts")?;
        r.finish()?;
        if cert.account != *account
            || cert.device.0 != self.device_key.verifying_key().to_bytes()
            || cert.verify().is_err()
        {
            return Err(LinkError::BadCertificate);
        }
        Ok(Linked { cert, handle, history_parts })
    }

    /// Opens history part `index` (after `Certified`).
    pub fn open_history(&self, index: u16, sealed: &[u8]) -> Result<Vec<u8>, LinkError> {
        let (keys, _) = self.keys.as_ref().ok_or(LinkError::Unexpected)?;
        cairn_crypto::sealed::open(
            &keys.to_new,
            &history_aad(&self.code.topic(), &self.start_name, index),
            sealed,
        )
        .map(|p| p.to_vec())
        .map_err(|_| LinkError::Malformed(format!("history part {index} does not open")))
    }
}

fn history_aad(topic: &Topic, start: &[u8; 32], index: u16) -> Vec<u8> {
    let mut a = aad(b"history", topic, start);
    a.extend_from_slice(&index.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn codes_round_trip_through_their_text_and_garbage_is_refused() {
        for _ in 0..50 {
            let c = LinkCode::random().unwrap();
            let t = c.to_text();
            assert_eq!(t.len(), 19);
            assert_eq!(LinkCode::parse(&t).unwrap(), c);
            assert_eq!(LinkCode::parse(&t.to_uppercase().replace('-', " ")).unwrap(), c);
        }
        for bad in ["", "abcd-efgh", "abcd-efgh-ijkl-mno1", "abcd-efgh-ijkl-mnopq", "ébcd-efgh-ijkl-mnop"] {
            assert!(matches!(LinkCode::parse(bad), Err(LinkError::BadCode(_))), "{bad}");
        }
    }

    fn exchange(
        host_code: &LinkCode,
        join_code: &LinkCode,
        chains: ([u8; 32], [u8; 32]),
    ) -> Result<Linked, LinkError> {
        let account_key = key(1);
        let account = AccountId(account_key.verifying_key().to_bytes());
        let mut host = HostSession::new(host_code.clone(), chains.0, account);
        let (mut join, start) = JoinSession::start(join_code.clone(), chains.1, key(2));
        let start = Frame::decode(&start.encode()).unwrap();
        let Frame::Start { spake } = start else { panic!() };
        let offer = host.on_start(&spake).unwrap().unwrap();
        assert!(host.consumed());
        let Frame::Offer { answers, spake, sealed } = Frame::decode(&offer.encode()).unwrap() else {
            panic!()
        };
        assert!(join.answers_me(&answers));
        let req = join.on_offer(&spake, &sealed)?;
        let Frame::Request { answers, sealed } = Frame::decode(&req.encode()).unwrap() else { panic!() };
        let dr = host.on_request(&answers, &sealed)?.unwrap();
        let cert = DeviceCert::issue(&account_key, dr.device, 5);
        let Frame::Certified { answers, sealed } = host.certified(&cert, Some("ann"), 2).unwrap() else {
            panic!()
        };
        assert!(join.answers_me(&answers));
        let linked = join.on_certified(&sealed)?;
        assert_eq!(linked.history_parts, 2);
        // History parts open in their place only.
        for (i, part) in [b"first".as_slice(), b"second"].into_iter().enumerate() {
            let f = Frame::decode(&host.history(i as u16, part).unwrap().encode()).unwrap();
            let Frame::History { answers, index, sealed } = f else { panic!() };
            assert!(join.answers_me(&answers));
            assert_eq!(join.open_history(index, &sealed).unwrap(), part);
            assert!(join.open_history(index ^ 1, &sealed).is_err(), "a part moved to another place");
        }
        Ok(linked)
    }

    #[test]
    fn the_right_code_links_and_a_wrong_code_or_chain_does_not() {
        let c = LinkCode::random().unwrap();
        let linked = exchange(&c, &c, ([7; 32], [7; 32])).unwrap();
        assert_eq!(linked.cert.device.0, key(2).verifying_key().to_bytes());
        assert_eq!(linked.handle.as_deref(), Some("ann"));
        // Same rendezvous half, another secret half: same topic, the exchange fails.
        let mut other = c.clone();
        other.0[9] ^= 1;
        assert_eq!(other.topic(), c.topic());
        assert!(matches!(exchange(&c, &other, ([7; 32], [7; 32])), Err(LinkError::WrongCode)));
        assert!(matches!(exchange(&c, &c, ([7; 32], [8; 32])), Err(LinkError::WrongCode)));
    }

    #[test]
    fn a_second_start_is_refused_as_used_and_garbage_burns_nothing() {
        let c = LinkCode::random().unwrap();
        let mut host = HostSession::new(c.clone(), [1; 32], AccountId(key(1).verifying_key().to_bytes()));
        assert!(host.on_start(&[9u8; 33]).unwrap().is_none(), "garbage point answered");
        assert!(!host.consumed());
        let (_, Frame::Start { spake }) = JoinSession::start(c.clone(), [1; 32], key(2)) else { panic!() };
        assert!(matches!(host.on_start(&spake).unwrap(), Some(Frame::Offer { .. })));
        let (_, Frame::Start { spake }) = JoinSession::start(c, [1; 32], key(3)) else { panic!() };
        let again = host.on_start(&spake).unwrap().unwrap();
        assert!(matches!(again, Frame::Refused { reason: Refusal::Used, .. }));
    }

    #[test]
    fn frames_are_bounded_and_tampering_is_refused() {
        let f = Frame::Refused { answers: [3; 32], reason: Refusal::Expired };
        assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        let mut bad = f.encode();
        bad[0] = 2;
        assert!(Frame::decode(&bad).is_err(), "another version read");
        let mut bad = f.encode();
        bad.push(0);
        assert!(Frame::decode(&bad).is_err(), "trailing byte read");
        assert!(Frame::decode(&vec![1u8; FRAME_BYTES_MAX + 1]).is_err());
        assert!(Frame::decode(&[1, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5]).is_err(), "short spake message read");
        for cut in 0..f.encode().len() {
            assert!(Frame::decode(&f.encode()[..cut]).is_err());
        }
        // A tampered sealed request is a wrong code, and a request for another offer is ignored.
        let c = LinkCode::random().unwrap();
        let acct = AccountId(key(1).verifying_key().to_bytes());
        let mut host = HostSession::new(c.clone(), [1; 32], acct);
        let (mut join, Frame::Start { spake }) = JoinSession::start(c, [1; 32], key(2)) else { panic!() };
        let Some(Frame::Offer { spake, sealed, .. }) = host.on_start(&spake).unwrap() else { panic!() };
        let Frame::Request { answers, mut sealed } = join.on_offer(&spake, &sealed).unwrap() else {
            panic!()
        };
        assert!(host.on_request(&[0; 32], &sealed).unwrap().is_none());
        sealed[30] ^= 1;
        assert!(matches!(host.on_request(&answers, &sealed), Err(LinkError::WrongCode)));
    }

    #[test]
    fn an_envelope_carries_a_frame_on_its_topic_only() {
        let c = LinkCode::random().unwrap();
        let f = Frame::Start { spake: vec![0x42; 33] };
        let d = Difficulty { base_bits: 0 };
        let env = f.envelope(c.topic(), 1_000, &Limits::default(), d).unwrap();
        assert_eq!(Frame::of_envelope(&env, &c.topic()), Some(f));
        assert_eq!(Frame::of_envelope(&env, &Topic([0; 32])), None);
    }
}
