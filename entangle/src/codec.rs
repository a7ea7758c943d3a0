//! Encoding and decoding one codeword, and documents of several codewords.

use std::cell::RefCell;
use std::collections::BTreeMap;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::block::{header_len, parse_verified};
use crate::key::{Anchors, BlockKey, CodewordId};
use crate::params::Params;
use crate::record::CodewordRecord;
use crate::source::SymbolSource;
use crate::Error;

/// A stored block: its key and its exact stored bytes.
pub type StoredBlock = (BlockKey, Vec<u8>);

/// One encoded codeword: its record and its `p` parity blocks, in index order.
pub type Encoded = (CodewordRecord, Vec<StoredBlock>);

/// Extracts and checks the payload of a pointer's stored bytes: they must hash to `key` and be
/// a well-formed parity block of payload size `B`.
pub fn pointer_payload<'a>(
    params: &Params,
    key: &BlockKey,
    stored: &'a [u8],
) -> Result<&'a [u8], Error> {
    if !key.verifies(stored) {
        return Err(Error::BadPointer {
            key: *key,
            reason: "bytes do not hash to the key".into(),
        });
    }
    let r = parse_verified(stored).map_err(|e| Error::BadPointer {
        key: *key,
        reason: e.to_string(),
    })?;
    if r.payload.len() != params.block() {
        return Err(Error::BadPointer {
            key: *key,
            reason: format!(
                "payload is {} bytes, block size is {}",
                r.payload.len(),
                params.block()
            ),
        });
    }
    Ok(r.payload)
}

thread_local! {
    // The Reed-Solomon work space is a few dozen shards; allocating (and page-faulting) it on
    // every call costs more than the coding itself at B = 1 MiB. Each thread keeps one encoder
    // and one decoder and resets them, which reuses the space.
    static ENCODER: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
}

/// Computes the `p` recovery shards of the `s + t` original shards.
pub(crate) fn rs_encode(params: &Params, originals: &[&[u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let (n, p, b) = (params.needed(), params.p(), params.block());
    let run = |enc: &mut ReedSolomonEncoder| -> Result<Vec<Vec<u8>>, Error> {
        for o in originals {
            enc.add_original_shard(o)?;
        }
        let res = enc.encode()?;
        Ok(res.recovery_iter().map(<[u8]>::to_vec).collect())
    };
    ENCODER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            if let Some(enc) = slot.as_mut() {
                enc.reset(n, p, b)?;
                return run(enc);
            }
            let mut enc = ReedSolomonEncoder::new(n, p, b)?;
            let out = run(&mut enc);
            *slot = Some(enc);
            out
        }
        // Not reachable (no re-entrancy), but never panic over it.
        Err(_) => run(&mut ReedSolomonEncoder::new(n, p, b)?),
    })
}

/// Restores every missing original shard from the given ones (`None` = missing).
pub(crate) fn rs_restore(
    params: &Params,
    originals: &[Option<&[u8]>],
    recovery: &[Option<&[u8]>],
) -> Result<BTreeMap<usize, Vec<u8>>, Error> {
    if originals.iter().all(Option::is_some) {
        return Ok(BTreeMap::new());
    }
    let (n, p, b) = (params.needed(), params.p(), params.block());
    let run = |dec: &mut ReedSolomonDecoder| -> Result<BTreeMap<usize, Vec<u8>>, Error> {
        for (i, o) in originals.iter().enumerate() {
            if let Some(o) = o {
                dec.add_original_shard(i, o)?;
            }
        }
        for (j, r) in recovery.iter().enumerate() {
            if let Some(r) = r {
                dec.add_recovery_shard(j, r)?;
            }
        }
        let res = dec.decode()?;
        let mut out = BTreeMap::new();
        for (i, o) in originals.iter().enumerate() {
            if o.is_none() {
                let r = res
                    .restored_original(i)
                    .ok_or_else(|| Error::ReedSolomon(format!("original {i} was not restored")))?;
                out.insert(i, r.to_vec());
            }
        }
        Ok(out)
    };
    DECODER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            if let Some(dec) = slot.as_mut() {
                dec.reset(n, p, b)?;
                return run(dec);
            }
            let mut dec = ReedSolomonDecoder::new(n, p, b)?;
            let out = run(&mut dec);
            *slot = Some(dec);
            out
        }
        Err(_) => run(&mut ReedSolomonDecoder::new(n, p, b)?),
    })
}

/// Encodes one codeword.
///
/// `document` is at most `s * B` bytes (it is zero-padded to `s` blocks; its true length is
/// recorded). `pointers` are exactly `t` distinct `(key, stored bytes)` pairs: each real
/// pointer's stored bytes are verified against its key and its payload is used as input symbol
/// `s + i`; for an anchor key (see [`BlockKey::anchor`]) the bytes are ignored (pass `&[]`).
///
/// Returns the codeword's record and its `p` stored parity blocks in index order.
pub fn encode(
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[(BlockKey, &[u8])],
) -> Result<Encoded, Error> {
    params.validate()?;
    let capacity = params.capacity();
    let len = document.len() as u64;
    if len > capacity {
        return Err(Error::DocumentTooLarge { len, capacity });
    }
    if pointers.len() != params.t() {
        return Err(Error::WrongPointerCount {
            expected: params.t(),
            got: pointers.len(),
        });
    }
    let mut keys: Vec<BlockKey> = pointers.iter().map(|(k, _)| *k).collect();
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::DuplicatePointer(w[0]));
    }
    let b = params.block();
    let anchors = Anchors::new(params.block_size, params.t());
    let zeros = vec![0u8; b];
    let mut padded = vec![0u8; params.s() * b];
    padded[..document.len()].copy_from_slice(document);

    let mut originals: Vec<&[u8]> = padded.chunks_exact(b).collect();
    for (key, stored) in pointers {
        if anchors.contains(key) {
            originals.push(&zeros);
        } else {
            originals.push(pointer_payload(&params, key, stored)?);
        }
    }
    let parities = rs_encode(&params, &originals)?;

    let mut record = CodewordRecord {
        id,
        params,
        pointers: pointers.iter().map(|(k, _)| *k).collect(),
        parity_keys: Vec::with_capacity(params.p()),
        payload_hashes: parities
            .iter()
            .map(|p| *blake3::hash(p).as_bytes())
            .collect(),
        len,
        content_hash: *blake3::hash(document).as_bytes(),
    };
    let mut blocks = Vec::with_capacity(params.p());
    for (j, payload) in parities.iter().enumerate() {
        // j < p <= u16::MAX: validated above.
        let stored = record.header(j as u16).stored_bytes(payload);
        let key = BlockKey::of(&stored);
        record.parity_keys.push(key);
        blocks.push((key, stored));
    }
    Ok((record, blocks))
}

/// A verified symbol: stored bytes (or an anchor's zeros) and where the payload starts.
pub(crate) struct Symbol {
    bytes: Vec<u8>,
    start: usize,
}

impl Symbol {
    pub(crate) fn payload(&self, b: usize) -> &[u8] {
        &self.bytes[self.start..self.start + b]
    }
}

/// The verified symbols gathered for one codeword.
pub(crate) struct Gathered {
    /// Input symbols `0..s+t` (sources are always `None`).
    pub originals: Vec<Option<Symbol>>,
    /// Parity symbols `0..p`.
    pub recovery: Vec<Option<Symbol>>,
    /// Verified symbols held.
    pub have: usize,
    /// Keys whose bytes were fetched but failed verification.
    pub rejected: Vec<BlockKey>,
}

/// Fetches verified symbols of `record` through `fetch`, pointers first (they are input
/// symbols, which makes the decode cheaper), then parities, stopping at `s + t`.
pub(crate) fn gather(
    record: &CodewordRecord,
    anchors: &Anchors,
    mut fetch: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
) -> Gathered {
    let params = &record.params;
    let (s, b, need) = (params.s(), params.block(), params.needed());
    let mut g = Gathered {
        originals: (0..need).map(|_| None).collect(),
        recovery: (0..params.p()).map(|_| None).collect(),
        have: 0,
        rejected: Vec::new(),
    };
    // Anchors cost nothing: take them first.
    for (i, key) in record.pointers.iter().enumerate() {
        if anchors.contains(key) {
            g.originals[s + i] = Some(Symbol {
                bytes: vec![0u8; b],
                start: 0,
            });
            g.have += 1;
        }
    }
    for (i, key) in record.pointers.iter().enumerate() {
        if g.have >= need {
            return g;
        }
        if g.originals[s + i].is_some() {
            continue;
        }
        let Some(bytes) = fetch(key) else { continue };
        match pointer_payload(params, key, &bytes) {
            Ok(payload) => {
                let start = bytes.len() - payload.len();
                g.originals[s + i] = Some(Symbol { bytes, start });
                g.have += 1;
            }
            Err(_) => g.rejected.push(*key),
        }
    }
    let hlen = header_len(params.t(), params.p());
    for (j, key) in record.parity_keys.iter().enumerate() {
        if g.have >= need {
            return g;
        }
        let Some(bytes) = fetch(key) else { continue };
        // The key is the record's: bytes that hash to it are exactly what the encoder stored.
        if bytes.len() == hlen + b && key.verifies(&bytes) {
            g.recovery[j] = Some(Symbol { bytes, start: hlen });
            g.have += 1;
        } else {
            g.rejected.push(*key);
        }
    }
    g
}

/// The original input symbols that were gathered (`None` where missing) and the missing ones
/// restored by Reed-Solomon. An explicit [`Error::Undecodable`] with fewer than `s + t` symbols.
type Restored<'g> = (Vec<Option<&'g [u8]>>, BTreeMap<usize, Vec<u8>>);

fn restore_gathered<'g>(record: &CodewordRecord, g: &'g Gathered) -> Result<Restored<'g>, Error> {
    let params = &record.params;
    let b = params.block();
    if g.have < params.needed() {
        return Err(Error::Undecodable {
            id: record.id,
            have: g.have,
            need: params.needed(),
        });
    }
    let payloads = |v: &'g [Option<Symbol>]| -> Vec<Option<&'g [u8]>> {
        v.iter().map(|o| o.as_ref().map(|s| s.payload(b))).collect()
    };
    let originals = payloads(&g.originals);
    let recovery = payloads(&g.recovery);
    let restored = rs_restore(params, &originals, &recovery)?;
    Ok((originals, restored))
}

/// Restores all `s + t` input symbols of a codeword from gathered symbols.
pub(crate) fn restore_inputs(record: &CodewordRecord, g: &Gathered) -> Result<Vec<Vec<u8>>, Error> {
    let params = &record.params;
    let (originals, mut restored) = restore_gathered(record, g)?;
    let mut out = Vec::with_capacity(params.needed());
    for (i, o) in originals.iter().enumerate() {
        match (o, restored.remove(&i)) {
            (Some(o), _) => out.push(o.to_vec()),
            (None, Some(r)) => out.push(r),
            (None, None) => {
                return Err(Error::ReedSolomon(format!("original {i} missing")));
            }
        }
    }
    Ok(out)
}

/// Decodes one codeword's document bytes from `source`.
///
/// Every symbol is verified against the record (pointers by key, parities by their recorded
/// key); symbols that fail are treated as missing. With fewer than `s + t` verified symbols
/// the result is [`Error::Undecodable`], never wrong bytes. The output is truncated to the
/// recorded length and checked against the recorded content hash.
pub fn decode<S: SymbolSource + ?Sized>(
    record: &CodewordRecord,
    source: &S,
) -> Result<Vec<u8>, Error> {
    record.validate()?;
    let params = &record.params;
    let anchors = Anchors::new(params.block_size, params.t());
    let g = gather(record, &anchors, |k| source.get(k));
    decode_gathered(record, &g)
}

/// Decodes the document bytes from already gathered symbols.
pub(crate) fn decode_gathered(record: &CodewordRecord, g: &Gathered) -> Result<Vec<u8>, Error> {
    let params = &record.params;
    let b = params.block();
    let (_, restored) = restore_gathered(record, g)?;
    // len <= s * B was checked by validate(), so this fits in usize on any target that could
    // hold the blocks.
    let len = usize::try_from(record.len)
        .map_err(|_| Error::InvalidParams("document length exceeds usize".into()))?;
    let mut doc = Vec::with_capacity(params.s() * b);
    for i in 0..params.s() {
        let block = restored
            .get(&i)
            .ok_or_else(|| Error::ReedSolomon(format!("source {i} was not restored")))?;
        doc.extend_from_slice(block);
    }
    doc.truncate(len);
    if *blake3::hash(&doc).as_bytes() != record.content_hash {
        return Err(Error::ContentMismatch(record.id));
    }
    Ok(doc)
}

/// Splits `document` into codewords of at most `s * B` bytes and encodes each, in order.
///
/// An empty document is one codeword of length 0. Codeword `k` gets the id
/// `CodewordId::derive(document_id, k)`. Its pointers come from `pointers(k, done)`, where `done`
/// holds the codewords already encoded for this document (so a later codeword may point at an
/// earlier one's parities); it must return `t` `(key, stored bytes)` pairs as for [`encode`].
pub fn encode_document<F>(
    params: Params,
    document_id: &[u8; 32],
    document: &[u8],
    mut pointers: F,
) -> Result<Vec<Encoded>, Error>
where
    F: FnMut(u64, &[Encoded]) -> Result<Vec<StoredBlock>, Error>,
{
    params.validate()?;
    let cap = params.capacity() as usize;
    let chunks: Vec<&[u8]> = if document.is_empty() {
        vec![document]
    } else {
        document.chunks(cap).collect()
    };
    let mut done: Vec<Encoded> = Vec::with_capacity(chunks.len());
    for (k, chunk) in chunks.into_iter().enumerate() {
        let k = k as u64;
        let ptrs = pointers(k, &done)?;
        let refs: Vec<(BlockKey, &[u8])> = ptrs.iter().map(|(k, b)| (*k, b.as_slice())).collect();
        let encoded = encode(params, CodewordId::derive(document_id, k), chunk, &refs)?;
        done.push(encoded);
    }
    Ok(done)
}

/// Decodes a document made of `records` (in order, as [`encode_document`] returned them).
pub fn decode_document<S: SymbolSource + ?Sized>(
    records: &[CodewordRecord],
    source: &S,
) -> Result<Vec<u8>, Error> {
    if records.is_empty() {
        return Err(Error::InconsistentDocument("no codewords".into()));
    }
    let mut out = Vec::new();
    for (k, r) in records.iter().enumerate() {
        if k + 1 < records.len() && r.len != r.params.capacity() {
            return Err(Error::InconsistentDocument(format!(
                "codeword {k} of {} is not full",
                records.len()
            )));
        }
        out.extend_from_slice(&decode(r, source)?);
    }
    Ok(out)
}
