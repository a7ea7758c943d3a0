//! An in-memory step-archive: the reference use of the codec, pointer selection and repair.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::codec::{decode_document, encode_document_layout, Parallelism, StoredBlock};
use crate::key::{BlockKey, CodewordId};
use crate::params::{Layout, Params};
use crate::record::{AsRecord, Record};
use crate::repair::{repair, RecordIndex, RepairReport};
use crate::select::{PointerChoice, PointerSelector};
use crate::Error;

/// A step-archive held in memory: stored blocks by key, their insertion order (which pointer
/// selection draws from: every stored block, sources of systematic codewords included), and
/// the record index. The node does the same over the ring.
#[derive(Debug, Clone)]
pub struct MemArchive {
    params: Params,
    layout: Layout,
    selector: PointerSelector,
    rng: ChaCha8Rng,
    blocks: BTreeMap<BlockKey, Vec<u8>>,
    order: Vec<BlockKey>,
    index: RecordIndex,
}

impl MemArchive {
    /// An empty archive of parity-only codewords; `seed` drives pointer selection.
    pub fn new(params: Params, selector: PointerSelector, seed: u64) -> Result<Self, Error> {
        Self::with_layout(params, Layout::ParityOnly, selector, seed)
    }

    /// An empty archive that writes its codewords in `layout`.
    pub fn with_layout(
        params: Params,
        layout: Layout,
        selector: PointerSelector,
        seed: u64,
    ) -> Result<Self, Error> {
        params.validate_for(layout)?;
        if selector.t != params.t() {
            return Err(Error::InvalidParams(format!(
                "selector picks {} pointers, t = {}",
                selector.t, params.t
            )));
        }
        Ok(MemArchive {
            params,
            layout,
            selector,
            rng: ChaCha8Rng::seed_from_u64(seed),
            blocks: BTreeMap::new(),
            order: Vec::new(),
            index: RecordIndex::new(),
        })
    }

    /// The archive's parameters.
    #[must_use]
    pub fn params(&self) -> Params {
        self.params
    }

    /// The layout it writes codewords in.
    #[must_use]
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Stores `document` as one or more codewords entangled with the archive; returns their
    /// records in order (what a reader needs, e.g. in a file manifest). Fails (storing
    /// nothing) if a chosen pointer has been removed and not repaired.
    pub fn store(&mut self, document_id: &[u8; 32], document: &[u8]) -> Result<Vec<Record>, Error> {
        let b = self.params.block_size;
        let (selector, rng, blocks, order) =
            (&self.selector, &mut self.rng, &self.blocks, &self.order);
        let (layout, params) = (self.layout, self.params);
        let par = Parallelism::AUTO;
        let encoded =
            encode_document_layout(layout, par, params, document_id, document, |_, done| {
                // Blocks of earlier codewords of this document are part of the archive too.
                let fresh: Vec<&StoredBlock> = done.iter().flat_map(|(_, bl)| bl.iter()).collect();
                let n = order.len() + fresh.len();
                let mut out = Vec::with_capacity(selector.t);
                for c in selector.select(n as u64, rng) {
                    match c {
                        PointerChoice::Anchor(i) => out.push((BlockKey::anchor(b, i), Vec::new())),
                        PointerChoice::Block(pos) => {
                            let pos = pos as usize;
                            let (key, bytes) = if pos < order.len() {
                                let key = order[pos];
                                let bytes =
                                    blocks.get(&key).cloned().ok_or_else(|| Error::BadPointer {
                                        key,
                                        reason: "selected block is not in the archive".into(),
                                    })?;
                                (key, bytes)
                            } else {
                                fresh[pos - order.len()].clone()
                            };
                            out.push((key, bytes));
                        }
                    }
                }
                Ok(out)
            })?;
        let mut records = Vec::with_capacity(encoded.len());
        for (record, stored) in encoded {
            for (key, bytes) in stored {
                self.order.push(key);
                self.blocks.insert(key, bytes);
            }
            self.index.insert(record.clone())?;
            records.push(record);
        }
        Ok(records)
    }

    /// Reads a document back from its records (of either layout).
    pub fn read<R: AsRecord>(&self, records: &[R]) -> Result<Vec<u8>, Error> {
        decode_document(records, &self.blocks)
    }

    /// Removes a stored block (simulating its loss); returns its bytes.
    pub fn remove(&mut self, key: &BlockKey) -> Option<Vec<u8>> {
        self.blocks.remove(key)
    }

    /// Repairs to a fixed point and stores every rebuilt block.
    pub fn repair(&mut self) -> RepairReport {
        let report = repair(&self.index, &self.blocks);
        for rb in &report.rebuilt {
            self.blocks.insert(rb.key, rb.bytes.clone());
        }
        report
    }

    /// The stored blocks.
    #[must_use]
    pub fn blocks(&self) -> &BTreeMap<BlockKey, Vec<u8>> {
        &self.blocks
    }

    /// Block keys in insertion order (including removed ones).
    #[must_use]
    pub fn order(&self) -> &[BlockKey] {
        &self.order
    }

    /// The record index.
    #[must_use]
    pub fn index(&self) -> &RecordIndex {
        &self.index
    }

    /// The record of a codeword.
    #[must_use]
    pub fn record(&self, id: &CodewordId) -> Option<&Record> {
        self.index.get(id)
    }
}
