//! A deterministic discrete-event simulator that drives the same [`Node`] state machine the
//! daemon runs (with `A = u32`, the index of the node in the simulation).
//!
//! Everything is seeded ([`ChaCha8Rng`]); events are ordered by `(time, sequence number)`, so a
//! run replays exactly from its seed. Messages get a uniform random latency in
//! `[latency_min, latency_max]` ms, may be lost with probability `loss`, and are dropped between
//! different partition groups or to crashed nodes (the sender then times out, as in reality).
//!
//! The invariants of CHORD.md are checked by [`invariants`] on a global snapshot every
//! `check_every` events; the first violation is recorded with the seed.

use crate::config::Config;
use crate::id::Id;
use crate::message::{Message, Peer};
use crate::node::{Action, Event, LookupError, LookupId, Node};
use crate::time::Time;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

pub mod invariants;
pub mod scenarios;

/// Parameters of a simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Protocol parameters of every node.
    pub node: Config,
    /// Minimum one-way message latency (ms).
    pub latency_min_ms: u64,
    /// Maximum one-way message latency (ms).
    pub latency_max_ms: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Check the safety invariants every this many events (0: never, 1: after every step).
    pub check_every: u64,
    /// Also require at least r+1 members in the invariant check.
    pub require_min_members: bool,
    /// Messages to crashed nodes produce a transport failure at the sender after the latency
    /// (like a refused connection) instead of silence.
    pub fail_fast: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            node: Config::default(),
            latency_min_ms: 5,
            latency_max_ms: 50,
            loss: 0.0,
            check_every: 1,
            require_min_members: false,
            fail_fast: false,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: u32,
        to: u32,
        msg: Message<u32>,
    },
    SendFailed {
        from: u32,
        to: u32,
        msg: Message<u32>,
    },
    Timer {
        node: u32,
    },
    Join {
        node: u32,
    },
    Lookup {
        key: Id,
        attempt: u8,
    },
}

/// A queue entry; the payload lives in `Sim::slab` so heap operations move 24 bytes.
#[derive(Debug)]
struct Entry {
    t: u64,
    seq: u64,
    slot: u32,
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

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// The state machine.
    pub node: Node<u32>,
    /// False once crashed.
    pub alive: bool,
    /// The physical node hosting this (virtual) node.
    pub physical: u32,
    timer: Option<Time>,
    lookup_attempt: BTreeMap<LookupId, (Id, u8, Time)>,
    rejoin: Option<Rejoin>,
}

/// How a restarted node gets back in, as `peerstore-node`'s driver does: after a failed join
/// it tries the next member it knew, a second later; with `create_if_alone`, once every one
/// has failed it starts a ring of its own and probes them to merge (chord's ring merge).
#[derive(Debug)]
struct Rejoin {
    via: Vec<u32>,
    tries: usize,
    create_if_alone: bool,
}

/// The result of one user lookup.
#[derive(Clone, Debug)]
pub struct LookupOutcome {
    /// The key.
    pub key: Id,
    /// 0 for the first attempt, 1 for the retry.
    pub attempt: u8,
    /// Owner returned (address) or the error.
    pub result: Result<u32, LookupError>,
    /// Hops of a successful lookup.
    pub hops: u32,
    /// The true owner at completion time (first live member at or after the key).
    pub truth: Option<u32>,
    /// Virtual latency of the lookup (ms).
    pub latency_ms: u64,
}

/// Counters of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Messages sent.
    pub messages: u64,
    /// Messages lost, partitioned away or sent to crashed nodes.
    pub dropped: u64,
    /// Invariant checks run.
    pub checks: u64,
    /// Invariant violations seen.
    pub violations: u64,
    /// The first violation.
    pub first_violation: Option<String>,
    /// `Joined` events.
    pub joined: u64,
    /// `JoinFailed` events.
    pub join_failures: u64,
    /// `PeerFailed` events.
    pub peer_failed: u64,
    /// `RangesChanged` events.
    pub ranges_changed: u64,
    /// `Left` events.
    pub left: u64,
    /// Nodes crashed.
    pub crashed: u64,
    /// `MergeFound` events (a probe of a lost member found a closer successor).
    pub merges_found: u64,
}

/// The simulator.
pub struct Sim {
    /// Parameters.
    pub cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Entry>>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    nodes: Vec<SimNode>,
    group: Vec<u32>,
    /// Counters.
    pub stats: Stats,
    /// Finished user lookups.
    pub outcomes: Vec<LookupOutcome>,
    /// Retry failed user lookups once.
    pub retry_lookups: bool,
    since_check: u64,
    /// Live members by id (the ground truth for ownership).
    live: BTreeMap<Id, u32>,
    bootstrap_any: bool,
    /// Nodes asked to join that have not joined yet (the system is not quiet while any).
    pending_joins: std::collections::BTreeSet<u32>,
}

impl Sim {
    /// An empty simulation.
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Sim {
            cfg,
            rng,
            now: Time(0),
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            nodes: Vec::new(),
            group: Vec::new(),
            stats: Stats::default(),
            outcomes: Vec::new(),
            retry_lookups: false,
            since_check: 0,
            live: BTreeMap::new(),
            bootstrap_any: true,
            pending_joins: std::collections::BTreeSet::new(),
        }
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The random generator (seeded).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// All nodes ever added (crashed ones too), indexed by address.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Mutable access to one node's state machine (for tests that poke it directly; call
    /// [`Sim::flush`] afterwards).
    pub fn node_mut(&mut self, a: u32) -> Option<&mut Node<u32>> {
        self.nodes.get_mut(a as usize).map(|n| &mut n.node)
    }

    /// Adds a node with the given id (not yet a member). Returns its address.
    pub fn add_node(&mut self, id: Id, physical: u32) -> u32 {
        let addr = self.nodes.len() as u32;
        let node = Node::new(self.cfg.node.clone(), Peer::new(id, addr));
        self.nodes.push(SimNode {
            node,
            alive: true,
            physical,
            timer: None,
            lookup_attempt: BTreeMap::new(),
            rejoin: None,
        });
        self.group.push(0);
        addr
    }

    /// Adds a node with a random id.
    pub fn add_random_node(&mut self) -> u32 {
        let id = Id(self.rng.gen::<[u8; 32]>());
        let p = self.nodes.len() as u32;
        self.add_node(id, p)
    }

    /// Installs an Ideal ring over all nodes at once (successor and predecessor lists and
    /// exact fingers), with stabilization phases spread over one period. Zave's model starts
    /// from such a ring; tests of lookups and failures use it to skip the join phase.
    pub fn build_ideal(&mut self) {
        let mut ring: Vec<(Id, u32)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive)
            .map(|(i, n)| (n.node.me().id, i as u32))
            .collect();
        ring.sort_unstable();
        let n = ring.len();
        if n == 0 {
            return;
        }
        let r = self.cfg.node.successors.min(n - 1);
        let pcount = self.cfg.node.predecessors.min(n - 1);
        let peer = |k: usize| Peer::new(ring[k % n].0, ring[k % n].1);
        let base = self.now;
        let period = self.cfg.node.stabilize_interval.as_millis().max(1) as u64;
        for (k, &(id, a)) in ring.iter().enumerate() {
            let succs: Vec<Peer<u32>> = (1..=r).map(|j| peer(k + j)).collect();
            let preds: Vec<Peer<u32>> = (1..=pcount).map(|j| peer(k + n - j)).collect();
            let fingers: Vec<Option<Peer<u32>>> = (0..256u32)
                .map(|i| {
                    let t = id.add_pow2(i);
                    let idx = ring.partition_point(|(x, _)| *x < t) % n;
                    let p = peer(idx);
                    if p.addr == a {
                        None
                    } else {
                        Some(p)
                    }
                })
                .collect();
            let phase = self.rng.gen_range(0..period);
            let t = Time(base.0 + phase);
            self.nodes[a as usize]
                .node
                .install_member_state(t, succs, preds, fingers);
            self.flush(a);
        }
    }

    /// Makes `a` create a new ring.
    pub fn create(&mut self, a: u32) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(a as usize) {
            n.node.create(now);
        }
        self.flush(a);
    }

    /// Makes `a` join through `bootstrap` now.
    pub fn join(&mut self, a: u32, bootstrap: u32) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(a as usize) {
            n.node.join(now, bootstrap);
            self.pending_joins.insert(a);
        }
        self.flush(a);
    }

    /// Schedules a join of `a` after `delay_ms` through a random live member (or node 0).
    pub fn schedule_join(&mut self, a: u32, delay_ms: u64) {
        self.pending_joins.insert(a);
        self.push(self.now.0 + delay_ms, Ev::Join { node: a });
    }

    /// Starts a graceful leave of `a`.
    pub fn leave(&mut self, a: u32) {
        let now = self.now;
        if let Some(n) = self.nodes.get_mut(a as usize) {
            n.node.leave(now);
        }
        self.flush(a);
    }

    /// Pauses or resumes stabilize/fix_fingers on every node.
    pub fn set_maintenance(&mut self, enabled: bool) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            self.nodes[i].node.set_maintenance(now, enabled);
            self.flush(i as u32);
        }
    }

    /// Puts node `a` into partition group `g` (messages cross groups only if equal).
    pub fn set_group(&mut self, a: u32, g: u32) {
        if let Some(x) = self.group.get_mut(a as usize) {
            *x = g;
        }
    }

    /// Heals all partitions.
    pub fn heal(&mut self) {
        for g in self.group.iter_mut() {
            *g = 0;
        }
    }

    /// Whether `a` is alive and a ring member.
    pub fn is_live_member(&self, a: u32) -> bool {
        self.nodes
            .get(a as usize)
            .map(|n| n.alive && n.node.is_member())
            .unwrap_or(false)
    }

    /// Addresses of live members.
    pub fn live_members(&self) -> Vec<u32> {
        self.live.values().copied().collect()
    }

    /// Whether some node was asked to join and has not joined yet.
    pub fn joins_pending(&self) -> bool {
        !self.pending_joins.is_empty()
    }

    /// Number of live members.
    pub fn member_count(&self) -> usize {
        self.live.len()
    }

    /// The true owner of `key`: the first live member at or after it.
    pub fn true_owner(&self, key: Id) -> Option<u32> {
        self.live
            .range(key..)
            .next()
            .or_else(|| self.live.iter().next())
            .map(|(_, a)| *a)
    }

    /// A random live member.
    pub fn random_member(&mut self) -> Option<u32> {
        if self.live.is_empty() {
            return None;
        }
        let k = self.rng.gen_range(0..self.live.len());
        self.live.values().nth(k).copied()
    }

    /// CHORD.md's crash rule: crashing `a` must leave at least r+1 members and every other
    /// member with a live entry in its successor list.
    pub fn can_crash(&self, a: u32) -> bool {
        let r = self.cfg.node.successors;
        let Some(n) = self.nodes.get(a as usize) else {
            return false;
        };
        if !n.alive {
            return false;
        }
        if !n.node.is_member() {
            return true;
        }
        if self.live.len() < r + 2 {
            return false;
        }
        for (i, m) in self.nodes.iter().enumerate() {
            if i as u32 == a || !m.alive || !m.node.is_member() {
                continue;
            }
            let list = m.node.successors();
            if !list.iter().any(|p| p.addr == a) {
                continue;
            }
            let other_live = list
                .iter()
                .any(|p| p.addr != a && self.is_live_member(p.addr));
            if !other_live {
                return false;
            }
        }
        true
    }

    /// Crashes `a` (no rule check). It stops answering; messages to it are dropped.
    pub fn crash(&mut self, a: u32) {
        if let Some(n) = self.nodes.get_mut(a as usize) {
            if n.alive {
                n.alive = false;
                self.live.remove(&n.node.me().id);
                self.pending_joins.remove(&a);
                self.stats.crashed += 1;
            }
        }
    }

    /// Restarts crashed node `a` as a fresh process at the same address with the same id (a
    /// daemon restarted on its port: the ring knows it by both). It joins through `via[0]` now
    /// and, as the daemon does, after each failed join through the next of `via` a second
    /// later; with `create_if_alone` it starts a ring of its own once every one of them has
    /// failed, and probes them to merge. Messages still in flight to the old process reach
    /// the new one, as they would on a reused port.
    pub fn restart(&mut self, a: u32, via: Vec<u32>, create_if_alone: bool) {
        let Some(n) = self.nodes.get_mut(a as usize) else {
            return;
        };
        if n.alive || via.is_empty() {
            return;
        }
        let me = n.node.me().clone();
        n.node = Node::new(self.cfg.node.clone(), me);
        n.alive = true;
        n.timer = None;
        n.lookup_attempt.clear();
        let first = via[0];
        n.rejoin = Some(Rejoin {
            via,
            tries: 0,
            create_if_alone,
        });
        self.join(a, first);
    }

    /// The daemon's retry after a failed join of a restarted node (see [`Sim::restart`]).
    fn retry_rejoin(&mut self, a: u32) {
        let now = self.now;
        let Some(r) = self
            .nodes
            .get_mut(a as usize)
            .and_then(|n| n.rejoin.as_mut())
        else {
            return;
        };
        r.tries += 1;
        if r.create_if_alone && r.tries >= r.via.len() {
            let via = std::mem::take(&mut r.via);
            let known: Vec<Peer<u32>> = via
                .iter()
                .filter_map(|&b| self.nodes.get(b as usize))
                .map(|x| x.node.me().clone())
                .collect();
            let n = &mut self.nodes[a as usize];
            n.rejoin = None;
            n.node.create(now);
            n.node.remember(now, known);
            self.flush(a);
            return;
        }
        let via = r.via[r.tries % r.via.len()];
        self.join(a, via);
    }

    /// Crashes up to `count` random live members, each only if [`Sim::can_crash`] allows it.
    /// Returns how many were crashed.
    pub fn crash_random(&mut self, count: usize) -> usize {
        let mut cands = self.live_members();
        // Fisher-Yates with our seeded rng.
        for i in (1..cands.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            cands.swap(i, j);
        }
        let mut done = 0;
        for a in cands {
            if done >= count {
                break;
            }
            if self.can_crash(a) {
                self.crash(a);
                done += 1;
            }
        }
        done
    }

    /// Makes a random live member leave gracefully, if the crash rule allows its departure.
    /// Returns the node.
    pub fn leave_random(&mut self) -> Option<u32> {
        let mut cands = self.live_members();
        for i in (1..cands.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            cands.swap(i, j);
        }
        let a = cands.into_iter().find(|&a| self.can_crash(a))?;
        self.leave(a);
        Some(a)
    }

    /// Issues a user lookup of `key` from a random live member after `delay_ms`.
    pub fn schedule_lookup(&mut self, key: Id, delay_ms: u64) {
        self.push(self.now.0 + delay_ms, Ev::Lookup { key, attempt: 0 });
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(Reverse(Entry {
            t,
            seq: self.seq,
            slot,
        }));
    }

    /// Time of the next event.
    pub fn next_event_time(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse(e)| Time(e.t))
    }

    /// Drains the actions of node `a` into the network and re-arms its timer.
    pub fn flush(&mut self, a: u32) {
        let idx = a as usize;
        if idx >= self.nodes.len() {
            return;
        }
        while let Some(act) = self.nodes[idx].node.poll_action() {
            match act {
                Action::Send { to, msg } => self.transmit(a, to, msg),
                Action::Event(e) => self.on_event(a, e),
            }
        }
        let want = self.nodes[idx].node.poll_timeout();
        if let Some(t) = want {
            let cur = self.nodes[idx].timer;
            if cur.map(|c| t < c || c < self.now).unwrap_or(true) {
                self.nodes[idx].timer = Some(t);
                let at = t.0.max(self.now.0);
                self.push(at, Ev::Timer { node: a });
            }
        }
    }

    fn transmit(&mut self, from: u32, to: u32, msg: Message<u32>) {
        self.stats.messages += 1;
        if !self
            .nodes
            .get(from as usize)
            .map(|n| n.alive)
            .unwrap_or(false)
        {
            self.stats.dropped += 1;
            return;
        }
        let lat = if self.cfg.latency_max_ms > self.cfg.latency_min_ms {
            self.rng
                .gen_range(self.cfg.latency_min_ms..=self.cfg.latency_max_ms)
        } else {
            self.cfg.latency_min_ms
        };
        let to_alive = self
            .nodes
            .get(to as usize)
            .map(|n| n.alive)
            .unwrap_or(false);
        let same_group = self.group.get(from as usize) == self.group.get(to as usize);
        let lost = self.cfg.loss > 0.0 && self.rng.gen::<f64>() < self.cfg.loss;
        if !to_alive || !same_group || lost {
            self.stats.dropped += 1;
            if !to_alive && self.cfg.fail_fast && msg.is_request() {
                self.push(self.now.0 + lat, Ev::SendFailed { from, to, msg });
            }
            return;
        }
        self.push(self.now.0 + lat, Ev::Deliver { from, to, msg });
    }

    fn on_event(&mut self, a: u32, e: Event<u32>) {
        match e {
            Event::Joined => {
                self.stats.joined += 1;
                self.pending_joins.remove(&a);
                let id = self.nodes[a as usize].node.me().id;
                if self.nodes[a as usize].alive {
                    self.live.insert(id, a);
                }
            }
            Event::JoinFailed { .. } => {
                self.stats.join_failures += 1;
                // Try again a second later through someone else.
                self.push(self.now.0 + 1000, Ev::Join { node: a });
            }
            Event::PeerFailed { .. } => self.stats.peer_failed += 1,
            Event::RangesChanged { .. } => self.stats.ranges_changed += 1,
            Event::MergeFound { .. } => self.stats.merges_found += 1,
            Event::Left => {
                self.stats.left += 1;
                let id = self.nodes[a as usize].node.me().id;
                self.live.remove(&id);
            }
            Event::LookupDone {
                lookup,
                key,
                result,
            } => {
                let Some((_, attempt, started)) =
                    self.nodes[a as usize].lookup_attempt.remove(&lookup)
                else {
                    return;
                };
                let truth = self.true_owner(key);
                let (res, hops) = match result {
                    Ok(r) => (Ok(r.owner.addr), r.hops),
                    Err(e) => (Err(e), 0),
                };
                // A lookup that names an owner other than the true one failed as much as one
                // that timed out: both are retried, and both count as failures.
                let failed = match &res {
                    Ok(owner) => Some(*owner) != truth,
                    Err(_) => true,
                };
                self.outcomes.push(LookupOutcome {
                    key,
                    attempt,
                    result: res,
                    hops,
                    truth,
                    latency_ms: self.now.0.saturating_sub(started.0),
                });
                if failed && self.retry_lookups && attempt == 0 {
                    // The caller retries after half a stabilization period, as the daemon's
                    // backoff does: an immediate retry would meet the same ring.
                    let backoff = self.cfg.node.stabilize_interval.as_millis() as u64 / 2;
                    self.push(self.now.0 + backoff.max(1), Ev::Lookup { key, attempt: 1 });
                }
            }
        }
    }

    /// Processes one event. Returns false if the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(entry)) = self.queue.pop() else {
            return false;
        };
        let Some(ev) = self
            .slab
            .get_mut(entry.slot as usize)
            .and_then(Option::take)
        else {
            return true;
        };
        self.free.push(entry.slot);
        self.now = Time(entry.t.max(self.now.0));
        self.stats.events += 1;
        let now = self.now;
        match ev {
            Ev::Deliver { from, to, msg } => {
                if let Some(n) = self.nodes.get_mut(to as usize) {
                    if n.alive {
                        n.node.handle_message(now, from, msg);
                        self.flush(to);
                    }
                }
            }
            Ev::SendFailed { from, to, msg } => {
                if let Some(n) = self.nodes.get_mut(from as usize) {
                    if n.alive {
                        n.node.handle_send_failure(now, to, &msg);
                        self.flush(from);
                    }
                }
            }
            Ev::Timer { node } => {
                if let Some(n) = self.nodes.get_mut(node as usize) {
                    if n.timer.map(|t| t <= now).unwrap_or(false) {
                        n.timer = None;
                    }
                    if n.alive {
                        n.node.handle_timeout(now);
                        self.flush(node);
                    }
                }
            }
            Ev::Join { node } => {
                let restarted = self
                    .nodes
                    .get(node as usize)
                    .map(|n| n.alive && n.rejoin.is_some())
                    .unwrap_or(false);
                let alive_idle = self
                    .nodes
                    .get(node as usize)
                    .map(|n| n.alive && n.node.status() == crate::node::Status::Idle)
                    .unwrap_or(false);
                if restarted {
                    if alive_idle {
                        self.retry_rejoin(node);
                    }
                } else if alive_idle {
                    let boot = if self.bootstrap_any {
                        self.random_member()
                    } else {
                        None
                    }
                    .unwrap_or(0);
                    if boot != node {
                        self.join(node, boot);
                    }
                }
            }
            Ev::Lookup { key, attempt } => {
                // Originate at a member that is not on its way out.
                let mut origin = None;
                for _ in 0..8 {
                    if let Some(a) = self.random_member() {
                        if self.nodes[a as usize].node.status() == crate::node::Status::Member {
                            origin = Some(a);
                            break;
                        }
                    }
                }
                if let Some(a) = origin {
                    let lid = self.nodes[a as usize].node.start_lookup(now, key);
                    self.nodes[a as usize]
                        .lookup_attempt
                        .insert(lid, (key, attempt, now));
                    self.flush(a);
                }
            }
        }
        if self.cfg.check_every > 0 {
            self.since_check += 1;
            if self.since_check >= self.cfg.check_every {
                self.since_check = 0;
                self.check_now();
            }
        }
        true
    }

    /// Runs the invariant check now; records a violation (with the seed) if any.
    pub fn check_now(&mut self) -> bool {
        self.stats.checks += 1;
        let min = if self.cfg.require_min_members {
            Some(self.cfg.node.successors + 1)
        } else {
            None
        };
        match invariants::check(self, min) {
            Ok(()) => true,
            Err(v) => {
                self.stats.violations += 1;
                if self.stats.first_violation.is_none() {
                    self.stats.first_violation =
                        Some(format!("seed {} at t={}ms: {v}", self.cfg.seed, self.now.0));
                }
                false
            }
        }
    }

    /// Runs events until virtual time `t` (events at exactly `t` included).
    pub fn run_until(&mut self, t: Time) {
        while let Some(Reverse(e)) = self.queue.peek() {
            if e.t > t.0 {
                break;
            }
            self.step();
        }
        if self.now < t {
            self.now = t;
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now.add(d);
        self.run_until(t);
    }

    /// Runs until the ring is Ideal (checked every `poll` of virtual time) or `limit` passes.
    /// Returns the time Ideal was first seen.
    pub fn run_until_ideal(&mut self, poll: Duration, limit: Duration) -> Option<Time> {
        let end = self.now.add(limit);
        loop {
            if invariants::is_ideal(self) {
                return Some(self.now);
            }
            if self.now >= end {
                return None;
            }
            let t = self.now.add(poll).min(end);
            self.run_until(t);
        }
    }

    /// Runs until no user lookup is pending (or `limit` of virtual time passes).
    pub fn run_until_lookups_done(&mut self, limit: Duration) {
        let end = self.now.add(limit);
        loop {
            let pending = self
                .slab
                .iter()
                .flatten()
                .any(|e| matches!(e, Ev::Lookup { .. }))
                || self
                    .nodes
                    .iter()
                    .any(|n| n.alive && !n.lookup_attempt.is_empty());
            if !pending || self.now >= end {
                return;
            }
            let t = self.now.add(Duration::from_millis(200)).min(end);
            self.run_until(t);
        }
    }
}
