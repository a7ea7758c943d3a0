//! The PeerStore client: end-to-end encrypted backup into a PeerStore ring, restore (whole tree
//! or one file), listing, removal, space accounting, and a folder sync watcher.
//!
//! Modules:
//! - [`store`]: the [`store::BlockStoreApi`] seam; [`store::RingStore`] over the node protocol
//!   (retries, fail-over), [`store::MemStore`] for tests.
//! - [`model`]: manifest, snapshot and root-pointer types; path checks.
//! - [`repo`]: the user's root, snapshot chain and manifests in the ring (reads verify, writes
//!   put the root last).
//! - [`backup`]: tree walk, content-defined chunking, encryption, pack files, bounded parallel
//!   upload.
//! - [`pack`]: reading pack files during a restore (a bounded cache of packs).
//! - [`restore`]: restoring below a destination without ever writing outside it.
//! - [`forget`]: retention policy (pure selection) and the chain rewrite that forgets
//!   snapshots; the keys kept snapshots reference (for a later prune).
//! - [`sync`]: the watcher (debounce, durable state, retry with backoff, retention).
//! - [`cache`]: the local cache of chunks known stored (chunk id -> pack, offset, length).
//! - [`config`]: key file, passphrase, directories, node discovery.
//! - [`cli`]: the command line.
//!
//! docs/CLIENT.md describes formats and behaviour.

pub mod admin;
pub mod backup;
pub mod cache;
pub mod check;
pub mod cli;
pub mod config;
pub mod devices;
pub mod error;
pub mod forget;
pub mod merge;
pub mod model;
pub mod pack;
pub mod progress;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod share;
pub mod store;
pub mod sync;
pub mod twoway;

pub use error::{ClientError, Result};

#[cfg(test)]
mod tests;
