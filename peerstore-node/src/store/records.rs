//! Small typed key-value tables in the index: `[u8; 32] -> bytes`, each a named redb table.
//!
//! The daemon keeps its mutable records here (signed user roots today; codeword records and
//! reverse references later). A new table is one more [`RecordTable`] constant: tables are
//! created on first write and read as empty before that.
//!
//! Records count against the node's capacity ([`super::budget`]): each costs
//! [`record_cost`]`(value length)`. A write that grows the table by more than is free fails with
//! [`StoreError::Full`] and changes nothing; shrinking writes and deletes always succeed.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableTable, TableDefinition, TableError, TableHandle};

use super::budget::{record_cost, Capacity};
use super::error::{db, Result, StoreError};

/// The name of a record table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordTable(&'static str);

impl RecordTable {
    /// Mutable records such as signed, versioned user roots.
    pub const MUTABLE: RecordTable = RecordTable("rec_mutable");
    /// Codeword records of the entanglement (reserved for the repair worker).
    pub const CODEWORDS: RecordTable = RecordTable("rec_codewords");
    /// Reverse pointer references (reserved for the repair worker).
    pub const REVERSE_REFS: RecordTable = RecordTable("rec_reverse_refs");

    /// A table of the daemon's own. The name must not collide with the store's tables
    /// (`blocks`, `meta`, and those starting with `rec_` above).
    #[must_use]
    pub const fn new(name: &'static str) -> RecordTable {
        RecordTable(name)
    }

    /// The table's name in the database.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.0
    }

    fn def(self) -> TableDefinition<'static, &'static [u8; 32], &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// The result of [`super::BlockStore::record_update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordUpdate {
    /// The new value was accepted and is durably stored.
    Stored,
    /// The closure refused the new value; `current` is what stays stored.
    Rejected {
        /// The value that remains (none if the key has no record).
        current: Option<Vec<u8>>,
    },
}

/// The record tables of a store's index database. [`super::BlockStore`]'s `record_*` methods
/// are these.
pub(crate) struct Tables<'a> {
    pub(crate) db: &'a Database,
    pub(crate) budget: &'a Capacity,
    /// Bytes of records held, as charged to `budget`.
    pub(crate) bytes: &'a AtomicU64,
}

/// Whether a table of the database is a record table (not one of the block index's own).
fn is_record_table(name: &str) -> bool {
    !matches!(name, "block_records" | "blocks" | "meta")
}

/// What the records of every record table in `db` cost, by a streaming scan (no table is
/// loaded into memory). Run once when the store opens.
pub(crate) fn record_bytes_in(database: &Database) -> Result<u64> {
    let tx = database.begin_read().map_err(db)?;
    let mut total = 0u64;
    for handle in tx.list_tables().map_err(db)? {
        let name = handle.name().to_string();
        if !is_record_table(&name) {
            continue;
        }
        let def: TableDefinition<'_, &'static [u8; 32], &'static [u8]> =
            TableDefinition::new(&name);
        let t = match tx.open_table(def) {
            Ok(t) => t,
            // A table of another shape is not a record table.
            Err(TableError::TableTypeMismatch { .. }) => continue,
            Err(e) => return Err(db(e)),
        };
        for item in t.iter().map_err(db)? {
            let (_, v) = item.map_err(db)?;
            total = total.saturating_add(record_cost(v.value().len()));
        }
    }
    Ok(total)
}

impl Tables<'_> {
    /// Charges `grow` bytes to the capacity, or fails with [`StoreError::Full`].
    fn charge(&self, grow: u64) -> Result<()> {
        if grow == 0 {
            return Ok(());
        }
        self.budget
            .try_take(grow)
            .map_err(|free| StoreError::Full {
                needed: grow,
                free,
                capacity: self.budget.total(),
            })?;
        self.bytes.fetch_add(grow, Ordering::Relaxed);
        Ok(())
    }

    /// Charges `grow` bytes, then commits `tx` and releases `shrink`: a write that does not fit
    /// is aborted and leaves nothing behind.
    fn commit_charged(&self, tx: redb::WriteTransaction, grow: u64, shrink: u64) -> Result<()> {
        if let Err(e) = self.charge(grow) {
            tx.abort().map_err(db)?;
            return Err(e);
        }
        if let Err(e) = tx.commit() {
            self.release(grow);
            return Err(db(e));
        }
        self.release(shrink);
        Ok(())
    }

    /// Releases `shrink` charged bytes.
    fn release(&self, shrink: u64) {
        if shrink == 0 {
            return;
        }
        self.budget.give(shrink);
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(shrink))
            });
    }

    /// The record stored under `key`, if any.
    pub fn record_get(&self, table: RecordTable, key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        let v = t.get(key).map_err(db)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    /// Stores `value` under `key` unconditionally (durable when this returns).
    pub fn record_put(&self, table: RecordTable, key: &[u8; 32], value: &[u8]) -> Result<()> {
        self.record_update(table, key, value, |_, _| true)
            .map(|_| ())
    }

    /// Removes the record under `key`. Returns whether there was one.
    pub fn record_delete(&self, table: RecordTable, key: &[u8; 32]) -> Result<bool> {
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate);
        let freed = {
            let mut t = tx.open_table(table.def()).map_err(db)?;
            let old = t.remove(key).map_err(db)?;
            old.map(|v| record_cost(v.value().len()))
        };
        tx.commit().map_err(db)?;
        if let Some(n) = freed {
            self.release(n);
        }
        Ok(freed.is_some())
    }

    /// Compare-and-set: atomically reads the current value under `key`, calls
    /// `accept(current, new)`, and stores `new` only if it returns true. No other update of the
    /// record can interleave. Keep `accept` quick: it runs inside the index's write transaction
    /// (for example: check the signature and that the version is higher).
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
        // Write transactions are serialised, so the size read here is the one replaced.
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate);
        let (outcome, old_cost) = {
            let mut t = tx.open_table(table.def()).map_err(db)?;
            let current = t.get(key).map_err(db)?.map(|v| v.value().to_vec());
            let old_cost = current.as_ref().map_or(0, |c| record_cost(c.len()));
            if accept(current.as_deref(), new) {
                t.insert(key, new).map_err(db)?;
                (RecordUpdate::Stored, old_cost)
            } else {
                (RecordUpdate::Rejected { current }, old_cost)
            }
        };
        if let RecordUpdate::Rejected { .. } = outcome {
            tx.abort().map_err(db)?;
            return Ok(outcome);
        }
        let new_cost = record_cost(new.len());
        let grow = new_cost.saturating_sub(old_cost);
        self.commit_charged(tx, grow, old_cost.saturating_sub(new_cost))?;
        Ok(outcome)
    }

    /// Updates many records in one write transaction (one fsync): for each key, in order,
    /// `f(i, current)` returns the new value, or `None` to leave the record as it is. The
    /// growth of the whole batch is charged at once; a batch that does not fit stores nothing.
    /// Returns how many records were written.
    pub fn record_update_many<F>(
        &self,
        table: RecordTable,
        keys: &[[u8; 32]],
        mut f: F,
    ) -> Result<usize>
    where
        F: FnMut(usize, Option<&[u8]>) -> Option<Vec<u8>>,
    {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate);
        let (written, grow, shrink) = {
            let mut t = tx.open_table(table.def()).map_err(db)?;
            let (mut written, mut grow, mut shrink) = (0, 0u64, 0u64);
            for (i, key) in keys.iter().enumerate() {
                let current = t.get(key).map_err(db)?.map(|v| v.value().to_vec());
                let Some(new) = f(i, current.as_deref()) else {
                    continue;
                };
                let old_cost = current.as_ref().map_or(0, |c| record_cost(c.len()));
                let new_cost = record_cost(new.len());
                grow += new_cost.saturating_sub(old_cost);
                shrink += old_cost.saturating_sub(new_cost);
                t.insert(key, new.as_slice()).map_err(db)?;
                written += 1;
            }
            (written, grow, shrink)
        };
        if written == 0 {
            tx.abort().map_err(db)?;
            return Ok(0);
        }
        self.commit_charged(tx, grow, shrink)?;
        Ok(written)
    }

    /// How many records `table` holds (0 if it was never written).
    pub fn record_count(&self, table: RecordTable) -> Result<u64> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(db(e)),
        };
        redb::ReadableTableMetadata::len(&t).map_err(db)
    }

    /// Calls `f` on the records with keys strictly after `after` (from the start if `None`), in
    /// key order, borrowing each value (nothing is copied), until `f` returns false or the
    /// table ends. One read transaction: keep `f` quick and bound the scan in `f`.
    pub fn record_scan(
        &self,
        table: RecordTable,
        after: Option<&[u8; 32]>,
        mut f: impl FnMut(&[u8; 32], &[u8]) -> bool,
    ) -> Result<()> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(db(e)),
        };
        let lower: Bound<&[u8; 32]> = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        for item in t
            .range::<&[u8; 32]>((lower, Bound::Unbounded))
            .map_err(db)?
        {
            let (k, v) = item.map_err(db)?;
            if !f(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }

    /// Records with keys strictly after `after` (from the start if `None`), in key order, at
    /// most `limit` of them.
    pub fn record_list(
        &self,
        table: RecordTable,
        after: Option<&[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<([u8; 32], Vec<u8>)>> {
        if limit == 0 {
            return Err(StoreError::InvalidArgument("record_list limit is 0".into()));
        }
        let tx = self.db.begin_read().map_err(db)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db(e)),
        };
        let lower: Bound<&[u8; 32]> = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t
            .range::<&[u8; 32]>((lower, Bound::Unbounded))
            .map_err(db)?
        {
            let (k, v) = item.map_err(db)?;
            out.push((*k.value(), v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
