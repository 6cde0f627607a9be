//! Other devices' key packages, fetched from the mesh before a commit needs them (async, with
//! a deadline), so the actor never waits for the mesh.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use cairn_mls::{KeyPackageBatch, VerifiedKeyPackage};
use cairn_net::node::NodeHandle;
use cairn_proto::envelope::unpad;
use cairn_proto::{DeviceId, Envelope, Limits, Message, Topic};

use crate::error::NodeError;

/// Devices whose newest batch is cached at most. Overflow policy: the cache is cleared (the
/// next fetch re-reads the local history and the store nodes).
pub const KP_DEVICES_MAX: usize = 10_000;
/// Used (one-time) key packages remembered at most. Overflow policy: cleared; a reused
/// package is refused by the invitee's MLS client and the add is retried with another.
pub const KP_USED_MAX: usize = 100_000;

/// The newest key-package batch seen from a device: its timestamp and the encoded packages.
type Entry = (u64, Vec<Vec<u8>>);

/// Key packages seen on the mesh.
#[derive(Default)]
pub struct KeyPackages {
    batches: Mutex<HashMap<DeviceId, Entry>>,
    topics: Mutex<HashMap<Topic, DeviceId>>,
    used: Mutex<HashSet<Vec<u8>>>,
}

/// Topic on which a device publishes its key packages.
pub fn key_package_topic(device: &DeviceId) -> Topic {
    Topic(blake3::derive_key("cairn 2026-11 key package topic v1", &device.0))
}

impl KeyPackages {
    /// The device whose key-package topic this is, if followed.
    pub fn device_of(&self, topic: &Topic) -> Option<DeviceId> {
        self.topics.lock().ok().and_then(|m| m.get(topic).copied())
    }

    /// Keeps the newest valid batch a device published.
    pub fn offer(&self, device: DeviceId, env: &Envelope, limits: &Limits) {
        let Some(Ok(plain)) = env.payload.as_deref().map(unpad) else { return };
        let Ok(m) = Message::decode(plain, limits) else { return };
        if m.verify().is_err() || m.sender.device != device || m.header_mismatch(&env.header).is_some() {
            tracing::warn!("ignored a key-package envelope not signed by {}", device.to_text());
            return;
        }
        let Ok(batch) = KeyPackageBatch::decode(&m.body) else { return };
        if let Ok(mut cache) = self.batches.lock() {
            if cache.len() >= KP_DEVICES_MAX {
                cache.clear();
            }
            if cache.get(&device).is_none_or(|(ts, _)| *ts < m.timestamp_ms) {
                cache.insert(device, (m.timestamp_ms, batch.packages));
            }
        }
    }

    /// An unused key package of `device` (else its last-resort one), if one is cached.
    fn take(&self, device: &DeviceId) -> Option<VerifiedKeyPackage> {
        let packages = self.batches.lock().ok()?.get(device).map(|(_, b)| b.clone())?;
        let mut used = self.used.lock().ok()?;
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
                return Some(v);
            }
        }
        last_resort
    }

    /// Fetches one key package of `device`, waiting at most `wait` for the mesh.
    pub async fn fetch(
        &self,
        net: &NodeHandle,
        device: DeviceId,
        limits: &Limits,
        wait: Duration,
    ) -> Result<VerifiedKeyPackage, NodeError> {
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
        loop {
            if let Some(v) = self.take(&device) {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Mesh(format!(
                    "no key packages of device {} arrived from store nodes: is that user's node running and connected?",
                    device.to_text()
                )));
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
