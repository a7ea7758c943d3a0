//! Placement across hosts (issue 16, acceptance 2): three nodes on one "host" and two on
//! another, r = 3. The three of host a are placed one after another on the ring, so under the
//! old rule (owner and next two members) the keys of the first of them would have every copy on
//! host a. With placement every block ends up on both hosts; `status` says the copies span 2
//! hosts for 3 copies, and says loudly when they sit on one host only (both nodes of host b
//! killed), until host b is back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use peerstore_proto::{BlockKey, ClientRequest, ClientResponse, MemberRequest, MemberResponse};
use peerstore_testkit::*;

const FLAGS: &[&str] = &[
    "--replication",
    "3",
    "--entanglement",
    "none",
    "--maintenance-ms",
    "1000",
    "--delete-min-age-ms",
    "0",
];

/// The host each node runs on (`--host`), by node index.
fn hosts_of(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .map(|n| {
            n.extra
                .iter()
                .position(|a| a == "--host")
                .and_then(|i| n.extra.get(i + 1))
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Distinct hosts holding each key, over the live nodes.
async fn hosts_per_key(c: &Cluster, hosts: &[String]) -> BTreeMap<BlockKey, BTreeSet<String>> {
    c.holders()
        .await
        .into_iter()
        .map(|(k, nodes)| (k, nodes.iter().map(|&i| hosts[i].clone()).collect()))
        .collect()
}

/// How many of `keys` have copies on fewer than two hosts.
async fn on_one_host(c: &Cluster, hosts: &[String], keys: &[BlockKey]) -> usize {
    let per = hosts_per_key(c, hosts).await;
    keys.iter()
        .filter(|k| per.get(k).map_or(0, BTreeSet::len) < 2)
        .count()
}

/// Waits (30 s at most) until every one of `keys` has copies on both hosts.
async fn wait_on_both_hosts(c: &Cluster, hosts: &[String], keys: &[BlockKey]) {
    wait_until(Duration::from_secs(30), || async {
        match on_one_host(c, hosts, keys).await {
            0 => Ok(()),
            one => Err(format!("{one} blocks on one host only")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Five nodes with `flags`, restarted so that the first three in ring order run on host a and
/// the other two on host b. Returns the cluster and the ring order (id, node index).
async fn aaabb(flags: &[&str]) -> (Cluster, Vec<(chord::Id, usize)>) {
    let mut c = Cluster::start(5, flags).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut order: Vec<(chord::Id, usize)> = c
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (peerstore_proto::ring_id(&n.addr.peer), i))
        .collect();
    order.sort();
    for (pos, &(_, i)) in order.iter().enumerate() {
        let host = if pos < 3 { "a" } else { "b" };
        c.nodes[i].kill9();
        c.nodes[i]
            .extra
            .extend(["--host".to_string(), host.to_string()]);
        c.restart(i).await;
    }
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (c, order)
}

/// Kills host a's three nodes (the first three in ring `order`) and reads every document of
/// `keys` back, byte-identical, from host b.
async fn lose_host_a_and_read_all(
    c: &mut Cluster,
    order: &[(chord::Id, usize)],
    keys: &[BlockKey],
    docs: &[Vec<u8>],
) {
    for &(_, i) in &order[..3] {
        c.nodes[i].kill9();
    }
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = &c.nodes[order[3].1];
    for (k, d) in keys.iter().zip(docs) {
        match b.call(ClientRequest::GetDocument { key: *k }).await {
            ClientResponse::Block { data } => assert_eq!(&data, d),
            other => panic!("document {k} after host a was lost: {other:?}"),
        }
    }
}

/// The tests of this file share the 2 cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_sets_span_both_hosts_and_status_warns_when_one_is_left() {
    let _g = SERIAL.lock().await;
    let (mut c, order) = aaabb(FLAGS).await;
    let hosts = hosts_of(&c);
    println!(
        "hosts by node: {hosts:?}; ring order {:?}",
        order.iter().map(|o| o.1).collect::<Vec<_>>()
    );
    for (i, n) in c.nodes.iter().enumerate() {
        match n.member(MemberRequest::Placement).await {
            MemberResponse::Placement { host, .. } => assert_eq!(host, hosts[i]),
            other => panic!("placement of node {i}: {other:?}"),
        }
    }

    // 120 blocks through node 0.
    let mut keys = Vec::new();
    for i in 0..120u64 {
        let data = block(i, 8 << 10);
        let key = BlockKey::of(&data);
        match c.nodes[0].call(ClientRequest::Put { key, data }).await {
            ClientResponse::Stored { .. } => keys.push(key),
            other => panic!("put {i}: {other:?}"),
        }
    }
    // Under the old rule the keys owned by the first node of host a had all copies on a.
    let first_a = order[0].0;
    let last_b = order[4].0;
    let old_rule_one_host = keys
        .iter()
        .filter(|k| {
            let id = peerstore_proto::key_id(k);
            // Owned by order[0]: in (last_b, first_a].
            if last_b < first_a {
                id > last_b && id <= first_a
            } else {
                id > last_b || id <= first_a
            }
        })
        .count();
    println!(
        "under the old rule {old_rule_one_host} of {} blocks would have every copy on host a",
        keys.len()
    );
    assert!(
        old_rule_one_host > 0,
        "the test must place three a's in a row"
    );

    c.wait_replicated(&keys, 3, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_on_both_hosts(&c, &hosts, &keys).await;
    let copies: Vec<usize> = {
        let h = c.holders().await;
        keys.iter().map(|k| h.get(k).map_or(0, Vec::len)).collect()
    };
    println!(
        "every block on both hosts; copies per block: min {}, max {}",
        copies.iter().min().unwrap(),
        copies.iter().max().unwrap()
    );
    // A node that knew another's place before that one restarted with `--host` forgot it
    // when its connections closed (not after `placement::KNOWN_FOR`): every status is right
    // well within that.
    let t = wait_until(Duration::from_secs(30), || async {
        for (i, n) in c.nodes.iter().enumerate() {
            let s = n.status().await.ok_or("no status")?;
            assert_eq!(s.placement.host, hosts[i]);
            match &s.placement.warning {
                Some(w) if s.placement.replica_hosts == 2 && w.contains("span 2 hosts") => {}
                other => {
                    return Err(format!(
                        "node {i}: {} hosts, warning {other:?}",
                        s.placement.replica_hosts
                    ))
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(t < peerstore_node::placement::KNOWN_FOR);
    println!("every status names its host and says \"span 2 hosts\" after {t:?}");

    // Host b goes away: the keys of host a's nodes are on host a only, and status says so.
    for &(_, i) in &order[3..] {
        c.nodes[i].kill9();
    }
    let a0 = order[0].1;
    let t = wait_until(Duration::from_secs(30), || async {
        let s = c.nodes[a0].status().await.ok_or("no status")?;
        match s.placement.warning {
            Some(w) if s.placement.replica_hosts == 1 && w.contains("one host") => Ok(()),
            other => Err(format!(
                "{} hosts, warning {other:?}",
                s.placement.replica_hosts
            )),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("host b down: node {a0} warns of one host after {t:?}");

    // Host b is back: two hosts again, and the blocks are on both.
    for &(_, i) in &order[3..] {
        c.restart(i).await;
    }
    wait_until(Duration::from_secs(30), || async {
        let s = c.nodes[a0].status().await.ok_or("no status")?;
        if s.placement.replica_hosts == 2 {
            Ok(())
        } else {
            Err(format!("{} hosts", s.placement.replica_hosts))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_on_both_hosts(&c, &hosts, &keys).await;
    // And no more than r copies stay: the clean-up drops those the sets skip.
    let t = wait_until(Duration::from_secs(60), || async {
        let h = c.holders().await;
        let extra = keys
            .iter()
            .filter(|k| h.get(k).map_or(0, Vec::len) > 3)
            .count();
        let short = keys
            .iter()
            .filter(|k| h.get(k).map_or(0, Vec::len) < 3)
            .count();
        if extra + short == 0 {
            Ok(())
        } else {
            Err(format!(
                "{extra} blocks with more than 3 copies, {short} with fewer"
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("host b back: every block on both hosts, 3 copies each, {t:?} later");
}

/// On the default entangled layout (systematic): the source blocks of every codeword (the
/// blocks a healthy read fetches) have copies on both hosts, so losing the three nodes of host
/// a still reads every document directly from host b's two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_entangled_ring_reads_everything_after_losing_a_host() {
    let _g = SERIAL.lock().await;
    let mut flags = STEP_RING_ARGS.to_vec();
    flags.extend(["--block-size", "4K", "--maintenance-ms", "1000"]);
    let (mut c, order) = aaabb(&flags).await;
    let hosts = hosts_of(&c);
    let docs = peerstore_testkit::documents(12, 77, &[3 * 4 * 4096]);
    let mut keys = Vec::new();
    for d in &docs {
        keys.push(put_document(&c.nodes[order[3].1], d).await);
    }
    // The sources: the first s = 4 stored blocks of each codeword.
    let mut sources = Vec::new();
    for k in &keys {
        let d = peerstore_node::entangled::format::DocRecord::decode(
            &fetch_record(&c, *k).await.expect("document record"),
        )
        .expect("a document record");
        for rk in d.codewords {
            let r = peerstore_node::entangled::format::decode_record(
                &fetch_record(&c, rk).await.expect("codeword record"),
            )
            .expect("a codeword record");
            sources.extend(r.stored_keys.iter().take(4).map(|k| BlockKey(k.0)));
        }
    }
    c.wait_replicated(&sources, 3, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let one = on_one_host(&c, &hosts, &sources).await;
    println!(
        "{} documents, {} source blocks; on one host only: {one}",
        keys.len(),
        sources.len()
    );
    assert_eq!(one, 0, "every source block has a copy on both hosts");
    lose_host_a_and_read_all(&mut c, &order, &keys, &docs).await;
    println!(
        "host a lost: all {} documents read back from host b",
        keys.len()
    );
}

/// Replica management on an entangled ring of two hosts (three nodes on a, two on b, r = 3):
/// every block that may go down to one copy does (a window of 0), except where a codeword would
/// then have single copies of more of its symbols on one host than it can lose (p = 8 of the 20
/// symbols of systematic (4, 8, 8)); those keep replicas on both hosts. Losing host a's three
/// nodes then leaves every codeword decodable, or its sources whole: every document reads back
/// from host b (decoded where a source was lost). Fresh parities replicated (every symbol
/// through the rule):
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_codewords_survive_losing_a_host() {
    managed_ring_loses_a_host(STEP_RING_ARGS).await;
}

/// The same with the default configuration: parities stored as one copy on their owner at write
/// time (so a host may hold more than p of a codeword's symbols), sources through the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_default_codewords_survive_losing_a_host() {
    managed_ring_loses_a_host(&["--replication", "3"]).await;
}

async fn managed_ring_loses_a_host(ring: &[&str]) {
    use peerstore_node::entangled::format::{decode_record, DocRecord};
    use peerstore_proto::{AdminRequest, AdminResponse, ScrubMode};
    let _g = SERIAL.lock().await;
    let mut flags = ring.to_vec();
    flags.extend([
        "--block-size",
        "4K",
        "--maintenance-ms",
        "1000",
        "--delete-min-age-ms",
        "0",
    ]);
    let (mut c, order) = aaabb(&flags).await;
    let hosts = hosts_of(&c);
    let docs = peerstore_testkit::documents(12, 78, &[3 * 4 * 4096]);
    let mut keys = Vec::new();
    for d in &docs {
        keys.push(put_document(&c.nodes[order[3].1], d).await);
    }
    let mut codewords = Vec::new();
    for k in &keys {
        let d = DocRecord::decode(&fetch_record(&c, *k).await.expect("document record"))
            .expect("a document record");
        for rk in d.codewords {
            codewords.push(
                decode_record(&fetch_record(&c, rk).await.expect("codeword record"))
                    .expect("a codeword record"),
            );
        }
    }
    // The sources replicated (the parities too where they start replicated).
    let fresh_single = !ring.contains(&"replicated");
    let stored: Vec<BlockKey> = codewords
        .iter()
        .flat_map(|r| {
            let n = if fresh_single { 4 } else { r.stored_keys.len() };
            r.stored_keys[..n].iter().map(|k| BlockKey(k.0))
        })
        .collect();
    c.wait_replicated(&stored, 3, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Management by hand, twice (the second pass catches copies re-sent meanwhile).
    let mut kept = 0;
    for _ in 0..2 {
        match c.nodes[order[3].1]
            .admin(AdminRequest::Scrub {
                mode: ScrubMode::Window { blocks: 0 },
                once: true,
                interval_ms: 0,
            })
            .await
        {
            AdminResponse::Scrubbed(r) => {
                println!("scrub: {r:?}");
                assert_eq!(r.errors, 0, "scrub errors");
                kept = r.kept_for_spread;
            }
            other => panic!("scrub: {other:?}"),
        }
    }
    // Where every symbol is on disk: the hosts holding a copy, and whether it is single.
    let mut where_: BTreeMap<BlockKey, BTreeSet<String>> = BTreeMap::new();
    let mut single = 0;
    for (i, n) in c.nodes.iter().enumerate() {
        for sub in ["store", "single"] {
            for (k, _) in records_in(&n.data_dir.join(sub)) {
                where_.entry(k).or_default().insert(hosts[i].clone());
                single += usize::from(sub == "single");
            }
        }
    }
    let symbols = |r: &entangle::Record| -> Vec<BlockKey> {
        entangle::fetch_order(r)
            .iter()
            .map(|k| BlockKey(k.0))
            .collect()
    };
    // Without the rule every symbol would have its single copy on its owner's host.
    let owner_host = |k: &BlockKey| {
        let id = peerstore_proto::key_id(k);
        let i = order.iter().find(|(o, _)| *o >= id).unwrap_or(&order[0]).1;
        hosts[i].clone()
    };
    let owner_rule = codewords
        .iter()
        .filter(|r| {
            let on_a = symbols(r).iter().filter(|k| owner_host(k) == "a").count();
            on_a.max(symbols(r).len() - on_a) > 8
        })
        .count();
    println!(
        "with every eligible block at one copy on its owner, {owner_rule} of {} codewords would have more than p = 8 symbols on one host",
        codewords.len()
    );
    // A host h may hold the only copies of at most p symbols of a codeword, or of none of its
    // sources (then the sources survive the loss of h and the document reads without decoding).
    let (mut worst, mut unspread) = (0, 0);
    for r in &codewords {
        let sources: Vec<BlockKey> = r.stored_keys[..4].iter().map(|k| BlockKey(k.0)).collect();
        for h in ["a", "b"] {
            let only_h = |k: &BlockKey| {
                where_
                    .get(k)
                    .is_some_and(|on| on.len() == 1 && on.contains(h))
            };
            let lost = symbols(r).iter().filter(|k| only_h(k)).count();
            worst = worst.max(lost);
            if lost > 8 && sources.iter().any(only_h) {
                unspread += 1;
                for k in symbols(r) {
                    println!(
                        "  {k}: source {} pointer {} owner host {} on {:?}",
                        sources.contains(&k),
                        r.pointers.iter().any(|p| p.0 == k.0),
                        owner_host(&k),
                        where_.get(&k)
                    );
                }
            }
        }
    }
    println!(
        "{} codewords: {single} single copies, {kept} blocks kept replicated for the spread; at most {worst} symbols of a codeword on one host only (p = 8)",
        codewords.len()
    );
    assert!(single > 0, "management brought blocks to one copy");
    assert_eq!(
        unspread, 0,
        "codewords with more than p symbols on one host only, a source among them"
    );
    lose_host_a_and_read_all(&mut c, &order, &keys, &docs).await;
    println!(
        "host a lost after management: all {} documents read back from host b",
        keys.len()
    );
}
