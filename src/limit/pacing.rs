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
//! - Otherwise a **demand share**: s = own attempts / all attempts (at least a tenth of the equal
//!   share 1/N, so that a node whose demand starts right after a sync is not shut out for an
//!   interval). Until the next sync the node may spend s x (the merged tokens at the sync) plus
//!   s x the refill since, capped at s x capacity, on top of the bucket's own check.
//!
//! Shares are computed by each node at its own sync moments, so they can sum a little above 1;
//! the simulation (`tests/pacing_simulation.rs`) bounds the excess.
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
use crate::limit::window::Window;
use std::collections::BTreeMap;

/// The whole bucket, in parts per million.
pub const WHOLE: u32 = 1_000_000;

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

/// This node's allowance for one shared bucket.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    phase: Phase,
    share_ppm: u32,
    /// This node's share of the refill (and of the capacity, its allowance's cap): the
    /// demand share, or the equal share while a guarded bucket starts.
    refill_ppm: u32,
    /// Allowance (units) at `since_ns`, already scaled by the share.
    base: i128,
    since_ns: i64,
    spent: u64,
    /// When this node's demand on the bucket began (the start of its active period).
    demand_since_ns: i64,
    /// Every node's demand at the previous read, and when it was.
    prev: Option<(Demands, i64)>,
}

/// Every node's demand at one read, in one allocation of 32 bytes a node. A node is known by
/// a 64-bit hash of its name ([`node_id`]): a map of the names (a B-tree's 544-byte leaf and a
/// string per node) made the demand of a synced bucket cost 656 bytes with three nodes, 96
/// here. Two nodes of one cluster whose names hash alike would count as one (odds 2^-64).
/// A read writes into the allocation of the previous one when the cluster has as many nodes
/// (see [`Demands::set`]), so that a synced bucket's sync allocates and frees nothing (it
/// did once per read: the reading built in a vector, then boxed).
#[derive(Debug, Clone, Default)]
struct Demands(Box<[(u64, Demand)]>);

/// The demand of every node at one read, as it is built (on the stack for up to 4 nodes).
type Reading = smallvec::SmallVec<[(u64, Demand); 4]>;

impl Demands {
    /// The demand of the node whose name hashes to `id`.
    fn get(&self, id: u64) -> Option<Demand> {
        demand_in(&self.0, id)
    }

    /// Now holds `reading`: in place when it has as many nodes, else in a new allocation.
    fn set(&mut self, reading: &[(u64, Demand)]) {
        if self.0.len() == reading.len() {
            self.0.copy_from_slice(reading);
        } else {
            self.0 = reading.into();
        }
    }
}

/// The demand of the node whose name hashes to `id` in `demand`.
fn demand_in(demand: &[(u64, Demand)], id: u64) -> Option<Demand> {
    demand.iter().find(|(n, _)| *n == id).map(|&(_, d)| d)
}

/// The demand of node `name` in a list being built, added if absent.
fn demand_of<'d>(demand: &'d mut Reading, name: &str) -> &'d mut Demand {
    let id = node_id(name);
    let at = match demand.iter().position(|(n, _)| *n == id) {
        Some(at) => at,
        None => {
            demand.push((id, Demand::default()));
            demand.len() - 1
        }
    };
    &mut demand[at].1
}

/// The id of a node's name in [`Demands`]: SipHash with fixed keys (the same in every
/// process; only this node's reads are compared with each other).
fn node_id(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// One node's demand on a bucket, as its fields show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Demand {
    /// Requests decided (admitted or not).
    attempts: u64,
    /// Tokens taken.
    consumed: u64,
    /// When the node last wrote the bucket (or announced it: see `shared::round`).
    seen_ms: u64,
}

fn scale(units: i128, ppm: u32) -> i128 {
    units / i128::from(WHOLE) * i128::from(ppm)
        + (units % i128::from(WHOLE)) * i128::from(ppm) / i128::from(WHOLE)
}

impl Pace {
    /// A pace that never limits (a node alone).
    pub fn whole() -> Pace {
        Pace {
            phase: Phase::Synced,
            share_ppm: WHOLE,
            refill_ppm: WHOLE,
            ..Default::default()
        }
    }

    pub fn share_ppm(&self) -> u32 {
        self.share_ppm
    }

    fn restart(&mut self, phase: Phase, share_ppm: u32, tokens_units: i128, now_ns: i64) {
        self.phase = phase;
        self.share_ppm = share_ppm.min(WHOLE);
        self.refill_ppm = self.share_ppm;
        self.base = scale(tokens_units.max(0), self.share_ppm);
        self.since_ns = now_ns;
        self.spent = 0;
    }

    /// Starts an active period: no demand history yet. The guard share is at least one
    /// token, when the bucket holds one: a small bucket's share would otherwise admit nothing.
    fn start(&mut self, c: &Cluster, tokens_units: i128, now_ns: i64) {
        let share = if c.guard { c.guard_ppm() } else { WHOLE };
        self.restart(Phase::Starting, share, tokens_units, now_ns);
        if self.share_ppm < WHOLE {
            self.base = self.base.max(tokens_units.clamp(0, UNITS_PER_TOKEN));
            // The refill is new tokens, which nobody has spent: shared equally.
            self.refill_ppm = c.equal_ppm().max(self.share_ppm);
        }
        self.demand_since_ns = now_ns;
        self.prev = None;
    }

    /// Units this node may still spend now: its share of the tokens at the restart, plus its
    /// share of the refill since, less what it spent, at most its share of the capacity (a
    /// sub-bucket: what it does not spend is lost at that cap, as in the bucket itself).
    fn allowance(&mut self, p: &BucketParams, now_ns: i64) -> i128 {
        let mut cap = scale(i128::from(p.capacity()) * UNITS_PER_TOKEN, self.refill_ppm);
        if self.phase == Phase::Starting {
            cap = cap.max(UNITS_PER_TOKEN);
        }
        let dt = i128::from(now_ns.saturating_sub(self.since_ns).max(0));
        let refill = scale(dt * i128::from(p.rate_q()), self.refill_ppm);
        let left = self.base + refill - i128::from(self.spent) * UNITS_PER_TOKEN;
        if left > cap {
            // Full: start again from the cap, so that a long time without a sync (an outage)
            // keeps accruing rather than stopping once the refill has reached the cap.
            self.base = cap;
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
        match self.phase {
            Phase::Unset => self.start(c, tokens_units, now_ns),
            Phase::Outage if c.connected => self.start(c, tokens_units, now_ns),
            Phase::Starting | Phase::Synced if stale && !c.connected => {
                if self.share_ppm < WHOLE || !c.guard {
                    // Keep the share (the whole bucket for one that had no pressure), and the
                    // allowance as it accrues at that share.
                    self.phase = Phase::Outage;
                } else {
                    // Guarded, and no share: the equal one.
                    self.restart(Phase::Outage, c.equal_ppm(), tokens_units, now_ns);
                }
            }
            Phase::Starting | Phase::Synced if stale => self.start(c, tokens_units, now_ns),
            _ => {}
        }
        if self.share_ppm == WHOLE {
            return Ok(());
        }
        let need = i128::from(cost) * UNITS_PER_TOKEN - self.allowance(p, now_ns);
        if need <= 0 {
            return Ok(());
        }
        let rate = scale(i128::from(p.rate_q()), self.refill_ppm).max(1);
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

    /// After a sync read: a new allowance from every node's demand since the previous read
    /// and the merged tokens now. `own` is this node's own counters.
    pub fn resync(
        &mut self,
        (me, own_demand): (&str, &Counters),
        (nodes, seen_ms): (&BTreeMap<String, Counters>, &BTreeMap<String, u64>),
        tokens_units: i128,
        now_ns: i64,
        c: &Cluster,
    ) {
        let mut demand = Reading::new();
        for (n, c) in nodes {
            let d = demand_of(&mut demand, n);
            d.attempts = c.attempts;
            d.consumed = c.consumed;
        }
        for (n, &ms) in seen_ms {
            demand_of(&mut demand, n).seen_ms = ms;
        }
        // This node's own demand is what it counted, whatever the store shows (a store that
        // restarted empty may not hold it yet).
        let own = demand_of(&mut demand, me);
        own.attempts = own.attempts.max(own_demand.attempts);
        own.consumed = own.consumed.max(own_demand.consumed);
        if matches!(self.phase, Phase::Unset | Phase::Outage) {
            // A bucket read before its first decision (a warm start), or back from an outage:
            // its demand history starts here.
            self.start(c, tokens_units, now_ns);
        }
        let Some((prev, at)) = self.prev.as_mut() else {
            // The first read of this active period: the others' demand shows from the next.
            self.prev = Some((Demands(demand.as_slice().into()), now_ns));
            return;
        };
        // The share from the demand since the previous read, before this read replaces it.
        let share = demand_share(&prev.0, &demand, me, c);
        prev.set(&demand);
        let prev_ns = std::mem::replace(at, now_ns);
        if c.window
            .is_some_and(|w| w.index(prev_ns) != w.index(now_ns))
        {
            self.resync_new_window(tokens_units, now_ns);
            return;
        }
        if self.phase == Phase::Starting && c.guard && !c.heard_since(self.demand_since_ns) {
            // Guarded, and some node may still be spending unseen: keep the guard share.
            return;
        }
        self.restart(Phase::Synced, share, tokens_units, now_ns);
        if (c.guard || c.window.is_some()) && share < WHOLE {
            // Guarded: the others may be spending their shares of these tokens unseen (what
            // they spent since their last write is not in this view). Take the share of what
            // is left after theirs: s x (1 - (1 - s)) = s^2 of the tokens. What no node takes
            // stays in the bucket for the next sync; the refill is shared in full.
            self.base = scale(self.base, share);
        }
    }

    /// Whether node `n`, its counters now `c`, turned a request away since the previous read:
    /// it decided more requests than it took tokens (a concurrency limit's request takes one
    /// slot). False without a previous read.
    pub fn refused_since_read(&self, n: &str, c: &Counters) -> bool {
        let Some((prev, _)) = self.prev.as_ref() else {
            return false;
        };
        let was = prev.get(node_id(n)).unwrap_or_default();
        c.attempts.saturating_sub(was.attempts) > c.consumed.saturating_sub(was.consumed)
    }

    /// The first read of a quota in a new window. Its counters start from zero at each window,
    /// so the previous read's are no baseline for this one's; and the others' first writes of
    /// the window may not have come yet, so that this read would see no demand but this
    /// node's, and hand it the whole quota while every node does the same. The share of the
    /// previous window's demand stays instead, on the new window's tokens (s x s of them, as
    /// at any read of a quota); the next read measures the demand within the window. A pace
    /// still starting (guarded, not yet heard from the others) stays as it is.
    fn resync_new_window(&mut self, tokens_units: i128, now_ns: i64) {
        if self.phase != Phase::Synced {
            return;
        }
        let share = self.share_ppm;
        self.restart(Phase::Synced, share, tokens_units, now_ns);
        if share < WHOLE {
            self.base = scale(self.base, share);
        }
    }
}

/// The share from the demand since the previous read, `prev`, to this one, `now` (see the
/// module docs).
fn demand_share(prev: &[(u64, Demand)], now: &[(u64, Demand)], me: &str, c: &Cluster) -> u32 {
    let since = |n: u64, d: &Demand| {
        let was = demand_in(prev, n).unwrap_or_default();
        let attempts = d.attempts.saturating_sub(was.attempts);
        let consumed = d.consumed.saturating_sub(was.consumed);
        (attempts, consumed, d.seen_ms > was.seen_ms)
    };
    let me = node_id(me);
    let mine = demand_in(now, me).map_or(0, |d| since(me, &d).0);
    let (mut total, mut spent, mut announced) = (0u64, 0u64, 0u64);
    for &(n, ref d) in now {
        let (attempts, consumed, seen) = since(n, d);
        total = total.saturating_add(attempts);
        spent = spent.saturating_add(consumed);
        // Guarded: a node that announced the bucket but shows no demand yet (a new
        // bucket on it) is counted as asking as much as this one.
        if c.guard && n != me && attempts == 0 && seen {
            announced += 1;
        }
    }
    let total = total.saturating_add(announced.saturating_mul(mine.max(1)));
    // Pressure: some request was turned away in the span (a request admitted took at
    // least a token, so fewer tokens than requests means a refusal). Without one, every
    // client got what it asked for, and a share could only turn one away.
    if c.live <= 1 || total <= mine || (announced == 0 && spent >= total) {
        return WHOLE;
    }
    let floor = c.equal_ppm() / 10;
    u32::try_from(u128::from(mine) * u128::from(WHOLE) / u128::from(total))
        .unwrap_or(WHOLE)
        .max(floor)
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
        let nodes = BTreeMap::from([
            ("me".to_string(), counters(me.0, me.1)),
            ("other".to_string(), counters(other.0, other.1)),
        ]);
        let own = counters(me.0, me.1);
        pace.resync(("me", &own), (&nodes, &BTreeMap::new()), tokens(0), at, c);
    }

    /// A node's counters: `attempts` requests, of which `consumed` admitted (cost 1).
    fn counters(attempts: u64, consumed: u64) -> Counters {
        Counters {
            consumed,
            attempts,
            waste: 0,
        }
    }

    /// A read keeps the previous read's allocation when as many nodes show, so a synced
    /// bucket costs no allocation per sync; and the share still comes from the demand since
    /// the previous read (what it replaces).
    #[test]
    fn a_read_of_as_many_nodes_writes_into_the_previous_reads_demand() {
        let c = cluster(2, false);
        let mut pace = Pace::default();
        let place = |p: &Pace| p.prev.as_ref().map(|(d, _)| d.0.as_ptr());
        read_two(&mut pace, (10, 10), (10, 10), 100 * MS, &c);
        let first = place(&pace).expect("the first read keeps its demand");
        // Both nodes asked 10 more, and only half were admitted: each has half the demand.
        read_two(&mut pace, (20, 15), (20, 15), 200 * MS, &c);
        assert_eq!(place(&pace), Some(first), "written in place");
        assert_eq!(pace.share_ppm(), WHOLE / 2);
        assert_eq!(
            pace.prev
                .as_ref()
                .map(|(d, at)| (d.get(node_id("me")), *at)),
            Some((
                Some(Demand {
                    attempts: 20,
                    consumed: 15,
                    seen_ms: 0
                }),
                200 * MS
            ))
        );
        // This node alone asked since: the whole bucket.
        read_two(&mut pace, (30, 20), (20, 15), 300 * MS, &c);
        assert_eq!(pace.share_ppm(), WHOLE);
        // A third node: a new allocation, with every node's demand.
        let nodes = BTreeMap::from([
            ("me".to_string(), counters(40, 25)),
            ("other".to_string(), counters(20, 15)),
            ("third".to_string(), counters(5, 5)),
        ]);
        let own = counters(40, 25);
        pace.resync(
            ("me", &own),
            (&nodes, &BTreeMap::new()),
            tokens(0),
            400 * MS,
            &c,
        );
        assert_eq!(pace.prev.as_ref().map(|(d, _)| d.0.len()), Some(3));
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
        read(&mut pace, (90, 15), (100, 15), t0 + 500 * MS);
        assert_eq!(pace.share_ppm(), WHOLE * 3 / 4);
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
