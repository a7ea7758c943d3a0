//! The node's durable storage: content-addressed blocks appended to segment files, plus a
//! transactional metadata index (redb).
//!
//! * A block's key is the BLAKE3 hash of its bytes ([`BlockKey`]). A put appends a
//!   self-describing record to the current segment, makes it durable (`fdatasync`), then
//!   commits its index entry durably; only then is it acknowledged. Concurrent puts share the
//!   `fdatasync` and the commit (group commit). A record without a committed index entry is
//!   invisible, so a put never shows a half-written block.
//! * Every read re-hashes the bytes. A corrupt or vanished block is never served: a copy of
//!   its bytes goes to `quarantine/`, it leaves the index and the disk, and the read fails with
//!   an error whose [`StoreError::needs_repair`] names the key to re-fetch from a replica.
//! * Deleting a block punches a hole over its record: its bytes leave the disk at once. A
//!   segment with no records left is removed.
//! * Capacity is enforced under a lock before any byte is written, so concurrent puts never
//!   oversubscribe it and a put that does not fit leaves nothing behind.
//! * Opening reconciles the segments with the index (entries whose record is gone are
//!   dropped; records the index lost are verified and indexed again; garbage is punched away),
//!   migrates a format-1 store (one file per block) and, by default, re-hashes every block
//!   before the store is used.
//! * Keys live on the 2^256 ring: [`BlockStore::list_range`] lists the half-open ring interval
//!   `(a, b]` from the index, and [`BlockStore::range_digest`] / [`BlockStore::bucket_digests`]
//!   give cheap, order-independent summaries for anti-entropy.
//!
//! The API is synchronous and [`BlockStore`] is `Send + Sync`; the daemon shares it in an `Arc`
//! and calls it from `spawn_blocking`.
//!
//! ```
//! use peerstore_node::store::{BlockKey, BlockStore, Role, StoreConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (store, report) = BlockStore::open(StoreConfig::new(dir.path(), 1 << 20))?;
//! assert_eq!(report.blocks, 0);
//! let block = b"some ciphertext".to_vec();
//! let key = BlockKey::of(&block);
//! store.put(key, &block, Role::Owner)?;
//! assert_eq!(store.get(&key)?, Some(block));
//! let all = store.list_range(&key, &key, None)?; // a == b: the whole ring
//! assert_eq!(all.keys, vec![key]);
//! # Ok(()) }
//! ```

pub mod arrivals;
mod budget;
mod error;
mod files;
mod index;

mod records;
mod ring;
mod segments;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use redb::{Database, DatabaseError, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use budget::{record_cost, Capacity, RECORD_OVERHEAD};
pub use error::{Result, StoreError};
pub use index::{BlockMeta, Role};
pub use peerstore_proto::{BlockKey, ParseKeyError};
use records::Tables;
pub use records::{RecordTable, RecordUpdate};
pub use ring::{bucket_bounds, in_interval};
pub use segments::{
    record_header, records_on_disk, DiskRecord, ALIGN as RECORD_ALIGN,
    HEADER_LEN as RECORD_HEADER_LEN,
};

use error::db;
use files::Layout;
use index::{Entry, Index, IndexOp, BLOCKS};
use ring::{distance, Split};
use segments::{extent, scan_file, Loc, Segments};

/// How to open a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The data directory; created if missing.
    pub root: PathBuf,
    /// Most bytes the store may hold: block payload plus record-table bytes
    /// ([`record_cost`] each). Ignored when `shared` is set.
    pub capacity: u64,
    /// A capacity shared with other stores (the node's single-copy store draws on the same
    /// `--capacity` as its replicated store); `None`: a capacity of its own of `capacity`.
    pub shared: Option<Arc<Capacity>>,
    /// Re-hash every held block while opening (default true). When false, opening only checks
    /// that every record lies within its segment; call [`BlockStore::verify_all`] before
    /// serving.
    pub verify_on_open: bool,
    /// A segment file stops taking new records once it is this large (default 128 MiB).
    pub segment_bytes: u64,
}

impl StoreConfig {
    /// A config with `verify_on_open` set.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, capacity: u64) -> StoreConfig {
        StoreConfig {
            root: root.into(),
            capacity,
            shared: None,
            verify_on_open: true,
            segment_bytes: segments::SEGMENT_TARGET,
        }
    }

    /// A config whose store draws on `capacity`, shared with the other stores opened with it.
    #[must_use]
    pub fn sharing(root: impl Into<PathBuf>, capacity: Arc<Capacity>) -> StoreConfig {
        StoreConfig {
            capacity: capacity.total(),
            shared: Some(capacity),
            ..StoreConfig::new(root, 0)
        }
    }
}

/// What a successful [`BlockStore::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The block was new and is now durably stored.
    Stored,
    /// The block was already held, byte for byte; nothing changed (its role is kept).
    AlreadyPresent,
    /// The index listed the block but its record was missing or damaged; the damaged bytes went
    /// to quarantine and the block was rewritten from the offered bytes (with the new role).
    Rewritten,
}

/// What opening found and fixed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Blocks held after reconciling.
    pub blocks: u64,
    /// Bytes held after reconciling.
    pub bytes: u64,
    /// Blocks whose hash was checked (0 unless `verify_on_open`).
    pub verified: u64,
    /// Blocks found corrupt, copied to quarantine and dropped.
    pub corrupt: Vec<BlockKey>,
    /// Index entries dropped because their record was gone.
    pub missing: Vec<BlockKey>,
    /// Valid records that the index did not list (a crash between the segment sync and the
    /// index commit, or a lost index) and that are now indexed, with role [`Role::Replica`].
    pub orphans_indexed: u64,
    /// Unlisted records and bytes that were not valid blocks (an interrupted put or delete),
    /// punched out of their segments.
    pub garbage_records_removed: u64,
    /// Unrecognised files in `segments/` moved to quarantine.
    pub strays_quarantined: u64,
    /// Blocks moved from a format-1 store (one file per block) into segments.
    pub migrated: u64,
    /// Bytes found on disk exceeded the capacity (capacity was lowered, or the stores sharing
    /// it hold more than it): puts fail until blocks or records are deleted.
    pub over_capacity: bool,
}

/// What [`BlockStore::verify_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blocks checked.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Blocks found corrupt, copied to quarantine and dropped (repair these).
    pub corrupt: Vec<BlockKey>,
    /// Blocks whose record was gone, dropped (repair these).
    pub missing: Vec<BlockKey>,
}

/// One page of a ring range listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangePage {
    /// Keys in ring order starting after `a`.
    pub keys: Vec<BlockKey>,
    /// Present when the limit cut the listing short: continue with
    /// `list_range(&next, b, limit)`.
    pub next: Option<BlockKey>,
}

/// One page of a ring range listing with the index metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaPage {
    /// Keys and their metadata in ring order starting after `a`.
    pub entries: Vec<(BlockKey, BlockMeta)>,
    /// As [`RangePage::next`].
    pub next: Option<BlockKey>,
}

/// An order-independent summary of the keys in a ring interval: equal key sets give equal
/// digests; different ones differ except with negligible probability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    /// Number of keys.
    pub count: u64,
    /// XOR over the keys of a keyed BLAKE3 hash of each key.
    pub digest: [u8; 32],
}

impl RangeDigest {
    fn add(&mut self, key: &BlockKey) {
        let h = blake3::keyed_hash(digest_key(), &key.0);
        for (d, x) in self.digest.iter_mut().zip(h.as_bytes()) {
            *d ^= x;
        }
        self.count += 1;
    }
}

/// The digest of one sub-interval `(start, end]` of a [`BlockStore::bucket_digests`] split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    /// Exclusive start of the sub-interval.
    pub start: BlockKey,
    /// Inclusive end of the sub-interval.
    pub end: BlockKey,
    /// The digest of the keys in it.
    pub digest: RangeDigest,
}

/// Blocks and bytes per role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleCounts {
    /// Blocks held as owner.
    pub owner_blocks: u64,
    /// Bytes held as owner.
    pub owner_bytes: u64,
    /// Blocks held as replica.
    pub replica_blocks: u64,
    /// Bytes held as replica.
    pub replica_bytes: u64,
}

impl RoleCounts {
    fn add(&mut self, m: BlockMeta) {
        match m.role {
            Role::Owner => {
                self.owner_blocks += 1;
                self.owner_bytes += m.size;
            }
            Role::Replica => {
                self.replica_blocks += 1;
                self.replica_bytes += m.size;
            }
        }
    }

    fn remove(&mut self, m: BlockMeta) {
        match m.role {
            Role::Owner => {
                self.owner_blocks = self.owner_blocks.saturating_sub(1);
                self.owner_bytes = self.owner_bytes.saturating_sub(m.size);
            }
            Role::Replica => {
                self.replica_blocks = self.replica_blocks.saturating_sub(1);
                self.replica_bytes = self.replica_bytes.saturating_sub(m.size);
            }
        }
    }

    /// All blocks held.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.owner_blocks + self.replica_blocks
    }

    /// All bytes held.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.owner_bytes + self.replica_bytes
    }
}

/// A snapshot of the store's counters, for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// The configured capacity in bytes.
    pub capacity: u64,
    /// Bytes of blocks held.
    pub used_bytes: u64,
    /// Bytes the record tables cost against the capacity ([`record_cost`] per record).
    pub record_bytes: u64,
    /// Bytes reserved by puts in progress.
    pub reserved_bytes: u64,
    /// Bytes a new put may still use (of the capacity, which may be shared with other stores).
    pub free_bytes: u64,
    /// Blocks and bytes per role.
    pub roles: RoleCounts,
    /// Blocks quarantined since the store was opened.
    pub quarantined_since_open: u64,
    /// Durable commits of the block index since the store was opened (concurrent puts share
    /// commits, so this grows slower than the number of puts under load).
    pub index_commits: u64,
}

fn digest_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| blake3::derive_key("peerstore-node store range digest v1", b""))
}

/// Lower and upper bound of a range scan of the block table.
type KeyBounds<'a> = (Bound<&'a [u8; 32]>, Bound<&'a [u8; 32]>);

/// In-memory accounting, guarded by one mutex.
#[derive(Default)]
struct State {
    roles: RoleCounts,
    reserved: u64,
    /// Keys with a mutation (put, delete, role change, quarantine) in progress.
    busy: BTreeSet<BlockKey>,
    quarantined: u64,
}

/// The block store. See the [module docs](self).
pub struct BlockStore {
    layout: Layout,
    /// The capacity this store draws on (maybe shared): held blocks, reservations and record
    /// bytes are all charged to it.
    budget: Arc<Capacity>,
    /// Bytes of records held, as charged to `budget`.
    record_bytes: std::sync::atomic::AtomicU64,
    segments: Arc<Segments>,
    inner: Inner,
    state: Mutex<State>,
    key_free: Condvar,
    /// When blocks arrived (in memory; for the minimum age of deletions).
    arrivals: Mutex<arrivals::Arrivals>,
}

/// Parts that other modules of the store reach into.
struct Inner {
    index: Index,
}

impl Drop for BlockStore {
    /// Gives this store's charges back to a capacity it may share with stores still open.
    fn drop(&mut self) {
        let st = self.state();
        let held = st.roles.bytes().saturating_add(st.reserved);
        drop(st);
        self.budget
            .give(held.saturating_add(*self.record_bytes.get_mut()));
    }
}

/// A put between its write and its index commit ([`BlockStore::put_batch`]).
enum Staged {
    /// Nothing to write (the same bytes are held).
    Done(PutOutcome),
    /// Written and queued for the next index commit.
    Written(Written),
}

/// A block written to its segment whose index entry waits for a commit.
struct Written {
    key: BlockKey,
    meta: BlockMeta,
    loc: Loc,
    ticket: index::Ticket,
    outcome: PutOutcome,
}

/// Holds a key exclusively for one mutation; released on drop.
struct KeyGuard<'a> {
    store: &'a BlockStore,
    key: BlockKey,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.store.state();
        st.busy.remove(&self.key);
        drop(st);
        self.store.key_free.notify_all();
    }
}

/// Result of checking one held block under its key guard.
enum Checked {
    Good(Vec<u8>),
    Gone,
}

/// Small typed key-value tables in the index (see [`records`]).
impl BlockStore {
    fn tables(&self) -> Tables<'_> {
        Tables {
            db: &self.inner.index.db,
            budget: &self.budget,
            bytes: &self.record_bytes,
        }
    }

    /// The record stored under `key`, if any.
    pub fn record_get(&self, table: RecordTable, key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.tables().record_get(table, key)
    }

    /// Stores `value` under `key` (durably, before returning), replacing any record. Fails with
    /// [`StoreError::Full`] (storing nothing) if the growth does not fit in the capacity.
    pub fn record_put(&self, table: RecordTable, key: &[u8; 32], value: &[u8]) -> Result<()> {
        self.tables().record_put(table, key, value)
    }

    /// Removes the record under `key`. Returns whether there was one.
    pub fn record_delete(&self, table: RecordTable, key: &[u8; 32]) -> Result<bool> {
        self.tables().record_delete(table, key)
    }

    /// Updates many records of `table` in one write transaction (one fsync): `f(i, current)`
    /// gives the new value of `keys[i]` or `None` to leave it. See
    /// [`records::Tables::record_update_many`].
    pub fn record_update_many<F>(
        &self,
        table: RecordTable,
        keys: &[[u8; 32]],
        f: F,
    ) -> Result<usize>
    where
        F: FnMut(usize, Option<&[u8]>) -> Option<Vec<u8>>,
    {
        self.tables().record_update_many(table, keys, f)
    }

    /// Replaces the record under `key` with `new` if `accept(current, new)` says so, atomically
    /// (compare-and-set under one write transaction).
    pub fn record_update<F>(
        &self,
        table: RecordTable,
        key: &[u8; 32],
        new: &[u8],
        accept: F,
    ) -> Result<RecordUpdate>
    where
        F: FnOnce(Option<&[u8]>, &[u8]) -> bool,
    {
        self.tables().record_update(table, key, new, accept)
    }

    /// How many records `table` holds.
    pub fn record_count(&self, table: RecordTable) -> Result<u64> {
        self.tables().record_count(table)
    }

    /// Calls `f` on the records in key order after `after` (borrowed, not copied) until it
    /// returns false: a scan whose memory does not grow with the table or the values.
    pub fn record_scan(
        &self,
        table: RecordTable,
        after: Option<&[u8; 32]>,
        f: impl FnMut(&[u8; 32], &[u8]) -> bool,
    ) -> Result<()> {
        self.tables().record_scan(table, after, f)
    }

    /// Records in key order after `after`, at most `limit`.
    pub fn record_list(
        &self,
        table: RecordTable,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        self.tables().record_list(table, after, limit)
    }
}

impl BlockStore {
    /// Opens (creating if needed) the store at `config.root`, reconciles the segments with the
    /// index and, with `verify_on_open`, re-hashes every block. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(config: StoreConfig) -> Result<(BlockStore, OpenReport)> {
        let layout = Layout::new(&config.root);
        layout.create()?;
        let index_path = layout.index_path();
        // The database lock comes first: nothing below may touch a store another process uses.
        let db = match Database::create(&index_path) {
            Ok(d) => d,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path: index_path })
            }
            Err(e) => return Err(db(e)),
        };
        let (segments, strays) = Segments::open(&layout.segments, config.segment_bytes.max(1))?;
        let segments = Arc::new(segments);
        let (index, legacy) = Index::new(db, segments.clone())?;
        let budget = config
            .shared
            .clone()
            .unwrap_or_else(|| Capacity::new(config.capacity));
        let record_bytes = records::record_bytes_in(&index.db)?;
        budget.take(record_bytes);
        let store = BlockStore {
            layout,
            budget,
            record_bytes: std::sync::atomic::AtomicU64::new(record_bytes),
            segments,
            inner: Inner { index },
            state: Mutex::new(State::default()),
            key_free: Condvar::new(),
            arrivals: Mutex::new(arrivals::Arrivals::new(std::time::Instant::now())),
        };
        let mut report = OpenReport::default();
        for path in strays {
            store.stray(&path, &mut report)?;
        }
        if legacy {
            store.migrate(&mut report)?;
        } else {
            // A migration that committed but stopped before removing the old files.
            store.remove_legacy_dirs()?;
        }
        store.reconcile(&mut report)?;
        if config.verify_on_open {
            let v = store.verify_all()?;
            report.verified = v.checked;
            report.corrupt.extend(v.corrupt);
            report.missing.extend(v.missing);
        }
        let st = store.state();
        report.blocks = st.roles.blocks();
        report.bytes = st.roles.bytes();
        report.over_capacity = store.budget.used() > store.budget.total();
        drop(st);
        info!(
            blocks = report.blocks,
            bytes = report.bytes,
            verified = report.verified,
            corrupt = report.corrupt.len(),
            missing = report.missing.len(),
            orphans = report.orphans_indexed,
            garbage = report.garbage_records_removed,
            migrated = report.migrated,
            "block store opened"
        );
        Ok((store, report))
    }

    /// Reconciles the segments with the index and fills the accounting: entries whose record
    /// lies outside its segment are dropped; between the indexed records, valid records the
    /// index does not list are indexed again and everything else is punched away; segments
    /// left with no records are removed.
    fn reconcile(&self, report: &mut OpenReport) -> Result<()> {
        let segs = &self.segments;
        let lens: BTreeMap<u32, u64> = segs
            .ids()
            .into_iter()
            .map(|id| segs.len(id).map(|l| (id, l)))
            .collect::<Result<_>>()?;
        let mut ops = Vec::new();
        let mut roles = RoleCounts::default();
        let mut held: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for (k, e) in self.all_entries()? {
            let inside = lens
                .get(&e.loc.segment)
                .is_some_and(|len| e.loc.payload() + e.meta.size <= *len);
            if inside {
                roles.add(e.meta);
                segs.add_live(e.loc.segment);
                held.entry(e.loc.segment)
                    .or_default()
                    .push((e.loc.offset, extent(e.meta.size)));
                keys.insert(k);
            } else {
                warn!(key = %k.short(), segment = e.loc.segment, "indexed block record is gone; dropping it");
                report.missing.push(k);
                ops.push(IndexOp::Remove(k));
            }
        }
        for (&id, &len) in &lens {
            let mut extents = held.remove(&id).unwrap_or_default();
            extents.sort_unstable();
            let mut gaps = Vec::new();
            let mut at = 0;
            for (off, ext) in extents {
                if off > at {
                    gaps.push((at, off));
                }
                at = at.max(off + ext);
            }
            if at < len {
                gaps.push((at, len));
            }
            for (a, b) in gaps {
                self.sweep_gap(id, a, b, &mut keys, &mut ops, &mut roles, report)?;
            }
        }
        self.inner.index.apply(&ops)?;
        for id in segs.ids() {
            segs.unlink_if_unused(id)?;
        }
        let mut st = self.state();
        self.budget.take(roles.bytes());
        st.roles = roles;
        st.quarantined = report.corrupt.len() as u64;
        Ok(())
    }

    /// Indexes the valid records in `[a, b)` of segment `id` that the index lost and punches
    /// out everything else there.
    #[allow(clippy::too_many_arguments)]
    fn sweep_gap(
        &self,
        id: u32,
        a: u64,
        b: u64,
        keys: &mut BTreeSet<BlockKey>,
        ops: &mut Vec<IndexOp>,
        roles: &mut RoleCounts,
        report: &mut OpenReport,
    ) -> Result<()> {
        let segs = &self.segments;
        let Some(file) = segs.file(id) else {
            return Ok(());
        };
        let found = scan_file(&file, a, b).map_err(StoreError::io("scan", segs.path(id)))?;
        let mut cursor = a;
        for (at, key, len) in found {
            let loc = Loc {
                segment: id,
                offset: at.offset,
            };
            if loc.offset > cursor {
                segs.punch(id, cursor, loc.offset - cursor)?;
            }
            cursor = loc.offset + extent(len);
            let valid = !keys.contains(&key)
                && segs
                    .read(loc, len)?
                    .is_some_and(|bytes| BlockKey::of(&bytes) == key);
            if valid {
                let meta = BlockMeta {
                    size: len,
                    role: Role::Replica,
                };
                ops.push(IndexOp::Insert(key, Entry { meta, loc }));
                roles.add(meta);
                segs.add_live(id);
                keys.insert(key);
                report.orphans_indexed += 1;
            } else {
                segs.punch(id, loc.offset, extent(len))?;
                report.garbage_records_removed += 1;
            }
        }
        if cursor < b {
            segs.punch(id, cursor, b - cursor)?;
        }
        Ok(())
    }

    /// Moves the blocks of a format-1 store (one file per block under `blocks/`) into
    /// segments: every file whose bytes hash to its name is appended (keeping its indexed
    /// role), then one transaction indexes them all, drops the old table and sets the new
    /// format; only then are the old files removed. A crash before that commit leaves the old
    /// store as it was (opening migrates again; the first attempt's records are swept).
    fn migrate(&self, report: &mut OpenReport) -> Result<()> {
        let l = &self.layout;
        let legacy: BTreeMap<BlockKey, BlockMeta> =
            self.inner.index.legacy_entries()?.into_iter().collect();
        let mut ops = Vec::new();
        let mut seen = BTreeSet::new();
        if l.legacy_blocks.is_dir() {
            for dir in
                fs::read_dir(&l.legacy_blocks).map_err(StoreError::io("list", &l.legacy_blocks))?
            {
                let dir = dir
                    .map_err(StoreError::io("list", &l.legacy_blocks))?
                    .path();
                if !dir.is_dir() {
                    // The directory is removed below: nothing unknown goes with it unseen.
                    self.stray(&dir, report)?;
                    continue;
                }
                for f in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
                    let path = f.map_err(StoreError::io("list", &dir))?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    let key = BlockKey::from_hex(name)
                        .ok()
                        .filter(|k| k.to_hex() == name && path == l.legacy_block_path(k));
                    let Some(key) = key.filter(|_| path.is_file()) else {
                        self.stray(&path, report)?;
                        continue;
                    };
                    let bytes = files::read_file(&path)?.unwrap_or_default();
                    if BlockKey::of(&bytes) != key {
                        warn!(key = %key.short(), "format-1 block file is corrupt; quarantined");
                        files::move_durable(&path, &l.quarantine_path(&key.to_hex()))?;
                        report.corrupt.push(key);
                        seen.insert(key);
                        continue;
                    }
                    let role = legacy.get(&key).map_or(Role::Replica, |m| m.role);
                    let loc = self.segments.append(&key, &bytes)?;
                    let meta = BlockMeta {
                        size: bytes.len() as u64,
                        role,
                    };
                    ops.push(IndexOp::Insert(key, Entry { meta, loc }));
                    seen.insert(key);
                    report.migrated += 1;
                }
            }
        }
        report
            .missing
            .extend(legacy.keys().filter(|k| !seen.contains(k)).copied());
        self.inner.index.finish_migration(&ops)?;
        self.remove_legacy_dirs()?;
        info!(
            blocks = report.migrated,
            "moved a format-1 store (one file per block) into segments"
        );
        Ok(())
    }

    /// Removes the format-1 directories (`blocks/`, `tmp/`) once their blocks are in segments.
    fn remove_legacy_dirs(&self) -> Result<()> {
        let l = &self.layout;
        let mut removed = false;
        for d in [&l.legacy_blocks, &l.legacy_tmp] {
            match fs::remove_dir_all(d) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove format-1 directory", d)(e)),
            }
        }
        if removed {
            files::fsync_dir(&l.root)?;
        }
        Ok(())
    }

    /// Moves an unrecognised file out of the store's directories into quarantine.
    fn stray(&self, path: &Path, report: &mut OpenReport) -> Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = self.layout.quarantine_path(&format!("stray-{name}"));
        files::move_durable(path, &to)?;
        warn!(?path, "unrecognised file in the block store; quarantined");
        report.strays_quarantined += 1;
        Ok(())
    }

    fn all_entries(&self) -> Result<Vec<(BlockKey, Entry)>> {
        let mut out = Vec::new();
        self.scan_entries(&BlockKey::ZERO, &BlockKey::ZERO, |k, e| {
            out.push((k, e));
            true
        })?;
        Ok(out)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is a few arithmetic steps that cannot panic halfway in a
        // way that matters more than refusing service, so a poisoned lock is still used.
        peerstore_proto::lock(&self.state)
    }

    fn lock_key(&self, key: BlockKey) -> KeyGuard<'_> {
        let mut st = self.state();
        while st.busy.contains(&key) {
            st = self.key_free.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.busy.insert(key);
        KeyGuard { store: self, key }
    }

    /// Stores a block under its key. Durable when this returns `Ok`. Idempotent: a block that
    /// is already held is not written or counted again. Fails with
    /// [`StoreError::HashMismatch`] if `bytes` do not hash to `key` and [`StoreError::Full`] if
    /// the block does not fit; in both cases nothing is written.
    pub fn put(&self, key: BlockKey, bytes: &[u8], role: Role) -> Result<PutOutcome> {
        let actual = BlockKey::of(bytes);
        if actual != key {
            return Err(StoreError::HashMismatch {
                expected: key,
                actual,
            });
        }
        self.put_verified(key, bytes, role)
    }

    /// [`BlockStore::put`] for bytes the caller has just checked against `key` (the node's put
    /// path hashes a block once on arrival, not again before storing it). Storing bytes that do
    /// not hash to `key` this way is a bug of the caller: every read would find them corrupt.
    pub fn put_verified(&self, key: BlockKey, bytes: &[u8], role: Role) -> Result<PutOutcome> {
        debug_assert_eq!(BlockKey::of(bytes), key);
        let _guard = self.lock_key(key);
        match self.stage(key, bytes, role)? {
            Staged::Done(outcome) => Ok(outcome),
            Staged::Written(w) => self.finish(w),
        }
    }

    /// Stores a batch of blocks with one index commit for all of them (one segment sync and
    /// one redb commit instead of one each): what a holder does with the blocks an entangled
    /// write sends it together. Each block is checked against its key; results are in input
    /// order, each as [`BlockStore::put`] would return it, all durable when this returns. A
    /// key given twice is stored once (the later ones answer as the first).
    pub fn put_batch(&self, blocks: &[(BlockKey, &[u8])], role: Role) -> Vec<Result<PutOutcome>> {
        self.put_batch_checked(blocks, role, true)
    }

    /// `Ok` if every block of a batch is held ([`BlockStore::put_batch`]'s results), else the
    /// first error.
    pub fn all_held(results: Vec<Result<PutOutcome>>) -> Result<()> {
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// [`BlockStore::put_batch`] for bytes the caller has just made or checked against their
    /// keys (an encoder storing its own blocks on its own disk): not hashed again.
    pub fn put_batch_verified(
        &self,
        blocks: &[(BlockKey, &[u8])],
        role: Role,
    ) -> Vec<Result<PutOutcome>> {
        self.put_batch_checked(blocks, role, false)
    }

    fn put_batch_checked(
        &self,
        blocks: &[(BlockKey, &[u8])],
        role: Role,
        check: bool,
    ) -> Vec<Result<PutOutcome>> {
        let mut results: Vec<Option<Result<PutOutcome>>> = blocks.iter().map(|_| None).collect();
        // The keys' locks in key order (two batches never wait on each other in a cycle).
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_by_key(|&i| blocks[i].0);
        let mut first_of: BTreeMap<BlockKey, usize> = BTreeMap::new();
        let mut guards = Vec::new();
        let mut written = Vec::new();
        for i in order {
            let (key, bytes) = blocks[i];
            if first_of.contains_key(&key) {
                continue;
            }
            first_of.insert(key, i);
            if check {
                let actual = BlockKey::of(bytes);
                if actual != key {
                    results[i] = Some(Err(StoreError::HashMismatch {
                        expected: key,
                        actual,
                    }));
                    continue;
                }
            } else {
                debug_assert_eq!(BlockKey::of(bytes), key);
            }
            guards.push(self.lock_key(key));
            match self.stage(key, bytes, role) {
                Ok(Staged::Done(outcome)) => results[i] = Some(Ok(outcome)),
                Ok(Staged::Written(w)) => written.push((i, w)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        // The first wait leads the commit that holds every staged entry; the others find it
        // done.
        for (i, w) in written {
            results[i] = Some(self.finish(w));
        }
        drop(guards);
        // A repeated key answers as its first occurrence did.
        for i in 0..blocks.len() {
            if results[i].is_none() {
                let first = first_of.get(&blocks[i].0).copied().unwrap_or(i);
                results[i] = Some(match &results[first] {
                    Some(Ok(_)) => Ok(PutOutcome::AlreadyPresent),
                    Some(Err(e)) => Err(StoreError::Db(e.to_string())),
                    None => Err(StoreError::Db("batch entry not stored".into())),
                });
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Db("batch entry not stored".into()))))
            .collect()
    }

    /// The part of a put done under the key's lock before the index commit: compares with a
    /// copy already held, charges the capacity, appends the record and queues its index entry.
    fn stage(&self, key: BlockKey, bytes: &[u8], role: Role) -> Result<Staged> {
        let size = bytes.len() as u64;
        let mut outcome = PutOutcome::Stored;
        if let Some(e) = self.inner.index.get(&key)? {
            // Compare with what is on disk (cheap next to the sync a write costs), so that
            // re-sending a block also repairs a silently damaged copy.
            match self.segments.read(e.loc, e.meta.size)? {
                Some(existing) if existing == bytes => {
                    return Ok(Staged::Done(PutOutcome::AlreadyPresent))
                }
                Some(existing) => {
                    self.quarantine_locked(&key, e, &existing, "differs from the offered bytes")?;
                }
                None => match self.drop_missing_locked(&key, e) {
                    StoreError::Missing { .. } => {}
                    other => return Err(other),
                },
            }
            outcome = PutOutcome::Rewritten;
        }
        {
            let mut st = self.state();
            // Reserved bytes are charged to the (maybe shared) capacity now and stay charged
            // once the block is held.
            if let Err(free) = self.budget.try_take(size) {
                return Err(StoreError::Full {
                    needed: size,
                    free,
                    capacity: self.budget.total(),
                });
            }
            st.reserved += size;
        }
        let meta = BlockMeta { size, role };
        let loc = match self.segments.append(&key, bytes) {
            Ok(loc) => loc,
            Err(e) => {
                self.state().reserved -= size;
                self.budget.give(size);
                return Err(e);
            }
        };
        let ticket = self
            .inner
            .index
            .enqueue(IndexOp::Insert(key, Entry { meta, loc }));
        Ok(Staged::Written(Written {
            key,
            meta,
            loc,
            ticket,
            outcome,
        }))
    }

    /// Waits for a staged put's index commit (the commit's leader syncs the segment first, so
    /// both are durable when this returns). On error the record is punched out again and
    /// nothing is indexed.
    fn finish(&self, w: Written) -> Result<PutOutcome> {
        let res = self.inner.index.wait(w.ticket);
        if res.is_err() {
            let _ = self.segments.release(w.loc, w.meta.size);
        }
        let mut st = self.state();
        st.reserved -= w.meta.size;
        if res.is_err() {
            self.budget.give(w.meta.size);
        }
        res?;
        st.roles.add(w.meta);
        drop(st);
        peerstore_proto::lock(&self.arrivals).record(w.key, std::time::Instant::now());
        Ok(w.outcome)
    }

    /// Stores many blocks, up to 8 at a time so that they share syncs and index commits (a
    /// single caller's sequential puts are bounded by sync latency). Results are in input
    /// order, each as [`BlockStore::put`] would return it.
    pub fn put_many<B: AsRef<[u8]> + Sync>(
        &self,
        blocks: &[(BlockKey, B)],
        role: Role,
    ) -> Vec<Result<PutOutcome>> {
        const WORKERS: usize = 8;
        if blocks.len() <= 1 {
            return blocks
                .iter()
                .map(|(k, b)| self.put(*k, b.as_ref(), role))
                .collect();
        }
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<PutOutcome>>>> =
            blocks.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..WORKERS.min(blocks.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((k, b)) = blocks.get(i) else {
                        break;
                    };
                    let r = self.put(*k, b.as_ref(), role);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| Err(StoreError::Db("put_many worker stopped early".into())))
            })
            .collect()
    }

    /// The block's bytes, verified against the key; `Ok(None)` if the block is not held.
    /// A block that fails verification is quarantined, dropped and reported as
    /// [`StoreError::Corrupt`]; one whose record vanished as [`StoreError::Missing`].
    pub fn get(&self, key: &BlockKey) -> Result<Option<Vec<u8>>> {
        let Some(e) = self.inner.index.get(key)? else {
            return Ok(None);
        };
        if let Some(bytes) = self.segments.read(e.loc, e.meta.size)? {
            if BlockKey::of(&bytes) == *key {
                return Ok(Some(bytes));
            }
        }
        // Slow path: re-check under the key's lock (a concurrent delete or rewrite may explain
        // what we saw) and quarantine if it really is bad.
        let _guard = self.lock_key(*key);
        match self.check_locked(key)? {
            Checked::Good(b) => Ok(Some(b)),
            Checked::Gone => Ok(None),
        }
    }

    /// With the key's guard held: verify the block; quarantine or drop it if bad.
    fn check_locked(&self, key: &BlockKey) -> Result<Checked> {
        let Some(e) = self.inner.index.get(key)? else {
            return Ok(Checked::Gone);
        };
        match self.segments.read(e.loc, e.meta.size)? {
            None => Err(self.drop_missing_locked(key, e)),
            Some(b) if BlockKey::of(&b) == *key => Ok(Checked::Good(b)),
            Some(b) => {
                // A record whose header and payload read as zeros was punched out by a delete
                // that a crash interrupted before its index commit: gone, not damaged.
                let header_gone = self.segments.read_header(e.loc)?.is_none();
                if header_gone && b.iter().all(|x| *x == 0) {
                    return Err(self.drop_missing_locked(key, e));
                }
                let detail = if header_gone {
                    "record header and contents are damaged".to_string()
                } else {
                    "contents do not hash to the key".to_string()
                };
                let to = self.quarantine_locked(key, e, &b, &detail)?;
                Err(StoreError::Corrupt {
                    key: *key,
                    detail,
                    quarantined_to: to,
                })
            }
        }
    }

    /// Copies the bad bytes to quarantine, then drops the block from the index, the disk and
    /// the accounting.
    fn quarantine_locked(
        &self,
        key: &BlockKey,
        e: Entry,
        bad: &[u8],
        why: &str,
    ) -> Result<PathBuf> {
        let to = self.layout.quarantine_path(&key.to_hex());
        // The copy is for inspection only: a full disk must not keep a corrupt block listed
        // (and so keep it from being repaired).
        if let Err(err) = files::write_durable(&to, bad) {
            warn!(key = %key.short(), error = %err, "cannot keep a copy of a corrupt block");
        }
        self.inner.index.submit(IndexOp::Remove(*key))?;
        self.segments.release(e.loc, e.meta.size)?;
        let mut st = self.state();
        st.roles.remove(e.meta);
        self.budget.give(e.meta.size);
        st.quarantined += 1;
        drop(st);
        warn!(key = %key.short(), why, "corrupt block quarantined; needs repair");
        Ok(to)
    }

    /// Drops an index entry whose record is gone. Returns the error to report: `Missing` once
    /// dropped, or what prevented dropping it.
    fn drop_missing_locked(&self, key: &BlockKey, e: Entry) -> StoreError {
        if let Err(err) = self.inner.index.submit(IndexOp::Remove(*key)) {
            return err;
        }
        if let Err(err) = self.segments.release(e.loc, e.meta.size) {
            return err;
        }
        self.state().roles.remove(e.meta);
        self.budget.give(e.meta.size);
        warn!(key = %key.short(), "block record vanished; index entry dropped; needs repair");
        StoreError::Missing { key: *key }
    }

    /// Whether the block is held (per the index; reads verify the bytes).
    pub fn has(&self, key: &BlockKey) -> Result<bool> {
        Ok(self.inner.index.get(key)?.is_some())
    }

    /// The index entry of a held block.
    pub fn meta(&self, key: &BlockKey) -> Result<Option<BlockMeta>> {
        Ok(self.inner.index.get(key)?.map(|e| e.meta))
    }

    /// Where a held block's payload lies on disk, for tools and tests that inspect or damage
    /// it.
    pub fn block_location(&self, key: &BlockKey) -> Result<Option<DiskRecord>> {
        Ok(self.inner.index.get(key)?.map(|e| DiskRecord {
            key: *key,
            path: self.segments.path(e.loc.segment),
            offset: e.loc.payload(),
            len: e.meta.size,
        }))
    }

    /// Deletes a block durably, its bytes first (a hole is punched over its record). Returns
    /// whether it was held.
    pub fn delete(&self, key: &BlockKey) -> Result<bool> {
        let _guard = self.lock_key(*key);
        let Some(e) = self.inner.index.get(key)? else {
            return Ok(false);
        };
        // Bytes first: a crash in between leaves an index entry over a hole, which reads as
        // gone, rather than a record that opening would index again.
        self.segments
            .punch(e.loc.segment, e.loc.offset, extent(e.meta.size))?;
        self.inner.index.submit(IndexOp::Remove(*key))?;
        self.segments.forget(e.loc)?;
        self.state().roles.remove(e.meta);
        self.budget.give(e.meta.size);
        peerstore_proto::lock(&self.arrivals).remove(key);
        Ok(true)
    }

    /// How long this store has held `key`: since it was last stored (put, or rewritten over a
    /// damaged copy), or since the store was opened for blocks it held then; never more than
    /// the truth ([`arrivals`]). In memory only: a restart makes every block young again.
    pub fn held_for(&self, key: &BlockKey) -> std::time::Duration {
        peerstore_proto::lock(&self.arrivals).age(key, std::time::Instant::now())
    }

    /// Changes why the block is held. Returns false if it is not held.
    pub fn set_role(&self, key: &BlockKey, role: Role) -> Result<bool> {
        let _guard = self.lock_key(*key);
        let Some(e) = self.inner.index.get(key)? else {
            return Ok(false);
        };
        if e.meta.role == role {
            return Ok(true);
        }
        let new = BlockMeta { role, ..e.meta };
        self.inner.index.submit(IndexOp::Insert(
            *key,
            Entry {
                meta: new,
                loc: e.loc,
            },
        ))?;
        let mut st = self.state();
        st.roles.remove(e.meta);
        st.roles.add(new);
        Ok(true)
    }

    /// Re-hashes every held block (in parallel), quarantining corrupt ones and dropping
    /// vanished ones. Safe to run while the store serves requests.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let entries = self.all_entries()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        let next = AtomicUsize::new(0);
        let report = Mutex::new(VerifyReport::default());
        let first_err: Mutex<Option<StoreError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((key, _)) = entries.get(i) else {
                        break;
                    };
                    let res = self.get(key);
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    match res {
                        Ok(Some(b)) => {
                            r.checked += 1;
                            r.bytes_checked += b.len() as u64;
                        }
                        Ok(None) => {} // deleted meanwhile
                        Err(StoreError::Corrupt { key, .. }) => {
                            r.checked += 1;
                            r.corrupt.push(key);
                        }
                        Err(StoreError::Missing { key }) => {
                            r.checked += 1;
                            r.missing.push(key);
                        }
                        Err(e) => {
                            drop(r);
                            *first_err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            next.store(usize::MAX / 2, Ordering::Relaxed);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mut r = report.into_inner().unwrap_or_else(|p| p.into_inner());
        r.corrupt.sort();
        r.missing.sort();
        Ok(r)
    }

    /// Calls `f` on index entries of the ring interval `(a, b]` in ring order starting after
    /// `a` (`a == b`: the whole ring) until it returns false.
    fn scan(
        &self,
        a: &BlockKey,
        b: &BlockKey,
        mut f: impl FnMut(BlockKey, BlockMeta) -> bool,
    ) -> Result<()> {
        self.scan_entries(a, b, |k, e| f(k, e.meta))
    }

    /// [`BlockStore::scan`] with the records' locations.
    fn scan_entries(
        &self,
        a: &BlockKey,
        b: &BlockKey,
        mut f: impl FnMut(BlockKey, Entry) -> bool,
    ) -> Result<()> {
        let tx = self.inner.index.db.begin_read().map_err(db)?;
        let t = tx.open_table(BLOCKS).map_err(db)?;
        let ranges: Vec<KeyBounds<'_>> = if a < b {
            vec![(Bound::Excluded(&a.0), Bound::Included(&b.0))]
        } else {
            vec![
                (Bound::Excluded(&a.0), Bound::Unbounded),
                (Bound::Unbounded, Bound::Included(&b.0)),
            ]
        };
        for r in ranges {
            for item in t.range::<&[u8; 32]>(r).map_err(db)? {
                let (k, v) = item.map_err(db)?;
                let key = BlockKey(*k.value());
                if !f(key, Entry::decode(v.value())?) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Entries of `(a, b]` in ring order, at most `limit`, plus the cursor to continue from.
    fn page(&self, a: &BlockKey, b: &BlockKey, limit: Option<usize>) -> Result<MetaPage> {
        if limit == Some(0) {
            return Err(StoreError::InvalidArgument("range limit is 0".into()));
        }
        let mut out = Vec::new();
        let mut more = false;
        self.scan(a, b, |k, m| {
            if limit.is_some_and(|l| out.len() >= l) {
                more = true;
                return false;
            }
            out.push((k, m));
            true
        })?;
        let next = if more { out.last().map(|e| e.0) } else { None };
        Ok(MetaPage { entries: out, next })
    }

    /// Keys held in the ring interval `(a, b]` (wrapping past 2^256 - 1 when `a >= b`; `a == b`
    /// is the whole ring), in ring order starting after `a`, read from the index. With a
    /// `limit`, returns at most that many and a cursor in [`RangePage::next`].
    pub fn list_range(
        &self,
        a: &BlockKey,
        b: &BlockKey,
        limit: Option<usize>,
    ) -> Result<RangePage> {
        let page = self.page(a, b, limit)?;
        Ok(RangePage {
            keys: page.entries.into_iter().map(|e| e.0).collect(),
            next: page.next,
        })
    }

    /// As [`BlockStore::list_range`], with each key's index entry (size and role).
    pub fn list_range_meta(
        &self,
        a: &BlockKey,
        b: &BlockKey,
        limit: Option<usize>,
    ) -> Result<MetaPage> {
        self.page(a, b, limit)
    }

    /// The digest of the keys held in `(a, b]`.
    pub fn range_digest(&self, a: &BlockKey, b: &BlockKey) -> Result<RangeDigest> {
        let mut d = RangeDigest::default();
        self.scan(a, b, |k, _| {
            d.add(&k);
            true
        })?;
        Ok(d)
    }

    /// Splits `(a, b]` into `n` equal consecutive sub-intervals (fewer if the interval holds
    /// fewer than `n` possible keys; at least one) and returns each one's digest, in ring
    /// order. Two nodes compare bucket by bucket and exchange key lists
    /// ([`BlockStore::list_range`]`(start, end)`) only for the buckets that differ.
    pub fn bucket_digests(&self, a: &BlockKey, b: &BlockKey, n: u32) -> Result<Vec<BucketDigest>> {
        if n == 0 {
            return Err(StoreError::InvalidArgument("bucket count is 0".into()));
        }
        let split = Split::new(a, b, n);
        let mut out: Vec<BucketDigest> = (0..split.buckets())
            .map(|i| BucketDigest {
                start: split.bound(i),
                end: split.bound(i + 1),
                digest: RangeDigest::default(),
            })
            .collect();
        let mut cur = 0usize;
        let mut cur_end = split.offset(1);
        self.scan(a, b, |k, _| {
            let d = distance(a, &k);
            // Keys arrive in ring order, so buckets only move forward.
            while d > cur_end && cur + 1 < out.len() {
                cur += 1;
                cur_end = split.offset(cur as u64 + 1);
            }
            out[cur].digest.add(&k);
            true
        })?;
        Ok(out)
    }

    /// Removes every file in quarantine. Returns how many were removed.
    pub fn purge_quarantine(&self) -> Result<u64> {
        let q = &self.layout.quarantine;
        let mut n = 0;
        for entry in fs::read_dir(q).map_err(StoreError::io("list", q))? {
            let p = entry.map_err(StoreError::io("list", q))?.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(StoreError::io("remove", &p))?;
            n += 1;
        }
        if n > 0 {
            files::fsync_dir(q)?;
        }
        Ok(n)
    }

    /// The configured capacity in bytes (shared with the stores opened with the same
    /// [`Capacity`]).
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.budget.total()
    }

    /// The capacity this store draws on, to open another store sharing it
    /// ([`StoreConfig::sharing`]).
    #[must_use]
    pub fn shared_capacity(&self) -> Arc<Capacity> {
        self.budget.clone()
    }

    /// Bytes the record tables cost against the capacity.
    #[must_use]
    pub fn record_bytes(&self) -> u64 {
        self.record_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of blocks held.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.state().roles.bytes()
    }

    /// Bytes a new put may use now: the capacity minus everything charged to it (held and
    /// reserved block bytes and record bytes, of this store and of those sharing it).
    #[must_use]
    pub fn free_bytes(&self) -> u64 {
        self.budget.free()
    }

    /// Number of blocks held.
    #[must_use]
    pub fn block_count(&self) -> u64 {
        self.state().roles.blocks()
    }

    /// Blocks and bytes by role.
    #[must_use]
    pub fn role_counts(&self) -> RoleCounts {
        self.state().roles
    }

    /// All counters at once.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let st = self.state();
        let used = st.roles.bytes();
        StoreStats {
            capacity: self.budget.total(),
            used_bytes: used,
            record_bytes: self.record_bytes(),
            reserved_bytes: st.reserved,
            free_bytes: self.budget.free(),
            roles: st.roles,
            quarantined_since_open: st.quarantined,
            index_commits: self.inner.index.commits.load(Ordering::Relaxed),
        }
    }

    /// Number of entries in the index (equals [`BlockStore::block_count`] when no mutation is in
    /// flight); reads the database, for checks and tests.
    pub fn index_len(&self) -> Result<u64> {
        let tx = self.inner.index.db.begin_read().map_err(db)?;
        let t = tx.open_table(BLOCKS).map_err(db)?;
        t.len().map_err(db)
    }

    /// The data directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// Number of segment files.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.segments.count()
    }

    /// Bytes the segment files take on disk (allocated space: punched holes do not count).
    #[must_use]
    pub fn disk_bytes(&self) -> u64 {
        self.segments.disk_bytes()
    }

    /// The quarantine directory.
    #[must_use]
    pub fn quarantine_dir(&self) -> &Path {
        &self.layout.quarantine
    }

    /// The directory of the segment files.
    #[must_use]
    pub fn segment_dir(&self) -> &Path {
        &self.layout.segments
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BlockStore>();
    }

    const T: RecordTable = RecordTable::new("rec_test_accounting");

    fn open(dir: &Path, capacity: u64) -> BlockStore {
        BlockStore::open(StoreConfig::new(dir, capacity)).unwrap().0
    }

    #[test]
    fn records_count_against_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1000);
        s.record_put(T, &[1; 32], &[7; 100]).unwrap();
        assert_eq!(s.record_bytes(), record_cost(100));
        assert_eq!(s.free_bytes(), 1000 - record_cost(100));
        // Replacing charges only the difference, both ways.
        s.record_put(T, &[1; 32], &[7; 300]).unwrap();
        assert_eq!(s.free_bytes(), 1000 - record_cost(300));
        s.record_put(T, &[1; 32], &[7; 10]).unwrap();
        assert_eq!(s.free_bytes(), 1000 - record_cost(10));
        // A block must fit beside the records.
        let block = vec![9u8; usize::try_from(1000 - record_cost(10)).unwrap() + 1];
        assert!(matches!(
            s.put(BlockKey::of(&block), &block, Role::Owner),
            Err(StoreError::Full { .. })
        ));
        assert!(s.record_delete(T, &[1; 32]).unwrap());
        assert_eq!(s.record_bytes(), 0);
        assert_eq!(s.free_bytes(), 1000);
        assert_eq!(s.stats().free_bytes, 1000);
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_with_full() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 500);
        let block = vec![3u8; 300];
        s.put(BlockKey::of(&block), &block, Role::Owner).unwrap();
        s.record_put(T, &[1; 32], &[1; 50]).unwrap();
        let free = s.free_bytes();
        assert_eq!(free, 500 - 300 - record_cost(50));
        let err = s.record_put(T, &[2; 32], &[0u8; 200]).unwrap_err();
        assert!(
            matches!(err, StoreError::Full { needed, free: f, capacity: 500 } if needed == record_cost(200) && f == free),
            "{err}"
        );
        assert!(err.to_string().contains("node full"), "{err}");
        // Nothing was stored or charged; growing an existing record past the capacity fails
        // the same way and keeps the old value.
        assert_eq!(s.record_get(T, &[2; 32]).unwrap(), None);
        assert!(matches!(
            s.record_update(T, &[1; 32], &[0u8; 250], |_, _| true),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(s.record_get(T, &[1; 32]).unwrap(), Some(vec![1; 50]));
        assert_eq!(s.free_bytes(), free);
        // A refused compare-and-set charges nothing either.
        let r = s
            .record_update(T, &[3; 32], &[0; 10], |_, _| false)
            .unwrap();
        assert!(matches!(r, RecordUpdate::Rejected { current: None }));
        assert_eq!(s.free_bytes(), free);
    }

    #[test]
    fn record_bytes_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 10_000);
            s.record_put(T, &[1; 32], &[1; 100]).unwrap();
            s.record_put(RecordTable::MUTABLE, &[2; 32], &[1; 40])
                .unwrap();
            let block = vec![5u8; 1000];
            s.put(BlockKey::of(&block), &block, Role::Replica).unwrap();
        }
        let (s, report) = BlockStore::open(StoreConfig::new(dir.path(), 10_000)).unwrap();
        assert!(!report.over_capacity);
        assert_eq!(s.record_bytes(), record_cost(100) + record_cost(40));
        assert_eq!(s.free_bytes(), 10_000 - 1000 - s.record_bytes());
        drop(s);
        // Reopened with less capacity than the records take: over capacity, puts refused.
        let (s, report) = BlockStore::open(StoreConfig::new(dir.path(), 1100)).unwrap();
        assert!(report.over_capacity);
        assert_eq!(s.free_bytes(), 0);
        assert!(matches!(
            s.record_put(T, &[9; 32], &[]),
            Err(StoreError::Full { .. })
        ));
        // Shrinking and deleting still work.
        s.record_put(T, &[1; 32], &[]).unwrap();
        assert!(s.record_delete(T, &[1; 32]).unwrap());
    }

    #[test]
    fn stores_sharing_a_capacity_share_it() {
        let dir = tempfile::tempdir().unwrap();
        let main = open(&dir.path().join("store"), 2000);
        let single = BlockStore::open(StoreConfig::sharing(
            dir.path().join("single"),
            main.shared_capacity(),
        ))
        .unwrap()
        .0;
        assert_eq!(single.capacity(), 2000);
        let a = vec![1u8; 1500];
        main.put(BlockKey::of(&a), &a, Role::Owner).unwrap();
        assert_eq!(single.free_bytes(), 500);
        let b = vec![2u8; 600];
        assert!(matches!(
            single.put(BlockKey::of(&b), &b, Role::Replica),
            Err(StoreError::Full {
                free: 500,
                capacity: 2000,
                ..
            })
        ));
        single.record_put(T, &[1; 32], &[0; 100]).unwrap();
        assert_eq!(main.free_bytes(), 500 - record_cost(100));
        assert!(matches!(
            main.record_put(T, &[2; 32], &[0; 400]),
            Err(StoreError::Full { .. })
        ));
        assert!(main.delete(&BlockKey::of(&a)).unwrap());
        single.put(BlockKey::of(&b), &b, Role::Replica).unwrap();
        assert_eq!(main.free_bytes(), 2000 - 600 - record_cost(100));
        // Closing a store gives its charges back; reopening it charges them again.
        drop(single);
        assert_eq!(main.free_bytes(), 2000);
        let (single, report) = BlockStore::open(StoreConfig::sharing(
            dir.path().join("single"),
            main.shared_capacity(),
        ))
        .unwrap();
        assert!(!report.over_capacity);
        assert_eq!(single.free_bytes(), 2000 - 600 - record_cost(100));
    }
}
