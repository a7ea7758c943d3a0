//! The framed postcard codec every PeerStore protocol uses, with its size bounds.
//!
//! A frame on the wire is a `u32` big-endian length, then the body: one audience byte (which
//! protocol the message belongs to: [`Audience`]), a `u32` big-endian postcard length, the
//! postcard bytes of the message without its bulk payload, and the bulk payload (a block, a
//! document) if the message has one ([`Bulk`]). The audience byte lets a node answer a message
//! sent on the wrong protocol (a member request on the client protocol, say) with a clear error
//! instead of decoding it as whatever request of the other enum has the same variant number.
//!
//! A frame longer than the protocol's bound is refused before its body is read, and a frame
//! that does not decode is an error value: the stream is dropped, the node logs it and keeps
//! serving. Buffers grow as a frame's bytes arrive, and requests are read under the deadlines
//! and the node-wide byte budget of [`crate::limits`].

use std::io;
use std::marker::PhantomData;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

use crate::limits::FrameReader;

/// Which protocol, and so which audience, a message belongs to: its frame's first body byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Chord maintenance between members (`/peerstore/chord/3`).
    Chord,
    /// Clients of the ring (`/peerstore/client/1`).
    Client,
    /// Member-to-member replication and repair (`/peerstore/member/1`).
    Member,
    /// Administrators (`/peerstore/admin/1`).
    Admin,
    /// The greeting that opens every conversation (`/peerstore/hello/1`).
    Hello,
}

impl Audience {
    /// The byte that opens a frame body of this audience.
    #[must_use]
    pub const fn tag(self) -> u8 {
        match self {
            Audience::Chord => 0xC0,
            Audience::Client => 0xC1,
            Audience::Member => 0xC2,
            Audience::Admin => 0xC3,
            Audience::Hello => 0xC4,
        }
    }

    /// The audience a frame's first body byte names, if any.
    #[must_use]
    pub fn from_tag(tag: u8) -> Option<Audience> {
        [
            Audience::Chord,
            Audience::Client,
            Audience::Member,
            Audience::Admin,
            Audience::Hello,
        ]
        .into_iter()
        .find(|a| a.tag() == tag)
    }

    /// The protocol this audience speaks.
    #[must_use]
    pub const fn protocol(self) -> StreamProtocol {
        match self {
            Audience::Chord => crate::CHORD_PROTOCOL,
            Audience::Client => crate::CLIENT_PROTOCOL,
            Audience::Member => crate::MEMBER_PROTOCOL,
            Audience::Admin => crate::ADMIN_PROTOCOL,
            Audience::Hello => crate::HELLO_PROTOCOL,
        }
    }
}

impl std::fmt::Display for Audience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Audience::Chord => "chord",
            Audience::Client => "client",
            Audience::Member => "member",
            Audience::Admin => "admin",
            Audience::Hello => "hello",
        })
    }
}

/// A message of one protocol.
pub trait Message: Serialize + DeserializeOwned + Bulk + Send + Sync + 'static {
    /// The protocol the message belongs to.
    const AUDIENCE: Audience;
}

/// A request as a node receives it: a message of the protocol it came on, or a well-formed
/// message of another protocol sent on this one (which the node refuses with a clear error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming<T> {
    /// A message of this protocol.
    Message(T),
    /// A frame tagged for another audience.
    Misrouted(Audience),
}

/// Messages whose bulk payload (a block, a document) travels after the postcard body of the
/// frame instead of inside it, so the codec copies it neither into an encode buffer nor out of
/// a decode buffer: the sender writes it from the message's own `Vec`, the receiver reads it
/// straight into the `Vec` the message keeps.
pub trait Bulk {
    /// Moves the bulk payload out of the message (leaving an empty one), if it has one.
    fn take_bulk(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Puts a received bulk payload back. False if the message has no (empty) slot for it.
    fn put_bulk(&mut self, _bulk: Vec<u8>) -> bool {
        false
    }
}

/// Puts a bulk payload into an empty slot of a message; false if the slot is taken (a payload
/// in the body and another after it).
pub fn put_into(slot: &mut Vec<u8>, bulk: Vec<u8>) -> bool {
    if !slot.is_empty() {
        return false;
    }
    *slot = bulk;
    true
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Bytes of a body before the postcard: the audience tag and the postcard length.
const BODY_HEAD: usize = 5;

/// Cuts the bulk payload of a message that carries several blocks into them: per entry of
/// `lengths`, the next that many bytes of `data` (`None` for an entry without a block). `None`
/// if the lengths do not add up to exactly `data`'s length (checked before anything is cut; the
/// slices borrow `data`). Shared by the batch messages of the member protocol and the held
/// sources of the client protocol.
pub(crate) fn split_lengths<I>(lengths: I, data: &[u8]) -> Option<Vec<Option<&[u8]>>>
where
    I: Iterator<Item = Option<u32>> + Clone,
{
    let total: u64 = lengths.clone().flatten().map(u64::from).sum();
    if total != data.len() as u64 {
        return None;
    }
    let mut at = 0;
    Some(
        lengths
            .map(|n| {
                let n = n? as usize;
                let block = &data[at..at + n];
                at += n;
                Some(block)
            })
            .collect(),
    )
}

/// Splits a message into the head of its frame body (audience tag, postcard length, postcard
/// bytes of the message without its bulk payload) and the bulk payload, refusing bodies over
/// `max` bytes.
fn encode_parts<T: Message>(mut value: T, max: usize) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let bulk = value.take_bulk().unwrap_or_default();
    let body = postcard::to_stdvec(&value).map_err(|e| invalid(format!("encode: {e}")))?;
    let total = BODY_HEAD + body.len() + bulk.len();
    if total > max {
        return Err(invalid(format!(
            "message of {total} bytes exceeds the bound of {max}"
        )));
    }
    let mut head = Vec::with_capacity(BODY_HEAD + body.len());
    head.push(T::AUDIENCE.tag());
    head.extend_from_slice(&(body.len() as u32).to_be_bytes());
    head.extend_from_slice(&body);
    Ok((head, bulk))
}

/// Encodes one value as a frame body (everything after the frame's length prefix), refusing
/// bodies over `max` bytes.
pub fn encode_frame<T: Message + Clone>(value: &T, max: usize) -> io::Result<Vec<u8>> {
    let (mut head, bulk) = encode_parts(value.clone(), max)?;
    head.extend_from_slice(&bulk);
    Ok(head)
}

/// The audience of a body, its postcard part and where the bulk payload starts.
fn split_body(bytes: &[u8]) -> io::Result<(u8, &[u8], &[u8])> {
    let Some((&tag, rest)) = bytes.split_first() else {
        return Err(invalid("empty frame body".into()));
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return Err(invalid("frame body shorter than its 5-byte head".into()));
    };
    let n = u32::from_be_bytes(*len) as usize;
    if n > rest.len() {
        return Err(invalid(format!(
            "message body of {n} bytes in a frame of {}",
            bytes.len()
        )));
    }
    let (body, bulk) = rest.split_at(n);
    Ok((tag, body, bulk))
}

fn check_tag<T: Message>(tag: u8) -> io::Result<Option<Audience>> {
    match Audience::from_tag(tag) {
        Some(a) if a == T::AUDIENCE => Ok(None),
        Some(a) => Ok(Some(a)),
        None => Err(invalid(format!(
            "frame with unknown audience tag {tag:#04x}"
        ))),
    }
}

fn decode_message<T: Message>(body: &[u8], bulk: Vec<u8>) -> io::Result<T> {
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

/// Decodes one frame body; a body means exactly one message of `T`'s protocol (no trailing
/// bytes, no bulk bytes for a message without a payload, the right audience).
pub fn decode_frame<T: Message>(bytes: &[u8]) -> io::Result<T> {
    match decode_incoming(bytes)? {
        Incoming::Message(m) => Ok(m),
        Incoming::Misrouted(a) => Err(invalid(format!(
            "a {a} message where a {} message was expected",
            T::AUDIENCE
        ))),
    }
}

/// Decodes one frame body as a node receives it: a message of `T`'s protocol, or the audience
/// of a message that was sent on the wrong protocol (its body is not decoded).
pub fn decode_incoming<T: Message>(bytes: &[u8]) -> io::Result<Incoming<T>> {
    let (tag, body, bulk) = split_body(bytes)?;
    if let Some(other) = check_tag::<T>(tag)? {
        return Ok(Incoming::Misrouted(other));
    }
    decode_message(body, bulk.to_vec()).map(Incoming::Message)
}

/// Reads one frame. The buffers grow as the bytes arrive ([`FrameReader`]), so a frame that
/// announces 4 MiB and then stalls holds only what it sent. `limited` (the serving side, which
/// reads requests from anyone) adds the read deadlines and the node-wide budget of
/// [`crate::limits`].
async fn read_incoming<T, R>(io: &mut R, max: usize, limited: bool) -> io::Result<Incoming<T>>
where
    T: Message,
    R: AsyncRead + Unpin + Send,
{
    let mut rd = FrameReader::new(limited);
    let mut len = [0u8; 4];
    rd.read_exact(io, &mut len, "frame length").await?;
    let total = u32::from_be_bytes(len) as usize;
    if total > max {
        return Err(invalid(format!(
            "frame of {total} bytes exceeds the bound of {max}"
        )));
    }
    if total < BODY_HEAD {
        return Err(invalid(format!("frame of {total} bytes has no body head")));
    }
    let mut head = [0u8; BODY_HEAD];
    rd.read_exact(io, &mut head, "frame head").await?;
    let [tag, l0, l1, l2, l3] = head;
    let misrouted = check_tag::<T>(tag)?;
    let n = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if n > total - BODY_HEAD {
        return Err(invalid(format!(
            "message body of {n} bytes in a frame of {total}"
        )));
    }
    if let Some(other) = misrouted {
        // Read and drop the rest in small pieces: nothing of it is kept.
        rd.skip(io, total - BODY_HEAD, "frame body").await?;
        return Ok(Incoming::Misrouted(other));
    }
    let body = rd.read_vec(io, n, "frame body").await?;
    let bulk = rd
        .read_vec(io, total - BODY_HEAD - n, "frame payload")
        .await?;
    drop(rd);
    decode_message(&body, bulk).map(Incoming::Message)
}

async fn write_frame<T, W>(io: &mut W, value: T, max: usize) -> io::Result<()>
where
    T: Message,
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

/// A length-prefixed postcard codec with a bound on each direction's frame size, for the
/// request-response protocol whose messages are `Req` and `Resp`.
pub struct FramedCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FramedCodec<Req, Resp> {
    #[must_use]
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

#[async_trait]
impl<Req, Resp> libp2p::request_response::Codec for FramedCodec<Req, Resp>
where
    Req: Message,
    Resp: Message,
{
    type Protocol = StreamProtocol;
    type Request = Incoming<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Incoming<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_incoming(io, self.max_request, true).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_incoming(io, self.max_response, false).await? {
            Incoming::Message(m) => Ok(m),
            Incoming::Misrouted(a) => Err(invalid(format!(
                "a {a} message in answer to a {} request",
                Resp::AUDIENCE
            ))),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Incoming<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Incoming::Message(m) => write_frame(io, m, self.max_request).await,
            Incoming::Misrouted(_) => Err(invalid("a misrouted request is not sent".into())),
        }
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
