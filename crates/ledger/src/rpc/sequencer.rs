//! The ledger's [`CommitSequencer`]: each MLS commit is a topic write (no account, paid by
//! proof of work, see [`crate::topic_tx`]), answered once finalized, so every member applies
//! commits in one agreed order. Also the client side of every topic write
//! ([`LedgerClient::submit_topic_write`]): mining, in bounded chunks up to a deadline, and
//! mining again for a validator that asks more work under load.

use std::time::{Duration, Instant};

use cairn_proto::Topic;
use cairn_proto::sequencer::{CommitSequencer, HANDSHAKE_BYTES_MAX, Sequenced, SequencerError, TopicKeys};
use tracing::debug;

use super::client::{ClientError, LedgerClient};
use super::protocol::RemoteOutcome;
use crate::mempool::TOPIC_WORK_FACTOR_MAX;
use crate::params::Params;
use crate::state::{StateKey, TopicState};
use crate::tx::{TopicTx, TxError, TxId};

/// Default bound of one submission's wait for finality.
pub const FINALITY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Hashes tried between two deadline checks while mining (~8 ms on one core in a release
/// build), so a caller mining in time slices keeps to them.
const MINE_CHUNK: u64 = 1 << 16;
/// Proven reads of a topic's count after a stale refusal (the proven state may trail the
/// state that refused by a block).
const STALE_READS_MAX: u64 = 3;

/// The ledger's commit sequencer, for a blocking client: each submission is a topic write,
/// returned once finalized. It holds no account and no key: the member's authority key comes
/// with each submission ([`TopicKeys`]).
#[derive(Debug)]
pub struct LedgerSequencer {
    client: LedgerClient,
    params: Option<Params>,
    timeout: Duration,
}

fn code(e: &TxError) -> u8 {
    e.code()
}

fn refused_with(e: &ClientError, codes: &[u8]) -> bool {
    matches!(e, ClientError::Refused { code, .. } if codes.contains(code))
}

/// Whether validators refused a handshake write because its position is taken (not yet
/// proven: see [`LedgerClient::proven_stale`]).
pub fn is_stale_refusal(e: &ClientError) -> bool {
    refused_with(e, &[code(&TxError::StaleSequence { after: 0, current: 0 })])
}

/// Whether validators refused a topic write as not signed by a current member.
pub fn is_not_member_refusal(e: &ClientError) -> bool {
    refused_with(e, &[code(&TxError::NotTopicAuthority), code(&TxError::BadTopicAuth)])
}

/// Whether a loaded validator asked more work of a topic write than the chain's price.
pub fn is_work_too_low_refusal(e: &ClientError) -> bool {
    refused_with(e, &[code(&TxError::TopicWorkTooLow { have: 0, need: 0 })])
}

/// Mines `tx` until its id carries `need` expected hashes, in chunks of [`MINE_CHUNK`], until
/// `deadline`. The progress stays in `tx.work_nonce`: mining `tx` again goes on from where this
/// call stopped, never from zero. `true` once found. Bounded CPU on the calling thread: never
/// call it from an async executor.
pub fn mine_topic_write(tx: &mut TopicTx, need: u64, deadline: Instant) -> bool {
    while tx.mine(need, MINE_CHUNK).is_none() {
        tx.work_nonce = tx.work_nonce.wrapping_add(MINE_CHUNK);
        if Instant::now() >= deadline {
            return false;
        }
    }
    true
}

impl LedgerClient {
    /// The chain's parameters, read with a proof against a certified header.
    pub fn params(&mut self) -> Result<Params, ClientError> {
        let bytes = self.prove(&StateKey::Params)?.unwrap_or_default();
        Params::decode(&bytes).map_err(|e| ClientError::Unreachable(format!("chain parameters: {e}")))
    }

    /// Mines `tx` for the chain's price in `params` and submits it to every validator; a
    /// validator asking more work under load ([`TxError::TopicWorkTooLow`]) gets it mined again
    /// at twice the price, up to [`TOPIC_WORK_FACTOR_MAX`] times. Mining runs on the calling
    /// thread in chunks of [`MINE_CHUNK`] hashes until `deadline` ([`ClientError::Timeout`]
    /// after it): call it from a blocking thread, never from an async executor.
    pub fn submit_topic_write(
        &mut self,
        tx: &mut TopicTx,
        params: &Params,
        deadline: Instant,
    ) -> Result<TxId, ClientError> {
        let mut factor = 1;
        loop {
            let need = params.topic_work(tx.encode().len()).saturating_mul(factor);
            if !mine_topic_write(tx, need, deadline) {
                return Err(ClientError::Timeout);
            }
            match self.submit(&tx.encode()) {
                Err(e) if factor < TOPIC_WORK_FACTOR_MAX && is_work_too_low_refusal(&e) => {
                    factor *= 2;
                    debug!(factor, "a loaded validator asks more work of a topic write");
                }
                other => return other,
            }
        }
    }

    /// After validators refused a handshake at `after` as stale: the topic's proven count.
    /// A count above `after` is proof the position is taken ([`SequencerError::Stale`]); none
    /// means the refusal is not (yet) proven ([`SequencerError::Unavailable`]), and the commit
    /// is retried later. Sleeps up to ~0.6 s between reads: call it from a blocking thread.
    pub fn proven_stale(&mut self, topic: &Topic, after: u64) -> SequencerError {
        for attempt in 0..STALE_READS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            let state = self
                .prove(&StateKey::Topic(*topic))
                .map(|v| v.map(|b| TopicState::decode(&b).map(|s| s.count).unwrap_or(0)).unwrap_or(0));
            match state {
                Ok(current) if current > after => return SequencerError::Stale { after, current },
                Ok(_) | Err(_) => {}
            }
        }
        SequencerError::Unavailable(
            "refused as stale, but the proven topic count does not show it yet".into(),
        )
    }

    /// Up to `max` finalized handshakes of `topic` from position `from`, numbered (proven as
    /// [`LedgerClient::handshakes`] are).
    pub fn sequenced(&mut self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, ClientError> {
        let list = self.handshakes(topic, from, max)?;
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Sequenced { topic: *topic, seq: from + i as u64, payload })
            .collect())
    }
}

impl LedgerSequencer {
    /// A sequencer submitting through `client`.
    pub fn new(client: LedgerClient) -> Self {
        Self { client, params: None, timeout: FINALITY_TIMEOUT_DEFAULT }
    }

    /// How long a submission (mining and the wait for finality) may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn unavailable(e: impl std::fmt::Display) -> SequencerError {
        SequencerError::Unavailable(e.to_string())
    }
}

impl CommitSequencer for LedgerSequencer {
    fn submit(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        if payload.len() > HANDSHAKE_BYTES_MAX {
            return Err(SequencerError::TooLarge { len: payload.len(), max: HANDSHAKE_BYTES_MAX });
        }
        let deadline = Instant::now() + self.timeout;
        let params = match self.params {
            Some(p) => p,
            None => {
                let p = self.client.params().map_err(Self::unavailable)?;
                *self.params.insert(p)
            }
        };
        let mut tx = TopicTx::handshake(self.client.chain(), topic, after, payload, &keys.seed, keys.next);
        let id = match self.client.submit_topic_write(&mut tx, &params, deadline) {
            Ok(id) => id,
            Err(e) if is_stale_refusal(&e) => return Err(self.client.proven_stale(&topic, after)),
            Err(e) if is_not_member_refusal(&e) => return Err(SequencerError::NotMember),
            Err(e) => return Err(Self::unavailable(e)),
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        match self.client.wait_final(&id, left) {
            Ok((_, RemoteOutcome::Sequenced { seq, .. })) => Ok(seq),
            Ok((_, other)) => Err(Self::unavailable(format!("unexpected outcome {other:?}"))),
            // every validator rejected it: another commit took the position meanwhile
            Err(e) if is_stale_refusal(&e) => Err(self.client.proven_stale(&topic, after)),
            Err(e) if is_not_member_refusal(&e) => Err(SequencerError::NotMember),
            // Not final in time. Validators remember a write they refused at admission as stale
            // (core::MempoolLimits::stale_refused), so "rejected by every validator" normally
            // comes at once; it does not when one is unreachable or forgot the refusal (its
            // bound). A proven topic count past `after` settles it: the position is taken (by
            // another commit, or by this one whose answer was lost; the caller's catch-up tells).
            Err(ClientError::Timeout) => match self.client.proven_stale(&topic, after) {
                stale @ SequencerError::Stale { .. } => Err(stale),
                _ => Err(Self::unavailable(ClientError::Timeout)),
            },
            Err(e) => Err(Self::unavailable(e)),
        }
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        // The trait takes `&self`; a fresh connection set keeps this call independent.
        self.client.detached().sequenced(topic, from, max).map_err(Self::unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mining_stopped_at_a_deadline_goes_on_where_it_stopped() {
        let need = 1 << 20;
        let write =
            |i: u8| TopicTx::handshake([1; 32], Topic([2; 32]), 0, vec![i; 200], &[4; 32], Some([5; 32]));
        // A write whose nonce is past the first chunks (each try is deterministic).
        let (i, whole) = (0..16u8)
            .find_map(|i| {
                let mut tx = write(i);
                let found = mine_topic_write(&mut tx, need, Instant::now() + Duration::from_secs(600));
                (found && tx.work_nonce >= 2 * MINE_CHUNK).then_some((i, tx.work_nonce))
            })
            .expect("one of 16 writes needs more than two chunks");
        let mut tx = write(i);
        assert!(!mine_topic_write(&mut tx, need, Instant::now()), "stopped by the deadline");
        assert_eq!(tx.work_nonce, MINE_CHUNK, "one chunk tried, and kept");
        assert!(mine_topic_write(&mut tx, need, Instant::now() + Duration::from_secs(600)));
        assert_eq!(tx.work_nonce, whole, "the same nonce as mining in one go");
    }
}
