//! Repair to a fixed point through codewords and reverse references.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use serde::{Deserialize, Serialize};

use crate::codec::{gather, restore_inputs, rs_encode, Gathered};
use crate::key::{Anchors, BlockKey, CodewordId};
use crate::params::Layout;
use crate::record::{AsRecord, Record, RecordView};
use crate::source::SymbolSource;
use crate::Error;

/// The codeword records known to a repairer (of either layout), with the two lookups repair
/// needs: which codeword a stored block belongs to, and which codewords point at a block
/// (reverse references).
#[derive(Debug, Clone, Default)]
pub struct RecordIndex {
    records: BTreeMap<CodewordId, Record>,
    stored_of: BTreeMap<BlockKey, (CodewordId, usize)>,
    referrers: BTreeMap<BlockKey, BTreeSet<CodewordId>>,
}

impl RecordIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a (validated) record: a [`crate::CodewordRecord`] or a [`Record`]. Re-inserting
    /// the same record is a no-op; a different record under an existing id, or a stored key
    /// already owned by another codeword, is an error.
    pub fn insert(&mut self, record: impl Into<Record>) -> Result<(), Error> {
        let record: Record = record.into();
        record.validate()?;
        if let Some(old) = self.records.get(&record.id) {
            if *old == record {
                return Ok(());
            }
            return Err(Error::InvalidRecord {
                id: record.id,
                reason: "a different record with this id exists".into(),
            });
        }
        for (j, k) in record.stored_keys.iter().enumerate() {
            if let Some((other, _)) = self.stored_of.get(k) {
                return Err(Error::InvalidRecord {
                    id: record.id,
                    reason: match record.layout {
                        Layout::ParityOnly => format!("parity {j} is already a parity of {other}"),
                        Layout::Systematic => {
                            format!("stored block {j} is already a stored block of {other}")
                        }
                    },
                });
            }
        }
        for (j, k) in record.stored_keys.iter().enumerate() {
            self.stored_of.insert(*k, (record.id, j));
        }
        for k in &record.pointers {
            self.referrers.entry(*k).or_default().insert(record.id);
        }
        self.records.insert(record.id, record);
        Ok(())
    }

    /// Removes a codeword's record (for example when its document is deleted) with its
    /// stored-block and reverse-reference entries; returns it.
    pub fn remove(&mut self, id: &CodewordId) -> Option<Record> {
        let record = self.records.remove(id)?;
        for k in &record.stored_keys {
            self.stored_of.remove(k);
        }
        for k in &record.pointers {
            if let Some(set) = self.referrers.get_mut(k) {
                set.remove(id);
                if set.is_empty() {
                    self.referrers.remove(k);
                }
            }
        }
        Some(record)
    }

    /// The record of `id`.
    #[must_use]
    pub fn get(&self, id: &CodewordId) -> Option<&Record> {
        self.records.get(id)
    }

    /// The codeword and stored index of the block stored under `key` (a parity, or a
    /// systematic codeword's source).
    #[must_use]
    pub fn locate(&self, key: &BlockKey) -> Option<(CodewordId, usize)> {
        self.stored_of.get(key).copied()
    }

    /// The codewords that use `key` as a pointer.
    pub fn referrers(&self, key: &BlockKey) -> impl Iterator<Item = &CodewordId> {
        self.referrers.get(key).into_iter().flatten()
    }

    /// Every codeword in which `key` is a symbol: its own (if it is a stored block) and its
    /// referrers.
    #[must_use]
    pub fn codewords_of(&self, key: &BlockKey) -> Vec<CodewordId> {
        let mut out: Vec<CodewordId> = self.locate(key).map(|(c, _)| c).into_iter().collect();
        out.extend(self.referrers(key).copied());
        out
    }

    /// Number of records.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the index is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// All records, by id.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Re-forms the stored bytes of the stored block `key` (a parity or a source) from its
    /// symbol in a codeword that points at it, using its own record, and verifies them against
    /// `key`. The symbol is the first
    /// `b` bytes of the payload, zero-extended, where `b` is the pointing codeword's shard: a
    /// payload longer than `b` cannot be rebuilt from it (`None`).
    #[must_use]
    pub fn reform(&self, key: &BlockKey, symbol: &[u8]) -> Option<Vec<u8>> {
        let (cid, j) = self.locate(key)?;
        let rec = self.records.get(&cid)?;
        rec.reform_from_symbol(j, symbol)
    }
}

/// The part a rebuilt block plays in the codeword that rebuilt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The parity at stored index `j` of the codeword (re-encoded): parity `j` of a
    /// parity-only codeword, parity `j - s` of a systematic one.
    Parity(usize),
    /// Pointer `i` of the codeword (input symbol `s + i`).
    Pointer(usize),
    /// Source `i` of a systematic codeword (input symbol `i`, stored index `i`).
    Source(usize),
}

/// One block rebuilt by repair, verified against its recorded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltBlock {
    /// Its key.
    pub key: BlockKey,
    /// Its exact stored bytes (they hash to `key`).
    pub bytes: Vec<u8>,
    /// The codeword whose decoding rebuilt it.
    pub via: CodewordId,
    /// Its role in that codeword.
    pub role: Role,
}

/// What a repair run did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// Rebuilt blocks, in the order they were rebuilt.
    pub rebuilt: Vec<RebuiltBlock>,
    /// Codewords decoded to rebuild them.
    pub codewords_decoded: usize,
    /// Blocks read from the source (anchors and blocks rebuilt in this run are free).
    pub blocks_read: usize,
    /// Blocks whose payload was recovered but that could not be re-formed and verified (their
    /// own record is unknown, or the bytes did not match the key). They are not returned.
    pub unverified: Vec<BlockKey>,
    /// Codewords still missing symbols at the fixed point and undecodable.
    pub undecodable: Vec<CodewordId>,
    /// Blocks the source returned that failed verification (treated as missing).
    pub corrupt: Vec<BlockKey>,
}

impl RepairReport {
    /// Blocks read per rebuilt block (0 when nothing was rebuilt).
    #[must_use]
    pub fn reads_per_rebuilt_block(&self) -> f64 {
        if self.rebuilt.is_empty() {
            0.0
        } else {
            self.blocks_read as f64 / self.rebuilt.len() as f64
        }
    }
}

/// The blocks one codeword decode produced.
struct Rebuilt {
    blocks: Vec<(BlockKey, Vec<u8>, Role)>,
    unverified: Vec<BlockKey>,
}

/// Decodes `rec` from gathered symbols and rebuilds the listed missing pointers and stored
/// blocks (by stored index: sources and parities), each re-formed with its own record and
/// verified against its key.
fn rebuild_from(
    index: &RecordIndex,
    rec: &RecordView<'_>,
    g: &Gathered,
    missing_ptrs: &[usize],
    missing_stored: &[usize],
) -> Result<Rebuilt, Error> {
    let params = rec.params;
    let nsrc = rec.sources();
    let inputs = restore_inputs(rec, g)?;
    let mut out = Rebuilt {
        blocks: Vec::new(),
        unverified: Vec::new(),
    };
    let mut push = |key: BlockKey, bytes: Option<Vec<u8>>, role: Role| match bytes {
        Some(bytes) => out.blocks.push((key, bytes, role)),
        None => out.unverified.push(key),
    };
    for &i in missing_ptrs {
        let key = rec.pointers[i];
        push(
            key,
            index.reform(&key, &inputs[params.s() + i]),
            Role::Pointer(i),
        );
    }
    // A source's payload is its input symbol, exactly.
    for &j in missing_stored.iter().filter(|&&j| j < nsrc) {
        push(
            rec.stored_keys[j],
            rec.reform(j, &inputs[j]),
            Role::Source(j),
        );
    }
    if missing_stored.iter().any(|&j| j >= nsrc) {
        let refs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
        let parities = rs_encode(&params, &refs)?;
        for &j in missing_stored.iter().filter(|&&j| j >= nsrc) {
            push(
                rec.stored_keys[j],
                rec.reform(j, &parities[j - nsrc]),
                Role::Parity(j),
            );
        }
    }
    Ok(out)
}

/// The outcome of [`rebuild_codeword`].
#[derive(Debug, Clone, Default)]
pub struct CodewordRepair {
    /// Rebuilt blocks, verified against their keys.
    pub rebuilt: Vec<RebuiltBlock>,
    /// Missing pointers whose payload was recovered but that could not be re-formed and
    /// verified (their own record is not in the index).
    pub unverified: Vec<BlockKey>,
    /// Blocks read from the source.
    pub blocks_read: usize,
    /// Blocks the source returned that failed verification (treated as missing).
    pub corrupt: Vec<BlockKey>,
}

/// Repairs one codeword (of either layout): every symbol (pointer, source or parity) that
/// `source` does not have is rebuilt from the ones it has, if at least `s + t` verify. This is
/// one step of [`repair`], for a caller that drives the fixed point itself (for example with
/// asynchronous fetches: fetch the keys of [`fetch_order`] into a map, call this, store the
/// blocks, then revisit [`RecordIndex::codewords_of`] each rebuilt key).
pub fn rebuild_codeword<R: AsRecord + ?Sized, S: SymbolSource + ?Sized>(
    index: &RecordIndex,
    record: &R,
    source: &S,
) -> Result<CodewordRepair, Error> {
    let record = &record.view();
    record.validate()?;
    let params = record.params;
    let anchors = Anchors::new(params.block_size, params.t());
    let mut report = CodewordRepair::default();
    let mut fetched: BTreeMap<BlockKey, Option<Vec<u8>>> = BTreeMap::new();
    let g = gather(record, &anchors, |k| {
        let v = source.get(k);
        report.blocks_read += usize::from(v.is_some());
        fetched.insert(*k, v.clone());
        v
    });
    report.corrupt = g.rejected.clone();
    let absent = |k: &BlockKey| -> bool {
        if anchors.contains(k) {
            return false;
        }
        if g.rejected.contains(k) {
            return true;
        }
        match fetched.get(k) {
            Some(v) => v.is_none(),
            None => !source.contains(k),
        }
    };
    let missing_ptrs: Vec<usize> = (0..params.t())
        .filter(|&i| absent(&record.pointers[i]))
        .collect();
    let missing_stored: Vec<usize> = (0..record.stored_keys.len())
        .filter(|&j| absent(&record.stored_keys[j]))
        .collect();
    if missing_ptrs.is_empty() && missing_stored.is_empty() {
        return Ok(report);
    }
    let out = rebuild_from(index, record, &g, &missing_ptrs, &missing_stored)?;
    report.unverified = out.unverified;
    report.rebuilt = out
        .blocks
        .into_iter()
        .map(|(key, bytes, role)| RebuiltBlock {
            key,
            bytes,
            via: record.id,
            role,
        })
        .collect();
    Ok(report)
}

/// The keys a reader of `record` fetches, in the order decoding prefers them: the sources of a
/// systematic codeword (when all of them verify they are the document: no other fetch, no
/// decode), then the pointers (input symbols make decoding cheaper), then the parities;
/// anchors are left out (never stored). Any `s + t - (number of anchors)` of them that verify
/// are enough.
#[must_use]
pub fn fetch_order<R: AsRecord + ?Sized>(record: &R) -> Vec<BlockKey> {
    let record = record.view();
    let anchors = Anchors::new(record.params.block_size, record.params.t());
    record
        .source_keys()
        .iter()
        .chain(record.pointers.iter().filter(|k| !anchors.contains(k)))
        .chain(record.parity_keys())
        .copied()
        .collect()
}

/// Repairs every codeword of `index` to a fixed point: any codeword with at least `s + t`
/// known symbols is decoded, its missing parities re-encoded, its missing sources (systematic)
/// and pointers rebuilt as input symbols `i` and `s + i`; every rebuilt block is re-formed with its own record and verified
/// against its key; codewords that share a rebuilt block are revisited, until nothing changes.
///
/// `source` is read only; the caller stores the rebuilt blocks of the report.
pub fn repair<S: SymbolSource + ?Sized>(index: &RecordIndex, source: &S) -> RepairReport {
    let all: Vec<CodewordId> = index.records.keys().copied().collect();
    run(index, source, all)
}

/// Like [`repair`], but starts from the codewords in which the `lost` blocks are symbols (their
/// own codewords and their referrers) instead of visiting every codeword; the fixed point is
/// the same for the blocks reachable from there.
pub fn repair_lost<S: SymbolSource + ?Sized>(
    index: &RecordIndex,
    source: &S,
    lost: impl IntoIterator<Item = BlockKey>,
) -> RepairReport {
    let mut start = BTreeSet::new();
    for k in lost {
        start.extend(index.codewords_of(&k));
    }
    run(index, source, start.into_iter().collect())
}

/// What repair knows about block availability.
struct Availability<'a, S: ?Sized> {
    source: &'a S,
    /// Memoized `source.contains`, turned to `false` when a block fails verification.
    present: BTreeMap<BlockKey, bool>,
    /// Blocks rebuilt in this run, verified.
    rebuilt: BTreeMap<BlockKey, Vec<u8>>,
    anchors: BTreeMap<(u32, usize), Anchors>,
}

impl<S: SymbolSource + ?Sized> Availability<'_, S> {
    fn anchors(&mut self, rec: &Record) -> Anchors {
        let (b, t) = (rec.params.block_size, rec.params.t());
        self.anchors
            .entry((b, t))
            .or_insert_with(|| Anchors::new(b, t))
            .clone()
    }

    fn known(&mut self, anchors: &Anchors, key: &BlockKey) -> bool {
        anchors.contains(key)
            || self.rebuilt.contains_key(key)
            || *self
                .present
                .entry(*key)
                .or_insert_with(|| self.source.contains(key))
    }

    /// Indexes of the missing pointers and stored blocks of `rec`.
    fn missing(&mut self, rec: &Record) -> (Vec<usize>, Vec<usize>) {
        let anchors = self.anchors(rec);
        let ptrs = (0..rec.params.t())
            .filter(|&i| !self.known(&anchors, &rec.pointers[i]))
            .collect();
        let stored = (0..rec.stored_keys.len())
            .filter(|&j| !self.known(&anchors, &rec.stored_keys[j]))
            .collect();
        (ptrs, stored)
    }
}

/// The worklist is a max-heap on the number of missing symbols (re-checked when popped), so
/// each decode rebuilds as many blocks as possible: fewer reads per rebuilt block.
fn run<S: SymbolSource + ?Sized>(
    index: &RecordIndex,
    source: &S,
    start: Vec<CodewordId>,
) -> RepairReport {
    let mut report = RepairReport::default();
    let mut av = Availability {
        source,
        present: BTreeMap::new(),
        rebuilt: BTreeMap::new(),
        anchors: BTreeMap::new(),
    };
    let mut heap: BinaryHeap<(usize, Reverse<CodewordId>)> = start
        .into_iter()
        .map(|c| (usize::MAX, Reverse(c)))
        .collect();
    let mut stuck: BTreeSet<CodewordId> = BTreeSet::new();
    let mut corrupt: BTreeSet<BlockKey> = BTreeSet::new();
    let mut unverified: BTreeSet<BlockKey> = BTreeSet::new();

    while let Some((prio, Reverse(cid))) = heap.pop() {
        let Some(rec) = index.get(&cid) else { continue };
        let params = rec.params;
        let (missing_ptrs, missing_stored) = av.missing(rec);
        let missing = missing_ptrs.len() + missing_stored.len();
        if missing == 0 {
            stuck.remove(&cid);
            continue;
        }
        if !params.decodable(rec.layout.symbols(&params).saturating_sub(missing)) {
            stuck.insert(cid);
            continue;
        }
        if missing < prio {
            // Stale priority: queue it again with the true count.
            heap.push((missing, Reverse(cid)));
            continue;
        }
        let anchors = av.anchors(rec);
        let view = rec.view();
        let mut reads = 0usize;
        let g = gather(&view, &anchors, |k| {
            if let Some(b) = av.rebuilt.get(k) {
                return Some(b.clone());
            }
            if av.present.get(k) == Some(&false) {
                return None;
            }
            reads += 1;
            av.source.get(k)
        });
        report.blocks_read += reads;
        if !g.rejected.is_empty() {
            for k in &g.rejected {
                av.present.insert(*k, false);
                corrupt.insert(*k);
            }
            // Availability changed: look at this codeword again with the new knowledge.
            heap.push((usize::MAX, Reverse(cid)));
            continue;
        }
        let Ok(out) = rebuild_from(index, &view, &g, &missing_ptrs, &missing_stored) else {
            stuck.insert(cid);
            continue;
        };
        stuck.remove(&cid);
        report.codewords_decoded += 1;
        unverified.extend(out.unverified);
        let new_blocks = out.blocks;
        for (key, bytes, role) in new_blocks {
            for c in index.codewords_of(&key) {
                if c != cid {
                    heap.push((usize::MAX, Reverse(c)));
                }
            }
            unverified.remove(&key);
            av.rebuilt.insert(key, bytes.clone());
            report.rebuilt.push(RebuiltBlock {
                key,
                bytes,
                via: cid,
                role,
            });
        }
    }
    report.undecodable = stuck.into_iter().collect();
    report.unverified = unverified.into_iter().collect();
    report.corrupt = corrupt.into_iter().collect();
    report
}
