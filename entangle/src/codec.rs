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
use crate::params::{Layout, Params};
use crate::record::{AsRecord, CodewordRecord, Record, RecordView};
use crate::source::SymbolSource;
use crate::Error;

/// A stored block: its key and its exact stored bytes.
pub type StoredBlock = (BlockKey, Vec<u8>);

/// One encoded parity-only codeword: its record and its `p` parity blocks, in index order.
pub type Encoded = (CodewordRecord, Vec<StoredBlock>);

/// One encoded codeword of either layout: its record and its stored blocks, in stored index
/// order (parity-only: the `p` parities; systematic: the `s` sources, then the `p` parities).
pub type EncodedRecord = (Record, Vec<StoredBlock>);

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
    Stored {
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
        Job::Stored {
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

/// Computes the `p` recovery shards of the `s + t` original shards (all of one size, the
/// codeword's shard).
pub(crate) fn rs_encode(params: &Params, originals: &[&[u8]]) -> Result<Vec<Vec<u8>>, Error> {
    let (n, p) = (params.needed(), params.p());
    let b = originals.first().map_or(0, |o| o.len());
    if originals.len() != n || b == 0 || b % 2 != 0 || originals.iter().any(|o| o.len() != b) {
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

/// Checks the stored bytes of a pointer that already hash to `key`: a well-formed stored block
/// (a parity of either layout, or a systematic codeword's source) with a payload of at most
/// `B` bytes (a short codeword's parities have shorter payloads; as
/// an input symbol such a payload is zero-extended). Returns the payload.
fn checked_payload<'a>(
    params: &Params,
    key: &BlockKey,
    stored: &'a [u8],
) -> Result<&'a [u8], Error> {
    let (_, payload) = verified_payload(stored).map_err(|e| Error::BadPointer {
        key: *key,
        reason: e.to_string(),
    })?;
    if payload.len() > params.block() {
        return Err(Error::BadPointer {
            key: *key,
            reason: format!(
                "payload is {} bytes, more than the block size {}",
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
/// a well-formed stored block (a parity of either layout, or a systematic codeword's source)
/// with a payload of at most `B` bytes.
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
    /// are ignored), or bytes that hash to `key` and form a stored block (a parity or a source)
    /// with a payload of at most `B` bytes ([`pointer_payload`]).
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

    /// A pointer whose `stored` bytes the caller has already checked against `key` (fetched
    /// and hashed, or produced by the encoder itself): the header is parsed as [`verify`] does,
    /// the bytes are not hashed again.
    ///
    /// [`verify`]: Pointer::verify
    fn trusted(params: &Params, key: BlockKey, stored: &'a [u8]) -> Result<Self, Error> {
        if Anchors::new(params.block_size, params.t()).contains(&key) {
            return Ok(Pointer { key, payload: None });
        }
        let payload = checked_payload(params, &key, stored)?;
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

/// Checks what [`encode`] checks before any work: parameters (for the layout), document
/// size, pointer count, distinct pointers.
fn check_encode_args(
    layout: Layout,
    params: &Params,
    len: usize,
    keys: impl Iterator<Item = BlockKey>,
) -> Result<(), Error> {
    params.validate_for(layout)?;
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

/// Encodes one parity-only codeword.
///
/// `document` is at most `s * B` bytes (it is zero-padded to `s` blocks; its true length is
/// recorded). `pointers` are exactly `t` distinct `(key, stored bytes)` pairs: each real
/// pointer's stored bytes are verified against its key and its payload is used as input symbol
/// `s + i`; for an anchor key (see [`BlockKey::anchor`]) the bytes are ignored (pass `&[]`).
///
/// Returns the codeword's record and its `p` stored parity blocks in index order. Large
/// codewords use several cores ([`Parallelism::AUTO`]; see [`encode_with`]). Other layouts:
/// [`encode_layout`].
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
    parity_only(encode_layout(
        Layout::ParityOnly,
        par,
        params,
        id,
        document,
        pointers,
    )?)
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
    parity_only(encode_verified_layout(
        Layout::ParityOnly,
        par,
        params,
        id,
        document,
        pointers,
    )?)
}

/// The parity-only form of what the encoder returned for [`Layout::ParityOnly`].
fn parity_only((record, blocks): EncodedRecord) -> Result<Encoded, Error> {
    Ok((CodewordRecord::try_from(record)?, blocks))
}

/// Encodes one codeword of `layout`: [`encode_with`]'s arguments and checks.
///
/// Returns the record and the stored blocks in stored index order. For
/// [`Layout::ParityOnly`] they are exactly [`encode_with`]'s. For [`Layout::Systematic`] the
/// first `s` are the source blocks, each a header (version 2, kind 1) and the source symbol
/// (the document's bytes `i b .. (i + 1) b`, the last one zero-padded to the shard `b`), then
/// the `p` parities, whose payloads are exactly those of the parity-only encoding of the same
/// document and pointers (the same Reed-Solomon code; only what is stored differs).
pub fn encode_layout(
    layout: Layout,
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[(BlockKey, &[u8])],
) -> Result<EncodedRecord, Error> {
    check_encode_args(
        layout,
        &params,
        document.len(),
        pointers.iter().map(|(k, _)| *k),
    )?;
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
    encode_core(layout, par, params, id, document, ptrs)
}

/// [`encode_layout`] over pointers checked beforehand ([`Pointer::verify`]).
pub fn encode_verified_layout(
    layout: Layout,
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: &[Pointer<'_>],
) -> Result<EncodedRecord, Error> {
    check_encode_args(
        layout,
        &params,
        document.len(),
        pointers.iter().map(Pointer::key),
    )?;
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
            Some(payload) if payload.len() <= params.block() => Ptr::Checked(payload),
            Some(payload) => {
                return Err(Error::BadPointer {
                    key: p.key,
                    reason: format!(
                        "payload is {} bytes, more than the block size {}",
                        payload.len(),
                        params.block()
                    ),
                })
            }
        };
        ptrs.push((p.key, ptr));
    }
    encode_core(layout, par, params, id, document, ptrs)
}

/// One job per stored block of `blocks` (header room `hlen`): its payload hash and key parts.
fn stored_jobs<'a>(
    blocks: &'a [Vec<u8>],
    hlen: usize,
    payload_hashes: &'a mut [[u8; 32]],
    parts: &'a mut [Vec<[u8; 32]>],
) -> impl Iterator<Item = Job<'a>> {
    blocks
        .iter()
        .zip(payload_hashes.iter_mut())
        .zip(parts.iter_mut())
        .map(move |((blk, payload_hash), key_parts)| Job::Stored {
            block: blk,
            hlen,
            payload_hash,
            key_parts,
        })
}

/// Encodes one codeword whose arguments were checked by [`check_encode_args`].
fn encode_core(
    layout: Layout,
    par: Parallelism,
    params: Params,
    id: CodewordId,
    document: &[u8],
    pointers: Vec<(BlockKey, Ptr<'_>)>,
) -> Result<EncodedRecord, Error> {
    let (s, t, p) = (params.s(), params.t(), params.p());
    // Every symbol of this codeword is one shard: a short document is not padded to s * B.
    let b = params.shard(document.len() as u64);
    // Stored sources (systematic), the stored index of parity 0; and all stored blocks.
    let nsrc = layout.sources(&params);
    let n = layout.stored(&params);
    let hlen = header_len(t, n);
    let unchecked = pointers
        .iter()
        .filter(|(_, p)| matches!(p, Ptr::Unchecked { .. }))
        .count();
    // Hashing: document, unchecked pointers, payloads, stored blocks; coding: inputs.
    let threads = par.resolve((s + unchecked + 2 * n + s + t) * b);

    let source = |i: usize| {
        let start = (i * b).min(document.len());
        let end = ((i + 1) * b).min(document.len());
        &document[start..end]
    };
    let mut originals: Vec<Option<Input<'_>>> = Vec::with_capacity(s + t);
    for i in 0..s {
        originals.push(Some(Input::Bytes(source(i))));
    }
    for (_, ptr) in &pointers {
        originals.push(Some(match ptr {
            // A pointer's symbol is the first b bytes of its payload, zero-extended when
            // shorter (Input pads every segment it lacks with zeros).
            Ptr::Checked(payload)
            | Ptr::Unchecked {
                payload: Ok(payload),
                ..
            } => Input::Bytes(&payload[..payload.len().min(b)]),
            Ptr::Anchor
            | Ptr::Unchecked {
                payload: Err(_), ..
            } => Input::Zero,
        }));
    }

    // Every stored block is allocated once, header room first: a source's payload is copied
    // from the document (the last one zero-padded), a parity's written into it by the
    // Reed-Solomon step; the header once the payload hashes are known.
    let sources: Vec<Vec<u8>> = (0..nsrc)
        .map(|i| {
            let mut v = Vec::with_capacity(hlen + b);
            v.resize(hlen, 0);
            v.extend_from_slice(source(i));
            v.resize(hlen + b, 0);
            v
        })
        .collect();
    let mut parities: Vec<Vec<u8>> = (0..p)
        .map(|_| {
            let mut v = Vec::with_capacity(hlen + b);
            v.resize(hlen, 0);
            v
        })
        .collect();
    let mut content_hash = [0u8; 32];
    let mut pointer_hashes = vec![[0u8; 32]; t];
    let mut payload_hashes = vec![[0u8; 32]; n];
    let mut parts: Vec<Vec<[u8; 32]>> = vec![Vec::new(); n];
    let (source_hashes, parity_hashes) = payload_hashes.split_at_mut(nsrc);
    let (source_parts, parity_parts) = parts.split_at_mut(nsrc);

    // 1. Document hash, pointer hashes, source blocks' hashes, Reed-Solomon: independent jobs.
    let mut jobs = vec![Job::Hash(document, &mut content_hash)];
    for ((_, ptr), h) in pointers.iter().zip(pointer_hashes.iter_mut()) {
        if let Ptr::Unchecked { stored, .. } = ptr {
            jobs.push(Job::Hash(stored, h));
        }
    }
    jobs.extend(stored_jobs(&sources, hlen, source_hashes, source_parts));
    rs_encode_into(threads, &originals, &mut parities, hlen, b, jobs)?;
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

    // 2. Parity payload hashes, and the header-free parts of the parity blocks' hashes.
    run(
        threads,
        None,
        stored_jobs(&parities, hlen, parity_hashes, parity_parts).collect(),
    )?;

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
    let mut blocks: Vec<Vec<u8>> = sources;
    blocks.extend(parities);
    let mut stored_keys = Vec::with_capacity(n);
    for (j, (blk, parts)) in blocks.iter_mut().zip(&parts).enumerate() {
        // j < s + p <= u16::MAX: validated.
        write_header(&mut blk[..hlen], &fields, j as u16);
        stored_keys.push(BlockKey(key_of_parts(blk, hlen, parts)));
    }

    let record = Record {
        layout,
        id,
        params,
        pointers: keys,
        stored_keys: stored_keys.clone(),
        payload_hashes,
        len: document.len() as u64,
        content_hash,
    };
    Ok((record, stored_keys.into_iter().zip(blocks).collect()))
}

// ---------------------------------------------------------------------------------------------
// Gathering and decoding

/// A verified symbol: stored bytes and where the payload starts, or an anchor's zeros.
pub(crate) enum Symbol {
    Stored { bytes: Vec<u8>, start: usize },
    Zero,
}

impl Symbol {
    /// The symbol as an input of a codeword whose shard is `b`: the first `b` payload bytes,
    /// zero-extended when the payload is shorter.
    fn input(&self, b: usize) -> Input<'_> {
        match self {
            Symbol::Stored { bytes, start } => {
                Input::Bytes(&bytes[*start..bytes.len().min(*start + b)])
            }
            Symbol::Zero => Input::Zero,
        }
    }

    /// A stored block's payload (exactly the shard: checked when gathered).
    fn stored_payload(&self) -> Option<&[u8]> {
        match self {
            Symbol::Stored { bytes, start } => Some(&bytes[*start..]),
            Symbol::Zero => None,
        }
    }
}

/// The verified symbols gathered for one codeword.
pub(crate) struct Gathered {
    /// Input symbols `0..s+t`: the sources (held only for a systematic codeword), then the
    /// pointers.
    pub originals: Vec<Option<Symbol>>,
    /// Parity symbols `0..p`.
    pub recovery: Vec<Option<Symbol>>,
    /// Verified symbols held.
    pub have: usize,
    /// Keys whose bytes were fetched but failed verification.
    pub rejected: Vec<BlockKey>,
    /// The codeword's shard: the payload size of the stored blocks gathered (all equal), or
    /// for a systematic codeword the record's shard from the start.
    pub shard: Option<usize>,
    /// Stored sources of the codeword (0 for parity-only).
    pub sources: usize,
}

impl Gathered {
    /// The shard the symbols are coded at: that of the blocks gathered, or the record's
    /// when none was (not decodable then anyway: decoding needs `s >= 1` stored blocks).
    pub(crate) fn shard(&self, record: &RecordView<'_>) -> usize {
        self.shard
            .unwrap_or_else(|| record.params.shard(record.len))
    }

    /// Whether every stored source is held (a systematic codeword reads its document from
    /// them directly).
    pub(crate) fn sources_held(&self) -> bool {
        self.sources > 0 && self.originals[..self.sources].iter().all(Option::is_some)
    }
}

/// Which symbols a gather stops at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// `s + t` verified symbols (repair: every input symbol is restored).
    Decodable,
    /// The document: for a systematic codeword the `s` sources alone if they all verify
    /// (fetched first, as one batch), otherwise `s + t` symbols.
    Document,
}

/// Fetches verified symbols of `record` through `fetch`, in [`crate::fetch_order`]'s order
/// (sources, pointers, parities: input symbols make the decode cheaper), stopping at `s + t`.
pub(crate) fn gather(
    record: &RecordView<'_>,
    anchors: &Anchors,
    fetch: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
) -> Gathered {
    gather_with(record, anchors, fetch, 1, Want::Decodable)
}

#[derive(Clone, Copy)]
enum Slot {
    Pointer(usize),
    /// Stored index.
    Stored(usize),
}

/// [`gather`] hashing with up to `threads` threads. It fetches exactly the blocks [`gather`]
/// fetches, in the same order, and keeps the same symbols: blocks are fetched in batches of as
/// many as are still needed, and a batch is verified before the next is fetched. With
/// [`Want::Document`], a systematic codeword's first batch is its `s` sources, and the gather
/// ends there if they all verify.
fn gather_with(
    record: &RecordView<'_>,
    anchors: &Anchors,
    mut fetch: impl FnMut(&BlockKey) -> Option<Vec<u8>>,
    threads: usize,
    want: Want,
) -> Gathered {
    let params = &record.params;
    let (s, need) = (params.s(), params.needed());
    let nsrc = record.sources();
    let hlen = record.header_len();
    // A stored block's payload is the codeword's shard, or (parity-only) B if written before
    // shards; its key (a hash of the exact bytes) tells which.
    let sizes = record.payload_sizes();
    let size_ok = |n: usize| n.checked_sub(hlen).is_some_and(|b| sizes.allows(b));
    let mut g = Gathered {
        originals: (0..need).map(|_| None).collect(),
        recovery: (0..params.p()).map(|_| None).collect(),
        have: 0,
        rejected: Vec::new(),
        shard: (nsrc > 0).then_some(sizes.shard),
        sources: nsrc,
    };
    // Anchors cost nothing: take them first.
    for (i, key) in record.pointers.iter().enumerate() {
        if anchors.contains(key) {
            g.originals[s + i] = Some(Symbol::Zero);
            g.have += 1;
        }
    }
    let candidates: Vec<Slot> = (0..nsrc)
        .map(Slot::Stored)
        .chain(
            (0..record.pointers.len())
                .filter(|&i| g.originals[s + i].is_none())
                .map(Slot::Pointer),
        )
        .chain((nsrc..record.stored_keys.len()).map(Slot::Stored))
        .collect();
    let key_of = |slot: Slot| match slot {
        Slot::Pointer(i) => &record.pointers[i],
        Slot::Stored(j) => &record.stored_keys[j],
    };
    let mut next = 0;
    let mut first = true;
    while g.have < need && next < candidates.len() {
        // A document read of a systematic codeword fetches the sources alone first.
        let limit = if first && want == Want::Document && nsrc > 0 {
            nsrc
        } else {
            usize::MAX
        };
        let mut batch: Vec<(Slot, Vec<u8>)> = Vec::new();
        let mut taken = 0;
        while g.have + batch.len() < need && next < candidates.len() && taken < limit {
            let slot = candidates[next];
            next += 1;
            taken += 1;
            if let Some(bytes) = fetch(key_of(slot)) {
                batch.push((slot, bytes));
            }
        }
        let mut hashes = vec![[0u8; 32]; batch.len()];
        let jobs = batch
            .iter()
            .zip(hashes.iter_mut())
            // A stored block of the wrong size is rejected without hashing it.
            .filter(|((slot, bytes), _)| matches!(slot, Slot::Pointer(_)) || size_ok(bytes.len()))
            .map(|((_, bytes), h)| Job::Hash(bytes, h))
            .collect();
        // Hash jobs cannot fail.
        let _ = run(threads, None, jobs);
        for ((slot, bytes), h) in batch.into_iter().zip(hashes) {
            let key = key_of(slot);
            let start = match slot {
                _ if h != key.0 => None,
                Slot::Pointer(_) => checked_payload(params, key, &bytes)
                    .ok()
                    .map(|payload| bytes.len() - payload.len()),
                // All stored blocks of a codeword have one size (their keys were recorded
                // together).
                Slot::Stored(_) => (size_ok(bytes.len())
                    && g.shard.is_none_or(|b| b == bytes.len() - hlen))
                .then_some(hlen),
            };
            let Some(start) = start else {
                g.rejected.push(*key);
                continue;
            };
            match slot {
                Slot::Pointer(i) => {
                    g.originals[s + i] = Some(Symbol::Stored { bytes, start });
                }
                Slot::Stored(j) => {
                    g.shard = Some(bytes.len() - hlen);
                    let sym = Some(Symbol::Stored { bytes, start });
                    if j < nsrc {
                        g.originals[j] = sym;
                    } else {
                        g.recovery[j - nsrc] = sym;
                    }
                }
            }
            g.have += 1;
        }
        if first && want == Want::Document && g.sources_held() {
            break;
        }
        first = false;
    }
    g
}

/// The gathered symbols as Reed-Solomon inputs; [`Error::Undecodable`] with fewer than
/// `s + t`.
type Shards<'g> = (Vec<Option<Input<'g>>>, Vec<Option<&'g [u8]>>);

fn gathered_shards<'g>(record: &RecordView<'_>, g: &'g Gathered) -> Result<Shards<'g>, Error> {
    let params = &record.params;
    let b = g.shard(record);
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
        .map(|o| o.as_ref().and_then(Symbol::stored_payload))
        .collect();
    Ok((originals, recovery))
}

/// Restores all `s + t` input symbols of a codeword from gathered symbols.
pub(crate) fn restore_inputs(record: &RecordView<'_>, g: &Gathered) -> Result<Vec<Vec<u8>>, Error> {
    let params = &record.params;
    let (n, b) = (params.needed(), g.shard(record));
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
/// Every symbol is verified against the record (pointers by key, stored blocks by their
/// recorded keys); symbols that fail are treated as missing. A systematic codeword is read
/// from its `s` sources alone when they all verify (no Reed-Solomon: their payloads are the
/// document); otherwise, as a parity-only one, from any `s + t` verified symbols. With fewer
/// the result is [`Error::Undecodable`], never wrong bytes. The output is truncated to the
/// recorded length and checked against the recorded content hash. Large codewords use
/// several cores ([`Parallelism::AUTO`]; see [`decode_with`]).
///
/// `record` is a [`CodewordRecord`], a [`Record`], or a reference or `Arc` of one.
pub fn decode<R: AsRecord + ?Sized, S: SymbolSource + ?Sized>(
    record: &R,
    source: &S,
) -> Result<Vec<u8>, Error> {
    decode_with(Parallelism::AUTO, record, source)
}

/// [`decode`] with a choice of [`Parallelism`]. The result is the same for any choice, and
/// `source` is asked for the same blocks in the same order.
pub fn decode_with<R: AsRecord + ?Sized, S: SymbolSource + ?Sized>(
    par: Parallelism,
    record: &R,
    source: &S,
) -> Result<Vec<u8>, Error> {
    let record = record.view();
    record.validate()?;
    let params = &record.params;
    // Hashing: s + t symbols and the document; decoding: heavier than encoding.
    let threads = par
        .resolve((params.needed() + params.s() + 3 * params.needed()) * params.shard(record.len));
    let anchors = Anchors::new(params.block_size, params.t());
    let g = gather_with(
        &record,
        &anchors,
        |k| source.get(k),
        threads,
        Want::Document,
    );
    decode_gathered(&record, &g, threads)
}

/// Decodes the document bytes from already gathered symbols.
fn decode_gathered(
    record: &RecordView<'_>,
    g: &Gathered,
    threads: usize,
) -> Result<Vec<u8>, Error> {
    let params = &record.params;
    let (s, b) = (params.s(), g.shard(record));
    // len <= s * B was checked by validate(), so this fits in usize on any target that could
    // hold the blocks.
    let len = usize::try_from(record.len)
        .map_err(|_| Error::InvalidParams("document length exceeds usize".into()))?;
    let doc = if g.sources_held() {
        // Systematic, every source verified: the document is their payloads.
        let mut doc = Vec::with_capacity(len);
        for sym in g.originals[..s].iter().flatten() {
            let payload = sym.stored_payload().unwrap_or(&[]);
            doc.extend_from_slice(&payload[..payload.len().min(len - doc.len())]);
        }
        doc
    } else {
        let (originals, recovery) = gathered_shards(record, g)?;
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
        doc
    };
    if doc.len() != len || par_hash(threads, &doc) != record.content_hash {
        return Err(Error::ContentMismatch(record.id));
    }
    Ok(doc)
}

// ---------------------------------------------------------------------------------------------
// Documents

/// Splits `document` into codewords of at most `s * B` bytes and encodes each (parity-only),
/// in order.
///
/// An empty document is one codeword of length 0. Codeword `k` gets the id
/// `CodewordId::derive(document_id, k)`. Its pointers come from `pointers(k, done)`, where `done`
/// holds the codewords already encoded for this document (so a later codeword may point at an
/// earlier one's parities); it must return `t` `(key, stored bytes)` pairs as for [`encode`].
/// Other layouts: [`encode_document_layout`].
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
    pointers: F,
) -> Result<Vec<Encoded>, Error>
where
    F: FnMut(u64, &[Encoded]) -> Result<Vec<StoredBlock>, Error>,
{
    params.validate()?;
    encode_chunks(
        params,
        document_id,
        document,
        pointers,
        |id, chunk, refs| encode_with(par, params, id, chunk, refs),
    )
}

/// [`encode_document_with`] in `layout`: each codeword as [`encode_layout`] encodes it, and
/// `pointers(k, done)` sees the codewords already encoded with all their stored blocks (for a
/// systematic codeword, its sources and parities: any may be a pointer of a later one).
pub fn encode_document_layout<F>(
    layout: Layout,
    par: Parallelism,
    params: Params,
    document_id: &[u8; 32],
    document: &[u8],
    pointers: F,
) -> Result<Vec<EncodedRecord>, Error>
where
    F: FnMut(u64, &[EncodedRecord]) -> Result<Vec<StoredBlock>, Error>,
{
    encode_document_checked(
        PointerCheck::Hash,
        (layout, par, params),
        document_id,
        document,
        pointers,
    )
}

/// How the document encoders check the pointers' stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerCheck {
    /// Hash each against its key ([`encode_layout`]).
    Hash,
    /// The caller has checked every pointer's bytes against its key already (an encoder whose
    /// pointers are blocks it wrote itself or fetched and verified, like the node's): headers
    /// are parsed, bytes not hashed again (BLAKE3 of `t` blocks per codeword saved). Bytes
    /// that do not match their key give codewords that do not decode.
    Trusted,
}

/// [`encode_document_layout`] with a choice of [`PointerCheck`]; `how` is (layout,
/// parallelism, parameters). The result is byte for byte the same for both checks.
pub fn encode_document_checked<F, P>(
    check: PointerCheck,
    (layout, par, params): (Layout, Parallelism, Params),
    document_id: &[u8; 32],
    document: &[u8],
    pointers: F,
) -> Result<Vec<EncodedRecord>, Error>
where
    F: FnMut(u64, &[EncodedRecord]) -> Result<Vec<(BlockKey, P)>, Error>,
    P: AsRef<[u8]>,
{
    params.validate_for(layout)?;
    encode_chunks(
        params,
        document_id,
        document,
        pointers,
        |id, chunk, refs| match check {
            PointerCheck::Hash => encode_layout(layout, par, params, id, chunk, refs),
            PointerCheck::Trusted => {
                let ptrs = refs
                    .iter()
                    .map(|(k, b)| Pointer::trusted(&params, *k, b))
                    .collect::<Result<Vec<_>, _>>()?;
                encode_verified_layout(layout, par, params, id, chunk, &ptrs)
            }
        },
    )
}

/// The codeword loop of the document encoders: `encode_one(id, chunk, pointers)` per chunk.
fn encode_chunks<E, F, G, P>(
    params: Params,
    document_id: &[u8; 32],
    document: &[u8],
    mut pointers: F,
    mut encode_one: G,
) -> Result<Vec<E>, Error>
where
    F: FnMut(u64, &[E]) -> Result<Vec<(BlockKey, P)>, Error>,
    P: AsRef<[u8]>,
    G: FnMut(CodewordId, &[u8], &[(BlockKey, &[u8])]) -> Result<E, Error>,
{
    let cap = params.capacity() as usize;
    let chunks: Vec<&[u8]> = if document.is_empty() {
        vec![document]
    } else {
        document.chunks(cap).collect()
    };
    let mut done: Vec<E> = Vec::with_capacity(chunks.len());
    for (k, chunk) in chunks.into_iter().enumerate() {
        let k = k as u64;
        let ptrs = pointers(k, &done)?;
        let refs: Vec<(BlockKey, &[u8])> = ptrs.iter().map(|(k, b)| (*k, b.as_ref())).collect();
        done.push(encode_one(
            CodewordId::derive(document_id, k),
            chunk,
            &refs,
        )?);
    }
    Ok(done)
}

/// Decodes a document made of `records` (in order, as [`encode_document`] or
/// [`encode_document_layout`] returned them), of either layout.
pub fn decode_document<R: AsRecord, S: SymbolSource + ?Sized>(
    records: &[R],
    source: &S,
) -> Result<Vec<u8>, Error> {
    decode_document_with(Parallelism::AUTO, records, source)
}

/// [`decode_document`] with a choice of [`Parallelism`] for each codeword.
pub fn decode_document_with<R: AsRecord, S: SymbolSource + ?Sized>(
    par: Parallelism,
    records: &[R],
    source: &S,
) -> Result<Vec<u8>, Error> {
    if records.is_empty() {
        return Err(Error::InconsistentDocument("no codewords".into()));
    }
    let mut out = Vec::new();
    for (k, r) in records.iter().enumerate() {
        let v = r.view();
        if k + 1 < records.len() && v.len != v.params.capacity() {
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

    type EncodeFn = fn(Params, CodewordId, &[u8], &[(BlockKey, &[u8])]) -> EncodedRecord;

    /// Encodes a fixed set of codewords (anchors, real pointers, short documents, tails, low- and
    /// high-rate codes, several column segments) with `encode` and hashes every stored byte and
    /// record field.
    fn golden_digest(encode: EncodeFn) -> [u8; 32] {
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
                let (rec, blocks) = encode(params, CodewordId(id), &doc, &ptrs);
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

    /// The stored bytes are those of the plain reference codec ([`reference_encode`]: whole-shard
    /// reed-solomon-simd calls, `ParityHeader::stored_bytes`), and the digest is pinned: a change
    /// of stored bytes is a change of format, never an accident. (Before shards, with every
    /// payload `B` bytes, it was bbc045e8...; the full codewords' bytes did not change.)
    #[test]
    fn stored_bytes_are_those_of_the_reference_codec() {
        let fast = golden_digest(|p, id, d, ptrs| {
            let (rec, blocks) = encode(p, id, d, ptrs).expect("encode");
            (rec.into(), blocks)
        });
        assert_eq!(
            fast,
            golden_digest(|p, id, d, ptrs| {
                let (rec, blocks) = reference_encode(p, id, d, ptrs);
                (rec.into(), blocks)
            })
        );
        assert_eq!(
            hex::encode(fast),
            "d4d697106d15dd5306ffbe465f57d4e8e7f1daf86949ae9b7428b40d5cf69535"
        );
    }

    /// The systematic layout's stored bytes are those of its plain reference
    /// ([`reference_systematic`]: the parity-only reference's parity payloads, the padded
    /// sources, every header from a cloned [`ParityHeader`]), pinned like the parity-only ones.
    #[test]
    fn systematic_stored_bytes_are_those_of_the_reference_codec() {
        let fast = golden_digest(|p, id, d, ptrs| {
            let par = Parallelism::AUTO;
            encode_layout(Layout::Systematic, par, p, id, d, ptrs).expect("encode")
        });
        assert_eq!(fast, golden_digest(reference_systematic));
        assert_eq!(
            hex::encode(fast),
            "ab7b251df286363085964f77a01f20e9411ea360b0e288c06babe434c175cfe4"
        );
    }

    /// Systematic codes, with `p < s` too (allowed in this layout only).
    const SYSTEMATIC_CODES: &[(u16, u16, u16, u32)] = &[
        (4, 8, 8, 200_002),
        (4, 8, 12, 70_000),
        (2, 10, 6, 65_602),
        (1, 10, 3, 4_098),
        (4, 8, 2, 4_096),
        (3, 2, 1, 64),
        (2, 3, 4, 16),
        (1, 0, 1, 2),
    ];

    /// Every encoder path (threads, pre-verified pointers) gives the reference bytes; the
    /// parities' payloads are those of the parity-only encoding of the same inputs, the
    /// sources' payloads the padded document; every block parses, and re-forms from its
    /// payload.
    #[test]
    fn systematic_paths_give_the_reference_bytes() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for &(s, t, p, b) in SYSTEMATIC_CODES {
            let params = Params::new(s, t, p, b);
            let cap = params.capacity() as usize;
            for len in [cap, cap - 1, b as usize / 2 + 1, 0] {
                let (doc, pointers) = fixture(wide(params), &mut rng, len);
                let refs: Vec<(BlockKey, &[u8])> =
                    pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                let id = CodewordId([len as u8 ^ 0x55; 32]);
                let want = reference_systematic(params, id, &doc, &refs);
                for par in [
                    Parallelism::SINGLE,
                    Parallelism::threads(3),
                    Parallelism::AUTO,
                ] {
                    let got =
                        encode_layout(Layout::Systematic, par, params, id, &doc, &refs).unwrap();
                    assert_eq!(got, want, "{params:?} len {len} {par:?}");
                    let verified: Vec<Pointer<'_>> = refs
                        .iter()
                        .map(|(k, v)| Pointer::verify(&params, *k, v).unwrap())
                        .collect();
                    let got = encode_verified_layout(
                        Layout::Systematic,
                        par,
                        params,
                        id,
                        &doc,
                        &verified,
                    )
                    .unwrap();
                    assert_eq!(got, want, "verified {params:?} len {len} {par:?}");
                }
                let (rec, blocks) = &want;
                let shard = params.shard(len as u64);
                let hlen = header_len(params.t(), params.s() + params.p());
                assert_eq!(blocks.len(), params.s() + params.p());
                for (j, (key, bytes)) in blocks.iter().enumerate() {
                    assert_eq!(bytes.len(), hlen + shard);
                    let payload = &bytes[hlen..];
                    assert_eq!(rec.reform(j, payload).as_deref(), Some(&bytes[..]));
                    let parsed = crate::block::parse(bytes).unwrap();
                    assert_eq!(usize::from(parsed.header.index), j);
                    assert_eq!(parsed.header.is_source(), j < params.s());
                    assert_eq!(parsed.header.layout(), Layout::Systematic);
                    assert!(rec.matches_header(&parsed.header));
                    assert_eq!(BlockKey::of(bytes), *key);
                    if j < params.s() {
                        let mut want =
                            doc[(j * shard).min(len)..((j + 1) * shard).min(len)].to_vec();
                        want.resize(shard, 0);
                        assert_eq!(payload, &want[..], "source {j}");
                    }
                }
                // The same Reed-Solomon code: the parity-only encoding of the same inputs with
                // p parities has the same parity payloads (when p >= s makes it valid).
                if params.validate().is_ok() {
                    let (_, v1) = encode(params, id, &doc, &refs).unwrap();
                    let h1 = header_len(params.t(), params.p());
                    for (j, (_, bytes)) in v1.iter().enumerate() {
                        assert_eq!(&bytes[h1..], &blocks[params.s() + j].1[hlen..]);
                    }
                }
            }
        }
    }

    /// Systematic codewords decode (directly or through Reed-Solomon) under random losses
    /// of up to p symbols, and restore the true input symbols.
    #[test]
    fn systematic_decode_and_restore_under_random_losses() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for &(s, t, p, b) in SYSTEMATIC_CODES {
            let params = Params::new(s, t, p, b);
            let len = (params.capacity() as usize).saturating_sub(3);
            let b = params.shard(len as u64);
            let (doc, pointers) = fixture(wide(params), &mut rng, len);
            let refs: Vec<(BlockKey, &[u8])> =
                pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let (rec, blocks) = encode_layout(
                Layout::Systematic,
                Parallelism::AUTO,
                params,
                CodewordId([1; 32]),
                &doc,
                &refs,
            )
            .unwrap();
            let mut truth: Vec<Vec<u8>> = (0..params.s())
                .map(|i| {
                    let mut v = doc[(i * b).min(len)..((i + 1) * b).min(len)].to_vec();
                    v.resize(b, 0);
                    v
                })
                .collect();
            for (_, stored) in &pointers {
                let mut sym = if stored.is_empty() {
                    Vec::new()
                } else {
                    verified_payload(stored).unwrap().1.to_vec()
                };
                sym.resize(b, 0);
                truth.push(sym);
            }
            let full: BTreeMap<BlockKey, Vec<u8>> =
                pointers.iter().cloned().chain(blocks).collect();
            let symbols: Vec<BlockKey> = rec
                .pointers
                .iter()
                .chain(&rec.stored_keys)
                .copied()
                .collect();
            let anchors = Anchors::new(params.block_size, params.t());
            for round in 0..8 {
                let mut store = full.clone();
                let lose = if round == 0 {
                    0
                } else {
                    rng.gen_range(0..=params.p())
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
                let g = gather(&rec.view(), &anchors, |k| store.get(k).cloned());
                assert_eq!(
                    restore_inputs(&rec.view(), &g).unwrap(),
                    truth,
                    "{params:?}"
                );
            }
        }
    }

    /// A short codeword written before shards (every payload `B` bytes) still decodes, and
    /// its lost parities are rebuilt at their own size, byte-exact.
    #[test]
    fn codewords_written_before_shards_still_decode_and_repair() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let params = Params::new(4, 8, 12, 4096);
        let (doc, pointers) = fixture(params, &mut rng, 1000);
        let refs: Vec<(BlockKey, &[u8])> =
            pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let (rec, blocks) = reference_encode_at(4096, params, CodewordId([4; 32]), &doc, &refs);
        assert_eq!(blocks[0].1.len(), header_len(8, 12) + 4096);
        let mut store: BTreeMap<BlockKey, Vec<u8>> =
            pointers.iter().cloned().chain(blocks.clone()).collect();
        assert_eq!(decode(&rec, &store).unwrap(), doc);
        for (k, _) in &blocks[..params.e()] {
            store.remove(k);
        }
        assert_eq!(decode(&rec, &store).unwrap(), doc);
        let mut index = crate::RecordIndex::new();
        index.insert(rec.clone()).unwrap();
        let fixed = crate::rebuild_codeword(&index, &rec, &store).unwrap();
        assert_eq!(fixed.rebuilt.len(), params.e());
        for rb in fixed.rebuilt {
            assert!(blocks.contains(&(rb.key, rb.bytes)));
        }
        // The same document now is stored at its shard: 12 x 256 bytes, not 12 x 4096.
        let (_, now) = encode(params, CodewordId([4; 32]), &doc, &refs).unwrap();
        assert_eq!(now[0].1.len(), header_len(8, 12) + 256);
    }

    /// Full codewords (shard = B) are stored exactly as before shards existed: blocks already
    /// in rings keep their keys.
    #[test]
    fn full_codewords_are_unchanged_by_shards() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let params = Params::new(4, 8, 12, 4096);
        let (doc, pointers) = fixture(params, &mut rng, params.capacity() as usize);
        let refs: Vec<(BlockKey, &[u8])> =
            pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let (_, blocks) = encode(params, CodewordId([3; 32]), &doc, &refs).unwrap();
        let hlen = header_len(8, 12);
        assert!(blocks.iter().all(|(_, b)| b.len() == hlen + 4096));
    }

    fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        v
    }

    /// The codec in its plainest form: one reed-solomon-simd call over whole shards (the
    /// codeword's shard size; sources zero-padded, pointer payloads cut or zero-extended to
    /// it), then every header built from a cloned [`ParityHeader`].
    fn reference_encode(
        params: Params,
        id: CodewordId,
        document: &[u8],
        pointers: &[(BlockKey, &[u8])],
    ) -> Encoded {
        reference_encode_at(
            params.shard(document.len() as u64),
            params,
            id,
            document,
            pointers,
        )
    }

    /// [`reference_encode`] with shards of `b` bytes (`B` is how every codeword was written
    /// before shards).
    fn reference_encode_at(
        b: usize,
        params: Params,
        id: CodewordId,
        document: &[u8],
        pointers: &[(BlockKey, &[u8])],
    ) -> Encoded {
        let symbols = reference_symbols(b, params, document, pointers);
        let parities = reference_parities(params, &symbols, b);
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

    /// The `s + t` input symbols of `b` bytes: the document zero-padded, then the pointer
    /// payloads cut or zero-extended (anchors: zeros).
    fn reference_symbols(
        b: usize,
        params: Params,
        document: &[u8],
        pointers: &[(BlockKey, &[u8])],
    ) -> Vec<Vec<u8>> {
        let anchors = Anchors::new(params.block_size, params.t());
        let mut padded = vec![0u8; params.s() * b];
        padded[..document.len()].copy_from_slice(document);
        let mut symbols: Vec<Vec<u8>> = padded.chunks_exact(b).map(<[u8]>::to_vec).collect();
        for (key, stored) in pointers {
            let mut sym = if anchors.contains(key) {
                Vec::new()
            } else {
                pointer_payload(&params, key, stored).unwrap().to_vec()
            };
            sym.resize(b, 0);
            symbols.push(sym);
        }
        symbols
    }

    /// The `p` recovery symbols of `symbols`: one reed-solomon-simd call over whole shards.
    fn reference_parities(params: Params, symbols: &[Vec<u8>], b: usize) -> Vec<Vec<u8>> {
        let mut enc = ReedSolomonEncoder::new(params.needed(), params.p(), b).unwrap();
        for o in symbols {
            enc.add_original_shard(o).unwrap();
        }
        let parities = enc
            .encode()
            .unwrap()
            .recovery_iter()
            .map(<[u8]>::to_vec)
            .collect();
        parities
    }

    /// The systematic codec in its plainest form: the sources zero-padded to the shard, the
    /// parities of the same whole-shard reed-solomon-simd call as [`reference_encode_at`],
    /// every header built from a cloned [`ParityHeader`].
    fn reference_systematic(
        params: Params,
        id: CodewordId,
        document: &[u8],
        pointers: &[(BlockKey, &[u8])],
    ) -> EncodedRecord {
        let b = params.shard(document.len() as u64);
        let symbols = reference_symbols(b, params, document, pointers);
        let mut payloads: Vec<Vec<u8>> = symbols[..params.s()].to_vec();
        payloads.extend(reference_parities(params, &symbols, b));
        let mut record = Record {
            layout: Layout::Systematic,
            id,
            params,
            pointers: pointers.iter().map(|(k, _)| *k).collect(),
            stored_keys: Vec::new(),
            payload_hashes: payloads
                .iter()
                .map(|p| *blake3::hash(p).as_bytes())
                .collect(),
            len: document.len() as u64,
            content_hash: *blake3::hash(document).as_bytes(),
        };
        let mut blocks = Vec::new();
        for (j, payload) in payloads.iter().enumerate() {
            let stored = record.header(j as u16).stored_bytes(payload);
            let key = BlockKey::of(&stored);
            record.stored_keys.push(key);
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

    /// `params` with `p` raised to `s` if below (a parity-only code of the same `s, t, B`).
    fn wide(params: Params) -> Params {
        Params {
            p: params.p.max(params.s),
            ..params
        }
    }

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
                let hlen = header_len(params.t(), params.p());
                for (j, (_, bytes)) in blocks.iter().enumerate() {
                    assert_eq!(bytes.len(), hlen + params.shard(len as u64));
                    let payload = &bytes[hlen..];
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
            let b = b.min(params.shard(len as u64));
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
                let mut sym = if stored.is_empty() {
                    Vec::new()
                } else {
                    let hlen = header_len(params.t(), params.p());
                    stored[hlen..].to_vec()
                };
                sym.resize(b, 0);
                truth.push(sym);
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
                let g = gather(&rec.view(), &anchors, |k| store.get(k).cloned());
                assert_eq!(
                    restore_inputs(&rec.view(), &g).unwrap(),
                    truth,
                    "{params:?}"
                );
            }
        }
    }

    /// The batched, parallel gather fetches the same blocks in the same order and keeps the
    /// same symbols as one-by-one verification, with corrupt and missing blocks, in both
    /// layouts and for both purposes (a systematic document read takes the sources first).
    #[test]
    fn gather_with_threads_matches_gather() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let params = Params::new(2, 10, 6, 4096);
        let (doc, pointers) = fixture(params, &mut rng, 5000);
        let refs: Vec<(BlockKey, &[u8])> =
            pointers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        for layout in [Layout::ParityOnly, Layout::Systematic] {
            let par1 = Parallelism::SINGLE;
            let (rec, blocks) =
                encode_layout(layout, par1, params, CodewordId([2; 32]), &doc, &refs).unwrap();
            let view = rec.view();
            let full: BTreeMap<BlockKey, Vec<u8>> =
                pointers.iter().cloned().chain(blocks).collect();
            let keys: Vec<BlockKey> = full.keys().copied().collect();
            let anchors = Anchors::new(params.block_size, params.t());
            for round in 0..50 {
                let mut store = full.clone();
                for k in &keys {
                    match rng.gen_range(0..if round % 5 == 0 { 12 } else { 6 }) {
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
                for want in [Want::Decodable, Want::Document] {
                    let mut seq = Vec::new();
                    let a = gather_with(
                        &view,
                        &anchors,
                        |k| {
                            seq.push(*k);
                            store.get(k).cloned()
                        },
                        1,
                        want,
                    );
                    let mut par = Vec::new();
                    let b = gather_with(
                        &view,
                        &anchors,
                        |k| {
                            par.push(*k);
                            store.get(k).cloned()
                        },
                        3,
                        want,
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
                    // A systematic read with its sources all there fetches nothing else.
                    let s = params.s();
                    if want == Want::Document && layout == Layout::Systematic {
                        let all = rec
                            .source_keys()
                            .iter()
                            .all(|k| store.get(k) == full.get(k));
                        assert_eq!(a.sources_held(), all);
                        if all {
                            assert_eq!(seq, rec.source_keys());
                        } else {
                            assert_eq!(&seq[..s], rec.source_keys());
                        }
                    }
                    if want == Want::Decodable {
                        let mut again = Vec::new();
                        let c = gather(&view, &anchors, |k| {
                            again.push(*k);
                            store.get(k).cloned()
                        });
                        assert_eq!((again, c.have), (seq, a.have));
                    }
                }
                let want = decode_with(Parallelism::SINGLE, &rec, &store);
                let got = decode_with(Parallelism::threads(3), &rec, &store);
                assert_eq!(format!("{want:?}"), format!("{got:?}"));
                if let Ok(d) = want {
                    assert_eq!(d, doc);
                }
            }
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
