//! The RECAST step-archive over fixed-size blocks: codec, pointer selection, repair, and a
//! durability simulator. Pure: no I/O, no clock, randomness only from seeded RNGs passed in.
//!
//! # The code
//! A codeword with [`Params`] `(s, t, p, B)` takes `s` source blocks (the document's ciphertext,
//! zero-padded to `s * B`, true length recorded) and `t` pointer blocks (parities already in
//! the archive, or [anchors](BlockKey::anchor)), and computes `p` parity blocks with a
//! systematic Reed-Solomon code (reed-solomon-simd) over the `s + t` inputs. Only the parities
//! are stored. From the `t` pointers and the `p` parities, any `s + t` symbols decode the
//! codeword, so up to `e = p - s` may be missing.
//!
//! # Keys, symbols and stored bytes
//! A stored block is a self-describing parity block ([`block`]): a header (magic, version,
//! parameters, index `j`, codeword id, document length and hash, the ordered pointer keys and
//! the BLAKE3 of every parity payload of the codeword) followed by exactly `B` payload bytes.
//! Its ring key ([`BlockKey`]) is the BLAKE3 of the whole stored bytes.
//!
//! The symbol a block contributes to the code, as a parity of its own codeword and as a
//! pointer of later codewords, is its **payload** only. So when a block is rebuilt (as a
//! parity, by re-encoding, or as a pointer, as input symbol `s + i` of a codeword that points
//! at it) what comes out is a payload. The header is a pure function of the block's own
//! [`CodewordRecord`] and its index ([`CodewordRecord::header`]), so the exact stored bytes are
//! re-formed from the record and checked against the recorded key before anything is returned.
//! The ring therefore keeps every codeword's record (replicated): it is what makes a lost
//! pointer rebuildable. A single surviving parity also carries enough to rebuild and verify
//! its siblings (the payload hashes), so a node can repair without any user key.
//!
//! # Documents
//! A document larger than `s * B` is split by [`encode_document`] into full codewords plus a
//! last partial one, each with its own pointers; [`decode_document`] reads them back. A
//! document of 0 bytes is one codeword of length 0.
//!
//! # Example
//! ```
//! use entangle::{MemArchive, Params, PointerSelector};
//!
//! let params = Params::new(2, 10, 6, 4096);
//! let mut archive = MemArchive::new(params, PointerSelector::mixed(10), 7).unwrap();
//! let doc = vec![42u8; 20_000];
//! let records = archive.store(&[1; 32], &doc).unwrap();
//! assert_eq!(records.len(), 3); // 20,000 bytes in codewords of 8,192
//! // Lose e = 4 parities of the first codeword: it still decodes.
//! for k in &records[0].parity_keys[..4] {
//!     archive.remove(k);
//! }
//! assert_eq!(archive.read(&records).unwrap(), doc);
//! // Repair rebuilds them, verified against their keys.
//! let report = archive.repair();
//! assert_eq!(report.rebuilt.len(), 4);
//! ```
//!
//! # Modules
//! - [`block`]: the stored parity format, strictly bounds-checked (bytes come from the network).
//! - [`codec`]: [`encode`], [`decode`], [`encode_document`], [`decode_document`].
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
    encode_document_with, encode_verified, encode_with, Encoded, Parallelism, Pointer, StoredBlock,
    PARALLEL_MIN_BYTES,
};
pub use error::Error;
pub use key::{Anchors, BlockKey, CodewordId};
pub use params::Params;
pub use record::CodewordRecord;
pub use repair::{
    fetch_order, rebuild_codeword, repair, repair_lost, CodewordRepair, RebuiltBlock, RecordIndex,
    RepairReport, Role,
};
pub use select::{PointerChoice, PointerSelector};
pub use source::SymbolSource;
