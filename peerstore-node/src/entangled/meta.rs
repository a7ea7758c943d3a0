//! Metadata placement: codeword records, document records and reverse-reference entries live
//! on `m` nodes (`entanglement.metadata_replication`), the owner of their ring position and its
//! next `m - 1` distinct successors, so that they survive what the data survives (r neighbours
//! dying at once no longer takes the metadata of an arc with them).
//!
//! Records (codeword and document records) are immutable and content-addressed (key =
//! BLAKE3(bytes)); they are kept in the store's record table [`TABLE`], not as blocks, and
//! every copy read from another node is verified against its key before use. Their
//! anti-entropy ([`anti_entropy`]) is run by the owner of a range with its `m - 1` successors:
//! it lists the keys each of them holds in its range, pulls what it lacks from whoever has it
//! and pushes to each what that one lacks, in one round.

use std::collections::BTreeMap;

use futures::StreamExt;
use tracing::debug;

use super::format::{decode_record, DocRecord};
use super::layer::Entangled;
use crate::replication::HeldRange;
use crate::ring::{blocking, RingError};
use crate::store::{BlockStore, RecordTable, StoreError};
use crate::sync::{self, Digests, Pull};
use peerstore_proto::{BlockKey, ErrorCode, NodeAddr, MAX_BLOCK_SIZE};
use peerstore_proto::{EntRequest, EntResponse};

/// The table of codeword and document records (key = BLAKE3 of the value).
pub const TABLE: RecordTable = RecordTable::CODEWORDS;
/// Bytes of records per `StoreRecords` request and per `Records` answer.
const BATCH_BYTES: usize = 1 << 20;
/// Keys per `FetchRecords` request.
const FETCH_KEYS: usize = 256;

/// The `m` holders of the metadata at ring position `key`.
pub async fn locate_meta(ent: &Entangled, key: &BlockKey) -> Result<Vec<NodeAddr>, String> {
    Ok(ent.ring.locate(key, ent.metadata_replication()).await?)
}

/// This node's next `m - 1` distinct successors: the other holders of the metadata it owns.
pub async fn meta_successors(ent: &Entangled) -> Vec<NodeAddr> {
    ent.ring.successors(ent.metadata_replication() - 1).await
}

/// The key of a record if `bytes` is one (a codeword or a document record within the size
/// bound); `None` for anything else, which no node keeps in the record table.
#[must_use]
pub fn record_key(bytes: &[u8]) -> Option<BlockKey> {
    if bytes.len() > MAX_BLOCK_SIZE {
        return None;
    }
    if decode_record(bytes).is_none() {
        // A document record; a signed one only with a signature that verifies.
        let d = DocRecord::decode(bytes)?;
        if d.signed.is_some() && d.verified_writer().is_err() {
            return None;
        }
    }
    Some(BlockKey::of(bytes))
}

pub use crate::store::tables::{digest_page, table_range, table_visit, TablePage};

/// Keys of records (and reverse-reference positions) deleted on a writer's statement, with
/// when: the anti-entropy of a member that has not deleted its copy yet, or was away, cannot
/// bring them back. Eight bytes, microseconds since the Unix epoch.
pub const TOMBSTONES: RecordTable = RecordTable::new("rec_tombstones");

/// How long a tombstone keeps a deleted key out (a member away for longer brings its copies
/// back as unreferenced records; space only, and the next prune finds them).
pub const TOMBSTONE_TTL_US: u64 = 30 * 24 * 3600 * 1_000_000;

/// Tombstones [`bury`] looks at, from a random key on, to sweep the expired ones.
const SWEEP_PAGE: usize = 256;

/// Marks `keys` deleted (before the records themselves go, so no push in between lands), in
/// one write transaction, and sweeps a page of expired tombstones so that they do not pile up
/// (a tombstone is otherwise only dropped when its key comes back).
pub fn bury(store: &BlockStore, keys: &[BlockKey], now_us: u64) -> Result<(), StoreError> {
    let raw: Vec<[u8; 32]> = keys.iter().map(|k| k.0).collect();
    store.record_update_many(TOMBSTONES, &raw, |_, _| Some(now_us.to_le_bytes().to_vec()))?;
    let (mut expired, mut seen) = (Vec::new(), 0);
    let from: [u8; 32] = rand::random();
    // From a random key to the end, then (wrapping around) from the start up to it.
    for (after, below) in [(Some(&from), None), (None, Some(from))] {
        store.record_scan(TOMBSTONES, after, |k, v| {
            if below.is_some_and(|b| *k > b) || seen >= SWEEP_PAGE {
                return false;
            }
            if tombstone_age(v, now_us) >= TOMBSTONE_TTL_US {
                expired.push(*k);
            }
            seen += 1;
            true
        })?;
    }
    for k in expired {
        store.record_delete(TOMBSTONES, &k)?;
    }
    Ok(())
}

/// How long ago a tombstone's time was (its value: microseconds, u64 LE; a damaged value
/// counts as expired).
fn tombstone_age(v: &[u8], now_us: u64) -> u64 {
    let at = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    now_us.saturating_sub(at)
}

/// Whether `key` was deleted within [`TOMBSTONE_TTL_US`] (an expired tombstone goes).
pub fn buried(store: &BlockStore, key: &BlockKey, now_us: u64) -> Result<bool, StoreError> {
    let Some(v) = store.record_get(TOMBSTONES, &key.0)? else {
        return Ok(false);
    };
    if tombstone_age(&v, now_us) < TOMBSTONE_TTL_US {
        return Ok(true);
    }
    store.record_delete(TOMBSTONES, &key.0)?;
    Ok(false)
}

/// Stores valid records here; returns how many were new. Anything that is not a record is
/// refused (an error), so a peer cannot fill the table with other data; a record deleted here
/// on its writer's statement (a tombstone) is skipped.
pub fn put_local(store: &BlockStore, records: &[Vec<u8>]) -> Result<u64, StoreError> {
    let now = super::layer::now_us();
    let mut keys = Vec::with_capacity(records.len());
    let mut values = Vec::with_capacity(records.len());
    for bytes in records {
        let key = record_key(bytes).ok_or_else(|| {
            StoreError::InvalidArgument("not a codeword or document record".into())
        })?;
        if !buried(store, &key, now)? {
            keys.push(key.0);
            values.push(bytes);
        }
    }
    // One write transaction (one fsync) for the batch; records already held stay as they are.
    let new = store.record_update_many(TABLE, &keys, |i, cur| match cur {
        Some(_) => None,
        None => Some(values[i].clone()),
    })?;
    Ok(new as u64)
}

/// A record held here, verified against its key.
pub fn get_local(store: &BlockStore, key: &BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(store
        .record_get(TABLE, &key.0)?
        .filter(|v| BlockKey::of(v) == *key))
}

/// `FetchRecords`: the records at `keys` held here, in order; the answer stops early (is
/// shorter than `keys`) when it reaches [`BATCH_BYTES`].
pub fn fetch_local(
    store: &BlockStore,
    keys: &[BlockKey],
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for k in keys {
        let v = get_local(store, k)?;
        bytes += v.as_ref().map_or(0, Vec::len);
        out.push(v);
        if bytes >= BATCH_BYTES {
            break;
        }
    }
    Ok(out)
}

/// The keys of the records held here in (from, to], after `after`, one page.
pub fn list_local(
    store: &BlockStore,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<BlockKey>, bool), StoreError> {
    let mut keys = Vec::new();
    let more = table_visit(
        store,
        TABLE,
        BlockKey(from.0),
        BlockKey(to.0),
        after,
        peerstore_proto::MAX_LIST_PAGE as usize,
        |k, _| keys.push(k),
    )?;
    Ok((keys, more))
}

/// Answers the record requests of [`EntRequest`].
pub async fn serve(ent: &Entangled, r: EntRequest) -> Result<EntResponse, RingError> {
    let store = ent.store.clone();
    Ok(match r {
        EntRequest::StoreRecords { records } => {
            if records.len() > peerstore_proto::MAX_LIST_PAGE as usize {
                return Err(RingError::new(ErrorCode::BadRequest, "too many records"));
            }
            // Another member pushes: only records for keys in this node's metadata range are
            // kept (the rest are refused once the others are stored).
            let range = HeldRange::of(&ent.ring, ent.metadata_replication()).await;
            let of = records.len();
            // Hashing records is CPU work: on the blocking pool, with the store.
            let refused = blocking(move || {
                let (keep, refused): (Vec<Vec<u8>>, Vec<Vec<u8>>) = records
                    .into_iter()
                    .partition(|r| range.contains(&BlockKey::of(r)));
                put_local(&store, &keep).map(|_| refused.len())
            })
            .await?;
            if refused > 0 {
                return Err(range.refusal("codeword or document records", refused, of));
            }
            EntResponse::Ok
        }
        EntRequest::FetchRecords { keys } => {
            if keys.len() > peerstore_proto::MAX_LIST_PAGE as usize {
                return Err(RingError::new(ErrorCode::BadRequest, "too many keys"));
            }
            EntResponse::Records {
                records: blocking(move || fetch_local(&store, &keys)).await?,
            }
        }
        EntRequest::ListRecords { from, to, after } => {
            let (keys, more) = blocking(move || list_local(&store, from, to, after)).await?;
            EntResponse::RecordKeys { keys, more }
        }
        other => {
            return Err(RingError::new(
                ErrorCode::BadRequest,
                format!("not a record request: {other:?}"),
            ))
        }
    })
}

/// Items for the ring, grouped by holder: each item goes to every member of its set.
/// Returns the groups and, per item, the size of its set.
async fn group_by_holder<T: Clone>(
    ent: &Entangled,
    items: Vec<(BlockKey, T)>,
) -> Result<(BTreeMap<NodeAddr, Vec<(usize, T)>>, Vec<usize>), String> {
    let located = futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, (pos, item))| async move { (i, item, locate_meta(ent, &pos).await) })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut sizes = vec![0; located.len()];
    let mut by_node: BTreeMap<NodeAddr, Vec<(usize, T)>> = BTreeMap::new();
    for (i, item, set) in located {
        let set = set?;
        sizes[i] = set.len();
        for m in set {
            by_node.entry(m).or_default().push((i, item.clone()));
        }
    }
    Ok((by_node, sizes))
}

/// Sends items to their metadata sets (`request` makes one request of a batch) and checks
/// that each reached a majority of its set (anti-entropy brings it to the rest).
pub async fn push_ring<T, F>(
    ent: &Entangled,
    items: Vec<(BlockKey, T)>,
    batch: fn(&T) -> usize,
    request: F,
) -> Result<(), String>
where
    T: Clone + Send + Sync,
    F: Fn(Vec<T>) -> EntRequest + Sync,
{
    if items.is_empty() {
        return Ok(());
    }
    let (by_node, sizes) = group_by_holder(ent, items).await?;
    let request = &request;
    let acks = futures::stream::iter(by_node)
        .map(|(node, items)| async move {
            let mut acked = Vec::new();
            let mut chunk: Vec<(usize, T)> = Vec::new();
            let mut bytes = 0;
            let send = |chunk: Vec<(usize, T)>| {
                let node = node.clone();
                async move {
                    let ids: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
                    let req = request(chunk.into_iter().map(|(_, t)| t).collect());
                    match ent.ring.call_ent(&node, req).await {
                        Ok(EntResponse::Ok) => ids,
                        Ok(other) => {
                            debug!(?other, "metadata store answered oddly");
                            Vec::new()
                        }
                        Err(e) => {
                            debug!(error = %e, peer = %node.peer, "metadata store failed");
                            Vec::new()
                        }
                    }
                }
            };
            for it in items {
                bytes += batch(&it.1);
                chunk.push(it);
                if bytes >= BATCH_BYTES || chunk.len() >= 1024 {
                    acked.extend(send(std::mem::take(&mut chunk)).await);
                    bytes = 0;
                }
            }
            if !chunk.is_empty() {
                acked.extend(send(chunk).await);
            }
            acked
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut count = vec![0usize; sizes.len()];
    for i in acks.into_iter().flatten() {
        count[i] += 1;
    }
    let short = count
        .iter()
        .zip(&sizes)
        .filter(|(c, s)| **c < **s / 2 + 1)
        .count();
    if short > 0 {
        return Err(format!(
            "{short} metadata items reached fewer than a majority of their {} holders",
            ent.metadata_replication()
        ));
    }
    Ok(())
}

/// Stores records at their metadata sets (each on a majority of its `m` holders at least).
pub async fn store_ring(ent: &Entangled, records: Vec<Vec<u8>>) -> Result<(), String> {
    let items = records.into_iter().map(|r| (BlockKey::of(&r), r)).collect();
    push_ring(ent, items, Vec::len, |records| EntRequest::StoreRecords {
        records,
    })
    .await
}

/// A record from the ring: this node's table, then the first r holders of its set at once
/// (the key's replica set: one lookup, as for a block), then the other holders at once; the
/// first copy that hashes to the key wins.
pub async fn fetch_ring(ent: &Entangled, key: BlockKey) -> Option<Vec<u8>> {
    let store = ent.store.clone();
    if let Ok(Ok(Some(v))) = tokio::task::spawn_blocking(move || get_local(&store, &key)).await {
        return Some(v);
    }
    let me = ent.ring.handle.local.clone();
    let first: Vec<NodeAddr> = ent
        .ring
        .replica_set(&key)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| *a != me)
        .collect();
    if let Some(v) = fetch_from_any(ent, key, &first).await {
        return Some(v);
    }
    let rest: Vec<NodeAddr> = locate_meta(ent, &key)
        .await
        .ok()?
        .into_iter()
        .filter(|a| *a != me && !first.contains(a))
        .collect();
    fetch_from_any(ent, key, &rest).await
}

/// The first verified copy of a record any of `nodes` holds (all asked at once).
async fn fetch_from_any(ent: &Entangled, key: BlockKey, nodes: &[NodeAddr]) -> Option<Vec<u8>> {
    let mut asks: futures::stream::FuturesUnordered<_> = nodes
        .iter()
        .map(|m| {
            ent.ring
                .call_ent(m, EntRequest::FetchRecords { keys: vec![key] })
        })
        .collect();
    while let Some(r) = asks.next().await {
        if let Ok(EntResponse::Records { records }) = r {
            if let Some(Some(v)) = records.into_iter().next() {
                if BlockKey::of(&v) == key {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// One record anti-entropy round over the range this node owns with its `m - 1` successors
/// ([`sync::round`]). Returns (records pushed, records pulled).
pub async fn anti_entropy(ent: &Entangled) -> (u64, u64) {
    let Some((from, to)) = ent.ring.settled_owned_range().await else {
        return (0, 0);
    };
    let peers = meta_successors(ent).await;
    let r = sync::round(&Records(ent), &peers, from, to, false).await;
    (r.pushed, r.pulled)
}

/// Codeword and document records as a [`sync::Table`]: content addressed (the digest of a
/// key is the key), verified against their keys whenever they move.
struct Records<'a>(&'a Entangled);

impl sync::Table for Records<'_> {
    type Item = Vec<u8>;
    const PULL: Pull = Pull::AnyHolder;

    fn name(&self) -> &'static str {
        "entangled records"
    }

    async fn buckets(
        &self,
        _: Option<&NodeAddr>,
        _: chord::Id,
        _: chord::Id,
        _: u16,
    ) -> Result<Option<sync::Buckets>, RingError> {
        Ok(None)
    }

    async fn list(
        &self,
        peer: Option<&NodeAddr>,
        from: chord::Id,
        to: chord::Id,
    ) -> Result<Digests, RingError> {
        let mut out = Digests::new();
        let mut after = None;
        loop {
            let (keys, more) = match peer {
                None => {
                    let store = self.0.store.clone();
                    blocking(move || list_local(&store, from, to, after)).await?
                }
                Some(p) => match self
                    .0
                    .ring
                    .call_ent(p, EntRequest::ListRecords { from, to, after })
                    .await?
                {
                    EntResponse::RecordKeys { keys, more } => (keys, more),
                    other => return Err(RingError::unexpected(&other)),
                },
            };
            sync::check_page(after, keys.last().copied(), out.len() + keys.len())?;
            after = keys.last().copied();
            out.extend(keys.into_iter().map(|k| (k, k.0)));
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }

    async fn fetch(
        &self,
        peer: Option<&NodeAddr>,
        keys: Vec<BlockKey>,
    ) -> Vec<(BlockKey, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &keys[..];
        while !rest.is_empty() {
            let ask = &rest[..rest.len().min(FETCH_KEYS)];
            let got = match peer {
                None => {
                    let (store, ks) = (self.0.store.clone(), ask.to_vec());
                    blocking(move || fetch_local(&store, &ks))
                        .await
                        .unwrap_or_default()
                }
                Some(p) => match self
                    .0
                    .ring
                    .call_ent(p, EntRequest::FetchRecords { keys: ask.to_vec() })
                    .await
                {
                    Ok(EntResponse::Records { records }) => records,
                    _ => return out,
                },
            };
            if got.is_empty() {
                return out;
            }
            for (k, v) in ask.iter().zip(got.iter()) {
                if let Some(v) = v {
                    if record_key(v) == Some(*k) {
                        out.push((*k, v.clone()));
                    }
                }
            }
            rest = &rest[got.len().min(ask.len())..];
        }
        out
    }

    async fn store(&self, peer: Option<&NodeAddr>, items: Vec<(BlockKey, Vec<u8>)>) -> u64 {
        let records: Vec<Vec<u8>> = items.into_iter().map(|(_, r)| r).collect();
        match peer {
            None => {
                let store = self.0.store.clone();
                match blocking(move || put_local(&store, &records)).await {
                    Ok(new) => new,
                    Err(e) => {
                        debug!(error = %e, "cannot keep pulled records");
                        0
                    }
                }
            }
            Some(p) => {
                let mut sent = 0;
                // Requests stay under the frame bound: a batch of records per request.
                let mut batch = Vec::new();
                let mut bytes = 0;
                let mut chunks = Vec::new();
                for r in records {
                    bytes += r.len();
                    batch.push(r);
                    if bytes >= BATCH_BYTES {
                        chunks.push(std::mem::take(&mut batch));
                        bytes = 0;
                    }
                }
                if !batch.is_empty() {
                    chunks.push(batch);
                }
                for records in chunks {
                    let k = records.len() as u64;
                    if let Ok(EntResponse::Ok) = self
                        .0
                        .ring
                        .call_ent(p, EntRequest::StoreRecords { records })
                        .await
                    {
                        sent += k;
                    }
                }
                sent
            }
        }
    }

    fn digest(&self, key: &BlockKey, _: &Vec<u8>) -> [u8; 32] {
        key.0
    }
}

/// Every record held here (for the hand-off of a graceful leave).
pub async fn all_local(ent: &Entangled) -> Vec<Vec<u8>> {
    let store = ent.store.clone();
    blocking(move || {
        table_range(
            &store,
            TABLE,
            BlockKey::ZERO,
            BlockKey::ZERO,
            None,
            usize::MAX,
        )
    })
    .await
    .map(|(v, _)| v.into_iter().map(|(_, b)| b).collect())
    .unwrap_or_default()
}

/// Bytes and count of the records held here (all copies: for du's `other_bytes`).
pub fn local_figures(store: &BlockStore) -> Result<(u64, u64), StoreError> {
    let mut after: Option<[u8; 32]> = None;
    let (mut n, mut bytes) = (0, 0);
    loop {
        let page = store.record_list(TABLE, after.as_ref(), 4096)?;
        let Some(last) = page.last().map(|(k, _)| *k) else {
            return Ok((n, bytes));
        };
        n += page.len() as u64;
        bytes += page.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        after = Some(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn tombstones_keep_keys_out_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open(StoreConfig::new(dir.path(), 1 << 20)).unwrap();
        let now = 10 * TOMBSTONE_TTL_US;
        let k = BlockKey([9; 32]);
        bury(&store, &[k, BlockKey([8; 32])], now).unwrap();
        assert!(buried(&store, &k, now + 1).unwrap());
        // A later bury sweeps what has expired.
        bury(&store, &[], now + TOMBSTONE_TTL_US).unwrap();
        assert_eq!(store.record_count(TOMBSTONES).unwrap(), 0);
        assert!(!buried(&store, &k, now + TOMBSTONE_TTL_US).unwrap());
    }

    fn record(i: u8) -> Vec<u8> {
        let params = entangle::Params::new(1, 1, 2, 16);
        let data = [i; 7];
        let (rec, _) = entangle::encode(
            params,
            entangle::CodewordId([i; 32]),
            &data,
            &[(entangle::BlockKey::anchor(16, 0), &[][..])],
        )
        .unwrap();
        super::super::format::encode_record(&rec)
    }

    #[test]
    fn record_table_keeps_only_verified_records_and_lists_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = BlockStore::open(StoreConfig::new(dir.path(), 1 << 20)).unwrap();
        let recs: Vec<Vec<u8>> = (0..40).map(record).collect();
        assert_eq!(put_local(&store, &recs).unwrap(), 40);
        assert_eq!(put_local(&store, &recs[..3]).unwrap(), 0, "idempotent");
        assert!(put_local(&store, &[b"not a record".to_vec()]).is_err());
        let mut keys: Vec<BlockKey> = recs.iter().map(|r| BlockKey::of(r)).collect();
        keys.sort();
        for r in &recs {
            assert_eq!(
                get_local(&store, &BlockKey::of(r)).unwrap().as_ref(),
                Some(r)
            );
        }
        assert_eq!(get_local(&store, &BlockKey([7; 32])).unwrap(), None);
        // A value that does not hash to its key (a corrupt table) is never served.
        store.record_put(TABLE, &keys[0].0, &recs[0][1..]).unwrap();
        assert_eq!(get_local(&store, &keys[0]).unwrap(), None);
        store
            .record_put(TABLE, &keys[0].0, &recs_for(&recs, keys[0]))
            .unwrap();
        // Ranges: plain, wrapping, whole ring, with a cursor and a page limit.
        let all = |from: BlockKey, to: BlockKey| -> Vec<BlockKey> {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let (page, more) = table_range(&store, TABLE, from, to, after, 7).unwrap();
                after = page.last().map(|(k, _)| *k);
                out.extend(page.into_iter().map(|(k, _)| k));
                if !more || after.is_none() {
                    return out;
                }
            }
        };
        let (a, b) = (keys[10], keys[25]);
        assert_eq!(all(a, b), keys[11..=25].to_vec());
        let mut wrapped = keys[..=10].to_vec();
        wrapped.extend_from_slice(&keys[26..]);
        assert_eq!(all(b, a), wrapped);
        assert_eq!(all(a, a), keys);
        let (listed, more) = list_local(&store, chord::Id(a.0), chord::Id(b.0), None).unwrap();
        assert_eq!((listed, more), (keys[11..=25].to_vec(), false));
        let fetched = fetch_local(&store, &[keys[3], BlockKey([1; 32])]).unwrap();
        assert!(fetched[0].is_some() && fetched[1].is_none());
        assert_eq!(local_figures(&store).unwrap().0, 40);
    }

    fn recs_for(recs: &[Vec<u8>], k: BlockKey) -> Vec<u8> {
        recs.iter().find(|r| BlockKey::of(r) == k).unwrap().clone()
    }
}
