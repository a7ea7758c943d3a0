//! When the blocks of a store arrived, in memory only, for the minimum age of deletions
//! (`crate::replication::deletion`): a copy received a moment ago is never dropped because
//! others hold it.
//!
//! Tracking is bounded ([`MAX_TRACKED`] keys, none older than [`KEEP`]) and errs one way only:
//! the age it reports is never more than the true age. A key it does not track (held since
//! before the store was opened, or forgotten to keep the table bounded) is taken to have
//! arrived at the `floor`: the moment the store was opened, raised to the arrival time of
//! every entry forgotten since. Entries are forgotten oldest first, so every untracked key
//! arrived at or before the floor. After a restart nothing is old enough to drop until the
//! minimum age has passed again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use peerstore_proto::BlockKey;

/// Most keys tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 1 << 17;
/// Entries older than this are forgotten (raising the floor): a minimum age above it would
/// keep untracked keys young.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);

/// Arrival times of recently received keys, and the floor for the others.
#[derive(Debug)]
pub struct Arrivals {
    floor: Instant,
    by_key: HashMap<BlockKey, Instant>,
    order: VecDeque<(Instant, BlockKey)>,
    max: usize,
}

impl Arrivals {
    /// An empty table for a store opened at `now`: every key it holds counts as arrived now.
    #[must_use]
    pub fn new(now: Instant) -> Arrivals {
        Arrivals::with_capacity(now, MAX_TRACKED)
    }

    /// As [`Arrivals::new`], tracking at most `max` keys.
    #[must_use]
    pub fn with_capacity(now: Instant, max: usize) -> Arrivals {
        Arrivals {
            floor: now,
            by_key: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// `key` arrived at `now`.
    pub fn record(&mut self, key: BlockKey, now: Instant) {
        self.by_key.insert(key, now);
        self.order.push_back((now, key));
        while self.order.len() > self.max {
            self.forget_oldest();
        }
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > KEEP)
        {
            self.forget_oldest();
        }
    }

    /// `key` left the store.
    pub fn remove(&mut self, key: &BlockKey) {
        // Its queue entry goes when it comes first (it no longer matches `by_key` then).
        self.by_key.remove(key);
    }

    /// When `key` arrived, or a later moment (never an earlier one).
    #[must_use]
    pub fn arrived(&self, key: &BlockKey) -> Instant {
        self.by_key
            .get(key)
            .map_or(self.floor, |t| (*t).max(self.floor))
    }

    /// How long `key` has been held at `now`, or less (never more).
    #[must_use]
    pub fn age(&self, key: &BlockKey, now: Instant) -> Duration {
        now.saturating_duration_since(self.arrived(key))
    }

    /// Keys tracked now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn forget_oldest(&mut self) {
        let Some((t, k)) = self.order.pop_front() else {
            return;
        };
        if self.by_key.get(&k) == Some(&t) {
            self.by_key.remove(&k);
        }
        // Whatever is untracked now arrived at or before t.
        self.floor = self.floor.max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> BlockKey {
        BlockKey([i; 32])
    }

    #[test]
    fn untracked_keys_count_from_the_open() {
        let t0 = Instant::now();
        let a = Arrivals::new(t0);
        assert_eq!(
            a.age(&k(1), t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        assert_eq!(a.age(&k(1), t0), Duration::ZERO);
    }

    #[test]
    fn recorded_keys_count_from_their_arrival() {
        let t0 = Instant::now();
        let mut a = Arrivals::new(t0);
        a.record(k(1), t0 + Duration::from_secs(10));
        let now = t0 + Duration::from_secs(15);
        assert_eq!(a.age(&k(1), now), Duration::from_secs(5));
        assert_eq!(a.age(&k(2), now), Duration::from_secs(15));
        // Received again later (after a delete): the new arrival counts.
        a.remove(&k(1));
        assert_eq!(a.age(&k(1), now), Duration::from_secs(15));
        a.record(k(1), now);
        assert_eq!(a.age(&k(1), now), Duration::ZERO);
    }

    #[test]
    fn a_full_table_never_overstates_an_age() {
        let t0 = Instant::now();
        let mut a = Arrivals::with_capacity(t0, 3);
        for i in 0..10u8 {
            a.record(k(i), t0 + Duration::from_secs(u64::from(i)));
        }
        assert_eq!(a.len(), 3);
        let now = t0 + Duration::from_secs(100);
        for i in 0..10u8 {
            let truth = Duration::from_secs(100 - u64::from(i));
            assert!(a.age(&k(i), now) <= truth, "key {i}");
        }
        // The newest three are exact; the forgotten ones count from the newest forgotten.
        assert_eq!(a.age(&k(9), now), Duration::from_secs(91));
        assert_eq!(a.age(&k(0), now), Duration::from_secs(94));
        // A key with two queue entries (re-received) keeps its newest time.
        a.record(k(8), t0 + Duration::from_secs(50));
        assert_eq!(a.age(&k(8), now), Duration::from_secs(50));
    }

    #[test]
    fn old_entries_are_forgotten_without_overstating() {
        let t0 = Instant::now();
        let mut a = Arrivals::new(t0);
        a.record(k(1), t0 + Duration::from_secs(1));
        let later = t0 + KEEP + Duration::from_secs(10);
        a.record(k(2), later);
        assert_eq!(a.len(), 1, "the day-old entry is forgotten");
        assert!(a.age(&k(1), later) <= KEEP + Duration::from_secs(9));
        assert!(a.age(&k(1), later) >= KEEP);
        assert!(!a.is_empty());
    }
}
