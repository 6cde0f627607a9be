//! The contracts Cairn ships, written in AssemblyScript (`contracts/*.ts`, built by
//! `contracts/build.sh` into the checked-in `.wasm` included here), and the canonical
//! encodings of their messages (cairn-proto's codec: fixed fields raw, integers big-endian,
//! byte strings behind a `u32` length).

use cairn_proto::codec::{DecodeError, Reader, Writer};

/// Escrow / pay on delivery (`contracts/escrow.ts`).
pub mod escrow {
    use super::*;

    /// The module.
    pub const WASM: &[u8] = include_bytes!("../../../contracts/escrow.wasm");
    const RECEIPT_DOMAIN: &[u8] = b"cairn/delivery-receipt/v1";

    /// The bytes a recipient's device signs to acknowledge delivery of message `id`.
    pub fn receipt_message(id: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.raw(RECEIPT_DOMAIN);
        w.raw(id);
        w.finish()
    }

    /// Locks the call's funds for message `id` to `recipient` until `deadline_height`.
    pub fn open(id: &[u8; 32], recipient: &[u8; 32], deadline_height: u64) -> Vec<u8> {
        let mut w = Writer::with_capacity(73);
        w.u8(0);
        w.raw(id);
        w.raw(recipient);
        w.u64(deadline_height);
        w.finish()
    }

    /// Releases escrow `id` to its recipient on `device`'s signature over [`receipt_message`].
    pub fn release(id: &[u8; 32], device: &[u8; 32], signature: &[u8; 64]) -> Vec<u8> {
        let mut w = Writer::with_capacity(129);
        w.u8(1);
        w.raw(id);
        w.raw(device);
        w.raw(signature);
        w.finish()
    }

    /// Refunds escrow `id` to its payer (after the deadline).
    pub fn refund(id: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(33);
        w.u8(2);
        w.raw(id);
        w.finish()
    }

    /// The query for escrow `id`.
    pub fn query(id: &[u8; 32]) -> Vec<u8> {
        id.to_vec()
    }

    /// State of an escrow.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Status {
        /// Funds locked.
        Open,
        /// Paid to the recipient.
        Released,
        /// Paid back to the payer.
        Refunded,
    }

    /// An escrow record (the query's answer).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Record {
        /// State.
        pub status: Status,
        /// Who locked the funds.
        pub payer: [u8; 32],
        /// Who is paid on delivery.
        pub recipient: [u8; 32],
        /// Amount locked.
        pub amount: u64,
        /// After this height the payer may be refunded.
        pub deadline_height: u64,
    }

    impl Record {
        /// Decodes a query answer.
        pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
            let mut r = Reader::new(bytes);
            let status = match r.u8("escrow.status")? {
                0 => Status::Open,
                1 => Status::Released,
                2 => Status::Refunded,
                _ => return Err(DecodeError::Invalid { field: "escrow.status", reason: "unknown status" }),
            };
            let rec = Self {
                status,
                payer: r.array("escrow.payer")?,
                recipient: r.array("escrow.recipient")?,
                amount: r.u64("escrow.amount")?,
                deadline_height: r.u64("escrow.deadline")?,
            };
            r.finish()?;
            Ok(rec)
        }
    }
}

/// Paid storage (`contracts/paid_storage.ts`): store nodes redeem their signed store receipts.
pub mod paid_storage {
    use super::*;

    /// The module.
    pub const WASM: &[u8] = include_bytes!("../../../contracts/paid_storage.wasm");

    /// Deposits the call's funds for store node `store_key`, paid to `payee` at `price` per
    /// receipt.
    pub fn deposit(store_key: &[u8; 32], payee: &[u8; 32], price: u64) -> Vec<u8> {
        let mut w = Writer::with_capacity(73);
        w.u8(0);
        w.raw(store_key);
        w.raw(payee);
        w.u64(price);
        w.finish()
    }

    /// Redeems a store receipt (its 112-byte canonical encoding, `cairn_net::StoreReceipt`)
    /// against `payer`'s deposit for `store_key`.
    pub fn redeem(payer: &[u8; 32], store_key: &[u8; 32], receipt: &[u8; 112]) -> Vec<u8> {
        let mut w = Writer::with_capacity(177);
        w.u8(1);
        w.raw(payer);
        w.raw(store_key);
        w.raw(receipt);
        w.finish()
    }

    /// Withdraws the caller's remaining deposit for `store_key`.
    pub fn withdraw(store_key: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(33);
        w.u8(2);
        w.raw(store_key);
        w.finish()
    }

    /// The query for `payer`'s deposit with `store_key`.
    pub fn query_deposit(payer: &[u8; 32], store_key: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(65);
        w.u8(0);
        w.raw(payer);
        w.raw(store_key);
        w.finish()
    }

    /// The query whether `store_key`'s receipt for envelope `id` was redeemed (answer: 1 byte).
    pub fn query_redeemed(store_key: &[u8; 32], id: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(65);
        w.u8(1);
        w.raw(store_key);
        w.raw(id);
        w.finish()
    }

    /// A deposit (the query's answer).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Deposit {
        /// Account paid per receipt.
        pub payee: [u8; 32],
        /// Price per receipt.
        pub price: u64,
        /// What is left.
        pub balance: u64,
    }

    impl Deposit {
        /// Decodes a query answer.
        pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
            let mut r = Reader::new(bytes);
            let d = Self {
                payee: r.array("deposit.payee")?,
                price: r.u64("deposit.price")?,
                balance: r.u64("deposit.balance")?,
            };
            r.finish()?;
            Ok(d)
        }
    }
}

/// Consent registry (`contracts/consent.ts`).
pub mod consent {
    use super::*;

    /// The module.
    pub const WASM: &[u8] = include_bytes!("../../../contracts/consent.wasm");
    /// Longest data pointer, bytes.
    pub const POINTER_MAX: usize = 256;

    /// Grants `party` access to `pointer` until `expires_height`.
    pub fn grant(party: &[u8; 32], expires_height: u64, pointer: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(45 + pointer.len());
        w.u8(0);
        w.raw(party);
        w.u64(expires_height);
        w.bytes(pointer);
        w.finish()
    }

    /// Revokes `party`'s access to `pointer`.
    pub fn revoke(party: &[u8; 32], pointer: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(37 + pointer.len());
        w.u8(1);
        w.raw(party);
        w.bytes(pointer);
        w.finish()
    }

    /// The query whether `owner` granted `party` access to `pointer`.
    pub fn query(owner: &[u8; 32], party: &[u8; 32], pointer: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(68 + pointer.len());
        w.raw(owner);
        w.raw(party);
        w.bytes(pointer);
        w.finish()
    }

    /// The contract-state key of a grant (what a light client asks a proof for).
    pub fn grant_key(owner: &[u8; 32], party: &[u8; 32], pointer: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(97);
        w.u8(0x67);
        w.raw(owner);
        w.raw(party);
        w.raw(blake3::hash(pointer).as_bytes());
        w.finish()
    }

    /// A grant's stored value: its expiry height and the pointer.
    pub fn decode_grant(value: &[u8]) -> Result<(u64, Vec<u8>), DecodeError> {
        let mut r = Reader::new(value);
        let expires = r.u64("grant.expires")?;
        let pointer = r.take(r.remaining(), "grant.pointer")?.to_vec();
        Ok((expires, pointer))
    }

    /// The query's answer: whether access holds at this height, and the expiry (0: none).
    pub fn decode_access(bytes: &[u8]) -> Result<(bool, u64), DecodeError> {
        let mut r = Reader::new(bytes);
        let access = match r.u8("access")? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::NonCanonical { field: "access", reason: "not 0 or 1" }),
        };
        let expires = r.u64("access.expires")?;
        r.finish()?;
        Ok((access, expires))
    }
}
