//! The Welcome as shipped ([`WelcomeBundle`], its ratchet tree sealed to the invitees) and
//! joining from it.

use cairn_proto::DecodeError;
use cairn_proto::codec::{Reader, Writer};
use openmls::prelude::{
    KeyPackage, KeyPackageBundle, KeyPackageRef, MlsMessageBodyIn, MlsMessageIn, RatchetTreeIn, StagedWelcome,
};
use openmls_traits::OpenMlsProvider as _;
use openmls_traits::random::OpenMlsRand as _;
use tls_codec::{DeserializeBytes as _, Serialize as _};

use super::{Client, Conversation, ConversationId, Meta, MlsError};
use crate::CIPHERSUITE;
use crate::credential::verify_credential;
use crate::storage::CairnProvider;

/// Format version of a [`WelcomeBundle`].
pub const WELCOME_BUNDLE_VERSION: u8 = 2;

/// Largest MLS Welcome accepted, in bytes.
pub const WELCOME_BYTES_MAX: usize = 8 << 20;

/// Largest ratchet tree accepted, in bytes.
pub const RATCHET_TREE_BYTES_MAX: usize = 32 << 20;

/// A Welcome as shipped: the MLS Welcome plus the ratchet tree (out of band, so the Welcome
/// stays small) and where in the handshake order the new member starts.
///
/// The tree names every member (their credentials), and the bundle travels on the invitee's
/// inbox topic where store nodes see it: it is encrypted under a fresh AEAD key, and that key
/// is HPKE-sealed to each new member's key-package init key (the key the MLS Welcome's own
/// group secrets are sealed to), so only the invitees read who is in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeBundle {
    /// The conversation.
    pub conversation: ConversationId,
    /// Handshake messages already applied when the member joins (it fetches from here).
    pub applied: u64,
    /// MLS `Welcome` message bytes.
    pub welcome: Vec<u8>,
    /// AEAD nonce of the sealed tree.
    pub tree_nonce: Vec<u8>,
    /// The TLS-encoded ratchet tree, AEAD-encrypted (with tag).
    pub sealed_tree: Vec<u8>,
    /// The tree key, sealed to each new member.
    pub keys: Vec<SealedTreeKey>,
}

/// The tree key of a [`WelcomeBundle`], HPKE-sealed to one key package's init key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedTreeKey {
    /// The key package it is sealed to (its TLS-encoded `KeyPackageRef`, which the MLS Welcome
    /// names in the clear too).
    pub key_package_ref: Vec<u8>,
    /// HPKE encapsulated key.
    pub kem_output: Vec<u8>,
    /// HPKE ciphertext of the tree key.
    pub ciphertext: Vec<u8>,
}

/// Most recipients of one Welcome bundle.
pub const WELCOME_RECIPIENTS_MAX: usize = 1024;

pub(super) const TREE_KEY_INFO: &[u8] = b"cairn 2026-11 welcome tree key v1";

impl WelcomeBundle {
    /// Builds a bundle whose tree only the owners of `recipients` can read.
    pub fn seal(
        provider: &impl openmls_traits::OpenMlsProvider,
        conversation: ConversationId,
        applied: u64,
        welcome: Vec<u8>,
        ratchet_tree: &[u8],
        recipients: &[KeyPackage],
    ) -> Result<Self, MlsError> {
        use openmls_traits::crypto::OpenMlsCrypto as _;
        let fail = |what: &str, e: String| MlsError::Rejected(format!("sealing the welcome ({what}): {e}"));
        if recipients.is_empty() || recipients.len() > WELCOME_RECIPIENTS_MAX {
            return Err(fail("recipients", format!("{} (1..={WELCOME_RECIPIENTS_MAX})", recipients.len())));
        }
        let alg = CIPHERSUITE.aead_algorithm();
        let key = provider
            .rand()
            .random_vec(CIPHERSUITE.aead_key_length())
            .map_err(|e| fail("rng", format!("{e:?}")))?;
        let tree_nonce = provider
            .rand()
            .random_vec(CIPHERSUITE.aead_nonce_length())
            .map_err(|e| fail("rng", format!("{e:?}")))?;
        let aad = Self::aad(&conversation, applied);
        let sealed_tree = provider
            .crypto()
            .aead_encrypt(alg, &key, ratchet_tree, &tree_nonce, &aad)
            .map_err(|e| fail("tree", format!("{e:?}")))?;
        let mut keys = Vec::with_capacity(recipients.len());
        for kp in recipients {
            let r = kp.hash_ref(provider.crypto()).map_err(|e| fail("key package ref", e.to_string()))?;
            let ct = provider
                .crypto()
                .hpke_seal(
                    CIPHERSUITE.hpke_config(),
                    kp.hpke_init_key().as_slice(),
                    TREE_KEY_INFO,
                    &aad,
                    &key,
                )
                .map_err(|e| fail("hpke", format!("{e:?}")))?;
            keys.push(SealedTreeKey {
                key_package_ref: r
                    .tls_serialize_detached()
                    .map_err(|e| fail("key package ref", e.to_string()))?,
                kem_output: ct.kem_output.as_slice().to_vec(),
                ciphertext: ct.ciphertext.as_slice().to_vec(),
            });
        }
        Ok(Self { conversation, applied, welcome, tree_nonce, sealed_tree, keys })
    }

    pub(super) fn aad(conversation: &ConversationId, applied: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(40);
        aad.extend_from_slice(&conversation.0);
        aad.extend_from_slice(&applied.to_be_bytes());
        aad
    }

    /// Opens the tree with the init key of one of this device's key packages (before the
    /// Welcome is processed: OpenMLS deletes a used key package).
    pub(super) fn open_tree(&self, provider: &CairnProvider) -> Result<Vec<u8>, MlsError> {
        use openmls_traits::crypto::OpenMlsCrypto as _;
        use openmls_traits::storage::StorageProvider as _;
        let aad = Self::aad(&self.conversation, self.applied);
        for k in &self.keys {
            let Ok(r) = KeyPackageRef::tls_deserialize_exact_bytes(&k.key_package_ref) else { continue };
            let bundle: Option<KeyPackageBundle> = provider.storage().key_package(&r).ok().flatten();
            let Some(bundle) = bundle else { continue };
            let ct = openmls_traits::types::HpkeCiphertext {
                kem_output: k.kem_output.clone().into(),
                ciphertext: k.ciphertext.clone().into(),
            };
            let key = provider
                .crypto()
                .hpke_open(CIPHERSUITE.hpke_config(), &ct, bundle.init_private_key(), TREE_KEY_INFO, &aad)
                .map_err(|_| {
                    MlsError::Rejected(
                        "welcome: the tree key does not open with this device's key package".into(),
                    )
                })?;
            return provider
                .crypto()
                .aead_decrypt(CIPHERSUITE.aead_algorithm(), &key, &self.sealed_tree, &self.tree_nonce, &aad)
                .map_err(|_| MlsError::Rejected("welcome: the sealed ratchet tree does not open".into()));
        }
        Err(MlsError::Rejected("welcome: not addressed to any key package of this device".into()))
    }

    /// Canonical encoding: `version:u8 id:[32] applied:u64 welcome:bytes nonce:bytes
    /// sealed_tree:bytes count:u16 (ref:bytes kem:bytes ct:bytes)*`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            Writer::with_capacity(64 + self.welcome.len() + self.sealed_tree.len() + 128 * self.keys.len());
        w.u8(WELCOME_BUNDLE_VERSION);
        w.raw(&self.conversation.0);
        w.u64(self.applied);
        w.bytes(&self.welcome);
        w.bytes(&self.tree_nonce);
        w.bytes(&self.sealed_tree);
        w.u16(self.keys.len() as u16);
        for k in &self.keys {
            w.bytes(&k.key_package_ref);
            w.bytes(&k.kem_output);
            w.bytes(&k.ciphertext);
        }
        w.finish()
    }

    /// Decodes a bundle, with bounds.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.version("welcome bundle", WELCOME_BUNDLE_VERSION)?;
        let conversation = ConversationId(r.array("welcome.conversation")?);
        let applied = r.u64("welcome.applied")?;
        let welcome = r.bytes(WELCOME_BYTES_MAX, "welcome.welcome")?.to_vec();
        let tree_nonce = r.bytes(64, "welcome.tree_nonce")?.to_vec();
        let sealed_tree = r.bytes(RATCHET_TREE_BYTES_MAX + 64, "welcome.sealed_tree")?.to_vec();
        let n = r.count(WELCOME_RECIPIENTS_MAX, "welcome.keys")?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                field: "welcome.keys",
                reason: "a bundle seals the tree to someone",
            });
        }
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            keys.push(SealedTreeKey {
                key_package_ref: r.bytes(64, "welcome.key.ref")?.to_vec(),
                kem_output: r.bytes(256, "welcome.key.kem")?.to_vec(),
                ciphertext: r.bytes(256, "welcome.key.ct")?.to_vec(),
            });
        }
        r.finish()?;
        Ok(Self { conversation, applied, welcome, tree_nonce, sealed_tree, keys })
    }
}

/// Who sent a Welcome and what it is for, read without joining (see
/// [`Client::inspect_welcome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeInfo {
    /// The conversation it invites to.
    pub conversation: ConversationId,
    /// The certificate of the member whose commit added this device (the inviter).
    pub inviter: cairn_proto::DeviceCert,
    /// Member devices of the conversation, this device included.
    pub members: usize,
}

impl Client {
    /// Joins a conversation from a [`WelcomeBundle`] received in this device's inbox. Every
    /// member's certificate chain is checked; a broken one refuses the whole Welcome.
    pub fn join(&mut self, bundle: &[u8], now_ms: u64) -> Result<ConversationId, MlsError> {
        self.exclusive(|s| s.join_now(bundle, now_ms))
    }

    /// Reads who invites this device to which conversation, with every check of [`Self::join`]
    /// (the Welcome opens with one of this device's key packages, every member's certificate
    /// chain verifies), but creates no MLS state and consumes no key package: whatever the
    /// staging wrote is discarded. So a Welcome can wait for the user's consent and be joined
    /// later with [`Self::join`].
    pub fn inspect_welcome(&mut self, bundle: &[u8]) -> Result<WelcomeInfo, MlsError> {
        self.exclusive(|s| {
            let result = (|| {
                let (b, staged) = s.stage_welcome(bundle)?;
                let sender = staged
                    .welcome_sender()
                    .map_err(|e| MlsError::Rejected(format!("welcome: no sender leaf: {e}")))?;
                let inviter = verify_credential(sender.credential(), sender.signature_key().as_slice())?;
                Ok(WelcomeInfo { conversation: b.conversation, inviter, members: staged.members().count() })
            })();
            s.provider.storage().discard();
            result
        })
    }

    /// Decodes a bundle and stages its Welcome (writes buffered in the storage overlay: the
    /// caller flushes or discards them).
    fn stage_welcome(&mut self, bundle: &[u8]) -> Result<(WelcomeBundle, StagedWelcome), MlsError> {
        let b = WelcomeBundle::decode(bundle)?;
        if self.conversations.contains_key(&b.conversation) {
            return Err(MlsError::Rejected("already a member of this conversation".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(&b.welcome)
            .map_err(|e| MlsError::Malformed(e.to_string()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(MlsError::Malformed("not a Welcome message".into()));
        };
        let tree_bytes = b.open_tree(&self.provider)?;
        let tree = RatchetTreeIn::tls_deserialize_exact_bytes(&tree_bytes)
            .map_err(|e| MlsError::Malformed(format!("ratchet tree: {e}")))?;
        let staged = StagedWelcome::build_from_welcome(&self.provider, &self.join_config(), welcome)
            .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?
            .with_ratchet_tree(tree)
            .skip_lifetime_validation()
            .build()
            .map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
        if staged.group_context().group_id().as_slice() != b.conversation.0 {
            return Err(MlsError::Rejected("welcome is for another conversation".into()));
        }
        for m in staged.members() {
            verify_credential(&m.credential, &m.signature_key)?;
        }
        Ok((b, staged))
    }

    pub(super) fn join_now(&mut self, bundle: &[u8], now_ms: u64) -> Result<ConversationId, MlsError> {
        let result = (|| {
            let (b, staged) = self.stage_welcome(bundle)?;
            let group =
                staged.into_group(&self.provider).map_err(|e| MlsError::Rejected(format!("welcome: {e}")))?;
            let meta = Meta {
                applied: b.applied,
                last_update_ms: now_ms,
                needs_update: true,
                pending_commit: None,
                pending_leave: None,
            };
            self.provider.storage().raw_put(Meta::key(&b.conversation), meta.encode());
            self.provider.storage().flush()?;
            Ok((b.conversation, group, meta))
        })();
        match result {
            Ok((conversation, group, meta)) => {
                self.conversations.insert(conversation, Conversation::new(group, meta));
                Ok(conversation)
            }
            Err(e) => {
                self.provider.storage().discard();
                Err(e)
            }
        }
    }
}
