//! Client access to validators: a small length-prefixed request/response protocol over TCP,
//! a server that a validator runs next to consensus, a blocking client for non-validator nodes
//! (submit transactions, follow finalized blocks, fetch and verify proofs), and the real
//! [`CommitSequencer`].
//!
//! Frames are `u32` big-endian length + body; bodies use the canonical codec. Every length is
//! checked before allocation; a malformed request closes the connection.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::sequencer::{CommitSequencer, HANDSHAKE_BYTES_MAX, Sequenced, SequencerError};
use cairn_proto::{AccountId, DeviceId, Topic};
use thiserror::Error;
use tracing::debug;

use crate::block::{BLOCK_BYTES_MAX, Block};
use crate::core::{Ledger, TxStatus};
use crate::genesis::Genesis;
use crate::light::{FINALIZATION_BYTES_MAX, LightClient, LightError, StateProof};
use crate::state::{Account, Outcome, StateKey};
use crate::tx::{TX_BYTES_MAX, Tx, TxBody, TxError, TxId};

/// Largest frame, in bytes.
pub const FRAME_MAX: usize = BLOCK_BYTES_MAX + FINALIZATION_BYTES_MAX + 1024;
/// Most concurrent client connections a validator serves.
pub const CONNECTIONS_MAX: usize = 256;
const HANDSHAKES_PER_REPLY: usize = 256;

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No validator could be reached.
    #[error("no validator reachable: {0}")]
    Unreachable(String),
    /// Validators refused the transaction.
    #[error("transaction refused: {message} (code {code})")]
    Refused {
        /// [`TxError::code`].
        code: u8,
        /// Reason.
        message: String,
    },
    /// The answer did not arrive in time.
    #[error("timed out")]
    Timeout,
    /// A validator sent something malformed.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// A proof did not verify.
    #[error(transparent)]
    Light(#[from] LightError),
}

/// The outcome of a finalized transaction as a client sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RemoteOutcome {
    /// Applied.
    Applied,
    /// Sequenced at a position.
    Sequenced {
        /// Topic.
        topic: Topic,
        /// Position.
        seq: u64,
    },
    /// Included but its effect failed.
    Failed {
        /// [`TxError::code`].
        code: u8,
        /// Reason.
        message: String,
        /// For a stale handshake: `(after, current)`.
        stale: Option<(u64, u64)>,
    },
}

/// A transaction's status as reported by a validator.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RemoteStatus {
    /// Unknown to the validator.
    Unknown,
    /// In its mempool.
    Pending,
    /// Refused before inclusion.
    Rejected {
        /// [`TxError::code`].
        code: u8,
        /// Reason.
        message: String,
    },
    /// In a finalized block.
    Finalized {
        /// Height.
        height: u64,
        /// Outcome.
        outcome: RemoteOutcome,
    },
}

/// Finalized chain status of one validator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RemoteChainStatus {
    /// Finalized height.
    pub height: u64,
    /// Tip digest.
    pub digest: [u8; 32],
    /// State root.
    pub state_root: [u8; 32],
    /// Mempool size.
    pub mempool: u64,
}

mod tag {
    pub(super) const SUBMIT: u8 = 1;
    pub(super) const STATUS: u8 = 2;
    pub(super) const TX_STATUS: u8 = 3;
    pub(super) const BLOCK: u8 = 4;
    pub(super) const PROOF: u8 = 5;
    pub(super) const HANDSHAKES: u8 = 6;
    pub(super) const NONCE: u8 = 7;
    pub(super) const SUBMIT_BATCH: u8 = 8;
}

/// Most transactions in one batch submission.
pub const BATCH_MAX: usize = 4096;

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_MAX {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame over the limit"));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    s.write_all(&out)
}

fn encode_key(w: &mut Writer, key: &StateKey) {
    match key {
        StateKey::Account(a) => {
            w.u8(0);
            w.raw(&a.0);
        }
        StateKey::Handle(h) => {
            w.u8(1);
            w.bytes(h.as_bytes());
        }
        StateKey::Nonce(k) => {
            w.u8(2);
            w.raw(k);
        }
        StateKey::Topic(t) => {
            w.u8(3);
            w.raw(&t.0);
        }
        StateKey::Anchor(t) => {
            w.u8(4);
            w.raw(&t.0);
        }
        StateKey::Meta => w.u8(5),
    }
}

fn decode_key(r: &mut Reader<'_>) -> Result<StateKey, DecodeError> {
    Ok(match r.u8("key")? {
        0 => StateKey::Account(AccountId(r.array("key")?)),
        1 => {
            let b = r.bytes(crate::tx::HANDLE_LEN_MAX, "key")?;
            StateKey::Handle(
                std::str::from_utf8(b)
                    .map_err(|_| DecodeError::Invalid { field: "key", reason: "utf8" })?
                    .to_owned(),
            )
        }
        2 => StateKey::Nonce(r.array("key")?),
        3 => StateKey::Topic(Topic(r.array("key")?)),
        4 => StateKey::Anchor(Topic(r.array("key")?)),
        5 => StateKey::Meta,
        _ => return Err(DecodeError::Invalid { field: "key", reason: "unknown kind" }),
    })
}

fn encode_error(w: &mut Writer, e: &TxError) {
    w.u8(e.code());
    w.bytes(e.to_string().as_bytes());
    let (a, b) = match e {
        TxError::StaleSequence { after, current } => (*after, *current),
        _ => (0, 0),
    };
    w.u64(a);
    w.u64(b);
}

fn decode_error(r: &mut Reader<'_>) -> Result<(u8, String, (u64, u64)), DecodeError> {
    let code = r.u8("error.code")?;
    let msg = String::from_utf8_lossy(r.bytes(1024, "error.message")?).into_owned();
    Ok((code, msg, (r.u64("error.a")?, r.u64("error.b")?)))
}

/// Serves one request; `None` closes the connection (malformed request).
fn handle(ledger: &Ledger, req: &[u8]) -> Option<Vec<u8>> {
    let mut r = Reader::new(req);
    let mut w = Writer::with_capacity(256);
    match r.u8("tag").ok()? {
        tag::SUBMIT => {
            let tx = r.bytes(TX_BYTES_MAX, "tx").ok()?.to_vec();
            r.finish().ok()?;
            match ledger.submit(tx) {
                Ok(id) => {
                    w.u8(0);
                    w.raw(&id.0);
                }
                Err(e) => {
                    w.u8(1);
                    encode_error(&mut w, &e);
                }
            }
        }
        tag::STATUS => {
            r.finish().ok()?;
            let s = ledger.status();
            w.u64(s.height);
            w.raw(&s.digest);
            w.raw(&s.state_root);
            w.u64(s.mempool as u64);
        }
        tag::TX_STATUS => {
            let id = TxId(r.array("id").ok()?);
            r.finish().ok()?;
            match ledger.tx_status(&id) {
                TxStatus::Unknown => w.u8(0),
                TxStatus::Pending => w.u8(1),
                TxStatus::Rejected(e) => {
                    w.u8(2);
                    encode_error(&mut w, &e);
                }
                TxStatus::Finalized { height, outcome } => {
                    w.u8(3);
                    w.u64(height);
                    match outcome {
                        Outcome::Applied => w.u8(0),
                        Outcome::Sequenced { topic, seq } => {
                            w.u8(1);
                            w.raw(&topic.0);
                            w.u64(seq);
                        }
                        Outcome::Failed(e) => {
                            w.u8(2);
                            encode_error(&mut w, &e);
                        }
                    }
                }
            }
        }
        tag::BLOCK => {
            let h = r.u64("height").ok()?;
            r.finish().ok()?;
            match ledger.block(h) {
                None => w.u8(0),
                Some(b) => {
                    w.u8(1);
                    w.bytes(&b.encode_bytes());
                    match ledger.finalization(&b.id()) {
                        None => w.u8(0),
                        Some(f) => {
                            w.u8(1);
                            w.bytes(&f);
                        }
                    }
                }
            }
        }
        tag::PROOF => {
            let key = decode_key(&mut r).ok()?;
            r.finish().ok()?;
            match ledger.prove(&key) {
                Ok(Some(p)) => {
                    w.u8(1);
                    w.bytes(&p.encode());
                }
                _ => w.u8(0),
            }
        }
        tag::HANDSHAKES => {
            let topic = Topic(r.array("topic").ok()?);
            let from = r.u64("from").ok()?;
            let max = (r.u32("max").ok()? as usize).min(HANDSHAKES_PER_REPLY);
            r.finish().ok()?;
            let list = ledger.handshakes(&topic, from, max);
            w.u32(list.len() as u32);
            for p in list {
                w.bytes(&p);
            }
        }
        tag::SUBMIT_BATCH => {
            let n = r.u32("count").ok()? as usize;
            if n > BATCH_MAX {
                return None;
            }
            let mut txs = Vec::with_capacity(n);
            for _ in 0..n {
                txs.push(r.bytes(TX_BYTES_MAX, "tx").ok()?.to_vec());
            }
            r.finish().ok()?;
            w.u32(n as u32);
            for res in ledger.submit_batch(txs) {
                match res {
                    Ok(id) => {
                        w.u8(0);
                        w.raw(&id.0);
                    }
                    Err(e) => {
                        w.u8(1);
                        encode_error(&mut w, &e);
                    }
                }
            }
        }
        tag::NONCE => {
            let signer: [u8; 32] = r.array("signer").ok()?;
            r.finish().ok()?;
            w.u64(ledger.nonce(&signer));
        }
        _ => return None,
    }
    Some(w.finish())
}

/// Serves client requests for `ledger` on `listener` (blocking; run it on its own thread).
pub fn serve(listener: TcpListener, ledger: Ledger) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        if active.load(Ordering::SeqCst) >= CONNECTIONS_MAX {
            continue; // dropped: the client retries
        }
        active.fetch_add(1, Ordering::SeqCst);
        let ledger = ledger.clone();
        let active = active.clone();
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
            let _ = stream.set_nodelay(true);
            while let Ok(req) = read_frame(&mut stream) {
                let Some(resp) = handle(&ledger, &req) else { break };
                if write_frame(&mut stream, &resp).is_err() {
                    break;
                }
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Starts [`serve`] on a background thread bound to `addr`; returns the bound address.
pub fn spawn_server(addr: SocketAddr, ledger: Ledger) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("ledger-rpc".into()).spawn(move || serve(listener, ledger))?;
    Ok(local)
}

/// One request on the connection `conn` to `addr` (opened or reopened as needed; one retry on
/// a fresh connection).
fn call_conn(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    timeout: Duration,
    req: &[u8],
) -> Result<Vec<u8>, ClientError> {
    for attempt in 0..2 {
        if conn.is_none() {
            let s = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| ClientError::Unreachable(format!("{addr}: {e}")))?;
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            let _ = s.set_nodelay(true);
            *conn = Some(s);
        }
        let Some(s) = conn.as_mut() else { continue };
        match write_frame(s, req).and_then(|_| read_frame(s)) {
            Ok(resp) => return Ok(resp),
            Err(e) => {
                *conn = None;
                if attempt == 1 {
                    return Err(ClientError::Unreachable(format!("{addr}: {e}")));
                }
            }
        }
    }
    Err(ClientError::Unreachable(addr.to_string()))
}

/// A finalized block and, if the validator holds one, its own finalization certificate
/// (already verified by the client).
pub type CertifiedBlock = (Block, Option<Vec<u8>>);

/// A blocking client of the validator set named in a genesis.
#[derive(Debug)]
pub struct LedgerClient {
    addrs: Vec<SocketAddr>,
    conns: Vec<Option<TcpStream>>,
    light: LightClient,
    chain: [u8; 32],
    timeout: Duration,
    /// Highest finalized height this client has observed: older proofs are not accepted
    /// (read-your-writes).
    seen_height: u64,
}

impl LedgerClient {
    /// A client for the validators of `genesis` (their RPC addresses).
    pub fn new(genesis: &Genesis) -> Result<Self, ClientError> {
        let addrs: Vec<SocketAddr> = genesis.validators.iter().map(|v| v.rpc).collect();
        Ok(Self {
            conns: addrs.iter().map(|_| None).collect(),
            addrs,
            light: LightClient::new(genesis)?,
            chain: genesis.chain_id(),
            timeout: Duration::from_secs(5),
            seen_height: 0,
        })
    }

    /// Sets the network timeout of each call (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Chain id (to sign transactions for).
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }

    /// Number of validators.
    pub fn validators(&self) -> usize {
        self.addrs.len()
    }

    fn call_one(&mut self, i: usize, req: &[u8]) -> Result<Vec<u8>, ClientError> {
        call_conn(&mut self.conns[i], self.addrs[i], self.timeout, req)
    }

    /// Calls validators in turn until one answers.
    fn call_any(&mut self, req: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut last = ClientError::Unreachable("no validators".into());
        for i in 0..self.addrs.len() {
            match self.call_one(i, req) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Submits a signed transaction to every validator (so whichever leads can include it).
    /// Succeeds if at least one accepted it into its mempool.
    pub fn submit(&mut self, tx: &[u8]) -> Result<TxId, ClientError> {
        let mut w = Writer::with_capacity(tx.len() + 8);
        w.u8(tag::SUBMIT);
        w.bytes(tx);
        let req = w.finish();
        let mut accepted = None;
        let mut refusal = None;
        for i in 0..self.addrs.len() {
            let Ok(resp) = self.call_one(i, &req) else { continue };
            let mut r = Reader::new(&resp);
            match r.u8("status") {
                Ok(0) => accepted = r.array("id").ok().map(TxId),
                Ok(1) => {
                    if let Ok((code, message, _)) = decode_error(&mut r) {
                        refusal = Some(ClientError::Refused { code, message });
                    }
                }
                _ => {}
            }
        }
        match (accepted, refusal) {
            (Some(id), _) => Ok(id),
            (None, Some(e)) => Err(e),
            (None, None) => Err(ClientError::Unreachable("no validator accepted the transaction".into())),
        }
    }

    /// Submits many transactions to every validator in one round trip each. Returns how many
    /// were accepted by at least one validator.
    pub fn submit_batch(&mut self, txs: &[Vec<u8>]) -> Result<usize, ClientError> {
        Ok(self.submit_batch_detailed(txs)?.0)
    }

    /// Like [`Self::submit_batch`], also returning the refusal reasons and how many validator
    /// calls failed.
    pub fn submit_batch_detailed(
        &mut self,
        txs: &[Vec<u8>],
    ) -> Result<(usize, Vec<String>, usize), ClientError> {
        let mut refusals = Vec::new();
        let mut failed_calls = 0usize;
        let mut accepted = vec![false; txs.len()];
        for chunk_start in (0..txs.len()).step_by(BATCH_MAX) {
            let chunk = &txs[chunk_start..(chunk_start + BATCH_MAX).min(txs.len())];
            let mut w = Writer::with_capacity(chunk.iter().map(|t| t.len() + 4).sum::<usize>() + 8);
            w.u8(tag::SUBMIT_BATCH);
            w.u32(chunk.len() as u32);
            for t in chunk {
                w.bytes(t);
            }
            let req = w.finish();
            // every validator at once (each checks the signatures itself), one thread each
            let (addrs, timeout, req) = (&self.addrs, self.timeout, &req);
            let answers: Vec<Option<Vec<u8>>> = std::thread::scope(|scope| {
                let calls: Vec<_> = self
                    .conns
                    .iter_mut()
                    .zip(addrs.iter())
                    .map(|(conn, addr)| {
                        scope.spawn(move || {
                            // a busy validator may time out once: retry it before giving up
                            call_conn(conn, *addr, timeout, req)
                                .or_else(|_| call_conn(conn, *addr, timeout, req))
                                .ok()
                        })
                    })
                    .collect();
                calls.into_iter().map(|c| c.join().ok().flatten()).collect()
            });
            for answer in answers {
                let Some(resp) = answer else {
                    failed_calls += 1;
                    continue;
                };
                let mut r = Reader::new(&resp);
                let Ok(n) = r.u32("count") else { continue };
                for k in 0..(n as usize).min(chunk.len()) {
                    match r.u8("status") {
                        Ok(0) => {
                            if r.array::<32>("id").is_err() {
                                break;
                            }
                            accepted[chunk_start + k] = true;
                        }
                        Ok(_) => match decode_error(&mut r) {
                            Ok((_, msg, _)) => refusals.push(msg),
                            Err(_) => break,
                        },
                        Err(_) => break,
                    }
                }
            }
        }
        Ok((accepted.iter().filter(|a| **a).count(), refusals, failed_calls))
    }

    /// Status of a transaction at validator `i`.
    pub fn tx_status_at(&mut self, i: usize, id: &TxId) -> Result<RemoteStatus, ClientError> {
        let mut w = Writer::with_capacity(40);
        w.u8(tag::TX_STATUS);
        w.raw(&id.0);
        let resp = self.call_one(i, &w.finish())?;
        let bad = |e: DecodeError| ClientError::BadAnswer(e.to_string());
        let mut r = Reader::new(&resp);
        Ok(match r.u8("status").map_err(bad)? {
            0 => RemoteStatus::Unknown,
            1 => RemoteStatus::Pending,
            2 => {
                let (code, message, _) = decode_error(&mut r).map_err(bad)?;
                RemoteStatus::Rejected { code, message }
            }
            3 => {
                let height = r.u64("height").map_err(bad)?;
                let outcome = match r.u8("outcome").map_err(bad)? {
                    0 => RemoteOutcome::Applied,
                    1 => RemoteOutcome::Sequenced {
                        topic: Topic(r.array("topic").map_err(bad)?),
                        seq: r.u64("seq").map_err(bad)?,
                    },
                    _ => {
                        let (code, message, (a, b)) = decode_error(&mut r).map_err(bad)?;
                        let stale = (code == TxError::StaleSequence { after: 0, current: 0 }.code())
                            .then_some((a, b));
                        RemoteOutcome::Failed { code, message, stale }
                    }
                };
                RemoteStatus::Finalized { height, outcome }
            }
            _ => return Err(ClientError::BadAnswer("unknown status".into())),
        })
    }

    /// Waits until the transaction is in a finalized block (polling validators in turn).
    pub fn wait_final(&mut self, id: &TxId, timeout: Duration) -> Result<(u64, RemoteOutcome), ClientError> {
        let start = Instant::now();
        let mut i = 0usize;
        let mut rejections = 0usize;
        loop {
            let n = self.addrs.len().max(1);
            match self.tx_status_at(i % n, id) {
                Ok(RemoteStatus::Finalized { height, outcome }) => {
                    self.seen_height = self.seen_height.max(height);
                    return Ok((height, outcome));
                }
                Ok(RemoteStatus::Rejected { code, message }) => {
                    rejections += 1;
                    // refused by every validator: it will not be included
                    if rejections >= n {
                        return Err(ClientError::Refused { code, message });
                    }
                }
                Ok(_) | Err(_) => {}
            }
            i += 1;
            if start.elapsed() > timeout {
                return Err(ClientError::Timeout);
            }
            if i.is_multiple_of(n) {
                rejections = 0;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Finalized status of the first validator that answers.
    pub fn status(&mut self) -> Result<RemoteChainStatus, ClientError> {
        let resp = self.call_any(&[tag::STATUS])?;
        Self::parse_status(&resp)
    }

    /// Finalized status of validator `i`.
    pub fn status_at(&mut self, i: usize) -> Result<RemoteChainStatus, ClientError> {
        let resp = self.call_one(i, &[tag::STATUS])?;
        Self::parse_status(&resp)
    }

    fn parse_status(resp: &[u8]) -> Result<RemoteChainStatus, ClientError> {
        let bad = |e: DecodeError| ClientError::BadAnswer(e.to_string());
        let mut r = Reader::new(resp);
        Ok(RemoteChainStatus {
            height: r.u64("height").map_err(bad)?,
            digest: r.array("digest").map_err(bad)?,
            state_root: r.array("root").map_err(bad)?,
            mempool: r.u64("mempool").map_err(bad)?,
        })
    }

    /// Finalized block at `height` with its certificate if the validator holds one.
    pub fn block(&mut self, height: u64) -> Result<Option<CertifiedBlock>, ClientError> {
        let mut w = Writer::with_capacity(9);
        w.u8(tag::BLOCK);
        w.u64(height);
        let resp = self.call_any(&w.finish())?;
        let bad = |e: DecodeError| ClientError::BadAnswer(e.to_string());
        let mut r = Reader::new(&resp);
        if r.u8("found").map_err(bad)? == 0 {
            return Ok(None);
        }
        let block = Block::decode_bytes(r.bytes(BLOCK_BYTES_MAX, "block").map_err(bad)?).map_err(bad)?;
        let fin = match r.u8("fin").map_err(bad)? {
            0 => None,
            _ => Some(r.bytes(FINALIZATION_BYTES_MAX, "fin").map_err(bad)?.to_vec()),
        };
        if block.header.height != height {
            return Err(ClientError::BadAnswer("block at the wrong height".into()));
        }
        if let Some(f) = &fin {
            self.light.verify_header(&block.header, f)?;
        }
        Ok(Some((block, fin)))
    }

    /// A verified proof of `key` (any validator may serve it; none is trusted).
    pub fn prove(&mut self, key: &StateKey) -> Result<Option<Vec<u8>>, ClientError> {
        let mut w = Writer::with_capacity(64);
        w.u8(tag::PROOF);
        encode_key(&mut w, key);
        let req = w.finish();
        let mut last = ClientError::Unreachable("no proof available".into());
        for i in 0..self.addrs.len() {
            let resp = match self.call_one(i, &req) {
                Ok(r) => r,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut r = Reader::new(&resp);
            if r.u8("found").ok() != Some(1) {
                continue;
            }
            let Ok(b) = r.bytes(FRAME_MAX, "proof") else { continue };
            let Ok(sp) = StateProof::decode(b) else { continue };
            if sp.header.height < self.seen_height {
                last = ClientError::BadAnswer(format!(
                    "proof at height {} is older than {}",
                    sp.header.height, self.seen_height
                ));
                continue;
            }
            match self.light.verify(key, &sp) {
                Ok(v) => {
                    self.seen_height = sp.header.height;
                    return Ok(v);
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// The verified account record (`None`: proven not registered).
    pub fn account(&mut self, id: &AccountId) -> Result<Option<Account>, ClientError> {
        self.prove(&StateKey::Account(*id))?
            .map(|b| Account::decode(&b).map_err(|e| ClientError::BadAnswer(e.to_string())))
            .transpose()
    }

    /// The verified active device set of an account.
    pub fn devices(&mut self, id: &AccountId) -> Result<Option<Vec<DeviceId>>, ClientError> {
        Ok(self.account(id)?.map(|a| a.active_devices()))
    }

    /// Who holds a handle (`None`: proven not registered).
    pub fn handle_owner(&mut self, handle: &str) -> Result<Option<AccountId>, ClientError> {
        Ok(self
            .prove(&StateKey::Handle(handle.to_owned()))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(AccountId))
    }

    /// Next nonce of `signer`: the highest any validator reports.
    pub fn nonce(&mut self, signer: &[u8; 32]) -> Result<u64, ClientError> {
        let mut w = Writer::with_capacity(33);
        w.u8(tag::NONCE);
        w.raw(signer);
        let req = w.finish();
        let mut best = None;
        for i in 0..self.addrs.len() {
            if let Ok(resp) = self.call_one(i, &req)
                && let Ok(n) = Reader::new(&resp).u64("nonce")
            {
                best = Some(best.map_or(n, |b: u64| b.max(n)));
            }
        }
        best.ok_or_else(|| ClientError::Unreachable("no validator answered".into()))
    }

    /// Finalized handshakes of `topic` from position `from`.
    pub fn handshakes(&mut self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Vec<u8>>, ClientError> {
        let mut w = Writer::with_capacity(48);
        w.u8(tag::HANDSHAKES);
        w.raw(&topic.0);
        w.u64(from);
        w.u32(u32::try_from(max).unwrap_or(u32::MAX));
        let resp = self.call_any(&w.finish())?;
        let bad = |e: DecodeError| ClientError::BadAnswer(e.to_string());
        let mut r = Reader::new(&resp);
        let n = r.u32("count").map_err(bad)? as usize;
        if n > HANDSHAKES_PER_REPLY {
            return Err(ClientError::BadAnswer("too many handshakes".into()));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(r.bytes(HANDSHAKE_BYTES_MAX, "handshake").map_err(bad)?.to_vec());
        }
        Ok(out)
    }
}

/// Follows finalized blocks from a height, checking hash links (and certificates when served).
#[derive(Debug)]
pub struct Follower {
    next: u64,
    last: Option<[u8; 32]>,
}

impl Follower {
    /// Starts following at `height` (use 1 to see every block after genesis).
    pub fn new(height: u64) -> Self {
        Self { next: height, last: None }
    }

    /// Next height to fetch.
    pub fn next_height(&self) -> u64 {
        self.next
    }

    /// Fetches every newly finalized block (up to `max`), in order.
    pub fn poll(&mut self, client: &mut LedgerClient, max: usize) -> Result<Vec<Block>, ClientError> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some((b, _)) = client.block(self.next)? else { break };
            if let Some(prev) = self.last
                && b.header.parent != prev
            {
                return Err(ClientError::BadAnswer(format!(
                    "block {} does not link to its parent",
                    self.next
                )));
            }
            self.last = Some(b.id());
            self.next += 1;
            out.push(b);
        }
        Ok(out)
    }
}

/// The ledger's commit sequencer, for a blocking client: each submission is a signed
/// `SequenceHandshake` transaction, returned once finalized.
#[derive(Debug)]
pub struct LedgerSequencer {
    client: LedgerClient,
    account: AccountId,
    key: SigningKey,
    nonce: Option<u64>,
    timeout: Duration,
}

impl LedgerSequencer {
    /// A sequencer submitting as `account`, signed by `key` (the account key or an active
    /// device key).
    pub fn new(client: LedgerClient, account: AccountId, key: SigningKey) -> Self {
        Self { client, account, key, nonce: None, timeout: Duration::from_secs(30) }
    }

    /// How long a submission waits for finality.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn unavailable(e: impl std::fmt::Display) -> SequencerError {
        SequencerError::Unavailable(e.to_string())
    }
}

impl CommitSequencer for LedgerSequencer {
    fn submit(&mut self, topic: Topic, after: u64, payload: Vec<u8>) -> Result<u64, SequencerError> {
        if payload.len() > HANDSHAKE_BYTES_MAX {
            return Err(SequencerError::TooLarge { len: payload.len(), max: HANDSHAKE_BYTES_MAX });
        }
        let signer = self.key.verifying_key().to_bytes();
        for attempt in 0..3 {
            let nonce = match self.nonce {
                Some(n) => n,
                None => self.client.nonce(&signer).map_err(Self::unavailable)?,
            };
            let body = TxBody::SequenceHandshake { topic, after, payload: payload.clone() };
            let tx = Tx::sign(self.client.chain(), self.account, &self.key, nonce, body).encode();
            let id = match self.client.submit(&tx) {
                Ok(id) => id,
                Err(ClientError::Refused { code, .. })
                    if attempt < 2
                        && (code == (TxError::NonceReplayed { expected: 0, got: 0 }).code()
                            || code == (TxError::NonceSkipped { expected: 0, got: 0 }).code()) =>
                {
                    self.nonce = None; // our view of the nonce is stale: ask again
                    continue;
                }
                Err(e) => return Err(Self::unavailable(e)),
            };
            let res = self.client.wait_final(&id, self.timeout);
            self.nonce = None;
            return match res {
                Ok((_, RemoteOutcome::Sequenced { seq, .. })) => {
                    self.nonce = Some(nonce + 1);
                    Ok(seq)
                }
                Ok((_, RemoteOutcome::Failed { stale: Some((after, current)), .. })) => {
                    self.nonce = Some(nonce + 1);
                    Err(SequencerError::Stale { after, current })
                }
                Ok((_, other)) => Err(Self::unavailable(format!("unexpected outcome {other:?}"))),
                Err(e) => Err(Self::unavailable(e)),
            };
        }
        debug!("nonce retries exhausted");
        Err(SequencerError::Unavailable("could not agree on a nonce".into()))
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        // The trait takes `&self`; a fresh connection set keeps this call independent.
        let mut client = LedgerClient {
            addrs: self.client.addrs.clone(),
            conns: self.client.addrs.iter().map(|_| None).collect(),
            light: self.client.light.clone(),
            chain: self.client.chain,
            timeout: self.client.timeout,
            seen_height: self.client.seen_height,
        };
        let list = client.handshakes(topic, from, max).map_err(Self::unavailable)?;
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Sequenced { topic: *topic, seq: from + i as u64, payload })
            .collect())
    }
}
