//! The ledger RPC channel on a TCP stream: a Noise handshake ([`super::noise`]), then frames
//! sealed into Noise messages (`size:u16` big-endian + ciphertext each). Every read and write
//! is bounded by a deadline and every length is checked before the bytes are read.
//!
//! The stream is a [`Pipe`]: a TCP connection to the validator, or a pipe that a peer relays
//! to it (the handshake and every frame are end to end, so a relay sees only sizes and
//! timing, and any byte it changes fails authentication).
//!
//! A frame's body grows with the messages that actually arrive (at most [`PLAIN_MAX`] bytes
//! each, after they authenticate), so a peer announcing a large frame and sending nothing
//! costs no memory; one message in flight costs at most [`MESSAGE_MAX`] bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use commonware_cryptography::ed25519;
use thiserror::Error;

use super::noise::{
    self, HELLO_BYTES, MESSAGE_MAX, NoiseError, PLAIN_MAX, REPLY_BYTES, RpcIdentity, Session,
};

/// Why a frame could not be read or written, or a channel not opened.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The deadline passed first.
    #[error("timed out")]
    TimedOut,
    /// The peer closed the connection (before a frame, or inside one).
    #[error("connection closed")]
    Closed,
    /// The announced length is over the limit (the body was not read).
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The handshake failed, or a message did not decrypt or was misplaced.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A byte stream an RPC channel runs on, with deadlines on each read and write.
pub trait Pipe: Read + Write + Send + std::fmt::Debug {
    /// Bounds the next reads (`None`: unbounded).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    /// Bounds the next writes (`None`: unbounded).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
    /// Closes the sending half (the other end reads the end of the stream).
    fn shutdown_write(&self);
}

impl Pipe for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

#[cfg(unix)]
impl Pipe for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_write_timeout(self, timeout)
    }
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Peers that relay RPC channels to validators (see `cairn_net`'s ledger relay): another way
/// to reach a validator than dialling the address the genesis lists. A relay is trusted with
/// nothing: the channel it carries is authenticated and encrypted end to end, so a relay that
/// changes a byte only makes the channel fail, and the client then blames it and tries another.
pub trait Relays: Send + Sync + std::fmt::Debug {
    /// Whether to dial validators directly first (`false`: through relays only).
    fn direct_first(&self) -> bool;
    /// The peers to try, best first (names as [`Relays::open`] takes them).
    fn peers(&self) -> Vec<String>;
    /// Opens a pipe to the RPC listener of the validator with consensus key `validator` (its
    /// 32 bytes) of chain `chain` through `peer`, before `deadline`; the error says why the
    /// relay refused or failed.
    fn open(
        &self,
        peer: &str,
        chain: &[u8; 32],
        validator: &[u8; 32],
        deadline: Instant,
    ) -> Result<Box<dyn Pipe>, String>;
    /// A channel through `peer` failed (a byte changed, or it stalled): try it last for a while.
    fn blame(&self, peer: &str);
}

/// Time left until `deadline`, or [`FrameError::TimedOut`] if none is.
fn left(deadline: Instant) -> Result<Duration, FrameError> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or(FrameError::TimedOut)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Fills `buf` before `deadline`.
fn read_full(s: &mut dyn Pipe, buf: &mut [u8], deadline: Instant) -> Result<(), FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        s.set_read_timeout(Some(left(deadline)?))?;
        match s.read(&mut buf[filled..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(FrameError::TimedOut),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Writes all of `out` before `deadline`.
fn write_all(s: &mut dyn Pipe, out: &[u8], deadline: Instant) -> Result<(), FrameError> {
    let mut sent = 0;
    while sent < out.len() {
        s.set_write_timeout(Some(left(deadline)?))?;
        match s.write(&out[sent..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(FrameError::TimedOut),
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one message's size prefix, then (if `check` accepts the size) its bytes.
fn read_message(
    s: &mut dyn Pipe,
    deadline: Instant,
    check: impl FnOnce(usize) -> Result<(), NoiseError>,
) -> Result<Vec<u8>, FrameError> {
    let mut size = [0u8; 2];
    read_full(s, &mut size, deadline)?;
    let size = usize::from(u16::from_be_bytes(size));
    check(size)?;
    let mut msg = vec![0u8; size];
    read_full(s, &mut msg, deadline)?;
    Ok(msg)
}

/// A handshake message with its size prefix.
fn with_size(msg: &[u8]) -> Result<Vec<u8>, FrameError> {
    let size = u16::try_from(msg.len()).map_err(|_| NoiseError::Layout("a handshake message over 64 KiB"))?;
    Ok([size.to_be_bytes().as_slice(), msg].concat())
}

/// An open, authenticated and encrypted RPC connection.
#[derive(Debug)]
pub struct Channel {
    stream: Box<dyn Pipe>,
    session: Session,
}

impl Channel {
    /// Opens the client side on a connected `stream`: the handshake with a validator of chain
    /// `chain` that must prove the identity `validator` (the key the genesis lists for the
    /// address dialled), wholly before `deadline`.
    pub fn connect(
        stream: impl Pipe + 'static,
        chain: &[u8; 32],
        validator: &ed25519::PublicKey,
        deadline: Instant,
    ) -> Result<Self, FrameError> {
        Self::connect_boxed(Box::new(stream), chain, validator, deadline)
    }

    /// [`Channel::connect`] on a boxed pipe (a relayed one).
    pub fn connect_boxed(
        mut stream: Box<dyn Pipe>,
        chain: &[u8; 32],
        validator: &ed25519::PublicKey,
        deadline: Instant,
    ) -> Result<Self, FrameError> {
        let (hello, msg) = noise::hello(chain)?;
        write_all(stream.as_mut(), &with_size(&msg)?, deadline)?;
        let reply = read_message(stream.as_mut(), deadline, |n| {
            (n == REPLY_BYTES)
                .then_some(())
                .ok_or_else(|| NoiseError::Reply(format!("{n} bytes announced, expected {REPLY_BYTES}")))
        })?;
        let session = hello.finish(&reply, validator)?;
        Ok(Self { stream, session })
    }

    /// Opens the validator side on an accepted `stream`: reads the client's hello and answers
    /// it as `id`, wholly before `deadline`. Anything but a hello is refused unread.
    pub fn accept(
        stream: impl Pipe + 'static,
        id: &RpcIdentity,
        deadline: Instant,
    ) -> Result<Self, FrameError> {
        let mut stream: Box<dyn Pipe> = Box::new(stream);
        let msg = read_message(stream.as_mut(), deadline, |n| {
            (n == HELLO_BYTES)
                .then_some(())
                .ok_or_else(|| NoiseError::Hello(format!("{n} bytes announced, expected {HELLO_BYTES}")))
        })?;
        let (reply, session) = noise::answer_hello(id, &msg)?;
        write_all(stream.as_mut(), &with_size(&reply)?, deadline)?;
        Ok(Self { stream, session })
    }

    /// Sends one frame, wholly before `deadline`.
    pub fn send(&mut self, body: &[u8], deadline: Instant) -> Result<(), FrameError> {
        let wire = self.session.seal_frame(body)?;
        write_all(self.stream.as_mut(), &wire, deadline)
    }

    /// Sends one Noise message with `plain` (at most [`PLAIN_MAX`] bytes) as its plaintext,
    /// whatever the frame layout: for tests of a peer that breaks it.
    pub fn send_message(&mut self, plain: &[u8], deadline: Instant) -> Result<(), FrameError> {
        let wire = self.session.seal(plain)?;
        write_all(self.stream.as_mut(), &wire, deadline)
    }

    /// Reads one frame of at most `max` bytes, wholly before `deadline`.
    pub fn recv(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, FrameError> {
        let first = self.read_sealed(deadline)?;
        let (len, mut body) = self.session.open_first(&first)?;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        while body.len() < len {
            let next = self.read_sealed(deadline)?;
            let part = self.session.open(&next)?;
            if part.is_empty() || part.len() > len - body.len() {
                return Err(NoiseError::Layout("a message that is empty or overruns its frame").into());
            }
            body.extend_from_slice(&part);
        }
        Ok(body)
    }

    /// One sealed message (at most [`MESSAGE_MAX`] bytes by its `u16` prefix).
    fn read_sealed(&mut self, deadline: Instant) -> Result<Vec<u8>, FrameError> {
        const _: () = assert!(MESSAGE_MAX == u16::MAX as usize && PLAIN_MAX < MESSAGE_MAX);
        read_message(self.stream.as_mut(), deadline, |_| Ok(()))
    }

    /// Closes the sending half (the peer reads the end of the stream after what was sent).
    pub fn shutdown_write(&self) {
        self.stream.shutdown_write();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::TcpListener;

    use super::*;

    const CHAIN: [u8; 32] = [3; 32];

    fn identity() -> RpcIdentity {
        RpcIdentity::from_seed([5; 32], CHAIN).unwrap()
    }

    fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// A client channel and a server channel connected to each other.
    fn pair() -> (Channel, Channel) {
        let (a, b) = tcp_pair();
        let id = identity();
        let server = std::thread::spawn(move || Channel::accept(b, &id, soon()).unwrap());
        let client = Channel::connect(a, &CHAIN, &identity().public_key(), soon()).unwrap();
        (client, server.join().unwrap())
    }

    #[test]
    fn frames_round_trip() {
        let (mut a, mut b) = pair();
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = std::thread::spawn(move || a.send(&body, soon()).map(|_| body));
        let got = b.recv(300_000, soon()).unwrap();
        assert_eq!(got, writer.join().unwrap().unwrap());
    }

    #[test]
    fn oversized_frame_is_refused_unread() {
        let (mut a, mut b) = pair();
        a.send_message(&u32::MAX.to_be_bytes(), soon()).unwrap();
        assert!(matches!(b.recv(1024, soon()), Err(FrameError::TooLarge { max: 1024, .. })));
    }

    #[test]
    fn a_dripping_peer_hits_the_deadline() {
        let (mut a, mut b) = pair();
        // Announces a 100-byte message, then sends one byte every 20 ms: every read succeeds,
        // the whole message never completes.
        let drip = std::thread::spawn(move || {
            let _ = a.stream.write_all(&100u16.to_be_bytes());
            for _ in 0..50 {
                if a.stream.write_all(&[0]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let start = Instant::now();
        let res = b.recv(1024, start + Duration::from_millis(200));
        assert!(matches!(res, Err(FrameError::TimedOut)), "{res:?}");
        assert!(start.elapsed() < Duration::from_millis(600));
        drop(b);
        drip.join().unwrap();
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, mut b) = pair();
        drop(a);
        assert!(matches!(b.recv(1024, soon()), Err(FrameError::Closed)));
    }

    #[test]
    fn plaintext_and_tampered_bytes_are_refused() {
        // A plaintext frame where a hello belongs: refused before its body is read.
        let (mut a, b) = tcp_pair();
        a.write_all(&[0, 0, 0, 2, 2, 1]).unwrap();
        let res = Channel::accept(b, &identity(), soon());
        assert!(matches!(res, Err(FrameError::Noise(NoiseError::Hello(_)))), "{res:?}");
        // A byte flipped on the wire after the handshake.
        let (mut a, mut b) = pair();
        let mut wire = a.session.seal_frame(b"hello").unwrap();
        wire[5] ^= 0x40;
        a.stream.write_all(&wire).unwrap();
        assert!(matches!(b.recv(1024, soon()), Err(FrameError::Noise(NoiseError::Decrypt))));
        // A client that dialled a server that is not the validator the genesis names.
        let (a, b) = tcp_pair();
        let other = RpcIdentity::from_seed([6; 32], CHAIN).unwrap();
        let server = std::thread::spawn(move || Channel::accept(b, &other, soon()).map(|_| ()));
        let res = Channel::connect(a, &CHAIN, &identity().public_key(), soon());
        assert!(matches!(res, Err(FrameError::Noise(NoiseError::Unauthenticated(_)))), "{res:?}");
        server.join().unwrap().unwrap();
    }
}
