//! `chord-sim`: runs one deterministic simulation scenario and prints one JSON object of
//! metrics. Example:
//! `cargo run --release -p chord --bin chord-sim -- --scenario concurrent-join --nodes 2000 --seed 7`

use anyhow_free::Result;
use chord::sim::scenarios::{self, Opts};
use chord::sim::SimConfig;
use chord::Config;
use clap::Parser;
use std::time::{Duration, Instant};

mod anyhow_free {
    pub type Result<T> = std::result::Result<T, String>;
}

#[derive(Parser, Debug)]
#[command(
    name = "chord-sim",
    about = "Deterministic Chord simulator (prints one JSON object)"
)]
struct Cli {
    /// concurrent-join | lookups | mass-crash | churn | vnodes-load | random-small | partition
    #[arg(long)]
    scenario: String,
    /// Number of nodes (physical nodes for vnodes-load; max N for random-small).
    #[arg(long, default_value_t = 64)]
    nodes: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Successor-list length r (default: max(8, 2 log2 N)).
    #[arg(long)]
    successors: Option<usize>,
    /// Virtual nodes per physical node (vnodes-load).
    #[arg(long, default_value_t = 1)]
    vnodes: usize,
    /// One-way latency range in ms, "a..b".
    #[arg(long, default_value = "5..50")]
    latency_ms: String,
    /// Message loss probability.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Lookups to issue (keys for vnodes-load).
    #[arg(long, default_value_t = 10_000)]
    lookups: usize,
    /// Fraction of nodes to crash (mass-crash).
    #[arg(long, default_value_t = 0.5)]
    crash_fraction: f64,
    /// Joins and crashes per stabilization period, each (churn).
    #[arg(long, default_value_t = 1.0)]
    churn_rate: f64,
    /// Length of the churn phase in stabilization periods.
    #[arg(long, default_value_t = 60)]
    churn_periods: u64,
    /// Share of churn departures that are graceful leaves (the rest crash).
    #[arg(long, default_value_t = 0.0)]
    leave_share: f64,
    /// Partition length in ms (partition).
    #[arg(long, default_value_t = 3000)]
    partition_ms: u64,
    /// Runs (random-small).
    #[arg(long, default_value_t = 1000)]
    runs: u64,
    /// Check the safety invariants every K events (0 = never; default: N, 1 for random-small).
    #[arg(long)]
    check_every: Option<u64>,
    /// Stabilize interval in ms.
    #[arg(long, default_value_t = 1000)]
    stabilize_ms: u64,
    /// RPC timeout in ms.
    #[arg(long, default_value_t = 2000)]
    rpc_timeout_ms: u64,
    /// Messages to crashed nodes fail fast at the sender (refused connection) instead of
    /// timing out.
    #[arg(long)]
    fail_fast: bool,
    /// Start lookups/mass-crash/churn from an installed Ideal ring (exact fingers) instead of
    /// concurrent joins.
    #[arg(long)]
    direct_build: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("latency must look like 5..50, got {s}"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("latency: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("latency: {e}"))?;
    if a > b || a == 0 {
        return Err("latency range must be a..b with 1 <= a <= b".into());
    }
    Ok((a, b))
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("chord-sim: {e}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<String> {
    let (lmin, lmax) = parse_range(&cli.latency_ms)?;
    let n_total = (cli.nodes * cli.vnodes.max(1)).max(2);
    let default_r = (2.0 * (n_total as f64).log2()).ceil() as usize;
    let r = cli.successors.unwrap_or(default_r.max(8));
    let small = cli.scenario == "random-small";
    let node = Config {
        successors: r,
        predecessors: r,
        replication: 3.min(r + 1),
        stabilize_interval: Duration::from_millis(cli.stabilize_ms),
        rpc_timeout: Duration::from_millis(cli.rpc_timeout_ms),
        lookup_timeout: Duration::from_millis(cli.rpc_timeout_ms * 5),
        ..Config::default()
    };
    node.validate().map_err(|e| e.to_string())?;
    let sim = SimConfig {
        seed: cli.seed,
        node,
        latency_min_ms: lmin,
        latency_max_ms: lmax,
        loss: cli.loss,
        check_every: cli
            .check_every
            .unwrap_or(if small { 1 } else { n_total as u64 }),
        require_min_members: false,
        fail_fast: cli.fail_fast,
    };
    let opts = Opts {
        sim,
        nodes: cli.nodes,
        vnodes: cli.vnodes.max(1),
        lookups: cli.lookups,
        crash_fraction: cli.crash_fraction,
        churn_rate: cli.churn_rate,
        churn_periods: cli.churn_periods,
        runs: cli.runs,
        direct_build: cli.direct_build,
        leave_share: cli.leave_share,
        partition_ms: cli.partition_ms,
        ..Opts::default()
    };
    let start = Instant::now();
    let mut m = match cli.scenario.as_str() {
        "concurrent-join" => scenarios::concurrent_join(&opts),
        "lookups" => scenarios::lookups(&opts),
        "mass-crash" => scenarios::mass_crash(&opts),
        "churn" => scenarios::churn(&opts),
        "vnodes-load" => scenarios::vnodes_load(&opts),
        "random-small" => scenarios::random_small(&opts),
        "partition" => scenarios::partition(&opts),
        other => return Err(format!("unknown scenario {other}")),
    };
    m.wall_ms = Some(start.elapsed().as_millis() as u64);
    serde_json::to_string(&m).map_err(|e| e.to_string())
}
