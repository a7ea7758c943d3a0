//! A small deterministic network for the agreement and durability unit tests: replicas by
//! address, a FIFO message queue, links that can be cut, a disk per address (the `Persist`
//! actions applied in order), a virtual clock. Every batch is checked: `Persist` actions come
//! before any `Send` or `Reply`; every replica's invariants hold; no two different views are
//! installed for one epoch.

#![allow(dead_code)]

use chain::{
    Action, Config, Disk, Event, Msg, Replica, Reply, ReqId, Request, Start, Unavailable, View,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const CLIENT: u32 = 100;

pub struct Net {
    pub cfg: Config,
    pub reps: BTreeMap<u32, Replica<u32>>,
    pub disks: BTreeMap<u32, Disk<u32>>,
    pub queue: VecDeque<(u32, u32, Msg<u32>)>,
    pub replies: Vec<(u64, ReqId, Reply<u32>)>,
    /// Directed links that drop messages.
    pub blocked: BTreeSet<(u32, u32)>,
    pub now: u64,
    /// The view installed for each epoch.
    pub installed: BTreeMap<u64, View<u32>>,
    /// (time, replica, epoch) of every installation.
    pub installs: Vec<(u64, u32, u64)>,
    /// Called after every batch: (net, replica that handled the event).
    pub watch: Option<fn(&Net, u32)>,
}

/// Agreement on, short timings so that tests run few ticks.
pub fn agree_cfg() -> Config {
    Config {
        view_agreement: true,
        durable: true,
        lease_ms: 100,
        lease_renew_ms: 20,
        lease_margin_ms: 10,
        propose_retry_ms: 40,
        propose_delay_ms: 20,
        request_timeout_ms: 500,
        ..Config::default()
    }
}

pub fn id(seq: u64) -> ReqId {
    ReqId { client: 7, seq }
}

pub fn cas(key: &str, expected: u64, value: &str) -> Request {
    Request::Cas {
        key: key.as_bytes().to_vec(),
        expected,
        value: value.as_bytes().to_vec(),
    }
}

pub fn read(key: &str) -> Request {
    Request::Read {
        key: key.as_bytes().to_vec(),
    }
}

pub fn value(version: u64, v: &str) -> Reply<u32> {
    Reply::Value {
        version,
        value: v.as_bytes().to_vec(),
    }
}

pub fn no_quorum() -> Reply<u32> {
    Reply::Unavailable(Unavailable::NoQuorum)
}

impl Net {
    /// Founding members `1..=n` with the founding view, each with the suggestion `1..=n`.
    pub fn founded(n: u32, cfg: Config) -> Net {
        let mut net = Net {
            cfg: cfg.clone(),
            reps: BTreeMap::new(),
            disks: BTreeMap::new(),
            queue: VecDeque::new(),
            replies: Vec::new(),
            blocked: BTreeSet::new(),
            now: 0,
            installed: BTreeMap::new(),
            installs: Vec::new(),
            watch: None,
        };
        let members: Vec<u32> = (1..=n).collect();
        for &a in &members {
            net.reps
                .insert(a, Replica::new(a, cfg.clone(), Start::Bootstrap));
            net.disks.insert(a, Disk::default());
        }
        for &a in &members {
            net.event(a, Event::View(View::new(1, members.clone())));
        }
        if cfg.view_agreement {
            for &a in &members {
                net.suggest(a, &members, &[]);
            }
        }
        net
    }

    pub fn rep(&self, a: u32) -> &Replica<u32> {
        &self.reps[&a]
    }

    pub fn add(&mut self, a: u32, start: Start<u32>) {
        self.reps
            .insert(a, Replica::new(a, self.cfg.clone(), start));
        self.disks.entry(a).or_default();
    }

    pub fn apply(&mut self, from: u32, actions: Vec<Action<u32>>) {
        let mut sent = false;
        for act in actions {
            match act {
                Action::Persist(w) => {
                    assert!(!sent, "replica {from}: Persist after a Send or Reply");
                    self.disks.entry(from).or_default().apply(&w);
                }
                Action::Send { to, msg } => {
                    sent = true;
                    self.queue.push_back((from, to, msg));
                }
                Action::Reply { to, id, reply } => {
                    sent = true;
                    assert_eq!(to, CLIENT);
                    self.replies.push((self.now, id, reply));
                }
                Action::ViewInstalled(v) => {
                    if let Some(old) = self.installed.get(&v.epoch) {
                        assert_eq!(*old, v, "two views for epoch {}", v.epoch);
                    }
                    self.installs.push((self.now, from, v.epoch));
                    self.installed.insert(v.epoch, v);
                }
                Action::SetTimer { .. } | Action::NewerEpoch { .. } => {}
            }
        }
        if let Some(r) = self.reps.get(&from) {
            r.check_invariants().expect("replica invariants");
            if self.cfg.durable && !self.cfg.unsafe_persist_late {
                assert_eq!(
                    self.disks[&from].recovered(),
                    r.durable_image(),
                    "replica {from}: disk differs from memory"
                );
            }
        }
        if let Some(w) = self.watch {
            w(self, from);
        }
    }

    pub fn event(&mut self, to: u32, ev: Event<u32>) -> Vec<Action<u32>> {
        let now = self.now;
        let Some(r) = self.reps.get_mut(&to) else {
            return Vec::new();
        };
        let out = r.handle(now, ev);
        self.apply(to, out.clone());
        out
    }

    pub fn suggest(&mut self, a: u32, members: &[u32], suspected: &[u32]) {
        self.event(
            a,
            Event::Suggest {
                members: members.to_vec(),
                suspected: suspected.to_vec(),
            },
        );
    }

    pub fn request(&mut self, to: u32, id: ReqId, req: Request) {
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
    pub fn deliver_one(&mut self) -> bool {
        let Some((from, to, msg)) = self.queue.pop_front() else {
            return false;
        };
        if !self.blocked.contains(&(from, to)) {
            self.event(to, Event::Message { from, msg });
        }
        true
    }

    pub fn deliver_all(&mut self) {
        let mut n = 0;
        while self.deliver_one() {
            n += 1;
            assert!(n < 200_000, "message storm");
        }
    }

    /// Advances the clock by `ms`, fires every timer, delivers everything.
    pub fn tick(&mut self, ms: u64) {
        self.now += ms;
        let all: Vec<u32> = self.reps.keys().copied().collect();
        for a in all {
            self.event(a, Event::Timer);
        }
        self.deliver_all();
    }

    /// Ticks every 10 ms for `ms`.
    pub fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            self.tick(10);
        }
    }

    /// Ticks until `done` holds (at most `ms`); returns whether it did.
    pub fn run_until(&mut self, ms: u64, done: impl Fn(&Net) -> bool) -> bool {
        for _ in 0..ms / 10 {
            if done(self) {
                return true;
            }
            self.tick(10);
        }
        done(self)
    }

    /// Cuts every link between `a` and `others`, both ways.
    pub fn cut(&mut self, a: u32, others: &[u32]) {
        for &b in others {
            self.blocked.insert((a, b));
            self.blocked.insert((b, a));
        }
    }

    /// kill -9: the memory is gone (and messages to and from it); the disk stays.
    pub fn kill(&mut self, a: u32) {
        self.reps.remove(&a);
        self.queue.retain(|(f, t, _)| *f != a && *t != a);
    }

    /// Restarts `a` from its disk.
    pub fn restart(&mut self, a: u32) {
        let rec = self.disks.get(&a).cloned().unwrap_or_default().recovered();
        let r = Replica::new(a, self.cfg.clone(), Start::Recover(Box::new(rec)));
        self.reps.insert(a, r);
    }

    pub fn take_replies(&mut self) -> Vec<(ReqId, Reply<u32>)> {
        std::mem::take(&mut self.replies)
            .into_iter()
            .map(|(_, i, r)| (i, r))
            .collect()
    }

    /// Removes and returns every reply to `id` so far.
    pub fn answers(&mut self, id: ReqId) -> Vec<Reply<u32>> {
        let mut found = Vec::new();
        self.replies.retain(|(_, i, r)| {
            if *i == id {
                found.push(r.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Sends a request and runs until it is answered with something other than
    /// `Unavailable`, re-sending it every 50 ms (the same id, as a client would).
    pub fn call(&mut self, to: u32, id: ReqId, req: Request, ms: u64) -> Option<Reply<u32>> {
        for _ in 0..ms / 50 {
            self.request(to, id, req.clone());
            for _ in 0..5 {
                let done = self
                    .answers(id)
                    .into_iter()
                    .find(|r| !matches!(r, Reply::Unavailable(_)));
                if done.is_some() {
                    return done;
                }
                self.tick(10);
            }
        }
        None
    }

    /// Epoch of the replica at `a`.
    pub fn epoch(&self, a: u32) -> u64 {
        self.rep(a).epoch()
    }
}
