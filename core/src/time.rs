//! Time as a value: the monotonic [`Time`] every handler receives and the wall-clock [`WallMs`]
//! stamped into LTX headers and heartbeats.
//!
//! This module decides nothing; it only does arithmetic. It never reads a clock: the driver maps
//! its own clock (`std::time::Instant` in the node, a simulated per-node clock in the simulator)
//! into these values.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point on a node's monotonic clock, in nanoseconds since an arbitrary origin chosen by the
/// driver. Values from different nodes are not comparable (each node's clock may drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);
    /// A time no deadline ever reaches (used for static leases).
    pub const MAX: Time = Time(u64::MAX);

    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }
    pub const fn from_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1_000_000_000))
    }
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }
    /// `self - earlier`, or zero when `earlier` is later (never panics).
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
    /// `self + d`, saturating at [`Time::MAX`].
    pub fn saturating_add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
    /// `self - d`, saturating at [`Time::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(nanos))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    /// Saturating: a deadline past the end of time is "never".
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturating: an earlier minus a later time is zero.
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        self.saturating_sub(d)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, as LTX headers store it. Only ever
/// informational (timestamps, lag): no safety decision depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WallMs(pub i64);

/// Maps monotonic time to an estimate of wall time from the last wall reading the driver gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WallAnchor {
    at: Time,
    wall: WallMs,
}

impl WallAnchor {
    pub fn set(&mut self, at: Time, wall: WallMs) {
        self.at = at;
        self.wall = wall;
    }
    /// The wall time at `now`, extrapolated from the anchor (0 if the driver never gave one).
    pub fn estimate(&self, now: Time) -> WallMs {
        let elapsed_ms = i64::try_from(now.saturating_since(self.at).as_millis()).unwrap_or(i64::MAX);
        WallMs(self.wall.0.saturating_add(elapsed_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Time::from_millis(5);
        assert_eq!(t + Duration::from_millis(3), Time::from_millis(8));
        assert_eq!(t - Duration::from_millis(10), Time::ZERO);
        assert_eq!(Time::from_millis(2) - t, Duration::ZERO);
        assert_eq!(t - Time::from_millis(2), Duration::from_millis(3));
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(Time::from_secs(1).as_millis(), 1000);
    }

    #[test]
    fn wall_anchor_extrapolates() {
        let mut a = WallAnchor::default();
        a.set(Time::from_secs(10), WallMs(1_000_000));
        assert_eq!(a.estimate(Time::from_millis(10_250)), WallMs(1_000_250));
        assert_eq!(a.estimate(Time::from_secs(9)), WallMs(1_000_000));
    }
}
