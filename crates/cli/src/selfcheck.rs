//! `cairn selfcheck`: identities, keystore, wire format, PoW, durable store and history
//! verification, exercised end to end with every result checked.

use std::collections::{BTreeSet, HashSet};
use std::time::Instant;

use anyhow::{Result, bail};
use cairn_crypto::{Identity, KdfParams};
use cairn_proto::history::{Anchor, PlainOpener, Problem, VerifyOptions, verify};
use cairn_proto::pow::{self, Difficulty};
use cairn_proto::{Envelope, Id, Limits, Message, Topic};
use cairn_store::Store;

struct Steps {
    n: usize,
    failed: Vec<String>,
}

impl Steps {
    fn check(&mut self, name: &str, started: Instant, ok: bool, detail: String) {
        self.n += 1;
        let mark = if ok { "ok  " } else { "FAIL" };
        println!(
            "[{mark}] {:>2}. {name:<52} {:>8.1} ms  {detail}",
            self.n,
            started.elapsed().as_secs_f64() * 1e3
        );
        if !ok {
            self.failed.push(name.to_string());
        }
    }
}

fn check_problem(r: &cairn_proto::Report, want: impl Fn(&Problem) -> bool) -> (bool, String) {
    let found = r.problems.iter().find(|p| want(p));
    (found.is_some(), found.map(|p| p.to_string()).unwrap_or_else(|| format!("{:?}", r.problems)))
}

pub(crate) fn run(messages: u32) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits::default();
    let mut s = Steps { n: 0, failed: vec![] };
    println!("cairn selfcheck in {}", dir.path().display());

    let t = Instant::now();
    let users: Vec<Identity> =
        (0..3).map(|_| Identity::generate(super::home::now_ms())).collect::<Result<_, _>>()?;
    let certs_ok = users.iter().all(|u| u.cert.verify().is_ok());
    s.check("3 accounts + device certificates", t, certs_ok, users[0].account().to_text());

    let t = Instant::now();
    let ks = dir.path().join("keystore");
    users[0].create_file(&ks, b"correct horse", KdfParams::default())?;
    let reopened = Identity::open_file(&ks, b"correct horse")?;
    let wrong = Identity::open_file(&ks, b"battery staple").is_err();
    let again = users[1].create_file(&ks, b"x", KdfParams::default()).is_err();
    s.check(
        "keystore: argon2id + XChaCha20-Poly1305, 0600",
        t,
        reopened.account() == users[0].account() && wrong && again,
        "wrong passphrase and overwrite refused".into(),
    );

    // A history with concurrent branches: every fourth message is sent concurrently with the
    // one before it (same parents), and the next message merges both branches.
    let t = Instant::now();
    let topic = Topic::for_conversation(&cairn_crypto::keystore::random_bytes::<32>()?);
    let mut history: Vec<Envelope> = Vec::new();
    let mut heads: BTreeSet<Id> = BTreeSet::new();
    let mut last_parents: Vec<Id> = Vec::new();
    let difficulty = Difficulty::default();
    let mut hashes = 0u64;
    for i in 0..messages {
        let who = (i as usize * 7 + i as usize / 3) % users.len();
        let u = &users[who];
        let concurrent = i % 4 == 1 && i + 1 < messages;
        let parents: Vec<Id> =
            if concurrent { last_parents.clone() } else { heads.iter().copied().collect() };
        let body = format!("message {i} from user {who}");
        let msg = Message::sign(
            &u.device_key,
            u.cert,
            topic,
            1_764_000_000_000 + u64::from(i),
            parents.clone(),
            body.into_bytes(),
        );
        let mut env = msg.seal_plain(86_400, &limits)?;
        hashes += pow::mine(&mut env.header, difficulty, 1 << 32).unwrap_or(0);
        for p in &parents {
            heads.remove(p);
        }
        heads.insert(env.id());
        last_parents = parents;
        history.push(env);
    }
    let pow_ok = history.iter().all(|e| pow::check(&e.header, difficulty));
    s.check(
        "signed hash-linked history with PoW",
        t,
        pow_ok,
        format!("{messages} envelopes, {:.0} hashes/envelope", hashes as f64 / f64::from(messages.max(1))),
    );

    let t = Instant::now();
    let path = dir.path().join("store.redb");
    {
        let store = Store::open(&path, limits)?;
        for chunk in history.chunks(16) {
            store.append(chunk)?;
        }
    }
    let store = Store::open(&path, limits)?;
    let mut stored: Vec<(Id, Envelope)> = Vec::new();
    let mut cursor = Some(0);
    while let Some(c) = cursor {
        let page = store.page(&topic, c, 64)?;
        stored.extend(page.entries.into_iter().map(|(_, e)| (e.id(), e)));
        cursor = page.next;
    }
    let consistent = store.check()?.problems.is_empty();
    s.check(
        "redb store: append, reopen, page by cursor",
        t,
        stored.len() == history.len() && consistent,
        format!("{} envelopes", stored.len()),
    );

    let members: HashSet<_> = users.iter().map(Identity::account).collect();
    let full = |entries: &[(Id, Envelope)], anchors: &[Anchor]| {
        let mut opener = PlainOpener;
        verify(
            &topic,
            entries,
            VerifyOptions { opener: Some(&mut opener), members: Some(&members), anchors, limits },
        )
    };
    let t = Instant::now();
    let r = full(&stored, &[]);
    let anchors: Vec<Anchor> =
        r.heads.iter().map(|h| Anchor { head: *h, count: stored.len() as u64 }).collect();
    let r = full(&stored, &anchors);
    s.check(
        "verify: ids, payload hashes, links, signatures",
        t,
        r.is_intact() && r.signatures_verified == history.len() && r.heads.len() == 1,
        format!("{} signatures, {} head(s)", r.signatures_verified, r.heads.len()),
    );

    let mut tampered = stored.clone();
    if let Some(p) = tampered[5].1.payload.as_mut() {
        p[40] ^= 1;
    }
    let t = Instant::now();
    let (ok, d) = check_problem(&full(&tampered, &anchors[..1]), |p| {
        matches!(p, Problem::PayloadHashMismatch { index: 5, .. })
    });
    s.check("detects a changed payload byte", t, ok, d);

    let mut tampered = stored.clone();
    tampered[7].1.header.timestamp_ms ^= 1;
    let t = Instant::now();
    let (ok, d) =
        check_problem(&full(&tampered, &anchors[..1]), |p| matches!(p, Problem::IdMismatch { index: 7, .. }));
    s.check("detects a changed header byte", t, ok, d);

    let mut tampered = stored.clone();
    let gone = tampered.remove(messages as usize / 2).0;
    let t = Instant::now();
    let (ok, d) = check_problem(
        &full(&tampered, &anchors[..1]),
        |p| matches!(p, Problem::Gap { missing, .. } if *missing == gone),
    );
    s.check("detects a deleted envelope (gap)", t, ok, d);

    let mut tampered = stored.clone();
    tampered.push(tampered[3].clone());
    let t = Instant::now();
    let (ok, d) = check_problem(&full(&tampered, &anchors[..1]), |p| matches!(p, Problem::Replayed { .. }));
    s.check("detects a replayed envelope", t, ok, d);

    let mut tampered = stored.clone();
    tampered.swap(1, 2);
    let t = Instant::now();
    let r = full(&tampered, &anchors[..1]);
    let (ok, d) = check_problem(&r, |p| matches!(p, Problem::Reordered { .. }));
    s.check("detects a reordered envelope", t, ok, d);

    let mallory = Identity::generate(super::home::now_ms())?;
    let forged =
        Message::sign(&mallory.device_key, users[0].cert, topic, 1, vec![stored[0].0], b"forged".to_vec())
            .seal_plain(60, &limits)?;
    let outsider =
        Message::sign(&mallory.device_key, mallory.cert, topic, 2, vec![stored[0].0], b"outsider".to_vec())
            .seal_plain(60, &limits)?;
    let mut tampered = stored.clone();
    tampered.push((forged.id(), forged));
    tampered.push((outsider.id(), outsider));
    let t = Instant::now();
    let r = full(&tampered, &anchors[..1]);
    let forged_ok = r.problems.iter().any(|p| matches!(p, Problem::BadSignature { .. }));
    let outsider_ok = r.problems.iter().any(|p| matches!(p, Problem::UnknownSigner { .. }));
    s.check(
        "detects a forged signer and a non-member",
        t,
        forged_ok && outsider_ok,
        format!("{} problems", r.problems.len()),
    );

    let t = Instant::now();
    let victim = stored[10].0;
    store.erase_payload(&victim)?;
    let after: Vec<(Id, Envelope)> = stored
        .iter()
        .map(|(id, _)| Ok((*id, store.get(id)?.unwrap_or_else(|| stored[0].1.clone()))))
        .collect::<Result<_>>()?;
    let r = full(&after, &anchors[..1]);
    s.check(
        "erased payload: chain and anchor still verify",
        t,
        r.is_intact() && r.erased == vec![victim],
        format!("{} erased", r.erased.len()),
    );

    println!();
    if s.failed.is_empty() {
        println!("selfcheck passed: {} checks", s.n);
        Ok(())
    } else {
        bail!("selfcheck failed: {}", s.failed.join(", "))
    }
}
