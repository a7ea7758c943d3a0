//! Linearizable mutable records by chain replication, CRAQ style (Terrace & Freedman 2009,
//! on van Renesse & Schneider's chain replication, 2004), as a pure state machine, with a
//! linearizability checker ([`linearizability`]) and a deterministic simulator ([`sim`]).
//!
//! The core never touches a socket or a clock. A driver owns one [`Replica`] per chain it is a
//! member of, feeds it [`Event`]s (views from the membership oracle, messages from other
//! replicas, client requests, timer firings) with the current virtual time in ms, and carries
//! out the returned [`Action`]s (send a [`Msg`] to a replica, reply to a client, set the timer).
//!
//! In short (details in `docs/CHAIN.md` and [`replica`]):
//! - A chain is a [`View`]: an epoch and an ordered list of members, head first.
//! - Writes are compare-and-set on a record's version ([`Request::Cas`]). The head checks the
//!   expected version against its newest one (committed or not), assigns `newest + 1`, and
//!   sends it down the chain; each member stores it as *dirty*; the tail commits it and
//!   acknowledges it back up; each member then marks it *clean* and drops older versions.
//!   The head answers the client once the version is clean at the head.
//! - Reads go to any member. A clean newest version is answered locally; a dirty one makes
//!   the member ask the tail which version is committed and answer that one.
//! - Messages carry the epoch; a replica processes only messages of its own epoch. When a
//!   member fails a new view is installed: a new tail commits what it holds, a new
//!   predecessor re-sends its dirty versions. A joining member pulls the whole state from a
//!   member already holding it (paged) before it serves.
//! - Views come from a membership oracle ([`Event::View`]), or, with
//!   [`Config::view_agreement`], the members agree on them themselves: view `e + 1` is
//!   installed only once a majority of view `e` accepted it (Vertical-Paxos style, from the
//!   suggestions the driver hands each replica, [`Event::Suggest`]), and reads need a lease
//!   from a majority, so a member removed without hearing of it stops answering.
//! - With [`Config::durable`], the replica emits [`Action::Persist`] before any message or
//!   reply that depends on the state written, and restarts from it with [`Start::Recover`]
//!   ([`durable`]).
//! - A retried write carries the same [`ReqId`]; the head recognises a retry of a write that
//!   already created a version and answers `Ok` with that version.
//!
//! ```
//! use chain::{Action, Config, Event, Msg, Reply, ReqId, Request, Replica, Start, View};
//!
//! // A chain of two replicas (addresses 1 and 2), client at address 9.
//! let mut head = Replica::new(1u32, Config::default(), Start::Bootstrap);
//! let mut tail = Replica::new(2u32, Config::default(), Start::Bootstrap);
//! let view = View::new(1, vec![1, 2]);
//! head.handle(0, Event::View(view.clone()));
//! tail.handle(0, Event::View(view));
//!
//! // The client writes version 1 at the head.
//! let id = ReqId { client: 7, seq: 1 };
//! let req = Request::Cas { key: b"k".to_vec(), expected: 0, value: b"v1".to_vec() };
//! let out = head.handle(1, Event::Request { from: 9, id, req });
//! let write = out.into_iter().find_map(|a| match a {
//!     Action::Send { to: 2, msg } => Some(msg),
//!     _ => None,
//! }).unwrap();
//! // The tail commits and acknowledges; the head then answers the client.
//! let out = tail.handle(2, Event::Message { from: 1, msg: write });
//! let ack = out.into_iter().find_map(|a| match a {
//!     Action::Send { to: 1, msg: m @ Msg::Ack { .. } } => Some(m),
//!     _ => None,
//! }).unwrap();
//! let out = head.handle(3, Event::Message { from: 2, msg: ack });
//! assert!(out.contains(&Action::Reply { to: 9, id, reply: Reply::Ok { version: 1 } }));
//! ```

pub mod config;
pub mod durable;
pub mod linearizability;
pub mod message;
pub mod replica;
pub mod sim;

pub use config::{Config, MAX_KEY_LEN, MAX_MEMBERS, MAX_REASON_LEN, MAX_VALUE_SIZE};
pub use durable::{Disk, Durable, DurableMeta, Recovered};
pub use message::{
    Ballot, DedupEntry, Key, Msg, Proposal, RecordState, Rejected, Reply, ReqId, Request,
    Unavailable, View, WriteEntry,
};
pub use replica::{
    AcceptAll, Action, Event, RecordInfo, Replica, ReplicaStats, Role, Start, Validate,
};
