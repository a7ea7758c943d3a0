//! The node's durable storage: content-addressed block files plus a transactional metadata
//! index (redb).
//!
//! * A block's key is the BLAKE3 hash of its bytes ([`BlockKey`]). A put is acknowledged only
//!   once the block is durable: temp file, fsync, rename into `blocks/ab/abcd...`, fsync of the
//!   directory, then a durable index commit (concurrent puts share one commit).
//! * Every read re-hashes the bytes. A corrupt or vanished block is never served: its file goes
//!   to `quarantine/`, it leaves the index, and the read fails with an error whose
//!   [`StoreError::needs_repair`] names the key to re-fetch from a replica.
//! * Capacity is enforced under a lock before any byte is written, so concurrent puts never
//!   oversubscribe it and a put that does not fit leaves nothing behind.
//! * Opening reconciles the files with the index (temp leftovers, orphan files, missing files)
//!   and, by default, re-hashes every block before the store is used.
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

mod error;
mod files;
mod index;
mod key;
mod records;
mod ring;

use std::collections::BTreeSet;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use redb::{Database, DatabaseError, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use error::{Result, StoreError};
pub use index::{BlockMeta, Role};
pub use key::{BlockKey, ParseKeyError};
pub use records::{RecordTable, RecordUpdate};
pub use ring::in_interval;

use error::db;
use files::Layout;
use index::{Index, IndexOp, BLOCKS};
use ring::{distance, Split};

/// How to open a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The data directory; created if missing.
    pub root: PathBuf,
    /// Most bytes of block payload the node will hold.
    pub capacity: u64,
    /// Re-hash every held block while opening (default true). When false, opening only checks
    /// that files exist with the indexed size; call [`BlockStore::verify_all`] before serving.
    pub verify_on_open: bool,
}

impl StoreConfig {
    /// A config with `verify_on_open` set.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, capacity: u64) -> StoreConfig {
        StoreConfig {
            root: root.into(),
            capacity,
            verify_on_open: true,
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
    /// The index listed the block but its file was missing or damaged; the damaged file went
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
    /// Blocks found corrupt, moved to quarantine and dropped.
    pub corrupt: Vec<BlockKey>,
    /// Index entries dropped because their file was gone.
    pub missing: Vec<BlockKey>,
    /// Valid block files that the index did not list (a crash between rename and index commit)
    /// and that are now indexed, with role [`Role::Replica`].
    pub orphans_indexed: u64,
    /// Leftover temp files removed.
    pub temp_files_removed: u64,
    /// Unrecognised files under `blocks/` moved to quarantine.
    pub strays_quarantined: u64,
    /// Held bytes exceed the configured capacity (capacity was lowered): puts fail until
    /// blocks are deleted.
    pub over_capacity: bool,
}

/// What [`BlockStore::verify_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blocks checked.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes_checked: u64,
    /// Blocks found corrupt, moved to quarantine and dropped (repair these).
    pub corrupt: Vec<BlockKey>,
    /// Blocks whose file was gone, dropped (repair these).
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
    /// Bytes reserved by puts in progress.
    pub reserved_bytes: u64,
    /// Bytes a new put may still use.
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
    capacity: u64,
    inner: Inner,
    state: Mutex<State>,
    key_free: Condvar,
}

/// Parts that other modules of the store reach into.
struct Inner {
    index: Index,
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

impl BlockStore {
    /// Opens (creating if needed) the store at `config.root`, reconciles files with the index
    /// and, with `verify_on_open`, re-hashes every block. Fails with [`StoreError::Locked`] if
    /// another process has it open.
    pub fn open(config: StoreConfig) -> Result<(BlockStore, OpenReport)> {
        let layout = Layout::new(&config.root);
        layout.create()?;
        let index_path = layout.index_path();
        let db = match Database::create(&index_path) {
            Ok(d) => d,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked { path: index_path })
            }
            Err(e) => return Err(db(e)),
        };
        let store = BlockStore {
            layout,
            capacity: config.capacity,
            inner: Inner {
                index: Index::new(db)?,
            },
            state: Mutex::new(State::default()),
            key_free: Condvar::new(),
        };
        let mut report = store.reconcile()?;
        if config.verify_on_open {
            let v = store.verify_all()?;
            report.verified = v.checked;
            report.corrupt.extend(v.corrupt);
            report.missing.extend(v.missing);
        }
        let st = store.state();
        report.blocks = st.roles.blocks();
        report.bytes = st.roles.bytes();
        report.over_capacity = report.bytes > store.capacity;
        drop(st);
        info!(
            blocks = report.blocks,
            bytes = report.bytes,
            verified = report.verified,
            corrupt = report.corrupt.len(),
            missing = report.missing.len(),
            orphans = report.orphans_indexed,
            temp_removed = report.temp_files_removed,
            "block store opened"
        );
        Ok((store, report))
    }

    /// Cheap reconciliation of the directory tree with the index; fills the accounting.
    fn reconcile(&self) -> Result<OpenReport> {
        let mut report = OpenReport::default();
        let l = &self.layout;

        // 1. Leftover temp files of puts that never finished.
        for entry in fs::read_dir(&l.tmp).map_err(StoreError::io("list", &l.tmp))? {
            let entry = entry.map_err(StoreError::io("list", &l.tmp))?;
            let p = entry.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(StoreError::io("remove temp file", &p))?;
            report.temp_files_removed += 1;
        }
        if report.temp_files_removed > 0 {
            files::fsync_dir(&l.tmp)?;
        }

        // 2. What block files exist.
        let mut on_disk = std::collections::BTreeMap::<BlockKey, u64>::new();
        for entry in fs::read_dir(&l.blocks).map_err(StoreError::io("list", &l.blocks))? {
            let entry = entry.map_err(StoreError::io("list", &l.blocks))?;
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let prefix = match hex::decode(&name) {
                Ok(v) if v.len() == 1 && name == hex::encode(&v) && dir.is_dir() => v[0],
                _ => {
                    self.stray(&dir, &name, &mut report)?;
                    continue;
                }
            };
            for f in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
                let f = f.map_err(StoreError::io("list", &dir))?;
                let path = f.path();
                let fname = f.file_name().to_string_lossy().into_owned();
                let key = match BlockKey::from_hex(&fname) {
                    Ok(k) if k.0[0] == prefix && k.to_hex() == fname && path.is_file() => k,
                    _ => {
                        self.stray(&path, &fname, &mut report)?;
                        continue;
                    }
                };
                let len = f.metadata().map_err(StoreError::io("stat", &path))?.len();
                on_disk.insert(key, len);
            }
        }

        // 3. Index entries against files.
        let indexed = self.all_entries()?;
        let mut ops = Vec::new();
        let mut roles = RoleCounts::default();
        for (k, m) in indexed {
            match on_disk.remove(&k) {
                None => {
                    warn!(key = %k.short(), "indexed block file missing; dropping it");
                    report.missing.push(k);
                    ops.push(IndexOp::Remove(k));
                }
                Some(len) if len != m.size => {
                    let to = self.layout.quarantine_path(&k.to_hex());
                    files::move_durable(&self.layout.block_path(&k), &to)?;
                    warn!(key = %k.short(), len, expected = m.size, "block file has the wrong size; quarantined");
                    report.corrupt.push(k);
                    ops.push(IndexOp::Remove(k));
                }
                Some(_) => roles.add(m),
            }
        }

        // 4. Files the index does not know: a crash between rename and index commit.
        for (k, len) in on_disk {
            let path = self.layout.block_path(&k);
            let bytes = files::read_file(&path)?.unwrap_or_default();
            if bytes.len() as u64 == len && BlockKey::of(&bytes) == k {
                let m = BlockMeta {
                    size: len,
                    role: Role::Replica,
                };
                ops.push(IndexOp::Insert(k, m));
                roles.add(m);
                report.orphans_indexed += 1;
            } else {
                let to = self.layout.quarantine_path(&k.to_hex());
                files::move_durable(&path, &to)?;
                warn!(key = %k.short(), "unindexed block file is corrupt; quarantined");
                report.corrupt.push(k);
            }
        }
        self.inner.index.apply(&ops)?;
        let mut st = self.state();
        st.roles = roles;
        st.quarantined = report.corrupt.len() as u64;
        Ok(report)
    }

    fn stray(&self, path: &Path, name: &str, report: &mut OpenReport) -> Result<()> {
        if name.ends_with(".tmp") && path.is_file() {
            files::remove_durable(path)?;
            report.temp_files_removed += 1;
        } else {
            let to = self.layout.quarantine_path(&format!("stray-{name}"));
            files::move_durable(path, &to)?;
            warn!(
                ?path,
                "unrecognised file in the block directory; quarantined"
            );
            report.strays_quarantined += 1;
        }
        Ok(())
    }

    fn all_entries(&self) -> Result<Vec<(BlockKey, BlockMeta)>> {
        let mut out = Vec::new();
        self.scan(&BlockKey::ZERO, &BlockKey::ZERO, |k, m| {
            out.push((k, m));
            true
        })?;
        Ok(out)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update under this lock is a few arithmetic steps that cannot panic halfway in a
        // way that matters more than refusing service, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        let size = bytes.len() as u64;
        let _guard = self.lock_key(key);
        let path = self.layout.block_path(&key);
        let mut outcome = PutOutcome::Stored;
        if let Some(meta) = self.inner.index.get(&key)? {
            // Compare with what is on disk (cheap next to the fsyncs a write costs), so that
            // re-sending a block also repairs a silently damaged copy.
            match files::read_file(&path)? {
                Some(existing) if existing == bytes => return Ok(PutOutcome::AlreadyPresent),
                Some(_) => {
                    self.quarantine_locked(&key, meta, "differs from the offered bytes")?;
                }
                None => match self.drop_missing_locked(&key, meta) {
                    StoreError::Missing { .. } => {}
                    other => return Err(other),
                },
            }
            outcome = PutOutcome::Rewritten;
        }
        {
            let mut st = self.state();
            let taken = st.roles.bytes().saturating_add(st.reserved);
            let free = self.capacity.saturating_sub(taken);
            if size > free {
                return Err(StoreError::Full {
                    needed: size,
                    free,
                    capacity: self.capacity,
                });
            }
            st.reserved += size;
        }
        let meta = BlockMeta { size, role };
        let res = self.write_and_index(&key, &path, bytes, meta);
        let mut st = self.state();
        st.reserved -= size;
        res?;
        st.roles.add(meta);
        Ok(outcome)
    }

    /// Stores many blocks, up to 8 at a time so their fsyncs overlap and their index entries
    /// share commits (a single caller's sequential puts are bounded by fsync latency). Results
    /// are in input order, each as [`BlockStore::put`] would return it.
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

    /// Writes the block file and its index entry durably. The directory fsync that makes the
    /// rename durable overlaps with the group commit of the index entry: both finish before
    /// this returns, and a crash in between is repaired by opening (an entry without a file is
    /// dropped, a file without an entry is verified and indexed).
    fn write_and_index(
        &self,
        key: &BlockKey,
        path: &Path,
        bytes: &[u8],
        meta: BlockMeta,
    ) -> Result<()> {
        files::write_file_and_rename(&self.layout.temp_path(key), path, bytes)?;
        let ticket = self.inner.index.enqueue(IndexOp::Insert(*key, meta));
        let dir_synced = files::fsync_dir(&self.layout.fanout_dir(key));
        let indexed = self.inner.index.wait(ticket);
        match (dir_synced, indexed) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) => {
                // Undo so that nothing half-durable stays listed.
                let _ = self.inner.index.submit(IndexOp::Remove(*key));
                let _ = files::remove_durable(path);
                Err(e)
            }
            (_, Err(e)) => {
                let _ = files::remove_durable(path);
                Err(e)
            }
        }
    }

    /// The block's bytes, verified against the key; `Ok(None)` if the block is not held.
    /// A block that fails verification is quarantined, dropped and reported as
    /// [`StoreError::Corrupt`]; one whose file vanished as [`StoreError::Missing`].
    pub fn get(&self, key: &BlockKey) -> Result<Option<Vec<u8>>> {
        let Some(meta) = self.inner.index.get(key)? else {
            return Ok(None);
        };
        if let Some(bytes) = files::read_file(&self.layout.block_path(key))? {
            if bytes.len() as u64 == meta.size && BlockKey::of(&bytes) == *key {
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
        let Some(meta) = self.inner.index.get(key)? else {
            return Ok(Checked::Gone);
        };
        match files::read_file(&self.layout.block_path(key))? {
            None => Err(self.drop_missing_locked(key, meta)),
            Some(b) if b.len() as u64 == meta.size && BlockKey::of(&b) == *key => {
                Ok(Checked::Good(b))
            }
            Some(b) => {
                let detail = if b.len() as u64 != meta.size {
                    format!("{} bytes on disk, {} indexed", b.len(), meta.size)
                } else {
                    "contents do not hash to the key".to_string()
                };
                let to = self.quarantine_locked(key, meta, &detail)?;
                Err(StoreError::Corrupt {
                    key: *key,
                    detail,
                    quarantined_to: to,
                })
            }
        }
    }

    /// Moves the key's file to quarantine and drops it from the index and the accounting.
    fn quarantine_locked(&self, key: &BlockKey, meta: BlockMeta, why: &str) -> Result<PathBuf> {
        let to = self.layout.quarantine_path(&key.to_hex());
        files::move_durable(&self.layout.block_path(key), &to)?;
        self.inner.index.submit(IndexOp::Remove(*key))?;
        let mut st = self.state();
        st.roles.remove(meta);
        st.quarantined += 1;
        drop(st);
        warn!(key = %key.short(), why, "corrupt block quarantined; needs repair");
        Ok(to)
    }

    /// Drops an index entry whose file is gone. Returns the error to report: `Missing` once
    /// dropped, or what prevented dropping it.
    fn drop_missing_locked(&self, key: &BlockKey, meta: BlockMeta) -> StoreError {
        if let Err(e) = self.inner.index.submit(IndexOp::Remove(*key)) {
            return e;
        }
        self.state().roles.remove(meta);
        warn!(key = %key.short(), "block file vanished; index entry dropped; needs repair");
        StoreError::Missing { key: *key }
    }

    /// Whether the block is held (per the index; reads verify the file).
    pub fn has(&self, key: &BlockKey) -> Result<bool> {
        Ok(self.inner.index.get(key)?.is_some())
    }

    /// The index entry of a held block.
    pub fn meta(&self, key: &BlockKey) -> Result<Option<BlockMeta>> {
        self.inner.index.get(key)
    }

    /// Deletes a block (durably). Returns whether it was held.
    pub fn delete(&self, key: &BlockKey) -> Result<bool> {
        let _guard = self.lock_key(*key);
        let Some(meta) = self.inner.index.get(key)? else {
            return Ok(false);
        };
        // File first: a crash in between leaves an index entry without a file, which opening
        // drops, rather than a file that opening would resurrect.
        files::remove_durable(&self.layout.block_path(key))?;
        self.inner.index.submit(IndexOp::Remove(*key))?;
        self.state().roles.remove(meta);
        Ok(true)
    }

    /// Changes why the block is held. Returns false if it is not held.
    pub fn set_role(&self, key: &BlockKey, role: Role) -> Result<bool> {
        let _guard = self.lock_key(*key);
        let Some(meta) = self.inner.index.get(key)? else {
            return Ok(false);
        };
        if meta.role == role {
            return Ok(true);
        }
        let new = BlockMeta { role, ..meta };
        self.inner.index.submit(IndexOp::Insert(*key, new))?;
        let mut st = self.state();
        st.roles.remove(meta);
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
                if !f(key, BlockMeta::decode(v.value())?) {
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

    /// The configured capacity in bytes.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of blocks held.
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.state().roles.bytes()
    }

    /// Bytes a new put may use now (capacity minus held and reserved bytes).
    #[must_use]
    pub fn free_bytes(&self) -> u64 {
        let st = self.state();
        self.capacity
            .saturating_sub(st.roles.bytes().saturating_add(st.reserved))
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
            capacity: self.capacity,
            used_bytes: used,
            reserved_bytes: st.reserved,
            free_bytes: self
                .capacity
                .saturating_sub(used.saturating_add(st.reserved)),
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

    /// Where the block file of `key` lives (whether or not it is held).
    #[must_use]
    pub fn block_path(&self, key: &BlockKey) -> PathBuf {
        self.layout.block_path(key)
    }

    /// The quarantine directory.
    #[must_use]
    pub fn quarantine_dir(&self) -> &Path {
        &self.layout.quarantine
    }

    /// The directory of in-progress temp files.
    #[must_use]
    pub fn temp_dir(&self) -> &Path {
        &self.layout.tmp
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
}
