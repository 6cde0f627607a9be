//! One scenario's faults, drawn from a seed: the same seed gives the same choices (timing
//! still varies with the machine).

/// SplitMix64: a tiny seeded generator (replayable choices; no quality needed).
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den.max(1) < num
    }
}

/// The processes of the cluster, in index order: validators, then store nodes, then users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Topology {
    /// Ledger validators.
    pub(crate) validators: usize,
    /// Store nodes.
    pub(crate) stores: usize,
    /// User nodes (members of the one group).
    pub(crate) users: usize,
}

impl Topology {
    /// All processes.
    pub(crate) fn total(&self) -> usize {
        self.validators + self.stores + self.users
    }

    /// Index of user `u`.
    pub(crate) fn user(&self, u: usize) -> usize {
        self.validators + self.stores + u
    }
}

/// Clock skew bound: ± 2 minutes.
pub(crate) const SKEW_MAX_MS: i64 = 120_000;

/// A SIGKILL and restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kill {
    /// The process (index in [`Topology`] order).
    pub(crate) node: usize,
    /// When, after the faults begin.
    pub(crate) after_ms: u64,
    /// How long it stays down.
    pub(crate) down_ms: u64,
    /// Its clock's offset after the restart (0: the true time).
    pub(crate) skew_ms: i64,
}

/// What one scenario does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scenario {
    /// Its number in the campaign.
    pub(crate) index: usize,
    /// Probability that a packet arriving at a namespace is dropped (0 or 1–30%).
    pub(crate) loss: f64,
    /// Delay of the proxies in every namespace, each direction of every connection between
    /// processes (validators' among them): (base, ± jitter) ms, `None` for none.
    pub(crate) delay: Option<(u32, u32)>,
    /// Processes cut off from all the others (empty: no partition).
    pub(crate) partition: Vec<usize>,
    /// SIGKILLs and restarts.
    pub(crate) kills: Vec<Kill>,
    /// Messages each user sends while the faults last.
    pub(crate) messages_per_user: usize,
    /// How long the faults last before they heal.
    pub(crate) fault_ms: u64,
}

impl Scenario {
    /// Scenario `index` of the campaign with seed `seed`.
    pub(crate) fn generate(seed: u64, index: usize, t: &Topology) -> Scenario {
        let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let fault_ms = rng.range(4_000, 10_000);
        let loss = if rng.chance(2, 3) { rng.range(1, 30) as f64 / 100.0 } else { 0.0 };
        let delay = rng.chance(1, 2).then_some((200, 100));
        let mut partition = Vec::new();
        if t.total() >= 2 && rng.chance(1, 2) {
            // One side of at most half of the processes, with at most f = (validators − 1) / 3
            // validators, so the others keep a quorum and the ledger stays live.
            let side = rng.range(1, (t.total() / 2) as u64) as usize;
            let mut order: Vec<usize> = (0..t.total()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.range(0, i as u64) as usize);
            }
            let validators_max = t.validators.saturating_sub(1) / 3;
            let mut validators_cut = 0;
            for n in order {
                if partition.len() == side {
                    break;
                }
                if n < t.validators {
                    if validators_cut == validators_max {
                        continue;
                    }
                    validators_cut += 1;
                }
                partition.push(n);
            }
            partition.sort_unstable();
        }
        let mut kills = Vec::new();
        for _ in 0..rng.range(0, 2) {
            // Users most often, then store nodes, then validators.
            let node = match rng.range(0, 9) {
                0..=5 if t.users > 0 => t.user(rng.range(0, t.users as u64 - 1) as usize),
                6..=7 if t.stores > 0 => t.validators + rng.range(0, t.stores as u64 - 1) as usize,
                _ if t.validators > 0 => rng.range(0, t.validators as u64 - 1) as usize,
                _ => continue,
            };
            if kills.iter().any(|k: &Kill| k.node == node) {
                continue;
            }
            let skew_ms =
                if rng.chance(1, 2) { rng.range(0, 2 * SKEW_MAX_MS as u64) as i64 - SKEW_MAX_MS } else { 0 };
            kills.push(Kill {
                node,
                after_ms: rng.range(0, fault_ms / 2),
                down_ms: rng.range(500, 3_000),
                skew_ms,
            });
        }
        Scenario {
            index,
            loss,
            delay,
            partition,
            kills,
            messages_per_user: rng.range(1, 3) as usize,
            fault_ms,
        }
    }

    /// One line for the log.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!("scenario {}: {} ms of faults", self.index, self.fault_ms);
        if self.loss > 0.0 {
            s.push_str(&format!(", {:.0}% loss", self.loss * 100.0));
        }
        if let Some((b, j)) = self.delay {
            s.push_str(&format!(", {b} ± {j} ms delay"));
        }
        if !self.partition.is_empty() {
            s.push_str(&format!(", partition {:?} | rest", self.partition));
        }
        for k in &self.kills {
            s.push_str(&format!(
                ", SIGKILL #{} at {} ms for {} ms (skew {:+} s after)",
                k.node,
                k.after_ms,
                k.down_ms,
                k.skew_ms / 1000
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Topology = Topology { validators: 4, stores: 3, users: 5 };

    #[test]
    fn same_seed_same_scenario_and_bounds_hold() {
        let mut kinds = [0usize; 4]; // loss, delay, partition, kill
        for i in 0..500 {
            let s = Scenario::generate(7, i, &T);
            assert_eq!(s, Scenario::generate(7, i, &T));
            assert!(s.loss == 0.0 || (0.01..=0.30).contains(&s.loss), "{s:?}");
            assert!(s.partition.len() <= T.total() / 2);
            assert!(s.partition.iter().filter(|&&n| n < T.validators).count() <= 1, "{s:?}");
            assert!(s.partition.windows(2).all(|w| w[0] < w[1]));
            for k in &s.kills {
                assert!(k.node < T.total());
                assert!(k.skew_ms.abs() <= SKEW_MAX_MS);
                assert!(k.after_ms <= s.fault_ms);
            }
            kinds[0] += usize::from(s.loss > 0.0);
            kinds[1] += usize::from(s.delay.is_some());
            kinds[2] += usize::from(!s.partition.is_empty());
            kinds[3] += usize::from(!s.kills.is_empty());
        }
        // Every kind of fault is drawn often.
        assert!(kinds.iter().all(|&k| k > 100), "{kinds:?}");
        assert_ne!(Scenario::generate(7, 0, &T), Scenario::generate(8, 0, &T));
    }

    /// The seed of `tests/faults.rs` (3 scenarios) meets every kind of fault.
    #[test]
    fn ci_seed_covers_every_fault() {
        let s: Vec<Scenario> = (0..3).map(|i| Scenario::generate(1, i, &T)).collect();
        assert!(s.iter().any(|s| s.loss > 0.0), "{s:#?}");
        assert!(s.iter().any(|s| s.delay.is_some()), "{s:#?}");
        assert!(s.iter().any(|s| !s.partition.is_empty()), "{s:#?}");
        assert!(s.iter().flat_map(|s| &s.kills).any(|k| k.skew_ms != 0), "{s:#?}");
        assert!(s.iter().flat_map(|s| &s.kills).any(|k| k.node >= T.user(0)), "{s:#?}");
    }
}
