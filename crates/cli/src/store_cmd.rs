//! `cairn store register|deregister|list`: a store operator puts a store node on the ledger
//! (issue 12 §4). Run from the home of the account that pays the store fee; the store node's
//! Ed25519 identity key (its plain key file, written by `cairn up --store`) signs its consent
//! (`store_binding_message`), the account key signs the transaction, sent straight to the
//! validators of the genesis (no node needed), and the command waits until it is final.
//!
//! Every refusal is a [`StoreCmdError`] that says what to do next. `cairn dev` registers its
//! store nodes with [`apply`] when its account can pay.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_ledger::genesis::Genesis;
use cairn_ledger::params::Params;
use cairn_ledger::rpc::LedgerClient;
use cairn_ledger::state::store_fee;
use cairn_ledger::tx::{TxBody, TxError, store_binding_message};
use cairn_proto::AccountId;
use cairn_proto::ed25519::{Signer as _, SigningKey};
use clap::{Args, Subcommand};

use crate::tx_submit::Submitted;

/// `cairn store …`.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// Ledger genesis file (default: DIR/genesis.txt, else DIR/dev/chain/genesis.txt).
    #[arg(long, global = true)]
    genesis: Option<PathBuf>,
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Register the store node of --store-home for this account (pays the store fee, burned);
    /// senders then place mail on it.
    Register {
        /// The store node's data directory (the --home of its `cairn up --store`).
        #[arg(long, value_name = "DIR")]
        store_home: PathBuf,
    },
    /// Remove the store node of --store-home this account registered (the fee is not refunded).
    Deregister {
        /// The store node's data directory.
        #[arg(long, value_name = "DIR")]
        store_home: PathBuf,
    },
    /// The registered store nodes, checked against a proof.
    List,
}

/// Why a store command did nothing.
#[derive(Debug)]
pub(crate) enum StoreCmdError {
    /// No store node key file in the directory.
    NotStoreHome(String),
    /// The key file is a user node's (sealed) or damaged.
    BadKeyFile(String),
    /// The account cannot pay.
    NoFunds {
        /// The paying account.
        account: String,
        /// Its balance.
        have: u64,
        /// The store fee.
        need: u64,
    },
    /// The node key is registered already.
    AlreadyRegistered(String),
    /// Deregistering a node this account did not register.
    NotRegistered(String),
    /// Any other ledger refusal.
    Refused {
        /// [`TxError::code`].
        code: u8,
        /// The ledger's sentence.
        message: String,
    },
}

impl std::fmt::Display for StoreCmdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotStoreHome(d) => write!(
                f,
                "{d} is not a store node's home (no net/node.key): start the store node once with \
                 `cairn --home {d} up --store --genesis FILE`, then register it"
            ),
            Self::BadKeyFile(why) => {
                write!(
                    f,
                    "{why}; pass the --home of a store-only node (`cairn up --store` without an identity)"
                )
            }
            Self::NoFunds { account, have, need } => write!(
                f,
                "account {account} cannot pay the store fee of {need} units plus the transaction fee \
                 (it has {have}): on a dev network the faucet funds an account when it registers \
                 (run `cairn up` with this --home once); otherwise `cairn pay` it from a funded account"
            ),
            Self::AlreadyRegistered(node) => write!(
                f,
                "store node {node} is already registered: nothing to do (`cairn store deregister` \
                 from the registering account's home removes it)"
            ),
            Self::NotRegistered(node) => write!(
                f,
                "store node {node} is not registered by this account: run deregister from the home of \
                 the account that registered it (`cairn store list` shows it)"
            ),
            Self::Refused { code, message } => {
                write!(f, "the ledger refused the transaction: {message} (code {code})")
            }
        }
    }
}

impl std::error::Error for StoreCmdError {}

fn genesis_path(home: &Path, given: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(g) = given {
        return Ok(g.clone());
    }
    [home.join("genesis.txt"), home.join("dev/chain/genesis.txt")]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no ledger genesis in {h} (genesis.txt or dev/chain/genesis.txt): pass --genesis FILE",
                h = home.display()
            )
        })
}

/// The key file of a store node's home: `DIR/net/node.key` (`cairn up --store`), else
/// `DIR/node.key` (a `cairn dev` store node).
pub(crate) fn store_key_file(store_home: &Path) -> Option<PathBuf> {
    [store_home.join("net").join("node.key"), store_home.join("node.key")].into_iter().find(|p| p.exists())
}

/// The store node's identity key, from its home.
pub(crate) fn store_key(store_home: &Path) -> Result<SigningKey, StoreCmdError> {
    let file = store_key_file(store_home)
        .ok_or_else(|| StoreCmdError::NotStoreHome(store_home.display().to_string()))?;
    let seed =
        cairn_net::node::load_plain_seed(&file).map_err(|e| StoreCmdError::BadKeyFile(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The `RegisterStore` body: `node`'s consent to be registered for `account` on `chain`.
pub(crate) fn register_body(chain: &[u8; 32], account: &AccountId, node: &SigningKey) -> TxBody {
    let node_key = node.verifying_key().to_bytes();
    let sig = node.sign(&store_binding_message(chain, account, &node_key));
    TxBody::RegisterStore { node_key, node_signature: sig.to_bytes() }
}

/// A ledger refusal as a [`StoreCmdError`].
fn typed(
    c: &mut LedgerClient,
    params: &Params,
    account: AccountId,
    node_key: &[u8; 32],
    (code, message): (u8, String),
) -> StoreCmdError {
    let node = hex::encode(node_key);
    let no_account = [TxError::UnknownAccount.code(), TxError::UnknownSigner.code()];
    if code == (TxError::InsufficientBalance { have: 0, need: 0 }).code() || no_account.contains(&code) {
        let have = c.account(&account).ok().flatten().map_or(0, |a| a.balance);
        return StoreCmdError::NoFunds { account: account.to_text(), have, need: store_fee(params) };
    }
    if code == TxError::StoreExists.code() {
        return StoreCmdError::AlreadyRegistered(node);
    }
    if code == TxError::UnknownStore.code() {
        return StoreCmdError::NotRegistered(node);
    }
    StoreCmdError::Refused { code, message }
}

/// Registers (or, with `register` false, deregisters) the store node `node` for the account
/// of `home`; returns the node key and the height it was final at.
pub(crate) fn apply(
    c: &mut LedgerClient,
    params: &Params,
    account: AccountId,
    key: &SigningKey,
    node: &SigningKey,
    register: bool,
) -> anyhow::Result<([u8; 32], u64)> {
    let node_key = node.verifying_key().to_bytes();
    let body = if register {
        register_body(&c.chain(), &account, node)
    } else {
        TxBody::DeregisterStore { node_key }
    };
    match crate::tx_submit::submit(c, account, key, &body)? {
        Submitted::Final(_, height) => Ok((node_key, height)),
        Submitted::Failed { code, message, .. } | Submitted::Refused { code, message } => {
            Err(typed(c, params, account, &node_key, (code, message)).into())
        }
    }
}

/// Runs `cairn store …`.
pub(crate) fn run(home: &Path, args: StoreArgs) -> anyhow::Result<()> {
    let g = genesis_path(home, args.genesis.as_ref())?;
    let genesis =
        Genesis::load(&g).map_err(|e| anyhow::anyhow!("reading the genesis {}: {e}", g.display()))?;
    let mut c = LedgerClient::new(&genesis)?;
    let (store_home, register) = match args.command {
        StoreCommand::List => {
            let set = c.stores()?;
            println!("{} registered store node(s) (proven)", set.entries.len());
            for e in &set.entries {
                println!("{}  account {}  height {}", hex::encode(e.node_key), e.account.to_text(), e.height);
            }
            return Ok(());
        }
        StoreCommand::Register { store_home } => (store_home, true),
        StoreCommand::Deregister { store_home } => (store_home, false),
    };
    // the store node's key first: a wrong directory costs no passphrase prompt
    let node = store_key(&store_home)?;
    let id = crate::home::load(home)?;
    let Some(key) = id.account_key.clone() else {
        anyhow::bail!(
            "this device holds no account key: run `cairn store` from the home of the device that \
             holds it (the one the account was created on)"
        );
    };
    let (node_key, height) = apply(&mut c, &genesis.params, id.account(), &key, &node, register)?;
    let what = if register { "registered" } else { "deregistered" };
    println!("store node {} {what} at height {height}", hex::encode(node_key));
    println!("account  {}", id.account().to_text());
    if register {
        println!("fee      {} (burned)", store_fee(&genesis.params));
    }
    Ok(())
}

/// Most time `cairn dev` waits for its account to be funded before registering its stores.
const DEV_FUNDING_WAIT: Duration = Duration::from_secs(180);

/// `cairn dev`: on a thread of its own (the node runs meanwhile), waits until the account the
/// dev node registers is funded by the faucet, then registers the dev store nodes in
/// `store_homes` not yet registered. Gives up, saying so, after [`DEV_FUNDING_WAIT`]; without
/// registered stores placement keeps its unregistered (local) rule, so nothing breaks.
pub(crate) fn register_dev_stores(
    genesis: PathBuf,
    account: AccountId,
    key: SigningKey,
    store_homes: Vec<PathBuf>,
) {
    let run = move || -> anyhow::Result<usize> {
        let g = Genesis::load(&genesis).map_err(|e| anyhow::anyhow!("reading {}: {e}", genesis.display()))?;
        let need = store_fee(&g.params).saturating_mul(store_homes.len() as u64 + 1);
        let mut c = LedgerClient::new(&g)?;
        let start = Instant::now();
        loop {
            let balance = c.account(&account).ok().flatten().map(|a| a.balance);
            if balance.is_some_and(|b| b >= need) {
                break;
            }
            if start.elapsed() > DEV_FUNDING_WAIT {
                anyhow::bail!("the account has {balance:?} after {DEV_FUNDING_WAIT:?}, needs {need}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut done = 0;
        for dir in &store_homes {
            let node = store_key(dir)?;
            if c.stores()?.get(&node.verifying_key().to_bytes()).is_some() {
                continue;
            }
            apply(&mut c, &g.params, account, &key, &node, true)?;
            done += 1;
        }
        Ok(done)
    };
    std::thread::spawn(move || match run() {
        Ok(n) => eprintln!("registered {n} dev store node(s) on the ledger"),
        Err(e) => eprintln!(
            "dev store nodes not registered ({e:#}): placement uses the unregistered rule; \
             `cairn store register --store-home DIR` registers one"
        ),
    });
}
