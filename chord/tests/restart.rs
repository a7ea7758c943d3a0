//! A ring whose members are killed and restarted one after another, each on its old address
//! with its old id (a daemon restarted on its port), settles into the Ideal ring again.
//!
//! This is what `peerstore-node`'s placement tests do to move five nodes onto two hosts: kill
//! -9 each node in ring order and start it again at once, the next one killed as soon as the
//! previous one listens (before it has joined). A restarted node rejoins as the daemon does
//! (the next member it knew after each failed join, a ring of its own and a merge once none
//! let it in: [`Sim::restart`]), and the node's own configuration is used (lists of 8 on a ring
//! of 5, so every list wraps; 200 ms periods, 500 ms timeouts).
//!
//! It found a ring split for good: a node alone in a ring of its own probed a member of the
//! other ring, which still listed the node's previous run; the merge lookup routed through that
//! entry back to the node itself, whose own view (a ring of one owns every key) named it the
//! owner, so the merge found nothing and the member was forgotten. Merge lookups now never
//! consult the node's own view and keep probing while the other ring names the node itself.

use chord::sim::{invariants, Sim, SimConfig};
use chord::Config;
use rand::Rng;
use std::time::Duration;

fn node_config() -> Config {
    let stabilize = Duration::from_millis(200);
    Config {
        successors: 8,
        predecessors: 8,
        replication: 3,
        stabilize_interval: stabilize,
        fix_fingers_interval: stabilize / 4,
        rpc_timeout: Duration::from_millis(500),
        rpc_retries: 1,
        lookup_timeout: Duration::from_secs(10),
        lookup_max_hops: 64,
    }
}

/// Restarts every node of an Ideal ring of `n` in ring order; returns the virtual time (ms)
/// from the last restart until the ring was Ideal again, or why it was not after 30 s.
fn restart_all(n: usize, seed: u64, latency_max_ms: u64, fail_fast: bool) -> Result<u64, String> {
    let mut sim = Sim::new(SimConfig {
        seed,
        node: node_config(),
        latency_min_ms: 1,
        latency_max_ms,
        check_every: 0,
        fail_fast,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_random_node();
    }
    sim.build_ideal();
    sim.run_for(Duration::from_secs(3));
    let mut order: Vec<(chord::Id, u32)> = sim
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, x)| (x.node.me().id, i as u32))
        .collect();
    order.sort();
    for &(_, a) in &order {
        sim.crash(a);
        // A new process listens after a few to a few hundred milliseconds.
        let down = sim.rng().gen_range(5..400);
        sim.run_for(Duration::from_millis(down));
        // Through the first other live node by index, as the test harness does, then the
        // members it knew (its peers file).
        let first = (0..n as u32)
            .find(|&b| b != a && sim.nodes()[b as usize].alive)
            .expect("another live node");
        let mut via = vec![first];
        via.extend((0..n as u32).filter(|&b| b != a));
        sim.restart(a, via, true);
        let up = sim.rng().gen_range(0..150);
        sim.run_for(Duration::from_millis(up));
    }
    let start = sim.now();
    match sim.run_until_ideal(Duration::from_millis(50), Duration::from_secs(30)) {
        Some(t) => Ok(t.0 - start.0),
        None => Err(format!(
            "seed {seed}, latency up to {latency_max_ms} ms, fail_fast {fail_fast}: not Ideal \
             30 s after the last restart: {:?}; (status, successors, predecessor, lost) by \
             address: {:?}",
            invariants::ideal_report(&sim, false),
            sim.nodes()
                .iter()
                .map(|x| (
                    x.node.status(),
                    x.node
                        .successors()
                        .iter()
                        .map(|p| p.addr)
                        .collect::<Vec<_>>(),
                    x.node.predecessor().map(|p| p.addr),
                    x.node
                        .lost_members()
                        .iter()
                        .map(|p| p.addr)
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>()
        )),
    }
}

#[test]
fn a_ring_restarted_node_by_node_on_the_same_addresses_settles() {
    let mut failures = Vec::new();
    for latency_max_ms in [20, 100, 300] {
        let mut worst = 0;
        for seed in 0..200 {
            for fail_fast in [false, true] {
                match restart_all(5, seed, latency_max_ms, fail_fast) {
                    Ok(t) => worst = worst.max(t),
                    Err(e) => failures.push(e),
                }
            }
        }
        println!(
            "latency up to {latency_max_ms} ms: worst time to Ideal after the last restart \
             {worst} ms"
        );
    }
    assert!(
        failures.is_empty(),
        "{} runs did not settle: {failures:#?}",
        failures.len()
    );
}
