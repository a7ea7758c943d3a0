//! The "16 nodes, 256 MiB, kill 4, repair" at full size, with B = 256 KiB and the
//! default code (4, 8, 12). Heavy (about 2.3 GiB written before scrub), so it is compiled only
//! with the `soak` feature, outside `make test`: `make soak`, or
//! `PEERSTORE_SOAK_MIB=256 cargo test --release -p peerstore-node --features soak --test entangled_soak -- --nocapture`.
#![cfg(feature = "soak")]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use peerstore_node::entangled::format::{decode_record, DocRecord};
use peerstore_proto::{
    AdminRequest, AdminResponse, BlockKey, ClientRequest, ClientResponse, RpcClient, ScrubMode,
    ScrubReport,
};
use peerstore_testkit::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DOC: usize = 4 << 20;

async fn call(c: &RpcClient, r: ClientRequest) -> ClientResponse {
    match c.call(r).await {
        Ok(r) => r,
        Err(e) => panic!("rpc: {e}"),
    }
}

async fn admin(c: &RpcClient, r: AdminRequest) -> AdminResponse {
    match c.admin(r).await {
        Ok(r) => r,
        Err(e) => panic!("rpc: {e}"),
    }
}

fn on_disk(c: &Cluster) -> BTreeMap<BlockKey, usize> {
    let mut out = BTreeMap::new();
    for n in c.live() {
        for sub in ["store", "single"] {
            for r in peerstore_node::store::records_on_disk(&n.data_dir.join(sub))
                .into_iter()
                .flatten()
            {
                let k = r.key;
                *out.entry(k).or_default() += 1;
            }
        }
    }
    out
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_16_nodes_kill_4_repair() {
    let mib = std::env::var("PEERSTORE_SOAK_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(256);
    let seed: u64 = std::env::var("PEERSTORE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    println!("soak: {mib} MiB, 16 nodes, kill 4, seed {seed}");
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        conf.path(),
        "[entanglement]\ntype = \"step\"\ns = 4\nt = 8\np = 12\nblock_size = 262144\nrepair_ms = 3600000\n",
    )
    .unwrap();
    let conf_path = conf.path().to_string_lossy().into_owned();
    let mut c = Cluster::start(16, &["--replication", "3", "--config", &conf_path]).await;
    c.wait_ideal(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let clients: Vec<RpcClient> = c
        .nodes
        .iter()
        .map(|n| {
            let me = c.identity(peerstore_proto::Role::Admin);
            RpcClient::start_as(n.addr.clone(), Duration::from_secs(1800), Some(me)).unwrap()
        })
        .collect();

    // Write: 4 MiB documents through 4 entry nodes at once.
    let n_docs = (mib << 20) / DOC;
    let start = Instant::now();
    let mut docs: Vec<(BlockKey, u64)> = Vec::new();
    for batch in (0..n_docs as u64).collect::<Vec<_>>().chunks(4) {
        let puts = batch.iter().map(|&i| {
            let cl = &clients[i as usize % 4];
            async move {
                let data = block(seed * 1_000_000 + i, DOC);
                match call(
                    cl,
                    ClientRequest::PutDocument {
                        data,
                        auth: None,
                        session: None,
                    },
                )
                .await
                {
                    ClientResponse::DocumentStored { key } => (key, i),
                    other => panic!("put {i}: {other:?}"),
                }
            }
        });
        docs.extend(futures::future::join_all(puts).await);
    }
    let t_put = start.elapsed();
    println!(
        "put {n_docs} documents ({mib} MiB) in {t_put:?}: {:.1} MiB/s",
        mib_s(n_docs * DOC, t_put)
    );
    let mut parities = BTreeSet::new();
    let mut records = Vec::new();
    for (k, _) in &docs {
        let bytes = fetch_record(&c, *k).await.expect("document record held");
        let d = DocRecord::decode(&bytes).expect("document record");
        records.push(*k);
        for rk in d.codewords {
            let bytes = fetch_record(&c, rk).await.expect("codeword record held");
            let r = decode_record(&bytes).expect("record");
            records.push(rk);
            parities.extend(r.stored_keys.iter().map(|k| BlockKey(k.0)));
        }
    }
    wait_until(Duration::from_secs(300), || async {
        let d = on_disk(&c);
        let under = parities
            .iter()
            .filter(|k| d.get(*k).copied().unwrap_or(0) < 3)
            .count();
        let over = parities
            .iter()
            .filter(|k| d.get(*k).copied().unwrap_or(0) > 3)
            .count();
        if over > 0 && under == 0 {
            println!("{over} parities over 3 copies on disk (stale; the scrub drops them)");
        }
        if under == 0 {
            Ok(())
        } else {
            Err(format!(
                "{under} parities under and {over} over 3 copies on disk"
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let du = |s: &AdminResponse| {
        match s {
        AdminResponse::EntangleStats(s) => format!(
            "{} codewords, {} MiB of documents, {} MiB of parities ({} replicated + {} single copies): overhead {:.2}x",
            s.codewords,
            s.logical_bytes >> 20,
            s.parity_bytes >> 20,
            s.parity_copies_replicated,
            s.parity_copies_single,
            s.overhead()
        ),
        other => panic!("{other:?}"),
    }
    };
    println!(
        "du before scrub: {}",
        du(&admin(&clients[0], AdminRequest::EntangleStats).await)
    );
    let start = Instant::now();
    let r: ScrubReport = match admin(
        &clients[0],
        AdminRequest::Scrub {
            mode: ScrubMode::Window { blocks: 0 },
            once: true,
            interval_ms: 0,
        },
    )
    .await
    {
        AdminResponse::Scrubbed(r) => r,
        other => panic!("{other:?}"),
    };
    println!("scrub --window 0 in {:?}: {r:?}", start.elapsed());
    println!(
        "du after scrub: {}",
        du(&admin(&clients[0], AdminRequest::EntangleStats).await)
    );
    let t = wait_until(Duration::from_secs(60), || async {
        let d = on_disk(&c);
        let n = parities.iter().filter(|k| d.get(*k) != Some(&1)).count();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} parities not at one copy on disk"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("every parity at one copy on disk {t:?} after the scrub answered");

    // Four victims at random from the seed, three of them ring neighbours (consecutive by id):
    // under r-way metadata the records of an arc would be gone.
    let mut rng = ChaCha8Rng::seed_from_u64(test_seed("soak victims"));
    let (mut victims, _) = random_victims(&c, 3, true, 0.30, &mut rng).await;
    let order = ring_order(&c).await;
    let others: Vec<usize> = order
        .iter()
        .map(|(_, i)| *i)
        .filter(|i| !victims.contains(i))
        .collect();
    victims.push(others[rng.gen_range(0..others.len())]);
    let picks: Vec<usize> = victims
        .iter()
        .map(|v| order.iter().position(|(_, i)| i == v).unwrap())
        .collect();
    let share = arc_share(&order, &picks);
    println!(
        "victims {victims:?} (three ring neighbours and one more) own {:.1}% of the key space",
        100.0 * share
    );
    for &v in &victims {
        c.nodes[v].kill9();
    }
    c.wait_ideal(Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let d = on_disk(&c);
    let lost = parities.iter().filter(|k| !d.contains_key(k)).count();
    println!(
        "killed nodes {victims:?}: {lost} of {} parities lost ({:.1}%)",
        parities.len(),
        100.0 * lost as f64 / parities.len() as f64
    );
    let held = record_holders(&c, &records).await;
    let min_held = held.values().min().copied().unwrap_or(0);
    println!(
        "{} records, every one still on at least {min_held} of 12 live nodes",
        records.len()
    );
    assert!(min_held > 0, "a record lost every copy");
    let t = wait_until(Duration::from_secs(60), || async {
        let h = record_holders(&c, &records).await;
        let short = h.values().filter(|&&n| n < 10).count();
        if short == 0 {
            Ok(())
        } else {
            Err(format!("{short} records on fewer than m = 10 nodes"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    println!("every record back on m = 10 live nodes within {t:?}");
    tokio::time::sleep(Duration::from_millis(5 * MAINTENANCE_MS)).await;
    let live: Vec<usize> = (0..16).filter(|i| c.nodes[*i].alive()).collect();
    let via = &clients[live[0]];
    let start = Instant::now();
    let s = match admin(via, AdminRequest::Repair { keys: vec![] }).await {
        AdminResponse::Repaired(s) => s,
        other => panic!("{other:?}"),
    };
    let t_rep = start.elapsed();
    println!("repair in {t_rep:?}: {s:?}");
    let d = on_disk(&c);
    let still = parities.iter().filter(|k| !d.contains_key(k)).count();
    assert_eq!(still, 0, "{still} parities not rebuilt");
    let start = Instant::now();
    let reader = &clients[live[1]];
    for (k, i) in &docs {
        let want = block(seed * 1_000_000 + i, DOC);
        match call(reader, ClientRequest::GetDocument { key: *k }).await {
            ClientResponse::Block { data } => assert!(data == want, "document {i} differs"),
            other => panic!("document {i}: {other:?}"),
        }
    }
    let t_get = start.elapsed();
    println!(
        "every parity back; all {n_docs} documents byte-identical, read in {t_get:?}: {:.1} MiB/s",
        mib_s(n_docs * DOC, t_get)
    );
}
