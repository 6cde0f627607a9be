//! Ledger relay headers and answers from peers: never panic; an accepted header or answer
//! re-encodes identically.
#![no_main]
use cairn_net::ledger_relay::{ANSWER_BYTES, HEADER_BYTES, RelayHeader, decode_answer, encode_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = <[u8; HEADER_BYTES]>::try_from(data)
        && let Ok(h) = RelayHeader::decode(&bytes)
    {
        assert_eq!(h.encode(), bytes, "non-canonical header accepted");
    }
    if let Ok(bytes) = <[u8; ANSWER_BYTES]>::try_from(data)
        && let Some(a) = decode_answer(bytes)
    {
        assert_eq!(encode_answer(a), bytes, "non-canonical answer accepted");
    }
});
