//! Wires one validator: commonware simplex (consensus on block digests) + marshal (block
//! dissemination, backfill, in-order finalized delivery, persistence) + the ledger application.
//!
//! The same function runs in the deterministic simulation (simulated p2p) and in a real process
//! (tokio runtime + authenticated p2p on loopback); only the channels and runtime differ.

use std::num::NonZeroUsize;
use std::time::Duration;

use commonware_broadcast::buffered;
use commonware_consensus::Reporters;
use commonware_consensus::marshal::core::{Actor, Mailbox};
use commonware_consensus::marshal::resolver::p2p as marshal_resolver;
use commonware_consensus::marshal::standard::{Inline, Standard};
use commonware_consensus::marshal::{Config as MarshalConfig, Start};
use commonware_consensus::simplex::config::{
    Config as SimplexConfig, Floor, ForwardPolicy, SkipBudget, SkipPolicy,
};
use commonware_consensus::simplex::elector::RoundRobin;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::{self};
use commonware_consensus::types::{Epoch, FixedEpocher, Height, ViewDelta};
use commonware_cryptography::certificate::{ConstantProvider, Verifier as _};
use commonware_cryptography::sha256::Digest;
use commonware_cryptography::{Digested, Sha256, Signer as _, ed25519};
use commonware_p2p::{Blocker, Provider, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, Metrics, Spawner, Storage};
use commonware_storage::archive::immutable;
use commonware_utils::{NZDuration, NZU16, NZU64, NZUsize};
use rand_core::CryptoRng;
use thiserror::Error;
use tracing::info;

use crate::app::{CertificateRecorder, Finalizer, Finalizing, LedgerApp};
use crate::block::{BLOCK_BYTES_MAX, Block};
use crate::chain_store::ChainStore;
use crate::core::{Ledger, MempoolLimits, OpenError};
use crate::genesis::{CONSENSUS_NAMESPACE, Genesis, GenesisError};

/// Channel ids on the validator p2p network.
pub mod channel {
    /// Simplex votes.
    pub const VOTES: u64 = 0;
    /// Simplex certificates.
    pub const CERTIFICATES: u64 = 1;
    /// Simplex certificate fetches.
    pub const RESOLVER: u64 = 2;
    /// Marshal backfill (blocks and finalizations by height / digest).
    pub const BACKFILL: u64 = 3;
    /// Block broadcast.
    pub const BROADCAST: u64 = 4;
    /// Every channel, in registration order.
    pub const ALL: [u64; 5] = [VOTES, CERTIFICATES, RESOLVER, BACKFILL, BROADCAST];
}

/// Consensus timing.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Wait for a leader's proposal.
    pub leader: Duration,
    /// Wait for a notarization to be certified.
    pub certification: Duration,
    /// Retry interval after a timeout.
    pub retry: Duration,
    /// Skip a silent leader's whole term.
    pub skip: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            leader: Duration::from_secs(1),
            certification: Duration::from_secs(2),
            retry: Duration::from_secs(10),
            skip: Duration::from_secs(12),
        }
    }
}

/// How a validator behaves (honest, or one of the Byzantine test behaviours).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Proposes blocks with an invalid transaction when leader (otherwise votes honestly).
    InvalidProposer,
}

/// Why a validator could not start.
#[derive(Debug, Error)]
pub enum ValidatorError {
    /// The key is not in the genesis validator set.
    #[error("this key is not a validator of the genesis")]
    NotAValidator,
    /// Genesis problem.
    #[error(transparent)]
    Genesis(#[from] GenesisError),
    /// The ledger's chain store could not be opened or replayed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(String),
}

/// The running parts of a validator.
pub struct Running {
    /// The ledger core (state, mempool, indexes).
    pub ledger: Ledger,
    /// Marshal mailbox (blocks and finalizations by height).
    pub marshal: Mailbox<Scheme, Standard<Block>>,
    /// Consensus engine task.
    pub engine: Handle<()>,
    /// Marshal task.
    pub marshal_task: Handle<()>,
}

/// Largest p2p message the validator network must carry.
pub fn max_message_size(n: u32) -> u32 {
    let simplex = simplex::max_payload_size::<Scheme, Digest>(n);
    let blocks = 4 + BLOCK_BYTES_MAX + 1024;
    commonware_p2p::max_message_size(&[simplex, blocks])
}

fn archive_config<C>(
    prefix: &str,
    what: &str,
    page_cache: &CacheRef,
    codec_config: C,
) -> immutable::Config<C> {
    let p = format!("{prefix}-{what}");
    immutable::Config {
        metadata_partition: format!("{p}-metadata"),
        freezer_table_partition: format!("{p}-freezer-table"),
        freezer_table_initial_size: 64,
        freezer_table_resize_frequency: 10,
        freezer_table_resize_chunk_size: 10,
        freezer_key_partition: format!("{p}-freezer-key"),
        freezer_key_page_cache: page_cache.clone(),
        freezer_value_partition: format!("{p}-freezer-value"),
        freezer_value_target_size: 1024 * 1024,
        freezer_value_compression: None,
        ordinal_partition: format!("{p}-ordinal"),
        items_per_section: NZU64!(1024),
        codec_config,
        replay_buffer: NZUsize!(1024 * 1024),
        freezer_key_write_buffer: NZUsize!(1024 * 1024),
        freezer_value_write_buffer: NZUsize!(1024 * 1024),
        ordinal_write_buffer: NZUsize!(1024 * 1024),
    }
}

/// Starts one validator on `context` with the five p2p channels (in [`channel::ALL`] order);
/// finalized blocks are applied as `finalizing` says.
///
/// Storage partitions are named after `partition` (unique per validator when validators share
/// a storage root, as in the simulation); the ledger's finalized blocks and indexes are in
/// `store`. Restarting with the same storage resumes: the ledger reopens `store` at its
/// finalized height, applies any block marshal processed beyond it from marshal's archive,
/// then marshal catches up from peers.
#[allow(clippy::too_many_arguments)]
pub async fn start<E, B, P, S, R>(
    context: E,
    genesis: &Genesis,
    key: ed25519::PrivateKey,
    partition: &str,
    store: ChainStore,
    timeouts: Timeouts,
    behaviour: Behaviour,
    finalizing: Finalizing,
    blocker: B,
    provider: P,
    channels: Vec<(S, R)>,
) -> Result<Running, ValidatorError>
where
    E: Clock + CryptoRng + Spawner + Storage + Metrics + Send + 'static,
    B: Blocker<PublicKey = ed25519::PublicKey> + Clone,
    P: Provider<PublicKey = ed25519::PublicKey> + Clone,
    S: Sender<PublicKey = ed25519::PublicKey>,
    R: Receiver<PublicKey = ed25519::PublicKey>,
{
    let me = key.public_key();
    let participants = genesis.participants()?;
    let scheme =
        Scheme::signer(CONSENSUS_NAMESPACE, participants, key).ok_or(ValidatorError::NotAValidator)?;
    let ledger = Ledger::open(genesis, MempoolLimits::default(), store)?;
    let genesis_block = ledger.genesis_block();
    let genesis_digest = Digest(genesis_block.id());
    let page_cache = CacheRef::new(NZU16!(4096), NZUsize!(64));
    let mailbox_size: NonZeroUsize = NZUsize!(4096);

    let mut channels = channels.into_iter();
    let mut next = || channels.next().ok_or_else(|| ValidatorError::Storage("missing p2p channel".into()));
    let votes = next()?;
    let certificates = next()?;
    let resolver = next()?;
    let backfill = next()?;
    let broadcast = next()?;

    // Block gossip and backfill.
    let resolver_cfg = marshal_resolver::Config {
        public_key: me.clone(),
        peer_provider: provider.clone(),
        blocker: blocker.clone(),
        mailbox_size,
        fetch_timeout: NZDuration!(Duration::from_secs(2)),
        fetch_retry_delay: Duration::from_millis(100),
        priority_requests: false,
        priority_responses: false,
    };
    let backfill = marshal_resolver::init(context.child("backfill"), resolver_cfg, backfill);
    let (bcast, buffer) = buffered::Engine::<_, _, Block, _, _>::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: me.clone(),
            mailbox_size,
            deque_size: 16,
            priority: false,
            codec_config: (),
            peer_provider: provider,
            strategy: Sequential,
        },
    );
    bcast.start(broadcast);

    let prefix = format!("{partition}-marshal");
    let finalizations = immutable::Archive::init(
        context.child("finalizations"),
        archive_config(&prefix, "finalizations", &page_cache, Scheme::certificate_codec_config_unbounded()),
    )
    .await
    .map_err(|e| ValidatorError::Storage(e.to_string()))?;
    let blocks =
        immutable::Archive::init(context.child("blocks"), archive_config(&prefix, "blocks", &page_cache, ()))
            .await
            .map_err(|e| ValidatorError::Storage(e.to_string()))?;
    let mcfg = MarshalConfig {
        provider: ConstantProvider::<Scheme, Epoch>::new(scheme.clone()),
        epocher: FixedEpocher::new(NZU64!(u64::MAX)),
        start: Start::Genesis(Digested::precomputed(genesis_block.as_ref().clone(), genesis_digest)),
        partition_prefix: prefix.clone(),
        mailbox_size,
        view_retention: ViewDelta::new(64),
        prunable_items_per_section: NZU64!(64),
        page_cache: page_cache.clone(),
        replay_buffer: NZUsize!(1024 * 1024),
        key_write_buffer: NZUsize!(1024 * 1024),
        value_write_buffer: NZUsize!(1024 * 1024),
        block_codec_config: (),
        max_repair: NZUsize!(32),
        max_pending_acks: NZUsize!(16),
        strategy: Sequential,
    };
    let (actor, marshal, floor) = Actor::init(context.child("marshal"), finalizations, blocks, mcfg).await;
    let processed = floor.processed().map_or(0, |p| p.height().get());
    let marshal_task = actor.start(Finalizer::with_mode(ledger.clone(), finalizing), buffer, backfill);

    // The chain store is committed before marshal is told a block is processed, so it is at or
    // beyond marshal's floor; anything between (a store commit that failed) comes from the
    // archive.
    let stored = ledger.status().height;
    for h in stored + 1..=processed {
        match marshal.get_block(Height::new(h)).await {
            Some(b) => ledger.finalize(b.inner_shared()),
            None => {
                return Err(ValidatorError::Storage(format!("finalized block {h} missing from the archive")));
            }
        }
    }
    // the tip's certificate (proofs are served against it) if the store did not get it
    let tip = ledger.status();
    if tip.height > 0
        && ledger.finalization(&tip.digest).is_none()
        && let Some(fin) = marshal.get_finalization(Height::new(tip.height)).await
    {
        use commonware_codec::Encode as _;
        ledger.record_finalization(fin.proposal.payload.0, fin.encode().to_vec());
    }
    info!(stored, processed, "ledger resumed from its chain store");

    let app = match behaviour {
        Behaviour::Honest => LedgerApp::new(ledger.clone()),
        Behaviour::InvalidProposer => LedgerApp::byzantine_invalid_proposer(ledger.clone()),
    };
    let inline =
        Inline::new(context.child("inline"), app, marshal.clone(), FixedEpocher::new(NZU64!(u64::MAX)));
    let reporter = Reporters::from((inline.clone(), CertificateRecorder::new(ledger.clone())));
    let engine = simplex::Engine::new(
        context.child("simplex"),
        SimplexConfig {
            scheme,
            elector: RoundRobin::<Sha256>::default(),
            blocker,
            automaton: inline.clone(),
            relay: inline,
            reporter,
            strategy: Sequential,
            partition: format!("{partition}-simplex-e0"),
            mailbox_size,
            epoch: Epoch::zero(),
            floor: Floor::Genesis(genesis_digest),
            replay_buffer: NZUsize!(1024 * 1024),
            write_buffer: NZUsize!(1024 * 1024),
            page_cache,
            leader_timeout: timeouts.leader,
            certification_timeout: timeouts.certification,
            timeout_retry: timeouts.retry,
            view_retention: ViewDelta::new(64),
            skip: SkipPolicy::Enabled { timeout: timeouts.skip, budget: SkipBudget::Participants },
            fetch_timeout: NZDuration!(Duration::from_secs(1)),
            fetch_retry_delay: Duration::from_millis(100),
            forward: ForwardPolicy::Disabled,
            track_historical_votes: false,
        },
    );
    let engine = engine.start(votes, certificates, resolver);
    Ok(Running { ledger, marshal, engine, marshal_task })
}
