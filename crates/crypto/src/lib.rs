//! Cairn key material: account and device keys, and the passphrase-encrypted keystore.
//!
//! The keystore file is `CAIRN-KEYSTORE` format version 1:
//! ```text
//! magic:"CAIRNKS\0" version:u8 m_cost_kib:u32 t_cost:u32 p_cost:u32 salt:[16] nonce:[24]
//! ciphertext_len:u32 ciphertext (XChaCha20-Poly1305, key = Argon2id(passphrase, salt))
//! ```
//! The header is the AEAD's associated data, so changing a KDF parameter breaks decryption.
//! KDF parameters are bounded on read, so a crafted file cannot make us allocate gigabytes.

pub mod container;
pub mod keystore;
pub mod sealed;

pub use keystore::{Identity, KdfParams, KeystoreError};
