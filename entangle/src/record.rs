//! The per-codeword metadata record, in both layouts, and its stored bytes.
//!
//! - [`CodewordRecord`]: a parity-only codeword's record, the type (and serde shape) every
//!   codeword had before layouts. Unchanged, so its serialized form is too.
//! - [`Record`]: a record of either [`Layout`]: the keys and payload hashes of all stored
//!   blocks (for a systematic codeword its `s` sources, then its `p` parities).
//! - [`RecordView`]: either of them, borrowed; the codec, repair and [`fetch_order`] take any
//!   [`AsRecord`] (both types, and references and `Arc`s of them).
//! - [`encode_record`] / [`decode_record`]: the bytes the ring stores for a record. A
//!   parity-only record is written exactly as before (`"ENTR\x01"` + the postcard form of its
//!   [`CodewordRecord`], what the node has always written); a systematic one as `"ENTR\x02"` +
//!   a fixed little-endian layout. [`decode_record`] reads both.
//!
//! [`fetch_order`]: crate::fetch_order

use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::block::{header_len, write_header, HeaderFields, ParityHeader};
use crate::key::{BlockKey, CodewordId};
use crate::params::{Layout, Params, PayloadSizes};
use crate::Error;

/// What the ring keeps (replicated) about one parity-only codeword: enough to find, verify and
/// re-form every one of its blocks, and to rebuild any block it points at as input symbol
/// `s + i`.
///
/// A parity's header is a pure function of the record and the parity's index
/// ([`CodewordRecord::header`]), so a payload rebuilt anywhere can be turned back into the
/// exact stored bytes and checked against [`CodewordRecord::parity_keys`].
///
/// This type only describes parity-only codewords ([`CodewordRecord::validate`] accepts no
/// other), and its fields and serde shape are those of every record written before layouts;
/// [`Record`] describes both layouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodewordRecord {
    /// The codeword's id.
    pub id: CodewordId,
    /// Its parameters.
    pub params: Params,
    /// The `t` pointer keys, in input order (anchors included).
    pub pointers: Vec<BlockKey>,
    /// The ring keys of its `p` stored parities, in index order.
    pub parity_keys: Vec<BlockKey>,
    /// BLAKE3 of each parity payload, in index order (also carried in every parity header).
    pub payload_hashes: Vec<[u8; 32]>,
    /// Length of the document bytes carried.
    pub len: u64,
    /// BLAKE3 of the document bytes carried.
    pub content_hash: [u8; 32],
}

impl CodewordRecord {
    /// Checks the record's internal consistency (counts, length, distinct pointers) as a
    /// parity-only record.
    pub fn validate(&self) -> Result<(), Error> {
        self.view().validate()
    }

    /// The header of parity `index` (`index < p`).
    #[must_use]
    pub fn header(&self, index: u16) -> ParityHeader {
        self.view().header(index)
    }

    /// The exact stored bytes of parity `index` (`index < p`) with `payload`: the same bytes as
    /// `self.header(index).stored_bytes(payload)`, built in one allocation without cloning the
    /// record's lists.
    #[must_use]
    pub fn stored_bytes(&self, index: u16, payload: &[u8]) -> Vec<u8> {
        self.view().stored_bytes(index, payload)
    }

    /// Re-forms the stored bytes of parity `index` from its payload and checks them against the
    /// recorded key. `None` if the index is out of range or the bytes do not verify.
    #[must_use]
    pub fn reform_parity(&self, index: usize, payload: &[u8]) -> Option<Vec<u8>> {
        self.view().reform(index, payload)
    }

    /// Re-forms parity `index` from its symbol in a pointing codeword (the first bytes of its
    /// payload, zero-extended to that codeword's shard): the payload is a prefix of the
    /// symbol of one of the sizes a parity of this codeword may have, the rest of the symbol
    /// zeros, and the re-formed bytes must verify against the recorded key.
    #[must_use]
    pub fn reform_from_symbol(&self, index: usize, symbol: &[u8]) -> Option<Vec<u8>> {
        self.view().reform_from_symbol(index, symbol)
    }

    /// The index of `key` among the parities, if it is one.
    #[must_use]
    pub fn parity_index(&self, key: &BlockKey) -> Option<usize> {
        self.view().stored_index(key)
    }

    /// Whether `header` (from a stored parity) describes this codeword.
    #[must_use]
    pub fn matches_header(&self, header: &ParityHeader) -> bool {
        self.view().matches_header(header)
    }
}

/// The record of a codeword of either [`Layout`]: what the ring keeps (replicated) about it,
/// enough to find, verify and re-form every one of its stored blocks and to rebuild any block
/// it points at as input symbol `s + i`.
///
/// Every stored block's header is a pure function of the record and the block's stored index
/// ([`Record::header`]), so a payload rebuilt anywhere is turned back into the exact stored
/// bytes and checked against [`Record::stored_keys`].
///
/// Its bytes are [`encode_record`]'s (no serde: a parity-only record is written in the serde
/// form of its [`CodewordRecord`], a systematic one in a form of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Which blocks are stored.
    pub layout: Layout,
    /// The codeword's id.
    pub id: CodewordId,
    /// Its parameters.
    pub params: Params,
    /// The `t` pointer keys, in input order (anchors included).
    pub pointers: Vec<BlockKey>,
    /// The ring keys of its stored blocks, in stored index order: the `p` parities
    /// (parity-only), or the `s` sources then the `p` parities (systematic).
    pub stored_keys: Vec<BlockKey>,
    /// BLAKE3 of each stored block's payload, in the same order (the list every header of the
    /// codeword carries).
    pub payload_hashes: Vec<[u8; 32]>,
    /// Length of the document bytes carried.
    pub len: u64,
    /// BLAKE3 of the document bytes carried.
    pub content_hash: [u8; 32],
}

impl From<CodewordRecord> for Record {
    fn from(r: CodewordRecord) -> Self {
        Record {
            layout: Layout::ParityOnly,
            id: r.id,
            params: r.params,
            pointers: r.pointers,
            stored_keys: r.parity_keys,
            payload_hashes: r.payload_hashes,
            len: r.len,
            content_hash: r.content_hash,
        }
    }
}

impl TryFrom<Record> for CodewordRecord {
    type Error = Error;

    /// The parity-only form of a parity-only record; a systematic record has none.
    fn try_from(r: Record) -> Result<Self, Error> {
        if r.layout != Layout::ParityOnly {
            return Err(Error::InvalidRecord {
                id: r.id,
                reason: "a systematic record has no parity-only form".into(),
            });
        }
        Ok(CodewordRecord {
            id: r.id,
            params: r.params,
            pointers: r.pointers,
            parity_keys: r.stored_keys,
            payload_hashes: r.payload_hashes,
            len: r.len,
            content_hash: r.content_hash,
        })
    }
}

impl Record {
    /// Checks the record's internal consistency: parameters valid for the layout, `t`
    /// pointers, one key and one payload hash per stored block, length at most `s * B`,
    /// distinct pointers (and, systematic, distinct stored keys).
    pub fn validate(&self) -> Result<(), Error> {
        self.view().validate()
    }

    /// The keys of the stored sources (empty for a parity-only codeword).
    #[must_use]
    pub fn source_keys(&self) -> &[BlockKey] {
        self.view().source_keys()
    }

    /// The keys of the `p` parities.
    #[must_use]
    pub fn parity_keys(&self) -> &[BlockKey] {
        self.view().parity_keys()
    }

    /// The header of stored block `index`.
    #[must_use]
    pub fn header(&self, index: u16) -> ParityHeader {
        self.view().header(index)
    }

    /// The exact stored bytes of stored block `index` with `payload`.
    #[must_use]
    pub fn stored_bytes(&self, index: u16, payload: &[u8]) -> Vec<u8> {
        self.view().stored_bytes(index, payload)
    }

    /// Re-forms stored block `index` from its payload and checks it against the recorded key.
    #[must_use]
    pub fn reform(&self, index: usize, payload: &[u8]) -> Option<Vec<u8>> {
        self.view().reform(index, payload)
    }

    /// Re-forms stored block `index` from its symbol in a pointing codeword (see
    /// [`CodewordRecord::reform_from_symbol`]).
    #[must_use]
    pub fn reform_from_symbol(&self, index: usize, symbol: &[u8]) -> Option<Vec<u8>> {
        self.view().reform_from_symbol(index, symbol)
    }

    /// The stored index of `key`, if it is one of this codeword's stored blocks.
    #[must_use]
    pub fn stored_index(&self, key: &BlockKey) -> Option<usize> {
        self.view().stored_index(key)
    }

    /// Whether `header` (from a stored block) describes this codeword.
    #[must_use]
    pub fn matches_header(&self, header: &ParityHeader) -> bool {
        self.view().matches_header(header)
    }

    /// The record's stored bytes ([`encode_record`]).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode_record(self)
    }

    /// Parses and validates a record's stored bytes ([`decode_record`]).
    pub fn decode(bytes: &[u8]) -> Result<Record, Error> {
        decode_record(bytes)
    }
}

/// A record of either layout, borrowed: what the codec and repair read of a
/// [`CodewordRecord`] or a [`Record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Which blocks are stored.
    pub layout: Layout,
    /// The codeword's id.
    pub id: CodewordId,
    /// Its parameters.
    pub params: Params,
    /// The `t` pointer keys, in input order.
    pub pointers: &'a [BlockKey],
    /// The keys of the stored blocks, in stored index order.
    pub stored_keys: &'a [BlockKey],
    /// BLAKE3 of each stored block's payload, in stored index order.
    pub payload_hashes: &'a [[u8; 32]],
    /// Length of the document bytes carried.
    pub len: u64,
    /// BLAKE3 of the document bytes carried.
    pub content_hash: [u8; 32],
}

/// A codeword record the codec can read: [`CodewordRecord`], [`Record`], and references,
/// `Box`es, `Rc`s and `Arc`s of them.
pub trait AsRecord {
    /// The record, borrowed.
    fn view(&self) -> RecordView<'_>;
}

impl AsRecord for CodewordRecord {
    fn view(&self) -> RecordView<'_> {
        RecordView {
            layout: Layout::ParityOnly,
            id: self.id,
            params: self.params,
            pointers: &self.pointers,
            stored_keys: &self.parity_keys,
            payload_hashes: &self.payload_hashes,
            len: self.len,
            content_hash: self.content_hash,
        }
    }
}

impl AsRecord for Record {
    fn view(&self) -> RecordView<'_> {
        RecordView {
            layout: self.layout,
            id: self.id,
            params: self.params,
            pointers: &self.pointers,
            stored_keys: &self.stored_keys,
            payload_hashes: &self.payload_hashes,
            len: self.len,
            content_hash: self.content_hash,
        }
    }
}

impl AsRecord for RecordView<'_> {
    fn view(&self) -> RecordView<'_> {
        *self
    }
}

impl<T: AsRecord + ?Sized> AsRecord for &T {
    fn view(&self) -> RecordView<'_> {
        (**self).view()
    }
}

impl<T: AsRecord + ?Sized> AsRecord for Box<T> {
    fn view(&self) -> RecordView<'_> {
        (**self).view()
    }
}

impl<T: AsRecord + ?Sized> AsRecord for Rc<T> {
    fn view(&self) -> RecordView<'_> {
        (**self).view()
    }
}

impl<T: AsRecord + ?Sized> AsRecord for Arc<T> {
    fn view(&self) -> RecordView<'_> {
        (**self).view()
    }
}

impl<'a> RecordView<'a> {
    /// Checks the record's internal consistency (see [`Record::validate`]).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| {
            Err(Error::InvalidRecord {
                id: self.id,
                reason,
            })
        };
        if let Err(e) = self.params.validate_for(self.layout) {
            return bad(e.to_string());
        }
        if self.pointers.len() != self.params.t() {
            return bad(format!(
                "{} pointers, t = {}",
                self.pointers.len(),
                self.params.t
            ));
        }
        let n = self.layout.stored(&self.params);
        if self.stored_keys.len() != n || self.payload_hashes.len() != n {
            return bad(match self.layout {
                Layout::ParityOnly => format!(
                    "{} parity keys and {} payload hashes, p = {}",
                    self.stored_keys.len(),
                    self.payload_hashes.len(),
                    self.params.p
                ),
                Layout::Systematic => format!(
                    "{} stored keys and {} payload hashes, s + p = {n}",
                    self.stored_keys.len(),
                    self.payload_hashes.len(),
                ),
            });
        }
        if self.len > self.params.capacity() {
            return bad(format!("length {} exceeds s * B", self.len));
        }
        if has_duplicates(self.pointers) {
            return bad("duplicate pointer".into());
        }
        if self.layout == Layout::Systematic && has_duplicates(self.stored_keys) {
            return bad("duplicate stored key".into());
        }
        Ok(())
    }

    /// Stored sources: 0 (parity-only) or `s`; the stored index of parity 0.
    #[must_use]
    pub fn sources(&self) -> usize {
        self.layout.sources(&self.params)
    }

    /// The keys of the stored sources (empty for a parity-only codeword).
    #[must_use]
    pub fn source_keys(&self) -> &'a [BlockKey] {
        &self.stored_keys[..self.sources().min(self.stored_keys.len())]
    }

    /// The keys of the parities.
    #[must_use]
    pub fn parity_keys(&self) -> &'a [BlockKey] {
        &self.stored_keys[self.sources().min(self.stored_keys.len())..]
    }

    /// The header length of this codeword's stored blocks.
    #[must_use]
    pub fn header_len(&self) -> usize {
        header_len(self.pointers.len(), self.payload_hashes.len())
    }

    /// The payload sizes a stored block of this codeword may have.
    #[must_use]
    pub fn payload_sizes(&self) -> PayloadSizes {
        self.params.payload_sizes_for(self.len, self.layout)
    }

    /// The header of stored block `index`.
    #[must_use]
    pub fn header(&self, index: u16) -> ParityHeader {
        ParityHeader {
            params: self.params,
            index,
            codeword: self.id,
            len: self.len,
            content_hash: self.content_hash,
            pointers: self.pointers.to_vec(),
            payload_hashes: self.payload_hashes.to_vec(),
        }
    }

    /// The header fields shared by all of this codeword's stored blocks, borrowed.
    pub(crate) fn header_fields(&self) -> HeaderFields<'_> {
        HeaderFields {
            params: &self.params,
            codeword: &self.id,
            len: self.len,
            content_hash: &self.content_hash,
            pointers: self.pointers,
            payload_hashes: self.payload_hashes,
        }
    }

    /// The exact stored bytes of stored block `index` with `payload`, in one allocation.
    #[must_use]
    pub fn stored_bytes(&self, index: u16, payload: &[u8]) -> Vec<u8> {
        let hlen = self.header_len();
        let mut out = Vec::with_capacity(hlen + payload.len());
        out.resize(hlen, 0);
        write_header(&mut out, &self.header_fields(), index);
        out.extend_from_slice(payload);
        out
    }

    /// Re-forms stored block `index` from its payload and checks the bytes against the
    /// recorded key. `None` if the index is out of range or the bytes do not verify.
    #[must_use]
    pub fn reform(&self, index: usize, payload: &[u8]) -> Option<Vec<u8>> {
        let key = self.stored_keys.get(index)?;
        let j = u16::try_from(index).ok()?;
        let stored = self.stored_bytes(j, payload);
        key.verifies(&stored).then_some(stored)
    }

    /// Re-forms stored block `index` from its symbol in a pointing codeword: the payload is a
    /// prefix of the symbol of one of the sizes a block of this codeword may have, the rest of
    /// the symbol zeros, and the re-formed bytes must verify against the recorded key.
    #[must_use]
    pub fn reform_from_symbol(&self, index: usize, symbol: &[u8]) -> Option<Vec<u8>> {
        self.payload_sizes()
            .iter()
            .filter(|&n| n <= symbol.len() && symbol[n..].iter().all(|&x| x == 0))
            .find_map(|n| self.reform(index, &symbol[..n]))
    }

    /// The stored index of `key`, if it is one of this codeword's stored blocks.
    #[must_use]
    pub fn stored_index(&self, key: &BlockKey) -> Option<usize> {
        self.stored_keys.iter().position(|k| k == key)
    }

    /// Whether `header` (from a stored block) describes this codeword.
    #[must_use]
    pub fn matches_header(&self, header: &ParityHeader) -> bool {
        header.params == self.params
            && header.codeword == self.id
            && header.len == self.len
            && header.content_hash == self.content_hash
            && header.pointers == self.pointers
            && header.payload_hashes == self.payload_hashes
    }

    /// An owned copy.
    #[must_use]
    pub fn to_record(&self) -> Record {
        Record {
            layout: self.layout,
            id: self.id,
            params: self.params,
            pointers: self.pointers.to_vec(),
            stored_keys: self.stored_keys.to_vec(),
            payload_hashes: self.payload_hashes.to_vec(),
            len: self.len,
            content_hash: self.content_hash,
        }
    }
}

fn has_duplicates(keys: &[BlockKey]) -> bool {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[0] == w[1])
}

// ---------------------------------------------------------------------------------------------
// Stored bytes

/// Opens the stored bytes of a parity-only record (the node's codeword-record magic since the
/// first version).
pub const RECORD_MAGIC: [u8; 5] = *b"ENTR\x01";
/// Opens the stored bytes of a systematic record.
pub const RECORD_MAGIC_SYSTEMATIC: [u8; 5] = *b"ENTR\x02";
/// Size of the fixed part of a systematic record's bytes.
pub const SYSTEMATIC_RECORD_FIXED_LEN: usize = 88;
/// The layout byte of a systematic record (0 is reserved: parity-only records are written
/// in their own form).
const LAYOUT_SYSTEMATIC: u8 = 1;

/// The stored bytes of a record of either layout.
///
/// A parity-only record: [`RECORD_MAGIC`] then the postcard serialization of its
/// [`CodewordRecord`], byte for byte what the node has always written, so a record re-encoded
/// keeps its ring key:
///
/// ```text
/// "ENTR\x01" | id (32) | s, t, p (varint u16 each) | B (varint u32)
///            | t (varint) | t x 32 pointer keys | p (varint) | p x 32 parity keys
///            | p (varint) | p x 32 payload hashes | len (varint u64) | content hash (32)
/// ```
///
/// (varint: LEB128, 7 bits per byte, least significant first, the shortest form.)
///
/// A systematic record: [`RECORD_MAGIC_SYSTEMATIC`] then fixed little-endian fields:
///
/// ```text
/// offset size         field
///      0    5         magic "ENTR\x02"
///      5    1         layout: 1 = systematic
///      6    2         s
///      8    2         t
///     10    2         p
///     12    4         block size B
///     16   32         codeword id
///     48    8         document length
///     56   32         BLAKE3 of the document bytes
///     88   32 t       pointer keys, in input order
///      .   32 (s+p)   stored keys: sources, then parities
///      .   32 (s+p)   payload hashes, same order
/// ```
#[must_use]
pub fn encode_record<R: AsRecord + ?Sized>(record: &R) -> Vec<u8> {
    let v = record.view();
    let keys = v.pointers.len() + v.stored_keys.len() + v.payload_hashes.len();
    match v.layout {
        Layout::ParityOnly => {
            let mut out = Vec::with_capacity(RECORD_MAGIC.len() + 100 + 32 * keys);
            out.extend_from_slice(&RECORD_MAGIC);
            out.extend_from_slice(&v.id.0);
            varint(&mut out, u64::from(v.params.s));
            varint(&mut out, u64::from(v.params.t));
            varint(&mut out, u64::from(v.params.p));
            varint(&mut out, u64::from(v.params.block_size));
            for list in [v.pointers, v.stored_keys] {
                varint(&mut out, list.len() as u64);
                for k in list {
                    out.extend_from_slice(&k.0);
                }
            }
            varint(&mut out, v.payload_hashes.len() as u64);
            for h in v.payload_hashes {
                out.extend_from_slice(h);
            }
            varint(&mut out, v.len);
            out.extend_from_slice(&v.content_hash);
            out
        }
        Layout::Systematic => {
            let mut out = Vec::with_capacity(SYSTEMATIC_RECORD_FIXED_LEN + 32 * keys);
            out.extend_from_slice(&RECORD_MAGIC_SYSTEMATIC);
            out.push(LAYOUT_SYSTEMATIC);
            out.extend_from_slice(&v.params.s.to_le_bytes());
            out.extend_from_slice(&v.params.t.to_le_bytes());
            out.extend_from_slice(&v.params.p.to_le_bytes());
            out.extend_from_slice(&v.params.block_size.to_le_bytes());
            out.extend_from_slice(&v.id.0);
            out.extend_from_slice(&v.len.to_le_bytes());
            out.extend_from_slice(&v.content_hash);
            for k in v.pointers.iter().chain(v.stored_keys) {
                out.extend_from_slice(&k.0);
            }
            for h in v.payload_hashes {
                out.extend_from_slice(h);
            }
            out
        }
    }
}

/// Parses and validates the stored bytes of a record of either layout ([`encode_record`]).
///
/// Parity-only bytes are read as the node has always read them (postcard, then
/// [`CodewordRecord::validate`]): the same bytes are accepted, including a varint in a longer
/// form than the shortest and bytes after the record, which postcard ignores. Systematic
/// bytes must be exactly the fixed layout, with parameters and counts that
/// [`Record::validate`] accepts. Never panics and allocates nothing before the counts are
/// known to fit in the input.
pub fn decode_record(bytes: &[u8]) -> Result<Record, Error> {
    if let Some(body) = bytes.strip_prefix(&RECORD_MAGIC) {
        let r = decode_parity_only(body)?;
        r.validate()?;
        return Ok(r.into());
    }
    if let Some(body) = bytes.strip_prefix(&RECORD_MAGIC_SYSTEMATIC) {
        let r = decode_systematic(body)?;
        r.validate()?;
        return Ok(r);
    }
    Err(Error::Malformed("not a codeword record".into()))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn truncated() -> Error {
    Error::Malformed("truncated record".into())
}

/// A bounds-checked reader of a record body.
struct Body<'a> {
    bytes: &'a [u8],
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.bytes.len() {
            return Err(truncated());
        }
        let (a, b) = self.bytes.split_at(n);
        self.bytes = b;
        Ok(a)
    }

    fn array(&mut self) -> Result<[u8; 32], Error> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }

    /// A postcard varint of a `bits`-bit integer: at most `ceil(bits / 7)` bytes, the last
    /// one's value within the bits left (postcard's own rule, longer forms accepted).
    fn varint(&mut self, bits: u32) -> Result<u64, Error> {
        let max = bits.div_ceil(7);
        let last_max = (1u64 << (bits % 7)) - 1;
        let mut out = 0u64;
        for i in 0..max {
            let byte = self.take(1)?[0];
            out |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max - 1 && u64::from(byte) > last_max {
                    break;
                }
                return Ok(out);
            }
        }
        Err(Error::Malformed("bad varint in record".into()))
    }

    fn u16_le(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A postcard sequence of 32-byte items: its length (a `usize` varint), then the items.
    fn list(&mut self) -> Result<Vec<[u8; 32]>, Error> {
        let n = self.varint(usize::BITS)?;
        self.items(usize::try_from(n).map_err(|_| truncated())?)
    }

    /// `n` 32-byte items; fails before allocating if the input is too short for them.
    fn items(&mut self, n: usize) -> Result<Vec<[u8; 32]>, Error> {
        if n.checked_mul(32).is_none_or(|b| b > self.bytes.len()) {
            return Err(truncated());
        }
        (0..n).map(|_| self.array()).collect()
    }
}

fn keys(v: Vec<[u8; 32]>) -> Vec<BlockKey> {
    v.into_iter().map(BlockKey).collect()
}

fn decode_parity_only(body: &[u8]) -> Result<CodewordRecord, Error> {
    let mut r = Body { bytes: body };
    let id = CodewordId(r.array()?);
    let small = |r: &mut Body<'_>| -> Result<u16, Error> {
        // A varint of at most 16 bits.
        r.varint(16).map(|v| v as u16)
    };
    let (s, t, p) = (small(&mut r)?, small(&mut r)?, small(&mut r)?);
    let block_size = r.varint(32)? as u32;
    let pointers = keys(r.list()?);
    let parity_keys = keys(r.list()?);
    let payload_hashes = r.list()?;
    let len = r.varint(64)?;
    let content_hash = r.array()?;
    // Bytes after the record are ignored, as postcard::from_bytes ignores them.
    Ok(CodewordRecord {
        id,
        params: Params::new(s, t, p, block_size),
        pointers,
        parity_keys,
        payload_hashes,
        len,
        content_hash,
    })
}

fn decode_systematic(body: &[u8]) -> Result<Record, Error> {
    let mut r = Body { bytes: body };
    let layout = r.take(1)?[0];
    if layout != LAYOUT_SYSTEMATIC {
        return Err(Error::Malformed(format!("unknown record layout {layout}")));
    }
    let (s, t, p) = (r.u16_le()?, r.u16_le()?, r.u16_le()?);
    let b = r.take(4)?;
    let params = Params::new(s, t, p, u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let id = CodewordId(r.array()?);
    let l = r.take(8)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(l);
    let len = u64::from_le_bytes(len);
    let content_hash = r.array()?;
    let n = Layout::Systematic.stored(&params);
    // Exactly the fixed part and the three lists: checked before reading (or allocating) any.
    let want = 32 * (params.t() + 2 * n);
    if r.bytes.len() != want {
        return Err(Error::Malformed(format!(
            "systematic record is {} bytes, its counts say {}",
            SYSTEMATIC_RECORD_FIXED_LEN + r.bytes.len(),
            SYSTEMATIC_RECORD_FIXED_LEN + want
        )));
    }
    let pointers = keys(r.items(params.t())?);
    let stored_keys = keys(r.items(n)?);
    let payload_hashes = r.items(n)?;
    Ok(Record {
        layout: Layout::Systematic,
        id,
        params,
        pointers,
        stored_keys,
        payload_hashes,
        len,
        content_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_leb128_and_read_as_postcard_reads_them() {
        for (v, bytes) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 1]),
            (300, vec![0xac, 2]),
            (u64::from(u16::MAX), vec![0xff, 0xff, 3]),
            (
                u64::MAX,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            ),
        ] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(Body { bytes: &bytes }.varint(64).unwrap(), v);
        }
        // 16 bits: at most 3 bytes, the last one at most 0b11.
        assert_eq!(
            Body {
                bytes: &[0xff, 0xff, 3]
            }
            .varint(16)
            .unwrap(),
            65535
        );
        assert!(Body {
            bytes: &[0xff, 0xff, 4]
        }
        .varint(16)
        .is_err());
        assert!(Body {
            bytes: &[0x80, 0x80, 0x80]
        }
        .varint(16)
        .is_err());
        // A longer form than needed is accepted (postcard accepts it).
        assert_eq!(Body { bytes: &[0x81, 0] }.varint(16).unwrap(), 1);
        assert!(Body { bytes: &[0x80] }.varint(64).is_err());
        assert!(Body { bytes: &[] }.varint(64).is_err());
    }
}
