//! Rough single-core throughput of the hot paths (not a test):
//! `cargo run --release -p peerstore-crypto --example throughput`.

use std::time::Instant;

use crypto::{chunk_id, open_chunk, seal_chunk, Identity, KdfParams};
use rand_chacha::rand_core::{RngCore, SeedableRng};

fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs
}

fn main() {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let keys = Identity::generate(&mut rng).keys();
    let chunk_len = 1 << 20;
    let rounds = 256;
    let mut data = vec![0u8; chunk_len];
    rng.fill_bytes(&mut data);

    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(chunk_id(&keys, std::hint::black_box(&data)));
    }
    let id_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut sealed = None;
    for _ in 0..rounds {
        sealed = Some(seal_chunk(&keys, std::hint::black_box(&data)));
    }
    let seal_secs = t.elapsed().as_secs_f64();
    let (id, ct) = sealed.expect("rounds > 0");

    let t = Instant::now();
    for _ in 0..rounds {
        let plain = open_chunk(&keys, &id, std::hint::black_box(&ct)).expect("opens");
        std::hint::black_box(plain);
    }
    let open_secs = t.elapsed().as_secs_f64();

    let total = chunk_len * rounds;
    println!("chunk size {} KiB, {rounds} rounds", chunk_len / 1024);
    println!(
        "chunk_id (keyed BLAKE3): {:8.0} MiB/s",
        mib_per_s(total, id_secs)
    );
    println!(
        "seal_chunk (MAC + XChaCha20-Poly1305): {:8.0} MiB/s",
        mib_per_s(total, seal_secs)
    );
    println!(
        "open_chunk (XChaCha20-Poly1305 + MAC check): {:8.0} MiB/s",
        mib_per_s(total, open_secs)
    );

    let id = Identity::generate(&mut rng);
    let t = Instant::now();
    let file = id
        .seal(b"passphrase", &KdfParams::default(), &mut rng)
        .expect("default params are valid");
    let seal_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    Identity::open(&file, b"passphrase").expect("opens");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "key file with default Argon2id (64 MiB, t=3): seal {seal_ms:.0} ms, open {open_ms:.0} ms"
    );
}
