//! `forget` against a real 3-node ring (r = 3): three backups of a changing tree, `forget
//! --keep-last 1` leaves one snapshot that restores byte-identical (also for a fresh client with
//! only the key); refusals (the latest, nothing to do) are one-line errors; another user's key
//! cannot even read the root, so its `forget` fails with "no backup yet" and changes nothing.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;
use peerstore_testkit::Cluster;

/// Version `v` of the source tree: files that change, appear and disappear between versions.
fn write_version(src: &Path, v: u64) {
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/shared.bin"), random_bytes(1, 700_000)).unwrap();
    fs::write(
        src.join("docs/changing.txt"),
        format!("version {v}\n").repeat(100),
    )
    .unwrap();
    fs::write(
        src.join(format!("new-in-{v}.bin")),
        random_bytes(10 + v, 300_000),
    )
    .unwrap();
    if v > 1 {
        fs::remove_file(src.join(format!("new-in-{}.bin", v - 1))).unwrap();
    }
    set_mtime(&src.join("docs/changing.txt"), 1_600_000_000 + v);
}

fn numbers(snaps: &serde_json::Value) -> Vec<u64> {
    snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| u(s, "number"))
        .collect()
}

fn lines_numbers(v: &serde_json::Value, field: &str) -> Vec<u64> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
        .iter()
        .map(|l| u(l, "number"))
        .collect()
}

/// A failing command's stderr: exactly one line, starting with "error:"; `code`: the exit
/// status of its kind (docs/CLIENT.md, "Exit codes").
fn one_line_error(c: &Client, args: &[&str], code: i32) -> String {
    let out = c.run(args);
    assert!(!out.status.success(), "{args:?} must fail");
    assert_eq!(out.status.code(), Some(code), "{args:?}");
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_keep_last_one_leaves_a_snapshot_that_restores_byte_identical() {
    let cluster = Cluster::start(3, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let alice = Client::new(tmp.path(), "alice", &cluster.nodes[0].addr.to_string());
    alice.ok(&["init"]);
    for v in 1..=3 {
        write_version(&src, v);
        let b = alice.json(&["backup", src.to_str().unwrap()]);
        assert_eq!(u(&b, "snapshot"), v, "{b}");
    }
    assert_eq!(numbers(&alice.json(&["snapshots"])), [3, 2, 1]);

    // Refusals: one line, the exit status of their kind, nothing changed.
    let err = one_line_error(&alice, &["forget"], 2);
    assert!(err.contains("nothing to do"), "{err}");
    let err = one_line_error(&alice, &["forget", "3"], 1);
    assert!(
        err.contains("refusing to forget snapshot 3") && err.contains("latest"),
        "{err}"
    );
    let err = one_line_error(&alice, &["forget", "latest", "--keep-last", "5"], 1);
    assert!(err.contains("refusing to forget snapshot 3"), "{err}");
    let err = one_line_error(&alice, &["forget", "7"], 3);
    assert!(err.contains("no snapshot 7"), "{err}");

    // A dry run says what would go, and changes nothing.
    let dry = alice.json(&["forget", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(lines_numbers(&dry, "kept"), [3]);
    assert_eq!(lines_numbers(&dry, "removed"), [2, 1]);
    assert_eq!(numbers(&alice.json(&["snapshots"])), [3, 2, 1]);

    // forget --keep-last 1.
    let f = alice.json(&["forget", "--keep-last", "1"]);
    println!("forget: {f}");
    assert_eq!(f["dry_run"], false);
    assert_eq!(lines_numbers(&f, "kept"), [3]);
    assert_eq!(lines_numbers(&f, "removed"), [2, 1]);
    assert_eq!(
        f["kept"][0]["reasons"],
        serde_json::json!(["latest", "last"])
    );
    assert_eq!(f["removed"][0]["reasons"], serde_json::json!(["policy"]));
    assert_eq!((u(&f, "rewritten"), u(&f, "root")), (1, 4));
    let snaps = alice.json(&["snapshots"]);
    assert_eq!(numbers(&snaps), [3], "{snaps}");
    assert_eq!(snaps[0]["id"], f["kept"][0]["id"]);

    // The one left restores byte-identical.
    let dest = tmp.path().join("restored");
    alice.ok(&["restore", dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);

    // The text form; nothing left to forget.
    let text = alice.ok(&["forget", "--keep-last", "1"]);
    assert!(
        text.contains("keep 1 snapshot(s):") && text.contains("nothing to forget"),
        "{text}"
    );

    // A fresh client (no watermark) with only the exported key sees the rewritten chain.
    let key_file = tmp.path().join("alice.key");
    alice.ok(&["key", "export", key_file.to_str().unwrap()]);
    let fresh = Client::new(tmp.path(), "fresh", &cluster.nodes[2].addr.to_string());
    fresh.ok(&["key", "import", key_file.to_str().unwrap()]);
    assert_eq!(numbers(&fresh.json(&["snapshots"])), [3]);
    let dest2 = tmp.path().join("restored-fresh");
    fresh.ok(&["restore", dest2.to_str().unwrap()]);
    assert_same_tree(&src, &dest2);

    // Another user's key cannot even read Alice's root (a user's root lives under the key of
    // its own user id, and is sealed to it): Bob has no backup, so there is nothing to forget.
    let bob = Client::new(tmp.path(), "bob", &cluster.nodes[1].addr.to_string());
    bob.ok(&["init"]);
    let err = one_line_error(&bob, &["forget", "--keep-last", "1"], 3);
    assert!(err.contains("no backup yet for this key"), "{err}");
    let id = f["kept"][0]["id"].as_str().unwrap();
    let err = one_line_error(&bob, &["forget", id], 3);
    assert!(err.contains("no backup yet for this key"), "{err}");
    assert_eq!(numbers(&alice.json(&["snapshots"])), [3]);

    // The next backup gets a new number (root 4 was the forget) and chains onto snapshot 3,
    // which still restores version 3.
    let v3 = tmp.path().join("v3");
    assert!(std::process::Command::new("cp")
        .args(["-a", src.to_str().unwrap(), v3.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    write_version(&src, 4);
    let b = alice.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(u(&b, "snapshot"), 5, "{b}");
    assert_eq!(numbers(&fresh.json(&["snapshots"])), [5, 3]);
    let dest3 = tmp.path().join("restored-3");
    fresh.ok(&["restore", dest3.to_str().unwrap(), "--snapshot", "3"]);
    assert_same_tree(&v3, &dest3);
    // A forgotten number selects nothing.
    let err = one_line_error(&fresh, &["restore", "--snapshot", "2", "/nonexistent"], 3);
    assert!(err.contains("no snapshot 2"), "{err}");
}
