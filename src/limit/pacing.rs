//! Pacing between syncs: how much of a shared bucket this node may spend before it next
//! hears from the others.
//!
//! The CRDT bucket alone is accurate over long windows (what a node spends unseen becomes debt
//! after the next merge) but not within one sync interval: every node sees the whole bucket, so
//! a burst through N nodes onto a full bucket admits up to N x capacity. So each node spends,
//! between syncs, only its *share* of the bucket, in proportion to its recent demand:
//!
//! - every node publishes a monotone `attempts` counter per bucket (admitted + rejected);
//! - at each sync of a bucket, a node takes every node's attempts since its previous read,
//!   and its share s = its attempts / all attempts (equal shares 1/N when nobody asked, N being
//!   the live nodes of the registry);
//! - until the next sync it may spend s x (the merged tokens at the sync) plus s x the refill
//!   since, capped at s x capacity, on top of the bucket's own check.
//!
//! A bucket this node has never synced, or not for a few intervals (idle), gets the equal share
//! 1/N of the tokens it holds now: a simultaneous burst through N nodes onto a full bucket then
//! admits about one capacity in total, and a burst through one node after an idle period admits
//! its share, capacity / N (the trade-off: a single busy node needs one sync to get the whole
//! bucket back). Rejected requests count as attempts, so a node whose demand rises gets its share
//! at the next sync. With one live node the share is the whole bucket and the pace adds nothing:
//! one node still behaves exactly like a sequential token bucket.
//!
//! Shares are computed by each node at its own sync moments, so they can sum a little above 1;
//! the simulation in the tests bounds the excess.

use crate::limit::bucket::{BucketParams, Counters, UNITS_PER_TOKEN};
use std::collections::BTreeMap;

/// The whole bucket, in parts per million.
pub const WHOLE: u32 = 1_000_000;

/// This node's allowance for one shared bucket.
#[derive(Debug, Clone, Default)]
pub struct Pace {
    share_ppm: u32,
    /// Allowance (units) at `since_ns`, already scaled by the share.
    base: i128,
    since_ns: i64,
    spent: u64,
    /// Every node's attempts at the previous read, for the next share.
    prev: Option<BTreeMap<String, u64>>,
    /// The allowance was restarted because no sync came (idle, or Redis unreachable): it
    /// accrues from there at the equal share of the rate until a sync brings a fresh view.
    /// Restarting it again from the local view at every stale check would hand this node a
    /// share of what the others spent unseen, over and over (N x the rate during an outage).
    stale_restart: bool,
}

fn scale(units: i128, ppm: u32) -> i128 {
    units / i128::from(WHOLE) * i128::from(ppm)
        + (units % i128::from(WHOLE)) * i128::from(ppm) / i128::from(WHOLE)
}

impl Pace {
    /// A pace that never limits (a node alone).
    pub fn whole() -> Pace {
        Pace {
            share_ppm: WHOLE,
            ..Default::default()
        }
    }

    pub fn share_ppm(&self) -> u32 {
        self.share_ppm
    }

    fn restart(&mut self, share_ppm: u32, tokens_units: i128, now_ns: i64) {
        self.share_ppm = share_ppm.min(WHOLE);
        self.base = scale(tokens_units.max(0), self.share_ppm);
        self.since_ns = now_ns;
        self.spent = 0;
    }

    /// Units this node may still spend now.
    fn allowance(&self, p: &BucketParams, now_ns: i64) -> i128 {
        let cap = scale(i128::from(p.capacity()) * UNITS_PER_TOKEN, self.share_ppm);
        let dt = i128::from(now_ns.saturating_sub(self.since_ns).max(0));
        let refill = scale(dt * i128::from(p.rate_q()), self.share_ppm);
        (self.base + refill).min(cap) - i128::from(self.spent) * UNITS_PER_TOKEN
    }

    /// Whether `cost` fits this node's allowance. `tokens_units` is the bucket's merged view
    /// now; `live` the live nodes; `stale_ns` how long without a sync makes the share stale.
    /// Returns the nanoseconds to wait when it does not fit.
    pub fn check(
        &mut self,
        p: &BucketParams,
        cost: u64,
        tokens_units: i128,
        now_ns: i64,
        live: u32,
        stale_ns: i64,
    ) -> Result<(), u64> {
        if live <= 1 && self.share_ppm == WHOLE {
            return Ok(());
        }
        if self.share_ppm == 0 && self.prev.is_none()
            || !self.stale_restart && now_ns.saturating_sub(self.since_ns) > stale_ns
        {
            self.restart(WHOLE / live.max(1), tokens_units, now_ns);
            self.stale_restart = true;
        }
        if self.share_ppm == WHOLE {
            return Ok(());
        }
        let need = i128::from(cost) * UNITS_PER_TOKEN - self.allowance(p, now_ns);
        if need <= 0 {
            return Ok(());
        }
        let rate = scale(i128::from(p.rate_q()), self.share_ppm).max(1);
        let wait = u64::try_from((need + rate - 1) / rate).unwrap_or(u64::MAX);
        // The next sync (or the stale fallback) gives a new share: never announce a wait
        // longer than that, nor shorter than the bucket's own.
        let until_resync = u64::try_from(
            stale_ns
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

    /// After a sync read: new share from every node's attempts since the previous read, and a
    /// new allowance from the merged tokens now. `own_attempts` is this node's own count.
    pub fn resync(
        &mut self,
        (me, own_attempts): (&str, u64),
        nodes: &BTreeMap<String, Counters>,
        live: u32,
        tokens_units: i128,
        now_ns: i64,
    ) {
        let mut attempts: BTreeMap<String, u64> =
            nodes.iter().map(|(n, c)| (n.clone(), c.attempts)).collect();
        // This node's own attempts are what it counted, whatever the store shows (a store
        // that restarted empty may not hold them yet).
        let own = own_attempts.max(attempts.get(me).copied().unwrap_or(0));
        attempts.insert(me.to_string(), own);
        if self.prev.is_none() && self.share_ppm != 0 && live > 1 {
            // First read of a bucket this node has been spending from: the others' spending
            // since its creation is not in the store yet (their first sync only reads), so a
            // new allowance from this view would hand out tokens twice. Keep the one given at
            // creation until the next sync, which shows the demand.
            self.prev = Some(attempts);
            return;
        }
        let share = match self.prev.as_ref() {
            None => WHOLE / live.max(1),
            Some(prev) => {
                let delta =
                    |n: &String, a: u64| a.saturating_sub(prev.get(n).copied().unwrap_or(0));
                let total: u64 = attempts
                    .iter()
                    .map(|(n, &a)| delta(n, a))
                    .fold(0, u64::saturating_add);
                let mine = attempts.get(me).map_or(0, |&a| delta(&me.to_string(), a));
                if total == 0 {
                    WHOLE / live.max(1)
                } else {
                    // At least a tenth of the equal share: a node whose demand starts right
                    // after a sync is not shut out for a whole interval (the shares then add up
                    // to at most 1 + 1/10 for that interval).
                    let floor = WHOLE / live.max(1) / 10;
                    u32::try_from(u128::from(mine) * u128::from(WHOLE) / u128::from(total))
                        .unwrap_or(WHOLE)
                        .max(floor)
                }
            }
        };
        // Alone in the registry: the whole bucket.
        let share = if live <= 1 { WHOLE } else { share };
        self.restart(share, tokens_units, now_ns);
        self.stale_restart = false;
        self.prev = Some(attempts);
    }
}
