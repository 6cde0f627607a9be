//! Ledger RPC frames from clients and validators: never panic; accepted input re-encodes
//! identically (one encoding per value).
#![no_main]
use cairn_ledger::rpc::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.encode(), data, "non-canonical request accepted");
    }
    if let Ok(r) = Response::decode(data) {
        assert_eq!(r.encode(), data, "non-canonical response accepted");
    }
});
