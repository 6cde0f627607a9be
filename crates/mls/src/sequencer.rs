//! An in-memory [`CommitSequencer`] for tests, benches and single-process setups.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use cairn_proto::Topic;
use cairn_proto::authority::AuthorityChain;
use cairn_proto::ed25519::SigningKey;
use cairn_proto::sequencer::{CommitSequencer, HANDSHAKE_BYTES_MAX, Sequenced, SequencerError, TopicKeys};

/// Per-topic ordered logs in memory. Clones share the same logs, so several clients in one
/// process (a test) see one order. Submissions are checked against each topic's authority
/// keys exactly as the ledger checks them, so tests catch a member signing with the wrong key.
#[derive(Debug, Clone)]
pub struct MemorySequencer {
    logs: Rc<RefCell<HashMap<Topic, Vec<Vec<u8>>>>>,
    authority: Rc<RefCell<HashMap<Topic, AuthorityChain>>>,
    max: usize,
}

impl Default for MemorySequencer {
    fn default() -> Self {
        Self { logs: Rc::default(), authority: Rc::default(), max: HANDSHAKE_BYTES_MAX }
    }
}

impl MemorySequencer {
    /// An empty sequencer with the protocol's limit, [`HANDSHAKE_BYTES_MAX`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sequencer accepting handshakes up to `max` bytes (benches: what larger
    /// limits would allow).
    pub fn with_max(max: usize) -> Self {
        Self { logs: Rc::default(), authority: Rc::default(), max }
    }

    /// Number of handshake messages ordered for `topic`.
    pub fn len(&self, topic: &Topic) -> u64 {
        self.logs.borrow().get(topic).map_or(0, |l| l.len() as u64)
    }

    /// True if no topic has any message.
    pub fn is_empty(&self) -> bool {
        self.logs.borrow().values().all(Vec::is_empty)
    }
}

impl CommitSequencer for MemorySequencer {
    fn submit(
        &mut self,
        topic: Topic,
        after: u64,
        payload: Vec<u8>,
        keys: TopicKeys,
    ) -> Result<u64, SequencerError> {
        if payload.len() > self.max {
            return Err(SequencerError::TooLarge { len: payload.len(), max: self.max });
        }
        let mut logs = self.logs.borrow_mut();
        let log = logs.entry(topic).or_default();
        let current = log.len() as u64;
        if after != current {
            return Err(SequencerError::Stale { after, current });
        }
        let key = SigningKey::from_bytes(&keys.seed).verifying_key().to_bytes();
        let mut trees = self.authority.borrow_mut();
        let mut tree = match trees.get(&topic) {
            Some(t) => t.clone(),
            None => AuthorityChain::found(&topic, &key).ok_or(SequencerError::NotMember)?,
        };
        tree.apply(&key, keys.next.as_ref()).map_err(|_| SequencerError::NotMember)?;
        trees.insert(topic, tree);
        log.push(payload);
        Ok(current)
    }

    fn fetch(&self, topic: &Topic, from: u64, max: usize) -> Result<Vec<Sequenced>, SequencerError> {
        let logs = self.logs.borrow();
        let Some(log) = logs.get(topic) else { return Ok(Vec::new()) };
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(log.len());
        Ok(log[start..]
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, p)| Sequenced { topic: *topic, seq: (start + i) as u64, payload: p.clone() })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_submissions_are_refused_and_order_is_dense() {
        let mut s = MemorySequencer::new();
        let conv = [1; 32];
        let t = Topic::for_conversation(&conv);
        let k = TopicKeys { seed: cairn_proto::id::founder_seed(&conv), next: None };
        assert_eq!(s.submit(t, 0, vec![1], k), Ok(0));
        assert_eq!(s.submit(t, 0, vec![2], k), Err(SequencerError::Stale { after: 0, current: 1 }));
        assert_eq!(s.submit(t, 1, vec![3], k), Ok(1));
        let got = s.fetch(&t, 1, 10).unwrap_or_default();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, 1);
        assert_eq!(got[0].payload, vec![3]);
        assert!(s.fetch(&t, 9, 10).unwrap_or_default().is_empty());
        let big = vec![0; HANDSHAKE_BYTES_MAX + 1];
        assert!(matches!(s.submit(t, 2, big, k), Err(SequencerError::TooLarge { .. })));
        // Another key, on this topic or founding another one, is refused.
        let other = TopicKeys { seed: [9; 32], next: None };
        assert_eq!(s.submit(t, 2, vec![4], other), Err(SequencerError::NotMember));
        assert_eq!(s.submit(Topic([2; 32]), 0, vec![4], other), Err(SequencerError::NotMember));
        assert_eq!(s.len(&t), 2);
    }
}
