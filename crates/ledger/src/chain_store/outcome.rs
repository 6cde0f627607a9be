//! Versioned, bounded codec of a finalized transaction's index entry (height and [`Outcome`]),
//! as stored in the chain store. Only effect failures can appear in a finalized receipt;
//! admission errors are encoded too (so the codec is total) but decode to their variant with
//! fixed placeholder fields where the original held a borrowed decoder error.

use cairn_proto::Topic;
use cairn_proto::codec::{DecodeError, Reader, Writer};

use crate::state::{OUTCOME_OUTPUT_MAX, Outcome};
use crate::tx::TxError;

/// Format version of a stored outcome.
const VERSION: u8 = 1;
/// Longest stored message (contract failures, refused code, look-alike handle).
const MESSAGE_MAX: usize = 4096;
/// Most events of one contract call, as stored (the contract runtime allows far fewer).
const EVENTS_MAX: usize = 1024;
/// Largest stored event.
const EVENT_BYTES_MAX: usize = 64 * 1024;

/// The fixed reasons of [`TxError::BadDeviceCert`], [`TxError::BadRotation`] and
/// [`TxError::BadHandle`]; a stored reason not in this list reads back as [`UNKNOWN_REASON`].
const REASONS: &[&str] = &[
    "not certified by the current account key",
    "signature does not verify",
    "device key equals the account key",
    "device key is not a usable key",
    "new key equals the current key",
    "new key is a device key",
    "new key is not a valid key",
    "new key's signature does not verify",
    "shorter than 3 characters",
    "longer than 32 characters",
    "only a-z, 0-9 and _ are allowed",
];
/// What an unrecognised stored reason reads back as (a reason added after the entry was
/// written by an older build cannot be, since reasons are only ever added to [`REASONS`]).
const UNKNOWN_REASON: &str = "reason not known to this build";

fn reason(s: &str) -> &'static str {
    REASONS.iter().find(|r| **r == s).copied().unwrap_or(UNKNOWN_REASON)
}

/// Encodes a finalized transaction's height and outcome.
pub(crate) fn encode(height: u64, outcome: &Outcome) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.u8(VERSION);
    w.u64(height);
    match outcome {
        Outcome::Applied => w.u8(0),
        Outcome::Sequenced { topic, seq } => {
            w.u8(1);
            w.raw(&topic.0);
            w.u64(*seq);
        }
        Outcome::Contract { address, fuel_used, output, events } => {
            w.u8(2);
            w.raw(address);
            w.u64(*fuel_used);
            w.bytes(output);
            w.u16(u16::try_from(events.len()).unwrap_or(u16::MAX));
            for e in events {
                w.bytes(e);
            }
        }
        Outcome::Failed(e) => {
            w.u8(3);
            write_error(&mut w, e);
        }
    }
    w.finish()
}

/// Decodes what [`encode`] wrote.
pub(crate) fn decode(bytes: &[u8]) -> Result<(u64, Outcome), DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("stored outcome", VERSION)?;
    let height = r.u64("outcome.height")?;
    let outcome = match r.u8("outcome.kind")? {
        0 => Outcome::Applied,
        1 => Outcome::Sequenced { topic: Topic(r.array("outcome.topic")?), seq: r.u64("outcome.seq")? },
        2 => {
            let address = r.array("outcome.address")?;
            let fuel_used = r.u64("outcome.fuel")?;
            let output = r.bytes(OUTCOME_OUTPUT_MAX, "outcome.output")?.to_vec();
            let n = r.count(EVENTS_MAX, "outcome.events")?;
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                events.push(r.bytes(EVENT_BYTES_MAX, "outcome.event")?.to_vec());
            }
            Outcome::Contract { address, fuel_used, output, events }
        }
        3 => Outcome::Failed(read_error(&mut r)?),
        _ => return Err(DecodeError::Invalid { field: "outcome.kind", reason: "unknown kind" }),
    };
    r.finish()?;
    Ok((height, outcome))
}

fn write_error(w: &mut Writer, e: &TxError) {
    use TxError as E;
    w.u8(e.code());
    let pair = |w: &mut Writer, a: u64, b: u64| {
        w.u64(a);
        w.u64(b);
    };
    match e {
        E::Oversized { len, max } | E::SignerMempoolFull { pending: len, max } => {
            pair(w, *len as u64, *max as u64)
        }
        E::NonceReplayed { expected, got } | E::NonceSkipped { expected, got } => pair(w, *expected, *got),
        E::InsufficientBalance { have, need } | E::FeeUnpaid { have, need } => pair(w, *have, *need),
        E::StaleSequence { after, current } => pair(w, *after, *current),
        E::AnchorRegressed { count, anchored } => pair(w, *count, *anchored),
        E::AnchorTooLarge { count, max } => pair(w, *count, *max),
        E::FuelLimitTooHigh { got, max } => pair(w, *got, *max),
        E::NonceTooFar { expected, got, window } => {
            pair(w, *expected, *got);
            w.u64(*window);
        }
        E::MempoolFull { max }
        | E::MempoolBytesFull { max }
        | E::TooManyStores { max }
        | E::StoreSetFull { max }
        | E::AuthorityFull { max } => w.u64(*max as u64),
        E::BlockFuelFull { max } => w.u64(*max),
        E::BadDeviceCert(s) | E::BadRotation(s) | E::BadHandle(s) => w.bytes(s.as_bytes()),
        E::HandleLookAlike { taken: s } | E::CodeRefused(s) | E::ContractFailed(s) => {
            let b = s.as_bytes();
            let mut end = b.len().min(MESSAGE_MAX);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            w.bytes(&b[..end]);
        }
        _ => {}
    }
}

fn read_error(r: &mut Reader<'_>) -> Result<TxError, DecodeError> {
    use TxError as E;
    let code = r.u8("outcome.error")?;
    let mut u = |f: &'static str| r.u64(f);
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let e = match code {
        1 => E::Malformed(DecodeError::Invalid { field: "transaction", reason: "stored as malformed" }),
        2 => E::Oversized { len: size(u("len")?), max: size(u("max")?) },
        3 => E::WrongChain,
        4 => E::BadSignature,
        5 => E::NonceReplayed { expected: u("expected")?, got: u("got")? },
        6 => E::NonceSkipped { expected: u("expected")?, got: u("got")? },
        7 => E::UnknownAccount,
        8 => E::AccountExists,
        9 => E::UnknownSigner,
        10 => E::RevokedDevice,
        11 => E::NeedsAccountKey,
        12 | 16 | 17 => {
            let s = r.bytes(MESSAGE_MAX, "outcome.reason")?;
            let s = reason(std::str::from_utf8(s).unwrap_or(""));
            match code {
                12 => E::BadDeviceCert(s),
                16 => E::BadRotation(s),
                _ => E::BadHandle(s),
            }
        }
        13 => E::DeviceExists,
        14 => E::UnknownDevice,
        15 => E::TooManyDevices,
        18 => E::HandleTaken,
        19 => E::HandleNotHeld,
        20 => E::AlreadyHasHandle,
        21 => E::UnknownRecipient,
        22 => E::InsufficientBalance { have: u("have")?, need: u("need")? },
        23 => E::BalanceOverflow,
        24 => E::StaleSequence { after: u("after")?, current: u("current")? },
        25 => E::AnchorRegressed { count: u("count")?, anchored: u("anchored")? },
        26 => E::SelfTransfer,
        27 => E::MempoolFull { max: size(u("max")?) },
        28 => E::FeeUnpaid { have: u("have")?, need: u("need")? },
        29 => E::NonceTooFar { expected: u("expected")?, got: u("got")?, window: u("window")? },
        30 => E::SignerMempoolFull { pending: size(u("pending")?), max: size(u("max")?) },
        31 => E::MempoolBytesFull { max: size(u("max")?) },
        32 => E::DeviceClaimed,
        33 => E::BadDeviceBinding,
        34 | 35 | 38 => {
            let s = r.bytes(MESSAGE_MAX, "outcome.message")?;
            let s = std::str::from_utf8(s)
                .map_err(|_| DecodeError::Invalid { field: "outcome.message", reason: "not UTF-8" })?
                .to_owned();
            match code {
                34 => E::HandleLookAlike { taken: s },
                35 => E::CodeRefused(s),
                _ => E::ContractFailed(s),
            }
        }
        36 => E::UnknownCode,
        37 => E::UnknownContract,
        39 => E::FuelLimitTooHigh { got: u("got")?, max: u("max")? },
        40 => E::BlockFuelFull { max: u("max")? },
        41 => E::BadStoreBinding,
        42 => E::StoreExists,
        43 => E::TooManyStores { max: size(u("max")?) },
        44 => E::StoreSetFull { max: size(u("max")?) },
        45 => E::UnknownStore,
        46 => E::NotTopicAuthority,
        47 => E::BadTopicAuth,
        48 => E::AuthorityFull { max: size(u("max")?) },
        49 => E::AnchorTooLarge { count: u("count")?, max: u("max")? },
        _ => return Err(DecodeError::Invalid { field: "outcome.error", reason: "unknown error code" }),
    };
    Ok(e)
}

/// Format version of a block's row of recent outcomes.
const RECENT_VERSION: u8 = 1;
/// Largest entry of a row of recent outcomes (one [`encode`]d outcome).
const RECENT_ENTRY_MAX: usize = 64 + OUTCOME_OUTPUT_MAX + EVENTS_MAX * (4 + EVENT_BYTES_MAX);

/// Encodes one block's outcomes as a row of the chain store's recent outcomes: each
/// transaction id with its height and outcome as [`encode`] wrote them.
pub(crate) fn encode_recent(entries: &[([u8; 32], Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::with_capacity(3 + entries.len() * 48);
    w.u8(RECENT_VERSION);
    w.u16(u16::try_from(entries.len()).unwrap_or(u16::MAX));
    for (id, outcome) in entries {
        w.raw(id);
        w.bytes(outcome);
    }
    w.finish()
}

/// Decodes a row [`encode_recent`] wrote for block `height` into `into` (id → encoded
/// outcome); every entry must decode and name that height.
pub(crate) fn decode_recent(
    height: u64,
    bytes: &[u8],
    into: &mut crate::fast_map::FastMap<[u8; 32], Vec<u8>>,
) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes);
    r.version("recent outcomes", RECENT_VERSION)?;
    let n = r.count(crate::block::BLOCK_TXS_MAX, "recent.count")?;
    for _ in 0..n {
        let id = r.array("recent.id")?;
        let entry = r.bytes(RECENT_ENTRY_MAX, "recent.outcome")?;
        if decode(entry)?.0 != height {
            return Err(DecodeError::Invalid {
                field: "recent.outcome",
                reason: "height differs from its row",
            });
        }
        into.insert(id, entry.to_vec());
    }
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_of_recent_outcomes_reads_back_and_a_damaged_one_is_an_error() {
        use crate::state::Receipt;
        use crate::tx::TxId;
        let receipts = [
            Receipt { tx: TxId([1; 32]), outcome: Outcome::Applied },
            Receipt { tx: TxId([2; 32]), outcome: Outcome::Sequenced { topic: Topic([3; 32]), seq: 9 } },
        ];
        let entries: Vec<([u8; 32], Vec<u8>)> =
            receipts.iter().map(|r| (r.tx.0, encode(5, &r.outcome))).collect();
        let row = encode_recent(&entries);
        let mut map = crate::fast_map::FastMap::default();
        decode_recent(5, &row, &mut map).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(decode(&map[&[2; 32]]).unwrap(), (5, receipts[1].outcome.clone()));
        // another block's row, a cut row, trailing bytes: refused
        assert!(decode_recent(6, &row, &mut crate::fast_map::FastMap::default()).is_err());
        assert!(decode_recent(5, &row[..row.len() - 1], &mut crate::fast_map::FastMap::default()).is_err());
        let mut longer = row.clone();
        longer.push(0);
        assert!(decode_recent(5, &longer, &mut crate::fast_map::FastMap::default()).is_err());
    }

    #[test]
    fn outcomes_round_trip() {
        let cases = vec![
            Outcome::Applied,
            Outcome::Sequenced { topic: Topic([7; 32]), seq: 41 },
            Outcome::Contract {
                address: [1; 32],
                fuel_used: 99,
                output: vec![1, 2],
                events: vec![vec![3], vec![]],
            },
            Outcome::Failed(TxError::StaleSequence { after: 3, current: 5 }),
            Outcome::Failed(TxError::BadHandle("longer than 32 characters")),
            Outcome::Failed(TxError::ContractFailed("trap: unreachable".into())),
            Outcome::Failed(TxError::HandleLookAlike { taken: "a1ice".into() }),
            Outcome::Failed(TxError::NonceTooFar { expected: 1, got: 100, window: 64 }),
            Outcome::Failed(TxError::HandleTaken),
            Outcome::Failed(TxError::TooManyStores { max: 4 }),
            Outcome::Failed(TxError::StoreSetFull { max: 256 }),
            Outcome::Failed(TxError::BadStoreBinding),
            Outcome::Failed(TxError::UnknownStore),
            Outcome::Failed(TxError::NotTopicAuthority),
            Outcome::Failed(TxError::BadTopicAuth),
            Outcome::Failed(TxError::AuthorityFull { max: 16 }),
            Outcome::Failed(TxError::AnchorTooLarge { count: u64::MAX, max: 1 << 48 }),
        ];
        for (i, o) in cases.into_iter().enumerate() {
            let bytes = encode(i as u64, &o);
            assert_eq!(decode(&bytes).unwrap(), (i as u64, o));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 9]).is_err());
        assert!(decode(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 0]).is_err());
        let mut ok = encode(1, &Outcome::Applied);
        ok.push(0);
        assert!(decode(&ok).is_err());
    }
}
