//! The fuel schedule: what host calls cost on top of wasmi's per-instruction fuel. It is
//! consensus: the ledger keeps it (versioned) in its parameters, so every validator charges the
//! same fuel for the same call.

use cairn_proto::codec::{DecodeError, Reader, Writer};

const SCHEDULE_VERSION: u8 = 1;
/// Encoded size of a [`FuelSchedule`].
pub const SCHEDULE_BYTES: usize = 1 + 7 * 8;
/// Largest value of any schedule entry (so sums of a call's charges never overflow).
pub const ENTRY_MAX: u64 = 1 << 32;

/// Fuel charged by host calls (wasmi charges the instructions themselves).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FuelSchedule {
    /// Every host call.
    pub host_call: u64,
    /// Every byte copied between the guest and the host (input, output, keys, values,
    /// hashed or verified messages, events).
    pub per_byte: u64,
    /// A state read, on top of `host_call`.
    pub state_read: u64,
    /// A state write or delete, on top of `host_call`.
    pub state_write: u64,
    /// Every byte of a written state value, on top of `per_byte` (state is kept forever).
    pub state_write_byte: u64,
    /// An Ed25519 signature check (plus, for `device_verify`, the device lookup).
    pub signature_verify: u64,
    /// A transfer or an event (an action the ledger applies).
    pub action: u64,
}

impl Default for FuelSchedule {
    /// Version 1 of the schedule: wasmi's base cost is 1 fuel per simple instruction; one
    /// signature check (~50 µs) is priced like ~50 000 of them.
    fn default() -> Self {
        Self {
            host_call: 100,
            per_byte: 1,
            state_read: 1_000,
            state_write: 5_000,
            state_write_byte: 10,
            signature_verify: 50_000,
            action: 2_000,
        }
    }
}

impl FuelSchedule {
    /// Checks every entry is at most [`ENTRY_MAX`]; the first field over it if not.
    pub fn check(&self) -> Result<(), &'static str> {
        let fields = [
            (self.host_call, "fuel_schedule.host_call"),
            (self.per_byte, "fuel_schedule.per_byte"),
            (self.state_read, "fuel_schedule.state_read"),
            (self.state_write, "fuel_schedule.state_write"),
            (self.state_write_byte, "fuel_schedule.state_write_byte"),
            (self.signature_verify, "fuel_schedule.signature_verify"),
            (self.action, "fuel_schedule.action"),
        ];
        match fields.iter().find(|(v, _)| *v > ENTRY_MAX) {
            Some((_, name)) => Err(name),
            None => Ok(()),
        }
    }

    /// Canonical encoding (version byte, then seven big-endian `u64`s).
    pub fn encode_to(&self, w: &mut Writer) {
        w.u8(SCHEDULE_VERSION);
        for v in [
            self.host_call,
            self.per_byte,
            self.state_read,
            self.state_write,
            self.state_write_byte,
            self.signature_verify,
            self.action,
        ] {
            w.u64(v);
        }
    }

    /// Decodes a schedule, refusing entries over [`ENTRY_MAX`].
    pub fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version("fuel_schedule", SCHEDULE_VERSION)?;
        let s = Self {
            host_call: r.u64("fuel_schedule.host_call")?,
            per_byte: r.u64("fuel_schedule.per_byte")?,
            state_read: r.u64("fuel_schedule.state_read")?,
            state_write: r.u64("fuel_schedule.state_write")?,
            state_write_byte: r.u64("fuel_schedule.state_write_byte")?,
            signature_verify: r.u64("fuel_schedule.signature_verify")?,
            action: r.u64("fuel_schedule.action")?,
        };
        s.check().map_err(|field| DecodeError::Invalid { field, reason: "over 2^32" })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schedule_round_trips_and_refuses_huge_entries() {
        let s = FuelSchedule::default();
        let mut w = Writer::with_capacity(SCHEDULE_BYTES);
        s.encode_to(&mut w);
        let bytes = w.finish();
        assert_eq!(bytes.len(), SCHEDULE_BYTES);
        let mut r = Reader::new(&bytes);
        assert_eq!(FuelSchedule::decode_from(&mut r).unwrap(), s);
        let big = FuelSchedule { action: ENTRY_MAX + 1, ..s };
        let mut w = Writer::with_capacity(SCHEDULE_BYTES);
        big.encode_to(&mut w);
        let bytes = w.finish();
        assert!(FuelSchedule::decode_from(&mut Reader::new(&bytes)).is_err());
        assert_eq!(big.check(), Err("fuel_schedule.action"));
    }
}
