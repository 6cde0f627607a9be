//! A conversation's anchor salt, kept in the MLS group context.
//!
//! Members anchor the keyed hash of a history head ([`salted_head`]), never the head's
//! envelope id, so a ledger anchor names nothing a relay or store node saw. The 32-byte salt
//! is a GroupContext extension of type [`ANCHOR_SALT_EXTENSION_TYPE`] set once, at creation:
//! it reaches later members only inside Welcomes (encrypted to them), and commits keep it as
//! it is (a GroupContextExtensions commit that changes the policy carries the other
//! extensions unchanged, encrypted like every handshake). Once every member forgot the
//! conversation, the anchored hashes are unlinkable to any envelope.
//!
//! Groups created before the salt existed have none and anchor plain heads.

use cairn_proto::Id;
use openmls::prelude::{
    Extension, ExtensionType, Extensions, GroupContext, MlsGroup, RequiredCapabilitiesExtension,
    UnknownExtension,
};

use crate::client::MlsError;

/// The GroupContext extension type of the anchor salt (private-use range of RFC 9420).
pub const ANCHOR_SALT_EXTENSION_TYPE: u16 = 0xF0C8;

/// The salt's length, bytes.
pub const ANCHOR_SALT_BYTES: usize = 32;

/// The group-context extensions of a new group holding `salt`.
pub fn creation_extensions(salt: [u8; ANCHOR_SALT_BYTES]) -> Result<Extensions<GroupContext>, MlsError> {
    let kind = ExtensionType::Unknown(ANCHOR_SALT_EXTENSION_TYPE);
    Extensions::from_vec(vec![
        Extension::Unknown(ANCHOR_SALT_EXTENSION_TYPE, UnknownExtension(salt.to_vec())),
        // Every member must support it: OpenMLS then refuses a new member whose leaf does not.
        Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(&[kind], &[], &[])),
    ])
    .map_err(|e| MlsError::Rejected(format!("anchor salt extension: {e}")))
}

/// The salt in `extensions`, if any. One of another length is an error.
pub fn salt_in(extensions: &Extensions<GroupContext>) -> Result<Option<[u8; ANCHOR_SALT_BYTES]>, MlsError> {
    extensions
        .unknown(ANCHOR_SALT_EXTENSION_TYPE)
        .map(|u| {
            <[u8; ANCHOR_SALT_BYTES]>::try_from(u.0.as_slice())
                .map_err(|_| MlsError::Rejected(format!("anchor salt of {} bytes", u.0.len())))
        })
        .transpose()
}

/// The salt of `group`, if it has one.
pub fn salt_of(group: &MlsGroup) -> Result<Option<[u8; ANCHOR_SALT_BYTES]>, MlsError> {
    salt_in(group.extensions())
}

/// What a member anchors for history head `head`: a keyed hash under the conversation's salt.
pub fn salted_head(salt: &[u8; ANCHOR_SALT_BYTES], head: &Id) -> Id {
    Id(*blake3::Hasher::new_keyed(salt).update(b"cairn anchor head v1").update(&head.0).finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salt_round_trips_and_keys_the_head() {
        let ext = creation_extensions([7; 32]).expect("extensions");
        assert_eq!(salt_in(&ext).expect("decodes"), Some([7; 32]));
        assert_eq!(salt_in(&Extensions::empty()).expect("none"), None);
        let head = Id([1; 32]);
        assert_ne!(salted_head(&[7; 32], &head), head);
        assert_ne!(salted_head(&[7; 32], &head), salted_head(&[8; 32], &head), "another salt, another hash");
        assert_eq!(salted_head(&[7; 32], &head), salted_head(&[7; 32], &head));
    }

    #[test]
    fn a_salt_of_another_length_is_refused() {
        let bad = Extensions::from_vec(vec![Extension::Unknown(
            ANCHOR_SALT_EXTENSION_TYPE,
            UnknownExtension(vec![1; 5]),
        )])
        .expect("extensions");
        assert!(salt_in(&bad).is_err());
    }
}
