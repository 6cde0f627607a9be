//! The lab: one network namespace per process plus a hub namespace holding a bridge, joined by
//! veth pairs, on a private subnet that exists only inside these namespaces. Nothing is added
//! to the host's own namespace (no interface, address, route or iptables rule). The names
//! carry this process's id; dropping the [`Lab`] deletes every namespace (their interfaces and
//! iptables rules go with them), and [`Lab::new`] first removes labs left by runs whose process
//! is gone.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The subnet inside the namespaces: process i gets `SUBNET.(FIRST_HOST + i)`.
pub(crate) const SUBNET: &str = "10.77.0";
const FIRST_HOST: usize = 10;
/// The iptables chain of the faults in each namespace (flushed to heal).
pub(crate) const CHAIN: &str = "CAIRN_FAULTS";
/// Namespace names start with this and the owning process id.
const PREFIX: &str = "cairnf";

/// Runs `ip`/`iptables` with `args`; an error carries its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (install iproute2 and iptables)"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Why namespaces cannot be used here (`None`: they can): tries to create and delete one, and
/// an iptables rule with the `statistic` match inside it.
pub(crate) fn unavailable() -> Option<String> {
    let name = format!("{PREFIX}{}-probe", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &name]) {
        return Some(format!("cannot create a network namespace ({e}); run as root with iproute2"));
    }
    let probe = run(
        "ip",
        &[
            "netns",
            "exec",
            &name,
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.5",
            "-j",
            "DROP",
        ],
    );
    let _ = run("ip", &["netns", "del", &name]);
    probe.err().map(|e| {
        format!("iptables with the statistic match does not work in a namespace ({e}); install iptables")
    })
}

/// The namespaces of one run.
#[derive(Debug)]
pub(crate) struct Lab {
    hub: String,
    nodes: Vec<String>,
}

impl Lab {
    /// Namespaces for `n` processes on one bridge.
    pub(crate) fn new(n: usize) -> Result<Lab> {
        remove_stale();
        let pid = std::process::id();
        let mut lab = Lab { hub: format!("{PREFIX}{pid}-hub"), nodes: Vec::new() };
        run("ip", &["netns", "add", &lab.hub])?;
        run("ip", &["-n", &lab.hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &lab.hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{PREFIX}{pid}-{i}");
            run("ip", &["netns", "add", &ns])?;
            lab.nodes.push(ns.clone());
            let hub_end = format!("h{i}");
            run(
                "ip",
                &[
                    "-n", &lab.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ],
            )?;
            run("ip", &["-n", &lab.hub, "link", "set", &hub_end, "master", "br0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &format!("{}/24", lab.ip(i)), "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            lab.iptables(i, &["-N", CHAIN])?;
            lab.iptables(i, &["-A", "INPUT", "-i", "eth0", "-j", CHAIN])?;
        }
        Ok(lab)
    }

    /// Process `i`'s address.
    pub(crate) fn ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", FIRST_HOST + i)
    }

    /// Process `i`'s namespace.
    pub(crate) fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Namespaces (not counting the hub).
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `iptables ARGS` inside namespace `i`.
    pub(crate) fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        let mut a = vec!["netns", "exec", self.ns(i), "iptables", "-w"];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Sends inbound TCP for `port` on namespace `i`'s interface to `to_port` (its proxy).
    pub(crate) fn redirect(&self, i: usize, port: u16, to_port: u16) -> Result<()> {
        let (p, t) = (port.to_string(), to_port.to_string());
        self.iptables(
            i,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "eth0",
                "-p",
                "tcp",
                "--dport",
                &p,
                "-j",
                "REDIRECT",
                "--to-ports",
                &t,
            ],
        )
    }

    /// Sends TCP connections that namespace `i`'s own processes open to `port` on the lab's
    /// subnet to 127.0.0.1:`to_port` (its egress proxy), except the proxy's own, which carry
    /// [`EGRESS_MARK`](super::proxy::EGRESS_MARK).
    pub(crate) fn redirect_egress(&self, i: usize, port: u16, to_port: u16) -> Result<()> {
        let (p, t) = (port.to_string(), to_port.to_string());
        let (subnet, mark) = (format!("{SUBNET}.0/24"), format!("{:#x}", super::proxy::EGRESS_MARK));
        self.iptables(
            i,
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-o",
                "eth0",
                "-d",
                &subnet,
                "-p",
                "tcp",
                "--dport",
                &p,
                "-m",
                "mark",
                "!",
                "--mark",
                &mark,
                "-j",
                "REDIRECT",
                "--to-ports",
                &t,
            ],
        )
    }

    /// Applies the faults: drops a `loss` share of inbound packets everywhere, and every packet
    /// between `cut` and the rest.
    pub(crate) fn apply(&self, loss: f64, cut: &[usize]) -> Result<()> {
        for i in 0..self.len() {
            let inside = cut.contains(&i);
            for j in 0..self.len() {
                if j != i && !cut.is_empty() && cut.contains(&j) != inside {
                    self.iptables(i, &["-A", CHAIN, "-s", &self.ip(j), "-j", "DROP"])?;
                }
            }
            if loss > 0.0 {
                let p = format!("{loss:.4}");
                self.iptables(
                    i,
                    &["-A", CHAIN, "-m", "statistic", "--mode", "random", "--probability", &p, "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub(crate) fn heal(&self) -> Result<()> {
        for i in 0..self.len() {
            self.iptables(i, &["-F", CHAIN])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain([&self.hub]) {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Deletes labs whose owning process is gone (a run that was SIGKILLed cannot drop its lab).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}
