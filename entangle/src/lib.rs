//! The RECAST step-archive over fixed-size blocks: codec, pointer selection, repair, and a
//! durability simulator. Pure: no I/O, no clock, randomness only from seeded RNGs passed in.
//!
//! # The code
//! A codeword with [`Params`] `(s, t, p, B)` takes `s` source blocks (the document's ciphertext,
//! zero-padded to `s` shards, true length recorded) and `t` pointer blocks (blocks already in
//! the archive, or [anchors](BlockKey::anchor)), and computes `p` parity blocks with a
//! systematic Reed-Solomon code (reed-solomon-simd) over the `s + t` inputs. What is stored
//! depends on the codeword's [`Layout`]:
//!
//! - **parity-only** (RECAST; every codeword written before layouts): only the `p` parities.
//!   From the `t` pointers and the `p` parities, any `s + t` symbols decode the codeword, so up
//!   to `p - s` may be missing.
//! - **systematic**: the `s` sources too, each as a block of its own. A healthy read fetches
//!   the `s` sources and checks the document hash, with no decoding; any `s + t` of the
//!   `s + t + p` symbols decode the codeword, so up to `p` may be missing. At equal overhead
//!   systematic `(s, t, p)` is the same code graph as parity-only `(s, t, s + p)` (see
//!   `docs/ENTANGLE-SYSTEMATIC.md`).
//!
//! # Keys, symbols and stored bytes
//! A stored block is self-describing ([`block`]): a header (magic, version, parameters, stored
//! index `j`, codeword id, document length and hash, the ordered pointer keys and the BLAKE3 of
//! every stored payload of the codeword) followed by the payload: the codeword's **shard**
//! ([`Params::shard`]), `B` bytes for a full codeword and `len / s` rounded up to 64 bytes for
//! a shorter one, so a small document is not padded to `s * B` on disk. A parity's payload is
//! its recovery symbol, a source's its input symbol (document bytes, the last one zero-padded).
//! Its ring key ([`BlockKey`]) is the BLAKE3 of the whole stored bytes.
//!
//! The symbol a block contributes to the code, in its own codeword and as a pointer of later
//! codewords, is its **payload** only. So when a block is rebuilt (as a parity, by
//! re-encoding; as a source or a pointer, as input symbol `i` or `s + i` of a codeword) what
//! comes out is a payload. In a codeword of shard `b`, a pointer's symbol is the
//! first `b` bytes of its payload, zero-extended when the payload is shorter; so a pointer is
//! rebuilt through a codeword that points at it only if that codeword's shard is at least the
//! pointer's payload size (a full codeword rebuilds any pointer; a small one protects itself
//! through its pointers but rebuilds only pointers no larger than its shard). The header is a
//! pure function of the block's own record ([`CodewordRecord`] or [`Record`]) and its index
//! ([`Record::header`]), so the exact stored bytes are re-formed from the record and checked
//! against the recorded key before anything is returned. The ring therefore keeps every
//! codeword's record (replicated): it is what makes a lost pointer rebuildable. A single
//! surviving block also carries enough to rebuild and verify its siblings (the payload
//! hashes), so a node can repair without any user key.
//!
//! # Records
//! [`CodewordRecord`] is a parity-only codeword's record, unchanged since before layouts;
//! [`Record`] is a record of either layout. The codec and repair take either ([`AsRecord`]),
//! [`RecordIndex`] holds both, and [`encode_record`] / [`decode_record`] give the bytes the ring
//! stores for them (a parity-only record's are exactly those of before).
//!
//! # Documents
//! A document larger than `s * B` is split by [`encode_document`] (or
//! [`encode_document_layout`]) into full codewords plus a last partial one, each with its own
//! pointers; [`decode_document`] reads them back. A document of 0 bytes is one codeword of
//! length 0.
//!
//! # Example
//! ```
//! use entangle::{Layout, MemArchive, Params, PointerSelector};
//!
//! let params = Params::new(2, 10, 6, 4096);
//! let mut archive = MemArchive::new(params, PointerSelector::mixed(10), 7).unwrap();
//! let doc = vec![42u8; 20_000];
//! let records = archive.store(&[1; 32], &doc).unwrap();
//! assert_eq!(records.len(), 3); // 20,000 bytes in codewords of 8,192
//! // Lose e = 4 parities of the first codeword: it still decodes.
//! for k in &records[0].stored_keys[..4] {
//!     archive.remove(k);
//! }
//! assert_eq!(archive.read(&records).unwrap(), doc);
//! // Repair rebuilds them, verified against their keys.
//! let report = archive.repair();
//! assert_eq!(report.rebuilt.len(), 4);
//!
//! // The systematic layout stores the sources too: 2 + 4 blocks per codeword, 3x as above.
//! let params = Params::new(2, 10, 4, 4096);
//! let mut archive =
//!     MemArchive::with_layout(params, Layout::Systematic, PointerSelector::mixed(10), 7)
//!         .unwrap();
//! let records = archive.store(&[1; 32], &doc).unwrap();
//! assert_eq!(records[0].stored_keys.len(), 6);
//! // Any p = 4 of its 2 + 10 + 4 symbols may be lost, sources included.
//! for k in &records[0].stored_keys[..4] {
//!     archive.remove(k);
//! }
//! assert_eq!(archive.read(&records).unwrap(), doc);
//! assert_eq!(archive.repair().rebuilt.len(), 4);
//! ```
//!
//! # Modules
//! - [`block`]: the stored block format (parities and sources, versions 1 and 2), strictly
//!   bounds-checked (bytes come from the network).
//! - [`codec`]: [`encode`], [`encode_layout`], [`decode`], [`encode_document`],
//!   [`encode_document_layout`], [`decode_document`].
//! - [`record`]: [`CodewordRecord`], [`Record`], their stored bytes.
//! - [`mod@repair`]: [`RecordIndex`] (records and reverse references), [`repair()`] to a
//!   fixed point over any [`SymbolSource`], and the single step [`rebuild_codeword`] with
//!   [`fetch_order`] for a caller (the node) that fetches asynchronously and drives the
//!   fixed point itself.
//! - [`select`]: [`PointerSelector`], RECAST's mixed uniform + tail-window choice.
//! - [`sim`]: the durability simulator behind the `entangle-sim` binary.

pub mod archive;
pub mod block;
pub mod codec;
mod error;
pub mod key;
pub mod params;
pub mod record;
pub mod repair;
pub mod select;
pub mod sim;
pub mod source;

pub use archive::MemArchive;
pub use block::{ParityBlock, ParityHeader};
pub use codec::{
    decode, decode_document, decode_document_with, decode_with, encode, encode_document,
    encode_document_checked, encode_document_layout, encode_document_with, encode_layout,
    encode_verified, encode_verified_layout, encode_with, Encoded, EncodedRecord, Parallelism,
    Pointer, PointerCheck, StoredBlock, PARALLEL_MIN_BYTES,
};
pub use error::Error;
pub use key::{Anchors, BlockKey, CodewordId};
pub use params::{Layout, Params};
pub use record::{decode_record, encode_record, AsRecord, CodewordRecord, Record, RecordView};
pub use repair::{
    fetch_order, rebuild_codeword, repair, repair_lost, CodewordRepair, RebuiltBlock, RecordIndex,
    RepairReport, Role,
};
pub use select::{PointerChoice, PointerSelector};
pub use source::SymbolSource;
