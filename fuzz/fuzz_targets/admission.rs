//! Gossip admission of arbitrary bytes: never panics, whatever the bytes and the clock.
#![no_main]
use cairn_net::validate::{Admission, AdmissionConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut a: Admission<u8> = Admission::new(AdmissionConfig::default());
    let now = data.first().map(|b| u64::from(*b) << 32).unwrap_or(0);
    let _ = a.check(&1, data, now);
    let _ = a.check(&1, data, now);
});
