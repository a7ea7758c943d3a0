//! Runs the chain simulator over many seeds and prints what it measured.
//!
//! ```text
//! cargo run --release -p peerstore-chain --example chain-sim -- \
//!     [seeds=200] [read_fraction=0.5] [mode=churn] [variant=safe]
//! ```
//!
//! Modes:
//! - `churn`, `nochurn`: the oracle's views; the default [`SimConfig`] (chain of 3, 3 clients x
//!   200 operations on one key, 2% loss, 10% reordering, one crash and one join unless
//!   `nochurn`);
//! - `agree`: views by agreement ([`SimConfig::agreement_churn`]: a join, two false
//!   suspicions, a partition, a crash during a view change);
//! - `restarts`: agreement and persistence, head, middle and tail restarted one after another
//!   ([`SimConfig::durable_restarts`]);
//! - `outage`: agreement and persistence, every replica killed at once and restarted
//!   ([`SimConfig::outage`]).
//!
//! Variants: `safe`, and the broken `dirty-reads`, `skip-transfer`, `no-dedup`, `no-lease`,
//! `minority-install`, `persist-late`.
//!
//! Each seed is checked for linearizability. Prints every seed the checker rejects, then
//! totals: operations, completion, reads served locally vs via a tail version query, time.

use chain::sim::{run_checked, SimConfig};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let read_fraction: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let mode = args.get(3).map_or("churn", String::as_str);
    let variant = args.get(4).map_or("safe", String::as_str);
    let mut replica = SimConfig::default().replica;
    match variant {
        "safe" => {}
        "dirty-reads" => replica.unsafe_read_dirty = true,
        "skip-transfer" => replica.unsafe_skip_state_transfer = true,
        "no-dedup" => replica.unsafe_no_dedup = true,
        "no-lease" => replica.unsafe_no_lease = true,
        "minority-install" => replica.unsafe_install_without_majority = true,
        "persist-late" => replica.unsafe_persist_late = true,
        other => {
            eprintln!("unknown variant {other}");
            std::process::exit(2);
        }
    }
    let make = |seed: u64| -> SimConfig {
        let base = match mode {
            "churn" => SimConfig::default(),
            "nochurn" => SimConfig {
                crashes: 0,
                joins: 0,
                ..SimConfig::default()
            },
            "agree" => SimConfig::agreement_churn(seed),
            "restarts" => SimConfig::durable_restarts(seed),
            "outage" => SimConfig::outage(seed),
            other => {
                eprintln!("unknown mode {other}");
                std::process::exit(2);
            }
        };
        SimConfig {
            seed,
            read_fraction,
            replica: replica.clone(),
            check_invariants: !replica.is_unsafe(),
            max_time_ms: 60_000,
            ..base
        }
    };
    let started = Instant::now();
    let (mut ops, mut done, mut unknown, mut bad) = (0usize, 0usize, 0usize, 0u64);
    let (mut local, mut tail, mut retries, mut virt, mut msgs) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut at_tail, mut conflicts, mut views, mut restarts) = (0u64, 0u64, 0u64, 0usize);
    let (mut ok_after, mut no_quorum, mut persists) = (0usize, 0u64, 0u64);
    let mut first_bad = None;
    let mut worst = 1.0f64;
    for seed in 0..seeds {
        let (r, verdict) = run_checked(&make(seed));
        if let Err(e) = verdict {
            bad += 1;
            first_bad.get_or_insert(seed);
            if variant == "safe" || bad <= 3 {
                println!("seed {seed}: {e}");
            }
        }
        if let Some(v) = &r.invariant_violation {
            println!("seed {seed}: invariant: {v}");
        }
        if r.view_conflicts > 0 && variant == "safe" {
            println!("seed {seed}: {} view conflicts", r.view_conflicts);
        }
        ops += r.ops_total();
        done += r.ops_completed;
        unknown += r.ops_unknown;
        local += r.replicas.reads_local;
        at_tail += r.replicas.reads_local_at_tail;
        tail += r.replicas.reads_tail_query;
        retries += r.client_retries;
        virt += r.end_ms;
        msgs += r.messages;
        conflicts += r.view_conflicts;
        views += r.views;
        restarts += r.restarts;
        ok_after += r.cas_ok_after_disruption;
        no_quorum += r.replicas.no_quorum;
        persists += r.replicas.persists;
        worst = worst.min(r.ops_completed as f64 / r.ops_total().max(1) as f64);
    }
    println!(
        "mode {mode}, variant {variant}, {seeds} seeds, read fraction {read_fraction}: \
         {ops} operations, {done} completed, {unknown} unknown (worst seed {:.1}% completed)",
        worst * 100.0
    );
    println!(
        "non-linearizable seeds: {bad}{}",
        first_bad.map_or(String::new(), |s| format!(" (first: seed {s})"))
    );
    println!(
        "reads decided at replicas: {local} local, {tail} via a tail version query \
         ({:.1}% local)",
        100.0 * local as f64 / (local + tail).max(1) as f64
    );
    let off = local - at_tail;
    println!(
        "  at members other than the tail: {off} local, {tail} via the tail ({:.1}% local)",
        100.0 * off as f64 / (off + tail).max(1) as f64
    );
    println!(
        "views {views}, view conflicts {conflicts}, restarts {restarts}, refused for want of \
         a lease or during a view change {no_quorum}, persists {persists}, writes ok after the \
         last disruption {ok_after}"
    );
    println!(
        "client retries {retries}, messages {msgs}, mean virtual run {} ms, wall {:.2?}",
        virt / seeds.max(1),
        started.elapsed()
    );
}
