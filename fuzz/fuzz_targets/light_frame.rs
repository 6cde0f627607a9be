//! Light-client frames (`/cairn/light/1`) from a client or a service node: never panic, stay
//! within their bounds, and an accepted frame re-encodes identically.
#![no_main]
use cairn_net::light::{BUCKETS_MAX, ClientFrame, ServiceFrame};
use libfuzzer_sys::fuzz_target;

/// Envelope bytes a frame may carry in this target (small, so the fuzzer reaches the end).
const ENVELOPE_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = ClientFrame::decode(data, ENVELOPE_BYTES_MAX) {
        if let ClientFrame::Subscribe { buckets, .. } = &f {
            assert!(buckets.len() <= BUCKETS_MAX, "too many buckets accepted");
        }
        assert_eq!(f.encode(), data, "non-canonical client frame accepted");
    }
    if let Ok(f) = ServiceFrame::decode(data, ENVELOPE_BYTES_MAX) {
        assert_eq!(f.encode(), data, "non-canonical service frame accepted");
    }
});
