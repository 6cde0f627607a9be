//! A conversation's hash-link chain as this device knows it: which accepted envelopes are
//! heads (named as nobody's parent yet), and how many envelopes a head's ancestry holds (what
//! an anchor records).
//!
//! Only envelopes that this device accepted (opened and verified, or wrote) and their proven
//! ancestors enter the chain: junk on the topic never becomes a head, so it is never named as
//! a parent and never anchored.

use std::collections::{BTreeSet, HashMap, HashSet};

use cairn_proto::Id;

/// An envelope's parents, inline when it has at most one (most messages): no allocation per
/// envelope for a chain of 100,000.
#[derive(Debug, Clone)]
enum Parents {
    None,
    One(Id),
    Many(Box<[Id]>),
}

impl Parents {
    fn of(ids: &[Id]) -> Self {
        match ids {
            [] => Self::None,
            [one] => Self::One(*one),
            many => Self::Many(many.into()),
        }
    }

    fn as_slice(&self) -> &[Id] {
        match self {
            Self::None => &[],
            Self::One(id) => std::slice::from_ref(id),
            Self::Many(ids) => ids,
        }
    }
}

/// Per-conversation chain state.
#[derive(Debug, Default, Clone)]
pub struct Chain {
    heads: BTreeSet<Id>,
    parents: HashMap<Id, Parents>,
    /// Ids some envelope of the chain names as a parent that are not in the chain themselves
    /// (an arriving one of these is not a head). An id leaves it when it joins the chain.
    referenced: HashSet<Id>,
    /// The head added last: the one anchored (its ancestry is, in practice, the widest).
    newest_head: Option<Id>,
}

impl Chain {
    /// Adds an envelope with its parents. Idempotent.
    pub fn add(&mut self, id: Id, parents: &[Id]) {
        if self.parents.contains_key(&id) {
            return;
        }
        for p in parents {
            self.heads.remove(p);
            if !self.parents.contains_key(p) {
                self.referenced.insert(*p);
            }
        }
        if !self.referenced.remove(&id) {
            self.heads.insert(id);
            self.newest_head = Some(id);
        }
        self.parents.insert(id, Parents::of(parents));
    }

    /// Whether `id` is in the chain.
    pub fn contains(&self, id: &Id) -> bool {
        self.parents.contains_key(id)
    }

    /// Whether an envelope of the chain names `id`, not in the chain itself, as a parent.
    pub fn is_referenced(&self, id: &Id) -> bool {
        self.referenced.contains(id)
    }

    /// Envelopes in the chain.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// Current heads, newest id order (at most `max`): the parents of the next message.
    pub fn parents_for_next(&self, max: usize) -> Vec<Id> {
        self.heads.iter().rev().take(max).copied().collect()
    }

    /// Number of heads.
    pub fn head_count(&self) -> usize {
        self.heads.len()
    }

    /// The head to anchor: the newest one still a head, else the first.
    pub fn anchor_head(&self) -> Option<Id> {
        self.newest_head.filter(|h| self.heads.contains(h)).or_else(|| self.heads.first().copied())
    }

    /// Size of the ancestry of `head`, itself included, over known envelopes.
    pub fn ancestry(&self, head: &Id) -> u64 {
        let mut seen = HashSet::new();
        let mut stack = vec![*head];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(ps) = self.parents.get(&id) {
                stack.extend(ps.as_slice().iter().copied());
            }
        }
        seen.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn heads_follow_links_in_any_arrival_order() {
        // 1 ← 2, 1 ← 3, {2,3} ← 4; the child 4 arrives before its parent 3.
        let mut c = Chain::default();
        c.add(id(1), &[]);
        c.add(id(2), &[id(1)]);
        assert_eq!(c.parents_for_next(8), vec![id(2)]);
        c.add(id(4), &[id(2), id(3)]);
        c.add(id(3), &[id(1)]);
        assert_eq!(c.parents_for_next(8), vec![id(4)], "3 is 4's parent: not a head");
        assert_eq!(c.anchor_head(), Some(id(4)));
        assert_eq!(c.ancestry(&id(4)), 4);
        assert_eq!(c.ancestry(&id(2)), 2);
        // A fork: 5 on top of 3 makes two heads; the newest is anchored.
        c.add(id(5), &[id(3)]);
        assert_eq!(c.head_count(), 2);
        assert_eq!(c.anchor_head(), Some(id(5)));
        assert_eq!(c.ancestry(&id(5)), 3);
        // Re-adding is a no-op.
        c.add(id(5), &[id(3)]);
        assert_eq!(c.len(), 5);
        assert!(c.referenced.is_empty(), "only parents not in the chain are remembered");
        c.add(id(7), &[id(5), id(6)]);
        assert!(c.is_referenced(&id(6)) && !c.is_referenced(&id(5)));
        c.add(id(6), &[]);
        assert!(
            c.referenced.is_empty() && c.parents_for_next(8) == vec![id(7), id(4)],
            "6 named: not a head"
        );
    }
}
