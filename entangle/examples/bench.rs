//! Codec and repair figures: encode and decode MiB/s of document data next to reed-solomon-simd
//! and BLAKE3 alone on the same shards in the same run, and blocks read per repaired block.
//!
//! `cargo run --release -p entangle --example bench [-- --quick] [--reps N] [--only SECTION]`
//!
//! - `--quick`: fewer rounds (a smoke run).
//! - `--reps N`: every figure is measured N times (default 3); the best is printed with the
//!   spread of the others below it (`best -x%`), since a shared machine is noisy.
//! - `--rounds N`: codewords per measurement (default 24, 4 with `--quick`). On a busy machine
//!   many short measurements (`--reps 25 --rounds 3`) find its quiet moments.
//! - `--only baselines|codec|systematic|other|repair`: one section. `systematic` compares the
//!   systematic (4,8,8) layout with parity-only (4,8,12) (same 3x overhead): encode, a healthy
//!   read (systematic: the `s` sources and a hash check, no decode) and degraded reads.
//! - `--cpu-time`: one-core figures use the thread's time on a CPU (Linux
//!   `/proc/thread-self/schedstat`) instead of the wall clock, so that a machine shared with
//!   other work gives about the figures of a quiet one; all-core figures stay wall-clock.
//! - `--profile encode|decode`: encode (or decode) (4,8,12) at 256 KiB on one core for about
//!   ten seconds and print nothing else, for `perf record`.
//!
//! Prints figures only; nothing here is asserted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use std::sync::atomic::AtomicUsize;

use entangle::{
    decode_with, encode, encode_layout, encode_verified, encode_verified_layout, encode_with,
    fetch_order, repair, AsRecord, BlockKey, CodewordId, EncodedRecord, Layout, MemArchive,
    Parallelism, Params, Pointer, PointerSelector, Record, SymbolSource,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

const MIB: f64 = 1024.0 * 1024.0;

/// `--cpu-time`: one-core figures from the thread's CPU time.
static CPU_TIME: AtomicBool = AtomicBool::new(false);

/// Nanoseconds this thread has run on a CPU (Linux). The kernel brings a running thread's
/// figure up to date only at a tick or a switch; yielding first makes it exact.
fn thread_cpu_ns() -> Option<u64> {
    std::thread::yield_now();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Wall clock, or the thread's CPU time for a one-core measurement with `--cpu-time`.
struct Timer {
    wall: Instant,
    cpu: Option<u64>,
}

impl Timer {
    fn start(one_core: bool) -> Self {
        let cpu = if one_core && CPU_TIME.load(Ordering::Relaxed) {
            thread_cpu_ns()
        } else {
            None
        };
        Timer {
            wall: Instant::now(),
            cpu,
        }
    }

    fn secs(&self) -> f64 {
        match (self.cpu, self.cpu.and(thread_cpu_ns())) {
            (Some(start), Some(now)) => now.saturating_sub(start) as f64 / 1e9,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }
}

/// Best and worst of several measurements of one figure (MiB/s).
#[derive(Clone, Copy)]
struct Figure {
    best: f64,
    worst: f64,
}

impl Figure {
    /// Runs `f` (which returns the seconds it measured for `bytes` bytes) `reps` times.
    fn measure(reps: usize, bytes: usize, mut f: impl FnMut() -> f64) -> Figure {
        let mut best = 0f64;
        let mut worst = f64::MAX;
        for _ in 0..reps.max(1) {
            let rate = bytes as f64 / MIB / f(); // MiB/s
            best = best.max(rate);
            worst = worst.min(rate);
        }
        Figure { best, worst }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spread = if self.best > 0.0 {
            100.0 * (self.best - self.worst) / self.best
        } else {
            0.0
        };
        write!(f, "{:.0} -{spread:.0}%", self.best)
    }
}

struct Opts {
    rounds: usize,
    reps: usize,
}

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A pool of real stored parity blocks to use as pointers.
fn pointer_pool(params: Params, n: usize) -> Vec<(BlockKey, Vec<u8>)> {
    let anchors: Vec<(BlockKey, &[u8])> = (0..params.t() as u32)
        .map(|i| (BlockKey::anchor(params.block_size, i), &[][..]))
        .collect();
    let mut pool = Vec::new();
    let mut k = 0u8;
    while pool.len() < n {
        let doc = random(u64::from(k) + 1000, params.capacity() as usize);
        let (_, blocks) = encode(params, CodewordId([k; 32]), &doc, &anchors).expect("encode");
        pool.extend(blocks);
        k = k.wrapping_add(1);
    }
    pool.truncate(n);
    pool
}

/// A source that hands out blocks copied before the clock started, so that a decode's time is
/// the codec's own (a node's source reads into a fresh buffer anyway). Counts the blocks asked
/// for (held or not).
struct Prepared(Mutex<BTreeMap<BlockKey, Vec<Vec<u8>>>>, AtomicUsize);

impl Prepared {
    fn new(store: &BTreeMap<BlockKey, Vec<u8>>, keys: &[BlockKey], copies: usize) -> Self {
        let mut m = BTreeMap::new();
        for k in keys {
            if let Some(v) = store.get(k) {
                m.insert(*k, vec![v.clone(); copies]);
            }
        }
        Prepared(Mutex::new(m), AtomicUsize::new(0))
    }
}

impl SymbolSource for Prepared {
    fn get(&self, key: &BlockKey) -> Option<Vec<u8>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.lock().ok()?.get_mut(key)?.pop()
    }
}

/// The blocks one decode of `rec` from `store` asks for.
fn fetches<R: AsRecord>(rec: &R, store: &BTreeMap<BlockKey, Vec<u8>>) -> usize {
    let src = Prepared::new(store, &fetch_order(rec), 1);
    decode_with(Parallelism::SINGLE, rec, &src).expect("decode");
    src.1.load(Ordering::Relaxed)
}

/// Times `rounds` decodes of `rec` from `store` with `par` (source copies made untimed).
fn time_decode<R: AsRecord>(
    par: Parallelism,
    rec: &R,
    store: &BTreeMap<BlockKey, Vec<u8>>,
    rounds: usize,
    expect: usize,
) -> f64 {
    let keys = fetch_order(rec);
    // At most 4 rounds of copies at a time, to bound memory at B = 1 MiB.
    let mut secs = 0.0;
    let mut left = rounds;
    while left > 0 {
        let n = left.min(4);
        let src = Prepared::new(store, &keys, n);
        let start = Timer::start(par == Parallelism::SINGLE);
        for _ in 0..n {
            let out = decode_with(par, rec, &src).expect("decode");
            assert_eq!(out.len(), expect);
        }
        secs += start.secs();
        left -= n;
    }
    secs
}

/// The codeword inputs of a benchmark: a full document and `t` real pointers.
struct Setup {
    params: Params,
    pool: Vec<(BlockKey, Vec<u8>)>,
    doc: Vec<u8>,
}

impl Setup {
    fn new(params: Params) -> Self {
        Setup {
            params,
            pool: pointer_pool(params, params.t() + 8),
            doc: random(2, params.capacity() as usize),
        }
    }

    fn pointers(&self, r: usize) -> Vec<(BlockKey, &[u8])> {
        (0..self.params.t())
            .map(|i| {
                let (k, b) = &self.pool[(i + r) % self.pool.len()];
                (*k, b.as_slice())
            })
            .collect()
    }

    fn id(r: usize) -> CodewordId {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(r as u64).to_le_bytes());
        CodewordId(id)
    }

    fn time_encode(&self, par: Parallelism, rounds: usize) -> (f64, EncodedRecord) {
        self.time_encode_in(Layout::ParityOnly, par, rounds)
    }

    /// Parity-only through [`encode_with`] (the node's entry point), others through
    /// [`encode_layout`].
    fn time_encode_in(
        &self,
        layout: Layout,
        par: Parallelism,
        rounds: usize,
    ) -> (f64, EncodedRecord) {
        let ptrs: Vec<Vec<(BlockKey, &[u8])>> = (0..rounds).map(|r| self.pointers(r)).collect();
        let start = Timer::start(par == Parallelism::SINGLE);
        let mut last = None;
        for (r, p) in ptrs.iter().enumerate() {
            let (id, doc) = (Self::id(r), &self.doc);
            last = Some(match layout {
                Layout::ParityOnly => {
                    let (rec, blocks) = encode_with(par, self.params, id, doc, p).expect("encode");
                    (Record::from(rec), blocks)
                }
                _ => encode_layout(layout, par, self.params, id, doc, p).expect("encode"),
            });
        }
        let secs = start.secs();
        (secs, last.expect("rounds > 0"))
    }

    fn time_encode_verified_in(&self, layout: Layout, par: Parallelism, rounds: usize) -> f64 {
        let ptrs: Vec<Vec<Pointer<'_>>> = (0..rounds)
            .map(|r| {
                self.pointers(r)
                    .into_iter()
                    .map(|(k, b)| Pointer::verify(&self.params, k, b).expect("pointer"))
                    .collect()
            })
            .collect();
        let start = Timer::start(par == Parallelism::SINGLE);
        for (r, p) in ptrs.iter().enumerate() {
            encode_verified_layout(layout, par, self.params, Self::id(r), &self.doc, p)
                .expect("encode");
        }
        start.secs()
    }

    fn time_encode_verified(&self, par: Parallelism, rounds: usize) -> f64 {
        // Verified once, outside the clock: what a node holding its pointer pool does.
        let ptrs: Vec<Vec<Pointer<'_>>> = (0..rounds)
            .map(|r| {
                self.pointers(r)
                    .into_iter()
                    .map(|(k, b)| Pointer::verify(&self.params, k, b).expect("pointer"))
                    .collect()
            })
            .collect();
        let start = Timer::start(par == Parallelism::SINGLE);
        for (r, p) in ptrs.iter().enumerate() {
            encode_verified(par, self.params, Self::id(r), &self.doc, p).expect("encode");
        }
        start.secs()
    }
}

/// reed-solomon-simd alone: `s + t` originals of `B` bytes to `p` recoveries, one call over
/// whole shards with an encoder reused across rounds (as the codec did before).
fn raw_encode(params: Params, rounds: usize) -> f64 {
    let (n, p, b) = (params.needed(), params.p(), params.block());
    let data = random(9, n * b);
    let mut enc = ReedSolomonEncoder::new(n, p, b).expect("rs");
    let mut acc = 0u8;
    let start = Timer::start(true);
    for _ in 0..rounds {
        enc.reset(n, p, b).expect("rs");
        for s in data.chunks(b) {
            enc.add_original_shard(s).expect("rs");
        }
        let r = enc.encode().expect("rs");
        acc ^= r.recovery(0).map_or(0, |r| r[0]);
    }
    let secs = start.secs();
    std::hint::black_box(acc);
    secs
}

/// reed-solomon-simd alone decoding what the codec decodes: the `s` sources (never stored)
/// from the `t` pointers and recoveries `0..s`, with `lost` pointers missing (replaced by
/// further recoveries).
fn raw_decode(params: Params, lost: usize, rounds: usize) -> f64 {
    let (s, n, p, b) = (params.s(), params.needed(), params.p(), params.block());
    let data = random(9, n * b);
    let mut enc = ReedSolomonEncoder::new(n, p, b).expect("rs");
    for sh in data.chunks(b) {
        enc.add_original_shard(sh).expect("rs");
    }
    let rec: Vec<Vec<u8>> = enc
        .encode()
        .expect("rs")
        .recovery_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let shards: Vec<&[u8]> = data.chunks(b).collect();
    let mut dec = ReedSolomonDecoder::new(n, p, b).expect("rs");
    let mut acc = 0u8;
    let start = Timer::start(true);
    for _ in 0..rounds {
        dec.reset(n, p, b).expect("rs");
        for (i, sh) in shards.iter().enumerate().skip(s + lost) {
            dec.add_original_shard(i, sh).expect("rs");
        }
        for (j, r) in rec.iter().enumerate().take(s + lost) {
            dec.add_recovery_shard(j, r).expect("rs");
        }
        let res = dec.decode().expect("rs");
        for i in 0..s {
            acc ^= res.restored_original(i).map_or(0, |r| r[0]);
        }
    }
    let secs = start.secs();
    std::hint::black_box(acc);
    secs
}

/// BLAKE3 of a `len`-byte buffer on the calling thread.
fn blake3_speed(o: &Opts, len: usize) -> Figure {
    let buf = random(3, len);
    let n = (o.rounds * 12 * (256 << 10) / len).max(4);
    Figure::measure(o.reps, n * len, || {
        let start = Timer::start(true);
        for _ in 0..n {
            std::hint::black_box(blake3::hash(std::hint::black_box(&buf)));
        }
        start.secs()
    })
}

fn baselines(o: &Opts) -> (Figure, Figure) {
    println!("## Machine\n");
    #[cfg(target_arch = "x86_64")]
    println!(
        "x86_64: avx2 {}, avx512f {}, sse4.1 {}; threads available: {}. The `blake3` crate is \
         built with its default features: SSE2/SSE4.1/AVX2/AVX-512 assembly chosen at run \
         time (no `pure`, no `no_avx2`); reed-solomon-simd picks AVX2/SSSE3 at run time.\n",
        std::is_x86_feature_detected!("avx2"),
        std::is_x86_feature_detected!("avx512f"),
        std::is_x86_feature_detected!("sse4.1"),
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    println!(
        "Clock: {}.\n",
        if CPU_TIME.load(Ordering::Relaxed) {
            "one-core figures in thread CPU time (--cpu-time), all-core figures wall-clock"
        } else {
            "wall clock"
        }
    );
    let h256 = blake3_speed(o, 256 << 10);
    let h1m = blake3_speed(o, 1 << 20);
    println!("## BLAKE3 alone, one core (MiB/s)\n");
    println!("| buffer | MiB/s |\n|---|---|");
    println!("| 256 KiB | {h256} |\n| 1 MiB | {h1m} |\n");
    (h256, h1m)
}

/// The codec next to reed-solomon-simd and BLAKE3 alone on the same shards.
fn codec_vs_raw(o: &Opts, hash: (Figure, Figure)) {
    let codes = [
        Params::new(4, 8, 12, 256 << 10),
        Params::new(4, 8, 12, 1 << 20),
        Params::new(4, 8, 8, 256 << 10),
        Params::new(4, 8, 8, 1 << 20),
    ];
    let auto = Parallelism::AUTO;
    let one = Parallelism::SINGLE;
    println!(
        "## Encode (MiB/s of document data; best -spread% of {} runs)\n",
        o.reps
    );
    println!(
        "raw RS = reed-solomon-simd alone, s+t originals -> p recoveries of B bytes, one call \
         over whole shards. hash floor = BLAKE3 alone over what an encode must hash per byte of \
         document: (s + 2p) B, + t B when it verifies the pointers. floor = 1 / (1/raw RS + \
         1/hash floor), one core: the best an encode can do with this RS call and this hashing. \
         x slower than raw = raw RS / encode (the issue's target: at most 2). All cores: wall \
         clock, meaningful only on an otherwise idle machine.\n"
    );
    println!(
        "| (s,t,p) | B | raw RS | encode, 1 core | x slower than raw | floor | pre-verified pointers, 1 core | floor | encode, all cores |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for params in codes {
        let setup = Setup::new(params);
        let (s, t, p) = (params.s() as f64, params.t() as f64, params.p() as f64);
        let data = o.rounds * setup.doc.len();
        let raw = Figure::measure(o.reps, data, || raw_encode(params, o.rounds));
        let enc = Figure::measure(o.reps, data, || setup.time_encode(one, o.rounds).0);
        let ver = Figure::measure(o.reps, data, || setup.time_encode_verified(one, o.rounds));
        let all = Figure::measure(o.reps, data, || setup.time_encode(auto, o.rounds).0);
        let h = if params.block() >= 1 << 20 {
            hash.1
        } else {
            hash.0
        }
        .best;
        let floor = |hashed: f64| 1.0 / (1.0 / raw.best + hashed / (s * h));
        println!(
            "| ({},{},{}) | {} KiB | {raw} | {enc} | {:.2} | {:.0} | {ver} | {:.0} | {all} |",
            params.s,
            params.t,
            params.p,
            params.block_size / 1024,
            raw.best / enc.best,
            floor(s + 2.0 * p + t),
            floor(s + 2.0 * p),
        );
    }
    println!(
        "\n## Decode (MiB/s of document data; best -spread% of {} runs)\n",
        o.reps
    );
    println!(
        "A read fetches the t pointers and s parities and restores the s sources (never stored); \
         `2 lost` = two pointers missing, two more parities used. raw RS = reed-solomon-simd \
         alone restoring the s sources from the same shards. hash floor = BLAKE3 over (2s + t) B \
         per s B of document (the s + t symbols fetched, and the document). Source copies are \
         made before the clock starts.\n"
    );
    println!(
        "| (s,t,p) | B | loss | raw RS | decode, 1 core | x slower than raw | floor | decode, all cores |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for params in codes {
        let setup = Setup::new(params);
        let (_, (rec, blocks)) = setup.time_encode(one, 1);
        let mut store: BTreeMap<BlockKey, Vec<u8>> = setup.pool.iter().cloned().collect();
        store.extend(blocks);
        let s = params.s() as f64;
        let t = params.t() as f64;
        let data = o.rounds * setup.doc.len();
        let h = if params.block() >= 1 << 20 {
            hash.1
        } else {
            hash.0
        }
        .best;
        for lost in [0usize, 2] {
            let mut lossy = store.clone();
            for k in rec.pointers.iter().take(lost) {
                lossy.remove(k);
            }
            let raw = Figure::measure(o.reps, data, || raw_decode(params, lost, o.rounds));
            let dec = Figure::measure(o.reps, data, || {
                time_decode(one, &rec, &lossy, o.rounds, setup.doc.len())
            });
            let all = Figure::measure(o.reps, data, || {
                time_decode(auto, &rec, &lossy, o.rounds, setup.doc.len())
            });
            let floor = 1.0 / (1.0 / raw.best + (2.0 * s + t) / (s * h));
            println!(
                "| ({},{},{}) | {} KiB | {} | {raw} | {dec} | {:.2} | {floor:.0} | {all} |",
                params.s,
                params.t,
                params.p,
                params.block_size / 1024,
                if lost == 0 { "none" } else { "2 lost" },
                raw.best / dec.best,
            );
        }
    }
}

/// Systematic (4,8,8) against parity-only (4,8,12): the same 3x overhead, 20 symbols per
/// codeword, 12 needed.
fn systematic_vs_parity_only(o: &Opts) {
    let one = Parallelism::SINGLE;
    let auto = Parallelism::AUTO;
    let codes = [
        (Layout::ParityOnly, Params::new(4, 8, 12, 256 << 10)),
        (Layout::Systematic, Params::new(4, 8, 8, 256 << 10)),
        (Layout::ParityOnly, Params::new(4, 8, 12, 1 << 20)),
        (Layout::Systematic, Params::new(4, 8, 8, 1 << 20)),
    ];
    println!(
        "\n## Systematic (4,8,8) and parity-only (4,8,12), 3x both (MiB/s of document data; best \
         -spread% of {} runs)\n",
        o.reps
    );
    println!(
        "Encode: both hash the document, 12 stored payloads and 12 stored blocks (systematic: \
         4 sources and 8 parities; parity-only: 12 parities) and the 8 pointers; both code 12 \
         originals, into 8 recoveries (systematic, which also copies its 4 sources into their \
         blocks) or 12. pre-verified = pointers checked once before the clock (what a node \
         holding its pool does).\n"
    );
    println!("| layout (s,t,p) | B | encode, 1 core | pre-verified, 1 core | encode, all cores |");
    println!("|---|---|---|---|---|");
    for (layout, params) in codes {
        let setup = Setup::new(params);
        let data = o.rounds * setup.doc.len();
        let enc = Figure::measure(o.reps, data, || {
            setup.time_encode_in(layout, one, o.rounds).0
        });
        let ver = Figure::measure(o.reps, data, || {
            setup.time_encode_verified_in(layout, one, o.rounds)
        });
        let all = Figure::measure(o.reps, data, || {
            setup.time_encode_in(layout, auto, o.rounds).0
        });
        println!(
            "| {layout} ({},{},{}) | {} KiB | {enc} | {ver} | {all} |",
            params.s,
            params.t,
            params.p,
            params.block_size / 1024
        );
    }
    println!(
        "\nDecode: `fetched` = blocks asked of the source (held or not). A healthy systematic \
         read is its 4 sources and the document hash (no Reed-Solomon); parity-only always \
         fetches s + t = 12 and decodes. Degraded: parity-only loses 2 pointers, or all 8 (the \
         most inputs to restore); systematic loses 1 source, or all 4 sources and 4 pointers \
         (p = 8 erasures, the most inputs to restore).\n"
    );
    println!("| layout (s,t,p) | B | read | fetched | decode, 1 core | decode, all cores |");
    println!("|---|---|---|---|---|---|");
    for (layout, params) in codes {
        let setup = Setup::new(params);
        let (_, (rec, blocks)) = setup.time_encode_in(layout, one, 1);
        let mut store: BTreeMap<BlockKey, Vec<u8>> = setup.pool.iter().cloned().collect();
        store.extend(blocks);
        let data = o.rounds * setup.doc.len();
        let len = setup.doc.len();
        let cases: Vec<(&str, Vec<BlockKey>)> = match layout {
            Layout::ParityOnly => vec![
                ("healthy", Vec::new()),
                ("2 pointers lost", rec.pointers[..2].to_vec()),
                ("8 pointers lost", rec.pointers.clone()),
            ],
            Layout::Systematic => vec![
                ("healthy", Vec::new()),
                ("1 source lost", rec.source_keys()[..1].to_vec()),
                (
                    "4 sources + 4 pointers lost",
                    rec.source_keys()
                        .iter()
                        .chain(&rec.pointers[..4])
                        .copied()
                        .collect(),
                ),
            ],
        };
        for (name, lost) in cases {
            let mut lossy = store.clone();
            for k in &lost {
                lossy.remove(k);
            }
            let n = fetches(&rec, &lossy);
            let dec = Figure::measure(o.reps, data, || {
                time_decode(one, &rec, &lossy, o.rounds, len)
            });
            let all = Figure::measure(o.reps, data, || {
                time_decode(auto, &rec, &lossy, o.rounds, len)
            });
            println!(
                "| {layout} ({},{},{}) | {} KiB | {name} | {n} | {dec} | {all} |",
                params.s,
                params.t,
                params.p,
                params.block_size / 1024
            );
        }
    }
}

/// The other codes of the design, codec only.
fn other_codes(o: &Opts) {
    println!("\n## Other codes (MiB/s of document data, best -spread%)\n");
    println!("| (s,t,p) | B | encode, 1 core | encode, all cores | decode, 1 core | decode, all cores | decode, e pointers lost, 1 core |");
    println!("|---|---|---|---|---|---|---|");
    for params in [
        Params::new(2, 10, 6, 256 << 10),
        Params::new(2, 10, 6, 1 << 20),
        Params::new(1, 10, 3, 256 << 10),
        Params::new(1, 10, 3, 1 << 20),
    ] {
        let setup = Setup::new(params);
        let data = o.rounds * setup.doc.len();
        let one = Parallelism::SINGLE;
        let auto = Parallelism::AUTO;
        let enc = Figure::measure(o.reps, data, || setup.time_encode(one, o.rounds).0);
        let enc_all = Figure::measure(o.reps, data, || setup.time_encode(auto, o.rounds).0);
        let (_, (rec, blocks)) = setup.time_encode(one, 1);
        let mut store: BTreeMap<BlockKey, Vec<u8>> = setup.pool.iter().cloned().collect();
        store.extend(blocks);
        let len = setup.doc.len();
        let dec = Figure::measure(o.reps, data, || {
            time_decode(one, &rec, &store, o.rounds, len)
        });
        let dec_all = Figure::measure(o.reps, data, || {
            time_decode(auto, &rec, &store, o.rounds, len)
        });
        // Worst case: e pointers missing, so s + e input symbols must be restored.
        let mut lossy = store.clone();
        for k in rec.pointers.iter().take(params.e()) {
            lossy.remove(k);
        }
        let dec_lossy = Figure::measure(o.reps, data, || {
            time_decode(one, &rec, &lossy, o.rounds, len)
        });
        println!(
            "| ({},{},{}) | {} KiB | {enc} | {enc_all} | {dec} | {dec_all} | {dec_lossy} |",
            params.s,
            params.t,
            params.p,
            params.block_size / 1024,
        );
    }
}

fn bench_repair(layout: Layout, params: Params, docs: usize, loss_pct: u32) {
    let mut archive =
        MemArchive::with_layout(params, layout, PointerSelector::mixed(params.t()), 5)
            .expect("archive");
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
        "| {layout} ({},{},{}) | {} | {} | {} | {} | {:.2} | {:.0} ms |",
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

fn repair_table(quick: bool) {
    println!("\n## Repair (B = 4 KiB, 2,000 codewords; reads = blocks fetched from the store)\n");
    println!(
        "| layout (s,t,p) | loss | lost | rebuilt | codewords decoded | reads per rebuilt block | time |"
    );
    println!("|---|---|---|---|---|---|---|");
    let docs = if quick { 300 } else { 2000 };
    for (layout, params) in [
        (Layout::ParityOnly, Params::new(4, 8, 12, 4096)),
        (Layout::Systematic, Params::new(4, 8, 8, 4096)),
        (Layout::ParityOnly, Params::new(2, 10, 6, 4096)),
        (Layout::ParityOnly, Params::new(1, 10, 3, 4096)),
    ] {
        for loss in [0, 10, 30] {
            bench_repair(layout, params, docs, loss);
        }
    }
}

/// Encodes or decodes (4,8,12) at 256 KiB on one core for about ten seconds.
fn profile(what: &str) {
    let params = Params::new(4, 8, 12, 256 << 10);
    let setup = Setup::new(params);
    let one = Parallelism::SINGLE;
    let (_, (rec, blocks)) = setup.time_encode(one, 1);
    let mut store: BTreeMap<BlockKey, Vec<u8>> = setup.pool.iter().cloned().collect();
    store.extend(blocks);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < 10.0 {
        match what {
            "decode" => {
                time_decode(one, &rec, &store, 8, setup.doc.len());
            }
            _ => {
                setup.time_encode(one, 8);
            }
        }
        n += 8;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{what}: {n} codewords, {:.0} MiB/s",
        (n * setup.doc.len()) as f64 / MIB / secs
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "cargo run --release -p entangle --example bench -- [--quick] [--reps N] [--rounds N] \
             [--only baselines|codec|systematic|other|repair] [--cpu-time] \
             [--profile encode|decode]\n\nSee the top of entangle/examples/bench.rs."
        );
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(what) = value("--profile") {
        profile(&what);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    CPU_TIME.store(args.iter().any(|a| a == "--cpu-time"), Ordering::Relaxed);
    let o = Opts {
        rounds: value("--rounds")
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 4 } else { 24 }),
        reps: value("--reps").and_then(|r| r.parse().ok()).unwrap_or(3),
    };
    let only = value("--only");
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    let hash = if want("baselines") || want("codec") {
        baselines(&o)
    } else {
        let f = Figure {
            best: 0.0,
            worst: 0.0,
        };
        (f, f)
    };
    if want("codec") {
        codec_vs_raw(&o, hash);
    }
    if want("systematic") {
        systematic_vs_parity_only(&o);
    }
    if want("other") {
        other_codes(&o);
    }
    if want("repair") {
        repair_table(quick);
    }
}
