//! Codec and repair figures: encode and decode MiB/s, blocks read per repaired block.
//!
//! `cargo run --release -p entangle --example bench [-- --quick]`
//! Prints figures only; nothing here is asserted.

use std::collections::BTreeMap;
use std::time::Instant;

use entangle::{
    decode, encode, repair, BlockKey, CodewordId, Encoded, MemArchive, Params, PointerSelector,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mib(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

/// A pool of real stored parity blocks to use as pointers.
fn pointer_pool(params: Params, n: usize) -> Vec<(BlockKey, Vec<u8>)> {
    let anchors: Vec<(BlockKey, &[u8])> = (0..params.t() as u32)
        .map(|i| (BlockKey::anchor(params.block_size, i), &[][..]))
        .collect();
    let mut pool = Vec::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut k = 0u8;
    while pool.len() < n {
        let mut doc = vec![0u8; params.capacity() as usize];
        rng.fill_bytes(&mut doc);
        let (_, blocks) = encode(params, CodewordId([k; 32]), &doc, &anchors).expect("encode");
        pool.extend(blocks);
        k = k.wrapping_add(1);
    }
    pool.truncate(n);
    pool
}

fn bench_codec(params: Params, rounds: usize) {
    let pool = pointer_pool(params, params.t() + 8);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut doc = vec![0u8; params.capacity() as usize];
    rng.fill_bytes(&mut doc);

    let start = Instant::now();
    let mut last: Option<Encoded> = None;
    for r in 0..rounds {
        let ptrs: Vec<(BlockKey, &[u8])> = (0..params.t())
            .map(|i| {
                let (k, b) = &pool[(i + r) % pool.len()];
                (*k, b.as_slice())
            })
            .collect();
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(r as u64).to_le_bytes());
        last = Some(encode(params, CodewordId(id), &doc, &ptrs).expect("encode"));
    }
    let enc = start.elapsed().as_secs_f64();
    let Some((rec, blocks)) = last else { return };

    let mut store: BTreeMap<BlockKey, Vec<u8>> = pool.iter().cloned().collect();
    store.extend(blocks);
    let time_decode = |store: &BTreeMap<BlockKey, Vec<u8>>| {
        let start = Instant::now();
        for _ in 0..rounds {
            let out = decode(&rec, store).expect("decode");
            assert_eq!(out.len(), doc.len());
        }
        start.elapsed().as_secs_f64()
    };
    let dec_full = time_decode(&store);
    // Worst case: e pointers missing, so s + e input symbols must be restored.
    let mut lossy = store.clone();
    for k in rec.pointers.iter().take(params.e()) {
        lossy.remove(k);
    }
    let dec_lossy = time_decode(&lossy);
    let data = rounds * doc.len();
    println!(
        "| ({},{},{}) | {} KiB | {:.0} | {:.0} | {:.0} |",
        params.s,
        params.t,
        params.p,
        params.block_size / 1024,
        mib(data, enc),
        mib(data, dec_full),
        mib(data, dec_lossy),
    );
}

fn bench_repair(params: Params, docs: usize, loss_pct: u32) {
    let mut archive =
        MemArchive::new(params, PointerSelector::mixed(params.t()), 5).expect("archive");
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for i in 0..docs as u64 {
        let mut doc = vec![0u8; params.capacity() as usize];
        rng.fill_bytes(&mut doc);
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_le_bytes());
        archive.store(&id, &doc).expect("store");
    }
    let mut damaged = archive.blocks().clone();
    let keys: Vec<BlockKey> = damaged.keys().copied().collect();
    let mut lost = 0;
    if loss_pct == 0 {
        // One lost block: the common case for a node's repair worker.
        damaged.remove(&keys[keys.len() / 2]);
        lost = 1;
    } else {
        for k in &keys {
            if rng.next_u32() % 100 < loss_pct {
                damaged.remove(k);
                lost += 1;
            }
        }
    }
    let start = Instant::now();
    let report = repair(archive.index(), &damaged);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "| ({},{},{}) | {} | {} | {} | {} | {:.2} | {:.0} ms |",
        params.s,
        params.t,
        params.p,
        if loss_pct == 0 {
            "1 block".to_string()
        } else {
            format!("{loss_pct}%")
        },
        lost,
        report.rebuilt.len(),
        report.codewords_decoded,
        report.reads_per_rebuilt_block(),
        secs * 1000.0
    );
}

/// Raw BLAKE3 and Reed-Solomon speed on this machine, to read the codec figures against.
fn baselines(rounds: usize) {
    let b = 256 * 1024;
    let mut buf = vec![0u8; 12 * b];
    ChaCha8Rng::seed_from_u64(3).fill_bytes(&mut buf);
    let start = Instant::now();
    let mut acc = 0u8;
    for _ in 0..rounds {
        acc ^= blake3::hash(&buf).as_bytes()[0];
    }
    let h = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..rounds {
        let shards: Vec<&[u8]> = buf.chunks(b).collect();
        let r = reed_solomon_simd::encode(12, 6, shards).expect("rs");
        acc ^= r[0][0];
    }
    let e = start.elapsed().as_secs_f64();
    println!(
        "Baselines (input MiB/s): BLAKE3 {:.0}; reed-solomon-simd encode 12+6 x 256 KiB {:.0} (checksum {acc})\n",
        mib(rounds * buf.len(), h),
        mib(rounds * buf.len(), e)
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 4 } else { 24 };
    baselines(rounds);
    println!("## Codec (one core; MiB/s of document data)\n");
    println!("| (s,t,p) | B | encode | decode, all symbols | decode, e pointers lost |");
    println!("|---|---|---|---|---|");
    for params in [
        // The ring's default first.
        Params::new(4, 8, 12, 256 * 1024),
        Params::new(4, 8, 12, 1024 * 1024),
        Params::new(2, 10, 6, 256 * 1024),
        Params::new(2, 10, 6, 1024 * 1024),
        Params::new(1, 10, 3, 256 * 1024),
        Params::new(1, 10, 3, 1024 * 1024),
    ] {
        bench_codec(params, rounds);
    }
    println!("\n## Repair (B = 4 KiB, 2,000 codewords; reads = blocks fetched from the store)\n");
    println!(
        "| (s,t,p) | loss | lost | rebuilt | codewords decoded | reads per rebuilt block | time |"
    );
    println!("|---|---|---|---|---|---|---|");
    let docs = if quick { 300 } else { 2000 };
    for params in [
        Params::new(4, 8, 12, 4096),
        Params::new(2, 10, 6, 4096),
        Params::new(1, 10, 3, 4096),
    ] {
        for loss in [0, 10, 30] {
            bench_repair(params, docs, loss);
        }
    }
}
