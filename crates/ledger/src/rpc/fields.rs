//! Wire forms of the pieces requests and responses share (state keys, refusals, admissions,
//! statuses, outcomes, blocks), with the limits of [`super::protocol`].

use cairn_proto::codec::{DecodeError, Reader, Writer};
use cairn_proto::{AccountId, DeviceId, Topic};

use super::protocol::{
    Admission, CertifiedBlock, PROTOCOL_VERSION, ProtocolError, REFUSAL_BYTES_MAX, Refusal, RemoteOutcome,
    RemoteStatus,
};
use crate::block::{BLOCK_BYTES_MAX, Block};
use crate::light::FINALIZATION_BYTES_MAX;
use crate::state::StateKey;
use crate::tx::{HANDLE_LEN_MAX, TxId};

/// Checks the overall size and the version byte.
pub(super) fn open<'a>(bytes: &'a [u8], what: &'static str, max: usize) -> Result<Reader<'a>, ProtocolError> {
    if bytes.len() > max {
        return Err(ProtocolError::TooLarge { what, len: bytes.len(), max });
    }
    let mut r = Reader::new(bytes);
    let found = r.u8("version")?;
    if found != PROTOCOL_VERSION {
        return Err(ProtocolError::UnsupportedVersion { found, supported: PROTOCOL_VERSION });
    }
    Ok(r)
}

pub(super) fn check_max(len: usize, max: usize, field: &'static str) -> Result<(), DecodeError> {
    if len > max {
        return Err(DecodeError::TooLarge { field, len: len as u64, max: max as u64 });
    }
    Ok(())
}

/// Writes a `u16` count (callers keep lists within their limits, all below `u16::MAX`).
pub(super) fn write_count(w: &mut Writer, n: usize) {
    w.u16(u16::try_from(n).unwrap_or(u16::MAX));
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub(super) fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(super) fn read_text(r: &mut Reader<'_>, max: usize, field: &'static str) -> Result<String, DecodeError> {
    let b = r.bytes(max, field)?;
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::Invalid { field, reason: "not UTF-8" })?;
    Ok(s.to_owned())
}

pub(super) fn read_flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, DecodeError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::NonCanonical { field, reason: "flag must be 0 or 1" }),
    }
}

pub(super) fn write_option(w: &mut Writer, v: Option<&[u8]>) {
    match v {
        None => w.u8(0),
        Some(b) => {
            w.u8(1);
            w.bytes(b);
        }
    }
}

pub(super) fn read_option<'a>(
    r: &mut Reader<'a>,
    max: usize,
    field: &'static str,
) -> Result<Option<&'a [u8]>, DecodeError> {
    Ok(if read_flag(r, field)? { Some(r.bytes(max, field)?) } else { None })
}

pub(super) fn write_key(w: &mut Writer, key: &StateKey) {
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
        StateKey::Params => w.u8(6),
        StateKey::DeviceOwner(d) => {
            w.u8(7);
            w.raw(&d.0);
        }
        StateKey::KeyPackages(d) => {
            w.u8(8);
            w.raw(&d.0);
        }
        StateKey::Code(h) => {
            w.u8(9);
            w.raw(h);
        }
        StateKey::Contract(a) => {
            w.u8(10);
            w.raw(a);
        }
        StateKey::ContractState(a, k) => {
            w.u8(11);
            w.raw(a);
            w.bytes(k);
        }
        StateKey::Stores => w.u8(12),
        StateKey::Authority(t) => {
            w.u8(13);
            w.raw(&t.0);
        }
    }
}

pub(super) fn read_key(r: &mut Reader<'_>) -> Result<StateKey, ProtocolError> {
    Ok(match r.u8("key.kind")? {
        0 => StateKey::Account(AccountId(r.array("key.account")?)),
        1 => StateKey::Handle(read_text(r, HANDLE_LEN_MAX, "key.handle")?),
        2 => StateKey::Nonce(r.array("key.nonce")?),
        3 => StateKey::Topic(Topic(r.array("key.topic")?)),
        4 => StateKey::Anchor(Topic(r.array("key.anchor")?)),
        5 => StateKey::Meta,
        6 => StateKey::Params,
        7 => StateKey::DeviceOwner(DeviceId(r.array("key.device")?)),
        8 => StateKey::KeyPackages(DeviceId(r.array("key.device")?)),
        9 => StateKey::Code(r.array("key.code")?),
        10 => StateKey::Contract(r.array("key.contract")?),
        11 => StateKey::ContractState(
            r.array("key.contract")?,
            r.bytes(cairn_contracts::Limits::LEDGER.state_key_max, "key.contract_state")?.to_vec(),
        ),
        12 => StateKey::Stores,
        13 => StateKey::Authority(Topic(r.array("key.topic")?)),
        other => return Err(ProtocolError::UnknownKind { what: "state key", kind: other }),
    })
}

pub(super) fn write_refusal(w: &mut Writer, code: u8, message: &str) {
    w.u8(code);
    w.bytes(cut(message, REFUSAL_BYTES_MAX).as_bytes());
}

pub(super) fn read_refusal(r: &mut Reader<'_>) -> Result<Refusal, DecodeError> {
    let code = r.u8("refusal.code")?;
    let message = read_text(r, REFUSAL_BYTES_MAX, "refusal.message")?;
    Ok(Refusal { code, message })
}

pub(super) fn write_admission(w: &mut Writer, a: &Admission) {
    match a {
        Ok(id) => {
            w.u8(0);
            w.raw(&id.0);
        }
        Err(refusal) => {
            w.u8(1);
            write_refusal(w, refusal.code, &refusal.message);
        }
    }
}

pub(super) fn read_admission(r: &mut Reader<'_>) -> Result<Admission, ProtocolError> {
    Ok(match r.u8("admission")? {
        0 => Ok(TxId(r.array("admission.id")?)),
        1 => Err(read_refusal(r)?),
        other => return Err(ProtocolError::UnknownKind { what: "admission", kind: other }),
    })
}

pub(super) fn write_status(w: &mut Writer, s: &RemoteStatus) {
    match s {
        RemoteStatus::Unknown => w.u8(0),
        RemoteStatus::Pending => w.u8(1),
        RemoteStatus::Rejected { code, message } => {
            w.u8(2);
            write_refusal(w, *code, message);
        }
        RemoteStatus::Finalized { height, outcome } => {
            w.u8(3);
            w.u64(*height);
            write_outcome(w, outcome);
        }
    }
}

pub(super) fn read_status(r: &mut Reader<'_>) -> Result<RemoteStatus, ProtocolError> {
    Ok(match r.u8("tx_status")? {
        0 => RemoteStatus::Unknown,
        1 => RemoteStatus::Pending,
        2 => {
            let Refusal { code, message } = read_refusal(r)?;
            RemoteStatus::Rejected { code, message }
        }
        3 => RemoteStatus::Finalized { height: r.u64("tx_status.height")?, outcome: read_outcome(r)? },
        other => return Err(ProtocolError::UnknownKind { what: "tx status", kind: other }),
    })
}

pub(super) fn write_outcome(w: &mut Writer, o: &RemoteOutcome) {
    match o {
        RemoteOutcome::Applied => w.u8(0),
        RemoteOutcome::Sequenced { topic, seq } => {
            w.u8(1);
            w.raw(&topic.0);
            w.u64(*seq);
        }
        RemoteOutcome::Failed { code, message, stale } => {
            w.u8(2);
            write_refusal(w, *code, message);
            match stale {
                None => w.u8(0),
                Some((after, current)) => {
                    w.u8(1);
                    w.u64(*after);
                    w.u64(*current);
                }
            }
        }
    }
}

pub(super) fn read_outcome(r: &mut Reader<'_>) -> Result<RemoteOutcome, ProtocolError> {
    Ok(match r.u8("outcome")? {
        0 => RemoteOutcome::Applied,
        1 => RemoteOutcome::Sequenced { topic: Topic(r.array("outcome.topic")?), seq: r.u64("outcome.seq")? },
        2 => {
            let Refusal { code, message } = read_refusal(r)?;
            let stale = if read_flag(r, "outcome.stale")? {
                Some((r.u64("outcome.stale.after")?, r.u64("outcome.stale.current")?))
            } else {
                None
            };
            RemoteOutcome::Failed { code, message, stale }
        }
        other => return Err(ProtocolError::UnknownKind { what: "outcome", kind: other }),
    })
}

pub(super) fn write_block(w: &mut Writer, b: Option<&CertifiedBlock>) {
    match b {
        None => w.u8(0),
        Some((block, fin)) => {
            w.u8(1);
            w.bytes(&block.encode_bytes());
            write_option(w, fin.as_deref());
        }
    }
}

pub(super) fn read_block(r: &mut Reader<'_>) -> Result<Option<CertifiedBlock>, DecodeError> {
    let Some(bytes) = read_option(r, BLOCK_BYTES_MAX, "block")? else { return Ok(None) };
    let block = Block::decode_bytes(bytes)?;
    let fin = read_option(r, FINALIZATION_BYTES_MAX, "block.finalization")?.map(<[u8]>::to_vec);
    Ok(Some((block, fin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_utf8() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }
}
