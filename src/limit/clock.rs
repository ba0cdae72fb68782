//! Time sources. The bucket core never reads the clock itself: callers pass
//! `now_ns` (nanoseconds since the Unix epoch), so tests control time exactly.
//! Wall-clock time (not a monotonic clock) is used because buckets are shared
//! between nodes through Redis, and refill must mean the same instant on every node.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> i64;
}

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// Read with `clock_gettime` directly: every charge reads the clock, and std's
    /// `SystemTime::now().duration_since(UNIX_EPOCH)` takes about 110 instructions where this
    /// takes about 35 (checked arithmetic on the way). Saturates in the year 2262.
    #[cfg(unix)]
    // `time_t` and `c_long` are 32 bits on some targets.
    #[allow(clippy::useless_conversion)]
    fn now_ns(&self) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
        // CLOCK_REALTIME is supported by every Unix.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
            return system_time_ns();
        }
        let secs = i64::from(ts.tv_sec);
        if secs < 0 {
            // A clock set before 1970 is treated as the epoch rather than a panic.
            return 0;
        }
        secs.saturating_mul(1_000_000_000)
            .saturating_add(i64::from(ts.tv_nsec))
    }

    #[cfg(not(unix))]
    fn now_ns(&self) -> i64 {
        system_time_ns()
    }
}

/// The wall clock through std, where `clock_gettime` is not available.
fn system_time_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        // A clock set before 1970 is treated as the epoch rather than a panic.
        Err(_) => 0,
    }
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ns: i64) -> Self {
        Self(AtomicI64::new(start_ns))
    }
    pub fn advance_ns(&self, ns: i64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
    pub fn set_ns(&self, ns: i64) {
        self.0.store(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A clock corrected by an offset (nanoseconds added to its base), which the sync loop
/// estimates against Redis `TIME` so that every node refills on the same time line (see
/// `sync`). The offset starts at zero and changes only when a new estimate differs from it by
/// more than its measurement error.
pub struct OffsetClock {
    base: Arc<dyn Clock>,
    offset_ns: AtomicI64,
}

impl OffsetClock {
    pub fn new(base: Arc<dyn Clock>) -> Self {
        Self {
            base,
            offset_ns: AtomicI64::new(0),
        }
    }
    /// The uncorrected time.
    pub fn base_ns(&self) -> i64 {
        self.base.now_ns()
    }
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns.load(Ordering::Relaxed)
    }
    pub fn set_offset_ns(&self, ns: i64) {
        self.offset_ns.store(ns, Ordering::Relaxed);
    }
}

impl Clock for OffsetClock {
    fn now_ns(&self) -> i64 {
        self.base
            .now_ns()
            .saturating_add(self.offset_ns.load(Ordering::Relaxed))
    }
}

/// A clock that is off by a fixed amount: how tests and drills simulate a host whose clock is
/// wrong (`TOLLGATE_CLOCK_OFFSET_MS`, see `docs/shared-state.md`, "Clocks").
pub struct SkewedClock {
    pub base: Arc<dyn Clock>,
    pub skew_ns: i64,
}

impl Clock for SkewedClock {
    fn now_ns(&self) -> i64 {
        self.base.now_ns().saturating_add(self.skew_ns)
    }
}

/// Estimates a clock's offset from a reference clock read over a network: `t0` and `t1`
/// (local, before sending and after the reply) bracket the reference reading `r`; the best
/// estimate puts `r` at the midpoint, with an error of at most half the round trip. Given
/// several samples, the one with the shortest round trip wins. Returns (offset, error bound).
pub fn estimate_offset(samples: &[(i64, i64, i64)]) -> Option<(i64, i64)> {
    samples
        .iter()
        .filter(|(t0, t1, _)| t1 >= t0)
        .min_by_key(|(t0, t1, _)| t1 - t0)
        .map(|&(t0, t1, r)| {
            let mid = t0 + (t1 - t0) / 2;
            (r.saturating_sub(mid), (t1 - t0) / 2)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_the_same_time_as_std() {
        // std's reading bracketed by two of ours: the same clock, in the same unit.
        let before = SystemClock.now_ns();
        let std_ns = system_time_ns();
        let after = SystemClock.now_ns();
        assert!(
            before > 1_600_000_000_000_000_000,
            "{before} is not nanoseconds since 1970"
        );
        assert!(
            before <= std_ns && std_ns <= after,
            "{before} <= {std_ns} <= {after}"
        );
    }

    #[test]
    fn offset_clock_adds_its_offset() {
        let base = Arc::new(ManualClock::new(1_000));
        let c = OffsetClock::new(base.clone());
        assert_eq!(c.now_ns(), 1_000);
        c.set_offset_ns(-300);
        assert_eq!(c.now_ns(), 700);
        assert_eq!(c.base_ns(), 1_000);
        base.advance_ns(50);
        assert_eq!(c.now_ns(), 750);
    }

    #[test]
    fn the_shortest_round_trip_gives_the_estimate() {
        // Reference is 5_000 ahead. A slow sample (rtt 400) read late; a fast one (rtt 20).
        let samples = [(0, 400, 5_300), (1_000, 1_020, 6_010), (2_000, 1_990, 0)];
        let (off, err) = estimate_offset(&samples).unwrap();
        assert_eq!(off, 5_000);
        assert_eq!(err, 10);
        assert_eq!(estimate_offset(&[]), None);
        // A sample whose local clock went backwards is ignored.
        assert_eq!(estimate_offset(&[(10, 5, 0)]), None);
    }
}
