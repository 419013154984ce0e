//! Time as the client sees it: a monotonic clock for backoff, batch age, token refresh and replay, wall time for
//! `Retry-After` dates and spool timestamps, and sleeping. Injected into the client so that tests make time pass
//! without waiting for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time. Implementations must be cheap: `now` is read on every call of the client.
pub trait Clock: Send + Sync {
    /// Monotonic time: never goes back.
    fn now(&self) -> Instant;
    /// Wall-clock time (for `Retry-After` dates and timestamps written to flash); may jump.
    fn wall(&self) -> SystemTime;
    /// Waits for `d` (a test clock moves its time forward instead).
    fn sleep(&self, d: Duration);
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told (or when slept on): tests of backoff, batch age and token refresh run
/// without sleeping. Shared between threads; `sleep` advances it by the requested time.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    wall_base: SystemTime,
    offset_ns: AtomicU64,
}

impl ManualClock {
    /// A clock starting at the real current time.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: Instant::now(),
            wall_base: SystemTime::now(),
            offset_ns: AtomicU64::new(0),
        })
    }

    /// A clock whose wall time starts at `unix_ms` milliseconds after the epoch.
    pub fn at_unix_ms(unix_ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: Instant::now(),
            wall_base: UNIX_EPOCH + Duration::from_millis(unix_ms),
            offset_ns: AtomicU64::new(0),
        })
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .offset_ns
            .fetch_update(Relaxed, Relaxed, |o| Some(o.saturating_add(ns)));
    }

    /// How far the clock has moved since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset_ns.load(Relaxed))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + self.elapsed()
    }
    fn wall(&self) -> SystemTime {
        self.wall_base + self.elapsed()
    }
    fn sleep(&self, d: Duration) {
        self.advance(d)
    }
}

/// Milliseconds since the Unix epoch of a wall time (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at_unix_ms(1_000_000);
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.sleep(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, Duration::from_millis(1500));
        assert_eq!(unix_ms(c.wall()), 1_001_500);
        c.advance(Duration::MAX);
        assert!(c.now() >= t0);
    }
}
