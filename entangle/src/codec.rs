//! Encoding and decoding one codeword, and documents of several codewords.
//!
//! # Where the time goes
//! A codeword's work is BLAKE3 hashing and Reed-Solomon coding. The format fixes the hashing:
//! per `s B` bytes of document an encode hashes the document, each parity payload (its hash is
//! in every header) and each stored block (its key), `(s + 2p) B` bytes, plus each pointer's
//! stored bytes (`t B`) unless the caller passes [pre-verified](Pointer) pointers; a decode
//! hashes the `s + t` symbols it fetches and the document. At (4,8,12) that is 7 to 9 bytes
//! hashed per byte of document, most of an encode's time on one core.
//!
//! Nothing else touches the payloads more than once: source blocks are read from the
//! document slice and pointer payloads from their stored bytes where they lie (only a short
//! last block is zero-padded, one column segment at a time); the Reed-Solomon step writes each
//! parity payload straight into its stored block behind room for the header; the payload is
//! hashed, for its own hash and for the parts of the block's key that do not cover the header
//! (subtrees of the key's BLAKE3 tree), in one pass; then the header is written in place and
//! the key finished from its first chunk and a few merges. Each stored block is one
//! allocation, written once.
//!
//! Reed-Solomon runs over column segments of the shards, sized so that a segment's working
//! space stays in a core's L2 cache, with work space reused from a small pool. Decoding
//! computes the erasure polynomial once per codeword and runs reed-solomon-simd's engine over
//! the segments; encoding calls reed-solomon-simd's encoder per segment. Both compute exactly
//! what one call over whole shards computes (the code works column by column): the stored
//! bytes do not depend on segments or threads.
//!
//! # Cores
//! A codeword large enough ([`PARALLEL_MIN_BYTES`] of work) is split over the machine's cores
//! ([`Parallelism::AUTO`], the default): its hashes and Reed-Solomon segments are independent
//! jobs whose results go to fixed places, so the output is the same for any number of
//! threads. [`encode_document`] cannot run codewords side by side (a codeword's pointers may be
//! the parities of the one before), so the split is within each codeword.

use std::sync::{Mutex, OnceLock, PoisonError};

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode,
};
use reed_solomon_simd::engine::utils::xor_within;
use reed_solomon_simd::engine::{DefaultEngine, Engine, ShardsRefMut, GF_MODULUS, GF_ORDER};
use reed_solomon_simd::rate::{HighRate, Rate};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::block::{header_len, verified_payload, write_header, HeaderFields};
use crate::key::{Anchors, BlockKey, CodewordId};
use crate::params::Params;
use crate::record::CodewordRecord;
use crate::source::SymbolSource;
use crate::Error;

/// A stored block: its key and its exact stored bytes.
pub type StoredBlock = (BlockKey, Vec<u8>);

/// One encoded codeword: its record and its `p` parity blocks, in index order.
pub type Encoded = (CodewordRecord, Vec<StoredBlock>);

// ---------------------------------------------------------------------------------------------
// Parallelism

/// A codeword needs about this many bytes of hashing and coding before [`Parallelism::AUTO`]
/// splits it over cores (below it, starting threads costs more than it saves).
pub const PARALLEL_MIN_BYTES: usize = 2 << 20;

/// How many threads one codec call may use. The output never depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Parallelism(usize);

impl Parallelism {
    /// One core: the calling thread does everything.
    pub const SINGLE: Parallelism = Parallelism(1);
    /// All cores of the machine for a codeword with at least [`PARALLEL_MIN_BYTES`] of work,
    /// the calling thread alone below that. The default.
    pub const AUTO: Parallelism = Parallelism(0);

    /// At most `n` threads (the calling one included) whatever the codeword's size; `0` and `1`
    /// are [`Parallelism::SINGLE`].
    #[must_use]
    pub const fn threads(n: usize) -> Self {
        Parallelism(if n == 0 { 1 } else { n })
    }

    /// Threads for a call with `work_bytes` of hashing and coding.
    fn resolve(self, work_bytes: usize) -> usize {
        match self.0 {
            0 if work_bytes >= PARALLEL_MIN_BYTES => available_cores(),
            0 => 1,
            n => n,
        }
    }
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::AUTO
    }
}

fn available_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Runs `f` on every job with up to `threads` threads (the calling one included), taking jobs
/// in order from a shared queue. Each job writes its own result; of several failed jobs the
/// error of the first one (by position) is returned, so the outcome never depends on timing.
fn run_jobs<J: Send>(
    threads: usize,
    jobs: Vec<J>,
    f: impl Fn(J) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let threads = threads.min(jobs.len());
    if threads <= 1 {
        return jobs.into_iter().try_for_each(f);
    }
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let failed: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let worker = || loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
        let Some((i, job)) = next else { break };
        if let Err(e) = f(job) {
            let mut slot = failed.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_none_or(|(first, _)| i < *first) {
                *slot = Some((i, e));
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            // If no thread can be started, the others (at least this one) do its share.
            let _ = std::thread::Builder::new().spawn_scoped(scope, worker);
        }
        worker();
    });
    match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs: hashing and Reed-Solomon column segments

/// An input shard: bytes (zero-padded to `B` if shorter) or all zeros (an anchor).
#[derive(Debug, Clone, Copy)]
enum Input<'a> {
    Bytes(&'a [u8]),
    Zero,
}

impl<'a> Input<'a> {
    /// The bytes of column segment `off..off + len` that exist; the rest of it is zero.
    fn segment(self, off: usize, len: usize) -> &'a [u8] {
        match self {
            Input::Bytes(b) => &b[off.min(b.len())..(off + len).min(b.len())],
            Input::Zero => &[],
        }
    }
}

/// What the Reed-Solomon jobs of one call share.
struct Coding<'a> {
    /// Original shards (`s + t`); `None` = missing (decoding only).
    originals: &'a [Option<Input<'a>>],
    /// Recovery shards (`p`); decoding only.
    recovery: &'a [Option<&'a [u8]>],
    p: usize,
    /// The evaluated erasure polynomial (`GF_ORDER` entries); decoding only.
    erasures: &'a [u16],
}

enum Job<'a> {
    /// BLAKE3 of the bytes.
    Hash(&'a [u8], &'a mut [u8; 32]),
    /// Chaining value of the BLAKE3 subtree made of the bytes at this input offset.
    Subtree(u64, &'a [u8], &'a mut [u8; 32]),
    /// A stored block with `hlen` bytes of header room: BLAKE3 of its payload, and the parts
    /// of the BLAKE3 of the whole block that do not depend on the header ([`key_parts`]).
    Parity {
        block: &'a [u8],
        hlen: usize,
        payload_hash: &'a mut [u8; 32],
        key_parts: &'a mut Vec<[u8; 32]>,
    },
    /// Encodes the column segment at this offset into the `p` recovery segments.
    Encode(usize, Vec<&'a mut [u8]>),
    /// Restores the column segment at this offset of the listed originals.
    Decode(usize, Vec<(usize, &'a mut [u8])>),
}

fn run(threads: usize, coding: Option<&Coding<'_>>, jobs: Vec<Job<'_>>) -> Result<(), Error> {
    run_jobs(threads, jobs, |job| match job {
        Job::Hash(data, out) => {
            *out = *blake3::hash(data).as_bytes();
            Ok(())
        }
        Job::Subtree(offset, data, out) => {
            let mut h = blake3::Hasher::new();
            h.set_input_offset(offset);
            h.update(data);
            *out = h.finalize_non_root();
            Ok(())
        }
        Job::Parity {
            block,
            hlen,
            payload_hash,
            key_parts: parts,
        } => {
            *payload_hash = *blake3::hash(&block[hlen..]).as_bytes();
            key_parts(block, hlen, parts);
            Ok(())
        }
        Job::Encode(off, mut outs) => {
            let c = coding.ok_or_else(|| Error::ReedSolomon("encode job without input".into()))?;
            let Some(len) = outs.first().map(|o| o.len()) else {
                return Ok(());
            };
            with_scratch(|sc| {
                encode_segment(sc, c, off, len, |j, r| {
                    if let Some(out) = outs.get_mut(j) {
                        out.copy_from_slice(r);
                    }
                })
            })
        }
        Job::Decode(off, mut outs) => {
            let c = coding.ok_or_else(|| Error::ReedSolomon("decode job without input".into()))?;
            with_scratch(|sc| decode_segment(sc, c, off, &mut outs))
        }
    })
}

/// Reusable Reed-Solomon work space. Allocating (and page-faulting) it on every call costs
/// more than the coding itself, so calls take one from a small pool and give it back.
#[derive(Default)]
struct Scratch {
    encoder: Option<ReedSolomonEncoder>,
    engine: Option<DefaultEngine>,
    work: Vec<[u8; 64]>,
    erasures: Vec<u16>,
    pad: Vec<u8>,
}

static SCRATCH: Mutex<Vec<Scratch>> = Mutex::new(Vec::new());
/// At most this many idle work spaces are kept.
const MAX_POOLED: usize = 16;

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let pooled = SCRATCH.lock().unwrap_or_else(PoisonError::into_inner).pop();
    let mut sc = pooled.unwrap_or_default();
    let out = f(&mut sc);
    let mut pool = SCRATCH.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.len() < MAX_POOLED {
        pool.push(sc);
    }
    out
}

/// Bytes of work space one column segment aims at: its shards then stay in a core's L2 cache.
const SEGMENT_WORK_BYTES: usize = 1 << 20;

/// The column segment length for `work_shards` shards of work space and shards of `b` bytes:
/// a multiple of 64 bytes (so that only the last segment holds the shard's tail, as in one
/// call over whole shards), or `b` itself.
fn segment_len(work_shards: usize, b: usize) -> usize {
    let seg = (SEGMENT_WORK_BYTES / work_shards.max(1)).clamp(4096, 64 * 1024) & !63;
    if seg >= b {
        b.max(1)
    } else {
        seg
    }
}

/// Work shards of reed-solomon-simd's encoder for `n` originals and `p` recoveries (about).
fn encode_work_shards(n: usize, p: usize) -> usize {
    n.max(p).next_power_of_two()
}

/// Work shards of the high-rate decoder.
fn decode_work_shards(n: usize, p: usize) -> usize {
    (p.next_power_of_two() + n).next_power_of_two()
}

/// Encode jobs over `seg`-byte column segments of the `p` recovery outputs.
fn encode_jobs<'a>(outs: impl Iterator<Item = &'a mut [u8]>, seg: usize) -> Vec<Job<'a>> {
    let mut per: Vec<Vec<&'a mut [u8]>> = Vec::new();
    for out in outs {
        for (k, piece) in out.chunks_mut(seg).enumerate() {
            if per.len() <= k {
                per.push(Vec::new());
            }
            per[k].push(piece);
        }
    }
    per.into_iter()
        .enumerate()
        .map(|(k, v)| Job::Encode(k * seg, v))
        .collect()
}

/// Decode jobs over `seg`-byte column segments of the wanted originals.
fn decode_jobs(outs: Vec<(usize, &mut [u8])>, seg: usize) -> Vec<Job<'_>> {
    let mut per: Vec<Vec<(usize, &mut [u8])>> = Vec::new();
    for (i, out) in outs {
        for (k, piece) in out.chunks_mut(seg).enumerate() {
            if per.len() <= k {
                per.push(Vec::new());
            }
            per[k].push((i, piece));
        }
    }
    per.into_iter()
        .enumerate()
        .map(|(k, v)| Job::Decode(k * seg, v))
        .collect()
}

/// Encodes column segment `off..off + len` with reed-solomon-simd's encoder (reused from the
/// scratch) and hands recovery segment `j` to `sink(j, bytes)`.
fn encode_segment(
    sc: &mut Scratch,
    c: &Coding<'_>,
    off: usize,
    len: usize,
    mut sink: impl FnMut(usize, &[u8]),
) -> Result<(), Error> {
    let n = c.originals.len();
    match sc.encoder.as_mut() {
        Some(enc) => enc.reset(n, c.p, len)?,
        None => sc.encoder = Some(ReedSolomonEncoder::new(n, c.p, len)?),
    }
    let Some(enc) = sc.encoder.as_mut() else {
        return Err(Error::ReedSolomon("no encoder".into()));
    };
    for o in c.originals {
        let bytes = o.map_or(&[][..], |o| o.segment(off, len));
        if bytes.len() == len {
            enc.add_original_shard(bytes)?;
        } else {
            // A short last source block or an anchor: zero-padded, one segment at a time.
            sc.pad.clear();
            sc.pad.extend_from_slice(bytes);
            sc.pad.resize(len, 0);
            enc.add_original_shard(&sc.pad)?;
        }
    }
    let res = enc.encode()?;
    for (j, r) in res.recovery_iter().enumerate() {
        sink(j, r);
    }
    Ok(())
}

/// Copies `len` shard bytes (`src`, zero-padded) into 64-byte work chunks the way
/// reed-solomon-simd lays them out: whole chunks as they are, a last partial chunk with its
/// low and high halves in the two halves of the chunk.
fn load(dst: &mut [[u8; 64]], src: &[u8], len: usize) {
    let whole = len / 64;
    let tail = len % 64;
    let flat = dst[..whole].as_flattened_mut();
    let n = src.len().min(whole * 64);
    flat[..n].copy_from_slice(&src[..n]);
    flat[n..].fill(0);
    if tail > 0 {
        let mut t = [0u8; 64];
        let rest = &src[n..];
        t[..rest.len()].copy_from_slice(rest);
        let half = tail / 2;
        let c = &mut dst[whole];
        *c = [0; 64];
        c[..half].copy_from_slice(&t[..half]);
        c[32..32 + half].copy_from_slice(&t[half..tail]);
    }
}

/// The inverse of [`load`] for `dst.len()` bytes.
fn store(dst: &mut [u8], src: &[[u8; 64]]) {
    let whole = dst.len() / 64;
    let tail = dst.len() % 64;
    let (body, rest) = dst.split_at_mut(whole * 64);
    body.copy_from_slice(src[..whole].as_flattened());
    if tail > 0 {
        let half = tail / 2;
        rest[..half].copy_from_slice(&src[whole][..half]);
        rest[half..].copy_from_slice(&src[whole][32..32 + half]);
    }
}

fn formal_derivative(work: &mut ShardsRefMut<'_>) {
    for i in 1..work.len() {
        let width = 1 << i.trailing_zeros();
        xor_within(work, i - width, i, width);
    }
}

/// Whether reed-solomon-simd's default rate uses its high-rate code for `n` originals and `p`
/// recoveries (its high- and low-rate codes give different recovery shards, so a decoder must
/// use the encoder's).
fn default_rate_is_high(n: usize, p: usize) -> bool {
    let (np, pp) = (n.next_power_of_two(), p.next_power_of_two());
    let high = match np.cmp(&pp) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => n <= p,
    };
    high && HighRate::<DefaultEngine>::supports(n, p)
}

/// Evaluates the erasure polynomial of a high-rate decode into `er`.
fn fill_erasures(
    er: &mut Vec<u16>,
    originals: &[Option<Input<'_>>],
    recovery: &[Option<&[u8]>],
) -> Result<(), Error> {
    let (n, p) = (originals.len(), recovery.len());
    let chunk = p.next_power_of_two();
    er.clear();
    er.resize(GF_ORDER, 0);
    for (i, r) in recovery.iter().enumerate() {
        if r.is_none() {
            er[i] = 1;
        }
    }
    er[p..chunk].fill(1);
    for (i, o) in originals.iter().enumerate() {
        if o.is_none() {
            er[chunk + i] = 1;
        }
    }
    let table = <&mut [u16; GF_ORDER]>::try_from(er.as_mut_slice())
        .map_err(|_| Error::ReedSolomon("erasure table size".into()))?;
    DefaultEngine::eval_poly(table, chunk + n);
    Ok(())
}

/// Restores one column segment of the listed originals: reed-solomon-simd's high-rate decoder
/// (`HighRateDecoder::decode`), step by step, with the erasure polynomial evaluated once for
/// all segments.
fn decode_segment(
    sc: &mut Scratch,
    c: &Coding<'_>,
    off: usize,
    outs: &mut [(usize, &mut [u8])],
) -> Result<(), Error> {
    let Some(len) = outs.first().map(|(_, o)| o.len()) else {
        return Ok(());
    };
    let (n, p, er) = (c.originals.len(), c.p, c.erasures);
    if er.len() != GF_ORDER || c.recovery.len() != p {
        return Err(Error::ReedSolomon("decode without erasure table".into()));
    }
    let chunk = p.next_power_of_two();
    let end = chunk + n;
    let count = end.next_power_of_two();
    let len64 = len.div_ceil(64);
    if sc.work.len() < count * len64 {
        sc.work.resize(count * len64, [0; 64]);
    }
    let engine = sc.engine.get_or_insert_with(DefaultEngine::new);
    let mut work = ShardsRefMut::new(count, len64, &mut sc.work[..count * len64]);
    // work[..p] = recovery * erasures, work[p..chunk] = 0,
    // work[chunk..end] = original * erasures, work[end..] = 0.
    for (i, r) in c.recovery.iter().enumerate() {
        match r {
            Some(r) => {
                load(&mut work[i], Input::Bytes(r).segment(off, len), len);
                engine.mul(&mut work[i], er[i]);
            }
            None => work[i].fill([0; 64]),
        }
    }
    work.zero(p..chunk);
    for (i, o) in c.originals.iter().enumerate() {
        let w = chunk + i;
        match o {
            Some(o) => {
                load(&mut work[w], o.segment(off, len), len);
                engine.mul(&mut work[w], er[w]);
            }
            None => work[w].fill([0; 64]),
        }
    }
    work.zero(end..);
    engine.ifft(&mut work, 0, count, end, 0);
    formal_derivative(&mut work);
    engine.fft(&mut work, 0, count, end, 0);
    for (i, out) in outs.iter_mut() {
        let w = chunk + *i;
        if w >= end {
            return Err(Error::ReedSolomon(format!("no original {i}")));
        }
        engine.mul(&mut work[w], GF_MODULUS - er[w]);
        store(out, &work[w]);
    }
    Ok(())
}

/// Computes the `p` recovery shards of `originals` (each `b` bytes, shorter inputs
/// zero-padded) behind the first `start` bytes of `outs[j]` (which must hold exactly those),
/// and runs the `extra` jobs alongside.
///
/// On one thread the recovery segments are appended in order, so the outputs are written
/// once and never zero-filled; with several, each output is sized first and the segments are
/// written in place by whichever thread codes them.
fn rs_encode_into<'a>(
    threads: usize,
    originals: &[Option<Input<'_>>],
    outs: &'a mut [Vec<u8>],
    start: usize,
    b: usize,
    mut extra: Vec<Job<'a>>,
) -> Result<(), Error> {
    let p = outs.len();
    let seg = segment_len(encode_work_shards(originals.len(), p), b);
    let coding = Coding {
        originals,
        recovery: &[],
        p,
        erasures: &[],
    };
    if threads <= 1 {
        run(1, None, extra)?;
        for out in outs.iter_mut() {
            out.truncate(start);
            out.reserve_exact(b);
        }
        return with_scratch(|sc| {
            let mut off = 0;
            while off < b {
                let len = seg.min(b - off);
                encode_segment(sc, &coding, off, len, |j, r| {
                    if let Some(out) = outs.get_mut(j) {
                        out.extend_from_slice(r);
                    }
                })?;
                off += len;
            }
            Ok(())
        });
    }
    // Larger jobs first: the extra (hashing) jobs are whole blocks.
    extra.extend(encode_jobs(
        outs.iter_mut().map(|out| {
            out.resize(start + b, 0);
            &mut out[start..]
        }),
        seg,
    ));
    run(threads, Some(&coding), extra)
}

/// Restores the `wanted` originals (index, `b`-byte output) from the given original and
/// recovery shards (`None` = missing): present ones are copied (zero-padded), missing ones
/// decoded. Needs at least `originals.len()` shards.
fn restore_into(
    threads: usize,
    originals: &[Option<Input<'_>>],
    recovery: &[Option<&[u8]>],
    b: usize,
    wanted: Vec<(usize, &mut [u8])>,
) -> Result<(), Error> {
    let (n, p) = (originals.len(), recovery.len());
    let have = originals.iter().flatten().count() + recovery.iter().flatten().count();
    if have < n {
        return Err(Error::ReedSolomon(format!(
            "{have} shards, {n} needed to decode"
        )));
    }
    let mut missing = Vec::with_capacity(wanted.len());
    for (i, out) in wanted {
        match originals.get(i) {
            Some(Some(o)) => {
                let src = o.segment(0, b);
                out[..src.len()].copy_from_slice(src);
                out[src.len()..].fill(0);
            }
            Some(None) => missing.push((i, out)),
            None => return Err(Error::ReedSolomon(format!("no original {i}"))),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !default_rate_is_high(n, p) {
        return restore_whole(originals, recovery, b, missing);
    }
    with_scratch(|sc| {
        fill_erasures(&mut sc.erasures, originals, recovery)?;
        let coding = Coding {
            originals,
            recovery,
            p,
            erasures: &sc.erasures,
        };
        let seg = segment_len(decode_work_shards(n, p), b);
        run(threads, Some(&coding), decode_jobs(missing, seg))
    })
}

/// [`restore_into`] for codes that use reed-solomon-simd's low rate: one library call over
/// whole shards.
fn restore_whole(
    originals: &[Option<Input<'_>>],
    recovery: &[Option<&[u8]>],
    b: usize,
    missing: Vec<(usize, &mut [u8])>,
) -> Result<(), Error> {
    let mut dec = ReedSolomonDecoder::new(originals.len(), recovery.len(), b)?;
    let mut pad = Vec::new();
    for (i, o) in originals.iter().enumerate() {
        if let Some(o) = o {
            let bytes = o.segment(0, b);
            if bytes.len() == b {
                dec.add_original_shard(i, bytes)?;
            } else {
                pad.clear();
                pad.extend_from_slice(bytes);
                pad.resize(b, 0);
                dec.add_original_shard(i, &pad)?;
            }
        }
    }
    for (j, r) in recovery.iter().enumerate() {
        if let Some(r) = r {
            dec.add_recovery_shard(j, r)?;
        }
    }
    let res = dec.decode()?;
    for (i, out) in missing {
        let r = res
            .restored_original(i)
            .ok_or_else(|| Error::ReedSolomon(format!("original {i} was not restored")))?;
        out.copy_from_slice(r);
    }
    Ok(())
}

/// Computes the `p` recovery shards of the `s + t` original shards.
pub(crate) fn rs_encode(params: &Params, originals: &[&[u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let (n, p, b) = (params.needed(), params.p(), params.block());
    if originals.len() != n || originals.iter().any(|o| o.len() != b) {
        return Err(Error::ReedSolomon(format!(
            "{} originals for {n} shards of {b} bytes",
            originals.len()
        )));
    }
    let inputs: Vec<Option<Input<'_>>> = originals.iter().map(|o| Some(Input::Bytes(o))).collect();
    let mut out = vec![Vec::new(); p];
    let threads = Parallelism::AUTO.resolve((n + p) * b);
    rs_encode_into(threads, &inputs, &mut out, 0, b, Vec::new())?;
    Ok(out)
}

/// Below this, hashing one buffer is not split over threads.
const PAR_HASH_MIN: usize = 256 * 1024;

/// BLAKE3 of `data`, split over up to `threads` threads as independent subtrees of its
/// BLAKE3 tree (the same hash as `blake3::hash`).
fn par_hash(threads: usize, data: &[u8]) -> [u8; 32] {
    if threads <= 1 || data.len() < PAR_HASH_MIN {
        return *blake3::hash(data).as_bytes();
    }
    // Enough subtrees for every thread to get about two.
    let depth = (usize::BITS - (threads - 1).leading_zeros()) as usize + 1;
    let mut leaves = Vec::new();
    subtree_leaves(0, data.len(), depth, &mut leaves);
    let mut cvs = vec![[0u8; 32]; leaves.len()];
    let jobs = leaves
        .iter()
        .zip(cvs.iter_mut())
        .map(|(&(off, len), cv)| Job::Subtree(off as u64, &data[off..off + len], cv))
        .collect();
    if run(threads, None, jobs).is_err() {
        return *blake3::hash(data).as_bytes();
    }
    let mut it = cvs.iter();
    let l = left_len(data.len());
    match (
        merge_leaves(l, depth - 1, &mut it),
        merge_leaves(data.len() - l, depth - 1, &mut it),
    ) {
        (Some(a), Some(b)) => *merge_subtrees_root(&a, &b, Mode::Hash).as_bytes(),
        _ => *blake3::hash(data).as_bytes(),
    }
}

fn left_len(len: usize) -> usize {
    // len > CHUNK_LEN here, so the left subtree is at most len: it fits in usize.
    usize::try_from(left_subtree_len(len as u64)).unwrap_or(len / 2)
}

/// The leaves (offset, length) of the BLAKE3 tree of `len` bytes at `off`, cut `depth` levels
/// down (or at single chunks).
fn subtree_leaves(off: usize, len: usize, depth: usize, out: &mut Vec<(usize, usize)>) {
    if depth == 0 || len <= blake3::CHUNK_LEN {
        out.push((off, len));
        return;
    }
    let l = left_len(len);
    subtree_leaves(off, l, depth - 1, out);
    subtree_leaves(off + l, len - l, depth - 1, out);
}

/// Merges the leaves of [`subtree_leaves`] back into the (non-root) chaining value.
fn merge_leaves<'a>(
    len: usize,
    depth: usize,
    cvs: &mut impl Iterator<Item = &'a [u8; 32]>,
) -> Option<[u8; 32]> {
    if depth == 0 || len <= blake3::CHUNK_LEN {
        return cvs.next().copied();
    }
    let l = left_len(len);
    let a = merge_leaves(l, depth - 1, cvs)?;
    let b = merge_leaves(len - l, depth - 1, cvs)?;
    Some(merge_subtrees_non_root(&a, &b, Mode::Hash))
}

/// The chaining values of the BLAKE3 tree of a stored block (`hlen` bytes of header, then the
/// payload) for its maximal subtrees that hold no header byte, in tree order. With them,
/// [`key_of_parts`] finishes the block's key once its header is written from the hashing of
/// the first chunk(s) and a few merges: the payload is hashed for the key in the same pass
/// (and while it is in cache) as for the payload hash, before the header exists.
fn key_parts(block: &[u8], hlen: usize, out: &mut Vec<[u8; 32]>) {
    out.clear();
    if block.len() > blake3::CHUNK_LEN {
        let l = left_len(block.len());
        parts_of(block, hlen, 0, l, out);
        parts_of(block, hlen, l, block.len() - l, out);
    }
}

fn parts_of(block: &[u8], hlen: usize, off: usize, len: usize, out: &mut Vec<[u8; 32]>) {
    if off >= hlen {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(off as u64);
        h.update(&block[off..off + len]);
        out.push(h.finalize_non_root());
    } else if len > blake3::CHUNK_LEN {
        let l = left_len(len);
        parts_of(block, hlen, off, l, out);
        parts_of(block, hlen, off + l, len - l, out);
    }
}

/// BLAKE3 of `block` (its header now written) from its [`key_parts`].
fn key_of_parts(block: &[u8], hlen: usize, parts: &[[u8; 32]]) -> [u8; 32] {
    if block.len() <= blake3::CHUNK_LEN {
        return *blake3::hash(block).as_bytes();
    }
    let mut it = parts.iter();
    let l = left_len(block.len());
    match (
        cv_of(block, hlen, 0, l, &mut it),
        cv_of(block, hlen, l, block.len() - l, &mut it),
    ) {
        (Some(a), Some(b)) => *merge_subtrees_root(&a, &b, Mode::Hash).as_bytes(),
        // Not reachable (the parts come from key_parts on the same layout): hash it all.
        _ => *blake3::hash(block).as_bytes(),
    }
}

fn cv_of<'a>(
    block: &[u8],
    hlen: usize,
    off: usize,
    len: usize,
    parts: &mut impl Iterator<Item = &'a [u8; 32]>,
) -> Option<[u8; 32]> {
    if off >= hlen {
        return parts.next().copied();
    }
    if len <= blake3::CHUNK_LEN {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(off as u64);
        h.update(&block[off..off + len]);
        return Some(h.finalize_non_root());
    }
    let l = left_len(len);
    let a = cv_of(block, hlen, off, l, parts)?;
    let b = cv_of(block, hlen, off + l, len - l, parts)?;
    Some(merge_subtrees_non_root(&a, &b, Mode::Hash))
}

// ---------------------------------------------------------------------------------------------
// Pointers

/// Checks the stored bytes of a pointer that already hash to `key`: a well-formed parity block
/// with a payload of `B` bytes. Returns the payload.
fn checked_payload<'a>(
    params: &Params,
    key: &BlockKey,
    stored: &'a [u8],
) -> Result<&'a [u8], Error> {
    let (_, payload) = verified_payload(stored).map_err(|e| Error::BadPointer {
        key: *key,
        reason: e.to_string(),
    })?;
    if payload.len() != params.block() {
        return Err(Error::BadPointer {
            key: *key,
            reason: format!(
                "payload is {} bytes, block size is {}",
                payload.len(),
                params.block()
            ),
        });
    }
    Ok(payload)
}

fn hash_mismatch(key: &BlockKey) -> Error {
    Error::BadPointer {
        key: *key,
        reason: "bytes do not hash to the key".into(),
    }
}

/// Extracts and checks the payload of a pointer's stored bytes: they must hash to `key` and be
/// a well-formed parity block of payload size `B`.
pub fn pointer_payload<'a>(
    params: &Params,
    key: &BlockKey,
    stored: &'a [u8],
) -> Result<&'a [u8], Error> {
    if !key.verifies(stored) {
        return Err(hash_mismatch(key));
    }
    checked_payload(params, key, stored)
}

/// A pointer checked once for [`encode_verified`]: its key and, unless it is an anchor, the
/// payload of stored bytes that hash to the key. A caller that uses the same block as a
/// pointer of many codewords verifies it once instead of once per codeword (BLAKE3 of `B`
/// bytes each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer<'a> {
    key: BlockKey,
    payload: Option<&'a [u8]>,
}

impl<'a> Pointer<'a> {
    /// Checks `stored` against `key` as [`encode`] does: an anchor key of `params` (its bytes
    /// are ignored), or bytes that hash to `key` and form a parity block with a `B`-byte
    /// payload ([`pointer_payload`]).
    pub fn verify(params: &Params, key: BlockKey, stored: &'a [u8]) -> Result<Self, Error> {
        if Anchors::new(params.block_size, params.t()).contains(&key) {
            return Ok(Pointer { key, payload: None });
        }
        let payload = pointer_payload(params, &key, stored)?;
        Ok(Pointer {
            key,
            payload: Some(payload),
        })
    }

    /// The pointer's key.
    #[must_use]
    pub fn key(&self) -> BlockKey {
        self.key
    }

    /// The verified payload; `None` for an anchor.
    #[must_use]
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.payload
    }
}

/// A pointer as the encoder takes it.
enum Ptr<'a> {
    /// An anchor: input symbol of zeros.
    Anchor,
    /// A payload already checked against the key.
    Checked(&'a [u8]),
    /// Stored bytes not yet hashed; `payload` is the result of the other checks.
    Unchecked {
        stored: &'a [u8],
        payload: Result<&'a [u8], Error>,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Checks what [`encode`] checks before any work: parameters, document size, pointer count,
/// distinct pointers.
fn check_encode_args(
    params: &Params,
    len: usize,
    keys: impl Iterator<Item = BlockKey>,
) -> Result<(), Error> {
    params.validate()?;
    let capacity = params.capacity();
    let len = len as u64;
    if len > capacity {
        return Err(Error::DocumentTooLarge { len, capacity });
    }
    let mut keys: Vec<BlockKey> = keys.collect();
    if keys.len() != params.t() {
        return Err(Error::WrongPointerCount {
            expected: params.t(),
            got: keys.len(),
        });
    }
    keys.sort();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::DuplicatePointer(w[0]));
    }
    Ok(())
}

/// Encodes one codeword.
///
/// `document` is at most `s * B` bytes (it is zero-padded to `s` blocks; its true length is
/// recorded). `pointers` are exactly `t` distinct `(key, stored bytes)` pairs: each real
/// pointer's stored bytes are verified against its key and its payload is used as input symbol
/// `s + i`; for an anchor key (see [`BlockKey::anchor`]) the bytes are ignored (pass `&[]`).
///
/// Returns the codeword's record and its `p` stored parity blocks in index order. Large
/// codewords use several cores ([`Parallelism::AUTO`]; see [`encode_with`]).
pub fn encode(
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[(BlockKey, &[u8])],
) -> Result<Encoded, Error> {
    encode_with(Parallelism::AUTO, params, id, document, pointers)
}

/// [`encode`] with a choice of [`Parallelism`]. The result is the same for any choice.
pub fn encode_with(
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[(BlockKey, &[u8])],
) -> Result<Encoded, Error> {
    check_encode_args(&params, document.len(), pointers.iter().map(|(k, _)| *k))?;
    let anchors = Anchors::new(params.block_size, params.t());
    let ptrs = pointers
        .iter()
        .map(|(key, stored)| {
            let ptr = if anchors.contains(key) {
                Ptr::Anchor
            } else {
                Ptr::Unchecked {
                    stored,
                    payload: checked_payload(&params, key, stored),
                }
            };
            (*key, ptr)
        })
        .collect();
    encode_core(par, params, id, document, ptrs)
}

/// [`encode_with`] over pointers checked beforehand ([`Pointer::verify`]): their bytes are not
/// hashed again. The result is byte for byte what [`encode`] returns for the same pointers.
pub fn encode_verified(
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[Pointer<'_>],
) -> Result<Encoded, Error> {
    check_encode_args(&params, document.len(), pointers.iter().map(Pointer::key))?;
    let anchors = Anchors::new(params.block_size, params.t());
    let mut ptrs = Vec::with_capacity(pointers.len());
    for p in pointers {
        let ptr = match p.payload {
            None if anchors.contains(&p.key) => Ptr::Anchor,
            None => {
                return Err(Error::BadPointer {
                    key: p.key,
                    reason: "not an anchor of these parameters".into(),
                })
            }
            Some(payload) if payload.len() == params.block() => Ptr::Checked(payload),
            Some(payload) => {
                return Err(Error::BadPointer {
                    key: p.key,
                    reason: format!(
                        "payload is {} bytes, block size is {}",
                        payload.len(),
                        params.block()
                    ),
                })
            }
        };
        ptrs.push((p.key, ptr));
    }
    encode_core(par, params, id, document, ptrs)
}

/// Encodes one codeword whose arguments were checked by [`check_encode_args`].
fn encode_core(
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: Vec<(BlockKey, Ptr<'_>)>,
) -> Result<Encoded, Error> {
    let (s, t, p, b) = (params.s(), params.t(), params.p(), params.block());
    let hlen = header_len(t, p);
    let unchecked = pointers
        .iter()
        .filter(|(_, p)| matches!(p, Ptr::Unchecked { .. }))
        .count();
    // Hashing: document, unchecked pointers, payloads, stored blocks; coding: inputs.
    let threads = par.resolve((s + unchecked + 2 * p + s + t) * b);

    let mut originals: Vec<Option<Input<'_>>> = Vec::with_capacity(s + t);
    for i in 0..s {
        let start = (i * b).min(document.len());
        let end = ((i + 1) * b).min(document.len());
        originals.push(Some(Input::Bytes(&document[start..end])));
    }
    for (_, ptr) in &pointers {
        originals.push(Some(match ptr {
            Ptr::Checked(payload)
            | Ptr::Unchecked {
                payload: Ok(payload),
                ..
            } => Input::Bytes(payload),
            Ptr::Anchor
            | Ptr::Unchecked {
                payload: Err(_), ..
            } => Input::Zero,
        }));
    }

    // Every stored block is allocated once, header room first: the payload is written into it
    // by the Reed-Solomon step, the header once the payload hashes are known.
    let mut blocks: Vec<Vec<u8>> = (0..p)
        .map(|_| {
            let mut v = Vec::with_capacity(hlen + b);
            v.resize(hlen, 0);
            v
        })
        .collect();
    let mut content_hash = [0u8; 32];
    let mut pointer_hashes = vec![[0u8; 32]; t];

    // 1. Document hash, pointer hashes, Reed-Solomon: independent jobs.
    let mut hashes = vec![Job::Hash(document, &mut content_hash)];
    for ((_, ptr), h) in pointers.iter().zip(pointer_hashes.iter_mut()) {
        if let Ptr::Unchecked { stored, .. } = ptr {
            hashes.push(Job::Hash(stored, h));
        }
    }
    rs_encode_into(threads, &originals, &mut blocks, hlen, b, hashes)?;
    let mut keys = Vec::with_capacity(t);
    for ((key, ptr), h) in pointers.into_iter().zip(&pointer_hashes) {
        if let Ptr::Unchecked { payload, .. } = ptr {
            // The first bad pointer, in input order, is the error, as if checked one by one.
            if *h != key.0 {
                return Err(hash_mismatch(&key));
            }
            payload?;
        }
        keys.push(key);
    }

    // 2. Payload hashes, and the header-free parts of the stored blocks' hashes.
    let mut payload_hashes = vec![[0u8; 32]; p];
    let mut parts: Vec<Vec<[u8; 32]>> = vec![Vec::new(); p];
    let jobs = blocks
        .iter()
        .zip(payload_hashes.iter_mut())
        .zip(parts.iter_mut())
        .map(|((blk, payload_hash), key_parts)| Job::Parity {
            block: blk,
            hlen,
            payload_hash,
            key_parts,
        })
        .collect();
    run(threads, None, jobs)?;

    // 3. Headers, in place, then the ring keys of the stored bytes (their first chunk and the
    //    merges: a few microseconds).
    let fields = HeaderFields {
        params: &params,
        codeword: &id,
        len: document.len() as u64,
        content_hash: &content_hash,
        pointers: &keys,
        payload_hashes: &payload_hashes,
    };
    let mut parity_keys = Vec::with_capacity(p);
    for (j, (blk, parts)) in blocks.iter_mut().zip(&parts).enumerate() {
        // j < p <= u16::MAX: validated.
        write_header(&mut blk[..hlen], &fields, j as u16);
        parity_keys.push(key_of_parts(blk, hlen, parts));
    }

    let parity_keys: Vec<BlockKey> = parity_keys.into_iter().map(BlockKey).collect();
    let record = CodewordRecord {
        id,
        params,
        pointers: keys,
        parity_keys: parity_keys.clone(),
        payload_hashes,
        len: document.len() as u64,
        content_hash,
    };
    Ok((record, parity_keys.into_iter().zip(blocks).collect()))
}

// ---------------------------------------------------------------------------------------------
// Gathering and decoding

/// A verified symbol: stored bytes and where the payload starts, or an anchor's zeros.
pub(crate) enum Symbol {
    Stored { bytes: Vec<u8>, start: usize },
    Zero,
}

impl Symbol {
    fn input(&self, b: usize) -> Input<'_> {
        match self {
            Symbol::Stored { bytes, start } => Input::Bytes(&bytes[*start..*start + b]),
            Symbol::Zero => Input::Zero,
        }
    }

    fn stored_payload(&self, b: usize) -> Option<&[u8]> {
        match self {
            Symbol::Stored { bytes, start } => Some(&bytes[*start..*start + b]),
            Symbol::Zero => None,
        }
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
    fetch: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
) -> Gathered {
    gather_with(record, anchors, fetch, 1)
}

#[derive(Clone, Copy)]
enum Slot {
    Pointer(usize),
    Parity(usize),
}

/// [`gather`] hashing with up to `threads` threads. It fetches exactly the blocks [`gather`]
/// fetches, in the same order, and keeps the same symbols: blocks are fetched in batches of as
/// many as are still needed, and a batch is verified before the next is fetched.
fn gather_with(
    record: &CodewordRecord,
    anchors: &Anchors,
    mut fetch: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
    threads: usize,
) -> Gathered {
    let params = &record.params;
    let (s, b, need) = (params.s(), params.block(), params.needed());
    let hlen = header_len(params.t(), params.p());
    let mut g = Gathered {
        originals: (0..need).map(|_| None).collect(),
        recovery: (0..params.p()).map(|_| None).collect(),
        have: 0,
        rejected: Vec::new(),
    };
    // Anchors cost nothing: take them first.
    for (i, key) in record.pointers.iter().enumerate() {
        if anchors.contains(key) {
            g.originals[s + i] = Some(Symbol::Zero);
            g.have += 1;
        }
    }
    let candidates: Vec<Slot> = (0..record.pointers.len())
        .filter(|&i| g.originals[s + i].is_none())
        .map(Slot::Pointer)
        .chain((0..record.parity_keys.len()).map(Slot::Parity))
        .collect();
    let key_of = |slot: Slot| match slot {
        Slot::Pointer(i) => &record.pointers[i],
        Slot::Parity(j) => &record.parity_keys[j],
    };
    let mut next = 0;
    while g.have < need && next < candidates.len() {
        let mut batch: Vec<(Slot, Vec<u8>)> = Vec::new();
        while g.have + batch.len() < need && next < candidates.len() {
            let slot = candidates[next];
            next += 1;
            if let Some(bytes) = fetch(key_of(slot)) {
                batch.push((slot, bytes));
            }
        }
        let mut hashes = vec![[0u8; 32]; batch.len()];
        let jobs = batch
            .iter()
            .zip(hashes.iter_mut())
            // A parity of the wrong size is rejected without hashing it.
            .filter(|((slot, bytes), _)| {
                matches!(slot, Slot::Pointer(_)) || bytes.len() == hlen + b
            })
            .map(|((_, bytes), h)| Job::Hash(bytes, h))
            .collect();
        // Hash jobs cannot fail.
        let _ = run(threads, None, jobs);
        for ((slot, bytes), h) in batch.into_iter().zip(hashes) {
            let key = key_of(slot);
            let ok = h == key.0
                && match slot {
                    Slot::Pointer(_) => checked_payload(params, key, &bytes).is_ok(),
                    Slot::Parity(_) => bytes.len() == hlen + b,
                };
            if !ok {
                g.rejected.push(*key);
                continue;
            }
            match slot {
                Slot::Pointer(i) => {
                    let start = bytes.len() - b;
                    g.originals[s + i] = Some(Symbol::Stored { bytes, start });
                }
                Slot::Parity(j) => {
                    g.recovery[j] = Some(Symbol::Stored { bytes, start: hlen });
                }
            }
            g.have += 1;
        }
    }
    g
}

/// The gathered symbols as Reed-Solomon inputs; [`Error::Undecodable`] with fewer than
/// `s + t`.
type Shards<'g> = (Vec<Option<Input<'g>>>, Vec<Option<&'g [u8]>>);

fn gathered_shards<'g>(record: &CodewordRecord, g: &'g Gathered) -> Result<Shards<'g>, Error> {
    let params = &record.params;
    let b = params.block();
    if g.have < params.needed() {
        return Err(Error::Undecodable {
            id: record.id,
            have: g.have,
            need: params.needed(),
        });
    }
    let originals = g
        .originals
        .iter()
        .map(|o| o.as_ref().map(|s| s.input(b)))
        .collect();
    let recovery = g
        .recovery
        .iter()
        .map(|o| o.as_ref().and_then(|s| s.stored_payload(b)))
        .collect();
    Ok((originals, recovery))
}

/// Restores all `s + t` input symbols of a codeword from gathered symbols.
pub(crate) fn restore_inputs(record: &CodewordRecord, g: &Gathered) -> Result<Vec<Vec<u8>>, Error> {
    let params = &record.params;
    let (n, b) = (params.needed(), params.block());
    let (originals, recovery) = gathered_shards(record, g)?;
    let mut out = vec![vec![0u8; b]; n];
    let threads = Parallelism::AUTO.resolve(3 * (n + params.p()) * b);
    restore_into(
        threads,
        &originals,
        &recovery,
        b,
        out.iter_mut().map(Vec::as_mut_slice).enumerate().collect(),
    )?;
    Ok(out)
}

/// Decodes one codeword's document bytes from `source`.
///
/// Every symbol is verified against the record (pointers by key, parities by their recorded
/// key); symbols that fail are treated as missing. With fewer than `s + t` verified symbols
/// the result is [`Error::Undecodable`], never wrong bytes. The output is truncated to the
/// recorded length and checked against the recorded content hash. Large codewords use
/// several cores ([`Parallelism::AUTO`]; see [`decode_with`]).
pub fn decode<S: SymbolSource + ?Sized>(
    record: &CodewordRecord,
    source: &S,
) -> Result<Vec<u8>, Error> {
    decode_with(Parallelism::AUTO, record, source)
}

/// [`decode`] with a choice of [`Parallelism`]. The result is the same for any choice, and
/// `source` is asked for the same blocks in the same order.
pub fn decode_with<S: SymbolSource + ?Sized>(
    par: Parallelism,
    record: &CodewordRecord,
    source: &S,
) -> Result<Vec<u8>, Error> {
    record.validate()?;
    let params = &record.params;
    // Hashing: s + t symbols and the document; decoding: heavier than encoding.
    let threads =
        par.resolve((params.needed() + params.s() + 3 * params.needed()) * params.block());
    let anchors = Anchors::new(params.block_size, params.t());
    let g = gather_with(record, &anchors, |k| source.get(k), threads);
    decode_gathered(record, &g, threads)
}

/// Decodes the document bytes from already gathered symbols.
fn decode_gathered(
    record: &CodewordRecord,
    g: &Gathered,
    threads: usize,
) -> Result<Vec<u8>, Error> {
    let params = &record.params;
    let (s, b) = (params.s(), params.block());
    let (originals, recovery) = gathered_shards(record, g)?;
    // len <= s * B was checked by validate(), so this fits in usize on any target that could
    // hold the blocks.
    let len = usize::try_from(record.len)
        .map_err(|_| Error::InvalidParams("document length exceeds usize".into()))?;
    // The sources are restored straight into the document.
    let mut doc = vec![0u8; s * b];
    restore_into(
        threads,
        &originals,
        &recovery,
        b,
        doc.chunks_mut(b).enumerate().collect(),
    )?;
    doc.truncate(len);
    if par_hash(threads, &doc) != record.content_hash {
        return Err(Error::ContentMismatch(record.id));
    }
    Ok(doc)
}

// ---------------------------------------------------------------------------------------------
// Documents

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
    pointers: F,
) -> Result<Vec<Encoded>, Error>
where
    F: FnMut(u64, &[Encoded]) -> Result<Vec<StoredBlock>, Error>,
{
    encode_document_with(Parallelism::AUTO, params, document_id, document, pointers)
}

/// [`encode_document`] with a choice of [`Parallelism`] for each codeword. Codewords are
/// encoded one after the other (each one's pointers may depend on those before); each is split
/// over threads. The result is the same for any choice.
pub fn encode_document_with<F>(
    par: Parallelism,
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
        let encoded = encode_with(
            par,
            params,
            CodewordId::derive(document_id, k),
            chunk,
            &refs,
        )?;
        done.push(encoded);
    }
    Ok(done)
}

/// Decodes a document made of `records` (in order, as [`encode_document`] returned them).
pub fn decode_document<S: SymbolSource + ?Sized>(
    records: &[CodewordRecord],
    source: &S,
) -> Result<Vec<u8>, Error> {
    decode_document_with(Parallelism::AUTO, records, source)
}

/// [`decode_document`] with a choice of [`Parallelism`] for each codeword.
pub fn decode_document_with<S: SymbolSource + ?Sized>(
    par: Parallelism,
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
        out.extend_from_slice(&decode_with(par, r, source)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Encodes a fixed set of codewords (anchors, real pointers, short documents, tails, low- and
    /// high-rate codes, several column segments) and hashes every stored byte and record field.
    fn golden_digest() -> [u8; 32] {
        let configs: &[(u16, u16, u16, u32)] = &[
            (4, 8, 12, 200_002),
            (4, 8, 8, 131_072),
            (2, 10, 6, 65_600),
            (1, 10, 3, 4_098),
            (4, 2, 12, 70_000),
            (2, 30, 3, 8_190),
            (3, 4, 5, 64),
            (2, 3, 4, 16),
        ];
        let mut all = blake3::Hasher::new();
        for (c, &(s, t, p, b)) in configs.iter().enumerate() {
            let params = Params::new(s, t, p, b);
            let cap = params.capacity() as usize;
            let mut pool: Vec<(BlockKey, Vec<u8>)> = Vec::new();
            for (k, len) in [cap, cap - 1, cap / 3 + 1, 0, cap].into_iter().enumerate() {
                let mut doc = vec![0u8; len];
                let mut x = (c as u64 + 1) * 0x9E37_79B9_7F4A_7C15 + k as u64;
                for byte in doc.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *byte = x as u8;
                }
                let ptrs: Vec<(BlockKey, &[u8])> = (0..params.t())
                    .map(|i| match pool.get(pool.len().saturating_sub(1 + i * 2)) {
                        Some((key, bytes)) if i < pool.len() / 2 => (*key, bytes.as_slice()),
                        _ => (BlockKey::anchor(b, i as u32), &[][..]),
                    })
                    .collect();
                let mut id = [0u8; 32];
                id[0] = c as u8;
                id[1] = k as u8;
                let (rec, blocks) = encode(params, CodewordId(id), &doc, &ptrs).expect("encode");
                for (key, bytes) in &blocks {
                    all.update(&key.0);
                    all.update(bytes);
                }
                for h in &rec.payload_hashes {
                    all.update(h);
                }
                all.update(&rec.content_hash);
                all.update(&rec.len.to_le_bytes());
                pool.extend(blocks);
            }
        }
        *all.finalize().as_bytes()
    }

    /// The stored bytes are those of the codec before column segments, stored blocks built in
    /// place and threads: this digest was printed by the previous implementation (whole-shard
    /// reed-solomon-simd calls, `ParityHeader::stored_bytes`) for the same inputs.
    #[test]
    fn stored_bytes_are_those_of_the_previous_codec() {
        assert_eq!(
            hex::encode(golden_digest()),
            "bbc045e8ad302b12a82f8b339564dc7fc4d85213bf4fd0ce3983ba7d215b24ba"
        );
    }

    fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        v
    }

    /// The codec as it was: one reed-solomon-simd call over whole, zero-padded shards, then
    /// every header built from a cloned [`ParityHeader`].
    fn reference_encode(
        params: Params,
        id: CodewordId,
        document: &[u8],
        pointers: &[(BlockKey, &[u8])],
    ) -> Encoded {
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
                originals.push(pointer_payload(&params, key, stored).unwrap());
            }
        }
        let mut enc = ReedSolomonEncoder::new(params.needed(), params.p(), b).unwrap();
        for o in &originals {
            enc.add_original_shard(o).unwrap();
        }
        let parities: Vec<Vec<u8>> = enc
            .encode()
            .unwrap()
            .recovery_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let mut record = CodewordRecord {
            id,
            params,
            pointers: pointers.iter().map(|(k, _)| *k).collect(),
            parity_keys: Vec::new(),
            payload_hashes: parities
                .iter()
                .map(|p| *blake3::hash(p).as_bytes())
                .collect(),
            len: document.len() as u64,
            content_hash: *blake3::hash(document).as_bytes(),
        };
        let mut blocks = Vec::new();
        for (j, payload) in parities.iter().enumerate() {
            let stored = record.header(j as u16).stored_bytes(payload);
            let key = BlockKey::of(&stored);
            record.parity_keys.push(key);
            blocks.push((key, stored));
        }
        (record, blocks)
    }

    /// Codes that exercise every path: high rate with one chunk or several, low rate (library
    /// fallback for decoding), several column segments with a shard tail, tiny blocks.
    const CODES: &[(u16, u16, u16, u32)] = &[
        (4, 8, 12, 200_002),
        (4, 8, 8, 140_000),
        (2, 10, 6, 65_602),
        (1, 10, 3, 4_098),
        (4, 2, 12, 70_000),
        (2, 30, 3, 8_190),
        (3, 4, 5, 64),
        (2, 3, 4, 16),
        (1, 0, 1, 2),
    ];

    /// A codeword of `params` with real pointers (parities of an earlier codeword) where there
    /// are enough, anchors otherwise.
    fn fixture(params: Params, rng: &mut ChaCha8Rng, len: usize) -> (Vec<u8>, Vec<StoredBlock>) {
        let t = params.t();
        let b = params.block_size;
        let anchors: Vec<(BlockKey, &[u8])> = (0..t as u32)
            .map(|i| (BlockKey::anchor(b, i), &[][..]))
            .collect();
        let first = random_bytes(rng, params.capacity() as usize);
        let (_, pool) = encode(params, CodewordId([7; 32]), &first, &anchors).unwrap();
        let pointers: Vec<(BlockKey, Vec<u8>)> = (0..t)
            .map(|i| match pool.get(i) {
                Some((k, bytes)) if i % 3 != 2 => (*k, bytes.clone()),
                _ => (BlockKey::anchor(b, i as u32), Vec::new()),
            })
            .collect();
        (random_bytes(rng, len), pointers)
    }

    #[test]
    fn every_path_gives_the_reference_bytes() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for &(s, t, p, b) in CODES {
            let params = Params::new(s, t, p, b);
            let cap = params.capacity() as usize;
            for len in [cap, cap - 1, b as usize / 2 + 1, 0] {
                let (doc, pointers) = fixture(params, &mut rng, len);
                let refs: Vec<(BlockKey, &[u8])> =
                    pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                let id = CodewordId([len as u8; 32]);
                let want = reference_encode(params, id, &doc, &refs);
                for par in [
                    Parallelism::SINGLE,
                    Parallelism::threads(3),
                    Parallelism::AUTO,
                ] {
                    let got = encode_with(par, params, id, &doc, &refs).unwrap();
                    assert_eq!(got, want, "{params:?} len {len} {par:?}");
                    let verified: Vec<Pointer<'_>> = refs
                        .iter()
                        .map(|(k, v)| Pointer::verify(&params, *k, v).unwrap())
                        .collect();
                    let got = encode_verified(par, params, id, &doc, &verified).unwrap();
                    assert_eq!(got, want, "verified {params:?} len {len} {par:?}");
                }
                // Re-formed parities are the stored bytes.
                let (rec, blocks) = &want;
                for (j, (_, bytes)) in blocks.iter().enumerate() {
                    let payload = &bytes[bytes.len() - params.block()..];
                    assert_eq!(rec.reform_parity(j, payload).as_deref(), Some(&bytes[..]));
                    assert_eq!(&rec.stored_bytes(j as u16, payload), bytes);
                }
            }
        }
    }

    #[test]
    fn decode_and_restore_under_random_losses() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for &(s, t, p, b) in CODES {
            let params = Params::new(s, t, p, b);
            let b = params.block();
            let len = (params.capacity() as usize).saturating_sub(3);
            let (doc, pointers) = fixture(params, &mut rng, len);
            let refs: Vec<(BlockKey, &[u8])> =
                pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let (rec, blocks) = encode(params, CodewordId([1; 32]), &doc, &refs).unwrap();
            // The true input symbols: padded sources, then pointer payloads (zeros for anchors).
            let mut truth: Vec<Vec<u8>> = (0..params.s())
                .map(|i| {
                    let mut v = doc[(i * b).min(len)..((i + 1) * b).min(len)].to_vec();
                    v.resize(b, 0);
                    v
                })
                .collect();
            for (_, stored) in &pointers {
                truth.push(if stored.is_empty() {
                    vec![0u8; b]
                } else {
                    stored[stored.len() - b..].to_vec()
                });
            }
            let full: BTreeMap<BlockKey, Vec<u8>> =
                pointers.iter().cloned().chain(blocks).collect();
            let symbols: Vec<BlockKey> = rec
                .pointers
                .iter()
                .chain(&rec.parity_keys)
                .copied()
                .collect();
            for round in 0..6 {
                // Lose up to e of the t + p symbols (round 0: none).
                let mut store = full.clone();
                let lose = if round == 0 {
                    0
                } else {
                    rng.gen_range(0..=params.e())
                };
                for _ in 0..lose {
                    let k = symbols[rng.gen_range(0..symbols.len())];
                    store.remove(&k);
                }
                for par in [Parallelism::SINGLE, Parallelism::threads(3)] {
                    assert_eq!(
                        decode_with(par, &rec, &store).unwrap(),
                        doc,
                        "{params:?} round {round}"
                    );
                }
                let anchors = Anchors::new(params.block_size, params.t());
                let g = gather(&rec, &anchors, |k| store.get(k).cloned());
                assert_eq!(restore_inputs(&rec, &g).unwrap(), truth, "{params:?}");
            }
        }
    }

    /// The batched, parallel gather fetches the same blocks in the same order and keeps the
    /// same symbols as one-by-one verification, with corrupt and missing blocks.
    #[test]
    fn gather_with_threads_matches_gather() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let params = Params::new(2, 10, 6, 4096);
        let (doc, pointers) = fixture(params, &mut rng, 5000);
        let refs: Vec<(BlockKey, &[u8])> =
            pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let (rec, blocks) = encode(params, CodewordId([2; 32]), &doc, &refs).unwrap();
        let full: BTreeMap<BlockKey, Vec<u8>> = pointers.iter().cloned().chain(blocks).collect();
        let keys: Vec<BlockKey> = full.keys().copied().collect();
        let anchors = Anchors::new(params.block_size, params.t());
        for _ in 0..50 {
            let mut store = full.clone();
            for k in &keys {
                match rng.gen_range(0..6) {
                    0 => {
                        store.remove(k);
                    }
                    1 => {
                        if let Some(v) = store.get_mut(k).filter(|v| !v.is_empty()) {
                            let i = rng.gen_range(0..v.len());
                            v[i] ^= 1;
                        }
                    }
                    2 => {
                        if let Some(v) = store.get_mut(k) {
                            v.pop();
                        }
                    }
                    _ => {}
                }
            }
            let mut seq = Vec::new();
            let a = gather(&rec, &anchors, |k| {
                seq.push(*k);
                store.get(k).cloned()
            });
            let mut par = Vec::new();
            let b = gather_with(
                &rec,
                &anchors,
                |k| {
                    par.push(*k);
                    store.get(k).cloned()
                },
                3,
            );
            assert_eq!(seq, par);
            assert_eq!(a.have, b.have);
            assert_eq!(a.rejected, b.rejected);
            let held = |g: &Gathered| -> Vec<bool> {
                g.originals
                    .iter()
                    .chain(&g.recovery)
                    .map(Option::is_some)
                    .collect()
            };
            assert_eq!(held(&a), held(&b));
            let want = decode_with(Parallelism::SINGLE, &rec, &store);
            let got = decode_with(Parallelism::threads(3), &rec, &store);
            assert_eq!(format!("{want:?}"), format!("{got:?}"));
        }
    }

    #[test]
    fn par_hash_is_blake3() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let data = random_bytes(&mut rng, 3 << 20);
        for len in [
            0,
            1,
            1024,
            1025,
            PAR_HASH_MIN - 1,
            PAR_HASH_MIN,
            PAR_HASH_MIN + 1,
            1 << 20,
            (1 << 20) + 1023,
            3 << 20,
        ] {
            for threads in [1, 2, 3, 4, 8] {
                assert_eq!(
                    par_hash(threads, &data[..len]),
                    *blake3::hash(&data[..len]).as_bytes(),
                    "len {len} threads {threads}"
                );
            }
        }
    }

    #[test]
    fn key_from_parts_is_blake3() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for hlen in [0, 92, 732, 1023, 1024, 1025, 3000, 5000] {
            for payload in [0, 2, 292, 1024, 4096, 65_602, 262_144, 300_000] {
                let mut block = vec![0u8; hlen + payload];
                rng.fill_bytes(&mut block[hlen..]);
                let mut parts = Vec::new();
                key_parts(&block, hlen, &mut parts);
                // The header is written after the parts were taken.
                rng.fill_bytes(&mut block[..hlen]);
                assert_eq!(
                    key_of_parts(&block, hlen, &parts),
                    *blake3::hash(&block).as_bytes(),
                    "hlen {hlen} payload {payload}"
                );
            }
        }
    }

    #[test]
    fn load_and_store_invert_each_other() {
        let src: Vec<u8> = (0..200u8).collect();
        for len in (2usize..=200).step_by(2) {
            for avail in [0, len / 2, len] {
                let mut chunks = vec![[0xAA; 64]; len.div_ceil(64)];
                load(&mut chunks, &src[..avail], len);
                let mut out = vec![0xFF; len];
                store(&mut out, &chunks);
                let mut want = src[..avail].to_vec();
                want.resize(len, 0);
                assert_eq!(out, want, "len {len} avail {avail}");
            }
        }
    }

    #[test]
    fn segments_cover_the_shard() {
        for b in [2, 64, 4096, 65_602, 200_002, 1 << 20] {
            for shards in [2, 16, 32, 4096] {
                let seg = segment_len(shards, b);
                assert!(seg >= 1 && seg <= b.max(1));
                assert!(seg == b || seg % 64 == 0, "b {b} shards {shards}");
            }
        }
    }

    #[test]
    fn verified_pointers_are_checked() {
        let params = Params::new(2, 2, 2, 16);
        let a = |i| (BlockKey::anchor(16, i), &[][..]);
        let (rec, blocks) = encode(params, CodewordId([0; 32]), &[1; 3], &[a(0), a(1)]).unwrap();
        let good = Pointer::verify(&params, rec.parity_keys[0], &blocks[0].1).unwrap();
        assert_eq!(good.key(), rec.parity_keys[0]);
        assert_eq!(good.payload().map(<[u8]>::len), Some(16));
        let mut bad = blocks[0].1.clone();
        bad[100] ^= 1;
        assert!(matches!(
            Pointer::verify(&params, rec.parity_keys[0], &bad),
            Err(Error::BadPointer { .. })
        ));
        let anchor = Pointer::verify(&params, BlockKey::anchor(16, 1), b"ignored").unwrap();
        assert_eq!(anchor.payload(), None);
        // A pointer verified under other parameters is refused.
        let other = Params::new(2, 2, 2, 32);
        let foreign = Pointer::verify(&other, BlockKey::anchor(32, 0), &[]).unwrap();
        assert!(matches!(
            encode_verified(
                Parallelism::SINGLE,
                params,
                CodewordId([1; 32]),
                &[],
                &[foreign, anchor]
            ),
            Err(Error::BadPointer { .. })
        ));
        assert!(matches!(
            encode_verified(
                Parallelism::SINGLE,
                params,
                CodewordId([1; 32]),
                &[],
                &[anchor, anchor]
            ),
            Err(Error::DuplicatePointer(_))
        ));
    }

    /// Of several bad pointers, the first in input order is the error, as when they were
    /// checked one by one before encoding.
    #[test]
    fn first_bad_pointer_is_reported() {
        let params = Params::new(2, 3, 2, 16);
        let a = |i| (BlockKey::anchor(16, i), &[][..]);
        let (rec, blocks) =
            encode(params, CodewordId([0; 32]), &[1; 3], &[a(0), a(1), a(2)]).unwrap();
        let mut flipped = blocks[0].1.clone();
        flipped[100] ^= 1;
        let truncated = &blocks[1].1[..50];
        for par in [Parallelism::SINGLE, Parallelism::threads(2)] {
            let err = encode_with(
                par,
                params,
                CodewordId([1; 32]),
                &[],
                &[
                    a(0),
                    (rec.parity_keys[1], truncated),
                    (rec.parity_keys[0], &flipped),
                ],
            )
            .unwrap_err();
            assert!(
                matches!(err, Error::BadPointer { key, .. } if key == rec.parity_keys[1]),
                "{err}"
            );
        }
    }
}
