//! A bucket's parameters: capacity, refill rate (quantized to 1e-9 tokens a second) and
//! initial tokens, or a quota's size and calendar window (see [`super::window`]); validated
//! once, when a config is checked. The credit function A(t) and the wait for a deficit are
//! defined here, the bucket that uses them in [`super::bucket`].

use super::window::{Window, WindowWaste};
use std::fmt;

/// Units per token.
pub const UNITS_PER_TOKEN: i128 = 1_000_000_000_000_000_000;

/// The whole tokens in `units` (none when negative), rounded down, at most `u64::MAX`:
/// `u64::try_from(units.max(0) / UNITS_PER_TOKEN).unwrap_or(u64::MAX)`, which is a call of
/// about 40 instructions into the compiler's 128-bit division, made by every decision for
/// each of its limits. A quotient that fits 64 bits (every bucket's: capacities are at most
/// [`MAX_CAPACITY`]) is one 128-by-64-bit `div` on x86-64.
#[inline(always)]
pub fn whole_tokens(units: i128) -> u64 {
    const PER: u64 = UNITS_PER_TOKEN as u64;
    let u = units.max(0) as u128;
    let (high, low) = ((u >> 64) as u64, u as u64);
    if high >= PER {
        // The quotient is at least 2^64.
        return u64::MAX;
    }
    div_wide(high, low, PER)
}

/// `(high * 2^64 + low) / divisor`, given `high < divisor` (so the quotient fits 64 bits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn div_wide(high: u64, low: u64, divisor: u64) -> u64 {
    debug_assert!(high < divisor);
    let quotient: u64;
    // SAFETY: `div` divides rdx:rax by its operand; with rdx (`high`) below the divisor the
    // quotient fits rax and no divide error is raised. It touches no memory and no flags the
    // program reads.
    unsafe {
        std::arch::asm!(
            "div {divisor}",
            divisor = in(reg) divisor,
            inout("rax") low => quotient,
            inout("rdx") high => _,
            options(pure, nomem, nostack),
        );
    }
    quotient
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn div_wide(high: u64, low: u64, divisor: u64) -> u64 {
    ((u128::from(high) << 64 | u128::from(low)) / u128::from(divisor)) as u64
}

/// Largest capacity accepted, tokens.
pub const MAX_CAPACITY: u64 = 1_000_000_000_000;

/// How long a concurrency limit's hash lives in Redis after its last write: a request held in
/// flight longer than this, while no other request of its key comes, stops being counted by
/// the other nodes.
pub const SLOTS_TTL_MS: u64 = 15 * 60 * 1000;

/// A refused request of a concurrency limit is told to retry after a second.
pub const SLOT_RETRY_NS: u64 = 1_000_000_000;

/// Largest refill rate accepted, tokens per second.
pub const MAX_RATE: f64 = 1e9;

/// A bucket's validated parameters. A quota (see [`super::window`]) is a bucket of one window
/// at a time, whose credit is the quota and does not flow; its `rate_q` is the quota's average
/// rate over the window's nominal length, written for operators and drift checks and used by
/// the pacing between syncs, while its decisions use the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketParams {
    capacity: u64,
    rate_q: u64,
    initial_tokens: u64,
    window: Option<Window>,
    /// A concurrency limit (`max_in_flight`, see [`BucketParams::slots`]).
    slots: bool,
}

/// Why parameters are refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamError {
    CapacityTooSmall,
    CapacityTooLarge(u64),
    BadRate(f64),
    RateTooSmall(f64),
    RateTooLarge(f64),
    InitialAboveCapacity { initial: u64, capacity: u64 },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParamError::*;
        match self {
            CapacityTooSmall => write!(f, "capacity must be at least 1"),
            CapacityTooLarge(c) => write!(f, "capacity {c} is above the maximum {MAX_CAPACITY}"),
            BadRate(r) => write!(f, "refill rate must be a finite positive number, not {r}"),
            RateTooSmall(r) => write!(f, "refill rate {r} is below the 1e-9 tokens/s resolution"),
            RateTooLarge(r) => write!(f, "refill rate {r} is above the maximum, 1e9 tokens/s"),
            InitialAboveCapacity { initial, capacity } => {
                write!(f, "initial tokens {initial} exceed the capacity {capacity}")
            }
        }
    }
}

impl std::error::Error for ParamError {}

/// One token, refilled at one token a second: what a config whose written values were refused
/// holds in their place (such a config is never run: its errors are reported instead).
impl Default for BucketParams {
    fn default() -> Self {
        BucketParams {
            capacity: 1,
            rate_q: 1_000_000_000,
            initial_tokens: 1,
            window: None,
            slots: false,
        }
    }
}

impl BucketParams {
    /// Validates the parameters (see [`ParamError`]) and quantizes the rate to 1e-9 tokens/s.
    pub fn new(capacity: u64, refill_per_second: f64, initial: u64) -> Result<Self, ParamError> {
        use ParamError::*;
        let (r, c) = (refill_per_second, capacity);
        let q = (r * 1e9).round();
        Err(match () {
            _ if c < 1 => CapacityTooSmall,
            _ if c > MAX_CAPACITY => CapacityTooLarge(c),
            _ if !r.is_finite() || r <= 0.0 => BadRate(r),
            _ if r > MAX_RATE => RateTooLarge(r),
            _ if q < 1.0 => RateTooSmall(r),
            _ if initial > c => InitialAboveCapacity { initial, capacity },
            // q is in 1..=1e18: the cast is exact.
            _ => {
                return Ok(BucketParams {
                    capacity,
                    rate_q: q as u64,
                    initial_tokens: initial,
                    window: None,
                    slots: false,
                });
            }
        })
    }

    /// A quota: at most `quota` tokens per calendar `window`, all of them back at its start
    /// (and at the start: a new quota is full).
    pub fn quota(quota: u64, window: Window) -> Result<Self, ParamError> {
        use ParamError::*;
        if quota < 1 {
            return Err(CapacityTooSmall);
        }
        if quota > MAX_CAPACITY {
            return Err(CapacityTooLarge(quota));
        }
        // The average in units per nanosecond: quota x 10^9 / seconds (at most 1.7e19 for a
        // minute, computed in u128 and saturated).
        let secs = u128::from(window.nominal_secs().unsigned_abs());
        let q = u128::from(quota) * 1_000_000_000 / secs;
        Ok(BucketParams {
            capacity: quota,
            rate_q: u64::try_from(q.max(1)).unwrap_or(u64::MAX),
            initial_tokens: quota,
            window: Some(window),
            slots: false,
        })
    }

    /// A concurrency limit: `max_in_flight` requests of a key at once. It is a bucket of that
    /// many tokens that never refills: a request takes a token (a slot) when it is admitted
    /// and gives it back, as a credit, when it ends, so that in shared mode a node's
    /// `consumed` counts the slots it took and its `credit` those it released, both only
    /// growing (see `docs/shared-state.md`).
    pub fn slots(max_in_flight: u64) -> Result<Self, ParamError> {
        use ParamError::*;
        if max_in_flight < 1 {
            return Err(CapacityTooSmall);
        }
        if max_in_flight > MAX_CAPACITY {
            return Err(CapacityTooLarge(max_in_flight));
        }
        Ok(BucketParams {
            capacity: max_in_flight,
            rate_q: 0,
            initial_tokens: max_in_flight,
            window: None,
            slots: true,
        })
    }

    /// Whether this is a concurrency limit (see [`BucketParams::slots`]).
    pub fn is_slots(&self) -> bool {
        self.slots
    }

    /// The calendar window of a quota (`None`: a token bucket).
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn initial_tokens(&self) -> u64 {
        self.initial_tokens
    }

    /// Units refilled per nanosecond (= 10^-9 tokens per second).
    pub fn rate_q(&self) -> u64 {
        self.rate_q
    }

    /// For display and headers only; decisions use [`BucketParams::rate_q`].
    pub fn refill_per_second(&self) -> f64 {
        self.rate_q as f64 / 1e9
    }

    /// Seconds to refill an empty bucket (for headers); infinite for a concurrency limit.
    pub fn seconds_to_fill(&self) -> f64 {
        self.capacity as f64 / self.refill_per_second()
    }

    /// How long an idle shared bucket's state matters (its Redis TTL, and how long a node
    /// keeps it in memory after its last sync): a full refill, after which its state says
    /// nothing, plus ten sync intervals, at least ten seconds.
    /// A concurrency limit's state matters while a slot is held: its hash lives
    /// [`SLOTS_TTL_MS`] after its last write.
    pub fn state_ttl_ms(&self, sync_interval: std::time::Duration) -> u64 {
        if self.slots {
            return SLOTS_TTL_MS;
        }
        let fill_ms = (self.seconds_to_fill() * 1000.0).ceil();
        // `as` saturates (and maps NaN to 0).
        let fill = fill_ms as u64;
        let margin = u64::try_from(sync_interval.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(10)
            .max(10_000);
        fill.saturating_add(margin)
    }

    pub(super) fn cap_units(&self) -> i128 {
        i128::from(self.capacity) * UNITS_PER_TOKEN
    }

    /// A(t). |t| <= 2^63 and rate_q <= 10^18 < 2^60: the product is below 2^123. A quota's
    /// is that of its window: the quota (its counters count that window alone, see
    /// [`super::window`]).
    pub(super) fn credit(&self, now_ns: i64) -> i128 {
        match self.window {
            None => i128::from(now_ns) * i128::from(self.rate_q),
            Some(_) => self.cap_units(),
        }
    }

    /// A new bucket's waste at `now_ns`: A(t) less the initial tokens, or for a quota the
    /// window holding `now_ns`, nothing lost in it yet (see [`WindowWaste`]).
    pub(super) fn initial_waste(&self, now_ns: i64) -> i128 {
        match self.window {
            None => self.credit(now_ns) - i128::from(self.initial_tokens) * UNITS_PER_TOKEN,
            Some(w) => WindowWaste {
                index: w.index(now_ns),
                tokens: 0,
            }
            .pack(),
        }
    }

    /// Nanoseconds from `now_ns` until `deficit` units have refilled, rounded up
    /// (saturating); for a quota, until the next window, which starts with the whole quota
    /// (a cost above it is never affordable: see `Decision::never`).
    pub(super) fn wait_ns(&self, deficit: i128, now_ns: i64) -> u64 {
        if deficit <= 0 {
            return 0;
        }
        if self.slots {
            // Nothing refills: a slot comes back when a request ends. Try again in a second.
            return SLOT_RETRY_NS;
        }
        if let Some(w) = self.window {
            return w.left_ns(now_ns);
        }
        // A deficit under 2^64 units (18 tokens) divides in one machine instruction.
        if let Ok(d) = u64::try_from(deficit) {
            return d.div_ceil(self.rate_q);
        }
        let rate = i128::from(self.rate_q);
        let ns = deficit / rate + i128::from(deficit % rate != 0);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// A quota's waste in units, which are defined here (see [`WindowWaste`]).
impl WindowWaste {
    /// `units` (10^-18 tokens) lost in window `index`, in whole tokens rounded up (never less
    /// lost than said), saturating.
    pub fn of_units(index: i64, units: i128) -> WindowWaste {
        let tokens =
            units.div_euclid(UNITS_PER_TOKEN) + i128::from(units.rem_euclid(UNITS_PER_TOKEN) != 0);
        WindowWaste {
            index,
            tokens: i64::try_from(tokens).unwrap_or(if tokens < 0 { i64::MIN } else { i64::MAX }),
        }
    }

    /// The tokens lost, in units (10^-18 tokens).
    pub fn units(self) -> i128 {
        i128::from(self.tokens) * UNITS_PER_TOKEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(units: i128) -> u64 {
        u64::try_from(units.max(0) / UNITS_PER_TOKEN).unwrap_or(u64::MAX)
    }

    /// Whole tokens agree with the 128-bit division: at the edges (negative, around each
    /// multiple of a token, the largest capacity, the 64-bit bound of the quotient) and over
    /// a spread of magnitudes.
    #[test]
    fn whole_tokens_are_the_128_bit_division_saturated() {
        let u = UNITS_PER_TOKEN;
        let max_q = i128::from(u64::MAX);
        let mut values = vec![0, -1, i128::MIN, i128::MAX, u - 1, u, u + 1, 2 * u - 1];
        for k in [1, 7, 1_000, i128::from(MAX_CAPACITY), max_q, max_q + 1] {
            values.extend([k * u - 1, k * u, k * u + 1, k * u + u - 1]);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            // xorshift: magnitudes from a few units to past the 64-bit quotient.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let shift = x % 128;
            values.push(((i128::from(x) << 63) ^ i128::from(x.rotate_left(17))) >> shift);
        }
        for v in values {
            assert_eq!(whole_tokens(v), reference(v), "{v}");
        }
    }
}
