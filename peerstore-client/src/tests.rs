//! In-process tests of backup, restore, path safety and sync over the in-memory store.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crypto::Identity;
use rand::{RngCore, SeedableRng};

use crate::backup::{backup, mtime_ns, BackupOptions, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
use crate::cache::KnownBlocks;
use crate::model::{Entry, EntryKind, Manifest};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{check_manifest, restore_entry, restore_tree};
use crate::store::MemStore;
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
    let (s, m, snap) = backup(
        &repo,
        known.clone(),
        &src,
        None,
        &BackupOptions::default(),
        &hidden(),
    )
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
    let (_, _, snap) = backup(
        &alice,
        known,
        &src,
        None,
        &BackupOptions::default(),
        &hidden(),
    )
    .await
    .unwrap();
    let snap = snap.unwrap();
    assert!(matches!(
        bob.latest().await,
        Ok(None) | Err(crate::ClientError::NoBackup)
    ));
    // Even given the key of Alice's snapshot object, Bob cannot open it.
    assert!(matches!(
        bob.load_snapshot(snap.key).await,
        Err(crate::ClientError::Corrupt(_))
    ));
    // A damaged block is detected, not restored.
    let m = alice.load_manifest(&snap).await.unwrap();
    let EntryKind::File { chunks, .. } = &m.entries[0].kind else {
        panic!("not a file")
    };
    let key = peerstore_node::proto::BlockKey(chunks[0].key);
    let mut data = store.all_blocks()[0].clone();
    data[5] ^= 1;
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
            version: 1,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_keeps_the_old_root_and_the_rerun_sends_only_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        fs::write(src.join(format!("f{i}")), random_bytes(50 + i, 100_000)).unwrap();
    }
    let store = MemStore::new();
    let repo = repo_with(&store, 8);
    let cache_path = tmp.path().join("known");
    let opts = BackupOptions {
        concurrency: 1,
        ..BackupOptions::default()
    };
    // A first snapshot of part of the tree.
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
    // The ring goes away after 5 more puts: the backup fails and the root is untouched.
    store.fail_after(Some(5));
    let known = Arc::new(KnownBlocks::open(&cache_path).unwrap());
    let err = backup(&repo, known, &src, None, &opts, &hidden())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(repo.read_root().await.unwrap().unwrap(), root_before);
    // The rerun (a new process: the cache is reloaded from disk) sends only the 7 missing.
    store.fail_after(None);
    let known = Arc::new(KnownBlocks::open(&cache_path).unwrap());
    let (s, m, _) = backup(&repo, known, &src, None, &opts, &hidden())
        .await
        .unwrap();
    assert_eq!((s.chunks, s.chunks_uploaded), (12, 7), "{s:?}");
    let dest = tmp.path().join("dest");
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    for i in 0..12u64 {
        assert!(fs::read(dest.join(format!("f{i}"))).unwrap() == random_bytes(50 + i, 100_000));
    }
}
