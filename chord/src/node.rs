//! The Chord state machine of one node (Zave's corrected protocol).
//!
//! Sans-I/O: the driver feeds inputs (`handle_message`, `handle_timeout`, ...) with the current
//! virtual time and drains outputs with [`Node::poll_action`]; [`Node::poll_timeout`] says when
//! to call [`Node::handle_timeout`] next. The rules of CHORD.md are cited by name: (Join),
//! (Stabilize), (Rectify), (Fingers), (Lookup), (Leave) in docs, `[Stabilize]` etc. in code
//! comments. (Merge) is this crate's addition: probes of lost members that merge rings split
//! by a partition (see the crate docs).

use crate::config::Config;
use crate::id::Id;
use crate::message::{Message, Peer};
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

/// Number of routing candidates a node returns in a `FindSuccessor` answer.
pub const CLOSER_CANDIDATES: usize = 8;
/// Most queries one lookup keeps out at once: a hop unanswered after a quarter of the rpc
/// timeout gets a parallel query to the next candidate, so a dead hop costs a fraction of the
/// timeout instead of all of it.
pub const ALPHA: usize = 3;
/// Upper bound on any list accepted from the network.
const MAX_LIST: usize = 1024;

/// Handle of a lookup started with [`Node::start_lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// The answer of a successful lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupResult<A> {
    /// The first live node clockwise at or after the key.
    pub owner: Peer<A>,
    /// The owner's successor list as the owner reported it: the replica set of size k is
    /// `owner` followed by the first k-1 of these.
    pub successors: Vec<Peer<A>>,
    /// Number of remote nodes that answered during the lookup (0 if we own the key).
    pub hops: u32,
}

/// Why a lookup failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The overall lookup timeout expired.
    #[error("lookup timed out")]
    Timeout,
    /// Every candidate failed or did not know a way on.
    #[error("no route to the key")]
    NoRoute,
    /// This node is not a ring member.
    #[error("this node is not a ring member")]
    NotMember,
    /// The lookup visited `lookup_max_hops` nodes.
    #[error("too many hops")]
    TooManyHops,
}

/// Key ranges this node is responsible for; both are half-open ring intervals `(a, b]`, and
/// `a == b` means the whole ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// Keys we own: `(pred, self]`.
    pub owned: (Id, Id),
    /// Keys for which we are in the replica set of size k: `(pred_{k-1}, self]`.
    pub replicated: (Id, Id),
}

/// Something the application must know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A> {
    /// `create` or `join` completed: we are a ring member.
    Joined,
    /// `join` failed; call `join` again (maybe through another member).
    JoinFailed {
        /// Human-readable cause.
        reason: String,
    },
    /// A lookup finished.
    LookupDone {
        /// Which lookup.
        lookup: LookupId,
        /// The key looked up.
        key: Id,
        /// The owner, or why there is none.
        result: Result<LookupResult<A>, LookupError>,
    },
    /// The core declared a peer dead (unanswered requests, or it said it is no member).
    PeerFailed {
        /// The dead peer.
        peer: Peer<A>,
    },
    /// Our owned or replicated range changed (for `Config::replication`).
    RangesChanged {
        /// The new ranges.
        ranges: Ranges,
    },
    /// Graceful leave finished; the driver may hand its data to the successor and exit.
    Left,
    /// (Merge) A member we had lost answered again and a lookup through it found a successor
    /// closer than ours (or one at all, if we were alone): the rings split by a partition are
    /// being merged. The successor is adopted once it answers, as in stabilize.
    MergeFound {
        /// The lost member that answered the probe.
        via: Peer<A>,
        /// The successor found through it.
        successor: Peer<A>,
    },
}

/// An output of the state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<A> {
    /// Send `msg` to `to`.
    Send {
        /// Destination address.
        to: A,
        /// The message.
        msg: Message<A>,
    },
    /// Tell the application.
    Event(Event<A>),
}

/// Life-cycle state of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Created, neither `create` nor `join` called (or a join failed).
    Idle,
    /// `join` in progress.
    Joining,
    /// Ring member.
    Member,
    /// `leave` in progress; still answers as a member.
    Leaving,
    /// Left the ring.
    Left,
}

/// A snapshot of a node's state for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot<A> {
    /// This node.
    pub me: Peer<A>,
    /// Life-cycle state.
    pub status: Status,
    /// Predecessor list (`[0]` is the predecessor).
    pub predecessors: Vec<Peer<A>>,
    /// Successor list.
    pub successors: Vec<Peer<A>>,
    /// Distinct finger entries, in finger order.
    pub fingers: Vec<Peer<A>>,
    /// Requests awaiting an answer.
    pub outstanding_requests: usize,
    /// Lookups in progress.
    pub lookups_in_progress: usize,
}

#[derive(Clone, Debug)]
enum Purpose<A> {
    /// (Stabilize) GetState to succ0.
    StabGet { succ: Peer<A> },
    /// (Stabilize) GetState to succ0.pred before adopting it; `base` is the list to use if it
    /// turns out dead.
    StabVerify {
        cand: Peer<A>,
        rest: Vec<Peer<A>>,
        base: Vec<Peer<A>>,
    },
    /// (Stabilize) the final notify.
    Notify,
    /// (Rectify) liveness check of the current predecessor.
    RectifyPing { pred: Peer<A> },
    /// (Lookup) one hop.
    /// `persistent`: retried like maintenance requests (a second ask of an owner candidate).
    Hop { lookup: u64, persistent: bool },
    /// (Leave) splice message.
    Leave,
    /// (Merge) `FindSuccessor(me + 1)` to a member we lost: is it back, and where would we be
    /// in its ring?
    MergeProbe { peer: Peer<A> },
}

#[derive(Clone, Debug)]
struct Outstanding<A> {
    to: A,
    msg: Message<A>,
    attempts: u32,
    deadline: Time,
    retry: bool,
    purpose: Purpose<A>,
}

#[derive(Clone, Debug)]
enum LookupKind {
    User(LookupId),
    Join,
    Finger(usize),
    /// Finger 0 = successor(me + 1), looked up from a far finger: a check of succ0 through
    /// the rest of the ring, which finds nodes that stabilize alone would reach only slowly
    /// (interleaved chains after many simultaneous joins).
    SuccCheck,
    /// (Merge) successor(me + 1) looked up through a lost member that answered a probe
    /// (`Node::merging` names it).
    Merge,
}

#[derive(Clone, Debug)]
enum Cand<A> {
    /// Ask for routing information.
    Route(A),
    /// `peer` is, as far as the node with id `anchor` knows, the first node after it at or
    /// past the key: ask it, and if it knows a closer predecessor of the key, try that first.
    Owner { peer: Peer<A>, anchor: Id },
    /// A node that already answered (at `at`, as an owner candidate named by `anchor`) and is
    /// the owner unless something tried before is.
    Accept {
        owner: Peer<A>,
        successors: Vec<Peer<A>>,
        pred: Option<Peer<A>>,
        anchor: Id,
        at: Time,
    },
}

impl<A> Cand<A> {
    fn addr(&self) -> &A {
        match self {
            Cand::Route(a) => a,
            Cand::Owner { peer, .. } => &peer.addr,
            Cand::Accept { owner, .. } => &owner.addr,
        }
    }
}

#[derive(Clone, Debug)]
struct Lookup<A> {
    kind: LookupKind,
    key: Id,
    deadline: Time,
    hops: u32,
    queue: VecDeque<Cand<A>>,
    tried: BTreeSet<A>,
    /// Nodes that answered.
    answered: BTreeSet<A>,
    /// Owner candidates asked a second time because a later node named them as its
    /// predecessor while their first answer was missing (lost or slow, not necessarily dead).
    requeried: BTreeSet<A>,
    /// Queries awaiting an answer: (request, candidate, sent at). More than one only after a
    /// query stayed unanswered for a quarter of the rpc timeout (see `ALPHA`).
    inflight: Vec<(u64, Cand<A>, Time)>,
}

/// What a node answered (or what we know locally), as used by the lookup logic.
#[derive(Clone, Debug)]
struct InfoView<A> {
    member: bool,
    id: Id,
    pred: Option<Peer<A>>,
    successors: Vec<Peer<A>>,
    closer: Vec<Peer<A>>,
}

impl<A> InfoView<A> {
    /// A peer's `Info` answer, its lists cut to [`MAX_LIST`] (a peer may send longer ones).
    fn bounded(
        member: bool,
        id: Id,
        pred: Option<Peer<A>>,
        successors: Vec<Peer<A>>,
        closer: Vec<Peer<A>>,
    ) -> Self {
        InfoView {
            member,
            id,
            pred,
            successors: successors.into_iter().take(MAX_LIST).collect(),
            closer: closer.into_iter().take(MAX_LIST).collect(),
        }
    }
}

enum Step<A> {
    Continue,
    Done {
        owner: Peer<A>,
        successors: Vec<Peer<A>>,
        pred: Option<Peer<A>>,
    },
    Fail(LookupError),
}

/// One Chord node. `A` is the transport address (a libp2p `PeerId` in the daemon, `u32` in the
/// simulator).
#[derive(Clone, Debug)]
pub struct Node<A: Clone + Ord + Debug> {
    config: Config,
    me: Peer<A>,
    status: Status,
    now: Time,
    /// Successor list, clockwise; never contains `me`. Empty for a member means "alone".
    succs: Vec<Peer<A>>,
    /// Predecessor list, counter-clockwise; `preds[0]` is the predecessor.
    preds: Vec<Peer<A>>,
    fingers: Vec<Option<Peer<A>>>,
    /// The distinct finger entries, highest finger first (what routing iterates).
    finger_set: Vec<Peer<A>>,
    next_finger: usize,
    maintenance: bool,
    next_stabilize: Time,
    next_fix: Time,
    stabilizing: bool,
    fixing: bool,
    outstanding: BTreeMap<u64, Outstanding<A>>,
    deadlines: BTreeSet<(Time, u64)>,
    lookups: BTreeMap<u64, Lookup<A>>,
    lookup_deadlines: BTreeSet<(Time, u64)>,
    lookup_soft: BTreeSet<(Time, u64)>,
    next_req: u64,
    next_lookup: u64,
    actions: VecDeque<Action<A>>,
    last_ranges: Option<Ranges>,
    /// Unanswered-attempt counters of peers (reset by any message from them).
    failures: BTreeMap<A, u32>,
    /// Peers declared dead, remembered until the given time so stale lists do not bring them
    /// back at once.
    dead: BTreeMap<A, Time>,
    rectify_ping: Option<u64>,
    rectify_cand: Option<(Peer<A>, Vec<Peer<A>>)>,
    leave_pending: usize,
    /// Recent notifiers (bounded, evenly spread, expiring): candidates we tell stabilizing
    /// predecessors about.
    notifiers: BTreeMap<Id, (Peer<A>, Time)>,
    /// (Merge) Members we lost (declared dead while in our successor, predecessor or finger
    /// tables) or were told about ([`Node::remember`]): probed with back-off, so that rings
    /// split by a partition find each other again once it heals. Bounded by [`LOST_CAPACITY`].
    lost: BTreeMap<A, Lost<A>>,
    /// (Merge) When the next probe may start (one per stabilize period at most).
    next_merge: Time,
    /// (Merge) The lost member whose probe (or the lookup through it) is in progress: one at
    /// a time.
    merging: Option<Peer<A>>,
    /// (Merge) A closer successor found while stabilize was busy: verified at the next tick.
    merge_cand: Option<Peer<A>>,
}

/// Capacity of the recent-notifier cache.
const NOTIFIER_CACHE: usize = 32;

/// (Merge) Most lost members remembered; when full, the one that failed most probes (then the
/// farthest from us) is forgotten.
pub const LOST_CAPACITY: usize = 32;
/// (Merge) A lost member is first probed this many stabilize periods after it was lost.
const MERGE_FIRST_PERIODS: u32 = 2;
/// (Merge) Each unanswered probe doubles the wait before the next one, up to this many
/// periods: a member that stays dead costs one small request per this many periods.
pub const MERGE_MAX_BACKOFF_PERIODS: u32 = 64;
/// (Merge) A lost member is forgotten after this many periods, but only while our successor
/// list is full: a node alone or in a ring smaller than r keeps looking for the ring it was in.
const LOST_FORGET_PERIODS: u32 = 4096;

/// (Merge) A member we lost, and when to probe it next.
#[derive(Clone, Debug)]
struct Lost<A> {
    peer: Peer<A>,
    /// When it was lost (or handed to us).
    since: Time,
    /// When it may be probed next.
    due: Time,
    /// Current wait between probes, in stabilize periods.
    backoff: u32,
}

impl<A: Clone + Ord + Debug> Node<A> {
    /// A node that is not yet a member. The config should have passed
    /// [`Config::validate`]; out-of-range values are clamped so the node cannot misbehave.
    pub fn new(mut config: Config, me: Peer<A>) -> Self {
        config.successors = config.successors.clamp(1, MAX_LIST);
        config.predecessors = config.predecessors.clamp(1, MAX_LIST);
        config.replication = config.replication.max(1);
        config.lookup_max_hops = config.lookup_max_hops.max(1);
        Node {
            config,
            me,
            status: Status::Idle,
            now: Time(0),
            succs: Vec::new(),
            preds: Vec::new(),
            fingers: vec![None; 256],
            finger_set: Vec::new(),
            next_finger: 0,
            maintenance: true,
            next_stabilize: Time(0),
            next_fix: Time(0),
            stabilizing: false,
            fixing: false,
            outstanding: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            lookups: BTreeMap::new(),
            lookup_deadlines: BTreeSet::new(),
            lookup_soft: BTreeSet::new(),
            next_req: 1,
            next_lookup: 1,
            actions: VecDeque::new(),
            last_ranges: None,
            failures: BTreeMap::new(),
            dead: BTreeMap::new(),
            rectify_ping: None,
            rectify_cand: None,
            leave_pending: 0,
            notifiers: BTreeMap::new(),
            lost: BTreeMap::new(),
            next_merge: Time(0),
            merging: None,
            merge_cand: None,
        }
    }

    // ------------------------------------------------------------------ public inputs

    /// Starts a new ring with this node alone in it. Emits `Joined`.
    pub fn create(&mut self, now: Time) {
        self.now = now;
        if self.status != Status::Idle {
            return;
        }
        self.status = Status::Member;
        self.succs.clear();
        self.preds.clear();
        self.schedule_maintenance(now);
        self.event(Event::Joined);
        self.check_ranges();
    }

    /// (Join) Joins the ring through any member at `bootstrap`: looks up the owner o of our own
    /// id, which answers (so it is alive), and takes `[o] ++ o.successors` as successor list.
    /// Ends with `Joined` or `JoinFailed`.
    pub fn join(&mut self, now: Time, bootstrap: A) {
        self.now = now;
        if self.status != Status::Idle {
            self.event(Event::JoinFailed {
                reason: format!("cannot join in state {:?}", self.status),
            });
            return;
        }
        if bootstrap == self.me.addr {
            self.event(Event::JoinFailed {
                reason: "cannot join through ourselves".into(),
            });
            return;
        }
        self.status = Status::Joining;
        let key = self.me.id;
        self.begin_lookup(LookupKind::Join, key, vec![Cand::Route(bootstrap)]);
    }

    /// (Leave) Leaves gracefully: tells predecessor and successor so they splice themselves
    /// together, then emits `Left`. The driver should then hand its keys to the successor.
    pub fn leave(&mut self, now: Time) {
        self.now = now;
        match self.status {
            Status::Member => {}
            Status::Leaving | Status::Left => return,
            Status::Idle | Status::Joining => {
                self.finish_leave();
                return;
            }
        }
        self.status = Status::Leaving;
        let mut targets: Vec<A> = Vec::new();
        if let Some(p) = self.preds.first() {
            targets.push(p.addr.clone());
        }
        if let Some(s) = self.succs.first() {
            if !targets.contains(&s.addr) {
                targets.push(s.addr.clone());
            }
        }
        let mut msgs: Vec<(A, u64, Message<A>)> = Vec::new();
        for to in targets {
            let req = self.next_req;
            self.next_req += 1;
            let msg = Message::Leave {
                req,
                node: self.me.clone(),
                preds: self.preds.clone(),
                successors: self.succs.clone(),
            };
            msgs.push((to, req, msg));
        }
        self.leave_pending = msgs.len();
        if msgs.is_empty() {
            self.finish_leave();
            return;
        }
        for (to, req, msg) in msgs {
            self.send_request_with(req, to, msg, Purpose::Leave, false);
        }
    }

    /// Feeds one received message. Lists in it longer than an honest peer sends (successor and
    /// predecessor lists beyond the configured lengths, routing candidates beyond
    /// [`CLOSER_CANDIDATES`]) are cut before anything looks at them, so nothing a peer sends
    /// makes the node hold more than its own configuration says.
    pub fn handle_message(&mut self, now: Time, from: A, mut msg: Message<A>) {
        self.bound_lists(&mut msg);
        self.now = now;
        // Any message proves the sender alive.
        self.failures.remove(&from);
        self.dead.remove(&from);
        if let Some(l) = self.lost.get_mut(&from) {
            // (Merge) A member we lost is back (it may be probing us): probe it soon.
            l.due = l.due.min(now);
        }
        match msg {
            Message::FindSuccessor { req, key } => {
                let reply = self.info(req, Some(key));
                self.send(from, reply);
            }
            Message::GetState { req, asker } => {
                let mut reply = self.info(req, None);
                if let Message::Info { closer, member, .. } = &mut reply {
                    if *member {
                        *closer = self.closer_after(asker, CLOSER_CANDIDATES);
                    }
                }
                self.send(from, reply);
            }
            Message::Notify { req, node, preds } => {
                if node.addr == from && node.id != self.me.id && self.is_member() {
                    self.rectify(node, preds);
                }
                self.send(from, Message::Ack { req });
            }
            Message::Ping { req } => {
                let member = self.is_member();
                self.send(from, Message::Pong { req, member });
            }
            Message::Leave {
                req,
                node,
                preds,
                successors,
            } => {
                if node.addr == from && node.id != self.me.id && self.is_member() {
                    self.on_leave(node, preds, successors);
                }
                self.send(from, Message::Ack { req });
            }
            resp @ (Message::Info { .. } | Message::Ack { .. } | Message::Pong { .. }) => {
                self.on_response(from, resp);
            }
        }
        self.check_ranges();
    }

    /// Cuts the lists of a received message to what an honest peer sends.
    fn bound_lists(&self, msg: &mut Message<A>) {
        fn cap<T>(v: &mut Vec<T>, n: usize) {
            if v.len() > n {
                v.truncate(n);
                v.shrink_to_fit();
            }
        }
        let (succs, preds) = (self.config.successors, self.config.predecessors);
        match msg {
            Message::Notify { preds: p, .. } => cap(p, preds),
            Message::Leave {
                preds: p,
                successors,
                ..
            } => {
                cap(p, preds);
                cap(successors, succs);
            }
            Message::Info {
                successors, closer, ..
            } => {
                cap(successors, succs);
                cap(closer, CLOSER_CANDIDATES);
            }
            Message::FindSuccessor { .. }
            | Message::GetState { .. }
            | Message::Ping { .. }
            | Message::Ack { .. }
            | Message::Pong { .. } => {}
        }
    }

    /// Advances timers: request timeouts and retries, lookup deadlines, stabilize and
    /// fix_fingers ticks.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        // Request deadlines.
        while let Some(&(t, req)) = self.deadlines.iter().next() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, req));
            self.request_unanswered(req);
        }
        // Lookup deadlines.
        while let Some(&(t, lid)) = self.lookup_deadlines.iter().next() {
            if t > now {
                break;
            }
            self.lookup_deadlines.remove(&(t, lid));
            if let Some(lk) = self.lookups.remove(&lid) {
                for (req, _, _) in &lk.inflight {
                    self.cancel_request(*req);
                }
                self.finish_lookup(lk, Step::Fail(LookupError::Timeout));
            }
        }
        // Slow hops: query the next candidate in parallel.
        while let Some(&(t, lid)) = self.lookup_soft.iter().next() {
            if t > now {
                break;
            }
            self.lookup_soft.remove(&(t, lid));
            if let Some(lk) = self.lookups.remove(&lid) {
                let soft = self.hop_soft_timeout();
                let newest = lk.inflight.iter().map(|x| x.2).max();
                let slow = newest.map(|s| s.add(soft) <= now).unwrap_or(false);
                // Settling for a fallback owner is never done speculatively: wait for the
                // candidate still asked (it may be the true owner) to answer or time out.
                let settling = matches!(lk.queue.front(), Some(Cand::Accept { .. }));
                if slow && !settling && lk.inflight.len() < ALPHA {
                    self.drive(lid, lk, None);
                } else {
                    self.lookups.insert(lid, lk);
                }
            }
        }
        // Forget old death verdicts.
        self.dead.retain(|_, until| *until > now);
        if self.status == Status::Member && self.maintenance {
            if now >= self.next_stabilize {
                self.next_stabilize = now.add(self.config.stabilize_interval);
                if !self.stabilizing {
                    self.start_stabilize();
                }
            }
            if now >= self.next_fix {
                self.next_fix = now.add(self.config.fix_fingers_interval);
                if !self.fixing {
                    self.fix_next_finger();
                }
            }
            if now >= self.next_merge {
                self.next_merge = now.add(self.config.stabilize_interval);
                self.merge_tick();
            }
        }
        self.check_ranges();
    }

    /// A transport-level failure to deliver `msg` to `to`: counts as an unanswered attempt now.
    pub fn handle_send_failure(&mut self, now: Time, to: A, msg: &Message<A>) {
        self.now = now;
        if !msg.is_request() {
            return;
        }
        let req = msg.req_id();
        let matches = self
            .outstanding
            .get(&req)
            .map(|o| o.to == to)
            .unwrap_or(false);
        if matches {
            if let Some(o) = self.outstanding.get(&req) {
                self.deadlines.remove(&(o.deadline, req));
            }
            self.request_unanswered(req);
        }
        self.check_ranges();
    }

    /// (Lookup) Starts an iterative lookup of the owner of `key`; the answer comes as
    /// `Event::LookupDone`.
    pub fn start_lookup(&mut self, now: Time, key: Id) -> LookupId {
        self.now = now;
        let lid = LookupId(self.next_lookup);
        if !self.is_member() {
            self.next_lookup += 1;
            self.event(Event::LookupDone {
                lookup: lid,
                key,
                result: Err(LookupError::NotMember),
            });
            return lid;
        }
        let me = self.me.addr.clone();
        self.begin_lookup(LookupKind::User(lid), key, vec![Cand::Route(me)]);
        lid
    }

    /// (Merge) Members this node knew, e.g. from the peers file of an earlier run: each one
    /// that is not in our tables (nor already remembered) is probed at the next maintenance
    /// tick and then with back-off like a member we lost, so a node that started a ring of
    /// its own because nobody answered finds the ring again when its members come back.
    /// Entries beyond [`LOST_CAPACITY`] push out the least promising ones.
    pub fn remember(&mut self, now: Time, peers: impl IntoIterator<Item = Peer<A>>) {
        self.now = now;
        for p in peers.into_iter().take(MAX_LIST) {
            let known = self
                .succs
                .iter()
                .chain(&self.preds)
                .any(|q| q.addr == p.addr);
            if p.addr == self.me.addr || p.id == self.me.id || known {
                continue;
            }
            self.add_lost(p, now);
        }
    }

    /// (Merge) The members this node lost and still probes (see [`Node::remember`]).
    pub fn lost_members(&self) -> Vec<Peer<A>> {
        self.lost.values().map(|l| l.peer.clone()).collect()
    }

    /// When to call `handle_timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut consider = |x: Time| {
            t = Some(match t {
                Some(y) if y <= x => y,
                _ => x,
            })
        };
        if let Some(&(d, _)) = self.deadlines.iter().next() {
            consider(d);
        }
        if let Some(&(d, _)) = self.lookup_deadlines.iter().next() {
            consider(d);
        }
        if let Some(&(d, _)) = self.lookup_soft.iter().next() {
            consider(d);
        }
        if self.status == Status::Member && self.maintenance {
            consider(self.next_stabilize);
            consider(self.next_fix);
            if !self.lost.is_empty() || self.merge_cand.is_some() {
                consider(self.next_merge);
            }
        }
        t
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<A>> {
        self.actions.pop_front()
    }

    /// Pauses (false) or resumes (true) stabilize and fix_fingers. For simulators and tests
    /// ("stabilization frozen"); lookups and answers keep working.
    pub fn set_maintenance(&mut self, now: Time, enabled: bool) {
        self.now = now;
        if enabled && !self.maintenance {
            self.schedule_maintenance(now);
        }
        self.maintenance = enabled;
    }

    /// Makes this node a member with the given tables at once, as if it had joined and
    /// stabilized. For simulators and tests that start from an Ideal ring (as Zave's model
    /// does); a real node only becomes a member through `create` or `join`.
    #[doc(hidden)]
    pub fn install_member_state(
        &mut self,
        now: Time,
        successors: Vec<Peer<A>>,
        predecessors: Vec<Peer<A>>,
        fingers: Vec<Option<Peer<A>>>,
    ) {
        self.now = now;
        self.status = Status::Member;
        self.succs = self.sanitize_succs(successors);
        self.preds = self.sanitize_preds(predecessors);
        self.fingers = fingers;
        self.fingers.resize(256, None);
        self.refresh_finger_set();
        self.schedule_maintenance(now);
        self.event(Event::Joined);
        self.check_ranges();
    }

    // ------------------------------------------------------------------ views

    /// This node.
    pub fn me(&self) -> &Peer<A> {
        &self.me
    }

    /// Life-cycle state.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Member or leaving (still answering as a member).
    pub fn is_member(&self) -> bool {
        matches!(self.status, Status::Member | Status::Leaving)
    }

    /// The predecessor, if known.
    pub fn predecessor(&self) -> Option<&Peer<A>> {
        self.preds.first()
    }

    /// The predecessor list (`[0]` is the predecessor).
    pub fn predecessors(&self) -> &[Peer<A>] {
        &self.preds
    }

    /// The successor list (empty if alone).
    pub fn successors(&self) -> &[Peer<A>] {
        &self.succs
    }

    /// The finger table: entry i is successor(me + 2^i) as last learned.
    pub fn fingers(&self) -> Vec<Option<Peer<A>>> {
        self.fingers.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many peer entries the node holds in all its state (lists, fingers, requests and
    /// lookups in progress, remembered candidates): for tests and metrics. Bounded by the
    /// configuration and the work in progress, whatever peers send.
    pub fn held_entries(&self) -> usize {
        let list = |m: &Message<A>| match m {
            Message::Notify { preds, .. } => 1 + preds.len(),
            Message::Leave {
                preds, successors, ..
            } => 1 + preds.len() + successors.len(),
            Message::Info {
                pred,
                successors,
                closer,
                ..
            } => usize::from(pred.is_some()) + successors.len() + closer.len(),
            _ => 0,
        };
        let purpose = |p: &Purpose<A>| match p {
            Purpose::StabGet { .. } | Purpose::RectifyPing { .. } => 1,
            Purpose::StabVerify { rest, base, .. } => 1 + rest.len() + base.len(),
            Purpose::Notify | Purpose::Hop { .. } | Purpose::Leave => 0,
            Purpose::MergeProbe { .. } => 1,
        };
        let cand = |c: &Cand<A>| match c {
            Cand::Route(_) | Cand::Owner { .. } => 1,
            Cand::Accept {
                successors, pred, ..
            } => 1 + successors.len() + usize::from(pred.is_some()),
        };
        self.succs.len()
            + self.preds.len()
            + self.fingers.iter().flatten().count()
            + self.finger_set.len()
            + self.notifiers.len()
            + self.lost.len()
            + usize::from(self.merge_cand.is_some())
            + self.rectify_cand.as_ref().map_or(0, |(_, l)| 1 + l.len())
            + self
                .outstanding
                .values()
                .map(|o| list(&o.msg) + purpose(&o.purpose))
                .sum::<usize>()
            + self
                .lookups
                .values()
                .map(|l| {
                    l.queue.iter().map(cand).sum::<usize>()
                        + l.inflight.iter().map(|(_, c, _)| cand(c)).sum::<usize>()
                        + l.tried.len()
                        + l.answered.len()
                        + l.requeried.len()
                })
                .sum::<usize>()
    }

    /// A status snapshot.
    pub fn snapshot(&self) -> Snapshot<A> {
        let mut fingers: Vec<Peer<A>> = Vec::new();
        for p in self.fingers.iter().flatten() {
            if fingers.last().map(|l| l.addr != p.addr).unwrap_or(true) {
                fingers.push(p.clone());
            }
        }
        Snapshot {
            me: self.me.clone(),
            status: self.status,
            predecessors: self.preds.clone(),
            successors: self.succs.clone(),
            fingers,
            outstanding_requests: self.outstanding.len(),
            lookups_in_progress: self.lookups.len(),
        }
    }

    fn refresh_finger_set(&mut self) {
        self.finger_set.clear();
        for p in self.fingers.iter().rev().flatten() {
            if self
                .finger_set
                .last()
                .map(|l| l.addr != p.addr)
                .unwrap_or(true)
            {
                self.finger_set.push(p.clone());
            }
        }
    }

    fn alone(&self) -> bool {
        self.succs.is_empty()
    }

    /// Whether we own `key`: it lies in `(pred, self]` (everything if alone).
    pub fn owns(&self, key: Id) -> bool {
        if !self.is_member() {
            return false;
        }
        if self.alone() {
            return true;
        }
        match self.preds.first() {
            Some(p) => key.in_half_open(p.id, self.me.id),
            None => key == self.me.id,
        }
    }

    /// Our ranges for replication factor `replication`, or `None` while unknown (not a member,
    /// or no predecessor known yet).
    pub fn try_ranges(&self, replication: usize) -> Option<Ranges> {
        if !self.is_member() {
            return None;
        }
        let me = self.me.id;
        if self.alone() {
            return Some(Ranges {
                owned: (me, me),
                replicated: (me, me),
            });
        }
        let pred = self.preds.first()?;
        let k = replication.max(1);
        // A successor list shorter than r means the ring has only succs.len() + 1 members.
        let ring_small = self.succs.len() < self.config.successors;
        let replicated = if ring_small && k > self.succs.len() {
            (me, me)
        } else {
            let idx = (k - 1).min(self.preds.len() - 1);
            (self.preds[idx].id, me)
        };
        Some(Ranges {
            owned: (pred.id, me),
            replicated,
        })
    }

    /// Our ranges for replication factor `replication`. While unknown (see [`Node::try_ranges`])
    /// both ranges are `(me - 1, me]`, i.e. only our own id.
    pub fn ranges(&self, replication: usize) -> Ranges {
        self.try_ranges(replication).unwrap_or_else(|| {
            let me = self.me.id;
            let below = me.wrapping_sub(Id::from_u64(1));
            Ranges {
                owned: (below, me),
                replicated: (below, me),
            }
        })
    }

    /// If we own `key`: `[me, succ0, ..]`, `r` entries at most.
    pub fn local_replica_set(&self, key: Id, r: usize) -> Option<Vec<Peer<A>>> {
        if !self.owns(key) {
            return None;
        }
        let mut out = vec![self.me.clone()];
        out.extend(self.succs.iter().take(r.saturating_sub(1)).cloned());
        Some(out)
    }

    // ------------------------------------------------------------------ internals: plumbing

    fn event(&mut self, e: Event<A>) {
        self.actions.push_back(Action::Event(e));
    }

    fn send(&mut self, to: A, msg: Message<A>) {
        self.actions.push_back(Action::Send { to, msg });
    }

    fn schedule_maintenance(&mut self, now: Time) {
        self.next_stabilize = now;
        self.next_fix = now.add(self.config.fix_fingers_interval);
    }

    fn send_request(
        &mut self,
        to: A,
        make: impl FnOnce(u64) -> Message<A>,
        purpose: Purpose<A>,
    ) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        let retry = match &purpose {
            Purpose::Hop { persistent, .. } => *persistent,
            // A probe of a lost member is not retried: the next one comes after a back-off.
            Purpose::MergeProbe { .. } => false,
            _ => true,
        };
        self.send_request_with(req, to, make(req), purpose, retry);
        req
    }

    fn send_request_with(
        &mut self,
        req: u64,
        to: A,
        msg: Message<A>,
        purpose: Purpose<A>,
        retry: bool,
    ) {
        let deadline = self.now.add(self.config.rpc_timeout);
        self.deadlines.insert((deadline, req));
        self.outstanding.insert(
            req,
            Outstanding {
                to: to.clone(),
                msg: msg.clone(),
                attempts: 1,
                deadline,
                retry,
                purpose,
            },
        );
        self.send(to, msg);
    }

    fn cancel_request(&mut self, req: u64) {
        if let Some(o) = self.outstanding.remove(&req) {
            self.deadlines.remove(&(o.deadline, req));
        }
    }

    /// One attempt of request `req` went unanswered (its deadline entry is already removed).
    fn request_unanswered(&mut self, req: u64) {
        let Some(mut o) = self.outstanding.remove(&req) else {
            return;
        };
        if o.retry && o.attempts <= self.config.rpc_retries {
            o.attempts += 1;
            o.deadline = self.now.add(self.config.rpc_timeout);
            self.deadlines.insert((o.deadline, req));
            let (to, msg) = (o.to.clone(), o.msg.clone());
            self.outstanding.insert(req, o);
            self.send(to, msg);
            return;
        }
        if let Purpose::MergeProbe { peer } = &o.purpose {
            // A lost member still silent: nothing to count or declare, just wait longer.
            let addr = peer.addr.clone();
            self.merge_backoff(&addr);
            return;
        }
        // For lookups the peer may still be alive; count attempts across requests.
        let count = {
            let c = self.failures.entry(o.to.clone()).or_insert(0);
            *c += if o.retry { o.attempts } else { 1 };
            *c
        };
        let declared = count > self.config.rpc_retries;
        match o.purpose {
            Purpose::StabGet { succ } => {
                self.stabilizing = false;
                self.declare_dead(&succ.addr, Some(succ.clone()));
                if self.status == Status::Member {
                    self.start_stabilize();
                }
            }
            Purpose::StabVerify { cand, rest, base } => {
                self.declare_dead(&cand.addr, Some(cand.clone()));
                self.verify_next(rest, base);
            }
            Purpose::Notify => {}
            Purpose::RectifyPing { pred } => {
                self.rectify_ping = None;
                self.declare_dead(&pred.addr, Some(pred.clone()));
                if let Some((n, np)) = self.rectify_cand.take() {
                    self.rectify(n, np);
                }
            }
            Purpose::Hop { lookup, .. } => {
                if declared {
                    self.declare_dead(&o.to, None);
                }
                if let Some(mut lk) = self.lookups.remove(&lookup) {
                    lk.inflight.retain(|x| x.0 != req);
                    if lk.inflight.is_empty() {
                        self.drive(lookup, lk, None);
                    } else {
                        self.lookups.insert(lookup, lk);
                    }
                }
            }
            Purpose::Leave => self.leave_ack(),
            Purpose::MergeProbe { .. } => {}
        }
    }

    /// How long a death verdict is remembered: several periods, and longer than it takes to
    /// find a peer dead, so alternating stale candidates cannot starve a live one.
    fn dead_memory(&self) -> std::time::Duration {
        let detect = self.config.rpc_timeout * (self.config.rpc_retries + 1);
        (self.config.stabilize_interval * 5).max(detect * 3)
    }

    fn hop_soft_timeout(&self) -> std::time::Duration {
        (self.config.rpc_timeout / 4).max(std::time::Duration::from_millis(1))
    }

    fn is_dead(&self, a: &A) -> bool {
        self.dead.contains_key(a)
    }

    /// Drops `addr` from every table; emits `PeerFailed` once.
    fn declare_dead(&mut self, addr: &A, known: Option<Peer<A>>) {
        if *addr == self.me.addr {
            return;
        }
        let mut peer = known;
        let mut was_neighbor = false;
        let mut was_finger = false;
        if let Some(i) = self.succs.iter().position(|p| p.addr == *addr) {
            let p = self.succs.remove(i);
            peer.get_or_insert(p);
            was_neighbor = true;
        }
        if let Some(i) = self.preds.iter().position(|p| p.addr == *addr) {
            let p = self.preds.remove(i);
            peer.get_or_insert(p);
            was_neighbor = true;
        }
        for f in self.fingers.iter_mut() {
            if f.as_ref().map(|p| p.addr == *addr).unwrap_or(false) {
                if peer.is_none() {
                    peer = f.clone();
                }
                *f = None;
                was_finger = true;
            }
        }
        self.refresh_finger_set();
        self.notifiers.retain(|_, (p, _)| p.addr != *addr);
        if was_neighbor || was_finger {
            // (Merge) A member of our ring may only be cut off from us: keep looking for it.
            if let Some(p) = peer.clone() {
                let now = self.now;
                self.add_lost(
                    p,
                    now.add(self.config.stabilize_interval * MERGE_FIRST_PERIODS),
                );
            }
        }
        let newly = !self.dead.contains_key(addr);
        let until = self.now.add(self.dead_memory());
        self.dead.insert(addr.clone(), until);
        self.failures.remove(addr);
        if newly || was_neighbor {
            if let Some(peer) = peer {
                self.event(Event::PeerFailed { peer });
            }
        }
    }

    fn check_ranges(&mut self) {
        let r = self.try_ranges(self.config.replication);
        if r != self.last_ranges {
            self.last_ranges = r;
            if let Some(ranges) = r {
                self.event(Event::RangesChanged { ranges });
            }
        }
    }

    /// A successor list from raw entries: drops us, known-dead peers and anything not strictly
    /// clockwise-increasing from us (so the list is ordered and duplicate-free by construction);
    /// stops where the entries wrap around to us; truncates to r.
    fn sanitize_succs(&self, list: impl IntoIterator<Item = Peer<A>>) -> Vec<Peer<A>> {
        let me = self.me.id;
        self.sanitize_list(list, self.config.successors, |p| me.distance_to(p))
    }

    /// The same for predecessor lists (counter-clockwise).
    fn sanitize_preds(&self, list: impl IntoIterator<Item = Peer<A>>) -> Vec<Peer<A>> {
        let me = self.me.id;
        self.sanitize_list(list, self.config.predecessors, |p| p.distance_to(me))
    }

    /// Keeps entries whose `distance` from us strictly grows, skipping dead peers, stopping at
    /// ourselves or after `max` entries.
    fn sanitize_list(
        &self,
        list: impl IntoIterator<Item = Peer<A>>,
        max: usize,
        distance: impl Fn(Id) -> Id,
    ) -> Vec<Peer<A>> {
        let mut out: Vec<Peer<A>> = Vec::new();
        let mut last = Id::ZERO;
        for p in list.into_iter().take(MAX_LIST) {
            if p.id == self.me.id || p.addr == self.me.addr {
                break;
            }
            if self.is_dead(&p.addr) {
                continue;
            }
            let d = distance(p.id);
            if d <= last {
                continue;
            }
            last = d;
            out.push(p);
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Up to `limit` known nodes in `(me, key)`, closest to `key` first: closest_preceding_node
    /// over fingers AND successors (Fingers).
    fn closer(&self, key: Id, limit: usize) -> Vec<Peer<A>> {
        let me = self.me.id;
        let mut c: Vec<&Peer<A>> = Vec::with_capacity(24);
        for p in &self.finger_set {
            if p.id.in_open(me, key) && !self.is_dead(&p.addr) {
                c.push(p);
            }
        }
        for p in &self.succs {
            if p.id.in_open(me, key) {
                c.push(p);
            }
        }
        let mut keyed: Vec<([u64; 4], &Peer<A>)> =
            c.into_iter().map(|p| (key.dist_key(p.id), p)).collect();
        keyed.sort_unstable_by_key(|x| x.0);
        keyed.dedup_by(|a, b| a.1.addr == b.1.addr);
        keyed
            .into_iter()
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn info(&self, req: u64, key: Option<Id>) -> Message<A> {
        let member = self.is_member();
        Message::Info {
            req,
            member,
            id: self.me.id,
            pred: if member {
                self.preds.first().cloned()
            } else {
                None
            },
            successors: if member {
                self.succs.clone()
            } else {
                Vec::new()
            },
            closer: match key {
                Some(k) if member => self.closer(k, CLOSER_CANDIDATES),
                _ => Vec::new(),
            },
        }
    }

    fn local_view(&self, key: Id) -> InfoView<A> {
        InfoView {
            member: self.is_member(),
            id: self.me.id,
            pred: self.preds.first().cloned(),
            successors: self.succs.clone(),
            closer: self.closer(key, CLOSER_CANDIDATES),
        }
    }

    fn on_response(&mut self, from: A, msg: Message<A>) {
        let req = msg.req_id();
        match self.outstanding.get(&req) {
            Some(o) if o.to == from => {}
            _ => return, // unknown, late, or from someone else: ignore
        }
        let Some(o) = self.outstanding.remove(&req) else {
            return;
        };
        self.deadlines.remove(&(o.deadline, req));
        let Outstanding {
            to,
            msg: sent,
            purpose,
            ..
        } = o;
        match (purpose, msg) {
            (
                Purpose::StabGet { succ },
                Message::Info {
                    member,
                    pred,
                    successors,
                    closer,
                    ..
                },
            ) => {
                if !member {
                    self.stabilizing = false;
                    self.declare_dead(&succ.addr, Some(succ.clone()));
                    if self.status == Status::Member {
                        self.start_stabilize();
                    }
                    return;
                }
                self.stabilize_reply(succ, pred, successors, closer);
            }
            (
                Purpose::StabVerify { cand, rest, base },
                Message::Info {
                    member, successors, ..
                },
            ) => {
                if member {
                    // [Stabilize] p is alive and between us and succ0: adopt it and its list.
                    let list = std::iter::once(cand).chain(successors);
                    let new = self.sanitize_succs(list);
                    self.set_successors(new);
                    self.notify_successor();
                    // Our successor moved closer; look again at once instead of a period later.
                    self.next_stabilize = self.now;
                } else {
                    self.declare_dead(&cand.addr, Some(cand.clone()));
                    self.verify_next(rest, base);
                }
            }
            (Purpose::Notify, Message::Ack { .. }) => {}
            (Purpose::RectifyPing { pred }, Message::Pong { member, .. }) => {
                self.rectify_ping = None;
                if member {
                    // [Rectify] the current predecessor lives and the notifier is not closer.
                    self.rectify_cand = None;
                } else {
                    self.declare_dead(&pred.addr, Some(pred.clone()));
                    if let Some((n, np)) = self.rectify_cand.take() {
                        self.rectify(n, np);
                    }
                }
            }
            (
                Purpose::Hop { lookup, .. },
                Message::Info {
                    member,
                    id,
                    pred,
                    successors,
                    closer,
                    ..
                },
            ) => {
                if let Some(mut lk) = self.lookups.remove(&lookup) {
                    let view = InfoView::bounded(member, id, pred, successors, closer);
                    let pos = lk.inflight.iter().position(|x| x.0 == req);
                    match pos {
                        Some(i) => {
                            let (_, cand, _) = lk.inflight.remove(i);
                            lk.hops += 1;
                            self.drive(lookup, lk, Some((cand, view)));
                        }
                        None => {
                            self.lookups.insert(lookup, lk);
                        }
                    }
                }
            }
            (Purpose::Leave, Message::Ack { .. }) => self.leave_ack(),
            (
                Purpose::MergeProbe { peer },
                Message::Info {
                    member,
                    id,
                    pred,
                    successors,
                    closer,
                    ..
                },
            ) => {
                if !member || id != peer.id {
                    // Up but not (yet) a member, or another node at its address now.
                    if id != peer.id {
                        self.lost.remove(&peer.addr);
                    }
                    self.merge_backoff(&peer.addr);
                    return;
                }
                let view = InfoView::bounded(member, id, pred, successors, closer);
                self.begin_merge_lookup(peer, view);
            }
            (purpose, _) => {
                // A response of the wrong kind: treat like no answer.
                let o2 = Outstanding {
                    to,
                    msg: sent,
                    attempts: u32::MAX - 1,
                    deadline: self.now,
                    retry: false,
                    purpose,
                };
                self.outstanding.insert(req, o2);
                self.request_unanswered(req);
            }
        }
    }

    // ------------------------------------------------------------------ stabilize / rectify

    /// (Stabilize) Drop dead succ0 (done when its request fails), else ask succ0 for its
    /// predecessor and list.
    fn start_stabilize(&mut self) {
        if self.stabilizing || self.status != Status::Member {
            return;
        }
        match self.succs.first().cloned() {
            Some(s) => {
                self.stabilizing = true;
                let asker = self.me.id;
                self.send_request(
                    s.addr.clone(),
                    |req| Message::GetState { req, asker },
                    Purpose::StabGet { succ: s },
                );
            }
            None => {
                // Alone: our own predecessor (someone who notified us) is our successor
                // candidate, adopted only after it answers.
                if let Some(p) = self.preds.first().cloned() {
                    self.stabilizing = true;
                    let asker = self.me.id;
                    self.send_request(
                        p.addr.clone(),
                        |req| Message::GetState { req, asker },
                        Purpose::StabVerify {
                            cand: p,
                            rest: Vec::new(),
                            base: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    fn stabilize_reply(
        &mut self,
        succ: Peer<A>,
        pred: Option<Peer<A>>,
        successors: Vec<Peer<A>>,
        closer: Vec<Peer<A>>,
    ) {
        let me = self.me.id;
        let base: Vec<Peer<A>> = std::iter::once(succ.clone())
            .chain(successors.into_iter().take(MAX_LIST))
            .collect();
        // [Stabilize] Zave's candidate is succ0's predecessor p. succ0 also names other nodes
        // it knows between us and it; the nearest to us would be an even better successor.
        // Candidates are tried nearest first, Zave's p always among them, and each is adopted
        // only after it answers as a live member.
        let ok = |p: &Peer<A>| {
            p.id != me
                && p.addr != self.me.addr
                && p.id.in_open(me, succ.id)
                && !self.is_dead(&p.addr)
        };
        let mut cands: Vec<Peer<A>> = closer
            .into_iter()
            .take(CLOSER_CANDIDATES)
            .filter(|p| ok(p))
            .collect();
        cands.sort_by_key(|p| me.distance_to(p.id));
        cands.dedup_by(|a, b| a.addr == b.addr);
        cands.truncate(2);
        if let Some(p) = pred.filter(|p| ok(p)) {
            if !cands.iter().any(|c| c.addr == p.addr) {
                cands.push(p);
            }
        }
        self.verify_next(cands, base);
    }

    /// (Stabilize) Verify the first remaining candidate, or settle for `base`.
    fn verify_next(&mut self, mut cands: Vec<Peer<A>>, base: Vec<Peer<A>>) {
        cands.retain(|p| !self.is_dead(&p.addr));
        if cands.is_empty() {
            self.commit_successors(base);
            self.notify_successor();
            return;
        }
        let cand = cands.remove(0);
        let asker = self.me.id;
        self.send_request(
            cand.addr.clone(),
            |req| Message::GetState { req, asker },
            Purpose::StabVerify {
                cand,
                rest: cands,
                base,
            },
        );
    }

    fn commit_successors(&mut self, base: Vec<Peer<A>>) {
        let new = self.sanitize_succs(base);
        self.set_successors(new);
    }

    fn set_successors(&mut self, new: Vec<Peer<A>>) {
        if new != self.succs {
            self.succs = new;
            self.hurry();
        }
    }

    /// Something we tell our neighbours changed: stabilize again soon rather than a full
    /// period later, so news travels one hop per round trip while the ring is moving (and at
    /// the normal rate once it is quiet).
    fn hurry(&mut self) {
        let soon = self.now.add(self.config.stabilize_interval / 8);
        if soon < self.next_stabilize {
            self.next_stabilize = soon;
        }
    }

    /// (Stabilize) last step: notify succ0. Ends the stabilize round.
    fn notify_successor(&mut self) {
        self.stabilizing = false;
        if let Some(s) = self.succs.first().cloned() {
            let node = self.me.clone();
            let preds = self.preds.clone();
            self.send_request(
                s.addr,
                |req| Message::Notify { req, node, preds },
                Purpose::Notify,
            );
        }
    }

    /// (Rectify) On a notify from n: adopt n if n ∈ (pred, self) or there is no predecessor;
    /// if n is not closer, check that the current predecessor lives and adopt n if it does not.
    fn rectify(&mut self, n: Peer<A>, npreds: Vec<Peer<A>>) {
        let me = self.me.id;
        self.remember_notifier(&n);
        match self.preds.first().cloned() {
            None => self.adopt_pred(n, npreds),
            Some(p) if p.addr == n.addr => self.adopt_pred(n, npreds),
            Some(p) if n.id.in_open(p.id, me) => self.adopt_pred(n, npreds),
            Some(p) => {
                let better = match &self.rectify_cand {
                    None => true,
                    Some((c, _)) => n.id.in_open(c.id, me),
                };
                if better {
                    self.rectify_cand = Some((n, npreds));
                }
                if self.rectify_ping.is_none() {
                    let req = self.send_request(
                        p.addr.clone(),
                        |req| Message::Ping { req },
                        Purpose::RectifyPing { pred: p },
                    );
                    self.rectify_ping = Some(req);
                }
            }
        }
    }

    /// Remembers a notifier; keeps the cache bounded and spread out (evicting the entry
    /// closest to its clockwise neighbour) and drops entries older than a few periods.
    fn remember_notifier(&mut self, n: &Peer<A>) {
        let now = self.now;
        let ttl = self.config.stabilize_interval * 4;
        self.notifiers.retain(|_, (_, t)| t.add(ttl) > now);
        self.notifiers.insert(n.id, (n.clone(), now));
        if self.notifiers.len() > NOTIFIER_CACHE {
            // Keep the half nearest to us (they sort out our immediate neighbourhood) and
            // thin out the rest where it is densest (they let distant nodes jump far).
            let me = self.me.id;
            let mut ids: Vec<Id> = self.notifiers.keys().copied().collect();
            ids.sort_by_key(|id| id.distance_to(me));
            let keep = NOTIFIER_CACHE / 2;
            let mut victim = ids[ids.len() - 1];
            let mut smallest: Option<Id> = None;
            for w in ids.windows(2).skip(keep) {
                let gap = w[0].distance_to(w[1]);
                if smallest.map(|s| gap < s).unwrap_or(true) {
                    smallest = Some(gap);
                    victim = w[1];
                }
            }
            self.notifiers.remove(&victim);
        }
    }

    /// Up to `limit` known nodes in `(asker, me)`, nearest to `asker` first.
    fn closer_after(&self, asker: Id, limit: usize) -> Vec<Peer<A>> {
        let me = self.me.id;
        let ttl = self.config.stabilize_interval * 4;
        let mut c: Vec<&Peer<A>> = Vec::with_capacity(48);
        for (p, t) in self.notifiers.values() {
            if t.add(ttl) > self.now {
                c.push(p);
            }
        }
        c.extend(self.preds.iter());
        c.extend(self.finger_set.iter());
        c.retain(|p| p.id.in_open(asker, me) && !self.is_dead(&p.addr));
        let mut keyed: Vec<([u64; 4], &Peer<A>)> =
            c.into_iter().map(|p| (p.id.dist_key(asker), p)).collect();
        keyed.sort_unstable_by_key(|x| x.0);
        keyed.dedup_by(|a, b| a.1.addr == b.1.addr);
        keyed
            .into_iter()
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn adopt_pred(&mut self, n: Peer<A>, npreds: Vec<Peer<A>>) {
        let list = std::iter::once(n).chain(npreds.into_iter().take(MAX_LIST));
        let new = self.sanitize_preds(list);
        if new != self.preds {
            self.preds = new;
            self.hurry();
        }
    }

    // ------------------------------------------------------------------ merge

    /// (Merge) Once per stabilize period: adopt a candidate found while stabilize was busy,
    /// forget what is no longer lost, and probe the nearest lost member that is due, if no
    /// probe is out. A probe is `FindSuccessor(me + 1)` sent straight to it; if it answers as
    /// a member, the lookup continues through its ring, and a successor found there that is
    /// closer than ours (any, if we are alone) is adopted once it answers, as in stabilize.
    /// Notify and stabilize then splice the two rings together.
    fn merge_tick(&mut self) {
        if !self.stabilizing {
            if let Some(c) = self.merge_cand.take() {
                self.adopt_merge_cand(c);
            }
        }
        let now = self.now;
        // Back in our lists: alive and in our ring.
        let (succs, preds) = (&self.succs, &self.preds);
        self.lost
            .retain(|a, _| !succs.iter().chain(preds).any(|p| p.addr == *a));
        if self.succs.len() >= self.config.successors {
            // A full successor list: we are in a ring of more than r members, where a member
            // lost long ago most likely crashed for good.
            let ttl = self.config.stabilize_interval * LOST_FORGET_PERIODS;
            self.lost.retain(|_, l| l.since.add(ttl) > now);
        }
        if self.merging.is_some() || self.status != Status::Member {
            return;
        }
        let me = self.me.id;
        let Some(peer) = self
            .lost
            .values()
            .filter(|l| l.due <= now)
            .min_by_key(|l| me.distance_to(l.peer.id))
            .map(|l| l.peer.clone())
        else {
            return;
        };
        self.merging = Some(peer.clone());
        let key = me.add_pow2(0);
        self.send_request(
            peer.addr.clone(),
            |req| Message::FindSuccessor { req, key },
            Purpose::MergeProbe { peer },
        );
    }

    /// (Merge) Remembers a member to probe from `due` on (no-op if already remembered).
    fn add_lost(&mut self, peer: Peer<A>, due: Time) {
        if peer.addr == self.me.addr || self.lost.contains_key(&peer.addr) {
            return;
        }
        if self.lost.len() >= LOST_CAPACITY {
            let me = self.me.id;
            let busy = self.merging.as_ref().map(|p| p.addr.clone());
            let victim = self
                .lost
                .iter()
                .filter(|(a, _)| Some(*a) != busy.as_ref())
                .max_by_key(|(_, l)| (l.backoff, me.distance_to(l.peer.id)))
                .map(|(a, _)| a.clone());
            match victim {
                Some(v) => {
                    self.lost.remove(&v);
                }
                None => return,
            }
        }
        let since = self.now;
        self.lost.insert(
            peer.addr.clone(),
            Lost {
                peer,
                since,
                due,
                backoff: MERGE_FIRST_PERIODS,
            },
        );
    }

    /// (Merge) The probe of `addr` (or the lookup through it) failed: wait twice as long
    /// before the next one, up to [`MERGE_MAX_BACKOFF_PERIODS`].
    fn merge_backoff(&mut self, addr: &A) {
        if self
            .merging
            .as_ref()
            .map(|p| &p.addr == addr)
            .unwrap_or(false)
        {
            self.merging = None;
        }
        let now = self.now;
        let period = self.config.stabilize_interval;
        if let Some(l) = self.lost.get_mut(addr) {
            l.backoff = (l.backoff.saturating_mul(2)).min(MERGE_MAX_BACKOFF_PERIODS);
            l.due = now.add(period * l.backoff);
        }
    }

    /// (Merge) A lost member answered a probe as a member: look up successor(me + 1) through
    /// it, starting from its answer.
    fn begin_merge_lookup(&mut self, peer: Peer<A>, view: InfoView<A>) {
        if self.status != Status::Member {
            self.merging = None;
            return;
        }
        let lid = self.next_lookup;
        self.next_lookup += 1;
        let deadline = self.now.add(self.config.lookup_timeout);
        let mut tried = BTreeSet::new();
        tried.insert(peer.addr.clone());
        let lk = Lookup {
            kind: LookupKind::Merge,
            key: self.me.id.add_pow2(0),
            deadline,
            hops: 1,
            queue: VecDeque::new(),
            tried,
            answered: BTreeSet::new(),
            requeried: BTreeSet::new(),
            inflight: Vec::new(),
        };
        self.lookup_deadlines.insert((deadline, lid));
        self.drive(lid, lk, Some((Cand::Route(peer.addr), view)));
    }

    /// Whether `p` would be a better successor than ours (any live node is, when alone).
    fn closer_successor(&self, p: &Peer<A>) -> bool {
        if p.addr == self.me.addr || p.id == self.me.id {
            return false;
        }
        match self.succs.first() {
            None => true,
            Some(s) => p.id.in_open(self.me.id, s.id),
        }
    }

    /// (Merge) The lookup through a lost member named `owner` as successor(me + 1).
    fn merge_found(&mut self, via: Peer<A>, owner: Peer<A>) {
        if self.status != Status::Member || !self.closer_successor(&owner) {
            return;
        }
        self.event(Event::MergeFound {
            via,
            successor: owner.clone(),
        });
        if self.stabilizing {
            self.merge_cand = Some(owner);
        } else {
            self.adopt_merge_cand(owner);
        }
    }

    /// [Stabilize] A closer successor found by a merge probe: adopted only after it answers.
    fn adopt_merge_cand(&mut self, c: Peer<A>) {
        if self.status != Status::Member || self.stabilizing || !self.closer_successor(&c) {
            return;
        }
        self.stabilizing = true;
        let base = self.succs.clone();
        self.verify_next(vec![c], base);
    }

    // ------------------------------------------------------------------ leave

    /// (Leave) A neighbour leaves: splice it out using the lists it sent.
    fn on_leave(&mut self, l: Peer<A>, lpreds: Vec<Peer<A>>, lsuccs: Vec<Peer<A>>) {
        if let Some(i) = self.succs.iter().position(|p| p.addr == l.addr) {
            let rest: Vec<Peer<A>> = self.succs[i + 1..].to_vec();
            let head: Vec<Peer<A>> = self.succs[..i].to_vec();
            let merged: Vec<Peer<A>> = head
                .into_iter()
                .chain(
                    lsuccs
                        .into_iter()
                        .take(MAX_LIST)
                        .filter(|p| p.addr != l.addr),
                )
                .chain(rest)
                .collect();
            // Mark first so the sanitizer drops it from any list.
            self.dead
                .insert(l.addr.clone(), self.now.add(self.dead_memory()));
            self.succs = self.sanitize_succs(merged);
            self.next_stabilize = self.now;
        }
        if self
            .preds
            .first()
            .map(|p| p.addr == l.addr)
            .unwrap_or(false)
        {
            self.dead
                .insert(l.addr.clone(), self.now.add(self.dead_memory()));
            self.preds = self.sanitize_preds(lpreds);
        } else if let Some(i) = self.preds.iter().position(|p| p.addr == l.addr) {
            self.preds.remove(i);
        }
        for f in self.fingers.iter_mut() {
            if f.as_ref().map(|p| p.addr == l.addr).unwrap_or(false) {
                *f = None;
            }
        }
        self.refresh_finger_set();
    }

    fn leave_ack(&mut self) {
        self.leave_pending = self.leave_pending.saturating_sub(1);
        if self.leave_pending == 0 && self.status == Status::Leaving {
            self.finish_leave();
        }
    }

    fn finish_leave(&mut self) {
        self.status = Status::Left;
        let lids: Vec<u64> = self.lookups.keys().copied().collect();
        for lid in lids {
            if let Some(lk) = self.lookups.remove(&lid) {
                self.lookup_deadlines.remove(&(lk.deadline, lid));
                for (req, _, _) in &lk.inflight {
                    self.cancel_request(*req);
                }
                self.finish_lookup(lk, Step::Fail(LookupError::NotMember));
            }
        }
        self.succs.clear();
        self.preds.clear();
        for f in self.fingers.iter_mut() {
            *f = None;
        }
        self.finger_set.clear();
        self.lost.clear();
        self.merge_cand = None;
        self.event(Event::Left);
    }

    // ------------------------------------------------------------------ fingers

    /// (Fingers) Refresh the next finger (round robin). Fingers whose target lies within the
    /// successor list are filled locally; at most one lookup is started per tick.
    fn fix_next_finger(&mut self) {
        self.fix_next_finger_inner();
        self.refresh_finger_set();
    }

    fn fix_next_finger_inner(&mut self) {
        if self.alone() {
            return;
        }
        let me = self.me.id;
        let Some(last) = self.succs.last().map(|p| p.id) else {
            return;
        };
        for _ in 0..256 {
            let i = self.next_finger;
            self.next_finger = (i + 1) % 256;
            let target = me.add_pow2(i as u32);
            if i == 0 && !self.stabilizing {
                let succ0 = self.succs[0].addr.clone();
                let far = self
                    .fingers
                    .iter()
                    .rev()
                    .flatten()
                    .find(|p| p.addr != succ0 && !self.is_dead(&p.addr))
                    .map(|p| p.addr.clone());
                if let Some(far) = far {
                    self.fixing = true;
                    self.begin_lookup(LookupKind::SuccCheck, target, vec![Cand::Route(far)]);
                    return;
                }
            }
            if target.in_half_open(me, last) {
                let s = self
                    .succs
                    .iter()
                    .find(|p| target.in_half_open(me, p.id))
                    .cloned();
                self.fingers[i] = s;
                continue;
            }
            self.fixing = true;
            let start = self.me.addr.clone();
            self.begin_lookup(LookupKind::Finger(i), target, vec![Cand::Route(start)]);
            return;
        }
    }

    // ------------------------------------------------------------------ lookups

    fn begin_lookup(&mut self, kind: LookupKind, key: Id, start: Vec<Cand<A>>) {
        let lid = self.next_lookup;
        self.next_lookup += 1;
        let deadline = self.now.add(self.config.lookup_timeout);
        let lk = Lookup {
            kind,
            key,
            deadline,
            hops: 0,
            queue: start.into_iter().collect(),
            tried: BTreeSet::new(),
            answered: BTreeSet::new(),
            requeried: BTreeSet::new(),
            inflight: Vec::new(),
        };
        self.lookup_deadlines.insert((deadline, lid));
        self.drive(lid, lk, None);
    }

    /// Processes an answer (if any) and sends the next query, or finishes the lookup.
    fn drive(&mut self, lid: u64, mut lk: Lookup<A>, mut answer: Option<(Cand<A>, InfoView<A>)>) {
        if answer.is_some() {
            // We move on from this answer; parallel queries still out are abandoned.
            for (req, _, _) in std::mem::take(&mut lk.inflight) {
                self.cancel_request(req);
            }
        }
        loop {
            if let Some((cand, view)) = answer.take() {
                match self.process_answer(&mut lk, cand, view) {
                    Step::Continue => {}
                    done => {
                        self.lookup_deadlines.remove(&(lk.deadline, lid));
                        self.finish_lookup(lk, done);
                        return;
                    }
                }
            }
            if lk.hops >= self.config.lookup_max_hops {
                self.lookup_deadlines.remove(&(lk.deadline, lid));
                self.finish_lookup(lk, Step::Fail(LookupError::TooManyHops));
                return;
            }
            let Some(cand) = lk.queue.pop_front() else {
                if !lk.inflight.is_empty() {
                    // Nothing more to try in parallel; wait for the queries still out.
                    self.lookups.insert(lid, lk);
                    return;
                }
                self.lookup_deadlines.remove(&(lk.deadline, lid));
                self.finish_lookup(lk, Step::Fail(LookupError::NoRoute));
                return;
            };
            if let Cand::Accept {
                owner,
                successors,
                pred,
                anchor,
                at,
            } = cand
            {
                // Settling after waiting for a better candidate that never answered: the
                // fallback's answer is that old, and it may have learned a new predecessor (a
                // node that joined meanwhile) since. Ask it again rather than return an owner
                // that no longer is one. (Its fresh answer settles at once unless it names
                // another candidate not tried yet, so this ends within the hop bound.)
                let stale = self.now > at.add(self.hop_soft_timeout());
                let time_left = self.now.add(self.config.rpc_timeout) < lk.deadline;
                if stale && time_left && owner.addr != self.me.addr {
                    lk.requeried.insert(owner.addr.clone());
                    lk.tried.remove(&owner.addr);
                    lk.queue.push_front(Cand::Owner {
                        peer: owner,
                        anchor,
                    });
                    continue;
                }
                self.lookup_deadlines.remove(&(lk.deadline, lid));
                self.finish_lookup(
                    lk,
                    Step::Done {
                        owner,
                        successors,
                        pred,
                    },
                );
                return;
            }
            let addr = cand.addr().clone();
            if lk.tried.contains(&addr) || (self.is_dead(&addr) && addr != self.me.addr) {
                continue;
            }
            lk.tried.insert(addr.clone());
            if addr == self.me.addr {
                if matches!(lk.kind, LookupKind::Merge) {
                    // (Merge) The other ring may still list us (a previous run of this node
                    // at this address): our own view, the ring we are in, would name us or
                    // one of ours as the owner and hide theirs.
                    continue;
                }
                let view = self.local_view(lk.key);
                answer = Some((cand, view));
                continue;
            }
            let key = lk.key;
            // A second ask of an owner candidate is retried like a maintenance request and
            // never settled speculatively: returning a wrong owner is worse than a slow lookup.
            let persistent = lk.requeried.contains(&addr);
            let req = self.send_request(
                addr,
                |req| Message::FindSuccessor { req, key },
                Purpose::Hop {
                    lookup: lid,
                    persistent,
                },
            );
            lk.inflight.push((req, cand, self.now));
            let soft = self.now.add(self.hop_soft_timeout());
            self.lookup_soft.insert((soft, lid));
            self.lookups.insert(lid, lk);
            return;
        }
    }

    /// (Lookup) The iterative routing rule. `cand` answered with `view`.
    fn process_answer(&mut self, lk: &mut Lookup<A>, cand: Cand<A>, view: InfoView<A>) -> Step<A> {
        let addr = cand.addr().clone();
        lk.answered.insert(addr.clone());
        if !view.member {
            // Joining, leaving-done or confused nodes are skipped like dead ones.
            return Step::Continue;
        }
        let key = lk.key;
        let peer = Peer::new(view.id, addr.clone());
        let claims = if view.successors.is_empty() {
            true
        } else {
            match &view.pred {
                Some(p) => key.in_half_open(p.id, view.id),
                None => key == view.id,
            }
        };
        if let Cand::Owner { anchor, .. } = &cand {
            let anchor = *anchor;
            // A predecessor of the owner candidate that lies between the anchor and the key is
            // a better owner candidate (e.g. a node that just joined); try it, falling back to
            // this answer.
            if let Some(p) = &view.pred {
                let better =
                    !claims && p.id.in_open(anchor, view.id) && key.in_half_open(anchor, p.id);
                // A better candidate we asked but never heard from is asked once more before
                // we settle for this one: its answer may have been lost or slow, and settling
                // would return a wrong owner.
                if better
                    && lk.tried.contains(&p.addr)
                    && !lk.answered.contains(&p.addr)
                    && !lk.requeried.contains(&p.addr)
                {
                    lk.tried.remove(&p.addr);
                    lk.requeried.insert(p.addr.clone());
                }
                if better && !lk.tried.contains(&p.addr) {
                    lk.queue.push_front(Cand::Accept {
                        owner: peer,
                        successors: view.successors,
                        pred: view.pred.clone(),
                        anchor,
                        at: self.now,
                    });
                    lk.queue.push_front(Cand::Owner {
                        peer: p.clone(),
                        anchor,
                    });
                    return Step::Continue;
                }
            }
            return Step::Done {
                owner: peer,
                successors: view.successors,
                pred: view.pred,
            };
        }
        if claims {
            return Step::Done {
                owner: peer,
                successors: view.successors,
                pred: view.pred,
            };
        }
        let last = view.successors.last().map(|p| p.id).unwrap_or(view.id);
        if key.in_half_open(view.id, last) {
            // The key falls within the answering node's successor list: its first entry at or
            // past the key is the owner unless it is dead, then the next, and so on.
            let start = view
                .successors
                .iter()
                .position(|s| key.in_half_open(view.id, s.id))
                .unwrap_or(0);
            let mut front: Vec<Cand<A>> = view.successors[start..]
                .iter()
                .filter(|s| !lk.tried.contains(&s.addr) || s.addr == self.me.addr)
                .map(|s| Cand::Owner {
                    peer: s.clone(),
                    anchor: view.id,
                })
                .collect();
            // We ourselves may be the owner; we count as tried, so let us be asked again.
            for c in &front {
                if c.addr() == &self.me.addr {
                    lk.tried.remove(&self.me.addr);
                }
            }
            while let Some(c) = front.pop() {
                lk.queue.push_front(c);
            }
            return Step::Continue;
        }
        let mut front: Vec<Cand<A>> = view
            .closer
            .iter()
            .filter(|c| c.id.in_open(view.id, key) && !lk.tried.contains(&c.addr))
            .map(|c| Cand::Route(c.addr.clone()))
            .collect();
        if front.is_empty() {
            // Fall back to the successor list (routes slowly, but routes).
            front = view
                .successors
                .iter()
                .rev()
                .filter(|c| c.id.in_open(view.id, key) && !lk.tried.contains(&c.addr))
                .map(|c| Cand::Route(c.addr.clone()))
                .collect();
        }
        while let Some(c) = front.pop() {
            lk.queue.push_front(c);
        }
        Step::Continue
    }

    fn finish_lookup(&mut self, lk: Lookup<A>, step: Step<A>) {
        let hops = lk.hops;
        match (lk.kind, step) {
            (
                LookupKind::User(lookup),
                Step::Done {
                    owner, successors, ..
                },
            ) => {
                let successors = successors
                    .into_iter()
                    .take(self.config.successors)
                    .collect();
                self.event(Event::LookupDone {
                    lookup,
                    key: lk.key,
                    result: Ok(LookupResult {
                        owner,
                        successors,
                        hops,
                    }),
                });
            }
            (LookupKind::User(lookup), Step::Fail(e)) => self.event(Event::LookupDone {
                lookup,
                key: lk.key,
                result: Err(e),
            }),
            (
                LookupKind::Join,
                Step::Done {
                    owner,
                    successors,
                    pred,
                },
            ) => {
                self.complete_join(owner, successors, pred);
            }
            (LookupKind::Join, Step::Fail(e)) => {
                if self.status == Status::Joining {
                    self.status = Status::Idle;
                }
                self.event(Event::JoinFailed {
                    reason: format!("finding our successor failed: {e}"),
                });
            }
            (LookupKind::Finger(i), Step::Done { owner, .. }) => {
                self.fixing = false;
                if self.status == Status::Member && owner.addr != self.me.addr {
                    // Every later finger whose target still lies before this owner has the
                    // same value; fill them and skip ahead.
                    let me = self.me.id;
                    let mut j = i;
                    while j < 256 && me.add_pow2(j as u32).in_half_open(me, owner.id) {
                        self.fingers[j] = Some(owner.clone());
                        j += 1;
                    }
                    self.refresh_finger_set();
                    if self.next_finger == (i + 1) % 256 && j > i + 1 {
                        self.next_finger = j % 256;
                    }
                }
            }
            (LookupKind::Finger(_), Step::Fail(_)) | (LookupKind::SuccCheck, Step::Fail(_)) => {
                self.fixing = false;
            }
            (LookupKind::SuccCheck, Step::Done { owner, .. }) => {
                self.fixing = false;
                let me = self.me.id;
                let better = self
                    .succs
                    .first()
                    .map(|s| owner.id.in_open(me, s.id))
                    .unwrap_or(false);
                if better && self.status == Status::Member && !self.stabilizing {
                    // [Stabilize] a closer successor: adopted only after it answers again.
                    self.stabilizing = true;
                    let base = self.succs.clone();
                    self.verify_next(vec![owner], base);
                }
            }
            (LookupKind::Merge, Step::Done { owner, .. }) => {
                if owner.addr == self.me.addr || owner.id == self.me.id {
                    // Their ring names us as the owner: it still holds an entry for us (a
                    // previous run at our address) that only time will clear; look again
                    // later rather than forget the member that leads to it.
                    if let Some(via) = self.merging.clone() {
                        self.merge_backoff(&via.addr);
                    }
                } else if let Some(via) = self.merging.take() {
                    // It answered and routed us: no longer lost (a false alarm, or merged).
                    self.lost.remove(&via.addr);
                    self.merge_found(via, owner);
                }
            }
            (LookupKind::Merge, Step::Fail(_)) => {
                if let Some(via) = self.merging.clone() {
                    self.merge_backoff(&via.addr);
                }
            }
            (_, Step::Continue) => {}
        }
    }

    /// (Join) The owner of our id answered: it is alive, so adopt it and its list.
    fn complete_join(&mut self, owner: Peer<A>, successors: Vec<Peer<A>>, pred: Option<Peer<A>>) {
        if self.status != Status::Joining {
            return;
        }
        if owner.id == self.me.id || owner.addr == self.me.addr {
            self.status = Status::Idle;
            self.event(Event::JoinFailed {
                reason: "a member with our id already exists".into(),
            });
            return;
        }
        let list = std::iter::once(owner.clone()).chain(successors);
        self.succs = self.sanitize_succs(list);
        if self.succs.is_empty() {
            self.status = Status::Idle;
            self.event(Event::JoinFailed {
                reason: "the owner of our id is not usable".into(),
            });
            return;
        }
        // The owner's predecessor precedes us: a provisional predecessor, replaced by rectify.
        self.preds.clear();
        if let Some(p) = pred {
            if p.addr != self.me.addr && self.me.id.in_open(p.id, owner.id) {
                self.preds = self.sanitize_preds(std::iter::once(p));
            }
        }
        self.status = Status::Member;
        let now = self.now;
        self.schedule_maintenance(now);
        self.event(Event::Joined);
    }
}
