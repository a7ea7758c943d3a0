//! Random and malformed inputs never make a replica panic or break its invariants.

use chain::{
    Action, Config, DedupEntry, Event, Msg, RecordState, Replica, ReqId, Request, Start, View,
    WriteEntry, MAX_KEY_LEN, MAX_VALUE_SIZE,
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

fn rand_msg(rng: &mut ChaCha8Rng) -> Msg {
    let epoch = rng.gen_range(0..4);
    match rng.gen_range(0..7) {
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
        5 => {
            let n = rng.gen_range(0..6);
            Msg::Page {
                epoch,
                after: rng.gen_bool(0.3).then(|| rand_key(rng)),
                records: (0..n)
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
                    .collect(),
                done: rng.gen_bool(0.5),
            }
        }
        _ => Msg::PullRefused { epoch },
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
fn hammer(seed: u64, me: u32, start: Start, events: usize) -> Replica<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut r = Replica::new(me, small_cfg(), start);
    r.handle(0, Event::View(View::new(1, vec![1, 2, 3])));
    let mut now = 0u64;
    for _ in 0..events {
        now += rng.gen_range(0..30);
        let out = r.handle(now, rand_event(&mut rng));
        assert!(out.len() <= 1_000, "seed {seed}: {} actions", out.len());
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
        if let Ok(msg) = postcard::from_bytes::<Msg>(&bytes) {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn proptest_event_streams_keep_invariants(seed in any::<u64>(), me in 1u32..4, join in any::<bool>()) {
        let start = if join { Start::Join } else { Start::Bootstrap };
        let r = hammer(seed, me, start, 500);
        prop_assert!(r.check_invariants().is_ok());
    }

    #[test]
    fn proptest_messages_round_trip_postcard(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = rand_msg(&mut rng);
        let b = postcard::to_allocvec(&m).unwrap();
        prop_assert_eq!(postcard::from_bytes::<Msg>(&b).unwrap(), m);
    }
}
