//! Acceptance test 2 (CHORD.md invariants): 10,000 seeded random runs of join / crash /
//! stabilize with N <= 12 and r = 3, crashes only within the crash rule. Every invariant is
//! checked after every simulator step, and every run must reach Ideal once quiet. Replay a
//! failing seed with `chord-sim --scenario random-small --runs 1 --seed S --nodes 12
//! --successors 3`.

use chord::sim::scenarios::random_small_run;
use chord::sim::SimConfig;
use chord::Config;
use std::time::{Duration, Instant};

fn base() -> SimConfig {
    SimConfig {
        node: Config {
            successors: 3,
            predecessors: 3,
            replication: 3,
            // Fingers play no part in the invariants; refresh them less often to keep runs short.
            fix_fingers_interval: Duration::from_secs(2),
            ..Config::default()
        },
        check_every: 1,
        ..SimConfig::default()
    }
}

fn runs(first_seed: u64, count: u64) {
    let start = Instant::now();
    let mut checks = 0u64;
    let mut crashes = 0u64;
    for seed in first_seed..first_seed + count {
        let (ideal, sim) = random_small_run(&base(), seed, 12);
        assert_eq!(
            sim.stats.violations, 0,
            "seed {seed}: {:?}",
            sim.stats.first_violation
        );
        assert!(ideal, "seed {seed}: not Ideal once quiet");
        checks += sim.stats.checks;
        crashes += sim.stats.crashed;
    }
    let el = start.elapsed();
    println!(
        "random-small seeds {first_seed}..{}: {count} runs, {checks} invariant checks, {crashes} crashes, all Ideal once quiet; {:.2} ms/run",
        first_seed + count,
        el.as_secs_f64() * 1000.0 / count as f64
    );
}

#[test]
fn random_small_runs_a() {
    runs(0, 5000);
}

#[test]
fn random_small_runs_b() {
    runs(5000, 5000);
}
