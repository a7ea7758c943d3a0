//! Replica management ("scrub") and the storage figures for du.
//!
//! The owner of a parity decides: by reference count (the parity's reverse-reference entry
//! names at least `threshold` referrers) or by window (it is not among the `w` most recently
//! written parities of the ring). A chosen parity is first stored durably as the single copy in
//! the owner's single-copy store (which the replication anti-entropy does not see), then its
//! replicated copies are deleted from disk: the owner's own, and each other member's after that
//! member has checked that the owner really holds the single copy. A parity is never deleted
//! before its single copy is durable, so a scrub never makes a document unreadable.
//!
//! Every copy dropped because another node holds the block (a member's replica, a stale
//! replica outside the replica set, a single copy handed to a new owner) follows
//! [`deletion`]: held here for the minimum age, the holder proved just now that it holds the
//! bytes in its single-copy store (`ProveSingle`, checked against this node's own copy; a
//! `HasSymbols` / `HasSingle` answer only plans), and within the round's bound on deletions.

use futures::StreamExt;
use tracing::{debug, warn};

use super::format::ek;
use super::layer::Entangled;
use super::{meta, refs, repair};
use crate::replication::deletion::{self, Budget, Evidence, Keep, Store};
use crate::ring::{blocking, RingError};
use crate::store::{in_interval, Role};
use peerstore_proto::{lock, BlockKey, ErrorCode, NodeAddr};
use peerstore_proto::{EntRequest, EntResponse, EntangleStats, ScrubMode, ScrubReport};

/// `Scrub { mode, once, interval_ms }`: runs a scrub over the whole ring now (two passes: the
/// second removes copies that anti-entropy re-sent during the first); with `once == false` it
/// also sets the scrub daemon on every node (every `interval_ms`; `interval_ms == 0` stops the
/// daemon and scrubs nothing).
pub async fn scrub_request(
    ent: &Entangled,
    mode: ScrubMode,
    once: bool,
    interval_ms: u64,
) -> Result<ScrubReport, RingError> {
    if ent.params().is_none() {
        return Ok(ScrubReport::default());
    }
    let nodes = ent.ring.members().await;
    if !once {
        let policy = (interval_ms > 0).then_some((mode, interval_ms));
        for (_, a) in &nodes {
            ent.ring
                .call_ent(a, EntRequest::SetScrubDaemon { policy })
                .await?;
        }
        if policy.is_none() {
            return Ok(ScrubReport::default());
        }
    }
    let cutoff = match mode {
        ScrubMode::Window { blocks } => window_cutoff(ent, blocks)
            .await
            .map_err(RingError::unavailable)?,
        ScrubMode::Pointers { .. } => None,
    };
    let mut total = ScrubReport::default();
    for pass in 0..2 {
        let results = futures::future::join_all(nodes.iter().map(|(_, a)| {
            ent.ring.call_ent(
                a,
                EntRequest::ScrubLocal {
                    mode,
                    cutoff_us: cutoff,
                },
            )
        }))
        .await;
        let mut round = ScrubReport::default();
        for r in results {
            match r {
                Ok(EntResponse::Scrubbed(s)) => round.add(&s),
                _ => round.errors += 1,
            }
        }
        if pass == 0 {
            total = round;
        } else {
            total.replicas_removed += round.replicas_removed;
            total.bytes_freed += round.bytes_freed;
            total.scrubbed += round.scrubbed;
            total.errors = round.errors;
            total.single = round.single;
        }
    }
    Ok(total)
}

/// The window mode's age limit: parities written before the `w`-th newest one of the ring
/// leave the window. `Ok(None)` if the ring holds at most `w` parities (nothing to scrub).
pub async fn window_cutoff(ent: &Entangled, w: u64) -> Result<Option<u64>, String> {
    if w == 0 {
        return Ok(Some(u64::MAX));
    }
    let nodes = ent.ring.members().await;
    let results = futures::future::join_all(
        nodes
            .iter()
            .map(|(_, a)| ent.ring.call_ent(a, EntRequest::NewestCreated { count: w })),
    )
    .await;
    let mut times = Vec::new();
    for r in results {
        match r? {
            EntResponse::Created { times: t } => times.extend(t),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    times.sort_unstable_by(|a, b| b.cmp(a));
    let w = usize::try_from(w).unwrap_or(usize::MAX);
    Ok(times.get(w - 1).copied().filter(|_| times.len() > w))
}

/// What became of one candidate of [`scrub_local`].
enum Outcome {
    /// Not eligible (or unknown): keeps its replicas.
    Kept,
    /// Eligible, but kept replicated for the spread of a codeword over hosts
    /// ([`super::spread`]).
    Spread,
    /// Brought to one copy: (replica files removed, bytes freed).
    Scrubbed(u64, u64),
    /// Not looked at: a client's data came in, and the round gave way (the next goes on).
    Yielded,
    /// Eligible, but a parity of its codeword is not stored yet (module `later`).
    Unsealed,
}

/// Scrubs the parities this node owns (see the module docs). With `yield_after`, the
/// candidates not yet begun are left for the next round once this node serves a client's
/// data after that instant (replica management gives way to clients,
/// [`super::policy::ReplicaPolicy::yield_ms`]); the returned counts say how many, and how
/// many eligible blocks kept their replicas because a parity of their codeword is not stored
/// yet (module `later`).
pub async fn scrub_local(
    ent: &Entangled,
    mode: ScrubMode,
    cutoff_us: Option<u64>,
    max_age_ms: u64,
    yield_after: Option<std::time::Instant>,
) -> (ScrubReport, u64, u64) {
    let mut report = ScrubReport {
        nodes: 1,
        ..ScrubReport::default()
    };
    let (Some(params), Some(sizes)) = (ent.params(), ent.parity_sizes()) else {
        return (report, 0, 0);
    };
    let Some(view) = ent.ring.handle.view().await else {
        return (report, 0, 0);
    };
    if !view.member {
        return (report, 0, 0);
    }
    let (from, to) = view.ranges.owned;
    let (a, b) = (BlockKey(from.0), BlockKey(to.0));
    let (main, single) = (ent.store.clone(), ent.single.clone());
    let listed = blocking(move || {
        let mut parities = Vec::new();
        let mut cursor = a;
        loop {
            let page = main.list_range_meta(&cursor, &b, Some(4096))?;
            parities.extend(
                page.entries
                    .into_iter()
                    .filter(|(_, m)| sizes.matches(m.size))
                    .map(|(k, _)| k),
            );
            match page.next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        let singles = single
            .list_range(&BlockKey::ZERO, &BlockKey::ZERO, None)?
            .keys;
        Ok((parities, singles))
    })
    .await;
    let Ok((parities, singles)) = listed else {
        report.errors += 1;
        return (report, 0, 0);
    };
    let owned = |k: &BlockKey| a == b || in_interval(&a, &b, k);
    let singles: Vec<BlockKey> = singles.into_iter().filter(|k| owned(k)).collect();
    report.single = singles.len() as u64;
    let single_set: std::collections::BTreeSet<BlockKey> = singles.into_iter().collect();
    let candidates: Vec<BlockKey> = parities
        .into_iter()
        .filter(|k| !single_set.contains(k))
        .collect();
    report.examined = candidates.len() as u64;
    let now = super::layer::now_us();
    let spread = super::spread::Spread::new(ent).await;
    let spread = spread.as_ref();
    // A block goes to one copy only once every parity of its codeword is stored (parities
    // stored after the acknowledgement may still be on their way: module `later`).
    let sealed = super::later::Sealed::default();
    let sealed = &sealed;
    // Parities the last round kept for their age are decided from memory while they stay
    // too young; the others are looked up.
    let known = std::mem::take(&mut *lock(&ent.known_young));
    let (known, young) = (&known, &std::sync::Mutex::new(Vec::new()));
    let outcomes = futures::stream::iter(candidates)
        .map(|k| async move {
            if let Some(t) = known.still_young(&k, mode, cutoff_us, max_age_ms, now) {
                lock(young).push((k, t));
                return Ok(Outcome::Kept);
            }
            if yield_after.is_some_and(|t| ent.traffic.came_after(t)) {
                return Ok(Outcome::Yielded);
            }
            let Some(entry) = refs::fetch_ring(ent, &k).await else {
                return Ok(Outcome::Kept); // unknown: keep its replicas
            };
            let eligible = super::policy::eligible(
                mode,
                entry.created_us,
                entry.referrers.len(),
                cutoff_us,
                max_age_ms,
                now,
            );
            if !eligible {
                if let Some(t) = entry.created_us {
                    lock(young).push((k, t));
                }
            }
            let Some(own) = entry.own.filter(|_| eligible) else {
                return Ok(Outcome::Kept);
            };
            if !sealed.check(ent, own).await {
                return Ok(Outcome::Unsealed);
            }
            if let Some(sp) = spread {
                if !sp.allows(k, &entry).await {
                    return Ok(Outcome::Spread);
                }
            }
            scrub_one(ent, &params, k, entry.created_us)
                .await
                .map(|(n, b)| Outcome::Scrubbed(n, b))
        })
        .buffer_unordered(8)
        .collect::<Vec<Result<Outcome, String>>>()
        .await;
    let young = std::mem::take(&mut *lock(young));
    lock(&ent.known_young).replace(young, now);
    let (mut yielded, mut unsealed) = (0, 0);
    for o in outcomes {
        match o {
            Ok(Outcome::Scrubbed(n, bytes)) => {
                report.scrubbed += 1;
                report.single += 1;
                report.replicas_removed += n;
                report.bytes_freed += bytes;
            }
            Ok(Outcome::Spread) => report.kept_for_spread += 1,
            Ok(Outcome::Kept) => {}
            Ok(Outcome::Yielded) => yielded += 1,
            Ok(Outcome::Unsealed) => unsealed += 1,
            Err(e) => {
                debug!(error = %e, "scrub of a parity failed");
                report.errors += 1;
            }
        }
    }
    (report, yielded, unsealed)
}

/// Owned single copies a background round looks at for returned copies, at most: the next
/// page after the last round's ([`Entangled::redrop_after`]), so a round's requests do not grow
/// with the data (a pass over N single copies takes N / this many rounds). Before, every round
/// asked each of the r - 1 successors about every single copy the node owned.
pub const REDROP_PER_ROUND: usize = 4096;

/// Copies of already scrubbed parities that anti-entropy or clean-up put back, or that a node
/// outside the replica set still holds, deleted within `budget` ([`drop_stale`], then
/// [`redrop_singles`] for the single copies this node owns: all of them with `whole`, else the
/// next [`REDROP_PER_ROUND`]). Run by the background loop every round and by a scrub by hand
/// (`whole`) before [`scrub_local`]. Returns (copies deleted, bytes freed).
pub async fn sweep(ent: &Entangled, budget: &mut Budget, whole: bool) -> (u64, u64) {
    let stale = drop_stale(ent, budget).await;
    let singles = owned_singles(ent, (!whole).then_some(REDROP_PER_ROUND)).await;
    let (n, bytes) = redrop_singles(ent, &singles).await;
    (stale + n, bytes)
}

/// Where a page of the owned range `(a, b]` starts: after `cursor`, unless the ring's changes
/// left it outside the range (or at its end, which would read as the whole ring): then at the
/// range's start.
fn resume_after(cursor: Option<BlockKey>, a: &BlockKey, b: &BlockKey) -> BlockKey {
    cursor
        .filter(|c| c != b && (a == b || in_interval(a, b, c)))
        .unwrap_or(*a)
}

/// For single copies this node holds and owns: deletes replicated copies that came back (the
/// replication anti-entropy, or the clean-up of a node that held a stale copy, re-sends them)
/// here and on the next r-1 successors (the rest of the replica set of an owned key).
/// Returns (copies deleted, bytes freed).
pub async fn redrop_singles(ent: &Entangled, singles: &[BlockKey]) -> (u64, u64) {
    let Some(view) = ent.ring.handle.view().await else {
        return (0, 0);
    };
    let (main, single) = (ent.store.clone(), ent.single.clone());
    let keys = singles.to_vec();
    let (mut n, mut bytes) = blocking(move || {
        let (mut n, mut bytes) = (0u64, 0u64);
        for k in &keys {
            // Our own replicated copy next to our single copy: dropped once the single copy
            // reads back whole (a local move, so no minimum age; never the last good copy).
            if let Some(m) = main.meta(k)? {
                if matches!(single.get(k), Ok(Some(_))) && main.delete(k)? {
                    n += 1;
                    bytes += m.size;
                }
            }
        }
        Ok((n, bytes))
    })
    .await
    .unwrap_or((0, 0));
    let me = ent.ring.handle.local.clone();
    let period = lock(&ent.requested_drops).window();
    let mut succs: Vec<NodeAddr> = Vec::new();
    for s in &view.successors {
        if succs.len() + 1 >= ent.replication {
            break;
        }
        if s.addr != me && !succs.contains(&s.addr) {
            succs.push(s.addr.clone());
        }
    }
    for succ in &succs {
        for chunk in singles.chunks(peerstore_proto::MAX_LIST_PAGE as usize) {
            let present = match ent
                .ring
                .call_ent(
                    succ,
                    EntRequest::HasSymbols {
                        keys: chunk.to_vec(),
                    },
                )
                .await
            {
                Ok(EntResponse::Has { present }) => present,
                _ => continue,
            };
            // Copies a member kept are asked about again less and less often (a young one
            // waits out the minimum age of deletions; each ask is a request).
            let now = std::time::Instant::now();
            let back: Vec<BlockKey> = {
                let mut retries = lock(&ent.drop_retries);
                chunk
                    .iter()
                    .zip(present)
                    .filter(|(k, p)| {
                        if !*p {
                            retries.done(k, &succ.peer);
                        }
                        *p && retries.due(k, &succ.peer, now)
                    })
                    .map(|(k, _)| *k)
                    .collect()
            };
            let dropped = futures::stream::iter(back)
                .map(|key| {
                    let holder = me.clone();
                    async move {
                        let r = ent
                            .ring
                            .call_ent(succ, EntRequest::DropReplica { key, holder })
                            .await;
                        (key, r)
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
            let mut retries = lock(&ent.drop_retries);
            for (key, d) in dropped {
                match d {
                    Ok(EntResponse::Stats(s)) if s.parity_copies_replicated > 0 => {
                        n += s.parity_copies_replicated;
                        bytes += s.parity_bytes;
                        retries.done(&key, &succ.peer);
                    }
                    _ => retries.kept(key, succ.peer, now, period),
                }
            }
        }
    }
    lock(&ent.drop_retries).forget_old(std::time::Instant::now());
    (n, bytes)
}

/// Replicated copies of scrubbed parities on a node outside their replica set (a copy it
/// received while the ring settled, which the clean-up keeps in rings of few nodes): deleted
/// by the rule of [`deletion`] once the owner proves it holds the single copy (its `HasSingle`
/// answer only says whether to ask for the proof). At most `budget` of them. Returns the
/// copies deleted.
pub async fn drop_stale(ent: &Entangled, budget: &mut Budget) -> u64 {
    let Some(sizes) = ent.parity_sizes() else {
        return 0;
    };
    let Some(view) = ent.ring.handle.view().await else {
        return 0;
    };
    let r = ent.replication;
    let mut preds: Vec<chord::Id> = Vec::new();
    for p in &view.predecessors {
        if p.id != view.me.id && !preds.contains(&p.id) {
            preds.push(p.id);
        }
    }
    if r == 0 || preds.len() < r {
        return 0; // at most r nodes: every node is in every replica set
    }
    let policy = deletion::policy();
    // This node is in the replica sets of (preds[r-1], me]; everything else it holds is stale.
    let (me, lo) = (BlockKey(view.me.id.0), BlockKey(preds[r - 1].0));
    let main = ent.store.clone();
    let Ok(stale) = blocking(move || {
        Ok(main
            .list_range_meta(&me, &lo, None)?
            .entries
            .into_iter()
            .filter(|(k, m)| {
                sizes.matches(m.size) && deletion::old_enough(&policy, main.held_for(k))
            })
            .map(|(k, _)| k)
            .take(256)
            .collect::<Vec<_>>())
    })
    .await
    else {
        return 0;
    };
    let (mut dropped, mut unverified) = (0, 0);
    for key in stale {
        if budget.spent() {
            break;
        }
        let Ok(set) = ent.ring.replica_set(&key).await else {
            continue;
        };
        let Some(owner) = set.first() else { continue };
        if set.contains(&ent.ring.handle.local) {
            continue;
        }
        // Plan with the cheap index lookup (a parity that is not scrubbed has no single copy:
        // its stale replicas are the clean-up's), decide with the proof.
        let says = matches!(
            ent.ring.call_ent(owner, EntRequest::HasSingle { keys: vec![key] }).await,
            Ok(EntResponse::Has { present }) if present == [true]
        );
        if !says {
            continue;
        }
        let main = ent.store.clone();
        let Ok(Ok(Some(own))) = tokio::task::spawn_blocking(move || main.get(&key)).await else {
            continue;
        };
        let verified = deletion::verify(&ent.ring, owner, Store::Single, &[(key, &own)]).await;
        let evidence = Evidence {
            age: ent.store.held_for(&key),
            verified: usize::from(verified == [true]),
            needed: 1,
        };
        if let Err(why) = deletion::decide(&policy, evidence, budget) {
            if matches!(why, Keep::Unverified { .. }) {
                unverified += 1;
                debug!(%key, owner = %owner.peer, "stale replica kept: the owner says it holds the single copy but did not prove it");
            }
            continue;
        }
        let main = ent.store.clone();
        if let Ok(Ok(true)) = tokio::task::spawn_blocking(move || main.delete(&key)).await {
            dropped += 1;
        }
    }
    if unverified > 0 {
        warn!(
            kept = unverified,
            "stale replicas kept: their owners say they hold the single copies but failed to prove it"
        );
    }
    dropped
}

/// The single copies this node owns, in ring order: all of them (`page` `None`), or the next
/// `page` after [`Entangled::redrop_after`], moving it on (back to the start of the owned
/// range after the last page).
pub async fn owned_singles(ent: &Entangled, page: Option<usize>) -> Vec<BlockKey> {
    let Some(view) = ent.ring.handle.view().await else {
        return Vec::new();
    };
    let (from, to) = view.ranges.owned;
    let (a, b) = (BlockKey(from.0), BlockKey(to.0));
    let after = match page {
        Some(_) => resume_after(*lock(&ent.redrop_after), &a, &b),
        None => a,
    };
    let single = ent.single.clone();
    let listed = tokio::task::spawn_blocking(move || single.list_range(&after, &b, page))
        .await
        .ok()
        .and_then(Result::ok);
    let Some(listed) = listed else {
        return Vec::new();
    };
    if page.is_some() {
        *lock(&ent.redrop_after) = listed.next;
    }
    listed.keys
}

/// Moves one owned parity to the single-copy store and deletes its replicated copies.
/// Returns (copies deleted, bytes freed).
async fn scrub_one(
    ent: &Entangled,
    params: &entangle::Params,
    key: BlockKey,
    created_us: Option<u64>,
) -> Result<(u64, u64), String> {
    let (main, single) = (ent.store.clone(), ent.single.clone());
    let p = *params;
    blocking(move || {
        let Some(bytes) = main.get(&key)? else {
            return Err(crate::store::StoreError::InvalidArgument("gone".into()));
        };
        if entangle::codec::pointer_payload(&p, &ek(&key), &bytes).is_err() {
            return Err(crate::store::StoreError::InvalidArgument(
                "not a parity of this ring".into(),
            ));
        }
        single.put(key, &bytes, Role::Owner)?;
        Ok(())
    })
    .await
    .map_err(|e| format!("{e:?}"))?;
    drop_everywhere(ent, key, created_us).await
}

/// Deletes the replicated copies of a parity whose single copy this node holds: its own, then
/// every other member's of the replica set (each member decides by the rule of [`deletion`]).
/// A member that cannot drop its copy now (unreachable, its copy too young, the proof lost to
/// a timeout) keeps it until the owner's worker asks again (`redrop_singles`): the parity is
/// scrubbed all the same. A codeword younger than the minimum age of deletions (written at
/// `created_us`) has members whose copies are younger still: they are asked only once it is
/// old enough (asking at once, then again and again with the back-off, cost about 14
/// requests per copy over the 10 minutes: 54 a second across a 4-node ring after a 256 MiB
/// backup). Returns (copies deleted, bytes freed).
async fn drop_everywhere(
    ent: &Entangled,
    key: BlockKey,
    created_us: Option<u64>,
) -> Result<(u64, u64), String> {
    let main = ent.store.clone();
    let (mut n, mut bytes) = blocking(move || {
        let size = main.meta(&key)?.map_or(0, |m| m.size);
        Ok(if main.delete(&key)? {
            (1u64, size)
        } else {
            (0, 0)
        })
    })
    .await
    .map_err(|e| format!("{e:?}"))?;
    let me = ent.ring.handle.local.clone();
    let set = ent.ring.replica_set(&key).await?;
    let young = super::policy::young_for(
        created_us,
        super::layer::now_us(),
        deletion::policy().min_age,
    );
    for m in set.iter().filter(|m| **m != me) {
        if !young.is_zero() {
            let at = std::time::Instant::now() + young;
            lock(&ent.drop_retries).defer(key, m.peer, at);
            continue;
        }
        match ent
            .ring
            .call_ent(
                m,
                EntRequest::DropReplica {
                    key,
                    holder: me.clone(),
                },
            )
            .await
        {
            Ok(EntResponse::Stats(s)) => {
                n += s.parity_copies_replicated;
                bytes += s.parity_bytes;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(%key, peer = %m.peer, error = %e, "replica not dropped yet; asked again later");
            }
        }
    }
    Ok((n, bytes))
}

/// `DropReplica`: deletes the replicated copy of `key` here, by the rule of [`deletion`]:
/// `holder` must be the key's owner by this node's own lookup and prove, against this node's
/// copy, that it holds the single copy; this node must have held its copy for the minimum age,
/// and at most the per-round bound of such requests are honoured per maintenance period.
/// Answers with the copies and bytes deleted (none when the copy is kept for its age or the
/// bound: the owner asks again later); a holder that fails the proof is refused.
pub async fn drop_replica(
    ent: &Entangled,
    key: BlockKey,
    holder: NodeAddr,
) -> Result<EntangleStats, RingError> {
    if holder == ent.ring.handle.local {
        return Err(RingError::new(
            ErrorCode::BadRequest,
            "the holder of the single copy cannot be this node",
        ));
    }
    let kept = Ok(EntangleStats::default());
    let policy = deletion::policy();
    // The cheap local test first: while a replica is too young the owner asks every round,
    // and each answer would otherwise cost a lookup.
    let age = ent.store.held_for(&key);
    if !deletion::old_enough(&policy, age) {
        return kept;
    }
    // Only the key's owner keeps the single copy: nobody else may have replicas dropped.
    let owner = ent
        .ring
        .replica_set(&key)
        .await
        .map_err(|e| RingError::new(ErrorCode::Unavailable, e))?;
    if owner.first() != Some(&holder) {
        return Err(RingError::new(
            ErrorCode::Rejected,
            "the claimed holder is not the owner of the key; replica kept",
        ));
    }
    let now = std::time::Instant::now();
    if !peerstore_proto::lock(&ent.requested_drops).available(policy.max_per_round, now) {
        return kept;
    }
    // Our copy, verified against the key: the proof is checked against it.
    let main = ent.store.clone();
    let Some(own) = blocking(move || main.get(&key)).await.ok().flatten() else {
        return kept; // nothing (whole) to drop
    };
    let verified = deletion::verify(&ent.ring, &holder, Store::Single, &[(key, &own)]).await;
    let evidence = Evidence {
        age,
        verified: usize::from(verified == [true]),
        needed: 1,
    };
    // The bound is per window: a budget of one, taken from the window only when the rest holds.
    let mut one = Budget::new(1);
    match deletion::decide(&policy, evidence, &mut one) {
        Ok(()) => {}
        Err(Keep::Unverified { .. }) => {
            return Err(RingError::new(
                ErrorCode::Rejected,
                "the claimed holder did not prove it holds the single copy; replica kept",
            ))
        }
        Err(_) => return kept,
    }
    if !peerstore_proto::lock(&ent.requested_drops).take(policy.max_per_round, now) {
        return kept;
    }
    let main = ent.store.clone();
    let (n, bytes) = blocking(move || {
        let size = main.meta(&key)?.map_or(0, |m| m.size);
        Ok(if main.delete(&key)? {
            (1u64, size)
        } else {
            (0, 0)
        })
    })
    .await?;
    Ok(EntangleStats {
        parity_copies_replicated: n,
        parity_bytes: bytes,
        ..EntangleStats::default()
    })
}

/// Single copies this node holds for keys it does not own go to the key's current owner:
/// sent with `StoreSingle` unless the owner already says it holds them, and dropped here by
/// the rule of [`deletion`] once the owner proves it (a `StoreSingle` acknowledgement alone is
/// not enough), at most `budget` of them. That covers ownership moved by a join, and a second
/// single copy made while the owner was away (its successor scrubbed the parity again): one
/// single copy per parity remains, on its owner. An owner that is leaving gracefully takes no
/// copy and proves none (`Replication::leaving`), so none is dropped here for a copy that
/// would leave with it.
pub async fn hand_off_singles(ent: &Entangled, budget: &mut Budget) {
    let Some(view) = ent.ring.handle.view().await else {
        return;
    };
    if !view.member || view.predecessor.is_none() {
        return;
    }
    let (from, to) = view.ranges.owned;
    if from == to {
        return;
    }
    let single = ent.single.clone();
    // The keys this node does not own: the ring interval (to, from].
    let Ok(Ok(page)) = tokio::task::spawn_blocking(move || {
        single.list_range(&BlockKey(to.0), &BlockKey(from.0), Some(256))
    })
    .await
    else {
        return;
    };
    let policy = deletion::policy();
    let mut unverified = 0;
    for key in page.keys {
        if budget.spent() {
            break;
        }
        let Ok(set) = ent.ring.replica_set(&key).await else {
            continue;
        };
        let Some(owner) = set.first() else { continue };
        if *owner == ent.ring.handle.local {
            continue;
        }
        let single = ent.single.clone();
        let Ok(Ok(Some(data))) = tokio::task::spawn_blocking(move || single.get(&key)).await else {
            continue;
        };
        // Plan with the cheap index lookup: send the copy unless the owner says it has it.
        let has = matches!(
            ent.ring.call_ent(owner, EntRequest::HasSingle { keys: vec![key] }).await,
            Ok(EntResponse::Has { present }) if present == [true]
        );
        if !has {
            let sent = ent
                .ring
                .call_ent(
                    owner,
                    EntRequest::StoreSingle {
                        key,
                        data: data.clone(),
                    },
                )
                .await;
            if !matches!(sent, Ok(EntResponse::Ok)) {
                continue;
            }
        }
        // Decide with the proof, once our copy is old enough to go.
        let age = ent.single.held_for(&key);
        if !deletion::old_enough(&policy, age) {
            continue;
        }
        let verified = deletion::verify(&ent.ring, owner, Store::Single, &[(key, &data)]).await;
        let evidence = Evidence {
            age,
            verified: usize::from(verified == [true]),
            needed: 1,
        };
        match deletion::decide(&policy, evidence, budget) {
            Ok(()) => {
                let single = ent.single.clone();
                let _ = tokio::task::spawn_blocking(move || single.delete(&key)).await;
            }
            Err(Keep::Unverified { .. }) => {
                unverified += 1;
                debug!(%key, owner = %owner.peer, "single copy kept: its owner says it holds it but did not prove it");
            }
            Err(_) => {}
        }
    }
    if unverified > 0 {
        warn!(
            kept = unverified,
            "single copies kept: their new owners say they hold them but failed to prove it"
        );
    }
}

/// This node's figures for du.
pub async fn local_stats(ent: &Entangled) -> Result<EntangleStats, RingError> {
    let sizes = ent.parity_sizes();
    let (main, single) = (ent.store.clone(), ent.single.clone());
    let mut s = blocking(move || {
        let mut s = EntangleStats {
            nodes: 1,
            ..EntangleStats::default()
        };
        let mut cursor = BlockKey::ZERO;
        loop {
            let page = main.list_range_meta(&cursor, &BlockKey::ZERO, Some(4096))?;
            for (_, m) in &page.entries {
                if sizes.is_some_and(|z| z.matches(m.size)) {
                    s.parity_copies_replicated += 1;
                    s.parity_bytes += m.size;
                } else {
                    s.other_bytes += m.size;
                }
            }
            match page.next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        // Codeword and document records: every copy, like the other blocks.
        s.other_bytes += meta::local_figures(&main)?.1;
        let st = single.stats();
        s.parity_copies_single = st.roles.blocks();
        s.parity_bytes += st.roles.bytes();
        let mut after: Option<[u8; 32]> = None;
        loop {
            let page = main.record_list(refs::TABLE, after.as_ref(), 4096)?;
            let Some(last) = page.last().map(|(k, _)| *k) else {
                break;
            };
            s.refs_entries += page.len() as u64;
            after = Some(last);
        }
        Ok(s)
    })
    .await?;
    let mut pages = repair::OwnedPages::new(ent).await;
    while let Some(page) = pages.next().await {
        s.codewords += page.len() as u64;
        s.logical_bytes += page.iter().map(|(_, r)| r.len).sum::<u64>();
    }
    Ok(s)
}

/// `EntangleStats`: the figures of every node, summed.
pub async fn ring_stats(ent: &Entangled) -> Result<EntangleStats, String> {
    let mut total = EntangleStats {
        kind: match ent.params() {
            Some(_) => "step".into(),
            None => "none".into(),
        },
        params: ent.params(),
        layout: ent.params().map(|_| ent.layout()),
        replication: ent.replication as u32,
        ..EntangleStats::default()
    };
    let nodes = ent.ring.members().await;
    let results = futures::future::join_all(
        nodes
            .iter()
            .map(|(_, a)| ent.ring.call_ent(a, EntRequest::LocalStats)),
    )
    .await;
    for r in results {
        match r? {
            EntResponse::Stats(s) => total.add(&s),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
    Ok(total)
}

/// Before a graceful leave: every single copy goes to the first successor (the new owner of
/// this node's range), and every record and reverse-reference entry to the next m successors
/// (the nodes that join the metadata sets this node leaves). Returns (single copies handed
/// off, records and entries sent).
pub async fn hand_off(ent: &Entangled) -> (u64, u64) {
    // The next m successors: the m-th joins the metadata set of this node's own range.
    let succs = ent.ring.successors(ent.metadata_replication()).await;
    let Some(first) = succs.first().cloned() else {
        return (0, 0);
    };
    let single = ent.single.clone();
    let keys = tokio::task::spawn_blocking(move || {
        single
            .list_range(&BlockKey::ZERO, &BlockKey::ZERO, None)
            .map(|p| p.keys)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    let mut singles = 0;
    for key in keys {
        let single = ent.single.clone();
        let Ok(Ok(Some(data))) = tokio::task::spawn_blocking(move || single.get(&key)).await else {
            continue;
        };
        if let Ok(EntResponse::Ok) = ent
            .ring
            .call_ent(&first, EntRequest::StoreSingle { key, data })
            .await
        {
            singles += 1;
        }
    }
    let records = meta::all_local(ent).await;
    let entries = refs::all_entries(ent).await;
    let sent = futures::future::join_all(succs.iter().map(|s| {
        let (records, entries) = (&records, &entries);
        async move {
            let mut sent = 0u64;
            let mut batch: Vec<Vec<u8>> = Vec::new();
            let mut bytes = 0;
            for r in records {
                bytes += r.len();
                batch.push(r.clone());
                if bytes >= 1 << 20 || batch.len() >= 1024 {
                    let n = batch.len() as u64;
                    let records = std::mem::take(&mut batch);
                    if let Ok(EntResponse::Ok) = ent
                        .ring
                        .call_ent(s, EntRequest::StoreRecords { records })
                        .await
                    {
                        sent += n;
                    }
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                let n = batch.len() as u64;
                if let Ok(EntResponse::Ok) = ent
                    .ring
                    .call_ent(s, EntRequest::StoreRecords { records: batch })
                    .await
                {
                    sent += n;
                }
            }
            for chunk in entries.chunks(1024) {
                if let Ok(EntResponse::Ok) = ent
                    .ring
                    .call_ent(
                        s,
                        EntRequest::StoreRefs {
                            entries: chunk.to_vec(),
                        },
                    )
                    .await
                {
                    sent += chunk.len() as u64;
                }
            }
            sent
        }
    }))
    .await
    .into_iter()
    .sum();
    (singles, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> BlockKey {
        BlockKey([b; 32])
    }

    #[test]
    fn a_page_resumes_inside_the_owned_range_only() {
        let (a, b) = (k(10), k(20));
        // No cursor, or the last page ended: the range's start.
        assert_eq!(resume_after(None, &a, &b), a);
        // Inside: go on after it.
        assert_eq!(resume_after(Some(k(15)), &a, &b), k(15));
        // Outside (the range moved) or at its end: start over.
        assert_eq!(resume_after(Some(k(25)), &a, &b), a);
        assert_eq!(resume_after(Some(k(5)), &a, &b), a);
        assert_eq!(resume_after(Some(b), &a, &b), a);
        // A wrapping range (a > b) and the whole ring (a == b).
        assert_eq!(resume_after(Some(k(2)), &k(200), &k(5)), k(2));
        assert_eq!(resume_after(Some(k(100)), &k(200), &k(5)), k(200));
        assert_eq!(resume_after(Some(k(100)), &a, &a), k(100));
        assert_eq!(resume_after(Some(a), &a, &a), a);
    }

    #[test]
    fn pages_of_the_single_store_cover_the_range_once_and_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) =
            crate::store::BlockStore::open(crate::store::StoreConfig::new(dir.path(), 1 << 20))
                .unwrap();
        let mut keys = Vec::new();
        for i in 0..10u8 {
            let data = vec![i; 100];
            let key = BlockKey(*blake3::hash(&data).as_bytes());
            store.put(key, &data, Role::Replica).unwrap();
            keys.push(key);
        }
        keys.sort();
        // The whole ring as the owned range, pages of 4, as the background rounds take them.
        let (a, b) = (BlockKey::ZERO, BlockKey::ZERO);
        let (mut cursor, mut seen) = (None, Vec::new());
        for _ in 0..3 {
            let after = resume_after(cursor, &a, &b);
            let page = store.list_range(&after, &b, Some(4)).unwrap();
            seen.extend(page.keys);
            cursor = page.next;
        }
        assert_eq!(seen, keys);
        assert_eq!(cursor, None, "the last page ends the pass");
        let page = store
            .list_range(&resume_after(cursor, &a, &b), &b, Some(4))
            .unwrap();
        assert_eq!(page.keys, keys[..4], "the next pass starts over");
    }
}
