//! The genesis file: chain name, validator set (consensus keys and loopback addresses), fee and
//! faucet parameters ([`Params`]), initial balances; and validator key files.
//!
//! The format is a small line-based text file so operators can read and diff it:
//!
//! ```text
//! cairn-ledger-genesis 1
//! chain local-4
//! fee_per_byte 10
//! fee_per_fuel 1
//! faucet 10000000000
//! topic_work_per_byte 256
//! validator <hex ed25519 public key> <p2p host:port> <rpc host:port>
//! account <bech32 account id> <balance>
//! ```
//!
//! A missing parameter line takes its [`Params::default`] value (fees on, faucet off).

use std::path::Path;

use cairn_proto::AccountId;
use commonware_codec::{DecodeExt as _, Encode as _};
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_cryptography::{Signer as _, ed25519};
use commonware_utils::ordered::Set;
use thiserror::Error;

use crate::block::Block;
use crate::endpoint::Endpoint;
use crate::params::Params;
use crate::state::{Machine, StateError};

/// Consensus signature namespace (distinct from the p2p namespace).
pub const CONSENSUS_NAMESPACE: &[u8] = b"cairn_ledger_consensus_v1";
/// Authenticated p2p namespace.
pub const P2P_NAMESPACE: &[u8] = b"cairn_ledger_p2p_v1";
const MAGIC: &str = "cairn-ledger-genesis 1";

/// A validator in the genesis file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ValidatorInfo {
    /// Consensus (and p2p identity) key.
    pub key: ed25519::PublicKey,
    /// Address of the validator p2p listener (an IP or a DNS name, with the port).
    pub p2p: Endpoint,
    /// Address of the client RPC listener (an IP or a DNS name, with the port).
    pub rpc: Endpoint,
}

/// The chain's genesis.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Genesis {
    /// Chain name.
    pub chain: String,
    /// Validator set (fixed for the chain's single epoch).
    pub validators: Vec<ValidatorInfo>,
    /// Initial balances (these accounts start registered).
    pub accounts: Vec<(AccountId, u64)>,
    /// Fee and faucet parameters.
    pub params: Params,
}

/// Why a genesis or key file was refused.
#[derive(Debug, Error)]
pub enum GenesisError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line does not parse.
    #[error("genesis line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The validator set is unusable.
    #[error("bad validator set: {0}")]
    Validators(&'static str),
    /// The fee or faucet parameters are out of bounds.
    #[error("bad ledger parameters: {0}")]
    Params(&'static str),
    /// A key file is malformed.
    #[error("bad key file: {0}")]
    Key(&'static str),
    /// Building the genesis state failed.
    #[error(transparent)]
    State(#[from] StateError),
}

fn parse_err(line: usize, reason: impl Into<String>) -> GenesisError {
    GenesisError::Parse { line, reason: reason.into() }
}

/// Decodes a hex consensus public key.
pub fn public_key_from_hex(s: &str) -> Option<ed25519::PublicKey> {
    let b = hex::decode(s).ok()?;
    ed25519::PublicKey::decode(b).ok()
}

/// Hex text of a consensus public key.
pub fn public_key_hex(k: &ed25519::PublicKey) -> String {
    hex::encode(k.encode())
}

impl Genesis {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = format!("{MAGIC}\nchain {}\n", self.chain);
        let p = &self.params;
        s.push_str(&format!(
            "fee_per_byte {}\nfee_per_fuel {}\nfaucet {}\ntopic_work_per_byte {}\n",
            p.fee_per_byte, p.fee_per_fuel, p.faucet, p.topic_work_per_byte
        ));
        for v in &self.validators {
            s.push_str(&format!("validator {} {} {}\n", public_key_hex(&v.key), v.p2p, v.rpc));
        }
        for (a, bal) in &self.accounts {
            s.push_str(&format!("account {} {bal}\n", a.to_text()));
        }
        s
    }

    /// Parses the text form.
    pub fn parse(text: &str) -> Result<Self, GenesisError> {
        let mut lines =
            text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty());
        match lines.next() {
            Some((_, l)) if l == MAGIC => {}
            _ => return Err(parse_err(1, format!("expected `{MAGIC}`"))),
        }
        let mut g = Genesis {
            chain: String::new(),
            validators: Vec::new(),
            accounts: Vec::new(),
            params: Params::default(),
        };
        for (n, line) in lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            let number =
                |v: &str, what: &str| v.parse::<u64>().map_err(|_| parse_err(n, format!("bad {what}")));
            match f.as_slice() {
                ["chain", name] => g.chain = (*name).to_owned(),
                ["fee_per_byte", v] => g.params.fee_per_byte = number(v, "fee_per_byte")?,
                ["fee_per_fuel", v] => g.params.fee_per_fuel = number(v, "fee_per_fuel")?,
                ["faucet", v] => g.params.faucet = number(v, "faucet")?,
                ["topic_work_per_byte", v] => {
                    g.params.topic_work_per_byte = number(v, "topic_work_per_byte")?;
                }
                ["validator", key, p2p, rpc] => g.validators.push(ValidatorInfo {
                    key: public_key_from_hex(key).ok_or_else(|| parse_err(n, "bad validator key"))?,
                    p2p: p2p.parse().map_err(|e| parse_err(n, format!("p2p address: {e}")))?,
                    rpc: rpc.parse().map_err(|e| parse_err(n, format!("rpc address: {e}")))?,
                }),
                ["account", id, bal] => g.accounts.push((
                    AccountId::from_text(id).map_err(|e| parse_err(n, e.to_string()))?,
                    bal.parse().map_err(|_| parse_err(n, "bad balance"))?,
                )),
                _ => return Err(parse_err(n, "unknown line")),
            }
        }
        if g.chain.is_empty() {
            return Err(parse_err(1, "missing `chain` line"));
        }
        g.params.check().map_err(|reason| parse_err(1, reason))?;
        g.participants()?;
        Ok(g)
    }

    /// Reads a genesis file.
    pub fn load(path: &Path) -> Result<Self, GenesisError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| GenesisError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text)
    }

    /// The chain id: a hash of the canonical text form. Transactions are signed for it.
    pub fn chain_id(&self) -> [u8; 32] {
        cairn_proto::id::hash("cairn 2026-11 ledger chain id v1", self.to_text().as_bytes())
    }

    /// The validator keys as the sorted set consensus uses.
    pub fn participants(&self) -> Result<Set<ed25519::PublicKey>, GenesisError> {
        if self.validators.is_empty() {
            return Err(GenesisError::Validators("no validators"));
        }
        Set::try_from(self.validators.iter().map(|v| v.key.clone()).collect::<Vec<_>>())
            .map_err(|_| GenesisError::Validators("duplicate validator key"))
    }

    /// A verifier of certificates by this validator set (what a light client holds).
    pub fn verifier(&self) -> Result<Scheme, GenesisError> {
        Ok(Scheme::verifier(CONSENSUS_NAMESPACE, self.participants()?))
    }

    /// The genesis state machine and block (height 0).
    pub fn build(&self) -> Result<(Machine, Block), GenesisError> {
        self.params.check().map_err(GenesisError::Params)?;
        let m = Machine::genesis(self.chain_id(), &self.accounts, &self.params)?;
        let block = Block::new(0, [0; 32], m.db.root(), Vec::new(), crate::outcome_tree::root(&[]));
        Ok((m, block))
    }

    /// A local dev genesis for `n` validators on 127.0.0.1 with ports from `base_port`
    /// (p2p `base_port + 2i`, rpc `base_port + 2i + 1`), with fresh keys, default fees and the
    /// dev faucet on ([`Params::dev`]); set `params` on the result to change them.
    pub fn local(
        chain: &str,
        n: usize,
        base_port: u16,
        accounts: Vec<(AccountId, u64)>,
    ) -> Result<(Self, Vec<ed25519::PrivateKey>), GenesisError> {
        let keys = (0..n).map(|_| fresh_key()).collect::<Result<Vec<_>, _>>()?;
        let validators = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let p = base_port.saturating_add((2 * i) as u16);
                ValidatorInfo {
                    key: k.public_key(),
                    p2p: Endpoint::Socket(std::net::SocketAddr::from(([127, 0, 0, 1], p))),
                    rpc: Endpoint::Socket(std::net::SocketAddr::from(([127, 0, 0, 1], p.saturating_add(1)))),
                }
            })
            .collect();
        Ok((Self { chain: chain.to_owned(), validators, accounts, params: Params::dev() }, keys))
    }
}

/// A fresh random validator key (seed from the OS).
pub fn fresh_key() -> Result<ed25519::PrivateKey, GenesisError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| GenesisError::Key("no OS randomness"))?;
    ed25519::PrivateKey::decode(seed.to_vec()).map_err(|_| GenesisError::Key("seed rejected"))
}

/// Writes a validator key file (hex of the 32-byte seed), created 0600 and never overwritten.
pub fn write_key(path: &Path, key: &ed25519::PrivateKey) -> Result<(), GenesisError> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let io = |source| GenesisError::Io { path: path.display().to_string(), source };
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(format!("{}\n", hex::encode(key.encode())).as_bytes()).map_err(io)?;
    Ok(())
}

/// Reads a validator key file.
pub fn read_key(path: &Path) -> Result<ed25519::PrivateKey, GenesisError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| GenesisError::Io { path: path.display().to_string(), source })?;
    let b = hex::decode(text.trim()).map_err(|_| GenesisError::Key("not hex"))?;
    ed25519::PrivateKey::decode(b).map_err(|_| GenesisError::Key("not a 32-byte ed25519 seed"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn genesis_text_round_trips() {
        let (g, _) = Genesis::local("t", 4, 20000, vec![(AccountId([7; 32]), 5)]).unwrap();
        let back = Genesis::parse(&g.to_text()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.chain_id(), g.chain_id());
        assert!(Genesis::parse("nope").is_err());
        let dup =
            format!("{}{}", g.to_text(), g.to_text().lines().find(|l| l.starts_with("validator")).unwrap());
        assert!(Genesis::parse(&dup).is_err());
        // parameters: written, read back, and part of the chain id; a free chain is refused
        assert_eq!(back.params, Params::dev());
        let mut other = g.clone();
        other.params.faucet = 0;
        assert_ne!(other.chain_id(), g.chain_id());
        assert_eq!(Genesis::parse(&other.to_text()).unwrap().params.faucet, 0);
        let free = g.to_text().replace("fee_per_byte 10", "fee_per_byte 0");
        assert!(matches!(Genesis::parse(&free), Err(GenesisError::Parse { .. })));
        // an older file without parameter lines gets the defaults: fees on, faucet off
        let old: String = g
            .to_text()
            .lines()
            .filter(|l| !l.starts_with("fee_") && !l.starts_with("faucet") && !l.starts_with("topic_work"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Genesis::parse(&old).unwrap().params, Params::default());
    }
}
