//! A blocking client of the validator set named in a genesis: submit transactions, follow
//! finalized blocks, fetch and verify proofs.
//!
//! Every round trip to one validator (connect, reconnect once if a kept connection went
//! stale, write, read) finishes before one deadline, [`LedgerClient::with_timeout`] after it
//! starts, so a method asking `k` validators in turn returns within `k` timeouts and a caller
//! can treat it as an effect with a deadline. No answer is trusted: proofs and certificates are
//! verified against the genesis validator set.
//!
//! Each connection is a [`Channel`]: encrypted, and the validator proves in the handshake that
//! it holds the consensus key the genesis lists for the address dialled; one that does not is
//! refused with [`ClientError::Unauthenticated`] and asked last, like a validator caught lying.
//!
//! With [`LedgerClient::with_relays`], a validator that cannot be dialled is reached through
//! peers that relay the channel ([`Relays`]): the same handshake and proofs run end to end, a
//! relay whose channel fails is blamed and the next one tried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::{AccountId, DeviceId, Topic};
use thiserror::Error;

use super::link::Link;
pub use super::link::{DIRECT_CONNECT_MS_MAX, DIRECT_RETRY_AFTER_MS, RELAY_TRIES_MAX};
use super::protocol::{
    BATCH_MAX, CertifiedBlock, HANDSHAKES_PER_REPLY_MAX, LINKS_PER_REPLY_MAX, REQUEST_BYTES_MAX,
    RemoteChainStatus, RemoteOutcome, RemoteStatus, Request, Response,
};
use super::transport::Relays;
use super::trust::Suspects;
use crate::genesis::Genesis;
use crate::light::{LightClient, LightError};
use crate::state::{Account, KeyPackageRecord, StateKey, StoreSet, TopicState};
use crate::tx::{TX_BYTES_MAX, TxError, TxId};

/// Default bound of one round trip to one validator.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Pause between two rounds of status polls in [`LedgerClient::wait_final`], milliseconds.
const POLL_PAUSE_MS: u64 = 20;
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
    /// A validator sent something malformed (or refused our request as malformed).
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// A proof did not verify.
    #[error(transparent)]
    Light(#[from] LightError),
    /// A validator did not prove, in the channel handshake, that it holds the key the genesis
    /// lists for its address (or it serves another chain): nothing was sent to it.
    #[error("validator not authenticated: {0}")]
    Unauthenticated(String),
}

fn unexpected(resp: &Response) -> ClientError {
    ClientError::BadAnswer(format!("unexpected {} answer", resp.kind_name()))
}

fn refused(e: &TxError) -> ClientError {
    ClientError::Refused { code: e.code(), message: e.to_string() }
}

/// What a validator's next-nonce answer `n` is worth against the proven committed `floor`.
#[derive(Debug, PartialEq, Eq)]
enum NonceAnswer {
    /// Below the floor: the validator is behind the proven header (lagging after a partition
    /// or a restart). Not believed, and not a lie: the fault campaign saw honest validators
    /// suspected when this counted as one.
    Behind,
    /// More than [`NONCE_ANSWER_AHEAD_MAX`] above the floor: further ahead than any mempool
    /// accepts, a lie.
    Lie,
    /// Believable.
    Plausible,
}

fn judge_nonce(n: u64, floor: u64) -> NonceAnswer {
    if n < floor {
        NonceAnswer::Behind
    } else if n > floor.saturating_add(NONCE_ANSWER_AHEAD_MAX) {
        NonceAnswer::Lie
    } else {
        NonceAnswer::Plausible
    }
}

/// A blocking client of the validator set named in a genesis.
#[derive(Debug)]
pub struct LedgerClient {
    links: Vec<Link>,
    light: LightClient,
    chain: [u8; 32],
    timeout: Duration,
    /// Highest finalized height this client has observed: older proofs are not accepted
    /// (read-your-writes).
    seen_height: u64,
    /// Validators caught lying: asked last for a while.
    suspects: Suspects,
}

impl LedgerClient {
    /// A client for the validators of `genesis` (their RPC addresses).
    pub fn new(genesis: &Genesis) -> Result<Self, ClientError> {
        let chain = genesis.chain_id();
        Ok(Self {
            links: genesis
                .validators
                .iter()
                .map(|v| Link::new(v.rpc.clone(), v.key.clone(), chain))
                .collect(),
            light: LightClient::new(genesis)?,
            chain,
            timeout: CALL_TIMEOUT_DEFAULT,
            seen_height: 0,
            suspects: Suspects::new(genesis.validators.len()),
        })
    }

    /// Reaches validators through these relays too (see [`Relays`]).
    pub fn with_relays(mut self, relays: Arc<dyn Relays>) -> Self {
        for link in &mut self.links {
            link.relays = Some(relays.clone());
        }
        self
    }

    /// Sets the bound of each round trip to one validator (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound of each round trip to one validator.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Chain id (to sign transactions for).
    pub fn chain(&self) -> [u8; 32] {
        self.chain
    }

    /// Number of validators.
    pub fn validators(&self) -> usize {
        self.links.len()
    }

    /// The same client with no open connections (for a call independent of this one's).
    pub fn detached(&self) -> Self {
        Self {
            links: self.links.iter().map(Link::fresh).collect(),
            light: self.light.clone(),
            chain: self.chain,
            timeout: self.timeout,
            seen_height: self.seen_height,
            suspects: self.suspects.clone(),
        }
    }

    /// One round trip to validator `i`, finished before `deadline`.
    fn call_until(&mut self, i: usize, req: &[u8], deadline: Instant) -> Result<Response, ClientError> {
        let link =
            self.links.get_mut(i).ok_or_else(|| ClientError::Unreachable(format!("no validator {i}")))?;
        let res = link.call(req, deadline);
        if let Err(ClientError::Unauthenticated(e)) = &res {
            let e = e.clone();
            self.caught_lying(i, &format!("a channel handshake without the genesis identity ({e})"));
        }
        res
    }

    fn call_one(&mut self, i: usize, req: &[u8]) -> Result<Response, ClientError> {
        self.call_until(i, req, Instant::now() + self.timeout)
    }

    /// Validators in the order to ask them: those not caught lying first.
    fn order(&self) -> Vec<usize> {
        self.suspects.order(Instant::now())
    }

    /// Validator `i` was caught lying: it is asked last for [`super::trust::SUSPECT_FOR`].
    fn caught_lying(&mut self, i: usize, what: &str) {
        tracing::warn!("validator {i} ({}) lied: {what}; asking the others first", self.links[i].addr);
        self.suspects.caught(i, Instant::now());
    }

    /// Whether validator `i` is currently suspected of lying.
    pub fn is_suspect(&self, i: usize) -> bool {
        self.suspects.is_suspect(i, Instant::now())
    }

    /// Calls validators in turn (those not caught lying first) until one answers.
    fn call_any(&mut self, req: &Request) -> Result<Response, ClientError> {
        let req = req.encode();
        let mut last = ClientError::Unreachable("no validators".into());
        for i in self.order() {
            match self.call_one(i, &req) {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Calls every validator at once, one thread each; a validator that fails is asked once
    /// more (a busy one may time out once), so this returns within two timeouts.
    fn call_all(&mut self, req: &[u8]) -> Vec<Result<Response, ClientError>> {
        let timeout = self.timeout;
        std::thread::scope(|scope| {
            let calls: Vec<_> = self
                .links
                .iter_mut()
                .map(|link| {
                    scope.spawn(move || {
                        link.call(req, Instant::now() + timeout)
                            .or_else(|_| link.call(req, Instant::now() + timeout))
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|c| {
                    c.join().unwrap_or_else(|_| Err(ClientError::Unreachable("call thread failed".into())))
                })
                .collect()
        })
    }

    /// Submits a signed transaction to every validator (so whichever leads can include it).
    /// Succeeds if at least one accepted it into its mempool.
    pub fn submit(&mut self, tx: &[u8]) -> Result<TxId, ClientError> {
        if tx.len() > TX_BYTES_MAX {
            return Err(refused(&TxError::Oversized { len: tx.len(), max: TX_BYTES_MAX }));
        }
        let req = Request::Submit(tx.to_vec()).encode();
        let mut accepted = None;
        let mut refusal = None;
        for i in 0..self.links.len() {
            match self.call_one(i, &req) {
                Ok(Response::Submitted(Ok(id))) => accepted = Some(id),
                Ok(Response::Submitted(Err(r))) => {
                    refusal = Some(ClientError::Refused { code: r.code, message: r.message });
                }
                Ok(_) | Err(_) => {}
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
        let (fit, oversized): (Vec<usize>, Vec<usize>) =
            (0..txs.len()).partition(|&i| txs[i].len() <= TX_BYTES_MAX);
        for i in oversized {
            refusals.push(TxError::Oversized { len: txs[i].len(), max: TX_BYTES_MAX }.to_string());
        }
        for chunk in batch_chunks(txs, &fit) {
            let req = Request::SubmitBatch(chunk.iter().map(|&i| txs[i].clone()).collect()).encode();
            for answer in self.call_all(&req) {
                match answer {
                    Ok(Response::SubmittedBatch(list)) if list.len() == chunk.len() => {
                        for (&i, admission) in chunk.iter().zip(list) {
                            match admission {
                                Ok(_) => accepted[i] = true,
                                Err(r) => refusals.push(r.message),
                            }
                        }
                    }
                    Ok(_) | Err(_) => failed_calls += 1,
                }
            }
        }
        Ok((accepted.iter().filter(|a| **a).count(), refusals, failed_calls))
    }

    /// Status of a transaction at validator `i`, as it says (unproven: [`Self::wait_final`] and
    /// [`Self::outcome_proof_at`] return proven outcomes).
    pub fn tx_status_at(&mut self, i: usize, id: &TxId) -> Result<RemoteStatus, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.tx_status_until(i, id, deadline)
    }

    fn tx_status_until(
        &mut self,
        i: usize,
        id: &TxId,
        deadline: Instant,
    ) -> Result<RemoteStatus, ClientError> {
        match self.call_until(i, &Request::TxStatus(*id).encode(), deadline)? {
            Response::TxStatus(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// The proof of a finalized transaction's height and outcome from validator `i`, verified
    /// against the genesis validator set (`Ok(None)`: it has none to give yet). A proof that
    /// does not verify is an error ([`ClientError::Light`]) and marks `i` as a liar.
    pub fn outcome_proof_at(
        &mut self,
        i: usize,
        id: &TxId,
    ) -> Result<Option<(u64, RemoteOutcome)>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        self.outcome_proof_until(i, id, deadline)
    }

    fn outcome_proof_until(
        &mut self,
        i: usize,
        id: &TxId,
        deadline: Instant,
    ) -> Result<Option<(u64, RemoteOutcome)>, ClientError> {
        let proof = match self.call_until(i, &Request::OutcomeProof(*id).encode(), deadline)? {
            Response::OutcomeProof(p) => p,
            other => return Err(unexpected(&other)),
        };
        let Some(proof) = proof else { return Ok(None) };
        match self.light.verify_outcome(id, &proof) {
            Ok(proven) => Ok(Some(proven)),
            Err(e) => {
                self.caught_lying(i, &format!("an outcome proof that does not verify ({e})"));
                Err(e.into())
            }
        }
    }

    /// Waits until the transaction is in a finalized block (polling validators in turn, those
    /// not caught lying first); returns within `timeout` ([`ClientError::Timeout`] then).
    ///
    /// The height and outcome returned are proven ([`crate::outcome_proof`]): a validator
    /// that says "finalized" is asked for the proof, which must verify against a certified
    /// header. A validator whose proof does not verify, or whose claim its own proof
    /// contradicts, is caught lying; one with no proof yet (its certificate is still coming)
    /// is asked again later. A refusal at admission cannot be proven (nothing is in a block):
    /// it is believed only when every validator reports it in one round.
    pub fn wait_final(&mut self, id: &TxId, timeout: Duration) -> Result<(u64, RemoteOutcome), ClientError> {
        let end = Instant::now() + timeout;
        let n = self.links.len().max(1);
        let mut order = self.order();
        let mut i = 0usize;
        let mut rejections = 0usize;
        loop {
            let deadline = end.min(Instant::now() + self.timeout);
            let v = order.get(i % n).copied().unwrap_or(0);
            match self.tx_status_until(v, id, deadline) {
                Ok(RemoteStatus::Finalized { height, outcome }) => {
                    if let Ok(Some(proven)) = self.outcome_proof_until(v, id, deadline) {
                        if proven != (height, outcome) {
                            self.caught_lying(v, "a finality claim its own proof contradicts");
                        }
                        self.seen_height = self.seen_height.max(proven.0);
                        return Ok(proven);
                    }
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
            if Instant::now() >= end {
                return Err(ClientError::Timeout);
            }
            if i.is_multiple_of(n) {
                rejections = 0;
                order = self.order();
                let pause = Duration::from_millis(POLL_PAUSE_MS);
                std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Finalized status of the first validator that answers.
    pub fn status(&mut self) -> Result<RemoteChainStatus, ClientError> {
        match self.call_any(&Request::Status)? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Finalized status of validator `i`.
    pub fn status_at(&mut self, i: usize) -> Result<RemoteChainStatus, ClientError> {
        match self.call_one(i, &Request::Status.encode())? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Finalized block at `height` with its certificate if the validator holds one.
    pub fn block(&mut self, height: u64) -> Result<Option<CertifiedBlock>, ClientError> {
        let found = match self.call_any(&Request::Block(height))? {
            Response::Block(b) => b,
            other => return Err(unexpected(&other)),
        };
        self.checked_block(height, found)
    }

    /// Validator `i`'s finalized block at `height` (to compare validators: a fork shows as two
    /// digests at one height), its certificate checked when it sends one.
    pub fn block_at(&mut self, i: usize, height: u64) -> Result<Option<CertifiedBlock>, ClientError> {
        let found = match self.call_one(i, &Request::Block(height).encode())? {
            Response::Block(b) => b,
            other => return Err(unexpected(&other)),
        };
        self.checked_block(height, found)
    }

    fn checked_block(
        &mut self,
        height: u64,
        found: Option<CertifiedBlock>,
    ) -> Result<Option<CertifiedBlock>, ClientError> {
        let Some((block, fin)) = found else { return Ok(None) };
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
        let req = Request::Proof(key.clone()).encode();
        let mut last = ClientError::Unreachable("no proof available".into());
        for i in self.order() {
            let sp = match self.call_one(i, &req) {
                Ok(Response::Proof(Some(sp))) => sp,
                Ok(Response::Proof(None)) => continue,
                Ok(other) => {
                    last = unexpected(&other);
                    continue;
                }
                Err(e) => {
                    last = e;
                    continue;
                }
            };
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
                Err(e) => {
                    self.caught_lying(i, &format!("a proof that does not verify ({e})"));
                    last = e.into();
                }
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

    /// The registered store nodes, proven against a certified header (empty: none registered).
    pub fn stores(&mut self) -> Result<StoreSet, ClientError> {
        Ok(self
            .prove(&StateKey::Stores)?
            .map(|b| StoreSet::decode(&b).map_err(|e| ClientError::BadAnswer(e.to_string())))
            .transpose()?
            .unwrap_or_default())
    }

    /// The verified active device set of an account.
    pub fn devices(&mut self, id: &AccountId) -> Result<Option<Vec<DeviceId>>, ClientError> {
        Ok(self.account(id)?.map(|a| a.active_devices()))
    }

    /// The key-package batch `device` last published, proven (`None`: it never published one
    /// signed by its own key).
    pub fn key_packages(&mut self, device: &DeviceId) -> Result<Option<KeyPackageRecord>, ClientError> {
        self.prove(&StateKey::KeyPackages(*device))?
            .map(|b| KeyPackageRecord::decode(&b).map_err(|e| ClientError::BadAnswer(e.to_string())))
            .transpose()
    }

    /// Who holds a handle or a look-alike of it (same [`crate::handle::skeleton`]; `None`:
    /// proven not registered).
    pub fn handle_owner(&mut self, handle: &str) -> Result<Option<AccountId>, ClientError> {
        Ok(self
            .prove(&StateKey::Handle(crate::handle::skeleton(handle)))?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(AccountId))
    }

    /// Runs contract `contract`'s read-only `query` with `msg` at the first validator that
    /// answers: its output, or [`ClientError::Refused`] with why the query failed.
    pub fn query(&mut self, contract: &[u8; 32], msg: &[u8]) -> Result<Vec<u8>, ClientError> {
        let req = Request::Query { contract: *contract, msg: msg.to_vec() }.encode();
        for i in 0..self.links.len() {
            match self.call_one(i, &req) {
                Ok(Response::Query(Ok(out))) => return Ok(out),
                Ok(Response::Query(Err(r))) => {
                    return Err(ClientError::Refused { code: r.code, message: r.message });
                }
                _ => {}
            }
        }
        Err(ClientError::Unreachable("no validator answered the query".into()))
    }

    /// Next nonce of `signer`: the highest next nonce a validator reports (it counts the
    /// signer's transactions waiting in its mempool), checked against the committed nonce
    /// proven against a certified header. An answer below that floor is ignored (that
    /// validator is behind the header); more than [`NONCE_ANSWER_AHEAD_MAX`] above it (further
    /// than any mempool accepts) is a lie, ignored and its validator suspected; without a
    /// proof yet (a young chain), the floor is 0.
    pub fn nonce(&mut self, signer: &[u8; 32]) -> Result<u64, ClientError> {
        let floor = match self.prove(&StateKey::Nonce(*signer)) {
            Ok(Some(b)) => {
                let bytes: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| ClientError::BadAnswer("a proven nonce is not 8 bytes".into()))?;
                u64::from_be_bytes(bytes)
            }
            Ok(None) | Err(_) => 0,
        };
        let req = Request::Nonce(*signer).encode();
        let mut best = None;
        for i in self.order() {
            if let Ok(Response::Nonce(n)) = self.call_one(i, &req) {
                match judge_nonce(n, floor) {
                    NonceAnswer::Behind => {}
                    NonceAnswer::Lie => self
                        .caught_lying(i, &format!("nonce {n}, beyond the proven {floor} plus any mempool")),
                    NonceAnswer::Plausible => best = Some(best.map_or(n, |b: u64| b.max(n))),
                }
            }
        }
        best.ok_or_else(|| ClientError::Unreachable("no validator answered with a plausible nonce".into()))
    }

    /// Finalized handshakes of `topic` from position `from`: at most `max`, and at most
    /// [`HANDSHAKES_PER_REPLY_MAX`] per call (fewer when they would not fit one answer).
    ///
    /// Proven: the topic's record (count and hash-chain head) is proven against a certified
    /// header first, then validators are asked in turn for a [`Request::HandshakePage`] up to
    /// that count; an answer is accepted only if hashing its payloads and the links after them
    /// onto its start value reaches the proven head at exactly the proven count (so the
    /// payloads are the topic's handshakes at positions `from..`, in ledger order). A validator
    /// whose answer fails the check is skipped; [`ClientError::BadAnswer`] if none passes.
    /// Handshakes sequenced after the proven header are not returned until a newer proof.
    pub fn handshakes(&mut self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Vec<u8>>, ClientError> {
        let max = max.min(HANDSHAKES_PER_REPLY_MAX);
        if max == 0 {
            return Ok(Vec::new());
        }
        let proven = match self.prove(&StateKey::Topic(*topic))? {
            None => TopicState::default(),
            Some(b) => TopicState::decode(&b)
                .map_err(|e| ClientError::BadAnswer(format!("proven topic record: {e}")))?,
        };
        if from >= proven.count {
            return Ok(Vec::new());
        }
        let mut last = ClientError::Unreachable("no validators".into());
        for i in self.order() {
            match self.checked_page(i, topic, from, max, &proven) {
                Ok(list) => return Ok(list),
                Err(e) => {
                    if matches!(e, ClientError::BadAnswer(_)) {
                        self.caught_lying(
                            i,
                            &format!("handshakes that do not match the proven record ({e})"),
                        );
                    } else {
                        tracing::warn!("validator {i}: handshakes of a topic refused: {e}");
                    }
                    // a wrong answer outranks an absent validator in the error returned
                    if matches!(e, ClientError::BadAnswer(_)) || !matches!(last, ClientError::BadAnswer(_)) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    /// Asks validator `i` for the handshakes of `topic` from `from` (at most `max`, with
    /// `from < proven.count`) and checks them against `proven`; asks the same validator for
    /// the remaining links while the page does not reach the proven count.
    fn checked_page(
        &mut self,
        i: usize,
        topic: &Topic,
        from: u64,
        max: usize,
        proven: &TopicState,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let bad = |m: &str| ClientError::BadAnswer(format!("validator {i}: {m}"));
        let ask = |client: &mut Self, from: u64, max: usize| {
            let req = Request::HandshakePage { topic: *topic, from, max: max as u32, until: proven.count };
            match client.call_one(i, &req.encode())? {
                Response::HandshakePage(page) => Ok(page),
                other => Err(unexpected(&other)),
            }
        };
        let page = ask(self, from, max)?;
        let mut chain = HandshakeChain::new(from, proven, page.start);
        if page.payloads.is_empty() || page.payloads.len() > max {
            return Err(bad("a handshake page with no handshakes or more than asked for"));
        }
        for p in &page.payloads {
            chain.push(&TopicState::link(p)).map_err(&bad)?;
        }
        chain.push_links(&page.links).map_err(&bad)?;
        // Each continuation carries a full load of links (or all that remain), so this loop
        // runs at most count / LINKS_PER_REPLY_MAX times.
        while !chain.done() {
            let more = ask(self, chain.pos, 0)?;
            if more.start != chain.value || !more.payloads.is_empty() {
                return Err(bad("a continuation that does not start where the page ended"));
            }
            chain.push_links(&more.links).map_err(&bad)?;
        }
        if chain.value != proven.chain {
            return Err(bad("handshakes that do not hash to the proven chain head"));
        }
        Ok(page.payloads)
    }
}

/// A topic's hash chain being recomputed from a claimed start value towards a proven head.
struct HandshakeChain {
    pos: u64,
    until: u64,
    value: [u8; 32],
}

impl HandshakeChain {
    fn new(from: u64, proven: &TopicState, start: [u8; 32]) -> Self {
        Self { pos: from, until: proven.count, value: start }
    }

    fn done(&self) -> bool {
        self.pos >= self.until
    }

    fn push(&mut self, link: &[u8; 32]) -> Result<(), &'static str> {
        if self.done() {
            return Err("handshakes beyond the proven count");
        }
        self.value = TopicState::chain_step(&self.value, link);
        self.pos += 1;
        Ok(())
    }

    /// Links after a page: a full load, or every one left up to the proven count.
    fn push_links(&mut self, links: &[[u8; 32]]) -> Result<(), &'static str> {
        let left = self.until.saturating_sub(self.pos);
        if links.len() as u64 != left.min(LINKS_PER_REPLY_MAX as u64) {
            return Err("a page whose links stop short of the proven count");
        }
        links.iter().try_for_each(|l| self.push(l))
    }
}

/// How far above the proven committed nonce a reported next nonce may be: the mempool's
/// window, twice (the proof may be a few blocks older than the answer).
pub const NONCE_ANSWER_AHEAD_MAX: u64 = 2 * crate::mempool::NONCE_WINDOW;

/// Splits the transactions at `indices` into batches of at most [`BATCH_MAX`] that each fit
/// one request frame.
fn batch_chunks(txs: &[Vec<u8>], indices: &[usize]) -> Vec<Vec<usize>> {
    // Room for the version, kind and count.
    let budget = REQUEST_BYTES_MAX - 8;
    let mut chunks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0usize;
    for &i in indices {
        let cost = 4 + txs[i].len();
        if !current.is_empty() && (current.len() == BATCH_MAX || size + cost > budget) {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += cost;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_bytes() {
        let small: Vec<Vec<u8>> = vec![vec![0; 10]; BATCH_MAX + 5];
        let idx: Vec<usize> = (0..small.len()).collect();
        let chunks = batch_chunks(&small, &idx);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![BATCH_MAX, 5]);

        let big: Vec<Vec<u8>> = vec![vec![0; TX_BYTES_MAX]; 100];
        let idx: Vec<usize> = (0..big.len()).collect();
        let chunks = batch_chunks(&big, &idx);
        assert!(chunks.len() > 1);
        for c in &chunks {
            let req = Request::SubmitBatch(c.iter().map(|&i| big[i].clone()).collect()).encode();
            assert!(req.len() <= REQUEST_BYTES_MAX);
        }
        assert_eq!(chunks.concat(), idx);
    }

    #[test]
    fn a_nonce_behind_the_proof_is_lagging_and_one_beyond_any_mempool_is_a_lie() {
        assert_eq!(judge_nonce(28, 30), NonceAnswer::Behind);
        assert_eq!(judge_nonce(30, 30), NonceAnswer::Plausible);
        assert_eq!(judge_nonce(30 + NONCE_ANSWER_AHEAD_MAX, 30), NonceAnswer::Plausible);
        assert_eq!(judge_nonce(31 + NONCE_ANSWER_AHEAD_MAX, 30), NonceAnswer::Lie);
        assert_eq!(judge_nonce(u64::MAX, u64::MAX - 1), NonceAnswer::Plausible, "no overflow");
    }
}
