//! The appservice registration file given to the homeserver (Synapse's
//! `app_service_config_files`), written by `cairn bridge matrix registration`.
//!
//! The file is written as JSON, which YAML parsers read as YAML (flow style); the bridge reads
//! back only that form, bounded in size, and checks every field it relies on.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BridgeError;

/// Largest registration file read, in bytes.
pub const MAX_FILE: u64 = 64 * 1024;
/// Prefix of every user and alias localpart the bridge owns.
pub const PREFIX: &str = "cairn_";

/// One namespace entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceEntry {
    /// Whether only this appservice may create such ids.
    pub exclusive: bool,
    /// Regular expression over full ids.
    pub regex: String,
}

/// The namespaces of the registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Namespaces {
    /// User ids.
    pub users: Vec<NamespaceEntry>,
    /// Room aliases.
    pub aliases: Vec<NamespaceEntry>,
    /// Room ids (none).
    pub rooms: Vec<NamespaceEntry>,
}

/// An appservice registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    /// Appservice id (used in the ping endpoint's path).
    pub id: String,
    /// Where the homeserver reaches the bridge (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Token the bridge presents to the homeserver.
    pub as_token: String,
    /// Token the homeserver presents to the bridge.
    pub hs_token: String,
    /// Localpart of the bridge bot.
    pub sender_localpart: String,
    /// Whether the homeserver rate-limits the bridge's users.
    pub rate_limited: bool,
    /// Whether ephemeral events (typing, receipts) are pushed.
    pub receive_ephemeral: bool,
    /// Exclusive namespaces.
    pub namespaces: Namespaces,
}

/// 32 random bytes in hex.
fn random_token() -> Result<String, BridgeError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| BridgeError::Config(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

impl Registration {
    /// A new registration with random tokens; the bot is `@cairn_bot`, the namespaces are
    /// `@cairn_.*` and `#cairn_.*`, both exclusive.
    pub fn generate(id: &str, url: &str) -> Result<Registration, BridgeError> {
        let r = Registration {
            id: id.to_string(),
            url: url.to_string(),
            as_token: random_token()?,
            hs_token: random_token()?,
            sender_localpart: format!("{PREFIX}bot"),
            rate_limited: false,
            receive_ephemeral: false,
            namespaces: Namespaces {
                users: vec![NamespaceEntry { exclusive: true, regex: format!("@{PREFIX}.*") }],
                aliases: vec![NamespaceEntry { exclusive: true, regex: format!("#{PREFIX}.*") }],
                rooms: Vec::new(),
            },
        };
        r.check()?;
        Ok(r)
    }

    /// Checks the fields the bridge relies on.
    pub fn check(&self) -> Result<(), BridgeError> {
        let bad = |what: &str| {
            Err(BridgeError::Config(format!(
                "registration: {what}; write a new one with `cairn bridge matrix registration`"
            )))
        };
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return bad("`id` must be 1-64 characters of [A-Za-z0-9_-]");
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) || self.url.len() > 256 {
            return bad("`url` must be an http(s) URL");
        }
        for (name, t) in [("as_token", &self.as_token), ("hs_token", &self.hs_token)] {
            if t.len() < 32 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(&format!("`{name}` must be 32-256 printable characters"));
            }
        }
        if self.as_token == self.hs_token {
            return bad("`as_token` and `hs_token` must differ");
        }
        if !self.sender_localpart.starts_with(PREFIX) {
            return bad("`sender_localpart` must start with `cairn_` (inside the bridge's namespace)");
        }
        let users = self.namespaces.users.iter().any(|n| n.exclusive && n.regex == format!("@{PREFIX}.*"));
        if !users {
            return bad("the exclusive user namespace `@cairn_.*` is missing");
        }
        Ok(())
    }

    /// Writes the registration to `path` (mode 0600, refusing to overwrite).
    pub fn write_new(&self, path: &Path) -> Result<(), BridgeError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| BridgeError::Config(e.to_string()))?;
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
                BridgeError::Config(format!(
                    "creating {}: {e} (remove it first to write a new one)",
                    path.display()
                ))
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| BridgeError::Config(format!("writing {}: {e}", path.display())))
    }

    /// Reads and checks a registration written by [`Registration::write_new`].
    pub fn read(path: &Path) -> Result<Registration, BridgeError> {
        let io = |e: std::io::Error| BridgeError::Config(format!("reading {}: {e}", path.display()));
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_FILE {
            return Err(BridgeError::Config(format!("{} is larger than {MAX_FILE} bytes", path.display())));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let r: Registration = serde_json::from_str(&text).map_err(|e| {
            BridgeError::Config(format!(
                "{} is not a registration written by `cairn bridge matrix registration`: {e}",
                path.display()
            ))
        })?;
        r.check()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn generated_registration_round_trips_and_has_exclusive_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reg.yaml");
        let r = Registration::generate("cairn", "http://127.0.0.1:9").unwrap();
        r.write_new(&path).unwrap();
        let back = Registration::read(&path).unwrap();
        assert_eq!(back, r);
        assert_ne!(r.as_token, Registration::generate("cairn", "http://x").unwrap().as_token);
        assert!(r.namespaces.aliases[0].exclusive && r.namespaces.aliases[0].regex == "#cairn_.*");
        assert!(r.write_new(&path).is_err(), "never overwrites");
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut r = Registration::generate("cairn", "http://127.0.0.1:9").unwrap();
        r.hs_token = r.as_token.clone();
        assert!(r.check().is_err());
        let mut r = Registration::generate("cairn", "http://127.0.0.1:9").unwrap();
        r.sender_localpart = "bot".into();
        assert!(r.check().is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.yaml");
        std::fs::write(&path, "id: [").unwrap();
        let e = Registration::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a registration"), "{e}");
    }
}
