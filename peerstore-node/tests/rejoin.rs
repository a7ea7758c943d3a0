//! Restarts when the initial peer is gone: a node keeps the members it knew in its data
//! directory (`peers`) and rejoins through them; a node started without `--initial-peer` that
//! was in a ring rejoins that ring instead of starting a second one. Real processes, 127.0.0.1.

use std::time::Duration;

use peerstore_node::driver::{read_peers_file, PEERS_FILE};
use peerstore_testkit::*;

/// Waits until every node's peers file lists at least `min` other members.
async fn wait_peers_written(cluster: &Cluster, min: usize) {
    wait_until(Duration::from_secs(30), || async move {
        for n in &cluster.nodes {
            let known = read_peers_file(&n.data_dir);
            if known.len() < min {
                return Err(format!(
                    "{} lists {} peers in {}",
                    n.addr,
                    known.len(),
                    n.data_dir.join(PEERS_FILE).display()
                ));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// `n` nodes with replication `r`, settled into the ideal ring, each with its peers file
/// listing at least `peers` other members.
async fn settled(n: usize, r: &str, peers: usize) -> Cluster {
    let cluster = Cluster::start(n, &["--replication", r]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_peers_written(&cluster, peers).await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_rejoins_through_known_members() {
    // Every node writes down the others once it is a member of the full ring.
    let mut cluster = settled(3, "3", 2).await;

    // The initial peer (node 0) dies for good, and node 1 crashes and restarts with its
    // original flags: `--initial-peer` names the dead node 0.
    let initial = cluster.nodes[0].addr.to_string();
    cluster.nodes[0].kill9();
    cluster.nodes[1].kill9();
    cluster.restart_via(1, Some(&initial)).await;
    let t = cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("node 1 did not rejoin without its initial peer: {e}"));
    println!("node 1 rejoined through a known member {t:?} after its restart");

    // Node 0 comes back the way it was first started, without `--initial-peer`: it rejoins
    // the ring of nodes 1 and 2 rather than starting a ring of its own.
    cluster.restart_via(0, None).await;
    let t = cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("node 0 did not rejoin the ring it was in: {e}"));
    println!("node 0 rejoined the ring it was in {t:?} after its restart");
}

/// A node without `--initial-peer` whose known members are all gone starts a new ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_alone_starts_a_new_ring() {
    let mut cluster = settled(2, "2", 1).await;
    cluster.nodes[0].kill9();
    cluster.nodes[1].kill9();
    cluster.restart_via(0, None).await;
    let t = cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("node 0 did not start a ring of its own: {e}"));
    println!("node 0 alone started a new ring {t:?} after its restart");
    let s = cluster.nodes[0].status().await.expect("status");
    assert!(s.member, "node 0 is not a member");
}

/// A whole ring restarted at once (a power cut), every node with its original
/// `--initial-peer`: each peer it can reach is restarting too and answers as a non-member, so
/// no join can succeed. A node that was a member then starts a ring of one and merges with
/// the members it knew once they answer: the five become one ring again, holding what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_ring_restarted_at_once_becomes_one_ring_again() {
    let mut cluster = settled(5, "3", 2).await;
    let n = cluster.nodes.len();
    let addrs: Vec<String> = cluster.nodes.iter().map(|x| x.addr.to_string()).collect();
    for i in 0..n {
        cluster.nodes[i].kill9();
    }
    // Node i is told to join through node i + 1, which is restarting as well.
    for i in 0..n {
        cluster.restart_via(i, Some(&addrs[(i + 1) % n])).await;
    }
    let t = cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the restarted nodes did not become one ring: {e}"));
    println!("a ring of {n} restarted at once was one ring again {t:?} after the last restart");
}
