//! Percentiles and the campaign table.

use super::check::Verdict;

/// What one scenario gave.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The scenario's one-line description.
    pub(crate) what: String,
    /// Sends answered (acknowledged or not).
    pub(crate) sent: usize,
    /// The checker's verdict.
    pub(crate) verdict: Verdict,
    /// Time from the heal until every member held every acknowledged message, ms (`None`:
    /// not within the bound).
    pub(crate) heal_ms: Option<u64>,
}

/// Nearest-rank percentile `p` (0–100) of `v` (sorted here); `None` when empty.
pub(crate) fn percentile(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    Some(s[rank.clamp(1, s.len()) - 1])
}

/// The campaign's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Scenarios run.
    pub(crate) scenarios: usize,
    /// Scenarios whose checker passed.
    pub(crate) passed: usize,
    /// Sends answered.
    pub(crate) sent: usize,
    /// Acknowledged messages checked (per scenario: the acknowledged sends so far).
    pub(crate) messages: usize,
    /// Of them, lost (counted at the scenario where first found missing).
    pub(crate) lost: usize,
    /// Duplicated messages (max over scenarios: the same history is checked again each time).
    pub(crate) duplicated: usize,
    /// Scenarios with a group fork.
    pub(crate) group_forks: usize,
    /// Scenarios with a ledger fork.
    pub(crate) ledger_forks: usize,
    /// Scenarios whose ledger was compared at a height every validator reported.
    pub(crate) ledger_checked: usize,
    /// Scenarios that did not heal within the bound.
    pub(crate) unhealed: usize,
    /// Time to heal p50, ms.
    pub(crate) heal_p50: Option<u64>,
    /// Time to heal p99, ms.
    pub(crate) heal_p99: Option<u64>,
}

/// Totals of `rows`.
pub(crate) fn totals(rows: &[Row]) -> Totals {
    let heals: Vec<u64> = rows.iter().filter_map(|r| r.heal_ms).collect();
    Totals {
        scenarios: rows.len(),
        passed: rows.iter().filter(|r| r.verdict.ok() && r.heal_ms.is_some()).count(),
        sent: rows.iter().map(|r| r.sent).sum(),
        messages: rows.last().map_or(0, |r| r.verdict.messages),
        lost: rows.iter().map(|r| r.verdict.lost).max().unwrap_or(0),
        duplicated: rows.iter().map(|r| r.verdict.duplicated).max().unwrap_or(0),
        group_forks: rows.iter().filter(|r| !r.verdict.group_forks.is_empty()).count(),
        ledger_forks: rows.iter().filter(|r| !r.verdict.ledger_forks.is_empty()).count(),
        ledger_checked: rows.iter().filter(|r| r.verdict.common_height.is_some()).count(),
        unhealed: rows.iter().filter(|r| r.heal_ms.is_none()).count(),
        heal_p50: percentile(&heals, 50.0),
        heal_p99: percentile(&heals, 99.0),
    }
}

/// The table: one line per scenario, then the totals (the last line is machine-readable:
/// `faults: key=value …`).
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from("  #  sent  acked  lost  dup  gfork  lfork  height  heal ms  faults\n");
    for (i, r) in rows.iter().enumerate() {
        let v = &r.verdict;
        out.push_str(&format!(
            "{:>3}  {:>4}  {:>5}  {:>4}  {:>3}  {:>5}  {:>5}  {:>6}  {:>7}  {}\n",
            i,
            r.sent,
            v.messages,
            v.lost,
            v.duplicated,
            v.group_forks.len(),
            v.ledger_forks.len(),
            v.common_height.map_or("-".into(), |h| h.to_string()),
            r.heal_ms.map_or("unhealed".into(), |h| h.to_string()),
            r.what
        ));
    }
    let t = totals(rows);
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    out.push_str(&format!(
        "faults: scenarios={} passed={} sent={} messages={} lost={} duplicated={} group_forks={} ledger_forks={} ledger_checked={} unhealed={} heal_p50_ms={} heal_p99_ms={}\n",
        t.scenarios,
        t.passed,
        t.sent,
        t.messages,
        t.lost,
        t.duplicated,
        t.group_forks,
        t.ledger_forks,
        t.ledger_checked,
        t.unhealed,
        ms(t.heal_p50),
        ms(t.heal_p99)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5], 99.0), Some(5));
        let v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
    }

    #[test]
    fn totals_and_last_line() {
        let ok = Verdict { messages: 4, ..Verdict::default() };
        let bad = Verdict { messages: 9, lost: 2, ledger_forks: vec!["x".into()], ..Verdict::default() };
        let rows = vec![
            Row { what: "a".into(), sent: 4, verdict: ok, heal_ms: Some(100) },
            Row { what: "b".into(), sent: 5, verdict: bad, heal_ms: None },
        ];
        let t = totals(&rows);
        assert_eq!((t.scenarios, t.passed, t.sent, t.messages, t.lost), (2, 1, 9, 9, 2));
        assert_eq!((t.ledger_forks, t.unhealed, t.heal_p50), (1, 1, Some(100)));
        let table = table(&rows);
        assert!(table.lines().last().unwrap_or("").starts_with("faults: scenarios=2 passed=1 "), "{table}");
    }
}
