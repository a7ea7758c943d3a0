//! What a replica keeps on disk, and a reference in-memory disk.
//!
//! With [`crate::Config::durable`] on, a replica emits [`crate::Action::Persist`] actions. The
//! contract (see `docs/CHAIN.md`, "Persistence"):
//!
//! - **The driver performs the `Persist` actions of a batch (the actions returned by one
//!   [`crate::Replica::handle`] call) in order, durably (written and synced), before it
//!   carries out any `Send` or `Reply` action of the same batch.** The replica puts every
//!   `Persist` first in its batch, so a driver that executes a batch in order and syncs before
//!   the first non-`Persist` action is correct.
//! - A crash may cut a batch anywhere: after some of its `Persist` actions, or after all of
//!   them and some of the sends. Every prefix of the `Persist` actions leaves a state the
//!   replica can restart from.
//! - After a restart, the driver builds [`Recovered`] from what is on disk and starts the
//!   replica with [`crate::Start::Recover`].
//!
//! [`Disk`] applies the actions to an in-memory image; the simulator and the tests use it, and
//! it documents what a store must do with each action.

use crate::message::{Ballot, Key, Proposal, RecordState, View};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The replica's durable metadata: its view and its acceptor state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DurableMeta<A> {
    /// The installed view.
    pub view: Option<View<A>>,
    /// The replica holds the chain's state in that view (not catching up).
    pub synced: bool,
    /// The highest ballot promised for the next view (view agreement).
    pub promised: Option<Ballot>,
    /// The proposal accepted for the next view (view agreement).
    pub accepted: Option<Proposal<A>>,
}

impl<A> Default for DurableMeta<A> {
    fn default() -> Self {
        DurableMeta {
            view: None,
            synced: false,
            promised: None,
            accepted: None,
        }
    }
}

/// One durable write.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Durable<A> {
    /// Replace the stored metadata.
    Meta(DurableMeta<A>),
    /// Replace the stored image of one record; `None` deletes it.
    Record {
        /// The key.
        key: Key,
        /// The whole record (clean version, dirty versions, deduplication table).
        state: Option<RecordState>,
    },
    /// Delete every stored record (the replica dropped its state).
    ClearRecords,
}

/// What a restarting replica gets back from disk ([`crate::Start::Recover`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recovered<A> {
    /// The metadata (default if none was ever written).
    pub meta: DurableMeta<A>,
    /// Every stored record.
    pub records: Vec<RecordState>,
}

/// An in-memory disk: applies [`Durable`] writes the way a store must.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk<A> {
    /// The stored metadata.
    pub meta: Option<DurableMeta<A>>,
    /// The stored records by key.
    pub records: BTreeMap<Key, RecordState>,
    /// Writes applied.
    pub writes: u64,
}

impl<A> Default for Disk<A> {
    fn default() -> Self {
        Disk {
            meta: None,
            records: BTreeMap::new(),
            writes: 0,
        }
    }
}

impl<A: Clone> Disk<A> {
    /// Applies one write.
    pub fn apply(&mut self, w: &Durable<A>) {
        self.writes += 1;
        match w {
            Durable::Meta(m) => self.meta = Some(m.clone()),
            Durable::Record { key, state: None } => {
                self.records.remove(key);
            }
            Durable::Record {
                key,
                state: Some(st),
            } => {
                self.records.insert(key.clone(), st.clone());
            }
            Durable::ClearRecords => self.records.clear(),
        }
    }

    /// What a replica restarting from this disk gets.
    pub fn recovered(&self) -> Recovered<A> {
        Recovered {
            meta: self.meta.clone().unwrap_or_default(),
            records: self.records.values().cloned().collect(),
        }
    }
}
