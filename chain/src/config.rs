//! Bounds and timing of a replica.

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value accepted, in bytes (a signed root record is a few hundred bytes; its payload
/// may reach 64 KiB).
pub const MAX_VALUE_SIZE: usize = 80 * 1024;
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
    /// Views by agreement instead of an oracle: the members of view `e` agree on view `e + 1`
    /// (a majority of them must accept it), from the suggestions the driver hands each
    /// replica ([`crate::Event::Suggest`]); reads need a lease from a majority. Off: the
    /// driver hands every replica the views of a membership oracle ([`crate::Event::View`]).
    pub view_agreement: bool,
    /// Emit [`crate::Action::Persist`] so that a replica restarted with
    /// [`crate::Start::Recover`] keeps its versions, view and acceptor state.
    pub durable: bool,
    /// Length of a read lease (ms, the grantor's clock): a member that granted a lease accepts
    /// no next view for this long after it received the request.
    pub lease_ms: u64,
    /// A member asks for its lease again this often (ms).
    pub lease_renew_ms: u64,
    /// The holder counts its lease as `lease_ms - lease_margin_ms` from when it sent the
    /// request (ms): the margin covers the clocks' rate difference over a lease.
    pub lease_margin_ms: u64,
    /// A proposer re-sends its prepare or accept requests this often (ms); a member that
    /// accepted a next view that was not installed within twice this long proposes itself.
    pub propose_retry_ms: u64,
    /// A member proposes a new view once its suggestion has differed from its view for
    /// `propose_delay_ms` times its position (ms): the head first, the others as fallback.
    pub propose_delay_ms: u64,
    /// UNSAFE, for tests only: answer reads from the newest version even when it is dirty
    /// (not yet committed). Breaks linearizability; the simulator's tests show the checker
    /// catches it.
    pub unsafe_read_dirty: bool,
    /// UNSAFE, for tests only: a joining member serves at once, without state transfer.
    pub unsafe_skip_state_transfer: bool,
    /// UNSAFE, for tests only: the head does not deduplicate retried writes, so a retry of a
    /// write that committed is answered `Conflict` with the client's own value.
    pub unsafe_no_dedup: bool,
    /// UNSAFE, for tests only: serve reads without a lease under view agreement, so a member
    /// that was removed without hearing of it keeps answering as if it were current.
    pub unsafe_no_lease: bool,
    /// UNSAFE, for tests only: a proposer installs its view once it alone accepted it, without
    /// a majority of the old view.
    pub unsafe_install_without_majority: bool,
    /// UNSAFE, for tests only: "acknowledge before fsync": the `Persist` actions go to a
    /// write-behind buffer emitted every 500 ms, while the messages, acknowledgements and
    /// replies that depend on them go out at once.
    pub unsafe_persist_late: bool,
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
            view_agreement: false,
            durable: false,
            lease_ms: 200,
            lease_renew_ms: 50,
            lease_margin_ms: 20,
            propose_retry_ms: 100,
            propose_delay_ms: 30,
            unsafe_no_lease: false,
            unsafe_install_without_majority: false,
            unsafe_persist_late: false,
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
        self.lease_ms = self.lease_ms.max(2);
        self.lease_margin_ms = self.lease_margin_ms.min(self.lease_ms - 1);
        self.lease_renew_ms = self.lease_renew_ms.clamp(1, self.lease_ms);
        self.propose_retry_ms = self.propose_retry_ms.max(1);
        self
    }

    /// Whether any of the unsafe test switches is on.
    pub fn is_unsafe(&self) -> bool {
        self.unsafe_read_dirty
            || self.unsafe_skip_state_transfer
            || self.unsafe_no_dedup
            || self.unsafe_no_lease
            || self.unsafe_install_without_majority
            || self.unsafe_persist_late
    }
}
