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
//! outside it at two consecutive clean-ups (so a ring still settling does not cause churn),
//! held here for the minimum age, and only once every member of the key's current replica set
//! has proved that it holds the bytes (a proof of possession, never an index lookup), at most
//! a bounded number per round ([`crate::replication::deletion`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::{debug, info, warn};

use peerstore_proto::{
    BlockKey, EntRequest, EntResponse, MemberRequest, MemberResponse, NodeAddr, MAX_LIST_PAGE,
};

use crate::replication::deletion::{self, Evidence, Keep, Store};
use crate::replication::{list_record_digests, Replication};
use crate::ring::{blocking, RingError};
use crate::store::Role;
use crate::sync::{self, Buckets, Digests, Pull, SyncReport};

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
    /// Copies kept because members of the key's replica set failed to prove they hold it
    /// (a member that lies about what it holds shows up here, round after round).
    pub unverified: u64,
}

pub use crate::replication::Activity;

/// Runs maintenance forever: replication rounds every `period` and soon after a range change,
/// and clean-up rounds every `period` in their own task so they never delay re-replication.
pub async fn run(service: Arc<Replication>, period: Duration) {
    // Read the deletion policy and the test-only hostile mode now, so their warnings come at
    // start.
    let _ = (deletion::policy(), crate::replication::hostile::mode());
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
        Activity::add(&service.activity.pulled, report.pulled);
        Activity::add(&service.activity.pushed, report.pushed);
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
    if report.unverified > 0 {
        warn!(
            kept = report.unverified,
            "{what}: copies kept because members of their replica sets failed to prove they hold them"
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
        Activity::add(&service.activity.cleaned, report.dropped);
        log_round("clean-up", &report);
    }
}

/// One replication round: blocks and signed records of the owned range against the other
/// members of its replica set ([`sync::round`]; chosen over hosts: `Ring::replica_successors`).
pub async fn round(service: &Replication) -> RoundReport {
    let Some((from, to)) = service.ring.settled_owned_range().await else {
        return RoundReport::default();
    };
    let succs = service.ring.replica_successors().await;
    let blocks = sync::round(&Blocks(service), &succs, from, to, false).await;
    let records = sync::round(&Records(service), &succs, from, to, false).await;
    RoundReport::from(blocks.merge(records))
}

/// Before a graceful leave: make sure every key this node holds is on the successors that will
/// replace it in the replica sets (the next r successors cover every set this node is part of).
pub async fn hand_off(service: &Replication) -> RoundReport {
    let Some(view) = service.ring.view().await else {
        return RoundReport::default();
    };
    let me = view.me.id;
    let succs = service.ring.successors(service.ring.replication).await;
    // The whole ring, (me, me]: every key we hold, pushed only.
    let blocks = sync::round(&Blocks(service), &succs, me, me, true).await;
    let records = sync::round(&Records(service), &succs, me, me, true).await;
    RoundReport::from(blocks.merge(records))
}

impl From<SyncReport> for RoundReport {
    fn from(r: SyncReport) -> RoundReport {
        RoundReport {
            pushed: r.pushed,
            pulled: r.pulled,
            dropped: 0,
            errors: r.errors,
            unverified: 0,
        }
    }
}

/// Replicated blocks as a [`sync::Table`]: content addressed (the digest of a key is the key),
/// compared by bucket digests first.
struct Blocks<'a>(&'a Replication);

impl sync::Table for Blocks<'_> {
    type Item = Vec<u8>;
    const PULL: Pull = Pull::AnyHolder;

    fn name(&self) -> &'static str {
        "blocks"
    }

    async fn buckets(
        &self,
        peer: Option<&NodeAddr>,
        from: chord::Id,
        to: chord::Id,
        n: u16,
    ) -> Result<Option<Buckets>, RingError> {
        let buckets = match peer {
            None => {
                let store = self.0.store.clone();
                blocking(move || {
                    store.bucket_digests(&BlockKey(from.0), &BlockKey(to.0), u32::from(n))
                })
                .await?
                .into_iter()
                .map(|d| (d.digest.count, d.digest.digest))
                .collect()
            }
            Some(p) => match self
                .0
                .ring
                .call(
                    p,
                    MemberRequest::RangeDigest {
                        from,
                        to,
                        buckets: n,
                    },
                )
                .await?
            {
                MemberResponse::Digests { buckets } => buckets,
                other => return Err(RingError::unexpected(&other)),
            },
        };
        Ok(Some(buckets))
    }

    async fn list(
        &self,
        peer: Option<&NodeAddr>,
        from: chord::Id,
        to: chord::Id,
    ) -> Result<Digests, RingError> {
        let keys: Vec<BlockKey> = match peer {
            None => {
                let store = self.0.store.clone();
                blocking(move || store.list_range(&BlockKey(from.0), &BlockKey(to.0), None))
                    .await?
                    .keys
            }
            Some(p) => {
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let request = MemberRequest::ListRange {
                        from,
                        to,
                        after,
                        limit: MAX_LIST_PAGE,
                    };
                    match self.0.ring.call(p, request).await? {
                        MemberResponse::Keys { keys, more } => {
                            sync::check_page(after, keys.last().copied(), out.len() + keys.len())?;
                            after = keys.last().copied();
                            out.extend(keys);
                            if !more || after.is_none() {
                                break out;
                            }
                        }
                        other => return Err(RingError::unexpected(&other)),
                    }
                }
            }
        };
        Ok(keys.into_iter().map(|k| (k, k.0)).collect())
    }

    async fn fetch(
        &self,
        peer: Option<&NodeAddr>,
        keys: Vec<BlockKey>,
    ) -> Vec<(BlockKey, Vec<u8>)> {
        futures::stream::iter(keys)
            .map(|key| async move {
                let data = match peer {
                    None => self.0.fetch_local(key).await.ok().flatten(),
                    Some(p) => match self.0.ring.call(p, MemberRequest::FetchLocal { key }).await {
                        Ok(MemberResponse::Block { data }) => Some(data),
                        _ => None,
                    },
                };
                data.filter(|d| BlockKey::of(d) == key).map(|d| (key, d))
            })
            .buffer_unordered(PARALLEL)
            .filter_map(|x| async move { x })
            .collect()
            .await
    }

    async fn store(&self, peer: Option<&NodeAddr>, items: Vec<(BlockKey, Vec<u8>)>) -> u64 {
        let stored = futures::stream::iter(items)
            .map(|(key, data)| async move {
                let r = match peer {
                    // Pulled blocks are of the range this node owns.
                    None => self.0.store_local(key, data, Role::Owner).await,
                    Some(p) => self
                        .0
                        .ring
                        .call(p, MemberRequest::StoreLocal { key, data })
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = &r {
                    debug!(%key, error = %e, "block not stored");
                }
                r.is_ok()
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<bool>>()
            .await;
        stored.into_iter().filter(|ok| *ok).count() as u64
    }

    fn digest(&self, key: &BlockKey, _: &Vec<u8>) -> [u8; 32] {
        key.0
    }

    /// The single copies this node holds in (from, to]: in a round of the range it owns,
    /// the parities it scrubbed.
    async fn settled(
        &self,
        from: chord::Id,
        to: chord::Id,
    ) -> Result<BTreeSet<BlockKey>, RingError> {
        let Some(single) = self.0.single.clone() else {
            return Ok(BTreeSet::new());
        };
        let keys = blocking(move || single.list_range(&BlockKey(from.0), &BlockKey(to.0), None))
            .await?
            .keys;
        Ok(keys.into_iter().collect())
    }
}

/// Signed records (users' roots) as a [`sync::Table`]: each side keeps the newer validly
/// signed version, so every differing version is pulled and the result pushed.
struct Records<'a>(&'a Replication);

impl sync::Table for Records<'_> {
    type Item = Vec<u8>;
    const PULL: Pull = Pull::EveryVersion;

    fn name(&self) -> &'static str {
        "records"
    }

    async fn buckets(
        &self,
        _: Option<&NodeAddr>,
        _: chord::Id,
        _: chord::Id,
        _: u16,
    ) -> Result<Option<Buckets>, RingError> {
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
            let (page, more) = match peer {
                None => {
                    let store = self.0.store.clone();
                    blocking(move || list_record_digests(&store, from, to, after)).await?
                }
                Some(p) => match self
                    .0
                    .ring
                    .call(p, MemberRequest::ListRecords { from, to, after })
                    .await?
                {
                    MemberResponse::RecordDigests { records, more } => (records, more),
                    other => return Err(RingError::unexpected(&other)),
                },
            };
            sync::check_page(after, page.last().map(|(k, _)| *k), out.len() + page.len())?;
            after = page.last().map(|(k, _)| *k);
            out.extend(page);
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
        for key in keys {
            let record = match peer {
                None => self.0.fetch_record_local(key).await.ok().flatten(),
                Some(p) => match self
                    .0
                    .ring
                    .call(p, MemberRequest::FetchRecordLocal { key })
                    .await
                {
                    Ok(MemberResponse::Record { record }) => Some(record),
                    _ => None,
                },
            };
            out.extend(record.map(|r| (key, r)));
        }
        out
    }

    async fn store(&self, peer: Option<&NodeAddr>, items: Vec<(BlockKey, Vec<u8>)>) -> u64 {
        let mut n = 0;
        for (key, record) in items {
            // A version that is not newer than the holder's is refused: that is the rule.
            let r = match peer {
                None => self.0.store_record_local(key, record).await,
                Some(p) => self
                    .0
                    .ring
                    .call(p, MemberRequest::StoreRecordLocal { key, record })
                    .await
                    .map(|_| ()),
            };
            n += u64::from(r.is_ok());
        }
        n
    }

    fn digest(&self, _: &BlockKey, item: &Vec<u8>) -> [u8; 32] {
        *blake3::hash(item).as_bytes()
    }
}

/// Drops keys outside the range this node replicates, by the rule of
/// [`deletion`](crate::replication::deletion). A key is a candidate when it lies outside
/// (from, to]; it is dropped only if it was a candidate at the previous clean-up as well, this
/// node has held it for the minimum age, the lookup of its replica set does not include this
/// node, every one of the r members of that set proves it holds the bytes (a member that does
/// not is sent the block and challenged again), and the round has deletions left. Returns this
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
    let mut foreign: BTreeSet<BlockKey> = match tokio::task::spawn_blocking(move || {
        store.list_range(&BlockKey(to.0), &BlockKey(from.0), Some(CLEANUP_BATCH))
    })
    .await
    {
        Ok(Ok(page)) => page.keys.into_iter().collect(),
        _ => return BTreeSet::new(),
    };
    // And the arcs of (from, to] whose owners' replica sets, chosen over hosts, skip this
    // node (module `placement`): copies here are extra there too.
    foreign.extend(skipped_arcs(service, from).await);
    let policy = deletion::policy();
    let mut budget = policy.budget();
    // Only keys old enough, and no more than the round may drop, are worth the proofs; from
    // a random place among them, so keys that keep failing (a member that lies, one that is
    // down) do not keep the others from ever being examined.
    let mut ripe: Vec<BlockKey> = foreign
        .intersection(previous)
        .filter(|k| deletion::old_enough(&policy, service.store.held_for(k)))
        .copied()
        .collect();
    if !ripe.is_empty() {
        let start = rand::random::<usize>() % ripe.len();
        ripe.rotate_left(start);
    }
    ripe.truncate(budget.left());
    let checked = futures::stream::iter(ripe)
        .map(|key| async move { (key, verify_foreign(service, key).await) })
        .buffer_unordered(PARALLEL)
        .collect::<Vec<_>>()
        .await;
    for (key, outcome) in checked {
        let (verified, needed) = match outcome {
            Foreign::Candidate { verified, needed } => (verified, needed),
            Foreign::InSet | Foreign::Gone | Foreign::Single => continue,
            Foreign::Unknown => {
                report.errors += 1;
                continue;
            }
        };
        let evidence = Evidence {
            age: service.store.held_for(&key),
            verified,
            needed,
        };
        if let Err(why) = deletion::decide(&policy, evidence, &mut budget) {
            if matches!(why, Keep::Unverified { .. }) {
                report.unverified += 1;
            }
            debug!(%key, %why, "foreign copy kept");
            continue;
        }
        let store = service.store.clone();
        match tokio::task::spawn_blocking(move || store.delete(&key)).await {
            Ok(Ok(true)) => report.dropped += 1,
            Ok(Ok(false)) => {}
            _ => report.errors += 1,
        }
    }
    foreign
}

/// Keys held here in the arcs of this node's replicated range (down to `from`) whose owners'
/// replica sets do not include this node (placement over hosts chose others); at most
/// [`CLEANUP_BATCH`].
async fn skipped_arcs(service: &Replication, from: chord::Id) -> BTreeSet<BlockKey> {
    let Some(view) = service.ring.view().await else {
        return BTreeSet::new();
    };
    let me = service.ring.me().clone();
    // The owners of the arcs in (from, to] other than this node's own: its predecessors down
    // to `from` (nearest first); each arc runs from the next one to it.
    let mut bounds: Vec<chord::Id> = Vec::new();
    for p in &view.predecessors {
        if p.id == view.me.id || bounds.contains(&p.id) {
            continue;
        }
        bounds.push(p.id);
        if p.id == from {
            break;
        }
    }
    let mut out = BTreeSet::new();
    for pair in bounds.windows(2) {
        let (owner, below) = (pair[0], pair[1]);
        // The owner of `owner`'s own position is that member: one lookup per arc.
        let Ok(set) = service.ring.replica_set(&BlockKey(owner.0)).await else {
            continue;
        };
        if set.contains(&me) || set.len() < service.ring.replication {
            continue;
        }
        let store = service.store.clone();
        let room = CLEANUP_BATCH.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        if let Ok(Ok(page)) = tokio::task::spawn_blocking(move || {
            store.list_range(&BlockKey(below.0), &BlockKey(owner.0), Some(room))
        })
        .await
        {
            out.extend(page.keys);
        }
    }
    out
}

/// What the clean-up found out about a foreign key.
enum Foreign {
    /// This node is in its replica set after all: kept.
    InSet,
    /// This node no longer holds it (or its copy failed verification): nothing to drop.
    Gone,
    /// Its replica set could not be found: kept, retried next time.
    Unknown,
    /// A scrubbed parity (its owner says it holds the single copy): kept here, for the
    /// entangled layer's rule (`entangled::scrub::drop_stale`, which asks the owner to prove
    /// it), and not sent to the members of its replica set (they dropped their replicas).
    Single,
    /// `verified` of the `needed` members of its replica set proved they hold the bytes.
    Candidate { verified: usize, needed: usize },
}

/// Challenges every member of `key`'s replica set to prove it holds the bytes; a member that
/// fails is sent this node's copy and challenged once more (the push plans, the proof decides:
/// a member that acknowledges the block without storing it still fails).
async fn verify_foreign(service: &Replication, key: BlockKey) -> Foreign {
    let Ok(set) = service.ring.replica_set(&key).await else {
        return Foreign::Unknown;
    };
    if set.contains(service.ring.me()) {
        return Foreign::InSet;
    }
    // Our own copy, verified against the key: what the proofs are checked against.
    let own = match service.fetch_local(key).await {
        Ok(Some(data)) => data,
        Ok(None) => return Foreign::Gone,
        Err(_) => return Foreign::Unknown,
    };
    let blocks = [(key, own.as_slice())];
    let mut verified = 0;
    let mut owner_asked = false;
    for member in &set {
        let mut ok =
            deletion::verify(&service.ring, member, Store::Replicated, &blocks).await == [true];
        if !ok && !owner_asked {
            // A member without a replica: the key may be a parity its owner scrubbed to one
            // copy (entangled rings). Sending replicas back would undo the scrub, and each
            // would have to wait out the minimum age again before the owner could drop it.
            let owner_says = match set.first() {
                Some(owner) => matches!(
                    service
                        .ring
                        .call_ent(owner, EntRequest::HasSingle { keys: vec![key] })
                        .await,
                    Ok(EntResponse::Has { present }) if present == [true]
                ),
                None => false,
            };
            if owner_says {
                return Foreign::Single;
            }
            owner_asked = true;
        }
        if !ok && sync::push_keys(&Blocks(service), member, vec![key]).await > 0 {
            ok =
                deletion::verify(&service.ring, member, Store::Replicated, &blocks).await == [true];
        }
        verified += usize::from(ok);
    }
    Foreign::Candidate {
        verified,
        // Every member of a full replica set: r of them.
        needed: service.ring.replication.max(set.len()),
    }
}
