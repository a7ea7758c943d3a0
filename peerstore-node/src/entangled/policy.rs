//! Automatic replica management: which replicated parities go down to one copy, and when.
//!
//! New parities are replicated `r` times, like every block. While a parity is among the newest
//! of the ring it is weakly entangled (few codewords point at it yet), so it keeps its replicas
//! (RECAST's sliding window over the tail). It goes down to one copy when it leaves the window
//! (it is not among the `window` most recently written parities of the ring) or when it is
//! older than `max_age_ms` (a quiet ring still settles at the code's overhead). Every node runs
//! this over the parities it owns every `every_ms`, from its start: nobody has to run `scrub`.
//!
//! An administrator's `scrub --interval` replaces the policy ring-wide; the node keeps that
//! choice in its data directory (`scrub-daemon.json`) so it survives restarts. The rule itself
//! ([`eligible`]) is pure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use peerstore_proto::{BlockKey, ScrubMode};

/// The node's default replica management (configuration `[entanglement.replicas]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicaPolicy {
    /// Parities among the `window` newest of the ring keep their replicas.
    pub window: u64,
    /// Parities older than this (milliseconds) go to one copy even inside the window
    /// (0: age alone never does).
    pub max_age_ms: u64,
    /// How often a node manages the parities it owns (milliseconds; 0: only by hand, with
    /// `peerstore-client scrub`).
    pub every_ms: u64,
    /// Systematic layout: a new codeword's parities are stored at once as one copy on their
    /// owner (what management would leave) while its sources get the ring's r replicas, so a
    /// fresh document is at least as durable as plain r-way replication (its sources) and a
    /// lost parity is re-encoded from them; writes move (4 r + 8) instead of 12 r blocks per
    /// codeword at (4,8,8). `false`: every block starts with r replicas.
    pub single_parities_at_write: bool,
    /// With `single_parities_at_write`: a write is acknowledged once its sources (r copies)
    /// and records are stored, and its parities are kept in memory and stored once this
    /// node's clients pause (within `max_wait_ms`; module `entangled::later`). A backup then
    /// writes 3 bytes per byte instead of 5 at (4,8,8), r = 3. `false`: parities are stored
    /// before the acknowledgement.
    pub parities_later: bool,
    /// Memory for parities waiting to be stored (MiB); a write whose parities do not fit
    /// stores them before its acknowledgement (0: never later).
    pub later_mib: u64,
    /// How long the repair worker leaves a damaged codeword alone after its write, in case its
    /// parities are still waiting on its encoder (milliseconds; 0: `max_wait_ms` plus the
    /// repair period, the longest they wait there).
    pub later_grace_ms: u64,
    /// Replica management gives way to clients: a round waits while this node served a
    /// client's data (a backup's blocks, a restore's reads) within the last `yield_ms`
    /// milliseconds, and a round under way stops when a client's data arrives, to go on once
    /// the node is quiet again (0: never waits). Requests that move less than a block's worth
    /// (status, record and sync polls, `du`'s small reads) do not count.
    pub yield_ms: u64,
    /// The longest a round waits for quiet (milliseconds): a node that serves clients without
    /// pause still settles its replicas, a full round at least this often.
    pub max_wait_ms: u64,
}

impl Default for ReplicaPolicy {
    /// A window of 1,024 parities (256 MiB at B = 256 KiB, about 85 MiB of documents at
    /// (4,8,12)), an hour at most, checked every minute.
    fn default() -> Self {
        ReplicaPolicy {
            window: 1024,
            max_age_ms: 3_600_000,
            every_ms: 60_000,
            single_parities_at_write: true,
            parities_later: true,
            later_mib: 256,
            later_grace_ms: 0,
            yield_ms: 10_000,
            max_wait_ms: 600_000,
        }
    }
}

/// What the daemon of one node runs: the mode, its period, and the age limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Daemon {
    pub mode: ScrubMode,
    pub every_ms: u64,
    pub max_age_ms: u64,
}

impl ReplicaPolicy {
    /// The daemon this policy starts with, `None` if management is off.
    #[must_use]
    pub fn daemon(&self) -> Option<Daemon> {
        (self.every_ms > 0).then_some(Daemon {
            mode: ScrubMode::Window {
                blocks: self.window,
            },
            every_ms: self.every_ms,
            max_age_ms: self.max_age_ms,
        })
    }
}

/// Whether a replicated parity goes to one copy now.
///
/// - `mode`: by window, the parity must be older than `window_cutoff_us` (the creation time
///   of the window's oldest parity; `None` while the ring holds no more than the window);
///   by pointers, it must have at least `threshold` referrers.
/// - `max_age_ms` > 0: a parity created at least that long before `now_us` goes regardless.
/// - An unknown creation time never counts as old (its replicas stay).
#[must_use]
pub fn eligible(
    mode: ScrubMode,
    created_us: Option<u64>,
    referrers: usize,
    window_cutoff_us: Option<u64>,
    max_age_ms: u64,
    now_us: u64,
) -> bool {
    let by_mode = match mode {
        ScrubMode::Pointers { threshold } => referrers as u64 >= u64::from(threshold),
        ScrubMode::Window { .. } => matches!(
            (window_cutoff_us, created_us),
            (Some(c), Some(t)) if t < c
        ),
    };
    let by_age = max_age_ms > 0
        && created_us.is_some_and(|t| t.saturating_add(max_age_ms.saturating_mul(1000)) <= now_us);
    by_mode || by_age
}

/// The creation times of replicated parities a round of replica management found too young
/// for one copy in the window mode ([`eligible`]). A parity's creation time never changes, so
/// the next rounds decide those again from memory: before, every round fetched the reverse
/// references of each such parity (a ring lookup and a `fetch-refs` each, 5 s after 5 s for up
/// to the hour a young parity stays replicated). The pointers mode counts referrers, which
/// grow, so it always asks. Holds only the last round's candidates.
#[derive(Debug, Default)]
pub struct KnownYoung {
    created: HashMap<BlockKey, u64>,
}

impl KnownYoung {
    /// The creation time of `key` when it is known and by it the parity stays replicated
    /// this round (not eligible); `None`: to be looked up.
    #[must_use]
    pub fn still_young(
        &self,
        key: &BlockKey,
        mode: ScrubMode,
        window_cutoff_us: Option<u64>,
        max_age_ms: u64,
        now_us: u64,
    ) -> Option<u64> {
        if !matches!(mode, ScrubMode::Window { .. }) {
            return None;
        }
        self.created
            .get(key)
            .copied()
            .filter(|t| !eligible(mode, Some(*t), 0, window_cutoff_us, max_age_ms, now_us))
    }

    /// The creation times of the round's candidates that stayed replicated for their age
    /// (everything else is forgotten). A time after `now_us` (a writer's clock ahead, or a
    /// lying metadata holder) is not remembered: such a parity is looked up again each
    /// round, so a corrected entry counts as soon as it is there.
    pub fn replace(&mut self, young: impl IntoIterator<Item = (BlockKey, u64)>, now_us: u64) {
        self.created = young.into_iter().filter(|(_, t)| *t <= now_us).collect();
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.created.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }
}

/// Whether a round of replica management waits now: the node served a client's data
/// `since_data` ago (`None`: never), the round has waited `waited` already; it waits while the
/// node was busy within `quiet`, at most `max_wait` in all.
#[must_use]
pub fn waits(
    since_data: Option<Duration>,
    waited: Duration,
    quiet: Duration,
    max_wait: Duration,
) -> bool {
    since_data.is_some_and(|d| d < quiet) && waited < max_wait
}

/// What a due round of replica management does now ([`Gate::turn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Waits for clients to pause (asked again next maintenance period).
    Wait,
    /// Runs; with `gives_way`, it stops early when a client's data comes in meanwhile.
    Run { gives_way: bool },
}

/// When the rounds of replica management run beside clients: a due round waits while the
/// node serves clients' data, and one under way gives way to them, but the work they put off
/// never waits more than `max_wait` in all (then a whole round runs, busy or not). Pure: the
/// caller passes the time.
#[derive(Debug, Default)]
pub struct Gate {
    /// Since when the work of a due round has been put off.
    waiting: Option<Instant>,
}

impl Gate {
    /// A round is due at `now`; the node last served data `since_data` ago.
    pub fn turn(
        &mut self,
        now: Instant,
        since_data: Option<Duration>,
        quiet: Duration,
        max_wait: Duration,
    ) -> Turn {
        let waited = self
            .waiting
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if waits(since_data, waited, quiet, max_wait) {
            self.waiting.get_or_insert(now);
            Turn::Wait
        } else {
            Turn::Run {
                gives_way: !quiet.is_zero() && waited < max_wait,
            }
        }
    }

    /// The round that ran ended at `now`, having left work for later (`gave_way`) or not.
    pub fn ran(&mut self, now: Instant, gave_way: bool) {
        if gave_way {
            self.waiting.get_or_insert(now);
        } else {
            self.waiting = None;
        }
    }

    /// Whether work has been put off.
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }
}

/// When this node last served a client's data (module docs of [`ReplicaPolicy::yield_ms`]):
/// noted by the request handlers, read by replica management. Lock-free.
#[derive(Debug)]
pub struct Traffic {
    start: Instant,
    /// Milliseconds from `start` to the last data request, plus one (0: none yet).
    last: std::sync::atomic::AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            start: Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Traffic {
    /// A client's data is being served now.
    pub fn note(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last
            .fetch_max(ms + 1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the last data request came (`None`: never).
    #[must_use]
    pub fn since(&self) -> Option<Duration> {
        match self.last.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(n - 1)),
            ),
        }
    }

    /// Whether a data request came after `t` (to the millisecond).
    #[must_use]
    pub fn came_after(&self, t: Instant) -> bool {
        self.since().is_some_and(|d| d < t.elapsed())
    }
}

/// Longest wait before the owner of a single copy asks a member again to drop a replicated
/// copy it kept ([`DropRetries`]).
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// When the owner of single copies asks each member again to drop a replicated copy that the
/// member kept (held for less than the minimum age of deletions, the member's bound on
/// deletions used up, a copy it holds in another store, no answer): one period after the
/// first ask, then twice as long each time it is kept again, at most [`RETRY_MAX`]. A stale
/// replica waits out a minimum age of 10 minutes in about a dozen asks instead of one every
/// maintenance period, and goes at most [`RETRY_MAX`] after it may.
#[derive(Debug, Default)]
pub struct DropRetries {
    /// By (key, member): when to ask next and the last wait.
    next: HashMap<(BlockKey, PeerId), (Instant, Duration)>,
}

impl DropRetries {
    /// Whether to ask `peer` about `key` at `now`.
    #[must_use]
    pub fn due(&self, key: &BlockKey, peer: &PeerId, now: Instant) -> bool {
        self.next
            .get(&(*key, *peer))
            .is_none_or(|(at, _)| now >= *at)
    }

    /// `peer` kept its copy of `key` when asked at `now`; `period` is the first wait.
    pub fn kept(&mut self, key: BlockKey, peer: PeerId, now: Instant, period: Duration) {
        let wait = match self.next.get(&(key, peer)) {
            Some((_, last)) => last.saturating_mul(2),
            None => period,
        }
        .clamp(period.min(RETRY_MAX), RETRY_MAX);
        self.next.insert((key, peer), (now + wait, wait));
    }

    /// Asks `peer` about `key` no sooner than `at` (a copy that cannot be old enough before
    /// then); kept after that, it is asked again one period later, then as [`Self::kept`] says.
    pub fn defer(&mut self, key: BlockKey, peer: PeerId, at: Instant) {
        self.next.insert((key, peer), (at, Duration::ZERO));
    }

    /// `peer` no longer holds `key` (it dropped it, or says it holds none): forgotten.
    pub fn done(&mut self, key: &BlockKey, peer: &PeerId) {
        self.next.remove(&(*key, *peer));
    }

    /// Forgets the keys nobody asked about for a while (no longer owned here, say): the table
    /// stays as small as the copies still waiting.
    pub fn forget_old(&mut self, now: Instant) {
        self.next
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= RETRY_MAX * 2);
    }

    /// Pairs waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.next.len()
    }

    /// Whether no pair waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }
}

/// How long a codeword's replicated copies are still too young to be dropped by the rule of
/// deletions ([`crate::replication::deletion::DeletionPolicy::min_age`]): its members received
/// them when it was written (`created_us`), or later. At most `min_age` (the creation time is
/// its writer's claim); zero once it is that old, or when the time is unknown.
#[must_use]
pub fn young_for(created_us: Option<u64>, now_us: u64, min_age: Duration) -> Duration {
    let Some(created) = created_us else {
        return Duration::ZERO;
    };
    min_age.saturating_sub(Duration::from_micros(now_us.saturating_sub(created)))
}

/// Where a node keeps the daemon an administrator set.
#[must_use]
pub fn file(data_dir: &Path) -> PathBuf {
    data_dir.join("scrub-daemon.json")
}

/// What is persisted: the administrator's choice (`None`: management stopped by hand).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    daemon: Option<Daemon>,
}

/// Reads the persisted daemon: `Ok(None)` if no administrator ever set one (use the
/// configured policy), `Ok(Some(d))` for the saved choice.
pub fn load(path: &Path) -> Result<Option<Option<Daemon>>, String> {
    use std::io::Read;
    const MAX: u64 = 64 * 1024;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // Read at most one byte past the bound: a huge file is refused without being loaded.
    let mut bytes = Vec::new();
    file.take(MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX {
        return Err(format!(
            "{}: larger than {MAX} bytes; remove it to fall back to the configured policy",
            path.display()
        ));
    }
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(saved.daemon))
}

/// Persists the administrator's choice durably (temporary file, fsync, rename, fsync of the
/// directory), so that a crash leaves either the old or the new choice.
pub fn save(path: &Path, daemon: Option<Daemon>) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(&Saved { daemon })?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: ScrubMode = ScrubMode::Window { blocks: 10 };

    #[test]
    fn kept_copies_are_asked_again_less_and_less_often() {
        let (key, peer, other) = (BlockKey([1; 32]), PeerId::random(), PeerId::random());
        let period = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut r = DropRetries::default();
        assert!(r.due(&key, &peer, t0), "never asked: due");
        // Kept: asked again after 1, 2, 4, ... s, never more than RETRY_MAX apart.
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..10 {
            r.kept(key, peer, at, period);
            let mut next = at;
            while !r.due(&key, &peer, next) {
                next += Duration::from_millis(250);
            }
            waits.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        // Each member on its own.
        assert!(r.due(&key, &other, t0));
        // Dropped: asked at once the next time a copy turns up.
        r.done(&key, &peer);
        assert!(r.due(&key, &peer, at) && r.is_empty());
        // Asked 10 minutes apart: the minimum age of deletions is waited out in about a
        // dozen asks, not one per period.
        let mut asks = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(600) {
            if r.due(&key, &peer, now) {
                asks += 1;
                r.kept(key, peer, now, period);
            }
            now += period;
        }
        assert!((10..=16).contains(&asks), "{asks} asks");
        // A period longer than RETRY_MAX: asked every period.
        let mut r = DropRetries::default();
        r.kept(key, peer, t0, RETRY_MAX * 2);
        assert!(r.due(&key, &peer, t0 + RETRY_MAX));
        // Forgotten once not asked about for a while.
        r.forget_old(t0 + RETRY_MAX * 4);
        assert!(r.is_empty());
    }

    #[test]
    fn young_copies_are_asked_about_once_old_enough() {
        let min = Duration::from_secs(600);
        let s = 1_000_000u64;
        // Written 100 s ago: 500 s to go; long ago, or unknown: now.
        assert_eq!(
            young_for(Some(900 * s), 1_000 * s, min),
            Duration::from_secs(500)
        );
        assert_eq!(young_for(Some(s), 1_000 * s, min), Duration::ZERO);
        assert_eq!(young_for(None, 1_000 * s, min), Duration::ZERO);
        // A creation time in the future waits the minimum age, no longer.
        assert_eq!(young_for(Some(5_000 * s), 1_000 * s, min), min);
        assert_eq!(
            young_for(Some(900 * s), 1_000 * s, Duration::ZERO),
            Duration::ZERO
        );
        // Deferred: not due before, due at the time; kept then, asked again a period later.
        let (key, peer) = (BlockKey([2; 32]), PeerId::random());
        let t0 = Instant::now();
        let mut r = DropRetries::default();
        r.defer(key, peer, t0 + Duration::from_secs(500));
        assert!(!r.due(&key, &peer, t0 + Duration::from_secs(499)));
        assert!(r.due(&key, &peer, t0 + Duration::from_secs(500)));
        r.forget_old(t0);
        assert_eq!(
            r.len(),
            1,
            "a deferred ask is not forgotten before its time"
        );
        let at = t0 + Duration::from_secs(500);
        r.kept(key, peer, at, Duration::from_secs(5));
        assert!(!r.due(&key, &peer, at + Duration::from_secs(4)));
        assert!(r.due(&key, &peer, at + Duration::from_secs(5)));
    }

    #[test]
    fn window_rule() {
        // Older than the window's oldest parity: out; at or after it: in.
        assert!(eligible(W, Some(99), 0, Some(100), 0, 1_000));
        assert!(!eligible(W, Some(100), 0, Some(100), 0, 1_000));
        // The ring holds no more than the window: nothing leaves it.
        assert!(!eligible(W, Some(1), 0, None, 0, 1_000));
        // Unknown creation time: replicas stay.
        assert!(!eligible(W, None, 0, Some(100), 0, 1_000));
    }

    #[test]
    fn age_rule() {
        let hour_ms = 3_600_000;
        let now = 10 * hour_ms * 1000;
        // Inside the window but an hour old: out.
        assert!(eligible(
            W,
            Some(now - hour_ms * 1000),
            0,
            None,
            hour_ms,
            now
        ));
        // A microsecond younger: stays.
        assert!(!eligible(
            W,
            Some(now - hour_ms * 1000 + 1),
            0,
            None,
            hour_ms,
            now
        ));
        // Age off.
        assert!(!eligible(W, Some(0), 0, None, 0, now));
        // No creation time never counts as old.
        assert!(!eligible(W, None, 0, None, hour_ms, now));
        // A creation time in the future (another node's clock): stays.
        assert!(!eligible(W, Some(now + 5), 0, None, hour_ms, now));
        // Saturating: no overflow at the ends.
        assert!(!eligible(
            W,
            Some(u64::MAX),
            0,
            None,
            u64::MAX,
            u64::MAX - 1
        ));
    }

    #[test]
    fn pointer_rule() {
        let m = ScrubMode::Pointers { threshold: 3 };
        assert!(eligible(m, None, 3, None, 0, 0));
        assert!(!eligible(m, None, 2, None, 0, 0));
        assert!(eligible(m, Some(0), 2, None, 1, 1_000));
    }

    #[test]
    fn default_policy_is_on() {
        let d = ReplicaPolicy::default().daemon().expect("on by default");
        assert_eq!(d.mode, ScrubMode::Window { blocks: 1024 });
        assert_eq!(d.every_ms, 60_000);
        let off = ReplicaPolicy {
            every_ms: 0,
            ..ReplicaPolicy::default()
        };
        assert_eq!(off.daemon(), None);
    }

    #[test]
    fn management_waits_for_quiet_but_not_forever() {
        let s = Duration::from_secs;
        let (quiet, max) = (s(10), s(600));
        // Never served, or served long enough ago: no wait.
        assert!(!waits(None, s(0), quiet, max));
        assert!(!waits(Some(s(10)), s(0), quiet, max));
        // Served within the quiet time: wait, until the bound.
        assert!(waits(Some(s(3)), s(0), quiet, max));
        assert!(waits(Some(s(0)), s(599), quiet, max));
        assert!(!waits(Some(s(0)), s(600), quiet, max));
        // Yielding off.
        assert!(!waits(Some(s(0)), s(0), s(0), max));
        let d = ReplicaPolicy::default();
        assert_eq!((d.yield_ms, d.max_wait_ms), (10_000, 600_000));
    }

    #[test]
    fn gate_puts_rounds_off_while_busy_within_the_bound() {
        let s = Duration::from_secs;
        let (quiet, max) = (s(10), s(60));
        let t0 = Instant::now();
        let mut g = Gate::default();
        // Quiet node: runs at once, giving way if a client comes.
        assert_eq!(g.turn(t0, None, quiet, max), Turn::Run { gives_way: true });
        g.ran(t0, false);
        assert!(!g.is_waiting());
        // Busy: waits each period ...
        for i in 0..12 {
            let now = t0 + s(5 * i);
            assert_eq!(g.turn(now, Some(s(1)), quiet, max), Turn::Wait, "at {i}");
        }
        assert!(g.is_waiting());
        // ... until the bound: then a whole round that does not give way.
        let late = t0 + s(60);
        assert_eq!(
            g.turn(late, Some(s(1)), quiet, max),
            Turn::Run { gives_way: false }
        );
        g.ran(late, false);
        assert!(!g.is_waiting());
        // Quiet again after waiting a while: runs, still giving way.
        assert_eq!(g.turn(late, Some(s(2)), quiet, max), Turn::Wait);
        let q = late + s(20);
        assert_eq!(
            g.turn(q, Some(s(11)), quiet, max),
            Turn::Run { gives_way: true }
        );
        // It gave way to a client: the wait goes on counting from the first put-off, so a
        // node whose clients come and go still gets a whole round within the bound.
        g.ran(q, true);
        assert_eq!(g.turn(late + s(59), Some(s(0)), quiet, max), Turn::Wait);
        assert_eq!(
            g.turn(late + s(60), Some(s(0)), quiet, max),
            Turn::Run { gives_way: false }
        );
        // Yielding off: always a whole round.
        let mut g = Gate::default();
        assert_eq!(
            g.turn(t0, Some(s(0)), Duration::ZERO, max),
            Turn::Run { gives_way: false }
        );
    }

    #[test]
    fn young_parities_are_decided_from_memory_until_they_age() {
        let (k, other) = (BlockKey([1; 32]), BlockKey([2; 32]));
        let window = ScrubMode::Window { blocks: 10 };
        let mut known = KnownYoung::default();
        assert!(known.still_young(&k, window, Some(100), 0, 1_000).is_none());
        known.replace([(k, 500), (other, 2_000)], 1_000);
        // A creation time in the future is not remembered.
        assert_eq!(known.len(), 1);
        // Newer than the window's oldest parity, and no age limit: stays replicated.
        assert_eq!(
            known.still_young(&k, window, Some(400), 0, 1_000),
            Some(500)
        );
        // Unknown keys are asked about.
        assert!(known
            .still_young(&other, window, Some(400), 0, 1_000)
            .is_none());
        // The window moved past it, or it grew older than the age limit: asked about again.
        assert!(known.still_young(&k, window, Some(600), 0, 1_000).is_none());
        assert!(known.still_young(&k, window, None, 1, 1_499).is_some());
        assert!(known.still_young(&k, window, None, 1, 1_500).is_none());
        // The pointers mode counts referrers, which grow: never decided from memory.
        let pointers = ScrubMode::Pointers { threshold: 2 };
        assert!(known.still_young(&k, pointers, None, 0, 1_000).is_none());
        known.replace([], 1_000);
        assert!(known.is_empty());
    }

    #[test]
    fn traffic_is_noted() {
        let t = Traffic::default();
        assert_eq!(t.since(), None);
        let before = Instant::now();
        assert!(!t.came_after(before));
        std::thread::sleep(Duration::from_millis(5));
        t.note();
        assert!(t.since().is_some_and(|d| d < Duration::from_secs(5)));
        assert!(t.came_after(before));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!t.came_after(Instant::now()));
    }

    #[test]
    fn saved_choice_round_trips_and_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = file(dir.path());
        assert_eq!(load(&path).expect("absent"), None);
        let d = Daemon {
            mode: ScrubMode::Pointers { threshold: 2 },
            every_ms: 5,
            max_age_ms: 7,
        };
        save(&path, Some(d)).expect("save");
        assert_eq!(load(&path).expect("load"), Some(Some(d)));
        save(&path, None).expect("save stop");
        assert_eq!(load(&path).expect("load"), Some(None));
        std::fs::write(&path, b"{ not json").expect("write");
        assert!(load(&path).is_err());
    }
}
