//! Ring range listing and anti-entropy digests, against brute-force references.

use std::collections::BTreeSet;

use peerstore_node::store::{
    in_interval, BlockKey, BlockStore, RangeDigest, Role, StoreConfig, StoreError,
};
use proptest::prelude::*;
use proptest::test_runner::{TestRng, TestRunner};

fn open(dir: &std::path::Path) -> BlockStore {
    BlockStore::open(StoreConfig::new(dir, u64::MAX))
        .expect("open store")
        .0
}

/// Blocks whose keys are spread over the ring; returns the store and the key set.
fn filled(
    dir: &std::path::Path,
    seeds: impl IntoIterator<Item = u32>,
) -> (BlockStore, Vec<BlockKey>) {
    let s = open(dir);
    let seeds: Vec<u32> = seeds.into_iter().collect();
    // puts in parallel: each one waits for its fsyncs, so this is much faster than a loop
    std::thread::scope(|scope| {
        for chunk in seeds.chunks(seeds.len().div_ceil(8).max(1)) {
            let s = &s;
            scope.spawn(move || {
                for seed in chunk {
                    let b = seed.to_le_bytes();
                    s.put(BlockKey::of(&b), &b, Role::Owner).expect("put");
                }
            });
        }
    });
    let mut keys: Vec<BlockKey> = seeds
        .iter()
        .map(|s| BlockKey::of(&s.to_le_bytes()))
        .collect();
    keys.sort();
    (s, keys)
}

/// Keys of `all` in `(a, b]`, in ring order starting after `a`.
fn reference(all: &[BlockKey], a: &BlockKey, b: &BlockKey) -> Vec<BlockKey> {
    let after: Vec<BlockKey> = all.iter().copied().filter(|k| k > a).collect();
    let upto: Vec<BlockKey> = all.iter().copied().filter(|k| k <= a).collect();
    after
        .into_iter()
        .chain(upto)
        .filter(|k| in_interval(a, b, k))
        .collect()
}

/// A runner with a fixed seed, so every run checks the same cases.
fn runner(cases: u32) -> TestRunner {
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    TestRunner::new_with_rng(config, rng)
}

fn key_strategy(pool: Vec<BlockKey>) -> impl Strategy<Value = BlockKey> {
    // Boundaries are arbitrary keys, stored keys (inclusive/exclusive edges) or the extremes.
    prop_oneof![
        any::<[u8; 32]>().prop_map(BlockKey),
        proptest::sample::select(pool),
        Just(BlockKey::ZERO),
        Just(BlockKey::MAX),
    ]
}

#[test]
fn list_range_matches_brute_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, keys) = filled(dir.path(), 0..200);
    let mut runner = runner(300);
    runner
        .run(
            &(
                key_strategy(keys.clone()),
                key_strategy(keys.clone()),
                1usize..40,
            ),
            |(a, b, limit)| {
                let want = reference(&keys, &a, &b);
                let all = s.list_range(&a, &b, None).expect("list");
                prop_assert_eq!(&all.keys, &want);
                prop_assert_eq!(all.next, None);
                // paging reassembles the same list
                let mut got = Vec::new();
                let mut cursor = a;
                loop {
                    let page = s.list_range(&cursor, &b, Some(limit)).expect("page");
                    prop_assert!(page.keys.len() <= limit);
                    got.extend(page.keys.iter().copied());
                    match page.next {
                        Some(n) => {
                            prop_assert_eq!(page.keys.len(), limit);
                            cursor = n;
                        }
                        None => break,
                    }
                    prop_assert!(got.len() <= want.len());
                }
                prop_assert_eq!(&got, &want);
                let meta = s.list_range_meta(&a, &b, None).expect("meta");
                prop_assert_eq!(meta.entries.len(), want.len());
                prop_assert!(meta.entries.iter().all(|(_, m)| m.size == 4));
                Ok(())
            },
        )
        .expect("property");
}

#[test]
fn whole_ring_and_wrap_examples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, keys) = filled(dir.path(), 0..50);
    let k10 = keys[10];
    // a == b: whole ring, ordered from after a, ending with a itself
    let all = s.list_range(&k10, &k10, None).expect("list").keys;
    assert_eq!(all.len(), 50);
    assert_eq!(all[0], keys[11]);
    assert_eq!(*all.last().expect("nonempty"), k10);
    // wrap: (keys[40], keys[5]] = keys 41..50 then 0..=5
    let w = s.list_range(&keys[40], &keys[5], None).expect("list").keys;
    let mut expect: Vec<BlockKey> = keys[41..].to_vec();
    expect.extend_from_slice(&keys[..=5]);
    assert_eq!(w, expect);
    assert!(matches!(
        s.list_range(&k10, &k10, Some(0)),
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Digests of two stores agree on a range exactly when their key sets in that range agree,
/// and bucket digests point at exactly the buckets holding the differences.
#[test]
fn digests_equal_iff_key_sets_equal() {
    let da = tempfile::tempdir().expect("tempdir");
    let db = tempfile::tempdir().expect("tempdir");
    // b holds 0..300; a holds the same except 7 keys it lacks and 5 keys only it has
    let (sa, ka) = filled(
        da.path(),
        (0u32..300).filter(|i| i % 43 != 5).chain(1000..1005),
    );
    let (sb, kb) = filled(db.path(), 0u32..300);
    let pool: Vec<BlockKey> = ka.iter().chain(&kb).copied().collect();
    let mut runner = runner(300);
    runner
        .run(
            &(key_strategy(pool.clone()), key_strategy(pool), 1u32..40),
            |(a, b, n)| {
                let ra: BTreeSet<BlockKey> = reference(&ka, &a, &b).into_iter().collect();
                let rb: BTreeSet<BlockKey> = reference(&kb, &a, &b).into_iter().collect();
                let dga = sa.range_digest(&a, &b).expect("digest");
                let dgb = sb.range_digest(&a, &b).expect("digest");
                prop_assert_eq!(dga.count, ra.len() as u64);
                prop_assert_eq!(dgb.count, rb.len() as u64);
                prop_assert_eq!(dga == dgb, ra == rb);

                let ba = sa.bucket_digests(&a, &b, n).expect("buckets");
                let bb = sb.bucket_digests(&a, &b, n).expect("buckets");
                // fewer buckets only when the interval holds fewer than n possible keys
                prop_assert!(!ba.is_empty() && ba.len() <= n as usize);
                prop_assert_eq!(ba.len(), bb.len());
                prop_assert_eq!(ba[0].start, a);
                prop_assert_eq!(ba[ba.len() - 1].end, b);
                let mut total = 0;
                for (i, (x, y)) in ba.iter().zip(&bb).enumerate() {
                    prop_assert_eq!((x.start, x.end), (y.start, y.end));
                    if i > 0 {
                        prop_assert_eq!(x.start, ba[i - 1].end);
                    }
                    // each bucket is the digest of its own sub-interval
                    if n > 1 {
                        let own = sa.range_digest(&x.start, &x.end).expect("digest");
                        prop_assert_eq!(own, x.digest);
                    }
                    total += x.digest.count;
                    let in_x = |keys: &[BlockKey]| -> BTreeSet<BlockKey> {
                        keys.iter()
                            .copied()
                            .filter(|k| in_interval(&a, &b, k) && in_interval(&x.start, &x.end, k))
                            .collect()
                    };
                    prop_assert_eq!(x.digest == y.digest, in_x(&ka) == in_x(&kb), "bucket {}", i);
                }
                prop_assert_eq!(total, dga.count);
                Ok(())
            },
        )
        .expect("property");
}

#[test]
fn bucket_digests_locate_a_difference() {
    let da = tempfile::tempdir().expect("tempdir");
    let db = tempfile::tempdir().expect("tempdir");
    let (sa, ka) = filled(da.path(), 0..500);
    let (sb, _) = filled(db.path(), 0..500);
    // b loses one block
    let lost = ka[321];
    assert!(sb.delete(&lost).expect("delete"));
    let whole = BlockKey::ZERO;
    assert_ne!(
        sa.range_digest(&whole, &whole).expect("d"),
        sb.range_digest(&whole, &whole).expect("d")
    );
    let ba = sa.bucket_digests(&whole, &whole, 64).expect("buckets");
    let bb = sb.bucket_digests(&whole, &whole, 64).expect("buckets");
    let differing: Vec<usize> = (0..64).filter(|&i| ba[i] != bb[i]).collect();
    assert_eq!(differing.len(), 1);
    let d = ba[differing[0]];
    assert!(in_interval(&d.start, &d.end, &lost));
    // exchanging only that bucket's key lists finds the lost key
    let la: BTreeSet<BlockKey> = sa
        .list_range(&d.start, &d.end, None)
        .expect("l")
        .keys
        .into_iter()
        .collect();
    let lb: BTreeSet<BlockKey> = sb
        .list_range(&d.start, &d.end, None)
        .expect("l")
        .keys
        .into_iter()
        .collect();
    assert_eq!(la.difference(&lb).copied().collect::<Vec<_>>(), vec![lost]);
    // the whole-ring split starts at 0 in steps of 2^250
    assert_eq!(ba[1].start.0[0], 4);
    // empty range
    assert_eq!(
        sa.range_digest(&ka[3], &ka[3].clone()).expect("d").count,
        500
    );
    let empty = open(tempfile::tempdir().expect("t").path()).range_digest(&whole, &whole);
    assert_eq!(empty.expect("d"), RangeDigest::default());
    assert!(matches!(
        sa.bucket_digests(&whole, &whole, 0),
        Err(StoreError::InvalidArgument(_))
    ));
}
