//! A conversation's policy contract, pinned in the MLS group context.
//!
//! The pin ([`PolicyPin`]: code hash and configuration) is a GroupContext extension of type
//! [`POLICY_EXTENSION_TYPE`], listed in the group's RequiredCapabilities, so every member
//! holds the same pin at the same epoch and only a GroupContextExtensions commit (ordered by
//! the ledger's sequencer like every handshake) changes it.
//!
//! While a pin is in place, every handshake is judged by the pinned policy's `on_handshake`
//! ([`PolicyGate::check_staged`]) before it is merged: who may add, remove, or change the
//! policy. The judgement depends only on the group state before the commit and on the commit
//! itself (wasmi fuel is deterministic), so a refused sequenced commit is skipped by every
//! member alike (the client's "invalid for everyone" path) and the group never splits over a
//! verdict. The committer runs the same check before it submits, and gets a clear refusal.
//!
//! Only code this build knows (the shipped policies, [`PolicyGate::shipped`]) can be pinned:
//! a pin naming unknown code is refused by every member of the same version alike.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_contracts::Runtime;
pub use cairn_contracts::policy::PolicyPin;
use cairn_contracts::policy::{GroupChange, HandshakeEvent, Policy, policy_runtime};
/// The shipped policies (the code a group can pin) and their configurations.
pub use cairn_contracts::shipped_policy;
use cairn_contracts::shipped_policy::{echo_bot, moderation};
use openmls::prelude::{
    Extension, ExtensionType, Extensions, GroupContext, MlsGroup, Proposal, RequiredCapabilitiesExtension,
    Sender, StagedCommit, UnknownExtension,
};

use crate::client::MlsError;
use crate::credential::cert_of;

/// The GroupContext extension type of a policy pin (private-use range of RFC 9420).
pub const POLICY_EXTENSION_TYPE: u16 = 0xF0C7;

/// The pin in `extensions`, if any. A malformed pin is an error.
pub fn pin_in(extensions: &Extensions<GroupContext>) -> Result<Option<PolicyPin>, MlsError> {
    extensions
        .unknown(POLICY_EXTENSION_TYPE)
        .map(|u| {
            PolicyPin::decode(&u.0).map_err(|e| MlsError::Rejected(format!("malformed policy pin: {e}")))
        })
        .transpose()
}

/// The pin of `group`'s current epoch, if any.
pub fn pinned(group: &MlsGroup) -> Result<Option<PolicyPin>, MlsError> {
    pin_in(group.extensions())
}

/// `current` with the pin replaced by `pin` (or removed), and the RequiredCapabilities
/// extension listing the pin's type (and the other private extensions, the anchor salt) while a
/// pin is set. Every other extension is kept as it is.
pub fn with_pin(
    current: &Extensions<GroupContext>,
    pin: Option<&PolicyPin>,
) -> Result<Extensions<GroupContext>, MlsError> {
    let bad =
        |e: openmls::prelude::InvalidExtensionError| MlsError::Rejected(format!("policy extension: {e}"));
    let mut kept: Vec<Extension> = current
        .iter()
        .filter(|e| {
            !matches!(e.extension_type(), ExtensionType::RequiredCapabilities)
                && e.extension_type() != ExtensionType::Unknown(POLICY_EXTENSION_TYPE)
        })
        .cloned()
        .collect();
    if let Some(pin) = pin {
        kept.push(Extension::Unknown(POLICY_EXTENSION_TYPE, UnknownExtension(pin.encode())));
    }
    // OpenMLS refuses a GroupContextExtensions proposal holding a private extension that its
    // RequiredCapabilities omit: list every one kept (the pin, the anchor salt).
    let required: Vec<ExtensionType> = kept
        .iter()
        .map(Extension::extension_type)
        .filter(|t| matches!(t, ExtensionType::Unknown(_)))
        .collect();
    if !required.is_empty() {
        kept.push(Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(&required, &[], &[])));
    }
    Extensions::from_vec(kept).map_err(bad)
}

/// Runs pinned policies on handshakes: the policy code this build can load, by code hash.
#[derive(Debug)]
pub struct PolicyGate {
    runtime: Arc<Runtime>,
    codes: BTreeMap<[u8; 32], &'static [u8]>,
    /// Judges nothing: what a modified client does (for tests of a hostile member).
    disabled: bool,
}

impl PolicyGate {
    /// A gate that knows the shipped policies (moderation, echo bot).
    pub fn shipped() -> Self {
        let codes = [moderation::WASM, echo_bot::WASM]
            .into_iter()
            .map(|c| (cairn_contracts::code_hash(c), c))
            .collect();
        Self { runtime: Arc::new(policy_runtime()), codes, disabled: false }
    }

    /// A gate that allows every change: how a modified (hostile) client behaves. Honest
    /// members still judge its commits and skip the refused ones.
    pub fn disabled() -> Self {
        Self { disabled: true, ..Self::shipped() }
    }

    /// The policy runtime (shared with the message path).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Loads the policy of `pin`; an error if its code is not known here.
    pub fn load(&self, pin: &PolicyPin) -> Result<Policy, String> {
        let code = self.codes.get(&pin.code_hash).ok_or_else(|| {
            format!("policy code {} is not known to this version of Cairn", hex8(&pin.code_hash))
        })?;
        Policy::new(self.runtime.clone(), pin.clone(), code).map_err(|e| e.to_string())
    }

    /// Judges every proposal of `staged` (a commit about to be merged into `group`) under
    /// the group's current pin. With no pin, only a new pin is checked (its code must be
    /// known). `Err` names the refusal.
    pub fn check_staged(&self, group: &MlsGroup, staged: &StagedCommit) -> Result<(), MlsError> {
        if self.disabled {
            return Ok(());
        }
        let current = pinned(group)?;
        let policy = match &current {
            Some(pin) => Some(self.load(pin).map_err(MlsError::Rejected)?),
            None => None,
        };
        let epoch = group.epoch().as_u64() + 1;
        let gid: [u8; 32] = group.group_id().as_slice().try_into().unwrap_or([0; 32]);
        for q in staged.queued_proposals() {
            let change = match q.proposal() {
                Proposal::Add(a) => {
                    let cert = cert_of(a.key_package().leaf_node().credential());
                    GroupChange::Add(cert.map_or([0; 32], |c| c.account.0))
                }
                Proposal::Remove(r) => {
                    let who = group.member_at(r.removed()).and_then(|m| cert_of(&m.credential));
                    GroupChange::Remove(who.map_or([0; 32], |c| c.account.0))
                }
                Proposal::GroupContextExtensions(g) => {
                    let next = pin_in(g.extensions())?;
                    if let Some(next) = &next {
                        self.load(next).map_err(MlsError::Rejected)?;
                    }
                    GroupChange::ChangePolicy(next.map_or([0; 32], |p| p.code_hash))
                }
                _ => GroupChange::Other,
            };
            let Some(policy) = &policy else { continue };
            let proposer = match q.sender() {
                Sender::Member(leaf) => group.member_at(*leaf).and_then(|m| cert_of(&m.credential)),
                _ => None,
            }
            .ok_or_else(|| MlsError::Rejected("the policy accepts changes from members only".into()))?;
            let ev = HandshakeEvent { group: gid, epoch, proposer: proposer.account.0, change };
            if let Err(reason) = policy.on_handshake(&ev).decision {
                return Err(MlsError::Rejected(format!(
                    "the conversation's policy refuses this change: {reason}"
                )));
            }
        }
        Ok(())
    }
}

fn hex8(b: &[u8; 32]) -> String {
    b[..8].iter().map(|x| format!("{x:02x}")).collect()
}
