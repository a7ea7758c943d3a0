//! Small typed key-value tables in the index: `[u8; 32] -> bytes`, each a named redb table.
//!
//! The daemon keeps its mutable records here (signed user roots today; codeword records and
//! reverse references later). A new table is one more [`RecordTable`] constant: tables are
//! created on first write and read as empty before that.

use std::ops::Bound;

use redb::{Durability, ReadableTable, TableDefinition, TableError};

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
pub(crate) struct Tables<'a>(pub(crate) &'a redb::Database);

impl Tables<'_> {
    /// The record stored under `key`, if any.
    pub fn record_get(&self, table: RecordTable, key: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let tx = self.0.begin_read().map_err(db)?;
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
        let mut tx = self.0.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate);
        let existed = {
            let mut t = tx.open_table(table.def()).map_err(db)?;
            let old = t.remove(key).map_err(db)?;
            old.is_some()
        };
        tx.commit().map_err(db)?;
        Ok(existed)
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
        let mut tx = self.0.begin_write().map_err(db)?;
        tx.set_durability(Durability::Immediate);
        let outcome = {
            let mut t = tx.open_table(table.def()).map_err(db)?;
            let current = t.get(key).map_err(db)?.map(|v| v.value().to_vec());
            if accept(current.as_deref(), new) {
                t.insert(key, new).map_err(db)?;
                RecordUpdate::Stored
            } else {
                RecordUpdate::Rejected { current }
            }
        };
        match outcome {
            RecordUpdate::Stored => tx.commit().map_err(db)?,
            RecordUpdate::Rejected { .. } => tx.abort().map_err(db)?,
        }
        Ok(outcome)
    }

    /// How many records `table` holds (0 if it was never written).
    pub fn record_count(&self, table: RecordTable) -> Result<u64> {
        let tx = self.0.begin_read().map_err(db)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(db(e)),
        };
        redb::ReadableTableMetadata::len(&t).map_err(db)
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
        let tx = self.0.begin_read().map_err(db)?;
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
