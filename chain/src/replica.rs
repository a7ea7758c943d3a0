//! The per-replica state machine: CRAQ chain replication of compare-and-set records.
//!
//! A [`Replica`] is one member's share of one chain (the records of a set of keys that share a
//! view). The driver feeds it [`Event`]s with the current virtual time and carries out the
//! returned [`Action`]s; it never touches a socket or a clock. See the crate documentation and
//! `docs/CHAIN.md` for the protocol and why it is linearizable; the agreement on views and the
//! read leases are in the `agreement` submodule, the persistence contract in
//! [`crate::durable`].

use crate::config::{Config, MAX_KEY_LEN, MAX_REASON_LEN, MAX_VALUE_SIZE};
use crate::durable::{Durable, DurableMeta, Recovered};
use crate::message::{
    DedupEntry, Key, Msg, RecordState, Rejected, Reply, ReqId, Request, Unavailable, View,
    WriteEntry,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::ops::Bound;

mod agreement;

/// `unsafe_persist_late`: how often the write-behind buffer is flushed (ms).
const LATE_FLUSH_MS: u64 = 500;

use agreement::Agreement;

/// The application's check of a new value, called by the head before it accepts a write.
///
/// In the node a value is a user-signed root record: the hook verifies the signature and that
/// the record's own version grows. `current` is the newest version the head holds (committed
/// or not) and its value; `version` is the number the new value would get.
pub trait Validate {
    /// `Ok` to accept; `Err(reason)` refuses the write with [`Rejected::Invalid`].
    fn validate(
        &self,
        key: &[u8],
        current: Option<(u64, &[u8])>,
        version: u64,
        value: &[u8],
    ) -> Result<(), String>;
}

/// A [`Validate`] that accepts every value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptAll;

impl Validate for AcceptAll {
    fn validate(
        &self,
        _key: &[u8],
        _current: Option<(u64, &[u8])>,
        _version: u64,
        _value: &[u8],
    ) -> Result<(), String> {
        Ok(())
    }
}

/// How a replica starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start<A> {
    /// A founding member of a new, empty chain: it serves as soon as it has a view (the
    /// founding view, [`Event::View`], also under view agreement).
    Bootstrap,
    /// A member joining an existing chain (or, without [`Config::view_agreement`], coming back
    /// after a crash, empty): it serves only after a state transfer. Under view agreement a
    /// replica that lost its disk must come back under a new address: it may have voted in
    /// the agreement before and would not remember it.
    Join,
    /// A restart from what an earlier incarnation persisted ([`Config::durable`]): the view,
    /// the acceptor state, and every record. The replica resumes in its view (it may be
    /// behind; it catches up, or learns the newer view and rejoins through the agreement).
    Recover(Box<Recovered<A>>),
}

/// An input to [`Replica::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A> {
    /// A view from the membership oracle (older or equal epochs are ignored). Under
    /// [`Config::view_agreement`], only the founding view of a [`Start::Bootstrap`] replica.
    View(View<A>),
    /// Under [`Config::view_agreement`]: the chain this replica's node believes in (in the
    /// ring: the key's successor list) and the members its failure detector suspects. The
    /// replica proposes `members` without `suspected` as the next view when it differs from
    /// the current one. Hand it again whenever either changes.
    Suggest {
        /// The suggested chain, head first.
        members: Vec<A>,
        /// Members believed dead or unreachable (left out of the proposal).
        suspected: Vec<A>,
    },
    /// A message from another replica.
    Message {
        /// The sender's address.
        from: A,
        /// The message.
        msg: Msg<A>,
    },
    /// A client request.
    Request {
        /// Where to send the reply.
        from: A,
        /// The request's id (kept across retries).
        id: ReqId,
        /// The request.
        req: Request,
    },
    /// The timer asked for with [`Action::SetTimer`] fired (early or spurious calls are
    /// harmless).
    Timer,
}

/// An output of [`Replica::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<A> {
    /// Send `msg` to the replica at `to` (best effort: losses are repaired by re-sending).
    Send {
        /// The recipient.
        to: A,
        /// The message.
        msg: Msg<A>,
    },
    /// With [`Config::durable`]: write this to disk before carrying out any later `Send` or
    /// `Reply` of the same batch (the replica puts these first). See [`crate::durable`].
    Persist(Durable<A>),
    /// The replica installed this view (its own agreement or the oracle's); for the driver's
    /// routing and status.
    ViewInstalled(View<A>),
    /// Answer a client request.
    Reply {
        /// The client.
        to: A,
        /// The request's id.
        id: ReqId,
        /// The answer.
        reply: Reply<A>,
    },
    /// Deliver [`Event::Timer`] at virtual time `at` (replaces any earlier request).
    SetTimer {
        /// Virtual ms.
        at: u64,
    },
    /// A member sent a message of a newer epoch than this replica's view: the driver should
    /// ask the oracle for the current view.
    NewerEpoch {
        /// The sender.
        from: A,
        /// Its epoch.
        epoch: u64,
    },
}

/// The replica's place in its current view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No view, or not in it.
    Outside,
    /// In the view but still receiving the state transfer.
    CatchingUp,
    /// First of several.
    Head,
    /// Neither first nor last.
    Middle,
    /// Last of several.
    Tail,
    /// The only member (head and tail).
    Single,
}

/// Counters of one replica.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplicaStats {
    /// Reads answered from a clean local version (CRAQ's local reads; all reads at the tail).
    pub reads_local: u64,
    /// Of `reads_local`, those answered by the tail (always local).
    pub reads_local_at_tail: u64,
    /// Reads of a dirty key that needed the tail's committed version number.
    pub reads_tail_query: u64,
    /// Versions created by this replica as head.
    pub writes_applied: u64,
    /// Compare-and-sets answered (or to be answered) `Conflict`.
    pub conflicts: u64,
    /// Retried writes recognised by the deduplication table.
    pub dedup_hits: u64,
    /// Versions this replica marked committed.
    pub commits: u64,
    /// Messages of another epoch.
    pub epoch_mismatch: u64,
    /// Malformed, unexpected or out-of-place messages and views, ignored.
    pub ignored: u64,
    /// Write entries that skipped a version (waiting for the predecessor's re-send).
    pub gaps: u64,
    /// Write entries with a known version number but another value (must stay 0).
    pub divergent: u64,
    /// Views installed.
    pub views: u64,
    /// State transfers started and completed.
    pub syncs_started: u64,
    /// State transfers completed.
    pub syncs_completed: u64,
    /// Pages of state transfer served.
    pub pages_sent: u64,
    /// Pending requests that timed out.
    pub expired: u64,
    /// Requests refused as busy.
    pub busy: u64,
    /// View agreement: proposals started by this replica.
    pub proposals: u64,
    /// View agreement: views this replica saw accepted by a majority as proposer.
    pub decided: u64,
    /// View agreement: proposals accepted as acceptor.
    pub accepts: u64,
    /// View agreement: proposals refused or abandoned (a higher ballot, an invalid value).
    pub nacks: u64,
    /// Accept requests deferred because a read lease this replica granted had not expired.
    pub accept_deferred: u64,
    /// Reads (and immediate conflicts) refused because the replica held no lease or was
    /// changing views.
    pub no_quorum: u64,
    /// Messages of the data path dropped because the replica accepted the next view.
    pub stopped: u64,
    /// `Persist` actions emitted.
    pub persists: u64,
    /// Starts from persisted state.
    pub recoveries: u64,
}

impl ReplicaStats {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &ReplicaStats) {
        self.reads_local += o.reads_local;
        self.reads_local_at_tail += o.reads_local_at_tail;
        self.reads_tail_query += o.reads_tail_query;
        self.writes_applied += o.writes_applied;
        self.conflicts += o.conflicts;
        self.dedup_hits += o.dedup_hits;
        self.commits += o.commits;
        self.epoch_mismatch += o.epoch_mismatch;
        self.ignored += o.ignored;
        self.gaps += o.gaps;
        self.divergent += o.divergent;
        self.views += o.views;
        self.syncs_started += o.syncs_started;
        self.syncs_completed += o.syncs_completed;
        self.pages_sent += o.pages_sent;
        self.expired += o.expired;
        self.busy += o.busy;
        self.proposals += o.proposals;
        self.decided += o.decided;
        self.accepts += o.accepts;
        self.nacks += o.nacks;
        self.accept_deferred += o.accept_deferred;
        self.no_quorum += o.no_quorum;
        self.stopped += o.stopped;
        self.persists += o.persists;
        self.recoveries += o.recoveries;
    }
}

/// What a replica holds of one key (for tests and status pages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// Newest version known committed (0: none).
    pub clean: u64,
    /// Newest version held.
    pub newest: u64,
    /// Versions held, ascending (the clean one, then the dirty ones).
    pub versions: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Stored {
    version: u64,
    value: Vec<u8>,
    req: Option<ReqId>,
}

#[derive(Clone, Debug)]
struct Record {
    /// Newest committed version (0: none). Every held version up to it is committed.
    clean: u64,
    /// Contiguous ascending versions: `clean` first (when > 0), then the dirty ones.
    versions: VecDeque<Stored>,
    /// client -> (seq, version) of its last write that created a version.
    dedup: BTreeMap<u64, (u64, u64)>,
    /// When to re-send the dirty versions to the successor.
    resend_at: u64,
}

impl Record {
    fn empty() -> Self {
        Record {
            clean: 0,
            versions: VecDeque::new(),
            dedup: BTreeMap::new(),
            resend_at: 0,
        }
    }

    fn newest(&self) -> u64 {
        self.versions.back().map_or(self.clean, |s| s.version)
    }

    fn is_dirty(&self) -> bool {
        self.newest() > self.clean
    }

    fn is_empty(&self) -> bool {
        self.clean == 0 && self.versions.is_empty()
    }

    /// The value of version `v` if held (version 0 is the absent record).
    fn value(&self, v: u64) -> Option<&[u8]> {
        if v == 0 {
            return if self.clean == 0 { Some(&[]) } else { None };
        }
        let first = self.versions.front()?.version;
        let idx = usize::try_from(v.checked_sub(first)?).ok()?;
        self.versions.get(idx).map(|s| s.value.as_slice())
    }

    fn note_writer(&mut self, req: Option<ReqId>, version: u64, max: usize) {
        let Some(r) = req else { return };
        let newer = self.dedup.get(&r.client).is_none_or(|&(s, _)| s < r.seq);
        if newer {
            self.dedup.insert(r.client, (r.seq, version));
        }
        while self.dedup.len() > max {
            // Forget the writer of the oldest version.
            let oldest = self
                .dedup
                .iter()
                .min_by_key(|(c, (_, v))| (*v, **c))
                .map(|(c, _)| *c);
            match oldest {
                Some(c) => {
                    self.dedup.remove(&c);
                }
                None => break,
            }
        }
    }

    /// Appends version `newest + 1`.
    fn push(&mut self, version: u64, value: Vec<u8>, req: Option<ReqId>, max_dedup: usize) {
        self.versions.push_back(Stored {
            version,
            value,
            req,
        });
        self.note_writer(req, version, max_dedup);
    }

    /// Drops the versions older than the clean one.
    fn prune(&mut self) {
        while self
            .versions
            .front()
            .is_some_and(|s| s.version < self.clean)
        {
            self.versions.pop_front();
        }
    }

    fn dirty_entries(&self) -> Vec<WriteEntry> {
        self.versions
            .iter()
            .filter(|s| s.version > self.clean)
            .map(|s| WriteEntry {
                version: s.version,
                value: s.value.clone(),
                req: s.req,
            })
            .collect()
    }

    fn byte_size(&self) -> usize {
        self.versions
            .iter()
            .map(|s| s.value.len() + 24)
            .sum::<usize>()
            + self.dedup.len() * 24
    }

    fn state(&self, key: &[u8]) -> RecordState {
        RecordState {
            key: key.to_vec(),
            clean: self.clean,
            versions: self
                .versions
                .iter()
                .map(|s| WriteEntry {
                    version: s.version,
                    value: s.value.clone(),
                    req: s.req,
                })
                .collect(),
            dedup: self
                .dedup
                .iter()
                .map(|(&client, &(seq, version))| DedupEntry {
                    client,
                    seq,
                    version,
                })
                .collect(),
        }
    }

    /// A record from a state-transfer page, if it is well formed and within bounds.
    fn from_state(st: RecordState, cfg: &Config) -> Option<(Key, Record)> {
        if st.key.len() > MAX_KEY_LEN
            || st.versions.is_empty()
            || st.versions.len() > cfg.max_dirty_per_key + 1
            || st.dedup.len() > cfg.max_dedup_clients
        {
            return None;
        }
        let first = st.versions[0].version;
        if first == 0 {
            return None;
        }
        for (i, e) in st.versions.iter().enumerate() {
            let want = first.checked_add(u64::try_from(i).ok()?)?;
            if e.version != want || e.value.len() > MAX_VALUE_SIZE {
                return None;
            }
        }
        let newest = st.versions.last()?.version;
        if st.clean > newest {
            return None;
        }
        // The clean version must be held (or there is none and the versions start at 1).
        if (st.clean == 0 && first != 1) || (st.clean > 0 && first > st.clean) {
            return None;
        }
        let mut rec = Record::empty();
        rec.clean = st.clean;
        for e in st.versions {
            rec.versions.push_back(Stored {
                version: e.version,
                value: e.value,
                req: e.req,
            });
        }
        for d in st.dedup {
            rec.dedup.insert(d.client, (d.seq, d.version));
        }
        rec.prune();
        Some((st.key, rec))
    }
}

#[derive(Clone, Debug)]
struct SyncState<A> {
    /// Members to pull from, in order of preference: predecessors nearest first, then
    /// successors nearest first.
    candidates: Vec<A>,
    idx: usize,
    cursor: Option<Key>,
    retry_at: u64,
}

#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Reply `Ok` when this version is committed.
    Write { version: u64 },
    /// Reply `Conflict` with this version when it is committed.
    Conflict { version: u64 },
    /// A read of a dirty key waiting for the tail's committed version.
    Read { qid: u64, requery_at: u64 },
}

#[derive(Clone, Debug)]
struct Pending<A> {
    to: A,
    id: ReqId,
    key: Key,
    deadline: u64,
    wait: Wait,
}

/// One member of one chain. Generic over the address type `A` (of replicas and clients alike)
/// and the [`Validate`] hook.
#[derive(Clone, Debug)]
pub struct Replica<A, V = AcceptAll> {
    me: A,
    cfg: Config,
    validator: V,
    view: Option<View<A>>,
    pos: Option<usize>,
    /// Holds the chain's state (a founding member, or a joiner after its state transfer).
    synced: bool,
    sync: Option<SyncState<A>>,
    records: BTreeMap<Key, Record>,
    dirty: BTreeSet<Key>,
    pending: Vec<Pending<A>>,
    next_qid: u64,
    timer_at: Option<u64>,
    max_epoch_seen: u64,
    stats: ReplicaStats,
    /// The time of the event being handled.
    now: u64,
    /// Started from disk: the first event finishes the restart.
    recovering: bool,
    /// Started with [`Start::Bootstrap`] and has not installed a view yet.
    founding: bool,
    /// Durability: keys changed since the last flush.
    touched: BTreeSet<Key>,
    /// Durability: every record was dropped since the last flush.
    cleared: bool,
    /// Durability: the metadata last written.
    persisted_meta: DurableMeta<A>,
    /// `unsafe_persist_late`: the writes held back, and when they are flushed next.
    late: Vec<Action<A>>,
    late_flush_at: u64,
    /// The view agreement (proposer, acceptor, leases).
    ag: Agreement<A>,
}

impl<A: Clone + Eq + Debug> Replica<A, AcceptAll> {
    /// A replica that accepts every value.
    pub fn new(me: A, cfg: Config, start: Start<A>) -> Self {
        Replica::with_validator(me, cfg, start, AcceptAll)
    }
}

impl<A: Clone + Eq + Debug, V: Validate> Replica<A, V> {
    /// A replica whose head role checks new values with `validator`.
    pub fn with_validator(me: A, cfg: Config, start: Start<A>, validator: V) -> Self {
        let mut r = Replica {
            me,
            cfg: cfg.normalized(),
            validator,
            view: None,
            pos: None,
            synced: start == Start::Bootstrap,
            sync: None,
            records: BTreeMap::new(),
            dirty: BTreeSet::new(),
            pending: Vec::new(),
            next_qid: 1,
            timer_at: None,
            max_epoch_seen: 0,
            stats: ReplicaStats::default(),
            now: 0,
            recovering: false,
            founding: start == Start::Bootstrap,
            touched: BTreeSet::new(),
            cleared: false,
            persisted_meta: DurableMeta::default(),
            late: Vec::new(),
            late_flush_at: 0,
            ag: Agreement::new(),
        };
        if let Start::Recover(rec) = start {
            r.restore(*rec);
        }
        r
    }

    /// Loads what an earlier incarnation persisted; the first event finishes the restart.
    fn restore(&mut self, rec: Recovered<A>) {
        self.stats.recoveries += 1;
        self.recovering = true;
        let Recovered { meta, records } = rec;
        // What is on disk is durable already: nothing to write back unless it changes.
        self.persisted_meta = meta.clone();
        let view = meta.view.filter(View::is_well_formed);
        self.pos = view.as_ref().and_then(|v| v.position(&self.me));
        self.max_epoch_seen = view.as_ref().map_or(0, |v| v.epoch);
        self.synced = meta.synced && self.pos.is_some();
        self.view = view;
        let epoch = self.epoch();
        if self.cfg.view_agreement {
            self.ag.promised = meta.promised;
            self.ag.accepted = meta.accepted.filter(|p| {
                p.view.epoch == epoch.saturating_add(1)
                    && p.view.is_well_formed()
                    && meta.promised.is_some_and(|b| b >= p.ballot)
            });
        }
        for st in records {
            if self.records.len() >= self.cfg.max_keys {
                self.stats.ignored += 1;
                break;
            }
            match Record::from_state(st, &self.cfg) {
                Some((k, r)) if !self.records.contains_key(&k) => {
                    if r.is_dirty() {
                        self.dirty.insert(k.clone());
                    }
                    self.records.insert(k, r);
                }
                _ => self.stats.ignored += 1,
            }
        }
        if !self.synced && !self.records.is_empty() {
            // A state transfer that had not finished: its pages are worthless.
            self.records.clear();
            self.dirty.clear();
            self.cleared = true;
        }
    }

    /// Processes one input at virtual time `now` (ms) and returns what to do.
    pub fn handle(&mut self, now: u64, event: Event<A>) -> Vec<Action<A>> {
        let mut out = Vec::new();
        self.now = now;
        if self.recovering {
            self.recovering = false;
            self.finish_restore(now, &mut out);
        }
        match event {
            Event::View(v) => self.on_view(now, v, &mut out),
            Event::Suggest { members, suspected } => {
                self.on_suggest(now, members, suspected, &mut out)
            }
            Event::Message { from, msg } => self.on_message(now, from, msg, &mut out),
            Event::Request { from, id, req } => self.on_request(now, from, id, req, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
        }
        self.arm_timer(now, &mut out);
        self.flush_durable(out)
    }

    /// The rest of a restart from disk, at the first event.
    fn finish_restore(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        // Leases this replica granted before it crashed may still run: accept no next view
        // for a whole lease from now.
        self.ag.no_accept_before = now.saturating_add(self.cfg.lease_ms);
        self.ag.accepted_at = now;
        if self.pos.is_none() {
            return;
        }
        if self.synced {
            self.enter_epoch_ready(now, out);
        } else {
            self.start_sync(now, out);
        }
    }

    // ----- durability -----

    fn touch(&mut self, key: &[u8]) {
        if self.cfg.durable && !self.touched.contains(key) {
            self.touched.insert(key.to_vec());
        }
    }

    fn clear_records(&mut self) {
        self.records.clear();
        self.dirty.clear();
        self.touched.clear();
        self.cleared = true;
    }

    fn meta_is(&self, m: &DurableMeta<A>) -> bool {
        m.view == self.view
            && m.synced == self.synced
            && m.promised == self.ag.promised
            && m.accepted == self.ag.accepted
    }

    fn meta(&self) -> DurableMeta<A> {
        DurableMeta {
            view: self.view.clone(),
            synced: self.synced,
            promised: self.ag.promised,
            accepted: self.ag.accepted.clone(),
        }
    }

    /// Puts the writes this batch needs in front of its other actions (see
    /// [`crate::durable`]). Order: metadata that says "not synced" before the records are
    /// dropped; records before metadata that says "synced".
    fn flush_durable(&mut self, out: Vec<Action<A>>) -> Vec<Action<A>> {
        if !self.cfg.durable {
            self.touched.clear();
            self.cleared = false;
            return out;
        }
        let mut writes = Vec::new();
        let meta_changed = !self.meta_is(&self.persisted_meta);
        if meta_changed {
            self.persisted_meta = self.meta();
        }
        let meta = || Action::Persist(Durable::Meta(self.persisted_meta.clone()));
        if meta_changed && !self.synced {
            writes.push(meta());
        }
        if self.cleared {
            writes.push(Action::Persist(Durable::ClearRecords));
        }
        for k in &self.touched {
            writes.push(Action::Persist(Durable::Record {
                key: k.clone(),
                state: self.records.get(k).map(|r| r.state(k)),
            }));
        }
        if meta_changed && self.synced {
            writes.push(meta());
        }
        self.touched.clear();
        self.cleared = false;
        self.stats.persists += writes.len() as u64;
        if self.cfg.unsafe_persist_late {
            // The bug: a write-behind buffer flushed every LATE_FLUSH_MS, while the messages
            // and replies that depend on it go out at once.
            self.late.append(&mut writes);
            if self.now >= self.late_flush_at {
                self.late_flush_at = self.now.saturating_add(LATE_FLUSH_MS);
                writes = std::mem::take(&mut self.late);
            }
        }
        if writes.is_empty() {
            return out;
        }
        writes.extend(out);
        writes
    }

    // ----- accessors -----

    /// This replica's address.
    pub fn me(&self) -> &A {
        &self.me
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current view, if any (possibly one this replica is not in).
    pub fn view(&self) -> Option<&View<A>> {
        self.view.as_ref()
    }

    /// The current epoch (0 without a view).
    pub fn epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch)
    }

    /// In the current view and holding the chain's state: serves requests.
    pub fn is_ready(&self) -> bool {
        self.synced && self.pos.is_some()
    }

    /// Under view agreement: whether the replica holds a read lease at `now` (a majority of
    /// its view granted one recently, so no next view can have been installed). Always true
    /// with an oracle.
    pub fn has_lease(&self, now: u64) -> bool {
        self.lease_valid(now)
    }

    /// Under view agreement: the highest ballot promised and the proposal accepted for the
    /// next view.
    pub fn acceptor_state(&self) -> (Option<crate::Ballot>, Option<&crate::Proposal<A>>) {
        (self.ag.promised, self.ag.accepted.as_ref())
    }

    /// Under view agreement: the chain this replica would propose (its last suggestion
    /// without the suspected members), and the proposal it is asking the others to accept.
    pub fn proposer_state(&self) -> (Option<&[A]>, Option<&crate::Proposal<A>>) {
        (self.ag.suggestion(), self.ag.proposing())
    }

    /// What a restart from disk would get if every `Persist` action emitted so far was
    /// performed (with [`Config::durable`]; for tests and checks).
    pub fn durable_image(&self) -> Recovered<A> {
        Recovered {
            meta: self.persisted_meta.clone(),
            records: self.records.iter().map(|(k, r)| r.state(k)).collect(),
        }
    }

    /// The replica's role in its view.
    pub fn role(&self) -> Role {
        let Some((v, p)) = self.member_view() else {
            return Role::Outside;
        };
        if !self.synced {
            return Role::CatchingUp;
        }
        let n = v.members.len();
        match (p == 0, p + 1 == n) {
            (true, true) => Role::Single,
            (true, false) => Role::Head,
            (false, true) => Role::Tail,
            (false, false) => Role::Middle,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Number of keys held.
    pub fn key_count(&self) -> usize {
        self.records.len()
    }

    /// Number of client requests waiting.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// What this replica holds of `key`.
    pub fn record(&self, key: &[u8]) -> Option<RecordInfo> {
        self.records.get(key).map(|r| RecordInfo {
            clean: r.clean,
            newest: r.newest(),
            versions: r.versions.iter().map(|s| s.version).collect(),
        })
    }

    /// The value of `version` of `key`, if held.
    pub fn value_of(&self, key: &[u8], version: u64) -> Option<Vec<u8>> {
        self.records
            .get(key)
            .and_then(|r| r.value(version))
            .map(<[u8]>::to_vec)
    }

    /// Checks the replica's internal invariants (for tests and debug assertions).
    pub fn check_invariants(&self) -> Result<(), String> {
        for (k, r) in &self.records {
            let mut prev: Option<u64> = None;
            for s in &r.versions {
                if let Some(p) = prev {
                    if Some(s.version) != p.checked_add(1) {
                        return Err(format!("key {k:?}: versions not contiguous"));
                    }
                }
                prev = Some(s.version);
            }
            if let Some(first) = r.versions.front() {
                let want = if r.clean == 0 { 1 } else { r.clean };
                if first.version != want {
                    return Err(format!(
                        "key {k:?}: first held version {} but clean {}",
                        first.version, r.clean
                    ));
                }
            } else if r.clean != 0 {
                return Err(format!("key {k:?}: clean {} not held", r.clean));
            }
            if r.is_dirty() != self.dirty.contains(k) {
                return Err(format!("key {k:?}: dirty set out of date"));
            }
            if r.dedup.len() > self.cfg.max_dedup_clients {
                return Err(format!("key {k:?}: dedup table too large"));
            }
        }
        if self.dirty.iter().any(|k| !self.records.contains_key(k)) {
            return Err("dirty key not held".into());
        }
        if self.pending.len() > self.cfg.max_pending {
            return Err("too many pending requests".into());
        }
        if !self.is_ready() && !self.pending.is_empty() {
            return Err("pending requests while not serving".into());
        }
        if self.synced && self.sync.is_some() {
            return Err("synced and syncing".into());
        }
        if self.role() == Role::Tail || self.role() == Role::Single {
            if let Some(k) = self.dirty.iter().next() {
                return Err(format!("tail holds dirty key {k:?}"));
            }
        }
        if self.records.len() > self.cfg.max_keys {
            return Err("too many keys".into());
        }
        self.ag.check(self.epoch(), self.view.as_ref())?;
        Ok(())
    }

    // ----- helpers -----

    fn member_view(&self) -> Option<(&View<A>, usize)> {
        let v = self.view.as_ref()?;
        Some((v, self.pos?))
    }

    fn pred(&self) -> Option<A> {
        let (v, p) = self.member_view()?;
        p.checked_sub(1).map(|i| v.members[i].clone())
    }

    fn succ(&self) -> Option<A> {
        let (v, p) = self.member_view()?;
        v.members.get(p + 1).cloned()
    }

    fn tail_addr(&self) -> Option<A> {
        let (v, _) = self.member_view()?;
        v.members.last().cloned()
    }

    fn is_tail(&self) -> bool {
        self.member_view()
            .is_some_and(|(v, p)| p + 1 == v.members.len())
    }

    fn reply(out: &mut Vec<Action<A>>, to: A, id: ReqId, reply: Reply<A>) {
        out.push(Action::Reply { to, id, reply });
    }

    // ----- views -----

    fn on_view(&mut self, now: u64, view: View<A>, out: &mut Vec<Action<A>>) {
        if view.epoch <= self.epoch() && self.view.is_some() {
            self.stats.epoch_mismatch += 1;
            return;
        }
        if view.members.len() > crate::MAX_MEMBERS
            || (!view.members.is_empty() && !view.is_well_formed())
        {
            self.stats.ignored += 1;
            return;
        }
        if self.cfg.view_agreement {
            // Only the founding view comes from outside; later ones are agreed.
            if !self.founding || self.view.is_some() || view.members.is_empty() {
                self.stats.ignored += 1;
                return;
            }
            self.founding = false;
            self.ag_install(now, view, true, out);
            return;
        }
        self.founding = false;
        out.push(Action::ViewInstalled(view.clone()));
        self.install_view(now, view, out);
    }

    /// Installs `view` (newer than the current one, well formed): the work of chain
    /// replication's reconfiguration, the same under an oracle and under agreement.
    fn install_view(&mut self, now: u64, view: View<A>, out: &mut Vec<Action<A>>) {
        self.max_epoch_seen = self.max_epoch_seen.max(view.epoch);
        self.pos = view.position(&self.me);
        self.view = Some(view);
        self.stats.views += 1;
        if self.pos.is_none() {
            // Removed: forget everything. If added again later, this replica catches up like
            // any joiner.
            for p in self.pending.drain(..) {
                Self::reply(out, p.to, p.id, Reply::Unavailable(Unavailable::NotMember));
            }
            self.clear_records();
            self.sync = None;
            self.synced = false;
            return;
        }
        if !self.synced {
            if self.cfg.unsafe_skip_state_transfer {
                self.synced = true;
                self.sync = None;
            } else {
                self.start_sync(now, out);
                return;
            }
        }
        self.enter_epoch_ready(now, out);
    }

    /// Work due when a synced replica enters a new epoch (or finishes its state transfer).
    fn enter_epoch_ready(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if self.is_tail() {
            // A new tail commits everything it holds and acknowledges it upstream.
            self.commit_all(out);
        }
        if self.succ().is_some() {
            for k in &self.dirty {
                if let Some(r) = self.records.get_mut(k) {
                    r.resend_at = now;
                }
            }
            self.resend_due(now, out);
        }
        for p in &mut self.pending {
            if let Wait::Read { requery_at, .. } = &mut p.wait {
                *requery_at = now;
            }
        }
        self.requery_reads(now, out);
    }

    fn start_sync(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        self.synced = false;
        self.clear_records();
        for p in self.pending.drain(..) {
            Self::reply(out, p.to, p.id, Reply::Unavailable(Unavailable::CatchingUp));
        }
        let Some((v, p)) = self.member_view() else {
            return;
        };
        let mut candidates: Vec<A> = v.members[..p].iter().rev().cloned().collect();
        candidates.extend(v.members[p + 1..].iter().cloned());
        let epoch = v.epoch;
        if let Some(c) = candidates.first() {
            out.push(Action::Send {
                to: c.clone(),
                msg: Msg::Pull { epoch, after: None },
            });
        }
        self.sync = Some(SyncState {
            candidates,
            idx: 0,
            cursor: None,
            retry_at: now.saturating_add(self.cfg.pull_timeout_ms),
        });
        self.stats.syncs_started += 1;
    }

    // ----- commit bookkeeping -----

    /// Marks every version of `key` up to `upto` committed, answers the requests waiting for
    /// that, and drops the versions older than the new clean one.
    fn commit_to(&mut self, key: &[u8], upto: u64, out: &mut Vec<Action<A>>) {
        let Some(rec) = self.records.get(key) else {
            return;
        };
        if upto <= rec.clean || upto > rec.newest() {
            return;
        }
        self.touch(key);
        let lease = self.lease_valid(self.now);
        let Some(rec) = self.records.get_mut(key) else {
            return;
        };
        self.stats.commits += upto - rec.clean;
        rec.clean = upto;
        let fully_clean = !rec.is_dirty();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            if p.key.as_slice() != key {
                i += 1;
                continue;
            }
            let reply = match p.wait {
                Wait::Write { version } if version <= upto => Some(Reply::Ok { version }),
                Wait::Conflict { version } if version <= upto => Some(match rec.value(version) {
                    Some(v) => Reply::Conflict {
                        current_version: version,
                        current_value: v.to_vec(),
                    },
                    None => Reply::Unavailable(Unavailable::Retry),
                }),
                Wait::Read { .. } if fully_clean && !lease => {
                    self.stats.no_quorum += 1;
                    Some(Reply::Unavailable(Unavailable::NoQuorum))
                }
                Wait::Read { .. } if fully_clean => Some(match rec.value(rec.clean) {
                    Some(v) => Reply::Value {
                        version: rec.clean,
                        value: v.to_vec(),
                    },
                    None => Reply::Unavailable(Unavailable::Retry),
                }),
                _ => None,
            };
            match reply {
                Some(r) => {
                    let p = self.pending.swap_remove(i);
                    out.push(Action::Reply {
                        to: p.to,
                        id: p.id,
                        reply: r,
                    });
                }
                None => i += 1,
            }
        }
        rec.prune();
        if !rec.is_dirty() {
            self.dirty.remove(key);
        }
    }

    fn commit_all(&mut self, out: &mut Vec<Action<A>>) {
        let keys: Vec<Key> = self.dirty.iter().cloned().collect();
        let pred = self.pred();
        let epoch = self.epoch();
        for k in keys {
            let Some(newest) = self.records.get(&k).map(Record::newest) else {
                continue;
            };
            self.commit_to(&k, newest, out);
            if let Some(p) = &pred {
                out.push(Action::Send {
                    to: p.clone(),
                    msg: Msg::Ack {
                        epoch,
                        key: k,
                        version: newest,
                    },
                });
            }
        }
    }

    // ----- timers -----

    fn on_timer(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if self.timer_at.is_some_and(|t| t <= now) {
            self.timer_at = None;
        }
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline <= now {
                let p = self.pending.swap_remove(i);
                self.stats.expired += 1;
                Self::reply(out, p.to, p.id, Reply::Unavailable(Unavailable::Retry));
            } else {
                i += 1;
            }
        }
        let epoch = self.epoch();
        if let Some(s) = &mut self.sync {
            if s.retry_at <= now {
                s.retry_at = now.saturating_add(self.cfg.pull_timeout_ms);
                if let Some(c) = s.candidates.get(s.idx) {
                    out.push(Action::Send {
                        to: c.clone(),
                        msg: Msg::Pull {
                            epoch,
                            after: s.cursor.clone(),
                        },
                    });
                }
            }
        }
        self.resend_due(now, out);
        self.requery_reads(now, out);
        if self.cfg.view_agreement {
            self.ag_on_timer(now, out);
        }
    }

    fn arm_timer(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        let work = !self.pending.is_empty()
            || self.sync.is_some()
            || (self.synced && !self.dirty.is_empty() && self.succ().is_some())
            || (self.cfg.view_agreement && (self.view.is_some() || self.ag.has_suggestion()));
        if work && self.timer_at.is_none_or(|t| t < now) {
            let at = now.saturating_add(self.cfg.tick_ms);
            self.timer_at = Some(at);
            out.push(Action::SetTimer { at });
        }
    }

    /// Re-sends the dirty versions of keys whose acknowledgement is overdue.
    fn resend_due(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if !self.is_ready() {
            return;
        }
        let Some(succ) = self.succ() else {
            return;
        };
        let epoch = self.epoch();
        let due: Vec<Key> = self
            .dirty
            .iter()
            .filter(|k| self.records.get(*k).is_some_and(|r| r.resend_at <= now))
            .take(self.cfg.max_resend_keys_per_tick)
            .cloned()
            .collect();
        for k in due {
            let Some(rec) = self.records.get_mut(&k) else {
                continue;
            };
            rec.resend_at = now.saturating_add(self.cfg.resend_ms);
            let entries = rec.dirty_entries();
            if entries.is_empty() {
                continue;
            }
            out.push(Action::Send {
                to: succ.clone(),
                msg: Msg::Write {
                    epoch,
                    key: k,
                    entries,
                },
            });
        }
    }

    /// Asks the tail again for pending dirty reads (or answers them, as the tail).
    fn requery_reads(&mut self, now: u64, out: &mut Vec<Action<A>>) {
        if !self.is_ready() {
            return;
        }
        let Some(tail) = self.tail_addr() else {
            return;
        };
        let i_am_tail = self.is_tail();
        let epoch = self.epoch();
        let resend = self.cfg.resend_ms;
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let Wait::Read { qid, requery_at } = &mut p.wait else {
                i += 1;
                continue;
            };
            if *requery_at > now {
                i += 1;
                continue;
            }
            if i_am_tail {
                let p = self.pending.swap_remove(i);
                if !self.lease_valid(now) {
                    self.stats.no_quorum += 1;
                    Self::reply(out, p.to, p.id, Reply::Unavailable(Unavailable::NoQuorum));
                    continue;
                }
                let reply = match self.records.get(&p.key) {
                    None => Reply::Value {
                        version: 0,
                        value: Vec::new(),
                    },
                    Some(r) => match r.value(r.clean) {
                        Some(v) => Reply::Value {
                            version: r.clean,
                            value: v.to_vec(),
                        },
                        None => Reply::Unavailable(Unavailable::Retry),
                    },
                };
                Self::reply(out, p.to, p.id, reply);
                continue;
            }
            *requery_at = now.saturating_add(resend);
            out.push(Action::Send {
                to: tail.clone(),
                msg: Msg::VersionQuery {
                    epoch,
                    key: p.key.clone(),
                    qid: *qid,
                },
            });
            i += 1;
        }
    }

    // ----- messages between replicas -----

    fn on_message(&mut self, now: u64, from: A, msg: Msg<A>, out: &mut Vec<Action<A>>) {
        if self.cfg.view_agreement {
            self.ag_on_message(now, from, msg, out);
            return;
        }
        if !msg.is_data() {
            self.stats.ignored += 1;
            return;
        }
        let Some(view) = &self.view else {
            self.stats.ignored += 1;
            return;
        };
        let e = msg.epoch();
        if e != view.epoch {
            self.stats.epoch_mismatch += 1;
            if e > self.max_epoch_seen && view.position(&from).is_some() {
                self.max_epoch_seen = e;
                out.push(Action::NewerEpoch { from, epoch: e });
            }
            return;
        }
        if self.pos.is_none() || from == self.me || view.position(&from).is_none() {
            self.stats.ignored += 1;
            return;
        }
        self.on_data_message(now, from, msg, out);
    }

    /// A message of the data path or the state transfer, of this replica's epoch, from a
    /// member of its view.
    fn on_data_message(&mut self, now: u64, from: A, msg: Msg<A>, out: &mut Vec<Action<A>>) {
        match msg {
            Msg::Write { key, entries, .. } => self.on_write(now, from, key, entries, out),
            Msg::Ack { key, version, .. } => self.on_ack(now, from, key, version, out),
            Msg::VersionQuery { key, qid, .. } => self.on_version_query(from, key, qid, out),
            Msg::VersionReply {
                key, qid, version, ..
            } => self.on_version_reply(from, key, qid, version, out),
            Msg::Pull { after, .. } => self.on_pull(from, after, out),
            Msg::Page {
                after,
                records,
                done,
                ..
            } => self.on_page(now, from, after, records, done, out),
            Msg::PullRefused { .. } => self.on_pull_refused(now, from, out),
            _ => self.stats.ignored += 1,
        }
    }

    fn on_write(
        &mut self,
        now: u64,
        from: A,
        key: Key,
        entries: Vec<WriteEntry>,
        out: &mut Vec<Action<A>>,
    ) {
        if !self.synced || self.pred().as_ref() != Some(&from) {
            self.stats.ignored += 1;
            return;
        }
        let well_formed = key.len() <= MAX_KEY_LEN
            && !entries.is_empty()
            && entries.len() <= self.cfg.max_dirty_per_key + 1
            && entries[0].version > 0
            && entries.iter().all(|e| e.value.len() <= MAX_VALUE_SIZE)
            && entries
                .windows(2)
                .all(|w| w[0].version.checked_add(1) == Some(w[1].version));
        if !well_formed
            || (!self.records.contains_key(&key) && self.records.len() >= self.cfg.max_keys)
        {
            self.stats.ignored += 1;
            return;
        }
        let epoch = self.epoch();
        let max_dedup = self.cfg.max_dedup_clients;
        let rec = self
            .records
            .entry(key.clone())
            .or_insert_with(Record::empty);
        let was_dirty = rec.is_dirty();
        let mut appended = Vec::new();
        let mut committed_dup = false;
        for en in entries {
            let newest = rec.newest();
            if en.version <= newest {
                if en.version <= rec.clean {
                    committed_dup = true;
                } else if rec.value(en.version) != Some(en.value.as_slice()) {
                    self.stats.divergent += 1;
                }
                continue;
            }
            if Some(en.version) != newest.checked_add(1) {
                self.stats.gaps += 1;
                break;
            }
            rec.push(en.version, en.value.clone(), en.req, max_dedup);
            appended.push(en);
        }
        let clean = rec.clean;
        let newest = rec.newest();
        if rec.is_empty() {
            self.records.remove(&key);
        }
        if !appended.is_empty() {
            self.touch(&key);
        }
        if appended.is_empty() {
            if committed_dup {
                out.push(Action::Send {
                    to: from,
                    msg: Msg::Ack {
                        epoch,
                        key,
                        version: clean,
                    },
                });
            }
            return;
        }
        if self.is_tail() {
            self.commit_to(&key, newest, out);
            out.push(Action::Send {
                to: from,
                msg: Msg::Ack {
                    epoch,
                    key,
                    version: newest,
                },
            });
            return;
        }
        if !was_dirty {
            if let Some(r) = self.records.get_mut(&key) {
                r.resend_at = now.saturating_add(self.cfg.resend_ms);
            }
        }
        self.dirty.insert(key.clone());
        if let Some(s) = self.succ() {
            out.push(Action::Send {
                to: s,
                msg: Msg::Write {
                    epoch,
                    key,
                    entries: appended,
                },
            });
        }
    }

    fn on_ack(&mut self, now: u64, from: A, key: Key, version: u64, out: &mut Vec<Action<A>>) {
        if !self.synced || self.succ().as_ref() != Some(&from) {
            self.stats.ignored += 1;
            return;
        }
        let Some(rec) = self.records.get(&key) else {
            self.stats.ignored += 1;
            return;
        };
        if version <= rec.clean {
            return;
        }
        if version > rec.newest() {
            // The successor cannot have committed what we never had.
            self.stats.ignored += 1;
            return;
        }
        self.commit_to(&key, version, out);
        if let Some(r) = self.records.get_mut(&key) {
            if r.is_dirty() {
                r.resend_at = now.saturating_add(self.cfg.resend_ms);
            }
        }
        if let Some(p) = self.pred() {
            out.push(Action::Send {
                to: p,
                msg: Msg::Ack {
                    epoch: self.epoch(),
                    key,
                    version,
                },
            });
        }
    }

    fn on_version_query(&mut self, from: A, key: Key, qid: u64, out: &mut Vec<Action<A>>) {
        if !self.synced || !self.is_tail() || key.len() > MAX_KEY_LEN {
            self.stats.ignored += 1;
            return;
        }
        let version = self.records.get(&key).map_or(0, |r| r.clean);
        out.push(Action::Send {
            to: from,
            msg: Msg::VersionReply {
                epoch: self.epoch(),
                key,
                qid,
                version,
            },
        });
    }

    fn on_version_reply(
        &mut self,
        from: A,
        key: Key,
        qid: u64,
        version: u64,
        out: &mut Vec<Action<A>>,
    ) {
        if !self.synced || self.tail_addr().as_ref() != Some(&from) {
            self.stats.ignored += 1;
            return;
        }
        let Some(i) = self
            .pending
            .iter()
            .position(|p| matches!(p.wait, Wait::Read { qid: q, .. } if q == qid) && p.key == key)
        else {
            return;
        };
        let p = self.pending.swap_remove(i);
        if !self.lease_valid(self.now) {
            self.stats.no_quorum += 1;
            Self::reply(out, p.to, p.id, Reply::Unavailable(Unavailable::NoQuorum));
            return;
        }
        // The tail's committed version was current when it answered; a newer version that is
        // clean here by now was committed later, also within the read's interval.
        let answer = match self.records.get(&key) {
            None if version == 0 => Some((0, Vec::new())),
            None => None,
            Some(r) => {
                let v = version.max(r.clean);
                r.value(v).map(|x| (v, x.to_vec()))
            }
        };
        let reply = match answer {
            Some((version, value)) => Reply::Value { version, value },
            None => Reply::Unavailable(Unavailable::Retry),
        };
        Self::reply(out, p.to, p.id, reply);
    }

    fn on_pull(&mut self, from: A, after: Option<Key>, out: &mut Vec<Action<A>>) {
        let epoch = self.epoch();
        if !self.synced {
            out.push(Action::Send {
                to: from,
                msg: Msg::PullRefused { epoch },
            });
            return;
        }
        if after.as_ref().is_some_and(|a| a.len() > MAX_KEY_LEN) {
            self.stats.ignored += 1;
            return;
        }
        let range = match &after {
            None => self.records.range::<Key, _>(..),
            Some(a) => self
                .records
                .range::<Key, _>((Bound::Excluded(a), Bound::Unbounded)),
        };
        let mut records = Vec::new();
        let mut bytes = 0usize;
        let mut done = true;
        for (k, r) in range {
            if r.is_empty() {
                continue;
            }
            let size = r.byte_size() + k.len();
            if !records.is_empty()
                && (records.len() >= self.cfg.max_keys_per_page
                    || bytes.saturating_add(size) > self.cfg.max_page_bytes)
            {
                done = false;
                break;
            }
            bytes = bytes.saturating_add(size);
            records.push(r.state(k));
        }
        self.stats.pages_sent += 1;
        out.push(Action::Send {
            to: from,
            msg: Msg::Page {
                epoch,
                after,
                records,
                done,
            },
        });
    }

    fn on_page(
        &mut self,
        now: u64,
        from: A,
        after: Option<Key>,
        records: Vec<RecordState>,
        done: bool,
        out: &mut Vec<Action<A>>,
    ) {
        let Some(s) = &self.sync else {
            self.stats.ignored += 1;
            return;
        };
        if s.candidates.get(s.idx) != Some(&from) || s.cursor != after {
            self.stats.ignored += 1;
            return;
        }
        if records.len() > self.cfg.max_keys_per_page || (!done && records.is_empty()) {
            self.stats.ignored += 1;
            return;
        }
        let mut parsed = Vec::with_capacity(records.len());
        let mut last: Option<&Key> = after.as_ref();
        for st in &records {
            if last.is_some_and(|l| st.key <= *l) {
                self.stats.ignored += 1;
                return;
            }
            last = Some(&st.key);
        }
        for st in records {
            match Record::from_state(st, &self.cfg) {
                Some(x) => parsed.push(x),
                None => {
                    self.stats.ignored += 1;
                    return;
                }
            }
        }
        if self.records.len() + parsed.len() > self.cfg.max_keys {
            self.stats.ignored += 1;
            return;
        }
        let cursor = parsed.last().map(|(k, _)| k.clone());
        for (k, mut r) in parsed {
            r.resend_at = now;
            if r.is_dirty() {
                self.dirty.insert(k.clone());
            }
            self.touch(&k);
            self.records.insert(k, r);
        }
        if done {
            self.sync = None;
            self.synced = true;
            self.stats.syncs_completed += 1;
            self.enter_epoch_ready(now, out);
            return;
        }
        let epoch = self.epoch();
        let pull_timeout = self.cfg.pull_timeout_ms;
        if let Some(s) = &mut self.sync {
            s.cursor = cursor;
            s.retry_at = now.saturating_add(pull_timeout);
            out.push(Action::Send {
                to: from,
                msg: Msg::Pull {
                    epoch,
                    after: s.cursor.clone(),
                },
            });
        }
    }

    fn on_pull_refused(&mut self, now: u64, from: A, out: &mut Vec<Action<A>>) {
        let epoch = self.epoch();
        let pull_timeout = self.cfg.pull_timeout_ms;
        let Some(s) = &mut self.sync else {
            self.stats.ignored += 1;
            return;
        };
        if s.candidates.get(s.idx) != Some(&from) {
            self.stats.ignored += 1;
            return;
        }
        // That member is catching up itself: ask the next one (wrapping around after a pause).
        s.idx = (s.idx + 1) % s.candidates.len();
        if s.idx == 0 {
            s.retry_at = now.saturating_add(pull_timeout);
        } else {
            s.retry_at = now.saturating_add(pull_timeout);
            out.push(Action::Send {
                to: s.candidates[s.idx].clone(),
                msg: Msg::Pull {
                    epoch,
                    after: s.cursor.clone(),
                },
            });
        }
    }

    // ----- client requests -----

    fn on_request(&mut self, now: u64, from: A, id: ReqId, req: Request, out: &mut Vec<Action<A>>) {
        if req.key().len() > MAX_KEY_LEN {
            Self::reply(out, from, id, Reply::Rejected(Rejected::KeyTooLong));
            return;
        }
        if let Request::Cas { value, .. } = &req {
            if value.len() > MAX_VALUE_SIZE {
                Self::reply(out, from, id, Reply::Rejected(Rejected::ValueTooLarge));
                return;
            }
        }
        let Some(view) = &self.view else {
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::NoView));
            return;
        };
        let Some(pos) = self.pos else {
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::NotMember));
            return;
        };
        if self.ag.accepted.is_some() {
            // This member accepted the next view and stopped serving the current one.
            self.stats.no_quorum += 1;
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::NoQuorum));
            return;
        }
        let head = view.head().cloned();
        match req {
            Request::Read { key } => self.on_read(now, from, id, key, out),
            Request::Cas {
                key,
                expected,
                value,
            } => {
                if pos != 0 {
                    Self::reply(out, from, id, Reply::NotHead { head });
                    return;
                }
                self.on_cas(now, from, id, key, expected, value, out);
            }
        }
    }

    fn on_read(&mut self, now: u64, from: A, id: ReqId, key: Key, out: &mut Vec<Action<A>>) {
        if !self.synced {
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::CatchingUp));
            return;
        }
        let i_am_tail = self.is_tail();
        let local = match self.records.get(&key) {
            None => Some((0, Vec::new())),
            Some(r) if i_am_tail => r.value(r.clean).map(|v| (r.clean, v.to_vec())),
            Some(r) if !r.is_dirty() || self.cfg.unsafe_read_dirty => {
                let n = r.newest();
                r.value(n).map(|v| (n, v.to_vec()))
            }
            Some(_) => None,
        };
        if local.is_some() && !self.lease_valid(now) {
            self.stats.no_quorum += 1;
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::NoQuorum));
            return;
        }
        if let Some((version, value)) = local {
            // Clean here: every version committed anywhere passed through this replica, so
            // this is the committed newest.
            self.stats.reads_local += 1;
            self.stats.reads_local_at_tail += u64::from(i_am_tail);
            Self::reply(out, from, id, Reply::Value { version, value });
            return;
        }
        if self.pending.len() >= self.cfg.max_pending {
            self.stats.busy += 1;
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::Busy));
            return;
        }
        let Some(tail) = self.tail_addr() else {
            return;
        };
        self.stats.reads_tail_query += 1;
        let qid = self.next_qid;
        self.next_qid = self.next_qid.wrapping_add(1);
        out.push(Action::Send {
            to: tail,
            msg: Msg::VersionQuery {
                epoch: self.epoch(),
                key: key.clone(),
                qid,
            },
        });
        self.pending.push(Pending {
            to: from,
            id,
            key,
            deadline: now.saturating_add(self.cfg.request_timeout_ms),
            wait: Wait::Read {
                qid,
                requery_at: now.saturating_add(self.cfg.resend_ms),
            },
        });
    }

    fn wait(&mut self, now: u64, to: A, id: ReqId, key: Key, wait: Wait, out: &mut Vec<Action<A>>) {
        if self.pending.len() >= self.cfg.max_pending {
            self.stats.busy += 1;
            Self::reply(out, to, id, Reply::Unavailable(Unavailable::Busy));
            return;
        }
        self.pending.push(Pending {
            to,
            id,
            key,
            deadline: now.saturating_add(self.cfg.request_timeout_ms),
            wait,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_cas(
        &mut self,
        now: u64,
        from: A,
        id: ReqId,
        key: Key,
        expected: u64,
        value: Vec<u8>,
        out: &mut Vec<Action<A>>,
    ) {
        if !self.synced {
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::CatchingUp));
            return;
        }
        let rec = self.records.get(&key);
        if !self.cfg.unsafe_no_dedup {
            if let Some((&(seq, version), clean)) =
                rec.and_then(|r| r.dedup.get(&id.client).map(|d| (d, r.clean)))
            {
                if seq == id.seq {
                    // A retry of a write that already created `version`.
                    self.stats.dedup_hits += 1;
                    if version <= clean {
                        Self::reply(out, from, id, Reply::Ok { version });
                    } else {
                        self.wait(now, from, id, key, Wait::Write { version }, out);
                    }
                    return;
                }
                if seq > id.seq {
                    // A late duplicate of a request the client has finished with.
                    self.stats.ignored += 1;
                    return;
                }
            }
        }
        let newest = rec.map_or(0, Record::newest);
        let clean = rec.map_or(0, |r| r.clean);
        if expected != newest && newest == clean && !self.lease_valid(now) {
            // Answering with the committed newest is a read: it needs the lease.
            self.stats.no_quorum += 1;
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::NoQuorum));
            return;
        }
        if expected != newest {
            self.stats.conflicts += 1;
            if newest == clean {
                // Clean at the head: it is the committed newest.
                let current_value = rec.and_then(|r| r.value(newest)).unwrap_or(&[]).to_vec();
                Self::reply(
                    out,
                    from,
                    id,
                    Reply::Conflict {
                        current_version: newest,
                        current_value,
                    },
                );
            } else {
                // Answer once the newest version is committed (it then is the current one).
                self.wait(now, from, id, key, Wait::Conflict { version: newest }, out);
            }
            return;
        }
        let Some(version) = newest.checked_add(1) else {
            Self::reply(
                out,
                from,
                id,
                Reply::Rejected(Rejected::Invalid("version space exhausted".into())),
            );
            return;
        };
        if rec.is_none() && self.records.len() >= self.cfg.max_keys {
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::Full));
            return;
        }
        let single = self.is_tail();
        if newest - clean >= self.cfg.max_dirty_per_key as u64
            || (!single && self.pending.len() >= self.cfg.max_pending)
        {
            self.stats.busy += 1;
            Self::reply(out, from, id, Reply::Unavailable(Unavailable::Busy));
            return;
        }
        let current = rec.and_then(|r| r.value(newest).map(|v| (newest, v)));
        let current = if newest == 0 { None } else { current };
        if let Err(reason) = self.validator.validate(&key, current, version, &value) {
            let mut reason = reason;
            if reason.len() > MAX_REASON_LEN {
                let mut cut = MAX_REASON_LEN;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            Self::reply(out, from, id, Reply::Rejected(Rejected::Invalid(reason)));
            return;
        }
        let max_dedup = self.cfg.max_dedup_clients;
        let rec = self
            .records
            .entry(key.clone())
            .or_insert_with(Record::empty);
        let was_dirty = rec.is_dirty();
        rec.push(version, value.clone(), Some(id), max_dedup);
        if !was_dirty {
            rec.resend_at = now.saturating_add(self.cfg.resend_ms);
        }
        self.touch(&key);
        self.stats.writes_applied += 1;
        if single {
            self.commit_to(&key, version, out);
            Self::reply(out, from, id, Reply::Ok { version });
            return;
        }
        self.dirty.insert(key.clone());
        if let Some(s) = self.succ() {
            out.push(Action::Send {
                to: s,
                msg: Msg::Write {
                    epoch: self.epoch(),
                    key: key.clone(),
                    entries: vec![WriteEntry {
                        version,
                        value,
                        req: Some(id),
                    }],
                },
            });
        }
        self.wait(now, from, id, key, Wait::Write { version }, out);
    }
}
