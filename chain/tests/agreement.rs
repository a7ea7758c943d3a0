//! Unit tests of the view agreement and the read leases, on a deterministic in-memory
//! network (`common`): a falsely suspected member is removed and stops serving reads before
//! the new view exists; a minority installs nothing; concurrent proposers agree; a view a
//! majority accepted survives its proposer; an acceptor that accepted stops the old epoch;
//! joiners come in through the agreement; without a majority nothing is served.

mod common;

use chain::{Ballot, Event, Msg, Reply, Role, Start, Unavailable, View, WriteEntry};
use common::*;

#[test]
fn the_founding_view_serves_once_a_majority_granted_leases() {
    let mut net = Net::founded(3, agree_cfg());
    assert_eq!(net.installed[&1].members, vec![1, 2, 3]);
    // Lease requests are queued, not delivered: only the replica's own grant.
    assert!(!net.rep(2).has_lease(net.now));
    net.request(2, id(1), read("k"));
    assert_eq!(net.answers(id(1)), vec![no_quorum()]);
    net.deliver_all();
    assert!(net.rep(2).has_lease(net.now));
    net.request(2, id(2), read("k"));
    assert_eq!(net.answers(id(2)), vec![value(0, "")]);
    // Views come from the agreement only: an oracle's view is ignored.
    net.event(1, Event::View(View::new(2, vec![1])));
    assert_eq!(net.epoch(1), 1);
    assert_eq!(
        net.call(1, id(3), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.run(30);
    for a in 1..=3 {
        net.request(a, id(10 + u64::from(a)), read("k"));
        assert_eq!(net.answers(id(10 + u64::from(a))), vec![value(1, "a")]);
    }
}

/// Once epoch 2 exists anywhere, replica 3 (left in epoch 1) must hold no lease.
fn no_lease_at_3_once_epoch_2_exists(net: &Net, _: u32) {
    if net.installed.contains_key(&2) {
        if let Some(r) = net.reps.get(&3) {
            if r.epoch() == 1 {
                assert!(
                    !r.has_lease(net.now),
                    "replica 3 still holds a lease at {} after epoch 2 was installed",
                    net.now
                );
            }
        }
    }
}

#[test]
fn a_falsely_suspected_member_is_removed_and_stops_serving_before_the_new_view() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.run(30);
    // 3 is alive and keeps serving clients, but 1 and 2 cannot hear it (slow, partitioned).
    net.cut(3, &[1, 2]);
    net.watch = Some(no_lease_at_3_once_epoch_2_exists);
    net.suggest(1, &[1, 2, 3], &[3]);
    net.suggest(2, &[1, 2, 3], &[3]);
    assert!(net.run_until(2_000, |n| n.epoch(1) == 2 && n.epoch(2) == 2));
    assert_eq!(net.installed[&2].members, vec![1, 2]);
    assert_eq!(net.epoch(3), 1, "3 heard nothing");
    // The acceptors waited for the leases they had granted.
    assert!(net.rep(2).stats().accept_deferred > 0 || net.rep(1).stats().accept_deferred > 0);
    // The new chain commits a write that 3 never sees.
    assert_eq!(
        net.call(1, id(2), cas("k", 1, "b"), 500),
        Some(Reply::Ok { version: 2 })
    );
    // 3 does not answer with the stale version 1: it has no lease.
    net.request(3, id(3), read("k"));
    assert_eq!(net.answers(id(3)), vec![no_quorum()]);
    assert!(net.rep(3).stats().no_quorum > 0);
    // Healed: 3 learns it was removed (its lease requests are answered with the view).
    net.blocked.clear();
    assert!(net.run_until(1_000, |n| n.epoch(3) == 2));
    assert_eq!(net.rep(3).role(), Role::Outside);
    assert_eq!(net.rep(3).key_count(), 0);
    net.request(3, id(4), read("k"));
    assert_eq!(
        net.answers(id(4)),
        vec![Reply::Unavailable(Unavailable::NotMember)]
    );
    // Everyone suggests it again: it is added back through the agreement and catches up.
    for a in 1..=3 {
        net.suggest(a, &[1, 2, 3], &[]);
    }
    assert!(net.run_until(2_000, |n| (1..=3)
        .all(|a| n.epoch(a) == 3 && n.rep(a).is_ready())));
    assert_eq!(net.installed[&3].members, vec![1, 2, 3]);
    net.run(40);
    net.request(3, id(5), read("k"));
    assert_eq!(net.answers(id(5)), vec![value(2, "b")]);
}

#[test]
fn a_minority_installs_nothing_and_stops_serving() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.run(30);
    net.cut(1, &[2, 3]);
    net.suggest(1, &[1, 2, 3], &[2, 3]);
    net.suggest(2, &[1, 2, 3], &[1]);
    net.suggest(3, &[1, 2, 3], &[1]);
    let cut_at = net.now;
    net.run(1_500);
    // The minority (the old head) tried but installed nothing; the majority moved on.
    assert!(net.rep(1).stats().proposals > 0);
    assert_eq!(net.epoch(1), 1);
    assert_eq!(net.installed[&2].members, vec![2, 3]);
    assert!(
        net.installs
            .iter()
            .filter(|(_, _, e)| *e == 2)
            .all(|(_, who, _)| *who != 1),
        "the minority installed epoch 2"
    );
    // The minority neither reads nor writes.
    net.request(1, id(2), read("k"));
    assert_eq!(net.answers(id(2)), vec![no_quorum()]);
    net.request(1, id(3), cas("k", 1, "x"));
    net.run(700);
    let answers = net.answers(id(3));
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|r| matches!(r, Reply::Unavailable(_))),
        "{answers:?}"
    );
    // No success was answered by 1 after one lease from the cut.
    assert!(net
        .replies
        .iter()
        .all(|(t, _, _)| *t <= cut_at + net.cfg.lease_ms));
    // The majority serves.
    assert_eq!(
        net.call(2, id(4), cas("k", 1, "y"), 1_000),
        Some(Reply::Ok { version: 2 })
    );
    // Healed: 1 learns the view that removed it.
    net.blocked.clear();
    assert!(net.run_until(1_000, |n| n.epoch(1) == 2));
    assert_eq!(net.rep(1).role(), Role::Outside);
}

#[test]
fn concurrent_proposers_with_different_suggestions_agree_on_each_view() {
    let cfg = chain::Config {
        propose_delay_ms: 0,
        ..agree_cfg()
    };
    let mut net = Net::founded(5, cfg);
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.add(6, Start::Join);
    net.add(7, Start::Join);
    // Five different suggestions at the same moment: four members propose at once.
    net.suggest(1, &[1, 2, 3, 4, 5, 6], &[]);
    net.suggest(2, &[1, 2, 3, 4, 5, 7], &[]);
    net.suggest(3, &[1, 2, 3, 4, 5], &[4]);
    net.suggest(4, &[1, 2, 3, 4, 5, 6, 7], &[]);
    net.suggest(5, &[1, 2, 3, 4, 5], &[]);
    net.suggest(6, &[1, 2, 3, 4, 5, 6, 7], &[]);
    net.suggest(7, &[1, 2, 3, 4, 5, 6, 7], &[]);
    net.run(400);
    let proposals: u64 = (1..=5).map(|a| net.rep(a).stats().proposals).sum();
    let refused: u64 = (1..=5).map(|a| net.rep(a).stats().nacks).sum();
    assert!(proposals >= 4, "{proposals} proposals");
    assert!(refused >= 1, "no proposer was refused");
    // Then the ring settles: everyone suggests the same chain.
    let all = [1, 2, 3, 4, 5, 6, 7];
    for a in all {
        net.suggest(a, &all, &[]);
    }
    assert!(net.run_until(5_000, |n| {
        let e = n.epoch(1);
        all.iter().all(|&a| n.epoch(a) == e && n.rep(a).is_ready())
            && n.installed[&e].members == all
    }));
    // Every epoch got one view (the network asserts it at every installation), in order.
    let epochs: Vec<u64> = net.installed.keys().copied().collect();
    assert_eq!(epochs, (1..=epochs.len() as u64).collect::<Vec<_>>());
    assert!(epochs.len() >= 3, "{epochs:?}");
    net.run(50);
    for a in all {
        net.request(a, id(10 + u64::from(a)), read("k"));
        assert_eq!(net.answers(id(10 + u64::from(a))), vec![value(1, "a")]);
    }
}

#[test]
fn a_view_accepted_by_a_majority_survives_its_proposer() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.run(30);
    // 1 proposes [1, 2] and gets its promises; then 3 hears no more of it, and 2's
    // acceptance never reaches 1.
    net.suggest(1, &[1, 2, 3], &[3]);
    net.deliver_all();
    net.blocked.insert((1, 3));
    net.blocked.insert((2, 1));
    assert!(
        net.run_until(1_000, |n| n.rep(1).acceptor_state().1.is_some()
            && n.rep(2).acceptor_state().1.is_some())
    );
    let accepted = net.rep(2).acceptor_state().1.unwrap().view.clone();
    assert_eq!(accepted, View::new(2, vec![1, 2]));
    assert_eq!(net.epoch(1), 1, "the proposer never learned the outcome");
    // An acceptor that accepted the next view processes nothing more of epoch 1.
    let stopped = net.rep(2).stats().stopped;
    net.event(
        2,
        Event::Message {
            from: 1,
            msg: Msg::Write {
                epoch: 1,
                key: b"k".to_vec(),
                entries: vec![WriteEntry {
                    version: 2,
                    value: b"z".to_vec(),
                    req: None,
                }],
            },
        },
    );
    assert_eq!(net.rep(2).stats().stopped, stopped + 1);
    assert_eq!(net.rep(2).record(b"k").unwrap().newest, 1);
    net.request(2, id(2), read("k"));
    assert_eq!(net.answers(id(2)), vec![no_quorum()]);
    // The proposer dies. 2 and 3 suggest [2, 3], but [1, 2] was accepted by a majority
    // ({1, 2}): whoever completes the instance must choose it.
    net.kill(1);
    net.blocked.clear();
    net.suggest(2, &[1, 2, 3], &[1]);
    net.suggest(3, &[1, 2, 3], &[1]);
    assert!(net.run_until(2_000, |n| n.epoch(2) == 2 && n.epoch(3) == 2));
    assert_eq!(net.installed[&2].members, vec![1, 2]);
    assert_eq!(net.rep(3).role(), Role::Outside);
    // [1, 2] with 1 down has no majority: nothing moves until 1 restarts from its disk.
    net.run(500);
    assert_eq!(net.epoch(2), 2);
    net.restart(1);
    for a in 1..=3 {
        net.suggest(a, &[1, 2, 3], &[]);
    }
    assert!(net.run_until(3_000, |n| (1..=3)
        .all(|a| n.epoch(a) == 3 && n.rep(a).is_ready())));
    assert_eq!(net.installed[&3].members, vec![1, 2, 3]);
    assert_eq!(
        net.call(1, id(3), cas("k", 1, "b"), 1_000),
        Some(Reply::Ok { version: 2 })
    );
    net.run(40);
    net.request(3, id(4), read("k"));
    assert_eq!(net.answers(id(4)), vec![value(2, "b")]);
}

#[test]
fn acceptors_refuse_lower_ballots_and_report_what_they_accepted() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    let prepare = |round, node| Msg::Prepare {
        epoch: 1,
        ballot: Ballot { round, node },
    };
    // A ballot must name its sender's position.
    let out = net.event(
        1,
        Event::Message {
            from: 2,
            msg: prepare(5, 0),
        },
    );
    assert!(!out.iter().any(|a| matches!(a, chain::Action::Send { .. })));
    let out = net.event(
        1,
        Event::Message {
            from: 2,
            msg: prepare(5, 1),
        },
    );
    let promise = out.iter().find_map(|a| match a {
        chain::Action::Send {
            to: 2,
            msg: Msg::Promise {
                ballot, accepted, ..
            },
        } => Some((*ballot, accepted.clone())),
        _ => None,
    });
    assert_eq!(promise, Some((Ballot { round: 5, node: 1 }, None)));
    let out = net.event(
        1,
        Event::Message {
            from: 3,
            msg: prepare(4, 2),
        },
    );
    assert!(out.iter().any(|a| matches!(
        a,
        chain::Action::Send {
            to: 3,
            msg: Msg::Nack {
                promised: Ballot { round: 5, node: 1 },
                ..
            }
        }
    )));
    // A proposal for another epoch than the next one is not accepted.
    let accept = |epoch, members: Vec<u32>| Msg::Accept {
        epoch: 1,
        proposal: chain::Proposal {
            ballot: Ballot { round: 5, node: 1 },
            view: View::new(epoch, members),
        },
    };
    net.event(
        1,
        Event::Message {
            from: 2,
            msg: accept(3, vec![1, 2]),
        },
    );
    assert!(net.rep(1).acceptor_state().1.is_none());
    // The right one is accepted once the leases 1 granted have run out.
    net.now += 2 * net.cfg.lease_ms + net.cfg.propose_retry_ms;
    net.event(
        1,
        Event::Message {
            from: 2,
            msg: accept(2, vec![1, 2]),
        },
    );
    assert_eq!(
        net.rep(1).acceptor_state().1.map(|p| p.view.clone()),
        Some(View::new(2, vec![1, 2]))
    );
    // A higher ballot gets a promise that carries it.
    let out = net.event(
        1,
        Event::Message {
            from: 3,
            msg: prepare(6, 2),
        },
    );
    assert!(out.iter().any(|a| matches!(
        a,
        chain::Action::Send {
            to: 3,
            msg: Msg::Promise {
                accepted: Some(p),
                ..
            }
        } if p.view == View::new(2, vec![1, 2])
    )));
}

#[test]
fn a_joiner_is_added_through_the_agreement_and_catches_up() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    for k in 0..5u64 {
        let key = format!("k{k}");
        assert_eq!(
            net.call(1, id(k + 1), cas(&key, 0, &format!("v{k}")), 500),
            Some(Reply::Ok { version: 1 })
        );
    }
    net.add(4, Start::Join);
    // The newcomer appears in everyone's suggestion; it asks for the view until it is in.
    for a in 1..=4 {
        net.suggest(a, &[1, 2, 3, 4], &[]);
    }
    assert!(net.run_until(2_000, |n| n.rep(4).is_ready()
        && (1..=4).all(|a| n.epoch(a) == 2)));
    assert_eq!(net.installed[&2].members, vec![1, 2, 3, 4]);
    assert_eq!(net.rep(4).role(), Role::Tail);
    assert_eq!(net.rep(4).key_count(), 5);
    net.run(40);
    net.request(4, id(10), read("k3"));
    assert_eq!(net.answers(id(10)), vec![value(1, "v3")]);
    assert_eq!(
        net.call(1, id(11), cas("k3", 1, "w"), 500),
        Some(Reply::Ok { version: 2 })
    );
    assert_eq!(net.rep(4).record(b"k3").unwrap().clean, 2);
}

#[test]
fn without_a_majority_nothing_is_served_until_one_is_back() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.run(30);
    net.kill(2);
    net.kill(3);
    let dead_at = net.now;
    net.suggest(1, &[1, 2, 3], &[2, 3]);
    net.run(1_000);
    assert_eq!(net.epoch(1), 1);
    assert!(!net.installed.contains_key(&2));
    assert!(net.rep(1).stats().proposals > 0);
    net.request(1, id(2), read("k"));
    assert_eq!(net.answers(id(2)), vec![no_quorum()]);
    net.request(1, id(3), cas("k", 1, "x"));
    net.run(700);
    assert!(net
        .answers(id(3))
        .iter()
        .all(|r| matches!(r, Reply::Unavailable(_))));
    assert!(net
        .replies
        .iter()
        .all(|(t, _, _)| *t <= dead_at + net.cfg.lease_ms));
    // 2 restarts from its disk: with 1 it is a majority of [1, 2, 3].
    net.restart(2);
    net.suggest(1, &[1, 2, 3], &[3]);
    net.suggest(2, &[1, 2, 3], &[3]);
    assert!(net.run_until(2_000, |n| n.epoch(1) == 2 && n.epoch(2) == 2));
    assert_eq!(net.installed[&2].members, vec![1, 2]);
    // The write held at 1 went through after all: its retry is recognised.
    assert_eq!(
        net.call(1, id(3), cas("k", 1, "x"), 1_000),
        Some(Reply::Ok { version: 2 })
    );
    net.run(40);
    net.request(2, id(4), read("k"));
    assert_eq!(net.answers(id(4)), vec![value(2, "x")]);
}
