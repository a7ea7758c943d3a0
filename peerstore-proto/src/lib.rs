//! PeerStore's wire protocols, below both the node and the client: what a ring member, a
//! client and an administrator may say to a node, and how it travels.
//!
//! Four request-response protocols run over one libp2p connection per peer, one message enum
//! each, so that a node can decide per protocol who may speak it (docs/PROTOCOL.md):
//! - [`CHORD_PROTOCOL`]: Chord maintenance between members ([`ChordEnvelope`]).
//! - [`CLIENT_PROTOCOL`]: what clients ask of the ring ([`ClientRequest`] / [`ClientResponse`]).
//! - [`MEMBER_PROTOCOL`]: replication, anti-entropy, repair and scrub between members
//!   ([`MemberRequest`] / [`MemberResponse`]).
//! - [`ADMIN_PROTOCOL`]: ring-wide repair, audit, scrub and storage figures
//!   ([`AdminRequest`] / [`AdminResponse`]).
//!
//! Every frame is bounded ([`frame`]) and names its audience; [`RpcClient`] is an endpoint that
//! speaks them without being a member (clients, tools, tests).
//!
//! ```
//! use peerstore_proto::{decode_frame, encode_frame, BlockKey, ClientRequest, MAX_CLIENT_FRAME};
//! let get = ClientRequest::Get { key: BlockKey::of(b"block") };
//! let body = encode_frame(&get, MAX_CLIENT_FRAME).unwrap();
//! assert_eq!(decode_frame::<ClientRequest>(&body).unwrap(), get);
//! ```

pub mod admin;
pub mod admission;
pub mod chord_msg;
pub mod client;
pub mod frame;
pub mod key;
pub mod limits;
pub mod local;
pub mod member;
pub mod mux;
pub mod net;
pub mod record;
pub mod rpc;
pub mod share;
pub mod tree;

use libp2p::StreamProtocol;

pub use admin::{
    AdminRequest, AdminResponse, AuditPage, CodewordAudit, EntangleStats, RepairSummary, ScrubMode,
    ScrubReport,
};
pub use admission::{
    Certificate, Credential, Hello, HelloResponse, Identity, Invite, Revocations, RingKey,
    RingPublic, Role,
};
pub use chord_msg::{ChordAck, ChordEnvelope, ChordMessage};
pub use client::split_held;
pub use client::{
    ChainStatus, ClientRequest, ClientResponse, DeleteReport, DocumentInfo, DocumentPage,
    EntangleSession, ErrorCode, MaintenanceActivity, MemberInfo, PlacementReport, SourcePlan,
    StatusReport, UserUsage, MAX_SESSION_KEEP, MAX_STATUS_CHAINS, MAX_SYMBOLS_PER_REQUEST,
    MAX_WRITE_AUTH,
};
pub use frame::{
    decode_frame, decode_incoming, encode_frame, Audience, Bulk, FramedCodec, Incoming, Message,
};
pub use key::{key_id, parse_node_addr, ring_id, BlockKey, NodeAddr, ParseKeyError};
pub use member::{
    split_batch, DeleteOutcome, DeletePhase, EntRequest, EntResponse, MemberRequest,
    MemberResponse, RefsEntry, MAX_REFERRERS, MAX_STORE_BATCH,
};
pub use record::{CasOutcome, ChainAddr, ChainAnswer, ChainItem, ReadFrom, MAX_CHAIN_ITEMS};
pub use rpc::{RpcClient, RpcError};

/// Protocol name of the Chord maintenance protocol (members only).
pub const CHORD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/chord/3");
/// Protocol name of the client protocol.
pub const CLIENT_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/client/1");
/// Protocol name of the member protocol (members only).
pub const MEMBER_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/member/1");
/// Protocol name of the admin protocol.
pub const ADMIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/admin/1");
/// Protocol name of the greeting that opens every conversation ([`admission::Hello`]).
pub const HELLO_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/hello/1");

/// Largest block the ring stores. Blocks are content addressed: key = BLAKE3(bytes).
pub const MAX_BLOCK_SIZE: usize = 4 << 20;
/// Bound on one Chord message (successor lists of a few hundred entries fit easily).
pub const MAX_CHORD_FRAME: usize = 256 << 10;
/// Bound on one client-protocol frame: a block plus generous room for the envelope.
pub const MAX_CLIENT_FRAME: usize = MAX_BLOCK_SIZE + (64 << 10);
/// Bound on one member-protocol frame: a block, or a page of records, plus the envelope.
pub const MAX_MEMBER_FRAME: usize = MAX_BLOCK_SIZE + (64 << 10);
/// Bound on one admin request.
pub const MAX_ADMIN_REQUEST: usize = 1 << 20;
/// Bound on one admin answer (an audit page lists damaged codewords).
pub const MAX_ADMIN_RESPONSE: usize = 4 << 20;
/// Most keys returned by one [`MemberRequest::ListRange`] page, and most keys in any request
/// that lists keys.
pub const MAX_LIST_PAGE: u32 = 4096;
/// Most buckets in one [`MemberRequest::RangeDigest`].
pub const MAX_DIGEST_BUCKETS: u16 = 1024;
/// Largest mutable (signed) record, e.g. a user's root.
pub const MAX_RECORD_SIZE: usize = 128 << 10;

/// The codec of the Chord protocol.
pub type ChordCodec = FramedCodec<ChordEnvelope, ChordAck>;
/// The codec of the client protocol.
pub type ClientCodec = FramedCodec<ClientRequest, ClientResponse>;
/// The codec of the member protocol.
pub type MemberCodec = FramedCodec<MemberRequest, MemberResponse>;
/// The codec of the admin protocol.
pub type AdminCodec = FramedCodec<AdminRequest, AdminResponse>;
/// The codec of the hello protocol.
pub type HelloCodec = FramedCodec<admission::Hello, admission::HelloResponse>;

#[must_use]
pub fn hello_codec() -> HelloCodec {
    FramedCodec::new(admission::MAX_HELLO_FRAME, admission::MAX_HELLO_FRAME)
}

#[must_use]
pub fn chord_codec() -> ChordCodec {
    FramedCodec::new(MAX_CHORD_FRAME, 1024)
}

#[must_use]
pub fn client_codec() -> ClientCodec {
    FramedCodec::new(MAX_CLIENT_FRAME, MAX_CLIENT_FRAME)
}

#[must_use]
pub fn member_codec() -> MemberCodec {
    FramedCodec::new(MAX_MEMBER_FRAME, MAX_MEMBER_FRAME)
}

#[must_use]
pub fn admin_codec() -> AdminCodec {
    FramedCodec::new(MAX_ADMIN_REQUEST, MAX_ADMIN_RESPONSE)
}

/// Locks a mutex, using the data even if a panicking thread poisoned it (the data of every
/// mutex in PeerStore stays consistent between statements).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers that carry an error code: each protocol's `Error` variant.
pub trait ErrorResponse: Sized {
    /// The error answer.
    fn error(code: ErrorCode, message: impl Into<String>) -> Self;
    /// The code and message if this is an error answer.
    fn as_error(&self) -> Option<(ErrorCode, &str)>;
}

/// The answer to a request that came on the wrong protocol.
pub fn misrouted<R: ErrorResponse>(on: Audience, found: Audience) -> R {
    let article = |a: Audience| if a == Audience::Admin { "an" } else { "a" };
    R::error(
        ErrorCode::Forbidden,
        format!(
            "{} {found} request sent on the {on} protocol ({}) is refused: {found} requests go on {}",
            article(found),
            on.protocol(),
            found.protocol()
        ),
    )
}
