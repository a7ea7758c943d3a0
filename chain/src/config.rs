//! Bounds and timing of a replica.

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value accepted, in bytes (a signed root record is a few hundred bytes).
pub const MAX_VALUE_SIZE: usize = 16 * 1024;
/// Most members a view may have.
pub const MAX_MEMBERS: usize = 64;
/// Longest reason of a [`crate::Rejected::Invalid`] answer, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Parameters of a [`crate::Replica`]. All replicas of a chain must use the same bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Granularity of the replica's timer (ms): while it has work outstanding (uncommitted
    /// versions, pending requests, a state transfer) it asks to be woken this often.
    pub tick_ms: u64,
    /// A predecessor re-sends a key's uncommitted versions to its successor when no
    /// acknowledgement arrived for this long (ms); a pending read re-asks the tail as often.
    pub resend_ms: u64,
    /// A joining member asks for a state-transfer page again after this long (ms).
    pub pull_timeout_ms: u64,
    /// A pending client request is answered `Unavailable(Retry)` after this long (ms).
    pub request_timeout_ms: u64,
    /// Most client requests waiting at once (for a commit or the tail's answer).
    pub max_pending: usize,
    /// Most uncommitted versions of one key (the head answers `Busy` beyond).
    pub max_dirty_per_key: usize,
    /// Most keys a replica holds (the head answers `Full` for a new key beyond).
    pub max_keys: usize,
    /// Most records in one state-transfer page.
    pub max_keys_per_page: usize,
    /// Soft byte budget of one page (values and keys; a page holds at least one record).
    pub max_page_bytes: usize,
    /// Most keys whose uncommitted versions are re-sent in one tick.
    pub max_resend_keys_per_tick: usize,
    /// Most clients remembered per key for deduplication (the oldest writer is forgotten).
    pub max_dedup_clients: usize,
    /// UNSAFE, for tests only: answer reads from the newest version even when it is dirty
    /// (not yet committed). Breaks linearizability; the simulator's tests show the checker
    /// catches it.
    pub unsafe_read_dirty: bool,
    /// UNSAFE, for tests only: a joining member serves at once, without state transfer.
    pub unsafe_skip_state_transfer: bool,
    /// UNSAFE, for tests only: the head does not deduplicate retried writes, so a retry of a
    /// write that committed is answered `Conflict` with the client's own value.
    pub unsafe_no_dedup: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 10,
            resend_ms: 50,
            pull_timeout_ms: 100,
            request_timeout_ms: 2_000,
            max_pending: 1024,
            max_dirty_per_key: 16,
            max_keys: 1 << 20,
            max_keys_per_page: 64,
            max_page_bytes: 256 * 1024,
            max_resend_keys_per_tick: 256,
            max_dedup_clients: 64,
            unsafe_read_dirty: false,
            unsafe_skip_state_transfer: false,
            unsafe_no_dedup: false,
        }
    }
}

impl Config {
    /// The same with every zero that would stall the replica raised to one.
    pub fn normalized(mut self) -> Self {
        self.tick_ms = self.tick_ms.max(1);
        self.resend_ms = self.resend_ms.max(1);
        self.pull_timeout_ms = self.pull_timeout_ms.max(1);
        self.request_timeout_ms = self.request_timeout_ms.max(1);
        self.max_pending = self.max_pending.max(1);
        self.max_dirty_per_key = self.max_dirty_per_key.max(1);
        self.max_keys = self.max_keys.max(1);
        self.max_keys_per_page = self.max_keys_per_page.max(1);
        self.max_page_bytes = self.max_page_bytes.max(1);
        self.max_resend_keys_per_tick = self.max_resend_keys_per_tick.max(1);
        self.max_dedup_clients = self.max_dedup_clients.max(1);
        self
    }

    /// Whether any of the unsafe test switches is on.
    pub fn is_unsafe(&self) -> bool {
        self.unsafe_read_dirty || self.unsafe_skip_state_transfer || self.unsafe_no_dedup
    }
}
