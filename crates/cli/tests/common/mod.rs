//! The harness the multi-process tests share: a temporary network directory whose child
//! processes (validators, store nodes, users) are killed when it is dropped, with the data
//! kept for post-mortem when the test failed.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_node::client::{Client, read_run_file};

/// The `cairn` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// A local network of `cairn` processes under one temporary directory.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub genesis: PathBuf,
    pub children: Vec<(String, Child)>,
    pub stores: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
        if std::thread::panicking()
            && let Ok(spare) = tempfile::tempdir()
        {
            let kept = std::mem::replace(&mut self.dir, spare).keep();
            eprintln!("test failed: logs and data kept in {}", kept.display());
        }
    }
}

impl Net {
    /// Starts `cairn up` for the home `name` on this network (its genesis and store nodes,
    /// invitations from everyone, then `extra`), with passphrase `pass` and log filter `log`,
    /// and waits for its run file.
    pub fn up(&mut self, name: &str, pass: &str, log: &str, extra: &[&str]) {
        let home = self.path(name);
        std::fs::create_dir_all(&home).unwrap();
        let out = self.log(name);
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(&home).arg("up").arg("--genesis").arg(&self.genesis);
        cmd.args(["--invitations", "everyone"]);
        for s in &self.stores {
            cmd.arg("--bootstrap").arg(s);
        }
        let child = cmd
            .args(extra)
            .env("CAIRN_PASSPHRASE", pass)
            .env("RUST_LOG", log)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        wait_for(&format!("{name} to start"), Duration::from_secs(60), || {
            read_run_file(&home).ok().flatten().filter(|r| r.pid == pid)
        });
    }

    /// `cairn init --handle NAME` in `name`'s home, with passphrase `pass`.
    pub fn init(&self, name: &str, pass: &str) {
        let st = Command::new(BIN)
            .arg("--home")
            .arg(self.path(name))
            .args(["init", "--handle", name])
            .env("CAIRN_PASSPHRASE", pass)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// [`Net::init`], then [`Net::up`], then waits until the handle is proven on the ledger; a
    /// client of the node.
    pub fn user_with(&mut self, name: &str, pass: &str, log: &str) -> Client {
        self.init(name, pass);
        self.up(name, pass, log, &[]);
        let c = Client::for_home(&self.path(name)).unwrap();
        wait_for(&format!("@{name} registered"), Duration::from_secs(120), || {
            c.account(&format!("@{name}")).ok().filter(|a| a.proof_verified)
        });
        c
    }
}

/// Polls `f` every 100 ms until it gives a value; fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range (32768+).
pub fn free_base(count: u16) -> u16 {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 131 + attempt * 977) % 12_000) as u16;
        if (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

impl Net {
    /// A new chain of `validators` validator processes.
    pub fn new(validators: usize) -> Net {
        let mut net = Net::chain(validators);
        for i in 0..validators {
            net.validator(i);
        }
        net
    }

    /// A new chain's genesis for `validators` validators, none started.
    pub fn chain(validators: usize) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let chain = dir.path().join("chain");
        let base = free_base(2 * validators as u16);
        let st = Command::new(BIN)
            .args([
                "ledger",
                "genesis",
                "--validators",
                &validators.to_string(),
                "--base-port",
                &base.to_string(),
            ])
            .arg("--out")
            .arg(&chain)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        Net { genesis: chain.join("genesis.txt"), dir, children: Vec::new(), stores: Vec::new() }
    }

    /// A path under the network's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The (appended) log file of a process.
    pub fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.path(&format!("{name}.log"))).unwrap()
    }

    /// Starts validator `i` of the chain.
    pub fn validator(&mut self, i: usize) {
        self.validator_env(i, &[]);
    }

    /// Starts validator `i` of the chain with these extra environment variables.
    pub fn validator_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let chain = self.path("chain");
        let log = self.log(&format!("validator-{i}"));
        let child = Command::new(BIN)
            .envs(env.iter().copied())
            .args(["ledger", "validator", "--genesis"])
            .arg(chain.join("genesis.txt"))
            .arg("--key")
            .arg(chain.join(format!("validator-{i}.key")))
            .arg("--data")
            .arg(chain.join(format!("validator-{i}")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((format!("validator-{i}"), child));
    }
}

/// Runs `cairn --home HOME ARGS --genesis GENESIS` to its end with `pass` as the passphrase.
pub fn cairn_at(home: &Path, genesis: &Path, pass: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .arg("--genesis")
        .arg(genesis)
        .env("CAIRN_PASSPHRASE", pass)
        .output()
        .unwrap()
}

/// The stderr of a [`cairn_at`] run that must fail.
pub fn refused_at(home: &Path, genesis: &Path, pass: &str, args: &[&str]) -> String {
    let out = cairn_at(home, genesis, pass, args);
    assert!(
        !out.status.success(),
        "cairn {args:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
