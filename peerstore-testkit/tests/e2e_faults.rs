//! Acceptance test 6: kill -9 a node in the middle of a backup (5-node ring, r = 3); the backup
//! completes (or fails cleanly and a rerun completes) and restores byte-identical; then the node
//! the client is connected to dies during a second backup (fail-over), and with two of five nodes
//! dead the restore still works.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use peerstore_testkit::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_backup_then_two_dead() {
    let cluster_start = Instant::now();
    let mut cluster = Cluster::start(5, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    println!("ring of 5 ideal after {:?}", cluster_start.elapsed());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..48u64 {
        let len = 1_000_000 + (i as usize * 37_123) % 1_500_000;
        fs::write(
            src.join(format!("d/f{i:02}.bin")),
            random_bytes(1000 + i, len),
        )
        .unwrap();
    }
    fs::write(src.join("big.bin"), random_bytes(5, 40 << 20)).unwrap();
    let alice = Client::new(tmp.path(), "alice", &cluster.nodes[0].addr.to_string());
    alice.ok(&["init"]);

    // Start the backup, kill node 2 while it runs.
    let mut child = alice
        .command(&["--json", "backup", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let still_running = child.try_wait().unwrap().is_none();
    cluster.nodes[2].kill9();
    println!("killed node 2 (backup still running: {still_running})");
    let out = child.wait_with_output().unwrap();
    let mut attempts = 1;
    let mut ok = out.status.success();
    println!(
        "backup during the kill: {} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    while !ok && attempts < 4 {
        // A clean failure: one error line; the rerun sends only what is missing.
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            err.trim().starts_with("error:") || err.contains("error:"),
            "{err}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = alice.run(&["--json", "backup", src.to_str().unwrap()]);
        attempts += 1;
        println!(
            "rerun {attempts}: {} {}",
            again.status,
            String::from_utf8_lossy(&again.stdout).trim()
        );
        ok = again.status.success();
    }
    assert!(
        ok,
        "backup did not complete after {attempts} attempts\n{}",
        node_logs(&cluster)
    );

    let dest = tmp.path().join("restored");
    let t = Instant::now();
    alice.ok(&["restore", dest.to_str().unwrap()]);
    println!(
        "restore with one node dead: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_same_tree(&src, &dest);

    // Phase 2: the node the client talks to dies during a backup. The client fails over to a
    // successor it learned at connect (or fails cleanly, and a rerun through another node
    // completes). That makes two dead nodes out of five.
    fs::write(src.join("second.bin"), random_bytes(6, 40 << 20)).unwrap();
    let child = alice
        .command(&["--json", "backup", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.nodes[0].kill9();
    let out = child.wait_with_output().unwrap();
    println!(
        "backup while its node died: {} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut via1 = alice.clone();
    via1.peer = cluster.nodes[1].addr.to_string();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("error:"), "{err}");
        let again = via1.run(&["--json", "backup", src.to_str().unwrap()]);
        assert!(
            again.status.success(),
            "rerun failed: {}\n{}",
            stderr(&again),
            node_logs(&cluster)
        );
    }
    let settle = cluster.wait_ideal(Duration::from_secs(60)).await;
    println!("ring of 3 after the second kill: {settle:?}");
    let dest2 = tmp.path().join("restored-2");
    let t = Instant::now();
    let out = via1.run(&["restore", dest2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore after two deaths failed: {}\n{}",
        stderr(&out),
        node_logs(&cluster)
    );
    println!(
        "restore with two nodes dead: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_same_tree(&src, &dest2);
}
