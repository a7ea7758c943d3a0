//! Linearizable mutable records (signed user roots, device heads): chain replication (CRAQ,
//! the `chain` crate) over each record's replica set. Members exchange the chain's messages in
//! batches ([`MemberRequest::Chain`](crate::MemberRequest::Chain)); the node a client asks
//! forwards the client's read or compare-and-set to a member
//! ([`MemberRequest::ChainRequest`](crate::MemberRequest::ChainRequest)).

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::BlockKey;

/// Replicas are named by their node's peer id: a node keeps it (and its chain state) across
/// restarts in its data directory; a node that lost its data directory comes back with a new
/// identity, as the view agreement requires of a replica that forgot its votes.
pub type ChainAddr = PeerId;

/// Most items in one [`MemberRequest::Chain`](crate::MemberRequest::Chain) batch.
pub const MAX_CHAIN_ITEMS: usize = 1024;

/// One item of a batch of chain traffic between two members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainItem {
    /// The founding view (epoch 1) of a new record's chain, sent by the head that creates the
    /// record to the other members before the record's first write. A member that already has
    /// a replica of the record ignores it.
    Found {
        key: BlockKey,
        view: chain::View<ChainAddr>,
    },
    /// A message of the record's chain.
    Msg {
        key: BlockKey,
        msg: chain::Msg<ChainAddr>,
    },
}

impl ChainItem {
    /// The record the item is about.
    #[must_use]
    pub fn key(&self) -> &BlockKey {
        match self {
            ChainItem::Found { key, .. } | ChainItem::Msg { key, .. } => key,
        }
    }
}

/// A member's answer to a forwarded client request
/// ([`MemberResponse::Chain`](crate::MemberResponse::Chain)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainAnswer {
    /// The replica's answer.
    Reply(chain::Reply<ChainAddr>),
    /// This member has no replica of the record (it never had one, or it left the chain).
    Unknown,
}

/// Which member answers a [`ClientRequest::RecordRead`](crate::ClientRequest::RecordRead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadFrom {
    /// Any member of the chain (CRAQ's apportioned reads: a member whose newest version is
    /// committed answers at once, one with an uncommitted version asks the tail).
    #[default]
    Any,
    /// The tail only (plain chain replication).
    Tail,
}

/// The result of a [`ClientRequest::RecordCas`](crate::ClientRequest::RecordCas).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasOutcome {
    /// Stored as this version (the expected one plus one).
    Stored { version: u64 },
    /// The record changed since the version the client expected: this is the current one
    /// (version 0 and no record: absent).
    Changed {
        version: u64,
        #[serde(with = "serde_bytes")]
        record: Option<Vec<u8>>,
    },
}
