//! Feeds the engine the proof-of-work prices the net layer learned (`NodeHandle::work_bits`,
//! raised by store nodes under load with `NeedsWork`): a task asks the mesh for the price of
//! the topics this device publishes on (each active conversation's topic and the receipt
//! topics of its other members) and queues the changes to the actor as
//! [`Job::WorkPrices`], which hands them to the engine before it mines. The actor never waits
//! on the mesh for a price.
//!
//! Bounded: at most [`WORK_PRICE_TOPICS_PER_ROUND`] topics asked per round (a cursor walks
//! through the rest in later rounds), each answer awaited at most [`WORK_PRICE_ASK_TIMEOUT`];
//! the prices last sent are kept for at most [`crate::engine::WORK_PRICES_MAX`] topics
//! (others are sent again when asked next). A full ops queue skips the round's changes; they
//! are sent at the next round.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_proto::Topic;
use tokio::sync::mpsc;

use super::Shared;
use super::actor::Job;
use crate::engine::{WORK_PRICES_MAX, receipt_topic};

/// How often prices are asked.
pub const WORK_PRICE_POLL: Duration = Duration::from_secs(2);
/// Topics asked at most per round.
pub const WORK_PRICE_TOPICS_PER_ROUND: usize = 256;
/// Longest wait for one answer of the mesh.
pub const WORK_PRICE_ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The topics this device publishes on, sorted (conversation topics, receipt topics).
fn topics(shared: &Shared) -> Vec<Topic> {
    let me = shared.identity.device;
    let Ok(convs) = shared.convs.lock() else { return Vec::new() };
    let mut out = Vec::new();
    for (id, snap) in convs.iter().filter(|(_, s)| s.active) {
        out.push(id.topic());
        out.extend(snap.members.iter().filter(|c| c.device != me).map(|c| receipt_topic(id, &c.device)));
    }
    drop(convs);
    out.sort_unstable();
    out.dedup();
    out
}

/// Runs until the node stops.
pub async fn run_work_prices(shared: Arc<Shared>, ops: mpsc::Sender<Job>) {
    let mut sent: HashMap<Topic, u32> = HashMap::new();
    let mut cursor = 0usize;
    let mut iv = tokio::time::interval(WORK_PRICE_POLL);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let all = topics(&shared);
        if all.is_empty() {
            continue;
        }
        if cursor >= all.len() {
            cursor = 0;
        }
        let round: Vec<Topic> = all
            .iter()
            .cycle()
            .skip(cursor)
            .take(WORK_PRICE_TOPICS_PER_ROUND.min(all.len()))
            .copied()
            .collect();
        cursor = cursor.saturating_add(round.len());
        let mut changes = Vec::new();
        for topic in round {
            let bits = match tokio::time::timeout(WORK_PRICE_ASK_TIMEOUT, shared.net.work_bits(topic)).await {
                Ok(Ok(b)) => b,
                Ok(Err(_)) => return, // the mesh stopped
                Err(_) => continue,   // busy: asked again next time round
            };
            if sent.get(&topic).copied().unwrap_or(0) != bits {
                changes.push((topic, bits));
            }
        }
        if changes.is_empty() {
            continue;
        }
        match ops.try_send(Job::WorkPrices(changes.clone())) {
            Ok(()) => {
                for (t, b) in changes {
                    if sent.len() < WORK_PRICES_MAX || sent.contains_key(&t) {
                        sent.insert(t, b);
                    }
                }
                // forget topics no longer published on (keeps `sent` to live topics)
                if sent.len() > all.len() {
                    sent.retain(|t, _| all.binary_search(t).is_ok());
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {} // sent at the next round
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use cairn_mls::ConversationId;
    use tokio::sync::broadcast;

    use super::*;
    use crate::engine::IdentityKeys;
    use crate::shell::ConvSnapshot;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_prices_of_the_topics_published_on_reach_the_actor_queue() {
        let dir = tempfile::tempdir().unwrap();
        let me = cairn_crypto::Identity::generate(1).unwrap();
        let other = cairn_crypto::Identity::generate(1).unwrap();
        let keys = IdentityKeys::of(&me);
        let limits = cairn_proto::Limits::default();
        let db = Arc::new(redb::Database::create(dir.path().join("node.redb")).unwrap());
        let keyring = crate::keyring::Keyring::derived(&keys.device_key);
        let node_db = crate::db::NodeDb::with_keyring(db, limits, Arc::new(keyring)).unwrap();
        let net =
            cairn_net::node::start(cairn_net::node::NodeConfig::new(dir.path().join("net"))).await.unwrap();
        let (events, _) = broadcast::channel(16);
        let shared = Arc::new(Shared::new(keys.clone(), node_db, net.clone(), events));
        let conv = ConversationId([9; 32]);
        let members = vec![me.cert, other.cert];
        shared.set_conversation(conv, ConvSnapshot { epoch: 1, active: true, members });
        // a conversation left: not asked
        shared.set_conversation(
            ConversationId([8; 32]),
            ConvSnapshot { epoch: 1, active: false, members: vec![] },
        );
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(run_work_prices(shared.clone(), tx));
        let job = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        let Job::WorkPrices(mut prices) = job else { panic!("not a price update") };
        prices.sort_unstable();
        let floor = net.work_bits(conv.topic()).await.unwrap();
        let mut want = vec![(conv.topic(), floor), (receipt_topic(&conv, &other.device()), floor)];
        want.sort_unstable();
        assert_eq!(prices, want, "the conversation's topic and the other member's receipt topic");
        // unchanged prices are not sent again
        assert!(tokio::time::timeout(WORK_PRICE_POLL * 2, rx.recv()).await.is_err());
        shared.stopping.store(true, Ordering::Relaxed);
        task.abort();
        net.shutdown().await;
    }
}
