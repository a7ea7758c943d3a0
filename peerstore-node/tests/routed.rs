//! The routed data client (`RpcClient::routed`): block puts and gets go straight to a member of
//! the key's replica set, and the client keeps working when members, or its entry node, die.
//! Real node processes on 127.0.0.1.

use std::time::Duration;

use peerstore_proto::{BlockKey, ClientRequest, ClientResponse, RpcClient};
use peerstore_testkit::*;

const BLOCKS: u64 = 200;

async fn get(c: &RpcClient, key: BlockKey) -> Option<Vec<u8>> {
    match c.call(ClientRequest::Get { key }).await {
        Ok(ClientResponse::Block { data }) => Some(data),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routed_client_bypasses_the_entry_node_and_survives_its_death() {
    let mut cluster = Cluster::start(5, &["--replication", "3"]).await;
    cluster
        .wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let entry = cluster.nodes[0].addr.clone();
    let client = RpcClient::routed(
        entry.clone(),
        Duration::from_secs(10),
        Some(cluster.identity(peerstore_proto::Role::User)),
    )
    .expect("client");
    client.refresh().await;

    let blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| block(7_000 + i, 20_000)).collect();
    let keys: Vec<BlockKey> = blocks.iter().map(|b| BlockKey::of(b)).collect();
    for (k, b) in keys.iter().zip(&blocks) {
        let r = client
            .call(ClientRequest::Put {
                key: *k,
                data: b.clone(),
            })
            .await;
        assert!(
            matches!(r, Ok(ClientResponse::Stored { .. })),
            "routed put failed: {r:?}"
        );
    }
    for (k, b) in keys.iter().zip(&blocks) {
        assert_eq!(
            get(&client, *k).await.as_ref(),
            Some(b),
            "routed get of {k}"
        );
    }

    // A member dies: requests routed to it fail over (next replica, then the entry node).
    let victim = 3;
    cluster.nodes[victim].kill9();
    let mut ok = 0u64;
    for (k, b) in keys.iter().zip(&blocks) {
        if get(&client, *k).await.as_ref() == Some(b) {
            ok += 1;
        }
    }
    assert_eq!(ok, BLOCKS, "gets after a member died");

    // The entry node dies too. With r = 3 every block keeps a live replica, and the routed
    // client reaches it directly; a plain client of the dead entry node reaches nothing.
    cluster.nodes[0].kill9();
    let mut ok = 0u64;
    for (k, b) in keys.iter().zip(&blocks) {
        if get(&client, *k).await.as_ref() == Some(b) {
            ok += 1;
        }
    }
    println!("after the entry node died: {ok} of {BLOCKS} blocks read by the routed client");
    assert_eq!(
        ok, BLOCKS,
        "routed gets after the entry node died ({victim} and 0 dead)"
    );
    let plain = cluster.nodes[0]
        .call(ClientRequest::Get { key: keys[0] })
        .await;
    assert!(
        !matches!(plain, ClientResponse::Block { .. }),
        "the dead entry node answered: {plain:?}"
    );
}
