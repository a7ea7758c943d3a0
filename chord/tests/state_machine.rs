//! Unit tests of the state machine, one rule of CHORD.md each (the rule is named in the test's
//! doc comment). Node-level tests feed messages by hand; the others use the simulator with the
//! invariants checked after every step.

mod common;
use chord::sim::{invariants, Sim, SimConfig};
use chord::{Action, Config, Event, LookupError, Message, Node, Status, Time};
use common::{id, peer};
use std::time::Duration;

fn cfg() -> Config {
    Config {
        successors: 3,
        predecessors: 3,
        replication: 3,
        ..Config::default()
    }
}

fn drain(n: &mut Node<u32>) -> Vec<Action<u32>> {
    let mut v = Vec::new();
    while let Some(a) = n.poll_action() {
        v.push(a);
    }
    v
}

fn sends(acts: &[Action<u32>]) -> Vec<(u32, Message<u32>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn events(acts: &[Action<u32>]) -> Vec<Event<u32>> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// A member with id 10*k installed with the given tables; maintenance paused so only what
/// the test does happens.
fn member(v: u64, succs: &[u64], preds: &[u64], fingers: &[(usize, u64)]) -> Node<u32> {
    let mut n = Node::new(cfg(), peer(v));
    let mut f = vec![None; 256];
    for &(i, p) in fingers {
        f[i] = Some(peer(p));
    }
    n.install_member_state(
        Time(0),
        succs.iter().map(|&s| peer(s)).collect(),
        preds.iter().map(|&s| peer(s)).collect(),
        f,
    );
    n.set_maintenance(Time(0), false);
    drain(&mut n);
    n
}

fn info(req: u64, me: u64, pred: Option<u64>, succs: &[u64]) -> Message<u32> {
    Message::Info {
        req,
        member: true,
        id: id(me),
        pred: pred.map(peer),
        successors: succs.iter().map(|&s| peer(s)).collect(),
        closer: vec![],
    }
}

fn small_sim(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        node: cfg(),
        check_every: 1,
        ..SimConfig::default()
    });
    for _ in 0..n {
        sim.add_random_node();
    }
    sim.build_ideal();
    sim
}

/// [Rectify] A notifier in (pred, self) is adopted; one outside is adopted only after the
/// current predecessor fails a liveness check.
#[test]
fn rectify_adopts_closer_notifier_or_replaces_dead_pred() {
    let mut n = member(100, &[110, 120, 130], &[50], &[]);
    let notify = |req, v: u64, preds: &[u64]| Message::Notify {
        req,
        node: peer(v),
        preds: preds.iter().map(|&p| peer(p)).collect(),
    };
    n.handle_message(Time(1), 70, notify(1, 70, &[60, 50]));
    assert_eq!(n.predecessor(), Some(&peer(70)));
    assert_eq!(n.predecessors(), &[peer(70), peer(60), peer(50)]);
    let acts = drain(&mut n);
    assert!(sends(&acts).contains(&(70, Message::Ack { req: 1 })));
    assert!(events(&acts).iter().any(
        |e| matches!(e, Event::RangesChanged { ranges } if ranges.owned == (id(70), id(100)))
    ));

    // 30 is not in (70, 100): keep 70, but check that 70 lives.
    n.handle_message(Time(2), 30, notify(2, 30, &[20]));
    assert_eq!(n.predecessor(), Some(&peer(70)));
    let acts = drain(&mut n);
    let ping = sends(&acts)
        .into_iter()
        .find(|(to, m)| *to == 70 && matches!(m, Message::Ping { .. }))
        .expect("ping to the current predecessor");
    // 70 answers: nothing changes.
    n.handle_message(
        Time(3),
        70,
        Message::Pong {
            req: ping.1.req_id(),
            member: true,
        },
    );
    assert_eq!(n.predecessor(), Some(&peer(70)));

    // 70 now forgets its own predecessors (it tells us an empty list).
    n.handle_message(Time(4), 70, notify(4, 70, &[]));
    assert_eq!(n.predecessors(), &[peer(70)]);
    // Again a notify from 30, but now 70 stays silent for 2 attempts (rpc_retries = 1): it is
    // dead, so adopt 30.
    n.handle_message(Time(5), 30, notify(3, 30, &[20]));
    drain(&mut n);
    let t = n.poll_timeout().expect("a request deadline");
    n.handle_timeout(t);
    assert_eq!(
        n.predecessor(),
        Some(&peer(70)),
        "one retry before declaring death"
    );
    let t = n.poll_timeout().expect("retry deadline");
    n.handle_timeout(t);
    assert_eq!(n.predecessor(), Some(&peer(30)));
    assert_eq!(n.predecessors(), &[peer(30), peer(20)]);
    let ev = events(&drain(&mut n));
    assert!(ev.contains(&Event::PeerFailed { peer: peer(70) }));
    assert!(ev.iter().any(|e| matches!(e, Event::RangesChanged { .. })));
}

/// [Stabilize] A dead succ0 is dropped and the list shifts; the next entry is asked at once.
#[test]
fn dead_successor_is_dropped() {
    let mut n = member(10, &[20, 30, 40], &[5], &[]);
    n.set_maintenance(Time(0), true);
    n.handle_timeout(Time(0));
    let s = sends(&drain(&mut n));
    assert!(matches!(s[0], (20, Message::GetState { .. })));
    // rpc_timeout = 2 s: one retry, then declared dead.
    n.handle_timeout(Time(2000));
    let s = sends(&drain(&mut n));
    assert!(s
        .iter()
        .any(|(to, m)| *to == 20 && matches!(m, Message::GetState { .. })));
    assert_eq!(n.successors().len(), 3, "one retry before declaring death");
    n.handle_timeout(Time(4000));
    assert_eq!(n.successors(), &[peer(30), peer(40)]);
    let acts = drain(&mut n);
    assert!(events(&acts).contains(&Event::PeerFailed { peer: peer(20) }));
    assert!(sends(&acts)
        .iter()
        .any(|(to, m)| *to == 30 && matches!(m, Message::GetState { .. })));
}

/// [Stabilize] succ0's predecessor p in (self, succ0) is adopted only after it answers; if it
/// does not, the list becomes succ0 followed by succ0's list.
#[test]
fn stabilize_adopts_new_node_only_if_alive() {
    for p_alive in [true, false] {
        let mut n = member(10, &[30, 40], &[5], &[]);
        n.set_maintenance(Time(0), true);
        n.handle_timeout(Time(0));
        let (_, get) = sends(&drain(&mut n)).remove(0);
        n.handle_message(Time(1), 30, info(get.req_id(), 30, Some(20), &[40, 50]));
        let s = sends(&drain(&mut n));
        let (to, verify) = s[0].clone();
        assert_eq!(to, 20, "verify the candidate first");
        assert_eq!(n.successors(), &[peer(30), peer(40)], "not adopted yet");
        if p_alive {
            n.handle_message(Time(2), 20, info(verify.req_id(), 20, Some(10), &[30, 40]));
            assert_eq!(n.successors(), &[peer(20), peer(30), peer(40)]);
            let s = sends(&drain(&mut n));
            assert!(s
                .iter()
                .any(|(to, m)| *to == 20 && matches!(m, Message::Notify { .. })));
        } else {
            n.handle_timeout(Time(2001));
            n.handle_timeout(Time(4001));
            assert_eq!(n.successors(), &[peer(30), peer(40), peer(50)]);
            let acts = drain(&mut n);
            assert!(events(&acts).contains(&Event::PeerFailed { peer: peer(20) }));
            assert!(sends(&acts)
                .iter()
                .any(|(to, m)| *to == 30 && matches!(m, Message::Notify { .. })));
        }
    }
}

/// [Lookup] A hop that times out is skipped: the lookup tries the next-best candidate and
/// still finds the owner.
#[test]
fn lookup_reroutes_around_dead_hop() {
    // Fingers: 1000 (best for key 1500) and 900 (next best).
    let mut n = member(0, &[10, 20, 30], &[5000], &[(1, 900), (2, 1000)]);
    let key = id(1500);
    let lid = n.start_lookup(Time(0), key);
    let s = sends(&drain(&mut n));
    assert_eq!(s[0].0, 1000, "best candidate first");
    // No answer from 1000 within a quarter of rpc_timeout: the lookup also asks 900.
    let t = n.poll_timeout().unwrap();
    assert_eq!(t, Time(500));
    n.handle_timeout(t);
    let s = sends(&drain(&mut n));
    let (to, m) = s[0].clone();
    assert_eq!(to, 900);
    // 900 knows the key falls in its successor list: 1600 is the owner candidate.
    n.handle_message(
        Time(t.0 + 10),
        900,
        info(m.req_id(), 900, Some(800), &[1600, 1700]),
    );
    let s = sends(&drain(&mut n));
    let (to, m) = s[0].clone();
    assert_eq!(to, 1600);
    n.handle_message(
        Time(t.0 + 20),
        1600,
        info(m.req_id(), 1600, Some(900), &[1700, 1800]),
    );
    let ev = events(&drain(&mut n));
    match &ev[0] {
        Event::LookupDone {
            lookup,
            key: k,
            result: Ok(r),
        } => {
            assert_eq!(*lookup, lid);
            assert_eq!(*k, key);
            assert_eq!(r.owner, peer(1600));
            assert_eq!(r.successors, vec![peer(1700), peer(1800)]);
            assert_eq!(r.hops, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A non-member cannot look up.
    let mut idle = Node::new(cfg(), peer(1));
    idle.start_lookup(Time(0), key);
    assert!(matches!(
        events(&drain(&mut idle))[0],
        Event::LookupDone {
            result: Err(LookupError::NotMember),
            ..
        }
    ));
}

/// [Lookup] A dead owner candidate is skipped for the next live successor (never a wrong
/// owner), and a predecessor of the candidate that is closer to the key is preferred.
#[test]
fn lookup_skips_dead_owner_and_prefers_closer_joiner() {
    let mut n = member(0, &[10, 20, 30], &[5000], &[(3, 900)]);
    let key = id(1500);
    n.start_lookup(Time(0), key);
    let (_, m) = sends(&drain(&mut n)).remove(0);
    n.handle_message(
        Time(1),
        900,
        info(m.req_id(), 900, Some(800), &[1600, 1700]),
    );
    let (to, _) = sends(&drain(&mut n)).remove(0);
    assert_eq!(to, 1600);
    // 1600 is silent for a quarter of rpc_timeout: 1700 is asked in parallel.
    let t = Time(501);
    n.handle_timeout(t);
    let (to, m) = sends(&drain(&mut n)).remove(0);
    assert_eq!(to, 1700);
    assert_eq!(n.snapshot().outstanding_requests, 2, "1600 still awaited");
    // 1700 reports a predecessor 1550 between 900 and the key's owner: try it first.
    n.handle_message(
        Time(t.0 + 1),
        1700,
        info(m.req_id(), 1700, Some(1550), &[1800]),
    );
    let (to, m) = sends(&drain(&mut n)).remove(0);
    assert_eq!(to, 1550);
    n.handle_message(
        Time(t.0 + 2),
        1550,
        info(m.req_id(), 1550, Some(900), &[1700, 1800]),
    );
    let ev = events(&drain(&mut n));
    assert!(
        matches!(&ev[0], Event::LookupDone { result: Ok(r), .. } if r.owner == peer(1550)),
        "{ev:?}"
    );
}

/// [Join] The joiner adopts the live owner of its id and its list; then [Stabilize] and
/// [Rectify] make its predecessor point to it and its successor take it as predecessor.
#[test]
fn join_then_stabilize_and_rectify() {
    let mut sim = small_sim(6, 11);
    let j = sim.add_random_node();
    let jid = sim.nodes()[j as usize].node.me().id;
    let boot = sim.live_members()[0];
    let truth = sim.true_owner(jid).unwrap();
    sim.join(j, boot);
    sim.run_for(Duration::from_millis(400));
    let node = &sim.nodes()[j as usize].node;
    assert_eq!(node.status(), Status::Member);
    assert_eq!(node.successors()[0].addr, truth, "succ0 = owner of our id");
    let t = sim.run_until_ideal(Duration::from_millis(100), Duration::from_secs(60));
    assert!(t.is_some(), "{:?}", invariants::ideal_report(&sim, false));
    assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
    let succ = &sim.nodes()[truth as usize].node;
    assert_eq!(succ.predecessor().map(|p| p.addr), Some(j));
    let pred = sim.nodes()[j as usize].node.predecessor().unwrap().addr;
    assert_eq!(sim.nodes()[pred as usize].node.successors()[0].addr, j);
    println!("join converged at t={}ms (seed 11)", t.unwrap().0);
}

/// [Leave] The leaver's predecessor and successor splice themselves together, the leaver
/// emits Left, and the ring is Ideal without it.
#[test]
fn leave_splices_neighbours() {
    let mut sim = small_sim(6, 12);
    sim.run_for(Duration::from_secs(2));
    let x = sim.live_members()[2];
    let pred = sim.nodes()[x as usize].node.predecessor().unwrap().addr;
    let succ = sim.nodes()[x as usize].node.successors()[0].addr;
    sim.leave(x);
    // Two message delays (<= 100 ms) later the splice is done, before any stabilization
    // could have found it.
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes()[x as usize].node.status(), Status::Left);
    assert_eq!(sim.stats.left, 1);
    assert_eq!(sim.nodes()[pred as usize].node.successors()[0].addr, succ);
    assert_eq!(
        sim.nodes()[succ as usize]
            .node
            .predecessor()
            .map(|p| p.addr),
        Some(pred)
    );
    let t = sim.run_until_ideal(Duration::from_millis(100), Duration::from_secs(60));
    assert!(t.is_some());
    assert_eq!(sim.member_count(), 5);
    assert_eq!(sim.stats.violations, 0, "{:?}", sim.stats.first_violation);
}

/// Ranges and replica sets follow the predecessor list.
#[test]
fn ranges_and_replica_set() {
    let n = member(100, &[110, 120, 130], &[90, 80, 70], &[]);
    let r = n.ranges(3);
    assert_eq!(r.owned, (id(90), id(100)));
    assert_eq!(r.replicated, (id(70), id(100)));
    assert_eq!(n.ranges(1).replicated, (id(90), id(100)));
    assert!(n.owns(id(95)) && n.owns(id(100)) && !n.owns(id(90)) && !n.owns(id(105)));
    assert_eq!(
        n.local_replica_set(id(95), 3),
        Some(vec![peer(100), peer(110), peer(120)])
    );
    assert_eq!(n.local_replica_set(id(105), 3), None);
    // A ring of 3 (successor list shorter than r): everyone replicates everything for k = 3.
    let small = member(100, &[110, 120], &[120, 110], &[]);
    assert_eq!(small.ranges(3).replicated, (id(100), id(100)));
    // Alone: the whole ring.
    let mut alone = Node::new(cfg(), peer(1));
    alone.create(Time(0));
    assert!(alone.owns(id(12345)));
    assert_eq!(alone.ranges(3).owned, (id(1), id(1)));
    let ev = events(&drain(&mut alone));
    assert!(ev.contains(&Event::Joined));
}

/// Messages survive postcard; requests and responses are told apart; hostile input (huge,
/// unordered lists, responses nobody asked for, spoofed notifies) cannot break a node.
#[test]
fn messages_and_hostile_input() {
    let m = Message::Notify {
        req: 7,
        node: peer(3),
        preds: vec![peer(2), peer(1)],
    };
    let bytes = postcard::to_allocvec(&m).unwrap();
    let back: Message<u32> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, m);
    assert!(m.is_request());
    assert!(!Message::<u32>::Ack { req: 7 }.is_request());
    assert!(Message::<u32>::GetState {
        req: 1,
        asker: id(1)
    }
    .is_request());

    let mut n = member(100, &[110, 120, 130], &[90, 80, 70], &[]);
    n.set_maintenance(Time(0), true);
    n.handle_timeout(Time(0));
    let (_, get) = sends(&drain(&mut n)).remove(0);
    // A reply from the wrong address is ignored.
    n.handle_message(Time(1), 999, info(get.req_id(), 110, None, &[1]));
    assert_eq!(n.successors(), &[peer(110), peer(120), peer(130)]);
    // A huge, shuffled list is truncated and ordered.
    let big: Vec<u64> = (0..5000u64).map(|i| (i * 7919) % 5000 + 111).collect();
    n.handle_message(Time(2), 110, info(get.req_id(), 110, Some(100), &big));
    let s = n.successors();
    assert!(s.len() <= 3);
    assert!(s
        .windows(2)
        .all(|w| id(100).distance_to(w[0].id) < id(100).distance_to(w[1].id)));
    // A notify claiming another address is ignored.
    n.handle_message(
        Time(3),
        5,
        Message::Notify {
            req: 1,
            node: peer(95),
            preds: vec![],
        },
    );
    assert_eq!(n.predecessor(), Some(&peer(90)));
    // Unsolicited responses are ignored.
    n.handle_message(
        Time(4),
        90,
        Message::Pong {
            req: 12345,
            member: false,
        },
    );
    assert_eq!(n.predecessor(), Some(&peer(90)));
}
