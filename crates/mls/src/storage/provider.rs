//! OpenMLS's `StorageProvider` over [`MlsStorage`], and [`CairnProvider`], the OpenMLS provider
//! Cairn uses.

use std::sync::Arc;

use openmls_traits::storage::{StorageProvider, traits};

use super::{
    CONFIRMATION_TAG, DatabaseHandle, ENC_KEY_PAIR, EPOCH_KEY_PAIRS, EPOCH_SECRETS, GROUP_CONTEXT,
    GROUP_STATE, INTERIM_TH, JOIN_CONFIG, KEY_PACKAGE, MESSAGE_SECRETS, MlsStorage, OWN_LEAF_INDEX,
    OWN_LEAF_NODES, PROPOSAL_REFS, PSK, QUEUED_PROPOSAL, RESUMPTION_PSK, SIG_KEY_PAIR, StorageError, TREE, V,
};

type R<T> = Result<T, StorageError>;

impl StorageProvider<V> for MlsStorage {
    type Error = StorageError;

    fn write_mls_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        group_id: &G,
        config: &C,
    ) -> R<()> {
        self.put(JOIN_CONFIG, group_id, config)
    }
    fn append_own_leaf_node<G: traits::GroupId<V>, L: traits::LeafNode<V>>(
        &self,
        group_id: &G,
        leaf_node: &L,
    ) -> R<()> {
        self.push(OWN_LEAF_NODES, group_id, leaf_node)
    }
    fn queue_proposal<G: traits::GroupId<V>, P: traits::ProposalRef<V>, Q: traits::QueuedProposal<V>>(
        &self,
        group_id: &G,
        proposal_ref: &P,
        proposal: &Q,
    ) -> R<()> {
        self.put(QUEUED_PROPOSAL, &(group_id, proposal_ref), proposal)?;
        self.push(PROPOSAL_REFS, group_id, proposal_ref)
    }
    fn write_tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, group_id: &G, tree: &T) -> R<()> {
        self.put(TREE, group_id, tree)
    }
    fn write_interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        group_id: &G,
        h: &H,
    ) -> R<()> {
        self.put(INTERIM_TH, group_id, h)
    }
    fn write_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(&self, group_id: &G, c: &C) -> R<()> {
        self.put(GROUP_CONTEXT, group_id, c)
    }
    fn write_confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        group_id: &G,
        tag: &C,
    ) -> R<()> {
        self.put(CONFIRMATION_TAG, group_id, tag)
    }
    fn write_group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(GROUP_STATE, group_id, s)
    }
    fn write_message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        group_id: &G,
        m: &M,
    ) -> R<()> {
        self.put(MESSAGE_SECRETS, group_id, m)
    }
    fn write_resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(RESUMPTION_PSK, group_id, s)
    }
    fn write_own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        group_id: &G,
        i: &L,
    ) -> R<()> {
        self.put(OWN_LEAF_INDEX, group_id, i)
    }
    fn write_group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        group_id: &G,
        s: &S,
    ) -> R<()> {
        self.put(EPOCH_SECRETS, group_id, s)
    }
    fn write_signature_key_pair<P: traits::SignaturePublicKey<V>, K: traits::SignatureKeyPair<V>>(
        &self,
        public_key: &P,
        kp: &K,
    ) -> R<()> {
        self.put(SIG_KEY_PAIR, public_key, kp)
    }
    fn write_encryption_key_pair<E: traits::EncryptionKey<V>, K: traits::HpkeKeyPair<V>>(
        &self,
        public_key: &E,
        kp: &K,
    ) -> R<()> {
        self.put(ENC_KEY_PAIR, public_key, kp)
    }
    fn write_encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        K: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
        key_pairs: &[K],
    ) -> R<()> {
        self.put(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index), key_pairs)
    }
    fn write_key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(
        &self,
        r: &H,
        kp: &K,
    ) -> R<()> {
        self.put(KEY_PACKAGE, r, kp)
    }
    fn write_psk<P: traits::PskId<V>, B: traits::PskBundle<V>>(&self, psk_id: &P, psk: &B) -> R<()> {
        self.put(PSK, psk_id, psk)
    }

    fn mls_group_join_config<G: traits::GroupId<V>, C: traits::MlsGroupJoinConfig<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<C>> {
        self.get(JOIN_CONFIG, group_id)
    }
    fn own_leaf_nodes<G: traits::GroupId<V>, L: traits::LeafNode<V>>(&self, group_id: &G) -> R<Vec<L>> {
        self.list(OWN_LEAF_NODES, group_id)
    }
    fn queued_proposal_refs<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        group_id: &G,
    ) -> R<Vec<P>> {
        self.list(PROPOSAL_REFS, group_id)
    }
    fn queued_proposals<G: traits::GroupId<V>, P: traits::ProposalRef<V>, Q: traits::QueuedProposal<V>>(
        &self,
        group_id: &G,
    ) -> R<Vec<(P, Q)>> {
        let refs: Vec<P> = self.list(PROPOSAL_REFS, group_id)?;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            if let Some(p) = self.get(QUEUED_PROPOSAL, &(group_id, &r))? {
                out.push((r, p));
            }
        }
        Ok(out)
    }
    fn tree<G: traits::GroupId<V>, T: traits::TreeSync<V>>(&self, group_id: &G) -> R<Option<T>> {
        self.get(TREE, group_id)
    }
    fn group_context<G: traits::GroupId<V>, C: traits::GroupContext<V>>(&self, group_id: &G) -> R<Option<C>> {
        self.get(GROUP_CONTEXT, group_id)
    }
    fn interim_transcript_hash<G: traits::GroupId<V>, H: traits::InterimTranscriptHash<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<H>> {
        self.get(INTERIM_TH, group_id)
    }
    fn confirmation_tag<G: traits::GroupId<V>, C: traits::ConfirmationTag<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<C>> {
        self.get(CONFIRMATION_TAG, group_id)
    }
    fn group_state<S: traits::GroupState<V>, G: traits::GroupId<V>>(&self, group_id: &G) -> R<Option<S>> {
        self.get(GROUP_STATE, group_id)
    }
    fn message_secrets<G: traits::GroupId<V>, M: traits::MessageSecrets<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<M>> {
        self.get(MESSAGE_SECRETS, group_id)
    }
    fn resumption_psk_store<G: traits::GroupId<V>, S: traits::ResumptionPskStore<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<S>> {
        self.get(RESUMPTION_PSK, group_id)
    }
    fn own_leaf_index<G: traits::GroupId<V>, L: traits::LeafNodeIndex<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<L>> {
        self.get(OWN_LEAF_INDEX, group_id)
    }
    fn group_epoch_secrets<G: traits::GroupId<V>, S: traits::GroupEpochSecrets<V>>(
        &self,
        group_id: &G,
    ) -> R<Option<S>> {
        self.get(EPOCH_SECRETS, group_id)
    }
    fn signature_key_pair<P: traits::SignaturePublicKey<V>, K: traits::SignatureKeyPair<V>>(
        &self,
        public_key: &P,
    ) -> R<Option<K>> {
        self.get(SIG_KEY_PAIR, public_key)
    }
    fn encryption_key_pair<K: traits::HpkeKeyPair<V>, E: traits::EncryptionKey<V>>(
        &self,
        public_key: &E,
    ) -> R<Option<K>> {
        self.get(ENC_KEY_PAIR, public_key)
    }
    fn encryption_epoch_key_pairs<
        G: traits::GroupId<V>,
        E: traits::EpochKey<V>,
        K: traits::HpkeKeyPair<V>,
    >(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<Vec<K>> {
        Ok(self.get(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))?.unwrap_or_default())
    }
    fn key_package<H: traits::HashReference<V>, K: traits::KeyPackage<V>>(&self, r: &H) -> R<Option<K>> {
        self.get(KEY_PACKAGE, r)
    }
    fn psk<B: traits::PskBundle<V>, P: traits::PskId<V>>(&self, psk_id: &P) -> R<Option<B>> {
        self.get(PSK, psk_id)
    }

    fn remove_proposal<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(
        &self,
        group_id: &G,
        r: &P,
    ) -> R<()> {
        self.pull(PROPOSAL_REFS, group_id, r)?;
        self.del(QUEUED_PROPOSAL, &(group_id, r))
    }
    fn delete_own_leaf_nodes<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(OWN_LEAF_NODES, group_id)
    }
    fn delete_group_config<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(JOIN_CONFIG, group_id)
    }
    fn delete_tree<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(TREE, group_id)
    }
    fn delete_confirmation_tag<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(CONFIRMATION_TAG, group_id)
    }
    fn delete_group_state<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(GROUP_STATE, group_id)
    }
    fn delete_context<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(GROUP_CONTEXT, group_id)
    }
    fn delete_interim_transcript_hash<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(INTERIM_TH, group_id)
    }
    fn delete_message_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(MESSAGE_SECRETS, group_id)
    }
    fn delete_all_resumption_psk_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(RESUMPTION_PSK, group_id)
    }
    fn delete_own_leaf_index<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(OWN_LEAF_INDEX, group_id)
    }
    fn delete_group_epoch_secrets<G: traits::GroupId<V>>(&self, group_id: &G) -> R<()> {
        self.del(EPOCH_SECRETS, group_id)
    }
    fn clear_proposal_queue<G: traits::GroupId<V>, P: traits::ProposalRef<V>>(&self, group_id: &G) -> R<()> {
        let refs: Vec<P> = self.list(PROPOSAL_REFS, group_id)?;
        for r in &refs {
            self.del(QUEUED_PROPOSAL, &(group_id, r))?;
        }
        self.del(PROPOSAL_REFS, group_id)
    }
    fn delete_signature_key_pair<P: traits::SignaturePublicKey<V>>(&self, public_key: &P) -> R<()> {
        self.del(SIG_KEY_PAIR, public_key)
    }
    fn delete_encryption_key_pair<E: traits::EncryptionKey<V>>(&self, public_key: &E) -> R<()> {
        self.del(ENC_KEY_PAIR, public_key)
    }
    fn delete_encryption_epoch_key_pairs<G: traits::GroupId<V>, E: traits::EpochKey<V>>(
        &self,
        group_id: &G,
        epoch: &E,
        leaf_index: u32,
    ) -> R<()> {
        self.del(EPOCH_KEY_PAIRS, &(group_id, epoch, leaf_index))
    }
    fn delete_key_package<H: traits::HashReference<V>>(&self, r: &H) -> R<()> {
        self.del(KEY_PACKAGE, r)
    }
    fn delete_psk<P: traits::PskId<V>>(&self, psk_id: &P) -> R<()> {
        self.del(PSK, psk_id)
    }
}

/// The OpenMLS provider Cairn uses: RustCrypto primitives and randomness, redb storage.
#[derive(Debug)]
pub struct CairnProvider {
    crypto: openmls_rust_crypto::RustCrypto,
    storage: MlsStorage,
}

impl CairnProvider {
    /// A provider storing into `db`.
    pub fn new(db: Arc<dyn DatabaseHandle>) -> Self {
        Self { crypto: openmls_rust_crypto::RustCrypto::default(), storage: MlsStorage::new(db) }
    }

    /// A provider storing into `db`, its values sealed at rest with `sealer`.
    pub fn sealed(db: Arc<dyn DatabaseHandle>, sealer: crate::storage::Sealer) -> Self {
        Self { crypto: openmls_rust_crypto::RustCrypto::default(), storage: MlsStorage::sealed(db, sealer) }
    }

    /// A provider over the same database and overlay, with keys under `prefix`.
    pub(crate) fn scoped(&self, prefix: Vec<u8>) -> Self {
        Self { crypto: openmls_rust_crypto::RustCrypto::default(), storage: self.storage.scoped(prefix) }
    }
}

impl openmls_traits::OpenMlsProvider for CairnProvider {
    type CryptoProvider = openmls_rust_crypto::RustCrypto;
    type RandProvider = openmls_rust_crypto::RustCrypto;
    type StorageProvider = MlsStorage;

    fn storage(&self) -> &MlsStorage {
        &self.storage
    }
    fn crypto(&self) -> &openmls_rust_crypto::RustCrypto {
        &self.crypto
    }
    fn rand(&self) -> &openmls_rust_crypto::RustCrypto {
        &self.crypto
    }
}
