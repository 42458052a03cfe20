//! Time as a value. The sans-IO types never read a clock: the caller passes [`Micros`], a
//! monotonic timestamp in microseconds from an arbitrary epoch chosen by the runtime.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A monotonic instant in microseconds since an arbitrary epoch fixed by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub u64);

impl Micros {
    /// The epoch itself.
    pub const ZERO: Micros = Micros(0);

    /// From whole milliseconds.
    #[must_use]
    pub const fn from_millis(ms: u64) -> Self {
        Micros(ms.saturating_mul(1000))
    }

    /// From whole seconds.
    #[must_use]
    pub const fn from_secs(s: u64) -> Self {
        Micros(s.saturating_mul(1_000_000))
    }

    /// Whole milliseconds since the epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later than `self`.
    #[must_use]
    pub const fn saturating_since(self, earlier: Micros) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Micros {
    type Output = Micros;
    fn add(self, d: Duration) -> Micros {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Micros(self.0.saturating_add(us))
    }
}

impl Sub<Duration> for Micros {
    type Output = Micros;
    fn sub(self, d: Duration) -> Micros {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Micros(self.0.saturating_sub(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Micros::from_millis(5);
        assert_eq!(t + Duration::from_millis(1), Micros(6000));
        assert_eq!(t - Duration::from_secs(1), Micros::ZERO);
        assert_eq!(Micros(10).saturating_since(Micros(20)), Duration::ZERO);
        assert_eq!(Micros::from_secs(2).as_millis(), 2000);
    }
}
