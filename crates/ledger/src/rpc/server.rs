//! The validator side: answers [`Request`]s from the ledger core over the encrypted channel
//! ([`Channel`]: Noise `NX`, the validator proving its genesis identity), one thread per
//! connection, at most [`CONNECTIONS_MAX`] connections and [`CONNECTIONS_PER_IP_MAX`] from one
//! address (loopback exempt: a local network runs every client on 127.0.0.1).
//!
//! Every byte a client sends is untrusted: anything but a handshake hello, or a hello not
//! completed within [`HANDSHAKE_WAIT_SECS`], closes the connection (logged at debug, nothing to
//! answer on); after the handshake, a frame over [`REQUEST_BYTES_MAX`] or one that does not
//! decode gets a [`Response::Error`] and the connection is closed; a client that sends nothing,
//! or a request too slowly, is dropped after [`REQUEST_WAIT_SECS`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::debug;

use super::noise::RpcIdentity;
use super::protocol::{
    HANDSHAKES_PER_REPLY_MAX, HandshakePage, LINKS_PER_REPLY_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX,
    Refusal, RemoteChainStatus, RemoteOutcome, RemoteStatus, Request, Response,
};
use super::transport::{Channel, FrameError};
use crate::core::{Ledger, TxStatus};
use crate::tx::TxError;

/// Most concurrent client connections a validator serves.
pub const CONNECTIONS_MAX: usize = 256;
/// Most concurrent client connections from one IP address (loopback exempt), so one host
/// cannot take every slot; a connection over it is closed at once and the client retries.
pub const CONNECTIONS_PER_IP_MAX: usize = 16;
/// How long a new connection may take to complete its handshake, seconds.
pub const HANDSHAKE_WAIT_SECS: u64 = 10;
/// How long a connection may stay idle, or take to send one whole request, seconds.
pub const REQUEST_WAIT_SECS: u64 = 120;
/// How long writing one response may take, seconds.
pub const RESPONSE_WRITE_SECS: u64 = 30;
/// Pause after a failed `accept` (out of descriptors), milliseconds.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// The reason for a refused transaction, as sent on the wire.
pub fn refusal(e: &TxError) -> Refusal {
    Refusal { code: e.code(), message: e.to_string() }
}

/// A transaction's status, as sent on the wire.
pub fn remote_status(s: TxStatus) -> RemoteStatus {
    match s {
        TxStatus::Unknown => RemoteStatus::Unknown,
        TxStatus::Pending => RemoteStatus::Pending,
        TxStatus::Rejected(e) => {
            let Refusal { code, message } = refusal(&e);
            RemoteStatus::Rejected { code, message }
        }
        TxStatus::Finalized { height, outcome } => {
            RemoteStatus::Finalized { height, outcome: RemoteOutcome::of(&outcome) }
        }
    }
}

/// Handshakes from `from`, as many as fit one response.
fn handshakes(ledger: &Ledger, topic: &cairn_proto::Topic, from: u64, max: u32) -> Vec<Vec<u8>> {
    let max = (max as usize).min(HANDSHAKES_PER_REPLY_MAX);
    fit_in_reply(ledger.handshakes(topic, from, max))
}

/// A page of `topic`'s handshakes from `from` (at most `max`, none at or after `until`) with
/// the chain value before it and the links after it up to `until`. A validator that does not
/// hold everything before `from` answers an empty page, which the client refuses.
fn handshake_page(
    ledger: &Ledger,
    topic: &cairn_proto::Topic,
    from: u64,
    max: u32,
    until: u64,
) -> HandshakePage {
    let store = ledger.store();
    let Ok(Some(start)) = store.chain_before(topic, from) else { return HandshakePage::default() };
    let want = until.saturating_sub(from).min(u64::from(max)).min(HANDSHAKES_PER_REPLY_MAX as u64);
    let payloads = match want {
        0 => Vec::new(),
        n => {
            let list = store.handshakes(topic, from, n as usize).unwrap_or_default();
            // room for the start value and a full list of links
            fit_within(list, RESPONSE_BYTES_MAX - 64 - LINKS_PER_REPLY_MAX * 32)
        }
    };
    let next = from.saturating_add(payloads.len() as u64);
    let links = store.links(topic, next, until, LINKS_PER_REPLY_MAX).unwrap_or_default();
    HandshakePage { start, payloads, links }
}

/// The longest prefix of `list` whose [`Response::Handshakes`] encoding fits one response
/// frame (256 handshakes of 64 KiB would not).
fn fit_in_reply(list: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    fit_within(list, RESPONSE_BYTES_MAX)
}

/// The longest prefix of `list` whose encoding, with a length prefix each, fits in `room`
/// bytes together with a version, kind and count.
fn fit_within(list: Vec<Vec<u8>>, room: usize) -> Vec<Vec<u8>> {
    // Room for the version, kind and count; each payload costs its length prefix too.
    let mut budget = room - 8;
    let mut out = Vec::new();
    for h in list {
        let Some(rest) = budget.checked_sub(4 + h.len()) else { break };
        budget = rest;
        out.push(h);
    }
    out
}

/// Answers one well-formed request from `ledger`.
pub fn answer(ledger: &Ledger, req: Request) -> Response {
    match req {
        Request::Submit(tx) => Response::Submitted(ledger.submit(tx).map_err(|e| refusal(&e))),
        Request::Status => {
            let s = ledger.status();
            Response::Status(RemoteChainStatus {
                height: s.height,
                digest: s.digest,
                state_root: s.state_root,
                mempool: s.mempool as u64,
            })
        }
        Request::TxStatus(id) => Response::TxStatus(remote_status(ledger.tx_status(&id))),
        Request::Block(height) => Response::Block(ledger.block(height).map(|b| {
            let fin = ledger.finalization(&b.id());
            (b.as_ref().clone(), fin)
        })),
        Request::Proof(key) => Response::Proof(ledger.prove(&key).ok().flatten()),
        Request::OutcomeProof(id) => Response::OutcomeProof(crate::outcome_proof::prove(ledger, &id)),
        Request::Handshakes { topic, from, max } => {
            Response::Handshakes(handshakes(ledger, &topic, from, max))
        }
        Request::HandshakePage { topic, from, max, until } => {
            Response::HandshakePage(handshake_page(ledger, &topic, from, max, until))
        }
        Request::Nonce(signer) => Response::Nonce(ledger.nonce(&signer)),
        Request::Query { contract, msg } => Response::Query(
            ledger.query_contract(&contract, &msg).map(|(out, _)| out).map_err(|e| refusal(&e)),
        ),
        Request::SubmitBatch(txs) => Response::SubmittedBatch(
            ledger.submit_batch(txs).into_iter().map(|r| r.map_err(|e| refusal(&e))).collect(),
        ),
    }
}

/// Answers one request frame. The flag is `false` when the frame was malformed: the answer is
/// then a [`Response::Error`] and the connection should be closed.
pub fn respond(ledger: &Ledger, frame: &[u8]) -> (Response, bool) {
    match Request::decode(frame) {
        Ok(req) => (answer(ledger, req), true),
        Err(e) => (Response::Error(format!("malformed request: {e}")), false),
    }
}

/// Serves one connection until the client closes it, stalls, or sends something malformed.
fn serve_connection(ledger: &Ledger, id: &RpcIdentity, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let deadline = Instant::now() + Duration::from_secs(HANDSHAKE_WAIT_SECS);
    let mut ch = match Channel::accept(stream, id, deadline) {
        Ok(ch) => ch,
        Err(e) => {
            debug!("ledger rpc handshake with {peer:?} refused: {e}");
            return;
        }
    };
    loop {
        let deadline = Instant::now() + Duration::from_secs(REQUEST_WAIT_SECS);
        let (resp, keep) = match ch.recv(REQUEST_BYTES_MAX, deadline) {
            Ok(frame) => respond(ledger, &frame),
            Err(e @ FrameError::TooLarge { .. }) => (Response::Error(format!("request {e}")), false),
            Err(e @ FrameError::Noise(_)) => (Response::Error(e.to_string()), false),
            Err(_) => return,
        };
        let deadline = Instant::now() + Duration::from_secs(RESPONSE_WRITE_SECS);
        if ch.send(&resp.encode(), deadline).is_err() {
            return;
        }
        if !keep {
            ch.shutdown_write();
            return;
        }
    }
}

/// Connections open per IP address (entries leave at zero, so at most `CONNECTIONS_MAX`).
type PerIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// One of the [`CONNECTIONS_MAX`] connection slots (and of its address's
/// [`CONNECTIONS_PER_IP_MAX`]), given back when dropped.
struct Slot {
    active: Arc<AtomicUsize>,
    per_ip: PerIp,
    ip: Option<IpAddr>,
}

impl Slot {
    fn take(active: &Arc<AtomicUsize>, per_ip: &PerIp, ip: IpAddr) -> Option<Self> {
        active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < CONNECTIONS_MAX).then_some(n + 1))
            .ok()?;
        let counted = (!ip.is_loopback()).then_some(ip);
        if let Some(ip) = counted {
            let mut m = per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = m.entry(ip).or_insert(0);
            if *n >= CONNECTIONS_PER_IP_MAX {
                drop(m);
                active.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            *n += 1;
        }
        Some(Self { active: active.clone(), per_ip: per_ip.clone(), ip: counted })
    }

    fn release_ip(&self) {
        if let Some(ip) = self.ip {
            let mut m = self.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = m.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release_ip();
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves client requests for `ledger` on `listener` as `id` (blocking; run it on its own
/// thread).
pub fn serve(listener: TcpListener, ledger: Ledger, id: RpcIdentity) {
    let active = Arc::new(AtomicUsize::new(0));
    let per_ip: PerIp = Arc::new(Mutex::new(HashMap::new()));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                debug!("ledger rpc accept failed: {e}");
                std::thread::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS));
                continue;
            }
        };
        let Some(ip) = stream.peer_addr().ok().map(|a| a.ip()) else { continue };
        let Some(slot) = Slot::take(&active, &per_ip, ip) else {
            continue; // dropped: the client retries
        };
        let (ledger, id) = (ledger.clone(), id.clone());
        let spawned = std::thread::Builder::new().name("ledger-rpc-conn".into()).spawn(move || {
            let _slot = slot;
            // clients are served after consensus under contention (core/admission.rs)
            crate::core::lower_thread_priority(ledger.admission_policy().rpc_nice);
            serve_connection(&ledger, &id, stream);
        });
        if let Err(e) = spawned {
            debug!("ledger rpc connection thread not started: {e}");
        }
    }
}

/// Starts [`serve`] on a background thread bound to `addr`; returns the bound address.
pub fn spawn_server(addr: SocketAddr, ledger: Ledger, id: RpcIdentity) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("ledger-rpc".into()).spawn(move || serve(listener, ledger, id))?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use cairn_proto::sequencer::HANDSHAKE_BYTES_MAX;

    use super::*;

    #[test]
    fn handshake_replies_fit_one_frame() {
        let list = vec![vec![7u8; HANDSHAKE_BYTES_MAX]; HANDSHAKES_PER_REPLY_MAX];
        let fitted = fit_in_reply(list);
        assert!(!fitted.is_empty() && fitted.len() < HANDSHAKES_PER_REPLY_MAX);
        let encoded = Response::Handshakes(fitted.clone()).encode();
        assert!(encoded.len() <= RESPONSE_BYTES_MAX);
        assert_eq!(Response::decode(&encoded), Ok(Response::Handshakes(fitted)));
        let small = vec![vec![1u8; 10]; 5];
        assert_eq!(fit_in_reply(small.clone()), small);
    }

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let active = Arc::new(AtomicUsize::new(0));
        let per_ip: PerIp = Arc::new(Mutex::new(HashMap::new()));
        let lo = IpAddr::from([127, 0, 0, 1]);
        let slots: Vec<Slot> =
            (0..CONNECTIONS_MAX).map(|_| Slot::take(&active, &per_ip, lo).unwrap()).collect();
        assert!(Slot::take(&active, &per_ip, lo).is_none(), "one connection over the limit");
        assert!(Slot::take(&active, &per_ip, IpAddr::from([10, 0, 0, 1])).is_none());
        assert!(per_ip.lock().unwrap().is_empty(), "a refused connection holds nothing");
        drop(slots);
        assert_eq!(active.load(Ordering::SeqCst), 0);
        assert!(Slot::take(&active, &per_ip, lo).is_some());
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let active = Arc::new(AtomicUsize::new(0));
        let per_ip: PerIp = Arc::new(Mutex::new(HashMap::new()));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let from_a: Vec<Slot> =
            (0..CONNECTIONS_PER_IP_MAX).map(|_| Slot::take(&active, &per_ip, a).unwrap()).collect();
        assert!(Slot::take(&active, &per_ip, a).is_none(), "its own limit reached");
        let from_b = Slot::take(&active, &per_ip, b).expect("another address still gets in");
        assert_eq!(active.load(Ordering::SeqCst), CONNECTIONS_PER_IP_MAX + 1);
        drop(from_a);
        drop(from_b);
        assert!(per_ip.lock().unwrap().is_empty(), "counts leave at zero");
        assert_eq!(active.load(Ordering::SeqCst), 0);
        // Loopback is exempt: a local network runs every client on 127.0.0.1.
        let lo = IpAddr::from([127, 0, 0, 1]);
        let many: Vec<Slot> =
            (0..CONNECTIONS_PER_IP_MAX * 2).map(|_| Slot::take(&active, &per_ip, lo).unwrap()).collect();
        assert_eq!(many.len(), CONNECTIONS_PER_IP_MAX * 2);
    }
}
