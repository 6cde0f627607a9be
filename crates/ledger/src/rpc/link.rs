//! One validator as the client reaches it: its address, the consensus key it must prove, and
//! the channel, opened on demand (directly, or through peers that relay it) and kept between
//! calls.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commonware_cryptography::ed25519;

use super::client::ClientError;
use super::noise::NoiseError;
use super::protocol::{RESPONSE_BYTES_MAX, Response};
use super::transport::{Channel, FrameError, Relays};
use crate::endpoint::Endpoint;

/// With relays, how long a direct TCP connect may take before the relays are tried, ms (a
/// validator whose address drops packets would otherwise use the whole call's deadline).
pub const DIRECT_CONNECT_MS_MAX: u64 = 1_000;
/// With relays, after a direct dial failed, relays are tried first for this long, ms.
pub const DIRECT_RETRY_AFTER_MS: u64 = 30_000;
/// Relays tried per new connection, at most.
pub const RELAY_TRIES_MAX: usize = 4;

/// One validator's address, the identity it must prove, and its channel, opened on demand
/// and kept between calls.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) addr: Endpoint,
    key: ed25519::PublicKey,
    chain: [u8; 32],
    stream: Option<Channel>,
    /// Peers that may relay the channel when the address cannot be dialled.
    pub(super) relays: Option<Arc<dyn Relays>>,
    /// The peer relaying the open channel (`None`: direct, or none open).
    via: Option<String>,
    /// When a direct dial last failed (relays are then tried first for a while).
    direct_failed: Option<Instant>,
}

impl Link {
    pub(super) fn new(addr: Endpoint, key: ed25519::PublicKey, chain: [u8; 32]) -> Self {
        Self { addr, key, chain, stream: None, relays: None, via: None, direct_failed: None }
    }

    pub(super) fn fresh(&self) -> Self {
        Self { relays: self.relays.clone(), ..Self::new(self.addr.clone(), self.key.clone(), self.chain) }
    }

    /// One round trip, wholly before `deadline`. A kept connection that fails (the validator
    /// closed it while idle) is replaced once, and so is a relayed channel that failed (the
    /// relay is blamed, so another path is taken).
    pub(super) fn call(&mut self, req: &[u8], deadline: Instant) -> Result<Response, ClientError> {
        let reused = self.stream.is_some();
        match self.round_trip(req, deadline) {
            Err(ClientError::Unreachable(_)) if reused => self.round_trip(req, deadline),
            Err(e) if self.via.take().is_some() && Instant::now() < deadline => {
                tracing::debug!("relayed channel to {} failed ({e}); trying another path", self.addr);
                self.round_trip(req, deadline)
            }
            res => res,
        }
    }

    fn round_trip(&mut self, req: &[u8], deadline: Instant) -> Result<Response, ClientError> {
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect(deadline)?,
        };
        let frame = match stream.send(req, deadline).and_then(|()| stream.recv(RESPONSE_BYTES_MAX, deadline))
        {
            Ok(f) => f,
            Err(e) => {
                // Bytes through a relay that fail are the relay's doing as likely as the
                // validator's: the relay is tried last for a while, the validator not suspected.
                // A closed channel is not blamed (the validator closes idle ones).
                if let (Some(peer), Some(relays)) = (&self.via, &self.relays) {
                    if !matches!(e, FrameError::Closed | FrameError::Io(_)) {
                        relays.blame(peer);
                    }
                    if matches!(e, FrameError::TimedOut) {
                        return Err(ClientError::Timeout);
                    }
                    return Err(ClientError::Unreachable(format!("{} via {peer}: {e}", self.addr)));
                }
                return Err(self.frame_error(e));
            }
        };
        let resp =
            Response::decode(&frame).map_err(|e| ClientError::BadAnswer(format!("{}: {e}", self.addr)))?;
        if let Response::Error(m) = resp {
            // The validator closes the connection after refusing a request.
            return Err(ClientError::BadAnswer(format!("{} refused the request: {m}", self.addr)));
        }
        self.stream = Some(stream);
        Ok(resp)
    }

    /// A new channel: dialled directly, or through a relay when there are relays and the
    /// direct dial fails (or failed recently, or the relays say not to dial).
    fn connect(&mut self, deadline: Instant) -> Result<Channel, ClientError> {
        self.via = None;
        let Some(relays) = self.relays.clone() else { return self.connect_direct(deadline, None) };
        let recent_failure =
            self.direct_failed.is_some_and(|t| t.elapsed() < Duration::from_millis(DIRECT_RETRY_AFTER_MS));
        let mut direct_tried = !relays.direct_first();
        let mut last = ClientError::Unreachable(format!("{}: no peer relays to it", self.addr));
        if !direct_tried && !recent_failure {
            direct_tried = true;
            match self.connect_direct(deadline, Some(Duration::from_millis(DIRECT_CONNECT_MS_MAX))) {
                Ok(ch) => return Ok(ch),
                Err(e @ ClientError::Unauthenticated(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        for peer in relays.peers().into_iter().take(RELAY_TRIES_MAX) {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            let via = |e: &dyn std::fmt::Display| {
                ClientError::Unreachable(format!("{} via {peer}: {e}", self.addr))
            };
            let pipe = match relays.open(&peer, &self.chain, &key_bytes(&self.key), deadline) {
                Ok(p) => p,
                Err(e) => {
                    last = via(&e);
                    continue;
                }
            };
            match Channel::connect_boxed(pipe, &self.chain, &self.key, deadline) {
                Ok(ch) => {
                    self.via = Some(peer);
                    return Ok(ch);
                }
                Err(e) => {
                    relays.blame(&peer);
                    last = via(&e);
                }
            }
        }
        if !direct_tried {
            return self.connect_direct(deadline, None);
        }
        Err(last)
    }

    /// A channel over a direct TCP connection (its connect bounded by `connect_max` too).
    fn connect_direct(
        &mut self,
        deadline: Instant,
        connect_max: Option<Duration>,
    ) -> Result<Channel, ClientError> {
        let res = self.dial(deadline, connect_max);
        match &res {
            Ok(_) => self.direct_failed = None,
            Err(_) => self.direct_failed = Some(Instant::now()),
        }
        res
    }

    fn dial(&self, deadline: Instant, connect_max: Option<Duration>) -> Result<Channel, ClientError> {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
        let left = left.ok_or(ClientError::Timeout)?;
        let left = connect_max.map_or(left, |m| m.min(left));
        // A name is resolved at each new connection: a validator that moved is found again.
        let to = self.addr.resolve().map_err(|e| ClientError::Unreachable(format!("{}: {e}", self.addr)))?;
        let s = TcpStream::connect_timeout(&to, left).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => ClientError::Timeout,
            _ => ClientError::Unreachable(format!("{}: {e}", self.addr)),
        })?;
        let _ = s.set_nodelay(true);
        Channel::connect(s, &self.chain, &self.key, deadline).map_err(|e| self.frame_error(e))
    }

    fn frame_error(&self, e: FrameError) -> ClientError {
        match e {
            FrameError::TimedOut => ClientError::Timeout,
            FrameError::Noise(NoiseError::Unauthenticated(_) | NoiseError::Reply(_)) => {
                ClientError::Unauthenticated(format!("{}: {e}", self.addr))
            }
            FrameError::TooLarge { .. } | FrameError::Noise(_) => {
                ClientError::BadAnswer(format!("{}: {e}", self.addr))
            }
            FrameError::Closed | FrameError::Io(_) => ClientError::Unreachable(format!("{}: {e}", self.addr)),
        }
    }
}

/// A consensus key's 32 bytes.
fn key_bytes(k: &ed25519::PublicKey) -> [u8; 32] {
    use commonware_codec::Encode as _;
    let mut out = [0u8; 32];
    let bytes = k.encode();
    let n = bytes.len().min(32);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}
