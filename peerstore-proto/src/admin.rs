//! The admin protocol (`/peerstore/admin/1`): ring-wide operations that an operator or the
//! client's entanglement commands start at one node, which runs them over every member.

use serde::{Deserialize, Serialize};

use crate::frame::{Audience, Bulk, Message};
use crate::{BlockKey, ErrorCode, ErrorResponse};

/// Requests of the admin protocol. All but [`AdminRequest::EntangleStats`] may run for
/// minutes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Rebuild lost blocks from the entanglement: all of the ring (empty `keys`, rounds until a
    /// fixed point) or the given keys ([`AdminResponse::Repaired`]).
    Repair { keys: Vec<BlockKey> },
    /// Check the ring's codewords in key order after `after`, at most `limit` per page; with
    /// `fix` repair the damaged ones ([`AdminResponse::AuditPage`]).
    Audit {
        after: Option<BlockKey>,
        limit: u32,
        fix: bool,
    },
    /// Replica management over the whole ring ([`AdminResponse::Scrubbed`]); `once == false`
    /// also sets the scrub daemon on every node (`interval_ms == 0` stops it).
    Scrub {
        mode: ScrubMode,
        once: bool,
        interval_ms: u64,
    },
    /// Storage figures of the ring for du ([`AdminResponse::EntangleStats`]).
    EntangleStats,
}

impl AdminRequest {
    /// A short name for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            AdminRequest::Repair { .. } => "repair",
            AdminRequest::Audit { .. } => "audit",
            AdminRequest::Scrub { .. } => "scrub",
            AdminRequest::EntangleStats => "entangle-stats",
        }
    }
}

/// Responses of the admin protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Repaired(RepairSummary),
    AuditPage(AuditPage),
    Scrubbed(ScrubReport),
    EntangleStats(Box<EntangleStats>),
    Error { code: ErrorCode, message: String },
}

impl ErrorResponse for AdminResponse {
    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        AdminResponse::Error {
            code,
            message: message.into(),
        }
    }

    fn as_error(&self) -> Option<(ErrorCode, &str)> {
        match self {
            AdminResponse::Error { code, message } => Some((*code, message)),
            _ => None,
        }
    }
}

impl AdminResponse {
    /// An error answer.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        <Self as ErrorResponse>::error(code, message)
    }
}

impl Bulk for AdminRequest {}
impl Bulk for AdminResponse {}

impl Message for AdminRequest {
    const AUDIENCE: Audience = Audience::Admin;
}

impl Message for AdminResponse {
    const AUDIENCE: Audience = Audience::Admin;
}

/// Replica management policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScrubMode {
    /// A parity pointed at by at least `threshold` codewords keeps one copy.
    Pointers { threshold: u32 },
    /// A parity that is not among the `blocks` most recently written ones keeps one copy.
    Window { blocks: u64 },
}

/// What a scrub did (summed over the nodes it ran on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubReport {
    /// Nodes that ran it.
    pub nodes: u32,
    /// Replicated parities examined.
    pub examined: u64,
    /// Parities brought down to one copy in this run.
    pub scrubbed: u64,
    /// Replica files removed from disk.
    pub replicas_removed: u64,
    /// Bytes those files held.
    pub bytes_freed: u64,
    /// Parities already at one copy.
    pub single: u64,
    /// Errors (the parity keeps its replicas; a later run retries).
    pub errors: u64,
    /// Eligible blocks that keep their replicas because their codeword already has as many
    /// single copies on that host (or zone) as it can lose (placement across hosts).
    pub kept_for_spread: u64,
}

impl ScrubReport {
    /// Adds another node's figures.
    pub fn add(&mut self, o: &ScrubReport) {
        self.nodes += o.nodes;
        self.examined += o.examined;
        self.scrubbed += o.scrubbed;
        self.replicas_removed += o.replicas_removed;
        self.bytes_freed += o.bytes_freed;
        self.single += o.single;
        self.errors += o.errors;
        self.kept_for_spread += o.kept_for_spread;
    }
}

/// What a repair did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairSummary {
    /// Passes over the ring (a pass can unlock codewords for the next one).
    pub passes: u32,
    /// Codewords checked (over all passes).
    pub checked: u64,
    /// Codewords found missing symbols.
    pub damaged: u64,
    /// Blocks rebuilt, verified and stored.
    pub rebuilt: u64,
    /// Codewords still undecodable at the end.
    pub undecodable: u64,
    /// Requested keys (targeted repair) still missing at the end.
    pub still_missing: Vec<BlockKey>,
    /// Errors (unreachable nodes, stores that failed).
    pub errors: u64,
}

impl RepairSummary {
    /// Adds another node's or pass's figures (not `passes` or `still_missing`).
    pub fn add(&mut self, o: &RepairSummary) {
        self.checked += o.checked;
        self.damaged += o.damaged;
        self.rebuilt += o.rebuilt;
        self.undecodable += o.undecodable;
        self.errors += o.errors;
    }
}

/// One damaged codeword found by an audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodewordAudit {
    /// Key of its codeword-record block.
    pub record: BlockKey,
    /// Its codeword id.
    pub codeword: [u8; 32],
    /// Its pointers and parities that no node holds.
    pub missing: Vec<BlockKey>,
    /// Whether the symbols still held decode it (`missing <= p - s`).
    pub decodable: bool,
    /// Blocks rebuilt for it (audit with `fix`).
    pub rebuilt: u32,
}

/// One page of an audit over the codeword records of the ring, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// Codewords checked in this page.
    pub checked: u64,
    /// The damaged ones.
    pub damaged: Vec<CodewordAudit>,
    /// Cursor for the next page (`Audit { after: next }`); `None` at the end of the ring.
    pub next: Option<BlockKey>,
}

/// Storage figures for `du`, summed over the ring (or one node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntangleStats {
    /// "step" or "none".
    pub kind: String,
    /// (s, t, p, B) when step.
    pub params: Option<entangle::Params>,
    /// What a codeword stores (systematic: `s` sources and `p` parities; parity-only: `p`
    /// parities) when step.
    pub layout: Option<entangle::Layout>,
    /// Replication factor r.
    pub replication: u32,
    /// Nodes counted.
    pub nodes: u32,
    /// Codewords in the ring (each counted once, by its record's owner).
    pub codewords: u64,
    /// Document bytes they carry.
    pub logical_bytes: u64,
    /// Copies of stored entangled blocks (parities, and sources in the systematic layout) held
    /// as replicated blocks. (The `parity_` names predate the systematic layout.)
    pub parity_copies_replicated: u64,
    /// Copies of stored entangled blocks held as single copies (scrubbed).
    pub parity_copies_single: u64,
    /// Bytes of all copies of stored entangled blocks.
    pub parity_bytes: u64,
    /// Bytes of all other blocks held (records, documents, plain blocks, all copies).
    pub other_bytes: u64,
    /// Reverse-reference entries held (all copies).
    pub refs_entries: u64,
}

impl EntangleStats {
    /// Adds another node's figures.
    pub fn add(&mut self, o: &EntangleStats) {
        self.nodes += o.nodes;
        self.codewords += o.codewords;
        self.logical_bytes += o.logical_bytes;
        self.parity_copies_replicated += o.parity_copies_replicated;
        self.parity_copies_single += o.parity_copies_single;
        self.parity_bytes += o.parity_bytes;
        self.other_bytes += o.other_bytes;
        self.refs_entries += o.refs_entries;
    }

    /// Stored entangled bytes per document byte (`stored/s x r` before scrub, `stored/s`
    /// after a full scrub, plus the headers; `stored` is `p`, or `s + p` when systematic).
    #[must_use]
    pub fn overhead(&self) -> f64 {
        if self.logical_bytes == 0 {
            0.0
        } else {
            self.parity_bytes as f64 / self.logical_bytes as f64
        }
    }
}
