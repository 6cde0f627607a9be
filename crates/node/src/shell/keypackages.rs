//! Other devices' key packages, fetched from the mesh before a commit needs them (async, with
//! a deadline), so the actor never waits for the mesh.
//!
//! A batch is used only if its hash equals the one its device recorded on the ledger
//! (`PublishKeyPackages`, proven read): a batch substituted on the device's topic (by a store
//! node, a relay or anyone replaying an old batch) is refused with [`KeyPackageRefusal`] and the
//! fetch goes on until its deadline.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cairn_ledger::state::KeyPackageRecord;
use cairn_mls::{KeyPackageBatch, VerifiedKeyPackage};
use cairn_net::node::NodeHandle;
use cairn_proto::envelope::unpad;
use cairn_proto::{DeviceId, Envelope, Limits, Message, Topic};

use crate::error::NodeError;

/// Devices whose batches are cached at most. Overflow policy: the cache is cleared (the
/// next fetch re-reads the local history and the store nodes).
pub const KP_DEVICES_MAX: usize = 10_000;
/// Distinct batches kept per device at most (the newest by timestamp; the ledger says which
/// one is valid). Overflow policy: the oldest is dropped.
pub const KP_BATCHES_PER_DEVICE: usize = 4;
/// Used (one-time) key packages remembered at most. Overflow policy: cleared; a reused
/// package is refused by the invitee's MLS client and the add is retried with another.
pub const KP_USED_MAX: usize = 100_000;

/// A batch seen from a device: its timestamp, ledger hash and encoded packages.
struct Candidate {
    timestamp_ms: u64,
    hash: [u8; 32],
    packages: Vec<Vec<u8>>,
}

/// Why no key package of a device could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyPackageRefusal {
    /// The device never recorded a batch hash on the ledger.
    #[error(
        "device {device} has recorded no key-package batch on the ledger: its node records one once registered; try again in a few seconds"
    )]
    NotOnLedger {
        /// Device (text form).
        device: String,
    },
    /// Every batch seen differs from the hash on the ledger (substituted or stale).
    #[error(
        "refused key-package batch {got} of device {device}: the ledger records batch {expected} (substituted or stale batch); other store nodes are asked again, and if this persists that user's node must republish its key packages"
    )]
    HashMismatch {
        /// Device (text form).
        device: String,
        /// Hash on the ledger (hex).
        expected: String,
        /// Hash of the newest batch seen (hex).
        got: String,
    },
}

impl From<KeyPackageRefusal> for NodeError {
    fn from(e: KeyPackageRefusal) -> Self {
        NodeError::Mesh(e.to_string())
    }
}

/// Key packages seen on the mesh.
#[derive(Default)]
pub struct KeyPackages {
    batches: Mutex<HashMap<DeviceId, Vec<Candidate>>>,
    topics: Mutex<HashMap<Topic, DeviceId>>,
    used: Mutex<HashSet<Vec<u8>>>,
}

/// Topic on which a device publishes its key packages.
pub fn key_package_topic(device: &DeviceId) -> Topic {
    Topic(blake3::derive_key("cairn 2026-11 key package topic v1", &device.0))
}

/// The signed key-package message in `env`, if `device` signed it for this envelope.
fn batch_message(device: &DeviceId, env: &Envelope, limits: &Limits) -> Option<Message> {
    let plain = unpad(env.payload.as_deref()?).ok()?;
    let m = Message::decode(plain, limits).ok()?;
    if m.verify().is_err() || m.sender.device != *device || m.header_mismatch(&env.header).is_some() {
        return None;
    }
    Some(m)
}

/// The record a device puts on the ledger for the batch in its own key-package envelope:
/// [`KeyPackageBatch::ledger_hash`] of the signed message body, and the package count.
pub fn ledger_record(device: &DeviceId, env: &Envelope, limits: &Limits) -> Option<KeyPackageRecord> {
    let m = batch_message(device, env, limits)?;
    let batch = KeyPackageBatch::decode(&m.body).ok()?;
    let count = u32::try_from(batch.packages.len()).ok()?;
    Some(KeyPackageRecord { batch_hash: KeyPackageBatch::ledger_hash(&m.body), count })
}

impl KeyPackages {
    /// The device whose key-package topic this is, if followed.
    pub fn device_of(&self, topic: &Topic) -> Option<DeviceId> {
        self.topics.lock().ok().and_then(|m| m.get(topic).copied())
    }

    /// Keeps a well-formed batch signed by `device` (which one is valid is decided against
    /// the ledger when a package is taken).
    pub fn offer(&self, device: DeviceId, env: &Envelope, limits: &Limits) {
        let Some(m) = batch_message(&device, env, limits) else {
            tracing::warn!("ignored a key-package envelope not signed by {}", device.to_text());
            return;
        };
        let Ok(batch) = KeyPackageBatch::decode(&m.body) else { return };
        let hash = KeyPackageBatch::ledger_hash(&m.body);
        if let Ok(mut cache) = self.batches.lock() {
            if cache.len() >= KP_DEVICES_MAX && !cache.contains_key(&device) {
                cache.clear();
            }
            let list = cache.entry(device).or_default();
            if list.iter().any(|c| c.hash == hash) {
                return;
            }
            list.push(Candidate { timestamp_ms: m.timestamp_ms, hash, packages: batch.packages });
            list.sort_by_key(|c| std::cmp::Reverse(c.timestamp_ms));
            list.truncate(KP_BATCHES_PER_DEVICE);
        }
    }

    /// An unused key package of `device` (else its last-resort one) from the batch whose hash
    /// is `expected`, the device's record on the ledger. `Ok(None)`: no batch seen yet. When
    /// no batch seen matches, all of them are dropped and the refusal returned.
    pub fn take(
        &self,
        device: &DeviceId,
        expected: &KeyPackageRecord,
    ) -> Result<Option<VerifiedKeyPackage>, KeyPackageRefusal> {
        let (packages, newest) = {
            let Ok(mut cache) = self.batches.lock() else { return Ok(None) };
            let Some(list) = cache.get_mut(device) else { return Ok(None) };
            let newest = list.first().map(|c| c.hash);
            let found = list.iter().find(|c| c.hash == expected.batch_hash).map(|c| c.packages.clone());
            if found.is_none() {
                // Refused batches are not kept: they make room for the recorded one.
                list.clear();
            }
            (found, newest)
        };
        let Some(packages) = packages else {
            return match newest {
                None => Ok(None),
                Some(got) => Err(KeyPackageRefusal::HashMismatch {
                    device: device.to_text(),
                    expected: hex::encode(expected.batch_hash),
                    got: hex::encode(got),
                }),
            };
        };
        let Ok(mut used) = self.used.lock() else { return Ok(None) };
        if used.len() >= KP_USED_MAX {
            used.clear();
        }
        let mut last_resort = None;
        for p in packages {
            let Ok(v) = cairn_mls::verify_key_package(&p) else { continue };
            if v.cert.device != *device {
                continue;
            }
            if v.last_resort {
                last_resort = Some(v);
            } else if used.insert(p) {
                return Ok(Some(v));
            }
        }
        Ok(last_resort)
    }

    /// Fetches one key package of `device` from the batch recorded on the ledger
    /// (`expected`, a proven read; `None`: never recorded), waiting at most `wait` for the
    /// mesh. Substituted batches are refused and the store nodes asked again every 2 s.
    pub async fn fetch(
        &self,
        net: &NodeHandle,
        device: DeviceId,
        expected: Option<KeyPackageRecord>,
        limits: &Limits,
        wait: Duration,
    ) -> Result<VerifiedKeyPackage, NodeError> {
        let Some(expected) = expected else {
            return Err(KeyPackageRefusal::NotOnLedger { device: device.to_text() }.into());
        };
        let topic = key_package_topic(&device);
        let fresh = self
            .topics
            .lock()
            .map(|mut m| {
                if m.len() >= KP_DEVICES_MAX {
                    m.clear();
                }
                m.insert(topic, device).is_none()
            })
            .unwrap_or(false);
        if fresh {
            // Whatever the local history already holds, then what the store nodes have.
            if let Ok(page) = net.history().page(&topic, 0, 256) {
                for (_, env) in page.entries {
                    self.offer(device, &env, limits);
                }
            }
            net.subscribe(topic).await.map_err(|e| NodeError::Mesh(e.to_string()))?;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut last_ask = tokio::time::Instant::now();
        let mut refusal = None;
        loop {
            match self.take(&device, &expected) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => {
                    if refusal.is_none() {
                        tracing::warn!("{e}");
                    }
                    refusal = Some(e);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(match refusal {
                    Some(e) => e.into(),
                    None => NodeError::Mesh(format!(
                        "no key packages of device {} arrived from store nodes: is that user's node running and connected?",
                        device.to_text()
                    )),
                });
            }
            if last_ask.elapsed() > Duration::from_secs(2) {
                // Ask the store nodes again (gossip may have missed a fresh batch).
                last_ask = tokio::time::Instant::now();
                let _ = net.subscribe(topic).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
