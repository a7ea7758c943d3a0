//! Block store: corruption on disk, quarantine, reconciliation on restart, a lost index, and
//! the migration of a format-1 store (one file per block).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use peerstore_node::store::{
    record_header, records_on_disk, BlockKey, BlockStore, OpenReport, PutOutcome, Role,
    StoreConfig, StoreError, RECORD_ALIGN, RECORD_HEADER_LEN,
};

fn block(seed: u64, len: usize) -> (BlockKey, Vec<u8>) {
    let data = peerstore_testkit::block(seed, len);
    (BlockKey::of(&data), data)
}

fn open_with(dir: &Path, capacity: u64, verify: bool) -> (BlockStore, OpenReport) {
    let mut c = StoreConfig::new(dir, capacity);
    c.verify_on_open = verify;
    BlockStore::open(c).expect("open store")
}

/// Where `key`'s payload is on disk: (segment file, payload offset, length).
fn location(s: &BlockStore, key: &BlockKey) -> (std::path::PathBuf, u64, u64) {
    let r = s.block_location(key).expect("location").expect("held");
    (r.path, r.offset, r.len)
}

/// Flips one bit of byte `at` of the payload (negative: of the header, from its end).
fn flip_at(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).expect("write");
}

fn flip(s: &BlockStore, key: &BlockKey, at: u64) {
    let (path, off, _) = location(s, key);
    flip_at(&path, off + at);
}

/// Zeroes a record, header and payload: what a punched hole reads as.
fn wipe(s: &BlockStore, key: &BlockKey) {
    let (path, off, len) = location(s, key);
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    let zeros = vec![0u8; (len + RECORD_HEADER_LEN) as usize];
    f.write_all_at(&zeros, off - RECORD_HEADER_LEN)
        .expect("zero");
}

fn on_disk(dir: &Path) -> Vec<BlockKey> {
    records_on_disk(dir)
        .expect("scan")
        .into_iter()
        .map(|r| r.key)
        .collect()
}

fn whole(s: &BlockStore) -> Vec<BlockKey> {
    s.list_range(&BlockKey::ZERO, &BlockKey::ZERO, None)
        .expect("list")
        .keys
}

fn quarantined(s: &BlockStore) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.quarantine_dir())
        .expect("read quarantine")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn corrupt_block_is_never_served_and_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open_with(dir.path(), 1 << 20, true);
    let (k, b) = block(1, 5000);
    let (k2, b2) = block(2, 5000);
    let (k3, b3) = block(3, 5000);
    for (k, b) in [(k, &b), (k2, &b2), (k3, &b3)] {
        s.put(k, b, Role::Owner).expect("put");
    }
    flip(&s, &k, 1234);

    let err = s.get(&k).expect_err("corrupt block must not be served");
    assert_eq!(err.needs_repair(), Some(k));
    match &err {
        StoreError::Corrupt {
            key,
            quarantined_to,
            ..
        } => {
            assert_eq!(*key, k);
            assert!(quarantined_to.starts_with(s.quarantine_dir()));
            let mut bad = b.clone();
            bad[1234] ^= 1;
            assert_eq!(fs::read(quarantined_to).expect("quarantined file"), bad);
        }
        e => panic!("expected Corrupt, got {e:?}"),
    }
    assert!(
        err.to_string().contains("repair it from a replica"),
        "{err}"
    );
    // gone from the index and from the disk
    assert!(!on_disk(dir.path()).contains(&k));
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.get(&k).expect("get"), None, "now simply not held");
    assert!(!whole(&s).contains(&k));
    assert_eq!(s.used_bytes(), 10_000);
    assert_eq!(s.block_count(), 2);
    assert_eq!(s.stats().quarantined_since_open, 1);
    assert_eq!(quarantined(&s), vec![k.to_hex()]);

    // a damaged header alone does not matter (the payload is what is verified) ...
    let (p2, off2, _) = location(&s, &k2);
    flip_at(&p2, off2 - 30);
    assert_eq!(s.get(&k2).expect("get"), Some(b2.clone()));
    // ... header and payload both damaged is corruption; a wiped record is missing
    flip(&s, &k2, 0);
    assert!(matches!(s.get(&k2), Err(StoreError::Corrupt { key, .. }) if key == k2));
    wipe(&s, &k3);
    let err = s.get(&k3).expect_err("missing");
    assert!(matches!(err, StoreError::Missing { key } if key == k3));
    assert_eq!(err.needs_repair(), Some(k3));
    assert_eq!(s.block_count(), 0);
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.index_len().expect("len"), 0);
    assert!(on_disk(dir.path()).is_empty());

    // repair: the block can be stored again, and a second corruption of the same key gets its
    // own quarantine name
    assert_eq!(s.put(k, &b, Role::Owner).expect("put"), PutOutcome::Stored);
    assert_eq!(s.get(&k).expect("get"), Some(b.clone()));
    flip(&s, &k, 0);
    assert!(s.get(&k).is_err());
    assert_eq!(quarantined(&s).len(), 3);
    // re-sending a block repairs a silently damaged copy
    assert_eq!(s.put(k, &b, Role::Owner).expect("put"), PutOutcome::Stored);
    flip(&s, &k, 4999);
    assert_eq!(
        s.put(k, &b, Role::Owner).expect("put"),
        PutOutcome::Rewritten
    );
    assert_eq!(s.get(&k).expect("get"), Some(b.clone()));
    assert_eq!(on_disk(dir.path()), vec![k], "one record, the good one");
    assert_eq!((s.used_bytes(), s.block_count()), (5000, 1));
    assert_eq!(quarantined(&s).len(), 4);
    assert_eq!(s.purge_quarantine().expect("purge"), 4);
    assert!(quarantined(&s).is_empty());
}

#[test]
fn verify_all_finds_silent_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = open_with(dir.path(), 1 << 24, true);
    let blocks: Vec<_> = (0..40).map(|i| block(i, 3000)).collect();
    for (k, b) in &blocks {
        s.put(*k, b, Role::Replica).expect("put");
    }
    flip(&s, &blocks[7].0, 10);
    wipe(&s, &blocks[9].0);
    let r = s.verify_all().expect("verify");
    assert_eq!(r.checked, 40);
    assert_eq!(r.bytes_checked, 38 * 3000);
    assert_eq!(r.corrupt, vec![blocks[7].0]);
    assert_eq!(r.missing, vec![blocks[9].0]);
    assert_eq!(s.block_count(), 38);
    let again = s.verify_all().expect("verify");
    assert_eq!(
        (again.checked, again.corrupt.len(), again.missing.len()),
        (38, 0, 0)
    );
}

/// Appends a record by hand at the next aligned offset of the segment file, as a put that
/// crashed after its write (and sync) but before its index commit would leave it.
fn append_raw(path: &Path, key: &BlockKey, payload: &[u8], claimed_len: u32) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let end = f.metadata().expect("stat").len().div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    f.write_all_at(&record_header(key, claimed_len), end)
        .expect("header");
    f.write_all_at(payload, end + RECORD_HEADER_LEN)
        .expect("payload");
}

#[test]
fn restart_keeps_blocks_and_reconciles_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..30).map(|i| block(i, 2000 + i as usize)).collect();
    let total: u64 = blocks.iter().map(|(_, b)| b.len() as u64).sum();
    let (corrupt_k, missing_k) = (blocks[3].0, blocks[4].0);
    let (orphan_k, orphan_b) = block(100, 777);
    let (bad_orphan_k, mut bad_orphan_b) = block(101, 888);
    {
        let (s, report) = open_with(dir.path(), 1 << 20, true);
        assert_eq!(report.blocks, 0);
        for (i, (k, b)) in blocks.iter().enumerate() {
            let role = if i % 3 == 0 {
                Role::Owner
            } else {
                Role::Replica
            };
            s.put(*k, b, role).expect("put");
        }
        assert!(s.set_role(&blocks[1].0, Role::Owner).expect("role"));
        assert!(s.delete(&blocks[2].0).expect("delete"));
        // damage while the node is down
        flip(&s, &corrupt_k, 5);
        wipe(&s, &missing_k);
        let (seg, _, _) = location(&s, &blocks[0].0);
        drop(s);
        // a crash between the segment sync and the index commit leaves a valid record the
        // index lacks; a torn one (its payload damaged) and a record cut short are garbage
        append_raw(&seg, &orphan_k, &orphan_b, orphan_b.len() as u32);
        bad_orphan_b[0] ^= 0xff;
        append_raw(&seg, &bad_orphan_k, &bad_orphan_b, 888);
        append_raw(&seg, &blocks[5].0, b"half a blo", 2005);
        fs::write(dir.path().join("segments/notes.txt"), b"?").expect("stray");
        let disk = on_disk(dir.path());
        assert!(disk.contains(&orphan_k) && disk.contains(&bad_orphan_k));
        assert!(
            !disk.contains(&blocks[2].0),
            "a delete punches its record out"
        );
    }
    let (s, report) = open_with(dir.path(), 1 << 20, true);
    assert_eq!(report.corrupt, vec![corrupt_k]);
    assert_eq!(report.missing, vec![missing_k]);
    assert_eq!(report.orphans_indexed, 1);
    assert_eq!(report.garbage_records_removed, 1, "the torn record");
    assert_eq!(report.strays_quarantined, 1);
    assert_eq!(report.blocks, 30 - 3 + 1);
    assert_eq!(
        report.verified, 30,
        "27 good blocks, the orphan, and the corrupt and missing ones were checked"
    );
    let lost: u64 = [2usize, 3, 4]
        .iter()
        .map(|&i| blocks[i].1.len() as u64)
        .sum();
    assert_eq!(report.bytes, total - lost + 777);
    assert!(!report.over_capacity);
    assert_eq!(s.used_bytes(), report.bytes);

    for (i, (k, b)) in blocks.iter().enumerate() {
        if [2, 3, 4].contains(&i) {
            assert_eq!(s.get(k).expect("get"), None, "block {i}");
        } else {
            assert_eq!(s.get(k).expect("get").as_ref(), Some(b), "block {i}");
        }
    }
    assert_eq!(s.get(&orphan_k).expect("get"), Some(orphan_b));
    assert_eq!(
        s.meta(&orphan_k).expect("meta").map(|m| m.role),
        Some(Role::Replica)
    );
    assert_eq!(
        s.meta(&blocks[1].0).expect("meta").map(|m| m.role),
        Some(Role::Owner)
    );
    let listed = whole(&s);
    assert_eq!(listed.len(), 28);
    assert!(!listed.contains(&corrupt_k) && !listed.contains(&missing_k));
    // what is on disk is exactly what is held: garbage and damaged records are gone
    let mut disk = on_disk(dir.path());
    disk.sort();
    assert_eq!(disk, listed);
    // roles survived: blocks 0,3,6,..,27 were owners, plus block 1; 3 was lost
    let rc = s.role_counts();
    assert_eq!(rc.owner_blocks, 10 + 1 - 1);
    assert_eq!(rc.replica_blocks, 28 - 10);
    let q = quarantined(&s);
    assert!(q.contains(&corrupt_k.to_hex()));
    assert!(q.iter().any(|n| n.starts_with("stray-")));

    // a clean restart finds nothing to fix
    drop(s);
    let (_s, report) = open_with(dir.path(), 1 << 20, true);
    assert_eq!(report.blocks, 28);
    assert!(report.corrupt.is_empty() && report.missing.is_empty());
    assert_eq!(
        report.orphans_indexed + report.garbage_records_removed + report.strays_quarantined,
        0
    );
}

#[test]
fn open_without_verify_checks_bounds_then_verify_all_finds_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..10).map(|i| block(i, 1000)).collect();
    {
        let (s, _) = open_with(dir.path(), 1 << 20, false);
        for (k, b) in &blocks {
            s.put(*k, b, Role::Owner).expect("put");
        }
        flip(&s, &blocks[0].0, 0); // needs hashing to see
                                   // the segment cut short inside the last record
        let (seg, off, _) = location(&s, &blocks[9].0);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(off + 10)
            .expect("truncate");
    }
    let (s, report) = open_with(dir.path(), 5000, false);
    assert_eq!(report.verified, 0);
    assert_eq!(report.missing, vec![blocks[9].0]);
    assert_eq!(report.blocks, 9);
    assert!(
        report.over_capacity,
        "9000 bytes held, capacity lowered to 5000"
    );
    let (k, b) = block(50, 10);
    assert!(matches!(
        s.put(k, &b, Role::Owner),
        Err(StoreError::Full { free: 0, .. })
    ));
    let v = s.verify_all().expect("verify");
    assert_eq!(v.corrupt, vec![blocks[0].0]);
    assert_eq!(s.block_count(), 8);
}

#[test]
fn a_lost_index_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..50).map(|i| block(200 + i, 3000 + i as usize)).collect();
    {
        let (s, _) = open_with(dir.path(), 1 << 24, true);
        for (k, b) in &blocks {
            s.put(*k, b, Role::Owner).expect("put");
        }
        s.delete(&blocks[0].0).expect("delete");
    }
    fs::remove_file(dir.path().join("index.redb")).expect("rm index");
    let (s, report) = open_with(dir.path(), 1 << 24, true);
    assert_eq!(report.orphans_indexed, 49);
    assert_eq!(report.blocks, 49);
    for (k, b) in &blocks[1..] {
        assert_eq!(s.get(k).expect("get").as_ref(), Some(b));
        // the role is not in the record: anti-entropy sets it again
        assert_eq!(
            s.meta(k).expect("meta").map(|m| m.role),
            Some(Role::Replica)
        );
    }
    assert_eq!(s.get(&blocks[0].0).expect("get"), None);
}

#[test]
fn segments_roll_over_and_empty_ones_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = StoreConfig::new(dir.path(), 1 << 24);
    c.segment_bytes = 64 << 10;
    let (s, _) = BlockStore::open(c.clone()).expect("open");
    let blocks: Vec<_> = (0..40).map(|i| block(300 + i, 10_000)).collect();
    for (k, b) in &blocks {
        s.put(*k, b, Role::Owner).expect("put");
    }
    // 10,000-byte records take 12 KiB: 5 fit in 64 KiB, so 8 segments
    assert_eq!(s.segment_count(), 8);
    let disk_before = s.disk_bytes();
    assert!(disk_before >= 40 * 10_000, "{disk_before}");
    // emptying the first three segments removes their files; the punched space is free
    for (k, _) in &blocks[..15] {
        assert!(s.delete(k).expect("delete"));
    }
    assert_eq!(s.segment_count(), 5);
    assert!(
        s.disk_bytes() <= disk_before - 15 * 10_000,
        "{}",
        s.disk_bytes()
    );
    // deleting one record of a segment frees its space at once (a hole), the file stays. The
    // hole is the record's 12 KiB; splitting the file's extent around it may cost the
    // filesystem one block of its own (ext4 allocates an extent-tree block once a file's
    // extents outgrow the inode, as group commits can leave them), so at least 8 KiB come back.
    let before = s.disk_bytes();
    assert!(s.delete(&blocks[20].0).expect("delete"));
    assert_eq!(s.segment_count(), 5);
    assert!(
        s.disk_bytes() <= before - (12 << 10) + 4096,
        "{} vs {before}",
        s.disk_bytes()
    );
    drop(s);
    let (s, report) = BlockStore::open(c).expect("reopen");
    assert_eq!(report.blocks, 24);
    assert_eq!(report.garbage_records_removed, 0);
    for (i, (k, b)) in blocks.iter().enumerate() {
        let held = i >= 15 && i != 20;
        assert_eq!(
            s.get(k).expect("get").as_ref(),
            held.then_some(b),
            "block {i}"
        );
    }
}

#[test]
fn a_format_1_store_is_migrated_into_segments() {
    use redb::{Database, TableDefinition};
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const OLD: TableDefinition<&[u8; 32], (u64, u8)> = TableDefinition::new("blocks");
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..20).map(|i| block(400 + i, 1000 + i as usize)).collect();
    // A store as format 1 wrote it: an index of (size, role) and one file per block.
    {
        let db = Database::create(dir.path().join("index.redb")).expect("db");
        let tx = db.begin_write().expect("tx");
        {
            let mut m = tx.open_table(META).expect("meta");
            m.insert("format", [1u8].as_slice()).expect("format");
            let mut t = tx.open_table(OLD).expect("blocks");
            for (i, (k, b)) in blocks.iter().enumerate() {
                if i == 19 {
                    continue; // a file the index lost
                }
                t.insert(&k.0, (b.len() as u64, u8::from(i % 2 == 1)))
                    .expect("insert");
            }
            let (gone, _) = block(999, 10);
            t.insert(&gone.0, (10, 0)).expect("insert"); // indexed, no file
        }
        tx.commit().expect("commit");
        for (i, (k, b)) in blocks.iter().enumerate() {
            let hex = k.to_hex();
            let d = dir.path().join("blocks").join(&hex[..2]);
            fs::create_dir_all(&d).expect("mkdir");
            let mut bytes = b.clone();
            if i == 7 {
                bytes[3] ^= 1; // rotted on disk
            }
            fs::write(d.join(&hex), bytes).expect("write");
        }
        fs::create_dir_all(dir.path().join("tmp")).expect("tmp");
        fs::write(dir.path().join("blocks/00-notes.txt"), b"?").expect("stray");
    }
    let (s, report) = open_with(dir.path(), 1 << 20, true);
    assert_eq!(report.migrated, 19);
    assert_eq!(report.corrupt, vec![blocks[7].0]);
    assert_eq!(report.missing, vec![block(999, 10).0]);
    assert_eq!(report.blocks, 19);
    assert!(!dir.path().join("blocks").exists() && !dir.path().join("tmp").exists());
    // an unknown file is not removed with the old directory: it is kept in quarantine
    assert_eq!(report.strays_quarantined, 1);
    assert!(s.quarantine_dir().join("stray-00-notes.txt").exists());
    for (i, (k, b)) in blocks.iter().enumerate() {
        if i == 7 {
            assert_eq!(s.get(k).expect("get"), None);
            continue;
        }
        assert_eq!(s.get(k).expect("get").as_ref(), Some(b), "block {i}");
        let role = if i % 2 == 1 && i != 19 {
            Role::Replica
        } else {
            Role::Owner
        };
        let want = if i == 19 { Role::Replica } else { role };
        assert_eq!(
            s.meta(k).expect("meta").map(|m| m.role),
            Some(want),
            "block {i}"
        );
    }
    drop(s);
    // old files left behind by a migration that committed but stopped before removing them
    let (k0, b0) = &blocks[0];
    let old = dir.path().join("blocks").join(&k0.to_hex()[..2]);
    fs::create_dir_all(&old).expect("mkdir");
    fs::write(old.join(k0.to_hex()), b0).expect("write");
    let (_s, report) = open_with(dir.path(), 1 << 20, true);
    assert_eq!((report.blocks, report.migrated), (19, 0));
    assert!(!dir.path().join("blocks").exists());
}
