//! `cairn up` and `cairn dev`: running a node (user, store node, validator), and a whole
//! one-machine network.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use cairn_ledger::genesis::{Genesis, write_key};
use cairn_ledger::process::{self, ProcessOptions};
use cairn_net::node::{NodeConfig, SealKey};
use cairn_node::client::{load_or_create_token, remove_run_file, write_run_file};
use cairn_node::model::RunFile;
use cairn_node::service::{Service, ServiceConfig};
use clap::Args;
use serde::Deserialize;
use tracing::{info, warn};

/// Store nodes `cairn dev` runs: the replicas a light client waits for (`NodeConfig::replicas`).
const DEV_STORES: usize = 3;

/// `cairn up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// TOML file with any of: bootstrap, listen, api, genesis, store, validator, validator_key,
    /// relay, via_relay, mdns, ws_cert, ws_key, ledger_via_peers, ledger_relay, light, stem,
    /// light_service, near_peers (flags > CAIRN_* environment > this file > defaults).
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Peer to join through (multiaddr with /p2p/…, by IP or DNS name:
    /// /dns4/example.org/tcp/443/ws/p2p/…); repeat for several.
    #[arg(long, env = "CAIRN_BOOTSTRAP", value_delimiter = ',', value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Also run a ledger validator (needs --validator-key and a genesis naming it).
    #[arg(long, env = "CAIRN_VALIDATOR")]
    validator: bool,
    /// Serve as a store node (keep others' encrypted mail while they are offline).
    #[arg(long, env = "CAIRN_STORE")]
    store: bool,
    /// P2P listen address (multiaddr); repeat for several. Default: 127.0.0.1, TCP and QUIC.
    /// WebSocket: /ip4/0.0.0.0/tcp/443/ws (alongside TCP: give both).
    #[arg(long, env = "CAIRN_LISTEN", value_delimiter = ',', value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Serve as a circuit relay for nodes that cannot be reached directly (bounded: 128
    /// reservations, 64 circuits, 64 MiB and 1 h per circuit).
    #[arg(long, env = "CAIRN_RELAY")]
    relay: bool,
    /// Be reachable through this relay (multiaddr with /p2p/RELAY): for a node behind NAT or
    /// a firewall that can only dial out. It is also joined through.
    #[arg(long, env = "CAIRN_VIA_RELAY", value_name = "MULTIADDR")]
    via_relay: Option<String>,
    /// Discover peers on the local network with mDNS (announces this node's addresses to the
    /// LAN; off by default).
    #[arg(long, env = "CAIRN_MDNS")]
    mdns: bool,
    /// TLS certificate chain (PEM) for WebSocket: `--listen /ip4/0.0.0.0/tcp/443/tls/ws`
    /// serves WSS (with --ws-key).
    #[arg(long, env = "CAIRN_WS_CERT", value_name = "FILE", requires = "ws_key")]
    ws_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CAIRN_WS_KEY", value_name = "FILE", requires = "ws_cert")]
    ws_key: Option<PathBuf>,
    /// Local API address (loopback only). Default 127.0.0.1:0 (any free port).
    #[arg(long, env = "CAIRN_API", value_name = "ADDR")]
    api: Option<String>,
    /// Ledger genesis file. Default: DIR/genesis.txt.
    #[arg(long, env = "CAIRN_GENESIS", value_name = "FILE")]
    genesis: Option<PathBuf>,
    /// Validator key file (with --validator). Default: DIR/validator.key.
    #[arg(long, env = "CAIRN_VALIDATOR_KEY", value_name = "FILE")]
    validator_key: Option<PathBuf>,
    /// Whose invitations join without asking: `ask` (this account, accounts you share a
    /// conversation with or accepted; the rest wait in `cairn requests`) or `everyone` (test
    /// networks).
    #[arg(long, env = "CAIRN_INVITATIONS", value_enum, default_value_t = InvitationsArg::Ask)]
    invitations: InvitationsArg,
    /// Reach the ledger's validators through connected peers only, never dialling their
    /// addresses (the channel stays end-to-end encrypted and every answer proven). Without it,
    /// peers are the fallback when no validator can be dialled.
    #[arg(long, env = "CAIRN_LEDGER_VIA_PEERS")]
    ledger_via_peers: bool,
    /// Do not relay peers' ledger connections to the validators of this node's genesis (on by
    /// default; bounded: 64 streams, 8 per peer, 64 MiB and 10 min each).
    #[arg(long, env = "CAIRN_NO_LEDGER_RELAY")]
    no_ledger_relay: bool,
    /// Send own mail straight to gossip and the store nodes instead of through one peer first
    /// (the stem, on by default, keeps a directly connected peer from telling which node
    /// wrote a message; costs about one round trip per message), and relay no one's stem.
    #[arg(long, env = "CAIRN_NO_STEM")]
    no_stem: bool,
    /// Keep connections as discovered instead of preferring near peers (by default a full
    /// node closes its slowest dialed connections, by ping round-trip time, beyond its target
    /// of 16, keeping 6 chosen by hash, so gossip runs over short links).
    #[arg(long, env = "CAIRN_NO_NEAR_PEERS")]
    no_near_peers: bool,
    /// Serve no light clients (full nodes serve them by default: at most 256 clients, 2 per
    /// peer, 16 per IP, each fed only the buckets it subscribed to).
    #[arg(long, env = "CAIRN_NO_LIGHT_SERVICE")]
    no_light_service: bool,
    /// Run as a light client (a phone, a small device): relay and serve nothing, receive this
    /// account's mail over one stream from each of two service nodes among the connected full
    /// nodes (cross-checked, so one that withholds mail is noticed), push own mail to its store
    /// nodes. Not with --store or --relay.
    #[arg(long, env = "CAIRN_LIGHT", conflicts_with_all = ["store", "relay"])]
    light: bool,
}

/// `--invitations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InvitationsArg {
    /// Strangers' invitations wait for consent.
    Ask,
    /// Every invitation joins at once.
    Everyone,
}

impl From<InvitationsArg> for cairn_node::engine::Invitations {
    fn from(a: InvitationsArg) -> Self {
        match a {
            InvitationsArg::Ask => Self::Ask,
            InvitationsArg::Everyone => Self::Everyone,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bootstrap: Option<Vec<String>>,
    listen: Option<Vec<String>>,
    api: Option<String>,
    genesis: Option<PathBuf>,
    store: Option<bool>,
    validator: Option<bool>,
    validator_key: Option<PathBuf>,
    relay: Option<bool>,
    via_relay: Option<String>,
    mdns: Option<bool>,
    ws_cert: Option<PathBuf>,
    ws_key: Option<PathBuf>,
    ledger_via_peers: Option<bool>,
    ledger_relay: Option<bool>,
    light: Option<bool>,
    stem: Option<bool>,
    light_service: Option<bool>,
    near_peers: Option<bool>,
}

/// The merged configuration of `up`.
#[derive(Debug, Clone)]
pub(crate) struct UpConfig {
    pub(crate) bootstrap: Vec<String>,
    pub(crate) listen: Vec<String>,
    pub(crate) api: String,
    pub(crate) genesis: PathBuf,
    pub(crate) store: bool,
    pub(crate) validator: bool,
    pub(crate) validator_key: PathBuf,
    pub(crate) invitations: cairn_node::engine::Invitations,
    pub(crate) relay: bool,
    pub(crate) via_relay: Option<String>,
    pub(crate) mdns: bool,
    pub(crate) ws_cert: Option<PathBuf>,
    pub(crate) ws_key: Option<PathBuf>,
    pub(crate) ledger_via_peers: bool,
    pub(crate) ledger_relay: bool,
    pub(crate) light: bool,
    pub(crate) stem: bool,
    pub(crate) light_service: bool,
    pub(crate) near_peers: bool,
}

impl UpArgs {
    fn merge(self, home: &Path) -> Result<UpConfig> {
        let file = match &self.config {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config {}: fix the TOML (keys: bootstrap, listen, api, genesis, store, validator, validator_key, relay, via_relay, mdns, ws_cert, ws_key, ledger_via_peers, ledger_relay, light, stem, light_service, near_peers)", p.display()))?
            }
            None => FileConfig::default(),
        };
        let pick = |flag: Vec<String>, file: Option<Vec<String>>| {
            if flag.is_empty() { file.unwrap_or_default() } else { flag }
        };
        Ok(UpConfig {
            bootstrap: pick(self.bootstrap, file.bootstrap),
            listen: pick(self.listen, file.listen),
            api: self.api.or(file.api).unwrap_or_else(|| "127.0.0.1:0".into()),
            genesis: self.genesis.or(file.genesis).unwrap_or_else(|| home.join("genesis.txt")),
            store: self.store || file.store.unwrap_or(false),
            validator: self.validator || file.validator.unwrap_or(false),
            validator_key: self
                .validator_key
                .or(file.validator_key)
                .unwrap_or_else(|| home.join("validator.key")),
            invitations: self.invitations.into(),
            relay: self.relay || file.relay.unwrap_or(false),
            via_relay: self.via_relay.or(file.via_relay),
            mdns: self.mdns || file.mdns.unwrap_or(false),
            ws_cert: self.ws_cert.or(file.ws_cert),
            ws_key: self.ws_key.or(file.ws_key),
            ledger_via_peers: self.ledger_via_peers || file.ledger_via_peers.unwrap_or(false),
            ledger_relay: !self.no_ledger_relay && file.ledger_relay.unwrap_or(true),
            light: self.light || file.light.unwrap_or(false),
            stem: !self.no_stem && file.stem.unwrap_or(true),
            light_service: !self.no_light_service && file.light_service.unwrap_or(true),
            near_peers: !self.no_near_peers && file.near_peers.unwrap_or(true),
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// `cairn up`.
pub(crate) fn up(home: &Path, args: UpArgs) -> Result<()> {
    let mut cfg = args.merge(home)?;
    let mut has_identity = home.join(crate::home::KEYSTORE).exists();
    let mut identity = None;
    if !has_identity && !cfg.store && !cfg.validator {
        // No account yet: the web client creates one (crate::web_setup), then the node runs.
        let Some(created) = runtime()?.block_on(crate::web_setup::run(home, &mut cfg))? else {
            return Ok(());
        };
        identity = Some(created);
        has_identity = true;
    }
    if identity.is_none() && has_identity {
        identity = Some(crate::home::load(home)?);
    }
    if !cfg.genesis.exists() && (has_identity || cfg.validator) {
        bail!(
            "no ledger genesis at {}: pass --genesis FILE (e.g. from `cairn ledger genesis`), or use `cairn dev` \
             for a one-machine network",
            cfg.genesis.display()
        );
    }
    if cfg.validator {
        let opts = ProcessOptions {
            status_every: None,
            ..ProcessOptions::new(&cfg.genesis, &cfg.validator_key, &home.join("validator"))
        };
        std::fs::create_dir_all(home.join("validator"))?;
        std::thread::Builder::new().name("validator".into()).spawn(move || {
            if let Err(e) = process::run(opts, |_| {}) {
                eprintln!("error: validator stopped: {e}");
                std::process::exit(1);
            }
        })?;
    }
    runtime()?.block_on(run_node(home, &cfg, identity, Vec::new()))
}

fn parse_addrs(list: &[String], what: &str) -> Result<Vec<libp2p_addr::Multiaddr>> {
    list.iter()
        .map(|s| {
            s.parse().with_context(|| {
                format!("--{what} {s}: not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3…)")
            })
        })
        .collect()
}

mod libp2p_addr {
    pub(crate) use cairn_net::Multiaddr;
}

pub(crate) async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// The addresses others reach this node at: its listen addresses and, with --via-relay, its
/// address through the relay (live once the relay accepted the reservation).
fn p2p_addrs(listen: &[libp2p_addr::Multiaddr], cfg: &UpConfig, me: &cairn_net::PeerId) -> Vec<String> {
    let mut out: Vec<String> = listen.iter().map(ToString::to_string).collect();
    if let Some(r) = &cfg.via_relay {
        out.push(format!("{r}/p2p-circuit/p2p/{me}"));
    }
    out
}

/// The P2P configuration of `cfg` for the node of `home` (`extra_bootstrap` added).
fn net_config(
    home: &Path,
    cfg: &UpConfig,
    identity: Option<&cairn_crypto::Identity>,
    extra_bootstrap: Vec<libp2p_addr::Multiaddr>,
) -> Result<NodeConfig> {
    let mut net = NodeConfig::new(home.join("net"));
    if !cfg.listen.is_empty() {
        net.listen = parse_addrs(&cfg.listen, "listen")?;
    }
    net.bootstrap = parse_addrs(&cfg.bootstrap, "bootstrap")?;
    net.bootstrap.extend(extra_bootstrap);
    net.serve_store = cfg.store;
    net.relay_server = cfg.relay;
    net.mdns = cfg.mdns;
    if !cfg.stem {
        net.stem = None;
    }
    if !cfg.near_peers {
        net.nearness = None;
    }
    if !cfg.light_service {
        net.light_serve = None;
    }
    if cfg.light {
        if cfg.store || cfg.relay {
            bail!("--light serves nothing: drop --store and --relay (set here or in the config file)");
        }
        net.light = Some(cairn_net::light::LightConfig::default());
    }
    // Peers' ledger connections are relayed to the validators of this node's own genesis
    // (a store-only node without a genesis file relays nothing).
    if cfg.ledger_relay
        && let Ok(g) = Genesis::load(&cfg.genesis)
    {
        net.ledger_relay = Some(cairn_node::shell::ledger_relays::relay_config(&g));
    }
    match (&cfg.ws_cert, &cfg.ws_key) {
        (Some(cert), Some(key)) => {
            let tls = cairn_net::node::WsTls::from_pem_files(cert, key).map_err(|e| {
                anyhow::anyhow!("--ws-cert/--ws-key: {e}; give a PEM certificate chain and its key")
            })?;
            net.ws_tls = Some(tls);
        }
        (None, None) => {}
        _ => bail!("--ws-cert and --ws-key go together: give both, or neither"),
    }
    if let Some(r) = &cfg.via_relay {
        let relay = parse_addrs(std::slice::from_ref(r), "via-relay")?.remove(0);
        if !relay.iter().any(|p| matches!(p, cairn_net::Protocol::P2p(_))) {
            bail!("--via-relay {r}: the relay's address must end with /p2p/<its peer id>");
        }
        net.bootstrap.push(relay.clone());
        net.listen_via_relay = Some(relay);
    }
    // The libp2p identity survives restarts: `DIR/net/node.key` (0600), so peers that saved
    // this node's address find it again. A user node seals it under a key derived from its
    // device key; a store-only node has no device key, so its file is plain (its peer id is
    // public anyway; the file mode only stops other local users from impersonating it).
    net.identity_file = Some(home.join("net").join("node.key"));
    net.identity_seal = identity.map(|i| SealKey::from_device_secret(&i.device_key.to_bytes()));
    Ok(net)
}

/// Runs the node of `home` until a signal or an API shutdown; `extra_bootstrap` are added.
async fn run_node(
    home: &Path,
    cfg: &UpConfig,
    identity: Option<cairn_crypto::Identity>,
    extra_bootstrap: Vec<libp2p_addr::Multiaddr>,
) -> Result<()> {
    let net = net_config(home, cfg, identity.as_ref(), extra_bootstrap)?;
    let mut roles = Vec::new();
    if identity.is_some() {
        roles.push("user".to_owned());
    }
    if cfg.store {
        roles.push("store".to_owned());
    }
    if cfg.validator {
        roles.push("validator".to_owned());
    }
    if cfg.relay {
        roles.push("relay".to_owned());
    }
    let Some(identity) = identity else {
        // Store node (and/or validator) without a user identity: no local API.
        let node = cairn_net::node::start(net).await?;
        let run = RunFile {
            api: String::new(),
            p2p: p2p_addrs(&node.listen_addrs, cfg, &node.peer_id),
            peer_id: node.peer_id.to_string(),
            pid: std::process::id(),
        };
        write_run_file(home, &run)?;
        eprintln!("{} node running: {}", roles.join("+"), run.p2p.join(" "));
        wait_for_signal().await;
        node.shutdown().await;
        remove_run_file(home)?;
        return Ok(());
    };
    let genesis = Genesis::load(&cfg.genesis)?;
    let mut scfg = ServiceConfig::new(home.to_owned(), genesis);
    scfg.net = net;
    scfg.roles = roles;
    scfg.invitations = cfg.invitations;
    scfg.ledger_via_peers = cfg.ledger_via_peers;
    scfg.handle =
        std::fs::read_to_string(home.join(crate::home::HANDLE_FILE)).ok().map(|h| h.trim().to_owned());
    let service = Service::start(scfg, identity).await?;
    let api_addr: std::net::SocketAddr =
        cfg.api.parse().with_context(|| format!("--api {}: expected IP:PORT on 127.0.0.1", cfg.api))?;
    if !api_addr.ip().is_loopback() {
        bail!("--api {api_addr}: the local API only listens on loopback (127.0.0.1)");
    }
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("binding the API on {api_addr}"))?;
    let api_url = format!("http://{}", listener.local_addr()?);
    let token = load_or_create_token(home)?;
    let run = RunFile {
        api: api_url.clone(),
        p2p: p2p_addrs(&service.net().listen_addrs, cfg, &service.net().peer_id),
        peer_id: service.net().peer_id.to_string(),
        pid: std::process::id(),
    };
    let backend = Arc::new(service.clone());
    let stop_service = service.clone();
    // The web client may log in with this keystore's passphrase (checked by opening it).
    let keystore = home.join(crate::home::KEYSTORE);
    let web = cairn_node::web::WebOptions {
        passphrase: Some(Arc::new(move |p: &[u8]| cairn_crypto::Identity::open_file(&keystore, p).is_ok())),
        session_file: Some(home.join("web-sessions")),
    };
    let server = tokio::spawn(cairn_node::api::serve_with(listener, backend, token, web, async move {
        tokio::select! {
            _ = stop_service.stopped() => {}
            _ = wait_for_signal() => {}
        }
    }));
    write_run_file(home, &run)?;
    eprintln!("node running: api {api_url}, p2p {}", run.p2p.join(" "));
    eprintln!(
        "web client: {api_url}/ (log in with your passphrase, or `cairn --home {} web` for a one-time link)",
        home.display()
    );
    info!("node running");
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("API server: {e}"),
        Err(e) => warn!("API server task: {e}"),
    }
    service.close().await;
    remove_run_file(home)?;
    eprintln!("node stopped");
    Ok(())
}

/// `cairn dev`.
#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Validators of the local ledger (each its own process; 4 tolerate one faulty).
    #[arg(long, default_value_t = 1)]
    validators: usize,
}

/// Child processes killed when dropped.
pub(crate) struct Children(pub(crate) Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A base port with `count` free consecutive ports on 127.0.0.1.
pub(crate) fn free_ports(count: u16) -> Result<u16> {
    let seed = std::process::id() as u64 ^ crate::home::now_ms();
    for attempt in 0..200u64 {
        // Below the kernel's ephemeral range (32768+), where outgoing sockets cannot take them.
        let base = 20_000 + ((seed.wrapping_mul(7919).wrapping_add(attempt * 104_729)) % 12_000) as u16;
        if (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no {count} consecutive free ports on 127.0.0.1")
}

/// Writes a local genesis for `n` validators into `dir` (unless one is there); returns its path.
pub(crate) fn local_chain(dir: &Path, n: usize, name: &str) -> Result<PathBuf> {
    let gpath = dir.join("genesis.txt");
    if gpath.exists() {
        return Ok(gpath);
    }
    std::fs::create_dir_all(dir)?;
    let base = free_ports(2 * n as u16)?;
    let (genesis, keys) = Genesis::local(name, n, base, Vec::new())?;
    for (i, k) in keys.iter().enumerate() {
        write_key(&dir.join(format!("validator-{i}.key")), k)?;
    }
    std::fs::write(&gpath, genesis.to_text())?;
    Ok(gpath)
}

/// Starts validator `i` of the chain in `dir` as a child process, logging to `logs`.
pub(crate) fn spawn_validator(dir: &Path, i: usize, logs: &Path) -> Result<Child> {
    std::fs::create_dir_all(logs)?;
    let log = std::fs::File::create(logs.join(format!("validator-{i}.log")))?;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args(["ledger", "validator", "--genesis"])
        .arg(dir.join("genesis.txt"))
        .arg("--key")
        .arg(dir.join(format!("validator-{i}.key")))
        .arg("--data")
        .arg(dir.join(format!("validator-{i}")))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting a validator process")
}

/// `cairn dev`: N validators (child processes), two store nodes and this user's node.
pub(crate) fn dev(home: &Path, args: DevArgs) -> Result<()> {
    if args.validators == 0 {
        bail!("--validators must be at least 1");
    }
    if !home.join(crate::home::KEYSTORE).exists() {
        eprintln!("no identity in {} yet: creating one", home.display());
        crate::home::init(home)?;
    }
    let identity = crate::home::load(home)?;
    let dev_dir = home.join("dev");
    let chain = dev_dir.join("chain");
    let gpath = local_chain(&chain, args.validators, "dev")?;
    let logs = dev_dir.join("logs");
    let mut children = Children(Vec::new());
    for i in 0..args.validators {
        children.0.push((format!("validator {i}"), spawn_validator(&chain, i, &logs)?));
    }
    eprintln!("started {} validator(s); logs in {}", args.validators, logs.display());
    let cfg = UpConfig {
        bootstrap: Vec::new(),
        listen: Vec::new(),
        api: "127.0.0.1:0".into(),
        genesis: gpath,
        store: false,
        validator: false,
        validator_key: PathBuf::new(),
        invitations: cairn_node::engine::Invitations::Ask,
        relay: false,
        via_relay: None,
        mdns: false,
        ws_cert: None,
        ws_key: None,
        ledger_via_peers: false,
        ledger_relay: true,
        light: false,
        stem: true,
        light_service: true,
        near_peers: true,
    };
    let rt = runtime()?;
    rt.block_on(async {
        // DEV_STORES store nodes: a send counts as stored once `acks_required` (2) distinct
        // store nodes hold it, and a light client's once all `replicas` (3) do, so with fewer
        // the dev network's sends would never be "stored" for one of them. The same peer ids
        // every run (plain 0600 key files: a store node's id is public).
        let homes: Vec<PathBuf> = (1..=DEV_STORES)
            .map(|i| dev_dir.join(if i == 1 { "store".to_owned() } else { format!("store-{i}") }))
            .collect();
        let mut nodes: Vec<cairn_net::node::NodeHandle> = Vec::new();
        for h in &homes {
            let mut c = NodeConfig::new(h.clone());
            c.serve_store = true;
            c.identity_file = Some(h.join("node.key"));
            if let Some(first) = nodes.first() {
                c.bootstrap = first.listen_addrs.clone();
            }
            nodes.push(cairn_net::node::start(c).await?);
        }
        let addrs: Vec<_> = nodes.iter().flat_map(|n| n.listen_addrs.iter().cloned()).collect();
        eprintln!("store nodes: {}", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "));
        let store = &nodes[0];
        if let Some(addr) = store.listen_addrs.iter().find(|a| a.to_string().contains("/tcp/")) {
            let addr = addr.to_string();
            let full = if addr.contains("/p2p/") { addr } else { format!("{addr}/p2p/{}", store.peer_id) };
            println!("another user joins this network with:");
            println!(
                "  cairn --home OTHER_DIR init && cairn --home OTHER_DIR up --genesis {} --bootstrap {full}",
                cfg.genesis.display()
            );
        }
        let stores = addrs;
        // Registers the store nodes once the faucet funded the account (its own thread).
        if let Some(key) = identity.account_key.clone() {
            crate::store_cmd::register_dev_stores(cfg.genesis.clone(), identity.account(), key, homes);
        }
        let r = run_node(home, &cfg, Some(identity), stores).await;
        for n in &nodes {
            n.shutdown().await;
        }
        r
    })?;
    drop(children);
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        up: UpArgs,
    }

    fn config(args: &[&str], file: Option<&str>) -> UpConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut argv = vec!["cairn"];
        let path = dir.path().join("up.toml");
        let path_text = path.display().to_string();
        if let Some(text) = file {
            std::fs::write(&path, text).expect("config file");
            argv.extend(["--config", &path_text]);
        }
        argv.extend(args);
        Cli::try_parse_from(argv).expect("arguments").up.merge(dir.path()).expect("merged")
    }

    #[test]
    fn light_service_stem_and_near_peers_are_on_unless_a_flag_or_the_file_turns_them_off() {
        let home = tempfile::tempdir().expect("tempdir");
        let on = config(&[], None);
        assert!(on.light_service && on.stem && on.near_peers);
        let net = net_config(home.path(), &on, None, Vec::new()).expect("net config");
        assert!(net.light_serve.is_some() && net.stem.is_some() && net.nearness.is_some());
        for off in [
            config(&["--no-light-service", "--no-stem", "--no-near-peers"], None),
            config(&[], Some("light_service = false\nstem = false\nnear_peers = false\n")),
        ] {
            assert!(!off.light_service && !off.stem && !off.near_peers);
            let net = net_config(home.path(), &off, None, Vec::new()).expect("net config");
            assert!(net.light_serve.is_none() && net.stem.is_none() && net.nearness.is_none());
        }
        // --light makes a light client, and refuses --store
        let light = config(&["--light"], None);
        assert!(net_config(home.path(), &light, None, Vec::new()).expect("net config").light.is_some());
        let both = UpConfig { store: true, ..light };
        assert!(net_config(home.path(), &both, None, Vec::new()).is_err());
    }
}
