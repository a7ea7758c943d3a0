//! Pure Chord: 256-bit ids, ring intervals, the corrected (Zave) protocol as a sans-I/O state
//! machine, replica placement helpers, and a deterministic simulator ([`sim`]).
//!
//! The core never touches a socket or a clock. A driver owns one [`Node`] per ring identity,
//! feeds it inputs with the current virtual [`Time`], and drains its outputs:
//!
//! ```
//! use chord::{Action, Config, Event, Id, Node, Peer, Time};
//!
//! // Two nodes whose transport address is a plain integer.
//! let mut a = Node::new(Config::default(), Peer::new(Id::hash(b"a"), 1u32));
//! let mut b = Node::new(Config::default(), Peer::new(Id::hash(b"b"), 2u32));
//! let mut now = Time(0);
//! a.create(now);
//! b.join(now, 1);
//! // A tiny driver: deliver every message instantly, fire timers in order.
//! for _ in 0..200 {
//!     let mut delivered = false;
//!     let mut out = Vec::new();
//!     while let Some(act) = a.poll_action() { out.push((1u32, act)); }
//!     while let Some(act) = b.poll_action() { out.push((2u32, act)); }
//!     for (from, act) in out {
//!         if let Action::Send { to, msg } = act {
//!             delivered = true;
//!             if to == 1 { a.handle_message(now, from, msg) } else { b.handle_message(now, from, msg) }
//!         }
//!     }
//!     if !delivered {
//!         // Jump the clock to the earliest timer.
//!         now = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min().unwrap();
//!         a.handle_timeout(now);
//!         b.handle_timeout(now);
//!     }
//! }
//! assert_eq!(a.successors()[0].addr, 2);
//! assert_eq!(b.successors()[0].addr, 1);
//! assert_eq!(a.predecessor().map(|p| p.addr), Some(2));
//! // Exactly one of them owns any key.
//! let key = Id::hash(b"some block");
//! assert!(a.owns(key) ^ b.owns(key));
//! // A lookup: the answer arrives as an event (here at once, since a owns it or knows b does
//! // only after one round trip; drain and deliver as above in a real driver).
//! let lookup = a.start_lookup(now, key);
//! # let _ = lookup;
//! // Events other than sends tell the application what happened:
//! # let _ = |e: Event<u32>| match e {
//! #     Event::Joined | Event::Left => {}
//! #     Event::JoinFailed { .. } | Event::PeerFailed { .. } => {}
//! #     Event::RangesChanged { ranges } => { let _ = ranges.owned; }
//! #     Event::LookupDone { result, .. } => { let _ = result.map(|r| r.owner); }
//! #     Event::MergeFound { via, successor } => { let _ = (via, successor); }
//! # };
//! ```
//!
//! The daemon does the same with a libp2p swarm: after every input (message, timer, command) it
//! drains `poll_action()`, sends `Action::Send` messages with postcard, reacts to
//! `Action::Event`s (hand keys off on `RangesChanged`, answer callers on `LookupDone`), and sets
//! one timer for `poll_timeout()`. Requests that the transport cannot deliver are reported with
//! `handle_send_failure`.
//!
//! Rules implemented (see CHORD.md): successor lists of length r; join through the owner of
//! our id, which must answer (never adopt a dead successor); stabilize with liveness checks
//! (a candidate successor is adopted only after it answers); rectify instead of notify +
//! check_predecessor; fingers refreshed round robin; iterative lookups from the originator
//! that route around dead hops and verify the owner; graceful leave by splicing; a
//! predecessor list for replica ranges. Failure detection (timeouts, one retry) is inside the
//! core, driven by `now`.
//!
//! Additions to the paper's protocol, all within its invariants (the simulator checks them
//! after every step in 10,000 random runs):
//! - stabilize: besides succ0's predecessor, succ0 names other nodes it knows between the
//!   asker and itself (recent notifiers); the nearest that answers is adopted. While the
//!   successor or predecessor list is changing, the next round comes after 1/8 period.
//! - finger 0 is checked by a real lookup of `me + 1` started at a far finger, which finds
//!   nodes that stabilize alone would reach slowly (interleaved chains after mass joins);
//!   a closer successor found this way is again adopted only after it answers.
//! - lookups: a hop silent for a quarter of `rpc_timeout` gets a parallel query to the next
//!   candidate (at most [`node::ALPHA`] at once); an owner candidate that a later node names as
//!   its predecessor but never answered us is asked again (with retry) before the lookup
//!   settles, so a lost or slow answer does not produce a wrong owner; a fallback owner whose
//!   answer went stale while another candidate was awaited is asked again before it is
//!   returned (it may have a new predecessor by then).
//! - ring merge (not in Zave's protocol, where two rings never merge): a member declared dead
//!   while in the successor, predecessor or finger tables is remembered (at most
//!   [`node::LOST_CAPACITY`], plus any handed over with [`Node::remember`]) and probed, one
//!   probe at a time and at most one per stabilize period, after 2, 4, .. up to
//!   [`node::MERGE_MAX_BACKOFF_PERIODS`] periods. A probe is `FindSuccessor(me + 1)`; if the
//!   member answers, the lookup continues through its ring, and a successor found there closer
//!   than ours (any, when alone) is adopted once it answers, as in stabilize; notify and
//!   stabilize splice the two rings together. So a partition long enough for both sides to
//!   drop each other heals once the network does. Lost members are forgotten after 4096
//!   periods while the successor list is full, never while it is not (a node alone or in a
//!   ring of at most r members keeps looking).
//!
//! Protocol messages are documented in [`message`]; the simulator in [`sim`]; the invariants it
//! checks in [`sim::invariants`].

pub mod balance;
pub mod config;
pub mod id;
pub mod message;
pub mod node;
pub mod sim;
pub mod time;

pub use config::{Config, ConfigError};
pub use id::{Id, IdError};
pub use message::{Message, Peer};
pub use node::{
    Action, Event, LookupError, LookupId, LookupResult, Node, Ranges, Snapshot, Status,
};
pub use time::Time;
