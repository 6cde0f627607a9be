//! `cairn demo`: a real multi-process network on loopback, driven step by step through each
//! user's local API, every step checked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::LedgerClient;
use cairn_node::client::{Client, read_run_file};
use cairn_node::model::{DeviceAddRequest, PolicySetRequest, TailQuery};
use clap::Args;

use crate::node_cmd::{Children, local_chain, spawn_validator};

/// `cairn demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the network's data here (default: a temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

const PASS: &str = "cairn demo passphrase";
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

struct Demo {
    dir: PathBuf,
    genesis: PathBuf,
    children: Children,
    store_addrs: Vec<String>,
    step: usize,
    started: Instant,
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the cairn binary")
}

/// Polls `f` until it returns `Some`, or fails after `timeout` naming `what`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            match last_err {
                Some(e) => bail!("timed out after {:?} waiting for {what} (last error: {e:#})", timeout),
                None => bail!("timed out after {:?} waiting for {what}", timeout),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Demo {
    fn begin(&mut self, title: &str) {
        self.step += 1;
        println!("[{}] {title} …", self.step);
    }

    fn ok(&self, detail: &str) {
        println!("    ok: {detail} ({:.1} s into the demo)", self.started.elapsed().as_secs_f64());
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn spawn_node(&mut self, name: &str, extra: &[&str]) -> Result<()> {
        let home = self.home(name);
        std::fs::create_dir_all(&home)?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(exe()?);
        cmd.arg("--home").arg(&home).arg("up").arg("--genesis").arg(&self.genesis);
        // the demo's users invite each other without a consent step
        cmd.arg("--invitations").arg("everyone");
        for a in &self.store_addrs {
            cmd.arg("--bootstrap").arg(a);
        }
        cmd.args(extra)
            .env("CAIRN_PASSPHRASE", PASS)
            .env_remove("CAIRN_CONFIG")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,cairn_node=info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child: Child = cmd.spawn().with_context(|| format!("starting node {name}"))?;
        let pid = child.id();
        self.children.0.push((name.to_owned(), child));
        wait_for(&format!("{name}'s node.json"), Duration::from_secs(30), || {
            Ok(read_run_file(&home)?.filter(|r| r.pid == pid))
        })?;
        Ok(())
    }

    fn kill(&mut self, name: &str) -> Result<()> {
        let Some(pos) = self.children.0.iter().position(|(n, _)| n == name) else {
            bail!("no process named {name}");
        };
        let (_, mut child) = self.children.0.remove(pos);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn stop_cleanly(&mut self, name: &str) -> Result<()> {
        let client = Client::for_home(&self.home(name))?;
        client.shutdown()?;
        let Some(pos) = self.children.0.iter().position(|(n, _)| n == name) else {
            bail!("no process named {name}");
        };
        let (_, mut child) = self.children.0.remove(pos);
        let status = wait_for(&format!("{name} to exit"), Duration::from_secs(20), || Ok(child.try_wait()?))?;
        if !status.success() {
            bail!("{name} exited with {status}");
        }
        if read_run_file(&self.home(name))?.is_some() {
            bail!("{name} left its run file behind after a clean exit");
        }
        Ok(())
    }

    fn init_user(&self, name: &str) -> Result<()> {
        let status = Command::new(exe()?)
            .arg("--home")
            .arg(self.home(name))
            .args(["init", "--handle", name])
            .env("CAIRN_PASSPHRASE", PASS)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("`cairn init` failed for {name}");
        }
        Ok(())
    }

    fn client(&self, name: &str) -> Result<Client> {
        Ok(Client::for_home(&self.home(name))?)
    }
}

fn texts(client: &Client, conv: &str) -> Result<Vec<String>> {
    let q = TailQuery { after: None, limit: Some(10_000), wait_ms: None };
    Ok(client.messages(conv, &q)?.into_iter().map(|m| m.text).collect())
}

fn wait_texts(client: &Client, who: &str, conv: &str, want: &[&str]) -> Result<()> {
    wait_for(&format!("{who} to have {want:?}"), STEP_TIMEOUT, || {
        let have = texts(client, conv)?;
        Ok(want.iter().all(|w| have.iter().filter(|h| h == w).count() == 1).then_some(()))
    })
}

/// Runs the demo.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let (dir, _tmp) = match args.dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                bail!("{} is not empty: give an empty or new directory", d.display());
            }
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_owned(), Some(t))
        }
    };
    println!("cairn demo: a real network of separate processes on 127.0.0.1, data in {}", dir.display());
    let chain = dir.join("chain");
    let genesis = local_chain(&chain, 4, "demo")?;
    let mut d = Demo {
        dir: dir.clone(),
        genesis: genesis.clone(),
        children: Children(Vec::new()),
        store_addrs: Vec::new(),
        step: 0,
        started: Instant::now(),
    };
    let r = story(&mut d, &chain);
    let step = d.step;
    drop(d); // kills every process
    match r {
        Ok(()) => {
            println!("demo: all {step} steps checked");
            Ok(())
        }
        Err(e) => Err(e.context(format!("demo step {step} failed"))),
    }
}

fn story(d: &mut Demo, chain: &Path) -> Result<()> {
    // 1. Ledger.
    d.begin("ledger: 4 validators (separate processes) agree on blocks (BFT, tolerates 1 faulty)");
    let logs = d.dir.join("logs");
    for i in 0..4 {
        let child = spawn_validator(chain, i, &logs)?;
        d.children.0.push((format!("validator-{i}"), child));
    }
    let g = Genesis::load(&d.genesis)?;
    let mut ledger = LedgerClient::new(&g)?.with_timeout(Duration::from_secs(2));
    let t0 = Instant::now();
    // Generous: 4 validator processes starting together on a loaded 2-core machine take a while.
    let h = wait_for("every validator to finalize a block", 3 * STEP_TIMEOUT, || {
        let mut min = u64::MAX;
        for i in 0..4 {
            match ledger.status_at(i) {
                Ok(s) => min = min.min(s.height),
                Err(_) => return Ok(None),
            }
        }
        Ok((min >= 1).then_some(min))
    })?;
    d.ok(&format!("all 4 validators at height ≥ {h} after {:.1} s", t0.elapsed().as_secs_f64()));

    // 2. Store nodes.
    d.begin("mesh: 3 store nodes keep encrypted mail for offline users");
    for i in 0..3 {
        let name = format!("store-{i}");
        d.spawn_node(&name, &["--store"])?;
        let run = read_run_file(&d.home(&name))?.context("store run file")?;
        d.store_addrs.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));
    }
    d.ok(&format!("store nodes listening: {}", d.store_addrs.len()));

    // 3. Users.
    d.begin("users: alice, bob and carol create identities, register on the ledger, claim handles");
    for name in ["alice", "bob", "carol"] {
        d.init_user(name)?;
        d.spawn_node(name, &[])?;
    }
    for name in ["alice", "bob", "carol"] {
        let c = d.client(name)?;
        let acc = wait_for(&format!("@{name} on the ledger"), STEP_TIMEOUT, || {
            Ok(c.account(&format!("@{name}")).ok().filter(|a| a.proof_verified && !a.devices.is_empty()))
        })?;
        let me = c.status()?;
        if acc.account != me.account {
            bail!("@{name} resolves to {} but {name} is {}", acc.account, me.account);
        }
        println!(
            "    @{name} = {} (fingerprint {}), proof checked at height {}",
            acc.account, me.fingerprint, acc.height
        );
    }
    d.ok("3 accounts, 3 handles, each proven against a validator-signed header");

    // 4. Group.
    d.begin("alice creates an encrypted group with @bob and @carol (MLS; commit ordered by the ledger)");
    let alice = d.client("alice")?;
    let bob = d.client("bob")?;
    let carol = d.client("carol")?;
    let conv = alice.create_conversation(&["@bob".into(), "@carol".into()])?;
    let id = conv.id.clone();
    for (name, c) in [("bob", &bob), ("carol", &carol)] {
        wait_for(&format!("{name} to join"), STEP_TIMEOUT, || {
            Ok(c.conversations()?.into_iter().find(|v| v.id == id && v.active).map(|_| ()))
        })?;
    }
    d.ok(&format!(
        "conversation {} with {} members; bob and carol joined from their Welcomes",
        &id[..16],
        conv.members.len()
    ));

    // 5. Chat.
    d.begin("everyone writes; everyone reads every message exactly once");
    alice.send(&id, "hello from alice")?;
    bob.send(&id, "hi, bob here")?;
    carol.send(&id, "carol says hi")?;
    let all = ["hello from alice", "hi, bob here", "carol says hi"];
    for (name, c) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        wait_texts(c, name, &id, &all)?;
    }
    // Delivery receipts: the send answers once both other members' devices acknowledged it.
    let sent = alice.send_wait(&id, "did you get this?", STEP_TIMEOUT.as_millis() as u64)?;
    if sent.delivery.state != cairn_node::model::DeliveryState::Delivered
        || sent.delivery.delivered_to != 2
        || sent.delivery.stored_on < 2
    {
        bail!(
            "alice's message {} is {:?}, not stored on ≥ 2 store nodes and delivered to bob and carol",
            &sent.id[..12],
            sent.delivery
        );
    }
    for (name, c) in [("bob", &bob), ("carol", &carol)] {
        wait_texts(c, name, &id, &["did you get this?"])?;
    }
    d.ok(&format!(
        "3 + 1 messages, each seen once by all three; message {}: {} (receipts from both devices; stored on {} store nodes)",
        &sent.id[..12],
        crate::client_cmd::delivery_text(&sent.delivery),
        sent.delivery.stored_on
    ));

    // 6. Offline member.
    d.begin(
        "carol goes offline; alice and bob keep writing; carol comes back and catches up from store nodes",
    );
    d.stop_cleanly("carol")?;
    let offline: Vec<String> = (1..=5).map(|i| format!("while carol was away #{i}")).collect();
    for (i, t) in offline.iter().enumerate() {
        if i % 2 == 0 {
            alice.send(&id, t)?
        } else {
            bob.send(&id, t)?
        };
    }
    d.spawn_node("carol", &[])?;
    let carol = d.client("carol")?;
    let want: Vec<&str> = offline.iter().map(String::as_str).collect();
    wait_texts(&carol, "carol", &id, &want)?;
    d.ok("carol has all 5 messages sent while she was offline, once each");

    // 7. New device.
    d.begin("bob adds a second device; it joins bob's conversations and reads new messages");
    let bob2_home = d.home("bob2");
    let dev =
        bob.add_device(&DeviceAddRequest { home: bob2_home.display().to_string(), passphrase: PASS.into() })?;
    d.spawn_node("bob2", &[])?;
    let bob2 = d.client("bob2")?;
    wait_for("bob's second device to join the group", STEP_TIMEOUT, || {
        Ok(bob2.conversations()?.into_iter().find(|v| v.id == id && v.active).map(|_| ()))
    })?;
    wait_for("alice to see bob's second device in the group", STEP_TIMEOUT, || {
        Ok(alice.conversation(&id)?.members.iter().any(|m| m.devices.contains(&dev.device)).then_some(()))
    })?;
    alice.send(&id, "welcome, bob's new device")?;
    wait_texts(&bob2, "bob2", &id, &["welcome, bob's new device"])?;
    d.ok(&format!("device {} is a member and reads new messages", &dev.device[..20]));
    // The new device's keystore holds its own key only; account operations stay on bob's
    // first device.
    let ks = cairn_crypto::Identity::open_file(&bob2_home.join("keystore"), PASS.as_bytes())?;
    if ks.account_key.is_some() {
        bail!("bob's second device's keystore holds the account key");
    }
    match bob2.claim_handle("bob_two") {
        Err(e) if e.to_string().contains("holds no account key") => {}
        other => bail!("a device without the account key managed the account: {other:?}"),
    }
    d.ok("the new device's keystore holds its device key only; account operations are refused there");

    // 8. Pay on delivery.
    pay_on_delivery(d, &mut ledger, &id, &alice, &bob)?;

    // 9. Moderation.
    moderated_group(d, &id, &alice, &bob, &[("bob2", &bob2), ("carol", &carol)])?;
    filtered_message_held(d, &id, &carol, &[("alice", &alice), ("bob", &bob), ("bob2", &bob2)])?;

    // 11. Removal (alice is the policy's admin: allowed).
    d.begin("alice (the policy's admin) removes carol; carol can no longer read what follows");
    alice.remove_member(&id, "@carol")?;
    wait_for("carol to see her removal", STEP_TIMEOUT, || {
        Ok(carol.conversations()?.into_iter().find(|v| v.id == id && !v.active).map(|_| ()))
    })?;
    alice.send(&id, "a secret carol must not read")?;
    wait_texts(&bob, "bob", &id, &["a secret carol must not read"])?;
    std::thread::sleep(Duration::from_secs(2));
    if texts(&carol, &id)?.iter().any(|t| t == "a secret carol must not read") {
        bail!("carol read a message sent after her removal");
    }
    d.ok("bob reads the new message; carol's device cannot decrypt it");

    // 12. Validator crash.
    d.begin("a validator is killed (SIGKILL); the ledger and the chat go on");
    let before = ledger.status_at(0)?.height;
    d.kill("validator-3")?;
    alice.send(&id, "still here after a validator crash")?;
    bob.send(&id, "me too")?;
    for (name, c) in [("alice", &alice), ("bob", &bob), ("bob2", &bob2)] {
        wait_texts(c, name, &id, &["still here after a validator crash", "me too"])?;
    }
    let after = wait_for("the 3 remaining validators to finalize more blocks", STEP_TIMEOUT, || {
        Ok(ledger.status_at(0).ok().map(|s| s.height).filter(|h| *h > before + 2))
    })?;
    d.ok(&format!("ledger height {before} → {after} with 3 of 4 validators; messages delivered"));

    // 13. Verify.
    d.begin("verify: every member checks signatures, hash links and the ledger anchor of its history");
    std::thread::sleep(Duration::from_secs(6)); // let an anchor land
    for (name, c) in [("alice", &alice), ("bob", &bob), ("bob2", &bob2), ("carol", &carol)] {
        let v = c.verify(&id)?;
        if !v.intact {
            bail!("{name}'s history is not intact: {}", v.first_problem.unwrap_or_default());
        }
        println!(
            "    {name}: {} envelopes, {} signatures, {} anchor(s), {} unreadable here (structure checked) — intact",
            v.envelopes, v.signatures_verified, v.anchors, v.erased
        );
    }
    d.ok("every history intact");
    Ok(())
}

/// Alice pins the shipped `moderation` policy with herself as its only admin; every member's
/// node sees the pin; bob (not an admin) tries to remove carol and his own node refuses it.
fn moderated_group(
    d: &mut Demo,
    id: &str,
    alice: &Client,
    bob: &Client,
    others: &[(&str, &Client)],
) -> Result<()> {
    d.begin(
        "moderation: alice pins the `moderation` policy (admins: alice; filtered word: contraband) in the group's MLS context; bob, not an admin, tries to remove carol and is refused",
    );
    let req = PolicySetRequest {
        policy: "moderation".into(),
        admins: vec!["@alice".into()],
        words: vec!["contraband".into()],
        ..Default::default()
    };
    let view = alice.set_policy(id, &req).context("alice pinning the moderation policy")?;
    if view.policy != "moderation" {
        bail!("alice pinned moderation but her node shows '{}'", view.policy);
    }
    for (name, c) in [("bob", bob)].iter().chain(others) {
        wait_for(&format!("{name} to see the pinned policy"), STEP_TIMEOUT, || {
            Ok((c.policy(id)?.policy == "moderation").then_some(()))
        })?;
    }
    println!(
        "    pinned at a commit: moderation (code {}…), seen by bob, bob's second device and carol",
        view.code_hash.as_deref().map_or("?", |h| &h[..h.len().min(16)])
    );
    match bob.remove_member(id, "@carol") {
        Ok(_) => bail!("bob, who is not an admin, removed carol under the moderation policy"),
        Err(e) if e.to_string().contains("only an admin may remove") => {
            println!("    bob's removal of carol: refused ({e})");
        }
        Err(e) => bail!("bob's removal of carol failed, but not because of the policy: {e}"),
    }
    let none = PolicySetRequest { policy: "none".into(), ..Default::default() };
    if bob.set_policy(id, &none).is_ok() {
        bail!("bob, who is not an admin, unpinned the policy");
    }
    let members = alice.conversation(id)?.members.len();
    if members != 3 || alice.policy(id)?.policy != "moderation" {
        bail!("after bob's refused attempts alice sees {members} members and the policy changed");
    }
    d.ok("bob's removal and his unpinning were refused by the policy; 3 members, policy unchanged");
    Ok(())
}

/// Runs `cairn --home HOME ARGS --genesis G` (the commands a user types); its stdout, or its
/// stderr as the error.
fn cairn_cli(d: &Demo, who: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(exe()?)
        .arg("--home")
        .arg(d.home(who))
        .args(args)
        .arg("--genesis")
        .arg(&d.genesis)
        .env("CAIRN_PASSPHRASE", PASS)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}", err.trim().trim_start_matches("error: "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `label` on its line of a command's output.
fn field(out: &str, label: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|v| v.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no '{label}' in the output:\n{out}"))
}

/// Alice pays bob for a message through the shipped escrow contract: locked when she sends it,
/// released by the delivery receipt bob's device signs for it, once only.
fn pay_on_delivery(
    d: &mut Demo,
    ledger: &mut LedgerClient,
    conv: &str,
    alice: &Client,
    bob: &Client,
) -> Result<()> {
    use cairn_contracts::shipped::escrow;
    use cairn_proto::ed25519::Signer as _;
    d.begin(
        "pay on delivery: alice locks a payment for her message to bob in the escrow contract; bob's device signs a delivery receipt and the payment is released to bob, once",
    );
    const AMOUNT: u64 = 1_000_000;
    let wasm = d.dir.join("escrow.wasm");
    std::fs::write(&wasm, escrow::WASM)?;
    let wasm = wasm.to_str().context("the demo directory's path is not UTF-8")?;
    let out = cairn_cli(d, "alice", &["contract", "deploy", wasm])?;
    let code = field(&out, "code")?;
    let out = cairn_cli(d, "alice", &["contract", "instantiate", &code])?;
    let contract_hex = field(&out, "contract")?;
    println!("    alice: cairn contract deploy escrow.wasm; instantiate → contract {}…", &contract_hex[..16]);
    let bob_status = bob.status()?;
    let bob_account = cairn_proto::AccountId::from_text(&bob_status.account)
        .map_err(|e| anyhow::anyhow!("bob's account id: {e}"))?;
    let sent = alice.send(conv, "bob: the report you asked for; paid on delivery")?;
    let id: [u8; 32] = hex::decode(&sent.id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("message id {} is not 32 bytes of hex", sent.id))?;
    let deadline = ledger.status()?.height + 10_000;
    let open = hex::encode(escrow::open(&id, &bob_account.0, deadline));
    cairn_cli(
        d,
        "alice",
        &["contract", "call", &contract_hex, "--msg", &open, "--funds", &AMOUNT.to_string()],
    )?;
    let contract: [u8; 32] = hex::decode(&contract_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("the contract address is not 32 bytes of hex")?;
    let record = |ledger: &mut LedgerClient| -> Result<escrow::Record> {
        Ok(escrow::Record::decode(&ledger.query(&contract, &escrow::query(&id))?)?)
    };
    let rec = wait_for("the escrow to show open", STEP_TIMEOUT, || {
        Ok(Some(record(ledger)?).filter(|r| r.status == escrow::Status::Open))
    })?;
    if rec.amount != AMOUNT || rec.recipient != bob_account.0 {
        bail!("the escrow holds {} for {:?}, not {AMOUNT} for bob", rec.amount, &rec.recipient[..4]);
    }
    println!(
        "    alice: escrow open for message {}… → @bob, {AMOUNT} units locked until height {deadline}",
        &sent.id[..12]
    );
    // Bob's node receives the message; bob's device signs the receipt for that message id.
    wait_texts(bob, "bob", conv, &["bob: the report you asked for; paid on delivery"])?;
    let ks = cairn_crypto::Identity::open_file(&d.home("bob").join("keystore"), PASS.as_bytes())?;
    let device = ks.device().0;
    let sig = ks.device_key.sign(&escrow::receipt_message(&id)).to_bytes();
    let before = ledger.account(&bob_account)?.map_or(0, |a| a.balance);
    let release = hex::encode(escrow::release(&id, &device, &sig));
    cairn_cli(d, "bob", &["contract", "call", &contract_hex, "--msg", &release])?;
    let rec = wait_for("the escrow to show released", STEP_TIMEOUT, || {
        Ok(Some(record(ledger)?).filter(|r| r.status != escrow::Status::Open))
    })?;
    if rec.status != escrow::Status::Released {
        bail!("the escrow is {:?} after bob's receipt, not released", rec.status);
    }
    // bob paid the release call's fee out of the payment (well under 10% of it here)
    let after = wait_for("bob's balance to show the payment", STEP_TIMEOUT, || {
        Ok(ledger.account(&bob_account)?.map(|a| a.balance).filter(|b| *b > before))
    })?;
    let gained = after - before;
    if !(AMOUNT - AMOUNT / 10..=AMOUNT).contains(&gained) {
        bail!("bob's balance moved by {gained} on release, not {AMOUNT} less the call's fee");
    }
    println!(
        "    bob: device {}… signed the delivery receipt; cairn contract call … release → +{gained} (the {AMOUNT} less his call's fee)",
        &hex::encode(device)[..12]
    );
    match cairn_cli(d, "bob", &["contract", "call", &contract_hex, "--msg", &release]) {
        Ok(_) => bail!("a second release of the same escrow went through"),
        Err(e) if e.to_string().contains("escrow is closed") => println!("    bob again: refused ({e})"),
        Err(e) => bail!("the second release failed, but not because the escrow is closed: {e}"),
    }
    d.ok("paid once on bob's delivery receipt; the double release was refused (only its fee was kept)");
    Ok(())
}

/// Carol (not an admin) writes a word the pinned policy filters: every other member's node
/// holds it out of the history (its text kept aside on that device), while what she writes
/// next shows as usual.
fn filtered_message_held(d: &mut Demo, id: &str, carol: &Client, readers: &[(&str, &Client)]) -> Result<()> {
    d.begin("moderation: carol writes a word the policy filters; each reader's node holds that message (judged inside end-to-end encryption)");
    let bad = "who wants some contraband?";
    let fine = "sorry, wrong group";
    let sent = carol.send(id, bad)?;
    carol.send(id, fine)?;
    for (name, c) in readers {
        wait_texts(c, name, id, &[fine])?;
        let held = wait_for(&format!("{name}'s node to hold carol's message"), STEP_TIMEOUT, || {
            Ok(c.held(id)?.held.into_iter().find(|h| h.id == sent.id && !h.waiting))
        })?;
        if texts(c, id)?.iter().any(|t| t == bad) {
            bail!("{name}'s history shows the filtered message");
        }
        if held.text != bad {
            bail!("{name}'s node holds '{}' for carol's message, not its text", held.text);
        }
        println!("    {name}: held ({}), not in the history; 'sorry, wrong group' shown", held.reason);
    }
    d.ok("the filtered message is held on every reader's device; the next one is shown");
    Ok(())
}
