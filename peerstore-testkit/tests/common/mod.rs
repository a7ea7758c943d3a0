//! Helpers of the end-to-end tests: run the real `peerstore-client` binary against real
//! `peerstore-node` processes (peerstore_testkit), generate trees, compare trees.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use rand::{RngCore, SeedableRng};

pub const PASS: &str = "correct horse battery staple";

pub const CHUNK_MIN: usize = 256 * 1024;
pub const CHUNK_AVG: usize = 1024 * 1024;
pub const CHUNK_MAX: usize = 3 * 1024 * 1024;

/// One user's client: its own config and data directories.
#[derive(Clone, Debug)]
pub struct Client {
    pub config: PathBuf,
    pub data: PathBuf,
    pub peer: String,
    pub pass: String,
    /// A file with the ring credential (an administrator's, so repair/audit/scrub work too).
    pub credential: Option<PathBuf>,
}

impl Client {
    pub fn new(root: &Path, name: &str, peer: &str) -> Client {
        let credential =
            peerstore_testkit::invite_for_node(peer, peerstore_proto::Role::Admin, name).map(
                |line| {
                    let path = root.join(format!("{name}.credential"));
                    fs::write(&path, line).expect("write credential");
                    path
                },
            );
        Client {
            config: root.join(format!("{name}-config")),
            data: root.join(format!("{name}-data")),
            peer: peer.to_string(),
            pass: PASS.to_string(),
            credential,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(peerstore_testkit::client_bin());
        c.arg("--config-dir")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--peer")
            .arg(&self.peer);
        if let Some(cred) = &self.credential {
            c.arg("--credential").arg(cred);
        }
        c.args(args)
            .env("PEERSTORE_PASSPHRASE", &self.pass)
            .env_remove("PEERSTORE_PEER")
            .stdin(Stdio::null());
        c
    }

    /// Runs a command and returns its output (whatever the exit status).
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("spawn peerstore-client")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "peerstore-client {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs a `--json` command that must succeed and parses its (last) stdout line.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        let line = out.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn set_mtime(p: &Path, secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// The tree of acceptance test 1, with `marker` inside the text files.
pub fn make_tree(root: &Path, marker: &str, big: usize) {
    fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    fs::create_dir_all(root.join("empty dir/empty child")).unwrap();
    fs::create_dir_all(root.join("ünïcødé dïr")).unwrap();
    fs::write(root.join("zero bytes"), b"").unwrap();
    fs::write(root.join("one byte"), b"x").unwrap();
    let sizes = [
        CHUNK_MIN - 1,
        CHUNK_MIN,
        CHUNK_MIN + 1,
        CHUNK_AVG - 1,
        CHUNK_AVG + 1,
        CHUNK_MAX - 1,
        CHUNK_MAX,
        CHUNK_MAX + 1,
    ];
    for (i, n) in sizes.iter().enumerate() {
        fs::write(
            root.join(format!("nested/size-{n}.bin")),
            random_bytes(100 + i as u64, *n),
        )
        .unwrap();
    }
    fs::write(root.join("nested/deeper/big.bin"), random_bytes(7, big)).unwrap();
    for (i, name) in [
        "notes.txt",
        "ünïcødé dïr/fïlé wïth späces.txt",
        "nested/deeper/deepest/readme.md",
    ]
    .iter()
    .enumerate()
    {
        fs::write(
            root.join(name),
            format!("line one\n{marker} number {i}\nthe end\n").repeat(3),
        )
        .unwrap();
    }
    fs::set_permissions(root.join("notes.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("nested/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        root.join("nested/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    set_mtime(&root.join("one byte"), 1_234_567_890);
    std::os::unix::fs::symlink("nested/run.sh", root.join("link to run")).unwrap();
    fs::set_permissions(root.join("empty dir"), fs::Permissions::from_mode(0o750)).unwrap();
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap().to_string_lossy().to_string());
        if e.file_type().unwrap().is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Asserts two trees are identical: names, kinds, content, mode, mtime, symlink targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    walk(a, a, &mut ea);
    walk(b, b, &mut eb);
    assert_eq!(ea, eb, "different entries");
    for rel in &ea {
        let (pa, pb) = (a.join(rel), b.join(rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).unwrap(),
            fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "kind of {rel}");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "{rel}"
            );
            continue;
        }
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {rel}");
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {rel}"
        );
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "size of {rel}");
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "content of {rel}"
            );
        }
    }
}

/// Calls `f` with the path of every regular file under `dir`.
pub fn each_file(dir: &Path, mut f: impl FnMut(&Path)) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                f(&p);
            }
        }
    }
}

/// Every regular file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> (usize, Vec<PathBuf>) {
    let mut scanned = 0;
    let mut hits = Vec::new();
    each_file(dir, |p| {
        if let Ok(bytes) = fs::read(p) {
            scanned += 1;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.to_path_buf());
            }
        }
    });
    (scanned, hits)
}

/// The regular files below `dir` (paths relative to it) with their bytes.
pub fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    each_file(dir, |p| {
        let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        out.insert(rel, fs::read(p).unwrap_or_default());
    });
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A ring of `n` nodes started with `extra`, once it is ideal (60 s at most; the nodes'
/// logs in the failure message).
pub async fn ideal_ring(n: usize, extra: &[&str]) -> peerstore_testkit::Cluster {
    let cluster = peerstore_testkit::Cluster::start(n, extra).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    cluster
}

/// The node logs of a cluster, for failure messages.
pub fn node_logs(cluster: &peerstore_testkit::Cluster) -> String {
    let mut s = String::new();
    for n in &cluster.nodes {
        let log = fs::read_to_string(n.data_dir.join("node.log")).unwrap_or_default();
        let tail: Vec<_> = log.lines().rev().take(30).collect();
        s.push_str(&format!("--- {} ---\n", n.data_dir.display()));
        for l in tail.into_iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// A number field of a JSON answer.
pub fn u(v: &serde_json::Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// A float field of a JSON answer.
pub fn f(v: &serde_json::Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {field} in {v}"))
}

/// `du --json`'s entanglement object.
pub fn ent_du(c: &Client) -> serde_json::Value {
    let du = c.json(&["du"]);
    let e = du["entanglement"].clone();
    assert!(e.is_object(), "du has no entanglement figures: {du}");
    e
}

/// A tree of about `mib` MiB of mixed file sizes (empty to 6 MiB) in 8 directories.
pub fn make_mixed_tree(root: &Path, mib: u64, seed: u64) -> (u64, u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let target = mib << 20;
    let (mut total, mut files) = (0u64, 0u64);
    while total < target {
        let class = rng.next_u64() % 10;
        let len = match class {
            0 => 0,
            1..=4 => rng.next_u64() % (16 << 10),
            5..=7 => (16 << 10) + rng.next_u64() % (1 << 20),
            _ => (1 << 20) + rng.next_u64() % (5 << 20),
        }
        .min(target - total);
        let dir = root.join(format!("d{}", files % 8));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{files:05}.bin")),
            random_bytes(seed.wrapping_mul(1_000_003) + files, len as usize),
        )
        .unwrap();
        total += len;
        files += 1;
    }
    (files, total)
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, so punched holes and sparse
/// files count as what they are), without the node's log.
pub fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_dir() {
            total += disk_bytes(&e.path());
        } else if e.file_name() != "node.log" {
            total += md.blocks() * 512;
        }
    }
    total
}

/// [`disk_bytes`] of every node's data directory.
pub fn ring_disk_bytes(c: &peerstore_testkit::Cluster) -> u64 {
    c.nodes.iter().map(|n| disk_bytes(&n.data_dir)).sum()
}

/// Issue 11 item 8: `du --json`'s stored bytes are what the live nodes' disks hold, as this
/// test measures them (within 2% and 1 MiB, read right after each other; while the ring still
/// moves data, such as copies dropped or holes punched a moment later, both are read again, for
/// up to 30 s). Returns (du's figure, the disks').
pub fn du_matches_disks(c: &peerstore_testkit::Cluster, client: &Client) -> (u64, u64) {
    let mut last = String::new();
    for _ in 0..30 {
        let du = client.json(&["du"]);
        let stored = du["stored_bytes"].as_u64().expect("du stored_bytes");
        let disks: u64 = c.live().map(|n| disk_bytes(&n.data_dir)).sum();
        assert_eq!(
            du["nodes"].as_array().map(Vec::len),
            Some(c.live().count()),
            "du counts every live node: {du}"
        );
        if stored.abs_diff(disks) <= disks / 50 + (1 << 20) {
            return (stored, disks);
        }
        last = format!("du says {stored} bytes stored, the disks hold {disks}: {du}");
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{last}");
}

/// Waits up to `within` until every stored block is at one copy with no replicated copy left
/// (`want` single copies; `None`: as many as du's codewords hold). Returns du's entanglement
/// figures or what was last seen.
pub async fn wait_single_copies(
    alice: &Client,
    want: Option<u64>,
    within: Duration,
) -> Result<serde_json::Value, String> {
    peerstore_testkit::wait_until(within, || async {
        let e = ent_du(alice);
        let want = want.unwrap_or_else(|| u(&e, "codewords") * u(&e, "stored_per_codeword"));
        if u(&e, "parity_copies_replicated") == 0 && u(&e, "parity_copies_single") == want {
            Ok(())
        } else {
            Err(format!("want 0 replicated, {want} single copies: {e}"))
        }
    })
    .await?;
    Ok(ent_du(alice))
}

/// A ring of `n` nodes with the node's defaults, except that replica management runs on
/// periods a test can wait for: every second, blocks older than 5 s leave the tail, copies are
/// dropped after 5 s (the default minimum age is 10 minutes; the harness's is 0, which hides
/// copies that anti-entropy keeps bringing back), and management waits for 2 s without client
/// data rather than 10. Waits until the ring is ideal.
pub async fn managed_ring(n: usize) -> peerstore_testkit::Cluster {
    managed_ring_with(n, "2000", &[]).await
}

/// [`managed_ring`] waiting `yield_ms` for clients to pause, with `extra` node flags.
pub async fn managed_ring_with(
    n: usize,
    yield_ms: &str,
    extra: &[&str],
) -> peerstore_testkit::Cluster {
    let mut args = vec![
        "--replica-every-ms",
        "1000",
        "--replica-max-age-ms",
        "5000",
        "--delete-min-age-ms",
        "5000",
        "--replica-yield-ms",
        yield_ms,
    ];
    args.extend_from_slice(extra);
    let cluster = peerstore_testkit::Cluster::start(n, &args).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    cluster
}

/// The pack keys the client's dedup cache names (its file: an 8-byte header, then records of
/// chunk id, pack key, offset, length).
pub fn cached_packs(data: &Path) -> Vec<peerstore_proto::BlockKey> {
    let users = data.join("users");
    let dir = fs::read_dir(&users)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = fs::read(dir.join("known-blocks")).unwrap();
    let mut packs: Vec<peerstore_proto::BlockKey> = bytes[8..]
        .chunks_exact(72)
        .map(|r| peerstore_proto::BlockKey(r[32..64].try_into().unwrap()))
        .collect();
    packs.sort();
    packs.dedup();
    packs
}
