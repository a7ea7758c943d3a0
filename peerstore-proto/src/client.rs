//! The client protocol (`/peerstore/client/1`): what a client asks of the ring. Any node
//! accepts these and routes them through the ring; none of them acts on a node's local state
//! alone.

use serde::{Deserialize, Serialize};

use crate::frame::{put_into, Audience, Bulk, Message};
use crate::{BlockKey, ErrorResponse, NodeAddr};

/// Most bytes of a `PutDocument`'s signed authorization (a `crypto::WriteAuth` is about 120).
pub const MAX_WRITE_AUTH: usize = 256;

/// Most documents one [`EntangleSession`] update may name.
pub const MAX_SESSION_KEEP: usize = 1024;

/// A document's write session: an entangled document points only into documents its writer
/// keeps, so that deleting old data never leaves a live document's pointer behind. Pointers of
/// a session's documents go to the session's own earlier documents and to documents the client
/// named in `keep` (documents of the same writer that the snapshot being written still
/// references); the node checks the writer of each. Anchors fill in where neither has enough.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntangleSession {
    /// Chosen at random by the client, one per run (a backup, a sync pass).
    pub id: u64,
    /// Documents (keys `PutDocument` returned) added to the session's kept set with this
    /// request; at most [`MAX_SESSION_KEEP`].
    pub keep: Vec<BlockKey>,
}

/// Requests of the client protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Store a block in the ring (routed). Answered with [`ClientResponse::Stored`] once a
    /// majority of the key's replica set holds it durably.
    Put {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a block from the ring (routed). [`ClientResponse::Block`] or
    /// [`ClientResponse::NotFound`].
    Get { key: BlockKey },
    /// Who owns `key`, and its replica set ([`ClientResponse::Owner`]).
    Lookup { key: BlockKey },
    /// This node's view of the ring and its storage ([`ClientResponse::Status`]).
    Status,
    /// Store a signed mutable record (e.g. a user's root) in the ring (routed by `key`).
    PutRecord {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Read a mutable record from the ring (routed by `key`).
    GetRecord { key: BlockKey },
    /// Store a document (routed; this node encodes). With entanglement "step" the document is
    /// entangled and stored as parities; with "none" it is one plain block. Answered with
    /// [`ClientResponse::DocumentStored`]; at most [`crate::MAX_BLOCK_SIZE`] bytes.
    PutDocument {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The writing user's signature over the document (a postcard-encoded
        /// `crypto::WriteAuth` over BLAKE3 of `data`, the session id, the time and a nonce, at
        /// most [`MAX_WRITE_AUTH`] bytes). The node records the signer as the document's
        /// writer (only a statement signed by this user can delete it,
        /// [`ClientRequest::DeleteDocuments`]) and keeps the signature in the document record,
        /// so every holder can check it; a stale or replayed signature is refused. `None`: an
        /// anonymous document that nobody can delete.
        #[serde(with = "serde_bytes")]
        auth: Option<Vec<u8>>,
        /// The write session the document belongs to (a client's backup run), which decides
        /// where its pointers may go; `None`: anywhere in the ring (older clients).
        session: Option<EntangleSession>,
    },
    /// Read a document by the key `PutDocument` returned ([`ClientResponse::Block`]).
    GetDocument { key: BlockKey },
    /// The documents written by `writer`, in key order after `after`, at most `limit` per page
    /// ([`ClientResponse::Documents`]); entangled rings only.
    ListDocuments {
        writer: [u8; 32],
        after: Option<BlockKey>,
        limit: u32,
    },
    /// Delete documents: `statement` is a postcard-encoded `crypto::DeleteStatement` signed by
    /// their writer. Every node that holds a piece of a document checks the statement before
    /// deleting it; a document whose blocks other live documents use as pointers stays until
    /// they go ([`ClientResponse::Deleted`]).
    DeleteDocuments {
        #[serde(with = "serde_bytes")]
        statement: Vec<u8>,
    },
    /// Read a mutable record linearizably from its chain ([`crate::record`]):
    /// [`ClientResponse::RecordValue`] (version 0 and no record: absent).
    RecordRead {
        key: BlockKey,
        from: crate::ReadFrom,
    },
    /// Compare-and-set of a signed mutable record: stored as version `expected + 1` if the
    /// record's version is `expected` (0: create it), else the current version and record
    /// ([`ClientResponse::RecordCas`]). `id` names the request across retries (pick `client`
    /// at random once, raise `seq` per request): a retry of a write that took effect is
    /// answered with the version it created. The record must be signed by the key's user and
    /// its sequence number must grow.
    RecordCas {
        key: BlockKey,
        expected: u64,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
        id: chain::ReqId,
    },
    /// Where a document's bytes lie, so that a reader fetches them from their holders itself
    /// ([`ClientResponse::DocumentSources`]): on an entangled ring whose document's codewords
    /// are all systematic, the source blocks of each codeword in order. A document that has no
    /// such plan (a parity-only codeword, a plain block) is answered with
    /// [`ClientResponse::NotFound`] and read with [`ClientRequest::GetDocument`]; a ring that
    /// does not entangle answers [`ErrorCode::BadRequest`].
    DocumentSources { key: BlockKey },
    /// Read one stored block of an entangled codeword (a source or a parity) wherever this
    /// node keeps it (replicated or as the single copy after replica management), else from
    /// the other members of its replica set ([`ClientResponse::Block`] or
    /// [`ClientResponse::NotFound`]). Routed to the key's owner first.
    GetSymbol { key: BlockKey },
    /// Read several stored blocks of entangled codewords from this node's own stores in one
    /// answer ([`ClientResponse::Symbols`], one entry per key, in order): how a reader takes the
    /// sources of a document ([`ClientRequest::DocumentSources`]) that one member holds in one
    /// round trip instead of one request each. At most [`MAX_SYMBOLS_PER_REQUEST`] keys; a
    /// block this node does not hold, and every block past [`crate::MAX_BLOCK_SIZE`] bytes of
    /// answer, is `None` (read it with [`ClientRequest::GetSymbol`]). Routed like a
    /// `GetSymbol` of its first key: the reader batches the keys one member should hold.
    GetSymbols { keys: Vec<BlockKey> },
    /// A [`ClientRequest::DocumentSources`] plan together with the source blocks this node
    /// holds itself ([`ClientResponse::SourcesHeld`]): a reader gets the plan and, on a small
    /// ring, most of the document in one round trip, and fetches only the rest from the other
    /// holders. Blocks as in [`ClientRequest::GetSymbols`] (this node's own stores, `None` for
    /// a block it does not hold and for every block once the answer would pass
    /// [`crate::MAX_BLOCK_SIZE`] bytes). Routed like `DocumentSources`; the same errors.
    SourcesHeld { key: BlockKey },
}

/// Most keys of one [`ClientRequest::GetSymbols`].
pub const MAX_SYMBOLS_PER_REQUEST: usize = 16;

/// Where a document's bytes lie ([`ClientRequest::DocumentSources`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePlan {
    /// The document's length in bytes.
    pub len: u64,
    /// BLAKE3 of the document's bytes (the reader checks what it assembled against it).
    pub content_hash: [u8; 32],
    /// Per codeword, in document order, the keys of its source blocks in stored order (each
    /// block is an `entangle::block` whose payload is the next shard of the codeword's bytes).
    pub codewords: Vec<Vec<BlockKey>>,
}

impl SourcePlan {
    /// Most source blocks a plan may name (a document of [`crate::MAX_BLOCK_SIZE`] bytes in
    /// blocks of at least 4 KiB).
    pub const MAX_SOURCES: usize = crate::MAX_BLOCK_SIZE / 4096;
}

/// One document of [`ClientRequest::ListDocuments`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentInfo {
    pub key: BlockKey,
    pub len: u64,
    /// When it was stored (microseconds since the Unix epoch, by the encoding node's clock).
    pub created_us: u64,
}

/// A page of [`ClientRequest::ListDocuments`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentPage {
    pub documents: Vec<DocumentInfo>,
    /// Cursor for the next page; `None` at the end of the ring.
    pub next: Option<BlockKey>,
}

/// What [`ClientRequest::DeleteDocuments`] did, per document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReport {
    /// Gone from every node that answered (and every member answered).
    pub deleted: Vec<BlockKey>,
    /// Kept because live documents point at its blocks; a later prune deletes it once they
    /// are gone.
    pub pinned: Vec<BlockKey>,
    /// Not (completely) deleted, with why: run the prune again.
    pub failed: Vec<(BlockKey, String)>,
    /// Stored bytes removed from the nodes' disks (all copies).
    pub bytes_freed: u64,
}

impl ClientRequest {
    /// A short name for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            ClientRequest::Put { .. } => "put",
            ClientRequest::Get { .. } => "get",
            ClientRequest::Lookup { .. } => "lookup",
            ClientRequest::Status => "status",
            ClientRequest::PutRecord { .. } => "put-record",
            ClientRequest::GetRecord { .. } => "get-record",
            ClientRequest::PutDocument { .. } => "put-document",
            ClientRequest::GetDocument { .. } => "get-document",
            ClientRequest::ListDocuments { .. } => "list-documents",
            ClientRequest::DeleteDocuments { .. } => "delete-documents",
            ClientRequest::RecordRead { .. } => "record-read",
            ClientRequest::RecordCas { .. } => "record-cas",
            ClientRequest::DocumentSources { .. } => "document-sources",
            ClientRequest::GetSymbol { .. } => "get-symbol",
            ClientRequest::GetSymbols { .. } => "get-symbols",
            ClientRequest::SourcesHeld { .. } => "sources-held",
        }
    }
}

/// Why a request failed, as a machine-readable code; the message says what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The node (or a majority of the replica set) has no room for the block.
    Full,
    /// The request is malformed (bad key, oversized, out of bounds).
    BadRequest,
    /// The ring could not be reached well enough to complete the request; retry later.
    Unavailable,
    /// A record update was refused (bad signature, sequence number not growing).
    Rejected,
    /// The node is not (yet) a ring member.
    NotMember,
    /// Anything else, with details in the message.
    Internal,
    /// The request is not allowed on this protocol or for this sender.
    Forbidden,
    /// The user has stored as much as the node's `--user-quota` allows.
    QuotaExceeded,
}

/// A ring member as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Ring id.
    pub id: chord::Id,
    pub addr: NodeAddr,
}

/// A node's view of the ring and of its storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub id: chord::Id,
    pub addr: NodeAddr,
    pub member: bool,
    pub predecessor: Option<MemberInfo>,
    pub successors: Vec<MemberInfo>,
    /// Distinct finger targets (how many different nodes the finger table points at).
    pub distinct_fingers: u32,
    pub fingers: Vec<MemberInfo>,
    pub replication: u32,
    /// Owned key range (pred, self].
    pub owned_range: (chord::Id, chord::Id),
    pub keys_owned: u64,
    pub keys_replica: u64,
    pub bytes_used: u64,
    pub capacity: u64,
    pub records: u64,
    /// `--user-quota`: bytes each user may store through this node (none: no limit).
    pub user_quota: Option<u64>,
    /// What the users who wrote through this node have stored, largest first (at most 64).
    pub users: Vec<UserUsage>,
    /// What the node's maintenance moved and dropped since it started.
    pub activity: MaintenanceActivity,
    /// Where the node runs and how the copies of the keys it owns spread over machines.
    pub placement: PlacementReport,
    /// What its data directory occupies on disk (allocated bytes of every file but logs):
    /// blocks, single copies, records and indexes, of every user.
    pub disk_bytes: u64,
    /// The record chains this node takes part in (at most [`MAX_STATUS_CHAINS`]).
    pub record_chains: Vec<ChainStatus>,
}

/// Most record chains a [`StatusReport`] lists.
pub const MAX_STATUS_CHAINS: usize = 64;

/// One mutable record's chain as a member sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub key: BlockKey,
    /// The installed view's epoch.
    pub epoch: u64,
    /// The view's members (peer ids), head first.
    pub members: Vec<String>,
    /// This node's role: head, middle, tail, head-and-tail, catching-up or outside.
    pub role: String,
    /// The newest version this member knows is committed.
    pub version: u64,
}

/// Where a node runs (`--host`, `--zone`) and how many machines the replica set of the keys it
/// owns spans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementReport {
    pub host: String,
    pub zone: String,
    /// Distinct hosts among the members that hold the keys this node owns (itself included).
    pub replica_hosts: u32,
    /// Set when those are fewer than r: what is at risk and what to do.
    pub warning: Option<String>,
}

/// Counters of a node's background maintenance since it started: on a settled ring that
/// nobody writes to, none of them moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceActivity {
    /// Blocks and signed records pulled by replication anti-entropy.
    pub pulled: u64,
    /// Blocks and signed records pushed by replication anti-entropy.
    pub pushed: u64,
    /// Copies outside the node's replica range dropped by the clean-up.
    pub cleaned: u64,
    /// Replicated copies of parities dropped by replica management (entangled rings).
    pub parity_copies_dropped: u64,
}

/// One user's usage on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    /// The user's PeerId.
    pub user: String,
    /// The label of the user's certificate.
    pub label: String,
    pub bytes: u64,
}

/// Responses of the client protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The block or record is durable on `replicas` members of its replica set.
    Stored {
        replicas: u32,
    },
    Block {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    NotFound,
    Owner {
        owner: MemberInfo,
        replicas: Vec<MemberInfo>,
        hops: u32,
    },
    Status(Box<StatusReport>),
    Record {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// A document is stored; `key` reads it back with [`ClientRequest::GetDocument`].
    DocumentStored {
        key: BlockKey,
    },
    Documents(DocumentPage),
    Deleted(DeleteReport),
    /// Answer to [`ClientRequest::RecordRead`]: the committed version (0: absent) and the
    /// member that answered.
    RecordValue {
        version: u64,
        #[serde(with = "serde_bytes")]
        record: Option<Vec<u8>>,
        /// The chain's members as the answering replica knows them, head first.
        chain: Vec<crate::ChainAddr>,
    },
    /// Answer to [`ClientRequest::RecordCas`].
    RecordCas(crate::CasOutcome),
    Error {
        code: ErrorCode,
        message: String,
    },
    /// Answer to [`ClientRequest::DocumentSources`].
    DocumentSources(SourcePlan),
    /// Answer to [`ClientRequest::GetSymbols`]: per key, in order, its stored block or `None`.
    Symbols(Vec<Option<serde_bytes::ByteBuf>>),
    /// Answer to [`ClientRequest::SourcesHeld`]: the plan and, per source key in plan order
    /// (its codewords' keys one after the other), the length of its block if this node gave
    /// it; the blocks given are `data`, one after the other in that order (the frame's bulk
    /// payload: the reader takes them from the buffer it read, without copying each).
    SourcesHeld {
        plan: SourcePlan,
        held: Vec<Option<u32>>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

impl ErrorResponse for ClientResponse {
    fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientResponse::Error {
            code,
            message: message.into(),
        }
    }

    fn as_error(&self) -> Option<(ErrorCode, &str)> {
        match self {
            ClientResponse::Error { code, message } => Some((*code, message)),
            _ => None,
        }
    }
}

impl ClientResponse {
    /// An error answer.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        <Self as ErrorResponse>::error(code, message)
    }
}

impl Bulk for ClientRequest {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            ClientRequest::Put { data, .. } | ClientRequest::PutDocument { data, .. } => {
                Some(std::mem::take(data))
            }
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            ClientRequest::Put { data, .. } | ClientRequest::PutDocument { data, .. } => {
                put_into(data, bulk)
            }
            _ => false,
        }
    }
}

impl Bulk for ClientResponse {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            ClientResponse::Block { data } | ClientResponse::SourcesHeld { data, .. } => {
                Some(std::mem::take(data))
            }
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            ClientResponse::Block { data } | ClientResponse::SourcesHeld { data, .. } => {
                put_into(data, bulk)
            }
            _ => false,
        }
    }
}

/// The blocks of a [`ClientResponse::SourcesHeld`]: per entry of `held`, its slice of `data`
/// (`None` where the node gave none). `None` if the lengths do not add up to exactly `data`'s.
#[must_use]
pub fn split_held<'a>(held: &[Option<u32>], data: &'a [u8]) -> Option<Vec<Option<&'a [u8]>>> {
    crate::frame::split_lengths(held.iter().copied(), data)
}

impl Message for ClientRequest {
    const AUDIENCE: Audience = Audience::Client;
}

impl Message for ClientResponse {
    const AUDIENCE: Audience = Audience::Client;
}

/// Turns an error answer into a one-line message.
#[must_use]
pub fn describe(resp: &ClientResponse) -> String {
    match resp {
        ClientResponse::Error { code, message } => match code {
            ErrorCode::Full => format!("node full: {message}"),
            _ => message.clone(),
        },
        other => format!("unexpected answer: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_frame, encode_frame, MAX_CLIENT_FRAME};

    /// A plan's held blocks travel as the frame's bulk payload and split back exactly.
    #[test]
    fn sources_held_round_trips_and_splits() {
        let blocks = [vec![1u8; 300], vec![2u8; 5]];
        let plan = SourcePlan {
            len: 305,
            content_hash: [7; 32],
            codewords: vec![vec![
                BlockKey([1; 32]),
                BlockKey([2; 32]),
                BlockKey([3; 32]),
            ]],
        };
        let held = vec![Some(300), None, Some(5)];
        let answer = ClientResponse::SourcesHeld {
            plan,
            held: held.clone(),
            data: blocks.concat(),
        };
        let bytes = encode_frame(&answer, MAX_CLIENT_FRAME).unwrap();
        let back = decode_frame::<ClientResponse>(&bytes).unwrap();
        assert_eq!(back, answer);
        let ClientResponse::SourcesHeld { held, data, .. } = back else {
            unreachable!()
        };
        let split = split_held(&held, &data).unwrap();
        assert_eq!(
            split,
            vec![Some(&blocks[0][..]), None, Some(&blocks[1][..])]
        );
        // Lengths that do not add up to the bytes are refused.
        assert!(split_held(&held, &data[1..]).is_none());
        assert!(split_held(&[Some(u32::MAX)], &data).is_none());
        assert_eq!(split_held(&[None, None], &[]).unwrap(), vec![None, None]);
    }
}
