//! This device's authority keys for a conversation's topic (issue 12 §2): the ledger lets only
//! holders of a key of the topic's authority tree sequence or anchor on it.
//!
//! At epoch 0 the key is the founder key, derived from the secret conversation id (the topic
//! is the hash of its public half, so the creator's first write founds the topic and no
//! outsider can). From epoch 1 on it is derived from the epoch's MLS exporter, which only the
//! epoch's members know; a commit registers the key of the epoch it creates, derived from the
//! staged commit before it is merged.

use cairn_proto::ed25519::SigningKey;
use cairn_proto::sequencer::TopicKeys;
use openmls::prelude::MlsGroup;

use super::{Client, ConversationId, MlsError};
use crate::storage::CairnProvider;

/// MLS exporter label of the authority key.
const AUTHORITY_LABEL: &str = "cairn topic authority v1";

fn seed_bytes(secret: Vec<u8>) -> Result<[u8; 32], MlsError> {
    secret.try_into().map_err(|_| MlsError::Rejected("authority key: exporter gave another length".into()))
}

/// The authority seed of `group`'s current epoch.
fn epoch_seed(id: &ConversationId, group: &MlsGroup, provider: &CairnProvider) -> Result<[u8; 32], MlsError> {
    use openmls_traits::OpenMlsProvider as _;
    if group.epoch().as_u64() == 0 {
        return Ok(cairn_proto::id::founder_seed(&id.0));
    }
    let s = group
        .export_secret(provider.crypto(), AUTHORITY_LABEL, &[], 32)
        .map_err(|e| MlsError::Rejected(format!("authority key: {e}")))?;
    seed_bytes(s)
}

impl Client {
    /// The seed of this device's authority key for the conversation's topic at its current
    /// epoch (anchors sign with it).
    pub fn authority_seed(&self, id: &ConversationId) -> Result<[u8; 32], MlsError> {
        epoch_seed(id, &self.conv(id)?.group, &self.provider)
    }

    /// The keys a handshake submitted now signs with: the current epoch's, and, when a commit
    /// is pending, the public key of the epoch it creates.
    pub fn topic_keys(&self, id: &ConversationId) -> Result<TopicKeys, MlsError> {
        use openmls_traits::OpenMlsProvider as _;
        let group = &self.conv(id)?.group;
        let seed = epoch_seed(id, group, &self.provider)?;
        let next = match group.pending_commit() {
            Some(staged) => {
                let s = staged
                    .export_secret(self.provider.crypto(), AUTHORITY_LABEL, &[], 32)
                    .map_err(|e| MlsError::Rejected(format!("next authority key: {e}")))?;
                Some(SigningKey::from_bytes(&seed_bytes(s)?).verifying_key().to_bytes())
            }
            None => None,
        };
        Ok(TopicKeys { seed, next })
    }
}
