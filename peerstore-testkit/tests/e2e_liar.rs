//! Issue 14, acceptance 2: deletions are verified. Hostile members (`PEERSTORE_TEST_HOSTILE=
//! liar`: they claim to hold every block, store nothing peers send and answer proofs of
//! possession with random bytes) placed, as a Sybil would place itself, right before an honest
//! node, so that they alone form the replica sets of most of its keys, cannot make the honest
//! nodes drop their copies: every block keeps its copies on the honest nodes' disks, on a
//! plain replicated ring and on an entangled one (replicated and scrubbed single copies).
//!
//! Before deletions were verified (a "yes" from `HasLocal`, `HasSymbols`, `HasSingle` or an
//! `Ok` from `StoreSingle` was enough) both tests lost blocks within a few maintenance periods.
//!
//! The nodes inherit the test's environment: a short minimum age of deletions, so that the
//! proofs decide within the test's time, and, for the liars only, the hostile mode. The liars'
//! invites carry key pairs drawn until their ring ids land at the chosen positions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerstore_node::replication::deletion::{MAX_PER_ROUND_VAR, MIN_AGE_VAR};
use peerstore_node::replication::hostile;
use peerstore_proto::admission::Role;
use peerstore_proto::{
    key_id, ring_id, AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse,
    EntRequest, ErrorCode, MemberRequest, MemberResponse, NodeAddr, ScrubMode,
};
use peerstore_testkit::{
    block, put_document, records_in, ring_order, spawn_node_with, wait_until, Cluster,
    STEP_RING_ARGS,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Minimum age of deletions on the honest nodes: short, so that within the test the proofs
/// decide (the old code dropped within two clean-up rounds).
const MIN_AGE_MS: &str = "1000";

/// The environment every node of these tests starts with (nodes inherit the test's): a short
/// minimum age of deletions and no bound per round, so that within the test's time the proofs
/// decide. Set once, before the first node starts; the tests run one at a time.
fn fast_deletions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var(MIN_AGE_VAR, MIN_AGE_MS);
        std::env::set_var(MAX_PER_ROUND_VAR, "100000");
        std::env::remove_var(hostile::VAR);
    });
}

/// Adds an honest node through the harness (joining through the first live node).
async fn add_honest(c: &mut Cluster, args: &[String]) -> usize {
    let more: Vec<&str> = args.iter().map(String::as_str).collect();
    c.add_node(&more).await
}

/// Adds a liar whose ring id lies in the last `share` of the arc (a, b): the harness, as the
/// ring's operator, mints its invite with a key pair drawn until it lands there (a Sybil
/// without admission grinds its own; with admission this is a member that turned hostile, or
/// an operator's mistake). It starts with `PEERSTORE_TEST_HOSTILE=liar`.
async fn add_liar(
    c: &mut Cluster,
    args: &[String],
    a: chord::Id,
    b: chord::Id,
    share: f64,
) -> (usize, chord::Id) {
    let ring = c.ring.clone().expect("the ring exists");
    let entry = c.live().next().expect("a live node").addr.to_string();
    let len = b.high_u64().wrapping_sub(a.high_u64());
    let from = len - (len as f64 * share) as u64;
    let (invite, id) = (0..1_000_000)
        .find_map(|_| {
            let invite = ring.invite(Role::Member, "liar", vec![entry.clone()]);
            let id = ring_id(&invite.keypair().ok()?.public().to_peer_id());
            let off = id.high_u64().wrapping_sub(a.high_u64());
            (off > from && off < len).then_some((invite, id))
        })
        .expect("an identity in the wanted arc");
    let i = c.nodes.len();
    let dir = c.root.path().join(format!("liar{i}"));
    let mut args = args.to_vec();
    args.push("--invite".into());
    args.push(invite.to_line());
    // The child inherits the variable; it is removed again before anything else starts.
    std::env::set_var(hostile::VAR, "liar");
    let node = spawn_node_with(&dir, "/ip4/127.0.0.1/tcp/0", None, &args, Some(ring)).await;
    std::env::remove_var(hostile::VAR);
    c.nodes.push(node);
    c.wait_joined(i).await;
    (i, id)
}

/// Three liars placed in the last 15% of the arc of the honest node owning the most of the key
/// space: keys in (its predecessor, first liar] then have only liars in their replica set (with
/// r = 3). Returns (the honest node's predecessor's id, the first liar's id, the liars' indexes).
async fn place_liars(c: &mut Cluster, args: &[String]) -> (chord::Id, chord::Id, Vec<usize>) {
    let order = ring_order(c).await;
    let n = order.len();
    let arc = |j: usize| {
        order[j]
            .0
            .high_u64()
            .wrapping_sub(order[(j + n - 1) % n].0.high_u64())
    };
    let j = (0..n).max_by_key(|&j| arc(j)).unwrap();
    let (p, h) = (order[(j + n - 1) % n].0, order[j].0);
    println!(
        "liars placed before node {} (arc of {:.1}% of the key space)",
        order[j].1,
        100.0 * arc(j) as f64 / 2f64.powi(64)
    );
    let mut placed = Vec::new();
    for _ in 0..3 {
        placed.push(add_liar(c, args, p, h, 0.15).await);
    }
    placed.sort_by_key(|(_, id)| id.high_u64().wrapping_sub(p.high_u64()));
    let first = placed[0].1;
    let liars: Vec<usize> = placed.into_iter().map(|(i, _)| i).collect();
    // Each liar says so, loudly, in its log (and no honest node does).
    let logs = |i: usize| std::fs::read_to_string(c.nodes[i].data_dir.join("node.log"));
    for &i in &liars {
        wait_until(Duration::from_secs(10), || async {
            match logs(i) {
                Ok(l) if l.contains("THIS NODE IS HOSTILE") => Ok(()),
                _ => Err(format!("node {i} does not warn that it lies")),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for i in (0..c.nodes.len()).filter(|i| !liars.contains(i)) {
        assert!(
            !logs(i).unwrap_or_default().contains("HOSTILE"),
            "honest node {i} lies"
        );
    }
    (p, first, liars)
}

/// Per key, on how many of the `honest` nodes its bytes are on disk (replicated or single-copy
/// store), hashing to the key: real copies, not index entries.
fn real_copies(c: &Cluster, honest: &[usize]) -> BTreeMap<BlockKey, usize> {
    let mut out: BTreeMap<BlockKey, usize> = BTreeMap::new();
    for &i in honest {
        let dir = &c.nodes[i].data_dir;
        let mut here = BTreeSet::new();
        for sub in ["store", "single"] {
            for (k, bytes) in records_in(&dir.join(sub)) {
                if BlockKey::of(&bytes) == k {
                    here.insert(k);
                }
            }
        }
        for k in here {
            *out.entry(k).or_default() += 1;
        }
    }
    out
}

/// Copies of each key in the single-copy and the replicated stores of the honest nodes.
fn copies_by_store(c: &Cluster, honest: &[usize]) -> BTreeMap<BlockKey, (usize, usize)> {
    let mut out: BTreeMap<BlockKey, (usize, usize)> = BTreeMap::new();
    for &i in honest {
        let dir = &c.nodes[i].data_dir;
        for (k, _) in records_in(&dir.join("store")) {
            out.entry(k).or_default().0 += 1;
        }
        for (k, _) in records_in(&dir.join("single")) {
            out.entry(k).or_default().1 += 1;
        }
    }
    out
}

/// Watches the honest disks for `watch`: no key of `keys` may ever be left without a real copy
/// on an honest node. Then every key of `keys` must have at least `want[key]` real copies.
async fn watch_no_loss(
    c: &Cluster,
    honest: &[usize],
    keys: &BTreeMap<BlockKey, usize>,
    watch: Duration,
) {
    let start = Instant::now();
    while start.elapsed() < watch {
        let copies = real_copies(c, honest);
        let lost: Vec<&BlockKey> = keys.keys().filter(|k| !copies.contains_key(*k)).collect();
        assert!(
            lost.is_empty(),
            "{} of {} blocks have no copy left on any honest node {:?} after the liars joined, e.g. {}",
            lost.len(),
            keys.len(),
            start.elapsed(),
            lost[0]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let copies = real_copies(c, honest);
    let short: Vec<String> = keys
        .iter()
        .filter(|(k, want)| copies.get(*k).copied().unwrap_or(0) < **want)
        .take(5)
        .map(|(k, want)| {
            format!(
                "{} {}/{want}",
                k.short(),
                copies.get(k).copied().unwrap_or(0)
            )
        })
        .collect();
    assert!(
        short.is_empty(),
        "blocks below their copies on honest disks {watch:?} after the liars joined: {short:?}"
    );
}

/// The indexes (in `c.nodes`) of the `r` nodes that should hold `key`, sorted: its owner (the
/// first id at or after it) and the next r - 1, from the ring `order` (id, index).
fn replica_set(order: &[(chord::Id, usize)], key: &BlockKey, r: usize) -> Vec<usize> {
    let id = key_id(key);
    let n = order.len();
    let first = order.iter().position(|(i, _)| *i >= id).unwrap_or(0);
    let mut set: Vec<usize> = (0..r.min(n)).map(|d| order[(first + d) % n].1).collect();
    set.sort_unstable();
    set
}

fn in_arc(k: &BlockKey, a: chord::Id, b: chord::Id) -> bool {
    key_id(k).in_half_open(a, b)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A plain ring (r = 3): 240 blocks on 4 honest nodes; a 5th honest node joins and the copies
/// outside the new replica sets are dropped (the honest proofs pass); then three liars take the
/// positions right before the honest node with the largest arc. No block may lose a copy on the
/// honest disks: the liars' "yes" (`HasLocal`) and their `Ok` to the pushed blocks are not
/// proofs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liars_cannot_make_a_plain_ring_drop_copies() {
    let _g = SERIAL.lock().await;
    fast_deletions();
    let t0 = Instant::now();
    let args = strings(&["--replication", "3", "--entanglement", "none"]);
    let mut c = Cluster::new(&[]);
    for _ in 0..4 {
        add_honest(&mut c, &args).await;
    }
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut keys = Vec::new();
    for i in 0..240u64 {
        let data = block(14_000_000 + i, 2048);
        let key = BlockKey::of(&data);
        match c.nodes[(i % 4) as usize]
            .call(ClientRequest::Put { key, data })
            .await
        {
            ClientResponse::Stored { .. } => keys.push(key),
            other => panic!("put {i}: {other:?}"),
        }
    }
    c.wait_replicated(&keys, 3, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} blocks on 4 nodes at r = 3 ({:?})",
        keys.len(),
        t0.elapsed()
    );

    // An honest node joins: copies outside the new replica sets go once the new sets proved
    // they hold them (honest proofs pass; deletions are not simply stopped).
    add_honest(&mut c, &args).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let order = ring_order(&c).await;
    let t = wait_until(Duration::from_secs(20), || async {
        let h = c.holders().await;
        let off = keys
            .iter()
            .filter(|k| h.get(k).cloned().unwrap_or_default() != replica_set(&order, k, 3))
            .count();
        if off == 0 {
            Ok(())
        } else {
            Err(format!("{off} blocks not on exactly their replica sets"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("after an honest join: {e}"));
    println!(
        "honest join: every block on exactly its new replica set {t:?} later (verified clean-up)"
    );

    let honest: Vec<usize> = (0..c.nodes.len()).collect();
    let (p, first, liars) = place_liars(&mut c, &args).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let doomed = keys.iter().filter(|k| in_arc(k, p, first)).count();
    println!(
        "3 liars {liars:?} joined ({:?}); {doomed} blocks now have only liars in their replica set",
        t0.elapsed()
    );
    assert!(doomed >= 5, "too few blocks behind the liars ({doomed})");
    // Every block keeps all its copies: those whose set now holds liars are kept by the
    // honest nodes that held them (a liar cannot prove), the others are untouched.
    let want: BTreeMap<BlockKey, usize> = keys.iter().map(|k| (*k, 3)).collect();
    watch_no_loss(&c, &honest, &want, Duration::from_secs(8)).await;
    println!(
        "no copy lost on the honest disks ({:?} in all)",
        t0.elapsed()
    );
}

/// An entangled ring (step, r = 3, B = 16 KiB): documents whose parities were scrubbed to single
/// copies, and documents whose parities are replicated, on 5 honest nodes; then three liars take
/// the positions right before the honest node with the largest arc. The single copies it owned
/// are not handed to a liar that acknowledges `StoreSingle` without storing, stale replicas are
/// not dropped on a `HasSingle` yes, replicated copies not on a `HasLocal` yes, and a
/// `DropReplica` naming a liar as the holder of the single copy is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liars_cannot_make_an_entangled_ring_drop_copies() {
    let _g = SERIAL.lock().await;
    fast_deletions();
    let t0 = Instant::now();
    let mut args = strings(STEP_RING_ARGS);
    args.extend(strings(&["--block-size", "16384"]));
    let mut c = Cluster::new(&[]);
    for _ in 0..5 {
        add_honest(&mut c, &args).await;
    }
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Two codewords per document (s x B = 64 KiB): 24 parities each.
    for i in 0..3u64 {
        put_document(&c.nodes[0], &block(15_000_000 + i, 100_000)).await;
    }
    let scrubbed: BTreeSet<BlockKey> = c.holders().await.into_keys().collect();
    let list: Vec<BlockKey> = scrubbed.iter().copied().collect();
    c.wait_replicated(&list, 3, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Old enough for the members to drop their replicas for the owner's single copy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match c.nodes[1]
        .admin(AdminRequest::Scrub {
            mode: ScrubMode::Window { blocks: 0 },
            once: true,
            interval_ms: 0,
        })
        .await
    {
        AdminResponse::Scrubbed(r) => println!("scrub: {r:?}"),
        other => panic!("scrub: {other:?}"),
    }
    let honest: Vec<usize> = (0..c.nodes.len()).collect();
    let t = wait_until(Duration::from_secs(20), || async {
        let d = copies_by_store(&c, &honest);
        let bad = scrubbed
            .iter()
            .filter(|k| d.get(k).copied().unwrap_or_default() != (0, 1))
            .count();
        if bad == 0 {
            Ok(())
        } else {
            Err(format!(
                "{bad} of {} parities not at one single copy",
                scrubbed.len()
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("scrub: {e}"));
    println!(
        "{} parities scrubbed to one single copy each ({t:?}; {:?} in all)",
        scrubbed.len(),
        t0.elapsed()
    );
    for i in 0..2u64 {
        put_document(&c.nodes[2], &block(15_100_000 + i, 100_000)).await;
    }
    let replicated: BTreeSet<BlockKey> = c
        .holders()
        .await
        .into_keys()
        .filter(|k| !scrubbed.contains(k))
        .collect();
    let list: Vec<BlockKey> = replicated.iter().copied().collect();
    c.wait_replicated(&list, 3, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{} more parities replicated (r = 3)", replicated.len());

    let (p, first, liars) = place_liars(&mut c, &args).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let doomed_single: Vec<BlockKey> = scrubbed
        .iter()
        .filter(|k| in_arc(k, p, first))
        .copied()
        .collect();
    let doomed_replicated: Vec<BlockKey> = replicated
        .iter()
        .filter(|k| in_arc(k, p, first))
        .copied()
        .collect();
    println!(
        "3 liars {liars:?} joined ({:?}); behind them: {} single copies, {} replicated parities",
        t0.elapsed(),
        doomed_single.len(),
        doomed_replicated.len()
    );
    assert!(
        doomed_single.len() + doomed_replicated.len() >= 4,
        "too few parities behind the liars"
    );

    // A DropReplica that names the liar owning the key as the holder of its single copy: the
    // liar says yes to HasSymbols, but cannot prove it; the replica stays.
    if let Some(k) = doomed_replicated.first() {
        let holder: NodeAddr = c.nodes[liars[0]].addr.clone();
        let copies = copies_by_store(&c, &honest);
        assert!(copies.get(k).is_some_and(|(r, _)| *r > 0));
        let on = honest
            .iter()
            .copied()
            .find(|&i| {
                records_in(&c.nodes[i].data_dir.join("store"))
                    .iter()
                    .any(|(key, _)| key == k)
            })
            .expect("an honest holder");
        // Old enough to be dropped by its age: the proof decides.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let answer = c.nodes[on]
            .member(MemberRequest::Entangled(EntRequest::DropReplica {
                key: *k,
                holder,
            }))
            .await;
        println!("DropReplica naming a liar as the holder: {answer:?}");
        assert!(
            matches!(
                answer,
                MemberResponse::Error {
                    code: ErrorCode::Rejected,
                    ..
                }
            ),
            "{answer:?}"
        );
    }

    // Scrubbed parities keep their single copy, replicated ones all three copies.
    let want: BTreeMap<BlockKey, usize> = scrubbed
        .iter()
        .map(|k| (*k, 1))
        .chain(replicated.iter().map(|k| (*k, 3)))
        .collect();
    watch_no_loss(&c, &honest, &want, Duration::from_secs(8)).await;
    println!(
        "no copy lost on the honest disks ({:?} in all)",
        t0.elapsed()
    );
}
