//! Signing and submitting one account transaction straight to the validators of a genesis,
//! retrying nonce races (a running node may sign with the same key at the same time), and
//! waiting until it is final. Shared by `cairn contract`, `cairn pay` and `cairn store`.

use std::time::{Duration, Instant};

use cairn_ledger::rpc::{ClientError, LedgerClient, RemoteOutcome};
use cairn_ledger::tx::{Tx, TxBody, TxError};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;

/// Time given to a transaction to be finalized.
pub(crate) const FINALITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Submissions tried when another signer of the same key takes the nonce first.
const NONCE_ATTEMPTS: u64 = 5;

/// What became of a submitted transaction.
pub(crate) enum Submitted {
    /// Final and applied: the signed transaction (boxed: it holds the whole body) and its
    /// height.
    Final(Box<Tx>, u64),
    /// Included at `height`, but its execution failed (the fee was paid).
    Failed {
        /// Height.
        height: u64,
        /// [`TxError::code`].
        code: u8,
        /// Reason.
        message: String,
    },
    /// Refused by the validators (not included).
    Refused {
        /// [`TxError::code`].
        code: u8,
        /// Reason.
        message: String,
    },
}

/// Signs and submits `body` for `account` with `key`, retrying nonce races, and waits for
/// finality. `Err` only when the ledger could not be asked (unreachable, too slow).
pub(crate) fn submit(
    c: &mut LedgerClient,
    account: AccountId,
    key: &SigningKey,
    body: &TxBody,
) -> anyhow::Result<Submitted> {
    let me = key.verifying_key().to_bytes();
    let deadline = Instant::now() + FINALITY_TIMEOUT;
    let races = [
        TxError::NonceReplayed { expected: 0, got: 0 }.code(),
        TxError::NonceSkipped { expected: 0, got: 0 }.code(),
    ];
    for attempt in 1..=NONCE_ATTEMPTS {
        let nonce =
            c.nonce(&me).map_err(|e| anyhow::anyhow!("asking the validators for the next nonce: {e}"))?;
        let tx = Tx::sign(c.chain(), account, key, nonce, body.clone());
        let (code, message) = match c.submit(&tx.encode()) {
            Ok(id) => match c.wait_final(&id, deadline.saturating_duration_since(Instant::now())) {
                Ok((height, RemoteOutcome::Failed { code, message, .. })) => {
                    return Ok(Submitted::Failed { height, code, message });
                }
                Ok((height, _)) => return Ok(Submitted::Final(Box::new(tx), height)),
                Err(ClientError::Refused { code, message }) => (code, message),
                Err(ClientError::Timeout) => anyhow::bail!(
                    "transaction {id} was not finalized within {FINALITY_TIMEOUT:?}: check `cairn ledger status`, then retry"
                ),
                Err(e) => return Err(e.into()),
            },
            Err(ClientError::Refused { code, message }) => (code, message),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context("no validator took the transaction: are they running?")
                );
            }
        };
        if !races.contains(&code) || attempt == NONCE_ATTEMPTS || Instant::now() >= deadline {
            return Ok(Submitted::Refused { code, message });
        }
        std::thread::sleep(Duration::from_millis(100 * attempt));
    }
    anyhow::bail!("the nonce kept being taken by another signer of this account; retry")
}
