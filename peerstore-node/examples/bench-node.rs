//! Node benchmark (`make bench-node`): a local 5-node ring with r = 3 on 127.0.0.1.
//! Put and get throughput for 256 KiB blocks with 16 in flight, lookup latency p50/p99, RSS per
//! node idle and under load, printed beside the loopback TCP throughput of one stream measured
//! by iperf3 in the same run (scripts/bench-node.sh installs it).
//!
//! `cargo run --release -p peerstore-node --example bench-node -- [--blocks N] [--iperf MiB/s]`

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use peerstore_proto::{BlockKey, ClientRequest, ClientResponse, RpcClient};
use peerstore_testkit::{block, Cluster};

const BLOCK: usize = 256 << 10;
const IN_FLIGHT: usize = 16;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
        })
        .unwrap_or(0.0)
}

/// CPU seconds of every node and of this process (the client side).
fn cpu_now(pids: &[u32]) -> (f64, f64) {
    (
        pids.iter().map(|p| cpu_secs(*p)).sum(),
        cpu_secs(std::process::id()),
    )
}

fn pids(c: &Cluster) -> Vec<u32> {
    c.nodes
        .iter()
        .filter_map(|n| n.child.as_ref().map(|c| c.id()))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let blocks: usize = arg("--blocks").and_then(|v| v.parse().ok()).unwrap_or(1024);
    let iperf: Option<f64> = arg("--iperf").and_then(|v| v.parse().ok());
    // The transport floor measured in the same run (examples/libp2p-baseline.rs).
    let floor_get: Option<f64> = arg("--floor-get").and_then(|v| v.parse().ok());
    let floor_put: Option<f64> = arg("--floor-put").and_then(|v| v.parse().ok());
    // For profiling: repeat the get phase (the figure is the mean) and pick the clients.
    let get_rounds: usize = arg("--get-rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let only: Option<String> = arg("--only");

    // Extra node flags for experiments, e.g. PEERSTORE_BENCH_NODE_ARGS="--maintenance-ms 60000".
    let extra_env = std::env::var("PEERSTORE_BENCH_NODE_ARGS").unwrap_or_default();
    let mut extra: Vec<&str> = vec!["--replication", "3"];
    extra.extend(extra_env.split_whitespace());
    let cluster = Cluster::start(5, &extra).await;
    cluster
        .wait_ideal(Duration::from_secs(60))
        .await
        .expect("ring did not form");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = pids(&cluster).into_iter().map(rss_mib).collect();

    let total_mib = (blocks * BLOCK) as f64 / (1 << 20) as f64;
    let node = &cluster.nodes[0];

    // Sample the peak RSS of every node while loading.
    let pid_list = pids(&cluster);
    let peak = std::sync::Arc::new(std::sync::Mutex::new(vec![0f64; pid_list.len()]));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                for (i, p) in pid_list.iter().enumerate() {
                    let v = rss_mib(*p);
                    if let Ok(mut pk) = peak.lock() {
                        pk[i] = pk[i].max(v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let all_pids = pids(&cluster);
    let direct = node.client.clone();
    let routed = RpcClient::routed(
        node.addr.clone(),
        Duration::from_secs(30),
        Some(cluster.identity(peerstore_proto::Role::User)),
    )
    .expect("client");
    routed.refresh().await;
    let mut runs = Vec::new();
    for (name, client, offset) in [
        ("via one node", &direct, 0u64),
        ("routed", &routed, 1u64 << 32),
    ] {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        // Fresh blocks for each client so the second run stores as much as the first.
        let data: Vec<Vec<u8>> = (0..blocks)
            .map(|i| block(offset + i as u64, BLOCK))
            .collect();
        let keys: Vec<BlockKey> = data.iter().map(|d| BlockKey::of(d)).collect();
        let cpu0 = cpu_now(&all_pids);
        let t = Instant::now();
        let failures = stream::iter(data.iter().zip(&keys))
            .map(|(d, k)| async move {
                client
                    .call(ClientRequest::Put {
                        key: *k,
                        data: d.clone(),
                    })
                    .await
            })
            .buffer_unordered(IN_FLIGHT)
            .filter(|r| std::future::ready(!matches!(r, Ok(ClientResponse::Stored { .. }))))
            .count()
            .await;
        let put_s = t.elapsed().as_secs_f64();
        let cpu1 = cpu_now(&all_pids);
        assert_eq!(failures, 0, "{failures} puts failed ({name})");

        let t = Instant::now();
        let bad = stream::iter((0..get_rounds).flat_map(|_| keys.iter().zip(&data)))
            .map(|(k, d)| async move {
                match client.call(ClientRequest::Get { key: *k }).await {
                    Ok(ClientResponse::Block { data }) => data == *d,
                    _ => false,
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .filter(|ok| std::future::ready(!ok))
            .count()
            .await;
        let get_s = t.elapsed().as_secs_f64() / get_rounds as f64;
        let end = cpu_now(&all_pids);
        let per_round = |a: f64, b: f64| a + (b - a) / get_rounds as f64;
        let cpu2 = (per_round(cpu1.0, end.0), per_round(cpu1.1, end.1));
        assert_eq!(bad, 0, "{bad} gets failed ({name})");
        runs.push((name, put_s, get_s, cpu0, cpu1, cpu2));
    }
    sampler.abort();
    let loaded: Vec<f64> = peak.lock().map(|p| p.clone()).unwrap_or_default();

    let mut lat = Vec::new();
    for i in 0..2000u64 {
        let key = BlockKey::of(&i.to_le_bytes());
        let t = Instant::now();
        let r = node.call(ClientRequest::Lookup { key }).await;
        lat.push(t.elapsed());
        assert!(
            matches!(r, ClientResponse::Owner { .. }),
            "lookup failed: {r:?}"
        );
    }
    lat.sort();

    println!("## peerstore-node benchmark: 5 local nodes, r = 3, {blocks} blocks of 256 KiB, {IN_FLIGHT} in flight");
    println!();
    println!("| what | figure |");
    println!("|---|---|");
    let mut best = (0f64, 0f64);
    for (name, put_s, get_s, cpu0, cpu1, cpu2) in &runs {
        let (put_mibs, get_mibs) = (total_mib / put_s, total_mib / get_s);
        best = (best.0.max(put_mibs), best.1.max(get_mibs));
        println!("| put throughput {name} (r = 3, majority ack) | {put_mibs:.0} MiB/s |");
        println!("| get throughput {name} | {get_mibs:.0} MiB/s |");
        for (what, a, b, secs) in [("put", cpu0, cpu1, put_s), ("get", cpu1, cpu2, get_s)] {
            println!(
                "| CPU during {what} {name}: nodes / client | {:.2} / {:.2} cores ({:.1} / {:.1} ms per MiB) |",
                (b.0 - a.0) / secs,
                (b.1 - a.1) / secs,
                (b.0 - a.0) * 1e3 / total_mib,
                (b.1 - a.1) * 1e3 / total_mib,
            );
        }
    }
    let (put_mibs, get_mibs) = best;
    println!(
        "| lookup latency p50 / p99 (2,000 lookups) | {:.0} / {:.0} us |",
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| RSS per node, idle | {} MiB |",
        idle.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| RSS per node, peak under load | {} MiB |",
        loaded
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(tcp) = iperf {
        println!("| loopback TCP, one stream (iperf3, same run) | {tcp:.0} MiB/s |");
        println!(
            "| get / loopback (target >= 0.15) | {:.3} |",
            get_mibs / tcp
        );
        println!(
            "| put / loopback (target >= 0.05) | {:.3} |",
            put_mibs / tcp
        );
    } else {
        println!(
            "| loopback TCP | not measured (pass --iperf MiB/s; scripts/bench-node.sh does) |"
        );
    }
    if let (Some(fg), Some(fp)) = (floor_get, floor_put) {
        println!(
            "| libp2p request-response alone, 2 endpoints, 256 KiB, 16 in flight: responses / requests (same run) | {fg:.0} / {fp:.0} MiB/s |"
        );
        println!(
            "| get / that floor (one transfer per get) | {:.2} |",
            get_mibs / fg
        );
        println!(
            "| put x 3 / that floor (three transfers per put, r = 3) | {:.2} |",
            3.0 * put_mibs / fp
        );
        if let Some(tcp) = iperf {
            println!(
                "| the floor / loopback: responses / requests | {:.3} / {:.3} |",
                fg / tcp,
                fp / tcp
            );
        }
    }
    let max_idle = idle.iter().cloned().fold(0.0, f64::max);
    println!(
        "| idle RSS target (< 30 MiB) | {} (max {max_idle:.1} MiB) |",
        if max_idle < 30.0 { "met" } else { "missed" }
    );
}
