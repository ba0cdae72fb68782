//! The token bucket, as a CRDT of per-node monotone counters. Pure: std only, no clock reads,
//! no I/O; callers pass `now_ns` (nanoseconds since the Unix epoch), which may go backwards.
//!
//! # Units
//!
//! Amounts are exact integers: 1 token = 10^18 *units*, and the refill rate is kept as
//! `rate_q` = round(refill_per_second x 10^9), which is exactly the units refilled per
//! nanosecond. Refill over `dt` ns is `dt x rate_q` units: no floats and no rounding in any
//! decision; the rate's resolution is 10^-9 tokens/s. With rate_q <= 10^18 and |t| < 2^63 every
//! product fits an i128; values read from outside (the store) are combined with saturating
//! arithmetic, so no input can make this module panic.
//!
//! # Counters and tokens
//!
//! The *credit* A(t) = rate_q x t is everything time has ever refilled. Each node i owns
//! monotone counters ([`Counters`]): `consumed_i` (tokens it took), `attempts_i` (requests it
//! decided, admitted or not: published for pacing) and `waste_i` (refill lost at the cap, in
//! units). With X = sum of consumed_i (in units) and W = max of waste_i the bucket holds
//!
//! ```text
//! tokens(t) = A(t) - X - W
//! ```
//!
//! (credit, minus what was spent, minus what overflowed the cap). The cap is kept by raising waste: a node
//! that evaluates the bucket and finds A(t) - X - W > capacity raises *its own* waste to
//! A(t) - X - capacity. A new bucket at t0 starts with waste = A(t0) - initial.
//!
//! # One node is exactly a sequential token bucket
//!
//! The sequential bucket does, at each event k (time t_k, cost c_k):
//! `T = min(cap, T + rate x (t_k - t_{k-1}))`, then `T -= c_k` if `T >= c_k`. Let
//! Y_k = A(t_k) - X (the free credit at event k, before its cost). Suppose T = A - X - W held
//! after event k-1. The refill adds A(t_k) - A(t_{k-1}) to both sides, so T + refill =
//! Y_k - W_{k-1}, and `min(cap, Y_k - W_{k-1}) = Y_k - max(W_{k-1}, Y_k - cap)`: the cap *is*
//! raising W to W_k = max(W_{k-1}, Y_k - cap), that is W_k = max(W_0, max_{j<=k} Y_j - cap),
//! the (discrete) Skorokhod reflection of A - X at the upper barrier. Paying c_k adds it to X
//! on one side and subtracts it from T on the other, so T = A - X - W holds after event k.
//! Both sides are the same integers, so decisions, remaining tokens and waits are equal, even
//! when dt < 0 (property-tested against a literal sequential bucket below). With perfect sync
//! (every node sees every counter before deciding) N nodes run the same recurrence, so they
//! are one sequential bucket too (tested).
//!
//! # Merge is a CRDT
//!
//! Every field only grows and is written by one node only. Two views of one node merge by
//! field-wise max; a [`State`] (node -> counters) merges node by node. Max is commutative,
//! associative and idempotent, so is the merge; a replayed or stale view can never lower a
//! counter, so nothing admitted is ever forgotten.
//!
//! # The cost of concurrency
//!
//! A node whose view lags by what the others spent unseen (δ) computes δ tokens too many: it
//! may admit them before the next merge, after which they show as debt (tokens below zero,
//! `remaining` 0, `retry_after_ns` covering it). Over a run, N nodes syncing every gap G admit
//! at most initial + rate x T + (N - 1) x (capacity + rate x G) (the naive G-counter bound,
//! tested). Conversely, a lagging node that finds the bucket full raises its waste too high by
//! the δ it has not seen: that under-admits, never over-admits, by at most one sync interval
//! of the others' spending. Keeping N nodes from each spending a whole full bucket within one
//! sync interval is pacing, layered on top of this module (`pacing`), using `attempts`.
//!
//! # Quotas
//!
//! A quota (`super::window`) is this bucket for one calendar window at a time: A is the quota,
//! constant within the window, and the counters (and credits) are those of one window, which
//! the bucket's own waste names ([`WindowWaste`]: the window's index, and the whole tokens lost
//! at the cap in it). [`Bucket::roll`] starts the window holding now from zero, so nothing of
//! an earlier window (an overshoot the nodes made together, a response cost settled above its
//! reserve) is carried into it; a past window reads as a full bucket. Within a window
//! everything above holds as for any bucket, the waste merged by max within that window.

pub use super::params::{BucketParams, ParamError, MAX_CAPACITY, MAX_RATE, UNITS_PER_TOKEN};
use super::window::WindowWaste;
use std::collections::BTreeMap;

/// One node's monotone counters for one bucket (8-byte aligned as [`Bucket`]: read by value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, packed(8))]
pub struct Counters {
    /// Tokens taken, in total.
    pub consumed: u64,
    /// Requests decided (admitted or not), in total.
    pub attempts: u64,
    /// Refill lost at the cap, in units.
    pub waste: i128,
}

impl Counters {
    /// No counters at all: the identity of [`Counters::merge`] (waste may be negative).
    pub const BOTTOM: Counters = Counters {
        consumed: 0,
        attempts: 0,
        waste: i128::MIN,
    };

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
    /// Node by node, field-wise max.
    pub fn merge(&mut self, other: &State) {
        for (node, c) in &other.nodes {
            self.insert(node, *c);
        }
    }

    /// Merges one node's counters in. An absent node is taken as is (not merged with zeros:
    /// waste may be negative).
    pub fn insert(&mut self, node: &str, c: Counters) {
        let mine = self.nodes.entry(node.to_string()).or_insert(c);
        mine.merge(&c);
    }

    pub fn get(&self, node: &str) -> Option<&Counters> {
        self.nodes.get(node)
    }

    /// Sum of every node's consumed tokens (saturating).
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
    /// Whole tokens left (floor, never negative): after paying when allowed, now otherwise.
    pub remaining: u64,
    /// Nanoseconds until the cost is affordable: 0 when allowed, time until full when `never`.
    pub retry_after_ns: u64,
    /// Nanoseconds until the bucket is full (after paying when allowed).
    pub full_in_ns: u64,
    /// The cost exceeds the capacity: it can never be paid.
    pub never: bool,
}

/// The hot-path bucket of one key on this node: its own counters and its merged view of the
/// other nodes (sum of their consumption, max of their waste). 64 bytes, no heap. A quota's
/// counters are those of one window, which its waste names (see [`super::window`]). Aligned
/// to 8 bytes, not the 16 of its `i128`s (`repr(C, packed(8))`: x86-64 and AArch64 load them
/// as fast), so that the store's entry needs no padding: 8 bytes a bucket (`store_entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C, packed(8))]
pub struct Bucket {
    own: Counters,
    others_consumed: u64,
    /// Tokens credited back by resets (`POST /reset`), by every node, in total: a monotone
    /// credit on top of A(t) (in what would otherwise be padding).
    credit: u64,
    others_waste: i128,
}

impl Bucket {
    /// A bucket holding the initial tokens at `now_ns` (a quota: the window holding it).
    pub fn new(p: &BucketParams, now_ns: i64) -> Self {
        let own = Counters {
            waste: p.initial_waste(now_ns),
            ..Counters::default()
        };
        Bucket {
            own,
            others_consumed: 0,
            credit: 0,
            others_waste: i128::MIN,
        }
    }

    /// The window a quota's counters are of (its index); `None` for any other bucket.
    pub fn window_index(&self, p: &BucketParams) -> Option<i64> {
        p.window()
            .map(|_| WindowWaste::unpack(self.own.waste).index)
    }

    /// A quota whose counters are of a window before the one holding `now_ns`: that window
    /// has ended, and the bucket of the current one is full.
    fn is_past(&self, p: &BucketParams, now_ns: i64) -> bool {
        p.window()
            .is_some_and(|w| WindowWaste::unpack(self.own.waste).index < w.index(now_ns))
    }

    /// Starts the window holding `now_ns` when a quota's counters are of an earlier one: a
    /// new bucket, the whole quota, whatever the window before took (no debt is carried).
    /// Returns whether it did. Every change to a quota at `now_ns` comes after this (the
    /// store's entry rolls its own credit with it, see `store_entry`); reads need not: a past
    /// window reads as a full bucket.
    pub fn roll(&mut self, p: &BucketParams, now_ns: i64) -> bool {
        if !self.is_past(p, now_ns) {
            return false;
        }
        *self = Bucket::new(p, now_ns);
        true
    }

    /// A(t) + R - X in units, R the tokens credited by resets. X, R <= 2^65 tokens < 2^125
    /// units: exact.
    fn free_credit(&self, p: &BucketParams, now_ns: i64) -> i128 {
        let consumed = i128::from(self.own.consumed) + i128::from(self.others_consumed)
            - i128::from(self.credit);
        p.credit(now_ns) - consumed * UNITS_PER_TOKEN
    }

    /// Credits `n` tokens (a reset, a refund): the cap applies at the next evaluation.
    pub fn add_credit(&mut self, n: u64) {
        self.credit = self.credit.saturating_add(n);
    }

    /// The total credited by resets, as merged from every node's (it only grows).
    pub fn set_reset_credit(&mut self, total: u64) {
        self.credit = self.credit.max(total);
    }

    /// The whole tokens the bucket lacks to be full (0 when it is): what a reset credits.
    /// Whole tokens may overshoot the cap by a fraction; the cap takes it at the next
    /// evaluation, as it does any credit.
    pub fn missing(&mut self, p: &BucketParams, now_ns: i64) -> u64 {
        let deficit = p.cap_units() - self.tokens_units(p, now_ns);
        if deficit <= 0 {
            return 0;
        }
        u64::try_from((deficit + UNITS_PER_TOKEN - 1) / UNITS_PER_TOKEN).unwrap_or(u64::MAX)
    }

    /// A(t) - X - W, before the cap (saturating: W may come from outside). A quota of a past
    /// window is full; otherwise its W is the tokens lost in its window, by the node that lost
    /// the most (another window's waste, which a sync never merges, would not count).
    fn uncapped(&self, p: &BucketParams, now_ns: i64) -> i128 {
        self.uncapped_from(p, now_ns, self.free_credit(p, now_ns))
    }

    /// [`Bucket::uncapped`] given A(t) + R - X (`free`, from [`Bucket::free_credit`]), which
    /// [`Bucket::tokens_units`] needs again over the cap.
    fn uncapped_from(&self, p: &BucketParams, now_ns: i64, free: i128) -> i128 {
        let waste = self.own.waste.max(self.others_waste);
        if p.window().is_none() {
            return free.saturating_sub(waste);
        }
        if self.is_past(p, now_ns) {
            return p.cap_units();
        }
        let (own, top) = (
            WindowWaste::unpack(self.own.waste),
            WindowWaste::unpack(waste),
        );
        let lost = if top.index == own.index { top } else { own };
        free.saturating_sub(lost.units())
    }

    /// `units` of waste lost at the cap, as this bucket keeps it: as is, or for a quota in
    /// whole tokens (rounded up) of its window.
    fn waste_of(&self, p: &BucketParams, units: i128) -> i128 {
        match p.window() {
            None => units,
            Some(_) => {
                WindowWaste::of_units(WindowWaste::unpack(self.own.waste).index, units).pack()
            }
        }
    }

    /// Tokens now, in units, after applying the cap. Over the cap, this node's waste is raised
    /// to A - X - capacity: the reflection, which does not change what the bucket holds. (A
    /// quota of a past window reads as full and keeps its counters: see [`Bucket::roll`].)
    /// A - X is computed once (a full bucket is over the cap at every evaluation). Inlined.
    #[inline(always)]
    pub fn tokens_units(&mut self, p: &BucketParams, now_ns: i64) -> i128 {
        let (cap, free) = (p.cap_units(), self.free_credit(p, now_ns));
        let tokens = self.uncapped_from(p, now_ns, free);
        if tokens > cap {
            // Greater than the merged waste, since A - X - W > cap: a raise, never a drop.
            self.own.waste = self.waste_of(p, free - cap);
            return cap;
        }
        tokens
    }

    /// The decision for `cost` given the bucket's tokens now (from [`Bucket::tokens_units`]);
    /// `evaluate` is `tokens_units` then this.
    #[inline(always)]
    pub fn decide(p: &BucketParams, tokens: i128, cost: u64, now_ns: i64) -> Decision {
        let cost_u = i128::from(cost) * UNITS_PER_TOKEN;
        let never = cost > p.capacity();
        let allowed = !never && tokens >= cost_u;
        let left = if allowed { tokens - cost_u } else { tokens };
        // A quota's `t` is the time until it resets, whether it is full or not; a
        // concurrency limit's is 0 (nothing comes back on a schedule).
        let full_in_ns = match p.window() {
            Some(w) => w.left_ns(now_ns),
            None if p.is_slots() => 0,
            None => p.wait_ns(p.cap_units().saturating_sub(left), now_ns),
        };
        let retry_after_ns = if never {
            full_in_ns
        } else if allowed {
            // Affordable now (the deficit below would be zero or less).
            0
        } else {
            p.wait_ns(cost_u.saturating_sub(tokens), now_ns)
        };
        Decision {
            allowed,
            remaining: super::params::whole_tokens(left),
            retry_after_ns,
            full_in_ns,
            never,
        }
    }

    /// Can `cost` be paid now? Takes nothing and counts nothing (it may apply the cap).
    pub fn evaluate(&mut self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        let tokens = self.tokens_units(p, now_ns);
        Self::decide(p, tokens, cost, now_ns)
    }

    /// Takes `cost` tokens (after an `evaluate` that allowed it at the same instant).
    pub fn commit(&mut self, cost: u64) {
        self.own.consumed = self.own.consumed.saturating_add(cost);
    }

    /// This node's consumed tokens, to hand to [`Bucket::uncommit_to`].
    pub fn own_consumed(&self) -> u64 {
        self.own.consumed
    }

    /// Undoes `commit`s back to `consumed`, as read by [`Bucket::own_consumed`] before them.
    /// Only for a multi-limit charge that a later limit refused, while it still holds the
    /// bucket's lock: no sync can have seen the undone tokens, so the counters stay
    /// grow-only from everyone else's point of view.
    pub fn uncommit_to(&mut self, consumed: u64) {
        self.own.consumed = consumed;
    }

    /// Counts one decided request, admitted or not.
    pub fn record_attempt(&mut self) {
        self.own.attempts = self.own.attempts.saturating_add(1);
    }

    /// `roll`, `evaluate`, `commit` when allowed, and `record_attempt`: the single-limit
    /// convenience.
    pub fn try_take(&mut self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        self.roll(p, now_ns);
        let d = self.evaluate(p, cost, now_ns);
        if d.allowed {
            self.commit(cost);
        }
        self.record_attempt();
        d
    }

    /// Like `evaluate`, read-only (for the admin endpoint and inspection).
    pub fn peek(&self, p: &BucketParams, cost: u64, now_ns: i64) -> Decision {
        Self::decide(p, self.uncapped(p, now_ns).min(p.cap_units()), cost, now_ns)
    }

    /// The bucket is full: its state says nothing a new full bucket would not (evictable).
    pub fn is_full(&self, p: &BucketParams, now_ns: i64) -> bool {
        self.uncapped(p, now_ns) >= p.cap_units()
    }

    /// This bucket under `new` parameters, holding the same tokens (clamped to the new
    /// capacity). Counters are kept; the waste is re-derived in the new credit frame. When the
    /// rate is unchanged this only raises it (a smaller capacity) or keeps it; a rate change
    /// moves A(t) itself, so it can lower the waste: only valid for a node-local bucket (shared
    /// buckets must keep their rate, or start a new generation in the store). A bucket that
    /// becomes a quota of another kind of window starts the window holding `now_ns` (counters
    /// of other windows do not count in it), with the same tokens.
    pub fn carry_over(&self, old: &BucketParams, new: &BucketParams, now_ns: i64) -> Bucket {
        let tokens = self
            .uncapped(old, now_ns)
            .min(old.cap_units())
            .min(new.cap_units());
        let mut b = match new.window() {
            Some(w) if old.window() != Some(w) => Bucket::new(new, now_ns),
            _ => self.clone(),
        };
        b.own.waste = b.waste_of(new, b.free_credit(new, now_ns).saturating_sub(tokens));
        b.others_waste = i128::MIN;
        b
    }

    /// The bucket a merged [`State`] describes at `now_ns` (for reading state from outside,
    /// as `tollgate inspect` does): every node's consumption summed, the largest waste; for a
    /// quota, a state read for the window holding `now_ns`. An empty state is a full bucket.
    pub fn from_state(state: &State, p: &BucketParams, now_ns: i64) -> Bucket {
        let own = match p.window() {
            Some(_) => Counters {
                waste: p.initial_waste(now_ns),
                ..Counters::BOTTOM
            },
            None => Counters::BOTTOM,
        };
        Bucket {
            own,
            others_consumed: state.total_consumed(),
            credit: 0,
            others_waste: state.max_waste().unwrap_or(i128::MIN),
        }
    }

    pub fn own(&self) -> &Counters {
        &self.own
    }

    /// Merges a view read from the shared store: what it holds for this node (max-merged into
    /// `own`: a restarted node continues its counters) and the other nodes' consumption (sum)
    /// and waste (max), each max-merged with what this bucket saw before. Nothing is lowered.
    pub fn absorb(&mut self, own_stored: &Counters, others_consumed: u64, others_waste: i128) {
        self.own.merge(own_stored);
        self.others_consumed = self.others_consumed.max(others_consumed);
        self.others_waste = self.others_waste.max(others_waste);
    }

    /// Continues a bucket created fresh (counted from zero, before its first read of the
    /// store) from the stored state: its counters become the stored ones plus what it did
    /// since its creation, and its waste the stored one (the creation's assumption of a new
    /// bucket, A(t0) - initial, is dropped; it was never written). A quota's creation assumes
    /// nothing lost in its window, which no stored waste of that window is below: it keeps the
    /// greater of the two (and its window).
    pub fn rebase_on_store(
        &mut self,
        p: &BucketParams,
        own_stored: Option<&Counters>,
        others_consumed: u64,
        others_waste: Option<i128>,
    ) {
        let base = own_stored.copied().unwrap_or(Counters::BOTTOM);
        // A store that holds no waste at all (only counters of nodes whose buckets are new
        // too) says nothing about the refill lost: the creation's assumption stays.
        let known = base.waste != i128::MIN || others_waste.is_some_and(|w| w != i128::MIN);
        self.own = Counters {
            consumed: base.consumed.saturating_add(self.own.consumed),
            attempts: base.attempts.saturating_add(self.own.attempts),
            waste: if p.window().is_some() {
                self.own.waste.max(same_window(self.own.waste, base.waste))
            } else if known {
                base.waste
            } else {
                self.own.waste
            },
        };
        self.others_consumed = others_consumed;
        self.others_waste = others_waste.unwrap_or(i128::MIN);
    }

    /// Merges the stored state into a bucket whose view lagged (not synced for a while and not
    /// pushed since): counters merge by max, but this node's waste becomes the stored one,
    /// since waste raised on the lagging view counted as lost refill what the other nodes had
    /// in fact spent. That waste was never written, so the shared record never saw it.
    ///
    /// When the store holds nothing of this node (it restarted empty, or the hash expired),
    /// the local waste stays: dropping it would refill the bucket to the brim on every node
    /// at once, which is exactly the over-admission the shared record is there to prevent.
    /// (A quota takes the stored waste of its own window only: the waste names the window.)
    pub fn refresh_from_store(
        &mut self,
        p: &BucketParams,
        own_stored: Option<&Counters>,
        others_consumed: u64,
        others_waste: Option<i128>,
    ) {
        if let Some(c) = own_stored {
            self.own.consumed = self.own.consumed.max(c.consumed);
            self.own.attempts = self.own.attempts.max(c.attempts);
            self.own.waste = match p.window() {
                Some(_) => same_window(self.own.waste, c.waste),
                None => c.waste,
            };
        }
        self.others_consumed = self.others_consumed.max(others_consumed);
        self.others_waste = self.others_waste.max(others_waste.unwrap_or(i128::MIN));
    }
}

/// A quota's waste `stored` when it is of the window `own` names, else `own` (see
/// [`WindowWaste`]): a waste of another window says nothing of this one.
fn same_window(own: i128, stored: i128) -> i128 {
    if WindowWaste::unpack(stored).index == WindowWaste::unpack(own).index {
        stored
    } else {
        own
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::window::Window;
    use proptest::prelude::*;

    #[test]
    fn waits_divide_the_same_below_and_above_two_to_the_64() {
        for rate in [1.0, 3.7, 1e9] {
            let p = BucketParams::new(1_000_000_000_000, rate, 0).unwrap();
            let r = i128::from(p.rate_q());
            for deficit in [
                1,
                r - 1,
                r,
                r + 1,
                i128::from(u64::MAX) - 1,
                i128::from(u64::MAX),
                i128::from(u64::MAX) + 1,
                UNITS_PER_TOKEN * 1_000_000_000_000,
            ] {
                let slow =
                    u64::try_from(deficit / r + i128::from(deficit % r != 0)).unwrap_or(u64::MAX);
                assert_eq!(
                    p.wait_ns(deficit, 0),
                    slow,
                    "rate {rate}, deficit {deficit}"
                );
            }
            assert_eq!(p.wait_ns(0, 0), 0);
            assert_eq!(p.wait_ns(-5, 0), 0);
        }
    }

    const SEC: i64 = 1_000_000_000;
    const S: u64 = SEC as u64;
    const T0: i64 = 1_790_000_000 * SEC;

    fn params(capacity: u64, rate: f64, initial: u64) -> BucketParams {
        BucketParams::new(capacity, rate, initial).expect("valid test params")
    }

    fn ctr(consumed: u64, attempts: u64, waste: i128) -> Counters {
        Counters {
            consumed,
            attempts,
            waste,
        }
    }

    /// (allowed, remaining, retry_after_ns, full_in_ns)
    fn parts(d: Decision) -> (bool, u64, u64, u64) {
        (d.allowed, d.remaining, d.retry_after_ns, d.full_in_ns)
    }

    #[test]
    fn new_bucket_burst_then_reject_with_exact_waits() {
        let p = params(10, 2.0, 10);
        let mut b = Bucket::new(&p, T0);
        assert_eq!(b.tokens_units(&p, T0), 10 * UNITS_PER_TOKEN);
        for i in 1..=10 {
            let d = b.try_take(&p, 1, T0);
            assert_eq!(parts(d), (true, 10 - i, 0, i * S / 2));
        }
        let d = b.try_take(&p, 1, T0);
        assert_eq!((parts(d), d.never), ((false, 0, S / 2, 5 * S), false));
        assert_eq!(b.peek(&p, 3, T0).retry_after_ns, 3 * S / 2);
        assert_eq!((b.own().consumed, b.own().attempts), (10, 11));
        assert!(!b.try_take(&p, 1, T0 + SEC / 2 - 1).allowed);
        assert!(b.try_take(&p, 1, T0 + SEC / 2).allowed);
        assert!(b.is_full(&p, T0 + 6 * SEC) && !b.is_full(&p, T0 + 5 * SEC));
    }

    #[test]
    fn fractional_rates_and_initial_tokens() {
        let p = params(3, 0.5, 1);
        let mut b = Bucket::new(&p, T0);
        assert!(b.try_take(&p, 1, T0).allowed);
        assert_eq!(parts(b.try_take(&p, 1, T0)), (false, 0, 2 * S, 6 * S));
        assert!(b.try_take(&p, 1, T0 + 2 * SEC).allowed);
        let slow = params(1, 0.0166, 1);
        assert_eq!(slow.rate_q(), 16_600_000);
        let mut b = Bucket::new(&slow, T0);
        assert!(b.try_take(&slow, 1, T0).allowed);
        // 10^18 / 16.6e6 = 60_240_963_855.4 ns, rounded up.
        assert_eq!(b.try_take(&slow, 1, T0).retry_after_ns, 60_240_963_856);
        assert!(!b.try_take(&slow, 1, T0 + 60_240_963_855).allowed);
        assert!(b.try_take(&slow, 1, T0 + 60_240_963_856).allowed);
        assert!((slow.seconds_to_fill() - 60.240_963_855).abs() < 1e-6);
    }

    #[test]
    fn cost_above_capacity_is_never_payable() {
        let p = params(5, 1.0, 3);
        let mut b = Bucket::new(&p, T0);
        let d = b.try_take(&p, 6, T0);
        assert_eq!((parts(d), d.never), ((false, 3, 2 * S, 2 * S), true));
        assert_eq!((b.own().consumed, b.own().attempts), (0, 1));
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_refunds() {
        let p = params(5, 1.0, 5);
        let mut b = Bucket::new(&p, T0);
        assert!(b.try_take(&p, 5, T0).allowed);
        let before = *b.own();
        let d = b.try_take(&p, 1, T0 - 10 * SEC);
        assert_eq!(parts(d), (false, 0, 11 * S, 15 * S));
        assert!(b.own().consumed == before.consumed && b.own().waste >= before.waste);
        // Back to the present: as if the clock had never jumped.
        assert!(b.try_take(&p, 1, T0 + SEC).allowed);
        assert!(!b.try_take(&p, 1, T0 + SEC).allowed);
    }

    #[test]
    fn extreme_inputs_never_panic() {
        let big = params(MAX_CAPACITY, MAX_RATE, MAX_CAPACITY);
        let small = params(1, 1e-9, 0);
        let month = BucketParams::quota(MAX_CAPACITY, Window::Month).expect("quota");
        let minute = BucketParams::quota(1, Window::Minute).expect("quota");
        for (p, t, t2) in [&big, &small, &month, &minute]
            .into_iter()
            .flat_map(|p| [i64::MIN, -1, 0, T0, i64::MAX].map(|t| (p, t)))
            .flat_map(|(p, t)| [i64::MIN, 0, i64::MAX].map(|t2| (p, t, t2)))
        {
            let mut b = Bucket::new(p, t);
            for cost in [0, 1, u64::MAX] {
                let _ = (b.try_take(p, cost, t2), b.peek(p, cost, t2));
            }
            b.commit(u64::MAX);
            b.commit(u64::MAX);
            for w in [i128::MIN, 0, i128::MAX] {
                let mut c = b.clone();
                let own = ctr(u64::MAX, u64::MAX, w);
                c.absorb(&own, u64::MAX, w);
                let _ = (c.tokens_units(p, t2), c.try_take(p, 1, t), c.is_full(p, t));
                let _ = c.carry_over(p, &big, t2).try_take(&small, 1, t);
                c.rebase_on_store(p, Some(&own), u64::MAX, Some(w));
                c.refresh_from_store(p, None, u64::MAX, None);
                let _ = c.try_take(p, u64::MAX, t2);
            }
        }
        let d = Bucket::from_state(&State::default(), &big, T0).peek(&big, 0, T0);
        assert_eq!((d.remaining, d.full_in_ns), (MAX_CAPACITY, 0));
        let d = Bucket::new(&small, T0).peek(&small, 1, T0);
        assert_eq!(d.retry_after_ns, 1_000_000_000_000_000_000);
    }

    #[test]
    fn evaluate_without_commit_changes_nothing_and_peek_agrees() {
        let p = params(4, 1.0, 4);
        let mut b = Bucket::new(&p, T0);
        b.try_take(&p, 3, T0);
        for t in [T0 + SEC / 2, T0 + 10 * SEC, T0 - SEC] {
            let (peek, snapshot) = (b.peek(&p, 2, t), b.clone());
            assert_eq!(peek, b.evaluate(&p, 2, t));
            assert_eq!(peek, b.evaluate(&p, 2, t));
            assert_eq!((b.own().consumed, b.own().attempts), (3, 1));
            assert_eq!(b.peek(&p, 2, t), snapshot.peek(&p, 2, t));
        }
    }

    #[test]
    fn carry_over_keeps_tokens_and_counters() {
        let left = |b: &Bucket, p: &BucketParams, t: i64| b.peek(p, 0, t).remaining;
        let p = params(10, 1.0, 10);
        let mut b = Bucket::new(&p, T0);
        b.try_take(&p, 4, T0);
        b.absorb(&Counters::default(), 2, i128::MIN);
        let big = params(100, 1.0, 100);
        let up = b.carry_over(&p, &big, T0);
        assert_eq!(
            (left(&up, &big, T0), left(&up, &big, T0 + 9 * SEC)),
            (4, 13)
        );
        assert!(up.own().consumed == 4 && up.own().waste >= b.own().waste);
        let small = params(3, 1.0, 3);
        assert_eq!(left(&b.carry_over(&p, &small, T0), &small, T0), 3);
        let (fast, slow) = (params(10, 1000.0, 10), params(10, 0.5, 10));
        let mut f = b.carry_over(&p, &fast, T0);
        assert_eq!(left(&f, &fast, T0), 4);
        assert_eq!(f.try_take(&fast, 5, T0 + SEC / 1000).remaining, 0);
        assert_eq!(left(&b.carry_over(&p, &slow, T0), &slow, T0 + 2 * SEC), 5);
        // A full bucket stays full; an indebted one keeps its debt.
        let full = Bucket::new(&p, T0).carry_over(&p, &big, T0 + 5 * SEC);
        assert_eq!(left(&full, &big, T0 + 5 * SEC), 10);
        b.absorb(&Counters::default(), 15, i128::MIN);
        assert_eq!(
            b.carry_over(&p, &big, T0).peek(&big, 1, T0).retry_after_ns,
            10 * S
        );
    }

    #[test]
    fn a_fresh_bucket_continues_the_stored_state() {
        let p = params(10, 1.0, 10);
        let mut old = Bucket::new(&p, T0);
        assert!(old.try_take(&p, 8, T0).allowed);
        let stored = *old.own();
        // After a restart the node creates the bucket anew and takes 1 before its first read.
        let mut fresh = Bucket::new(&p, T0 + SEC);
        assert!(fresh.try_take(&p, 1, T0 + SEC).allowed);
        fresh.rebase_on_store(&p, Some(&stored), 0, None);
        assert_eq!(fresh.own().consumed, 9);
        // 10 - 8 + 1 (refill) - 1 = 2 tokens, as if the node had never restarted.
        assert_eq!(fresh.peek(&p, 0, T0 + SEC).remaining, 2);
        let mut again = Bucket::new(&p, T0 + SEC);
        again.absorb(&stored, 0, i128::MIN);
        assert_eq!(again.own().consumed, 8);
    }

    #[test]
    fn bucket_is_small() {
        assert!(std::mem::size_of::<Bucket>() <= 64);
    }

    #[test]
    fn params_are_validated() {
        // Every kind of bucket holds at least one token: a request's cost of 1 is never one
        // that no wait could pay (the decision counts on it, see `request::decision`).
        let e = BucketParams::new(0, 1.0, 0);
        assert_eq!(e, Err(ParamError::CapacityTooSmall));
        let e = BucketParams::quota(0, Window::Day);
        assert_eq!(e, Err(ParamError::CapacityTooSmall));
        assert_eq!(BucketParams::slots(0), Err(ParamError::CapacityTooSmall));
        for (c, r, i) in [
            (MAX_CAPACITY + 1, 1.0, 1),
            (1, 0.0, 1),
            (1, -1.0, 1),
            (1, f64::NAN, 1),
            (1, f64::INFINITY, 1),
            (1, 4e-10, 1),
            (1, 1.000_001e9, 1),
            (2, 1.0, 3),
        ] {
            let e = BucketParams::new(c, r, i).expect_err("refused");
            assert!(!e.to_string().is_empty());
        }
        let p = params(5, 0.123_456_789_4, 0);
        let got = (p.rate_q(), p.capacity(), p.initial_tokens());
        assert_eq!(got, (123_456_789, 5, 0));
        assert_eq!(params(1, 1e-9, 1).rate_q(), 1);
        assert_eq!(params(1, MAX_RATE, 1).rate_q(), 1_000_000_000_000_000_000);
        assert_eq!(params(3, 2.0, 3).refill_per_second(), 2.0);
    }

    /// A literal sequential token bucket in the same exact units.
    struct Reference {
        cap: i128,
        rate: i128,
        tokens: i128,
        last: i64,
    }

    impl Reference {
        fn new(p: &BucketParams, initial: u64, now: i64) -> Self {
            let (cap, rate) = (p.cap_units(), i128::from(p.rate_q()));
            let tokens = i128::from(initial) * UNITS_PER_TOKEN;
            Reference {
                cap,
                rate,
                tokens,
                last: now,
            }
        }

        fn take(&mut self, cost: u64, now: i64) -> (bool, u64, u64, u64) {
            let wait = |d: i128| ((d.max(0) + self.rate - 1) / self.rate) as u64;
            let tokens = (self.tokens + i128::from(now - self.last) * self.rate).min(self.cap);
            self.last = now;
            let cost_u = i128::from(cost) * UNITS_PER_TOKEN;
            if tokens >= cost_u {
                self.tokens = tokens - cost_u;
                let left = self.tokens / UNITS_PER_TOKEN;
                return (true, left as u64, 0, wait(self.cap - self.tokens));
            }
            self.tokens = tokens;
            let full = wait(self.cap - tokens);
            let retry = if cost_u > self.cap {
                full
            } else {
                wait(cost_u - tokens)
            };
            (false, (tokens.max(0) / UNITS_PER_TOKEN) as u64, retry, full)
        }
    }

    /// Every node absorbs every node's counters (its own waste among the others' is harmless:
    /// the bucket takes the max of both).
    fn sync_all(nodes: &mut [Bucket]) {
        let all: Vec<Counters> = nodes.iter().map(|b| *b.own()).collect();
        let total: u64 = all.iter().map(|c| c.consumed).sum();
        let waste = all.iter().map(|c| c.waste).max().unwrap_or(i128::MIN);
        for (b, c) in nodes.iter_mut().zip(&all) {
            b.absorb(c, total - c.consumed, waste);
        }
    }

    /// (capacity, refill_per_second, initial), and events drawn from `ev(capacity)`.
    fn runs<E: Strategy>(
        ev: impl Fn(u64) -> E,
    ) -> impl Strategy<Value = ((u64, f64, u64), Vec<E::Value>)> {
        (1u64..=1000, 0.001f64..1000.0)
            .prop_flat_map(|(c, r)| (Just(c), Just(r), 0..=c))
            .prop_flat_map(move |cfg| (Just(cfg), prop::collection::vec(ev(cfg.0), 1..150)))
    }

    fn counters() -> impl Strategy<Value = State> {
        let c = (0u64..100, 0u64..100, -50i128..50);
        prop::collection::btree_map("[a-c]", c, 0..3).prop_map(|m| State {
            nodes: m
                .into_iter()
                .map(|(k, (c, a, w))| (k, ctr(c, a, w)))
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn one_node_is_exactly_a_sequential_bucket(
            ((capacity, rate, initial), evs) in runs(|c| (-SEC..=5 * SEC, 1..=c + 2, 0u8..4)),
        ) {
            let p = params(capacity, rate, initial);
            let (mut b, mut r, mut now) = (Bucket::new(&p, T0), Reference::new(&p, initial, T0), T0);
            for (dt, cost, kind) in evs {
                // Mostly forward; a quarter of the events keep time or move it back.
                now += if kind == 0 { dt.min(0) } else { dt.max(0) };
                let d = b.try_take(&p, cost, now);
                prop_assert_eq!(parts(d), r.take(cost, now));
                prop_assert_eq!(d.never, cost > capacity);
            }
        }

        #[test]
        fn perfectly_synced_nodes_are_one_sequential_bucket(
            ((capacity, rate, initial), evs) in runs(|c| (0..=2 * SEC, 1..=c + 1, 0usize..6)),
        ) {
            let p = params(capacity, rate, initial);
            let n = 2 + evs[0].2 % 2;
            let mut nodes: Vec<Bucket> = (0..n).map(|_| Bucket::new(&p, T0)).collect();
            let (mut r, mut now) = (Reference::new(&p, initial, T0), T0);
            for (dt, cost, i) in evs {
                now += dt;
                prop_assert_eq!(parts(nodes[i % n].try_take(&p, cost, now)), r.take(cost, now));
                sync_all(&mut nodes);
            }
        }

        #[test]
        fn lagging_nodes_stay_within_the_g_counter_bound(
            ((capacity, rate, initial), evs) in runs(|_| (0..=SEC / 2, 1u64..=3, 0usize..60)),
        ) {
            let p = params(capacity, rate, initial);
            let (n, every) = (2 + evs[0].2 % 2, 1 + evs[0].2 / 6);
            let mut nodes: Vec<Bucket> = (0..n).map(|_| Bucket::new(&p, T0)).collect();
            let (mut now, mut last_sync, mut gap, mut admitted) = (T0, T0, 0i64, 0u64);
            for (k, (dt, cost, i)) in evs.into_iter().enumerate() {
                now += dt;
                if nodes[i % n].try_take(&p, cost, now).allowed {
                    admitted += cost;
                }
                if k % every == every - 1 {
                    (gap, last_sync) = (gap.max(now - last_sync), now);
                    sync_all(&mut nodes);
                }
            }
            gap = gap.max(now - last_sync);
            sync_all(&mut nodes);
            // Exact units: one sequential bucket over the run, plus what each other node could
            // spend unseen within one sync gap (its view's capacity and refill).
            let rate_q = i128::from(p.rate_q());
            let ideal = i128::from(initial) * UNITS_PER_TOKEN + rate_q * i128::from(now - T0);
            let unseen = (n as i128 - 1) * (p.cap_units() + rate_q * i128::from(gap));
            prop_assert!(i128::from(admitted) * UNITS_PER_TOKEN <= ideal + unseen);
            // Nothing admitted is lost from the record, and after the sync all views agree.
            let mut state = State::default();
            for (i, b) in nodes.iter().enumerate() {
                state.insert(&i.to_string(), *b.own());
            }
            prop_assert_eq!(state.total_consumed(), admitted);
            let merged = Bucket::from_state(&state, &p, now).peek(&p, 1, now);
            prop_assert!(nodes.iter().all(|b| b.peek(&p, 1, now) == merged));
        }

        #[test]
        fn state_merge_is_a_crdt(a in counters(), b in counters(), c in counters()) {
            let merged = |x: &State, y: &State| { let mut z = x.clone(); z.merge(y); z };
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            for (x, y) in a.nodes.iter().chain(b.nodes.iter()) {
                let z = ab.get(x).expect("merge keeps every node");
                prop_assert!(z.consumed >= y.consumed && z.attempts >= y.attempts);
                prop_assert!(z.waste >= y.waste);
            }
            prop_assert!(ab.total_consumed() >= a.total_consumed().max(b.total_consumed()));
            prop_assert!(ab.max_waste() >= a.max_waste().max(b.max_waste()));
        }
    }
}
