//! `check` finds a pack deleted behind the client's back (its bytes destroyed on every node),
//! fails with a clear error naming the damaged snapshot, forgets the pack in the dedup cache,
//! and the next backup stores the lost data again: the new snapshot restores byte-identical.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use peerstore_testkit::{corrupt_on_disk, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_lost_pack_and_the_next_backup_stores_it_again() {
    let cluster = Cluster::start(3, &["--replication", "3", "--entanglement", "none"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..6u64 {
        fs::write(
            src.join(format!("d/f{i}.bin")),
            random_bytes(70 + i, 1_500_000),
        )
        .unwrap();
    }
    let alice = Client::new(tmp.path(), "alice", &cluster.nodes[0].addr.to_string());
    alice.ok(&["init"]);
    alice.ok(&["backup", src.to_str().unwrap()]);
    let clean = alice.ok(&["check", "--read-data"]);
    assert!(clean.contains("no errors"), "{clean}");

    // A pack disappears behind the client's back: its bytes are destroyed on every node (each
    // node drops a copy that fails its hash when it is read).
    let packs = cached_packs(&alice.data);
    assert!(packs.len() >= 2, "{packs:?}");
    let lost = packs[0];
    let hit = cluster
        .nodes
        .iter()
        .filter(|n| corrupt_on_disk(&n.data_dir.join("store"), &lost))
        .count();
    assert_eq!(
        hit, 3,
        "the pack is on every node of a 3-node ring with r = 3"
    );

    let out = alice.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check must fail: {err}");
    assert!(
        err.contains(&format!("missing pack {}", lost.to_hex())),
        "{err}"
    );
    assert!(err.contains("snapshot(s) [1]"), "{err}");
    assert!(
        !cached_packs(&alice.data).contains(&lost),
        "the lost pack is forgotten in the dedup cache"
    );

    // The next backup reads the files whose data was lost and stores it again.
    let again = alice.json(&["backup", src.to_str().unwrap()]);
    assert!(again["chunks_uploaded"].as_u64().unwrap() > 0, "{again}");
    let dest = tmp.path().join("restored");
    alice.ok(&["restore", dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
    // The new snapshot is whole. The old one is whole again only if the re-sent pack came out
    // byte-identical (chunks are sealed deterministically, so a pack of the same chunks in the
    // same order has the same key); otherwise it stays damaged: what every node lost is gone.
    let out = alice.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("check after the second backup: {} {err}", out.status);
    assert!(
        out.status.success() || err.contains("snapshot(s) [1]"),
        "{err}"
    );
}
