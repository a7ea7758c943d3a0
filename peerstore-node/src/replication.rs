//! Replication: blocks and signed records on their replica sets (the key's owner and its next
//! r - 1 distinct successors). The ring-facing half writes to a majority and reads from any
//! holder, verifying what it reads; the local half is what the member protocol's block and
//! record requests do on this node. Anti-entropy, clean-up and hand-off, which keep the sets
//! whole as the ring changes, are in [`crate::maintenance`].
//!
//! Every subsystem that stores blocks in the ring (the client service, the entangled layer's
//! parities) calls [`Replication::put_block`] and [`Replication::get_block`] directly.
//!
//! [`deletion`] is the rule every deletion of a copy that others hold follows (minimum age,
//! proofs of possession, a bound per round); [`hostile`] is a test-only mode in which a node
//! lies about what it holds.

pub mod deletion;
pub mod hostile;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use peerstore_proto::member::MAX_PROVE_KEYS;
use peerstore_proto::MaintenanceActivity;
use peerstore_proto::{
    BlockKey, ErrorCode, MemberRequest, MemberResponse, MAX_BLOCK_SIZE, MAX_DIGEST_BUCKETS,
    MAX_LIST_PAGE, MAX_RECORD_SIZE,
};
use tracing::warn;

use crate::ring::{blocking, Ring, RingError};
use crate::store::{BlockStore, RecordTable, RecordUpdate, Role, StoreError};

/// Mutable signed records (users' roots), keyed by the record key.
pub const ROOTS: RecordTable = RecordTable::MUTABLE;

pub use crate::store::tables::RecordDigest;

/// What maintenance moved and dropped since the node started (counters for status): on a
/// settled, idle ring none of them moves.
#[derive(Debug, Default)]
pub struct Activity {
    /// Blocks and signed records pulled by replication anti-entropy.
    pub pulled: AtomicU64,
    /// Blocks and signed records pushed by replication anti-entropy.
    pub pushed: AtomicU64,
    /// Copies outside this node's replica range dropped by the clean-up.
    pub cleaned: AtomicU64,
    /// Replicated copies of parities dropped by replica management (entangled rings): this
    /// node's scrubs, copies that came back (`entangled::scrub::redrop_singles`) and stale
    /// ones (`drop_stale`).
    pub parity_copies_dropped: AtomicU64,
}

impl Activity {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> MaintenanceActivity {
        MaintenanceActivity {
            pulled: self.pulled.load(Ordering::Relaxed),
            pushed: self.pushed.load(Ordering::Relaxed),
            cleaned: self.cleaned.load(Ordering::Relaxed),
            parity_copies_dropped: self.parity_copies_dropped.load(Ordering::Relaxed),
        }
    }
}

pub use crate::placement::RANGE_SLACK;

/// The keys this node may hold in a table kept on `n` nodes (a key's owner and its next
/// `n - 1` distinct successors), with [`RANGE_SLACK`]: `(p, me]` where `p` is this node's
/// `(n + RANGE_SLACK)`-th distinct predecessor. While that predecessor is not known (not yet a
/// member, a ring of few nodes, a short predecessor list) every key is accepted: refusing what
/// a legitimate holder must keep would lose data, accepting a stray record only costs space
/// (which counts against the capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldRange {
    /// `(from, to]`, or `None` for every key.
    range: Option<(BlockKey, BlockKey)>,
}

impl HeldRange {
    /// The range for a node at `me` with predecessors `preds` (nearest first).
    #[must_use]
    pub fn new(me: &chord::Id, preds: &[chord::Id], n: usize) -> HeldRange {
        let need = n.max(1) + RANGE_SLACK;
        let mut distinct: Vec<&chord::Id> = Vec::with_capacity(need);
        for p in preds {
            if p != me && !distinct.contains(&p) {
                distinct.push(p);
                if distinct.len() == need {
                    break;
                }
            }
        }
        let range =
            (distinct.len() == need).then(|| (BlockKey(distinct[need - 1].0), BlockKey(me.0)));
        HeldRange { range }
    }

    /// This node's range for `n` holders, from its current view of the ring.
    pub async fn of(ring: &Ring, n: usize) -> HeldRange {
        match ring.view().await {
            Some(view) if view.member => {
                let preds: Vec<chord::Id> = view.predecessors.iter().map(|p| p.id).collect();
                HeldRange::new(&view.me.id, &preds, n)
            }
            _ => HeldRange { range: None },
        }
    }

    /// Whether `key` is in the range.
    #[must_use]
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.range
            .is_none_or(|(from, to)| crate::store::in_interval(&from, &to, key))
    }

    /// The error for records outside the range.
    #[must_use]
    pub fn refusal(&self, what: &str, refused: usize, of: usize) -> RingError {
        RingError::new(
            ErrorCode::Rejected,
            format!(
                "{refused} of {of} {what} are for keys outside this node's range; they were not \
                 stored (send them to the key's holders)"
            ),
        )
    }
}

/// Blocks and records on replica sets.
pub struct Replication {
    pub ring: Arc<Ring>,
    pub store: Arc<BlockStore>,
    /// The single copies of scrubbed parities (entangled storage, `<data-dir>/single`): keys
    /// held there are settled, and the anti-entropy of `store` neither pulls nor pushes them
    /// ([`crate::sync::plan_settled`]). `None`: nothing is settled.
    pub single: Option<Arc<BlockStore>>,
    /// What maintenance moved and dropped since the node started (for status).
    pub activity: Activity,
    /// Set when this node starts to leave the ring gracefully: from then on it takes no
    /// single copy, proves none and says it holds none (`entangled`), so no other node drops
    /// a single copy because this one holds it (it would leave with it).
    pub leaving: std::sync::atomic::AtomicBool,
}

impl Replication {
    /// Whether this node is leaving the ring gracefully.
    #[must_use]
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Replication {
    /// Stores a block on its replica set; returns how many members hold it durably once a
    /// majority does (the rest complete in the background).
    pub async fn put_block(&self, key: BlockKey, data: Vec<u8>) -> Result<u32, RingError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(RingError::bad_request(format!(
                "block of {} bytes exceeds {MAX_BLOCK_SIZE}",
                data.len()
            )));
        }
        if BlockKey::of(&data) != key {
            return Err(RingError::bad_request("block bytes do not hash to its key"));
        }
        let set = self.ring.replica_set(&key).await?;
        let need = set.len() / 2 + 1;
        // Every replica gets its own copy of the bytes but the last, which takes the original.
        let mut data = Some(data);
        let n = set.len();
        let calls = set
            .into_iter()
            .enumerate()
            .map(|(i, to)| {
                let bytes = if i + 1 == n {
                    data.take().unwrap_or_default()
                } else {
                    data.clone().unwrap_or_default()
                };
                (to, MemberRequest::StoreLocal { key, data: bytes })
            })
            .collect();
        let out = self
            .ring
            .call_quorum(calls, need, |r| matches!(r, MemberResponse::Ok))
            .await;
        let ok = out.ok.len();
        if ok >= need {
            return Ok(ok as u32);
        }
        let full = out
            .errors
            .iter()
            .filter(|(_, e)| e.code == ErrorCode::Full)
            .count();
        let last = out.worst().map(|e| e.message.clone()).unwrap_or_default();
        if full > 0 && full + ok >= need {
            Err(RingError::new(
                ErrorCode::Full,
                format!("the replica set of {key} has no room ({last})"),
            ))
        } else {
            Err(RingError::unavailable(format!(
                "block {key} reached only {ok} of the {need} replicas needed: {last}; retry"
            )))
        }
    }

    /// Reads a block: this node's copy if it has one (content addressed and verified on
    /// read, so right whoever owns the key), else the first member of its replica set that
    /// serves bytes hashing to the key. `None` if no member has it.
    pub async fn get_block(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        if let Ok(Some(data)) = self.fetch_local(key).await {
            return Ok(Some(data));
        }
        let set = self.ring.replica_set(&key).await?;
        let mut last = None;
        for to in set.iter().filter(|a| *a != self.ring.me()) {
            match self.ring.call(to, MemberRequest::FetchLocal { key }).await {
                Ok(MemberResponse::Block { data }) if BlockKey::of(&data) == key => {
                    return Ok(Some(data))
                }
                Ok(MemberResponse::Block { .. }) => {
                    warn!(%key, peer = %to.peer, "replica served a block that fails its hash");
                }
                Ok(MemberResponse::NotFound) => {}
                Ok(other) => last = Some(RingError::unexpected(&other)),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Stores a signed record on its replica set (a majority must take it; a refusal by any
    /// member, a record that is not newer than what it has, refuses the update).
    pub async fn put_record(&self, key: BlockKey, record: Vec<u8>) -> Result<u32, RingError> {
        if record.len() > MAX_RECORD_SIZE {
            return Err(RingError::bad_request("record too large"));
        }
        check_record(&key, &record, None).map_err(|e| RingError::new(ErrorCode::Rejected, e))?;
        let set = self.ring.replica_set(&key).await?;
        let need = set.len() / 2 + 1;
        let calls: Vec<_> = set
            .iter()
            .map(|to| {
                let record = record.clone();
                (to.clone(), MemberRequest::StoreRecordLocal { key, record })
            })
            .collect();
        let all = calls.len();
        let out = self
            .ring
            .call_quorum(calls, all, |r| matches!(r, MemberResponse::Ok))
            .await;
        if let Some((_, e)) = out
            .errors
            .iter()
            .find(|(_, e)| e.code == ErrorCode::Rejected)
        {
            return Err(e.clone());
        }
        let ok = out.ok.len();
        if ok >= need {
            Ok(ok as u32)
        } else {
            let last = out.worst().map(|e| e.message.clone()).unwrap_or_default();
            Err(RingError::unavailable(format!(
                "record stored on {ok} of {need} replicas needed: {last}"
            )))
        }
    }

    /// Reads a signed record: the newest valid one any member of its replica set has (a
    /// replica that missed an update must not roll the user back).
    pub async fn get_record(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        let set = self.ring.replica_set(&key).await?;
        let calls: Vec<_> = set
            .iter()
            .map(|to| (to.clone(), MemberRequest::FetchRecordLocal { key }))
            .collect();
        let all = calls.len();
        let out = self.ring.call_quorum(calls, all, |_| true).await;
        let mut valid: Vec<(u64, Vec<u8>)> = Vec::new();
        for (_, answer) in out.ok {
            if let MemberResponse::Record { record } = answer {
                if let Ok(seq) = check_record(&key, &record, None) {
                    valid.push((seq, record));
                }
            }
        }
        let best = newest_record(valid);
        match best {
            Some((_, record)) => Ok(Some(record)),
            None if out.errors.len() == set.len() => {
                Err(RingError::unavailable("no replica of the record answered"))
            }
            None => Ok(None),
        }
    }

    /// Stores a block on this node only.
    pub async fn store_local(
        &self,
        key: BlockKey,
        data: Vec<u8>,
        role: Role,
    ) -> Result<(), RingError> {
        if hostile::liar() {
            return Ok(()); // acknowledged, not stored
        }
        let store = self.store.clone();
        blocking(move || store.put(key, &data, role).map(|_| ())).await
    }

    /// This node's copy of a block. A copy that failed verification is dropped by the store
    /// and reads as absent (anti-entropy brings it back).
    pub async fn fetch_local(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        let store = self.store.clone();
        blocking(move || match store.get(&key) {
            Err(e) if e.needs_repair().is_some() => {
                warn!(error = %e, "local block lost; anti-entropy will restore it");
                Ok(None)
            }
            other => other,
        })
        .await
    }

    /// Stores a signed record on this node only, if it may replace what the node has.
    pub async fn store_record_local(
        &self,
        key: BlockKey,
        record: Vec<u8>,
    ) -> Result<(), RingError> {
        if record.len() > MAX_RECORD_SIZE {
            return Err(RingError::bad_request("record too large"));
        }
        let store = self.store.clone();
        let (outcome, refusal) = blocking(move || {
            let mut refusal = None;
            let r =
                store.record_update(ROOTS, &key.0, &record, |current, new| {
                    match check_record(&key, new, current) {
                        Ok(_) => true,
                        Err(e) => {
                            refusal = Some(e);
                            false
                        }
                    }
                })?;
            Ok((r, refusal))
        })
        .await?;
        match outcome {
            RecordUpdate::Stored => Ok(()),
            RecordUpdate::Rejected { .. } => Err(RingError::new(
                ErrorCode::Rejected,
                refusal.unwrap_or_else(|| "record update refused".into()),
            )),
        }
    }

    /// This node's copy of a signed record.
    pub async fn fetch_record_local(&self, key: BlockKey) -> Result<Option<Vec<u8>>, RingError> {
        let store = self.store.clone();
        blocking(move || store.record_get(ROOTS, &key.0)).await
    }

    /// Answers the member protocol's block and record requests.
    pub async fn serve_member(&self, request: MemberRequest) -> Result<MemberResponse, RingError> {
        let store = self.store.clone();
        Ok(match request {
            MemberRequest::StoreLocal { key, data } => {
                self.store_local(key, data, Role::Replica).await?;
                MemberResponse::Ok
            }
            MemberRequest::StoreLocalBatch { sizes, data } => {
                if hostile::liar() {
                    return Ok(MemberResponse::Ok); // acknowledged, not stored
                }
                store_batch(store, sizes, data, Role::Replica).await?;
                MemberResponse::Ok
            }
            MemberRequest::FetchLocal { key } => match self.fetch_local(key).await? {
                Some(data) => MemberResponse::Block { data },
                None => MemberResponse::NotFound,
            },
            MemberRequest::RangeDigest { from, to, buckets } => {
                if buckets == 0 || buckets > MAX_DIGEST_BUCKETS {
                    return Err(RingError::bad_request(format!(
                        "buckets must be 1..={MAX_DIGEST_BUCKETS}"
                    )));
                }
                let buckets = blocking(move || {
                    store.bucket_digests(&BlockKey(from.0), &BlockKey(to.0), u32::from(buckets))
                })
                .await?;
                MemberResponse::Digests {
                    buckets: buckets
                        .into_iter()
                        .map(|d| (d.digest.count, d.digest.digest))
                        .collect(),
                }
            }
            MemberRequest::ListRange {
                from,
                to,
                after,
                limit,
            } => {
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                // Continuing after a cursor is listing (cursor, to].
                let start = after.unwrap_or(BlockKey(from.0));
                let page = blocking(move || store.list_range(&start, &BlockKey(to.0), Some(limit)))
                    .await?;
                MemberResponse::Keys {
                    more: page.next.is_some(),
                    keys: page.keys,
                }
            }
            MemberRequest::HasLocal { keys } => {
                if keys.len() > MAX_LIST_PAGE as usize {
                    return Err(RingError::bad_request(format!(
                        "at most {MAX_LIST_PAGE} keys per request"
                    )));
                }
                if hostile::liar() {
                    return Ok(MemberResponse::Has {
                        present: vec![true; keys.len()],
                    });
                }
                let present = blocking(move || keys.iter().map(|k| store.has(k)).collect()).await?;
                MemberResponse::Has { present }
            }
            MemberRequest::Prove { keys } => {
                if keys.len() > MAX_PROVE_KEYS {
                    return Err(RingError::bad_request(format!(
                        "at most {MAX_PROVE_KEYS} challenges per request"
                    )));
                }
                if hostile::liar() {
                    return Ok(MemberResponse::Proofs {
                        proofs: hostile::random_proofs(keys.len()),
                    });
                }
                // Over the bytes on disk, verified against the key on the way (a damaged copy
                // reads as absent and proves nothing).
                let proofs = blocking(move || {
                    Ok(deletion::prove_with(&keys, |k| store.get(k).ok().flatten()))
                })
                .await?;
                MemberResponse::Proofs { proofs }
            }
            MemberRequest::StoreRecordLocal { key, record } => {
                // Another member pushes: only records this node holds (its replica range).
                let range = HeldRange::of(&self.ring, self.ring.replication).await;
                if !range.contains(&key) {
                    return Err(range.refusal("signed records", 1, 1));
                }
                self.store_record_local(key, record).await?;
                MemberResponse::Ok
            }
            MemberRequest::FetchRecordLocal { key } => match self.fetch_record_local(key).await? {
                Some(record) => MemberResponse::Record { record },
                None => MemberResponse::NotFound,
            },
            MemberRequest::ListRecords { from, to, after } => {
                let (records, more) =
                    blocking(move || list_record_digests(&store, from, to, after)).await?;
                MemberResponse::RecordDigests { records, more }
            }
            other => {
                return Err(RingError::bad_request(format!(
                    "not a block or record request: {}",
                    other.kind()
                )))
            }
        })
    }
}

/// Stores the blocks of a batch request (`MemberRequest::StoreLocalBatch`,
/// `EntRequest::StoreSingleBatch`) in `store` with one index commit. `Ok` once every block is
/// durable; the first failure otherwise (the sender stores what is missing one by one).
pub async fn store_batch(
    store: Arc<BlockStore>,
    sizes: Vec<(BlockKey, u32)>,
    data: Vec<u8>,
    role: Role,
) -> Result<(), RingError> {
    blocking(move || {
        // The sizes must describe the bytes exactly (`BadRequest` otherwise, nothing stored).
        let blocks = peerstore_proto::split_batch(&sizes, &data)
            .map_err(crate::store::StoreError::InvalidArgument)?;
        BlockStore::all_held(store.put_batch(&blocks, role))
    })
    .await
}

/// Keys and digests of the records held in (from, to], one page.
pub fn list_record_digests(
    store: &BlockStore,
    from: chord::Id,
    to: chord::Id,
    after: Option<BlockKey>,
) -> Result<(Vec<RecordDigest>, bool), StoreError> {
    // A ring-range scan of the table (it starts at `from`, not at the table's start), hashing
    // each record in place: a page holds digests only.
    crate::store::tables::digest_page(store, ROOTS, from, to, after)
}

/// Checks a signed record against its storage key and, if given, the record it would replace.
/// Returns the record's sequence number.
/// The record a read returns from the replicas' (valid) answers: the highest sequence number;
/// among different records of that number (two writers raced; the loser reached a minority
/// before it was refused), the one most replicas hold, then the greatest bytes, so that every
/// reader that sees the same answers returns the same record, and the one a majority accepted
/// when it sees a majority.
#[must_use]
pub fn newest_record(answers: Vec<(u64, Vec<u8>)>) -> Option<(u64, Vec<u8>)> {
    let top = answers.iter().map(|(s, _)| *s).max()?;
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (s, r) in answers {
        if s == top {
            *counts.entry(r).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|(ra, na), (rb, nb)| na.cmp(nb).then(ra.cmp(rb)))
        .map(|(r, _)| (top, r))
}

pub use crate::chains::check_record;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u64) -> chord::Id {
        chord::Id::from_u64(v)
    }

    fn key(v: u64) -> BlockKey {
        BlockKey(id(v).0)
    }

    #[test]
    fn a_read_returns_the_record_most_replicas_hold_at_the_newest_number() {
        let (a, b, c) = (vec![1u8], vec![2u8], vec![0u8]);
        // The winner on two replicas, the refused loser on one: the winner, in any order.
        for answers in [
            vec![(5, a.clone()), (5, b.clone()), (5, a.clone())],
            vec![(5, b.clone()), (5, a.clone()), (5, a.clone())],
        ] {
            assert_eq!(newest_record(answers), Some((5, a.clone())));
        }
        // A newer number wins whatever the counts; a tie is broken the same way everywhere.
        assert_eq!(
            newest_record(vec![(4, a.clone()), (4, a.clone()), (6, c.clone())]),
            Some((6, c.clone()))
        );
        assert_eq!(
            newest_record(vec![(5, a.clone()), (5, b.clone())]),
            newest_record(vec![(5, b.clone()), (5, a.clone())])
        );
        assert_eq!(newest_record(Vec::new()), None);
    }

    #[test]
    fn records_outside_the_held_range_are_refused_with_slack() {
        // Nodes at 10, 20, ..., 100; this one at 100, predecessors nearest first.
        let me = id(100);
        let preds: Vec<chord::Id> = (1..=9).rev().map(|i| id(i * 10)).collect();
        // r = 2: holds (80, 100]; with the slack of 2, (60, 100].
        let r = HeldRange::new(&me, &preds, 2);
        for k in [61, 75, 81, 100] {
            assert!(r.contains(&key(k)), "{k}");
        }
        for k in [60, 30, 101, 5000] {
            assert!(!r.contains(&key(k)), "{k}");
        }
        let e = r.refusal("signed records", 1, 1);
        assert_eq!(e.code, ErrorCode::Rejected);
        assert!(
            e.message.contains("outside this node's range"),
            "{}",
            e.message
        );
        // The range wraps past zero for a node near the start of the ring.
        let r = HeldRange::new(&id(10), &[id(0), id(100), id(90), id(80)], 1);
        assert!(r.contains(&key(5)) && r.contains(&key(95)) && r.contains(&key(10)));
        assert!(!r.contains(&key(85)) && !r.contains(&key(11)));
    }

    #[test]
    fn every_key_is_accepted_while_the_range_is_unknown() {
        let me = id(100);
        // Too few distinct predecessors known (duplicates and self do not count).
        let preds = [id(90), id(90), id(100), id(80), id(70)];
        let r = HeldRange::new(&me, &preds, 2);
        assert!(r.contains(&key(1)) && r.contains(&key(u64::MAX)));
        let r = HeldRange::new(&me, &[], 1);
        assert!(r.contains(&key(1)));
    }
}
