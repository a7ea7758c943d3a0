//! Restore walks through directory descriptors: links planted in the destination, before or
//! during a restore, never redirect a write outside it; and nothing is open to other users
//! while it runs. Public API only (backup into an in-memory store, then restore).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crypto::Identity;
use peerstore_client::backup::{backup, BackupOptions};
use peerstore_client::cache::KnownBlocks;
use peerstore_client::model::{EntryKind, Manifest};
use peerstore_client::progress::Progress;
use peerstore_client::repo::Repo;
use peerstore_client::restore::{
    restore_entry_with, restore_tree, restore_tree_with, restored_mode, RestoreOptions,
};
use peerstore_client::store::{HookedStore, MemStore};
use peerstore_client::ClientError;
use rand::SeedableRng;

const SYMLINK_REFUSAL: &str = "is a symlink; refusing to restore through it";

fn identity(seed: u64) -> Arc<Identity> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Arc::new(Identity::generate(&mut rng))
}

fn hidden() -> Arc<Progress> {
    Arc::new(Progress::hidden())
}

/// Backs up `src` as the user of `seed` and returns the manifest.
async fn backup_of(store: &MemStore, seed: u64, src: &Path) -> Manifest {
    let repo = Repo::new(Arc::new(store.clone()), identity(seed));
    let known = Arc::new(KnownBlocks::in_memory());
    let (_, m, _) = backup(
        &repo,
        known,
        src,
        None,
        &BackupOptions::default(),
        &hidden(),
    )
    .await
    .unwrap();
    m
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Everything below `dir` (relative paths), links not followed.
fn everything_below(dir: &Path) -> Vec<String> {
    fn rec(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                rec(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    rec(dir, dir, &mut out);
    out.sort();
    out
}

fn refusal(r: peerstore_client::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(ClientError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// (a) A link planted where the manifest has a directory (listed, or only on a file's path)
/// stops the restore with a clear error, and nothing is written outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_at_a_directory_of_the_manifest_stops_the_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
    write(&src.join("top"), b"top");
    write(&src.join("d/e/f1"), b"one");
    write(&src.join("d/e/f2"), b"two");
    write(&src.join("d/g"), b"g");
    fs::create_dir_all(outside.join("e")).unwrap();
    let store = MemStore::new();
    let m = backup_of(&store, 1, &src).await;
    let repo = Repo::new(Arc::new(store.clone()), identity(1));
    // The same files without their directory entries: the directories are only on the way.
    let files_only = Manifest::new(
        m.entries
            .iter()
            .filter(|e| !matches!(e.kind, EntryKind::Dir))
            .cloned()
            .collect(),
    );
    for (i, (manifest, planted, msg)) in [
        (&m, "d", format!("d {SYMLINK_REFUSAL}")),
        (&m, "d/e", format!("d/e {SYMLINK_REFUSAL}")),
        (&files_only, "d", format!("d {SYMLINK_REFUSAL}")),
        (&files_only, "d/e", format!("d/e {SYMLINK_REFUSAL}")),
    ]
    .into_iter()
    .enumerate()
    {
        let dest = tmp.path().join(format!("dest{i}"));
        fs::create_dir_all(dest.join(planted).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join(planted)).unwrap();
        let m = refusal(restore_tree(&repo, manifest, &dest, &hidden()).await);
        assert!(
            m.ends_with(&msg) && m.starts_with(&dest.display().to_string()),
            "{planted}: {m}"
        );
        assert!(fs::symlink_metadata(dest.join(planted))
            .unwrap()
            .is_symlink());
        assert_eq!(everything_below(&outside), ["e"], "wrote outside");
    }
    // A file where a directory is expected.
    let dest = tmp.path().join("dest-file");
    write(&dest.join("d"), b"in the way");
    let m2 = refusal(restore_tree(&repo, &m, &dest, &hidden()).await);
    assert!(m2.ends_with("d exists and is not a directory"), "{m2}");
    assert_eq!(fs::read(dest.join("d")).unwrap(), b"in the way");
    // One directory restored with restore_entry: a link planted below the target.
    let dest = tmp.path().join("dest-entry");
    fs::create_dir_all(dest.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("d/e")).unwrap();
    let d = m.find(&["d".into()]).unwrap();
    let opts = RestoreOptions::default();
    let m3 = refusal(restore_entry_with(&repo, &m, d, &dest.join("d"), &hidden(), &opts).await);
    assert!(m3.ends_with(&format!("d/e {SYMLINK_REFUSAL}")), "{m3}");
    assert_eq!(everything_below(&outside), ["e"], "wrote outside");
    // A link at a file's own name is replaced, not written through; the rest restores.
    let dest = tmp.path().join("dest-ok");
    fs::create_dir_all(dest.join("d/e")).unwrap();
    write(&outside.join("victim"), b"untouched");
    std::os::unix::fs::symlink(outside.join("victim"), dest.join("d/e/f1")).unwrap();
    restore_tree(&repo, &m, &dest, &hidden()).await.unwrap();
    assert_eq!(fs::read(dest.join("d/e/f1")).unwrap(), b"one");
    assert!(fs::symlink_metadata(dest.join("d/e/f1")).unwrap().is_file());
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"untouched");
    assert_eq!(everything_below(&outside), ["e", "victim"]);
}

/// Swaps `dest/d` for a link to `outside` and back, again and again, until `stop`: the attack
/// on a restore into a destination others can write to. Atomically where the file system can
/// (`renameat2(RENAME_EXCHANGE)` with a link made beforehand, so `d` never goes missing),
/// else with renames. Never writes through the link itself.
fn swapper(dest: PathBuf, outside: PathBuf, stop: Arc<AtomicBool>, swaps: Arc<AtomicU64>) {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let (d, link, aside) = (dest.join("d"), dest.join("d.link"), dest.join("d.aside"));
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let exchange = || renameat_with(CWD, &d, CWD, &link, RenameFlags::EXCHANGE);
    let mut atomic = true;
    while !stop.load(Ordering::Relaxed) {
        let is_dir = fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
        if !is_dir {
            std::thread::yield_now();
            continue;
        }
        if atomic {
            match exchange() {
                Ok(()) => {
                    swaps.fetch_add(1, Ordering::Relaxed);
                    // And back at once: the link is there only for a moment, so that checks
                    // by path mostly pass and what follows them may go through the link.
                    while exchange().is_err() {}
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
                Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => atomic = false,
                Err(_) => {}
            }
        } else if fs::rename(&d, &aside).is_ok() {
            if std::os::unix::fs::symlink(&outside, &d).is_ok() {
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::yield_now();
            if fs::symlink_metadata(&d).is_ok_and(|m| m.is_symlink()) {
                let _ = fs::remove_file(&d);
            }
            // Back (fails if the restore made a new `d` meanwhile and wrote into it).
            let _ = fs::rename(&aside, &d);
        }
        std::thread::yield_now();
    }
    if !atomic {
        println!("no RENAME_EXCHANGE here: swapped with renames");
    }
}

/// (b) While a restore of many files runs, another thread keeps swapping a directory of the
/// destination for a link to an outside directory (which mirrors the directories below it).
/// The restore may fail, but nothing ever lands outside. (The walk by path before issue 14
/// wrote files outside in every round of this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_during_the_restore_never_redirects_a_write() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, outside) = (tmp.path().join("src"), tmp.path().join("outside"));
    // 600 small files in 12 directories below d (two levels), and a few at the top.
    for i in 0..12 {
        for j in 0..50 {
            let sub = if j % 2 == 0 { "" } else { "deeper/" };
            write(
                &src.join(format!("d/s{i:02}/{sub}f{j:03}")),
                format!("file {i} {j}").repeat(1 + j % 7).as_bytes(),
            );
        }
    }
    for i in 0..5 {
        write(&src.join(format!("top{i}")), b"top");
    }
    // The attacker mirrors the directories below d in the link's target, so that a path
    // resolved through the link would find them.
    for i in 0..12 {
        fs::create_dir_all(outside.join(format!("s{i:02}/deeper"))).unwrap();
    }
    let mirror = everything_below(&outside);
    let store = MemStore::new();
    let m = backup_of(&store, 2, &src).await;
    let repo = Repo::new(Arc::new(store.clone()), identity(2));
    let (mut failed, mut succeeded, mut total_swaps) = (0, 0, 0);
    let started = Instant::now();
    for round in 0..16 {
        let dest = tmp.path().join(format!("dest{round}"));
        fs::create_dir_all(&dest).unwrap();
        // Half of the rounds start with `d` in place (the walk opens it, then the swaps
        // begin), half with the swapper racing the restore's own mkdir.
        if round % 2 == 0 {
            fs::create_dir_all(dest.join("d")).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let t = {
            let (dest, outside, stop, swaps) =
                (dest.clone(), outside.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || swapper(dest, outside, stop, swaps))
        };
        let r = restore_tree(&repo, &m, &dest, &hidden()).await;
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        total_swaps += swaps.load(Ordering::Relaxed);
        match &r {
            Ok(_) => {
                succeeded += 1;
                // The swapper always puts the directory back: the whole tree is in place
                // (unless it swapped with plain renames and left `d` aside).
                if !dest.join("d.aside").exists() {
                    for e in &m.entries {
                        if matches!(e.kind, EntryKind::File { .. }) {
                            let p = e.display_path();
                            assert_eq!(
                                fs::read(dest.join(&p)).unwrap(),
                                fs::read(src.join(&p)).unwrap(),
                                "round {round}: {p}"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("round {round}: {e}");
            }
        }
        let leaked: Vec<_> = everything_below(&outside)
            .into_iter()
            .filter(|p| !mirror.contains(p))
            .collect();
        assert!(
            leaked.is_empty(),
            "round {round}: written outside: {leaked:?}"
        );
    }
    println!(
        "{failed} restores failed, {succeeded} succeeded, {total_swaps} swaps, {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(total_swaps > 0, "the swapper never swapped");
}

/// What the watcher saw below the destination while a restore ran.
#[derive(Debug, Default)]
struct Seen {
    looks: u64,
    dirs_closed: u64,
    temp_incomplete: u64,
    violations: Vec<String>,
}

/// Walks `dir` top-down: a temp file is 0600 until it holds all its bytes (then 0600 or its
/// final mode), and lies in no directory open to group or others. `files` maps each file to
/// (size, final mode); `open` is the nearest open directory above `dir`.
fn look_below(
    dest: &Path,
    dir: &Path,
    open: Option<&str>,
    files: &HashMap<String, (u64, u32)>,
    seen: &mut Seen,
) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for ent in rd.flatten() {
        let p = ent.path();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = md.permissions().mode() & 0o7777;
        let rel = p.strip_prefix(dest).unwrap().display().to_string();
        let name = ent.file_name().to_string_lossy().to_string();
        if md.is_dir() {
            let here_open = mode & 0o077 != 0;
            if !here_open {
                seen.dirs_closed += 1;
            }
            let open = open.or(here_open.then_some(rel.as_str()));
            look_below(dest, &p, open, files, seen);
        } else if let Some((stem, _)) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".peerstore-"))
        {
            let final_rel = match rel.rsplit_once('/') {
                Some((parent, _)) => format!("{parent}/{stem}"),
                None => stem.to_string(),
            };
            let (size, final_mode) = files[&final_rel];
            if md.len() < size {
                seen.temp_incomplete += 1;
                if mode != 0o600 {
                    seen.violations
                        .push(format!("incomplete temp file {rel} has mode {mode:o}"));
                }
            } else if mode != 0o600 && mode != final_mode {
                seen.violations
                    .push(format!("temp file {rel} has mode {mode:o}"));
            }
            if let Some(d) = open {
                seen.violations
                    .push(format!("temp file {rel} inside open directory {d}"));
            }
        }
    }
}

/// A store that looks below the destination at every pack fetch, that is in the middle of a
/// restore, while the file that needs the pack has its temp file open.
#[derive(Clone)]
struct Spy {
    dest: PathBuf,
    files: Arc<HashMap<String, (u64, u32)>>,
    seen: Arc<Mutex<Seen>>,
}

impl Spy {
    fn look(&self) {
        let mut seen = self.seen.lock().unwrap();
        seen.looks += 1;
        look_below(&self.dest, &self.dest, None, &self.files, &mut seen);
    }
}

/// (c) Permissions, during and after, as before the walk went through descriptors: temp
/// files 0600 until complete, directories 0700 until the end, then every entry its own mode;
/// directories only on the way stay 0700; setuid/setgid dropped when not restoring as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_during_and_after_a_restore_are_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..30 {
        let data: Vec<u8> = (0..150_000u32).map(|b| (b * 7 + i) as u8).collect();
        write(&src.join(format!("pub/many/f{i:02}")), &data);
    }
    write(&src.join("private/key"), b"secret key");
    write(&src.join("top"), b"top");
    write(&src.join("pub/tool"), b"#!/bin/sh\n");
    for (p, mode) in [
        ("pub", 0o755),
        ("pub/many", 0o751),
        ("private", 0o700),
        ("private/key", 0o600),
        ("top", 0o644),
        ("pub/tool", 0o4755),
    ] {
        fs::set_permissions(src.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    let mem = MemStore::new();
    let m = backup_of(&mem, 3, &src).await;
    let dest = tmp.path().join("dest");
    let files = m
        .entries
        .iter()
        .map(|e| {
            let mode = restored_mode(e.mode, false, e.owner.is_some());
            (e.display_path(), (e.size(), mode))
        })
        .collect();
    let spy = Spy {
        dest: dest.clone(),
        files: Arc::new(files),
        seen: Arc::new(Mutex::new(Seen::default())),
    };
    let looker = spy.clone();
    let store = HookedStore::new(
        mem.clone(),
        Arc::new(move |_| {
            looker.look();
            Box::pin(async {})
        }),
    );
    let repo = Repo::new(Arc::new(store), identity(3));
    // A directory of the tree exists already, open: it is closed during the restore too.
    fs::create_dir_all(dest.join("pub")).unwrap();
    fs::set_permissions(dest.join("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (spy, done) = (spy.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                spy.look();
                std::thread::yield_now();
            }
        })
    };
    let not_root = RestoreOptions { as_root: false };
    let r = restore_tree_with(&repo, &m, &dest, &hidden(), &not_root).await;
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let r = r.unwrap();
    {
        let seen = spy.seen.lock().unwrap();
        println!("{} looks, {} packs; {seen:?}", seen.looks, r.packs_fetched);
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert!(seen.dirs_closed > 0 && seen.temp_incomplete > 0, "{seen:?}");
    }
    assert_eq!(r.setid_dropped, 1);
    // After: every entry its own mode (the setuid bit dropped), and the contents.
    for (p, mode) in [
        ("pub", 0o755),
        ("pub/many", 0o751),
        ("private", 0o700),
        ("private/key", 0o600),
        ("top", 0o644),
        ("pub/tool", 0o755),
        ("pub/many/f07", 0o644),
    ] {
        assert_eq!(mode_of(&dest.join(p)), mode, "{p}");
        if fs::metadata(dest.join(p)).unwrap().is_file() {
            assert_eq!(
                fs::read(dest.join(p)).unwrap(),
                fs::read(src.join(p)).unwrap()
            );
        }
    }
    assert!(everything_below(&dest)
        .iter()
        .all(|p| !p.contains(".peerstore-")));
    // Without the directory entries, the directories on the way stay 0700.
    let files_only = Manifest::new(
        m.entries
            .iter()
            .filter(|e| !matches!(e.kind, EntryKind::Dir))
            .cloned()
            .collect(),
    );
    let dest2 = tmp.path().join("dest2");
    restore_tree_with(&repo, &files_only, &dest2, &hidden(), &not_root)
        .await
        .unwrap();
    for p in ["pub", "pub/many", "private"] {
        assert_eq!(mode_of(&dest2.join(p)), 0o700, "{p}");
    }
    assert_eq!(mode_of(&dest2.join("private/key")), 0o600);
    // One file on its own.
    let tool = m.find(&["pub".into(), "tool".into()]).unwrap();
    let one = tmp.path().join("tool");
    restore_entry_with(&repo, &m, tool, &one, &hidden(), &not_root)
        .await
        .unwrap();
    assert_eq!(mode_of(&one), 0o755);
}
