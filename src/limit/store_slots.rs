//! Concurrency limits (`max_in_flight`) in the store: a bucket of slots that never refills
//! (see [`crate::limit::params::BucketParams::slots`]), taken by a request when it is
//! admitted and given back, as a credit, when it ends; in shared mode each node's `consumed`
//! and `credit` are the slots it took and gave back, and the difference, summed over the live
//! nodes, is what is in flight.

use super::bucket::{Bucket, Decision};
use super::overrides::LimitSpec;
use super::params::SLOT_RETRY_NS;
use super::store::Store;
use super::store_entry::Entry;

impl Store {
    /// A concurrency limit's decision on taking `cost` slots (see `docs/shared-state.md`,
    /// "Concurrency"). Standalone, or alone, the free slots decide. In shared mode a node may
    /// also always hold its fair share (`max_in_flight / live nodes`), so that a client within
    /// its limit spread over the nodes is never turned away for a finish not seen yet; with
    /// `burst_guard` it holds no more than what it held at the last sync plus its share of the
    /// slots free then, so that nodes filling at once stay within about the limit.
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
        let Some(sync) = entry.sync.as_ref() else {
            return d;
        };
        let live = u64::from(self.live().max(1));
        if live == 1 {
            return d;
        }
        let held = entry.bucket.own_consumed().saturating_sub(sync.own_credit);
        let wanted = held.saturating_add(cost);
        let fair = wanted <= p.capacity() / live;
        let free = if limit.burst_guard {
            d.allowed && wanted <= sync.slot_cap
        } else {
            d.allowed
        };
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
}
