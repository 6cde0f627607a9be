//! The checker over what a run observed once its faults healed: every message acknowledged as
//! stored is at every member exactly once, the members did not fork (same epoch, same message
//! set), and the validators did not fork (the same state root at every height two of them
//! reported).

use std::collections::{BTreeMap, HashMap, HashSet};

/// One member's view of the group after the heal.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberObs {
    /// Its name.
    pub(crate) name: String,
    /// Message ids in its history, in order (a duplicate shows up twice).
    pub(crate) ids: Vec<String>,
    /// Its MLS epoch of the group.
    pub(crate) epoch: u64,
}

/// One validator's answer: (validator, finalized height, state root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerObs {
    /// The validator's index in the genesis.
    pub(crate) validator: usize,
    /// Its finalized height.
    pub(crate) height: u64,
    /// Its block at that height: digest and state root (hex prefixes).
    pub(crate) root: String,
}

/// The validators' lines of `cairn ledger status --genesis G [--at H]`
/// (`validator I: height=H digest=D root=R …`); unreachable ones are left out.
pub(crate) fn parse_ledger_status(text: &str) -> Vec<LedgerObs> {
    text.lines()
        .filter_map(|l| {
            let (head, rest) = l.strip_prefix("validator ")?.split_once(": ")?;
            let field = |k: &str| rest.split(' ').find_map(|w| w.strip_prefix(k));
            Some(LedgerObs {
                validator: head.parse().ok()?,
                height: field("height=")?.parse().ok()?,
                root: format!("{}/{}", field("digest=")?, field("root=")?),
            })
        })
        .collect()
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Acknowledged messages checked.
    pub(crate) messages: usize,
    /// Acknowledged messages missing at one member or more.
    pub(crate) lost: usize,
    /// Messages held twice (or more) by one member or more.
    pub(crate) duplicated: usize,
    /// Group forks: members on different epochs or with different message sets.
    pub(crate) group_forks: Vec<String>,
    /// Ledger forks: two validators with different roots at one height.
    pub(crate) ledger_forks: Vec<String>,
    /// The highest height every validator reported a root for (`None`: no common height).
    pub(crate) common_height: Option<u64>,
}

impl Verdict {
    /// Nothing lost, duplicated or forked.
    pub(crate) fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.group_forks.is_empty() && self.ledger_forks.is_empty()
    }
}

/// Checks `members` against the acknowledged message ids `acked` and the validators'
/// answers `ledger` (from several polls) of a ledger with `validators` validators.
pub(crate) fn check(
    acked: &[String],
    members: &[MemberObs],
    ledger: &[LedgerObs],
    validators: usize,
) -> Verdict {
    let mut v = Verdict { messages: acked.len(), ..Verdict::default() };
    let held: Vec<HashMap<&str, usize>> = members
        .iter()
        .map(|m| {
            let mut c: HashMap<&str, usize> = HashMap::new();
            for id in &m.ids {
                *c.entry(id.as_str()).or_default() += 1;
            }
            c
        })
        .collect();
    v.lost = acked.iter().filter(|id| held.iter().any(|h| !h.contains_key(id.as_str()))).count();
    let dup: HashSet<&str> =
        held.iter().flat_map(|h| h.iter().filter(|(_, n)| **n > 1).map(|(id, _)| *id)).collect();
    v.duplicated = dup.len();
    if let Some(first) = members.first() {
        let want: HashSet<&str> = held[0].keys().copied().collect();
        for (m, h) in members.iter().zip(&held).skip(1) {
            if m.epoch != first.epoch {
                v.group_forks
                    .push(format!("{} is on epoch {}, {} on {}", m.name, m.epoch, first.name, first.epoch));
            }
            let have: HashSet<&str> = h.keys().copied().collect();
            if have != want {
                v.group_forks.push(format!(
                    "{} holds {} messages {} lacks, and lacks {} that {} holds",
                    m.name,
                    have.difference(&want).count(),
                    first.name,
                    want.difference(&have).count(),
                    first.name
                ));
            }
        }
    }
    let mut roots: BTreeMap<u64, BTreeMap<&str, Vec<usize>>> = BTreeMap::new();
    for o in ledger {
        let at = roots.entry(o.height).or_default().entry(o.root.as_str()).or_default();
        if !at.contains(&o.validator) {
            at.push(o.validator);
        }
    }
    for (h, by_root) in &roots {
        if by_root.len() > 1 {
            v.ledger_forks.push(format!("height {h}: validators disagree: {by_root:?}"));
        }
        let reporters: HashSet<usize> = by_root.values().flatten().copied().collect();
        if validators > 0 && reporters.len() == validators {
            v.common_height = Some(*h);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, ids: &[&str], epoch: u64) -> MemberObs {
        MemberObs { name: name.into(), ids: ids.iter().map(|s| s.to_string()).collect(), epoch }
    }

    fn l(validator: usize, height: u64, root: &str) -> LedgerObs {
        LedgerObs { validator, height, root: root.into() }
    }

    #[test]
    fn ledger_status_lines_are_parsed_and_unreachable_validators_left_out() {
        let text = "validator 0: height=7 digest=aa root=bb mempool=0\nvalidator 1: unreachable (timed out)\n\
                    validator 2: height=7 digest=aa root=bb\nvalidator 3: height 7 not finalized there yet\n";
        let obs = parse_ledger_status(text);
        assert_eq!(obs.iter().map(|o| (o.validator, o.height)).collect::<Vec<_>>(), vec![(0, 7), (2, 7)]);
        assert!(obs.iter().all(|o| o.root == "aa/bb"));
    }

    #[test]
    fn clean_run_passes() {
        let acked = vec!["a".to_string(), "b".to_string()];
        let members = [m("ann", &["a", "b", "x"], 3), m("ben", &["x", "a", "b"], 3)];
        let ledger = [l(0, 5, "r5"), l(1, 5, "r5"), l(0, 6, "r6"), l(1, 7, "r7")];
        let v = check(&acked, &members, &ledger, 2);
        assert!(v.ok(), "{v:?}");
        assert_eq!((v.messages, v.common_height), (2, Some(5)));
    }

    #[test]
    fn loss_duplicates_and_forks_are_counted() {
        let acked = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let members = [m("ann", &["a", "b", "c", "c"], 3), m("ben", &["a", "c"], 4)];
        let v = check(&acked, &members, &[l(0, 5, "r5"), l(1, 5, "other")], 2);
        assert_eq!(v.lost, 1); // b, at ben
        assert_eq!(v.duplicated, 1); // c, at ann
        assert_eq!(v.group_forks.len(), 2, "{:?}", v.group_forks); // epoch and message set
        assert_eq!(v.ledger_forks.len(), 1);
        assert!(!v.ok());
        // No height that every validator reported.
        let v = check(&[], &[], &[l(0, 5, "r5"), l(1, 6, "r6")], 2);
        assert_eq!(v.common_height, None);
        assert!(v.ok());
    }
}
