//! Engines driven in-process, as the node's tests use them: one user per temporary directory,
//! envelopes handed over by the test.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_crypto::Identity;
use cairn_mls::{ConversationId, KeyPackageBatch, MemorySequencer, VerifiedKeyPackage};
use cairn_node::engine::{Arrival, Engine, EngineConfig, IdentityKeys, Invitations, Io};
use cairn_proto::envelope::unpad;
use cairn_proto::pow::Difficulty;
use cairn_proto::{Envelope, Limits, Message};
use cairn_store::Store;
use redb::Database;

/// One user's engine and what its shell was asked to do.
pub struct User {
    pub engine: Engine,
    /// What the shell was asked to do, since the last look (publications excepted).
    pub io: Vec<Io>,
    /// The user's local history (what the mesh delivered).
    pub history: Arc<Store>,
    setup: Setup,
    id: Identity,
    dir: tempfile::TempDir,
}

/// How a user's engine is configured.
#[derive(Clone, Copy)]
pub struct Setup {
    /// Whose invitations join at once.
    pub invitations: Invitations,
    /// Plaintexts sealed with a keyring file in the user's directory (as a node's), else with
    /// keys derived from the device key.
    pub keyring: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self { invitations: Invitations::Everyone, keyring: false }
    }
}

fn open(dir: &tempfile::TempDir, id: &Identity, setup: Setup) -> (Engine, Arc<Store>) {
    let limits = Limits::default();
    let db = Arc::new(Database::create(dir.path().join("node.redb")).unwrap());
    let history = Arc::new(Store::open(&dir.path().join("history.redb"), limits).unwrap());
    let mut cfg = EngineConfig::new(limits);
    cfg.difficulty = Difficulty { base_bits: 0 };
    cfg.invitations = setup.invitations;
    cfg.keyring = setup.keyring.then(|| dir.path().join("keyring"));
    (Engine::open(db, history.clone(), IdentityKeys::of(id), cfg).unwrap(), history)
}

impl User {
    /// The user's directory (`node.redb`, `history.redb`, `keyring`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A new user who accepts every invitation.
pub fn user(now: u64) -> User {
    user_with(now, Setup::default())
}

/// A new user.
pub fn user_with(now: u64, setup: Setup) -> User {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate(now).unwrap();
    let (engine, history) = open(&dir, &id, setup);
    User { engine, io: Vec::new(), history, setup, id, dir }
}

/// The same user after a restart: the engine is dropped (as by a crash after its last
/// commit) and opened again from its directory.
pub fn restart(u: User) -> User {
    let User { engine, history, setup, id, dir, .. } = u;
    drop(engine);
    drop(history);
    let (engine, history) = open(&dir, &id, setup);
    User { engine, io: Vec::new(), history, setup, id, dir }
}

/// A key package of `u` as a committer gets it from the mesh (its last-resort one, which any
/// number of Welcomes may use).
pub fn key_package(u: &mut User, now: u64) -> VerifiedKeyPackage {
    let env = u.engine.key_package_envelope(1, 3600, now).unwrap();
    let plain = unpad(env.payload.as_deref().unwrap()).unwrap();
    let m = Message::decode(plain, &Limits::default()).unwrap();
    let batch = KeyPackageBatch::decode(&m.body).unwrap();
    cairn_mls::verify_key_package(batch.packages.first().unwrap()).unwrap()
}

/// Envelopes `u` published since the last call (the rest of its I/O is kept in `u.io`).
pub fn published(u: &mut User) -> Vec<Envelope> {
    let mut out = Vec::new();
    for io in u.engine.take_io() {
        match io {
            Io::Publish(env) => out.push(*env),
            other => u.io.push(other),
        }
    }
    out
}

/// `alice` creates a conversation with `bob`, who joins it from the Welcome.
pub fn converse(alice: &mut User, bob: &mut User, seq: &mut MemorySequencer, now: u64) -> ConversationId {
    let kp = key_package(bob, now);
    let (conv, _) = alice.engine.create(vec![kp], seq, now).unwrap();
    let welcomes = published(alice);
    deliver(bob, &welcomes, seq, now);
    assert_eq!(bob.engine.conversations(), vec![conv], "bob joined");
    conv
}

/// The texts of `conv`'s local history at `u`, oldest first (at most 100).
pub fn texts(u: &User, conv: &ConversationId) -> Vec<String> {
    u.engine
        .db()
        .messages(&conv.0, 0, 100)
        .unwrap()
        .into_iter()
        .map(|s| String::from_utf8_lossy(&s.message.body[1..]).into_owned())
        .collect()
}

/// Hands `envs` to `to`, as the mesh would (its receipts and the like are dropped).
pub fn deliver(to: &mut User, envs: &[Envelope], seq: &mut MemorySequencer, now: u64) {
    let batch = envs.iter().map(|e| Arrival { id: e.id(), envelope: e.clone(), after_gap: false }).collect();
    to.engine.receive(batch, seq, now);
    let _ = published(to);
}

/// Keeps `envs` in `to`'s local history, then hands them to its engine (as the node's mesh
/// does: the history first).
pub fn deliver_kept(to: &mut User, envs: &[Envelope], seq: &mut MemorySequencer, now: u64) {
    keep_only(to, envs);
    deliver(to, envs, seq, now);
}

/// Keeps `envs` in `to`'s local history without handing them to its engine (a stop between
/// the mesh's delivery and the engine's read).
pub fn keep_only(to: &mut User, envs: &[Envelope]) {
    to.history.append(envs).unwrap();
}
