//! Scale bench: Cairn conversations (redb storage, sequencer, out-of-band ratchet tree) beside
//! raw OpenMLS 0.9 (in-memory storage, ratchet tree in the Welcome), at several group sizes.
//! Prints a table; not a timed test.
//!
//! ```sh
//! cargo bench -p cairn-mls --bench scale                 # N = 2, 10, 100, 1000
//! cargo bench -p cairn-mls --bench scale -- 10000        # chosen sizes
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use cairn_mls::{
    CIPHERSUITE, Client, Config, ConversationId, DeviceSigner, MemorySequencer, VerifiedKeyPackage,
    WelcomeBundle, verify_key_package,
};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{DeviceCert, DeviceId};
use openmls::prelude::{
    KeyPackage, LeafNodeIndex, LeafNodeParameters, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, StagedWelcome,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider as _;
use tls_codec::{DeserializeBytes as _, Serialize as _};

const NOW: u64 = 1_800_000_000_000;
const BODY: usize = 1024;
/// The authenticated data bound to each message (the node binds a 32-byte header hash).
const AAD: &[u8] = &[0xA5; 32];
/// Application messages encrypted / decrypted per transaction.
const BATCH: usize = 250;

fn key() -> SigningKey {
    SigningKey::from_bytes(&cairn_crypto::keystore::random_bytes::<32>().unwrap())
}

fn signer(account: &SigningKey) -> DeviceSigner {
    let k = key();
    let cert = DeviceCert::issue(account, DeviceId(k.verifying_key().to_bytes()), NOW);
    DeviceSigner::new(k, cert).unwrap()
}

/// Key packages of `n` devices that exist only as key packages (they never join).
fn virtual_packages(n: usize) -> Vec<VerifiedKeyPackage> {
    let provider = OpenMlsRustCrypto::default();
    let account = key();
    (0..n)
        .map(|_| {
            let s = signer(&account);
            let b = KeyPackage::builder()
                .leaf_node_capabilities(cairn_mls::leaf_capabilities())
                .key_package_lifetime(cairn_mls::clock_free_lifetime())
                .build(CIPHERSUITE, &provider, &s, s.credential_with_key())
                .unwrap();
            verify_key_package(&b.key_package().tls_serialize_detached().unwrap()).unwrap()
        })
        .collect()
}

fn client(dir: &tempfile::TempDir, name: &str) -> Client {
    let db = redb::Database::create(dir.path().join(name)).unwrap();
    let mut config = Config::default();
    if let Some(k) = std::env::var("CAIRN_PAST_EPOCHS").ok().and_then(|v| v.parse().ok()) {
        config.past_epochs_max = k;
    }
    Client::open(Arc::new(db), signer(&key()), config).unwrap()
}

#[derive(Default)]
struct Row {
    create_ms: f64,
    create_commit_b: usize,
    create_welcome_b: usize,
    join_ms: f64,
    ops: [(f64, f64, usize); 4], // add, remove, update (creator), update (member): create ms, process ms, bytes
    add_welcome_b: usize,
    msgs_per_s: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Leaves whose self-update fills the copath of each leaf in `targets` (the leftmost member of
/// every non-empty sibling subtree), in a tree of `n` members (leaves `0..n`).
fn copath_fillers(targets: &[usize], n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for &t in targets {
        for k in 0..usize::BITS {
            let start = ((t >> k) ^ 1) << k;
            if (1usize << k) >= 2 * n.next_power_of_two() {
                break;
            }
            if start < n && !targets.contains(&start) && !out.contains(&start) {
                out.push(start);
            }
        }
    }
    out.sort_unstable();
    out
}

fn stats_line(what: &str, per: usize, st: &cairn_mls::StorageStats) {
    let per_op = |x: u64| x as f64 / per as f64;
    let w: Vec<String> = st
        .writes
        .iter()
        .map(|(l, c)| {
            format!(
                "{l} {:.1}×{:.0} B {:.2} ms",
                per_op(c.calls),
                c.bytes as f64 / c.calls.max(1) as f64,
                per_op(c.nanos) / 1e6
            )
        })
        .collect();
    let reads: u64 = st.reads.values().map(|c| c.calls).sum();
    let read_ns: u64 = st.reads.values().map(|c| c.nanos).sum();
    let enc: u64 = st.writes.values().map(|c| c.nanos).sum();
    println!(
        "    {what}: per op: encode {:.2} ms, decode {:.2} ms, db {:.2} ms; writes [{}], deferred {:.1}, reads {:.1}, db txns {:.3}, db entries {:.1}, db bytes {:.0}, unchanged skipped {:.1}",
        per_op(enc) / 1e6,
        per_op(read_ns) / 1e6,
        per_op(st.flush_nanos) / 1e6,
        w.join(", "),
        per_op(st.deferred),
        per_op(reads),
        per_op(st.flushes),
        per_op(st.flushed_entries),
        per_op(st.flushed_bytes),
        per_op(st.unchanged_skipped),
    );
}

/// Times and sizes of add 1 / remove 1 / update (creator) / update (member) in the current tree.
fn cairn_ops(
    a: &mut Client,
    b: &mut Client,
    seq: &mut MemorySequencer,
    id: &ConversationId,
    row: &mut Row,
    verbose: bool,
) {
    let sync = |c: &mut Client, seq: &MemorySequencer, id: &ConversationId| {
        let t = Instant::now();
        c.sync(id, seq, NOW).unwrap();
        ms(t)
    };
    let reset = |a: &Client, b: &Client| {
        a.provider().storage().reset_stats();
        b.provider().storage().reset_stats();
    };
    let show = |what: &str, a: &Client, b: &Client| {
        if verbose {
            stats_line(&format!("{what} create"), 1, &a.provider().storage().stats());
            stats_line(&format!("{what} process"), 1, &b.provider().storage().stats());
        }
    };
    // add one
    let x = virtual_packages(1).remove(0);
    let xdev = x.cert.device;
    reset(a, b);
    let t = Instant::now();
    let out = a.add(id, vec![x], seq, NOW).unwrap().unwrap();
    let c = ms(t);
    row.add_welcome_b = WelcomeBundle::decode(&out.welcome.unwrap().bytes).unwrap().welcome.len();
    row.ops[0] = (c, sync(b, seq, id), out.commit_bytes);
    show("add", a, b);
    // remove it
    reset(a, b);
    let t = Instant::now();
    let out = a.commit(id, cairn_mls::Change::RemoveDevice(xdev), seq, NOW).unwrap().unwrap();
    let c = ms(t);
    row.ops[1] = (c, sync(b, seq, id), out.commit_bytes);
    show("remove", a, b);
    // self-update by the creator, then by the member
    reset(a, b);
    let t = Instant::now();
    let out = a.self_update(id, seq, NOW).unwrap().unwrap();
    let c = ms(t);
    row.ops[2] = (c, sync(b, seq, id), out.commit_bytes);
    show("update", a, b);
    let t = Instant::now();
    let out = b.self_update(id, seq, NOW).unwrap().unwrap();
    let c = ms(t);
    row.ops[3] = (c, sync(a, seq, id), out.commit_bytes);
}

/// Returns the row in the sparse tree left by bulk adds, and the row after the members whose
/// scheduled self-update fills the copath of the measured commits have done it.
fn cairn(n: usize, msgs: usize) -> (Row, Row) {
    let dir = tempfile::tempdir().unwrap();
    // The protocol limit is 64 KiB; commits in a sparse tree outgrow it near N = 700, so the
    // bench lifts it to report what those commits cost (sizes are printed).
    let mut seq = MemorySequencer::with_max(64 << 20);
    let mut a = client(&dir, "a.redb");
    let mut b = client(&dir, "b.redb");
    // B is leaf 1 (the first one added), the virtual members leaves 2..n.
    // The virtual members whose places the copath fillers take later belong to one account of
    // their own, so that one commit removes them all.
    let leaves = copath_fillers(&[0, 1, n], n);
    let bkp = b.key_package_batch(1, false).unwrap().packages.remove(0);
    let mut kps = vec![verify_key_package(&bkp).unwrap()];
    let mut victims = virtual_packages(leaves.len()).into_iter();
    let victim_account = victims.clone().next().map(|k| k.cert.account);
    let mut others = virtual_packages(n.saturating_sub(2 + leaves.len())).into_iter();
    for leaf in 2..n {
        kps.push(if leaves.contains(&leaf) { victims.next() } else { others.next() }.unwrap());
    }
    let mut row = Row::default();

    let t = Instant::now();
    let id = a.create(NOW).unwrap();
    let outs = a.add_many(&id, kps.clone(), &mut seq, NOW).unwrap();
    row.create_ms = ms(t);
    row.create_commit_b = outs.iter().map(|o| o.commit_bytes).max().unwrap();
    let w = outs[0].welcome.clone().unwrap();
    row.create_welcome_b = outs
        .iter()
        .map(|o| WelcomeBundle::decode(&o.welcome.as_ref().unwrap().bytes).unwrap().welcome.len())
        .max()
        .unwrap();
    println!("    N={n}: group created in {} commits", outs.len());
    let t = Instant::now();
    b.join(&w.bytes, NOW).unwrap();
    row.join_ms = ms(t) + {
        // B joined from the first Welcome: catching up on the later ones is part of its join.
        let t = Instant::now();
        b.sync(&id, &seq, NOW).unwrap();
        ms(t)
    };

    cairn_ops(&mut a, &mut b, &mut seq, &id, &mut row, true);

    // application messages: encrypt at A, decrypt at B, BATCH per transaction
    let body = vec![7u8; BODY];
    a.provider().storage().reset_stats();
    b.provider().storage().reset_stats();
    let t = Instant::now();
    let mut done = 0;
    while done < msgs {
        let bodies: Vec<(&[u8], &[u8])> =
            (0..BATCH.min(msgs - done)).map(|_| (body.as_slice(), AAD)).collect();
        let cts = a.send_many(&id, &bodies).unwrap();
        let refs: Vec<(&[u8], &[u8])> = cts.iter().map(|c| (c.as_slice(), AAD)).collect();
        for r in b.receive_many(&id, &refs) {
            assert!(matches!(r, Ok(cairn_mls::Received::Message(_))));
        }
        done += bodies.len();
    }
    row.msgs_per_s = msgs as f64 / t.elapsed().as_secs_f64();
    stats_line(&format!("encrypt ({BATCH}/txn)"), msgs, &a.provider().storage().stats());
    stats_line(&format!("decrypt ({BATCH}/txn)"), msgs, &b.provider().storage().stats());
    // One message per transaction, for comparison.
    let single = 50;
    a.provider().storage().reset_stats();
    b.provider().storage().reset_stats();
    let t = Instant::now();
    for _ in 0..single {
        let ct = a.send(&id, &body, AAD).unwrap();
        assert!(matches!(b.receive(&id, &ct, AAD), Ok(cairn_mls::Received::Message(_))));
    }
    println!("    N={n}: 1 msg/txn: {:.0} msg/s", single as f64 / t.elapsed().as_secs_f64());
    stats_line("encrypt (1/txn)", single, &a.provider().storage().stats());
    stats_line("decrypt (1/txn)", single, &b.provider().storage().stats());

    // Keep the tree full: members who joined do their scheduled self-update. Only the members
    // whose update fills the copath of A (leaf 0), B (leaf 1) and the next added leaf (n) are
    // real clients here; they take the places of virtual members (removed, then re-added in one
    // commit so they land on the same leaves).
    let mut full = Row::default();
    let t = Instant::now();
    let mut fillers: Vec<Client> = Vec::new();
    if let Some(account) = victim_account {
        a.remove_account(&id, account, &mut seq, NOW).unwrap().unwrap();
        let mut fkps = Vec::new();
        for i in 0..leaves.len() {
            let c = client(&dir, &format!("f{i}.redb"));
            fkps.push(verify_key_package(&c.key_package_batch(1, false).unwrap().packages[0]).unwrap());
            fillers.push(c);
        }
        let out = a.add(&id, fkps, &mut seq, NOW).unwrap().unwrap();
        let wb = out.welcome.unwrap().bytes;
        for (i, f) in fillers.iter_mut().enumerate() {
            let t = Instant::now();
            f.join(&wb, NOW).unwrap();
            if i == 0 {
                // A join from a Welcome of the current epoch (no catching up).
                full.join_ms = ms(t);
            }
        }
        for (f, l) in fillers.iter().zip(&leaves) {
            assert_eq!(f.group(&id).unwrap().own_leaf_index().usize(), *l);
        }
        for f in &mut fillers {
            assert!(f.due_for_update(&id, NOW).unwrap());
            f.self_update(&id, &mut seq, NOW).unwrap().unwrap();
        }
    }
    a.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    b.self_update(&id, &mut seq, NOW).unwrap().unwrap();
    a.sync(&id, &seq, NOW).unwrap();
    println!(
        "    N={n}: {} members self-updated to fill the copaths of leaves 0, 1, {n} in {:.0} ms",
        leaves.len(),
        ms(t)
    );
    drop(fillers);
    full.create_ms = f64::NAN;
    cairn_ops(&mut a, &mut b, &mut seq, &id, &mut full, true);
    full.msgs_per_s = f64::NAN;
    (row, full)
}

fn raw(n: usize, msgs: usize) -> Row {
    let pa = OpenMlsRustCrypto::default();
    let pb = OpenMlsRustCrypto::default();
    let account = key();
    let sa = signer(&account);
    let sb = signer(&key());
    let mut kps: Vec<KeyPackage> = virtual_packages(n.saturating_sub(2)).iter().map(raw_kp).collect();
    kps.push(
        KeyPackage::builder()
            .leaf_node_capabilities(cairn_mls::leaf_capabilities())
            .build(CIPHERSUITE, &pb, &sb, sb.credential_with_key())
            .unwrap()
            .key_package()
            .clone(),
    );
    let cfg =
        MlsGroupCreateConfig::builder().ciphersuite(CIPHERSUITE).use_ratchet_tree_extension(true).build();
    let mut row = Row::default();
    let t = Instant::now();
    let mut ga = MlsGroup::new(&pa, &sa, &cfg, sa.credential_with_key()).unwrap();
    let (commit, welcome, _) = ga.add_members(&pa, &sa, &kps).unwrap();
    ga.merge_pending_commit(&pa).unwrap();
    row.create_ms = ms(t);
    row.create_commit_b = commit.tls_serialize_detached().unwrap().len();
    let wbytes = welcome.tls_serialize_detached().unwrap();
    row.create_welcome_b = wbytes.len();
    let t = Instant::now();
    let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact_bytes(&wbytes).unwrap().extract()
    else {
        panic!()
    };
    let mut gb = StagedWelcome::new_from_welcome(&pb, &MlsGroupJoinConfig::default(), w, None)
        .unwrap()
        .into_group(&pb)
        .unwrap();
    row.join_ms = ms(t);

    let process = |g: &mut MlsGroup, p: &OpenMlsRustCrypto, bytes: &[u8]| {
        let t = Instant::now();
        let m =
            MlsMessageIn::tls_deserialize_exact_bytes(bytes).unwrap().try_into_protocol_message().unwrap();
        let pm = g.process_message(p, m).unwrap();
        let ProcessedMessageContent::StagedCommitMessage(sc) = pm.into_content() else { panic!() };
        g.merge_staged_commit(p, *sc).unwrap();
        ms(t)
    };
    let x = raw_kp(&virtual_packages(1)[0]);
    let t = Instant::now();
    let (commit, welcome, _) = ga.add_members(&pa, &sa, &[x]).unwrap();
    ga.merge_pending_commit(&pa).unwrap();
    let c = ms(t);
    row.add_welcome_b = welcome.tls_serialize_detached().unwrap().len();
    let cb = commit.tls_serialize_detached().unwrap();
    row.ops[0] = (c, process(&mut gb, &pb, &cb), cb.len());
    let last = LeafNodeIndex::new(u32::try_from(ga.members().count() - 1).unwrap());
    let t = Instant::now();
    let (commit, _, _) = ga.remove_members(&pa, &sa, &[last]).unwrap();
    ga.merge_pending_commit(&pa).unwrap();
    let c = ms(t);
    let cb = commit.tls_serialize_detached().unwrap();
    row.ops[1] = (c, process(&mut gb, &pb, &cb), cb.len());
    let t = Instant::now();
    let bundle = ga.self_update(&pa, &sa, LeafNodeParameters::default()).unwrap();
    ga.merge_pending_commit(&pa).unwrap();
    let c = ms(t);
    let cb = bundle.commit().tls_serialize_detached().unwrap();
    row.ops[2] = (c, process(&mut gb, &pb, &cb), cb.len());
    let t = Instant::now();
    let bundle = gb.self_update(&pb, &sb, LeafNodeParameters::default()).unwrap();
    gb.merge_pending_commit(&pb).unwrap();
    let c = ms(t);
    let cb = bundle.commit().tls_serialize_detached().unwrap();
    row.ops[3] = (c, process(&mut ga, &pa, &cb), cb.len());

    let body = vec![7u8; BODY];
    let t = Instant::now();
    for _ in 0..msgs {
        let m = ga.create_message(&pa, &sa, &body).unwrap().tls_serialize_detached().unwrap();
        let m = MlsMessageIn::tls_deserialize_exact_bytes(&m).unwrap().try_into_protocol_message().unwrap();
        let p = gb.process_message(&pb, m).unwrap();
        assert!(matches!(p.into_content(), ProcessedMessageContent::ApplicationMessage(_)));
    }
    row.msgs_per_s = msgs as f64 / t.elapsed().as_secs_f64();
    row
}

fn raw_kp(k: &VerifiedKeyPackage) -> KeyPackage {
    let kp_in = openmls::prelude::KeyPackageIn::tls_deserialize_exact_bytes(k.bytes()).unwrap();
    kp_in
        .validate(&openmls_rust_crypto::RustCrypto::default(), openmls::prelude::ProtocolVersion::Mls10)
        .unwrap()
}

fn kb(b: usize) -> String {
    if b >= 10_000 { format!("{:.0}K", b as f64 / 1e3) } else { format!("{b}") }
}

fn print(who: &str, n: usize, r: &Row) {
    let op = |o: (f64, f64, usize)| format!("{:.1}/{:.1} {}", o.0, o.1, kb(o.2));
    println!(
        "| {n} | {who} | {:.0} | {} / {} | {:.0} | {} | {} | {} | {} | {} | {:.0} |",
        r.create_ms,
        kb(r.create_commit_b),
        kb(r.create_welcome_b),
        r.join_ms,
        op(r.ops[0]),
        kb(r.add_welcome_b),
        op(r.ops[1]),
        op(r.ops[2]),
        op(r.ops[3]),
        r.msgs_per_s
    );
}

/// Application messages are signed by the sender and verified by the receiver (RFC 9420
/// §6.1): one Ed25519 signature and one verification (with the key decoded from its bytes, as
/// OpenMLS does) per message is a floor no storage work can lower.
fn signature_floor(msgs: usize) -> f64 {
    use cairn_proto::ed25519::{Signer as _, VerifyingKey};
    let k = key();
    let vk = k.verifying_key().to_bytes();
    let body = vec![7u8; BODY + 100];
    let t = Instant::now();
    for _ in 0..msgs {
        let sig = k.sign(&body);
        VerifyingKey::from_bytes(&vk).unwrap().verify_strict(&body, &sig).unwrap();
    }
    msgs as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![2, 10, 100, 1000];
    }
    println!(
        "times in ms (create/process), sizes in bytes; app msgs: {BODY} B bodies, encrypt + decrypt, Cairn {BATCH} per transaction"
    );
    println!(
        "| N | impl | create group | largest create commit / welcome B | join ms | add 1 (ms/ms B) | add welcome B | remove 1 | update (creator) | update (member) | app msg/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!("    Ed25519 sign + verify alone (the per-message floor): {:.0} msg/s", signature_floor(2000));
    for n in sizes {
        let msgs = if n >= 5000 { 500 } else { 2000 };
        let (sparse, full) = cairn(n.max(2), msgs);
        print("Cairn sparse", n, &sparse);
        print("Cairn full", n, &full);
        if std::env::var_os("CAIRN_BENCH_NO_RAW").is_none() {
            print("raw OpenMLS", n, &raw(n.max(2), msgs));
        }
    }
}
