//! Issue 14 (bounded resources): long-running requests (ring-wide repair, audit, scrub and
//! their per-node parts) run in their own small pool of 4 permits, and a request whose
//! requester goes away is cancelled and gives its permit back.
//!
//! A ring of two honest nodes and one that never answers long-running member requests
//! (`PEERSTORE_TEST_HOSTILE=stall`). Four `peerstore-client repair` processes ask node 0 for a
//! ring-wide repair: each hangs on the stalling member and holds one of node 0's long permits,
//! so a fifth long request (a local audit, which needs nobody else) waits. Killing the four
//! clients closes their streams: node 0 cancels their repairs, and the waiting audit is served.
//!
//! Needs the binaries built beside the tests: `cargo build --release --workspace --bins`.

mod common;

use std::time::Duration;

use common::*;
use peerstore_node::replication::hostile;
use peerstore_proto::{EntRequest, EntResponse};
use peerstore_testkit::{wait_until, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_whose_requester_left_gives_its_permit_back() {
    let mut cluster = Cluster::start(2, &[]).await;
    // The child inherits the variable; it is removed again before anything else starts.
    std::env::set_var(hostile::VAR, "stall");
    cluster.add_node(&[]).await;
    std::env::remove_var(hostile::VAR);
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));

    let tmp = tempfile::tempdir().unwrap();
    let admin = Client::new(tmp.path(), "admin", &cluster.nodes[0].addr.to_string());
    let mut repairs: Vec<std::process::Child> = (0..4)
        .map(|_| {
            admin
                .command(&["repair"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn peerstore-client repair")
        })
        .collect();
    // Each repair reaches the stalling member, whose per-node part never comes back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in repairs.iter_mut() {
        assert!(
            matches!(c.try_wait(), Ok(None)),
            "a ring-wide repair finished although a member never answers"
        );
    }

    // A fifth long request waits for a permit.
    let node0 = cluster.nodes.remove(0);
    let node0 = std::sync::Arc::new(node0);
    let probe = {
        let n = node0.clone();
        tokio::spawn(async move {
            n.ent(EntRequest::AuditLocal {
                after: peerstore_proto::BlockKey::ZERO,
                limit: 16,
                fix: false,
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !probe.is_finished(),
        "a fifth long request was served while four held the pool"
    );

    // The requesters go away: their repairs are cancelled and the audit is served.
    for c in repairs.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let answer = tokio::time::timeout(Duration::from_secs(60), probe)
        .await
        .expect("the waiting long request was never served: permits not given back")
        .expect("probe task");
    assert!(
        matches!(answer, EntResponse::Audit(_)),
        "unexpected answer {answer:?}"
    );
    // Every one of the four is cancelled (each notices within a second of its stream closing).
    let path = node0.data_dir.join("node.log");
    wait_until(Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let n = log.matches("cancelled: the requester went away").count();
        async move {
            if n >= 4 {
                Ok(())
            } else {
                Err(format!("node 0 logged {n} cancelled requests, want 4"))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "4 ring-wide repairs cancelled when their clients went away; the waiting audit was served"
    );
}
