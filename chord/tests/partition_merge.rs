//! (Merge) Rings split by a partition merge again once it heals (issue 16).
//!
//! A partition long enough for both sides to declare each other dead leaves two rings (a node
//! cut off alone becomes a ring of one that owns every key). Each node keeps the members it
//! lost and probes them with back-off; once one answers, a lookup of successor(me + 1) through
//! it finds where the node belongs in the other ring, the node adopts that successor (after it
//! answers) and notifies it, and stabilize/rectify splice the rings together on both sides.
//!
//! While the network is split two rings are the expected state, so the invariant checker is
//! paused from the cut until the ring is Ideal again; then every invariant is checked, and the
//! ring must stay Ideal with every check passing for a while longer.

mod common;
use chord::sim::{invariants, Sim, SimConfig};
use chord::{Action, Config, Id, Message, Node, Peer, Status, Time};
use common::{id, peer};
use std::time::Duration;

fn cfg(r: usize) -> Config {
    Config {
        successors: r,
        predecessors: r,
        replication: 3,
        ..Config::default()
    }
}

/// An Ideal ring of `n` random nodes, a few periods old, every step checked.
fn ring(n: usize, r: usize, seed: u64, loss: f64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        node: cfg(r),
        check_every: 1,
        loss,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_random_node();
    }
    sim.build_ideal();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    sim
}

/// Cuts `group` off from the rest for `cut`, checks that both sides dropped each other, heals,
/// and returns the time (ms after the heal) until the ring was one Ideal ring again.
fn cut_and_heal(sim: &mut Sim, group: &[u32], cut: Duration) -> u64 {
    let seed = sim.cfg.seed;
    sim.cfg.check_every = 0;
    for &a in group {
        sim.set_group(a, 1);
    }
    sim.run_for(cut);
    let n = sim.nodes().len() as u32;
    let inside = |a: u32| group.contains(&a);
    for a in 0..n {
        let node = &sim.nodes()[a as usize].node;
        assert_eq!(node.status(), Status::Member);
        let listed: Vec<u32> = node
            .successors()
            .iter()
            .chain(node.predecessors())
            .map(|p| p.addr)
            .collect();
        assert!(
            listed.iter().all(|&b| inside(b) == inside(a)),
            "seed {seed}: node {a} still lists a node across the cut: {listed:?}"
        );
        if inside(a) {
            assert!(
                !node.lost_members().is_empty(),
                "seed {seed}: node {a} remembers no lost member"
            );
        }
        if group.len() == 1 && inside(a) {
            assert!(node.successors().is_empty() && node.predecessor().is_none());
            assert!(node.owns(Id::hash(b"any key")), "alone: owns every key");
        }
    }
    // The neighbours of the cut-off nodes declared them dead and remember them (the others
    // only saw them vanish from their lists).
    assert!(
        (0..n)
            .filter(|&a| !inside(a))
            .any(|a| sim.nodes()[a as usize]
                .node
                .lost_members()
                .iter()
                .any(|p| inside(p.addr))),
        "seed {seed}: nobody outside remembers the cut-off nodes"
    );
    assert!(
        !invariants::is_ideal(sim),
        "seed {seed}: two rings while cut"
    );
    sim.heal();
    let t0 = sim.now().0;
    let t = sim.run_until_ideal(Duration::from_millis(100), Duration::from_secs(300));
    let Some(t) = t else {
        panic!(
            "seed {seed}: group {group:?} never merged back: {:?}",
            invariants::ideal_report(sim, false)
        );
    };
    // One correct ring: every invariant holds, every successor list and predecessor is right,
    // and it stays so with every step checked.
    sim.cfg.check_every = 1;
    assert!(sim.check_now(), "{:?}", sim.stats.first_violation);
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    assert!(
        invariants::is_ideal(sim),
        "seed {seed}: {:?}",
        invariants::ideal_report(sim, false)
    );
    // Every node's successor is the next member in id order.
    let mut ids: Vec<(Id, u32)> = (0..n)
        .map(|a| (sim.nodes()[a as usize].node.me().id, a))
        .collect();
    ids.sort();
    for (k, &(_, a)) in ids.iter().enumerate() {
        let want = ids[(k + 1) % ids.len()].1;
        assert_eq!(sim.nodes()[a as usize].node.successors()[0].addr, want);
    }
    t.0 - t0
}

fn report(what: &str, times: &[u64], merges: u64) {
    let max = times.iter().max().copied().unwrap_or(0);
    let mean = times.iter().sum::<u64>() as f64 / times.len().max(1) as f64;
    println!(
        "{what}: {} runs merged, Ideal after heal: mean {mean:.0} ms, max {max} ms; {merges} MergeFound events",
        times.len()
    );
}

/// One node cut off for 60 s (both sides drop each other; it ends up alone, owning every
/// key), then the link heals: one ring again. The e2e_netns set-up (5 nodes, r = 8) and a
/// ring larger than r (12 nodes, r = 3).
#[test]
fn lone_node_partition_merges() {
    for (n, r) in [(5usize, 8usize), (12, 3)] {
        let mut times = Vec::new();
        let mut merges = 0;
        for seed in 0..20u64 {
            let mut sim = ring(n, r, 100 + seed, 0.0);
            let x = (seed % n as u64) as u32;
            times.push(cut_and_heal(&mut sim, &[x], Duration::from_secs(60)));
            merges += sim.stats.merges_found;
        }
        report(&format!("lone node, N={n} r={r}"), &times, merges);
    }
}

/// Two nodes cut off together (neighbours or not) for 60 s: two rings of 2 and N-2, merged
/// once the partition heals.
#[test]
fn pair_partition_merges() {
    for (n, r) in [(5usize, 8usize), (12, 3)] {
        for adjacent in [true, false] {
            let mut times = Vec::new();
            let mut merges = 0;
            for seed in 0..20u64 {
                let mut sim = ring(n, r, 200 + seed, 0.0);
                let mut ids: Vec<(Id, u32)> = sim
                    .nodes()
                    .iter()
                    .enumerate()
                    .map(|(i, x)| (x.node.me().id, i as u32))
                    .collect();
                ids.sort();
                let k = (seed % n as u64) as usize;
                let other = if adjacent { k + 1 } else { k + 2 };
                let group = [ids[k].1, ids[other % n].1];
                times.push(cut_and_heal(&mut sim, &group, Duration::from_secs(60)));
                merges += sim.stats.merges_found;
            }
            let kind = if adjacent {
                "neighbours"
            } else {
                "not neighbours"
            };
            report(&format!("pair ({kind}), N={n} r={r}"), &times, merges);
        }
    }
}

/// The same with 2% message loss and a longer cut (10 minutes: probes have backed off to
/// their longest wait).
#[test]
fn partition_merges_despite_loss_and_backoff() {
    let mut times = Vec::new();
    let mut merges = 0;
    for seed in 0..10u64 {
        let mut sim = ring(8, 3, 300 + seed, 0.02);
        let group: Vec<u32> = if seed % 2 == 0 { vec![3] } else { vec![1, 5] };
        times.push(cut_and_heal(&mut sim, &group, Duration::from_secs(600)));
        merges += sim.stats.merges_found;
    }
    report("N=8 r=3, 2% loss, 10 min cut", &times, merges);
    // Back-off: the last probe before the heal may be up to 64 periods old, so the merge
    // takes at most about that long.
    assert!(times.iter().all(|&t| t <= 100_000), "{times:?}");
}

/// A node that started a ring of its own (nobody answered at start-up) and is handed the
/// members it knew ([`Node::remember`], the driver's peers file) joins their ring once they
/// answer.
#[test]
fn remembered_members_merge_a_ring_of_one() {
    for seed in 0..10u64 {
        let mut sim = ring(6, 3, 400 + seed, 0.0);
        let members = sim.live_members();
        let x = sim.add_random_node();
        sim.cfg.check_every = 0;
        sim.create(x);
        let known: Vec<Peer<u32>> = members
            .iter()
            .take(2)
            .map(|&a| sim.nodes()[a as usize].node.me().clone())
            .collect();
        let now = sim.now();
        sim.node_mut(x).unwrap().remember(now, known);
        sim.flush(x);
        let t = sim.run_until_ideal(Duration::from_millis(100), Duration::from_secs(60));
        assert!(
            t.is_some(),
            "seed {seed}: {:?}",
            invariants::ideal_report(&sim, false)
        );
        sim.cfg.check_every = 1;
        assert!(sim.check_now(), "{:?}", sim.stats.first_violation);
        assert_eq!(sim.member_count(), 7);
        // The other remembered member answers its probe too and is no longer lost.
        sim.run_for(Duration::from_secs(10));
        assert!(sim.nodes()[x as usize].node.lost_members().is_empty());
        assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    }
}

/// Half the ring (every other address) cut off for 30 s: each side closes its own ring; after
/// the heal the halves merge into one Ideal ring.
#[test]
fn halves_partition_merges() {
    use chord::sim::scenarios::{self, Opts};
    for seed in [8u64, 9] {
        let o = Opts {
            sim: SimConfig {
                seed,
                node: cfg(8),
                check_every: 1,
                ..SimConfig::default()
            },
            nodes: 64,
            direct_build: true,
            partition_ms: 30_000,
            ideal_limit: Duration::from_secs(600),
            ..Opts::default()
        };
        let m = scenarios::partition(&o);
        println!(
            "partition N=64 r=8 seed {seed}: halves cut off for 30 s, one Ideal ring again after {:?} rounds, {} checks, {} violations",
            m.rounds_to_ideal, m.invariant_checks, m.invariant_violations
        );
        assert_eq!(m.ideal_at_end, Some(true));
        assert_eq!(m.invariant_violations, 0, "{:?}", m.first_violation);
    }
}

/// Probing is bounded: a node whose peers all stay dead probes one at a time, each with a
/// doubling wait up to 64 periods, and (alone) keeps them; the probes are single requests
/// without retries and never declare anything.
#[test]
fn probing_dead_members_is_bounded() {
    let mut n = Node::new(cfg(3), peer(100));
    n.install_member_state(
        Time(0),
        vec![peer(200), peer(300), peer(400)],
        vec![peer(50), peer(40)],
        vec![None; 256],
    );
    let mut probes: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    let mut t = Time(0);
    let end = Time(3_000_000);
    while t < end {
        while let Some(a) = n.poll_action() {
            if let Action::Send {
                to,
                msg: Message::FindSuccessor { key, .. },
            } = a
            {
                if key == id(100).add_pow2(0) && n.successors().is_empty() {
                    probes.entry(to).or_default().push(t.0);
                }
            }
        }
        assert!(n.snapshot().outstanding_requests <= 1 || t.0 < 60_000);
        t = n.poll_timeout().expect("a timer while members are lost");
        n.handle_timeout(t);
    }
    assert!(n.successors().is_empty() && n.predecessor().is_none());
    let mut lost: Vec<u32> = n.lost_members().iter().map(|p| p.addr).collect();
    lost.sort();
    assert_eq!(lost, vec![40, 50, 200, 300, 400], "alone: kept");
    for (to, at) in &probes {
        // 3000 s at 1 s periods: the waits 2, 4, .., 64 then every 64 periods (plus the
        // 2 s rpc timeout each).
        assert!(at.len() <= 3000 / 64 + 8, "{to}: {} probes", at.len());
        let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.windows(2).all(|g| g[1] + 15_000 >= g[0]),
            "{to}: {gaps:?}"
        );
        assert!(gaps.iter().all(|&g| g <= 80_000), "{to}: {gaps:?}");
    }
    let total: usize = probes.values().map(|v| v.len()).sum();
    println!("alone with 5 dead members for 3000 s: {total} probes {probes:?}");
}

/// In a ring of more than r members, a member that crashed for good is forgotten after
/// 4096 periods; until then it is probed with back-off.
#[test]
fn crashed_member_is_forgotten_in_a_full_ring() {
    let mut sim = ring(10, 3, 500, 0.0);
    let x = sim.live_members()[4];
    sim.crash(x);
    sim.run_for(Duration::from_secs(60));
    let remembering = |sim: &Sim| {
        sim.live_members()
            .into_iter()
            .filter(|&a| {
                sim.nodes()[a as usize]
                    .node
                    .lost_members()
                    .iter()
                    .any(|p| p.addr == x)
            })
            .count()
    };
    assert!(remembering(&sim) > 0);
    assert!(invariants::is_ideal(&sim));
    let before = sim.stats.messages;
    sim.run_for(Duration::from_secs(4100));
    assert_eq!(remembering(&sim), 0, "forgotten after 4096 periods");
    assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    assert!(invariants::is_ideal(&sim));
    println!(
        "ring of 9 + 1 crashed member over 4100 s: {} messages",
        sim.stats.messages - before
    );
}

/// A whole ring restarted at once (a power cut): every node comes back as a non-member, no join
/// can succeed, so each starts a ring of one and remembers the members it knew (the driver's
/// peers file). The rings of one find each other and become one Ideal ring.
#[test]
fn a_whole_ring_restarted_at_once_becomes_one_ring_again() {
    for (n, seed) in [
        (5usize, 600u64),
        (5, 601),
        (5, 602),
        (8, 603),
        (8, 604),
        (16, 605),
    ] {
        let mut sim = Sim::new(SimConfig {
            seed,
            node: cfg(3),
            check_every: 0,
            ..SimConfig::default()
        });
        let addrs: Vec<u32> = (0..n).map(|_| sim.add_random_node()).collect();
        let peers: Vec<Peer<u32>> = addrs
            .iter()
            .map(|&a| sim.nodes()[a as usize].node.me().clone())
            .collect();
        for &a in &addrs {
            sim.create(a);
            // What a peers file holds: the node's neighbours in ring order and a finger, not
            // everyone.
            let mut order: Vec<&Peer<u32>> = peers.iter().collect();
            order.sort_by_key(|p| p.id);
            let me = order.iter().position(|p| p.addr == a).unwrap();
            let mut known: Vec<Peer<u32>> = [1, 2, n - 1, n / 2]
                .iter()
                .map(|k| order[(me + k) % n].clone())
                .filter(|p| p.addr != a)
                .collect();
            known.sort_by_key(|p| p.addr);
            known.dedup();
            let now = sim.now();
            sim.node_mut(a).unwrap().remember(now, known);
            sim.flush(a);
        }
        let t = sim.run_until_ideal(Duration::from_millis(100), Duration::from_secs(300));
        assert!(
            t.is_some(),
            "n {n} seed {seed}: {:?}",
            invariants::ideal_report(&sim, false)
        );
        println!("whole ring of {n} restarted (seed {seed}): one Ideal ring after {t:?}");
        assert_eq!(sim.member_count(), n);
        sim.cfg.check_every = 1;
        sim.run_for(Duration::from_secs(10));
        assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    }
}
