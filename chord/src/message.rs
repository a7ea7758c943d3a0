//! The wire messages of the protocol.
//!
//! # Message set
//!
//! Every request carries a `req` id chosen by the sender; the one response to it echoes `req`.
//! Every request gets exactly one response. Lists are ordered: successor lists clockwise from
//! the sender, predecessor lists counter-clockwise (`preds[0]` is the predecessor).
//!
//! | request | response | purpose |
//! |---|---|---|
//! | `FindSuccessor { req, key }` | `Info { .. closer }` | one step of an iterative lookup: the responder tells whether it owns `key` (`pred`), its successor list, and up to 8 nodes from its fingers and successors that lie in `(responder, key)`, closest to `key` first |
//! | `GetState { req, asker }` | `Info { .. }` | stabilize: "what are your predecessor and successor list"; `closer` lists up to 8 nodes the responder knows (recent notifiers, predecessors, fingers) in `(asker, responder)`, nearest to the asker first, so that many nodes joining at once sort themselves out in few rounds. Also used to check that a candidate successor is alive before adopting it |
//! | `Notify { req, node, preds }` | `Ack { req }` | "I believe I am your predecessor"; rectify. `node` is the sender (its address must equal the transport address), `preds` its predecessor list (how predecessor lists spread) |
//! | `Ping { req }` | `Pong { req, member }` | liveness check of the current predecessor during rectify |
//! | `Leave { req, node, preds, successors }` | `Ack { req }` | graceful leave, sent by the leaving node to its predecessor and successor so they splice themselves together |
//!
//! `Info { req, member, id, pred, successors, closer }`: `member` is false if the responder is
//! not (or no longer) a ring member, in which case the requester treats it as dead. `id` is the
//! responder's ring id. A response whose `req` is unknown, or that comes from another address
//! than the request went to, is ignored. Received lists are truncated and re-ordered defensively,
//! so a hostile peer cannot make a node panic or grow without bound.

use crate::id::Id;
use serde::{Deserialize, Serialize};

/// A ring member: its id and its transport address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer<A> {
    /// Position on the ring.
    pub id: Id,
    /// Where to send messages.
    pub addr: A,
}

impl<A> Peer<A> {
    /// Builds a peer.
    pub fn new(id: Id, addr: A) -> Self {
        Peer { id, addr }
    }
}

/// All protocol messages (see the module docs for the table).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Message<A> {
    /// Request: one lookup step for `key`.
    FindSuccessor {
        /// Request id.
        req: u64,
        /// The key being looked up.
        key: Id,
    },
    /// Request: predecessor and successor list of the receiver.
    GetState {
        /// Request id.
        req: u64,
        /// The asker's id: the answer's `closer` lists known nodes in (asker, receiver),
        /// nearest to the asker first.
        asker: Id,
    },
    /// Request: the sender believes it is the receiver's predecessor.
    Notify {
        /// Request id.
        req: u64,
        /// The sender.
        node: Peer<A>,
        /// The sender's predecessor list.
        preds: Vec<Peer<A>>,
    },
    /// Request: are you alive and a member?
    Ping {
        /// Request id.
        req: u64,
    },
    /// Request: the sender leaves the ring gracefully.
    Leave {
        /// Request id.
        req: u64,
        /// The leaving node.
        node: Peer<A>,
        /// Its predecessor list.
        preds: Vec<Peer<A>>,
        /// Its successor list.
        successors: Vec<Peer<A>>,
    },
    /// Response to `FindSuccessor` and `GetState`.
    Info {
        /// Echoed request id.
        req: u64,
        /// Whether the responder is a ring member.
        member: bool,
        /// The responder's id.
        id: Id,
        /// The responder's predecessor.
        pred: Option<Peer<A>>,
        /// The responder's successor list.
        successors: Vec<Peer<A>>,
        /// `FindSuccessor`: nodes in (responder, key), closest to key first. `GetState`: nodes
        /// in (asker, responder), nearest to the asker first.
        closer: Vec<Peer<A>>,
    },
    /// Response to `Notify` and `Leave`.
    Ack {
        /// Echoed request id.
        req: u64,
    },
    /// Response to `Ping`.
    Pong {
        /// Echoed request id.
        req: u64,
        /// Whether the responder is a ring member.
        member: bool,
    },
}

impl<A> Message<A> {
    /// True for requests (which expect exactly one response), false for responses.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::FindSuccessor { .. }
                | Message::GetState { .. }
                | Message::Notify { .. }
                | Message::Ping { .. }
                | Message::Leave { .. }
        )
    }

    /// The request id carried (requests) or echoed (responses).
    pub fn req_id(&self) -> u64 {
        match self {
            Message::FindSuccessor { req, .. }
            | Message::GetState { req, .. }
            | Message::Notify { req, .. }
            | Message::Ping { req }
            | Message::Leave { req, .. }
            | Message::Info { req, .. }
            | Message::Ack { req }
            | Message::Pong { req, .. } => *req,
        }
    }

    /// A short name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::FindSuccessor { .. } => "find_successor",
            Message::GetState { .. } => "get_state",
            Message::Notify { .. } => "notify",
            Message::Ping { .. } => "ping",
            Message::Leave { .. } => "leave",
            Message::Info { .. } => "info",
            Message::Ack { .. } => "ack",
            Message::Pong { .. } => "pong",
        }
    }
}
