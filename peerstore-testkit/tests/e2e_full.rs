//! Acceptance: a full replica set reaches the client as "node full", on a plain ring
//! (`--entanglement none`, r = 3) and on the default entangled ring (STEP_RING_ARGS), through
//! real `peerstore-node` processes started with a small `--capacity`.
//!
//! - `*_protocol`: documents (and, on the plain ring, blocks) go in through the client protocol
//!   until an error comes back, which must be `ErrorCode::Full` ("full" in its message), not
//!   `Unavailable`, within a bounded number of attempts; every node still answers `Status`.
//! - `*_client`: the real `peerstore-client` binary backs up a folder larger than the ring's
//!   capacity and must fail quickly with a non-zero exit and `error: node full: ...` on stderr.
//!
//! The four tests run one after another (each starts its own ring). Needs the binaries built
//! beside the tests: `cargo build --release --workspace --bins`.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;
use peerstore_proto::{BlockKey, ClientRequest, ClientResponse, ErrorCode};
use peerstore_testkit::{block, put_document, Cluster, STEP_RING_ARGS};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Block data each node may hold (`--capacity`, bytes with a K/M/G suffix).
const CAPACITY: &str = "8M";
const CAPACITY_BYTES: u64 = 8 << 20;
/// Size of the documents and blocks put through the protocol.
const DOC: usize = 1 << 20;
/// Puts before the ring must have answered "full": far more than fit (3 nodes of 8 MiB
/// with r = 3 take 8 documents of 1 MiB; an entangled document takes 9 MiB or more of parities).
const MAX_ATTEMPTS: u64 = 64;
/// The folder the client backs up: more than the raw capacity of either ring (24 or 32 MiB).
const FOLDER_FILES: u64 = 10;
const FOLDER_FILE: usize = 4 << 20;

/// Node flags of the plain ring: no entanglement, r = 3.
fn plain_args() -> Vec<String> {
    ["--entanglement", "none", "--replication", "3"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Node flags of the default entangled ring.
fn step_args() -> Vec<String> {
    STEP_RING_ARGS.iter().map(|s| s.to_string()).collect()
}

/// `n` nodes with `args` and the small capacity, in the ideal ring.
async fn small_ring(n: usize, args: &[String]) -> Cluster {
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.extend(["--capacity", CAPACITY]);
    let t = Instant::now();
    let cluster = Cluster::start(n, &flags).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node_logs(&cluster)));
    println!("ring of {n} ideal after {:?} ({flags:?})", t.elapsed());
    for node in &cluster.nodes {
        let s = node.status().await.expect("status");
        assert_eq!(
            s.capacity, CAPACITY_BYTES,
            "--capacity {CAPACITY} on {}",
            s.addr
        );
    }
    cluster
}

/// Asserts `resp` is the "node full" error: `ErrorCode::Full` with "full" in its message.
fn assert_full(cluster: &Cluster, what: &str, resp: &ClientResponse) {
    match resp {
        ClientResponse::Error {
            code: ErrorCode::Full,
            message,
        } => assert!(
            message.to_lowercase().contains("full"),
            "{what}: Full without \"full\" in its message: {message}"
        ),
        other => panic!(
            "{what}: the first error is not ErrorCode::Full: {other:?}\n{}",
            node_logs(cluster)
        ),
    }
}

/// Every node still answers `Status` (and stays within its capacity).
async fn assert_all_answer_status(cluster: &Cluster) {
    for node in &cluster.nodes {
        let s = node
            .status()
            .await
            .unwrap_or_else(|| panic!("{} no longer answers Status", node.addr));
        println!(
            "{}: {} of {} bytes used, {} owned, {} replica",
            node.addr, s.bytes_used, s.capacity, s.keys_owned, s.keys_replica
        );
        assert!(
            s.bytes_used <= s.capacity,
            "{}: {} bytes used over a capacity of {}",
            node.addr,
            s.bytes_used,
            s.capacity
        );
    }
}

/// Puts `DOC`-byte documents through node 0 until one is refused; returns how many were
/// stored and the refusal. The first one goes through the harness's `put_document` (which
/// waits out a ring that is still settling), the rest by one `PutDocument` each.
async fn fill_with_documents(cluster: &Cluster, seed: u64) -> (u64, ClientResponse) {
    let node = &cluster.nodes[0];
    let t = Instant::now();
    put_document(node, &block(seed, DOC)).await;
    for i in 1..MAX_ATTEMPTS {
        let resp = node
            .call(ClientRequest::PutDocument {
                data: block(seed + i, DOC),
                auth: None,
                session: None,
            })
            .await;
        match resp {
            ClientResponse::DocumentStored { .. } => {}
            other => {
                println!(
                    "put-document {i}: refused after {i} documents of {DOC} bytes in {:?}: {other:?}",
                    t.elapsed()
                );
                return (i, other);
            }
        }
    }
    panic!(
        "{MAX_ATTEMPTS} documents of {DOC} bytes stored on nodes of {CAPACITY}: capacity not \
         enforced?\n{}",
        node_logs(cluster)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ring_full_protocol() {
    let _serial = SERIAL.lock().await;
    let cluster = small_ring(3, &plain_args()).await;

    // Documents: on a plain ring one replicated block each.
    let (stored, resp) = fill_with_documents(&cluster, 1_000).await;
    assert_full(&cluster, "plain put-document", &resp);
    assert!(stored >= 2, "only {stored} documents before full");

    // Blocks: the replica set (all three nodes) has no room for another one either.
    let mut refused = None;
    for i in 0..MAX_ATTEMPTS {
        let data = block(2_000 + i, DOC);
        let key = BlockKey::of(&data);
        match cluster.nodes[1]
            .call(ClientRequest::Put { key, data })
            .await
        {
            ClientResponse::Stored { .. } => {}
            other => {
                println!("put {i}: refused: {other:?}");
                refused = Some(other);
                break;
            }
        }
    }
    let resp =
        refused.unwrap_or_else(|| panic!("{MAX_ATTEMPTS} more blocks stored on a full ring"));
    assert_full(&cluster, "plain put", &resp);
    assert_all_answer_status(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entangled_ring_full_protocol() {
    let _serial = SERIAL.lock().await;
    let cluster = small_ring(4, &step_args()).await;
    let (stored, resp) = fill_with_documents(&cluster, 10_000).await;
    assert_full(&cluster, "entangled put-document", &resp);
    println!("{stored} entangled documents stored before full");
    assert_all_answer_status(&cluster).await;
}

/// Backs up a folder larger than the ring through the real client; asserts it fails quickly
/// with a non-zero exit and one `error: node full: ...` line on stderr.
async fn client_backup_fails_full(cluster: &Cluster) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..FOLDER_FILES {
        fs::write(
            src.join(format!("file-{i}.bin")),
            random_bytes(500 + i, FOLDER_FILE),
        )
        .unwrap();
    }
    let alice = Client::new(tmp.path(), "alice", &cluster.nodes[0].addr.to_string());
    alice.ok(&["init"]);
    let t = Instant::now();
    let out = alice.run(&["backup", src.to_str().unwrap()]);
    let took = t.elapsed();
    let err = stderr(&out);
    println!(
        "backup of {} MiB: exit {:?} after {took:?}; stderr:\n{err}",
        (FOLDER_FILES * FOLDER_FILE as u64) >> 20,
        out.status.code()
    );
    assert!(
        !out.status.success(),
        "a backup larger than the ring succeeded: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        node_logs(cluster)
    );
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "killed by a signal? {}",
        out.status
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected on stderr:\n{err}");
    assert!(
        errors[0].to_lowercase().contains("node full"),
        "the error line does not say \"node full\": {}\n{}",
        errors[0],
        node_logs(cluster)
    );
    assert!(
        took < Duration::from_secs(120),
        "backup took {took:?} to fail: a retry loop?"
    );
    assert_all_answer_status(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ring_full_client() {
    let _serial = SERIAL.lock().await;
    let cluster = small_ring(3, &plain_args()).await;
    client_backup_fails_full(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entangled_ring_full_client() {
    let _serial = SERIAL.lock().await;
    let cluster = small_ring(4, &step_args()).await;
    client_backup_fails_full(&cluster).await;
}
