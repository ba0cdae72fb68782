//! Concurrency limits (`max_in_flight`) in the store: a bucket of slots that never refills
//! (see [`crate::limit::params::BucketParams::slots`]), taken by a request when it is
//! admitted and given back, as a credit, when it ends; in shared mode each node's `consumed`
//! and `credit` are the slots it took and gave back, and the difference, summed over the live
//! nodes, is what is in flight.

use super::bucket::{Bucket, Decision};
use super::overrides::LimitSpec;
use super::params::SLOT_RETRY_NS;
use super::store::Store;
use super::store_entry::{lock, Entry, NO_CAP};

impl Store {
    /// A concurrency limit's decision on taking `cost` slots (see `docs/shared-state.md`,
    /// "Response costs, refunds and concurrency"). Standalone, or alone, the free slots
    /// decide. In shared mode a node may always hold its fair share (`max_in_flight / live
    /// nodes`), so that a client within its limit spread over the nodes is never turned away
    /// for a finish not seen yet; beyond it, no more than its cap (see [`Store::set_slot_cap`]).
    #[cold]
    pub(super) fn evaluate_slots(
        &self,
        entry: &mut Entry,
        limit: &LimitSpec,
        cost: u64,
        now: i64,
    ) -> Decision {
        let p = &limit.params;
        let tokens = entry.bucket.tokens_units(p, now);
        let mut d = Bucket::decide(p, tokens, cost, now);
        entry.bucket.record_attempt();
        let (Some(held), Some(sync)) = (held(entry), entry.sync.as_ref()) else {
            return d;
        };
        let live = u64::from(self.live().max(1));
        if live == 1 {
            return d;
        }
        let wanted = held.saturating_add(cost);
        let fair = wanted <= p.capacity() / live;
        // Before its first sync a bucket has no cap: with burst_guard it holds its fair share
        // only; in the default mode, what the view allows.
        let cap = match sync.slot_cap {
            NO_CAP if limit.burst_guard => 0,
            cap => cap,
        };
        let free = d.allowed && wanted <= cap;
        if fair && !d.allowed {
            d.allowed = true;
            d.retry_after_ns = 0;
        } else if !free && !fair {
            d.allowed = false;
            d.remaining = 0;
            d.retry_after_ns = SLOT_RETRY_NS;
        }
        d
    }

    /// Sets what this node may hold of a concurrency limit's slots until its next sync, once a
    /// sync has merged the bucket (counters and credits): what it holds now, plus its part of
    /// the slots free as the merged view says. The free slots are divided among the nodes that
    /// hold some (`active_others` besides this one) in the default mode, so that a node alone
    /// on a key may take them all while nodes that compete share them instead of each taking
    /// the same ones from views that do not yet show the others' latest; with `burst_guard`
    /// among twice the live nodes, so that nodes filling at once from views that do not show
    /// each other yet stay within about the limit.
    pub fn set_slot_cap(&self, store_key: &str, limit: &LimitSpec, active_others: u32) {
        let now = self.clock.now_ns();
        let mut shard = lock(&self.shards[self.shard_of(store_key)]);
        let Some(e) = shard.map.get_mut(store_key) else {
            return;
        };
        let free = e.bucket.peek(&limit.params, 0, now).remaining;
        let Some(held) = held(e) else {
            return;
        };
        let divide = if limit.burst_guard {
            2 * self.live().max(1)
        } else {
            1 + active_others
        };
        if let Some(sync) = e.sync.as_mut() {
            sync.slot_cap = held.saturating_add(free / u64::from(divide));
        }
    }
}

/// The slots this node holds of a shared concurrency limit: those it took less those it gave
/// back (`None` standalone).
fn held(e: &Entry) -> Option<u64> {
    let sync = e.sync.as_ref()?;
    Some(e.bucket.own_consumed().saturating_sub(sync.own_credit))
}
