//! Shared test helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_crypto::Identity;
use cairn_mls::{
    Client, Config, ConversationId, Delivered, DeviceSigner, KeyPackagePool, MemorySequencer, Received,
};
use cairn_proto::ed25519::SigningKey;
use cairn_proto::{DeviceCert, DeviceId};

pub(crate) const NOW: u64 = 1_800_000_000_000;
/// The authenticated data tests bind to their messages (the node binds a header hash).
pub(crate) const AAD: &[u8] = b"test envelope header hash";

/// A device with its own redb file.
pub(crate) struct Dev {
    pub(crate) client: Client,
    /// The redb database the client stores into (shared with the test's own tables).
    pub(crate) db: Arc<redb::Database>,
    pub(crate) path: PathBuf,
    pub(crate) account_key: SigningKey,
    pub(crate) device_key: SigningKey,
    pub(crate) cert: DeviceCert,
    _dir: Arc<tempfile::TempDir>,
}

pub(crate) fn open_client(
    path: &Path,
    device_key: &SigningKey,
    cert: DeviceCert,
) -> (Client, Arc<redb::Database>) {
    open_client_with(path, device_key, cert, Config::default())
}

fn open_client_with(
    path: &Path,
    device_key: &SigningKey,
    cert: DeviceCert,
    config: Config,
) -> (Client, Arc<redb::Database>) {
    let db = Arc::new(redb::Database::create(path).unwrap());
    let signer = DeviceSigner::new(device_key.clone(), cert).unwrap();
    (Client::open(db.clone(), signer, config).unwrap(), db)
}

/// A second client over a fresh copy of `dev`'s file, with another configuration.
pub(crate) fn reopen_with(dev: &Dev, config: Config) -> Client {
    let copy = dev.path.with_extension("copy.redb");
    std::fs::copy(&dev.path, &copy).unwrap();
    open_client_with(&copy, &dev.device_key, dev.cert, config).0
}

impl Dev {
    pub(crate) fn new() -> Self {
        let id = Identity::generate(NOW).unwrap();
        Self::with_keys(id.account_key.expect("generated with an account key"), id.device_key)
    }

    /// Another device of the same account.
    pub(crate) fn sibling(&self) -> Self {
        let key = SigningKey::from_bytes(&cairn_crypto::keystore::random_bytes::<32>().unwrap());
        Self::with_keys(self.account_key.clone(), key)
    }

    pub(crate) fn with_keys(account_key: SigningKey, device_key: SigningKey) -> Self {
        let cert = DeviceCert::issue(&account_key, DeviceId(device_key.verifying_key().to_bytes()), NOW);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let (client, db) = open_client(&path, &device_key, cert);
        Self { client, db, path, account_key, device_key, cert, _dir: Arc::new(dir) }
    }

    pub(crate) fn device(&self) -> DeviceId {
        self.cert.device
    }

    /// Publishes `n` one-time packages and a last-resort one into `pool`.
    pub(crate) fn publish(&self, pool: &mut KeyPackagePool, n: usize) {
        let batch = self.client.key_package_batch_at(n, true, NOW).unwrap();
        pool.publish(&batch.encode()).unwrap();
    }

    /// Reopens the client from its file (a restart): the old client and its database handle
    /// are dropped first.
    pub(crate) fn restart(self) -> Self {
        let Dev { client, db, path, account_key, device_key, cert, _dir } = self;
        drop(client);
        drop(db);
        let (client, db) = open_client(&path, &device_key, cert);
        Dev { client, db, path, account_key, device_key, cert, _dir }
    }
}

/// Alice creates a conversation and adds `others` (all their devices' packages from `pool`).
pub(crate) fn group(creator: &mut Dev, others: &mut [&mut Dev], seq: &mut MemorySequencer) -> ConversationId {
    let id = creator.client.create(NOW).unwrap();
    if others.is_empty() {
        return id;
    }
    let mut pool = KeyPackagePool::new();
    for o in others.iter() {
        o.publish(&mut pool, 2);
    }
    let kps = others.iter().map(|o| pool.take(&o.device()).unwrap()).collect();
    let out = creator.client.add(&id, kps, seq, NOW).unwrap().unwrap();
    let welcome = out.welcome.unwrap();
    for o in others.iter_mut() {
        assert!(welcome.recipients.iter().any(|(d, t)| *d == o.device() && *t == cairn_mls::inbox_topic(d)));
        let joined = o.client.join(&welcome.bytes, NOW).unwrap();
        assert_eq!(joined, id);
    }
    id
}

pub(crate) fn delivered(r: Received) -> Delivered {
    match r {
        Received::Message(d) => d,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Sends from `from` and checks every `to` reads it.
pub(crate) fn say(from: &mut Dev, to: &mut [&mut Dev], id: &ConversationId, text: &str) {
    let ct = from.client.send(id, text.as_bytes(), AAD).unwrap();
    for t in to.iter_mut() {
        let d = delivered(t.client.receive(id, &ct, AAD).unwrap());
        assert_eq!(d.body, text.as_bytes());
        assert_eq!(d.sender, from.cert);
    }
}
