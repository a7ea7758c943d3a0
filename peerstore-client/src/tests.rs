//! In-process tests of backup, restore, path safety and sync over the in-memory store.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use crypto::Identity;
use peerstore_proto::BlockKey;
use rand::{RngCore, SeedableRng};

use crate::backup::{backup, mtime_ns, BackupOptions, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use crate::cache::KnownBlocks;
use crate::model::{ChunkRef, Entry, EntryKind, Manifest, Owner, MANIFEST_VERSION};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{
    check_manifest, restore_entry, restore_entry_with, restore_tree, restore_tree_with,
    restored_mode, running_as_root, RestoreOptions,
};
use crate::store::{BlockStoreApi, MemStore};
use crate::sync::{sync_once, SyncOptions, SyncState};

fn repo_with(store: &MemStore, seed: u64) -> Repo {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Repo::new(
        Arc::new(store.clone()),
        Arc::new(Identity::generate(&mut rng)),
    )
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// A small tree with the interesting shapes.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty dir")).unwrap();
    fs::create_dir_all(root.join("ünï cødé")).unwrap();
    fs::write(root.join("zero"), b"").unwrap();
    fs::write(root.join("one"), b"1").unwrap();
    let sizes = [
        CHUNK_MIN as usize - 1,
        CHUNK_MIN as usize + 1,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize + 1,
        5 << 20,
    ];
    for (i, n) in sizes.iter().enumerate() {
        fs::write(
            root.join(format!("a/b/size {n}")),
            random_bytes(i as u64, *n),
        )
        .unwrap();
    }
    fs::write(root.join("ünï cødé/file with spaces.txt"), b"hello unicode").unwrap();
    fs::write(root.join("a/b/c/exec.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("a/b/c/exec.sh"),
        fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    set_mtime(&root.join("one"), 1_000_000_000);
    std::os::unix::fs::symlink("a/b/c/exec.sh", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", root.join("dangling")).unwrap();
}

/// Compares two trees: content, kind, mode, mtime (files and dirs), symlink targets.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut ea: Vec<_> = walk(a);
    let mut eb: Vec<_> = walk(b);
    ea.sort();
    eb.sort();
    assert_eq!(
        ea.iter().map(|x| &x.0).collect::<Vec<_>>(),
        eb.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((rel, _), _) in ea.iter().zip(eb.iter()) {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{rel}");
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&pa).unwrap(), fs::read_link(&pb).unwrap());
            continue;
        }
        assert_eq!(
            ma.permissions().mode() & 0o7777,
            mb.permissions().mode() & 0o7777,
            "mode of {rel}"
        );
        assert_eq!(mtime_ns(&ma), mtime_ns(&mb), "mtime of {rel}");
        if ma.is_file() {
            assert!(fs::read(&pa).unwrap() == fs::read(&pb).unwrap(), "{rel}");
        }
    }
}

fn walk(root: &Path) -> Vec<(String, ())> {
    let mut out = Vec::new();
    fn rec(root: &Path, dir: &Path, out: &mut Vec<(String, ())>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            out.push((rel, ()));
            if e.file_type().unwrap().is_dir() {
                rec(root, &p, out);
            }
        }
    }
    rec(root, root, &mut out);
    out
}

fn hidden() -> Arc<Progress> {
    Arc::new(Progress::hidden())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_round_trip_with_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = MemStore::new();
    let repo = repo_with(&store, 1);
    let known = Arc::new(KnownBlocks::in_memory());
    let (s, m, snap) = backup_default(&repo, known.clone(), &src, None)
        .await
        .unwrap();
    assert!(snap.is_some());
    assert_eq!(s.files, 9);
    assert_eq!(s.symlinks, 2);
    assert_eq!(s.dirs, 5);
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.chunks_uploaded, s.chunks - s.chunks_deduplicated);
    // Every chunk but a file's last is between min and max.
    for e in &m.entries {
        if let EntryKind::File { chunks, .. } = &e.kind {
            for c in chunks.iter().rev().skip(1) {
                assert!(c.len >= CHUNK_MIN && c.len <= CHUNK_MAX, "{}", c.len);
            }
        }
    }
    // The latest snapshot's manifest is what we built.
    let latest = repo.latest().await.unwrap().unwrap();
    assert_eq!(repo.load_manifest(&latest).await.unwrap(), m);

    let dest = tmp.path().join("dest");
    let r = restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_eq!(r.files, 9);
    // Each directory fsynced once: the 5 of the tree, dest, and dest's parent (dest was new).
    assert_eq!(r.dirs_synced, 5 + 2);
    assert_eq!(r.setid_dropped, 0);
    assert_same_tree(&src, &dest);
    // No temp files left behind.
    assert!(walk(&dest).iter().all(|(p, _)| !p.contains(".peerstore-")));

    // getfile of one file, and of a directory.
    let e = m
        .find(&["a".into(), "b".into(), "size 262143".into()])
        .unwrap();
    let one = tmp.path().join("one-file");
    restore_entry(&repo, &m, e, &one, &hidden()).await.unwrap();
    assert_eq!(
        fs::read(&one).unwrap(),
        fs::read(src.join("a/b/size 262143")).unwrap()
    );
    let d = m.find(&["a".into()]).unwrap();
    restore_entry(&repo, &m, d, &tmp.path().join("just-a"), &hidden())
        .await
        .unwrap();
    assert_same_tree(&src.join("a"), &tmp.path().join("just-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_sends_only_changes_and_no_plaintext_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let marker = b"PEERSTORE-MARKER-7f3a9c";
    let mut big = random_bytes(9, 24 << 20);
    for i in 0..20 {
        let at = i * (1 << 20) + 17;
        big[at..at + marker.len()].copy_from_slice(marker);
    }
    fs::write(src.join("big"), &big).unwrap();
    fs::write(
        src.join("note.txt"),
        [&marker[..], b" in a small file"].concat(),
    )
    .unwrap();
    let store = MemStore::new();
    let repo = repo_with(&store, 2);
    let known = Arc::new(KnownBlocks::in_memory());
    let opts = BackupOptions::default();
    let (s1, m1, _) = backup(&repo, known.clone(), &src, None, &opts, &hidden())
        .await
        .unwrap();
    assert!(s1.chunks_uploaded >= 8, "{s1:?}");
    for b in store.all_blocks() {
        assert!(
            !b.windows(marker.len()).any(|w| w == marker),
            "plaintext marker found in a stored block"
        );
    }
    // Unchanged: nothing read, nothing sent.
    let (s2, _, _) = backup(&repo, known.clone(), &src, Some(&m1), &opts, &hidden())
        .await
        .unwrap();
    assert_eq!((s2.files_read, s2.chunks_uploaded), (0, 0), "{s2:?}");
    // One byte in the middle changes: at most 2 chunks go up.
    big[12 << 20] ^= 0xff;
    fs::write(src.join("big"), &big).unwrap();
    let (s3, m3, _) = backup(&repo, known.clone(), &src, Some(&m1), &opts, &hidden())
        .await
        .unwrap();
    assert_eq!(s3.files_read, 1);
    assert!(
        (1..=2).contains(&s3.chunks_uploaded),
        "uploaded {} chunks",
        s3.chunks_uploaded
    );
    let dest = tmp.path().join("dest");
    restore_tree(&repo, &m3, &dest, &hidden()).await.unwrap();
    assert!(fs::read(dest.join("big")).unwrap() == big);
    assert_eq!(repo.snapshots().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), b"top secret").unwrap();
    let store = MemStore::new();
    let alice = repo_with(&store, 3);
    let bob = repo_with(&store, 4);
    let known = Arc::new(KnownBlocks::in_memory());
    let (_, _, snap) = backup_default(&alice, known, &src, None).await.unwrap();
    let snap = snap.unwrap();
    assert!(matches!(
        bob.latest().await,
        Ok(None) | Err(crate::ClientError::NoBackup)
    ));
    // Even given the key of Alice's snapshot object, Bob cannot open it.
    assert!(matches!(
        bob.load_snapshot(snap.key, snap.snapshot.number, "the root")
            .await,
        Err(crate::ClientError::Untrusted(_))
    ));
    // A damaged block is detected, not restored.
    let m = alice.load_manifest(&snap).await.unwrap();
    let EntryKind::File { chunks, .. } = &m.entries[0].kind else {
        panic!("not a file")
    };
    let key = peerstore_proto::BlockKey(chunks[0].pack);
    let mut data = store.get_document(key).await.unwrap().unwrap();
    let at = chunks[0].offset as usize + 30;
    data[at] ^= 1;
    store.tamper(key, data);
    let dest = tmp.path().join("dest");
    assert!(restore_tree(&alice, &m, &dest, &hidden()).await.is_err());
    assert!(!dest.join("secret").exists(), "a damaged file was written");
}

fn entry(path: &[&str], kind: EntryKind) -> Entry {
    Entry {
        path: path.iter().map(|s| s.to_string()).collect(),
        kind,
        mode: 0o644,
        mtime_ns: 0,
        owner: None,
    }
}

fn empty_file() -> EntryKind {
    EntryKind::File {
        size: 0,
        chunks: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_manifests_cannot_write_outside_dest() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let store = MemStore::new();
    let repo = repo_with(&store, 5);
    let dest = tmp.path().join("dest");
    let link = |t: &str| EntryKind::Symlink {
        target: t.to_string(),
    };
    let outside_s = outside.to_string_lossy().to_string();
    let hostile = vec![
        vec![entry(&["..", "outside", "pwned"], empty_file())],
        vec![entry(&["a", "..", "..", "pwned"], empty_file())],
        vec![entry(&[&format!("{outside_s}/pwned")], empty_file())],
        vec![entry(&["/", "pwned"], empty_file())],
        vec![entry(&[""], empty_file())],
        vec![entry(&["."], empty_file())],
        vec![entry(&["nul\0"], empty_file())],
        vec![entry(&[], empty_file())],
        // A symlink to the outside, then a file "through" it.
        vec![
            entry(&["esc"], link(&outside_s)),
            entry(&["esc", "pwned"], empty_file()),
        ],
        // The same file listed twice.
        vec![entry(&["x"], empty_file()), entry(&["x"], empty_file())],
    ];
    for entries in hostile {
        let m = Manifest {
            version: MANIFEST_VERSION,
            entries: entries.clone(),
        };
        assert!(check_manifest(&m).is_err(), "{entries:?} accepted");
        assert!(
            restore_tree(&repo, &m, &dest, &hidden()).await.is_err(),
            "{entries:?} restored"
        );
    }
    // A symlink planted in the destination beforehand is not followed either.
    fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("planted")).unwrap();
    let m = Manifest::new(vec![
        entry(&["planted"], EntryKind::Dir),
        entry(&["planted", "pwned"], empty_file()),
    ]);
    assert!(restore_tree(&repo, &m, &dest, &hidden()).await.is_err());
    // A symlink entry may point anywhere (it is only a link), and a file in its place is
    // replaced by the link rather than written through.
    let m = Manifest::new(vec![entry(&["planted"], link("/etc"))]);
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_eq!(
        fs::read_link(dest.join("planted")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
    assert!(!tmp.path().join("pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_publishes_changes_and_survives_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"first").unwrap();
    let store = MemStore::new();
    let repo = repo_with(&store, 6);
    let known = Arc::new(KnownBlocks::in_memory());
    let state_file = tmp.path().join("state");
    let opts = SyncOptions::default();
    let mut state = SyncState {
        source: fs::canonicalize(&src).unwrap().to_string_lossy().into(),
        ..SyncState::default()
    };
    let s = sync_once(&repo, &known, &src, &mut state, &state_file, &opts)
        .await
        .unwrap();
    assert_eq!(s.snapshot, Some(1));
    // Nothing changed: nothing published.
    let s = sync_once(&repo, &known, &src, &mut state, &state_file, &opts)
        .await
        .unwrap();
    assert_eq!(s.snapshot, None);
    // A change during an outage: the pass fails (transient), the state keeps the old tree.
    fs::write(src.join("b"), b"second").unwrap();
    fs::rename(src.join("a"), src.join("a2")).unwrap();
    store.set_fail_puts(true);
    let err = sync_once(&repo, &known, &src, &mut state, &state_file, &opts)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(SyncState::load(&state_file).unwrap().unwrap(), state);
    // The ring is back: the next pass publishes the rename and the new file.
    store.set_fail_puts(false);
    let mut reloaded = SyncState::load(&state_file).unwrap().unwrap();
    let s = sync_once(&repo, &known, &src, &mut reloaded, &state_file, &opts)
        .await
        .unwrap();
    assert_eq!(s.snapshot, Some(2));
    let m = repo
        .load_manifest(&repo.latest().await.unwrap().unwrap())
        .await
        .unwrap();
    let names: Vec<_> = m.entries.iter().map(Entry::display_path).collect();
    assert_eq!(names, ["a2", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_during_backup_is_never_recorded_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let va = vec![b'a'; 3 << 20];
    let vb = vec![b'b'; 5 << 20];
    let path = src.join("busy");
    fs::write(&path, &va).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path, va, vb) = (stop.clone(), path.clone(), va.clone(), vb.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(&path, if i % 2 == 0 { &vb } else { &va }).unwrap();
                i += 1;
            }
            i
        })
    };
    let store = MemStore::new();
    let repo = repo_with(&store, 7);
    let known = Arc::new(KnownBlocks::in_memory());
    let opts = BackupOptions {
        change_retries: 2,
        ..BackupOptions::default()
    };
    let mut outcomes = (0, 0);
    for _ in 0..5 {
        let (s, m, _) = backup(&repo, known.clone(), &src, None, &opts, &hidden())
            .await
            .unwrap();
        match m.find(&["busy".to_string()]) {
            Some(e) => {
                let out = tmp.path().join("out");
                restore_entry(&repo, &m, e, &out, &hidden()).await.unwrap();
                let got = fs::read(&out).unwrap();
                assert!(
                    got.is_empty() || got == va || got == vb,
                    "torn file recorded ({} bytes)",
                    got.len()
                );
                outcomes.0 += 1;
            }
            None => {
                assert_eq!(s.skipped.len(), 1, "{s:?}");
                assert!(s.skipped[0].contains("changed during backup"));
                outcomes.1 += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    println!(
        "recorded {} times, skipped {} times; {writes} rewrites",
        outcomes.0, outcomes.1
    );
}

/// Writes `n` files of `size` random bytes (one chunk each when below CHUNK_MIN).
fn make_files(dir: &Path, n: u64, size: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("f{i:04}")), random_bytes(seed + i, size)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_keeps_the_old_root_and_the_rerun_sends_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // 100 single-chunk files of 200,000 bytes: 20 sealed chunks fill a 4 MiB pack, so 5 packs.
    make_files(&src, 100, 200_000, 50);
    let store = MemStore::new();
    let repo = repo_with(&store, 8);
    let cache_path = tmp.path().join("known");
    let opts = BackupOptions {
        concurrency: 1,
        ..BackupOptions::default()
    };
    // A first snapshot of another tree.
    let known = Arc::new(KnownBlocks::open(&cache_path).unwrap());
    fs::create_dir_all(tmp.path().join("small")).unwrap();
    fs::write(tmp.path().join("small/x"), b"x").unwrap();
    backup(
        &repo,
        known,
        &tmp.path().join("small"),
        None,
        &opts,
        &hidden(),
    )
    .await
    .unwrap();
    let root_before = repo.read_root().await.unwrap().unwrap();
    // The ring goes away after 2 more puts (2 packs): the backup fails, the root is untouched.
    store.fail_after(Some(2));
    let known = Arc::new(KnownBlocks::open(&cache_path).unwrap());
    let err = backup(&repo, known, &src, None, &opts, &hidden())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(repo.read_root().await.unwrap().unwrap(), root_before);
    // The rerun (a new process: the cache is reloaded from disk) sends only the 60 chunks of
    // the 3 packs that did not make it.
    store.fail_after(None);
    let known = Arc::new(KnownBlocks::open(&cache_path).unwrap());
    assert_eq!(known.len(), 1 + 40);
    let (s, m, _) = backup(&repo, known, &src, None, &opts, &hidden())
        .await
        .unwrap();
    assert_eq!(
        (
            s.chunks,
            s.chunks_uploaded,
            s.chunks_deduplicated,
            s.packs_uploaded
        ),
        (100, 60, 40, 3),
        "{s:?}"
    );
    assert_eq!(
        s.bytes_uploaded,
        60 * (200_000 + crypto::CHUNK_OVERHEAD as u64)
    );
    let dest = tmp.path().join("dest");
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_same_tree(&src, &dest);
}

/// Sizes 1..=64 KiB, deterministic.
fn small_sizes(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| 1 + (rng.next_u32() as usize % (64 * 1024)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_go_up_in_a_handful_of_packs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let sizes = small_sizes(1000, 77);
    for (i, n) in sizes.iter().enumerate() {
        let dir = src.join(format!("d{}", i % 7)).join(format!("e{}", i % 3));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), random_bytes(1000 + i as u64, *n)).unwrap();
    }
    let store = MemStore::new();
    let repo = repo_with(&store, 11);
    let known = Arc::new(KnownBlocks::in_memory());
    let opts = BackupOptions::default();
    let (s, m, _) = backup(&repo, known.clone(), &src, None, &opts, &hidden())
        .await
        .unwrap();
    let sealed: u64 = sizes
        .iter()
        .map(|n| (n + crypto::CHUNK_OVERHEAD) as u64)
        .sum();
    let pack = crate::backup::PACK_TARGET as u64;
    // Full packs are filled to within one chunk (< 64 KiB + 41) of the target.
    let most = sealed.div_ceil(pack - 64 * 1024 - 41);
    println!(
        "{} files, {sealed} sealed bytes in {} packs",
        s.files, s.packs_uploaded
    );
    assert_eq!((s.files, s.chunks, s.chunks_uploaded), (1000, 1000, 1000));
    assert_eq!(s.bytes_uploaded, sealed);
    assert!(
        (sealed.div_ceil(pack)..=most).contains(&s.packs_uploaded),
        "{} packs",
        s.packs_uploaded
    );
    // Every put is a pack or metadata; no pack is larger than the target.
    assert_eq!(store.puts(), s.packs_uploaded + s.metadata_blocks);
    let mut pack_keys = std::collections::BTreeSet::new();
    for e in &m.entries {
        if let EntryKind::File { chunks, .. } = &e.kind {
            pack_keys.extend(chunks.iter().map(|c| c.pack));
        }
    }
    assert_eq!(pack_keys.len() as u64, s.packs_uploaded);
    for k in &pack_keys {
        let p = store
            .get_document(peerstore_proto::BlockKey(*k))
            .await
            .unwrap()
            .unwrap();
        assert!(p.len() <= crate::backup::PACK_TARGET);
    }
    // Restore: byte-identical, and every pack fetched exactly once.
    let dest = tmp.path().join("dest");
    let r = restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_same_tree(&src, &dest);
    assert_eq!((r.files, r.chunks_fetched), (1000, 1000));
    assert_eq!(r.packs_fetched, s.packs_uploaded);
    // A second backup sends nothing: not with the previous tree, not re-reading every file,
    // and not with an empty cache seeded only from the previous snapshot's manifest.
    let puts = store.puts();
    let (s2, _, _) = backup(&repo, known.clone(), &src, Some(&m), &opts, &hidden())
        .await
        .unwrap();
    assert_eq!(
        (s2.files_read, s2.chunks_uploaded, s2.packs_uploaded),
        (0, 0, 0)
    );
    let reread = BackupOptions {
        reread_all: true,
        ..BackupOptions::default()
    };
    let fresh = Arc::new(KnownBlocks::in_memory());
    let (s3, m3, _) = backup(&repo, fresh, &src, Some(&m), &reread, &hidden())
        .await
        .unwrap();
    assert_eq!(
        (
            s3.files_read,
            s3.chunks_deduplicated,
            s3.chunks_uploaded,
            s3.packs_uploaded
        ),
        (1000, 1000, 0, 0),
        "{s3:?}"
    );
    assert_eq!(m3.entries, m.entries);
    // Only the two snapshots' metadata went up.
    assert_eq!(store.puts(), puts + s2.metadata_blocks + s3.metadata_blocks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_chunks_are_packed_once_per_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(5, 100_000);
    for name in ["a", "b", "c"] {
        fs::write(src.join(name), &data).unwrap();
    }
    fs::write(src.join("d"), random_bytes(6, 1000)).unwrap();
    let store = MemStore::new();
    let repo = repo_with(&store, 12);
    let known = Arc::new(KnownBlocks::in_memory());
    let (s, m, _) = backup_default(&repo, known, &src, None).await.unwrap();
    assert_eq!(
        (
            s.chunks,
            s.chunks_uploaded,
            s.chunks_deduplicated,
            s.packs_uploaded
        ),
        (4, 2, 2, 1),
        "{s:?}"
    );
    let refs: Vec<&ChunkRef> = m
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.first(),
            _ => None,
        })
        .collect();
    assert_eq!(refs[0], refs[1]);
    assert_eq!(refs[0], refs[2]);
    assert_eq!(refs[0].pack, refs[3].pack);
    assert_ne!(refs[0].offset, refs[3].offset);
    let dest = tmp.path().join("dest");
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_same_tree(&src, &dest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_keys_that_are_not_hashes_work_end_to_end() {
    // Like an entangled ring: the key a document put returns is not BLAKE3 of the bytes.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = MemStore::new();
    store.set_opaque_keys(true);
    let repo = repo_with(&store, 13);
    let known = Arc::new(KnownBlocks::in_memory());
    let (s, m, snap) = backup_default(&repo, known.clone(), &src, None)
        .await
        .unwrap();
    let snap = snap.unwrap();
    for k in store.documents() {
        let data = store.get_document(k).await.unwrap().unwrap();
        assert_ne!(peerstore_proto::BlockKey::of(&data), k);
    }
    assert_eq!(
        store.documents().len() as u64,
        s.packs_uploaded + s.metadata_blocks
    );
    assert_eq!(repo.latest().await.unwrap().unwrap().key, snap.key);
    assert_eq!(repo.load_manifest(&snap).await.unwrap(), m);
    let dest = tmp.path().join("dest");
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_same_tree(&src, &dest);
    let (s2, _, _) = backup_default(&repo, known, &src, Some(&m)).await.unwrap();
    assert_eq!(s2.packs_uploaded, 0);
}

/// Names below `dir` that look like restore temp files.
/// A backup with default options and a hidden progress bar.
async fn backup_default(
    repo: &Repo,
    known: Arc<KnownBlocks>,
    src: &Path,
    prev: Option<&Manifest>,
) -> crate::error::Result<(
    crate::backup::BackupSummary,
    Manifest,
    Option<crate::repo::SnapshotRef>,
)> {
    backup(repo, known, src, prev, &BackupOptions::default(), &hidden()).await
}

/// A backup of `src` with default options and an empty in-memory dedup cache.
async fn backup_fresh(repo: &Repo, src: &Path) -> (crate::backup::BackupSummary, Manifest) {
    let (s, m, _) = backup_default(repo, Arc::new(KnownBlocks::in_memory()), src, None)
        .await
        .unwrap();
    (s, m)
}

fn temp_files(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.contains(".peerstore-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pack_fails_the_restore_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Two packs: "f0000".."f0019" in the first, "f0020".. in the second.
    make_files(&src, 25, 200_000, 300);
    let store = MemStore::new();
    let repo = repo_with(&store, 14);
    let (s, m) = backup_fresh(&repo, &src).await;
    assert_eq!(s.packs_uploaded, 2);
    let victim = m.find(&["f0022".to_string()]).unwrap();
    let EntryKind::File { chunks, .. } = &victim.kind else {
        panic!("not a file")
    };
    assert!(store.remove(peerstore_proto::BlockKey(chunks[0].pack)));
    // getfile of one file of the lost pack.
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let err = restore_entry(&repo, &m, victim, &out.join("f0022"), &hidden())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, crate::ClientError::Missing(_)), "{msg}");
    assert!(msg.contains("f0022") && msg.contains("pack"), "{msg}");
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "something was written"
    );
    // The whole tree: fails, and no file of the lost pack is there, whole or half.
    let dest = tmp.path().join("dest");
    let err = restore_tree(&repo, &m, &dest, &hidden()).await.unwrap_err();
    assert!(err.to_string().contains("missing from the ring"), "{err}");
    for i in 20..25 {
        assert!(!dest.join(format!("f{i:04}")).exists(), "f{i:04} written");
    }
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    // Files that were restored are whole.
    for (p, _) in walk(&dest) {
        assert!(fs::read(dest.join(&p)).unwrap() == fs::read(src.join(&p)).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunk_references_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_files(&src, 3, 5000, 400);
    let store = MemStore::new();
    let repo = repo_with(&store, 15);
    let (_, m) = backup_fresh(&repo, &src).await;
    let EntryKind::File { chunks, size } = &m.entries[1].kind else {
        panic!("not a file")
    };
    let good = chunks[0].clone();
    let o = crypto::CHUNK_OVERHEAD as u32;
    let variants: Vec<(&str, ChunkRef)> = vec![
        (
            "offset past the pack",
            ChunkRef {
                offset: 4 << 20,
                ..good.clone()
            },
        ),
        (
            "offset at u32::MAX",
            ChunkRef {
                offset: u32::MAX,
                ..good.clone()
            },
        ),
        (
            "length past the pack",
            ChunkRef {
                sealed_len: 4 << 20,
                len: (4 << 20) - o,
                ..good.clone()
            },
        ),
        (
            "huge length",
            ChunkRef {
                sealed_len: u32::MAX,
                len: u32::MAX - o,
                ..good.clone()
            },
        ),
        (
            "lengths disagree",
            ChunkRef {
                sealed_len: good.sealed_len + 1,
                ..good.clone()
            },
        ),
        (
            "shifted slice",
            ChunkRef {
                offset: good.offset + 1,
                ..good.clone()
            },
        ),
        (
            "another chunk's slice",
            ChunkRef {
                offset: 0,
                ..good.clone()
            },
        ),
        (
            "no such pack",
            ChunkRef {
                pack: [9; 32],
                ..good.clone()
            },
        ),
    ];
    for (what, c) in variants {
        let e = Entry {
            path: vec!["victim".into()],
            kind: EntryKind::File {
                size: u64::from(c.len),
                chunks: vec![c],
            },
            mode: 0o644,
            mtime_ns: 0,
            owner: None,
        };
        let hostile = Manifest::new(vec![e]);
        let dest = tmp.path().join(format!("dest-{}", what.replace(' ', "-")));
        let r = restore_tree(&repo, &hostile, &dest, &hidden()).await;
        assert!(r.is_err(), "{what}: restored");
        assert!(!dest.join("victim").exists(), "{what}: written");
        assert!(temp_files(&dest).is_empty(), "{what}: temp file left");
    }
    // The genuine reference still restores (the checks above did not reject good data), and
    // a size that disagrees with the chunks is refused.
    let ok = Manifest::new(vec![m.entries[1].clone()]);
    restore_tree(&repo, &ok, &tmp.path().join("good"), &hidden())
        .await
        .unwrap();
    let wrong_size = Manifest::new(vec![Entry {
        kind: EntryKind::File {
            size: size + 1,
            chunks: chunks.clone(),
        },
        ..m.entries[1].clone()
    }]);
    assert!(
        restore_tree(&repo, &wrong_size, &tmp.path().join("ws"), &hidden())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_of_another_version_is_a_clear_error() {
    let store = MemStore::new();
    let repo = repo_with(&store, 16);
    let old = Manifest {
        version: 1,
        entries: vec![entry(&["x"], EntryKind::Dir)],
    };
    let (snap, _) = repo.publish(&old, "/old", "backup").await.unwrap();
    let err = repo.load_manifest(&snap).await.unwrap_err();
    assert!(
        matches!(err, crate::ClientError::OtherVersion(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("made by another version of peerstore-client"),
        "{err}"
    );
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn setuid_and_setgid_are_kept_only_by_root_restoring_the_owner() {
    // (mode, as root, owner recorded) -> restored mode
    for (mode, as_root, owner_known, want) in [
        (0o4755, false, false, 0o755),
        (0o4755, false, true, 0o755),
        (0o4755, true, false, 0o755),
        (0o4755, true, true, 0o4755),
        (0o2775, true, false, 0o775),
        (0o2775, true, true, 0o2775),
        (0o6711, false, true, 0o711),
        (0o1777, false, false, 0o1777), // sticky is kept
        (0o644, false, false, 0o644),
        (0o100_4755, true, true, 0o4755), // file type bits never pass
    ] {
        assert_eq!(
            restored_mode(mode, as_root, owner_known),
            want,
            "{mode:o} as_root={as_root} owner_known={owner_known}"
        );
    }
    // The root check agrees with the owner of a file this process creates.
    let f = tempfile::NamedTempFile::new().unwrap();
    assert_eq!(
        running_as_root(),
        f.as_file().metadata().unwrap().uid() == 0
    );
    assert_eq!(RestoreOptions::default().as_root, running_as_root());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setuid_file_is_restored_without_the_bit_unless_root_restores_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("shared")).unwrap();
    fs::create_dir_all(src.join("drop")).unwrap();
    fs::write(src.join("tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::write(src.join("both"), b"#!/bin/sh\necho both\n").unwrap();
    fs::write(src.join("shared/f"), b"in a setgid directory").unwrap();
    std::os::unix::fs::symlink("tool", src.join("link")).unwrap();
    for (p, mode) in [
        ("tool", 0o4755),
        ("both", 0o6711),
        ("shared", 0o2775),
        ("drop", 0o1777),
    ] {
        fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(mode_of(&src.join(p)), mode, "{p}: setup");
    }
    let store = MemStore::new();
    let repo = repo_with(&store, 17);
    let (_, m) = backup_fresh(&repo, &src).await;
    // Backup records the bits and the owner of every entry.
    let find = |p: &str| m.find(&[p.to_string()]).unwrap();
    assert_eq!(find("tool").mode, 0o4755);
    for e in &m.entries {
        let md = fs::symlink_metadata(src.join(e.display_path())).unwrap();
        assert_eq!(
            e.owner,
            Some(Owner {
                uid: md.uid(),
                gid: md.gid()
            }),
            "{}",
            e.display_path()
        );
    }

    // Not root (or not restoring owners): setuid and setgid are dropped, sticky is kept.
    let not_root = RestoreOptions { as_root: false };
    let dest = tmp.path().join("plain");
    let r = restore_tree_with(&repo, &m, &dest, &hidden(), &not_root)
        .await
        .unwrap();
    assert_eq!(r.setid_dropped, 3);
    for (p, want) in [
        ("tool", 0o755),
        ("both", 0o711),
        ("shared", 0o775),
        ("drop", 0o1777),
        ("shared/f", 0o644 & mode_of(&src.join("shared/f"))),
    ] {
        assert_eq!(mode_of(&dest.join(p)), want, "{p}");
    }
    assert_eq!(
        fs::read(dest.join("tool")).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    // getfile of the one file.
    let one = tmp.path().join("one");
    let r = restore_entry_with(&repo, &m, find("tool"), &one, &hidden(), &not_root)
        .await
        .unwrap();
    assert_eq!((mode_of(&one), r.setid_dropped), (0o755, 1));
    let d = tmp.path().join("shared-alone");
    restore_entry_with(&repo, &m, find("shared"), &d, &hidden(), &not_root)
        .await
        .unwrap();
    assert_eq!(mode_of(&d), 0o775);

    // The default follows the process: root keeps the bits (the owner is recorded).
    let dflt = tmp.path().join("default");
    restore_tree(&repo, &m, &dflt, &hidden()).await.unwrap();
    let want = if running_as_root() { 0o4755 } else { 0o755 };
    assert_eq!(mode_of(&dflt.join("tool")), want);

    if !running_as_root() {
        println!("not root: the restore-the-owner half of this test is skipped");
        return;
    }
    // Root restoring the recorded owner: owner first, then the bits (a chown clears them).
    let theirs = Owner {
        uid: 4242,
        gid: 4343,
    };
    let mut m2 = m.clone();
    for e in &mut m2.entries {
        e.owner = Some(theirs);
    }
    let as_root = RestoreOptions { as_root: true };
    let dest = tmp.path().join("owned");
    let r = restore_tree_with(&repo, &m2, &dest, &hidden(), &as_root)
        .await
        .unwrap();
    assert_eq!(r.setid_dropped, 0);
    for (p, want) in [
        ("tool", 0o4755),
        ("both", 0o6711),
        ("shared", 0o2775),
        ("drop", 0o1777),
    ] {
        assert_eq!(mode_of(&dest.join(p)), want, "{p}");
    }
    for p in ["tool", "both", "shared", "shared/f", "drop", "link"] {
        let md = fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (4242, 4343), "owner of {p}");
    }
    let one = tmp.path().join("one-owned");
    let tool2 = m2.find(&["tool".to_string()]).unwrap();
    restore_entry_with(&repo, &m2, tool2, &one, &hidden(), &as_root)
        .await
        .unwrap();
    let md = fs::metadata(&one).unwrap();
    assert_eq!((md.uid(), mode_of(&one)), (4242, 0o4755));
    // Root, but no owner in the manifest (format 2): the bits are dropped.
    let mut m3 = m.clone();
    for e in &mut m3.entries {
        e.owner = None;
    }
    let dest = tmp.path().join("no-owner");
    let r = restore_tree_with(&repo, &m3, &dest, &hidden(), &as_root)
        .await
        .unwrap();
    assert_eq!(r.setid_dropped, 3);
    assert_eq!(mode_of(&dest.join("tool")), 0o755);
    assert_eq!(mode_of(&dest.join("shared")), 0o775);
}

/// What [`PermissionSpy`] saw below the destination while a restore ran.
#[derive(Debug, Default)]
struct Seen {
    looks: u64,
    /// Directories seen closed (no group/other bits), and open.
    dirs_closed: u64,
    dirs_open: u64,
    /// Temp files seen while still incomplete, and complete (final mode, before the rename).
    temp_incomplete: u64,
    temp_complete: u64,
    files: u64,
    violations: Vec<String>,
}

/// Walks `dir` (below `dest`) top-down, checking that
/// - a temp file is 0600 until it holds all its bytes (then it may have its final mode);
/// - no temp file lies below a directory that is open to group or others: directories are
///   opened only once everything below them is final.
///
/// A directory's mode is read before its contents, and directories open only after the last
/// temp file is gone, so a temp file seen below an open directory is a real violation.
/// `files` gives each restored file's (size, final mode); `open` is the nearest open
/// directory above `dir`, if any.
fn look_below(
    dest: &Path,
    dir: &Path,
    open: Option<&str>,
    files: &std::collections::HashMap<String, (u64, u32)>,
    seen: &mut Seen,
) {
    let Ok(rd) = fs::read_dir(dir) else {
        return; // not created yet, or a race with the restore: nothing to see
    };
    for ent in rd.flatten() {
        let p = ent.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue; // renamed or removed meanwhile
        };
        let mode = md.permissions().mode() & 0o7777;
        let rel = p.strip_prefix(dest).unwrap().display().to_string();
        let name = ent.file_name().to_string_lossy().to_string();
        if md.is_dir() {
            let here_open = mode & 0o077 != 0;
            if here_open {
                seen.dirs_open += 1;
            } else {
                seen.dirs_closed += 1;
            }
            let open = open.or(here_open.then_some(rel.as_str()));
            look_below(dest, &p, open, files, seen);
        } else if let Some(stem) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".peerstore-"))
            .map(|(n, _)| n)
        {
            let final_rel = match rel.rsplit_once('/') {
                Some((parent, _)) => format!("{parent}/{stem}"),
                None => stem.to_string(),
            };
            let (size, final_mode) = files[&final_rel];
            if md.len() < size {
                seen.temp_incomplete += 1;
                if mode != 0o600 {
                    seen.violations.push(format!(
                        "incomplete temp file {rel} has mode {mode:o} ({} of {size} bytes)",
                        md.len()
                    ));
                }
            } else {
                seen.temp_complete += 1;
                if mode != 0o600 && mode != final_mode {
                    seen.violations
                        .push(format!("temp file {rel} has mode {mode:o}"));
                }
            }
            if let Some(d) = open {
                seen.violations
                    .push(format!("temp file {rel} inside open directory {d}"));
            }
        } else {
            seen.files += 1;
        }
    }
}

/// A store that looks at the permissions of everything below `dest` at every pack fetch:
/// that is, in the middle of a restore, while the file that needs the pack has its temp file.
#[derive(Clone)]
struct PermissionSpy {
    dest: PathBuf,
    files: Arc<std::collections::HashMap<String, (u64, u32)>>,
    seen: Arc<Mutex<Seen>>,
}

impl PermissionSpy {
    fn look(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.looks += 1;
        look_below(&self.dest, &self.dest, None, &self.files, &mut seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_open_to_others_while_a_restore_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    // Two packs of single-chunk files, a multi-chunk file, a private directory, a file at the
    // top; directories 0755 and files 0644 (0600 for the private one) in the end.
    make_files(&src.join("pub/many"), 25, 200_000, 500);
    fs::write(src.join("pub/big"), random_bytes(600, 6 << 20)).unwrap();
    fs::create_dir_all(src.join("private")).unwrap();
    fs::write(src.join("private/key"), b"secret key").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    for (p, mode) in [
        ("pub", 0o755),
        ("pub/many", 0o755),
        ("private", 0o700),
        ("private/key", 0o600),
        ("top", 0o644),
        ("pub/big", 0o644),
    ] {
        fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    let mem = MemStore::new();
    let (_, m) = backup_fresh(&repo_with(&mem, 18), &src).await;
    // The same user and ring, read through the spy.
    let dest = tmp.path().join("dest");
    let files = m
        .entries
        .iter()
        .map(|e| (e.display_path(), (e.size(), e.mode & 0o7777)))
        .collect();
    let spy = PermissionSpy {
        dest: dest.clone(),
        files: Arc::new(files),
        seen: Arc::new(Mutex::new(Seen::default())),
    };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(18);
    let repo = Repo::new(
        Arc::new(crate::store::HookedStore::new(mem.clone(), {
            let spy = spy.clone();
            Arc::new(move |_| {
                spy.look();
                Box::pin(async {})
            })
        })),
        Arc::new(Identity::generate(&mut rng)),
    );
    // A directory of the tree exists already, open (it is closed during the restore too).
    fs::create_dir_all(dest.join("pub")).unwrap();
    fs::set_permissions(dest.join("pub"), fs::Permissions::from_mode(0o755)).unwrap();
    // Besides the looks at every pack fetch, a thread looks all the time.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (spy, done) = (spy.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                spy.look();
                std::thread::yield_now();
            }
        })
    };
    let r = restore_tree(&repo, &m, &dest, &hidden()).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let r = r.unwrap();
    let seen = spy.seen.lock().unwrap();
    println!("{} looks, {} packs; {seen:?}", seen.looks, r.packs_fetched);
    assert!(
        seen.violations.is_empty(),
        "open to others during the restore: {:?}",
        seen.violations
    );
    // The looks saw the restore at work (closed directories, temp files being written), not
    // only before or after it.
    assert!(
        seen.looks >= r.packs_fetched && r.packs_fetched >= 2,
        "{seen:?}"
    );
    assert!(seen.dirs_closed > 0 && seen.temp_incomplete > 0, "{seen:?}");
    // And in the end everything has its own mode again.
    assert_same_tree(&src, &dest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_is_a_write_session_naming_the_packs_it_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(1, 3 << 20)).unwrap();
    fs::write(src.join("b"), random_bytes(2, 3 << 20)).unwrap();
    let store = MemStore::new();
    let repo = repo_with(&store, 2);
    let known = Arc::new(KnownBlocks::in_memory());
    let (_, m1, _) = backup_default(&repo, known.clone(), &src, None)
        .await
        .unwrap();
    let packs_of = |m: &Manifest, name: &str| -> BTreeSet<BlockKey> {
        m.entries
            .iter()
            .filter(|e| e.path == [name.to_string()])
            .flat_map(|e| match &e.kind {
                EntryKind::File { chunks, .. } => chunks.iter().map(|c| BlockKey(c.pack)).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    // The first run keeps nothing from before.
    let (n, kept) = store.session();
    assert_eq!((n, kept.len()), (1, 0));
    // "a" unchanged, "b" replaced: the run names a's packs (taken over), not b's alone.
    fs::write(src.join("b"), random_bytes(3, 3 << 20)).unwrap();
    let (_, m2, _) = backup_default(&repo, known.clone(), &src, Some(&m1))
        .await
        .unwrap();
    let (n, kept) = store.session();
    assert_eq!(n, 2);
    assert_eq!(kept, packs_of(&m1, "a"), "a's packs, and only those");
    // A copy of a's content under a new name: deduplicated, its packs named again.
    fs::write(src.join("c"), fs::read(src.join("a")).unwrap()).unwrap();
    let (s3, _, _) = backup_default(&repo, known.clone(), &src, Some(&m2))
        .await
        .unwrap();
    assert_eq!(s3.chunks_uploaded, 0, "{s3:?}");
    let (n, kept) = store.session();
    assert_eq!(n, 3);
    assert!(kept.is_superset(&packs_of(&m1, "a")));
    // Everything replaced: nothing kept from before.
    fs::write(src.join("a"), random_bytes(4, 1 << 20)).unwrap();
    fs::write(src.join("b"), random_bytes(5, 1 << 20)).unwrap();
    fs::remove_file(src.join("c")).unwrap();
    backup_default(&repo, known, &src, Some(&m2)).await.unwrap();
    let (n, kept) = store.session();
    assert_eq!((n, kept.len()), (4, 0));
}
