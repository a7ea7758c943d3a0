//! Block store: round trips, idempotence, capacity, concurrency, mutable records.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Barrier};

use peerstore_node::store::{
    records_on_disk, BlockKey, BlockStore, PutOutcome, RecordTable, RecordUpdate, Role,
    StoreConfig, StoreError,
};

fn block(seed: u64, len: usize) -> (BlockKey, Vec<u8>) {
    let data = peerstore_testkit::block(seed, len);
    (BlockKey::of(&data), data)
}

fn open(dir: &Path, capacity: u64) -> BlockStore {
    BlockStore::open(StoreConfig::new(dir, capacity))
        .expect("open store")
        .0
}

/// The keys of the records actually on disk (read from the segment files, not the index).
fn on_disk(dir: &Path) -> Vec<BlockKey> {
    records_on_disk(dir)
        .expect("scan segments")
        .into_iter()
        .map(|r| r.key)
        .collect()
}

/// The block's payload as the segment file holds it.
fn payload_on_disk(s: &BlockStore, k: &BlockKey) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let r = s.block_location(k).expect("location").expect("held");
    let mut buf = vec![0u8; r.len as usize];
    fs::File::open(&r.path)
        .expect("segment")
        .read_exact_at(&mut buf, r.offset)
        .expect("read");
    buf
}

#[test]
fn put_get_has_delete_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 10 << 20);
    let (k, b) = block(1, 4096);
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.get(&k).expect("get"), None);
    assert_eq!(s.put(k, &b, Role::Owner).expect("put"), PutOutcome::Stored);
    assert!(s.has(&k).expect("has"));
    assert_eq!(s.get(&k).expect("get"), Some(b.clone()));
    let meta = s.meta(&k).expect("meta").expect("present");
    assert_eq!((meta.size, meta.role), (4096, Role::Owner));
    assert_eq!(s.used_bytes(), 4096);
    assert_eq!(s.block_count(), 1);
    // on disk in a segment file, as a record that names its key
    assert_eq!(payload_on_disk(&s, &k), b);
    let loc = s.block_location(&k).expect("location").expect("held");
    assert!(loc.path.starts_with(s.segment_dir()), "{:?}", loc.path);
    assert_eq!(on_disk(dir.path()), vec![k]);

    // the empty block is a block too
    let (ek, eb) = block(0, 0);
    assert_eq!(
        s.put(ek, &eb, Role::Replica).expect("put"),
        PutOutcome::Stored
    );
    assert_eq!(s.get(&ek).expect("get"), Some(Vec::new()));

    assert!(s.delete(&k).expect("delete"));
    assert!(!s.delete(&k).expect("delete again"));
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.get(&k).expect("get"), None);
    // the bytes left the disk, not only the index
    assert_eq!(on_disk(dir.path()), vec![ek]);
    assert_eq!(s.block_location(&k).expect("location"), None);
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.block_count(), 1);
    assert_eq!(s.index_len().expect("len"), 1);
}

#[test]
fn put_with_wrong_key_is_rejected_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 1 << 20);
    let (k, _) = block(1, 100);
    let (_, other) = block(2, 100);
    match s.put(k, &other, Role::Owner) {
        Err(StoreError::HashMismatch { expected, actual }) => {
            assert_eq!(expected, k);
            assert_eq!(actual, BlockKey::of(&other));
        }
        r => panic!("expected HashMismatch, got {r:?}"),
    }
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.used_bytes(), 0);
    assert!(on_disk(dir.path()).is_empty());
    assert_eq!(s.segment_count(), 0);
}

#[test]
fn put_is_idempotent_and_keeps_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 1 << 20);
    let (k, b) = block(3, 1000);
    assert_eq!(
        s.put(k, &b, Role::Replica).expect("put"),
        PutOutcome::Stored
    );
    assert_eq!(
        s.put(k, &b, Role::Owner).expect("put"),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(s.used_bytes(), 1000);
    assert_eq!(s.block_count(), 1);
    assert_eq!(
        s.meta(&k).expect("meta").map(|m| m.role),
        Some(Role::Replica)
    );

    // role updates
    assert!(s.set_role(&k, Role::Owner).expect("set role"));
    let rc = s.role_counts();
    assert_eq!((rc.owner_blocks, rc.owner_bytes), (1, 1000));
    assert_eq!((rc.replica_blocks, rc.replica_bytes), (0, 0));
    assert!(!s.set_role(&block(4, 10).0, Role::Owner).expect("set role"));

    // a put of a block whose record vanished (segment cut short) rewrites it
    let loc = s.block_location(&k).expect("location").expect("held");
    fs::OpenOptions::new()
        .write(true)
        .open(&loc.path)
        .expect("segment")
        .set_len(loc.offset)
        .expect("truncate");
    assert_eq!(
        s.put(k, &b, Role::Owner).expect("put"),
        PutOutcome::Rewritten
    );
    assert_eq!(s.get(&k).expect("get"), Some(b));
    assert_eq!(s.used_bytes(), 1000);
    assert_eq!(s.block_count(), 1);
}

#[test]
fn capacity_is_enforced_and_a_full_put_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = 10 * 1000;
    let s = open(dir.path(), cap);
    for i in 0..10 {
        let (k, b) = block(100 + i, 1000);
        s.put(k, &b, Role::Owner).expect("fits");
    }
    assert_eq!(s.used_bytes(), cap);
    assert_eq!(s.free_bytes(), 0);
    let (k, b) = block(999, 1000);
    let err = s.put(k, &b, Role::Owner).expect_err("must be full");
    match &err {
        StoreError::Full {
            needed,
            free,
            capacity,
        } => assert_eq!((*needed, *free, *capacity), (1000, 0, cap)),
        e => panic!("expected Full, got {e:?}"),
    }
    assert!(err.to_string().starts_with("node full: "), "{err}");
    assert!(!err.to_string().contains('\n'));
    assert_eq!(s.used_bytes(), cap);
    assert!(!s.has(&k).expect("has"));
    assert!(!on_disk(dir.path()).contains(&k));
    assert_eq!(on_disk(dir.path()).len(), 10);
    // re-putting a held block still succeeds when full (idempotent, no new space)
    let (k0, b0) = block(100, 1000);
    assert_eq!(
        s.put(k0, &b0, Role::Owner).expect("idempotent"),
        PutOutcome::AlreadyPresent
    );
    // the empty block fits even when full
    let (ek, eb) = block(0, 0);
    s.put(ek, &eb, Role::Owner).expect("empty block fits");
    // deleting frees space
    assert!(s.delete(&k0).expect("delete"));
    s.put(k, &b, Role::Owner).expect("fits after delete");
    assert_eq!(s.used_bytes(), cap);
}

#[test]
fn concurrent_puts_never_exceed_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 8 * 1024;
    let cap = 20 * size as u64 + 100; // room for 20 of the 8 * 8 blocks offered
    let s = Arc::new(open(dir.path(), cap));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let s = Arc::clone(&s);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut stored = 0u64;
                let mut full = 0u64;
                for i in 0..8 {
                    // threads 0 and 7 offer the same blocks: idempotent puts race too
                    let (k, b) = block((t % 7) * 100 + i, size);
                    match s.put(k, &b, Role::Owner) {
                        Ok(PutOutcome::Stored) => stored += 1,
                        Ok(_) => {}
                        Err(StoreError::Full { .. }) => full += 1,
                        Err(e) => panic!("put: {e}"),
                    }
                    assert!(s.used_bytes() <= cap);
                }
                (stored, full)
            })
        })
        .collect();
    let mut stored = 0;
    let mut full = 0;
    for h in handles {
        let (a, b) = h.join().expect("thread");
        stored += a;
        full += b;
    }
    assert_eq!(stored, 20, "exactly the blocks that fit are stored");
    assert!(full >= 56 - 20 - 8, "full={full}");
    assert_eq!(s.used_bytes(), 20 * size as u64);
    assert_eq!(s.block_count(), 20);
    assert_eq!(s.index_len().expect("len"), 20);
    assert_eq!(on_disk(dir.path()).len(), 20);
    assert_eq!(s.stats().reserved_bytes, 0);
}

#[test]
fn store_is_exclusive_across_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _s = open(dir.path(), 1000);
    match BlockStore::open(StoreConfig::new(dir.path(), 1000)) {
        Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("already open")),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open must fail"),
    }
}

#[test]
fn mutable_record_compare_and_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 1000);
    let t = RecordTable::MUTABLE;
    let user = [7u8; 32];
    // version-ordered records: first byte is the version
    let newer = |cur: Option<&[u8]>, new: &[u8]| match cur {
        None => true,
        Some(c) => new.first() > c.first(),
    };
    assert_eq!(s.record_get(t, &user).expect("get"), None);
    assert_eq!(
        s.record_update(t, &user, &[1, 0xaa], newer).expect("cas"),
        RecordUpdate::Stored
    );
    assert_eq!(
        s.record_update(t, &user, &[3, 0xcc], newer).expect("cas"),
        RecordUpdate::Stored
    );
    assert_eq!(
        s.record_update(t, &user, &[2, 0xbb], newer).expect("cas"),
        RecordUpdate::Rejected {
            current: Some(vec![3, 0xcc])
        }
    );
    assert_eq!(s.record_get(t, &user).expect("get"), Some(vec![3, 0xcc]));
    // tables are separate namespaces, created on first write
    let other = RecordTable::new("daemon_test");
    assert_eq!(s.record_get(other, &user).expect("get"), None);
    assert_eq!(s.record_list(other, None, 10).expect("list"), vec![]);
    s.record_put(other, &user, b"x").expect("put");
    s.record_put(other, &[1u8; 32], b"y").expect("put");
    assert_eq!(
        s.record_list(other, None, 10).expect("list"),
        vec![([1u8; 32], b"y".to_vec()), (user, b"x".to_vec())]
    );
    assert_eq!(
        s.record_list(other, Some(&[1u8; 32]), 10).expect("list"),
        vec![(user, b"x".to_vec())]
    );
    assert!(s.record_delete(other, &user).expect("del"));
    assert!(!s.record_delete(other, &user).expect("del"));
    assert_eq!(s.record_get(t, &user).expect("get"), Some(vec![3, 0xcc]));

    // concurrent CAS increments: none lost
    let s = Arc::new(s);
    let ctr = [9u8; 32];
    s.record_put(t, &ctr, &0u32.to_le_bytes()).expect("put");
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    loop {
                        let cur = s.record_get(t, &ctr).expect("get").expect("set");
                        let v = u32::from_le_bytes(cur[..4].try_into().expect("4 bytes"));
                        let next = (v + 1).to_le_bytes();
                        let r = s
                            .record_update(t, &ctr, &next, |c, _| c == Some(&cur[..]))
                            .expect("cas");
                        if r == RecordUpdate::Stored {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
    assert_eq!(
        s.record_get(t, &ctr).expect("get"),
        Some(100u32.to_le_bytes().to_vec())
    );
    drop(s);
    // records survive a restart
    let s = open(dir.path(), 1000);
    assert_eq!(s.record_get(t, &user).expect("get"), Some(vec![3, 0xcc]));
}

#[test]
fn racing_puts_deletes_gets_keep_accounting_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..12).map(|i| block(500 + i, 1000 + i as usize)).collect();
    let cap = 8 * 1011;
    let s = Arc::new(open(dir.path(), cap));
    let blocks = Arc::new(blocks);
    let hs: Vec<_> = (0..6u64)
        .map(|t| {
            let s = Arc::clone(&s);
            let blocks = Arc::clone(&blocks);
            std::thread::spawn(move || {
                // a fixed per-thread walk over the same few keys
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..60 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (k, b) = &blocks[(x % 12) as usize];
                    match (x >> 8) % 3 {
                        0 => match s.put(*k, b, Role::Replica) {
                            Ok(_) | Err(StoreError::Full { .. }) => {}
                            Err(e) => panic!("put: {e}"),
                        },
                        1 => {
                            s.delete(k).expect("delete");
                        }
                        _ => {
                            if let Some(got) = s.get(k).expect("get never fails here") {
                                assert_eq!(&got, b);
                            }
                        }
                    }
                    assert!(s.used_bytes() <= cap);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().expect("thread");
    }
    // the counters, the index and the files agree
    let listed = s
        .list_range_meta(&BlockKey::ZERO, &BlockKey::ZERO, None)
        .expect("list")
        .entries;
    let indexed_bytes: u64 = listed.iter().map(|(_, m)| m.size).sum();
    assert_eq!(s.used_bytes(), indexed_bytes);
    assert_eq!(s.block_count(), listed.len() as u64);
    let disk = on_disk(dir.path());
    assert_eq!(disk.len(), listed.len());
    assert_eq!(s.stats().reserved_bytes, 0);
    for (k, b) in blocks.iter() {
        let held = listed.iter().any(|(l, _)| l == k);
        assert_eq!(disk.contains(k), held);
        assert_eq!(s.get(k).expect("get").as_ref(), held.then_some(b));
    }
}

/// How many of a batch's results are `Stored` and how many `Full`.
fn stored_and_full(r: &[Result<PutOutcome, StoreError>]) -> (usize, usize) {
    let stored = r
        .iter()
        .filter(|x| matches!(x, Ok(PutOutcome::Stored)))
        .count();
    let full = r
        .iter()
        .filter(|x| matches!(x, Err(StoreError::Full { .. })))
        .count();
    (stored, full)
}

#[test]
fn put_many_reports_each_block_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 10 * 1000);
    let mut batch: Vec<(BlockKey, Vec<u8>)> = (0..12).map(|i| block(700 + i, 1000)).collect();
    s.put(batch[0].0, &batch[0].1, Role::Owner).expect("put");
    batch[1].1[0] ^= 1; // no longer matches its key
    let r = s.put_many(&batch, Role::Replica);
    assert_eq!(r.len(), 12);
    assert!(matches!(r[0], Ok(PutOutcome::AlreadyPresent)));
    assert!(matches!(r[1], Err(StoreError::HashMismatch { .. })));
    assert_eq!(stored_and_full(&r), (9, 1), "capacity holds 10 blocks");
    assert_eq!(s.used_bytes(), 10 * 1000);
    for ((k, b), res) in batch.iter().zip(&r).skip(2) {
        assert_eq!(s.has(k).expect("has"), res.is_ok());
        if res.is_ok() {
            assert_eq!(s.get(k).expect("get").as_ref(), Some(b));
        }
    }
    assert!(s.put_many::<Vec<u8>>(&[], Role::Owner).is_empty());
}

/// A batch is stored with one index commit, answers each block as a put would (in input
/// order, a key given twice stored once), and everything it stored reads back after a reopen.
#[test]
fn put_batch_stores_with_one_commit_and_answers_each_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 9 * 1000);
    let mut blocks: Vec<(BlockKey, Vec<u8>)> = (0..12).map(|i| block(900 + i, 1000)).collect();
    s.put(blocks[0].0, &blocks[0].1, Role::Owner).expect("put");
    blocks[1].1[0] ^= 1; // no longer matches its key
    blocks[11] = blocks[5].clone(); // the same block twice
    let slices: Vec<(BlockKey, &[u8])> = blocks.iter().map(|(k, b)| (*k, b.as_slice())).collect();
    let before = s.stats().index_commits;
    let r = s.put_batch(&slices, Role::Replica);
    assert_eq!(
        s.stats().index_commits - before,
        1,
        "one commit for the batch"
    );
    assert_eq!(r.len(), 12);
    assert!(matches!(r[0], Ok(PutOutcome::AlreadyPresent)));
    assert!(matches!(r[1], Err(StoreError::HashMismatch { .. })));
    // The repeated block answers as its first occurrence (which may be the one that found
    // the store full).
    match &r[5] {
        Ok(PutOutcome::Stored) => assert!(matches!(r[11], Ok(PutOutcome::AlreadyPresent))),
        Err(StoreError::Full { .. }) => assert!(r[11].is_err()),
        other => panic!("unexpected {other:?}"),
    }
    // Over the first occurrences (the repeat answers as its first; r[0] and r[1] are neither).
    assert_eq!(
        stored_and_full(&r[..11]),
        (8, 1),
        "capacity holds 9 distinct blocks"
    );
    assert_eq!(s.used_bytes(), 9 * 1000);
    drop(s);
    let s = open(dir.path(), 9 * 1000);
    for ((k, b), res) in blocks.iter().zip(&r).skip(2) {
        assert_eq!(s.has(k).expect("has"), res.is_ok(), "{k}");
        if res.is_ok() {
            assert_eq!(s.get(k).expect("get").as_ref(), Some(b));
        }
    }
    assert!(s.put_batch(&[], Role::Owner).is_empty());
}

/// How long a block has been held counts from its arrival (for the minimum age of verified
/// deletions), is never more than the truth, and starts again after a reopen (arrivals are
/// kept in memory only) and after a delete and a new put.
#[test]
fn blocks_count_their_age_from_arrival() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let opened = Instant::now();
    let s = open(dir.path(), 1 << 20);
    let (k, data) = block(31_000, 1000);
    std::thread::sleep(Duration::from_millis(50));
    let before_put = Instant::now();
    s.put(k, &data, Role::Owner).unwrap();
    assert!(s.held_for(&k) <= before_put.elapsed());
    std::thread::sleep(Duration::from_millis(50));
    let age = s.held_for(&k);
    assert!(age >= Duration::from_millis(50) && age <= before_put.elapsed());
    // Storing it again is not a new arrival.
    assert_eq!(
        s.put(k, &data, Role::Owner).unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert!(s.held_for(&k) >= Duration::from_millis(50));
    // Deleted and received again: young again.
    assert!(s.delete(&k).unwrap());
    s.put(k, &data, Role::Owner).unwrap();
    assert!(s.held_for(&k) < Duration::from_millis(50));
    // A key never stored counts from the open.
    let (other, _) = block(31_001, 10);
    assert!(s.held_for(&other) <= opened.elapsed());
    assert!(s.held_for(&other) >= Duration::from_millis(100));
    // Reopened: every block counts from the new open.
    drop(s);
    std::thread::sleep(Duration::from_millis(20));
    let reopened = Instant::now();
    let s = open(dir.path(), 1 << 20);
    assert!(s.has(&k).unwrap());
    assert!(s.held_for(&k) <= reopened.elapsed());
}

/// A batch of record updates is one transaction: later items see earlier ones, `None` leaves a
/// record alone, and a batch that does not fit the capacity stores nothing.
#[test]
fn record_batches_are_atomic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), 4000);
    let t = RecordTable::new("batch_test");
    s.record_put(t, &[1; 32], b"old").expect("put");
    let keys = [[1u8; 32], [2; 32], [2; 32], [3; 32]];
    let written = s
        .record_update_many(t, &keys, |i, cur| match (i, cur) {
            (0, Some(_)) => None,
            (1, None) => Some(b"first".to_vec()),
            (2, Some(c)) => Some([c, b"+second"].concat()),
            (3, None) => Some(b"third".to_vec()),
            other => panic!("unexpected {other:?}"),
        })
        .expect("batch");
    assert_eq!(written, 3);
    assert_eq!(s.record_get(t, &[1; 32]).unwrap(), Some(b"old".to_vec()));
    assert_eq!(
        s.record_get(t, &[2; 32]).unwrap(),
        Some(b"first+second".to_vec())
    );
    assert_eq!(s.record_get(t, &[3; 32]).unwrap(), Some(b"third".to_vec()));
    // Too big for what is left: nothing of the batch is stored.
    let big = [[4u8; 32], [5; 32]];
    let r = s.record_update_many(t, &big, |_, _| Some(vec![0u8; 3000]));
    assert!(matches!(r, Err(StoreError::Full { .. })), "{r:?}");
    assert_eq!(s.record_get(t, &[4; 32]).unwrap(), None);
    assert_eq!(s.record_get(t, &[5; 32]).unwrap(), None);
}
