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
//!   A node then drops keys outside the range it replicates, once their replica set has them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::proto::{key_id, BlockKey, NodeAddr, Request, Response, MAX_LIST_PAGE};
use crate::service::Service;
use crate::store::Role;

/// Digest buckets per range comparison.
const BUCKETS: u16 = 64;
/// Most foreign keys handed off and dropped per round (each costs a lookup).
const CLEANUP_BATCH: usize = 512;

/// What one round did, for logs and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundReport {
    pub pushed: u64,
    pub pulled: u64,
    pub dropped: u64,
    pub errors: u64,
}

/// Runs maintenance rounds forever: every `period`, and shortly after a range change.
pub async fn run(service: Arc<Service>, period: Duration) {
    let mut changes = service.handle.ranges_changed.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            r = changes.changed() => {
                if r.is_err() { return; }
                // Let the ring settle a little before moving data.
                tokio::time::sleep(period / 4).await;
            }
        }
        let report = round(&service).await;
        if report.pushed + report.pulled + report.dropped > 0 || report.errors > 0 {
            info!(
                pushed = report.pushed,
                pulled = report.pulled,
                dropped = report.dropped,
                errors = report.errors,
                "maintenance round"
            );
        }
    }
}

/// One maintenance round.
pub async fn round(service: &Service) -> RoundReport {
    let mut report = RoundReport::default();
    let Some(view) = service.handle.view().await else {
        return report;
    };
    if !view.member || view.predecessor.is_none() {
        return report;
    }
    let (from, to) = view.ranges.owned;
    for succ in distinct_successors(&view.successors, &view.me.addr, service.replication - 1) {
        sync_range(service, &succ, from, to, true, &mut report).await;
    }
    cleanup(service, view.ranges.replicated, &mut report).await;
    report
}

/// Before a graceful leave: make sure every key this node holds is on the successors that will
/// replace it in the replica sets (the next r successors cover every set this node is part of).
pub async fn hand_off(service: &Service) -> RoundReport {
    let mut report = RoundReport::default();
    let Some(view) = service.handle.view().await else {
        return report;
    };
    let me = view.me.id;
    for succ in distinct_successors(&view.successors, &view.me.addr, service.replication) {
        // The whole ring minus nothing: every key we hold.
        sync_range(service, &succ, me, me, false, &mut report).await;
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
    service: &Service,
    peer: &NodeAddr,
    from: chord::Id,
    to: chord::Id,
    pull: bool,
    report: &mut RoundReport,
) {
    let remote = match service
        .call(
            peer,
            Request::RangeDigest {
                from,
                to,
                buckets: BUCKETS,
            },
        )
        .await
    {
        Response::Digests { buckets } => buckets,
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
        for key in mine.difference(&theirs) {
            let Ok(Ok(Some(data))) = ({
                let store = service.store.clone();
                let key = *key;
                tokio::task::spawn_blocking(move || store.get(&key)).await
            }) else {
                continue;
            };
            match service
                .call(peer, Request::StoreLocal { key: *key, data })
                .await
            {
                Response::Ok => report.pushed += 1,
                other => {
                    debug!(%key, peer = %peer.peer, ?other, "push failed");
                    report.errors += 1;
                }
            }
        }
        if pull {
            for key in theirs.difference(&mine) {
                match service.call(peer, Request::FetchLocal { key: *key }).await {
                    Response::Block { data } if BlockKey::of(&data) == *key => {
                        let store = service.store.clone();
                        let key = *key;
                        match tokio::task::spawn_blocking(move || {
                            store.put(key, &data, Role::Owner)
                        })
                        .await
                        {
                            Ok(Ok(_)) => report.pulled += 1,
                            Ok(Err(e)) => {
                                warn!(%key, error = %e, "cannot store pulled block");
                                report.errors += 1;
                            }
                            Err(_) => report.errors += 1,
                        }
                    }
                    _ => report.errors += 1,
                }
            }
        }
    }
}

async fn list_local(service: &Service, from: chord::Id, to: chord::Id) -> Option<BTreeSet<BlockKey>> {
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
    service: &Service,
    peer: &NodeAddr,
    from: chord::Id,
    to: chord::Id,
) -> Option<BTreeSet<BlockKey>> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        match service
            .call(
                peer,
                Request::ListRange {
                    from,
                    to,
                    after,
                    limit: MAX_LIST_PAGE,
                },
            )
            .await
        {
            Response::Keys { keys, more } => {
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

/// Drops keys outside the range this node replicates, after making sure their replica set has
/// them. A key is dropped only when every member of its current replica set acknowledged it.
async fn cleanup(service: &Service, replicated: (chord::Id, chord::Id), report: &mut RoundReport) {
    let (from, to) = replicated;
    if from == to {
        return; // we replicate the whole ring (a ring of at most r nodes)
    }
    // Keys outside (from, to] are those in (to, from].
    let store = service.store.clone();
    let foreign = match tokio::task::spawn_blocking(move || {
        store.list_range(&BlockKey(to.0), &BlockKey(from.0), Some(CLEANUP_BATCH))
    })
    .await
    {
        Ok(Ok(page)) => page.keys,
        _ => return,
    };
    for key in foreign {
        let Ok(res) = service.handle.lookup(key_id(&key)).await else {
            report.errors += 1;
            continue;
        };
        let set = service.replica_set_of(&res);
        if set.contains(&service.handle.local) {
            continue; // our view of the ranges is behind; keep it
        }
        let data = {
            let store = service.store.clone();
            match tokio::task::spawn_blocking(move || store.get(&key)).await {
                Ok(Ok(Some(d))) => d,
                _ => continue,
            }
        };
        let mut all = true;
        for to in &set {
            match service
                .call(
                    to,
                    Request::StoreLocal {
                        key,
                        data: data.clone(),
                    },
                )
                .await
            {
                Response::Ok => {}
                _ => all = false,
            }
        }
        if all {
            let store = service.store.clone();
            if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || store.delete(&key)).await {
                report.dropped += 1;
            }
        }
    }
}
