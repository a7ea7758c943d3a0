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

/// A document: the ordered codeword-record blocks that carry it, and who wrote it.
///
/// Stored as [`DOCUMENT_MAGIC_V2`] + postcard of all fields; records written before writers
/// were recorded ([`DOCUMENT_MAGIC`], version 1) read back with `writer` and `created_us`
/// `None`, and can be deleted by nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocRecord {
    /// Code parameters the document was written with.
    pub params: entangle::Params,
    /// Document length in bytes.
    pub len: u64,
    /// BLAKE3 of the document bytes.
    pub content_hash: [u8; 32],
    /// Keys of its codeword-record blocks, in order.
    pub codewords: Vec<BlockKey>,
    /// The user id (Ed25519 public key) of the user who wrote the document: the only one whose
    /// signed statement can delete it (`crypto::DeleteStatement`). `None`: written by a client
    /// that named no user, or before writers were recorded.
    pub writer: Option<[u8; 32]>,
    /// When the encoding node stored it, microseconds since the Unix epoch (`None`: version 1).
    pub created_us: Option<u64>,
    /// The writer's signature over the document (version 3): `writer` is its signer, and the
    /// document's codeword ids derive from it ([`DocRecord::document_id`]), so a record naming
    /// another document's codewords cannot be made by anyone, member or not.
    pub signed: Option<SignedWrite>,
}

/// A document's signed authorization as kept in its record: what the writer signed
/// (`crypto::WriteAuth` over the content hash and the session id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedWrite {
    pub auth: crypto::WriteAuth,
    pub session: Option<u64>,
}

/// Domain of document ids derived from a writer's signature.
const DOCUMENT_ID_DOMAIN: &str = "peerstore/entangled/document-id/v1";

impl SignedWrite {
    /// The id the document's codewords derive from (`entangle::CodewordId::derive(id, k)` for
    /// its codeword `k`): a function of the writer and their signature, so only the encoder
    /// of this very write made codewords with these ids.
    #[must_use]
    pub fn document_id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(DOCUMENT_ID_DOMAIN);
        h.update(&self.auth.user.0);
        h.update(&self.auth.signature);
        *h.finalize().as_bytes()
    }
}

/// The stored form of a version 1 document record.
#[derive(Serialize, Deserialize)]
struct DocV1 {
    params: entangle::Params,
    len: u64,
    content_hash: [u8; 32],
    codewords: Vec<BlockKey>,
}

/// The stored form of a version 2 document record.
#[derive(Serialize, Deserialize)]
struct DocV2 {
    params: entangle::Params,
    len: u64,
    content_hash: [u8; 32],
    codewords: Vec<BlockKey>,
    writer: Option<[u8; 32]>,
    created_us: Option<u64>,
}

/// Opens a version 2 document-record block (with writer and creation time).
pub const DOCUMENT_MAGIC_V2: &[u8; 5] = b"ENTD\x02";

/// The stored form of a version 3 document record (a signed writer).
#[derive(Serialize, Deserialize)]
struct DocV3 {
    params: entangle::Params,
    len: u64,
    content_hash: [u8; 32],
    codewords: Vec<BlockKey>,
    created_us: u64,
    signed: SignedWrite,
}

/// Opens a version 3 document-record block (signed by its writer).
pub const DOCUMENT_MAGIC_V3: &[u8; 5] = b"ENTD\x03";

impl DocRecord {
    /// The stored bytes of the document-record block: version 2, or version 1 (the bytes of
    /// before) for a record with neither writer nor creation time.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        if let Some(signed) = &self.signed {
            let mut out = DOCUMENT_MAGIC_V3.to_vec();
            let v3 = DocV3 {
                params: self.params,
                len: self.len,
                content_hash: self.content_hash,
                codewords: self.codewords.clone(),
                created_us: self.created_us.unwrap_or(0),
                signed: signed.clone(),
            };
            out.extend(postcard::to_stdvec(&v3).unwrap_or_default());
            return out;
        }
        if self.writer.is_none() && self.created_us.is_none() {
            let mut out = DOCUMENT_MAGIC.to_vec();
            let v1 = DocV1 {
                params: self.params,
                len: self.len,
                content_hash: self.content_hash,
                codewords: self.codewords.clone(),
            };
            out.extend(postcard::to_stdvec(&v1).unwrap_or_default());
            return out;
        }
        let mut out = DOCUMENT_MAGIC_V2.to_vec();
        let v2 = DocV2 {
            params: self.params,
            len: self.len,
            content_hash: self.content_hash,
            codewords: self.codewords.clone(),
            writer: self.writer,
            created_us: self.created_us,
        };
        out.extend(postcard::to_stdvec(&v2).unwrap_or_default());
        out
    }

    /// Parses a document-record block of either version; `None` if it is not one.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<DocRecord> {
        let d = if let Some(body) = bytes.strip_prefix(DOCUMENT_MAGIC_V3.as_slice()) {
            let v: DocV3 = postcard::from_bytes(body).ok()?;
            DocRecord {
                params: v.params,
                len: v.len,
                content_hash: v.content_hash,
                codewords: v.codewords,
                writer: Some(v.signed.auth.user.0),
                created_us: Some(v.created_us),
                signed: Some(v.signed),
            }
        } else if let Some(body) = bytes.strip_prefix(DOCUMENT_MAGIC_V2.as_slice()) {
            let v: DocV2 = postcard::from_bytes(body).ok()?;
            DocRecord {
                params: v.params,
                len: v.len,
                content_hash: v.content_hash,
                codewords: v.codewords,
                writer: v.writer,
                created_us: v.created_us,
                signed: None,
            }
        } else {
            let body = bytes.strip_prefix(DOCUMENT_MAGIC.as_slice())?;
            let v: DocV1 = postcard::from_bytes(body).ok()?;
            DocRecord {
                params: v.params,
                len: v.len,
                content_hash: v.content_hash,
                codewords: v.codewords,
                writer: None,
                created_us: None,
                signed: None,
            }
        };
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

    /// The writer whose statement may delete this document, checked: the signer of a
    /// version 3 record whose signature verifies over its content hash. A version 2 record's
    /// writer is only what the encoding node wrote (no signature): refused, as is a record
    /// with no writer.
    pub fn verified_writer(&self) -> Result<[u8; 32], String> {
        match &self.signed {
            Some(s) => s
                .auth
                .verify_signature(&self.content_hash, s.session)
                .map(|()| s.auth.user.0)
                .map_err(|e| e.to_string()),
            None if self.writer.is_some() => Err(
                "the document was written before writes were signed: its writer cannot be verified, so it is kept".into(),
            ),
            None => Err("the document names no writer: nobody can delete it".into()),
        }
    }

    /// The id its codewords derive from, for a signed record; `None` for older records
    /// (their ids were drawn at random by the encoder).
    #[must_use]
    pub fn document_id(&self) -> Option<[u8; 32]> {
        self.signed.as_ref().map(SignedWrite::document_id)
    }

    /// Whether `record` is codeword number `index` of this document: for a signed record,
    /// its id derives from the document id; older records cannot tell (`true`).
    #[must_use]
    pub fn owns_codeword(&self, index: usize, record: &entangle::Record) -> bool {
        self.document_id()
            .is_none_or(|id| record.id == entangle::CodewordId::derive(&id, index as u64))
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
            writer: Some([7; 32]),
            created_us: Some(123),
            signed: None,
        };
        assert_eq!(DocRecord::decode(&d.encode()), Some(d.clone()));
        assert!(DocRecord::decode(b"ENTDx").is_none());
        // Version 1 (no writer) still reads.
        let mut v1 = DOCUMENT_MAGIC.to_vec();
        v1.extend(
            postcard::to_stdvec(&DocV1 {
                params,
                len: 5,
                content_hash: [0; 32],
                codewords: d.codewords.clone(),
            })
            .unwrap(),
        );
        let old = DocRecord::decode(&v1).unwrap();
        assert_eq!((old.writer, old.created_us), (None, None));
        assert_eq!(old.codewords, d.codewords);
        // A version 2 writer is a claim: not enough to delete.
        assert!(d
            .verified_writer()
            .unwrap_err()
            .contains("before writes were signed"));
    }

    #[test]
    fn signed_records_name_their_signer_and_bind_their_codewords() {
        let alice = crypto::Identity::from_secrets([1; 32], [2; 32]);
        let mallory = crypto::Identity::from_secrets([3; 32], [4; 32]);
        let params = entangle::Params::new(1, 1, 2, 16);
        let content = *blake3::hash(b"hello").as_bytes();
        let sign = |who: &crypto::Identity| SignedWrite {
            auth: crypto::WriteAuth::sign(who, &content, Some(5), 1_000, 77),
            session: Some(5),
        };
        let signed = sign(&alice);
        let id = signed.document_id();
        let (rec, _) = entangle::encode(
            params,
            entangle::CodewordId::derive(&id, 0),
            b"hello",
            &[(entangle::BlockKey::anchor(16, 0), &[][..])],
        )
        .unwrap();
        let rec = entangle::Record::from(rec);
        let d = DocRecord {
            params,
            len: 5,
            content_hash: content,
            codewords: vec![BlockKey::of(&encode_record(&rec))],
            writer: Some(alice.user_id().0),
            created_us: Some(123),
            signed: Some(signed.clone()),
        };
        let bytes = d.encode();
        assert!(bytes.starts_with(DOCUMENT_MAGIC_V3));
        let back = DocRecord::decode(&bytes).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.verified_writer(), Ok(alice.user_id().0));
        assert!(back.owns_codeword(0, &rec));
        assert!(!back.owns_codeword(1, &rec));
        // Mallory signs Alice's content and names Alice's codewords: his record verifies as
        // his, but it owns none of them.
        let forged = DocRecord {
            signed: Some(sign(&mallory)),
            writer: Some(mallory.user_id().0),
            ..d.clone()
        };
        assert_eq!(forged.verified_writer(), Ok(mallory.user_id().0));
        assert!(!forged.owns_codeword(0, &rec));
        // A signature for other bytes does not verify.
        let other = DocRecord {
            content_hash: [9; 32],
            ..d.clone()
        };
        assert!(other.verified_writer().is_err());
        // Alice's id on Mallory's signature neither.
        let mut swapped = sign(&mallory);
        swapped.auth.user = alice.user_id();
        let swapped = DocRecord {
            signed: Some(swapped),
            ..d
        };
        assert!(swapped.verified_writer().is_err());
    }
}
