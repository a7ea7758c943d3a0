//! The Chord protocol's messages: the pure core's [`chord::Message`] with the sender's
//! dialable address, and the empty acknowledgement.

use serde::{Deserialize, Serialize};

use crate::frame::{Audience, Bulk, Message};
use crate::NodeAddr;

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

impl Bulk for ChordEnvelope {}
impl Bulk for ChordAck {}

impl Message for ChordEnvelope {
    const AUDIENCE: Audience = Audience::Chord;
}

impl Message for ChordAck {
    const AUDIENCE: Audience = Audience::Chord;
}
