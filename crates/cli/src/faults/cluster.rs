//! The cluster of one campaign: ledger validators, store nodes and users, each a real `cairn`
//! process in its own namespace of a [`Lab`], each behind a delay [`proxy`](super::proxy), all
//! users in one group. [`Cluster::run`] applies one [`Scenario`]'s faults while the users send,
//! heals them, waits until every member holds every acknowledged message, and checks.
//!
//! Ports inside every namespace: node p2p 4001 and validator rpc 5001 (inbound traffic on the
//! veth is redirected to the delay proxy at port + 100), validator p2p 5000, node API
//! 127.0.0.1:7000 (reached from outside through the proxy's Unix socket and a relay in this
//! process). Validator-to-validator traffic is delayed on the dialing side: commonware's p2p
//! accepts a peer only from the IP address the genesis gives it, so an inbound proxy (whose
//! connections come from its own address) cannot carry it; instead each validator's
//! connections to port 5000 are redirected (`nat OUTPUT`) to the egress proxy in its own
//! namespace at 127.0.0.1:5100, which dials the original destination from the validator's own
//! address, delaying both directions. [`Cluster::start`] checks that every pair of validators
//! is connected through these proxies. All traffic meets the loss and partitions (iptables).
//!
//! Clock skew: a process restarted with a skew runs under libfaketime (`LD_PRELOAD`,
//! `FAKETIME=±Ns`, monotonic clocks left true), which shifts every wall-clock read of the
//! process (node, net, MLS and ledger code alike) with no test knob in the product.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_node::client::{Client, read_run_file};
use cairn_node::model::{DeliveryState, TailQuery};

use super::check::{LedgerObs, MemberObs, check};
use super::netns::Lab;
use super::scenario::{Scenario, Topology};
use super::stats::Row;

const PASS: &str = "fault campaign passphrase";
const NODE_P2P: u16 = 4001;
const VALIDATOR_P2P: u16 = 5000;
const VALIDATOR_RPC: u16 = 5001;
const PROXY_OFFSET: u16 = 100;
const API: &str = "127.0.0.1:7000";
/// The libfaketime builds Debian's `libfaketime` installs (the multi-threaded one first).
const FAKETIME_LIBS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
];
/// How long the members get, after the heal, to hold every acknowledged message.
pub(crate) const HEAL_MAX: Duration = Duration::from_secs(120);
/// Tries at reading every validator's block at one height after a heal.
const LEDGER_TRIES: usize = 5;
/// How long the validators get, once the users have formed their group, to show a connection
/// through an egress proxy between every pair.
const LINKS_MAX: Duration = Duration::from_secs(60);
/// How long a send may wait for store nodes to acknowledge it.
const SEND_WAIT_MS: u64 = 4_000;

/// What a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Validator(usize),
    Store,
    User,
}

/// One process of the cluster.
#[derive(Debug)]
struct Proc {
    name: String,
    role: Role,
    child: Option<Child>,
    skew_ms: i64,
}

/// The running cluster.
pub(crate) struct Cluster {
    topo: Topology,
    exe: PathBuf,
    dir: Option<tempfile::TempDir>,
    genesis: PathBuf,
    procs: Vec<Proc>,
    proxies: Vec<Child>,
    stores: Vec<String>,
    clients: Vec<Client>,
    conv: String,
    acked: Vec<String>,
    faketime: Option<&'static str>,
    /// Whether validator-to-validator traffic goes through the egress delay proxies.
    validator_delay: bool,
    /// Kept last: its drop deletes the namespaces once every process is gone.
    lab: Lab,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().filter_map(|p| p.child.as_mut()).chain(self.proxies.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Creates the namespaces and starts everything: the ledger, store nodes one after the
    /// other, then users, who register their handles and form one group.
    /// `validator_delay`: whether validator-to-validator traffic goes through the egress delay
    /// proxies (off only to compare a campaign with and without it).
    pub(crate) fn start(
        topo: Topology,
        exe: &Path,
        validator_delay: bool,
        log: &mut dyn FnMut(&str),
    ) -> Result<Cluster> {
        let lab = Lab::new(topo.total())?;
        let dir = tempfile::Builder::new().prefix("cairn-faults-").tempdir()?;
        let genesis = dir.path().join("chain").join("genesis.txt");
        let mut c = Cluster {
            topo,
            exe: exe.to_path_buf(),
            genesis,
            procs: Vec::new(),
            proxies: Vec::new(),
            stores: Vec::new(),
            clients: Vec::new(),
            conv: String::new(),
            acked: Vec::new(),
            faketime: FAKETIME_LIBS.into_iter().find(|l| Path::new(l).exists()),
            validator_delay,
            dir: Some(dir),
            lab,
        };
        log(&format!(
            "lab: {} namespaces on {}.0/24, data in {}",
            topo.total(),
            super::netns::SUBNET,
            c.dir().display()
        ));
        if let Err(e) = c.setup(log) {
            let kept = c.keep().map(|p| p.display().to_string()).unwrap_or_default();
            return Err(e.context(format!("setting up the cluster (logs and data kept in {kept})")));
        }
        Ok(c)
    }

    fn setup(&mut self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let topo = self.topo;
        let c = self;
        for i in 0..topo.total() {
            c.start_proxy(i)?;
        }
        let addrs: Vec<String> =
            (0..topo.validators).map(|i| format!("{}:{VALIDATOR_P2P}", c.lab.ip(i))).collect();
        let st = Command::new(&c.exe)
            .args([
                "ledger",
                "genesis",
                "--validators",
                &topo.validators.to_string(),
                "--addr",
                &addrs.join(","),
                "--out",
            ])
            .arg(c.dir().join("chain"))
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("ledger genesis failed");
        }
        for i in 0..topo.validators {
            c.procs.push(Proc {
                name: format!("validator-{i}"),
                role: Role::Validator(i),
                child: None,
                skew_ms: 0,
            });
        }
        for s in 0..topo.stores {
            c.procs.push(Proc { name: format!("store-{s}"), role: Role::Store, child: None, skew_ms: 0 });
        }
        for u in 0..topo.users {
            c.procs.push(Proc { name: format!("user{u}"), role: Role::User, child: None, skew_ms: 0 });
        }
        for i in 0..topo.validators {
            c.spawn(i)?;
        }
        for s in 0..topo.stores {
            let i = topo.validators + s;
            c.spawn(i)?;
            c.wait_up(i)?;
            let run = read_run_file(&c.home(i))?.context("store run file")?;
            c.stores.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));
        }
        log(&format!("ledger and {} store nodes up; store addresses {:?}", topo.stores, c.stores));
        for u in 0..topo.users {
            let i = topo.user(u);
            let st = Command::new(&c.exe)
                .arg("--home")
                .arg(c.home(i))
                .args(["init", "--handle", &c.procs[i].name])
                .env("CAIRN_PASSPHRASE", PASS)
                .stdout(Stdio::null())
                .status()?;
            if !st.success() {
                bail!("cairn init of {} failed", c.procs[i].name);
            }
            c.spawn(i)?;
        }
        for u in 0..topo.users {
            let i = topo.user(u);
            c.wait_up(i)?;
            let port = relay(c.socket(i))?;
            let token = std::fs::read_to_string(c.home(i).join(cairn_node::client::TOKEN_FILE))?;
            c.clients.push(Client::new(&format!("http://127.0.0.1:{port}"), token.trim(), &c.home(i)));
        }
        for u in 0..topo.users {
            let name = format!("@{}", c.procs[topo.user(u)].name);
            let cl = &c.clients[u];
            poll(&format!("{name} registered"), Duration::from_secs(180), || {
                cl.account(&name).ok().filter(|a| a.proof_verified)
            })?;
        }
        let others: Vec<String> =
            (1..topo.users).map(|u| format!("@{}", c.procs[topo.user(u)].name)).collect();
        c.conv = c.clients[0].create_conversation(&others)?.id;
        for u in 1..topo.users {
            let (cl, conv) = (&c.clients[u], &c.conv);
            poll(&format!("user{u} to join"), Duration::from_secs(120), || {
                cl.conversations().ok()?.into_iter().find(|v| &v.id == conv && v.active)
            })?;
        }
        if c.validator_delay {
            c.check_validator_links()?;
            log(&format!(
                "every pair of the {} validators is connected through their egress delay proxies",
                topo.validators
            ));
        } else {
            log("validator-to-validator traffic is NOT delayed (CAIRN_FAULTS_VALIDATOR_DELAY=0)");
        }
        if c.faketime.is_none() {
            log(
                "libfaketime is not installed: restarts run without clock skew (apt-get install libfaketime)",
            );
        }
        Ok(())
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    fn home(&self, i: usize) -> PathBuf {
        self.dir().join(&self.procs[i].name)
    }

    fn socket(&self, i: usize) -> PathBuf {
        self.dir().join(format!("api-{i}.sock"))
    }

    fn delay_file(&self, i: usize) -> PathBuf {
        self.dir().join(format!("delay-{i}"))
    }

    /// Keeps the data directory (logs) after the run; returns its path.
    pub(crate) fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(tempfile::TempDir::keep)
    }

    fn start_proxy(&mut self, i: usize) -> Result<()> {
        let ip = self.lab.ip(i);
        let conf = self.dir().join(format!("proxy-{i}.conf"));
        let mut text = String::new();
        for port in [NODE_P2P, VALIDATOR_RPC] {
            text.push_str(&format!("forward {} {ip}:{port}\n", port + PROXY_OFFSET));
            self.lab.redirect(i, port, port + PROXY_OFFSET)?;
        }
        if i < self.topo.validators && self.validator_delay {
            text.push_str(&format!("egress {}\n", VALIDATOR_P2P + PROXY_OFFSET));
            self.lab.redirect_egress(i, VALIDATOR_P2P, VALIDATOR_P2P + PROXY_OFFSET)?;
        }
        text.push_str(&format!(
            "api {} {API}\ndelay {}\n",
            self.socket(i).display(),
            self.delay_file(i).display()
        ));
        std::fs::write(&conf, text)?;
        let log = self.log(&format!("proxy-{i}"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", self.lab.ns(i)])
            .arg(&self.exe)
            .args(["bench", "faults-proxy", "--fault-conf"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.proxies.push(child);
        Ok(())
    }

    /// Fails unless every pair of validators has a connection relayed by an egress proxy (the
    /// proxies' logs), so validator traffic meets the delay.
    fn check_validator_links(&self) -> Result<()> {
        let ips: Vec<String> = (0..self.topo.validators).map(|i| self.lab.ip(i)).collect();
        let missing = || {
            let mut lines = String::new();
            for i in 0..self.topo.validators {
                let log = self.dir().join(format!("proxy-{i}.log"));
                lines.push_str(&std::fs::read_to_string(log).unwrap_or_default());
            }
            validator_pairs_missing(&lines, &ips)
        };
        let all = poll("validators to connect through their egress proxies", LINKS_MAX, || {
            missing().is_empty().then_some(())
        });
        all.with_context(|| format!("validator pairs not connected through a proxy: {:?}", missing()))
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("{name}.log")))?)
    }

    /// Starts process `i` (again) in its namespace, with its clock skew.
    fn spawn(&mut self, i: usize) -> Result<()> {
        let (ns, ip) = (self.lab.ns(i).to_owned(), self.lab.ip(i));
        let mut log = self.log(&self.procs[i].name)?;
        let skew = self.procs[i].skew_ms;
        writeln!(log, "\n===== (re)start, clock skew {skew:+} ms =====")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(&self.exe);
        let chain = self.dir().join("chain");
        match self.procs[i].role {
            Role::Validator(v) => {
                cmd.args(["ledger", "validator", "--genesis"])
                    .arg(&self.genesis)
                    .arg("--key")
                    .arg(chain.join(format!("validator-{v}.key")))
                    .arg("--data")
                    .arg(chain.join(format!("validator-{v}")));
            }
            role => {
                let home = self.home(i);
                std::fs::create_dir_all(&home)?;
                cmd.arg("--home").arg(&home).arg("up").arg("--genesis").arg(&self.genesis);
                cmd.args(["--invitations", "everyone", "--api", API]);
                cmd.arg("--listen").arg(format!("/ip4/{ip}/tcp/{NODE_P2P}"));
                let own = format!("/ip4/{ip}/");
                for s in self.stores.iter().filter(|s| !s.starts_with(&own)) {
                    cmd.arg("--bootstrap").arg(s);
                }
                if role == Role::Store {
                    cmd.arg("--store");
                }
                cmd.env("CAIRN_PASSPHRASE", PASS).env_remove("CAIRN_CONFIG");
                cmd.env("RUST_LOG", "warn,cairn_node=info");
            }
        }
        if skew != 0
            && let Some(lib) = self.faketime
        {
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{:+}", skew as f64 / 1000.0))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn()?;
        self.procs[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` wrote its run file (and, for a user, answers through its relay).
    fn wait_up(&self, i: usize) -> Result<()> {
        let Some(pid) = self.procs[i].child.as_ref().map(Child::id) else { return Ok(()) };
        if matches!(self.procs[i].role, Role::Validator(_)) {
            return Ok(());
        }
        let home = self.home(i);
        let user = self.procs[i].role == Role::User;
        let client = user.then(|| i - self.topo.user(0)).and_then(|u| self.clients.get(u));
        poll(&format!("{} to start", self.procs[i].name), Duration::from_secs(90), || {
            read_run_file(&home).ok().flatten().filter(|r| r.pid == pid)?;
            if let Some(c) = client {
                c.status().ok()?;
            }
            Some(())
        })
    }

    /// SIGKILLs process `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn set_delay(&self, delay: Option<(u32, u32)>) -> Result<()> {
        let (b, j) = delay.unwrap_or((0, 0));
        for i in 0..self.lab.len() {
            std::fs::write(self.delay_file(i), format!("{b} {j}\n"))?;
        }
        Ok(())
    }

    /// Runs scenario `s`: faults while every user sends, the heal, then the checker over every
    /// message acknowledged so far in the campaign.
    pub(crate) fn run(&mut self, s: &Scenario) -> Result<Row> {
        self.set_delay(s.delay)?;
        self.lab.apply(s.loss, &s.partition)?;
        let t0 = Instant::now();
        let clients = self.clients.clone();
        let conv = self.conv.clone();
        let mut events: Vec<(u64, bool, usize, i64)> = Vec::new(); // (ms, restart?, node, skew)
        for k in &s.kills {
            events.push((k.after_ms, false, k.node, 0));
            events.push((k.after_ms + k.down_ms, true, k.node, k.skew_ms));
        }
        events.sort_by_key(|e| (e.0, e.1));
        let mut restarted = Vec::new();
        let answers = std::thread::scope(|sc| -> Result<Vec<(bool, bool)>> {
            let senders: Vec<_> = clients
                .iter()
                .enumerate()
                .map(|(u, c)| {
                    let conv = &conv;
                    let gap = s.fault_ms / (s.messages_per_user as u64 + 1);
                    sc.spawn(move || {
                        let mut out = Vec::new();
                        for m in 0..s.messages_per_user {
                            std::thread::sleep(Duration::from_millis(
                                gap / 2 + (u as u64 * 97) % (gap / 2 + 1),
                            ));
                            let text = format!("scenario {} user{u} #{m}", s.index);
                            out.push(c.send_wait(conv, &text, SEND_WAIT_MS).ok().map(|r| {
                                let acked =
                                    r.delivery.stored_on >= 1 || r.delivery.state != DeliveryState::Sent;
                                (r.id, acked)
                            }));
                        }
                        out
                    })
                })
                .collect();
            for (at, restart, node, skew) in &events {
                let now = t0.elapsed().as_millis() as u64;
                std::thread::sleep(Duration::from_millis(at.saturating_sub(now)));
                if *restart {
                    self.procs[*node].skew_ms = *skew;
                    self.spawn(*node)?;
                    restarted.push(*node);
                } else {
                    self.kill(*node);
                }
            }
            let now = t0.elapsed().as_millis() as u64;
            std::thread::sleep(Duration::from_millis(s.fault_ms.saturating_sub(now)));
            let mut answers = Vec::new();
            for h in senders {
                for a in h.join().map_err(|_| anyhow::anyhow!("a sender thread panicked"))? {
                    if let Some((id, acked)) = a {
                        if acked {
                            self.acked.push(id);
                        }
                        answers.push((true, acked));
                    } else {
                        answers.push((false, false));
                    }
                }
            }
            Ok(answers)
        })?;
        self.lab.heal()?;
        self.set_delay(None)?;
        for i in 0..self.procs.len() {
            if self.procs[i].child.is_none() {
                self.spawn(i)?;
                restarted.push(i);
            }
        }
        let t_heal = Instant::now();
        for i in restarted {
            self.wait_up(i)?;
        }
        // Healed: every member holds every acknowledged message, the same set, on one epoch.
        let mut heal_ms = None;
        let mut members = Vec::new();
        while t_heal.elapsed() < HEAL_MAX {
            members = self.observe();
            let all_held = members.iter().all(|m| self.acked.iter().all(|id| m.ids.contains(id)));
            let same = members.windows(2).all(|w| {
                w[0].epoch == w[1].epoch
                    && w[0].ids.len() == w[1].ids.len()
                    && w[0].ids.iter().all(|id| w[1].ids.contains(id))
            });
            if all_held && same && members.len() == self.topo.users {
                heal_ms = Some(t_heal.elapsed().as_millis() as u64);
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let ledger = self.ledger_at_common_height();
        let verdict = check(&self.acked, &members, &ledger, self.topo.validators);
        Ok(Row { what: s.describe(), sent: answers.iter().filter(|a| a.0).count(), verdict, heal_ms })
    }

    /// Every validator's block at the lowest height all of them report (a fork shows as two
    /// digests there), asked from user0's namespace with `cairn ledger status --genesis`; at
    /// most `LEDGER_TRIES` tries. What it got at the last try if some validator never answered.
    fn ledger_at_common_height(&self) -> Vec<LedgerObs> {
        let mut got = Vec::new();
        for _ in 0..LEDGER_TRIES {
            let tips = self.ledger_status(None);
            if tips.len() == self.topo.validators
                && let Some(h) = tips.iter().map(|o| o.height).min().filter(|h| *h > 0)
            {
                got = self.ledger_status(Some(h));
                if got.len() == self.topo.validators {
                    return got;
                }
            }
            std::thread::sleep(Duration::from_millis(700));
        }
        got
    }

    /// `cairn ledger status --genesis G [--at H]` run in user0's namespace, parsed.
    fn ledger_status(&self, at: Option<u64>) -> Vec<LedgerObs> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.lab.ns(self.topo.user(0))]).arg(&self.exe);
        cmd.args(["ledger", "status", "--genesis"]).arg(&self.genesis);
        if let Some(h) = at {
            cmd.args(["--at", &h.to_string()]);
        }
        match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
            Ok(out) => super::check::parse_ledger_status(&String::from_utf8_lossy(&out.stdout)),
            Err(_) => Vec::new(),
        }
    }

    /// Every user's history of the group and epoch (a user that does not answer is left out).
    fn observe(&self) -> Vec<MemberObs> {
        let q = TailQuery { after: None, limit: Some(100_000), wait_ms: None };
        self.clients
            .iter()
            .enumerate()
            .filter_map(|(u, c)| {
                let ids = c.messages(&self.conv, &q).ok()?.into_iter().map(|m| m.id).collect();
                let epoch = c.conversation(&self.conv).ok()?.epoch;
                Some(MemberObs { name: format!("user{u}"), ids, epoch })
            })
            .collect()
    }
}

/// The pairs of `ips` (indices) with no relayed connection in the egress proxies' `log`
/// (lines `egress A:PORT -> B:PORT`; a line with an error after it does not count).
fn validator_pairs_missing(log: &str, ips: &[String]) -> Vec<(usize, usize)> {
    let ip_of = |addr: &str| addr.rsplit_once(':').map(|(ip, _)| ip.to_owned());
    let mut linked = Vec::new();
    for l in log.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let ["egress", from, "->", to] = w.as_slice()
            && let (Some(a), Some(b)) = (ip_of(from), ip_of(to))
            && let (Some(a), Some(b)) = (ips.iter().position(|i| *i == a), ips.iter().position(|i| *i == b))
        {
            linked.push((a.min(b), a.max(b)));
        }
    }
    let mut missing = Vec::new();
    for a in 0..ips.len() {
        for b in a + 1..ips.len() {
            if !linked.contains(&(a, b)) {
                missing.push((a, b));
            }
        }
    }
    missing
}

/// Polls `f` every 200 ms until it gives a value, at most `max`.
fn poll<T>(what: &str, max: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > max {
            bail!("timed out after {max:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP listener on 127.0.0.1 (this process's namespace) relaying every connection to the
/// Unix socket `socket`; returns its port. Its threads live as long as this process.
fn relay(socket: PathBuf) -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(unix) = UnixStream::connect(&socket) else { continue };
            let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else { continue };
            let (mut tcp_w, mut unix_r) = (tcp, unix);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_pairs_count_only_relayed_connections() {
        let ips: Vec<String> = (10..13).map(|h| format!("10.77.0.{h}")).collect();
        let log = "egress 10.77.0.10:40000 -> 10.77.0.11:5000\n\
                   egress 10.77.0.12:40001 -> 10.77.0.10:5000\n\
                   egress 10.77.0.11:40002 -> 10.77.0.12:5000: Connection refused\n\
                   egress 10.77.0.11:40003: not redirected\n";
        assert_eq!(validator_pairs_missing(log, &ips), vec![(1, 2)]);
        let log = format!("{log}egress 10.77.0.12:40004 -> 10.77.0.11:5000\n");
        assert!(validator_pairs_missing(&log, &ips).is_empty());
        assert_eq!(validator_pairs_missing("", &ips).len(), 3);
    }
}
