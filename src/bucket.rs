//! The token bucket, as a CRDT of per-node monotone counters. Pure: no clock reads, no I/O;
//! callers pass `now_ns` (nanoseconds since the Unix epoch).
//!
//! # The algebra
//!
//! Amounts are exact integers: 1 token = 10^18 *units*, and the refill rate is kept as
//! `rate_q` = round(refill_per_second x 10^9), which is exactly the units refilled per
//! nanosecond (so the rate's resolution is 10^-9 tokens/s). Refill over `dt` ns is
//! `dt x rate_q` units: no rounding anywhere.
//!
//! The *credit* of a bucket at time t is A(t) = rate_q x t: everything time has ever refilled.
//! Each node i owns monotone counters ([`Counters`]): `consumed_i` (tokens it took), `attempts_i`
//! (requests it decided) and `waste_i` (refill lost at the cap). With X = sum of consumed_i
//! (in units) and W = max of waste_i, the bucket holds
//!
//! ```text
//! tokens(t) = A(t) - X - W
//! ```
//!
//! The cap is kept by raising waste: whenever a node evaluates the bucket and finds
//! A(t) - X - W > capacity, it raises its own waste to A(t) - X - capacity. A new bucket at t0
//! starts with waste = A(t0) - initial, so it holds `initial` tokens.
//!
//! **One node is exactly a sequential token bucket.** The sequential bucket refills
//! `tokens = min(capacity, tokens + rate x dt)` and then takes the cost if it is affordable.
//! Between two events A - X grows linearly, so the largest excess over the cap is reached at
//! the later event; raising W to that excess at every event is the Skorokhod reflection of
//! A - X at the upper barrier, which is exactly what `min(capacity, ·)` applied at each event
//! computes. Both sides are integer arithmetic, so decisions, remaining tokens and waits are
//! equal (property-tested below against a literal sequential bucket).
//!
//! **Merge is a CRDT.** Every field only grows and is written by one node only; two views of
//! the same node merge by field-wise max, and a state (node -> counters) merges node by node.
//! Max is commutative, associative and idempotent, hence so is the merge ([`State::merge`]);
//! a replayed or stale view can never lower a counter, so nothing admitted is ever forgotten.
//!
//! **The cost of concurrency.** A node whose view lags (other nodes spent δ tokens it has not
//! seen) computes tokens too high by δ: it may admit δ more until the next merge, after which
//! the debt shows (tokens go negative and it waits). Over long windows the total admitted stays
//! within one sequential bucket plus what was spent unseen in the last sync interval. If the lag
//! happens while the bucket is full, the lagging node raises its waste δ too high: that errs on
//! the side of admitting less, never more. Keeping N nodes from each spending the whole bucket
//! within one sync interval (a burst) needs pacing, layered on top of this module by the
//! sync loop; `attempts` is published for that (each node's share of the demand).

use std::collections::BTreeMap;
use std::fmt;

/// Units per token.
pub const UNITS_PER_TOKEN: i128 = 1_000_000_000_000_000_000;

/// Largest capacity accepted.
pub const MAX_CAPACITY: u64 = 1_000_000_000_000;

/// Largest refill rate accepted, tokens per second.
pub const MAX_RATE: f64 = 1e9;

/// A bucket's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketParams {
    capacity: u64,
    rate_q: u64,
    initial_tokens: u64,
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
        match self {
            ParamError::CapacityTooSmall => write!(f, "capacity must be at least 1"),
            ParamError::CapacityTooLarge(c) => {
                write!(f, "capacity {c} is above the maximum {MAX_CAPACITY}")
            }
            ParamError::BadRate(r) => write!(f, "refill rate must be a positive number, not {r}"),
            ParamError::RateTooSmall(r) => write!(
                f,
                "refill rate {r} is below the resolution of 1e-9 tokens per second"
            ),
            ParamError::RateTooLarge(r) => write!(
                f,
                "refill rate {r} is above the maximum {MAX_RATE} tokens per second"
            ),
            ParamError::InitialAboveCapacity { initial, capacity } => {
                write!(f, "initial tokens {initial} exceed the capacity {capacity}")
            }
        }
    }
}

impl std::error::Error for ParamError {}

impl BucketParams {
    pub fn new(
        capacity: u64,
        refill_per_second: f64,
        initial_tokens: u64,
    ) -> Result<Self, ParamError> {
        if capacity < 1 {
            return Err(ParamError::CapacityTooSmall);
        }
        if capacity > MAX_CAPACITY {
            return Err(ParamError::CapacityTooLarge(capacity));
        }
        if !refill_per_second.is_finite() || refill_per_second <= 0.0 {
            return Err(ParamError::BadRate(refill_per_second));
        }
        if refill_per_second > MAX_RATE {
            return Err(ParamError::RateTooLarge(refill_per_second));
        }
        let q = (refill_per_second * 1e9).round();
        if q < 1.0 {
            return Err(ParamError::RateTooSmall(refill_per_second));
        }
        if initial_tokens > capacity {
            return Err(ParamError::InitialAboveCapacity {
                initial: initial_tokens,
                capacity,
            });
        }
        Ok(BucketParams {
            capacity,
            // q is in 1..=1e18, within u64.
            rate_q: q as u64,
            initial_tokens,
        })
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

    pub fn refill_per_second(&self) -> f64 {
        self.rate_q as f64 / 1e9
    }

    /// Seconds to refill an empty bucket.
    pub fn seconds_to_fill(&self) -> f64 {
        self.capacity as f64 / self.refill_per_second()
    }

    fn cap_units(&self) -> i128 {
        i128::from(self.capacity) * UNITS_PER_TOKEN
    }

    /// A(t): all the refill time has ever given.
    fn credit(&self, now_ns: i64) -> i128 {
        i128::from(now_ns) * i128::from(self.rate_q)
    }

    /// Nanoseconds until `deficit` units have refilled, rounded up.
    fn wait_ns(&self, deficit: i128) -> u64 {
        if deficit <= 0 {
            return 0;
        }
        let rate = i128::from(self.rate_q);
        u64::try_from((deficit + rate - 1) / rate).unwrap_or(u64::MAX)
    }
}

/// One node's monotone counters for one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tokens taken, in total.
    pub consumed: u64,
    /// Requests decided (admitted or not), in total.
    pub attempts: u64,
    /// Refill lost at the cap, in units.
    pub waste: i128,
}

impl Counters {
    /// Field-wise max.
    pub fn merge(&mut self, other: &Counters) {
        self.consumed = self.consumed.max(other.consumed);
        self.attempts = self.attempts.max(other.attempts);
        self.waste = self.waste.max(other.waste);
    }
}

/// Every node's counters for one bucket: the CRDT state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub nodes: BTreeMap<String, Counters>,
}

impl State {
    /// Node-by-node, field-wise max.
    pub fn merge(&mut self, other: &State) {
        for (node, c) in &other.nodes {
            self.insert(node, *c);
        }
    }

    /// Merges one node's counters in (an absent node is taken as is, not merged with zeros:
    /// waste may be negative).
    pub fn insert(&mut self, node: &str, c: Counters) {
        match self.nodes.get_mut(node) {
            Some(mine) => mine.merge(&c),
            None => {
                self.nodes.insert(node.to_string(), c);
            }
        }
    }

    pub fn get(&self, node: &str) -> Option<&Counters> {
        self.nodes.get(node)
    }

    /// Sum of every node's consumed tokens.
    pub fn total_consumed(&self) -> u64 {
        self.nodes
            .values()
            .fold(0u64, |a, c| a.saturating_add(c.consumed))
    }

    /// Largest waste of any node (None when empty).
    pub fn max_waste(&self) -> Option<i128> {
        self.nodes.values().map(|c| c.waste).max()
    }
}

/// What a bucket decided about a cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The cost can be paid now.
    pub allowed: bool,
    /// Whole tokens left: after paying when allowed, as they stand otherwise (never negative).
    pub remaining: u64,
    /// Nanoseconds until the cost is affordable (0 when allowed; time to full when `never`).
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full (after paying when allowed).
    pub full_in_ns: u64,
    /// The cost exceeds the capacity: it can never be paid.
    pub never: bool,
}

/// The hot-path bucket of one key on this node: its own counters and the merged view of the
/// other nodes (sum of their consumption, max of their waste). 48 bytes, no heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    own: Counters,
    others_consumed: u64,
    others_waste: i128,
}

impl Bucket {
    /// A bucket holding the initial tokens at `now_ns`.
    pub fn new(p: &BucketParams, now_ns: i64) -> Self {
        let waste = p.credit(now_ns) - i128::from(p.initial_tokens) * UNITS_PER_TOKEN;
        Bucket {
            own: Counters {
                consumed: 0,
                attempts: 0,
                waste,
            },
            others_consumed: 0,
            others_waste: i128::MIN,
        }
    }

    fn uncapped(&self, p: &BucketParams, now_ns: i64) -> i128 {
        let consumed = i128::from(self.own.consumed) + i128::from(self.others_consumed);
        p.credit(now_ns) - consumed * UNITS_PER_TOKEN - self.own.waste.max(self.others_waste)
    }

    /// Tokens now, in units, after applying the cap (raising own waste when over it: the
    /// reflection, which does not change what the bucket holds).
    pub fn tokens_units(&mut self, p: &BucketParams, now_ns: i64) -> i128 {
        let t = self.uncapped(p, now_ns);
        let cap = p.cap_units();
        if t > cap {
            // Raise this node's waste to the merged waste plus the excess.
            self.own.waste = self.own.waste.max(self.others_waste) + (t - cap);
            return cap;
        }
        t
    }

    fn decide(p: &BucketParams, tokens: i128, cost: u64) -> Decision {
        let cap = p.cap_units();
        let whole = |u: i128| u64::try_from(u.max(0) / UNITS_PER_TOKEN).unwrap_or(u64::MAX);
        if cost > p.capacity {
            let full = p.wait_ns(cap - tokens);
            return Decision {
                allowed: false,
                remaining: whole(tokens),
                retry_after_ns: full,
                full_in_ns: full,
                never: true,
            };
        }
        let cost_u = i128::from(cost) * UNITS_PER_TOKEN;
        if tokens >= cost_u {
            let after = tokens - cost_u;
            Decision {
                allowed: true,
                remaining: whole(after),
                retry_after_ns: 0,
                full_in_ns: p.wait_ns(cap - after),
                never: false,
            }
        } else {
            Decision {
                allowed: false,
                remaining: whole(tokens),
                retry_after_ns: p.wait_ns(cost_u - tokens),
                full_in_ns: p.wait_ns(cap - tokens),
                never: false,
            }
        }
    }

    /// Can `cost` be paid now? Takes nothing and counts nothing.
    pub fn evaluate(&mut self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        let t = self.tokens_units(p, now_ns);
        Self::decide(p, t, cost)
    }

    /// Takes `cost` tokens (after an `evaluate` that allowed it at the same instant).
    pub fn commit(&mut self, cost: u64) {
        self.own.consumed = self.own.consumed.saturating_add(cost);
    }

    /// Counts one decided request.
    pub fn record_attempt(&mut self) {
        self.own.attempts = self.own.attempts.saturating_add(1);
    }

    /// evaluate, commit when allowed, and count the attempt.
    pub fn try_take(&mut self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        let d = self.evaluate(p, cost, now_ns);
        if d.allowed {
            self.commit(cost);
        }
        self.record_attempt();
        d
    }

    /// Like `evaluate`, read-only.
    pub fn peek(&self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        Self::decide(p, self.uncapped(p, now_ns).min(p.cap_units()), cost)
    }

    /// The bucket is full: its state says nothing a new full bucket would not.
    pub fn is_full(&self, p: &BucketParams, now_ns: i64) -> bool {
        self.uncapped(p, now_ns) >= p.cap_units()
    }

    /// A bucket under `new` parameters holding this one's tokens (clamped to the new capacity).
    pub fn carry_over(&self, old: &BucketParams, new: &BucketParams, now_ns: i64) -> Bucket {
        let tokens = self
            .uncapped(old, now_ns)
            .min(old.cap_units())
            .min(new.cap_units());
        Bucket {
            own: Counters {
                consumed: 0,
                attempts: 0,
                waste: new.credit(now_ns) - tokens,
            },
            others_consumed: 0,
            others_waste: i128::MIN,
        }
    }

    /// The bucket as a merged [`State`] describes it (for reading state from outside, as
    /// `tollgate inspect` does): every node's consumption summed, the largest waste.
    pub fn from_state(state: &State) -> Bucket {
        Bucket {
            own: Counters {
                consumed: 0,
                attempts: 0,
                waste: i128::MIN,
            },
            others_consumed: state.total_consumed(),
            others_waste: state.max_waste().unwrap_or(i128::MIN),
        }
    }

    pub fn own(&self) -> &Counters {
        &self.own
    }

    /// Continues a bucket that was created fresh (counted from zero) from the stored state:
    /// its own counters become the stored ones plus what it took since its creation, and its
    /// waste the stored one (the creation's assumption of a new bucket is dropped).
    pub fn rebase_on_store(
        &mut self,
        own_stored: Option<&Counters>,
        others_consumed: u64,
        others_waste: Option<i128>,
    ) {
        let base = own_stored.copied().unwrap_or(Counters {
            consumed: 0,
            attempts: 0,
            waste: i128::MIN,
        });
        self.own = Counters {
            consumed: base.consumed.saturating_add(self.own.consumed),
            attempts: base.attempts.saturating_add(self.own.attempts),
            waste: base.waste,
        };
        self.others_consumed = others_consumed;
        self.others_waste = others_waste.unwrap_or(i128::MIN);
    }

    /// Merges the stored state into a bucket whose view lagged (not synced for a while):
    /// counters merge by max as usual, but this node's waste becomes the stored one, since
    /// any waste raised on the lagging view counted refill as lost that the other nodes had
    /// in fact spent. That waste was never written (a lagging bucket is read before it is
    /// pushed), so the shared record never saw it.
    pub fn refresh_from_store(
        &mut self,
        own_stored: Option<&Counters>,
        others_consumed: u64,
        others_waste: Option<i128>,
    ) {
        if let Some(c) = own_stored {
            self.own.consumed = self.own.consumed.max(c.consumed);
            self.own.attempts = self.own.attempts.max(c.attempts);
        }
        self.own.waste = own_stored.map_or(i128::MIN, |c| c.waste);
        self.others_consumed = self.others_consumed.max(others_consumed);
        self.others_waste = self.others_waste.max(others_waste.unwrap_or(i128::MIN));
    }

    /// Merges a view read from the shared store: what it holds for this node (a restarted node
    /// continues its counters) and the other nodes' consumption (sum) and waste (max). Nothing
    /// is ever lowered.
    pub fn absorb(&mut self, own_stored: &Counters, others_consumed: u64, others_waste: i128) {
        self.own.merge(own_stored);
        self.others_consumed = self.others_consumed.max(others_consumed);
        self.others_waste = self.others_waste.max(others_waste);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000_000;
    const T0: i64 = 1_790_000_000 * SEC;

    #[test]
    fn new_bucket_burst_then_reject_with_exact_waits() {
        let p = BucketParams::new(10, 2.0, 10).unwrap();
        let mut b = Bucket::new(&p, T0);
        for i in 0..10 {
            let d = b.try_take(&p, 1, T0);
            assert!(d.allowed);
            assert_eq!(d.remaining, 9 - i);
        }
        let d = b.try_take(&p, 1, T0);
        assert!(!d.allowed && !d.never);
        assert_eq!(d.retry_after_ns, 500_000_000);
        assert_eq!(d.full_in_ns, 5 * SEC as u64);
        assert_eq!(b.own().consumed, 10);
        assert_eq!(b.own().attempts, 11);
        assert!(b.try_take(&p, 1, T0 + SEC / 2).allowed);
    }

    #[test]
    fn fractional_rates_and_initial_tokens() {
        let p = BucketParams::new(3, 0.5, 1).unwrap();
        let mut b = Bucket::new(&p, T0);
        assert!(b.try_take(&p, 1, T0).allowed);
        let d = b.try_take(&p, 1, T0);
        assert_eq!(d.retry_after_ns, 2 * SEC as u64);
        assert!(b.try_take(&p, 1, T0 + 2 * SEC).allowed);
        let slow = BucketParams::new(1, 0.0166, 1).unwrap();
        let mut b = Bucket::new(&slow, T0);
        assert!(b.try_take(&slow, 1, T0).allowed);
        let d = b.try_take(&slow, 1, T0);
        assert_eq!(d.retry_after_ns, 60_240_963_856);
    }

    #[test]
    fn cost_above_capacity_is_never_payable() {
        let p = BucketParams::new(5, 1.0, 5).unwrap();
        let mut b = Bucket::new(&p, T0);
        let d = b.try_take(&p, 6, T0);
        assert!(!d.allowed && d.never);
        assert_eq!(b.own().consumed, 0);
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_refunds() {
        let p = BucketParams::new(5, 1.0, 5).unwrap();
        let mut b = Bucket::new(&p, T0);
        assert!(b.try_take(&p, 5, T0).allowed);
        let d = b.try_take(&p, 1, T0 - 10 * SEC);
        assert!(!d.allowed);
        assert_eq!(b.own().consumed, 5);
        let mut e = Bucket::new(&p, i64::MAX);
        let _ = e.try_take(&p, 1, i64::MIN);
        let _ = e.peek(&p, u64::MAX, i64::MAX);
    }

    #[test]
    fn evaluate_without_commit_and_peek_agree() {
        let p = BucketParams::new(4, 1.0, 4).unwrap();
        let mut b = Bucket::new(&p, T0);
        b.try_take(&p, 3, T0);
        let peek = b.peek(&p, 2, T0 + SEC / 2);
        let eval = b.evaluate(&p, 2, T0 + SEC / 2);
        assert_eq!(peek, eval);
        assert_eq!(b.own().consumed, 3);
    }

    #[test]
    fn carry_over_clamps_to_the_new_capacity() {
        let p = BucketParams::new(10, 1.0, 10).unwrap();
        let mut b = Bucket::new(&p, T0);
        b.try_take(&p, 4, T0);
        let bigger = BucketParams::new(100, 1.0, 100).unwrap();
        assert_eq!(
            b.carry_over(&p, &bigger, T0).peek(&bigger, 0, T0).remaining,
            6
        );
        let smaller = BucketParams::new(3, 1.0, 3).unwrap();
        assert_eq!(
            b.carry_over(&p, &smaller, T0)
                .peek(&smaller, 0, T0)
                .remaining,
            3
        );
    }

    #[test]
    fn a_fresh_bucket_continues_the_stored_state() {
        let p = BucketParams::new(10, 1.0, 10).unwrap();
        // The store says: this node took 8 at T0 (and nobody else anything).
        let mut old = Bucket::new(&p, T0);
        assert!(old.try_take(&p, 8, T0).allowed);
        let stored = *old.own();
        // After a restart the node creates the bucket anew and takes 1 before its first sync.
        let mut fresh = Bucket::new(&p, T0 + SEC);
        assert!(fresh.try_take(&p, 1, T0 + SEC).allowed);
        fresh.rebase_on_store(Some(&stored), 0, None);
        assert_eq!(fresh.own().consumed, 9);
        // 10 - 8 + 1 (refill) - 1 = 2 tokens, as if the node had never restarted.
        assert_eq!(fresh.peek(&p, 0, T0 + SEC).remaining, 2);
    }

    #[test]
    fn bucket_is_small() {
        assert!(std::mem::size_of::<Bucket>() <= 64);
    }

    #[test]
    fn params_are_validated() {
        assert_eq!(
            BucketParams::new(0, 1.0, 0),
            Err(ParamError::CapacityTooSmall)
        );
        assert!(BucketParams::new(1, 0.0, 1).is_err());
        assert!(BucketParams::new(1, f64::NAN, 1).is_err());
        assert!(BucketParams::new(1, 1e-12, 1).is_err());
        assert!(BucketParams::new(2, 1.0, 3).is_err());
        assert!(BucketParams::new(MAX_CAPACITY + 1, 1.0, 1).is_err());
    }

    /// A literal sequential token bucket in the same exact units.
    struct Reference {
        cap: i128,
        rate: i128,
        tokens: i128,
        last: i64,
    }

    impl Reference {
        fn take(&mut self, cost: u64, now: i64) -> (bool, u64, u64) {
            let dt = i128::from(now - self.last);
            self.last = now;
            self.tokens = (self.tokens + dt * self.rate).min(self.cap);
            let cost_u = i128::from(cost) * UNITS_PER_TOKEN;
            let wait = |d: i128| {
                if d <= 0 {
                    0
                } else {
                    ((d + self.rate - 1) / self.rate) as u64
                }
            };
            if cost_u <= self.cap && self.tokens >= cost_u {
                self.tokens -= cost_u;
                (true, (self.tokens / UNITS_PER_TOKEN) as u64, 0)
            } else {
                let r = (self.tokens.max(0) / UNITS_PER_TOKEN) as u64;
                let w = if cost_u > self.cap {
                    wait(self.cap - self.tokens)
                } else {
                    wait(cost_u - self.tokens)
                };
                (false, r, w)
            }
        }
    }

    fn events() -> impl Strategy<Value = Vec<(i64, u64)>> {
        prop::collection::vec((0i64..=5 * SEC, 1u64..=12), 1..120)
    }

    proptest! {
        #[test]
        fn one_node_is_exactly_a_sequential_bucket(
            capacity in 1u64..=10,
            rate in 0.001f64..1000.0,
            initial_frac in 0.0f64..=1.0,
            evs in events(),
        ) {
            let initial = (capacity as f64 * initial_frac) as u64;
            let p = BucketParams::new(capacity, rate, initial).unwrap();
            let mut b = Bucket::new(&p, T0);
            let mut r = Reference { cap: p.cap_units(), rate: i128::from(p.rate_q()), tokens: i128::from(initial) * UNITS_PER_TOKEN, last: T0 };
            let mut now = T0;
            for (dt, cost) in evs {
                now += dt;
                let d = b.try_take(&p, cost, now);
                let (allowed, remaining, wait) = r.take(cost, now);
                prop_assert_eq!(d.allowed, allowed);
                prop_assert_eq!(d.remaining, remaining);
                prop_assert_eq!(d.retry_after_ns, wait);
            }
        }

        #[test]
        fn perfectly_synced_nodes_are_one_sequential_bucket(
            capacity in 1u64..=10,
            rate in 0.01f64..100.0,
            evs in prop::collection::vec((0i64..=2 * SEC, 1u64..=4, 0usize..3), 1..100),
        ) {
            let p = BucketParams::new(capacity, rate, capacity).unwrap();
            let mut nodes: Vec<Bucket> = (0..3).map(|_| Bucket::new(&p, T0)).collect();
            let mut r = Reference { cap: p.cap_units(), rate: i128::from(p.rate_q()), tokens: p.cap_units(), last: T0 };
            let mut now = T0;
            for (dt, cost, n) in evs {
                now += dt;
                let d = nodes[n].try_take(&p, cost, now);
                let (allowed, remaining, _) = r.take(cost, now);
                prop_assert_eq!(d.allowed, allowed);
                prop_assert_eq!(d.remaining, remaining);
                // Perfect sync: every node absorbs every other's counters after each event.
                let all: Vec<Counters> = nodes.iter().map(|b| *b.own()).collect();
                for (i, b) in nodes.iter_mut().enumerate() {
                    let others_consumed = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c.consumed).sum();
                    let others_waste = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c.waste).max().unwrap_or(i128::MIN);
                    b.absorb(&all[i], others_consumed, others_waste);
                }
            }
        }

        #[test]
        fn lagging_nodes_overspend_at_most_one_unseen_gap(
            capacity in 1u64..=20,
            rate in 0.1f64..50.0,
            every in 1usize..10,
            evs in prop::collection::vec((0i64..=SEC / 2, 0usize..3), 1..200),
        ) {
            let p = BucketParams::new(capacity, rate, capacity).unwrap();
            let mut nodes: Vec<Bucket> = (0..3).map(|_| Bucket::new(&p, T0)).collect();
            let mut now = T0;
            let mut admitted = 0u64;
            let mut last_sync = T0;
            let mut longest_gap = 0i64;
            for (k, (dt, n)) in evs.into_iter().enumerate() {
                now += dt;
                if nodes[n].try_take(&p, 1, now).allowed {
                    admitted += 1;
                }
                if k % every == 0 {
                    longest_gap = longest_gap.max(now - last_sync);
                    last_sync = now;
                    let all: Vec<Counters> = nodes.iter().map(|b| *b.own()).collect();
                    for (i, b) in nodes.iter_mut().enumerate() {
                        let oc = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c.consumed).sum();
                        let ow = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c.waste).max().unwrap_or(i128::MIN);
                        b.absorb(&all[i], oc, ow);
                    }
                }
            }
            longest_gap = longest_gap.max(now - last_sync);
            // The naive G-counter bound: over the whole run, at most one sequential bucket plus
            // what the two other nodes could spend unseen in one sync gap.
            let ideal = capacity as f64 + rate * (now - T0) as f64 / 1e9;
            let unseen = 2.0 * (capacity as f64 + rate * longest_gap as f64 / 1e9);
            prop_assert!(admitted as f64 <= ideal + unseen + 1e-6, "admitted {} ideal {} unseen {}", admitted, ideal, unseen);
            // Nothing admitted is lost from the record.
            let recorded: u64 = nodes.iter().map(|b| b.own().consumed).sum();
            prop_assert_eq!(recorded, admitted);
        }

        #[test]
        fn state_merge_is_a_crdt(
            a in prop::collection::btree_map("[a-c]", (0u64..100, 0u64..100, -50i128..50), 0..3),
            b in prop::collection::btree_map("[a-c]", (0u64..100, 0u64..100, -50i128..50), 0..3),
            c in prop::collection::btree_map("[a-c]", (0u64..100, 0u64..100, -50i128..50), 0..3),
        ) {
            let mk = |m: &BTreeMap<String, (u64, u64, i128)>| State {
                nodes: m.iter().map(|(k, &(consumed, attempts, waste))| (k.clone(), Counters { consumed, attempts, waste })).collect(),
            };
            let (a, b, c) = (mk(&a), mk(&b), mk(&c));
            let merged = |x: &State, y: &State| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            for (node, x) in a.nodes.iter() {
                let y = ab.get(node).unwrap();
                prop_assert!(y.consumed >= x.consumed && y.attempts >= x.attempts && y.waste >= x.waste);
            }
        }
    }
}
