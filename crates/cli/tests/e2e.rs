//! End-to-end tests: real `cairn` processes on 127.0.0.1 (validators, store nodes, users),
//! driven through the local API. Every process is killed when a test ends, even on failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use cairn_node::client::{Client, read_run_file};
use cairn_node::model::{MessageView, PolicySetRequest, TailQuery};
use common::{BIN, Net, wait_for};

const PASS: &str = "e2e passphrase";

impl Net {
    fn node(&mut self, name: &str, extra: &[&str]) {
        self.up(name, PASS, "warn,cairn_node=info", extra);
    }

    fn store(&mut self, name: &str) {
        self.node(name, &["--store"]);
        let run = read_run_file(&self.path(name)).unwrap().unwrap();
        self.stores.extend(run.p2p.into_iter().filter(|a| a.contains("/tcp/")));
    }

    fn user(&mut self, name: &str) -> Client {
        self.user_with(name, PASS, "warn,cairn_node=info")
    }

    fn take(&mut self, name: &str) -> Child {
        let pos = self.children.iter().position(|(n, _)| n == name).unwrap();
        self.children.remove(pos).1
    }

    fn sigkill(&mut self, name: &str) {
        let mut c = self.take(name);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn stop(&mut self, name: &str) {
        Client::for_home(&self.path(name)).unwrap().shutdown().unwrap();
        self.wait_clean_exit(name);
    }

    /// Stops a node without an API (a store node) with SIGTERM, as a service manager would.
    fn terminate(&mut self, name: &str) {
        let pid = self.children.iter().find(|(n, _)| n == name).unwrap().1.id();
        let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
        assert!(st.success());
        self.wait_clean_exit(name);
    }

    fn wait_clean_exit(&mut self, name: &str) {
        let mut c = self.take(name);
        let st = wait_for("clean exit", Duration::from_secs(30), || c.try_wait().unwrap());
        assert!(st.success(), "{name} exited with {st}");
        assert!(read_run_file(&self.path(name)).unwrap().is_none(), "run file left behind");
    }
}

fn all_messages(c: &Client, conv: &str) -> Vec<MessageView> {
    c.messages(conv, &TailQuery { after: None, limit: Some(10_000), wait_ms: None }).unwrap()
}

/// Every message once, and every parent that this member can read comes before its child.
fn check_history(who: &str, msgs: &[MessageView], want: &HashSet<String>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(seen.insert(m.id.as_str(), i).is_none(), "{who} has message {} twice", m.id);
    }
    let texts: HashSet<String> = msgs.iter().map(|m| m.text.clone()).collect();
    let missing: Vec<&String> = want.iter().filter(|w| !texts.contains(*w)).collect();
    assert!(missing.is_empty(), "{who} misses {} messages, e.g. {:?}", missing.len(), missing.first());
    for (i, m) in msgs.iter().enumerate() {
        for p in &m.parents {
            if let Some(&j) = seen.get(p.as_str()) {
                assert!(j < i, "{who}: message {} comes before its parent {}", m.id, p);
            }
        }
    }
}

#[test]
fn demo_story_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("demo")
        .arg("--dir")
        .arg(dir.path().join("demo"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all 13 steps checked"), "{stdout}");
}

/// A network of `stores` store nodes where ann created a conversation with ben and cat, once
/// both joined it: the network and ann's, ben's and cat's clients, and the conversation id.
fn three_members(stores: usize) -> (Net, Client, Client, Client, String) {
    let mut net = Net::new(4);
    for i in 0..stores {
        net.store(&format!("store-{i}"));
    }
    let a = net.user("ann");
    let b = net.user("ben");
    let c = net.user("cat");
    let conv = a.create_conversation(&["@ben".into(), "@cat".into()]).unwrap().id;
    for who in [&b, &c] {
        wait_for("members to join", Duration::from_secs(90), || {
            who.conversations().ok()?.into_iter().find(|v| v.id == conv && v.active)
        });
    }
    (net, a, b, c, conv)
}

#[test]
fn thousand_messages_with_restarts_and_crashes() {
    let (mut net, a, b, _c, conv) = three_members(3);
    let c_home = net.path("cat");
    let c = || Client::for_home(&c_home).unwrap();
    let total = 1000;
    let mut want = HashSet::new();
    let mut c_up = true;
    for i in 0..total {
        let text = format!("message {i}");
        match i % 3 {
            0 => a.send(&conv, &text).unwrap(),
            1 => b.send(&conv, &text).unwrap(),
            _ if c_up => c().send(&conv, &text).unwrap(),
            _ => a.send(&conv, &text).unwrap(),
        };
        want.insert(text);
        if i == 250 || i == 650 {
            net.stop("cat");
            c_up = false;
        }
        if i == 400 || i == 800 {
            net.node("cat", &[]);
            c_up = true;
        }
        if i == 500 {
            net.sigkill("store-0");
            net.sigkill("validator-3");
        }
    }
    for (who, client) in [("ann", &a), ("ben", &b), ("cat", &c())] {
        wait_for(&format!("{who} to have all {total} messages"), Duration::from_secs(240), || {
            (all_messages(client, &conv).len() >= total).then_some(())
        });
        check_history(who, &all_messages(client, &conv), &want);
        let v = client.verify(&conv).unwrap();
        assert!(v.intact, "{who}: {:?}", v.first_problem);
        assert!(v.signatures_verified >= total, "{who} verified only {} signatures", v.signatures_verified);
    }
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

/// The canary test: a message carrying a unique string is sent to a 3-member group and
/// erased by its author; once every member applied it and every node stopped cleanly, no
/// file under any home (members, store nodes, validators, logs) holds the string, and
/// `verify` still passes, counting the erased message.
#[test]
fn an_erased_canary_is_in_no_file_of_any_node_and_a_forgotten_account_leaves_no_trace() {
    let (mut net, a, b, c, conv) = three_members(3);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let canary = format!("canary-{:x}-{nanos:x}", std::process::id());
    let sent = a.send(&conv, &canary).unwrap();
    a.send(&conv, "said after the canary").unwrap();
    for (who, client) in [("ann", &a), ("ben", &b), ("cat", &c)] {
        wait_for(&format!("{who} to read the canary"), Duration::from_secs(60), || {
            all_messages(client, &conv).iter().any(|m| m.text == canary).then_some(())
        });
    }
    // Only its author may erase it.
    assert!(b.erase(&conv, &sent.id).is_err(), "ben erased ann's message");
    a.erase(&conv, &sent.id).unwrap();
    for (who, client) in [("ann", &a), ("ben", &b), ("cat", &c)] {
        wait_for(&format!("{who} to apply the erasure"), Duration::from_secs(60), || {
            let msgs = all_messages(client, &conv);
            (!msgs.iter().any(|m| m.text == canary) && msgs.iter().any(|m| m.text == "said after the canary"))
                .then_some(())
        });
        let v = client.verify(&conv).unwrap();
        assert!(v.intact, "{who}: {:?}", v.first_problem);
        assert!(v.erased >= 1, "{who}: verify counts no erased message");
    }
    // Ann pins the moderation policy with herself as the only admin: every member sees it; ben
    // may no longer remove anyone or change the policy.
    let admin_only =
        PolicySetRequest { policy: "moderation".into(), admins: vec!["@ann".into()], ..Default::default() };
    assert_eq!(a.set_policy(&conv, &admin_only).unwrap().policy, "moderation");
    for (who, client) in [("ben", &b), ("cat", &c)] {
        wait_for(&format!("{who} to see the policy"), Duration::from_secs(60), || {
            (client.policy(&conv).ok()?.policy == "moderation").then_some(())
        });
    }
    let cat_id = c.status().unwrap().account;
    assert!(b.remove_member(&conv, &cat_id).is_err(), "a non-admin removed a member");
    let none = PolicySetRequest { policy: "none".into(), ..Default::default() };
    assert!(b.set_policy(&conv, &none).is_err(), "a non-admin changed the policy");
    assert_eq!(a.policy(&conv).unwrap().policy, "moderation");
    assert_eq!(a.conversation(&conv).unwrap().members.len(), 3, "nobody was removed");
    // Cat forgets her account: she leaves (the others see her go), her conversation is
    // forgotten, her handle is free and no device of hers stays active on the ledger.
    let cat = c.status().unwrap().account;
    assert!(c.forget_account("cairn1-not-me").is_err(), "a wrong confirmation changes nothing");
    let done = c.forget_account(&cat).unwrap();
    assert_eq!((done.left, done.forgotten), (1, 1), "{done:?}");
    assert_eq!(done.handle_released.as_deref(), Some("cat"));
    assert_eq!(done.devices_revoked, 1);
    wait_for("cat to leave ann's conversation", Duration::from_secs(60), || {
        a.conversation(&conv).ok()?.members.iter().all(|m| m.account != cat).then_some(())
    });
    assert!(a.account("@cat").is_err(), "@cat still names an account");
    let gone = a.account(&cat).unwrap();
    assert!(gone.proof_verified && gone.devices.is_empty() && gone.handle.is_none(), "{gone:?}");
    assert!(c.conversations().unwrap().is_empty(), "cat's node still lists a conversation");
    for name in ["ann", "ben", "cat"] {
        net.stop(name);
    }
    for name in ["store-0", "store-1", "store-2"] {
        net.terminate(name);
    }
    let found = files_containing(net.dir.path(), canary.as_bytes());
    assert!(found.is_empty(), "the canary is still in {found:?}");
}

/// The ledger's anchor of the conversation of `message` names none of the envelope ids in
/// `home`'s local history (a relay or store node saw those): it is a keyed hash under the
/// conversation's salt, which `verify` (above) mapped back to a head.
fn assert_anchor_is_salted(net: &Net, home: &std::path::Path, message: &str) {
    use cairn_ledger::state::{AnchorRecord, StateKey};
    let history =
        cairn_store::Store::open(&home.join("net").join("history.redb"), cairn_proto::Limits::default())
            .unwrap();
    let id = cairn_proto::Id(hex::decode(message).unwrap().try_into().unwrap());
    let topic = history.get(&id).unwrap().expect("the message's envelope").header.topic;
    let mut ids = HashSet::new();
    let mut from = 0;
    loop {
        let page = history.page(&topic, from, 256).unwrap();
        ids.extend(page.entries.iter().map(|(_, e)| e.id()));
        match page.next {
            Some(n) => from = n,
            None => break,
        }
    }
    let genesis = cairn_ledger::genesis::Genesis::load(&net.genesis).unwrap();
    let mut ledger = cairn_ledger::rpc::LedgerClient::new(&genesis).unwrap();
    let record = ledger.prove(&StateKey::Anchor(topic)).unwrap().expect("an anchor on the ledger");
    let anchor = AnchorRecord::decode(&record).unwrap();
    assert!(anchor.count >= 1 && anchor.count <= ids.len() as u64, "count {} of {}", anchor.count, ids.len());
    assert!(!ids.contains(&anchor.head), "the ledger names an envelope id of the history in clear");
}

fn cairn_at(home: &std::path::Path, args: &[&str], pass: &str) -> std::process::Output {
    Command::new(BIN).arg("--home").arg(home).args(args).env("CAIRN_PASSPHRASE", pass).output().unwrap()
}

/// Export, then import on a "fresh machine" (another home): the conversation, its messages in
/// order (an erased one stays erased) and `verify` come back the same. A tampered archive or a
/// wrong passphrase imports nothing.
#[test]
fn an_export_imports_elsewhere_with_the_same_history() {
    let mut net = Net::new(4);
    for i in 0..3 {
        net.store(&format!("store-{i}"));
    }
    let a = net.user("ann");
    let b = net.user("ben");
    let conv = a.create_conversation(&["@ben".into()]).unwrap().id;
    wait_for("ben to join", Duration::from_secs(90), || {
        b.conversations().ok()?.into_iter().find(|v| v.id == conv && v.active)
    });
    let mut erased = String::new();
    for i in 0..20 {
        let who = if i % 2 == 0 { &a } else { &b };
        let r = who.send(&conv, &format!("portable {i}")).unwrap();
        if i == 4 {
            erased = r.id;
        }
    }
    wait_for("ann to read all 20", Duration::from_secs(60), || {
        (all_messages(&a, &conv).len() >= 20).then_some(())
    });
    a.erase(&conv, &erased).unwrap();
    let before = wait_for("the erasure", Duration::from_secs(30), || {
        let m = all_messages(&a, &conv);
        (m.len() == 19).then_some(m)
    });
    // 20 messages and the redaction, once the mesh has written the redaction locally, and an
    // anchor (every 5 s) that `verify` found in it.
    let v_before =
        wait_for("ann's history to hold 21 envelopes and an anchor", Duration::from_secs(60), || {
            a.verify(&conv).ok().filter(|v| v.envelopes == 21 && v.anchors == 1)
        });
    assert!(v_before.intact, "{:?}", v_before.first_problem);
    net.stop("ann");
    assert_anchor_is_salted(&net, &net.path("ann"), &before[0].id);

    let archive = net.path("ann.cairn-export");
    let out = cairn_at(&net.path("ann"), &["export", "--out", archive.to_str().unwrap()], PASS);
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    // Bad input changes nothing: a wrong passphrase, a changed byte.
    let out = cairn_at(&net.path("ann-bad"), &["import", archive.to_str().unwrap()], "not the passphrase");
    assert!(!out.status.success());
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let tampered = net.path("tampered.cairn-export");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = cairn_at(&net.path("ann-bad"), &["import", tampered.to_str().unwrap()], PASS);
    assert!(!out.status.success());
    assert!(!net.path("ann-bad").join("keystore").exists(), "a refused import wrote a keystore");

    let out = cairn_at(&net.path("ann2"), &["import", archive.to_str().unwrap()], PASS);
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    net.node("ann2", &[]);
    let a2 = Client::for_home(&net.path("ann2")).unwrap();
    let after = all_messages(&a2, &conv);
    let key = |m: &MessageView| (m.id.clone(), m.text.clone(), m.sender.clone(), m.timestamp_ms);
    assert_eq!(after.iter().map(key).collect::<Vec<_>>(), before.iter().map(key).collect::<Vec<_>>());
    assert!(!after.iter().any(|m| m.id == erased), "the erased message stays erased");
    let v_after = a2.verify(&conv).unwrap();
    assert!(v_after.intact, "{:?}", v_after.first_problem);
    assert_eq!(
        (v_after.envelopes, v_after.signatures_verified, v_after.erased, v_after.anchors),
        (v_before.envelopes, v_before.signatures_verified, v_before.erased, v_before.anchors),
        "the imported history verifies the same, its salted anchor included"
    );
}

/// The pinned policy judges received messages at every member's node (real processes): with
/// `moderation`, a word filter and a rate limit of 2, ben's filtered message is held at ann,
/// ben and cat (not in the history, listed by `GET …/held` and `cairn chat held`), his first
/// shows with verdict `allow`, his third is denied (listed with the reason, its text gone,
/// `verify` intact); ann releases the held one on her device only.
#[test]
fn a_filtered_message_is_held_at_every_member() {
    let (net, a, b, c, conv) = three_members(2);
    let filter = PolicySetRequest {
        policy: "moderation".into(),
        admins: vec!["@ann".into()],
        words: vec!["spam".into()],
        max_messages: 2,
        window_ms: 600_000,
        ..Default::default()
    };
    assert_eq!(a.set_policy(&conv, &filter).unwrap().policy, "moderation");
    for (who, client) in [("ben", &b), ("cat", &c)] {
        wait_for(&format!("{who} to see the policy"), Duration::from_secs(60), || {
            (client.policy(&conv).ok()?.policy == "moderation").then_some(())
        });
    }
    // A rate limit's window starts afresh at each epoch (a documented limit of the policy
    // runner): the three sends must fall in one epoch, so the joiners' key updates (which can
    // lose their slot to ann's policy commit and land later, as under a loaded CI rehearsal)
    // settle first: all three on one epoch, unchanged for 3 s.
    let mut last = (Vec::new(), Instant::now());
    wait_for("the members' epochs to settle", Duration::from_secs(90), || {
        let epochs: Vec<u64> = [&a, &b, &c]
            .iter()
            .map(|m| m.conversations().ok()?.into_iter().find(|v| v.id == conv).map(|v| v.epoch))
            .collect::<Option<_>>()?;
        if epochs != last.0 || epochs.iter().any(|e| *e != epochs[0]) {
            last = (epochs, Instant::now());
            return None;
        }
        (last.1.elapsed() >= Duration::from_secs(3)).then_some(())
    });
    let fine = b.send(&conv, "hello all").unwrap().id;
    let filtered = b.send(&conv, "buy SPAM now").unwrap().id;
    let over = b.send(&conv, "one too many").unwrap().id;
    for (who, client) in [("ann", &a), ("ben", &b), ("cat", &c)] {
        let shown =
            wait_for(&format!("{who} to show ben's allowed message"), Duration::from_secs(60), || {
                all_messages(client, &conv).into_iter().find(|m| m.id == fine)
            });
        assert_eq!(shown.verdict, Some(cairn_node::model::MessageVerdict::Allow), "{who}");
        let held =
            wait_for(&format!("{who} to hold ben's filtered message"), Duration::from_secs(60), || {
                client.held(&conv).ok()?.held.into_iter().find(|h| h.id == filtered && !h.waiting)
            });
        assert_eq!(held.text, "buy SPAM now", "{who}");
        assert_eq!(held.sender, b.status().unwrap().account, "{who}");
        assert!(!all_messages(client, &conv).iter().any(|m| m.id == filtered), "{who} shows a held message");
        let denied = wait_for(&format!("{who} to deny ben's third message"), Duration::from_secs(60), || {
            let held = client.held(&conv).ok()?;
            if let Some(w) = held.held.iter().find(|h| h.id == over) {
                eprintln!("{who}: ben's third message is held (waiting: {})", w.waiting);
            }
            assert!(
                !all_messages(client, &conv).iter().any(|m| m.id == over),
                "{who} allowed ben's third message: the rate limit did not count the first two"
            );
            held.denied.into_iter().find(|d| d.id == over)
        });
        assert!(denied.reason.starts_with("rate limit"), "{who}: {denied:?}");
        assert!(!all_messages(client, &conv).iter().any(|m| m.id == over), "{who} shows a denied message");
        let v = client.verify(&conv).unwrap();
        assert!(v.intact, "{who}: {:?}", v.first_problem);
    }
    let listing = cairn_at(&net.path("ann"), &["chat", "held", &conv], PASS);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.status.success() && text.contains(&format!("held {filtered}")), "{text}");
    let released = cairn_at(&net.path("ann"), &["chat", "held", &conv, "--release", &filtered], PASS);
    assert!(released.status.success(), "{}", String::from_utf8_lossy(&released.stderr));
    let shown = all_messages(&a, &conv).into_iter().find(|m| m.id == filtered).expect("released at ann");
    assert_eq!(shown.verdict, Some(cairn_node::model::MessageVerdict::Released));
    assert!(!all_messages(&b, &conv).iter().any(|m| m.id == filtered), "released beyond ann's device");
    let v = a.verify(&conv).unwrap();
    assert!(v.intact, "{:?}", v.first_problem);
}
