//! Consensus before admission. Under overload a validator's CPU goes first to the work that
//! moves blocks (executing a proposal or a peer's block, applying a finalized one), then to
//! admitting new transactions: a batch about to be admitted waits, a bounded time, while such
//! work runs, at most [`AdmissionPolicy::concurrent_max`] batches have their signatures
//! checked at once, and the threads serving clients run at a lower scheduling priority
//! ([`AdmissionPolicy::rpc_nice`]) than consensus. Admission then slows instead of stretching
//! every block's time, which is what every waiting transaction's latency is made of.
//!
//! Off by default ([`AdmissionPolicy::OFF`]). Measured with `cairn ledger bench` at 5,000/s on
//! the shared 2-core machine under other tenants' load (load average 13–18): with
//! [`AdmissionPolicy::CONSENSUS_FIRST`] blocks came 3× as often (75–85 blocks in the run
//! against 20–28) and p99 fell from 2.3–3.9 s to 1.1–1.5 s, but the validators admitted only
//! ~2,800 tx/s of the 5,000 offered (the other tenants' threads outrank niced RPC threads,
//! and a batch waiting out block work holds its client), against ~4,800/s without. So p99 was
//! bought with throughput there; on a validator with cores of its own the trade may differ
//! (`CAIRN_LEDGER_ADMISSION`, see `process.rs`, switches it for an A/B with one binary).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest an admission batch waits for block work to end before it goes ahead anyway
/// (milliseconds): about one block's execution at the largest block size, so admission never
/// starves for long even when blocks follow each other without a gap.
pub const ADMISSION_YIELD_MS_MAX: u64 = 100;
/// Admission batches whose signatures one validator checks at once (batches); the others wait
/// for a turn, at most [`ADMISSION_TURN_WAIT_MS`].
pub const ADMISSIONS_CONCURRENT_MAX: usize = 1;
/// Longest an admission batch waits for its turn (milliseconds); after it, it goes ahead.
pub const ADMISSION_TURN_WAIT_MS: u64 = 1_000;
/// Niceness of the threads serving clients (Linux `nice`, 0..=19): under contention the
/// scheduler gives consensus threads (nice 0) about 10 times their CPU share.
pub const RPC_NICE: i32 = 10;
/// How often a waiting admission looks again whether block work has ended (microseconds).
const YIELD_POLL_US: u64 = 500;

/// How admission gives way to consensus work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AdmissionPolicy {
    /// Longest a batch waits for block work to end, ms (0: it never waits).
    pub yield_ms_max: u64,
    /// Batches checked at once (0: no limit).
    pub concurrent_max: usize,
    /// Niceness of the RPC connection threads, taken when a connection's thread starts
    /// (0: the process's own).
    pub rpc_nice: i32,
}

impl Default for AdmissionPolicy {
    /// [`AdmissionPolicy::OFF`] (see the module's measurements).
    fn default() -> Self {
        Self::OFF
    }
}

impl AdmissionPolicy {
    /// Admission never gives way: no waiting, no limit, no lower priority.
    pub const OFF: Self = Self { yield_ms_max: 0, concurrent_max: 0, rpc_nice: 0 };
    /// Consensus first: [`ADMISSION_YIELD_MS_MAX`], [`ADMISSIONS_CONCURRENT_MAX`], [`RPC_NICE`].
    pub const CONSENSUS_FIRST: Self = Self {
        yield_ms_max: ADMISSION_YIELD_MS_MAX,
        concurrent_max: ADMISSIONS_CONCURRENT_MAX,
        rpc_nice: RPC_NICE,
    };
}

/// Lowers the calling thread's scheduling priority to `nice` (a thread serving clients; see
/// [`AdmissionPolicy::rpc_nice`]). Raising niceness needs no privilege; a failure is logged and
/// the thread keeps its priority.
pub fn lower_thread_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice.min(19)) {
            tracing::debug!(error = %e, "rpc thread keeps its scheduling priority");
        }
    }
}

/// The shared state of [`AdmissionPolicy`]: block work in progress and admissions running.
#[derive(Debug, Default)]
pub(super) struct Gate {
    /// [`AdmissionPolicy::OFF`] unless set.
    policy: Mutex<AdmissionPolicy>,
    /// Block executions and applications in progress.
    busy: AtomicUsize,
    /// Admission batches checking signatures now.
    admitting: Mutex<usize>,
    turn: Condvar,
}

/// Marks block work in progress while held.
pub(super) struct BlockWork<'a>(&'a Gate);

impl Drop for BlockWork<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One admission batch's turn, given back when dropped.
pub(super) struct Turn<'a>(Option<&'a Gate>);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            let mut n = g.admitting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *n = n.saturating_sub(1);
            g.turn.notify_one();
        }
    }
}

impl Gate {
    pub(super) fn set_policy(&self, policy: AdmissionPolicy) {
        *self.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    pub(super) fn policy(&self) -> AdmissionPolicy {
        *self.policy.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Block work begins (ends when the guard is dropped).
    pub(super) fn block_work(&self) -> BlockWork<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BlockWork(self)
    }

    /// Waits until no block work runs (at most the policy's yield time), then for a turn among
    /// the concurrent admissions (at most [`ADMISSION_TURN_WAIT_MS`]). Both waits are bounded,
    /// so an admission always goes ahead eventually.
    pub(super) fn admit(&self) -> Turn<'_> {
        let policy = self.policy();
        let start = Instant::now();
        let yield_max = Duration::from_millis(policy.yield_ms_max);
        while self.busy.load(Ordering::SeqCst) > 0 && start.elapsed() < yield_max {
            std::thread::sleep(Duration::from_micros(YIELD_POLL_US));
        }
        if policy.concurrent_max == 0 {
            return Turn(None);
        }
        let deadline = Instant::now() + Duration::from_millis(ADMISSION_TURN_WAIT_MS);
        let mut n = self.admitting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *n >= policy.concurrent_max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            n = self.turn.wait_timeout(n, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        *n += 1;
        Turn(Some(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_waits_for_block_work_a_bounded_time_and_takes_turns() {
        let g = Gate::default();
        g.set_policy(AdmissionPolicy { yield_ms_max: 50, concurrent_max: 1, rpc_nice: 0 });
        let work = g.block_work();
        let start = Instant::now();
        let first = g.admit();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(2), "{waited:?}");
        drop(work);
        let gate = &g;
        std::thread::scope(|s| {
            let start = Instant::now();
            let second = s.spawn(move || {
                let _t = gate.admit();
                start.elapsed()
            });
            std::thread::sleep(Duration::from_millis(30));
            drop(first);
            let took = second.join().unwrap();
            assert!(took >= Duration::from_millis(30), "waited for the first turn to end: {took:?}");
        });
        assert_eq!(*g.admitting.lock().unwrap(), 0, "turns are given back");
        g.set_policy(AdmissionPolicy::OFF);
        let _work = g.block_work();
        let start = Instant::now();
        let (_a, _b) = (g.admit(), g.admit());
        assert!(start.elapsed() < Duration::from_millis(40), "off: no waiting");
    }
}
