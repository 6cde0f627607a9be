//! Ledger parameters fixed at genesis: the transaction fee and the dev faucet.
//!
//! They are written into the genesis state (under [`crate::state::StateKey::Params`]), so they
//! are covered by every state root, provable to light clients, and read by every validator's
//! executor from the same place.
//!
//! **Fee.** Every admitted transaction pays `fee_per_byte × encoded length` plus, for a
//! contract call, `fee_per_fuel × fuel used` (the call's fuel limit is reserved at admission
//! and the unused part refunded after execution; host calls cost fuel by the versioned
//! [`FuelSchedule`] kept here), debited
//! from the balance of the account it acts for, whichever of its keys signed it. The fee is
//! **burned**: it is removed from the payer's balance and credited to no one. Burning (rather
//! than paying the block proposer) needs no proposer identity in the header and gives a
//! proposer no reason to stuff blocks with its own transactions; the fee exists to make ledger
//! writes cost an attacker something, not to pay validators.
//!
//! **Topic writes** (handshake sequencing and anchors, [`crate::topic_tx`]) act for no account,
//! so they pay no fee: they carry proof of work instead, `topic_work_per_byte × encoded
//! length` expected BLAKE3 hashes ([`Params::topic_work`]), checked on the transaction id by
//! every validator. A validator's mempool may ask more while its room for topic writes fills
//! (see [`crate::mempool`]); a block only needs the chain's price.
//!
//! **Faucet.** On networks whose genesis sets `faucet > 0` (local dev networks), registering a
//! new account credits it `faucet` once (an account registers once), out of which the
//! registration fee is paid. Anyone can create accounts, so such a network is not spam
//! resistant: real networks set `faucet 0` and fund accounts by genesis allocation and
//! transfers.

use cairn_contracts::FuelSchedule;
use cairn_proto::codec::{DecodeError, Reader, Writer};

/// Default fee per byte of encoded transaction, in balance units (units per byte).
pub const DEFAULT_FEE_PER_BYTE: u64 = 10;
/// Default fee per unit of contract fuel, in balance units (a full 10M-fuel call costs about
/// as much as a 1 MB of transactions at [`DEFAULT_FEE_PER_BYTE`]).
pub const DEFAULT_FEE_PER_FUEL: u64 = 1;
/// Default proof of work of a topic write, in expected hashes per encoded byte: an anchor
/// (~211 bytes) costs ~54k hashes (~6 ms on one core here, at 8.6 M hashes/s), a 4 KiB commit
/// ~1M, and 1 MB of topic writes ~2.6·10^8 (~30 s; see ARCHITECTURE.md).
pub const DEFAULT_TOPIC_WORK_PER_BYTE: u64 = 256;
/// Proof of work per byte on local dev networks (tests and demos mine in debug builds).
pub const DEV_TOPIC_WORK_PER_BYTE: u64 = 4;
/// Largest proof of work per byte a genesis may set, in expected hashes per byte (a full
/// transaction's work stays far below `u64::MAX`).
pub const TOPIC_WORK_PER_BYTE_MAX: u64 = 1 << 32;
/// Largest fee per byte a genesis may set, in balance units per byte (so a full transaction's
/// fee never overflows a `u64`).
pub const FEE_PER_BYTE_MAX: u64 = 1 << 32;
/// Largest fee per unit of fuel a genesis may set, in balance units per fuel unit.
pub const FEE_PER_FUEL_MAX: u64 = 1 << 32;
/// Credit of the dev faucet that local networks enable, in balance units: 10^10 units, about
/// 1 GB of transactions at [`DEFAULT_FEE_PER_BYTE`].
pub const DEV_FAUCET_GRANT: u64 = 10_000_000_000;
/// Largest faucet credit a genesis may set, in balance units.
pub const FAUCET_GRANT_MAX: u64 = 1_000_000_000_000_000;
/// Version 1: no fuel schedule recorded (it is [`FuelSchedule::default`]).
const PARAMS_VERSION: u8 = 1;
/// Version 2: a fuel schedule other than the default follows.
const PARAMS_VERSION_FUEL: u8 = 2;
/// Version 3: a topic work price other than the default, then the fuel schedule (always).
const PARAMS_VERSION_WORK: u8 = 3;

/// The chain's fee and faucet parameters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Params {
    /// Fee per byte of encoded transaction, in balance units (at least 1).
    pub fee_per_byte: u64,
    /// Fee per unit of contract fuel, in balance units.
    pub fee_per_fuel: u64,
    /// Credit given to an account when it registers, in balance units; 0 disables the faucet.
    pub faucet: u64,
    /// Fuel charged by contract host calls.
    pub fuel: FuelSchedule,
    /// Proof of work of a topic write, in expected hashes per encoded byte (at least 1).
    pub topic_work_per_byte: u64,
}

impl Default for Params {
    /// The production default: fees at [`DEFAULT_FEE_PER_BYTE`], no faucet.
    fn default() -> Self {
        Self {
            fee_per_byte: DEFAULT_FEE_PER_BYTE,
            fee_per_fuel: DEFAULT_FEE_PER_FUEL,
            faucet: 0,
            fuel: FuelSchedule::default(),
            topic_work_per_byte: DEFAULT_TOPIC_WORK_PER_BYTE,
        }
    }
}

impl Params {
    /// Parameters of a local dev network: default fees, the [`DEV_FAUCET_GRANT`] faucet and
    /// the light [`DEV_TOPIC_WORK_PER_BYTE`] proof of work.
    pub fn dev() -> Self {
        Self { faucet: DEV_FAUCET_GRANT, topic_work_per_byte: DEV_TOPIC_WORK_PER_BYTE, ..Self::default() }
    }

    /// The proof of work a topic write of `len` encoded bytes needs, in expected hashes
    /// (saturating).
    pub fn topic_work(&self, len: usize) -> u64 {
        self.topic_work_per_byte.saturating_mul(u64::try_from(len).unwrap_or(u64::MAX))
    }

    /// The fee of a transaction of `len` encoded bytes that uses `fuel` units of fuel
    /// (saturating: a fee that large is unpayable anyway).
    pub fn fee(&self, len: usize, fuel: u64) -> u64 {
        let bytes = u64::try_from(len).unwrap_or(u64::MAX);
        self.fee_per_byte.saturating_mul(bytes).saturating_add(self.fee_per_fuel.saturating_mul(fuel))
    }

    /// Whether registration credits new accounts.
    pub fn faucet_enabled(&self) -> bool {
        self.faucet > 0
    }

    /// Checks the bounds; the reason if out of them.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.fee_per_byte == 0 {
            return Err("fee_per_byte must be at least 1: writes must cost something");
        }
        if self.fee_per_byte > FEE_PER_BYTE_MAX {
            return Err("fee_per_byte is over the limit of 2^32");
        }
        if self.fee_per_fuel > FEE_PER_FUEL_MAX {
            return Err("fee_per_fuel is over the limit of 2^32");
        }
        if self.topic_work_per_byte == 0 {
            return Err("topic_work_per_byte must be at least 1: topic writes must cost something");
        }
        if self.topic_work_per_byte > TOPIC_WORK_PER_BYTE_MAX {
            return Err("topic_work_per_byte is over the limit of 2^32");
        }
        if self.faucet > FAUCET_GRANT_MAX {
            return Err("faucet is over the limit of 10^15");
        }
        self.fuel.check().map_err(|_| "a fuel schedule entry is over the limit of 2^32")?;
        Ok(())
    }

    /// Canonical encoding (the state record): version 1 while the fuel schedule and the
    /// topic work price are the defaults (so existing genesis states keep their roots),
    /// version 2 with another fuel schedule, version 3 with another work price.
    pub fn encode(&self) -> Vec<u8> {
        let custom = self.fuel != FuelSchedule::default();
        let work = self.topic_work_per_byte != DEFAULT_TOPIC_WORK_PER_BYTE;
        let mut w = Writer::with_capacity(33 + cairn_contracts::fuel::SCHEDULE_BYTES);
        w.u8(match (work, custom) {
            (true, _) => PARAMS_VERSION_WORK,
            (false, true) => PARAMS_VERSION_FUEL,
            (false, false) => PARAMS_VERSION,
        });
        w.u64(self.fee_per_byte);
        w.u64(self.fee_per_fuel);
        w.u64(self.faucet);
        if work {
            w.u64(self.topic_work_per_byte);
        }
        if custom || work {
            self.fuel.encode_to(&mut w);
        }
        w.finish()
    }

    /// Decodes a state record (fixed size per version; bounds checked).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("params.version")?;
        if !(PARAMS_VERSION..=PARAMS_VERSION_WORK).contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                what: "params",
                found: version,
                supported: PARAMS_VERSION_WORK,
            });
        }
        let mut p = Self {
            fee_per_byte: r.u64("params.fee_per_byte")?,
            fee_per_fuel: r.u64("params.fee_per_fuel")?,
            faucet: r.u64("params.faucet")?,
            fuel: FuelSchedule::default(),
            topic_work_per_byte: DEFAULT_TOPIC_WORK_PER_BYTE,
        };
        if version == PARAMS_VERSION_WORK {
            p.topic_work_per_byte = r.u64("params.topic_work_per_byte")?;
            if p.topic_work_per_byte == DEFAULT_TOPIC_WORK_PER_BYTE {
                return Err(DecodeError::NonCanonical {
                    field: "params",
                    reason: "default topic work in version 3",
                });
            }
            p.fuel = FuelSchedule::decode_from(&mut r)?;
        }
        if version == PARAMS_VERSION_FUEL {
            p.fuel = FuelSchedule::decode_from(&mut r)?;
            if p.fuel == FuelSchedule::default() {
                return Err(DecodeError::NonCanonical {
                    field: "params",
                    reason: "default fuel schedule in version 2",
                });
            }
        }
        r.finish()?;
        p.check().map_err(|reason| DecodeError::Invalid { field: "params", reason })?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn params_round_trip_and_bounds() {
        let p = Params::dev();
        assert_eq!(Params::decode(&p.encode()).unwrap(), p);
        assert_eq!(p.fee(200, 0), 200 * DEFAULT_FEE_PER_BYTE);
        assert_eq!(Params { fee_per_fuel: 3, ..p }.fee(10, 5), 10 * DEFAULT_FEE_PER_BYTE + 15);
        assert!(Params { fee_per_byte: 0, ..p }.check().is_err());
        assert!(Params::decode(&Params { fee_per_byte: 0, ..p }.encode()).is_err());
        assert!(Params { faucet: FAUCET_GRANT_MAX + 1, ..p }.check().is_err());
        assert!(!Params::default().faucet_enabled());
        assert_eq!(Params { fee_per_byte: u64::MAX, ..p }.fee(usize::MAX, 0), u64::MAX);
        // the defaults keep the version 1 record; another schedule or work price is recorded
        assert_eq!(Params::default().encode().len(), 25);
        assert_eq!(p.encode()[0], 3, "the dev work price is recorded");
        assert_eq!(p.topic_work(100), 100 * DEV_TOPIC_WORK_PER_BYTE);
        assert!(Params { topic_work_per_byte: 0, ..p }.check().is_err());
        let p = Params { topic_work_per_byte: DEFAULT_TOPIC_WORK_PER_BYTE, ..p };
        let custom = Params { fuel: FuelSchedule { per_byte: 3, ..FuelSchedule::default() }, ..p };
        assert_eq!(Params::decode(&custom.encode()).unwrap(), custom);
        let mut non_canonical = p.encode();
        non_canonical[0] = 2;
        let mut w = Writer::with_capacity(64);
        FuelSchedule::default().encode_to(&mut w);
        non_canonical.extend_from_slice(&w.finish());
        assert!(Params::decode(&non_canonical).is_err());
    }
}
