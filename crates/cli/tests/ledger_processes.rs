#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Real processes on 127.0.0.1: four `cairn ledger validator` processes finalize; a client
//! submits transactions, uses the commit sequencer, follows blocks and verifies proofs; one
//! validator is SIGKILLed (the rest keep finalizing) and restarted (it catches up and still
//! knows what was finalized). Every child is killed when the test ends, pass or fail.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_ledger::endpoint::Endpoint;
use cairn_ledger::genesis::Genesis;
use cairn_ledger::rpc::{Follower, LedgerClient, LedgerSequencer, RemoteOutcome, RemoteStatus};
use cairn_ledger::tx::{Tx, TxBody};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::sequencer::{CommitSequencer, SequencerError, TopicKeys};
use cairn_proto::{AccountId, Topic};

/// Kills every child on drop.
struct Cluster {
    children: Vec<Option<Child>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_validator(dir: &Path, i: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("validator-{i}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["ledger", "validator", "--genesis"])
        .arg(dir.join("genesis.txt"))
        .arg("--key")
        .arg(dir.join(format!("validator-{i}.key")))
        .arg("--data")
        .arg(dir.join(format!("data-{i}")))
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, max: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < max, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn validators_as_processes_survive_sigkill_and_serve_clients() {
    let dir = tempfile::tempdir().unwrap();
    // Below the kernel's ephemeral range (32768+), where other tests' sockets cannot take
    // them, and checked free.
    let base_port = (0..400u32)
        .map(|i| 20_000 + ((std::process::id() + i * 7) % 1_200) as u16 * 10)
        .find(|b| (0..8).all(|k| std::net::TcpListener::bind(("127.0.0.1", b + k)).is_ok()))
        .expect("8 free ports below 32768");
    // The genesis names the validators by DNS name (`localhost`): the validators resolve their
    // peers' names at start, and every client resolves the RPC names when it connects.
    let addrs: Vec<String> = (0..4).map(|i| format!("localhost:{}", base_port + 2 * i)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["ledger", "genesis", "--validators", "4", "--addr", &addrs.join(","), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "genesis: {}", String::from_utf8_lossy(&out.stderr));
    let genesis = Genesis::load(&dir.path().join("genesis.txt")).unwrap();
    assert!(genesis.validators.iter().all(|v| {
        matches!(&v.p2p, Endpoint::Name { host, .. } if host == "localhost")
            && v.p2p.resolve().unwrap().ip().is_loopback()
            && v.rpc.port() == v.p2p.port() + 1
    }));

    let mut cluster = Cluster { children: (0..4).map(|i| Some(spawn_validator(dir.path(), i))).collect() };
    let mut client = LedgerClient::new(&genesis).unwrap();
    wait_until("first finalized blocks", Duration::from_secs(180), || {
        (0..4).all(|i| client.status_at(i).map(|s| s.height >= 2).unwrap_or(false))
    });

    // a non-validator client registers an account and waits for finality
    let chain = client.chain();
    let key = SigningKey::from_bytes(&[42; 32]);
    let me = AccountId(key.verifying_key().to_bytes());
    let reg = Tx::sign(chain, me, &key, 0, TxBody::RegisterAccount).encode();
    let id = client.submit(&reg).unwrap();
    let (reg_height, outcome) = client.wait_final(&id, Duration::from_secs(30)).unwrap();
    assert_eq!(outcome, RemoteOutcome::Applied);
    // an invalid transaction is refused with its reason
    let replay = client.submit(&reg).err();
    assert!(replay.is_none() || format!("{replay:?}").contains("nonce"), "{replay:?}");

    // verified reads: the account exists with no devices; a handle is proven free
    wait_until("a certified proof", Duration::from_secs(30), || client.devices(&me).is_ok());
    assert_eq!(client.devices(&me).unwrap(), Some(vec![]));
    assert_eq!(client.handle_owner("nobody").unwrap(), None);

    // the commit sequencer: compare-and-swap per topic, topic writes that name no account
    // (signed with the conversation's founder key; an outsider's key is refused, typed; a
    // commit on a taken position is refused and proven stale by the topic's proven count)
    let conv = [9; 32];
    let topic = Topic::for_conversation(&conv);
    let member = TopicKeys { seed: cairn_proto::id::founder_seed(&conv), next: None };
    let mut seq = LedgerSequencer::new(LedgerClient::new(&genesis).unwrap());
    let outsider = TopicKeys { seed: [5; 32], next: None };
    assert_eq!(seq.submit(topic, 0, b"junk".to_vec(), outsider), Err(SequencerError::NotMember));
    assert_eq!(seq.submit(topic, 0, b"commit-0".to_vec(), member).unwrap(), 0);
    assert_eq!(
        seq.submit(topic, 0, b"late".to_vec(), member),
        Err(SequencerError::Stale { after: 0, current: 1 })
    );
    assert_eq!(seq.submit(topic, 1, b"commit-1".to_vec(), member).unwrap(), 1);
    // Reads are served at a validator's latest certified height, which may trail the block
    // that finalized commit-1 by a block: fetch is eventually complete, never wrong.
    let mut got = Vec::new();
    wait_until("both handshakes readable", Duration::from_secs(30), || {
        got = seq.fetch(&topic, 0, 10).unwrap_or_default();
        got.len() >= 2
    });
    assert_eq!(
        got.iter().map(|s| (s.seq, s.payload.clone())).collect::<Vec<_>>(),
        vec![(0, b"commit-0".to_vec()), (1, b"commit-1".to_vec())]
    );

    // the follower sees the registration in the finalized chain
    let mut follower = Follower::new(1);
    let mut seen = false;
    for _ in 0..50 {
        for b in follower.poll(&mut client, 256).unwrap() {
            seen |= b.txs.iter().any(|t| Tx::id_of(t) == id);
        }
        if follower.next_height() > reg_height {
            break;
        }
    }
    assert!(seen, "registration not in the followed chain");

    // SIGKILL validator 3: the other three keep finalizing
    let mut victim = cluster.children[3].take().unwrap();
    victim.kill().unwrap();
    victim.wait().unwrap();
    let h0 = client.status_at(0).unwrap().height;
    let n = client.nonce(&me.0).unwrap();
    let t =
        Tx::sign(chain, me, &key, n, TxBody::PublishKeyPackages { batch_hash: [1; 32], count: 4 }).encode();
    let tid = client.submit(&t).unwrap();
    let (th, _) = client.wait_final(&tid, Duration::from_secs(60)).unwrap();
    assert!(th > h0 || th >= reg_height);
    wait_until("progress with 3 of 4", Duration::from_secs(60), || {
        client.status_at(0).map(|s| s.height >= h0 + 3).unwrap_or(false)
    });

    // restart it from its data directory: it catches up and knows what was finalized
    cluster.children[3] = Some(spawn_validator(dir.path(), 3));
    let target = client.status_at(0).unwrap().height;
    wait_until("the restarted validator to catch up", Duration::from_secs(90), || {
        client.status_at(3).map(|s| s.height >= target).unwrap_or(false)
    });
    assert!(matches!(client.tx_status_at(3, &id).unwrap(), RemoteStatus::Finalized { .. }));
    assert!(matches!(client.tx_status_at(3, &tid).unwrap(), RemoteStatus::Finalized { .. }));
    // every validator put the transactions at the same heights
    let heights: Vec<RemoteStatus> = (0..4).map(|i| client.tx_status_at(i, &tid).unwrap()).collect();
    assert!(heights.windows(2).all(|w| w[0] == w[1]), "{heights:?}");
}
