//! Acceptance tests 1 and 2: round trips, erasures, corruption, malformed blocks.

use std::collections::BTreeMap;

use entangle::block::parse;
use entangle::{
    decode, decode_document, encode, encode_document, BlockKey, CodewordId, CodewordRecord, Error,
    Layout, MemArchive, Params, ParityBlock, PointerSelector, Record,
};
use proptest::prelude::*;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Every parity of `record` is in `blocks`, hashes to its key, and its header is the record's.
fn check_blocks(record: &Record, blocks: &BTreeMap<BlockKey, Vec<u8>>) {
    assert_eq!(record.layout, Layout::ParityOnly);
    assert_eq!(record.stored_keys.len(), record.params.p());
    for (j, key) in record.stored_keys.iter().enumerate() {
        let bytes = blocks.get(key).expect("parity stored");
        assert_eq!(BlockKey::of(bytes), *key, "parity {j} hash");
        let parsed = parse(bytes).expect("parity parses");
        assert_eq!(usize::from(parsed.header.index), j);
        assert!(record.matches_header(&parsed.header));
        assert_eq!(parsed.payload.len(), record.params.shard(record.len));
        assert_eq!(
            record.reform(j, parsed.payload).as_deref(),
            Some(&bytes[..])
        );
        // The parity-only form of the record says the same.
        let v1 = CodewordRecord::try_from(record.clone()).unwrap();
        assert_eq!(
            v1.reform_parity(j, parsed.payload).as_deref(),
            Some(&bytes[..])
        );
    }
}

/// Test 1: documents of 0, 1, B-1, B, B+1 and 10B+17 bytes round-trip through an archive that
/// already holds blocks (so pointers are real) and one that is empty (anchors).
#[test]
fn round_trip_sizes() {
    let b = 4096usize;
    let params = Params::new(2, 10, 6, b as u32);
    for prefill in [0usize, 3] {
        let mut archive = MemArchive::new(params, PointerSelector::mixed(10), 11).unwrap();
        for i in 0..prefill {
            archive
                .store(&[200 + i as u8; 32], &random_bytes(i as u64, 3 * b))
                .unwrap();
        }
        for (n, len) in [0, 1, b - 1, b, b + 1, 10 * b + 17].into_iter().enumerate() {
            let doc = random_bytes(100 + n as u64, len);
            let records = archive.store(&[n as u8; 32], &doc).unwrap();
            assert_eq!(
                records.len(),
                len.div_ceil(2 * b).max(1),
                "codewords for {len} bytes"
            );
            assert_eq!(archive.read(&records).unwrap(), doc, "len {len}");
            for r in &records {
                check_blocks(r, archive.blocks());
                assert_eq!(r.pointers.len(), 10);
            }
            if prefill == 0 && n == 0 {
                // The first codeword of an empty archive is entangled with anchors only.
                let anchors = entangle::Anchors::new(b as u32, 10);
                assert!(records[0].pointers.iter().all(|k| anchors.contains(k)));
            }
        }
    }
}

/// Test 1, large: 64 MiB with 1 MiB blocks.
#[test]
fn round_trip_64_mib() {
    let b = 1 << 20;
    let params = Params::new(2, 10, 6, b as u32);
    let doc = random_bytes(64, 64 << 20);
    let mut archive = MemArchive::new(params, PointerSelector::mixed(10), 3).unwrap();
    let records = archive.store(&[64; 32], &doc).unwrap();
    assert_eq!(records.len(), 32);
    // Later codewords point at earlier ones' parities, not only anchors.
    let anchors = entangle::Anchors::new(b as u32, 10);
    assert!(records[31].pointers.iter().all(|k| !anchors.contains(k)));
    for r in &records {
        check_blocks(r, archive.blocks());
    }
    assert!(archive.read(&records).unwrap() == doc);
}

/// The free functions without an archive: encode_document / decode_document / decode.
#[test]
fn free_functions_round_trip() {
    let params = Params::new(3, 4, 5, 64);
    let doc = random_bytes(5, 1000);
    let mut store: BTreeMap<BlockKey, Vec<u8>> = BTreeMap::new();
    let encoded = encode_document(params, &[9; 32], &doc, |k, done| {
        Ok(if k == 0 {
            (0..4)
                .map(|i| (BlockKey::anchor(64, i), Vec::new()))
                .collect()
        } else {
            done[k as usize - 1].1[..4].to_vec()
        })
    })
    .unwrap();
    assert_eq!(encoded.len(), 1000usize.div_ceil(192));
    let records: Vec<CodewordRecord> = encoded.iter().map(|(r, _)| r.clone()).collect();
    for (_, blocks) in encoded {
        store.extend(blocks);
    }
    assert_eq!(decode_document(&records, &store).unwrap(), doc);
    assert_eq!(decode(&records[0], &store).unwrap(), doc[..192]);
    // A closure is a source too.
    let f = |k: &BlockKey| store.get(k).cloned();
    assert_eq!(decode_document(&records, &f).unwrap(), doc);
    // A partial codeword before the last one is not a document.
    let partial_first = vec![records[5].clone(), records[0].clone()];
    assert!(matches!(
        decode_document(&partial_first, &store),
        Err(Error::InconsistentDocument(_))
    ));
    assert!(decode_document::<CodewordRecord, _>(&[], &store).is_err());
}

/// Builds a codeword with `t` real pointers; returns its record and a store with its pointers
/// and parities.
fn codeword_with_real_pointers(
    params: Params,
    seed: u64,
) -> (CodewordRecord, BTreeMap<BlockKey, Vec<u8>>, Vec<u8>) {
    let (rec, store, doc) = codeword_with_real_pointers_in(Layout::ParityOnly, params, seed);
    (CodewordRecord::try_from(rec).unwrap(), store, doc)
}

/// [`codeword_with_real_pointers`] for a codeword of `layout` (in an archive of that layout).
fn codeword_with_real_pointers_in(
    layout: Layout,
    params: Params,
    seed: u64,
) -> (Record, BTreeMap<BlockKey, Vec<u8>>, Vec<u8>) {
    let mut archive =
        MemArchive::with_layout(params, layout, PointerSelector::uniform(params.t()), seed)
            .unwrap();
    let cap = params.capacity() as usize;
    while archive.order().len() < params.t() {
        archive
            .store(&[archive.order().len() as u8; 32], &random_bytes(seed, cap))
            .unwrap();
    }
    let doc = random_bytes(seed + 1, cap.saturating_sub(3));
    let records = archive.store(&[0xaa; 32], &doc).unwrap();
    assert_eq!(records.len(), 1);
    let rec = records[0].clone();
    let mut store = BTreeMap::new();
    for k in rec.pointers.iter().chain(&rec.stored_keys) {
        store.insert(*k, archive.blocks()[k].clone());
    }
    (rec, store, doc)
}

fn symbols(rec: &CodewordRecord) -> Vec<BlockKey> {
    rec.pointers
        .iter()
        .chain(&rec.parity_keys)
        .copied()
        .collect()
}

fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}

/// Test 2: deleting any e of the t + p symbols decodes exactly; any e + 1 is an explicit error.
/// Exhaustive for (2,3,4) and (2,10,6).
#[test]
fn any_e_erasures_decode_and_e_plus_one_fail() {
    for params in [Params::new(2, 3, 4, 64), Params::new(2, 10, 6, 32)] {
        let (rec, store, doc) = codeword_with_real_pointers(params, 21);
        let syms = symbols(&rec);
        let n = syms.len();
        let e = params.e();
        let mut checked = 0;
        for k in 0..=e {
            for del in combinations(n, k) {
                let mut s = store.clone();
                for &i in &del {
                    s.remove(&syms[i]);
                }
                assert_eq!(
                    decode(&rec, &s).unwrap(),
                    doc,
                    "{params:?} deleting {del:?}"
                );
                checked += 1;
            }
        }
        for del in combinations(n, e + 1) {
            let mut s = store.clone();
            for &i in &del {
                s.remove(&syms[i]);
            }
            match decode(&rec, &s) {
                Err(Error::Undecodable { have, need, .. }) => {
                    assert_eq!((have, need), (params.needed() - 1, params.needed()));
                }
                other => panic!("{params:?} deleting {del:?}: {other:?}"),
            }
            checked += 1;
        }
        println!("{params:?}: {checked} erasure patterns checked");
    }
}

/// Corrupted symbols are rejected by hash and count as missing: e corruptions still decode,
/// e + 1 is an explicit error, never wrong bytes.
#[test]
fn corrupted_symbols_are_never_used() {
    let params = Params::new(2, 10, 6, 32);
    let (rec, store, doc) = codeword_with_real_pointers(params, 5);
    let syms = symbols(&rec);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for round in 0..200 {
        let mut s = store.clone();
        let k = if round % 2 == 0 {
            params.e()
        } else {
            params.e() + 1
        };
        let mut idx: Vec<usize> = (0..syms.len()).collect();
        rand::seq::SliceRandom::shuffle(&mut idx[..], &mut rng);
        for &i in &idx[..k] {
            let v = s.get_mut(&syms[i]).unwrap();
            let pos = (rng.next_u32() as usize) % v.len();
            v[pos] ^= 1 + (rng.next_u32() % 255) as u8;
        }
        match decode(&rec, &s) {
            Ok(d) => {
                assert_eq!(k, params.e());
                assert_eq!(d, doc);
            }
            Err(Error::Undecodable { .. }) => assert_eq!(k, params.e() + 1),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn encode_rejects_bad_input() {
    let params = Params::new(2, 2, 2, 16);
    let a = |i| (BlockKey::anchor(16, i), &[][..]);
    assert!(matches!(
        encode(params, CodewordId([0; 32]), &[0; 33], &[a(0), a(1)]),
        Err(Error::DocumentTooLarge { .. })
    ));
    assert!(matches!(
        encode(params, CodewordId([0; 32]), &[0; 3], &[a(0)]),
        Err(Error::WrongPointerCount { .. })
    ));
    assert!(matches!(
        encode(params, CodewordId([0; 32]), &[0; 3], &[a(0), a(0)]),
        Err(Error::DuplicatePointer(_))
    ));
    // A pointer whose bytes do not hash to its key.
    let (rec, blocks) = encode(params, CodewordId([0; 32]), &[1; 3], &[a(0), a(1)]).unwrap();
    let mut bad = blocks[0].1.clone();
    bad[100] ^= 1;
    assert!(matches!(
        encode(
            params,
            CodewordId([1; 32]),
            &[0; 3],
            &[(rec.parity_keys[0], &bad), a(1)]
        ),
        Err(Error::BadPointer { .. })
    ));
    // A pointer of another block size.
    let other = Params::new(2, 2, 2, 32);
    let (_, ob) = encode(
        other,
        CodewordId([2; 32]),
        &[1; 3],
        &[
            (BlockKey::anchor(32, 0), &[][..]),
            (BlockKey::anchor(32, 1), &[][..]),
        ],
    )
    .unwrap();
    assert!(matches!(
        encode(
            params,
            CodewordId([1; 32]),
            &[0; 3],
            &[(ob[0].0, &ob[0].1), a(1)]
        ),
        Err(Error::BadPointer { .. })
    ));
    assert!(encode(
        Params::new(2, 2, 1, 16),
        CodewordId([0; 32]),
        &[],
        &[a(0), a(1)]
    )
    .is_err());
    // A valid pointer works.
    let (r2, _) = encode(
        params,
        CodewordId([1; 32]),
        &[0; 3],
        &[(rec.parity_keys[0], &blocks[0].1), a(1)],
    )
    .unwrap();
    assert_eq!(r2.pointers[0], rec.parity_keys[0]);
}

#[test]
fn inconsistent_records_are_rejected() {
    let params = Params::new(2, 2, 3, 16);
    let ptrs = [
        (BlockKey::anchor(16, 0), &[][..]),
        (BlockKey::anchor(16, 1), &[][..]),
    ];
    let (rec, blocks) = encode(params, CodewordId([3; 32]), b"hello", &ptrs).unwrap();
    let store: BTreeMap<BlockKey, Vec<u8>> = blocks.into_iter().collect();
    assert_eq!(decode(&rec, &store).unwrap(), b"hello");
    let mut r = rec.clone();
    r.parity_keys.pop();
    assert!(matches!(
        decode(&r, &store),
        Err(Error::InvalidRecord { .. })
    ));
    let mut r = rec.clone();
    r.len = 33;
    assert!(matches!(
        decode(&r, &store),
        Err(Error::InvalidRecord { .. })
    ));
    let mut r = rec.clone();
    r.pointers[1] = r.pointers[0];
    assert!(matches!(
        decode(&r, &store),
        Err(Error::InvalidRecord { .. })
    ));
    // A forged content hash is caught after decoding.
    let mut r = rec.clone();
    r.content_hash[0] ^= 1;
    assert!(matches!(decode(&r, &store), Err(Error::ContentMismatch(_))));
}

#[test]
fn malformed_blocks_are_errors() {
    let params = Params::new(2, 3, 4, 64);
    let (rec, store, _) = codeword_with_real_pointers(params, 8);
    let good = store[&rec.parity_keys[1]].clone();
    assert!(ParityBlock::decode(&good).is_ok());
    assert!(ParityBlock::decode(&[]).is_err());
    assert!(ParityBlock::decode(b"ENTG").is_err());
    assert!(ParityBlock::decode(&good[..good.len() - 1]).is_err());
    let mut huge = good.clone();
    huge[8..10].copy_from_slice(&u16::MAX.to_le_bytes()); // t = 65535
    assert!(ParityBlock::decode(&huge).is_err());
    let mut huge_b = good.clone();
    huge_b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(ParityBlock::decode(&huge_b).is_err());
    let mut magic = good.clone();
    magic[0] = b'X';
    assert!(ParityBlock::decode(&magic).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Encode/decode round trip over random parameters, lengths and erasures of at most e
    /// symbols; e + 1 erasures are an explicit error.
    #[test]
    fn prop_round_trip(
        s in 1u16..5, t in 0u16..14, extra in 0u16..6, half_b in 1u32..40,
        len_frac in 0.0f64..=1.0, seed in any::<u64>(), over in any::<bool>(),
    ) {
        let params = Params::new(s, t, s + extra, half_b * 2);
        let (rec, store, _) = codeword_with_real_pointers(params, seed);
        prop_assert!(decode(&rec, &store).is_ok());
        // A fresh document over the same pointers, with a random length.
        let len = (params.capacity() as f64 * len_frac) as usize;
        let doc = random_bytes(seed ^ 1, len);
        let ptr_bytes: Vec<(BlockKey, &[u8])> = rec
            .pointers
            .iter()
            .map(|k| (*k, store.get(k).map_or(&[][..], Vec::as_slice)))
            .collect();
        let (rec2, blocks) = encode(params, CodewordId([7; 32]), &doc, &ptr_bytes).unwrap();
        let mut s2 = store.clone();
        s2.extend(blocks);
        let syms = symbols(&rec2);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..syms.len()).collect();
        rand::seq::SliceRandom::shuffle(&mut idx[..], &mut rng);
        let k = if over { params.e() + 1 } else { (rng.next_u32() as usize) % (params.e() + 1) };
        for &i in idx.iter().take(k) {
            s2.remove(&syms[i]);
        }
        match decode(&rec2, &s2) {
            Ok(d) => { prop_assert!(k <= params.e()); prop_assert_eq!(d, doc); }
            Err(Error::Undecodable { have, need, .. }) => {
                prop_assert!(k > params.e());
                prop_assert_eq!(have + 1, need);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }

    /// Arbitrary mutations of a valid block never panic; whatever still parses re-encodes to
    /// exactly the same bytes.
    #[test]
    fn prop_mutated_blocks_never_panic(
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let params = Params::new(2, 3, 4, 16);
        let (rec, store, _) = codeword_with_real_pointers(params, seed % 4);
        let mut bytes = store[&rec.parity_keys[(seed % 4) as usize]].clone();
        for (pos, val) in edits {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % (n + 1));
        }
        if let Ok(b) = ParityBlock::decode(&bytes) {
            prop_assert_eq!(b.encode(), bytes);
        }
    }

    /// Random bytes are rejected without panicking.
    #[test]
    fn prop_random_bytes_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(ParityBlock::decode(&bytes).is_err());
    }
}
