//! Envelope decoder: never panics; whatever it accepts re-encodes to the same bytes.
#![no_main]
use cairn_proto::{Envelope, EnvelopeHeader, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let l = Limits::default();
    if let Ok(e) = Envelope::decode(data, &l) {
        assert_eq!(e.encode(), data, "accepted a non-canonical envelope");
        let _ = cairn_proto::envelope::unpad(e.payload.as_deref().unwrap_or(&[]));
    }
    if let Ok(h) = EnvelopeHeader::decode(data, &l) {
        assert_eq!(h.encode(), data, "accepted a non-canonical header");
    }
});
