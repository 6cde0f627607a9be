//! The tunables of a [`super::Client`].

/// Tunables of a [`Client`](super::Client).
#[derive(Debug, Clone)]
pub struct Config {
    /// Application messages of up to this many epochs in the past still decrypt (retained
    /// epoch secrets); older ones are dropped with [`Dropped::TooOld`](super::Dropped::TooOld).
    pub past_epochs_max: usize,
    /// Application messages more than this many epochs ahead of the conversation are not
    /// buffered ([`Dropped::TooFarAhead`](super::Dropped::TooFarAhead)).
    pub future_epochs_ahead_max: u64,
    /// Application messages held per future epoch (per conversation) until its commits arrive;
    /// more are refused, never evicting ([`Dropped::BufferFull`](super::Dropped::BufferFull)).
    pub future_messages_per_epoch_max: usize,
    /// Bytes of application messages held per future epoch (per conversation).
    pub future_bytes_per_epoch_max: usize,
    /// Out-of-order tolerance within one sender's ratchet (generations).
    pub out_of_order_tolerance: u32,
    /// How far ahead a sender's generation may jump.
    pub maximum_forward_distance: u32,
    /// A member self-updates at least this often (ms).
    pub update_interval_ms: u64,
    /// How many times a commit refused as stale is rebuilt before giving up.
    pub rebuild_attempts_max: u32,
    /// Lifetime of published key packages (seconds).
    pub key_package_lifetime_s: u64,
    /// Handshake messages fetched per sequencer call.
    pub fetch_page: usize,
    /// Application ciphertexts are padded to a multiple of this many bytes.
    pub padding: usize,
    /// Most members [`Client::add_many`](super::Client::add_many) adds per commit (each Add carries a ≈ 0.42 KiB key
    /// package; the sequencer takes commits up to 64 KiB, so 128 adds ≈ 54 KiB). Every commit
    /// costs O(N) (OpenMLS rewrites the whole tree), so fewer, larger commits build a group
    /// faster; a commit the sequencer still finds too large is split.
    pub adds_per_commit_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            past_epochs_max: 2,
            future_epochs_ahead_max: 4,
            future_messages_per_epoch_max: 256,
            future_bytes_per_epoch_max: 4 << 20,
            out_of_order_tolerance: 32,
            maximum_forward_distance: 1000,
            update_interval_ms: 7 * 24 * 3600 * 1000,
            rebuild_attempts_max: 8,
            key_package_lifetime_s: 84 * 24 * 3600,
            fetch_page: 256,
            padding: 32,
            adds_per_commit_max: 128,
        }
    }
}
