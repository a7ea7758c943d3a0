//! Reverse references: one union-merged [`RefsEntry`] per parity, stored (with replication r)
//! at [`refs_position`] of the parity in the store's `REVERSE_REFS` table, and their
//! anti-entropy (the owner of a range compares it with its r-1 successors, entry digests per
//! position, and merges both ways).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use rand::seq::SliceRandom;
use tracing::debug;

use super::format::{refs_position, RefsEntry};
use super::{blocking, call, locate, EntRequest, EntResponse};
use crate::proto::{BlockKey, NodeAddr, Response, MAX_LIST_PAGE};
use crate::service::Service;
use crate::store::{in_interval, BlockStore, RecordTable, RecordUpdate, StoreError};

/// The table of reverse-reference entries, keyed by position.
pub const TABLE: RecordTable = RecordTable::REVERSE_REFS;

/// Merges `e` into the entry stored at its position (compare-and-set loop).
fn merge_one(store: &BlockStore, e: &RefsEntry) -> Result<(), StoreError> {
    let pos = refs_position(&e.block);
    for _ in 0..16 {
        let cur = store.record_get(TABLE, &pos.0)?;
        let mut merged = cur
            .as_deref()
            .and_then(RefsEntry::decode)
            .filter(|c| c.block == e.block)
            .unwrap_or_else(|| RefsEntry {
                block: e.block,
                ..RefsEntry::default()
            });
        if !merged.merge(e) && cur.is_some() {
            return Ok(());
        }
        let bytes = merged.encode();
        match store.record_update(TABLE, &pos.0, &bytes, |c, _| c == cur.as_deref())? {
            RecordUpdate::Stored => return Ok(()),
            RecordUpdate::Rejected { .. } => continue,
        }
    }
    Err(StoreError::InvalidArgument(
        "reverse-reference entry kept changing".into(),
    ))
}

/// Merges entries into this node's table.
pub async fn merge_local(svc: &Service, entries: Vec<RefsEntry>) -> Result<(), Response> {
    if entries.len() > MAX_LIST_PAGE as usize {
        return Err(Response::error(
            crate::proto::ErrorCode::BadRequest,
            "too many entries",
        ));
    }
    let store = svc.store.clone();
    blocking(move || {
        for e in &entries {
            merge_one(&store, e)?;
        }
        Ok(())
    })
    .await
}

/// The entries at `positions` held here.
pub async fn get_local(
    svc: &Service,
    positions: Vec<BlockKey>,
) -> Result<Vec<Option<RefsEntry>>, Response> {
    let store = svc.store.clone();
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
    svc: &Service,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<(BlockKey, [u8; 32])>, bool), Response> {
    let store = svc.store.clone();
    blocking(move || {
        let (a, b) = (BlockKey(from.0), BlockKey(to.0));
        let mut out = Vec::new();
        let mut cursor = after.map(|k| k.0);
        loop {
            let page = store.record_list(TABLE, cursor.as_ref(), 1024)?;
            let Some(last) = page.last().map(|(k, _)| *k) else {
                return Ok((out, false));
            };
            for (k, v) in page {
                let key = BlockKey(k);
                if from == to || in_interval(&a, &b, &key) {
                    out.push((key, *blake3::hash(&v).as_bytes()));
                    if out.len() >= MAX_LIST_PAGE as usize {
                        return Ok((out, true));
                    }
                }
            }
            cursor = Some(last);
        }
    })
    .await
}

/// Up to `count` random parity keys from this node's entries (those that name their own
/// codeword, so they are real parities).
pub async fn sample_local(svc: &Service, count: usize) -> Result<Vec<BlockKey>, Response> {
    let store = svc.store.clone();
    let all = blocking(move || all_local(&store)).await?;
    let mut keys: Vec<BlockKey> = all
        .iter()
        .filter_map(|(_, v)| RefsEntry::decode(v))
        .filter(|e| e.own.is_some())
        .map(|e| e.block)
        .collect();
    keys.shuffle(&mut rand::thread_rng());
    keys.truncate(count);
    Ok(keys)
}

/// Creation times of the newest `count` parities whose entries lie in this node's owned range.
pub async fn newest_created(svc: &Service, count: u64) -> Result<Vec<u64>, Response> {
    let Some(view) = svc.handle.view().await else {
        return Ok(Vec::new());
    };
    let (from, to) = view.ranges.owned;
    let store = svc.store.clone();
    let all = blocking(move || all_local(&store)).await?;
    let mut times: Vec<u64> = all
        .iter()
        .filter(|(pos, _)| from == to || in_interval(&BlockKey(from.0), &BlockKey(to.0), pos))
        .filter_map(|(_, v)| RefsEntry::decode(v))
        .filter(|e| e.own.is_some())
        .filter_map(|e| e.created_us)
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    times.truncate(usize::try_from(count).unwrap_or(usize::MAX));
    Ok(times)
}

/// Stores entries in the ring: each at the replica set of its position. Succeeds when every
/// entry reached at least one member (anti-entropy spreads it to the rest).
pub async fn store_ring(svc: &Service, entries: Vec<RefsEntry>) -> Result<(), String> {
    let located = futures::stream::iter(entries)
        .map(|e| async move {
            let set = locate(svc, &refs_position(&e.block)).await;
            (e, set)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut by_node: BTreeMap<NodeAddr, Vec<RefsEntry>> = BTreeMap::new();
    for (e, set) in located {
        for m in set? {
            by_node.entry(m).or_default().push(e.clone());
        }
    }
    let results = futures::stream::iter(by_node)
        .map(|(node, entries)| async move {
            let mut ok = true;
            for chunk in entries.chunks(1024) {
                let r = call(
                    svc,
                    &node,
                    EntRequest::StoreRefs {
                        entries: chunk.to_vec(),
                    },
                )
                .await;
                ok &= matches!(r, Ok(EntResponse::Ok));
            }
            (node, ok)
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    if failed > 0 && failed == results.len() {
        return Err("no member stored the reverse references".into());
    }
    Ok(())
}

/// The entry of `block` from the ring: the merge of what its replica set holds.
pub async fn fetch_ring(svc: &Service, block: &BlockKey) -> Option<RefsEntry> {
    let pos = refs_position(block);
    let set = locate(svc, &pos).await.ok()?;
    let answers = futures::future::join_all(set.iter().map(|m| {
        call(
            svc,
            m,
            EntRequest::FetchRefs {
                positions: vec![pos],
            },
        )
    }))
    .await;
    let mut out: Option<RefsEntry> = None;
    for a in answers {
        if let Ok(EntResponse::Refs { entries }) = a {
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
    out
}

/// One anti-entropy round over the owned range with each of the next r-1 successors.
/// Returns (entries pushed, entries pulled).
pub async fn anti_entropy(svc: &Service) -> (u64, u64) {
    let Some(view) = svc.handle.view().await else {
        return (0, 0);
    };
    if !view.member || view.predecessor.is_none() {
        return (0, 0);
    }
    let (from, to) = view.ranges.owned;
    let mut succs: Vec<NodeAddr> = Vec::new();
    for s in &view.successors {
        if succs.len() + 1 >= svc.replication {
            break;
        }
        if s.addr != view.me.addr && !succs.contains(&s.addr) {
            succs.push(s.addr.clone());
        }
    }
    let Ok((mine, _)) = list_all(svc, None, from, to).await else {
        return (0, 0);
    };
    let mut pushed = 0;
    let mut pulled = 0;
    for peer in succs {
        let Ok((theirs, _)) = list_all(svc, Some(&peer), from, to).await else {
            continue;
        };
        let differ: BTreeSet<BlockKey> = mine
            .iter()
            .filter(|(k, d)| theirs.get(k) != Some(d))
            .map(|(k, _)| *k)
            .chain(
                theirs
                    .iter()
                    .filter(|(k, d)| mine.get(k) != Some(d))
                    .map(|(k, _)| *k),
            )
            .collect();
        for chunk in differ.into_iter().collect::<Vec<_>>().chunks(512) {
            let positions = chunk.to_vec();
            let local = get_local(svc, positions.clone()).await.unwrap_or_default();
            let remote = match call(
                svc,
                &peer,
                EntRequest::FetchRefs {
                    positions: positions.clone(),
                },
            )
            .await
            {
                Ok(EntResponse::Refs { entries }) => entries,
                _ => continue,
            };
            let mut merged = Vec::new();
            for (l, r) in local.into_iter().zip(remote) {
                let (m, from_remote) = match (l, r) {
                    (Some(mut l), Some(r)) => {
                        let changed = l.merge(&r);
                        (l, changed)
                    }
                    (Some(l), None) => (l, false),
                    (None, Some(r)) => (r, true),
                    (None, None) => continue,
                };
                pulled += u64::from(from_remote);
                merged.push(m);
            }
            pushed += merged.len() as u64;
            if merge_local(svc, merged.clone()).await.is_err() {
                debug!("cannot merge reverse references locally");
            }
            let _ = call(svc, &peer, EntRequest::StoreRefs { entries: merged }).await;
        }
    }
    (pushed, pulled)
}

type Digests = BTreeMap<BlockKey, [u8; 32]>;

/// All (position, digest) in (from, to] on `peer` (or here when `None`).
async fn list_all(
    svc: &Service,
    peer: Option<&NodeAddr>,
    from: chord::Id,
    to: chord::Id,
) -> Result<(Digests, ()), String> {
    let mut out = BTreeMap::new();
    let mut after = None;
    loop {
        let (entries, more) = match peer {
            None => list_local(svc, from, to, after)
                .await
                .map_err(|e| format!("{e:?}"))?,
            Some(p) => match call(svc, p, EntRequest::ListRefs { from, to, after }).await? {
                EntResponse::RefDigests { entries, more } => (entries, more),
                other => return Err(format!("unexpected {other:?}")),
            },
        };
        after = entries.last().map(|(k, _)| *k);
        out.extend(entries);
        if !more || after.is_none() {
            return Ok((out, ()));
        }
    }
}

/// Every entry held here.
pub async fn all_entries(svc: &Service) -> Vec<RefsEntry> {
    let store = svc.store.clone();
    blocking(move || all_local(&store))
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, v)| RefsEntry::decode(v))
        .collect()
}
