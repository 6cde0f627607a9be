//! Device certificate decoder and verifier: never panic; accepted input is canonical.
#![no_main]
use cairn_proto::DeviceCert;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = DeviceCert::decode(data) {
        assert_eq!(c.encode(), data);
        let _ = c.verify();
    }
});
