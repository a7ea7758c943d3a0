//! Block store: corruption on disk, quarantine, and reconciliation on restart.

use std::fs;
use std::path::Path;

use peerstore_node::store::{BlockKey, BlockStore, PutOutcome, Role, StoreConfig, StoreError};

fn block(seed: u64, len: usize) -> (BlockKey, Vec<u8>) {
    let data = peerstore_node::testing::block(seed, len);
    (BlockKey::of(&data), data)
}

fn open_with(
    dir: &Path,
    capacity: u64,
    verify: bool,
) -> (BlockStore, peerstore_node::store::OpenReport) {
    let mut c = StoreConfig::new(dir, capacity);
    c.verify_on_open = verify;
    BlockStore::open(c).expect("open store")
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = fs::read(path).expect("read block file");
    b[at] ^= 0x01;
    fs::write(path, b).expect("write block file");
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
    let path = s.block_path(&k);
    flip_byte(&path, 1234);

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
    assert!(!path.exists());
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.get(&k).expect("get"), None, "now simply not held");
    assert!(!whole(&s).contains(&k));
    assert_eq!(s.used_bytes(), 10_000);
    assert_eq!(s.block_count(), 2);
    assert_eq!(s.stats().quarantined_since_open, 1);
    assert_eq!(quarantined(&s), vec![k.to_hex()]);

    // truncation is corruption too; a vanished file is reported as missing
    fs::write(s.block_path(&k2), &b2[..100]).expect("truncate");
    assert!(matches!(s.get(&k2), Err(StoreError::Corrupt { key, .. }) if key == k2));
    fs::remove_file(s.block_path(&k3)).expect("rm");
    let err = s.get(&k3).expect_err("missing");
    assert!(matches!(err, StoreError::Missing { key } if key == k3));
    assert_eq!(err.needs_repair(), Some(k3));
    assert_eq!(s.block_count(), 0);
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.index_len().expect("len"), 0);

    // repair: the block can be stored again, and a second corruption of the same key gets its
    // own quarantine name
    assert_eq!(s.put(k, &b, Role::Owner).expect("put"), PutOutcome::Stored);
    assert_eq!(s.get(&k).expect("get"), Some(b.clone()));
    flip_byte(&s.block_path(&k), 0);
    assert!(s.get(&k).is_err());
    assert_eq!(quarantined(&s).len(), 3);
    // re-sending a block repairs a silently damaged copy
    assert_eq!(s.put(k, &b, Role::Owner).expect("put"), PutOutcome::Stored);
    flip_byte(&s.block_path(&k), 4999);
    assert_eq!(
        s.put(k, &b, Role::Owner).expect("put"),
        PutOutcome::Rewritten
    );
    assert_eq!(fs::read(s.block_path(&k)).expect("file"), b);
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
    flip_byte(&s.block_path(&blocks[7].0), 10);
    fs::remove_file(s.block_path(&blocks[9].0)).expect("rm");
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
        let b2 = s.block_path(&blocks[2].0);
        // damage while the node is down
        drop(s);
        flip_byte(
            &dir.path()
                .join(format!("blocks/{}/{}", &corrupt_k.to_hex()[..2], corrupt_k)),
            5,
        );
        fs::remove_file(dir.path().join(format!(
            "blocks/{}/{}",
            &missing_k.to_hex()[..2],
            missing_k
        )))
        .expect("rm");
        fs::write(
            dir.path().join("tmp").join(format!("{}.tmp", blocks[5].0)),
            b"half a blo",
        )
        .expect("temp");
        // a crash between rename and index commit leaves a valid file the index lacks
        fs::write(
            dir.path()
                .join(format!("blocks/{}/{}", &orphan_k.to_hex()[..2], orphan_k)),
            &orphan_b,
        )
        .expect("orphan");
        bad_orphan_b[0] ^= 0xff;
        fs::write(
            dir.path().join(format!(
                "blocks/{}/{}",
                &bad_orphan_k.to_hex()[..2],
                bad_orphan_k
            )),
            &bad_orphan_b,
        )
        .expect("bad orphan");
        fs::write(dir.path().join("blocks/00/not-a-block"), b"?").expect("stray");
        assert!(!b2.exists());
    }
    let (s, report) = open_with(dir.path(), 1 << 20, true);
    let mut corrupt = report.corrupt.clone();
    corrupt.sort();
    let mut want_corrupt = vec![corrupt_k, bad_orphan_k];
    want_corrupt.sort();
    assert_eq!(corrupt, want_corrupt);
    assert_eq!(report.missing, vec![missing_k]);
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.orphans_indexed, 1);
    assert_eq!(report.strays_quarantined, 1);
    assert_eq!(report.blocks, 30 - 3 + 1);
    assert_eq!(
        report.verified, 29,
        "28 good blocks and the corrupt one were hashed"
    );
    let lost: u64 = [2usize, 3, 4]
        .iter()
        .map(|&i| blocks[i].1.len() as u64)
        .sum();
    assert_eq!(report.bytes, total - lost + 777);
    assert!(!report.over_capacity);
    assert_eq!(s.used_bytes(), report.bytes);
    assert_eq!(fs::read_dir(s.temp_dir()).expect("tmp").count(), 0);

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
    // roles survived: blocks 0,3,6,..,27 were owners, plus block 1; 3 was lost
    let rc = s.role_counts();
    assert_eq!(rc.owner_blocks, 10 + 1 - 1);
    assert_eq!(rc.replica_blocks, 28 - 10);
    let q = quarantined(&s);
    assert!(q.contains(&corrupt_k.to_hex()) && q.contains(&bad_orphan_k.to_hex()));
    assert!(q.iter().any(|n| n.starts_with("stray-")));

    // a clean restart finds nothing to fix
    drop(s);
    let (_s, report) = open_with(dir.path(), 1 << 20, true);
    assert_eq!(report.blocks, 28);
    assert!(report.corrupt.is_empty() && report.missing.is_empty());
    assert_eq!(
        report.orphans_indexed + report.temp_files_removed + report.strays_quarantined,
        0
    );
}

#[test]
fn open_without_verify_checks_sizes_then_verify_all_finds_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<_> = (0..10).map(|i| block(i, 1000)).collect();
    {
        let (s, _) = open_with(dir.path(), 1 << 20, false);
        for (k, b) in &blocks {
            s.put(*k, b, Role::Owner).expect("put");
        }
        flip_byte(&s.block_path(&blocks[0].0), 0); // same size: needs hashing to see
        fs::write(s.block_path(&blocks[1].0), b"short").expect("truncate");
    }
    let (s, report) = open_with(dir.path(), 5000, false);
    assert_eq!(report.verified, 0);
    assert_eq!(report.corrupt, vec![blocks[1].0]);
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
