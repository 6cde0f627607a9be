//! Bounds on modules and on what one call may read, write and emit.

/// Bounds applied to a kind of contract (ledger or policy).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest module, in bytes.
    pub module_bytes_max: usize,
    /// Most 64 KiB pages of linear memory (the declared maximum must be at most this).
    pub memory_pages_max: u32,
    /// Largest call input, in bytes.
    pub input_max: usize,
    /// Largest output of one call, in bytes (all `output_write`s together).
    pub output_max: usize,
    /// Longest state key, in bytes.
    pub state_key_max: usize,
    /// Largest state value, in bytes.
    pub state_value_max: usize,
    /// Most distinct keys one call may write or delete.
    pub writes_max: usize,
    /// Most events one call may emit.
    pub events_max: usize,
    /// Largest event, in bytes.
    pub event_bytes_max: usize,
    /// Most transfers one call may make.
    pub transfers_max: usize,
}

impl Limits {
    /// Ledger contracts: modules up to 512 KiB, 64 pages (4 MiB) of memory.
    pub const LEDGER: Self = Self {
        module_bytes_max: 512 * 1024,
        memory_pages_max: 64,
        input_max: 64 * 1024,
        output_max: 64 * 1024,
        state_key_max: 128,
        state_value_max: 16 * 1024,
        writes_max: 256,
        events_max: 16,
        event_bytes_max: 1024,
        transfers_max: 16,
    };

    /// Policy contracts run inside MLS groups: modules up to 128 KiB, 16 pages (1 MiB).
    pub const POLICY: Self = Self {
        module_bytes_max: 128 * 1024,
        memory_pages_max: 16,
        input_max: 64 * 1024,
        output_max: 16 * 1024,
        state_key_max: 128,
        state_value_max: 4 * 1024,
        writes_max: 64,
        events_max: 0,
        event_bytes_max: 0,
        transfers_max: 0,
    };
}
