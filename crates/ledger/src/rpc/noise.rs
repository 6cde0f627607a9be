//! The Noise handshake and message sealing of the ledger RPC channel (sans-IO: bytes in, bytes
//! out; [`super::transport`] moves them over TCP).
//!
//! Pattern [`NOISE_PARAMS`] (`NX`): the client is anonymous (it sends only an ephemeral key, so
//! a validator does not learn who reads), the validator sends its static X25519 key. Two
//! messages:
//!
//! - hello, client → validator: the client's ephemeral key, exactly [`HELLO_BYTES`];
//! - reply, validator → client: `e, ee, s, es` and, encrypted, the validator's ed25519 identity
//!   signature (the consensus key the genesis lists for that RPC address) over
//!   `handshake hash after the hello ‖ static key`, namespace [`IDENTITY_NAMESPACE`]; exactly
//!   [`REPLY_BYTES`].
//!
//! The hash covers the prologue (`cairn ledger rpc noise v1 ‖ chain id`) and the client's fresh
//! ephemeral key, so a signature is good for one session of one chain only and cannot be
//! replayed elsewhere; the static key is proven by `es` (only its holder can produce the
//! reply), and the signature binds it to the genesis identity. A man in the middle can neither
//! read nor alter the traffic; a validator of another chain fails the handshake.
//!
//! The validator's static key is derived from its ed25519 seed ([`RpcIdentity::new`]):
//! nothing more to store, the same across restarts.

use commonware_codec::{DecodeExt as _, Encode as _};
use commonware_cryptography::{Signer as _, Verifier as _, ed25519};
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver as _, DefaultResolver};
use snow::{Builder, HandshakeState, TransportState};
use thiserror::Error;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NX_25519_ChaChaPoly_BLAKE2s";
/// Prologue prefix (the chain id follows): both sides must agree or the handshake fails.
const PROLOGUE: &[u8] = b"cairn ledger rpc noise v1";
/// Namespace of the validator's identity signature in the reply.
pub const IDENTITY_NAMESPACE: &[u8] = b"cairn_ledger_rpc_noise_v1";
/// Domain of the static key derived from a validator's ed25519 seed.
const STATIC_KEY_DOMAIN: &str = "cairn 2026-12 ledger rpc noise static key v1";
/// Size of the client's hello: its ephemeral X25519 key, no payload.
pub const HELLO_BYTES: usize = 32;
/// ed25519 signature size.
const SIGNATURE_BYTES: usize = 64;
/// AEAD tag size.
pub const TAG_BYTES: usize = 16;
/// Size of the validator's reply: ephemeral key, encrypted static key, encrypted signature.
pub const REPLY_BYTES: usize = 32 + (32 + TAG_BYTES) + (SIGNATURE_BYTES + TAG_BYTES);
/// Largest Noise message (ciphertext), bytes.
pub const MESSAGE_MAX: usize = 65_535;
/// Largest plaintext in one Noise message.
pub const PLAIN_MAX: usize = MESSAGE_MAX - TAG_BYTES;
/// Bytes of the frame length at the start of a frame's first message.
const LEN_BYTES: usize = 4;

/// Why a handshake or a sealed message was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NoiseError {
    /// The client's hello is not one (wrong size, or not a usable key).
    #[error("not a Cairn ledger RPC hello: {0}")]
    Hello(String),
    /// The validator's reply is malformed or does not decrypt.
    #[error(
        "the validator's handshake reply is not valid ({0}): it serves another chain or RPC \
         version, or something in between altered it; check the genesis file and the address"
    )]
    Reply(String),
    /// The reply decrypts but its signature is not by the key the genesis lists.
    #[error(
        "the validator did not prove it holds the key the genesis lists for it ({0}): a man in \
         the middle, or a genesis file that is not the chain's current one; check the genesis file \
         and the network path to that address"
    )]
    Unauthenticated(&'static str),
    /// A transport message does not decrypt (altered, replayed or reordered).
    #[error("a message on the encrypted channel does not decrypt: the connection is closed")]
    Decrypt,
    /// A frame's messages are not laid out as the channel requires.
    #[error("bad frame layout on the encrypted channel: {0}")]
    Layout(&'static str),
    /// Noise could not be set up (a build without the needed primitives).
    #[error("noise setup failed: {0}")]
    Setup(String),
}

fn setup(e: snow::Error) -> NoiseError {
    NoiseError::Setup(e.to_string())
}

fn prologue(chain: &[u8; 32]) -> Vec<u8> {
    [PROLOGUE, chain.as_slice()].concat()
}

fn builder<'a>(prologue: &'a [u8]) -> Result<Builder<'a>, NoiseError> {
    let params = NOISE_PARAMS.parse().map_err(setup)?;
    Builder::new(params).prologue(prologue).map_err(setup)
}

/// What a validator proves itself with: its ed25519 identity (the consensus key the genesis
/// lists), the chain, and the Noise static key derived from the identity's seed.
#[derive(Clone)]
pub struct RpcIdentity {
    key: ed25519::PrivateKey,
    chain: [u8; 32],
    static_secret: [u8; 32],
    static_public: [u8; 32],
}

impl std::fmt::Debug for RpcIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcIdentity").field("static_public", &hex::encode(self.static_public)).finish()
    }
}

impl RpcIdentity {
    /// The identity of the validator holding `key` on chain `chain` (the genesis chain id).
    pub fn new(key: &ed25519::PrivateKey, chain: [u8; 32]) -> Result<Self, NoiseError> {
        let static_secret = cairn_proto::id::hash(STATIC_KEY_DOMAIN, &key.encode());
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or_else(|| NoiseError::Setup("no X25519 implementation".into()))?;
        dh.set(&static_secret);
        let static_public: [u8; 32] =
            dh.pubkey().try_into().map_err(|_| NoiseError::Setup("X25519 key is not 32 bytes".into()))?;
        Ok(Self { key: key.clone(), chain, static_secret, static_public })
    }

    /// The identity of the ed25519 key with this 32-byte seed (a validator key file's content).
    pub fn from_seed(seed: [u8; 32], chain: [u8; 32]) -> Result<Self, NoiseError> {
        let key = ed25519::PrivateKey::decode(seed.to_vec())
            .map_err(|_| NoiseError::Setup("seed is not an ed25519 key".into()))?;
        Self::new(&key, chain)
    }

    /// The ed25519 identity key (what the genesis lists).
    pub fn public_key(&self) -> ed25519::PublicKey {
        self.key.public_key()
    }

    /// The Noise static public key.
    pub fn static_public(&self) -> [u8; 32] {
        self.static_public
    }

    /// The chain id.
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }
}

/// The message the validator signs: the handshake hash after the hello, then its static key.
fn signed_message(hash: &[u8], static_public: &[u8]) -> Vec<u8> {
    [hash, static_public].concat()
}

/// A client's handshake in progress (hello sent, reply awaited).
pub struct Hello {
    state: HandshakeState,
    hash: Vec<u8>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello").finish_non_exhaustive()
    }
}

/// Starts a client handshake for chain `chain`: the state and the hello to send.
pub fn hello(chain: &[u8; 32]) -> Result<(Hello, Vec<u8>), NoiseError> {
    let prologue = prologue(chain);
    let mut state = builder(&prologue)?.build_initiator().map_err(setup)?;
    // snow wants room for a tag after the (empty, unencrypted) payload
    let mut msg = vec![0u8; HELLO_BYTES + TAG_BYTES];
    let n = state.write_message(&[], &mut msg).map_err(setup)?;
    msg.truncate(n);
    let hash = state.get_handshake_hash().to_vec();
    Ok((Hello { state, hash }, msg))
}

impl Hello {
    /// Reads the validator's reply and checks its identity signature against `validator` (the
    /// key the genesis lists for the address dialled): the session, or why not.
    pub fn finish(mut self, reply: &[u8], validator: &ed25519::PublicKey) -> Result<Session, NoiseError> {
        if reply.len() != REPLY_BYTES {
            return Err(NoiseError::Reply(format!("{} bytes, expected {REPLY_BYTES}", reply.len())));
        }
        let mut payload = vec![0u8; REPLY_BYTES];
        let n = self.state.read_message(reply, &mut payload).map_err(|e| NoiseError::Reply(e.to_string()))?;
        if n != SIGNATURE_BYTES {
            return Err(NoiseError::Reply(format!("a {n}-byte identity proof, expected {SIGNATURE_BYTES}")));
        }
        let remote = self.state.get_remote_static().ok_or(NoiseError::Reply("no static key".into()))?;
        let sig = ed25519::Signature::decode(payload[..n].to_vec())
            .map_err(|_| NoiseError::Unauthenticated("the signature does not decode"))?;
        if !validator.verify(IDENTITY_NAMESPACE, &signed_message(&self.hash, remote), &sig) {
            return Err(NoiseError::Unauthenticated("the signature does not verify"));
        }
        let transport = self.state.into_transport_mode().map_err(setup)?;
        Ok(Session { transport })
    }
}

/// The validator's side of a handshake: reads a client's `hello`, returns the reply to send
/// and the session. Anything but a well-formed hello is refused.
pub fn answer_hello(id: &RpcIdentity, hello: &[u8]) -> Result<(Vec<u8>, Session), NoiseError> {
    if hello.len() != HELLO_BYTES {
        return Err(NoiseError::Hello(format!("{} bytes, expected {HELLO_BYTES}", hello.len())));
    }
    let prologue = prologue(&id.chain);
    let mut state = builder(&prologue)?
        .local_private_key(&id.static_secret)
        .map_err(setup)?
        .build_responder()
        .map_err(setup)?;
    let mut none = [0u8; HELLO_BYTES];
    let n = state.read_message(hello, &mut none).map_err(|e| NoiseError::Hello(e.to_string()))?;
    if n != 0 {
        return Err(NoiseError::Hello("a hello with a payload".into()));
    }
    let proof =
        id.key.sign(IDENTITY_NAMESPACE, &signed_message(state.get_handshake_hash(), &id.static_public));
    let mut reply = vec![0u8; REPLY_BYTES];
    let n = state.write_message(&proof.encode(), &mut reply).map_err(setup)?;
    reply.truncate(n);
    let transport = state.into_transport_mode().map_err(setup)?;
    Ok((reply, Session { transport }))
}

/// An established channel's ciphers: seals frames into Noise messages and opens them.
///
/// A frame of `len` bytes travels as one or more messages: the first one's plaintext is
/// `len:u32` big-endian then up to [`PLAIN_MAX`]` - 4` bytes of the body, each following one
/// carries up to [`PLAIN_MAX`] more, until `len` bytes. On the wire each message is
/// `size:u16` big-endian then the ciphertext.
pub struct Session {
    transport: TransportState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// One plaintext (at most [`PLAIN_MAX`] bytes) sealed into one wire message.
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plain.len() > PLAIN_MAX {
            return Err(NoiseError::Layout("a message over the Noise limit"));
        }
        let mut out = vec![0u8; 2 + plain.len() + TAG_BYTES];
        let n = self.transport.write_message(plain, &mut out[2..]).map_err(setup)?;
        let size = u16::try_from(n).map_err(|_| NoiseError::Layout("a message over the Noise limit"))?;
        out[..2].copy_from_slice(&size.to_be_bytes());
        out.truncate(2 + n);
        Ok(out)
    }

    /// A whole frame sealed into wire messages (concatenated).
    pub fn seal_frame(&mut self, body: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let len = u32::try_from(body.len()).map_err(|_| NoiseError::Layout("a frame over 4 GiB"))?;
        let first = body.len().min(PLAIN_MAX - LEN_BYTES);
        let mut out = Vec::with_capacity(body.len() + (body.len() / PLAIN_MAX + 1) * (2 + TAG_BYTES) + 8);
        let head = [len.to_be_bytes().as_slice(), &body[..first]].concat();
        out.extend_from_slice(&self.seal(&head)?);
        for chunk in body[first..].chunks(PLAIN_MAX) {
            out.extend_from_slice(&self.seal(chunk)?);
        }
        Ok(out)
    }

    /// Opens one message's ciphertext (without its size prefix).
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if ciphertext.len() < TAG_BYTES || ciphertext.len() > MESSAGE_MAX {
            return Err(NoiseError::Decrypt);
        }
        let mut plain = vec![0u8; ciphertext.len() - TAG_BYTES];
        let n = self.transport.read_message(ciphertext, &mut plain).map_err(|_| NoiseError::Decrypt)?;
        plain.truncate(n);
        Ok(plain)
    }

    /// Opens a frame's first message: the announced frame length and the body bytes it
    /// carries (never more than announced).
    pub fn open_first(&mut self, ciphertext: &[u8]) -> Result<(usize, Vec<u8>), NoiseError> {
        let plain = self.open(ciphertext)?;
        let (len, rest) = split_len(&plain)?;
        if rest.len() > len {
            return Err(NoiseError::Layout("a first message longer than its frame"));
        }
        Ok((len, rest.to_vec()))
    }
}

/// The frame length at the start of a first message, and what follows it.
fn split_len(plain: &[u8]) -> Result<(usize, &[u8]), NoiseError> {
    let (len, rest) = plain
        .split_first_chunk::<LEN_BYTES>()
        .ok_or(NoiseError::Layout("a first message without a length"))?;
    Ok((u32::from_be_bytes(*len) as usize, rest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair(chain: [u8; 32]) -> (RpcIdentity, Session, Session) {
        let id = RpcIdentity::from_seed([7; 32], chain).unwrap();
        let (h, msg1) = hello(&chain).unwrap();
        assert_eq!(msg1.len(), HELLO_BYTES);
        let (msg2, server) = answer_hello(&id, &msg1).unwrap();
        assert_eq!(msg2.len(), REPLY_BYTES);
        let client = h.finish(&msg2, &id.public_key()).unwrap();
        (id, client, server)
    }

    /// Opens a wire buffer of whole messages as one frame.
    fn open_frame(s: &mut Session, mut wire: &[u8]) -> Vec<u8> {
        let mut next = || {
            let n = u16::from_be_bytes([wire[0], wire[1]]) as usize;
            let ct = wire[2..2 + n].to_vec();
            wire = &wire[2 + n..];
            ct
        };
        let (len, mut body) = s.open_first(&next()).unwrap();
        while body.len() < len {
            body.extend(s.open(&next()).unwrap());
        }
        body
    }

    #[test]
    fn frames_of_any_size_cross_in_both_directions() {
        let (_, mut c, mut s) = pair([1; 32]);
        for len in [0, 1, PLAIN_MAX - 4, PLAIN_MAX - 3, PLAIN_MAX, 3 * PLAIN_MAX + 17] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = c.seal_frame(&body).unwrap();
            assert_eq!(open_frame(&mut s, &wire), body, "{len}");
            let wire = s.seal_frame(&body).unwrap();
            assert_eq!(open_frame(&mut c, &wire), body, "{len}");
        }
    }

    #[test]
    fn the_static_key_is_derived_from_the_identity_and_stable() {
        let a = RpcIdentity::from_seed([7; 32], [1; 32]).unwrap();
        let b = RpcIdentity::from_seed([7; 32], [2; 32]).unwrap();
        let c = RpcIdentity::from_seed([8; 32], [1; 32]).unwrap();
        assert_eq!(a.static_public(), b.static_public());
        assert_ne!(a.static_public(), c.static_public());
    }

    #[test]
    fn an_impostor_or_another_chain_is_refused() {
        let chain = [1; 32];
        let real = RpcIdentity::from_seed([7; 32], chain).unwrap();
        let impostor = RpcIdentity::from_seed([9; 32], chain).unwrap();
        // An impostor with its own key: the signature is not by the genesis key.
        let (h, msg1) = hello(&chain).unwrap();
        let (msg2, _) = answer_hello(&impostor, &msg1).unwrap();
        assert!(matches!(h.finish(&msg2, &real.public_key()), Err(NoiseError::Unauthenticated(_))));
        // The real validator's reply to another hello: replayed, it does not decrypt.
        let (h, _) = hello(&chain).unwrap();
        let (_, other) = hello(&chain).unwrap();
        let (msg2, _) = answer_hello(&real, &other).unwrap();
        assert!(matches!(h.finish(&msg2, &real.public_key()), Err(NoiseError::Reply(_))));
        // A validator of another chain.
        let elsewhere = RpcIdentity::from_seed([7; 32], [2; 32]).unwrap();
        let (h, msg1) = hello(&chain).unwrap();
        let (msg2, _) = answer_hello(&elsewhere, &msg1).unwrap();
        assert!(matches!(h.finish(&msg2, &real.public_key()), Err(NoiseError::Reply(_))));
        // Any flipped bit of a reply is refused.
        for i in 0..REPLY_BYTES {
            let (h, msg1) = hello(&chain).unwrap();
            let (mut msg2, _) = answer_hello(&real, &msg1).unwrap();
            msg2[i] ^= 1;
            assert!(h.finish(&msg2, &real.public_key()).is_err(), "bit flipped at {i}");
        }
    }

    #[test]
    fn garbage_hellos_and_messages_are_refused() {
        let id = RpcIdentity::from_seed([7; 32], [1; 32]).unwrap();
        for bad in [vec![], vec![0; 31], vec![0; 33], vec![0xff; 1000]] {
            assert!(matches!(answer_hello(&id, &bad), Err(NoiseError::Hello(_))), "{}", bad.len());
        }
        let (_, mut c, mut s) = pair([1; 32]);
        assert_eq!(s.open(&[0; 10]), Err(NoiseError::Decrypt));
        assert_eq!(s.open(&[0; 100]), Err(NoiseError::Decrypt));
        // A message replayed is refused (nonces advance).
        let wire = c.seal(b"abcd").unwrap();
        assert_eq!(s.open(&wire[2..]).unwrap(), b"abcd");
        assert_eq!(s.open(&wire[2..]), Err(NoiseError::Decrypt));
        // A first message that is too short or longer than its frame.
        let wire = c.seal(b"ab").unwrap();
        assert!(matches!(s.open_first(&wire[2..]), Err(NoiseError::Layout(_))));
        let wire = c.seal(&[0, 0, 0, 1, 9, 9]).unwrap();
        assert!(matches!(s.open_first(&wire[2..]), Err(NoiseError::Layout(_))));
        assert!(c.seal(&vec![0; PLAIN_MAX + 1]).is_err());
    }
}
