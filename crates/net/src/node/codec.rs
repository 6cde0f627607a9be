//! Length-prefixed, bounded frames for the `/cairn/store/1` and `/cairn/stem/1`
//! request/response protocols.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

use crate::stem_wire::STEM_RESPONSE_BYTES_MAX;
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

    /// The stem protocol's bounds: one envelope of `envelope_bytes_max` plus the request's
    /// header per request, [`STEM_RESPONSE_BYTES_MAX`] per answer.
    pub fn stem(envelope_bytes_max: usize) -> Self {
        Self {
            request_bytes_max: envelope_bytes_max + crate::stem_wire::STEM_REQUEST_OVERHEAD_BYTES,
            response_bytes_max: STEM_RESPONSE_BYTES_MAX,
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
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(data).await
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
