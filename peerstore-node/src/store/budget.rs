//! The node's one `--capacity`, shared by every store that draws on it.
//!
//! A [`Capacity`] counts every byte charged against it: held blocks, puts in progress and
//! record-table bytes of each [`super::BlockStore`] opened with it (the replicated store and
//! the single-copy store of a node share one). A charge that does not fit is refused; a
//! release never fails. Charging is one short critical section, so concurrent writers to
//! either store never oversubscribe the capacity.

use std::sync::{Arc, Mutex};

/// Bytes a record costs beyond its value: the 32-byte key plus a fixed allowance for the
/// index's own overhead, so that even empty values are not free.
pub const RECORD_OVERHEAD: u64 = 64;

/// What one record of `value_len` bytes costs against the capacity.
#[must_use]
pub fn record_cost(value_len: usize) -> u64 {
    RECORD_OVERHEAD + value_len as u64
}

/// A capacity in bytes and how much of it is charged. See the [module docs](self).
#[derive(Debug)]
pub struct Capacity {
    total: u64,
    used: Mutex<u64>,
}

impl PartialEq for Capacity {
    /// Two capacities are equal only if they are the same object.
    fn eq(&self, other: &Capacity) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Capacity {}

impl Capacity {
    /// A capacity of `total` bytes with nothing charged, ready to share.
    #[must_use]
    pub fn new(total: u64) -> Arc<Capacity> {
        Arc::new(Capacity {
            total,
            used: Mutex::new(0),
        })
    }

    fn used_lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The capacity in bytes.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes charged, over all stores sharing this capacity.
    #[must_use]
    pub fn used(&self) -> u64 {
        *self.used_lock()
    }

    /// Bytes that may still be charged.
    #[must_use]
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used())
    }

    /// Charges `n` bytes if they fit; otherwise charges nothing and returns the free bytes.
    pub(crate) fn try_take(&self, n: u64) -> std::result::Result<(), u64> {
        let mut used = self.used_lock();
        let free = self.total.saturating_sub(*used);
        if n > free {
            return Err(free);
        }
        *used += n;
        Ok(())
    }

    /// Charges `n` bytes unconditionally (what opening finds already on disk).
    pub(crate) fn take(&self, n: u64) {
        let mut used = self.used_lock();
        *used = used.saturating_add(n);
    }

    /// Releases `n` charged bytes.
    pub(crate) fn give(&self, n: u64) {
        let mut used = self.used_lock();
        *used = used.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_released() {
        let c = Capacity::new(100);
        assert_eq!(c.try_take(60), Ok(()));
        assert_eq!(c.try_take(41), Err(40));
        assert_eq!(c.used(), 60);
        c.take(50);
        assert_eq!(c.free(), 0);
        c.give(110);
        assert_eq!(c.free(), 100);
        c.give(1);
        assert_eq!(c.used(), 0);
    }
}
