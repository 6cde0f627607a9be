//! `cairn contract deploy|instantiate|execute|query`, `cairn pay` and `cairn balance`: ledger
//! contracts and payments, signed here with this identity's key (the account key, else this
//! device's key) and sent straight to the validators of the genesis (no node needed; a running
//! node may sign at the same time: nonce races are retried).
//!
//! Every refusal is a typed ledger error turned into a sentence that says what to do next; a
//! module that breaks an upload rule is refused here, naming the rule, before any fee is paid.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use cairn_contracts::{Limits, code_hash, validate};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{ClientError, LedgerClient};
use cairn_ledger::state::{FUEL_LIMIT_MAX, contract_address};
use cairn_ledger::tx::{CODE_BYTES_MAX, CONTRACT_MSG_MAX, Tx, TxBody, TxError, normalize_handle};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;
use clap::{Args, Subcommand};

use crate::tx_submit::Submitted;

/// Default fuel limit of a call.
const DEFAULT_FUEL: u64 = 1_000_000;

/// Where the ledger is: its genesis file.
#[derive(Debug, Args)]
pub(crate) struct LedgerAt {
    /// Ledger genesis file (default: DIR/genesis.txt, else DIR/dev/chain/genesis.txt).
    #[arg(long, global = true)]
    genesis: Option<PathBuf>,
}

/// `cairn contract …`.
#[derive(Debug, Args)]
pub(crate) struct ContractArgs {
    #[command(flatten)]
    at: LedgerAt,
    #[command(subcommand)]
    command: ContractCommand,
}

#[derive(Debug, Subcommand)]
enum ContractCommand {
    /// Upload a WebAssembly module (checked against the upload rules first); prints its hash.
    Deploy {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Create an instance of deployed code and run its `init`; prints the contract address.
    Instantiate {
        /// Code hash (64 hex digits, from `deploy`).
        code_hash: String,
        /// Input of `init`: hex (`0x…` or plain), a JSON text (`{…}` / `[…]`, passed as its
        /// UTF-8 bytes), or `@FILE` (raw bytes).
        #[arg(long, default_value = "")]
        msg: String,
        /// Amount moved to the contract before `init` runs.
        #[arg(long, default_value_t = 0)]
        funds: u64,
        /// Most fuel the call may use (its fee is reserved; the unused part is refunded).
        #[arg(long, default_value_t = DEFAULT_FUEL)]
        fuel: u64,
    },
    /// Run a contract's `execute` with a message (and funds); `call` is another name for it.
    #[command(alias = "call")]
    Execute {
        /// Contract address (64 hex digits, from `instantiate`).
        address: String,
        /// Input of `execute` (same forms as for `instantiate`).
        #[arg(long, default_value = "")]
        msg: String,
        /// Amount moved to the contract before the call.
        #[arg(long, default_value_t = 0)]
        funds: u64,
        /// Most fuel the call may use.
        #[arg(long, default_value_t = DEFAULT_FUEL)]
        fuel: u64,
    },
    /// Run a contract's read-only `query`; prints its output (hex, and text when it is UTF-8).
    Query {
        /// Contract address.
        address: String,
        /// Input of `query` (same forms as for `instantiate`).
        #[arg(long, default_value = "")]
        msg: String,
    },
}

/// `cairn pay <who> <amount>`.
#[derive(Debug, Args)]
pub(crate) struct PayArgs {
    /// Receiving account id (`cairn1…`) or `@handle`.
    who: String,
    /// Amount, in balance units.
    amount: u64,
    #[command(flatten)]
    at: LedgerAt,
}

/// `cairn balance [who]`.
#[derive(Debug, Args)]
pub(crate) struct BalanceArgs {
    /// Account id or `@handle` (default: this account).
    who: Option<String>,
    #[command(flatten)]
    at: LedgerAt,
}

fn genesis_path(home: &Path, at: &LedgerAt) -> anyhow::Result<PathBuf> {
    if let Some(g) = &at.genesis {
        return Ok(g.clone());
    }
    [home.join("genesis.txt"), home.join("dev/chain/genesis.txt")]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no ledger genesis in {h} (genesis.txt or dev/chain/genesis.txt): pass --genesis FILE",
                h = home.display()
            )
        })
}

fn ledger(home: &Path, at: &LedgerAt) -> anyhow::Result<LedgerClient> {
    let g = genesis_path(home, at)?;
    let genesis = Genesis::load(&g).with_context(|| format!("reading the genesis {}", g.display()))?;
    Ok(LedgerClient::new(&genesis)?)
}

/// The account this identity acts for and the key it signs with.
fn signer(home: &Path) -> anyhow::Result<(AccountId, SigningKey)> {
    let id = crate::home::load(home)?;
    let key = id.account_key.clone().unwrap_or_else(|| id.device_key.clone());
    Ok((id.account(), key))
}

/// Parses a contract message: hex, JSON text, or `@FILE`.
pub(crate) fn parse_msg(msg: &str) -> anyhow::Result<Vec<u8>> {
    let m = msg.trim();
    let bytes = if let Some(file) = m.strip_prefix('@') {
        std::fs::read(file).with_context(|| format!("reading the message file {file}"))?
    } else if m.starts_with('{') || m.starts_with('[') {
        serde_json::from_str::<serde_json::Value>(m)
            .context("--msg starts like JSON but does not parse: fix it, or give hex (0x…)")?;
        m.as_bytes().to_vec()
    } else {
        let h = m.strip_prefix("0x").unwrap_or(m);
        hex::decode(h).context("--msg is neither hex (0x…), JSON ({…}) nor @FILE")?
    };
    if bytes.len() > CONTRACT_MSG_MAX {
        bail!("the message is {} bytes; a contract message holds at most {CONTRACT_MSG_MAX}", bytes.len());
    }
    Ok(bytes)
}

fn parse32(what: &str, s: &str) -> anyhow::Result<[u8; 32]> {
    let h = s.trim().strip_prefix("0x").unwrap_or(s.trim());
    let v = hex::decode(h).with_context(|| format!("{what} '{s}' is not hex"))?;
    v.try_into().map_err(|_| anyhow::anyhow!("{what} '{s}' is not 32 bytes (64 hex digits)"))
}

/// What to do after a refusal, by [`TxError::code`].
fn hint(code: u8) -> &'static str {
    let is = |e: TxError| e.code() == code;
    if is(TxError::InsufficientBalance { have: 0, need: 0 }) {
        "; fund the account (`cairn pay` from a funded account) or send less"
    } else if is(TxError::UnknownAccount) || is(TxError::UnknownSigner) {
        "; register this account first: run `cairn up` once with this --home and genesis"
    } else if is(TxError::UnknownCode) {
        "; deploy the code first with `cairn contract deploy FILE`"
    } else if is(TxError::UnknownContract) {
        "; check the address printed by `cairn contract instantiate`"
    } else if is(TxError::ContractFailed(String::new())) {
        "; nothing of the call was kept but the fee for the fuel used (raise --fuel if it ran out)"
    } else {
        ""
    }
}

/// Signs and submits `body` (see [`crate::tx_submit`]); a refusal or a failed execution is an
/// error that says what to do. Returns the signed transaction and its height.
fn submit(
    c: &mut LedgerClient,
    account: AccountId,
    key: &SigningKey,
    body: TxBody,
) -> anyhow::Result<(Tx, u64)> {
    match crate::tx_submit::submit(c, account, key, &body)? {
        Submitted::Final(tx, height) => Ok((*tx, height)),
        Submitted::Failed { height, code, message } => {
            bail!(
                "the ledger included the transaction at height {height} but it failed: {message}{}",
                hint(code)
            )
        }
        Submitted::Refused { code, message } => {
            bail!("the ledger refused the transaction: {message}{}", hint(code))
        }
    }
}

fn show_output(out: &[u8]) -> String {
    let mut s = format!("output   {} bytes  0x{}\n", out.len(), hex::encode(out));
    if !out.is_empty()
        && let Ok(text) = std::str::from_utf8(out)
        && text.chars().all(|c| !c.is_control() || c == '\n')
    {
        s.push_str(&format!("text     {text}\n"));
    }
    s
}

/// Runs `cairn contract …`.
pub(crate) fn run(home: &Path, args: ContractArgs) -> anyhow::Result<()> {
    let mut c = ledger(home, &args.at)?;
    match args.command {
        ContractCommand::Deploy { file } => {
            let code = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            validate(&code, &Limits::LEDGER)
                .map_err(|e| anyhow::anyhow!("{} is refused before upload: {e}", file.display()))?;
            if code.len() > CODE_BYTES_MAX {
                bail!(
                    "{} is {} bytes; a deploy transaction carries at most {CODE_BYTES_MAX}: shrink the module (asc -O3z)",
                    file.display(),
                    code.len()
                );
            }
            let hash = code_hash(&code);
            let (account, key) = signer(home)?;
            let (tx, height) = submit(&mut c, account, &key, TxBody::Deploy { code: code.clone() })?;
            println!("deployed {} bytes at height {height} (tx {})", code.len(), tx.id());
            println!("code     {}", hex::encode(hash));
        }
        ContractCommand::Instantiate { code_hash, msg, funds, fuel } => {
            let hash = parse32("code hash", &code_hash)?;
            let msg = parse_msg(&msg)?;
            check_fuel(fuel)?;
            let (account, key) = signer(home)?;
            let body = TxBody::Instantiate { code_hash: hash, msg, funds, fuel_limit: fuel };
            let (tx, height) = submit(&mut c, account, &key, body)?;
            let address = contract_address(&account, &tx.signer, tx.nonce, &hash);
            println!("instantiated at height {height} (tx {}) with {funds} funds", tx.id());
            println!("contract {}", hex::encode(address));
        }
        ContractCommand::Execute { address, msg, funds, fuel } => {
            let contract = parse32("contract address", &address)?;
            let msg = parse_msg(&msg)?;
            check_fuel(fuel)?;
            let (account, key) = signer(home)?;
            let body = TxBody::Execute { contract, msg, funds, fuel_limit: fuel };
            let (tx, height) = submit(&mut c, account, &key, body)?;
            println!("executed at height {height} (tx {}) with {funds} funds", tx.id());
        }
        ContractCommand::Query { address, msg } => {
            let contract = parse32("contract address", &address)?;
            let msg = parse_msg(&msg)?;
            let out = c.query(&contract, &msg).map_err(|e| match e {
                ClientError::Refused { code, message } => {
                    anyhow::anyhow!("the query failed: {message}{}", hint(code))
                }
                e => anyhow::Error::new(e).context("no validator answered the query"),
            })?;
            print!("{}", show_output(&out));
        }
    }
    Ok(())
}

fn check_fuel(fuel: u64) -> anyhow::Result<()> {
    if fuel == 0 || fuel > FUEL_LIMIT_MAX {
        bail!("--fuel {fuel} is outside 1..={FUEL_LIMIT_MAX}: split larger work into several calls");
    }
    Ok(())
}

fn resolve(c: &mut LedgerClient, who: &str) -> anyhow::Result<AccountId> {
    let who = who.trim();
    if let Some(h) = who.strip_prefix('@') {
        let name = normalize_handle(h).map_err(|e| anyhow::anyhow!("@{h}: {e}"))?;
        return c.handle_owner(&name)?.with_context(|| format!("@{name} is not registered on the ledger"));
    }
    AccountId::from_text(who)
        .map_err(|e| anyhow::anyhow!("'{who}' is neither an account id (cairn1…) nor a @handle: {e}"))
}

/// Runs `cairn pay`.
pub(crate) fn pay(home: &Path, args: PayArgs) -> anyhow::Result<()> {
    if args.amount == 0 {
        bail!("the amount must be at least 1");
    }
    let mut c = ledger(home, &args.at)?;
    let to = resolve(&mut c, &args.who)?;
    let (account, key) = signer(home)?;
    if to == account {
        bail!("{} is this account: pay someone else", args.who);
    }
    let (tx, height) = submit(&mut c, account, &key, TxBody::Transfer { to, amount: args.amount })?;
    let left = c.account(&account)?.map_or(0, |a| a.balance);
    println!(
        "paid {} to {} at height {height} (tx {}); balance now {left}",
        args.amount,
        to.to_text(),
        tx.id()
    );
    Ok(())
}

/// Runs `cairn balance`.
pub(crate) fn balance(home: &Path, args: BalanceArgs) -> anyhow::Result<()> {
    let mut c = ledger(home, &args.at)?;
    let who = match &args.who {
        Some(w) => resolve(&mut c, w)?,
        None => {
            let ks = home.join("keystore");
            if !ks.exists() {
                bail!("no identity in {}: name an account, or create one with `cairn init`", home.display());
            }
            signer(home)?.0
        }
    };
    // proven: the client checks the Merkle proof against a finalized, quorum-signed header
    match c.account(&who)? {
        Some(a) => println!("{} {}", who.to_text(), a.balance),
        None => bail!(
            "{} is not registered on the ledger (its balance is 0): `cairn up` registers it",
            who.to_text()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_hex_json_or_refuse() {
        assert_eq!(parse_msg("0x0102").unwrap(), vec![1, 2]);
        assert_eq!(parse_msg("ff").unwrap(), vec![255]);
        assert_eq!(parse_msg("").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_msg(r#"{"a":1}"#).unwrap(), br#"{"a":1}"#.to_vec());
        assert!(parse_msg("{nope").is_err());
        assert!(parse_msg("0xzz").is_err());
        assert!(parse_msg(&"00".repeat(CONTRACT_MSG_MAX + 1)).is_err());
        assert!(parse32("x", &"ab".repeat(31)).is_err());
        assert_eq!(parse32("x", &"ab".repeat(32)).unwrap(), [0xab; 32]);
    }
}
