//! The consensus application: builds and verifies blocks for commonware's marshal `Inline`
//! wrapper, and takes finalized blocks and certificates from marshal and simplex.

use std::sync::Arc;
use std::time::Duration;

use commonware_actor::Feedback;
use commonware_codec::Encode as _;
use commonware_consensus::marshal::Update;
use commonware_consensus::marshal::ancestry::Ancestry;
use commonware_consensus::simplex::scheme::ed25519::Scheme;
use commonware_consensus::simplex::types::{Activity, Context};
use commonware_consensus::{Application, Reporter};
use commonware_cryptography::sha256::Digest;
use commonware_cryptography::{Digested, ed25519};
use commonware_runtime::Clock;
use commonware_utils::Acknowledgement as _;
use commonware_utils::acknowledgement::Exact;
use futures::StreamExt as _;
use tracing::{debug, warn};

use crate::block::Block;
use crate::core::{FINALIZE_GROUP_MAX, Knowledge, Ledger};

/// Consensus context type used by the ledger.
pub type LedgerContext = Context<Digest, ed25519::PublicKey>;

/// The ledger as a commonware [`Application`].
#[derive(Clone, Debug)]
pub struct LedgerApp {
    ledger: Ledger,
    /// Test hook: propose blocks whose transactions fail admission (a Byzantine proposer).
    byzantine_invalid: bool,
}

impl LedgerApp {
    /// An honest application over `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger, byzantine_invalid: false }
    }

    /// A Byzantine application that proposes blocks containing a replayed (inadmissible)
    /// transaction with a state root computed as if it were fine. For fault tests only.
    pub fn byzantine_invalid_proposer(ledger: Ledger) -> Self {
        Self { ledger, byzantine_invalid: true }
    }

    /// Makes the post-state of `block` known, executing missing unfinalized ancestors taken
    /// from `ancestry` (newest first). Returns false if `block` is invalid or on a dead fork.
    async fn make_known(&self, block: Arc<Block>, ancestry: &mut (impl Ancestry<Block> + 'static)) -> bool {
        let mut missing = vec![block];
        loop {
            let Some(top) = missing.last() else { return false };
            let parent_height = top.header.height.saturating_sub(1);
            match self.ledger.knows(&top.header.parent, parent_height) {
                Knowledge::Known => break,
                Knowledge::Dead => return false,
                Knowledge::Unknown => {
                    let want = top.header.parent;
                    match ancestry.next().await {
                        Some(b) if b.inner().id() == want => missing.push(b.inner_shared()),
                        _ => return false,
                    }
                }
            }
        }
        for b in missing.iter().rev() {
            match self.ledger.verify_block(b) {
                Ok(true) => {}
                Ok(false) => {
                    debug!(height = b.header.height, "block refused");
                    return false;
                }
                Err(e) => {
                    warn!(error = %e, "state failure while verifying");
                    return false;
                }
            }
        }
        true
    }
}

/// How long a leader with nothing to include waits for transactions before proposing an empty
/// block (bounds the idle block rate, and the CPU and disk it costs, to a few per second).
pub const EMPTY_BLOCK_WAIT: Duration = Duration::from_millis(200);

impl<E: Clock + Send + 'static> Application<E> for LedgerApp {
    type SigningScheme = Scheme;
    type Context = LedgerContext;
    type Block = Block;
    type Input = ();

    async fn propose(
        &mut self,
        context: (E, Self::Context),
        mut ancestry: impl Ancestry<Self::Block>,
        _input: (),
    ) -> Option<Digested<Self::Block>> {
        let (runtime, _) = context;
        let parent = ancestry.next().await?;
        let parent_block = parent.inner_shared();
        let (pd, ph) = (parent_block.id(), parent_block.header.height);
        if self.ledger.knows(&pd, ph) != Knowledge::Known
            && !self.make_known(parent_block, &mut ancestry).await
        {
            return None;
        }
        if self.byzantine_invalid {
            return self.ledger.byzantine_proposal(&pd, ph).map(|b| {
                let d = Digest(b.id());
                Digested::precomputed(b, d)
            });
        }
        let start = runtime.current();
        loop {
            match self.ledger.propose(&pd, ph) {
                Ok(Some(p)) => {
                    let waited = runtime.current().duration_since(start).unwrap_or_default();
                    if p.block.txs.is_empty() && waited < EMPTY_BLOCK_WAIT {
                        runtime.sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let d = Digest(p.block.id());
                    return Some(Digested::precomputed(p.block, d));
                }
                Ok(None) => return None,
                Err(e) => {
                    warn!(error = %e, "state failure while proposing");
                    return None;
                }
            }
        }
    }

    async fn verify(
        &mut self,
        _context: (E, Self::Context),
        mut ancestry: impl Ancestry<Self::Block>,
    ) -> bool {
        let Some(block) = ancestry.next().await else { return false };
        self.make_known(block.inner_shared(), &mut ancestry).await
    }
}

/// Finalized blocks handed to the finalizer thread and not applied yet (blocks). Marshal keeps
/// at most `max_pending_acks` (16, see `validator.rs`) blocks unacknowledged, so this never
/// fills; if it did, [`Finalizer::report`] would wait for room (marshal is paused, nothing is
/// dropped: a dropped acknowledgement stops marshal).
pub const FINALIZE_QUEUE_MAX: usize = 64;

/// Where finalized blocks are applied.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Finalizing {
    /// In marshal's actor, inside [`Reporter::report`] (deterministic: the simulations).
    Inline,
    /// On a thread of its own, in height order, each acknowledged once applied: the chain
    /// store's commit (an fsync) and the state update no longer hold marshal's actor, which
    /// meanwhile serves the next blocks to consensus (a real validator process).
    Thread,
}

/// Receives finalized blocks from marshal (in height order, at least once) and applies them.
#[derive(Clone, Debug)]
pub struct Finalizer {
    ledger: Ledger,
    /// The finalizer thread's queue ([`Finalizing::Thread`]), bounded by [`FINALIZE_QUEUE_MAX`].
    queue: Option<std::sync::mpsc::SyncSender<(Arc<Block>, Exact)>>,
}

impl Finalizer {
    /// A finalizer for `ledger` that applies blocks inline.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger, queue: None }
    }

    /// A finalizer for `ledger` applying blocks as `mode` says. A thread that cannot be
    /// spawned leaves the finalizer inline (logged).
    pub fn with_mode(ledger: Ledger, mode: Finalizing) -> Self {
        if mode == Finalizing::Inline {
            return Self::new(ledger);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Arc<Block>, Exact)>(FINALIZE_QUEUE_MAX);
        let applier = ledger.clone();
        // the thread ends when every sender (every clone of this finalizer) is dropped
        let spawned = std::thread::Builder::new().name("ledger-finalize".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // the blocks that queued while the last ones were applied go in one commit
                let mut batch = vec![first];
                while batch.len() < FINALIZE_GROUP_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (blocks, acks): (Vec<Arc<Block>>, Vec<Exact>) = batch.into_iter().unzip();
                applier.finalize_many(blocks);
                for ack in acks {
                    ack.acknowledge();
                }
            }
        });
        match spawned {
            Ok(_) => Self { ledger, queue: Some(tx) },
            Err(e) => {
                warn!(error = %e, "no finalizer thread; finalized blocks are applied inline");
                Self::new(ledger)
            }
        }
    }
}

impl Reporter for Finalizer {
    type Activity = Update<Block>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        match activity {
            Update::Block(block, ack) => {
                if let Some(queue) = &self.queue {
                    // waits only if FINALIZE_QUEUE_MAX blocks are queued (see there)
                    return match queue.send((block.inner_shared(), ack)) {
                        Ok(()) => Feedback::Ok,
                        Err(std::sync::mpsc::SendError((block, ack))) => {
                            // the thread is gone (it panicked): apply here
                            self.ledger.finalize(block);
                            ack.acknowledge();
                            Feedback::Ok
                        }
                    };
                }
                self.ledger.finalize(block.inner_shared());
                // Blocks are durable in marshal's archive before delivery and the state is
                // rebuilt from that archive on restart, so the block is processed once applied.
                ack.acknowledge();
            }
            Update::Tip(..) => {}
        }
        Feedback::Ok
    }
}

/// Records finalization certificates (served to light clients) from simplex activity.
#[derive(Clone, Debug)]
pub struct CertificateRecorder {
    ledger: Ledger,
}

impl CertificateRecorder {
    /// A recorder for `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

impl Reporter for CertificateRecorder {
    type Activity = Activity<Scheme, Digest>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        if let Activity::Finalization(f) = activity {
            self.ledger.record_finalization(f.proposal.payload.0, f.encode().to_vec());
        }
        Feedback::Ok
    }
}
