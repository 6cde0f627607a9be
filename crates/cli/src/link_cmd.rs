//! Linking a device on another machine: `cairn device link` (existing device, through its
//! running node) and `cairn init --link CODE` (new device). The protocol is in
//! `cairn_node::link`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_crypto::KdfParams;
use cairn_ledger::genesis::Genesis;
use cairn_net::node::NodeConfig;
use cairn_node::client::{Client, read_run_file};
use cairn_node::link::{CODE_TTL, LinkCode};
use cairn_node::link_join::{JoinOptions, join};
use clap::Args;

/// `cairn device link`.
#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// Print the code only and return at once (check with `cairn device list` later).
    #[arg(long)]
    no_wait: bool,
    /// Also send the new device the last N messages of each active conversation, encrypted
    /// under the link's key (it cannot read earlier messages itself: MLS forward secrecy).
    #[arg(long, default_value_t = 0, value_name = "N")]
    history: u32,
}

/// Longest `cairn device link` polls its node: the code's life and the ledger's time.
const LINK_POLL_MAX: Duration = Duration::from_secs(CODE_TTL.as_secs() + 60);

/// `cairn device link`: the code on stdout (first line), then waits for the outcome.
pub(crate) fn link(home: &Path, args: LinkArgs) -> Result<()> {
    let c = Client::for_home(home)?;
    let start = c.link_device(args.history)?;
    println!("{}", start.code);
    let bootstrap = read_run_file(home)
        .ok()
        .flatten()
        .and_then(|r| r.p2p.iter().find(|a| a.contains("/tcp/")).cloned())
        .map(|a| format!(" --bootstrap {a}"))
        .unwrap_or_default();
    eprintln!(
        "one-time code (usable once, for {} s). On the new machine run:\n  cairn --home NEW_DIR init --link {} --genesis GENESIS_FILE{bootstrap}",
        start.expires_in_secs, start.code
    );
    if args.no_wait {
        return Ok(());
    }
    eprintln!("waiting for the new device…");
    let t0 = Instant::now();
    while t0.elapsed() < LINK_POLL_MAX {
        std::thread::sleep(Duration::from_millis(300));
        let st = c.link_status(&start.link)?;
        match st.state.as_str() {
            "linked" => {
                let device = st.device.unwrap_or_default();
                println!("linked {device}");
                eprintln!(
                    "device {device} is certified on the ledger; it joins this account's conversations once it runs (`cairn up`)"
                );
                return Ok(());
            }
            "failed" | "expired" => {
                bail!("{}", st.error.unwrap_or_else(|| format!("link {}", st.state)));
            }
            _ => {}
        }
    }
    bail!("no outcome after {} s: see `cairn device list`", LINK_POLL_MAX.as_secs())
}

/// What `cairn init --link` needs.
#[derive(Debug)]
pub(crate) struct InitLink {
    pub(crate) code: String,
    pub(crate) genesis: Option<PathBuf>,
    pub(crate) bootstrap: Vec<String>,
    pub(crate) wait_secs: u64,
}

/// `cairn init --link CODE`: a keystore holding only this device's key, certified by the
/// account through the existing device.
pub(crate) fn init_link(home: &Path, args: InitLink) -> Result<()> {
    let ks = home.join(crate::home::KEYSTORE);
    if ks.exists() {
        bail!("{} already holds an identity; nothing was changed (use another --home)", home.display());
    }
    let code = LinkCode::parse(&args.code)?;
    let gpath = args.genesis.clone().unwrap_or_else(|| home.join("genesis.txt"));
    let genesis = Genesis::load(&gpath).with_context(|| {
        format!("reading the ledger genesis {}: pass --genesis FILE (the network's genesis)", gpath.display())
    })?;
    let mut net = NodeConfig::new(home.join("link-tmp"));
    net.bootstrap = args
        .bootstrap
        .iter()
        .map(|s| s.parse().with_context(|| format!("--bootstrap {s}: not a multiaddr (…/p2p/12D3…)")))
        .collect::<Result<_>>()?;
    if net.bootstrap.is_empty() {
        bail!(
            "--bootstrap MULTIADDR is needed: a store node of the network (as printed by `cairn device link`)"
        );
    }
    net.resync_every_ms = 1_000;
    let pass = crate::home::passphrase(true)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("cannot create {}", home.display()))?;
    let tmp = home.join("link-tmp");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let opts =
        JoinOptions { net, chain: genesis.chain_id(), code, wait: Duration::from_secs(args.wait_secs) };
    let joined = rt.block_on(join(opts));
    drop(rt);
    let _ = fs::remove_dir_all(&tmp);
    let joined = joined?;
    joined.identity.create_file(&ks, &pass, KdfParams::default())?;
    let home_genesis = home.join("genesis.txt");
    if !home_genesis.exists() {
        fs::copy(&gpath, &home_genesis)
            .with_context(|| format!("copying the genesis to {}", home_genesis.display()))?;
    }
    let id = &joined.identity;
    if !joined.history.is_empty() {
        let (db, _) = cairn_node::archive::open_home(home, &id.device_key, cairn_proto::Limits::default())?;
        let kept = cairn_node::link_history::import(&db, &joined.history)?;
        println!(
            "history:     {kept} earlier messages kept (shown once the device has joined their conversations)"
        );
    }
    println!("linked device {} to account {}", id.device().to_text(), id.account().to_text());
    if let Some(h) = &joined.handle {
        println!("handle:      @{h}");
    }
    println!("fingerprint: {}", id.account().fingerprint());
    eprintln!(
        "keystore written to {} (this device's key only). Start the device with:\n  cairn --home {} up --bootstrap {}",
        ks.display(),
        home.display(),
        args.bootstrap.join(",")
    );
    Ok(())
}
