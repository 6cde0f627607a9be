//! Inner message decoder: never panics; accepted input is canonical; verify never panics.
#![no_main]
use cairn_proto::{Limits, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data, &Limits::default()) {
        assert_eq!(m.encode(), data, "accepted a non-canonical message");
        let _ = m.verify();
    }
});
