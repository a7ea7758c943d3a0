//! The wire protocol that nodes and clients speak: message types, size bounds and the framed
//! postcard codec used by libp2p request-response.
//!
//! Two request-response protocols run over one connection per peer:
//! - `/peerstore/chord/2`: the Chord maintenance messages of the pure core, sent one-way (each is a
//!   request answered with an empty [`ChordAck`]); the core matches its own request ids and runs
//!   its own timeouts.
//! - `/peerstore/data/2`: blocks, lookups, status and anti-entropy ([`Request`] / [`Response`]).
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of postcard. A frame
//! longer than the protocol's bound is refused before it is read, and a frame that does not decode
//! is an error value: the stream is dropped, the node logs it and keeps serving.
//! docs/PROTOCOL.md documents every message.

use std::io;
use std::marker::PhantomData;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use crate::store::BlockKey;

/// Protocol name of the Chord maintenance protocol.
pub const CHORD_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/chord/2");
/// Protocol name of the data protocol (blocks, lookups, status, anti-entropy).
pub const DATA_PROTOCOL: StreamProtocol = StreamProtocol::new("/peerstore/data/2");

/// Largest block the ring stores. Blocks are content addressed: key = BLAKE3(bytes).
pub const MAX_BLOCK_SIZE: usize = 4 << 20;
/// Bound on one Chord message (successor lists of a few hundred entries fit easily).
pub const MAX_CHORD_FRAME: usize = 256 << 10;
/// Bound on one data-protocol frame: a block plus generous room for the envelope.
pub const MAX_DATA_FRAME: usize = MAX_BLOCK_SIZE + (64 << 10);
/// Most keys returned by one [`Request::ListRange`] page.
pub const MAX_LIST_PAGE: u32 = 4096;
/// Most buckets in one [`Request::RangeDigest`].
pub const MAX_DIGEST_BUCKETS: u16 = 1024;
/// Largest mutable (signed) record, e.g. a user's root.
pub const MAX_RECORD_SIZE: usize = 128 << 10;

/// How the daemon names a ring member: its libp2p identity and one address to dial it on.
/// The member's ring id is SHA-256 of the PeerId bytes (see [`ring_id`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    pub peer: PeerId,
    pub addr: Multiaddr,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/p2p/{}", self.addr, self.peer)
    }
}

/// A ring member's id: SHA-256 of its PeerId bytes.
pub fn ring_id(peer: &PeerId) -> chord::Id {
    chord::Id::hash(&peer.to_bytes())
}

/// Converts a block key into the ring position it is stored at (the same 32 bytes).
pub fn key_id(key: &BlockKey) -> chord::Id {
    chord::Id::from_bytes(key.0)
}

/// The Chord message as carried on the wire.
pub type ChordMessage = chord::Message<NodeAddr>;

/// A Chord message with the sender's dialable address. The receiver checks that `from.peer` is
/// the authenticated PeerId of the connection (Noise/TLS prove it), so nobody can speak for
/// another node; the address part is what the sender claims to listen on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChordEnvelope {
    pub from: NodeAddr,
    pub msg: ChordMessage,
}

/// The empty answer to a one-way Chord message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChordAck;

/// A ring member as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Ring id (hex).
    pub id: chord::Id,
    pub addr: NodeAddr,
}

/// Requests of the data protocol. The first group is client facing: any node accepts them and
/// routes them through the ring. The second group is node to node and acts on local state only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Store a block in the ring (routed). Answered with [`Response::Stored`] once a majority of
    /// the key's replica set holds it durably.
    Put {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a block from the ring (routed). [`Response::Block`] or [`Response::NotFound`].
    Get { key: BlockKey },
    /// Who owns `key`, and its replica set ([`Response::Owner`]).
    Lookup { key: BlockKey },
    /// This node's view of the ring and its storage ([`Response::Status`]).
    Status,
    /// Store a signed mutable record (e.g. a user's root) in the ring (routed by `key`).
    PutRecord {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Read a mutable record from the ring (routed by `key`).
    GetRecord { key: BlockKey },

    /// Store a block on this node only (durable before the answer). Sent by the node that
    /// coordinates a put to every member of the replica set, and by anti-entropy and hand-off.
    StoreLocal {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a block from this node only.
    FetchLocal { key: BlockKey },
    /// Per-bucket digests of the keys this node holds in the ring interval (from, to], split into
    /// `buckets` equal sub-intervals ([`Response::Digests`]).
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
    /// Store a mutable record on this node only (the node checks it may replace what it has).
    StoreRecordLocal {
        key: BlockKey,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    /// Read a mutable record from this node only.
    FetchRecordLocal { key: BlockKey },
    /// Which of `keys` this node holds ([`Response::Has`], same order). At most
    /// [`MAX_LIST_PAGE`] keys.
    HasLocal { keys: Vec<BlockKey> },
    /// The mutable records this node holds in (from, to]: key and BLAKE3 of the record bytes
    /// ([`Response::RecordDigests`]), at most [`MAX_LIST_PAGE`] starting after `after`.
    ListRecords {
        from: chord::Id,
        to: chord::Id,
        after: Option<BlockKey>,
    },

    // --- entangled storage (module `entangled`, docs/ENTANGLEMENT-RING.md) ---
    /// Store a document (routed; this node encodes). With entanglement "step" the document is
    /// entangled and stored as parities; with "none" it is one plain block. Answered with
    /// [`Response::DocumentStored`]; at most [`MAX_BLOCK_SIZE`] bytes.
    PutDocument {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Read a document by the key `PutDocument` returned ([`Response::Block`]).
    GetDocument { key: BlockKey },
    /// Rebuild lost blocks from the entanglement: all of the ring (empty `keys`, rounds until a
    /// fixed point) or the given keys ([`Response::Repaired`]).
    Repair { keys: Vec<BlockKey> },
    /// Check the ring's codewords in key order after `after`, at most `limit` per page; with
    /// `fix` repair the damaged ones ([`Response::AuditPage`]).
    Audit {
        after: Option<BlockKey>,
        limit: u32,
        fix: bool,
    },
    /// Replica management over the whole ring ([`Response::Scrubbed`]); `once == false` also
    /// sets the scrub daemon on every node (`interval_ms == 0` stops it).
    Scrub {
        mode: crate::entangled::ScrubMode,
        once: bool,
        interval_ms: u64,
    },
    /// Storage figures of the ring for du ([`Response::EntangleStats`]).
    EntangleStats,
    /// Node-to-node requests of the entangled layer.
    Entangle(crate::entangled::EntRequest),
}

impl Request {
    /// Ring-wide operations that may run for minutes inside one request: repair, audit and
    /// scrub, and the per-node parts the entry node asks of every member.
    pub fn is_long_running(&self) -> bool {
        use crate::entangled::EntRequest as E;
        matches!(
            self,
            Request::Repair { .. }
                | Request::Audit { .. }
                | Request::Scrub { .. }
                | Request::Entangle(E::RepairLocal | E::AuditLocal { .. } | E::ScrubLocal { .. })
        )
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Put { .. } => "put",
            Request::Get { .. } => "get",
            Request::Lookup { .. } => "lookup",
            Request::Status => "status",
            Request::PutRecord { .. } => "put-record",
            Request::GetRecord { .. } => "get-record",
            Request::StoreLocal { .. } => "store-local",
            Request::FetchLocal { .. } => "fetch-local",
            Request::RangeDigest { .. } => "range-digest",
            Request::ListRange { .. } => "list-range",
            Request::StoreRecordLocal { .. } => "store-record-local",
            Request::FetchRecordLocal { .. } => "fetch-record-local",
            Request::ListRecords { .. } => "list-records",
            Request::HasLocal { .. } => "has-local",
            Request::PutDocument { .. } => "put-document",
            Request::GetDocument { .. } => "get-document",
            Request::Repair { .. } => "repair",
            Request::Audit { .. } => "audit",
            Request::Scrub { .. } => "scrub",
            Request::EntangleStats => "entangle-stats",
            Request::Entangle(_) => "entangle",
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
}

/// Responses of the data protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The block is durable on `replicas` members of its replica set.
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
    /// (count, digest) per bucket.
    Digests {
        buckets: Vec<(u64, [u8; 32])>,
    },
    Keys {
        keys: Vec<BlockKey>,
        more: bool,
    },
    Record {
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    Has {
        present: Vec<bool>,
    },
    RecordDigests {
        records: Vec<(BlockKey, [u8; 32])>,
        more: bool,
    },
    /// Generic success for requests with nothing to return.
    Ok,
    /// A document is stored; `key` reads it back with [`Request::GetDocument`].
    DocumentStored {
        key: BlockKey,
    },
    Repaired(crate::entangled::RepairSummary),
    AuditPage(crate::entangled::AuditPage),
    Scrubbed(crate::entangled::ScrubReport),
    EntangleStats(Box<crate::entangled::EntangleStats>),
    Entangle(crate::entangled::EntResponse),
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

/// A length-prefixed postcard codec with a bound on each direction's frame size.
pub struct FramedCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FramedCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FramedCodec {
            max_request,
            max_response,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FramedCodec<Req, Resp> {
    fn clone(&self) -> Self {
        FramedCodec::new(self.max_request, self.max_response)
    }
}

/// The codec of the Chord protocol.
pub type ChordCodec = FramedCodec<ChordEnvelope, ChordAck>;
/// The codec of the data protocol.
pub type DataCodec = FramedCodec<Request, Response>;

pub fn chord_codec() -> ChordCodec {
    FramedCodec::new(MAX_CHORD_FRAME, 1024)
}

pub fn data_codec() -> DataCodec {
    FramedCodec::new(MAX_DATA_FRAME, MAX_DATA_FRAME)
}

/// Messages whose bulk payload (a block, a document) travels after the postcard body of the
/// frame instead of inside it, so the codec copies it neither into an encode buffer nor out of
/// a decode buffer: the sender writes it from the message's own `Vec`, the receiver reads it
/// straight into the `Vec` the message keeps.
pub trait Bulk {
    /// Moves the bulk payload out of the message (leaving an empty one), if it has one.
    fn take_bulk(&mut self) -> Option<Vec<u8>>;
    /// Puts a received bulk payload back. False if the message has no (empty) slot for it.
    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool;
}

fn put_into(slot: &mut Vec<u8>, bulk: Vec<u8>) -> bool {
    if !slot.is_empty() {
        return false;
    }
    *slot = bulk;
    true
}

impl Bulk for Request {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            Request::Put { data, .. }
            | Request::StoreLocal { data, .. }
            | Request::PutDocument { data } => Some(std::mem::take(data)),
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            Request::Put { data, .. }
            | Request::StoreLocal { data, .. }
            | Request::PutDocument { data } => put_into(data, bulk),
            _ => false,
        }
    }
}

impl Bulk for Response {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        match self {
            Response::Block { data } => Some(std::mem::take(data)),
            _ => None,
        }
    }

    fn put_bulk(&mut self, bulk: Vec<u8>) -> bool {
        match self {
            Response::Block { data } => put_into(data, bulk),
            _ => false,
        }
    }
}

impl Bulk for ChordEnvelope {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn put_bulk(&mut self, _: Vec<u8>) -> bool {
        false
    }
}

impl Bulk for ChordAck {
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn put_bulk(&mut self, _: Vec<u8>) -> bool {
        false
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Splits a message into the head of its frame body (the postcard length `u32` BE and the
/// postcard bytes of the message without its bulk payload) and the bulk payload, refusing
/// bodies over `max` bytes. Frame on the wire: `u32` BE body length, then the body.
fn encode_parts<T: Serialize + Bulk>(mut value: T, max: usize) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let bulk = value.take_bulk().unwrap_or_default();
    let body = postcard::to_stdvec(&value).map_err(|e| invalid(format!("encode: {e}")))?;
    let total = 4 + body.len() + bulk.len();
    if total > max {
        return Err(invalid(format!(
            "message of {total} bytes exceeds the bound of {max}"
        )));
    }
    let mut head = Vec::with_capacity(4 + body.len());
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    head.extend_from_slice(&body);
    Ok((head, bulk))
}

/// Encodes one value as a frame body (everything after the frame's length prefix), refusing
/// bodies over `max` bytes.
pub fn encode_frame<T: Serialize + Bulk + Clone>(value: &T, max: usize) -> io::Result<Vec<u8>> {
    let (mut head, bulk) = encode_parts(value.clone(), max)?;
    head.extend_from_slice(&bulk);
    Ok(head)
}

/// The postcard part of a frame body and where the bulk payload starts.
fn split_body(bytes: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(invalid("frame body shorter than its 4-byte head".into()));
    };
    let n = u32::from_be_bytes(*len) as usize;
    if n > rest.len() {
        return Err(invalid(format!(
            "message body of {n} bytes in a frame of {}",
            bytes.len()
        )));
    }
    Ok(rest.split_at(n))
}

fn decode_message<T: DeserializeOwned + Bulk>(body: &[u8], bulk: Vec<u8>) -> io::Result<T> {
    let (mut value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| invalid(format!("decode: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    if !bulk.is_empty() && !value.put_bulk(bulk) {
        return Err(invalid(
            "bulk bytes after a message that carries none".into(),
        ));
    }
    Ok(value)
}

/// Decodes one frame body; a body means exactly one message (no trailing bytes, no bulk bytes
/// for a message without a payload).
pub fn decode_frame<T: DeserializeOwned + Bulk>(bytes: &[u8]) -> io::Result<T> {
    let (body, bulk) = split_body(bytes)?;
    decode_message(body, bulk.to_vec())
}

async fn read_frame<T, R>(io: &mut R, max: usize) -> io::Result<T>
where
    T: DeserializeOwned + Bulk,
    R: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let total = u32::from_be_bytes(len) as usize;
    if total > max {
        return Err(invalid(format!(
            "frame of {total} bytes exceeds the bound of {max}"
        )));
    }
    if total < 4 {
        return Err(invalid(format!("frame of {total} bytes has no body head")));
    }
    io.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > total - 4 {
        return Err(invalid(format!(
            "message body of {n} bytes in a frame of {total}"
        )));
    }
    let mut body = vec![0u8; n];
    io.read_exact(&mut body).await?;
    let mut bulk = vec![0u8; total - 4 - n];
    io.read_exact(&mut bulk).await?;
    decode_message(&body, bulk)
}

async fn write_frame<T, W>(io: &mut W, value: T, max: usize) -> io::Result<()>
where
    T: Serialize + Bulk,
    W: AsyncWrite + Unpin + Send,
{
    let (head, bulk) = encode_parts(value, max)?;
    let total = (head.len() + bulk.len()) as u32;
    let mut first = Vec::with_capacity(4 + head.len());
    first.extend_from_slice(&total.to_be_bytes());
    first.extend_from_slice(&head);
    io.write_all(&first).await?;
    if !bulk.is_empty() {
        io.write_all(&bulk).await?;
    }
    io.flush().await?;
    io.close().await
}

#[async_trait]
impl<Req, Resp> libp2p::request_response::Codec for FramedCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Bulk + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + Bulk + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, res, self.max_response).await
    }
}

/// Parses a multiaddr that ends in `/p2p/<peer id>` into a [`NodeAddr`].
pub fn parse_node_addr(s: &str) -> Result<NodeAddr, String> {
    let mut addr: Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a multiaddr: {e}"))?;
    match addr.pop() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok(NodeAddr { peer, addr }),
        _ => Err(format!(
            "'{s}' has no /p2p/<peer id> at the end; use the full address a node prints or writes to its address file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_garbage() {
        let req = Request::Get {
            key: BlockKey([7; 32]),
        };
        let bytes = encode_frame(&req, MAX_DATA_FRAME).unwrap();
        let back: Request = decode_frame(&bytes).unwrap();
        assert_eq!(back, req);
        // Truncated, trailing garbage, and random bytes are errors, not panics.
        assert!(decode_frame::<Request>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_frame::<Request>(&longer).is_err());
        assert!(decode_frame::<Request>(&[0xff; 40]).is_err());
        // Oversized values are refused on encode.
        let big = Request::Put {
            key: BlockKey([0; 32]),
            data: vec![0; 100],
        };
        assert!(encode_frame(&big, 50).is_err());
        // A block travels after the body, and comes back in its place.
        let put = Request::Put {
            key: BlockKey([3; 32]),
            data: (0..=255u8).cycle().take(5000).collect(),
        };
        let bytes = encode_frame(&put, MAX_DATA_FRAME).unwrap();
        assert!(bytes.ends_with(&(0..=255u8).cycle().take(5000).collect::<Vec<u8>>()));
        assert_eq!(decode_frame::<Request>(&bytes).unwrap(), put);
        let block = Response::Block { data: vec![9; 300] };
        let bytes = encode_frame(&block, MAX_DATA_FRAME).unwrap();
        assert_eq!(decode_frame::<Response>(&bytes).unwrap(), block);
        // Bulk bytes after a message without a payload, or a body that claims more than the
        // frame holds, are errors.
        let mut get = encode_frame(&req, MAX_DATA_FRAME).unwrap();
        get.extend_from_slice(&[1, 2, 3]);
        assert!(decode_frame::<Request>(&get).is_err());
        let mut lying = encode_frame(&req, MAX_DATA_FRAME).unwrap();
        lying[..4].copy_from_slice(&10_000u32.to_be_bytes());
        assert!(decode_frame::<Request>(&lying).is_err());
        // A payload in the body and another one after it: refused, not merged.
        let body = postcard::to_stdvec(&put).unwrap();
        let mut both = (body.len() as u32).to_be_bytes().to_vec();
        both.extend_from_slice(&body);
        both.extend_from_slice(&[1; 10]);
        assert!(decode_frame::<Request>(&both).is_err());
    }

    #[test]
    fn node_addr_parses_full_multiaddr_only() {
        let peer = PeerId::random();
        let a = parse_node_addr(&format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")).unwrap();
        assert_eq!(a.peer, peer);
        assert_eq!(a.addr.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(parse_node_addr("/ip4/127.0.0.1/tcp/4001").is_err());
        assert!(parse_node_addr("not an address").is_err());
    }
}
