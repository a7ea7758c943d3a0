//! Issue 12, two-way sync between a user's devices: two clients with one key (two config and
//! data directories) each run `sync` on a folder of their own through a 5-node ring. Changes on
//! either side (create, modify, rename, delete, mkdir, rmdir, symlink, chmod) reach the other;
//! the same file edited on both sides keeps both contents (one at the path, one as a version);
//! deleted on one side and edited on the other keeps the edit; a device stopped while the other
//! changes 20 files catches up when it starts again.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crypto::Identity;
use peerstore_client::devices;
use peerstore_client::model::EntryKind;
use peerstore_client::repo::Repo;
use peerstore_client::store::RingStore;
use peerstore_testkit::Cluster;

struct Watcher(Child);

impl Watcher {
    fn start(c: &Client, dir: &Path) -> Watcher {
        let child = c
            .command(&["sync", dir.to_str().unwrap(), "--debounce-ms", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Watcher(child)
    }

    fn stop(mut self) {
        let pid = self.0.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let start = Instant::now();
        while self.0.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "watcher did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a folder holds, for comparing: path -> (kind, mode, content or link target).
fn state(dir: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, Vec<u8>)>) {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o777;
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).unwrap();
                out.insert(rel, ('l', 0, t.to_string_lossy().as_bytes().to_vec()));
            } else if m.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Waits until `a` and `b` hold the same (and `check` holds on it).
fn wait_equal(a: &Path, b: &Path, within: Duration, what: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let (sa, sb) = (state(a), state(b));
        if sa == sb {
            return t0.elapsed();
        }
        if t0.elapsed() > within {
            let only_a: Vec<_> = sa.keys().filter(|k| sb.get(*k) != sa.get(*k)).collect();
            let only_b: Vec<_> = sb.keys().filter(|k| sa.get(*k) != sb.get(*k)).collect();
            panic!("{what}: folders still differ after {within:?}: a {only_a:?}, b {only_b:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The directory holding `folder` (outside the synced folder).
fn tmp_dir_of(folder: &Path) -> PathBuf {
    folder.parent().unwrap().to_path_buf()
}

fn second_device(tmp: &Path, first: &Client, name: &str) -> Client {
    let c = Client::new(tmp, name, &first.peer);
    fs::create_dir_all(&c.config).unwrap();
    for e in fs::read_dir(&first.config).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), c.config.join(e.file_name())).unwrap();
        }
    }
    c
}

/// A settled 5-node ring, and two devices of one user (`first` made the key, `second` has a
/// copy of its configuration), each with an empty folder and talking to another node.
async fn two_devices(
    first: &str,
    second: &str,
) -> (
    Cluster,
    tempfile::TempDir,
    (PathBuf, Client),
    (PathBuf, Client),
) {
    let cluster = Cluster::start(5, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    let tmp = tempfile::tempdir().unwrap();
    let (da, db) = (tmp.path().join(first), tmp.path().join(second));
    fs::create_dir_all(&da).unwrap();
    fs::create_dir_all(&db).unwrap();
    let a = Client::new(tmp.path(), first, &cluster.nodes[0].addr.to_string());
    a.ok(&["init"]);
    let mut b = second_device(tmp.path(), &a, second);
    b.peer = cluster.nodes[3].addr.to_string();
    (cluster, tmp, (da, a), (db, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_keep_one_folder() {
    let (cluster, _tmp, (da, a), (db, b)) = two_devices("laptop", "desktop").await;

    fs::write(da.join("notes.txt"), b"from the laptop").unwrap();
    fs::create_dir_all(da.join("src/deep")).unwrap();
    fs::write(da.join("src/deep/main.rs"), b"fn main() {}").unwrap();
    fs::set_permissions(
        da.join("src/deep/main.rs"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("deep/main.rs", da.join("src/link")).unwrap();
    let wa = Watcher::start(&a, &da);
    let mut wb = Watcher::start(&b, &db);
    let t = wait_equal(&da, &db, Duration::from_secs(30), "initial");
    println!("laptop's folder on the desktop after {t:?}");

    // Changes on the desktop reach the laptop: modify, create, mkdir, chmod.
    fs::write(db.join("notes.txt"), b"edited on the desktop").unwrap();
    fs::create_dir_all(db.join("photos")).unwrap();
    fs::write(db.join("photos/cat.jpg"), random_bytes(7, 300_000)).unwrap();
    fs::set_permissions(db.join("notes.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let t = wait_equal(&da, &db, Duration::from_secs(20), "desktop changes");
    println!("desktop's changes on the laptop after {t:?}");
    assert_eq!(
        fs::read(da.join("notes.txt")).unwrap(),
        b"edited on the desktop"
    );

    // Rename, delete, rmdir on the laptop.
    fs::rename(da.join("photos/cat.jpg"), da.join("cat.jpg")).unwrap();
    fs::remove_dir(da.join("photos")).unwrap();
    fs::remove_file(da.join("src/link")).unwrap();
    let t = wait_equal(&da, &db, Duration::from_secs(20), "rename and delete");
    println!("rename, delete, rmdir on the desktop after {t:?}");
    assert!(!db.join("photos").exists() && db.join("cat.jpg").exists());

    // The same file edited on both sides at once: both contents survive.
    fs::write(da.join("notes.txt"), b"laptop's concurrent edit").unwrap();
    fs::write(db.join("notes.txt"), b"desktop's concurrent edit").unwrap();
    // Deleted on one side, edited on the other: the edit stays.
    fs::remove_file(da.join("src/deep/main.rs")).unwrap();
    fs::write(db.join("src/deep/main.rs"), b"fn main() { edited(); }").unwrap();
    wait_equal(&da, &db, Duration::from_secs(30), "concurrent edits");
    let at_path = fs::read(da.join("notes.txt")).unwrap();
    assert_eq!(
        fs::read(da.join("src/deep/main.rs")).unwrap(),
        b"fn main() { edited(); }"
    );
    // The other content is a version of the path, in the devices' synced trees.
    let id = Identity::open(
        &fs::read(a.config.join("identity.key")).unwrap(),
        PASS.as_bytes(),
    )
    .unwrap();
    let ring = RingStore::connect(
        cluster.nodes[1].addr.clone(),
        Duration::from_secs(20),
        Some(cluster.identity(peerstore_proto::Role::User)),
    )
    .await
    .unwrap();
    let repo = Repo::new(Arc::new(ring), Arc::new(id));
    let listed = devices::list(&repo).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let other_content: &[u8] = if at_path == b"laptop's concurrent edit" {
        b"desktop's concurrent edit"
    } else {
        assert_eq!(at_path, b"desktop's concurrent edit");
        b"laptop's concurrent edit"
    };
    let t0 = Instant::now();
    loop {
        let mut found = false;
        for d in &listed {
            let Some(h) = devices::head(&repo, &d.id).await.unwrap() else {
                continue;
            };
            let tree = devices::load(&repo, &d.id, &h).await.unwrap();
            let st = &tree.paths[&vec!["notes.txt".to_string()]];
            found |= st.versions().iter().any(|v| {
                matches!(&v.entry, Some(e) if matches!(&e.kind,
                    EntryKind::File { size, .. } if *size == other_content.len() as u64))
            });
        }
        if found {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the losing edit is not kept as a version"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "concurrent edits: {:?} at the path, the other kept as a version",
        String::from_utf8_lossy(&at_path)
    );
    // `ls --versions` lists it, `getfile --version` brings it back.
    let rows = b.json(&["ls", "--versions", "notes.txt"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["size"], other_content.len(), "{rows:?}");
    let got = tmp_dir_of(&da).join("version-1.txt");
    b.ok(&[
        "getfile",
        "--version",
        "1",
        "notes.txt",
        got.to_str().unwrap(),
    ]);
    assert_eq!(fs::read(&got).unwrap(), other_content);
    let out = b.run(&[
        "getfile",
        "--version",
        "2",
        "notes.txt",
        got.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a version that does not exist");

    // The desktop is off while the laptop changes 20 files; it catches up when it starts.
    wb.stop();
    for i in 0..20 {
        fs::write(da.join(format!("batch-{i:02}.txt")), format!("file {i}")).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    wb = Watcher::start(&b, &db);
    let t = wait_equal(&da, &db, Duration::from_secs(30), "catch up");
    println!("the desktop caught up on 20 changes {t:?} after it started");

    // `devices` lists both, this one marked.
    let out = a.json(&["devices"]);
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows.iter().filter(|r| r["this_device"] == true).count(), 1);
    assert!(
        rows.iter().all(|r| r["last_sync_ns"].as_i64().is_some()),
        "{out}"
    );
    wa.stop();
    wb.stop();
}

/// One side's random operations inside its own subfolder (so the expected merge is exact: the
/// union of both sides' models), interleaved with the other side's.
struct Side {
    root: PathBuf,
    top: &'static str,
    /// Relative path -> content (`None`: a directory).
    model: BTreeMap<String, Option<Vec<u8>>>,
    rng: rand_chacha::ChaCha8Rng,
    n: u32,
}

impl Side {
    fn new(root: &Path, top: &'static str, seed: u64) -> Side {
        use rand::SeedableRng;
        fs::create_dir_all(root.join(top)).unwrap();
        let mut model = BTreeMap::new();
        model.insert(top.to_string(), None);
        Side {
            root: root.to_path_buf(),
            top,
            model,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            n: 0,
        }
    }

    fn dirs(&self) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn files(&self) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// One random operation: create, modify, rename, delete, mkdir or rmdir.
    fn step(&mut self) -> String {
        use rand::seq::SliceRandom;
        use rand::Rng;
        self.n += 1;
        let (dirs, files) = (self.dirs(), self.files());
        let op = self.rng.gen_range(0..6);
        let fresh = format!("{}-{}", self.top, self.n);
        match op {
            1 if !files.is_empty() => {
                let f = files.choose(&mut self.rng).unwrap().clone();
                let data = random_bytes(u64::from(self.n), self.rng.gen_range(1..20_000));
                fs::write(self.root.join(&f), &data).unwrap();
                self.model.insert(f.clone(), Some(data));
                format!("modify {f}")
            }
            2 if !files.is_empty() => {
                let f = files.choose(&mut self.rng).unwrap().clone();
                let d = dirs.choose(&mut self.rng).unwrap().clone();
                let to = format!("{d}/{fresh}.moved");
                fs::rename(self.root.join(&f), self.root.join(&to)).unwrap();
                let c = self.model.remove(&f).unwrap();
                self.model.insert(to.clone(), c);
                format!("rename {f} -> {to}")
            }
            3 if !files.is_empty() => {
                let f = files.choose(&mut self.rng).unwrap().clone();
                fs::remove_file(self.root.join(&f)).unwrap();
                self.model.remove(&f);
                format!("delete {f}")
            }
            4 => {
                let d = dirs.choose(&mut self.rng).unwrap().clone();
                let to = format!("{d}/{fresh}.d");
                fs::create_dir(self.root.join(&to)).unwrap();
                self.model.insert(to.clone(), None);
                format!("mkdir {to}")
            }
            5 => {
                // An empty directory other than the top.
                let empty: Vec<String> = dirs
                    .iter()
                    .filter(|d| *d != self.top)
                    .filter(|d| !self.model.keys().any(|k| k.starts_with(&format!("{d}/"))))
                    .cloned()
                    .collect();
                match empty.choose(&mut self.rng) {
                    Some(d) => {
                        fs::remove_dir(self.root.join(d)).unwrap();
                        self.model.remove(d);
                        format!("rmdir {d}")
                    }
                    None => "rmdir: none empty".into(),
                }
            }
            _ => {
                let d = dirs.choose(&mut self.rng).unwrap().clone();
                let f = format!("{d}/{fresh}.txt");
                let data = random_bytes(u64::from(self.n) + 1000, self.rng.gen_range(0..50_000));
                fs::write(self.root.join(&f), &data).unwrap();
                self.model.insert(f.clone(), Some(data));
                format!("create {f}")
            }
        }
    }
}

/// Acceptance 1: 50 random operations on each side, interleaved (each side in a subfolder of
/// its own, so the expected merge is exactly the union of the two sides' models): both folders
/// end identical and equal to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_random_operations_on_each_side_merge() {
    use rand::{Rng, SeedableRng};
    let (_cluster, _tmp, (da, a), (db, b)) = two_devices("one", "two").await;
    let wa = Watcher::start(&a, &da);
    let wb = Watcher::start(&b, &db);
    let seed = peerstore_testkit::test_seed("fifty_random_operations_on_each_side_merge");
    println!("seed {seed} (PEERSTORE_TEST_SEED to replay)");
    let mut sa = Side::new(&da, "a", seed);
    wait_equal(&da, &db, Duration::from_secs(30), "side a's folder");
    let mut sb = Side::new(&db, "b", seed ^ 0x5eed);
    let mut pause = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(99));
    for i in 0..50 {
        let (x, y) = (sa.step(), sb.step());
        if i % 10 == 0 {
            println!("op {i}: one: {x}; two: {y}");
        }
        std::thread::sleep(Duration::from_millis(pause.gen_range(0..150)));
    }
    let t = wait_equal(
        &da,
        &db,
        Duration::from_secs(60),
        "after 50 operations each",
    );
    println!("both folders equal {t:?} after the last operation");
    let got = state(&da);
    let mut want: BTreeMap<String, Option<Vec<u8>>> = sa.model.clone();
    want.extend(sb.model.clone());
    let got_simple: BTreeMap<String, Option<Vec<u8>>> = got
        .into_iter()
        .map(|(p, (kind, _, c))| (p, (kind == 'f').then_some(c)))
        .collect();
    assert_eq!(
        got_simple.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the paths of the expected merge"
    );
    assert!(got_simple == want, "the contents of the expected merge");
    println!("{} paths, as expected", want.len());
    wa.stop();
    wb.stop();
}

/// Acceptance 5 (measured on the shared user root): two devices publish snapshots at the same
/// moment, 100 times each, through different nodes; every snapshot a publish reported stored
/// must be reachable from the final root (none orphaned by a lost race).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishes_orphan_no_snapshot() {
    let (cluster, _tmp, (_, a), _) = two_devices("racer-1", "racer-2").await;
    let id = Arc::new(
        Identity::open(
            &fs::read(a.config.join("identity.key")).unwrap(),
            PASS.as_bytes(),
        )
        .unwrap(),
    );
    let mut repos = Vec::new();
    for n in [0, 3] {
        let ring = RingStore::connect(
            cluster.nodes[n].addr.clone(),
            Duration::from_secs(20),
            Some(cluster.identity(peerstore_proto::Role::User)),
        )
        .await
        .unwrap()
        .with_writer(id.clone());
        repos.push(Repo::new(Arc::new(ring), id.clone()));
    }
    let rounds = 100;
    let t0 = Instant::now();
    let tasks: Vec<_> = repos
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.clone();
            tokio::spawn(async move {
                let mut keys = Vec::new();
                let mut gave_up = 0;
                for n in 0..rounds {
                    let m = peerstore_client::model::Manifest::new(vec![]);
                    // A publish that lost too many races in a row says so; like the watcher,
                    // try again.
                    loop {
                        match r
                            .publish(&m, &format!("/device-{i}"), &format!("race {n}"))
                            .await
                        {
                            Ok((s, _)) => {
                                keys.push(s.key);
                                break;
                            }
                            Err(e) if e.to_string().contains("try again") => gave_up += 1,
                            Err(e) => panic!("publish: {e}"),
                        }
                    }
                }
                (keys, gave_up)
            })
        })
        .collect();
    let (mut published, mut gave_up) = (Vec::new(), 0);
    for t in tasks {
        let (keys, g) = t.await.unwrap();
        published.extend(keys);
        gave_up += g;
    }
    println!("publishes that lost 6 races in a row and were tried again: {gave_up}");
    let reachable: std::collections::BTreeSet<[u8; 32]> = repos[0]
        .snapshots()
        .await
        .unwrap()
        .iter()
        .map(|s| s.key)
        .collect();
    let orphans = published.iter().filter(|k| !reachable.contains(*k)).count();
    println!(
        "{} snapshots published by two devices at once in {:?}; {} reachable from the root, {orphans} orphaned",
        published.len(),
        t0.elapsed(),
        reachable.len()
    );
    assert_eq!(orphans, 0, "snapshots orphaned by racing publishes");
}
