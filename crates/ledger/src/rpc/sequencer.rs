//! The ledger's [`CommitSequencer`]: each MLS commit is a signed `SequenceHandshake`
//! transaction, answered once finalized, so every member applies commits in one agreed order.

use std::time::Duration;

use cairn_proto::ed25519::SigningKey;
use cairn_proto::sequencer::{CommitSequencer, HANDSHAKE_BYTES_MAX, Sequenced, SequencerError, TopicKeys};
use cairn_proto::{AccountId, Topic};
use tracing::debug;

use super::client::{ClientError, LedgerClient};
use super::protocol::RemoteOutcome;
use crate::tx::{TopicAuth, TopicWrite, Tx, TxBody, TxError};

/// Default bound of one submission's wait for finality.
pub const FINALITY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Submissions tried per commit when the nonce turns out stale. The same key also signs
/// transactions from another thread (a node's anchors): its pending transaction holds the
/// nonce the state shows until it is final, so each retry waits a little longer (100 ms × the
/// attempt, as `submit_tx` does) instead of asking again at once.
const NONCE_ATTEMPTS_MAX: usize = 5;

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
        Self { client, account, key, nonce: None, timeout: FINALITY_TIMEOUT_DEFAULT }
    }

    /// How long a submission waits for finality.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn unavailable(e: impl std::fmt::Display) -> SequencerError {
        SequencerError::Unavailable(e.to_string())
    }

    /// True for a refusal meaning our idea of the next nonce is stale.
    fn nonce_is_stale(e: &ClientError) -> bool {
        let replayed = TxError::NonceReplayed { expected: 0, got: 0 }.code();
        let skipped = TxError::NonceSkipped { expected: 0, got: 0 }.code();
        matches!(e, ClientError::Refused { code, .. } if *code == replayed || *code == skipped)
    }

    /// Waits for the finality of transaction `id` sent with `nonce`, and reads its outcome.
    /// `None`: a block refused it for its nonce (another transaction of the same key took it
    /// meanwhile): nothing was sequenced, the caller may sign again with a fresh nonce.
    fn finish(&mut self, id: &crate::tx::TxId, nonce: u64) -> Option<Result<u64, SequencerError>> {
        let res = self.client.wait_final(id, self.timeout);
        self.nonce = None;
        Some(match res {
            Ok((_, RemoteOutcome::Sequenced { seq, .. })) => {
                self.nonce = Some(nonce + 1);
                Ok(seq)
            }
            Ok((_, RemoteOutcome::Failed { stale: Some((after, current)), .. })) => {
                self.nonce = Some(nonce + 1);
                Err(SequencerError::Stale { after, current })
            }
            Ok((_, RemoteOutcome::Failed { code, .. }))
                if code == TxError::NotTopicAuthority.code() || code == TxError::BadTopicAuth.code() =>
            {
                self.nonce = Some(nonce + 1);
                Err(SequencerError::NotMember)
            }
            Ok((_, other)) => Err(Self::unavailable(format!("unexpected outcome {other:?}"))),
            Err(e) if Self::nonce_is_stale(&e) => return None,
            Err(e) => Err(Self::unavailable(e)),
        })
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
        let signer = self.key.verifying_key().to_bytes();
        for attempt in 1..=NONCE_ATTEMPTS_MAX {
            let nonce = match self.nonce {
                Some(n) => n,
                None => self.client.nonce(&signer).map_err(Self::unavailable)?,
            };
            let write = TopicWrite::Handshake { after, payload: &payload };
            let auth = TopicAuth::sign(&keys.seed, &self.client.chain(), &topic, &write, keys.next);
            let body = TxBody::SequenceHandshake { topic, after, payload: payload.clone(), auth };
            let tx = Tx::sign(self.client.chain(), self.account, &self.key, nonce, body).encode();
            match self.client.submit(&tx) {
                Ok(id) => match self.finish(&id, nonce) {
                    Some(r) => return r,
                    // Accepted, then dropped from a block for its nonce: sign again.
                    None if attempt < NONCE_ATTEMPTS_MAX => {
                        std::thread::sleep(Duration::from_millis(100 * attempt as u64));
                    }
                    None => break,
                },
                Err(e) if attempt < NONCE_ATTEMPTS_MAX && Self::nonce_is_stale(&e) => {
                    self.nonce = None; // our view of the nonce is stale: ask again
                    std::thread::sleep(Duration::from_millis(100 * attempt as u64));
                }
                Err(e) => return Err(Self::unavailable(e)),
            }
        }
        debug!("nonce retries exhausted");
        Err(SequencerError::Unavailable("could not agree on a nonce".into()))
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
