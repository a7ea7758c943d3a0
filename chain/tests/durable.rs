//! Unit tests of persistence: the write-ahead order of `Persist` actions, restarts from disk
//! of one member (in place, or after it was removed) and of every member, a recovered
//! acceptor that keeps its promise, and the "acknowledge before fsync" bug losing a
//! committed write. The network (`common`) also checks, after every batch, that no `Persist`
//! follows a `Send` or `Reply` and that the disk equals the replica's durable image.

mod common;

use chain::{Action, Ballot, Config, Durable, Event, Msg, Reply, Role, Start, View};
use common::*;

fn oracle_durable() -> Config {
    Config {
        durable: true,
        ..Config::default()
    }
}

/// Index of the first action matching `f`.
fn index(out: &[Action<u32>], f: impl Fn(&Action<u32>) -> bool) -> usize {
    out.iter().position(f).expect("no such action")
}

fn persists_version(a: &Action<u32>, clean: u64, newest: u64) -> bool {
    matches!(a, Action::Persist(Durable::Record { key, state: Some(st) })
        if key == b"k"
            && st.clean == clean
            && st.versions.last().map(|e| e.version) == Some(newest))
}

#[test]
fn each_step_is_durable_before_the_message_that_depends_on_it() {
    let mut net = Net::founded(2, oracle_durable());
    // The head: version 1 is on disk before it goes down the chain.
    let out = net.event(
        1,
        Event::Request {
            from: CLIENT,
            id: id(1),
            req: cas("k", 0, "a"),
        },
    );
    let p = index(&out, |a| persists_version(a, 0, 1));
    let s = index(&out, |a| {
        matches!(
            a,
            Action::Send {
                msg: Msg::Write { .. },
                ..
            }
        )
    });
    assert!(p < s, "{out:?}");
    // The tail: committed on disk before the acknowledgement.
    let (from, to, msg) = net.queue.pop_front().unwrap();
    assert_eq!((from, to), (1, 2));
    let out = net.event(2, Event::Message { from, msg });
    let p = index(&out, |a| persists_version(a, 1, 1));
    let s = index(&out, |a| {
        matches!(
            a,
            Action::Send {
                msg: Msg::Ack { .. },
                ..
            }
        )
    });
    assert!(p < s, "{out:?}");
    // The head: the commit is on disk before the client's answer.
    let (from, to, msg) = net.queue.pop_front().unwrap();
    assert_eq!((from, to), (2, 1));
    let out = net.event(1, Event::Message { from, msg });
    let p = index(&out, |a| persists_version(a, 1, 1));
    let r = index(&out, |a| matches!(a, Action::Reply { .. }));
    assert!(p < r, "{out:?}");
    assert_eq!(net.disks[&1].records[b"k".as_slice()].clean, 1);
    assert_eq!(net.disks[&2].records[b"k".as_slice()].clean, 1);
    // A view is on disk too.
    assert_eq!(
        net.disks[&1].meta.as_ref().and_then(|m| m.view.clone()),
        Some(View::new(1, vec![1, 2]))
    );
}

#[test]
fn every_member_killed_at_once_keeps_every_committed_write() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    let mut acked = Vec::new();
    for k in 0..4u64 {
        let key = format!("k{k}");
        for v in 0..3u64 {
            let r = net.call(1, id(k * 10 + v + 1), cas(&key, v, &format!("v{v}")), 500);
            assert_eq!(r, Some(Reply::Ok { version: v + 1 }));
        }
        acked.push((key, 3u64));
    }
    // One more write in flight (not answered) when the power goes.
    net.request(1, id(99), cas("k0", 3, "late"));
    net.deliver_one();
    for a in 1..=3 {
        net.kill(a);
    }
    net.now += 1_000;
    for a in 1..=3 {
        net.restart(a);
        net.suggest(a, &[1, 2, 3], &[]);
    }
    assert!(net.run_until(2_000, |n| (1..=3)
        .all(|a| n.rep(a).is_ready() && n.rep(a).has_lease(n.now))));
    assert_eq!(net.epoch(1), 1, "the chain resumed in its view");
    for (key, version) in &acked {
        for a in 1..=3 {
            let rid = id(1_000 + u64::from(a));
            let r = net.call(a, rid, read(key), 500).unwrap();
            let Reply::Value { version: got, .. } = r else {
                panic!("{r:?}")
            };
            // k0 may also hold the write that was in flight; nothing acknowledged is lost.
            assert!(
                got == *version || (key == "k0" && got == 4),
                "{key} at {a}: {got}"
            );
        }
    }
    // The chain takes writes again, and the in-flight one is settled consistently.
    let r = net.call(1, id(99), cas("k0", 3, "late"), 1_000);
    assert_eq!(r, Some(Reply::Ok { version: 4 }));
    assert_eq!(
        net.call(1, id(100), cas("k1", 3, "next"), 500),
        Some(Reply::Ok { version: 4 })
    );
    let restarted: u64 = (1..=3).map(|a| net.rep(a).stats().recoveries).sum();
    assert_eq!(restarted, 3);
}

#[test]
fn a_member_restarted_before_anyone_noticed_resumes_and_catches_up() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    // The middle dies; a write waits at the head; the middle comes back 100 ms later.
    net.kill(2);
    net.request(1, id(2), cas("k", 1, "b"));
    net.run(100);
    assert!(net.answers(id(2)).is_empty());
    net.restart(2);
    net.suggest(2, &[1, 2, 3], &[]);
    assert_eq!(net.rep(2).record(b"k").unwrap().clean, 1, "from its disk");
    // No view change: the head's re-sends carry the write through the recovered middle.
    assert!(net.run_until(1_000, |n| n.rep(1).record(b"k").unwrap().clean == 2));
    assert_eq!(net.answers(id(2)), vec![Reply::Ok { version: 2 }]);
    assert_eq!(net.installed.len(), 1, "still epoch 1");
    assert_eq!(net.rep(2).record(b"k").unwrap().clean, 2);
}

#[test]
fn a_tail_restarted_after_its_removal_rejoins_through_the_agreement() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    assert_eq!(
        net.call(1, id(1), cas("k", 0, "a"), 500),
        Some(Reply::Ok { version: 1 })
    );
    net.kill(3);
    net.suggest(1, &[1, 2, 3], &[3]);
    net.suggest(2, &[1, 2, 3], &[3]);
    assert!(net.run_until(2_000, |n| n.epoch(1) == 2 && n.epoch(2) == 2));
    assert_eq!(net.installed[&2].members, vec![1, 2]);
    assert_eq!(
        net.call(1, id(2), cas("k", 1, "b"), 500),
        Some(Reply::Ok { version: 2 })
    );
    // 3 restarts in epoch 1 with version 1: behind. It learns it was removed, and the others
    // add it back once they see it again.
    net.restart(3);
    assert_eq!(net.epoch(3), 1);
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 1);
    for a in 1..=3 {
        net.suggest(a, &[1, 2, 3], &[]);
    }
    assert!(net.run_until(3_000, |n| (1..=3)
        .all(|a| n.epoch(a) == 3 && n.rep(a).is_ready())));
    assert_eq!(net.installed[&3].members, vec![1, 2, 3]);
    assert_eq!(net.rep(3).role(), Role::Tail);
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 2);
    net.run(40);
    net.request(3, id(3), read("k"));
    assert_eq!(net.answers(id(3)), vec![value(2, "b")]);
}

#[test]
fn a_recovered_acceptor_keeps_its_promise_and_its_acceptance() {
    let mut net = Net::founded(3, agree_cfg());
    net.run(50);
    let prepare = |round, node| Msg::Prepare {
        epoch: 1,
        ballot: Ballot { round, node },
    };
    net.event(
        1,
        Event::Message {
            from: 2,
            msg: prepare(5, 1),
        },
    );
    net.kill(1);
    net.restart(1);
    let out = net.event(
        1,
        Event::Message {
            from: 3,
            msg: prepare(3, 2),
        },
    );
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Send {
                to: 3,
                msg: Msg::Nack {
                    promised: Ballot { round: 5, node: 1 },
                    ..
                }
            }
        )),
        "{out:?}"
    );
    // Accepted, killed, recovered: the acceptance is still there, and it still stops the old
    // epoch (no reads).
    net.now += 2 * net.cfg.lease_ms + net.cfg.propose_retry_ms;
    let proposal = chain::Proposal {
        ballot: Ballot { round: 5, node: 1 },
        view: View::new(2, vec![1, 2]),
    };
    net.event(
        1,
        Event::Message {
            from: 2,
            msg: Msg::Accept {
                epoch: 1,
                proposal: proposal.clone(),
            },
        },
    );
    assert_eq!(net.rep(1).acceptor_state().1, Some(&proposal));
    net.kill(1);
    net.restart(1);
    assert_eq!(net.rep(1).acceptor_state().1, Some(&proposal));
    // Right after the restart it accepts nothing: leases it granted before may still run.
    let out = net.event(
        1,
        Event::Message {
            from: 3,
            msg: prepare(6, 2),
        },
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Send {
            to: 3,
            msg: Msg::Promise {
                accepted: Some(p),
                ..
            }
        } if *p == proposal
    )));
    net.request(1, id(1), read("k"));
    assert_eq!(net.answers(id(1)), vec![no_quorum()]);
}

#[test]
fn acknowledging_before_the_disk_loses_a_committed_write() {
    for broken in [false, true] {
        let cfg = Config {
            unsafe_persist_late: broken,
            ..agree_cfg()
        };
        let mut net = Net::founded(3, cfg);
        net.run(60);
        assert_eq!(
            net.call(1, id(1), cas("k", 0, "a"), 500),
            Some(Reply::Ok { version: 1 })
        );
        // Acknowledged; every member crashes before its write-behind buffer is flushed.
        for a in 1..=3 {
            net.kill(a);
        }
        net.now += 1_000;
        for a in 1..=3 {
            net.restart(a);
            net.suggest(a, &[1, 2, 3], &[]);
        }
        let r = net.call(2, id(2), read("k"), 2_000);
        if broken {
            assert_eq!(r, Some(value(0, "")), "the acknowledged write is gone");
        } else {
            assert_eq!(r, Some(value(1, "a")));
        }
    }
}

#[test]
fn oracle_views_with_persistence_survive_every_member_restarting() {
    let mut net = Net::founded(3, oracle_durable());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    for a in 1..=3 {
        net.kill(a);
        net.restart(a);
    }
    // Back in their view, with their records, before the oracle says anything.
    for a in 1..=3 {
        assert_eq!(net.epoch(a), 1);
        assert!(net.rep(a).is_ready());
    }
    net.request(2, id(2), read("k"));
    assert_eq!(net.take_replies(), vec![(id(2), value(1, "a"))]);
    net.request(1, id(3), cas("k", 1, "b"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(3), Reply::Ok { version: 2 })]);
    // A replica restarted without a disk would have started empty.
    net.add(9, Start::Join);
    assert_eq!(net.rep(9).key_count(), 0);
}
