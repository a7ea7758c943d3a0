//! Replica maintenance: anti-entropy between neighbours, clean-up of keys a node no longer needs,
//! and the hand-off of a leaving node.
//!
//! Every period (and soon after the Chord core reports that our key ranges changed), a node
//! compares the keys of the range it OWNS, (pred, self], with each of the next r-1 successors,
//! bucket by bucket (count + digest per bucket, so equal ranges cost one small message), lists
//! keys only in buckets that differ, and then pushes what a successor lacks and pulls what it
//! lacks itself. This covers every way a replica set can change:
//! - a node died: its successor now owns its range and already holds it as a replica; as owner it
//!   pushes the range to its new r-1 successors;
//! - a node joined: as the new owner it pulls its range from its successors, who held it;
//! - a block was lost or quarantined on one node: the owner's digest differs, it is re-sent.
//!
//! A separate, slower loop drops keys outside the range a node replicates: only keys that were
//! outside it at two consecutive clean-ups (so a ring still settling does not cause churn), and
//! only once every member of the key's current replica set confirms it holds the key.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, info, warn};

use peerstore_proto::{BlockKey, MemberRequest, MemberResponse, NodeAddr, MAX_LIST_PAGE};

use crate::replication::Replication;
use crate::store::Role;

/// Digest buckets per range comparison.
const BUCKETS: u16 = 64;
/// Most foreign keys handed off and dropped per round (each costs a lookup).
const CLEANUP_BATCH: usize = 512;
/// Blocks moved at once by one sync.
const PARALLEL: usize = 16;

/// What one round did, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundReport {
    pub pushed: u64,
    pub pulled: u64,
    pub dropped: u64,
    pub errors: u64,
}

/// Runs maintenance forever: replication rounds every `period` and soon after a range change,
/// and clean-up rounds every `period` in their own task so they never delay re-replication.
pub async fn run(service: Arc<Replication>, period: Duration) {
    let cleaner = tokio::spawn(cleanup_loop(service.clone(), period));
    let mut changes = service.ring.handle.ranges_changed.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            r = changes.changed() => {
                if r.is_err() { break; }
                // Let the ring settle a little before moving data.
                tokio::time::sleep(period / 4).await;
            }
        }
        let report = round(&service).await;
        log_round("replication", &report);
    }
    cleaner.abort();
}

fn log_round(what: &str, report: &RoundReport) {
    if report.pushed + report.pulled + report.dropped > 0 || report.errors > 0 {
        info!(
            pushed = report.pushed,
            pulled = report.pulled,
            dropped = report.dropped,
            errors = report.errors,
            "{what} round"
        );
    }
}

async fn cleanup_loop(service: Arc<Replication>, period: Duration) {
    let mut candidates = BTreeSet::new();
    loop {
        tokio::time::sleep(period).await;
        let mut report = RoundReport::default();
        let Some(view) = service.ring.view().await else {
            return;
        };
        if view.member && view.predecessor.is_some() {
            candidates = cleanup(&service, view.ranges.replicated, &candidates, &mut report).await;
        }
        log_round("clean-up", &report);
    }
}

/// One replication round: the owned range against each of the next r-1 successors, all at once.
pub async fn round(service: &Replication) -> RoundReport {
    let Some(view) = service.ring.view().await else {
        return RoundReport::default();
    };
    if !view.member || view.predecessor.is_none() {
        return RoundReport::default();
    }
    let (from, to) = view.ranges.owned;
    let succs = distinct_successors(
        &view.successors,
        &view.me.addr,
        service.ring.replication - 1,
    );
    let reports = futures::future::join_all(succs.iter().map(|succ| async move {
        let mut report = RoundReport::default();
        sync_range(service, succ, from, to, true, &mut report).await;
        sync_records(service, succ, from, to, &mut report).await;
        report
    }))
    .await;
    reports
        .into_iter()
        .fold(RoundReport::default(), |a, b| a.merge(b))
}

impl RoundReport {
    fn merge(self, o: RoundReport) -> RoundReport {
        RoundReport {
            pushed: self.pushed + o.pushed,
            pulled: self.pulled + o.pulled,
            dropped: self.dropped + o.dropped,
            errors: self.errors + o.errors,
        }
    }
}

/// Before a graceful leave: make sure every key this node holds is on the successors that will
/// replace it in the replica sets (the next r successors cover every set this node is part of).
pub async fn hand_off(service: &Replication) -> RoundReport {
    let mut report = RoundReport::default();
    let Some(view) = service.ring.view().await else {
        return report;
    };
    let me = view.me.id;
    for succ in distinct_successors(&view.successors, &view.me.addr, service.ring.replication) {
        // The whole ring minus nothing: every key we hold.
        sync_range(service, &succ, me, me, false, &mut report).await;
        sync_records(service, &succ, me, me, &mut report).await;
    }
    report
}

fn distinct_successors(succs: &[chord::Peer<NodeAddr>], me: &NodeAddr, n: usize) -> Vec<NodeAddr> {
    let mut out: Vec<NodeAddr> = Vec::new();
    for s in succs {
        if out.len() >= n {
            break;
        }
        if s.addr != *me && !out.contains(&s.addr) {
            out.push(s.addr.clone());
        }
    }
    out
}

/// Brings `peer` and this node to the same set of keys in (from, to]. `pull` also fetches keys
/// the peer has and we lack.
async fn sync_range(
    service: &Replication,
    peer: &NodeAddr,
    from: chord::Id,
    to: chord::Id,
    pull: bool,
    report: &mut RoundReport,
) {
    let remote = match service
        .ring
        .call(
            peer,
            MemberRequest::RangeDigest {
                from,
                to,
                buckets: BUCKETS,
            },
        )
        .await
    {
        Ok(MemberResponse::Digests { buckets }) => buckets,
        other => {
            debug!(peer = %peer.peer, ?other, "range digest failed");
            report.errors += 1;
            return;
        }
    };
    let store = service.store.clone();
    let local = match tokio::task::spawn_blocking(move || {
        store.bucket_digests(&BlockKey(from.0), &BlockKey(to.0), u32::from(BUCKETS))
    })
    .await
    {
        Ok(Ok(d)) => d,
        _ => {
            report.errors += 1;
            return;
        }
    };
    if remote.len() != local.len() {
        report.errors += 1;
        return;
    }
    for (l, r) in local.iter().zip(remote.iter()) {
        if l.digest.count == r.0 && l.digest.digest == r.1 {
            continue;
        }
        let (bf, bt) = (
            chord::Id::from_bytes(l.start.0),
            chord::Id::from_bytes(l.end.0),
        );
        let Some(mine) = list_local(service, bf, bt).await else {
            report.errors += 1;
            continue;
        };
        let Some(theirs) = list_remote(service, peer, bf, bt).await else {
            report.errors += 1;
            continue;
        };
        let to_push: Vec<BlockKey> = mine.difference(&theirs).copied().collect();
        let pushed = futures::stream::iter(to_push)
            .map(|key| async move { push_block(service, peer, key).await })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<bool>>()
            .await;
        for ok in pushed {
            if ok {
                report.pushed += 1;
            } else {
                report.errors += 1;
            }
        }
        if pull {
            let to_pull: Vec<BlockKey> = theirs.difference(&mine).copied().collect();
            let pulled = futures::stream::iter(to_pull)
                .map(|key| async move { pull_block(service, peer, key).await })
                .buffer_unordered(PARALLEL)
                .collect::<Vec<bool>>()
                .await;
            for ok in pulled {
                if ok {
                    report.pulled += 1;
                } else {
                    report.errors += 1;
                }
            }
        }
    }
}

/// Sends one local block to `peer`. False if it could not be read or stored there.
async fn push_block(service: &Replication, peer: &NodeAddr, key: BlockKey) -> bool {
    let store = service.store.clone();
    let Ok(Ok(Some(data))) = tokio::task::spawn_blocking(move || store.get(&key)).await else {
        return false;
    };
    match service
        .ring
        .call(peer, MemberRequest::StoreLocal { key, data })
        .await
    {
        Ok(MemberResponse::Ok) => true,
        other => {
            debug!(%key, peer = %peer.peer, ?other, "push failed");
            false
        }
    }
}

/// Fetches one block from `peer` and stores it locally, after checking its hash.
async fn pull_block(service: &Replication, peer: &NodeAddr, key: BlockKey) -> bool {
    match service
        .ring
        .call(peer, MemberRequest::FetchLocal { key })
        .await
    {
        Ok(MemberResponse::Block { data }) if BlockKey::of(&data) == key => {
            let store = service.store.clone();
            match tokio::task::spawn_blocking(move || store.put(key, &data, Role::Owner)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    warn!(%key, error = %e, "cannot store pulled block");
                    false
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

async fn list_local(
    service: &Replication,
    from: chord::Id,
    to: chord::Id,
) -> Option<BTreeSet<BlockKey>> {
    let store = service.store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .list_range(&BlockKey(from.0), &BlockKey(to.0), None)
            .ok()
            .map(|page| page.keys.into_iter().collect())
    })
    .await
    .ok()
    .flatten()
}
async fn list_remote(
    service: &Replication,
    peer: &NodeAddr,
    from: chord::Id,
    to: chord::Id,
) -> Option<BTreeSet<BlockKey>> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        match service
            .ring
            .call(
                peer,
                MemberRequest::ListRange {
                    from,
                    to,
                    after,
                    limit: MAX_LIST_PAGE,
                },
            )
            .await
        {
            Ok(MemberResponse::Keys { keys, more }) => {
                after = keys.last().copied();
                out.extend(keys);
                if !more || after.is_none() {
                    return Some(out);
                }
            }
            _ => return None,
        }
    }
}

/// Brings the signed records (users' roots) in (from, to] to the newest version on both sides.
/// Each side accepts a record only if it is validly signed and newer than what it has, so
/// pushing both ways converges on the newest.
async fn sync_records(
    service: &Replication,
    peer: &NodeAddr,
    from: chord::Id,
    to: chord::Id,
    report: &mut RoundReport,
) {
    let store = service.store.clone();
    let local = match tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = crate::replication::list_record_digests(&store, from, to, after)?;
            after = page.last().map(|(k, _)| *k);
            all.extend(page);
            if !more {
                return Ok::<_, crate::store::StoreError>(all);
            }
        }
    })
    .await
    {
        Ok(Ok(v)) => v.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        _ => {
            report.errors += 1;
            return;
        }
    };
    let mut remote = std::collections::BTreeMap::new();
    let mut after = None;
    loop {
        match service
            .ring
            .call(peer, MemberRequest::ListRecords { from, to, after })
            .await
        {
            Ok(MemberResponse::RecordDigests { records, more }) => {
                after = records.last().map(|(k, _)| *k);
                remote.extend(records);
                if !more || after.is_none() {
                    break;
                }
            }
            _ => {
                report.errors += 1;
                return;
            }
        }
    }
    let keys: BTreeSet<BlockKey> = local.keys().chain(remote.keys()).copied().collect();
    for key in keys {
        if local.get(&key) == remote.get(&key) {
            continue;
        }
        if local.contains_key(&key) {
            if let Ok(Some(record)) = service.fetch_record_local(key).await {
                if let Ok(MemberResponse::Ok) = service
                    .ring
                    .call(peer, MemberRequest::StoreRecordLocal { key, record })
                    .await
                {
                    report.pushed += 1;
                }
            }
        }
        if remote.contains_key(&key) {
            if let Ok(MemberResponse::Record { record }) = service
                .ring
                .call(peer, MemberRequest::FetchRecordLocal { key })
                .await
            {
                if service.store_record_local(key, record).await.is_ok() {
                    report.pulled += 1;
                }
            }
        }
    }
}

/// Drops keys outside the range this node replicates. A key is a candidate when it lies outside
/// (from, to]; it is dropped only if it was a candidate at the previous clean-up as well, the
/// lookup of its replica set does not include this node, and every member of that set holds
/// it (checked with `HasLocal`; a member that lacks it is sent the block first). Returns this
/// round's candidates.
async fn cleanup(
    service: &Replication,
    replicated: (chord::Id, chord::Id),
    previous: &BTreeSet<BlockKey>,
    report: &mut RoundReport,
) -> BTreeSet<BlockKey> {
    let (from, to) = replicated;
    if from == to {
        return BTreeSet::new(); // we replicate the whole ring (a ring of at most r nodes)
    }
    // Keys outside (from, to] are those in (to, from].
    let store = service.store.clone();
    let foreign: BTreeSet<BlockKey> = match tokio::task::spawn_blocking(move || {
        store.list_range(&BlockKey(to.0), &BlockKey(from.0), Some(CLEANUP_BATCH))
    })
    .await
    {
        Ok(Ok(page)) => page.keys.into_iter().collect(),
        _ => return BTreeSet::new(),
    };
    let ripe: Vec<BlockKey> = foreign.intersection(previous).copied().collect();
    let dropped = futures::stream::iter(ripe)
        .map(|key| async move { hand_over_and_drop(service, key).await })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<Option<bool>>>()
        .await;
    for d in dropped {
        match d {
            Some(true) => report.dropped += 1,
            Some(false) => {}
            None => report.errors += 1,
        }
    }
    foreign
}

/// Some(true) if the key was dropped, Some(false) if it is kept (we are in its replica set after
/// all), None on errors (kept, retried next time).
async fn hand_over_and_drop(service: &Replication, key: BlockKey) -> Option<bool> {
    let set = service.ring.replica_set(&key).await.ok()?;
    if set.contains(service.ring.me()) {
        return Some(false);
    }
    for member in &set {
        let has = match service
            .ring
            .call(member, MemberRequest::HasLocal { keys: vec![key] })
            .await
        {
            Ok(MemberResponse::Has { present }) => present.first().copied().unwrap_or(false),
            _ => return None,
        };
        if !has && !push_block(service, member, key).await {
            return None;
        }
    }
    let store = service.store.clone();
    match tokio::task::spawn_blocking(move || store.delete(&key)).await {
        Ok(Ok(true)) => Some(true),
        Ok(Ok(false)) => Some(false),
        _ => None,
    }
}
