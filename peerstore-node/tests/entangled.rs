//! Entangled storage in the ring (issue "Entangled storage", part "In the ring"): real node
//! processes with a small block size. Tests in this file run one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerstore_node::entangled::format::{decode_record, DocRecord};
use peerstore_proto::{
    AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse, EntangleStats,
    MemberRequest, MemberResponse, RpcClient, ScrubMode, ScrubReport,
};
use peerstore_testkit::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// B = 4 KiB, systematic (s, t, p) = (4, 8, 8): a codeword carries 16 KiB.
const B: usize = 4096;
const S: usize = 4;
/// [`STEP_RING_ARGS`] (the default code) with B = 4 KiB.
fn ring_args() -> Vec<&'static str> {
    let mut a = STEP_RING_ARGS.to_vec();
    a.extend(["--block-size", "4K"]);
    a
}

/// [`PARITY_ONLY_RING_ARGS`] (RECAST's layout, (4, 8, 12)) with B = 4 KiB.
fn parity_only_ring_args() -> Vec<&'static str> {
    let mut a = PARITY_ONLY_RING_ARGS.to_vec();
    a.extend(["--block-size", "4K"]);
    a
}

async fn get_doc(n: &NodeProc, key: BlockKey) -> Result<Vec<u8>, String> {
    match n.call(ClientRequest::GetDocument { key }).await {
        ClientResponse::Block { data } => Ok(data),
        other => Err(format!("{other:?}")),
    }
}

/// Documents of assorted sizes: empty, tiny, exactly one codeword, several codewords.
fn documents(n: u64, seed: u64) -> Vec<Vec<u8>> {
    let sizes = [
        0usize,
        1,
        100,
        S * B,
        S * B + 1,
        3 * S * B - 7,
        40_000,
        9_999,
    ];
    peerstore_testkit::documents(n, seed, &sizes)
}

/// The keys of a document's records (document record first) and its parity keys.
async fn doc_keys(c: &Cluster, doc: BlockKey) -> (Vec<BlockKey>, Vec<BlockKey>) {
    let bytes = fetch_record(c, doc).await.expect("document record held");
    let d = DocRecord::decode(&bytes).expect("document record");
    let mut records = vec![doc];
    let mut parities = Vec::new();
    for rk in d.codewords {
        let bytes = fetch_record(c, rk).await.expect("codeword record held");
        let r = decode_record(&bytes).expect("codeword record");
        records.push(rk);
        parities.extend(r.stored_keys.iter().map(|k| BlockKey(k.0)));
    }
    (records, parities)
}

/// The parity keys of a document (through its document and codeword records).
async fn parity_keys(c: &Cluster, doc: BlockKey) -> Vec<BlockKey> {
    doc_keys(c, doc).await.1
}

/// Waits until every record is held by at least `want` live nodes (anti-entropy).
async fn wait_records(c: &Cluster, records: &[BlockKey], want: usize) -> Duration {
    wait_until(Duration::from_secs(30), || async {
        let h = record_holders(c, records).await;
        let short = h.values().filter(|&&n| n < want).count();
        let lost = h.values().filter(|&&n| n == 0).count();
        if short == 0 {
            Ok(())
        } else {
            Err(format!(
                "{short} of {} records on fewer than {want} live nodes ({lost} on none)",
                records.len()
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// For every block file on the disks of the live nodes: (node, in the single-copy store).
fn files_on_disk(c: &Cluster) -> BTreeMap<BlockKey, Vec<(usize, bool)>> {
    let mut out: BTreeMap<BlockKey, Vec<(usize, bool)>> = BTreeMap::new();
    for (i, n) in c.nodes.iter().enumerate() {
        if !n.alive() {
            continue;
        }
        for (sub, single) in [("store", false), ("single", true)] {
            for (key, _) in records_in(&n.data_dir.join(sub)) {
                out.entry(key).or_default().push((i, single));
            }
        }
    }
    out
}

async fn stats(n: &NodeProc) -> EntangleStats {
    match n.admin(AdminRequest::EntangleStats).await {
        AdminResponse::EntangleStats(s) => *s,
        other => panic!("stats: {other:?}"),
    }
}

/// A ring-wide admin request that can take long on a loaded machine (scrub, repair): through
/// a client of its own with a 120 s timeout instead of the harness's 10 s (`RpcClient::admin`
/// waits at least `LONG_REQUEST_TIMEOUT` for these anyway).
async fn call_long(n: &NodeProc, r: AdminRequest) -> AdminResponse {
    let client = RpcClient::start_as(
        n.addr.clone(),
        Duration::from_secs(120),
        Some(peerstore_node::admission::ephemeral(
            &n.ring,
            peerstore_proto::Role::Admin,
            "test",
        )),
    )
    .expect("rpc client");
    match client.admin(r).await {
        Ok(r) => r,
        Err(e) => panic!("request via {}: {e}", n.addr),
    }
}

async fn scrub(n: &NodeProc, mode: ScrubMode) -> ScrubReport {
    match call_long(
        n,
        AdminRequest::Scrub {
            mode,
            once: true,
            interval_ms: 0,
        },
    )
    .await
    {
        AdminResponse::Scrubbed(r) => r,
        other => panic!("scrub: {other:?}"),
    }
}

fn show(what: &str, s: &EntangleStats) {
    println!(
        "du {what}: {} codewords, {} document bytes, parity copies {} replicated + {} single, {} parity bytes, overhead {:.2}x",
        s.codewords,
        s.logical_bytes,
        s.parity_copies_replicated,
        s.parity_copies_single,
        s.parity_bytes,
        s.overhead()
    );
}

async fn read_all_everywhere(c: &Cluster, docs: &[(BlockKey, Vec<u8>)]) {
    for n in c.live() {
        for (k, d) in docs {
            let got = get_doc(n, *k)
                .await
                .unwrap_or_else(|e| panic!("document {k} unreadable via {}: {e}", n.addr));
            assert!(got == *d, "document {k} not byte-identical via {}", n.addr);
        }
    }
}

/// Waits until every key has at least `r` copies in the replicated stores of live nodes
/// (exactly `r` with `exact`, once the ring's clean-up has dropped copies held by nodes that
/// are no longer in a key's replica set).
async fn wait_replicated(c: &Cluster, keys: &BTreeSet<BlockKey>, r: usize, exact: bool) {
    wait_until(Duration::from_secs(60), || async {
        let h = c.holders().await;
        let under = keys
            .iter()
            .filter(|k| h.get(k).map_or(0, Vec::len) < r)
            .count();
        let over = keys
            .iter()
            .filter(|k| exact && h.get(k).map_or(0, Vec::len) > r)
            .count();
        if under + over == 0 {
            Ok(())
        } else {
            // Which nodes hold the first few, in ring order, for a failure's diagnosis.
            let odd: Vec<String> = keys
                .iter()
                .filter(|k| {
                    let n = h.get(k).map_or(0, Vec::len);
                    n < r || (exact && n > r)
                })
                .take(3)
                .map(|k| format!("{} on {:?}", k.to_hex(), h.get(k)))
                .collect();
            Err(format!(
                "{under} parities under and {over} over {r} replicas, e.g. {odd:?}; ring {:?}",
                ring_order(c).await
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Acceptance a: documents put through one node are read back byte-identical through every
/// node, and what a parity-only ring stores are parities: no stored block (nor any parity
/// payload) equals a source block.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_are_stored_as_parities() {
    let _g = SERIAL.lock().await;
    let c = Cluster::start(6, &parity_only_ring_args()).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let mut docs = Vec::new();
    let mut bytes = 0;
    for d in documents(24, 7_000) {
        bytes += d.len();
        docs.push((put_document(&c.nodes[0], &d).await, d));
    }
    println!(
        "put {} documents ({bytes} bytes) through one node in {:?}",
        docs.len(),
        start.elapsed()
    );
    let start = Instant::now();
    read_all_everywhere(&c, &docs).await;
    println!(
        "read all back through each of 6 nodes in {:?}",
        start.elapsed()
    );

    // Source blocks: every document cut into B-byte blocks, the last one zero-padded.
    let mut sources: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (_, d) in &docs {
        for cw in d.chunks(S * B) {
            let mut padded = cw.to_vec();
            padded.resize(S * B, 0);
            // All-zero blocks (padding, the empty document) carry nothing: an all-zero
            // codeword over anchors has all-zero parity payloads.
            for b in padded.chunks(B).filter(|b| b.iter().any(|&x| x != 0)) {
                sources.insert(b.to_vec());
            }
        }
    }
    let mut parities = BTreeSet::new();
    for (k, _) in &docs {
        parities.extend(parity_keys(&c, *k).await);
    }
    wait_replicated(&c, &parities, 3, false).await;
    // Metadata: m = 10 > 6 nodes, so every node holds every record.
    let mut records = Vec::new();
    for (k, _) in &docs {
        records.extend(doc_keys(&c, *k).await.0);
    }
    let t = wait_records(&c, &records, 6).await;
    println!(
        "{} records on all 6 nodes ({t:?} after the check started)",
        records.len()
    );
    let mut files = 0;
    let mut parity_files = 0;
    for n in &c.nodes {
        for (key, bytes) in records_in(&n.data_dir.join("store")) {
            files += 1;
            assert!(
                !sources.contains(&bytes),
                "{} holds a source block ({key})",
                n.data_dir.display()
            );
            if let Ok(p) = entangle::ParityBlock::decode(&bytes) {
                parity_files += 1;
                assert!(
                    !sources.contains(&p.payload),
                    "{} holds a parity whose payload is a source block ({key})",
                    n.data_dir.display()
                );
            }
        }
    }
    println!(
        "{files} block files on disk, {parity_files} of them parities ({} distinct, {} source blocks): no source block stored",
        parities.len(),
        sources.len()
    );
    assert!(parity_files >= 3 * parities.len());
    show("after writes", &stats(&c.nodes[2]).await);
}

/// Acceptance b: with every parity scrubbed down to one copy, kill -9 nodes at random (the
/// seed is printed): first three ring NEIGHBOURS at once (consecutive by id, from a random
/// start: under r-way metadata the records of the first one's arc would be gone), repair; then
/// two more at random, repair. Every record stays held (m = 10 nodes hold each) and comes back
/// to every live node, every parity is rebuilt and every document reads back byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubbed_ring_survives_kills_after_repair() {
    let _g = SERIAL.lock().await;
    let seed = test_seed("scrubbed_ring_survives_kills_after_repair");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    // Default request timeout: a ring-wide scrub that outlasts it still gets its answer
    // (long-running requests are bounded by LONG_REQUEST_TIMEOUT).
    let mut c = Cluster::start(12, &ring_args()).await;
    c.wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut docs = Vec::new();
    for d in documents(32, 50_000) {
        docs.push((put_document(&c.nodes[0], &d).await, d));
    }
    let mut parities = BTreeSet::new();
    let mut records = Vec::new();
    for (k, _) in &docs {
        let (r, p) = doc_keys(&c, *k).await;
        records.extend(r);
        parities.extend(p);
    }
    // At least r copies (a stale extra copy on a node outside a replica set, which the main
    // store's clean-up drops within a few periods, is dropped by the scrub at the latest).
    wait_replicated(&c, &parities, 3, false).await;
    wait_records(&c, &records, 10).await;
    show("before scrub", &stats(&c.nodes[0]).await);
    let r = scrub(&c.nodes[3], ScrubMode::Window { blocks: 0 }).await;
    println!("scrub (window 0): {r:?}");
    let disk = files_on_disk(&c);
    let multi = parities
        .iter()
        .filter(|k| disk.get(k).map_or(0, Vec::len) != 1)
        .count();
    assert_eq!(
        multi, 0,
        "{multi} parities not at exactly one copy after scrub"
    );
    show("after scrub", &stats(&c.nodes[0]).await);
    read_all_everywhere(&c, &docs).await;

    // Round 1: three ring neighbours (at most a third of the key space: more would test the
    // code's limit with single copies, not the metadata).
    let (victims, share) = random_victims(&c, 3, true, 0.34, &mut rng).await;
    let exposed = exposed_records(&c, &records, &victims).await;
    println!(
        "round 1: killing 3 ring neighbours {victims:?} owning {:.1}% of the key space; {exposed} of {} records had their whole r = 3 replica set among them",
        100.0 * share,
        records.len()
    );
    kill_and_repair(&mut c, &victims, &parities, &records, &docs, true).await;

    // Round 2: two more, anywhere.
    let (victims, share) = random_victims(&c, 2, false, 0.34, &mut rng).await;
    println!(
        "round 2: killing 2 more at random {victims:?} owning {:.1}% of the key space",
        100.0 * share
    );
    kill_and_repair(&mut c, &victims, &parities, &records, &docs, false).await;
    println!("test done in {:?}", t0.elapsed());
}

/// Records whose replica set of r = 3 (owner and next two) lies entirely among `victims`:
/// what r-way metadata would have lost.
async fn exposed_records(c: &Cluster, records: &[BlockKey], victims: &[usize]) -> usize {
    let order = ring_order(c).await;
    let n = order.len();
    records
        .iter()
        .filter(|k| {
            let owner = order.iter().position(|(id, _)| id.0 >= k.0).unwrap_or(0);
            (0..3.min(n)).all(|d| victims.contains(&order[(owner + d) % n].1))
        })
        .count()
}

/// Kills `victims` with SIGKILL, checks that the records stay held and come back to every
/// live node (m = 10 >= live nodes), audits (with `audit`, plus a targeted repair of a few
/// lost keys), repairs the whole ring and checks every parity and document.
async fn kill_and_repair(
    c: &mut Cluster,
    victims: &[usize],
    parities: &BTreeSet<BlockKey>,
    records: &[BlockKey],
    docs: &[(BlockKey, Vec<u8>)],
    audit: bool,
) {
    for &v in victims {
        c.nodes[v].kill9();
    }
    let killed = Instant::now();
    c.wait_ideal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let live = c.live().count();
    let disk = files_on_disk(c);
    let lost: Vec<BlockKey> = parities
        .iter()
        .filter(|k| !disk.contains_key(k))
        .copied()
        .collect();
    let held = record_holders(c, records).await;
    let min_held = held.values().min().copied().unwrap_or(0);
    println!(
        "{} of {} parities lost ({:.1}%), every record still on at least {min_held} of {live} live nodes, ring Ideal again after {:?}",
        lost.len(),
        parities.len(),
        100.0 * lost.len() as f64 / parities.len() as f64,
        killed.elapsed()
    );
    assert!(min_held > 0, "a record lost every copy");
    let t = wait_records(c, records, live.min(10)).await;
    println!("records back on all {live} live nodes within {t:?} of the check");
    let via = c.live().next().unwrap();
    let mut targeted = 0;
    if audit {
        assert!(
            !lost.is_empty(),
            "the kills should have destroyed some parities"
        );
        // An audit (without fix) sees the damage: every lost parity is reported missing.
        let mut after_key = None;
        let mut reported = BTreeSet::new();
        let (mut checked, mut damaged) = (0, 0);
        loop {
            match via
                .admin(AdminRequest::Audit {
                    after: after_key,
                    limit: 20,
                    fix: false,
                })
                .await
            {
                AdminResponse::AuditPage(p) => {
                    checked += p.checked;
                    damaged += p.damaged.len();
                    for d in &p.damaged {
                        reported.extend(d.missing.iter().copied());
                    }
                    match p.next {
                        Some(n) => after_key = Some(n),
                        None => break,
                    }
                }
                other => panic!("audit: {other:?}"),
            }
        }
        println!("audit: {checked} codewords checked, {damaged} damaged");
        assert_eq!(checked as usize, records.len() - docs.len());
        assert!(
            lost.iter().all(|k| reported.contains(k)),
            "audit missed lost parities"
        );
        // Targeted repair of a few keys brings exactly those back (through their own codeword
        // or the codewords that point at them).
        let few: Vec<BlockKey> = lost.iter().take(5).copied().collect();
        targeted = match call_long(via, AdminRequest::Repair { keys: few.clone() }).await {
            AdminResponse::Repaired(s) => {
                println!("repair of {} keys: {s:?}", few.len());
                assert!(s.still_missing.is_empty(), "{s:?}");
                s.rebuilt
            }
            other => panic!("repair: {other:?}"),
        };
        let disk = files_on_disk(c);
        assert!(few.iter().all(|k| disk.contains_key(k)));
    }
    // The whole ring to a fixed point.
    let start = Instant::now();
    let summary = match call_long(via, AdminRequest::Repair { keys: vec![] }).await {
        AdminResponse::Repaired(s) => s,
        other => panic!("repair: {other:?}"),
    };
    println!("repair: {summary:?} in {:?}", start.elapsed());
    let disk = files_on_disk(c);
    let still: Vec<&BlockKey> = parities.iter().filter(|k| !disk.contains_key(k)).collect();
    assert!(
        still.is_empty(),
        "{} parities not rebuilt: {summary:?}",
        still.len()
    );
    // Every lost parity was rebuilt by one of the two repairs (some more than once: by their
    // own codeword and by one pointing at them, in the same pass).
    assert!(summary.rebuilt + targeted >= lost.len() as u64);
    read_all_everywhere(c, docs).await;
    println!("every parity back and every document byte-identical after repair");
}

/// Acceptance c: scrub by pointers and by window leaves every document readable and removes
/// the replicas from disk, not only from metadata; du shows the overhead falling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_modes_remove_replica_files() {
    let _g = SERIAL.lock().await;
    let c = Cluster::start(6, &ring_args()).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut docs = Vec::new();
    for d in documents(24, 90_000) {
        docs.push((put_document(&c.nodes[1], &d).await, d));
    }
    let mut parities = BTreeSet::new();
    for (k, _) in &docs {
        parities.extend(parity_keys(&c, *k).await);
    }
    // At least r copies each (a node that briefly held a copy while the ring settled may
    // still hold a stale extra one; the clean-up drops it).
    wait_replicated(&c, &parities, 3, false).await;
    let before = stats(&c.nodes[0]).await;
    show("before scrub", &before);
    assert!(before.parity_copies_replicated >= 3 * parities.len() as u64);

    let copies = |c: &Cluster| -> BTreeMap<BlockKey, usize> {
        let disk = files_on_disk(c);
        parities
            .iter()
            .map(|k| (*k, disk.get(k).map_or(0, Vec::len)))
            .collect()
    };
    // By reference count: parities pointed at at least once keep one copy. Stale copies
    // re-sent by the clean-up of a node outside a replica set are dropped again by the
    // owner's worker within a few maintenance periods.
    let r = scrub(&c.nodes[2], ScrubMode::Pointers { threshold: 1 }).await;
    println!("scrub --pointers 1: {r:?}");
    assert!(r.scrubbed > 0);
    let t = wait_until(Duration::from_secs(15), || async {
        let m = copies(&c);
        let single = m.values().filter(|&&n| n == 1).count() as u64;
        let bad = m.values().filter(|&&n| n == 0 || n == 2).count();
        if single == r.scrubbed && bad == 0 {
            Ok(())
        } else {
            Err(format!(
                "{single} parities at one copy (scrubbed {}), {bad} at 0 or 2",
                r.scrubbed
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("files on disk match the report {t:?} after the scrub answered");
    read_all_everywhere(&c, &docs).await;
    let mid = stats(&c.nodes[0]).await;
    show("after --pointers 1", &mid);
    assert_eq!(mid.parity_copies_single, r.scrubbed);

    // By window: all but the 60 newest parities keep one copy.
    let w = 60;
    let r = scrub(&c.nodes[4], ScrubMode::Window { blocks: w }).await;
    println!("scrub --window {w}: {r:?}");
    wait_until(Duration::from_secs(15), || async {
        let m = copies(&c);
        let replicated = m.values().filter(|&&n| n > 1).count() as u64;
        let gone = m.values().filter(|&&n| n == 0).count();
        if replicated <= w && gone == 0 {
            Ok(())
        } else {
            Err(format!("{replicated} parities replicated, {gone} gone"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    read_all_everywhere(&c, &docs).await;
    show(&format!("after --window {w}"), &stats(&c.nodes[0]).await);

    // A stale copy on a node outside the replica set (as a ring that is still settling leaves
    // behind; rings of few nodes never clean those up) must go too.
    let stale_key = *parities.iter().next().unwrap();
    let stale_bytes = c
        .nodes
        .iter()
        .flat_map(|n| ["store", "single"].map(|s| records_in(&n.data_dir.join(s))))
        .flatten()
        .find_map(|(k, bytes)| (k == stale_key).then_some(bytes))
        .expect("the parity's record on disk");
    let set: Vec<String> = match c.nodes[0]
        .call(ClientRequest::Lookup { key: stale_key })
        .await
    {
        ClientResponse::Owner { replicas, .. } => {
            replicas.iter().map(|m| m.addr.to_string()).collect()
        }
        other => panic!("{other:?}"),
    };
    let outsider = c
        .nodes
        .iter()
        .find(|n| !set.contains(&n.addr.to_string()))
        .expect("a node outside the replica set");
    match outsider
        .member(MemberRequest::StoreLocal {
            key: stale_key,
            data: stale_bytes,
        })
        .await
    {
        MemberResponse::Ok => {}
        other => panic!("{other:?}"),
    }

    // And the daemon: window 0 every second; replicas go without another request.
    match c.nodes[0]
        .admin(AdminRequest::Scrub {
            mode: ScrubMode::Window { blocks: 0 },
            once: false,
            interval_ms: 1000,
        })
        .await
    {
        AdminResponse::Scrubbed(_) => {}
        other => panic!("scrub daemon: {other:?}"),
    }
    wait_until(Duration::from_secs(20), || async {
        let n = copies(&c).values().filter(|&&n| n != 1).count();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} parities not at one copy"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = stats(&c.nodes[0]).await;
    show("after the daemon (window 0)", &after);
    assert_eq!(after.parity_copies_replicated, 0);
    assert!(after.overhead() < before.overhead() / 2.5);
    read_all_everywhere(&c, &docs).await;

    // Audit: nothing damaged; one page per call.
    let mut after_key = None;
    let mut checked = 0;
    loop {
        match c.nodes[5]
            .admin(AdminRequest::Audit {
                after: after_key,
                limit: 16,
                fix: false,
            })
            .await
        {
            AdminResponse::AuditPage(p) => {
                assert!(p.damaged.is_empty(), "{:?}", p.damaged);
                checked += p.checked;
                match p.next {
                    Some(n) => after_key = Some(n),
                    None => break,
                }
            }
            other => panic!("audit: {other:?}"),
        }
    }
    assert_eq!(checked, after.codewords);
    println!("audit checked {checked} codewords: none damaged");
}

/// With `type = "none"` a document is one plain replicated block (key = BLAKE3(data)), and the
/// entangled requests have nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_ring_stores_documents_as_blocks() {
    let _g = SERIAL.lock().await;
    let c = Cluster::start(3, &["--replication", "3", "--entanglement", "none"]).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let data = block(123, 10_000);
    let key = put_document(&c.nodes[0], &data).await;
    assert_eq!(key, BlockKey::of(&data));
    for n in &c.nodes {
        assert_eq!(get_doc(n, key).await.unwrap(), data);
    }
    let s = stats(&c.nodes[1]).await;
    assert_eq!((s.kind.as_str(), s.params, s.codewords), ("none", None, 0));
    let r = scrub(&c.nodes[2], ScrubMode::Pointers { threshold: 0 }).await;
    assert_eq!(r.scrubbed, 0);
    assert_eq!(get_doc(&c.nodes[2], key).await.unwrap(), data);
    match c.nodes[0]
        .admin(AdminRequest::Repair { keys: vec![] })
        .await
    {
        AdminResponse::Repaired(s) => assert_eq!(s.rebuilt, 0),
        other => panic!("{other:?}"),
    }
}

/// A graceful leave hands the single copies and the reverse references on: after two nodes
/// of a fully scrubbed ring leave, every parity is still on disk and every document reads,
/// without a repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_leave_keeps_single_copies() {
    let _g = SERIAL.lock().await;
    let mut c = Cluster::start(6, &ring_args()).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut docs = Vec::new();
    for d in documents(12, 300_000) {
        docs.push((put_document(&c.nodes[0], &d).await, d));
    }
    let mut parities = BTreeSet::new();
    for (k, _) in &docs {
        parities.extend(parity_keys(&c, *k).await);
    }
    wait_replicated(&c, &parities, 3, true).await;
    scrub(&c.nodes[0], ScrubMode::Window { blocks: 0 }).await;
    single_copies_are_proved_by_their_owner_only(&c, &parities).await;
    for _ in 0..2 {
        // The leaver (the live node holding most single copies, node 0 aside) holds single
        // copies that exist nowhere else.
        let (held, leaver) = (1..c.nodes.len())
            .filter(|&i| c.nodes[i].alive())
            .map(|i| {
                let dir = c.nodes[i].data_dir.join("single");
                (records_in(&dir).len(), i)
            })
            .max()
            .unwrap();
        assert!(held > 0, "node {leaver} holds no single copy");
        assert!(
            c.nodes[leaver].terminate(Duration::from_secs(60)),
            "graceful leave did not exit"
        );
        c.wait_ideal(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let disk = files_on_disk(&c);
    let gone = parities.iter().filter(|k| !disk.contains_key(k)).count();
    assert_eq!(gone, 0, "{gone} single copies lost by graceful leaves");
    read_all_everywhere(&c, &docs).await;
    println!(
        "2 of 6 nodes left gracefully: all {} parities kept, every document readable",
        parities.len()
    );
}

/// A single copy is proved only by the node that owns its key in its own view: a node outside
/// the owner's place that holds one (as a node whose view disagrees would) proves nothing, so
/// two nodes cannot each prove a copy to the other and both drop theirs.
async fn single_copies_are_proved_by_their_owner_only(c: &Cluster, parities: &BTreeSet<BlockKey>) {
    use peerstore_proto::member::{possession_proof, EntRequest, EntResponse};
    let singles: BTreeMap<BlockKey, Vec<u8>> = c
        .nodes
        .iter()
        .flat_map(|n| records_in(&n.data_dir.join("single")))
        .filter(|(k, _)| parities.contains(k))
        .collect();
    let (key, bytes) = singles.into_iter().next().expect("a scrubbed parity");
    let owner = match c.nodes[0].call(ClientRequest::Lookup { key }).await {
        ClientResponse::Owner { replicas, .. } => replicas[0].addr.to_string(),
        other => panic!("{other:?}"),
    };
    let owner = c
        .nodes
        .iter()
        .find(|n| n.addr.to_string() == owner)
        .expect("the owner");
    let other = c
        .nodes
        .iter()
        .find(|n| n.addr != owner.addr)
        .expect("another node");
    match other
        .member(MemberRequest::Entangled(EntRequest::StoreSingle {
            key,
            data: bytes.clone(),
        }))
        .await
    {
        MemberResponse::Entangled(EntResponse::Ok) => {}
        r => panic!("{r:?}"),
    }
    let nonce = [7u8; 32];
    let req = || {
        MemberRequest::Entangled(EntRequest::ProveSingle {
            keys: vec![(key, nonce)],
        })
    };
    match other.member(req()).await {
        MemberResponse::Entangled(EntResponse::Proofs { proofs }) => {
            assert_eq!(
                proofs,
                vec![None],
                "a node that does not own the key proved it"
            );
        }
        r => panic!("{r:?}"),
    }
    match owner.member(req()).await {
        MemberResponse::Entangled(EntResponse::Proofs { proofs }) => {
            assert_eq!(proofs, vec![Some(possession_proof(&nonce, &bytes))]);
        }
        r => panic!("{r:?}"),
    }
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// `writer`'s signed authorization to write `data` in session `session`, as sent.
fn signed(writer: &crypto::Identity, data: &[u8], session: Option<u64>) -> Vec<u8> {
    let auth = crypto::WriteAuth::sign(
        writer,
        blake3::hash(data).as_bytes(),
        session,
        now_us(),
        rand::random(),
    );
    postcard::to_stdvec(&auth).unwrap()
}

/// Stores a document for `writer` in write session `id` that keeps `keep`.
async fn put_in_session(
    n: &NodeProc,
    data: &[u8],
    writer: &crypto::Identity,
    id: u64,
    keep: Vec<BlockKey>,
) -> BlockKey {
    match n
        .call(ClientRequest::PutDocument {
            data: data.to_vec(),
            auth: Some(signed(writer, data, Some(id))),
            session: Some(peerstore_proto::EntangleSession { id, keep }),
        })
        .await
    {
        ClientResponse::DocumentStored { key } => key,
        other => panic!("put-document in a session: {other:?}"),
    }
}

/// The pointers of every codeword of a document.
async fn pointers_of(c: &Cluster, doc: BlockKey) -> Vec<BlockKey> {
    let bytes = fetch_record(c, doc).await.expect("document record held");
    let d = DocRecord::decode(&bytes).expect("document record");
    let mut out = Vec::new();
    for rk in d.codewords {
        let bytes = fetch_record(c, rk).await.expect("codeword record held");
        let r = decode_record(&bytes).expect("codeword record");
        out.extend(r.pointers.iter().map(|k| BlockKey(k.0)));
    }
    out
}

/// Write sessions (issue 11, deleting gives space back): a session's documents point only into
/// the session's own blocks, the blocks of the documents its client keeps (its writer's only),
/// and anchors; never into anything else the node wrote before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_point_only_into_what_they_keep() {
    let _g = SERIAL.lock().await;
    let c = Cluster::start(5, &ring_args()).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alice = crypto::Identity::from_secrets([1; 32], [1; 32]);
    let bob = crypto::Identity::from_secrets([2; 32], [2; 32]);
    let (alice, bob) = (&alice, &bob);
    let n = &c.nodes[0];
    let data = |seed: u64, len: usize| peerstore_testkit::documents(1, seed, &[len]).remove(0);
    // Earlier writes through the same node: a session-less one, Alice's first run, Bob's.
    let old = put_document(n, &data(1, 3 * S * B)).await;
    let x = put_in_session(n, &data(2, 3 * S * B), alice, 1, vec![]).await;
    let y = put_in_session(n, &data(3, 3 * S * B), bob, 2, vec![]).await;
    let stored = |k: BlockKey| {
        let c = &c;
        async move { parity_keys(c, k).await.into_iter().collect::<BTreeSet<_>>() }
    };
    let (old_b, x_b, y_b) = (stored(old).await, stored(x).await, stored(y).await);
    let anchors: BTreeSet<BlockKey> = (0..8u32)
        .map(|i| BlockKey(entangle::BlockKey::anchor(B as u32, i).0))
        .collect();

    // A run that keeps nothing: its own blocks and anchors only.
    let w = put_in_session(n, &data(4, 5 * S * B), alice, 3, vec![]).await;
    let w_b = stored(w).await;
    let pw = pointers_of(&c, w).await;
    assert!(
        pw.iter().all(|p| w_b.contains(p) || anchors.contains(p)),
        "a run that keeps nothing points only into itself"
    );
    assert!(
        pw.iter().any(|p| w_b.contains(p)),
        "and is entangled within"
    );

    // A run that keeps X (Alice's) and names Y (Bob's): X's blocks, never Y's or older ones.
    let z = put_in_session(n, &data(5, 5 * S * B), alice, 4, vec![x, y]).await;
    let z_b = stored(z).await;
    let pz = pointers_of(&c, z).await;
    let into_x = pz.iter().filter(|p| x_b.contains(p)).count();
    assert!(into_x > 0, "the kept document is pointed into: {pz:?}");
    assert!(
        !pz.iter().any(|p| y_b.contains(p)),
        "never into another writer's document"
    );
    assert!(!pz.iter().any(|p| old_b.contains(p) || w_b.contains(p)));
    assert!(pz
        .iter()
        .all(|p| z_b.contains(p) || x_b.contains(p) || anchors.contains(p)));
    // A later document of the same run also points into the run's earlier one.
    let z2 = put_in_session(n, &data(6, S * B), alice, 4, vec![]).await;
    let pz2 = pointers_of(&c, z2).await;
    assert!(pz2.iter().any(|p| z_b.contains(p)), "the run's own tail");
    assert!(!pz2.iter().any(|p| y_b.contains(p) || old_b.contains(p)));
    println!(
        "session pointers: W {} own of {}, Z {into_x} into the kept X of {}",
        pw.iter().filter(|p| w_b.contains(p)).count(),
        pw.len(),
        pz.len()
    );
    for (k, d) in [(w, data(4, 5 * S * B)), (z, data(5, 5 * S * B))] {
        assert_eq!(get_doc(&c.nodes[3], k).await.unwrap(), d);
    }
}

/// Signed writes (issue 14): the writer a node records is the verified signer of the write; a
/// forged, stale, replayed or oversized authorization is refused; a document record that a
/// lying member makes over another user's codewords deletes nothing of them; a deletion gives
/// the writer their quota back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_signed_and_deletions_bound_to_them() {
    let _g = SERIAL.lock().await;
    let mut args = ring_args();
    args.extend(["--user-quota", "8M"]);
    let c = Cluster::start(4, &args).await;
    c.wait_ideal(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let alice = crypto::Identity::from_secrets([1; 32], [1; 32]);
    let mallory = crypto::Identity::from_secrets([3; 32], [3; 32]);
    let n = &c.nodes[0];
    let data = peerstore_testkit::documents(1, 7, &[3 * S * B]).remove(0);
    let put = |auth: Vec<u8>, data: Vec<u8>| async move {
        n.call(ClientRequest::PutDocument {
            data,
            auth: Some(auth),
            session: Some(peerstore_proto::EntangleSession {
                id: 9,
                keep: vec![],
            }),
        })
        .await
    };
    let refused = |r: ClientResponse, code: peerstore_proto::ErrorCode, what: &str| match r {
        ClientResponse::Error { code: c, message } => {
            assert_eq!(c, code, "{what}: {message}");
            println!("{what}: {message}");
        }
        other => panic!("{what} was accepted: {other:?}"),
    };

    // Alice's signed write: her id is the verified writer of the record.
    let auth = signed(&alice, &data, Some(9));
    let doc = match put(auth.clone(), data.clone()).await {
        ClientResponse::DocumentStored { key } => key,
        other => panic!("signed write: {other:?}"),
    };
    let d = DocRecord::decode(&fetch_record(&c, doc).await.expect("record")).unwrap();
    assert_eq!(d.verified_writer(), Ok(alice.user_id().0));
    assert_eq!(users_bytes(&c).await, data.len() as u64, "charged once");

    // The same request again (a replay), Alice's id on Mallory's signature, a signature for
    // other bytes or another session, a stale one, an oversized one: all refused.
    refused(
        put(auth.clone(), data.clone()).await,
        peerstore_proto::ErrorCode::Forbidden,
        "a replay",
    );
    let mut forged: crypto::WriteAuth =
        postcard::from_bytes(&signed(&mallory, &data, Some(9))).unwrap();
    forged.user = alice.user_id();
    refused(
        put(postcard::to_stdvec(&forged).unwrap(), data.clone()).await,
        peerstore_proto::ErrorCode::Forbidden,
        "Alice's id on Mallory's signature",
    );
    refused(
        put(signed(&alice, b"other bytes", Some(9)), data.clone()).await,
        peerstore_proto::ErrorCode::Forbidden,
        "a signature over other bytes",
    );
    refused(
        put(signed(&alice, &data, Some(10)), data.clone()).await,
        peerstore_proto::ErrorCode::Forbidden,
        "a signature for another session",
    );
    let stale = crypto::WriteAuth::sign(
        &alice,
        blake3::hash(&data).as_bytes(),
        Some(9),
        now_us() - 3_600_000_000,
        1,
    );
    refused(
        put(postcard::to_stdvec(&stale).unwrap(), data.clone()).await,
        peerstore_proto::ErrorCode::Forbidden,
        "an hour-old signature",
    );
    refused(
        put(vec![0; 4096], data.clone()).await,
        peerstore_proto::ErrorCode::BadRequest,
        "an oversized authorization",
    );

    // A lying member signs Alice's content as Mallory and names Alice's codewords in a record
    // of its own, stores it (it verifies: Mallory did sign it), and deletes it as Mallory.
    let fake = DocRecord {
        writer: Some(mallory.user_id().0),
        signed: Some(peerstore_node::entangled::format::SignedWrite {
            auth: crypto::WriteAuth::sign(&mallory, &d.content_hash, Some(9), now_us(), 5),
            session: Some(9),
        }),
        ..d.clone()
    };
    let fake_bytes = fake.encode();
    let fake_key = BlockKey::of(&fake_bytes);
    let mut held = 0;
    for node in c.live() {
        if let MemberResponse::Entangled(peerstore_proto::EntResponse::Ok) = node
            .member(MemberRequest::Entangled(
                peerstore_proto::EntRequest::StoreRecords {
                    records: vec![fake_bytes.clone()],
                },
            ))
            .await
        {
            held += 1;
        }
    }
    assert!(held > 0, "the fake record is stored somewhere");
    // A record whose signature does not verify is refused at the door.
    let mut unsigned = fake.clone();
    if let Some(s) = unsigned.signed.as_mut() {
        s.auth.user = alice.user_id();
    }
    match n
        .member(MemberRequest::Entangled(
            peerstore_proto::EntRequest::StoreRecords {
                records: vec![unsigned.encode()],
            },
        ))
        .await
    {
        MemberResponse::Error { message, .. } => {
            assert!(
                message.contains("not a codeword or document record"),
                "{message}"
            )
        }
        other => panic!("a record with a forged signature was stored: {other:?}"),
    }
    let st = crypto::DeleteStatement::sign(&mallory, now_us(), vec![fake_key.0]).unwrap();
    let report = match n
        .call(ClientRequest::DeleteDocuments {
            statement: postcard::to_stdvec(&st).unwrap(),
        })
        .await
    {
        ClientResponse::Deleted(r) => r,
        other => panic!("delete: {other:?}"),
    };
    println!("Mallory's deletion of his fake record: {report:?}");
    let len = fake_bytes.len() as u64;
    assert!(
        report.bytes_freed >= len && report.bytes_freed % len == 0,
        "only his record went: {report:?}"
    );
    for rk in &d.codewords {
        assert!(
            fetch_record(&c, *rk).await.is_some(),
            "Alice's codeword records stay"
        );
    }
    let on_disk = files_on_disk(&c);
    for k in parity_keys(&c, doc).await {
        assert!(on_disk.contains_key(&k), "Alice's block {k} stays");
    }
    match n.call(ClientRequest::GetDocument { key: doc }).await {
        ClientResponse::Block { data: back } => assert_eq!(back, data),
        other => panic!("Alice's document after Mallory's deletion: {other:?}"),
    }

    // Alice deletes her document: it goes, and her quota comes back.
    let st = crypto::DeleteStatement::sign(&alice, now_us(), vec![doc.0]).unwrap();
    match n
        .call(ClientRequest::DeleteDocuments {
            statement: postcard::to_stdvec(&st).unwrap(),
        })
        .await
    {
        ClientResponse::Deleted(r) => {
            assert_eq!(r.deleted, vec![doc], "{r:?}");
        }
        other => panic!("Alice's delete: {other:?}"),
    }
    assert_eq!(users_bytes(&c).await, 0, "the deletion gave the quota back");
    assert!(matches!(
        n.call(ClientRequest::GetDocument { key: doc }).await,
        ClientResponse::NotFound | ClientResponse::Error { .. }
    ));
}

/// What every user has stored on the live nodes, in all (`status`).
async fn users_bytes(c: &Cluster) -> u64 {
    let mut total = 0;
    for node in c.live() {
        let s = node.status().await.expect("status");
        total += s.users.iter().map(|u| u.bytes).sum::<u64>();
    }
    total
}
