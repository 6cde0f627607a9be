//! Length-prefixed, bounded frames for the `/cairn/store/1` and `/cairn/stem/1`
//! request/response protocols.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use crate::stem_wire::STEM_BATCH_RESPONSE_BYTES_MAX;
use crate::wire::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};

/// Length-prefixed frames, each direction bounded: the codec of `/cairn/store/1`
/// ([`FrameCodec::store`]) and of `/cairn/stem/1` ([`FrameCodec::stem`]).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Largest request frame, bytes.
    pub request_bytes_max: usize,
    /// Largest response frame, bytes.
    pub response_bytes_max: usize,
}

impl FrameCodec {
    /// The store protocol's bounds.
    pub fn store() -> Self {
        Self { request_bytes_max: REQUEST_BYTES_MAX, response_bytes_max: RESPONSE_BYTES_MAX }
    }

    /// The stem protocol's bounds: `envelope_bytes_max` of envelopes (one, or a batch's
    /// together) plus the request's header per request, [`STEM_BATCH_RESPONSE_BYTES_MAX`] per
    /// answer (a batch's answers).
    pub fn stem(envelope_bytes_max: usize) -> Self {
        Self {
            request_bytes_max: envelope_bytes_max + crate::stem_wire::STEM_BATCH_OVERHEAD_BYTES,
            response_bytes_max: STEM_BATCH_RESPONSE_BYTES_MAX,
        }
    }
}

/// The store protocol's codec.
pub type StoreCodec = FrameCodec;
/// The stem protocol's codec.
pub type StemCodec = FrameCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes over {max}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8], max: usize) -> io::Result<()> {
    if data.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too large"));
    }
    // One write, so the prefix does not travel as a frame of its own (a muxer frame and a
    // noise message, with a syscall each, for four bytes).
    let mut frame = Vec::with_capacity(4 + data.len());
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    io.write_all(&frame).await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;
    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.request_bytes_max).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_frame(io, self.response_bytes_max).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &req, self.request_bytes_max).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_frame(io, &res, self.response_bytes_max).await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::AsyncWrite;

    use super::{read_frame, write_frame};

    /// Records each write call it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_frame_is_one_write_and_reads_back_within_its_bound() {
        futures::executor::block_on(async {
            let mut w = Writes::default();
            write_frame(&mut w, b"hello", 16).await.unwrap();
            assert_eq!(w.0, [b"\0\0\0\x05hello".to_vec()], "prefix and body in one write");
            assert!(write_frame(&mut w, &[0; 17], 16).await.is_err(), "over the bound");
            assert_eq!(w.0.len(), 1, "nothing written for a refused frame");
            let mut r = futures::io::Cursor::new(w.0.concat());
            assert_eq!(read_frame(&mut r, 16).await.unwrap(), b"hello");
            let mut r = futures::io::Cursor::new(w.0.concat());
            assert!(read_frame(&mut r, 4).await.is_err(), "a frame over the reader's bound");
        });
    }
}
