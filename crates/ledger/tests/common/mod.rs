#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! A seeded deterministic network of 4 validators (commonware simplex + marshal + the ledger
//! over commonware's simulated p2p), shared by the multi-validator tests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_ledger::audit::check_no_fork;
use cairn_ledger::chain_store::ChainStore;
use cairn_ledger::core::{Ledger, TxStatus};
use cairn_ledger::genesis::{CONSENSUS_NAMESPACE, Genesis, ValidatorInfo};
use cairn_ledger::params::Params;
use cairn_ledger::tx::TxId;
use cairn_ledger::validator::{self, Behaviour, Timeouts, channel};
use cairn_proto::AccountId;
use cairn_proto::ed25519::SigningKey;
use commonware_consensus::simplex::mocks::conflicter;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_cryptography::{Sha256, Signer as _, ed25519};
use commonware_p2p::simulated::{self, Link, Network, Oracle};
use commonware_runtime::{Clock, Handle, Quota, Runner as _, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::{NZU32, NZUsize, probability};

pub const N: usize = 4;
pub const QUOTA: Quota = Quota::per_second(NZU32!(100_000));

pub fn link() -> Link {
    Link {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        success_rate: probability!(1.0),
    }
}

pub fn timeouts() -> Timeouts {
    Timeouts {
        leader: Duration::from_millis(500),
        certification: Duration::from_secs(1),
        retry: Duration::from_secs(2),
        skip: Duration::from_secs(3),
    }
}

/// Genesis balance of each simulated user.
pub const FUNDS: u64 = 1_000_000_000;

pub fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 100; 32])
}

pub struct Net {
    pub genesis: Genesis,
    pub keys: Vec<ed25519::PrivateKey>,
    pub oracle: Oracle<ed25519::PublicKey, deterministic::Context>,
    pub ledgers: Arc<Mutex<Vec<Option<Ledger>>>>,
    pub tasks: Vec<Option<Handle<()>>>,
    /// Each validator's chain store; like the simulated storage, it outlives a crash and is
    /// reopened by the restarted validator.
    pub stores: Vec<ChainStore>,
}

impl Net {
    pub async fn new(ctx: &deterministic::Context) -> Self {
        Self::with_params(ctx, Params::default()).await
    }

    /// A network whose genesis has `params`.
    pub async fn with_params(ctx: &deterministic::Context, params: Params) -> Self {
        let keys: Vec<ed25519::PrivateKey> = (0..N as u64).map(ed25519::PrivateKey::from_seed).collect();
        let validators = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ValidatorInfo {
                key: k.public_key(),
                p2p: format!("127.0.0.1:{}", 40000 + i).parse().unwrap(),
                rpc: format!("127.0.0.1:{}", 41000 + i).parse().unwrap(),
            })
            .collect();
        let accounts = (0..8).map(|i| (AccountId(user(i).verifying_key().to_bytes()), FUNDS)).collect();
        let genesis = Genesis { chain: "sim".into(), validators, accounts, params };
        let participants: Vec<ed25519::PublicKey> = keys.iter().map(|k| k.public_key()).collect();
        let (network, oracle) = Network::new_with_peers(
            ctx.child("network"),
            simulated::Config {
                max_size: validator::max_message_size(N as u32),
                max_peers_per_set: NZUsize!(N),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            participants.clone(),
        )
        .await;
        network.start();
        for a in &participants {
            for b in &participants {
                if a != b {
                    oracle.add_link(a.clone(), b.clone(), link()).await.unwrap();
                }
            }
        }
        Self {
            genesis,
            keys,
            oracle,
            ledgers: Arc::new(Mutex::new(vec![None; N])),
            tasks: (0..N).map(|_| None).collect(),
            stores: (0..N).map(|_| ChainStore::in_memory().unwrap()).collect(),
        }
    }

    pub async fn channels(
        &mut self,
        i: usize,
    ) -> Vec<(
        simulated::Sender<ed25519::PublicKey, deterministic::Context>,
        simulated::Receiver<ed25519::PublicKey>,
    )> {
        let control = self.oracle.control(self.keys[i].public_key());
        let mut out = Vec::new();
        for c in channel::ALL {
            out.push(control.register(c, QUOTA).await.unwrap());
        }
        out
    }

    /// Starts (or restarts, reusing its storage) validator `i`.
    pub async fn start(&mut self, ctx: &deterministic::Context, i: usize, behaviour: Behaviour) {
        let channels = self.channels(i).await;
        let control = self.oracle.control(self.keys[i].public_key());
        let manager = self.oracle.manager();
        let genesis = self.genesis.clone();
        let key = self.keys[i].clone();
        let slot = self.ledgers.clone();
        let store = self.stores[i].clone();
        let handle = ctx.child("validator").with_attribute("index", i).spawn(move |ctx| async move {
            let running = validator::start(
                ctx,
                &genesis,
                key,
                &format!("v{i}"),
                store,
                timeouts(),
                behaviour,
                cairn_ledger::app::Finalizing::Inline,
                control,
                manager,
                channels,
            )
            .await
            .expect("validator starts");
            slot.lock().unwrap()[i] = Some(running.ledger.clone());
            // keep this task (the parent of every actor) alive
            let _ = running.engine.await;
        });
        self.tasks[i] = Some(handle);
    }

    /// Starts a Byzantine validator `i` that sends conflicting votes (commonware's conflicter).
    pub async fn start_conflicter(&mut self, ctx: &deterministic::Context, i: usize) {
        let mut channels = self.channels(i).await;
        let scheme =
            Scheme::signer(CONSENSUS_NAMESPACE, self.genesis.participants().unwrap(), self.keys[i].clone())
                .unwrap();
        let votes = channels.remove(0);
        let engine: conflicter::Conflicter<_, _, Sha256> =
            conflicter::Conflicter::new(ctx.child("byzantine"), conflicter::Config { scheme });
        self.tasks[i] = Some(engine.start(votes));
    }

    pub fn crash(&mut self, i: usize) {
        if let Some(h) = self.tasks[i].take() {
            h.abort();
        }
        self.ledgers.lock().unwrap()[i] = None;
    }

    pub fn ledger(&self, i: usize) -> Option<Ledger> {
        self.ledgers.lock().unwrap()[i].clone()
    }

    pub fn heights(&self) -> Vec<Option<u64>> {
        self.ledgers.lock().unwrap().iter().map(|l| l.as_ref().map(|l| l.status().height)).collect()
    }

    /// Submits to every running validator (as the client library does).
    pub fn submit(&self, tx: &[u8]) {
        for l in self.ledgers.lock().unwrap().iter().flatten() {
            let _ = l.submit(tx.to_vec());
        }
    }

    /// Waits (bounded, in simulated time) until every validator in `who` reaches `height`.
    pub async fn wait_height(
        &self,
        ctx: &deterministic::Context,
        who: &[usize],
        height: u64,
        max: Duration,
    ) -> bool {
        let start = ctx.current();
        loop {
            let h = self.heights();
            if who.iter().all(|&i| h[i].is_some_and(|x| x >= height)) {
                return true;
            }
            if ctx.current().duration_since(start).unwrap_or_default() > max {
                return false;
            }
            ctx.sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every running validator's chain is fork-free and its ledger reports no fault.
    pub fn check_safety(&self) {
        let ledgers: Vec<Ledger> = self.ledgers.lock().unwrap().iter().flatten().cloned().collect();
        let chains: Vec<Vec<[u8; 32]>> = ledgers.iter().map(|l| l.chain_digests()).collect();
        check_no_fork(&chains).unwrap();
        for l in &ledgers {
            assert!(l.faults().is_empty(), "ledger faults: {:?}", l.faults());
        }
    }
}

pub fn run(
    seed: u64,
    f: impl FnOnce(deterministic::Context) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
) {
    let cfg = deterministic::Config::new().with_seed(seed).with_timeout(Some(Duration::from_secs(900)));
    deterministic::Runner::new(cfg).start(f);
}

impl Net {
    /// Waits (bounded, in simulated time) until every running validator has finalized every
    /// transaction of `ids`; panics after `max`.
    pub async fn wait_final(&self, ctx: &deterministic::Context, ids: &[TxId], max: Duration) {
        let start = ctx.current();
        loop {
            let ledgers: Vec<Ledger> = self.ledgers.lock().unwrap().iter().flatten().cloned().collect();
            if ledgers
                .iter()
                .all(|l| ids.iter().all(|id| matches!(l.tx_status(id), TxStatus::Finalized { .. })))
            {
                return;
            }
            assert!(ctx.current().duration_since(start).unwrap_or_default() < max, "transactions not final");
            ctx.sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits `txs` (encoded) to every validator, waits until all are final everywhere, checks
    /// every validator reports the same status for each, and returns validator 0's statuses.
    pub async fn finalize(&self, ctx: &deterministic::Context, txs: &[Vec<u8>]) -> Vec<TxStatus> {
        let ids: Vec<TxId> = txs.iter().map(|t| cairn_ledger::tx::Tx::id_of(t)).collect();
        for t in txs {
            self.submit(t);
        }
        self.wait_final(ctx, &ids, Duration::from_secs(60)).await;
        let ledgers: Vec<Ledger> = self.ledgers.lock().unwrap().iter().flatten().cloned().collect();
        ids.iter()
            .map(|id| {
                let s = ledgers[0].tx_status(id);
                for l in &ledgers[1..] {
                    assert_eq!(l.tx_status(id), s, "validators disagree on a transaction");
                }
                s
            })
            .collect()
    }

    /// The account id of simulated user `i`.
    pub fn account(i: u8) -> AccountId {
        AccountId(user(i).verifying_key().to_bytes())
    }
}
