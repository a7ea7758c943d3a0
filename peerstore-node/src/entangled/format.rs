//! What the entangled layer stores in the ring besides parities: codeword records and
//! document records (immutable, content-addressed, kept in a record table on the m nodes of
//! their metadata set: `super::meta`) and reverse-reference entries (a mutable, union-merged
//! set per parity, kept in the store's `REVERSE_REFS` table at a ring position derived from the
//! parity's key, on the m nodes of that position's metadata set).

use serde::{Deserialize, Serialize};

use peerstore_proto::BlockKey;

/// Opens a parity-only codeword-record block (`entangle::RECORD_MAGIC`).
pub const RECORD_MAGIC: &[u8; 5] = &entangle::record::RECORD_MAGIC;
/// Opens a systematic codeword-record block (`entangle::RECORD_MAGIC_SYSTEMATIC`).
pub const RECORD_MAGIC_SYSTEMATIC: &[u8; 5] = &entangle::record::RECORD_MAGIC_SYSTEMATIC;
/// Opens a document-record block.
pub const DOCUMENT_MAGIC: &[u8; 5] = b"ENTD\x01";
/// Domain of reverse-reference positions.
const REFS_DOMAIN: &[u8] = b"peerstore/entangled/refs/v1";

/// Node key to codec key.
#[must_use]
pub fn ek(k: &BlockKey) -> entangle::BlockKey {
    entangle::BlockKey(k.0)
}

/// Codec key to node key.
#[must_use]
pub fn nk(k: &entangle::BlockKey) -> BlockKey {
    BlockKey(k.0)
}

/// The stored bytes of a codeword-record block, of either layout (a parity-only record's
/// bytes are those nodes have always written, so its key does not change).
#[must_use]
pub fn encode_record<R: entangle::AsRecord + ?Sized>(r: &R) -> Vec<u8> {
    entangle::encode_record(r)
}

/// Parses (and validates) a codeword-record block of either layout. `None` if it is not one.
#[must_use]
pub fn decode_record(bytes: &[u8]) -> Option<entangle::Record> {
    entangle::decode_record(bytes).ok()
}

/// A document: the ordered codeword-record blocks that carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Code parameters the document was written with.
    pub params: entangle::Params,
    /// Document length in bytes.
    pub len: u64,
    /// BLAKE3 of the document bytes.
    pub content_hash: [u8; 32],
    /// Keys of its codeword-record blocks, in order.
    pub codewords: Vec<BlockKey>,
}

impl DocRecord {
    /// The stored bytes of the document-record block.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DOCUMENT_MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Parses a document-record block; `None` if it is not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<DocRecord> {
        let body = bytes.strip_prefix(DOCUMENT_MAGIC.as_slice())?;
        let d: DocRecord = postcard::from_bytes(body).ok()?;
        d.params.validate().ok()?;
        // A document is at most one block of the protocol and fills its codewords: a record that
        // claims more (a crafted one) is not a document record.
        let capacity = (d.codewords.len() as u64)
            .saturating_mul(d.params.s() as u64)
            .saturating_mul(d.params.block() as u64);
        if d.codewords.is_empty()
            || d.len > peerstore_proto::MAX_BLOCK_SIZE as u64
            || d.len > capacity
        {
            return None;
        }
        Some(d)
    }
}

/// The ring position of the reverse-reference entry of `block`: not `block` itself, so the
/// entry does not live (and die) on the same nodes as the block it describes.
#[must_use]
pub fn refs_position(block: &BlockKey) -> BlockKey {
    let mut h = blake3::Hasher::new();
    h.update(REFS_DOMAIN);
    h.update(&block.0);
    BlockKey(*h.finalize().as_bytes())
}

pub use peerstore_proto::{RefsEntry, MAX_REFERRERS};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_merge_is_a_union() {
        let k = BlockKey([1; 32]);
        let mut a = RefsEntry {
            block: k,
            own: None,
            created_us: Some(5),
            referrers: [BlockKey([2; 32])].into_iter().collect(),
        };
        let b = RefsEntry {
            block: k,
            own: Some(BlockKey([3; 32])),
            created_us: Some(3),
            referrers: [BlockKey([4; 32])].into_iter().collect(),
        };
        assert!(a.merge(&b));
        assert_eq!(a.own, Some(BlockKey([3; 32])));
        assert_eq!(a.created_us, Some(3));
        assert_eq!(a.referrers.len(), 2);
        assert!(!a.merge(&b));
        assert_eq!(RefsEntry::decode(&a.encode()), Some(a));
        assert_ne!(refs_position(&k), k);
    }

    #[test]
    fn record_blocks_round_trip_and_reject_garbage() {
        let params = entangle::Params::new(1, 1, 2, 16);
        let (rec, _) = entangle::encode(
            params,
            entangle::CodewordId([9; 32]),
            b"hello",
            &[(entangle::BlockKey::anchor(16, 0), &[][..])],
        )
        .unwrap();
        let bytes = encode_record(&rec);
        assert_eq!(
            decode_record(&bytes),
            Some(entangle::Record::from(rec.clone()))
        );
        assert!(decode_record(&bytes[1..]).is_none());
        assert!(decode_record(b"ENTR\x01garbage").is_none());
        let d = DocRecord {
            params,
            len: 5,
            content_hash: [0; 32],
            codewords: vec![BlockKey::of(&bytes)],
        };
        assert_eq!(DocRecord::decode(&d.encode()), Some(d));
        assert!(DocRecord::decode(b"ENTDx").is_none());
    }
}
