//! Unit tests of the replica state machine: roles, epochs, deduplication, reconfiguration,
//! state transfer and bounds, driven by a tiny in-memory network.

use chain::{
    Action, Config, Event, Msg, Rejected, Replica, Reply, ReqId, Request, Role, Start, Unavailable,
    Validate, View, WriteEntry, MAX_KEY_LEN, MAX_REASON_LEN, MAX_VALUE_SIZE,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const CLIENT: u32 = 100;

/// Replicas addressed by u32, messages delivered in FIFO order one at a time, links that can
/// be cut, a virtual clock.
struct Net<V: Validate = chain::AcceptAll> {
    reps: BTreeMap<u32, Replica<u32, V>>,
    queue: VecDeque<(u32, u32, Msg<u32>)>,
    replies: Vec<(ReqId, Reply<u32>)>,
    blocked: BTreeSet<(u32, u32)>,
    now: u64,
}

impl Net {
    fn chain(n: u32, cfg: Config) -> Net {
        let mut net = Net::empty();
        for a in 1..=n {
            net.reps
                .insert(a, Replica::new(a, cfg.clone(), Start::Bootstrap));
        }
        net.view(1, &(1..=n).collect::<Vec<_>>());
        net
    }

    fn add_joiner(&mut self, a: u32, cfg: Config) {
        self.reps.insert(a, Replica::new(a, cfg, Start::Join));
    }
}

impl<V: Validate> Net<V> {
    fn empty() -> Net<V> {
        Net {
            reps: BTreeMap::new(),
            queue: VecDeque::new(),
            replies: Vec::new(),
            blocked: BTreeSet::new(),
            now: 0,
        }
    }

    fn rep(&self, a: u32) -> &Replica<u32, V> {
        &self.reps[&a]
    }

    fn apply(&mut self, from: u32, actions: Vec<Action<u32>>) {
        for act in actions {
            match act {
                Action::Send { to, msg } => self.queue.push_back((from, to, msg)),
                Action::Reply { to, id, reply } => {
                    assert_eq!(to, CLIENT);
                    self.replies.push((id, reply));
                }
                Action::SetTimer { .. }
                | Action::NewerEpoch { .. }
                | Action::Persist(_)
                | Action::ViewInstalled(_) => {}
            }
        }
        if let Some(r) = self.reps.get(&from) {
            r.check_invariants().expect("replica invariants");
        }
    }

    fn event(&mut self, to: u32, ev: Event<u32>) -> Vec<Action<u32>> {
        let now = self.now;
        let Some(r) = self.reps.get_mut(&to) else {
            return Vec::new();
        };
        let out = r.handle(now, ev);
        self.apply(to, out.clone());
        out
    }

    fn view(&mut self, epoch: u64, members: &[u32]) {
        let v = View::new(epoch, members.to_vec());
        let all: Vec<u32> = self.reps.keys().copied().collect();
        for a in all {
            self.event(a, Event::View(v.clone()));
        }
    }

    fn request(&mut self, to: u32, id: ReqId, req: Request) {
        self.event(
            to,
            Event::Request {
                from: CLIENT,
                id,
                req,
            },
        );
    }

    /// Delivers the oldest queued message; false when none.
    fn deliver_one(&mut self) -> bool {
        let Some((from, to, msg)) = self.queue.pop_front() else {
            return false;
        };
        self.now += 1;
        if !self.blocked.contains(&(from, to)) {
            self.event(to, Event::Message { from, msg });
        }
        true
    }

    /// Delivers the first queued message matching `pick`, out of order.
    fn deliver_first(&mut self, pick: impl Fn(&Msg<u32>) -> bool) {
        let i = self.queue.iter().position(|(_, _, m)| pick(m));
        let m = self
            .queue
            .remove(i.expect("no such message queued"))
            .unwrap();
        self.queue.push_front(m);
        self.deliver_one();
    }

    fn deliver_all(&mut self) {
        let mut n = 0;
        while self.deliver_one() {
            n += 1;
            assert!(n < 100_000, "message storm");
        }
    }

    /// Advances the clock by `ms`, fires every replica's timer, delivers everything.
    fn tick(&mut self, ms: u64) {
        self.now += ms;
        let all: Vec<u32> = self.reps.keys().copied().collect();
        for a in all {
            self.event(a, Event::Timer);
        }
        self.deliver_all();
    }

    fn kill(&mut self, a: u32) {
        self.reps.remove(&a);
        self.queue.retain(|(f, t, _)| *f != a && *t != a);
    }

    fn take_replies(&mut self) -> Vec<(ReqId, Reply<u32>)> {
        std::mem::take(&mut self.replies)
    }
}

fn id(seq: u64) -> ReqId {
    ReqId { client: 7, seq }
}

fn cas(key: &str, expected: u64, value: &str) -> Request {
    Request::Cas {
        key: key.as_bytes().to_vec(),
        expected,
        value: value.as_bytes().to_vec(),
    }
}

fn read(key: &str) -> Request {
    Request::Read {
        key: key.as_bytes().to_vec(),
    }
}

fn value(version: u64, v: &str) -> Reply<u32> {
    Reply::Value {
        version,
        value: v.as_bytes().to_vec(),
    }
}

#[test]
fn write_flows_from_head_to_tail_and_commits_back() {
    let mut net = Net::chain(3, Config::default());
    assert_eq!(net.rep(1).role(), Role::Head);
    assert_eq!(net.rep(2).role(), Role::Middle);
    assert_eq!(net.rep(3).role(), Role::Tail);

    net.request(1, id(1), cas("k", 0, "a"));
    // The head holds version 1 dirty and sent it to the middle.
    let r = net.rep(1).record(b"k").unwrap();
    assert_eq!((r.clean, r.newest), (0, 1));
    assert!(matches!(net.queue.front(), Some((1, 2, Msg::Write { .. }))));
    assert!(net.take_replies().is_empty(), "no answer before the commit");

    net.deliver_one(); // middle stores it dirty, forwards to the tail
    let r = net.rep(2).record(b"k").unwrap();
    assert_eq!((r.clean, r.newest), (0, 1));

    // A read at the middle now needs the tail: the write is not committed there yet.
    net.request(2, id(50), read("k"));
    assert_eq!(net.rep(2).stats().reads_tail_query, 1);
    // Deliver the query and its answer before the write reaches the tail.
    net.deliver_first(|m| matches!(m, Msg::VersionQuery { .. })); // tail: version 0
    net.deliver_first(|m| matches!(m, Msg::VersionReply { .. })); // middle answers
    assert_eq!(net.take_replies(), vec![(id(50), value(0, ""))]);

    net.deliver_all(); // write reaches the tail, which commits and acks back up
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 1);
    assert_eq!(net.rep(2).record(b"k").unwrap().clean, 1);
    let r = net.rep(1).record(b"k").unwrap();
    assert_eq!((r.clean, r.newest, r.versions), (1, 1, vec![1]));
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);

    // Clean now: every member answers locally.
    for a in 1..=3 {
        net.request(a, id(60 + u64::from(a)), read("k"));
    }
    assert_eq!(net.take_replies().len(), 3);
    assert_eq!(net.rep(2).stats().reads_local, 1);
    // Older versions are dropped once a newer one is clean.
    net.request(1, id(2), cas("k", 1, "b"));
    net.deliver_all();
    assert_eq!(net.rep(2).record(b"k").unwrap().versions, vec![2]);
    assert_eq!(net.rep(2).value_of(b"k", 2), Some(b"b".to_vec()));
}

#[test]
fn writes_to_a_non_head_are_redirected() {
    let mut net = Net::chain(3, Config::default());
    net.request(2, id(1), cas("k", 0, "a"));
    net.request(3, id(2), cas("k", 0, "a"));
    assert_eq!(
        net.take_replies(),
        vec![
            (id(1), Reply::NotHead { head: Some(1) }),
            (id(2), Reply::NotHead { head: Some(1) })
        ]
    );
    // A replica without a view, or outside it, says so.
    let mut lone = Replica::new(9u32, Config::default(), Start::Bootstrap);
    let out = lone.handle(
        0,
        Event::Request {
            from: CLIENT,
            id: id(3),
            req: read("k"),
        },
    );
    assert!(out.contains(&Action::Reply {
        to: CLIENT,
        id: id(3),
        reply: Reply::Unavailable(Unavailable::NoView)
    }));
    lone.handle(0, Event::View(View::new(1, vec![1, 2])));
    assert_eq!(lone.role(), Role::Outside);
    let out = lone.handle(
        0,
        Event::Request {
            from: CLIENT,
            id: id(4),
            req: read("k"),
        },
    );
    assert!(out.contains(&Action::Reply {
        to: CLIENT,
        id: id(4),
        reply: Reply::Unavailable(Unavailable::NotMember)
    }));
}

#[test]
fn conflict_is_immediate_on_a_clean_version_and_waits_on_a_dirty_one() {
    let mut net = Net::chain(2, Config::default());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.take_replies();
    // Clean version 1 at the head: a stale expectation conflicts at once.
    net.request(1, id(2), cas("k", 0, "x"));
    assert_eq!(
        net.take_replies(),
        vec![(
            id(2),
            Reply::Conflict {
                current_version: 1,
                current_value: b"a".to_vec()
            }
        )]
    );
    // Version 2 in flight: a conflicting write is answered only once 2 commits, with 2.
    net.request(1, id(3), cas("k", 1, "b"));
    net.request(1, ReqId { client: 8, seq: 1 }, cas("k", 0, "y"));
    assert!(net.take_replies().is_empty());
    assert_eq!(net.rep(1).pending_count(), 2);
    net.deliver_all();
    let replies = net.take_replies();
    assert!(replies.contains(&(id(3), Reply::Ok { version: 2 })));
    assert!(replies.contains(&(
        ReqId { client: 8, seq: 1 },
        Reply::Conflict {
            current_version: 2,
            current_value: b"b".to_vec()
        }
    )));
    // Expecting the dirty newest version pipelines a write on top of it.
    net.request(1, id(4), cas("k", 2, "c"));
    net.request(1, id(5), cas("k", 3, "d"));
    assert_eq!(net.rep(1).record(b"k").unwrap().newest, 4);
    net.deliver_all();
    let replies = net.take_replies();
    assert!(replies.contains(&(id(4), Reply::Ok { version: 3 })));
    assert!(replies.contains(&(id(5), Reply::Ok { version: 4 })));
}

#[test]
fn messages_of_other_epochs_and_strangers_are_refused() {
    let mut net = Net::chain(3, Config::default());
    net.view(2, &[1, 2, 3]);
    let write = |epoch| Msg::Write {
        epoch,
        key: b"k".to_vec(),
        entries: vec![WriteEntry {
            version: 1,
            value: b"a".to_vec(),
            req: None,
        }],
    };
    // Stale epoch from the right predecessor: ignored.
    net.event(
        2,
        Event::Message {
            from: 1,
            msg: write(1),
        },
    );
    assert_eq!(net.rep(2).record(b"k"), None);
    assert_eq!(net.rep(2).stats().epoch_mismatch, 1);
    // Newer epoch: ignored, and the driver is told to refresh its view.
    let out = net.event(
        2,
        Event::Message {
            from: 1,
            msg: write(3),
        },
    );
    assert_eq!(net.rep(2).record(b"k"), None);
    assert!(out.contains(&Action::NewerEpoch { from: 1, epoch: 3 }));
    // Right epoch but not from the predecessor, or from a non-member: ignored.
    net.event(
        2,
        Event::Message {
            from: 3,
            msg: write(2),
        },
    );
    net.event(
        2,
        Event::Message {
            from: 42,
            msg: write(2),
        },
    );
    assert_eq!(net.rep(2).record(b"k"), None);
    // An old view is ignored too.
    net.event(2, Event::View(View::new(1, vec![2])));
    assert_eq!(net.rep(2).epoch(), 2);
    assert_eq!(net.rep(2).role(), Role::Middle);
    // The right message is accepted.
    net.event(
        2,
        Event::Message {
            from: 1,
            msg: write(2),
        },
    );
    assert_eq!(net.rep(2).record(b"k").unwrap().newest, 1);
}

#[test]
fn retried_writes_are_deduplicated() {
    let mut net = Net::chain(3, Config::default());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    // The reply was lost; the client retries: same answer, no second version.
    net.request(1, id(1), cas("k", 0, "a"));
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    assert_eq!(net.rep(1).record(b"k").unwrap().newest, 1);
    assert_eq!(net.rep(1).stats().dedup_hits, 1);

    // A retry while the write is still in flight waits for the same version.
    net.blocked.insert((2, 3));
    net.request(1, id(2), cas("k", 1, "b"));
    net.deliver_all();
    net.request(1, id(2), cas("k", 1, "b"));
    assert_eq!(net.rep(1).record(b"k").unwrap().newest, 2);
    net.blocked.clear();
    net.tick(100); // the middle re-sends to the tail
    let replies = net.take_replies();
    assert_eq!(replies.len(), 2);
    assert!(replies
        .iter()
        .all(|r| *r == (id(2), Reply::Ok { version: 2 })));

    // A late duplicate of an older request is ignored.
    net.request(1, id(1), cas("k", 0, "a"));
    assert!(net.take_replies().is_empty());
}

#[test]
fn dedup_survives_a_head_failure() {
    let mut net = Net::chain(3, Config::default());
    net.blocked.insert((3, 2)); // acks from the tail are lost
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 1);
    assert!(net.take_replies().is_empty());
    // The head dies before answering; 2 becomes head.
    net.kill(1);
    net.blocked.clear();
    net.view(2, &[2, 3]);
    net.deliver_all();
    assert_eq!(net.rep(2).role(), Role::Head);
    // The client retries at the new head: the retry is recognised.
    net.request(2, id(1), cas("k", 0, "a"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    assert_eq!(net.rep(2).record(b"k").unwrap().newest, 1);
}

#[test]
fn tail_failure_commits_the_predecessors_dirty_versions() {
    let mut net = Net::chain(3, Config::default());
    net.blocked.insert((2, 3));
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    assert_eq!(net.rep(2).record(b"k").unwrap().clean, 0);
    net.kill(3);
    net.view(2, &[1, 2]);
    assert_eq!(net.rep(2).role(), Role::Tail);
    assert_eq!(net.rep(2).record(b"k").unwrap().clean, 1);
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    assert_eq!(net.rep(1).record(b"k").unwrap().clean, 1);
}

#[test]
fn middle_failure_resends_to_the_new_successor() {
    let mut net = Net::chain(3, Config::default());
    net.blocked.insert((2, 3));
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.kill(2);
    net.view(2, &[1, 3]);
    net.deliver_all();
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 1);
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
}

#[test]
fn lost_messages_are_repaired_by_resending() {
    let mut net = Net::chain(3, Config::default());
    net.blocked.insert((1, 2));
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.tick(10);
    assert!(net.take_replies().is_empty());
    net.blocked.clear();
    net.tick(100);
    assert_eq!(net.take_replies(), vec![(id(1), Reply::Ok { version: 1 })]);
    // A lost version query is asked again.
    net.blocked.insert((2, 3));
    net.request(1, id(2), cas("k", 1, "b"));
    net.deliver_all();
    net.blocked.insert((3, 2));
    net.blocked.remove(&(2, 3));
    net.request(2, id(3), read("k"));
    net.deliver_all();
    assert!(net.take_replies().is_empty());
    net.blocked.clear();
    net.tick(100);
    let replies = net.take_replies();
    assert!(replies.contains(&(id(2), Reply::Ok { version: 2 })));
    assert!(replies.contains(&(id(3), value(2, "b"))) || replies.contains(&(id(3), value(1, "a"))));
}

#[test]
fn joiner_catches_up_by_paged_state_transfer_before_serving() {
    let cfg = Config {
        max_keys_per_page: 2,
        ..Config::default()
    };
    let mut net = Net::chain(2, cfg.clone());
    for k in 0..5u64 {
        net.request(1, id(k + 1), cas(&format!("k{k}"), 0, &format!("v{k}")));
    }
    net.deliver_all();
    // One more write left dirty at the head (its link to 2 is cut).
    net.blocked.insert((1, 2));
    net.request(1, id(10), cas("k0", 1, "w"));
    net.deliver_all();
    net.take_replies();

    net.add_joiner(3, cfg.clone());
    net.event(3, Event::View(View::new(2, vec![1, 2, 3])));
    assert_eq!(net.rep(3).role(), Role::CatchingUp);
    net.request(3, id(20), read("k1"));
    assert_eq!(
        net.take_replies(),
        vec![(id(20), Reply::Unavailable(Unavailable::CatchingUp))]
    );
    net.view(2, &[1, 2, 3]);
    net.deliver_all();
    assert!(net.rep(3).is_ready());
    assert_eq!(net.rep(3).role(), Role::Tail);
    assert_eq!(net.rep(2).stats().pages_sent, 3);
    assert_eq!(net.rep(3).key_count(), 5);
    for k in 0..5u64 {
        let key = format!("k{k}");
        assert_eq!(net.rep(3).record(key.as_bytes()).unwrap().clean, 1);
        assert_eq!(
            net.rep(3).value_of(key.as_bytes(), 1),
            Some(format!("v{k}").into_bytes())
        );
    }
    // It serves reads, and the dirty write goes through it once the link is back.
    net.request(3, id(21), read("k3"));
    assert_eq!(net.take_replies(), vec![(id(21), value(1, "v3"))]);
    net.blocked.clear();
    net.tick(100);
    assert_eq!(net.take_replies(), vec![(id(10), Reply::Ok { version: 2 })]);
    assert_eq!(net.rep(3).record(b"k0").unwrap().clean, 2);
}

#[test]
fn joiner_at_the_head_pulls_from_its_successor() {
    let mut net = Net::chain(2, Config::default());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.take_replies();
    net.add_joiner(3, Config::default());
    net.view(2, &[3, 1, 2]);
    // Writes wait for the new head to catch up.
    assert_eq!(net.rep(3).role(), Role::CatchingUp);
    assert!(matches!(
        net.queue.front(),
        Some((3, 1, Msg::Pull { after: None, .. }))
    ));
    net.deliver_all();
    assert_eq!(net.rep(3).role(), Role::Head);
    net.request(1, id(2), cas("k", 1, "b"));
    assert_eq!(
        net.take_replies(),
        vec![(id(2), Reply::NotHead { head: Some(3) })]
    );
    net.request(3, id(2), cas("k", 1, "b"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(2), Reply::Ok { version: 2 })]);
}

#[test]
fn members_still_catching_up_are_skipped_as_sources() {
    let mut net = Net::chain(2, Config::default());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.take_replies();
    net.add_joiner(4, Config::default());
    net.add_joiner(5, Config::default());
    // Two joiners at the front: 5's predecessor 4 is empty, so 5 must get the state from 1,
    // and 4 (no predecessor) from 5 or 1.
    net.view(2, &[4, 5, 1, 2]);
    net.deliver_all();
    net.tick(200);
    assert!(net.rep(4).is_ready() && net.rep(5).is_ready());
    assert_eq!(net.rep(4).record(b"k").unwrap().clean, 1);
    assert_eq!(net.rep(5).record(b"k").unwrap().clean, 1);
    net.request(4, id(2), cas("k", 1, "b"));
    net.deliver_all();
    assert_eq!(net.take_replies(), vec![(id(2), Reply::Ok { version: 2 })]);
}

#[test]
fn a_removed_replica_forgets_its_state() {
    let mut net = Net::chain(3, Config::default());
    net.request(1, id(1), cas("k", 0, "a"));
    net.deliver_all();
    net.view(2, &[1, 2]);
    assert_eq!(net.rep(3).role(), Role::Outside);
    assert_eq!(net.rep(3).key_count(), 0);
    // Added back, it catches up like any joiner.
    net.view(3, &[1, 2, 3]);
    assert_eq!(net.rep(3).role(), Role::CatchingUp);
    net.deliver_all();
    assert_eq!(net.rep(3).record(b"k").unwrap().clean, 1);
}

/// Accepts only values that start with "ok" and whose first byte after it grows.
struct Signed;

impl Validate for Signed {
    fn validate(
        &self,
        _key: &[u8],
        current: Option<(u64, &[u8])>,
        _version: u64,
        value: &[u8],
    ) -> Result<(), String> {
        if !value.starts_with(b"ok") {
            return Err("é".repeat(400)); // a long reason with multi-byte characters
        }
        if let Some((_, cur)) = current {
            if value.get(2) <= cur.get(2) {
                return Err("version must grow".into());
            }
        }
        Ok(())
    }
}

#[test]
fn bounds_and_validation_refuse_without_panicking() {
    let cfg = Config {
        max_dirty_per_key: 2,
        max_pending: 3,
        ..Config::default()
    };
    let mut net = Net::chain(2, cfg.clone());
    let big = Request::Cas {
        key: b"k".to_vec(),
        expected: 0,
        value: vec![0; MAX_VALUE_SIZE + 1],
    };
    net.request(1, id(1), big);
    net.request(1, id(2), read(&"x".repeat(MAX_KEY_LEN + 1)));
    assert_eq!(
        net.take_replies(),
        vec![
            (id(1), Reply::Rejected(Rejected::ValueTooLarge)),
            (id(2), Reply::Rejected(Rejected::KeyTooLong)),
        ]
    );
    // At most two uncommitted versions of a key.
    net.blocked.insert((1, 2));
    net.request(1, id(3), cas("k", 0, "a"));
    net.request(1, id(4), cas("k", 1, "b"));
    net.request(1, id(5), cas("k", 2, "c"));
    assert_eq!(
        net.take_replies(),
        vec![(id(5), Reply::Unavailable(Unavailable::Busy))]
    );
    // At most three pending requests.
    net.request(1, id(6), cas("j", 0, "a"));
    net.request(1, id(7), cas("i", 0, "a"));
    assert_eq!(
        net.take_replies(),
        vec![(id(7), Reply::Unavailable(Unavailable::Busy))]
    );
    assert_eq!(net.rep(1).pending_count(), 3);

    // The validation hook.
    let mut net: Net<Signed> = Net::empty();
    net.reps.insert(
        1,
        Replica::with_validator(1, Config::default(), Start::Bootstrap, Signed),
    );
    net.view(1, &[1]);
    net.request(1, id(1), cas("k", 0, "bad"));
    net.request(1, id(2), cas("k", 0, "ok5"));
    net.request(1, id(3), cas("k", 1, "ok4"));
    let replies = net.take_replies();
    match &replies[0] {
        (_, Reply::Rejected(Rejected::Invalid(reason))) => {
            assert!(reason.len() <= MAX_REASON_LEN && !reason.is_empty())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(replies[1], (id(2), Reply::Ok { version: 1 }));
    assert_eq!(
        replies[2],
        (
            id(3),
            Reply::Rejected(Rejected::Invalid("version must grow".into()))
        )
    );
    assert_eq!(net.rep(1).record(b"k").unwrap().newest, 1);
}

#[test]
fn pending_requests_time_out() {
    let cfg = Config {
        request_timeout_ms: 500,
        ..Config::default()
    };
    let mut net = Net::chain(2, cfg);
    net.blocked.insert((1, 2));
    net.request(1, id(1), cas("k", 0, "a"));
    net.tick(100);
    assert!(net.take_replies().is_empty());
    net.tick(500);
    assert_eq!(
        net.take_replies(),
        vec![(id(1), Reply::Unavailable(Unavailable::Retry))]
    );
    assert_eq!(net.rep(1).pending_count(), 0);
    assert_eq!(net.rep(1).stats().expired, 1);
}
