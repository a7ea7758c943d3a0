//! Runs the chain simulator over many seeds and prints what it measured.
//!
//! ```text
//! cargo run --release -p peerstore-chain --example chain-sim -- \
//!     [seeds=200] [read_fraction=0.5] [churn|nochurn] [safe|dirty-reads|skip-transfer|no-dedup]
//! ```
//!
//! Each seed is one run of the default [`SimConfig`] (chain of 3, 3 clients x 200 operations
//! on one key, 2% loss, 10% reordering, one crash and one join unless `nochurn`), checked for
//! linearizability. Prints every seed the checker rejects, then totals: operations,
//! completion, reads served locally vs via a tail version query, time taken.

use chain::sim::{run_checked, SimConfig};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let read_fraction: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0.5);
    let churn = args.get(3).is_none_or(|s| s != "nochurn");
    let variant = args.get(4).map_or("safe", String::as_str);
    let mut replica = SimConfig::default().replica;
    match variant {
        "safe" => {}
        "dirty-reads" => replica.unsafe_read_dirty = true,
        "skip-transfer" => replica.unsafe_skip_state_transfer = true,
        "no-dedup" => replica.unsafe_no_dedup = true,
        other => {
            eprintln!("unknown variant {other}");
            std::process::exit(2);
        }
    }
    let started = Instant::now();
    let (mut ops, mut done, mut unknown, mut bad) = (0usize, 0usize, 0usize, 0u64);
    let (mut local, mut tail, mut retries, mut virt, mut msgs) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut at_tail = 0u64;
    let mut first_bad = None;
    let mut worst = 1.0f64;
    for seed in 0..seeds {
        let cfg = SimConfig {
            seed,
            read_fraction,
            replica: replica.clone(),
            crashes: usize::from(churn),
            joins: usize::from(churn),
            check_invariants: !replica.is_unsafe(),
            max_time_ms: 60_000,
            ..SimConfig::default()
        };
        let (r, verdict) = run_checked(&cfg);
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
        ops += r.ops_total();
        done += r.ops_completed;
        unknown += r.ops_unknown;
        local += r.replicas.reads_local;
        at_tail += r.replicas.reads_local_at_tail;
        tail += r.replicas.reads_tail_query;
        retries += r.client_retries;
        virt += r.end_ms;
        msgs += r.messages;
        worst = worst.min(r.ops_completed as f64 / r.ops_total().max(1) as f64);
    }
    println!(
        "variant {variant}, {seeds} seeds, read fraction {read_fraction}, churn {churn}: \
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
        "client retries {retries}, messages {msgs}, mean virtual run {} ms, wall {:.2?}",
        virt / seeds.max(1),
        started.elapsed()
    );
}
