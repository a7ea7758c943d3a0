//! Acceptance test 3 and repair behaviour.

use std::collections::BTreeMap;

use entangle::{
    decode, repair, repair_lost, BlockKey, Error, MemArchive, Params, PointerSelector, Role,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn filled_archive(params: Params, docs: usize, seed: u64) -> MemArchive {
    let mut a = MemArchive::new(params, PointerSelector::mixed(params.t()), seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..docs {
        let mut doc = vec![0u8; params.capacity() as usize - (i % 7)];
        rng.fill_bytes(&mut doc);
        a.store(
            &(i as u64 * 31 + 1)
                .to_le_bytes()
                .repeat(4)
                .try_into()
                .unwrap(),
            &doc,
        )
        .unwrap();
    }
    a
}

/// Test 3: a pointer block lost together with more than e symbols of its own codeword is
/// rebuilt, byte-exact, through a codeword that points at it; then its own codeword recovers.
#[test]
fn lost_pointer_is_rebuilt_through_a_referrer() {
    let params = Params::new(2, 10, 6, 512);
    let mut archive = filled_archive(params, 60, 3);
    // A block of an early codeword that later codewords point at.
    let (x, owner) = archive
        .order()
        .iter()
        .find_map(|k| {
            let refs: Vec<_> = archive.index().referrers(k).collect();
            (!refs.is_empty()).then(|| (*k, archive.index().locate(k).unwrap().0))
        })
        .expect("a referenced block");
    let rec = archive.record(&owner).unwrap().clone();
    let j = rec.stored_index(&x).unwrap();
    // Lose x and e more parities of its codeword: e + 1 symbols, beyond what it can decode.
    let mut lost: Vec<BlockKey> = vec![x];
    lost.extend(
        rec.stored_keys
            .iter()
            .filter(|k| **k != x)
            .take(params.e())
            .copied(),
    );
    let saved: BTreeMap<BlockKey, Vec<u8>> = lost
        .iter()
        .map(|k| (*k, archive.remove(k).unwrap()))
        .collect();
    match decode(&rec, archive.blocks()) {
        Err(Error::Undecodable { have, need, .. }) => assert!(have < need),
        other => panic!("expected undecodable, got {other:?}"),
    }

    let report = archive.repair();
    println!(
        "rebuilt {} blocks through {} codewords, {} reads ({:.1} per block)",
        report.rebuilt.len(),
        report.codewords_decoded,
        report.blocks_read,
        report.reads_per_rebuilt_block()
    );
    assert_eq!(report.rebuilt.len(), lost.len());
    assert!(report.undecodable.is_empty() && report.unverified.is_empty());
    let first = report.rebuilt.iter().find(|r| r.key == x).unwrap();
    assert!(
        matches!(first.role, Role::Pointer(_)),
        "x came back as a pointer"
    );
    assert_ne!(first.via, owner);
    for rb in &report.rebuilt {
        assert_eq!(rb.bytes, saved[&rb.key], "byte-exact");
        assert_eq!(BlockKey::of(&rb.bytes), rb.key);
        // Each block came back through its own codeword or one that points at it.
        let via = archive.record(&rb.via).unwrap();
        match rb.role {
            Role::Parity(j) => assert_eq!((rb.via, via.stored_keys[j]), (owner, rb.key)),
            Role::Pointer(i) => assert_eq!(via.pointers[i], rb.key),
            Role::Source(_) => panic!("a parity-only codeword has no stored sources"),
        }
    }
    assert_eq!(archive.blocks()[&rec.stored_keys[j]], saved[&x]);
    assert!(decode(&rec, archive.blocks()).is_ok());
    // A second run has nothing to do.
    assert!(archive.repair().rebuilt.is_empty());
}

/// Random losses: repair reaches a fixed point where every rebuilt block is byte-exact and
/// every codeword is either complete or reported undecodable; repair_lost agrees.
#[test]
fn random_losses_repair_to_fixed_point() {
    let params = Params::new(2, 6, 4, 64);
    for seed in 0..4u64 {
        println!("seed {seed}");
        let archive = filled_archive(params, 120, seed);
        let original = archive.blocks().clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let mut damaged = original.clone();
        let lost: Vec<BlockKey> = original
            .keys()
            .filter(|_| rng.next_u32() % 100 < 35)
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
        // Fixed point: another repair over the result rebuilds nothing.
        assert!(repair(archive.index(), &after).rebuilt.is_empty());
        for rec in archive.index().records() {
            let complete = rec
                .stored_keys
                .iter()
                .chain(&rec.pointers)
                .all(|k| after.contains_key(k) || !original.contains_key(k));
            let stuck = report.undecodable.contains(&rec.id);
            assert!(
                complete != stuck,
                "codeword {} complete={complete} stuck={stuck}",
                rec.id
            );
            assert_eq!(decode(rec, &after).is_ok(), !stuck);
        }
        let from_lost = repair_lost(archive.index(), &damaged, lost.iter().copied());
        let mut a: Vec<BlockKey> = report.rebuilt.iter().map(|r| r.key).collect();
        let mut b: Vec<BlockKey> = from_lost.rebuilt.iter().map(|r| r.key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        println!(
            "  lost {} blocks, rebuilt {}, {} codewords stuck, {:.2} reads per rebuilt block",
            lost.len(),
            report.rebuilt.len(),
            report.undecodable.len(),
            report.reads_per_rebuilt_block()
        );
    }
}

/// A source that serves corrupted bytes: they are detected, never used, and reported.
#[test]
fn corrupt_source_blocks_are_not_trusted() {
    let params = Params::new(2, 4, 4, 64);
    let archive = filled_archive(params, 20, 9);
    let rec = archive.index().records().nth(5).unwrap().clone();
    let mut src = archive.blocks().clone();
    src.remove(&rec.stored_keys[0]);
    src.get_mut(&rec.stored_keys[1]).unwrap()[120] ^= 0x40;
    let report = repair(archive.index(), &src);
    assert!(report.corrupt.contains(&rec.stored_keys[1]));
    for rb in &report.rebuilt {
        assert_eq!(rb.bytes, archive.blocks()[&rb.key]);
    }
    let keys: Vec<BlockKey> = report.rebuilt.iter().map(|r| r.key).collect();
    assert!(keys.contains(&rec.stored_keys[0]) && keys.contains(&rec.stored_keys[1]));
}

/// A pointer whose own record is unknown can be decoded as a payload but not re-formed and
/// verified: it is reported as unverified and never returned as a block.
#[test]
fn pointer_without_its_record_is_not_returned() {
    let params = Params::new(2, 6, 4, 64);
    let archive = filled_archive(params, 40, 12);
    let (x, owner) = archive
        .order()
        .iter()
        .find_map(|k| {
            let referenced = archive.index().referrers(k).next().is_some();
            referenced.then(|| (*k, archive.index().locate(k).unwrap().0))
        })
        .unwrap();
    let mut partial = entangle::RecordIndex::new();
    for r in archive.index().records() {
        if r.id != owner {
            partial.insert(r.clone()).unwrap();
        }
    }
    let mut src = archive.blocks().clone();
    src.remove(&x);
    let report = repair(&partial, &src);
    assert!(report.rebuilt.iter().all(|r| r.key != x));
    assert_eq!(report.unverified, vec![x]);
    // With the full index it comes back.
    let report = repair(archive.index(), &src);
    assert_eq!(report.rebuilt.len(), 1);
    assert_eq!(report.rebuilt[0].bytes, archive.blocks()[&x]);
    assert_eq!(report.reads_per_rebuilt_block(), report.blocks_read as f64);
}

/// One-codeword repair (for a caller driving the fixed point itself), fetch order, and
/// removing records from the index.
#[test]
fn single_codeword_rebuild_and_index_removal() {
    let params = Params::new(2, 6, 4, 64);
    let archive = filled_archive(params, 30, 4);
    let rec = archive.index().records().nth(10).unwrap().clone();
    let order = entangle::fetch_order(&rec);
    assert_eq!(order.len(), 6 + 4);
    assert_eq!(&order[..6], &rec.pointers[..]);
    assert_eq!(&order[6..], &rec.stored_keys[..]);

    // Lose e symbols: one pointer and e - 1 parities; fetch only what fetch_order lists.
    let mut src: BTreeMap<BlockKey, Vec<u8>> = order
        .iter()
        .map(|k| (*k, archive.blocks()[k].clone()))
        .collect();
    let lost = [rec.pointers[2], rec.stored_keys[0]];
    for k in &lost {
        src.remove(k);
    }
    let out = entangle::rebuild_codeword(archive.index(), &rec, &src).unwrap();
    assert_eq!(out.rebuilt.len(), 2);
    assert!(out.unverified.is_empty() && out.corrupt.is_empty());
    assert_eq!(out.blocks_read, params.needed());
    for rb in &out.rebuilt {
        assert!(lost.contains(&rb.key));
        assert_eq!(rb.bytes, archive.blocks()[&rb.key]);
    }
    // Beyond e: an explicit error.
    for k in rec.stored_keys.iter().skip(1).take(2) {
        src.remove(k);
    }
    assert!(matches!(
        entangle::rebuild_codeword(archive.index(), &rec, &src),
        Err(Error::Undecodable { .. })
    ));

    let mut index = archive.index().clone();
    let n = index.len();
    let removed = index.remove(&rec.id).unwrap();
    assert_eq!(removed, rec);
    assert_eq!(index.len(), n - 1);
    assert!(index.locate(&rec.stored_keys[0]).is_none());
    for k in &rec.pointers {
        assert!(index.referrers(k).all(|c| *c != rec.id));
    }
    assert!(index.remove(&rec.id).is_none());
    index.insert(rec.clone()).unwrap();
    assert_eq!(index.len(), n);
}

/// Shards: a short codeword's parities have short payloads. Such a block, lost with more
/// than e symbols of its own codeword, comes back through a full codeword that points at it
/// (its symbol there is its payload zero-extended); a full-size payload cannot be re-formed
/// from the shorter symbol a small codeword holds of it, and nothing wrong is ever returned.
#[test]
fn short_blocks_are_rebuilt_through_larger_referrers() {
    let params = Params::new(2, 10, 6, 4096);
    let mut a = MemArchive::new(params, PointerSelector::mixed(params.t()), 5).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..80u64 {
        let len = if i % 2 == 0 { 100 } else { 8192 };
        let mut doc = vec![0u8; len];
        rng.fill_bytes(&mut doc);
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&i.to_le_bytes());
        a.store(&id, &doc).unwrap();
    }
    let hlen = entangle::block::header_len(10, 6);
    let size = |a: &MemArchive, k: &BlockKey| a.blocks()[k].len() - hlen;
    // Small codewords store 6 x 64 bytes, not 6 x 4096.
    assert!(a.blocks().keys().any(|k| size(&a, k) == 64));
    // A short block that a full codeword points at.
    let (x, owner) = a
        .order()
        .iter()
        .find_map(|k| {
            (size(&a, k) == 64
                && a.index().referrers(k).any(|c| {
                    let r = a.record(c).unwrap();
                    params.shard(r.len) == 4096
                }))
            .then(|| (*k, a.index().locate(k).unwrap().0))
        })
        .expect("a short block with a full referrer");
    let rec = a.record(&owner).unwrap().clone();
    let mut lost = vec![x];
    lost.extend(
        rec.stored_keys
            .iter()
            .filter(|k| **k != x)
            .take(params.e())
            .copied(),
    );
    let saved: BTreeMap<BlockKey, Vec<u8>> =
        lost.iter().map(|k| (*k, a.remove(k).unwrap())).collect();
    let report = a.repair();
    assert_eq!(report.rebuilt.len(), lost.len(), "{report:?}");
    for rb in &report.rebuilt {
        assert_eq!(rb.bytes, saved[&rb.key]);
    }
    let first = report.rebuilt.iter().find(|r| r.key == x).unwrap();
    assert!(matches!(first.role, Role::Pointer(_)));

    // A full payload from the first 64 bytes of it (what a small codeword holds): no.
    let (y, ycw) = a
        .order()
        .iter()
        .find_map(|k| (size(&a, k) == 4096).then(|| (*k, a.index().locate(k).unwrap())))
        .unwrap();
    let yrec = a.record(&ycw.0).unwrap();
    let payload = &a.blocks()[&y][hlen..];
    assert_eq!(a.index().reform(&y, &payload[..64]), None);
    assert_eq!(
        yrec.reform_from_symbol(ycw.1, payload).as_deref(),
        Some(&a.blocks()[&y][..])
    );
    // A short payload from its zero-extended symbol: yes; with a non-zero tail: no.
    let xb = a.blocks()[&x].clone();
    let mut sym = xb[hlen..].to_vec();
    sym.resize(4096, 0);
    assert_eq!(a.index().reform(&x, &sym).as_deref(), Some(&xb[..]));
    sym[100] = 1;
    assert_eq!(a.index().reform(&x, &sym), None);
}
