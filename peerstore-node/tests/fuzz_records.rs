//! Property-based fuzzing of the decoders of what nodes keep and exchange as records: codeword
//! records and document records of the entangled layer, reverse-reference entries and signed
//! root records. Whatever the bytes, decoding is `None` / an error value or a record that
//! satisfies its invariants and encodes again to the same record; it never panics.
//!
//! Inputs: arbitrary bytes (with and without the record magic), valid encodings after random
//! flips, truncations, insertions, removals and varint rewrites, and encodings of records with
//! arbitrary field values.
//!
//! Cases per property: `PEERSTORE_FUZZ_CASES` (default 256; `make fuzz` runs 200000).

use std::sync::OnceLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crypto::{
    Identity, RootError, RootRecord, UserId, MAX_ROOT_PAYLOAD, MAX_ROOT_RECORD_LEN,
    ROOT_RECORD_VERSION,
};
use entangle::{CodewordId, CodewordRecord, Layout, Params, Record};
use peerstore_node::entangled::format::{
    decode_record, encode_record, DocRecord, DOCUMENT_MAGIC, DOCUMENT_MAGIC_V2, RECORD_MAGIC,
    RECORD_MAGIC_SYSTEMATIC,
};
use peerstore_proto::{BlockKey, RefsEntry, MAX_BLOCK_SIZE};

// ---------------------------------------------------------------------------------------------
// Configuration

fn cases() -> u32 {
    std::env::var("PEERSTORE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // The failing input is printed; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[derive(Clone, Debug)]
enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Keep only a prefix.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to n bytes.
    Remove(Index, u8),
    /// Write a postcard varint (a length, a count or a variant index) over the bytes at a
    /// position.
    Varint(Index, u64),
}

fn interesting_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u32..64).prop_map(|s| 1u64 << s),
        (0u32..64).prop_map(|s| (1u64 << s) - 1),
        Just(MAX_BLOCK_SIZE as u64),
        Just(MAX_BLOCK_SIZE as u64 + 1),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), vec(any::<u8>(), 1..9)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1u8..17).prop_map(|(i, n)| Mutation::Remove(i, n)),
        4 => (any::<Index>(), interesting_u64()).prop_map(|(i, v)| Mutation::Varint(i, v)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    vec(mutation(), 1..5)
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
        Mutation::Set(i, v) if len > 0 => bytes[i.index(len)] = *v,
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        Mutation::Insert(i, ins) => {
            let k = i.index(len + 1);
            bytes.splice(k..k, ins.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let k = i.index(len);
            bytes.drain(k..(k + usize::from(*n)).min(len));
        }
        Mutation::Varint(i, v) => {
            let k = i.index(len + 1);
            for (j, b) in varint(*v).into_iter().enumerate() {
                match bytes.get_mut(k + j) {
                    Some(slot) => *slot = b,
                    None => bytes.push(b),
                }
            }
        }
        _ => {}
    }
}

fn mutated(samples: &[Vec<u8>], pick: &Index, muts: &[Mutation]) -> Vec<u8> {
    let mut bytes = pick.get(samples).clone();
    for m in muts {
        apply(&mut bytes, m);
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// Valid records (as in the unit tests of peerstore-node/src/entangled/format.rs)

fn codeword_in(layout: Layout, params: Params, seed: u8, doc: &[u8]) -> Record {
    let anchors: Vec<entangle::BlockKey> = (0..u32::from(params.t))
        .map(|i| entangle::BlockKey::anchor(params.block_size, i))
        .collect();
    let pointers: Vec<(entangle::BlockKey, &[u8])> =
        anchors.iter().map(|k| (*k, &[][..])).collect();
    let (rec, _) = entangle::encode_layout(
        layout,
        entangle::Parallelism::SINGLE,
        params,
        CodewordId([seed; 32]),
        doc,
        &pointers,
    )
    .expect("sample codeword encodes");
    rec
}

fn codeword(params: Params, seed: u8, doc: &[u8]) -> Record {
    codeword_in(Layout::ParityOnly, params, seed, doc)
}

/// Parity-only records (`ENTR\x01`, the bytes nodes wrote before layouts) and systematic ones
/// (`ENTR\x02`, the default).
fn codewords() -> &'static [Record] {
    static C: OnceLock<Vec<Record>> = OnceLock::new();
    C.get_or_init(|| {
        vec![
            codeword(Params::new(1, 1, 2, 16), 9, b"hello"),
            codeword(Params::new(2, 3, 4, 64), 1, &[7; 100]),
            codeword(Params::new(3, 2, 5, 32), 2, b""),
            codeword(Params::new(1, 0, 1, 2), 3, b"ab"),
            codeword_in(Layout::Systematic, Params::new(2, 3, 2, 64), 4, &[5; 100]),
            codeword_in(Layout::Systematic, Params::new(4, 8, 8, 64), 5, b"hi"),
            codeword_in(Layout::Systematic, Params::new(1, 0, 1, 2), 6, b""),
        ]
    })
}

fn record_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| codewords().iter().map(encode_record).collect())
}

fn documents() -> Vec<DocRecord> {
    let keys: Vec<BlockKey> = record_samples().iter().map(|b| BlockKey::of(b)).collect();
    let signer = crypto::Identity::from_secrets([1; 32], [2; 32]);
    vec![
        DocRecord {
            params: Params::new(1, 1, 2, 16),
            len: 5,
            content_hash: [0; 32],
            codewords: vec![keys[0]],
            writer: Some([5; 32]),
            created_us: Some(77),
            signed: None,
        },
        DocRecord {
            params: Params::new(2, 3, 4, 64),
            len: 300,
            content_hash: *blake3::hash(b"doc").as_bytes(),
            codewords: keys.clone(),
            writer: None,
            created_us: None,
            signed: None,
        },
        DocRecord {
            params: Params::new(2, 3, 4, 64),
            len: 100,
            content_hash: *blake3::hash(b"signed").as_bytes(),
            codewords: keys.clone(),
            writer: Some(signer.user_id().0),
            created_us: Some(1_000),
            signed: Some(peerstore_node::entangled::format::SignedWrite {
                auth: crypto::WriteAuth::sign(
                    &signer,
                    blake3::hash(b"signed").as_bytes(),
                    Some(3),
                    1_000,
                    4,
                ),
                session: Some(3),
            }),
        },
        DocRecord {
            params: Params::DEFAULT,
            len: MAX_BLOCK_SIZE as u64,
            content_hash: [0xee; 32],
            codewords: vec![keys[1]; 8],
            writer: None,
            created_us: None,
            signed: None,
        },
    ]
}

fn document_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| documents().iter().map(DocRecord::encode).collect())
}

fn refs_entries() -> Vec<RefsEntry> {
    vec![
        RefsEntry::default(),
        RefsEntry {
            block: BlockKey([1; 32]),
            own: Some(BlockKey([3; 32])),
            created_us: Some(1_700_000_000_000_000),
            referrers: (0u8..5).map(|i| BlockKey([i; 32])).collect(),
        },
        RefsEntry {
            block: BlockKey([2; 32]),
            own: None,
            created_us: Some(u64::MAX),
            referrers: [BlockKey([9; 32])].into_iter().collect(),
        },
    ]
}

fn refs_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| refs_entries().iter().map(RefsEntry::encode).collect())
}

fn alice() -> Identity {
    Identity::from_secrets([0x11; 32], [0x22; 32])
}

fn roots() -> &'static [RootRecord] {
    static R: OnceLock<Vec<RootRecord>> = OnceLock::new();
    R.get_or_init(|| {
        let a = alice();
        vec![
            RootRecord::sign(&a, 1, vec![]).unwrap(),
            RootRecord::sign(&a, 300, vec![5; 40]).unwrap(),
            RootRecord::sign(&a, u64::MAX, (0..=255).cycle().take(300).collect()).unwrap(),
        ]
    })
}

fn root_samples() -> &'static [Vec<u8>] {
    static S: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    S.get_or_init(|| roots().iter().map(|r| r.encode().unwrap()).collect())
}

// ---------------------------------------------------------------------------------------------
// Checks

fn check_codeword_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(r) = decode_record(bytes) {
        prop_assert!(
            r.validate().is_ok(),
            "decoded record does not validate: {:?}",
            r
        );
        prop_assert!(r.params.validate_for(r.layout).is_ok());
        prop_assert_eq!(r.pointers.len(), r.params.t());
        prop_assert_eq!(r.stored_keys.len(), r.layout.stored(&r.params));
        prop_assert_eq!(r.payload_hashes.len(), r.layout.stored(&r.params));
        prop_assert!(r.len <= r.params.capacity());
        prop_assert_eq!(decode_record(&encode_record(&r)), Some(r));
    }
    Ok(())
}

fn check_document_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(d) = DocRecord::decode(bytes) {
        prop_assert!(
            d.len <= MAX_BLOCK_SIZE as u64,
            "document record of {} bytes decoded",
            d.len
        );
        prop_assert!(d.params.validate().is_ok());
        prop_assert!(!d.codewords.is_empty());
        let capacity = (d.codewords.len() as u64)
            .saturating_mul(d.params.s() as u64)
            .saturating_mul(d.params.block() as u64);
        prop_assert!(d.len <= capacity);
        prop_assert_eq!(DocRecord::decode(&d.encode()), Some(d));
    }
    Ok(())
}

fn check_refs_entry(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Some(e) = RefsEntry::decode(bytes) {
        prop_assert_eq!(RefsEntry::decode(&e.encode()), Some(e));
    }
    Ok(())
}

fn check_root_record(bytes: &[u8]) -> Result<(), TestCaseError> {
    match RootRecord::decode(bytes) {
        Ok(r) => {
            prop_assert_eq!(r.version, ROOT_RECORD_VERSION);
            prop_assert!(r.payload.len() <= MAX_ROOT_PAYLOAD);
            prop_assert!(bytes.len() <= MAX_ROOT_RECORD_LEN);
            let again = r.encode();
            prop_assert!(again.is_ok(), "decoded root does not encode: {:?}", again);
            prop_assert_eq!(RootRecord::decode(&again.unwrap()), Ok(r.clone()));
            // Only the records really signed verify.
            if r.verify().is_ok() {
                prop_assert!(roots().contains(&r), "forged root verifies: {:?}", r);
            }
        }
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            match e {
                RootError::TooLarge { len, max } => {
                    prop_assert_eq!(max, MAX_ROOT_RECORD_LEN);
                    prop_assert!(len > max);
                }
                RootError::PayloadTooLarge { len, max } => {
                    prop_assert_eq!(max, MAX_ROOT_PAYLOAD);
                    prop_assert!(len > max);
                }
                RootError::UnsupportedVersion(v) => prop_assert_ne!(v, ROOT_RECORD_VERSION),
                RootError::Malformed(m) => prop_assert!(!m.is_empty()),
                other => prop_assert!(false, "decode gave a verification error: {:?}", other),
            }
        }
    }
    Ok(())
}

/// Every decoder on the same bytes (all of them read what a peer or the disk hands over).
fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    check_codeword_record(bytes)?;
    check_document_record(bytes)?;
    check_refs_entry(bytes)?;
    check_root_record(bytes)?;
    Ok(())
}

fn with_prefix(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut b = prefix.to_vec();
    b.extend_from_slice(rest);
    b
}

// ---------------------------------------------------------------------------------------------
// Strategies for records with arbitrary field values

fn params() -> impl Strategy<Value = Params> {
    prop_oneof![
        // Mostly valid: small codes, even block sizes.
        3 => (1u16..5, 0u16..5, 0u16..4, 1u32..64).prop_map(|(s, t, e, b)| Params::new(s, t, s + e, b * 2)),
        1 => Just(Params::DEFAULT),
        // Anything at all.
        2 => (any::<u16>(), any::<u16>(), any::<u16>(), any::<u32>())
            .prop_map(|(s, t, p, b)| Params::new(s, t, p, b)),
    ]
}

fn bkey() -> impl Strategy<Value = BlockKey> {
    prop_oneof![
        3 => (0u8..4).prop_map(|i| BlockKey([i; 32])),
        1 => any::<[u8; 32]>().prop_map(BlockKey),
    ]
}

fn ekey() -> impl Strategy<Value = entangle::BlockKey> {
    bkey().prop_map(|k| entangle::BlockKey(k.0))
}

fn arbitrary_codeword() -> impl Strategy<Value = CodewordRecord> {
    (
        params(),
        any::<[u8; 32]>(),
        vec(ekey(), 0..8),
        vec(ekey(), 0..8),
        vec(any::<[u8; 32]>(), 0..8),
        interesting_u64(),
    )
        .prop_map(
            |(params, id, pointers, parity_keys, payload_hashes, len)| CodewordRecord {
                id: CodewordId(id),
                params,
                pointers,
                parity_keys,
                payload_hashes,
                len,
                content_hash: [0; 32],
            },
        )
}

fn arbitrary_document() -> impl Strategy<Value = DocRecord> {
    (params(), interesting_u64(), vec(bkey(), 0..40)).prop_map(|(params, len, codewords)| {
        DocRecord {
            params,
            len,
            content_hash: [1; 32],
            codewords,
            writer: None,
            created_us: None,
            signed: None,
        }
    })
}

fn arbitrary_refs() -> impl Strategy<Value = RefsEntry> {
    (
        bkey(),
        prop::option::of(bkey()),
        prop::option::of(interesting_u64()),
        prop::collection::btree_set(bkey(), 0..12),
    )
        .prop_map(|(block, own, created_us, referrers)| RefsEntry {
            block,
            own,
            created_us,
            referrers,
        })
}

/// A root record's fields, postcard-encoded without the checks of `RootRecord::encode`.
fn arbitrary_root_bytes() -> impl Strategy<Value = (RootRecord, Vec<u8>)> {
    (
        prop_oneof![3 => Just(ROOT_RECORD_VERSION), 1 => any::<u8>()],
        any::<[u8; 32]>(),
        interesting_u64(),
        prop_oneof![
            4 => vec(any::<u8>(), 0..64),
            1 => Just(vec![0u8; MAX_ROOT_PAYLOAD]),
            1 => Just(vec![0u8; MAX_ROOT_PAYLOAD + 1]),
        ],
        any::<[u8; 32]>(),
    )
        .prop_map(|(version, user, seq, payload, sig)| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&sig);
            signature[32..].copy_from_slice(&sig);
            let r = RootRecord {
                version,
                user: UserId(user),
                seq,
                payload,
                signature,
            };
            let bytes = postcard::to_stdvec(&r).expect("plain data encodes");
            (r, bytes)
        })
}

// ---------------------------------------------------------------------------------------------
// Deterministic checks

#[test]
fn samples_round_trip() {
    for (r, b) in codewords().iter().zip(record_samples()) {
        assert_eq!(decode_record(b).as_ref(), Some(r));
    }
    for (d, b) in documents().iter().zip(document_samples()) {
        assert_eq!(DocRecord::decode(b).as_ref(), Some(d));
    }
    for (e, b) in refs_entries().iter().zip(refs_samples()) {
        assert_eq!(RefsEntry::decode(b).as_ref(), Some(e));
    }
    for (r, b) in roots().iter().zip(root_samples()) {
        assert_eq!(RootRecord::decode(b).as_ref(), Ok(r));
        r.verify().unwrap();
    }
}

/// The crash this guards against: a document record claiming a huge length made the read path
/// reserve that many bytes (`Vec::with_capacity(len)`) before fetching anything.
#[test]
fn documents_with_huge_lengths_do_not_decode() {
    let base = documents()[1].clone();
    for len in [
        1u64 << 48,
        u64::MAX,
        usize::MAX as u64,
        isize::MAX as u64 + 1,
        MAX_BLOCK_SIZE as u64 + 1,
        1 << 32,
    ] {
        let d = DocRecord {
            len,
            ..base.clone()
        };
        assert_eq!(DocRecord::decode(&d.encode()), None, "len {len}");
        // Also with enough codewords that the capacity check alone would pass.
        let d = DocRecord {
            len,
            params: Params::new(2, 0, 2, 4 << 20),
            codewords: vec![BlockKey([1; 32]); 4096],
            ..base.clone()
        };
        assert_eq!(
            DocRecord::decode(&d.encode()),
            None,
            "len {len}, big capacity"
        );
    }
    let at_bound = DocRecord {
        len: MAX_BLOCK_SIZE as u64,
        ..documents()[3].clone()
    };
    assert_eq!(
        DocRecord::decode(&at_bound.encode()),
        Some(at_bound.clone())
    );
    // An empty codeword list and a capacity below the length are refused too.
    assert_eq!(
        DocRecord::decode(
            &DocRecord {
                codewords: vec![],
                ..at_bound.clone()
            }
            .encode()
        ),
        None
    );
    assert_eq!(
        DocRecord::decode(
            &DocRecord {
                codewords: vec![BlockKey([1; 32])],
                ..at_bound
            }
            .encode()
        ),
        None
    );
}

#[test]
fn magic_alone_and_empty_inputs() {
    for b in [
        &[][..],
        RECORD_MAGIC.as_slice(),
        DOCUMENT_MAGIC.as_slice(),
        &RECORD_MAGIC[..4],
        &DOCUMENT_MAGIC[..4],
    ] {
        assert!(decode_record(b).is_none());
        assert!(DocRecord::decode(b).is_none());
        assert!(RootRecord::decode(b).is_err());
    }
    assert!(RefsEntry::decode(&[]).is_none());
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes, bare or behind either record magic, through every decoder.
    #[test]
    fn arbitrary_bytes(
        prefix in prop::sample::select(vec![&b""[..], &RECORD_MAGIC[..], &DOCUMENT_MAGIC[..], &DOCUMENT_MAGIC_V2[..], &RECORD_MAGIC_SYSTEMATIC[..]]),
        rest in vec(any::<u8>(), 0..600),
    ) {
        check_all(&with_prefix(prefix, &rest))?;
    }

    #[test]
    fn mutated_codeword_records(pick in any::<Index>(), muts in mutations()) {
        check_all(&mutated(record_samples(), &pick, &muts))?;
    }

    #[test]
    fn mutated_document_records(pick in any::<Index>(), muts in mutations()) {
        check_all(&mutated(document_samples(), &pick, &muts))?;
    }

    #[test]
    fn mutated_refs_entries(pick in any::<Index>(), muts in mutations()) {
        check_all(&mutated(refs_samples(), &pick, &muts))?;
    }

    #[test]
    fn mutated_root_records(pick in any::<Index>(), muts in mutations()) {
        check_all(&mutated(root_samples(), &pick, &muts))?;
    }

    /// Codeword records with arbitrary fields decode exactly when they validate.
    #[test]
    fn arbitrary_codeword_records(r in arbitrary_codeword()) {
        let bytes = encode_record(&r);
        let valid = r.validate().is_ok();
        let decoded = decode_record(&bytes);
        prop_assert_eq!(decoded.is_some(), valid, "{:?}", r);
        check_all(&bytes)?;
    }

    /// Document records with arbitrary fields (lengths up to 2^64 - 1) decode only within the
    /// document bound and their codewords' capacity.
    #[test]
    fn arbitrary_document_records(d in arbitrary_document()) {
        let bytes = d.encode();
        let capacity = (d.codewords.len() as u64)
            .saturating_mul(d.params.s() as u64)
            .saturating_mul(d.params.block() as u64);
        let expected = d.params.validate().is_ok()
            && !d.codewords.is_empty()
            && d.len <= MAX_BLOCK_SIZE as u64
            && d.len <= capacity;
        prop_assert_eq!(DocRecord::decode(&bytes), expected.then(|| d.clone()));
        check_all(&bytes)?;
    }

    #[test]
    fn arbitrary_refs_entries(e in arbitrary_refs()) {
        let bytes = e.encode();
        prop_assert_eq!(RefsEntry::decode(&bytes), Some(e));
        check_all(&bytes)?;
    }

    /// Root records with arbitrary fields decode exactly when version and sizes are right, and
    /// never verify (nobody signed them).
    #[test]
    fn arbitrary_root_records((r, bytes) in arbitrary_root_bytes()) {
        let expected_ok = r.version == ROOT_RECORD_VERSION
            && r.payload.len() <= MAX_ROOT_PAYLOAD
            && bytes.len() <= MAX_ROOT_RECORD_LEN;
        let got = RootRecord::decode(&bytes);
        prop_assert_eq!(got.is_ok(), expected_ok, "{:?}", got.as_ref().err());
        if let Ok(d) = got {
            prop_assert_eq!(&d, &r);
            prop_assert!(d.verify().is_err());
        }
        check_all(&bytes)?;
    }
}
