//! Ring-range scans of the store's record tables (signed records, codeword and document
//! records, reverse references): pages of entries, pages of digests for anti-entropy, and the
//! visitor under both. Used by replication and the entangled layer alike.

use peerstore_proto::BlockKey;

use super::{in_interval, BlockStore, RecordTable, StoreError};

/// A record's key and the BLAKE3 digest of its bytes (what anti-entropy compares).
pub type RecordDigest = (BlockKey, [u8; 32]);

/// Entries of a record table, and whether more follow.
pub type TablePage = (Vec<(BlockKey, Vec<u8>)>, bool);

/// Entries of `table` with keys in (from, to] (everything when `from == to`), in key order,
/// after `after`, at most `limit`. Returns them and whether the limit cut the list short.
pub fn table_range(
    store: &BlockStore,
    table: RecordTable,
    from: BlockKey,
    to: BlockKey,
    after: Option<BlockKey>,
    limit: usize,
) -> Result<TablePage, StoreError> {
    let mut out = Vec::new();
    let more = table_visit(store, table, from, to, after, limit, |k, v| {
        out.push((k, v.to_vec()));
    })?;
    Ok((out, more))
}

/// Keys and BLAKE3 digests of the records of `table` in the ring range (from, to], after
/// `after`, at most a page ([`MAX_LIST_PAGE`] records); whether more remain. The values are
/// hashed in place, never held: what anti-entropy listings of every record table answer.
pub fn digest_page(
    store: &BlockStore,
    table: RecordTable,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<RecordDigest>, bool), StoreError> {
    let mut out = Vec::new();
    let more = table_visit(
        store,
        table,
        BlockKey(from.0),
        BlockKey(to.0),
        after,
        peerstore_proto::MAX_LIST_PAGE as usize,
        |k, v| out.push((k, *blake3::hash(v).as_bytes())),
    )?;
    Ok((out, more))
}

/// As [`table_range`], calling `f` on each record (borrowed) instead of collecting them, so
/// that a listing of keys or digests does not hold the values. Returns whether records in the
/// interval remain after the `limit` visited (continue after the last key `f` saw).
pub fn table_visit(
    store: &BlockStore,
    table: RecordTable,
    from: BlockKey,
    to: BlockKey,
    after: Option<BlockKey>,
    limit: usize,
    mut f: impl FnMut(BlockKey, &[u8]),
) -> Result<bool, StoreError> {
    let plain = from < to;
    // Keys in (from, to] when from < to; [0, to] and (from, MAX] otherwise.
    let mut cursor = match after {
        Some(a) if plain && a < from => Some(from.0),
        Some(a) => Some(a.0),
        None if plain => Some(from.0),
        None => None,
    };
    let mut n = 0usize;
    loop {
        let (mut more, mut jump) = (false, false);
        store.record_scan(table, cursor.as_ref(), |k, v| {
            let key = BlockKey(*k);
            if in_interval(&from, &to, &key) {
                if n >= limit {
                    more = true;
                    return false;
                }
                f(key, v);
                n += 1;
                true
            } else {
                // Past `to`, or (wrapping) in the gap (to, from]: jump over it.
                jump = !plain;
                false
            }
        })?;
        if more || !jump {
            return Ok(more);
        }
        cursor = Some(from.0);
    }
}
