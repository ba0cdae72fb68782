//! Pacing between syncs: how much of a shared bucket this node may spend before it next
//! hears from the others.
//!
//! The CRDT bucket alone never turns away a client within its limit: a node's merged view
//! only lags behind what the others spent, so it sees at least the tokens a sequential bucket
//! would have, and what it spends unseen becomes debt after the next merge, which keeps it
//! accurate over long windows. Its weakness is the short window: a burst through N nodes
//! onto a full bucket admits up to N x capacity before anyone syncs, and under sustained
//! overload every node spends the same refill between syncs (admission comes in waves). Pacing
//! gives each node a *share* of the tokens between syncs, but only where it matters, so that
//! it never costs a client within its limit a request (outside the one price of
//! `burst_guard`, below).
//!
//! # The rules
//!
//! Every node publishes a monotone `attempts` counter per bucket (admitted + rejected). At each
//! sync read of a bucket a node takes every node's attempts since its previous read:
//!
//! - **No concurrent demand** (no other node asked since the previous read): the whole bucket.
//! - **No pressure** (the attempts of every node over the last read's span, scaled to two sync
//!   intervals, do not exceed the merged tokens: the bucket cannot run dry before the next
//!   sync): the whole bucket.
//! - Otherwise a **demand share**: s = own rate of attempts / every node's (at least a tenth of
//!   the equal share 1/N, so that a node whose demand starts right after a sync is not shut out
//!   for an interval). Until the next sync the node may spend s x (the merged tokens at the
//!   sync) plus s x the refill since, capped at s x capacity, on top of the bucket's own check.
//!   A share after a share weighs the new one a third and the last two thirds (the few
//!   requests of one span are noisy).
//!
//! The others' attempts since the previous read count over the span of their writes (their
//! `seen_ms`; see [`Spans`]), this node's over its own. A read that shows no write of another
//! node since the previous one, a sync interval after it, keeps the share and leaves the
//! demand to the next read, measured from the previous one: the others' rounds drifted, and
//! their next writes are due.
//!
//! Shares are computed by each node at its own sync moments, so they can sum a little above 1;
//! the simulation (`tests/pacing_simulation.rs`) bounds the excess.
//!
//! # What a pace remembers of the previous read
//!
//! The counters of the previous read summed over the nodes ([`Sums`]: this node's attempts,
//! every node's attempts and tokens taken), not every node's: the sums of two reads differ by
//! what the nodes asked in between as long as no node's counters went away, and a synced
//! bucket carries 64 bytes of pace whatever the number of nodes. What the sums cannot tell:
//!
//! - A read from which a node's counters are gone (a store that lost the hash, a hash that
//!   expired) keeps the share, on the new tokens, as a quota's first read of a window does;
//!   the next read measures the demand again.
//! - With `burst_guard`, a node that announced the bucket and has no counters yet counts as
//!   asking as much as this one at the first read that shows its announcement later than the
//!   latest write of another node the previous read showed (a node's own clock writes it), so
//!   at one read. A node that announces again a bucket it wrote before (it dropped the bucket
//!   and took it again) has counters, and counts from its next write.
//! - Counters are kept as their low 32 bits: exact while no sum moves by 2^31 between two
//!   reads of one bucket (requests never do; see [`Sums`] for tokens taken).
//!
//! # A bucket this node has not heard about lately
//!
//! A bucket new to this node (or idle: no sync for three intervals) has no demand history.
//! What it may spend before its demand history starts is the per-limit `burst_guard` choice:
//!
//! - `false` (default): the whole bucket, from the merged view. No client within its limit is
//!   turned away. A burst through N nodes at once onto a full bucket admits at most
//!   N x capacity, once per idle period; the excess is debt, which the key then waits off
//!   (nothing is admitted until the refill has covered it).
//! - `true`: the guard share g = 1 / (5 (N - 1)) of the merged tokens, until the node has heard
//!   from every live node since its own demand began: until every other node's last sync (the
//!   registry) is at least one sync interval after that moment. A node that began earlier has
//!   pushed its demand by then (a bucket is read on the first sync after its creation and
//!   pushed on the second), and one that began later is within its own guard share. So a burst
//!   through N nodes onto a full bucket admits at most capacity + (N - 1) x g x capacity =
//!   1.2 x capacity, plus what the shares' timing adds, whatever moments the loads start at.
//!   The price: a burst through a single node after an idle period gets g of the bucket for up
//!   to three sync intervals (its first reads), then the whole bucket.
//!
//! With one live node there is no pace: one node behaves exactly like a sequential bucket.
//!
//! # When the store is unreachable
//!
//! No sync means no new shares. A node keeps its last demand share, and its allowance accrues
//! at that share of the rate from where it was, so the nodes together admit about the refill.
//! A bucket that had no share (it was under no pressure) keeps the whole bucket by default, so
//! that a client within its limit stays admitted (a key that only comes under pressure during
//! the outage can then take up to N x the refill), and takes the equal share 1/N with
//! `burst_guard`. Restarting the allowance from the
//! local view at every stale check instead would hand the node a share of what the others
//! spent unseen, over and over.

use crate::limit::bucket::{BucketParams, Counters, UNITS_PER_TOKEN};
use crate::limit::pacing_demand::{demand_share, nothing_new, reading, smoothed, Spans, Sums};
use crate::limit::window::Window;
use std::collections::BTreeMap;

pub use crate::limit::pacing_demand::WHOLE;

/// What a decision needs to know of the cluster and of the limit.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    /// Live nodes sharing the bucket, this one included.
    pub live: u32,
    pub sync_interval_ns: i64,
    /// The oldest last sync among the other live nodes (ns, on the corrected clock).
    pub others_synced_ns: i64,
    /// The shared store answers (the last sync round went through).
    pub connected: bool,
    /// The limit's `burst_guard`.
    pub guard: bool,
    /// The limit is a quota of this kind of window: its tokens come back all at once at each
    /// window's start, on every node at the same moment, so a read right after a boundary
    /// shows the whole quota on every node while each spends it unseen. Its reads are shared
    /// as a guarded limit's are (s x s of the tokens, see [`Pace::resync`]); its first read of
    /// an idle bucket is not (a client within its quota is never turned away). Its counters
    /// start from zero at each window, so demand is measured within one window.
    pub window: Option<Window>,
}

impl Cluster {
    /// A pace older than this (no sync of its bucket) is restarted.
    fn stale_ns(&self) -> i64 {
        self.sync_interval_ns.saturating_mul(3)
    }

    /// The guard share, ppm: 1 / (5 (N - 1)).
    fn guard_ppm(&self) -> u32 {
        if self.live <= 1 {
            WHOLE
        } else {
            WHOLE / (5 * (self.live - 1))
        }
    }

    fn equal_ppm(&self) -> u32 {
        WHOLE / self.live.max(1)
    }

    fn sync_ms(&self) -> u64 {
        u64::try_from(self.sync_interval_ns / 1_000_000).unwrap_or(0)
    }

    /// Every other live node has synced at least one interval after `since_ns`.
    fn heard_since(&self, since_ns: i64) -> bool {
        self.live <= 1 || self.others_synced_ns >= since_ns.saturating_add(self.sync_interval_ns)
    }
}

/// Where a pace is in its bucket's active period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// No allowance yet (a new bucket): set at the first decision.
    #[default]
    Unset,
    /// Before the demand history: the whole bucket (default) or the guard share.
    Starting,
    /// From a sync read: the whole bucket or a demand share.
    Synced,
    /// Restarted without a sync while the store is unreachable.
    Outage,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Unset, Phase::Starting, Phase::Synced, Phase::Outage];
}

/// This node's allowance for one shared bucket, in 64 bytes: with its sync state, the only
/// allocations a synced bucket carries (`docs/performance.md`, "Memory per bucket"). The
/// demand history is the previous read's counters summed over the nodes ([`Sums`]), not
/// every node's: a list of every node's (32 bytes a node, in an allocation of its own) made
/// a synced bucket 386 bytes with three nodes.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Allowance at `since_ns`, already scaled by the share, in `1 / FX_PER_TOKEN` of a token,
    /// rounded up (see [`to_fx`]).
    base_fx: i64,
    since_ns: i64,
    spent: u64,
    /// When this node's demand on the bucket began (the start of its active period).
    demand_since_ns: i64,
    /// When the previous read of this active period was: [`NO_READ`] before its first.
    prev_ns: i64,
    /// The share in ppm (the low 20 bits: at most [`WHOLE`]) and the phase (the two above).
    share: u32,
    /// This node's share of the refill (and of the capacity, its allowance's cap: the demand
    /// share, or the equal share while a guarded bucket starts) in ppm (the low 20 bits), and
    /// the nodes the previous read showed (the 12 above, at most [`MAX_NODES`]).
    refill: u32,
    /// The previous read's demand.
    prev: Sums,
}

/// [`Pace::prev_ns`] before the first read of an active period.
const NO_READ: i64 = i64::MIN;
/// Bits of [`Pace::share`] and [`Pace::refill`] that hold a share (`WHOLE` < 2^20).
const PPM_BITS: u32 = 20;
const PPM_MASK: u32 = (1 << PPM_BITS) - 1;
/// The most nodes [`Pace::refill`] counts (more count as this many).
const MAX_NODES: u32 = (1 << (32 - PPM_BITS)) - 1;
/// A pace's allowance is kept in this fraction of a token (2^-20, about a millionth): an
/// `i64` holds the largest capacity (10^12 tokens) where units (10^-18 of a token) need an
/// `i128`. Rounded up, so that no allowance is smaller than the exact one.
const FX_PER_TOKEN: i128 = 1 << 20;

// One size class of the allocator: a synced bucket's memory is checked by `scripts/memory.sh`.
const _: () = assert!(std::mem::size_of::<Pace>() <= 64);

/// `units` (non-negative) in `1 / FX_PER_TOKEN` of a token, rounded up.
fn to_fx(units: i128) -> i64 {
    let units = units.max(0);
    let fx = units / UNITS_PER_TOKEN * FX_PER_TOKEN
        + (units % UNITS_PER_TOKEN * FX_PER_TOKEN + UNITS_PER_TOKEN - 1) / UNITS_PER_TOKEN;
    i64::try_from(fx).unwrap_or(i64::MAX)
}

/// `fx` (from [`to_fx`]) in units: at least the units it was made from.
fn from_fx(fx: i64) -> i128 {
    let fx = i128::from(fx);
    fx / FX_PER_TOKEN * UNITS_PER_TOKEN + fx % FX_PER_TOKEN * UNITS_PER_TOKEN / FX_PER_TOKEN
}

fn scale(units: i128, ppm: u32) -> i128 {
    units / i128::from(WHOLE) * i128::from(ppm)
        + (units % i128::from(WHOLE)) * i128::from(ppm) / i128::from(WHOLE)
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            base_fx: 0,
            since_ns: 0,
            spent: 0,
            demand_since_ns: 0,
            prev_ns: NO_READ,
            share: 0,
            refill: 0,
            prev: Sums::default(),
        }
    }
}

impl Pace {
    /// A pace that never limits (a node alone).
    pub fn whole() -> Pace {
        let mut pace = Pace::default();
        pace.set_share(Phase::Synced, WHOLE);
        pace.set_refill_ppm(WHOLE);
        pace
    }

    pub fn share_ppm(&self) -> u32 {
        self.share & PPM_MASK
    }

    fn phase(&self) -> Phase {
        Phase::ALL[(self.share >> PPM_BITS) as usize & 3]
    }

    fn set_share(&mut self, phase: Phase, share_ppm: u32) {
        self.share = share_ppm.min(WHOLE) | (phase as u32) << PPM_BITS;
    }

    fn set_phase(&mut self, phase: Phase) {
        self.set_share(phase, self.share_ppm());
    }

    fn refill_ppm(&self) -> u32 {
        self.refill & PPM_MASK
    }

    fn set_refill_ppm(&mut self, ppm: u32) {
        self.refill = ppm.min(WHOLE) | (self.refill & !PPM_MASK);
    }

    /// The nodes the previous read showed.
    fn prev_nodes(&self) -> u32 {
        self.refill >> PPM_BITS
    }

    fn set_prev_nodes(&mut self, n: u32) {
        self.refill = self.refill_ppm() | n.min(MAX_NODES) << PPM_BITS;
    }

    fn base(&self) -> i128 {
        from_fx(self.base_fx)
    }

    fn set_base(&mut self, units: i128) {
        self.base_fx = to_fx(units);
    }

    fn restart(&mut self, phase: Phase, share_ppm: u32, tokens_units: i128, now_ns: i64) {
        self.set_share(phase, share_ppm);
        self.set_refill_ppm(self.share_ppm());
        self.set_base(scale(tokens_units.max(0), self.share_ppm()));
        self.since_ns = now_ns;
        self.spent = 0;
    }

    /// Starts an active period: no demand history yet. The guard share is at least one
    /// token, when the bucket holds one: a small bucket's share would otherwise admit nothing.
    fn start(&mut self, c: &Cluster, tokens_units: i128, now_ns: i64) {
        let share = if c.guard { c.guard_ppm() } else { WHOLE };
        self.restart(Phase::Starting, share, tokens_units, now_ns);
        if self.share_ppm() < WHOLE {
            self.set_base(self.base().max(tokens_units.clamp(0, UNITS_PER_TOKEN)));
            // The refill is new tokens, which nobody has spent: shared equally.
            self.set_refill_ppm(c.equal_ppm().max(self.share_ppm()));
        }
        self.demand_since_ns = now_ns;
        self.prev_ns = NO_READ;
    }

    /// Units this node may still spend now: its share of the tokens at the restart, plus its
    /// share of the refill since, less what it spent, at most its share of the capacity (a
    /// sub-bucket: what it does not spend is lost at that cap, as in the bucket itself).
    fn allowance(&mut self, p: &BucketParams, now_ns: i64) -> i128 {
        let mut cap = scale(
            i128::from(p.capacity()) * UNITS_PER_TOKEN,
            self.refill_ppm(),
        );
        if self.phase() == Phase::Starting {
            cap = cap.max(UNITS_PER_TOKEN);
        }
        let dt = i128::from(now_ns.saturating_sub(self.since_ns).max(0));
        let refill = scale(dt * i128::from(p.rate_q()), self.refill_ppm());
        let left = self.base() + refill - i128::from(self.spent) * UNITS_PER_TOKEN;
        if left > cap {
            // Full: start again from the cap, so that a long time without a sync (an outage)
            // keeps accruing rather than stopping once the refill has reached the cap.
            self.set_base(cap);
            self.since_ns = now_ns;
            self.spent = 0;
            return cap;
        }
        left
    }

    /// Whether `cost` fits this node's allowance. `tokens_units` is the bucket's merged view
    /// now. Returns the nanoseconds to wait when it does not fit.
    pub fn check(
        &mut self,
        p: &BucketParams,
        cost: u64,
        tokens_units: i128,
        now_ns: i64,
        c: &Cluster,
    ) -> Result<(), u64> {
        if c.live <= 1 {
            return Ok(());
        }
        let stale = now_ns.saturating_sub(self.since_ns) > c.stale_ns();
        match self.phase() {
            Phase::Unset => self.start(c, tokens_units, now_ns),
            Phase::Outage if c.connected => self.start(c, tokens_units, now_ns),
            Phase::Starting | Phase::Synced if stale && !c.connected => {
                if self.share_ppm() < WHOLE || !c.guard {
                    // Keep the share (the whole bucket for one that had no pressure), and the
                    // allowance as it accrues at that share.
                    self.set_phase(Phase::Outage);
                } else {
                    // Guarded, and no share: the equal one.
                    self.restart(Phase::Outage, c.equal_ppm(), tokens_units, now_ns);
                }
            }
            Phase::Starting | Phase::Synced if stale => self.start(c, tokens_units, now_ns),
            _ => {}
        }
        if self.share_ppm() == WHOLE {
            return Ok(());
        }
        let need = i128::from(cost) * UNITS_PER_TOKEN - self.allowance(p, now_ns);
        if need <= 0 {
            return Ok(());
        }
        let rate = scale(i128::from(p.rate_q()), self.refill_ppm()).max(1);
        let wait = u64::try_from((need + rate - 1) / rate).unwrap_or(u64::MAX);
        // The next sync (or the stale restart) gives a new share: never announce a wait
        // longer than that.
        let until_resync = u64::try_from(
            c.stale_ns()
                .saturating_sub(now_ns.saturating_sub(self.since_ns))
                .max(1),
        )
        .unwrap_or(1);
        Err(wait.min(until_resync))
    }

    pub fn spend(&mut self, cost: u64) {
        self.spent = self.spent.saturating_add(cost);
    }

    /// What was spent so far, to hand to [`Pace::unspend_to`].
    pub fn spent(&self) -> u64 {
        self.spent
    }

    /// Undoes `spend`s back to `spent` (see [`crate::limit::bucket::Bucket::uncommit_to`]).
    pub fn unspend_to(&mut self, spent: u64) {
        self.spent = spent;
    }

    /// After a sync read: a new allowance from the demand since the previous read and the
    /// merged tokens now. `nodes`: the counters of every node that wrote some; `seen_ms`: when
    /// each node last wrote the bucket (or announced it); `own`: this node's counters, at
    /// least what `nodes` shows of them (its entry there is not read).
    pub fn resync(
        &mut self,
        (me, own): (&str, &Counters),
        (nodes, seen_ms): (&BTreeMap<String, Counters>, &BTreeMap<String, u64>),
        tokens_units: i128,
        now_ns: i64,
        c: &Cluster,
    ) {
        if matches!(self.phase(), Phase::Unset | Phase::Outage) {
            // A bucket read before its first decision (a warm start), or back from an outage:
            // its demand history starts here.
            self.start(c, tokens_units, now_ns);
        }
        let first = self.prev_ns == NO_READ;
        let (now, counted, announced) = reading(me, own, (nodes, seen_ms), &self.prev, first);
        // Guarded or a quota: the others may be spending their shares of these tokens
        // unseen (what they spent since their last write is not in this view). Take the share
        // of what is left after theirs: s x (1 - (1 - s)) = s^2 of the tokens. What no node
        // takes stays in the bucket for the next sync; the refill is shared in full.
        let squared = c.guard || c.window.is_some();
        let (prev, prev_counted, prev_ns) = (self.prev, self.prev_nodes(), self.prev_ns);
        let new_window = !first && (c.window).is_some_and(|w| w.index(prev_ns) != w.index(now_ns));
        let own_ms = u64::try_from(now_ns.saturating_sub(prev_ns) / 1_000_000).unwrap_or(0);
        if !first
            && !new_window
            && counted > 1
            && counted >= prev_counted
            && announced == 0
            && nothing_new(&prev, &now, own_ms, c.sync_ms())
        {
            // No other node wrote since the previous read, a sync interval ago: their next
            // writes are due. Keep the share, and measure the demand from the previous read
            // at the next (so that a read never finds no demand but its own merely because
            // the others' rounds drifted against this node's). A read longer after the
            // previous one measures: the others asked nothing.
            self.keep_share(tokens_units, now_ns, squared);
            return;
        }
        self.prev = now;
        self.set_prev_nodes(counted);
        self.prev_ns = now_ns;
        if first {
            // The first read of this active period: the others' demand shows from the next.
            return;
        }
        // Or some node's counters are gone from the hash (a store that lost it, a hash that
        // expired): the sums cannot tell what the others asked since.
        if new_window || counted < prev_counted {
            self.keep_share(tokens_units, now_ns, squared);
            return;
        }
        if self.phase() == Phase::Starting && c.guard && !c.heard_since(self.demand_since_ns) {
            // Guarded, and some node may still be spending unseen: keep the guard share.
            return;
        }
        // A node alone takes the whole; a share by demand is at least a tenth of the equal one.
        let share = if c.live <= 1 {
            WHOLE
        } else {
            let spans = Spans::of(&prev, &now, own_ms);
            let share = demand_share(prev, now, announced, c.guard, spans);
            let last = self.share_ppm();
            if self.phase() == Phase::Synced && share < WHOLE && last < WHOLE {
                smoothed(last, share).max(c.equal_ppm() / 10)
            } else {
                share.max(c.equal_ppm() / 10)
            }
        };
        self.resynced(share, tokens_units, now_ns, squared);
    }

    /// Synced on `share` of the tokens now, of `share` x `share` of them when `squared` (see
    /// [`Pace::resync`]).
    fn resynced(&mut self, share: u32, tokens_units: i128, now_ns: i64, squared: bool) {
        self.restart(Phase::Synced, share, tokens_units, now_ns);
        if squared && share < WHOLE {
            self.set_base(scale(self.base(), share));
        }
    }

    /// A read that cannot measure the demand since the previous one: the first read of a
    /// quota's new window (its counters start from zero at each window, so the previous
    /// read's are no baseline for this one's; and the others' first writes of the window may
    /// not have come yet, so that this read would see no demand but this node's, and hand it
    /// the whole quota while every node does the same), or one from which a node's counters
    /// are gone. The share stays instead, on the new tokens (s x s of them when `squared`, as
    /// at any read of a quota or a guarded limit); the next read measures the demand again. A
    /// pace still starting (guarded, not yet heard from the others) stays as it is.
    fn keep_share(&mut self, tokens_units: i128, now_ns: i64, squared: bool) {
        if self.phase() == Phase::Synced {
            self.resynced(self.share_ppm(), tokens_units, now_ns, squared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn cluster(live: u32, guard: bool) -> Cluster {
        Cluster {
            live,
            sync_interval_ns: 100 * MS,
            others_synced_ns: 0,
            connected: true,
            guard,
            window: None,
        }
    }

    fn params() -> BucketParams {
        BucketParams::new(100, 1.0, 100).expect("params")
    }

    fn tokens(n: i128) -> i128 {
        n * UNITS_PER_TOKEN
    }

    /// How many of `n` requests of cost 1 the pace admits now (spending each).
    fn take(pace: &mut Pace, n: u64, now: i64, c: &Cluster) -> u64 {
        let mut admitted = 0;
        for _ in 0..n {
            if pace.check(&params(), 1, tokens(100), now, c).is_ok() {
                pace.spend(1);
                admitted += 1;
            }
        }
        admitted
    }

    /// A read of the bucket by node "me" finding its own counters and one other node's,
    /// (attempts, consumed) each, and no tokens left.
    fn read_two(pace: &mut Pace, me: (u64, u64), other: (u64, u64), at: i64, c: &Cluster) {
        read_two_seen(pace, me, other, &BTreeMap::new(), at, c);
    }

    /// [`read_two`], the nodes' `seen_ms` being `seen`.
    fn read_two_seen(
        pace: &mut Pace,
        me: (u64, u64),
        other: (u64, u64),
        seen: &BTreeMap<String, u64>,
        at: i64,
        c: &Cluster,
    ) {
        let nodes = BTreeMap::from([
            ("me".to_string(), counters(me.0, me.1)),
            ("other".to_string(), counters(other.0, other.1)),
        ]);
        let own = counters(me.0, me.1);
        pace.resync(("me", &own), (&nodes, seen), tokens(0), at, c);
    }

    /// A node's counters: `attempts` requests, of which `consumed` admitted (cost 1).
    fn counters(attempts: u64, consumed: u64) -> Counters {
        Counters {
            consumed,
            attempts,
            waste: 0,
        }
    }

    /// A read keeps the demand it shows as sums over the nodes, in place: a synced bucket
    /// costs no allocation per sync; and the share still comes from the demand since the
    /// previous read (what it replaces).
    #[test]
    fn a_read_keeps_the_demand_summed_over_the_nodes() {
        let c = cluster(2, false);
        let mut pace = Pace::default();
        read_two(&mut pace, (10, 10), (10, 10), 100 * MS, &c);
        assert_eq!((pace.prev_ns, pace.prev_nodes()), (100 * MS, 2));
        // Both nodes asked 10 more, and only half were admitted: each has half the demand.
        read_two(&mut pace, (20, 15), (20, 15), 200 * MS, &c);
        assert_eq!(pace.share_ppm(), WHOLE / 2);
        assert_eq!(
            (pace.prev, pace.prev_ns),
            (
                Sums {
                    own: 20,
                    attempts: 40,
                    consumed: 30,
                    seen: 0
                },
                200 * MS
            )
        );
        // This node alone asked since: the whole bucket.
        read_two(&mut pace, (30, 20), (20, 15), 300 * MS, &c);
        assert_eq!(pace.share_ppm(), WHOLE);
        // A third node: its counters are all demand since the last read (it had none then).
        let nodes = BTreeMap::from([
            ("me".to_string(), counters(40, 25)),
            ("other".to_string(), counters(20, 15)),
            ("third".to_string(), counters(30, 5)),
        ]);
        let own = counters(40, 25);
        pace.resync(
            ("me", &own),
            (&nodes, &BTreeMap::new()),
            tokens(0),
            400 * MS,
            &c,
        );
        assert_eq!(pace.prev_nodes(), 3);
        assert_eq!(pace.share_ppm(), WHOLE / 4, "10 of 40 requests since");
    }

    /// Counters are kept as their low 32 bits: a read across 2^32 measures the same demand.
    #[test]
    fn counters_past_32_bits_measure_the_same_demand() {
        let c = cluster(2, false);
        let big = 1u64 << 32;
        let mut pace = Pace::default();
        read_two(
            &mut pace,
            (big - 10, big - 20),
            (big - 5, big - 30),
            100 * MS,
            &c,
        );
        // 10 here and 30 there since, 20 turned away: a quarter.
        read_two(
            &mut pace,
            (big, big - 10),
            (big + 25, big - 10),
            200 * MS,
            &c,
        );
        assert_eq!(pace.share_ppm(), WHOLE / 4);
    }

    /// A node whose counters are gone from the hash (a store that lost it) leaves sums that
    /// cannot tell what the others asked: the share stays until the next read measures it.
    #[test]
    fn a_node_gone_from_the_hash_keeps_the_share() {
        let c = cluster(3, false);
        let t0 = 1_000 * MS;
        let three = |me: (u64, u64), b: (u64, u64), third: (u64, u64)| {
            BTreeMap::from([
                ("me".to_string(), counters(me.0, me.1)),
                ("b".to_string(), counters(b.0, b.1)),
                ("c".to_string(), counters(third.0, third.1)),
            ])
        };
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let read = |pace: &mut Pace, nodes: &BTreeMap<String, Counters>, at| {
            let own = nodes["me"];
            pace.resync(("me", &own), (nodes, &BTreeMap::new()), tokens(0), at, &c);
        };
        read(
            &mut pace,
            &three((10, 10), (10, 10), (10, 10)),
            t0 + 100 * MS,
        );
        read(
            &mut pace,
            &three((20, 12), (40, 12), (50, 12)),
            t0 + 200 * MS,
        );
        assert_eq!(pace.share_ppm(), WHOLE / 8, "10 of 80 since");
        // "c" is gone: the others' 30 more would show as less than nothing.
        let two = BTreeMap::from([
            ("me".to_string(), counters(40, 14)),
            ("b".to_string(), counters(70, 14)),
        ]);
        let own = two["me"];
        let at = t0 + 300 * MS;
        pace.resync(("me", &own), (&two, &BTreeMap::new()), tokens(80), at, &c);
        assert_eq!(pace.share_ppm(), WHOLE / 8, "kept");
        // On the new tokens, as any read of a limit without burst_guard: an eighth of 80.
        assert_eq!(take(&mut pace, 100, at, &c), 10);
        // The next read measures from this one: 20 here, 10 there.
        let two = BTreeMap::from([
            ("me".to_string(), counters(60, 15)),
            ("b".to_string(), counters(80, 15)),
        ]);
        // 2/3 measured, after an eighth: a third of the one and two of the other.
        read(&mut pace, &two, t0 + 400 * MS);
        assert_eq!(pace.share_ppm(), (666_666 + 2 * 125_000) / 3);
    }

    /// Guarded: another node that announced the bucket since the last read, with no counters
    /// yet, counts as asking as much as this one, at that read only.
    #[test]
    fn a_node_that_announced_the_bucket_counts_once() {
        let mut c = cluster(2, true);
        let t0 = 1_000 * MS;
        c.others_synced_ns = t0 + 1_000 * MS;
        let me = |a: u64, k: u64| BTreeMap::from([("me".to_string(), counters(a, k))]);
        let seen = |ms: u64| BTreeMap::from([("other".to_string(), ms)]);
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let read = |pace: &mut Pace, a, k, seen: &BTreeMap<String, u64>, at| {
            pace.resync(
                ("me", &counters(a, k)),
                (&me(a, k), seen),
                tokens(0),
                at,
                &c,
            );
        };
        read(&mut pace, 10, 10, &BTreeMap::new(), t0 + 100 * MS);
        read(&mut pace, 20, 20, &seen(1_000_150), t0 + 200 * MS);
        assert_eq!(
            pace.share_ppm(),
            WHOLE / 2,
            "announced: as much as this one"
        );
        read(&mut pace, 30, 30, &seen(1_000_150), t0 + 300 * MS);
        assert_eq!(
            pace.share_ppm(),
            WHOLE,
            "no refusal, no new node: the whole"
        );
    }

    /// A pace's allowance in 2^-20 of a token: never less than the units it was made from, and
    /// less than one more of those.
    #[test]
    fn an_allowance_kept_in_fractions_of_a_token_is_rounded_up() {
        let step = UNITS_PER_TOKEN / FX_PER_TOKEN + 1;
        let mut values = vec![0, 1, step - 1, step, UNITS_PER_TOKEN - 1, UNITS_PER_TOKEN];
        values.push(1_000_000_000_000 * UNITS_PER_TOKEN);
        let mut x: i128 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005) + 1_442_695_040_888_963_407;
            values.push(x.rem_euclid(1_000_000_000_000 * UNITS_PER_TOKEN));
        }
        for u in values {
            let back = from_fx(to_fx(u));
            assert!(back >= u && back - u < step, "{u} -> {back}");
        }
        assert_eq!(from_fx(to_fx(7 * UNITS_PER_TOKEN)), 7 * UNITS_PER_TOKEN);
        assert_eq!(to_fx(-5), 0);
    }

    #[test]
    fn a_new_bucket_may_spend_the_whole_of_it_by_default_and_the_guard_share_when_guarded() {
        let mut open = Pace::default();
        assert_eq!(take(&mut open, 100, 0, &cluster(3, false)), 100);
        let mut guarded = Pace::default();
        // 1 / (5 x 2) of 100 tokens.
        assert_eq!(take(&mut guarded, 100, 0, &cluster(3, true)), 10);
        let mut alone = Pace::default();
        assert_eq!(take(&mut alone, 100, 0, &cluster(1, true)), 100);
    }

    #[test]
    fn the_guard_share_lasts_until_every_node_has_synced_an_interval_after_the_demand_began() {
        let mut c = cluster(3, true);
        let mut pace = Pace::default();
        let t0 = 1_000 * MS;
        assert_eq!(take(&mut pace, 100, t0, &c), 10);
        let quiet = |a: u64| BTreeMap::from([("me".to_string(), counters(a, 10))]);
        let me = |a: u64| counters(a, 10);
        // First read: history starts. Second read: the others have not synced since.
        pace.resync(
            ("me", &me(100)),
            (&quiet(100), &BTreeMap::new()),
            tokens(90),
            t0 + 100 * MS,
            &c,
        );
        c.others_synced_ns = t0 + 50 * MS;
        pace.resync(
            ("me", &me(100)),
            (&quiet(100), &BTreeMap::new()),
            tokens(90),
            t0 + 200 * MS,
            &c,
        );
        assert_eq!(take(&mut pace, 100, t0 + 200 * MS, &c), 0, "still guarded");
        // Every other node has synced an interval after the demand began: alone, the whole.
        c.others_synced_ns = t0 + 100 * MS;
        pace.resync(
            ("me", &me(120)),
            (&quiet(120), &BTreeMap::new()),
            tokens(90),
            t0 + 300 * MS,
            &c,
        );
        assert_eq!(pace.share_ppm(), WHOLE);
    }

    #[test]
    fn demand_shares_apply_only_under_pressure() {
        let c = cluster(2, false);
        let t0 = 1_000 * MS;
        // (attempts, admitted) of this node and of the other.
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let read = |pace: &mut Pace, me, other, at| read_two(pace, me, other, at, &c);
        read(&mut pace, (1, 1), (0, 0), t0 + 100 * MS);
        // Both asked, every request was admitted: no pressure, the whole bucket, however
        // few tokens are left.
        read(&mut pace, (3, 3), (100, 100), t0 + 200 * MS);
        assert_eq!(pace.share_ppm(), WHOLE);
        // Some were turned away: shares by demand, 1 : 2.
        read(&mut pace, (103, 50), (300, 150), t0 + 300 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 3);
        // Alone again: the whole bucket.
        read(&mut pace, (200, 60), (300, 150), t0 + 400 * MS);
        assert_eq!(pace.share_ppm(), WHOLE);
    }

    /// A read of the bucket by "me" finding "other"'s counters written at `other_ms` (its
    /// `seen_ms`), (attempts, consumed) each, and no tokens left.
    fn read_seen(pace: &mut Pace, me: (u64, u64), other: (u64, u64, u64), at: i64, c: &Cluster) {
        let seen = BTreeMap::from([("other".to_string(), other.2)]);
        read_two_seen(pace, me, (other.0, other.1), &seen, at, c);
    }

    /// Sync rounds drift against each other: a read may show none of the other node's writes
    /// since the previous one. It keeps the share (rather than finding no demand but its own,
    /// the whole bucket), and the next read measures from the read before it.
    #[test]
    fn a_read_that_shows_no_new_write_keeps_the_share() {
        let c = cluster(2, false);
        let t0 = 1_000 * MS;
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let read = |pace: &mut Pace, me, other, at| read_seen(pace, me, other, at, &c);
        read(&mut pace, (10, 5), (10, 5, 1_050), t0 + 100 * MS);
        read(&mut pace, (20, 10), (20, 10, 1_150), t0 + 200 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 2);
        // Nothing written there since (its round is late): kept.
        read(&mut pace, (30, 15), (20, 10, 1_150), t0 + 300 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 2, "kept, not the whole");
        // Two writes there since the read before: 20 requests over 200 ms, as here.
        read(&mut pace, (40, 20), (40, 20, 1_350), t0 + 400 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 2);
        // Nothing written there for longer than a round takes: it asked nothing.
        read(&mut pace, (60, 30), (40, 20, 1_350), t0 + 500 * MS);
        read(&mut pace, (80, 30), (40, 20, 1_350), t0 + 600 * MS);
        assert_eq!(pace.share_ppm(), WHOLE);
    }

    /// The other node's writes carry its demand up to when it wrote: its attempts since the
    /// previous read count over the span between its writes, not over this node's.
    #[test]
    fn the_others_demand_counts_over_the_span_of_their_writes() {
        let c = cluster(2, false);
        let t0 = 1_000 * MS;
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let read = |pace: &mut Pace, me, other, at| read_seen(pace, me, other, at, &c);
        read(&mut pace, (10, 5), (10, 5, 1_000), t0 + 100 * MS);
        // 10 here in 100 ms; 20 there in the 200 ms between its writes: the same rate (by
        // counts alone a third).
        read(&mut pace, (20, 10), (30, 10, 1_200), t0 + 200 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 2);
        // 10 here in 100 ms, 10 there in 50 ms: a third, after a half (a third of the one
        // and two of the other).
        read(&mut pace, (30, 15), (40, 15, 1_250), t0 + 300 * MS);
        assert_eq!(pace.share_ppm(), (333_333 + 2 * 500_000) / 3);
    }

    /// A quota's counters start from zero at each window: the first read of a window keeps
    /// the share of the window before (rather than finding no demand but its own, the whole),
    /// and the reads after it measure the demand within the window.
    #[test]
    fn a_quota_measures_demand_within_each_window() {
        let c = Cluster {
            window: Some(Window::Minute),
            ..cluster(2, false)
        };
        // 2026-11-29T08:41:59.8Z.
        let t0: i64 = 1_795_941_719 * 1_000 * MS + 800 * MS;
        let read = |pace: &mut Pace, me, other, at| read_two(pace, me, other, at, &c);
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        read(&mut pace, (100, 50), (300, 150), t0);
        read(&mut pace, (200, 60), (600, 160), t0 + 100 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 4);
        // The next minute's first read: the other's counters of it may not be written yet
        // (here: none), and a quarter stays rather than the whole.
        read(&mut pace, (30, 5), (0, 0), t0 + 300 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 4);
        // Its next read measures the demand within the minute: 30 requests here since the
        // first read, 90 there since the minute began, some turned away.
        read(&mut pace, (60, 10), (90, 10), t0 + 400 * MS);
        assert_eq!(pace.share_ppm(), WHOLE / 4);
        // 3/4 measured, after a quarter: a third of the one and two of the other.
        read(&mut pace, (90, 15), (100, 15), t0 + 500 * MS);
        assert_eq!(pace.share_ppm(), (750_000 + 2 * 250_000) / 3);
    }

    #[test]
    fn an_outage_keeps_the_last_demand_share() {
        let mut c = cluster(2, false);
        let t0 = 1_000 * MS;
        let nodes = |me: u64, other: u64| {
            BTreeMap::from([
                ("me".to_string(), counters(me, 1)),
                ("other".to_string(), counters(other, 1)),
            ])
        };
        let mut pace = Pace::default();
        take(&mut pace, 1, t0, &c);
        let own = |a: u64| counters(a, 1);
        pace.resync(
            ("me", &own(1)),
            (&nodes(1, 0), &BTreeMap::new()),
            tokens(0),
            t0 + 100 * MS,
            &c,
        );
        pace.resync(
            ("me", &own(101)),
            (&nodes(101, 300), &BTreeMap::new()),
            tokens(0),
            t0 + 200 * MS,
            &c,
        );
        assert_eq!(pace.share_ppm(), WHOLE / 4);
        // The store is gone: the allowance keeps accruing at a quarter of the refill
        // (1 token/s) from the last sync, 12 s ago at the end.
        c.connected = false;
        let p = params();
        let mut admitted = 0;
        for s in 0..=12 {
            let at = t0 + 200 * MS + s * 1_000 * MS;
            while pace.check(&p, 1, tokens(100), at, &c).is_ok() {
                pace.spend(1);
                admitted += 1;
            }
        }
        assert_eq!(pace.share_ppm(), WHOLE / 4);
        assert_eq!(admitted, 3, "a quarter of 12 tokens");
    }
}
