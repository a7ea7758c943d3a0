//! Throughput of the block store for 256 KiB blocks. Prints figures; asserts only correctness
//! (timings depend on the machine). Run with
//! `cargo test --release -p peerstore-node --test store_perf -- --nocapture`.

use std::time::Instant;

use peerstore_node::store::{BlockKey, BlockStore, PutOutcome, Role, StoreConfig};

const BLOCK: usize = 256 * 1024;

fn blocks(n: u64, salt: u64) -> Vec<(BlockKey, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut out = vec![0u8; BLOCK];
            blake3::Hasher::new()
                .update(&(salt * 1_000_000 + i).to_le_bytes())
                .finalize_xof()
                .fill(&mut out);
            (BlockKey::of(&out), out)
        })
        .collect()
}

fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// Puts `set` from `threads` threads; returns MiB/s.
fn put_all(s: &BlockStore, set: &[(BlockKey, Vec<u8>)], threads: usize) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for chunk in set.chunks(set.len().div_ceil(threads)) {
            scope.spawn(move || {
                for (k, b) in chunk {
                    assert_eq!(s.put(*k, b, Role::Owner).expect("put"), PutOutcome::Stored);
                }
            });
        }
    });
    mib_per_s(set.len() * BLOCK, t0.elapsed().as_secs_f64())
}

fn get_all(s: &BlockStore, set: &[(BlockKey, Vec<u8>)], threads: usize) -> f64 {
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for chunk in set.chunks(set.len().div_ceil(threads)) {
            scope.spawn(move || {
                for (k, b) in chunk {
                    let got = s.get(k).expect("get").expect("held");
                    assert_eq!(got.len(), b.len());
                }
            });
        }
    });
    mib_per_s(set.len() * BLOCK, t0.elapsed().as_secs_f64())
}

#[test]
fn put_and_get_throughput_256k_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, _) = BlockStore::open(StoreConfig::new(dir.path(), 1 << 30)).expect("open");
    let one = blocks(32, 1);
    let many = blocks(256, 2);
    let p1 = put_all(&s, &one, 1);
    let c0 = s.stats().index_commits;
    let p8 = put_all(&s, &many, 8);
    let commits8 = s.stats().index_commits - c0;
    assert!(commits8 <= 256);
    let p32 = put_all(&s, &blocks(256, 3), 32);
    let batch = blocks(64, 4);
    let t0 = Instant::now();
    let results = s.put_many(&batch, Role::Replica);
    let pm = mib_per_s(batch.len() * BLOCK, t0.elapsed().as_secs_f64());
    assert!(results.iter().all(|r| matches!(r, Ok(PutOutcome::Stored))));
    let g1 = get_all(&s, &many, 1);
    let g2 = get_all(&s, &many, 2);
    let t0 = Instant::now();
    let (s, report) = {
        drop(s);
        BlockStore::open(StoreConfig::new(dir.path(), 1 << 30)).expect("reopen")
    };
    let reopen = mib_per_s(report.bytes as usize, t0.elapsed().as_secs_f64());
    assert_eq!(report.blocks, 32 + 256 + 256 + 64);
    assert_eq!(report.verified, 32 + 256 + 256 + 64);
    assert_eq!(s.used_bytes(), (32 + 256 + 256 + 64) * BLOCK as u64);
    println!(
        "store 256 KiB blocks, MiB/s: put 1 thread {p1:.0}, put 8 threads {p8:.0}, \
         put 32 threads {p32:.0}, put_many (1 caller, 64 blocks) {pm:.0}, get 1 thread {g1:.0}, get 2 threads {g2:.0}, \
         reopen+verify {reopen:.0}; 256 puts from 8 threads took {commits8} index commits"
    );
}
