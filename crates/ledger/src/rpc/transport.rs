//! Frames on a TCP stream: `len:u32` big-endian then the body, every read and write bounded by
//! a deadline and every length checked before the body is read.
//!
//! The body buffer grows with the bytes that actually arrive (in [`CHUNK_BYTES`] steps), so a
//! peer announcing a large frame and sending nothing costs no memory.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Step in which a frame body buffer grows, bytes.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
pub(crate) enum FrameError {
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
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Time left until `deadline`, or [`FrameError::TimedOut`] if none is.
fn left(deadline: Instant) -> Result<Duration, FrameError> {
    deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or(FrameError::TimedOut)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Fills `buf` before `deadline`.
fn read_full(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), FrameError> {
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

/// Reads one frame of at most `max` bytes, wholly before `deadline`.
pub(crate) fn read_frame(s: &mut TcpStream, max: usize, deadline: Instant) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    read_full(s, &mut len, deadline)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = Vec::new();
    while body.len() < len {
        let start = body.len();
        body.resize(start + (len - start).min(CHUNK_BYTES), 0);
        read_full(s, &mut body[start..], deadline)?;
    }
    Ok(body)
}

/// Writes one frame, wholly before `deadline`.
pub(crate) fn write_frame(s: &mut TcpStream, body: &[u8], deadline: Instant) -> Result<(), FrameError> {
    let len = u32::try_from(body.len())
        .map_err(|_| FrameError::TooLarge { len: body.len(), max: u32::MAX as usize })?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn frames_round_trip() {
        let (mut a, mut b) = pair();
        let deadline = Instant::now() + Duration::from_secs(5);
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = std::thread::spawn(move || write_frame(&mut a, &body, deadline).map(|_| body));
        let got = read_frame(&mut b, 300_000, deadline).unwrap();
        assert_eq!(got, writer.join().unwrap().unwrap());
    }

    #[test]
    fn oversized_frame_is_refused_unread() {
        let (mut a, mut b) = pair();
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(read_frame(&mut b, 1024, deadline), Err(FrameError::TooLarge { max: 1024, .. })));
    }

    #[test]
    fn a_dripping_peer_hits_the_deadline() {
        let (mut a, mut b) = pair();
        // Announces 100 bytes, then sends one byte every 20 ms: every read succeeds, the whole
        // frame never completes.
        let drip = std::thread::spawn(move || {
            let _ = a.write_all(&100u32.to_be_bytes());
            for _ in 0..50 {
                if a.write_all(&[0]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let start = Instant::now();
        let res = read_frame(&mut b, 1024, start + Duration::from_millis(200));
        assert!(matches!(res, Err(FrameError::TimedOut)), "{res:?}");
        assert!(start.elapsed() < Duration::from_millis(600));
        drop(b);
        drip.join().unwrap();
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, mut b) = pair();
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(read_frame(&mut b, 1024, deadline), Err(FrameError::Closed)));
    }
}
