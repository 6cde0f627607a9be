//! Store protocol frames from peers: never panic; accepted input re-encodes identically.
#![no_main]
use cairn_net::wire::{Request, Response};
use cairn_proto::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    if let Ok(r) = Request::decode(data, &l) {
        assert_eq!(r.encode(), data, "non-canonical request accepted");
    }
    if let Ok(r) = Response::decode(data, &l) {
        assert_eq!(r.encode(), data, "non-canonical response accepted");
    }
});
