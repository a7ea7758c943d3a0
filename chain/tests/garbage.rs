//! Random and malformed inputs never make a replica panic or break its invariants.

use chain::{
    Action, Ballot, Config, DedupEntry, DurableMeta, Event, Msg, Proposal, RecordState, Recovered,
    Replica, ReqId, Request, Start, View, WriteEntry, MAX_KEY_LEN, MAX_MEMBERS, MAX_VALUE_SIZE,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn small_cfg() -> Config {
    Config {
        max_pending: 8,
        max_dirty_per_key: 3,
        max_keys: 16,
        max_keys_per_page: 3,
        max_dedup_clients: 4,
        ..Config::default()
    }
}

fn rand_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen()).collect()
}

fn rand_key(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0 => vec![b'x'; MAX_KEY_LEN + 1],
        1 => rand_bytes(rng, 8),
        _ => vec![b'k', rng.gen_range(b'0'..b'4')],
    }
}

fn rand_value(rng: &mut ChaCha8Rng) -> Vec<u8> {
    if rng.gen_range(0..50) == 0 {
        vec![1; MAX_VALUE_SIZE + 1]
    } else {
        rand_bytes(rng, 6)
    }
}

fn rand_version(rng: &mut ChaCha8Rng) -> u64 {
    match rng.gen_range(0..10) {
        0 => u64::MAX,
        1 => u64::MAX - 1,
        2 => 0,
        _ => rng.gen_range(0..6),
    }
}

fn rand_entries(rng: &mut ChaCha8Rng) -> Vec<WriteEntry> {
    let n = rng.gen_range(0..6);
    let mut v = rand_version(rng);
    (0..n)
        .map(|_| {
            let e = WriteEntry {
                version: v,
                value: rand_value(rng),
                req: rng.gen_bool(0.5).then(|| ReqId {
                    client: rng.gen_range(0..6),
                    seq: rng.gen_range(0..4),
                }),
            };
            v = if rng.gen_bool(0.8) {
                v.wrapping_add(1)
            } else {
                rand_version(rng)
            };
            e
        })
        .collect()
}

fn rand_members(rng: &mut ChaCha8Rng) -> Vec<u32> {
    let n = match rng.gen_range(0..20) {
        0 => MAX_MEMBERS + 1 + rng.gen_range(0..3),
        _ => rng.gen_range(0..6),
    };
    (0..n).map(|_| rng.gen_range(0..6)).collect()
}

fn rand_ballot(rng: &mut ChaCha8Rng) -> Ballot {
    Ballot {
        round: match rng.gen_range(0..8) {
            0 => u64::MAX,
            _ => rng.gen_range(0..5),
        },
        node: rng.gen_range(0..5),
    }
}

fn rand_proposal(rng: &mut ChaCha8Rng) -> Proposal<u32> {
    Proposal {
        ballot: rand_ballot(rng),
        view: View::new(rng.gen_range(0..5), rand_members(rng)),
    }
}

fn rand_records(rng: &mut ChaCha8Rng) -> Vec<RecordState> {
    let n = rng.gen_range(0..6);
    (0..n)
        .map(|_| RecordState {
            key: rand_key(rng),
            clean: rand_version(rng),
            versions: rand_entries(rng),
            dedup: (0..rng.gen_range(0..7))
                .map(|_| DedupEntry {
                    client: rng.gen_range(0..8),
                    seq: rng.gen_range(0..4),
                    version: rand_version(rng),
                })
                .collect(),
        })
        .collect()
}

fn rand_msg(rng: &mut ChaCha8Rng) -> Msg<u32> {
    let epoch = rng.gen_range(0..4);
    match rng.gen_range(0..16) {
        0 => Msg::Write {
            epoch,
            key: rand_key(rng),
            entries: rand_entries(rng),
        },
        1 => Msg::Ack {
            epoch,
            key: rand_key(rng),
            version: rand_version(rng),
        },
        2 => Msg::VersionQuery {
            epoch,
            key: rand_key(rng),
            qid: rng.gen_range(0..5),
        },
        3 => Msg::VersionReply {
            epoch,
            key: rand_key(rng),
            qid: rng.gen_range(0..5),
            version: rand_version(rng),
        },
        4 => Msg::Pull {
            epoch,
            after: rng.gen_bool(0.5).then(|| rand_key(rng)),
        },
        5 => Msg::Page {
            epoch,
            after: rng.gen_bool(0.3).then(|| rand_key(rng)),
            records: rand_records(rng),
            done: rng.gen_bool(0.5),
        },
        6 => Msg::PullRefused { epoch },
        7 => Msg::Prepare {
            epoch,
            ballot: rand_ballot(rng),
        },
        8 => Msg::Promise {
            epoch,
            ballot: rand_ballot(rng),
            accepted: rng.gen_bool(0.5).then(|| rand_proposal(rng)),
            synced: rng.gen_bool(0.5),
        },
        9 => Msg::Accept {
            epoch,
            proposal: rand_proposal(rng),
        },
        10 => Msg::Accepted {
            epoch,
            ballot: rand_ballot(rng),
        },
        11 => Msg::Nack {
            epoch,
            promised: rand_ballot(rng),
        },
        12 => Msg::Decided {
            view: View::new(rng.gen_range(0..5), rand_members(rng)),
        },
        13 => Msg::ViewRequest { epoch },
        14 => Msg::LeaseRequest {
            epoch,
            seq: rng.gen_range(0..20),
        },
        _ => Msg::LeaseGrant {
            epoch,
            seq: rng.gen_range(0..20),
        },
    }
}

fn rand_event(rng: &mut ChaCha8Rng) -> Event<u32> {
    match rng.gen_range(0..20) {
        0 => {
            let n = rng.gen_range(0..5);
            Event::View(View::new(
                rng.gen_range(0..5),
                (0..n).map(|_| rng.gen_range(0..6)).collect(),
            ))
        }
        1 => Event::Timer,
        7 => Event::Suggest {
            members: rand_members(rng),
            suspected: rand_members(rng),
        },
        2..=6 => {
            let key = rand_key(rng);
            let req = if rng.gen_bool(0.5) {
                Request::Read { key }
            } else {
                Request::Cas {
                    key,
                    expected: rand_version(rng),
                    value: rand_value(rng),
                }
            };
            Event::Request {
                from: 100 + rng.gen_range(0..3),
                id: ReqId {
                    client: rng.gen_range(0..6),
                    seq: rng.gen_range(0..4),
                },
                req,
            }
        }
        _ => Event::Message {
            from: rng.gen_range(0..6),
            msg: rand_msg(rng),
        },
    }
}

/// Feeds `events` random events to a replica and checks it after each.
fn hammer(seed: u64, me: u32, start: Start<u32>, events: usize) -> Replica<u32> {
    hammer_with(seed, me, start, events, small_cfg())
}

fn agree_small_cfg() -> Config {
    Config {
        view_agreement: true,
        durable: true,
        lease_ms: 40,
        lease_renew_ms: 10,
        lease_margin_ms: 5,
        propose_retry_ms: 20,
        ..small_cfg()
    }
}

fn hammer_with(seed: u64, me: u32, start: Start<u32>, events: usize, cfg: Config) -> Replica<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Replica::new(me, cfg, start);
    r.handle(0, Event::View(View::new(1, vec![1, 2, 3])));
    let mut now = 0u64;
    for _ in 0..events {
        now += rng.gen_range(0..30);
        let out = r.handle(now, rand_event(&mut rng));
        assert!(out.len() <= 1_000, "seed {seed}: {} actions", out.len());
        // Every write to disk comes before the messages and replies of its batch.
        let first_out = out
            .iter()
            .position(|a| matches!(a, Action::Send { .. } | Action::Reply { .. }));
        if let Some(i) = first_out {
            assert!(
                !out[i..].iter().any(|a| matches!(a, Action::Persist(_))),
                "seed {seed}: Persist after a Send"
            );
        }
        if let Err(e) = r.check_invariants() {
            panic!("seed {seed}: {e}");
        }
        assert!(r.key_count() <= 16 && r.pending_count() <= 8);
    }
    r
}

#[test]
fn seeded_garbage_never_panics_in_any_role() {
    let mut served = 0;
    for seed in 0..40u64 {
        for (me, start) in [
            (1, Start::Bootstrap),
            (2, Start::Bootstrap),
            (3, Start::Bootstrap),
            (2, Start::Join),
        ] {
            let mut r = hammer(seed * 10 + u64::from(me), me, start, 2_000);
            // Still answers: a read gets a reply or a query to the tail.
            let out = r.handle(
                1_000_000,
                Event::Request {
                    from: 100,
                    id: ReqId { client: 1, seq: 99 },
                    req: Request::Read {
                        key: b"k1".to_vec(),
                    },
                },
            );
            let answered = out.iter().any(|a| {
                matches!(a, Action::Reply { .. })
                    || matches!(
                        a,
                        Action::Send {
                            msg: Msg::VersionQuery { .. },
                            ..
                        }
                    )
            });
            assert!(answered, "seed {seed}: {out:?}");
            served += usize::from(r.is_ready());
        }
    }
    assert!(served > 0);
}

#[test]
fn random_bytes_decoded_as_messages_are_harmless() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut r = Replica::new(2u32, small_cfg(), Start::Bootstrap);
    r.handle(0, Event::View(View::new(1, vec![1, 2, 3])));
    let mut decoded = 0;
    for i in 0..20_000u64 {
        // Half the time, a real message with a few bytes flipped.
        let bytes = if rng.gen_bool(0.5) {
            let mut b = postcard::to_allocvec(&rand_msg(&mut rng)).unwrap();
            for _ in 0..rng.gen_range(1..4) {
                if !b.is_empty() {
                    let k = rng.gen_range(0..b.len());
                    b[k] = rng.gen();
                }
            }
            b
        } else {
            rand_bytes(&mut rng, 40)
        };
        if let Ok(msg) = postcard::from_bytes::<Msg<u32>>(&bytes) {
            decoded += 1;
            r.handle(
                i,
                Event::Message {
                    from: rng.gen_range(0..5),
                    msg,
                },
            );
            r.check_invariants().unwrap();
        }
    }
    assert!(decoded > 1_000, "only {decoded} decoded");
}

#[test]
fn seeded_garbage_never_panics_under_view_agreement() {
    let mut answered_requests = 0;
    for seed in 0..30u64 {
        for (me, start) in [
            (1, Start::Bootstrap),
            (3, Start::Bootstrap),
            (2, Start::Join),
        ] {
            let mut r = hammer_with(
                seed * 7 + u64::from(me),
                me,
                start,
                2_000,
                agree_small_cfg(),
            );
            let out = r.handle(
                1_000_000,
                Event::Request {
                    from: 100,
                    id: ReqId { client: 1, seq: 99 },
                    req: Request::Read {
                        key: b"k1".to_vec(),
                    },
                },
            );
            answered_requests += usize::from(out.iter().any(|a| {
                matches!(a, Action::Reply { .. })
                    || matches!(
                        a,
                        Action::Send {
                            msg: Msg::VersionQuery { .. },
                            ..
                        }
                    )
            }));
            assert!(r.view().is_none_or(|v| v.members.len() <= MAX_MEMBERS));
        }
    }
    // A replica holding a request (a write on its way, say) may not answer at once; nearly
    // all do.
    assert!(
        answered_requests >= 80,
        "{answered_requests} of 90 answered"
    );
}

fn rand_recovered(rng: &mut ChaCha8Rng) -> Recovered<u32> {
    Recovered {
        meta: DurableMeta {
            view: rng
                .gen_bool(0.8)
                .then(|| View::new(rng.gen_range(0..5), rand_members(rng))),
            synced: rng.gen_bool(0.5),
            promised: rng.gen_bool(0.5).then(|| rand_ballot(rng)),
            accepted: rng.gen_bool(0.5).then(|| rand_proposal(rng)),
        },
        records: (0..rng.gen_range(0..4))
            .flat_map(|_| rand_records(rng))
            .collect(),
    }
}

#[test]
fn garbage_on_disk_never_panics_a_recovering_replica() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut serving = 0;
    for i in 0..400u64 {
        let agree = i % 2 == 0;
        let cfg = if agree {
            agree_small_cfg()
        } else {
            small_cfg()
        };
        let rec = rand_recovered(&mut rng);
        let mut r = Replica::new(2u32, cfg, Start::Recover(Box::new(rec)));
        let mut now = 0;
        for _ in 0..300 {
            now += rng.gen_range(0..20);
            r.handle(now, rand_event(&mut rng));
            r.check_invariants().unwrap();
            assert!(r.key_count() <= 16 && r.pending_count() <= 8);
        }
        serving += usize::from(r.is_ready());
        // Whatever it wrote since is a state it can restart from again.
        let again = Replica::new(
            2u32,
            agree_small_cfg(),
            Start::Recover(Box::new(r.durable_image())),
        );
        again.check_invariants().unwrap();
    }
    assert!(serving > 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn proptest_event_streams_keep_invariants(seed in any::<u64>(), me in 1u32..4, join in any::<bool>(), agree in any::<bool>()) {
        let start = if join { Start::Join } else { Start::Bootstrap };
        let cfg = if agree { agree_small_cfg() } else { small_cfg() };
        let r = hammer_with(seed, me, start, 500, cfg);
        prop_assert!(r.check_invariants().is_ok());
    }

    #[test]
    fn proptest_messages_round_trip_postcard(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = rand_msg(&mut rng);
        let b = postcard::to_allocvec(&m).unwrap();
        prop_assert_eq!(postcard::from_bytes::<Msg<u32>>(&b).unwrap(), m);
    }
}
