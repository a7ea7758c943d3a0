//! The named scenarios of `chord-sim`, as library functions the tests reuse. Each returns a
//! [`Metrics`] record (printed as one JSON object by the binary).

use super::{invariants, Sim, SimConfig};
use crate::id::Id;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Duration;

/// Metrics of one run. Fields that a scenario does not measure are `None`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    /// Scenario name.
    pub scenario: String,
    /// Seed (replay with `--seed`).
    pub seed: u64,
    /// Nodes (physical nodes for vnodes-load).
    pub nodes: usize,
    /// Successor-list length r.
    pub successors: usize,
    /// Virtual nodes per physical node.
    pub vnodes: usize,
    /// Stabilization rounds (virtual time / stabilize interval) until Ideal was first seen.
    pub rounds_to_ideal: Option<f64>,
    /// Rounds until the predecessor lists were complete too.
    pub rounds_to_ideal_pred_lists: Option<f64>,
    /// Whether the final state is Ideal (where the scenario expects it).
    pub ideal_at_end: Option<bool>,
    /// Safety-invariant checks run.
    pub invariant_checks: u64,
    /// Safety-invariant violations.
    pub invariant_violations: u64,
    /// The first violation (with the seed).
    pub first_violation: Option<String>,
    /// Runs (random-small).
    pub runs: Option<u64>,
    /// Runs that did not reach Ideal once quiet (random-small).
    pub runs_not_ideal: Option<u64>,
    /// Lookups issued (first attempts).
    pub lookups: u64,
    /// First attempts that failed (error or timeout).
    pub lookups_failed: u64,
    /// Lookups that failed again after one retry.
    pub lookups_failed_after_retry: u64,
    /// Successful lookups whose owner was not the true owner.
    pub wrong_owners: u64,
    /// Mean hops of successful lookups.
    pub mean_hops: Option<f64>,
    /// 99th percentile of hops.
    pub p99_hops: Option<u32>,
    /// Maximum hops.
    pub max_hops: Option<u32>,
    /// 0.5 log2 N, the literature's mean path length.
    pub half_log2_n: f64,
    /// Mean lookup latency (virtual ms).
    pub mean_lookup_ms: Option<f64>,
    /// Nodes crashed.
    pub crashed: u64,
    /// Nodes that joined (Joined events).
    pub joined: u64,
    /// Nodes that left gracefully (Left events).
    pub left: u64,
    /// Keys per physical node: p99 / mean.
    pub load_p99_over_mean: Option<f64>,
    /// Keys per physical node: max / mean.
    pub load_max_over_mean: Option<f64>,
    /// Messages sent.
    pub messages: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end (ms).
    pub virtual_ms: u64,
    /// Wall time of the run (ms). Filled in by the binary.
    pub wall_ms: Option<u64>,
}

/// Options shared by the scenarios.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Simulator parameters (seed, node config, latency, loss, check frequency).
    pub sim: SimConfig,
    /// Nodes.
    pub nodes: usize,
    /// Virtual nodes per physical node.
    pub vnodes: usize,
    /// Lookups to issue.
    pub lookups: usize,
    /// Fraction to crash (mass-crash).
    pub crash_fraction: f64,
    /// Joins and crashes per stabilization period, each (churn).
    pub churn_rate: f64,
    /// Length of the churn phase in stabilization periods.
    pub churn_periods: u64,
    /// Share of churn departures that are graceful leaves instead of crashes.
    pub leave_share: f64,
    /// Length of the partition (partition scenario), ms.
    pub partition_ms: u64,
    /// Runs (random-small).
    pub runs: u64,
    /// Upper bound on virtual time spent waiting for Ideal.
    pub ideal_limit: Duration,
    /// Start lookups/mass-crash/churn from an installed Ideal ring with exact fingers instead
    /// of building it by concurrent joins.
    pub direct_build: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            sim: SimConfig::default(),
            nodes: 64,
            vnodes: 1,
            lookups: 1000,
            crash_fraction: 0.5,
            churn_rate: 1.0,
            churn_periods: 60,
            runs: 100,
            ideal_limit: Duration::from_secs(3600),
            direct_build: false,
            leave_share: 0.0,
            partition_ms: 3000,
        }
    }
}

fn stab(o: &Opts) -> Duration {
    o.sim.node.stabilize_interval
}

fn rounds(o: &Opts, ms: u64) -> f64 {
    ms as f64 / stab(o).as_millis().max(1) as f64
}

fn fill_common(m: &mut Metrics, sim: &Sim, o: &Opts) {
    m.seed = o.sim.seed;
    m.successors = o.sim.node.successors;
    m.invariant_checks = sim.stats.checks;
    m.invariant_violations = sim.stats.violations;
    m.first_violation = sim.stats.first_violation.clone();
    m.crashed = sim.stats.crashed;
    m.joined = sim.stats.joined;
    m.left = sim.stats.left;
    m.messages = sim.stats.messages;
    m.events = sim.stats.events;
    m.virtual_ms = sim.now().0;
    let n = sim.member_count().max(1) as f64;
    m.half_log2_n = 0.5 * n.log2();
}

fn lookup_stats(m: &mut Metrics, sim: &Sim) {
    let mut hops: Vec<u32> = Vec::new();
    let mut lat = 0u64;
    for o in &sim.outcomes {
        // Failed = no answer, or an answer naming another owner than the true one.
        let failed = match o.result {
            Ok(owner) => Some(owner) != o.truth,
            Err(_) => true,
        };
        if o.attempt == 0 {
            m.lookups += 1;
            if failed {
                m.lookups_failed += 1;
            }
        } else if failed {
            m.lookups_failed_after_retry += 1;
        }
        if let Ok(owner) = o.result {
            if Some(owner) != o.truth {
                m.wrong_owners += 1;
            }
            hops.push(o.hops);
            lat += o.latency_ms;
        }
    }
    if !hops.is_empty() {
        let n = hops.len();
        m.mean_hops = Some(hops.iter().map(|&h| h as f64).sum::<f64>() / n as f64);
        m.mean_lookup_ms = Some(lat as f64 / n as f64);
        hops.sort_unstable();
        m.p99_hops = Some(hops[((n * 99).div_ceil(100)).saturating_sub(1).min(n - 1)]);
        m.max_hops = hops.last().copied();
    }
}

/// Creates node 0 and lets nodes 1..n join through it at (nearly) the same time; runs until
/// Ideal. Returns the simulator and the virtual time Ideal took.
pub fn build_ring(o: &Opts, ids: Vec<(Id, u32)>) -> (Sim, Option<u64>) {
    let mut sim = Sim::new(o.sim.clone());
    for (id, phys) in ids {
        sim.add_node(id, phys);
    }
    sim.bootstrap_any = false;
    sim.create(0);
    let n = sim.nodes().len() as u32;
    for a in 1..n {
        let d = sim.rng().gen_range(0..10);
        sim.schedule_join(a, d);
    }
    let t0 = sim.now();
    let poll = Duration::from_millis(100);
    let t = sim.run_until_ideal(poll, o.ideal_limit);
    sim.bootstrap_any = true;
    (sim, t.map(|t| t.0 - t0.0))
}

fn random_ids(o: &Opts, n: usize) -> Vec<(Id, u32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(o.sim.seed ^ 0x1d5);
    (0..n)
        .map(|i| (Id(rng.gen::<[u8; 32]>()), i as u32))
        .collect()
}

/// `concurrent-join`: N nodes join at once through one member; rounds until Ideal.
pub fn concurrent_join(o: &Opts) -> Metrics {
    let (mut sim, t) = build_ring(o, random_ids(o, o.nodes));
    let mut m = Metrics {
        scenario: "concurrent-join".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    m.rounds_to_ideal = t.map(|t| rounds(o, t));
    if t.is_some() {
        // Predecessor lists spread one hop per round; measure that too.
        let start = sim.now();
        let end = start.add(o.ideal_limit);
        while sim.now() < end {
            if invariants::ideal_report(&sim, true).is_ok() {
                let total = sim.now().0;
                m.rounds_to_ideal_pred_lists = Some(rounds(o, total));
                break;
            }
            let t = sim.now().add(Duration::from_millis(100));
            sim.run_until(t);
        }
    }
    sim.check_now();
    m.ideal_at_end = Some(invariants::is_ideal(&sim));
    fill_common(&mut m, &sim, o);
    m
}

/// Builds the ring and lets the finger tables settle for `periods` stabilization periods.
fn settled_ring(o: &Opts, ids: Vec<(Id, u32)>, m: &mut Metrics) -> Sim {
    if o.direct_build {
        let mut sim = Sim::new(o.sim.clone());
        for (id, phys) in ids {
            sim.add_node(id, phys);
        }
        sim.build_ideal();
        // A few periods of normal operation.
        sim.run_for(o.sim.node.stabilize_interval * 5);
        return sim;
    }
    let (mut sim, t) = build_ring(o, ids);
    m.rounds_to_ideal = t.map(|t| rounds(o, t));
    // One finger per tick; distinct fingers are about log2 N, each needs a lookup.
    let ticks = 2 * (64 - (sim.member_count() as u64).leading_zeros() as u64) + 20;
    let settle = o.sim.node.fix_fingers_interval * (ticks as u32) * 2;
    sim.run_for(settle);
    sim
}

fn issue_lookups(sim: &mut Sim, count: usize, spacing_ms: u64) {
    for i in 0..count {
        let key = Id(sim.rng().gen::<[u8; 32]>());
        sim.schedule_lookup(key, i as u64 * spacing_ms);
    }
}

/// `lookups`: build, settle fingers, issue lookups from random members for random keys.
pub fn lookups(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "lookups".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    let mut sim = settled_ring(o, random_ids(o, o.nodes), &mut m);
    issue_lookups(&mut sim, o.lookups, 1);
    sim.run_until_lookups_done(Duration::from_secs(3600));
    sim.check_now();
    m.ideal_at_end = Some(invariants::is_ideal(&sim));
    lookup_stats(&mut m, &sim);
    fill_common(&mut m, &sim, o);
    m
}

/// `mass-crash`: build, settle, freeze stabilization, crash a fraction at once (within the
/// crash rule), then issue lookups.
pub fn mass_crash(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "mass-crash".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    let mut sim = settled_ring(o, random_ids(o, o.nodes), &mut m);
    sim.set_maintenance(false);
    // Let in-flight maintenance finish so the snapshot is quiet.
    sim.run_for(o.sim.node.rpc_timeout * 4);
    let want = (o.nodes as f64 * o.crash_fraction).round() as usize;
    sim.crash_random(want);
    issue_lookups(&mut sim, o.lookups, 1);
    sim.run_until_lookups_done(Duration::from_secs(36_000));
    sim.check_now();
    lookup_stats(&mut m, &sim);
    fill_common(&mut m, &sim, o);
    m
}

/// `churn`: build, settle, then for `churn_periods` stabilization periods let nodes join and
/// crash at `churn_rate` each per period (Poisson), issuing lookups throughout; a failed
/// lookup is retried once.
pub fn churn(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "churn".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    let mut sim = settled_ring(o, random_ids(o, o.nodes), &mut m);
    sim.retry_lookups = true;
    let period = stab(o);
    let period_ms = period.as_millis() as u64;
    let per_period = (o.lookups as u64).div_ceil(o.churn_periods.max(1));
    // Poisson arrivals: exponential gaps.
    let mean_gap = period_ms as f64 / o.churn_rate.max(1e-9);
    let start = sim.now().0;
    let end = start + o.churn_periods * period_ms;
    let mut next_join = start as f64 + exp_gap(sim.rng(), mean_gap);
    let mut next_crash = start as f64 + exp_gap(sim.rng(), mean_gap);
    let mut issued = 0usize;
    for p in 0..o.churn_periods {
        let p_start = start + p * period_ms;
        // Spread this period's lookups evenly.
        for i in 0..per_period {
            if issued >= o.lookups {
                break;
            }
            let key = Id(sim.rng().gen::<[u8; 32]>());
            let at = p_start + i * period_ms / per_period.max(1);
            sim.schedule_lookup(key, at.saturating_sub(sim.now().0));
            issued += 1;
        }
        let p_end = p_start + period_ms;
        loop {
            let t = next_join.min(next_crash);
            if t >= p_end as f64 {
                break;
            }
            sim.run_until(crate::time::Time(t as u64));
            if next_join <= next_crash {
                let a = sim.add_random_node();
                sim.schedule_join(a, 0);
                next_join += exp_gap(sim.rng(), mean_gap);
            } else {
                let leave = o.leave_share > 0.0 && sim.rng().gen::<f64>() < o.leave_share;
                if leave {
                    sim.leave_random();
                } else {
                    sim.crash_random(1);
                }
                next_crash += exp_gap(sim.rng(), mean_gap);
            }
        }
        sim.run_until(crate::time::Time(p_end.min(end)));
    }
    sim.run_until_lookups_done(Duration::from_secs(3600));
    // Quiet again: the ring must return to Ideal.
    let t = sim.run_until_ideal(Duration::from_millis(200), o.ideal_limit);
    m.ideal_at_end = Some(t.is_some());
    sim.check_now();
    lookup_stats(&mut m, &sim);
    fill_common(&mut m, &sim, o);
    m
}

/// `partition`: build, settle, split the ring into two halves (by address parity) for
/// `partition_ms`, heal, and wait for Ideal. A partition shorter than failure detection
/// (rpc_timeout x (retries + 1)) heals without a trace (every step checked throughout); a
/// longer one makes each side drop the other and close a ring of its own. Zave's protocol has
/// no way to merge two rings; the merge probes of lost members (see [`crate::node`], Merge)
/// do. Two rings are then the expected state until the merge, so the invariant checker is
/// paused from the split until Ideal, then runs again.
pub fn partition(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "partition".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    let mut sim = settled_ring(o, random_ids(o, o.nodes), &mut m);
    let detect = o.sim.node.rpc_timeout * (o.sim.node.rpc_retries + 1);
    let every = sim.cfg.check_every;
    if Duration::from_millis(o.partition_ms) >= detect {
        sim.cfg.check_every = 0;
    }
    for a in 0..sim.nodes().len() as u32 {
        sim.set_group(a, a % 2);
    }
    sim.run_for(Duration::from_millis(o.partition_ms));
    sim.heal();
    let t0 = sim.now().0;
    let t = sim.run_until_ideal(Duration::from_millis(100), o.ideal_limit);
    m.ideal_at_end = Some(t.is_some());
    m.rounds_to_ideal = t.map(|t| rounds(o, t.0 - t0));
    sim.cfg.check_every = every;
    sim.check_now();
    // A while longer with the checker on: the merged ring stays correct.
    sim.run_for(o.sim.node.stabilize_interval * 10);
    fill_common(&mut m, &sim, o);
    m
}

fn exp_gap(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.gen::<f64>();
    -mean * (1.0 - u).max(1e-12).ln()
}

/// Keys per physical node for `physical` nodes with `vnodes` virtual nodes each, computed
/// from the ids (pure placement: owner = first vnode at or after the key). Returns
/// (p99/mean, max/mean).
pub fn placement_load(physical: usize, vnodes: usize, keys: usize, seed: u64) -> (f64, f64) {
    let mut ring: Vec<(Id, u32)> = Vec::with_capacity(physical * vnodes);
    for p in 0..physical {
        let name = format!("node-{seed}-{p}");
        for v in 0..vnodes {
            ring.push((Id::vnode(name.as_bytes(), v as u32), p as u32));
        }
    }
    ring.sort_unstable();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut load = vec![0u64; physical];
    for _ in 0..keys {
        let key = Id(rng.gen::<[u8; 32]>());
        let i = ring.partition_point(|(id, _)| *id < key);
        let owner = ring[i % ring.len()].1;
        load[owner as usize] += 1;
    }
    load_ratios(&load)
}

/// The exact share of the ring (the expected fraction of keys) per physical node, for
/// `physical` nodes with `vnodes` virtual nodes each. Returns (p99/mean, max/mean): the limit of
/// [`placement_load`] as the number of keys grows.
pub fn placement_share(physical: usize, vnodes: usize, seed: u64) -> (f64, f64) {
    let mut ring: Vec<(Id, u32)> = Vec::with_capacity(physical * vnodes);
    for p in 0..physical {
        let name = format!("node-{seed}-{p}");
        for v in 0..vnodes {
            ring.push((Id::vnode(name.as_bytes(), v as u32), p as u32));
        }
    }
    ring.sort_unstable();
    let n = ring.len();
    let mut share = vec![0u64; physical];
    for i in 0..n {
        let prev = ring[(i + n - 1) % n].0;
        // The top 64 bits of the arc (prev, self] are plenty for a ratio.
        let arc = if n == 1 {
            u64::MAX
        } else {
            prev.distance_to(ring[i].0).high_u64()
        };
        share[ring[i].1 as usize] += arc;
    }
    load_ratios(&share)
}

fn load_ratios(load: &[u64]) -> (f64, f64) {
    let mut l = load.to_vec();
    l.sort_unstable();
    let n = l.len().max(1);
    let mean = l.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let p99 = l[((n * 99).div_ceil(100)).saturating_sub(1).min(n - 1)] as f64;
    let max = *l.last().unwrap_or(&0) as f64;
    (p99 / mean.max(1e-9), max / mean.max(1e-9))
}

/// `vnodes-load`: `nodes` physical nodes with `vnodes` virtual nodes each (ids
/// SHA-256(name || index)); the ring is built by the protocol (if small enough) and every key
/// is assigned by the node that `owns` it, cross-checked against pure placement.
pub fn vnodes_load(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "vnodes-load".into(),
        nodes: o.nodes,
        vnodes: o.vnodes,
        ..Metrics::default()
    };
    let keys = o.lookups.max(1000);
    let total = o.nodes * o.vnodes;
    let mut ids = Vec::with_capacity(total);
    for p in 0..o.nodes {
        let name = format!("node-{}-{p}", o.sim.seed);
        for v in 0..o.vnodes {
            ids.push((Id::vnode(name.as_bytes(), v as u32), p as u32));
        }
    }
    let (p99, max) = placement_load(o.nodes, o.vnodes, keys, o.sim.seed);
    m.load_p99_over_mean = Some(p99);
    m.load_max_over_mean = Some(max);
    if total <= 4096 {
        let (mut sim, t) = if total <= 512 && !o.direct_build {
            build_ring(o, ids)
        } else {
            let mut sim = Sim::new(o.sim.clone());
            for (id, phys) in ids {
                sim.add_node(id, phys);
            }
            sim.build_ideal();
            sim.run_for(stab(o) * 3);
            (sim, None)
        };
        m.rounds_to_ideal = t.map(|t| rounds(o, t));
        // Ownership as the nodes themselves see it must match pure placement.
        let mut rng = ChaCha8Rng::seed_from_u64(o.sim.seed);
        let mut load = vec![0u64; o.nodes];
        let mut sorted: Vec<(Id, u32)> = sim
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.me().id, i as u32))
            .collect();
        sorted.sort_unstable();
        for _ in 0..keys {
            let key = Id(rng.gen::<[u8; 32]>());
            let i = sorted.partition_point(|(id, _)| *id < key);
            let a = sorted[i % sorted.len()].1;
            let sn = &sim.nodes()[a as usize];
            if sn.node.owns(key) {
                load[sn.physical as usize] += 1;
            } else {
                m.wrong_owners += 1;
            }
        }
        let (p99b, maxb) = load_ratios(&load);
        m.load_p99_over_mean = Some(p99b);
        m.load_max_over_mean = Some(maxb);
        sim.check_now();
        m.ideal_at_end = Some(invariants::is_ideal(&sim));
        fill_common(&mut m, &sim, o);
    }
    m.seed = o.sim.seed;
    m.successors = o.sim.node.successors;
    m
}

/// One random-small run: start with r+1 nodes in an Ideal ring, then interleave random joins
/// (up to `n` nodes) and crashes (within the crash rule) with the protocol's own events,
/// checking every invariant after every step; then go quiet and require Ideal.
/// Returns (ideal reached, violations, first violation).
pub fn random_small_run(base: &SimConfig, seed: u64, max_nodes: usize) -> (bool, Sim) {
    let mut cfg = base.clone();
    cfg.seed = seed;
    cfg.check_every = 1;
    let r = cfg.node.successors;
    let mut sim = Sim::new(cfg);
    let n = sim.rng().gen_range(r + 1..=max_nodes.max(r + 1));
    for _ in 0..n {
        sim.add_random_node();
    }
    // Grow the initial ring of r+1 one node at a time (each join completes and settles).
    sim.create(0);
    for a in 1..=r as u32 {
        sim.join(a, 0);
        sim.run_for(Duration::from_millis(500));
        sim.run_until_ideal(Duration::from_millis(50), Duration::from_secs(120));
    }
    // The remaining nodes join at random times; crashes at random times within the rules.
    let horizon = 20_000u64;
    let mut joins: Vec<(u64, u32)> = ((r as u32 + 1)..n as u32).map(|a| (0, a)).collect();
    for j in joins.iter_mut() {
        j.0 = sim.rng().gen_range(0..horizon);
    }
    joins.sort_unstable();
    let crashes = sim.rng().gen_range(0..=n.saturating_sub(r + 1));
    let mut crash_times: Vec<u64> = (0..crashes).map(|_| 0).collect();
    for c in crash_times.iter_mut() {
        *c = sim.rng().gen_range(0..horizon);
    }
    crash_times.sort_unstable();
    let t0 = sim.now().0;
    let mut ji = 0;
    let mut ci = 0;
    loop {
        let nj = joins.get(ji).map(|j| j.0);
        let nc = crash_times.get(ci).copied();
        let next = match (nj, nc) {
            (None, None) => break,
            (Some(a), None) => (a, true),
            (None, Some(b)) => (b, false),
            (Some(a), Some(b)) => {
                if a <= b {
                    (a, true)
                } else {
                    (b, false)
                }
            }
        };
        sim.run_until(crate::time::Time(t0 + next.0));
        if next.1 {
            let a = joins[ji].1;
            ji += 1;
            if let Some(b) = sim.random_member() {
                sim.join(a, b);
            }
        } else {
            ci += 1;
            sim.crash_random(1);
        }
    }
    // Quiet: no more joins or crashes.
    let ideal = sim
        .run_until_ideal(Duration::from_millis(100), Duration::from_secs(600))
        .is_some();
    (ideal, sim)
}

/// `random-small`: `runs` random runs with N <= `nodes` (at most 12 recommended) and the
/// configured r.
pub fn random_small(o: &Opts) -> Metrics {
    let mut m = Metrics {
        scenario: "random-small".into(),
        nodes: o.nodes,
        vnodes: 1,
        ..Metrics::default()
    };
    let mut not_ideal = 0u64;
    let mut checks = 0u64;
    let mut violations = 0u64;
    let mut events = 0u64;
    let mut messages = 0u64;
    let mut crashed = 0u64;
    for i in 0..o.runs {
        let seed = o.sim.seed.wrapping_add(i);
        let (ideal, sim) = random_small_run(&o.sim, seed, o.nodes);
        if !ideal {
            not_ideal += 1;
            if m.first_violation.is_none() {
                m.first_violation = Some(format!("seed {seed}: not Ideal once quiet"));
            }
        }
        checks += sim.stats.checks;
        violations += sim.stats.violations;
        events += sim.stats.events;
        messages += sim.stats.messages;
        crashed += sim.stats.crashed;
        if sim.stats.violations > 0 && m.first_violation.is_none() {
            m.first_violation = sim.stats.first_violation.clone();
        }
    }
    m.seed = o.sim.seed;
    m.successors = o.sim.node.successors;
    m.runs = Some(o.runs);
    m.runs_not_ideal = Some(not_ideal);
    m.invariant_checks = checks;
    m.invariant_violations = violations;
    m.events = events;
    m.messages = messages;
    m.crashed = crashed;
    m
}
