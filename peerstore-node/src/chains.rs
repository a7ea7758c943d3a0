//! Linearizable mutable records: the node's driver of the `chain` crate (CRAQ chain
//! replication over each record's replica set, views agreed by a majority of the old view,
//! read leases, persistence; docs/CHAIN.md).
//!
//! - **One chain per record.** Each record key (a user's root, a device's head) has its own
//!   [`chain::Replica`] on each member of its replica set ([`Ring::replica_set`], head first,
//!   in ring order). Records are few and small, so per-key chains cost little and a join that
//!   moves a key's replica set moves exactly that key's chain, with no range to split.
//! - **Views follow the successor list.** Every [`SUGGEST_EVERY`] the node hands each of its
//!   replicas the key's current replica set as its suggestion; the members agree on each new
//!   view (a majority of the old view must accept it), and a new member pulls the record
//!   before it serves. Chord's stabilization is the failure detector: a member that stops
//!   answering leaves the successor lists, then the views.
//! - **Durable before it speaks.** The `Persist` actions of a batch are applied to the key's
//!   disk image, which is written (one redb transaction, fsync) before any message or reply
//!   of that batch leaves. A restarted node resumes every chain from its image
//!   ([`chain::Start::Recover`]).
//! - **Traffic.** Messages to one member are batched ([`MemberRequest::Chain`]), sent without
//!   waiting for an answer; the chain re-sends what is lost.
//! - **Clients** ask any node; that node forwards the request to the chain
//!   ([`Chains::read`], [`Chains::cas`]): a compare-and-set to the head, a read to any member
//!   (CRAQ's apportioned reads) or to the tail. A record nobody holds is created by its head
//!   with the founding view (the first compare-and-set, expected version 0).
//!
//! - **Re-founding.** A chain whose majority is gone (its other members do not answer) for
//!   longer than the node's `chain_refound_after_s` is re-founded by a synced survivor alone:
//!   it installs a one-member view far above the old epoch with everything it holds
//!   committed, and the next suggestion brings the key's current replica set in
//!   (`Task::refound`; docs/CHAIN.md, "Re-founding a chain that lost its majority").
//!
//! The head checks each new value ([`RecordRules`]): a root record signed by the key's user,
//! with a growing sequence number. Members trust each other's chain messages (an admitted
//! member could withhold or replay within a chain; clients verify signatures and keep a
//! watermark of the newest sequence number they saw).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chain::{
    Action, Config, Disk, Event, Recovered, Replica, Reply, ReqId, Request, Role, Start,
    Unavailable, Validate, View,
};
use libp2p::PeerId;
use peerstore_proto::{
    BlockKey, CasOutcome, ChainAddr, ChainAnswer, ChainItem, ErrorCode, MemberRequest,
    MemberResponse, NodeAddr, ReadFrom, MAX_CHAIN_ITEMS,
};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::ring::{blocking, Ring, RingError};
use crate::store::{BlockStore, RecordTable};

/// Where each record's chain state lives (postcard of [`chain::Recovered`], per key).
pub const CHAIN_TABLE: RecordTable = RecordTable::new("chain_state");
/// Most chains one node takes part in (a member that asks for more is ignored).
pub const MAX_CHAINS: usize = 65_536;
/// How often replicas left outside their chain are looked for.
const OUTSIDE_CHECK: Duration = Duration::from_secs(1);
/// How often each replica is handed its key's replica set.
const SUGGEST_EVERY: Duration = Duration::from_millis(500);
/// How far above the old epoch a re-founded chain's one-member view is put: well above any
/// view the lost members could have agreed on among themselves meanwhile.
pub const REFOUND_EPOCHS: u64 = 1_000_000;
/// Stalled chains probed per suggestion round, at most.
const MAX_STALL_PROBES: usize = 64;
/// How long a probe of a stalled chain's member may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch to a member that has not been taken within this long is dropped (re-sent later).
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// A replica outside its chain's view for this long is dropped with its disk image.
const OUTSIDE_FOR_MS: u64 = 60_000;
/// How long the node a client asked keeps trying to get an answer from a record's chain.
const CLIENT_DEADLINE: Duration = Duration::from_secs(8);
/// Commands waiting for the chain task at most.
const QUEUE: usize = 4096;

/// The chain configuration of the node: views by agreement, persistence, and timings for a
/// real network (a view change takes at least `lease_ms`; reads need a lease).
#[must_use]
pub fn config() -> Config {
    Config {
        view_agreement: true,
        durable: true,
        lease_ms: 1_000,
        lease_renew_ms: 200,
        lease_margin_ms: 100,
        resend_ms: 100,
        pull_timeout_ms: 500,
        request_timeout_ms: 5_000,
        propose_retry_ms: 200,
        propose_delay_ms: 100,
        tick_ms: 20,
        ..Config::default()
    }
    .normalized()
}

/// Checks a signed root record: signed by the user whose root key it is stored under; a
/// replacement must be newer. Returns its sequence number.
pub fn check_record(key: &BlockKey, record: &[u8], current: Option<&[u8]>) -> Result<u64, String> {
    let new = crypto::RootRecord::decode(record).map_err(|e| format!("bad record: {e}"))?;
    if current == Some(record) {
        // Storing the record a replica already has (a retry, or anti-entropy) is not a replay.
        return Ok(new.seq);
    }
    if crypto::root_key(&new.user) != key.0 {
        return Err("record stored under a key that is not its user's root key".into());
    }
    let current = match current {
        Some(bytes) => Some(
            crypto::RootRecord::decode(bytes)
                .map_err(|e| format!("stored record unreadable: {e}"))?,
        ),
        None => None,
    };
    crypto::accept_root_update(current.as_ref(), &new).map_err(|e| e.to_string())?;
    Ok(new.seq)
}

/// The head's check of every new version: [`check_record`] against the current version.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordRules;

impl Validate for RecordRules {
    fn validate(
        &self,
        key: &[u8],
        current: Option<(u64, &[u8])>,
        _version: u64,
        value: &[u8],
    ) -> Result<(), String> {
        let key = BlockKey(
            key.try_into()
                .map_err(|_| "a record key is 32 bytes".to_string())?,
        );
        check_record(&key, value, current.map(|(_, v)| v)).map(|_| ())
    }
}

/// What the chain task is asked.
enum Cmd {
    /// A client request forwarded to this member.
    Request {
        key: BlockKey,
        id: ReqId,
        request: Request,
        found: Option<View<ChainAddr>>,
        reply: oneshot::Sender<ChainAnswer>,
    },
    /// Chain traffic from another member.
    Items { from: PeerId, items: Vec<ChainItem> },
    /// A key's current replica set.
    Suggest { key: BlockKey, members: Vec<PeerId> },
    /// The keys this node holds a replica of.
    Keys(oneshot::Sender<Vec<BlockKey>>),
    /// The installed views of the synced replicas whose view differs from the key's replica
    /// set (a change is due; it stalls if the view's majority is gone).
    Pending(oneshot::Sender<Vec<(BlockKey, View<PeerId>)>>),
    /// Re-found the chain of `key` alone if it is still in view `epoch`.
    Refound { key: BlockKey, epoch: u64 },
    /// What each replica is (for status and tests).
    Report(oneshot::Sender<Vec<ChainReport>>),
    /// The newest version of a key held here, committed or not.
    Local(BlockKey, oneshot::Sender<Option<(u64, Vec<u8>)>>),
}

/// One replica of this node, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    pub key: BlockKey,
    pub epoch: u64,
    pub members: Vec<PeerId>,
    pub role: Role,
    pub version: u64,
}

/// The node's chains: the handle the service and the client path use.
pub struct Chains {
    me: PeerId,
    ring: Arc<Ring>,
    tx: mpsc::Sender<Cmd>,
    /// Addresses of the members this node has heard of (from replica sets).
    book: Arc<Mutex<HashMap<PeerId, NodeAddr>>>,
    /// How long a chain may lack a majority before this node re-founds it (none: never).
    refound_after: Option<Duration>,
}

impl Chains {
    /// Loads every chain this node takes part in from `store` and starts the chain task and
    /// the suggestion task (both end when the last handle is dropped).
    ///
    /// `unsafe_read_dirty`: the broken variant for tests (reads served from uncommitted
    /// versions; `PEERSTORE_TEST_HOSTILE=dirty-reads`). `refound_after`: see
    /// [`Task::refound`] (none: never).
    pub fn start(
        ring: Arc<Ring>,
        store: Arc<BlockStore>,
        unsafe_read_dirty: bool,
        refound_after: Option<Duration>,
    ) -> Result<Arc<Chains>, RingError> {
        let me = ring.me().peer;
        let mut cfg = config();
        cfg.unsafe_read_dirty = unsafe_read_dirty;
        let (tx, rx) = mpsc::channel(QUEUE);
        let book = Arc::new(Mutex::new(HashMap::new()));
        let mut task = Task {
            me,
            cfg,
            started: Instant::now(),
            slots: HashMap::new(),
            waiting: HashMap::new(),
            outbox: Vec::new(),
            store: store.clone(),
            ring: ring.clone(),
            book: book.clone(),
            timers: Timers::default(),
        };
        let mut loaded = Vec::new();
        store
            .record_scan(CHAIN_TABLE, None, |k, v| {
                loaded.push((*k, v.to_vec()));
                loaded.len() < MAX_CHAINS
            })
            .map_err(RingError::from)?;
        for (k, bytes) in loaded {
            match postcard::from_bytes::<Recovered<PeerId>>(&bytes) {
                Ok(image) => task.recover(BlockKey(k), image),
                Err(e) => warn!(key = %BlockKey(k), error = %e, "unreadable chain state; left out"),
            }
        }
        if !task.slots.is_empty() {
            info!(chains = task.slots.len(), "record chains resumed from disk");
        }
        let chains = Arc::new(Chains {
            me,
            ring: ring.clone(),
            tx: tx.clone(),
            book,
            refound_after,
        });
        tokio::spawn(task.run(rx));
        tokio::spawn(suggest_loop(Arc::downgrade(&chains)));
        Ok(chains)
    }

    /// Chain traffic from member `from` (the connection's authenticated peer).
    pub async fn items(&self, from: PeerId, items: Vec<ChainItem>) -> MemberResponse {
        if items.len() > MAX_CHAIN_ITEMS {
            return MemberResponse::Error {
                code: ErrorCode::BadRequest,
                message: format!("more than {MAX_CHAIN_ITEMS} chain items"),
            };
        }
        match self.tx.try_send(Cmd::Items { from, items }) {
            Ok(()) => MemberResponse::Ok,
            Err(_) => MemberResponse::Error {
                code: ErrorCode::Unavailable,
                message: "chain queue full".into(),
            },
        }
    }

    /// A client request forwarded to this member.
    pub async fn serve(
        &self,
        key: BlockKey,
        id: ReqId,
        request: Request,
        found: Option<View<ChainAddr>>,
    ) -> MemberResponse {
        if request.key() != key.0.as_slice() {
            return MemberResponse::Error {
                code: ErrorCode::BadRequest,
                message: "the request's key is not the record's".into(),
            };
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Request {
            key,
            id,
            request,
            found,
            reply,
        };
        if self.tx.send(cmd).await.is_err() {
            return MemberResponse::Error {
                code: ErrorCode::Unavailable,
                message: "the node is shutting down".into(),
            };
        }
        match tokio::time::timeout(
            Duration::from_millis(config().request_timeout_ms + 1_000),
            rx,
        )
        .await
        {
            Ok(Ok(answer)) => MemberResponse::Chain(answer),
            _ => MemberResponse::Chain(ChainAnswer::Reply(Reply::Unavailable(Unavailable::Retry))),
        }
    }

    /// The newest version of `key` this member holds ([`MemberRequest::ChainLocal`]).
    pub async fn local(&self, key: BlockKey) -> MemberResponse {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Local(key, tx)).await.is_err() {
            return MemberResponse::Error {
                code: ErrorCode::Unavailable,
                message: "the node is shutting down".into(),
            };
        }
        MemberResponse::Chain(match rx.await.ok().flatten() {
            Some((version, value)) => ChainAnswer::Reply(Reply::Value { version, value }),
            None => ChainAnswer::Unknown,
        })
    }

    /// The newest copy of the record any member of its replica set holds, committed or not,
    /// asked without the chain's lease: for reading a root when the chain cannot serve (it
    /// lost the majority of its members). Not linearizable; the reader verifies the record's
    /// signature and its own watermark. `None`: no member holds a copy.
    pub async fn newest_copy(&self, key: BlockKey) -> Result<Option<(u64, Vec<u8>)>, RingError> {
        let set = self.members(&key).await?;
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut answered = 0;
        for to in &set {
            match self.ring.call(to, MemberRequest::ChainLocal { key }).await {
                Ok(MemberResponse::Chain(ChainAnswer::Reply(Reply::Value { version, value }))) => {
                    answered += 1;
                    let newer = best.as_ref().is_none_or(|(v, _)| version > *v);
                    if newer && check_record(&key, &value, None).is_ok() {
                        best = Some((version, value));
                    }
                }
                Ok(_) => answered += 1,
                Err(_) => {}
            }
        }
        if answered == 0 {
            return Err(RingError::unavailable(
                "no member of the record's replica set answered",
            ));
        }
        Ok(best)
    }

    /// What each replica of this node is.
    pub async fn report(&self) -> Vec<ChainReport> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Report(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The record's replica set as this node sees it, remembering the members' addresses.
    /// Probes the members of every chain whose view change is due; a chain of which fewer
    /// than a majority answer (this node included) for `after` is re-founded. `Err`: the
    /// chain task is gone.
    async fn check_stalls(
        &self,
        stalled: &mut HashMap<BlockKey, Instant>,
        after: Duration,
    ) -> Result<(), ()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Pending(tx)).await.map_err(|_| ())?;
        let pending = rx.await.map_err(|_| ())?;
        let keys: HashSet<BlockKey> = pending.iter().map(|(k, _)| *k).collect();
        stalled.retain(|k, _| keys.contains(k));
        for (key, view) in pending.into_iter().take(MAX_STALL_PROBES) {
            let others: Vec<PeerId> = view
                .members
                .iter()
                .copied()
                .filter(|m| *m != self.me)
                .collect();
            let probes = others.iter().map(|peer| {
                let addr = self.addr_of(peer, &[]);
                async move {
                    let Some(addr) = addr else { return false };
                    let req = MemberRequest::ChainLocal { key };
                    matches!(
                        tokio::time::timeout(PROBE_TIMEOUT, self.ring.call(&addr, req)).await,
                        Ok(Ok(MemberResponse::Chain(_)))
                    )
                }
            });
            let answered = futures::future::join_all(probes)
                .await
                .into_iter()
                .filter(|a| *a)
                .count();
            if 1 + answered > view.members.len() / 2 {
                stalled.remove(&key);
                continue;
            }
            let since = *stalled.entry(key).or_insert_with(Instant::now);
            if since.elapsed() >= after {
                warn!(%key, epoch = view.epoch, members = view.members.len(), answered,
                    "a record's chain lost the majority of its members; re-founding it from this member");
                stalled.remove(&key);
                self.tx
                    .send(Cmd::Refound {
                        key,
                        epoch: view.epoch,
                    })
                    .await
                    .map_err(|_| ())?;
            }
        }
        Ok(())
    }

    async fn members(&self, key: &BlockKey) -> Result<Vec<NodeAddr>, RingError> {
        let set = self.ring.replica_set(key).await?;
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        for a in &set {
            book.insert(a.peer, a.clone());
        }
        Ok(set)
    }

    fn addr_of(&self, peer: &PeerId, set: &[NodeAddr]) -> Option<NodeAddr> {
        if let Some(a) = set.iter().find(|a| &a.peer == peer) {
            return Some(a.clone());
        }
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        book.get(peer).cloned()
    }

    async fn ask(
        &self,
        to: &NodeAddr,
        key: BlockKey,
        id: ReqId,
        request: Request,
        found: Option<View<ChainAddr>>,
    ) -> Result<ChainAnswer, RingError> {
        let req = MemberRequest::ChainRequest {
            key,
            id,
            request,
            found,
        };
        match self.ring.call(to, req).await? {
            MemberResponse::Chain(a) => Ok(a),
            other => Err(RingError::unexpected(&other)),
        }
    }

    /// Reads the record linearizably: its committed version (0: absent), the record, and the
    /// chain as the answering member knows it.
    pub async fn read(
        &self,
        key: BlockKey,
        from: ReadFrom,
    ) -> Result<(u64, Option<Vec<u8>>, Vec<PeerId>), RingError> {
        self.read_within(key, from, CLIENT_DEADLINE).await
    }

    /// [`Chains::read`], giving up after `patience`.
    pub async fn read_within(
        &self,
        key: BlockKey,
        from: ReadFrom,
        patience: Duration,
    ) -> Result<(u64, Option<Vec<u8>>, Vec<PeerId>), RingError> {
        let deadline = Instant::now() + patience;
        let mut last = String::from("no member answered");
        let mut backoff = Duration::from_millis(50);
        loop {
            let set = self.members(&key).await?;
            let mut order = set.clone();
            match from {
                ReadFrom::Any if !order.is_empty() => {
                    let start = rand::thread_rng().gen_range(0..order.len());
                    order.rotate_left(start);
                }
                ReadFrom::Any => {}
                ReadFrom::Tail => order.reverse(),
            }
            let mut unknown = 0;
            for to in &order {
                let id = fresh_id();
                let request = Request::Read {
                    key: key.0.to_vec(),
                };
                match self.ask(to, key, id, request, None).await {
                    Ok(ChainAnswer::Reply(Reply::Value { version, value })) => {
                        let chain = self.report_view(&key, to).await;
                        let record = (version > 0).then_some(value);
                        return Ok((version, record, chain));
                    }
                    Ok(ChainAnswer::Reply(Reply::Rejected(r))) => {
                        return Err(RingError::bad_request(format!(
                            "record read refused: {r:?}"
                        )))
                    }
                    Ok(ChainAnswer::Unknown) => unknown += 1,
                    Ok(ChainAnswer::Reply(other)) => last = format!("{to}: {other:?}"),
                    Err(e) => last = format!("{to}: {e}"),
                }
                if from == ReadFrom::Tail {
                    break;
                }
            }
            if unknown == set.len() && !set.is_empty() {
                return Ok((0, None, Vec::new()));
            }
            if Instant::now() + backoff > deadline {
                return Err(RingError::unavailable(format!(
                    "the record's chain did not answer a read: {last}"
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The chain's members as `at` reports them (best effort, for the client's information).
    async fn report_view(&self, key: &BlockKey, at: &NodeAddr) -> Vec<PeerId> {
        if at.peer == self.me {
            return self
                .report()
                .await
                .into_iter()
                .find(|r| &r.key == key)
                .map(|r| r.members)
                .unwrap_or_default();
        }
        Vec::new()
    }

    /// Compare-and-set: stores `record` as version `expected + 1` if the record is at
    /// `expected` (0: absent). A retry of `id` that took effect is answered with the version
    /// it created. The request goes to the head the chain names (any member that is not the
    /// head answers with the head it knows); a record no member of its replica set holds is
    /// created by the head of that set with the founding view.
    pub async fn cas(
        &self,
        key: BlockKey,
        expected: u64,
        record: Vec<u8>,
        id: ReqId,
    ) -> Result<CasOutcome, RingError> {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        let mut last = String::from("no member answered");
        let mut backoff = Duration::from_millis(50);
        let mut hint: Option<PeerId> = None;
        let request = Request::Cas {
            key: key.0.to_vec(),
            expected,
            value: record,
        };
        loop {
            let set = self.members(&key).await?;
            if set.is_empty() {
                return Err(RingError::unavailable(
                    "no ring member to write the record to",
                ));
            }
            let mut candidates: Vec<NodeAddr> = hint
                .take()
                .and_then(|h| self.addr_of(&h, &set))
                .into_iter()
                .collect();
            for a in &set {
                if !candidates.contains(a) {
                    candidates.push(a.clone());
                }
            }
            let mut unknown = 0;
            for to in &candidates {
                match self.ask(to, key, id, request.clone(), None).await {
                    Ok(ChainAnswer::Reply(reply)) => match cas_outcome(reply) {
                        Ok(Some(done)) => return done,
                        Ok(None) => unreachable_reply(&mut last, to),
                        Err(Redirect::To(head)) if head != to.peer => {
                            last = format!("{to}: not the head");
                            hint = Some(head);
                            break;
                        }
                        Err(Redirect::To(_)) => last = format!("{to}: names itself head"),
                        Err(Redirect::Wait(why)) => {
                            last = format!("{to}: {why}");
                            break;
                        }
                        Err(Redirect::Next(why)) => last = format!("{to}: {why}"),
                    },
                    Ok(ChainAnswer::Unknown) => {
                        if set.contains(to) {
                            unknown += 1;
                        }
                    }
                    Err(e) => last = format!("{to}: {e}"),
                }
            }
            if unknown == set.len() {
                if expected != 0 {
                    return Ok(CasOutcome::Changed {
                        version: 0,
                        record: None,
                    });
                }
                // Nobody holds it: the head of its replica set creates it.
                let view = View::new(1, set.iter().map(|a| a.peer).collect());
                let first = &set[0];
                match self.ask(first, key, id, request.clone(), Some(view)).await {
                    Ok(ChainAnswer::Reply(reply)) => match cas_outcome(reply) {
                        Ok(Some(done)) => return done,
                        Ok(None) => unreachable_reply(&mut last, first),
                        Err(Redirect::To(h)) => hint = Some(h),
                        Err(Redirect::Wait(why) | Redirect::Next(why)) => {
                            last = format!("{first} (founding): {why}")
                        }
                    },
                    Ok(ChainAnswer::Unknown) => last = format!("{first} did not found the chain"),
                    Err(e) => last = format!("{first} (founding): {e}"),
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(RingError::unavailable(format!(
                    "the record's chain did not take the write: {last}"
                )));
            }
            if hint.is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }

    /// Stores a signed record whose sequence number must exceed the current one's (the
    /// client protocol's `PutRecord`): a read, then a compare-and-set, repeated if the record
    /// changed meanwhile. Returns the chain's length.
    pub async fn put_newer(&self, key: BlockKey, record: Vec<u8>) -> Result<u32, RingError> {
        check_record(&key, &record, None).map_err(|e| RingError::new(ErrorCode::Rejected, e))?;
        let id = fresh_id();
        for _ in 0..8 {
            let (version, current, _) = self.read(key, ReadFrom::Any).await?;
            if let Some(cur) = &current {
                if cur == &record {
                    return Ok(1);
                }
                check_record(&key, &record, Some(cur))
                    .map_err(|e| RingError::new(ErrorCode::Rejected, e))?;
            }
            match self.cas(key, version, record.clone(), id).await? {
                CasOutcome::Stored { .. } => {
                    let n = self.members(&key).await.map(|s| s.len()).unwrap_or(1);
                    return Ok(n as u32);
                }
                CasOutcome::Changed { .. } => continue,
            }
        }
        Err(RingError::unavailable(
            "the record kept changing while it was written; retry",
        ))
    }
}

/// Where a compare-and-set goes next when a member did not decide it.
enum Redirect {
    /// To the head this member names.
    To(PeerId),
    /// Nowhere for now: wait and retry (the head is busy or the chain is changing).
    Wait(String),
    /// To the next member.
    Next(String),
}

/// A member's reply to a compare-and-set: the outcome (`Ok(Some)`), or where to go next.
fn cas_outcome(reply: Reply<PeerId>) -> Result<Option<Result<CasOutcome, RingError>>, Redirect> {
    match reply {
        Reply::Ok { version } => Ok(Some(Ok(CasOutcome::Stored { version }))),
        Reply::Conflict {
            current_version,
            current_value,
        } => Ok(Some(Ok(CasOutcome::Changed {
            version: current_version,
            record: (current_version > 0).then_some(current_value),
        }))),
        Reply::Rejected(chain::Rejected::Invalid(why)) => {
            Ok(Some(Err(RingError::new(ErrorCode::Rejected, why))))
        }
        Reply::Rejected(r) => Ok(Some(Err(RingError::bad_request(format!(
            "record refused: {r:?}"
        ))))),
        Reply::NotHead { head: Some(h) } => Err(Redirect::To(h)),
        Reply::NotHead { head: None } => Err(Redirect::Next("knows no head".into())),
        Reply::Unavailable(u @ (Unavailable::NotMember | Unavailable::NoView)) => {
            Err(Redirect::Next(format!("{u:?}")))
        }
        Reply::Unavailable(u) => Err(Redirect::Wait(format!("{u:?}"))),
        Reply::Value { .. } => Ok(None),
    }
}

fn unreachable_reply(last: &mut String, to: &NodeAddr) {
    *last = format!("{to}: answered a write with a read's value");
}

/// A request id for a request nobody retries under the same id (reads, probes).
fn fresh_id() -> ReqId {
    let mut rng = rand::thread_rng();
    ReqId {
        client: rng.gen(),
        seq: rng.gen_range(1..u64::MAX / 2),
    }
}

/// Hands every replica its key's replica set, every [`SUGGEST_EVERY`]; and re-founds the
/// chains that stayed without a majority for too long.
async fn suggest_loop(chains: std::sync::Weak<Chains>) {
    // Since when each pending chain has been found without a majority.
    let mut stalled: HashMap<BlockKey, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(SUGGEST_EVERY).await;
        let Some(chains) = chains.upgrade() else {
            return;
        };
        if let Some(after) = chains.refound_after {
            if chains.check_stalls(&mut stalled, after).await.is_err() {
                return;
            }
        }
        let (tx, rx) = oneshot::channel();
        if chains.tx.send(Cmd::Keys(tx)).await.is_err() {
            return;
        }
        let Ok(keys) = rx.await else { return };
        for key in keys {
            let Ok(set) = chains.members(&key).await else {
                continue;
            };
            let members = set.iter().map(|a| a.peer).collect();
            if chains.tx.send(Cmd::Suggest { key, members }).await.is_err() {
                return;
            }
        }
    }
}

/// One replica and what the driver keeps beside it.
struct Slot {
    replica: Replica<PeerId, RecordRules>,
    /// The image on disk (after the last successful write).
    disk: Disk<PeerId>,
    suggested: Option<Vec<PeerId>>,
    /// Since when (task ms) the replica has been outside its view.
    outside_since: Option<u64>,
}

struct Task {
    me: PeerId,
    cfg: Config,
    started: Instant,
    slots: HashMap<BlockKey, Slot>,
    waiting: HashMap<(BlockKey, ReqId), Vec<oneshot::Sender<ChainAnswer>>>,
    outbox: Vec<(PeerId, ChainItem)>,
    store: Arc<BlockStore>,
    ring: Arc<Ring>,
    book: Arc<Mutex<HashMap<PeerId, NodeAddr>>>,
    /// Every slot's replica timer.
    timers: Timers,
}

/// Every slot's replica timer (the only place it is kept), ordered by when it is due: the
/// task sleeps until the first one instead of polling every slot (a node may hold tens of
/// thousands of chains). At most one timer per key: [`Timers::set`] replaces it.
#[derive(Default)]
struct Timers {
    order: BTreeSet<(u64, BlockKey)>,
    at: HashMap<BlockKey, u64>,
}

impl Timers {
    /// Sets (or clears, with `None`) the timer of `key`.
    fn set(&mut self, key: BlockKey, at: Option<u64>) {
        if let Some(old) = self.at.remove(&key) {
            self.order.remove(&(old, key));
        }
        if let Some(t) = at {
            self.at.insert(key, t);
            self.order.insert((t, key));
        }
    }

    /// When the timer of `key` is due, if it is set.
    #[cfg(test)]
    fn get(&self, key: &BlockKey) -> Option<u64> {
        self.at.get(key).copied()
    }

    /// When the first timer is due (task ms), if any.
    fn first(&self) -> Option<u64> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Takes out (clears) the timers due at `now`, earliest first.
    fn pop_due(&mut self, now: u64) -> Vec<BlockKey> {
        let mut due = Vec::new();
        while let Some(&(t, key)) = self.order.first() {
            if t > now {
                break;
            }
            self.order.pop_first();
            self.at.remove(&key);
            due.push(key);
        }
        due
    }
}

impl Task {
    /// Inserts a new slot (replacing any of `key`); its replica is due at once.
    fn insert_slot(&mut self, key: BlockKey, slot: Slot) {
        self.slots.insert(key, slot);
        self.timers.set(key, Some(0));
    }

    /// Removes a slot and its timer.
    fn remove_slot(&mut self, key: &BlockKey) -> Option<Slot> {
        self.timers.set(*key, None);
        self.slots.remove(key)
    }

    fn now(&self) -> u64 {
        // Never 0: the replicas treat times as "since the start", any positive start works.
        self.started.elapsed().as_millis() as u64 + 1
    }

    fn new_slot(&self, start: Start<PeerId>, disk: Disk<PeerId>) -> Slot {
        Slot {
            replica: Replica::with_validator(self.me, self.cfg.clone(), start, RecordRules),
            disk,
            suggested: None,
            outside_since: None,
        }
    }

    fn recover(&mut self, key: BlockKey, image: Recovered<PeerId>) {
        let mut disk = Disk {
            meta: Some(image.meta.clone()),
            ..Default::default()
        };
        for r in &image.records {
            disk.records.insert(r.key.clone(), r.clone());
        }
        let slot = self.new_slot(Start::Recover(Box::new(image)), disk);
        self.insert_slot(key, slot);
    }

    /// Re-founds the chain of `key` from this replica alone, if it is still synced in view
    /// `epoch`: its image gets the one-member view `epoch + REFOUND_EPOCHS`, an empty acceptor
    /// state, and every version it holds committed (a version a member holds was sent by the
    /// head in order; the lost members may have committed it, so it must not be dropped). The
    /// image is stored, the replica restarts from it, and the next suggestion brings the key's
    /// replica set in through the usual agreement (a majority of the one-member view: this
    /// member).
    ///
    /// What this gives up: if the lost members were alive behind a partition rather than
    /// gone, and come back, they may serve their old view's committed value until they learn
    /// the higher epoch, and writes they took meanwhile are dropped. Hence the long default
    /// delay; clients' watermarks refuse a rolled-back root.
    async fn refound(&mut self, key: BlockKey, epoch: u64) {
        let me = self.me;
        let Some(slot) = self.slots.get(&key) else {
            return;
        };
        let mut image = slot.disk.recovered();
        let Some(view) = image.meta.view.clone() else {
            return;
        };
        if view.epoch != epoch
            || slot.replica.epoch() != epoch
            || !image.meta.synced
            || !view.members.contains(&me)
        {
            return;
        }
        image.meta.view = Some(View {
            epoch: epoch.saturating_add(REFOUND_EPOCHS),
            members: vec![me],
        });
        image.meta.promised = None;
        image.meta.accepted = None;
        for r in &mut image.records {
            if let Some(last) = r.versions.pop() {
                r.clean = last.version;
                r.versions = vec![last];
            }
        }
        let store = self.store.clone();
        let saved = match postcard::to_allocvec(&image) {
            Ok(bytes) => blocking(move || store.record_put(CHAIN_TABLE, &key.0, &bytes)).await,
            Err(e) => Err(RingError::internal(format!("chain state: {e}"))),
        };
        if let Err(e) = saved {
            warn!(%key, error = %e.message, "cannot store a re-founded chain's state; not re-founded");
            return;
        }
        warn!(%key, old_epoch = epoch, epoch = epoch.saturating_add(REFOUND_EPOCHS),
            "record chain re-founded from this member alone");
        self.waiting.retain(|(k, _), _| *k != key);
        self.recover(key, image);
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut outside = tokio::time::interval(OUTSIDE_CHECK);
        outside.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Task time t is due once now() = elapsed ms + 1 reaches it.
            let due = self.timers.first().map(|t| {
                tokio::time::Instant::from_std(self.started)
                    + Duration::from_millis(t.saturating_sub(1))
            });
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => return,
                },
                () = sleep_until_some(due) => self.on_timers().await,
                _ = outside.tick() => self.drop_outside().await,
            }
            self.flush();
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request {
                key,
                id,
                request,
                found,
                reply,
            } => {
                if !self.slots.contains_key(&key) {
                    let founding = matches!(request, Request::Cas { expected: 0, .. })
                        && found.as_ref().is_some_and(|v| {
                            v.epoch == 1
                                && v.is_well_formed()
                                && v.members.first() == Some(&self.me)
                        });
                    let Some(view) = found.filter(|_| founding) else {
                        let _ = reply.send(ChainAnswer::Unknown);
                        return;
                    };
                    if self.slots.len() >= MAX_CHAINS {
                        let _ =
                            reply.send(ChainAnswer::Reply(Reply::Unavailable(Unavailable::Full)));
                        return;
                    }
                    info!(%key, members = view.members.len(), "creating the chain of a new record");
                    let slot = self.new_slot(Start::Bootstrap, Disk::default());
                    self.insert_slot(key, slot);
                    for m in view.members.iter().filter(|m| **m != self.me) {
                        self.outbox.push((
                            *m,
                            ChainItem::Found {
                                key,
                                view: view.clone(),
                            },
                        ));
                    }
                    self.step(key, Event::View(view)).await;
                }
                self.waiting.entry((key, id)).or_default().push(reply);
                let me = self.me;
                self.step(
                    key,
                    Event::Request {
                        from: me,
                        id,
                        req: request,
                    },
                )
                .await;
            }
            Cmd::Items { from, items } => {
                for item in items {
                    self.on_item(from, item).await;
                }
            }
            Cmd::Suggest { key, members } => {
                let Some(slot) = self.slots.get_mut(&key) else {
                    return;
                };
                if slot.suggested.as_ref() == Some(&members) {
                    return;
                }
                slot.suggested = Some(members.clone());
                self.step(
                    key,
                    Event::Suggest {
                        members,
                        suspected: Vec::new(),
                    },
                )
                .await;
            }
            Cmd::Local(key, tx) => {
                let held = self.slots.get(&key).and_then(|s| {
                    let info = s.replica.record(&key.0)?;
                    let value = s.replica.value_of(&key.0, info.newest)?;
                    Some((info.newest, value))
                });
                let _ = tx.send(held.filter(|(v, _)| *v > 0));
            }
            Cmd::Keys(tx) => {
                let _ = tx.send(self.slots.keys().copied().collect());
            }
            Cmd::Pending(tx) => {
                let me = self.me;
                let pending = self
                    .slots
                    .iter()
                    .filter_map(|(key, s)| {
                        let view = s.replica.view()?;
                        let set: HashSet<&PeerId> = s.suggested.as_ref()?.iter().collect();
                        let synced = s.disk.meta.as_ref().is_some_and(|m| m.synced);
                        let differs = view.members.len() != set.len()
                            || view.members.iter().any(|m| !set.contains(m));
                        (synced && differs && view.members.contains(&me))
                            .then(|| (*key, view.clone()))
                    })
                    .collect();
                let _ = tx.send(pending);
            }
            Cmd::Refound { key, epoch } => self.refound(key, epoch).await,
            Cmd::Report(tx) => {
                let mut out: Vec<ChainReport> = self
                    .slots
                    .iter()
                    .map(|(key, s)| ChainReport {
                        key: *key,
                        epoch: s.replica.epoch(),
                        members: s
                            .replica
                            .view()
                            .map(|v| v.members.clone())
                            .unwrap_or_default(),
                        role: s.replica.role(),
                        version: s
                            .replica
                            .record(&key.0)
                            .map(|r| r.clean)
                            .unwrap_or_default(),
                    })
                    .collect();
                out.sort_by_key(|r| r.key);
                let _ = tx.send(out);
            }
        }
    }

    async fn on_item(&mut self, from: PeerId, item: ChainItem) {
        match item {
            ChainItem::Found { key, view } => {
                if self.slots.contains_key(&key)
                    || view.epoch != 1
                    || !view.is_well_formed()
                    || view.members.first() != Some(&from)
                    || !view.members.contains(&self.me)
                    || self.slots.len() >= MAX_CHAINS
                {
                    return;
                }
                debug!(%key, "founding member of a new record's chain");
                let slot = self.new_slot(Start::Bootstrap, Disk::default());
                self.insert_slot(key, slot);
                self.step(key, Event::View(view)).await;
            }
            ChainItem::Msg { key, msg } => {
                if !self.slots.contains_key(&key) {
                    // A chain this node is (or was) asked to be part of: join it; the replica
                    // asks the sender for the view and pulls the record if it is a member.
                    if self.slots.len() >= MAX_CHAINS {
                        return;
                    }
                    debug!(%key, %from, "joining a record's chain");
                    let slot = self.new_slot(Start::Join, Disk::default());
                    self.insert_slot(key, slot);
                }
                self.step(key, Event::Message { from, msg }).await;
            }
        }
    }

    /// Fires the replica timers that are due.
    async fn on_timers(&mut self) {
        for key in self.timers.pop_due(self.now()) {
            self.step(key, Event::Timer).await;
        }
    }

    /// Drops the replicas left outside their chain for long, with their image.
    async fn drop_outside(&mut self) {
        let now = self.now();
        let mut gone = Vec::new();
        for (key, s) in &mut self.slots {
            let outside = s.replica.role() == Role::Outside;
            match (outside, s.outside_since) {
                (true, None) => s.outside_since = Some(now),
                (true, Some(t)) if now.saturating_sub(t) > OUTSIDE_FOR_MS => gone.push(*key),
                (false, Some(_)) => s.outside_since = None,
                _ => {}
            }
        }
        for key in gone {
            info!(%key, "left a record's chain; its replica is dropped");
            self.remove_slot(&key);
            self.waiting.retain(|(k, _), _| *k != key);
            let store = self.store.clone();
            if let Err(e) = blocking(move || store.record_delete(CHAIN_TABLE, &key.0)).await {
                warn!(%key, error = %e.message, "cannot delete a dropped chain's state");
            }
        }
    }

    /// Feeds one event to the key's replica and carries out what it returns: its disk
    /// writes first (durably), then its messages and replies.
    async fn step(&mut self, key: BlockKey, event: Event<PeerId>) {
        let now = self.now();
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        let actions = slot.replica.handle(now, event);
        let before = slot.disk.clone();
        let mut wrote = false;
        for a in &actions {
            if let Action::Persist(d) = a {
                slot.disk.apply(d);
                wrote = true;
            }
        }
        if wrote {
            let store = self.store.clone();
            let saved = match postcard::to_allocvec(&slot.disk.recovered()) {
                Ok(bytes) => blocking(move || store.record_put(CHAIN_TABLE, &key.0, &bytes)).await,
                Err(e) => Err(RingError::internal(format!("chain state: {e}"))),
            };
            if let Err(e) = saved {
                // Nothing of this batch may leave: restart the replica from what is on disk.
                warn!(%key, error = %e.message, "cannot store a record chain's state; the replica restarts from disk");
                let Some(slot) = self.slots.get_mut(&key) else {
                    return;
                };
                let image = before.recovered();
                slot.replica = Replica::with_validator(
                    self.me,
                    self.cfg.clone(),
                    Start::Recover(Box::new(image)),
                    RecordRules,
                );
                slot.disk = before;
                self.timers.set(key, Some(0));
                return;
            }
        }
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        for a in actions {
            match a {
                Action::Persist(_) | Action::NewerEpoch { .. } => {}
                Action::Send { to, msg } => self.outbox.push((to, ChainItem::Msg { key, msg })),
                Action::Reply { id, reply, .. } => {
                    if let Some(ws) = self.waiting.remove(&(key, id)) {
                        for w in ws {
                            let _ = w.send(ChainAnswer::Reply(reply.clone()));
                        }
                    }
                }
                Action::SetTimer { at } => self.timers.set(key, Some(at)),
                Action::ViewInstalled(view) => {
                    info!(%key, epoch = view.epoch, members = view.members.len(),
                        role = ?slot.replica.role(), "record chain view installed");
                }
            }
        }
    }

    /// Sends what the replicas produced, one batch per member.
    fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let mut per: HashMap<PeerId, Vec<ChainItem>> = HashMap::new();
        for (to, item) in self.outbox.drain(..) {
            per.entry(to).or_default().push(item);
        }
        for (to, items) in per {
            if to == self.me {
                continue;
            }
            let addr = {
                let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
                book.get(&to).cloned()
            };
            let Some(addr) = addr else {
                debug!(%to, "no address for a chain member yet; the chain re-sends");
                continue;
            };
            for chunk in items.chunks(MAX_CHAIN_ITEMS) {
                let ring = self.ring.clone();
                let addr = addr.clone();
                let req = MemberRequest::Chain {
                    items: chunk.to_vec(),
                };
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, ring.call(&addr, req)).await;
                });
            }
        }
    }
}

/// A replica's role as `status` names it.
#[must_use]
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Outside => "outside",
        Role::CatchingUp => "catching-up",
        Role::Head => "head",
        Role::Middle => "middle",
        Role::Tail => "tail",
        Role::Single => "head-and-tail",
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> BlockKey {
        BlockKey([n; 32])
    }

    #[test]
    fn timers_keep_one_entry_per_slot_and_fire_in_order() {
        let mut timers = Timers::default();
        timers.set(key(1), Some(50));
        timers.set(key(2), Some(20));
        timers.set(key(3), Some(0));
        assert_eq!(timers.first(), Some(0));
        // Re-arming replaces the slot's entry; clearing removes it.
        timers.set(key(1), Some(10));
        timers.set(key(3), None);
        assert_eq!((timers.get(&key(1)), timers.get(&key(3))), (Some(10), None));
        assert_eq!(timers.order.len(), 2);
        assert_eq!(timers.first(), Some(10));
        // Only what is due comes out, earliest first; the rest waits.
        assert_eq!(timers.pop_due(9), Vec::<BlockKey>::new());
        assert_eq!(timers.pop_due(20), vec![key(1), key(2)]);
        assert_eq!(timers.first(), None);
        timers.set(key(2), Some(30));
        assert_eq!(timers.pop_due(u64::MAX), vec![key(2)]);
    }
}
