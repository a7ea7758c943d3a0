//! Parities after the acknowledgement (`ReplicaPolicy::parities_later`, the default of the
//! systematic layout).
//!
//! A backup is acknowledged once what durability needs now is on disk: every source of every
//! codeword with the ring's r replicas (as plain replication would keep the data), the codeword
//! and document records and the reverse references. The codeword's parities (2 bytes per byte
//! at (4,8,8)) are computed with the rest but kept in this node's memory, within a budget, and
//! stored as single copies on their owners once the node's clients pause ([`seal`], run by the
//! entangled worker through the same [`super::policy::Gate`] as replica management: it waits
//! while clients move data here, and never longer than `max_wait_ms`). A backup then writes
//! about what a plain one writes (3 bytes per byte instead of 5), and the rest follows when the
//! machine is idle, as cold-data erasure coding does (Azure's sealed extents, f4).
//!
//! What keeps this safe:
//! - **Nothing needs the pending parities to read or to survive r - 1 failures**: the sources
//!   are stored with r replicas and a healthy read of a systematic codeword is its sources.
//! - **Every codeword can be sealed again from what is stored.** While parities are pending, the
//!   encoder points new codewords only at blocks already stored (sources of the recent
//!   documents, and the pool's blocks, which were fetched from their holders), so a codeword's
//!   `s` sources and `t` pointers, `s + t` symbols, are always on disk and decode it. If the
//!   encoder dies with parities in memory, the owners of the codeword records rebuild them in the
//!   repair worker ([`super::repair`]), which leaves a codeword's missing blocks alone while
//!   the codeword is younger than [`grace_us`] (its parities may still be on their way).
//! - **Replica management never takes a source down to one copy before its codeword's parities
//!   are stored** ([`Sealed`], checked in `scrub::scrub_local`).
//! - **The memory is bounded** (`later_mib`): a document whose parities do not fit has them
//!   stored before its acknowledgement, as with `--fresh-parities single`.
//! - A node that stops gracefully stores its pending parities before it hands off; one killed
//!   resumes them when it restarts, from its log of the documents waiting
//!   ([`super::pending_log`]).
//!
//! Cost in durability (`entangle-sim --later`, systematic (4,8,8), 100 nodes, 20 seeds, % of
//! documents lost at 30 / 40 / 50 % of nodes dead): 0.0042 / 0.043 / 0.32 against 0.0028 /
//! 0.026 / 0.21 when recent parities can be pointers too, and 3.3 / 6.4 / 12.3 for 3-way
//! replication (docs/ENTANGLEMENT-RING.md, "Parities after the acknowledgement").

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::{debug, warn};

use super::batch::{store_blocks, Copies};
use super::layer::{Entangled, Held};
use super::pending_log::PendingLog;
use peerstore_proto::{lock, BlockKey};

/// Parities sealed per batch of [`seal`] at most (bytes): one round of requests per holder.
const SEAL_BATCH: usize = 32 << 20;

/// What a document whose parities were not kept counts towards a batch, per codeword (its
/// parities at (4,8,8) with B = 256 KiB: 2 MiB).
const REFORM_WEIGHT: usize = 2 << 20;

/// Documents waiting at most; beyond, a write stores its parities before its acknowledgement.
const MAX_JOBS: usize = 16_384;

/// Attempts to seal a document before its parities are left to the repair worker.
const MAX_TRIES: u32 = 5;

/// The parities of one acknowledged document, waiting to be stored.
#[derive(Debug)]
pub struct Job {
    /// The document record's key (a document deleted meanwhile is not sealed).
    pub doc: BlockKey,
    /// Its parities, each to one copy on its owner; empty when they did not fit in memory
    /// (they are then re-encoded from the sources and pointers of `records`).
    pub parities: Vec<Held>,
    /// Its codeword records.
    pub records: Vec<BlockKey>,
    /// Bytes of the budget this job holds.
    pub reserved: usize,
    /// Failed attempts so far.
    pub tries: u32,
}

impl Job {
    /// What it counts towards a batch.
    fn weight(&self) -> usize {
        if self.parities.is_empty() {
            self.records.len().saturating_mul(REFORM_WEIGHT)
        } else {
            self.parities.iter().map(|(_, b)| b.len()).sum()
        }
    }
}

/// The pending parities of this node's encoder, oldest first, and the bytes they hold
/// (including reservations of writes under way). Bookkeeping, and with a log
/// ([`Pending::with_log`]) the documents waiting are written down too, so that a restart
/// resumes them (module `pending_log`).
#[derive(Debug, Default)]
pub struct Pending {
    jobs: VecDeque<Job>,
    bytes: usize,
    /// Jobs taken and not yet done or put back.
    taken: usize,
    log: Option<PendingLog>,
}

impl Pending {
    /// Keeps `log` of the documents waiting, and queues those it lists (logged before a
    /// restart) to be re-encoded from the ring.
    pub fn with_log(&mut self, log: PendingLog, waiting: Vec<super::pending_log::Waiting>) {
        for (doc, records) in waiting.into_iter().take(MAX_JOBS) {
            self.jobs.push_back(Job {
                doc,
                parities: Vec::new(),
                records,
                reserved: 0,
                tries: 0,
            });
        }
        self.log = Some(log);
    }

    /// Reserves `n` bytes for a write's parities if they fit within `budget`; `false`: the
    /// writer keeps only their codeword records' keys (or stores them at once when the queue
    /// is full).
    pub fn reserve(&mut self, n: usize, budget: usize) -> bool {
        if n == 0 || self.bytes.saturating_add(n) > budget {
            return false;
        }
        self.bytes += n;
        true
    }

    /// Gives back reserved bytes (a failed write, a finished job).
    pub fn release(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_sub(n);
    }

    /// Whether another job may be queued.
    #[must_use]
    pub fn has_room(&self) -> bool {
        self.jobs.len() < MAX_JOBS
    }

    /// Queues the parities of an acknowledged write (their bytes were reserved), and logs it.
    pub fn push(&mut self, job: Job) {
        if let Some(log) = self.log.as_mut() {
            log.waits(&job.doc, &job.records);
        }
        self.jobs.push_back(job);
    }

    /// The oldest jobs, about `max` in weight (at least one job when any is queued). Their
    /// bytes stay counted until [`Pending::done`] or [`Pending::put_back`].
    pub fn take(&mut self, max: usize) -> Vec<Job> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(j) = self.jobs.front() {
            if !out.is_empty() && n + j.weight() > max {
                break;
            }
            n += j.weight();
            out.extend(self.jobs.pop_front());
        }
        self.taken += out.len();
        out
    }

    /// Jobs taken by [`Pending::take`] that are finished (sealed, or given up): logged as
    /// such, and the log is emptied once nothing waits.
    pub fn done(&mut self, jobs: &[Job]) {
        self.release(jobs.iter().map(|j| j.reserved).sum());
        self.taken = self.taken.saturating_sub(jobs.len());
        if let Some(log) = self.log.as_mut() {
            if self.jobs.is_empty() && self.taken == 0 {
                log.clear();
            } else {
                log.stored(jobs.iter().map(|j| &j.doc));
                // Everything that waits is in the queue now: the log can be rewritten.
                if self.taken == 0 && log.wants_compaction() {
                    log.compact(self.jobs.iter().map(|j| (&j.doc, j.records.as_slice())));
                }
            }
        }
    }

    /// Jobs taken that could not be sealed now, back at the front in their order.
    pub fn put_back(&mut self, jobs: Vec<Job>) {
        self.taken = self.taken.saturating_sub(jobs.len());
        for j in jobs.into_iter().rev() {
            self.jobs.push_front(j);
        }
    }

    /// Documents waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether nothing waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Bytes held and reserved.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Where a write's parities go: decided before it stores anything, settled once it is
/// acknowledged (a failed write gives its reservation back).
pub struct Reservation<'a> {
    ent: &'a Entangled,
    bytes: usize,
    how: Later,
}

/// How a write's parities are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Later {
    /// Stored with the write, before its acknowledgement.
    Now,
    /// Kept in memory (`bytes` reserved).
    Held,
    /// Only the keys of its codeword records are kept: re-encoded when sealed.
    Keys,
}

impl<'a> Reservation<'a> {
    /// With `later`, keeps `bytes` of parities in memory if they fit within `budget`, else
    /// only their records' keys while the queue has room.
    pub fn new(ent: &'a Entangled, later: bool, bytes: usize, budget: usize) -> Self {
        let how = if !later || bytes == 0 {
            Later::Now
        } else {
            let mut p = lock(&ent.pending);
            if !p.has_room() {
                Later::Now
            } else if p.reserve(bytes, budget) {
                Later::Held
            } else {
                Later::Keys
            }
        };
        Reservation { ent, bytes, how }
    }

    /// Whether the parities wait for later.
    #[must_use]
    pub fn later(&self) -> bool {
        self.how != Later::Now
    }

    /// The write is acknowledged: its parities (or its records' keys) join the queue. A write
    /// is a client's data however small, so the queue waits for the client to pause.
    pub fn queue(&mut self, doc: BlockKey, parities: Vec<Held>, records: Vec<BlockKey>) {
        let how = std::mem::replace(&mut self.how, Later::Now);
        let (parities, reserved) = match how {
            Later::Now => return,
            Later::Held => (parities, self.bytes),
            Later::Keys => (Vec::new(), 0),
        };
        self.ent.traffic.note();
        lock(&self.ent.pending).push(Job {
            doc,
            parities,
            records,
            reserved,
            tries: 0,
        });
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.how == Later::Held {
            lock(&self.ent.pending).release(self.bytes);
        }
    }
}

/// How long a codeword's missing blocks are left to its encoder before the repair worker
/// rebuilds them (microseconds): `later_grace_ms`, by default the longest the encoder waits
/// for quiet plus a repair period to spare.
#[must_use]
pub fn grace_us(ent: &Entangled) -> u64 {
    let r = &ent.config.replicas;
    let ms = if r.later_grace_ms > 0 {
        r.later_grace_ms
    } else {
        r.max_wait_ms.saturating_add(ent.config.repair_ms)
    };
    ms.saturating_mul(1000)
}

/// Whether this node's writes keep their parities for later.
#[must_use]
pub fn enabled(ent: &Entangled) -> bool {
    let r = &ent.config.replicas;
    ent.layout() == entangle::Layout::Systematic
        && r.single_parities_at_write
        && r.parities_later
        && r.later_mib > 0
}

/// What [`seal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealReport {
    /// Documents whose parities are now stored.
    pub sealed: u64,
    /// Parities stored.
    pub parities: u64,
    /// Documents skipped (deleted meanwhile) or given up (left to the repair worker).
    pub dropped: u64,
    /// Whether it stopped because a client's data came in (the rest waits).
    pub gave_way: bool,
    /// Whether a batch failed (tried again next round).
    pub failed: bool,
}

/// Stores pending parities, oldest first, in batches of about [`SEAL_BATCH`] bytes
/// (re-encoding those not kept in memory); with `gives_way` (the time the round started) it
/// stops when a client's data comes in.
pub async fn seal(ent: &Entangled, gives_way: Option<Instant>) -> SealReport {
    let mut report = SealReport::default();
    loop {
        if gives_way.is_some_and(|t| ent.traffic.came_after(t)) {
            report.gave_way = true;
            return report;
        }
        let jobs = lock(&ent.pending).take(SEAL_BATCH);
        if jobs.is_empty() {
            return report;
        }
        // A document deleted meanwhile (prune) is not sealed: its parities would be orphans.
        let mut live = Vec::with_capacity(jobs.len());
        let mut gone = Vec::new();
        let mut failed = Vec::new();
        for mut j in jobs {
            if super::meta::fetch_ring(ent, j.doc).await.is_none() {
                gone.push(j);
                continue;
            }
            if j.parities.is_empty() {
                match reform(ent, &j.records).await {
                    Ok(p) => j.parities = p,
                    Err(e) => {
                        debug!(doc = %j.doc, error = %e, "parities not re-formed");
                        failed.push(j);
                        continue;
                    }
                }
            }
            live.push(j);
        }
        report.dropped += gone.len() as u64;
        lock(&ent.pending).done(&gone);
        let blocks: Vec<Held> = live
            .iter()
            .flat_map(|j| j.parities.iter().cloned())
            .collect();
        let copies = vec![Copies::Single; blocks.len()];
        match store_blocks(ent, &blocks, &copies).await {
            Ok(()) => {
                report.sealed += live.len() as u64;
                report.parities += blocks.len() as u64;
                lock(&ent.pending).done(&live);
            }
            Err(e) => {
                debug!(error = %e, "storing pending parities failed; trying again next round");
                failed.extend(live);
            }
        }
        if !failed.is_empty() {
            report.failed = true;
            let (keep, give_up): (Vec<Job>, Vec<Job>) = failed
                .into_iter()
                .map(|mut j| {
                    j.tries += 1;
                    j
                })
                .partition(|j| j.tries < MAX_TRIES);
            if !give_up.is_empty() {
                warn!(
                    documents = give_up.len(),
                    "parities not stored after {MAX_TRIES} attempts; the repair worker rebuilds them"
                );
                report.dropped += give_up.len() as u64;
                lock(&ent.pending).done(&give_up);
            }
            lock(&ent.pending).put_back(keep);
            return report;
        }
    }
}

/// The parities of the codewords `records`, re-encoded from the ring (two codewords at once).
async fn reform(ent: &Entangled, records: &[BlockKey]) -> Result<Vec<Held>, String> {
    let made = futures::stream::iter(records.iter().copied())
        .map(|rk| super::repair::reform_parities(ent, rk))
        .buffered(2)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::new();
    for m in made {
        out.extend(m?);
    }
    Ok(out)
}

/// Whether codewords have all their parities stored, asked of the ring once per codeword
/// (replica management: a block of a codeword whose parities are not all stored keeps its
/// replicas).
#[derive(Default)]
pub struct Sealed {
    known: std::sync::Mutex<BTreeMap<BlockKey, bool>>,
}

impl Sealed {
    /// Whether every parity of the codeword of record `rk` is held by some member of its
    /// replica set (either store). Unknown (no record, no answer): `false`.
    pub async fn check(&self, ent: &Entangled, rk: BlockKey) -> bool {
        if let Some(s) = lock(&self.known).get(&rk) {
            return *s;
        }
        let sealed = match super::repair::fetch_record(ent, rk).await {
            Some(rec) => {
                let keys: Vec<BlockKey> = rec.parity_keys().iter().map(super::format::nk).collect();
                match super::read::has_ring(ent, &keys).await {
                    Ok(held) => keys.iter().all(|k| held.contains(k)),
                    Err(_) => false,
                }
            }
            None => false,
        };
        lock(&self.known).insert(rk, sealed);
        sealed
    }
}

/// Stores everything pending now (a node stopping gracefully), within `limit`.
pub async fn flush(ent: &Entangled, limit: Duration) {
    if lock(&ent.pending).is_empty() {
        return;
    }
    match tokio::time::timeout(limit, seal(ent, None)).await {
        Ok(r) => debug!(?r, "pending parities stored before leaving"),
        Err(_) => warn!(
            left = lock(&ent.pending).len(),
            "pending parities not all stored before leaving; the repair worker rebuilds the rest"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn job(doc: u8, sizes: &[usize]) -> Job {
        let parities: Vec<Held> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (BlockKey([i as u8; 32]), Arc::new(vec![0; *n])))
            .collect();
        Job {
            doc: BlockKey([doc; 32]),
            reserved: sizes.iter().sum(),
            parities,
            records: vec![BlockKey([doc; 32])],
            tries: 0,
        }
    }

    #[test]
    fn pending_parities_stay_within_the_budget() {
        let mut p = Pending::default();
        assert!(p.reserve(60, 100));
        assert!(!p.reserve(50, 100), "over the budget: only keys are kept");
        assert!(!p.reserve(0, 100), "nothing to keep");
        assert!(p.reserve(40, 100));
        assert_eq!(p.bytes(), 100);
        p.release(40);
        assert_eq!(p.bytes(), 60);
        p.push(job(1, &[30, 30]));
        assert_eq!((p.len(), p.bytes()), (1, 60));
        assert!(p.has_room());
        for d in 0..MAX_JOBS {
            p.push(job(d as u8, &[]));
        }
        assert!(
            !p.has_room(),
            "a full queue: parities are stored with the write"
        );
    }

    #[test]
    fn pending_jobs_are_taken_oldest_first_and_put_back_in_order() {
        let mut p = Pending::default();
        for d in 1..=4u8 {
            assert!(p.reserve(20, 1000));
            p.push(job(d, &[10, 10]));
        }
        let first = p.take(45);
        assert_eq!(
            first.iter().map(|j| j.doc.0[0]).collect::<Vec<_>>(),
            [1, 2],
            "about max bytes"
        );
        let second = p.take(1);
        assert_eq!(second.len(), 1, "at least one job");
        let third = p.take(0);
        assert_eq!(third[0].doc.0[0], 4);
        p.put_back(first);
        let again = p.take(1000);
        assert_eq!(again.iter().map(|j| j.doc.0[0]).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(p.bytes(), 80, "taken jobs stay counted until done");
        for done in [&third, &second, &again] {
            p.done(done);
        }
        assert_eq!(p.bytes(), 0);
        assert!(p.take(10).is_empty() && p.is_empty());
    }

    #[test]
    fn the_log_follows_the_queue() {
        use crate::entangled::pending_log::{file, replay};
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let waiting = |p: &std::path::Path| -> Vec<u8> {
            replay(&std::fs::read(p).unwrap())
                .0
                .iter()
                .map(|(d, _)| d.0[0])
                .collect()
        };
        let (log, _) = PendingLog::open(&path).unwrap();
        let mut p = Pending::default();
        p.with_log(log, vec![(BlockKey([9; 32]), vec![BlockKey([90; 32])])]);
        assert_eq!(p.len(), 1, "what the log lists waits again");
        assert!(
            waiting(&path).is_empty(),
            "resumed jobs are not logged twice"
        );
        let resumed = p.take(0);
        assert!(resumed[0].parities.is_empty() && resumed[0].reserved == 0);
        p.push(job(1, &[10]));
        p.push(job(2, &[10]));
        p.done(&resumed);
        assert_eq!(waiting(&path), [1, 2]);
        let first = p.take(10);
        p.done(&first);
        assert_eq!(waiting(&path), [2], "a stored document is logged as such");
        let second = p.take(10);
        p.put_back(second);
        let second = p.take(10);
        assert_eq!(waiting(&path), [2], "taken but not stored: still logged");
        p.done(&second);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            0,
            "nothing waits: the log is emptied"
        );
    }

    #[test]
    fn jobs_without_their_parities_weigh_their_codewords() {
        let mut p = Pending::default();
        let mut keys = job(1, &[]);
        keys.records = vec![BlockKey([1; 32]); 20];
        p.push(keys);
        p.push(job(2, &[10]));
        assert_eq!(
            p.take(SEAL_BATCH).len(),
            1,
            "20 codewords to re-form fill a batch"
        );
        assert_eq!(p.take(SEAL_BATCH).len(), 1);
    }
}
