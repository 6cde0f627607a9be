//! The policy contracts Cairn ships (AssemblyScript sources in `contracts/`, the checked-in
//! `.wasm` rebuilt byte for byte by `contracts/build.sh check`), and their configurations.

use cairn_proto::codec::Writer;

use crate::policy::PolicyPin;

/// `contracts/moderation.ts`: roles (admins add, remove and change the policy; anyone may
/// leave), a per-sender rate limit, and a word filter.
pub mod moderation {
    use super::{PolicyPin, Writer};

    /// The module.
    pub const WASM: &[u8] = include_bytes!("../../../contracts/moderation.wasm");
    /// Longest filtered word, in bytes.
    pub const WORD_MAX: usize = 32;

    /// The configuration of a moderation policy.
    #[derive(Clone, PartialEq, Eq, Debug, Default)]
    pub struct Config {
        /// Admin accounts (at most 255; none turns the roles rule off).
        pub admins: Vec<[u8; 32]>,
        /// Most messages per window per sender (0 turns the rate limit off).
        pub max_messages: u32,
        /// Window of the rate limit, ms of the sender's clock.
        pub window_ms: u64,
        /// Filtered words (ASCII, matched case-insensitively; at most 255, each ≤ [`WORD_MAX`]).
        pub words: Vec<String>,
        /// Deny a filtered message instead of holding it.
        pub deny_filtered: bool,
    }

    impl Config {
        /// The configuration bytes the policy reads; `None` if a list is too long.
        pub fn encode(&self) -> Option<Vec<u8>> {
            let admins = u8::try_from(self.admins.len()).ok()?;
            let words = u8::try_from(self.words.len()).ok()?;
            if self.words.iter().any(|w| w.len() > WORD_MAX) {
                return None;
            }
            let mut w = Writer::with_capacity(64 + 32 * self.admins.len());
            w.u8(1);
            w.u8(admins);
            for a in &self.admins {
                w.raw(a);
            }
            w.u32(self.max_messages);
            w.u64(self.window_ms);
            w.u8(words);
            for word in &self.words {
                w.bytes(word.as_bytes());
            }
            w.u8(u8::from(self.deny_filtered));
            Some(w.finish())
        }

        /// The pin of the shipped module with this configuration.
        pub fn pin(&self) -> Option<PolicyPin> {
            Some(PolicyPin { code_hash: crate::code_hash(WASM), config: self.encode()? })
        }
    }
}

/// `contracts/echo_bot.ts`: a bot member answers `!help` and `!echo TEXT` (verdict `Reply`).
pub mod echo_bot {
    use super::PolicyPin;

    /// The module.
    pub const WASM: &[u8] = include_bytes!("../../../contracts/echo_bot.wasm");

    /// Its pin (it takes no configuration).
    pub fn pin() -> PolicyPin {
        PolicyPin { code_hash: crate::code_hash(WASM), config: Vec::new() }
    }
}
