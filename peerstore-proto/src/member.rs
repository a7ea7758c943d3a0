//! The member protocol (`/peerstore/member/1`): what ring members ask of each other to keep
//! blocks, records and the entanglement's metadata replicated and repaired. Every request acts
//! on the receiving node's local state only; routing through the ring is the sender's job.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::admin::{AuditPage, EntangleStats, RepairSummary, ScrubMode, ScrubReport};
use crate::client::StatusReport;
use crate::frame::{put_into, Audience, Bulk, Message};
use crate::{BlockKey, ErrorCode, ErrorResponse, NodeAddr};

/// One challenge of a proof of possession: the key and a fresh random nonce.
pub type Challenge = (BlockKey, [u8; 32]);

/// Most challenges in one [`MemberRequest::Prove`] or [`EntRequest::ProveSingle`]: answering
/// one reads and hashes a whole block (up to [`crate::MAX_BLOCK_SIZE`]), so a request costs
/// at most 16 block reads.
pub const MAX_PROVE_KEYS: usize = 16;

/// Most blocks in one [`MemberRequest::StoreLocalBatch`] or [`EntRequest::StoreSingleBatch`]
/// (their bytes together are bounded by the frame: [`crate::MAX_BLOCK_SIZE`]).
pub const MAX_STORE_BATCH: usize = 64;

/// Splits a batch's bulk bytes into its blocks: `sizes` in order, summing to exactly
/// `data.len()`, at most [`MAX_STORE_BATCH`] of them. A description of what is wrong otherwise
/// (nothing is allocated: the slices borrow `data`).
pub fn split_batch<'a>(
    sizes: &[(BlockKey, u32)],
    data: &'a [u8],
) -> Result<Vec<(BlockKey, &'a [u8])>, String> {
    if sizes.len() > MAX_STORE_BATCH {
        return Err(format!(
            "a batch of {} blocks exceeds {MAX_STORE_BATCH}",
            sizes.len()
        ));
    }
    let Some(blocks) = crate::frame::split_lengths(sizes.iter().map(|(_, n)| Some(*n)), data)
    else {
        let total: u64 = sizes.iter().map(|(_, n)| u64::from(*n)).sum();
        return Err(format!(
            "a batch's sizes add up to {total} bytes but it carries {}",
            data.len()
        ));
    };
    Ok(sizes
        .iter()
        .zip(blocks)
        .map(|((k, _), b)| (*k, b.unwrap_or_default()))
        .collect())
}

/// The answer to one challenge: BLAKE3 (in derive-key mode, so it is bound to this purpose)
/// of `nonce || data`. Computable only with the bytes at hand: the key alone, or an index
/// entry, does not give it, and a fresh nonce makes old answers useless.
#[must_use]
pub fn possession_proof(nonce: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("peerstore 2026 proof of possession v1");
    h.update(nonce);
    h.update(data);
    *h.finalize().as_bytes()
}

/// Requests of the member protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRequest {
    /// Store a block on this node only (durable before the answer). Sent by the node that
    /// coordinates a put to every member of the replica set, and by anti-entropy and hand-off.
    StoreLocal {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Store several blocks on this node only, in one durable commit (durable before the
    /// answer): `sizes` names each block's key and length in order, `data` is their bytes one
    /// after the other ([`split_batch`]). The encoder of an entangled write sends each holder
    /// the blocks of a document it holds in one request instead of one each.
    StoreLocalBatch {
        sizes: Vec<(BlockKey, u32)>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a block from this node only.
    FetchLocal { key: BlockKey },
    /// Per-bucket digests of the keys this node holds in the ring interval (from, to], split into
    /// `buckets` equal sub-intervals ([`MemberResponse::Digests`]).
    RangeDigest {
        from: chord::Id,
        to: chord::Id,
        buckets: u16,
    },
    /// Keys this node holds in (from, to], in ring order starting after `after`, at most `limit`.
    ListRange {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
        limit: u32,
    },
    /// Which of `keys` this node holds ([`MemberResponse::Has`], same order). At most
    /// [`crate::MAX_LIST_PAGE`] keys. An index lookup: good for planning, never enough to
    /// delete on (see [`MemberRequest::Prove`]).
    HasLocal { keys: Vec<BlockKey> },
    /// Proof of possession: for each (key, nonce), [`possession_proof`]`(nonce, bytes)` over
    /// the bytes of the key's block in this node's replicated store, read from disk and
    /// verified against the key ([`MemberResponse::Proofs`], same order; `None`: not held or
    /// damaged). At most [`MAX_PROVE_KEYS`] keys. The asker picks fresh random nonces and
    /// checks the answers against its own copy, so only a node that holds the bytes can pass.
    Prove { keys: Vec<Challenge> },
    /// Store a mutable record on this node only (the node checks it may replace what it has).
    StoreRecordLocal {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Read a mutable record from this node only.
    FetchRecordLocal { key: BlockKey },
    /// The mutable records this node holds in (from, to]: key and BLAKE3 of the record bytes
    /// ([`MemberResponse::RecordDigests`]), at most [`crate::MAX_LIST_PAGE`] after `after`.
    ListRecords {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },
    /// This node's view of the ring ([`MemberResponse::Status`]).
    Status,
    /// Requests of the entangled layer.
    Entangled(EntRequest),
    /// Where this node runs: its `--host` and `--zone` ([`MemberResponse::Placement`]), for
    /// spreading replica sets over machines.
    Placement,
    /// Chain-replication traffic of mutable records ([`crate::record`]), at most
    /// [`crate::MAX_CHAIN_ITEMS`] items; answered [`MemberResponse::Ok`] at once (the chain
    /// repairs losses by re-sending).
    Chain { items: Vec<crate::ChainItem> },
    /// A client's read or compare-and-set of a record, forwarded by the node the client asked
    /// to a member of the record's chain ([`MemberResponse::Chain`]). `found`: the founding
    /// view, when the forwarding node found no member that holds the record and the request
    /// creates it (`expected` 0).
    ChainRequest {
        key: BlockKey,
        id: chain::ReqId,
        request: chain::Request,
        found: Option<chain::View<crate::ChainAddr>>,
    },
    /// The newest version of a record this member's replica holds, committed or not, without
    /// the chain's read lease ([`MemberResponse::Chain`] with a `Value`, or `Unknown`): the
    /// last resort of a reader when the chain has lost its majority.
    ChainLocal { key: BlockKey },
}

impl MemberRequest {
    /// Requests that may run for minutes: the per-node parts of ring-wide repair, audit and
    /// scrub.
    #[must_use]
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            MemberRequest::Entangled(
                EntRequest::RepairLocal
                    | EntRequest::AuditLocal { .. }
                    | EntRequest::ScrubLocal { .. }
            )
        )
    }

    /// A short name for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            MemberRequest::StoreLocal { .. } => "store-local",
            MemberRequest::StoreLocalBatch { .. } => "store-local-batch",
            MemberRequest::FetchLocal { .. } => "fetch-local",
            MemberRequest::RangeDigest { .. } => "range-digest",
            MemberRequest::ListRange { .. } => "list-range",
            MemberRequest::HasLocal { .. } => "has-local",
            MemberRequest::Prove { .. } => "prove",
            MemberRequest::StoreRecordLocal { .. } => "store-record-local",
            MemberRequest::FetchRecordLocal { .. } => "fetch-record-local",
            MemberRequest::ListRecords { .. } => "list-records",
            MemberRequest::Status => "status",
            MemberRequest::Entangled(e) => e.kind(),
            MemberRequest::Placement => "placement",
            MemberRequest::Chain { .. } => "chain",
            MemberRequest::ChainRequest { .. } => "chain-request",
            MemberRequest::ChainLocal { .. } => "chain-local",
        }
    }
}

/// Node-to-node requests of the entangled layer (carried in [`MemberRequest::Entangled`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntRequest {
    /// A block from this node's replicated or single-copy store ([`EntResponse::Block`]).
    FetchSymbol { key: BlockKey },
    /// Which keys this node holds in either store ([`EntResponse::Has`]).
    HasSymbols { keys: Vec<BlockKey> },
    /// Merge reverse-reference entries into this node's table.
    StoreRefs { entries: Vec<RefsEntry> },
    /// Reverse-reference entries at these positions ([`EntResponse::Refs`]).
    FetchRefs { positions: Vec<BlockKey> },
    /// Positions and digests of entries in (from, to], after `after` ([`EntResponse::RefDigests`]).
    ListRefs {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },
    /// Up to `count` random parity keys this node knows (from its reverse-reference table).
    SampleParities { count: u32 },
    /// Drop the replicated copy of `key` (scrub); refused unless `holder` holds the single copy.
    DropReplica { key: BlockKey, holder: NodeAddr },
    /// Which of `keys` this node holds as single (scrubbed) copies ([`EntResponse::Has`]).
    HasSingle { keys: Vec<BlockKey> },
    /// Proof of possession of single (scrubbed) copies: as [`MemberRequest::Prove`], over the
    /// bytes in this node's single-copy store ([`EntResponse::Proofs`]). At most
    /// [`MAX_PROVE_KEYS`] keys.
    ProveSingle { keys: Vec<Challenge> },
    /// Keep the single copy of a scrubbed parity (hand-off when ownership moves).
    StoreSingle {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Keep the single copies of several parities, in one durable commit: as
    /// [`MemberRequest::StoreLocalBatch`] for the single-copy store (an entangled write's
    /// parities, one request per owner).
    StoreSingleBatch {
        sizes: Vec<(BlockKey, u32)>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Run one repair round over the codeword records this node owns.
    RepairLocal,
    /// Audit (and with `fix`, repair) the records this node owns in (after, its id].
    AuditLocal {
        after: BlockKey,
        limit: u32,
        fix: bool,
    },
    /// Scrub the parities this node owns; `cutoff_us` is the window mode's age limit.
    ScrubLocal {
        mode: ScrubMode,
        cutoff_us: Option<u64>,
    },
    /// Creation times of the newest `count` parities whose entries this node owns.
    NewestCreated { count: u64 },
    /// Set (or with `None` clear) the scrub daemon on this node.
    SetScrubDaemon { policy: Option<(ScrubMode, u64)> },
    /// This node's figures for du.
    LocalStats,
    /// Keep these codeword / document records (each keyed by its BLAKE3; anything that is not
    /// a record is refused).
    StoreRecords { records: Vec<Vec<u8>> },
    /// The records at `keys` held here ([`EntResponse::Records`]).
    FetchRecords { keys: Vec<BlockKey> },
    /// Keys of the records held here in (from, to], after `after` ([`EntResponse::RecordKeys`]).
    ListRecords {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },
    /// The documents written by `writer` among the records this node owns in (after, its id]
    /// ([`EntResponse::Documents`]), at most `limit`.
    ListDocumentsLocal {
        writer: [u8; 32],
        after: BlockKey,
        limit: u32,
    },
    /// Delete what this node holds of document `doc`, named by `statement` (a postcard
    /// `crypto::DeleteStatement`), which this node checks itself: signature, time, and that the
    /// document's record names the statement's user as its writer. `phase` says what:
    /// first every member drops the blocks, then the reverse references, then the codeword
    /// records, then the document record, so a member can always verify against records that
    /// still exist
    /// ([`EntResponse::DeleteOutcome`]).
    DeleteDocument {
        #[serde(with = "serde_bytes")]
        statement: Vec<u8>,
        doc: BlockKey,
        phase: DeletePhase,
    },
}

/// The steps of deleting a document, in order (each on every member before the next).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeletePhase {
    /// The stored blocks of its codewords (replicated and single copies), unless a live
    /// document points at one of them (then nothing: pinned).
    Blocks,
    /// The reverse references of those blocks, once no member holds any of a codeword's
    /// blocks.
    Refs,
    /// Its codeword records, once no member holds any of their blocks.
    Codewords,
    /// Its document record.
    Document,
}

/// What a member did for one [`EntRequest::DeleteDocument`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteOutcome {
    /// Done (or nothing was held); bytes removed from this node's disk.
    Done { bytes: u64 },
    /// A live document points at one of its blocks: nothing deleted.
    Pinned,
    /// Refused: the statement does not authorize it, or the records could not be checked.
    Refused(String),
}

impl EntRequest {
    /// A short name for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            EntRequest::FetchSymbol { .. } => "fetch-symbol",
            EntRequest::HasSymbols { .. } => "has-symbols",
            EntRequest::StoreRefs { .. } => "store-refs",
            EntRequest::FetchRefs { .. } => "fetch-refs",
            EntRequest::ListRefs { .. } => "list-refs",
            EntRequest::SampleParities { .. } => "sample-parities",
            EntRequest::DropReplica { .. } => "drop-replica",
            EntRequest::HasSingle { .. } => "has-single",
            EntRequest::ProveSingle { .. } => "prove-single",
            EntRequest::StoreSingle { .. } => "store-single",
            EntRequest::StoreSingleBatch { .. } => "store-single-batch",
            EntRequest::RepairLocal => "repair-local",
            EntRequest::AuditLocal { .. } => "audit-local",
            EntRequest::ScrubLocal { .. } => "scrub-local",
            EntRequest::NewestCreated { .. } => "newest-created",
            EntRequest::SetScrubDaemon { .. } => "set-scrub-daemon",
            EntRequest::LocalStats => "local-stats",
            EntRequest::StoreRecords { .. } => "store-records",
            EntRequest::FetchRecords { .. } => "fetch-records",
            EntRequest::ListRecords { .. } => "list-ent-records",
            EntRequest::ListDocumentsLocal { .. } => "list-documents-local",
            EntRequest::DeleteDocument { .. } => "delete-document",
        }
    }
}

/// Answers to [`EntRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntResponse {
    Block {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    NotFound,
    Has {
        present: Vec<bool>,
    },
    Refs {
        entries: Vec<Option<RefsEntry>>,
    },
    RefDigests {
        entries: Vec<(BlockKey, [u8; 32])>,
        more: bool,
    },
    Keys {
        keys: Vec<BlockKey>,
    },
    Repaired(RepairSummary),
    Audit(AuditPage),
    Scrubbed(ScrubReport),
    Created {
        times: Vec<u64>,
    },
    Stats(EntangleStats),
    Ok,
    /// Records in the order asked for (`None`: not held); shorter than the request when the
    /// answer reached its size bound (ask again for the rest).
    Records {
        records: Vec<Option<Vec<u8>>>,
    },
    RecordKeys {
        keys: Vec<BlockKey>,
        more: bool,
    },
    /// Answer to [`EntRequest::ProveSingle`].
    Proofs {
        proofs: Vec<Option<[u8; 32]>>,
    },
    /// Answer to [`EntRequest::ListDocumentsLocal`].
    Documents(crate::DocumentPage),
    /// Answer to [`EntRequest::DeleteDocument`].
    DeleteOutcome(DeleteOutcome),
}

/// Responses of the member protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberResponse {
    /// Generic success for requests with nothing to return.
    Ok,
    Block {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    NotFound,
    /// (count, digest) per bucket.
    Digests {
        buckets: Vec<(u64, [u8; 32])>,
    },
    Keys {
        keys: Vec<BlockKey>,
        more: bool,
    },
    Has {
        present: Vec<bool>,
    },
    Record {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    RecordDigests {
        records: Vec<(BlockKey, [u8; 32])>,
        more: bool,
    },
    Status(Box<StatusReport>),
    /// Answer to [`MemberRequest::Prove`]: one proof per challenge, in order (`None`: the
    /// block is not held, or its bytes failed verification).
    Proofs {
        proofs: Vec<Option<[u8; 32]>>,
    },
    Entangled(EntResponse),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Answer to [`MemberRequest::Placement`] (labels of at most 64 bytes).
    Placement {
        host: String,
        zone: String,
    },
    /// Answer to [`MemberRequest::ChainRequest`].
    Chain(crate::ChainAnswer),
}

impl ErrorResponse for MemberResponse {
    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        MemberResponse::Error {
            code,
            message: message.into(),
        }
    }

    fn as_error(&self) -> Option<(ErrorCode, &str)> {
        match self {
            MemberResponse::Error { code, message } => Some((*code, message)),
            _ => None,
        }
    }
}

impl MemberResponse {
    /// An error answer.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        <Self as ErrorResponse>::error(code, message)
    }
}

impl Bulk for MemberRequest {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            MemberRequest::StoreLocal { data, .. }
            | MemberRequest::StoreLocalBatch { data, .. }
            | MemberRequest::Entangled(
                EntRequest::StoreSingle { data, .. } | EntRequest::StoreSingleBatch { data, .. },
            ) => Some(std::mem::take(data)),
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            MemberRequest::StoreLocal { data, .. }
            | MemberRequest::StoreLocalBatch { data, .. }
            | MemberRequest::Entangled(
                EntRequest::StoreSingle { data, .. } | EntRequest::StoreSingleBatch { data, .. },
            ) => put_into(data, bulk),
            _ => false,
        }
    }
}

impl Bulk for MemberResponse {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            MemberResponse::Block { data }
            | MemberResponse::Entangled(EntResponse::Block { data }) => Some(std::mem::take(data)),
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            MemberResponse::Block { data }
            | MemberResponse::Entangled(EntResponse::Block { data }) => put_into(data, bulk),
            _ => false,
        }
    }
}

impl Message for MemberRequest {
    const AUDIENCE: Audience = Audience::Member;
}

impl Message for MemberResponse {
    const AUDIENCE: Audience = Audience::Member;
}

/// Most referrers kept per reverse-reference entry (bounds what a peer can make us store).
pub const MAX_REFERRERS: usize = 4096;

/// What the ring knows about one stored parity: its own codeword (to re-form it when it is
/// rebuilt), when it was written (for window scrub) and the codewords that point at it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsEntry {
    /// The parity's key.
    pub block: BlockKey,
    /// Key of the codeword-record block of its own codeword.
    pub own: Option<BlockKey>,
    /// When it was written, in microseconds since the Unix epoch, plus its position among the
    /// parities of its write, so the parities of one write are ordered too (minimum over
    /// merges).
    pub created_us: Option<u64>,
    /// Keys of the codeword-record blocks of the codewords that use it as a pointer.
    pub referrers: BTreeSet<BlockKey>,
}

impl Default for RefsEntry {
    fn default() -> Self {
        RefsEntry {
            block: BlockKey::ZERO,
            own: None,
            created_us: None,
            referrers: BTreeSet::new(),
        }
    }
}

impl RefsEntry {
    /// Union merge; returns whether `self` changed.
    pub fn merge(&mut self, o: &RefsEntry) -> bool {
        let before = self.clone();
        if self.own.is_none() {
            self.own = o.own;
        }
        self.created_us = match (self.created_us, o.created_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for r in &o.referrers {
            if self.referrers.len() >= MAX_REFERRERS {
                break;
            }
            self.referrers.insert(*r);
        }
        *self != before
    }

    /// Serialized form.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Parses a stored entry.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<RefsEntry> {
        postcard::from_bytes(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame, MAX_MEMBER_FRAME};

    #[test]
    fn proofs_depend_on_nonce_and_bytes() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let data = b"block bytes".to_vec();
        assert_eq!(possession_proof(&a, &data), possession_proof(&a, &data));
        assert_ne!(possession_proof(&a, &data), possession_proof(&b, &data));
        assert_ne!(
            possession_proof(&a, &data),
            possession_proof(&a, b"block byte")
        );
        // Not the block's key, nor anything computable from the key alone.
        assert_ne!(possession_proof(&a, &data), BlockKey::of(&data).0);
        // The nonce and the bytes are not interchangeable at their boundary.
        let mut joined = a.to_vec();
        joined.extend_from_slice(&data);
        assert_ne!(
            possession_proof(&a, &data),
            *blake3::hash(&joined).as_bytes()
        );
    }

    #[test]
    fn prove_messages_round_trip() {
        let keys: Vec<Challenge> = (0..MAX_PROVE_KEYS as u8)
            .map(|i| (BlockKey([i; 32]), [i ^ 0xff; 32]))
            .collect();
        let reqs = [
            MemberRequest::Prove { keys: keys.clone() },
            MemberRequest::Entangled(EntRequest::ProveSingle { keys }),
        ];
        for r in reqs {
            let bytes = encode_frame(&r, MAX_MEMBER_FRAME).unwrap();
            assert_eq!(decode_frame::<MemberRequest>(&bytes).unwrap(), r);
        }
        let answers = [
            MemberResponse::Proofs {
                proofs: vec![Some([7; 32]), None],
            },
            MemberResponse::Entangled(EntResponse::Proofs {
                proofs: vec![None, Some([9; 32])],
            }),
        ];
        for a in answers {
            let bytes = encode_frame(&a, MAX_MEMBER_FRAME).unwrap();
            assert_eq!(decode_frame::<MemberResponse>(&bytes).unwrap(), a);
        }
    }

    #[test]
    fn batches_round_trip_and_split_exactly() {
        let blocks: Vec<Vec<u8>> = vec![vec![1; 100], vec![], vec![3; 70_000]];
        let sizes: Vec<(BlockKey, u32)> = blocks
            .iter()
            .map(|b| (BlockKey::of(b), b.len() as u32))
            .collect();
        let data = blocks.concat();
        let reqs = [
            MemberRequest::StoreLocalBatch {
                sizes: sizes.clone(),
                data: data.clone(),
            },
            MemberRequest::Entangled(EntRequest::StoreSingleBatch {
                sizes: sizes.clone(),
                data: data.clone(),
            }),
        ];
        for r in reqs {
            let bytes = encode_frame(&r, MAX_MEMBER_FRAME).unwrap();
            assert_eq!(decode_frame::<MemberRequest>(&bytes).unwrap(), r);
        }
        let split = split_batch(&sizes, &data).unwrap();
        assert_eq!(split.len(), 3);
        for ((k, b), orig) in split.iter().zip(&blocks) {
            assert_eq!(*k, BlockKey::of(orig));
            assert_eq!(*b, orig.as_slice());
        }
        // Sizes that do not add up to the bytes, or too many blocks, are refused.
        assert!(split_batch(&sizes, &data[1..]).is_err());
        let mut long = sizes.clone();
        long[0].1 += 1;
        assert!(split_batch(&long, &data).is_err());
        let mut huge = sizes.clone();
        huge[2].1 = u32::MAX;
        assert!(split_batch(&huge, &data).is_err());
        let many = vec![(BlockKey([0; 32]), 0u32); MAX_STORE_BATCH + 1];
        assert!(split_batch(&many, &[]).unwrap_err().contains("exceeds"));
        assert!(split_batch(&many[..MAX_STORE_BATCH], &[]).is_ok());
    }
}
