//! Virtual time. The core never reads a clock: every input carries `now`.

use std::time::Duration;

/// Milliseconds since an arbitrary origin chosen by the driver.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default, Hash)]
pub struct Time(pub u64);

impl Time {
    /// `self + d`, saturating, at millisecond resolution.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, d: Duration) -> Time {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(ms))
    }

    /// Milliseconds since the origin.
    pub fn millis(self) -> u64 {
        self.0
    }
}
