//! Reverse references: one union-merged [`RefsEntry`] per parity, stored on the `m` nodes of
//! the metadata set of [`refs_position`] of the parity ([`super::meta`]) in the store's
//! `REVERSE_REFS` table, and their anti-entropy (the owner of a range compares it with its
//! m-1 successors, entry digests per position, and merges both ways).

#[cfg(test)]
use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use tracing::debug;

use super::format::{refs_position, RefsEntry};
use super::layer::Entangled;
use super::meta::{locate_meta, meta_successors, push_ring, table_range};
use crate::ring::{blocking, RingError};
use crate::store::{BlockStore, RecordTable, StoreError};
use crate::sync::{self, Digests, Pull};
use peerstore_proto::{BlockKey, NodeAddr, MAX_LIST_PAGE};
use peerstore_proto::{EntRequest, EntResponse};

/// The table of reverse-reference entries, keyed by position.
pub const TABLE: RecordTable = RecordTable::REVERSE_REFS;

/// Merges entries into this node's table.
pub async fn merge_local(ent: &Entangled, entries: Vec<RefsEntry>) -> Result<(), RingError> {
    if entries.len() > MAX_LIST_PAGE as usize {
        return Err(RingError::new(
            peerstore_proto::ErrorCode::BadRequest,
            "too many entries",
        ));
    }
    let store = ent.store.clone();
    blocking(move || merge_many(&store, &entries)).await
}

/// Merges entries into this node's table in one write transaction (one fsync for the batch,
/// not one per entry); entries of buried positions are skipped.
fn merge_many(store: &BlockStore, entries: &[RefsEntry]) -> Result<(), StoreError> {
    let now = super::layer::now_us();
    let mut live: Vec<&RefsEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        if !super::meta::buried(store, &refs_position(&e.block), now)? {
            live.push(e);
        }
    }
    let positions: Vec<[u8; 32]> = live.iter().map(|e| refs_position(&e.block).0).collect();
    store.record_update_many(TABLE, &positions, |i, cur| {
        let e = live[i];
        let mut merged = cur
            .and_then(RefsEntry::decode)
            .filter(|c| c.block == e.block)
            .unwrap_or_else(|| RefsEntry {
                block: e.block,
                ..RefsEntry::default()
            });
        if !merged.merge(e) && cur.is_some() {
            return None;
        }
        Some(merged.encode())
    })?;
    Ok(())
}

/// The entries at `positions` held here.
pub async fn get_local(
    ent: &Entangled,
    positions: Vec<BlockKey>,
) -> Result<Vec<Option<RefsEntry>>, RingError> {
    let store = ent.store.clone();
    blocking(move || {
        positions
            .iter()
            .map(|p| {
                Ok(store
                    .record_get(TABLE, &p.0)?
                    .as_deref()
                    .and_then(RefsEntry::decode))
            })
            .collect()
    })
    .await
}

/// Every entry held here with its position, in key order (the table is small: one entry per
/// parity of the keys this node replicates).
fn all_local(store: &BlockStore) -> Result<Vec<(BlockKey, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    let mut after: Option<[u8; 32]> = None;
    loop {
        let page = store.record_list(TABLE, after.as_ref(), 4096)?;
        let Some(last) = page.last().map(|(k, _)| *k) else {
            return Ok(out);
        };
        out.extend(page.into_iter().map(|(k, v)| (BlockKey(k), v)));
        after = Some(last);
    }
}

/// Positions and digests of entries in (from, to], at most a page, after `after`.
pub async fn list_local(
    ent: &Entangled,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<(BlockKey, [u8; 32])>, bool), RingError> {
    let store = ent.store.clone();
    blocking(move || super::meta::digest_page(&store, TABLE, from, to, after)).await
}

/// Entries per page of the scans that serve requests (an entry is at most 128 KiB, so a page
/// stays a few MiB).
const SCAN_PAGE: usize = 64;
/// [`sample_local`] reads at most this many consecutive positions (from a random start): a
/// request's work is bounded however large the table grows. Positions are hashes, so a run of
/// consecutive ones is itself a uniform sample.
const SAMPLE_WINDOW: usize = 16_384;
/// Most creation times [`newest_created`] keeps and returns.
const MAX_NEWEST: usize = 65_536;

/// Calls `f` on the entries at positions after `start` in ring order (wrapping past the end
/// back to `start`), reading the table page by page, until `f` returns false or every entry
/// was seen.
fn scan_from(
    store: &BlockStore,
    start: [u8; 32],
    mut f: impl FnMut(BlockKey, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let mut after = Some(start);
    let mut wrapped = false;
    loop {
        let page = store.record_list(TABLE, after.as_ref(), SCAN_PAGE)?;
        let Some(last) = page.last().map(|(k, _)| *k) else {
            if wrapped {
                return Ok(());
            }
            wrapped = true;
            after = None;
            continue;
        };
        for (k, v) in page {
            if (wrapped && k > start) || !f(BlockKey(k), &v) {
                return Ok(());
            }
        }
        after = Some(last);
    }
}

/// Up to `count` parity keys from this node's entries (those that name their own codeword, so
/// they are real parities), drawn uniformly from a window of at most [`SAMPLE_WINDOW`]
/// positions starting at a random one (reservoir sampling: memory is `count` keys).
fn sample_keys(store: &BlockStore, count: usize) -> Result<Vec<BlockKey>, StoreError> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut keys: Vec<BlockKey> = Vec::new();
    if count == 0 {
        return Ok(keys);
    }
    let (mut seen, mut read) = (0usize, 0usize);
    scan_from(store, rng.gen(), |_, v| {
        read += 1;
        if let Some(e) = RefsEntry::decode(v).filter(|e| e.own.is_some()) {
            seen += 1;
            if keys.len() < count {
                keys.push(e.block);
            } else {
                let j = rng.gen_range(0..seen);
                if j < count {
                    keys[j] = e.block;
                }
            }
        }
        read < SAMPLE_WINDOW
    })?;
    keys.shuffle(&mut rng);
    Ok(keys)
}

/// Up to `count` random parity keys from this node's entries (see [`sample_keys`]).
pub async fn sample_local(ent: &Entangled, count: usize) -> Result<Vec<BlockKey>, RingError> {
    let store = ent.store.clone();
    blocking(move || sample_keys(&store, count)).await
}

/// Creation times of the newest `count` (at most [`MAX_NEWEST`]) parities whose entries lie in
/// `(from, to]` (`from == to`: everywhere), newest first; reads the range page by page and
/// keeps only the `count` newest in memory.
fn newest_in(
    store: &BlockStore,
    from: BlockKey,
    to: BlockKey,
    count: u64,
) -> Result<Vec<u64>, StoreError> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let keep = usize::try_from(count).unwrap_or(usize::MAX).min(MAX_NEWEST);
    let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    if keep == 0 {
        return Ok(Vec::new());
    }
    let mut after = None;
    loop {
        let (page, more) = table_range(store, TABLE, from, to, after, SCAN_PAGE)?;
        after = page.last().map(|(k, _)| *k);
        for (_, v) in page {
            let Some(t) = RefsEntry::decode(&v)
                .filter(|e| e.own.is_some())
                .and_then(|e| e.created_us)
            else {
                continue;
            };
            if heap.len() < keep {
                heap.push(Reverse(t));
            } else if heap.peek().is_some_and(|Reverse(min)| t > *min) {
                heap.pop();
                heap.push(Reverse(t));
            }
        }
        if !more || after.is_none() {
            break;
        }
    }
    let mut times: Vec<u64> = heap.into_iter().map(|Reverse(t)| t).collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    Ok(times)
}

/// Creation times of the newest `count` parities whose entries lie in this node's owned range.
pub async fn newest_created(ent: &Entangled, count: u64) -> Result<Vec<u64>, RingError> {
    let Some(view) = ent.ring.handle.view().await else {
        return Ok(Vec::new());
    };
    let (from, to) = view.ranges.owned;
    let store = ent.store.clone();
    blocking(move || newest_in(&store, BlockKey(from.0), BlockKey(to.0), count)).await
}

/// Stores entries in the ring: each at the metadata set of its position. Succeeds when every
/// entry reached a majority of its set (anti-entropy spreads it to the rest).
pub async fn store_ring(ent: &Entangled, entries: Vec<RefsEntry>) -> Result<(), String> {
    let items = entries
        .into_iter()
        .map(|e| (refs_position(&e.block), e))
        .collect();
    push_ring(
        ent,
        items,
        |e| 80 + 32 * e.referrers.len(),
        |entries| EntRequest::StoreRefs { entries },
    )
    .await
}

/// The entry of `block` from the ring: the merge of what the first r holders of its metadata
/// set (the position's replica set) hold, or, if none of them has it, of what the others hold.
/// Anti-entropy keeps the holders' versions equal, so r answers are enough.
pub async fn fetch_ring(ent: &Entangled, block: &BlockKey) -> Option<RefsEntry> {
    let pos = refs_position(block);
    let first = ent.ring.replica_set(&pos).await.unwrap_or_default();
    if let Some(e) = fetch_from(ent, block, &first).await {
        return Some(e);
    }
    let rest: Vec<NodeAddr> = locate_meta(ent, &pos)
        .await
        .ok()?
        .into_iter()
        .filter(|a| !first.contains(a))
        .collect();
    fetch_from(ent, block, &rest).await
}

/// For decisions that delete: the merge of the entries of `block` from its metadata holders,
/// and how many of them answered. A deletion may trust the merge only when at least two
/// holders answered (or every holder asked, when the ring has fewer): one lying holder alone
/// could otherwise hide a referrer ([`super::delete`]).
pub async fn fetch_quorum(ent: &Entangled, block: &BlockKey) -> (usize, usize, Option<RefsEntry>) {
    let pos = refs_position(block);
    let mut holders = ent.ring.replica_set(&pos).await.unwrap_or_default();
    if let Ok(more) = locate_meta(ent, &pos).await {
        for a in more {
            if !holders.contains(&a) {
                holders.push(a);
            }
        }
    }
    let (answered, merged) = fetch_counted(ent, block, &holders).await;
    (holders.len(), answered, merged)
}

/// The merge of the entries of `block` that `nodes` hold.
async fn fetch_from(ent: &Entangled, block: &BlockKey, nodes: &[NodeAddr]) -> Option<RefsEntry> {
    fetch_counted(ent, block, nodes).await.1
}

/// [`fetch_from`], with the number of nodes that answered (with an entry or without).
async fn fetch_counted(
    ent: &Entangled,
    block: &BlockKey,
    nodes: &[NodeAddr],
) -> (usize, Option<RefsEntry>) {
    let pos = refs_position(block);
    let answers = futures::future::join_all(nodes.iter().map(|m| {
        ent.ring.call_ent(
            m,
            EntRequest::FetchRefs {
                positions: vec![pos],
            },
        )
    }))
    .await;
    let mut out: Option<RefsEntry> = None;
    let mut answered = 0;
    for a in answers {
        if let Ok(EntResponse::Refs { entries }) = a {
            answered += 1;
            for e in entries.into_iter().flatten() {
                if e.block != *block {
                    continue;
                }
                match &mut out {
                    Some(o) => {
                        o.merge(&e);
                    }
                    None => out = Some(e),
                }
            }
        }
    }
    (answered, out)
}

/// One anti-entropy round over the owned range with the next m-1 successors
/// ([`sync::round`]): every differing entry is fetched from the peers that hold another
/// version, merged here, and the merge is sent to every peer whose version differs from it.
/// Returns (entries pushed, entries pulled).
pub async fn anti_entropy(ent: &Entangled) -> (u64, u64) {
    let Some((from, to)) = ent.ring.settled_owned_range().await else {
        return (0, 0);
    };
    let peers = meta_successors(ent).await;
    let r = sync::round(&Refs(ent), &peers, from, to, false).await;
    (r.pushed, r.pulled)
}

/// Reverse-reference entries as a [`sync::Table`]: union-merged, so every differing version
/// is pulled and merged here, and the merge pushed.
struct Refs<'a>(&'a Entangled);

impl sync::Table for Refs<'_> {
    type Item = RefsEntry;
    const PULL: Pull = Pull::EveryVersion;

    fn name(&self) -> &'static str {
        "reverse references"
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
            let (entries, more) = match peer {
                None => list_local(self.0, from, to, after).await?,
                Some(p) => match self
                    .0
                    .ring
                    .call_ent(p, EntRequest::ListRefs { from, to, after })
                    .await?
                {
                    EntResponse::RefDigests { entries, more } => (entries, more),
                    other => return Err(RingError::unexpected(&other)),
                },
            };
            sync::check_page(
                after,
                entries.last().map(|(k, _)| *k),
                out.len() + entries.len(),
            )?;
            after = entries.last().map(|(k, _)| *k);
            out.extend(entries);
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }

    async fn fetch(
        &self,
        peer: Option<&NodeAddr>,
        keys: Vec<BlockKey>,
    ) -> Vec<(BlockKey, RefsEntry)> {
        let entries = match peer {
            None => get_local(self.0, keys.clone()).await.unwrap_or_default(),
            Some(p) => match self
                .0
                .ring
                .call_ent(
                    p,
                    EntRequest::FetchRefs {
                        positions: keys.clone(),
                    },
                )
                .await
            {
                Ok(EntResponse::Refs { entries }) => entries,
                _ => Vec::new(),
            },
        };
        keys.into_iter()
            .zip(entries)
            .filter_map(|(p, e)| e.filter(|e| refs_position(&e.block) == p).map(|e| (p, e)))
            .collect()
    }

    async fn store(&self, peer: Option<&NodeAddr>, items: Vec<(BlockKey, RefsEntry)>) -> u64 {
        let n = items.len() as u64;
        let entries: Vec<RefsEntry> = items.into_iter().map(|(_, e)| e).collect();
        let ok = match peer {
            None => merge_local(self.0, entries).await.is_ok(),
            Some(p) => matches!(
                self.0
                    .ring
                    .call_ent(p, EntRequest::StoreRefs { entries })
                    .await,
                Ok(EntResponse::Ok)
            ),
        };
        if ok {
            n
        } else {
            debug!("reverse references not merged");
            0
        }
    }

    fn digest(&self, _: &BlockKey, item: &RefsEntry) -> [u8; 32] {
        *blake3::hash(&item.encode()).as_bytes()
    }
}

/// Every entry held here.
pub async fn all_entries(ent: &Entangled) -> Vec<RefsEntry> {
    let store = ent.store.clone();
    blocking(move || all_local(&store))
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, v)| RefsEntry::decode(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(b: u8, referrers: &[u8]) -> RefsEntry {
        RefsEntry {
            block: BlockKey([b; 32]),
            own: Some(BlockKey([b ^ 0x80; 32])),
            created_us: Some(u64::from(b)),
            referrers: referrers.iter().map(|r| BlockKey([*r; 32])).collect(),
        }
    }

    fn store_with(n: u16) -> (tempfile::TempDir, BlockStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(crate::store::StoreConfig::new(dir.path(), 1 << 30))
            .unwrap()
            .0;
        for i in 0..n {
            let mut block = [0u8; 32];
            block[..2].copy_from_slice(&i.to_be_bytes());
            let e = RefsEntry {
                block: BlockKey(block),
                own: Some(BlockKey([1; 32])),
                created_us: Some(u64::from(i)),
                referrers: Default::default(),
            };
            merge_many(&store, std::slice::from_ref(&e)).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn sampling_and_newest_are_paged_and_bounded() {
        let (_dir, store) = store_with(300);
        let keys = sample_keys(&store, 50).unwrap();
        assert_eq!(keys.len(), 50);
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), 50);
        assert_eq!(sample_keys(&store, 1000).unwrap().len(), 300);
        let all = newest_in(&store, BlockKey::ZERO, BlockKey::ZERO, 10).unwrap();
        assert_eq!(all, (290..300).rev().collect::<Vec<u64>>());
        assert_eq!(
            newest_in(&store, BlockKey::ZERO, BlockKey::ZERO, u64::MAX)
                .unwrap()
                .len(),
            300
        );
        // A sub-range holds only the entries whose positions fall in it.
        let half = BlockKey([0x80; 32]);
        let a = newest_in(&store, BlockKey::ZERO, half, 1000).unwrap();
        let b = newest_in(&store, half, BlockKey::ZERO, 1000).unwrap();
        assert_eq!(a.len() + b.len(), 300);
        // Every position is seen exactly once by a scan from any start.
        for start in [[0u8; 32], [0x80; 32], [0xff; 32]] {
            let mut n = 0;
            scan_from(&store, start, |_, _| {
                n += 1;
                true
            })
            .unwrap();
            assert_eq!(n, 300);
        }
    }

    fn digests(entries: &[RefsEntry]) -> Digests {
        entries
            .iter()
            .map(|e| {
                (
                    refs_position(&e.block),
                    *blake3::hash(&e.encode()).as_bytes(),
                )
            })
            .collect()
    }

    /// Simulated holders: the owner (0) plans with the digests of its m - 1 peers, fetches the
    /// differing versions, merges, and sends the merge to every peer that differs.
    #[test]
    fn an_entry_missing_from_m_minus_1_holders_comes_back_merged() {
        let m = 10;
        let mut holders: Vec<BTreeMap<BlockKey, RefsEntry>> = vec![BTreeMap::new(); m];
        // Entry 1 survives only on the last holder; entry 2 has two versions on two peers
        // (different referrers), none on the owner; entry 3 only on the owner.
        for (h, e) in [
            (9, entry(1, &[5])),
            (3, entry(2, &[6])),
            (7, entry(2, &[7])),
        ] {
            holders[h].insert(refs_position(&e.block), e);
        }
        let e3 = entry(3, &[]);
        holders[0].insert(refs_position(&e3.block), e3);
        let d =
            |h: &BTreeMap<BlockKey, RefsEntry>| digests(&h.values().cloned().collect::<Vec<_>>());
        let mine = d(&holders[0]);
        let theirs: Vec<Option<Digests>> = (1..m).map(|i| Some(d(&holders[i]))).collect();
        let plan = sync::plan(&mine, &theirs, Pull::EveryVersion, false);
        assert_eq!(plan.pull.len(), 2, "entries 1 and 2 are pulled");
        // Pull: every differing version, merged at the owner.
        for (pos, peers) in &plan.pull {
            for i in peers {
                let e = holders[i + 1][pos].clone();
                holders[0]
                    .entry(*pos)
                    .and_modify(|m| {
                        m.merge(&e);
                    })
                    .or_insert(e);
            }
        }
        // Push: the owner's (merged) version to every peer that lacks it or differs.
        let merged = holders[0].clone();
        for (i, keys) in plan.push.iter().enumerate() {
            for p in keys {
                let e = &merged[p];
                holders[i + 1]
                    .entry(*p)
                    .and_modify(|x| {
                        x.merge(e);
                    })
                    .or_insert_with(|| e.clone());
            }
        }
        let want = d(&holders[0]);
        assert_eq!(want.len(), 3);
        for h in &holders {
            assert_eq!(d(h), want);
        }
        let two = &holders[5][&refs_position(&BlockKey([2; 32]))];
        assert_eq!(two.referrers.len(), 2, "both versions merged");
        let next: Vec<Option<Digests>> = (1..m).map(|i| Some(d(&holders[i]))).collect();
        let again = sync::plan(&want, &next, Pull::EveryVersion, false);
        assert!(
            again.pull.is_empty() && again.push.iter().all(Vec::is_empty),
            "converged"
        );
    }
}
