//! Anti-entropy, once for every replicated table (in the spirit of Garage's `TableSyncer`).
//!
//! The owner of a key range compares what it holds in the range with what each of the range's
//! other holders holds, and moves items both ways until all hold the same. A [`Table`] says how
//! to list, fetch and store one kind of item, here or on a peer; [`round`] does the rest:
//!
//! 1. optionally, bucket digests (count + hash per sub-range): equal buckets cost one small
//!    message and are not listed;
//! 2. `(key, digest)` listings of the range (or of the differing buckets) here and on every peer;
//! 3. a pure [`plan`]: which keys to fetch from which peers, which keys each peer may lack;
//! 4. pull (fetch from peers, store here: the local store applies the table's rule, whether
//!    that is "content addressed", "newer signed record wins" or "union merge"), then push
//!    (fetch here, skip what a peer already has in the same version, store there).
//!
//! The plan is a function of the listings only, so it is tested without a network
//! ([`tests`]); the tables are in [`crate::maintenance`] (blocks, signed records) and
//! [`crate::entangled::meta`] / [`crate::entangled::refs`] (the entanglement's metadata).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use peerstore_proto::{BlockKey, NodeAddr};
use tracing::debug;

use crate::ring::RingError;

/// Digest of each key's item, by key.
pub type Digests = BTreeMap<BlockKey, [u8; 32]>;

/// Per-bucket (count, digest) of a range split into equal sub-ranges.
pub type Buckets = Vec<(u64, [u8; 32])>;

/// Which holders of a differing key to fetch it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Items are content addressed (equal keys mean equal items): one holder is enough.
    AnyHolder,
    /// Versions differ and the local store keeps the right one (the newer signed record, or
    /// the union of merged entries): fetch every version that differs from ours.
    EveryVersion,
}

/// One kind of replicated item, as anti-entropy sees it. `peer == None` means this node.
pub trait Table: Sync {
    /// What is moved.
    type Item: Send + Sync;
    /// How differing keys are pulled.
    const PULL: Pull;
    /// For logs.
    fn name(&self) -> &'static str;
    /// Bucket digests of (from, to] split into `n` equal sub-ranges, if the table keeps them
    /// (`Ok(None)` if it does not: the whole range is listed).
    fn buckets(
        &self,
        peer: Option<&NodeAddr>,
        from: chord::Id,
        to: chord::Id,
        n: u16,
    ) -> impl Future<Output = Result<Option<Buckets>, RingError>> + Send;
    /// Every key held in (from, to], with its item's digest.
    fn list(
        &self,
        peer: Option<&NodeAddr>,
        from: chord::Id,
        to: chord::Id,
    ) -> impl Future<Output = Result<Digests, RingError>> + Send;
    /// The items held at `keys` (verified against their keys; missing ones left out).
    fn fetch(
        &self,
        peer: Option<&NodeAddr>,
        keys: Vec<BlockKey>,
    ) -> impl Future<Output = Vec<(BlockKey, Self::Item)>> + Send;
    /// Stores items; returns how many were taken.
    fn store(
        &self,
        peer: Option<&NodeAddr>,
        items: Vec<(BlockKey, Self::Item)>,
    ) -> impl Future<Output = u64> + Send;
    /// The digest a listing gives for this item.
    fn digest(&self, key: &BlockKey, item: &Self::Item) -> [u8; 32];
    /// Keys in (from, to] that this node holds settled, outside the table (the single copies
    /// of scrubbed parities): a round neither pulls nor pushes them, whatever the peers list
    /// ([`plan_settled`]). None by default.
    fn settled(
        &self,
        _from: chord::Id,
        _to: chord::Id,
    ) -> impl Future<Output = Result<BTreeSet<BlockKey>, RingError>> + Send {
        async { Ok(BTreeSet::new()) }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub pushed: u64,
    pub pulled: u64,
    pub errors: u64,
}

impl SyncReport {
    #[must_use]
    pub fn merge(self, o: SyncReport) -> SyncReport {
        SyncReport {
            pushed: self.pushed + o.pushed,
            pulled: self.pulled + o.pulled,
            errors: self.errors + o.errors,
        }
    }
}

/// What one round of anti-entropy does, from the listings of this node and its peers (`None`
/// for a peer that did not answer: it gets nothing and gives nothing this round).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys to fetch, each with the peers to fetch it from.
    pub pull: BTreeMap<BlockKey, Vec<usize>>,
    /// Per peer, the keys it lacks or holds in another version (among those this node holds
    /// or pulls). The push skips those whose version equals the peer's after the pull.
    pub push: Vec<Vec<BlockKey>>,
}

/// Plans a round (see [`Plan`]). `push_only` plans no pulls (a leaving node's hand-off).
#[must_use]
pub fn plan(mine: &Digests, theirs: &[Option<Digests>], pull: Pull, push_only: bool) -> Plan {
    plan_settled(mine, theirs, pull, push_only, &BTreeSet::new())
}

/// As [`plan`], leaving out the keys this node holds `settled` (a parity kept as one copy in
/// its owner's single-copy store): they are neither pulled (our listing lacks them, a peer's
/// stale replica is no reason to bring a copy back) nor pushed (a replica of ours, if any, is
/// not spread again). Stale replicas of them are dropped by their own rule
/// (`entangled::scrub`), never re-spread first: spreading one gives it a fresh arrival time,
/// which keeps it from being dropped for the minimum age, round after round.
#[must_use]
pub fn plan_settled(
    mine: &Digests,
    theirs: &[Option<Digests>],
    pull: Pull,
    push_only: bool,
    settled: &BTreeSet<BlockKey>,
) -> Plan {
    let mut pulls: BTreeMap<BlockKey, Vec<usize>> = BTreeMap::new();
    if !push_only {
        for (i, t) in theirs.iter().enumerate() {
            for (k, d) in t.iter().flatten() {
                let differs = match mine.get(k) {
                    None => true,
                    Some(m) => pull == Pull::EveryVersion && m != d,
                };
                if !differs || settled.contains(k) {
                    continue;
                }
                let from = pulls.entry(*k).or_default();
                if pull == Pull::EveryVersion || from.is_empty() {
                    from.push(i);
                }
            }
        }
    }
    let push = theirs
        .iter()
        .map(|t| match t {
            None => Vec::new(),
            Some(t) => mine
                .keys()
                .chain(pulls.keys())
                .filter(|k| !settled.contains(k))
                .filter(|k| match (t.get(k), mine.get(k)) {
                    (None, _) => true,
                    // A key we pulled may have changed our version: compare at push time.
                    (Some(theirs), Some(ours)) => theirs != ours || pulls.contains_key(k),
                    (Some(_), None) => pulls.contains_key(k) && pull == Pull::EveryVersion,
                })
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        })
        .collect();
    Plan { pull: pulls, push }
}

/// The sub-ranges (start, end] of a bucket split whose digest differs from at least one
/// peer's, neighbours joined (one listing, paged, instead of one per bucket). All of
/// (from, to] when the table keeps no buckets or the splits disagree.
#[must_use]
pub fn differing_buckets(
    from: chord::Id,
    to: chord::Id,
    mine: &Buckets,
    theirs: &[Option<Buckets>],
) -> Vec<(chord::Id, chord::Id)> {
    let n = mine.len();
    if n == 0 || theirs.iter().flatten().any(|t| t.len() != n) {
        return vec![(from, to)];
    }
    let split = crate::store::bucket_bounds(&BlockKey(from.0), &BlockKey(to.0), n as u32);
    let mut out: Vec<(chord::Id, chord::Id)> = Vec::new();
    let mut last: Option<usize> = None;
    for i in (0..n).filter(|&i| theirs.iter().flatten().any(|t| t[i] != mine[i])) {
        let (a, b) = (chord::Id(split[i].0 .0), chord::Id(split[i].1 .0));
        match out.last_mut() {
            Some(prev) if last == Some(i.wrapping_sub(1)) => prev.1 = b,
            _ => out.push((a, b)),
        }
        last = Some(i);
    }
    out
}

/// Most keys one listing may hold: a peer that pages on without end is cut off.
pub const MAX_LISTED: usize = 1 << 22;

/// Checks the next page of a paged listing: its cursor moves forward (a peer that answers the
/// same page again cannot loop us) and the listing stays under [`MAX_LISTED`] keys.
pub fn check_page(
    after: Option<BlockKey>,
    page_last: Option<BlockKey>,
    listed: usize,
) -> Result<(), RingError> {
    if listed > MAX_LISTED {
        return Err(RingError::bad_request(format!(
            "listing of more than {MAX_LISTED} keys refused"
        )));
    }
    match (after, page_last) {
        (Some(a), Some(l)) if l <= a => Err(RingError::bad_request(
            "listing page does not move past its cursor",
        )),
        _ => Ok(()),
    }
}

/// Items moved per fetch or store call.
const BATCH: usize = 256;
/// Buckets asked for by tables that keep them.
pub const BUCKETS: u16 = 64;

/// One anti-entropy round of `table` over (from, to] between this node and `peers`. With
/// `push_only` nothing is pulled (the hand-off of a leaving node, `from == to`: everything).
pub async fn round<T: Table>(
    table: &T,
    peers: &[NodeAddr],
    from: chord::Id,
    to: chord::Id,
    push_only: bool,
) -> SyncReport {
    let mut report = SyncReport::default();
    if peers.is_empty() {
        return report;
    }
    // 1. Bucket digests: only the sub-ranges that differ somewhere are listed.
    let ranges = match table.buckets(None, from, to, BUCKETS).await {
        Ok(Some(mine)) => {
            let theirs: Vec<Option<Buckets>> = futures::future::join_all(
                peers
                    .iter()
                    .map(|p| table.buckets(Some(p), from, to, BUCKETS)),
            )
            .await
            .into_iter()
            .map(|r| match r {
                Ok(b) => b,
                Err(e) => {
                    debug!(table = table.name(), error = %e, "bucket digests failed");
                    report.errors += 1;
                    None
                }
            })
            .collect();
            if theirs.iter().all(Option::is_none) {
                return report;
            }
            differing_buckets(from, to, &mine, &theirs)
        }
        Ok(None) => vec![(from, to)],
        Err(e) => {
            debug!(table = table.name(), error = %e, "local bucket digests failed");
            report.errors += 1;
            return report;
        }
    };
    for (a, b) in ranges {
        report = report.merge(sync_range(table, peers, a, b, push_only).await);
    }
    report
}

/// Sends this node's items at `keys` to `peer`, but those it already holds in the same
/// version; returns how many it took.
async fn push_versions<T: Table>(
    table: &T,
    peer: &NodeAddr,
    theirs: Option<&Digests>,
    keys: &[BlockKey],
) -> u64 {
    let mut sent = 0u64;
    for chunk in keys.chunks(BATCH) {
        let items: Vec<(BlockKey, T::Item)> = table
            .fetch(None, chunk.to_vec())
            .await
            .into_iter()
            .filter(|(k, item)| theirs.and_then(|t| t.get(k)) != Some(&table.digest(k, item)))
            .collect();
        if !items.is_empty() {
            sent += table.store(Some(peer), items).await;
        }
    }
    sent
}

/// Sends this node's items at `keys` to `peer`; returns how many it took.
pub async fn push_keys<T: Table>(table: &T, peer: &NodeAddr, keys: Vec<BlockKey>) -> u64 {
    let items = table.fetch(None, keys).await;
    if items.is_empty() {
        return 0;
    }
    table.store(Some(peer), items).await
}

async fn sync_range<T: Table>(
    table: &T,
    peers: &[NodeAddr],
    from: chord::Id,
    to: chord::Id,
    push_only: bool,
) -> SyncReport {
    let mut report = SyncReport::default();
    let mine = match table.list(None, from, to).await {
        Ok(d) => d,
        Err(e) => {
            debug!(table = table.name(), error = %e, "local listing failed");
            report.errors += 1;
            return report;
        }
    };
    let theirs: Vec<Option<Digests>> =
        futures::future::join_all(peers.iter().map(|p| table.list(Some(p), from, to)))
            .await
            .into_iter()
            .map(|r| {
                r.map_err(|e| debug!(table = table.name(), error = %e, "listing failed"))
                    .ok()
            })
            .collect();
    report.errors += theirs.iter().filter(|t| t.is_none()).count() as u64;
    // A leaving node hands off everything it holds, settled keys included.
    let settled = if push_only {
        BTreeSet::new()
    } else {
        match table.settled(from, to).await {
            Ok(s) => s,
            Err(e) => {
                // Without it the round could bring back what was settled: skip the range.
                debug!(table = table.name(), error = %e, "settled keys not listed");
                report.errors += 1;
                return report;
            }
        }
    };
    let plan = plan_settled(&mine, &theirs, T::PULL, push_only, &settled);
    // Pull, grouped by peer.
    let mut by_peer: BTreeMap<usize, Vec<BlockKey>> = BTreeMap::new();
    for (k, from) in &plan.pull {
        for i in from {
            by_peer.entry(*i).or_default().push(*k);
        }
    }
    for (i, keys) in by_peer {
        for chunk in keys.chunks(BATCH) {
            let items = table.fetch(Some(&peers[i]), chunk.to_vec()).await;
            if items.len() < chunk.len() {
                report.errors += (chunk.len() - items.len()) as u64;
            }
            if !items.is_empty() {
                report.pulled += table.store(None, items).await;
            }
        }
    }
    // Push what each peer lacks or holds in another version, all peers at once.
    let mut pushes = Vec::with_capacity(peers.len());
    for (i, keys) in plan.push.iter().enumerate() {
        pushes.push(push_versions(table, &peers[i], theirs[i].as_ref(), keys));
    }
    let pushed = futures::future::join_all(pushes).await;
    report.pushed += pushed.into_iter().sum::<u64>();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> BlockKey {
        BlockKey([i; 32])
    }

    fn digests(items: &[(u8, u8)]) -> Digests {
        items.iter().map(|&(key, v)| (k(key), [v; 32])).collect()
    }

    /// Applies plans between simulated holders until nothing moves; holder 0 is the owner.
    /// `merge` is how a holder takes a version (content addressed: keep; newest: max).
    fn converge(holders: &mut [Digests], down: &BTreeSet<usize>, pull: Pull) -> usize {
        let take = |have: &mut Digests, key: BlockKey, v: [u8; 32]| match have.get(&key) {
            Some(h) if pull == Pull::AnyHolder || *h >= v => false,
            _ => {
                have.insert(key, v);
                true
            }
        };
        for round in 1..=5 {
            let mine = holders[0].clone();
            let theirs: Vec<Option<Digests>> = (1..holders.len())
                .map(|i| (!down.contains(&i)).then(|| holders[i].clone()))
                .collect();
            let p = plan(&mine, &theirs, pull, false);
            let mut moved = false;
            for (key, from) in &p.pull {
                for i in from {
                    let v = holders[i + 1][key];
                    moved |= take(&mut holders[0], *key, v);
                }
            }
            for (i, keys) in p.push.iter().enumerate() {
                assert!(
                    !down.contains(&(i + 1)) || keys.is_empty(),
                    "nothing to a peer that is down"
                );
                for key in keys {
                    let v = holders[0][key];
                    moved |= take(&mut holders[i + 1], *key, v);
                }
            }
            if !moved {
                return round - 1;
            }
        }
        99
    }

    #[test]
    fn content_addressed_items_missing_anywhere_come_back_in_one_round() {
        let m = 10;
        // Each item survives on exactly one holder, a different one each, the owner included.
        let mut holders: Vec<Digests> = vec![Digests::new(); m];
        for i in 0..5u8 {
            holders[(usize::from(i) * 3) % m].insert(k(i), [i; 32]);
        }
        assert_eq!(converge(&mut holders, &BTreeSet::new(), Pull::AnyHolder), 1);
        assert!(holders.iter().all(|h| h.len() == 5));
        // A holder that is down is skipped, and caught up once it answers.
        let mut holders: Vec<Digests> = vec![Digests::new(); m];
        holders[m - 1].insert(k(0), [0; 32]);
        let down: BTreeSet<usize> = [4].into_iter().collect();
        converge(&mut holders, &down, Pull::AnyHolder);
        for (i, h) in holders.iter().enumerate() {
            assert_eq!(h.contains_key(&k(0)), i != 4, "holder {i}");
        }
        assert_eq!(converge(&mut holders, &BTreeSet::new(), Pull::AnyHolder), 1);
        assert!(holders.iter().all(|h| h.contains_key(&k(0))));
    }

    #[test]
    fn content_addressed_keys_are_pulled_from_one_holder_only() {
        let mine = digests(&[(1, 1)]);
        let theirs = vec![Some(digests(&[(2, 2)])), Some(digests(&[(1, 1), (2, 2)]))];
        let p = plan(&mine, &theirs, Pull::AnyHolder, false);
        assert_eq!(p.pull, [(k(2), vec![0])].into_iter().collect());
        assert_eq!(p.push, vec![vec![k(1)], vec![]]);
    }

    #[test]
    fn the_newest_version_reaches_every_holder() {
        // Versions as digests: a higher one is newer. Every holder has another version of
        // key 7, one lacks it, one is down and keeps its old version until it answers.
        let mut holders = vec![
            digests(&[(7, 3)]),
            digests(&[(7, 9)]),
            digests(&[(7, 1), (8, 1)]),
            digests(&[]),
            digests(&[(7, 2)]),
        ];
        let down: BTreeSet<usize> = [4].into_iter().collect();
        assert_eq!(converge(&mut holders, &down, Pull::EveryVersion), 1);
        for (i, h) in holders.iter().enumerate().take(4) {
            assert_eq!(h[&k(7)], [9; 32], "holder {i}");
            assert_eq!(h[&k(8)], [1; 32], "holder {i}");
        }
        assert_eq!(holders[4][&k(7)], [2; 32]);
        converge(&mut holders, &BTreeSet::new(), Pull::EveryVersion);
        assert!(holders.iter().all(|h| h[&k(7)] == [9; 32]));
    }

    #[test]
    fn a_hand_off_pushes_everything_and_pulls_nothing() {
        let mine = digests(&[(1, 1), (2, 2)]);
        let theirs = vec![Some(digests(&[(2, 2), (3, 3)])), None];
        let p = plan(&mine, &theirs, Pull::EveryVersion, true);
        assert!(p.pull.is_empty());
        assert_eq!(p.push, vec![vec![k(1)], vec![]]);
    }

    #[test]
    fn settled_keys_are_neither_pulled_nor_pushed() {
        // Key 1: a parity this node (its owner) keeps as its single copy; peer 0 still holds a
        // stale replica, peer 1 dropped its own. Key 3: the same, with a stale replica of ours
        // beside the single copy. Key 2: an ordinary block only peer 0 holds.
        let settled: BTreeSet<BlockKey> = [k(1), k(3)].into_iter().collect();
        let mine = digests(&[(3, 3)]);
        let theirs = vec![Some(digests(&[(1, 1), (2, 2)])), Some(digests(&[]))];
        let p = plan_settled(&mine, &theirs, Pull::AnyHolder, false, &settled);
        assert_eq!(p.pull, [(k(2), vec![0])].into_iter().collect());
        assert_eq!(p.push, vec![vec![], vec![k(2)]]);
        // Without them, the stale replica is pulled and spread again.
        let p = plan(&mine, &theirs, Pull::AnyHolder, false);
        assert!(p.pull.contains_key(&k(1)));
        assert_eq!(p.push[1], vec![k(1), k(2), k(3)]);
        // Nothing settled: the same plan as before.
        assert_eq!(
            plan_settled(&mine, &theirs, Pull::AnyHolder, false, &BTreeSet::new()),
            plan(&mine, &theirs, Pull::AnyHolder, false)
        );
    }

    /// An idle entangled ring: the owner keeps a parity as one copy; its two replica peers
    /// still hold stale replicas, each dropped once held for `MIN_AGE` rounds (the minimum age
    /// of verified deletions) and one per round. Returns the round after which no replica is
    /// left (None: still going after 100) and the copies anti-entropy moved.
    fn idle_ring(settled: bool) -> (Option<u32>, u32) {
        const MIN_AGE: u32 = 3;
        let single: BTreeSet<BlockKey> = [k(1)].into_iter().collect();
        let settled = if settled { single } else { BTreeSet::new() };
        let held = |yes: bool| {
            if yes {
                digests(&[(1, 1)])
            } else {
                Digests::new()
            }
        };
        // When each peer received its replica (None: it holds none).
        let mut peers: Vec<Option<u32>> = vec![Some(0), None];
        let mut moved = 0;
        for round in 1..=100 {
            let theirs: Vec<Option<Digests>> =
                peers.iter().map(|a| Some(held(a.is_some()))).collect();
            let p = plan_settled(&held(false), &theirs, Pull::AnyHolder, false, &settled);
            moved += p.pull.len() as u32;
            for (i, keys) in p.push.iter().enumerate() {
                if !keys.is_empty() && peers[i].is_none() {
                    peers[i] = Some(round);
                    moved += 1;
                }
            }
            // The owner drops a pulled replica of its own at once, a peer's once old enough.
            if let Some(i) = peers
                .iter()
                .position(|a| a.is_some_and(|a| round - a >= MIN_AGE))
            {
                peers[i] = None;
            }
            if peers.iter().all(Option::is_none) {
                return (Some(round), moved);
            }
        }
        (None, moved)
    }

    #[test]
    fn stale_replicas_of_single_copies_are_dropped_not_spread_again() {
        // Each drop used to be undone by the next round (the replica pulled back from the other
        // peer and pushed again, arriving anew): it never ended.
        let (done, moved) = idle_ring(false);
        assert_eq!(done, None);
        assert!(moved > 50, "{moved}");
        // Settled: the stale replicas age and go, nothing moves.
        assert_eq!(idle_ring(true), (Some(3), 0));
    }

    #[test]
    fn a_listing_that_does_not_move_or_never_ends_is_cut_off() {
        assert!(check_page(None, Some(k(3)), 10).is_ok());
        assert!(check_page(Some(k(3)), Some(k(4)), 20).is_ok());
        assert!(
            check_page(Some(k(3)), Some(k(3)), 20).is_err(),
            "same page again"
        );
        assert!(
            check_page(Some(k(3)), Some(k(2)), 20).is_err(),
            "cursor moved back"
        );
        assert!(check_page(Some(k(3)), Some(k(4)), MAX_LISTED + 1).is_err());
    }

    #[test]
    fn equal_holders_plan_nothing() {
        let d = digests(&[(1, 1), (2, 2), (3, 3)]);
        for pull in [Pull::AnyHolder, Pull::EveryVersion] {
            let p = plan(&d, &[Some(d.clone()), Some(d.clone())], pull, false);
            assert!(p.pull.is_empty() && p.push.iter().all(Vec::is_empty));
        }
    }

    /// `mine` with the buckets at `changed` different.
    fn other_with(mine: &Buckets, changed: &[usize]) -> Buckets {
        let mut b = mine.clone();
        for &i in changed {
            b[i] = (99, [99; 32]);
        }
        b
    }

    #[test]
    fn only_differing_buckets_are_listed() {
        let (from, to) = (chord::Id([0; 32]), chord::Id([0x80; 32]));
        let mine: Buckets = (0..4).map(|i| (i, [i as u8; 32])).collect();
        let mut other = mine.clone();
        other[2] = (9, [9; 32]);
        let ranges = differing_buckets(from, to, &mine, &[Some(mine.clone()), Some(other), None]);
        assert_eq!(ranges.len(), 1);
        let split = crate::store::bucket_bounds(&BlockKey(from.0), &BlockKey(to.0), 4);
        assert_eq!(
            ranges[0],
            (chord::Id(split[2].0 .0), chord::Id(split[2].1 .0))
        );
        // Neighbours are listed at once.
        let some = other_with(&mine, &[0, 3]);
        let ranges = differing_buckets(
            from,
            to,
            &mine,
            &[Some(some), Some(other_with(&mine, &[2]))],
        );
        let id = |k: BlockKey| chord::Id(k.0);
        assert_eq!(
            ranges,
            vec![
                (id(split[0].0), id(split[0].1)),
                (id(split[2].0), id(split[3].1))
            ]
        );
        let all = other_with(&mine, &[0, 1, 2, 3]);
        assert_eq!(
            differing_buckets(from, to, &mine, &[Some(all)]),
            vec![(from, to)]
        );
        // Splits that disagree (another bucket count): the whole range.
        assert_eq!(
            differing_buckets(from, to, &mine, &[Some(mine[..3].to_vec())]),
            vec![(from, to)]
        );
    }
}
