//! The systematic layout: round trips, healthy reads, erasures, corruption, repair, mixed
//! rings, record bytes, malformed blocks and records, and compatibility with version 1.

use std::cell::RefCell;
use std::collections::BTreeMap;

use entangle::block::{header_len, parse};
use entangle::{
    decode, decode_document, decode_record, encode, encode_document, encode_document_checked,
    encode_document_layout, encode_layout, encode_record, fetch_order, rebuild_codeword, repair,
    BlockKey, CodewordId, CodewordRecord, Error, Layout, MemArchive, Parallelism, Params,
    ParityBlock, PointerCheck, PointerSelector, Record, RecordIndex, Role,
};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Store = BTreeMap<BlockKey, Vec<u8>>;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn doc_id(i: u64) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&i.to_le_bytes());
    id
}

fn systematic(params: Params, seed: u64) -> MemArchive {
    MemArchive::with_layout(
        params,
        Layout::Systematic,
        PointerSelector::mixed(params.t()),
        seed,
    )
    .unwrap()
}

/// Every stored block of `record` is in `blocks`, hashes to its key, parses as a version 2
/// block whose header is the record's, carries the shard, and a source's payload is its part
/// of `doc` (zero-padded).
fn check_blocks(record: &Record, blocks: &Store, doc: &[u8]) {
    let params = record.params;
    assert_eq!(record.layout, Layout::Systematic);
    assert_eq!(record.stored_keys.len(), params.s() + params.p());
    assert_eq!(record.source_keys(), &record.stored_keys[..params.s()]);
    assert_eq!(record.parity_keys(), &record.stored_keys[params.s()..]);
    let b = params.shard(record.len);
    for (j, key) in record.stored_keys.iter().enumerate() {
        let bytes = blocks.get(key).expect("block stored");
        assert_eq!(BlockKey::of(bytes), *key, "block {j} hash");
        let parsed = parse(bytes).expect("block parses");
        assert_eq!(usize::from(parsed.header.index), j);
        assert_eq!(parsed.header.is_source(), j < params.s());
        assert!(record.matches_header(&parsed.header));
        assert_eq!(parsed.payload.len(), b);
        assert_eq!(
            record.reform(j, parsed.payload).as_deref(),
            Some(&bytes[..])
        );
        if j < params.s() {
            let mut want = doc[(j * b).min(doc.len())..((j + 1) * b).min(doc.len())].to_vec();
            want.resize(b, 0);
            assert_eq!(parsed.payload, &want[..], "source {j}");
        }
    }
}

/// Decodes `records` from `store`, returning the document and the keys fetched in order.
fn read_logged(records: &[Record], store: &Store) -> (Result<Vec<u8>, Error>, Vec<BlockKey>) {
    let log = RefCell::new(Vec::new());
    let source = |k: &BlockKey| {
        log.borrow_mut().push(*k);
        store.get(k).cloned()
    };
    let out = decode_document(records, &source);
    (out, log.into_inner())
}

/// Documents of 0, 1, B - 1, B, s B - 1, s B, s B + 1 and 10 B + 17 bytes round-trip through an
/// empty archive (anchors) and a filled one (real pointers); a healthy read fetches exactly the
/// sources of each codeword, in order.
#[test]
fn round_trip_sizes() {
    let b = 4096usize;
    let params = Params::new(4, 8, 8, b as u32);
    let cap = params.capacity() as usize;
    for prefill in [0usize, 3] {
        let mut archive = systematic(params, 11);
        for i in 0..prefill {
            archive
                .store(&doc_id(200 + i as u64), &random_bytes(i as u64, 3 * b))
                .unwrap();
        }
        for (n, len) in [0, 1, b - 1, b, cap - 1, cap, cap + 1, 10 * b + 17]
            .into_iter()
            .enumerate()
        {
            let doc = random_bytes(100 + n as u64, len);
            let records = archive.store(&doc_id(n as u64), &doc).unwrap();
            assert_eq!(
                records.len(),
                len.div_ceil(cap).max(1),
                "codewords for {len}"
            );
            for (k, r) in records.iter().enumerate() {
                let part = &doc[(k * cap).min(len)..((k + 1) * cap).min(len)];
                check_blocks(r, archive.blocks(), part);
                assert_eq!(r.pointers.len(), 8);
            }
            let (out, fetched) = read_logged(&records, archive.blocks());
            assert_eq!(out.unwrap(), doc, "len {len}");
            let sources: Vec<BlockKey> = records
                .iter()
                .flat_map(|r| r.source_keys().iter().copied())
                .collect();
            assert_eq!(fetched, sources, "a healthy read fetches the sources only");
            // Stored bytes: s + p blocks of the shard each (a small document is not padded).
            let hlen = header_len(8, 12);
            let stored: usize = records
                .iter()
                .flat_map(|r| &r.stored_keys)
                .map(|k| archive.blocks()[k].len())
                .sum();
            let want: usize = records
                .iter()
                .map(|r| 12 * (hlen + params.shard(r.len)))
                .sum();
            assert_eq!(stored, want);
        }
    }
}

/// A larger document (12 codewords of 4 x 256 KiB): later codewords point at earlier ones'
/// blocks, sources included.
#[test]
fn round_trip_12_mib() {
    let b = 256 << 10;
    let params = Params::new(4, 8, 8, b as u32);
    let doc = random_bytes(12, 12 << 20);
    let mut archive = systematic(params, 3);
    let records = archive.store(&[12; 32], &doc).unwrap();
    assert_eq!(records.len(), 12);
    let anchors = entangle::Anchors::new(b as u32, 8);
    assert!(records[11].pointers.iter().all(|k| !anchors.contains(k)));
    let sources: Vec<BlockKey> = records
        .iter()
        .flat_map(|r| r.source_keys().iter().copied())
        .collect();
    assert!(
        records
            .iter()
            .flat_map(|r| &r.pointers)
            .any(|k| sources.contains(k)),
        "some pointer is a source block"
    );
    let cap = params.capacity() as usize;
    for (k, r) in records.iter().enumerate() {
        check_blocks(r, archive.blocks(), &doc[k * cap..(k + 1) * cap]);
    }
    assert!(archive.read(&records).unwrap() == doc);
}

/// A read with every source present needs nothing else: not the pointers, not the parities
/// (and does no Reed-Solomon). With a source missing it goes on to the pointers, then the
/// parities, and decodes.
#[test]
fn healthy_read_is_s_fetches() {
    let params = Params::new(4, 8, 8, 1024);
    let mut archive = systematic(params, 4);
    for i in 0..10 {
        archive.store(&doc_id(i), &random_bytes(i, 4096)).unwrap();
    }
    let doc = random_bytes(99, 3000);
    let rec = archive.store(&doc_id(99), &doc).unwrap().remove(0);
    let only_sources: Store = rec
        .source_keys()
        .iter()
        .map(|k| (*k, archive.blocks()[k].clone()))
        .collect();
    assert_eq!(decode(&rec, &only_sources).unwrap(), doc);
    // One source lost: the other sources, every pointer, then parities until s + t.
    let mut store = archive.blocks().clone();
    store.remove(&rec.stored_keys[1]);
    let (out, fetched) = read_logged(std::slice::from_ref(&rec), &store);
    assert_eq!(out.unwrap(), doc);
    let order = fetch_order(&rec);
    assert_eq!(fetched, order[..fetched.len()]);
    assert_eq!(fetched.len(), params.s() + params.t() + 1);
    // Only the sources, one lost: undecodable (3 of 12 symbols).
    let mut three = only_sources.clone();
    three.remove(&rec.stored_keys[0]);
    assert!(matches!(
        decode(&rec, &three),
        Err(Error::Undecodable {
            have: 3,
            need: 12,
            ..
        })
    ));
}

/// Builds a systematic codeword with `t` real pointers; returns its record, the archive's
/// record index, and a store with its pointers and stored blocks.
fn codeword_with_real_pointers(params: Params, seed: u64) -> (Record, RecordIndex, Store, Vec<u8>) {
    let mut archive = MemArchive::with_layout(
        params,
        Layout::Systematic,
        PointerSelector::uniform(params.t()),
        seed,
    )
    .unwrap();
    let cap = params.capacity() as usize;
    while archive.order().len() < params.t() {
        archive
            .store(
                &doc_id(archive.order().len() as u64),
                &random_bytes(seed, cap),
            )
            .unwrap();
    }
    let doc = random_bytes(seed + 1, cap.saturating_sub(3));
    let rec = archive.store(&[0xaa; 32], &doc).unwrap().remove(0);
    let store = rec
        .pointers
        .iter()
        .chain(&rec.stored_keys)
        .map(|k| (*k, archive.blocks()[k].clone()))
        .collect();
    (rec, archive.index().clone(), store, doc)
}

/// The symbols of a codeword: sources, pointers, parities.
fn symbols(rec: &Record) -> Vec<BlockKey> {
    fetch_order(rec)
}

/// Exhaustive over small codes: every set of missing symbols (of the `s + t + p`) that leaves
/// at least `s + t`, or all `s` sources, decodes exactly; every other is an explicit
/// [`Error::Undecodable`] counting what is left. Repair ([`rebuild_codeword`]) rebuilds every
/// missing block byte-exact from any `s + t`, and reports fewer as undecodable.
#[test]
fn every_erasure_pattern() {
    for params in [
        Params::new(2, 3, 2, 64),
        Params::new(2, 3, 4, 64),
        Params::new(3, 2, 1, 64),
        Params::new(1, 4, 2, 32),
        Params::new(2, 6, 4, 32),
    ] {
        let (rec, index, store, doc) = codeword_with_real_pointers(params, 21);
        let syms = symbols(&rec);
        let n = syms.len();
        assert_eq!(n, params.s() + params.t() + params.p());
        let need = params.needed();
        let (mut decoded, mut failed) = (0, 0);
        for mask in 0u32..(1 << n) {
            let mut s = store.clone();
            for (i, k) in syms.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    s.remove(k);
                }
            }
            let left = n - mask.count_ones() as usize;
            let sources_left = (0..params.s()).all(|i| mask & (1 << i) == 0);
            match decode(&rec, &s) {
                Ok(d) => {
                    assert!(left >= need || sources_left, "{params:?} mask {mask:b}");
                    assert_eq!(d, doc);
                    decoded += 1;
                }
                Err(Error::Undecodable { have, need: nd, .. }) => {
                    assert!(left < need && !sources_left, "{params:?} mask {mask:b}");
                    assert_eq!((have, nd), (left, need));
                    failed += 1;
                }
                Err(e) => panic!("{params:?} mask {mask:b}: {e}"),
            }
            // Repair: from s + t symbols, everything comes back byte-exact.
            if mask.count_ones() as usize <= params.p() + 1 {
                match rebuild_codeword(&index, &rec, &s) {
                    Ok(out) => {
                        assert!(left >= need, "{params:?} mask {mask:b}");
                        assert_eq!(out.rebuilt.len(), n - left);
                        assert!(out.unverified.is_empty() && out.corrupt.is_empty());
                        for rb in &out.rebuilt {
                            assert_eq!(rb.bytes, store[&rb.key]);
                        }
                    }
                    Err(Error::Undecodable { .. }) => assert!(left < need),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        println!("{params:?}: {decoded} patterns decode, {failed} do not");
    }
}

/// Corrupted symbols are rejected by hash and count as missing: up to p corruptions decode;
/// p + 1 decode only if the sources are untouched (the direct read); never wrong bytes.
#[test]
fn corrupted_symbols_are_never_used() {
    let params = Params::new(2, 6, 4, 64);
    let (rec, _, store, doc) = codeword_with_real_pointers(params, 5);
    let syms = symbols(&rec);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut outcomes = [0usize; 3];
    for round in 0..400 {
        let mut s = store.clone();
        let k = params.p() + round % 2;
        let mut idx: Vec<usize> = (0..syms.len()).collect();
        idx.shuffle(&mut rng);
        for &i in &idx[..k] {
            let v = s.get_mut(&syms[i]).unwrap();
            match rng.gen_range(0..3) {
                0 => {
                    let pos = rng.gen_range(0..v.len());
                    v[pos] ^= 1 + (rng.next_u32() % 255) as u8;
                }
                1 => {
                    v.pop();
                }
                _ => v.push(0),
            }
        }
        let sources_hit = idx[..k].iter().any(|&i| i < params.s());
        match decode(&rec, &s) {
            Ok(d) => {
                assert!(k <= params.p() || !sources_hit);
                assert_eq!(d, doc);
                outcomes[usize::from(k > params.p())] += 1;
            }
            Err(Error::Undecodable { .. }) => {
                assert!(k > params.p() && sources_hit);
                outcomes[2] += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
}

/// A source block lost with more than p symbols of its own codeword comes back, byte-exact,
/// through a codeword that points at it; then its own codeword recovers the rest.
#[test]
fn lost_source_is_rebuilt_through_a_referrer() {
    let params = Params::new(2, 6, 3, 512);
    let mut archive = systematic(params, 3);
    for i in 0..80 {
        archive
            .store(
                &doc_id(i),
                &random_bytes(i, params.capacity() as usize - (i as usize % 5)),
            )
            .unwrap();
    }
    // A source block of an early codeword that later codewords point at.
    let (x, owner) = archive
        .order()
        .iter()
        .find_map(|k| {
            let (cid, j) = archive.index().locate(k)?;
            let referenced = archive.index().referrers(k).next().is_some();
            (referenced && j < params.s()).then_some((*k, cid))
        })
        .expect("a referenced source");
    let rec = archive.record(&owner).unwrap().clone();
    // Lose x and p more stored blocks of its codeword: p + 1 symbols, beyond what it decodes.
    let mut lost = vec![x];
    lost.extend(rec.stored_keys.iter().filter(|k| **k != x).take(params.p()));
    let saved: Store = lost
        .iter()
        .map(|k| (*k, archive.remove(k).unwrap()))
        .collect();
    assert!(matches!(
        decode(&rec, archive.blocks()),
        Err(Error::Undecodable { .. })
    ));
    let report = archive.repair();
    assert_eq!(report.rebuilt.len(), lost.len(), "{report:?}");
    assert!(report.undecodable.is_empty() && report.unverified.is_empty());
    let first = report.rebuilt.iter().find(|r| r.key == x).unwrap();
    assert!(
        matches!(first.role, Role::Pointer(_)),
        "x came back as a pointer"
    );
    assert_ne!(first.via, owner);
    let mut roles = [0usize; 3];
    for rb in &report.rebuilt {
        assert_eq!(rb.bytes, saved[&rb.key], "byte-exact");
        let via = archive.record(&rb.via).unwrap();
        match rb.role {
            Role::Source(j) => {
                assert!(j < params.s());
                assert_eq!((rb.via, via.stored_keys[j]), (owner, rb.key));
                roles[0] += 1;
            }
            Role::Parity(j) => {
                assert!(j >= params.s());
                assert_eq!((rb.via, via.stored_keys[j]), (owner, rb.key));
                roles[1] += 1;
            }
            Role::Pointer(i) => {
                assert_eq!(via.pointers[i], rb.key);
                roles[2] += 1;
            }
        }
    }
    println!("rebuilt as (source, parity, pointer): {roles:?}");
    assert!(decode(&rec, archive.blocks()).is_ok());
    assert!(archive.repair().rebuilt.is_empty());
}

/// Random losses: repair reaches a fixed point where every rebuilt block is byte-exact and
/// every codeword is complete or reported undecodable; a stuck codeword's document is
/// readable exactly when its sources all survived.
#[test]
fn random_losses_repair_to_fixed_point() {
    let params = Params::new(2, 6, 4, 64);
    for seed in 0..4u64 {
        let mut archive = systematic(params, seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..100 {
            let mut doc = vec![0u8; params.capacity() as usize - (i % 7)];
            rng.fill_bytes(&mut doc);
            archive
                .store(&doc_id(i as u64 + 1000 * seed), &doc)
                .unwrap();
        }
        let original = archive.blocks().clone();
        let mut damaged = original.clone();
        let lost: Vec<BlockKey> = original
            .keys()
            .filter(|_| rng.next_u32() % 100 < 40)
            .copied()
            .collect();
        for k in &lost {
            damaged.remove(k);
        }
        let report = repair(archive.index(), &damaged);
        for rb in &report.rebuilt {
            assert_eq!(rb.bytes, original[&rb.key]);
        }
        let mut after = damaged.clone();
        after.extend(report.rebuilt.iter().map(|r| (r.key, r.bytes.clone())));
        assert!(repair(archive.index(), &after).rebuilt.is_empty());
        let mut stuck_readable = 0;
        for rec in archive.index().records() {
            let complete = rec
                .stored_keys
                .iter()
                .chain(&rec.pointers)
                .all(|k| after.contains_key(k) || !original.contains_key(k));
            let stuck = report.undecodable.contains(&rec.id);
            assert!(complete != stuck, "codeword {}", rec.id);
            let sources = rec.source_keys().iter().all(|k| after.contains_key(k));
            assert_eq!(decode(rec, &after).is_ok(), !stuck || sources);
            stuck_readable += usize::from(stuck && sources);
        }
        println!(
            "seed {seed}: lost {} of {}, rebuilt {}, {} stuck ({} of them readable), {:.2} reads per rebuilt block",
            lost.len(),
            original.len(),
            report.rebuilt.len(),
            report.undecodable.len(),
            stuck_readable,
            report.reads_per_rebuilt_block()
        );
    }
}

/// fetch_order lists sources, pointers (no anchors), parities; rebuild_codeword rebuilds a
/// missing source, pointer and parity of one codeword with their roles, reading s + t.
#[test]
fn fetch_order_and_single_codeword_rebuild() {
    let params = Params::new(2, 6, 4, 64);
    let (rec, index, mut src, _) = codeword_with_real_pointers(params, 4);
    let order = fetch_order(&rec);
    assert_eq!(order.len(), 2 + 6 + 4);
    assert_eq!(&order[..2], rec.source_keys());
    assert_eq!(&order[2..8], &rec.pointers[..]);
    assert_eq!(&order[8..], rec.parity_keys());
    let full = src.clone();
    let lost = [rec.stored_keys[1], rec.pointers[3], rec.stored_keys[4]];
    for k in &lost {
        src.remove(k);
    }
    let out = rebuild_codeword(&index, &rec, &src).unwrap();
    assert_eq!(out.blocks_read, params.needed());
    let mut roles: Vec<Role> = out.rebuilt.iter().map(|r| r.role).collect();
    roles.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(roles, [Role::Parity(4), Role::Pointer(3), Role::Source(1)]);
    for rb in &out.rebuilt {
        assert_eq!(rb.bytes, full[&rb.key]);
    }
    // The pointer's own record is needed to re-form it: without it, unverified.
    let mut partial = RecordIndex::new();
    partial.insert(rec.clone()).unwrap();
    let out = rebuild_codeword(&partial, &rec, &src).unwrap();
    assert_eq!(out.unverified, vec![rec.pointers[3]]);
    assert_eq!(out.rebuilt.len(), 2);
}

/// A ring that moves from parity-only to systematic: systematic codewords point at old
/// parities, later parity-only ones at sources; one index holds both kinds of record, and a
/// lost block of either layout comes back through a codeword of the other.
#[test]
fn mixed_layouts_in_one_ring() {
    let params = Params::new(2, 4, 4, 256);
    let anchors: Vec<StoredBlockRef> = (0..4)
        .map(|i| (BlockKey::anchor(256, i), Vec::new()))
        .collect();
    type StoredBlockRef = (BlockKey, Vec<u8>);
    let mut store: Store = BTreeMap::new();
    let mut index = RecordIndex::new();
    // A: parity-only, anchors only.
    let doc_a = random_bytes(1, 512);
    let a = encode_document(params, &[1; 32], &doc_a, |_, _| Ok(anchors.clone())).unwrap();
    let (rec_a, blocks_a) = a[0].clone();
    store.extend(blocks_a.clone());
    index.insert(rec_a.clone()).unwrap();
    // B: systematic, pointing at A's four parities.
    let doc_b = random_bytes(2, 512);
    let b = encode_document_layout(
        Layout::Systematic,
        Parallelism::AUTO,
        params,
        &[2; 32],
        &doc_b,
        |_, _| Ok(blocks_a[..4].to_vec()),
    )
    .unwrap();
    let (rec_b, blocks_b) = b[0].clone();
    store.extend(blocks_b.clone());
    index.insert(rec_b.clone()).unwrap();
    // C: parity-only, pointing at B's two sources and two of A's parities.
    let doc_c = random_bytes(3, 512);
    let ptrs_c = [
        blocks_b[0].clone(),
        blocks_b[1].clone(),
        blocks_a[2].clone(),
        blocks_a[3].clone(),
    ];
    let (rec_c, blocks_c) = encode(
        params,
        CodewordId([3; 32]),
        &doc_c,
        &ptrs_c
            .iter()
            .map(|(k, v)| (*k, v.as_slice()))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    store.extend(blocks_c);
    index.insert(rec_c.clone()).unwrap();
    assert_eq!(decode(&rec_a, &store).unwrap(), doc_a);
    assert_eq!(decode(&rec_b, &store).unwrap(), doc_b);
    assert_eq!(decode(&rec_c, &store).unwrap(), doc_c);

    // Lose B's source 0 and its 4 parities, and A's parities 0, 1, 2 (B's pointers): A (4
    // anchors + 1 parity of 6 needed) and B (3 of 10 symbols) are stuck; C (parity-only)
    // misses 2 of its 8 symbols, decodes, and rebuilds B's source and A's parity 2 as its
    // pointers; then A decodes, then B.
    let mut damaged = store.clone();
    let lost_b: Vec<BlockKey> = [0, 2, 3, 4, 5]
        .iter()
        .map(|&j| rec_b.stored_keys[j])
        .collect();
    let lost_a: Vec<BlockKey> = rec_a.parity_keys[..3].to_vec();
    for k in lost_a.iter().chain(&lost_b) {
        damaged.remove(k);
    }
    assert!(decode(&rec_b, &damaged).is_err());
    assert!(decode(&rec_a, &damaged).is_err());
    let report = repair(&index, &damaged);
    assert!(report.undecodable.is_empty(), "{report:?}");
    let keys: Vec<BlockKey> = report.rebuilt.iter().map(|r| r.key).collect();
    for k in lost_a.iter().chain(&lost_b) {
        assert!(keys.contains(k), "{k:?} rebuilt");
    }
    for rb in &report.rebuilt {
        assert_eq!(rb.bytes, store[&rb.key]);
    }
    let src0 = report
        .rebuilt
        .iter()
        .find(|r| r.key == rec_b.stored_keys[0])
        .unwrap();
    assert_eq!((src0.via, src0.role), (rec_c.id, Role::Pointer(0)));
    let par2 = report
        .rebuilt
        .iter()
        .find(|r| r.key == rec_a.parity_keys[2])
        .unwrap();
    assert_eq!((par2.via, par2.role), (rec_c.id, Role::Pointer(2)));
    let b5 = report
        .rebuilt
        .iter()
        .find(|r| r.key == rec_b.stored_keys[5])
        .unwrap();
    assert_eq!((b5.via, b5.role), (rec_b.id, Role::Parity(5)));
    let mut after = damaged.clone();
    after.extend(report.rebuilt.iter().map(|r| (r.key, r.bytes.clone())));
    assert_eq!(decode(&rec_b, &after).unwrap(), doc_b);
}

/// The bytes of a parity-only record are exactly what the node has always stored: "ENTR\x01"
/// and the postcard bytes, pinned here from postcard 1.1.3 itself. They decode to the same
/// record, and the serde shape of `CodewordRecord` is unchanged.
#[test]
fn parity_only_record_bytes_are_unchanged() {
    let r = CodewordRecord {
        id: CodewordId([7; 32]),
        params: Params::new(1, 1, 2, 16),
        pointers: vec![BlockKey([1; 32])],
        parity_keys: vec![BlockKey([2; 32]), BlockKey([3; 32])],
        payload_hashes: vec![[4; 32], [5; 32]],
        len: 10,
        content_hash: [6; 32],
    };
    let golden = hex_golden();
    assert_eq!(encode_record(&r), golden);
    assert_eq!(Record::from(r.clone()).encode(), golden);
    let back = decode_record(&golden).unwrap();
    assert_eq!(back, Record::from(r.clone()));
    assert_eq!(CodewordRecord::try_from(back).unwrap(), r);
    // Larger values (multi-byte varints) round-trip too; records from the encoder as well.
    let params = Params::new(4, 8, 12, 256 * 1024);
    let anchors: Vec<(BlockKey, &[u8])> = (0..8)
        .map(|i| (BlockKey::anchor(params.block_size, i), &[][..]))
        .collect();
    let (rec, _) = encode(
        params,
        CodewordId([9; 32]),
        &random_bytes(1, 300_000),
        &anchors,
    )
    .unwrap();
    let bytes = encode_record(&rec);
    assert_eq!(&bytes[..5], b"ENTR\x01");
    assert_eq!(decode_record(&bytes).unwrap(), Record::from(rec.clone()));
    // The serde data model (what postcard writes) of CodewordRecord: field names, order, types.
    let json = serde_json::to_string(&r).unwrap();
    let want = format!(
        "{{\"id\":{},\"params\":{{\"s\":1,\"t\":1,\"p\":2,\"block_size\":16}},\"pointers\":[{}],\"parity_keys\":[{},{}],\"payload_hashes\":[{},{}],\"len\":10,\"content_hash\":{}}}",
        arr(7),
        arr(1),
        arr(2),
        arr(3),
        arr(4),
        arr(5),
        arr(6)
    );
    assert_eq!(json, want);
    // A systematic-shaped record (s + p keys) is not a valid CodewordRecord: a reader of
    // parity-only records never takes one for its own.
    let (sys, _) = encode_layout(
        Layout::Systematic,
        Parallelism::AUTO,
        params,
        CodewordId([8; 32]),
        &[1, 2, 3],
        &anchors,
    )
    .unwrap();
    let shaped = CodewordRecord {
        id: sys.id,
        params: sys.params,
        pointers: sys.pointers.clone(),
        parity_keys: sys.stored_keys.clone(),
        payload_hashes: sys.payload_hashes.clone(),
        len: sys.len,
        content_hash: sys.content_hash,
    };
    assert!(shaped.validate().is_err());
    assert!(CodewordRecord::try_from(sys).is_err());
}

fn arr(v: u8) -> String {
    format!("[{}]", vec![v.to_string(); 32].join(","))
}

/// `"ENTR\x01"` + postcard 1.1.3's bytes of the record of [`parity_only_record_bytes_are_unchanged`].
fn hex_golden() -> Vec<u8> {
    let hex = GOLDEN_V1;
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

const GOLDEN_V1: &str = "454e545201070707070707070707070707070707070707070707070707070707070707070701010210010101010101010101010101010101010101010101010101010101010101010101020202020202020202020202020202020202020202020202020202020202020202030303030303030303030303030303030303030303030303030303030303030302040404040404040404040404040404040404040404040404040404040404040405050505050505050505050505050505050505050505050505050505050505050a0606060606060606060606060606060606060606060606060606060606060606";

/// Systematic records: their own form, round trip, every truncation and bad field rejected.
#[test]
fn systematic_record_bytes() {
    let params = Params::new(4, 8, 8, 4096);
    let (rec, _, _, _) = codeword_with_real_pointers(params, 7);
    let bytes = encode_record(&rec);
    assert_eq!(&bytes[..6], b"ENTR\x02\x01");
    assert_eq!(bytes.len(), 88 + 32 * (8 + 2 * 12));
    assert_eq!(Record::decode(&bytes).unwrap(), rec);
    assert_eq!(rec.encode(), bytes);
    for n in 0..bytes.len() {
        assert!(decode_record(&bytes[..n]).is_err(), "prefix {n}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_record(&longer).is_err());
    let cases: Vec<(usize, Vec<u8>)> = vec![
        (0, b"X".to_vec()),     // magic
        (4, vec![3]),           // magic version
        (5, vec![0]),           // layout 0 is not written in this form
        (5, vec![2]),           // unknown layout
        (6, vec![0, 0]),        // s = 0
        (6, vec![5, 0]),        // s: counts no longer match the length
        (8, vec![9, 0]),        // t
        (10, vec![0, 0]),       // p = 0
        (12, vec![1, 0, 0, 0]), // odd block size
        (12, vec![0xff; 4]),    // huge block size
        (48, vec![0xff; 8]),    // length > s * B
        (88 + 32, vec![0; 0]),  // (no-op, control)
    ];
    for (off, patch) in cases {
        let mut b = bytes.clone();
        b[off..off + patch.len()].copy_from_slice(&patch);
        if patch.is_empty() {
            assert!(decode_record(&b).is_ok());
        } else {
            assert!(decode_record(&b).is_err(), "patch at {off}");
        }
    }
    // A duplicate pointer, a duplicate stored key.
    let mut dup = rec.clone();
    dup.pointers[1] = dup.pointers[0];
    assert!(decode_record(&encode_record(&dup)).is_err());
    let mut dup = rec.clone();
    dup.stored_keys[5] = dup.stored_keys[0];
    assert!(decode_record(&encode_record(&dup)).is_err());
    // p < s is a valid systematic code.
    let small = Params::new(4, 2, 1, 64);
    let anchors: Vec<(BlockKey, &[u8])> =
        (0..2).map(|i| (BlockKey::anchor(64, i), &[][..])).collect();
    let (rec, blocks) = encode_layout(
        Layout::Systematic,
        Parallelism::AUTO,
        small,
        CodewordId([1; 32]),
        &[5; 200],
        &anchors,
    )
    .unwrap();
    assert_eq!(blocks.len(), 5);
    assert_eq!(decode_record(&encode_record(&rec)).unwrap(), rec);
    let store: Store = blocks.into_iter().collect();
    assert_eq!(decode(&rec, &store).unwrap(), vec![5; 200]);
}

#[test]
fn bad_input_is_rejected() {
    let params = Params::new(2, 2, 2, 16);
    let a = |i| (BlockKey::anchor(16, i), &[][..]);
    let enc = |params: Params, doc: &[u8], ptrs: &[(BlockKey, &[u8])]| {
        encode_layout(
            Layout::Systematic,
            Parallelism::AUTO,
            params,
            CodewordId([0; 32]),
            doc,
            ptrs,
        )
    };
    assert!(matches!(
        enc(params, &[0; 33], &[a(0), a(1)]),
        Err(Error::DocumentTooLarge { .. })
    ));
    assert!(matches!(
        enc(params, &[0; 3], &[a(0)]),
        Err(Error::WrongPointerCount { .. })
    ));
    assert!(matches!(
        enc(params, &[0; 3], &[a(0), a(0)]),
        Err(Error::DuplicatePointer(_))
    ));
    assert!(matches!(
        enc(Params::new(2, 2, 0, 16), &[], &[a(0), a(1)]),
        Err(Error::InvalidParams(_))
    ));
    assert!(enc(Params::new(2, 2, 1, 16), &[], &[a(0), a(1)]).is_ok());
    assert!(encode(
        Params::new(2, 2, 1, 16),
        CodewordId([0; 32]),
        &[],
        &[a(0), a(1)]
    )
    .is_err());
    // A source block is a valid pointer; a corrupted one is not.
    let (rec, blocks) = enc(params, &[1; 20], &[a(0), a(1)]).unwrap();
    let src = &blocks[0].1;
    assert!(enc(params, &[2; 5], &[(rec.stored_keys[0], src), a(1)]).is_ok());
    assert!(encode(
        params,
        CodewordId([1; 32]),
        &[2; 5],
        &[(rec.stored_keys[0], src), a(1)]
    )
    .is_ok());
    let mut bad = src.clone();
    bad[100] ^= 1;
    assert!(matches!(
        enc(params, &[2; 5], &[(rec.stored_keys[0], &bad), a(1)]),
        Err(Error::BadPointer { .. })
    ));
    // Records: wrong counts, forged content hash.
    let store: Store = blocks.into_iter().collect();
    let mut r = rec.clone();
    r.stored_keys.pop();
    assert!(matches!(
        decode(&r, &store),
        Err(Error::InvalidRecord { .. })
    ));
    let mut r = rec.clone();
    r.layout = Layout::ParityOnly;
    assert!(matches!(
        decode(&r, &store),
        Err(Error::InvalidRecord { .. })
    ));
    let mut r = rec.clone();
    r.content_hash[0] ^= 1;
    assert!(matches!(decode(&r, &store), Err(Error::ContentMismatch(_))));
    assert_eq!(decode(&rec, &store).unwrap(), vec![1; 20]);
    // The index refuses a stored key owned by another codeword.
    let mut index = RecordIndex::new();
    index.insert(rec.clone()).unwrap();
    index.insert(rec.clone()).unwrap();
    let mut other = rec.clone();
    other.id = CodewordId([5; 32]);
    assert!(index.insert(other).is_err());
    assert_eq!(index.locate(&rec.stored_keys[1]), Some((rec.id, 1)));
    assert_eq!(index.remove(&rec.id), Some(rec.clone()));
    assert!(index.locate(&rec.stored_keys[1]).is_none());
}

/// The simulator's layouts are the codec's: the same type, the same counts.
#[test]
fn simulator_layouts_are_the_codecs() {
    let params = Params::new(4, 8, 8, 4096);
    let anchors: Vec<(BlockKey, &[u8])> = (0..8)
        .map(|i| (BlockKey::anchor(4096, i), &[][..]))
        .collect();
    for layout in [
        entangle::sim::Layout::ParityOnly,
        entangle::sim::Layout::Systematic,
    ] {
        let layout: Layout = layout;
        let (rec, blocks) = encode_layout(
            layout,
            Parallelism::AUTO,
            params,
            CodewordId([1; 32]),
            &[1; 10],
            &anchors,
        )
        .unwrap();
        assert_eq!(blocks.len(), layout.stored_per_codeword(4, 8));
        assert_eq!(blocks.len(), layout.stored(&params));
        assert_eq!(rec.layout, layout);
        assert_eq!(fetch_order(&rec).len(), layout.stored(&params));
        assert_eq!(layout.symbols(&params), 8 + blocks.len());
    }
    assert_eq!(Layout::Systematic.erasures(&params), 8);
    assert_eq!(Layout::ParityOnly.erasures(&params), 4);
    assert_eq!(Layout::Systematic.overhead(4, 8), 3.0);
}

fn sample_blocks() -> Vec<Vec<u8>> {
    let params = Params::new(2, 3, 4, 64);
    let anchors: Vec<(BlockKey, &[u8])> =
        (0..3).map(|i| (BlockKey::anchor(64, i), &[][..])).collect();
    let (_, blocks) = encode_layout(
        Layout::Systematic,
        Parallelism::AUTO,
        params,
        CodewordId([4; 32]),
        &random_bytes(4, 100),
        &anchors,
    )
    .unwrap();
    blocks.into_iter().map(|(_, b)| b).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Arbitrary mutations of a valid version 2 block (source or parity) never panic;
    /// whatever still parses re-encodes to exactly the same bytes.
    #[test]
    fn prop_mutated_v2_blocks_never_panic(
        pick in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = sample_blocks()[pick].clone();
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

    /// Arbitrary mutations of record bytes (either form) never panic; whatever still decodes
    /// is valid, and a systematic record re-encodes to exactly the same bytes.
    #[test]
    fn prop_mutated_records_never_panic(
        systematic in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let params = Params::new(2, 3, 4, 64);
        let anchors: Vec<(BlockKey, &[u8])> =
            (0..3).map(|i| (BlockKey::anchor(64, i), &[][..])).collect();
        let layout = if systematic { Layout::Systematic } else { Layout::ParityOnly };
        let (rec, _) = encode_layout(layout, Parallelism::AUTO, params, CodewordId([4; 32]), &[9; 50], &anchors).unwrap();
        let mut bytes = encode_record(&rec);
        for (pos, val) in edits {
            let n = bytes.len();
            bytes[pos % n] = val;
        }
        if let Some(c) = cut {
            let n = bytes.len();
            bytes.truncate(c % (n + 1));
        }
        if let Ok(r) = decode_record(&bytes) {
            prop_assert!(r.validate().is_ok());
            if r.layout == Layout::Systematic {
                prop_assert_eq!(encode_record(&r), bytes);
            } else {
                prop_assert!(CodewordRecord::try_from(r.clone()).unwrap().validate().is_ok());
            }
        }
    }

    /// Random bytes are neither blocks nor records.
    #[test]
    fn prop_random_bytes_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..900)) {
        prop_assert!(ParityBlock::decode(&bytes).is_err());
        let mut magic = b"ENTR\x02".to_vec();
        magic.extend(&bytes);
        prop_assert!(decode_record(&magic).is_err());
    }
}

/// The trusted encoder (pointers' bytes checked by the caller, not hashed again) writes exactly
/// what the checking one writes, for both layouts, documents of several codewords and pointers
/// mixing anchors, earlier documents' blocks and the document's own earlier codewords.
#[test]
fn trusted_pointers_encode_the_same_bytes() {
    let params = Params::new(4, 8, 8, 1024);
    let anchors: Vec<(BlockKey, Vec<u8>)> = (0..8)
        .map(|i| (BlockKey::anchor(1024, i), Vec::new()))
        .collect();
    for layout in [Layout::Systematic, Layout::ParityOnly] {
        let p = if layout == Layout::Systematic {
            params
        } else {
            Params::new(4, 8, 12, 1024)
        };
        let first = encode_document_layout(
            layout,
            Parallelism::AUTO,
            p,
            &[1; 32],
            &random_bytes(5, 4096),
            |_, _| Ok(anchors.clone()),
        )
        .unwrap();
        let old: Vec<(BlockKey, Vec<u8>)> = first[0].1.clone();
        let doc = random_bytes(6, 3 * 4096 + 77);
        let choose = |k: u64, done: &[entangle::EncodedRecord]| {
            let mut v: Vec<(BlockKey, Vec<u8>)> = old.iter().take(4).cloned().collect();
            match done.last() {
                Some((_, blocks)) => v.extend(blocks.iter().take(4).cloned()),
                None => v.extend(anchors.iter().skip(4).cloned()),
            }
            assert_eq!(v.len(), 8, "codeword {k}");
            Ok(v)
        };
        let a =
            encode_document_layout(layout, Parallelism::AUTO, p, &[2; 32], &doc, choose).unwrap();
        let how = (layout, Parallelism::AUTO, p);
        let b =
            encode_document_checked(PointerCheck::Trusted, how, &[2; 32], &doc, choose).unwrap();
        assert_eq!(a, b, "{layout:?}");
        assert_eq!(a.len(), 4);
    }
}
