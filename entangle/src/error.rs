//! The crate's error type.

use crate::key::{BlockKey, CodewordId};

/// Everything that can go wrong in the codec, the block format and repair.
///
/// Bad input (bytes from the network, a document that does not fit, inconsistent records) is
/// always reported through this type; the crate never panics on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The code parameters are unusable.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),

    /// The document given to [`crate::encode`] is larger than `s * B`.
    #[error("document of {len} bytes does not fit in one codeword ({capacity} bytes)")]
    DocumentTooLarge {
        /// Length of the document.
        len: u64,
        /// `s * B`.
        capacity: u64,
    },

    /// The number of pointers given to the encoder is not `t`.
    #[error("expected {expected} pointers, got {got}")]
    WrongPointerCount {
        /// `t`.
        expected: usize,
        /// Number given.
        got: usize,
    },

    /// The same pointer key was given twice to one codeword.
    #[error("pointer {0} appears twice in one codeword")]
    DuplicatePointer(BlockKey),

    /// A pointer's bytes do not hash to its key, or are not a stored block (a parity, or a
    /// systematic codeword's source) with a payload of at most `B` bytes.
    #[error("pointer {key} is invalid: {reason}")]
    BadPointer {
        /// The pointer's key.
        key: BlockKey,
        /// Why it was rejected.
        reason: String,
    },

    /// A stored block could not be parsed.
    #[error("malformed block: {0}")]
    Malformed(String),

    /// A codeword record is internally inconsistent.
    #[error("invalid codeword record {id}: {reason}")]
    InvalidRecord {
        /// The codeword.
        id: CodewordId,
        /// What is wrong with it.
        reason: String,
    },

    /// Fewer than `s + t` verified symbols were available (and, for a systematic codeword, not
    /// all of its sources): the codeword cannot be decoded.
    #[error("codeword {id} is undecodable: {have} verified symbols, {need} needed")]
    Undecodable {
        /// The codeword.
        id: CodewordId,
        /// Verified symbols available (sources, pointers, anchors and parities).
        have: usize,
        /// `s + t`.
        need: usize,
    },

    /// Decoding produced bytes that do not match the recorded content hash. This can only happen
    /// if a record was forged or a hash collided; it is reported, never returned as data.
    #[error("codeword {0}: decoded content does not match its recorded hash")]
    ContentMismatch(CodewordId),

    /// The Reed-Solomon library refused an operation.
    #[error("reed-solomon: {0}")]
    ReedSolomon(String),

    /// A list of codewords given to [`crate::decode_document`] is not one document.
    #[error("inconsistent document: {0}")]
    InconsistentDocument(String),
}

impl From<reed_solomon_simd::Error> for Error {
    fn from(e: reed_solomon_simd::Error) -> Self {
        Error::ReedSolomon(e.to_string())
    }
}
