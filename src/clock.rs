//! Time sources. The bucket core never reads the clock itself: callers pass
//! `now_ns` (nanoseconds since the Unix epoch), so tests control time exactly.
//! Wall-clock time (not a monotonic clock) is used because buckets are shared
//! between nodes through Redis, and refill must mean the same instant on every node.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in nanoseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> i64;
}

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            // A clock set before 1970 is treated as the epoch rather than a panic.
            Err(_) => 0,
        }
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
