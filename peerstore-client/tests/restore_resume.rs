//! Restores of many small files (the batched write path) and resumed restores: a run into a
//! destination where an earlier run stopped skips the files restored whole, removes the temp
//! files it left, and restores the rest. Public API only (backup into an in-memory store).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto::Identity;
use peerstore_client::backup::{backup, BackupOptions};
use peerstore_client::cache::KnownBlocks;
use peerstore_client::model::{EntryKind, Manifest};
use peerstore_client::progress::Progress;
use peerstore_client::repo::Repo;
use peerstore_client::restore::{restore_tree_with, RestoreOptions, RestoreSummary};
use peerstore_client::store::{HookedStore, MemStore};
use rand::{Rng, SeedableRng};

const NOT_ROOT: RestoreOptions = RestoreOptions { as_root: false };

fn identity(seed: u64) -> Arc<Identity> {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Arc::new(Identity::generate(&mut rng))
}

fn hidden() -> Arc<Progress> {
    Arc::new(Progress::hidden())
}

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

/// A source-like tree: `files` files in nested directories (3 to 5 deep, about 20 files
/// each), mostly 0-20 KiB, a few empty, modes 0644/0755/0600, mtimes spread over years with
/// nanoseconds, plus `large` files of 3-6 MiB (several chunks, in more than one pack).
fn make_tree(root: &Path, files: usize, large: usize, seed: u64) -> usize {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for i in 0..files.div_ceil(20) {
        let depth = 3 + i % 3;
        let mut d = root.to_path_buf();
        for level in 0..depth {
            d.push(format!("d{level}_{}", (i >> level) % 4));
        }
        d.push(format!("leaf{i}"));
        dirs.push(d);
    }
    for (i, d) in dirs.iter().enumerate() {
        fs::create_dir_all(d).unwrap();
        let n = (files - i * 20).min(20);
        for j in 0..n {
            let size = match rng.gen_range(0..100) {
                0 => 0,
                1..=90 => rng.gen_range(1..20 * 1024),
                _ => rng.gen_range(20 * 1024..200 * 1024),
            };
            let mut data = vec![0u8; size];
            rng.fill(&mut data[..]);
            let p = d.join(format!("f{j:02}.src"));
            fs::write(&p, &data).unwrap();
            let mode = [0o644, 0o644, 0o755, 0o600][j % 4];
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let secs = 1_500_000_000 + rng.gen_range(0..200_000_000);
            let nanos = rng.gen_range(0..1_000_000_000);
            let f = fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::new(secs, nanos))
                .unwrap();
        }
    }
    for k in 0..large {
        let size = rng.gen_range(3 << 20..6 << 20);
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        fs::write(dirs[k * 7 % dirs.len()].join(format!("big{k}.bin")), &data).unwrap();
    }
    files + large
}

/// Everything below `dir`: relative path -> (kind, mode, size, mtime ns, content hash).
fn snapshot(dir: &Path) -> BTreeMap<String, (char, u32, u64, i128, [u8; 32])> {
    fn rec(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, u64, i128, [u8; 32])>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            let mode = md.permissions().mode() & 0o7777;
            if md.is_dir() {
                out.insert(rel, ('d', mode, 0, mtime, [0; 32]));
                rec(root, &p, out);
            } else {
                let hash = *blake3::hash(&fs::read(&p).unwrap()).as_bytes();
                out.insert(rel, ('f', mode, md.len(), mtime, hash));
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(dir, dir, &mut out);
    out
}

/// The restored tree equals the source: contents, modes, mtimes of files and directories.
fn assert_same_tree(src: &Path, dest: &Path) {
    let (a, b) = (snapshot(src), snapshot(dest));
    let only_src: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_dest: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_src.is_empty() && only_dest.is_empty(),
        "missing {only_src:?}, extra {only_dest:?}"
    );
    for (k, v) in &a {
        assert_eq!(v, &b[k], "{k}");
    }
}

fn temp_files_below(dir: &Path) -> Vec<String> {
    snapshot(dir)
        .into_keys()
        .filter(|p| p.contains(".peerstore-"))
        .collect()
}

fn file_count(m: &Manifest) -> u64 {
    m.entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .count() as u64
}

/// 2,000 small files in nested directories (and a few files of several chunks): the restore
/// writes them by pack on the writer pool, makes them durable in batches, and the tree
/// compares equal; a second run into the same destination finds every file restored whole
/// and fetches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_small_files_restore_equal_and_a_rerun_skips_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let n = make_tree(&src, 2000, 3, 7) as u64;
    let store = MemStore::new();
    let m = backup_of(&store, 1, &src).await;
    assert_eq!(file_count(&m), n);
    let repo = Repo::new(Arc::new(store.clone()), identity(1));
    let s = restore_tree_with(&repo, &m, &dest, &hidden(), &NOT_ROOT)
        .await
        .unwrap();
    assert_eq!((s.files, s.files_skipped, s.temp_files_removed), (n, 0, 0));
    assert!(s.packs_fetched > 1, "{s:?}");
    assert_eq!(s.chunks_fetched, chunk_count(&m));
    assert_same_tree(&src, &dest);
    assert!(temp_files_below(&dest).is_empty());
    // Each pack fetched once, save for those a multi-pack file shares with small files.
    let packs = distinct_packs(&m);
    assert!(
        s.packs_fetched <= packs + 3 * 3,
        "{} of {packs}",
        s.packs_fetched
    );

    let again = restore_tree_with(&repo, &m, &dest, &hidden(), &NOT_ROOT)
        .await
        .unwrap();
    assert_eq!((again.files, again.files_skipped), (n, n), "{again:?}");
    assert_eq!((again.chunks_fetched, again.packs_fetched), (0, 0));
    assert_eq!(again.bytes_skipped, again.bytes);
    assert_same_tree(&src, &dest);
}

fn chunk_count(m: &Manifest) -> u64 {
    m.entries
        .iter()
        .map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.len() as u64,
            _ => 0,
        })
        .sum()
}

fn distinct_packs(m: &Manifest) -> u64 {
    let mut packs = std::collections::BTreeSet::new();
    for e in &m.entries {
        if let EntryKind::File { chunks, .. } = &e.kind {
            packs.extend(chunks.iter().map(|c| c.pack));
        }
    }
    packs.len() as u64
}

/// A destination as an interrupted (or crashed) run leaves it, made by hand: some files
/// missing, some with their temp files half written, some at their name but not as the
/// manifest has them (another size, mtime or mode). The rerun keeps the whole ones, removes
/// the leftover temp files (only those of the manifest's files), and restores the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_skips_whole_files_removes_leftover_temp_files_and_restores_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let n = make_tree(&src, 600, 1, 11) as u64;
    let store = MemStore::new();
    let m = backup_of(&store, 2, &src).await;
    let repo = Repo::new(Arc::new(store.clone()), identity(2));
    restore_tree_with(&repo, &m, &dest, &hidden(), &NOT_ROOT)
        .await
        .unwrap();
    let files: Vec<String> = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File { size, .. } if size > 1))
        .map(|e| e.display_path())
        .collect();
    let temp_of = |rel: &str| {
        let p = dest.join(rel);
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        p.with_file_name(format!(".{name}.peerstore-00000000abcd.tmp"))
    };
    // 40 missing, 15 of them with a half-written temp file (0600) left beside the name.
    for (i, rel) in files.iter().take(40).enumerate() {
        let p = dest.join(rel);
        if i < 15 {
            let data = fs::read(&p).unwrap();
            fs::write(temp_of(rel), &data[..data.len() / 2]).unwrap();
            fs::set_permissions(temp_of(rel), fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::remove_file(&p).unwrap();
    }
    // 10 cut short at their name (as if written by something else), 10 with another mtime
    // (same content), 10 with another mode.
    for rel in &files[40..50] {
        let data = fs::read(dest.join(rel)).unwrap();
        let f = fs::File::options()
            .write(true)
            .open(dest.join(rel))
            .unwrap();
        f.set_len(data.len() as u64 / 2).unwrap();
    }
    for rel in &files[50..60] {
        let f = fs::File::options()
            .write(true)
            .open(dest.join(rel))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
    }
    for rel in &files[60..70] {
        let mode = fs::metadata(dest.join(rel)).unwrap().permissions().mode() & 0o7777;
        fs::set_permissions(dest.join(rel), fs::Permissions::from_mode(mode ^ 0o010)).unwrap();
    }
    // Names that look like temp files but are not this restore's: of a file the manifest does
    // not have, and a directory under a temp name of one it has. Both stay.
    let decoy_file = dest
        .join(&files[100])
        .with_file_name(".notours.peerstore-00000000abcd.tmp");
    fs::write(&decoy_file, b"user data").unwrap();
    let decoy_dir = temp_of(&files[101]);
    fs::create_dir(&decoy_dir).unwrap();

    let s = restore_tree_with(&repo, &m, &dest, &hidden(), &NOT_ROOT)
        .await
        .unwrap();
    assert_eq!(s.files, n);
    assert_eq!(s.files_skipped, n - 70, "{s:?}");
    assert_eq!(s.temp_files_removed, 15);
    assert!(s.packs_fetched >= 1);
    // The decoys are still there (and, once set aside, the tree is the source's).
    let decoys: Vec<String> = [&decoy_file, &decoy_dir]
        .iter()
        .map(|p| p.strip_prefix(&dest).unwrap().display().to_string())
        .collect();
    let mut have = snapshot(&dest);
    for d in &decoys {
        assert!(have.remove(d).is_some(), "{d} was removed");
    }
    assert_eq!(snapshot(&src), have);
}

/// A store that counts pack reads and after `open` of them never answers again (the restore
/// hangs there, as when it is interrupted): `blocked` counts the reads that hang.
fn gate(inner: &MemStore, open: u64, blocked: Arc<AtomicU64>) -> HookedStore {
    let reads = Arc::new(AtomicU64::new(0));
    HookedStore::new(
        inner.clone(),
        Arc::new(move |_| {
            let hang = reads.fetch_add(1, Ordering::SeqCst) >= open;
            if hang {
                blocked.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move {
                if hang {
                    futures::future::pending::<()>().await;
                }
            })
        }),
    )
}

/// A restore stopped halfway (its task aborted while it waits for a pack): every name that
/// appeared holds its whole file with its final metadata, the temp files of the files in
/// progress go away, and a rerun skips exactly the files that were there and restores the
/// rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_stopped_halfway_leaves_only_whole_files_and_the_rerun_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let n = make_tree(&src, 3000, 2, 13) as u64;
    let store = MemStore::new();
    let m = backup_of(&store, 3, &src).await;
    let packs = distinct_packs(&m);
    assert!(packs >= 4, "{packs} packs");
    let blocked = Arc::new(AtomicU64::new(0));
    let repo = Repo::new(
        Arc::new(gate(&store, packs / 2, blocked.clone())),
        identity(3),
    );
    let progress = hidden();
    let restore = restore_tree_with(&repo, &m, &dest, &progress, &NOT_ROOT);
    let stop = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while blocked.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the restore never reached the gate"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let what was fetched before the gate go on for a while (a batch of written files
        // waits at most a second for its fsync and names), then stop the restore: dropping
        // its future is what an interrupted `restore` does.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    tokio::select! {
        r = restore => panic!("the restore ended: {r:?}"),
        () = stop => {}
    }
    // Writers already running finish their file or remove its temp file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !temp_files_below(&dest).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", temp_files_below(&dest));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Whatever has its name is whole, with its final mode and mtime.
    let (want, have) = (snapshot(&src), snapshot(&dest));
    let mut present = 0u64;
    for (k, v) in &have {
        if v.0 == 'f' {
            assert_eq!(v, &want[k], "{k}");
            present += 1;
        }
    }
    println!("{present} of {n} files restored before the stop");
    assert!(present < n);
    // The rerun (the gate stays open now) skips those and restores the rest.
    let repo2 = Repo::new(Arc::new(gate(&store, u64::MAX, blocked)), identity(3));
    let s: RestoreSummary = restore_tree_with(&repo2, &m, &dest, &hidden(), &NOT_ROOT)
        .await
        .unwrap();
    assert_eq!((s.files, s.files_skipped), (n, present), "{s:?}");
    assert_same_tree(&src, &dest);
}
