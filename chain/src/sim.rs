//! A deterministic discrete-event simulator of one chain serving one key.
//!
//! It drives the same [`Replica`] state machine the node runs (with `A = u32`: replicas are
//! `0..`, clients `CLIENT_BASE + i`). Everything is seeded ([`ChaCha8Rng`]) and events are
//! ordered by `(time, sequence number)`, so a run replays exactly from its seed.
//!
//! - Network: each message gets a uniform latency in `[latency_min_ms, latency_max_ms]`; with
//!   probability `reorder` an extra delay up to `reorder_extra_max_ms` (so later messages
//!   overtake it); with probability `loss` it is lost. Messages to crashed replicas vanish.
//! - Clients: each runs `ops_per_client` operations one at a time: a read at a random member
//!   of the current view, or a compare-and-set at the head with the version from the
//!   client's last answer. A request without an answer in `client_timeout_ms` is retried with
//!   the same request id (at a new random member for reads); `NotHead` redirects,
//!   `Unavailable` retries after a short pause. An operation is recorded once, from its first
//!   invocation to its final answer; operations still unanswered at the end are recorded with
//!   an unknown outcome.
//!
//! Views come from one of two sources:
//!
//! - **Oracle** (`agreement: false`): the simulator hands views to replicas (each after its own
//!   random delay, so replicas switch epochs at different times). A crash (kill -9: the
//!   replica and its state are gone) is noticed after a detection delay and removes the member
//!   in a new view; a join creates an empty replica ([`Start::Join`]), possibly at a crashed
//!   replica's address, and inserts it at a random position. A crash never takes the last
//!   member that holds the state.
//! - **Agreement** (`agreement: true`): the replicas agree on views themselves
//!   ([`Config::view_agreement`]). The simulator models the ring: an ordered list of
//!   addresses, and for every replica the set of addresses its failure detector suspects
//!   (each replica notices a crash, a restart or a partition after its own delay). Whenever
//!   either changes, the replica gets a fresh [`Event::Suggest`]: the ring and its suspicions.
//!   On top of crashes and joins (at fresh addresses), it injects false suspicions (some
//!   members suspect a live member for a while; the member keeps running and serving),
//!   partitions (a minority of the view is cut off from the other replicas, not from the
//!   clients, then healed), and crashes timed during view changes. Different replicas learn
//!   of joins and suspicions at different times, so proposers with different suggestions run
//!   concurrently. Reads go to random live replicas of the ring, members or not, so a removed
//!   member that still answers would be seen. A crash is only injected while a majority of
//!   the newest view stays up and connected, and a member that holds the state remains.
//! - **Durable** (`durable: true`): replicas persist ([`Config::durable`]); the simulator
//!   keeps each address's [`Disk`], applying the `Persist` actions as it performs them. A
//!   crash loses the replica's memory; with probability `crash_mid_batch` it cuts the batch
//!   being performed after a random number of its actions. The replica restarts after
//!   `downtime_ms` with [`Start::Recover`] from its disk. `restart_plan` crashes given members
//!   one after another (each once the previous one serves again); `outage_at` crashes every
//!   replica at once and restarts them all. After every complete batch the simulator checks
//!   that the disk equals [`Replica::durable_image`].
//!
//! The recorded history goes to [`crate::linearizability::check`] ([`run_checked`]).

use crate::config::Config;
use crate::durable::Disk;
use crate::linearizability::{self, CheckError, Op, Operation, Outcome};
use crate::message::{Key, Reply, ReqId, Request, View};
use crate::replica::{Action, Event, Replica, ReplicaStats, Start};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// Client addresses start here.
pub const CLIENT_BASE: u32 = 1 << 20;

/// A member to crash and restart in a [`SimConfig::restart_plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    /// The head of the newest view.
    Head,
    /// The member in the middle of the newest view (of at least 3).
    Middle,
    /// The tail of the newest view.
    Tail,
    /// The replica at this address.
    Addr(u32),
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Every replica's configuration (`view_agreement` and `durable` are set from `agreement`
    /// and `durable` below).
    pub replica: Config,
    /// Initial chain length.
    pub chain_len: usize,
    /// Number of clients.
    pub clients: usize,
    /// Operations per client.
    pub ops_per_client: usize,
    /// Probability that an operation is a read.
    pub read_fraction: f64,
    /// Minimum one-way latency (ms).
    pub latency_min_ms: u64,
    /// Maximum one-way latency (ms).
    pub latency_max_ms: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message gets an extra delay (reordering).
    pub reorder: f64,
    /// Maximum extra delay (ms).
    pub reorder_extra_max_ms: u64,
    /// Maximum delay of a view's (oracle) or a suggestion's (agreement) delivery to each
    /// member (ms).
    pub view_latency_max_ms: u64,
    /// Crash detection delay range (ms); also how long a replica takes to notice a restart or
    /// a partition.
    pub detect_ms: (u64, u64),
    /// A client retries a request after this long without an answer (ms).
    pub client_timeout_ms: u64,
    /// Maximum pause between a client's operations (ms).
    pub think_max_ms: u64,
    /// Crashes, at random times in `churn_window_ms`.
    pub crashes: usize,
    /// Joins, at random times in `churn_window_ms`.
    pub joins: usize,
    /// When crashes and joins happen (ms).
    pub churn_window_ms: (u64, u64),
    /// Joins may reuse the address of a crashed replica (it comes back empty; oracle only).
    pub reuse_addresses: bool,
    /// Stop at this virtual time even if clients are not done (ms).
    pub max_time_ms: u64,
    /// Check every replica's invariants after every event.
    pub check_invariants: bool,
    /// Views by agreement among the replicas instead of the simulator as oracle.
    pub agreement: bool,
    /// Replicas persist; a crashed replica restarts from its disk after `downtime_ms`.
    pub durable: bool,
    /// How long a crashed replica stays down (durable, ms).
    pub downtime_ms: (u64, u64),
    /// Probability that a crash cuts the batch being performed short (durable).
    pub crash_mid_batch: f64,
    /// False suspicions (agreement), at random times in `churn_window_ms`.
    pub false_suspicions: usize,
    /// How long a false suspicion lasts (ms).
    pub suspicion_ms: (u64, u64),
    /// Partitions of a minority of the view (agreement), in `churn_window_ms`.
    pub partitions: usize,
    /// How long a partition lasts (ms).
    pub partition_ms: (u64, u64),
    /// Time the crashes within 150 ms after a join, a false suspicion or a partition, that is
    /// during the view change it causes (agreement).
    pub crash_during_change: bool,
    /// Members crashed and restarted one after another, from the start of
    /// `churn_window_ms` (durable).
    pub restart_plan: Vec<Victim>,
    /// Every replica crashes at this time (within 20 ms) and restarts (durable).
    pub outage_at: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            replica: Config {
                request_timeout_ms: 1_000,
                ..Config::default()
            },
            chain_len: 3,
            clients: 3,
            ops_per_client: 200,
            read_fraction: 0.5,
            latency_min_ms: 1,
            latency_max_ms: 10,
            loss: 0.02,
            reorder: 0.1,
            reorder_extra_max_ms: 40,
            view_latency_max_ms: 30,
            detect_ms: (50, 200),
            client_timeout_ms: 200,
            think_max_ms: 10,
            crashes: 1,
            joins: 1,
            churn_window_ms: (1_000, 5_000),
            reuse_addresses: true,
            max_time_ms: 300_000,
            check_invariants: true,
            agreement: false,
            durable: false,
            downtime_ms: (100, 1_000),
            crash_mid_batch: 0.5,
            false_suspicions: 0,
            suspicion_ms: (200, 1_500),
            partitions: 0,
            partition_ms: (300, 2_000),
            crash_during_change: false,
            restart_plan: Vec::new(),
            outage_at: None,
        }
    }
}

impl SimConfig {
    /// Views by agreement (chain of 3, 3 clients x 200 operations): one join, two false
    /// suspicions, one partition of a minority, and one crash timed during a view change, in
    /// 1-5 s; loss, reordering and delays as by default.
    pub fn agreement_churn(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            agreement: true,
            crashes: 1,
            joins: 1,
            false_suspicions: 2,
            partitions: 1,
            crash_during_change: true,
            ..SimConfig::default()
        }
    }

    /// Agreement with persistence: the head, a middle member and the tail of the newest view
    /// are crashed (kill -9, sometimes in the middle of a batch) and restarted from disk one
    /// after another, plus one false suspicion; no joins.
    pub fn durable_restarts(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            agreement: true,
            durable: true,
            crashes: 0,
            joins: 0,
            false_suspicions: 1,
            restart_plan: vec![Victim::Head, Victim::Middle, Victim::Tail],
            churn_window_ms: (500, 4_000),
            ..SimConfig::default()
        }
    }

    /// Agreement with persistence: every replica is killed at once at a random time in
    /// 1-4 s (some in the middle of a batch) and all restart from disk.
    pub fn outage(seed: u64) -> SimConfig {
        let mut cfg = SimConfig {
            seed,
            agreement: true,
            durable: true,
            crashes: 0,
            joins: 0,
            ..SimConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        cfg.outage_at = Some(rng.gen_range(1_000..=4_000));
        cfg
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Every client operation, in invocation order.
    #[serde(skip)]
    pub history: Vec<Operation>,
    /// Operations answered definitively.
    pub ops_completed: usize,
    /// Operations without an answer at the end (unknown outcome).
    pub ops_unknown: usize,
    /// Operations refused for good (not part of the history).
    pub ops_rejected: usize,
    /// Reads answered.
    pub reads: usize,
    /// Compare-and-sets answered `Ok`.
    pub cas_ok: usize,
    /// Compare-and-sets answered `Conflict`.
    pub cas_conflict: usize,
    /// Client retries (timeouts, redirects, unavailable answers).
    pub client_retries: u64,
    /// Virtual time at the end (ms).
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
    /// Messages sent (replica and client).
    pub messages: u64,
    /// Messages lost or sent to crashed replicas.
    pub dropped: u64,
    /// Views issued by the oracle, or distinct views installed under agreement.
    pub views: u64,
    /// Replicas crashed (in order; an address appears once per crash).
    pub crashed: Vec<u32>,
    /// Replicas joined: (address, position in the ring or view, its length then).
    pub joined: Vec<(u32, usize, usize)>,
    /// Counters summed over every replica that ever ran.
    pub replicas: ReplicaStats,
    /// The first replica invariant violation (or disk that differs from the replica's
    /// durable image).
    pub invariant_violation: Option<String>,
    /// Agreement: epochs for which two different views were installed (must stay 0).
    pub view_conflicts: u64,
    /// The newest epoch installed.
    pub max_epoch: u64,
    /// Restarts from disk.
    pub restarts: usize,
    /// Crashes that cut a batch short.
    pub mid_batch_crashes: usize,
    /// False suspicions injected.
    pub false_suspicions: usize,
    /// Partitions injected.
    pub partitions: usize,
    /// Steps of the restart plan completed (the victim served again).
    pub plan_steps_done: usize,
    /// Outages (every replica down at once).
    pub outages: usize,
    /// When the last injected disruption ended (ms): crash, restart, join, suspicion,
    /// partition or heal.
    pub last_disruption_ms: u64,
    /// Compare-and-sets invoked after `last_disruption_ms` that succeeded.
    pub cas_ok_after_disruption: usize,
    /// Operations invoked after `last_disruption_ms`.
    pub ops_after_disruption: usize,
}

impl SimReport {
    /// Fraction of reads (decided at a replica) served from a clean local version.
    pub fn local_read_fraction(&self) -> f64 {
        let total = self.replicas.reads_local + self.replicas.reads_tail_query;
        if total == 0 {
            return 1.0;
        }
        self.replicas.reads_local as f64 / total as f64
    }

    /// The same among reads decided at members other than the tail (CRAQ's gain: without
    /// it, all of these would have to go to the tail).
    pub fn local_read_fraction_off_tail(&self) -> f64 {
        let local = self.replicas.reads_local - self.replicas.reads_local_at_tail;
        let total = local + self.replicas.reads_tail_query;
        if total == 0 {
            return 1.0;
        }
        local as f64 / total as f64
    }

    /// Total operations asked.
    pub fn ops_total(&self) -> usize {
        self.ops_completed + self.ops_unknown + self.ops_rejected
    }
}

/// Why a replica suspects another (agreement).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    Crash,
    False(u32),
    Part(u32),
}

#[derive(Debug)]
enum Ev {
    Replica {
        to: u32,
        event: Event<u32>,
    },
    Reply {
        client: usize,
        id: ReqId,
        reply: Reply<u32>,
    },
    Timer {
        node: u32,
        at: u64,
    },
    ClientWake {
        client: usize,
        gen: u64,
    },
    Crash {
        attempts: u32,
    },
    Remove {
        node: u32,
    },
    Join,
    /// Hand `to` a fresh suggestion.
    Suggest {
        to: u32,
    },
    /// `r` starts (`on`) or stops suspecting `a`; a crash suspicion applies only while `a`
    /// is still down in incarnation `inc`.
    Suspect {
        r: u32,
        a: u32,
        reason: Reason,
        on: bool,
        inc: u64,
    },
    Restart {
        node: u32,
        inc: u64,
    },
    /// The fallback of a crash that waits to cut a batch short.
    Kill {
        node: u32,
        inc: u64,
    },
    FalseSuspicion {
        attempts: u32,
    },
    EndSuspicion {
        pairs: Vec<(u32, u32)>,
        id: u32,
    },
    Partition {
        attempts: u32,
    },
    Heal {
        id: u32,
    },
    PlanStep {
        step: usize,
        attempts: u32,
    },
    PlanWait {
        step: usize,
        victim: u32,
        since: u64,
    },
    Outage,
    /// One replica's crash in an outage (no policy: everyone goes down).
    OutageKill {
        node: u32,
    },
}

struct Entry {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

struct Node {
    replica: Replica<u32>,
    timer: Option<u64>,
    /// Crash while performing its next batch.
    dying: bool,
}

struct Cur {
    hist: usize,
    req: Request,
    hint: Option<u32>,
}

struct Client {
    id: u64,
    addr: u32,
    seq: u64,
    started: usize,
    cur: Option<Cur>,
    last_version: u64,
    gen: u64,
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Entry>>,
    nodes: Vec<Option<Node>>,
    /// Crashed addresses already removed from the view (a join may reuse them; oracle).
    reusable: Vec<u32>,
    /// The oracle's view.
    view: View<u32>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    rejected: Vec<bool>,
    report: SimReport,
    key: Key,
    // ----- agreement and durability -----
    /// The ring around the key, in order (every address that ever took part).
    ring: Vec<u32>,
    /// (replica, suspected address, reason).
    suspects: BTreeSet<(u32, u32, Reason)>,
    /// Crashes per address.
    incarnation: Vec<u64>,
    /// Each address's disk.
    disks: Vec<Disk<u32>>,
    /// The newest view any replica installed.
    newest: View<u32>,
    /// The view installed for each epoch.
    installed: BTreeMap<u64, View<u32>>,
    /// The active partition: its id and the cut-off replicas.
    cut: Option<(u32, Vec<u32>)>,
    next_id: u32,
    /// Crashes still to be timed during view changes.
    change_crashes: usize,
}

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> SimReport {
    let mut sim = Sim::new(cfg.clone());
    sim.run();
    sim.finish()
}

/// Runs one simulation and checks its history for linearizability.
pub fn run_checked(cfg: &SimConfig) -> (SimReport, Result<(), CheckError>) {
    let report = run(cfg);
    let verdict = linearizability::check(&report.history);
    (report, verdict)
}

impl Sim {
    fn new(mut cfg: SimConfig) -> Sim {
        cfg.replica.view_agreement = cfg.agreement;
        cfg.replica.durable = cfg.durable;
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = cfg.chain_len.max(1);
        let nodes = (0..n as u32)
            .map(|a| {
                Some(Node {
                    replica: Replica::new(a, cfg.replica.clone(), Start::Bootstrap),
                    timer: None,
                    dying: false,
                })
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|i| Client {
                id: 100 + i as u64,
                addr: CLIENT_BASE + i as u32,
                seq: 0,
                started: 0,
                cur: None,
                last_version: 0,
                gen: 0,
            })
            .collect();
        let report = SimReport {
            seed: cfg.seed,
            ..SimReport::default()
        };
        let founding = View::new(1, (0..n as u32).collect());
        Sim {
            view: founding.clone(),
            newest: founding,
            ring: (0..n as u32).collect(),
            suspects: BTreeSet::new(),
            incarnation: vec![0; n],
            disks: vec![Disk::default(); n],
            installed: BTreeMap::new(),
            cut: None,
            next_id: 0,
            change_crashes: 0,
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            reusable: Vec::new(),
            clients,
            history: Vec::new(),
            rejected: Vec::new(),
            report,
            key: b"root-record".to_vec(),
        }
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Entry {
            t,
            seq: self.seq,
            ev,
        }));
    }

    fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        self.rng.gen_range(lo..=hi.max(lo))
    }

    /// Latency of one message, or None if it is lost.
    fn latency(&mut self) -> Option<u64> {
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss.min(1.0)) {
            return None;
        }
        let (lo, hi) = (
            self.cfg.latency_min_ms,
            self.cfg.latency_max_ms.max(self.cfg.latency_min_ms),
        );
        let mut d = self.rng.gen_range(lo..=hi);
        if self.cfg.reorder > 0.0 && self.rng.gen_bool(self.cfg.reorder.min(1.0)) {
            d += self.rng.gen_range(0..=self.cfg.reorder_extra_max_ms);
        }
        Some(d)
    }

    fn send_to_replica(&mut self, to: u32, event: Event<u32>) {
        self.report.messages += 1;
        match self.latency() {
            Some(d) => self.push(self.now + d, Ev::Replica { to, event }),
            None => self.report.dropped += 1,
        }
    }

    /// Whether the partition lets `a` and `b` talk (replicas only; clients reach everyone).
    fn linked(&self, a: u32, b: u32) -> bool {
        match &self.cut {
            Some((_, p)) => p.contains(&a) == p.contains(&b),
            None => true,
        }
    }

    fn alive(&self, a: u32) -> bool {
        self.nodes
            .get(a as usize)
            .and_then(|n| n.as_ref())
            .is_some_and(|n| !n.dying)
    }

    fn replica(&self, a: u32) -> Option<&Replica<u32>> {
        self.nodes
            .get(a as usize)
            .and_then(|n| n.as_ref())
            .map(|n| &n.replica)
    }

    fn broadcast_view(&mut self) {
        self.report.views += 1;
        let view = self.view.clone();
        for &m in &view.members {
            let d = self.rng.gen_range(1..=self.cfg.view_latency_max_ms.max(1));
            self.push(
                self.now + d,
                Ev::Replica {
                    to: m,
                    event: Event::View(view.clone()),
                },
            );
        }
    }

    fn disrupted(&mut self) {
        self.report.last_disruption_ms = self.now;
    }

    fn run(&mut self) {
        // The founding view reaches everyone at once.
        let view = self.view.clone();
        if !self.cfg.agreement {
            self.report.views += 1;
        }
        for &m in &view.members {
            self.deliver(m, Event::View(view.clone()));
            if self.cfg.agreement {
                self.deliver_suggestion(m);
            }
        }
        for c in 0..self.clients.len() {
            let d = self.rng.gen_range(0..=self.cfg.think_max_ms);
            self.push(d, Ev::ClientWake { client: c, gen: 0 });
        }
        let window = self.cfg.churn_window_ms;
        if self.cfg.agreement && self.cfg.crash_during_change {
            self.change_crashes = self.cfg.crashes;
        } else {
            for _ in 0..self.cfg.crashes {
                let t = self.range(window);
                self.push(t, Ev::Crash { attempts: 0 });
            }
        }
        for _ in 0..self.cfg.joins {
            let t = self.range(window);
            self.push(t, Ev::Join);
        }
        if self.cfg.agreement {
            for _ in 0..self.cfg.false_suspicions {
                let t = self.range(window);
                self.push(t, Ev::FalseSuspicion { attempts: 0 });
            }
            for _ in 0..self.cfg.partitions {
                let t = self.range(window);
                self.push(t, Ev::Partition { attempts: 0 });
            }
        }
        if self.cfg.durable {
            if !self.cfg.restart_plan.is_empty() {
                self.push(
                    window.0,
                    Ev::PlanStep {
                        step: 0,
                        attempts: 0,
                    },
                );
            }
            if let Some(t) = self.cfg.outage_at {
                self.push(t, Ev::Outage);
            }
        }
        while let Some(Reverse(e)) = self.queue.pop() {
            if e.t > self.cfg.max_time_ms {
                break;
            }
            self.now = e.t;
            self.report.events += 1;
            self.step(e.ev);
            if self.all_done() {
                break;
            }
        }
        self.report.end_ms = self.now;
    }

    fn all_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.cur.is_none() && c.started >= self.cfg.ops_per_client)
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Replica { to, event } => self.deliver(to, event),
            Ev::Reply { client, id, reply } => self.on_reply(client, id, reply),
            Ev::Timer { node, at } => {
                let due = self
                    .nodes
                    .get(node as usize)
                    .and_then(|n| n.as_ref())
                    .is_some_and(|n| n.timer == Some(at));
                if due {
                    if let Some(Some(n)) = self.nodes.get_mut(node as usize) {
                        n.timer = None;
                    }
                    self.deliver(node, Event::Timer);
                }
            }
            Ev::ClientWake { client, gen } => {
                if self.clients[client].gen == gen {
                    self.client_wake(client);
                }
            }
            Ev::Crash { attempts } => {
                if self.cfg.agreement {
                    self.crash_agreement(attempts);
                } else {
                    self.crash(attempts);
                }
            }
            Ev::Remove { node } => {
                if let Some(p) = self.view.position(&node) {
                    self.view.members.remove(p);
                    self.view.epoch += 1;
                    self.broadcast_view();
                }
                self.reusable.push(node);
            }
            Ev::Join => {
                if self.cfg.agreement {
                    self.join_agreement();
                } else {
                    self.join();
                }
            }
            Ev::Suggest { to } => self.deliver_suggestion(to),
            Ev::Suspect {
                r,
                a,
                reason,
                on,
                inc,
            } => self.suspect(r, a, reason, on, inc),
            Ev::Restart { node, inc } => self.restart(node, inc),
            Ev::Kill { node, inc } => {
                let dying = self
                    .nodes
                    .get(node as usize)
                    .and_then(|n| n.as_ref())
                    .is_some_and(|n| n.dying);
                if dying && self.incarnation[node as usize] == inc {
                    self.kill(node);
                }
            }
            Ev::FalseSuspicion { attempts } => self.false_suspicion(attempts),
            Ev::EndSuspicion { pairs, id } => {
                self.disrupted();
                for (r, a) in pairs {
                    self.suspects.remove(&(r, a, Reason::False(id)));
                    self.push(self.now, Ev::Suggest { to: r });
                }
            }
            Ev::Partition { attempts } => self.partition(attempts),
            Ev::Heal { id } => self.heal(id),
            Ev::PlanStep { step, attempts } => self.plan_step(step, attempts),
            Ev::PlanWait {
                step,
                victim,
                since,
            } => self.plan_wait(step, victim, since),
            Ev::Outage => {
                self.report.outages += 1;
                for a in 0..self.nodes.len() as u32 {
                    if self.alive(a) {
                        let d = self.rng.gen_range(0..=20);
                        self.push(self.now + d, Ev::OutageKill { node: a });
                    }
                }
            }
            Ev::OutageKill { node } => {
                if self.alive(node) {
                    self.crash_node(node);
                }
            }
        }
    }

    fn deliver(&mut self, to: u32, event: Event<u32>) {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(to as usize) else {
            self.report.dropped += 1;
            return;
        };
        let actions = node.replica.handle(now, event);
        let dying = node.dying;
        // A crash in the middle of the batch: only a prefix of its actions is performed.
        let keep = if dying {
            self.rng.gen_range(0..=actions.len())
        } else {
            actions.len()
        };
        for act in actions.into_iter().take(keep) {
            self.perform(to, act);
        }
        if dying {
            self.report.mid_batch_crashes += 1;
            self.kill(to);
            return;
        }
        let Some(Some(node)) = self.nodes.get(to as usize) else {
            return;
        };
        if self.cfg.check_invariants && self.report.invariant_violation.is_none() {
            if let Err(e) = node.replica.check_invariants() {
                self.report.invariant_violation = Some(format!("replica {to} at {now} ms: {e}"));
            } else if self.cfg.durable && !self.cfg.replica.unsafe_persist_late {
                let image = node.replica.durable_image();
                if self.disks[to as usize].recovered() != image {
                    self.report.invariant_violation = Some(format!(
                        "replica {to} at {now} ms: disk differs from memory"
                    ));
                }
            }
        }
    }

    fn perform(&mut self, from: u32, act: Action<u32>) {
        let now = self.now;
        match act {
            Action::Send { to: dst, msg } => {
                if self.linked(from, dst) {
                    self.send_to_replica(dst, Event::Message { from, msg });
                } else {
                    self.report.messages += 1;
                    self.report.dropped += 1;
                }
            }
            Action::Reply { to: dst, id, reply } => {
                self.report.messages += 1;
                let Some(client) = dst.checked_sub(CLIENT_BASE).map(|c| c as usize) else {
                    return;
                };
                match self.latency() {
                    Some(d) => self.push(now + d, Ev::Reply { client, id, reply }),
                    None => self.report.dropped += 1,
                }
            }
            Action::SetTimer { at } => {
                if let Some(Some(n)) = self.nodes.get_mut(from as usize) {
                    n.timer = Some(at);
                }
                self.push(at.max(now), Ev::Timer { node: from, at });
            }
            Action::NewerEpoch { .. } => {}
            Action::Persist(w) => {
                if let Some(d) = self.disks.get_mut(from as usize) {
                    d.apply(&w);
                }
            }
            Action::ViewInstalled(v) => {
                match self.installed.get(&v.epoch) {
                    Some(old) if *old != v => self.report.view_conflicts += 1,
                    Some(_) => {}
                    None => {
                        if self.cfg.agreement {
                            self.report.views += 1;
                        }
                        self.installed.insert(v.epoch, v.clone());
                    }
                }
                if v.epoch > self.newest.epoch {
                    self.report.max_epoch = v.epoch;
                    self.newest = v;
                }
            }
        }
    }

    // ----- the oracle -----

    fn crash(&mut self, attempts: u32) {
        // A member whose loss leaves another member holding the state.
        let members = self.view.members.clone();
        let ready = |s: &Sim, a: u32| s.replica(a).is_some_and(|r| r.is_ready());
        let candidates: Vec<u32> = members
            .iter()
            .copied()
            .filter(|&a| self.nodes.get(a as usize).is_some_and(|n| n.is_some()))
            .filter(|&a| members.iter().any(|&b| b != a && ready(self, b)))
            .collect();
        if candidates.is_empty() {
            if attempts < 100 {
                self.push(
                    self.now + 100,
                    Ev::Crash {
                        attempts: attempts + 1,
                    },
                );
            }
            return;
        }
        let victim = candidates[self.rng.gen_range(0..candidates.len())];
        if let Some(slot) = self.nodes.get_mut(victim as usize) {
            if let Some(n) = slot.take() {
                self.report.replicas.add(n.replica.stats());
            }
        }
        self.report.crashed.push(victim);
        let (lo, hi) = self.cfg.detect_ms;
        let d = self.rng.gen_range(lo..=hi.max(lo));
        self.push(self.now + d, Ev::Remove { node: victim });
    }

    fn join(&mut self) {
        let addr =
            if self.cfg.reuse_addresses && !self.reusable.is_empty() && self.rng.gen_bool(0.5) {
                let i = self.rng.gen_range(0..self.reusable.len());
                self.reusable.swap_remove(i)
            } else {
                self.nodes.push(None);
                self.incarnation.push(0);
                self.disks.push(Disk::default());
                (self.nodes.len() - 1) as u32
            };
        self.nodes[addr as usize] = Some(Node {
            replica: Replica::new(addr, self.cfg.replica.clone(), Start::Join),
            timer: None,
            dying: false,
        });
        let pos = self.rng.gen_range(0..=self.view.members.len());
        self.view.members.insert(pos, addr);
        self.view.epoch += 1;
        self.report
            .joined
            .push((addr, pos, self.view.members.len()));
        self.broadcast_view();
    }

    // ----- the ring (agreement) -----

    fn deliver_suggestion(&mut self, to: u32) {
        if !self.alive(to) {
            return;
        }
        let members = self.ring.clone();
        let mut suspected: Vec<u32> = self
            .suspects
            .range((to, 0, Reason::Crash)..)
            .take_while(|(r, _, _)| *r == to)
            .map(|(_, a, _)| *a)
            .collect();
        suspected.dedup();
        self.deliver(to, Event::Suggest { members, suspected });
    }

    fn suspect(&mut self, r: u32, a: u32, reason: Reason, on: bool, inc: u64) {
        let applies = match reason {
            Reason::Crash if on => {
                self.incarnation[a as usize] == inc
                    && self.nodes.get(a as usize).is_some_and(|n| n.is_none())
            }
            Reason::Part(id) if on => self.cut.as_ref().is_some_and(|(c, _)| *c == id),
            _ => true,
        };
        if !applies {
            return;
        }
        let changed = if on {
            self.suspects.insert((r, a, reason))
        } else {
            self.suspects.remove(&(r, a, reason))
        };
        if changed {
            self.deliver_suggestion(r);
        }
    }

    /// What `r` would propose: the ring without what it suspects.
    fn target_of(&self, r: u32) -> Vec<u32> {
        self.ring
            .iter()
            .copied()
            .filter(|&a| {
                !self
                    .suspects
                    .range((r, a, Reason::Crash)..)
                    .next()
                    .is_some_and(|(r2, a2, _)| *r2 == r && *a2 == a)
            })
            .collect()
    }

    /// Whether `x` may go down now (see [`Sim::viable`]).
    fn safe_to_lose(&self, x: u32) -> bool {
        self.viable(&[x], &[])
    }

    /// Whether the chain can still move on if the replicas in `down` become unavailable and
    /// each `(r, a)` in `suspicions` makes `r` suspect `a`: a majority of the newest view is
    /// up and connected, with a member that holds the state in that view; and so is a
    /// majority of every view that may be installed next (a proposal some member accepted or
    /// is proposing, or what a member would propose from its suggestion).
    fn viable(&self, down: &[u32], suspicions: &[(u32, u32)]) -> bool {
        let v = &self.newest;
        let avail = |a: u32| {
            !down.contains(&a)
                && self.alive(a)
                && !self.cut.as_ref().is_some_and(|(_, p)| p.contains(&a))
        };
        let majority_up = |members: &[u32], r: u32| {
            let kept: Vec<u32> = members
                .iter()
                .copied()
                .filter(|&a| !suspicions.contains(&(r, a)))
                .collect();
            kept.is_empty() || kept.iter().filter(|&&a| avail(a)).count() > kept.len() / 2
        };
        let holder = v.members.iter().any(|&a| {
            avail(a)
                && self
                    .replica(a)
                    .is_some_and(|r| r.is_ready() && r.epoch() == v.epoch)
        });
        if !holder || !majority_up(&v.members, u32::MAX) {
            return false;
        }
        for &m in &v.members {
            let Some(r) = self.replica(m) else { continue };
            // Proposals survive their proposer (its accept requests may be under way).
            if let (_, Some(p)) = r.acceptor_state() {
                if !majority_up(&p.view.members, u32::MAX) {
                    return false;
                }
            }
            let (suggestion, proposing) = r.proposer_state();
            if proposing.is_some_and(|p| !majority_up(&p.view.members, u32::MAX)) {
                return false;
            }
            if !avail(m) {
                continue;
            }
            if suggestion.is_some_and(|t| !majority_up(t, m)) {
                return false;
            }
            if !majority_up(&self.target_of(m), m) {
                return false;
            }
        }
        true
    }

    fn crash_agreement(&mut self, attempts: u32) {
        let candidates: Vec<u32> = self
            .newest
            .members
            .iter()
            .copied()
            .filter(|&a| self.alive(a) && self.safe_to_lose(a))
            .collect();
        if candidates.is_empty() {
            if attempts < 100 {
                self.push(
                    self.now + 100,
                    Ev::Crash {
                        attempts: attempts + 1,
                    },
                );
            }
            return;
        }
        let victim = candidates[self.rng.gen_range(0..candidates.len())];
        self.crash_node(victim);
    }

    /// Crashes `x`, at once or (durable, sometimes) in the middle of its next batch.
    fn crash_node(&mut self, x: u32) {
        if self.cfg.durable
            && self.cfg.crash_mid_batch > 0.0
            && self.rng.gen_bool(self.cfg.crash_mid_batch.min(1.0))
        {
            if let Some(Some(n)) = self.nodes.get_mut(x as usize) {
                n.dying = true;
                let inc = self.incarnation[x as usize];
                self.push(self.now + 50, Ev::Kill { node: x, inc });
                return;
            }
        }
        self.kill(x);
    }

    /// The replica at `x` loses its memory; its disk survives.
    fn kill(&mut self, x: u32) {
        let Some(n) = self.nodes.get_mut(x as usize).and_then(Option::take) else {
            return;
        };
        self.disrupted();
        self.report.replicas.add(n.replica.stats());
        self.report.crashed.push(x);
        self.incarnation[x as usize] += 1;
        let inc = self.incarnation[x as usize];
        if self.cfg.agreement {
            for r in 0..self.nodes.len() as u32 {
                if r != x && self.alive(r) {
                    let d = self.range(self.cfg.detect_ms);
                    self.push(
                        self.now + d,
                        Ev::Suspect {
                            r,
                            a: x,
                            reason: Reason::Crash,
                            on: true,
                            inc,
                        },
                    );
                }
            }
        }
        if self.cfg.durable {
            let d = self.range(self.cfg.downtime_ms);
            self.push(self.now + d, Ev::Restart { node: x, inc });
        }
    }

    fn restart(&mut self, x: u32, inc: u64) {
        if self.incarnation[x as usize] != inc || self.nodes[x as usize].is_some() {
            return;
        }
        self.disrupted();
        self.report.restarts += 1;
        let rec = self.disks[x as usize].recovered();
        self.nodes[x as usize] = Some(Node {
            replica: Replica::new(x, self.cfg.replica.clone(), Start::Recover(Box::new(rec))),
            timer: None,
            dying: false,
        });
        if !self.cfg.agreement {
            return;
        }
        // It sees the replicas that are up; the others notice it after a while.
        let stale: Vec<(u32, u32, Reason)> = self
            .suspects
            .range((x, 0, Reason::Crash)..)
            .take_while(|(r, _, _)| *r == x)
            .filter(|(_, a, why)| *why == Reason::Crash && self.alive(*a))
            .copied()
            .collect();
        for k in stale {
            self.suspects.remove(&k);
        }
        for r in 0..self.nodes.len() as u32 {
            if r != x && self.alive(r) {
                let d = self.range(self.cfg.detect_ms);
                self.push(
                    self.now + d,
                    Ev::Suspect {
                        r,
                        a: x,
                        reason: Reason::Crash,
                        on: false,
                        inc,
                    },
                );
            }
        }
        self.deliver_suggestion(x);
        // The restarted replica needs its timer running.
        self.deliver(x, Event::Timer);
    }

    fn join_agreement(&mut self) {
        self.disrupted();
        self.nodes.push(None);
        self.incarnation.push(0);
        self.disks.push(Disk::default());
        let addr = (self.nodes.len() - 1) as u32;
        self.nodes[addr as usize] = Some(Node {
            replica: Replica::new(addr, self.cfg.replica.clone(), Start::Join),
            timer: None,
            dying: false,
        });
        let pos = self.rng.gen_range(0..=self.ring.len());
        self.ring.insert(pos, addr);
        self.report.joined.push((addr, pos, self.ring.len()));
        // The newcomer does not see what is down or cut off.
        for a in self.ring.clone() {
            if a != addr && self.nodes[a as usize].is_none() {
                self.suspects.insert((addr, a, Reason::Crash));
            }
        }
        if let Some((id, p)) = self.cut.clone() {
            for a in p {
                self.suspects.insert((addr, a, Reason::Part(id)));
            }
        }
        // Each replica learns of the newcomer at its own time.
        for r in 0..self.nodes.len() as u32 {
            if self.alive(r) {
                let d = self.rng.gen_range(1..=self.cfg.view_latency_max_ms.max(1));
                self.push(self.now + d, Ev::Suggest { to: r });
            }
        }
        self.crash_soon();
    }

    /// With `crash_during_change`: a crash shortly after a change started.
    fn crash_soon(&mut self) {
        if self.change_crashes > 0 {
            self.change_crashes -= 1;
            let d = self.rng.gen_range(5..=150);
            self.push(self.now + d, Ev::Crash { attempts: 0 });
        }
    }

    fn false_suspicion(&mut self, attempts: u32) {
        let members: Vec<u32> = self
            .newest
            .members
            .iter()
            .copied()
            .filter(|&a| self.alive(a))
            .collect();
        let retry = |s: &mut Sim| {
            if attempts < 50 {
                s.push(
                    s.now + 200,
                    Ev::FalseSuspicion {
                        attempts: attempts + 1,
                    },
                );
            }
        };
        if members.len() < 2 {
            retry(self);
            return;
        }
        let x = members[self.rng.gen_range(0..members.len())];
        let others: Vec<u32> = members.iter().copied().filter(|&a| a != x).collect();
        let mut who: Vec<u32> = others
            .iter()
            .copied()
            .filter(|_| self.rng.gen_bool(0.5))
            .collect();
        if who.is_empty() {
            who.push(others[self.rng.gen_range(0..others.len())]);
        }
        let pairs: Vec<(u32, u32)> = who.iter().map(|&r| (r, x)).collect();
        if !self.viable(&[], &pairs) {
            // It would leave the chain without a majority (another fault is under way).
            retry(self);
            return;
        }
        self.disrupted();
        self.next_id += 1;
        let id = self.next_id;
        self.report.false_suspicions += 1;
        let mut pairs = Vec::new();
        for r in who {
            self.suspects.insert((r, x, Reason::False(id)));
            pairs.push((r, x));
            self.deliver_suggestion(r);
        }
        let d = self.range(self.cfg.suspicion_ms);
        self.push(self.now + d, Ev::EndSuspicion { pairs, id });
        self.crash_soon();
    }

    fn partition(&mut self, attempts: u32) {
        let v = self.newest.clone();
        let max_cut = (v.members.len().saturating_sub(1)) / 2;
        if self.cut.is_some() || max_cut == 0 {
            if attempts < 50 {
                self.push(
                    self.now + 200,
                    Ev::Partition {
                        attempts: attempts + 1,
                    },
                );
            }
            return;
        }
        let k = self.rng.gen_range(1..=max_cut);
        let mut pool: Vec<u32> = v.members.clone();
        let mut p = Vec::new();
        for _ in 0..k {
            let i = self.rng.gen_range(0..pool.len());
            p.push(pool.swap_remove(i));
        }
        // The majority side must be able to move on without the cut-off replicas.
        let pairs: Vec<(u32, u32)> = (0..self.nodes.len() as u32)
            .filter(|r| !p.contains(r))
            .flat_map(|r| p.iter().map(move |&a| (r, a)))
            .collect();
        if !self.viable(&p, &pairs) {
            if attempts < 50 {
                self.push(
                    self.now + 200,
                    Ev::Partition {
                        attempts: attempts + 1,
                    },
                );
            }
            return;
        }
        self.disrupted();
        self.next_id += 1;
        let id = self.next_id;
        self.report.partitions += 1;
        self.cut = Some((id, p.clone()));
        for r in 0..self.nodes.len() as u32 {
            for a in 0..self.nodes.len() as u32 {
                if r != a && p.contains(&r) != p.contains(&a) {
                    let d = self.range(self.cfg.detect_ms);
                    self.push(
                        self.now + d,
                        Ev::Suspect {
                            r,
                            a,
                            reason: Reason::Part(id),
                            on: true,
                            inc: 0,
                        },
                    );
                }
            }
        }
        let d = self.range(self.cfg.partition_ms);
        self.push(self.now + d, Ev::Heal { id });
        self.crash_soon();
    }

    fn heal(&mut self, id: u32) {
        if self.cut.as_ref().is_none_or(|(c, _)| *c != id) {
            return;
        }
        self.disrupted();
        self.cut = None;
        let pairs: Vec<(u32, u32)> = self
            .suspects
            .iter()
            .filter(|(_, _, why)| *why == Reason::Part(id))
            .map(|(r, a, _)| (*r, *a))
            .collect();
        for (r, a) in pairs {
            let d = self.range(self.cfg.detect_ms);
            self.push(
                self.now + d,
                Ev::Suspect {
                    r,
                    a,
                    reason: Reason::Part(id),
                    on: false,
                    inc: 0,
                },
            );
        }
    }

    // ----- the restart plan (durable) -----

    fn plan_step(&mut self, step: usize, attempts: u32) {
        let Some(&target) = self.cfg.restart_plan.get(step) else {
            return;
        };
        let m = &self.newest.members;
        let victim = match target {
            Victim::Head => m.first().copied(),
            Victim::Tail => m.last().copied(),
            Victim::Middle if m.len() >= 3 => Some(m[m.len() / 2]),
            Victim::Middle => None,
            Victim::Addr(a) => Some(a),
        };
        let ok = victim.is_some_and(|v| {
            self.alive(v) && (!self.cfg.agreement || self.safe_to_lose(v) || m.len() == 1)
        });
        let Some(victim) = victim.filter(|_| ok) else {
            if attempts < 200 {
                self.push(
                    self.now + 100,
                    Ev::PlanStep {
                        step,
                        attempts: attempts + 1,
                    },
                );
            }
            return;
        };
        self.crash_node(victim);
        self.push(
            self.now + 50,
            Ev::PlanWait {
                step,
                victim,
                since: self.now,
            },
        );
    }

    /// The next step waits until the victim serves again in the newest view.
    fn plan_wait(&mut self, step: usize, victim: u32, since: u64) {
        let back = self
            .replica(victim)
            .is_some_and(|r| r.is_ready() && r.epoch() == self.newest.epoch);
        if back || self.now > since + 30_000 {
            if back {
                self.report.plan_steps_done += 1;
            }
            self.push(
                self.now + 200,
                Ev::PlanStep {
                    step: step + 1,
                    attempts: 0,
                },
            );
        } else {
            self.push(
                self.now + 50,
                Ev::PlanWait {
                    step,
                    victim,
                    since,
                },
            );
        }
    }

    // ----- clients -----

    /// Where clients find the chain: the oracle's view, or the newest installed one.
    fn directory(&self) -> &View<u32> {
        if self.cfg.agreement {
            &self.newest
        } else {
            &self.view
        }
    }

    fn client_wake(&mut self, c: usize) {
        if self.clients[c].cur.is_none() {
            if self.clients[c].started >= self.cfg.ops_per_client {
                return;
            }
            self.start_op(c);
        } else {
            self.report.client_retries += 1;
        }
        self.send_current(c);
    }

    fn start_op(&mut self, c: usize) {
        let read = self.rng.gen_bool(self.cfg.read_fraction.clamp(0.0, 1.0));
        let cl = &mut self.clients[c];
        cl.seq += 1;
        cl.started += 1;
        let (req, op) = if read {
            (
                Request::Read {
                    key: self.key.clone(),
                },
                Op::Read,
            )
        } else {
            let value = format!("c{}-{}", cl.id, cl.seq).into_bytes();
            (
                Request::Cas {
                    key: self.key.clone(),
                    expected: cl.last_version,
                    value: value.clone(),
                },
                Op::Cas {
                    expected: cl.last_version,
                    value,
                },
            )
        };
        self.history.push(Operation {
            client: cl.id,
            op,
            invoke: self.now,
            complete: None,
        });
        self.rejected.push(false);
        cl.cur = Some(Cur {
            hist: self.history.len() - 1,
            req,
            hint: None,
        });
    }

    fn send_current(&mut self, c: usize) {
        let members = self.directory().members.clone();
        if members.is_empty() {
            return;
        }
        let mut random = members[self.rng.gen_range(0..members.len())];
        if self.cfg.agreement && self.rng.gen_bool(0.5) {
            // Any live replica of the ring, member or not (a removed member that still
            // answered reads as if current would be caught).
            let up: Vec<u32> = self
                .ring
                .iter()
                .copied()
                .filter(|&a| self.nodes[a as usize].is_some())
                .collect();
            if !up.is_empty() {
                random = up[self.rng.gen_range(0..up.len())];
            }
        }
        let head = members[0];
        let cl = &mut self.clients[c];
        let Some(cur) = &mut cl.cur else { return };
        let target = match cur.req {
            Request::Read { .. } => random,
            Request::Cas { .. } => cur.hint.take().unwrap_or(head),
        };
        let event = Event::Request {
            from: cl.addr,
            id: ReqId {
                client: cl.id,
                seq: cl.seq,
            },
            req: cur.req.clone(),
        };
        cl.gen += 1;
        let gen = cl.gen;
        let timeout = self.cfg.client_timeout_ms;
        self.send_to_replica(target, event);
        self.push(self.now + timeout, Ev::ClientWake { client: c, gen });
    }

    fn retry_after(&mut self, c: usize, delay: u64) {
        let cl = &mut self.clients[c];
        cl.gen += 1;
        let gen = cl.gen;
        self.push(self.now + delay, Ev::ClientWake { client: c, gen });
    }

    fn on_reply(&mut self, c: usize, id: ReqId, reply: Reply<u32>) {
        let cl = &self.clients[c];
        if id.client != cl.id || id.seq != cl.seq {
            return;
        }
        let Some(cur) = &cl.cur else { return };
        let is_read = matches!(cur.req, Request::Read { .. });
        let outcome = match reply {
            Reply::Value { version, value } if is_read => Outcome::Read { version, value },
            Reply::Ok { version } if !is_read => Outcome::CasOk { version },
            Reply::Conflict {
                current_version,
                current_value,
            } if !is_read => Outcome::CasConflict {
                version: current_version,
                value: current_value,
            },
            Reply::NotHead { head } => {
                if let Some(cur) = &mut self.clients[c].cur {
                    cur.hint = head;
                }
                self.retry_after(c, 2);
                return;
            }
            Reply::Unavailable(_) => {
                let d = self.rng.gen_range(5..=25);
                self.retry_after(c, d);
                return;
            }
            Reply::Rejected(_) => {
                let hist = cur.hist;
                self.rejected[hist] = true;
                self.clients[c].cur = None;
                let d = self.rng.gen_range(1..=self.cfg.think_max_ms.max(1));
                self.retry_after(c, d);
                return;
            }
            _ => return,
        };
        let hist = cur.hist;
        let version = match &outcome {
            Outcome::Read { version, .. }
            | Outcome::CasOk { version }
            | Outcome::CasConflict { version, .. } => *version,
        };
        self.history[hist].complete = Some((self.now, outcome));
        let cl = &mut self.clients[c];
        cl.last_version = version;
        cl.cur = None;
        let d = self.rng.gen_range(1..=self.cfg.think_max_ms.max(1));
        self.retry_after(c, d);
    }

    fn finish(mut self) -> SimReport {
        for n in self.nodes.iter().flatten() {
            self.report.replicas.add(n.replica.stats());
        }
        let last = self.report.last_disruption_ms;
        let mut history = Vec::with_capacity(self.history.len());
        for (op, rejected) in self.history.into_iter().zip(self.rejected) {
            if rejected {
                self.report.ops_rejected += 1;
                continue;
            }
            if op.invoke > last {
                self.report.ops_after_disruption += 1;
            }
            match &op.complete {
                None => self.report.ops_unknown += 1,
                Some((_, o)) => {
                    self.report.ops_completed += 1;
                    match o {
                        Outcome::Read { .. } => self.report.reads += 1,
                        Outcome::CasOk { .. } => {
                            self.report.cas_ok += 1;
                            if op.invoke > last {
                                self.report.cas_ok_after_disruption += 1;
                            }
                        }
                        Outcome::CasConflict { .. } => self.report.cas_conflict += 1,
                    }
                }
            }
            history.push(op);
        }
        self.report.history = history;
        self.report
    }
}
