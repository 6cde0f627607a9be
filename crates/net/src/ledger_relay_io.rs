//! The async side of the ledger relay ([`crate::ledger_relay`]): the server a node runs when
//! it relays (a task beside the swarm, fed by `libp2p-stream`), and the client's opening of a
//! relayed stream, as an async stream or as a blocking Unix-socket pipe for the blocking
//! ledger client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tracing::debug;

use crate::ledger_relay::{
    ANSWER_BYTES, HEADER_BYTES, LEDGER_RELAY_PROTOCOL, Refusal, RelayHeader, RelayLimits, Slots,
    decode_answer, encode_answer,
};

/// Refusals being written at once, at most; beyond it a refused stream is dropped unanswered
/// (the client reads the end of the stream).
const REFUSALS_IN_FLIGHT_MAX: usize = 64;
/// Buffer of each direction of a pipe, bytes.
const PIPE_BUFFER_BYTES: usize = 16 * 1024;

/// The protocol as libp2p names it.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(LEDGER_RELAY_PROTOCOL);

/// A validator a relay pipes to: its consensus key and its RPC address (`host:port`, a name
/// resolved at each dial), as the relay's own genesis lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// Consensus key (what the client names).
    pub key: [u8; 32],
    /// RPC address.
    pub rpc: String,
}

/// What a node relays to: one chain's validators, within limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRelayConfig {
    /// The chain id of the relay's genesis.
    pub chain: [u8; 32],
    /// The validators of that genesis.
    pub validators: Vec<RelayTarget>,
    /// Bounds of what the relay serves.
    pub limits: RelayLimits,
}

/// Why a relayed stream could not be opened.
#[derive(Debug, Error)]
pub enum RelayOpenError {
    /// The peer does not relay, or the stream could not be opened.
    #[error("no relay stream: {0}")]
    Stream(String),
    /// The relay refused.
    #[error("the relay refused: {0}")]
    Refused(Refusal),
    /// The relay's answer was not one.
    #[error("the relay's answer is malformed")]
    BadAnswer,
    /// The deadline passed first.
    #[error("timed out")]
    TimedOut,
    /// Local I/O (the pipe to the blocking client).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Spawns the relay server on the current tokio runtime: streams of [`PROTOCOL`] are accepted
/// from now on.
pub fn spawn_server(control: &mut Control, config: LedgerRelayConfig) -> Result<(), String> {
    let incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
    tokio::spawn(serve(incoming, Arc::new(config)));
    Ok(())
}

/// Answers relay streams until the swarm goes away.
async fn serve(mut incoming: IncomingStreams, config: Arc<LedgerRelayConfig>) {
    let slots = Arc::new(Mutex::new(Slots::new(config.limits)));
    let refusing = Arc::new(()); // its strong count - 1 = refusals in flight
    while let Some((peer, stream)) = incoming.next().await {
        let taken = slots.lock().unwrap_or_else(PoisonError::into_inner).take(&peer);
        match taken {
            Ok(()) => {
                let (slots, config) = (slots.clone(), config.clone());
                tokio::spawn(async move {
                    match relay_one(stream, &config).await {
                        Ok(bytes) => debug!(%peer, bytes, "ledger relay stream ended"),
                        Err(r) => debug!(%peer, "ledger relay stream refused: {r}"),
                    }
                    slots.lock().unwrap_or_else(PoisonError::into_inner).give(&peer);
                });
            }
            Err(r) if Arc::strong_count(&refusing) <= REFUSALS_IN_FLIGHT_MAX => {
                let token = refusing.clone();
                let setup = Duration::from_millis(config.limits.setup_ms);
                tokio::spawn(async move {
                    refuse(stream, r, setup).await;
                    drop(token);
                });
            }
            Err(_) => drop(stream),
        }
    }
}

/// Writes a refusal and closes, within `setup`.
async fn refuse(mut stream: Stream, r: Refusal, setup: Duration) {
    let _ = tokio::time::timeout(setup, async {
        stream.write_all(&encode_answer(Err(r))).await?;
        stream.close().await
    })
    .await;
}

/// One relayed stream: header, look-up, dial, answer, then the pipe. Returns the bytes piped,
/// or why the stream was refused.
async fn relay_one(mut stream: Stream, config: &LedgerRelayConfig) -> Result<u64, Refusal> {
    let setup = Duration::from_millis(config.limits.setup_ms);
    let mut header = [0u8; HEADER_BYTES];
    let target = match tokio::time::timeout(setup, stream.read_exact(&mut header)).await {
        Ok(Ok(())) => look_up(config, &header),
        _ => Err(Refusal::BadHeader),
    };
    let tcp = match target {
        Ok(rpc) => dial(rpc, setup).await,
        Err(r) => Err(r),
    };
    let tcp = match tcp {
        Ok(t) => t,
        Err(r) => {
            refuse(stream, r, setup).await;
            return Err(r);
        }
    };
    let answered = tokio::time::timeout(setup, async {
        stream.write_all(&encode_answer(Ok(()))).await?;
        stream.flush().await
    })
    .await;
    if !matches!(answered, Ok(Ok(()))) {
        return Ok(0);
    }
    Ok(pipe(stream, tcp, &config.limits).await)
}

/// The RPC address of the validator a header names, from the relay's own genesis only.
fn look_up<'a>(config: &'a LedgerRelayConfig, header: &[u8; HEADER_BYTES]) -> Result<&'a str, Refusal> {
    let h = RelayHeader::decode(header)?;
    if h.chain != config.chain {
        return Err(Refusal::WrongChain);
    }
    config
        .validators
        .iter()
        .find(|v| v.key == h.validator)
        .map(|v| v.rpc.as_str())
        .ok_or(Refusal::UnknownValidator)
}

/// A TCP connection to `rpc` (a name is resolved now), within `setup`.
async fn dial(rpc: &str, setup: Duration) -> Result<tokio::net::TcpStream, Refusal> {
    let connect = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(rpc).await.ok()?.take(4).collect();
        for a in addrs {
            if let Ok(s) = tokio::net::TcpStream::connect(a).await {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
        }
        None
    };
    tokio::time::timeout(setup, connect).await.ok().flatten().ok_or(Refusal::Unreachable)
}

/// Pipes bytes both ways between a libp2p stream and a local stream until either side ends,
/// an error, [`RelayLimits::idle_ms`] without a byte, [`RelayLimits::stream_ms_max`] in all,
/// or [`RelayLimits::stream_bytes_max`] bytes. Returns the bytes piped.
pub async fn pipe<T: AsyncRead + AsyncWrite + Send + 'static>(
    stream: Stream,
    other: T,
    limits: &RelayLimits,
) -> u64 {
    let (mut sr, mut sw) = stream.split();
    let (mut or, mut ow) = tokio::io::split(other);
    let idle = Duration::from_millis(limits.idle_ms);
    let end = tokio::time::Instant::now() + Duration::from_millis(limits.stream_ms_max);
    let mut up = vec![0u8; PIPE_BUFFER_BYTES];
    let mut down = vec![0u8; PIPE_BUFFER_BYTES];
    let (mut up_open, mut down_open) = (true, true);
    let mut total = 0u64;
    while up_open || down_open {
        let quiet = tokio::time::sleep(idle);
        // Both reads are cancel-safe: a read not chosen has taken no bytes.
        let moved = tokio::select! {
            r = sr.read(&mut up), if up_open => match r {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = tokio::time::timeout(idle, ow.shutdown()).await;
                    Some(0)
                }
                Ok(n) => tokio::time::timeout(idle, ow.write_all(&up[..n])).await.ok().and_then(|r| r.ok()).map(|()| n),
            },
            r = or.read(&mut down), if down_open => match r {
                Ok(0) | Err(_) => {
                    down_open = false;
                    let _ = tokio::time::timeout(idle, sw.close()).await;
                    Some(0)
                }
                Ok(n) => tokio::time::timeout(idle, async {
                    sw.write_all(&down[..n]).await?;
                    sw.flush().await
                })
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|()| n),
            },
            () = quiet => None,
            () = tokio::time::sleep_until(end) => None,
        };
        let Some(n) = moved else { break };
        total += n as u64;
        if total > limits.stream_bytes_max {
            break;
        }
    }
    total
}

/// Opens a relayed stream to the validator `header` names through `peer`, before `deadline`:
/// the stream after the relay's `Ok`, ready to carry the RPC channel.
pub async fn open(
    control: &mut Control,
    peer: PeerId,
    header: RelayHeader,
    deadline: Instant,
) -> Result<Stream, RelayOpenError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let opening = async {
        let mut s =
            control.open_stream(peer, PROTOCOL).await.map_err(|e| RelayOpenError::Stream(e.to_string()))?;
        s.write_all(&header.encode()).await?;
        s.flush().await?;
        let mut answer = [0u8; ANSWER_BYTES];
        s.read_exact(&mut answer).await?;
        match decode_answer(answer) {
            Some(Ok(())) => Ok(s),
            Some(Err(r)) => Err(RelayOpenError::Refused(r)),
            None => Err(RelayOpenError::BadAnswer),
        }
    };
    tokio::time::timeout(left, opening).await.map_err(|_| RelayOpenError::TimedOut)?
}

/// [`open`] for a blocking caller (not on a runtime thread): the relayed stream as one end of
/// a Unix socket pair, the other end piped to it by a task on `rt` (within `limits`), so the
/// caller reads and writes with its own deadlines.
#[cfg(unix)]
pub fn open_blocking(
    rt: &tokio::runtime::Handle,
    mut control: Control,
    peer: PeerId,
    header: RelayHeader,
    deadline: Instant,
    limits: RelayLimits,
) -> Result<std::os::unix::net::UnixStream, RelayOpenError> {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        match open(&mut control, peer, header, deadline).await {
            Ok(stream) => match tokio::net::UnixStream::from_std(theirs) {
                Ok(theirs) => {
                    let _ = tx.send(Ok(()));
                    pipe(stream, theirs, &limits).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(RelayOpenError::Io(e)));
                }
            },
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    // The task answers by the deadline (its open is bounded by it); the margin covers the
    // scheduling of the answer.
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
    match rx.recv_timeout(left) {
        Ok(Ok(())) => Ok(mine),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RelayOpenError::TimedOut),
    }
}
