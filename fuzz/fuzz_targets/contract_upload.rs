//! The contract upload validator and wasmi's compiler on arbitrary bytes: never a panic; a
//! module that passes both runs one bounded call without panicking either.
#![no_main]

use cairn_contracts::{Context, Entry, FuelSchedule, Limits, Runtime, StateView};
use libfuzzer_sys::fuzz_target;

struct Empty;

impl StateView for Empty {
    fn get(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn balance(&self, _: &[u8; 32]) -> u64 {
        1_000
    }
    fn device_active(&self, _: &[u8; 32], _: &[u8; 32]) -> bool {
        false
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = cairn_contracts::validate(data, &Limits::POLICY);
    let rt = Runtime::new(Limits::LEDGER, FuelSchedule::default());
    if let Ok(compiled) = rt.compile(data) {
        for entry in [Entry::Init, Entry::Execute, Entry::Query] {
            let _ = rt.call(&compiled, entry, &Context::default(), b"fuzz", &Empty, 100_000);
        }
    }
});
