//! A deterministic discrete-event simulator of one chain serving one key.
//!
//! It drives the same [`Replica`] state machine the node runs (with `A = u32`: replicas are
//! `0..`, clients `CLIENT_BASE + i`). Everything is seeded ([`ChaCha8Rng`]) and events are
//! ordered by `(time, sequence number)`, so a run replays exactly from its seed.
//!
//! - Network: each message gets a uniform latency in `[latency_min_ms, latency_max_ms]`; with
//!   probability `reorder` an extra delay up to `reorder_extra_max_ms` (so later messages
//!   overtake it); with probability `loss` it is lost. Messages to crashed replicas vanish.
//! - Membership oracle: the simulator hands views to replicas (each after its own random
//!   delay, so replicas switch epochs at different times, as with a successor list). A crash
//!   (kill -9: the replica and its state are gone) is noticed after a detection delay and
//!   removes the member in a new view; a join creates an empty replica ([`Start::Join`]),
//!   possibly at a crashed replica's address, and inserts it at a random position.
//!   A crash never takes the last member that holds the state.
//! - Clients: each runs `ops_per_client` operations one at a time: a read at a random member
//!   of the current view, or a compare-and-set at the head with the version from the
//!   client's last answer. A request without an answer in `client_timeout_ms` is retried with
//!   the same request id (at a new random member for reads); `NotHead` redirects,
//!   `Unavailable` retries after a short pause. An operation is recorded once, from its first
//!   invocation to its final answer; operations still unanswered at the end are recorded with
//!   an unknown outcome.
//!
//! The recorded history goes to [`crate::linearizability::check`] ([`run_checked`]).

use crate::config::Config;
use crate::linearizability::{self, CheckError, Op, Operation, Outcome};
use crate::message::{Key, Reply, ReqId, Request, View};
use crate::replica::{Action, Event, Replica, ReplicaStats, Start};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Client addresses start here.
pub const CLIENT_BASE: u32 = 1 << 20;

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Every replica's configuration.
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
    /// Maximum delay of a view's delivery to each member (ms).
    pub view_latency_max_ms: u64,
    /// Crash detection delay range (ms).
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
    /// Joins may reuse the address of a crashed replica (it comes back empty).
    pub reuse_addresses: bool,
    /// Stop at this virtual time even if clients are not done (ms).
    pub max_time_ms: u64,
    /// Check every replica's invariants after every event.
    pub check_invariants: bool,
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
        }
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
    /// Views issued by the oracle.
    pub views: u64,
    /// Replicas crashed.
    pub crashed: Vec<u32>,
    /// Replicas joined: (address, position in the view, members in that view).
    pub joined: Vec<(u32, usize, usize)>,
    /// Counters summed over every replica that ever ran.
    pub replicas: ReplicaStats,
    /// The first replica invariant violation.
    pub invariant_violation: Option<String>,
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
    /// Crashed addresses already removed from the view (a join may reuse them).
    reusable: Vec<u32>,
    view: View<u32>,
    clients: Vec<Client>,
    history: Vec<Operation>,
    rejected: Vec<bool>,
    report: SimReport,
    key: Key,
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
    fn new(cfg: SimConfig) -> Sim {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = cfg.chain_len.max(1);
        let nodes = (0..n as u32)
            .map(|a| {
                Some(Node {
                    replica: Replica::new(a, cfg.replica.clone(), Start::Bootstrap),
                    timer: None,
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
        Sim {
            view: View::new(1, (0..n as u32).collect()),
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

    fn run(&mut self) {
        // The founding view reaches everyone at once.
        let view = self.view.clone();
        self.report.views += 1;
        for &m in &view.members {
            self.deliver(m, Event::View(view.clone()));
        }
        for c in 0..self.clients.len() {
            let d = self.rng.gen_range(0..=self.cfg.think_max_ms);
            self.push(d, Ev::ClientWake { client: c, gen: 0 });
        }
        let (lo, hi) = self.cfg.churn_window_ms;
        for _ in 0..self.cfg.crashes {
            let t = self.rng.gen_range(lo..=hi.max(lo));
            self.push(t, Ev::Crash { attempts: 0 });
        }
        for _ in 0..self.cfg.joins {
            let t = self.rng.gen_range(lo..=hi.max(lo));
            self.push(t, Ev::Join);
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
            Ev::Crash { attempts } => self.crash(attempts),
            Ev::Remove { node } => {
                if let Some(p) = self.view.position(&node) {
                    self.view.members.remove(p);
                    self.view.epoch += 1;
                    self.broadcast_view();
                }
                self.reusable.push(node);
            }
            Ev::Join => self.join(),
        }
    }

    fn deliver(&mut self, to: u32, event: Event<u32>) {
        let now = self.now;
        let Some(Some(node)) = self.nodes.get_mut(to as usize) else {
            self.report.dropped += 1;
            return;
        };
        let actions = node.replica.handle(now, event);
        if self.cfg.check_invariants && self.report.invariant_violation.is_none() {
            if let Err(e) = node.replica.check_invariants() {
                self.report.invariant_violation = Some(format!("replica {to} at {now} ms: {e}"));
            }
        }
        for act in actions {
            match act {
                Action::Send { to: dst, msg } => {
                    self.send_to_replica(dst, Event::Message { from: to, msg });
                }
                Action::Reply { to: dst, id, reply } => {
                    self.report.messages += 1;
                    let Some(client) = dst.checked_sub(CLIENT_BASE).map(|c| c as usize) else {
                        continue;
                    };
                    match self.latency() {
                        Some(d) => self.push(now + d, Ev::Reply { client, id, reply }),
                        None => self.report.dropped += 1,
                    }
                }
                Action::SetTimer { at } => {
                    if let Some(Some(n)) = self.nodes.get_mut(to as usize) {
                        n.timer = Some(at);
                    }
                    self.push(at.max(now), Ev::Timer { node: to, at });
                }
                Action::NewerEpoch { .. } => {}
            }
        }
    }

    fn crash(&mut self, attempts: u32) {
        // A member whose loss leaves another member holding the state.
        let members = self.view.members.clone();
        let ready = |s: &Sim, a: u32| {
            s.nodes
                .get(a as usize)
                .and_then(|n| n.as_ref())
                .is_some_and(|n| n.replica.is_ready())
        };
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
                (self.nodes.len() - 1) as u32
            };
        self.nodes[addr as usize] = Some(Node {
            replica: Replica::new(addr, self.cfg.replica.clone(), Start::Join),
            timer: None,
        });
        let pos = self.rng.gen_range(0..=self.view.members.len());
        self.view.members.insert(pos, addr);
        self.view.epoch += 1;
        self.report
            .joined
            .push((addr, pos, self.view.members.len()));
        self.broadcast_view();
    }

    // ----- clients -----

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
        let members = self.view.members.clone();
        if members.is_empty() {
            return;
        }
        let random = members[self.rng.gen_range(0..members.len())];
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
        let mut history = Vec::with_capacity(self.history.len());
        for (op, rejected) in self.history.into_iter().zip(self.rejected) {
            if rejected {
                self.report.ops_rejected += 1;
                continue;
            }
            match &op.complete {
                None => self.report.ops_unknown += 1,
                Some((_, o)) => {
                    self.report.ops_completed += 1;
                    match o {
                        Outcome::Read { .. } => self.report.reads += 1,
                        Outcome::CasOk { .. } => self.report.cas_ok += 1,
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
