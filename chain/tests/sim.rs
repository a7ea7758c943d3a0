//! Simulation tests: the chain under message loss, reordering, crashes and joins is
//! linearizable on every seed, with views from an oracle or agreed by the replicas (false
//! suspicions, partitions, concurrent proposers, crashes during view changes), and with
//! persistence (restarts of the head, a middle member, the tail, every member in turn, and of
//! all at once); deliberately broken variants are caught by the checker.

use chain::linearizability::CheckError;
use chain::sim::{run, run_checked, SimConfig, SimReport, Victim};
use chain::Config;
use std::time::Instant;

/// Runs `seeds` on two threads (the test machine has two cores) and returns the reports with
/// their verdicts, in seed order.
fn run_seeds(
    seeds: std::ops::Range<u64>,
    make: impl Fn(u64) -> SimConfig + Sync,
) -> Vec<(SimReport, Result<(), CheckError>)> {
    let seeds: Vec<u64> = seeds.collect();
    let half = seeds.len().div_ceil(2);
    let make = &make;
    let mut out: Vec<(SimReport, Result<(), CheckError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(half.max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| run_checked(&make(seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    out.sort_by_key(|(r, _)| r.seed);
    out
}

fn churn_config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ..SimConfig::default()
    }
}

#[test]
fn linearizable_under_loss_reordering_crash_and_join() {
    let started = Instant::now();
    let results = run_seeds(0..1000, churn_config);
    let (mut total, mut completed, mut local, mut tail_q) = (0usize, 0usize, 0u64, 0u64);
    let mut joined_positions = [0usize; 3]; // head, middle, tail
    for (r, verdict) in &results {
        if let Err(e) = verdict {
            panic!("seed {}: {e}", r.seed);
        }
        assert_eq!(r.invariant_violation, None, "seed {}", r.seed);
        assert_eq!(r.replicas.divergent, 0, "seed {}", r.seed);
        // The churn happened: one member killed, one joined and caught up, views issued.
        assert_eq!(r.crashed.len(), 1, "seed {}", r.seed);
        assert_eq!(r.joined.len(), 1, "seed {}", r.seed);
        assert!(r.views >= 3, "seed {}: {} views", r.seed, r.views);
        assert!(
            r.replicas.syncs_completed >= 1,
            "seed {}: joiner never caught up",
            r.seed
        );
        assert!(r.dropped > 0, "seed {}: no message was lost", r.seed);
        // Progress: 3 clients x 200 operations, nearly all answered.
        assert_eq!(r.ops_total(), 600, "seed {}", r.seed);
        assert!(
            r.ops_completed >= 570,
            "seed {}: {} of 600 completed",
            r.seed,
            r.ops_completed
        );
        assert!(
            r.cas_ok >= 20,
            "seed {}: only {} writes succeeded",
            r.seed,
            r.cas_ok
        );
        total += r.ops_total();
        completed += r.ops_completed;
        local += r.replicas.reads_local;
        tail_q += r.replicas.reads_tail_query;
        let (_, pos, len) = r.joined[0];
        let at = if pos == 0 {
            0
        } else if pos + 1 == len {
            2
        } else {
            1
        };
        joined_positions[at] += 1;
    }
    assert!(
        completed * 100 >= total * 99,
        "{completed} of {total} completed"
    );
    // The joiner landed at the head, in the middle and at the tail on some seeds.
    assert!(
        joined_positions.iter().all(|&n| n > 0),
        "{joined_positions:?}"
    );
    println!(
        "1000 seeds x 600 ops: {completed}/{total} completed, reads local {local} via tail \
         {tail_q} ({:.3} local), joins at head/middle/tail {joined_positions:?}, {:.2?}",
        local as f64 / (local + tail_q) as f64,
        started.elapsed()
    );
}

/// A matrix of harsher settings: chain lengths 1 to 5, up to 4 crashes and 4 joins, up to 25%
/// loss and 30% reordering, slow view delivery, and tiny bounds (pages of one record, two
/// dirty versions per key, four pending requests).
fn stress_config(i: u64) -> SimConfig {
    let chain_len = [1usize, 2, 3, 5][(i % 4) as usize];
    let (crashes, joins) = [(1usize, 1usize), (2, 3), (4, 4)][((i / 4) % 3) as usize];
    let loss = [0.1, 0.25][((i / 12) % 2) as usize];
    let small = (i / 24) % 2 == 1;
    let mut replica = SimConfig::default().replica;
    if small {
        replica.max_dirty_per_key = 2;
        replica.max_keys_per_page = 1;
        replica.max_pending = 4;
        replica.resend_ms = 15;
    }
    SimConfig {
        seed: 10_000 + i,
        replica,
        chain_len,
        crashes: if chain_len == 1 { 0 } else { crashes },
        joins,
        loss,
        reorder: 0.3,
        clients: 4,
        ops_per_client: 100,
        churn_window_ms: (200, 4_000),
        detect_ms: (10, 400),
        view_latency_max_ms: 200,
        max_time_ms: 120_000,
        ..SimConfig::default()
    }
}

#[test]
fn stress_matrix_stays_linearizable() {
    // 48 combinations x 12 seeds.
    let results = run_seeds(0..576, stress_config);
    let mut syncs = 0;
    for (r, verdict) in &results {
        if let Err(e) = verdict {
            panic!("seed {}: {e}", r.seed);
        }
        assert_eq!(r.invariant_violation, None, "seed {}", r.seed);
        assert_eq!(r.replicas.divergent, 0, "seed {}", r.seed);
        assert!(
            r.ops_completed * 10 >= r.ops_total() * 9,
            "seed {}: {} of {} completed",
            r.seed,
            r.ops_completed,
            r.ops_total()
        );
        syncs += r.replicas.syncs_completed;
    }
    assert!(syncs >= 576, "only {syncs} state transfers completed");
}

#[test]
fn runs_replay_exactly_from_their_seed() {
    let a = run(&churn_config(7));
    let b = run(&churn_config(7));
    assert_eq!(a.history, b.history);
    assert_eq!(a.events, b.events);
    assert_eq!(a.end_ms, b.end_ms);
    let c = run(&churn_config(8));
    assert_ne!(a.history, c.history);
}

/// Runs seeds until the checker rejects one; returns that seed.
fn first_caught(replica: Config, seeds: std::ops::Range<u64>) -> Option<(u64, String)> {
    first_caught_in(replica, seeds, |seed| SimConfig {
        seed,
        ..SimConfig::default()
    })
}

/// The same, with the scenario `make` builds for each seed.
fn first_caught_in(
    replica: Config,
    seeds: std::ops::Range<u64>,
    make: impl Fn(u64) -> SimConfig,
) -> Option<(u64, String)> {
    for seed in seeds {
        let cfg = SimConfig {
            replica: replica.clone(),
            check_invariants: false,
            max_time_ms: 60_000,
            ..make(seed)
        };
        let (r, verdict) = run_checked(&cfg);
        match verdict {
            Ok(()) => {}
            Err(CheckError::NotLinearizable(v)) => return Some((r.seed, v.to_string())),
            Err(e) => panic!("seed {seed}: checker failed: {e}"),
        }
    }
    None
}

fn base() -> Config {
    SimConfig::default().replica
}

#[test]
fn dirty_reads_are_caught() {
    let caught = first_caught(
        Config {
            unsafe_read_dirty: true,
            ..base()
        },
        0..20,
    );
    let (seed, why) = caught.expect("reading dirty versions was never caught in 20 seeds");
    println!("unsafe_read_dirty caught at seed {seed}: {why}");
}

#[test]
fn serving_before_state_transfer_is_caught() {
    let caught = first_caught(
        Config {
            unsafe_skip_state_transfer: true,
            ..base()
        },
        0..40,
    );
    let (seed, why) = caught.expect("a joiner serving without state was never caught in 40 seeds");
    println!("unsafe_skip_state_transfer caught at seed {seed}: {why}");
}

#[test]
fn missing_deduplication_is_caught() {
    let caught = first_caught(
        Config {
            unsafe_no_dedup: true,
            ..base()
        },
        0..40,
    );
    let (seed, why) = caught.expect("missing dedup of retried writes was never caught in 40 seeds");
    println!("unsafe_no_dedup caught at seed {seed}: {why}");
}

#[test]
fn craq_reads_are_mostly_local_in_a_read_heavy_mix() {
    // No churn, so the figures are the steady state; one hot key written by 3 clients.
    let mut fractions = Vec::new();
    for read_fraction in [0.5, 0.9, 0.99] {
        let results = run_seeds(0..20, |seed| SimConfig {
            seed,
            read_fraction,
            crashes: 0,
            joins: 0,
            ..SimConfig::default()
        });
        let (mut local, mut at_tail, mut tail_q) = (0u64, 0u64, 0u64);
        for (r, verdict) in &results {
            assert!(verdict.is_ok(), "seed {}: {verdict:?}", r.seed);
            local += r.replicas.reads_local;
            at_tail += r.replicas.reads_local_at_tail;
            tail_q += r.replicas.reads_tail_query;
        }
        let f = local as f64 / (local + tail_q) as f64;
        let off = local - at_tail;
        let f_off = off as f64 / (off + tail_q) as f64;
        println!(
            "read fraction {read_fraction}: {local} local ({at_tail} at the tail), {tail_q} via \
             the tail: {f:.3} local, {f_off:.3} local off the tail"
        );
        assert!(f_off <= f);
        fractions.push(f_off);
    }
    // Reads of a dirty key do happen (the mechanism is exercised) ...
    assert!(fractions[0] < 0.95, "{fractions:?}");
    // ... and with few writes nearly all reads are local at whatever member they reach.
    assert!(fractions[1] > 0.8, "{fractions:?}");
    assert!(fractions[2] > 0.97, "{fractions:?}");
    assert!(fractions[0] < fractions[1] && fractions[1] < fractions[2]);
}

// ----- views by agreement -----

/// The checks every safe run must pass.
fn assert_safe(r: &SimReport, verdict: &Result<(), CheckError>) {
    if let Err(e) = verdict {
        panic!("seed {}: {e}", r.seed);
    }
    assert_eq!(r.invariant_violation, None, "seed {}", r.seed);
    assert_eq!(r.replicas.divergent, 0, "seed {}", r.seed);
    assert_eq!(
        r.view_conflicts, 0,
        "seed {}: two views for one epoch",
        r.seed
    );
}

/// Progress: nearly every operation answered, writes succeed, and the chain still takes
/// writes after the last disruption.
fn assert_progress(r: &SimReport, min_completed: usize, min_ok: usize) {
    assert_eq!(
        r.ops_total(),
        3 * 200,
        "seed {}: the clients did not finish",
        r.seed
    );
    assert!(
        r.ops_completed >= min_completed,
        "seed {}: {} of 600 completed",
        r.seed,
        r.ops_completed
    );
    assert!(r.cas_ok >= min_ok, "seed {}: {} writes", r.seed, r.cas_ok);
    if r.ops_after_disruption >= 30 {
        assert!(
            r.cas_ok_after_disruption > 0,
            "seed {}: no write succeeded after the last disruption ({} operations)",
            r.seed,
            r.ops_after_disruption
        );
    }
}

#[test]
fn agreed_views_stay_linearizable_under_false_suspicion_partition_and_crash() {
    let started = Instant::now();
    let results = run_seeds(0..1000, SimConfig::agreement_churn);
    let (mut total, mut completed) = (0usize, 0usize);
    let (mut suspicions, mut partitions, mut views, mut refused) = (0usize, 0usize, 0u64, 0u64);
    let (mut proposals, mut nacks, mut deferred, mut stopped) = (0u64, 0u64, 0u64, 0u64);
    for (r, verdict) in &results {
        assert_safe(r, verdict);
        assert_progress(r, 570, 20);
        assert_eq!(r.crashed.len(), 1, "seed {}", r.seed);
        assert_eq!(r.joined.len(), 1, "seed {}", r.seed);
        // Founding view, the join, the crash: at least three views.
        assert!(r.views >= 3, "seed {}: {} views", r.seed, r.views);
        total += r.ops_total();
        completed += r.ops_completed;
        suspicions += r.false_suspicions;
        partitions += r.partitions;
        views += r.views;
        refused += r.replicas.no_quorum;
        proposals += r.replicas.proposals;
        nacks += r.replicas.nacks;
        deferred += r.replicas.accept_deferred;
        stopped += r.replicas.stopped;
    }
    assert!(
        completed * 1000 >= total * 995,
        "{completed} of {total} completed"
    );
    // The disruptions happened (a few are skipped when they would leave no majority), and
    // the protocol's paths were taken: competing proposals refused, accepts deferred by
    // leases, reads refused without a lease, old-epoch messages dropped after accepting.
    assert!(suspicions >= 1_800, "{suspicions} false suspicions");
    assert!(partitions >= 900, "{partitions} partitions");
    assert!(nacks > 0 && deferred > 0 && refused > 0 && stopped > 0);
    println!(
        "agreement, 1000 seeds x 600 ops: {completed}/{total} completed, {views} views, \
         {suspicions} false suspicions, {partitions} partitions, {proposals} proposals, \
         {nacks} refused, {deferred} accepts deferred by a lease, {refused} requests refused \
         without a lease or during a view change, {stopped} old-epoch messages dropped, {:.2?}",
        started.elapsed()
    );
}

/// Harsher agreement settings: chain lengths 1, 3, 4 and 5; up to 3 crashes, 3 joins, 4
/// false suspicions and 2 partitions; 5% and 20% loss, 30% reordering, suggestions delayed
/// up to 200 ms, detection in 10-400 ms; tiny bounds and short leases; with and without
/// persistence (then with restarts, a restart plan and outages).
fn agreement_stress_config(i: u64) -> SimConfig {
    let chain_len = [1usize, 3, 5, 4][(i % 4) as usize];
    let (crashes, joins, suspicions, partitions) =
        [(1usize, 1usize, 1usize, 1usize), (2, 3, 2, 1), (3, 2, 4, 2)][((i / 4) % 3) as usize];
    let loss = [0.05, 0.2][((i / 12) % 2) as usize];
    let small = (i / 24) % 2 == 1;
    let durable = (i / 48) % 2 == 1;
    let mut replica = SimConfig::default().replica;
    if small {
        replica.max_dirty_per_key = 2;
        replica.max_keys_per_page = 1;
        replica.max_pending = 4;
        replica.resend_ms = 15;
        replica.lease_ms = 80;
        replica.lease_renew_ms = 20;
        replica.lease_margin_ms = 5;
        replica.propose_retry_ms = 40;
    }
    SimConfig {
        seed: 20_000 + i,
        replica,
        chain_len,
        agreement: true,
        durable,
        crashes,
        joins,
        false_suspicions: suspicions,
        partitions,
        crash_during_change: i % 3 == 0,
        restart_plan: if durable && i % 5 == 0 {
            vec![Victim::Tail, Victim::Head]
        } else {
            Vec::new()
        },
        outage_at: (durable && i % 7 == 0).then_some(2_500),
        loss,
        reorder: 0.3,
        clients: 4,
        ops_per_client: 100,
        churn_window_ms: (200, 4_000),
        detect_ms: (10, 400),
        view_latency_max_ms: 200,
        max_time_ms: 120_000,
        ..SimConfig::default()
    }
}

#[test]
fn agreement_stress_matrix_stays_linearizable() {
    // 96 combinations x 6 seeds.
    let started = Instant::now();
    let results = run_seeds(0..576, agreement_stress_config);
    let (mut syncs, mut restarts, mut views, mut completed) = (0, 0, 0, 0);
    for (r, verdict) in &results {
        assert_safe(r, verdict);
        views += r.views;
        completed += r.ops_completed;
        assert_eq!(
            r.ops_total(),
            400,
            "seed {}: clients did not finish",
            r.seed
        );
        assert!(
            r.ops_completed * 10 >= r.ops_total() * 9,
            "seed {}: {} of {} completed",
            r.seed,
            r.ops_completed,
            r.ops_total()
        );
        syncs += r.replicas.syncs_completed;
        restarts += r.restarts;
    }
    assert!(syncs >= 576, "only {syncs} state transfers completed");
    assert!(restarts >= 288, "only {restarts} restarts");
    println!(
        "agreement stress, 576 runs x 400 ops: {completed}/230400 completed, {views} views, \
         {syncs} state transfers, {restarts} restarts, {:.2?}",
        started.elapsed()
    );
}

#[test]
fn agreement_runs_replay_exactly_from_their_seed() {
    let a = run(&SimConfig::durable_restarts(3));
    let b = run(&SimConfig::durable_restarts(3));
    assert_eq!(a.history, b.history);
    assert_eq!((a.events, a.end_ms), (b.events, b.end_ms));
    let c = run(&SimConfig::durable_restarts(4));
    assert_ne!(a.history, c.history);
}

// ----- persistence -----

#[test]
fn head_middle_and_tail_restart_from_disk_one_after_another() {
    let results = run_seeds(0..300, SimConfig::durable_restarts);
    let (mut mid_batch, mut persists) = (0, 0);
    for (r, verdict) in &results {
        assert_safe(r, verdict);
        assert_progress(r, 580, 20);
        // Each of the three was crashed, restarted from its disk, and served again.
        assert_eq!(r.restarts, 3, "seed {}", r.seed);
        assert_eq!(r.plan_steps_done, 3, "seed {}", r.seed);
        assert!(r.replicas.recoveries >= 3, "seed {}", r.seed);
        mid_batch += r.mid_batch_crashes;
        persists += r.replicas.persists;
    }
    // Some crashes cut a batch short (after some of its disk writes).
    assert!(
        mid_batch >= 300,
        "{mid_batch} crashes in the middle of a batch"
    );
    println!("restarts, 300 seeds: {mid_batch} crashes mid-batch, {persists} disk writes");
}

#[test]
fn every_member_restarts_in_turn() {
    let results = run_seeds(0..150, |seed| SimConfig {
        restart_plan: vec![Victim::Addr(0), Victim::Addr(1), Victim::Addr(2)],
        false_suspicions: 0,
        ..SimConfig::durable_restarts(seed)
    });
    for (r, verdict) in &results {
        assert_safe(r, verdict);
        assert_progress(r, 580, 20);
        assert_eq!(r.plan_steps_done, 3, "seed {}", r.seed);
        let mut crashed = r.crashed.clone();
        crashed.sort_unstable();
        assert_eq!(crashed, vec![0, 1, 2], "seed {}", r.seed);
    }
}

#[test]
fn every_member_killed_at_once_restarts_without_losing_a_write() {
    let results = run_seeds(0..300, SimConfig::outage);
    for (r, verdict) in &results {
        assert_safe(r, verdict);
        assert_progress(r, 590, 20);
        assert_eq!(r.outages, 1, "seed {}", r.seed);
        assert_eq!(r.restarts, 3, "seed {}", r.seed);
    }
}

// ----- broken variants of agreement and persistence -----

#[test]
fn reads_without_a_lease_are_caught() {
    let caught = first_caught_in(
        Config {
            unsafe_no_lease: true,
            ..base()
        },
        0..40,
        SimConfig::agreement_churn,
    );
    let (seed, why) = caught.expect("reads without a lease were never caught in 40 seeds");
    println!("unsafe_no_lease caught at seed {seed}: {why}");
}

#[test]
fn installing_a_view_without_a_majority_is_caught() {
    let caught = first_caught_in(
        Config {
            unsafe_install_without_majority: true,
            ..base()
        },
        0..40,
        SimConfig::agreement_churn,
    );
    let (seed, why) = caught.expect("views without a majority were never caught in 40 seeds");
    println!("unsafe_install_without_majority caught at seed {seed}: {why}");
}

#[test]
fn acknowledging_before_the_disk_is_caught() {
    let caught = first_caught_in(
        Config {
            unsafe_persist_late: true,
            ..base()
        },
        0..20,
        SimConfig::outage,
    );
    let (seed, why) = caught.expect("acknowledging before the disk was never caught in 20 seeds");
    println!("unsafe_persist_late caught at seed {seed}: {why}");
}
