//! The metadata index in redb, and group commit of index updates.
//!
//! Every acknowledged change is committed with `Durability::Immediate`. Concurrent writers do
//! not each pay for a commit: the first one to arrive becomes the leader and commits everything
//! queued so far in one transaction, while the others wait for that commit (leader/follower
//! group commit). Before committing, the leader makes the segment records of the batch durable
//! (one `fdatasync` per written segment), so an index entry never points at bytes a crash could
//! lose. Nobody returns before the transaction holding its change is durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::{db, Result, StoreError};
use super::segments::{Loc, Segments};
use peerstore_proto::BlockKey;

/// key -> (size in bytes, role code, segment id, record offset).
pub(crate) const BLOCKS: TableDefinition<&[u8; 32], (u64, u8, u32, u64)> =
    TableDefinition::new("block_records");
/// Format 1: key -> (size in bytes, role code), payload in `blocks/ab/<key>` (read only to
/// migrate).
pub(crate) const LEGACY_BLOCKS: TableDefinition<&[u8; 32], (u64, u8)> =
    TableDefinition::new("blocks");
/// Store-wide settings such as the format version.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// On-disk format version of the index; bump when a table changes shape.
pub(crate) const FORMAT_VERSION: u8 = 2;
/// The version that kept one file per block.
pub(crate) const LEGACY_FORMAT: u8 = 1;

/// Why the node holds a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// The node is the key's successor (primary holder).
    Owner,
    /// The node holds one of the r-1 extra copies.
    Replica,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Owner => 0,
            Role::Replica => 1,
        }
    }

    fn from_code(c: u8) -> Result<Role> {
        match c {
            0 => Ok(Role::Owner),
            1 => Ok(Role::Replica),
            other => Err(StoreError::BadIndex(format!("unknown role code {other}"))),
        }
    }
}

/// What the index records about a held block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Size of the block in bytes.
    pub size: u64,
    /// Why the node holds it.
    pub role: Role,
}

impl BlockMeta {
    pub(crate) fn decode_legacy(v: (u64, u8)) -> Result<BlockMeta> {
        Ok(BlockMeta {
            size: v.0,
            role: Role::from_code(v.1)?,
        })
    }
}

/// An index entry: what is held and where its record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) meta: BlockMeta,
    pub(crate) loc: Loc,
}

impl Entry {
    pub(crate) fn encode(self) -> (u64, u8, u32, u64) {
        (
            self.meta.size,
            self.meta.role.code(),
            self.loc.segment,
            self.loc.offset,
        )
    }

    pub(crate) fn decode(v: (u64, u8, u32, u64)) -> Result<Entry> {
        Ok(Entry {
            meta: BlockMeta {
                size: v.0,
                role: Role::from_code(v.1)?,
            },
            loc: Loc {
                segment: v.2,
                offset: v.3,
            },
        })
    }
}

/// One change to the block table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum IndexOp {
    Insert(BlockKey, Entry),
    Remove(BlockKey),
}

#[derive(Default)]
struct Queue {
    pending: Vec<IndexOp>,
    /// Id of the batch that `pending` will become.
    collecting: u64,
    /// Every batch with a smaller id has finished.
    finished_below: u64,
    leader_active: bool,
    /// Failed batches: error text and how many submitters have yet to read it.
    failures: BTreeMap<u64, (String, usize)>,
}

/// A queued index change; see [`Index::wait`].
#[must_use]
pub(crate) struct Ticket(u64);

/// The redb database plus the group-commit queue for the block table.
pub(crate) struct Index {
    pub(crate) db: Database,
    segments: Arc<Segments>,
    /// Durable commits of the block table so far.
    pub(crate) commits: AtomicU64,
    queue: Mutex<Queue>,
    done: Condvar,
}

// A panic while holding the queue's lock cannot leave it inconsistent (every update is a
// single assignment), so a poisoned lock is still usable.
use peerstore_proto::lock;

impl Index {
    /// Opens the tables. Returns the index and whether it is in the one-file-per-block format
    /// ([`LEGACY_FORMAT`]), whose blocks the caller must migrate.
    pub(crate) fn new(db: Database, segments: Arc<Segments>) -> Result<(Index, bool)> {
        let tx = db.begin_write().map_err(db_err)?;
        let mut legacy = false;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let stored = meta
                .get("format")
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            match stored.as_deref() {
                None => {
                    meta.insert("format", [FORMAT_VERSION].as_slice())
                        .map_err(db_err)?;
                }
                Some([v]) if *v == FORMAT_VERSION => {}
                Some([v]) if *v == LEGACY_FORMAT => legacy = true,
                Some(other) => {
                    return Err(StoreError::BadIndex(format!(
                        "format version {other:?}, this build reads {FORMAT_VERSION}"
                    )))
                }
            }
            tx.open_table(BLOCKS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok((
            Index {
                db,
                segments,
                commits: AtomicU64::new(0),
                queue: Mutex::new(Queue::default()),
                done: Condvar::new(),
            },
            legacy,
        ))
    }

    pub(crate) fn get(&self, key: &BlockKey) -> Result<Option<Entry>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(BLOCKS).map_err(db_err)?;
        match t.get(&key.0).map_err(db_err)? {
            Some(v) => Ok(Some(Entry::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Applies `ops` in one durable transaction after syncing the segments, without queueing
    /// (used while opening).
    pub(crate) fn apply(&self, ops: &[IndexOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.segments.sync_dirty()?;
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(BLOCKS).map_err(db_err)?;
            for op in ops {
                match op {
                    IndexOp::Insert(k, e) => {
                        t.insert(&k.0, e.encode()).map_err(db_err)?;
                    }
                    IndexOp::Remove(k) => {
                        t.remove(&k.0).map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Format 1 -> 2 in one durable transaction: `ops` go into the block table, the legacy
    /// table is dropped and the format version set.
    pub(crate) fn finish_migration(&self, ops: &[IndexOp]) -> Result<()> {
        self.segments.sync_dirty()?;
        let mut tx = self.db.begin_write().map_err(db_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut t = tx.open_table(BLOCKS).map_err(db_err)?;
            for op in ops {
                if let IndexOp::Insert(k, e) = op {
                    t.insert(&k.0, e.encode()).map_err(db_err)?;
                }
            }
        }
        tx.delete_table(LEGACY_BLOCKS).map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert("format", [FORMAT_VERSION].as_slice())
                .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The entries of the legacy (format 1) table.
    pub(crate) fn legacy_entries(&self) -> Result<Vec<(BlockKey, BlockMeta)>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(LEGACY_BLOCKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((BlockKey(*k.value()), BlockMeta::decode_legacy(v.value())?));
        }
        Ok(out)
    }

    /// Queues `op` and returns once a durable commit contains it.
    pub(crate) fn submit(&self, op: IndexOp) -> Result<()> {
        let t = self.enqueue(op);
        self.wait(t)
    }

    /// Queues `op` for the next group commit without waiting. The caller must [`Index::wait`]
    /// on the ticket (the op will be committed whether or not it does).
    pub(crate) fn enqueue(&self, op: IndexOp) -> Ticket {
        let mut q = lock(&self.queue);
        q.pending.push(op);
        Ticket(q.collecting)
    }

    /// Returns once the commit holding the ticket's op is durable (leading that commit if no
    /// one else is committing).
    pub(crate) fn wait(&self, ticket: Ticket) -> Result<()> {
        let mine = ticket.0;
        let mut q = lock(&self.queue);
        loop {
            if q.finished_below > mine {
                let failed = match q.failures.get_mut(&mine) {
                    Some((msg, waiting)) => {
                        *waiting -= 1;
                        Some((msg.clone(), *waiting == 0))
                    }
                    None => None,
                };
                return match failed {
                    Some((msg, last)) => {
                        if last {
                            q.failures.remove(&mine);
                        }
                        Err(StoreError::Db(msg))
                    }
                    None => Ok(()),
                };
            }
            if q.leader_active {
                q = self.done.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead: commit everything queued so far as batch `id`.
            q.leader_active = true;
            let ops = std::mem::take(&mut q.pending);
            let id = q.collecting;
            q.collecting += 1;
            drop(q);
            let mut finish = FinishBatch {
                index: self,
                id,
                waiters: ops.len(),
                error: Some("index commit panicked".to_string()),
            };
            finish.error = self.apply(&ops).err().map(|e| e.to_string());
            drop(finish);
            q = lock(&self.queue);
        }
    }
}

/// Marks a batch finished when the leader is done with it, even if the commit panicked, so the
/// followers waiting on it never hang.
struct FinishBatch<'a> {
    index: &'a Index,
    id: u64,
    waiters: usize,
    error: Option<String>,
}

impl Drop for FinishBatch<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.index.queue);
        if let Some(e) = self.error.take() {
            q.failures.insert(self.id, (e, self.waiters));
        }
        q.finished_below = self.id + 1;
        q.leader_active = false;
        drop(q);
        self.index.done.notify_all();
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    db(e)
}
