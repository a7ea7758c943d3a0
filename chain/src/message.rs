//! The protocol's data: views, client requests and replies, and the messages replicas
//! exchange. Everything is plain serde data (the node encodes it with postcard); a replica
//! checks every bound of [`crate::config`] on receipt and ignores what does not fit.

use serde::{Deserialize, Serialize};

/// A record's key: opaque bytes, at most [`crate::MAX_KEY_LEN`] long.
pub type Key = Vec<u8>;

/// Identifies one client request across its retries.
///
/// A client picks a `client` number unique to it (in the node: derived from its identity)
/// and numbers its requests with increasing `seq`; a retry reuses the id. The chain keeps, per
/// key, the last `(seq, version)` of every client whose write created a version, so a retried
/// compare-and-set that already took effect is answered `Ok` with the version it created
/// (see [`crate::replica`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReqId {
    /// The client's number.
    pub client: u64,
    /// Increasing per client; a retry keeps it.
    pub seq: u64,
}

/// The chain of a set of keys at one epoch, handed to replicas by a membership oracle or
/// agreed by the members of the previous view (in the ring: from the keys' successor list).
/// `members[0]` is the head, the last is the tail.
///
/// A new view must keep the relative order of the members it keeps (Chord's successor lists
/// do: members are in ring order); new members may be inserted anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View<A> {
    /// Increases with every change.
    pub epoch: u64,
    /// Head first, tail last; distinct.
    pub members: Vec<A>,
}

impl<A: PartialEq> View<A> {
    /// Whether the view is well formed: at least one member, at most
    /// [`crate::MAX_MEMBERS`], all distinct.
    pub fn is_well_formed(&self) -> bool {
        !self.members.is_empty()
            && self.members.len() <= crate::config::MAX_MEMBERS
            && !self
                .members
                .iter()
                .enumerate()
                .any(|(i, m)| self.members[..i].contains(m))
    }

    /// Votes needed among the members: a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// A view.
    pub fn new(epoch: u64, members: Vec<A>) -> Self {
        View { epoch, members }
    }

    /// Where `a` is in the chain.
    pub fn position(&self, a: &A) -> Option<usize> {
        self.members.iter().position(|m| m == a)
    }

    /// The head (writes enter here).
    pub fn head(&self) -> Option<&A> {
        self.members.first()
    }

    /// The tail (writes commit here).
    pub fn tail(&self) -> Option<&A> {
        self.members.last()
    }
}

/// A client request. Version 0 means "absent": a record is created by `Cas` with
/// `expected: 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Read the newest committed version. Any member can answer.
    Read {
        /// The record.
        key: Key,
    },
    /// Write `value` as version `expected + 1` if the newest version is `expected`. Only the
    /// head accepts it.
    Cas {
        /// The record.
        key: Key,
        /// The version the client read (0: absent).
        expected: u64,
        /// The new value (opaque; at most [`crate::MAX_VALUE_SIZE`] bytes).
        value: Vec<u8>,
    },
}

impl Request {
    /// The key the request is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Request::Read { key } | Request::Cas { key, .. } => key,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply<A> {
    /// A read's result: a committed version (0 and an empty value: absent).
    Value {
        /// The version.
        version: u64,
        /// Its value.
        value: Vec<u8>,
    },
    /// The compare-and-set committed as this version.
    Ok {
        /// `expected + 1`.
        version: u64,
    },
    /// The compare-and-set did not apply: the committed newest version is another one.
    Conflict {
        /// The newest committed version when the request was decided.
        current_version: u64,
        /// Its value.
        current_value: Vec<u8>,
    },
    /// Writes go to the head; this is who the answering replica believes it is.
    NotHead {
        /// The head of the replica's view.
        head: Option<A>,
    },
    /// Try again (here later, or at another member).
    Unavailable(Unavailable),
    /// The request can never succeed as sent.
    Rejected(Rejected),
}

/// Why a request could not be served now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unavailable {
    /// The replica has no view yet.
    NoView,
    /// The replica is not in the chain (any more).
    NotMember,
    /// The replica joined and is still receiving the chain's state.
    CatchingUp,
    /// Too many requests pending, or too many uncommitted versions of the key.
    Busy,
    /// The replica holds its maximum number of keys.
    Full,
    /// With [`crate::Config::view_agreement`]: a view change is in progress (this replica
    /// accepted the next view), or the replica holds no read lease (it has not heard from a
    /// majority of its view recently), so it may no longer be current.
    NoQuorum,
    /// The request timed out inside the chain, or the replica lost track of it; retry (a
    /// retried write is deduplicated).
    Retry,
}

/// Why a request was refused for good.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rejected {
    /// The key is longer than [`crate::MAX_KEY_LEN`].
    KeyTooLong,
    /// The value is larger than [`crate::MAX_VALUE_SIZE`].
    ValueTooLarge,
    /// The [`crate::Validate`] hook refused the value (reason, at most
    /// [`crate::MAX_REASON_LEN`] bytes).
    Invalid(String),
}

/// One version of a record as it travels down the chain or in a state transfer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WriteEntry {
    /// The version number (1, 2, ...).
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
    /// The request that created it, for deduplication of its retries.
    pub req: Option<ReqId>,
}

/// One client's last write of a key: retries of `seq` are answered with `version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The client's number.
    pub client: u64,
    /// Its last request that created a version of the key.
    pub seq: u64,
    /// The version that request created.
    pub version: u64,
}

/// A whole record in a state-transfer page.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordState {
    /// The key.
    pub key: Key,
    /// The newest version known committed (0: none).
    pub clean: u64,
    /// The versions held: the clean one (if any) and every newer (dirty) one, ascending and
    /// contiguous.
    pub versions: Vec<WriteEntry>,
    /// The deduplication table.
    pub dedup: Vec<DedupEntry>,
}

/// A ballot of the view agreement (see [`crate::replica`], "Agreement on views"): ordered by
/// `round`, then by `node`, the proposer's position in the view it proposes to replace, so two
/// proposers never use the same ballot in one instance.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Increases with every attempt.
    pub round: u64,
    /// The proposer's position in the current view.
    pub node: u32,
}

/// A proposed next view with the ballot it was proposed under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proposal<A> {
    /// The ballot.
    pub ballot: Ballot,
    /// The proposed view (its epoch is the current one plus one).
    pub view: View<A>,
}

/// Messages between replicas of one chain. Each carries the sender's epoch; a replica
/// processes only messages of its own epoch (see [`crate::replica`]).
///
/// `Write` to `PullRefused` are the data path and the state transfer; `Prepare` to
/// `LeaseGrant` are the view agreement and the read leases, used only when
/// [`crate::Config::view_agreement`] is on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Msg<A> {
    /// Predecessor to successor: new (dirty) versions of a key, ascending and contiguous.
    Write {
        /// Sender's epoch.
        epoch: u64,
        /// The record.
        key: Key,
        /// The versions.
        entries: Vec<WriteEntry>,
    },
    /// Successor to predecessor: every version up to `version` is committed.
    Ack {
        /// Sender's epoch.
        epoch: u64,
        /// The record.
        key: Key,
        /// The newest committed version.
        version: u64,
    },
    /// Any member to the tail: which version of `key` is committed?
    VersionQuery {
        /// Sender's epoch.
        epoch: u64,
        /// The record.
        key: Key,
        /// Matches the reply.
        qid: u64,
    },
    /// The tail's answer to a [`Msg::VersionQuery`].
    VersionReply {
        /// Sender's epoch.
        epoch: u64,
        /// The record.
        key: Key,
        /// From the query.
        qid: u64,
        /// The tail's committed version (0: absent).
        version: u64,
    },
    /// A joining member asks for the records after `after` (state transfer).
    Pull {
        /// Sender's epoch.
        epoch: u64,
        /// The last key already received (None: from the start).
        after: Option<Key>,
    },
    /// One page of records, in key order, answering a [`Msg::Pull`].
    Page {
        /// Sender's epoch.
        epoch: u64,
        /// From the pull.
        after: Option<Key>,
        /// The records after `after`, ascending by key.
        records: Vec<RecordState>,
        /// No records follow.
        done: bool,
    },
    /// Answer to a [`Msg::Pull`]: the sender is in this epoch but itself still catching up,
    /// so the puller should ask another member.
    PullRefused {
        /// Sender's epoch.
        epoch: u64,
    },
    /// Phase 1 of the view agreement: a member of view `epoch` asks the members of that view
    /// to promise not to accept lower ballots for view `epoch + 1`.
    Prepare {
        /// Sender's epoch (the view being replaced).
        epoch: u64,
        /// The proposer's ballot.
        ballot: Ballot,
    },
    /// Answer to a [`Msg::Prepare`]: the promise, with the highest proposal the sender has
    /// accepted for view `epoch + 1` and whether it holds the chain's state.
    Promise {
        /// Sender's epoch.
        epoch: u64,
        /// The ballot promised.
        ballot: Ballot,
        /// The proposal accepted for `epoch + 1`, if any.
        accepted: Option<Proposal<A>>,
        /// The sender holds the chain's state (not catching up).
        synced: bool,
    },
    /// Phase 2: accept this proposal as view `epoch + 1`.
    Accept {
        /// Sender's epoch.
        epoch: u64,
        /// The proposal.
        proposal: Proposal<A>,
    },
    /// Answer to a [`Msg::Accept`]: accepted.
    Accepted {
        /// Sender's epoch.
        epoch: u64,
        /// The ballot accepted.
        ballot: Ballot,
    },
    /// Answer to a [`Msg::Prepare`] or [`Msg::Accept`] under a ballot lower than one the sender
    /// has promised.
    Nack {
        /// Sender's epoch.
        epoch: u64,
        /// The ballot the sender has promised.
        promised: Ballot,
    },
    /// A view that was agreed (installed by a majority of the previous view's members).
    Decided {
        /// The view; its epoch is the sender's.
        view: View<A>,
    },
    /// "My epoch is `epoch`; send me your view if it is newer" (a member that lags, or a
    /// replica that expects to be added).
    ViewRequest {
        /// Sender's epoch (0: none).
        epoch: u64,
    },
    /// A member asks the others for a read lease in `epoch`.
    LeaseRequest {
        /// Sender's epoch.
        epoch: u64,
        /// Matches the grant.
        seq: u64,
    },
    /// The grant of a read lease: the sender will accept no next view for
    /// [`crate::Config::lease_ms`] after it received the request.
    LeaseGrant {
        /// Sender's epoch.
        epoch: u64,
        /// From the request.
        seq: u64,
    },
}

impl<A> Msg<A> {
    /// The sender's epoch.
    pub fn epoch(&self) -> u64 {
        match self {
            Msg::Write { epoch, .. }
            | Msg::Ack { epoch, .. }
            | Msg::VersionQuery { epoch, .. }
            | Msg::VersionReply { epoch, .. }
            | Msg::Pull { epoch, .. }
            | Msg::Page { epoch, .. }
            | Msg::PullRefused { epoch }
            | Msg::Prepare { epoch, .. }
            | Msg::Promise { epoch, .. }
            | Msg::Accept { epoch, .. }
            | Msg::Accepted { epoch, .. }
            | Msg::Nack { epoch, .. }
            | Msg::ViewRequest { epoch }
            | Msg::LeaseRequest { epoch, .. }
            | Msg::LeaseGrant { epoch, .. } => *epoch,
            Msg::Decided { view } => view.epoch,
        }
    }

    /// Whether this is a message of the data path or the state transfer (as opposed to the
    /// view agreement and the leases).
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            Msg::Write { .. }
                | Msg::Ack { .. }
                | Msg::VersionQuery { .. }
                | Msg::VersionReply { .. }
                | Msg::Pull { .. }
                | Msg::Page { .. }
                | Msg::PullRefused { .. }
        )
    }
}
