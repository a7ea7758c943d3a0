//! The entangled ring driven from the client (docs/ENTANGLEMENT-RING.md, "From the client"):
//! real `peerstore-node` processes on 127.0.0.1 with the default code (systematic (4, 8, 8):
//! 4 sources and 8 parities stored per codeword), r = 3,
//! and the real `peerstore-client` binary for backup, du, scrub, repair, audit and restore.
//!
//! - `entangled_backup_scrub_kill_repair_restore`: 16 nodes, B = 256 KiB, a generated tree of
//!   `PEERSTORE_ENT_MIB` MiB (default 16) backed up, scrubbed to one copy per parity, 4 nodes
//!   chosen at random (seed printed; `PEERSTORE_ENT_SEED` replays it) killed at once, repaired,
//!   audited and restored byte-identical.
//! - `admin_commands_on_documents_put_directly`: 6 nodes, B = 4 KiB, documents stored with
//!   `ClientRequest::PutDocument` through the harness, so the admin commands are tested whatever the
//!   client's backup stores.
//!
//! Needs the node binary built beside the tests: `cargo build --release -p peerstore-node`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use peerstore_node::entangled::ParitySizes;
use peerstore_proto::{BlockKey, ClientRequest, ClientResponse};
use peerstore_testkit::{arc_share, pick_victims, ring_order, wait_until, Cluster, MAINTENANCE_MS};
use rand::{RngCore, SeedableRng};
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const S: u64 = 4;
/// Stored blocks per codeword: systematic (4, 8, 8) stores 4 sources and 8 parities (the
/// "parity" names below, like du's `parity_copies_*`, count them all).
const P: u64 = 12;
const R: u64 = 3;

/// Node options of an entangled ring with block size `bs` (default request timeout: a
/// ring-wide repair or scrub inside one request is allowed to run long by itself).
fn ring_args(bs: &str) -> Vec<String> {
    // STEP_RING_ARGS keeps the background repair worker out of the way: the client's
    // `repair` does it.
    ["--block-size", bs]
        .iter()
        .chain(peerstore_testkit::STEP_RING_ARGS)
        .map(|s| s.to_string())
        .collect()
}

/// Waits until exactly `parities` parity files are on disk, each as one single copy and no
/// replicated copy (what a full scrub leaves).
async fn wait_single_copies(cluster: &Cluster, psize: ParitySizes, parities: u64) {
    wait_until(Duration::from_secs(60), || async {
        let d = parity_files(cluster, psize);
        let bad = d.values().filter(|&&(r, s)| (r, s) != (0, 1)).count();
        if bad == 0 && d.len() as u64 == parities {
            Ok(())
        } else {
            Err(format!(
                "{bad} of {} parities not at one single copy on disk",
                d.len()
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Parity files on the disks of the live nodes (a parity is recognised by its size):
/// key -> (copies in replicated stores, copies in single-copy stores).
fn parity_files(c: &Cluster, sizes: ParitySizes) -> BTreeMap<BlockKey, (u64, u64)> {
    let mut out: BTreeMap<BlockKey, (u64, u64)> = BTreeMap::new();
    for n in c.live() {
        for (sub, single) in [("store", false), ("single", true)] {
            let records = peerstore_node::store::records_on_disk(&n.data_dir.join(sub));
            for r in records.into_iter().flatten() {
                if !sizes.matches(r.len) {
                    continue;
                }
                let e = out.entry(r.key).or_default();
                if single {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
            }
        }
    }
    out
}

/// Waits until du counts `want` parity copies (replicated, single); returns du.
async fn wait_copies(c: &Client, want: impl Fn(&Value) -> (u64, u64)) -> Value {
    try_wait_copies(c, want, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{}", e.0))
}

/// As [`wait_copies`]; on time-out the error names the last du.
async fn try_wait_copies(
    c: &Client,
    want: impl Fn(&Value) -> (u64, u64),
    within: Duration,
) -> Result<Value, (String, Value)> {
    let mut last = Value::Null;
    let r = wait_until(within, || {
        let e = ent_du(c);
        let (rep, single) = want(&e);
        let ok =
            u(&e, "parity_copies_replicated") == rep && u(&e, "parity_copies_single") == single;
        last = e.clone();
        async move {
            if ok {
                Ok(())
            } else {
                Err(format!("want ({rep}, {single}) parity copies: {e}"))
            }
        }
    })
    .await;
    match r {
        Ok(_) => Ok(last),
        Err(e) => Err((e, last)),
    }
}

/// The sizes of the ring's parities, from du's parameters (a short codeword's parities are
/// shorter than a full one's: its shard).
fn parity_sizes(e: &Value) -> ParitySizes {
    let n = |k: &str| u16::try_from(u(e, k)).unwrap();
    ParitySizes::of(entangle::Params::new(
        n("s"),
        n("t"),
        n("p"),
        u32::try_from(u(e, "block_size")).unwrap(),
    ))
}

/// Checks du's overhead against RECAST's p/s x copies: exactly `parity bytes / document
/// bytes`, and at most `slack` above `expected` (the headers and the alignment of each
/// document's last codeword's shard are all that may add to it).
fn check_overhead(e: &Value, expected: f64, slack: f64) -> f64 {
    let o = f(e, "overhead");
    let (cw, logical) = (u(e, "codewords"), u(e, "logical_bytes"));
    let exact = u(e, "parity_bytes") as f64 / logical as f64;
    assert!((o - exact).abs() < 1e-6, "overhead {o} != {exact}: {e}");
    assert!(
        o >= expected && o <= expected * slack,
        "overhead x{o:.3} not within [{expected}, {:.2}] ({cw} codewords): {e}",
        expected * slack
    );
    o
}

/// `k` distinct node indexes out of `n`, from `seed`.
fn random_victims(seed: u64, n: usize, k: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut v = all[..k].to_vec();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entangled_backup_scrub_kill_repair_restore() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let mib: u64 = std::env::var("PEERSTORE_ENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let seed: u64 = std::env::var("PEERSTORE_ENT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000)
                .unwrap_or(1)
        });
    println!("seed {seed} (replay: PEERSTORE_ENT_SEED={seed}), {mib} MiB, 16 nodes, systematic (4,8,8), B = 256 KiB, r = 3");
    let tmp = tempfile::tempdir().unwrap();
    let args = ring_args("256K");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(16, &args).await;
    cluster
        .wait_ideal(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    println!("ring of 16 ideal after {:?}", t0.elapsed());

    let src = tmp.path().join("src");
    let (files, bytes) = make_mixed_tree(&src, mib, seed);
    let mut alice = Client::new(tmp.path(), "alice", &cluster.nodes[0].addr.to_string());
    alice.ok(&["init"]);
    let t = Instant::now();
    let b = alice.json(&["backup", src.to_str().unwrap()]);
    let t_backup = t.elapsed();
    println!(
        "backup of {files} files ({bytes} bytes) in {t_backup:?}: {:.1} MiB/s; {b}",
        bytes as f64 / 1048576.0 / t_backup.as_secs_f64()
    );
    assert_eq!(u(&b, "files"), files, "{b}");

    // --- du before scrub: every parity at r copies, overhead p/s x r.
    let e0 = ent_du(&alice);
    let cw = u(&e0, "codewords");
    assert_eq!(
        (
            e0["kind"].as_str(),
            u(&e0, "s"),
            u(&e0, "stored_per_codeword"),
            u(&e0, "block_size")
        ),
        (Some("step"), S, P, 256 << 10),
        "{e0}"
    );
    assert!(
        cw > 0 && u(&e0, "logical_bytes") >= bytes,
        "the backup is not entangled (no codewords carrying the {bytes} bytes): {e0}"
    );
    // Exactly r copies once the ring's clean-up has dropped the copies that nodes outside a
    // parity's replica set got while the ring was busy; at 256 MiB that can take longer than
    // the wait, and then every parity must have at least r copies.
    let e0 = match try_wait_copies(
        &alice,
        |e| (u(e, "codewords") * P * R, 0),
        Duration::from_secs(120),
    )
    .await
    {
        Ok(e) => e,
        Err((msg, e)) => {
            let extra = u(&e, "parity_copies_replicated") as i64 - (cw * P * R) as i64;
            assert!(extra > 0, "{msg}");
            println!("note: {extra} parity copies beyond r not yet cleaned up: {e}");
            e
        }
    };
    let psize = parity_sizes(&e0);
    let per = f(&e0, "copies_per_parity");
    let o_before = check_overhead(&e0, P as f64 / S as f64 * per, 1.5);
    println!(
        "du before scrub: {cw} codewords, {} document bytes, {} parity copies ({per:.2} per parity): overhead x{o_before:.2} (p/s x r = {})",
        u(&e0, "logical_bytes"),
        u(&e0, "parity_copies_replicated"),
        P * R / S
    );
    let disk = parity_files(&cluster, psize);
    assert_eq!(disk.len() as u64, cw * P, "distinct parities on disk");
    assert!(
        disk.values().all(|&(r, s)| r >= R && s == 0),
        "not r copies each"
    );
    assert_eq!(
        disk.values().map(|c| c.0).sum::<u64>(),
        u(&e0, "parity_copies_replicated")
    );

    // --- scrub --window 0: one copy per parity, the replica files gone from the disks.
    let t = Instant::now();
    let sc = alice.json(&["scrub", "--window", "0"]);
    let t_scrub = t.elapsed();
    println!("scrub --window 0 in {t_scrub:?}: {sc}");
    assert_eq!(u(&sc, "errors"), 0, "{sc}");
    assert_eq!(u(&sc, "scrubbed"), cw * P, "{sc}");
    assert!(u(&sc, "replicas_removed") >= cw * P * (R - 1), "{sc}");
    let e1 = wait_copies(&alice, |_| (0, cw * P)).await;
    let o_after = check_overhead(&e1, (P / S) as f64, 1.5);
    wait_single_copies(&cluster, psize, cw * P).await;
    let parities: BTreeSet<BlockKey> = parity_files(&cluster, psize).into_keys().collect();
    println!(
        "du after scrub: overhead x{o_after:.2} (p/s = {}); scrub freed {} bytes ({} replica files); every parity has exactly one file on disk",
        P / S,
        u(&sc, "bytes_freed"),
        u(&sc, "replicas_removed")
    );

    // --- kill -9 four nodes chosen at random from the seed, all at once.
    let victims = random_victims(seed, cluster.nodes.len(), 4);
    let order = ring_order(&cluster).await;
    let picks: Vec<usize> = (0..order.len())
        .filter(|&j| victims.contains(&order[j].1))
        .collect();
    let arcs: Vec<String> = (0..order.len())
        .map(|j| format!("{:.3}", arc_share(&order, &[j])))
        .collect();
    println!(
        "killing nodes {victims:?} (seed {seed}): {:.1}% of the key space; arcs {arcs:?}",
        100.0 * arc_share(&order, &picks)
    );
    for &v in &victims {
        cluster.nodes[v].kill9();
    }
    let live = (0..cluster.nodes.len())
        .find(|i| !victims.contains(i))
        .expect("a live node");
    alice.peer = cluster.nodes[live].addr.to_string();
    cluster
        .wait_ideal(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    let d = parity_files(&cluster, psize);
    let lost: Vec<&BlockKey> = parities.iter().filter(|k| !d.contains_key(k)).collect();
    println!(
        "{} of {} parities lost ({:.1}%)",
        lost.len(),
        parities.len(),
        100.0 * lost.len() as f64 / parities.len() as f64
    );
    tokio::time::sleep(Duration::from_millis(3 * MAINTENANCE_MS)).await;

    // --- repair to the fixed point, then a clean audit.
    let t = Instant::now();
    let out = alice.run(&["--json", "repair"]);
    let t_repair = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        // Say what is left before failing: the damaged codewords (how many symbols each lost,
        // against e = p - s) and whether another repair run gets further.
        println!("repair in {t_repair:?} left damage: {stdout}");
        let aud = alice.run(&["--json", "audit"]);
        println!("audit: {}", String::from_utf8_lossy(&aud.stdout));
        let again = alice.run(&["--json", "repair"]);
        println!(
            "second repair ({}): {}",
            again.status,
            String::from_utf8_lossy(&again.stdout)
        );
        panic!(
            "repair failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rep: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("repair printed no JSON ({e}): {stdout}"));
    println!("repair in {t_repair:?}: {rep}");
    assert_eq!(u(&rep, "undecodable"), 0, "{rep}");
    assert!(u(&rep, "rebuilt") >= lost.len() as u64, "{rep}");
    let aud = alice.json(&["audit"]);
    println!("audit: {aud}");
    assert_eq!(
        (u(&aud, "damaged"), u(&aud, "remaining"), u(&aud, "checked")),
        (0, 0, cw),
        "{aud}"
    );
    let d = parity_files(&cluster, psize);
    let missing = parities.iter().filter(|k| !d.contains_key(k)).count();
    assert_eq!(missing, 0, "{missing} parities not rebuilt on disk");

    // --- restore: byte-identical, every file compared.
    let dest = tmp.path().join("restored");
    let t = Instant::now();
    let r = alice.json(&["restore", dest.to_str().unwrap()]);
    let t_restore = t.elapsed();
    println!(
        "restore in {t_restore:?}: {:.1} MiB/s; {r}",
        bytes as f64 / 1048576.0 / t_restore.as_secs_f64()
    );
    assert_same_tree(&src, &dest);

    // --- every parity back: a second scrub leaves exactly codewords x p single copies.
    let sc2 = alice.json(&["scrub", "--window", "0"]);
    assert_eq!(u(&sc2, "errors"), 0, "{sc2}");
    let e2 = wait_copies(&alice, |_| (0, cw * P)).await;
    assert_eq!(u(&e2, "codewords"), cw, "{e2}");
    println!(
        "measured: backup {:.1} s, scrub {:.1} s freed {} MiB, {} parities lost, repair {:.1} s rebuilt {} blocks in {} passes, restore {:.1} s; total {:?}",
        t_backup.as_secs_f64(),
        t_scrub.as_secs_f64(),
        u(&sc, "bytes_freed") >> 20,
        lost.len(),
        t_repair.as_secs_f64(),
        u(&rep, "rebuilt"),
        u(&rep, "passes"),
        t_restore.as_secs_f64(),
        t0.elapsed()
    );
}

/// Documents of assorted sizes (B = 4 KiB, so a codeword carries 16 KiB).
fn documents(n: u64, seed: u64) -> Vec<Vec<u8>> {
    let sizes = [0usize, 1, 100, 16_384, 16_385, 49_145, 40_000, 9_999];
    peerstore_testkit::documents(n, seed, &sizes)
}

/// The report a `--json` command printed: its last JSON line that is not the error object a
/// failing command adds after it (`{"error", "code", "kind"}`, docs/CLIENT.md).
fn stdout_json(out: &std::process::Output) -> Value {
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("kind").is_none() || v.get("error").is_none())
        .unwrap_or_else(|| panic!("no JSON report: {s}\nstderr: {}", stderr(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_on_documents_put_directly() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let args = ring_args("4K");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start(6, &args).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    let docs = documents(24, 7_000);
    let mut keys = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        keys.push(peerstore_testkit::put_document(&cluster.nodes[i % 3], d).await);
    }
    // Codewords: ceil(len / (s B)), at least one (an empty document has one).
    let cw: u64 = docs
        .iter()
        .map(|d| (d.len() as u64).div_ceil(S * 4096).max(1))
        .sum();
    let logical: u64 = docs.iter().map(|d| d.len() as u64).sum();
    println!(
        "put {} documents ({logical} bytes, {cw} codewords)",
        docs.len()
    );

    // The admin commands need no key; du does.
    let peer = cluster.nodes[4].addr.to_string();
    let mut admin = Client::new(tmp.path(), "admin", &peer);
    admin.ok(&["init"]);

    // At least r copies each (a ring of at most `successors` nodes never drops the copies
    // that nodes outside a replica set got while it was settling).
    let e = match try_wait_copies(
        &admin,
        |e| (u(e, "codewords") * P * R, 0),
        Duration::from_secs(60),
    )
    .await
    {
        Ok(e) => e,
        Err((msg, e)) => {
            assert!(u(&e, "parity_copies_replicated") > cw * P * R, "{msg}");
            e
        }
    };
    assert_eq!(
        (u(&e, "codewords"), u(&e, "logical_bytes")),
        (cw, logical),
        "{e}"
    );
    let psize = parity_sizes(&e);
    check_overhead(&e, P as f64 / S as f64 * f(&e, "copies_per_parity"), 3.0);
    let text = admin.ok(&["du"]);
    assert!(
        text.contains(
            "entanglement: step systematic (s,t,p,B) = (4,8,8,4.0 KiB), 12 blocks per codeword, r=3"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("{cw} codewords")), "{text}");

    // Audit of a healthy ring, in pages of 5 codewords.
    let a = admin.json(&["audit", "--page", "5"]);
    assert_eq!(
        (u(&a, "checked"), u(&a, "damaged"), u(&a, "remaining")),
        (cw, 0, 0),
        "{a}"
    );
    assert!(u(&a, "pages") >= cw.div_ceil(5), "{a}");

    // Scrub by pointers, then the daemon (window 0, every second), then stop it.
    let s1 = admin.json(&["scrub", "--pointers", "1"]);
    assert_eq!(u(&s1, "errors"), 0, "{s1}");
    assert!(
        u(&s1, "scrubbed") > 0 && u(&s1, "scrubbed") < cw * P,
        "{s1}"
    );
    let s2 = admin.json(&["scrub", "--window", "0", "--interval", "1"]);
    assert_eq!(s2["daemon"], "every 1 s", "{s2}");
    // (The daemon, set first, may take some before the request's own pass counts them.)
    assert!(
        u(&s2, "scrubbed") + u(&s1, "scrubbed") <= cw * P,
        "{s1} {s2}"
    );
    let stop = admin.ok(&["scrub", "--stop"]);
    assert!(stop.contains("daemon stopped"), "{stop}");
    let e = wait_copies(&admin, |_| (0, cw * P)).await;
    check_overhead(&e, (P / S) as f64, 3.0);
    wait_single_copies(&cluster, psize, cw * P).await;
    let parities: BTreeSet<BlockKey> = parity_files(&cluster, psize).into_keys().collect();

    // Kill two nodes (not neighbours: metadata must survive this smaller test).
    let (victims, share) = pick_victims(&cluster, 2).await;
    for &v in &victims {
        cluster.nodes[v].kill9();
    }
    if victims.contains(&4) {
        admin.peer = cluster.live().next().unwrap().addr.to_string();
    }
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    tokio::time::sleep(Duration::from_millis(3 * MAINTENANCE_MS)).await;
    let d = parity_files(&cluster, psize);
    let lost: Vec<BlockKey> = parities
        .iter()
        .filter(|k| !d.contains_key(k))
        .copied()
        .collect();
    println!(
        "killed {victims:?} ({:.0}% of the key space): {} of {} parities lost",
        100.0 * share,
        lost.len(),
        parities.len()
    );
    assert!(!lost.is_empty(), "the kill destroyed nothing");

    // Audit sees the damage: exit status 5 (integrity), one line on stderr, every lost parity
    // listed.
    let out = admin.run(&["--json", "audit"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "audit of a damaged ring: {}",
        out.status
    );
    let a = stdout_json(&out);
    assert!(
        u(&a, "damaged") > 0 && u(&a, "remaining") == u(&a, "damaged"),
        "{a}"
    );
    let listed: BTreeSet<String> = a["codewords"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["missing"].as_array().unwrap().clone())
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for k in &lost {
        assert!(listed.contains(&k.to_hex()), "lost parity {k} not reported");
    }
    let err = stderr(&out);
    assert!(
        err.contains("damaged codeword(s)") && err.lines().count() == 1,
        "{err}"
    );
    let text = admin.run(&["audit"]);
    let text_out = String::from_utf8_lossy(&text.stdout);
    assert!(text_out.contains("damaged codeword"), "{text_out}");

    // Targeted repair of one lost block; bad ids are refused with one line.
    let bad = admin.run(&["repair", "not-a-key"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("64 hex digits"), "{}", stderr(&bad));
    let one = lost[0];
    // Exit status 0 unless a codeword it looked at (its own or a referrer with more than e
    // symbols lost) stays undecodable for now; the block itself must be back either way.
    let out = admin.run(&["--json", "repair", &one.to_hex()]);
    let r1 = stdout_json(&out);
    if u(&r1, "undecodable") == 0 {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("stay undecodable"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        r1["still_missing"].as_array().map(Vec::len),
        Some(0),
        "{r1}"
    );
    assert!(u(&r1, "rebuilt") >= 1, "{r1}");
    assert!(
        parity_files(&cluster, psize).contains_key(&one),
        "repaired block {one} not on disk"
    );

    // audit --fix repairs what one pass can (a codeword that lost more than e symbols waits
    // for its pointers' codewords): exit 0 if its checking pass is clean, 1 otherwise.
    let t = Instant::now();
    let out = admin.run(&["--json", "audit", "--fix"]);
    let fx = stdout_json(&out);
    println!(
        "audit --fix in {:?}: {} checked, {} damaged, {} rebuilt, {} remaining",
        t.elapsed(),
        u(&fx, "checked"),
        u(&fx, "damaged"),
        u(&fx, "rebuilt"),
        u(&fx, "remaining")
    );
    assert!(u(&fx, "rebuilt") > 0, "{fx}");
    if u(&fx, "remaining") == 0 {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("remain after the fix"),
            "{}",
            stderr(&out)
        );
    }
    // Repair to the fixed point, then audit --fix on a clean ring exits 0 with nothing to do.
    let rep = admin.json(&["repair"]);
    assert_eq!(u(&rep, "undecodable"), 0, "{rep}");
    let clean = admin.json(&["audit", "--fix"]);
    assert_eq!(
        (
            u(&clean, "damaged"),
            u(&clean, "remaining"),
            u(&clean, "checked")
        ),
        (0, 0, cw),
        "{clean}"
    );
    let d = parity_files(&cluster, psize);
    assert!(
        parities.iter().all(|k| d.contains_key(k)),
        "a parity is still missing"
    );
    let via = cluster.live().next().unwrap();
    for (k, want) in keys.iter().zip(&docs) {
        match via.call(ClientRequest::GetDocument { key: *k }).await {
            ClientResponse::Block { data } => assert!(data == *want, "document {k} differs"),
            other => panic!("document {k}: {other:?}"),
        }
    }
    println!("admin commands test done in {:?}", t0.elapsed());
}

/// Client requests of `kind` answered by all of `c`'s live nodes.
async fn ring_requests(c: &Cluster, kind: &str) -> u64 {
    let mut total = 0;
    for n in c.live() {
        total += n.client_requests(kind).await;
    }
    total
}

/// Backs up a tree into `c` and restores it byte-identical; returns how many `get-symbol`,
/// `sources-held` (plans), `get-document` and `get-symbols` requests the restore made the ring
/// answer.
async fn restore_counts(c: &Cluster, tmp: &std::path::Path) -> (u64, u64, u64, u64) {
    let alice = Client::new(tmp, "alice", &c.nodes[0].addr.to_string());
    alice.ok(&["init"]);
    let src = tmp.join("src");
    make_tree(&src, "direct-read marker", 5 << 20);
    alice.ok(&["backup", src.to_str().unwrap()]);
    let kinds = ["get-symbol", "sources-held", "get-document", "get-symbols"];
    let mut before = [0; 4];
    for (b, k) in before.iter_mut().zip(kinds) {
        *b = ring_requests(c, k).await;
    }
    let out = tmp.join("restored");
    alice.ok(&["restore", out.to_str().unwrap()]);
    assert_same_tree(&src, &out);
    let mut after = [0; 4];
    for (a, k) in after.iter_mut().zip(kinds) {
        *a = ring_requests(c, k).await;
    }
    (
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
        after[3] - before[3],
    )
}

/// Issue 11, "reads should not pay for durability": a restore reads each document from the
/// holders of its source blocks (the entry node only names them), so a document's bytes cross
/// the network once. On a ring whose nodes name the sources in the wrong order (hostile mode
/// `bad-plans`), the client notices (the assembled bytes do not hash to the document) and
/// reads every document through `GetDocument`: the restore is still byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_read_documents_from_their_sources() {
    let _one = SERIAL.lock().await;
    let honest = ideal_ring(4, &["--http", "127.0.0.1:0"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let (symbols, plans, decoded, batches) = restore_counts(&honest, tmp.path()).await;
    println!(
        "honest ring: {plans} plans, {batches} symbol batches, {symbols} single symbols, \
         {decoded} documents decoded by a node"
    );
    assert!(plans > 0, "the restore asked for no plan");
    // Each document's plan comes with the sources its node holds (`SourcesHeld`: on this
    // 4-node ring with r = 3, about three in four), the rest in batches, one per holder
    // (GetSymbols), not one request per block; single requests only for what a batch did not
    // bring. (Before plans brought blocks: 25 batches and 2 single requests for 7 plans.)
    assert!(
        batches + symbols <= 2 * plans,
        "{batches} batches and {symbols} single requests for {plans} plans"
    );
    assert_eq!(decoded, 0, "documents read through a node");
    // A batch is bounded, and a node answers only for the blocks it holds.
    let n0 = &honest.nodes[0];
    let unknown: Vec<BlockKey> = (0..3u8).map(|i| BlockKey([i; 32])).collect();
    match n0.call(ClientRequest::GetSymbols { keys: unknown }).await {
        ClientResponse::Symbols(v) => {
            assert!(v.len() == 3 && v.iter().all(Option::is_none), "{v:?}")
        }
        other => panic!("symbols nobody stored: {other:?}"),
    }
    let too_many = vec![BlockKey([9; 32]); peerstore_proto::MAX_SYMBOLS_PER_REQUEST + 1];
    match n0.call(ClientRequest::GetSymbols { keys: too_many }).await {
        ClientResponse::Error {
            code: peerstore_proto::ErrorCode::BadRequest,
            ..
        } => {}
        other => panic!("a batch over the bound: {other:?}"),
    }
    drop(honest);

    std::env::set_var(peerstore_node::replication::hostile::VAR, "bad-plans");
    let hostile = Cluster::start(4, &["--http", "127.0.0.1:0"]).await;
    std::env::remove_var(peerstore_node::replication::hostile::VAR);
    hostile
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&hostile)));
    let tmp = tempfile::tempdir().unwrap();
    let (symbols, plans, decoded, batches) = restore_counts(&hostile, tmp.path()).await;
    println!(
        "bad-plans ring: {plans} plans, {batches} symbol batches, {symbols} single symbols, \
         {decoded} documents decoded by a node"
    );
    assert!(plans > 0, "the restore asked for no plan");
    assert_eq!(
        decoded, plans,
        "every wrong plan is followed by a decoded read"
    );
}
