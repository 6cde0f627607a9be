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
/// Hashes tried between two deadline checks while mining (~0.1-0.3 s on one core in a
/// release build).
const MINE_CHUNK: u64 = 1 << 20;
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
            while tx.mine(need, MINE_CHUNK).is_none() {
                if Instant::now() >= deadline {
                    return Err(ClientError::Timeout);
                }
                tx.work_nonce = tx.work_nonce.wrapping_add(MINE_CHUNK);
            }
            match self.submit(&tx.encode()) {
                Err(e)
                    if factor < TOPIC_WORK_FACTOR_MAX
                        && refused_with(&e, &[code(&TxError::TopicWorkTooLow { have: 0, need: 0 })]) =>
                {
                    factor *= 2;
                    debug!(factor, "a loaded validator asks more work of a topic write");
                }
                other => return other,
            }
        }
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

    fn is_stale(e: &ClientError) -> bool {
        refused_with(e, &[code(&TxError::StaleSequence { after: 0, current: 0 })])
    }

    fn is_not_member(e: &ClientError) -> bool {
        refused_with(e, &[code(&TxError::NotTopicAuthority), code(&TxError::BadTopicAuth)])
    }

    /// After validators refused a handshake at `after` as stale: the topic's proven count.
    /// A count above `after` is proof the position is taken ([`SequencerError::Stale`]); none
    /// means the refusal is not (yet) proven, and the commit is retried later.
    fn proven_stale(&mut self, topic: &Topic, after: u64) -> SequencerError {
        for attempt in 0..STALE_READS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 * attempt));
            }
            let state = self
                .client
                .prove(&StateKey::Topic(*topic))
                .map(|v| v.map(|b| TopicState::decode(&b).map(|s| s.count).unwrap_or(0)).unwrap_or(0));
            match state {
                Ok(current) if current > after => return SequencerError::Stale { after, current },
                Ok(_) | Err(_) => {}
            }
        }
        Self::unavailable("refused as stale, but the proven topic count does not show it yet")
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
            Err(e) if Self::is_stale(&e) => return Err(self.proven_stale(&topic, after)),
            Err(e) if Self::is_not_member(&e) => return Err(SequencerError::NotMember),
            Err(e) => return Err(Self::unavailable(e)),
        };
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        match self.client.wait_final(&id, left) {
            Ok((_, RemoteOutcome::Sequenced { seq, .. })) => Ok(seq),
            Ok((_, other)) => Err(Self::unavailable(format!("unexpected outcome {other:?}"))),
            // every validator rejected it: another commit took the position meanwhile
            Err(e) if Self::is_stale(&e) => Err(self.proven_stale(&topic, after)),
            Err(e) if Self::is_not_member(&e) => Err(SequencerError::NotMember),
            Err(e) => Err(Self::unavailable(e)),
        }
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        // The trait takes `&self`; a fresh connection set keeps this call independent.
        let list = self.client.detached().handshakes(topic, from, max).map_err(Self::unavailable)?;
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Sequenced { topic: *topic, seq: from + i as u64, payload })
            .collect())
    }
}
