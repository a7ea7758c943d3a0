//! Every client command with `--json` prints JSON on stdout (one object or array; JSON lines for
//! `sync`; a failure ends with the error object `{"error", "code", "kind"}`), and the exit
//! statuses of docs/CLIENT.md ("Exit codes"): 0 success, 2 usage error, 3 snapshot or path not
//! found, 4 ring unreachable, 5 integrity failure, 6 access denied; 1 for the rest.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use peerstore_testkit::{corrupt_on_disk, Cluster};
use serde_json::Value;

/// One `--json` run: exit status, every stdout line parsed as JSON, stderr.
struct Run {
    code: Option<i32>,
    lines: Vec<Value>,
    stderr: String,
}

fn run_json(c: &Client, args: &[&str]) -> Run {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = c.run(&a);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{args:?}: stdout line is not JSON ({e}): {l:?}"))
        })
        .collect();
    Run {
        code: out.status.code(),
        lines,
        stderr: stderr(&out),
    }
}

/// A command that must succeed and print exactly one JSON value; returns it.
fn ok_json(c: &Client, args: &[&str]) -> Value {
    let r = run_json(c, args);
    assert_eq!(r.code, Some(0), "{args:?} failed: {}", r.stderr);
    assert_eq!(r.lines.len(), 1, "{args:?}: one JSON value expected");
    r.lines.into_iter().next().unwrap()
}

/// A command that must fail with `code` / `kind`: the last stdout line is the error object,
/// stderr has one `error:` line with the same message. Returns the lines before the error.
fn err_json(c: &Client, args: &[&str], code: i32, kind: &str) -> Vec<Value> {
    let mut r = run_json(c, args);
    assert_eq!(
        r.code,
        Some(code),
        "{args:?}: exit status (stderr: {})",
        r.stderr
    );
    let e = r
        .lines
        .pop()
        .unwrap_or_else(|| panic!("{args:?}: no error object on stdout"));
    assert_eq!(e["code"], code, "{args:?}: {e}");
    assert_eq!(e["kind"], kind, "{args:?}: {e}");
    let msg = e["error"].as_str().unwrap_or_else(|| panic!("{e}"));
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert!(
        errors.first().is_some_and(|l| l.contains(msg)),
        "{args:?}: stderr does not carry the message {msg:?}: {}",
        r.stderr
    );
    r.lines
}

/// A 127.0.0.1 port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `sync --json` until its first snapshot line, then SIGTERM: every line is JSON, exit 0.
fn sync_json(c: &Client, dir: &Path) -> Value {
    let mut child = c
        .command(&[
            "--json",
            "sync",
            dir.to_str().unwrap(),
            "--debounce-ms",
            "100",
            "--prune-every",
            "0s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("sync did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let first = first.unwrap_or_else(|e| panic!("no snapshot line from sync: {e}"));
    assert!(status.success(), "sync exited with {status}");
    for l in std::iter::once(first.clone()).chain(rx.try_iter()) {
        serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    serde_json::from_str(&first).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_and_exits_with_its_documented_code() {
    let t0 = Instant::now();
    let cluster = Cluster::start(3, &["--replication", "3", "--entanglement", "none"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    println!("ring of 3 ideal after {:?}", t0.elapsed());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..4u64 {
        fs::write(
            src.join(format!("d/f{i}.bin")),
            random_bytes(900 + i, 300_000),
        )
        .unwrap();
    }
    fs::write(src.join("top.txt"), b"hello").unwrap();
    let peer0 = cluster.nodes[0].addr.to_string();
    let alice = Client::new(tmp.path(), "alice", &peer0);

    // --- usage errors (clap's, and the client's own): 2.
    err_json(&alice, &["backup"], 2, "usage");
    err_json(&alice, &["ls", "--no-such-flag"], 2, "usage");
    err_json(&alice, &["snapshots"], 2, "usage"); // no key yet

    // --- key and credential commands.
    let init = ok_json(&alice, &["init"]);
    assert_eq!(init["user"].as_str().map(str::len), Some(64), "{init}");
    err_json(&alice, &["init"], 1, "failed"); // refuses to overwrite the key
    let invite = fs::read_to_string(alice.credential.as_ref().unwrap()).unwrap();
    let join = ok_json(&alice, &["join", invite.trim()]);
    assert!(
        join["ring"].is_string() && join["role"].is_string(),
        "{join}"
    );
    err_json(&alice, &["join", invite.trim()], 2, "usage"); // already holds one
    let exported = tmp.path().join("alice.key");
    let ex = ok_json(&alice, &["key", "export", exported.to_str().unwrap()]);
    assert_eq!(ex["exported"], exported.to_str().unwrap(), "{ex}");
    let im = ok_json(
        &alice,
        &["key", "import", exported.to_str().unwrap(), "--force"],
    );
    assert_eq!(im["user"], init["user"], "{im}");

    // --- backup and the read-only commands.
    let b = ok_json(&alice, &["backup", src.to_str().unwrap()]);
    assert_eq!(b["snapshot"], 1, "{b}");
    assert_eq!(b["files"], 5, "{b}");
    let snaps = ok_json(&alice, &["snapshots"]);
    assert_eq!(snaps.as_array().map(Vec::len), Some(1), "{snaps}");
    let ls = ok_json(&alice, &["ls", "d"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(5), "{ls}"); // d and its 4 files
    let dest = tmp.path().join("one");
    fs::create_dir_all(&dest).unwrap();
    let g = ok_json(&alice, &["getfile", "d/f1.bin", dest.to_str().unwrap()]);
    assert_eq!(g["bytes"], 300_000, "{g}");
    assert_eq!(
        fs::read(dest.join("f1.bin")).unwrap(),
        random_bytes(901, 300_000)
    );
    let r = ok_json(
        &alice,
        &["restore", tmp.path().join("all").to_str().unwrap()],
    );
    assert_eq!(r["files"], 5, "{r}");
    assert_same_tree(&src, &tmp.path().join("all"));
    let du = ok_json(&alice, &["du"]);
    assert!(du["nodes"].is_array() && du["snapshots"] == 1, "{du}");
    // On this plain ring too, du's stored bytes are what the disks hold (issue 11 item 8).
    let (stored, disks) = du_matches_disks(&cluster, &alice);
    println!("plain ring: du says {stored} bytes stored, the disks hold {disks}");
    let st = ok_json(&alice, &["status"]);
    assert!(st["node"].is_string() && st["member"] == true, "{st}");
    let ch = ok_json(&alice, &["check", "--read-data"]);
    assert_eq!(
        ch["chunks_verified"].as_u64().map(|n| n > 0),
        Some(true),
        "{ch}"
    );

    // --- not found: 3.
    err_json(&alice, &["ls", "--snapshot", "99"], 3, "not_found");
    err_json(
        &alice,
        &[
            "restore",
            tmp.path().join("x").to_str().unwrap(),
            "--snapshot",
            "abcdef12",
        ],
        3,
        "not_found",
    );
    err_json(
        &alice,
        &["getfile", "d/no-such-file", dest.to_str().unwrap()],
        3,
        "not_found",
    );
    err_json(&alice, &["ls", "nope"], 3, "not_found");
    err_json(&alice, &["rm", "nope"], 3, "not_found");

    // --- changes: rm, forget, prune, sync.
    let rm = ok_json(&alice, &["rm", "top.txt"]);
    assert_eq!(rm["snapshot"], 2, "{rm}");
    let dry = ok_json(&alice, &["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    let f = ok_json(&alice, &["forget", "1"]);
    assert_eq!(f["removed"][0]["number"], 1, "{f}");
    let p = ok_json(&alice, &["prune", "--grace", "0s"]);
    assert!(p["deleted"].is_u64(), "{p}");
    let watched = tmp.path().join("watched");
    fs::create_dir_all(&watched).unwrap();
    fs::write(watched.join("w.txt"), b"watched").unwrap();
    let s = sync_json(&alice, &watched);
    assert!(s["snapshot"].is_u64(), "{s}");

    // --- administration (an administrator's credential; on a plain ring there is nothing to
    // check or scrub, and each says so in JSON).
    let audit = ok_json(&alice, &["audit"]);
    assert_eq!(audit["remaining"], 0, "{audit}");
    let repair = ok_json(&alice, &["repair"]);
    assert_eq!(repair["undecodable"], 0, "{repair}");
    let scrub = ok_json(&alice, &["scrub", "--window", "0"]);
    assert_eq!(scrub["errors"], 0, "{scrub}");

    // --- access denied: 6 (a wrong passphrase).
    let mut wrong = alice.clone();
    wrong.pass = "not the passphrase".into();
    err_json(&wrong, &["snapshots"], 6, "denied");

    // --- ring unreachable: 4 (the node's peer id at a port nothing listens on).
    let peer_id = peer0.rsplit("/p2p/").next().unwrap();
    let mut lost = alice.clone();
    lost.peer = format!("/ip4/127.0.0.1/tcp/{}/p2p/{peer_id}", closed_port());
    err_json(&lost, &["snapshots"], 4, "unavailable");
    err_json(&lost, &["status"], 4, "unavailable");

    // --- integrity failure: 5. Bob's pack is destroyed on every node; `check` prints its
    // report, then the error object.
    let bob = Client::new(tmp.path(), "bob", &cluster.nodes[1].addr.to_string());
    ok_json(&bob, &["init"]);
    ok_json(&bob, &["backup", src.to_str().unwrap()]);
    let packs = cached_packs(&bob.data);
    let hit = cluster
        .nodes
        .iter()
        .filter(|n| corrupt_on_disk(&n.data_dir.join("store"), &packs[0]))
        .count();
    assert_eq!(hit, 3, "the pack is on every node of a 3-node ring, r = 3");
    let before = err_json(&bob, &["check", "--read-data"], 5, "integrity");
    assert_eq!(before.len(), 1, "the check report precedes the error");
    assert_eq!(
        before[0]["missing_packs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        before[0]
    );
    println!("done after {:?}", t0.elapsed());
}
