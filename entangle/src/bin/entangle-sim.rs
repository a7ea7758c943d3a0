//! Durability simulator: step-archive (parity-only or systematic layout) versus replication at
//! the same storage overhead.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use entangle::sim::{run_layout, summarize, table_layout, Layout, SimConfig};
use entangle::PointerSelector;

/// Simulates node failures on a ring and reports the fraction of data lost after repair.
#[derive(Debug, Parser)]
#[command(name = "entangle-sim", version)]
struct Args {
    /// Nodes in the ring.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Source (data) blocks written.
    #[arg(long, default_value_t = 20_000)]
    blocks: usize,
    /// Fractions of nodes killed, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0.3,0.4,0.5")]
    kill: Vec<f64>,
    /// Number of seeds (seeds first-seed .. first-seed + seeds).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Source blocks per codeword.
    #[arg(long, default_value_t = 2)]
    s: u16,
    /// Pointers per codeword.
    #[arg(long, default_value_t = 10)]
    t: u16,
    /// Parities per codeword.
    #[arg(long, default_value_t = 6)]
    p: u16,
    /// Replicas of every stored block of the step-archive.
    #[arg(long, default_value_t = 1)]
    replication: usize,
    /// Codeword layout: "parity-only" (only the p parities are stored, overhead p/s x r) or
    /// "systematic" (the s sources stored once each plus p parities over sources and
    /// pointers, overhead (s+p)/s x r).
    #[arg(long, default_value_t = Layout::ParityOnly)]
    layout: Layout,
    /// Pointers drawn from the tail window (default: t / 2).
    #[arg(long)]
    tail: Option<usize>,
    /// Tail window size, in blocks.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Ring ids each joining node draws, keeping the one that splits the largest arc best
    /// (1: random ids; the node's `--id-choices`).
    #[arg(long, default_value_t = 1)]
    id_choices: usize,
    /// Codewords per write session: pointers only among the session's own blocks (anchors at
    /// its start), as the node entangles a client's backup run. Default: one session.
    #[arg(long)]
    session: Option<usize>,
    /// Systematic layout: the parities of the newest N codewords are not stored yet when a
    /// codeword is written (the node's parities after the acknowledgement, default): pointers
    /// drawn at them go to sources of the same codewords.
    #[arg(long)]
    later: Option<usize>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run_cli(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("entangle-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli(args: Args) -> Result<()> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let t = usize::from(args.t);
    let selector = PointerSelector::new(t, args.tail.unwrap_or(t / 2), args.window)
        .context("pointer selection")?;
    let config = SimConfig {
        nodes: args.nodes,
        blocks: args.blocks,
        kills: args.kill,
        seeds: (args.first_seed..args.first_seed + args.seeds).collect(),
        s: args.s,
        t: args.t,
        p: args.p,
        replication: args.replication,
        selector,
        id_choices: args.id_choices,
        session: args.session,
        later: args.later,
    };
    let results = run_layout(&config, args.layout).context("invalid simulation setup")?;
    if args.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{} layout, {} nodes, {} data blocks, seeds {:?}, pointers: {} uniform + {} from the newest {}, id choices {}",
            args.layout,
            config.nodes,
            config.blocks,
            config.seeds,
            t - config.selector.tail,
            config.selector.tail,
            config.selector.window,
            config.id_choices
        );
        print!(
            "{}",
            table_layout(&config, args.layout, &summarize(&config, &results))
        );
    }
    Ok(())
}
